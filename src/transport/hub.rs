//! A's end of the return channel: one ROUTER, owned by one hub thread (ZeroMQ sockets are not
//! thread-safe), and a [`SessionLink`] per session.
//!
//! The hub routes and decides nothing about sessions. It owns the only decoding of the return
//! channel's `Hello`: a `Hello` that carries a registered token binds its sender's routing id to
//! that session and is passed on as [`Inbound::Hello`]; the session's machine answers it. Frames
//! from a bound peer go to its session, frames from a session to its peer. A `Hello` with a token
//! nobody registered, or for a session bound to another peer, is answered with `Abort` (there is
//! no session to ask). Sessions and hub talk over an inproc PAIR each, in `HubEvent`s one way
//! and `LinkCommand`s the other, so a session waits on its TCP socket and its link at once.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::logging::Tally;
use crate::protocol::data::Topology;
use crate::protocol::ret::{DATA_HEADER_LEN, MAX_CHUNK, ReturnMsg, ends_session, is_hello};
use crate::protocol::{Token, hex};
use crate::shutdown::Shutdown;

use super::poll::{Watch, wait};
use super::ret::{
    DATA_HWM, Frame, Inbound, LINGER_MS, Outbox, ReturnCrypt, ReturnEnd, SEALED_EXTRA, endpoint, port_of_endpoint,
    zmq_err,
};
use crate::secure::{Opener, Sealer};

/// High-water mark of each end of a session's inproc pair. For inproc, libzmq adds the sender's
/// and the receiver's (24), and the sender learns of the reader's progress only every half of
/// that, so the hub may see the queue full at 13. A client honouring its credit has at most its
/// window's 8 frames and an `End` in flight; one that does not overflows the queue and loses the
/// session, after 24 frames at the most, instead of filling A's memory.
const LINK_HWM: i32 = 12;
/// How often junk from unidentified peers is summed up in the log.
const JUNK_SUMMARY: Duration = Duration::from_secs(1);
/// How long registration may wait for the (local) hub's answer.
const REGISTER_WAIT: Duration = Duration::from_secs(5);

/// Where A's ROUTER is wired.
#[derive(Debug, Clone)]
pub enum HubWiring {
    /// Bind this endpoint; clients connect to it.
    Bind(String),
    /// Bind nothing; connect to each client's bound port on this host (`--remotehost`).
    Remote(String),
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Binding the ROUTER failed.
    #[error("cannot listen on {endpoint}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another socket call failed.
    #[error("cannot set up the return channel's ROUTER")]
    Setup(#[source] io::Error),
}

/// Why a session could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Another session uses the token.
    #[error("session token is already in use")]
    TokenInUse,
    /// The stop signal came first.
    #[error("interrupted")]
    Interrupted,
    /// The hub did not answer, or a socket call failed.
    #[error("cannot reach the return channel's hub")]
    Io(#[source] io::Error),
}

/// Commands on the hub's control socket.
#[derive(Debug, PartialEq, Eq)]
enum Control {
    /// A session's PAIR is bound at `link`; route `token` there (and connect to `remote`).
    Register { token: Token, link: String, remote: Option<String> },
    /// Stop once every session has closed.
    Stop,
}

impl Control {
    fn encode(&self) -> Vec<Vec<u8>> {
        match self {
            Control::Register { token, link, remote } => vec![
                b"R".to_vec(),
                token.to_vec(),
                link.as_bytes().to_vec(),
                remote.as_deref().unwrap_or_default().as_bytes().to_vec(),
            ],
            Control::Stop => vec![b"Q".to_vec()],
        }
    }

    fn decode(parts: &[Vec<u8>]) -> Option<Control> {
        match parts {
            [r, token, link, remote] if r == b"R" => Some(Control::Register {
                token: Token::try_from(token.as_slice()).ok()?,
                link: String::from_utf8(link.clone()).ok()?,
                remote: (!remote.is_empty()).then(|| String::from_utf8_lossy(remote).into_owned()),
            }),
            [q] if q == b"Q" => Some(Control::Stop),
            _ => None,
        }
    }
}

/// What the hub tells a session, in order.
#[derive(Debug)]
pub(crate) enum HubEvent {
    /// The token is routed to this session.
    Registered,
    /// The token belongs to another session.
    TokenInUse,
    /// The peer's `Hello`, with its version.
    Hello(u16),
    /// A frame from the peer.
    Frame(zmq::Message),
    /// The peer overran the session's queue; nothing more of it will come.
    Flooded,
}

impl HubEvent {
    fn send(self, pair: &zmq::Socket) -> Result<(), zmq::Error> {
        match self {
            HubEvent::Registered => pair.send(&b"K"[..], zmq::DONTWAIT),
            HubEvent::TokenInUse => pair.send(&b"D"[..], zmq::DONTWAIT),
            HubEvent::Hello(v) => pair.send(&[b'H', (v >> 8) as u8, v as u8][..], zmq::DONTWAIT),
            HubEvent::Flooded => pair.send(&b"X"[..], zmq::DONTWAIT),
            HubEvent::Frame(m) => {
                // Multipart messages are atomic: if the tag goes, the frame goes.
                pair.send(&b"F"[..], zmq::DONTWAIT | zmq::SNDMORE)?;
                // Not waiting here either: should the session's end of the pair be closing, a
                // blocking send would hold the hub, and every session with it.
                pair.send(m, zmq::DONTWAIT)
            }
        }
    }

    fn recv(pair: &zmq::Socket) -> Result<Option<HubEvent>, zmq::Error> {
        let tag = match pair.recv_msg(zmq::DONTWAIT) {
            Ok(m) => m,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let ev = match &tag[..] {
            b"K" => HubEvent::Registered,
            b"D" => HubEvent::TokenInUse,
            [b'H', hi, lo] => HubEvent::Hello(u16::from_be_bytes([*hi, *lo])),
            b"X" => HubEvent::Flooded,
            b"F" if pair.get_rcvmore()? => HubEvent::Frame(pair.recv_msg(0)?),
            _ => return Err(zmq::Error::EPROTO),
        };
        Ok(Some(ev))
    }
}

/// What a session tells the hub: a frame for its peer, or that it is over. Encoded as one part:
/// empty for `Close`; else a byte saying whether the frame ends the session (the hub cannot see
/// that in a sealed frame), then the frame.
#[derive(Debug)]
enum LinkCommand {
    /// The frame is `msg[1..]`, after the flag byte.
    Send {
        msg: zmq::Message,
        ending: bool,
    },
    Close,
}

impl LinkCommand {
    fn from_message(m: zmq::Message) -> LinkCommand {
        match m.first().copied() {
            None => LinkCommand::Close,
            Some(flag) => LinkCommand::Send { ending: flag == 1, msg: m },
        }
    }

    fn send(plain: &[u8], wire: &[u8]) -> zmq::Message {
        let mut m = Vec::with_capacity(1 + wire.len());
        m.push(u8::from(ends_session(plain)));
        m.extend_from_slice(wire);
        zmq::Message::from(m)
    }
}

/// A's ROUTER, owned by the hub thread.
pub struct Hub {
    ctx: zmq::Context,
    control: String,
    id: u64,
    seq: AtomicU64,
    thread: Option<JoinHandle<()>>,
    local_port: Option<u16>,
    remote_host: Option<String>,
}

static HUB_SEQ: AtomicU64 = AtomicU64::new(0);

impl Hub {
    /// Creates the ROUTER, binds it (unless remote), and starts the hub thread.
    pub fn start(wiring: HubWiring) -> Result<Hub, HubError> {
        let ctx = zmq::Context::new();
        let setup = |e: zmq::Error| HubError::Setup(zmq_err(e));
        let router = ctx.socket(zmq::ROUTER).map_err(setup)?;
        router.set_router_mandatory(true).map_err(setup)?;
        router.set_rcvhwm(DATA_HWM).map_err(setup)?;
        router.set_sndhwm(1000).map_err(setup)?; // outbound frames are small credits and verdicts
        router.set_linger(LINGER_MS).map_err(setup)?;
        router.set_maxmsgsize((DATA_HEADER_LEN + MAX_CHUNK + SEALED_EXTRA) as i64).map_err(setup)?;
        router.set_ipv6(true).map_err(setup)?;
        router.set_reconnect_ivl(100).map_err(setup)?;
        router.set_reconnect_ivl_max(1000).map_err(setup)?;
        let (local_port, remote_host) = match &wiring {
            HubWiring::Bind(ep) => {
                router.bind(ep).map_err(|e| HubError::Bind { endpoint: ep.clone(), source: zmq_err(e) })?;
                let last = router.get_last_endpoint().ok().and_then(Result::ok).unwrap_or_default();
                (port_of_endpoint(&last), None)
            }
            HubWiring::Remote(host) => (None, Some(host.clone())),
        };
        let id = HUB_SEQ.fetch_add(1, Ordering::Relaxed);
        let control = format!("inproc://machinaftp-hub-{id}");
        let pull = ctx.socket(zmq::PULL).map_err(setup)?;
        pull.bind(&control).map_err(setup)?;
        let hub_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("zmq-hub".into())
            .spawn(move || {
                HubLoop {
                    ctx: hub_ctx,
                    router,
                    control: pull,
                    routes: HashMap::new(),
                    peers: HashMap::new(),
                    remote_refs: HashMap::new(),
                    stopping: None,
                    last_ending: None,
                    junk: Tally::new("return channel: junk from peers without a valid Hello", JUNK_SUMMARY),
                }
                .run()
            })
            .map_err(HubError::Setup)?;
        Ok(Hub { ctx, control, id, seq: AtomicU64::new(0), thread: Some(thread), local_port, remote_host })
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

    /// Registers a session by its token and waits for the hub to take it: only then may the
    /// session send `Welcome`, after which the client's `Hello` can arrive. In remote mode the hub
    /// also connects to `return_port` on the remote host.
    pub fn register(&self, token: Token, return_port: u16, stop: &Shutdown) -> Result<SessionLink, RegisterError> {
        let io = |e: zmq::Error| RegisterError::Io(zmq_err(e));
        let pair = self.ctx.socket(zmq::PAIR).map_err(io)?;
        pair.set_linger(LINGER_MS).map_err(io)?;
        pair.set_sndhwm(LINK_HWM).map_err(io)?;
        pair.set_rcvhwm(LINK_HWM).map_err(io)?;
        let link = format!("inproc://machinaftp-hub-{}-s{}", self.id, self.seq.fetch_add(1, Ordering::Relaxed));
        pair.bind(&link).map_err(io)?;
        let remote = self.remote_host.as_ref().map(|h| endpoint(h, &return_port.to_string()));
        let push = self.ctx.socket(zmq::PUSH).map_err(io)?;
        push.set_linger(LINGER_MS).map_err(io)?;
        push.connect(&self.control).map_err(io)?;
        push.send_multipart(Control::Register { token, link, remote: remote.clone() }.encode(), 0).map_err(io)?;
        drop(push);
        let deadline = Instant::now() + REGISTER_WAIT;
        let mut link = SessionLink { pair, outbox: Outbox::default(), crypt: None, remote, routed: true };
        loop {
            let mut w = [Watch::zmq(&link.pair, true, false), Watch::fd(stop.fd(), true, false)];
            wait(&mut w, Some(deadline)).map_err(RegisterError::Io)?;
            // Given up on before the hub's answer, the link still closes (on drop) the route the
            // hub may have made meanwhile; a refused token has no route to close.
            match HubEvent::recv(&link.pair).map_err(io)? {
                Some(HubEvent::Registered) => return Ok(link),
                Some(HubEvent::TokenInUse) => {
                    link.routed = false;
                    return Err(RegisterError::TokenInUse);
                }
                Some(_) | None if w[1].readable => return Err(RegisterError::Interrupted),
                Some(other) => return Err(RegisterError::Io(io::Error::other(format!("unexpected {other:?}")))),
                None if Instant::now() >= deadline => {
                    return Err(RegisterError::Io(io::Error::new(io::ErrorKind::TimedOut, "the hub did not answer")));
                }
                None => {}
            }
        }
    }

    /// Stops the hub thread once every session has closed (after passing on their last frames).
    pub fn stop(mut self) {
        self.halt();
    }

    /// Once only: `stop` halts and then `drop` comes. A second stop command would go to the hub
    /// thread's control socket after that thread closed it; libzmq can then hand the new
    /// connection to the dying socket, and a send without a timeout waits forever (2-3% of
    /// server exits under load hung there).
    fn halt(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        if let Ok(push) = self.ctx.socket(zmq::PUSH) {
            let _ = push.set_linger(LINGER_MS);
            let _ = push.set_sndtimeo(1000);
            if push.connect(&self.control).is_ok() {
                let _ = push.send_multipart(Control::Stop.encode(), 0);
            }
        }
        let _ = thread.join();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Route {
    /// The hub's end of the session's PAIR.
    pair: zmq::Socket,
    /// The routing id the session's `Hello` came from.
    peer: Option<Vec<u8>>,
    remote: Option<String>,
    /// The peer overran its queue: its frames are dropped.
    flooded: bool,
    /// ... and the session has yet to be told.
    tell_flood: bool,
}

struct HubLoop {
    ctx: zmq::Context,
    router: zmq::Socket,
    control: zmq::Socket,
    routes: HashMap<Token, Route>,
    peers: HashMap<Vec<u8>, Token>,
    remote_refs: HashMap<String, usize>,
    /// When the stop came: sessions still open get a moment to close.
    stopping: Option<Instant>,
    /// When a frame that ends a session (an `Abort`, a negative `Result`) last went to a client.
    last_ending: Option<Instant>,
    /// Junk from peers that never said a valid Hello: anyone who reaches the port can send it,
    /// so it is counted, never logged a line each.
    junk: Tally,
}

impl HubLoop {
    fn run(mut self) {
        self.serve();
        self.junk.flush();
    }

    fn serve(&mut self) {
        loop {
            let tokens: Vec<Token> = self.routes.keys().copied().collect();
            let timeout = match self.stopping {
                Some(_) if self.routes.is_empty() => return self.drain_after_endings(),
                // Sessions still open at a stop (they are joined first, so this is rare) get a
                // second to say their last words.
                Some(since) if since.elapsed() >= Duration::from_secs(1) => return,
                Some(_) => 20,
                None => match self.junk.due() {
                    Some(due) => due.saturating_duration_since(Instant::now()).as_millis().min(1000) as i64,
                    None => -1,
                },
            };
            {
                let mut items = vec![self.router.as_poll_item(zmq::POLLIN), self.control.as_poll_item(zmq::POLLIN)];
                items.extend(tokens.iter().map(|t| {
                    let r = &self.routes[t];
                    r.pair.as_poll_item(if r.tell_flood { zmq::POLLIN | zmq::POLLOUT } else { zmq::POLLIN })
                }));
                match zmq::poll(&mut items, timeout) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => {
                        tracing::error!("return channel hub: poll failed: {e}");
                        return;
                    }
                }
            }
            // Registrations first, so a client's Hello always finds its session.
            while let Ok(parts) = self.control.recv_multipart(zmq::DONTWAIT) {
                match Control::decode(&parts) {
                    Some(Control::Register { token, link, remote }) => self.register(token, &link, remote),
                    Some(Control::Stop) => self.stopping = Some(Instant::now()),
                    None => tracing::error!("return channel hub: malformed internal command"),
                }
            }
            for token in &tokens {
                self.pass_on_session_frames(token);
                if let Some(r) = self.routes.get_mut(token)
                    && r.tell_flood
                    && HubEvent::Flooded.send(&r.pair).is_ok()
                {
                    r.tell_flood = false;
                }
            }
            // A bounded batch per turn keeps one busy peer from starving the sessions.
            for _ in 0..64 {
                match recv_routed(&self.router) {
                    Ok(Some((peer, frame))) => self.on_peer_frame(peer, frame),
                    Ok(None) => self.junk.note("message_of_another_shape"),
                    Err(_) => break,
                }
            }
            self.junk.tick(Instant::now());
        }
    }

    /// At a stop, after an `Abort` or a negative `Result` went to a client that was still sending
    /// (a session ended mid-transfer): keeps reading, and dropping, what the client sends until it
    /// falls quiet. Closing a TCP socket with unread data makes the kernel reset the connection
    /// and discard what it had not sent yet, which would be that very frame (a client was left
    /// waiting for a verdict on a returned copy that A had already rejected).
    fn drain_after_endings(&mut self) {
        let Some(last) = self.last_ending else { return };
        let until = last + Duration::from_millis(500);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            // Quiet for 20 ms: the client heard and stopped.
            let mut items = [self.router.as_poll_item(zmq::POLLIN)];
            match zmq::poll(&mut items, left.min(Duration::from_millis(20)).as_millis() as i64) {
                Ok(n) if n > 0 => while let Ok(Some(_)) = recv_routed(&self.router) {},
                Ok(_) => return,
                Err(zmq::Error::EINTR) => {}
                Err(_) => return,
            }
            if left.is_zero() {
                return;
            }
        }
    }

    fn register(&mut self, token: Token, link: &str, remote: Option<String>) {
        let Ok(pair) = self.ctx.socket(zmq::PAIR).and_then(|p| {
            p.set_linger(0)?;
            p.set_sndhwm(LINK_HWM)?;
            p.set_rcvhwm(LINK_HWM)?;
            p.connect(link)?;
            Ok(p)
        }) else {
            tracing::error!("return channel hub: cannot reach a new session");
            return;
        };
        if self.routes.contains_key(&token) {
            let _ = HubEvent::TokenInUse.send(&pair);
            return;
        }
        if let Some(ep) = &remote {
            let n = self.remote_refs.entry(ep.clone()).or_insert(0);
            if *n == 0 {
                match self.router.connect(ep) {
                    Ok(()) => tracing::debug!("return channel connecting to {ep}"),
                    Err(e) => tracing::warn!("cannot connect the return channel to {ep}: {e}"),
                }
            }
            *n += 1;
        }
        let _ = HubEvent::Registered.send(&pair);
        self.routes.insert(token, Route { pair, peer: None, remote, flooded: false, tell_flood: false });
    }

    /// Passes a session's frames to its peer, until it closes.
    fn pass_on_session_frames(&mut self, token: &Token) {
        loop {
            let Some(route) = self.routes.get(token) else { return };
            let m = match route.pair.recv_msg(zmq::DONTWAIT) {
                Ok(m) => m,
                Err(_) => return,
            };
            match LinkCommand::from_message(m) {
                LinkCommand::Send { msg, ending } => match &route.peer {
                    // Never block the hub on one peer: one that does not read its credits times out.
                    Some(peer) => {
                        if ending {
                            self.last_ending = Some(Instant::now());
                        }
                        if let Err(e) = self.router.send_multipart([peer.as_slice(), &msg[1..]], zmq::DONTWAIT) {
                            tracing::warn!(session = %hex(&token[..4]), "cannot send to the client: {e}");
                        }
                    }
                    None => tracing::debug!(session = %hex(&token[..4]), "no return peer yet; frame dropped"),
                },
                LinkCommand::Close => {
                    self.close(token);
                    return;
                }
            }
        }
    }

    fn close(&mut self, token: &Token) {
        let Some(route) = self.routes.remove(token) else { return };
        if let Some(peer) = route.peer {
            self.peers.remove(&peer);
        }
        if let Some(ep) = route.remote
            && let Some(n) = self.remote_refs.get_mut(&ep)
        {
            *n -= 1;
            if *n == 0 {
                self.remote_refs.remove(&ep);
                let _ = self.router.disconnect(&ep);
            }
        }
    }

    fn on_peer_frame(&mut self, peer: Vec<u8>, frame: zmq::Message) {
        if is_hello(&frame) {
            self.hello(peer, frame);
            return;
        }
        let Some(token) = self.peers.get(&peer) else {
            self.junk.note("frame_from_unknown_peer");
            return;
        };
        let Some(route) = self.routes.get_mut(token) else { return };
        if route.flooded {
            return;
        }
        if let Err(e) = HubEvent::Frame(frame).send(&route.pair) {
            // The session's queue is full: the peer sent beyond its credit. Nothing more of it is
            // passed on; the session learns so when it has taken what is queued.
            tracing::warn!(session = %hex(&token[..4]), "client sent beyond its credit ({e}); its frames are dropped");
            route.flooded = true;
            route.tell_flood = true;
        }
    }

    fn hello(&mut self, peer: Vec<u8>, frame: zmq::Message) {
        let (version, token) = match ReturnMsg::decode(&frame) {
            Ok(ReturnMsg::Hello { version, token }) => (version, token),
            _ => {
                self.junk.note("malformed_hello");
                return;
            }
        };
        let reply = match self.routes.get_mut(&token) {
            None => Some("unknown session token"),
            Some(route) if route.peer.as_ref().is_some_and(|p| *p != peer) => {
                Some("session already bound to another peer")
            }
            Some(route) => {
                if route.peer.is_none() {
                    route.peer = Some(peer.clone());
                    self.peers.insert(peer.clone(), token);
                }
                let _ = HubEvent::Hello(version).send(&route.pair);
                None
            }
        };
        if let Some(reason) = reply {
            self.junk.note(if reason.starts_with("unknown") { "hello_unknown_token" } else { "hello_session_taken" });
            let abort = ReturnMsg::Abort { reason: reason.into() }.to_bytes();
            if self.router.send_multipart([peer.as_slice(), &abort], zmq::DONTWAIT).is_err() {
                self.junk.note("hello_not_answered");
            }
        }
    }
}

/// Receives one `[routing id, frame]` message without copying the frame. `Ok(None)`: a message
/// of another shape arrived and was dropped, since a DEALER speaking this protocol sends one frame.
fn recv_routed(router: &zmq::Socket) -> Result<Option<(Vec<u8>, zmq::Message)>, zmq::Error> {
    let peer = router.recv_msg(zmq::DONTWAIT)?;
    let mut parts = 1;
    let mut frame = None;
    while router.get_rcvmore()? {
        frame = Some(router.recv_msg(0)?);
        parts += 1;
    }
    match frame {
        Some(frame) if parts == 2 => Ok(Some((peer.to_vec(), frame))),
        _ => Ok(None),
    }
}

/// A session's end of the return channel, through the hub.
pub struct SessionLink {
    pair: zmq::Socket,
    outbox: Outbox,
    crypt: Option<ReturnCrypt>,
    remote: Option<String>,
    /// Whether the hub holds a route for this link (to be closed when it goes).
    routed: bool,
}

impl SessionLink {
    /// The client's endpoint the hub connects to, in remote mode.
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }
}

impl ReturnEnd for SessionLink {
    fn send(&mut self, msg: &ReturnMsg<'_>) {
        let plain = msg.to_bytes();
        let m = match &mut self.crypt {
            Some(crypt) => LinkCommand::send(&plain, &crypt.seal(&plain)),
            None => LinkCommand::send(&plain, &plain),
        };
        self.outbox.push_msg(m);
    }

    fn secure(&mut self, seal: Sealer, open: Opener) {
        self.crypt = Some(ReturnCrypt::new(seal, open));
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.outbox.flush(&mut self.pair)
    }

    fn recv(&mut self) -> io::Result<Option<Inbound>> {
        match HubEvent::recv(&self.pair).map_err(zmq_err)? {
            Some(HubEvent::Frame(m)) => Ok(Some(match &mut self.crypt {
                Some(crypt) => crypt.open(m).map_or_else(Inbound::Forged, Inbound::Frame),
                None => Inbound::Frame(Frame::new(m)),
            })),
            Some(HubEvent::Hello(version)) => Ok(Some(Inbound::Hello { version })),
            Some(HubEvent::Flooded) => Ok(Some(Inbound::Flooded)),
            Some(HubEvent::Registered | HubEvent::TokenInUse) | None => Ok(None),
        }
    }

    fn watch(&self) -> Watch<'_> {
        Watch::zmq(&self.pair, true, !self.outbox.is_empty())
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        if !self.routed {
            return;
        }
        // Through the same queue as the session's last frames, so the hub routes those (a final
        // Result or Abort) before it forgets the peer.
        self.outbox.push_msg(zmq::Message::new());
        self.flush_within(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ret::{DATA_HEADER_LEN, Stream, data_header};

    #[test]
    fn a_client_ignoring_its_credit_overflows_a_bounded_queue_and_is_cut_off() {
        let hub = Hub::start(HubWiring::Bind("tcp://127.0.0.1:0".into())).unwrap();
        let port = hub.local_port().unwrap();
        let token = [3u8; 16];
        let mut link = hub.register(token, 0, &Shutdown::new()).unwrap();
        let ctx = zmq::Context::new();
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_linger(0).unwrap();
        dealer.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        dealer.send(ReturnMsg::Hello { version: 2, token }.to_bytes(), 0).unwrap();
        // Forty 64 KiB frames at once, without waiting for a single credit, while the session
        // takes nothing: only what fits the queue may reach it.
        for i in 0..40u64 {
            let mut frame = data_header(Stream::File, i << 16).to_vec();
            frame.resize(DATA_HEADER_LEN + (64 << 10), 7);
            dealer.send(frame, 0).unwrap();
        }
        // The session takes nothing until the hub has handled all forty: a Hello for an unknown
        // token, sent after them on the same connection, is answered only then.
        dealer.send(ReturnMsg::Hello { version: 2, token: [4u8; 16] }.to_bytes(), 0).unwrap();
        dealer.set_rcvtimeo(20_000).unwrap();
        let answer = dealer.recv_bytes(0).expect("the hub answers the unknown token");
        assert!(matches!(ReturnMsg::decode(&answer), Ok(ReturnMsg::Abort { .. })), "{answer:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut frames, mut flooded) = (0, false);
        while !flooded && Instant::now() < deadline {
            match link.recv().unwrap() {
                Some(Inbound::Frame(_)) => frames += 1,
                Some(Inbound::Flooded) => flooded = true,
                Some(Inbound::Hello { .. } | Inbound::Forged(_)) => {}
                None => {
                    let mut w = [link.watch()];
                    wait(&mut w, Some(Instant::now() + Duration::from_millis(200))).unwrap();
                }
            }
        }
        assert!(flooded, "the session learns that its client overran ({frames} frames came)");
        assert!(frames <= 2 * LINK_HWM as usize, "{frames} frames were queued for one session");
    }

    #[test]
    fn control_commands_round_trip() {
        for c in [
            Control::Register { token: [7; 16], link: "inproc://x".into(), remote: None },
            Control::Register { token: [1; 16], link: "inproc://y".into(), remote: Some("tcp://h:1".into()) },
            Control::Stop,
        ] {
            assert_eq!(Control::decode(&c.encode()), Some(c));
        }
        assert_eq!(Control::decode(&[b"Z".to_vec()]), None);
    }
}
