#!/usr/bin/env bash
# Hostile clients (issue 10): starts a throwaway PostgreSQL and runs
# tests/hostile/hostile_clients.py against Suture. This file owns the setup and teardown;
# the Python script owns the clients, the measurements and the table.
#
#   bash tests/hostile/run.sh                       # measure SUTURE_BIN, print its table
#   bash tests/hostile/run.sh --before OLD_BIN      # measure OLD_BIN, then SUTURE_BIN,
#                                                   # print one before/after table
#
# Options: --before OLD_BIN.
# Environment knobs:
#   SUTURE_BIN   suture binary measured (default target/debug/suture, built if missing)
#   PYTHON       python 3 interpreter (default python3; the script needs only its stdlib)
#
# Needs root: installs PostgreSQL with apt-get when missing, and runs initdb/pg_ctl as the
# postgres OS user in a temp directory on a free port; a PostgreSQL already running on the
# machine is never touched. The role `app` (password `app-secret`, scram-sha-256) owns the
# database `app`; the script reads pg_stat_database as `postgres` over the Unix socket.
# Tables, JSON and each Suture's config and log: target/hostile/<time>/ (target/hostile/
# latest points at the last one). Exit status: 0 unless setup or the script itself broke;
# the numbers are measured, not judged.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# as_pg, free_port.
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

BEFORE_BIN=""
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
PYTHON="${PYTHON:-python3}"
SCRIPT="$HERE/hostile_clients.py"
ROLE=app
ROLE_PASSWORD=app-secret
DB=app

log() { printf '[hostile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

parse_args() {
    while (($#)); do
        case $1 in
            --before) BEFORE_BIN=$2; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    if [[ -n "$BEFORE_BIN" ]]; then
        [[ -x "$BEFORE_BIN" ]] || die "--before $BEFORE_BIN is not executable"
        BEFORE_BIN="$(cd "$(dirname "$BEFORE_BIN")" && pwd)/$(basename "$BEFORE_BIN")"
    fi
}

# Nothing from the caller's libpq environment may leak into any run.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSERVICEFILE \
      PGPASSFILE PGSSLMODE PGOPTIONS PGAPPNAME PGCLIENTENCODING PGTZ PGDATESTYLE

# ---------------------------------------------------------------- installing

PG_BIN=""
find_pg_bin() {
    PG_BIN=""
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n); do
        [[ -x "$d/initdb" && -x "$d/psql" ]] && PG_BIN="$d"
    done
    [[ -n "$PG_BIN" ]]
}

install_postgres() {
    find_pg_bin && return 0
    log "installing PostgreSQL with apt-get (no cluster is created)"
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] ||
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null
    find_pg_bin || die "no initdb after installing postgresql"
}

ensure_suture() {
    [[ -x "$SUTURE_BIN" ]] && return 0
    [[ "$SUTURE_BIN" == "$ROOT/target/debug/suture" ]] || die "SUTURE_BIN $SUTURE_BIN is not executable"
    log "building suture (cargo build)"
    (cd "$ROOT" && cargo build --quiet --bin suture)
}

# ---------------------------------------------------------------- PostgreSQL

WORK=""
PG_PORT=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n "$WORK" && -f "$WORK/data/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}

psql_admin() {
    as_pg "$PG_BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"
}

start_postgres() {
    WORK="$(mktemp -d /tmp/suture-hostile.XXXXXX)"
    chown postgres: "$WORK"
    chmod 700 "$WORK"
    PG_PORT="$(free_port)"
    log "initdb ($PG_BIN) in $WORK, port $PG_PORT"
    as_pg "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$WORK/initdb.log"
    cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
logging_collector = off
EOF
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 start >/dev/null
    psql_admin -d postgres \
        -c "SET password_encryption = 'scram-sha-256'; CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE_PASSWORD'" \
        -c "CREATE DATABASE $DB OWNER $ROLE"
}

# ---------------------------------------------------------------- runs

# measure NAME BIN: one run of the script against BIN; its table, JSON and Suture logs go
# to $RUN_DIR.
measure() {
    local name=$1 bin=$2
    log "measuring $name: $bin"
    "$PYTHON" "$SCRIPT" --suture-bin "$bin" --label "$name ($bin)" --pg-port "$PG_PORT" \
        --admin-host "$WORK" --psql "$PG_BIN/psql" --json "$RUN_DIR/$name.json" \
        --log-dir "$RUN_DIR/$name-logs" |
        tee "$RUN_DIR/$name.txt"
}

main() {
    parse_args "$@"
    local t0
    t0=$(date +%s)
    install_postgres
    ensure_suture
    RUN_DIR="$ROOT/target/hostile/$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$RUN_DIR"
    ln -sfn "$(basename "$RUN_DIR")" "$ROOT/target/hostile/latest"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_postgres
    if [[ -n "$BEFORE_BIN" ]]; then
        measure before "$BEFORE_BIN"
        measure after "$SUTURE_BIN"
        log "before/after:"
        "$PYTHON" "$SCRIPT" --table "$RUN_DIR/before.json" "$RUN_DIR/after.json" |
            tee "$RUN_DIR/comparison.md"
    else
        measure suture "$SUTURE_BIN"
    fi
    log "done in $(( $(date +%s) - t0 ))s; tables and JSON in $RUN_DIR"
}

main "$@"
