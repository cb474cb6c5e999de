#!/usr/bin/env python3
"""Durable HTTP ingest: 1M sparse events (5,000 consumers x 20 routes over 14 days), prepared as
NDJSON batches of 10,000, posted to `POST /v1/events` by 4 concurrent clients. Every 202 means
the batch is durable (in the event log). Each round starts a fresh server; the figures are the
medians of ROUNDS rounds. Also: RSS after ingest, the data folder's size, and the time from a
restart to serving.

Run: `bash scripts/bench-ingest.sh` (builds the release binary). Env: EVENTS=1000000, ROUNDS=3.
This is a benchmark, not a test: it never fails on a time. The issue's starting point was 57k
events/s (SQLite, one row per event).
"""

import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_analytics", os.path.join(HERE, "bench-analytics.py"))
ba = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ba)

EVENTS = int(os.environ.get("EVENTS", "1000000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONSUMERS, ROUTES = 5000, 20


def batches(n, now_ms):
    rng = random.Random(7)
    span = 14 * 86_400_000
    out, lines = [], []
    for i in range(n):
        c, r = rng.randrange(CONSUMERS), rng.randrange(ROUTES)
        status = 500 if rng.random() < 0.01 else 200
        lines.append(json.dumps({"id": f"s{i}", "ts": now_ms - span + i * span // n, "consumer": f"consumer-{c:04d}",
                                 "method": "GET", "path": f"/r{r}/{rng.randrange(1000)}", "route": f"/r{r}/{{id}}",
                                 "status": status, "latency_ms": round(rng.lognormvariate(3.0, 0.8), 3),
                                 "request_bytes": 300, "response_bytes": 2000}))
        if len(lines) == 10_000:
            out.append(("\n".join(lines) + "\n").encode())
            lines = []
    if lines:
        out.append(("\n".join(lines) + "\n").encode())
    return out


def start(tmp):
    gport, aport = ba.free_port(), ba.free_port()
    with open(os.path.join(tmp, "clientele.toml"), "w") as f:
        f.write(f"""
[gateway]
listen = "127.0.0.1:{gport}"
[admin]
listen = "127.0.0.1:{aport}"
token = "{ba.TOKEN}"
max_body_bytes = 67108864
[storage]
data_dir = "data"
raw_event_retention_days = 30
""")
    log = open(os.path.join(tmp, "server.log"), "a")
    t = time.perf_counter()
    proc = subprocess.Popen([ba.BIN, "serve", "--config", os.path.join(tmp, "clientele.toml")], stderr=log,
                            stdout=subprocess.DEVNULL)
    while True:
        try:
            if ba.request(aport, "GET", "/healthz")[0] == 200:
                return proc, aport, time.perf_counter() - t
        except OSError:
            time.sleep(0.02)
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {tmp}/server.log")


def main():
    now_ms = int(time.time() * 1000)
    t = time.perf_counter()
    prepared = batches(EVENTS, now_ms)
    print(f"prepared {EVENTS:,} events in {len(prepared)} NDJSON batches in {time.perf_counter() - t:.1f} s")
    rates, rss, disk, restarts = [], [], [], []
    for r in range(ROUNDS):
        tmp = tempfile.mkdtemp(prefix="clientele-ingest-")
        proc, aport, _ = start(tmp)
        try:
            secs = ba.ingest(aport, prepared, threads=4)
            rates.append(EVENTS / secs)
            rss.append(ba.rss_kib(proc.pid) / 1024)
            disk.append(ba.dir_bytes(os.path.join(tmp, "data")) / EVENTS)
            print(f"round {r + 1}: {EVENTS / secs:,.0f} events/s ({secs:.2f} s), RSS {rss[-1]:.0f} MiB, "
                  f"{disk[-1]:.0f} B/event on disk")
        finally:
            proc.terminate()
            proc.wait()
        proc, aport, up = start(tmp)
        restarts.append(up)
        print(f"round {r + 1}: restart to serving {up:.2f} s")
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| measure | median |")
    print("|---|---|")
    print(f"| durable HTTP ingest, 4 clients, {EVENTS:,} sparse events | {statistics.median(rates):,.0f} events/s |")
    print(f"| server RSS after ingest | {statistics.median(rss):.0f} MiB |")
    print(f"| data folder | {statistics.median(disk):.0f} B/event |")
    print(f"| restart to serving | {statistics.median(restarts):.2f} s |")


if __name__ == "__main__":
    main()
