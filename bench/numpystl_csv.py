#!/usr/bin/env python3
"""The baseline for bench/stl2csv.py: numpy-stl reads the mesh (every solid), Python's '%.4f'
formats every vertex of every facet in file order, as the corpus reference CSVs were made."""

import sys

from stl import mesh

src, dst = sys.argv[1], sys.argv[2]
meshes = mesh.Mesh.from_multi_file(src) if open(src, "rb").read(5).lower() == b"solid" else [mesh.Mesh.from_file(src)]
with open(dst, "w") as out:
    for m in meshes:
        for tri in m.vectors:
            for v in tri:
                out.write("%.4f,%.4f,%.4f\n" % (v[0], v[1], v[2]))
