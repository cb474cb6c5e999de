#!/usr/bin/env bash
# Exports benchmark: the gateway's requests/s with every export on (OTLP traces + metrics +
# logs to a local collector, an NDJSON file sink, a Loki-format HTTP sink, /metrics scraped
# every second) against all exports off, in the same run; then the top-K consumer series'
# memory at 1k..1M consumers. A benchmark, not a test: it never fails on slow numbers.
#
# Method as in bench-gateway.sh: the server under test pinned to CPU 0, wrk and the receivers on
# CPU 1, targets alternated (off, on, off, on, ...) so drift spreads over both, medians reported.
# Usage: bash scripts/bench-exports.sh   (env: ROUNDS=3 DURATION=10 CONNS=64)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-10}" CONNS="${CONNS:-64}"
TOKEN="bench-admin-token-0123456789"
die() { echo "bench-exports: $*" >&2; exit 1; }

need=()
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -p clientele
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/clientele"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-exports.XXXXXX")
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream is nginx on CPU 1 (fast enough not to be the bottleneck); the export receiver is
# a small Python server on CPU 1 that answers 200 to any POST.
UP=$(port) RX=$(port)
cat >"$TMP/srv.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _ok(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        body = b'{"ok":true}'
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    do_GET = do_POST = _ok
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
mkdir -p "$TMP/ng"
cat >"$TMP/ng/nginx.conf" <<NG
worker_processes 1; daemon off; pid $TMP/ng/nginx.pid; error_log $TMP/ng/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  client_body_temp_path $TMP/ng/cb; proxy_temp_path $TMP/ng/p; fastcgi_temp_path $TMP/ng/f; uwsgi_temp_path $TMP/ng/u; scgi_temp_path $TMP/ng/s;
  server { listen 127.0.0.1:$UP; location / { return 200 '{"ok":true}'; } } }
NG
chmod 711 "$TMP"
taskset -c 1 nginx -p "$TMP/ng/" -e "$TMP/ng/error.log" -c "$TMP/ng/nginx.conf" </dev/null >/dev/null 2>&1 & PIDS+=($!)
taskset -c 1 python3 "$TMP/srv.py" "$RX" & PIDS+=($!)

start() { # name extra-config
  local g a dir=$TMP/$1
  g=$(port) a=$(port)
  mkdir -p "$dir"
  cat >"$dir/c.toml" <<TOML
[gateway]
listen = "127.0.0.1:$g"
[admin]
listen = "127.0.0.1:$a"
token = "$TOKEN"
[storage]
data_dir = "$dir/data"
[[apis]]
name = "bench"
upstream = "http://127.0.0.1:$UP"
$2
TOML
  env -u CLIENTELE_ADMIN_TOKEN -u RUST_LOG taskset -c 0 "$BIN" serve --config "$dir/c.toml" >"$dir/log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$a/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"id":"bench"}' "http://127.0.0.1:$a/v1/consumers" >/dev/null
  local key
  key=$(curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{}' "http://127.0.0.1:$a/v1/consumers/bench/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  echo "$g $a $key"
}
read -r G_OFF A_OFF K_OFF <<<"$(start off "")"
read -r G_ON A_ON K_ON <<<"$(start on "
[exports.otlp]
endpoint = \"http://127.0.0.1:$RX\"
metrics_interval_ms = 1000
[[exports.logs]]
kind = \"file\"
path = \"$TMP/on/events.ndjson\"
max_bytes = 104857600
keep = 2
[[exports.logs]]
kind = \"http\"
url = \"http://127.0.0.1:$RX/loki/api/v1/push\"
format = \"loki\"
")"
# Scrape /metrics every second on the exports-on server, as Prometheus would.
( while sleep 1; do curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$A_ON/metrics" >/dev/null || true; done ) & PIDS+=($!)

run() { # port key
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "X-API-Key: $2" "http://127.0.0.1:$1/pets/1" | awk '/^Requests\/sec:/ {print $2}'
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); ROUNDS=$ROUNDS DURATION=${DURATION}s CONNS=$CONNS"
run "$G_OFF" "$K_OFF" >/dev/null; run "$G_ON" "$K_ON" >/dev/null   # warm-up
OFF=() ON=()
for r in $(seq "$ROUNDS"); do
  OFF+=("$(run "$G_OFF" "$K_OFF")"); ON+=("$(run "$G_ON" "$K_ON")")
  echo "round $r: exports off ${OFF[-1]} req/s, all exports on ${ON[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
MOFF=$(median "${OFF[@]}") MON=$(median "${ON[@]}")
echo "median: off $MOFF req/s, on $MON req/s, ratio $(awk -v a="$MON" -v b="$MOFF" 'BEGIN{printf "%.3f", a/b}')"
echo "exporter counters (exports on):"
curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$A_ON/metrics" | grep -E '^clientele_(export_(sent|dropped|failed)_items_total|events_dropped_total)' | sed 's/^/  /'

echo
echo "top-K memory (k = 100) as consumers grow, vs an unbounded map:"
cargo bench -q -p clientele-export --bench topk_memory
