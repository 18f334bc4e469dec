#!/usr/bin/env bash
# Run psycopg2's own test suite twice, directly against a throwaway PostgreSQL
# and through Suture, and compare the outcomes test by test (issue 3: "a widely
# used driver's own test suite should pass through Suture exactly as it passes
# against the server directly").
#
#   bash tests/drivers/psycopg2_suite.sh
#
# Needs root (initdb runs as the postgres user via runuser), Python 3 with pip,
# and PostgreSQL binaries under /usr/lib/postgresql/*/bin (installed with
# apt-get when missing). Installs psycopg2-binary and downloads the psycopg2
# sdist (only its tests/ directory is used) into target/drivers/. Builds
# target/debug/suture with `cargo build` when it is missing.
#
# Environment knobs:
#   SUTURE_BIN             suture binary (default target/debug/suture)
#   RUN_TIMEOUT            seconds allowed for each of the two runs (default 150)
#   PER_TEST_TIMEOUT       seconds allowed for one test (default 30)
#   PSYCOPG2_ONLY          run only this direct/suture part: "direct" or "suture"
#                          (the other run's last recorded outcomes are reused)
#
# Outcomes (JSON lines), logs and the comparison are kept in
# target/drivers/results/. Exit 0 only when no test that passes directly fails
# through Suture, apart from those in psycopg2_expected_differences.txt.
set -euo pipefail

PSYCOPG2_VERSION=2.9.10
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# free_port.
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
CACHE="$ROOT/target/drivers"
RESULTS="$CACHE/results"
SUITE_DIR="$CACHE/psycopg2-$PSYCOPG2_VERSION"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
RUN_TIMEOUT="${RUN_TIMEOUT:-150}"
PER_TEST_TIMEOUT="${PER_TEST_TIMEOUT:-30}"
ONLY="${PSYCOPG2_ONLY:-}"
PYTHON="${PYTHON:-python3}"

log() { printf '[psycopg2-suite %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
START_TS=$(date +%s)

# Nothing from the caller's libpq environment may leak into either run.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSERVICEFILE \
      PGPASSFILE PGSSLMODE PGOPTIONS PGAPPNAME PGCLIENTENCODING PGTZ PGDATESTYLE \
      PSYCOPG2_TESTDB PSYCOPG2_TESTDB_HOST PSYCOPG2_TESTDB_PORT PSYCOPG2_TESTDB_USER \
      PSYCOPG2_TESTDB_PASSWORD PSYCOPG2_TEST_REPL_DSN PSYCOPG2_TEST_GREEN PSYCOPG2_TEST_FAST

mkdir -p "$CACHE" "$RESULTS"

# --- 1. PostgreSQL binaries, psycopg2 (binary wheel), the sdist's tests/ --------
APT_UPDATED=""
apt_install() {
    [[ -n "$APT_UPDATED" ]] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PG_BIN=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n); do
    [[ -x "$d/initdb" ]] && PG_BIN="$d"
done
if [[ -z "$PG_BIN" ]]; then
    log "installing PostgreSQL with apt-get (no cluster is created)"
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] ||
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    apt_install postgresql postgresql-contrib
    for d in $(ls -d /usr/lib/postgresql/*/bin | sort -t/ -k5 -n); do
        [[ -x "$d/initdb" ]] && PG_BIN="$d"
    done
fi

# pip prepares the sdist's metadata, and psycopg2's setup.py wants a working pg_config.
if ! pg_config --version >/dev/null 2>&1; then
    log "installing libpq-dev (pg_config, needed to download the psycopg2 sdist)"
    apt_install libpq-dev
fi

if ! "$PYTHON" -c "import psycopg2, sys; sys.exit(psycopg2.__version__.split()[0] != '$PSYCOPG2_VERSION')" 2>/dev/null; then
    log "installing psycopg2-binary==$PSYCOPG2_VERSION"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        "psycopg2-binary==$PSYCOPG2_VERSION"
fi
SDIST="$CACHE/psycopg2-$PSYCOPG2_VERSION.tar.gz"
if [[ ! -s "$SDIST" ]]; then
    log "downloading the psycopg2 $PSYCOPG2_VERSION sdist"
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$CACHE" "psycopg2==$PSYCOPG2_VERSION"
fi
if [[ ! -f "$SUITE_DIR/tests/__init__.py" ]]; then
    rm -rf "$SUITE_DIR"
    tar -xzf "$SDIST" -C "$CACHE" "psycopg2-$PSYCOPG2_VERSION/tests"
fi

# --- 2. a throwaway PostgreSQL ---------------------------------------------------
WORK="$(mktemp -d /tmp/suture-psycopg2.XXXXXX)"
SUTURE_PID=""
PG_STARTED=""
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$SUTURE_PID" ]]; then
        kill "$SUTURE_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SUTURE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SUTURE_PID" 2>/dev/null
        wait "$SUTURE_PID" 2>/dev/null
    fi
    if [[ -n "$PG_STARTED" ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    [[ -f "$WORK/suture.log" ]] && cp "$WORK/suture.log" "$RESULTS/suture.log"
    [[ -f "$WORK/postgres.log" ]] && cp "$WORK/postgres.log" "$RESULTS/postgres.log"
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

chown postgres: "$WORK"
chmod 700 "$WORK"
PG_PORT="$(free_port)"
echo postgres >"$WORK/pwfile"
chown postgres: "$WORK/pwfile"
log "initdb ($PG_BIN) in $WORK, port $PG_PORT"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/data" -U postgres --pwfile="$WORK/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale --no-sync >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
max_prepared_transactions = 10
max_wal_senders = 0
wal_level = minimal
logging_collector = off
EOF
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 30 start >/dev/null
PG_STARTED=1
psql_admin() { runuser -u postgres -- "$PG_BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres -c "CREATE DATABASE psycopg2_test"
# hstore is in PostgreSQL's contrib; with it the suite runs its hstore tests too.
psql_admin -d psycopg2_test -c "CREATE EXTENSION IF NOT EXISTS hstore" 2>/dev/null ||
    log "hstore is not available: its tests will be skipped in both runs"

# --- 3. Suture in front of it ----------------------------------------------------
start_suture() {
    if [[ ! -x "$SUTURE_BIN" ]]; then
        log "building suture (cargo build)"
        (cd "$ROOT" && cargo build --quiet --bin suture) || return 1
    fi
    SUTURE_PORT="$(free_port)"
    local admin_port
    admin_port="$(free_port)"
    cat >"$WORK/suture.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin_port"

[pools.test]
protocol = "postgres"
listen = "127.0.0.1:$SUTURE_PORT"
servers = ["127.0.0.1:$PG_PORT"]
tls = "disable"
min_idle = 1
max_size = 20

[pools.test.users.postgres]
password = "postgres"
EOF
    cp "$WORK/suture.toml" "$RESULTS/suture.toml"
    "$SUTURE_BIN" --config "$WORK/suture.toml" >"$WORK/suture.log" 2>&1 &
    SUTURE_PID=$!
    for _ in $(seq 100); do
        if ! kill -0 "$SUTURE_PID" 2>/dev/null; then
            log "suture exited at start:"; tail -20 "$WORK/suture.log" >&2; SUTURE_PID=""; return 1
        fi
        if PGPASSWORD=postgres "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$SUTURE_PORT" -U postgres \
               -d psycopg2_test -tAc 'select 1' >/dev/null 2>&1; then
            log "suture (pid $SUTURE_PID) listening on 127.0.0.1:$SUTURE_PORT"
            return 0
        fi
        sleep 0.2
    done
    log "suture did not serve a query within 20s:"; tail -20 "$WORK/suture.log" >&2
    return 1
}

# --- 4. the suite, with a deadline per run and per test ----------------------------
# run_suite NAME PORT: outcomes go to $RESULTS/NAME.jsonl. The runner records
# each test as it finishes; after a per-test timeout or a crash it is started
# again and resumes after the last recorded test, until the run's deadline.
run_suite() {
    local name=$1 port=$2 out="$RESULTS/$1.jsonl"
    rm -f "$out" "$out.current"
    local deadline=$(( $(date +%s) + RUN_TIMEOUT )) rc=0 t0
    t0=$(date +%s)
    log "running the psycopg2 suite: $name (port $port)"
    while :; do
        local left=$(( deadline - $(date +%s) ))
        if (( left <= 0 )); then log "$name: run deadline (${RUN_TIMEOUT}s) reached"; break; fi
        rc=0
        (cd "$WORK" && PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 \
            PSYCOPG2_TESTDB_PORT="$port" PSYCOPG2_TESTDB_USER=postgres \
            PSYCOPG2_TESTDB_PASSWORD=postgres \
            timeout -k 5 "$left" "$PYTHON" "$HERE/unittest_outcomes.py" \
                --suite-dir "$SUITE_DIR" --module tests --out "$out" \
                --per-test-timeout "$PER_TEST_TIMEOUT") \
            >"$RESULTS/$name.stdout.log" 2>>"$RESULTS/$name.stderr.log" || rc=$?
        case $rc in
            0) break ;;
            3) log "$name: a test timed out; resuming after it" ;;
            124|137) log "$name: run deadline (${RUN_TIMEOUT}s) reached"; break ;;
            *) if [[ -f "$out.current" ]]; then
                   log "$name: the runner died (exit $rc) during $(cat "$out.current"); resuming"
               else
                   log "$name: the runner failed (exit $rc):"; tail -20 "$RESULTS/$name.stderr.log" >&2; break
               fi ;;
        esac
    done
    log "$name: $(wc -l <"$out" 2>/dev/null || echo 0) outcomes in $(( $(date +%s) - t0 ))s"
}

: >"$RESULTS/direct.stderr.log"
: >"$RESULTS/suture.stderr.log"
if [[ "$ONLY" != "suture" ]]; then
    run_suite direct "$PG_PORT"
fi
if [[ "$ONLY" != "direct" ]]; then
    if start_suture; then
        run_suite suture "$SUTURE_PORT"
        if ! kill -0 "$SUTURE_PID" 2>/dev/null; then
            log "suture is no longer running after the suite (see $RESULTS/suture.log)"
        fi
    else
        log "suture could not be started: every test counts as failed through it"
        rm -f "$RESULTS/suture.jsonl"
    fi
fi

# --- 5. compare ------------------------------------------------------------------
log "both runs done in $(( $(date +%s) - START_TS ))s; outcomes and logs in $RESULTS"
rc=0
"$PYTHON" "$HERE/compare_outcomes.py" --direct "$RESULTS/direct.jsonl" \
    --proxied "$RESULTS/suture.jsonl" --expected "$HERE/psycopg2_expected_differences.txt" \
    --label psycopg2 --proxy-name suture | tee "$RESULTS/comparison.txt" || rc=$?
exit $rc
