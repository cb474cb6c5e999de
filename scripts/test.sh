#!/usr/bin/env bash
# The test suite: unit tests, the store's shared suite, and end-to-end tests that run the real
# `clientele` binary against a real upstream on loopback. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)   # TLS test: makes a self-signed certificate
command -v curl >/dev/null || need+=(curl)         # TLS test: an independent HTTP/2 client
command -v redis-server >/dev/null || need+=(redis-server)  # limits: each test starts its own
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace --all-targets "$@"
