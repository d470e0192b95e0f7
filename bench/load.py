#!/usr/bin/env python3
"""Load against one long-running server: concurrent rounds of clients, then sequential round trips.

  bench/load.py [CONCURRENT] [ROUNDS] [SEQUENTIAL] [FILE]

Defaults: 64 clients at once x 5 rounds, then 200 one after another, serving cad_mesh.stl with
the default --max-clients (16) and --queue (64). Prints failures, p50/p95 round-trip latency (from
a client's start to its exit), and the server's open descriptors and RSS before the load, right
after it, and once its sessions have ended. The machine is shared and noisy: read the latencies
as rough, the failures, descriptors and memory as exact.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(HERE, "..", "target", "release", "machinaftp")))
MESH = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "cad_mesh.stl"))


def server_state(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss / 1024


def one_client(port, work, i):
    d = os.path.join(work, f"c{i}")
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run([BIN, "-c", "-f", "out.stl", "-H", "127.0.0.1", "-p", port, "-q"], cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    shutil.rmtree(d, ignore_errors=True)
    return p.returncode, t, p.stderr.strip().splitlines()[:1]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    concurrent = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sequential = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    served = os.path.abspath(sys.argv[4]) if len(sys.argv) > 4 else MESH
    work = tempfile.mkdtemp(prefix="mftp-load-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    a_dir = os.path.join(work, "a")
    os.makedirs(a_dir)
    srv = subprocess.Popen([BIN, "-s", "-f", served, "-H", "127.0.0.1", "-p", "0", "-q"], cwd=a_dir,
                           stdout=subprocess.PIPE, text=True)
    try:
        port = srv.stdout.readline().split()[1].rsplit(":", 1)[1]
        # Its verdict lines are read (and dropped) as a terminal or a log collector would.
        threading.Thread(target=lambda: [None for _ in srv.stdout], daemon=True).start()
        # One round trip first: the server sets up its return channel's sockets on first use.
        one_client(port, work, -1)
        before = server_state(srv.pid)
        results = []
        with ThreadPoolExecutor(max_workers=concurrent) as pool:
            for r in range(rounds):
                results += list(pool.map(lambda i: one_client(port, work, i), range(r * concurrent, (r + 1) * concurrent)))
        conc = results
        seq = [one_client(port, work, 10_000 + i) for i in range(sequential)]
        after = server_state(srv.pid)
        # Sessions end as their clients exit; give the server's threads a moment to be joined.
        deadline = time.time() + 5
        while time.time() < deadline and server_state(srv.pid)[0] > before[0]:
            time.sleep(0.05)
        settled = server_state(srv.pid)
        print(f"machinaftp load: {os.path.basename(served)}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        print(f"{'phase':<34}{'runs':>6}{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}")
        for name, rs in [(f"{concurrent} at once x {rounds} rounds", conc), (f"{sequential} one after another", seq)]:
            if not rs:
                continue
            ts = [t for _, t, _ in rs]
            failed = [r for r in rs if r[0] != 0]
            print(f"{name:<34}{len(rs):>6}{len(failed):>8}{statistics.median(ts) * 1000:>9.1f}"
                  f"{pct(ts, 0.95) * 1000:>9.1f}")
            for code, _, err in failed[:5]:
                print(f"    exit {code}: {err}")
        print(f"{'server':<20}{'fds':>6}{'RSS MiB':>10}")
        for name, (fds, rss) in [("before", before), ("after the load", after), ("settled", settled)]:
            print(f"{name:<20}{fds:>6}{rss:>10.1f}")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
