//! `machinaftp demo`: runs A and B as real processes on loopback with the built-in sample mesh,
//! each in its own directory as if on two workstations, and shows what happened.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::DemoArgs;
use crate::error::{Error, exit};
use crate::stl::sample;

/// How long the demo waits for the server's `ready` line.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Writes a line of the demo's narration; a closed output ends nothing (the demo still runs).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Runs the demo, narrating to `out`, and returns the exit status to use.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(Error::output(d))?;
            if std::fs::read_dir(d).map_err(Error::output(d))?.next().is_some() {
                return Err(Error::Usage(format!("{} is not empty; give an empty or new --dir", d.display())));
            }
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("machinaftp-demo-")
            .tempdir()
            .map_err(Error::output(&std::env::temp_dir()))?
            .keep(),
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).map_err(Error::output(d))?;
    }
    let mesh = a.join("sample.stl");
    let f = File::create(&mesh).map_err(Error::output(&mesh))?;
    sample::write_torus(BufWriter::new(f)).map_err(Error::output(&mesh))?;
    say!(out, "machinaftp demo in {}", dir.display());
    say!(
        out,
        "  sample mesh: a/sample.stl, a torus of {} facets ({} bytes, binary STL)",
        sample::facet_count(),
        sample::file_size()
    );
    let exe = std::env::current_exe().map_err(|e| Error::Usage(format!("cannot find this program's path: {e}")))?;

    let server_args = ["--server", "-f", "sample.stl", "-H", "127.0.0.1", "-p", "0", "--once"];
    say!(out, "\n[A] $ machinaftp {}   (in a/)", server_args.join(" "));
    let mut server = spawn(&exe, &server_args, &a)?;
    let (lines, stdout_thread) = forward_lines(&mut server);
    let ready = match wait_ready(&lines, out) {
        Some(line) => line,
        None => {
            let _ = server.kill();
            let status = server.wait().ok();
            print_stderr("A", &mut server, out);
            return Err(Error::Usage(format!("the server did not become ready ({status:?})")));
        }
    };
    say!(out, "[A] {ready}");
    let (tcp, zmq) = parse_ready(&ready).ok_or_else(|| Error::Usage(format!("unexpected ready line: {ready}")))?;

    let client_args = ["--client", "-f", "output.stl", "-H", "127.0.0.1", "-p", &tcp, "--zmq-port", &zmq];
    say!(out, "[B] $ machinaftp {}   (in b/)", client_args.join(" "));
    let client = spawn(&exe, &client_args, &b)?;
    let client_out = client.wait_with_output().map_err(|e| Error::Usage(format!("cannot wait for the client: {e}")))?;
    for line in
        String::from_utf8_lossy(&client_out.stderr).lines().chain(String::from_utf8_lossy(&client_out.stdout).lines())
    {
        say!(out, "[B] {line}");
    }
    let server_status = server.wait().map_err(|e| Error::Usage(format!("cannot wait for the server: {e}")))?;
    drop(lines);
    if let Ok(rest) = stdout_thread.join() {
        for l in rest {
            say!(out, "[A] {l}");
        }
    }
    print_stderr("A", &mut server, out);

    say!(out, "\nFiles:");
    for (label, path) in [
        ("a/sample.stl  (A's original)", a.join("sample.stl")),
        ("b/output.stl  (B's received copy)", b.join("output.stl")),
        ("a/output.stl  (A's returned copy)", a.join("output.stl")),
        ("b/output.csv  (B's vertex CSV)", b.join("output.csv")),
        ("a/output.csv  (A's returned CSV)", a.join("output.csv")),
    ] {
        match digest(&path) {
            Ok((size, d)) => say!(out, "  {label:38} {size:>9} bytes  BLAKE3 {}", &d[..16]),
            Err(e) => say!(out, "  {label:38} missing: {e}"),
        }
    }
    say!(out, "  logs: a/server.log, b/client.log");
    say!(out, "  (the directory is kept so you can look; remove it when done: rm -r {})", dir.display());
    let same = |p: &Path| digest(p).ok().map(|x| x.1);
    let original = same(&a.join("sample.stl"));
    let verified = server_status.success()
        && client_out.status.success()
        && original.is_some()
        && original == same(&b.join("output.stl"))
        && original == same(&a.join("output.stl"))
        && same(&b.join("output.csv")).is_some()
        && same(&b.join("output.csv")) == same(&a.join("output.csv"));
    if verified {
        let rows = std::fs::read(b.join("output.csv")).map(|c| c.iter().filter(|&&x| x == b'\n').count()).unwrap_or(0);
        say!(
            out,
            "\nVERIFIED: A's returned copy and B's copy are byte-for-byte identical to the original, and the \
             vertex CSV ({rows} lines, one per vertex of each facet) reached A intact (exit 0 on both sides)."
        );
        Ok(exit::OK)
    } else {
        say!(
            out,
            "\nNOT VERIFIED: server exit {:?}, client exit {:?}; see the logs above and in {}",
            server_status.code(),
            client_out.status.code(),
            dir.display()
        );
        Ok(client_out.status.code().filter(|c| *c != 0).unwrap_or(exit::MISMATCH))
    }
}

fn spawn(exe: &Path, args: &[&str], dir: &Path) -> Result<Child, Error> {
    Command::new(exe)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot start {}: {e}", exe.display())))
}

/// Reads the child's stdout on a thread: the first lines (until `ready`) go to the channel, the
/// rest are collected and returned when the child closes stdout.
fn forward_lines(child: &mut Child) -> (mpsc::Receiver<String>, std::thread::JoinHandle<Vec<String>>) {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let handle = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let Some(out) = stdout else { return rest };
        let mut sent_ready = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if sent_ready {
                rest.push(line);
            } else {
                sent_ready = line.starts_with("ready");
                let _ = tx.send(line);
            }
        }
        rest
    });
    (rx, handle)
}

fn wait_ready(lines: &mpsc::Receiver<String>, out: &mut dyn Write) -> Option<String> {
    loop {
        let line = lines.recv_timeout(READY_WAIT).ok()?;
        if line.starts_with("ready") {
            return Some(line);
        }
        say!(out, "[A] {line}");
    }
}

/// `ready tcp=127.0.0.1:41234 zmq=127.0.0.1:41235` -> ("41234", "41235").
pub fn parse_ready(line: &str) -> Option<(String, String)> {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|addr| addr.rsplit(':').next())
            .map(str::to_owned)
    };
    Some((field("tcp=")?, field("zmq=")?))
}

fn print_stderr(label: &str, child: &mut Child, out: &mut dyn Write) {
    if let Some(mut err) = child.stderr.take() {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        for l in s.lines() {
            say!(out, "[{label}] {l}");
        }
    }
}

fn digest(path: &Path) -> io::Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let n = io::copy(&mut File::open(path)?, &mut h)?;
    Ok((n, h.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        assert_eq!(
            parse_ready("ready tcp=127.0.0.1:41234 zmq=127.0.0.1:41235"),
            Some(("41234".into(), "41235".into()))
        );
        assert_eq!(parse_ready("ready tcp=[::1]:5 zmq=[::1]:6"), Some(("5".into(), "6".into())));
        assert_eq!(parse_ready("nothing"), None);
    }
}
