#!/usr/bin/env bash
# Alternating A/B of two (or more) cofferd binaries under one workload of bench/loadgen, on one
# machine, so that its drift hits every binary alike. Each run starts `cofferd dev` on a fresh
# store, preloads --apps apps x 10 secrets, runs the workloads, and prints one line per figure.
#
#   bench/ab.sh [--apps 2000] [--duration 8] [--rounds 2] [--conns 16] [--workloads "write list"]
#               [--postgres] BINARY_A BINARY_B [...]
#
# Copy the binaries first (e.g. `cp target/release/cofferd /tmp/cofferd-before`), since a build
# replaces target/release/cofferd. --postgres: coffer's store is a fresh database per run on
# the PostgreSQL server of the PG* environment variables, made with createdb (run it under
# `pg_virtualenv -o fsync=on`). Never fails on timings; the figures are for reading.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APPS=2000 DURATION=8 ROUNDS=2 CONNS=16 WORKLOADS=write POSTGRES=0 BINS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --apps) APPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --postgres) POSTGRES=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) BINS+=("$1") ;;
  esac
  shift
done
[[ ${#BINS[@]} -ge 2 ]] || { echo "error: give two cofferd binaries or more" >&2; exit 2; }
for b in "${BINS[@]}"; do [[ -x $b ]] || { echo "error: $b is not an executable" >&2; exit 2; }; done

(cd "$ROOT" && cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml" \
  --target-dir "$ROOT/bench/loadgen/target")
LOADGEN=$ROOT/bench/loadgen/target/release/coffer-loadgen

WORK="" PID="" DB=""
cleanup() {
  if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  PID=""
  [[ -n $WORK ]] && rm -rf "$WORK"
  WORK=""
  [[ -n $DB ]] && dropdb "$DB" 2>/dev/null || true
  DB=""
}
trap cleanup EXIT
for v in $(compgen -e | grep '^COFFER_' || true); do unset "$v"; done

run=0
for round in $(seq 1 "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
    run=$((run + 1))
    WORK=$(mktemp -d /tmp/coffer-ab.XXXXXX)
    STORE=()
    if [[ $POSTGRES == 1 ]]; then
      DB=coffer_ab_$$_$run
      createdb "$DB"
      STORE=(--database-url "postgres://$PGUSER:$PGPASSWORD@${PGHOST:-localhost}:$PGPORT/$DB")
    fi
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    XDG_CONFIG_HOME=$WORK/xdg "$bin" dev "${STORE[@]}" --data-dir "$WORK/coffer" \
      --listen "127.0.0.1:$PORT" --no-cli-config > "$WORK/stdout.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true) == 200 ]] && break
      sleep 0.1
    done
    VAULT_URL=""
    for _ in $(seq 1 50); do
      VAULT_URL=$(awk '/^ *vault:/{print $2; exit}' "$WORK/stdout.log"); [[ -n $VAULT_URL ]] && break; sleep 0.1
    done
    ARGS=(--vault-url "$VAULT_URL" --system coffer --url "http://127.0.0.1:$PORT"
      --token-file "$WORK/coffer/admin.token" --server-pid "$PID")
    "$LOADGEN" preload "${ARGS[@]}" --apps "$APPS" --conns "$CONNS" 2> /dev/null \
      | python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print('round $round  $bin  bulk load %.2f s' % d['seconds'])"
    for w in $WORKLOADS; do
      "$LOADGEN" run "${ARGS[@]}" --workload "$w" --apps "$APPS" --conns "$CONNS" \
        --duration "$DURATION" --warmup 1 \
        | python3 -c "
import json, sys
d = json.loads(sys.stdin.readline())
other = d.get('other_cpu_s') or 0
print('round $round  $bin  $w: %d/s  p50 %.2f ms  p99 %.2f ms  cofferd CPU %.0f us/request  other CPU %.0f us/request' % (
    d['rps'], d['p50_ms'], d['p99_ms'], d['server_cpu_us_per_req'], other * 1e6 / max(d['requests'], 1)))"
    done
    cleanup
  done
done
