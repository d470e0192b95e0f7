//! machinaftp moves a file, typically a CAD mesh in STL, between two processes and proves it
//! arrived intact, then brings it back and proves that too.
//!
//! ```text
//!   A (server)                                      B (client)
//!   ──────────                                      ──────────
//!   ROUTER (hub thread) ◄── return channel (ZeroMQ) ── DEALER        opened first
//!   TCP listener ◄───────── data channel (TCP) ─────── connect
//!      Hello / Welcome / Ready / Header / Accept (what B holds of an interrupted attempt)
//!      Resume (from where each leg goes on; version 4)
//!      file bytes ─────────────────────────────────────► hashed, saved to a staged file, and
//!      ◄──── Data frames under Credit, while the file ── sent straight back from the same buffer
//!            still arrives (protocol version 2)
//!      Trailer (CRC-32, BLAKE3, per-MiB CRC-32s) ──────► Verdict   (B commits its copy)
//!      ◄──── End (B's digests) ─────────────────────────
//!      Result: what came back == what was sent ─────────►           (A commits its copy)
//!      ◄──── vertex CSV (Offer, Data, End) or Skip; Result; Bye
//! ```
//!
//! The crate is built in layers, each in its own room:
//! - [`protocol`]: wire messages and their encodings, pure (bytes in, messages out); fuzzed.
//! - [`session`]: the order of the protocol, pure: one state machine per role (sans-I/O, as in
//!   quinn's `quinn-proto`). Credit, digests, verdicts and timeouts live here, and nothing else
//!   decides them; every rule of `docs/PROTOCOL.md` is a unit test of these machines.
//! - [`transport`]: the only code that touches sockets: [`transport::tcp`] (the data channel,
//!   non-blocking), [`transport::ret`] (the return channel's plumbing and B's DEALER),
//!   [`transport::hub`] (A's ROUTER, owned by one thread, routing by session token),
//!   [`transport::pool`] (B's frame buffers, handed to ZeroMQ without copying), and one wait over
//!   all of them ([`transport::poll`]).
//! - [`server`] (process A) and [`client`] (process B): drivers that run the machines over real
//!   sockets and staged files, and A's accept loop, admission (Hello deadline, waiting line) and
//!   digest cache.
//! - [`report`]: results as values; the binary prints them ([`report::Text`]).
//! - [`integrity`]: CRC-32 and BLAKE3 computed while streaming; [`files`]: temporary file then
//!   rename, so nothing half-written is ever left in sight (an interrupted transfer's part is
//!   kept hidden, for a resume); [`stl`]: STL meshes and their vertex CSV.
//! - [`cli`], [`logging`], [`shutdown`], [`error`], [`units`]: the process around the library;
//!   [`demo`]: the loopback demonstration.
//!
//! Nothing waits in ticks: every wait is one `poll` over the descriptors that can end it (the
//! sockets, the stop signal, helper threads' wake-ups) with the machine's next deadline as its
//! timeout, so a round trip ends, and a signal is heard, the moment it happens.

pub mod cli;
pub mod client;
pub mod demo;
pub mod error;
pub mod files;
pub mod integrity;
pub mod logging;
pub mod progress;
pub mod protocol;
pub mod python;
pub mod receipt;
pub mod report;
pub mod secure;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod stl;
pub mod transport;
pub mod units;

pub use error::{Error, Result};
