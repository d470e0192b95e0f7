//! The stop signal every long wait checks: set by SIGINT/SIGTERM in the binary, or by a test.
//!
//! Blocking calls in this crate wait in short ticks and look at this flag between them, so an
//! interrupted process unwinds normally and its temporary files are removed by their destructors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long any blocking wait sleeps before it looks at the flag again.
pub const TICK: Duration = Duration::from_millis(100);

/// A cloneable stop flag.
#[derive(Clone, Default, Debug)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag on SIGINT and SIGTERM. A second SIGINT/SIGTERM ends the process at once,
    /// for a user who does not want to wait for the clean stop.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&self.0))?;
            signal_hook::flag::register(sig, Arc::clone(&self.0))?;
        }
        Ok(())
    }

    /// Asks everything that watches this flag to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The flag itself, for code that polls an `AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
