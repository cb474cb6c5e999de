#!/usr/bin/env python3
"""Idle-connection flood: N TCP connections that never send a byte, held open against the
gateway, while a normal client keeps sending requests and its latency is measured.

Run through scripts/idle-flood.sh, which starts the server and an upstream. A benchmark, not a
test: it prints what it measured and never fails on a slow number.

The flood comes from many loopback addresses (127.0.0.2, 127.0.0.3, ...; PER_ADDRESS connections
each), so it meets the global cap rather than only the per-address one; the normal client comes
from 127.0.0.1. Each phase: the client's latency for fresh connections and for one keep-alive
connection, and whether the admin /healthz answered.
"""

import http.client
import os
import resource
import socket
import statistics
import sys
import time

GATEWAY = os.environ["GATEWAY"]  # host:port
ADMIN = os.environ["ADMIN"]
KEY = os.environ["KEY"]
FLOOD = int(os.environ.get("FLOOD", "20000"))
PER_ADDRESS = int(os.environ.get("PER_ADDRESS", "1000"))
SAMPLES = int(os.environ.get("SAMPLES", "200"))


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def still_open(socks):
    """How many flood connections the server has not closed."""
    open_ = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(1)
            if data:
                open_ += 1
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
    return open_


def get(conn):
    conn.request("GET", "/pets/1", headers={"x-api-key": KEY})
    r = conn.getresponse()
    r.read()
    return r.status


def latencies(fresh):
    host, port = hostport(GATEWAY)
    out, errors = [], 0
    conn = None if fresh else http.client.HTTPConnection(host, port, timeout=5)
    for _ in range(SAMPLES):
        c = http.client.HTTPConnection(host, port, timeout=5) if fresh else conn
        t = time.perf_counter()
        try:
            status = get(c)
            if status != 200:
                errors += 1
            else:
                out.append((time.perf_counter() - t) * 1000)
        except OSError:
            errors += 1
        if fresh:
            c.close()
    if conn:
        conn.close()
    return out, errors


def healthz():
    host, port = hostport(ADMIN)
    try:
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", "/healthz")
        return c.getresponse().status
    except OSError as e:
        return str(e)


def report(phase):
    row = [phase]
    for fresh in (True, False):
        lat, errors = latencies(fresh)
        if lat:
            lat.sort()
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            row.append("%s p50 %.2f ms p99 %.2f ms errors %d/%d" % (
                "fresh" if fresh else "keep-alive", p50, p99, errors, SAMPLES))
        else:
            row.append("%s: no answer (%d errors)" % ("fresh" if fresh else "keep-alive", errors))
    row.append("healthz %s" % healthz())
    print(" | ".join(row), flush=True)


def hold(n, first):
    """Holds n idle connections (the i-th from 127.0.0.(2 + (first + i) / PER_ADDRESS)), printing
    how many the server still has open once a second, until stdin closes."""
    raise_nofile()
    global_index = first
    socks, failed = [], 0
    host, port = hostport(GATEWAY)
    for i in range(n):
        src = "127.0.0.%d" % (2 + (first + i) // PER_ADDRESS)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((src, 0))
            s.settimeout(5)
            s.connect((host, port))
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print("opened %d (%d connect errors)" % (len(socks), failed), flush=True)
    import select
    while True:
        r, _, _ = select.select([sys.stdin], [], [], 1.0)
        if r and not sys.stdin.readline():
            break
        print("open %d" % still_open(socks), flush=True)


def main():
    if sys.argv[1:2] == ["hold"]:
        return hold(int(sys.argv[2]), int(sys.argv[3]))
    report(sys.argv[2] if len(sys.argv) > 2 else "now")


if __name__ == "__main__":
    sys.exit(main())
