#!/usr/bin/env bash
# Analytics benchmarks in one command: in-process aggregation (cargo bench), then HTTP ingest
# and the 7-day per-consumer table against DuckDB at 1x and 10x (scripts/bench-analytics.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb
cargo build --release -p clientele
cargo bench -p clientele-analytics --bench aggregate
python3 scripts/bench-analytics.py
