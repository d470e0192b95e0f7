#!/usr/bin/env python3
"""Times a full machinaftp round trip against socat copying the same bytes both ways.

machinaftp: A serves the file over TCP, B verifies (size, CRC-32, BLAKE3) and saves it, sends it
back over ZeroMQ under credit flow control, A verifies and saves it.
socat -b 1048576: the same two copies (file -> TCP -> file, and back) with no verification.

Runs alternate between the two tools; the table gives medians, the ratio, and each process's
peak RSS (from GNU time). Usage: bench/roundtrip.sh [SIZE_MIB] [RUNS]
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SIZE_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
BIN = os.path.abspath(os.environ.get("BIN", "target/release/machinaftp"))
TIME = "/usr/bin/time"


def timed(args, rss_file, **kw):
    return subprocess.Popen([TIME, "-f", "%M", "-o", rss_file] + args, **kw)


def rss_mib(path):
    with open(path) as f:
        return int(f.read().strip().splitlines()[-1]) / 1024


def free_port():
    # Only for socat, which cannot report the port it listens on; the tests never do this.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"nothing listening on {port}")


def socat_leg(src, dst, work, tag):
    port = free_port()
    recv = timed(["socat", "-b", "1048576", "-u", f"TCP-LISTEN:{port},reuseaddr", f"OPEN:{dst},creat,trunc"],
                 f"{work}/{tag}-recv.rss")
    # socat accepts only once, so probing the port would consume the listener: wait for the
    # listening socket to show up in /proc instead.
    hexport = f"{port:04X}"
    deadline = time.time() + 10
    while time.time() < deadline:
        with open("/proc/net/tcp") as f:
            if any(l.split()[1].endswith(":" + hexport) and l.split()[3] == "0A" for l in f.readlines()[1:]):
                break
        time.sleep(0.002)
    send = timed(["socat", "-b", "1048576", "-u", f"OPEN:{src}", f"TCP:127.0.0.1:{port}"], f"{work}/{tag}-send.rss")
    if send.wait() or recv.wait():
        raise RuntimeError("socat failed")
    return rss_mib(f"{work}/{tag}-send.rss"), rss_mib(f"{work}/{tag}-recv.rss")


def run_socat(src, work):
    a_dir, b_dir = f"{work}/sa", f"{work}/sb"
    for d in (a_dir, b_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    t0 = time.perf_counter()
    a1, b1 = socat_leg(src, f"{b_dir}/copy.bin", work, "fwd")
    b2, a2 = socat_leg(f"{b_dir}/copy.bin", f"{a_dir}/returned.bin", work, "back")
    t = time.perf_counter() - t0
    return t, max(a1, a2), max(b1, b2)


def run_ours(src, work):
    a_dir, b_dir = f"{work}/ma", f"{work}/mb"
    for d in (a_dir, b_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    srv = timed([BIN, "-s", "-f", src, "-H", "127.0.0.1", "-p", "0", "--once", "-q", "--output", f"{a_dir}/returned.bin"],
                f"{work}/a.rss", stdout=subprocess.PIPE, text=True, cwd=a_dir)
    ready = srv.stdout.readline().split()
    tcp = ready[1].rsplit(":", 1)[1]
    zmq = ready[2].rsplit(":", 1)[1]
    t0 = time.perf_counter()
    cli = timed([BIN, "-c", "-f", f"{b_dir}/copy.bin", "-H", "127.0.0.1", "-p", tcp, "--zmq-port", zmq, "-q"],
                f"{work}/b.rss", stdout=subprocess.DEVNULL, cwd=b_dir)
    if cli.wait() != 0:
        raise RuntimeError("machinaftp client failed")
    srv.stdout.read()
    if srv.wait() != 0:
        raise RuntimeError("machinaftp server failed")
    t = time.perf_counter() - t0
    return t, rss_mib(f"{work}/a.rss"), rss_mib(f"{work}/b.rss")


def main():
    for tool in ("socat", BIN, TIME):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"bench: {tool} not found (apt-get install socat time; cargo build --release)")
    # tmpfs by default: on a disk, writeback of the gigabytes each run writes throttles whichever
    # tool happens to run then, and the table measures the disk instead of the tools.
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 6 * SIZE_MIB << 20 else None
    work = tempfile.mkdtemp(prefix="machinaftp-bench-", dir=os.environ.get("BENCH_DIR", default_dir))
    print(f"working in {work}", file=sys.stderr)
    try:
        src = f"{work}/src.bin"
        with open(src, "wb") as f:
            for _ in range(SIZE_MIB):
                f.write(os.urandom(1 << 20))
        results = {"socat": [], "machinaftp": []}
        for i in range(RUNS):
            results["socat"].append(run_socat(src, work))
            results["machinaftp"].append(run_ours(src, work))
            if not filecmp(src, f"{work}/ma/returned.bin"):
                sys.exit("bench: machinaftp's returned copy differs")
            print(f"run {i + 1}/{RUNS}: socat {results['socat'][-1][0]:.3f} s, "
                  f"machinaftp {results['machinaftp'][-1][0]:.3f} s", file=sys.stderr)
        med = {k: [statistics.median(r[j] for r in v) for j in range(3)] for k, v in results.items()}
        print(f"\nRound trip of {SIZE_MIB} MiB on 127.0.0.1, {RUNS} runs each, medians "
              f"({os.cpu_count()} cores, files in {os.path.dirname(work)})\n")
        print(f"{'tool':<34}{'wall s':>9}{'MiB/s':>9}{'A peak RSS':>12}{'B peak RSS':>12}")
        names = {"socat": "socat -b 1048576 (no verification)", "machinaftp": "machinaftp (CRC-32 + BLAKE3)"}
        for k in ("socat", "machinaftp"):
            t, ra, rb = med[k]
            print(f"{names[k]:<34}{t:>9.3f}{2 * SIZE_MIB / t:>9.0f}{ra:>9.1f} MiB{rb:>8.1f} MiB")
        print(f"\nratio machinaftp / socat (wall): {med['machinaftp'][0] / med['socat'][0]:.2f}x")
        print("MiB/s counts both directions (2 x size / wall time).")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def filecmp(a, b):
    import filecmp as fc
    return fc.cmp(a, b, shallow=False)


if __name__ == "__main__":
    main()
