//! Process A: serves one file to every client over the data channel, takes it back over the
//! return channel, and proves the returned copy identical to what it sent.
//!
//! One accept loop, one thread per client (bounded by `max_clients`) running
//! `session::serve`, one hub thread owning the ZeroMQ ROUTER, and a `cache::SourceCache` of
//! the served file's digests. The accept loop waits on the listener, the stop signal and the
//! sessions' ends at once, so it reacts to each at once; every session is joined before `run`
//! returns.

mod admission;
mod cache;
mod session;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::files::check_destination;
use crate::report::{Reporter, ServerSessionReport};
use crate::session::{CsvResult, Failure};
use crate::shutdown::Shutdown;
use crate::transport::hub::{Hub, HubWiring};
use crate::transport::poll::{Watch, wait};
use crate::transport::ret::{endpoint, zmq_host};
use crate::transport::wake::{WakeHandle, Waker};

use admission::{Admission, Identified};
use cache::SourceCache;

/// How bind errors name the data channel.
const DATA_CHANNEL: &str = "data channel (-p/--port)";

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
    /// Clients served at once; more wait in line.
    pub max_clients: usize,
    /// Clients that may wait in line; more are told the server is busy.
    pub queue: usize,
    /// How long any wait on a peer may make no progress.
    pub timeout: Duration,
    /// Cap on the data channel's sending rate, bytes per second.
    pub rate_limit: Option<u64>,
    /// The shared secret clients must prove (version 5); `None`: anyone may fetch the file.
    pub secret: Option<crate::secure::Secret>,
}

/// What every session shares.
struct Shared {
    cfg: ServerConfig,
    hub: Hub,
    cache: Arc<SourceCache>,
    /// The sessions' stop: set when the process is asked to stop, or a `--once` server is done.
    stop: Shutdown,
    reporter: Arc<dyn Reporter>,
    /// Clients that did not prove the secret: anyone who reaches the port can be one, so they
    /// are counted and summarised, never a line (or a result) each.
    refusals: std::sync::Mutex<crate::logging::Tally>,
}

/// How often refused clients are summarised in the log.
const REFUSALS_SUMMARY: std::time::Duration = std::time::Duration::from_secs(60);

/// A bound server, ready to run.
pub struct Server {
    cfg: ServerConfig,
    listener: TcpListener,
    /// The data channel's bound address (`-H` resolved, the port picked).
    addr: SocketAddr,
    hub: Hub,
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
            check_destination(out).map_err(Error::output(out))?;
        }
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind(&addr).map_err(|source| Error::Bind {
            addr: addr.clone(),
            channel: DATA_CHANNEL,
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind { addr, channel: DATA_CHANNEL, source })?;
        let tcp_port = bound.port();
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
                // The address the data channel bound, not -H as given: ZeroMQ takes a name
                // (`localhost`) for a network interface's, not a host's.
                HubWiring::Bind(endpoint(&zmq_host(bound), &port))
            }
        };
        let hub = Hub::start(wiring).map_err(Error::Hub)?;
        Ok(Server { cfg, listener, addr: bound, hub })
    }

    /// The bound data-channel address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where A listens, as its `ready` line shows it: the data channel's `HOST:PORT`, and the
    /// return channel's bound `HOST:PORT` or, under `--remotehost`, `connect:HOST:PORT` with the
    /// port a client binds by default (its own `-p` + 1, or this side's `--zmq-port`); a client
    /// that binds another port announces it, and A connects there.
    pub fn ready_addrs(&self) -> (String, String) {
        let tcp = self.addr;
        let zmq = match (self.hub.local_port(), &self.cfg.remotehost) {
            (Some(p), _) => format!("{}:{p}", bracket(&tcp.ip().to_string())),
            (None, Some(h)) => {
                let port = self.cfg.zmq_port.or_else(|| tcp.port().checked_add(1));
                format!("connect:{}{}", bracket(h), port.map(|p| format!(":{p}")).unwrap_or_default())
            }
            (None, None) => String::new(),
        };
        (tcp.to_string(), zmq)
    }

    /// Serves until `shutdown` is set, or, with `once`, until the first round trip ends (whose
    /// outcome is then the result). Every session's end goes to `reporter`.
    pub fn run(self, shutdown: &Shutdown, reporter: Arc<dyn Reporter>) -> Result<()> {
        let Server { cfg, listener, addr, hub } = self;
        let bind_err = |source| Error::Bind { addr: cfg.host.clone(), channel: DATA_CHANNEL, source };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let ended = Waker::new().map_err(bind_err)?;
        info!(
            file = %cfg.file.display(), tcp = %addr,
            topology = %hub.topology(), "serving"
        );
        // The address bound, not -H as given: a name may stand for loopback or not.
        if cfg.secret.is_none() && !is_loopback(addr.ip()) {
            warn!(
                "serving {} on {} without a secret: anyone who can reach this address can fetch the file, and the \
                 transfer is not encrypted (give --secret-file, or run `machinaftp keygen`)",
                cfg.file.display(),
                addr.ip()
            );
        }
        let refusals = crate::logging::Tally::new("clients refused for not proving the secret", REFUSALS_SUMMARY);
        let shared = Arc::new(Shared {
            cfg,
            hub,
            cache: Arc::new(SourceCache::default()),
            stop: Shutdown::new(),
            reporter,
            refusals: std::sync::Mutex::new(refusals),
        });
        let cfg = &shared.cfg;
        shared.cache.warm(&cfg.file);
        let active = Arc::new(AtomicUsize::new(0));
        let mut workers: Vec<Worker> = Vec::new();
        let mut admission = Admission::new(cfg.queue);
        let mut backoff = None;
        let result = loop {
            let running = workers.len();
            if let Some(outcome) = reap(&mut workers, cfg.once) {
                break outcome;
            }
            if running > 0 && workers.is_empty() && admission.waiting() == 0 {
                give_memory_back();
            }
            if shutdown.is_set() {
                info!("stop requested; finishing");
                // A --once server that was stopped did not make its round trip.
                break if cfg.once { Err(Error::Interrupted) } else { Ok(()) };
            }
            let now = Instant::now();
            if backoff.is_some_and(|t| now >= t) {
                backoff = None;
            }
            while backoff.is_none() {
                match listener.accept() {
                    Ok((stream, peer)) => admission.accepted(stream, peer, now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Out of file descriptors and the like: the listener itself is fine and stays
                    // readable, so wait a moment (the condition clears without an event) and retry.
                    Err(e) => {
                        error!("accept failed: {e}");
                        backoff = Some(now + Duration::from_millis(100));
                    }
                }
            }
            for client in admission.identify(now) {
                let peer = client.conn.peer();
                if cfg.once && !workers.is_empty() {
                    admission.refuse_once(client);
                } else if active.load(Ordering::SeqCst) >= cfg.max_clients || admission.waiting() > 0 {
                    let n = cfg.max_clients;
                    admission.wait_or_refuse(client, &format!("serving {n} client{}", plural(n)), now);
                } else if let Some(w) = spawn(client, &shared, &active, ended.handle()) {
                    info!(%peer, "accepted connection");
                    workers.push(w);
                }
            }
            // Slots that came free go to the line, in arrival order.
            while !cfg.once && active.load(Ordering::SeqCst) < cfg.max_clients {
                let Some(client) = admission.next_in_line() else { break };
                let peer = client.conn.peer();
                if let Some(w) = spawn(client, &shared, &active, ended.handle()) {
                    info!(%peer, "accepted connection, after waiting in line");
                    workers.push(w);
                }
            }
            admission.notify(now);
            admission.summarise(now);
            // While backing off, the listener (readable all along) is left out of the wait.
            let mut w = vec![
                Watch::fd(listener.as_raw_fd(), backoff.is_none(), false),
                Watch::fd(shutdown.fd(), true, false),
                Watch::fd(ended.fd(), true, false),
            ];
            w.extend(admission.watches());
            let deadline = [backoff, admission.deadline()].into_iter().flatten().min();
            let _ = wait(&mut w, deadline);
            if w[2].readable {
                ended.drain();
            }
        };
        admission.close_all();
        // Sessions still running (a stopping server's, or stray connections of a --once one)
        // end now and are joined; their last words reach their clients.
        shared.stop.trigger();
        for w in workers {
            let _ = w.handle.join();
        }
        shared.cache.shutdown();
        // What was counted since the last summary is said before the server goes.
        shared.refusals.lock().unwrap_or_else(|p| p.into_inner()).flush();
        if let Ok(shared) = Arc::try_unwrap(shared) {
            shared.hub.stop();
        }
        result
    }
}

/// A session's thread, whether its peer has shown itself a machinaftp client (a valid Hello),
/// and whether the session has ended (its thread is then about to finish).
struct Worker {
    handle: JoinHandle<ServerSessionReport>,
    greeted: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
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

/// Tells the accept loop, even from a panicking session, that a session ended.
struct EndNotice(Arc<AtomicBool>, WakeHandle);

impl Drop for EndNotice {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.wake();
    }
}

fn spawn(client: Identified, shared: &Arc<Shared>, active: &Arc<AtomicUsize>, ended: WakeHandle) -> Option<Worker> {
    let peer = client.conn.peer();
    let slot = ActiveSlot::take(active);
    let (greeted, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (shared, flag, notice) = (Arc::clone(shared), Arc::clone(&greeted), EndNotice(Arc::clone(&done), ended));
    let spawned = std::thread::Builder::new().name(format!("client-{peer}")).spawn(move || {
        // The notice goes last, after the slot is given back, also if the session panics.
        let _notice = notice;
        let _slot = slot;
        session::serve(client, peer, &shared, &flag)
    });
    match spawned {
        Ok(handle) => Some(Worker { handle, greeted, ended: done }),
        Err(e) => {
            error!(%peer, "cannot start a session thread: {e}");
            None
        }
    }
}

/// Joins the sessions that ended. With `once`, the first that ended after greeting decides the
/// server's outcome; connections that never greeted (port probes, garbage) do not use up its turn.
fn reap(workers: &mut Vec<Worker>, once: bool) -> Option<Result<()>> {
    let mut outcome = None;
    let mut i = 0;
    while i < workers.len() {
        // A session that ended is joined even if its thread is still returning.
        if !workers[i].ended.load(Ordering::SeqCst) && !workers[i].handle.is_finished() {
            i += 1;
            continue;
        }
        let w = workers.swap_remove(i);
        let greeted = w.greeted.load(Ordering::SeqCst);
        let report = w.handle.join();
        if once && outcome.is_none() {
            match report {
                Ok(r) if r.greeted => outcome = Some(once_outcome(r)),
                Ok(_) => {
                    info!("a connection that was not a machinaftp client ended; --once still waits for its round trip")
                }
                Err(_) if greeted => outcome = Some(Err(Error::Crashed { peer: "a client".into() })),
                Err(_) => {}
            }
        }
    }
    outcome
}

/// The exit outcome of a `--once` server from its one session.
fn once_outcome(report: ServerSessionReport) -> Result<()> {
    match report.result {
        Ok(o) => match o.csv {
            CsvResult::Failed(f) => {
                Err(Error::Session { peer: format!("client {}", report.peer), failure: Box::new(Failure::Csv(f)) })
            }
            _ => Ok(()),
        },
        Err(e) => Err(e),
    }
}

/// The last session ended: the memory its buffers used goes back to the system. The process keeps
/// freed frame buffers around while it serves (main.rs says why), and with many sessions at once
/// those sit in many threads' arenas; an idle server holds what it needs, not its busiest moment.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is safe at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether `host` names this machine's loopback only (not all interfaces, not a name we would
/// have to resolve).
/// Whether only this machine can reach `addr` (IPv4 loopback written as IPv6 included).
fn is_loopback(addr: std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
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
    session::open_source(path).map(drop).map_err(|source| Error::Input { path: path.to_path_buf(), source })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_addresses_count_as_loopback() {
        for host in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(host.parse().unwrap()), "{host}");
        }
        for host in ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(!is_loopback(host.parse().unwrap()), "{host}");
        }
    }
}
