//! Helpers for integration tests: real `machinaftp` processes on 127.0.0.1 with port 0, each in
//! its own temporary directory. Readiness is the server's `ready` line, never a sleep; every wait
//! has a deadline so a broken build fails instead of hanging.

#![allow(dead_code)] // each test binary uses a different subset

pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Upper bound for any single wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_machinaftp")
}

/// `../shared` beside the repository.
pub fn shared(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join(name)
}

/// Set by `.ci/run`: the sample data must be there, and a test that needs it never skips.
pub const NEED_SHARED: &str = "MACHINAFTP_TESTS_NEED_SHARED";

/// Whether the sample data in `../shared` is there for `test`; if not, says so by name on
/// stderr (the test is skipped), or fails where [`NEED_SHARED`] is set.
pub fn shared_present(test: &str) -> bool {
    if shared("cad_mesh.stl").is_file() {
        return true;
    }
    let test = test.trim_end_matches("::here");
    assert!(
        std::env::var_os(NEED_SHARED).is_none(),
        "{test}: ../shared/cad_mesh.stl is missing and {NEED_SHARED} is set"
    );
    // Straight to the descriptor, not eprintln!: the test harness hides a passing test's prints.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: it needs the sample data in ../shared (cad_mesh.stl), which is not beside this clone"
    );
    false
}

/// Skips the calling test, by name and loudly, when the sample data in `../shared` is missing.
#[macro_export]
macro_rules! require_shared {
    () => {{
        fn here() {}
        if !common::shared_present(std::any::type_name_of_val(&here)) {
            return;
        }
    }};
}

/// A child process whose output lines arrive on channels; killed if the test drops it.
pub struct Proc {
    pub child: Child,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    pub dir: PathBuf,
}

fn pump(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
        Proc::spawn_program(bin(), dir, args)
    }

    /// Starts machinaftp with these environment variables set too.
    pub fn spawn_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_full(bin(), dir, args, env)
    }

    /// Starts another program (e.g. `ip netns exec ... machinaftp`) the same way.
    pub fn spawn_program(program: &str, dir: &Path, args: &[&str]) -> Proc {
        Proc::spawn_full(program, dir, args, &[])
    }

    fn spawn_full(program: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let stdout = pump(child.stdout.take().unwrap());
        let stderr = pump(child.stderr.take().unwrap());
        Proc { child, stdout, stderr, dir: dir.to_path_buf() }
    }

    /// Waits for a stdout line satisfying `pred`; panics with what was seen on timeout or exit.
    pub fn wait_stdout(&self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stdout, pred, "stdout")
    }

    /// Waits for a stderr line satisfying `pred`.
    pub fn wait_stderr(&self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stderr, pred, "stderr")
    }

    /// Waits for exit (bounded) and returns the status with all remaining output.
    pub fn finish(mut self) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("process did not exit within {DEADLINE:?}");
            }
            // Polling an exit status, not waiting for readiness: the child ends on its own.
            std::thread::sleep(Duration::from_millis(20));
        };
        let drain = |rx: &Receiver<String>| {
            let mut v = Vec::new();
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
                v.push(l);
            }
            v.join("\n")
        };
        Finished { status, stdout: drain(&self.stdout), stderr: drain(&self.stderr) }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(rx: &Receiver<String>, pred: impl Fn(&str) -> bool, what: &str) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = DEADLINE.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no matching line on {what}; saw:\n{}", seen.join("\n"));
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {:?}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

/// A running server and the ports from its `ready` line.
pub struct Server {
    pub proc: Proc,
    pub tcp_port: String,
    pub zmq_port: Option<String>,
}

impl Server {
    /// Starts `machinaftp --server -f FILE -H 127.0.0.1 -p 0 EXTRA...` in `dir` (`--json` among
    /// them too: its `ready` object is read as the text line would be).
    pub fn start(dir: &Path, file: &Path, extra: &[&str]) -> Server {
        let file = file.to_str().unwrap();
        let mut args = vec!["--server", "-f", file, "-H", "127.0.0.1", "-p", "0"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(dir, &args);
        let ready = proc.wait_stdout(|l| l.starts_with("ready ") || l.contains(r#""event":"ready""#));
        let addr_of = |key: &str| match ready.strip_prefix('{') {
            None => ready.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_owned),
            Some(_) => {
                let v: serde_json::Value = serde_json::from_str(&ready).expect("the ready object");
                v[key.trim_end_matches('=')].as_str().map(str::to_owned)
            }
        };
        let port = |addr: String| addr.rsplit(':').next().unwrap().to_owned();
        let tcp_port = addr_of("tcp=").map(port).expect("tcp port in ready line");
        // `zmq=connect:HOST:PORT` under --remotehost names the client's port, not one A bound.
        let zmq_port = addr_of("zmq=").filter(|a| !a.starts_with("connect:")).map(port);
        Server { proc, tcp_port, zmq_port }
    }

    /// The directory the server runs in.
    pub fn proc_dir(&self) -> &Path {
        &self.proc.dir
    }

    /// Client arguments that reach this server.
    pub fn client_args<'a>(&'a self, out: &'a str) -> Vec<&'a str> {
        let mut v = vec!["--client", "-f", out, "-H", "127.0.0.1", "-p", &self.tcp_port];
        if let Some(z) = &self.zmq_port {
            v.extend_from_slice(&["--zmq-port", z]);
        }
        v
    }
}

/// Runs a client to completion.
pub fn client(dir: &Path, args: &[&str]) -> Finished {
    Proc::spawn(dir, args).finish()
}

/// Runs `n` clients with `args` at once, each in a fresh directory, and returns each one's
/// directory and outcome once all have ended.
pub fn clients_at_once(n: usize, args: &[&str]) -> Vec<(tempfile::TempDir, Finished)> {
    let procs: Vec<_> = (0..n)
        .map(|_| {
            let dir = tempdir();
            let p = Proc::spawn(dir.path(), args);
            (dir, p)
        })
        .collect();
    procs.into_iter().map(|(dir, p)| (dir, p.finish())).collect()
}

/// A fresh directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Writes `size` pseudo-random bytes, streaming.
pub fn write_random(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut s = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Whether two files have identical contents (streamed).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let hash = |p: &Path| {
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
        h.finalize()
    };
    std::fs::metadata(a).unwrap().len() == std::fs::metadata(b).unwrap().len() && hash(a) == hash(b)
}

/// Names of files in `dir` (not recursive).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Asserts that no temporary `.part` file is left in `dir`.
pub fn assert_no_partials(dir: &Path) {
    let left: Vec<_> = files_in(dir).into_iter().filter(|n| n.ends_with(".part") || n.ends_with(".partial")).collect();
    assert!(left.is_empty(), "temporary files left in {}: {left:?}", dir.display());
}

/// Asserts that an interrupted transfer left in `dir` no temporary files but `n` resumable
/// partial copies, hidden and clearly named.
pub fn assert_kept_for_resume(dir: &Path, n: usize) {
    let temps: Vec<_> = files_in(dir).into_iter().filter(|n| n.ends_with(".part")).collect();
    assert!(temps.is_empty(), "temporary files left in {}: {temps:?}", dir.display());
    let kept = resume_partials(dir);
    assert_eq!(kept.len(), n, "resumable partial copies in {}: {kept:?}", dir.display());
}

/// The resumable partial copies kept in `dir` (`.NAME.resume-ID.partial`).
pub fn resume_partials(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|n| n.starts_with('.') && n.contains(".resume-") && n.ends_with(".partial"))
        .collect()
}

/// Which way through a [`Relay`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Way {
    /// From the connecting side (B) to the target (A).
    Up,
    /// From the target (A) to the connecting side (B).
    Down,
}

/// Starts a server with `start`, and listens on 127.0.0.2 at its ZeroMQ port's number: where a
/// client pointed at 127.0.0.2 goes after A's Welcome names that port, for a relay to take it
/// there. Ephemeral ports are unique per address only, so another socket on 127.0.0.2 (another
/// test's relay) may hold that number: then that server is stopped and another one started.
pub fn server_and_twin_listener(start: impl Fn() -> Server) -> (Server, std::net::TcpListener) {
    let mut tries = 0;
    loop {
        let srv = start();
        let zmq = srv.zmq_port.clone().expect("the server binds its ZeroMQ port");
        match std::net::TcpListener::bind(format!("127.0.0.2:{zmq}")) {
            Ok(listener) => return (srv, listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 10 => {
                eprintln!("127.0.0.2:{zmq} is taken; starting another server");
                tries += 1;
                srv.proc.signal(libc::SIGKILL);
                srv.proc.finish();
            }
            Err(e) => panic!("cannot listen on 127.0.0.2:{zmq}: {e}"),
        }
    }
}

/// A TCP relay on a loopback address that forwards every connection to `target`, optionally
/// flipping one bit of one byte at `offset` of the stream going `way` (counted per connection).
/// A stand-in for a link that corrupts, between real processes.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn start(listen: &str, target: std::net::SocketAddr, flip: Option<(Way, u64)>) -> Relay {
        let listener =
            std::net::TcpListener::bind(listen).unwrap_or_else(|e| panic!("relay: cannot listen on {listen}: {e}"));
        Relay::on(listener, target, flip)
    }

    /// A relay accepting on `listener`.
    pub fn on(listener: std::net::TcpListener, target: std::net::SocketAddr, flip: Option<(Way, u64)>) -> Relay {
        use std::net::TcpStream;
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(target) else { continue };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let pipe = |from: TcpStream, to: TcpStream, way: Way| {
                    let at = flip.filter(|(w, _)| *w == way).map(|(_, at)| at);
                    std::thread::spawn(move || copy_flipping(from, to, at));
                };
                pipe(down.try_clone().unwrap(), up.try_clone().unwrap(), Way::Up);
                pipe(up, down, Way::Down);
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn copy_flipping(mut from: std::net::TcpStream, mut to: std::net::TcpStream, at: Option<u64>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = at
            && (pos..pos + n as u64).contains(&at)
        {
            buf[(at - pos) as usize] ^= 0x20;
        }
        pos += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
