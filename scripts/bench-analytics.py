#!/usr/bin/env python3
"""Analytics benchmark: HTTP ingest throughput, and the per-consumer table against DuckDB.

What it measures, on the same synthetic rows (2,000 consumers over 7 days):
  1. Ingest over HTTP: NDJSON batches posted to `POST /v1/events` by 4 concurrent clients,
     end to end (parse, validate, durable SQLite commit, rollups), in events/s.
  2. The per-consumer table (`GET /v1/stats/consumers` over the 7 days: requests, errors by
     class, 429s, error rate, p50/p95/p99, bytes), median of 11 calls, against DuckDB computing
     the same table exactly (quantile_disc) over the same rows held in memory.
  3. Both again at 10x the events: ours reads rollups, so it should stay flat; DuckDB scans rows.
  4. Bytes on disk per event and the server's memory per rollup.

Run: `bash scripts/bench-analytics.sh` (builds the release binary, installs duckdb with pip).
Env: SCALES="1,10" (multiples of 600k events), CONSUMERS=2000.
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

BASE_EVENTS = 600_000
CONSUMERS = int(os.environ.get("CONSUMERS", "2000"))
SCALES = [int(s) for s in os.environ.get("SCALES", "1,10").split(",")]
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "clientele")
TOKEN = "bench-admin-token-0123456789"
ROUTES = [("GET", "/v1/items/{id}"), ("GET", "/v1/search"), ("POST", "/v1/orders"), ("GET", "/v1/users/{id}"), ("DELETE", "/v1/items/{id}")]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def generate(n, now_ms):
    """Rows with a long-tailed latency and a few erroring consumers, in time order."""
    rng = random.Random(42)
    span = 7 * 86_400_000
    start = now_ms - span
    rows = []
    for i in range(n):
        # Half the traffic from a few big consumers (a long tail), half spread over everyone.
        c = int(rng.paretovariate(1.2)) % CONSUMERS if rng.random() < 0.5 else rng.randrange(CONSUMERS)
        method, route = ROUTES[rng.randrange(len(ROUTES))]
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


def bench_scale(scale, duckdb):
    n = BASE_EVENTS * scale
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
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([BIN, "serve", "--config", os.path.join(tmp, "clientele.toml")], stderr=log, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if request(aport, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        print(f"\n== {n:,} events, {CONSUMERS} consumers, 7 days ==")
        t = time.perf_counter()
        rows = generate(n, now_ms)
        batches = ndjson_batches(rows)
        print(f"generated in {time.perf_counter() - t:.1f} s")
        secs = ingest(aport, batches)
        ingest_rate = n / secs
        print(f"ingest over HTTP: {n:,} events in {secs:.2f} s = {ingest_rate:,.0f} events/s")
        rss = rss_kib(proc.pid)
        status = json.loads(request(aport, "GET", "/v1/status")[1])

        frm, to = now_ms - 7 * 86_400_000, now_ms + 60_000
        path = f"/v1/stats/consumers?from={frm}&to={to}"
        ours = []
        body = None
        for _ in range(11):
            t = time.perf_counter()
            code, body = request(aport, "GET", path)
            ours.append((time.perf_counter() - t) * 1000)
            assert code == 200, body[:300]
        ours_table = {r["consumer"]: r for r in json.loads(body)["consumers"]}

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

        # Same table? Counts must match DuckDB's exactly. Percentiles are checked against the
        # exact value at rank floor(q * (n - 1)), the rank a DDSketch answers for, computed here
        # from the rows: DuckDB's quantile_disc may pick the next rank, and in a long tail the
        # next value can be far away, which says nothing about the sketch's accuracy.
        mismatched = 0
        for row in result:
            o = ours_table.get(row[0])
            if o is None or o["requests"] != row[1] or o["errors_5xx"] != row[3] or o["errors_4xx"] != row[2]:
                mismatched += 1
        by_consumer = {}
        for r in rows:
            by_consumer.setdefault(r[1], []).append(r[6])
        worst = 0.0
        for c, lats in by_consumer.items():
            lats.sort()
            for field, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
                exact = lats[int((len(lats) - 1) * q)]
                worst = max(worst, abs(ours_table[c][field] - exact) / exact)
        disk = dir_bytes(os.path.join(tmp, "data"))
        series = status["rollups_series"] + status["rollups_consumer"]
        out = {
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
        }
        print(json.dumps(out, indent=2))
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    import duckdb  # noqa: installed by bench-analytics.sh
    results = [bench_scale(s, duckdb) for s in SCALES]
    print("\n| events | ingest ev/s | ours p50 ms (7-day table) | DuckDB ms (exact) | ours / DuckDB | disk B/event | RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['events']:,} | {r['ingest_events_per_s']:,} | {r['ours_median_ms']} | {r['duckdb_median_ms']} | "
              f"{r['ours_median_ms'] / r['duckdb_median_ms']:.2f}x | {r['disk_bytes_per_event']} | {r['server_rss_mib']} |")


if __name__ == "__main__":
    main()
