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
        srv.wait_stdout(|l| l.starts_with("ready "));
        let cli = spawn_in(&h.b, b.path(), &["--client", "-f", "output.stl", "-H", ADDR_A, "-p", "8080"]);
        let out = cli.finish();
        assert_eq!(out.code(), Some(0), "remote={remote}: {out:?}");
        let s = srv.finish();
        assert_eq!(s.code(), Some(0), "remote={remote}: {s:?}");
        assert!(same_contents(&mesh, &a.path().join("output.stl")));
        assert!(same_contents(&shared("cad_mesh.csv"), &a.path().join("output.csv")));
        let log = std::fs::read_to_string(b.path().join("client.log")).unwrap();
        let wiring = if remote { "bound at tcp://[::]:8081" } else { "connected to tcp://10.77.0.1:8081" };
        assert!(log.contains(&format!("return channel up wiring={wiring}")), "remote={remote}: {log}");
    }
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
    assert_eq!(files_in(b.path()), ["client.log"]);
    let s = srv.finish();
    assert_eq!(s.code(), Some(3), "{s:?}");
    assert_no_partials(a.path());
}
