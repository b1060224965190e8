#!/usr/bin/env bash
# Machine boot latency (issue #3's measure, issue #5's last workload): `machines start` to the
# workload's first instruction with 10 and 100 secrets, against a plain spawn of the same
# process. Builds release binaries, starts `cofferd dev` (SQLite, synchronous=FULL) in a temp
# data dir on loopback, runs bench/bootlat, stops it. Usage: bench/bootlat.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-40}
cargo build --release -q -p cofferd
(cd bench/bootlat && cargo build --release -q)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
target/release/cofferd dev --data-dir "$dir/data" --listen 127.0.0.1:0 --no-cli-config >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 1 200); do grep -q "API:" "$dir/out" 2>/dev/null && break; sleep 0.05; done
api=$(awk '/API:/{print $2}' "$dir/out")
token=$(cat "$dir/data/admin.token")
for n in 10 100; do
  bench/bootlat/target/release/coffer-bootlat "$api" "$token" "$dir/data" "$n" "$iterations"
done
