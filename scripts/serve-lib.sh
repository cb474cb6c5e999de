# Shared by scripts that run a real server (idle-flood.sh, soak.sh, schemathesis.sh): sourced,
# not run. Gives free_port, a temp dir $dir removed on exit with every pid in $pids killed, and
# start_clientele, which writes the config and waits until /healthz answers.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

# start_clientele BIN ADMIN_PORT: serves $dir/clientele.toml (already written), logging to
# $dir/server.log; sets server_pid; fails with the log if the server does not answer in 20 s.
start_clientele() {
  "$1" serve --config "$dir/clientele.toml" 2> "$dir/server.log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server did not start:" >&2
  cat "$dir/server.log" >&2
  return 1
}
