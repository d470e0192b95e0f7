//! `--protocol python`: the Python version's wire protocol (`docs/PYTHON-PROTOCOL.md` in
//! `../shared/seed`), on both roles, so a site can replace its workstations one at a time.
//!
//! That protocol has no framing, versions, verdicts or timeouts; our side adds what it can
//! without changing a byte on the wire:
//! - the preamble (`{"size": "N", "cksum": "C"}`, no length, no terminator) is read as exactly
//!   one JSON object from the start of the stream, whatever the reads cut it into, and bytes
//!   after it are file data;
//! - A sends no file byte before B's acknowledgement, and checks that it echoes the preamble;
//! - every wait has the idle timeout, every file is written under a temporary name and renamed
//!   only once verified, and a failure is an error and a non-zero exit;
//! - A checks the returned copy against its own original (size, CRC-32 and BLAKE3), not only
//!   against the preamble B computed from it;
//! - B flow-controls its return frames (a ROUTER that blocks rather than drops at its
//!   high-water mark) and still writes the vertex CSV, locally: the protocol carries none.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use crate::client::ClientConfig;
use crate::error::{Error, Result};
use crate::files::{StagedFile, check_destination};
use crate::integrity::{Digest, Hasher};
use crate::protocol::ret::Stream;
use crate::report::{ClientEvent, ClientReport, Progress, Reporter, ServerEvent, ServerSessionReport};
use crate::server::ServerConfig;
use crate::session::{
    ClientOutcome, CsvResult, CsvReturned, DigestDiff, Failure, Leg, LegDone, LocalFailure, Phase, Resumed, Role,
    ServerOutcome,
};
use crate::shutdown::Shutdown;
use crate::stl::{self, CsvOptions};
use crate::transport::poll::{Watch, wait};
use crate::transport::tcp::is_reset;

/// The return channel's port, fixed in the Python version's code.
pub const ZMQ_PORT: u16 = 8091;
/// The largest return frame the Python version sends.
pub const FRAME: usize = 65_536;
/// The Python version reads the preamble and its acknowledgement with one `recv(4096)`: a longer
/// one is not its.
const PREAMBLE_MAX: usize = 4096;
/// File bytes read and written at a time on the data channel.
const CHUNK: usize = 256 << 10;
/// Return frames queued in ZeroMQ, each way, before the sender waits (4 MiB): memory stays
/// bounded whatever the file's size (at ZeroMQ's default of 1000, each side held 64 MiB).
const QUEUED_FRAMES: i32 = 64;
/// The `fetch` frame A sends to ask for the returned copy.
const FETCH: &[u8] = b"fetch";

/// What a preamble announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// The file's size.
    pub size: u64,
    /// zlib's CRC-32 of the whole file.
    pub crc32: u32,
}

impl Preamble {
    /// The bytes the Python version sends: `{"size": "N", "cksum": "C"}`.
    pub fn encode(&self) -> Vec<u8> {
        format!(r#"{{"size": "{}", "cksum": "{}"}}"#, self.size, self.crc32).into_bytes()
    }

    /// Parses one JSON object from the start of `buf`: `Ok(Some((preamble, its length)))`, or
    /// `Ok(None)` if more bytes are needed. Values may be decimal strings (as the Python version
    /// sends them) or numbers.
    pub fn parse(buf: &[u8]) -> std::result::Result<Option<(Preamble, usize)>, String> {
        let mut items = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
        let value = match items.next() {
            None => return Ok(None),
            Some(Err(e)) if e.is_eof() => return Ok(None),
            Some(Err(e)) => return Err(format!("the preamble is not JSON ({e})")),
            Some(Ok(v)) => v,
        };
        let len = items.byte_offset();
        let field = |key: &str| -> std::result::Result<u64, String> {
            let v = value.get(key).ok_or_else(|| format!("the preamble has no \"{key}\": {value}"))?;
            let n = match v {
                serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            };
            n.ok_or_else(|| format!("the preamble's \"{key}\" is not a whole number: {v}"))
        };
        let size = field("size")?;
        let crc32 =
            u32::try_from(field("cksum")?).map_err(|_| "the preamble's \"cksum\" exceeds 32 bits".to_owned())?;
        Ok(Some((Preamble { size, crc32 }, len)))
    }
}

fn violation(during: Phase, what: impl std::fmt::Display) -> Failure {
    Failure::Python { during, what: format!("the peer does not follow the Python version's protocol: {what}") }
}

/// A nonblocking TCP stream whose every wait is bounded by the idle timeout and ends early when
/// the process is asked to stop.
struct Conn<'a> {
    stream: TcpStream,
    idle: Duration,
    stop: &'a Shutdown,
}

impl Conn<'_> {
    /// Waits until the socket is ready to read (or write), for at most the idle timeout.
    fn ready(&self, write: bool, during: Phase) -> std::result::Result<(), Failure> {
        ready(|| Watch::fd(self.stream.as_raw_fd(), !write, write), self.stop, self.idle, during)
    }

    /// Reads some bytes; 0 at the end of the stream.
    fn read(&mut self, buf: &mut [u8], during: Phase) -> std::result::Result<usize, Failure> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready(false, during)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Err(Failure::Closed { during }),
                Err(e) => return Err(local_io(during, e)),
            }
        }
    }

    fn write_all(&mut self, mut buf: &[u8], during: Phase) -> std::result::Result<(), Failure> {
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(Failure::Closed { during }),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready(true, during)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Err(Failure::Closed { during }),
                Err(e) => return Err(local_io(during, e)),
            }
        }
        Ok(())
    }
}

/// Waits until what `watch` names is ready, for at most `idle`; a stop ends the wait.
fn ready<'s>(
    watch: impl Fn() -> Watch<'s>,
    stop: &Shutdown,
    idle: Duration,
    during: Phase,
) -> std::result::Result<(), Failure> {
    let deadline = Instant::now() + idle;
    loop {
        let mut w = [watch(), Watch::fd(stop.fd(), true, false)];
        wait(&mut w, Some(deadline)).map_err(|e| local_io(during, e))?;
        if w[1].readable || stop.is_set() {
            return Err(Failure::Interrupted);
        }
        if w[0].readable || w[0].writable {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout { during, idle });
        }
    }
}

/// A socket error other than the peer closing: the network's or the system's.
fn local_io(during: Phase, source: io::Error) -> Failure {
    Failure::Python { during, what: format!("socket error: {source}") }
}

/// A ZeroMQ socket's waits, bounded like [`Conn`]'s.
struct Zmq<'a> {
    sock: zmq::Socket,
    idle: Duration,
    stop: &'a Shutdown,
}

impl Zmq<'_> {
    fn ready(&self, write: bool, during: Phase) -> std::result::Result<(), Failure> {
        ready(|| Watch::zmq(&self.sock, !write, write), self.stop, self.idle, during)
    }

    fn recv(&self, during: Phase) -> std::result::Result<Vec<Vec<u8>>, Failure> {
        loop {
            match self.sock.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => return Ok(parts),
                Err(zmq::Error::EAGAIN) => self.ready(false, during)?,
                Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(local_io(during, io::Error::other(e))),
            }
        }
    }

    fn send(&self, parts: &[&[u8]], during: Phase) -> std::result::Result<(), Failure> {
        loop {
            match self.sock.send_multipart(parts.iter().copied(), zmq::DONTWAIT) {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EAGAIN) => self.ready(true, during)?,
                Err(zmq::Error::EINTR) => {}
                // ROUTER_MANDATORY: the peer is gone.
                Err(zmq::Error::EHOSTUNREACH) => return Err(Failure::Closed { during }),
                Err(e) => return Err(local_io(during, io::Error::other(e))),
            }
        }
    }
}

fn zmq_failure(what: &str, e: zmq::Error) -> Failure {
    Failure::Local(LocalFailure::ReturnChannel { wiring: what.to_owned(), source: crate::transport::ret::zmq_err(e) })
}

/// Reads a preamble, whatever the reads cut it into; returns it, its bytes, and any bytes that
/// came after it.
fn read_preamble(conn: &mut Conn<'_>, during: Phase) -> std::result::Result<(Preamble, Vec<u8>, Vec<u8>), Failure> {
    let mut buf = Vec::with_capacity(PREAMBLE_MAX);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk, during)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Failure::Closed { during }
            } else {
                violation(during, format!("the connection closed inside the preamble ({} bytes)", buf.len()))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match Preamble::parse(&buf).map_err(|e| violation(during, e))? {
            Some((p, len)) => {
                let rest = buf.split_off(len);
                return Ok((p, buf, rest));
            }
            None if buf.len() >= PREAMBLE_MAX => {
                return Err(violation(during, format!("no whole preamble in the first {PREAMBLE_MAX} bytes")));
            }
            None => {}
        }
    }
}

/// A version of the served file, as its metadata tells: its size and modification time. (A
/// change that keeps both is still caught: what is sent is hashed again as it goes.)
type Version = (u64, Option<std::time::SystemTime>);

/// Hashes a file whole.
fn digest_of(file: &mut File, path: &Path) -> std::result::Result<Digest, Failure> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(LocalFailure::Input { path: path.to_owned(), source }.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A: serves the Python version's client.

/// Serves clients one at a time (the Python version's backlog was 1) until stopped or, with
/// `once`, after the first round trip, whose outcome is then the result. `ready` gets the
/// data channel's address and the return channel's endpoint before the first accept.
pub fn serve(
    cfg: &ServerConfig,
    stop: &Shutdown,
    reporter: Arc<dyn Reporter>,
    ready: impl FnOnce(&str, &str),
) -> Result<()> {
    let mut input = File::open(&cfg.file).map_err(|source| Error::Input { path: cfg.file.clone(), source })?;
    check_destination(&cfg.output).map_err(Error::output(&cfg.output))?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let bind = |source| Error::Bind { addr: addr.clone(), channel: "data channel (TCP)", source };
    let listener = TcpListener::bind(&addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let remote = cfg.remotehost.clone().unwrap_or_else(|| "127.0.0.1".into());
    let endpoint = crate::transport::ret::endpoint(&remote, &cfg.zmq_port.unwrap_or(ZMQ_PORT).to_string());
    let tcp = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr.clone());
    ready(&tcp, &format!("connect:{}", endpoint.trim_start_matches("tcp://")));
    info!(file = %cfg.file.display(), %tcp, zmq = %endpoint, "serving with the Python version's protocol");
    let ctx = zmq::Context::new();
    // The original's digest, hashed once per version of the file, not once per client.
    let mut known: Option<(Version, Digest)> = None;
    loop {
        let mut w = [Watch::fd(listener.as_raw_fd(), true, false), Watch::fd(stop.fd(), true, false)];
        wait(&mut w, None).map_err(bind)?;
        if stop.is_set() {
            return if cfg.once { Err(Error::Interrupted) } else { Ok(()) };
        }
        let (stream, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("accept failed: {e}");
                continue;
            }
        };
        let span = info_span!("client", %peer);
        let _enter = span.enter();
        info!("accepted connection");
        let result = serve_one(cfg, &ctx, &endpoint, (&mut input, &mut known), stream, peer, stop, reporter.as_ref())
            .map_err(|failure| Error::Session { peer: format!("client {peer}"), failure: Box::new(failure) });
        match &result {
            Ok(o) => info!(digest = %o.digest, output = %cfg.output.display(), "round trip verified"),
            Err(e) => tracing::error!("session failed: {}", crate::error::chain(e)),
        }
        let report = ServerSessionReport {
            peer,
            greeted: true,
            file: cfg.file.clone(),
            output: cfg.output.clone(),
            csv_output: cfg.csv_output.clone(),
            result,
        };
        reporter.server(ServerEvent::SessionEnded(&report));
        if cfg.once || stop.is_set() {
            return report.result.map(drop);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_one(
    cfg: &ServerConfig,
    ctx: &zmq::Context,
    endpoint: &str,
    (input, known): (&mut File, &mut Option<(Version, Digest)>),
    stream: TcpStream,
    peer: SocketAddr,
    stop: &Shutdown,
    reporter: &dyn Reporter,
) -> std::result::Result<ServerOutcome, Failure> {
    use std::io::Seek;
    stream.set_nonblocking(true).map_err(|e| local_io(Phase::Handshake, e))?;
    let mut conn = Conn { stream, idle: cfg.timeout, stop };
    // The return channel first, as the Python version connects it at start-up: ZeroMQ connects
    // (and reconnects) until B's ROUTER appears, and queues `fetch` until then.
    let dealer = ctx.socket(zmq::DEALER).map_err(|e| zmq_failure(endpoint, e))?;
    dealer.set_linger(0).map_err(|e| zmq_failure(endpoint, e))?;
    dealer.set_rcvhwm(QUEUED_FRAMES).map_err(|e| zmq_failure(endpoint, e))?;
    dealer.connect(endpoint).map_err(|e| zmq_failure(endpoint, e))?;
    let ret = Zmq { sock: dealer, idle: cfg.timeout, stop };

    let version = input.metadata().map(|m| (m.len(), m.modified().ok())).ok();
    let original = match (*known, version) {
        (Some((v, d)), Some(now)) if v == now => d,
        _ => {
            input.rewind().map_err(|source| LocalFailure::Input { path: cfg.file.clone(), source })?;
            let d = digest_of(input, &cfg.file)?;
            *known = version.map(|v| (v, d));
            d
        }
    };
    let preamble = Preamble { size: original.size, crc32: original.crc32 }.encode();
    conn.write_all(&preamble, Phase::Handshake)?;
    // B echoes the preamble. Nothing of the file goes before the echo is whole and right.
    let mut ack = Vec::with_capacity(preamble.len());
    let mut chunk = [0u8; PREAMBLE_MAX];
    while ack.len() < preamble.len() {
        let n = conn.read(&mut chunk[..preamble.len() - ack.len()], Phase::Handshake)?;
        if n == 0 {
            return Err(Failure::Closed { during: Phase::Handshake });
        }
        ack.extend_from_slice(&chunk[..n]);
        if !preamble.starts_with(&ack) {
            return Err(violation(Phase::Handshake, "the client's acknowledgement is not the preamble echoed"));
        }
    }

    // The data leg: the file, then the close that marks its end.
    let started = Instant::now();
    input.rewind().map_err(|source| LocalFailure::Input { path: cfg.file.clone(), source })?;
    let mut sent = Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    while sent.size() < original.size {
        let want = (original.size - sent.size()).min(CHUNK as u64) as usize;
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(LocalFailure::Input { path: cfg.file.clone(), source }.into()),
        };
        let during = Phase::Data { role: Role::Server, done: sent.size(), size: original.size };
        conn.write_all(&buf[..n], during)?;
        sent.update(&buf[..n]);
        reporter.progress(Some(peer), Progress { size: original.size, data: sent.size(), ret: 0 });
    }
    if sent.finish() != original {
        *known = None;
        return Err(LocalFailure::SourceChanged {
            path: cfg.file.clone(),
            what: "its contents differ from the digest announced".into(),
        }
        .into());
    }
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    let data_time = started.elapsed();
    info!(bytes = original.size, crc32 = original.crc32, "data leg sent");
    reporter.server(ServerEvent::DataLegDone { peer, leg: LegDone { digest: original, took: data_time, from: 0 } });

    // The return leg: `fetch`, B's preamble of its copy, our echo, frames, an empty frame.
    let started = Instant::now();
    ret.send(&[FETCH], Phase::ReturnHandshake)?;
    let parts = ret.recv(Phase::ReturnHandshake)?;
    let [theirs] = parts.as_slice() else {
        return Err(violation(
            Phase::ReturnHandshake,
            format!("a message of {} parts instead of the preamble", parts.len()),
        ));
    };
    let (announced, _) = Preamble::parse(theirs)
        .map_err(|e| violation(Phase::ReturnHandshake, e))?
        .ok_or_else(|| violation(Phase::ReturnHandshake, "an incomplete preamble"))?;
    ret.send(&[theirs], Phase::ReturnHandshake)?;
    if announced.size != original.size {
        return Err(Failure::SizeMismatch { leg: Leg::Return, offered: announced.size, sent: original.size });
    }
    let mut staged =
        StagedFile::create(&cfg.output).map_err(|source| LocalFailure::Output { path: cfg.output.clone(), source })?;
    let mut back = Hasher::new();
    loop {
        let during = Phase::Return { stream: Stream::File, done: back.size(), size: original.size };
        let parts = ret.recv(during)?;
        let [frame] = parts.as_slice() else {
            return Err(violation(during, format!("a message of {} parts instead of a frame", parts.len())));
        };
        if frame.is_empty() {
            break;
        }
        if frame.len() > FRAME || back.size() + frame.len() as u64 > original.size {
            return Err(violation(during, format!("a frame of {} bytes past what was announced", frame.len())));
        }
        staged.file().write_all(frame).map_err(|source| LocalFailure::Output { path: cfg.output.clone(), source })?;
        back.update(frame);
        reporter.progress(Some(peer), Progress { size: original.size, data: original.size, ret: back.size() });
    }
    let got = back.finish();
    if got.size < original.size {
        let during = Phase::Return { stream: Stream::File, done: got.size, size: original.size };
        return Err(violation(during, "the end marker came early"));
    }
    // Against the original, not only against what B says it sent.
    if let Some(diff) = DigestDiff::check(got, original) {
        return Err(Failure::Mismatch { leg: Leg::Return, what: "returned copy", diff });
    }
    if announced.crc32 != got.crc32 {
        let what = format!("the client announced CRC-32 {} for a copy whose CRC-32 is {}", announced.crc32, got.crc32);
        return Err(Failure::PeerMismatch { leg: Leg::Return, reason: what });
    }
    staged.commit().map_err(|source| LocalFailure::Output { path: cfg.output.clone(), source })?;
    info!(output = %cfg.output.display(), "returned copy verified identical and saved");
    let return_time = started.elapsed();
    reporter.server(ServerEvent::ReturnLegDone { peer, leg: LegDone { digest: original, took: return_time, from: 0 } });
    Ok(ServerOutcome {
        version: 0,
        name: crate::files::file_name(&cfg.file),
        digest: original,
        data_time,
        return_time,
        resumed: Resumed::default(),
        csv: CsvResult::NotMade("the Python version's protocol carries no CSV".into()),
        mesh: None,
    })
}

// ---------------------------------------------------------------------------------------------
// B: fetches from the Python version's server.

/// One round trip with a Python-version server: receive and verify the file, bind the return
/// channel's ROUTER, send the copy back when A asks, then write the vertex CSV locally.
pub fn fetch(cfg: &ClientConfig, stop: &Shutdown, reporter: &dyn Reporter) -> Result<ClientReport> {
    for dest in std::iter::once(&cfg.out).chain(&cfg.csv) {
        check_destination(dest).map_err(Error::output(dest))?;
    }
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let conn = crate::transport::tcp::connect_stream(&addr, cfg.timeout, stop).map_err(|e| match e {
        crate::transport::tcp::ConnectError::Refused => Error::NoServer { addr: addr.clone() },
        crate::transport::tcp::ConnectError::Interrupted => Error::Interrupted,
        crate::transport::tcp::ConnectError::Io(source) => Error::Connect { addr: addr.clone(), source },
    })?;
    let span = info_span!("session", server = %addr);
    let _enter = span.enter();
    info!("connected to the data channel (the Python version's protocol)");
    let session = |failure| Error::Session { peer: format!("server {addr}"), failure: Box::new(failure) };
    let (digest, data_time, return_time) = round_trip(cfg, conn, stop, reporter).map_err(session)?;
    let mut mesh = None;
    let csv = match &cfg.csv {
        None => CsvReturned::NotMade("disabled with --no-csv".into()),
        Some(path) => {
            match stl::convert(&cfg.out, path, CsvOptions { digest: true, mesh: true, ..CsvOptions::default() }) {
                Ok(c) => {
                    mesh = c.read.mesh;
                    // Asked for above, so always there.
                    let rows = c.csv.rows;
                    c.csv.digest.map_or_else(
                        || CsvReturned::NotMade("its digest was not computed".into()),
                        |digest| CsvReturned::Local { digest, rows },
                    )
                }
                Err(e) if e.is_not_stl() => CsvReturned::NotMade("the file is not STL".into()),
                Err(e) => return Err(session(Failure::Csv(crate::session::CsvFailure::Convert(e)))),
            }
        }
    };
    Ok(ClientReport {
        server: addr,
        output: cfg.out.clone(),
        csv: cfg.csv.clone(),
        return_confirmed: false,
        outcome: ClientOutcome {
            name: crate::files::file_name(&cfg.out),
            digest,
            data_time,
            return_time,
            resumed: Resumed::default(),
            csv,
            mesh,
        },
    })
}

fn round_trip(
    cfg: &ClientConfig,
    stream: TcpStream,
    stop: &Shutdown,
    reporter: &dyn Reporter,
) -> std::result::Result<(Digest, Duration, Duration), Failure> {
    let mut conn = Conn { stream, idle: cfg.timeout, stop };
    let (announced, preamble, early) = read_preamble(&mut conn, Phase::Handshake)?;
    info!(size = announced.size, crc32 = announced.crc32, "preamble received");
    conn.write_all(&preamble, Phase::Handshake)?;

    let started = Instant::now();
    let out_err = |source| LocalFailure::Output { path: cfg.out.clone(), source };
    let mut staged = StagedFile::create(&cfg.out).map_err(out_err)?;
    let mut h = Hasher::new();
    let mut take = |bytes: &[u8], h: &mut Hasher| -> std::result::Result<(), Failure> {
        if h.size() + bytes.len() as u64 > announced.size {
            let during = Phase::Data { role: Role::Client, done: h.size(), size: announced.size };
            return Err(violation(during, format!("more than the {} bytes announced", announced.size)));
        }
        staged.file().write_all(bytes).map_err(out_err)?;
        h.update(bytes);
        reporter.progress(None, Progress { size: announced.size, data: h.size(), ret: 0 });
        Ok(())
    };
    take(&early, &mut h)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let during = Phase::Data { role: Role::Client, done: h.size(), size: announced.size };
        match conn.read(&mut buf, during)? {
            0 => break,
            n => take(&buf[..n], &mut h)?,
        }
    }
    let got = h.finish();
    if got.size < announced.size {
        return Err(Failure::Closed {
            during: Phase::Data { role: Role::Client, done: got.size, size: announced.size },
        });
    }
    if got.crc32 != announced.crc32 {
        let expected = Digest { crc32: announced.crc32, ..got };
        let diff = DigestDiff { got, expected, first: None };
        return Err(Failure::Mismatch { leg: Leg::Data, what: "received file", diff });
    }
    staged.commit().map_err(out_err)?;
    let data_time = started.elapsed();
    info!(bytes = got.size, crc32 = got.crc32, "file received and verified");
    reporter.client(ClientEvent::DataLegDone(LegDone { digest: got, took: data_time, from: 0 }));

    // The return channel, bound only now, as the Python version does.
    let ctx = zmq::Context::new();
    let endpoint = format!("tcp://*:{}", cfg.zmq_port);
    let router = ctx.socket(zmq::ROUTER).map_err(|e| zmq_failure(&endpoint, e))?;
    // Block, never drop, at the high-water mark: the Python version's unlimited queue without
    // its unlimited memory.
    router.set_router_mandatory(true).map_err(|e| zmq_failure(&endpoint, e))?;
    router.set_sndhwm(QUEUED_FRAMES).map_err(|e| zmq_failure(&endpoint, e))?;
    router
        .set_linger(i32::try_from(cfg.timeout.as_millis()).unwrap_or(i32::MAX))
        .map_err(|e| zmq_failure(&endpoint, e))?;
    router.bind(&endpoint).map_err(|e| zmq_failure(&format!("binding {endpoint}"), e))?;
    let ret = Zmq { sock: router, idle: cfg.timeout, stop };
    let parts = ret.recv(Phase::ReturnHandshake)?;
    let [id, word] = parts.as_slice() else {
        return Err(violation(Phase::ReturnHandshake, format!("a message of {} parts instead of fetch", parts.len())));
    };
    if word.as_slice() != FETCH {
        return Err(violation(Phase::ReturnHandshake, format!("{:?} instead of fetch", String::from_utf8_lossy(word))));
    }
    let started = Instant::now();
    let ours = Preamble { size: got.size, crc32: got.crc32 }.encode();
    ret.send(&[id, &ours], Phase::ReturnHandshake)?;
    let parts = ret.recv(Phase::ReturnHandshake)?;
    if parts.len() != 2 || parts[1] != ours {
        return Err(violation(Phase::ReturnHandshake, "the server's acknowledgement is not the preamble echoed"));
    }
    let mut file = File::open(&cfg.out).map_err(out_err)?;
    let mut frame = vec![0u8; FRAME];
    let mut sent = 0u64;
    while sent < got.size {
        let n = file.read(&mut frame).map_err(out_err)?;
        if n == 0 {
            return Err(LocalFailure::SourceChanged { path: cfg.out.clone(), what: "it became shorter".into() }.into());
        }
        ret.send(&[id, &frame[..n]], Phase::Return { stream: Stream::File, done: sent, size: got.size })?;
        sent += n as u64;
        reporter.progress(None, Progress { size: got.size, data: got.size, ret: sent });
    }
    ret.send(&[id, b""], Phase::Return { stream: Stream::File, done: sent, size: got.size })?;
    // Closing waits (up to the linger, the idle timeout) for the frames to leave.
    drop(ret);
    drop(ctx);
    info!(bytes = sent, "returned copy sent; the Python version's server confirms nothing");
    let return_time = started.elapsed();
    reporter.client(ClientEvent::ReturnLegDone(LegDone { digest: got, took: return_time, from: 0 }));
    Ok((got, data_time, return_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips_in_the_python_form() {
        let p = Preamble { size: 714_884, crc32: 1_445_675_924 };
        let bytes = p.encode();
        assert_eq!(bytes, br#"{"size": "714884", "cksum": "1445675924"}"#);
        assert_eq!(Preamble::parse(&bytes), Ok(Some((p, bytes.len()))));
    }

    #[test]
    fn preamble_is_found_whatever_the_reads_cut_it_into() {
        let mut stream = Preamble { size: 3, crc32: 7 }.encode();
        let len = stream.len();
        stream.extend_from_slice(b"{}x"); // file bytes that look like JSON
        for cut in 0..len {
            assert_eq!(Preamble::parse(&stream[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(Preamble::parse(&stream), Ok(Some((Preamble { size: 3, crc32: 7 }, len))));
        // Numbers are taken as well as strings; whitespace before is skipped.
        assert_eq!(Preamble::parse(br#" {"size": 5, "cksum": 9}"#).unwrap().unwrap().0, Preamble { size: 5, crc32: 9 });
    }

    #[test]
    fn bad_preambles_say_what_is_wrong() {
        for (bytes, says) in [
            (&b"hello"[..], "not JSON"),
            (br#"{"size": "5"}"#, "no \"cksum\""),
            (br#"{"size": "-5", "cksum": "1"}"#, "not a whole number"),
            (br#"{"size": "5", "cksum": "4294967296"}"#, "exceeds 32 bits"),
            (br#"[1, 2]"#, "no \"size\""),
        ] {
            let e = Preamble::parse(bytes).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
