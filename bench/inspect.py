#!/usr/bin/env python3
"""`machinaftp inspect` against numpy-stl computing the same area and volume, whole processes,
alternating, on the corpus' largest mesh (4 MB, 83,750 facets) by default.

  bench/inspect.py [FILE] [RUNS]

numpy-stl: `pip install numpy-stl`. The numpy-stl side loads the file and computes the summed
facet areas and the signed volume (get_mass_properties), and nothing else; ours computes every
fact `inspect` reports, closedness and the geometry digest included.
"""

import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(HERE, "..", "target", "release", "machinaftp")))
FILE = os.path.join(HERE, "..", "..", "shared", "stl-corpus", "trimesh_counter.unitsmm.STL")
NUMPY = ("import sys; from stl import mesh; m = mesh.Mesh.from_file(sys.argv[1]); "
         "print(float(m.areas.sum()), float(m.get_mass_properties()[0]))")


def run(args):
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"bench: {args[0]} failed")
    return wall, out


def main():
    import json

    path = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.abspath(FILE)
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    ours, theirs = [], []
    for _ in range(runs):
        theirs.append(run([sys.executable, "-c", NUMPY, path])[0])
        ours.append(run([BIN, "inspect", "--json", path])[0])
    _, o = run([BIN, "inspect", "--json", path])
    _, t = run([sys.executable, "-c", NUMPY, path])
    r = json.loads(o)
    area, volume = map(float, t.split())
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"{os.path.basename(path)}: {os.path.getsize(path):,} bytes, {r['facets']:,} facets; {runs} runs each, "
          f"alternating, load {os.getloadavg()[0]:.2f}")
    print(f"{'tool':<44}{'median ms':>10}{'min-max ms':>16}{'area':>18}{'volume':>18}")
    print(f"{'numpy-stl (area and volume only)':<44}{mt * 1e3:>10.1f}{f'{min(theirs)*1e3:.0f}-{max(theirs)*1e3:.0f}':>16}"
          f"{area:>18.3f}{volume:>18.3f}")
    print(f"{'machinaftp inspect (every fact)':<44}{mo * 1e3:>10.1f}{f'{min(ours)*1e3:.0f}-{max(ours)*1e3:.0f}':>16}"
          f"{r['area']:>18.3f}{r['volume']:>18.3f}")
    print(f"speed-up: {mt / mo:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
