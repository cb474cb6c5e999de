#!/usr/bin/env bash
# The test suite: unit tests, the store's shared suite, and end-to-end tests that run the real
# `clientele` binary against a real upstream on loopback. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)   # TLS test: makes a self-signed certificate
command -v curl >/dev/null || need+=(curl)         # TLS test: an independent HTTP/2 client
command -v redis-server >/dev/null || need+=(redis-server)  # limits: each test starts its own
command -v promtool >/dev/null || need+=(prometheus) # exports test: promtool check metrics
command -v python3 >/dev/null || need+=(python3 python3-venv)  # exports test: OTLP decoder
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The exports test decodes OTLP payloads with the official protobuf definitions (PyPI
# opentelemetry-proto). Use the system Python if it has them, else a venv under target/.
if python3 -c 'import opentelemetry.proto' 2>/dev/null; then
  export CLIENTELE_TEST_PYTHON=python3
else
  venv=target/test-venv
  if ! "$venv/bin/python" -c 'import opentelemetry.proto' 2>/dev/null; then
    echo "installing opentelemetry-proto into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q opentelemetry-proto
  fi
  export CLIENTELE_TEST_PYTHON=$PWD/$venv/bin/python
fi

cargo test --workspace --all-targets "$@"
