#!/usr/bin/env bash
# Fuzzes every outside-facing parser (fuzz/fuzz_targets/*) for SECS seconds each (default 120)
# and prints, per target, the executions reached and whether it crashed. Crash inputs land in
# fuzz/artifacts/<target>/; each one found becomes a regression test in the crate it broke.
#
# Usage: bash scripts/fuzz.sh [target...]     (env: SECS=120 SANITIZER=none|address)
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features through RUSTC_BOOTSTRAP=1.
# The build is CPU-heavy (every dependency, instrumented): run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${SECS:-120}"
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
seed json_schema $'{"type":"object","required":["a"],"properties":{"a":{"type":"integer","minimum":1},"b":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]}},"additionalProperties":false}\n{"a":2,"b":"2026-01-01T00:00:00Z"}' 1
mkdir -p corpus/config_file corpus/openapi_load
sed -n '/^```toml$/,/^```$/p' ../README.md | sed '1d;$d' > corpus/config_file/seed-readme
cp ../crates/clientele-contract/tests/fixtures/kennel.yaml corpus/openapi_load/seed-kennel.yaml

cargo fuzz build -O -a -s "$SANITIZER"
printf '%-16s %14s %10s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  log=$(mktemp)
  status=0
  cargo fuzz run -O -a -s "$SANITIZER" "$t" -- -max_total_time="$SECS" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ "$status" = 0 ]; then result="0 crashes"; else result="CRASH (exit $status): $(grep -m1 -E 'panicked|ERROR' "$log" || true) see fuzz/artifacts/$t"; fi
  printf '%-16s %14s %10s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
  rm -f "$log"
done
