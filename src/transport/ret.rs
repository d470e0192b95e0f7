//! The return channel's message plumbing, shared by both ends, and B's end of it: one DEALER.
//!
//! Both ends queue outgoing frames in an `Outbox` and hand them to their socket without
//! waiting, when it can take them; both yield [`Inbound`] frames. B's end is the DEALER itself;
//! A's end is a session's link to the hub ([`super::hub::SessionLink`]), which speaks the same.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::protocol::Token;
use crate::protocol::data::Topology;
use crate::protocol::ret::{MAX_CONTROL_LEN, ReturnMsg, SEAL_OVERHEAD, Stream, T_SEALED, keepalive_every};
use crate::secure::{Opener, Sealer};

use super::poll::{Watch, wait};
use super::pool::{Chunk, ZmqChunk};

/// ZeroMQ high-water mark for data-carrying pipes, in messages: the credit window's frames (8),
/// so a peer that ignores its credit is held up by TCP instead of filling memory.
pub(crate) const DATA_HWM: i32 = 8;
/// How long closing sockets may spend delivering what is queued.
pub(crate) const LINGER_MS: i32 = 2000;

/// `tcp://host:port`, with IPv6 literals bracketed.
pub fn endpoint(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// A socket address's host as ZeroMQ takes it: an IPv6 link-local address keeps its interface
/// (`fe80::1%4`), without which it names no route.
pub fn zmq_host(addr: std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V6(a) if a.scope_id() != 0 => format!("{}%{}", a.ip(), a.scope_id()),
        a => a.ip().to_string(),
    }
}

pub(crate) fn port_of_endpoint(ep: &str) -> Option<u16> {
    ep.rsplit(':').next()?.parse().ok()
}

pub(crate) fn zmq_err(e: zmq::Error) -> io::Error {
    // ZeroMQ's errors are errno values: kept as such, they have kinds the hints can tell apart
    // (a port in use, an address this machine does not have). Its own (ETERM, EFSM, ...) lie
    // beyond the system's and stay opaque.
    let code = e.to_raw();
    if (1..4096).contains(&code) { io::Error::from_raw_os_error(code) } else { io::Error::other(e) }
}

/// One frame received on the return channel (opened, if the session is sealed: then the
/// message's plaintext lies within it).
pub struct Frame {
    msg: zmq::Message,
    start: usize,
    end: usize,
}

impl std::ops::Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.msg[self.start..self.end]
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.end - self.start)
    }
}

impl Frame {
    pub(crate) fn new(msg: zmq::Message) -> Frame {
        let end = msg.len();
        Frame { msg, start: 0, end }
    }
}

/// A session's keys for the return channel (version 5, with a secret).
pub(crate) struct ReturnCrypt {
    seal: Sealer,
    open: Opener,
}

impl ReturnCrypt {
    pub(crate) fn new(seal: Sealer, open: Opener) -> ReturnCrypt {
        ReturnCrypt { seal, open }
    }

    /// `plain` as a sealed message.
    pub(crate) fn seal(&mut self, plain: &[u8]) -> zmq::Message {
        zmq::Message::from(self.seal.seal_message_after(&[T_SEALED], plain))
    }

    /// Opens a received message in place; what arrives unsealed, altered, out of order or from
    /// someone without the keys is refused, with the reason.
    pub(crate) fn open(&mut self, mut msg: zmq::Message) -> Result<Frame, String> {
        if msg.first() != Some(&T_SEALED) {
            return Err("a return-channel message arrived unsealed in a sealed session".into());
        }
        let len = self.open.open_message(&mut msg[1..]).map_err(|e| e.to_string())?.len();
        Ok(Frame { msg, start: 1, end: 1 + len })
    }
}

/// How much larger a sealed message may be than its plaintext.
pub(crate) const SEALED_EXTRA: usize = SEAL_OVERHEAD;

/// What arrives at an end of the return channel.
#[derive(Debug)]
pub enum Inbound {
    /// A frame from the peer.
    Frame(Frame),
    /// (A only) The client's `Hello`, decoded once by the hub, which bound the peer to the session.
    Hello {
        /// The version it carries.
        version: u16,
    },
    /// (A only) The client sent faster than the session could take its frames; the rest was dropped.
    Flooded,
    /// A message that did not open in a sealed session (altered, replayed, reordered, dropped
    /// before it, or not from the peer); the session ends.
    Forged(String),
}

enum Out {
    Msg(zmq::Message),
    Chunk(ZmqChunk),
}

/// Frames waiting for their socket to take them, in order.
#[derive(Default)]
pub(crate) struct Outbox(VecDeque<Out>);

impl Outbox {
    pub(crate) fn push_msg(&mut self, m: zmq::Message) {
        self.0.push_back(Out::Msg(m));
    }

    fn push_chunk(&mut self, c: ZmqChunk) {
        self.0.push_back(Out::Chunk(c));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Data` frames waiting.
    fn frames(&self) -> usize {
        self.0.iter().filter(|o| matches!(o, Out::Chunk(_))).count()
    }

    /// Hands frames to `sock` until it takes no more; `Ok(true)` when the box is empty.
    pub(crate) fn flush(&mut self, sock: &mut zmq::Socket) -> io::Result<bool> {
        while let Some(out) = self.0.pop_front() {
            let back = match out {
                Out::Msg(m) => match sock.send(&m[..], zmq::DONTWAIT) {
                    Ok(()) => None,
                    Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => Some(Out::Msg(m)),
                    Err(e) => return Err(zmq_err(e)),
                },
                Out::Chunk(c) => c.send(sock).map_err(zmq_err)?.map(Out::Chunk),
            };
            if let Some(out) = back {
                self.0.push_front(out);
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// KeepAlives for the peer while local work (hashing a prefix) keeps a driver's loop, and so
/// the machine's own keep-alive timer, from running: one each `keepalive_every(idle)`, the
/// protocol's rule for a busy side.
pub struct BusyKeepAlive {
    every: Duration,
    last: Instant,
}

impl BusyKeepAlive {
    /// Starts counting now, for a session whose idle timeout is `idle`.
    pub fn new(idle: Duration) -> BusyKeepAlive {
        BusyKeepAlive { every: keepalive_every(idle), last: Instant::now() }
    }

    /// Sends a KeepAlive on `end` if one is due.
    pub fn tick(&mut self, end: &mut impl ReturnEnd) {
        if self.last.elapsed() >= self.every {
            end.send(&ReturnMsg::KeepAlive);
            let _ = end.flush();
            self.last = Instant::now();
        }
    }
}

/// What both ends of the return channel offer their driver.
pub trait ReturnEnd {
    /// Queues a control frame.
    fn send(&mut self, msg: &ReturnMsg<'_>);
    /// Hands queued frames to the socket as far as it takes them; `Ok(true)` when none are left.
    fn flush(&mut self) -> io::Result<bool>;
    /// The next inbound frame, if one is waiting.
    fn recv(&mut self) -> io::Result<Option<Inbound>>;
    /// What to wait for: always incoming frames, and room to send while frames are queued.
    fn watch(&self) -> Watch<'_>;
    /// From now on, seals what is sent (but a client's `Hello`) and opens what arrives.
    fn secure(&mut self, seal: Sealer, open: Opener);

    /// Best effort, for a session's last words: flushes, waiting at most `limit`.
    fn flush_within(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(false) = self.flush() {
            let mut w = [self.watch()];
            if wait(&mut w, Some(deadline)).is_err() || Instant::now() >= deadline {
                return;
            }
        }
    }
}

/// How B wires its end of the return channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZmqMode {
    /// Follow what the server announces: connect to its port, or bind ours when it runs with --remotehost.
    Auto,
    /// Always connect to the ZeroMQ port the server announces; never bind.
    Connect,
    /// Always bind our --zmq-port and let the server connect (it must run with --remotehost).
    Bind,
}

/// Why B's return channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// A socket call failed.
    #[error("cannot set up the DEALER socket")]
    Socket(#[source] io::Error),
    /// Binding `--zmq-port` failed (with `--zmq-mode bind`).
    #[error("cannot bind {endpoint}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A runs with `--remotehost` but this client has no bound port.
    #[error(
        "the server runs with --remotehost and will connect to this machine's return port, but this client has no \
         bound port: {0}"
    )]
    NotBound(String),
}

/// A DEALER set up as B's return channel uses it.
fn dealer(ctx: &zmq::Context, token: &Token) -> Result<zmq::Socket, WiringError> {
    let setup = |e: zmq::Error| WiringError::Socket(zmq_err(e));
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
    Ok(sock)
}

/// B's end of the return channel: one DEALER socket, owned by B's driver thread.
///
/// The socket only ever connects where A's `Welcome` said, never before: a DEALER spreads its
/// frames over every peer it has, so a guess (PORT + 1) that reached another client's bound
/// socket would hand that client a share of our frames, and it ours. For the same reason a socket
/// that was bound (in case A connects to us, `--remotehost`) is thrown away, with whatever
/// connected to it, unless A said it connects.
pub struct ReturnChannel {
    sock: zmq::Socket,
    token: Token,
    bound: Option<String>,
    bind_error: Option<String>,
    connected: Option<String>,
    outbox: Outbox,
    crypt: Option<ReturnCrypt>,
    ctx: zmq::Context,
}

impl ReturnChannel {
    /// Opens the DEALER before the data channel is connected, bound to `zmq_port` on all
    /// interfaces when `mode` may need it (in `Auto` mode a failed bind is not an error: A, or
    /// another client, may hold that port on this machine, and A may not need ours). It connects
    /// nowhere until [`ReturnChannel::use_topology`].
    pub fn open(token: &Token, mode: ZmqMode, zmq_port: u16) -> Result<ReturnChannel, WiringError> {
        let ctx = zmq::Context::new();
        let sock = dealer(&ctx, token)?;
        let mut chan = ReturnChannel {
            sock,
            token: *token,
            bound: None,
            bind_error: None,
            connected: None,
            outbox: Outbox::default(),
            crypt: None,
            ctx,
        };
        if matches!(mode, ZmqMode::Auto | ZmqMode::Bind) {
            let port = if zmq_port == 0 { "*".to_owned() } else { zmq_port.to_string() };
            let ep = endpoint("*", &port);
            match chan.sock.bind(&ep) {
                Ok(()) => chan.bound = chan.sock.get_last_endpoint().ok().and_then(Result::ok),
                Err(e) if mode == ZmqMode::Bind => {
                    return Err(WiringError::Bind { endpoint: ep, source: zmq_err(e) });
                }
                Err(e) => chan.bind_error = Some(format!("cannot bind {ep}: {e}")),
            }
        }
        Ok(chan)
    }

    /// Why binding the return port failed, if it was tried and failed.
    pub fn bind_error(&self) -> Option<&str> {
        self.bind_error.as_deref()
    }

    /// The port our DEALER is bound to, if it is bound.
    pub fn bound_port(&self) -> Option<u16> {
        self.bound.as_deref().and_then(port_of_endpoint)
    }

    /// Wires the channel as A's `Welcome` announced: connects a fresh socket to A's port, or
    /// keeps the bound one for A to connect to.
    pub fn use_topology(&mut self, topology: Topology, host: &str) -> Result<(), WiringError> {
        match topology {
            Topology::Listen { zmq_port } => {
                if self.bound.take().is_some() {
                    // Replaced, not unbound: a peer that already connected to it stays connected
                    // to that socket, and that socket goes.
                    self.sock = dealer(&self.ctx, &self.token)?;
                }
                let ep = endpoint(host, &zmq_port.to_string());
                self.sock
                    .connect(&ep)
                    .map_err(|e| WiringError::Connect { endpoint: ep.clone(), source: zmq_err(e) })?;
                self.connected = Some(ep);
            }
            Topology::Remote => {
                if self.bound.is_none() {
                    let why =
                        self.bind_error.clone().unwrap_or_else(|| "it was told not to (--zmq-mode connect)".into());
                    return Err(WiringError::NotBound(why));
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

    /// `Data` frames queued here that the socket has not taken yet.
    pub fn queued_frames(&self) -> usize {
        self.outbox.frames()
    }

    /// Queues a `Data` frame made of `chunk` itself, without copying its bytes.
    pub fn send_chunk(&mut self, stream: Stream, offset: u64, chunk: Chunk) -> io::Result<()> {
        if let Some(crypt) = &mut self.crypt {
            // Sealed: the ciphertext is a new buffer, and the chunk goes back to its pool now.
            let m = chunk.with_frame(stream, offset, |frame| crypt.seal(frame));
            self.outbox.push_msg(m);
            return Ok(());
        }
        let m = chunk.into_message(stream, offset)?;
        self.outbox.push_chunk(m);
        Ok(())
    }
}

impl ReturnEnd for ReturnChannel {
    fn send(&mut self, msg: &ReturnMsg<'_>) {
        let plain = msg.to_bytes();
        // The Hello stays clear: A's hub routes by its token.
        let m = match &mut self.crypt {
            Some(crypt) if !matches!(msg, ReturnMsg::Hello { .. }) => crypt.seal(&plain),
            _ => zmq::Message::from(plain),
        };
        self.outbox.push_msg(m);
    }

    fn secure(&mut self, seal: Sealer, open: Opener) {
        self.crypt = Some(ReturnCrypt::new(seal, open));
        // A's control messages grow by the seal.
        let _ = self.sock.set_maxmsgsize((MAX_CONTROL_LEN + SEALED_EXTRA) as i64);
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.outbox.flush(&mut self.sock)
    }

    fn recv(&mut self) -> io::Result<Option<Inbound>> {
        match self.sock.recv_msg(zmq::DONTWAIT) {
            Ok(m) => Ok(Some(match &mut self.crypt {
                Some(crypt) => crypt.open(m).map_or_else(Inbound::Forged, Inbound::Frame),
                None => Inbound::Frame(Frame::new(m)),
            })),
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => Ok(None),
            Err(e) => Err(zmq_err(e)),
        }
    }

    fn watch(&self) -> Watch<'_> {
        Watch::zmq(&self.sock, true, !self.outbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_peer_that_connected_to_the_bound_socket_gets_no_frame() {
        // Concurrent clients against a server on -p 0: one client's auto wiring had bound PORT+1,
        // another's DEALER, guessing the server was there, connected to it, and since a DEALER
        // spreads its frames over all its peers, each got a share of the other's.
        let ctx = zmq::Context::new();
        let mut b = ReturnChannel::open(&[9; 16], ZmqMode::Auto, 0).unwrap();
        let ours = b.bound_port().expect("bound");
        let other = ctx.socket(zmq::DEALER).unwrap();
        other.set_linger(0).unwrap();
        other.connect(&format!("tcp://127.0.0.1:{ours}")).unwrap();
        other.send(&b"another client's frame"[..], 0).unwrap();
        // Its frame arrived, so the connection is complete and would take a share.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(b.recv().unwrap(), Some(Inbound::Frame(_))) {
            assert!(Instant::now() < deadline, "the other client's frame never came");
            let _ = crate::transport::poll::wait(&mut [b.watch()], Some(Instant::now() + Duration::from_millis(100)));
        }
        let server = ctx.socket(zmq::ROUTER).unwrap();
        server.set_linger(0).unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let port = port_of_endpoint(&server.get_last_endpoint().unwrap().unwrap()).unwrap();
        b.use_topology(Topology::Listen { zmq_port: port }, "127.0.0.1").unwrap();
        for _ in 0..20 {
            b.send(&ReturnMsg::KeepAlive);
        }
        b.flush_within(Duration::from_secs(20));
        server.set_rcvtimeo(20_000).unwrap();
        for i in 0..20 {
            let parts = server.recv_multipart(0).unwrap_or_else(|e| panic!("frame {i} of 20 never reached A: {e}"));
            assert_eq!(parts[1], ReturnMsg::KeepAlive.to_bytes());
        }
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint("127.0.0.1", "80"), "tcp://127.0.0.1:80");
        assert_eq!(endpoint("::1", "80"), "tcp://[::1]:80");
        let link_local = std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 4);
        assert_eq!(endpoint(&zmq_host(link_local.into()), "80"), "tcp://[fe80::1%4]:80");
        assert_eq!(zmq_host("127.0.0.1:80".parse().unwrap()), "127.0.0.1");
        assert_eq!(port_of_endpoint("tcp://0.0.0.0:4242"), Some(4242));
    }
}
