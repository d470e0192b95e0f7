#!/usr/bin/env bash
# 1 GiB round trip: machinaftp against socat, side by side. Usage: bench/roundtrip.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v socat >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq socat time; }
cargo build --release --quiet
exec python3 bench/roundtrip.py "$@"
