//! Checksums and digests, computed while bytes stream past: CRC-32 (zlib's polynomial, the number
//! the Python version logged) for compatibility, and BLAKE3 for integrity that cannot be fooled.

use std::fmt;

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

/// Feeds bytes to both checksums at once so that nothing reads the data twice.
#[derive(Default)]
pub struct Hasher {
    size: u64,
    crc: crc32fast::Hasher,
    b3: blake3::Hasher,
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

    /// Adds `bytes` to the running checksums.
    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        // Both checksums read each block while it is in the L1 cache: whichever ran first over
        // a large buffer would fetch it from memory, and the other fetch it again.
        for block in bytes.chunks(BLOCK) {
            self.crc.update(block);
            self.b3.update(block);
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything seen.
    pub fn finish(&self) -> Digest {
        Digest { size: self.size, crc32: self.crc.clone().finalize(), blake3: *self.b3.finalize().as_bytes() }
    }
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
