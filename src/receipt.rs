//! `--json`: one JSON object per round trip on stdout, for scripts. The schema is documented in
//! `docs/JSON.md`; [`VERSION`] changes when a field changes meaning or goes away (new fields may
//! be added within a version, so readers should ignore fields they do not know).
//!
//! The receipts are built from the same values the text verdict lines show, plus which legs the
//! reporter saw verified before the end, so a failed round trip still says which leg made it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, chain};
use crate::integrity::Digest;
use crate::report::{ClientReport, Progress, ServerSessionReport};
use crate::session::{CsvResult, CsvReturned, Failure, Leg, LegDone, Resumed};

/// The `schema` field of every object this module prints.
pub const SCHEMA: &str = "machinaftp.receipt";
/// The `version` field: the schema's version.
pub const VERSION: u32 = 1;

/// What the reporter saw of a round trip before it ended: which legs were verified, and what a
/// failed round trip's receipt can still tell of the file and how far each leg got.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The data leg, once verified (`Done! - TX` on A, `Done! - RX` on B).
    pub data: Option<LegDone>,
    /// The return leg, once verified.
    pub ret: Option<LegDone>,
    /// The name the server offered the file under (B; A knows its own file).
    pub name: Option<String>,
    /// The file's size, once offered (B).
    pub size: Option<u64>,
    /// Where an interrupted transfer went on from, once A said so (B).
    pub resumed: Option<Resumed>,
    /// The last progress: the file's size and how far each leg got.
    pub progress: Option<Progress>,
}

impl Seen {
    /// The file's digest, once a leg verified it.
    fn digest(&self) -> Option<Digest> {
        self.data.or(self.ret).map(|l| l.digest)
    }
}

/// A server's `ready` line as JSON: where it listens.
#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    schema: &'static str,
    version: u32,
    event: &'static str,
    /// The data channel's bound `HOST:PORT`.
    tcp: &'a str,
    /// The return channel: the bound `HOST:PORT`, or `connect:HOST:PORT` under `--remotehost`.
    zmq: &'a str,
}

impl<'a> Ready<'a> {
    /// The object for these addresses.
    pub fn new(tcp: &'a str, zmq: &'a str) -> Self {
        Ready { schema: SCHEMA, version: VERSION, event: "ready", tcp, zmq }
    }
}

/// One round trip, as either side saw it.
#[derive(Debug, Serialize)]
pub struct Receipt {
    schema: &'static str,
    version: u32,
    event: &'static str,
    role: &'static str,
    ok: bool,
    exit_status: i32,
    peer: String,
    file: FileFacts,
    saved: Saved,
    data_leg: LegFacts,
    return_leg: LegFacts,
    csv: CsvFacts,
    /// The mesh's facts (`inspect --json`'s fields), when its CSV came back verified.
    mesh: Option<crate::stl::mesh::MeshFacts>,
    error: Option<ErrorFacts>,
}

#[derive(Debug, Default, Serialize)]
struct FileFacts {
    name: Option<String>,
    size: Option<u64>,
    crc32: Option<u32>,
    blake3: Option<String>,
}

impl FileFacts {
    fn of(name: &str, d: &Digest) -> Self {
        FileFacts {
            name: Some(name.to_owned()),
            size: Some(d.size),
            crc32: Some(d.crc32),
            blake3: Some(d.blake3_hex()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Saved {
    file: Option<String>,
    csv: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Verified,
    Failed,
    NotFinished,
    NotMade,
    /// `--protocol python`: the return leg went, and the Python server says nothing back.
    SentUnconfirmed,
    /// `--protocol python`: the CSV was made but stays with B.
    WrittenLocally,
}

#[derive(Debug, Serialize)]
struct LegFacts {
    verdict: Verdict,
    reason: Option<String>,
    bytes: Option<u64>,
    seconds: Option<f64>,
    bytes_per_second: Option<f64>,
    resumed_from: Option<u64>,
    /// How far into the file the leg got, bytes held from an earlier attempt included: the size
    /// once verified, and what a failed round trip had reached.
    reached: Option<u64>,
}

impl LegFacts {
    /// A verified leg that moved the file's bytes from `from` on in `took`.
    fn verified(size: u64, from: u64, took: Duration) -> Self {
        let bytes = size.saturating_sub(from);
        let secs = took.as_secs_f64();
        LegFacts {
            verdict: Verdict::Verified,
            reason: None,
            bytes: Some(bytes),
            seconds: Some(secs),
            bytes_per_second: (secs > 0.0).then(|| bytes as f64 / secs),
            resumed_from: Some(from),
            reached: Some(size),
        }
    }

    /// A leg of a failed round trip: verified if it was seen so (with all its facts), failed if
    /// the failure is a mismatch on it, otherwise not finished because of the failure.
    fn of_failure(leg: Leg, seen: &Seen, failure: Option<&Failure>, msg: &str) -> Self {
        let done = match leg {
            Leg::Data => seen.data,
            Leg::Return => seen.ret,
        };
        if let Some(d) = done {
            return LegFacts::verified(d.digest.size, d.from, d.took);
        }
        let mismatch = matches!(failure,
            Some(Failure::Mismatch { leg: l, .. } | Failure::SizeMismatch { leg: l, .. } | Failure::PeerMismatch { leg: l, .. })
                if *l == leg);
        let (reached, resumed_from) = match (leg, seen.progress, seen.resumed) {
            (Leg::Data, p, r) => (p.map(|p| p.data), r.map(|r| r.from)),
            (Leg::Return, p, r) => (p.map(|p| p.ret), r.map(|r| r.ret_from)),
        };
        let verdict = if mismatch { Verdict::Failed } else { Verdict::NotFinished };
        let reason = Some(msg.to_owned());
        LegFacts { verdict, reason, bytes: None, seconds: None, bytes_per_second: None, resumed_from, reached }
    }
}

#[derive(Debug, Serialize)]
struct CsvFacts {
    verdict: Verdict,
    reason: Option<String>,
    size: Option<u64>,
    rows: Option<u64>,
    crc32: Option<u32>,
    blake3: Option<String>,
}

impl CsvFacts {
    fn of(verdict: Verdict, reason: Option<String>, d: &Digest, rows: u64) -> Self {
        CsvFacts {
            verdict,
            reason,
            size: Some(d.size),
            rows: Some(rows),
            crc32: Some(d.crc32),
            blake3: Some(d.blake3_hex()),
        }
    }

    fn without(verdict: Verdict, reason: String) -> Self {
        CsvFacts { verdict, reason: Some(reason), size: None, rows: None, crc32: None, blake3: None }
    }
}

#[derive(Debug, Serialize)]
struct ErrorFacts {
    message: String,
    hint: Option<&'static str>,
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn failure_of(e: &Error) -> Option<&Failure> {
    match e {
        Error::Session { failure, .. } => Some(failure),
        _ => None,
    }
}

/// A round trip that failed, on either side, from the error and what was seen before it.
fn failed(role: &'static str, peer: String, saved: Saved, e: &Error, seen: Seen) -> Receipt {
    let msg = chain(e);
    let failure = failure_of(e);
    let csv = match failure {
        Some(Failure::Csv(f)) => CsvFacts::without(Verdict::Failed, chain(f)),
        _ => CsvFacts::without(Verdict::NotFinished, "the round trip did not get that far".into()),
    };
    // A failed CSV stage follows a file that made its round trip.
    // What is known of the file: its name and size once offered, its digests once a leg
    // verified it. (A failed CSV stage comes after both legs were seen verified.)
    let digest = seen.digest();
    let file = FileFacts {
        name: seen.name.clone(),
        size: digest.map(|d| d.size).or(seen.size).or(seen.progress.map(|p| p.size)),
        crc32: digest.map(|d| d.crc32),
        blake3: digest.map(|d| d.blake3_hex()),
    };
    Receipt {
        schema: SCHEMA,
        version: VERSION,
        event: "round_trip",
        role,
        ok: false,
        exit_status: e.exit_code(),
        peer,
        file,
        saved,
        data_leg: LegFacts::of_failure(Leg::Data, &seen, failure, &msg),
        return_leg: LegFacts::of_failure(Leg::Return, &seen, failure, &msg),
        csv,
        mesh: None,
        error: Some(ErrorFacts { message: msg, hint: e.hint() }),
    }
}

fn legs(d: &Digest, data: Duration, ret: Duration, resumed: Resumed) -> (LegFacts, LegFacts) {
    (LegFacts::verified(d.size, resumed.from, data), LegFacts::verified(d.size, resumed.ret_from, ret))
}

/// B's receipt for a verified round trip.
pub fn client_ok(r: &ClientReport) -> Receipt {
    let o = &r.outcome;
    let (data_leg, return_leg) = legs(&o.digest, o.data_time, o.return_time, o.resumed);
    let csv = match &o.csv {
        CsvReturned::Returned { digest, rows } => CsvFacts::of(Verdict::Verified, None, digest, *rows),
        CsvReturned::NotMade(why) => CsvFacts::without(Verdict::NotMade, why.clone()),
        CsvReturned::Local { digest, rows } => CsvFacts::of(
            Verdict::WrittenLocally,
            Some("the Python version's protocol does not carry the CSV back".into()),
            digest,
            *rows,
        ),
    };
    let mut return_leg = return_leg;
    if !r.return_confirmed {
        return_leg.verdict = Verdict::SentUnconfirmed;
        return_leg.reason = Some("the Python version's server confirms nothing".into());
    }
    Receipt {
        schema: SCHEMA,
        version: VERSION,
        event: "round_trip",
        role: "client",
        ok: true,
        exit_status: crate::error::exit::OK,
        peer: r.server.clone(),
        file: FileFacts::of(&o.name, &o.digest),
        saved: Saved {
            file: Some(path(&r.output)),
            csv: matches!(o.csv, CsvReturned::Returned { .. } | CsvReturned::Local { .. })
                .then(|| r.csv.as_deref().map(path))
                .flatten(),
        },
        data_leg,
        return_leg,
        csv,
        mesh: o.mesh.as_deref().cloned(),
        error: None,
    }
}

/// B's receipt for a round trip that failed with `e`.
pub fn client_failed(server: &str, output: &Path, e: &Error, seen: Seen) -> Receipt {
    failed("client", server.to_owned(), Saved { file: seen.data.map(|_| path(output)), csv: None }, e, seen)
}

/// A's receipt for one session; `None` for a connection that never greeted it as a client (a
/// port probe is not a round trip).
pub fn server(r: &ServerSessionReport, mut seen: Seen) -> Option<Receipt> {
    if !r.greeted {
        return None;
    }
    let peer = r.peer.to_string();
    let o = match &r.result {
        Ok(o) => o,
        Err(e) => {
            let saved = Saved { file: seen.ret.map(|_| path(&r.output)), csv: None };
            // A's own file, under the name it serves it.
            seen.name = Some(crate::files::file_name(&r.file));
            return Some(failed("server", peer, saved, e, seen));
        }
    };
    let (data_leg, return_leg) = legs(&o.digest, o.data_time, o.return_time, o.resumed);
    let (csv, csv_saved, csv_failed) = match &o.csv {
        CsvResult::Saved { digest, rows } => {
            (CsvFacts::of(Verdict::Verified, None, digest, *rows), Some(path(&r.csv_output)), None)
        }
        CsvResult::NotMade(why) => (CsvFacts::without(Verdict::NotMade, why.clone()), None, None),
        CsvResult::Failed(f) => (CsvFacts::without(Verdict::Failed, chain(f)), None, Some(f)),
    };
    let error = csv_failed.map(|f| ErrorFacts { message: format!("vertex CSV: {}", chain(f)), hint: None });
    Some(Receipt {
        schema: SCHEMA,
        version: VERSION,
        event: "round_trip",
        role: "server",
        ok: csv_failed.is_none(),
        exit_status: if csv_failed.is_some() { crate::error::exit::CSV } else { crate::error::exit::OK },
        peer,
        file: FileFacts::of(&o.name, &o.digest),
        saved: Saved { file: Some(path(&r.output)), csv: csv_saved },
        data_leg,
        return_leg,
        csv,
        mesh: o.mesh.as_deref().cloned(),
        error,
    })
}

/// One object as one line of JSON.
pub fn line<T: Serialize>(value: &T) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no failing `Serialize`.
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"{e}\"}}"))
}
