//! Byte-level helpers shared by both channels' codecs: a bounds-checked reader over a byte
//! slice and the error every decoder returns. Nothing here touches I/O.

use std::fmt;

/// Why a byte string is not a valid message. Decoders return this for any input; they never panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The message ended before the field named here was complete.
    Truncated { field: &'static str, need: usize, have: usize },
    /// Bytes were left over after the last field of a fixed-layout message.
    Trailing { message: &'static str, extra: usize },
    /// The type byte names no message this side understands.
    UnknownType(u8),
    /// The magic bytes did not say `MFTP`: the peer is not speaking this protocol.
    BadMagic([u8; 4]),
    /// A frame announced a payload longer than the protocol allows.
    TooLong { len: usize, max: usize },
    /// A field that must hold UTF-8 text does not.
    BadUtf8(&'static str),
    /// A field holds a value outside its documented range.
    BadValue { field: &'static str, value: u64 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field, need, have } => {
                write!(f, "message truncated in field `{field}` (needs {need} more bytes, {have} left)")
            }
            DecodeError::Trailing { message, extra } => {
                write!(f, "{extra} unexpected trailing bytes after a {message} message")
            }
            DecodeError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            DecodeError::BadMagic(m) => {
                write!(f, "bad magic {:?}: the peer does not speak the machinaftp protocol", String::from_utf8_lossy(m))
            }
            DecodeError::TooLong { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::BadUtf8(field) => write!(f, "field `{field}` is not valid UTF-8"),
            DecodeError::BadValue { field, value } => {
                write!(f, "field `{field}` has invalid value {value}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a received payload; each getter checks bounds and names the field it reads.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field, need: n, have: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A boolean byte: 0 or 1, anything else is an error rather than "truthy".
    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadValue { field, value: u64::from(v) }),
        }
    }

    /// A string prefixed by its u16 byte length.
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        let raw = self.bytes(len, field)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::BadUtf8(field))
    }

    /// The four magic bytes that open every handshake message.
    pub(crate) fn magic(&mut self) -> Result<(), DecodeError> {
        let magic: [u8; 4] = self.array("magic")?;
        if magic != super::MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        Ok(())
    }

    /// Whether the payload is all read, for a message whose newer versions add fields at the end.
    pub(crate) fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whatever is left, for messages whose last field runs to the end.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything is left: fixed-layout messages must be exactly their size.
    pub(crate) fn finish(self, message: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Trailing { message, extra: self.buf.len() }) }
    }
}

/// Appends a u16-length-prefixed string, cutting it at a character boundary if it is longer than
/// `max` bytes so that a long reason or name can never make an unencodable message.
pub(crate) fn put_str16(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max).min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_with_field() {
        let mut r = Reader::new(&[0, 1]);
        assert_eq!(r.u16("a"), Ok(1));
        assert_eq!(r.u32("b"), Err(DecodeError::Truncated { field: "b", need: 4, have: 0 }));
    }

    #[test]
    fn flag_rejects_other_values() {
        assert!(Reader::new(&[2]).flag("ok").is_err());
        assert_eq!(Reader::new(&[1]).flag("ok"), Ok(true));
    }

    #[test]
    fn str16_cuts_at_char_boundary() {
        let mut out = Vec::new();
        put_str16(&mut out, "aé", 2); // 'é' is two bytes: only "a" fits.
        assert_eq!(out, vec![0, 1, b'a']);
        assert_eq!(Reader::new(&out).str16("s"), Ok("a".to_owned()));
    }

    #[test]
    fn str16_rejects_bad_utf8_and_short_input() {
        assert_eq!(Reader::new(&[0, 1, 0xff]).str16("s"), Err(DecodeError::BadUtf8("s")));
        assert!(matches!(Reader::new(&[0, 5, b'a']).str16("s"), Err(DecodeError::Truncated { .. })));
    }
}
