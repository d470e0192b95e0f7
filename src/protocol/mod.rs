//! The wire protocol, pure: message types and their encodings, bytes in and messages out, no
//! sockets. `docs/PROTOCOL.md` is the normative description; these modules implement it.
//!
//! - [`data`]: the TCP data channel on which A sends the file to B.
//! - [`ret`]: the ZeroMQ return channel on which B sends it (and the CSV) back to A.

pub mod data;
pub mod ret;
pub mod wire;

pub use wire::DecodeError;

/// Bytes that open every handshake message, so a stray client is told apart at once.
pub const MAGIC: [u8; 4] = *b"MFTP";
/// The protocol version this build speaks by preference: full duplex (the client returns the file
/// while it receives it, since version 2), a waiting line for clients beyond the server's limit
/// (version 3), and (version 4) a `Trailer` that lets the client say where its copy differs and
/// the resumption of an interrupted transfer; (version 5) a secured handshake when both sides hold
/// a secret, after which both channels are sealed; (version 6) the mesh's facts, which B returns
/// with the CSV and A compares with its own.
pub const VERSION: u16 = 6;
/// The first version whose `Hello` and `Welcome` may carry the secured handshake.
pub const AUTH_VERSION: u16 = 5;
/// The first version in which B returns the mesh's facts with its CSV (`Mesh`).
pub const MESH_VERSION: u16 = 6;
/// The first version whose `Trailer` carries the CRC-32 of each piece of the file.
pub const CHUNKS_VERSION: u16 = 4;
/// The first version in which an interrupted transfer resumes (`AcceptFrom` and `Resume`).
pub const RESUME_VERSION: u16 = 4;
/// The oldest version the server still answers, with that version's own sequence.
pub const MIN_VERSION: u16 = 1;

/// A random session identifier chosen by B; it ties the data channel to the return channel.
pub type Token = [u8; 16];

/// Lower-case hex, for tokens and digests in logs.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
