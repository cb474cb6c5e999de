#!/usr/bin/env bash
# The test suite: unit tests, the store's shared suite, and end-to-end tests that run the real
# `clientele` binary against a real upstream on loopback. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo's target directory, absolute (CARGO_TARGET_DIR when set: a clone may share a build).
target_dir=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)

need=()
command -v openssl >/dev/null || need+=(openssl)   # TLS test: makes a self-signed certificate
command -v curl >/dev/null || need+=(curl)         # TLS test: an independent HTTP/2 client
command -v redis-server >/dev/null || need+=(redis-server)  # limits: each test starts its own
command -v promtool >/dev/null || need+=(prometheus) # exports test: promtool check metrics
command -v python3 >/dev/null || need+=(python3 python3-venv)  # exports test: OTLP decoder
# The PostgreSQL control plane: the store suite and the two-node e2e start their own server
# (initdb + pg_ctl from Debian's package, a temporary folder, a free port).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The ClickHouse event store's tests start a real server the same way (Debian's 18.16 package).
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Python packages from PyPI: the exports test decodes OTLP payloads with the official protobuf
# definitions (opentelemetry-proto); the OTLP ingest test sends spans with the official SDK and
# its OTLP/HTTP exporter; the WebSocket test's echo upstream and client are `websockets`; the LLM
# tests stream through the gateway with the official `openai` and `anthropic` SDKs. Use the system Python if it has them, else a venv in the target directory
# (CARGO_TARGET_DIR when set, so a clone sharing a build shares the venv too).
py_check='import opentelemetry.proto, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, websockets.asyncio.client, openai, anthropic'
py_packages=(opentelemetry-proto opentelemetry-sdk opentelemetry-exporter-otlp-proto-http 'websockets>=13' openai anthropic)
if python3 -c "$py_check" 2>/dev/null; then
  export CLIENTELE_TEST_PYTHON=python3
else
  venv=$target_dir/test-venv
  if ! "$venv/bin/python" -c "$py_check" 2>/dev/null; then
    echo "installing ${py_packages[*]} into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q "${py_packages[@]}"
  fi
  export CLIENTELE_TEST_PYTHON=$venv/bin/python
fi

# schemathesis (PyPI) checks the admin API against its own OpenAPI document; it lives in the
# same venv as the OTLP decoder.
st_venv=$target_dir/test-venv
if ! [ -x "$st_venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $st_venv"
  [ -x "$st_venv/bin/python" ] || python3 -m venv "$st_venv"
  "$st_venv/bin/python" -m pip install -q schemathesis
fi

# `postgres`: the PostgreSQL control plane; `clickhouse`: events in ClickHouse. Both off in the
# default build, always built and tested here.
cargo test --workspace --all-targets --features clientele/postgres,clientele-store/postgres,clientele/clickhouse,clientele-store/clickhouse "$@"

# The admin API under schemathesis, on the debug binary the e2e tests just built: 0 server
# errors, 0 response schema violations, within a bounded time (MAX_TIME, 90 s by default).
SCHEMATHESIS="$st_venv/bin/schemathesis" bash scripts/schemathesis.sh

# Browser tests of the dashboard and portal: Debian's Chromium driven by playwright-core (no
# browser download), against the debug binary the e2e tests just built.
# CLIENTELE_SKIP_BROWSER=1 skips them.
if [ "${CLIENTELE_SKIP_BROWSER:-0}" != 1 ]; then
  need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v npm >/dev/null || need+=(nodejs npm)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  (
    cd tests/browser
    # Install on first use, and again whenever the lockfile is newer than the last install.
    if ! [ node_modules/.installed -nt package-lock.json ]; then
      npm ci --no-audit --no-fund --loglevel=error
      touch node_modules/.installed
    fi
    CLIENTELE_BIN="$target_dir/debug/clientele" npm test --silent
  )
fi
