//! The full-duplex round trip (protocol version 2) between real processes: the file comes back
//! while it is still being sent, and a byte corrupted on either leg while both legs run ends both
//! sides with that leg named, a non-zero exit, and nothing unverified saved.
//!
//! Relays on 127.0.0.2 (loopback) stand between B and A: one at A's data port, one at A's ZeroMQ
//! port number, so that B, pointed at 127.0.0.2, reaches A through both even after A's Welcome
//! names its ZeroMQ port.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;

const SIZE: u64 = 20_000_000;

/// A `--once` server serving a 20 MB file, relays in front of both its ports, and the client's
/// arguments to go through them.
fn through_relays(a: &Path, flip: Option<(Way, u64)>, on_return: bool) -> (Server, Relay, Relay) {
    let big = a.join("big.bin");
    write_random(&big, SIZE, 11);
    serve_through_relays(a, &big, flip, on_return)
}

fn serve_through_relays(a: &Path, big: &Path, flip: Option<(Way, u64)>, on_return: bool) -> (Server, Relay, Relay) {
    let (srv, twin) = server_and_twin_listener(|| Server::start(a, big, &["--once", "--output", "returned.bin"]));
    let target = |p: &str| SocketAddr::from(([127, 0, 0, 1], p.parse().unwrap()));
    let zmq = srv.zmq_port.clone().unwrap();
    let (data_flip, ret_flip) = if on_return { (None, flip) } else { (flip, None) };
    // The same port number as A's, on another loopback address: where B connects after Welcome.
    let ret = Relay::on(twin, target(&zmq), ret_flip);
    let data = Relay::start("127.0.0.2:0", target(&srv.tcp_port), data_flip);
    (srv, data, ret)
}

fn client_through(b: &Path, data: &Relay, ret: &Relay) -> Finished {
    let port = data.addr.port().to_string();
    let zmq = ret.addr.port().to_string();
    client(b, &["--client", "-f", "big.bin", "-H", "127.0.0.2", "-p", &port, "--zmq-port", &zmq, "--timeout", "20"])
}

#[test]
fn relays_alone_change_nothing() {
    let (a, b) = (tempdir(), tempdir());
    let (srv, data, ret) = through_relays(a.path(), None, false);
    let out = client_through(b.path(), &data, &ret);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert!(same_contents(&a.path().join("big.bin"), &a.path().join("returned.bin")));
}

#[test]
fn corrupted_byte_on_the_data_leg_while_both_legs_run() {
    let (a, b) = (tempdir(), tempdir());
    // 10 MB into the stream from A to B: raw file bytes, while earlier frames already went back.
    let (srv, data, ret) = through_relays(a.path(), Some((Way::Down, 10_000_000)), false);
    let out = client_through(b.path(), &data, &ret);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch on the data leg"), "{out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(1), "{s:?}");
    assert!(s.stderr.contains("checksum mismatch on the data leg"), "A is told: {s:?}");
    // Where, not only whether: the flipped byte is 10 MB into the stream, less the few bytes of
    // frames before the file, so in the 1 MiB piece from 9 MiB; both sides and B's log say so.
    let piece = "the first difference lies within bytes 9437184-10485759 (counting from 0)";
    assert!(out.stderr.contains(piece), "{out:?}");
    assert!(s.stderr.contains(piece), "{s:?}");
    let log = std::fs::read_to_string(b.path().join("client.log")).unwrap();
    assert!(log.contains(piece), "{log}");
    assert_eq!(files_in(b.path()), ["client.log"], "B keeps no corrupted copy");
    assert_eq!(files_in(a.path()), ["big.bin", "server.log"], "A saves nothing of what came back");
}

#[test]
fn an_stl_corrupted_on_the_data_leg_leaves_no_csv_either() {
    // B converts an STL while it still arrives: the CSV staged from unverified bytes must go
    // with the copy when the data leg fails.
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    let facets: u32 = 400_000;
    write_random(&big, 84 + 50 * u64::from(facets), 12);
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &facets.to_le_bytes(), 80).unwrap();
    drop(f);
    let (srv, data, ret) = serve_through_relays(a.path(), &big, Some((Way::Down, 15_000_000)), false);
    let out = client_through(b.path(), &data, &ret);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch on the data leg"), "{out:?}");
    assert_eq!(srv.proc.finish().code(), Some(1));
    assert_eq!(files_in(b.path()), ["client.log"], "B keeps neither a copy nor a CSV");
}

#[test]
fn corrupted_byte_on_the_return_leg_while_both_legs_run() {
    let (a, b) = (tempdir(), tempdir());
    // 10 MB into the stream from B to A: inside a returned Data frame's payload (frame headers
    // are a few bytes per MiB), while A is still sending.
    let (srv, data, ret) = through_relays(a.path(), Some((Way::Up, 10_000_000)), true);
    let out = client_through(b.path(), &data, &ret);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch on the return leg"), "{out:?}");
    assert!(out.stderr.contains("returned copy differs from what was sent"), "{out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(1), "{s:?}");
    assert!(s.stderr.contains("checksum mismatch on the return leg"), "{s:?}");
    // Where, not only whether, on both sides: the byte the relay flipped, 10 MB into the stream
    // less the frames' headers before it.
    let at = |text: &str| -> u64 {
        let rest = text.split("the first differing byte is byte ").nth(1).unwrap_or_else(|| panic!("{text}"));
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let (on_a, on_b) = (at(&s.stderr), at(&out.stderr));
    assert_eq!(on_a, on_b);
    assert!((9_990_000..10_000_000).contains(&on_a), "{on_a}");
    assert_eq!(files_in(a.path()), ["big.bin", "server.log"], "A saves no corrupted copy");
    // B's own copy was verified on arrival and is kept.
    assert!(same_contents(&a.path().join("big.bin"), &b.path().join("big.bin")));
    assert_no_partials(b.path());
}

#[test]
fn the_file_comes_back_while_it_is_still_being_sent() {
    // A throttled server: the data leg takes seconds. Returned bytes must reach A's staged output
    // while B is still receiving (its own copy, saved only after the Trailer, does not exist yet).
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    write_random(&big, SIZE, 12);
    let srv = Server::start(a.path(), &big, &["--rate-limit", "4M", "--output", "returned.bin"]);
    let mut args = srv.client_args("big.bin");
    args.push("-v");
    let cli = Proc::spawn(b.path(), &args);
    cli.wait_stderr(|l| l.contains("accepted; receiving"));
    let start = std::time::Instant::now();
    let returning = loop {
        let partial = files_in(a.path())
            .into_iter()
            .filter(|n| n.starts_with(".returned.bin.") && n.ends_with(".partial"))
            .map(|n| std::fs::metadata(a.path().join(n)).map(|m| m.len()).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if partial > 0 {
            break Some(partial);
        }
        if start.elapsed() > DEADLINE || b.path().join("big.bin").exists() {
            break None;
        }
        // Polling a file's size, not waiting for readiness: nothing announces a byte on disk.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let still_receiving = !b.path().join("big.bin").exists();
    assert!(returning.is_some() && still_receiving, "no returned bytes at A before B had the whole file");
    let out = cli.finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert!(same_contents(&big, &a.path().join("returned.bin")));
}
