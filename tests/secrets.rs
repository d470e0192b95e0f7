//! Secured round trips (`--secret`, protocol version 5): who gets served, what a wrong or
//! missing secret gets, what an eavesdropper on loopback sees, and what a man in the middle can
//! do to records on the data channel and to messages on the return channel.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use common::*;

const SECRET: &str = "castle-7-drum";

fn served(dir: &Path, size: u64) -> std::path::PathBuf {
    let file = dir.join("part.bin");
    write_random(&file, size, 21);
    file
}

fn client_with(dir: &Path, srv: &Server, out: &str, extra: &[&str]) -> Finished {
    let mut args = srv.client_args(out);
    args.extend_from_slice(&["--timeout", "10"]);
    args.extend_from_slice(extra);
    client(dir, &args)
}

#[test]
fn the_right_secret_is_served_and_the_wrong_one_or_none_is_refused() {
    let (a, b) = (tempdir(), tempdir());
    let file = served(a.path(), 3_000_000);
    let srv = Server::start(a.path(), &file, &["--secret", SECRET, "--timeout", "10"]);
    // The right secret, three ways: the option, a file, the environment.
    let ok = client_with(b.path(), &srv, "one.bin", &["--secret", SECRET]);
    assert_eq!(ok.code(), Some(0), "{ok:?}");
    std::fs::write(b.path().join("secret.txt"), format!("{SECRET}\n")).unwrap();
    let ok = client_with(b.path(), &srv, "two.bin", &["--secret-file", "secret.txt"]);
    assert_eq!(ok.code(), Some(0), "{ok:?}");
    let mut args = srv.client_args("three.bin");
    args.extend_from_slice(&["--timeout", "10"]);
    let ok = Proc::spawn_with_env(b.path(), &args, &[("MACHINAFTP_SECRET", SECRET)]).finish();
    assert_eq!(ok.code(), Some(0), "{ok:?}");
    for f in ["one.bin", "two.bin", "three.bin"] {
        assert!(same_contents(&file, &b.path().join(f)), "{f}");
    }
    // A wrong secret, and none: refused before any byte of the file, status 6, nothing written.
    let c = tempdir();
    let wrong = client_with(c.path(), &srv, "wrong.bin", &["--secret", "castle-7-drun"]);
    assert_eq!(wrong.code(), Some(6), "{wrong:?}");
    assert!(wrong.stderr.contains("authentication failed: the server did not prove the secret"), "{wrong:?}");
    assert!(wrong.stderr.contains("machinaftp keygen"), "the hint: {wrong:?}");
    let none = client_with(c.path(), &srv, "none.bin", &[]);
    assert_eq!(none.code(), Some(6), "{none:?}");
    assert!(none.stderr.contains("this server requires a secret"), "{none:?}");
    assert_eq!(files_in(c.path()), ["client.log"]);
    // The server kept serving, said nothing of the refusals on stdout, and logged the first of
    // them as a line (the rest are counted, and summarised when it stops).
    let again = client_with(b.path(), &srv, "four.bin", &["--secret", SECRET]);
    assert_eq!(again.code(), Some(0), "{again:?}");
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.code(), Some(0), "{s:?}");
    assert_eq!(s.stdout.matches("verified ").count(), 4, "{s:?}");
    assert!(!s.stdout.contains("FAILED"), "{s:?}");
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert_eq!(log.matches("refused: ").count(), 1, "{log}");
    assert!(log.contains("clients refused for not proving the secret") && log.contains("wrong_secret=1"), "{log}");
    assert!(log.contains("no_secret=1"), "{log}");
}

#[test]
fn a_secret_on_one_side_only_is_refused_by_that_side_s_peer_or_itself() {
    let (a, b) = (tempdir(), tempdir());
    let file = served(a.path(), 100_000);
    // The client holds a secret and the server none: the client will not go on.
    let srv = Server::start(a.path(), &file, &["--timeout", "10", "--json"]);
    let out = client_with(b.path(), &srv, "x.bin", &["--secret", SECRET]);
    assert_eq!(out.code(), Some(6), "{out:?}");
    assert!(out.stderr.contains("this server has no secret"), "{out:?}");
    assert_eq!(files_in(b.path()), ["client.log"]);
    // No secret on either side: as before.
    let out = client_with(b.path(), &srv, "y.bin", &[]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The refusal is no round trip: one receipt (after the ready object), and counted by kind.
    srv.proc.signal(libc::SIGTERM);
    let s = srv.proc.finish();
    assert_eq!(s.stdout.matches(r#""event":"round_trip""#).count(), 1, "{s:?}");
    let log = std::fs::read_to_string(a.path().join("server.log")).unwrap();
    assert!(log.contains("unexpected_secret=1") && !log.contains("wrong_secret"), "{log}");
    // Both given, in two forms: refused as a usage error.
    let out = client(b.path(), &["--client", "-f", "z.bin", "--secret", "a", "--secret-file", "f"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    // keygen: 130 random bits, typable.
    let k = client(b.path(), &["keygen"]);
    assert_eq!(k.code(), Some(0), "{k:?}");
    let key = k.stdout.trim();
    assert_eq!(key.len(), 32, "{key}");
    assert!(key.split('-').all(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_alphanumeric())), "{key}");
    assert_ne!(key, client(b.path(), &["keygen"]).stdout.trim());
}

/// A recognisable pattern, repeated: what an eavesdropper would look for.
const CANARY: &[u8] = b"MACHINAFTP-CANARY-0123456789;";

fn canary_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("canary.bin");
    std::fs::write(&p, CANARY.repeat(40_000)).unwrap();
    p
}

/// Captures loopback traffic on the server's two ports during one round trip; returns the
/// capture and the client's outcome.
fn captured_round_trip(secret: Option<&str>) -> Option<(Vec<u8>, Finished)> {
    let (a, b) = (tempdir(), tempdir());
    let file = canary_file(a.path());
    let mut extra = vec!["--once", "--timeout", "10"];
    if let Some(s) = secret {
        extra.extend_from_slice(&["--secret", s]);
    }
    let srv = Server::start(a.path(), &file, &extra);
    let filter = format!("tcp port {} or tcp port {}", srv.tcp_port, srv.zmq_port.as_deref().unwrap());
    let pcap = a.path().join("cap.pcap");
    let dump =
        Proc::spawn_program("tcpdump", a.path(), &["-i", "lo", "-U", "-n", "-w", pcap.to_str().unwrap(), &filter]);
    dump.wait_stderr(|l| l.contains("listening on"));
    let args = secret.map(|s| vec!["--secret", s]).unwrap_or_default();
    let out = client_with(b.path(), &srv, "canary.bin", &args);
    assert_eq!(srv.proc.finish().code(), Some(0));
    dump.signal(libc::SIGINT);
    let d = dump.finish();
    assert_eq!(d.code(), Some(0), "tcpdump: {d:?}");
    assert!(same_contents(&file, &b.path().join("canary.bin")));
    Some((std::fs::read(&pcap).unwrap(), out))
}

fn tcpdump_runs(test: &str) -> bool {
    let ok = std::process::Command::new("tcpdump").arg("--version").output().is_ok_and(|o| o.status.success())
        && unsafe { libc::geteuid() } == 0;
    if !ok {
        assert!(
            std::env::var_os("MACHINAFTP_TESTS_NEED_SHARED").is_none(),
            "{test}: tcpdump and root are required here (apt-get install tcpdump)"
        );
        eprintln!("SKIPPED {test}: needs tcpdump and root");
    }
    ok
}

#[test]
fn an_eavesdropper_on_loopback_never_sees_the_file() {
    if !tcpdump_runs("an_eavesdropper_on_loopback_never_sees_the_file") {
        return;
    }
    let found = |cap: &[u8]| cap.windows(CANARY.len()).filter(|w| *w == CANARY).count();
    // Without a secret the capture is full of the pattern: the check can see it.
    let (clear, out) = captured_round_trip(None).unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(found(&clear) > 1000, "the clear capture shows the pattern {} times", found(&clear));
    // With one, not once, though the capture holds both legs' bytes.
    let (sealed, out) = captured_round_trip(Some(SECRET)).unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        sealed.len() as u64 > 40_000 * CANARY.len() as u64,
        "the file's bytes were captured: {} bytes",
        sealed.len()
    );
    assert_eq!(found(&sealed), 0, "the pattern crossed loopback in the clear");
}

/// What the man in the middle does to one unit (a record on the data channel, a message on the
/// return channel) of the stream it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Flip,
    Drop,
    Replay,
    Reorder,
}

/// How a relayed stream divides into units: the data channel's clear frames, then records; or
/// ZeroMQ's greeting, then frames (commands pass; messages count, the first being B's Hello).
#[derive(Debug, Clone, Copy)]
enum Framing {
    Data { clear_frames: usize },
    Zmtp,
}

/// The length of the next unit at the front of `buf` and whether it may be tampered with, once
/// it is all there.
fn next_unit(buf: &[u8], framing: &mut Framing, greeting: &mut usize, messages: &mut usize) -> Option<(usize, bool)> {
    match framing {
        Framing::Data { clear_frames } if *clear_frames > 0 => {
            let len = u32::from_be_bytes(buf.get(1..5)?.try_into().unwrap()) as usize + 5;
            (buf.len() >= len).then(|| {
                *clear_frames -= 1;
                (len, false)
            })
        }
        Framing::Data { .. } => {
            let len = u32::from_be_bytes(buf.get(..4)?.try_into().unwrap()) as usize + 4;
            (buf.len() >= len).then_some((len, true))
        }
        // The greeting's 64 bytes go on as they come: each side sends part of it and waits for
        // the other's before the rest.
        Framing::Zmtp if *greeting > 0 => (!buf.is_empty()).then(|| {
            let n = buf.len().min(*greeting);
            *greeting -= n;
            (n, false)
        }),
        Framing::Zmtp => {
            let flags = *buf.first()?;
            let (head, size) = if flags & 0x02 != 0 {
                (9, u64::from_be_bytes(buf.get(1..9)?.try_into().unwrap()) as usize)
            } else {
                (2, *buf.get(1)? as usize)
            };
            let len = head + size;
            (buf.len() >= len).then(|| {
                let message = flags & 0x04 == 0;
                let sealed = message && *messages > 0;
                *messages += usize::from(message);
                (len, sealed)
            })
        }
    }
}

/// Relays one direction, doing `tamper` to the `at`th sealed unit.
fn relay_units(mut from: TcpStream, mut to: TcpStream, mut framing: Framing, tamper: Option<(Tamper, usize)>) {
    let (mut greeting, mut messages, mut sealed_seen) = (64usize, 0usize, 0usize);
    let mut buf = Vec::new();
    let mut held: Option<Vec<u8>> = None;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((len, sealed)) = next_unit(&buf, &mut framing, &mut greeting, &mut messages) {
            let mut unit: Vec<u8> = buf.drain(..len).collect();
            if std::env::var_os("RELAY_DEBUG").is_some() {
                eprintln!("unit {:?} len {len} sealed {sealed} head {:?}", framing, &unit[..unit.len().min(12)]);
            }
            let mut out = Vec::new();
            let index = sealed.then(|| {
                sealed_seen += 1;
                sealed_seen - 1
            });
            match (tamper, index) {
                (Some((Tamper::Flip, at)), Some(i)) if i == at => {
                    let last = unit.len() - 1;
                    unit[last] ^= 0x01;
                    out.push(unit);
                }
                (Some((Tamper::Drop, at)), Some(i)) if i == at => {}
                (Some((Tamper::Replay, at)), Some(i)) if i == at => out.extend([unit.clone(), unit]),
                (Some((Tamper::Reorder, at)), Some(i)) if i == at => held = Some(unit),
                (Some((Tamper::Reorder, at)), Some(i)) if i == at + 1 => {
                    out.extend([unit].into_iter().chain(held.take()))
                }
                _ => out.push(unit),
            }
            for u in out {
                if to.write_all(&u).is_err() {
                    return;
                }
            }
        }
    }
    let _ = to.write_all(&buf);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A relay on `listen` to `target` that tampers with the stream going toward the client
/// (`down`) or toward the server.
fn tampering_relay(
    listener: TcpListener,
    target: SocketAddr,
    framing: Framing,
    down: bool,
    tamper: Option<(Tamper, usize)>,
) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // One connection: the session's.
        let Ok((client, _)) = listener.accept() else { return };
        let Ok(server) = TcpStream::connect(target) else { return };
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (up_t, down_t) = if down { (None, tamper) } else { (tamper, None) };
        // The client's first words on the data channel are Hello and Confirm, in the clear.
        let up_framing = match framing {
            Framing::Data { .. } => Framing::Data { clear_frames: 2 },
            Framing::Zmtp => Framing::Zmtp,
        };
        std::thread::spawn(move || relay_units(c2, s2, up_framing, up_t));
        relay_units(server, client, framing, down_t);
    });
    addr
}

#[test]
fn a_man_in_the_middle_can_alter_drop_replay_or_reorder_nothing_unnoticed() {
    // B reaches A through relays on 127.0.0.2 at A's two port numbers (as in tests/duplex.rs):
    // one on the data channel tampering with A's records, one on the return channel tampering
    // with B's messages.
    let target = |port: &str| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    for channel in ["data", "return"] {
        for tamper in [Tamper::Flip, Tamper::Drop, Tamper::Replay, Tamper::Reorder] {
            let (a, b) = (tempdir(), tempdir());
            let file = served(a.path(), 2_000_000);
            let (srv, twin) = server_and_twin_listener(|| {
                Server::start(a.path(), &file, &["--once", "--secret", SECRET, "--timeout", "5"])
            });
            let zmq = srv.zmq_port.clone().unwrap();
            let (data_t, ret_t) =
                // B returns a 2 MB file in two 1 MiB Data messages, then End, Skip and Bye: the
                // second sealed one is a Data message.
                if channel == "data" { (Some((tamper, 5)), None) } else { (None, Some((tamper, 1))) };
            let data_framing = Framing::Data { clear_frames: 1 };
            tampering_relay(twin, target(&zmq), Framing::Zmtp, false, ret_t);
            let listener = TcpListener::bind("127.0.0.2:0").unwrap();
            let data = tampering_relay(listener, target(&srv.tcp_port), data_framing, true, data_t);
            let port = data.port().to_string();
            let out = client(
                b.path(),
                &["--client", "-f", "got.bin", "-H", "127.0.0.2", "-p", &port, "--secret", SECRET]
                    .into_iter()
                    .chain(["--timeout", "5", "--zmq-port", &zmq])
                    .collect::<Vec<_>>(),
            );
            let s = srv.proc.finish();
            let what = format!("{tamper:?} on the {channel} channel");
            assert!(out.code() != Some(0) && s.code() != Some(0), "{what} went unnoticed: {out:?} {s:?}");
            let said = format!("{}{}", out.stderr, s.stderr);
            assert!(said.contains("failed authentication"), "{what}: {out:?} {s:?}");
            assert!(!a.path().join("output.bin").exists(), "{what}: A saved a returned copy");
            if channel == "data" {
                assert!(!b.path().join("got.bin").exists(), "{what}: B saved its copy");
            }
        }
    }
}
