//! What A knows of the file it serves, computed once and reused while the file is unchanged:
//! its digest (learned while the first session sent it) and the digest of its vertex CSV (derived
//! on a helper thread the first time a session needs it, shared by every session that waits).
//! "Unchanged" means the same device, inode, size, mtime and ctime: a write to the file changes
//! its ctime, which no one can set back.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::integrity::FileDigest;
use crate::session::ExpectedCsv;
use crate::stl::{self, ConvertError, CsvOptions};
use crate::transport::wake::WakeHandle;

/// Identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub(crate) fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// What differs between two versions, for a message; `None` if nothing does.
    pub(crate) fn changes(&self, later: &FileId) -> Option<String> {
        let mut what = Vec::new();
        if (self.dev, self.ino) != (later.dev, later.ino) {
            what.push("it was replaced".to_owned());
        }
        if self.size != later.size {
            what.push(format!("size {} became {}", self.size, later.size));
        }
        if self.mtime != later.mtime {
            what.push("its modification time changed".to_owned());
        }
        if self.ctime != later.ctime && self.mtime == later.mtime {
            what.push("its status-change time changed".to_owned());
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

enum CsvState {
    Running(Vec<WakeHandle>),
    Done(ExpectedCsv),
}

/// Versions of the file whose expected CSV is kept: a session of an older version still gets
/// its own result while a newer one is derived.
const CSV_VERSIONS: usize = 4;

#[derive(Default)]
struct Slots {
    digest: Option<(FileId, FileDigest)>,
    /// Per version of the file, newest last.
    csv: Vec<(FileId, CsvState)>,
}

impl Slots {
    /// Stores a derivation's result and wakes the sessions waiting for it.
    fn finish(&mut self, id: FileId, e: ExpectedCsv) {
        if let Some((_, state)) = self.csv.iter_mut().find(|(i, _)| *i == id)
            && let CsvState::Running(waiters) = std::mem::replace(state, CsvState::Done(e))
        {
            waiters.iter().for_each(WakeHandle::wake);
        }
    }
}

/// Finishes a derivation even if it panics, so no session waits for it forever.
struct Delivery {
    cache: Arc<SourceCache>,
    id: FileId,
    result: Option<ExpectedCsv>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let e =
            self.result.take().unwrap_or_else(|| ExpectedCsv::Unknown("the server's own conversion crashed".into()));
        self.cache.slots().finish(self.id, e);
    }
}

/// The served file's digests, shared by all sessions.
#[derive(Default)]
pub(crate) struct SourceCache {
    slots: Mutex<Slots>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl SourceCache {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Every update is a single assignment, so a panic elsewhere leaves the slots consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The digest of this version of the file, if a session computed it.
    pub(crate) fn digest(&self, id: &FileId) -> Option<FileDigest> {
        self.slots().digest.as_ref().filter(|(i, _)| i == id).map(|(_, d)| d.clone())
    }

    pub(crate) fn store_digest(&self, id: FileId, d: FileDigest) {
        self.slots().digest = Some((id, d));
    }

    /// Starts deriving the expected CSV of the file as it is now, before any client asks: the
    /// server has the file from the start, and a client then waits for nothing of it.
    pub(crate) fn warm(self: &Arc<Self>, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path) {
            let _ = self.expected_csv(FileId::of(&meta), path, None);
        }
    }

    /// The expected CSV of this version of the file: `Some` if known; otherwise `wake` is woken
    /// when it is (the derivation starts if no session started it yet).
    pub(crate) fn expected_csv(
        self: &Arc<Self>,
        id: FileId,
        path: &Path,
        wake: Option<WakeHandle>,
    ) -> Option<ExpectedCsv> {
        let mut slots = self.slots();
        match slots.csv.iter_mut().find(|(i, _)| *i == id) {
            Some((_, CsvState::Done(e))) => return Some(e.clone()),
            Some((_, CsvState::Running(waiters))) => {
                waiters.extend(wake);
                return None;
            }
            None => {
                // Results of old versions that nobody waits for make room; a running derivation
                // keeps its place, so its waiters are woken whatever comes after.
                while slots.csv.len() >= CSV_VERSIONS {
                    match slots.csv.iter().position(|(_, s)| matches!(s, CsvState::Done(_))) {
                        Some(i) => drop(slots.csv.remove(i)),
                        None => break,
                    }
                }
                slots.csv.push((id, CsvState::Running(wake.into_iter().collect())));
            }
        }
        drop(slots);
        let (cache, path, span) = (Arc::clone(self), path.to_path_buf(), tracing::Span::current());
        let spawned = std::thread::Builder::new().name("csv-check".into()).spawn(move || {
            let mut delivery = Delivery { cache, id, result: None };
            stl::run_in_background();
            delivery.result = Some(span.in_scope(|| derive(&path, id, &delivery.cache.stop)));
        });
        match spawned {
            Ok(h) => {
                let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
                threads.retain(|t| !t.is_finished());
                threads.push(h);
                None
            }
            Err(e) => {
                let e = ExpectedCsv::Unknown(format!("cannot start the server's own conversion: {e}"));
                self.slots().finish(id, e.clone());
                Some(e)
            }
        }
    }

    /// Stops the derivations and joins them: no helper outlives the server.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Derives the CSV's digest from the original, checking that it read the version asked about.
fn derive(path: &PathBuf, id: FileId, stop: &AtomicBool) -> ExpectedCsv {
    let opts = CsvOptions { digest: true, mesh: true, ..CsvOptions::default() };
    let result = stl::convert_to_stoppable(path, std::io::sink(), Path::new("(digest only)"), opts, stop);
    let now = std::fs::metadata(path).map(|m| FileId::of(&m));
    if now.as_ref().ok() != Some(&id) {
        return ExpectedCsv::Unknown("the served file changed while the server derived its CSV".into());
    }
    match result {
        Ok((read, csv)) => {
            let rows = csv.rows;
            csv.digest.map_or_else(
                || ExpectedCsv::Unknown("no digest".into()),
                |digest| ExpectedCsv::Digest { digest, rows, mesh: read.mesh },
            )
        }
        Err(e) if e.is_not_stl() => ExpectedCsv::NotStl,
        Err(e @ (ConvertError::Open { .. } | ConvertError::Stopped | ConvertError::Write { .. })) => {
            ExpectedCsv::Unknown(crate::session::chain(&e))
        }
        Err(e @ ConvertError::Stl { source: crate::stl::StlError::Io(_), .. }) => {
            tracing::warn!("cannot read the served file to derive its CSV: {}", crate::session::chain(&e));
            ExpectedCsv::Unknown(crate::session::chain(&e))
        }
        Err(e) => {
            // Said once per version of the file, before any client's CSV fails for it.
            tracing::warn!(
                "the served file is not valid STL, so clients' CSVs of it will fail: {}",
                crate::session::chain(&e)
            );
            ExpectedCsv::Unknown(format!("the original is not valid STL: {}", crate::session::chain(&e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wake::Waker;

    #[test]
    fn a_write_to_the_file_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let a = FileId::of(&std::fs::metadata(&p).unwrap());
        assert_eq!(a.changes(&a), None);
        std::fs::write(&p, b"two").unwrap();
        let b = FileId::of(&std::fs::metadata(&p).unwrap());
        // Same size, maybe the same mtime at coarse resolution: ctime still moves.
        assert!(a != b || a.changes(&b).is_some(), "{a:?} {b:?}");
        std::fs::write(&p, b"three").unwrap();
        let c = FileId::of(&std::fs::metadata(&p).unwrap());
        assert!(b.changes(&c).unwrap().contains("size 3 became 5"));
    }

    #[test]
    fn many_sessions_share_one_derivation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.stl");
        std::fs::write(&p, b"solid x\nendsolid x\n").unwrap();
        let id = FileId::of(&std::fs::metadata(&p).unwrap());
        let cache = Arc::new(SourceCache::default());
        let wakers: Vec<Waker> = (0..3).map(|_| Waker::new().unwrap()).collect();
        let firsts: Vec<_> = wakers.iter().map(|w| cache.expected_csv(id, &p, Some(w.handle()))).collect();
        cache.shutdown_join_only();
        let got: Vec<_> = wakers.iter().map(|w| cache.expected_csv(id, &p, Some(w.handle()))).collect();
        for (first, got) in firsts.iter().zip(&got) {
            assert!(first.is_none() || first == got);
            assert!(matches!(got, Some(ExpectedCsv::Digest { digest, .. }) if digest.size == 0), "{got:?}");
        }
        assert!(cache.threads.lock().unwrap().is_empty(), "one thread, joined");
    }

    #[test]
    fn a_new_version_does_not_strand_the_sessions_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.stl");
        std::fs::write(&p, b"solid x\nendsolid x\n").unwrap();
        let old = FileId::of(&std::fs::metadata(&p).unwrap());
        let cache = Arc::new(SourceCache::default());
        let (w_old, w_new) = (Waker::new().unwrap(), Waker::new().unwrap());
        let _ = cache.expected_csv(old, &p, Some(w_old.handle()));
        std::fs::write(&p, b"solid y\nendsolid y\n\n").unwrap();
        let new = FileId::of(&std::fs::metadata(&p).unwrap());
        assert_ne!(old, new);
        let _ = cache.expected_csv(new, &p, Some(w_new.handle()));
        cache.join_all();
        // The old version's derivation read a file that changed under it: its waiter still gets
        // an answer (that the CSV cannot be checked), not silence.
        let got_old = cache.expected_csv(old, &p, None);
        assert!(matches!(got_old, Some(ExpectedCsv::Unknown(_))), "{got_old:?}");
        assert!(matches!(cache.expected_csv(new, &p, None), Some(ExpectedCsv::Digest { .. })));
        assert!(w_old.is_woken() && w_new.is_woken(), "every waiter was woken");
    }

    impl SourceCache {
        fn join_all(&self) {
            for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
                t.join().unwrap();
            }
        }

        fn shutdown_join_only(&self) {
            let threads = std::mem::take(&mut *self.threads.lock().unwrap());
            assert_eq!(threads.len(), 1, "one derivation for three sessions");
            for t in threads {
                t.join().unwrap();
            }
        }
    }
}
