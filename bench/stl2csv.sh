#!/usr/bin/env bash
# STL -> CSV: machinaftp against numpy-stl + Python '%.4f'. Usage: bench/stl2csv.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
python3 -c 'import stl' 2>/dev/null || pip install -q numpy-stl
cargo build --release --quiet
exec python3 bench/stl2csv.py "$@"
