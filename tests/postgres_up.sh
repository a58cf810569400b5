#!/usr/bin/env bash
# Make the tests' PostgreSQL answer: `make sysdeps` runs this before pytest.
#
# - Something already answers on the test DSN: use it and touch nothing.
# - Otherwise, for the default DSN (127.0.0.1:5432, user postgres, database test) and as root:
#   install Debian's postgresql when missing, then start a scratch cluster of our own (initdb +
#   pg_ctl, trust auth on 127.0.0.1 only, owned by the postgres user) and create `test`.
#   A scratch cluster leaves the distribution's own clusters and their pg_hba.conf alone.
# - Anything else (a DSN pointing elsewhere, not root) is reported in one line; the tests then
#   skip outside CI and fail under CI=true.
# Idempotent: a second run finds the cluster answering (or restarts the stopped scratch one).
set -euo pipefail

DEFAULT_DSN="postgresql://postgres@127.0.0.1:5432/test"
DSN="${INSIGNIA_TEST_POSTGRES_DSN:-$DEFAULT_DSN}"
SCRATCH="${INSIGNIA_TEST_POSTGRES_DIR:-/var/tmp/insignia-test-postgres}"
PORT=5432

say() { echo "postgres_up: $*"; }

answers() {  # $1: DSN
  command -v psql >/dev/null 2>&1 &&
    PGCONNECT_TIMEOUT=3 psql "$1" -XAtqc 'select 1' >/dev/null 2>&1
}

if answers "$DSN"; then
  say "PostgreSQL answers at $DSN; using it as it is"
  exit 0
fi
if [ "$DSN" != "$DEFAULT_DSN" ]; then
  say "INSIGNIA_TEST_POSTGRES_DSN=$DSN does not answer; not starting a cluster for a DSN of yours"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "nothing answers at $DSN and starting a cluster needs root; PostgreSQL tests will skip"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "installing Debian's postgresql"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
fi
BINDIR=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

server_db="postgresql://postgres@127.0.0.1:$PORT/postgres"
if ! answers "$server_db"; then
  if [ ! -s "$SCRATCH/data/PG_VERSION" ]; then
    say "creating a scratch cluster in $SCRATCH"
    rm -rf "$SCRATCH"
    install -d -m 0700 -o postgres -g postgres "$SCRATCH"
    runuser -u postgres -- "$BINDIR/initdb" -D "$SCRATCH/data" -U postgres --auth=trust \
      --encoding=UTF8 --no-sync >"$SCRATCH/initdb.log" 2>&1 ||
      { say "initdb failed; see $SCRATCH/initdb.log"; exit 1; }
  fi
  say "starting PostgreSQL on 127.0.0.1:$PORT (log: $SCRATCH/postgres.log)"
  runuser -u postgres -- "$BINDIR/pg_ctl" -D "$SCRATCH/data" -l "$SCRATCH/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SCRATCH -c max_connections=300 -c fsync=off" \
    start >/dev/null ||
    { say "PostgreSQL did not start; last log lines:"; tail -n 5 "$SCRATCH/postgres.log"; exit 1; }
fi
if ! answers "$DSN"; then
  psql "$server_db" -XAtqc 'create database test' >/dev/null
fi
answers "$DSN" || { say "PostgreSQL runs but $DSN still does not answer"; exit 1; }
say "PostgreSQL answers at $DSN"
