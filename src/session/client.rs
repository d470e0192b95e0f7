//! B's state machine, protocol version 2: the handshake on both channels, then the file arrives
//! on the data channel and goes back on the return channel at the same time, frame by frame as it
//! is hashed, under A's credit; B commits its copy only after the `Trailer` matched, and ends the
//! file's return with the digests it verified. Then the vertex CSV, or word of why there is none.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::integrity::{Digest, Hasher, chunk_size, first_differing_chunk};
use crate::protocol::data::{DataMsg, ErrorCode, Topology, WelcomeAuth};
use crate::protocol::ret::{ReturnMsg, Stream, frame_size};
use crate::protocol::{AUTH_VERSION, DecodeError, MESH_VERSION, RESUME_VERSION, Token, VERSION};
use crate::secure::{AuthError, CONFIRM_LEN, PAKE_MSG_LEN};
use crate::stl::mesh::MeshFacts;

/// The oldest server version this client steps down to: version 2 has the full-duplex round trip
/// this machine runs; version 1's sequence is another one.
const OLDEST_SERVER: u16 = 2;

use super::failure::{ByteRange, CsvFailure, DigestDiff, Failure, Leg, LocalFailure, Locus, Phase, Role, Violation};
use super::streams::Outgoing;
use super::timers::{Due, Timers};
use super::{ABORT_GRACE, FileDone, LegDone, Milestone, PENDING_FRAMES, Resumed, wire_code};

/// What B's machine needs to know.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// How long A may make no progress.
    pub idle: Duration,
    /// The session token presented on both channels.
    pub token: Token,
    /// The port B's return socket is bound to (0: not bound).
    pub return_port: u16,
    /// B's SPAKE2 message, when B holds a secret (version 5): the driver holds the handshake.
    pub auth: Option<[u8; PAKE_MSG_LEN]>,
}

/// Everything that can happen to B's session.
#[derive(Debug)]
pub enum ClientInput<'a> {
    /// A control frame arrived on the data channel.
    Data(DataMsg),
    /// Bytes on the data channel that are not a frame.
    DataUndecodable(DecodeError),
    /// The data channel closed.
    DataClosed,
    /// A frame from A on the return channel.
    Ret(ReturnMsg<'a>),
    /// A sealed record (data channel) or message (return channel) that does not open.
    Forged(String),
    /// A proved the secret (after [`ClientAction::Authenticate`]); this is B's confirmation,
    /// for `Confirm`.
    Authenticated {
        /// B's key-confirmation tag.
        tag: [u8; CONFIRM_LEN],
        /// What the return channel's `Hello` carries from here on (V5-return-token).
        ret_token: Token,
    },
    /// A did not prove the secret (after [`ClientAction::Authenticate`]).
    AuthRefused(AuthError),
    /// A return-channel frame that does not decode.
    RetUndecodable(DecodeError),
    /// Bytes of the partial copy kept from an interrupted attempt, in order from its start
    /// (after [`ClientAction::PrepareOutput`], before [`ClientInput::OutputReady`]).
    PrefixBytes(&'a [u8]),
    /// The output's temporary file exists, there is room for the file, and it holds the prefix
    /// just passed in `PrefixBytes` (possibly nothing) under this transfer id.
    OutputReady {
        /// Identifies the transfer across attempts.
        transfer: [u8; 16],
    },
    /// Raw file bytes arrived (they are hashed here).
    Raw(&'a [u8]),
    /// `n` received bytes are saved and held ready to go back.
    Saved(u64),
    /// The received file is saved under its final name.
    Committed,
    /// The CSV is made and saved.
    CsvMade {
        /// The mesh's facts, gathered in the same pass.
        mesh: Option<Box<MeshFacts>>,
        /// Its size.
        size: u64,
        /// Its digest, computed while writing it.
        digest: Digest,
        /// Vertex lines.
        rows: u64,
    },
    /// No CSV is due, and why.
    CsvNone(String),
    /// The CSV could not be made: a [`Failure::Csv`] for an invalid STL, a [`Failure::Local`]
    /// when it could not be written.
    CsvFailed(Failure),
    /// Local work failed.
    Local(LocalFailure),
    /// SIGINT/SIGTERM.
    Stop,
}

/// What B's driver must do.
#[derive(Debug)]
pub enum ClientAction {
    /// Send a control frame on the data channel.
    SendData(DataMsg),
    /// Every client slot of the server is taken: B waits in its line at `position` (1 = next).
    Queued {
        /// Place in the line.
        position: u32,
    },
    /// Send a control frame on the return channel.
    SendRet(ReturnMsg<'static>),
    /// Finish the secured handshake with A's half from `Welcome`; report
    /// [`ClientInput::Authenticated`] or [`ClientInput::AuthRefused`].
    Authenticate(Box<WelcomeAuth>),
    /// From here on, seal and open both channels with the session's keys (after `Confirm`, in
    /// the clear, is queued; the return channel's `Hello` stays clear: A's hub routes by it).
    Secure,
    /// Keep only the return-channel wiring A announced.
    Wire(Topology),
    /// Check for room and open the output's partial copy (the one an interrupted attempt left, or
    /// a new one), pass what it holds, whole frames or the whole file, to
    /// [`ClientInput::PrefixBytes`] (nothing, unless `resume`), and report
    /// [`ClientInput::OutputReady`].
    PrepareOutput {
        /// The server resumes transfers (version 4 on).
        resume: bool,
        /// The file's size.
        size: u64,
        /// Its name, for display only: never a path.
        name: String,
    },
    /// The server answered the offer: raw bytes come from `from` (the partial copy keeps its
    /// first `from` bytes: all it held, or nothing), and the file goes back from `ret_from` (frames
    /// before `from` are read from the partial copy).
    ResumeAt {
        /// Where the raw bytes start.
        from: u64,
        /// Where the return starts.
        ret_from: u64,
    },
    /// Send the next `len` bytes of `stream`, from `offset`, as one `Data` frame.
    SendFrame {
        /// The file or the CSV.
        stream: Stream,
        /// Where the frame starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Save the received file under its final name; report [`ClientInput::Committed`].
    Commit,
    /// Convert the saved file to CSV (if it is STL and a CSV is wanted); report the result.
    MakeCsv,
    /// A point for the user.
    Milestone(Milestone),
    /// Close the data channel.
    CloseData,
    /// The session is over.
    Finish(Result<ClientOutcome, Failure>),
}

/// What a successful round trip proved.
#[derive(Debug, Clone)]
pub struct ClientOutcome {
    /// The name A gave the file (informational).
    pub name: String,
    /// The file, verified on arrival and by A on return.
    pub digest: Digest,
    /// From `Accept` to the verified `Trailer`.
    pub data_time: Duration,
    /// From the first returned frame to A's verdict.
    pub return_time: Duration,
    /// Where the legs went on from, if the transfer was resumed.
    pub resumed: Resumed,
    /// The vertex CSV's fate.
    pub csv: CsvReturned,
    /// The mesh's facts, when its CSV was returned (and, version 6, A found the same).
    pub mesh: Option<Box<MeshFacts>>,
}

/// What became of the vertex CSV in a successful round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvReturned {
    /// Made, returned and verified by A.
    Returned {
        /// What was sent (its size included).
        digest: Digest,
        /// Vertex lines.
        rows: u64,
    },
    /// Not made, and not expected: the file is not STL, or CSVs are off.
    NotMade(String),
    /// Made and kept here, not returned: the Python version's protocol carries no CSV.
    Local {
        /// What was written.
        digest: Digest,
        /// Vertex lines.
        rows: u64,
    },
}

#[derive(Debug)]
enum DataState {
    /// `Accept` sent with the offer; waiting for A's `Resume`.
    Offered,
    /// Raw bytes still coming.
    Raw,
    /// All bytes in; waiting for the `Trailer`.
    Trailer,
    /// The `Trailer` matched; the copy is being saved under its final name.
    Committing(Digest),
    /// Saved and the `Verdict(ok)` sent.
    Verified(Digest),
}

#[derive(Debug)]
struct Transfer {
    name: String,
    hasher: Hasher,
    data: DataState,
    out: Outgoing,
    data_started: Instant,
    data_time: Duration,
    ret_started: Option<Instant>,
    /// Where this attempt's legs start (bytes before `from` are on disk, not in buffers).
    resumed: Resumed,
}

#[derive(Debug)]
enum CsvState {
    /// The CSV is being made.
    Making,
    /// Sending it.
    Sending { out: Outgoing, digest: Digest, rows: u64 },
    /// `End` sent; waiting for A's `Result`.
    Result { digest: Digest, rows: u64 },
}

#[derive(Debug)]
enum State {
    Welcome,
    /// A's half of the secured handshake is being checked (the version and wiring it announced
    /// wait for the outcome).
    Authenticating {
        version: u16,
        topology: Topology,
    },
    HelloAck,
    Header,
    Preparing {
        size: u64,
        name: String,
        /// Hashes the partial copy's prefix.
        prefix: Box<Hasher>,
    },
    Transfer(Box<Transfer>),
    /// `End` for the file sent; waiting for A's `Result`.
    FileResult(Box<Transfer>),
    Csv(CsvState),
    Done,
}

/// What the CSV converter reported, kept until the file's return is verified.
#[derive(Debug)]
enum CsvReady {
    Made { size: u64, digest: Digest, rows: u64, mesh: Option<Box<MeshFacts>> },
    None(String),
    Failed(Failure),
}

/// B's session.
#[derive(Debug)]
pub struct ClientSession {
    params: ClientParams,
    state: State,
    timers: Timers,
    actions: VecDeque<ClientAction>,
    ret_up: bool,
    data_open: bool,
    /// The version spoken: this build's, or an older server's.
    version: u16,
    csv: Option<CsvReady>,
    /// The mesh's facts, from the CSV's conversion.
    mesh: Option<Box<MeshFacts>>,
    file: Option<FileDone>,
    pending: Option<Failure>,
}

impl ClientSession {
    /// Starts a session: the first action is the data channel's `Hello`.
    pub fn new(params: ClientParams, now: Instant) -> ClientSession {
        let mut s = ClientSession {
            timers: Timers::new(params.idle, now),
            params,
            state: State::Welcome,
            actions: VecDeque::new(),
            ret_up: false,
            data_open: true,
            version: VERSION,
            csv: None,
            mesh: None,
            file: None,
            pending: None,
        };
        let hello = DataMsg::Hello {
            version: VERSION,
            token: s.params.token,
            return_port: s.params.return_port,
            auth: s.params.auth,
        };
        s.send_data(hello);
        s
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] is due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() { None } else { self.timers.deadline() }
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// How many raw bytes the driver may read from the data channel now: none outside the data
    /// leg, and none while enough frames wait for credit (so memory stays bounded when A is slow
    /// to take the file back).
    pub fn raw_budget(&self) -> u64 {
        match &self.state {
            State::Transfer(t) if matches!(t.data, DataState::Raw) => {
                // Bytes held in memory (received this attempt, not yet sent back) never exceed
                // PENDING_FRAMES frames; those before `from` wait on disk.
                let held = t.hasher.size() - t.out.sent.max(t.resumed.from);
                let limit = PENDING_FRAMES * frame_size(VERSION) as u64;
                limit.saturating_sub(held).min(t.out.size - t.hasher.size())
            }
            _ => 0,
        }
    }

    /// Whether the data channel carries raw file bytes next (rather than a control frame).
    pub fn in_raw(&self) -> bool {
        matches!(&self.state, State::Transfer(t) if matches!(t.data, DataState::Raw))
    }

    /// Whether the data channel should be read at all.
    pub fn reads_data(&self) -> bool {
        self.data_open && !self.is_done()
    }

    /// The length of the return frame that starts at `offset` of a file of `size` bytes.
    pub fn frame_len(size: u64, offset: u64) -> u64 {
        super::streams::frame_len(frame_size(VERSION), size, offset)
    }

    /// How far the file's two legs are, while it travels.
    pub fn progress(&self) -> Option<crate::report::Progress> {
        match &self.state {
            // Until A's verdict: a small file may arrive and go back within one turn of the loop.
            State::Transfer(t) | State::FileResult(t) => {
                Some(crate::report::Progress { size: t.out.size, data: t.hasher.size(), ret: t.out.sent })
            }
            _ => None,
        }
    }

    /// Where the session is, for messages.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Welcome | State::Authenticating { .. } => Phase::Handshake,
            State::HelloAck => Phase::ReturnHandshake,
            State::Header | State::Preparing { .. } => Phase::Offer,
            State::Transfer(t) => match t.data {
                DataState::Offered => Phase::Offer,
                DataState::Raw => Phase::Data { role: Role::Client, done: t.hasher.size(), size: t.out.size },
                DataState::Trailer | DataState::Committing(_) => Phase::Verdict,
                DataState::Verified(_) => Phase::Return { stream: Stream::File, done: t.out.sent, size: t.out.size },
            },
            State::FileResult(_) => Phase::Result(Stream::File),
            State::Csv(CsvState::Making) => Phase::Csv,
            State::Csv(CsvState::Sending { out, .. }) => {
                Phase::Return { stream: Stream::Csv, done: out.sent, size: out.size }
            }
            State::Csv(CsvState::Result { .. }) => Phase::Result(Stream::Csv),
            State::Done => Phase::Closing,
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: ClientInput<'_>) {
        if self.is_done() {
            return;
        }
        match input {
            ClientInput::Data(msg) => {
                self.timers.progress(now);
                self.on_data(now, msg);
            }
            ClientInput::DataUndecodable(e) => match self.state {
                // Garbage in answer to Hello: whatever listens there is not a machinaftp server
                // (a common slip: -p pointed at the server's --zmq-port).
                State::Welcome => self.fail(Failure::NotAServer(Some(e))),
                _ => self.protocol(Violation::Undecodable(e)),
            },
            ClientInput::DataClosed => self.on_data_closed(now),
            ClientInput::Ret(msg) => {
                self.timers.progress(now);
                self.on_ret(now, msg);
            }
            ClientInput::RetUndecodable(e) => self.protocol(Violation::Undecodable(e)),
            ClientInput::Forged(why) => self.protocol(Violation::Forged(why)),
            ClientInput::Authenticated { tag, ret_token } => {
                if let State::Authenticating { version, topology } = self.state {
                    self.params.token = ret_token;
                    self.send_data(DataMsg::Confirm { tag });
                    self.actions.push_back(ClientAction::Secure);
                    self.welcomed(version, topology);
                }
            }
            ClientInput::AuthRefused(e) => {
                let reason = format!("the server did not prove the secret: {e}");
                self.send_data(DataMsg::Error { code: ErrorCode::Auth, reason: reason.clone() });
                self.end(Failure::Auth { reason }, false);
            }
            ClientInput::PrefixBytes(bytes) => {
                if let State::Preparing { prefix, .. } = &mut self.state {
                    prefix.update(bytes);
                }
            }
            ClientInput::OutputReady { transfer } => {
                if let State::Preparing { size, name, prefix } = &mut self.state {
                    let (size, name) = (*size, std::mem::take(name));
                    let hasher = *std::mem::take(prefix);
                    self.timers.watch(true, now);
                    let resumes = self.version >= RESUME_VERSION;
                    let (hasher, data) = if resumes {
                        // V4-resume: what B holds is offered with its digest; A decides.
                        self.send_data(DataMsg::AcceptFrom { transfer, prefix: hasher.finish() });
                        (hasher, DataState::Offered)
                    } else {
                        // An older server resumes nothing: the file comes whole, at once.
                        self.send_data(DataMsg::Accept);
                        self.actions.push_back(ClientAction::ResumeAt { from: 0, ret_from: 0 });
                        let data = if size == 0 { DataState::Trailer } else { DataState::Raw };
                        (Hasher::chunked(chunk_size(size)), data)
                    };
                    let t = Transfer {
                        name,
                        hasher,
                        data,
                        out: Outgoing::new(size, frame_size(self.version)),
                        data_started: now,
                        data_time: Duration::ZERO,
                        ret_started: None,
                        resumed: Resumed::default(),
                    };
                    self.state = State::Transfer(Box::new(t));
                }
            }
            ClientInput::Raw(bytes) => {
                self.timers.progress(now);
                if let State::Transfer(t) = &mut self.state
                    && matches!(t.data, DataState::Raw)
                {
                    t.hasher.update(bytes);
                    if t.hasher.size() >= t.out.size {
                        t.data = DataState::Trailer;
                    }
                }
            }
            ClientInput::Saved(n) => {
                if let State::Transfer(t) = &mut self.state {
                    t.out.add_ready(n);
                }
                self.pump(now);
            }
            ClientInput::Committed => {
                let State::Transfer(t) = &mut self.state else { return };
                let DataState::Committing(digest) = t.data else { return };
                t.data = DataState::Verified(digest);
                t.data_time = now.saturating_duration_since(t.data_started);
                let leg = LegDone { digest, took: t.data_time, from: t.resumed.from };
                self.timers.watch(true, now);
                self.send_data(DataMsg::Verdict { ok: true, reason: String::new() });
                self.actions.push_back(ClientAction::Milestone(Milestone::DataLeg(leg)));
                // The CSV is made from the saved copy while the file's last frames go back.
                self.actions.push_back(ClientAction::MakeCsv);
                self.pump(now);
            }
            ClientInput::CsvMade { size, digest, rows, mesh } => {
                self.csv_ready(now, CsvReady::Made { size, digest, rows, mesh })
            }
            ClientInput::CsvNone(why) => self.csv_ready(now, CsvReady::None(why)),
            ClientInput::CsvFailed(f) => self.csv_ready(now, CsvReady::Failed(f)),
            ClientInput::Local(f) => {
                if let State::Preparing { .. } = self.state {
                    // A waits for the answer to its Header: refuse, with the reason.
                    let f = Failure::Local(f);
                    let reason = f.chain();
                    self.send_data(DataMsg::Refuse { reason });
                    self.end(f, false);
                    return;
                }
                self.fail(Failure::Local(f));
            }
            ClientInput::Stop => self.fail(Failure::Interrupted),
        }
    }

    /// Handles whatever timer is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.timers.due(now) {
            match due {
                Due::KeepAlive => self.send_ret(ReturnMsg::KeepAlive),
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
            (State::Welcome, DataMsg::Error { code: ErrorCode::Busy, reason }) => {
                self.end(Failure::Busy { reason }, false);
            }
            (_, DataMsg::Error { code: ErrorCode::Auth, reason }) => self.end(Failure::Auth { reason }, false),
            // A server too old for the secured handshake does not take its Hello.
            (State::Welcome, DataMsg::Error { code: ErrorCode::Protocol | ErrorCode::Version, reason })
                if self.params.auth.is_some() =>
            {
                let reason = format!("the server cannot check a secret (it runs an older machinaftp): {reason}");
                self.end(Failure::Auth { reason }, false);
            }
            (_, DataMsg::Error { reason, .. }) => {
                let during = self.phase();
                self.end(Failure::Refused { during, reason }, false);
            }
            // Waiting in the server's line: each notice is progress, so a long wait is not idle.
            (State::Welcome, DataMsg::Queued { position }) => {
                self.timers.progress(now);
                self.actions.push_back(ClientAction::Queued { position });
            }
            (State::Welcome, DataMsg::Welcome { version, topology, auth }) => {
                if !(OLDEST_SERVER..=VERSION).contains(&version) {
                    let ours = format!("{OLDEST_SERVER} to {VERSION}");
                    let reason = format!("server speaks protocol version {version}; this client speaks {ours}");
                    self.send_data(DataMsg::Error { code: ErrorCode::Version, reason });
                    self.end(Failure::Version { ours, theirs: version }, false);
                    return;
                }
                match (self.params.auth.is_some(), auth) {
                    (true, Some(a)) if version >= AUTH_VERSION => {
                        self.actions.push_back(ClientAction::Authenticate(a));
                        self.state = State::Authenticating { version, topology };
                    }
                    (true, _) => {
                        let reason = "this client holds a secret, and the server asked for none: it is not the server \
                                      you meant, or it runs without --secret"
                            .to_owned();
                        self.send_data(DataMsg::Error { code: ErrorCode::Auth, reason: reason.clone() });
                        self.end(Failure::Auth { reason }, false);
                    }
                    (false, Some(_)) => {
                        self.protocol(Violation::Unexpected { expected: "Welcome", got: "Welcome+auth" })
                    }
                    (false, None) => self.welcomed(version, topology),
                }
            }
            (State::Header, DataMsg::Header { size, name }) => {
                // The name is shown, never used as a path: B writes where its operator said.
                let resume = self.version >= RESUME_VERSION;
                self.actions.push_back(ClientAction::PrepareOutput { size, name: name.clone(), resume });
                self.timers.watch(false, now);
                self.state = State::Preparing { size, name, prefix: Box::new(Hasher::chunked(chunk_size(size))) };
            }
            (State::Transfer(t), DataMsg::Resume { from, ret_from }) if matches!(t.data, DataState::Offered) => {
                let (size, held) = (t.out.size, t.hasher.size());
                let frame = frame_size(self.version) as u64;
                // A resumes from all B offered or from nothing, and takes back from whole frames
                // within that.
                let bad_ret = ret_from > from || !ret_from.is_multiple_of(frame);
                if bad_ret || (from != 0 && from != held) {
                    let at = if bad_ret { ret_from } else { from };
                    return self.protocol(Violation::BadResume { at, limit: held });
                }
                if from == 0 && held > 0 {
                    // A's original does not begin with what B held (it changed): start over.
                    t.hasher = Hasher::chunked(chunk_size(size));
                }
                t.out.resume_at(ret_from, from);
                t.resumed = Resumed { from, ret_from };
                t.data_started = now;
                t.data = if from == size { DataState::Trailer } else { DataState::Raw };
                self.actions.push_back(ClientAction::ResumeAt { from, ret_from });
                self.pump(now);
            }
            (State::Transfer(t), DataMsg::Trailer { crc32, blake3, chunks })
                if matches!(t.data, DataState::Trailer) =>
            {
                let got = t.hasher.finish();
                let expected = Digest { size: t.out.size, crc32, blake3 };
                if let Some(mut diff) = DigestDiff::check(got, expected) {
                    // Where, not only whether: the first piece whose CRC-32 differs from A's.
                    diff.first = first_differing_chunk(&t.hasher.chunk_crcs(), &chunks, t.out.size)
                        .map(|(offset, len)| Box::new(Locus::Within(ByteRange { offset, len })));
                    let reason = format!("received file differs from what the server sent: {diff}");
                    let f = Failure::Mismatch { leg: Leg::Data, what: "received file", diff };
                    self.send_data(DataMsg::Verdict { ok: false, reason });
                    self.fail(f);
                    return;
                }
                t.data = DataState::Committing(got);
                self.timers.watch(false, now);
                self.actions.push_back(ClientAction::Commit);
            }
            _ => self.unexpected(got),
        }
    }

    fn on_ret(&mut self, now: Instant, msg: ReturnMsg<'_>) {
        let got = msg.kind();
        match (&mut self.state, msg) {
            (_, ReturnMsg::KeepAlive) => {}
            (_, ReturnMsg::Abort { reason }) => {
                let during = self.phase();
                self.pending = None;
                self.end(Failure::Refused { during, reason }, false);
            }
            (State::HelloAck, ReturnMsg::HelloAck { version }) if version == self.version => {
                self.ret_up = true;
                self.send_data(DataMsg::Ready);
                self.state = State::Header;
            }
            (State::Transfer(t), ReturnMsg::Credit { stream: Stream::File, bytes }) => {
                t.out.add_credit(bytes);
                self.pump(now);
            }
            // Credits may still arrive once a stream is all sent; they are ignored.
            (State::FileResult(_) | State::Csv(_), ReturnMsg::Credit { stream: Stream::File, .. }) => {}
            (State::Csv(CsvState::Sending { out, .. }), ReturnMsg::Credit { stream: Stream::Csv, bytes }) => {
                out.add_credit(bytes);
                self.pump(now);
            }
            (State::Csv(CsvState::Result { .. }), ReturnMsg::Credit { stream: Stream::Csv, .. }) => {}
            (State::FileResult(_), ReturnMsg::Result { stream: Stream::File, ok, reason }) => {
                if !ok {
                    self.end(Failure::PeerMismatch { leg: Leg::Return, reason }, false);
                    return;
                }
                let State::FileResult(t) = std::mem::replace(&mut self.state, State::Csv(CsvState::Making)) else {
                    unreachable!()
                };
                let DataState::Verified(digest) = t.data else { unreachable!("End follows the verdict") };
                let return_time = t.ret_started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                let resumed = t.resumed;
                self.file = Some(FileDone { name: t.name, digest, data_time: t.data_time, return_time, resumed });
                let leg = LegDone { digest, took: return_time, from: resumed.ret_from };
                self.actions.push_back(ClientAction::Milestone(Milestone::ReturnLeg(leg)));
                match self.csv.take() {
                    Some(ready) => self.csv_ready(now, ready),
                    None => {
                        // Converting may take longer than A's timeout: keep it from firing.
                        self.timers.watch(false, now);
                        self.timers.keepalive(true, now);
                    }
                }
            }
            (State::Csv(CsvState::Result { digest, rows }), ReturnMsg::Result { stream: Stream::Csv, ok, reason }) => {
                let (digest, rows) = (*digest, *rows);
                self.send_ret(ReturnMsg::Bye);
                if ok {
                    self.finish_ok(CsvReturned::Returned { digest, rows });
                } else {
                    self.end(Failure::Csv(CsvFailure::Rejected(reason)), false);
                }
            }
            _ => self.unexpected(got),
        }
    }

    fn on_data_closed(&mut self, now: Instant) {
        self.data_open = false;
        match &self.state {
            State::Welcome => self.fail(Failure::NotAServer(None)),
            // A that stops mid-file cannot frame its reason into the byte stream; it sends it
            // on the return channel, which may still be on its way.
            State::Transfer(t) if !matches!(t.data, DataState::Verified(_)) => {
                if !self.timers.in_grace() {
                    self.pending = Some(Failure::Closed { during: self.phase() });
                    self.timers.grace(Some(ABORT_GRACE), now);
                }
            }
            // Past the data leg, nothing more is due on TCP.
            State::Transfer(_) | State::FileResult(_) | State::Csv(_) => {}
            _ => {
                let during = self.phase();
                self.fail(Failure::Closed { during });
            }
        }
    }

    /// Sends every frame whose bytes are ready and covered by credit; ends the stream when all is
    /// sent (and, for the file, verified).
    fn pump(&mut self, now: Instant) {
        match &mut self.state {
            State::Transfer(t) => {
                while let Some((offset, len)) = t.out.next_frame() {
                    t.ret_started.get_or_insert(now);
                    self.actions.push_back(ClientAction::SendFrame { stream: Stream::File, offset, len });
                }
                // End carries the digests B verified: only after the Trailer matched and the
                // copy is saved, and after the last frame.
                if let DataState::Verified(d) = t.data
                    && t.out.all_sent()
                {
                    t.ret_started.get_or_insert(now);
                    self.send_ret(ReturnMsg::End { stream: Stream::File, crc32: d.crc32, blake3: d.blake3 });
                    let State::Transfer(t) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
                    self.state = State::FileResult(t);
                }
            }
            State::Csv(CsvState::Sending { out, digest, rows }) => {
                while let Some((offset, len)) = out.next_frame() {
                    self.actions.push_back(ClientAction::SendFrame { stream: Stream::Csv, offset, len });
                }
                if out.all_sent() {
                    let (rows, digest) = (*rows, *digest);
                    self.send_ret(ReturnMsg::End { stream: Stream::Csv, crc32: digest.crc32, blake3: digest.blake3 });
                    self.state = State::Csv(CsvState::Result { digest, rows });
                }
            }
            _ => {}
        }
    }

    /// The converter finished: keep the result until the file's return is verified, then send
    /// the CSV or say why there is none.
    fn csv_ready(&mut self, now: Instant, ready: CsvReady) {
        if !matches!(self.state, State::Csv(CsvState::Making)) {
            self.csv = Some(ready);
            return;
        }
        self.timers.keepalive(false, now);
        self.timers.watch(true, now);
        match ready {
            CsvReady::Made { size, digest, rows, mesh } => {
                // Version 6: the facts go first, for A to hold against its own (V6-mesh).
                if let Some(m) = &mesh
                    && self.version >= MESH_VERSION
                {
                    self.send_ret(ReturnMsg::Mesh(m.clone()));
                }
                self.mesh = mesh;
                self.send_ret(ReturnMsg::Offer { stream: Stream::Csv, size });
                let mut out = Outgoing::new(size, frame_size(VERSION));
                out.add_ready(size);
                self.state = State::Csv(CsvState::Sending { out, digest, rows });
                self.pump(now);
            }
            CsvReady::None(reason) => {
                self.send_ret(ReturnMsg::Skip { stream: Stream::Csv, failed: false, reason: reason.clone() });
                self.send_ret(ReturnMsg::Bye);
                self.finish_ok(CsvReturned::NotMade(reason));
            }
            CsvReady::Failed(f) => {
                let reason = match &f {
                    // Where in the file, not where this side keeps it: A knows it as its own.
                    Failure::Csv(CsvFailure::Convert(crate::stl::ConvertError::Stl { source, .. })) => {
                        super::chain(source)
                    }
                    Failure::Csv(inner) => super::chain(inner),
                    f => f.chain(),
                };
                self.send_ret(ReturnMsg::Skip { stream: Stream::Csv, failed: true, reason });
                self.send_ret(ReturnMsg::Bye);
                self.end(f, false);
            }
        }
    }

    fn finish_ok(&mut self, csv: CsvReturned) {
        let Some(FileDone { name, digest, data_time, return_time, resumed }) = self.file.take() else { return };
        self.state = State::Done;
        self.actions.push_back(ClientAction::CloseData);
        self.actions.push_back(ClientAction::Finish(Ok(ClientOutcome {
            name,
            digest,
            data_time,
            return_time,
            resumed,
            mesh: matches!(csv, CsvReturned::Returned { .. }).then(|| self.mesh.take()).flatten(),
            csv,
        })));
    }

    fn unexpected(&mut self, got: &'static str) {
        let expected = match &self.state {
            State::Welcome => "Welcome",
            State::Authenticating { .. } => "nothing yet",
            State::HelloAck => "HelloAck",
            State::Header => "Header",
            State::Preparing { .. } => "nothing yet",
            State::Transfer(t) if matches!(t.data, DataState::Trailer) => "Trailer",
            State::Transfer(t) if matches!(t.data, DataState::Offered) => "Resume",
            State::Transfer(_) => "Credit",
            State::FileResult(_) | State::Csv(CsvState::Result { .. }) => "Result",
            State::Csv(_) => "Credit",
            State::Done => "nothing",
        };
        self.protocol(Violation::Unexpected { expected, got });
    }

    fn protocol(&mut self, violation: Violation) {
        let during = self.phase();
        self.fail(Failure::Protocol { during, violation });
    }

    fn send_data(&mut self, msg: DataMsg) {
        self.actions.push_back(ClientAction::SendData(msg));
    }

    fn send_ret(&mut self, msg: ReturnMsg<'static>) {
        self.actions.push_back(ClientAction::SendRet(msg));
    }

    /// Ends the session and tells A why, on both channels, unless it caused or knows it.
    fn fail(&mut self, f: Failure) {
        let tell = !f.peer_knows();
        self.end(f, tell);
    }

    /// A's `Welcome` is accepted (and, with a secret, A proved it): wire the return channel.
    fn welcomed(&mut self, version: u16, topology: Topology) {
        // An older server's version is spoken from here on (V2-negotiation).
        self.version = version;
        self.actions.push_back(ClientAction::Wire(topology));
        self.send_ret(ReturnMsg::Hello { version, token: self.params.token });
        self.state = State::HelloAck;
    }

    fn end(&mut self, f: Failure, tell: bool) {
        if self.is_done() {
            return;
        }
        // Frames still queued are sent (a Verdict or Refuse explains the end), and milestones
        // reached stay reached; other work is moot.
        self.actions
            .retain(|a| matches!(a, ClientAction::SendData(_) | ClientAction::SendRet(_) | ClientAction::Milestone(_)));
        if tell {
            let reason = format!("client: {}", f.chain());
            if self.data_open {
                self.send_data(DataMsg::Error { code: wire_code(&f), reason: reason.clone() });
            }
            if self.ret_up {
                self.send_ret(ReturnMsg::Abort { reason });
            }
        }
        self.state = State::Done;
        self.actions.push_back(ClientAction::CloseData);
        self.actions.push_back(ClientAction::Finish(Err(f)));
    }
}
