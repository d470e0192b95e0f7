//! Results as values. The library never prints: the server and client hand these to a
//! [`Reporter`] as they happen, and the binary decides how they look (the Python version's
//! `Done! - TX` lines and a one-line verdict today; JSON would be another reporter).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::Error;
use crate::session::LegDone;
use crate::session::{ClientOutcome, ServerOutcome};

/// What became of one client's session on the server.
#[derive(Debug)]
pub struct ServerSessionReport {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether it showed itself a machinaftp client (a valid `Hello`), rather than a port probe.
    pub greeted: bool,
    /// The served file.
    pub file: PathBuf,
    /// Where the returned copy was saved.
    pub output: PathBuf,
    /// Where the returned CSV was saved, if one was.
    pub csv_output: PathBuf,
    /// The outcome.
    pub result: Result<ServerOutcome, Error>,
}

/// A client's successful round trip.
#[derive(Debug)]
pub struct ClientReport {
    /// `HOST:PORT` of the server.
    pub server: String,
    /// Where the received file was saved.
    pub output: PathBuf,
    /// Where the CSV was saved, if one was made.
    pub csv: Option<PathBuf>,
    /// What was proved.
    pub outcome: ClientOutcome,
    /// Whether the server confirmed the returned copy (its protocol has a verdict); the Python
    /// version's server confirms nothing.
    pub return_confirmed: bool,
}

/// Something the server has to say while it runs.
#[derive(Debug)]
pub enum ServerEvent<'a> {
    /// A client's session starts (what was said of an earlier one from its address is old news).
    SessionStarted {
        /// Which client.
        peer: SocketAddr,
    },
    /// A client verified the data leg (the Python version's `Done! - TX`).
    DataLegDone {
        /// Which client.
        peer: SocketAddr,
        /// The leg.
        leg: LegDone,
    },
    /// The returned copy was verified and saved (`Done! - RX`).
    ReturnLegDone {
        /// Which client.
        peer: SocketAddr,
        /// The leg.
        leg: LegDone,
    },
    /// A session ended.
    SessionEnded(&'a ServerSessionReport),
}

/// Something the client has to say while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server offered its file (the name is for display only).
    Offered {
        /// The name it serves the file under.
        name: String,
        /// The file's size.
        size: u64,
    },
    /// The file arrived and was verified (`Done! - RX`).
    DataLegDone(LegDone),
    /// The server verified the returned copy (`Done! - TX`).
    ReturnLegDone(LegDone),
    /// The server's client slots are taken; B waits in its line at this place (1 = next).
    Queued(u32),
    /// The server was busy with a full line; B tries again after this long.
    Retrying(std::time::Duration),
    /// The server answered B's offer: the first `from` bytes are here already, and the first
    /// `ret_from` back at the server (both 0: nothing is resumed).
    Resuming {
        /// Bytes B holds.
        from: u64,
        /// Bytes A holds of the returned copy.
        ret_from: u64,
        /// The file's size.
        size: u64,
    },
    /// The transfer was cut off; what arrived is kept here for a resume.
    KeptPartial(std::path::PathBuf),
}

/// How far a round trip's two legs are, in bytes of the file (both legs run at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The file's size.
    pub size: u64,
    /// Bytes of the data leg so far (held from an earlier attempt included).
    pub data: u64,
    /// Bytes of the return leg so far, likewise.
    pub ret: u64,
}

/// Where results go. Called from session threads; implementations must not fail loudly (a
/// closed stdout is the reader's choice, not a reason to stop a transfer).
pub trait Reporter: Send + Sync {
    /// The server's events.
    fn server(&self, _event: ServerEvent<'_>) {}
    /// The client's events.
    fn client(&self, _event: ClientEvent) {}
    /// A round trip moved on: `peer` is the client's address on the server, `None` on the
    /// client. Called often (each turn of a session's loop that moved bytes), so it must be cheap.
    fn progress(&self, _peer: Option<SocketAddr>, _p: Progress) {}
}

/// A reporter that says nothing (for tests and embedding).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {}

/// The text the Python version's users know: `Done! - TX` / `Done! - RX` lines and one verdict
/// line per round trip, written to `out` (stdout in the binary). Lines are written whole under a
/// lock, so sessions' lines never interleave; a failed write (a closed stdout) is ignored.
///
/// A server [`Text::detach`]es its printing: its lines then go through a bounded queue to a
/// thread of their own, so a standard output that nobody reads (a full pipe) stalls only the
/// printing, never a session. Once [`LINES_QUEUED`] lines wait, newer ones are dropped, and the
/// printer says how many when it catches up.
#[derive(Debug)]
pub struct Text<W: std::io::Write + Send> {
    out: std::sync::Arc<std::sync::Mutex<W>>,
    detached: std::sync::Mutex<Option<Detached>>,
    /// Whether notes that are not results (a place in the server's line) go to stderr; `-q`
    /// turns them off.
    notes: std::sync::atomic::AtomicBool,
    /// `--json`: results are JSON receipts, one line per round trip, instead of text; the legs
    /// seen verified so far, per server session (and under `None` for the client).
    json: Option<std::sync::Mutex<std::collections::HashMap<Option<SocketAddr>, Seen>>>,
    /// Live progress bars on stderr, if they are on; lines are printed around them.
    bars: Option<std::sync::Arc<Bars>>,
}

/// Lines a detached printer holds before it drops new ones.
pub const LINES_QUEUED: usize = 1024;

#[derive(Debug)]
struct Detached {
    tx: std::sync::mpsc::SyncSender<String>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Closed by the printer thread when it has written everything and ends.
    done: std::sync::mpsc::Receiver<()>,
}

impl<W: std::io::Write + Send> Text<W> {
    /// Text to `out`.
    pub fn new(out: W) -> Self {
        Text {
            out: std::sync::Arc::new(std::sync::Mutex::new(out)),
            detached: std::sync::Mutex::new(None),
            notes: std::sync::atomic::AtomicBool::new(true),
            json: None,
            bars: None,
        }
    }

    /// Draws progress bars with `bars` (before [`Text::detach`]).
    pub fn with_progress(mut self, bars: Bars) -> Self {
        self.bars = Some(std::sync::Arc::new(bars));
        self
    }

    /// JSON receipts to `out` (`--json`; see [`crate::receipt`]).
    pub fn json(out: W) -> Self {
        Text { json: Some(std::sync::Mutex::new(std::collections::HashMap::new())), ..Text::new(out) }
    }

    fn end_bars(&self, peer: Option<SocketAddr>) {
        if let Some(bars) = &self.bars {
            bars.end(peer);
        }
    }

    /// Records that a leg was verified; `true` if results are JSON (so no text line is due).
    fn seen(&self, peer: Option<SocketAddr>, leg: Leg, done: LegDone) -> bool {
        if let Some(bars) = &self.bars {
            bars.leg_done(peer, leg);
        }
        self.note_seen(peer, |s| match leg {
            Leg::Data => s.data = Some(done),
            Leg::Return => s.ret = Some(done),
        })
    }

    /// Under `--json`, updates what a failed round trip's receipt could still tell of `peer`'s;
    /// `true` if results are JSON.
    fn note_seen(&self, peer: Option<SocketAddr>, f: impl FnOnce(&mut Seen)) -> bool {
        let Some(json) = &self.json else { return false };
        f(json.lock().unwrap_or_else(|p| p.into_inner()).entry(peer).or_default());
        true
    }

    /// The legs seen verified for `peer`, forgotten now that its round trip ended.
    fn take_seen(&self, peer: Option<SocketAddr>) -> Seen {
        self.json.as_ref().and_then(|j| j.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer)).unwrap_or_default()
    }

    /// The server's first line: where it listens (scripts and tests wait for it).
    pub fn ready(&self, tcp: &str, zmq: &str) {
        match self.json {
            Some(_) => self.line(&receipt::line(&receipt::Ready::new(tcp, zmq))),
            None => self.line(&format!("ready tcp={tcp} zmq={zmq}")),
        }
    }

    /// Whether to print notes that are not results on stderr (`-q` says no).
    pub fn set_notes(&self, on: bool) {
        self.notes.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes one line and flushes it (scripts wait for lines such as `ready`).
    pub fn line(&self, line: &str) {
        let detached = self.detached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = detached.as_ref() {
            if d.tx.try_send(line.to_owned()).is_err() {
                d.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        drop(detached);
        write_line(&self.out, line, self.bars.as_deref());
    }

    /// From now on, lines are written by a thread of their own (see the type's documentation).
    pub fn detach(&self)
    where
        W: 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(LINES_QUEUED);
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (out, lost) = (std::sync::Arc::clone(&self.out), std::sync::Arc::clone(&dropped));
        let bars = self.bars.clone();
        let spawned = std::thread::Builder::new().name("printer".into()).spawn(move || {
            let _done = done_tx;
            for line in rx {
                let n = lost.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    let note = format!("({n} lines dropped here: standard output was not being read)");
                    write_line(&out, &note, bars.as_deref());
                }
                write_line(&out, &line, bars.as_deref());
            }
        });
        if spawned.is_ok() {
            *self.detached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Detached { tx, dropped, done });
        }
    }

    /// Ends detached printing: waits, for at most `limit`, until the queued lines are written.
    pub fn finish(&self, limit: std::time::Duration) {
        let detached = self.detached.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Detached { tx, done, .. }) = detached {
            drop(tx);
            let _ = done.recv_timeout(limit);
        }
    }

    /// The client's final line when the round trip failed with `e`: a JSON receipt under
    /// `--json`; nothing in text, where the error goes to stderr.
    pub fn client_failed(&self, server: &str, output: &std::path::Path, e: &Error) {
        self.end_bars(None);
        if self.json.is_some() {
            self.line(&receipt::line(&receipt::client_failed(server, output, e, self.take_seen(None))));
        }
    }

    /// The client's final line.
    pub fn client_done(&self, r: &ClientReport) {
        use crate::session::CsvReturned;
        self.end_bars(None);
        if self.json.is_some() {
            self.take_seen(None);
            return self.line(&receipt::line(&receipt::client_ok(r)));
        }
        let o = &r.outcome;
        let csv = match (&o.csv, &r.csv) {
            (CsvReturned::Returned { rows, .. }, Some(path)) => {
                format!("CSV {} ({rows} vertices) returned and verified", path.display())
            }
            (CsvReturned::Returned { rows, .. }, None) => format!("CSV ({rows} vertices) returned and verified"),
            (CsvReturned::NotMade(why), _) => format!("no CSV ({why})"),
            (CsvReturned::Local { rows, .. }, path) => format!(
                "CSV {}({rows} vertices) written here (the Python version's protocol does not carry it back)",
                path.as_deref().map(|p| format!("{} ", p.display())).unwrap_or_default()
            ),
        };
        let proof = proof(&o.digest, o.data_time, o.return_time, o.resumed);
        let back = if r.return_confirmed {
            "returned intact to the server"
        } else {
            "sent back (the Python version's server confirms nothing: its own Done! - RX says whether it matched)"
        };
        self.line(&format!(
            "verified: {} ({}) received intact and {back}, {proof}; {csv}",
            r.output.display(),
            units::bytes(o.digest.size),
        ));
        if let Some(m) = &o.mesh {
            self.line(&format!("mesh: {}", m.line()));
        }
    }
}

use crate::progress::Bars;
use crate::receipt::{self, Seen};
use crate::session::Leg;
use crate::units;

fn write_line<W: std::io::Write>(out: &std::sync::Mutex<W>, line: &str, bars: Option<&Bars>) {
    let write = || {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    match bars {
        // Bars on the terminal that stdout may share: the line goes above them.
        Some(bars) => bars.around_stdout(write),
        None => write(),
    }
}

/// The checksums and each leg's time and rate (of what travelled: after a resume, the rest), as
/// both sides' verdict lines show them.
fn proof(
    d: &crate::integrity::Digest,
    data: std::time::Duration,
    ret: std::time::Duration,
    resumed: crate::session::Resumed,
) -> String {
    let rate = |moved: u64, took| {
        if moved == 0 && d.size > 0 { "nothing left to send".to_owned() } else { units::rate(moved, took) }
    };
    let mut s = format!(
        "CRC-32 {}, BLAKE3 {}…; data {} ({}), return {} ({})",
        d.crc32,
        &d.blake3_hex()[..16],
        units::duration(data),
        rate(d.size.saturating_sub(resumed.from), data),
        units::duration(ret),
        rate(d.size.saturating_sub(resumed.ret_from), ret),
    );
    if resumed != crate::session::Resumed::default() {
        s.push_str(&format!(
            "; resumed: {} had arrived and {} had come back before",
            units::bytes(resumed.from),
            units::bytes(resumed.ret_from)
        ));
    }
    s
}

impl<W: std::io::Write + Send> Reporter for Text<W> {
    fn progress(&self, peer: Option<SocketAddr>, p: Progress) {
        if let Some(bars) = &self.bars {
            bars.update(peer, p);
        }
        self.note_seen(peer, |s| s.progress = Some(p));
    }

    fn server(&self, event: ServerEvent<'_>) {
        if let ServerEvent::SessionEnded(r) = &event {
            self.end_bars(Some(r.peer));
        }
        match event {
            ServerEvent::SessionStarted { peer } => {
                self.note_seen(Some(peer), |s| *s = Seen::default());
            }
            ServerEvent::DataLegDone { peer, leg } if !self.seen(Some(peer), Leg::Data, leg) => self.line("Done! - TX"),
            ServerEvent::ReturnLegDone { peer, leg } if !self.seen(Some(peer), Leg::Return, leg) => {
                self.line("Done! - RX")
            }
            ServerEvent::DataLegDone { .. } | ServerEvent::ReturnLegDone { .. } => {}
            ServerEvent::SessionEnded(r) if self.json.is_some() => {
                if let Some(receipt) = receipt::server(r, self.take_seen(Some(r.peer))) {
                    self.line(&receipt::line(&receipt));
                }
            }
            ServerEvent::SessionEnded(r) => match &r.result {
                Ok(o) => {
                    use crate::session::CsvResult;
                    let csv = match &o.csv {
                        CsvResult::Saved { digest, .. } => {
                            format!("CSV verified, saved {} ({})", r.csv_output.display(), units::bytes(digest.size))
                        }
                        CsvResult::NotMade(why) => format!("no CSV ({why})"),
                        CsvResult::Failed(f) => format!("CSV FAILED: {}", crate::session::chain(f)),
                    };
                    let proof = proof(&o.digest, o.data_time, o.return_time, o.resumed);
                    self.line(&format!(
                        "verified {}: {} ({}) sent and returned identical, {proof}; saved {}; {csv}",
                        r.peer,
                        r.file.display(),
                        units::bytes(o.digest.size),
                        r.output.display()
                    ));
                    if let Some(m) = &o.mesh {
                        self.line(&format!("mesh {}: {}", r.peer, m.line()));
                    }
                }
                Err(e) => self.line(&format!("FAILED: {}", crate::error::chain(e))),
            },
        }
    }

    fn client(&self, event: ClientEvent) {
        // Waiting is news for the person at the terminal, not a result: stderr, so stdout keeps
        // only the lines scripts read.
        let notes = self.notes.load(std::sync::atomic::Ordering::Relaxed);
        let note = |line: String| {
            if notes {
                let write = || std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
                let _ = match &self.bars {
                    Some(bars) => bars.suspend(write),
                    None => write(),
                };
            }
        };
        match event {
            ClientEvent::Offered { name, size } => {
                self.note_seen(None, |s| (s.name, s.size) = (Some(name), Some(size)));
            }
            ClientEvent::DataLegDone(leg) if !self.seen(None, Leg::Data, leg) => self.line("Done! - RX"),
            ClientEvent::ReturnLegDone(leg) if !self.seen(None, Leg::Return, leg) => self.line("Done! - TX"),
            ClientEvent::DataLegDone(_) | ClientEvent::ReturnLegDone(_) => {}
            ClientEvent::Queued(position) => note(format!(
                "waiting for the server: all its client slots are taken; {} in line",
                if position == 1 { "next".to_owned() } else { format!("number {position}") }
            )),
            ClientEvent::Retrying(after) => {
                note(format!("the server is busy and its line is full; trying again in {}", units::duration(after)))
            }
            ClientEvent::Resuming { from, ret_from, size } => {
                self.note_seen(None, |s| s.resumed = Some(crate::session::Resumed { from, ret_from }));
                if from > 0 || ret_from > 0 {
                    note(format!(
                        "resuming an interrupted transfer: {} of {} already here, {} already back at the server",
                        units::bytes(from),
                        units::bytes(size),
                        units::bytes(ret_from)
                    ))
                }
            }
            ClientEvent::KeptPartial(path) => {
                note(format!("what arrived is kept in {}: run the same command again to resume", path.display()))
            }
        }
    }
}
