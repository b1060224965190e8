#!/usr/bin/env bash
# Runs every test of coffer: unit, property, conformance (SQLite and PostgreSQL) and
# end-to-end tests that start the real daemons and drive the real CLI.
#
# PostgreSQL: if COFFER_TEST_POSTGRES_URL (or libpq's PG* variables) is not set, and
# pg_virtualenv (Debian's postgresql-common) is installed, the suite runs inside a throw-away
# PostgreSQL cluster. With neither, the PostgreSQL half of the suite is skipped with a note,
# except when CI is set: then it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${COFFER_TEST_POSTGRES_URL:-}" ] && [ -z "${PGHOST:-}" ] && command -v pg_virtualenv >/dev/null 2>&1; then
  # fsync off: a throw-away cluster for tests; coffer's own durability is SQLite's and PG's default.
  exec pg_virtualenv -c '-c fsync=off -c max_connections=200' "$0" "$@"
fi

cargo build --workspace --bins
cargo test --workspace "$@"
