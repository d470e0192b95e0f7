//! One client's session on A: runs the server's session machine
//! ([`crate::session::ServerSession`]) over the client's TCP connection, its link to the hub,
//! the served file and the staged output files.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, info_span, warn};

use crate::error::Error;
use crate::files::{PrefixRead, StagedFile, first_difference, prune_partials, read_full_at, read_prefix};
use crate::protocol::data::DataMsg;
use crate::protocol::data::WelcomeAuth;
use crate::protocol::hex;
use crate::protocol::ret::{DATA_HEADER_LEN, ReturnMsg, Stream, frame_size};
use crate::report::{Progress, ServerEvent, ServerSessionReport};
use crate::secure::{AuthError, ConfirmCheck, Opener, Sealer, ServerReply};
use crate::session::{
    ByteRange, Failure, LocalFailure, Milestone, ServerAction, ServerInput, ServerOutcome, ServerParams, ServerSession,
    WINDOW_V2,
};
use crate::transport::hub::{RegisterError, SessionLink};
use crate::transport::poll::{Watch, wait};
use crate::transport::ret::{BusyKeepAlive, Inbound, ReturnEnd};
use crate::transport::tcp::{DataConn, FileSent, TcpError};
use crate::transport::wake::Waker;
use crate::units;

use super::Shared;
use super::admission::Identified;
use super::cache::FileId;

/// Bytes read from the file, hashed and written to the socket at a time: small enough to stay in
/// the L2 cache from the read to the write (1 MiB measured 25% more CPU on the whole round trip).
const SEND_CHUNK: usize = 256 << 10;
/// Returned bytes are hashed and written in slices of this size, for the same reason.
const WRITE_SLICE: usize = 256 << 10;
/// Raw bytes written per turn of the loop before the other channel gets a look.
const WRITE_TURN: u64 = 8 << 20;
/// Returned bytes taken per turn of the loop, likewise.
const READ_TURN: u64 = 8 << 20;
/// How long a session may spend finding where a returned copy first differs from the original.
const LOCATE_FOR: Duration = Duration::from_secs(5);
/// Partial returned copies kept beside the output for resumes, at most.
const MAX_PARTIALS: usize = 8;
/// How long a finished session may spend delivering its last frames.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// Serves one connection to its end and reports how it went.
pub(super) fn serve(
    client: Identified,
    peer: SocketAddr,
    shared: &Shared,
    greeted: &AtomicBool,
) -> ServerSessionReport {
    let span = info_span!("client", %peer);
    let _enter = span.enter();
    let cfg = &shared.cfg;
    let Identified { conn, hello } = client;
    shared.reporter.server(ServerEvent::SessionStarted { peer });
    let result = match Waker::new() {
        Ok(waker) => {
            let params = ServerParams {
                idle: cfg.timeout,
                topology: shared.hub.topology(),
                window: WINDOW_V2,
                secured: cfg.secret.is_some(),
            };
            let mut d = Driver {
                shared,
                machine: ServerSession::new(params, Instant::now()),
                conn,
                link: None,
                source: None,
                buf: vec![0; send_chunk(cfg.rate_limit)],
                buf_pos: 0,
                buf_len: 0,
                raw_active: false,
                rate: cfg.rate_limit.map(|rate| Rate { rate, started: Instant::now(), sent: 0 }),
                sinks: [None, None],
                partial: None,
                waker,
                greeted,
                peer,
                progress: Progress::default(),
                check: None,
                data_keys: None,
                ret_keys: None,
                ret_token: None,
                done: None,
            };
            d.run(hello)
        }
        Err(e) => Err(Failure::Local(LocalFailure::Input { path: cfg.file.clone(), source: e })),
    };
    if let Err(Failure::Auth { reason }) = &result {
        // One line for the first refusal of a period, a count for the rest; no result line:
        // whoever reaches the port can make these, as many as they like.
        let mut tally = shared.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if tally.due().is_none() {
            warn!("refused: {reason} (further refusals are counted and summarised each minute)");
        }
        // By A's own words, which open the reason (a client's follow "the client refused").
        tally.note(if reason.starts_with("this server requires a secret") {
            "no_secret"
        } else if reason.starts_with("this server has no secret") {
            "unexpected_secret"
        } else {
            // Also the client's refusal of this server: the client checks the secret first.
            "wrong_secret"
        });
        tally.tick(Instant::now());
        greeted.store(false, Ordering::SeqCst);
        return ServerSessionReport {
            peer,
            greeted: false,
            file: cfg.file.clone(),
            output: cfg.output.clone(),
            csv_output: cfg.csv_output.clone(),
            result: Err(Error::Session {
                peer: format!("client {peer}"),
                failure: Box::new(Failure::Auth { reason: reason.clone() }),
            }),
        };
    }
    let result =
        result.map_err(|failure| Error::Session { peer: format!("client {peer}"), failure: Box::new(failure) });
    match &result {
        Ok(o) => match &o.csv {
            crate::session::CsvResult::Failed(f) => error!(
                digest = %o.digest, output = %cfg.output.display(),
                "the file's round trip verified, but its CSV failed: {}", crate::session::chain(f)
            ),
            _ => info!(digest = %o.digest, output = %cfg.output.display(), "round trip verified"),
        },
        Err(e) => error!("session failed: {}", crate::error::chain(e)),
    }
    let report = ServerSessionReport {
        peer,
        greeted: greeted.load(Ordering::SeqCst),
        file: cfg.file.clone(),
        output: cfg.output.clone(),
        csv_output: cfg.csv_output.clone(),
        result,
    };
    shared.reporter.server(ServerEvent::SessionEnded(&report));
    report
}

fn send_chunk(rate: Option<u64>) -> usize {
    match rate {
        // Small writes keep a throttled stream smooth instead of bursty.
        Some(rate) => (rate / 20).clamp(1024, SEND_CHUNK as u64) as usize,
        None => SEND_CHUNK,
    }
}

/// The served file, open, and the version of it being sent.
struct Source {
    file: File,
    id: FileId,
    /// Bytes handed to the socket.
    sent: u64,
    /// Its file system cannot `sendfile`: the bytes go through the send buffer.
    plain: bool,
}

/// The data channel's rate cap.
struct Rate {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Rate {
    /// When the next byte may go, if not now.
    fn next(&self, now: Instant) -> Option<Instant> {
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / self.rate.max(1) as f64);
        (due > now).then_some(due)
    }
}

struct Driver<'a> {
    shared: &'a Shared,
    machine: ServerSession,
    conn: DataConn,
    link: Option<SessionLink>,
    source: Option<Source>,
    /// File bytes read but not yet written to the socket: `buf[buf_pos..buf_len]`.
    buf: Vec<u8>,
    buf_pos: usize,
    buf_len: usize,
    /// Between `StartRaw` and `RawDone`.
    raw_active: bool,
    rate: Option<Rate>,
    sinks: [Option<StagedFile>; 2],
    /// The partial returned copy of a version-4 client's transfer, until it becomes the sink.
    partial: Option<StagedFile>,
    waker: Waker,
    greeted: &'a AtomicBool,
    /// The client's address, and how far its round trip was last reported.
    peer: SocketAddr,
    progress: Progress,
    /// The secured handshake: what B's `Confirm` must prove, and the keys each channel takes
    /// (the return channel's when its link exists, the data channel's once B proved the secret).
    check: Option<ConfirmCheck>,
    data_keys: Option<(Sealer, Opener)>,
    ret_keys: Option<(Sealer, Opener)>,
    ret_token: Option<crate::protocol::Token>,
    done: Option<Result<ServerOutcome, Failure>>,
}

impl Driver<'_> {
    /// Runs the session from the `Hello` the admission read.
    fn run(&mut self, hello: DataMsg) -> Result<ServerOutcome, Failure> {
        self.act(None);
        self.feed(Instant::now(), ServerInput::Data(hello));
        while self.done.is_none() {
            let now = Instant::now();
            let rate_wait = self.rate.as_ref().and_then(|r| r.next(now)).filter(|_| self.raw_active);
            let write_raw = self.raw_active && self.machine.raw_left() > 0 && rate_wait.is_none();
            let deadline = [self.machine.poll_timeout(), rate_wait].into_iter().flatten().min();
            let stop_fd = self.shared.stop.fd();
            let mut w = vec![Watch::fd(stop_fd, true, false), Watch::fd(self.waker.fd(), true, false)];
            w.extend(self.link.as_ref().map(ReturnEnd::watch));
            w.extend(self.conn.watch(self.machine.reads_data(), write_raw));
            if let Err(e) = wait(&mut w, deadline) {
                drop(w);
                let f = LocalFailure::ReturnChannel { wiring: "hub".into(), source: e };
                self.feed(Instant::now(), ServerInput::Local(f));
                break;
            }
            let (stopped, woken) = (w[0].readable, w[1].readable);
            drop(w);
            let now = Instant::now();
            if stopped {
                self.feed(now, ServerInput::Stop);
                break;
            }
            if woken {
                self.waker.drain();
                self.expected_csv(now);
            }
            self.read_data(now);
            self.read_return();
            self.send_raw(now);
            self.flush(now);
            if self.machine.poll_timeout().is_some_and(|t| now >= t) {
                self.machine.handle_timeout(now);
                self.act(None);
            }
            if let Some(p) = self.machine.progress().filter(|p| *p != self.progress) {
                self.progress = p;
                self.shared.reporter.progress(Some(self.peer), p);
            }
        }
        // The session's last frames (a verdict, an Abort) still go out, briefly, even when the
        // server is stopping: a client is told why.
        self.conn.flush_within(LAST_WORDS);
        if let Some(link) = &mut self.link {
            link.flush_within(LAST_WORDS);
        }
        self.done.take().expect("the loop ends with an outcome")
    }

    fn feed(&mut self, now: Instant, input: ServerInput<'_>) {
        self.machine.handle(now, input);
        self.act(None);
    }

    fn read_data(&mut self, now: Instant) {
        while self.done.is_none() && self.machine.reads_data() {
            match self.conn.read_frame() {
                Ok(Some(msg)) => self.feed(now, ServerInput::Data(msg)),
                Ok(None) => return,
                Err(TcpError::Decode(e)) => return self.feed(now, ServerInput::DataUndecodable(e)),
                Err(TcpError::Forged(e)) => return self.feed(now, ServerInput::Forged(format!("data channel: {e}"))),
                Err(TcpError::Closed | TcpError::Io(_)) => return self.feed(now, ServerInput::DataClosed),
            }
        }
    }

    /// Takes what the return channel holds, up to [`READ_TURN`] bytes before the data channel
    /// gets a look: a client returning frames it held from before a resume sends as fast as A
    /// grants credit, and would otherwise keep this loop (and the data leg) to itself. Each frame
    /// is timed as it comes: the loop may run for a while.
    fn read_return(&mut self) {
        let mut turn = 0;
        while self.done.is_none() && turn < READ_TURN {
            let now = Instant::now();
            let Some(link) = &mut self.link else { return };
            match link.recv() {
                Ok(Some(Inbound::Hello { version })) => self.feed(now, ServerInput::ReturnHello { version }),
                Ok(Some(Inbound::Frame(frame))) => match ReturnMsg::decode(&frame) {
                    Ok(msg) => {
                        turn += frame.len() as u64;
                        let is_data = matches!(msg, ReturnMsg::Data { .. });
                        self.machine.handle(now, ServerInput::Ret(msg));
                        // A Write refers to this frame's payload.
                        self.act(is_data.then(|| &frame[DATA_HEADER_LEN..]));
                    }
                    Err(e) => self.feed(now, ServerInput::RetUndecodable(e)),
                },
                Ok(Some(Inbound::Flooded)) => self.feed(now, ServerInput::RetFlooded),
                Ok(Some(Inbound::Forged(why))) => self.feed(now, ServerInput::Forged(format!("return channel: {why}"))),
                Ok(None) => return,
                Err(source) => {
                    let f = LocalFailure::ReturnChannel { wiring: "hub".into(), source };
                    return self.feed(now, ServerInput::Local(f));
                }
            }
        }
    }

    /// Streams the file's raw bytes while the socket takes them and the rate allows.
    fn send_raw(&mut self, now: Instant) {
        let mut turn = 0;
        while self.done.is_none() && self.raw_active && self.machine.raw_left() > 0 && turn < WRITE_TURN {
            if let Some(rate) = &self.rate
                && rate.next(now).is_some()
            {
                return;
            }
            // Bytes the machine must hash are read first; either way they go to the socket from
            // the page cache (`sendfile`), which saves copying them through here once more. Were
            // the file to change between the read and the send, B's check of the Trailer's digest
            // would catch it, and the metadata check below says why.
            let plain = self.source.as_ref().is_some_and(|s| s.plain);
            let buffered = plain || self.machine.hashes_raw();
            if buffered && self.buf_pos == self.buf_len && !self.refill(now) {
                return;
            }
            let want = if buffered {
                self.buf_len - self.buf_pos
            } else {
                self.machine.raw_left().min(self.buf.len() as u64) as usize
            };
            let Some(src) = &mut self.source else { return };
            let sent = if plain {
                self.conn.write_raw(&self.buf[self.buf_pos..self.buf_len]).map(|n| match n {
                    0 => FileSent::Full,
                    n => FileSent::Bytes(n),
                })
            } else {
                self.conn.send_file(&src.file, src.sent, want)
            };
            let n = match sent {
                Ok(FileSent::Bytes(n)) => n,
                Ok(FileSent::Full) => return,
                Ok(FileSent::FileEnded) => {
                    let what = format!("it shrank: it ended {} bytes early", self.machine.raw_left());
                    let f = LocalFailure::SourceChanged { path: self.shared.cfg.file.clone(), what };
                    return self.feed(now, ServerInput::Local(f));
                }
                Ok(FileSent::Unsupported) => {
                    debug!(
                        sealed = self.conn.is_sealed(),
                        "no sendfile (a sealed session, or the file system): the file goes through a buffer"
                    );
                    src.plain = true;
                    continue;
                }
                Err(TcpError::Io(source)) if source.raw_os_error() == Some(libc::EIO) => {
                    let f = LocalFailure::Input { path: self.shared.cfg.file.clone(), source };
                    return self.feed(now, ServerInput::Local(f));
                }
                Err(_) => {
                    // The data leg is over: what is still to be said arrives (or not) as an Abort.
                    self.raw_active = false;
                    return self.feed(now, ServerInput::DataClosed);
                }
            };
            src.sent += n as u64;
            if buffered {
                self.buf_pos += n;
            }
            turn += n as u64;
            if let Some(rate) = &mut self.rate {
                rate.sent += n as u64;
            }
            self.feed(now, ServerInput::RawWritten(n as u64));
        }
        if self.done.is_none() && self.raw_active && self.machine.raw_left() == 0 {
            self.raw_active = false;
            // What went out must be one version of the file: it may not change while it is sent.
            let Some(src) = &self.source else { return };
            let input = match src.file.metadata().map(|m| FileId::of(&m)) {
                Ok(now_id) => match src.id.changes(&now_id) {
                    None => ServerInput::RawDone,
                    Some(what) => {
                        ServerInput::Local(LocalFailure::SourceChanged { path: self.shared.cfg.file.clone(), what })
                    }
                },
                Err(source) => ServerInput::Local(LocalFailure::Input { path: self.shared.cfg.file.clone(), source }),
            };
            self.feed(now, input);
        }
    }

    /// Reads the next piece of the file to be sent (for the machine to hash); false if the
    /// session failed.
    fn refill(&mut self, now: Instant) -> bool {
        let want = self.machine.raw_left().min(self.buf.len() as u64) as usize;
        let Some(src) = &mut self.source else { return false };
        let input = match read_full_at(&src.file, &mut self.buf[..want], src.sent) {
            Ok(0) => {
                let what = format!("it shrank: it ended {} bytes early", self.machine.raw_left());
                ServerInput::Local(LocalFailure::SourceChanged { path: self.shared.cfg.file.clone(), what })
            }
            Ok(n) => {
                self.buf_pos = 0;
                self.buf_len = n;
                ServerInput::RawRead(&self.buf[..n])
            }
            Err(source) => ServerInput::Local(LocalFailure::Input { path: self.shared.cfg.file.clone(), source }),
        };
        let ok = matches!(input, ServerInput::RawRead(_));
        self.machine.handle(now, input);
        self.act(None);
        ok
    }

    fn flush(&mut self, now: Instant) {
        if let Err(TcpError::Closed | TcpError::Io(_)) = self.conn.flush() {
            self.feed(now, ServerInput::DataClosed);
        }
        if let Some(link) = &mut self.link
            && let Err(source) = link.flush()
        {
            let f = LocalFailure::ReturnChannel { wiring: "hub".into(), source };
            self.feed(now, ServerInput::Local(f));
        }
    }

    /// Reads the partial returned copy's first `partial` bytes and the original's first `source`,
    /// for the machine to check a version-4 client's offer. Long for a big file: the client
    /// hears KeepAlives meanwhile, and a stop is heard too.
    fn read_prefixes(&mut self, source: u64, partial: u64) {
        let now = Instant::now();
        let Driver { shared, machine, link, buf, partial: held, source: src, .. } = self;
        let mut busy = BusyKeepAlive::new(shared.cfg.timeout);
        let mut go_on = || {
            if let Some(link) = link.as_mut() {
                busy.tick(link);
            }
            !shared.stop.is_set()
        };
        if let Some(p) = held {
            let read = read_prefix(p.file_ref(), buf, partial, &mut go_on, |b| {
                machine.handle(now, ServerInput::PartialBytes(b));
            });
            // A short or unreadable partial copy is simply not used; the machine sees so.
            if let PrefixRead::Stopped = read {
                return machine.handle(Instant::now(), ServerInput::Stop);
            }
        }
        let Some(src) = src else { return };
        let path = || shared.cfg.file.clone();
        let input = match read_prefix(&src.file, buf, source, &mut go_on, |b| {
            machine.handle(now, ServerInput::SourcePrefix(b));
        }) {
            PrefixRead::Whole => ServerInput::PrefixRead,
            PrefixRead::Short => {
                let what = format!("it shrank below {} bytes", units::bytes(source));
                ServerInput::Local(LocalFailure::SourceChanged { path: path(), what })
            }
            PrefixRead::Failed(source) => ServerInput::Local(LocalFailure::Input { path: path(), source }),
            PrefixRead::Stopped => ServerInput::Stop,
        };
        // Reading took its time: the machine hears of the end as of now.
        machine.handle(Instant::now(), input);
    }

    fn expected_csv(&mut self, now: Instant) {
        let Some(src) = &self.source else { return };
        let id = src.id;
        if let Some(e) = self.shared.cache.expected_csv(id, &self.shared.cfg.file, Some(self.waker.handle())) {
            self.feed(now, ServerInput::ExpectedCsv(e));
        }
    }

    /// Carries out what the machine asks for; `payload` is the `Data` frame just handled.
    fn act(&mut self, payload: Option<&[u8]>) {
        while let Some(action) = self.machine.poll_action() {
            let now = Instant::now();
            let cfg = &self.shared.cfg;
            match action {
                // Control frames leave at once (credits above all: the client waits for them); a
                // write that would block is finished by the loop's flush, which reports errors.
                ServerAction::SendData(msg) => {
                    self.conn.queue(&msg);
                    let _ = self.conn.flush();
                }
                ServerAction::SendRet(msg) => {
                    if let Some(link) = &mut self.link {
                        link.send(&msg);
                        let _ = link.flush();
                    }
                }
                ServerAction::Authenticate { token, client_msg } => {
                    let input = match cfg.secret.as_ref().map(|s| ServerReply::respond(s, &token, &client_msg)) {
                        Some(Ok(reply)) => {
                            let k = reply.keys;
                            self.data_keys = Some((k.data_out, k.data_in));
                            self.ret_keys = Some((k.ret_out, k.ret_in));
                            self.ret_token = Some(k.ret_token);
                            self.check = Some(reply.check);
                            ServerInput::AuthReply(Box::new(WelcomeAuth { msg: reply.msg, confirm: reply.confirm }))
                        }
                        Some(Err(e)) => ServerInput::AuthRefused(e),
                        None => ServerInput::AuthRefused(AuthError::WrongSecret),
                    };
                    self.machine.handle(now, input);
                }
                ServerAction::CheckConfirm { tag } => {
                    let verified = self.check.take().map(|c| c.verify(&tag));
                    let input = match (verified, self.data_keys.take()) {
                        (Some(Ok(())), Some((seal, open))) => {
                            self.conn.secure(seal, open);
                            info!("the client proved the secret; both channels are sealed from here on");
                            ServerInput::Authenticated
                        }
                        (Some(Err(e)), _) => ServerInput::AuthRefused(e),
                        _ => ServerInput::AuthRefused(AuthError::WrongSecret),
                    };
                    self.machine.handle(now, input);
                }
                ServerAction::Register { token, return_port } => {
                    // Secured, the return channel is claimed with the token only the holders of
                    // the secret know (V5-return-token).
                    let token = self.ret_token.take().unwrap_or(token);
                    self.greeted.store(true, Ordering::SeqCst);
                    debug!(session = %hex(&token[..4]), return_port, version = self.machine.version(), "client hello");
                    let input = match self.shared.hub.register(token, return_port, &self.shared.stop) {
                        Ok(mut link) => {
                            if let Some(ep) = link.remote() {
                                debug!("return channel: connecting to the client at {ep}");
                            }
                            if let Some((seal, open)) = self.ret_keys.take() {
                                link.secure(seal, open);
                            }
                            self.link = Some(link);
                            ServerInput::Registered
                        }
                        Err(RegisterError::TokenInUse) => ServerInput::TokenInUse,
                        Err(RegisterError::Interrupted) => ServerInput::Stop,
                        Err(RegisterError::Io(source)) => {
                            ServerInput::Local(LocalFailure::ReturnChannel { wiring: "hub".into(), source })
                        }
                    };
                    self.machine.handle(now, input);
                }
                ServerAction::OpenSource => {
                    let input = match open_source(&cfg.file) {
                        Ok((file, meta)) => {
                            let id = FileId::of(&meta);
                            let digest = self.shared.cache.digest(&id);
                            let name = crate::files::file_name(&cfg.file);
                            info!(name = %name, size = id.size(), cached_digest = digest.is_some(), "sending file");
                            self.source = Some(Source { file, id, sent: 0, plain: false });
                            ServerInput::SourceOpened { size: id.size(), name, digest }
                        }
                        Err(source) => ServerInput::Local(LocalFailure::Input { path: cfg.file.clone(), source }),
                    };
                    self.machine.handle(now, input);
                    // A's own CSV of the original is derived (or found) while the file travels.
                    self.expected_csv(now);
                }
                ServerAction::StartRaw { from } => {
                    if let Some(src) = &mut self.source {
                        src.sent = from;
                    }
                    if from > 0 {
                        info!(from, "resuming: the client holds the first {} already", units::bytes(from));
                    }
                    self.raw_active = true;
                    if let Some(rate) = &mut self.rate {
                        rate.started = now;
                    }
                }
                ServerAction::FindPartial { transfer } => {
                    // Partials of transfers that were never resumed give way to this one's.
                    prune_partials(&cfg.output, MAX_PARTIALS - 1);
                    let len = match StagedFile::partial(&cfg.output, &hex(&transfer)) {
                        Ok(Some(p)) => {
                            let len = p.file_ref().metadata().map_or(0, |m| m.len());
                            debug!(partial = %p.temp_path().display(), len, "partial returned copy");
                            self.partial = Some(p);
                            len
                        }
                        Ok(None) => {
                            warn!("another session holds this transfer's partial returned copy; not resuming it");
                            0
                        }
                        Err(e) => {
                            warn!("cannot keep a partial returned copy beside {}: {e}", cfg.output.display());
                            0
                        }
                    };
                    self.machine.handle(now, ServerInput::PartialFound { len });
                }
                ServerAction::ReadPrefix { source, partial } => self.read_prefixes(source, partial),
                ServerAction::OpenReturned { keep } => {
                    let opened = match self.partial.take() {
                        Some(mut p) => p.truncate(keep).map(|()| p),
                        None => StagedFile::create(&cfg.output),
                    };
                    match opened {
                        Ok(s) => {
                            if keep > 0 {
                                info!(
                                    keep,
                                    "resuming: the first {} of the returned copy are here already",
                                    units::bytes(keep)
                                );
                            }
                            self.sinks[Stream::File as usize] = Some(s);
                        }
                        Err(source) => {
                            let f = LocalFailure::Output { path: cfg.output.clone(), source };
                            self.machine.handle(now, ServerInput::Local(f));
                        }
                    }
                }
                ServerAction::OpenSink(stream) => {
                    let dest = match stream {
                        Stream::File => &cfg.output,
                        Stream::Csv => &cfg.csv_output,
                    };
                    match StagedFile::create(dest) {
                        Ok(s) => self.sinks[stream as usize] = Some(s),
                        Err(source) => {
                            let f = LocalFailure::Output { path: dest.clone(), source };
                            self.machine.handle(now, ServerInput::Local(f));
                        }
                    }
                }
                ServerAction::Write(stream) => {
                    let (Some(sink), Some(bytes)) = (&mut self.sinks[stream as usize], payload) else { continue };
                    for slice in bytes.chunks(WRITE_SLICE) {
                        self.machine.handle(now, ServerInput::Returned(slice));
                        if let Err(source) = sink.file().write_all(slice) {
                            let path = sink.temp_path().to_path_buf();
                            self.machine.handle(now, ServerInput::Local(LocalFailure::Output { path, source }));
                            break;
                        }
                    }
                }
                ServerAction::Commit(stream) => {
                    let Some(mut sink) = self.sinks[stream as usize].take() else { continue };
                    let dest = sink.dest().to_path_buf();
                    let input = match sink.file().flush().and_then(|()| sink.commit()) {
                        Ok(_) => ServerInput::Committed(stream),
                        Err(source) => ServerInput::Local(LocalFailure::Output { path: dest, source }),
                    };
                    self.machine.handle(now, input);
                }
                ServerAction::Locate => {
                    let first = match (&self.sinks[Stream::File as usize], &self.source) {
                        (Some(sink), Some(src)) => {
                            let give_up = Instant::now() + LOCATE_FOR;
                            first_difference(sink.file_ref(), &src.file, src.id.size(), give_up)
                                .inspect_err(|e| warn!("cannot compare the returned copy with the original: {e}"))
                                .ok()
                                .flatten()
                                .map(|(offset, len)| ByteRange { offset, len })
                        }
                        _ => None,
                    };
                    self.machine.handle(now, ServerInput::Located(first));
                }
                ServerAction::Digested(d) => {
                    if let Some(src) = &self.source {
                        self.shared.cache.store_digest(src.id, d);
                    }
                }
                ServerAction::Milestone(Milestone::DataLeg(leg)) => {
                    let digest = leg.digest;
                    info!(
                        bytes = digest.size, crc32 = digest.crc32, blake3 = %digest.blake3_hex(),
                        "data leg sent; the client verified it"
                    );
                    self.shared.reporter.server(ServerEvent::DataLegDone { peer: self.conn.peer(), leg });
                }
                ServerAction::Milestone(Milestone::ReturnLeg(leg)) => {
                    info!(output = %cfg.output.display(), crc32 = leg.digest.crc32, "returned copy verified identical and saved");
                    self.shared.reporter.server(ServerEvent::ReturnLegDone { peer: self.conn.peer(), leg });
                }
                ServerAction::ClaimDiffers(diff) => {
                    warn!("the client's End digests disagree with what was sent (its copy was right): {diff}");
                }
                ServerAction::CloseData => {
                    self.conn.flush_within(LAST_WORDS);
                    self.conn.close();
                }
                ServerAction::Finish(result) => {
                    // A greeting that failed before registering (no return port) still counts.
                    self.greeted.fetch_or(self.machine.greeted(), Ordering::SeqCst);
                    // What came back of an interrupted transfer waits for its resume (it is checked
                    // against the original then); a copy that differs does not.
                    if let Err(f) = &result
                        && f.resumable()
                        && let Some(sink) = &mut self.sinks[Stream::File as usize]
                        && sink.is_partial()
                        && sink.keep_for_resume(frame_size(self.machine.version()) as u64)
                    {
                        info!(partial = %sink.temp_path().display(), "kept what came back, for a resume");
                    }
                    if let Ok(o) = &result {
                        info!(
                            version = o.version, data = %units::duration(o.data_time), ret = %units::duration(o.return_time),
                            "session finished"
                        );
                    }
                    self.done = Some(result);
                }
            }
        }
    }
}

/// Opens the served file, which must be a regular file.
pub(super) fn open_source(path: &std::path::Path) -> io::Result<(File, std::fs::Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta))
}
