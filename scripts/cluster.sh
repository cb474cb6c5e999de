#!/usr/bin/env bash
# Two Clientele nodes on one machine sharing a PostgreSQL control plane, ClickHouse for events
# and one Redis, for trying scale-out: PostgreSQL (Debian's `postgresql`), ClickHouse (Debian's
# `clickhouse-server`) and Redis run from a temporary folder on free ports, a small upstream
# answers on another, and each node has its own data_dir.
#
#   bash scripts/cluster.sh           # start everything, make a key on node A, use it on node B,
#                                     # then keep running until Ctrl-C
#   bash scripts/cluster.sh --check   # the same, then stop (exit status = whether it worked)
#
# It also sends requests through node A and waits for node B's stats to count them.
# CLIENTELE_BIN names the binary (default: a debug build with --features postgres,clickhouse,
# made here).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[ "${1:-}" = "--check" ] && check=1

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

if [ -z "${CLIENTELE_BIN:-}" ]; then
  cargo build -q -p clientele --features postgres,clickhouse
  CLIENTELE_BIN=${CARGO_TARGET_DIR:-target}/debug/clientele
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/clientele-cluster.XXXXXX)
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# PostgreSQL: a fresh cluster trusting local connections (a try-out, not a deployment).
mkdir -p "$dir/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$dir" "$dir/pg"
pg_port=$(free_port)
as_pg "$pg_bin/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/log" -w \
  -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres clientele
pg_url="postgres://postgres@127.0.0.1:$pg_port/clientele"

# ClickHouse: a config of its own (loopback, free ports, UTC) in the temporary folder.
ch_port=$(free_port); ch_tcp=$(free_port)
mkdir -p "$dir/ch/data"
cat >"$dir/ch/config.xml" <<XML
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
XML
cat >"$dir/ch/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
XML
"$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)" --config-file="$dir/ch/config.xml" >"$dir/ch/stdout.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ch_port/ping" >/dev/null && break; sleep 0.2; done
ch_url="http://127.0.0.1:$ch_port/?database=clientele"

redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no --daemonize no >"$dir/redis.log" &
pids+=($!)

up_port=$(free_port)
mkdir -p "$dir/www/pets" && echo '{"id": 1, "name": "rex"}' >"$dir/www/pets/1"
python3 -m http.server "$up_port" --bind 127.0.0.1 --directory "$dir/www" >"$dir/upstream.log" 2>&1 &
pids+=($!)

token="cluster-admin-token-$(date +%s)"
start_node() { # name gateway_port admin_port
  mkdir -p "$dir/$1"
  cat >"$dir/$1/clientele.toml" <<EOF
[gateway]
listen = "127.0.0.1:$2"
[admin]
listen = "127.0.0.1:$3"
token = "$token"
[storage]
data_dir = "data"
backend = "clickhouse"
postgres_url = "$pg_url"
clickhouse_url = "$ch_url"
[limits]
redis_url = "redis://127.0.0.1:$redis_port"
[[apis]]
name = "pets"
upstream = "http://127.0.0.1:$up_port"
prefix = "/"
EOF
  "$CLIENTELE_BIN" serve --config "$dir/$1/clientele.toml" >"$dir/$1/log" 2>&1 &
  pids+=($!)
}
a_gw=$(free_port); a_admin=$(free_port); b_gw=$(free_port); b_admin=$(free_port)
start_node a "$a_gw" "$a_admin"
start_node b "$b_gw" "$b_admin"
for port in "$a_admin" "$b_admin"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$dir"/a/log "$dir"/b/log; exit 1; }
done

admin() { curl -fs -H "authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
admin -X POST "http://127.0.0.1:$a_admin/v1/consumers" -d '{"id": "acme"}' >/dev/null
key=$(admin -X POST "http://127.0.0.1:$a_admin/v1/consumers/acme/keys" -d '{}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
start=$(date +%s%N)
status=000
for _ in $(seq 100); do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://127.0.0.1:$b_gw/pets/1")
  [ "$status" = 200 ] && break
  sleep 0.02
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "PostgreSQL  $pg_url"
echo "ClickHouse  $ch_url"
echo "Redis       redis://127.0.0.1:$redis_port"
echo "node A      gateway http://127.0.0.1:$a_gw  admin http://127.0.0.1:$a_admin"
echo "node B      gateway http://127.0.0.1:$b_gw  admin http://127.0.0.1:$b_admin"
echo "admin token $token"
if [ "$status" != 200 ]; then
  echo "a key made on node A was not accepted by node B (last status $status)" >&2
  exit 1
fi
echo "a key made on node A answered 200 on node B after ${ms} ms"
# Traffic on A shows in B's stats (events go A -> ClickHouse -> B).
for _ in $(seq 20); do curl -s -o /dev/null -H "x-api-key: $key" "http://127.0.0.1:$a_gw/pets/1"; done
start=$(date +%s%N)
seen=0
for _ in $(seq 100); do
  seen=$(admin "http://127.0.0.1:$b_admin/v1/stats/consumers/acme" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])' 2>/dev/null || echo 0)
  [ "$seen" -ge 21 ] && break
  sleep 0.1
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if [ "$seen" -lt 21 ]; then
  echo "node B's stats count $seen of the 21 requests made on both nodes" >&2
  exit 1
fi
echo "node B's stats counted node A's 20 requests (and its own) ${ms} ms after they were sent"
[ "$check" = 1 ] && exit 0
echo "running; Ctrl-C stops everything and removes $dir"
wait
