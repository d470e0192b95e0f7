//! machinaftp moves a file, typically a CAD mesh in STL, between two processes and proves it
//! arrived intact, then brings it back and proves that too.
//!
//! ```text
//!   A (server)                                   B (client)
//!   ──────────                                   ──────────
//!   ROUTER ◄──────── return channel (ZeroMQ) ─────── DEALER   opened first
//!   TCP listener ◄── data channel (TCP) ───────────── connect
//!      Hello / Welcome / Ready / Header / Accept
//!      file bytes ──────────────────────────────────► hashed while received, saved via temp file
//!      Trailer (CRC-32, BLAKE3) ───────────────────► Verdict
//!   ◄──────── Offer / Data under Credit / End ───────  file sent back
//!      Result (A's verdict) ─────────────────────────►
//! ```
//!
//! Modules, by room:
//! - [`protocol`]: wire messages and their encodings, pure (no sockets); fuzzed and unit-tested.
//! - [`transport`]: the only code that touches sockets: [`transport::tcp`] (data channel) and
//!   [`transport::zmq`] (return channel, with A's single-threaded hub).
//! - [`server`] (process A) and [`client`] (process B): the two roles' session logic.
//! - [`integrity`]: CRC-32 and BLAKE3 computed while streaming.
//! - [`files`]: temporary-file-then-rename output, so nothing half-written is ever left.
//! - [`cli`], [`logging`], [`shutdown`], [`error`]: the process around the library.
//! - [`stl`]: STL meshes; [`demo`]: the loopback demonstration.

pub mod cli;
pub mod client;
pub mod demo;
pub mod error;
pub mod files;
pub mod integrity;
pub mod logging;
pub mod protocol;
pub mod report;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod stl;
pub mod transport;
pub mod units;

pub use error::{Error, Result};
