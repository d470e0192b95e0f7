//! The three clocks of a session, kept as deadlines computed from the times the driver passes in:
//! the idle timeout (the peer must make progress), the keep-alive (this side is busy and must
//! say so), and a grace period (a short wait for a last word: an `Abort` that explains a closed
//! connection, or the client's `Bye`).
//!
//! Time never runs backwards here: a driver may hand in an instant it took before a long piece of
//! its own work (hashing a 3 GiB prefix), after a later one was already seen. Each clock works
//! from the latest instant seen, so a stale one cannot undo progress counted since (it once made
//! a session time out the moment that work ended).

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
    /// The latest instant handed in.
    latest: Instant,
}

impl Timers {
    pub(crate) fn new(idle: Duration, now: Instant) -> Timers {
        Timers { idle, last_progress: now, watching: true, keepalive: None, grace: None, latest: now }
    }

    /// `now`, or the latest instant seen if that is later.
    fn at(&mut self, now: Instant) -> Instant {
        self.latest = self.latest.max(now);
        self.latest
    }

    /// The peer (or the transfer) moved.
    pub(crate) fn progress(&mut self, now: Instant) {
        self.last_progress = self.at(now);
    }

    /// Whether to hold the peer to the idle timeout; turning it back on starts a fresh period.
    pub(crate) fn watch(&mut self, on: bool, now: Instant) {
        let now = self.at(now);
        if on && !self.watching {
            self.last_progress = now;
        }
        self.watching = on;
    }

    /// This side is busy with nothing to send: keep the peer's timeout from firing.
    pub(crate) fn keepalive(&mut self, on: bool, now: Instant) {
        let now = self.at(now);
        self.keepalive = on.then(|| now + keepalive_every(self.idle));
    }

    pub(crate) fn grace(&mut self, period: Option<Duration>, now: Instant) {
        let now = self.at(now);
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
        let now = self.at(now);
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
    fn an_instant_taken_before_later_progress_does_not_undo_it() {
        // A driver that took `t0`, then worked for 5 s (its own progress counted at t0 + 5 s),
        // and hands `t0` in again for the next input: the idle period still runs from t0 + 5 s.
        let t0 = Instant::now();
        let mut t = Timers::new(Duration::from_secs(1), t0);
        t.progress(t0 + Duration::from_secs(5));
        t.progress(t0);
        t.watch(true, t0);
        assert_eq!(t.due(t0 + Duration::from_millis(5500)), None);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(6)));
        // The latest instant seen is now t0 + 5.5 s: a grace period runs from there.
        t.grace(Some(Duration::from_millis(300)), t0);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_millis(5800)));
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
