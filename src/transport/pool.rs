//! Buffers for the frames B returns, and the zero-copy ZeroMQ messages made of them.
//!
//! B reads the file from the data channel straight into a pooled buffer, behind room for the
//! `Data` frame's header; the same buffer is hashed, written to disk, and handed to libzmq as the
//! message itself (`zmq_msg_init_data`), with a release function that gives it back to the pool
//! once libzmq's I/O thread has written it to the socket. So each returned byte is copied only
//! by the kernel, no buffer is zeroed after it is first allocated, and the number of buffers is
//! bounded by what credit and back-pressure allow in flight.

use std::ffi::c_void;
use std::io;
use std::sync::{Arc, Mutex};

use crate::protocol::ret::{DATA_HEADER_LEN, Stream, data_header};

/// Buffers kept for reuse beyond those in use; more are freed.
const SPARE: usize = 16;

#[derive(Debug)]
struct Shared {
    cap: usize,
    free: Mutex<Vec<Box<[u8]>>>,
}

impl Shared {
    fn put(&self, buf: Box<[u8]>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < SPARE {
            free.push(buf);
        }
    }
}

/// A pool of frame buffers, each with room for a `Data` header and `frame` payload bytes.
#[derive(Debug, Clone)]
pub struct ChunkPool(Arc<Shared>);

impl ChunkPool {
    /// A pool for payloads of at most `frame` bytes.
    pub fn new(frame: usize) -> ChunkPool {
        ChunkPool(Arc::new(Shared { cap: DATA_HEADER_LEN + frame, free: Mutex::new(Vec::new()) }))
    }

    /// A buffer for a payload of `len` bytes (at most the pool's frame).
    pub fn get(&self, len: usize) -> Chunk {
        assert!(DATA_HEADER_LEN + len <= self.0.cap, "a chunk never exceeds the frame size");
        let reused = self.0.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // Zeroed once, when first allocated (calloc: fresh pages), never again.
        let buf = reused.unwrap_or_else(|| vec![0u8; self.0.cap].into_boxed_slice());
        Chunk { buf: Some(buf), len, filled: 0, pool: Arc::clone(&self.0) }
    }

    /// Buffers waiting for reuse (for tests).
    pub fn spare(&self) -> usize {
        self.0.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One frame's payload, being filled.
#[derive(Debug)]
pub struct Chunk {
    buf: Option<Box<[u8]>>,
    len: usize,
    filled: usize,
    pool: Arc<Shared>,
}

impl Chunk {
    /// The part still to fill.
    pub fn unfilled(&mut self) -> &mut [u8] {
        let (filled, len) = (self.filled, self.len);
        &mut self.buf.as_mut().expect("present until sent")[DATA_HEADER_LEN + filled..DATA_HEADER_LEN + len]
    }

    /// `n` more bytes were written into [`Chunk::unfilled`].
    pub fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.len);
    }

    /// The bytes filled so far.
    pub fn filled(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until sent")[DATA_HEADER_LEN..DATA_HEADER_LEN + self.filled]
    }

    /// Whether every byte of the payload is in.
    pub fn is_full(&self) -> bool {
        self.filled == self.len
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Passes the whole `Data` message for `stream` at `offset` (header and payload) to `f`, then
    /// gives the buffer back to the pool.
    pub(crate) fn with_frame<R>(mut self, stream: Stream, offset: u64, f: impl FnOnce(&[u8]) -> R) -> R {
        let filled = self.filled;
        let buf = self.buf.as_mut().expect("present until sent");
        buf[..DATA_HEADER_LEN].copy_from_slice(&data_header(stream, offset));
        f(&buf[..DATA_HEADER_LEN + filled])
    }

    /// Turns the chunk into the `Data` message for `stream` at `offset`, without copying.
    pub(crate) fn into_message(mut self, stream: Stream, offset: u64) -> io::Result<ZmqChunk> {
        let mut buf = self.buf.take().expect("present until sent");
        buf[..DATA_HEADER_LEN].copy_from_slice(&data_header(stream, offset));
        ZmqChunk::new(buf, DATA_HEADER_LEN + self.filled, Arc::clone(&self.pool))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.put(buf);
        }
    }
}

/// What libzmq's release call needs to give a buffer back.
struct Release {
    pool: Arc<Shared>,
    cap: usize,
}

/// Called by libzmq (on its I/O thread, or when the message is closed unsent) once it no longer
/// needs the bytes.
unsafe extern "C" fn release(data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Release>` leaked in `ZmqChunk::new` for exactly this message,
    // and `data` the start of the `Box<[u8]>` of `hint.cap` bytes leaked with it; libzmq calls
    // this once per message.
    unsafe {
        let hint = Box::from_raw(hint.cast::<Release>());
        let buf = Box::from_raw(std::ptr::slice_from_raw_parts_mut(data.cast::<u8>(), hint.cap));
        hint.pool.put(buf);
    }
}

/// A ZeroMQ message that owns a pooled buffer.
pub(crate) struct ZmqChunk {
    msg: zmq_sys::zmq_msg_t,
}

impl std::fmt::Debug for ZmqChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZmqChunk")
    }
}

impl ZmqChunk {
    fn new(buf: Box<[u8]>, len: usize, pool: Arc<Shared>) -> io::Result<ZmqChunk> {
        let cap = buf.len();
        debug_assert!(len <= cap);
        let data = Box::into_raw(buf).cast::<u8>();
        let hint = Box::into_raw(Box::new(Release { pool, cap }));
        let mut msg = zmq_sys::zmq_msg_t { __: [0; 64] };
        // SAFETY: `msg` is a valid, uninitialised message struct; `data` points to `cap >= len`
        // bytes that stay valid until `release` is called with `hint`.
        let rc = unsafe { zmq_sys::zmq_msg_init_data(&mut msg, data.cast(), len, Some(release), hint.cast()) };
        if rc != 0 {
            // SAFETY: the message was not created, so nothing else owns these pointers.
            unsafe { release(data.cast(), hint.cast()) };
            return Err(io::Error::last_os_error());
        }
        Ok(ZmqChunk { msg })
    }

    /// Sends without waiting. `Ok(None)`: sent; `Ok(Some(self))`: the socket takes nothing now.
    pub(crate) fn send(mut self, sock: &mut zmq::Socket) -> Result<Option<ZmqChunk>, zmq::Error> {
        // SAFETY: `self.msg` is an initialised message and `sock` a live socket owned by this
        // thread. On success libzmq takes the content and leaves `msg` empty, which `Drop`
        // closes harmlessly.
        let rc = unsafe { zmq_sys::zmq_msg_send(&mut self.msg, sock.as_mut_ptr(), zmq_sys::ZMQ_DONTWAIT as i32) };
        if rc >= 0 {
            return Ok(None);
        }
        match zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }) {
            zmq::Error::EAGAIN | zmq::Error::EINTR => Ok(Some(self)),
            e => Err(e),
        }
    }
}

impl Drop for ZmqChunk {
    fn drop(&mut self) {
        // SAFETY: the message is initialised (possibly emptied by a send); closing it releases
        // the buffer if libzmq still held it.
        unsafe {
            zmq_sys::zmq_msg_close(&mut self.msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_after_zmq_is_done_with_them() {
        let pool = ChunkPool::new(1024);
        let ctx = zmq::Context::new();
        let mut push = ctx.socket(zmq::PAIR).unwrap();
        let pull = ctx.socket(zmq::PAIR).unwrap();
        pull.bind("inproc://pool-test").unwrap();
        push.connect("inproc://pool-test").unwrap();
        let mut c = pool.get(3);
        c.unfilled()[..3].copy_from_slice(b"abc");
        c.advance(3);
        assert!(c.is_full());
        let m = c.into_message(Stream::Csv, 7).unwrap();
        assert!(m.send(&mut push).unwrap().is_none());
        let got = pull.recv_bytes(0).unwrap();
        assert_eq!(&got[..DATA_HEADER_LEN], &data_header(Stream::Csv, 7));
        assert_eq!(&got[DATA_HEADER_LEN..], b"abc");
        // inproc hands the same message over; it is released once the receiver dropped it.
        assert_eq!(pool.spare(), 1);
        // A chunk dropped unsent goes back too, and a reused buffer is not zeroed again.
        drop(pool.get(10));
        assert_eq!(pool.spare(), 1);
        assert_eq!(&pool.get(3).unfilled()[..0], b"");
    }
}
