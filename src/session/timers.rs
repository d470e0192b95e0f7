//! The three clocks of a session, kept as deadlines computed from the times the driver passes in:
//! the idle timeout (the peer must make progress), the keep-alive (this side is busy and must
//! say so), and a grace period (a short wait for a last word: an `Abort` that explains a closed
//! connection, or the client's `Bye`).

use std::time::{Duration, Instant};

use crate::protocol::ret::keepalive_every;

use super::failure::{Failure, Phase};

/// What came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The grace period ended.
    Grace,
    /// Time to send a `KeepAlive`.
    KeepAlive,
    /// The peer made no progress for the idle timeout.
    Idle,
}

#[derive(Debug)]
pub(crate) struct Timers {
    idle: Duration,
    last_progress: Instant,
    /// Whether the idle timeout applies: not while this side waits on its own work.
    watching: bool,
    keepalive: Option<Instant>,
    grace: Option<Instant>,
}

impl Timers {
    pub(crate) fn new(idle: Duration, now: Instant) -> Timers {
        Timers { idle, last_progress: now, watching: true, keepalive: None, grace: None }
    }

    /// The peer (or the transfer) moved.
    pub(crate) fn progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Whether to hold the peer to the idle timeout; turning it back on starts a fresh period.
    pub(crate) fn watch(&mut self, on: bool, now: Instant) {
        if on && !self.watching {
            self.last_progress = now;
        }
        self.watching = on;
    }

    /// This side is busy with nothing to send: keep the peer's timeout from firing.
    pub(crate) fn keepalive(&mut self, on: bool, now: Instant) {
        self.keepalive = on.then(|| now + keepalive_every(self.idle));
    }

    pub(crate) fn grace(&mut self, period: Option<Duration>, now: Instant) {
        self.grace = period.map(|p| now + p);
    }

    pub(crate) fn in_grace(&self) -> bool {
        self.grace.is_some()
    }

    /// The earliest deadline, for the driver's wait.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let idle = self.watching.then(|| self.last_progress + self.idle);
        [idle, self.keepalive, self.grace].into_iter().flatten().min()
    }

    /// The failure an ended grace period or idle timeout means at `during`: the failure that
    /// started the grace period (no `Abort` came to explain it), or a timeout.
    pub(crate) fn failure(&self, due: Due, pending: &mut Option<Failure>, during: Phase) -> Failure {
        match due {
            Due::Grace => pending.take().unwrap_or(Failure::Closed { during }),
            _ => Failure::Timeout { during, idle: self.idle },
        }
    }

    /// What is due at `now`, most urgent first; a due keep-alive is rescheduled.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Due> {
        if self.grace.is_some_and(|g| now >= g) {
            self.grace = None;
            return Some(Due::Grace);
        }
        if self.watching && now >= self.last_progress + self.idle {
            return Some(Due::Idle);
        }
        if let Some(k) = self.keepalive
            && now >= k
        {
            self.keepalive = Some(now + keepalive_every(self.idle));
            return Some(Due::KeepAlive);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_last_progress() {
        let t0 = Instant::now();
        let mut t = Timers::new(Duration::from_secs(10), t0);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(10)));
        t.progress(t0 + Duration::from_secs(4));
        assert_eq!(t.due(t0 + Duration::from_secs(10)), None);
        assert_eq!(t.due(t0 + Duration::from_secs(14)), Some(Due::Idle));
    }

    #[test]
    fn busy_side_sends_keepalives_instead_of_timing_out() {
        let t0 = Instant::now();
        let mut t = Timers::new(Duration::from_secs(3), t0);
        t.watch(false, t0);
        t.keepalive(true, t0);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.due(t0 + Duration::from_secs(1)), Some(Due::KeepAlive));
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(t.due(t0 + Duration::from_secs(100)), Some(Due::KeepAlive), "never idle while busy");
        t.keepalive(false, t0);
        t.watch(true, t0 + Duration::from_secs(100));
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(103)));
    }

    #[test]
    fn grace_comes_first() {
        let t0 = Instant::now();
        let mut t = Timers::new(Duration::from_secs(1), t0);
        t.grace(Some(Duration::from_millis(500)), t0);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(t.due(t0 + Duration::from_secs(2)), Some(Due::Grace));
        assert!(!t.in_grace());
    }
}
