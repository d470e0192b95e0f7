//! Files that appear only when complete: bytes go to a hidden temporary file in the destination's
//! directory, and only a verified file is renamed into place. Dropping a [`StagedFile`] that was
//! not committed removes the temporary file, on errors and on interruption alike, unless it is a
//! resumable partial copy (`.NAME.resume-ID.partial`) marked to be kept for the next attempt.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A file being written to a temporary name beside its final destination.
pub struct StagedFile {
    file: File,
    /// The temporary name.
    path: PathBuf,
    dest: PathBuf,
    /// What happens to the temporary name when this is dropped.
    fate: Fate,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Removed: nothing unverified is left behind.
    Remove,
    /// Left for a resume.
    Keep,
    /// Renamed to the destination already.
    Gone,
}

/// What marks a resumable partial copy's name: `.NAME.resume-ID.partial`.
const PARTIAL_INFIX: &str = ".resume-";
const PARTIAL_SUFFIX: &str = ".partial";

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.fate == Fate::Remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl StagedFile {
    /// Creates `.NAME.XXXXXX.part` in the directory of `dest`. Renaming within one directory is
    /// atomic, which is why the temporary file is not put in /tmp.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = parent_dir(dest);
        // tempfile's default 0600 would make delivered files unreadable to colleagues; ask for
        // 0666 and let the umask decide, as for any file a program creates.
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!(".{}.", file_name(dest)))
            .suffix(".part")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(without_temp_path)?
            .keep()
            .map_err(|e| e.error)?;
        Ok(StagedFile { file, path, dest: dest.to_path_buf(), fate: Fate::Remove })
    }

    /// Opens, or creates, the resumable partial copy of `dest` for transfer `id` (hex digits
    /// only: the name is never taken from elsewhere), locked against every other process and
    /// session; `None` if another holds it. Like any staged file it is removed when dropped,
    /// unless [`StagedFile::keep_for_resume`] was called.
    pub fn partial(dest: &Path, id: &str) -> io::Result<Option<Self>> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a transfer id is hex digits"));
        }
        let path = parent_dir(dest).join(format!(".{}{PARTIAL_INFIX}{id}{PARTIAL_SUFFIX}", file_name(dest)));
        // A holder removes the name before it closes the file, so a file locked here may have
        // lost its name meanwhile: then it is opened again, under the name as it is now.
        for _ in 0..8 {
            let file = open_partial(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            if same_file(&file, &path) {
                return Ok(Some(StagedFile { file, path, dest: dest.to_path_buf(), fate: Fate::Remove }));
            }
        }
        Ok(None)
    }

    /// Leaves the file where it is when this is dropped uncommitted, if it holds at least
    /// `worth` bytes: a later attempt resumes it. Whether it is kept.
    pub fn keep_for_resume(&mut self, worth: u64) -> bool {
        let len = self.file.metadata().map_or(0, |m| m.len());
        if self.fate == Fate::Remove && len >= worth.max(1) {
            self.fate = Fate::Keep;
        }
        self.fate == Fate::Keep
    }

    /// Whether this is a resumable partial copy (not a one-off temporary file).
    pub fn is_partial(&self) -> bool {
        self.path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(PARTIAL_INFIX))
    }

    /// Keeps the first `len` bytes and writes on from there. A file that has landed under its
    /// destination's name too (see [`StagedFile::land_keeping_name`]) is never written again: its
    /// partial name gets a new file with those bytes, and the landed copy stays as it was.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        use std::io::Seek;
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata()?;
        if meta.len() == len {
            return self.file.seek(io::SeekFrom::Start(len)).map(drop);
        }
        if meta.nlink() > 1 {
            std::fs::remove_file(&self.path)?;
            let mut fresh = open_partial(&self.path)?;
            fresh.try_lock().map_err(|e| io::Error::other(e.to_string()))?;
            self.file.seek(io::SeekFrom::Start(0))?;
            io::copy(&mut io::Read::take(&mut self.file, len), &mut fresh)?;
            self.file = fresh;
        }
        self.file.set_len(len)?;
        self.file.seek(io::SeekFrom::Start(len)).map(drop)
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The open temporary file, for reading.
    pub fn file_ref(&self) -> &File {
        &self.file
    }

    /// The temporary file's path, for messages.
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// Where the file will land.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temporary file to its destination, replacing any file there, and returns the
    /// still-open file.
    pub fn commit(mut self) -> io::Result<File> {
        std::fs::rename(&self.path, &self.dest)?;
        self.fate = Fate::Gone;
        self.file.try_clone()
    }

    /// Gives the file its destination name (atomically replacing any file there) while it keeps
    /// its temporary name too, until it is dropped (the name goes) or kept for a resume: a
    /// verified copy lands at once, and a transfer cut off after that still resumes from the
    /// whole of it. Where the file system has no hard links, the file is renamed instead.
    pub fn land_keeping_name(&mut self) -> io::Result<()> {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        let link = parent_dir(&self.dest).join(format!(".{}.{}.link", file_name(&self.dest), crate::protocol::hex(&r)));
        match std::fs::hard_link(&self.path, &link) {
            // Renaming a name onto another name of the same file does nothing and leaves both
            // (a resumed copy that had landed before): the spare name goes either way.
            Ok(()) => {
                let r = std::fs::rename(&link, &self.dest);
                let _ = std::fs::remove_file(&link);
                r
            }
            Err(_) => {
                std::fs::rename(&self.path, &self.dest)?;
                self.fate = Fate::Gone;
                Ok(())
            }
        }
    }
}

/// Opens or creates a partial copy's file, never through a symbolic link (someone who can write
/// to the directory must not make us write elsewhere).
fn open_partial(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether `path` names the open `file` (and not another file, or nothing, by now).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// tempfile's errors name the temporary file (`... at path "/dir/.x.stl.AbC123.part"`), which
/// the user never asked for and which does not exist: the error itself, without it.
fn without_temp_path(e: io::Error) -> io::Error {
    // Its wrapper hides the OS error's code (its `source` is the OS error's, none), so the words
    // are all there is: tempfile writes them as "{error} at path {path:?}".
    let text = e.to_string();
    match text.rsplit_once(" at path \"") {
        Some((error, _)) => io::Error::new(e.kind(), error.to_owned()),
        None => e,
    }
}

/// The last component of `path`, or nothing.
pub fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The transfer ids of the resumable partial copies of `dest` in its directory, newest first.
pub fn partials(dest: &Path) -> Vec<String> {
    let prefix = format!(".{}{PARTIAL_INFIX}", file_name(dest));
    let Ok(entries) = std::fs::read_dir(parent_dir(dest)) else { return Vec::new() };
    let mut found: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let id = file.strip_prefix(&prefix)?.strip_suffix(PARTIAL_SUFFIX)?;
            let hex = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
            let when = e.metadata().ok()?.modified().ok()?;
            hex.then(|| (when, id.to_owned()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, id)| id).collect()
}

/// Removes all but the newest `keep` partial copies of `dest` that no one holds: a peer that
/// starts transfers and never finishes them cannot fill the disk with them.
pub fn prune_partials(dest: &Path, keep: usize) {
    for id in partials(dest).into_iter().skip(keep) {
        // Opening it locks it: a partial in use elsewhere is left alone; dropping removes it.
        let _ = StagedFile::partial(dest, &id);
    }
}

/// Checks, before any transfer, that a file could be saved at `dest`: it is not a directory, and
/// a temporary file can be created beside it (the directory exists and is writable). A failure
/// found only after the bytes arrived would waste the transfer.
pub fn check_destination(dest: &Path) -> io::Result<()> {
    if std::fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"));
    }
    StagedFile::create(dest).map(drop)
}

/// Where two files first differ within their first `len` bytes: the offset of the first differing
/// byte and how many differ from there on (within the 64 KiB block compared). `Ok(None)` if they
/// do not differ there, or if `give_up` came first: a copy torn far into a big file on a slow
/// disk must not keep a peer waiting for its verdict.
pub fn first_difference(a: &File, b: &File, len: u64, give_up: std::time::Instant) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 64 << 10;
    let (mut x, mut y) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut at = 0u64;
    while at < len && std::time::Instant::now() < give_up {
        let n = usize::try_from(len - at).unwrap_or(BLOCK).min(BLOCK);
        a.read_exact_at(&mut x[..n], at)?;
        b.read_exact_at(&mut y[..n], at)?;
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            let run = x[i..n].iter().zip(&y[i..n]).take_while(|(p, q)| p != q).count();
            return Ok(Some((at + i as u64, run as u64)));
        }
        at += n as u64;
    }
    Ok(None)
}

/// Reads from `offset` until `buf` is full or the file ends; how many bytes were read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// How reading a file's first bytes ([`read_prefix`]) ended.
#[derive(Debug)]
pub enum PrefixRead {
    /// Every byte asked for was read.
    Whole,
    /// The file ended first.
    Short,
    /// Reading failed.
    Failed(io::Error),
    /// `go_on` said stop.
    Stopped,
}

/// Reads `file`'s first `len` bytes in pieces of `buf`'s size, handing each piece to `take` in
/// order. Before each piece `go_on` may stop the reading (a stop signal), and does what long
/// local work owes the peer meanwhile (a KeepAlive).
pub fn read_prefix(
    file: &File,
    buf: &mut [u8],
    len: u64,
    mut go_on: impl FnMut() -> bool,
    mut take: impl FnMut(&[u8]),
) -> PrefixRead {
    let mut at = 0;
    while at < len {
        if !go_on() {
            return PrefixRead::Stopped;
        }
        let want = (len - at).min(buf.len() as u64) as usize;
        match read_full_at(file, &mut buf[..want], at) {
            Ok(0) => return PrefixRead::Short,
            Ok(n) => {
                take(&buf[..n]);
                at += n as u64;
            }
            Err(e) => return PrefixRead::Failed(e),
        }
    }
    PrefixRead::Whole
}

/// The directory a path lives in; `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Bytes free for an unprivileged writer in the file system holding `dir`.
pub fn available_space(dir: &Path) -> io::Result<u64> {
    fs4::available_space(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        {
            let mut f = StagedFile::create(&dest).unwrap();
            f.file().write_all(b"partial").unwrap();
            assert!(f.temp_path().exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn committed_file_lands_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        std::fs::write(&dest, b"old").unwrap();
        let mut f = StagedFile::create(&dest).unwrap();
        f.file().write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_partial_copy_is_locked_kept_only_when_asked_and_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        let mut p = StagedFile::partial(&dest, "ab12").unwrap().unwrap();
        assert!(p.is_partial());
        assert!(StagedFile::partial(&dest, "ab12").unwrap().is_none(), "a second holder is refused");
        assert!(StagedFile::partial(&dest, "../x").is_err(), "ids are hex digits, never paths");
        p.file().write_all(b"0123456789").unwrap();
        assert!(!p.keep_for_resume(11), "shorter than worth keeping");
        assert!(p.keep_for_resume(10));
        drop(p);
        assert_eq!(partials(&dest), ["ab12"]);
        let mut again = StagedFile::partial(&dest, "ab12").unwrap().unwrap();
        assert_eq!(again.file_ref().metadata().unwrap().len(), 10, "what was kept is there");
        again.truncate(4).unwrap();
        again.file().write_all(b"x").unwrap();
        drop(again);
        assert!(partials(&dest).is_empty(), "not kept this time: removed");
        for id in ["01", "02", "03"] {
            let mut p = StagedFile::partial(&dest, id).unwrap().unwrap();
            p.file().write_all(b"x").unwrap();
            p.keep_for_resume(1);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let held = StagedFile::partial(&dest, "01").unwrap().unwrap();
        prune_partials(&dest, 1);
        assert_eq!(partials(&dest), ["03", "01"], "the newest stays, and so does one in use");
        drop(held);
    }

    #[test]
    fn a_landed_copy_keeps_its_partial_name_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        let mut p = StagedFile::partial(&dest, "cd").unwrap().unwrap();
        p.file().write_all(b"whole").unwrap();
        p.land_keeping_name().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        // Landing again (a resumed copy that had landed before) leaves no spare name behind.
        p.land_keeping_name().unwrap();
        assert!(p.keep_for_resume(1));
        drop(p);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [".out.stl.resume-cd.partial", "out.stl"]);
        drop(StagedFile::partial(&dest, "cd").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "dropped unkept: only the landed copy");
    }

    #[test]
    fn a_landed_copy_is_never_written_again_by_a_resume() {
        // The return leg was cut after B's copy landed; the next attempt finds the file changed.
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        let mut p = StagedFile::partial(&dest, "ef").unwrap().unwrap();
        p.file().write_all(b"verified copy").unwrap();
        p.land_keeping_name().unwrap();
        p.keep_for_resume(1);
        drop(p);
        let mut again = StagedFile::partial(&dest, "ef").unwrap().unwrap();
        again.truncate(13).unwrap();
        assert_eq!(again.file_ref().metadata().unwrap().len(), 13, "offered whole, untouched");
        again.truncate(8).unwrap();
        again.file().write_all(b"NEW").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"verified copy", "the landed copy stays as it was");
        let mut held = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::open(again.temp_path()).unwrap(), &mut held).unwrap();
        assert_eq!(held, b"verifiedNEW", "the partial name has a file of its own");
        drop(again);
        assert_eq!(std::fs::read(&dest).unwrap(), b"verified copy");
    }

    #[test]
    fn a_partial_copy_is_never_opened_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.stl");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"precious").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(".out.stl.resume-ab.partial")).unwrap();
        assert!(StagedFile::partial(&dest, "ab").is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious");
    }

    #[test]
    fn bare_name_lives_in_cwd() {
        assert_eq!(parent_dir(Path::new("output.stl")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/b.stl")), Path::new("a"));
    }

    #[test]
    fn first_difference_finds_the_first_run_of_differing_bytes() {
        let original = vec![7u8; 200_000];
        let mut copy = original.clone();
        copy[150_000..150_003].copy_from_slice(b"abc");
        copy[190_000] = 0;
        let file = |bytes: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f
        };
        let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let (a, b) = (file(&original), file(&copy));
        assert_eq!(first_difference(&a, &b, 200_000, far).unwrap(), Some((150_000, 3)));
        assert_eq!(first_difference(&b, &file(&copy), 200_000, far).unwrap(), None, "identical");
        let past = std::time::Instant::now();
        assert_eq!(first_difference(&a, &b, 200_000, past).unwrap(), None, "gave up at once");
    }
}
