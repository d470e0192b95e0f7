//! One wait over everything a driver watches: TCP sockets, wake-ups and ZeroMQ sockets, through
//! `zmq_poll` (which takes plain descriptors beside ZeroMQ sockets). Drivers name what they want
//! with [`Watch`]; no ZeroMQ type leaves this module.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// One thing to wait for.
pub struct Watch<'a> {
    target: Target<'a>,
    read: bool,
    write: bool,
    /// Set by [`wait`].
    pub readable: bool,
    /// Set by [`wait`].
    pub writable: bool,
}

enum Target<'a> {
    Fd(RawFd),
    Zmq(&'a zmq::Socket),
}

impl<'a> Watch<'a> {
    /// A plain descriptor.
    pub fn fd(fd: RawFd, read: bool, write: bool) -> Watch<'a> {
        Watch { target: Target::Fd(fd), read, write, readable: false, writable: false }
    }

    pub(crate) fn zmq(sock: &'a zmq::Socket, read: bool, write: bool) -> Watch<'a> {
        Watch { target: Target::Zmq(sock), read, write, readable: false, writable: false }
    }
}

/// Waits until one watch is ready or `deadline` passes (`None`: no deadline). A signal ends
/// the wait early with nothing ready, like a spurious wake-up; callers look at their state again.
pub fn wait(watches: &mut [Watch<'_>], deadline: Option<Instant>) -> io::Result<()> {
    let timeout_ms = match deadline {
        None => -1,
        Some(d) => {
            // Rounded up: waking a millisecond early would only spin.
            let left = d.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64
        }
    };
    let mut items: Vec<zmq::PollItem<'_>> = watches
        .iter()
        .map(|w| {
            let mut ev = zmq::PollEvents::empty();
            if w.read {
                ev |= zmq::POLLIN;
            }
            if w.write {
                ev |= zmq::POLLOUT;
            }
            match w.target {
                Target::Fd(fd) => zmq::PollItem::from_fd(fd, ev),
                Target::Zmq(s) => s.as_poll_item(ev),
            }
        })
        .collect();
    match zmq::poll(&mut items, timeout_ms) {
        Ok(_) => {}
        Err(zmq::Error::EINTR) => return Ok(()),
        Err(e) => return Err(io::Error::other(e)),
    }
    for (w, item) in watches.iter_mut().zip(&items) {
        let r = item.get_revents();
        // An error or hang-up counts as readable: the read that follows reports it.
        w.readable = r.intersects(zmq::POLLIN | zmq::POLLERR);
        w.writable = r.contains(zmq::POLLOUT);
    }
    Ok(())
}
