//! Log files and console diagnostics through `tracing`.
//!
//! One line per event, in the Python version's shape so existing habits (and greps) keep working:
//! `2026-11-25 10:22:38,421 - server - INFO - client{peer=10.0.0.2:52674}: header received name="cad_mesh.stl"`
//! The file is rotated by size (10 MiB, five old files kept) with the `file-rotate` crate.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// Size at which the log file is rotated.
pub const ROTATE_BYTES: usize = 10 * 1024 * 1024;
/// Rotated files kept beside the current one.
pub const ROTATE_KEEP: usize = 5;

/// Target of the final error event, which goes to the log file but not the console.
pub const EXIT_TARGET: &str = "machinaftp::exit";

/// The line format shared by the log file and the console.
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let component = meta.target().strip_prefix("machinaftp::").unwrap_or(meta.target());
        write!(
            w,
            "{} - {} - {} - ",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f"),
            component,
            level_name(*meta.level())
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, "{{{fields}}}")?;
                }
                write!(w, ": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Console verbosity from `-v`/`-q`: warnings by default, `-v` info, `-vv` debug, `-q` nothing.
pub fn console_level(verbose: u8, quiet: bool) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::OFF,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Installs the global subscriber: everything at DEBUG to the rotating `log_file`, and
/// `console` and above to stderr (stdout is kept for results).
pub fn init(log_file: &Path, console: LevelFilter) -> io::Result<()> {
    // Fail here, with the path, rather than silently losing the log. A missing directory is an
    // error, as it is for -f and --output: creating it would hide a mistyped path.
    std::fs::OpenOptions::new().create(true).append(true).open(log_file)?;
    let file = FileRotate::new(
        log_file,
        AppendCount::new(ROTATE_KEEP),
        ContentLimit::Bytes(ROTATE_BYTES),
        Compression::None,
        None,
    );
    let file_layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .with_filter(LevelFilter::DEBUG);
    let console_layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat)
        .with_ansi(false)
        .with_writer(io::stderr)
        .with_filter(console)
        // main prints the final error itself, with a hint; the file still records it.
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != EXIT_TARGET));
    let subscriber = Registry::default().with(file_layer).with(console_layer);
    tracing::subscriber::set_global_default(subscriber).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(console_level(0, false), LevelFilter::WARN);
        assert_eq!(console_level(1, false), LevelFilter::INFO);
        assert_eq!(console_level(3, true), LevelFilter::OFF);
    }

    #[test]
    fn lines_have_the_python_shape() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(LineFormat)
            .with_ansi(false)
            .with_writer(move || SinkWriter(sink.clone()));
        let subscriber = Registry::default().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("client", peer = "1.2.3.4:5");
            let _e = span.enter();
            tracing::info!(size = 714884, "header received");
        });
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        // e.g. "2026-11-25 10:22:38,421 - logging::tests - INFO - client{peer=...}: header received size=714884"
        let (stamp, rest) = out.split_at(23);
        assert!(stamp.chars().nth(19) == Some(','), "{out}");
        assert!(rest.contains(" - INFO - client{peer=\"1.2.3.4:5\"}: header received size=714884"), "{out}");
    }

    struct SinkWriter(std::sync::Arc<Mutex<Vec<u8>>>);
    impl io::Write for SinkWriter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

/// Counts repeated events that anyone who can reach a port can cause (connections that never
/// say Hello, junk on the return channel) and logs them as one line per period: a flood of
/// them cannot flood the log and rotate its history away.
pub(crate) struct Tally {
    what: &'static str,
    counts: Vec<(&'static str, u64)>,
    period: std::time::Duration,
    next: std::time::Instant,
}

impl Tally {
    /// `what` opens the summary line.
    pub(crate) fn new(what: &'static str, period: std::time::Duration) -> Tally {
        Tally { what, counts: Vec::new(), period, next: std::time::Instant::now() + period }
    }

    /// One more event of `kind` (a short snake_case name, shown as `kind=count`).
    pub(crate) fn note(&mut self, kind: &'static str) {
        match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((kind, 1)),
        }
    }

    /// When [`Tally::tick`] has something to log.
    pub(crate) fn due(&self) -> Option<std::time::Instant> {
        (!self.counts.is_empty()).then_some(self.next)
    }

    /// Logs the counts if a period has passed since the last summary.
    pub(crate) fn tick(&mut self, now: std::time::Instant) {
        if now >= self.next {
            self.next = now + self.period;
            self.flush();
        }
    }

    /// Logs the counts now, if there are any.
    pub(crate) fn flush(&mut self) {
        if self.counts.is_empty() {
            return;
        }
        let counts: Vec<String> = self.counts.drain(..).map(|(k, n)| format!("{k}={n}")).collect();
        tracing::info!(target: "machinaftp::summary", "{} since the last summary: {}", self.what, counts.join(", "));
    }
}

#[cfg(test)]
mod tally_tests {
    use super::Tally;
    use std::time::{Duration, Instant};

    #[test]
    fn repeated_events_make_one_line_per_period() {
        let mut t = Tally::new("junk", Duration::from_secs(1));
        assert_eq!(t.due(), None, "nothing to say");
        for _ in 0..1000 {
            t.note("frame");
        }
        t.note("hello");
        let due = t.due().expect("counts pending");
        t.tick(due - Duration::from_millis(1));
        assert!(t.due().is_some(), "not before the period ends");
        assert_eq!(t.counts, [("frame", 1000), ("hello", 1)]);
        t.tick(Instant::now().max(due));
        assert_eq!(t.due(), None, "logged and cleared");
    }
}
