//! Why a session ends without success, as typed values: callers match on variants, `main` turns
//! them into exit statuses and hints, and the peer is told the same words.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::integrity::Digest;
use crate::protocol::DecodeError;
use crate::protocol::ret::Stream;

/// Which way the bytes were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// A to B over the TCP data channel.
    Data,
    /// B to A over the ZeroMQ return channel.
    Return,
}

impl fmt::Display for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Leg::Data => "data leg (A to B over TCP)",
            Leg::Return => "return leg (B to A over ZeroMQ)",
        })
    }
}

/// Which side of the session a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A, the server.
    Server,
    /// B, the client.
    Client,
}

/// Where in the session something happened, with the progress made, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hello and Welcome on the data channel.
    Handshake,
    /// Hello and HelloAck on the return channel.
    ReturnHandshake,
    /// The Header and B's answer to it.
    Offer,
    /// The file's raw bytes on the data channel.
    Data {
        /// Who is speaking: A sends, B receives.
        role: Role,
        /// Bytes moved so far.
        done: u64,
        /// The file's size.
        size: u64,
    },
    /// The Trailer and B's Verdict.
    Verdict,
    /// A stream on the return channel.
    Return {
        /// The file or its CSV.
        stream: Stream,
        /// Bytes moved so far.
        done: u64,
        /// The stream's size.
        size: u64,
    },
    /// Waiting for the other side's verdict on a stream.
    Result(Stream),
    /// B converting the file, A waiting for the CSV or the word that none comes.
    Csv,
    /// The session is over but for the goodbye.
    Closing,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Phase::Handshake => f.write_str("handshake"),
            Phase::ReturnHandshake => f.write_str("return channel handshake"),
            Phase::Offer => f.write_str("offering the file"),
            Phase::Data { role: Role::Server, done, size } => {
                write!(f, "sending the file ({done} of {size} bytes)")
            }
            Phase::Data { role: Role::Client, done, size } => {
                write!(f, "receiving the file ({done} of {size} bytes arrived)")
            }
            Phase::Verdict => f.write_str("checking the data leg"),
            Phase::Return { stream, done, size } => {
                write!(f, "return leg ({}, {done} of {size} bytes)", stream.name())
            }
            Phase::Result(stream) => write!(f, "waiting for the verdict on the returned {}", stream.name()),
            Phase::Csv => f.write_str("vertex CSV"),
            Phase::Closing => f.write_str("closing"),
        }
    }
}

/// Two digests that should be equal and are not; shows only what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestDiff {
    /// What arrived.
    pub got: Digest,
    /// What it should have been.
    pub expected: Digest,
    /// Where the bytes first differ: exactly, when the side that found the difference holds the
    /// original to compare with (A, for the returned copy); to a piece, when it holds the
    /// original's piece CRC-32s (B, for the data leg, since version 4). Boxed: failures travel
    /// in `Result`s, which stay small.
    pub first: Option<Box<Locus>>,
}

impl DigestDiff {
    /// `Some` if `got` differs from `expected`.
    pub fn check(got: Digest, expected: Digest) -> Option<DigestDiff> {
        (got != expected).then_some(DigestDiff { got, expected, first: None })
    }
}

impl fmt::Display for DigestDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.got.mismatch(&self.expected).unwrap_or_else(|| "no difference".into()))?;
        match &self.first {
            Some(r) => write!(f, "; {r}"),
            None => Ok(()),
        }
    }
}

/// Where a copy first differs from its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locus {
    /// These bytes differ.
    Exact(ByteRange),
    /// The first difference lies somewhere in these bytes.
    Within(ByteRange),
}

impl fmt::Display for Locus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locus::Exact(r) => r.fmt(f),
            Locus::Within(r) => {
                let last = r.offset + r.len.max(1) - 1;
                write!(f, "the first difference lies within bytes {}-{} (counting from 0)", r.offset, last)
            }
        }
    }
}

/// The first run of bytes in which a copy differs from its original: `len` bytes from `offset`
/// (the run is looked for within one block of the comparison, so a long run is cut at its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// The first differing byte.
    pub offset: u64,
    /// How many differ from there on.
    pub len: u64,
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.offset + self.len.max(1) - 1;
        if self.len <= 1 {
            write!(f, "the first differing byte is byte {} (counting from 0)", self.offset)
        } else {
            write!(f, "the first differing bytes are bytes {}-{} (counting from 0)", self.offset, last)
        }
    }
}

/// A valid message that the protocol does not allow at this point, or bytes that are not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A message of the wrong kind.
    Unexpected {
        /// What the protocol allows here.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// Bytes that do not decode.
    Undecodable(DecodeError),
    /// A `Data` frame that is not the next bytes of its stream.
    OutOfOrder {
        /// The frame's offset.
        offset: u64,
        /// Its payload length.
        len: u64,
        /// Bytes received before it.
        received: u64,
        /// The stream's size.
        size: u64,
    },
    /// A `Data` frame of the wrong length (every frame is `min(frame, size - offset)` bytes).
    FrameSize {
        /// The frame's offset.
        offset: u64,
        /// Its payload length.
        len: u64,
        /// The length the protocol requires there.
        expected: u64,
    },
    /// The peer flooded the return channel faster than its messages could be taken.
    Flooded,
    /// `End` before all of the stream's bytes.
    EarlyEnd {
        /// Bytes received.
        received: u64,
        /// The stream's size.
        size: u64,
    },
    /// The data channel's `Ready` came before the return channel's `Hello`.
    ReadyTooEarly,
    /// The token is already in use by another session.
    DuplicateToken,
    /// (Version 5, with a secret) A sealed record or message did not open: altered, dropped,
    /// replayed or reordered on the way, or not from the peer.
    Forged(String),
    /// A resume that does not fit the file: a prefix longer than the file or not a whole number
    /// of frames (from B), or a `Resume` outside the prefix offered (from A).
    BadResume {
        /// The offset in question.
        at: u64,
        /// What it had to fit.
        limit: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unexpected { expected, got } => write!(f, "expected {expected}, got {got}"),
            Violation::Undecodable(e) => write!(f, "malformed message: {e}"),
            Violation::OutOfOrder { offset, len, received, size } => write!(
                f,
                "Data for bytes {offset}..{} when {received} of {size} had arrived",
                offset.saturating_add(*len)
            ),
            Violation::FrameSize { offset, len, expected } => {
                write!(f, "Data frame at {offset} carries {len} bytes; the protocol requires {expected} there")
            }
            Violation::Flooded => f.write_str("the peer sent more than its flow-control credit allowed"),
            Violation::EarlyEnd { received, size } => write!(f, "End after {received} of {size} bytes"),
            Violation::ReadyTooEarly => f.write_str("Ready before the return channel's Hello"),
            Violation::BadResume { at, limit } => {
                write!(f, "a resume at byte {at} does not fit (limit {limit}, whole frames only)")
            }
            Violation::DuplicateToken => f.write_str("session token is already in use"),
            Violation::Forged(why) => f.write_str(why),
        }
    }
}

/// A failure of this process's own work, reported to the machine by its driver.
#[derive(Debug, thiserror::Error)]
pub enum LocalFailure {
    /// The served file cannot be read.
    #[error("cannot read input file {path}")]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The served file changed while it was being sent, so what went out matches no version of it.
    #[error("the served file {path} changed while it was being sent ({what})")]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// What changed: size, mtime, ...
        what: String,
    },
    /// A file could not be created or written.
    #[error("cannot write {path}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The destination has less room than the file needs.
    #[error("not enough space in {dir}: {} free, file is {}", crate::units::bytes(*.free), crate::units::bytes(*.size))]
    NoRoom {
        /// The destination directory.
        dir: PathBuf,
        /// Bytes free there.
        free: u64,
        /// The file's size.
        size: u64,
    },
    /// The return channel could not be wired or reached.
    #[error("return channel ({wiring})")]
    ReturnChannel {
        /// How it was wired.
        wiring: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why the vertex CSV did not make it, while the file did.
#[derive(Debug, thiserror::Error)]
pub enum CsvFailure {
    /// B could not convert the file (the STL is not valid at the place named).
    #[error("the client could not make it: {0}")]
    ClientCouldNot(String),
    /// B's own conversion of the file failed.
    #[error(transparent)]
    Convert(#[from] crate::stl::ConvertError),
    /// A rejected the CSV, in A's words.
    #[error("the server rejected it: {0}")]
    Rejected(String),
    /// The CSV's bytes differ from B's own digests of them.
    #[error("the CSV was damaged in transit: {0}")]
    Damaged(DigestDiff),
    /// The CSV differs from the one A derives from its original.
    #[error("the CSV differs from the server's own conversion of the original: {0}")]
    DiffersFromOwn(DigestDiff),
    /// (Version 6) The mesh B read is not the one A reads from its original.
    #[error("the mesh the client read differs from the server's: {0}")]
    MeshDiffers(String),
    /// A CSV arrived for a file that A does not consider STL.
    #[error("the client sent a CSV for a file that is not STL")]
    NotStl,
    /// A cannot derive its own CSV to check B's.
    #[error("the server cannot check the CSV: {0}")]
    CannotCheck(String),
    /// The offered CSV is bigger than any CSV of the file could be.
    #[error("a CSV of {size} bytes cannot come from a file of {file} bytes")]
    TooBig {
        /// The offered size.
        size: u64,
        /// The file's size.
        file: u64,
    },
}

/// Why a session ended without success.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The peer closed the data connection.
    #[error("{during}: the peer closed the connection")]
    Closed {
        /// When.
        during: Phase,
    },
    /// The peer made no progress for the whole idle timeout.
    #[error("{during}: the peer sent nothing for {} s", .idle.as_secs())]
    Timeout {
        /// When.
        during: Phase,
        /// The idle timeout.
        idle: Duration,
    },
    /// The peer broke the protocol.
    #[error("{during}: unexpected message from the peer: {violation}")]
    Protocol {
        /// When.
        during: Phase,
        /// What it did.
        violation: Violation,
    },
    /// `--protocol python`: the peer broke that protocol, or the connection failed.
    #[error("{during}: {what}")]
    Python {
        /// When.
        during: Phase,
        /// What it did.
        what: String,
    },
    /// What answered on the data port is not a machinaftp server.
    #[error(
        "this is not a machinaftp server ({}); check -p (the data port, not --zmq-port)",
        .0.as_ref().map_or_else(|| "the connection was closed without an answer".to_owned(), |e| format!("its answer is not the protocol: {e}"))
    )]
    NotAServer(Option<DecodeError>),
    /// The server is at its client limit and its waiting line is full.
    #[error("the server is busy: {}", reason.strip_prefix("server busy: ").unwrap_or(reason))]
    Busy {
        /// The server's words.
        reason: String,
    },
    /// The peer refused or ended the session and said why.
    #[error("{during}: the peer ended the session: {reason}")]
    Refused {
        /// When.
        during: Phase,
        /// The peer's words.
        reason: String,
    },
    /// A runs with `--remotehost`, so it connects to the client's return port, and the client bound none.
    #[error(
        "the server runs with --remotehost and must connect to the client's return port, but the client bound none \
         (check that the client can bind its --zmq-port)"
    )]
    NoReturnPort,
    /// The peers share no protocol version.
    #[error("the peer speaks protocol version {theirs}; this side speaks {ours}")]
    Version {
        /// This side's version(s).
        ours: String,
        /// The peer's.
        theirs: u16,
    },
    /// Bytes arrived whole but differ from what was sent; found by this side.
    #[error("checksum mismatch on the {leg}: {what} differs from what was sent: {diff}")]
    Mismatch {
        /// Which leg.
        leg: Leg,
        /// "received file" or "returned copy".
        what: &'static str,
        /// How.
        diff: DigestDiff,
    },
    /// The client offered a different size back than was sent (version 1).
    #[error("checksum mismatch on the {leg}: the client offers {offered} bytes back but {sent} were sent")]
    SizeMismatch {
        /// The return leg.
        leg: Leg,
        /// Bytes offered.
        offered: u64,
        /// Bytes sent.
        sent: u64,
    },
    /// The peer found that bytes differ, and said so.
    #[error("checksum mismatch on the {leg}: {reason}")]
    PeerMismatch {
        /// Which leg.
        leg: Leg,
        /// The peer's words.
        reason: String,
    },
    /// The peer could not save its copy (its disk, not the network).
    #[error("the peer could not save its copy: {0}")]
    PeerCannotSave(String),
    /// This process's own work failed.
    #[error(transparent)]
    Local(#[from] LocalFailure),
    /// The file made its round trip, but its CSV did not.
    #[error("the file made its round trip intact, but its CSV did not")]
    Csv(#[source] CsvFailure),
    /// SIGINT/SIGTERM, or the server stopping.
    #[error("interrupted by a signal")]
    Interrupted,
    /// The peers do not share the secret (or only one has one); nothing of the file moved.
    #[error("authentication failed: {reason}")]
    Auth {
        /// Why, in this side's or the peer's words.
        reason: String,
    },
}

impl Failure {
    /// Whether the peer caused this outcome or was already told, so telling it again is pointless.
    pub(crate) fn peer_knows(&self) -> bool {
        matches!(
            self,
            Failure::Refused { .. }
                | Failure::Busy { .. }
                | Failure::PeerMismatch { .. }
                | Failure::PeerCannotSave(_)
                | Failure::Closed { .. }
                | Failure::Version { .. }
                | Failure::SizeMismatch { .. }
                | Failure::Mismatch { .. }
                | Failure::NotAServer(_)
                | Failure::Auth { .. }
        )
    }

    /// Whether what arrived may be kept for a resume: the transfer was cut off (a link, a peer,
    /// a signal, a timeout), not found wrong. Whatever is kept is checked again when it is
    /// resumed.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Failure::Closed { .. }
                | Failure::Timeout { .. }
                | Failure::Interrupted
                | Failure::Refused { .. }
                | Failure::Local(LocalFailure::ReturnChannel { .. })
        )
    }

    /// The whole chain in one line, as the peer is told it.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// An error and its causes, joined by ": ", each said once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
