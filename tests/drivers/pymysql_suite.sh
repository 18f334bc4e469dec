#!/usr/bin/env bash
# Run PyMySQL's own test suite twice, directly against a throwaway MariaDB and
# through Suture, and compare the outcomes test by test (issue 12: a driver's own
# test suite run directly and through Suture with the same outcomes).
#
#   bash tests/drivers/pymysql_suite.sh
#
# PyMySQL 0.10.1 is the last release whose sdist ships its test suite
# (pymysql/tests, with the MySQLdb DB-API tests); later sdists carry only
# tests/test_auth.py. PyMySQL is pure Python, so the suite runs against the
# sdist's own pymysql package (no pip install; nothing else on the machine is
# touched). Needs mariadbd and mariadb-install-db (scripts/install-deps.sh) and
# builds target/debug/suture when it is missing.
#
# Environment knobs:
#   SUTURE_BIN        suture binary (default target/debug/suture)
#   RUN_TIMEOUT       seconds allowed for each of the two runs (default 150)
#   PER_TEST_TIMEOUT  seconds allowed for one test (default 30)
#   PYMYSQL_ONLY      run only "direct" or "suture" (the other run's last outcomes are reused)
#
# Outcomes (JSON lines), logs and the comparison are kept in
# target/drivers/pymysql-results/. Exit 0 only when no test that passes directly
# fails through Suture, apart from those in pymysql_expected_differences.txt.
set -euo pipefail

PYMYSQL_VERSION=0.10.1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=tests/drivers/mariadb_lib.sh
source "$HERE/mariadb_lib.sh"
CACHE="$ROOT/target/drivers"
RESULTS="$CACHE/pymysql-results"
SUITE_DIR="$CACHE/PyMySQL-$PYMYSQL_VERSION"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
RUN_TIMEOUT="${RUN_TIMEOUT:-150}"
PER_TEST_TIMEOUT="${PER_TEST_TIMEOUT:-30}"
ONLY="${PYMYSQL_ONLY:-}"
PYTHON="${PYTHON:-python3}"

log() { printf '[pymysql-suite %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
START_TS=$(date +%s)
mkdir -p "$CACHE" "$RESULTS"

# --- 1. the PyMySQL sdist (its pymysql/ and pymysql/tests/) -------------------------
SDIST="$CACHE/PyMySQL-$PYMYSQL_VERSION.tar.gz"
if [[ ! -s "$SDIST" ]]; then
    log "downloading the PyMySQL $PYMYSQL_VERSION sdist"
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$CACHE" "PyMySQL==$PYMYSQL_VERSION"
fi
if [[ ! -f "$SUITE_DIR/pymysql/tests/__init__.py" ]]; then
    rm -rf "$SUITE_DIR"
    tar -xzf "$SDIST" -C "$CACHE"
fi

# The sdist leaves out the data file of the suite's LOAD DATA LOCAL tests; they count
# 22749 rows of two integers, so the file is made here.
DATA="$SUITE_DIR/pymysql/tests/data/load_local_data.txt"
if [[ ! -s "$DATA" ]]; then
    mkdir -p "$(dirname "$DATA")"
    seq 1 22749 | awk '{print $1 "," $1 * 2}' >"$DATA"
fi

# The suite imports pytest (for a few markers) beside unittest.
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    log "installing pytest (imported by the PyMySQL suite)"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore pytest
fi

# --- 2. a throwaway MariaDB -------------------------------------------------------
WORK="$(mktemp -d /tmp/suture-pymysql.XXXXXX)"
chmod 755 "$WORK"
SUTURE_PID=""
cleanup() {
    local rc=$?
    set +e
    stop_suture
    mariadb_kill
    [[ -f "$WORK/suture.log" ]] && cp "$WORK/suture.log" "$RESULTS/suture.log"
    [[ -f "$WORK/mdb/mariadb.err" ]] && cp "$WORK/mdb/mariadb.err" "$RESULTS/mariadb.err"
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MDB_PORT="$(free_port)"
log "mariadb-install-db in $WORK, port $MDB_PORT"
mariadb_init "$WORK"
# local_infile: the suite's LOAD DATA LOCAL tests.
mariadb_start "$WORK" "$MDB_PORT" --local-infile=1

# The suite's own runner entry point: the tests of pymysql.tests, as its __init__ lists them.
mkdir -p "$WORK/shim"
cat >"$WORK/shim/pymysql_suite.py" <<'EOF'
import unittest

import pymysql.tests


def test_suite():
    return unittest.defaultTestLoader.loadTestsFromModule(pymysql.tests)
EOF

# databases.json: the suite's connection settings (two connections, as its default has).
write_databases() {
    cat >"$SUITE_DIR/pymysql/tests/databases.json" <<EOF
[{"host": "127.0.0.1", "port": $1, "user": "root", "passwd": "root-secret",
  "db": "test1", "use_unicode": true, "local_infile": true},
 {"host": "127.0.0.1", "port": $1, "user": "root", "passwd": "root-secret", "db": "test2"}]
EOF
}

start_suture() {
    if [[ ! -x "$SUTURE_BIN" ]]; then
        log "building suture (cargo build)"
        (cd "$ROOT" && cargo build --quiet --bin suture) || return 1
    fi
    SUTURE_PORT="$(free_port)"
    # Session mode: one backend per open client connection, and the suite keeps many
    # open at once (connections of finished tests close only when collected).
    SUTURE_MAX_SIZE=100 suture_mysql_config "$WORK/suture.toml" "$SUTURE_PORT" "$MDB_PORT"
    cp "$WORK/suture.toml" "$RESULTS/suture.toml"
    start_suture_mysql "$WORK/suture.toml" "$WORK/suture.log" "$SUTURE_PORT" || return 1
    log "suture (pid $SUTURE_PID) listening on 127.0.0.1:$SUTURE_PORT"
}

# run_suite NAME PORT: outcomes go to $RESULTS/NAME.jsonl; resumes after a timeout or crash.
run_suite() {
    local name=$1 port=$2 out="$RESULTS/$1.jsonl"
    rm -f "$out" "$out.current"
    write_databases "$port"
    local deadline=$(( $(date +%s) + RUN_TIMEOUT )) rc=0 t0
    t0=$(date +%s)
    log "running the PyMySQL suite: $name (port $port)"
    while :; do
        local left=$(( deadline - $(date +%s) ))
        if (( left <= 0 )); then log "$name: run deadline (${RUN_TIMEOUT}s) reached"; break; fi
        rc=0
        (cd "$WORK" && PYTHONPATH="$SUITE_DIR" timeout -k 5 "$left" "$PYTHON" \
            "$HERE/unittest_outcomes.py" --suite-dir "$WORK/shim" --module pymysql_suite \
            --out "$out" --per-test-timeout "$PER_TEST_TIMEOUT") \
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
    run_suite direct "$MDB_PORT"
fi
if [[ "$ONLY" != "direct" ]]; then
    # The same starting point as the direct run had: empty test databases.
    mariadb_sql "$WORK" "DROP DATABASE test1; DROP DATABASE test2; CREATE DATABASE test1; CREATE DATABASE test2"
    if start_suture; then
        run_suite suture "$SUTURE_PORT"
        kill -0 "$SUTURE_PID" 2>/dev/null ||
            log "suture is no longer running after the suite (see $RESULTS/suture.log)"
    else
        log "suture could not be started: every test counts as failed through it"
        rm -f "$RESULTS/suture.jsonl"
    fi
fi

# --- 3. compare --------------------------------------------------------------------
log "both runs done in $(( $(date +%s) - START_TS ))s; outcomes and logs in $RESULTS"
rc=0
"$PYTHON" "$HERE/compare_outcomes.py" --direct "$RESULTS/direct.jsonl" \
    --proxied "$RESULTS/suture.jsonl" --expected "$HERE/pymysql_expected_differences.txt" \
    --label PyMySQL --proxy-name suture | tee "$RESULTS/comparison.txt" || rc=$?
exit $rc
