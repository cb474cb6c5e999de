#!/usr/bin/env python3
"""Limits benchmark: what a limit check adds to a request, locally and through Redis, and how
exactly two nodes sharing one Redis hold one limit. A benchmark, not a test: it reports, it
never fails on slow numbers.

Run through scripts/bench-limits.sh, which builds the release binary and installs the tools.

1. Added latency and throughput. One clientele node (pinned to CPU 0; wrk, nginx and Redis on
   CPU 1) with two consumers: one without limits and one on a plan whose limits are never reached,
   so every request of the second pays for a full check but none is refused. Run alternately:
     none    consumer without limits (the floor)
     local   same node, the limited consumer: GCRA cell + quota counter in process
     redis   a second node, same set-up, with [limits] redis_url: one script call per request
   wrk at c=1 gives the latency a check adds (p50/p99, medians over rounds); wrk at c=CONNS gives
   throughput.
2. Cluster accuracy. Two nodes, each with its own store and the same imported key, share one
   Redis; a plan of RATE/s with burst BURST. wrk hammers both nodes at once for DURATION s. A
   single shared limit allows at most BURST + RATE x seconds; the same two nodes without Redis
   (each holding its own limit) are run as the contrast.
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ["CLIENTELE_BIN"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNS = int(os.environ.get("CONNS", "32"))
RATE = int(os.environ.get("RATE", "200"))
BURST = int(os.environ.get("BURST", "100"))
TOKEN = "bench-admin-token-0123456789"
KEY_LIMITED = "ck_bench_limited_key_000000000000000000000"
KEY_FREE = "ck_bench_free_key_00000000000000000000000000"

procs = []
tmp = tempfile.mkdtemp(prefix="bench-limits.")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, cpu, **kw):
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, **kw)
    procs.append(p)
    return p


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def wait_port(port, proc, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-limits: a process exited early (port {port})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench-limits: nothing listening on {port} after {secs} s")


def admin(port, method, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def start_nginx():
    port = free_port()
    d = os.path.join(tmp, f"nginx-{port}")
    os.makedirs(d)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }} }}
""")
    p = start(["nginx", "-c", conf, "-p", d], 1, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return port


def start_redis():
    port = free_port()
    p = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
              1, stdout=subprocess.DEVNULL)
    wait_port(port, p)
    return port


def start_node(upstream, redis_port, plan):
    gw, ad = free_port(), free_port()
    d = os.path.join(tmp, f"node-{gw}")
    os.makedirs(d)
    limits = f'[limits]\nredis_url = "redis://127.0.0.1:{redis_port}"\n' if redis_port else ""
    with open(os.path.join(d, "c.toml"), "w") as f:
        f.write(f"""[gateway]
listen = "127.0.0.1:{gw}"
[admin]
listen = "127.0.0.1:{ad}"
token = "{TOKEN}"
[storage]
data_dir = "data"
[[apis]]
name = "bench"
upstream = "http://127.0.0.1:{upstream}"
{limits}
[plans.bench]
{plan}
""")
    log = open(os.path.join(d, "log.txt"), "w")
    p = start([BIN, "serve", "--config", os.path.join(d, "c.toml")], 0,
              stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "CLIENTELE_LOG": "warn"})
    wait_port(ad, p)
    admin(ad, "POST", "/v1/consumers", {"id": "limited", "plan": "bench"})
    admin(ad, "POST", "/v1/consumers/limited/keys", {"key": KEY_LIMITED})
    admin(ad, "POST", "/v1/consumers", {"id": "free"})
    admin(ad, "POST", "/v1/consumers/free/keys", {"key": KEY_FREE})
    return gw, ad, p


def wrk(port, key, conns, secs, cpu=1):
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency",
         "-H", f"X-API-Key: {key}", f"http://127.0.0.1:{port}/pets/1"],
        capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    secs_taken = float(re.search(r"requests in ([\d.]+)s", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        v = float(m.group(1))
        lat[pct] = v * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]
    return {"reqs": reqs, "secs": secs_taken, "rps": reqs / secs_taken,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "p50": lat["50"], "p99": lat["99"]}


def main():
    try:
        run()
    finally:
        cleanup()


def run():
    up = start_nginx()
    redis = start_redis()
    never = f"rate_per_second = 1000000000\nburst = 1000000000\nquota_per_day = 1000000000000"
    local_gw, _, _ = start_node(up, None, never)
    redis_gw, _, _ = start_node(up, redis, never)
    targets = [("none", local_gw, KEY_FREE), ("local", local_gw, KEY_LIMITED),
               ("redis", redis_gw, KEY_LIMITED)]
    for _, port, key in targets:
        wrk(port, key, CONNS, 2)  # warm-up
    res = {n: {"rps": [], "p50": [], "p99": []} for n, _, _ in targets}
    for r in range(ROUNDS):
        for name, port, key in targets:
            lat = wrk(port, key, 1, 5)
            thr = wrk(port, key, CONNS, DURATION)
            assert thr["non2xx"] == 0 and lat["non2xx"] == 0, f"{name}: refused requests in a run"
            res[name]["rps"].append(thr["rps"])
            res[name]["p50"].append(lat["p50"])
            res[name]["p99"].append(lat["p99"])
        print(f"round {r + 1}/{ROUNDS} done", file=sys.stderr)
    med = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in res.items()}
    print("\n## Added cost of a limit check (one node pinned to CPU 0)\n")
    print(f"| limits | req/s c={CONNS} (median) | vs none | p50 µs c=1 | p99 µs c=1 | added p50 µs | added p99 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, _, _ in targets:
        m = med[n]
        print(f"| {n} | {m['rps']:,.0f} | {m['rps'] / med['none']['rps']:.2f} | {m['p50']:.0f} | {m['p99']:.0f} "
              f"| {m['p50'] - med['none']['p50']:+.0f} | {m['p99'] - med['none']['p99']:+.0f} |")

    print(f"\n## Cluster accuracy: 2 nodes, plan {RATE}/s burst {BURST}, both hammered for {DURATION} s\n")
    print("| mode | allowed | refused | seconds | one limit allows at most | allowed / bound | Redis errors | allowed by fail-open |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    plan = f"rate_per_second = {RATE}\nburst = {BURST}"
    for mode in ("redis", "local (no Redis)"):
        r = start_redis() if mode == "redis" else None
        a, a_admin, _ = start_node(up, r, plan)
        b, b_admin, _ = start_node(up, r, plan)
        time.sleep(1.5)  # let both buckets fill
        outs = []
        # Each node gets its own wrk on the second core, started together.
        cmds = [subprocess.Popen(
            ["taskset", "-c", "1", "wrk", "-t1", "-c8", f"-d{DURATION}s", "-H", f"X-API-Key: {KEY_LIMITED}",
             f"http://127.0.0.1:{port}/pets/1"], stdout=subprocess.PIPE, text=True) for port in (a, b)]
        for c in cmds:
            out = c.communicate()[0]
            reqs = int(re.search(r"(\d+) requests in", out).group(1))
            secs = float(re.search(r"requests in ([\d.]+)s", out).group(1))
            non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            outs.append((reqs, int(non.group(1)) if non else 0, secs))
        allowed = sum(o[0] - o[1] for o in outs)
        refused = sum(o[1] for o in outs)
        secs = max(o[2] for o in outs)
        bound = BURST + RATE * secs
        # A Redis call past redis_timeout_ms fails open by design; show how often it happened,
        # so an overloaded machine is not mistaken for an inaccurate limiter.
        st = [admin(p, "GET", "/v1/status") for p in (a_admin, b_admin)]
        errors = sum(x["limiter_redis_errors"] for x in st)
        failed_open = sum(x["limiter_failed_open"] for x in st)
        print(f"| {mode} | {allowed:,} | {refused:,} | {secs:.2f} | {bound:,.0f} | {allowed / bound:.3f} | {errors} | {failed_open:,} |")


if __name__ == "__main__":
    main()
