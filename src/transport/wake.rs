//! Wake-ups that a poll can wait on: a connected socket pair whose read end becomes readable when
//! anyone pokes the write end. Helper threads (the CSV converter, the server's own CSV check, a
//! finished session) wake the loop that waits for them at once, instead of being polled for.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The waiting end.
#[derive(Debug)]
pub struct Waker {
    rx: UnixStream,
    tx: Arc<UnixStream>,
}

/// A poking end, for any thread.
#[derive(Debug, Clone)]
pub struct WakeHandle(Arc<UnixStream>);

impl Waker {
    /// A fresh pair.
    pub fn new() -> io::Result<Waker> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Waker { rx, tx: Arc::new(tx) })
    }

    /// A handle that wakes this waker.
    pub fn handle(&self) -> WakeHandle {
        WakeHandle(Arc::clone(&self.tx))
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Consumes pending wake-ups so the next poll waits again.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Whether a wake-up is pending (for tests: the loops wait on [`Waker::fd`]).
    #[cfg(test)]
    pub(crate) fn is_woken(&self) -> bool {
        let mut p = [libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(p.as_mut_ptr(), 1, 0) == 1 }
    }

    /// The write end, for signal handlers that write to it themselves.
    pub(crate) fn writer(&self) -> io::Result<UnixStream> {
        self.tx.try_clone()
    }
}

impl WakeHandle {
    /// Wakes the waiter. A full buffer means it is awake already, so errors are moot.
    pub fn wake(&self) {
        let _ = (&*self.0).write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poke_makes_the_fd_readable_until_drained() {
        let w = Waker::new().unwrap();
        assert!(!w.is_woken());
        let h = w.handle();
        std::thread::spawn(move || h.wake()).join().unwrap();
        assert!(w.is_woken());
        w.drain();
        assert!(!w.is_woken());
    }
}
