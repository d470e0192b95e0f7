//! Between `accept` and a session. A connection is not a client until it has sent a whole
//! `Hello`: until then it holds no client slot, has a short deadline of its own
//! ([`HELLO_DEADLINE`]), and such connections are bounded separately ([`MAX_UNIDENTIFIED`]), so
//! port probes and idle or trickling sockets cannot lock real clients out. A client that comes
//! while every slot is taken waits in a bounded line, in arrival order, told its place and kept
//! alive by repeated `Queued` notices (protocol version 3); only a full line, or a client too old
//! to wait, is told the server is busy.
//!
//! Everything here runs on the accept loop's thread over non-blocking sockets; it waits for
//! nothing itself, and [`Admission::watches`] and [`Admission::deadline`] say what the loop's
//! one `poll` must include.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::protocol::data::{DataMsg, ErrorCode};
use crate::transport::poll::Watch;
use crate::transport::tcp::{DataConn, TcpError};

/// How long a connection may take to send its whole `Hello`. A real client sends it as soon as
/// it is connected; a few seconds allow for a slow link.
pub(super) const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Connections without a `Hello` kept at once; a newer one makes the oldest give way.
pub(super) const MAX_UNIDENTIFIED: usize = 128;
/// How often a waiting client hears from the server, so that neither side's idle timeout fires.
const NOTICE_EVERY: Duration = Duration::from_secs(1);
/// How often repeated events from unidentified peers are summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// The first protocol version whose clients understand `Queued`.
const QUEUE_VERSION: u16 = 3;

/// A client that has identified itself: its connection and its `Hello`.
pub(super) struct Identified {
    pub conn: DataConn,
    pub hello: DataMsg,
}

struct Greeting {
    conn: DataConn,
    deadline: Instant,
}

struct Waiting {
    client: Identified,
    /// The place it was last told, and when the next notice is due.
    told: u32,
    next_notice: Instant,
}

/// What happened to connections that never identified themselves, for one summary line.
#[derive(Default)]
struct Counts {
    closed: u64,
    timed_out: u64,
    not_protocol: u64,
    evicted: u64,
    refused: u64,
    left_line: u64,
}

impl Counts {
    fn any(&self) -> bool {
        self.closed + self.timed_out + self.not_protocol + self.evicted + self.refused + self.left_line > 0
    }
}

/// The connections waiting for their `Hello` and the clients waiting for a slot.
pub(super) struct Admission {
    greeting: VecDeque<Greeting>,
    line: VecDeque<Waiting>,
    line_max: usize,
    counts: Counts,
    next_summary: Instant,
}

impl Admission {
    pub(super) fn new(line_max: usize, now: Instant) -> Admission {
        Admission {
            greeting: VecDeque::new(),
            line: VecDeque::new(),
            line_max,
            counts: Counts::default(),
            next_summary: now + SUMMARY_EVERY,
        }
    }

    /// A new connection: it waits for its `Hello`.
    pub(super) fn accepted(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        let conn = match DataConn::new(stream) {
            Ok(c) => c,
            Err(e) => return debug!(%peer, "cannot set up an accepted connection: {e}"),
        };
        if self.greeting.len() >= MAX_UNIDENTIFIED
            && let Some(oldest) = self.greeting.pop_front()
        {
            debug!(peer = %oldest.conn.peer(), "too many connections without a Hello; the oldest gives way");
            self.counts.evicted += 1;
        }
        self.greeting.push_back(Greeting { conn, deadline: now + HELLO_DEADLINE });
    }

    /// Reads what the connections without a `Hello` sent; returns those that identified themselves,
    /// in the order they did. Connections past their deadline, closed, or speaking something else
    /// are dropped (one that sent a frame of another kind is told why).
    pub(super) fn identify(&mut self, now: Instant) -> Vec<Identified> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.greeting.len());
        for mut g in self.greeting.drain(..) {
            match g.conn.read_frame() {
                Ok(Some(hello @ DataMsg::Hello { .. })) => out.push(Identified { conn: g.conn, hello }),
                Ok(Some(other)) => {
                    self.counts.not_protocol += 1;
                    let reason = format!("expected Hello, got {}", other.kind());
                    debug!(peer = %g.conn.peer(), "{reason}");
                    say_and_close(g.conn, ErrorCode::Protocol, reason);
                }
                Err(TcpError::Decode(e)) => {
                    self.counts.not_protocol += 1;
                    debug!(peer = %g.conn.peer(), "not a machinaftp client: {e}");
                    say_and_close(g.conn, ErrorCode::Protocol, format!("not a machinaftp Hello: {e}"));
                }
                Err(TcpError::Closed | TcpError::Io(_)) => self.counts.closed += 1,
                Ok(None) if now >= g.deadline => {
                    self.counts.timed_out += 1;
                    debug!(peer = %g.conn.peer(), "no Hello within {:?}; closed", HELLO_DEADLINE);
                }
                Ok(None) => kept.push_back(g),
            }
        }
        self.greeting = kept;
        out
    }

    /// Puts a client that found every slot taken in line, or tells it the server is busy when the
    /// line is full or the client cannot wait (`why` says what is full).
    pub(super) fn wait_or_refuse(&mut self, client: Identified, why: &str, now: Instant) {
        let version = match client.hello {
            DataMsg::Hello { version, .. } => version,
            _ => 0,
        };
        let peer = client.conn.peer();
        if version >= QUEUE_VERSION && self.line.len() < self.line_max {
            info!(%peer, position = self.line.len() + 1, "{why}; the client waits in line");
            self.line.push_back(Waiting { client, told: 0, next_notice: now });
            self.notify(now);
            return;
        }
        let reason = if version < QUEUE_VERSION {
            format!("server busy: {why}; try again shortly (clients of protocol version {QUEUE_VERSION} wait in line)")
        } else {
            format!("server busy: {why} and {} waiting, the most it lets wait; try again shortly", self.line.len())
        };
        self.counts.refused += 1;
        warn!(%peer, "{reason}");
        say_and_close(client.conn, ErrorCode::Busy, reason);
    }

    /// Tells a client the server is busy, and why.
    pub(super) fn refuse(&mut self, client: Identified, why: &str) {
        self.counts.refused += 1;
        say_and_close(client.conn, ErrorCode::Busy, format!("server busy: {why}; try again shortly"));
    }

    /// Tells a client now at the front of the line whether it may go; `None` if nobody waits.
    pub(super) fn next_in_line(&mut self) -> Option<Identified> {
        self.line.pop_front().map(|w| w.client)
    }

    /// Clients waiting.
    pub(super) fn waiting(&self) -> usize {
        self.line.len()
    }

    /// Drops waiting clients that went away (or broke the rule to send nothing while they wait),
    /// and tells the others their place when it changed or a notice is due.
    pub(super) fn notify(&mut self, now: Instant) {
        let before = self.line.len();
        self.line.retain_mut(|w| match w.client.conn.read_frame() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => false,
        });
        self.counts.left_line += (before - self.line.len()) as u64;
        for (i, w) in self.line.iter_mut().enumerate() {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if position != w.told || now >= w.next_notice {
                w.client.conn.queue(&DataMsg::Queued { position });
                w.told = position;
                w.next_notice = now + NOTICE_EVERY;
            }
        }
        // A client that does not even take 9-byte notices is not waiting any more.
        let before = self.line.len();
        self.line.retain_mut(|w| w.client.conn.flush().is_ok() && !w.client.conn.pending());
        self.counts.left_line += (before - self.line.len()) as u64;
    }

    /// At most one log line per [`SUMMARY_EVERY`] for everything that happened to connections
    /// that never identified themselves: a flood of them cannot flood the log.
    pub(super) fn summarise(&mut self, now: Instant) {
        if now < self.next_summary {
            return;
        }
        self.next_summary = now + SUMMARY_EVERY;
        self.log_counts();
    }

    fn log_counts(&mut self) {
        if !self.counts.any() {
            return;
        }
        let c = std::mem::take(&mut self.counts);
        info!(
            closed_without_hello = c.closed,
            no_hello_in_time = c.timed_out,
            not_machinaftp = c.not_protocol,
            gave_way = c.evicted,
            refused_busy = c.refused,
            left_the_line = c.left_line,
            unidentified_now = self.greeting.len(),
            waiting_now = self.line.len(),
            "connections since the last summary"
        );
    }

    /// The sockets the accept loop's wait must include.
    pub(super) fn watches(&self) -> impl Iterator<Item = Watch<'static>> + '_ {
        let greeting = self.greeting.iter().filter_map(|g| g.conn.watch(true, false));
        greeting.chain(self.line.iter().filter_map(|w| w.client.conn.watch(true, false)))
    }

    /// When the accept loop must look again even if no socket stirs.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let hello = self.greeting.iter().map(|g| g.deadline).min();
        let notice = self.line.iter().map(|w| w.next_notice).min();
        let summary = self.counts.any().then_some(self.next_summary);
        [hello, notice, summary].into_iter().flatten().min()
    }

    /// The server stops: everyone waiting is told so, and the last counts are logged.
    pub(super) fn close_all(&mut self) {
        for w in self.line.drain(..) {
            say_and_close(w.client.conn, ErrorCode::Internal, "the server is stopping".into());
        }
        self.greeting.clear();
        self.log_counts();
    }
}

/// Sends one `Error` frame, briefly, and closes.
fn say_and_close(mut conn: DataConn, code: ErrorCode, reason: String) {
    conn.queue(&DataMsg::Error { code, reason });
    // The kernel's socket buffer takes this small frame at once, so the accept loop is not held up.
    conn.flush_within(Duration::from_millis(200));
    conn.close();
}
