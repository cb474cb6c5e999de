#!/usr/bin/env bash
# The control plane at scale: CONSUMERS (default 10,000) consumers created one request at a
# time through the admin API, each with one key, as a provisioning script or a CRM sync does.
# Reports the milliseconds per consumer (create + key) for each slice of SLICE (default 1,000),
# so a cost that grows with the number already stored shows as a rising column, then checks
# that the last key created authenticates at the gateway.
# A benchmark, not a test: it never fails on a number.
#
# Usage: bash scripts/bench-control.sh   (env: CONSUMERS=10000 SLICE=1000
#        BIN=path/to/clientele to skip the release build, BASE_BIN=path/to/an/older/clientele
#        to measure it in the same run, side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
CONSUMERS="${CONSUMERS:-10000}" SLICE="${SLICE:-1000}"
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
command -v curl >/dev/null || {
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
}
if [ -z "${BIN:-}" ]; then
  cargo build --release -p clientele
  BIN="${CARGO_TARGET_DIR:-target}/release/clientele"
fi
source scripts/serve-lib.sh
token="bench-admin-token-0123456789"

# run LABEL BIN: one fresh server with an empty data dir; prints LABEL and one figure per slice.
run() {
  local label=$1 bin=$2 gw_port admin_port
  gw_port=$(free_port) admin_port=$(free_port)
  rm -rf "$dir/data"
  cat > "$dir/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$gw_port"
[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"
[storage]
data_dir = "$dir/data"
[[apis]]
name = "bench"
upstream = "http://127.0.0.1:9"
prefix = "/"
[plans.std]
rate_per_second = 1000
burst = 1000
EOF
  start_clientele "$bin" "$admin_port"
  local key figures status
  figures=$(python3 scripts/provision.py "$admin_port" "$token" "$CONSUMERS" --slice "$SLICE" \
    2>&1 >"$dir/keys.txt")
  key=$(tail -1 "$dir/keys.txt")
  # The last key must work at once: 502 (nothing listens upstream), not 401.
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://127.0.0.1:$gw_port/x")
  printf '%-6s %s   last key at the gateway: %s\n' "$label" "$figures" "$status"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
}

echo "$CONSUMERS consumers, one key each, slices of $SLICE (ms per consumer = create + key):"
[ -n "${BASE_BIN:-}" ] && run base "$BASE_BIN"
run this "$BIN"
