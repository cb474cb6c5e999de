"""Creates consumers with one key each through the admin API, one request at a time (as a
provisioning script or a CRM sync would), and prints each key on its own line.

Usage: python3 scripts/provision.py ADMIN_PORT TOKEN COUNT [--plan std] [--teams 50]
       [--slice N]   (with --slice: also the ms per consumer of every N, on stderr, and the
                      total seconds, for scripts/bench-control.sh)
Shared by scripts/soak.sh and scripts/bench-control.sh.
"""
import argparse
import http.client
import json
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("token")
ap.add_argument("count", type=int)
ap.add_argument("--plan", default="std")
ap.add_argument("--teams", type=int, default=0, help="spread consumers over this many teams")
ap.add_argument("--slice", type=int, default=0)
args = ap.parse_args()

conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
headers = {"authorization": "Bearer " + args.token, "content-type": "application/json"}


def post(path, body):
    conn.request("POST", path, json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 201:
        sys.exit("POST %s: %d %s" % (path, r.status, data[:200]))
    return json.loads(data)


figures, start = [], time.perf_counter()
t0 = start
for i in range(args.count):
    cid = "c%06d" % i
    consumer = {"id": cid, "plan": args.plan}
    if args.teams:
        consumer["team"] = "t%d" % (i % args.teams)
    post("/v1/consumers", consumer)
    print(post("/v1/consumers/%s/keys" % cid, {})["key"])
    done = i + 1
    if args.slice and (done % args.slice == 0 or done == args.count):
        now = time.perf_counter()
        figures.append((now - t0) * 1000 / (done % args.slice or args.slice))
        t0 = now
if args.slice:
    print("total %.1f s   ms/consumer per slice: %s"
          % (time.perf_counter() - start, " ".join("%.2f" % f for f in figures)), file=sys.stderr)
