//! Messages of the return channel (ZeroMQ, B's DEALER to A's ROUTER). See `docs/PROTOCOL.md`.
//!
//! Each message is exactly one ZeroMQ frame (A's ROUTER sees the peer's routing id in front of
//! it). The first byte is the type. B sends the file back in `Data` messages, never more bytes than
//! A has granted in `Credit` messages, so that memory stays bounded at both ends.

use crate::stl::mesh::{BBox, MeshFacts};

use super::wire::{DecodeError, Reader, put_str16};
use super::{MAGIC, Token};

/// Bytes of a `Data` message before its payload: type, stream, offset.
pub const DATA_HEADER_LEN: usize = 1 + 1 + 8;
/// Largest `Data` payload any protocol version allows in one message (version 2's frame).
pub const MAX_CHUNK: usize = FRAME_V2;
/// Version 1's `Data` frame: every frame but a stream's last carries exactly this many bytes.
pub const FRAME_V1: usize = 256 * 1024;
/// Version 2's `Data` frame: larger frames cost less per byte on both ends.
pub const FRAME_V2: usize = 1024 * 1024;

/// The `Data` frame size of protocol `version`: every frame of a stream carries exactly
/// `min(frame, size - offset)` bytes.
pub fn frame_size(version: u16) -> usize {
    if version >= 2 { FRAME_V2 } else { FRAME_V1 }
}
/// Largest control message (anything but `Data`).
pub const MAX_CONTROL_LEN: usize = 4096;
/// Longest reason string in `Result` and `Abort`.
pub const MAX_REASON_LEN: usize = 1024;

/// Which payload a transfer on the return channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The file B received on the data channel, sent back.
    File = 0,
    /// The vertex CSV B made from that file.
    Csv = 1,
}

impl Stream {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Stream::File),
            1 => Ok(Stream::Csv),
            _ => Err(DecodeError::BadValue { field: "stream", value: u64::from(v) }),
        }
    }

    /// Lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Stream::File => "file",
            Stream::Csv => "csv",
        }
    }
}

/// One message of the return channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnMsg<'a> {
    /// B -> A, first: the session token B presented on the data channel.
    Hello { version: u16, token: Token },
    /// A -> B: the token is known; the return channel is up.
    HelloAck { version: u16 },
    /// B -> A: B is about to send `size` bytes of `stream`.
    Offer { stream: Stream, size: u64 },
    /// A -> B: B may send `bytes` more bytes of `stream`.
    Credit { stream: Stream, bytes: u64 },
    /// B -> A: `payload` goes at `offset` of `stream`.
    Data { stream: Stream, offset: u64, payload: &'a [u8] },
    /// B -> A: all of `stream` was sent; the digests B holds for it.
    End { stream: Stream, crc32: u32, blake3: [u8; 32] },
    /// A -> B: A's verdict on `stream`.
    Result { stream: Stream, ok: bool, reason: String },
    /// B -> A: nothing more will come in this session.
    Bye,
    /// Either way: the session is over because of `reason`.
    Abort { reason: String },
    /// Either way: "still working" (converting the CSV); resets the receiver's idle timeout.
    KeepAlive,
    /// B -> A: `stream` will not be sent; `failed` says whether that is a failure (the file is
    /// STL but could not be converted) or expected (not STL, or disabled).
    Skip { stream: Stream, failed: bool, reason: String },
    /// B -> A (version 6), before the CSV's `Offer`: the facts of the mesh B received, computed
    /// while it converted the CSV; A compares them with its own.
    Mesh(Box<MeshFacts>),
}

const T_HELLO: u8 = 0x11;
const T_HELLO_ACK: u8 = 0x12;
const T_OFFER: u8 = 0x13;
const T_CREDIT: u8 = 0x14;
const T_DATA: u8 = 0x15;
const T_END: u8 = 0x16;
const T_RESULT: u8 = 0x17;
const T_BYE: u8 = 0x18;
const T_ABORT: u8 = 0x19;
const T_SKIP: u8 = 0x1a;
const T_KEEPALIVE: u8 = 0x1b;
const T_MESH: u8 = 0x1d;
/// (Version 5, with a secret) A sealed message: this byte, then the AES-256-GCM ciphertext and
/// tag of one message of the types above. Every message but B's `Hello` is sealed.
pub const T_SEALED: u8 = 0x1c;
/// What sealing adds to a message: the type byte and the tag.
pub const SEAL_OVERHEAD: usize = 1 + crate::secure::TAG_LEN;

impl<'a> ReturnMsg<'a> {
    /// A short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ReturnMsg::Hello { .. } => "Hello",
            ReturnMsg::HelloAck { .. } => "HelloAck",
            ReturnMsg::Offer { .. } => "Offer",
            ReturnMsg::Credit { .. } => "Credit",
            ReturnMsg::Data { .. } => "Data",
            ReturnMsg::End { .. } => "End",
            ReturnMsg::Result { .. } => "Result",
            ReturnMsg::Bye => "Bye",
            ReturnMsg::Abort { .. } => "Abort",
            ReturnMsg::Skip { .. } => "Skip",
            ReturnMsg::KeepAlive => "KeepAlive",
            ReturnMsg::Mesh(_) => "Mesh",
        }
    }

    /// Encodes the message as one frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            ReturnMsg::Hello { version, token } => {
                out.push(T_HELLO);
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(token);
            }
            ReturnMsg::HelloAck { version } => {
                out.push(T_HELLO_ACK);
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
            }
            ReturnMsg::Offer { stream, size } => {
                out.push(T_OFFER);
                out.push(*stream as u8);
                out.extend_from_slice(&size.to_be_bytes());
            }
            ReturnMsg::Credit { stream, bytes } => {
                out.push(T_CREDIT);
                out.push(*stream as u8);
                out.extend_from_slice(&bytes.to_be_bytes());
            }
            ReturnMsg::Data { stream, offset, payload } => {
                out.reserve(DATA_HEADER_LEN + payload.len());
                out.extend_from_slice(&data_header(*stream, *offset));
                out.extend_from_slice(payload);
            }
            ReturnMsg::End { stream, crc32, blake3 } => {
                out.push(T_END);
                out.push(*stream as u8);
                out.extend_from_slice(&crc32.to_be_bytes());
                out.extend_from_slice(blake3);
            }
            ReturnMsg::Result { stream, ok, reason } => {
                out.push(T_RESULT);
                out.push(*stream as u8);
                out.push(u8::from(*ok));
                put_str16(&mut out, reason, MAX_REASON_LEN);
            }
            ReturnMsg::Bye => out.push(T_BYE),
            ReturnMsg::KeepAlive => out.push(T_KEEPALIVE),
            ReturnMsg::Abort { reason } => {
                out.push(T_ABORT);
                put_str16(&mut out, reason, MAX_REASON_LEN);
            }
            ReturnMsg::Skip { stream, failed, reason } => {
                out.push(T_SKIP);
                out.push(*stream as u8);
                out.push(u8::from(*failed));
                put_str16(&mut out, reason, MAX_REASON_LEN);
            }
            ReturnMsg::Mesh(m) => {
                out.push(T_MESH);
                for n in [
                    m.facets,
                    m.distinct_vertices,
                    m.solids,
                    m.boundary_edges,
                    m.nonmanifold_edges,
                    m.misoriented_edges,
                    m.degenerate_facets,
                    m.flipped_normals,
                ] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                out.push(u8::from(m.closed));
                let (min, max) = m.bbox.map_or(([0.0; 3], [0.0; 3]), |b| (b.min, b.max));
                out.push(u8::from(m.bbox.is_some()));
                for x in min.iter().chain(&max).chain([&m.area, &m.volume]) {
                    out.extend_from_slice(&x.to_bits().to_be_bytes());
                }
                // The facts carry it as hex, as `inspect --json` shows it (always 64 digits).
                let digest = blake3::Hash::from_hex(&m.geometry_blake3).map_or([0; 32], |h| *h.as_bytes());
                out.extend_from_slice(&digest);
            }
        }
        out
    }

    /// Decodes one frame. Any byte string gives a message or an error, never a panic.
    pub fn decode(buf: &'a [u8]) -> Result<ReturnMsg<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        let ty = r.u8("type")?;
        if ty != T_DATA && buf.len() > MAX_CONTROL_LEN {
            return Err(DecodeError::TooLong { len: buf.len(), max: MAX_CONTROL_LEN });
        }
        let msg = match ty {
            T_HELLO => {
                r.magic()?;
                let version = r.u16("version")?;
                let token = r.array("token")?;
                r.finish("Hello")?;
                ReturnMsg::Hello { version, token }
            }
            T_HELLO_ACK => {
                r.magic()?;
                let version = r.u16("version")?;
                r.finish("HelloAck")?;
                ReturnMsg::HelloAck { version }
            }
            T_OFFER => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let size = r.u64("size")?;
                r.finish("Offer")?;
                ReturnMsg::Offer { stream, size }
            }
            T_CREDIT => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let bytes = r.u64("bytes")?;
                r.finish("Credit")?;
                ReturnMsg::Credit { stream, bytes }
            }
            T_DATA => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let offset = r.u64("offset")?;
                let payload = r.rest();
                if payload.len() > MAX_CHUNK {
                    return Err(DecodeError::TooLong { len: payload.len(), max: MAX_CHUNK });
                }
                ReturnMsg::Data { stream, offset, payload }
            }
            T_END => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let crc32 = r.u32("crc32")?;
                let blake3 = r.array("blake3")?;
                r.finish("End")?;
                ReturnMsg::End { stream, crc32, blake3 }
            }
            T_RESULT => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let ok = r.flag("ok")?;
                let reason = r.str16("reason")?;
                r.finish("Result")?;
                ReturnMsg::Result { stream, ok, reason }
            }
            T_BYE => {
                r.finish("Bye")?;
                ReturnMsg::Bye
            }
            T_ABORT => {
                let reason = r.str16("reason")?;
                r.finish("Abort")?;
                ReturnMsg::Abort { reason }
            }
            T_KEEPALIVE => {
                r.finish("KeepAlive")?;
                ReturnMsg::KeepAlive
            }
            T_SKIP => {
                let stream = Stream::from_u8(r.u8("stream")?)?;
                let failed = r.flag("failed")?;
                let reason = r.str16("reason")?;
                r.finish("Skip")?;
                ReturnMsg::Skip { stream, failed, reason }
            }
            T_MESH => {
                let mut n = [0u64; 8];
                for (v, name) in n.iter_mut().zip([
                    "facets",
                    "vertices",
                    "solids",
                    "boundary",
                    "non-manifold",
                    "misoriented",
                    "degenerate",
                    "flipped",
                ]) {
                    *v = r.u64(name)?;
                }
                let closed = r.flag("closed")?;
                let has_box = r.flag("has box")?;
                let mut f = [0f64; 8];
                for x in f.iter_mut() {
                    *x = f64::from_bits(r.u64("mesh number")?);
                }
                let digest: [u8; 32] = r.array("geometry blake3")?;
                r.finish("Mesh")?;
                let (min, max) = ([f[0], f[1], f[2]], [f[3], f[4], f[5]]);
                let size = [max[0] - min[0], max[1] - min[1], max[2] - min[2]];
                ReturnMsg::Mesh(Box::new(MeshFacts {
                    facets: n[0],
                    distinct_vertices: n[1],
                    solids: n[2],
                    bbox: has_box.then_some(BBox { min, max, size }),
                    area: f[6],
                    volume: f[7],
                    closed,
                    boundary_edges: n[3],
                    nonmanifold_edges: n[4],
                    misoriented_edges: n[5],
                    degenerate_facets: n[6],
                    flipped_normals: n[7],
                    geometry_blake3: super::hex(&digest),
                }))
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(msg)
    }
}

/// Whether `frame` ends its session while the peer may still be sending: an `Abort`, or a
/// negative `Result` (judged by its first bytes, without decoding it).
pub fn ends_session(frame: &[u8]) -> bool {
    match frame {
        [T_ABORT, ..] => true,
        [T_RESULT, _, ok, ..] => *ok == 0,
        _ => false,
    }
}

/// Whether `frame` claims to be a `Hello` (by its type byte), without decoding it.
pub fn is_hello(frame: &[u8]) -> bool {
    frame.first() == Some(&T_HELLO)
}

/// Whether `frame` is a `KeepAlive`, without decoding anything else (receivers skip these on
/// the path that carries file data).
pub fn is_keepalive(frame: &[u8]) -> bool {
    frame == [T_KEEPALIVE]
}

/// How often a side that is busy (converting the CSV) sends `KeepAlive`: often enough for the
/// shortest idle timeout.
pub fn keepalive_every(timeout: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    (timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The first `DATA_HEADER_LEN` bytes of a `Data` message, so a sender can read file bytes straight
/// into the message buffer behind it instead of copying them.
pub fn data_header(stream: Stream, offset: u64) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = T_DATA;
    h[1] = stream as u8;
    h[2..].copy_from_slice(&offset.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<ReturnMsg<'static>> {
        vec![
            ReturnMsg::Mesh(Box::new({
                let mut ins = crate::stl::mesh::Inspector::new();
                for (n, f) in crate::stl::sample::cube(10.0, [1.5, -2.0, 3.0]) {
                    ins.facet(&n, &f);
                }
                ins.finish(1)
            })),
            ReturnMsg::Mesh(Box::new(crate::stl::mesh::Inspector::new().finish(0))),
            ReturnMsg::Hello { version: 1, token: [9; 16] },
            ReturnMsg::HelloAck { version: 1 },
            ReturnMsg::Offer { stream: Stream::File, size: 714_884 },
            ReturnMsg::Offer { stream: Stream::Csv, size: 0 },
            ReturnMsg::Credit { stream: Stream::File, bytes: 1 << 21 },
            ReturnMsg::Data { stream: Stream::File, offset: 42, payload: b"abc" },
            ReturnMsg::Data { stream: Stream::Csv, offset: 0, payload: b"" },
            ReturnMsg::End { stream: Stream::File, crc32: 1_445_675_924, blake3: [3; 32] },
            ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() },
            ReturnMsg::Result { stream: Stream::Csv, ok: false, reason: "bad".into() },
            ReturnMsg::Bye,
            ReturnMsg::Abort { reason: "timeout".into() },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in all_messages() {
            let bytes = msg.to_bytes();
            assert_eq!(ReturnMsg::decode(&bytes), Ok(msg.clone()));
        }
    }

    #[test]
    fn truncated_messages_are_errors() {
        for msg in all_messages() {
            let bytes = msg.to_bytes();
            for cut in 0..bytes.len() {
                // A Data frame cut inside its payload is still a valid (shorter) Data frame.
                if matches!(msg, ReturnMsg::Data { .. }) && cut >= DATA_HEADER_LEN {
                    continue;
                }
                assert!(ReturnMsg::decode(&bytes[..cut]).is_err(), "{msg:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn data_header_matches_encoding() {
        let msg = ReturnMsg::Data { stream: Stream::Csv, offset: 77, payload: b"xyz" };
        let bytes = msg.to_bytes();
        assert_eq!(&bytes[..DATA_HEADER_LEN], &data_header(Stream::Csv, 77));
    }

    #[test]
    fn oversized_messages_are_rejected() {
        let mut big = vec![T_DATA, 0];
        big.extend_from_slice(&0u64.to_be_bytes());
        big.resize(DATA_HEADER_LEN + MAX_CHUNK + 1, 0);
        assert!(matches!(ReturnMsg::decode(&big), Err(DecodeError::TooLong { .. })));
        let mut abort = vec![T_ABORT];
        abort.resize(MAX_CONTROL_LEN + 1, b'a');
        assert!(matches!(ReturnMsg::decode(&abort), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(ReturnMsg::decode(b"").is_err());
        assert_eq!(ReturnMsg::decode(&[0x7e]), Err(DecodeError::UnknownType(0x7e)));
        assert!(ReturnMsg::decode(&[T_OFFER, 9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ReturnMsg::decode(&[T_RESULT, 0, 2, 0, 0]).is_err());
        let end = |m: &ReturnMsg<'_>| ends_session(&m.to_bytes());
        assert!(end(&ReturnMsg::Abort { reason: "x".into() }));
        assert!(end(&ReturnMsg::Result { stream: Stream::File, ok: false, reason: "x".into() }));
        assert!(!end(&ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() }));
        assert!(!end(&ReturnMsg::Bye));
        let mut hello = ReturnMsg::Hello { version: 1, token: [1; 16] }.to_bytes();
        hello[1] = b'Z';
        assert!(matches!(ReturnMsg::decode(&hello), Err(DecodeError::BadMagic(_))));
    }
}
