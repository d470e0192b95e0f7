//! Process B: opens the return channel, connects the data channel, and runs the client's
//! session machine ([`crate::session::ClientSession`]) over them: the file is read from the data
//! channel into pooled buffers, hashed, saved to a staged file, and sent back from the same
//! buffers while more of it arrives. The vertex CSV is made on a second thread.

mod csv;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span};

use crate::error::{Error, Result};
use crate::files::{
    PrefixRead, StagedFile, available_space, check_destination, parent_dir, partials, prune_partials, read_prefix,
};
use crate::protocol::data::DataMsg;
use crate::protocol::ret::{ReturnMsg, Stream, frame_size};
use crate::protocol::{Token, VERSION, hex};
use crate::report::{ClientEvent, ClientReport, Progress, Reporter};
use crate::secure::{AuthError, ClientHandshake, SessionKeys};
use crate::session::{
    ClientAction, ClientInput, ClientOutcome, ClientParams, ClientSession, CsvFailure, CsvReturned, Failure,
    LocalFailure, Milestone, PENDING_FRAMES, Phase,
};
use crate::shutdown::Shutdown;
use crate::transport::poll::{Watch, wait};
use crate::transport::pool::{Chunk, ChunkPool};
use crate::transport::ret::{BusyKeepAlive, Inbound, ReturnChannel, ReturnEnd, ZmqMode};
use crate::transport::tcp::{self, ConnectError, DataConn, TcpError};
use crate::transport::wake::Waker;
use crate::units;

/// Raw bytes read per turn of the loop before the return channel gets a look.
const READ_TURN: u64 = 8 << 20;
/// How long a finished session may spend delivering its last frames.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Everything process B needs, validated.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where the received file goes.
    pub out: PathBuf,
    /// A's address.
    pub host: String,
    /// A's TCP port.
    pub port: u16,
    /// The port B binds in case A connects to it (`--remotehost`); B connects only where A's
    /// `Welcome` says.
    pub zmq_port: u16,
    /// How the return channel is wired.
    pub zmq_mode: ZmqMode,
    /// How long any wait on A may make no progress (also the connect timeout).
    pub timeout: Duration,
    /// How long to keep trying a server that is busy with a full line.
    pub busy_wait: Duration,
    /// How long to keep trying while no server listens at the address yet (`--wait-for-server`).
    pub wait_for_server: Duration,
    /// Where the vertex CSV goes when the file is STL; `None` with `--no-csv`.
    pub csv: Option<PathBuf>,
    /// The shared secret to prove, and to require of the server.
    pub secret: Option<crate::secure::Secret>,
}

/// The first pause before trying a busy server again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// Runs one round trip against A. A server busy with a full line is tried again, with growing
/// pauses, for up to `busy_wait`; a server not listening yet (or whose name does not resolve
/// yet), for up to `wait_for_server`, with pauses of at most a second.
pub fn run(cfg: &ClientConfig, shutdown: &Shutdown, reporter: &dyn Reporter) -> Result<ClientReport> {
    // Find out now, not after the transfer, that the copy or its CSV could not be saved.
    for dest in std::iter::once(&cfg.out).chain(&cfg.csv) {
        check_destination(dest).map_err(Error::output(dest))?;
    }
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let (delay, last) = match attempt(cfg, shutdown, reporter) {
            Err(Error::Session { failure, .. }) if matches!(*failure, Failure::Busy { .. }) => {
                // Random spread, so clients turned away together do not all come back together.
                let mut r = [0u8; 1];
                let _ = getrandom::fill(&mut r);
                let delay = pause.mul_f64(0.75 + f64::from(r[0]) / 510.0);
                pause = (pause * 2).min(MAX_PAUSE);
                let busy = Error::Session { peer: format!("server {}:{}", cfg.host, cfg.port), failure };
                if Instant::now() + delay > started + cfg.busy_wait {
                    return Err(busy);
                }
                info!(pause = %units::duration(delay), "{}; trying again", crate::error::chain(&busy));
                reporter.client(ClientEvent::Retrying(delay));
                (delay, busy)
            }
            Err(e @ (Error::NoServer { .. } | Error::Connect { .. })) if !cfg.wait_for_server.is_zero() => {
                let delay = pause.min(SERVER_PAUSE);
                pause = (pause * 2).min(MAX_PAUSE);
                if Instant::now() + delay > started + cfg.wait_for_server {
                    return Err(e);
                }
                info!(pause = %units::duration(delay), "{}; trying again", crate::error::chain(&e));
                (delay, e)
            }
            other => return other,
        };
        let mut w = [Watch::fd(shutdown.fd(), true, false)];
        let _ = wait(&mut w, Some(Instant::now() + delay));
        if shutdown.is_set() {
            debug!("stopped while waiting to try again after: {}", crate::error::chain(&last));
            return Err(Error::Interrupted);
        }
    }
}

/// The longest pause between tries of a server that is not listening yet: it should be found
/// soon after it starts.
const SERVER_PAUSE: Duration = Duration::from_secs(1);

/// One connection's round trip.
fn attempt(cfg: &ClientConfig, shutdown: &Shutdown, reporter: &dyn Reporter) -> Result<ClientReport> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let span = info_span!("session", server = %addr);
    let _enter = span.enter();
    let mut token: Token = [0; 16];
    getrandom::fill(&mut token).map_err(|e| Error::Usage(format!("no randomness for a session token: {e}")))?;
    let ret = ReturnChannel::open(&token, cfg.zmq_mode, cfg.zmq_port).map_err(Error::Wiring)?;
    info!(session = %hex(&token[..4]), wiring = %ret.describe(), "return channel opened");
    let conn = tcp::connect(&addr, cfg.timeout, shutdown).map_err(|e| match e {
        ConnectError::Refused => Error::NoServer { addr: addr.clone() },
        ConnectError::Interrupted => Error::Interrupted,
        ConnectError::Io(source) => Error::Connect { addr: addr.clone(), source },
    })?;
    info!(server = %conn.peer(), "connected to the data channel");
    let now = Instant::now();
    let handshake = cfg.secret.as_ref().map(ClientHandshake::start);
    let params = ClientParams {
        idle: cfg.timeout,
        token,
        return_port: ret.bound_port().unwrap_or(0),
        auth: handshake.as_ref().map(ClientHandshake::message),
    };
    let mut driver = Driver {
        cfg,
        shutdown,
        reporter,
        machine: ClientSession::new(params, now),
        token,
        handshake,
        keys: None,
        conn,
        ret,
        pool: ChunkPool::new(frame_size(VERSION)),
        waker: Waker::new().map_err(|e| Error::Usage(format!("cannot create a wake-up socket: {e}")))?,
        staged: None,
        size: 0,
        received: 0,
        on_disk: 0,
        filling: None,
        pending: VecDeque::new(),
        place: None,
        csv_job: None,
        csv_ready: None,
        csv_wanted: false,
        csv_file: None,
        progress: Progress::default(),
        done: None,
    };
    let result = driver.run();
    // Whatever happened, the converter stops and is joined: no thread outlives its session.
    if let Some(job) = driver.csv_job.take() {
        job.stop();
    }
    match result {
        Ok(outcome) => {
            let csv = matches!(outcome.csv, CsvReturned::Returned { .. }).then(|| cfg.csv.clone()).flatten();
            Ok(ClientReport { server: addr, output: cfg.out.clone(), csv, outcome, return_confirmed: true })
        }
        Err(failure) => Err(Error::Session { peer: format!("server {addr}"), failure: Box::new(failure) }),
    }
}

struct Driver<'a> {
    cfg: &'a ClientConfig,
    shutdown: &'a Shutdown,
    reporter: &'a dyn Reporter,
    machine: ClientSession,
    conn: DataConn,
    ret: ReturnChannel,
    pool: ChunkPool,
    waker: Waker,
    staged: Option<StagedFile>,
    /// The file's size, from the Header.
    size: u64,
    /// Raw bytes read so far (counting those an earlier attempt left).
    received: u64,
    /// Bytes of the partial copy from before this attempt: frames below it go back from disk.
    on_disk: u64,
    /// The frame being filled from the data channel.
    filling: Option<Chunk>,
    /// Frames saved and waiting for credit to go back.
    pending: VecDeque<Chunk>,
    /// The place in the server's line last reported.
    place: Option<u32>,
    /// The conversion, running from the moment the copy is staged.
    csv_job: Option<csv::Job>,
    /// Its result, kept until the machine asks for the CSV (the file is verified by then).
    csv_ready: Option<csv::Outcome>,
    /// The machine asked for the CSV.
    csv_wanted: bool,
    /// The landed CSV, read from to send it.
    csv_file: Option<File>,
    /// How far the round trip was last reported.
    progress: Progress,
    token: Token,
    /// The secured handshake, until A's half arrives; then the keys, until both channels take
    /// them.
    handshake: Option<ClientHandshake>,
    keys: Option<SessionKeys>,
    done: Option<std::result::Result<ClientOutcome, Failure>>,
}

impl Driver<'_> {
    fn run(&mut self) -> std::result::Result<ClientOutcome, Failure> {
        self.act();
        while self.done.is_none() {
            let read_tcp = self.machine.reads_data() && (!self.machine.in_raw() || self.raw_budget() > 0);
            let mut w = vec![
                Watch::fd(self.shutdown.fd(), true, false),
                Watch::fd(self.waker.fd(), true, false),
                self.ret.watch(),
            ];
            w.extend(self.conn.watch(read_tcp, false));
            if let Err(e) = wait(&mut w, self.machine.poll_timeout()) {
                drop(w);
                self.feed(Instant::now(), ClientInput::Local(return_channel_failure(&self.ret, e)));
                break;
            }
            let (stopped, woken) = (w[0].readable, w[1].readable);
            drop(w);
            let now = Instant::now();
            if stopped {
                if let Some(job) = &self.csv_job {
                    job.cancel();
                }
                self.feed(now, ClientInput::Stop);
                break;
            }
            if woken {
                self.waker.drain();
                self.csv_result(now);
            }
            self.read_data(now);
            self.read_return(now);
            self.flush(now);
            if self.machine.poll_timeout().is_some_and(|t| now >= t) {
                self.machine.handle_timeout(now);
                self.act();
            }
            if let Some(p) = self.machine.progress().filter(|p| *p != self.progress) {
                self.progress = p;
                self.reporter.progress(None, p);
            }
        }
        // The session's last frames (a verdict, an Abort, Bye) still go out, briefly.
        self.conn.flush_within(LAST_WORDS);
        self.ret.flush_within(LAST_WORDS);
        self.done.take().expect("the loop ends with an outcome")
    }

    fn feed(&mut self, now: Instant, input: ClientInput<'_>) {
        self.machine.handle(now, input);
        self.act();
    }

    /// Reads the data channel: raw bytes into frame buffers, or control frames.
    fn read_data(&mut self, now: Instant) {
        let mut turn = 0;
        while self.done.is_none() && self.machine.reads_data() && turn < READ_TURN {
            if !self.machine.in_raw() {
                match self.conn.read_frame() {
                    Ok(Some(msg)) => self.feed(now, ClientInput::Data(msg)),
                    Ok(None) => return,
                    Err(TcpError::Decode(e)) => return self.feed(now, ClientInput::DataUndecodable(e)),
                    Err(TcpError::Forged(e)) => {
                        return self.feed(now, ClientInput::Forged(format!("data channel: {e}")));
                    }
                    Err(TcpError::Closed | TcpError::Io(_)) => return self.feed(now, ClientInput::DataClosed),
                }
                continue;
            }
            let budget = self.raw_budget();
            if budget == 0 {
                return;
            }
            let (size, received) = (self.size, self.received);
            let chunk =
                self.filling.get_or_insert_with(|| self.pool.get(ClientSession::frame_len(size, received) as usize));
            let space = chunk.unfilled();
            let want = space.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
            let n = match self.conn.read_raw(&mut space[..want]) {
                Ok(0) => return,
                Ok(n) => n,
                Err(TcpError::Forged(e)) => return self.feed(now, ClientInput::Forged(format!("data channel: {e}"))),
                Err(_) => return self.feed(now, ClientInput::DataClosed),
            };
            let before = chunk.filled().len();
            chunk.advance(n);
            self.received += n as u64;
            turn += n as u64;
            let piece = &chunk.filled()[before..];
            // Hashed and saved while the piece is still in the cache; it goes back whole, as
            // one frame, once the frame is full.
            self.machine.handle(now, ClientInput::Raw(piece));
            if let Some(staged) = self.staged.as_mut() {
                if let Err(source) = staged.file().write_all(piece) {
                    let path = staged.temp_path().to_path_buf();
                    return self.feed(now, ClientInput::Local(LocalFailure::Output { path, source }));
                }
                if let Some(job) = &self.csv_job {
                    job.written(piece.len() as u64);
                }
            }
            if chunk.is_full() {
                let chunk = self.filling.take().expect("filled above");
                let n = chunk.len() as u64;
                self.pending.push_back(chunk);
                self.machine.handle(now, ClientInput::Saved(n));
            }
            self.act();
        }
    }

    /// Raw bytes that may be read now: the machine's budget counts frames handed to the return
    /// channel as gone, so frames still queued in our own outbox (a server granting a huge credit,
    /// a slow link) stop the reading too, or they would pile up without bound.
    fn raw_budget(&self) -> u64 {
        if self.ret.queued_frames() >= PENDING_FRAMES as usize { 0 } else { self.machine.raw_budget() }
    }

    fn read_return(&mut self, now: Instant) {
        while self.done.is_none() {
            match self.ret.recv() {
                Ok(Some(Inbound::Frame(frame))) => match ReturnMsg::decode(&frame) {
                    Ok(msg) => {
                        self.machine.handle(now, ClientInput::Ret(msg));
                        self.act();
                    }
                    Err(e) => self.feed(now, ClientInput::RetUndecodable(e)),
                },
                Ok(Some(Inbound::Forged(why))) => {
                    return self.feed(now, ClientInput::Forged(format!("return channel: {why}")));
                }
                // Only A's end hears of Hellos and floods.
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    let f = return_channel_failure(&self.ret, e);
                    return self.feed(now, ClientInput::Local(f));
                }
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        if let Err(e) = self.conn.flush() {
            match e {
                TcpError::Closed | TcpError::Io(_) => self.feed(now, ClientInput::DataClosed),
                TcpError::Decode(_) | TcpError::Forged(_) => {}
            }
        }
        if let Err(e) = self.ret.flush() {
            let f = return_channel_failure(&self.ret, e);
            self.feed(now, ClientInput::Local(f));
        }
    }

    fn csv_result(&mut self, now: Instant) {
        let Some(result) = self.csv_job.as_ref().and_then(csv::Job::result) else { return };
        if let Some(job) = self.csv_job.take() {
            job.stop();
        }
        self.csv_ready = Some(result);
        if let Some(input) = self.land_csv() {
            self.feed(now, input);
        }
    }

    /// Once the machine wants the CSV and the converter is done: lands the staged CSV and says
    /// what the machine is to hear.
    fn land_csv(&mut self) -> Option<ClientInput<'static>> {
        if !self.csv_wanted {
            return None;
        }
        let (input, staged) = self.csv_ready.take()?;
        let Some(staged) = staged else { return Some(input) };
        let path = staged.dest().to_path_buf();
        let landed = staged.commit().and_then(|mut f| f.rewind().map(|()| f));
        Some(match landed {
            Ok(file) => {
                info!(csv = %path.display(), "CSV saved");
                self.csv_file = Some(file);
                input
            }
            Err(source) => ClientInput::CsvFailed(Failure::Local(LocalFailure::Output { path, source })),
        })
    }

    /// Carries out what the machine asks for.
    fn act(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            let now = Instant::now();
            match action {
                // Control frames leave at once (a write that would block is finished by the
                // loop's flush); errors show there too.
                ClientAction::SendData(msg) => {
                    if matches!(msg, DataMsg::Ready) {
                        info!(wiring = %self.ret.describe(), "return channel up");
                    }
                    self.conn.queue(&msg);
                    let _ = self.conn.flush();
                    if matches!(msg, DataMsg::Accept | DataMsg::AcceptFrom { .. }) {
                        info!("accepted");
                    }
                }
                // The server repeats its notice as a keep-alive: only a new place is news.
                ClientAction::Queued { position } if self.place != Some(position) => {
                    self.place = Some(position);
                    info!(position, "every client slot of the server is taken; waiting in its line");
                    self.reporter.client(ClientEvent::Queued(position));
                }
                ClientAction::Queued { .. } => {}
                ClientAction::SendRet(msg) => {
                    self.ret.send(&msg);
                    let _ = self.ret.flush();
                }
                ClientAction::Authenticate(theirs) => {
                    let input = match self.handshake.take() {
                        Some(hs) => match hs.finish(&self.token, &theirs.msg, &theirs.confirm) {
                            Ok((keys, tag)) => {
                                let ret_token = keys.ret_token;
                                self.keys = Some(keys);
                                ClientInput::Authenticated { tag, ret_token }
                            }
                            Err(e) => ClientInput::AuthRefused(e),
                        },
                        None => ClientInput::AuthRefused(AuthError::BadMessage),
                    };
                    self.machine.handle(now, input);
                }
                ClientAction::Secure => {
                    if let Some(k) = self.keys.take() {
                        self.conn.secure(k.data_out, k.data_in);
                        self.ret.secure(k.ret_out, k.ret_in);
                        info!("the server proved the secret; both channels are sealed from here on");
                    }
                }
                ClientAction::Wire(topology) => {
                    // Where the data channel went, not -H as given: a name may resolve to
                    // several addresses, and the return channel must reach the same server.
                    let host = crate::transport::ret::zmq_host(self.conn.peer());
                    if let Err(e) = self.ret.use_topology(topology, &host) {
                        let wiring = self.ret.describe();
                        self.machine.handle(
                            now,
                            ClientInput::Local(LocalFailure::ReturnChannel { wiring, source: io::Error::other(e) }),
                        );
                    } else {
                        debug!(%topology, wiring = %self.ret.describe(), "return channel wired");
                    }
                }
                ClientAction::PrepareOutput { size, name, resume } => {
                    // The name is shown, escaped, and never used as a path.
                    info!(name = ?name, size, "header received");
                    self.size = size;
                    self.reporter.client(ClientEvent::Offered { name, size });
                    let input = match self.prepare(size, resume) {
                        Ok(None) => ClientInput::Stop,
                        Ok(Some((staged, transfer))) => {
                            debug!(temp = %staged.temp_path().display(), "output staged");
                            if let Some(csv) = &self.cfg.csv {
                                match csv::Job::start(&staged, size, csv, self.waker.handle()) {
                                    Ok(job) => self.csv_job = Some(job),
                                    Err(source) => {
                                        let f = Failure::Local(LocalFailure::Output { path: csv.clone(), source });
                                        self.csv_ready = Some((ClientInput::CsvFailed(f), None));
                                    }
                                }
                            }
                            self.staged = Some(staged);
                            ClientInput::OutputReady { transfer }
                        }
                        Err(f) => ClientInput::Local(f),
                    };
                    // Hashing a partial copy takes its time: the machine hears of it as of now.
                    self.machine.handle(Instant::now(), input);
                }
                ClientAction::ResumeAt { from, ret_from } => {
                    let held = self.staged.as_ref().and_then(|s| s.file_ref().metadata().ok()).map_or(0, |m| m.len());
                    if from < held {
                        info!(
                            held,
                            "the server's file does not begin with the partial copy (it changed): starting over"
                        );
                        if let Some(Err(source)) = self.staged.as_mut().map(|s| s.truncate(from)) {
                            let f = LocalFailure::Output { path: self.cfg.out.clone(), source };
                            self.machine.handle(now, ClientInput::Local(f));
                            continue;
                        }
                    } else if from > 0 || ret_from > 0 {
                        info!(from, ret_from, "resuming: receiving from byte {from}, returning from byte {ret_from}");
                    }
                    self.reporter.client(ClientEvent::Resuming { from, ret_from, size: self.size });
                    // The raw bytes start now.
                    info!(from, "accepted; receiving");
                    self.received = from;
                    self.on_disk = from;
                    if let Some(job) = &self.csv_job {
                        job.written(from);
                    }
                }
                ClientAction::SendFrame { stream, offset, len } => {
                    let chunk = match stream {
                        // Frames from before this attempt are read back from the partial copy.
                        Stream::File if offset < self.on_disk => self.read_held(offset, len),
                        Stream::File => self.pending.pop_front(),
                        Stream::Csv => self.read_csv(len),
                    };
                    let Some(chunk) = chunk else { continue };
                    debug_assert_eq!(chunk.len() as u64, len);
                    if let Err(e) = self.ret.send_chunk(stream, offset, chunk) {
                        let f = return_channel_failure(&self.ret, e);
                        self.machine.handle(now, ClientInput::Local(f));
                    }
                    let _ = self.ret.flush();
                }
                ClientAction::Commit => {
                    // The verified copy lands now; its partial name stays until the round trip
                    // ends, so that a cut-off return leg still resumes from the whole copy.
                    let landed = self.staged.as_mut().map(|s| s.file().flush().and_then(|()| s.land_keeping_name()));
                    let input = match landed {
                        Some(Ok(())) => {
                            info!(output = %self.cfg.out.display(), "data leg verified and saved");
                            ClientInput::Committed
                        }
                        Some(Err(source)) => {
                            ClientInput::Local(LocalFailure::Output { path: self.cfg.out.clone(), source })
                        }
                        None => continue,
                    };
                    self.machine.handle(now, input);
                }
                ClientAction::MakeCsv => {
                    self.csv_wanted = true;
                    let input = match (&self.cfg.csv, &self.csv_job, &self.csv_ready) {
                        (None, _, _) => Some(ClientInput::CsvNone("disabled with --no-csv".into())),
                        // Still converting: its result lands it.
                        (Some(_), Some(_), _) => None,
                        (Some(_), None, Some(_)) => self.land_csv(),
                        (Some(_), None, None) => Some(ClientInput::CsvFailed(Failure::Csv(
                            CsvFailure::ClientCouldNot("the converter never started".into()),
                        ))),
                    };
                    if let Some(input) = input {
                        self.machine.handle(now, input);
                    }
                }
                ClientAction::Milestone(Milestone::DataLeg(leg)) => {
                    let digest = leg.digest;
                    info!(
                        bytes = digest.size, crc32 = digest.crc32, blake3 = %digest.blake3_hex(), "data leg received"
                    );
                    self.reporter.client(ClientEvent::DataLegDone(leg));
                }
                ClientAction::Milestone(Milestone::ReturnLeg(leg)) => {
                    info!("the server verified the returned copy");
                    self.reporter.client(ClientEvent::ReturnLegDone(leg));
                }
                ClientAction::CloseData => {
                    self.conn.flush_within(LAST_WORDS);
                    self.conn.close();
                }
                ClientAction::Finish(result) => {
                    // A --remotehost server refuses a client that bound no return port; why it
                    // bound none is known only here, and is the cause worth telling.
                    let result = match (result, self.ret.bind_error()) {
                        (Err(Failure::Refused { during: Phase::Handshake, reason }), Some(why))
                            if reason.contains("bound none") =>
                        {
                            Err(Failure::Local(LocalFailure::ReturnChannel {
                                wiring: "the server runs with --remotehost and connects to this client's return port"
                                    .into(),
                                source: io::Error::other(format!("{why}; free it, or choose another with --zmq-port")),
                            }))
                        }
                        (result, _) => result,
                    };
                    if let Err(f) = &result
                        && f.resumable()
                        && let Some(staged) = &mut self.staged
                        && staged.keep_for_resume(frame_size(VERSION) as u64)
                    {
                        info!(partial = %staged.temp_path().display(), "kept for a resume: run the same command again");
                        self.reporter.client(ClientEvent::KeptPartial(staged.temp_path().to_path_buf()));
                    }
                    match &result {
                        Ok(o) => info!(
                            digest = %o.digest, data = %units::duration(o.data_time), ret = %units::duration(o.return_time),
                            "round trip verified"
                        ),
                        // A busy server is tried again: the retry's log line says so, once.
                        Err(f @ Failure::Busy { .. }) => info!("{}", f.chain()),
                        // On the console the error is shown once, by main; the log keeps it here.
                        Err(f) => info!("session failed: {}", f.chain()),
                    }
                    self.done = Some(result);
                }
            }
        }
    }

    /// Checks for room and opens the output's partial copy: the one an interrupted attempt left
    /// (whole frames of it, or all of it if it is whole), or a new one; passes what it holds to
    /// the machine, and says under which transfer id. `None`: the stop signal came meanwhile.
    fn prepare(
        &mut self,
        size: u64,
        resume: bool,
    ) -> std::result::Result<Option<(StagedFile, [u8; 16])>, LocalFailure> {
        let out = self.cfg.out.clone();
        let fail = |source| LocalFailure::Output { path: out.clone(), source };
        let found = partials(&out).into_iter().find_map(|id| {
            let transfer = parse_id(&id)?;
            StagedFile::partial(&out, &id).ok().flatten().map(|p| (p, transfer))
        });
        let (mut staged, transfer) = match found {
            Some(found) => found,
            None => {
                let mut transfer = [0u8; 16];
                getrandom::fill(&mut transfer).map_err(|e| fail(io::Error::other(e.to_string())))?;
                let p = StagedFile::partial(&out, &hex(&transfer)).map_err(fail)?;
                (p.ok_or_else(|| fail(io::Error::other("a new partial copy is locked by another process")))?, transfer)
            }
        };
        // Older partial copies of the same destination are from transfers that will not resume.
        prune_partials(&out, 1);
        let len = staged.file_ref().metadata().map_err(fail)?.len();
        let frame = frame_size(VERSION) as u64;
        // An older server resumes nothing: what is held is of no use to it.
        let have = match resume {
            false => 0,
            true if len == size => size,
            true => len.min(size) / frame * frame,
        };
        // From here on, a failure that says nothing against the partial copy leaves it for the
        // next attempt.
        let keep = |mut staged: StagedFile, f: LocalFailure| {
            staged.keep_for_resume(frame);
            f
        };
        let dir = parent_dir(&out);
        if let Ok(free) = available_space(dir)
            && free < size - have
        {
            return Err(keep(staged, LocalFailure::NoRoom { dir: dir.to_path_buf(), free, size }));
        }
        if let Err(source) = staged.truncate(have) {
            return Err(keep(staged, fail(source)));
        }
        if have > 0 {
            info!(have, partial = %staged.temp_path().display(), "a partial copy from an earlier attempt: offering it");
        }
        // Its digest is offered; the server sends again only what does not match. Hashing a big
        // copy takes a while: the server hears KeepAlives meanwhile.
        let mut chunk = self.pool.get(frame as usize);
        let mut busy = BusyKeepAlive::new(self.cfg.timeout);
        let (ret, shutdown, machine) = (&mut self.ret, self.shutdown, &mut self.machine);
        let go_on = || {
            busy.tick(ret);
            !shutdown.is_set()
        };
        let take = |b: &[u8]| machine.handle(Instant::now(), ClientInput::PrefixBytes(b));
        match read_prefix(staged.file_ref(), chunk.unfilled(), have, go_on, take) {
            PrefixRead::Whole => Ok(Some((staged, transfer))),
            PrefixRead::Stopped => {
                staged.keep_for_resume(frame);
                Ok(None)
            }
            PrefixRead::Short => Err(keep(staged, fail(io::ErrorKind::UnexpectedEof.into()))),
            PrefixRead::Failed(source) => Err(keep(staged, fail(source))),
        }
    }

    /// `len` bytes of the partial copy from `offset`, read into a frame buffer: frames held from
    /// before this attempt go back from disk.
    fn read_held(&mut self, offset: u64, len: u64) -> Option<Chunk> {
        let staged = self.staged.as_ref()?;
        let mut chunk = self.pool.get(len as usize);
        if let Err(source) = std::os::unix::fs::FileExt::read_exact_at(staged.file_ref(), chunk.unfilled(), offset) {
            let f = LocalFailure::Output { path: staged.temp_path().to_path_buf(), source };
            self.machine.handle(Instant::now(), ClientInput::Local(f));
            return None;
        }
        chunk.advance(len as usize);
        Some(chunk)
    }

    /// The next `len` bytes of the CSV, read into a frame buffer.
    fn read_csv(&mut self, len: u64) -> Option<Chunk> {
        // The machine asks for CSV frames only after `CsvMade`, which comes only with the landed
        // file open: the descriptor, not the path, so what is sent is what was converted.
        let (path, file) = (self.cfg.csv.as_ref()?, self.csv_file.as_mut()?);
        let mut chunk = self.pool.get(len as usize);
        if let Err(source) = file.read_exact(chunk.unfilled()) {
            let f = LocalFailure::Output { path: path.clone(), source };
            self.machine.handle(Instant::now(), ClientInput::Local(f));
            return None;
        }
        chunk.advance(len as usize);
        Some(chunk)
    }
}

/// A transfer id from a partial copy's name: 32 hex digits.
fn parse_id(id: &str) -> Option<[u8; 16]> {
    if id.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(id.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn return_channel_failure(ret: &ReturnChannel, source: io::Error) -> LocalFailure {
    LocalFailure::ReturnChannel { wiring: ret.describe(), source }
}
