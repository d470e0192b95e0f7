//! A and B on two hosts: two network namespaces joined by a veth pair (10.77.x.0/24, addresses
//! that exist only inside the namespaces this test creates). Needs root and iproute2; where
//! namespaces cannot be made the tests say so and pass without running.
//!
//! Inside fresh namespaces no other process holds a port, so the Python version's invocations
//! run exactly as written, fixed ports included.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

struct Hosts {
    a: String,
    b: String,
}

const ADDR_A: &str = "10.77.0.1";
const ADDR_B: &str = "10.77.0.2";

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
}

impl Hosts {
    /// Creates the two namespaces, or `None` (with a note) where that is not possible here.
    fn new(tag: &str) -> Option<Hosts> {
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let h = Hosts { a: format!("mftpA{id}"), b: format!("mftpB{id}") };
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        let ok = ip(&["netns", "add", &h.a])
            && ip(&["netns", "add", &h.b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &h.a])
            && ip(&["link", "set", &vb, "netns", &h.b])
            && ip(&["-n", &h.a, "addr", "add", &format!("{ADDR_A}/24"), "dev", &va])
            && ip(&["-n", &h.b, "addr", "add", &format!("{ADDR_B}/24"), "dev", &vb])
            && ip(&["-n", &h.a, "link", "set", &va, "up"])
            && ip(&["-n", &h.b, "link", "set", &vb, "up"])
            && ip(&["-n", &h.a, "link", "set", "lo", "up"])
            && ip(&["-n", &h.b, "link", "set", "lo", "up"]);
        if !ok {
            eprintln!("two_hosts: cannot create network namespaces here (needs root and iproute2); not run");
            return None;
        }
        Some(h)
    }

    fn veth_a(&self) -> String {
        format!("va{}", &self.a[5..])
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// `ip netns exec NS machinaftp ARGS...` in `dir`.
fn spawn_in(ns: &str, dir: &Path, args: &[&str]) -> Proc {
    let mut full = vec!["netns", "exec", ns, bin()];
    full.extend_from_slice(args);
    Proc::spawn_program("ip", dir, &full)
}

#[test]
fn seed_invocations_across_two_hosts_in_both_topologies() {
    require_shared!();
    let Some(h) = Hosts::new("s") else { return };
    let mesh = shared("cad_mesh.stl");
    for remote in [false, true] {
        let (a, b) = (tempdir(), tempdir());
        std::fs::copy(&mesh, a.path().join("cad_mesh.stl")).unwrap();
        let mut srv_args = vec!["--server", "-f", "./cad_mesh.stl", "-H", ADDR_A, "-p", "8080", "--once"];
        if remote {
            srv_args.extend_from_slice(&["--remotehost", ADDR_B]);
        }
        let srv = spawn_in(&h.a, a.path(), &srv_args);
        let ready = srv.wait_stdout(|l| l.starts_with("ready "));
        // The ready line names where the return channel will be: A's own port, or the one a
        // client binds by default on REMOTEHOST.
        let zmq = if remote { format!("zmq=connect:{ADDR_B}:8081") } else { format!("zmq={ADDR_A}:8081") };
        assert!(ready.ends_with(&zmq), "remote={remote}: {ready}");
        let cli = spawn_in(&h.b, b.path(), &["--client", "-f", "output.stl", "-H", ADDR_A, "-p", "8080"]);
        let out = cli.finish();
        assert_eq!(out.code(), Some(0), "remote={remote}: {out:?}");
        let s = srv.finish();
        assert_eq!(s.code(), Some(0), "remote={remote}: {s:?}");
        assert!(same_contents(&mesh, &a.path().join("output.stl")));
        assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("output.csv")));
        // Reachable from the network without a secret: A says so.
        assert!(s.stderr.contains(&format!("on {ADDR_A} without a secret")), "remote={remote}: {s:?}");
        let log = std::fs::read_to_string(b.path().join("client.log")).unwrap();
        let wiring = if remote { "bound at tcp://[::]:8081" } else { "connected to tcp://10.77.0.1:8081" };
        assert!(log.contains(&format!("return channel up wiring={wiring}")), "remote={remote}: {log}");
    }
}

/// Bytes the namespace's veth has sent and received.
fn counters(ns: &str, dev: &str) -> (u64, u64) {
    let read = |what: &str| -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", &format!("/sys/class/net/{dev}/statistics/{what}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (read("tx_bytes"), read("rx_bytes"))
}

/// The size of the one resumable partial copy in `dir` (0 if none).
fn partial_len(dir: &Path) -> u64 {
    resume_partials(dir).iter().map(|n| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len())).max().unwrap_or(0)
}

const MIB: u64 = 1 << 20;
const CUT_SIZE: u64 = 64 * MIB;

/// Serves `big` from namespace A (`--once`, with `extra`) and runs the client in B; the client
/// is returned still running.
fn start_pair(h: &Hosts, a: &Path, b: &Path, big: &Path, extra: &[&str]) -> (Proc, Proc) {
    let mut args = vec!["-s", "-f", big.to_str().unwrap(), "-H", ADDR_A, "-p", "9000", "--once"];
    args.extend_from_slice(extra);
    let srv = spawn_in(&h.a, a, &args);
    srv.wait_stdout(|l| l.starts_with("ready "));
    let cli = spawn_in(&h.b, b, &["-c", "-f", "big.bin", "-H", ADDR_A, "-p", "9000", "--timeout", "2", "-v"]);
    (srv, cli)
}

/// Pulls the cable (no FIN, no RST, just silence) once `cut_when` holds; both sides give up after
/// their 2 s timeout and keep what they had. Then plugs it back, serves the same file again, runs
/// the same client command, and checks that each leg carried at most 5% more than its missing
/// bytes (jumbo frames keep the headers to about 1%), plus 256 KiB for what travels whatever is
/// missing: the handshake, the trailer, credits, and TCP's acknowledgements of the other leg.
/// With `shape_return`, B's side of the link is shaped to 20 Mbit/s, so the return leg trails.
fn cut_then_resume(tag: &str, extra: &[&str], shape_return: bool, cut_when: impl Fn(&Path, &Path) -> bool) {
    let Some(h) = Hosts::new(tag) else { return };
    let (va, vb) = (h.veth_a(), format!("vb{}", &h.b[5..]));
    assert!(
        ip(&["-n", &h.a, "link", "set", &va, "mtu", "9000"]) && ip(&["-n", &h.b, "link", "set", &vb, "mtu", "9000"])
    );
    if shape_return {
        let tc = [
            "netns", "exec", &h.b, "tc", "qdisc", "add", "dev", &vb, "root", "tbf", "rate", "20mbit", "burst", "64kb",
            "latency", "400ms",
        ];
        assert!(Command::new("ip").args(tc).status().is_ok_and(|s| s.success()), "tc tbf");
    }
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    write_random(&big, CUT_SIZE, 9);
    let (srv, cli) = start_pair(&h, a.path(), b.path(), &big, extra);
    cli.wait_stderr(|l| l.contains("accepted; receiving"));
    let start = std::time::Instant::now();
    // Polled: nothing announces a byte on disk.
    while !cut_when(a.path(), b.path()) {
        assert!(start.elapsed() < DEADLINE, "the transfer never got far enough to cut");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ip(&["-n", &h.a, "link", "set", &va, "down"]));
    let out = cli.finish();
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("sent nothing for 2 s"), "{out:?}");
    assert!(out.stderr.contains("run the same command again to resume"), "{out:?}");
    let s = srv.finish();
    assert_eq!(s.code(), Some(3), "{s:?}");
    assert_kept_for_resume(a.path(), 1);
    assert_kept_for_resume(b.path(), 1);
    let (held_b, held_a) = (partial_len(b.path()), partial_len(a.path()));
    // Plug the cable back in (and forget the neighbours that went unanswered while it was out),
    // wait for both ends to see the carrier, and run the same command again.
    assert!(ip(&["-n", &h.a, "link", "set", &va, "up"]));
    let carrier = |ns: &str, dev: &str| {
        let path = format!("/sys/class/net/{dev}/carrier");
        Command::new("ip").args(["netns", "exec", ns, "cat", &path]).output().is_ok_and(|o| o.stdout.starts_with(b"1"))
    };
    let start = std::time::Instant::now();
    while !(carrier(&h.a, &va) && carrier(&h.b, &vb)) {
        assert!(start.elapsed() < DEADLINE, "the link never came back");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ip(&["-n", &h.a, "neigh", "flush", "dev", &va]);
    ip(&["-n", &h.b, "neigh", "flush", "dev", &vb]);
    let before = counters(&h.a, &va);
    let (srv, cli) = start_pair(&h, a.path(), b.path(), &big, &[]);
    let out = cli.finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(srv.finish().code(), Some(0));
    let after = counters(&h.a, &va);
    let (sent, returned) = (after.0 - before.0, after.1 - before.1);
    let (missing_data, missing_return) = (CUT_SIZE - held_b, CUT_SIZE - held_a);
    eprintln!(
        "resume after a cut: data leg {sent} bytes on the wire for {missing_data} missing ({:.3}x); \
         return leg {returned} for {missing_return} ({:.3}x)",
        sent as f64 / missing_data.max(1) as f64,
        returned as f64 / missing_return.max(1) as f64
    );
    let slack = 256.0 * 1024.0;
    assert!(
        sent as f64 <= 1.05 * missing_data as f64 + slack,
        "data leg: {sent} bytes resent for {missing_data} missing"
    );
    assert!(
        returned as f64 <= 1.05 * missing_return as f64 + slack,
        "return leg: {returned} for {missing_return} missing"
    );
    let listing = format!("A: {:?}, B: {:?}", files_in(a.path()), files_in(b.path()));
    eprintln!("{listing}");
    assert!(same_contents(&big, &b.path().join("big.bin")), "{listing}");
    assert!(same_contents(&big, &a.path().join("output.bin")), "{listing}");
    assert_no_partials(a.path());
    assert_no_partials(b.path());
}

#[test]
fn resume_after_the_link_is_cut_while_both_legs_run() {
    // A data leg throttled to 8 MB/s; the cut comes once B holds 16 MiB (A about as much back).
    cut_then_resume("r", &["--rate-limit", "8M", "--timeout", "2"], false, |_, b| partial_len(b) >= 16 * MIB);
}

#[test]
fn resume_after_the_link_is_cut_during_the_return_leg_alone() {
    // The return leg trails the data leg by B's window and buffers; shaped, that is seconds. The
    // cut comes once B has verified and saved the whole file and A has part of it back: only the
    // return leg's missing bytes travel again, and the data leg sends none.
    cut_then_resume("q", &["--timeout", "2"], true, |a, b| b.join("big.bin").exists() && partial_len(a) < CUT_SIZE);
}

#[test]
fn cut_link_is_a_timeout_not_a_hang() {
    let Some(h) = Hosts::new("c") else { return };
    let (a, b) = (tempdir(), tempdir());
    let big = a.path().join("big.bin");
    write_random(&big, 20_000_000, 9);
    let srv = spawn_in(
        &h.a,
        a.path(),
        &[
            "-s",
            "-f",
            big.to_str().unwrap(),
            "-H",
            ADDR_A,
            "-p",
            "9000",
            "--rate-limit",
            "2M",
            "--timeout",
            "2",
            "--once",
        ],
    );
    srv.wait_stdout(|l| l.starts_with("ready "));
    let cli = spawn_in(&h.b, b.path(), &["-c", "-f", "big.bin", "-H", ADDR_A, "-p", "9000", "--timeout", "2", "-v"]);
    cli.wait_stderr(|l| l.contains("accepted; receiving"));
    // Pull the cable: no FIN, no RST, just silence.
    assert!(ip(&["-n", &h.a, "link", "set", &h.veth_a(), "down"]));
    let out = cli.finish();
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("sent nothing for 2 s"), "{out:?}");
    let s = srv.finish();
    assert_eq!(s.code(), Some(3), "{s:?}");
    // Nothing half-written in sight: at most a hidden partial copy each, for a resume.
    for dir in [a.path(), b.path()] {
        let visible: Vec<_> = files_in(dir).into_iter().filter(|n| !n.starts_with('.')).collect();
        assert!(visible.iter().all(|n| ["big.bin", "server.log", "client.log"].contains(&n.as_str())), "{visible:?}");
        assert!(resume_partials(dir).len() <= 1);
        assert!(files_in(dir).iter().all(|n| !n.ends_with(".part")));
    }
    assert!(!b.path().join("big.bin").exists());
}
