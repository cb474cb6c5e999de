#!/usr/bin/env bash
# schemathesis against the admin API's own OpenAPI document (/v1/openapi.json) on a real server:
# 0 server errors and 0 response schema violations, within a bounded budget (MAX_TIME seconds,
# default 90). Run by scripts/test.sh after the cargo tests (it uses the debug binary they built).
#
# Usage: bash scripts/schemathesis.sh   (env: BIN=path/to/clientele MAX_TIME=90 SCHEMATHESIS=...)
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
BIN="${BIN:-$target_dir/debug/clientele}"
MAX_TIME="${MAX_TIME:-90}"
SCHEMATHESIS="${SCHEMATHESIS:-$target_dir/test-venv/bin/schemathesis}"
[ -x "$BIN" ] || { echo "schemathesis.sh: no binary at $BIN; run cargo build -p clientele" >&2; exit 1; }
[ -x "$SCHEMATHESIS" ] || { echo "schemathesis.sh: no schemathesis at $SCHEMATHESIS (scripts/test.sh installs it)" >&2; exit 1; }

source scripts/serve-lib.sh
gw_port=$(free_port); admin_port=$(free_port)
token="schemathesis-admin-token-0123456789"
cat > "$dir/clientele.toml" <<TOML
[gateway]
listen = "127.0.0.1:$gw_port"
[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"
[storage]
data_dir = "$dir/data"
[[apis]]
name = "petstore"
upstream = "http://127.0.0.1:9"
prefix = "/"
[plans.free]
rate_per_second = 5
burst = 10
TOML
start_clientele "$BIN" "$admin_port"
# A consumer with a key and an event, so lookups of it find something.
auth="Authorization: Bearer $token"
curl -sf -H "$auth" -H 'content-type: application/json' -d '{"id":"acme","plan":"free"}' "http://127.0.0.1:$admin_port/v1/consumers" >/dev/null

status=0
# One worker: with two, hypothesis parses lambda sources with ast.parse on two threads at once,
# and CPython 3.11 (Debian's and pyenv's 3.11.7 alike) shares the AST constructor's recursion
# counter between threads, so a run can die with "SystemError: AST constructor recursion depth
# mismatch" (CPython gh-106905; later releases keep that state per parser) before any request is wrong. Seen in CI.
"$SCHEMATHESIS" run "http://127.0.0.1:$admin_port/v1/openapi.json" \
  -H "$auth" \
  --checks not_a_server_error,response_schema_conformance \
  --max-time "$MAX_TIME" --max-examples 40 --workers 1 --seed 19 \
  --request-timeout 10 --suppress-health-check all --warnings off || status=$?
if grep -q panicked "$dir/server.log"; then
  echo "schemathesis.sh: the server panicked:" >&2
  grep -A5 panicked "$dir/server.log" >&2
  status=1
fi
exit $status
