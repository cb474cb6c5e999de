#!/usr/bin/env bash
# Durable HTTP ingest of 1M sparse events, 4 clients, medians (scripts/bench-ingest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p clientele
python3 scripts/bench-ingest.py
