#!/usr/bin/env bash
# Gateway benchmark: Clientele versus nginx as a plain reverse proxy. A benchmark, not a test:
# it never fails on slow numbers, it reports them.
#
# What it measures, on loopback, for three targets that all answer GET /pets/1 with {"ok":true}:
#   direct     wrk -> upstream nginx                         (the floor: no proxy at all)
#   nginx      wrk -> nginx reverse proxy -> upstream         (the reference a gateway is held to)
#   clientele  wrk -> clientele (key auth + event capture on) -> upstream
#
#   req/s         throughput at CONNS connections (default 64), median over ROUNDS runs.
#   ratio         req/s divided by nginx's req/s; 1.00 means as fast as nginx.
#   CPU-µs/req    CPU time (user+system, all threads) the proxy process consumed during a run,
#                 divided by the requests it served: the cost of one request, independent of how
#                 loaded the machine was. For clientele the window extends until its event
#                 pipeline has stored (or dropped) every event of the run, so event capture is
#                 paid for. For "direct" it is the upstream nginx's own cost, for scale.
#                 req/s x CPU-µs/req / 1e6 is the share of its core a proxy used: near 1.0 it was
#                 CPU-bound; well below, something else (wrk, the upstream, wake-ups) set the
#                 pace, and CPU-µs/req is the fairer comparison.
#   p50/p99 c=1   latency with a single connection (no queueing), so "added vs direct" is the
#                 time the proxy itself adds to one request. Median over rounds of the per-round
#                 difference.
#
# CPU layout on the 2-core machine this was written for: each proxy gets CPU 0 to itself; wrk and
# the upstream share CPU 1. The proxy is therefore the only thing being scaled, and both proxies
# get exactly one core (nginx: worker_processes 1; clientele: its runtime sizes itself to the one
# CPU it is allowed). Targets run alternately (direct, nginx, clientele, direct, ...), so slow
# drift on the machine (another build, thermal) spreads over all targets instead of biasing one.
# Anything else busy on the machine makes the numbers noisy: check the load average printed at
# the top.
#
# Usage: bash scripts/bench-gateway.sh          (env: ROUNDS=3 DURATION=10 CONNS=64)
# It builds and measures the working tree as it is, uncommitted changes included.
# Results: printed, and written to bench-results/gateway-<timestamp>.md with the raw numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
LAT_SECS=5          # length of each c=1 latency run
WARMUP_SECS=2       # unrecorded run per target first: fills connection pools and caches
ADMIN_TOKEN="bench-admin-token-0123456789"
REQ_PATH="/pets/1"

BENCH=bench-gateway
source scripts/bench-lib.sh
positive_ints ROUNDS DURATION CONNS
bench_lock

# nginx lives in /usr/sbin, which is not on a normal user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# ----- tools -----------------------------------------------------------------------------------
# Debian starts the packaged nginx service on install on some systems; it is not ours to stop,
# and it does not matter: our instances use their own ports.
install_missing nginx wrk curl python3 taskset=util-linux
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (proxy on CPU 0, wrk and upstream on CPU 1)"

echo "building clientele (release)..."
cargo build --release -p clientele
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/clientele"
[ -x "$BIN" ] || die "no binary at $BIN after the build"

# ----- processes ------------------------------------------------------------------------------
# nginx workers drop root to 'nobody' and must reach their temp dirs inside $TMP.
chmod 711 "$TMP"
distinct_ports 4
PORT_UP=${PORTS[0]} PORT_NG=${PORTS[1]} PORT_G=${PORTS[2]} PORT_A=${PORTS[3]}

# Temp paths are Debian's /var/lib/nginx by default, unwritable for non-root; keep all in $dir.
# keepalive_requests is raised everywhere (default 1000) so no target pays for periodic
# reconnects that the others do not; the benchmark is about per-request proxy work.
nginx_common() { # dir
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # dir
  cat <<EOF
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $1/client_body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}

# Starts nginx with config file $2 on CPU $1; sets STARTED_PID. 'daemon off' keeps the master our
# child, and taskset execs nginx, so $! is the master's pid.
start_nginx() { # cpu conf
  local dir
  dir=$(dirname "$2")
  taskset -c "$1" nginx -p "$dir/" -e "$dir/error.log" -c "$2" </dev/null >"$dir/stdout.log" 2>&1 9>&- &
  STARTED_PID=$!
  STARTED+=("$STARTED_PID")
}

# utime+stime (fields 14 and 15 of /proc/PID/stat, clock ticks, all threads) summed over pids.
# The text after the last ')' starts at field 3, so 14 and 15 become 12 and 13.
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    total=$((total + t))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# ----- upstream: nginx on CPU 1 ----------------------------------------------------------------
mkdir -p "$TMP/upstream"
{
  nginx_common "$TMP/upstream"
  echo "http {"
  nginx_http_common "$TMP/upstream"
  cat <<EOF
  default_type application/json;
  server {
    listen 127.0.0.1:$PORT_UP;
    location / { return 200 '{"ok":true}'; }
  }
}
EOF
} >"$TMP/upstream/nginx.conf"
start_nginx 1 "$TMP/upstream/nginx.conf"
UP_MASTER=$STARTED_PID
wait_200 "http://127.0.0.1:$PORT_UP/" 30 "$UP_MASTER" \
  || die "upstream nginx did not start: $(cat "$TMP/upstream/error.log" "$TMP/upstream/stdout.log" 2>/dev/null)"
mapfile -t UP_WORKERS < <(pgrep -P "$UP_MASTER")
STARTED+=("${UP_WORKERS[@]}")
UP_PIDS=("$UP_MASTER" "${UP_WORKERS[@]}")

# ----- proxy A: nginx on CPU 0 -----------------------------------------------------------------
mkdir -p "$TMP/proxy"
{
  nginx_common "$TMP/proxy"
  echo "http {"
  nginx_http_common "$TMP/proxy"
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$PORT_UP;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$PORT_NG;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$TMP/proxy/nginx.conf"
start_nginx 0 "$TMP/proxy/nginx.conf"
NG_MASTER=$STARTED_PID
wait_200 "http://127.0.0.1:$PORT_NG/" 30 "$NG_MASTER" \
  || die "proxy nginx did not start: $(cat "$TMP/proxy/error.log" "$TMP/proxy/stdout.log" 2>/dev/null)"
mapfile -t NG_WORKERS < <(pgrep -P "$NG_MASTER")
STARTED+=("${NG_WORKERS[@]}")
NG_PIDS=("$NG_MASTER" "${NG_WORKERS[@]}")

# ----- proxy B: clientele on CPU 0 -------------------------------------------------------------
cat >"$TMP/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$PORT_G"
[admin]
listen = "127.0.0.1:$PORT_A"
token = "$ADMIN_TOKEN"
[storage]
data_dir = "$TMP/clientele-data"
[[apis]]
name = "bench"
upstream = "http://127.0.0.1:$PORT_UP"
prefix = "/"
EOF
# The environment could override the token (CLIENTELE_ADMIN_TOKEN) or turn on debug logging;
# the benchmark measures the config above with default logging, whatever the caller's shell has.
env -u CLIENTELE_ADMIN_TOKEN -u CLIENTELE_LOG -u RUST_LOG \
  taskset -c 0 "$BIN" serve --config "$TMP/clientele.toml" </dev/null >"$TMP/clientele.log" 2>&1 9>&- &
CL_PID=$!
STARTED+=("$CL_PID")
wait_200 "http://127.0.0.1:$PORT_A/healthz" 30 "$CL_PID" \
  || die "clientele did not become healthy: $(tail -n 20 "$TMP/clientele.log")"

admin() { # method path [json-body]
  curl -sS --max-time 10 --fail-with-body -X "$1" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT_A$2"
}
resp=$(admin POST /v1/consumers '{"id":"bench"}') || die "creating the consumer failed: $resp"
resp=$(admin POST /v1/consumers/bench/keys '{}') || die "creating the key failed: $resp"
KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' <<<"$resp") \
  || die "no key in the response: $resp"
wait_200 "http://127.0.0.1:$PORT_G$REQ_PATH" 30 "$CL_PID" -H "X-API-Key: $KEY" \
  || die "clientele does not accept the new key: $(tail -n 20 "$TMP/clientele.log")"

# Every target must answer the exact same thing, or the comparison is meaningless; and clientele
# must actually enforce the key, or it is skipping the work being measured.
for port in "$PORT_UP" "$PORT_NG" "$PORT_G"; do
  body=$(curl -sS --max-time 5 -H "X-API-Key: $KEY" "http://127.0.0.1:$port$REQ_PATH")
  [ "$body" = '{"ok":true}' ] || die "port $port answered '$body' instead of {\"ok\":true}"
done
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT_G$REQ_PATH")
[ "$code" = 401 ] || die "clientele answered $code without a key; expected 401 (key auth off?)"

status_json() { admin GET /v1/status; }
# Prints "offered dropped stored store_errors" from /v1/status.
status_counts() {
  status_json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["events_offered"], s["events_dropped"], s["events_stored"], s.get("events_store_errors", 0))'
}
# Waits (up to 30 s) until every offered event is stored, dropped or failed, so the CPU spent
# storing a run's events is charged to that run.
wait_pipeline_drained() {
  local deadline=$((SECONDS + 30)) o d s e counts
  while :; do
    counts=$(status_counts)
    read -r o d s e <<<"$counts"
    [ $((d + s + e)) -ge "$o" ] && return 0
    [ $SECONDS -lt $deadline ] || { echo "  (pipeline still behind after 30 s: offered=$o done=$((d + s + e)))"; return 0; }
    sleep 0.1
  done
}

# ----- measurement -----------------------------------------------------------------------------
declare -A PORT=([direct]=$PORT_UP [nginx]=$PORT_NG [clientele]=$PORT_G)
TARGETS=(direct nginx clientele)

# Runs wrk on CPU 1 and prints "rps requests p50_us p99_us non2xx socket_errors".
run_wrk() { # port conns seconds
  local out=$TMP/wrk.out
  if ! timeout --foreground -k 5 $(($3 + 30)) taskset -c 1 \
    wrk -t1 -c"$2" -d"$3"s --latency -H "X-API-Key: $KEY" "http://127.0.0.1:$1$REQ_PATH" >"$out" 2>&1; then
    die "wrk failed: $(cat "$out")"
  fi
  awk '
    function us(s,  n, u) {   # "812.00us" / "1.23ms" / "1.05s" / "2.00m" -> microseconds
      n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n; if (u == "ms") return n * 1e3; if (u == "s") return n * 1e6
      if (u == "m") return n * 6e7; if (u == "h") return n * 3.6e9; return -1
    }
    /^ +50% /               { p50 = us($2) }
    /^ +99% /               { p99 = us($2) }
    / requests in /         { reqs = $1 }
    /^Requests\/sec:/       { rps = $2 }
    /Non-2xx or 3xx/        { non2xx = $NF }
    /Socket errors:/        { gsub(/,/, ""); errs = $4 + $6 + $8 + $10 }
    END {
      if (reqs == "" || rps == "") exit 1
      printf "%s %s %.0f %.0f %d %d\n", rps, reqs, p50, p99, non2xx, errs
    }' "$out" || die "cannot parse wrk output: $(cat "$out")"
}

proxy_pids() { # target
  case $1 in
    direct) echo "${UP_PIDS[@]}" ;;
    nginx) echo "${NG_PIDS[@]}" ;;
    clientele) echo "$CL_PID" ;;
  esac
}

RAW=$TMP/raw.tsv
LOG=$TMP/runs.log
printf 'phase\ttarget\tround\treq_s\trequests\tcpu_us_per_req\tupstream_cpu_us_per_req\tp50_us\tp99_us\tnon2xx\tsocket_errors\n' >"$RAW"
say() { echo "$*" | tee -a "$LOG"; }

# One recorded run: throughput (conns=$CONNS) or latency (conns=1).
measure() { # phase target round
  local phase=$1 t=$2 round=$3 conns secs pids before up_before after up_after
  local rps reqs p50 p99 non2xx errs o0 d0 o1 d1 _s _e events="" res counts
  if [ "$phase" = throughput ]; then conns=$CONNS secs=$DURATION; else conns=1 secs=$LAT_SECS; fi
  read -r -a pids <<<"$(proxy_pids "$t")"
  if [ "$t" = clientele ]; then
    counts=$(status_counts)
    read -r o0 d0 _s _e <<<"$counts"
  fi
  before=$(cpu_ticks "${pids[@]}")
  up_before=$(cpu_ticks "${UP_PIDS[@]}")
  # Command substitution rather than < <(...), so a failing wrk stops the script.
  res=$(run_wrk "${PORT[$t]}" "$conns" "$secs")
  read -r rps reqs p50 p99 non2xx errs <<<"$res"
  if [ "$t" = clientele ]; then
    wait_pipeline_drained
    counts=$(status_counts)
    read -r o1 d1 _s _e <<<"$counts"
    events="  events +$((o1 - o0)) offered, +$((d1 - d0)) dropped"
  fi
  after=$(cpu_ticks "${pids[@]}")
  up_after=$(cpu_ticks "${UP_PIDS[@]}")
  local cpu_us up_us
  cpu_us=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  up_us=$(awk -v d=$((up_after - up_before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$phase" "$t" "$round" "$rps" "$reqs" "$cpu_us" "$up_us" "$p50" "$p99" "$non2xx" "$errs" >>"$RAW"
  local warn=""
  [ "$non2xx" -eq 0 ] && [ "$errs" -eq 0 ] || warn="  WARNING: $non2xx non-2xx, $errs socket errors"
  say "$(printf '[%s %d/%d] %-9s c=%-3d %9.0f req/s %9d reqs  %7.2f CPU-µs/req  p50 %6dµs  p99 %6dµs%s%s' \
    "$phase" "$round" "$ROUNDS" "$t" "$conns" "$rps" "$reqs" "$cpu_us" "$p50" "$p99" "$events" "$warn")"
}

NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
HEADER=$(cat <<EOF
machine: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), kernel $(uname -r), $NGINX_VERSION, $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')
clientele: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (uncommitted changes)"), release build
load average at start: $(cut -d' ' -f1-3 /proc/loadavg)
settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNS=$CONNS, latency runs c=1 for ${LAT_SECS}s; proxy on CPU 0, wrk + upstream on CPU 1
EOF
)
echo
echo "$HEADER"
echo

echo "warming up (${WARMUP_SECS}s per target, not recorded)..."
for t in "${TARGETS[@]}"; do run_wrk "${PORT[$t]}" "$CONNS" "$WARMUP_SECS" >/dev/null; done
wait_pipeline_drained

for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do measure throughput "$t" "$r"; done
done
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do measure latency "$t" "$r"; done
done

CL_STATUS=$(status_json)
say ""
say "clientele /v1/status after all runs: $CL_STATUS"
# Where clientele's CPU went (whole session, warm-up included): the hot path runs on the
# runtime worker, event storage on blocking/pipeline threads. A hint for profiling, nothing more.
say "clientele CPU by thread (seconds, whole session):"
for task in /proc/"$CL_PID"/task/*; do
  # A thread can exit between the glob and the read; skip it.
  ticks=$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
  comm=$(cat "$task/comm" 2>/dev/null) || continue
  printf '%s %s %s\n' "$ticks" "${task##*/}" "$comm"
done | sort -rn | awk 'NR <= 6' | awk -v hz="$CLK_TCK" '$1 > 0 { printf "  %8.2f  tid %-7s %s\n", $1 / hz, $2, $3 }' | tee -a "$LOG"

# ----- report ----------------------------------------------------------------------------------
mkdir -p bench-results
REPORT="bench-results/gateway-$(date +%Y%m%d-%H%M%S).md"
TABLE=$(python3 - "$RAW" <<'PY'
import csv, sys
from statistics import median

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def col(phase, target, key):
    return [float(r[key]) for r in rows if r["phase"] == phase and r["target"] == target]
def by_round(phase, target, key):
    return {r["round"]: float(r[key]) for r in rows if r["phase"] == phase and r["target"] == target}

targets = [("direct", "direct (no proxy)"), ("nginx", "nginx proxy"), ("clientele", "clientele")]
nginx_rps = median(col("throughput", "nginx", "req_s"))
out = ["| target | req/s (median) | ratio vs nginx | CPU-µs/req | p50 µs (c=1) | p99 µs (c=1) | added p50 vs direct | added p99 vs direct |",
       "|---|---:|---:|---:|---:|---:|---:|---:|"]
for t, label in targets:
    rps = median(col("throughput", t, "req_s"))
    cpu = median(col("throughput", t, "cpu_us_per_req"))
    p50 = median(col("latency", t, "p50_us"))
    p99 = median(col("latency", t, "p99_us"))
    if t == "direct":
        add50 = add99 = "—"
        label += " ¹"
    else:
        # Per-round differences: each proxy run is paired with the direct run next to it.
        adds = {}
        for key in ("p50_us", "p99_us"):
            d, p = by_round("latency", "direct", key), by_round("latency", t, key)
            adds[key] = "%+.0f" % median(p[r] - d[r] for r in p if r in d)
        add50, add99 = adds["p50_us"], adds["p99_us"]
    out.append(f"| {label} | {rps:,.0f} | {rps / nginx_rps:.2f} | {cpu:.1f} | {p50:.0f} | {p99:.0f} | {add50} | {add99} |")
out.append("")
out.append("¹ CPU-µs/req for direct is the upstream nginx's own cost per request, for scale.")
bad = [r for r in rows if int(r["non2xx"]) or int(r["socket_errors"])]
if bad:
    out.append("")
    out.append("**WARNING**: some runs had non-2xx responses or socket errors: "
               + ", ".join(f'{r["phase"]} {r["target"]} round {r["round"]}' for r in bad))
print("\n".join(out))
PY
)

{
  echo "# Gateway benchmark: clientele vs nginx reverse proxy"
  echo
  echo "$HEADER" | sed 's/^/- /'
  echo "- run at: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "$TABLE"
  echo
  echo "## Runs"
  echo
  echo '```'
  cat "$LOG"
  echo '```'
  echo
  echo "## Raw numbers"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
} >"$REPORT"

echo
echo "$TABLE"
echo
echo "written to $REPORT"
