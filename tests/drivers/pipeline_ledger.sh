#!/usr/bin/env bash
# The pipelined ledger (issue 9): sets up a throwaway PostgreSQL, Suture and (with
# --compare) PgBouncer, and runs tests/drivers/pipeline_ledger.py (psycopg 3 clients in
# pipeline mode, backends terminated every 0.6 s, one server restart) against each
# target with the same seed. This file owns the setup and teardown and the exit status;
# the Python script owns the load, the faults and the verdict.
#
#   bash tests/drivers/pipeline_ledger.sh             # CI mode: Suture only, --assert
#   bash tests/drivers/pipeline_ledger.sh --compare   # direct, PgBouncer, Suture + table
#
# Options: --compare, --clients N, --secs N, --seed N.
# Environment knobs:
#   PIPELINE_LEDGER_SECS     seconds of load per target (default 15)
#   PIPELINE_LEDGER_CLIENTS  clients = Suture max_size = PgBouncer default_pool_size (8)
#   PIPELINE_LEDGER_SEED     fault schedule seed (default: random, printed)
#   SUTURE_BIN               suture binary (default target/debug/suture, built if missing)
#   PYTHON                   python 3 interpreter (default python3)
#   SUTURE__LOG__LEVEL       passed through to Suture, e.g. "suture=debug,info"
#
# Needs root: installs missing Debian packages (postgresql, and pgbouncer for --compare)
# and psycopg[binary] with pip, and runs initdb/pg_ctl as the postgres OS user in a temp
# directory on a free port; a PostgreSQL already running on the machine is never touched.
# All targets log in as the role `ledger`, whose server-side auth is md5; towards Suture
# and PgBouncer the clients use trust (Suture: client_auth = "trust" on its loopback
# listener; PgBouncer: auth_type = trust, with the password in its auth_file for its own
# md5 login), so a mass reconnect after a fault costs no SCRAM PBKDF2 anywhere.
# PgBouncer keeps its defaults otherwise (server_login_retry = 15 s: a login that fails
# while the server restarts makes it refuse clients for that long).
# Logs, configs and results of each run: target/drivers/pipeline-ledger/<time>/<target>/
# (target/drivers/pipeline-ledger/latest points at the last one).
# Exit status: non-zero when the Suture run fails its assertions (or setup fails).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# as_pg, free_port.
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

COMPARE=0
CLIENTS="${PIPELINE_LEDGER_CLIENTS:-8}"
SECS="${PIPELINE_LEDGER_SECS:-15}"
SEED="${PIPELINE_LEDGER_SEED:-}"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
PYTHON="${PYTHON:-python3}"
DRIVER="$HERE/pipeline_ledger.py"
ROLE=ledger
ROLE_PASSWORD=ledger-secret
DB=ledger

log() { printf '[pipeline-ledger %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

parse_args() {
    while (($#)); do
        case $1 in
            --compare) COMPARE=1 ;;
            --clients) CLIENTS=$2; shift ;;
            --secs) SECS=$2; shift ;;
            --seed) SEED=$2; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    [[ -n "$SEED" ]] || SEED=$(( (RANDOM << 15) | RANDOM ))
}

# Nothing from the caller's libpq environment may leak into any run.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSERVICEFILE \
      PGPASSFILE PGSSLMODE PGOPTIONS PGAPPNAME PGCLIENTENCODING PGTZ PGDATESTYLE

# ---------------------------------------------------------------- installing

APT_UPDATED=""
apt_install() {
    [[ -n "$APT_UPDATED" ]] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PG_BIN=""
find_pg_bin() {
    PG_BIN=""
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n); do
        [[ -x "$d/initdb" ]] && PG_BIN="$d"
    done
    [[ -n "$PG_BIN" ]]
}

install_postgres() {
    find_pg_bin && return 0
    log "installing PostgreSQL with apt-get (no cluster is created)"
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] ||
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    apt_install postgresql
    find_pg_bin || die "no initdb after installing postgresql"
}

install_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 && return 0
    log "installing pgbouncer (its system service is not started; we run our own)"
    # A policy-rc.d that says no keeps the package's service from starting on install.
    local policy=/usr/sbin/policy-rc.d made=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made=1
    fi
    apt_install pgbouncer || rc=$?
    [[ "$made" == 1 ]] && rm -f "$policy"
    [[ "$rc" == 0 ]] || die "could not install pgbouncer"
}

install_psycopg() {
    "$PYTHON" -c 'import psycopg' 2>/dev/null && return 0
    log "installing psycopg[binary] with pip"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        "psycopg[binary]" ||
        "$PYTHON" -m pip install -q --break-system-packages "psycopg[binary]"
}

ensure_suture() {
    [[ -x "$SUTURE_BIN" ]] && return 0
    [[ "$SUTURE_BIN" == "$ROOT/target/debug/suture" ]] || die "SUTURE_BIN $SUTURE_BIN is not executable"
    log "building suture (cargo build)"
    (cd "$ROOT" && cargo build --quiet --bin suture)
}

# ---------------------------------------------------------------- processes

WORK=""
RUN_DIR=""
PG_PORT=""
PG_LOG=""
SUTURE_PID=""
PGB_PIDFILE=""

stop_suture() {
    [[ -n "$SUTURE_PID" ]] || return 0
    kill "$SUTURE_PID" 2>/dev/null || true
    local _
    for _ in $(seq 50); do kill -0 "$SUTURE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SUTURE_PID" 2>/dev/null || true
    wait "$SUTURE_PID" 2>/dev/null || true
    SUTURE_PID=""
}

stop_pgbouncer() {
    [[ -n "$PGB_PIDFILE" ]] || return 0
    local pid _
    pid="$(cat "$PGB_PIDFILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    PGB_PIDFILE=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_suture
    stop_pgbouncer
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
    WORK="$(mktemp -d /tmp/suture-pipeline-ledger.XXXXXX)"
    chown postgres: "$WORK"
    chmod 700 "$WORK"
    PG_PORT="$(free_port)"
    PG_LOG="$WORK/postgres-setup.log"
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
    # Specific lines first: the first match wins.
    cat >"$WORK/data/pg_hba.conf" <<EOF
local all all trust
host all $ROLE 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
EOF
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$PG_LOG" -w -t 60 start >/dev/null
    psql_admin -d postgres \
        -c "SET password_encryption = 'md5'; CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE_PASSWORD'" \
        -c "CREATE DATABASE $DB"
    # No unique index: a statement executed twice shows as a duplicate.
    psql_admin -d "$DB" \
        -c "CREATE TABLE ledger (client int, seq int, payload text)" \
        -c "GRANT ALL ON ledger TO $ROLE"
}

# The command the driver runs once mid-run; appends to this target's server log.
restart_cmd() {
    printf 'runuser -u postgres -- %q -D %q -l %q -m fast -w -t 60 restart' \
        "$PG_BIN/pg_ctl" "$WORK/data" "$PG_LOG"
}

# Every target starts on a freshly started server, logging to its own file.
fresh_postgres() {
    PG_LOG="$WORK/postgres-$1.log"
    as_pg touch "$PG_LOG"
    eval "$(restart_cmd)" >/dev/null
}

# Waits until a query through 127.0.0.1:$1 works, as the clients' role.
wait_ready() {
    local port=$1 _
    for _ in $(seq 100); do
        if PGPASSWORD="$ROLE_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" \
               -U "$ROLE" -d "$DB" -tAc 'select 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

start_suture() {
    local dir=$1 port admin
    port="$(free_port)"
    admin="$(free_port)"
    cat >"$dir/suture.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[pools.ledger]
protocol = "postgres"
listen = "127.0.0.1:$port"
servers = ["127.0.0.1:$PG_PORT"]
tls = "disable"
client_auth = "trust"
min_idle = 0
max_size = $CLIENTS
failover_hold = "30s"

[pools.ledger.users.$ROLE]
password = "$ROLE_PASSWORD"
EOF
    "$SUTURE_BIN" --config "$dir/suture.toml" >"$dir/suture.log" 2>&1 &
    SUTURE_PID=$!
    if ! wait_ready "$port"; then
        log "suture did not serve a query within 20 s:"
        tail -n 20 "$dir/suture.log" >&2
        return 1
    fi
    log "suture (pid $SUTURE_PID) on 127.0.0.1:$port, max_size $CLIENTS, min_idle 0"
    TARGET_PORT=$port
}

start_pgbouncer() {
    local dir=$1 port
    port="$(free_port)"
    printf '"%s" "%s"\n' "$ROLE" "$ROLE_PASSWORD" >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = session
default_pool_size = $CLIENTS
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 100
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options
pidfile = $WORK/pgbouncer.pid
logfile = $WORK/pgbouncer.log
EOF
    chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
    : >"$WORK/pgbouncer.log"
    chown postgres: "$WORK/pgbouncer.log"
    cp "$WORK/pgbouncer.ini" "$dir/pgbouncer.ini"
    pgbouncer -d -u postgres "$WORK/pgbouncer.ini"
    PGB_PIDFILE="$WORK/pgbouncer.pid"
    if ! wait_ready "$port"; then
        log "pgbouncer did not serve a query within 20 s:"
        tail -n 20 "$WORK/pgbouncer.log" >&2
        return 1
    fi
    log "pgbouncer $(pgbouncer --version | head -n 1 | awk '{print $NF}') on 127.0.0.1:$port, session mode, default_pool_size $CLIENTS"
    TARGET_PORT=$port
}

# run_target NAME: one ledger run against NAME (direct | pgbouncer | suture).
# Suture's run is asserted; its exit status is the function's.
run_target() {
    local name=$1 dir="$RUN_DIR/$1" rc=0
    mkdir -p "$dir"
    fresh_postgres "$name"
    TARGET_PORT=""
    case $name in
        direct) TARGET_PORT=$PG_PORT ;;
        pgbouncer) start_pgbouncer "$dir" || rc=$? ;;
        suture) start_suture "$dir" || rc=$? ;;
    esac
    if [[ "$rc" == 0 ]]; then
        local check=()
        [[ "$name" == suture ]] && check=(--assert)
        log "running against $name (port $TARGET_PORT): $CLIENTS clients, ${SECS}s, seed $SEED"
        "$PYTHON" "$DRIVER" --label "$name" \
            --dsn "host=127.0.0.1 port=$TARGET_PORT user=$ROLE password=$ROLE_PASSWORD dbname=$DB sslmode=disable gssencmode=disable" \
            --superuser-dsn "host=$WORK port=$PG_PORT user=postgres dbname=$DB" \
            --restart-cmd "$(restart_cmd)" \
            --clients "$CLIENTS" --secs "$SECS" --seed "$SEED" \
            --json "$dir/result.json" "${check[@]}" 2>"$dir/driver.stderr" |
            tee "$dir/report.txt" || rc=$?
        [[ -s "$dir/driver.stderr" ]] && tail -n 20 "$dir/driver.stderr" >&2
    fi
    stop_suture
    stop_pgbouncer
    cp "$PG_LOG" "$dir/postgres.log" 2>/dev/null || true
    [[ -f "$WORK/pgbouncer.log" && "$name" == pgbouncer ]] && cp "$WORK/pgbouncer.log" "$dir/"
    if [[ "$name" == suture && "$rc" != 0 && -f "$dir/suture.log" ]]; then
        log "the Suture run failed; last lines of $dir/suture.log:"
        tail -n 40 "$dir/suture.log" >&2
    fi
    return "$rc"
}

main() {
    parse_args "$@"
    local t0 rc=0
    t0=$(date +%s)
    install_postgres
    install_psycopg
    [[ "$COMPARE" == 1 ]] && install_pgbouncer
    ensure_suture
    RUN_DIR="$ROOT/target/drivers/pipeline-ledger/$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$RUN_DIR"
    ln -sfn "$(basename "$RUN_DIR")" "$ROOT/target/drivers/pipeline-ledger/latest"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_postgres
    if [[ "$COMPARE" == 1 ]]; then
        run_target direct || true
        run_target pgbouncer || true
    fi
    run_target suture || rc=$?
    if [[ "$COMPARE" == 1 ]]; then
        log "comparison (seed $SEED, $CLIENTS clients, ${SECS}s each):"
        "$PYTHON" "$DRIVER" --table direct="$RUN_DIR/direct/result.json" \
            pgbouncer="$RUN_DIR/pgbouncer/result.json" suture="$RUN_DIR/suture/result.json" |
            tee "$RUN_DIR/comparison.md"
    fi
    log "done in $(( $(date +%s) - t0 ))s; logs and results in $RUN_DIR; Suture run exit $rc"
    return "$rc"
}

main "$@"
