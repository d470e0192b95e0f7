//! The data channel's socket, non-blocking: control frames are read whole (never past their end,
//! since raw file bytes may follow) and queued for writing; raw bytes are read into and written
//! from the caller's buffers. Nothing here waits: drivers wait in [`super::poll::wait`], and the
//! session machines keep the timeouts.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown as Both, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::protocol::DecodeError;
use crate::protocol::data::{DataMsg, FRAME_HEADER_LEN, parse_frame_header};
use crate::secure::{MAX_RECORD, OpenError, Opener, RECORD_HEADER, Sealer, TAG_LEN};
use crate::shutdown::Shutdown;

use super::poll::{Watch, wait};

/// What can go wrong on the data channel.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The peer closed the connection (end of stream, reset, broken pipe).
    #[error("the peer closed the connection")]
    Closed,
    /// Bytes that are not a frame.
    #[error("malformed frame")]
    Decode(#[from] DecodeError),
    /// (A sealed session) A record that does not open.
    #[error(transparent)]
    Forged(#[from] OpenError),
    /// Another socket error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where a data channel's bytes come from: the socket, through the record layer once the session
/// is sealed.
#[derive(Debug)]
struct Source {
    stream: TcpStream,
    sealed: Option<Box<RecordsIn>>,
}

/// Incoming records: one is read whole into `buf` (header, then body), opened in place, and its
/// plaintext handed out from `buf[plain..end]` before the next is read.
struct RecordsIn {
    open: Opener,
    buf: Box<[u8]>,
    /// Bytes of the record being read.
    have: usize,
    plain: usize,
    end: usize,
}

impl std::fmt::Debug for RecordsIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordsIn({:?})", self.open)
    }
}

impl Source {
    /// Reads bytes of the stream (plaintext, if sealed); `Ok(0)`: none for now.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        let Some(r) = self.sealed.as_deref_mut() else { return read_some(&mut self.stream, buf) };
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if r.plain < r.end {
                let n = buf.len().min(r.end - r.plain);
                buf[..n].copy_from_slice(&r.buf[r.plain..r.plain + n]);
                r.plain += n;
                if r.plain == r.end {
                    r.have = 0;
                }
                return Ok(n);
            }
            // The header, then as much of the body as it announces, and no more.
            let want = if r.have < RECORD_HEADER {
                RECORD_HEADER
            } else {
                RECORD_HEADER + Opener::record_len(header(&r.buf))?
            };
            if r.have < want {
                match read_some(&mut self.stream, &mut r.buf[r.have..want])? {
                    0 => return Ok(0),
                    n => r.have += n,
                }
                continue;
            }
            if want == RECORD_HEADER {
                continue;
            }
            let head = header(&r.buf);
            let len = r.open.open_record(head, &mut r.buf[RECORD_HEADER..want])?.len();
            (r.plain, r.end) = (RECORD_HEADER, RECORD_HEADER + len);
            if len == 0 {
                r.have = 0;
            }
        }
    }
}

fn header(buf: &[u8]) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h.copy_from_slice(&buf[..RECORD_HEADER]);
    h
}

/// A connected data-channel socket.
#[derive(Debug)]
pub struct DataConn {
    src: Source,
    peer: SocketAddr,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The payload of the frame being read, once its header is in.
    payload: Option<(u8, Vec<u8>, usize)>,
    /// Bytes for the socket, sealed already if the session is.
    out: Vec<u8>,
    out_pos: usize,
    /// Seals what is queued or written from now on (version 5, with a secret).
    seal: Option<Sealer>,
    /// The connection is gone (closed by either side, or broken): nothing more is tried.
    gone: bool,
}

impl DataConn {
    /// Wraps a connected stream, switching it to non-blocking mode.
    pub fn new(stream: TcpStream) -> io::Result<DataConn> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(DataConn {
            src: Source { stream, sealed: None },
            peer,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload: None,
            out: Vec::new(),
            out_pos: 0,
            seal: None,
            gone: false,
        })
    }

    /// From now on, seals everything written and opens everything read. Frames queued before
    /// this (a `Confirm`) go in the clear; the next byte read must begin a record.
    pub fn secure(&mut self, seal: Sealer, open: Opener) {
        self.seal = Some(seal);
        let buf = vec![0u8; RECORD_HEADER + MAX_RECORD + TAG_LEN].into_boxed_slice();
        self.src.sealed = Some(Box::new(RecordsIn { open, buf, have: 0, plain: 0, end: 0 }));
    }

    /// Whether the session is sealed.
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// What to wait for: reading if `read`, writing while frames are queued or `write`. `None`
    /// when there is nothing to wait for: a socket left in a wait after its peer hung up would
    /// report that hang-up at once, every time, and spin the loop.
    pub fn watch(&self, read: bool, write: bool) -> Option<Watch<'static>> {
        let write = write || self.pending();
        (!self.gone && (read || write)).then(|| Watch::fd(self.src.stream.as_raw_fd(), read, write))
    }

    /// The descriptor, for a wait.
    pub fn fd(&self) -> RawFd {
        self.src.stream.as_raw_fd()
    }

    /// Reads toward the next control frame: `Ok(Some)` when one is complete, `Ok(None)` when the
    /// socket has no more bytes for now. The length is checked before the payload is read, so a
    /// hostile peer cannot make us allocate more than the protocol's frame limit.
    pub fn read_frame(&mut self) -> Result<Option<DataMsg>, TcpError> {
        if self.gone {
            return Err(TcpError::Closed);
        }
        let r = self.read_frame_inner();
        self.note(r)
    }

    fn read_frame_inner(&mut self) -> Result<Option<DataMsg>, TcpError> {
        loop {
            if let Some((_, payload, filled)) = &mut self.payload {
                while *filled < payload.len() {
                    match self.src.read(&mut payload[*filled..])? {
                        0 => return Ok(None),
                        n => *filled += n,
                    }
                }
                let (ty, payload, _) = self.payload.take().expect("checked");
                return Ok(Some(DataMsg::decode(ty, &payload)?));
            }
            while self.head_len < FRAME_HEADER_LEN {
                match self.src.read(&mut self.head[self.head_len..])? {
                    0 => return Ok(None),
                    n => self.head_len += n,
                }
            }
            self.head_len = 0;
            let (ty, len) = parse_frame_header(&self.head)?;
            self.payload = Some((ty, vec![0; len], 0));
        }
    }

    /// Reads raw bytes into `buf`; `Ok(0)`: none for now.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        if self.gone {
            return Err(TcpError::Closed);
        }
        let r = self.src.read(buf);
        self.note(r)
    }

    /// Remembers that the connection is gone once an operation found it so.
    fn note<T>(&mut self, r: Result<T, TcpError>) -> Result<T, TcpError> {
        if matches!(r, Err(TcpError::Closed | TcpError::Io(_))) {
            self.gone = true;
        }
        r
    }

    /// Queues a control frame behind those already queued.
    pub fn queue(&mut self, msg: &DataMsg) {
        match &mut self.seal {
            Some(seal) => seal.seal_record(&msg.to_bytes(), &mut self.out),
            None => msg.encode(&mut self.out),
        }
    }

    /// Whether queued frames wait to be written.
    pub fn pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes queued frames as far as the socket takes them; `Ok(true)` when none are left.
    pub fn flush(&mut self) -> Result<bool, TcpError> {
        if self.gone {
            return if self.pending() { Err(TcpError::Closed) } else { Ok(true) };
        }
        while self.pending() {
            let r = write_some(&mut self.src.stream, &self.out[self.out_pos..]);
            match self.note(r)? {
                0 => return Ok(false),
                n => self.out_pos += n,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Writes raw bytes; `Ok(0)`: the socket takes none for now. Queued frames go first. A
    /// sealed session takes at most a record's worth at a time, and the socket may not have all
    /// of its record yet: [`DataConn::pending`] says so, and [`DataConn::flush`] goes on.
    pub fn write_raw(&mut self, buf: &[u8]) -> Result<usize, TcpError> {
        if !self.flush()? {
            return Ok(0);
        }
        if let Some(seal) = &mut self.seal {
            let n = buf.len().min(MAX_RECORD);
            seal.seal_record(&buf[..n], &mut self.out);
            self.flush()?;
            return Ok(n);
        }
        let r = write_some(&mut self.src.stream, buf);
        self.note(r)
    }

    /// Sends up to `len` bytes of `file` from `offset`, after the queued frames: the kernel moves
    /// them from the page cache to the socket without a copy through this process.
    pub fn send_file(&mut self, file: &File, offset: u64, len: usize) -> Result<FileSent, TcpError> {
        // Sealed bytes pass through this process: the caller writes them from a buffer.
        if self.seal.is_some() {
            return Ok(FileSent::Unsupported);
        }
        if !self.flush()? {
            return Ok(FileSent::Full);
        }
        let r = send_file_some(&self.src.stream, file, offset, len);
        self.note(r)
    }

    /// Best effort, for a session's last words: writes what is queued, waiting at most `limit`
    /// (a stopping server still says why; a peer that does not read does not hold it up).
    pub fn flush_within(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(false) = self.flush() {
            let Some(w) = self.watch(false, true) else { return };
            if wait(&mut [w], Some(deadline)).is_err() || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Closes both directions.
    pub fn close(&mut self) {
        let _ = self.src.stream.shutdown(Both::Both);
        self.gone = true;
    }
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, TcpError> {
    let empty = buf.is_empty();
    loop {
        if let Some(r) = settle(stream.read(buf), empty) {
            return r;
        }
    }
}

/// How far a [`DataConn::send_file`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSent {
    /// This many bytes went.
    Bytes(usize),
    /// The socket takes no more for now.
    Full,
    /// The file ends before `offset`: it shrank.
    FileEnded,
    /// The file's file system cannot `sendfile`; nothing was sent.
    Unsupported,
}

fn send_file_some(stream: &TcpStream, file: &File, offset: u64, len: usize) -> Result<FileSent, TcpError> {
    let Ok(mut off) = libc::off_t::try_from(offset) else {
        return Ok(FileSent::FileEnded);
    };
    loop {
        // SAFETY: both descriptors are open for the call (borrowed), and `off` is a valid
        // off_t the kernel advances; sendfile reads no memory of ours.
        let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
        let r = if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) };
        match r {
            Ok(0) if len > 0 => return Ok(FileSent::FileEnded),
            Ok(n) => return Ok(FileSent::Bytes(n)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                return Ok(FileSent::Unsupported);
            }
            Err(e) => match settle(Err(e), false) {
                None => continue,
                Some(Ok(_)) => return Ok(FileSent::Full),
                Some(Err(e)) => return Err(e),
            },
        }
    }
}

fn write_some(stream: &mut TcpStream, buf: &[u8]) -> Result<usize, TcpError> {
    loop {
        if let Some(r) = settle(stream.write(buf), buf.is_empty()) {
            return r;
        }
    }
}

/// What a non-blocking read or write came to: bytes moved (0: none for now), the peer gone, or
/// an error; `None` to try again (a signal interrupted it).
fn settle(r: io::Result<usize>, empty: bool) -> Option<Result<usize, TcpError>> {
    Some(match r {
        Ok(0) if !empty => Err(TcpError::Closed),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
        Err(e) if is_reset(&e) => Err(TcpError::Closed),
        Err(e) => Err(e.into()),
    })
}

/// Whether an I/O error means the peer is gone (reset, aborted, or a broken pipe).
pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens there.
    #[error("connection refused")]
    Refused,
    /// The stop signal came first.
    #[error("interrupted")]
    Interrupted,
    /// Anything else: unreachable, timed out, a name that does not resolve.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Connects to `addr` (`host:port`), trying each address it resolves to within `timeout`, and
/// giving up at once when `stop` is set.
pub fn connect(addr: &str, timeout: Duration, stop: &Shutdown) -> Result<DataConn, ConnectError> {
    Ok(DataConn::new(connect_stream(addr, timeout, stop)?)?)
}

/// [`connect`], for a plain (nonblocking) stream.
pub fn connect_stream(addr: &str, timeout: Duration, stop: &Shutdown) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = ConnectError::Io(io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address"));
    for a in addrs {
        match connect_one(a, timeout, stop) {
            Ok(stream) => return Ok(stream),
            Err(ConnectError::Interrupted) => return Err(ConnectError::Interrupted),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_one(addr: SocketAddr, timeout: Duration, stop: &Shutdown) -> Result<TcpStream, ConnectError> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {
            let deadline = Instant::now() + timeout;
            loop {
                let mut w = [Watch::fd(sock.as_raw_fd(), false, true), Watch::fd(stop.fd(), true, false)];
                wait(&mut w, Some(deadline))?;
                if w[1].readable {
                    return Err(ConnectError::Interrupted);
                }
                if w[0].writable || w[0].readable {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer").into());
                }
            }
            if let Some(e) = sock.take_error()? {
                return Err(classify(e));
            }
        }
        Err(e) => return Err(classify(e)),
    }
    Ok(sock.into())
}

fn classify(e: io::Error) -> ConnectError {
    if e.kind() == io::ErrorKind::ConnectionRefused { ConnectError::Refused } else { ConnectError::Io(e) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (DataConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (DataConn::new(s).unwrap(), c)
    }

    fn next_frame(conn: &mut DataConn) -> Result<DataMsg, TcpError> {
        loop {
            if let Some(m) = conn.read_frame()? {
                return Ok(m);
            }
            let mut w = [conn.watch(true, false).expect("open")];
            wait(&mut w, Some(Instant::now() + Duration::from_secs(10))).unwrap();
            assert!(w[0].readable, "no frame within 10 s");
        }
    }

    #[test]
    fn frames_cross_in_pieces_and_never_read_past_their_end() {
        let (mut conn, mut raw) = pair();
        let mut bytes = DataMsg::Header { size: 5, name: "x.stl".into() }.to_bytes();
        bytes.extend_from_slice(b"RAW");
        let t = std::thread::spawn(move || {
            for b in bytes {
                raw.write_all(&[b]).unwrap();
                std::thread::yield_now();
            }
            raw
        });
        assert_eq!(next_frame(&mut conn).unwrap(), DataMsg::Header { size: 5, name: "x.stl".into() });
        let raw = t.join().unwrap();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = conn.read_raw(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"RAW", "the bytes after the frame are left for the raw reader");
        drop(raw);
        assert!(matches!(next_frame(&mut conn), Err(TcpError::Closed)));
    }

    #[test]
    fn oversized_frame_is_an_error_before_allocation() {
        let (mut conn, mut raw) = pair();
        raw.write_all(&[4, 0x7f, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(next_frame(&mut conn), Err(TcpError::Decode(_))));
    }

    #[test]
    fn queued_frames_go_before_raw_bytes() {
        let (mut conn, mut raw) = pair();
        conn.queue(&DataMsg::Accept);
        assert_eq!(conn.write_raw(b"xyz").unwrap(), 3);
        let mut got = [0u8; 8];
        raw.read_exact(&mut got).unwrap();
        assert_eq!(got, [5, 0, 0, 0, 0, b'x', b'y', b'z']);
    }

    #[test]
    fn a_file_goes_after_queued_frames_from_its_offset_until_the_socket_is_full() {
        let (mut conn, mut raw) = pair();
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..64u32 << 10).map(|i| (i * 7 + i / 251) as u8).collect();
        file.write_all(&bytes).unwrap();
        conn.queue(&DataMsg::Accept);
        assert_eq!(conn.send_file(&file, 1000, 10).unwrap(), FileSent::Bytes(10));
        let mut got = [0u8; 15];
        raw.read_exact(&mut got).unwrap();
        assert_eq!(got[..5], [5, 0, 0, 0, 0], "the queued frame first");
        assert_eq!(got[5..], bytes[1000..1010], "then the file's bytes from the offset");
        assert_eq!(conn.send_file(&file, bytes.len() as u64, 10).unwrap(), FileSent::FileEnded, "a file that shrank");
        // A peer that does not read: the socket fills, and the call says so instead of blocking.
        let mut sent = 0u64;
        let full = loop {
            match conn.send_file(&file, sent % bytes.len() as u64, 8192).unwrap() {
                FileSent::Bytes(n) => sent += n as u64,
                other => break other,
            }
            assert!(sent < 1 << 30, "the socket never filled");
        };
        assert_eq!(full, FileSent::Full);
        drop(raw);
    }

    #[test]
    fn connect_refused_and_interrupted() {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap().to_string();
        let stop = Shutdown::new();
        assert!(matches!(connect(&addr, Duration::from_secs(5), &stop), Err(ConnectError::Refused)));
        stop.trigger();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // Connecting to a listener succeeds at once even when stopped: only waits are cut short.
        let _ = connect(&l.local_addr().unwrap().to_string(), Duration::from_secs(5), &stop);
    }
}
