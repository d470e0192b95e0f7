//! The protocol's rules, one test each, on the pure machines (named after the rule in
//! `docs/PROTOCOL.md`: *v1 data rule N*, *v1 flow step N*, *V2-name*), and whole sessions run by
//! a simulator that wires a server machine to a client machine through in-memory channels, with
//! the time advanced by hand. Nothing here opens a socket or a file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::integrity::{Digest, Hasher};
use crate::protocol::VERSION;
use crate::protocol::data::{DataMsg, ErrorCode, Topology, WelcomeAuth};
use crate::protocol::ret::{FRAME_V1, FRAME_V2, ReturnMsg, Stream};
use crate::secure::{CONFIRM_LEN, PAKE_MSG_LEN};

use super::*;

const IDLE: Duration = Duration::from_secs(30);
const TOKEN: [u8; 16] = [7; 16];

/// Vertex lines of a CSV.
fn rows(csv: &[u8]) -> u64 {
    csv.iter().filter(|&&b| b == b'\n').count() as u64
}

fn digest(bytes: &[u8]) -> Digest {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}

/// Deterministic bytes that are not all alike.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8).collect()
}

fn params(window: u64) -> ServerParams {
    ServerParams { idle: IDLE, topology: Topology::Listen { zmq_port: 9 }, window, secured: false }
}

fn drain_a(m: &mut ServerSession) -> Vec<ServerAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn drain_b(m: &mut ClientSession) -> Vec<ClientAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn finished_a(actions: &[ServerAction]) -> Option<&Result<ServerOutcome, Failure>> {
    actions.iter().find_map(|a| match a {
        ServerAction::Finish(r) => Some(r),
        _ => None,
    })
}

fn failure_a(actions: &[ServerAction]) -> &Failure {
    match finished_a(actions) {
        Some(Err(f)) => f,
        other => panic!("expected a failure, got {other:?} in {actions:?}"),
    }
}

fn failure_b(actions: &[ClientAction]) -> &Failure {
    actions
        .iter()
        .find_map(|a| match a {
            ClientAction::Finish(Err(f)) => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a failure in {actions:?}"))
}

/// The messages of the actions of one kind (`SendData`, `SendRet`), in order.
macro_rules! sent {
    ($actions:expr, $kind:path) => {
        $actions.iter().filter_map(|a| if let $kind(m) = a { Some(m) } else { None }).collect()
    };
}

fn sent_data_a(actions: &[ServerAction]) -> Vec<&DataMsg> {
    sent!(actions, ServerAction::SendData)
}

fn sent_ret_a(actions: &[ServerAction]) -> Vec<&ReturnMsg<'static>> {
    sent!(actions, ServerAction::SendRet)
}

fn sent_data_b(actions: &[ClientAction]) -> Vec<&DataMsg> {
    sent!(actions, ClientAction::SendData)
}

fn sent_ret_b(actions: &[ClientAction]) -> Vec<&ReturnMsg<'static>> {
    sent!(actions, ClientAction::SendRet)
}

// ---------------------------------------------------------------------------------------------
// Driving A by hand, as a client written from the document would.
// ---------------------------------------------------------------------------------------------

/// A server machine taken through the handshake to the `Header` with a client of `version`.
fn a_at_header(version: u16, size: u64, window: u64) -> (ServerSession, Instant) {
    a_at_header_knowing(version, size, window, None)
}

/// ... with the file's digest known (cached) or not.
fn a_at_header_knowing(
    version: u16,
    size: u64,
    window: u64,
    digest: Option<crate::integrity::FileDigest>,
) -> (ServerSession, Instant) {
    let t = Instant::now();
    let mut a = ServerSession::new(params(window), t);
    a.handle(t, ServerInput::Data(DataMsg::Hello { version, token: TOKEN, return_port: 0, auth: None }));
    let acts = drain_a(&mut a);
    assert!(matches!(acts[..], [ServerAction::Register { token: TOKEN, .. }]), "{acts:?}");
    a.handle(t, ServerInput::Registered);
    let acts = drain_a(&mut a);
    let negotiated = version.clamp(1, VERSION);
    assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Welcome { version: v, .. }] if *v == negotiated), "{acts:?}");
    a.handle(t, ServerInput::ReturnHello { version: negotiated });
    assert!(matches!(sent_ret_a(&drain_a(&mut a))[..], [ReturnMsg::HelloAck { .. }]));
    a.handle(t, ServerInput::Data(DataMsg::Ready));
    assert!(matches!(drain_a(&mut a)[..], [ServerAction::OpenSource]));
    a.handle(t, ServerInput::SourceOpened { size, name: "f.bin".into(), digest });
    assert!(matches!(sent_data_a(&drain_a(&mut a))[..], [DataMsg::Header { .. }]));
    (a, t)
}

/// ... and through the data leg of `file`, with B's verdict.
fn a_after_data_leg(version: u16, file: &[u8], window: u64) -> (ServerSession, Instant, Vec<ServerAction>) {
    let (mut a, t) = a_at_header(version, file.len() as u64, window);
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    let mut acts = drain_a(&mut a);
    a.handle(t, ServerInput::RawRead(file));
    a.handle(t, ServerInput::RawWritten(file.len() as u64));
    a.handle(t, ServerInput::RawDone);
    acts.extend(drain_a(&mut a));
    a.handle(t, ServerInput::Data(DataMsg::Verdict { ok: true, reason: String::new() }));
    acts.extend(drain_a(&mut a));
    (a, t, acts)
}

/// Sends `payload` as one `Data` frame and carries out A's `Write` the way a driver does.
fn a_data(a: &mut ServerSession, t: Instant, stream: Stream, offset: u64, payload: &[u8]) -> Vec<ServerAction> {
    a.handle(t, ServerInput::Ret(ReturnMsg::Data { stream, offset, payload }));
    let acts = drain_a(a);
    if acts.iter().any(|x| matches!(x, ServerAction::Write(_))) {
        a.handle(t, ServerInput::Returned(payload));
    }
    acts
}

/// Returns `file` to A in frames of `frame`, then `End` with `claimed`; A's actions after the End.
fn a_return(a: &mut ServerSession, t: Instant, file: &[u8], frame: usize, claimed: Digest) -> Vec<ServerAction> {
    for (i, chunk) in file.chunks(frame).enumerate() {
        let acts = a_data(a, t, Stream::File, (i * frame) as u64, chunk);
        assert!(finished_a(&acts).is_none(), "{acts:?}");
    }
    a.handle(
        t,
        ServerInput::Ret(ReturnMsg::End { stream: Stream::File, crc32: claimed.crc32, blake3: claimed.blake3 }),
    );
    drain_a(a)
}

// ---------------------------------------------------------------------------------------------
// A simulator: both machines, wired through in-memory channels, with drivers' chores done here.
// ---------------------------------------------------------------------------------------------

enum Tcp {
    Frame(DataMsg),
    Raw(Vec<u8>),
}

/// Faults to inject into a simulated session.
#[derive(Default, Clone, Copy)]
struct Faults {
    /// Flip a bit of the raw byte at this offset on its way to B.
    data_flip: Option<usize>,
    /// Flip a bit of the returned byte at this offset on its way to A.
    return_flip: Option<usize>,
    /// B's commit of its copy fails.
    b_cannot_save: bool,
    /// A's commit of the returned copy fails.
    a_cannot_save: bool,
}

struct Sim {
    now: Instant,
    a: ServerSession,
    b: ClientSession,
    file: Vec<u8>,
    csv: Vec<u8>,
    faults: Faults,
    /// Raw bytes A still has to send, and how many at a time.
    raw_left: Option<usize>,
    raw_step: usize,
    a_to_b: VecDeque<Tcp>,
    b_to_a: VecDeque<DataMsg>,
    ret_to_b: VecDeque<ReturnMsg<'static>>,
    ret_to_a: VecDeque<(ReturnMsg<'static>, Option<Vec<u8>>)>,
    /// What each side wrote, per stream, and whether it was committed.
    a_sinks: [Option<Vec<u8>>; 2],
    a_saved: [Option<Vec<u8>>; 2],
    b_received: Vec<u8>,
    b_saved_bytes: u64,
    b_committed: bool,
    a_done: Option<Result<ServerOutcome, Failure>>,
    b_done: Option<Result<ClientOutcome, Failure>>,
    milestones: Vec<(char, &'static str)>,
    /// Bytes B held received but not yet returned, at most.
    b_max_pending: u64,
    a_data_closed: bool,
    /// What B and A hold from an interrupted attempt, before the session starts.
    b_partial: Vec<u8>,
    a_partial: Vec<u8>,
    /// Where A's raw bytes started, and the bytes of the file B sent back.
    a_raw_from: u64,
    b_returned: u64,
}

impl Sim {
    fn new(file: Vec<u8>, window: u64, faults: Faults) -> Sim {
        let now = Instant::now();
        let csv = format!("csv of {} bytes\n", file.len()).into_bytes();
        let mut a = ServerSession::new(params(window), now);
        // A's own conversion of its original (here: a stand-in CSV both sides agree on).
        a.handle(
            now,
            ServerInput::ExpectedCsv(ExpectedCsv::Digest { digest: digest(&csv), rows: rows(&csv), mesh: None }),
        );
        let b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, now);
        Sim {
            now,
            a,
            b,
            file,
            csv,
            faults,
            raw_left: None,
            raw_step: 64 << 10,
            a_to_b: VecDeque::new(),
            b_to_a: VecDeque::new(),
            ret_to_b: VecDeque::new(),
            ret_to_a: VecDeque::new(),
            a_sinks: [None, None],
            a_saved: [None, None],
            b_received: Vec::new(),
            b_saved_bytes: 0,
            b_committed: false,
            a_done: None,
            b_done: None,
            milestones: Vec::new(),
            b_max_pending: 0,
            a_data_closed: false,
            b_partial: Vec::new(),
            a_partial: Vec::new(),
            a_raw_from: 0,
            b_returned: 0,
        }
    }

    /// The same, resuming: B and A hold these partial copies from an interrupted attempt.
    fn resuming(mut self, b_partial: &[u8], a_partial: &[u8]) -> Sim {
        self.b_partial = b_partial.to_vec();
        self.a_partial = a_partial.to_vec();
        self
    }

    fn run(mut self) -> Sim {
        for _ in 0..1_000_000 {
            self.act_a(None);
            self.act_b();
            if self.a_done.is_some() && self.b_done.is_some() {
                return self;
            }
            if !self.step() {
                // Nothing moves: let time pass to the next deadline.
                let next = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
                let Some(next) = next else { return self };
                self.now = next;
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
        }
        panic!("the simulated session did not end");
    }

    /// Delivers one message or piece of work; false if nothing was pending.
    fn step(&mut self) -> bool {
        let now = self.now;
        if let Some(left) = self.raw_left
            && self.a_done.is_none()
        {
            let off = self.file.len() - left;
            let n = left.min(self.raw_step);
            let piece = self.file[off..off + n].to_vec();
            self.a.handle(now, ServerInput::RawRead(&piece));
            self.a.handle(now, ServerInput::RawWritten(n as u64));
            if n == 0 {
                self.raw_left = None;
                self.a.handle(now, ServerInput::RawDone);
                return true;
            }
            let mut wire = piece;
            if let Some(at) = self.faults.data_flip
                && (off..off + n).contains(&at)
            {
                wire[at - off] ^= 0x10;
            }
            self.a_to_b.push_back(Tcp::Raw(wire));
            self.raw_left = Some(left - n);
            if left == n {
                self.raw_left = None;
                self.a.handle(now, ServerInput::RawDone);
            }
            return true;
        }
        // B reads raw bytes only within its budget: back-pressure.
        if let Some(item) = self.a_to_b.front_mut()
            && self.b_done.is_none()
        {
            match item {
                Tcp::Raw(bytes) => {
                    let budget = self.b.raw_budget() as usize;
                    if budget > 0 {
                        let n = budget.min(bytes.len());
                        let piece: Vec<u8> = bytes.drain(..n).collect();
                        if bytes.is_empty() {
                            self.a_to_b.pop_front();
                        }
                        self.b.handle(now, ClientInput::Raw(&piece));
                        self.b_received.extend_from_slice(&piece);
                        // Whole frames (and the last piece) are saved and held for the return.
                        let size = self.file.len() as u64;
                        loop {
                            let next = ClientSession::frame_len(size, self.b_saved_bytes);
                            if next == 0 || self.b_received.len() as u64 - self.b_saved_bytes < next {
                                break;
                            }
                            self.b_saved_bytes += next;
                            self.b.handle(now, ClientInput::Saved(next));
                        }
                        return true;
                    }
                }
                Tcp::Frame(_) => {
                    let Some(Tcp::Frame(m)) = self.a_to_b.pop_front() else { unreachable!() };
                    self.b.handle(now, ClientInput::Data(m));
                    return true;
                }
            }
        }
        if let Some(m) = self.b_to_a.pop_front() {
            self.a.handle(now, ServerInput::Data(m));
            return true;
        }
        if let Some(m) = self.ret_to_b.pop_front() {
            self.b.handle(now, ClientInput::Ret(m));
            return true;
        }
        if let Some((m, payload)) = self.ret_to_a.pop_front() {
            match (&m, payload) {
                (ReturnMsg::Hello { version, .. }, _) => {
                    self.a.handle(now, ServerInput::ReturnHello { version: *version })
                }
                (ReturnMsg::Data { stream, offset, .. }, Some(p)) => {
                    self.a.handle(
                        now,
                        ServerInput::Ret(ReturnMsg::Data { stream: *stream, offset: *offset, payload: &p }),
                    );
                    self.act_a(Some(&p));
                }
                _ => self.a.handle(now, ServerInput::Ret(m)),
            }
            return true;
        }
        false
    }

    fn act_a(&mut self, payload: Option<&[u8]>) {
        let now = self.now;
        while let Some(action) = self.a.poll_action() {
            match action {
                ServerAction::SendData(m) => self.a_to_b.push_back(Tcp::Frame(m)),
                ServerAction::SendRet(m) => self.ret_to_b.push_back(m),
                ServerAction::Register { .. } => self.a.handle(now, ServerInput::Registered),
                ServerAction::Authenticate { .. } | ServerAction::CheckConfirm { .. } => {
                    unreachable!("these sessions hold no secret")
                }
                ServerAction::OpenSource => {
                    let size = self.file.len() as u64;
                    self.a.handle(now, ServerInput::SourceOpened { size, name: "f.bin".into(), digest: None });
                }
                ServerAction::OpenSink(s) => self.a_sinks[s as usize] = Some(Vec::new()),
                ServerAction::StartRaw { from } => {
                    self.a_raw_from = from;
                    self.raw_left = Some(self.file.len() - from as usize);
                }
                ServerAction::FindPartial { .. } => {
                    let len = self.a_partial.len() as u64;
                    self.a.handle(now, ServerInput::PartialFound { len });
                }
                ServerAction::ReadPrefix { source, partial } => {
                    let partial = self.a_partial[..partial as usize].to_vec();
                    self.a.handle(now, ServerInput::PartialBytes(&partial));
                    let source = self.file[..source as usize].to_vec();
                    // In pieces, as a driver reads them.
                    for piece in source.chunks(100_000) {
                        self.a.handle(now, ServerInput::SourcePrefix(piece));
                    }
                    self.a.handle(now, ServerInput::PrefixRead);
                }
                ServerAction::OpenReturned { keep } => {
                    self.a_sinks[0] = Some(self.a_partial[..keep as usize].to_vec());
                }
                ServerAction::Write(s) => {
                    let p = payload.expect("a Write follows a Data frame");
                    self.a.handle(now, ServerInput::Returned(p));
                    self.a_sinks[s as usize].as_mut().expect("opened").extend_from_slice(p);
                }
                ServerAction::Commit(s) => {
                    if self.faults.a_cannot_save && s == Stream::File {
                        let source = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
                        self.a.handle(now, ServerInput::Local(LocalFailure::Output { path: "out".into(), source }));
                    } else {
                        self.a_saved[s as usize] = self.a_sinks[s as usize].take();
                        self.a.handle(now, ServerInput::Committed(s));
                    }
                }
                ServerAction::Locate => {
                    let got = self.a_sinks[0].as_deref().unwrap_or_default();
                    let first = got.iter().zip(&self.file).position(|(x, y)| x != y).map(|i| {
                        let len = got[i..].iter().zip(&self.file[i..]).take_while(|(x, y)| x != y).count();
                        ByteRange { offset: i as u64, len: len as u64 }
                    });
                    self.a.handle(now, ServerInput::Located(first));
                }
                ServerAction::Digested(_) | ServerAction::ClaimDiffers(_) => {}
                ServerAction::Milestone(Milestone::DataLeg(_)) => self.milestones.push(('A', "data")),
                ServerAction::Milestone(Milestone::ReturnLeg(_)) => self.milestones.push(('A', "return")),
                ServerAction::CloseData => self.a_data_closed = true,
                ServerAction::Finish(r) => self.a_done = Some(r),
            }
        }
    }

    fn act_b(&mut self) {
        let now = self.now;
        while let Some(action) = self.b.poll_action() {
            match action {
                ClientAction::SendData(m) => self.b_to_a.push_back(m),
                ClientAction::SendRet(m) => self.ret_to_a.push_back((m, None)),
                ClientAction::Wire(_) | ClientAction::Queued { .. } => {}
                ClientAction::Authenticate(_) | ClientAction::Secure => unreachable!("these sessions hold no secret"),
                ClientAction::PrepareOutput { size, .. } => {
                    let held = self.b_partial.len() as u64;
                    let have = if held == size { size } else { held.min(size) / FRAME_V2 as u64 * FRAME_V2 as u64 };
                    let prefix = self.b_partial[..have as usize].to_vec();
                    self.b.handle(now, ClientInput::PrefixBytes(&prefix));
                    self.b_received = prefix;
                    self.b.handle(now, ClientInput::OutputReady { transfer: [5; 16] });
                }
                ClientAction::ResumeAt { from, .. } => {
                    self.b_received.truncate(from as usize);
                    self.b_saved_bytes = from;
                }
                ClientAction::SendFrame { stream, offset, len } => {
                    let (o, l) = (offset as usize, len as usize);
                    let mut payload = match stream {
                        Stream::File => self.b_received[o..o + l].to_vec(),
                        Stream::Csv => self.csv[o..o + l].to_vec(),
                    };
                    if stream == Stream::File
                        && let Some(at) = self.faults.return_flip
                        && (o..o + l).contains(&at)
                    {
                        payload[at - o] ^= 0x01;
                    }
                    if stream == Stream::File {
                        self.b_returned += len;
                        let held = self.b_received.len() as u64 - offset;
                        self.b_max_pending = self.b_max_pending.max(held);
                    }
                    self.ret_to_a.push_back((ReturnMsg::Data { stream, offset, payload: b"" }, Some(payload)));
                }
                ClientAction::Commit => {
                    if self.faults.b_cannot_save {
                        let source = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only");
                        self.b.handle(now, ClientInput::Local(LocalFailure::Output { path: "o".into(), source }));
                    } else {
                        self.b_committed = true;
                        self.b.handle(now, ClientInput::Committed);
                    }
                }
                ClientAction::MakeCsv => {
                    let (size, digest, rows) = (self.csv.len() as u64, digest(&self.csv), 1);
                    self.b.handle(now, ClientInput::CsvMade { size, digest, rows, mesh: None });
                }
                ClientAction::Milestone(Milestone::DataLeg(_)) => self.milestones.push(('B', "data")),
                ClientAction::Milestone(Milestone::ReturnLeg(_)) => self.milestones.push(('B', "return")),
                ClientAction::CloseData => {}
                ClientAction::Finish(r) => self.b_done = Some(r),
            }
        }
    }

    fn a_ok(&self) -> &ServerOutcome {
        match &self.a_done {
            Some(Ok(o)) => o,
            other => panic!("A: {other:?}"),
        }
    }

    fn b_ok(&self) -> &ClientOutcome {
        match &self.b_done {
            Some(Ok(o)) => o,
            other => panic!("B: {other:?}"),
        }
    }

    fn a_err(&self) -> &Failure {
        match &self.a_done {
            Some(Err(f)) => f,
            other => panic!("A should have failed: {other:?}"),
        }
    }

    fn b_err(&self) -> &Failure {
        match &self.b_done {
            Some(Err(f)) => f,
            other => panic!("B should have failed: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole sessions.
// ---------------------------------------------------------------------------------------------

#[test]
fn full_duplex_sessions_of_every_shape_verify_on_both_sides() {
    let f = FRAME_V2;
    for size in [0, 1, 1000, f - 1, f, f + 1, 5 * f + f / 2] {
        let file = bytes(size, 3);
        let s = Sim::new(file.clone(), WINDOW_V2, Faults::default()).run();
        let (a, b) = (s.a_ok(), s.b_ok());
        assert_eq!(a.digest, digest(&file), "size {size}");
        assert_eq!(b.digest, digest(&file));
        assert_eq!(a.version, VERSION);
        assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]), "A saved the returned copy, size {size}");
        assert!(s.b_committed);
        assert!(matches!(a.csv, CsvResult::Saved { .. }), "{:?}", a.csv);
        assert_eq!(s.a_saved[1].as_deref(), Some(&s.csv[..]));
        assert!(matches!(b.csv, CsvReturned::Returned { .. }));
        assert_eq!(s.milestones, [('B', "data"), ('A', "data"), ('A', "return"), ('B', "return")], "size {size}");
    }
}

#[test]
fn v2_cut_through_the_file_goes_back_while_it_still_arrives() {
    // A small window makes the return leg wait for credit: the file still makes its round trip,
    // and B never holds more than its back-pressure limit of received-but-unreturned bytes.
    let file = bytes(12 * FRAME_V2 + 5, 9);
    let s = Sim::new(file.clone(), 2 * FRAME_V2 as u64, Faults::default()).run();
    assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]));
    let limit = PENDING_FRAMES * FRAME_V2 as u64;
    assert!(s.b_max_pending <= limit, "B held {} bytes unreturned (limit {limit})", s.b_max_pending);
}

#[test]
fn v2_backpressure_b_stops_reading_while_four_frames_wait_for_credit() {
    let now = Instant::now();
    let mut b = client_in_transfer(now, 10 * FRAME_V2 as u64);
    let frame = vec![0u8; FRAME_V2];
    for i in 0..PENDING_FRAMES {
        assert!(b.raw_budget() > 0, "frame {i}");
        b.handle(now, ClientInput::Raw(&frame));
        b.handle(now, ClientInput::Saved(FRAME_V2 as u64));
    }
    assert_eq!(b.raw_budget(), 0, "no credit yet: four frames wait, so B reads no more");
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: FRAME_V2 as u64 }));
    let acts = drain_b(&mut b);
    assert!(matches!(acts[..], [ClientAction::SendFrame { stream: Stream::File, offset: 0, .. }]), "{acts:?}");
    assert!(b.raw_budget() > 0, "a frame went back: reading resumes");
}

#[test]
fn v2_both_legs_end_on_a_data_leg_corrupted_mid_pipeline() {
    let file = bytes(5 * FRAME_V2, 1);
    let s = Sim::new(file, WINDOW_V2, Faults { data_flip: Some(3 * FRAME_V2 + 17), ..Faults::default() }).run();
    assert!(matches!(s.b_err(), Failure::Mismatch { leg: Leg::Data, .. }), "{:?}", s.b_err());
    assert!(matches!(s.a_err(), Failure::PeerMismatch { leg: Leg::Data, .. }), "{:?}", s.a_err());
    assert!(!s.b_committed, "B keeps no copy of a corrupted file");
    assert!(s.a_saved[0].is_none(), "nor does A save what came back");
    assert!(s.a_err().to_string().contains("checksum mismatch on the data leg"));
}

#[test]
fn v4_trailer_data_leg_mismatch_names_the_piece_on_both_sides() {
    let at = 3 * FRAME_V2 + 17;
    let s = Sim::new(bytes(5 * FRAME_V2 + 9, 1), WINDOW_V2, Faults { data_flip: Some(at), ..Faults::default() }).run();
    let Failure::Mismatch { diff, .. } = s.b_err() else { panic!("{:?}", s.b_err()) };
    let chunk = crate::integrity::chunk_size(5 * FRAME_V2 as u64 + 9);
    let piece = ByteRange { offset: at as u64 / chunk * chunk, len: chunk };
    assert_eq!(diff.first.as_deref(), Some(&Locus::Within(piece)));
    let said = Locus::Within(piece).to_string();
    assert!(s.b_err().to_string().contains(&said), "B's console and log: {}", s.b_err());
    assert!(s.a_err().to_string().contains(&said), "A is told in the Verdict: {}", s.a_err());
}

#[test]
fn v4_trailer_carries_piece_crcs_only_to_clients_of_version_4() {
    let file = bytes(3 * FRAME_V2 + 5, 4);
    let expected: Vec<u32> = file.chunks(1 << 20).map(crc32fast::hash).collect();
    let cached = crate::integrity::FileDigest { digest: digest(&file), chunks: expected.clone().into() };
    for (version, known) in [(3, None), (4, None), (4, Some(cached))] {
        let (mut a, t) = a_at_header_knowing(version, file.len() as u64, WINDOW_V2, known);
        a.handle(t, ServerInput::Data(DataMsg::Accept));
        for piece in file.chunks(100_000) {
            a.handle(t, ServerInput::RawRead(piece));
            a.handle(t, ServerInput::RawWritten(piece.len() as u64));
        }
        a.handle(t, ServerInput::RawDone);
        let acts = drain_a(&mut a);
        let Some(DataMsg::Trailer { crc32, chunks, .. }) = sent_data_a(&acts).into_iter().last() else {
            panic!("{acts:?}")
        };
        assert_eq!(*crc32, digest(&file).crc32);
        if version == 4 {
            assert_eq!(chunks, &expected, "one CRC-32 per MiB, the last piece short, hashed or cached");
        } else {
            assert!(chunks.is_empty(), "a version-3 client gets the Trailer it knows");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Version 4: resuming an interrupted transfer (V4-resume).
// ---------------------------------------------------------------------------------------------

const F: usize = FRAME_V2;

#[test]
fn v4_resume_sends_only_what_b_lacks_and_takes_back_only_what_a_lacks() {
    let file = bytes(10 * F + 123, 8);
    // B holds 6 frames and part of a 7th (not offered: whole frames only); A holds 3 frames
    // and a bit of the returned copy (kept to whole frames).
    let s =
        Sim::new(file.clone(), WINDOW_V2, Faults::default()).resuming(&file[..6 * F + 500], &file[..3 * F + 77]).run();
    s.a_ok();
    assert_eq!(s.b_ok().digest, digest(&file));
    assert_eq!(s.a_raw_from, 6 * F as u64, "the data leg resent only what B lacked");
    assert_eq!(s.b_returned, (file.len() - 3 * F) as u64, "the return leg only what A lacked");
    assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]), "A's copy is whole: its part and the rest");
    let resumed = Resumed { from: 6 * F as u64, ret_from: 3 * F as u64 };
    assert_eq!((s.a_ok().resumed, s.b_ok().resumed), (resumed, resumed), "both sides report it");
}

#[test]
fn v4_resume_of_a_whole_copy_sends_nothing_on_the_data_leg() {
    let file = bytes(4 * F + 9, 3);
    let s = Sim::new(file.clone(), WINDOW_V2, Faults::default()).resuming(&file, &file[..2 * F]).run();
    s.a_ok();
    assert_eq!(s.a_raw_from, file.len() as u64);
    assert_eq!(s.b_returned, (file.len() - 2 * F) as u64);
    assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]));
}

#[test]
fn v4_resume_from_a_changed_original_starts_over_on_both_legs() {
    let file = bytes(5 * F, 1);
    let old = bytes(5 * F, 2);
    let s = Sim::new(file.clone(), WINDOW_V2, Faults::default()).resuming(&old[..3 * F], &file[..2 * F]).run();
    s.a_ok();
    assert_eq!(s.a_raw_from, 0, "B's prefix is not the original's: everything is sent");
    assert_eq!(s.b_returned, file.len() as u64, "and everything comes back");
    assert_eq!(s.b_ok().digest, digest(&file));
    assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]));
}

#[test]
fn v4_resume_ignores_a_partial_returned_copy_that_differs_from_the_original() {
    let file = bytes(5 * F, 4);
    let mut damaged = file[..3 * F].to_vec();
    damaged[F + 7] ^= 1;
    let s = Sim::new(file.clone(), WINDOW_V2, Faults::default()).resuming(&file[..4 * F], &damaged).run();
    s.a_ok();
    assert_eq!(s.a_raw_from, 4 * F as u64, "B's part is right and kept");
    assert_eq!(s.b_returned, file.len() as u64, "A's part is not: the whole copy comes back");
    assert_eq!(s.a_saved[0].as_deref(), Some(&file[..]));
}

#[test]
fn v4_resume_a_returned_copy_corrupted_after_a_resume_is_still_caught() {
    let file = bytes(6 * F, 6);
    let faults = Faults { return_flip: Some(4 * F + 3), ..Faults::default() };
    let s = Sim::new(file.clone(), WINDOW_V2, faults).resuming(&file[..5 * F], &file[..2 * F]).run();
    assert!(matches!(s.a_err(), Failure::Mismatch { leg: Leg::Return, .. }), "{:?}", s.a_err());
    assert!(s.a_saved[0].is_none());
}

#[test]
fn v4_resume_reading_the_prefixes_is_not_the_clients_silence() {
    let file = bytes(2 * F, 5);
    let (mut a, t) = a_at_header(4, file.len() as u64, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::AcceptFrom { transfer: [1; 16], prefix: digest(&file[..F]) }));
    a.handle(t, ServerInput::PartialFound { len: 0 });
    a.handle(t, ServerInput::SourcePrefix(&file[..F]));
    // The driver's reading took longer than the idle timeout.
    let later = t + IDLE * 3;
    a.handle(later, ServerInput::PrefixRead);
    let acts = drain_a(&mut a);
    assert!(sent_data_a(&acts).iter().any(|m| matches!(m, DataMsg::Resume { from, .. } if *from == F as u64)));
    assert!(a.poll_timeout().is_some_and(|d| d > later), "the idle timeout counts from the end of the reading");
    a.handle_timeout(later);
    assert!(finished_a(&drain_a(&mut a)).is_none());
}

#[test]
fn v4_resume_offers_that_do_not_fit_are_violations() {
    let size = 3 * F as u64 + 5;
    let offer =
        |have: u64| DataMsg::AcceptFrom { transfer: [1; 16], prefix: Digest { size: have, crc32: 0, blake3: [0; 32] } };
    for have in [size + 1, F as u64 + 1] {
        let (mut a, t) = a_at_header(4, size, WINDOW_V2);
        a.handle(t, ServerInput::Data(offer(have)));
        let acts = drain_a(&mut a);
        let f = failure_a(&acts);
        assert!(matches!(f, Failure::Protocol { violation: Violation::BadResume { .. }, .. }), "{have}: {f:?}");
    }
    // The whole file, even if not whole frames, may be offered; so may nothing.
    for have in [size, 0] {
        let (mut a, t) = a_at_header(4, size, WINDOW_V2);
        a.handle(t, ServerInput::Data(offer(have)));
        assert!(matches!(drain_a(&mut a)[..], [ServerAction::FindPartial { transfer }] if transfer == [1; 16]));
    }
    // Version 3 knows no offers.
    let (mut a, t) = a_at_header(3, size, WINDOW_V2);
    a.handle(t, ServerInput::Data(offer(0)));
    assert!(matches!(failure_a(&drain_a(&mut a)), Failure::Protocol { .. }));
}

/// A client that offered `held` of a file of `size` bytes and waits for the `Resume`.
fn b_offering(now: Instant, size: u64, held: &[u8]) -> ClientSession {
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, now);
    b.handle(
        now,
        ClientInput::Data(DataMsg::Welcome {
            version: VERSION,
            topology: Topology::Listen { zmq_port: 9 },
            auth: None,
        }),
    );
    b.handle(now, ClientInput::Ret(ReturnMsg::HelloAck { version: VERSION }));
    b.handle(now, ClientInput::Data(DataMsg::Header { size, name: "f".into() }));
    b.handle(now, ClientInput::PrefixBytes(held));
    b.handle(now, ClientInput::OutputReady { transfer: [2; 16] });
    drain_b(&mut b);
    b
}

#[test]
fn v4_resume_credit_that_overtakes_the_resume_still_counts() {
    // A sends Resume on TCP, then grants credit on the return channel: the credit may come first.
    let now = Instant::now();
    let mut b = b_offering(now, 5 * F as u64, &bytes(3 * F, 1));
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: 2 * F as u64 }));
    b.handle(now, ClientInput::Data(DataMsg::Resume { from: 3 * F as u64, ret_from: F as u64 }));
    let frames: Vec<_> = drain_b(&mut b)
        .into_iter()
        .filter_map(|a| match a {
            ClientAction::SendFrame { offset, len, .. } => Some((offset, len)),
            _ => None,
        })
        .collect();
    assert_eq!(frames, [(F as u64, F as u64), (2 * F as u64, F as u64)], "held frames go back under that credit");
}

#[test]
fn v4_resume_answers_that_do_not_fit_the_offer_are_violations() {
    for (from, ret_from) in [(F as u64, 0), (0, F as u64), (2 * F as u64, F as u64 + 1), (4 * F as u64, 0)] {
        let now = Instant::now();
        let mut b = b_offering(now, 5 * F as u64, &bytes(2 * F, 1));
        b.handle(now, ClientInput::Data(DataMsg::Resume { from, ret_from }));
        let ok = from == 2 * F as u64 && ret_from.is_multiple_of(F as u64) && ret_from <= from;
        let acts = drain_b(&mut b);
        let failed = acts.iter().any(|a| matches!(a, ClientAction::Finish(Err(Failure::Protocol { .. }))));
        assert_eq!(failed, !ok, "({from}, {ret_from}): {acts:?}");
    }
}

#[test]
fn v2_both_legs_end_on_a_return_leg_corrupted_mid_pipeline() {
    let file = bytes(5 * FRAME_V2 + 3, 2);
    let s = Sim::new(file, WINDOW_V2, Faults { return_flip: Some(2 * FRAME_V2 + 5), ..Faults::default() }).run();
    let f = s.a_err();
    assert!(matches!(f, Failure::Mismatch { leg: Leg::Return, .. }), "{f:?}");
    assert!(f.to_string().contains("returned copy differs from what was sent"), "{f}");
    assert!(matches!(s.b_err(), Failure::PeerMismatch { leg: Leg::Return, .. }), "{:?}", s.b_err());
    assert!(s.a_saved[0].is_none(), "A saves nothing that differs");
    assert!(s.b_committed, "B's own copy was verified on arrival and is kept");
}

#[test]
fn v2_result_a_return_mismatch_names_where_the_copy_first_differs_on_both_sides() {
    let at = 2 * FRAME_V2 + 5;
    let s =
        Sim::new(bytes(5 * FRAME_V2 + 3, 2), WINDOW_V2, Faults { return_flip: Some(at), ..Faults::default() }).run();
    let Failure::Mismatch { diff, .. } = s.a_err() else { panic!("{:?}", s.a_err()) };
    assert_eq!(diff.first.as_deref(), Some(&Locus::Exact(ByteRange { offset: at as u64, len: 1 })));
    let said = format!("the first differing byte is byte {at}");
    assert!(s.a_err().to_string().contains(&said), "A's log and console: {}", s.a_err());
    assert!(s.b_err().to_string().contains(&said), "B is told in the Result: {}", s.b_err());
}

#[test]
fn v2_save_failure_is_not_a_mismatch() {
    let file = bytes(3000, 5);
    let s = Sim::new(file.clone(), WINDOW_V2, Faults { b_cannot_save: true, ..Faults::default() }).run();
    assert!(matches!(s.b_err(), Failure::Local(LocalFailure::Output { .. })), "{:?}", s.b_err());
    let a = s.a_err();
    assert!(matches!(a, Failure::Refused { .. }), "A hears why, in B's words: {a:?}");
    assert!(a.to_string().contains("cannot write"), "{a}");
    let s = Sim::new(file, WINDOW_V2, Faults { a_cannot_save: true, ..Faults::default() }).run();
    assert!(matches!(s.a_err(), Failure::Local(LocalFailure::Output { .. })), "{:?}", s.a_err());
    assert!(matches!(s.b_err(), Failure::Refused { .. }), "{:?}", s.b_err());
}

// ---------------------------------------------------------------------------------------------
// Data channel rules.
// ---------------------------------------------------------------------------------------------

#[test]
fn v1_data_rule_0_only_whole_messages_are_progress() {
    // The transport reads frames whole and passes only complete ones; a peer that trickles bytes
    // therefore makes no progress, and the idle timeout counts from the last complete message.
    let t = Instant::now();
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    assert_eq!(a.poll_timeout(), Some(t + IDLE));
    a.handle_timeout(t + IDLE - Duration::from_millis(1));
    assert!(drain_a(&mut a).is_empty());
    a.handle_timeout(t + IDLE);
    let acts = drain_a(&mut a);
    assert!(matches!(failure_a(&acts), Failure::Timeout { during: Phase::Handshake, .. }), "{acts:?}");
}

#[test]
fn v1_data_rule_1_b_verifies_size_crc_and_blake3_and_saves_only_a_match() {
    let now = Instant::now();
    let file = bytes(5000, 4);
    let mut b = client_in_transfer(now, file.len() as u64);
    let mut wrong = file.clone();
    wrong[100] ^= 1;
    b.handle(now, ClientInput::Raw(&wrong));
    b.handle(now, ClientInput::Saved(wrong.len() as u64));
    drain_b(&mut b);
    let d = digest(&file);
    b.handle(now, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32, blake3: d.blake3, chunks: Vec::new() }));
    let acts = drain_b(&mut b);
    assert!(!acts.iter().any(|a| matches!(a, ClientAction::Commit)), "nothing saved: {acts:?}");
    match sent_data_b(&acts)[..] {
        [DataMsg::Verdict { ok: false, reason }, ..] => assert!(reason.contains("CRC-32") && reason.contains("BLAKE3")),
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(failure_b(&acts), Failure::Mismatch { leg: Leg::Data, .. }));

    let mut b = client_in_transfer(now, file.len() as u64);
    b.handle(now, ClientInput::Raw(&file));
    b.handle(now, ClientInput::Saved(file.len() as u64));
    drain_b(&mut b);
    b.handle(now, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32, blake3: d.blake3, chunks: Vec::new() }));
    assert!(matches!(drain_b(&mut b)[..], [ClientAction::Commit]), "saved only after the Trailer matched");
    b.handle(now, ClientInput::Committed);
    let acts = drain_b(&mut b);
    assert!(matches!(sent_data_b(&acts)[..], [DataMsg::Verdict { ok: true, .. }]), "{acts:?}");
}

#[test]
fn v1_data_rule_2_an_error_frame_ends_the_session_with_its_reason() {
    let (mut a, t) = a_at_header(2, 10, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::Error { code: ErrorCode::Internal, reason: "client: disk on fire".into() }));
    let acts = drain_a(&mut a);
    let f = failure_a(&acts);
    assert!(matches!(f, Failure::Refused { .. }) && f.to_string().contains("disk on fire"), "{f}");
    assert!(sent_ret_a(&acts).is_empty(), "the client caused it: nothing to tell");

    let now = Instant::now();
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, now);
    drain_b(&mut b);
    b.handle(now, ClientInput::Data(DataMsg::Error { code: ErrorCode::Busy, reason: "server busy: full".into() }));
    let acts = drain_b(&mut b);
    let f = failure_b(&acts);
    // Its own kind, so the driver knows to try again; the words once, not twice.
    assert!(matches!(f, Failure::Busy { .. }), "{f:?}");
    assert_eq!(f.to_string(), "the server is busy: full");
}

#[test]
fn v3_queued_waiting_in_line_is_progress_until_welcome() {
    let now = Instant::now();
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, now);
    drain_b(&mut b);
    // Notices keep coming for longer than the idle timeout: no timeout while they do.
    let mut t = now;
    for position in [3, 2, 2, 1] {
        t += IDLE / 2;
        b.handle_timeout(t);
        b.handle(t, ClientInput::Data(DataMsg::Queued { position }));
        let acts = drain_b(&mut b);
        assert!(acts.iter().any(|a| matches!(a, ClientAction::Queued { position: p } if *p == position)), "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, ClientAction::Finish(_))), "{acts:?}");
    }
    // Then the server's silence counts again.
    b.handle_timeout(t + IDLE * 2);
    assert!(matches!(failure_b(&drain_b(&mut b)), Failure::Timeout { .. }));
}

#[test]
fn v1_data_rule_2_nothing_is_framed_on_tcp_after_the_header() {
    let (mut a, t) = a_at_header(2, 10, WINDOW_V2);
    a.handle(t, ServerInput::Stop);
    let acts = drain_a(&mut a);
    assert!(sent_data_a(&acts).is_empty(), "B may be reading raw bytes: {acts:?}");
    match sent_ret_a(&acts)[..] {
        [ReturnMsg::Abort { reason }] => assert!(reason.contains("shutting down"), "{reason}"),
        ref other => panic!("the reason goes on the return channel: {other:?}"),
    }
    assert!(acts.iter().any(|a| matches!(a, ServerAction::CloseData)));
}

#[test]
fn v1_data_rule_2_a_data_channel_closed_mid_file_waits_500_ms_for_an_abort() {
    for abort in [true, false] {
        let (mut a, t) = a_at_header(2, 10_000, WINDOW_V2);
        a.handle(t, ServerInput::Data(DataMsg::Accept));
        drain_a(&mut a);
        a.handle(t, ServerInput::DataClosed);
        assert!(drain_a(&mut a).is_empty(), "not yet: an Abort may explain it");
        assert_eq!(a.poll_timeout(), Some(t + ABORT_GRACE));
        if abort {
            a.handle(t + ABORT_GRACE / 2, ServerInput::Ret(ReturnMsg::Abort { reason: "client: interrupted".into() }));
            let acts = drain_a(&mut a);
            assert!(failure_a(&acts).to_string().contains("client: interrupted"), "{acts:?}");
        } else {
            a.handle_timeout(t + ABORT_GRACE);
            let acts = drain_a(&mut a);
            let f = failure_a(&acts);
            assert!(matches!(f, Failure::Closed { during: Phase::Data { .. } }), "{f:?}");
            assert!(f.to_string().contains("sending the file"), "{f}");
        }
    }
    // The same on B's side.
    let now = Instant::now();
    let mut b = client_in_transfer(now, 10_000);
    b.handle(now, ClientInput::DataClosed);
    assert!(drain_b(&mut b).is_empty());
    b.handle(now, ClientInput::Ret(ReturnMsg::Abort { reason: "the server is shutting down; try again later".into() }));
    assert!(failure_b(&drain_b(&mut b)).to_string().contains("shutting down"));
    let mut b = client_in_transfer(now, 10_000);
    b.handle(now, ClientInput::DataClosed);
    b.handle_timeout(now + ABORT_GRACE);
    let f = failure_b(&drain_b(&mut b)).to_string();
    assert!(f.contains("receiving the file") && f.contains("closed the connection"), "{f}");
}

#[test]
fn v1_data_rule_3_a_first_frame_that_is_not_hello_gets_error_code_3() {
    let t = Instant::now();
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    a.handle(t, ServerInput::Data(DataMsg::Ready));
    let acts = drain_a(&mut a);
    assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Protocol, .. }]), "{acts:?}");
    assert!(!a.greeted(), "a stray connection never counts as a client");
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    a.handle(t, ServerInput::DataUndecodable(crate::protocol::DecodeError::UnknownType(0x47)));
    let acts = drain_a(&mut a);
    assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Protocol, .. }]), "{acts:?}");
}

#[test]
fn v1_data_rule_5_either_side_times_out_a_silent_peer_and_keepalives_prevent_it() {
    // B waits on A: silence for the idle timeout ends the session.
    let now = Instant::now();
    let mut b = client_in_transfer(now, 10);
    b.handle_timeout(now + IDLE);
    assert!(matches!(failure_b(&drain_b(&mut b)), Failure::Timeout { .. }));
    // B busy converting the CSV is not waiting on A, and says so every second.
    let (mut b, t) = client_making_csv();
    let acts = {
        b.handle_timeout(t + Duration::from_secs(1));
        drain_b(&mut b)
    };
    assert!(matches!(sent_ret_b(&acts)[..], [ReturnMsg::KeepAlive]), "{acts:?}");
    b.handle_timeout(t + 10 * IDLE);
    assert!(!drain_b(&mut b).iter().any(|a| matches!(a, ClientAction::Finish(_))), "never idle while busy");
}

// ---------------------------------------------------------------------------------------------
// Return channel rules (version 1 and 2 alike).
// ---------------------------------------------------------------------------------------------

#[test]
fn v1_handshake_a_repeated_hello_is_answered_again() {
    let (mut a, t) = a_at_header(2, 10, WINDOW_V2);
    a.handle(t, ServerInput::ReturnHello { version: 2 });
    let acts = drain_a(&mut a);
    assert!(matches!(sent_ret_a(&acts)[..], [ReturnMsg::HelloAck { version: 2 }]), "{acts:?}");
    assert!(finished_a(&acts).is_none());
}

#[test]
fn v1_handshake_ready_before_the_return_channels_hello_is_a_violation() {
    let t = Instant::now();
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    a.handle(t, ServerInput::Data(DataMsg::Hello { version: 2, token: TOKEN, return_port: 0, auth: None }));
    a.handle(t, ServerInput::Registered);
    drain_a(&mut a);
    a.handle(t, ServerInput::Data(DataMsg::Ready));
    let acts = drain_a(&mut a);
    assert!(matches!(failure_a(&acts), Failure::Protocol { violation: Violation::ReadyTooEarly, .. }));
}

#[test]
fn v1_handshake_a_token_in_use_is_refused() {
    let t = Instant::now();
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    a.handle(t, ServerInput::Data(DataMsg::Hello { version: 2, token: TOKEN, return_port: 0, auth: None }));
    a.handle(t, ServerInput::TokenInUse);
    let acts = drain_a(&mut a);
    assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Protocol, .. }]));
    assert!(matches!(failure_a(&acts), Failure::Protocol { violation: Violation::DuplicateToken, .. }));
}

#[test]
fn v1_flow_step_1_an_offer_of_another_size_is_rejected() {
    let file = bytes(100, 1);
    let (mut a, t, _) = a_after_data_leg(1, &file, WINDOW_V1);
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: 101 }));
    let acts = drain_a(&mut a);
    match sent_ret_a(&acts)[..] {
        [ReturnMsg::Result { ok: false, reason, .. }] => assert!(reason.contains("offers 101 bytes"), "{reason}"),
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(failure_a(&acts), Failure::SizeMismatch { offered: 101, sent: 100, .. }));
}

#[test]
fn v1_flow_step_2_a_grants_its_window_at_the_offer() {
    let file = bytes(100, 1);
    let (mut a, t, _) = a_after_data_leg(1, &file, WINDOW_V2);
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: 100 }));
    let acts = drain_a(&mut a);
    assert!(acts.iter().any(|x| matches!(x, ServerAction::OpenSink(Stream::File))));
    assert!(
        matches!(sent_ret_a(&acts)[..], [ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V1 }]),
        "version 1 keeps its window: {acts:?}"
    );
}

#[test]
fn v1_flow_step_3_b_sends_only_whole_frames_its_credit_covers() {
    let now = Instant::now();
    let mut b = client_in_transfer(now, 3 * FRAME_V2 as u64);
    let frame = vec![1u8; FRAME_V2];
    for _ in 0..3 {
        b.handle(now, ClientInput::Raw(&frame));
        b.handle(now, ClientInput::Saved(FRAME_V2 as u64));
    }
    assert!(drain_b(&mut b).is_empty(), "no credit, no frame");
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: FRAME_V2 as u64 - 1 }));
    assert!(drain_b(&mut b).is_empty(), "credit one byte short of a frame sends nothing");
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: FRAME_V2 as u64 + 1 }));
    let acts = drain_b(&mut b);
    let frames: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            ClientAction::SendFrame { offset, len, .. } => Some((*offset, *len)),
            _ => None,
        })
        .collect();
    assert_eq!(frames, [(0, FRAME_V2 as u64), (FRAME_V2 as u64, FRAME_V2 as u64)]);
}

#[test]
fn v1_flow_step_4_frames_out_of_order_of_the_wrong_size_or_beyond_credit_are_violations() {
    let file = bytes(3 * FRAME_V1, 2);
    let cases: [(u64, usize, &str); 4] = [
        (FRAME_V1 as u64, FRAME_V1, "Data for bytes"),
        (0, FRAME_V1 - 1, "the protocol requires"),
        (0, 0, "Data for bytes"),
        (u64::MAX, 1, "Data for bytes"),
    ];
    for (offset, len, expect) in cases {
        let (mut a, t, _) = a_after_data_leg(1, &file, WINDOW_V1);
        a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: file.len() as u64 }));
        drain_a(&mut a);
        let acts = a_data(&mut a, t, Stream::File, offset, &file[..len]);
        let f = failure_a(&acts);
        assert!(f.to_string().contains(expect), "offset {offset} len {len}: {f}");
        assert!(matches!(sent_ret_a(&acts)[..], [ReturnMsg::Abort { .. }]), "{acts:?}");
    }
    // A peer that sends beyond its credit overflows the hub's bounded queue for the session
    // (A grants each frame back as it takes it, so only the queue can see the excess).
    let (mut a, t, _) = a_after_data_leg(2, &file, WINDOW_V2);
    a.handle(t, ServerInput::RetFlooded);
    let acts = drain_a(&mut a);
    let f = failure_a(&acts);
    assert!(matches!(f, Failure::Protocol { violation: Violation::Flooded, .. }), "{f:?}");
    assert!(f.to_string().contains("more than its flow-control credit allowed"), "{f}");
}

#[test]
fn v1_flow_step_5_credits_after_the_end_are_ignored() {
    let (mut b, t) = client_waiting_for_file_result(100);
    b.handle(t, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: 4096 }));
    assert!(drain_b(&mut b).is_empty());
}

#[test]
fn v1_flow_step_6_a_compares_with_what_it_sent_never_with_the_clients_claims() {
    let file = bytes(1000, 7);
    // Right bytes, wrong claims: accepted (a buggy client), with a warning action.
    let (mut a, t, _) = a_after_data_leg(2, &file, WINDOW_V2);
    let mut lie = digest(&file);
    lie.crc32 ^= 1;
    let acts = a_return(&mut a, t, &file, FRAME_V2, lie);
    assert!(acts.iter().any(|x| matches!(x, ServerAction::ClaimDiffers(_))), "{acts:?}");
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::File))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::File));
    assert!(matches!(sent_ret_a(&drain_a(&mut a))[..], [ReturnMsg::Result { ok: true, .. }]));
    // Wrong bytes, honest-looking claims: rejected, nothing saved.
    let (mut a, t, _) = a_after_data_leg(2, &file, WINDOW_V2);
    let mut back = file.clone();
    back[999] ^= 0x80;
    let acts = a_return(&mut a, t, &back, FRAME_V2, digest(&file));
    assert!(!acts.iter().any(|x| matches!(x, ServerAction::Commit(_))));
    // First the driver is asked where the copy differs; the verdict follows its answer.
    assert!(matches!(acts.last(), Some(ServerAction::Locate)), "{acts:?}");
    a.handle(t, ServerInput::Located(Some(ByteRange { offset: 999, len: 1 })));
    let acts = drain_a(&mut a);
    match sent_ret_a(&acts)[..] {
        [ReturnMsg::Result { ok: false, reason, .. }] => {
            assert!(reason.starts_with("returned copy differs"), "{reason}");
            assert!(reason.ends_with("the first differing byte is byte 999 (counting from 0)"), "{reason}");
        }
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(failure_a(&acts), Failure::Mismatch { leg: Leg::Return, .. }));
}

/// A server whose file came back and was saved; waiting for the CSV.
fn a_awaiting_csv(file: &[u8], expected: Option<ExpectedCsv>) -> (ServerSession, Instant) {
    let (mut a, t, _) = a_after_data_leg(2, file, WINDOW_V2);
    if let Some(e) = expected {
        a.handle(t, ServerInput::ExpectedCsv(e));
    }
    let acts = a_return(&mut a, t, file, FRAME_V2, digest(file));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::File))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::File));
    drain_a(&mut a);
    (a, t)
}

fn a_send_csv(a: &mut ServerSession, t: Instant, csv: &[u8], claimed: Digest) -> Vec<ServerAction> {
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::Csv, size: csv.len() as u64 }));
    let mut acts = drain_a(a);
    for (i, chunk) in csv.chunks(FRAME_V2).enumerate() {
        acts.extend(a_data(a, t, Stream::Csv, (i * FRAME_V2) as u64, chunk));
    }
    a.handle(t, ServerInput::Ret(ReturnMsg::End { stream: Stream::Csv, crc32: claimed.crc32, blake3: claimed.blake3 }));
    acts.extend(drain_a(a));
    acts
}

fn csv_result(acts: &[ServerAction]) -> Option<(bool, String)> {
    sent_ret_a(acts).into_iter().find_map(|m| match m {
        ReturnMsg::Result { stream: Stream::Csv, ok, reason } => Some((*ok, reason.clone())),
        _ => None,
    })
}

#[test]
fn v1_flow_step_7_the_csv_must_match_the_clients_end_and_the_servers_own_conversion() {
    let file = bytes(500, 1);
    let csv = b"1.0000,2.0000,3.0000\n".to_vec();
    let own = ExpectedCsv::Digest { digest: digest(&csv), rows: rows(&csv), mesh: None };
    // Intact and equal to A's own: saved.
    let (mut a, t) = a_awaiting_csv(&file, Some(own.clone()));
    let acts = a_send_csv(&mut a, t, &csv, digest(&csv));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::Csv))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::Csv));
    assert_eq!(csv_result(&drain_a(&mut a)), Some((true, String::new())));
    // Damaged in transit (differs from the client's own End).
    let (mut a, t) = a_awaiting_csv(&file, Some(own.clone()));
    let mut bad = csv.clone();
    bad[0] = b'9';
    let (ok, why) = csv_result(&a_send_csv(&mut a, t, &bad, digest(&csv))).unwrap();
    assert!(!ok && why.contains("damaged in transit"), "{why}");
    // Consistent with its own End, but not what A derives: a dishonest client.
    let (mut a, t) = a_awaiting_csv(&file, Some(own));
    let (ok, why) = csv_result(&a_send_csv(&mut a, t, &bad, digest(&bad))).unwrap();
    assert!(!ok && why.contains("differs from the server's own conversion"), "{why}");
    // A CSV for a file that is not STL.
    let (mut a, t) = a_awaiting_csv(&file, Some(ExpectedCsv::NotStl));
    let (ok, why) = csv_result(&a_send_csv(&mut a, t, &csv, digest(&csv))).unwrap();
    assert!(!ok && why.contains("not STL"), "{why}");
    // Bigger than any CSV of the file could be: refused before a byte is written.
    let (mut a, t) = a_awaiting_csv(&file, None);
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::Csv, size: 500 * 11 + 65 }));
    let acts = drain_a(&mut a);
    assert!(!acts.iter().any(|x| matches!(x, ServerAction::OpenSink(_))));
    assert!(csv_result(&acts).is_some_and(|(ok, why)| !ok && why.contains("cannot come from")));
}

#[test]
fn v1_flow_step_7_skip_says_why_there_is_no_csv() {
    let file = bytes(50, 1);
    for (failed, expect) in [(false, "NotMade"), (true, "Failed")] {
        let (mut a, t) = a_awaiting_csv(&file, None);
        a.handle(t, ServerInput::Ret(ReturnMsg::Skip { stream: Stream::Csv, failed, reason: "line 3: bad".into() }));
        a.handle(t, ServerInput::Ret(ReturnMsg::Bye));
        let acts = drain_a(&mut a);
        let Some(Ok(o)) = finished_a(&acts) else { panic!("{acts:?}") };
        assert!(format!("{:?}", o.csv).starts_with(expect), "{:?}", o.csv);
    }
}

#[test]
fn v1_flow_step_8_bye_ends_the_session_and_is_not_required() {
    let file = bytes(50, 1);
    let (mut a, t) = a_awaiting_csv(&file, None);
    a.handle(t, ServerInput::Ret(ReturnMsg::Bye));
    let acts = drain_a(&mut a);
    let Some(Ok(o)) = finished_a(&acts) else { panic!("Bye instead of the CSV: no CSV, {acts:?}") };
    assert!(matches!(&o.csv, CsvResult::NotMade(why) if why.contains("sent none")));
    // Without the Bye, A finishes after a short wait anyway.
    let (mut a, t) = a_awaiting_csv(&file, None);
    a.handle(t, ServerInput::Ret(ReturnMsg::Skip { stream: Stream::Csv, failed: false, reason: "not STL".into() }));
    assert!(drain_a(&mut a).is_empty());
    a.handle_timeout(t + BYE_WAIT);
    assert!(matches!(finished_a(&drain_a(&mut a)), Some(Ok(_))));
}

#[test]
fn v1_keepalive_while_the_server_derives_its_own_csv() {
    let file = bytes(50, 1);
    let csv = b"x\n".to_vec();
    let (mut a, t) = a_awaiting_csv(&file, None);
    let acts = a_send_csv(&mut a, t, &csv, digest(&csv));
    assert!(csv_result(&acts).is_none(), "A waits for its own conversion");
    a.handle_timeout(t + Duration::from_secs(1));
    assert!(matches!(sent_ret_a(&drain_a(&mut a))[..], [ReturnMsg::KeepAlive]));
    a.handle_timeout(t + 5 * IDLE);
    assert!(finished_a(&drain_a(&mut a)).is_none(), "A is not waiting on the client meanwhile");
    a.handle(
        t + 5 * IDLE,
        ServerInput::ExpectedCsv(ExpectedCsv::Digest { digest: digest(&csv), rows: rows(&csv), mesh: None }),
    );
    assert!(drain_a(&mut a).iter().any(|x| matches!(x, ServerAction::Commit(Stream::Csv))));
}

#[test]
fn v1_after_a_negative_result_or_an_abort_the_session_is_over() {
    let (mut a, t) = a_at_header(2, 10, WINDOW_V2);
    a.handle(t, ServerInput::Ret(ReturnMsg::Abort { reason: "client: bye".into() }));
    assert!(finished_a(&drain_a(&mut a)).is_some());
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    assert!(drain_a(&mut a).is_empty(), "nothing after the end");
    let (mut b, t) = client_waiting_for_file_result(10);
    b.handle(
        t,
        ClientInput::Ret(ReturnMsg::Result { stream: Stream::File, ok: false, reason: "returned copy differs".into() }),
    );
    let acts = drain_b(&mut b);
    assert!(matches!(failure_b(&acts), Failure::PeerMismatch { leg: Leg::Return, .. }));
    b.handle(t, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: 1 }));
    assert!(drain_b(&mut b).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Version 2.
// ---------------------------------------------------------------------------------------------

#[test]
fn v2_negotiation_answers_each_client_in_its_version() {
    let t = Instant::now();
    for (asked, answered) in [
        (1u16, Some(1u16)),
        (2, Some(2)),
        (3, Some(3)),
        (4, Some(4)),
        (5, Some(5)),
        (6, Some(6)),
        (7, Some(6)),
        (0, None),
    ] {
        let mut a = ServerSession::new(params(WINDOW_V2), t);
        a.handle(t, ServerInput::Data(DataMsg::Hello { version: asked, token: TOKEN, return_port: 0, auth: None }));
        let acts = drain_a(&mut a);
        match answered {
            Some(v) => {
                assert!(matches!(acts[..], [ServerAction::Register { .. }]), "{acts:?}");
                a.handle(t, ServerInput::Registered);
                let acts = drain_a(&mut a);
                assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Welcome { version, .. }] if *version == v));
            }
            None => {
                assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Version, .. }]));
                assert!(matches!(failure_a(&acts), Failure::Version { theirs: 0, .. }));
            }
        }
    }
    // B refuses a Welcome in a version it does not speak.
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, t);
    drain_b(&mut b);
    b.handle(t, ClientInput::Data(DataMsg::Welcome { version: 1, topology: Topology::Remote, auth: None }));
    let acts = drain_b(&mut b);
    assert!(matches!(sent_data_b(&acts)[..], [DataMsg::Error { code: ErrorCode::Version, .. }]));
    assert!(matches!(failure_b(&acts), Failure::Version { theirs: 1, .. }));
}

#[test]
fn v4_step_down_a_client_speaks_an_older_servers_version_and_offers_nothing() {
    let t = Instant::now();
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, t);
    drain_b(&mut b);
    b.handle(
        t,
        ClientInput::Data(DataMsg::Welcome { version: 3, topology: Topology::Listen { zmq_port: 9 }, auth: None }),
    );
    let acts = drain_b(&mut b);
    assert!(matches!(sent_ret_b(&acts)[..], [ReturnMsg::Hello { version: 3, .. }]), "{acts:?}");
    b.handle(t, ClientInput::Ret(ReturnMsg::HelloAck { version: 3 }));
    b.handle(t, ClientInput::Data(DataMsg::Header { size: 10, name: "f".into() }));
    let acts = drain_b(&mut b);
    assert!(acts.iter().any(|a| matches!(a, ClientAction::PrepareOutput { resume: false, .. })), "{acts:?}");
    b.handle(t, ClientInput::OutputReady { transfer: [1; 16] });
    let acts = drain_b(&mut b);
    assert!(matches!(sent_data_b(&acts)[..], [DataMsg::Accept]), "the Accept version 3 knows: {acts:?}");
    assert!(acts.iter().any(|a| matches!(a, ClientAction::ResumeAt { from: 0, ret_from: 0 })));
    // The raw bytes follow at once, and the Trailer without pieces verifies them.
    b.handle(t, ClientInput::Raw(b"0123456789"));
    let d = digest(b"0123456789");
    b.handle(t, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32, blake3: d.blake3, chunks: Vec::new() }));
    assert!(drain_b(&mut b).iter().any(|a| matches!(a, ClientAction::Commit)));
}

#[test]
fn v2_return_hello_must_carry_the_negotiated_version() {
    let t = Instant::now();
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    a.handle(t, ServerInput::Data(DataMsg::Hello { version: 2, token: TOKEN, return_port: 0, auth: None }));
    a.handle(t, ServerInput::Registered);
    drain_a(&mut a);
    a.handle(t, ServerInput::ReturnHello { version: 1 });
    let acts = drain_a(&mut a);
    assert!(matches!(sent_ret_a(&acts)[..], [ReturnMsg::Abort { reason }] if reason.contains("version 1")));
    assert!(matches!(failure_a(&acts), Failure::Version { theirs: 1, .. }));
}

#[test]
fn v2_initial_credit_comes_with_accept_and_implicit_offer() {
    let (mut a, t) = a_at_header(2, 5 * FRAME_V2 as u64, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    let acts = drain_a(&mut a);
    assert!(acts.iter().any(|x| matches!(x, ServerAction::OpenSink(Stream::File))));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::StartRaw { from: 0 })));
    assert!(matches!(sent_ret_a(&acts)[..], [ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V2 }]));
    // Stream 0 is offered by the Header: an Offer(0) is a violation in version 2.
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: 5 * FRAME_V2 as u64 }));
    assert!(matches!(failure_a(&drain_a(&mut a)), Failure::Protocol { .. }));
    // Version 1 grants nothing before the Offer.
    let (mut a, t) = a_at_header(1, 100, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    assert!(sent_ret_a(&drain_a(&mut a)).is_empty());
}

#[test]
fn v2_cut_through_frames_go_back_before_the_trailer() {
    let now = Instant::now();
    let mut b = client_in_transfer(now, 3 * FRAME_V2 as u64);
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V2 }));
    let frame = vec![2u8; FRAME_V2];
    b.handle(now, ClientInput::Raw(&frame[..100]));
    assert!(drain_b(&mut b).is_empty(), "a frame goes back whole");
    b.handle(now, ClientInput::Raw(&frame[100..]));
    b.handle(now, ClientInput::Saved(FRAME_V2 as u64));
    let acts = drain_b(&mut b);
    assert!(
        matches!(acts[..], [ClientAction::SendFrame { stream: Stream::File, offset: 0, len }] if len == FRAME_V2 as u64),
        "returned as soon as it arrived and was saved: {acts:?}"
    );
}

#[test]
fn v2_credit_violations_mid_file_end_both_legs() {
    let file = bytes(3 * FRAME_V2, 6);
    let (mut a, t) = a_at_header(2, file.len() as u64, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    drain_a(&mut a);
    a.handle(t, ServerInput::RawRead(&file[..FRAME_V2]));
    a.handle(t, ServerInput::RawWritten(FRAME_V2 as u64));
    // A frame at the wrong offset while raw bytes still flow.
    let acts = a_data(&mut a, t, Stream::File, 7, &file[..FRAME_V2]);
    assert!(sent_data_a(&acts).is_empty(), "no frame on TCP mid-file");
    assert!(matches!(sent_ret_a(&acts)[..], [ReturnMsg::Abort { reason }] if reason.contains("Data for bytes 7..")));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::CloseData)), "the data leg stops at once");
    assert_eq!(a.raw_left(), 0);
}

#[test]
fn v2_end_after_verdict_and_never_after_a_negative_one() {
    let now = Instant::now();
    let file = bytes(1000, 8);
    let d = digest(&file);
    let mut b = client_in_transfer(now, file.len() as u64);
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V2 }));
    b.handle(now, ClientInput::Raw(&file));
    b.handle(now, ClientInput::Saved(file.len() as u64));
    let acts = drain_b(&mut b);
    assert!(matches!(acts[..], [ClientAction::SendFrame { .. }]), "all bytes back, but no End yet: {acts:?}");
    b.handle(now, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32, blake3: d.blake3, chunks: Vec::new() }));
    assert!(sent_ret_b(&drain_b(&mut b)).is_empty(), "no End before the copy is saved and verdict sent");
    b.handle(now, ClientInput::Committed);
    let acts = drain_b(&mut b);
    let verdict = acts.iter().position(|a| matches!(a, ClientAction::SendData(DataMsg::Verdict { ok: true, .. })));
    let end = acts.iter().position(|a| matches!(a, ClientAction::SendRet(ReturnMsg::End { .. })));
    assert!(verdict.is_some() && end.is_some() && verdict < end, "{acts:?}");
    // A wrong Trailer: Verdict(false), and no End ever.
    let mut b = client_in_transfer(now, file.len() as u64);
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V2 }));
    b.handle(now, ClientInput::Raw(&file));
    b.handle(now, ClientInput::Saved(file.len() as u64));
    drain_b(&mut b);
    b.handle(now, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32 ^ 1, blake3: d.blake3, chunks: Vec::new() }));
    let acts = drain_b(&mut b);
    assert!(matches!(sent_data_b(&acts)[..], [DataMsg::Verdict { ok: false, .. }]));
    assert!(!sent_ret_b(&acts).iter().any(|m| matches!(m, ReturnMsg::End { .. })), "{acts:?}");
}

#[test]
fn v2_result_waits_for_both_the_end_and_the_verdict_in_either_order() {
    let file = bytes(2000, 3);
    let d = digest(&file);
    let (mut a, t) = a_at_header(2, file.len() as u64, WINDOW_V2);
    a.handle(t, ServerInput::Data(DataMsg::Accept));
    a.handle(t, ServerInput::RawRead(&file));
    a.handle(t, ServerInput::RawWritten(file.len() as u64));
    a.handle(t, ServerInput::RawDone);
    drain_a(&mut a);
    let acts = a_return(&mut a, t, &file, FRAME_V2, d);
    assert!(!acts.iter().any(|x| matches!(x, ServerAction::Commit(_))), "End before the Verdict: wait");
    a.handle(t, ServerInput::Data(DataMsg::Verdict { ok: true, reason: String::new() }));
    let acts = drain_a(&mut a);
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::File))), "{acts:?}");
    assert!(sent_ret_a(&acts).is_empty(), "Result only once the copy is saved");
    a.handle(t, ServerInput::Committed(Stream::File));
    assert!(matches!(sent_ret_a(&drain_a(&mut a))[..], [ReturnMsg::Result { stream: Stream::File, ok: true, .. }]));
}

#[test]
fn v2_both_legs_end_when_the_client_is_interrupted() {
    let now = Instant::now();
    let mut b = client_in_transfer(now, 10_000);
    b.handle(now, ClientInput::Stop);
    let acts = drain_b(&mut b);
    let on_tcp = sent_data_b(&acts);
    let on_ret = sent_ret_b(&acts);
    assert!(matches!(on_tcp[..], [DataMsg::Error { reason, .. }] if reason.starts_with("client: interrupted")));
    assert!(matches!(on_ret[..], [ReturnMsg::Abort { reason }] if reason.starts_with("client: interrupted")));
    assert!(matches!(failure_b(&acts), Failure::Interrupted));
}

#[test]
fn v2_csv_follows_the_files_result() {
    let now = Instant::now();
    let (mut b, t) = client_waiting_for_file_result(100);
    // The CSV was made while the file went back: it waits for the file's verdict.
    b.handle(now, ClientInput::CsvMade { size: 4, digest: digest(b"abc\n"), rows: 1, mesh: None });
    assert!(drain_b(&mut b).is_empty());
    b.handle(t, ClientInput::Ret(ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() }));
    let acts = drain_b(&mut b);
    assert!(matches!(sent_ret_b(&acts)[..], [ReturnMsg::Offer { stream: Stream::Csv, size: 4 }]), "{acts:?}");
}

#[test]
fn regression_a_csv_failure_known_before_the_files_verdict_keeps_that_verdict() {
    // The conversion of an invalid STL failed while the file was still on its way back; when A's
    // verdict on the file came, the machine finished with the CSV's failure in the same step and
    // dropped the file's milestone with the other queued work: no `Done! - TX`.
    let (mut b, t) = client_waiting_for_file_result(100);
    let bad = "line 91: the loop of facet 13 has more than 3 vertices".to_owned();
    b.handle(t, ClientInput::CsvFailed(Failure::Csv(CsvFailure::ClientCouldNot(bad))));
    assert!(drain_b(&mut b).is_empty(), "kept until the file's verdict");
    b.handle(t, ClientInput::Ret(ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() }));
    let acts = drain_b(&mut b);
    assert!(acts.iter().any(|a| matches!(a, ClientAction::Milestone(Milestone::ReturnLeg(_)))), "{acts:?}");
    assert!(matches!(failure_b(&acts), Failure::Csv(_)));
    assert!(matches!(sent_ret_b(&acts)[..], [ReturnMsg::Skip { failed: true, .. }, ReturnMsg::Bye]), "{acts:?}");
}

#[test]
fn version_1_session_runs_unchanged_against_the_server() {
    // A client written from the version-1 text: the file back only after the verdict, in
    // 256 KiB frames under a 2 MiB window, then the CSV.
    let file = bytes(3 * FRAME_V1 + 10, 4);
    let csv = b"0.0000,0.0000,0.0000\n".to_vec();
    let (mut a, t, acts) = a_after_data_leg(1, &file, WINDOW_V2);
    assert!(sent_ret_a(&acts).is_empty(), "version 1: no credit before the Offer");
    a.handle(t, ServerInput::ExpectedCsv(ExpectedCsv::Digest { digest: digest(&csv), rows: rows(&csv), mesh: None }));
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: file.len() as u64 }));
    drain_a(&mut a);
    let acts = a_return(&mut a, t, &file, FRAME_V1, digest(&file));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::File))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::File));
    drain_a(&mut a);
    let acts = a_send_csv_v1(&mut a, t, &csv);
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::Csv))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::Csv));
    a.handle(t, ServerInput::Ret(ReturnMsg::Bye));
    let acts = drain_a(&mut a);
    let Some(Ok(o)) = finished_a(&acts) else { panic!("{acts:?}") };
    assert_eq!((o.version, o.digest), (1, digest(&file)));
    assert!(matches!(o.csv, CsvResult::Saved { .. }));
    // Version 1 frames are 256 KiB: a version-2-sized frame is a violation there.
    let big = bytes(2 * FRAME_V2, 1);
    let (mut a, t, _) = a_after_data_leg(1, &big, WINDOW_V2);
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::File, size: big.len() as u64 }));
    drain_a(&mut a);
    let acts = a_data(&mut a, t, Stream::File, 0, &big[..FRAME_V2]);
    assert!(matches!(failure_a(&acts), Failure::Protocol { violation: Violation::FrameSize { .. }, .. }));
}

fn a_send_csv_v1(a: &mut ServerSession, t: Instant, csv: &[u8]) -> Vec<ServerAction> {
    a.handle(t, ServerInput::Ret(ReturnMsg::Offer { stream: Stream::Csv, size: csv.len() as u64 }));
    let mut acts = drain_a(a);
    for (i, chunk) in csv.chunks(FRAME_V1).enumerate() {
        acts.extend(a_data(a, t, Stream::Csv, (i * FRAME_V1) as u64, chunk));
    }
    let d = digest(csv);
    a.handle(t, ServerInput::Ret(ReturnMsg::End { stream: Stream::Csv, crc32: d.crc32, blake3: d.blake3 }));
    acts.extend(drain_a(a));
    acts
}

// ---------------------------------------------------------------------------------------------
// Driving B by hand.
// ---------------------------------------------------------------------------------------------

/// A client machine through the handshake and its `Accept` of a file of `size` bytes.
fn client_in_transfer(now: Instant, size: u64) -> ClientSession {
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth: None }, now);
    assert!(matches!(sent_data_b(&drain_b(&mut b))[..], [DataMsg::Hello { version: VERSION, .. }]));
    b.handle(
        now,
        ClientInput::Data(DataMsg::Welcome {
            version: VERSION,
            topology: Topology::Listen { zmq_port: 9 },
            auth: None,
        }),
    );
    let acts = drain_b(&mut b);
    assert!(matches!(
        acts[..],
        [ClientAction::Wire(_), ClientAction::SendRet(ReturnMsg::Hello { version: VERSION, .. })]
    ));
    b.handle(now, ClientInput::Ret(ReturnMsg::HelloAck { version: VERSION }));
    assert!(matches!(sent_data_b(&drain_b(&mut b))[..], [DataMsg::Ready]));
    b.handle(now, ClientInput::Data(DataMsg::Header { size, name: "../../etc/passwd".into() }));
    assert!(matches!(drain_b(&mut b)[..], [ClientAction::PrepareOutput { .. }]), "the name is only shown");
    b.handle(now, ClientInput::OutputReady { transfer: [3; 16] });
    let empty = Hasher::new().finish();
    assert!(matches!(sent_data_b(&drain_b(&mut b))[..], [DataMsg::AcceptFrom { prefix, .. }] if *prefix == empty));
    // Nothing held from an earlier attempt: the raw bytes start at 0.
    b.handle(now, ClientInput::Data(DataMsg::Resume { from: 0, ret_from: 0 }));
    assert!(matches!(drain_b(&mut b)[..], [ClientAction::ResumeAt { from: 0, ret_from: 0 }]));
    b
}

/// A client that returned a file of `size` bytes and sent `End`.
fn client_waiting_for_file_result(size: usize) -> (ClientSession, Instant) {
    let now = Instant::now();
    let file = bytes(size, 1);
    let d = digest(&file);
    let mut b = client_in_transfer(now, size as u64);
    b.handle(now, ClientInput::Ret(ReturnMsg::Credit { stream: Stream::File, bytes: WINDOW_V2 }));
    b.handle(now, ClientInput::Raw(&file));
    b.handle(now, ClientInput::Saved(size as u64));
    b.handle(now, ClientInput::Data(DataMsg::Trailer { crc32: d.crc32, blake3: d.blake3, chunks: Vec::new() }));
    b.handle(now, ClientInput::Committed);
    let acts = drain_b(&mut b);
    assert!(sent_ret_b(&acts).iter().any(|m| matches!(m, ReturnMsg::End { .. })), "{acts:?}");
    (b, now)
}

/// A client whose file came back verified, converting its CSV.
fn client_making_csv() -> (ClientSession, Instant) {
    let (mut b, t) = client_waiting_for_file_result(10);
    b.handle(t, ClientInput::Ret(ReturnMsg::Result { stream: Stream::File, ok: true, reason: String::new() }));
    drain_b(&mut b);
    (b, t)
}

// ---------------------------------------------------------------------------------------------
// Version 5.
// ---------------------------------------------------------------------------------------------

#[test]
fn v5_who_a_secured_server_refuses_a_hello_without_the_handshake_and_proves_nothing() {
    let t = Instant::now();
    for (version, auth) in [(VERSION, None), (4, Some([0x41; PAKE_MSG_LEN]))] {
        let mut a = ServerSession::new(ServerParams { secured: true, ..params(WINDOW_V2) }, t);
        a.handle(t, ServerInput::Data(DataMsg::Hello { version, token: TOKEN, return_port: 0, auth }));
        let acts = drain_a(&mut a);
        assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Auth, .. }]), "{acts:?}");
        assert!(matches!(failure_a(&acts), Failure::Auth { .. }), "{acts:?}");
        assert!(!acts.iter().any(|x| matches!(x, ServerAction::Register { .. })), "no return channel: {acts:?}");
    }
    // And a server without a secret does not pretend to check one.
    let mut a = ServerSession::new(params(WINDOW_V2), t);
    let auth = Some([0x41; PAKE_MSG_LEN]);
    a.handle(t, ServerInput::Data(DataMsg::Hello { version: VERSION, token: TOKEN, return_port: 0, auth }));
    assert!(matches!(failure_a(&drain_a(&mut a)), Failure::Auth { .. }));
}

#[test]
fn v5_confirm_comes_before_ready_and_a_wrong_one_ends_the_session() {
    let t = Instant::now();
    let start = |a: &mut ServerSession| {
        let auth = Some([0x41; PAKE_MSG_LEN]);
        a.handle(t, ServerInput::Data(DataMsg::Hello { version: VERSION, token: TOKEN, return_port: 0, auth }));
        let acts = drain_a(a);
        assert!(matches!(acts[..], [ServerAction::Authenticate { .. }, ServerAction::Register { .. }]), "{acts:?}");
        let reply = WelcomeAuth { msg: [0x42; PAKE_MSG_LEN], confirm: [1; CONFIRM_LEN] };
        a.handle(t, ServerInput::AuthReply(Box::new(reply.clone())));
        a.handle(t, ServerInput::Registered);
        let acts = drain_a(a);
        assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Welcome { auth: Some(r), .. }] if **r == reply), "{acts:?}");
    };
    // Ready before Confirm is a protocol violation.
    let mut a = ServerSession::new(ServerParams { secured: true, ..params(WINDOW_V2) }, t);
    start(&mut a);
    a.handle(t, ServerInput::Data(DataMsg::Ready));
    assert!(matches!(failure_a(&drain_a(&mut a)), Failure::Protocol { .. }));
    // A Confirm that does not hold: Error code 6.
    let mut a = ServerSession::new(ServerParams { secured: true, ..params(WINDOW_V2) }, t);
    start(&mut a);
    a.handle(t, ServerInput::Data(DataMsg::Confirm { tag: [2; CONFIRM_LEN] }));
    assert!(matches!(drain_a(&mut a)[..], [ServerAction::CheckConfirm { .. }]));
    a.handle(t, ServerInput::AuthRefused(crate::secure::AuthError::WrongSecret));
    let acts = drain_a(&mut a);
    assert!(matches!(sent_data_a(&acts)[..], [DataMsg::Error { code: ErrorCode::Auth, .. }]), "{acts:?}");
    assert!(matches!(failure_a(&acts), Failure::Auth { .. }));
}

#[test]
fn v5_who_a_client_with_a_secret_refuses_a_server_that_asks_for_none() {
    let t = Instant::now();
    let auth = Some([0x41; PAKE_MSG_LEN]);
    let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth }, t);
    assert!(matches!(sent_data_b(&drain_b(&mut b))[..], [DataMsg::Hello { version: VERSION, auth: Some(_), .. }]));
    b.handle(t, ClientInput::Data(DataMsg::Welcome { version: VERSION, topology: Topology::Remote, auth: None }));
    let acts = drain_b(&mut b);
    assert!(matches!(sent_data_b(&acts)[..], [DataMsg::Error { code: ErrorCode::Auth, .. }]), "{acts:?}");
    assert!(matches!(failure_b(&acts), Failure::Auth { .. }));
    // A server's proof that does not hold ends it the same way; one that holds sends Confirm
    // in the clear, then seals, then wires the return channel.
    for proved in [false, true] {
        let mut b = ClientSession::new(ClientParams { idle: IDLE, token: TOKEN, return_port: 0, auth }, t);
        drain_b(&mut b);
        let reply = WelcomeAuth { msg: [0x42; PAKE_MSG_LEN], confirm: [1; CONFIRM_LEN] };
        b.handle(
            t,
            ClientInput::Data(DataMsg::Welcome {
                version: VERSION,
                topology: Topology::Remote,
                auth: Some(Box::new(reply)),
            }),
        );
        assert!(matches!(drain_b(&mut b)[..], [ClientAction::Authenticate(_)]));
        if proved {
            b.handle(t, ClientInput::Authenticated { tag: [7; CONFIRM_LEN], ret_token: [8; 16] });
            let acts = drain_b(&mut b);
            assert!(
                matches!(
                    acts[..],
                    [
                        ClientAction::SendData(DataMsg::Confirm { .. }),
                        ClientAction::Secure,
                        ClientAction::Wire(_),
                        ClientAction::SendRet(ReturnMsg::Hello { token: [8, ..], .. })
                    ]
                ),
                "{acts:?}"
            );
        } else {
            b.handle(t, ClientInput::AuthRefused(crate::secure::AuthError::WrongSecret));
            assert!(matches!(failure_b(&drain_b(&mut b)), Failure::Auth { .. }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Version 6.
// ---------------------------------------------------------------------------------------------

fn cube_facts(edge: f32) -> Box<crate::stl::mesh::MeshFacts> {
    let mut ins = crate::stl::mesh::Inspector::new();
    for (n, f) in crate::stl::sample::cube(edge, [0.0; 3]) {
        ins.facet(&n, &f);
    }
    Box::new(ins.finish(1))
}

#[test]
fn v6_mesh_the_clients_facts_must_be_the_servers_own() {
    let file = bytes(500, 1);
    let csv = b"1.0000,2.0000,3.0000\n".to_vec();
    let ours = cube_facts(10.0);
    let awaiting = |theirs: Option<Box<crate::stl::mesh::MeshFacts>>| {
        let (mut a, t, _) = a_after_data_leg(VERSION, &file, WINDOW_V2);
        a.handle(
            t,
            ServerInput::ExpectedCsv(ExpectedCsv::Digest {
                digest: digest(&csv),
                rows: rows(&csv),
                mesh: Some(ours.clone()),
            }),
        );
        let acts = a_return(&mut a, t, &file, FRAME_V2, digest(&file));
        assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::File))), "{acts:?}");
        a.handle(t, ServerInput::Committed(Stream::File));
        drain_a(&mut a);
        if let Some(m) = theirs {
            a.handle(t, ServerInput::Ret(ReturnMsg::Mesh(m)));
        }
        let acts = a_send_csv(&mut a, t, &csv, digest(&csv));
        (a, t, acts)
    };
    // The same facts: the CSV is saved, and the outcome carries them.
    let (mut a, t, acts) = awaiting(Some(ours.clone()));
    assert!(acts.iter().any(|x| matches!(x, ServerAction::Commit(Stream::Csv))), "{acts:?}");
    a.handle(t, ServerInput::Committed(Stream::Csv));
    assert_eq!(csv_result(&drain_a(&mut a)), Some((true, String::new())));
    a.handle(t, ServerInput::Ret(ReturnMsg::Bye));
    let done = drain_a(&mut a);
    let outcome = done.iter().find_map(|x| match x {
        ServerAction::Finish(Ok(o)) => Some(o),
        _ => None,
    });
    assert_eq!(outcome.and_then(|o| o.mesh.clone()), Some(ours.clone()), "{done:?}");
    // Other facts: the CSV stage fails, naming both values.
    let (_, _, acts) = awaiting(Some(cube_facts(11.0)));
    let (ok, why) = csv_result(&acts).unwrap();
    assert!(
        !ok && why.contains("the mesh the client read differs") && why.contains("area 600 here, 726 there"),
        "{why}"
    );
    // None at all from a version-6 client.
    let (_, _, acts) = awaiting(None);
    let (ok, why) = csv_result(&acts).unwrap();
    assert!(!ok && why.contains("the client sent no facts"), "{why}");
}
