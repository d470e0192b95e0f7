//! Files that appear only when complete: bytes go to a hidden temporary file in the destination's
//! directory, and only a verified file is renamed into place. Dropping a [`StagedFile`] that was
//! not committed removes the temporary file, on errors and on interruption alike.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written to a temporary name beside its final destination.
pub struct StagedFile {
    tmp: NamedTempFile,
    dest: PathBuf,
}

impl StagedFile {
    /// Creates `.NAME.XXXXXX.part` in the directory of `dest`. Renaming within one directory is
    /// atomic, which is why the temporary file is not put in /tmp.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = parent_dir(dest);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // tempfile's default 0600 would make delivered files unreadable to colleagues; ask for
        // 0666 and let the umask decide, as for any file a program creates.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)?;
        Ok(StagedFile { tmp, dest: dest.to_path_buf() })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The open temporary file, for reading.
    pub fn file_ref(&self) -> &File {
        self.tmp.as_file()
    }

    /// The temporary file's path, for messages.
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Where the file will land.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temporary file to its destination, replacing any file there, and returns the
    /// still-open file.
    pub fn commit(self) -> io::Result<File> {
        let dest = self.dest;
        self.tmp.persist(&dest).map_err(|e| e.error)
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
