//! The data channel's socket: a TCP stream whose every wait is bounded by an idle timeout and
//! interruptible by the shutdown flag, plus framed send/receive of control messages.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::TransportError;
use crate::protocol::data::{DataMsg, FRAME_HEADER_LEN, parse_frame_header};
use crate::shutdown::{Shutdown, TICK};

/// A connected data-channel socket.
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    idle: Duration,
    shutdown: Shutdown,
    scratch: Vec<u8>,
}

impl Conn {
    /// Wraps a connected stream. `idle` bounds how long any single read or write may make no
    /// progress before it fails with [`TransportError::Timeout`].
    pub fn new(stream: TcpStream, idle: Duration, shutdown: Shutdown) -> io::Result<Conn> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        // Short socket timeouts turn blocking calls into ticks at which we check the stop flag
        // and the idle deadline; they are not the idle timeout itself.
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(TICK))?;
        Ok(Conn { stream, peer, idle, shutdown, scratch: Vec::with_capacity(256) })
    }

    /// The remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Reads at least one byte into `buf`; `Closed` on end of stream.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.read_some_since(buf, Instant::now())
    }

    /// As [`Conn::read_some`], but the idle timeout counts from `started`.
    fn read_some_since(&mut self, buf: &mut [u8], started: Instant) -> Result<usize, TransportError> {
        // Checked on every call, not only when blocked: a peer streaming steadily must not be
        // able to delay a stop until the transfer ends.
        self.check_stop()?;
        loop {
            match self.stream.read(buf) {
                Ok(0) if !buf.is_empty() => return Err(TransportError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if is_tick(&e) => self.check_wait(started)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Err(TransportError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fills `buf` completely, all within one idle timeout from `started`: a peer that trickles
    /// a byte now and then cannot hold a connection (and a client slot) indefinitely.
    fn read_exact_since(&mut self, mut buf: &mut [u8], started: Instant) -> Result<(), TransportError> {
        while !buf.is_empty() {
            let n = self.read_some_since(buf, started)?;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), TransportError> {
        let mut started = Instant::now();
        self.check_stop()?;
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => {
                    buf = &buf[n..];
                    started = Instant::now();
                }
                Err(e) if is_tick(&e) => self.check_wait(started)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => return Err(TransportError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends one control message.
    pub fn send(&mut self, msg: &DataMsg) -> Result<(), TransportError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        msg.encode(&mut buf);
        let res = self.write_all(&buf);
        self.scratch = buf;
        res
    }

    /// Receives one control message. The length is checked before the payload is read, so a
    /// hostile peer cannot make us allocate more than the protocol's frame limit.
    pub fn recv(&mut self) -> Result<DataMsg, TransportError> {
        let started = Instant::now();
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.read_exact_since(&mut head, started)?;
        let (ty, len) = parse_frame_header(&head)?;
        let mut payload = std::mem::take(&mut self.scratch);
        payload.resize(len, 0);
        let res = self.read_exact_since(&mut payload, started).and_then(|()| Ok(DataMsg::decode(ty, &payload)?));
        self.scratch = payload;
        res
    }

    /// Best effort, for the last word of a failing session: sends `msg` even when a stop was
    /// asked for (a stopping server still says why), waiting at most a second on a bad peer.
    pub fn send_final(&mut self, msg: &DataMsg) {
        self.idle = Duration::from_secs(1);
        let stop = std::mem::take(&mut self.shutdown);
        let _ = self.send(msg);
        self.shutdown = stop;
    }

    /// Half-closes the write side so the peer sees a clean end of stream.
    pub fn finish(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    fn check_stop(&self) -> Result<(), TransportError> {
        if self.shutdown.is_set() { Err(TransportError::Interrupted) } else { Ok(()) }
    }

    fn check_wait(&self, since: Instant) -> Result<(), TransportError> {
        if self.shutdown.is_set() {
            Err(TransportError::Interrupted)
        } else if since.elapsed() >= self.idle {
            Err(TransportError::Timeout(self.idle))
        } else {
            Ok(())
        }
    }
}

fn is_tick(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(idle: Duration) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (Conn::new(s, idle, Shutdown::new()).unwrap(), c)
    }

    #[test]
    fn frames_cross_in_pieces() {
        let (mut conn, mut raw) = pair(Duration::from_secs(5));
        let bytes = DataMsg::Header { size: 5, name: "x.stl".into() }.to_bytes();
        let t = std::thread::spawn(move || {
            for b in bytes {
                raw.write_all(&[b]).unwrap();
            }
            raw
        });
        assert_eq!(conn.recv().unwrap(), DataMsg::Header { size: 5, name: "x.stl".into() });
        drop(t.join().unwrap());
        assert!(matches!(conn.recv(), Err(TransportError::Closed)));
    }

    #[test]
    fn silent_peer_times_out() {
        let (mut conn, _raw) = pair(Duration::from_millis(300));
        assert!(matches!(conn.recv(), Err(TransportError::Timeout(_))));
    }

    #[test]
    fn shutdown_interrupts_a_wait() {
        let (mut conn, _raw) = pair(Duration::from_secs(60));
        conn.shutdown.trigger();
        assert!(matches!(conn.recv(), Err(TransportError::Interrupted)));
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let (mut conn, mut raw) = pair(Duration::from_secs(5));
        raw.write_all(&[4, 0x7f, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(conn.recv(), Err(TransportError::Decode(_))));
    }
}
