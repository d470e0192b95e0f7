//! Process A: serves one file to every client over the data channel, takes it back over the
//! return channel, and proves the returned copy identical to what it sent.
//!
//! One accept loop, one thread per client (bounded by `max_clients`), one hub thread owning the
//! ZeroMQ ROUTER. Every wait is bounded by the idle timeout and watches the shutdown flag.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, info_span, warn};

use crate::error::{Error, Leg, Result, TransportError};
use crate::files::StagedFile;
use crate::integrity::{Digest, Hasher};
use crate::protocol::data::{DataMsg, ErrorCode, VERSION};
use crate::protocol::hex;
use crate::protocol::ret::{ReturnMsg, Stream, is_keepalive, keepalive_every};
use crate::shutdown::{Shutdown, TICK};
use crate::stl::{self, CsvOptions};
use crate::transport::tcp::Conn;
use crate::transport::zmq::{CREDIT_WINDOW, Hub, HubWiring, SessionLink, endpoint};
use crate::units;

/// How bind errors name the data channel.
const DATA_CHANNEL: &str = "data channel (-p/--port)";

/// Bytes read from the file and written to the socket at a time.
const SEND_CHUNK: usize = 1 << 20;

/// Everything process A needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file to serve.
    pub file: PathBuf,
    /// Address to listen on.
    pub host: String,
    /// TCP port (0: any free port).
    pub port: u16,
    /// ZeroMQ port; `None` means PORT + 1 (or any free port when PORT is 0).
    pub zmq_port: Option<u16>,
    /// `--remotehost`: connect the return channel to the client instead of listening.
    pub remotehost: Option<String>,
    /// Where the returned copy is saved.
    pub output: PathBuf,
    /// Where the returned vertex CSV is saved.
    pub csv_output: PathBuf,
    /// Exit after the first round trip.
    pub once: bool,
    /// Clients served at once; more are told the server is busy.
    pub max_clients: usize,
    /// How long any wait on a peer may make no progress.
    pub timeout: Duration,
    /// Cap on the data channel's sending rate, bytes per second.
    pub rate_limit: Option<u64>,
}

/// What a finished round trip proved.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// The client's address.
    pub peer: SocketAddr,
    /// Digest of what was sent (and, verified equal, of what came back).
    pub digest: Digest,
    /// Time of the data leg.
    pub data_time: Duration,
    /// Time of the return leg.
    pub return_time: Duration,
    /// Where the returned copy was saved.
    pub output: PathBuf,
    /// What became of the vertex CSV.
    pub csv: CsvResult,
}

/// The vertex CSV's fate in one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvResult {
    /// Received, verified against the client's digests, and saved here.
    Saved(PathBuf, Digest),
    /// None was due: the file is not STL, or the client has CSVs turned off.
    NotMade(String),
    /// The file is STL but the client could not convert it, or the CSV did not arrive intact.
    Failed(String),
}

/// A bound server, ready to run.
pub struct Server {
    cfg: Arc<ServerConfig>,
    listener: TcpListener,
    hub: Hub,
    _ctx: zmq::Context,
}

impl Server {
    /// Checks the input file and binds both channels; nothing is accepted until [`Server::run`].
    pub fn bind(cfg: ServerConfig) -> Result<Server> {
        check_input(&cfg.file)?;
        // Find out now, not after the first transfer, that a returned copy could not be saved.
        for (out, flag) in [(&cfg.output, "--output"), (&cfg.csv_output, "--csv-output")] {
            if same_file(&cfg.file, out) {
                return Err(Error::Usage(format!(
                    "{flag} {} is the file being served; choose another path so it is not overwritten",
                    out.display()
                )));
            }
            StagedFile::create(out).map(drop).map_err(|source| Error::Output { path: out.clone(), source })?;
        }
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind(&addr).map_err(|source| Error::Bind {
            addr: addr.clone(),
            channel: DATA_CHANNEL,
            source,
        })?;
        let tcp_port =
            listener.local_addr().map_err(|source| Error::Bind { addr, channel: DATA_CHANNEL, source })?.port();
        let ctx = zmq::Context::new();
        let wiring = match &cfg.remotehost {
            Some(host) => HubWiring::Remote(host.clone()),
            None => {
                let port = match (cfg.zmq_port, cfg.port) {
                    (Some(0), _) | (None, 0) => "*".to_owned(),
                    (Some(p), _) => p.to_string(),
                    (None, _) => tcp_port.checked_add(1).map(|p| p.to_string()).ok_or_else(|| {
                        Error::Usage("-p 65535 leaves no room for the default --zmq-port (PORT + 1)".into())
                    })?,
                };
                HubWiring::Bind(endpoint(&cfg.host, &port))
            }
        };
        let hub = Hub::start(&ctx, wiring)?;
        Ok(Server { cfg: Arc::new(cfg), listener, hub, _ctx: ctx })
    }

    /// The bound data-channel address.
    pub fn tcp_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The line printed when A accepts: `ready tcp=HOST:PORT zmq=HOST:PORT` (or `zmq=connect:HOST`).
    pub fn ready_line(&self) -> String {
        let tcp = self.tcp_addr().map(|a| a.to_string()).unwrap_or_default();
        let zmq = match (self.hub.local_port(), &self.cfg.remotehost) {
            (Some(p), _) => format!("{}:{p}", bracket(&self.cfg.host)),
            (None, Some(h)) => format!("connect:{h}"),
            (None, None) => String::new(),
        };
        format!("ready tcp={tcp} zmq={zmq}")
    }

    /// Serves until `shutdown` is set, or, with `once`, until the first round trip ends.
    pub fn run(self, shutdown: &Shutdown) -> Result<()> {
        let Server { cfg, listener, hub, _ctx } = self;
        listener.set_nonblocking(true).map_err(|source| Error::Bind {
            addr: cfg.host.clone(),
            channel: DATA_CHANNEL,
            source,
        })?;
        info!(
            file = %cfg.file.display(), tcp = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            topology = %hub.topology(), "serving"
        );
        let hub = Arc::new(hub);
        let active = Arc::new(AtomicUsize::new(0));
        let mut workers: Vec<Worker> = Vec::new();
        let result = loop {
            if cfg.once {
                // The first round trip with a real client decides; connections that never
                // greeted (port probes, garbage) are dropped and the wait goes on.
                if let Some(i) = workers.iter().position(|w| w.handle.is_finished() && w.greeted.load(Ordering::SeqCst))
                {
                    break once_outcome(workers.swap_remove(i).handle);
                }
                if workers.iter().any(|w| w.handle.is_finished()) {
                    info!("a connection that was not a machinaftp client ended; --once still waits for its round trip");
                }
            }
            workers.retain(|w| !w.handle.is_finished());
            if shutdown.is_set() {
                info!("stop requested; finishing");
                // A --once server that was stopped did not make its round trip.
                break if cfg.once { Err(Error::Interrupted) } else { Ok(()) };
            }
            let (stream, peer) = match listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(&listener, TICK);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine, so wait
                    // a tick and keep serving rather than dying.
                    error!("accept failed: {e}");
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            info!(%peer, "accepted connection");
            if cfg.once && workers.iter().any(|w| w.greeted.load(Ordering::SeqCst)) {
                warn!(%peer, "busy with the one round trip of --once; refusing");
                refuse_busy(stream, "this server makes one round trip (--once) and is busy with it".into());
                continue;
            }
            if active.load(Ordering::SeqCst) >= cfg.max_clients {
                warn!(%peer, limit = cfg.max_clients, "too many clients; refusing");
                let n = cfg.max_clients;
                refuse_busy(stream, format!("already serving {n} client{}", if n == 1 { "" } else { "s" }));
                continue;
            }
            let slot = ActiveSlot::take(&active);
            let greeted = Arc::new(AtomicBool::new(false));
            let (cfg2, hub, shutdown, greeted2) =
                (Arc::clone(&cfg), Arc::clone(&hub), shutdown.clone(), Arc::clone(&greeted));
            let spawned = std::thread::Builder::new().name(format!("client-{peer}")).spawn(move || {
                // Held for the whole session, and released even if the session panics.
                let _slot = slot;
                run_session(stream, peer, &cfg2, &hub, &shutdown, &greeted2)
            });
            match spawned {
                Ok(handle) => workers.push(Worker { handle, greeted }),
                Err(e) => error!(%peer, "cannot start a worker thread: {e}"),
            }
        };
        for w in workers {
            let _ = w.handle.join();
        }
        if let Ok(hub) = Arc::try_unwrap(hub) {
            hub.stop();
        }
        result
    }
}

/// A session's thread, and whether its peer has shown itself a machinaftp client (a valid Hello).
struct Worker {
    handle: JoinHandle<Result<SessionReport>>,
    greeted: Arc<AtomicBool>,
}

/// A place among the `--max-clients`; given back when dropped, also when a session panics.
struct ActiveSlot(Arc<AtomicUsize>);

impl ActiveSlot {
    fn take(active: &Arc<AtomicUsize>) -> ActiveSlot {
        active.fetch_add(1, Ordering::SeqCst);
        ActiveSlot(Arc::clone(active))
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The exit outcome of a `--once` server from its one session.
fn once_outcome(done: JoinHandle<Result<SessionReport>>) -> Result<()> {
    match done.join() {
        Ok(Ok(SessionReport { csv: CsvResult::Failed(why), .. })) => Err(Error::Csv(why)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Protocol { stage: "serving the client".into(), detail: "the session crashed".into() }),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// Whether `out` names the existing file `served` (it need not exist itself).
fn same_file(served: &Path, out: &Path) -> bool {
    let Ok(served) = std::fs::canonicalize(served) else { return false };
    let out = match std::fs::canonicalize(out) {
        Ok(p) => p,
        Err(_) => match (std::fs::canonicalize(crate::files::parent_dir(out)), out.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => return false,
        },
    };
    served == out
}

/// Fails early, with the path, if the file cannot be served: the Python version hung instead.
fn check_input(path: &Path) -> Result<()> {
    let input = |source| Error::Input { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(input)?;
    if !meta.is_file() {
        return Err(input(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    File::open(path).map_err(input)?;
    Ok(())
}

fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fds = [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call, and the fd
    // belongs to `listener`, which outlives it.
    unsafe {
        libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as libc::c_int);
    }
}

fn refuse_busy(stream: TcpStream, why: String) {
    // Tell the client why instead of letting it wait; the kernel's socket buffer takes this
    // small frame at once, so the accept loop is not held up.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let msg = DataMsg::Error { code: ErrorCode::Busy, reason: format!("server busy: {why}; try again shortly") };
    let _ = (&stream).write_all(&msg.to_bytes());
}

/// Runs one client's whole session inside a span and logs the outcome.
fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: &ServerConfig,
    hub: &Hub,
    shutdown: &Shutdown,
    greeted: &AtomicBool,
) -> Result<SessionReport> {
    let span = info_span!("client", %peer);
    let _enter = span.enter();
    let res = Session::start(stream, peer, cfg, shutdown).and_then(|mut s| s.run(hub, greeted));
    match &res {
        Ok(r) => {
            info!(digest = %r.digest, output = %r.output.display(), "round trip verified");
            let csv = match &r.csv {
                CsvResult::Saved(path, d) => {
                    format!("CSV verified, saved {} ({})", path.display(), units::bytes(d.size))
                }
                CsvResult::NotMade(why) => format!("no CSV ({why})"),
                CsvResult::Failed(why) => format!("CSV FAILED: {why}"),
            };
            println!(
                "verified {peer}: {} ({}) sent and returned identical, CRC-32 {}, BLAKE3 {}…; data {} ({}), return {} ({}); saved {}; {csv}",
                cfg.file.display(),
                units::bytes(r.digest.size),
                r.digest.crc32,
                &r.digest.blake3_hex()[..16],
                units::duration(r.data_time),
                units::rate(r.digest.size, r.data_time),
                units::duration(r.return_time),
                units::rate(r.digest.size, r.return_time),
                r.output.display()
            );
        }
        Err(e) => {
            error!("session failed: {e}");
            println!("FAILED: {e}");
        }
    }
    res
}

struct Session<'a> {
    conn: Conn,
    peer: SocketAddr,
    cfg: &'a ServerConfig,
    shutdown: &'a Shutdown,
    /// The Header is out: B may be reading raw file bytes, so a frame on TCP would be taken for
    /// file data; failures are explained on the return channel instead.
    mid_file: bool,
}

impl<'a> Session<'a> {
    fn start(stream: TcpStream, peer: SocketAddr, cfg: &'a ServerConfig, shutdown: &'a Shutdown) -> Result<Self> {
        let conn = Conn::new(stream, cfg.timeout, shutdown.clone())
            .map_err(|e| Error::transport(format!("setting up the connection from {peer}"), e.into()))?;
        Ok(Session { conn, peer, cfg, shutdown, mid_file: false })
    }

    fn run(&mut self, hub: &Hub, greeted: &AtomicBool) -> Result<SessionReport> {
        let res = self.data_leg(hub, greeted);
        let (sent, data_time, link) = match res {
            Ok(v) => v,
            Err(e) => {
                self.tell_peer(&e);
                return Err(e);
            }
        };
        self.conn.finish();
        let started = Instant::now();
        // While the file comes back, derive the CSV B should return from our own original, so
        // the CSV is checked against what A knows, not only against what B claims. Detached: if
        // the session ends early, the result is simply not collected.
        let (expected_tx, expected) = std::sync::mpsc::channel();
        let (file, span) = (self.cfg.file.clone(), tracing::Span::current());
        let _ = std::thread::Builder::new()
            .name("csv-check".into())
            .spawn(move || drop(expected_tx.send(span.in_scope(|| expected_csv(&file)))));
        let return_time = match self.return_leg(&link, &sent) {
            Ok(_) => started.elapsed(),
            Err(e) => return Err(abort(&link, e)),
        };
        println!("Done! - RX");
        let csv = self.csv_leg(&link, &sent, &expected).map_err(|e| abort(&link, e))?;
        // B says Bye when it has nothing more to send; waiting for it is a courtesy, not a check.
        let _ = link.recv(Duration::from_secs(2).min(self.cfg.timeout), self.shutdown);
        Ok(SessionReport {
            peer: self.peer,
            digest: sent,
            data_time,
            return_time,
            output: self.cfg.output.clone(),
            csv,
        })
    }

    /// Best effort: tell the client why the session ends, without waiting long on a bad peer.
    fn tell_peer(&mut self, e: &Error) {
        if e.peer_knows() || self.mid_file {
            return;
        }
        self.conn.send_final(&DataMsg::Error { code: e.wire_code(), reason: reason_for_peer(e) });
    }

    fn recv(&mut self, stage: &str) -> Result<DataMsg> {
        match self.conn.recv() {
            Ok(DataMsg::Error { reason, .. }) => Err(Error::Refused { stage: self.stage(stage), reason }),
            Ok(m) => Ok(m),
            Err(e) => Err(Error::transport(self.stage(stage), e)),
        }
    }

    fn send(&mut self, msg: &DataMsg, stage: &str) -> Result<()> {
        self.conn.send(msg).map_err(|e| Error::transport(self.stage(stage), e))
    }

    fn stage(&self, what: &str) -> String {
        format!("{what} (client {})", self.peer)
    }

    fn unexpected(&self, stage: &str, got: &DataMsg) -> Error {
        Error::Protocol { stage: self.stage(stage), detail: format!("got {}", got.kind()) }
    }

    fn data_leg(&mut self, hub: &Hub, greeted: &AtomicBool) -> Result<(Digest, Duration, SessionLink)> {
        let (token, return_port) = match self.recv("waiting for the client's Hello")? {
            DataMsg::Hello { version, token, return_port } if version == VERSION => (token, return_port),
            DataMsg::Hello { version, .. } => {
                let reason = format!("client speaks protocol version {version}; this server speaks {VERSION}");
                self.conn.send_final(&DataMsg::Error { code: ErrorCode::Version, reason: reason.clone() });
                return Err(Error::Refused { stage: self.stage("handshake"), reason });
            }
            other => return Err(self.unexpected("waiting for the client's Hello", &other)),
        };
        debug!(session = %hex(&token[..4]), return_port, "client hello");
        greeted.store(true, Ordering::SeqCst);
        if self.cfg.remotehost.is_some() && return_port == 0 {
            return Err(Error::ReturnSetup(format!(
                "this server runs with --remotehost and must connect to the client's return port, \
                 but client {} bound none",
                self.peer
            )));
        }
        let link = hub.register(token, return_port)?;
        // B may be past the data channel (reading raw bytes, or already on the return leg), where
        // it would never read a frame on TCP: failures are told on the return channel too.
        match self.offer_file(hub, &link) {
            Ok((sent, data_time)) => Ok((sent, data_time, link)),
            Err(e) => Err(abort(&link, e)),
        }
    }

    /// The data leg once the session is registered: Welcome, the file, its trailer and B's verdict.
    fn offer_file(&mut self, hub: &Hub, link: &SessionLink) -> Result<(Digest, Duration)> {
        self.send(&DataMsg::Welcome { version: VERSION, topology: hub.topology() }, "sending Welcome")?;
        match self.recv("waiting for the client to open the return channel")? {
            DataMsg::Ready => {}
            other => return Err(self.unexpected("waiting for Ready", &other)),
        }
        // B got its HelloAck from the hub, so the hub has already queued B's Hello for us.
        let hello = link
            .recv(self.cfg.timeout, self.shutdown)
            .map_err(|e| Error::transport(self.stage("return channel handshake"), e))?;
        if !matches!(ReturnMsg::decode(&hello), Ok(ReturnMsg::Hello { .. })) {
            return Err(Error::Protocol { stage: self.stage("return channel handshake"), detail: "no Hello".into() });
        }
        info!("return channel up");

        let mut file =
            File::open(&self.cfg.file).map_err(|source| Error::Input { path: self.cfg.file.clone(), source })?;
        let size = file.metadata().map_err(|source| Error::Input { path: self.cfg.file.clone(), source })?.len();
        let name = self.cfg.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.send(&DataMsg::Header { size, name: name.clone() }, "sending the header")?;
        // From here B may already be reading raw bytes (it reads them right after its Accept),
        // so nothing more may be framed on TCP to explain a failure.
        self.mid_file = true;
        match self.recv("waiting for the client to accept the file")? {
            DataMsg::Accept => {}
            DataMsg::Refuse { reason } => {
                return Err(Error::Refused { stage: self.stage("offering the file"), reason });
            }
            other => return Err(self.unexpected("waiting for Accept", &other)),
        }
        info!(name = %name, size, "sending file");
        let started = Instant::now();
        let sent = match self.send_bytes(&mut file, size) {
            // A client that stops mid-file cannot frame its reason into the stream it is
            // reading; it sends it on the return channel.
            Err(Error::Transport { stage, source: TransportError::Closed }) => {
                return Err(match link.recv(Duration::from_millis(500), self.shutdown) {
                    Ok(frame) => match ReturnMsg::decode(&frame) {
                        Ok(ReturnMsg::Abort { reason }) => Error::Refused { stage, reason },
                        _ => Error::Transport { stage, source: TransportError::Closed },
                    },
                    Err(_) => Error::Transport { stage, source: TransportError::Closed },
                });
            }
            other => other?,
        };
        let data_time = started.elapsed();
        self.send(&DataMsg::Trailer { crc32: sent.crc32, blake3: sent.blake3 }, "sending the trailer")?;
        info!(
            bytes = size, crc32 = sent.crc32, blake3 = %sent.blake3_hex(), duration = %units::duration(data_time),
            rate = %units::rate(size, data_time), "data leg sent"
        );
        match self.recv("waiting for the client's verdict")? {
            DataMsg::Verdict { ok: true, .. } => {}
            DataMsg::Verdict { ok: false, reason } => {
                return Err(Error::Mismatch { leg: Leg::Data, detail: reason });
            }
            other => return Err(self.unexpected("waiting for the verdict", &other)),
        }
        info!("client verified the data leg");
        println!("Done! - TX");
        Ok((sent, data_time))
    }

    /// Streams `size` bytes of `file`, hashing as it goes, honouring the rate limit.
    fn send_bytes(&mut self, file: &mut File, size: u64) -> Result<Digest> {
        let chunk = match self.cfg.rate_limit {
            // Small chunks keep a throttled stream smooth instead of bursty.
            Some(rate) => (rate / 20).clamp(1024, SEND_CHUNK as u64) as usize,
            None => SEND_CHUNK,
        };
        let mut buf = vec![0u8; chunk];
        let mut hasher = Hasher::new();
        let started = Instant::now();
        while hasher.size() < size {
            let want = (size - hasher.size()).min(buf.len() as u64) as usize;
            let n = read_full(file, &mut buf[..want])
                .map_err(|source| Error::Input { path: self.cfg.file.clone(), source })?;
            if n == 0 {
                return Err(Error::Input {
                    path: self.cfg.file.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file shrank while being sent ({} of {size} bytes read)", hasher.size()),
                    ),
                });
            }
            hasher.update(&buf[..n]);
            let sent_so_far = hasher.size();
            self.conn.write_all(&buf[..n]).map_err(|e| {
                Error::transport(
                    self.stage(&format!("sending the file ({} of {size} bytes)", sent_so_far - n as u64)),
                    e,
                )
            })?;
            if self.shutdown.is_set() {
                return Err(Error::Interrupted);
            }
            if let Some(rate) = self.cfg.rate_limit {
                self.throttle(started, hasher.size(), rate)?;
            }
        }
        Ok(hasher.finish())
    }

    fn throttle(&self, started: Instant, sent: u64, rate: u64) -> Result<()> {
        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        while started.elapsed() < due {
            if self.shutdown.is_set() {
                return Err(Error::Interrupted);
            }
            std::thread::sleep((due - started.elapsed()).min(TICK));
        }
        Ok(())
    }

    fn decode<'m>(&self, stage: &str, frame: &'m zmq::Message) -> Result<ReturnMsg<'m>> {
        ReturnMsg::decode(frame).map_err(|e| Error::transport(stage, TransportError::Decode(e)))
    }

    /// The next frame from the client, skipping keep-alives (which reset the idle timeout).
    fn next_frame(&self, link: &SessionLink, stage: &str, what: &str) -> Result<zmq::Message> {
        loop {
            let frame = link
                .recv(self.cfg.timeout, self.shutdown)
                .map_err(|e| Error::transport(format!("{stage}: {what}"), e))?;
            if !is_keepalive(&frame) {
                return Ok(frame);
            }
        }
    }

    /// Waits for A's own CSV digest, telling the client we are still at it.
    fn wait_expected(
        &self,
        link: &SessionLink,
        rx: &std::sync::mpsc::Receiver<ExpectedCsv>,
        stage: &str,
    ) -> Result<ExpectedCsv> {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            match rx.recv_timeout(keepalive_every(self.cfg.timeout)) {
                Ok(e) => return Ok(e),
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(ExpectedCsv::Unknown("the server's own conversion stopped".into()));
                }
                Err(RecvTimeoutError::Timeout) if self.shutdown.is_set() => return Err(Error::Interrupted),
                Err(RecvTimeoutError::Timeout) => {
                    link.send(&ReturnMsg::KeepAlive).map_err(|e| Error::transport(stage, e))?;
                }
            }
        }
    }

    /// The file comes back: it must match what was sent, byte for byte (by size and digests).
    fn return_leg(&mut self, link: &SessionLink, sent: &Digest) -> Result<Digest> {
        let stage = self.stage("return leg (file)");
        let offer = self.next_frame(link, &stage, "waiting for the client's Offer")?;
        let size = match self.decode(&stage, &offer)? {
            ReturnMsg::Offer { stream: Stream::File, size } => size,
            ReturnMsg::Abort { reason } => return Err(Error::Refused { stage, reason }),
            other => {
                return Err(Error::Protocol { stage, detail: format!("expected Offer, got {}", other.kind()) });
            }
        };
        if size != sent.size {
            let detail = format!("the client offers {size} bytes back but {} were sent", sent.size);
            let _ = link.send(&ReturnMsg::Result { stream: Stream::File, ok: false, reason: detail.clone() });
            return Err(Error::Mismatch { leg: Leg::Return, detail });
        }
        let (got, claimed, staged) = self.receive_stream(link, Stream::File, size, &self.cfg.output, &stage)?;
        info!(bytes = size, crc32 = got.crc32, blake3 = %got.blake3_hex(), "return leg received");
        if let Some(diff) = got.mismatch(sent) {
            let detail = format!("returned copy differs from what was sent: {diff}");
            let _ = link.send(&ReturnMsg::Result { stream: Stream::File, ok: false, reason: detail.clone() });
            return Err(Error::Mismatch { leg: Leg::Return, detail });
        }
        if let Some(diff) = claimed.mismatch(sent) {
            // The bytes are right but B's own record of them is not: B is buggy; say so.
            warn!("client's End digests disagree with what was sent: {diff}");
        }
        self.commit(link, Stream::File, staged, &stage)?;
        info!(output = %self.cfg.output.display(), "returned copy verified identical and saved");
        Ok(got)
    }

    /// The vertex CSV comes back (or word of why it does not): it must arrive as B wrote it.
    fn csv_leg(
        &mut self,
        link: &SessionLink,
        sent: &Digest,
        expected: &std::sync::mpsc::Receiver<ExpectedCsv>,
    ) -> Result<CsvResult> {
        let stage = self.stage("return leg (CSV)");
        let offer = self.next_frame(link, &stage, "waiting for the CSV")?;
        let size = match self.decode(&stage, &offer)? {
            ReturnMsg::Offer { stream: Stream::Csv, size } => size,
            ReturnMsg::Skip { stream: Stream::Csv, failed: false, reason } => {
                info!("no CSV: {reason}");
                return Ok(CsvResult::NotMade(reason));
            }
            ReturnMsg::Skip { stream: Stream::Csv, failed: true, reason } => {
                warn!("the client could not make the CSV: {reason}");
                return Ok(CsvResult::Failed(format!("the client could not make it: {reason}")));
            }
            ReturnMsg::Bye => return Ok(CsvResult::NotMade("the client sent none".into())),
            ReturnMsg::Abort { reason } => return Err(Error::Refused { stage, reason }),
            other => {
                let detail = format!("expected a CSV Offer, got {}", other.kind());
                return Err(Error::Protocol { stage, detail });
            }
        };
        // A CSV line is at most 138 bytes (three of f32::MAX's 45 characters, two commas, a
        // newline), and every vertex takes at least 13 bytes of STL (`vertex 0 0 0` and a
        // separator; 16.7 in binary), so a CSV is under 11 times its STL: refuse bigger offers
        // before a byte is written.
        let limit = sent.size.saturating_mul(11).saturating_add(64);
        if size > limit {
            let detail = format!("a CSV of {size} bytes cannot come from a file of {} bytes", sent.size);
            let _ = link.send(&ReturnMsg::Result { stream: Stream::Csv, ok: false, reason: detail.clone() });
            return Ok(CsvResult::Failed(detail));
        }
        let (got, claimed, staged) = self.receive_stream(link, Stream::Csv, size, &self.cfg.csv_output, &stage)?;
        let expected = self.wait_expected(link, expected, &stage)?;
        let problem = match (&expected, got.mismatch(&claimed)) {
            (_, Some(diff)) => Some(format!("the CSV was damaged in transit: {diff}")),
            (ExpectedCsv::Digest(own), None) => got
                .mismatch(own)
                .map(|diff| format!("the CSV differs from the server's own conversion of the original: {diff}")),
            (ExpectedCsv::NotStl, None) => Some("the client sent a CSV for a file that is not STL".into()),
            (ExpectedCsv::Unknown(why), None) => Some(format!("the server cannot check the CSV: {why}")),
        };
        if let Some(detail) = problem {
            let _ = link.send(&ReturnMsg::Result { stream: Stream::Csv, ok: false, reason: detail.clone() });
            return Ok(CsvResult::Failed(detail));
        }
        self.commit(link, Stream::Csv, staged, &stage)?;
        info!(csv = %self.cfg.csv_output.display(), bytes = size, crc32 = got.crc32, "CSV verified and saved");
        Ok(CsvResult::Saved(self.cfg.csv_output.clone(), got))
    }

    /// Renames a verified file into place and tells the client; a failure to save is reported
    /// to the client as a negative verdict.
    fn commit(&self, link: &SessionLink, stream: Stream, mut staged: StagedFile, stage: &str) -> Result<()> {
        let dest = staged.dest().to_path_buf();
        let saved = staged.file().flush().and_then(|()| staged.commit().map(drop));
        if let Err(source) = saved {
            let reason = format!("the server cannot save {}: {source}", dest.display());
            let _ = link.send(&ReturnMsg::Result { stream, ok: false, reason });
            return Err(Error::Output { path: dest, source });
        }
        link.send(&ReturnMsg::Result { stream, ok: true, reason: String::new() })
            .map_err(|e| Error::transport(stage, e))
    }

    /// Receives `size` bytes of `stream` under credit into a temporary file beside `dest`, and
    /// returns the digest of what arrived, the digest the client claims, and the uncommitted file.
    fn receive_stream(
        &self,
        link: &SessionLink,
        stream: Stream,
        size: u64,
        dest: &Path,
        stage: &str,
    ) -> Result<(Digest, Digest, StagedFile)> {
        let mut staged = StagedFile::create(dest).map_err(Error::output(dest))?;
        let temp = staged.temp_path().to_path_buf();
        let send = |msg: &ReturnMsg<'_>| link.send(msg).map_err(|e| Error::transport(stage, e));
        send(&ReturnMsg::Credit { stream, bytes: CREDIT_WINDOW })?;
        let mut hasher = Hasher::new();
        while hasher.size() < size {
            let frame = self.next_frame(link, stage, &format!("receiving ({} of {size} bytes)", hasher.size()))?;
            match self.decode(stage, &frame)? {
                ReturnMsg::Data { stream: s, offset, payload }
                    if s == stream
                        && offset == hasher.size()
                        && payload.len() as u64 <= size - offset
                        && !payload.is_empty() =>
                {
                    staged.file().write_all(payload).map_err(Error::output(&temp))?;
                    hasher.update(payload);
                    send(&ReturnMsg::Credit { stream, bytes: payload.len() as u64 })?;
                }
                ReturnMsg::Abort { reason } => {
                    return Err(Error::Refused { stage: stage.into(), reason });
                }
                ReturnMsg::Data { offset, payload, .. } => {
                    // Saturating: `offset` is the peer's number and may be anything.
                    let detail = format!(
                        "Data for bytes {offset}..{} when {} of {size} had arrived",
                        offset.saturating_add(payload.len() as u64),
                        hasher.size()
                    );
                    return Err(Error::Protocol { stage: stage.into(), detail });
                }
                other => {
                    let detail = format!("expected Data, got {}", other.kind());
                    return Err(Error::Protocol { stage: stage.into(), detail });
                }
            }
        }
        let end = self.next_frame(link, stage, "waiting for End")?;
        let claimed = match self.decode(stage, &end)? {
            ReturnMsg::End { stream: s, crc32, blake3 } if s == stream => Digest { size, crc32, blake3 },
            ReturnMsg::Abort { reason } => {
                return Err(Error::Refused { stage: stage.into(), reason });
            }
            other => {
                let detail = format!("expected End, got {}", other.kind());
                return Err(Error::Protocol { stage: stage.into(), detail });
            }
        };
        Ok((hasher.finish(), claimed, staged))
    }
}

/// Tells the client on the return channel why the session ends (unless it caused or knows it),
/// and hands the error back.
fn abort(link: &SessionLink, e: Error) -> Error {
    if !e.peer_knows() {
        let _ = link.send(&ReturnMsg::Abort { reason: reason_for_peer(&e) });
    }
    e
}

/// How a server-side failure is explained to the client.
fn reason_for_peer(e: &Error) -> String {
    match e {
        Error::Interrupted => "the server is shutting down; try again later".to_owned(),
        e => e.to_string(),
    }
}

/// What A expects of the returned CSV, derived from its own original.
#[derive(Debug)]
enum ExpectedCsv {
    /// The digest of the CSV of the original.
    Digest(Digest),
    /// The original is not STL: no CSV should come.
    NotStl,
    /// The original could not be converted (or read); a CSV cannot be checked.
    Unknown(String),
}

fn expected_csv(file: &Path) -> ExpectedCsv {
    let opts = CsvOptions { digest: true, ..CsvOptions::default() };
    match stl::convert_to(file, io::sink(), Path::new("(digest only)"), opts) {
        Ok((_, csv)) => csv.digest.map_or_else(|| ExpectedCsv::Unknown("no digest".into()), ExpectedCsv::Digest),
        Err(e) if e.is_not_stl() => ExpectedCsv::NotStl,
        Err(e @ stl::ConvertError::Open { .. }) => ExpectedCsv::Unknown(e.to_string()),
        Err(e) => ExpectedCsv::Unknown(format!("the original is not valid STL: {e}")),
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
