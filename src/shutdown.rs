//! The stop signal: set by SIGINT/SIGTERM in the binary, or by a test or the server itself.
//!
//! It is a flag for code that looks (the CSV converter checks it every 64 KiB) and a descriptor
//! for code that waits: every driver's poll includes [`Shutdown::fd`], which becomes readable
//! when the stop is asked for and stays readable, so every waiter wakes at once and none needs a
//! polling tick.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::transport::wake::{WakeHandle, Waker};

#[derive(Debug)]
struct Inner {
    flag: Arc<AtomicBool>,
    waker: Waker,
    poke: WakeHandle,
}

/// A cloneable stop flag that can be waited on.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<Inner>);

impl Shutdown {
    /// A flag that is not set.
    ///
    /// # Panics
    /// If the process cannot create a socket pair (out of descriptors at start-up).
    pub fn new() -> Self {
        let waker = Waker::new().expect("a socket pair for the stop signal");
        let poke = waker.handle();
        Shutdown(Arc::new(Inner { flag: Arc::new(AtomicBool::new(false)), waker, poke }))
    }

    /// Sets the flag on SIGINT and SIGTERM and wakes every waiter. A second SIGINT/SIGTERM ends
    /// the process at once, for a user who does not want to wait for the clean stop.
    pub fn install_signal_handlers(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&self.0.flag))?;
            signal_hook::flag::register(sig, Arc::clone(&self.0.flag))?;
            signal_hook::low_level::pipe::register(sig, self.0.waker.writer()?)?;
        }
        Ok(())
    }

    /// Asks everything that watches this flag to stop.
    pub fn trigger(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        self.0.poke.wake();
    }

    /// The flag itself, for code that checks an `AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.0.flag
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Readable once a stop was asked for (and from then on: it is never drained).
    pub fn fd(&self) -> RawFd {
        self.0.waker.fd()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::poll::{Watch, wait};
    use std::time::{Duration, Instant};

    #[test]
    fn trigger_wakes_every_waiter_and_stays_set() {
        let s = Shutdown::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut w = [Watch::fd(s.fd(), true, false)];
                    wait(&mut w, Some(Instant::now() + Duration::from_secs(30))).unwrap();
                    w[0].readable
                })
            })
            .collect();
        s.trigger();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        assert!(s.is_set());
        let mut w = [Watch::fd(s.fd(), true, false)];
        wait(&mut w, None).unwrap();
        assert!(w[0].readable, "still readable for a later waiter");
    }
}
