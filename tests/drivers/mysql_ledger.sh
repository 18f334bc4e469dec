#!/usr/bin/env bash
# The MySQL ledger (issue 12): a throwaway MariaDB, Suture in front of it, and
# tests/drivers/mysql_ledger.py (PyMySQL clients inserting numbered rows with
# autocommit, every backend of `app` killed every 0.6 s) run first directly
# against MariaDB and then through Suture, with one server restart in each run.
# This file owns the setup, the restart and the exit status; the Python script
# owns the load, the kills and the verdict.
#
#   bash tests/drivers/mysql_ledger.sh
#
# Environment knobs:
#   MYSQL_LEDGER_SECS     seconds of load per target (default 15)
#   MYSQL_LEDGER_CLIENTS  clients (default 8)
#   SUTURE_MAX_SIZE       Suture's max_size for `app` (default: the number of
#                         clients, a pool sized like the application's, so every
#                         heal happens with the pool full)
#   SUTURE_MIN_IDLE       Suture's min_idle (default 0: no warm spare beyond it)
#   SUTURE_BIN            suture binary (default target/debug/suture, built if missing)
#   PYTHON                python 3 interpreter (default python3)
# Installs PyMySQL with pip when it is missing. Logs and JSON totals:
# target/drivers/mysql-ledger/. Exit status: non-zero when the Suture run breaks a
# rule (a lost or doubled row, an error that is not ERR 2013/2003) or setup fails;
# the direct run is the baseline and only reported.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=tests/drivers/mariadb_lib.sh
source "$HERE/mariadb_lib.sh"
SECS="${MYSQL_LEDGER_SECS:-15}"
CLIENTS="${MYSQL_LEDGER_CLIENTS:-8}"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
PYTHON="${PYTHON:-python3}"
OUT="$ROOT/target/drivers/mysql-ledger"
mkdir -p "$OUT"
log() { printf '[mysql-ledger %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! "$PYTHON" -c "import pymysql" 2>/dev/null; then
    log "installing PyMySQL"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore PyMySQL
fi
if [[ ! -x "$SUTURE_BIN" ]]; then
    log "building suture (cargo build)"
    (cd "$ROOT" && cargo build --quiet --bin suture)
fi

WORK="$(mktemp -d /tmp/suture-mysql-ledger.XXXXXX)"
chmod 755 "$WORK"
SUTURE_PID=""
cleanup() {
    local rc=$?
    set +e
    stop_suture
    mariadb_kill
    [[ -f "$WORK/suture.log" ]] && cp "$WORK/suture.log" "$OUT/suture.log"
    [[ -f "$WORK/mdb/mariadb.err" ]] && cp "$WORK/mdb/mariadb.err" "$OUT/mariadb.err"
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MDB_PORT="$(free_port)"
mariadb_init "$WORK"
mariadb_start "$WORK" "$MDB_PORT"
# run NAME PORT [--assert]: the load in the background, the restart in the middle of it.
run() {
    local name=$1 port=$2
    shift 2
    local rc=0
    "$PYTHON" "$HERE/mysql_ledger.py" --name "$name" --port "$port" --server-port "$MDB_PORT" \
        --clients "$CLIENTS" --secs "$SECS" --json "$OUT/$name.json" "$@" \
        >"$OUT/$name.log" 2>&1 &
    local pid=$!
    sleep "$(( SECS / 2 ))"
    log "$name: restarting MariaDB"
    mariadb_stop
    mariadb_start "$WORK" "$MDB_PORT"
    wait "$pid" || rc=$?
    cat "$OUT/$name.log"
    return $rc
}

run direct "$MDB_PORT" || log "direct run reported problems (baseline only)"
status=0
SUTURE_PORT="$(free_port)"
export SUTURE_MAX_SIZE="${SUTURE_MAX_SIZE:-$CLIENTS}" SUTURE_MIN_IDLE="${SUTURE_MIN_IDLE:-0}"
log "suture: max_size $SUTURE_MAX_SIZE for $CLIENTS clients, min_idle $SUTURE_MIN_IDLE"
suture_mysql_config "$WORK/suture.toml" "$SUTURE_PORT" "$MDB_PORT" "failover_hold = \"15s\""
if start_suture_mysql "$WORK/suture.toml" "$WORK/suture.log" "$SUTURE_PORT"; then
    run suture "$SUTURE_PORT" --assert || status=$?
else
    log "suture could not be started"
    echo '{"name": "suture", "attempts": 0, "acked": 0, "duplicates": 0, "lost": 0, "unacked_present": 0, "kills": 0, "bad_errors": 0, "errors": {"suture did not start": 1}}' >"$OUT/suture.json"
    status=1
fi
"$PYTHON" - "$OUT/direct.json" "$OUT/suture.json" <<'EOF'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
keys = ["attempts", "acked", "duplicates", "lost", "unacked_present", "kills", "bad_errors"]
print("\nMySQL ledger totals")
print(f"{'target':8} " + " ".join(f"{k:>15}" for k in keys) + "  errors")
for r in rows:
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items()))
    print(f"{r['name']:8} " + " ".join(f"{r[k]:>15}" for k in keys) + f"  {errs}")
EOF
if [[ $status -eq 0 ]]; then
    echo "mysql_ledger: 1 passed, 0 failed"
else
    echo "mysql_ledger: 0 passed, 1 failed"
fi
exit $status
