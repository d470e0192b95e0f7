//! Messages of the data channel (TCP, A listens, B connects). See `docs/PROTOCOL.md`.
//!
//! Every control message is a frame: one type byte, a u32 big-endian payload length, the payload.
//! The file's bytes themselves are not framed: after `Accept` exactly `Header.size` raw bytes follow,
//! then a `Trailer` frame.

use super::wire::{DecodeError, Reader, put_str16};
use super::{MAGIC, Token};
use crate::integrity::{Digest, MAX_CHUNKS};
use crate::secure::{CONFIRM_LEN, PAKE_MSG_LEN};

/// The one authentication method (version 5): SPAKE2 over Ed25519, then AES-256-GCM.
const AUTH_SPAKE2: u8 = 1;

/// Length of a frame header: type byte plus u32 payload length.
pub const FRAME_HEADER_LEN: usize = 5;
/// The largest control-message payload either side accepts; bounds what a hostile peer can make
/// us allocate before we have checked anything.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024;
/// Longest file name carried in a header, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest human-readable reason carried in a refusal, verdict or error.
pub const MAX_REASON_LEN: usize = 2048;

/// How the return channel is wired for this session, as announced by A in `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// A's ROUTER listens on this port of A's host; B's DEALER connects to it.
    Listen { zmq_port: u16 },
    /// A runs with `--remotehost`: B's DEALER is bound and A's ROUTER connects to it.
    Remote,
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Listen { zmq_port } => write!(f, "server listens on port {zmq_port}"),
            Topology::Remote => f.write_str("server connects to the client (--remotehost)"),
        }
    }
}

/// A's half of the secured handshake, in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeAuth {
    /// A's SPAKE2 message.
    pub msg: [u8; PAKE_MSG_LEN],
    /// A's key confirmation: proof that it derived the same key.
    pub confirm: [u8; CONFIRM_LEN],
}

/// Why one side ended the session early; carried in `Error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A is at its client limit; try again later.
    Busy = 1,
    /// The peers share no protocol version.
    Version = 2,
    /// The peer sent something the protocol does not allow here.
    Protocol = 3,
    /// The return channel could not be established.
    ReturnChannel = 4,
    /// A local failure (file unreadable, disk full, shutting down...).
    Internal = 5,
    /// (Version 5) The peer did not prove the shared secret, or a secret is required or refused.
    Auth = 6,
}

impl ErrorCode {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ErrorCode::Busy,
            2 => ErrorCode::Version,
            3 => ErrorCode::Protocol,
            4 => ErrorCode::ReturnChannel,
            5 => ErrorCode::Internal,
            6 => ErrorCode::Auth,
            _ => {
                return Err(DecodeError::BadValue { field: "error code", value: u64::from(v) });
            }
        })
    }
}

/// One control message of the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMsg {
    /// B -> A, first frame: who B is and where its return socket is bound (0 if it is not), and
    /// (version 5, with a secret) its SPAKE2 message.
    Hello { version: u16, token: Token, return_port: u16, auth: Option<[u8; PAKE_MSG_LEN]> },
    /// A -> B: the version A will speak and how the return channel is wired, and (version 5,
    /// with a secret) A's SPAKE2 message and key confirmation.
    Welcome { version: u16, topology: Topology, auth: Option<Box<WelcomeAuth>> },
    /// B -> A (version 5, with a secret): B's key confirmation. Everything after it, both ways
    /// on both channels, is sealed.
    Confirm { tag: [u8; CONFIRM_LEN] },
    /// B -> A: the return channel is established; A may offer the file.
    Ready,
    /// A -> B: the file on offer. `name` is informational only and never used as a path.
    Header { size: u64, name: String },
    /// B -> A: send the bytes.
    Accept,
    /// B -> A (version 4): send the bytes, and here is what B already holds of them from an
    /// interrupted transfer (possibly nothing), to be sent only if it is right.
    AcceptFrom {
        /// Identifies the transfer across attempts: A keeps its partial returned copy under it.
        transfer: [u8; 16],
        /// The first `prefix.size` bytes B holds, and their digest.
        prefix: Digest,
    },
    /// A -> B (version 4), in answer to `AcceptFrom`: the raw bytes that follow start at `from`,
    /// and B returns the file from `ret_from`.
    Resume {
        /// Where the raw bytes start: B's prefix length if its digest matched, else 0.
        from: u64,
        /// Where B's return of the file starts: what A verifiably holds of it.
        ret_from: u64,
    },
    /// B -> A: B will not take this file, and why.
    Refuse { reason: String },
    /// A -> B, after the raw bytes: the checksums A computed while sending, and (version 4) the
    /// CRC-32 of each piece of the file (see [`crate::integrity::chunk_size`]), which tell B
    /// where its copy differs if it does. Empty before version 4.
    Trailer { crc32: u32, blake3: [u8; 32], chunks: Vec<u32> },
    /// B -> A: whether what B received matches the header and trailer.
    Verdict { ok: bool, reason: String },
    /// Either way: the session ends now, and why.
    Error { code: ErrorCode, reason: String },
    /// A -> B (version 3), before `Welcome`: every client slot is taken and B waits in line at
    /// `position` (1 = next). Repeated as a keep-alive while B waits.
    Queued { position: u32 },
}

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_READY: u8 = 0x03;
const T_HEADER: u8 = 0x04;
const T_ACCEPT: u8 = 0x05;
const T_REFUSE: u8 = 0x06;
const T_TRAILER: u8 = 0x07;
const T_VERDICT: u8 = 0x08;
const T_ERROR: u8 = 0x09;
const T_QUEUED: u8 = 0x0a;
const T_RESUME: u8 = 0x0b;
const T_CONFIRM: u8 = 0x0c;

/// Reads the authentication method byte; only SPAKE2 is known.
fn auth_method(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    match r.u8("authentication method")? {
        AUTH_SPAKE2 => Ok(()),
        v => Err(DecodeError::BadValue { field: "authentication method", value: u64::from(v) }),
    }
}

impl DataMsg {
    /// A short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DataMsg::Hello { .. } => "Hello",
            DataMsg::Welcome { .. } => "Welcome",
            DataMsg::Confirm { .. } => "Confirm",
            DataMsg::Ready => "Ready",
            DataMsg::Header { .. } => "Header",
            DataMsg::Accept | DataMsg::AcceptFrom { .. } => "Accept",
            DataMsg::Resume { .. } => "Resume",
            DataMsg::Refuse { .. } => "Refuse",
            DataMsg::Trailer { .. } => "Trailer",
            DataMsg::Verdict { .. } => "Verdict",
            DataMsg::Error { .. } => "Error",
            DataMsg::Queued { .. } => "Queued",
        }
    }

    /// Appends the whole frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let ty = match self {
            DataMsg::Hello { version, token, return_port, auth } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(token);
                out.extend_from_slice(&return_port.to_be_bytes());
                // Versions 1 to 4, and version 5 without a secret, end here.
                if let Some(msg) = auth {
                    out.push(AUTH_SPAKE2);
                    out.extend_from_slice(msg);
                }
                T_HELLO
            }
            DataMsg::Confirm { tag } => {
                out.extend_from_slice(tag);
                T_CONFIRM
            }
            DataMsg::Welcome { version, topology, auth } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                match topology {
                    Topology::Listen { zmq_port } => {
                        out.push(0);
                        out.extend_from_slice(&zmq_port.to_be_bytes());
                    }
                    Topology::Remote => {
                        out.push(1);
                        out.extend_from_slice(&0u16.to_be_bytes());
                    }
                }
                if let Some(a) = auth {
                    out.push(AUTH_SPAKE2);
                    out.extend_from_slice(&a.msg);
                    out.extend_from_slice(&a.confirm);
                }
                T_WELCOME
            }
            DataMsg::Ready => T_READY,
            DataMsg::Header { size, name } => {
                out.extend_from_slice(&size.to_be_bytes());
                put_str16(out, name, MAX_NAME_LEN);
                T_HEADER
            }
            DataMsg::Accept => T_ACCEPT,
            DataMsg::AcceptFrom { transfer, prefix } => {
                out.extend_from_slice(transfer);
                out.extend_from_slice(&prefix.size.to_be_bytes());
                out.extend_from_slice(&prefix.crc32.to_be_bytes());
                out.extend_from_slice(&prefix.blake3);
                T_ACCEPT
            }
            DataMsg::Resume { from, ret_from } => {
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&ret_from.to_be_bytes());
                T_RESUME
            }
            DataMsg::Refuse { reason } => {
                put_str16(out, reason, MAX_REASON_LEN);
                T_REFUSE
            }
            DataMsg::Trailer { crc32, blake3, chunks } => {
                out.extend_from_slice(&crc32.to_be_bytes());
                out.extend_from_slice(blake3);
                // Versions 1 to 3 end here; an empty list is written as none at all.
                if !chunks.is_empty() {
                    let n = chunks.len().min(MAX_CHUNKS as usize);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                    chunks[..n].iter().for_each(|c| out.extend_from_slice(&c.to_be_bytes()));
                }
                T_TRAILER
            }
            DataMsg::Verdict { ok, reason } => {
                out.push(u8::from(*ok));
                put_str16(out, reason, MAX_REASON_LEN);
                T_VERDICT
            }
            DataMsg::Error { code, reason } => {
                out.push(*code as u8);
                put_str16(out, reason, MAX_REASON_LEN);
                T_ERROR
            }
            DataMsg::Queued { position } => {
                out.extend_from_slice(&position.to_be_bytes());
                T_QUEUED
            }
        };
        let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
        out[start] = ty;
        out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame as a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }

    /// Decodes one payload whose type byte and length came from the frame header.
    pub fn decode(ty: u8, payload: &[u8]) -> Result<DataMsg, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = match ty {
            T_HELLO => {
                r.magic()?;
                let version = r.u16("version")?;
                let token = r.array("token")?;
                let return_port = r.u16("return port")?;
                let auth = if r.rest_is_empty() {
                    None
                } else {
                    auth_method(&mut r)?;
                    Some(r.array("SPAKE2 message")?)
                };
                r.finish("Hello")?;
                DataMsg::Hello { version, token, return_port, auth }
            }
            T_WELCOME => {
                r.magic()?;
                let version = r.u16("version")?;
                let mode = r.u8("topology")?;
                let zmq_port = r.u16("zmq port")?;
                let auth = if r.rest_is_empty() {
                    None
                } else {
                    auth_method(&mut r)?;
                    let msg = r.array("SPAKE2 message")?;
                    let confirm = r.array("key confirmation")?;
                    Some(Box::new(WelcomeAuth { msg, confirm }))
                };
                r.finish("Welcome")?;
                let topology = match mode {
                    0 => Topology::Listen { zmq_port },
                    1 => Topology::Remote,
                    v => {
                        return Err(DecodeError::BadValue { field: "topology", value: u64::from(v) });
                    }
                };
                DataMsg::Welcome { version, topology, auth }
            }
            T_CONFIRM => {
                let tag = r.array("key confirmation")?;
                r.finish("Confirm")?;
                DataMsg::Confirm { tag }
            }
            T_READY => {
                r.finish("Ready")?;
                DataMsg::Ready
            }
            T_HEADER => {
                let size = r.u64("size")?;
                let name = r.str16("name")?;
                r.finish("Header")?;
                if name.len() > MAX_NAME_LEN {
                    return Err(DecodeError::TooLong { len: name.len(), max: MAX_NAME_LEN });
                }
                DataMsg::Header { size, name }
            }
            // Versions 1 to 3 accept with an empty payload; version 4 with its offer.
            T_ACCEPT if r.rest_is_empty() => DataMsg::Accept,
            T_ACCEPT => {
                let transfer = r.array("transfer")?;
                let size = r.u64("have")?;
                let crc32 = r.u32("crc32")?;
                let blake3 = r.array("blake3")?;
                r.finish("Accept")?;
                DataMsg::AcceptFrom { transfer, prefix: Digest { size, crc32, blake3 } }
            }
            T_RESUME => {
                let from = r.u64("from")?;
                let ret_from = r.u64("ret_from")?;
                r.finish("Resume")?;
                DataMsg::Resume { from, ret_from }
            }
            T_REFUSE => {
                let reason = r.str16("reason")?;
                r.finish("Refuse")?;
                DataMsg::Refuse { reason }
            }
            T_TRAILER => {
                let crc32 = r.u32("crc32")?;
                let blake3 = r.array("blake3")?;
                let mut chunks = Vec::new();
                if !r.rest_is_empty() {
                    let n = r.u16("chunk count")?;
                    if u64::from(n) > MAX_CHUNKS {
                        return Err(DecodeError::BadValue { field: "chunk count", value: u64::from(n) });
                    }
                    for _ in 0..n {
                        chunks.push(r.u32("chunk CRC-32")?);
                    }
                }
                r.finish("Trailer")?;
                DataMsg::Trailer { crc32, blake3, chunks }
            }
            T_VERDICT => {
                let ok = r.flag("ok")?;
                let reason = r.str16("reason")?;
                r.finish("Verdict")?;
                DataMsg::Verdict { ok, reason }
            }
            T_ERROR => {
                let code = ErrorCode::from_u8(r.u8("error code")?)?;
                let reason = r.str16("reason")?;
                r.finish("Error")?;
                DataMsg::Error { code, reason }
            }
            T_QUEUED => {
                let position = r.u32("position")?;
                r.finish("Queued")?;
                DataMsg::Queued { position }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(msg)
    }
}

/// Splits a frame header into its type and payload length, refusing oversized payloads before any
/// allocation happens.
pub fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<(u8, usize), DecodeError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(DecodeError::TooLong { len, max: MAX_FRAME_PAYLOAD });
    }
    Ok((h[0], len))
}

/// Decodes the first frame in `buf`. `Ok(None)` means more bytes are needed; `Ok(Some((msg, n)))`
/// says the frame used `n` bytes. Used by tests and the fuzz target to exercise framing on raw bytes.
///
/// ```
/// use machinaftp::protocol::data::{DataMsg, parse_frame};
/// let bytes = DataMsg::Header { size: 714_884, name: "cad_mesh.stl".into() }.to_bytes();
/// assert_eq!(parse_frame(&bytes[..3]), Ok(None)); // incomplete: need more bytes
/// let (msg, used) = parse_frame(&bytes).unwrap().unwrap();
/// assert_eq!((msg, used), (DataMsg::Header { size: 714_884, name: "cad_mesh.stl".into() }, bytes.len()));
/// assert!(parse_frame(b"GET / HTTP/1.1\r\n").is_err()); // not this protocol
/// ```
pub fn parse_frame(buf: &[u8]) -> Result<Option<(DataMsg, usize)>, DecodeError> {
    let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (ty, len) = parse_frame_header(head)?;
    let Some(payload) = buf[FRAME_HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    Ok(Some((DataMsg::decode(ty, payload)?, FRAME_HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<DataMsg> {
        vec![
            DataMsg::Hello { version: 1, token: [7; 16], return_port: 8081, auth: None },
            DataMsg::Hello { version: 5, token: [7; 16], return_port: 0, auth: Some([0x41; PAKE_MSG_LEN]) },
            DataMsg::Welcome { version: 1, topology: Topology::Listen { zmq_port: 9 }, auth: None },
            DataMsg::Welcome { version: 1, topology: Topology::Remote, auth: None },
            DataMsg::Welcome {
                version: 5,
                topology: Topology::Remote,
                auth: Some(Box::new(WelcomeAuth { msg: [0x42; PAKE_MSG_LEN], confirm: [9; CONFIRM_LEN] })),
            },
            DataMsg::Confirm { tag: [3; CONFIRM_LEN] },
            DataMsg::Ready,
            DataMsg::Header { size: 714_884, name: "cad_mesh.stl".into() },
            DataMsg::Header { size: 0, name: String::new() },
            DataMsg::Accept,
            DataMsg::Refuse { reason: "disk full".into() },
            DataMsg::Trailer { crc32: 1_445_675_924, blake3: [0xab; 32], chunks: Vec::new() },
            DataMsg::Trailer { crc32: 1, blake3: [0xcd; 32], chunks: vec![7, 0xdead_beef, 0] },
            DataMsg::Verdict { ok: true, reason: String::new() },
            DataMsg::Verdict { ok: false, reason: "crc".into() },
            DataMsg::Error { code: ErrorCode::Busy, reason: "busy".into() },
            DataMsg::Error { code: ErrorCode::Version, reason: "v".into() },
            DataMsg::Error { code: ErrorCode::Protocol, reason: "p".into() },
            DataMsg::Error { code: ErrorCode::ReturnChannel, reason: "r".into() },
            DataMsg::Error { code: ErrorCode::Internal, reason: "i".into() },
            DataMsg::Queued { position: 3 },
            DataMsg::AcceptFrom { transfer: [9; 16], prefix: Digest { size: 3 << 20, crc32: 5, blake3: [1; 32] } },
            DataMsg::Resume { from: 3 << 20, ret_from: 1 << 20 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in all_messages() {
            let bytes = msg.to_bytes();
            assert_eq!(parse_frame(&bytes), Ok(Some((msg.clone(), bytes.len()))), "{msg:?}");
        }
    }

    #[test]
    fn every_truncation_asks_for_more_or_errs_never_panics() {
        for msg in all_messages() {
            let bytes = msg.to_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(parse_frame(&bytes[..cut]), Ok(None), "{msg:?} cut at {cut}");
                // A payload cut short but framed as complete is an error, not a panic.
                let mut short = bytes[..cut.max(FRAME_HEADER_LEN)].to_vec();
                let plen = (short.len() - FRAME_HEADER_LEN) as u32;
                short[1..5].copy_from_slice(&plen.to_be_bytes());
                // (A version-4 Trailer cut right after its digest, or a version-4 Accept cut to
                // nothing, is whole as an older version's.)
                let older = match &msg {
                    DataMsg::Trailer { chunks, .. } => !chunks.is_empty() && short.len() == FRAME_HEADER_LEN + 36,
                    DataMsg::AcceptFrom { .. } => short.len() == FRAME_HEADER_LEN,
                    // A Hello or Welcome cut right before its secured handshake is a plain one.
                    DataMsg::Hello { auth: Some(_), .. } => short.len() == FRAME_HEADER_LEN + 24,
                    DataMsg::Welcome { auth: Some(_), .. } => short.len() == FRAME_HEADER_LEN + 9,
                    _ => false,
                };
                if short.len() < bytes.len() && !older {
                    assert!(parse_frame(&short).is_err(), "{msg:?} shortened to {cut}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = DataMsg::Ready.to_bytes();
        bytes.push(0);
        bytes[4] = 1;
        assert_eq!(parse_frame(&bytes), Err(DecodeError::Trailing { message: "Ready", extra: 1 }));
        let mut offer =
            DataMsg::AcceptFrom { transfer: [1; 16], prefix: Digest { size: 0, crc32: 0, blake3: [0; 32] } }.to_bytes();
        offer.push(0);
        offer[4] += 1;
        assert_eq!(parse_frame(&offer), Err(DecodeError::Trailing { message: "Accept", extra: 1 }));
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocation() {
        let bytes = [T_HEADER, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(parse_frame(&bytes), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn bad_magic_and_unknown_type() {
        let mut hello = DataMsg::Hello { version: 1, token: [1; 16], return_port: 0, auth: None }.to_bytes();
        hello[5] = b'X';
        assert!(matches!(parse_frame(&hello), Err(DecodeError::BadMagic(_))));
        assert_eq!(parse_frame(&[0x7f, 0, 0, 0, 0]), Err(DecodeError::UnknownType(0x7f)));
        // An HTTP client hitting the port gets an error, not a hang or a huge allocation.
        assert!(parse_frame(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target does the thorough job.
        let mut state = 0x1234_5678_u32;
        for _ in 0..20_000 {
            let len = (state % 64) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                buf.push(state as u8);
            }
            if let Some(b) = buf.first_mut() {
                *b %= 12;
            }
            let _ = parse_frame(&buf);
        }
    }

    #[test]
    fn worked_example_in_protocol_md() {
        // docs/PROTOCOL.md shows these bytes; keep the document honest.
        let bytes = DataMsg::Header { size: 714_884, name: "cad_mesh.stl".into() }.to_bytes();
        let expected: Vec<u8> =
            [&[0x04, 0, 0, 0, 0x16][..], &[0, 0, 0, 0, 0, 0x0a, 0xe8, 0x84], &[0, 0x0c], b"cad_mesh.stl"].concat();
        assert_eq!(bytes, expected);
        let trailer = DataMsg::Trailer { crc32: 1_445_675_924, blake3: [0; 32], chunks: Vec::new() }.to_bytes();
        assert_eq!(&trailer[5..9], &[0x56, 0x2b, 0x43, 0x94]);
    }

    #[test]
    fn test_vectors_in_protocol_md() {
        let token: Token = core::array::from_fn(|i| i as u8);
        let hello = DataMsg::Hello { version: 1, token, return_port: 8081, auth: None }.to_bytes();
        let mut expected = vec![0x01, 0, 0, 0, 0x18, b'M', b'F', b'T', b'P', 0, 1];
        expected.extend_from_slice(&token);
        expected.extend_from_slice(&[0x1f, 0x91]);
        assert_eq!(hello, expected);
        let w0 = DataMsg::Welcome { version: 1, topology: Topology::Listen { zmq_port: 8081 }, auth: None }.to_bytes();
        assert_eq!(w0, [0x02, 0, 0, 0, 9, b'M', b'F', b'T', b'P', 0, 1, 0, 0x1f, 0x91]);
        let w1 = DataMsg::Welcome { version: 1, topology: Topology::Remote, auth: None }.to_bytes();
        assert_eq!(w1, [0x02, 0, 0, 0, 9, b'M', b'F', b'T', b'P', 0, 1, 1, 0, 0]);
        assert_eq!(DataMsg::Ready.to_bytes(), [3, 0, 0, 0, 0]);
        assert_eq!(DataMsg::Accept.to_bytes(), [5, 0, 0, 0, 0]);
        use crate::protocol::ret::{ReturnMsg, Stream};
        let rh = ReturnMsg::Hello { version: 1, token }.to_bytes();
        assert_eq!(rh.len(), 23);
        assert_eq!(&rh[..7], &[0x11, b'M', b'F', b'T', b'P', 0, 1]);
        assert_eq!(ReturnMsg::HelloAck { version: 1 }.to_bytes(), [0x12, b'M', b'F', b'T', b'P', 0, 1]);
        assert_eq!(
            ReturnMsg::Credit { stream: Stream::File, bytes: 2_097_152 }.to_bytes(),
            [0x14, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]
        );
        assert_eq!(ReturnMsg::KeepAlive.to_bytes(), [0x1b]);
    }

    #[test]
    fn long_names_are_cut_not_unencodable() {
        let name = "n".repeat(MAX_NAME_LEN * 3);
        let bytes = DataMsg::Header { size: 1, name }.to_bytes();
        let Some((DataMsg::Header { name, .. }, _)) = parse_frame(&bytes).unwrap() else {
            panic!("not a header");
        };
        assert_eq!(name.len(), MAX_NAME_LEN);
    }
}
