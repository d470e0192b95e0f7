//! B's CSV conversion on its own thread. It starts as soon as the copy is staged and follows the
//! bytes as the driver writes them, so the CSV is ready about when the file is verified rather
//! than a conversion later (for `cad_mesh.stl` that was a third of the round trip). The CSV is
//! staged too and lands only once the driver knows the file is verified; the driver joins the
//! thread in every case.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::files::StagedFile;
use crate::session::{ClientInput, CsvFailure, Failure, LocalFailure};
use crate::stl::{self, ConvertError, CsvOptions};
use crate::transport::wake::WakeHandle;

/// What the converter hands back: the machine's input, and the staged CSV when there is one.
pub(super) type Outcome = (ClientInput<'static>, Option<StagedFile>);

/// How much of the staged copy the driver has written, shared with the converter.
#[derive(Default)]
struct Progress {
    /// Bytes written, and whether the copy was abandoned (the session failed or stopped).
    state: Mutex<(u64, bool)>,
    grown: Condvar,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, (u64, bool)> {
        // Every update is one assignment, so a poisoned lock still holds a consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut (u64, bool))) {
        f(&mut self.lock());
        self.grown.notify_all();
    }

    /// Waits until more than `pos` bytes are written; returns how many are.
    fn beyond(&self, pos: u64) -> io::Result<u64> {
        let mut state = self.lock();
        loop {
            match *state {
                (_, true) => return Err(io::Error::other("the copy was abandoned")),
                (written, false) if written > pos => return Ok(written),
                _ => state = self.grown.wait(state).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// Reads the staged copy as it grows: a read waits until the driver has written the bytes it
/// asks for. Its length is the Header's size, so the STL detector can look at it as at a file.
struct Follow {
    file: File,
    pos: u64,
    size: u64,
    progress: Arc<Progress>,
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let written = self.progress.beyond(self.pos)?;
        let n = usize::try_from(written - self.pos).unwrap_or(usize::MAX).min(buf.len());
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the staged copy is shorter than written"));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Follow {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// A conversion in progress.
pub(super) struct Job {
    handle: Option<JoinHandle<()>>,
    rx: Receiver<Outcome>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl Job {
    /// Starts converting the copy being written to `staged` (`size` bytes once complete) into a
    /// CSV staged beside `csv`.
    pub(super) fn start(staged: &StagedFile, size: u64, csv: &Path, wake: WakeHandle) -> io::Result<Job> {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        // A second descriptor of the same file: positioned reads do not move the writer's offset.
        let follow = Follow { file: staged.file_ref().try_clone()?, pos: 0, size, progress: Arc::clone(&progress) };
        let (input, csv, flag) = (staged.dest().to_path_buf(), csv.to_path_buf(), Arc::clone(&stop));
        let span = tracing::Span::current();
        let handle = std::thread::Builder::new().name("csv".into()).spawn(move || {
            stl::run_in_background();
            let result = span.in_scope(|| convert(follow, &input, &csv, &flag));
            let _ = tx.send(result);
            wake.wake();
        })?;
        Ok(Job { handle: Some(handle), rx, stop, progress })
    }

    /// The driver wrote `n` more bytes of the copy.
    pub(super) fn written(&self, n: u64) {
        self.progress.update(|(written, _)| *written += n);
    }

    /// The result, once there is one.
    pub(super) fn result(&self) -> Option<Outcome> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some((
                ClientInput::CsvFailed(Failure::Csv(CsvFailure::ClientCouldNot("the converter crashed".into()))),
                None,
            )),
        }
    }

    /// Asks the converter to give up soon: it looks every 64 KiB, and a read waiting for bytes
    /// that will not come is woken.
    pub(super) fn cancel(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.progress.update(|(_, abandoned)| *abandoned = true);
    }

    /// Cancels and joins.
    pub(super) fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.join();
    }
}

/// Converts the received file to CSV. Not STL is not a failure: there is just no CSV.
fn convert(follow: Follow, input: &Path, csv: &Path, stop: &AtomicBool) -> Outcome {
    // One pass: detection is the conversion's first step.
    let opts = CsvOptions { digest: true, mesh: true, ..CsvOptions::default() };
    let (mut c, staged) = match stl::convert_staged(follow, input, csv, opts, stop) {
        Ok(done) => done,
        Err(e) => return (failed(e, input), None),
    };
    for w in &c.read.warnings {
        warn!("{}: {w}", input.display());
    }
    info!(csv = %csv.display(), facets = c.read.facets, rows = c.csv.rows, "CSV converted");
    let input = match c.csv.digest {
        Some(digest) => ClientInput::CsvMade { size: digest.size, digest, rows: c.csv.rows, mesh: c.read.mesh.take() },
        None => ClientInput::CsvFailed(Failure::Csv(CsvFailure::ClientCouldNot("no digest was computed".into()))),
    };
    (input, Some(staged))
}

/// What a conversion that did not finish means for the session.
fn failed(e: ConvertError, input: &Path) -> ClientInput<'static> {
    match e {
        e if e.is_not_stl() => ClientInput::CsvNone("the file is not STL".into()),
        ConvertError::Stopped => ClientInput::CsvFailed(Failure::Interrupted),
        ConvertError::Open { source, .. } => {
            ClientInput::CsvFailed(Failure::Local(LocalFailure::Output { path: input.to_path_buf(), source }))
        }
        ConvertError::Write { path, source } => {
            ClientInput::CsvFailed(Failure::Local(LocalFailure::Output { path, source }))
        }
        e @ ConvertError::Stl { .. } => {
            warn!("CSV failed: {}", crate::error::chain(&e));
            ClientInput::CsvFailed(Failure::Csv(CsvFailure::Convert(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn follow(size: u64) -> (File, Follow, Arc<Progress>) {
        let file = tempfile::tempfile().unwrap();
        let progress = Arc::new(Progress::default());
        let f = Follow { file: file.try_clone().unwrap(), pos: 0, size, progress: Arc::clone(&progress) };
        (file, f, progress)
    }

    #[test]
    fn a_read_waits_for_the_bytes_the_driver_writes() {
        let (mut file, mut f, progress) = follow(6);
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 6, "the Header's size, before any byte is written");
        f.seek(SeekFrom::Start(0)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            f.read_to_end(&mut got).map(|_| got)
        });
        for piece in [&b"abc"[..], b"def"] {
            file.write_all(piece).unwrap();
            progress.update(|(written, _)| *written += piece.len() as u64);
        }
        assert_eq!(reader.join().unwrap().unwrap(), b"abcdef", "all of it, and the end at the size");
    }

    #[test]
    fn abandoning_the_copy_wakes_a_waiting_read_with_an_error() {
        let (mut file, mut f, progress) = follow(10);
        file.write_all(b"abc").unwrap();
        progress.update(|(written, _)| *written += 3);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            f.read_to_end(&mut got).map(|_| got)
        });
        progress.update(|(_, abandoned)| *abandoned = true);
        assert!(reader.join().unwrap().is_err(), "no end of file for a copy that will not be complete");
    }
}
