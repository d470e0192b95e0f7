//! Faults and hostile input: clear errors, non-zero exits, no half-written files (an interrupted
//! transfer leaves only hidden partial copies, for a resume), and a server that keeps serving
//! others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::raw::raw_through_data_leg;
use common::*;

#[test]
fn missing_input_file_fails_at_once() {
    let a = tempdir();
    let out = client(a.path(), &["--server", "-f", "no-such.stl", "-H", "127.0.0.1", "-p", "0"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("no-such.stl") && out.stderr.contains("No such file"), "{out:?}");
    assert!(!out.stdout.contains("ready"), "must not start serving: {out:?}");
}

#[test]
fn no_server_listening() {
    // A socket bound but not listening: connecting to its port is refused, with no race for a
    // "free" port.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port().to_string();
    let b = tempdir();
    let out = client(b.path(), &["--client", "-f", "out.stl", "-H", "127.0.0.1", "-p", &port, "--zmq-mode", "connect"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains(&format!("no server is listening at 127.0.0.1:{port}")), "{out:?}");
    assert!(out.stderr.contains("hint:"), "{out:?}");
    assert_eq!(files_in(b.path()), ["client.log"]);
}

#[test]
fn a_client_waits_for_a_server_that_starts_later() {
    // The port is held by a socket bound (with SO_REUSEADDR, as the server binds) but not
    // listening: the client's tries are refused until the server itself listens on that port.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port().to_string();
    let (a, b) = (tempdir(), tempdir());
    let file = a.path().join("part.bin");
    write_random(&file, 100_000, 11);
    let cli = Proc::spawn(
        b.path(),
        &["--client", "-f", "part.bin", "-p", &port, "--zmq-port", "0", "--wait-for-server", "60", "-v"],
    );
    cli.wait_stderr(|l| l.contains("no server is listening") && l.contains("trying again"));
    let srv =
        Proc::spawn(a.path(), &["--server", "-f", file.to_str().unwrap(), "-p", &port, "--zmq-port", "0", "--once"]);
    let out = cli.finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.finish().code(), Some(0));
    assert!(same_contents(&file, &b.path().join("part.bin")));
    drop(sock);
    // Without the option the same situation fails at once (`no_server_listening`), and the
    // option is the client's only.
    let out = client(a.path(), &["--server", "-f", "part.bin", "--wait-for-server", "5"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--wait-for-server is a client option"), "{out:?}");
}

#[test]
fn a_return_port_in_use_is_named_as_the_cause() {
    // A --remotehost server connects to the client's return port; the client cannot bind it
    // because something else listens there. The client names that, not the server's refusal.
    let a = tempdir();
    let file = a.path().join("part.bin");
    write_random(&file, 10_000, 12);
    let srv = Server::start(a.path(), &file, &["--once", "--remotehost", "127.0.0.1"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let b = tempdir();
    let out = client(b.path(), &["--client", "-f", "part.bin", "-p", &srv.tcp_port, "--zmq-port", &port]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains(&format!("cannot bind tcp://*:{port}")), "{out:?}");
    assert!(out.stderr.contains("Address already in use") && out.stderr.contains("--zmq-port"), "{out:?}");
    // Said once on the console, not again as a log warning.
    assert_eq!(out.stderr.matches("cannot bind").count(), 1, "{out:?}");
    drop(srv);
}

fn big_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("big.bin");
    write_random(&p, 20_000_000, 7);
    p
}

/// A throttled server so that a transfer is surely in progress when the test strikes.
fn slow_server(dir: &std::path::Path, file: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--rate-limit", "2M", "--timeout", "10"];
    args.extend_from_slice(extra);
    Server::start(dir, file, &args)
}

/// A throttled server in `a` serving a 20 MB file, and a client in `b` that has accepted it and
/// is receiving (so the transfer is surely in progress when the test strikes).
fn transfer_in_progress(
    a: &std::path::Path,
    b: &std::path::Path,
    server_extra: &[&str],
) -> (Server, Proc, std::path::PathBuf) {
    transfer_in_progress_with(a, b, server_extra, &[])
}

/// [`transfer_in_progress`], with `client_extra` on the client's command line.
fn transfer_in_progress_with(
    a: &std::path::Path,
    b: &std::path::Path,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (Server, Proc, std::path::PathBuf) {
    let big = big_file(a);
    let srv = slow_server(a, &big, server_extra);
    let mut args = srv.client_args("big.bin");
    args.push("-v");
    args.extend_from_slice(client_extra);
    let cli = Proc::spawn(b, &args);
    cli.wait_stderr(|l| l.contains("accepted; receiving"));
    // Whole frames on both sides, so that an interruption leaves something to resume.
    wait_for_partial(b, 2 << 20);
    wait_for_partial(a, 1 << 20);
    (srv, cli, big)
}

/// After a resumed round trip of `big` (B in `b` as big.bin, A in `a`): both copies are whole
/// and no partial copy is left on either side.
fn assert_resumed_whole(a: &std::path::Path, b: &std::path::Path, big: &std::path::Path) {
    assert!(same_contents(big, &b.join("big.bin")));
    assert!(same_contents(big, &a.join("output.bin")));
    assert_no_partials(a);
    assert_no_partials(b);
}

/// Waits until a resumable partial copy in `dir` holds `bytes`. Polled: nothing announces a
/// byte on disk.
fn wait_for_partial(dir: &std::path::Path, bytes: u64) {
    let start = std::time::Instant::now();
    loop {
        let held = resume_partials(dir)
            .iter()
            .map(|n| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len()))
            .max()
            .unwrap_or(0);
        if held >= bytes {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "the partial copy in {} never reached {bytes} bytes", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn server_killed_mid_transfer() {
    let (a, b) = (tempdir(), tempdir());
    let (srv, cli, big) = transfer_in_progress(a.path(), b.path(), &["--once"]);
    srv.proc.signal(libc::SIGKILL);
    let out = cli.finish();
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("receiving") && out.stderr.contains("closed the connection"), "{out:?}");
    assert!(out.stderr.contains("run the same command again to resume"), "{out:?}");
    assert!(!b.path().join("big.bin").exists());
    assert_kept_for_resume(b.path(), 1);
    // A killed server cleans nothing up: its part of the returned copy is still there, and a
    // new server finds it when the same client command runs again.
    assert_kept_for_resume(a.path(), 1);
    let srv = Server::start(a.path(), &big, &["--once"]);
    let out = client(b.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("; resumed: "), "{out:?}");
    assert!(!out.stdout.contains("and 0 B had come back before"), "A's part was used: {out:?}");
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert_resumed_whole(a.path(), b.path(), &big);
}

/// A `--json` receipt of a round trip cut off mid-file still names the file and says how far
/// each leg got (and, if the printing side was told, where it went on from: `resumed`).
fn assert_interrupted_receipt(line: &str, min_data: u64, min_ret: u64, resumed: Option<u64>) {
    let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!((r["event"].as_str(), r["ok"].as_bool()), (Some("round_trip"), Some(false)), "{r}");
    assert_eq!(r["file"]["name"], "big.bin", "{r}");
    assert_eq!(r["file"]["size"], 20_000_000, "{r}");
    assert!(r["file"]["crc32"].is_null() && r["file"]["blake3"].is_null(), "no leg verified them: {r}");
    for (leg, min) in [("data_leg", min_data), ("return_leg", min_ret)] {
        assert_eq!(r[leg]["verdict"], "not_finished", "{r}");
        assert!(r[leg]["bytes"].is_null() && r[leg]["seconds"].is_null(), "{r}");
        assert_eq!(r[leg]["resumed_from"].as_u64(), resumed, "{r}");
        let reached = r[leg]["reached"].as_u64().unwrap_or_else(|| panic!("{leg}.reached: {r}"));
        assert!((min..20_000_000).contains(&reached), "{leg}.reached {reached}, at least {min}: {r}");
    }
}

#[test]
fn receipts_of_an_interrupted_transfer_say_how_far_it_got() {
    // B's, when A dies: B had at least 2 MiB, and A at least 1 MiB of what B sent back.
    let (a, b) = (tempdir(), tempdir());
    let (srv, cli, _) = transfer_in_progress_with(a.path(), b.path(), &["--once"], &["--json"]);
    srv.proc.signal(libc::SIGKILL);
    let out = cli.finish();
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert_interrupted_receipt(out.stdout.trim(), 2 << 20, 1 << 20, Some(0));
    // A's, when B is interrupted: A had sent B's 2 MiB, and had 1 MiB back.
    let (a, b) = (tempdir(), tempdir());
    let (srv, cli, _) = transfer_in_progress(a.path(), b.path(), &["--json"]);
    cli.signal(libc::SIGINT);
    assert_eq!(cli.finish().code(), Some(130));
    let line = srv.proc.wait_stdout(|l| l.contains(r#""event":"round_trip""#));
    assert_interrupted_receipt(&line, 2 << 20, 1 << 20, None);
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
}

#[test]
fn server_interrupted_mid_transfer_stops_cleanly() {
    let (a, b) = (tempdir(), tempdir());
    let (srv, cli, _) = transfer_in_progress(a.path(), b.path(), &[]);
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "SIGTERM is a clean stop: {s:?}");
    let out = cli.finish();
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the server is shutting down"), "the client is told why: {out:?}");
    assert_kept_for_resume(a.path(), 1);
    assert_kept_for_resume(b.path(), 1);
    assert!(!b.path().join("big.bin").exists());
}

#[test]
fn client_interrupted_mid_transfer_cleans_up_and_server_keeps_serving() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    let (srv, cli, big) = transfer_in_progress(a.path(), b.path(), &[]);
    cli.signal(libc::SIGINT);
    let out = cli.finish();
    assert_eq!(out.code(), Some(130), "{out:?}");
    assert!(out.stderr.contains("interrupted"), "{out:?}");
    assert!(!b.path().join("big.bin").exists(), "no final file");
    assert_kept_for_resume(b.path(), 1);
    let failed = srv.proc.wait_stdout(|l| l.starts_with("FAILED"));
    assert!(failed.contains("client: interrupted by a signal"), "A learns why: {failed}");
    // The same server still serves the next client in full.
    let out = client(c.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(same_contents(&big, &c.path().join("big.bin")));
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
}

#[test]
fn client_killed_mid_transfer_server_keeps_serving() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    let (srv, cli, _) = transfer_in_progress(a.path(), b.path(), &[]);
    cli.signal(libc::SIGKILL);
    drop(cli.finish());
    let failed = srv.proc.wait_stdout(|l| l.starts_with("FAILED"));
    assert!(failed.contains("sending the file"), "{failed}");
    // Both sides keep what they had of the killed client's transfer, for a resume.
    assert_kept_for_resume(a.path(), 1);
    assert_kept_for_resume(b.path(), 1);
    let out = client(c.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The killed client, run again with the same command, resumes and finishes.
    let out = client(b.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("resuming an interrupted transfer"), "{out:?}");
    assert!(out.stdout.contains("; resumed: "), "the verdict line says so: {out:?}");
    assert!(same_contents(&a.path().join("big.bin"), &b.path().join("big.bin")));
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert!(std::fs::read_to_string(a.path().join("server.log")).unwrap().contains("resuming: the client holds"));
    assert_no_partials(a.path());
    assert_no_partials(b.path());
}

#[test]
fn once_server_reports_failure_with_nonzero_exit() {
    let (a, b) = (tempdir(), tempdir());
    let (srv, cli, _) = transfer_in_progress(a.path(), b.path(), &["--once"]);
    cli.signal(libc::SIGTERM);
    assert_eq!(cli.finish().code(), Some(130));
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(3), "{s:?}");
    assert!(s.stderr.contains("machinaftp: error:"), "{s:?}");
    assert_kept_for_resume(a.path(), 1);
}

#[test]
fn garbage_and_idle_clients_do_not_stall_others() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--timeout", "3"]);
    let addr = format!("127.0.0.1:{}", srv.tcp_port);
    // An HTTP client on the wrong port gets a protocol error frame and is dropped.
    let mut http = TcpStream::connect(&addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A frame claiming a 4 GiB payload is refused before anything is allocated.
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.write_all(&[0x01, 0xff, 0xff, 0xff, 0xff]).unwrap();
    // An idle client says nothing at all.
    let mut idle = TcpStream::connect(&addr).unwrap();
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(0), "a real client is served meanwhile: {out:?}");
    for mut s in [http, huge] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert_eq!(reply.first(), Some(&0x09), "an Error frame comes back: {reply:?}");
    }
    // The idle connection is closed once its Hello deadline passes. It never identified itself,
    // so it was no failed round trip: it is counted in the log, not printed.
    idle.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(idle.read(&mut [0u8; 8]).expect("closed by the server"), 0);
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0));
    assert!(!s.stdout.contains("FAILED"), "{s:?}");
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert!(log.contains("no_hello_in_time=1") && log.contains("not_machinaftp=2"), "{log}");
}

#[test]
fn client_refuses_to_overwrite_through_a_missing_directory() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--once"]);
    let out = client(b.path(), &srv.client_args("no/such/dir/out.stl"));
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("no/such/dir/out.stl"), "{out:?}");
    assert!(out.stderr.contains("directory does not exist"), "the hint names the cause: {out:?}");
    assert_no_transfer_began(srv);
}

/// The client gave up before connecting: the server never saw it, and is still waiting.
fn assert_no_transfer_began(srv: Server) {
    let log_path = srv.proc_dir().join("server.log");
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(130), "the --once server had no round trip: {s:?}");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.contains("accepted connection"), "{log}");
}

#[test]
fn regression_outputs_that_are_directories_are_refused_before_any_transfer() {
    require_shared!();
    // Once called a checksum mismatch ("corrupted in transit"), exit 1, after the whole transfer.
    let (a, b) = (tempdir(), tempdir());
    std::fs::create_dir(a.path().join("outdir")).unwrap();
    std::fs::create_dir(b.path().join("outdir")).unwrap();
    let mesh = shared("cad_mesh.stl");
    let mesh_arg = mesh.to_str().unwrap();
    let s = client(a.path(), &["--server", "-f", mesh_arg, "-p", "0", "--once", "--output", "outdir"]);
    assert_eq!(s.code(), Some(4), "{s:?}");
    assert!(s.stderr.contains("cannot write outdir: it is a directory"), "{s:?}");

    let srv = Server::start(a.path(), &mesh, &["--once"]);
    for args in [&["-f", "outdir"][..], &["-f", "x.stl", "--csv", "outdir"]] {
        let mut all = vec!["--client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-H", "127.0.0.1", "-p", &srv.tcp_port]);
        let out = client(b.path(), &all);
        assert_eq!(out.code(), Some(4), "{out:?}");
        assert!(out.stderr.contains("cannot write outdir: it is a directory"), "{out:?}");
        assert!(!out.stderr.contains("mismatch"), "{out:?}");
    }
    assert_eq!(files_in(b.path()), ["client.log", "outdir"]);
    assert_no_transfer_began(srv);
}

/// A 1 MiB tmpfs, unmounted on drop; `None` where mounting is not allowed.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(at: std::path::PathBuf) -> Option<SmallDisk> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", at.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("disk_full: cannot mount a tmpfs here (needs root); not run");
        }
        ok.then_some(SmallDisk(at))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_refused_with_a_reason() {
    let (a, b) = (tempdir(), tempdir());
    let Some(disk) = SmallDisk::new(b.path().join("small")) else {
        return;
    };
    let big = a.path().join("big.bin");
    write_random(&big, 3_000_000, 5);
    let srv = Server::start(a.path(), &big, &["--once"]);
    let target = disk.0.join("big.bin");
    let out = client(b.path(), &srv.client_args(target.to_str().unwrap()));
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("not enough space"), "{out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(3), "{s:?}");
    assert!(s.stdout.contains("the peer ended the session: not enough space"), "A is told why: {s:?}");
    assert!(files_in(&disk.0).is_empty());
}

#[test]
fn once_server_stopped_before_any_client_exits_130() {
    require_shared!();
    let a = tempdir();
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--once"]);
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(130), "no round trip was made: {s:?}");
}

#[test]
fn once_server_turns_a_second_client_away_at_once() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    let (srv, first, _) = transfer_in_progress(a.path(), b.path(), &["--once"]);
    let second = client(c.path(), &srv.client_args("big.bin"));
    assert_eq!(second.code(), Some(3), "{second:?}");
    assert!(second.stderr.contains("one round trip (--once) and is busy"), "{second:?}");
    // Not offered as "busy": a retry could only find the server gone.
    assert!(!second.stderr.contains("trying again"), "{second:?}");
    first.signal(libc::SIGTERM);
    drop(first.finish());
    drop(srv.proc.finish());
}

#[test]
fn unwritable_output_is_found_at_startup() {
    require_shared!();
    let a = tempdir();
    let out = client(
        a.path(),
        &[
            "--server",
            "-f",
            shared("cad_mesh.stl").to_str().unwrap(),
            "-p",
            "0",
            "--output",
            "/nonexistent/dir/out.stl",
        ],
    );
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/dir/out.stl") && !out.stdout.contains("ready"), "{out:?}");
    // Serving output.stl and saving the returned copy over it is refused too.
    std::fs::copy(shared("cad_mesh.stl"), a.path().join("output.stl")).unwrap();
    let out = client(a.path(), &["--server", "-f", "output.stl", "-p", "0"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("is the file being served"), "{out:?}");
}

#[test]
fn client_pointed_at_the_wrong_port_is_told_so() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &[]);
    let zmq = srv.zmq_port.clone().unwrap();
    let out = client(b.path(), &["--client", "-f", "o.stl", "-p", &zmq, "--zmq-mode", "connect", "--timeout", "5"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("machinaftp server"), "{out:?}");
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
}

#[test]
fn once_server_is_not_used_up_by_a_port_probe() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &["--once", "--timeout", "3"]);
    let addr = format!("127.0.0.1:{}", srv.tcp_port);
    // A scanner that connects and says something else, and one that says nothing at all.
    let mut probe = TcpStream::connect(&addr).unwrap();
    probe.write_all(b"SSH-2.0-probe\r\n").unwrap();
    let _idle = TcpStream::connect(&addr).unwrap();
    let out = client(b.path(), &srv.client_args("output.stl"));
    assert_eq!(out.code(), Some(0), "the real client gets the round trip: {out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(same_contents(&mesh, &a.path().join("output.stl")));
}

/// CPU time (user + system) a running process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn regression_a_reset_data_connection_does_not_spin_the_server() {
    require_shared!();
    // A version-1 client gives its verdict, then resets the TCP connection; the server waits on
    // the return channel for the Offer until its timeout. A socket left in its wait after the
    // reset reported the hang-up at once, every time, and the session burned a whole core.
    let a = tempdir();
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--timeout", "3"]);
    let (_client, _, s) = raw_through_data_leg(&srv.tcp_port, srv.zmq_port.as_deref().unwrap(), [0x77; 16]);
    let before = cpu_seconds(srv.proc.child.id());
    // A reset, not a close: linger 0.
    socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(s);
    let failed = srv.proc.wait_stdout(|l| l.starts_with("FAILED"));
    assert!(failed.contains("sent nothing for 3 s"), "{failed}");
    let used = cpu_seconds(srv.proc.child.id()) - before;
    // Waiting 3 s for a silent client costs next to nothing; spinning cost all 3 s.
    assert!(used < 1.0, "the server used {used:.2} CPU-s waiting 3 s for a silent client");
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
}

#[test]
fn regression_a_source_overwritten_during_the_send_fails_both_sides() {
    // Overwriting parts of the served file while it was sent once gave exit 0 on both sides and
    // a copy that matched neither version.
    let (a, b) = (tempdir(), tempdir());
    let big = big_file(a.path());
    let srv = Server::start(a.path(), &big, &["--once", "--rate-limit", "20M"]);
    let mut args = srv.client_args("big.bin");
    args.push("-v");
    let cli = Proc::spawn(b.path(), &args);
    cli.wait_stderr(|l| l.contains("accepted; receiving"));
    // In place: same inode, same size; only the modification and status-change times tell.
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xab; 1 << 20], 10_000_000).unwrap();
    drop(f);
    let out = cli.finish();
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("changed while"), "B is told why: {out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(2), "{s:?}");
    assert!(s.stderr.contains("changed while"), "{s:?}");
    assert!(!b.path().join("big.bin").exists(), "B keeps no copy of a torn file");
    assert_eq!(files_in(a.path()), ["big.bin", "server.log"], "A saves nothing of it either");
    // What B holds is checked against the file as it is now when the same command runs again:
    // whatever no longer matches is sent again, and the copy is the new version, whole.
    let srv = Server::start(a.path(), &big, &["--once"]);
    let out = client(b.path(), &srv.client_args("big.bin"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.proc.finish().code(), Some(0));
    assert!(same_contents(&big, &b.path().join("big.bin")));
    assert_no_partials(b.path());
}

#[test]
fn resume_of_a_whole_copy_sends_no_data_and_takes_the_copy_back() {
    // B holds the whole file from an attempt whose return leg was cut (placed here by hand, as
    // the client names it). Each side hashes it before the transfer goes on, with a short
    // timeout, and A then takes the whole copy back as fast as it grants credit. (With 3 GiB and
    // a release build this once failed twice over: each side took the other's hashing for
    // silence, and A timed its own busy loop as the client's; too big a file for CI.)
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    write_random(&big, 256 << 20, 5);
    std::fs::copy(&big, b.path().join(".big.bin.resume-00112233445566778899aabbccddeeff.partial")).unwrap();
    let srv = Server::start(a.path(), &big, &["--once", "--timeout", "1"]);
    let mut args = srv.client_args("big.bin");
    args.extend_from_slice(&["--timeout", "1"]);
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("resumed: 256.0 MiB had arrived and 0 B had come back before"), "{out:?}");
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert_resumed_whole(a.path(), b.path(), &big);
}

#[test]
fn hints_name_the_real_cause_of_a_bad_address_port_or_log_directory() {
    require_shared!();
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let mesh = mesh.to_str().unwrap();
    // An address this machine does not have (binding it sends nothing anywhere).
    let out = client(a.path(), &["--server", "-f", mesh, "-H", "10.255.255.1", "-p", "0"]);
    assert_eq!(out.code(), Some(2), "a usage error: {out:?}");
    assert!(out.stderr.contains("-H is not an address of this machine"), "{out:?}");
    // A port another socket holds, for each channel.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    for args in [["-p", port.as_str()], ["--zmq-port", port.as_str()]] {
        let mut all = vec!["--server", "-f", mesh, "-H", "127.0.0.1"];
        all.extend_from_slice(&args);
        if args[0] == "--zmq-port" {
            all.extend_from_slice(&["-p", "0"]);
        }
        let out = client(a.path(), &all);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("another process holds that port"), "{args:?}: {out:?}");
    }
    // A log file in a directory that does not exist is refused, as -f would be, not created.
    let out = client(a.path(), &["--server", "-f", mesh, "-p", "0", "--log-file", "nodir/x.log"]);
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("nodir/x.log") && out.stderr.contains("does not exist"), "{out:?}");
    assert!(!a.path().join("nodir").exists());
}
