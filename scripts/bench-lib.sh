# Shared by the benchmarks that start processes of their own (bench-gateway.sh, bench-ai.sh):
# sourced, not run, after setting BENCH to the script's name. Gives die, positive_ints, a
# one-run-at-a-time lock, the install of missing Debian tools, a temp dir $TMP removed on exit
# with every pid in STARTED stopped (SIGTERM, then SIGKILL after 15 s), distinct free ports
# and wait_200.

die() { echo "$BENCH: $*" >&2; exit 1; }

# positive_ints VAR...: each variable must hold a positive integer.
positive_ints() {
  local v
  for v in "$@"; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
  done
}

# Two runs at once share the two CPUs and make each other's numbers meaningless, so refuse.
bench_lock() {
  exec 9>"${TMPDIR:-/tmp}/$BENCH.lock"
  flock -n 9 || die "another $BENCH run is in progress (lock ${TMPDIR:-/tmp}/$BENCH.lock)"
}

# install_missing CMD[=PACKAGE]...: installs, from Debian's packages, the package of each
# command that is not on PATH (the command's own name when no package is given).
install_missing() {
  local need=() spec
  for spec in "$@"; do
    command -v "${spec%%=*}" >/dev/null || need+=("${spec#*=}")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "installing: ${need[*]}"
  local sudo=sudo
  [ "$(id -u)" = 0 ] && sudo=""
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/$BENCH.XXXXXX")
STARTED=()   # every process the script started

# True while the process exists and is not a zombie (our own children stay zombies until reaped).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

cleanup() {
  local rc=$? pid deadline
  trap - EXIT INT TERM
  for pid in ${STARTED[@]+"${STARTED[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  # clientele drains and flushes on SIGTERM; give everything a moment, then force it.
  deadline=$((SECONDS + 15))
  for pid in ${STARTED[@]+"${STARTED[@]}"}; do
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then
      echo "$BENCH: pid $pid ignored SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# distinct_ports N: N free ports in PORTS, no two alike (the kernel rarely repeats one, but a
# repeat would be a confusing failure).
distinct_ports() {
  local p
  PORTS=()
  while [ ${#PORTS[@]} -lt "$1" ]; do
    p=$(free_port)
    [[ " ${PORTS[*]-} " == *" $p "* ]] || PORTS+=("$p")
  done
}

# wait_200 URL SECS PID [CURL ARGS...]: polls URL until it answers 200, giving up after SECS
# seconds or as soon as process PID dies.
wait_200() {
  local url=$1 deadline=$((SECONDS + $2)) pid=$3 code
  shift 3
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true)
    [ "$code" = 200 ] && return 0
    alive "$pid" || return 1
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
