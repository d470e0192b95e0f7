//! End-to-end round trips with the real binary as A and B on 127.0.0.1.

mod common;

use common::*;

#[test]
fn cad_mesh_default_topology() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("Done! - RX") && out.stdout.contains("Done! - TX"), "{out:?}");
    assert!(out.stdout.contains("CRC-32 1445675924"), "{out:?}");
    let srv = srv.proc.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    assert!(srv.stdout.contains("Done! - TX") && srv.stdout.contains("Done! - RX"), "{srv:?}");
    assert!(same_contents(&mesh, &b.path().join("output.stl")));
    assert!(same_contents(&mesh, &a.path().join("output.stl")));
    // B made the vertex CSV and A received it intact: both equal the reference byte for byte.
    let reference = shared("cad_mesh.csv");
    assert!(same_contents(&reference, &b.path().join("output.csv")), "B's CSV");
    assert!(same_contents(&reference, &a.path().join("output.csv")), "A's CSV");
    assert!(out.stdout.contains("CSV output.csv (42888 vertices) returned and verified"), "{out:?}");
    // The log records the connection, the checksum the Python version logged, and the verdicts.
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert!(log.contains("accepted connection"), "{log}");
    assert!(log.contains("crc32=1445675924"), "{log}");
    assert!(log.contains("returned copy verified identical"), "{log}");
    let line = log.lines().next().unwrap();
    assert!(line.contains(" - server - INFO - "), "python-style log line: {line}");
    let clog = std::fs::read_to_string(b.path().join("client.log")).unwrap();
    assert!(clog.contains("header received") && clog.contains("size=714884"), "{clog}");
    assert_eq!(files_in(b.path()), ["client.log", "output.csv", "output.stl"]);
}

#[test]
fn cad_mesh_remotehost_topology() {
    require_shared!();
    // The Python version's wiring: B binds its return port, A connects to it.
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once", "--remotehost", "127.0.0.1"]);
    assert!(srv.zmq_port.is_none(), "no ZeroMQ port is bound by A in this topology");
    // B binds an ephemeral return port (0) and tells A which one in its Hello.
    let out =
        client(b.path(), &["--client", "-f", "output.stl", "-H", "127.0.0.1", "-p", &srv.tcp_port, "--zmq-port", "0"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let srv = srv.proc.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    assert!(same_contents(&mesh, &a.path().join("output.stl")));
    assert!(same_contents(&mesh, &b.path().join("output.stl")));
    assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("output.csv")));
}

#[test]
fn zero_byte_file() {
    let (a, b) = (tempdir(), tempdir());
    let empty = a.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let srv = Server::start(a.path(), &empty, &["--once"]);
    let out = client(b.path(), &srv.client_args("got.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert_eq!(std::fs::metadata(b.path().join("got.bin")).unwrap().len(), 0);
    // Default output name follows the served file's extension.
    assert_eq!(std::fs::metadata(a.path().join("output.bin")).unwrap().len(), 0);
}

#[test]
fn localhost_by_name_on_both_sides() {
    // ZeroMQ once read -H localhost as a network interface's name and the server did not start.
    let (a, b) = (tempdir(), tempdir());
    let file = a.path().join("part.bin");
    write_random(&file, 300_000, 3);
    let srv =
        Proc::spawn(a.path(), &["--server", "-f", file.to_str().unwrap(), "-H", "localhost", "-p", "0", "--once"]);
    let ready = srv.wait_stdout(|l| l.starts_with("ready "));
    let port = ready.split_whitespace().find_map(|w| w.strip_prefix("tcp=")).unwrap().rsplit(':').next().unwrap();
    let out = client(b.path(), &["--client", "-f", "got.bin", "-H", "localhost", "-p", port]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let s = srv.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(same_contents(&file, &b.path().join("got.bin")));
    // Bound to loopback: no warning about serving without a secret.
    assert!(!s.stderr.contains("without a secret"), "{s:?}");
}

#[test]
fn hundred_megabyte_file() {
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    write_random(&big, 100_000_000, 42);
    let srv = Server::start(a.path(), &big, &["--once", "--output", "returned.bin"]);
    let out = client(b.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert!(same_contents(&big, &b.path().join("big.bin")));
    assert!(same_contents(&big, &a.path().join("returned.bin")));
    // Streaming, not loading, with both legs in flight at once: no child of this test binary
    // (every one is a machinaftp process) went past the 32 MiB each process is allowed.
    let peak_kib = max_child_rss_kib();
    assert!(peak_kib < 32 * 1024, "a process peaked at {peak_kib} KiB moving a 100 MB file");
}

fn max_child_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct we pass and has no other preconditions.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    }
}

#[test]
fn several_clients_at_once() {
    require_shared!();
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &[]);
    for (d, out) in clients_at_once(4, &srv.client_args("output.stl")) {
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert!(same_contents(&mesh, &d.path().join("output.stl")));
    }
    // A long-running server stops cleanly on SIGTERM and exits 0.
    srv.proc.signal(libc::SIGTERM);
    let done = srv.proc.finish();
    assert_eq!(done.code(), Some(0), "{done:?}");
    assert_eq!(done.stdout.matches("verified 127.0.0.1").count(), 4, "{done:?}");
    assert!(same_contents(&mesh, &a.path().join("output.stl")));
    assert_no_partials(a.path());
}

#[test]
fn seed_invocations_work_as_written() {
    require_shared!();
    // `python3 ./src/runner.py --server -f ./cad_mesh.stl -H ... -p ... --remotehost ...` with
    // our binary in its place, and the client's invocation unchanged. Only the ports differ, as
    // tests must not assume free ports.
    let (a, b) = (tempdir(), tempdir());
    std::fs::copy(shared("cad_mesh.stl"), a.path().join("cad_mesh.stl")).unwrap();
    let srv = Proc::spawn(
        a.path(),
        &["--server", "-f", "./cad_mesh.stl", "-H", "127.0.0.1", "-p", "0", "--remotehost", "127.0.0.1"],
    );
    let ready = srv.wait_stdout(|l| l.starts_with("ready "));
    let port = ready.split_whitespace().nth(1).unwrap().rsplit(':').next().unwrap().to_owned();
    let out = client(b.path(), &["--client", "-f", "output.stl", "-H", "127.0.0.1", "-p", &port, "--zmq-port", "0"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let srv = srv.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    let lines: Vec<_> = srv.stdout.lines().collect();
    assert!(lines.contains(&"Done! - TX") && lines.contains(&"Done! - RX"), "{srv:?}");
    assert!(a.path().join("output.stl").exists() && a.path().join("server.log").exists());
    assert!(b.path().join("output.stl").exists() && b.path().join("client.log").exists());
}

#[test]
fn invalid_stl_makes_its_round_trip_but_its_csv_fails() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let bad = shared("stl-corpus/openscad_toomanyvertices.stl");
    let srv = Server::start(a.path(), &bad, &["--once"]);
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(5), "{out:?}");
    assert!(out.stdout.contains("Done! - RX") && out.stdout.contains("Done! - TX"), "{out:?}");
    assert!(out.stderr.contains("the file made its round trip intact, but its CSV did not"), "{out:?}");
    assert!(out.stderr.contains("more than 3 vertices"), "{out:?}");
    let srv = srv.proc.finish();
    assert_eq!(srv.code(), Some(5), "{srv:?}");
    assert!(srv.stdout.contains("CSV FAILED"), "{srv:?}");
    assert!(same_contents(&bad, &a.path().join("output.stl")));
    assert!(same_contents(&bad, &b.path().join("output.stl")));
    assert!(!a.path().join("output.csv").exists() && !b.path().join("output.csv").exists());
    assert_no_partials(a.path());
    assert_no_partials(b.path());
}

#[test]
fn non_stl_file_has_no_csv_and_succeeds() {
    let (a, b) = (tempdir(), tempdir());
    let data = a.path().join("data.bin");
    write_random(&data, 300_000, 3);
    let srv = Server::start(a.path(), &data, &["--once"]);
    let out = client(b.path(), &srv.client_args("data.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("no CSV (the file is not STL)"), "{out:?}");
    let srv = srv.proc.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    assert!(!a.path().join("output.csv").exists());
    assert_eq!(files_in(b.path()), ["client.log", "data.bin"]);
}

#[test]
fn csv_paths_and_no_csv() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--csv-output", "returned-vertices.csv"]);
    let mut args = srv.client_args("mesh.stl");
    args.extend_from_slice(&["--csv", "vertices.csv"]);
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(same_contents(&shared("cad_mesh.csv"), &b.path().join("vertices.csv")));
    assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("returned-vertices.csv")));
    let c = tempdir();
    let mut args = srv.client_args("mesh.stl");
    args.push("--no-csv");
    let out = client(c.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("no CSV (disabled with --no-csv)"), "{out:?}");
    assert_eq!(files_in(c.path()), ["client.log", "mesh.stl"]);
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0));
    assert!(s.stdout.contains("no CSV (disabled with --no-csv)"), "{s:?}");
}

#[test]
fn csv_conversion_longer_than_the_timeout_is_kept_alive() {
    // B converts a large ASCII mesh for longer than --timeout; keep-alives on the return channel
    // tell A it is still at work, so neither side gives up on a healthy peer.
    let (a, b) = (tempdir(), tempdir());
    let mesh = a.path().join("big_ascii.stl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&mesh).unwrap());
    use std::io::Write;
    writeln!(f, "solid big").unwrap();
    for i in 0..360_000u32 {
        let x = f64::from(i % 1000) * 0.123_456;
        writeln!(f, "facet normal 0 0 1\nouter loop").unwrap();
        for k in 0..3 {
            writeln!(f, "vertex {x:.6} {:.6} {:.6}", x + f64::from(k), f64::from(i) * 0.001).unwrap();
        }
        writeln!(f, "endloop\nendfacet").unwrap();
    }
    writeln!(f, "endsolid big").unwrap();
    drop(f);
    let srv = Server::start(a.path(), &mesh, &["--once", "--timeout", "1"]);
    let mut args = srv.client_args("big.stl");
    args.extend_from_slice(&["--timeout", "1"]);
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("(1080000 vertices) returned and verified"), "{out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(same_contents(&b.path().join("big.csv"), &a.path().join("output.csv")));
}

#[test]
fn every_option_can_come_from_the_environment() {
    require_shared!();
    // A container or a service unit sets MACHINAFTP_* instead of writing a command line.
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let mesh = mesh.to_str().unwrap();
    let srv_env = [
        ("MACHINAFTP_SERVER", "1"),
        ("MACHINAFTP_FILENAME", mesh),
        ("MACHINAFTP_PORT", "0"),
        ("MACHINAFTP_ONCE", "true"),
        ("MACHINAFTP_OUTPUT", "back.stl"),
    ];
    let srv = Proc::spawn_with_env(a.path(), &[], &srv_env);
    let ready = srv.wait_stdout(|l| l.starts_with("ready "));
    let port = |key: &str| {
        ready.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap().rsplit(':').next().unwrap().to_owned()
    };
    let (tcp, zmq) = (port("tcp="), port("zmq="));
    let cli_env = [
        ("MACHINAFTP_CLIENT", "yes"),
        ("MACHINAFTP_FILENAME", "copy.stl"),
        ("MACHINAFTP_PORT", tcp.as_str()),
        ("MACHINAFTP_ZMQ_PORT", zmq.as_str()),
        ("MACHINAFTP_NO_CSV", "1"),
        ("MACHINAFTP_VERBOSE", "1"),
    ];
    let out = Proc::spawn_with_env(b.path(), &[], &cli_env).finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("header received"), "MACHINAFTP_VERBOSE=1 is -v: {out:?}");
    assert_eq!(srv.finish().code(), Some(0));
    assert!(same_contents(&shared("cad_mesh.stl"), &b.path().join("copy.stl")));
    assert!(same_contents(&shared("cad_mesh.stl"), &a.path().join("back.stl")));
    assert_eq!(files_in(b.path()), ["client.log", "copy.stl"], "MACHINAFTP_NO_CSV=1: no CSV");
    // A command-line flag still wins over a variable, and a false-looking value is false.
    let out = Proc::spawn_with_env(
        b.path(),
        &["-c", "-f", "x.stl", "-H", "127.0.0.1", "-p", "1"],
        &[("MACHINAFTP_SERVER", "0")],
    )
    .finish();
    assert_eq!(out.code(), Some(3), "MACHINAFTP_SERVER=0 is not --server: {out:?}");
    // The help names each variable.
    let help = client(b.path(), &["--help"]);
    for var in
        ["MACHINAFTP_PORT", "MACHINAFTP_HOST", "MACHINAFTP_REMOTEHOST", "MACHINAFTP_TIMEOUT", "MACHINAFTP_VERBOSE"]
    {
        assert!(help.stdout.contains(var), "{var} in --help");
    }
}

#[test]
fn shell_completions_and_the_manual_page() {
    let dir = tempdir();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = client(dir.path(), &["completions", shell]);
        assert_eq!(out.code(), Some(0), "{shell}: {out:?}");
        assert!(out.stdout.contains("remotehost") && out.stdout.contains("stl2csv"), "{shell}: {}", out.stdout);
    }
    // The bash script is valid bash.
    let script = dir.path().join("machinaftp.bash");
    std::fs::write(&script, client(dir.path(), &["completions", "bash"]).stdout).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(check.success(), "bash -n rejects the completion script");
    let man = client(dir.path(), &["man"]);
    assert_eq!(man.code(), Some(0), "{man:?}");
    assert!(man.stdout.contains(".TH machinaftp 1"), "{}", man.stdout);
    assert!(man.stdout.contains("remotehost") && man.stdout.contains("completions"), "{}", man.stdout);
    // Every option names its environment variable, as --help does.
    for var in ["MACHINAFTP_PORT", "MACHINAFTP_REMOTEHOST", "MACHINAFTP_SECRET", "MACHINAFTP_RATE_LIMIT"] {
        assert!(man.stdout.contains(var), "{var} missing: {}", man.stdout);
    }
    // With a directory: the pages the SUBCOMMANDS section names are there too.
    assert!(!man.stdout.contains("machinaftp-help"), "help has no page of its own: {}", man.stdout);
    let pages = dir.path().join("share/man1");
    let out = client(dir.path(), &["man", "share/man1"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    // A page that cannot be written is named.
    std::fs::remove_file(pages.join("machinaftp-demo.1")).unwrap();
    std::fs::create_dir(pages.join("machinaftp-demo.1")).unwrap();
    let out = client(dir.path(), &["man", "share/man1"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("machinaftp-demo.1"), "{out:?}");
    std::fs::remove_dir(pages.join("machinaftp-demo.1")).unwrap();
    assert_eq!(client(dir.path(), &["man", "share/man1"]).code(), Some(0));
    for page in
        ["machinaftp.1", "machinaftp-inspect.1", "machinaftp-stl2csv.1", "machinaftp-sample.1", "machinaftp-demo.1"]
    {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}: {text}");
    }
    let bad = client(dir.path(), &["completions", "tcsh"]);
    assert_eq!(bad.code(), Some(2), "{bad:?}");
}

/// Parses one line of `--json` output, checking the schema it claims.
fn receipt(line: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["schema"], "machinaftp.receipt", "{line}");
    assert_eq!(v["version"], 1, "{line}");
    v
}

/// Starts a `--json` server and returns it with its data port, read from its `ready` object.
fn json_server(dir: &std::path::Path, file: &std::path::Path) -> (Proc, String) {
    let srv = Proc::spawn(dir, &["--server", "-f", file.to_str().unwrap(), "-p", "0", "--once", "--json"]);
    let ready = receipt(&srv.wait_stdout(|l| l.contains(r#""event":"ready""#)));
    let port = ready["tcp"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    assert!(ready["zmq"].as_str().unwrap().starts_with("127.0.0.1:"), "{ready}");
    (srv, port)
}

#[test]
fn json_receipts_on_both_sides() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let (srv, port) = json_server(a.path(), &mesh);
    let out = client(b.path(), &["--client", "-f", "copy.stl", "-p", &port, "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let srv = srv.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    // Nothing but JSON on stdout: the client prints exactly one object, the server (after its
    // ready object, read above) one per session.
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert_eq!(srv.stdout.lines().count(), 1, "{srv:?}");
    let bytes = std::fs::read(&mesh).unwrap();
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    let crc = crc32fast::hash(&bytes);
    let reference_csv = std::fs::read(shared("cad_mesh.csv")).unwrap();
    for (role, line) in [("client", out.stdout.trim()), ("server", srv.stdout.trim())] {
        let r = receipt(line);
        assert_eq!(r["event"], "round_trip", "{r}");
        assert_eq!(r["role"], role, "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["exit_status"], 0, "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["file"]["name"], "cad_mesh.stl", "{r}");
        assert_eq!(r["file"]["size"], bytes.len(), "{r}");
        assert_eq!(r["file"]["crc32"], crc, "{r}");
        assert_eq!(r["file"]["blake3"], blake3.as_str(), "{r}");
        for leg in ["data_leg", "return_leg"] {
            assert_eq!(r[leg]["verdict"], "verified", "{r}");
            assert_eq!(r[leg]["bytes"], bytes.len(), "{r}");
            assert_eq!(r[leg]["resumed_from"], 0, "{r}");
            assert_eq!(r[leg]["reached"], bytes.len(), "{r}");
            let secs = r[leg]["seconds"].as_f64().unwrap();
            let rate = r[leg]["bytes_per_second"].as_f64().unwrap();
            assert!((rate * secs - bytes.len() as f64).abs() < 1.0, "{r}");
        }
        assert_eq!(r["csv"]["verdict"], "verified", "{r}");
        assert_eq!(r["csv"]["size"], reference_csv.len(), "{r}");
        assert_eq!(r["csv"]["rows"], 42888, "{r}");
        assert_eq!(r["csv"]["crc32"], crc32fast::hash(&reference_csv), "{r}");
        assert_eq!(r["csv"]["blake3"], blake3::hash(&reference_csv).to_hex().as_str(), "{r}");
    }
    let (c, s) = (receipt(out.stdout.trim()), receipt(srv.stdout.trim()));
    assert_eq!(c["saved"]["file"], "copy.stl", "{c}");
    assert_eq!(c["saved"]["csv"], "copy.csv", "{c}");
    assert_eq!(c["peer"], format!("127.0.0.1:{port}"), "{c}");
    assert_eq!(s["saved"]["file"], "output.stl", "{s}");
    assert_eq!(s["saved"]["csv"], "output.csv", "{s}");
    assert!(same_contents(&mesh, &a.path().join("output.stl")) && same_contents(&mesh, &b.path().join("copy.stl")));
}

#[test]
fn json_receipts_of_failed_round_trips() {
    require_shared!();
    // The file makes its round trip but its CSV fails: both legs verified, the CSV failed, and
    // the exit status in the receipt is the process's.
    let (a, b) = (tempdir(), tempdir());
    let bad = shared("stl-corpus/openscad_toomanyvertices.stl");
    let bytes = std::fs::read(&bad).unwrap();
    let len = bytes.len() as u64;
    let (srv, port) = json_server(a.path(), &bad);
    let out = client(b.path(), &["--client", "-f", "copy.stl", "-p", &port, "--json"]);
    assert_eq!(out.code(), Some(5), "{out:?}");
    let srv = srv.finish();
    assert_eq!(srv.code(), Some(5), "{srv:?}");
    for line in [out.stdout.trim(), srv.stdout.trim()] {
        let r = receipt(line);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["exit_status"], 5, "{r}");
        assert_eq!(r["data_leg"]["verdict"], "verified", "{r}");
        assert_eq!(r["return_leg"]["verdict"], "verified", "{r}");
        assert_eq!(r["csv"]["verdict"], "failed", "{r}");
        // The file's facts are known although the round trip failed.
        assert_eq!(r["file"]["name"], "openscad_toomanyvertices.stl", "{r}");
        assert_eq!(r["file"]["size"], bytes.len(), "{r}");
        assert_eq!(r["file"]["crc32"], crc32fast::hash(&bytes), "{r}");
        assert_eq!(r["file"]["blake3"], blake3::hash(&bytes).to_hex().as_str(), "{r}");
        for leg in ["data_leg", "return_leg"] {
            // Verified legs have all their facts, in a failed round trip too.
            assert_eq!((r[leg]["reached"].as_u64(), r[leg]["bytes"].as_u64()), (Some(len), Some(len)), "{r}");
            assert!(r[leg]["seconds"].as_f64().is_some() && r[leg]["resumed_from"] == 0, "{r}");
        }
        assert!(r["csv"]["reason"].as_str().unwrap().contains("more than 3 vertices"), "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("more than 3 vertices"), "{r}");
    }
    // No server at all: nothing got going, and the receipt still says so, as JSON.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let out = client(b.path(), &["--client", "-f", "other.stl", "-p", &closed, "--json", "--timeout", "2"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let r = receipt(out.stdout.trim());
    assert_eq!((r["ok"].clone(), r["exit_status"].clone()), (false.into(), 3.into()), "{r}");
    assert_eq!(r["data_leg"]["verdict"], "not_finished", "{r}");
    assert!(r["data_leg"]["bytes"].is_null() && r["file"]["size"].is_null() && r["saved"]["file"].is_null(), "{r}");
    assert!(r["file"]["name"].is_null() && r["data_leg"]["reached"].is_null(), "{r}");
    assert!(r["error"]["hint"].as_str().unwrap().contains("start the server first"), "{r}");
    assert!(!b.path().join("other.stl").exists());
}

/// Runs a client in `dir` with `args` under `script(1)`, so that its stderr is a terminal, and
/// returns everything the terminal showed.
fn client_on_a_terminal(dir: &std::path::Path, args: &[&str]) -> Finished {
    let cmd = std::iter::once(bin()).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    Proc::spawn_program("script", dir, &["-qfec", &cmd, "/dev/null"]).finish()
}

#[test]
fn progress_bars_on_a_terminal_only_unless_asked() {
    let (a, b) = (tempdir(), tempdir());
    let file = a.path().join("part.bin");
    write_random(&file, 3_000_000, 5);
    let bar = |s: &str| s.contains("receiving") && s.contains("sending back") && s.contains(" left");
    // stderr a pipe: no bars.
    let srv = Server::start(a.path(), &file, &[]);
    let out = client(b.path(), &srv.client_args("plain.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!bar(&out.stderr) && !out.stderr.contains('\x1b'), "{out:?}");
    // --progress draws them on a pipe too, and stdout keeps only its lines.
    let mut args = srv.client_args("forced.bin");
    args.push("--progress");
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(bar(&out.stderr), "{out:?}");
    assert!(!bar(&out.stdout) && out.stdout.contains("verified: forced.bin"), "{out:?}");
    // A terminal gets them by default; -q and --no-progress turn them off.
    let mut args = srv.client_args("tty.bin");
    let out = client_on_a_terminal(b.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(bar(&out.stdout) && out.stdout.contains("verified: tty.bin"), "{out:?}");
    for off in ["-q", "--no-progress"] {
        args = srv.client_args("quiet.bin");
        args.push(off);
        let out = client_on_a_terminal(b.path(), &args);
        assert_eq!(out.code(), Some(0), "{off}: {out:?}");
        assert!(!bar(&out.stdout) && out.stdout.contains("verified: quiet.bin"), "{off}: {out:?}");
    }
    for f in ["plain.bin", "forced.bin", "tty.bin", "quiet.bin"] {
        assert!(same_contents(&file, &b.path().join(f)), "{f}");
    }
    let out = client(b.path(), &["--client", "-f", "x.bin", "--progress", "--no-progress"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
}

#[test]
fn both_sides_report_the_same_mesh_after_the_verdict() {
    require_shared!();
    let mesh = shared("cad_mesh.stl");
    let inspected = client(tempdir().path(), &["inspect", "--json", mesh.to_str().unwrap()]);
    let facts = receipt_free(inspected.stdout.trim());
    // Text: one mesh line each, after the verdict, the same on both sides.
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &mesh, &["--once"]);
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let srv = srv.proc.finish();
    let b_line = out.stdout.lines().find(|l| l.starts_with("mesh: ")).unwrap_or_else(|| panic!("{out:?}"));
    let a_line = srv.stdout.lines().find(|l| l.starts_with("mesh ")).unwrap_or_else(|| panic!("{srv:?}"));
    assert!(b_line.starts_with("mesh: 14,296 facets, 172.0 x 980.2 x 76.2, open (268 boundary edges)"), "{b_line}");
    assert_eq!(a_line.split_once(": ").unwrap().1, b_line.split_once(": ").unwrap().1);
    // JSON: the receipts carry inspect's facts under `mesh`.
    let (a, b) = (tempdir(), tempdir());
    let (srv, port) = json_server(a.path(), &mesh);
    let out = client(b.path(), &["--client", "-f", "copy.stl", "-p", &port, "--json"]);
    let srv = srv.finish();
    for line in [out.stdout.trim(), srv.stdout.trim()] {
        let r = receipt(line);
        for k in
            ["facets", "distinct_vertices", "closed", "boundary_edges", "geometry_blake3", "area", "volume", "bbox"]
        {
            assert_eq!(r["mesh"][k], facts[k], "{k}: {r}");
        }
    }
}

fn receipt_free(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}
