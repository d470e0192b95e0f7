//! Live progress on stderr: a bar per leg of each round trip (bytes, rate, time left), drawn in
//! place by `indicatif`. A server draws a pair per client it is serving; each pair goes when its
//! round trip ends, and the verdict line takes its place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::Progress;
use crate::session::Leg;

/// Redraws a second: enough to read, and cheap for a session's loop.
const REDRAWS: u8 = 8;
/// One leg's line: who and which way, the bar (as wide as the terminal allows), bytes, rate,
/// time left.
const TEMPLATE: &str = "{prefix} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>11} {eta:>3} left";

/// The bars of the round trips under way.
pub struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    rounds: Mutex<HashMap<Option<SocketAddr>, [ProgressBar; 2]>>,
    /// Whether stdout is a terminal (so, likely the one the bars are on): only then do lines
    /// printed there need the bars out of the way.
    stdout_terminal: bool,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars").finish_non_exhaustive()
    }
}

impl Bars {
    /// Bars on stderr: `None` if it is not a terminal, unless `forced` (`--progress`), in which
    /// case they are drawn whatever stderr is.
    pub fn new(forced: bool) -> Option<Bars> {
        use std::io::IsTerminal;
        if !forced && !std::io::stderr().is_terminal() {
            return None;
        }
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::buffered_stderr()), REDRAWS);
        // The template is a constant: it parses, as the unit test shows.
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Some(Bars {
            multi: MultiProgress::with_draw_target(target),
            style,
            rounds: Mutex::new(HashMap::new()),
            stdout_terminal: std::io::stdout().is_terminal(),
        })
    }

    /// Moves the bars of `peer`'s round trip (the client's own: `None`), making them first.
    pub fn update(&self, peer: Option<SocketAddr>, p: Progress) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let bars = rounds.entry(peer).or_insert_with(|| {
            let who = peer.map(|a| format!("{a} ")).unwrap_or_default();
            let [data, ret] = if peer.is_some() { ["sending", "coming back"] } else { ["receiving", "sending back"] };
            let width = data.len().max(ret.len());
            [Leg::Data, Leg::Return].map(|leg| {
                let what = if leg == Leg::Data { data } else { ret };
                let bar = self.multi.add(ProgressBar::new(p.size).with_style(self.style.clone()));
                bar.set_prefix(format!("{who}{what:<width$}"));
                // What an earlier attempt left is not this attempt's speed.
                bar.set_position(if leg == Leg::Data { p.data } else { p.ret });
                bar.reset_eta();
                bar
            })
        });
        bars[0].set_position(p.data);
        bars[1].set_position(p.ret);
    }

    /// A leg was verified: its bar is full.
    pub fn leg_done(&self, peer: Option<SocketAddr>, leg: Leg) {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bars) = rounds.get(&peer) {
            let bar = &bars[usize::from(leg == Leg::Return)];
            bar.set_position(bar.length().unwrap_or(0));
        }
    }

    /// The round trip ended: its bars go.
    pub fn end(&self, peer: Option<SocketAddr>) {
        let bars = self.rounds.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
        for bar in bars.into_iter().flatten() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Runs `f` (which prints on stdout) with the bars out of the way, then draws them again.
    /// Only when stdout is a terminal: the bars' lock is held meanwhile, and a pipe that nobody
    /// reads must not stall the sessions that move the bars (a server's printer thread may block
    /// on it for ever).
    pub fn around_stdout<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.stdout_terminal { self.multi.suspend(f) } else { f() }
    }

    /// Runs `f` (which prints on stderr, beside the bars) with the bars out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
