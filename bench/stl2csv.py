#!/usr/bin/env python3
"""Whole-process timing of `machinaftp stl2csv` against numpy-stl + Python '%.4f' writing the
same CSV, side by side, alternating runs; prints medians, the ratio and peak RSS.

Inputs: ../shared/stl-corpus/trimesh_counter.unitsmm.STL, and the same mesh repeated 20 times as
one binary STL (generated), to show memory staying flat as the file grows.
Usage: bench/stl2csv.sh [RUNS]
"""

import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(HERE, "..", "target", "release", "machinaftp")))
SRC = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "stl-corpus", "trimesh_counter.unitsmm.STL"))
REF = SRC[: -len(".STL")] + ".csv"


def run(cmd, work):
    rss = os.path.join(work, "rss")
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss] + cmd, check=True, stdout=subprocess.DEVNULL)
    t = time.perf_counter() - t0
    with open(rss) as f:
        return t, int(f.read().split()[-1]) / 1024


def repeat_binary(src, dst, times):
    with open(src, "rb") as f:
        head = f.read(84)
        body = f.read()
    n = struct.unpack("<I", head[80:84])[0]
    with open(dst, "wb") as out:
        out.write(head[:80] + struct.pack("<I", n * times))
        for _ in range(times):
            out.write(body[: 50 * n])


def compare(label, path, runs, work):
    ours_csv, theirs_csv = os.path.join(work, "ours.csv"), os.path.join(work, "theirs.csv")
    tools = {
        "machinaftp stl2csv": [BIN, "stl2csv", path, "-o", ours_csv],
        "numpy-stl + '%.4f'": [sys.executable, os.path.join(HERE, "numpystl_csv.py"), path, theirs_csv],
    }
    res = {k: [] for k in tools}
    for _ in range(runs):
        for k, cmd in tools.items():
            res[k].append(run(cmd, work))
    with open(ours_csv, "rb") as a, open(theirs_csv, "rb") as b:
        if a.read() != b.read():
            sys.exit(f"bench: outputs differ for {label}")
    size = os.path.getsize(path)
    rows = []
    for k in tools:
        t = statistics.median(r[0] for r in res[k])
        m = statistics.median(r[1] for r in res[k])
        rows.append((k, t, m))
    print(f"\n{label}: {size / 1e6:.1f} MB STL -> {os.path.getsize(ours_csv) / 1e6:.1f} MB CSV, "
          f"{runs} runs each, medians")
    print(f"{'tool':<24}{'wall ms':>10}{'peak RSS':>12}")
    for k, t, m in rows:
        print(f"{k:<24}{t * 1000:>10.1f}{m:>8.1f} MiB")
    print(f"speed-up: {rows[1][1] / rows[0][1]:.1f}x")
    return rows


def main():
    work = tempfile.mkdtemp(prefix="machinaftp-stl-bench-")
    try:
        compare("trimesh_counter.unitsmm.STL", SRC, RUNS, work)
        subprocess.run([BIN, "stl2csv", SRC, "-o", os.path.join(work, "check.csv")], check=True)
        with open(os.path.join(work, "check.csv"), "rb") as a, open(REF, "rb") as b:
            print("machinaftp's CSV equals the corpus reference:", a.read() == b.read())
        big = os.path.join(work, "counter-x20.stl")
        repeat_binary(SRC, big, 20)
        compare("the same mesh x20 (one binary STL)", big, max(1, RUNS // 3), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
