//! Throughput of the checksums on the transfer's hot path, per 1 MiB buffer as the channels use
//! them. `cargo bench --bench hashing` prints a table of medians over several passes.

use std::time::{Duration, Instant};

use machinaftp::integrity::Hasher;

const MIB: usize = 1 << 20;
const PASSES: usize = 7;
const TOTAL_MIB: usize = 512;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(name: &str, buf: &[u8], mut f: impl FnMut(&[u8])) -> (String, Duration) {
    let times = (0..PASSES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..TOTAL_MIB {
                f(std::hint::black_box(buf));
            }
            t.elapsed()
        })
        .collect();
    (name.to_owned(), median(times))
}

fn main() {
    let buf: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let mut crc = crc32fast::Hasher::new();
    let mut b3 = blake3::Hasher::new();
    let mut both = Hasher::new();
    let rows = [
        measure("crc32fast", &buf, |b| crc.update(b)),
        measure("blake3", &buf, |b| {
            b3.update(b);
        }),
        measure("integrity::Hasher (both)", &buf, |b| both.update(b)),
    ];
    std::hint::black_box((crc.finalize(), b3.finalize(), both.finish()));
    let base = rows[2].1.as_secs_f64();
    println!("{TOTAL_MIB} MiB in 1 MiB buffers, median of {PASSES} passes\n");
    println!("{:<28}{:>10}{:>12}{:>10}", "hasher", "ms", "MiB/s", "share");
    for (name, d) in &rows {
        let s = d.as_secs_f64();
        println!("{name:<28}{:>10.1}{:>12.0}{:>9.0}%", s * 1e3, TOTAL_MIB as f64 / s, 100.0 * s / base);
    }
}
