//! Checksums and digests, computed while bytes stream past: CRC-32 (zlib's polynomial, the number
//! the Python version logged) for compatibility, and BLAKE3 for integrity that cannot be fooled.

use std::fmt;
use std::sync::Arc;

use crate::protocol::hex;

/// What identifies a byte stream: its length, CRC-32 and BLAKE3 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// Length in bytes.
    pub size: u64,
    /// CRC-32 as zlib computes it.
    pub crc32: u32,
    /// BLAKE3-256.
    pub blake3: [u8; 32],
}

impl Digest {
    /// A human-readable list of what differs from `other`, or `None` if they match.
    pub fn mismatch(&self, other: &Digest) -> Option<String> {
        let mut parts = Vec::new();
        if self.size != other.size {
            parts.push(format!("size {} != {}", self.size, other.size));
        }
        if self.crc32 != other.crc32 {
            parts.push(format!("CRC-32 {} != {}", self.crc32, other.crc32));
        }
        if self.blake3 != other.blake3 {
            parts.push(format!("BLAKE3 {} != {}", short(&self.blake3), short(&other.blake3)));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// The BLAKE3 digest in full hex.
    pub fn blake3_hex(&self) -> String {
        hex(&self.blake3)
    }
}

fn short(d: &[u8; 32]) -> String {
    hex(&d[..8])
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, CRC-32 {}, BLAKE3 {}", self.size, self.crc32, self.blake3_hex())
    }
}

/// Bytes given to each checksum in turn: small enough to stay in the L1 cache between them, large
/// enough for BLAKE3 to hash 16 of its 1 KiB chunks in parallel.
const BLOCK: usize = 16 << 10;

/// A file's digest and the CRC-32s of its pieces (see [`chunk_size`]), as A keeps them while the
/// file is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The whole file's.
    pub digest: Digest,
    /// Each piece's CRC-32.
    pub chunks: Arc<[u32]>,
}

/// The most pieces a file is cut into for [`Hasher::chunk_crcs`]: their list travels in one
/// data-channel frame (8 KiB of it).
pub const MAX_CHUNKS: u64 = 2048;

/// The length of the pieces whose CRC-32s locate a difference in a file of `size` bytes: 1 MiB,
/// or the power of two that keeps their number within [`MAX_CHUNKS`]. Both sides derive it from
/// the size alone.
pub fn chunk_size(size: u64) -> u64 {
    size.div_ceil(MAX_CHUNKS).next_power_of_two().max(1 << 20)
}

/// Feeds bytes to both checksums at once so that nothing reads the data twice. The CRC-32 is
/// computed piece by piece (see [`chunk_size`]) and the pieces combined into the whole's, so the
/// pieces' CRC-32s, which tell where two copies differ, cost nothing extra.
#[derive(Clone)]
pub struct Hasher {
    size: u64,
    /// The pieces' length; `u64::MAX` when only the whole counts.
    chunk: u64,
    /// The CRC-32 of the completed pieces, combined.
    crc: crc32fast::Hasher,
    /// The piece being hashed.
    piece: crc32fast::Hasher,
    /// The completed pieces' CRC-32s.
    crcs: Vec<u32>,
    b3: blake3::Hasher,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::chunked(u64::MAX)
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({} bytes)", self.size)
    }
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hasher that also keeps the CRC-32 of every `chunk` bytes.
    pub fn chunked(chunk: u64) -> Self {
        Hasher {
            size: 0,
            chunk: chunk.max(1),
            crc: crc32fast::Hasher::new(),
            piece: crc32fast::Hasher::new(),
            crcs: Vec::new(),
            b3: blake3::Hasher::new(),
        }
    }

    /// Adds `bytes` to the running checksums.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let left_in_piece = self.chunk - self.size % self.chunk;
            let n = usize::try_from(left_in_piece).unwrap_or(usize::MAX).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            // Both checksums read each block while it is in the L1 cache: whichever ran first
            // over a large buffer would fetch it from memory, and the other fetch it again.
            for block in now.chunks(BLOCK) {
                self.piece.update(block);
                self.b3.update(block);
            }
            self.size += n as u64;
            if self.size.is_multiple_of(self.chunk) {
                let piece = std::mem::take(&mut self.piece);
                self.crcs.push(piece.clone().finalize());
                self.crc.combine(&piece);
            }
            bytes = rest;
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything seen.
    pub fn finish(&self) -> Digest {
        let mut crc = self.crc.clone();
        crc.combine(&self.piece);
        Digest { size: self.size, crc32: crc.finalize(), blake3: *self.b3.finalize().as_bytes() }
    }

    /// The CRC-32 of each piece seen, the last one possibly short.
    pub fn chunk_crcs(&self) -> Vec<u32> {
        let mut crcs = self.crcs.clone();
        if !self.size.is_multiple_of(self.chunk) {
            crcs.push(self.piece.clone().finalize());
        }
        crcs
    }
}

/// The first piece in which two lists of piece CRC-32s (of files of `size` bytes, see
/// [`chunk_size`]) differ: its offset and length. `None` if the lists agree, or do not describe
/// the same number of pieces.
pub fn first_differing_chunk(ours: &[u32], theirs: &[u32], size: u64) -> Option<(u64, u64)> {
    let chunk = chunk_size(size);
    if ours.len() as u64 != size.div_ceil(chunk) || ours.len() != theirs.len() {
        return None;
    }
    let i = ours.iter().zip(theirs).position(|(a, b)| a != b)? as u64;
    Some((i * chunk, chunk.min(size - i * chunk)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_zlibs() {
        // zlib.crc32(b"123456789") == 0xCBF43926, the standard check value.
        let mut h = Hasher::new();
        h.update(b"1234");
        h.update(b"56789");
        let d = h.finish();
        assert_eq!(d.crc32, 0xCBF4_3926);
        assert_eq!(d.size, 9);
        assert_eq!(d.blake3, *blake3::hash(b"123456789").as_bytes());
    }

    #[test]
    fn pieces_combine_into_the_whole_and_locate_a_difference() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut whole = Hasher::new();
        whole.update(&data);
        let mut pieces = Hasher::chunked(1000);
        // Fed in odd slices that straddle the pieces' edges.
        for part in data.chunks(333) {
            pieces.update(part);
        }
        assert_eq!(pieces.finish(), whole.finish(), "the pieces' CRC-32s combine into the whole's");
        let crcs = pieces.chunk_crcs();
        assert_eq!(crcs.len(), 10);
        assert_eq!(crcs[3], crc32fast::hash(&data[3000..4000]));
        let mut short = Hasher::chunked(1000);
        short.update(&data[..2500]);
        assert_eq!(short.chunk_crcs()[2], crc32fast::hash(&data[2000..2500]), "the last piece may be short");
    }

    #[test]
    fn chunk_size_keeps_the_list_small() {
        assert_eq!(chunk_size(0), 1 << 20);
        assert_eq!(chunk_size(1 << 30), 1 << 20, "1 GiB: 1024 pieces of 1 MiB");
        assert_eq!(chunk_size(8 << 30), 4 << 20, "8 GiB: 2048 pieces of 4 MiB");
        for size in [1, 5 << 20, (1 << 40) + 1, u64::MAX] {
            assert!(size.div_ceil(chunk_size(size)) <= MAX_CHUNKS, "{size}");
        }
        let size = 5 * (1 << 20) + 7;
        let (a, mut b) = (vec![1u32; 6], vec![1u32; 6]);
        assert_eq!(first_differing_chunk(&a, &b, size), None);
        b[5] = 2;
        assert_eq!(first_differing_chunk(&a, &b, size), Some((5 << 20, 7)), "the last piece is short");
        assert_eq!(first_differing_chunk(&a, &b[..5], size), None, "lists of other lengths locate nothing");
        // docs/PROTOCOL.md's example (V4-pieces): a byte at 3145745 of 5 MiB and 7 bytes.
        let mut c = a.clone();
        c[3145745 / chunk_size(size) as usize] = 9;
        assert_eq!(first_differing_chunk(&a, &c, size), Some((3145728, 1 << 20)));
    }

    #[test]
    fn mismatch_names_each_difference() {
        let a = Hasher::new().finish();
        let mut h = Hasher::new();
        h.update(b"x");
        let b = h.finish();
        let m = a.mismatch(&b).unwrap();
        assert!(m.contains("size 0 != 1") && m.contains("CRC-32") && m.contains("BLAKE3"), "{m}");
        assert_eq!(a.mismatch(&a), None);
    }
}
