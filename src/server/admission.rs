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

use tracing::{debug, info};

use crate::logging::Tally;
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

/// The connections waiting for their `Hello` and the clients waiting for a slot.
pub(super) struct Admission {
    greeting: VecDeque<Greeting>,
    line: VecDeque<Waiting>,
    line_max: usize,
    /// What happened to connections that never identified themselves, and to the line.
    tally: Tally,
}

impl Admission {
    pub(super) fn new(line_max: usize) -> Admission {
        Admission {
            greeting: VecDeque::new(),
            line: VecDeque::new(),
            line_max,
            tally: Tally::new("connections without a Hello, and clients turned away", SUMMARY_EVERY),
        }
    }

    /// A new connection: it waits for its `Hello`.
    pub(super) fn accepted(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        let conn = match DataConn::new(stream) {
            Ok(c) => c,
            Err(e) => return debug!(%peer, "cannot set up an accepted connection: {e}"),
        };
        if self.greeting.len() >= MAX_UNIDENTIFIED && self.greeting.pop_front().is_some() {
            self.tally.note("gave_way");
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
                // Each of these is counted, not logged: anyone who reaches the port can cause
                // them as fast as they like.
                Ok(Some(other)) => {
                    self.tally.note("not_machinaftp");
                    say_and_close(g.conn, ErrorCode::Protocol, format!("expected Hello, got {}", other.kind()));
                }
                Err(TcpError::Decode(e)) => {
                    self.tally.note("not_machinaftp");
                    say_and_close(g.conn, ErrorCode::Protocol, format!("not a machinaftp Hello: {e}"));
                }
                // Nothing is sealed before the Hello.
                Err(TcpError::Forged(e)) => {
                    self.tally.note("not_machinaftp");
                    say_and_close(g.conn, ErrorCode::Protocol, format!("not a machinaftp Hello: {e}"));
                }
                Err(TcpError::Closed | TcpError::Io(_)) => self.tally.note("closed_without_hello"),
                Ok(None) if now >= g.deadline => self.tally.note("no_hello_in_time"),
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
            match self.line_max {
                0 => format!("server busy: {why}, and it lets no client wait (--queue 0); try again shortly"),
                n => format!("server busy: {why}, and its waiting line is full ({n}); try again shortly"),
            }
        };
        // Counted, not logged each: a flood of Hellos must not flood the log either.
        self.tally.note("refused_busy");
        say_and_close(client.conn, ErrorCode::Busy, reason);
    }

    /// Turns away a client of a `--once` server busy with its one round trip. Not "busy" (code 1):
    /// that invites a retry, and this server will end instead of serving anyone else.
    pub(super) fn refuse_once(&mut self, client: Identified) {
        self.tally.note("refused_once");
        let reason = "this server makes one round trip (--once) and is busy with it; it serves no one after";
        say_and_close(client.conn, ErrorCode::Internal, reason.into());
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
        let tally = &mut self.tally;
        self.line.retain_mut(|w| match w.client.conn.read_frame() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                tally.note("left_the_line");
                false
            }
        });
        for (i, w) in self.line.iter_mut().enumerate() {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if position != w.told || now >= w.next_notice {
                w.client.conn.queue(&DataMsg::Queued { position });
                w.told = position;
                w.next_notice = now + NOTICE_EVERY;
            }
        }
        // A client that does not even take 9-byte notices is not waiting any more.
        let tally = &mut self.tally;
        self.line.retain_mut(|w| {
            let taking = w.client.conn.flush().is_ok() && !w.client.conn.pending();
            if !taking {
                tally.note("left_the_line");
            }
            taking
        });
    }

    /// At most one log line per [`SUMMARY_EVERY`] for everything that happened to connections
    /// that never identified themselves: a flood of them cannot flood the log.
    pub(super) fn summarise(&mut self, now: Instant) {
        self.tally.tick(now);
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
        [hello, notice, self.tally.due()].into_iter().flatten().min()
    }

    /// The server stops: everyone waiting is told so, and the last counts are logged.
    pub(super) fn close_all(&mut self) {
        for w in self.line.drain(..) {
            say_and_close(w.client.conn, ErrorCode::Internal, "the server is stopping".into());
        }
        self.greeting.clear();
        self.tally.flush();
    }
}

/// Sends one `Error` frame, briefly, and closes.
fn say_and_close(mut conn: DataConn, code: ErrorCode, reason: String) {
    conn.queue(&DataMsg::Error { code, reason });
    // The kernel's socket buffer takes this small frame at once, so the accept loop is not held up.
    conn.flush_within(Duration::from_millis(200));
    conn.close();
}
