#!/usr/bin/env bash
# Profiles coffer's server under one workload of the benchmark with perf (CPU samples with
# call stacks), to see where the time goes.
#
#   bench/profile.sh [--workload list|write|boot-decrypt|bulk] [--apps 2000] [--conns 16] [--duration 8]
#
# Starts `cofferd dev` in a temp dir, preloads --apps apps x 10 secrets (profiled only for
# --workload bulk), runs the workload with bench/loadgen while `perf record` samples cofferd,
# and prints the hottest functions (self time) and the hottest call chains (inclusive time).
# The perf data stays in the printed directory for `perf report -i`. Needs `perf` (apt-get
# install linux-perf); where perf is not allowed, valgrind --tool=callgrind is the fallback.
# Builds like bench/run.sh (release binaries; not needed if they are fresh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
WORKLOAD=list APPS=2000 CONNS=16 DURATION=8
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workload) WORKLOAD=$2; shift ;;
    --apps) APPS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v perf > /dev/null || { echo "error: perf not found" >&2; echo "hint: apt-get install linux-perf" >&2; exit 1; }

(cd "$ROOT" && "$CARGO" build --release --quiet -p cofferd)
(cd "$ROOT" && "$CARGO" build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml" \
  --target-dir "$ROOT/bench/loadgen/target")
COFFERD=${CARGO_TARGET_DIR:-$ROOT/target}/release/cofferd
LOADGEN=$ROOT/bench/loadgen/target/release/coffer-loadgen

WORK=$(mktemp -d /tmp/coffer-profile.XXXXXX)
PID=""
cleanup() {
  if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for v in $(compgen -e | grep '^COFFER_' || true); do unset "$v"; done
XDG_CONFIG_HOME=$WORK/xdg "$COFFERD" dev --data-dir "$WORK/coffer" --listen "127.0.0.1:$PORT" \
  --no-cli-config > "$WORK/stdout.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true) == 200 ]] && break
  sleep 0.1
done
ARGS=(--system coffer --url "http://127.0.0.1:$PORT" --token-file "$WORK/coffer/admin.token" --server-pid "$PID")
if [[ $WORKLOAD == boot-decrypt ]]; then
  # The boot-decrypt workload talks to the vault, whose URL cofferd dev prints once it is up.
  for _ in $(seq 1 50); do
    VAULT_URL=$(awk '/^ *vault:/{print $2; exit}' "$WORK/stdout.log")
    [[ -n $VAULT_URL ]] && break
    sleep 0.1
  done
  ARGS+=(--vault-url "$VAULT_URL")
fi

record() { perf record -q -F 499 --call-graph dwarf,16384 -o "$WORK/perf.data" -p "$PID" -- sleep "$1" 2>/dev/null; }
if [[ $WORKLOAD == bulk ]]; then
  record "$DURATION" &
  REC=$!
  "$LOADGEN" preload "${ARGS[@]}" --apps "$APPS" --conns "$CONNS"
  wait "$REC"
else
  "$LOADGEN" preload "${ARGS[@]}" --apps "$APPS" --conns 16 > /dev/null
  "$LOADGEN" run "${ARGS[@]}" --workload "$WORKLOAD" --apps "$APPS" --conns "$CONNS" \
    --duration "$((DURATION + 2))" --warmup 0.5 &
  LG=$!
  sleep 1
  record "$DURATION"
  wait "$LG"
fi
echo
echo "== hottest functions, self time (perf report --no-children) =="
perf report -i "$WORK/perf.data" --no-children --stdio -g none --percent-limit 0.7 \
  --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | cut -c1-160 | head -45
echo
echo "== inclusive time (perf report --children), top entries =="
perf report -i "$WORK/perf.data" --children --stdio -g none --percent-limit 3 \
  --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | cut -c1-160 | head -60
echo
echo "== CPU by thread (tokio workers vs. sqlx's SQLite connection threads) =="
perf report -i "$WORK/perf.data" --no-children --stdio -g none --sort comm 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//'
echo
echo "perf data: $WORK/perf.data (perf report -i $WORK/perf.data)"
