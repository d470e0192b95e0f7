//! A's state machine: one client's session, from its `Hello` to its `Bye`, in protocol version 1
//! (the file comes back after the data leg) or 2 (it comes back while it is being sent).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::integrity::{Digest, FileDigest, Hasher, chunk_size};
use crate::protocol::data::{DataMsg, ErrorCode, Topology, WelcomeAuth};
use crate::protocol::ret::{ReturnMsg, Stream, frame_size};
use crate::protocol::{
    AUTH_VERSION, CHUNKS_VERSION, DecodeError, MESH_VERSION, MIN_VERSION, RESUME_VERSION, Token, VERSION,
};
use crate::secure::{AuthError, CONFIRM_LEN, PAKE_MSG_LEN};
use crate::stl::mesh::MeshFacts;

use super::failure::{ByteRange, CsvFailure, DigestDiff, Failure, Leg, LocalFailure, Locus, Phase, Role, Violation};
use super::streams::Incoming;
use super::timers::{Due, Timers};
use super::{ABORT_GRACE, BYE_WAIT, ExpectedCsv, FileDone, LegDone, Milestone, Resumed, WINDOW_V1, wire_code};

/// What A's machine needs to know of its configuration.
#[derive(Debug, Clone)]
pub struct ServerParams {
    /// How long the client may make no progress.
    pub idle: Duration,
    /// How the return channel is wired, as announced in `Welcome`.
    pub topology: Topology,
    /// The return window granted in version 2.
    pub window: u64,
    /// A holds a secret: clients must prove it (version 5) before anything else happens.
    pub secured: bool,
}

/// Everything that can happen to A's session.
#[derive(Debug)]
pub enum ServerInput<'a> {
    /// A control frame arrived on the data channel.
    Data(DataMsg),
    /// Bytes on the data channel that are not a frame.
    DataUndecodable(DecodeError),
    /// The data channel closed (end of stream, reset, or a write that found it gone).
    DataClosed,
    /// The hub took the session's token.
    Registered,
    /// The hub already routes this token for another session.
    TokenInUse,
    /// The client's `Hello` on the return channel (the hub decoded it and bound the peer).
    ReturnHello {
        /// The version it carries.
        version: u16,
    },
    /// Any other frame from the client on the return channel.
    Ret(ReturnMsg<'a>),
    /// A return-channel frame that does not decode.
    RetUndecodable(DecodeError),
    /// A sealed record (data channel) or message (return channel) that does not open.
    Forged(String),
    /// The client sent faster than its frames could be taken (the hub's queue overflowed).
    RetFlooded,
    /// A's answer to the client's SPAKE2 message (after [`ServerAction::Authenticate`]), for
    /// `Welcome`; the driver holds the session's keys.
    AuthReply(Box<WelcomeAuth>),
    /// The client's key-exchange message or confirmation does not hold (after
    /// [`ServerAction::Authenticate`] or [`ServerAction::CheckConfirm`]).
    AuthRefused(AuthError),
    /// The client's confirmation holds (after [`ServerAction::CheckConfirm`]): the driver now
    /// seals and opens the data channel.
    Authenticated,
    /// The served file is open.
    SourceOpened {
        /// Its size.
        size: u64,
        /// Its name, for the client's display.
        name: String,
        /// Its digest, when it is known from an earlier session and the file is unchanged.
        digest: Option<FileDigest>,
    },
    /// Bytes read from the served file, about to be sent.
    RawRead(&'a [u8]),
    /// What A holds of a version-4 client's transfer (after [`ServerAction::FindPartial`]): the
    /// length of its partial returned copy, 0 if none.
    PartialFound {
        /// Bytes in it.
        len: u64,
    },
    /// The partial returned copy's first bytes, in order (after [`ServerAction::ReadPrefix`]).
    PartialBytes(&'a [u8]),
    /// The served file's first bytes, in order (after [`ServerAction::ReadPrefix`]).
    SourcePrefix(&'a [u8]),
    /// Both prefixes are read.
    PrefixRead,
    /// Bytes of the `Data` frame just handled, as they are written (hashed here, in order).
    Returned(&'a [u8]),
    /// Bytes written to the data channel.
    RawWritten(u64),
    /// All raw bytes are written and the file did not change while they were.
    RawDone,
    /// A returned file is saved under its final name.
    Committed(Stream),
    /// Where the returned copy first differs from the original (after [`ServerAction::Locate`]);
    /// `None` if that could not be found.
    Located(Option<ByteRange>),
    /// A's own derivation of the expected CSV finished.
    ExpectedCsv(ExpectedCsv),
    /// Local work failed.
    Local(LocalFailure),
    /// The server is stopping.
    Stop,
}

/// What A's driver must do.
#[derive(Debug)]
pub enum ServerAction {
    /// Send a control frame on the data channel.
    SendData(DataMsg),
    /// Send a control frame on the return channel.
    SendRet(ReturnMsg<'static>),
    /// Answer the client's SPAKE2 message with the secret; report [`ServerInput::AuthReply`] or
    /// [`ServerInput::AuthRefused`]. Before [`ServerAction::Register`], whose link is sealed.
    Authenticate {
        /// The session's token (the key schedule's salt).
        token: Token,
        /// The client's SPAKE2 message.
        client_msg: [u8; PAKE_MSG_LEN],
    },
    /// Check the client's key confirmation; report [`ServerInput::Authenticated`] (and seal the
    /// data channel from here on) or [`ServerInput::AuthRefused`].
    CheckConfirm {
        /// The client's tag.
        tag: [u8; CONFIRM_LEN],
    },
    /// Register the token with the hub (and, with `--remotehost`, connect to the client's port).
    Register {
        /// The client's token.
        token: Token,
        /// The client's bound return port (0: none).
        return_port: u16,
    },
    /// Open the served file and report [`ServerInput::SourceOpened`].
    OpenSource,
    /// Create the temporary file that receives `stream`.
    OpenSink(Stream),
    /// Stream the file's raw bytes on the data channel from `from`, reporting each read, each
    /// write, and the end.
    StartRaw {
        /// The first byte to send (after a resume, B holds those before it).
        from: u64,
    },
    /// A version-4 client offered what it holds of `transfer`: find (and lock) A's partial
    /// returned copy of it, and report [`ServerInput::PartialFound`].
    FindPartial {
        /// The client's transfer identifier.
        transfer: [u8; 16],
    },
    /// Read the first `partial` bytes of that partial copy ([`ServerInput::PartialBytes`]), then
    /// the served file's first `source` bytes ([`ServerInput::SourcePrefix`]), then report
    /// [`ServerInput::PrefixRead`].
    ReadPrefix {
        /// Bytes of the served file.
        source: u64,
        /// Bytes of the partial returned copy.
        partial: u64,
    },
    /// Open the file that receives the returned copy (version 4): the partial found, keeping its
    /// first `keep` bytes (verified), or a new one.
    OpenReturned {
        /// Bytes of the partial copy to keep.
        keep: u64,
    },
    /// Write the payload of the `Data` frame just handled to `stream`'s temporary file, passing
    /// each piece to [`ServerInput::Returned`] first.
    Write(Stream),
    /// Save `stream`'s temporary file under its final name and report [`ServerInput::Committed`].
    Commit(Stream),
    /// The returned copy differs from the original: compare the file's temporary file with the
    /// original and report where they first differ with [`ServerInput::Located`].
    Locate,
    /// The served file's digest, computed while sending (to reuse while the file is unchanged).
    Digested(FileDigest),
    /// A point for the user.
    Milestone(Milestone),
    /// The client's `End` claims other digests than what it returned (which was right): a buggy
    /// client, worth a warning.
    ClaimDiffers(DigestDiff),
    /// Close the data channel.
    CloseData,
    /// The session is over.
    Finish(Result<ServerOutcome, Failure>),
}

/// What a successful session proved.
#[derive(Debug)]
pub struct ServerOutcome {
    /// The protocol version spoken.
    pub version: u16,
    /// The served file's name, as sent.
    pub name: String,
    /// What was sent, verified by B, and returned identical.
    pub digest: Digest,
    /// From the client's `Accept` to its `Verdict`.
    pub data_time: Duration,
    /// From the start of the return leg to A's verdict on it.
    pub return_time: Duration,
    /// Where the legs went on from, if the transfer was resumed.
    pub resumed: Resumed,
    /// The vertex CSV's fate.
    pub csv: CsvResult,
    /// The original mesh's facts, when its CSV came back verified (version 6: B's agreed).
    pub mesh: Option<Box<MeshFacts>>,
}

/// The vertex CSV's fate in one session; none of these fails the session, whose file made its
/// round trip.
#[derive(Debug)]
pub enum CsvResult {
    /// Received, verified against the client's digests and A's own conversion, and saved.
    Saved {
        /// What was saved.
        digest: Digest,
        /// Its vertex lines, from A's own conversion.
        rows: u64,
    },
    /// None was due: the file is not STL, or the client has CSVs turned off.
    NotMade(String),
    /// The file is STL but the CSV did not arrive intact, or differs, or could not be made.
    Failed(CsvFailure),
}

#[derive(Debug)]
enum State {
    /// Waiting for the data channel's `Hello`.
    Hello,
    /// Waiting for the hub to take the token.
    Registering,
    /// Waiting for the return channel's `Hello`, then the data channel's `Ready`.
    Ready,
    /// Waiting for the driver to open the file.
    Opening,
    /// `Header` sent; waiting for `Accept` or `Refuse`.
    Accept(Box<Transfer>),
    /// A version-4 client's offer is being checked against the original.
    Prefix(Box<Transfer>, Box<PrefixCheck>),
    /// The file goes out and (version 2) comes back.
    Transfer(Box<Transfer>),
    /// Waiting for the CSV, a `Skip`, or a `Bye`.
    Csv(CsvState),
    /// Waiting (briefly) for `Bye`.
    Bye(Option<CsvResult>),
    /// Finished.
    Done,
}

#[derive(Debug)]
struct Transfer {
    size: u64,
    name: String,
    /// Hashes what is sent, unless the digest is known already.
    hasher: Option<Hasher>,
    /// Known from the cache, or once every byte is sent.
    digest: Option<Digest>,
    /// The CRC-32 of each piece of the file, known with the digest.
    chunks: Option<Arc<[u32]>>,
    sent: u64,
    /// The `Trailer` is out.
    trailer: bool,
    /// B's `Verdict(ok)` came.
    verdict: bool,
    /// The return stream, once it is offered (version 1) or the file accepted (version 2).
    ret: Option<Incoming>,
    /// B's `End` for the file, once it came.
    claimed: Option<Digest>,
    /// The returned copy is being renamed into place.
    committing: bool,
    /// The returned copy differs: `None` while the driver looks for where, then what it found.
    located: Option<Option<ByteRange>>,
    locating: bool,
    data_started: Instant,
    data_time: Duration,
    ret_started: Instant,
    resumed: Resumed,
}

/// What a version-4 client offered, and A's check of it: B's prefix must hash to B's digest, read
/// from the original; A's own partial returned copy must hash as the original's prefix of its
/// length. Whatever passes is not sent again; whatever fails is sent from the start.
#[derive(Debug)]
struct PrefixCheck {
    claim: Digest,
    /// A's partial returned copy is looked for, then this much of it is checked.
    partial: Option<u64>,
    /// The original's first bytes.
    source: Hasher,
    /// `source` as it was at `partial` bytes.
    at_partial: Option<Hasher>,
    /// The partial returned copy's first bytes.
    returned: Hasher,
}

#[derive(Debug)]
enum CsvState {
    /// Waiting for `Offer(1)`, `Skip` or `Bye`.
    Offer,
    /// Receiving it.
    Receiving(Box<Incoming>),
    /// All in and `End` came; waiting for A's own conversion.
    Checking { got: Digest, claimed: Digest },
    /// Verified; being renamed into place.
    Committing {
        /// What is being saved.
        digest: Digest,
        /// Its vertex lines, from A's own conversion.
        rows: u64,
    },
}

/// A's session with one client.
#[derive(Debug)]
pub struct ServerSession {
    params: ServerParams,
    state: State,
    version: u16,
    timers: Timers,
    actions: VecDeque<ServerAction>,
    /// The return channel's `Hello` came, so `Abort` reaches the client.
    ret_up: bool,
    /// The `Header` is out: B may be reading raw bytes, so nothing more is framed on TCP.
    mid_file: bool,
    data_open: bool,
    greeted: bool,
    expected: Option<ExpectedCsv>,
    file: Option<FileDone>,
    /// A failure waiting out the grace period: an `Abort` may still explain it.
    pending: Option<Failure>,
    /// Where the secured handshake is (version 5 with a secret).
    auth: Auth,
    /// The facts of the mesh B read (version 6).
    their_mesh: Option<Box<MeshFacts>>,
}

/// The secured handshake, on A's side.
#[derive(Debug, Default)]
enum Auth {
    /// No secret, or not yet started.
    #[default]
    Off,
    /// A's reply is ready for `Welcome`.
    Replied(Box<WelcomeAuth>),
    /// `Welcome` is out; B's `Confirm` is due before anything else.
    AwaitingConfirm,
    /// B's confirmation is being checked.
    Checking,
    /// Both proved the secret.
    Done,
}

impl Auth {
    fn take_reply(&mut self) -> Option<Box<WelcomeAuth>> {
        match std::mem::take(self) {
            Auth::Replied(r) => {
                *self = Auth::AwaitingConfirm;
                Some(r)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// Whether the client may go on to `Ready`: no secret, or proved.
    fn settled(&self) -> bool {
        matches!(self, Auth::Off | Auth::Done)
    }
}

impl ServerSession {
    /// A session on a freshly accepted connection.
    pub fn new(params: ServerParams, now: Instant) -> ServerSession {
        let timers = Timers::new(params.idle, now);
        ServerSession {
            params,
            state: State::Hello,
            version: VERSION,
            timers,
            actions: VecDeque::new(),
            ret_up: false,
            mid_file: false,
            data_open: true,
            greeted: false,
            expected: None,
            file: None,
            pending: None,
            auth: Auth::Off,
            their_mesh: None,
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    /// When [`ServerSession::handle_timeout`] is due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() { None } else { self.timers.deadline() }
    }

    /// Whether the client has shown itself a machinaftp client (a valid `Hello`).
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// The protocol version spoken (meaningful once greeted).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Raw bytes still to be written on the data channel (0 outside the data leg).
    pub fn raw_left(&self) -> u64 {
        match &self.state {
            State::Transfer(t) if !t.trailer => t.size - t.sent,
            _ => 0,
        }
    }

    /// Whether the raw bytes must pass through [`ServerInput::RawRead`] before they are sent: they
    /// are hashed unless the file's digest is known. When it is, the driver may hand the file to
    /// the socket without reading it.
    pub fn hashes_raw(&self) -> bool {
        matches!(&self.state, State::Transfer(t) if t.hasher.is_some())
    }

    /// Whether the data channel should be read for control frames.
    pub fn reads_data(&self) -> bool {
        self.data_open && !self.is_done()
    }

    /// How far the file's two legs are, while it travels.
    pub fn progress(&self) -> Option<crate::report::Progress> {
        match &self.state {
            State::Transfer(t) => Some(crate::report::Progress {
                size: t.size,
                data: t.sent,
                ret: t.ret.as_ref().map_or(0, Incoming::received),
            }),
            _ => None,
        }
    }

    /// Where the session is, for messages.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Hello | State::Registering => Phase::Handshake,
            State::Ready if !self.ret_up => Phase::ReturnHandshake,
            State::Ready | State::Opening | State::Accept(_) | State::Prefix(..) => Phase::Offer,
            State::Transfer(t) if !t.trailer => Phase::Data { role: Role::Server, done: t.sent, size: t.size },
            State::Transfer(t) if !t.verdict => Phase::Verdict,
            State::Transfer(t) => {
                Phase::Return { stream: Stream::File, done: t.ret.as_ref().map_or(0, Incoming::received), size: t.size }
            }
            State::Csv(CsvState::Receiving(r)) => {
                Phase::Return { stream: Stream::Csv, done: r.received(), size: r.size }
            }
            State::Csv(_) => Phase::Csv,
            State::Bye(_) | State::Done => Phase::Closing,
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: ServerInput<'_>) {
        if self.is_done() {
            return;
        }
        match input {
            ServerInput::Data(msg) => {
                self.timers.progress(now);
                self.on_data(now, msg);
            }
            ServerInput::DataUndecodable(e) => self.protocol(Violation::Undecodable(e)),
            ServerInput::DataClosed => self.on_data_closed(now),
            ServerInput::Registered => {
                if matches!(self.state, State::Registering) {
                    let topology = self.params.topology;
                    let auth = self.auth.take_reply();
                    self.send_data(DataMsg::Welcome { version: self.version, topology, auth });
                    self.state = State::Ready;
                }
            }
            ServerInput::TokenInUse => self.protocol(Violation::DuplicateToken),
            ServerInput::AuthReply(reply) => self.auth = Auth::Replied(reply),
            ServerInput::AuthRefused(e) => self.refuse_auth(&format!("authentication failed: {e}")),
            ServerInput::Authenticated => {
                self.timers.progress(now);
                self.auth = Auth::Done;
            }
            ServerInput::ReturnHello { version } => {
                self.timers.progress(now);
                self.on_return_hello(version);
            }
            ServerInput::Ret(msg) => {
                self.timers.progress(now);
                self.on_ret(now, msg);
            }
            ServerInput::RetUndecodable(e) => self.protocol(Violation::Undecodable(e)),
            ServerInput::Forged(why) => self.protocol(Violation::Forged(why)),
            ServerInput::RetFlooded => self.protocol(Violation::Flooded),
            ServerInput::SourceOpened { size, name, digest } => {
                if !matches!(self.state, State::Opening) {
                    return;
                }
                self.send_data(DataMsg::Header { size, name: name.clone() });
                // From here B may be reading raw bytes (it does right after its Accept), so a
                // failure can no longer be framed on TCP: it is told on the return channel.
                self.mid_file = true;
                self.state = State::Accept(Box::new(Transfer {
                    size,
                    name,
                    hasher: digest.is_none().then(|| Hasher::chunked(chunk_size(size))),
                    chunks: digest.as_ref().map(|d| d.chunks.clone()),
                    digest: digest.map(|d| d.digest),
                    sent: 0,
                    trailer: false,
                    verdict: false,
                    ret: None,
                    claimed: None,
                    committing: false,
                    located: None,
                    locating: false,
                    data_started: now,
                    data_time: Duration::ZERO,
                    ret_started: now,
                    resumed: Resumed::default(),
                }));
            }
            ServerInput::PartialFound { len } => {
                if let State::Prefix(_, c) = &mut self.state
                    && c.partial.is_none()
                {
                    let frame = frame_size(self.version) as u64;
                    let partial = len.min(c.claim.size) / frame * frame;
                    c.partial = Some(partial);
                    if partial == 0 {
                        c.at_partial = Some(c.source.clone());
                    }
                    let source = c.claim.size;
                    self.actions.push_back(ServerAction::ReadPrefix { source, partial });
                }
            }
            ServerInput::PartialBytes(bytes) => {
                if let State::Prefix(_, c) = &mut self.state {
                    let room = c.partial.unwrap_or(0).saturating_sub(c.returned.size());
                    c.returned.update(at_most(bytes, room));
                }
            }
            ServerInput::SourcePrefix(mut bytes) => {
                if let State::Prefix(_, c) = &mut self.state {
                    bytes = at_most(bytes, c.claim.size.saturating_sub(c.source.size()));
                    // Keep the hasher's state where A's partial copy ends, to go on from there.
                    let to_partial = c.partial.unwrap_or(0).saturating_sub(c.source.size());
                    if c.at_partial.is_none() && to_partial <= bytes.len() as u64 {
                        let (head, tail) = bytes.split_at(to_partial as usize);
                        c.source.update(head);
                        c.at_partial = Some(c.source.clone());
                        bytes = tail;
                    }
                    c.source.update(bytes);
                }
            }
            ServerInput::PrefixRead => self.on_prefix_read(now),
            ServerInput::RawRead(bytes) => {
                if let State::Transfer(t) = &mut self.state
                    && let Some(h) = &mut t.hasher
                {
                    h.update(bytes);
                }
            }
            ServerInput::Returned(bytes) => match &mut self.state {
                State::Transfer(t) => {
                    if let Some(r) = &mut t.ret {
                        r.hash(bytes);
                    }
                }
                State::Csv(CsvState::Receiving(r)) => r.hash(bytes),
                _ => {}
            },
            ServerInput::RawWritten(n) => {
                self.timers.progress(now);
                if let State::Transfer(t) = &mut self.state {
                    t.sent = t.sent.saturating_add(n).min(t.size);
                }
            }
            ServerInput::RawDone => self.on_raw_done(now),
            ServerInput::Committed(stream) => self.on_committed(now, stream),
            ServerInput::Located(first) => {
                if let State::Transfer(t) = &mut self.state
                    && t.locating
                {
                    t.located = Some(first);
                    self.check_return();
                }
            }
            ServerInput::ExpectedCsv(e) => {
                self.expected = Some(e);
                if let State::Csv(CsvState::Checking { got, claimed }) = self.state {
                    self.timers.keepalive(false, now);
                    self.timers.watch(true, now);
                    self.check_csv(now, got, claimed);
                }
            }
            ServerInput::Local(f) => self.fail(Failure::Local(f)),
            ServerInput::Stop => self.fail(Failure::Interrupted),
        }
    }

    /// Handles whatever timer is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.timers.due(now) {
            match due {
                Due::KeepAlive => self.send_ret(ReturnMsg::KeepAlive),
                Due::Grace if matches!(self.state, State::Bye(_)) => {
                    // The client's Bye is a courtesy; its verdicts are all in.
                    let State::Bye(csv) = &mut self.state else { unreachable!() };
                    let csv = csv.take();
                    self.finish_ok(csv);
                }
                Due::Grace | Due::Idle => {
                    let during = self.phase();
                    let f = self.timers.failure(due, &mut self.pending, during);
                    self.fail(f);
                }
            }
            if self.is_done() {
                return;
            }
        }
    }

    fn on_data(&mut self, now: Instant, msg: DataMsg) {
        let got = msg.kind();
        match (&mut self.state, msg) {
            // The client found that A does not hold its secret.
            (_, DataMsg::Error { code: ErrorCode::Auth, reason }) => {
                self.fail(Failure::Auth { reason: format!("the client refused this server: {reason}") });
            }
            // Whatever the state: the client gives up and says why.
            (_, DataMsg::Error { reason, .. }) => {
                let during = self.phase();
                self.fail(Failure::Refused { during, reason });
            }
            (State::Hello, DataMsg::Hello { version, token, return_port, auth }) => {
                if version < MIN_VERSION {
                    let theirs = version;
                    let ours = format!("{MIN_VERSION} to {VERSION}");
                    let reason = format!("client speaks protocol version {theirs}; this server speaks {ours}");
                    self.send_data(DataMsg::Error { code: ErrorCode::Version, reason });
                    self.fail(Failure::Version { ours, theirs });
                    return;
                }
                // The highest version both speak; a newer client may step down to it.
                self.version = version.min(VERSION);
                self.greeted = true;
                match (self.params.secured, auth) {
                    (true, Some(client_msg)) if version >= AUTH_VERSION => {
                        self.actions.push_back(ServerAction::Authenticate { token, client_msg });
                    }
                    (true, _) => {
                        return self.refuse_auth(
                            "this server requires a secret: give the client the server's --secret (or --secret-file, \
                             MACHINAFTP_SECRET)",
                        );
                    }
                    (false, Some(_)) => {
                        return self.refuse_auth(
                            "this server has no secret, and will not pretend to check the client's: run it with the same \
                             --secret, or the client without one",
                        );
                    }
                    (false, None) => {}
                }
                if matches!(self.params.topology, Topology::Remote) && return_port == 0 {
                    self.fail(Failure::NoReturnPort);
                    return;
                }
                self.actions.push_back(ServerAction::Register { token, return_port });
                self.state = State::Registering;
            }
            (State::Ready, DataMsg::Confirm { tag }) if matches!(self.auth, Auth::AwaitingConfirm) => {
                self.auth = Auth::Checking;
                self.actions.push_back(ServerAction::CheckConfirm { tag });
            }
            (State::Ready, DataMsg::Ready) if !self.auth.settled() => {
                self.protocol(Violation::Unexpected { expected: "Confirm", got: "Ready" });
            }
            (State::Ready, DataMsg::Ready) if self.ret_up => {
                self.actions.push_back(ServerAction::OpenSource);
                self.state = State::Opening;
            }
            (State::Ready, DataMsg::Ready) => self.protocol(Violation::ReadyTooEarly),
            // An Accept without an offer (any version) starts from the beginning.
            (State::Accept(_), DataMsg::Accept) => {
                let State::Accept(t) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
                self.start_transfer(now, t, 0, None);
            }
            (State::Accept(t), DataMsg::AcceptFrom { transfer, prefix }) if self.version >= RESUME_VERSION => {
                // Whole frames only (or the whole file), so the returned frames line up as ever.
                let frame = frame_size(self.version) as u64;
                if prefix.size > t.size || (!prefix.size.is_multiple_of(frame) && prefix.size != t.size) {
                    let limit = t.size;
                    return self.protocol(Violation::BadResume { at: prefix.size, limit });
                }
                let check = PrefixCheck {
                    claim: prefix,
                    partial: None,
                    source: Hasher::chunked(chunk_size(t.size)),
                    at_partial: None,
                    returned: Hasher::new(),
                };
                let State::Accept(t) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
                self.state = State::Prefix(t, Box::new(check));
                self.actions.push_back(ServerAction::FindPartial { transfer });
            }
            (State::Accept(_), DataMsg::Refuse { reason }) => {
                self.fail(Failure::Refused { during: Phase::Offer, reason });
            }
            (State::Transfer(t), DataMsg::Verdict { ok, reason }) if t.trailer && !t.verdict => {
                if !ok {
                    self.fail(Failure::PeerMismatch { leg: Leg::Data, reason });
                    return;
                }
                t.verdict = true;
                t.data_time = now.saturating_duration_since(t.data_started);
                let digest = t.digest.expect("the digest is known once the Trailer is out");
                let leg = LegDone { digest, took: t.data_time, from: t.resumed.from };
                self.actions.push_back(ServerAction::Milestone(Milestone::DataLeg(leg)));
                if t.claimed.is_some() {
                    self.check_return();
                }
            }
            _ => self.unexpected(got),
        }
    }

    /// The data leg starts at `from` (and, version 2 on, the return leg at what `returned` holds).
    fn start_transfer(&mut self, now: Instant, mut t: Box<Transfer>, from: u64, returned: Option<Hasher>) {
        t.data_started = now;
        t.sent = from;
        if self.version >= 2 {
            // Version 2: the file comes back while it goes out, under a window granted now.
            let window = self.window();
            let frame = frame_size(self.version);
            t.ret = Some(match returned {
                Some(h) => Incoming::resumed(t.size, frame, h),
                None => Incoming::new(t.size, frame),
            });
            t.ret_started = now;
            let ret_from = t.ret.as_ref().map_or(0, Incoming::received);
            t.resumed = Resumed { from, ret_from };
            let open = if self.version >= RESUME_VERSION {
                ServerAction::OpenReturned { keep: ret_from }
            } else {
                ServerAction::OpenSink(Stream::File)
            };
            self.actions.push_back(open);
            self.send_ret(ReturnMsg::Credit { stream: Stream::File, bytes: window });
        }
        self.state = State::Transfer(t);
        self.actions.push_back(ServerAction::StartRaw { from });
    }

    /// Both prefixes are read: what passed is not sent again (V4-resume).
    fn on_prefix_read(&mut self, now: Instant) {
        let State::Prefix(..) = &self.state else { return };
        let State::Prefix(mut t, c) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
        // Reading the prefixes was this side's work, not the client's silence.
        self.timers.progress(now);
        let PrefixCheck { claim, partial, source, at_partial, returned } = *c;
        let b_holds = source.size() == claim.size && source.finish() == claim;
        let from = if b_holds { claim.size } else { 0 };
        // A's own partial copy counts only if it is the original's prefix, and within B's.
        let kept = at_partial.filter(|h| {
            b_holds
                && h.size() > 0
                && Some(h.size()) == partial
                && returned.size() == h.size()
                && h.finish() == returned.finish()
        });
        let ret_from = kept.as_ref().map_or(0, Hasher::size);
        if t.hasher.is_some() {
            // The digest is being learned: the prefix read counts if it is what goes out.
            t.hasher = Some(if b_holds { source } else { Hasher::chunked(chunk_size(t.size)) });
        }
        self.send_data(DataMsg::Resume { from, ret_from });
        self.start_transfer(now, t, from, kept);
    }

    fn on_return_hello(&mut self, version: u16) {
        if !matches!(self.state, State::Hello | State::Registering) && version != self.version {
            let reason = format!("return channel Hello speaks version {version}; this session speaks {}", self.version);
            self.send_ret(ReturnMsg::Abort { reason });
            self.ret_up = true;
            let ours = self.version.to_string();
            self.fail(Failure::Version { ours, theirs: version });
            return;
        }
        // A repeated Hello is answered again and otherwise ignored.
        self.ret_up = true;
        self.send_ret(ReturnMsg::HelloAck { version: self.version });
    }

    fn on_ret(&mut self, now: Instant, msg: ReturnMsg<'_>) {
        let got = msg.kind();
        match (&mut self.state, msg) {
            (_, ReturnMsg::KeepAlive) => {}
            (_, ReturnMsg::Abort { reason }) => {
                let during = self.phase();
                self.pending = None;
                self.fail(Failure::Refused { during, reason });
            }
            (State::Transfer(t), ReturnMsg::Offer { stream: Stream::File, size })
                if self.version == 1 && t.verdict && t.ret.is_none() =>
            {
                if size != t.size {
                    let f = Failure::SizeMismatch { leg: Leg::Return, offered: size, sent: t.size };
                    self.send_ret(ReturnMsg::Result { stream: Stream::File, ok: false, reason: f.to_string() });
                    self.fail(f);
                    return;
                }
                t.ret = Some(Incoming::new(size, frame_size(1)));
                t.ret_started = now;
                self.actions.push_back(ServerAction::OpenSink(Stream::File));
                self.send_ret(ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V1 });
            }
            (State::Transfer(t), ReturnMsg::Data { stream: Stream::File, offset, payload }) if t.claimed.is_none() => {
                if let Some(ret) = &mut t.ret {
                    let taken = ret.accept(offset, payload.len() as u64).map(|()| payload.len() as u64);
                    self.take_frame(Stream::File, taken);
                } else {
                    self.unexpected(got);
                }
            }
            (State::Transfer(t), ReturnMsg::End { stream: Stream::File, crc32, blake3 }) if t.claimed.is_none() => {
                let Some(ret) = &t.ret else { return self.unexpected(got) };
                match ret.end() {
                    Ok(_) => {
                        t.claimed = Some(Digest { size: ret.size, crc32, blake3 });
                        // The channels are independent: End may overtake the Verdict.
                        if t.verdict {
                            self.check_return();
                        }
                    }
                    Err(v) => self.protocol(v),
                }
            }
            (State::Csv(CsvState::Offer), ReturnMsg::Offer { stream: Stream::Csv, size }) => {
                let file = self.file.as_ref().map_or(0, |f| f.digest.size);
                // A CSV line is at most 138 bytes (three of f32::MAX's 45 characters, two
                // commas, a newline) and every vertex takes at least 13 bytes of STL, so no CSV
                // of a valid STL reaches 11 times its size: refuse before a byte is written.
                if size > file.saturating_mul(11).saturating_add(64) {
                    let f = CsvFailure::TooBig { size, file };
                    self.send_ret(ReturnMsg::Result { stream: Stream::Csv, ok: false, reason: f.to_string() });
                    self.await_bye(now, Some(CsvResult::Failed(f)));
                    return;
                }
                let window = self.window();
                self.state = State::Csv(CsvState::Receiving(Box::new(Incoming::new(size, frame_size(self.version)))));
                self.actions.push_back(ServerAction::OpenSink(Stream::Csv));
                self.send_ret(ReturnMsg::Credit { stream: Stream::Csv, bytes: window });
            }
            (State::Csv(CsvState::Receiving(r)), ReturnMsg::Data { stream: Stream::Csv, offset, payload }) => {
                let taken = r.accept(offset, payload.len() as u64).map(|()| payload.len() as u64);
                self.take_frame(Stream::Csv, taken);
            }
            (State::Csv(CsvState::Receiving(r)), ReturnMsg::End { stream: Stream::Csv, crc32, blake3 }) => {
                let got = match r.end() {
                    Ok(got) => got,
                    Err(v) => return self.protocol(v),
                };
                let claimed = Digest { size: r.size, crc32, blake3 };
                if self.expected.is_some() {
                    self.check_csv(now, got, claimed);
                } else {
                    // A's own conversion is still running: say so rather than go quiet.
                    self.state = State::Csv(CsvState::Checking { got, claimed });
                    self.timers.watch(false, now);
                    self.timers.keepalive(true, now);
                }
            }
            (State::Csv(CsvState::Offer), ReturnMsg::Mesh(m)) if self.version >= MESH_VERSION => {
                self.their_mesh = Some(m)
            }
            (State::Csv(CsvState::Offer), ReturnMsg::Skip { stream: Stream::Csv, failed, reason }) => {
                let csv = if failed {
                    CsvResult::Failed(CsvFailure::ClientCouldNot(reason))
                } else {
                    CsvResult::NotMade(reason)
                };
                self.await_bye(now, Some(csv));
            }
            (State::Csv(CsvState::Offer), ReturnMsg::Bye) => {
                self.finish_ok(Some(CsvResult::NotMade("the client sent none".into())));
            }
            (State::Bye(csv), ReturnMsg::Bye) => {
                let csv = csv.take();
                self.finish_ok(csv);
            }
            // Credits and chatter after the last verdict do not matter.
            (State::Bye(_), _) => {}
            _ => self.unexpected(got),
        }
    }

    /// A `Data` frame of `stream` passed its checks (its length) or broke a rule: the driver writes
    /// it and its length is granted back, or the session ends.
    fn take_frame(&mut self, stream: Stream, taken: Result<u64, Violation>) {
        match taken {
            Ok(bytes) => {
                self.actions.push_back(ServerAction::Write(stream));
                self.send_ret(ReturnMsg::Credit { stream, bytes });
            }
            Err(v) => self.protocol(v),
        }
    }

    fn window(&self) -> u64 {
        if self.version >= 2 { self.params.window } else { WINDOW_V1 }
    }

    fn on_data_closed(&mut self, now: Instant) {
        self.data_open = false;
        match &self.state {
            // B half-closes once it has given its verdict; nothing more is due on TCP.
            State::Transfer(t) if t.verdict => {}
            State::Csv(_) | State::Bye(_) => {}
            // Mid-file the reason cannot be framed on TCP: it may be on its way as an Abort.
            State::Accept(_) | State::Transfer(_) if self.ret_up => {
                if !self.timers.in_grace() {
                    self.pending = Some(Failure::Closed { during: self.phase() });
                    self.timers.grace(Some(ABORT_GRACE), now);
                }
            }
            _ => {
                let during = self.phase();
                self.fail(Failure::Closed { during });
            }
        }
    }

    fn on_raw_done(&mut self, now: Instant) {
        let State::Transfer(t) = &mut self.state else { return };
        if t.trailer {
            return;
        }
        t.sent = t.size;
        let (digest, chunks) = match (t.digest, t.chunks.clone(), t.hasher.take()) {
            (Some(d), Some(c), _) => (d, c),
            (_, _, Some(h)) => {
                let known = FileDigest { digest: h.finish(), chunks: h.chunk_crcs().into() };
                self.actions.push_back(ServerAction::Digested(known.clone()));
                (known.digest, known.chunks)
            }
            _ => unreachable!("a transfer hashes unless its digest is known"),
        };
        t.digest = Some(digest);
        t.trailer = true;
        // Progress: the peer now owes a Verdict, and gets a full timeout for it.
        self.timers.progress(now);
        // Version 4 adds the pieces' CRC-32s, for B to say where its copy differs if it does.
        let chunks = if self.version >= CHUNKS_VERSION { chunks.to_vec() } else { Vec::new() };
        self.send_data(DataMsg::Trailer { crc32: digest.crc32, blake3: digest.blake3, chunks });
    }

    /// The file is back whole and B verified the data leg: compare with what was sent.
    fn check_return(&mut self) {
        let State::Transfer(t) = &mut self.state else { return };
        let (Some(ret), Some(claimed), Some(sent)) = (&t.ret, t.claimed, t.digest) else { return };
        if t.committing {
            return;
        }
        let got = ret.digest();
        // What came back is compared with what was sent, never with what B claims.
        if let Some(mut diff) = DigestDiff::check(got, sent) {
            // Where, not only whether: the driver compares the saved bytes with the original first.
            let Some(first) = t.located else {
                if !t.locating {
                    t.locating = true;
                    self.actions.push_back(ServerAction::Locate);
                }
                return;
            };
            diff.first = first.map(|r| Box::new(Locus::Exact(r)));
            let f = Failure::Mismatch { leg: Leg::Return, what: "returned copy", diff };
            self.send_ret(ReturnMsg::Result { stream: Stream::File, ok: false, reason: mismatch_reason(&f) });
            self.fail(f);
            return;
        }
        if let Some(diff) = DigestDiff::check(claimed, sent) {
            self.actions.push_back(ServerAction::ClaimDiffers(diff));
        }
        t.committing = true;
        self.actions.push_back(ServerAction::Commit(Stream::File));
    }

    fn on_committed(&mut self, now: Instant, stream: Stream) {
        match (&mut self.state, stream) {
            (State::Transfer(t), Stream::File) if t.committing => {
                let digest = t.digest.expect("known when committing");
                let return_time = now.saturating_duration_since(t.ret_started);
                let leg = LegDone { digest, took: return_time, from: t.resumed.ret_from };
                self.file = Some(FileDone {
                    name: std::mem::take(&mut t.name),
                    digest,
                    data_time: t.data_time,
                    return_time,
                    resumed: t.resumed,
                });
                self.send_ret(ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() });
                self.actions.push_back(ServerAction::Milestone(Milestone::ReturnLeg(leg)));
                self.state = State::Csv(CsvState::Offer);
            }
            (State::Csv(CsvState::Committing { digest, rows }), Stream::Csv) => {
                let (digest, rows) = (*digest, *rows);
                self.send_ret(ReturnMsg::Result { stream: Stream::Csv, ok: true, reason: String::new() });
                self.await_bye(now, Some(CsvResult::Saved { digest, rows }));
            }
            _ => {}
        }
    }

    /// The CSV must arrive as B wrote it and equal what A derives from its own original.
    fn check_csv(&mut self, now: Instant, got: Digest, claimed: Digest) {
        let mut rows = 0;
        let problem = match (&self.expected, DigestDiff::check(got, claimed)) {
            (_, Some(diff)) => Some(CsvFailure::Damaged(diff)),
            (Some(ExpectedCsv::Digest { digest: own, rows: r, mesh: ours }), None) => {
                rows = *r;
                DigestDiff::check(got, *own)
                    .map(CsvFailure::DiffersFromOwn)
                    .or_else(|| self.mesh_problem(ours.as_deref()))
            }
            (Some(ExpectedCsv::NotStl), None) => Some(CsvFailure::NotStl),
            (Some(ExpectedCsv::Unknown(why)), None) => Some(CsvFailure::CannotCheck(why.clone())),
            (None, None) => return,
        };
        match problem {
            Some(f) => {
                self.send_ret(ReturnMsg::Result { stream: Stream::Csv, ok: false, reason: f.to_string() });
                self.await_bye(now, Some(CsvResult::Failed(f)));
            }
            None => {
                self.state = State::Csv(CsvState::Committing { digest: got, rows });
                self.actions.push_back(ServerAction::Commit(Stream::Csv));
            }
        }
    }

    /// V6-mesh: B's facts must be A's own (a client of an older version sends none).
    fn mesh_problem(&self, ours: Option<&MeshFacts>) -> Option<CsvFailure> {
        if self.version < MESH_VERSION {
            return None;
        }
        match (ours, self.their_mesh.as_deref()) {
            (Some(o), Some(t)) => {
                let d = o.differences(t);
                (!d.is_empty()).then(|| CsvFailure::MeshDiffers(d.join("; ")))
            }
            (Some(_), None) => Some(CsvFailure::MeshDiffers("the client sent no facts of it".into())),
            (None, _) => None,
        }
    }

    fn await_bye(&mut self, now: Instant, csv: Option<CsvResult>) {
        self.state = State::Bye(csv);
        self.timers.grace(Some(BYE_WAIT.min(self.params.idle)), now);
    }

    fn finish_ok(&mut self, csv: Option<CsvResult>) {
        let Some(file) = self.file.take() else { return };
        let csv = csv.unwrap_or(CsvResult::NotMade("the client sent none".into()));
        self.state = State::Done;
        self.actions.push_back(ServerAction::CloseData);
        self.actions.push_back(ServerAction::Finish(Ok(ServerOutcome {
            version: self.version,
            name: file.name,
            digest: file.digest,
            data_time: file.data_time,
            return_time: file.return_time,
            resumed: file.resumed,
            mesh: match (&csv, &self.expected) {
                (CsvResult::Saved { .. }, Some(ExpectedCsv::Digest { mesh, .. })) => mesh.clone(),
                _ => None,
            },
            csv,
        })));
    }

    fn unexpected(&mut self, got: &'static str) {
        let expected = self.expecting();
        self.protocol(Violation::Unexpected { expected, got });
    }

    /// What the protocol allows next, for messages.
    fn expecting(&self) -> &'static str {
        match &self.state {
            State::Hello => "Hello",
            State::Registering | State::Opening | State::Prefix(..) => "nothing yet",
            State::Ready if !self.ret_up => "the return channel's Hello",
            State::Ready => "Ready",
            State::Accept(_) => "Accept or Refuse",
            State::Transfer(t) if !t.trailer && self.version >= 2 => "Data or End on the return channel",
            State::Transfer(t) if !t.trailer => "nothing during the data leg",
            State::Transfer(t) if !t.verdict => "Verdict",
            State::Transfer(t) if t.ret.is_none() => "Offer",
            State::Transfer(_) => "Data or End",
            State::Csv(CsvState::Offer) => "a CSV Offer, Skip or Bye",
            State::Csv(CsvState::Receiving(_)) => "Data or End",
            State::Csv(_) => "nothing until the CSV's verdict",
            State::Bye(_) | State::Done => "Bye",
        }
    }

    fn protocol(&mut self, violation: Violation) {
        let during = self.phase();
        self.fail(Failure::Protocol { during, violation });
    }

    fn send_data(&mut self, msg: DataMsg) {
        self.actions.push_back(ServerAction::SendData(msg));
    }

    fn send_ret(&mut self, msg: ReturnMsg<'static>) {
        self.actions.push_back(ServerAction::SendRet(msg));
    }

    /// Ends the session: tells the client why on every channel it still reads (unless it
    /// caused or knows it), closes the data channel and finishes.
    /// Ends a session whose client did not (or could not) prove the secret: `Error` code 6, in
    /// the clear (nothing is sealed yet on the data channel), and no other word.
    fn refuse_auth(&mut self, reason: &str) {
        self.send_data(DataMsg::Error { code: ErrorCode::Auth, reason: reason.to_owned() });
        self.fail(Failure::Auth { reason: reason.to_owned() });
    }

    fn fail(&mut self, f: Failure) {
        if self.is_done() {
            return;
        }
        // Frames queued still go out and milestones reached stay reached; other work is moot.
        self.actions
            .retain(|a| matches!(a, ServerAction::SendData(_) | ServerAction::SendRet(_) | ServerAction::Milestone(_)));
        if !f.peer_knows() {
            let reason = match &f {
                Failure::Interrupted => "the server is shutting down; try again later".to_owned(),
                f => f.chain(),
            };
            if self.data_open && !self.mid_file {
                self.send_data(DataMsg::Error { code: wire_code(&f), reason: reason.clone() });
            }
            if self.ret_up {
                self.send_ret(ReturnMsg::Abort { reason });
            }
        }
        self.state = State::Done;
        self.actions.push_back(ServerAction::CloseData);
        self.actions.push_back(ServerAction::Finish(Err(f)));
    }
}

/// The reason in a negative `Result`, without the "checksum mismatch on the return leg" the
/// client adds itself.
/// The first `n` of `bytes` (all of them if fewer): a driver's piece may run past what is asked.
fn at_most(bytes: &[u8], n: u64) -> &[u8] {
    &bytes[..bytes.len().min(usize::try_from(n).unwrap_or(usize::MAX))]
}

fn mismatch_reason(f: &Failure) -> String {
    match f {
        Failure::Mismatch { what, diff, .. } => format!("{what} differs from what was sent: {diff}"),
        f => f.to_string(),
    }
}
