#!/usr/bin/env bash
# Fuzzes every outside-facing parser (fuzz/fuzz_targets/*) for SECS seconds each (default 120)
# and prints, per target, the executions reached and whether it crashed. Crash inputs land in
# fuzz/artifacts/<target>/; each one found becomes a regression test in the crate it broke.
#
# Usage: bash scripts/fuzz.sh [target...]     (env: SECS=120 RUNS=-1 SANITIZER=none|address)
# RUNS stops a target after that many executions (whichever of SECS and RUNS comes first).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features through RUSTC_BOOTSTRAP=1.
# The build is CPU-heavy (every dependency, instrumented): run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${SECS:-120}"
RUNS="${RUNS:--1}"
# The code under test forbids unsafe, so AddressSanitizer finds little that a panic would not;
# without it the targets run several times faster. SANITIZER=address brings it back.
SANITIZER="${SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: install cargo-fuzz first: cargo install cargo-fuzz" >&2; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

# Seeds: real inputs of each shape, so the fuzzer starts from the interesting part of the space.
seed() { mkdir -p "corpus/$1"; printf '%s' "$2" > "corpus/$1/seed-$3"; }
seed ingest_line '{"ts":1767225600000,"consumer":"acme","method":"GET","path":"/pets/1?x=1","status":200,"latency_ms":12.5,"request_bytes":10,"response_bytes":99,"tokens_in":5,"cost_usd":0.01,"api":"petstore","upstream_latency_ms":3}' 1
seed ingest_line '[{"ts":"2026-01-01T00:00:00Z","consumer":"a","method":"post","path":"/x","status":503,"latency_ms":1,"route":"/x"}]' 2
seed path_normalise '/a//b/./c/../%7Euser/%2e%2e/x%20y' 1
# LLM requests: a streamed chat request without stream_options, one with it, one not streamed.
seed llm_request '{"model":"gpt-4o-mini","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}' 1
seed llm_request '{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"max_completion_tokens":9}' 2
seed llm_request '{"model":"claude-sonnet-4","max_tokens":1024,"messages":[]}' 3
seed json_schema $'{"type":"object","required":["a"],"properties":{"a":{"type":"integer","minimum":1},"b":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]}},"additionalProperties":false}\n{"a":2,"b":"2026-01-01T00:00:00Z"}' 1
# One line of each access-log shape `clientele import` reads (the logformat.rs unit tests' lines).
nginx='{"time_iso8601":"2026-10-10T13:55:36+00:00","remote_addr":"203.0.113.7","request":"POST /orders/42?x=1 HTTP/1.1","status":"422","body_bytes_sent":"87","request_length":"311","request_time":"0.035","upstream_response_time":"0.010, 0.020","http_user_agent":"acme-sdk/2","http_x_consumer_id":"acme"}'
nginx_local='{"time_local":"10/Oct/2026:13:55:36 +0000","request_method":"GET","request_uri":"http://h/pets#f","status":200,"request_time":"0.001","remote_user":"globex","msec":"1791640536.123"}'
kong='{"request":{"method":"GET","uri":"/v1/pets/7?limit=1","url":"http://api.example.com:8000/v1/pets/7?limit=1","size":212,"headers":{"user-agent":"curl/8.5"}},"response":{"status":503,"size":640},"latencies":{"request":515,"kong":58,"proxy":457},"consumer":{"id":"9c2b","username":"initech"},"client_ip":"198.51.100.4","started_at":1791640536000,"service":{"name":"petstore"}}'
envoy='{"start_time":"2026-10-10T13:55:36.123Z","method":"GET","path":"/search?q=cat","protocol":"HTTP/1.1","response_code":200,"response_flags":"-","bytes_received":0,"bytes_sent":1024,"duration":48,"upstream_service_time":"45","x_forwarded_for":"203.0.113.9, 10.0.0.1","user_agent":"python-requests/2.31","request_id":"5f1c","consumer":"umbrella","downstream_remote_address":"[::1]:52311"}'
seed import_nginx "$nginx" 1; seed import_nginx "$nginx_local" 2
seed import_kong "$kong" 1
seed import_envoy "$envoy" 1
seed import_detect "$nginx" 1; seed import_detect "$kong" 2; seed import_detect "$envoy" 3
seed import_detect '{"ts":1791640536000,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1.5}' 4
# OTLP traces: one HTTP server span, as JSON and as protobuf (written by python: NUL bytes).
seed otlp_json '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"pets"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"GET /pets/{id}","kind":2,"startTimeUnixNano":"1791640536000000000","endTimeUnixNano":"1791640536012000000","attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}},{"key":"url.path","value":{"stringValue":"/pets/1"}},{"key":"http.response.status_code","value":{"intValue":"200"}},{"key":"tags","value":{"arrayValue":{"values":[{"boolValue":true},{"doubleValue":1.5}]}}}]}]}]}]}' 1
# LLM answers: the golden wire formats of the gateway's tests, each behind a mode byte (flavor
# bit 0, SSE bit 1, chunk size above) that says how to read it.
for golden in ../crates/clientele-gateway/tests/llm/*.json ../crates/clientele-gateway/tests/llm/*.sse; do
  name=$(basename "$golden")
  mode=0
  case "$name" in anthropic*) mode=$((mode | 1)) ;; esac
  case "$name" in *.sse) mode=$((mode | 2)) ;; esac
  mkdir -p corpus/llm_usage
  { printf "\\$(printf '%03o' $((mode | 28)))"; cat "$golden"; } > "corpus/llm_usage/seed-$name"
done
mkdir -p corpus/otlp_protobuf
python3 - corpus/otlp_protobuf/seed-1 <<'PY'
import struct, sys
def v(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def f(tag, body): return v(tag << 3 | 2) + v(len(body)) + body
def kv(k, val): return f(1, k.encode()) + f(2, val)
s = lambda t: f(1, t.encode())
span = (f(1, bytes(range(1, 17))) + f(2, bytes(range(1, 9))) + f(5, b"GET /pets/{id}")
        + v(6 << 3) + v(2) + v(7 << 3 | 1) + struct.pack("<Q", 1791640536000000000)
        + v(8 << 3 | 1) + struct.pack("<Q", 1791640536012000000)
        + f(9, kv("http.request.method", s("GET"))) + f(9, kv("url.path", s("/pets/1")))
        + f(9, kv("http.response.status_code", v(3 << 3) + v(200)))
        + f(9, kv("tags", f(5, f(1, v(2 << 3) + v(1)) + f(1, v(4 << 3 | 1) + struct.pack("<d", 1.5))))))
rs = f(1, f(1, kv("service.name", s("pets")))) + f(2, f(2, span))
open(sys.argv[1], "wb").write(f(1, rs))
PY
mkdir -p corpus/config_file corpus/openapi_load
sed -n '/^```toml$/,/^```$/p' ../README.md | sed '1d;$d' > corpus/config_file/seed-readme
cp ../crates/clientele-contract/tests/fixtures/kennel.yaml corpus/openapi_load/seed-kennel.yaml

cargo fuzz build -O -a -s "$SANITIZER"
printf '%-16s %14s %10s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  log=$(mktemp)
  status=0
  cargo fuzz run -O -a -s "$SANITIZER" "$t" -- -max_total_time="$SECS" -runs="$RUNS" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ "$status" = 0 ]; then result="0 crashes"; else result="CRASH (exit $status): $(grep -m1 -E 'panicked|ERROR' "$log" || true) see fuzz/artifacts/$t"; fi
  printf '%-16s %14s %10s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
  rm -f "$log"
done
