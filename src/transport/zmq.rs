//! The return channel's sockets. B owns one DEALER ([`ReturnChannel`]); A owns one ROUTER in a
//! single hub thread ([`Hub`]) because ZeroMQ sockets are not thread-safe. Session workers talk to
//! the hub through a [`SessionLink`]: inbound frames arrive on a bounded channel, outbound frames go
//! over an inproc PUSH socket, which wakes the hub at once.
//!
//! Every socket gets small high-water marks, a finite linger and a maximum message size; the
//! ROUTER is `ROUTER_MANDATORY` so that sending to a vanished peer is an error, not a silent drop.

use std::collections::HashMap;
use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, TransportError};
use crate::protocol::data::Topology;
use crate::protocol::ret::{DATA_HEADER_LEN, MAX_CHUNK, MAX_CONTROL_LEN, ReturnMsg};
use crate::protocol::{PROTOCOL_VERSION, Token, hex};
use crate::shutdown::{Shutdown, TICK};

/// Bytes A lets B have in flight per stream: eight full chunks.
pub const CREDIT_WINDOW: u64 = 8 * MAX_CHUNK as u64;
/// Frames a session's inbound queue holds; a peer that honours its credit never fills it.
const INBOUND_QUEUE: usize = (CREDIT_WINDOW as usize / MAX_CHUNK) + 8;
/// ZeroMQ high-water mark for data-carrying pipes, in messages.
const DATA_HWM: i32 = 16;
/// How long closing sockets may spend delivering what is queued.
const LINGER_MS: i32 = 2000;

/// `tcp://host:port`, with IPv6 literals bracketed.
pub fn endpoint(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

fn port_of_endpoint(ep: &str) -> Option<u16> {
    ep.rsplit(':').next()?.parse().ok()
}

/// Whether `host` names an address of this machine: binding a UDP socket to it succeeds only then.
pub fn host_is_local(host: &str) -> bool {
    (host, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.into_iter().any(|a| UdpSocket::bind((a.ip(), 0)).is_ok()))
        .unwrap_or(false)
}

/// How B wires its end of the return channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZmqMode {
    /// Follow what the server announces: connect to its port, or bind ours when it runs with --remotehost.
    Auto,
    /// Always connect to the server's ZeroMQ port.
    Connect,
    /// Always bind our --zmq-port and let the server connect (it must run with --remotehost).
    Bind,
}

/// B's end of the return channel: one DEALER socket.
pub struct ReturnChannel {
    sock: zmq::Socket,
    idle: Duration,
    shutdown: Shutdown,
    bound: Option<String>,
    bind_error: Option<String>,
    connected: Option<String>,
}

impl ReturnChannel {
    /// Opens the DEALER before the data channel is connected: binds `zmq_port` on all interfaces
    /// and/or connects to `host:zmq_port`, as `mode` says. In `Auto` mode a failed bind is not an
    /// error (A may be on this machine holding the port), and the connect is skipped when the bind
    /// succeeded and `host` is this machine, because then A cannot be listening on that port.
    pub fn open(
        ctx: &zmq::Context,
        token: &Token,
        mode: ZmqMode,
        host: &str,
        zmq_port: u16,
        idle: Duration,
        shutdown: Shutdown,
    ) -> Result<ReturnChannel, Error> {
        let setup = |e: zmq::Error| Error::ReturnSetup(format!("cannot create the DEALER socket: {e}"));
        let sock = ctx.socket(zmq::DEALER).map_err(setup)?;
        let mut identity = Vec::with_capacity(17);
        identity.push(b'B'); // A routing id must not begin with a zero byte.
        identity.extend_from_slice(token);
        sock.set_identity(&identity).map_err(setup)?;
        sock.set_sndhwm(DATA_HWM).map_err(setup)?;
        sock.set_rcvhwm(DATA_HWM).map_err(setup)?;
        sock.set_linger(LINGER_MS).map_err(setup)?;
        // Only completed connections take messages, so nothing is queued for a peer that is not there.
        sock.set_immediate(true).map_err(setup)?;
        sock.set_maxmsgsize(MAX_CONTROL_LEN as i64).map_err(setup)?;
        sock.set_ipv6(true).map_err(setup)?;
        sock.set_reconnect_ivl(100).map_err(setup)?;
        sock.set_reconnect_ivl_max(1000).map_err(setup)?;
        let mut chan = ReturnChannel { sock, idle, shutdown, bound: None, bind_error: None, connected: None };
        if matches!(mode, ZmqMode::Auto | ZmqMode::Bind) {
            let port = if zmq_port == 0 { "*".to_owned() } else { zmq_port.to_string() };
            let ep = endpoint("*", &port);
            match chan.sock.bind(&ep) {
                Ok(()) => chan.bound = chan.sock.get_last_endpoint().ok().and_then(Result::ok),
                Err(e) if mode == ZmqMode::Bind => {
                    return Err(Error::ReturnSetup(format!("cannot bind {ep}: {e}")));
                }
                Err(e) => chan.bind_error = Some(format!("cannot bind {ep}: {e}")),
            }
        }
        let connect = match mode {
            ZmqMode::Connect => true,
            ZmqMode::Bind => false,
            ZmqMode::Auto => zmq_port != 0 && !(chan.bound.is_some() && host_is_local(host)),
        };
        if connect {
            chan.connect(&endpoint(host, &zmq_port.to_string()))?;
        }
        Ok(chan)
    }

    fn connect(&mut self, ep: &str) -> Result<(), Error> {
        self.sock.connect(ep).map_err(|e| Error::ReturnSetup(format!("cannot connect to {ep}: {e}")))?;
        self.connected = Some(ep.to_owned());
        Ok(())
    }

    /// The port our DEALER is bound to, if it is bound.
    pub fn bound_port(&self) -> Option<u16> {
        self.bound.as_deref().and_then(port_of_endpoint)
    }

    /// Keeps only the wiring A announced in its `Welcome`.
    pub fn use_topology(&mut self, topology: Topology, host: &str) -> Result<(), Error> {
        match topology {
            Topology::Listen { zmq_port } => {
                let want = endpoint(host, &zmq_port.to_string());
                if self.connected.as_deref() != Some(&want) {
                    if let Some(old) = self.connected.take() {
                        let _ = self.sock.disconnect(&old);
                    }
                    self.connect(&want)?;
                }
                if let Some(ep) = self.bound.take() {
                    let _ = self.sock.unbind(&ep);
                }
            }
            Topology::Remote => {
                if self.bound.is_none() {
                    let why = self.bind_error.as_deref().unwrap_or("it was told not to (--zmq-mode connect)");
                    return Err(Error::ReturnSetup(format!(
                        "the server runs with --remotehost and will connect to this machine's return port, \
                         but this client has no bound port: {why}"
                    )));
                }
                if let Some(old) = self.connected.take() {
                    let _ = self.sock.disconnect(&old);
                }
            }
        }
        Ok(())
    }

    /// A description of the wiring, for logs and errors.
    pub fn describe(&self) -> String {
        match (&self.connected, &self.bound) {
            (Some(c), Some(b)) => format!("connected to {c}, bound at {b}"),
            (Some(c), None) => format!("connected to {c}"),
            (None, Some(b)) => format!("bound at {b}"),
            (None, None) => "not wired".to_owned(),
        }
    }

    /// Sends one frame, waiting (in ticks, up to the idle timeout) until a peer can take it.
    pub fn send(&self, frame: zmq::Message) -> Result<(), TransportError> {
        self.wait(zmq::POLLOUT)?;
        self.sock.send(frame, zmq::DONTWAIT)?;
        Ok(())
    }

    /// Receives one frame, waiting up to the idle timeout.
    pub fn recv(&self) -> Result<zmq::Message, TransportError> {
        self.wait(zmq::POLLIN)?;
        Ok(self.sock.recv_msg(zmq::DONTWAIT)?)
    }

    /// A frame arriving within `d`, if any (for a last word after the data channel broke).
    pub fn recv_within(&self, d: Duration) -> Option<zmq::Message> {
        let mut items = [self.sock.as_poll_item(zmq::POLLIN)];
        match zmq::poll(&mut items, d.as_millis() as i64) {
            Ok(n) if n > 0 => self.sock.recv_msg(zmq::DONTWAIT).ok(),
            _ => None,
        }
    }

    /// Best effort: sends `frame` only if a peer can take it right now.
    pub fn send_now(&self, frame: &[u8]) {
        let _ = self.sock.send(frame, zmq::DONTWAIT);
    }

    /// A frame if one is waiting.
    pub fn try_recv(&self) -> Result<Option<zmq::Message>, TransportError> {
        match self.sock.recv_msg(zmq::DONTWAIT) {
            Ok(m) => Ok(Some(m)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn wait(&self, events: zmq::PollEvents) -> Result<(), TransportError> {
        let started = Instant::now();
        if self.shutdown.is_set() {
            return Err(TransportError::Interrupted);
        }
        loop {
            let mut items = [self.sock.as_poll_item(events)];
            match zmq::poll(&mut items, TICK.as_millis() as i64) {
                // A signal landed on this thread: look at the flag below, like any tick.
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if !(items[0].get_revents() & events).is_empty() {
                return Ok(());
            }
            if self.shutdown.is_set() {
                return Err(TransportError::Interrupted);
            }
            if started.elapsed() >= self.idle {
                return Err(TransportError::Timeout(self.idle));
            }
        }
    }
}

/// Where A's ROUTER is wired.
#[derive(Debug, Clone)]
pub enum HubWiring {
    /// Bind this endpoint; clients connect to it.
    Bind(String),
    /// Bind nothing; connect to each client's bound port on this host (`--remotehost`).
    Remote(String),
}

struct Route {
    /// `None` once the peer overran its queue: the worker sees a disconnected channel.
    tx: Option<SyncSender<zmq::Message>>,
    peer: Option<Vec<u8>>,
}

#[derive(Default)]
struct Registry {
    routes: HashMap<Token, Route>,
    peers: HashMap<Vec<u8>, Token>,
}

struct HubShared {
    registry: Mutex<Registry>,
    ctx: zmq::Context,
    inproc: String,
    stop: AtomicBool,
}

impl HubShared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A worker that panicked while holding the lock leaves a registry that is still
        // consistent (every update is a single insert or remove), so poisoning is ignored.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A's ROUTER, owned by one thread.
pub struct Hub {
    shared: Arc<HubShared>,
    thread: Option<JoinHandle<()>>,
    local_port: Option<u16>,
    remote_host: Option<String>,
}

static HUB_SEQ: AtomicU64 = AtomicU64::new(0);

impl Hub {
    /// Creates the ROUTER, binds it (unless remote), and starts the hub thread.
    pub fn start(ctx: &zmq::Context, wiring: HubWiring) -> Result<Hub, Error> {
        let setup = |what: &str, e: zmq::Error| Error::ReturnSetup(format!("{what}: {e}"));
        let router = ctx.socket(zmq::ROUTER).map_err(|e| setup("cannot create the ROUTER", e))?;
        let opts = || -> Result<(), zmq::Error> {
            router.set_router_mandatory(true)?;
            router.set_rcvhwm(DATA_HWM)?;
            router.set_sndhwm(1000)?; // outbound frames are small credits and verdicts
            router.set_linger(LINGER_MS)?;
            router.set_maxmsgsize((DATA_HEADER_LEN + MAX_CHUNK) as i64)?;
            router.set_ipv6(true)?;
            router.set_reconnect_ivl(100)?;
            router.set_reconnect_ivl_max(1000)?;
            Ok(())
        };
        opts().map_err(|e| setup("cannot configure the ROUTER", e))?;
        let (local_port, remote_host) = match &wiring {
            HubWiring::Bind(ep) => {
                router.bind(ep).map_err(|e| Error::Bind {
                    addr: ep.clone(),
                    channel: "return channel (--zmq-port)",
                    source: e.into(),
                })?;
                let last = router.get_last_endpoint().ok().and_then(Result::ok).unwrap_or_default();
                (port_of_endpoint(&last), None)
            }
            HubWiring::Remote(host) => (None, Some(host.clone())),
        };
        let inproc = format!("inproc://machinaftp-hub-{}", HUB_SEQ.fetch_add(1, Ordering::Relaxed));
        let pull = ctx.socket(zmq::PULL).map_err(|e| setup("cannot create the hub's PULL", e))?;
        pull.bind(&inproc).map_err(|e| setup("cannot bind the hub's PULL", e))?;
        let shared = Arc::new(HubShared {
            registry: Mutex::new(Registry::default()),
            ctx: ctx.clone(),
            inproc,
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("zmq-hub".into())
            .spawn(move || hub_loop(router, pull, &thread_shared))
            .map_err(|e| Error::ReturnSetup(format!("cannot start the hub thread: {e}")))?;
        Ok(Hub { shared, thread: Some(thread), local_port, remote_host })
    }

    /// The port the ROUTER is bound to (not in remote mode).
    pub fn local_port(&self) -> Option<u16> {
        self.local_port
    }

    /// What A announces in `Welcome`.
    pub fn topology(&self) -> Topology {
        match self.local_port {
            Some(zmq_port) => Topology::Listen { zmq_port },
            None => Topology::Remote,
        }
    }

    /// Registers a session by its token; frames from the peer that presents it reach the link.
    /// In remote mode, `return_port` is where the client's DEALER is bound and the hub connects there.
    pub fn register(&self, token: Token, return_port: u16) -> Result<SessionLink, Error> {
        let (tx, rx) = sync_channel(INBOUND_QUEUE);
        {
            let mut reg = self.shared.registry();
            if reg.routes.contains_key(&token) {
                return Err(Error::Protocol {
                    stage: "handshake".into(),
                    detail: format!("session token {} is already in use", hex(&token)),
                });
            }
            reg.routes.insert(token, Route { tx: Some(tx), peer: None });
        }
        let push = self
            .shared
            .ctx
            .socket(zmq::PUSH)
            .and_then(|s| {
                s.set_linger(LINGER_MS)?;
                // Bounded, so a worker cannot block forever should the hub be gone.
                s.set_sndtimeo(5000)?;
                s.connect(&self.shared.inproc)?;
                Ok(s)
            })
            .map_err(|e| Error::ReturnSetup(format!("cannot reach the hub: {e}")));
        let push = match push {
            Ok(p) => p,
            Err(e) => {
                unregister(&self.shared, &token);
                return Err(e);
            }
        };
        let mut link = SessionLink { token, rx, push, shared: Arc::clone(&self.shared), remote: None };
        if let Some(host) = &self.remote_host {
            let ep = endpoint(host, &return_port.to_string());
            link.command(&[b"connect", ep.as_bytes()])
                .map_err(|e| Error::ReturnSetup(format!("cannot connect to {ep}: {e}")))?;
            link.remote = Some(ep);
        }
        Ok(link)
    }

    /// Stops the hub thread after it has passed on what workers queued.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the hub now rather than at its next poll tick, so a `--once` server exits promptly.
        if let Ok(push) = self.shared.ctx.socket(zmq::PUSH) {
            let _ = push.set_linger(0);
            if push.connect(&self.shared.inproc).is_ok() {
                let _ = push.send(&b"wake"[..], zmq::DONTWAIT);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.halt();
    }
}

fn hub_loop(router: zmq::Socket, pull: zmq::Socket, shared: &HubShared) {
    let mut remote_refs: HashMap<String, usize> = HashMap::new();
    loop {
        let mut items = [router.as_poll_item(zmq::POLLIN), pull.as_poll_item(zmq::POLLIN)];
        match zmq::poll(&mut items, TICK.as_millis() as i64) {
            // Signals may land on any thread; the hub stops only when told to.
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => {
                tracing::error!("hub poll failed: {e}");
                return;
            }
        }
        // Drain what workers queued first, so credits and verdicts leave promptly.
        while let Ok(parts) = pull.recv_multipart(zmq::DONTWAIT) {
            hub_command(&router, shared, &mut remote_refs, &parts);
        }
        // A bounded batch per turn keeps one busy peer from starving the command queue.
        for _ in 0..64 {
            match recv_routed(&router) {
                Ok(Some((peer, frame))) => hub_inbound(&router, shared, peer, frame),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            // Workers have ended, but their last frames (an Abort telling a client why) may not
            // be visible to a non-blocking receive yet: poll until the queue stays quiet.
            loop {
                let mut items = [pull.as_poll_item(zmq::POLLIN)];
                match zmq::poll(&mut items, 20) {
                    Ok(n) if n > 0 => {
                        while let Ok(parts) = pull.recv_multipart(zmq::DONTWAIT) {
                            hub_command(&router, shared, &mut remote_refs, &parts);
                        }
                    }
                    Ok(_) => return,
                    Err(zmq::Error::EINTR) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

fn hub_command(router: &zmq::Socket, shared: &HubShared, remote_refs: &mut HashMap<String, usize>, parts: &[Vec<u8>]) {
    match parts {
        [cmd, token, frame] if cmd == b"send" => {
            let Ok(token) = Token::try_from(token.as_slice()) else {
                return;
            };
            let peer = shared.registry().routes.get(&token).and_then(|r| r.peer.clone());
            match peer {
                Some(peer) => {
                    // Never block the hub on one peer: a peer that does not read its credits
                    // will time out on its own.
                    if let Err(e) = router.send_multipart([peer.as_slice(), frame], zmq::DONTWAIT) {
                        tracing::warn!(session = %hex(&token[..4]), "cannot send to the client: {e}");
                    }
                }
                None => {
                    tracing::debug!(session = %hex(&token[..4]), "no return peer yet; frame dropped")
                }
            }
        }
        [cmd, ep] if cmd == b"connect" => {
            let ep = String::from_utf8_lossy(ep).into_owned();
            let n = remote_refs.entry(ep.clone()).or_insert(0);
            if *n == 0 {
                match router.connect(&ep) {
                    Ok(()) => tracing::debug!("return channel connecting to {ep}"),
                    Err(e) => tracing::warn!("cannot connect the return channel to {ep}: {e}"),
                }
            }
            *n += 1;
        }
        [cmd] if cmd == b"wake" => {}
        [cmd, token] if cmd == b"unregister" => {
            if let Ok(token) = Token::try_from(token.as_slice()) {
                unregister(shared, &token);
            }
        }
        [cmd, ep] if cmd == b"disconnect" => {
            let ep = String::from_utf8_lossy(ep).into_owned();
            if let Some(n) = remote_refs.get_mut(&ep) {
                *n -= 1;
                if *n == 0 {
                    remote_refs.remove(&ep);
                    let _ = router.disconnect(&ep);
                }
            }
        }
        _ => tracing::error!("hub: malformed internal command"),
    }
}

/// Receives one `[routing id, frame]` message without copying the frame (it is handed to the
/// session as the `zmq::Message` libzmq filled). `Ok(None)`: a message of another shape arrived
/// and was dropped, since a DEALER speaking this protocol sends exactly one frame.
fn recv_routed(router: &zmq::Socket) -> Result<Option<(Vec<u8>, zmq::Message)>, zmq::Error> {
    let peer = router.recv_msg(zmq::DONTWAIT)?;
    let mut parts = 1;
    let mut frame = None;
    while router.get_rcvmore()? {
        let m = router.recv_msg(0)?;
        parts += 1;
        frame = Some(m);
    }
    match frame {
        Some(frame) if parts == 2 => Ok(Some((peer.to_vec(), frame))),
        _ => {
            tracing::debug!(parts, "return channel: dropped a message with an unexpected frame count");
            Ok(None)
        }
    }
}

fn hub_inbound(router: &zmq::Socket, shared: &HubShared, peer: Vec<u8>, frame: zmq::Message) {
    if let Ok(ReturnMsg::Hello { version, token }) = ReturnMsg::decode(&frame) {
        let reply = {
            let mut reg = shared.registry();
            let reg = &mut *reg;
            match reg.routes.get_mut(&token) {
                Some(_) if version != PROTOCOL_VERSION => ReturnMsg::Abort {
                    reason: format!(
                        "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                },
                Some(route) if route.peer.as_ref().is_none_or(|p| *p == peer) => {
                    // Only the first Hello tells the worker; a repeated one is just answered again.
                    if route.peer.replace(peer.clone()).is_none() {
                        reg.peers.insert(peer.clone(), token);
                        if let Some(tx) = &route.tx {
                            let _ = tx.try_send(frame);
                        }
                    }
                    ReturnMsg::HelloAck { version: PROTOCOL_VERSION }
                }
                Some(_) => ReturnMsg::Abort { reason: "session already bound to another peer".into() },
                None => ReturnMsg::Abort { reason: "unknown session token".into() },
            }
        };
        if let Err(e) = router.send_multipart([peer.as_slice(), &reply.to_bytes()], zmq::DONTWAIT) {
            tracing::debug!("return channel: cannot answer a Hello: {e}");
        }
        return;
    }
    let mut reg = shared.registry();
    let Some(token) = reg.peers.get(&peer).copied() else {
        tracing::debug!("return channel: dropped a frame from an unknown peer");
        return;
    };
    let Some(route) = reg.routes.get_mut(&token) else {
        return;
    };
    if let Some(tx) = &route.tx {
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(session = %hex(&token[..4]), "client sent beyond its credit; session dropped");
                route.tx = None;
            }
            Err(TrySendError::Disconnected(_)) => route.tx = None,
        }
    }
}

/// A session worker's handle on the hub.
pub struct SessionLink {
    token: Token,
    rx: Receiver<zmq::Message>,
    push: zmq::Socket,
    shared: Arc<HubShared>,
    remote: Option<String>,
}

impl SessionLink {
    fn command(&self, parts: &[&[u8]]) -> Result<(), zmq::Error> {
        self.push.send_multipart(parts, 0)
    }

    /// Queues one frame for the session's peer.
    pub fn send(&self, msg: &ReturnMsg<'_>) -> Result<(), TransportError> {
        self.command(&[b"send", &self.token, &msg.to_bytes()])?;
        Ok(())
    }

    /// The next frame from the peer, waiting up to `idle`.
    pub fn recv(&self, idle: Duration, shutdown: &Shutdown) -> Result<zmq::Message, TransportError> {
        let started = Instant::now();
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Disconnected) => return Err(TransportError::CreditOverrun),
                Err(RecvTimeoutError::Timeout) => {
                    if shutdown.is_set() {
                        return Err(TransportError::Interrupted);
                    }
                    if started.elapsed() >= idle {
                        return Err(TransportError::Timeout(idle));
                    }
                }
            }
        }
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        // Through the same queue as the session's last frames, so the hub routes those frames
        // (a final Result or Abort) before it forgets the peer.
        let token = self.token;
        if self.command(&[b"unregister", &token]).is_err() {
            unregister(&self.shared, &token);
        }
        if let Some(ep) = self.remote.take() {
            let _ = self.command(&[b"disconnect", ep.as_bytes()]);
        }
    }
}

fn unregister(shared: &HubShared, token: &Token) {
    let mut reg = shared.registry();
    if let Some(route) = reg.routes.remove(token)
        && let Some(peer) = route.peer
    {
        reg.peers.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint("127.0.0.1", "80"), "tcp://127.0.0.1:80");
        assert_eq!(endpoint("::1", "80"), "tcp://[::1]:80");
        assert_eq!(port_of_endpoint("tcp://0.0.0.0:4242"), Some(4242));
    }

    #[test]
    fn loopback_is_local() {
        assert!(host_is_local("127.0.0.1"));
        assert!(!host_is_local("192.0.2.1")); // TEST-NET-1: never assigned to this machine
    }
}
