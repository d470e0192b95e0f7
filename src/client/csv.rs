//! B's CSV conversion on its own thread: it reads the saved copy while the file's last frames go
//! back, and wakes the driver when it is done. The driver joins it in every case.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::session::{ClientInput, CsvFailure, Failure, LocalFailure};
use crate::stl::{self, ConvertError, CsvOptions};
use crate::transport::wake::WakeHandle;

/// A conversion in progress.
pub(super) struct Job {
    handle: Option<JoinHandle<()>>,
    rx: Receiver<ClientInput<'static>>,
    stop: Arc<AtomicBool>,
}

impl Job {
    /// Starts converting `input` (the saved copy) to `csv`.
    pub(super) fn start(input: &Path, csv: &Path, wake: WakeHandle) -> std::io::Result<Job> {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (input, csv, flag) = (input.to_path_buf(), csv.to_path_buf(), Arc::clone(&stop));
        let span = tracing::Span::current();
        let handle = std::thread::Builder::new().name("csv".into()).spawn(move || {
            stl::run_in_background();
            let result = span.in_scope(|| convert(&input, &csv, &flag));
            let _ = tx.send(result);
            wake.wake();
        })?;
        Ok(Job { handle: Some(handle), rx, stop })
    }

    /// The result, once there is one.
    pub(super) fn result(&self) -> Option<ClientInput<'static>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                Some(ClientInput::CsvFailed(Failure::Csv(CsvFailure::ClientCouldNot("the converter crashed".into()))))
            }
        }
    }

    /// Asks the converter to give up soon (it looks every 64 KiB).
    pub(super) fn cancel(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Cancels and joins.
    pub(super) fn stop(mut self) {
        self.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Converts the received file to CSV. Not STL is not a failure: there is just no CSV.
fn convert(input: &Path, csv: &Path, stop: &AtomicBool) -> ClientInput<'static> {
    // One pass: detection is the conversion's first step.
    let opts = CsvOptions { digest: true, ..CsvOptions::default() };
    match stl::convert_stoppable(input, csv, opts, stop) {
        Ok(c) => {
            for w in &c.read.warnings {
                warn!("{}: {w}", input.display());
            }
            info!(csv = %csv.display(), facets = c.read.facets, rows = c.csv.rows, "CSV written");
            match c.csv.digest {
                Some(digest) => ClientInput::CsvMade { size: digest.size, digest, rows: c.csv.rows },
                None => {
                    ClientInput::CsvFailed(Failure::Csv(CsvFailure::ClientCouldNot("no digest was computed".into())))
                }
            }
        }
        Err(e) if e.is_not_stl() => ClientInput::CsvNone("the file is not STL".into()),
        Err(ConvertError::Stopped) => ClientInput::CsvFailed(Failure::Interrupted),
        Err(ConvertError::Open { source, .. }) => {
            ClientInput::CsvFailed(Failure::Local(LocalFailure::Output { path: input.to_path_buf(), source }))
        }
        Err(ConvertError::Write { path, source }) => {
            ClientInput::CsvFailed(Failure::Local(LocalFailure::Output { path, source }))
        }
        Err(e @ ConvertError::Stl { .. }) => {
            warn!("CSV failed: {}", crate::error::chain(&e));
            ClientInput::CsvFailed(Failure::Csv(CsvFailure::Convert(e)))
        }
    }
}
