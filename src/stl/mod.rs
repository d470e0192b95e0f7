//! STL meshes: a streaming reader for binary and ASCII STL that yields facets in file order, the
//! exact `%.4f` vertex CSV writer, and the built-in sample mesh.
//!
//! Detection (see `../shared/stl-corpus/README.md` for the files that make it hard):
//! 1. A file whose size is exactly `84 + 50·n` (`n` from bytes 80–83), allowing fewer than 50
//!    trailing bytes of CR/LF/space/NUL, is binary, even when its header begins with `solid`.
//! 2. Otherwise a file that begins, after an optional UTF-8 BOM and whitespace, with `solid` in
//!    any letter case is ASCII.
//! 3. Anything else is an error; a binary-sized file whose count disagrees with its size is an
//!    error giving both numbers. Nothing is guessed.

pub mod ascii;
pub mod binary;
pub mod csv;
pub mod mesh;
mod pipeline;
pub mod sample;

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::files::StagedFile;

/// One corner of a triangle.
pub type Vertex = [f32; 3];
/// A triangle's three corners, in file order.
pub type Facet = [Vertex; 3];

/// Why a byte stream could not be read as STL. Every variant says where.
#[derive(Debug, thiserror::Error)]
pub enum StlError {
    /// Reading the input failed.
    #[error("read error")]
    Io(#[from] io::Error),
    /// The file is neither binary (by size) nor ASCII (by its first word).
    #[error("not an STL file: {0}")]
    NotStl(String),
    /// A binary file whose facet count disagrees with its size.
    #[error(
        "binary STL header says {count} facets, which needs {expected} bytes, but the file has {actual} bytes \
         (and it does not begin with `solid`, so it is not ASCII either)"
    )]
    BinarySize {
        /// The count in bytes 80–83.
        count: u32,
        /// 84 + 50 × count.
        expected: u64,
        /// The file's real size.
        actual: u64,
    },
    /// An ASCII file that breaks the grammar.
    #[error("line {line}: {msg}")]
    Syntax {
        /// 1-based line number (LF, CRLF and lone CR each end a line).
        line: u64,
        /// What was wrong.
        msg: String,
    },
    /// A vertex with a NaN or infinite coordinate.
    #[error("facet {facet}{}: vertex {vertex} has a non-finite coordinate ({value})", .line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    NonFinite {
        /// 1-based facet number in the file.
        facet: u64,
        /// 1-based vertex number within the facet.
        vertex: u8,
        /// The offending value.
        value: f32,
        /// Line of the vertex, for ASCII files.
        line: Option<u64>,
    },
}

impl StlError {
    /// Whether this says the input is not STL at all (by the detection rules), as opposed to an
    /// STL that is broken or unreadable.
    pub fn is_not_stl(&self) -> bool {
        matches!(self, StlError::NotStl(_) | StlError::BinarySize { .. })
    }
}

impl ConvertError {
    /// Whether the conversion failed because the input is not STL at all.
    pub fn is_not_stl(&self) -> bool {
        matches!(self, ConvertError::Stl { source, .. } if source.is_not_stl())
    }
}

/// Which kind of STL a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Binary with this many facets.
    Binary {
        /// Facet count from the header.
        facets: u32,
    },
    /// ASCII.
    Ascii,
}

/// What a read found besides the facets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSummary {
    /// Facets read.
    pub facets: u64,
    /// Solids read (ASCII; 1 for binary).
    pub solids: u64,
    /// Tolerated oddities, e.g. a missing final `endsolid`.
    pub warnings: Vec<String>,
    /// The mesh's facts, when a conversion was asked for them ([`CsvOptions::mesh`]).
    pub mesh: Option<Box<mesh::MeshFacts>>,
}

const PADDING: &[u8] = b"\r\n \0";

/// Decides the format of the stream, which must be positioned at its start; leaves it there.
pub fn detect<R: Read + Seek>(r: &mut R) -> Result<Format, StlError> {
    let size = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(84);
    r.by_ref().take(84).read_to_end(&mut head)?;
    let mut binary_count = None;
    if let Some(count) = head.get(80..84) {
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
        let expected = 84 + 50 * u64::from(count);
        let fits = size == expected
            || (size > expected && size - expected < 50 && {
                let mut tail = Vec::with_capacity(50);
                r.seek(SeekFrom::Start(expected))?;
                r.by_ref().take(50).read_to_end(&mut tail)?;
                tail.iter().all(|b| PADDING.contains(b))
            });
        if fits {
            r.seek(SeekFrom::Start(0))?;
            return Ok(Format::Binary { facets: count });
        }
        binary_count = Some((count, expected));
    }
    r.seek(SeekFrom::Start(0))?;
    let ascii = ascii::begins_with_solid(&mut *r)?;
    r.seek(SeekFrom::Start(0))?;
    if ascii {
        return Ok(Format::Ascii);
    }
    Err(match binary_count {
        Some((count, expected)) => StlError::BinarySize { count, expected, actual: size },
        None => StlError::NotStl(format!(
            "{size} bytes is too short for binary STL (84 bytes at least) and it does not begin with `solid`"
        )),
    })
}

/// Reads every facet in file order, calling `each` for each one. Memory use does not depend on
/// the file's size.
pub fn read<R: Read + Seek>(r: R, mut each: impl FnMut(&Facet) -> io::Result<()>) -> Result<ReadSummary, StlError> {
    read_with_normals(r, |_, f| each(f))
}

/// [`read`], with each facet's stored normal (as written: it may be zero, or disagree with the
/// facet's winding).
pub fn read_with_normals<R: Read + Seek>(
    mut r: R,
    mut each: impl FnMut(&Vertex, &Facet) -> io::Result<()>,
) -> Result<ReadSummary, StlError> {
    match detect(&mut r)? {
        Format::Binary { facets } => binary::read(r, facets, &mut each),
        Format::Ascii => ascii::read(r, &mut each),
    }
}

/// Options for [`convert`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvOptions {
    /// Each distinct vertex once, in order of first appearance.
    pub unique: bool,
    /// An `x,y,z` first line.
    pub header: bool,
    /// Compute the CSV's digest while writing it (to send it on without reading it again).
    pub digest: bool,
    /// Compute the mesh's facts in the same pass (`ReadSummary::mesh`).
    pub mesh: bool,
}

/// What [`convert`] did.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The reader's findings.
    pub read: ReadSummary,
    /// The writer's output.
    pub csv: csv::CsvSummary,
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The input.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The input is not valid STL.
    #[error("{path}")]
    Stl {
        /// The input.
        path: std::path::PathBuf,
        /// What and where.
        #[source]
        source: StlError,
    },
    /// A stop was asked for (the caller's flag).
    #[error("conversion stopped")]
    Stopped,
    /// The CSV could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The output.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Lowers the calling thread's scheduling priority (and that of the formatter threads it starts,
/// which inherit it): a conversion that runs beside a transfer yields the CPU to the transfer's
/// threads instead of starving them. Best effort: where it is not possible, nothing changes.
pub fn run_in_background() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on Linux a nice value
    // set for a thread id applies to that thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Converts the STL at `input` to a CSV at `output`, through a temporary file renamed only on
/// success, so a failed conversion leaves no output behind.
pub fn convert(input: &Path, output: &Path, opts: CsvOptions) -> Result<Converted, ConvertError> {
    convert_stoppable(input, output, opts, &AtomicBool::new(false))
}

/// [`convert`] that gives up with [`ConvertError::Stopped`] soon after `stop` is set (it is
/// looked at every 64 KiB of input), leaving no output behind.
pub fn convert_stoppable(
    input: &Path,
    output: &Path,
    opts: CsvOptions,
    stop: &AtomicBool,
) -> Result<Converted, ConvertError> {
    let (converted, staged) = convert_staged(open_input(input)?, input, output, opts, stop)?;
    staged.commit().map_err(|source| ConvertError::Write { path: output.to_path_buf(), source })?;
    Ok(converted)
}

/// Converts the STL read from `r` (named `input` in messages, read from its start) to a CSV
/// staged beside `output` and returns it uncommitted: the caller decides whether it lands (B
/// converts while the file still arrives and keeps the CSV only if the file is verified).
pub fn convert_staged<R: Read + Seek>(
    mut r: R,
    input: &Path,
    output: &Path,
    opts: CsvOptions,
    stop: &AtomicBool,
) -> Result<(Converted, StagedFile), ConvertError> {
    // Classify the input before any output exists: "not STL" must not depend on whether the
    // output's directory is writable.
    detect(&mut r).map_err(|source| ConvertError::Stl { path: input.to_path_buf(), source })?;
    let write_err = |source| ConvertError::Write { path: output.to_path_buf(), source };
    let mut staged = StagedFile::create(output).map_err(write_err)?;
    let (read, csv) = {
        let out = BufWriter::with_capacity(1 << 16, staged.file());
        convert_open(r, input, out, output, opts, stop)?
    };
    Ok((Converted { read, csv }, staged))
}

/// Converts the STL at `input`, writing CSV to `out` (called `out_name` in messages).
pub fn convert_to<W: io::Write>(
    input: &Path,
    out: W,
    out_name: &Path,
    opts: CsvOptions,
) -> Result<(ReadSummary, csv::CsvSummary), ConvertError> {
    convert_to_stoppable(input, out, out_name, opts, &AtomicBool::new(false))
}

/// [`convert_to`] that gives up with [`ConvertError::Stopped`] soon after `stop` is set.
pub fn convert_to_stoppable<W: io::Write>(
    input: &Path,
    out: W,
    out_name: &Path,
    opts: CsvOptions,
    stop: &AtomicBool,
) -> Result<(ReadSummary, csv::CsvSummary), ConvertError> {
    convert_open(open_input(input)?, input, out, out_name, opts, stop)
}

fn open_input(input: &Path) -> Result<File, ConvertError> {
    let open_err = |source| ConvertError::Open { path: input.to_path_buf(), source };
    let file = File::open(input).map_err(open_err)?;
    if file.metadata().map_err(open_err)?.is_dir() {
        return Err(open_err(io::Error::new(io::ErrorKind::InvalidInput, "it is a directory, not a file")));
    }
    Ok(file)
}

/// A reader that fails once `stop` is set. Not with `ErrorKind::Interrupted`: std's helpers
/// retry that kind forever.
struct StopReader<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for StopReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("conversion stopped"));
        }
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for StopReader<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Converts the already opened `file` (named `input` in messages; read from its start).
fn convert_open<R: Read + Seek, W: io::Write>(
    file: R,
    input: &Path,
    out: W,
    out_name: &Path,
    opts: CsvOptions,
    stop: &AtomicBool,
) -> Result<(ReadSummary, csv::CsvSummary), ConvertError> {
    let reader = io::BufReader::with_capacity(1 << 16, StopReader { inner: file, stop });
    let result = if opts.unique {
        // Deduplication depends on order, so it stays on one thread.
        sequential(reader, out, opts)
    } else {
        pipeline::convert(reader, out, opts.header, opts.digest, opts.mesh)
    };
    result.map_err(|(e, write_failed)| match e {
        _ if stop.load(Ordering::Relaxed) => ConvertError::Stopped,
        // An I/O error while writing is the output's fault, not the input's.
        StlError::Io(source) if write_failed => ConvertError::Write { path: out_name.to_path_buf(), source },
        source => ConvertError::Stl { path: input.to_path_buf(), source },
    })
}

fn sequential<R: Read + Seek, W: io::Write>(
    r: R,
    out: W,
    opts: CsvOptions,
) -> Result<(ReadSummary, csv::CsvSummary), (StlError, bool)> {
    let mut writer = csv::CsvWriter::new(out, opts.unique, opts.header);
    if opts.digest {
        writer = writer.with_digest();
    }
    let mut write_failed = false;
    let mut ins = opts.mesh.then(mesh::Inspector::new);
    let mut summary = read_with_normals(r, |n, facet| {
        if let Some(i) = ins.as_mut() {
            i.facet(n, facet);
        }
        facet.iter().try_for_each(|v| writer.vertex(v)).inspect_err(|_| write_failed = true)
    })
    .map_err(|e| (e, write_failed))?;
    summary.mesh = ins.map(|i| Box::new(i.finish(summary.solids)));
    let (_, csv) = writer.finish().map_err(|e| (StlError::Io(e), true))?;
    Ok((summary, csv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn binary(count_field: u32, facets: usize, header: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 80];
        v[..header.len()].copy_from_slice(header);
        v.extend_from_slice(&count_field.to_le_bytes());
        v.resize(84 + 50 * facets, 0);
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn binary_with_solid_header_is_binary() {
        let f = binary(1, 1, b"solid trap", b"");
        assert_eq!(detect(&mut Cursor::new(f)).unwrap(), Format::Binary { facets: 1 });
    }

    #[test]
    fn trailing_padding_is_allowed_but_not_other_bytes() {
        let f = binary(2, 2, b"", b"\r\n \0\n");
        assert_eq!(detect(&mut Cursor::new(f)).unwrap(), Format::Binary { facets: 2 });
        let f = binary(2, 2, b"", b"junk");
        let e = detect(&mut Cursor::new(f)).unwrap_err();
        assert!(e.to_string().contains("says 2 facets, which needs 184 bytes, but the file has 188"), "{e}");
    }

    #[test]
    fn count_and_size_disagreeing_is_an_error_with_both_numbers() {
        let f = binary(5, 2, b"", b"");
        let e = detect(&mut Cursor::new(f)).unwrap_err();
        assert!(matches!(e, StlError::BinarySize { count: 5, expected: 334, actual: 184 }), "{e}");
    }

    #[test]
    fn ascii_detection_allows_bom_whitespace_and_case() {
        for text in ["solid x\n", "\u{feff}  \r\n\tSoLiD\n", "SOLID"] {
            assert_eq!(detect(&mut Cursor::new(text.as_bytes())).unwrap(), Format::Ascii, "{text:?}");
        }
        assert!(matches!(detect(&mut Cursor::new(b"hello".as_slice())), Err(StlError::NotStl(_))));
        assert!(matches!(detect(&mut Cursor::new(b"".as_slice())), Err(StlError::NotStl(_))));
    }
}
