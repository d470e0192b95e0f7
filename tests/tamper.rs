//! Clients written against docs/PROTOCOL.md with raw sockets, in both protocol versions: an
//! honest one is served (so the document suffices, and version-1 clients keep working against
//! the version-2 server), and a dishonest one must not fool A: a returned copy with a flipped byte
//! (but the right digests claimed) and a tampered CSV (with digests that match the tampering) are
//! both rejected, and nothing is saved; a version-6 client's facts about the mesh must be A's own.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::raw::*;
use common::*;
use machinaftp::protocol::data::DataMsg;
use machinaftp::protocol::ret::{FRAME_V1, FRAME_V2, ReturnMsg, Stream};
use machinaftp::stl::{self, CsvOptions};

/// Runs one dishonest session against A and returns A's verdicts on the file and the CSV.
fn dishonest_session(tcp: &str, zmq_port: &str, mesh: &Path, flip_file: bool, flip_csv: bool) -> Vec<String> {
    let (fake, file, _) = raw_through_data_leg(tcp, zmq_port, [0x5a; 16]);
    let honest = digest_of(&file);
    let mut verdicts = Vec::new();
    let mut back = file.clone();
    if flip_file {
        back[1000] ^= 0x01;
    }
    // The file: the honest digests are claimed whatever was sent.
    match fake.send_stream(Stream::File, &back, &honest) {
        ReturnMsg::Result { ok, reason, .. } => verdicts.push(format!("file ok={ok} {reason}")),
        other => panic!("unexpected {other:?}"),
    }
    if !flip_file {
        verdicts.push(send_csv(&fake, mesh, flip_csv, FRAME_V1));
    }
    verdicts
}

/// Sends the CSV of `mesh` (with one digit changed if `tamper`, and digests that match what is
/// sent, so only A's own knowledge can catch the lie), then `Bye`; returns A's verdict on it.
fn send_csv(fake: &RawClient, mesh: &Path, tamper: bool, frame: usize) -> String {
    let mut csv = Vec::new();
    stl::convert_to(mesh, &mut csv, Path::new("memory"), CsvOptions::default()).unwrap();
    if tamper {
        let at = csv.iter().position(|b| b.is_ascii_digit() && *b != b'9').unwrap();
        csv[at] += 1;
    }
    let verdict = match fake.send_stream_framed(Stream::Csv, &csv, &digest_of(&csv), frame) {
        ReturnMsg::Result { ok, reason, .. } => format!("csv ok={ok} {reason}"),
        other => panic!("unexpected {other:?}"),
    };
    fake.send(&ReturnMsg::Bye);
    verdict
}

#[test]
fn flipped_byte_in_the_returned_file_is_rejected() {
    require_shared!();
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let v = dishonest_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &mesh, true, false);
    assert!(v[0].starts_with("file ok=false returned copy differs"), "{v:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(1), "{s:?}");
    assert!(s.stderr.contains("checksum mismatch on the return leg"), "{s:?}");
    assert_eq!(files_in(a.path()), ["server.log"]);
}

#[test]
fn tampered_csv_with_matching_digests_is_rejected() {
    require_shared!();
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let v = dishonest_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &mesh, false, true);
    assert_eq!(v[0], "file ok=true ", "{v:?}");
    assert!(v[1].starts_with("csv ok=false the CSV differs from the server's own conversion"), "{v:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(5), "{s:?}");
    assert!(a.path().join("output.stl").exists());
    assert!(!a.path().join("output.csv").exists());
    assert_no_partials(a.path());
}

#[test]
fn honest_raw_client_is_accepted() {
    require_shared!();
    // The same hand-written client without lies: the protocol document suffices for a peer.
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let v = dishonest_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &mesh, false, false);
    assert_eq!(v, ["file ok=true ", "csv ok=true "]);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("output.csv")));
}

#[test]
fn regression_overflowing_offset_neither_panics_nor_leaks_a_client_slot() {
    require_shared!();
    // Data at offset u64::MAX once overflowed an addition and killed the worker without giving
    // its --max-clients slot back, so the server then turned everyone away as busy.
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--max-clients", "1"]);
    let (fake, file, _) = raw_through_data_leg(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), [0x33; 16]);
    fake.send(&ReturnMsg::Offer { stream: Stream::File, size: file.len() as u64 });
    assert!(matches!(fake.recv(), ReturnMsg::Credit { .. }));
    fake.send(&ReturnMsg::Data { stream: Stream::File, offset: u64::MAX, payload: b"x" });
    match fake.recv() {
        ReturnMsg::Abort { reason } => assert!(reason.contains("Data for bytes"), "{reason}"),
        other => panic!("expected Abort, got {other:?}"),
    }
    srv.proc.wait_stdout(|l| l.starts_with("FAILED"));
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(0), "the slot came back: {out:?}");
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
}

#[test]
fn regression_wrong_size_offer_gets_its_verdict_not_a_timeout() {
    require_shared!();
    // A's last Result used to be dropped because the session forgot its peer before the hub
    // had sent it; the client then waited out its whole timeout.
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let (fake, file, _) = raw_through_data_leg(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), [0x44; 16]);
    fake.send(&ReturnMsg::Offer { stream: Stream::File, size: file.len() as u64 + 1 });
    match fake.recv() {
        ReturnMsg::Result { ok: false, reason, .. } => assert!(reason.contains("offers 714885 bytes"), "{reason}"),
        other => panic!("expected a negative Result, got {other:?}"),
    }
    assert_eq!(srv.proc.finish().code(), Some(1));
}

/// A version-2 client from PROTOCOL.md section 6: it returns each 1 MiB frame as soon as it has
/// received it, under the credit A grants at `Accept`, sends `End` after its `Verdict`, then the
/// CSV. `flip` corrupts one returned byte (the claimed digests stay honest). Returns A's verdicts.
fn v2_session(tcp: &str, zmq_port: &str, mesh: &Path, flip: Option<usize>) -> Vec<String> {
    let token = [0x62; 16];
    let fake = RawClient::connect(zmq_port, token);
    let s = fake.handshake(tcp, token, 2);
    let mut verdicts = vec![return_while_receiving(&fake, s, flip)];
    if flip.is_none() {
        verdicts.push(send_csv(&fake, mesh, false, FRAME_V2));
    }
    verdicts
}

/// The file's legs from version 2 on, after `Accept` (and, from version 4, A's `Resume`): each
/// frame goes back as soon as it is in and credit covers it, `End` after the `Verdict`. Returns
/// A's verdict on the returned copy.
fn return_while_receiving(fake: &RawClient, (mut s, size): (std::net::TcpStream, u64), flip: Option<usize>) -> String {
    // The return of stream 0 is offered by the Header; A grants its window at once.
    let mut credit = match fake.recv() {
        ReturnMsg::Credit { stream: Stream::File, bytes } => bytes,
        other => panic!("expected the initial credit, got {other:?}"),
    };
    let mut file = Vec::with_capacity(size as usize);
    let mut returned = 0usize;
    while file.len() < size as usize {
        let want = (size as usize - file.len()).min(64 << 10);
        let mut piece = vec![0u8; want];
        let n = s.read(&mut piece).unwrap();
        assert!(n > 0, "A closed mid-file");
        file.extend_from_slice(&piece[..n]);
        // Cut-through: every whole frame goes back as soon as it is in and credit covers it.
        loop {
            let len = (size as usize - returned).min(FRAME_V2);
            if len == 0 || file.len() - returned < len {
                break;
            }
            while credit < len as u64 {
                match fake.recv() {
                    ReturnMsg::Credit { bytes, .. } => credit += bytes,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut payload = file[returned..returned + len].to_vec();
            if let Some(at) = flip.filter(|at| (returned..returned + len).contains(at)) {
                payload[at - returned] ^= 1;
            }
            fake.send(&ReturnMsg::Data { stream: Stream::File, offset: returned as u64, payload: &payload });
            credit -= len as u64;
            returned += len;
        }
    }
    assert!(matches!(recv_frame(&mut s), DataMsg::Trailer { .. }));
    s.write_all(&DataMsg::Verdict { ok: true, reason: String::new() }.to_bytes()).unwrap();
    let honest = digest_of(&file);
    fake.send(&ReturnMsg::End { stream: Stream::File, crc32: honest.crc32, blake3: honest.blake3 });
    loop {
        match fake.recv() {
            ReturnMsg::Credit { .. } => {}
            ReturnMsg::Result { ok, reason, .. } => return format!("file ok={ok} {reason}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What a version-6 client says of the mesh before the CSV's `Offer`.
enum MeshClaim {
    /// The facts as they are.
    Honest,
    /// The facts with the area and the geometry digest changed.
    Lie,
    /// No `Mesh` at all.
    Silent,
}

/// A version-6 client (PROTOCOL.md sections 8 and 10, no secret): after the file's round trip it
/// sends the CSV as it is, preceded by `claim` about the mesh. Returns A's verdicts.
fn v6_session(tcp: &str, zmq_port: &str, mesh: &Path, claim: MeshClaim) -> Vec<String> {
    let token = [0x66; 16];
    let fake = RawClient::connect(zmq_port, token);
    // The empty Accept offers nothing (V4-offer): no Resume, the raw bytes follow at once.
    let mut verdicts = vec![return_while_receiving(&fake, fake.handshake(tcp, token, 6), None)];
    let (read, _) =
        stl::convert_to(mesh, std::io::sink(), Path::new("memory"), CsvOptions { mesh: true, ..CsvOptions::default() })
            .unwrap();
    let mut facts = read.mesh.expect("facts asked for");
    match claim {
        MeshClaim::Honest => fake.send(&ReturnMsg::Mesh(facts)),
        MeshClaim::Lie => {
            facts.area *= 1.01;
            facts.geometry_blake3 = "0".repeat(64);
            fake.send(&ReturnMsg::Mesh(facts));
        }
        MeshClaim::Silent => {}
    }
    verdicts.push(send_csv(&fake, mesh, false, FRAME_V2));
    verdicts
}

#[test]
fn version_6_client_must_tell_the_truth_about_the_mesh() {
    require_shared!();
    let mesh = shared("cad_mesh.stl");
    let differs = "csv ok=false the mesh the client read differs from the server's: ";
    for (claim, verdict, status) in [
        (MeshClaim::Honest, vec!["csv ok=true "], 0),
        (
            MeshClaim::Lie,
            vec![differs, "area 254002.945", "here, 256542.97", "geometry BLAKE3 f77f37ca", "here, 0000"],
            5,
        ),
        (MeshClaim::Silent, vec![differs, "the client sent no facts of it"], 5),
    ] {
        let a = tempdir();
        let srv = Server::start(a.path(), &mesh, &["--once"]);
        let v = v6_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &mesh, claim);
        assert_eq!(v[0], "file ok=true ", "{v:?}");
        assert!(
            v[1].starts_with(verdict[0]) && verdict.iter().all(|w| v[1].contains(w)),
            "{v:?}, expected {verdict:?}"
        );
        let s = srv.proc.finish();
        assert_eq!(s.code(), Some(status), "{s:?}");
        // A keeps the returned copy either way, and a CSV only when the mesh agreed.
        assert!(same_contents(&mesh, &a.path().join("output.stl")));
        assert_eq!(a.path().join("output.csv").exists(), status == 0, "{:?}", files_in(a.path()));
    }
}

#[test]
fn honest_version_2_raw_client_is_served() {
    require_shared!();
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let v = v2_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &mesh, None);
    assert_eq!(v, ["file ok=true ", "csv ok=true "]);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(same_contents(&mesh, &a.path().join("output.stl")));
    assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("output.csv")));
}

#[test]
fn version_2_client_returning_a_flipped_byte_while_receiving_is_rejected() {
    let a = tempdir();
    let big = a.path().join("big.bin");
    write_random(&big, 5_000_000, 21);
    let srv = Server::start(a.path(), &big, &["--once", "--output", "back.bin"]);
    let v = v2_session(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), &big, Some(2_500_000));
    assert!(v[0].starts_with("file ok=false returned copy differs"), "{v:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(1), "{s:?}");
    assert!(s.stderr.contains("checksum mismatch on the return leg"), "{s:?}");
    assert_eq!(files_in(a.path()), ["big.bin", "server.log"]);
}

#[test]
fn regression_sigterm_stops_a_server_in_the_middle_of_a_return_leg() {
    require_shared!();
    // A once finished the return leg before it stopped: 5 s on a 100 Mbit/s link, minutes for
    // big files. A version-1 client makes the return leg its own phase, and this one stops
    // sending in the middle of it.
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &[]);
    let (fake, file, _data) = raw_through_data_leg(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), [0x55; 16]);
    fake.send(&ReturnMsg::Offer { stream: Stream::File, size: file.len() as u64 });
    assert!(matches!(fake.recv(), ReturnMsg::Credit { .. }));
    fake.send(&ReturnMsg::Data { stream: Stream::File, offset: 0, payload: &file[..FRAME_V1] });
    srv.proc.signal(libc::SIGTERM);
    // A may still grant credit for the frame before the signal lands; then comes the Abort.
    loop {
        match fake.recv() {
            ReturnMsg::Credit { .. } => {}
            ReturnMsg::Abort { reason } => break assert!(reason.contains("shutting down"), "told why: {reason}"),
            other => panic!("expected Abort, got {other:?}"),
        }
    }
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert_eq!(files_in(a.path()), ["server.log"], "nothing half-returned is kept");
}
