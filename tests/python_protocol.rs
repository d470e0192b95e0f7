//! `--protocol python`: our A with the Python version's B and our B with its A, both played by
//! `tests/python_double.py`, a double written from `../shared/seed/PYTHON-PROTOCOL.md` alone.
//! It needs python3 with pyzmq (`.ci/run` installs it).

mod common;

use std::path::Path;

use common::*;

const DOUBLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_double.py");

/// Whether python3 can run the double; says loudly when it cannot (CI makes it mandatory).
fn double_runs(test: &str) -> bool {
    let ok =
        std::process::Command::new("python3").args(["-c", "import zmq"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("MACHINAFTP_TESTS_NEED_SHARED").is_none(),
            "{test}: python3 with pyzmq is required here (pip install pyzmq)"
        );
        eprintln!("SKIPPED {test}: python3 with pyzmq is not installed (pip install pyzmq)");
    }
    ok
}

/// A port for the return channel, held by a socket that is bound (with SO_REUSEADDR, as libzmq
/// binds) but not listening: nobody else gets it, and a ROUTER can still bind it. The Python
/// version's own port, 8091, may be in use on a test machine.
fn reserved_port() -> (socket2::Socket, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port().to_string();
    (sock, port)
}

/// The built-in sample mesh and its vertex CSV, made by this build.
fn sample(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (stl, csv) = (dir.join("sample.stl"), dir.join("sample.csv"));
    assert_eq!(client(dir, &["sample", stl.to_str().unwrap()]).code(), Some(0));
    let again = client(dir, &["sample", stl.to_str().unwrap()]);
    assert!(again.code() == Some(2) && again.stderr.contains("already exists"), "{again:?}");
    assert_eq!(client(dir, &["stl2csv", stl.to_str().unwrap(), "-o", csv.to_str().unwrap()]).code(), Some(0));
    (stl, csv)
}

fn double(dir: &Path, args: &[&str]) -> Proc {
    let mut all = vec![DOUBLE];
    all.extend_from_slice(args);
    Proc::spawn_program("python3", dir, &all)
}

/// Our A, as the Python version's README starts it (with --remotehost, so it makes one round
/// trip and exits), serving the Python version's B.
#[test]
fn our_server_serves_the_python_client() {
    if !double_runs("our_server_serves_the_python_client") {
        return;
    }
    let (a, b) = (tempdir(), tempdir());
    let (stl, _) = sample(a.path());
    let (_hold, zport) = reserved_port();
    let srv = Proc::spawn(
        a.path(),
        &["--server", "-f", "./sample.stl", "-H", "127.0.0.1", "-p", "0", "--remotehost", "127.0.0.1"]
            .into_iter()
            .chain(["--protocol", "python", "--zmq-port", &zport, "--timeout", "20"])
            .collect::<Vec<_>>(),
    );
    let ready = srv.wait_stdout(|l| l.starts_with("ready "));
    assert!(ready.ends_with(&format!("zmq=connect:127.0.0.1:{zport}")), "{ready}");
    let port = ready.split_whitespace().nth(1).unwrap().rsplit(':').next().unwrap().to_owned();
    let py = double(b.path(), &["client", "output.stl", "--port", &port, "--zmq-port", &zport]).finish();
    assert_eq!(py.code(), Some(0), "{py:?}");
    assert_eq!(py.stdout.lines().collect::<Vec<_>>(), ["Done! - RX", "Done! - TX"], "{py:?}");
    let srv = srv.finish();
    assert_eq!(srv.code(), Some(0), "{srv:?}");
    let lines: Vec<_> = srv.stdout.lines().collect();
    assert_eq!(&lines[..2], ["Done! - TX", "Done! - RX"], "{srv:?}");
    assert!(lines[2].starts_with("verified ") && lines[2].contains("sent and returned identical"), "{srv:?}");
    assert!(same_contents(&stl, &b.path().join("output.stl")));
    assert!(same_contents(&stl, &a.path().join("output.stl")));
    assert_no_partials(a.path());
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert!(log.contains("Python version's protocol"), "{log}");
}

/// Our B fetching from the Python version's A: byte-exact, and it still writes the vertex CSV.
#[test]
fn our_client_fetches_from_the_python_server() {
    if !double_runs("our_client_fetches_from_the_python_server") {
        return;
    }
    for rush in [false, true] {
        let (a, b) = (tempdir(), tempdir());
        let (stl, csv) = sample(a.path());
        let (hold, zport) = reserved_port();
        let mut args = vec!["server", "sample.stl", "--port", "0", "--zmq-port", &zport];
        if rush {
            // Preamble and file bytes in one write, before the acknowledgement: the preamble is
            // parsed off the front and what follows is file data.
            args.push("--rush");
        }
        let py = double(a.path(), &args);
        let port = py.wait_stdout(|l| l.starts_with("listening ")).split_whitespace().nth(1).unwrap().to_owned();
        let out = client(
            b.path(),
            &["--client", "-f", "output.stl", "-H", "127.0.0.1", "-p", &port, "--protocol", "python"]
                .into_iter()
                .chain(["--zmq-port", &zport, "--timeout", "20"])
                .collect::<Vec<_>>(),
        );
        drop(hold);
        assert_eq!(out.code(), Some(0), "rush={rush}: {out:?}");
        let lines: Vec<_> = out.stdout.lines().collect();
        assert_eq!(&lines[..2], ["Done! - RX", "Done! - TX"], "{out:?}");
        assert!(lines[2].contains("the Python version's server confirms nothing"), "{out:?}");
        assert!(lines[2].contains("CSV output.csv (27648 vertices) written here"), "{out:?}");
        let py = py.finish();
        assert_eq!(py.stdout.lines().collect::<Vec<_>>(), ["Done! - TX", "Done! - RX"], "rush={rush}: {py:?}");
        assert!(same_contents(&stl, &b.path().join("output.stl")));
        assert!(same_contents(&stl, &a.path().join("output.stl")), "the double's returned copy");
        assert!(same_contents(&csv, &b.path().join("output.csv")));
        assert_eq!(files_in(b.path()), ["client.log", "output.csv", "output.stl"]);
    }
}

#[test]
fn damage_on_either_leg_is_found_and_nothing_is_saved() {
    if !double_runs("damage_on_either_leg_is_found_and_nothing_is_saved") {
        return;
    }
    // The Python version's A sends a flipped byte under the right preamble: our B says so.
    let (a, b) = (tempdir(), tempdir());
    let (_, _) = sample(a.path());
    let (_hold, zport) = reserved_port();
    let py = double(a.path(), &["server", "sample.stl", "--port", "0", "--zmq-port", &zport, "--corrupt"]);
    let port = py.wait_stdout(|l| l.starts_with("listening ")).split_whitespace().nth(1).unwrap().to_owned();
    let out = client(
        b.path(),
        &["--client", "-f", "output.stl", "-p", &port, "--protocol", "python", "--zmq-port", &zport, "--timeout", "5"],
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch on the data leg"), "{out:?}");
    assert_eq!(files_in(b.path()), ["client.log"]);
    drop(py);

    // The Python version's B returns a flipped byte with a preamble computed from it: our A
    // compares with its original, not with B's word, and keeps nothing.
    let (a, b) = (tempdir(), tempdir());
    let (_, _) = sample(a.path());
    let (_hold, zport) = reserved_port();
    let srv = Proc::spawn(
        a.path(),
        &["--server", "-f", "sample.stl", "-p", "0", "--once", "--protocol", "python", "--zmq-port", &zport],
    );
    let ready = srv.wait_stdout(|l| l.starts_with("ready "));
    let port = ready.split_whitespace().nth(1).unwrap().rsplit(':').next().unwrap().to_owned();
    let _py = double(b.path(), &["client", "output.stl", "--port", &port, "--zmq-port", &zport, "--corrupt"]).finish();
    let srv = srv.finish();
    assert_eq!(srv.code(), Some(1), "{srv:?}");
    assert!(srv.stderr.contains("checksum mismatch on the return leg"), "{srv:?}");
    assert!(!a.path().join("output.stl").exists());
    assert_no_partials(a.path());
}

#[test]
fn a_server_that_says_nothing_times_out() {
    // Accepts and never sends a preamble (the Python client would hang for ever).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let b = tempdir();
    let out = client(b.path(), &["--client", "-f", "x.stl", "-p", &port, "--protocol", "python", "--timeout", "1"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("handshake: the peer sent nothing for 1 s"), "{out:?}");
    assert_eq!(files_in(b.path()), ["client.log"]);
    // What is not a preamble is named as such.
    drop(listener);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let b = tempdir();
    let garbage = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        s
    });
    let out = client(b.path(), &["--client", "-f", "x.stl", "-p", &port, "--protocol", "python", "--timeout", "5"]);
    drop(garbage.join());
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("does not follow the Python version's protocol: the preamble is not JSON"), "{out:?}");
}
