#!/usr/bin/env python3
"""Analytics benchmark: HTTP ingest throughput, and the per-consumer table against DuckDB.

What it measures, in each world of synthetic rows:
  1. Ingest over HTTP: NDJSON batches posted to `POST /v1/events` by 4 concurrent clients,
     end to end (parse, validate, durable SQLite commit, rollups), in events/s.
  2. The server's RSS after the load.
  3. The per-consumer table (`GET /v1/stats/consumers` over the world's days: requests, errors
     by class, 429s, error rate, p50/p95/p99, bytes), median of 11 calls, against DuckDB
     computing the same table exactly (quantile_disc, nearest rank) over the same rows held in
     memory. Counts must match exactly, percentiles within the sketch's 1%.
  4. Restart: SIGTERM, start again on the same data, time until it serves, and RSS then.
  5. Bytes on disk per event and the server's memory per rollup.

Worlds (env WORLDS, comma-separated; default all):
  dense-600k  600k events, 2,000 consumers (a long tail), 5 routes, 7 days
  dense-6m    the same at 10x the events: ours reads rollups, DuckDB scans rows
  sparse-600k 600k events, 2,000 consumers x 20 routes, uniform, 7 days
  sparse-1m   1M events, 5,000 consumers x 20 routes, uniform, 14 days

Run: `bash scripts/bench-analytics.sh` (builds the release binary, installs duckdb with pip).
This is a benchmark, not a test: it never fails on a time.
"""

import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# name: (events, consumers, routes, days, sparse)
WORLDS = {
    "dense-600k": (600_000, 2000, 5, 7, False),
    "dense-6m": (6_000_000, 2000, 5, 7, False),
    "sparse-600k": (600_000, 2000, 20, 7, True),
    "sparse-1m": (1_000_000, 5000, 20, 14, True),
}
SELECTED = os.environ.get("WORLDS", ",".join(WORLDS)).split(",")
# BIN=path/to/clientele compares another build (a before/after measurement).
BIN = os.environ.get("BIN") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "clientele")
TOKEN = "bench-admin-token-0123456789"
ROUTES = [("GET", "/v1/items/{id}"), ("GET", "/v1/search"), ("POST", "/v1/orders"), ("GET", "/v1/users/{id}"), ("DELETE", "/v1/items/{id}")]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def routes(k):
    """The 5 dense-world routes, or k routes of a wider API."""
    if k <= len(ROUTES):
        return ROUTES[:k]
    return [("GET" if i % 3 else "POST", f"/v1/r{i:02d}/{{id}}") for i in range(k)]


def generate(n, now_ms, consumers, n_routes, days, sparse):
    """Rows with a long-tailed latency and a few erroring consumers, in time order."""
    rng = random.Random(42)
    span = days * 86_400_000
    start = now_ms - span
    rows = []
    rs = routes(n_routes)
    for i in range(n):
        if sparse:
            # Everyone a little, on every route: the most rollups per event.
            c = rng.randrange(consumers)
        else:
            # Half the traffic from a few big consumers (a long tail), half spread over everyone.
            c = int(rng.paretovariate(1.2)) % consumers if rng.random() < 0.5 else rng.randrange(consumers)
        method, route = rs[rng.randrange(len(rs))]
        r = rng.random()
        status = 500 if r < 0.01 else 404 if r < 0.04 else 429 if r < 0.05 else 200
        if c % 97 == 0 and rng.random() < 0.3:
            status = 422
        latency = round(rng.lognormvariate(3.0, 0.8), 3)
        ts = start + i * span // n
        rows.append((ts, f"consumer-{c:04d}", method, route.replace("{id}", str(rng.randrange(1000))), route, status, latency, 300, 2000))
    return rows


def ndjson_batches(rows, size=10_000):
    batches = []
    for i in range(0, len(rows), size):
        lines = []
        for (ts, c, m, path, route, status, lat, rq, rs) in rows[i:i + size]:
            lines.append(json.dumps({"id": f"b{ts}-{c}-{len(lines)}-{i}", "ts": ts, "consumer": c, "method": m, "path": path,
                                     "route": route, "status": status, "latency_ms": lat, "request_bytes": rq, "response_bytes": rs}))
        batches.append(("\n".join(lines) + "\n").encode())
    return batches


def request(port, method, path, body=None, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def ingest(port, batches, threads=4):
    queue = list(enumerate(batches))
    lock = threading.Lock()
    errors = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if not queue:
                    break
                _, body = queue.pop()
            conn.request("POST", "/v1/events", body=body, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 202:
                errors.append((resp.status, data[:200]))
        conn.close()

    t = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    if errors:
        print("ingest errors:", errors[:3], file=sys.stderr)
    return time.perf_counter() - t


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def start_server(tmp, aport):
    """Starts the server on `tmp`'s config; returns (process, log, seconds until it served)."""
    log = open(os.path.join(tmp, "server.log"), "a")
    t = time.perf_counter()
    proc = subprocess.Popen([BIN, "serve", "--config", os.path.join(tmp, "clientele.toml")], stderr=log, stdout=subprocess.DEVNULL)
    # Rollups are restored before the listeners bind, so the first answer is a server that serves.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if request(aport, "GET", "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.02)
    return proc, log, time.perf_counter() - t


def stop_server(proc, log):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def bench_world(name, duckdb):
    n, consumers, n_routes, days, sparse = WORLDS[name]
    now_ms = int(time.time() * 1000)
    tmp = tempfile.mkdtemp(prefix="clientele-bench-")
    gport, aport = free_port(), free_port()
    with open(os.path.join(tmp, "clientele.toml"), "w") as f:
        f.write(f"""
[gateway]
listen = "127.0.0.1:{gport}"
[admin]
listen = "127.0.0.1:{aport}"
token = "{TOKEN}"
max_body_bytes = 67108864
[storage]
data_dir = "data"
raw_event_retention_days = 30
[analytics]
minute_retention_days = 3
""")
    proc, log, _ = start_server(tmp, aport)
    try:
        print(f"\n== {name}: {n:,} events, {consumers:,} consumers x {n_routes} routes, {days} days ==")
        t = time.perf_counter()
        rows = generate(n, now_ms, consumers, n_routes, days, sparse)
        batches = ndjson_batches(rows)
        print(f"generated in {time.perf_counter() - t:.1f} s")
        secs = ingest(aport, batches)
        ingest_rate = n / secs
        print(f"ingest over HTTP: {n:,} events in {secs:.2f} s = {ingest_rate:,.0f} events/s")
        rss = rss_kib(proc.pid)
        status = json.loads(request(aport, "GET", "/v1/status")[1])

        frm, to = now_ms - days * 86_400_000, now_ms + 60_000
        path = f"/v1/stats/consumers?from={frm}&to={to}"
        ours = []
        body = None
        for _ in range(11):
            t = time.perf_counter()
            code, body = request(aport, "GET", path)
            ours.append((time.perf_counter() - t) * 1000)
            assert code == 200, body[:300]
        ours_table = {r["consumer"]: r for r in json.loads(body)["consumers"]}

        # Restart on the same data: how long until it serves, and its memory then.
        stop_server(proc, log)
        proc, log, restart_s = start_server(tmp, aport)
        time.sleep(1)
        rss_restarted = rss_kib(proc.pid)
        code, after = request(aport, "GET", path)
        same_after_restart = code == 200 and json.loads(after)["consumers"] == json.loads(body)["consumers"]
        print(f"restart: serving after {restart_s:.2f} s, RSS {rss_restarted / 1024:.0f} MiB, same table: {same_after_restart}")

        con = duckdb.connect()
        con.execute("CREATE TABLE events (ts BIGINT, consumer VARCHAR, method VARCHAR, path VARCHAR, route VARCHAR, status INTEGER, latency_ms DOUBLE, request_bytes BIGINT, response_bytes BIGINT)")
        csv = os.path.join(tmp, "events.csv")
        with open(csv, "w") as f:
            for r in rows:
                f.write(",".join(str(x) for x in r) + "\n")
        con.execute(f"INSERT INTO events SELECT * FROM read_csv('{csv}', header=false, columns={{'ts':'BIGINT','consumer':'VARCHAR','method':'VARCHAR','path':'VARCHAR','route':'VARCHAR','status':'INTEGER','latency_ms':'DOUBLE','request_bytes':'BIGINT','response_bytes':'BIGINT'}})")
        query = f"""
            SELECT consumer, count(*) AS requests,
                   count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS errors_4xx,
                   count(*) FILTER (WHERE status >= 500) AS errors_5xx,
                   count(*) FILTER (WHERE status = 429) AS rate_limited,
                   (count(*) FILTER (WHERE status >= 400))::DOUBLE / count(*) AS error_rate,
                   quantile_disc(latency_ms, 0.5), quantile_disc(latency_ms, 0.95), quantile_disc(latency_ms, 0.99),
                   sum(request_bytes), sum(response_bytes)
            FROM events WHERE ts >= {frm} AND ts < {to}
            GROUP BY consumer ORDER BY requests DESC"""
        theirs = []
        result = None
        for _ in range(11):
            t = time.perf_counter()
            result = con.execute(query).fetchall()
            theirs.append((time.perf_counter() - t) * 1000)

        # Same table? Counts must match DuckDB's exactly, and percentiles DuckDB's exact
        # quantile_disc (nearest rank, the definition ours uses) within the sketch's 1%.
        mismatched = 0
        worst = 0.0
        for row in result:
            o = ours_table.get(row[0])
            if o is None or o["requests"] != row[1] or o["errors_5xx"] != row[3] or o["errors_4xx"] != row[2]:
                mismatched += 1
                continue
            for field, exact in (("p50_ms", row[6]), ("p95_ms", row[7]), ("p99_ms", row[8])):
                worst = max(worst, abs(o[field] - exact) / exact)
        disk = dir_bytes(os.path.join(tmp, "data"))
        series = status["rollups_series"] + status["rollups_consumer"]
        out = {
            "world": name,
            "events": n,
            "ingest_events_per_s": round(ingest_rate),
            "ours_median_ms": round(statistics.median(ours), 2),
            "duckdb_median_ms": round(statistics.median(theirs), 2),
            "consumers_in_table": len(ours_table),
            "rows_mismatched": mismatched,
            "worst_percentile_rel_err": round(worst, 4),
            "disk_bytes_per_event": round(disk / n, 1),
            "server_rss_mib": round(rss / 1024, 1),
            "rollups_in_memory": series,
            "rss_bytes_per_rollup": round(rss * 1024 / max(series, 1), 1),
            "restart_serving_s": round(restart_s, 2),
            "server_rss_after_restart_mib": round(rss_restarted / 1024, 1),
            "same_table_after_restart": same_after_restart,
        }
        print(json.dumps(out, indent=2))
        return out
    finally:
        stop_server(proc, log)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    import duckdb  # noqa: installed by bench-analytics.sh
    results = [bench_world(w, duckdb) for w in SELECTED]
    print("\n| world | events | ingest ev/s | ours ms (table, median) | DuckDB ms (exact) | DuckDB / ours | disk B/event | RSS MiB | restart s | RSS after restart MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['world']} | {r['events']:,} | {r['ingest_events_per_s']:,} | {r['ours_median_ms']} | {r['duckdb_median_ms']} | "
              f"{r['duckdb_median_ms'] / r['ours_median_ms']:.1f}x | {r['disk_bytes_per_event']} | {r['server_rss_mib']} | "
              f"{r['restart_serving_s']} | {r['server_rss_after_restart_mib']} |")


if __name__ == "__main__":
    main()
