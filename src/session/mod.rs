//! The protocol's order, pure: one state machine per role, in the sans-I/O style of quinn's
//! `quinn-proto`.
//!
//! A machine takes inputs (decoded messages, bytes it hashes, the results of local work its
//! driver did, and the time) and queues actions (send this frame, write that payload, commit this
//! file, finish with this outcome). It never touches a socket, a file or the clock, and never
//! prints: time comes in with each input, so a test drives a whole session, timeouts included,
//! in microseconds. Everything `docs/PROTOCOL.md` says about order, credit, digests, verdicts and
//! timeouts lives here, once; the drivers in [`crate::server`] and [`crate::client`] only move
//! bytes between sockets, files and these machines.
//!
//! - [`ServerSession`] (A): both protocol versions. Version 1 returns the file after the data
//!   leg; version 2 takes it back while it is still being sent.
//! - [`ClientSession`] (B): version 2, returning each frame as soon as it has arrived and been
//!   hashed.
//!
//! The driver's loop is the same for both: feed inputs with [`handle`](ServerSession::handle),
//! carry out [`poll_action`](ServerSession::poll_action) until it is empty, wait for I/O no
//! longer than [`poll_timeout`](ServerSession::poll_timeout), and call
//! [`handle_timeout`](ServerSession::handle_timeout) when that passes.

mod client;
mod failure;
mod server;
mod streams;
mod timers;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::{ClientAction, ClientInput, ClientOutcome, ClientParams, ClientSession, CsvReturned};
pub use failure::{
    ByteRange, CsvFailure, DigestDiff, Failure, Leg, LocalFailure, Locus, Phase, Role, Violation, chain,
};
pub use server::{CsvResult, ServerAction, ServerInput, ServerOutcome, ServerParams, ServerSession};

use crate::integrity::Digest;
use crate::protocol::data::ErrorCode;

/// The return window A grants in version 2: eight full frames.
pub const WINDOW_V2: u64 = 8 * crate::protocol::ret::FRAME_V2 as u64;
/// The return window A grants in version 1: eight full frames of that version.
pub const WINDOW_V1: u64 = 8 * crate::protocol::ret::FRAME_V1 as u64;
/// Frames B may hold received but not yet returned (waiting for credit) before it stops reading
/// the data channel: with the window, this bounds B's buffers whatever the file's size.
pub const PENDING_FRAMES: u64 = 4;
/// How long a side whose data channel closed mid-file looks for an `Abort` that says why.
pub const ABORT_GRACE: Duration = Duration::from_millis(500);
/// How long A waits for the client's `Bye` after the last verdict.
pub const BYE_WAIT: Duration = Duration::from_secs(2);

/// A point the user sees: the Python version printed `Done! - TX` and `Done! - RX` at these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// B verified the file it received (and A learned so).
    DataLeg(LegDone),
    /// A verified the copy B returned (and B learned so).
    ReturnLeg(LegDone),
}

/// A leg verified: what travelled, how long it took, and where it went on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegDone {
    /// The whole file, as verified.
    pub digest: Digest,
    /// The leg's time, as the verdict lines give it.
    pub took: Duration,
    /// Bytes the receiver held already from an interrupted attempt (0 for a fresh one).
    pub from: u64,
}

/// What A expects of the returned CSV, derived from its own original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedCsv {
    /// A's own conversion of the original.
    Digest {
        /// The CSV's digest.
        digest: Digest,
        /// Its vertex lines.
        rows: u64,
        /// The original mesh's facts (held against B's from version 6 on).
        mesh: Option<Box<crate::stl::mesh::MeshFacts>>,
    },
    /// The original is not STL: no CSV should come.
    NotStl,
    /// The original could not be converted (or read), so a CSV cannot be checked.
    Unknown(String),
}

/// What an outcome keeps of the file's round trip, once its return is verified.
#[derive(Debug)]
struct FileDone {
    name: String,
    digest: Digest,
    data_time: Duration,
    return_time: Duration,
    resumed: Resumed,
}

/// Where a resumed transfer's legs went on from (all zero for a fresh one): what travelled is
/// the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Bytes B held already: the data leg sent the file from here.
    pub from: u64,
    /// Bytes A held already of the returned copy: the return leg went on from here.
    pub ret_from: u64,
}

/// The data channel's `Error` code that describes `f` to the peer.
fn wire_code(f: &Failure) -> ErrorCode {
    match f {
        Failure::Protocol { .. } => ErrorCode::Protocol,
        Failure::Version { .. } => ErrorCode::Version,
        Failure::NoReturnPort | Failure::Local(LocalFailure::ReturnChannel { .. }) => ErrorCode::ReturnChannel,
        _ => ErrorCode::Internal,
    }
}
