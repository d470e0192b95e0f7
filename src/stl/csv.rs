//! The vertex CSV: `x,y,z` lines with exactly four digits after the decimal point, each number
//! equal to C's `printf("%.4f")` of the float32 value: the exact binary value rounded to four
//! decimals, ties to even, and a minus sign whenever the sign bit is set (`-0.0000`).
//!
//! Formatting is the converter's hot path, so the common range is done with integer arithmetic:
//! a float32 is `m * 2^e` with `m < 2^24`, so `v * 10^4 = m * 10^4 * 2^e` is exact in 64 bits
//! whenever `|v| < 2^50`; rounding the shifted-out bits gives the answer without any decimal
//! conversion of the whole value. Larger magnitudes and non-finite values use the standard
//! library's exact formatter.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::integrity::{Digest, Hasher};

/// Appends `v` formatted as C's `%.4f` would.
pub fn push_fixed4(out: &mut Vec<u8>, v: f32) {
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = u64::from(bits & 0x7f_ffff);
    if exp == 0xff {
        push_slow(out, v);
        return;
    }
    // Subnormals have no implicit leading bit and the minimum exponent.
    let (m, e) = if exp == 0 {
        (frac, -149)
    } else {
        (frac | 0x80_0000, exp - 150)
    };
    let scaled = m * 10_000; // < 2^38
    let q = if e >= 0 {
        if e > 25 {
            push_slow(out, v);
            return;
        }
        scaled << e
    } else {
        let k = (-e) as u32;
        if k >= 64 {
            0 // scaled < 2^38 is below half of 2^k: rounds to zero
        } else {
            let q = scaled >> k;
            let rem = scaled & ((1u64 << k) - 1);
            let half = 1u64 << (k - 1);
            if rem > half || (rem == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    };
    if bits >> 31 == 1 {
        out.push(b'-');
    }
    push_u64(out, q / 10_000);
    let f = (q % 10_000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (f / 1000) as u8,
        b'0' + (f / 100 % 10) as u8,
        b'0' + (f / 10 % 10) as u8,
        b'0' + (f % 10) as u8,
    ]);
}

fn push_slow(out: &mut Vec<u8>, v: f32) {
    // std's fixed-precision formatting is exact (it falls back to big-integer arithmetic).
    let _ = write!(out, "{v:.4}");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What the CSV writer produced.
#[derive(Debug, Clone, Copy)]
pub struct CsvSummary {
    /// Vertex lines written (header excluded).
    pub rows: u64,
    /// Digest of every byte written.
    pub digest: Digest,
}

/// Writes vertex lines through a buffer, hashing what it writes.
pub struct CsvWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    seen: Option<HashSet<[u32; 3]>>,
    rows: u64,
    hasher: Hasher,
}

const FLUSH_AT: usize = 64 * 1024;

impl<W: Write> CsvWriter<W> {
    /// A writer; `unique` keeps only the first occurrence of each distinct vertex (compared by
    /// exact value, so `0.0` and `-0.0` count as one), `header` starts with an `x,y,z` line.
    pub fn new(inner: W, unique: bool, header: bool) -> Self {
        let mut buf = Vec::with_capacity(FLUSH_AT + 128);
        if header {
            buf.extend_from_slice(b"x,y,z\n");
        }
        CsvWriter {
            inner,
            buf,
            seen: unique.then(HashSet::new),
            rows: 0,
            hasher: Hasher::new(),
        }
    }

    /// Writes one vertex line (or nothing, for a repeat in unique mode).
    pub fn vertex(&mut self, v: &[f32; 3]) -> io::Result<()> {
        if let Some(seen) = &mut self.seen {
            // +0.0 normalises -0.0 to 0.0, so equal coordinates have equal keys.
            let key = v.map(|c| (c + 0.0).to_bits());
            if !seen.insert(key) {
                return Ok(());
            }
        }
        push_fixed4(&mut self.buf, v[0]);
        self.buf.push(b',');
        push_fixed4(&mut self.buf, v[1]);
        self.buf.push(b',');
        push_fixed4(&mut self.buf, v[2]);
        self.buf.push(b'\n');
        self.rows += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        self.hasher.update(&self.buf);
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Flushes everything and returns the writer with what was written.
    pub fn finish(mut self) -> io::Result<(W, CsvSummary)> {
        self.flush_buf()?;
        self.inner.flush()?;
        Ok((
            self.inner,
            CsvSummary {
                rows: self.rows,
                digest: self.hasher.finish(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(v: f32) -> String {
        let mut out = Vec::new();
        push_fixed4(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// C's own printf, the definition we must match.
    pub(crate) fn c_printf(v: f32) -> String {
        let mut buf = [0u8; 128];
        let fmt = c"%.4f";
        // SAFETY: %.4f of any finite float32 is at most 46 bytes, and snprintf never writes past
        // the size given.
        let n = unsafe {
            libc::snprintf(
                buf.as_mut_ptr().cast(),
                buf.len(),
                fmt.as_ptr(),
                f64::from(v),
            )
        };
        String::from_utf8(buf[..n as usize].to_vec()).unwrap()
    }

    #[test]
    fn known_values() {
        assert_eq!(fmt(0.0), "0.0000");
        assert_eq!(fmt(-0.0), "-0.0000");
        assert_eq!(fmt(-1e-9), "-0.0000");
        assert_eq!(fmt(1.5), "1.5000");
        assert_eq!(fmt(33.1912), "33.1912");
        assert_eq!(fmt(0.03125), "0.0312"); // exact tie 312.5: to even
        assert_eq!(fmt(0.09375), "0.0938"); // exact tie 937.5: to even
        assert_eq!(fmt(f32::MAX), format!("{:.4}", f32::MAX));
        assert_eq!(fmt(f32::from_bits(1)), "0.0000"); // smallest subnormal
        assert_eq!(fmt(f32::NAN), "NaN");
    }

    #[test]
    fn matches_c_printf_on_a_sweep_of_bit_patterns() {
        // Every 9973rd bit pattern covers subnormals, all exponents and both signs.
        let mut checked = 0;
        for bits in (0..u32::MAX).step_by(9973) {
            let v = f32::from_bits(bits);
            if !v.is_finite() {
                continue;
            }
            assert_eq!(fmt(v), c_printf(v), "bits {bits:#x}");
            checked += 1;
        }
        assert!(checked > 400_000, "{checked}");
    }

    #[test]
    fn writer_dedups_and_hashes() {
        let mut w = CsvWriter::new(Vec::new(), true, true);
        for v in [
            [1.0, 2.0, 3.0],
            [1.0, 2.0, 3.0],
            [0.0, 0.0, 0.0],
            [-0.0, 0.0, 0.0],
        ] {
            w.vertex(&v).unwrap();
        }
        let (out, sum) = w.finish().unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "x,y,z\n1.0000,2.0000,3.0000\n0.0000,0.0000,0.0000\n"
        );
        assert_eq!(sum.rows, 2);
        assert_eq!(sum.digest.size, out.len() as u64);
        assert_eq!(sum.digest.blake3, *blake3::hash(&out).as_bytes());
    }
}
