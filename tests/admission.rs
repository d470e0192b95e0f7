//! Admission under load and against hostile connections: connections that never identify
//! themselves hold no client slot and no console line, clients beyond `--max-clients` wait in a
//! bounded line and are served in order, and a client turned away by a full line tries again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::raw::recv_frame;
use common::*;
use machinaftp::protocol::data::{DataMsg, ErrorCode};
use machinaftp::protocol::ret::ReturnMsg;

/// A client that said Hello (in `version`) and then sits on its slot until dropped.
fn hold_a_slot(tcp: &str, version: u16) -> TcpStream {
    let mut s = TcpStream::connect(format!("127.0.0.1:{tcp}")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&DataMsg::Hello { version, token: [0x5a; 16], return_port: 0, auth: None }.to_bytes()).unwrap();
    assert!(matches!(recv_frame(&mut s), DataMsg::Welcome { .. }), "the holder is served");
    s
}

#[test]
fn regression_unidentified_connections_hold_no_client_slot() {
    require_shared!();
    // 16 idle sockets once refused every real client for 30 s.
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--max-clients", "1"]);
    let idle: Vec<TcpStream> =
        (0..20).map(|_| TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap()).collect();
    // One more that trickles a Hello a byte at a time, never finishing it.
    let mut trickle = TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap();
    trickle
        .write_all(&DataMsg::Hello { version: 3, token: [1; 16], return_port: 0, auth: None }.to_bytes()[..3])
        .unwrap();
    let mut args = srv.client_args("output.stl");
    args.extend_from_slice(&["--busy-wait", "0"]);
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(0), "the real client is served at once: {out:?}");
    drop((idle, trickle));
    stop_and_expect_no_failed_line(srv);
}

/// Stops the server and checks that it printed no failed round trip: connections that never
/// said Hello are none.
fn stop_and_expect_no_failed_line(srv: Server) {
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert!(!s.stdout.contains("FAILED"), "{s:?}");
}

#[test]
fn a_connection_that_sends_no_hello_is_closed_after_a_short_deadline() {
    require_shared!();
    let a = tempdir();
    // The session timeout is long; the Hello deadline is its own, a few seconds.
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--timeout", "600"]);
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("closed by the server, not by the read timeout"), 0);
    stop_and_expect_no_failed_line(srv);
}

#[test]
fn port_probes_and_garbage_print_no_failed_line() {
    require_shared!();
    let a = tempdir();
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &[]);
    for _ in 0..5 {
        drop(TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap());
    }
    let mut http = TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // Told, in the protocol, that this is not a machinaftp Hello, and closed.
    match recv_frame(&mut http) {
        DataMsg::Error { code: ErrorCode::Protocol, reason } => assert!(reason.contains("Hello"), "{reason}"),
        other => panic!("expected an Error, got {other:?}"),
    }
    stop_and_expect_no_failed_line(srv);
}

#[test]
fn a_client_beyond_the_limit_waits_in_line_and_is_served() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--max-clients", "1"]);
    let holder = hold_a_slot(&srv.tcp_port, 3);
    let waiting = Proc::spawn(b.path(), &srv.client_args("output.stl"));
    let told = waiting.wait_stderr(|l| l.contains("in line"));
    assert!(told.contains("next in line"), "{told}");
    drop(holder);
    let out = waiting.finish();
    assert_eq!(out.code(), Some(0), "served once the slot came free: {out:?}");
    assert!(same_contents(&shared("cad_mesh.stl"), &b.path().join("output.stl")));
    srv.proc.signal(libc::SIGTERM);
    drop(srv.proc.finish());
}

#[test]
fn a_full_line_turns_clients_away_and_they_try_again() {
    require_shared!();
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--max-clients", "1", "--queue", "0"]);
    let holder = hold_a_slot(&srv.tcp_port, 3);
    let mut args = srv.client_args("output.stl");
    args.extend_from_slice(&["--busy-wait", "0"]);
    let out = client(b.path(), &args);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the server is busy") && out.stderr.contains("lets no client wait"), "{out:?}");
    assert_eq!(files_in(b.path()), ["client.log"]);

    let patient = Proc::spawn(c.path(), &srv.client_args("output.stl"));
    patient.wait_stderr(|l| l.contains("trying again"));
    drop(holder);
    let out = patient.finish();
    assert_eq!(out.code(), Some(0), "served on a later try: {out:?}");
    srv.proc.signal(libc::SIGTERM);
    drop(srv.proc.finish());
}

#[test]
fn an_older_client_beyond_the_limit_is_told_the_server_is_busy() {
    require_shared!();
    // Version 2 has no Queued message, so such a client cannot wait in line.
    let a = tempdir();
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--max-clients", "1"]);
    let holder = hold_a_slot(&srv.tcp_port, 3);
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", srv.tcp_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&DataMsg::Hello { version: 2, token: [2; 16], return_port: 0, auth: None }.to_bytes()).unwrap();
    match recv_frame(&mut s) {
        DataMsg::Error { code: ErrorCode::Busy, reason } => assert!(reason.contains("server busy"), "{reason}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    drop(holder);
    srv.proc.signal(libc::SIGTERM);
    drop(srv.proc.finish());
}

#[test]
fn regression_concurrent_clients_against_a_server_on_port_0_each_get_their_own_return_channel() {
    require_shared!();
    // With -p 0 the server's ZeroMQ port is not PORT+1; clients left to guess (no --zmq-port)
    // once bound PORT+1 themselves and reached each other: 12 to 14 of 192 round trips failed.
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &[]);
    for round in 0..3 {
        let args = ["--client", "-f", "out.stl", "-H", "127.0.0.1", "-p", &srv.tcp_port];
        for (d, out) in clients_at_once(8, &args) {
            assert_eq!(out.code(), Some(0), "round {round}: {out:?}");
            assert!(same_contents(&mesh, &d.path().join("out.stl")));
        }
    }
    stop_and_expect_no_failed_line(srv);
}

#[test]
fn regression_junk_on_the_return_channel_is_summed_up_not_logged_frame_by_frame() {
    require_shared!();
    // 15 s of junk frames at the ZeroMQ port once wrote 56 MB of DEBUG lines and rotated every
    // old log away.
    let a = tempdir();
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &[]);
    let ctx = zmq::Context::new();
    let junk = ctx.socket(zmq::DEALER).unwrap();
    junk.set_linger(5000).unwrap();
    junk.set_sndhwm(0).unwrap();
    junk.connect(&format!("tcp://127.0.0.1:{}", srv.zmq_port.as_deref().unwrap())).unwrap();
    for i in 0u32..20_000 {
        junk.send(&i.to_be_bytes()[..], 0).unwrap();
    }
    // A Hello for a session that does not exist is answered (with Abort) in order, after the junk.
    let hello = ReturnMsg::Hello { version: 3, token: [0x77; 16] }.to_bytes();
    junk.send(hello, 0).unwrap();
    junk.set_rcvtimeo(20_000).unwrap();
    let answer = junk.recv_bytes(0).expect("the hub got through the junk");
    assert!(matches!(ReturnMsg::decode(&answer), Ok(ReturnMsg::Abort { .. })), "{answer:?}");
    srv.proc.signal(libc::SIGTERM);
    assert_eq!(srv.proc.finish().code(), Some(0));
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert!(log.len() < 32 * 1024, "{} bytes of log for 20,000 junk frames", log.len());
    let total: u64 = log
        .lines()
        .filter_map(|l| l.split("frame_from_unknown_peer=").nth(1))
        .map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 20_000, "every junk frame is counted: {log}");
    assert!(log.contains("hello_unknown_token=1"), "{log}");
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn regression_memory_of_many_sessions_is_given_back_when_the_server_falls_idle() {
    require_shared!();
    // A server once grew from 6 to 37 MB over 64 sessions at once and kept it.
    let a = tempdir();
    let mesh = shared("cad_mesh.stl");
    let srv = Server::start(a.path(), &mesh, &[]);
    let pid = srv.proc.child.id();
    let warm = tempdir();
    assert_eq!(client(warm.path(), &srv.client_args("out.stl")).code(), Some(0));
    let idle = rss_kib(pid);
    for (_, out) in clients_at_once(32, &srv.client_args("out.stl")) {
        assert_eq!(out.code(), Some(0));
    }
    // The server trims once its last session is joined; look until then.
    let limit = idle + 4 * 1024;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rss_kib(pid) > limit && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = rss_kib(pid);
    assert!(after <= limit, "idle at {idle} KiB before 32 sessions, {after} KiB after");
    srv.proc.signal(libc::SIGTERM);
    drop(srv.proc.finish());
}

#[test]
fn regression_a_server_whose_output_nobody_reads_keeps_serving() {
    // The load script read only the `ready` line: once the pipe behind the server's stdout was
    // full, every session blocked printing its result and the clients in line waited forever.
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let (a, b) = (tempdir(), tempdir());
    let small = a.path().join("small.bin");
    std::fs::write(&small, b"0123456789").unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["--server", "-f", small.to_str().unwrap(), "-H", "127.0.0.1", "-p", "0"])
        .current_dir(a.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // SAFETY: fcntl on a pipe descriptor this test owns. A 4 KiB pipe fills after a few sessions.
    unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let mut unread = std::io::BufReader::new(stdout);
    let mut ready = String::new();
    unread.read_line(&mut ready).unwrap();
    let port = ready.split_whitespace().find_map(|w| w.strip_prefix("tcp=")).unwrap().rsplit(':').next().unwrap();
    for i in 0..40 {
        let args = ["--client", "-f", "x.bin", "-H", "127.0.0.1", "-p", port, "--busy-wait", "0", "--timeout", "10"];
        let out = client(b.path(), &args);
        assert_eq!(out.code(), Some(0), "round trip {i}: {out:?}");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "it still stops cleanly");
    drop(unread);
}

#[test]
fn quiet_clients_wait_in_line_without_a_word() {
    require_shared!();
    let (a, b) = (tempdir(), tempdir());
    let srv = Server::start(a.path(), &shared("cad_mesh.stl"), &["--max-clients", "1"]);
    let holder = hold_a_slot(&srv.tcp_port, 3);
    let mut args = srv.client_args("output.stl");
    args.push("-q");
    let waiting = Proc::spawn(b.path(), &args);
    // The server's log says when the client is in line; -q keeps the client's console silent.
    let log = a.path().join("server.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("waits in line") {
        assert!(std::time::Instant::now() < deadline, "the client never got in line");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(holder);
    let out = waiting.finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stderr, "", "-q: nothing but results and errors");
    srv.proc.signal(libc::SIGTERM);
    drop(srv.proc.finish());
}
