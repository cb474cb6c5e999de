#!/usr/bin/env bash
# Limits benchmark (a benchmark, not a test: it reports numbers, it never fails on them).
#   1. cargo bench: the local limiter's check cost (ns) and memory per consumer at 1, 10k and
#      1M consumers (crates/clientele-core/benches/limiter.rs).
#   2. scripts/bench-limits.py: the latency and throughput a check adds per request, locally and
#      through Redis, and cluster accuracy of two nodes sharing one Redis (see its docstring).
# Usage: bash scripts/bench-limits.sh     (env: ROUNDS=3 DURATION=10 CONNS=32 RATE=200 BURST=100)
# Results: printed, and written to bench-results/limits-<timestamp>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

exec 9>"${TMPDIR:-/tmp}/bench-gateway.lock"   # shares the gateway benchmark's lock: same CPUs
flock -n 9 || { echo "bench-limits: another benchmark is running" >&2; exit 1; }

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p bench-results
OUT="bench-results/limits-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# bench-limits $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "## Local limiter (cargo bench -p clientele-core --bench limiter)"
  echo
  cargo bench -q -p clientele-core --bench limiter 2>/dev/null
  cargo build -q --release -p clientele
  CLIENTELE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/clientele" python3 scripts/bench-limits.py
} | tee "$OUT"
echo "written to $OUT"
