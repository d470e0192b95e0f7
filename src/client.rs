//! Process B: opens the return channel, receives the file over the data channel while checking
//! size, CRC-32 and BLAKE3, saves it, and sends it back to A under A's flow-control credit.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn};

use crate::error::{Error, Leg, Result, TransportError};
use crate::files::{StagedFile, available_space, parent_dir};
use crate::integrity::{Digest, Hasher};
use crate::protocol::data::{DataMsg, ErrorCode, VERSION};
use crate::protocol::ret::{DATA_HEADER_LEN, MAX_CHUNK, ReturnMsg, Stream, data_header, keepalive_every};
use crate::protocol::{PROTOCOL_VERSION, Token, hex};
use crate::shutdown::Shutdown;
use crate::stl::{self, Converted, CsvOptions};
use crate::transport::tcp::Conn;
use crate::transport::zmq::{ReturnChannel, ZmqMode};
use crate::units;

/// Bytes read from the socket at a time.
const RECV_CHUNK: usize = 1 << 20;

/// Everything process B needs, validated.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where the received file goes.
    pub out: PathBuf,
    /// A's address.
    pub host: String,
    /// A's TCP port.
    pub port: u16,
    /// The return channel's port: A's (to connect) or ours (to bind).
    pub zmq_port: u16,
    /// How the return channel is wired.
    pub zmq_mode: ZmqMode,
    /// How long any wait on A may make no progress (also the connect timeout).
    pub timeout: Duration,
    /// Where the vertex CSV goes when the file is STL; `None` with `--no-csv`.
    pub csv: Option<PathBuf>,
}

/// What a successful client run proved.
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// The name A gave the file (informational).
    pub name: String,
    /// Digest of the file, verified on arrival and accepted by A on return.
    pub digest: Digest,
    /// Time of the data leg.
    pub data_time: Duration,
    /// Time of the return leg.
    pub return_time: Duration,
    /// What became of the CSV.
    pub csv: CsvOutcome,
}

/// What became of the vertex CSV in a round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvOutcome {
    /// Made, returned and verified by A.
    Returned {
        /// Where B saved it.
        path: PathBuf,
        /// Vertex lines.
        rows: u64,
    },
    /// Not made, and not expected: the file is not STL, or `--no-csv`.
    NotMade(String),
}

/// Runs one round trip against A.
pub fn run(cfg: &ClientConfig, shutdown: &Shutdown) -> Result<ClientReport> {
    let span = info_span!("session", server = %format!("{}:{}", cfg.host, cfg.port));
    let _enter = span.enter();
    let mut token: Token = [0; 16];
    getrandom::fill(&mut token).map_err(|e| Error::ReturnSetup(format!("no randomness for a session token: {e}")))?;
    let ctx = zmq::Context::new();
    let mut chan =
        ReturnChannel::open(&ctx, &token, cfg.zmq_mode, &cfg.host, cfg.zmq_port, cfg.timeout, shutdown.clone())?;
    info!(session = %hex(&token[..4]), wiring = %chan.describe(), "return channel opened");
    let conn = connect(cfg, shutdown)?;
    let mut s = Session { conn, cfg, shutdown };
    let res = s.run(&mut chan, &token);
    if let Err(e) = &res {
        s.tell_peer(e);
        // A may be busy writing raw bytes and not reading frames: tell it on the return channel
        // too, without waiting should that channel be down.
        if !e.peer_knows() {
            chan.send_now(&ReturnMsg::Abort { reason: format!("client: {e}") }.to_bytes());
        }
    }
    res
}

fn connect(cfg: &ClientConfig, shutdown: &Shutdown) -> Result<Conn> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let addrs: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|source| Error::Connect { addr: addr.clone(), source })?.collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, cfg.timeout) {
            Ok(stream) => {
                info!(server = %a, "connected to the data channel");
                return Conn::new(stream, cfg.timeout, shutdown.clone())
                    .map_err(|source| Error::Connect { addr: addr.clone(), source });
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(Error::NoServer { addr }),
        Some(source) => Err(Error::Connect { addr, source }),
        None => {
            Err(Error::Connect { addr, source: io::Error::new(io::ErrorKind::NotFound, "name resolved to no address") })
        }
    }
}

struct Session<'a> {
    conn: Conn,
    cfg: &'a ClientConfig,
    shutdown: &'a Shutdown,
}

impl Session<'_> {
    fn stage(&self, what: &str) -> String {
        format!("{what} (server {})", self.conn.peer())
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

    fn unexpected(&self, stage: &str, got: &DataMsg) -> Error {
        Error::Protocol { stage: self.stage(stage), detail: format!("got {}", got.kind()) }
    }

    /// Best effort: tell A why we stop, without waiting long.
    fn tell_peer(&mut self, e: &Error) {
        if e.peer_knows() {
            return;
        }
        self.conn.send_final(&DataMsg::Error { code: e.wire_code(), reason: format!("client: {e}") });
    }

    fn run(&mut self, chan: &mut ReturnChannel, token: &Token) -> Result<ClientReport> {
        self.handshake(chan, token)?;
        let (name, digest, data_time, file) = self.data_leg(chan)?;
        println!("Done! - RX");
        self.conn.finish();
        let started = Instant::now();
        let cfg = self.cfg;
        // The CSV is made on a second thread while the file travels back: both only read the
        // saved file, and the two cores are used at once.
        let span = tracing::Span::current();
        let (sent, made) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = self.shutdown.flag();
            scope.spawn(move || drop(tx.send(span.in_scope(|| make_csv(cfg, stop)))));
            let sent = send_stream(chan, Stream::File, file, &digest, cfg).map(|()| started.elapsed());
            // Converting may take longer than the file's return: keep A from timing out meanwhile.
            let made = match &sent {
                Ok(_) => wait_for_csv(chan, &rx, cfg.timeout),
                Err(_) => {
                    // The session has failed and this process serves only it: stop the
                    // converter rather than wait for it to finish a CSV nobody will take.
                    self.shutdown.trigger();
                    Ok(None)
                }
            };
            (sent, made)
        });
        let return_time = sent?;
        println!("Done! - TX");
        let csv = self.csv_leg(chan, made);
        // Bye lets A finish at once instead of waiting; if it is lost A still has its verdicts.
        let _ = chan.send(zmq::Message::from(&ReturnMsg::Bye.to_bytes()[..]));
        Ok(ClientReport { name, digest, data_time, return_time, csv: csv? })
    }

    /// Sends the CSV (or says why there is none) and returns what became of it; a CSV that
    /// should exist but could not be made is an error after A has been told.
    fn csv_leg(&mut self, chan: &ReturnChannel, made: Result<Option<(PathBuf, Converted)>>) -> Result<CsvOutcome> {
        let skip = |failed: bool, reason: &str| {
            let msg = ReturnMsg::Skip { stream: Stream::Csv, failed, reason: reason.to_owned() };
            chan.send(zmq::Message::from(&msg.to_bytes()[..])).map_err(|e| Error::transport("return leg (CSV)", e))
        };
        match made {
            Ok(Some((path, converted))) => {
                let file = File::open(&path).map_err(|source| Error::Output { path: path.clone(), source })?;
                let digest = converted.csv.digest.ok_or_else(|| Error::Csv("no digest was computed".into()))?;
                send_stream(chan, Stream::Csv, file, &digest, self.cfg)?;
                info!(csv = %path.display(), rows = converted.csv.rows, "CSV returned; server verified it");
                Ok(CsvOutcome::Returned { path, rows: converted.csv.rows })
            }
            Ok(None) => {
                let reason = match &self.cfg.csv {
                    None => "disabled with --no-csv".to_owned(),
                    Some(_) => "the file is not STL".to_owned(),
                };
                info!("no CSV: {reason}");
                skip(false, &reason)?;
                Ok(CsvOutcome::NotMade(reason))
            }
            Err(e) => {
                warn!("CSV failed: {e}");
                skip(true, &e.to_string())?;
                // An invalid STL is a CSV failure (exit 5); not being able to write it is a
                // local I/O failure and keeps its own status.
                Err(match e {
                    Error::Convert(stl::ConvertError::Stl { .. }) => Error::Csv(e.to_string()),
                    e => e,
                })
            }
        }
    }

    fn handshake(&mut self, chan: &mut ReturnChannel, token: &Token) -> Result<()> {
        let hello = DataMsg::Hello { version: VERSION, token: *token, return_port: chan.bound_port().unwrap_or(0) };
        self.send(&hello, "sending Hello")?;
        let welcome = match self.conn.recv() {
            Ok(m) => m,
            // Garbage or silence-then-close in answer to Hello: whatever listens there is not
            // a machinaftp server (a common slip: pointing -p at the server's --zmq-port).
            Err(TransportError::Decode(e)) => {
                return Err(Error::Protocol {
                    stage: self.stage("handshake"),
                    detail: format!("this is not a machinaftp server (its answer is not the protocol: {e}); check -p"),
                });
            }
            Err(TransportError::Closed) => {
                return Err(Error::Protocol {
                    stage: self.stage("handshake"),
                    detail: "the connection was closed without an answer; is this a machinaftp server's data port \
                             (-p, not --zmq-port)?"
                        .into(),
                });
            }
            Err(e) => return Err(Error::transport(self.stage("waiting for the server's Welcome"), e)),
        };
        let topology = match welcome {
            DataMsg::Welcome { version, topology } if version == VERSION => topology,
            DataMsg::Welcome { version, .. } => {
                let reason = format!("server speaks protocol version {version}; this client speaks {VERSION}");
                self.conn.send_final(&DataMsg::Error { code: ErrorCode::Version, reason: reason.clone() });
                return Err(Error::Refused { stage: self.stage("handshake"), reason });
            }
            DataMsg::Error { reason, .. } => return Err(Error::Refused { stage: self.stage("handshake"), reason }),
            other => return Err(self.unexpected("waiting for Welcome", &other)),
        };
        chan.use_topology(topology, &self.cfg.host)?;
        debug!(%topology, wiring = %chan.describe(), "return channel wired");
        let hello = ReturnMsg::Hello { version: PROTOCOL_VERSION, token: *token }.to_bytes();
        let setup_err = |what: &str, e: TransportError| match e {
            TransportError::Interrupted => Error::Interrupted,
            e => Error::ReturnSetup(format!("{what} ({}): {e}", chan.describe())),
        };
        chan.send(zmq::Message::from(&hello[..])).map_err(|e| setup_err("no server took our Hello", e))?;
        let ack = chan.recv().map_err(|e| setup_err("no answer from the server", e))?;
        match ReturnMsg::decode(&ack) {
            Ok(ReturnMsg::HelloAck { .. }) => {}
            Ok(ReturnMsg::Abort { reason }) => {
                return Err(Error::Refused { stage: self.stage("return channel handshake"), reason });
            }
            Ok(other) => {
                return Err(Error::Protocol {
                    stage: self.stage("return channel handshake"),
                    detail: format!("got {}", other.kind()),
                });
            }
            Err(e) => {
                return Err(Error::transport(self.stage("return channel handshake"), e.into()));
            }
        }
        info!(wiring = %chan.describe(), "return channel up");
        self.send(&DataMsg::Ready, "sending Ready")
    }

    fn data_leg(&mut self, chan: &ReturnChannel) -> Result<(String, Digest, Duration, File)> {
        let (size, name) = match self.recv("waiting for the file header")? {
            DataMsg::Header { size, name } => (size, name),
            other => return Err(self.unexpected("waiting for Header", &other)),
        };
        // The name is shown, escaped, and never used as a path: B writes where -f says.
        info!(name = ?name, size, "header received");
        let out = self.cfg.out.clone();
        let dir = parent_dir(&out);
        if let Ok(free) = available_space(dir)
            && free < size
        {
            let reason = format!(
                "not enough space in {}: {} free, file is {}",
                dir.display(),
                units::bytes(free),
                units::bytes(size)
            );
            let _ = self.conn.send(&DataMsg::Refuse { reason: reason.clone() });
            return Err(Error::Output { path: out, source: io::Error::new(io::ErrorKind::StorageFull, reason) });
        }
        let mut staged = match StagedFile::create(&out) {
            Ok(f) => f,
            Err(source) => {
                let _ = self
                    .conn
                    .send(&DataMsg::Refuse { reason: format!("client cannot create its output file: {source}") });
                return Err(Error::Output { path: out, source });
            }
        };
        let temp = staged.temp_path().to_path_buf();
        self.send(&DataMsg::Accept, "accepting the file")?;
        info!(temp = %temp.display(), "accepted; receiving");
        let started = Instant::now();
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; RECV_CHUNK];
        while hasher.size() < size {
            let want = (size - hasher.size()).min(buf.len() as u64) as usize;
            let n = match self.conn.read_some(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    let stage = self.stage(&format!("receiving {name:?}: {} of {size} bytes arrived", hasher.size()));
                    // A server that stops mid-file cannot frame a reason into the byte stream;
                    // it sends it on the return channel instead.
                    if matches!(e, TransportError::Closed)
                        && let Some(frame) = chan.recv_within(Duration::from_millis(500))
                        && let Ok(ReturnMsg::Abort { reason }) = ReturnMsg::decode(&frame)
                    {
                        return Err(Error::Refused { stage, reason });
                    }
                    return Err(Error::transport(stage, e));
                }
            };
            hasher.update(&buf[..n]);
            staged.file().write_all(&buf[..n]).map_err(Error::output(&temp))?;
        }
        let data_time = started.elapsed();
        let expected = match self.recv("waiting for the trailer")? {
            DataMsg::Trailer { crc32, blake3 } => Digest { size, crc32, blake3 },
            other => return Err(self.unexpected("waiting for Trailer", &other)),
        };
        let got = hasher.finish();
        info!(
            bytes = size, crc32 = got.crc32, blake3 = %got.blake3_hex(), duration = %units::duration(data_time),
            rate = %units::rate(size, data_time), "data leg received"
        );
        if let Some(diff) = got.mismatch(&expected) {
            let detail = format!("received file differs from what the server sent: {diff}");
            let _ = self.conn.send(&DataMsg::Verdict { ok: false, reason: detail.clone() });
            return Err(Error::Mismatch { leg: Leg::Data, detail });
        }
        let committed = staged.file().flush().and_then(|()| staged.commit());
        let file = match committed {
            Ok(f) => f,
            Err(source) => {
                let _ = self
                    .conn
                    .send(&DataMsg::Verdict { ok: false, reason: format!("client cannot save the file: {source}") });
                return Err(Error::Output { path: out, source });
            }
        };
        self.send(&DataMsg::Verdict { ok: true, reason: String::new() }, "sending the verdict")?;
        info!(output = %out.display(), "data leg verified and saved");
        Ok((name, got, data_time, file))
    }
}

/// Waits for the CSV converter, sending keep-alives to A while it works.
fn wait_for_csv(
    chan: &ReturnChannel,
    rx: &std::sync::mpsc::Receiver<Result<Option<(PathBuf, Converted)>>>,
    timeout: Duration,
) -> Result<Option<(PathBuf, Converted)>> {
    use std::sync::mpsc::RecvTimeoutError;
    let keepalive = zmq::Message::from(&ReturnMsg::KeepAlive.to_bytes()[..]);
    loop {
        match rx.recv_timeout(keepalive_every(timeout)) {
            Ok(made) => return made,
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Csv("the CSV converter crashed".into())),
            Err(RecvTimeoutError::Timeout) => {
                chan.send(zmq::Message::from(&keepalive[..])).map_err(|e| Error::transport("return leg (CSV)", e))?;
            }
        }
    }
}

/// Converts the received file to CSV if it is STL and a CSV is wanted. `Ok(None)`: no CSV is
/// due (not STL, or disabled); `Err`: the file is STL but not valid.
fn make_csv(cfg: &ClientConfig, stop: &std::sync::atomic::AtomicBool) -> Result<Option<(PathBuf, Converted)>> {
    let Some(path) = &cfg.csv else {
        return Ok(None);
    };
    // One pass: detection is the conversion's first step, and "not STL" is not a failure here.
    let opts = CsvOptions { digest: true, ..CsvOptions::default() };
    let converted = match stl::convert_stoppable(&cfg.out, path, opts, stop) {
        Ok(c) => c,
        Err(e) if e.is_not_stl() => return Ok(None),
        Err(stl::ConvertError::Stopped) => return Err(Error::Interrupted),
        Err(stl::ConvertError::Open { source, .. }) => return Err(Error::Output { path: cfg.out.clone(), source }),
        Err(e) => return Err(e.into()),
    };
    for w in &converted.read.warnings {
        warn!("{}: {w}", cfg.out.display());
    }
    info!(csv = %path.display(), facets = converted.read.facets, rows = converted.csv.rows, "CSV written");
    Ok(Some((path.clone(), converted)))
}

/// Sends `file` as `stream` over the return channel, never exceeding A's credit, then waits for
/// A's verdict. `digest` is what B knows the bytes to be; A checks them itself.
fn send_stream(
    chan: &ReturnChannel,
    stream: Stream,
    mut file: File,
    digest: &Digest,
    cfg: &ClientConfig,
) -> Result<()> {
    let stage = match stream {
        Stream::File => "return leg (file)",
        Stream::Csv => "return leg (CSV)",
    };
    let t = |e| Error::transport(stage, e);
    let size = digest.size;
    file.rewind().map_err(|source| Error::Output { path: cfg.out.clone(), source })?;
    let msg = |m: ReturnMsg<'_>| zmq::Message::from(&m.to_bytes()[..]);
    chan.send(msg(ReturnMsg::Offer { stream, size })).map_err(t)?;
    let started = Instant::now();
    let mut credit: u64 = 0;
    let mut offset: u64 = 0;
    while offset < size {
        let need = (size - offset).min(MAX_CHUNK as u64);
        // Take every waiting message, and block for one when credit is short.
        let mut next = chan.try_recv().map_err(t)?;
        if next.is_none() && credit < need {
            next = Some(chan.recv().map_err(t)?);
        }
        if let Some(frame) = next {
            match ReturnMsg::decode(&frame).map_err(|e| t(e.into()))? {
                ReturnMsg::Credit { stream: s, bytes } if s == stream => credit = credit.saturating_add(bytes),
                ReturnMsg::KeepAlive => {}
                ReturnMsg::Result { ok: false, reason, .. } | ReturnMsg::Abort { reason } => {
                    return Err(Error::Refused { stage: stage.into(), reason });
                }
                other => {
                    let detail = format!("unexpected {} while sending", other.kind());
                    return Err(Error::Protocol { stage: stage.into(), detail });
                }
            }
            continue;
        }
        // Only whole chunks (or the last piece): a credit-aligned sender keeps A's queue bounded.
        let n = need as usize;
        let mut m = zmq::Message::with_size(DATA_HEADER_LEN + n);
        m[..DATA_HEADER_LEN].copy_from_slice(&data_header(stream, offset));
        file.read_exact(&mut m[DATA_HEADER_LEN..]).map_err(|source| Error::Output { path: cfg.out.clone(), source })?;
        chan.send(m).map_err(t)?;
        credit -= need;
        offset += need;
    }
    chan.send(msg(ReturnMsg::End { stream, crc32: digest.crc32, blake3: digest.blake3 })).map_err(t)?;
    loop {
        let frame = chan.recv().map_err(t)?;
        match ReturnMsg::decode(&frame).map_err(|e| t(e.into()))? {
            ReturnMsg::Credit { .. } | ReturnMsg::KeepAlive => {}
            ReturnMsg::Result { stream: s, ok: true, .. } if s == stream => break,
            ReturnMsg::Result { ok: false, reason, .. } => {
                return Err(match stream {
                    Stream::File => Error::Mismatch { leg: Leg::Return, detail: reason },
                    Stream::Csv => Error::Csv(format!("the server rejected it: {reason}")),
                });
            }
            ReturnMsg::Abort { reason } => {
                return Err(Error::Refused { stage: stage.into(), reason });
            }
            other => {
                let detail = format!("expected Result, got {}", other.kind());
                return Err(Error::Protocol { stage: stage.into(), detail });
            }
        }
    }
    let elapsed = started.elapsed();
    info!(stream = stream.name(), bytes = size, duration = %units::duration(elapsed), rate = %units::rate(size, elapsed), "sent back; server verified it");
    Ok(())
}
