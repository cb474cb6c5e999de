#!/usr/bin/env bash
# Idle-connection flood (issue 19, defect 1): FLOOD (default 20,000) TCP connections that never
# send a byte, held against the gateway by two client processes, while a normal client keeps
# sending requests; its latency (fresh connections and one keep-alive connection) and the admin
# /healthz are measured before, during and after the flood. A benchmark, not a test: it prints
# what it measured and never fails on a number.
#
# Usage: bash scripts/idle-flood.sh     (env: FLOOD=20000 PER_ADDRESS=1000 SAMPLES=200
#        BIN=path/to/clientele to skip the release build, FIRST_BYTE_SECS=10: the server's
#        [gateway].first_byte_timeout_secs; raise it to hold the whole flood at once)
# The flood comes from 127.0.0.2, 127.0.0.3, ... (PER_ADDRESS each), under the per-address cap,
# so it meets the global cap: with this machine's descriptor limit of 20,000 the gateway holds
# 20,000 - reserved_fds = 18,976 connections, and the rest of the flood makes room by closing the
# oldest silent connections.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOD="${FLOOD:-20000}"
export PER_ADDRESS="${PER_ADDRESS:-1000}" SAMPLES="${SAMPLES:-200}"
FIRST_BYTE_SECS="${FIRST_BYTE_SECS:-10}"
if [ -z "${BIN:-}" ]; then
  cargo build --release -p clientele
  BIN="${CARGO_TARGET_DIR:-target}/release/clientele"
fi
source scripts/serve-lib.sh

up_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port)
token="flood-admin-token-0123456789"
python3 - "$up_port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    def do_GET(self):
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
cat > "$dir/clientele.toml" <<TOML
[gateway]
listen = "127.0.0.1:$gw_port"
first_byte_timeout_secs = $FIRST_BYTE_SECS
[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"
[storage]
data_dir = "$dir/data"
[[apis]]
name = "flood"
upstream = "http://127.0.0.1:$up_port"
prefix = "/"
TOML
start_clientele "$BIN" "$admin_port"
auth="Authorization: Bearer $token"
curl -sf -H "$auth" -H 'content-type: application/json' -d '{"id":"normal"}' "http://127.0.0.1:$admin_port/v1/consumers" >/dev/null
KEY=$(curl -sf -H "$auth" -H 'content-type: application/json' -d '{}' "http://127.0.0.1:$admin_port/v1/consumers/normal/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export GATEWAY="127.0.0.1:$gw_port" ADMIN="127.0.0.1:$admin_port" KEY

echo "server descriptor limit: $(awk '/Max open files/ {print $4}' /proc/$server_pid/limits)"
python3 scripts/idle-flood.py measure "before flood"
half=$((FLOOD / 2))
# Each holder raises its soft descriptor limit to the hard one; below half the flood it cannot
# open its share (its connects fail with EMFILE, counted as connect errors), so say so up front.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((FLOOD - half + 64)) ]; then
  echo "warning: hard descriptor limit $hard < $((FLOOD - half + 64)): each holder opens fewer than its $((FLOOD - half)); raise it (ulimit -Hn) for the full flood" >&2
fi
mkfifo "$dir/h1" "$dir/h2"
python3 scripts/idle-flood.py hold "$half" 0 < "$dir/h1" > "$dir/h1.out" &
pids+=($!)
exec 7>"$dir/h1"
python3 scripts/idle-flood.py hold "$((FLOOD - half))" "$half" < "$dir/h2" > "$dir/h2.out" &
pids+=($!)
exec 8>"$dir/h2"
for _ in $(seq 300); do
  [ "$(grep -c opened "$dir/h1.out" "$dir/h2.out" | awk -F: '{s+=$2} END {print s}')" = 2 ] && break
  sleep 0.5
done
sleep 1
grep -h opened "$dir/h1.out" "$dir/h2.out"
held() { echo $(( $(tail -n1 "$dir/h1.out" | awk '{print $2}') + $(tail -n1 "$dir/h2.out" | awk '{print $2}') )); }
echo "flood connections still open: $(held); server RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$server_pid/status); server descriptors $(ls /proc/$server_pid/fd | wc -l)"
python3 scripts/idle-flood.py measure "during flood"
echo "flood connections still open after the measurement: $(held)"
sleep $((FIRST_BYTE_SECS + 2))
echo "after first_byte_timeout_secs ($FIRST_BYTE_SECS s): flood connections still open: $(held)"
python3 scripts/idle-flood.py measure "after timeout"
exec 7>&- 8>&-
echo "server log lines: $(wc -l < "$dir/server.log") (of which 'refused'/'accept failed': $(grep -c -E 'refused|accept failed' "$dir/server.log" || true))"
