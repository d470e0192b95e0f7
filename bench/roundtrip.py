#!/usr/bin/env python3
"""Round-trip benchmarks for machinaftp against socat, side by side in one run.

  roundtrip.py loopback [SIZE_MIB] [RUNS]   1 GiB on 127.0.0.1, files in /dev/shm
  roundtrip.py latency [RUNS]               cad_mesh.stl (or MESH=PATH), from B's start until A (--once) and B exit
  roundtrip.py link [SIZE_MIB] [RUNS]       two network namespaces, veth shaped to 1 Gbit/s each way
  roundtrip.py rss SIZE_MIB...              peak RSS of A and B (sparse files; BENCH_DIR on a disk)
  roundtrip.py all                          the four, as the session-core issue's table asks
  roundtrip.py secure [SIZE_MIB] [RUNS]     machinaftp with --secret against without, on loopback
                                            (1 GiB) and on the 1 Gbit/s link (256 MiB)

machinaftp: A serves the file over TCP, B verifies (size, CRC-32, BLAKE3) and saves it while it
sends it back over ZeroMQ under credit; A verifies the returned copy and saves it.
socat -b 1048576: the same two copies (file -> TCP -> file, then back) one after the other, with
no verification: what a round trip costs with nothing checked.

Runs alternate between the tools; tables give medians, ratios, and CPU-seconds (user + sys of
every process, from GNU time or wait4). The machine is shared and noisy: compare ratios within
one run.
"""

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(os.environ.get("BIN", "target/release/machinaftp"))
# Another build to compare with, run alternately with BIN in the latency benchmark (e.g. main's).
BASELINE = os.environ.get("BASELINE")
TIME = "/usr/bin/time"
HERE = os.path.dirname(os.path.abspath(__file__))
# The latency benchmark's mesh (MESH=PATH for another).
MESH = os.path.abspath(os.environ.get("MESH", os.path.join(HERE, "..", "..", "shared", "cad_mesh.stl")))


class Timed:
    """A process whose CPU time (user + sys) and peak RSS come back when it ends.

    With `rss`, GNU time runs it and reports both (a forked child's own peak would include the
    Python parent's pages from before exec); without, wait4 reports the CPU time and no exec is
    added in front of it, for the latency benchmark.
    """

    def __init__(self, args, work, tag, ns=None, rss=True, **kw):
        prefix = ["ip", "netns", "exec", ns] if ns else []
        self.out = f"{work}/{tag}.time" if rss else None
        timing = [TIME, "-f", "%U %S %M", "-o", self.out] if rss else []
        self.p = subprocess.Popen(prefix + timing + args, **kw)

    def wait(self):
        _, status, ru = os.wait4(self.p.pid, 0)
        self.p.returncode = os.waitstatus_to_exitcode(status)
        if not self.out:
            return self.p.returncode, ru.ru_utime + ru.ru_stime, float("nan")
        with open(self.out) as f:
            user, sys_, rss = f.read().strip().splitlines()[-1].split()
        return self.p.returncode, float(user) + float(sys_), int(rss) / 1024


def free_port():
    # Only for socat, which cannot report the port it listens on; the tests never do this.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, ns=None):
    # socat accepts only once, so probing the port would use the listener up: look for the
    # listening socket in /proc instead.
    hexport = f":{port:04X}"
    deadline = time.time() + 10
    while time.time() < deadline:
        if ns:
            text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/tcp"], capture_output=True,
                                  text=True).stdout
        else:
            with open("/proc/net/tcp") as f:
                text = f.read()
        if any(l.split()[1].endswith(hexport) and l.split()[3] == "0A" for l in text.splitlines()[1:]):
            return
        time.sleep(0.002)
    raise RuntimeError(f"nothing listening on {port}")


def socat_leg(src, dst, work, tag, host="127.0.0.1", recv_ns=None, send_ns=None):
    port = free_port() if not recv_ns else 19000 + (hash(tag) % 1000)
    recv = Timed(["socat", "-b", "1048576", "-u", f"TCP-LISTEN:{port},reuseaddr", f"OPEN:{dst},creat,trunc"],
                 work, f"{tag}-recv", ns=recv_ns)
    wait_listening(port, recv_ns)
    send = Timed(["socat", "-b", "1048576", "-u", f"OPEN:{src}", f"TCP:{host}:{port}"], work, f"{tag}-send",
                 ns=send_ns)
    (rc1, cpu1, rss1), (rc2, cpu2, rss2) = send.wait(), recv.wait()
    if rc1 or rc2:
        raise RuntimeError("socat failed")
    return cpu1 + cpu2, rss1, rss2


def fresh(*dirs):
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)


def run_socat(src, work, a_host="127.0.0.1", b_host="127.0.0.1", ns_a=None, ns_b=None):
    a_dir, b_dir = f"{work}/sa", f"{work}/sb"
    fresh(a_dir, b_dir)
    t0 = time.perf_counter()
    cpu1, a1, b1 = socat_leg(src, f"{b_dir}/copy.bin", work, "fwd", host=a_host, recv_ns=ns_b, send_ns=ns_a)
    cpu2, b2, a2 = socat_leg(f"{b_dir}/copy.bin", f"{a_dir}/returned.bin", work, "back", host=b_host,
                             recv_ns=ns_a, send_ns=ns_b)
    t = time.perf_counter() - t0
    return t, cpu1 + cpu2, max(a1, a2), max(b1, b2)


def run_ours(src, work, host="127.0.0.1", ns_a=None, ns_b=None, extra_a=(), port="0", rss=True, bin=None,
             extra_b=()):
    bin = bin or BIN
    a_dir, b_dir = f"{work}/ma", f"{work}/mb"
    fresh(a_dir, b_dir)
    srv = Timed([bin, "-s", "-f", src, "-H", host, "-p", port, "--once", "-q", "--output", f"{a_dir}/returned.bin",
                 *extra_a], work, "a", ns=ns_a, rss=rss, stdout=subprocess.PIPE, text=True, cwd=a_dir)
    ready = srv.p.stdout.readline().split()
    tcp = ready[1].rsplit(":", 1)[1]
    zmq = ready[2].rsplit(":", 1)[1]
    t0 = time.perf_counter()
    cli = Timed([bin, "-c", "-f", f"{b_dir}/copy.bin", "-H", host, "-p", tcp, "--zmq-port", zmq, "-q", *extra_b],
                work, "b",
                ns=ns_b, rss=rss, stdout=subprocess.DEVNULL, cwd=b_dir)
    rc_b, cpu_b, rss_b = cli.wait()
    srv.p.stdout.read()
    rc_a, cpu_a, rss_a = srv.wait()
    t = time.perf_counter() - t0
    if rc_a or rc_b:
        raise RuntimeError(f"machinaftp failed: server {rc_a}, client {rc_b}")
    return t, cpu_a + cpu_b, rss_a, rss_b


def make_file(path, size_mib, sparse=False):
    with open(path, "wb") as f:
        if sparse:
            f.truncate(size_mib << 20)
        else:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))


def med(rows, j):
    return statistics.median(r[j] for r in rows)


def workdir(need_mib, tmpfs=True):
    base = os.environ.get("BENCH_DIR")
    if not base and tmpfs and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > need_mib << 20:
        base = "/dev/shm"
    return tempfile.mkdtemp(prefix="machinaftp-bench-", dir=base)


def compare(title, runs, ours, theirs, wall_target, cpu_target=None):
    """Alternates the two, prints one table, returns the ratios."""
    res = {"socat": [], "machinaftp": []}
    for i in range(runs):
        res["socat"].append(theirs())
        res["machinaftp"].append(ours())
        print(f"  run {i + 1}/{runs}: socat {res['socat'][-1][0]:.3f} s, machinaftp {res['machinaftp'][-1][0]:.3f} s",
              file=sys.stderr)
    m = {k: [med(v, j) for j in range(4)] for k, v in res.items()}
    spread = {k: (min(r[0] for r in v), max(r[0] for r in v)) for k, v in res.items()}
    print(f"\n{title} ({runs} runs each, alternating; medians)")
    print(f"{'tool':<40}{'wall s':>8}{'(min-max)':>16}{'CPU s':>8}{'A/send RSS':>12}{'B/recv RSS':>12}")
    names = {"socat": "socat -b 1M, two legs in turn, unverified", "machinaftp": "machinaftp (both legs verified)"}
    for k in ("socat", "machinaftp"):
        t, cpu, ra, rb = m[k]
        lo, hi = spread[k]
        print(f"{names[k]:<40}{t:>8.3f}{f'{lo:.2f}-{hi:.2f}':>16}{cpu:>8.2f}{ra:>8.1f} MiB{rb:>8.1f} MiB")
    wall = m["machinaftp"][0] / m["socat"][0]
    cpu = m["machinaftp"][1] / m["socat"][1]
    print(f"ratio machinaftp / socat: wall {wall:.2f}x (target <= {wall_target}x)"
          + (f", CPU {cpu:.2f}x (target <= {cpu_target}x)" if cpu_target else ""))
    return wall, cpu


def bench_loopback(size_mib=1024, runs=5):
    work = workdir(6 * size_mib)
    try:
        src = f"{work}/src.bin"
        make_file(src, size_mib)
        return compare(f"{size_mib} MiB round trip on 127.0.0.1, files in {os.path.dirname(work)}", runs,
                       lambda: run_ours(src, work), lambda: run_socat(src, work), 1.0, 1.25)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_latency(runs=31):
    work = workdir(64)
    builds = [("machinaftp", BIN)] + ([("baseline " + BASELINE, os.path.abspath(BASELINE))] if BASELINE else [])
    try:
        times = {name: [] for name, _ in builds}
        for i in range(runs):
            for name, path in builds:
                t, cpu, ra, rb = run_ours(MESH, work, rss=False, bin=path)
                times[name].append((t, cpu))
        print(f"\n{os.path.basename(MESH)} round trip ({os.path.getsize(MESH):,} bytes + its CSV), B's start to both exits, {runs} runs"
              + (", alternating" if BASELINE else ""))
        for name, _ in builds:
            ts = times[name]
            t = statistics.median(x[0] for x in ts)
            cpu = statistics.median(x[1] for x in ts)
            lo, hi = min(x[0] for x in ts), max(x[0] for x in ts)
            print(f"  {name}: median {t * 1000:.1f} ms (min {lo * 1000:.1f}, max {hi * 1000:.1f}), "
                  f"CPU {cpu * 1000:.0f} ms (target <= 15 ms)")
        if BASELINE:
            ratio = statistics.median(x[0] for x in times["machinaftp"]) / statistics.median(
                x[0] for x in times[builds[1][0]])
            print(f"  ratio machinaftp / baseline: {ratio:.2f}x")
        return statistics.median(x[0] for x in times["machinaftp"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True)


class Link:
    """Two namespaces joined by a veth pair, each end shaped to 1 Gbit/s with tbf."""

    def __init__(self):
        tag = str(os.getpid() % 100000)
        self.a, self.b = f"mbA{tag}", f"mbB{tag}"
        va, vb = f"ba{tag}", f"bb{tag}"
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", self.a)
        sh("ip", "link", "set", vb, "netns", self.b)
        for ns, dev, addr in ((self.a, va, "10.78.0.1/24"), (self.b, vb, "10.78.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit", "burst",
               "1mb", "latency", "100ms")

    def close(self):
        sh("ip", "netns", "del", self.a, check=False)
        sh("ip", "netns", "del", self.b, check=False)


@contextlib.contextmanager
def shaped_link(size_mib):
    """A file of SIZE_MIB and the shaped Link; yields (src, work, link, ours), where ours(**kw) runs
    machinaftp across the link (A in link.a, B in link.b), each run on ports of its own."""
    work = workdir(6 * size_mib)
    link = Link()
    try:
        src = f"{work}/src.bin"
        make_file(src, size_mib)
        ports = iter(range(20000, 30000))
        yield src, work, link, lambda **kw: run_ours(src, work, host="10.78.0.1", ns_a=link.a, ns_b=link.b,
                                                      port=str(next(ports)), **kw)
    finally:
        link.close()
        shutil.rmtree(work, ignore_errors=True)


def bench_link(size_mib=256, runs=5):
    with shaped_link(size_mib) as (src, work, link, ours):
        theirs = lambda: run_socat(src, work, a_host="10.78.0.2", b_host="10.78.0.1", ns_a=link.a, ns_b=link.b)
        return compare(f"{size_mib} MiB round trip between two namespaces, veth shaped to 1 Gbit/s each way", runs,
                       ours, theirs, 0.6)


def bench_secure(size_mib=1024, runs=5, link_mib=256):
    """With a secret against without, alternating, on loopback and on the shaped link."""
    secret = ("--secret", "castle-7-drum")
    rows = []
    work = workdir(6 * size_mib)
    try:
        src = f"{work}/src.bin"
        make_file(src, size_mib)
        plain = lambda: run_ours(src, work)
        sealed = lambda: run_ours(src, work, extra_a=secret, extra_b=secret)
        rows.append((f"{size_mib} MiB on 127.0.0.1", alternate(runs, plain, sealed), 1.3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if os.geteuid() == 0:
        with shaped_link(link_mib) as (_, _, _, ours):
            on_link = lambda extra: ours(extra_a=extra, extra_b=extra)
            rows.append((f"{link_mib} MiB, 1 Gbit/s link", alternate(runs, lambda: on_link(()),
                                                                      lambda: on_link(secret)), 1.05))
    print(f"\nmachinaftp with --secret against without ({runs} runs each, alternating; medians)")
    print(f"{'round trip':<28}{'plain s':>9}{'sealed s':>10}{'ratio':>8}{'target':>8}{'plain CPU':>11}"
          f"{'sealed CPU':>12}{'ratio':>8}{'sealed RSS A/B':>18}")
    for title, (p, s), target in rows:
        print(f"{title:<28}{p[0]:>9.3f}{s[0]:>10.3f}{s[0] / p[0]:>7.2f}x{target:>7}x{p[1]:>11.2f}{s[1]:>12.2f}"
              f"{s[1] / p[1]:>7.2f}x{s[2]:>9.1f}/{s[3]:.1f} MiB")


def alternate(runs, first, second):
    """Runs the two in turn; the medians of each (wall, CPU, RSS A, RSS B)."""
    res = ([], [])
    for i in range(runs):
        res[0].append(first())
        res[1].append(second())
        print(f"  run {i + 1}/{runs}: {res[0][-1][0]:.3f} s, {res[1][-1][0]:.3f} s", file=sys.stderr)
    return tuple([med(r, j) for j in range(4)] for r in res)


def bench_rss(sizes):
    print("\nPeak RSS (files sparse: the bytes are zeros, the work is the same)")
    print(f"{'size':>8}{'A peak RSS':>14}{'B peak RSS':>14}{'wall s':>9}   (target <= 32 MiB each)")
    for size_mib in sizes:
        work = workdir(3 * size_mib, tmpfs=3 * size_mib < 8192)
        try:
            src = f"{work}/src.bin"
            make_file(src, size_mib, sparse=True)
            t, cpu, ra, rb = run_ours(src, work)
            print(f"{size_mib / 1024:>6.0f} GiB{ra:>10.1f} MiB{rb:>10.1f} MiB{t:>9.1f}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main():
    for tool in ("socat", TIME):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"bench: {tool} not found (apt-get install socat time)")
    if not os.path.exists(BIN):
        sys.exit(f"bench: {BIN} not found (cargo build --release)")
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    args = [int(a) for a in sys.argv[2:]]
    print(f"machinaftp round-trip benchmarks, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    if what == "loopback":
        bench_loopback(*args)
    elif what == "latency":
        bench_latency(*args)
    elif what == "link":
        bench_link(*args)
    elif what == "secure":
        bench_secure(*args)
    elif what == "rss":
        bench_rss(args or [1024, 8192])
    elif what == "all":
        bench_loopback(1024, 5)
        bench_link(256, 5)
        bench_latency(31)
        bench_rss([1024, 8192])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
