#!/usr/bin/env bash
# Analytics benchmarks in one command: in-process aggregation (cargo bench), then HTTP ingest,
# the per-consumer table against DuckDB, RSS and restart time in four worlds, up to the sparse
# 1M-event one (scripts/bench-analytics.py; WORLDS=sparse-1m runs one).
set -euo pipefail
cd "$(dirname "$0")/.."
# DuckDB from PyPI: the system Python's if it has it, else a venv under target/.
py=python3
if ! python3 -c 'import duckdb' 2>/dev/null; then
  venv=target/bench-venv
  if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q duckdb
  fi
  py=$venv/bin/python
fi
cargo build --release -p clientele
cargo bench -p clientele-analytics --bench aggregate
"$py" scripts/bench-analytics.py
