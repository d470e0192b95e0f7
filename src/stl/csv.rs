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

/// Longest output of [`write_fixed4`]: `-` and 39 integer digits of `f32::MAX`, `.`, 4 digits.
pub const MAX_FIXED4: usize = 48;

/// Pairs of decimal digits "00".."99", so each division step yields two digits.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn pair(n: usize) -> [u8; 2] {
    [PAIRS[2 * n], PAIRS[2 * n + 1]]
}

/// Writes `v` as C's `%.4f` would at the start of `dst` (at least [`MAX_FIXED4`] bytes) and
/// returns the number of bytes written.
pub fn write_fixed4(dst: &mut [u8], v: f32) -> usize {
    let dst = &mut dst[..MAX_FIXED4];
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = u64::from(bits & 0x7f_ffff);
    if exp == 0xff {
        return write_slow(dst, v);
    }
    // Subnormals have no implicit leading bit and the minimum exponent.
    let (m, e) = if exp == 0 { (frac, -149) } else { (frac | 0x80_0000, exp - 150) };
    let scaled = m * 10_000; // < 2^38
    let q = if e >= 0 {
        if e > 25 {
            return write_slow(dst, v);
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
            if rem > half || (rem == half && q & 1 == 1) { q + 1 } else { q }
        }
    };
    let mut pos = 0;
    if bits >> 31 == 1 {
        dst[0] = b'-';
        pos = 1;
    }
    let mut int = q / 10_000;
    let f = (q % 10_000) as usize;
    // Mesh coordinates are mostly below 10^4: compare first, divide only for the rare rest.
    let digits = match int {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => {
            let mut d = 5;
            let mut t = int / 100_000;
            while t > 0 {
                t /= 10;
                d += 1;
            }
            d
        }
    };
    let mut end = pos + digits;
    while int >= 100 {
        dst[end - 2..end].copy_from_slice(&pair((int % 100) as usize));
        int /= 100;
        end -= 2;
    }
    if int >= 10 {
        dst[end - 2..end].copy_from_slice(&pair(int as usize));
    } else {
        dst[end - 1] = b'0' + int as u8;
    }
    let at = pos + digits;
    dst[at] = b'.';
    dst[at + 1..at + 3].copy_from_slice(&pair(f / 100));
    dst[at + 3..at + 5].copy_from_slice(&pair(f % 100));
    at + 5
}

/// Appends `v` formatted as C's `%.4f` would.
///
/// ```
/// let mut out = Vec::new();
/// machinaftp::stl::csv::push_fixed4(&mut out, 0.03125); // an exact tie: rounds to even
/// out.push(b' ');
/// machinaftp::stl::csv::push_fixed4(&mut out, -1e-9); // a tiny negative keeps its sign
/// assert_eq!(out, b"0.0312 -0.0000");
/// ```
pub fn push_fixed4(out: &mut Vec<u8>, v: f32) {
    let mut tmp = [0u8; MAX_FIXED4];
    let n = write_fixed4(&mut tmp, v);
    out.extend_from_slice(&tmp[..n]);
}

fn write_slow(dst: &mut [u8], v: f32) -> usize {
    // std's fixed-precision formatting is exact (it falls back to big-integer arithmetic).
    let mut cur = std::io::Cursor::new(dst);
    let _ = write!(cur, "{v:.4}");
    cur.position() as usize
}

/// What the CSV writer produced.
#[derive(Debug, Clone, Copy)]
pub struct CsvSummary {
    /// Vertex lines written (header excluded).
    pub rows: u64,
    /// Digest of every byte written, when asked for.
    pub digest: Option<Digest>,
}

/// Writes vertex lines through a block buffer.
pub struct CsvWriter<W: Write> {
    inner: W,
    buf: Box<[u8]>,
    pos: usize,
    seen: Option<HashSet<[u32; 3]>>,
    rows: u64,
    hasher: Option<Hasher>,
}

const FLUSH_AT: usize = 64 * 1024;
/// One line at most: three numbers, two commas, a newline.
const MAX_LINE: usize = 3 * MAX_FIXED4 + 3;

impl<W: Write> CsvWriter<W> {
    /// A writer; `unique` keeps only the first occurrence of each distinct vertex (compared by
    /// exact value, so `0.0` and `-0.0` count as one), `header` starts with an `x,y,z` line.
    pub fn new(inner: W, unique: bool, header: bool) -> Self {
        let mut buf = vec![0u8; FLUSH_AT + MAX_LINE].into_boxed_slice();
        let mut pos = 0;
        if header {
            buf[..6].copy_from_slice(b"x,y,z\n");
            pos = 6;
        }
        CsvWriter { inner, buf, pos, seen: unique.then(HashSet::new), rows: 0, hasher: None }
    }

    /// Also computes the digest of everything written (to send the CSV on without reading it again).
    pub fn with_digest(mut self) -> Self {
        self.hasher = Some(Hasher::new());
        self
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
        let line = &mut self.buf[self.pos..self.pos + MAX_LINE];
        let mut n = write_fixed4(line, v[0]);
        line[n] = b',';
        n += 1;
        n += write_fixed4(&mut line[n..], v[1]);
        line[n] = b',';
        n += 1;
        n += write_fixed4(&mut line[n..], v[2]);
        line[n] = b'\n';
        self.pos += n + 1;
        self.rows += 1;
        if self.pos >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        let data = &self.buf[..self.pos];
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.inner.write_all(data)?;
        self.pos = 0;
        Ok(())
    }

    /// Flushes what is buffered and hands over the output so far, leaving an empty one in its place
    /// (the parallel formatter's workers reuse one writer for many batches).
    pub fn take_inner(&mut self) -> io::Result<W>
    where
        W: Default,
    {
        self.flush_buf()?;
        Ok(std::mem::take(&mut self.inner))
    }

    /// Flushes everything and returns the writer with what was written.
    pub fn finish(mut self) -> io::Result<(W, CsvSummary)> {
        self.flush_buf()?;
        self.inner.flush()?;
        let digest = self.hasher.as_ref().map(Hasher::finish);
        Ok((self.inner, CsvSummary { rows: self.rows, digest }))
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
        let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), f64::from(v)) };
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
        let mut w = CsvWriter::new(Vec::new(), true, true).with_digest();
        for v in [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-0.0, 0.0, 0.0]] {
            w.vertex(&v).unwrap();
        }
        let (out, sum) = w.finish().unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "x,y,z\n1.0000,2.0000,3.0000\n0.0000,0.0000,0.0000\n");
        assert_eq!(sum.rows, 2);
        let digest = sum.digest.unwrap();
        assert_eq!(digest.size, out.len() as u64);
        assert_eq!(digest.blake3, *blake3::hash(&out).as_bytes());
    }
}
