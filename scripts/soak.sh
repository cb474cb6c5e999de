#!/usr/bin/env bash
# Soak (issue 19, defect 7): MINUTES (default 30) of traffic at about half the gateway's measured
# capacity, from CONSUMERS (default 10,000) consumers over varied routes, sampling the server's
# resident memory every SAMPLE_SECS (default 10). Then RSS for a minute after the load stops.
# A benchmark, not a test: it reports the RSS slope after warm-up and never fails on a number.
#
# Usage: bash scripts/soak.sh     (env: MINUTES=30 CONSUMERS=10000 CONNS=32 SAMPLE_SECS=10
#        WARMUP_FRACTION=0.2 CACHE_MIB=64 BIN=path/to/clientele to skip the release build)
# Output: one line per sample (elapsed s, RSS MiB, then what GET /v1/status counts: the
# allocator's committed MiB, governance features MiB, the rollup cache MiB, sessions and open
# rollup series), then the RSS slope after warm-up in MiB/min, the change between the first
# and last post-warm-up samples and between the first and last 5-minute means; the samples
# are also written to bench-results/soak-<timestamp>.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-30}" CONSUMERS="${CONSUMERS:-10000}" CONNS="${CONNS:-32}"
# The rollup cache's budget ([analytics].rollup_cache_mib): part of the warm-up is its filling.
CACHE_MIB="${CACHE_MIB:-64}"
SAMPLE_SECS="${SAMPLE_SECS:-10}" WARMUP_FRACTION="${WARMUP_FRACTION:-0.2}"
die() { echo "soak: $*" >&2; exit 1; }
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "${BIN:-}" ]; then
  cargo build --release -p clientele
  BIN="${CARGO_TARGET_DIR:-target}/release/clientele"
fi
source scripts/serve-lib.sh
up_port=$(free_port) gw_port=$(free_port) admin_port=$(free_port)
token="soak-admin-token-0123456789"

# Upstream: nginx answering every path.
mkdir -p "$dir/up"
cat > "$dir/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/up/nginx.pid;
error_log $dir/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $dir/up/cb; proxy_temp_path $dir/up/p; fastcgi_temp_path $dir/up/f;
  uwsgi_temp_path $dir/up/u; scgi_temp_path $dir/up/s;
  default_type application/json;
  server { listen 127.0.0.1:$up_port; location / { return 200 '{"ok":true}'; } }
}
EOF
nginx -p "$dir/up/" -e "$dir/up/error.log" -c "$dir/up/nginx.conf" </dev/null >/dev/null 2>&1 &
pids+=($!)

cat > "$dir/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$gw_port"
[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"
max_body_bytes = 67108864
[storage]
data_dir = "$dir/data"
[analytics]
rollup_cache_mib = $CACHE_MIB
[[apis]]
name = "soak"
upstream = "http://127.0.0.1:$up_port"
prefix = "/"
[plans.std]
rate_per_second = 1000
burst = 1000
EOF
start_clientele "$BIN" "$admin_port"

echo "creating $CONSUMERS consumers with a key each..."
python3 scripts/provision.py "$admin_port" "$token" "$CONSUMERS" --teams 50 > "$dir/keys.txt"

# Varied routes: ids make each path distinct while templates stay few, like real traffic.
cat > "$dir/soak.lua" <<'EOF'
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do keys[#keys + 1] = line end
local routes = {"/pets/%d", "/users/%d/orders", "/search?q=%d", "/items/%d/reviews",
  "/v2/accounts/%d", "/status/%d", "/carts/%d/items", "/missing/%d"}
local d = tonumber(os.getenv("DELAY_MS") or "0")
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
request = function()
  local k = keys[math.random(#keys)]
  local path = string.format(routes[math.random(#routes)], math.random(1000000))
  return wrk.format("GET", path, {["x-api-key"] = k})
end
function delay() return d end
EOF
export KEYS_FILE="$dir/keys.txt"

echo "measuring capacity (10 s, $CONNS connections)..."
cap=$(DELAY_MS=0 wrk -t2 -c"$CONNS" -d10s -s "$dir/soak.lua" "http://127.0.0.1:$gw_port/" | awk '/Requests\/sec/ {print int($2)}')
[ "${cap:-0}" -gt 0 ] || die "capacity run served nothing"
target=$((cap / 2))
# wrk paces each connection with delay(): CONNS connections at DELAY_MS each give the target.
delay_ms=$(( CONNS * 1000 / (target > 0 ? target : 1) ))
echo "capacity ${cap} req/s; soaking at ~${target} req/s (delay ${delay_ms} ms per connection) for ${MINUTES} min"

mkdir -p bench-results
csv="bench-results/soak-$(date -u +%Y%m%dT%H%M%SZ).csv"
echo "elapsed_s,rss_mib,phase,committed_mib,governance_mib,rollup_cache_mib,sessions,rollup_series" > "$csv"
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status"; }
# What holds the memory, from GET /v1/status: the allocator's committed bytes and the parts
# Clientele counts (blank when the admin API does not answer in time).
parts() {
  curl -s -m 5 -H "authorization: Bearer $token" "http://127.0.0.1:$admin_port/v1/status" |
    python3 -c '
import json, sys
try:
    s = json.load(sys.stdin); m = s["memory"]
except Exception:
    print(",,,,"); sys.exit()
mib = lambda v: "" if v is None else "%.1f" % (v / 1048576)
print(",".join([mib(m["allocator_committed_bytes"]), mib(m["governance_bytes"]),
                mib(m["rollup_cache_bytes"]), str(m["sessions"]), str(s["rollups_series"])]))'
}
DELAY_MS=$delay_ms wrk -t2 -c"$CONNS" -d"$((MINUTES * 60))s" -s "$dir/soak.lua" "http://127.0.0.1:$gw_port/" > "$dir/wrk.out" 2>&1 &
wrk_pid=$!
pids+=($wrk_pid)
start=$SECONDS
while kill -0 "$wrk_pid" 2>/dev/null; do
  sleep "$SAMPLE_SECS"
  kill -0 "$wrk_pid" 2>/dev/null || break
  line="$((SECONDS - start)),$(rss),load,$(parts)"
  echo "$line" >> "$csv"
  echo "$line"
done
grep -E 'Requests/sec|requests in' "$dir/wrk.out" || true
for _ in 1 2 3 4 5 6; do
  sleep 10
  line="$((SECONDS - start)),$(rss),after,$(parts)"
  echo "$line" >> "$csv"
  echo "$line"
done
python3 - "$csv" "$WARMUP_FRACTION" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["phase"] == "load"]
if len(rows) < 4:
    sys.exit("too few samples for a slope")
rows = rows[int(len(rows) * float(sys.argv[2])):]
xs = [float(r["elapsed_s"]) / 60 for r in rows]
ys = [float(r["rss_mib"]) for r in rows]
mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
change = (ys[-1] - ys[0]) / ys[0] * 100
print("after warm-up: RSS %.1f -> %.1f MiB (%+.1f%%), slope %+.2f MiB/min over %.1f min"
      % (ys[0], ys[-1], change, slope, xs[-1] - xs[0]))
# RSS swings by tens of MiB within a minute (the minute flush builds and frees buckets), so
# single samples are noisy: the means of the first and last 5 minutes after warm-up too.
def mean(col, rs):
    vals = [float(r[col]) for r in rs if r.get(col)]
    return sum(vals) / len(vals) if vals else float("nan")
t0, t1 = xs[0], xs[-1]
first = [r for r, x in zip(rows, xs) if x < t0 + 5]
last = [r for r, x in zip(rows, xs) if x > t1 - 5]
a, b = mean("rss_mib", first), mean("rss_mib", last)
print("after warm-up, 5-minute means: RSS %.1f -> %.1f MiB (%+.1f%%)" % (a, b, (b - a) / a * 100))
for col, what in [("governance_mib", "governance features"), ("rollup_cache_mib", "rollup cache"),
                  ("committed_mib", "allocator committed")]:
    print("  %s: %.1f -> %.1f MiB" % (what, mean(col, first), mean(col, last)))
PY
echo "samples: $csv"
