//! Parallel CSV formatting. Formatting numbers is the converter's hot path and each batch of
//! facets formats independently, so the reader (the calling thread) hands batches round-robin to
//! [`WORKERS`] formatter threads and writes their output back in submission order. At most one
//! batch per worker is in flight, so memory stays bounded whatever the file's size.
//!
//! The mesh's facts ([`super::mesh::Inspector`]), when asked for, are gathered on a thread of
//! their own from copies of the same batches, in file order: they cost more than the CSV itself,
//! and there they overlap with reading and formatting instead of adding to them.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::csv::{CsvSummary, CsvWriter};
use super::mesh::Inspector;
use super::{Facet, ReadSummary, StlError, Vertex};
use crate::integrity::Hasher;

/// Formatter threads.
pub const WORKERS: usize = 2;
/// Facets per batch: about 150 KiB in, 100–400 KiB of CSV out.
const BATCH: usize = 4096;

type Job = Vec<Facet>;
type Done = (Vec<Facet>, Vec<u8>);
/// Facets with their stored normals, for the inspector.
type Facts = Vec<(Vertex, Facet)>;

/// The inspector's thread, fed batches in file order; batches come back empty for reuse.
struct Inspecting<'scope> {
    tx: SyncSender<Facts>,
    spare: Receiver<Facts>,
    batch: Facts,
    handle: std::thread::ScopedJoinHandle<'scope, Inspector>,
}

impl<'scope> Inspecting<'scope> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        let (tx, rx) = sync_channel::<Facts>(2);
        // Giving a batch back never waits: a surplus one (there may be five about) is dropped.
        let (back, spare) = sync_channel::<Facts>(4);
        let handle = scope.spawn(move || {
            let mut ins = Inspector::new();
            for mut batch in rx {
                batch.iter().for_each(|(n, f)| ins.facet(n, f));
                batch.clear();
                let _ = back.try_send(batch);
            }
            ins
        });
        Inspecting { tx, spare, batch: Vec::with_capacity(BATCH), handle }
    }

    fn facet(&mut self, n: &Vertex, f: &Facet) -> io::Result<()> {
        self.batch.push((*n, *f));
        if self.batch.len() == BATCH {
            let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
            self.tx.send(std::mem::replace(&mut self.batch, next)).map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Hands over the last facets and waits for the facts.
    fn finish(self, solids: u64) -> io::Result<super::mesh::MeshFacts> {
        if !self.batch.is_empty() {
            self.tx.send(self.batch).map_err(|_| stopped())?;
        }
        drop(self.tx);
        Ok(self.handle.join().map_err(|_| stopped())?.finish(solids))
    }
}

struct Dispatcher<W> {
    workers: Vec<(SyncSender<Job>, Receiver<Done>)>,
    in_flight: VecDeque<usize>,
    next: usize,
    spare: Vec<Vec<Facet>>,
    out: W,
    hasher: Option<Hasher>,
    /// Set when writing the output failed, so the caller can tell that from a bad input.
    write_failed: bool,
}

fn stopped() -> io::Error {
    io::Error::other("a CSV formatter or mesh inspection thread stopped unexpectedly")
}

impl<W: Write> Dispatcher<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.out.write_all(bytes).inspect_err(|_| self.write_failed = true)
    }

    /// Writes the oldest batch's output.
    fn collect_one(&mut self) -> io::Result<()> {
        let Some(i) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (batch, bytes) = self.workers[i].1.recv().map_err(|_| stopped())?;
        self.write(&bytes)?;
        self.spare.push(batch);
        Ok(())
    }

    /// Hands `batch` to the next worker and returns an empty batch to fill.
    fn submit(&mut self, batch: Job) -> io::Result<Job> {
        if self.in_flight.len() == self.workers.len() {
            self.collect_one()?;
        }
        self.workers[self.next].0.send(batch).map_err(|_| stopped())?;
        self.in_flight.push_back(self.next);
        self.next = (self.next + 1) % self.workers.len();
        Ok(self.spare.pop().unwrap_or_else(|| Vec::with_capacity(BATCH)))
    }
}

/// Reads every facet of `r` and writes the plain CSV (every vertex, in file order) to `out`.
/// Returns the reader's summary and what was written; `Err((error, write_failed))` tells a failed
/// write apart from a bad input.
pub fn convert<R: Read + Seek, W: Write>(
    r: R,
    out: W,
    header: bool,
    digest: bool,
    mesh: bool,
) -> Result<(ReadSummary, CsvSummary), (StlError, bool)> {
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (job_tx, job_rx) = sync_channel::<Job>(1);
            let (done_tx, done_rx) = sync_channel::<Done>(1);
            scope.spawn(move || {
                let mut w = CsvWriter::new(Vec::new(), false, false);
                for mut batch in job_rx {
                    // Writing into a Vec cannot fail.
                    let formatted = batch.iter().flatten().try_for_each(|v| w.vertex(v)).and_then(|()| w.take_inner());
                    let Ok(bytes) = formatted else { return };
                    batch.clear();
                    if done_tx.send((batch, bytes)).is_err() {
                        return;
                    }
                }
            });
            workers.push((job_tx, done_rx));
        }
        let mut d = Dispatcher {
            workers,
            in_flight: VecDeque::new(),
            next: 0,
            spare: Vec::new(),
            out,
            hasher: digest.then(Hasher::new),
            write_failed: false,
        };
        let result = (|| {
            if header {
                d.write(b"x,y,z\n")?;
            }
            let mut batch = Vec::with_capacity(BATCH);
            let mut ins = mesh.then(|| Inspecting::start(scope));
            let mut summary = super::read_with_normals(r, |n, f| {
                if let Some(i) = ins.as_mut() {
                    i.facet(n, f)?;
                }
                batch.push(*f);
                if batch.len() == BATCH {
                    batch = d.submit(std::mem::take(&mut batch))?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                d.submit(batch)?;
            }
            while !d.in_flight.is_empty() {
                d.collect_one()?;
            }
            d.out.flush().inspect_err(|_| d.write_failed = true)?;
            if let Some(i) = ins {
                summary.mesh = Some(Box::new(i.finish(summary.solids)?));
            }
            Ok::<_, StlError>(summary)
        })();
        let rows = result.as_ref().map(|s| s.facets * 3).unwrap_or(0);
        let digest = d.hasher.as_ref().map(Hasher::finish);
        let write_failed = d.write_failed;
        // Dropping the dispatcher closes the job channels, so the workers end and the scope joins.
        drop(d);
        match result {
            Ok(s) => Ok((s, CsvSummary { rows, digest })),
            Err(e) => Err((e, write_failed)),
        }
    })
}
