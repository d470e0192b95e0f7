#!/usr/bin/env bash
# Round-trip benchmarks against socat, side by side. Usage: bench/roundtrip.sh [loopback|latency|link|rss|all|secure] [ARGS]
# (see bench/roundtrip.py). The namespace benchmark needs root, iproute2 and tc.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v socat >/dev/null && [ -x /usr/bin/time ] && command -v tc >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq socat time iproute2; }
cargo build --release --quiet
exec python3 bench/roundtrip.py "$@"
