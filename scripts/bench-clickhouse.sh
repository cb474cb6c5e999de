#!/usr/bin/env bash
# The two event backends side by side in one run: a node on the embedded store (sqlite) and a
# node with backend = "clickhouse" (PostgreSQL and ClickHouse from Debian's packages, started
# from a temporary folder on free ports), sent the same events.
#
# Measures, medians of ROUNDS:
#   - ingest: events/s accepted by POST /v1/events (durable when answered) on each node, and
#     how long until ClickHouse holds them all (the shipper's lag) with its rate;
#   - the per-consumer table: GET /v1/stats/consumers over the whole window on each node
#     (Clientele's rollups), against ClickHouse's own quantileExact over the raw table, with
#     the counts compared.
#
#   EVENTS=200000 CONSUMERS=500 ROUNDS=5 bash scripts/bench-clickhouse.sh
#
# CLIENTELE_BIN names the binary (default: a release build with --features postgres,clickhouse,
# made here). Keep runs short on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-200000}
CONSUMERS=${CONSUMERS:-500}
ROUNDS=${ROUNDS:-5}

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
ch_bin=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)

if [ -z "${CLIENTELE_BIN:-}" ]; then
  cargo build -q --release -p clientele --features postgres,clickhouse
  CLIENTELE_BIN=${CARGO_TARGET_DIR:-target}/release/clientele
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/clientele-bench-ch.XXXXXX)
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$dir" "$dir/pg"
pg_port=$(free_port)
as_pg "$pg_bin/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/log" -w \
  -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres clientele

ch_port=$(free_port); ch_tcp=$(free_port)
mkdir -p "$dir/ch/data"
cat >"$dir/ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/ch/server.log</log><errorlog>$dir/ch/error.log</errorlog></logger>
  <http_port>$ch_port</http_port><tcp_port>$ch_tcp</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$dir/ch/data/</path><tmp_path>$dir/ch/tmp/</tmp_path>
  <user_files_path>$dir/ch/user_files/</user_files_path><format_schema_path>$dir/ch/fs/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size><timezone>UTC</timezone>
  <users_config>$dir/ch/users.xml</users_config><default_profile>default</default_profile>
  <default_database>default</default_database><mlock_executable>false</mlock_executable>
</yandex>
EOF
cat >"$dir/ch/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
EOF
"$ch_bin" --config-file="$dir/ch/config.xml" >"$dir/ch/stdout.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ch_port/ping" >/dev/null && break; sleep 0.2; done
chq() { curl -sf --data-binary "$1" "http://127.0.0.1:$ch_port/"; }

token=bench-admin-token-0123456789
admin_port=
start_node() { # name, extra storage lines; sets admin_port
  local name=$1 extra=$2 gw adm
  gw=$(free_port); adm=$(free_port)
  mkdir -p "$dir/$name"
  cat >"$dir/$name/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$gw"
[admin]
listen = "127.0.0.1:$adm"
token = "$token"
max_body_bytes = 67108864
[storage]
data_dir = "data"
$extra
[[apis]]
name = "bench"
upstream = "http://127.0.0.1:9"
prefix = "/"
[plans.pro]
rate_per_second = 100
burst = 200
EOF
  RUST_LOG=warn "$CLIENTELE_BIN" serve --config "$dir/$name/clientele.toml" >"$dir/$name/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$adm/healthz" >/dev/null && break; sleep 0.1; done
  admin_port=$adm
}
start_node sqlite ""
sqlite_admin=$admin_port
start_node clickhouse "backend = \"clickhouse\"
postgres_url = \"postgres://postgres@127.0.0.1:$pg_port/clientele\"
clickhouse_url = \"http://127.0.0.1:$ch_port/?database=clientele\""
ch_admin=$admin_port

# The same events for both: EVENTS over the last 6 days, CONSUMERS consumers, 40 routes.
python3 - "$dir/events" "$EVENTS" "$CONSUMERS" <<'EOF'
import json, random, sys, time, os
out, n, consumers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out)
random.seed(7)
now = int(time.time() * 1000)
start = now - 6 * 86400000
batch, k = [], 0
for i in range(n):
    c = int(random.paretovariate(1.2)) % consumers
    e = {"id": f"b{i}", "ts": start + i * (6 * 86400000 // n), "consumer": f"c{c}", "method": "GET",
         "path": f"/items/{i % 40}", "status": 500 if random.random() < 0.02 else 200,
         "latency_ms": round(random.lognormvariate(3, 0.8), 3)}
    batch.append(json.dumps(e))
    if len(batch) == 50000 or i == n - 1:
        with open(f"{out}/{k:05}.ndjson", "w") as f:
            f.write("\n".join(batch) + "\n")
        batch, k = [], k + 1
EOF

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ingest() { # admin port -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  for f in "$dir"/events/*.ndjson; do
    curl -sf -o /dev/null -H "authorization: Bearer $token" -H 'content-type: application/x-ndjson' \
      --data-binary @"$f" "http://127.0.0.1:$1/v1/events"
  done
  t1=$(date +%s.%N)
  awk "BEGIN {print $t1 - $t0}"
}
s_secs=$(ingest "$sqlite_admin")
c_secs=$(ingest "$ch_admin")
t_posted=$(date +%s.%N)
until [ "$(chq 'SELECT count() FROM clientele.events')" = "$EVENTS" ]; do sleep 0.1; done
ship_secs=$(awk "BEGIN {print $(date +%s.%N) - $t_posted}")
awk "BEGIN {printf \"ingest, POST /v1/events (%d events): sqlite %.0f events/s   clickhouse %.0f events/s\\n\", $EVENTS, $EVENTS / $s_secs, $EVENTS / $c_secs}"
awk "BEGIN {printf \"ClickHouse held every event %.2f s after the last answer (%.0f events/s from the first post)\\n\", $ship_secs, $EVENTS / ($c_secs + $ship_secs)}"

from=$(( $(date +%s) * 1000 - 7 * 86400000 )); to=$(( $(date +%s) * 1000 + 60000 ))
sleep 3   # the last rollups settle
time_get() { # admin port -> ms
  curl -sf -o "$dir/answer-$1.json" -w '%{time_total}\n' -H "authorization: Bearer $token" \
    "http://127.0.0.1:$1/v1/stats/consumers?from=$from&to=$to" | awk '{print $1 * 1000}'
}
where="FROM clientele.events WHERE ts_ms >= $from AND ts_ms < $to GROUP BY consumer ORDER BY consumer FORMAT TSV"
# ClickHouse's own exact quantiles (timed), and the same by nearest rank, Clientele's (and
# DuckDB quantile_disc's) definition, to compare the values with: quantileExact picks the
# element at floor(q * n), which differs from nearest rank on small groups.
sql="SELECT consumer, count(), quantileExact(0.5)(latency_ms), quantileExact(0.95)(latency_ms), quantileExact(0.99)(latency_ms), countIf(status >= 500) $where"
rank() { echo "arraySort(groupArray(latency_ms))[toUInt64(greatest(1, ceil($1 * count() - 1e-9)))]"; }
sql_rank="SELECT consumer, count(), $(rank 0.5), $(rank 0.95), $(rank 0.99), countIf(status >= 500) $where"
time_sql() { # sql, answer file
  curl -sf -o "$dir/$2" -w '%{time_total}\n' --data-binary "$1" "http://127.0.0.1:$ch_port/" | awk '{print $1 * 1000}'
}
s_ms=$(for _ in $(seq "$ROUNDS"); do time_get "$sqlite_admin"; done | median)
c_ms=$(for _ in $(seq "$ROUNDS"); do time_get "$ch_admin"; done | median)
q_ms=$(for _ in $(seq "$ROUNDS"); do time_sql "$sql" answer-exact.tsv; done | median)
r_ms=$(for _ in $(seq "$ROUNDS"); do time_sql "$sql_rank" answer-sql.tsv; done | median)
echo "per-consumer table, 7 days, median of $ROUNDS: sqlite node ${s_ms} ms   clickhouse node ${c_ms} ms (rollups)   ClickHouse over raw: quantileExact ${q_ms} ms, nearest rank ${r_ms} ms"
python3 - "$dir" "$sqlite_admin" "$ch_admin" <<'EOF'
import json, sys
d = sys.argv[1]
a = json.load(open(f"{d}/answer-{sys.argv[2]}.json"))["consumers"]
b = json.load(open(f"{d}/answer-{sys.argv[3]}.json"))["consumers"]
raw = {}
for line in open(f"{d}/answer-sql.tsv"):
    c, n, p50, p95, p99, e5 = line.rstrip("\n").split("\t")
    raw[c] = (int(n), float(p50), float(p95), float(p99), int(e5))
ka = {c["consumer"]: c for c in a}
kb = {c["consumer"]: c for c in b}
same = ka.keys() == kb.keys() == raw.keys() and all(
    ka[c]["requests"] == kb[c]["requests"] == raw[c][0] and ka[c]["errors_5xx"] == raw[c][4] for c in ka)
worst = max(abs(ka[c][k] - raw[c][i]) / raw[c][i] for c in ka for i, k in ((1, "p50_ms"), (2, "p95_ms"), (3, "p99_ms")))
print(f"{len(ka)} consumers; counts equal on both nodes and in ClickHouse: {same}; "
      f"worst p50/p95/p99 against ClickHouse's nearest rank: {worst * 100:.2f}%")
if not same or worst > 0.01:
    sys.exit("the backends disagree")
EOF
