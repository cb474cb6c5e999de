#!/usr/bin/env bash
# AI gateway benchmark: Clientele versus LiteLLM's proxy, both in front of one mock
# OpenAI-compatible provider. A benchmark, not a test: it never fails on slow numbers, it
# reports them.
#
# Targets, all answering POST /v1/chat/completions from the same mock provider
# (crates/clientele/examples/mock_llm.rs: JSON with usage, or an SSE stream of 5 content chunks
# GAP_MS apart plus the usage chunk):
#   direct     wrk -> mock provider                              (the floor)
#   clientele  wrk -> clientele -> mock    key auth (a consumer's key), usage read from the JSON
#              and from the SSE frames, priced, a token budget AND a dollar budget on the
#              consumer (reserved before forwarding, settled when the body ends), one event per
#              request stored
#   litellm    wrk -> litellm proxy -> mock    `litellm[proxy]` from PyPI, pinned below, its
#              master key, no database (LiteLLM's per-key budgets need PostgreSQL, so it does
#              less work per request here than clientele does)
#
# Two kinds of request: "json" (a chat completion) and "sse" ("stream": true with
# stream_options.include_usage). For each kind and target: req/s, p50 and p99 at CONNS
# concurrent connections (default 64), and the added p50/p99 against direct (per round, the
# proxy's run minus the direct run beside it; the median over ROUNDS rounds).
#
# Paced mode (RATE=<req/s>): closed-loop at saturation, p99 is mostly queueing in whichever
# process is the bottleneck. With RATE set, each wrk connection waits a random gap (exponential,
# mean CONNS/RATE seconds) after each answer before its next request, so the CONNS connections
# together offer about RATE req/s (a little less: a connection's answer time adds to its gap)
# and the added p99 is measured below saturation, at the same offered load for every target.
# wrk times each request from its send, so the gaps are not in the latencies. Pick RATE below the
# slowest target's saturation (LiteLLM: tens of req/s here); each run then serves about
# RATE x DURATION requests, so use a longer DURATION (e.g. 30) for a p99 worth the name.
#
# CPU layout (2-core machine): each proxy gets CPU 0 to itself (clientele's runtime sizes itself
# to the one CPU it may use; LiteLLM runs one uvicorn worker, its default); wrk and the mock
# share CPU 1. Targets alternate within each round, so drift on the machine spreads over all.
# Anything else busy on the machine makes the numbers noisy: see the load average printed.
#
# Usage: bash scripts/bench-ai.sh      (env: ROUNDS=3 DURATION=8 CONNS=64 GAP_MS=1 RATE=)
#        RATE=20 DURATION=30 bash scripts/bench-ai.sh      (paced, see above)
# The first run installs LiteLLM into target/bench-ai/venv (a few minutes); later runs reuse it.
# Results: printed, and written to bench-results/ai-<timestamp>.md with the raw numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
CONNS="${CONNS:-64}"
GAP_MS="${GAP_MS:-1}"
RATE="${RATE:-}"
WARMUP_SECS=3
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
ADMIN_TOKEN="bench-admin-token-0123456789"
MASTER_KEY="sk-bench-litellm-master"
MODEL="gpt-4o-mini"

BENCH=bench-ai
source scripts/bench-lib.sh
positive_ints ROUNDS DURATION CONNS
[[ $GAP_MS =~ ^[0-9]+$ ]] || die "GAP_MS must be a whole number of milliseconds (got '$GAP_MS')"
[ -z "$RATE" ] || positive_ints RATE

bench_lock

# ----- tools -----------------------------------------------------------------------------------
install_missing wrk curl python3 taskset=util-linux
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (proxy on CPU 0, wrk and the mock on CPU 1)"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$TARGET_DIR/bench-ai/venv"
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("litellm") != sys.argv[1])' \
  "$LITELLM_VERSION" 2>/dev/null; then
  echo "installing litellm[proxy]==$LITELLM_VERSION into $VENV (from PyPI)..."
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" || die "pip could not install litellm[proxy]"
fi

echo "building clientele and the mock provider (release)..."
cargo build --release -p clientele --bin clientele --example mock_llm
BIN="$TARGET_DIR/release/clientele"
MOCK="$TARGET_DIR/release/examples/mock_llm"
[ -x "$BIN" ] && [ -x "$MOCK" ] || die "no binaries at $BIN and $MOCK after the build"

# ----- ports ----------------------------------------------------------------------------------
distinct_ports 4
PORT_UP=${PORTS[0]} PORT_CL=${PORTS[1]} PORT_ADMIN=${PORTS[2]} PORT_LL=${PORTS[3]}

JSON_BODY="{\"model\":\"$MODEL\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"count to five\"}]}"
SSE_BODY="{\"model\":\"$MODEL\",\"max_tokens\":16,\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"count to five\"}]}"

# ----- the mock provider on CPU 1 --------------------------------------------------------------
taskset -c 1 "$MOCK" --listen "127.0.0.1:$PORT_UP" --gap-ms "$GAP_MS" </dev/null >"$TMP/mock.log" 2>&1 9>&- &
MOCK_PID=$!
STARTED+=("$MOCK_PID")
wait_200 "http://127.0.0.1:$PORT_UP/v1/chat/completions" 20 "$MOCK_PID" \
  -H 'content-type: application/json' -d "$JSON_BODY" || die "the mock did not start: $(cat "$TMP/mock.log")"

# ----- clientele on CPU 0 ----------------------------------------------------------------------
# Paced, wrk's delay() also runs before a connection's first request, so a connection can sit
# silent past the gateway's first-byte timeout (10 s, against idle floods), be closed, and count
# as a wrk socket error: with 64 connections and a mean gap of 3.2 s, 64 x e^(-10/3.2) = 2.8 a
# run. Real clients connect when they have something to send; paced runs raise the timeout.
FIRST_BYTE=""
[ -n "$RATE" ] && FIRST_BYTE="first_byte_timeout_secs = 600"
cat >"$TMP/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$PORT_CL"
$FIRST_BYTE
[admin]
listen = "127.0.0.1:$PORT_ADMIN"
token = "$ADMIN_TOKEN"
[storage]
data_dir = "$TMP/clientele-data"
[[apis]]
name = "llm"
upstream = "http://127.0.0.1:$PORT_UP"
prefix = "/"
upstream_headers = { Authorization = "Bearer sk-mock-provider" }
[plans.agents]
rate_per_second = 1000000
burst = 1000000
tokens_per_day = 1000000000000
budget_usd_per_day = 100000.0
EOF
env -u CLIENTELE_ADMIN_TOKEN -u CLIENTELE_LOG -u RUST_LOG \
  taskset -c 0 "$BIN" serve --config "$TMP/clientele.toml" </dev/null >"$TMP/clientele.log" 2>&1 9>&- &
CL_PID=$!
STARTED+=("$CL_PID")
wait_200 "http://127.0.0.1:$PORT_ADMIN/healthz" 30 "$CL_PID" \
  || die "clientele did not become healthy: $(tail -n 20 "$TMP/clientele.log")"
admin() { # method path [json-body]
  curl -sS --max-time 10 --fail-with-body -X "$1" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT_ADMIN$2"
}
resp=$(admin POST /v1/consumers '{"id":"bench-agent","plan":"agents"}') || die "creating the consumer failed: $resp"
resp=$(admin POST /v1/consumers/bench-agent/keys '{}') || die "creating the key failed: $resp"
CL_KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' <<<"$resp") \
  || die "no key in the response: $resp"
wait_200 "http://127.0.0.1:$PORT_CL/v1/chat/completions" 30 "$CL_PID" \
  -H "Authorization: Bearer $CL_KEY" -H 'content-type: application/json' -d "$JSON_BODY" \
  || die "clientele does not accept the new key: $(tail -n 20 "$TMP/clientele.log")"

# ----- litellm on CPU 0 ------------------------------------------------------------------------
cat >"$TMP/litellm.yaml" <<EOF
model_list:
  - model_name: $MODEL
    litellm_params:
      model: openai/$MODEL
      api_base: http://127.0.0.1:$PORT_UP/v1
      api_key: sk-mock-provider
general_settings:
  master_key: $MASTER_KEY
litellm_settings:
  set_verbose: false
EOF
# LITELLM_LOCAL_MODEL_COST_MAP: use the cost map in the package rather than fetch it (no
# network here). Warnings only, so logging costs it nothing it would not pay in production.
env LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
  taskset -c 0 "$VENV/bin/litellm" --config "$TMP/litellm.yaml" --host 127.0.0.1 --port "$PORT_LL" \
  --num_workers 1 </dev/null >"$TMP/litellm.log" 2>&1 9>&- &
LL_PID=$!
STARTED+=("$LL_PID")
wait_200 "http://127.0.0.1:$PORT_LL/v1/chat/completions" 180 "$LL_PID" \
  -H "Authorization: Bearer $MASTER_KEY" -H 'content-type: application/json' -d "$JSON_BODY" \
  || die "litellm did not answer: $(tail -n 30 "$TMP/litellm.log")"

# ----- every target answers the same thing, and the proxies enforce their keys -----------------
declare -A PORT=([direct]=$PORT_UP [clientele]=$PORT_CL [litellm]=$PORT_LL)
declare -A AUTH=([direct]="Bearer sk-mock-provider" [clientele]="Bearer $CL_KEY" [litellm]="Bearer $MASTER_KEY")
TARGETS=(direct clientele litellm)
KINDS=(json sse)
for t in "${TARGETS[@]}"; do
  out=$(curl -sS --max-time 10 -H "Authorization: ${AUTH[$t]}" -H 'content-type: application/json' \
    -d "$JSON_BODY" "http://127.0.0.1:${PORT[$t]}/v1/chat/completions")
  grep -q '"completion_tokens": *5' <<<"$out" || die "$t: the JSON answer has no usage: $out"
  out=$(curl -sS -N --max-time 10 -H "Authorization: ${AUTH[$t]}" -H 'content-type: application/json' \
    -d "$SSE_BODY" "http://127.0.0.1:${PORT[$t]}/v1/chat/completions")
  grep -q '"completion_tokens": *5' <<<"$out" && grep -q 'data: \[DONE\]' <<<"$out" \
    || die "$t: the stream lacks its usage chunk or [DONE]: $out"
done
for t in clientele litellm; do
  code=$(curl -s -o "$TMP/nokey.out" -w '%{http_code}' --max-time 10 -H 'content-type: application/json' \
    -d "$JSON_BODY" "http://127.0.0.1:${PORT[$t]}/v1/chat/completions")
  # Clientele answers 401; LiteLLM without a database 500 (a missing key) or 400 (a wrong one).
  [[ $code =~ ^[45] ]] || die "$t answered $code without a key (key auth off?): $(cat "$TMP/nokey.out")"
  code=$(curl -s -o "$TMP/nokey.out" -w '%{http_code}' --max-time 10 -H 'content-type: application/json' \
    -H 'Authorization: Bearer sk-wrong-key' -d "$JSON_BODY" "http://127.0.0.1:${PORT[$t]}/v1/chat/completions")
  [[ $code =~ ^4 ]] || die "$t answered $code to a wrong key (key auth off?): $(cat "$TMP/nokey.out")"
done

# ----- measurement -----------------------------------------------------------------------------
for k in "${KINDS[@]}"; do
  for t in "${TARGETS[@]}"; do
    if [ "$k" = json ]; then body=$JSON_BODY; else body=$SSE_BODY; fi
    cat >"$TMP/$k-$t.lua" <<EOF
wrk.method = "POST"
wrk.body = [[$body]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "${AUTH[$t]}"
EOF
    if [ -n "$RATE" ]; then
      # wrk calls delay() before each request of a connection: an exponential gap (a Poisson
      # arrival per connection) with mean CONNS/RATE s, so the connections do not march in step.
      cat >>"$TMP/$k-$t.lua" <<EOF
local mean_ms = $CONNS * 1000 / $RATE
math.randomseed(os.time())
function delay()
  return math.floor(-math.log(1 - math.random()) * mean_ms)
end
EOF
    fi
  done
done

# Runs wrk on CPU 1 and prints "rps requests p50_us p99_us non2xx socket_errors".
run_wrk() { # kind target seconds
  local out=$TMP/wrk.out
  if ! timeout --foreground -k 5 $(($3 + 60)) taskset -c 1 \
    wrk -t1 -c"$CONNS" -d"$3"s --timeout 30s --latency -s "$TMP/$1-$2.lua" \
    "http://127.0.0.1:${PORT[$2]}/v1/chat/completions" >"$out" 2>&1; then
    die "wrk failed: $(cat "$out")"
  fi
  awk '
    function us(s,  n, u) {
      n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n; if (u == "ms") return n * 1e3; if (u == "s") return n * 1e6
      if (u == "m") return n * 6e7; return -1
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

# utime+stime (fields 14 and 15 of /proc/PID/stat, clock ticks, all threads) of a process and
# its children (LiteLLM's uvicorn may run in a child), summed.
cpu_ticks() { # pid
  local total=0 pid t
  for pid in "$1" $(pgrep -P "$1" || true); do
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
declare -A PID_OF=([direct]=$MOCK_PID [clientele]=$CL_PID [litellm]=$LL_PID)

RAW=$TMP/raw.tsv
LOG=$TMP/runs.log
printf 'kind\ttarget\tround\treq_s\trequests\tcpu_us_per_req\tp50_us\tp99_us\tnon2xx\tsocket_errors\n' >"$RAW"
say() { echo "$*" | tee -a "$LOG"; }

# One recorded run. CPU-µs/req is the CPU time (all threads) the target's process spent during
# the run per request served: its cost, whatever else ran on the machine. For clientele the
# event pipeline's storing of the run's events may finish just after; a run's tail is counted in
# the next. For direct it is the mock's own cost.
measure() { # kind target round
  local res rps reqs p50 p99 non2xx errs warn="" before after cpu_us
  before=$(cpu_ticks "${PID_OF[$2]}")
  res=$(run_wrk "$1" "$2" "$DURATION")
  after=$(cpu_ticks "${PID_OF[$2]}")
  read -r rps reqs p50 p99 non2xx errs <<<"$res"
  cpu_us=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n > 0) ? d / hz * 1e6 / n : 0 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$rps" "$reqs" "$cpu_us" "$p50" "$p99" "$non2xx" "$errs" >>"$RAW"
  [ "$non2xx" -eq 0 ] && [ "$errs" -eq 0 ] || warn="  WARNING: $non2xx non-2xx, $errs socket errors"
  say "$(printf '[%s %d/%d] %-9s c=%-3d %8.0f req/s %7d reqs %9.1f CPU-µs/req  p50 %8dµs  p99 %8dµs%s' \
    "$1" "$3" "$ROUNDS" "$2" "$CONNS" "$rps" "$reqs" "$cpu_us" "$p50" "$p99" "$warn")"
}

LL_REPORTED=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')
HEADER=$(cat <<EOF
machine: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), kernel $(uname -r), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $("$VENV/bin/python" --version)
clientele: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (uncommitted changes)"), release build; litellm $LL_REPORTED (one uvicorn worker, no database)
load average at start: $(cut -d' ' -f1-3 /proc/loadavg)
settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNS=$CONNS GAP_MS=$GAP_MS (between stream chunks), $(if [ -n "$RATE" ]; then echo "paced: about $RATE req/s offered"; else echo "closed loop (saturation)"; fi); proxy on CPU 0, wrk + mock on CPU 1
EOF
)
echo
echo "$HEADER"
echo

echo "warming up (${WARMUP_SECS}s per target and kind, not recorded)..."
for k in "${KINDS[@]}"; do
  for t in "${TARGETS[@]}"; do run_wrk "$k" "$t" "$WARMUP_SECS" >/dev/null; done
done
for ((r = 1; r <= ROUNDS; r++)); do
  for k in "${KINDS[@]}"; do
    for t in "${TARGETS[@]}"; do measure "$k" "$t" "$r"; done
  done
done
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Clientele did the work it is credited with: the budgeted consumer's events carry tokens and a
# cost, and its limits show the budgets in use.
sleep 2
MODELS=$(admin GET "/v1/stats/models?consumer=bench-agent" || echo '{}')
LIMITS=$(admin GET "/v1/consumers/bench-agent/limits" || echo '{}')
CHECK=$(python3 - "$MODELS" "$LIMITS" <<'PY'
import json, sys
models = json.loads(sys.argv[1]).get("models", [])
limits = json.loads(sys.argv[2])
req = sum(m.get("requests", 0) for m in models)
tin = sum(m.get("tokens_in", 0) or 0 for m in models)
tout = sum(m.get("tokens_out", 0) or 0 for m in models)
cost = sum(m.get("cost_usd") or 0 for m in models)
budgets = ", ".join(f'{b["budget"]} used {b["used"]}' for b in limits.get("budgets", []))
print(f"clientele recorded {req} LLM requests for bench-agent: {tin} tokens in, {tout} out, ${cost:.4f}; budgets: {budgets or 'NONE'}")
PY
)
say "$CHECK"

# ----- report ----------------------------------------------------------------------------------
mkdir -p bench-results
REPORT="bench-results/ai-${RATE:+paced$RATE-}$(date +%Y%m%d-%H%M%S).md"
TABLE=$(python3 - "$RAW" <<'PY'
import csv, sys
from statistics import median

all_rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
# A run that completed no request (a stalled proxy) has no latency to take a median of; it is
# left out and named below.
rows = [r for r in all_rows if int(r["requests"]) > 0]
stalled = [r for r in all_rows if int(r["requests"]) == 0]
def col(kind, target, key):
    return [float(r[key]) for r in rows if r["kind"] == kind and r["target"] == target]
def by_round(kind, target, key):
    return {r["round"]: float(r[key]) for r in rows if r["kind"] == kind and r["target"] == target}
def ms(us):
    return f"{us / 1000:.2f}"

out = ["| request | target | req/s | CPU-µs/req | p50 ms | p99 ms | added p50 ms | added p99 ms |",
       "|---|---|---:|---:|---:|---:|---:|---:|"]
for kind in ("json", "sse"):
    for t in ("direct", "clientele", "litellm"):
        if not col(kind, t, "req_s"):
            out.append(f"| {kind} | {t} | 0 | — | — | — | — | — |")
            continue
        rps = median(col(kind, t, "req_s"))
        cpu = median(col(kind, t, "cpu_us_per_req"))
        p50 = median(col(kind, t, "p50_us"))
        p99 = median(col(kind, t, "p99_us"))
        if t == "direct":
            add50 = add99 = "—"
        else:
            adds = []
            for key in ("p50_us", "p99_us"):
                d, p = by_round(kind, "direct", key), by_round(kind, t, key)
                diffs = [p[r] - d[r] for r in p if r in d]
                adds.append(ms(median(diffs)) if diffs else "—")
            add50, add99 = adds
        out.append(f"| {kind} | {t} | {rps:,.0f} | {cpu:,.0f} | {ms(p50)} | {ms(p99)} | {add50} | {add99} |")
out.append("")
out.append("Medians over the rounds; added = the proxy's figure minus direct's in the same round;")
out.append("CPU-µs/req = the target process's CPU time per request (direct: the mock's own).")
if stalled:
    out.append("")
    out.append("**WARNING**: runs that completed no request within the run, left out of the medians: "
               + ", ".join(f'{r["kind"]} {r["target"]} round {r["round"]}' for r in stalled))
bad = [r for r in rows if int(r["non2xx"]) or int(r["socket_errors"])]
if bad:
    out.append("")
    out.append("**WARNING**: some runs had non-2xx responses or socket errors: "
               + ", ".join(f'{r["kind"]} {r["target"]} round {r["round"]}' for r in bad))
print("\n".join(out))
PY
)

{
  echo "# AI gateway benchmark: clientele vs LiteLLM proxy${RATE:+, paced at about $RATE req/s}"
  echo
  echo "$HEADER" | sed 's/^/- /'
  echo "- run at: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "$TABLE"
  echo
  echo "$CHECK"
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
