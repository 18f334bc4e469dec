#!/usr/bin/env bash
# User-space instructions per MySQL point select through Suture, counted by valgrind's
# callgrind (independent of what else the machine runs; the MySQL counterpart of
# `PROFILE_CALLGRIND` in scripts/profile.sh). Starts a throwaway MariaDB, Suture under
# callgrind with a MySQL pool in front of it, and runs sysbench oltp_point_select
# (server-side prepared statements, 8 threads) twice, N/5 and N events; the difference of the
# two counts over the difference of the events is the cost of one point select.
#
#   bash scripts/callgrind_mysql.sh
#
# Environment knobs (defaults in brackets):
#   CALLGRIND_EVENTS  sysbench events of the longer counted run          [16000]
#   CALLGRIND_KEEP    1: keep the work directory (the callgrind files)    [0]
#   SUTURE_BIN        Suture binary [target/release/suture, built with cargo build --release]
# Needs valgrind, sysbench, mariadbd (scripts/install-deps.sh installs the last two).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=tests/drivers/mariadb_lib.sh
source tests/drivers/mariadb_lib.sh

EVENTS=${CALLGRIND_EVENTS:-16000}
KEEP=${CALLGRIND_KEEP:-0}
SUTURE_BIN=${SUTURE_BIN:-$ROOT/target/release/suture}
log() { printf '%s callgrind-mysql: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v valgrind >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null
command -v sysbench >/dev/null || { log "sysbench is missing: run scripts/install-deps.sh"; exit 1; }
if [ ! -x "$SUTURE_BIN" ]; then
    log "building suture (cargo build --release)"
    cargo build --release --quiet --bin suture
fi

WORK=$(mktemp -d /tmp/suture-callgrind-mysql.XXXXXX)
chmod 755 "$WORK"
VG=""
cleanup() {
    local status=$?
    set +e
    [ -n "$VG" ] && kill "$VG" 2>/dev/null && wait "$VG" 2>/dev/null
    mariadb_kill
    if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MDB_PORT=$(free_port)
mariadb_init "$WORK"
mariadb_start "$WORK" "$MDB_PORT"
PORT=$(free_port)
# min_idle 0: the warm-up run's backends are reused, so no backend login is counted.
SUTURE_MAX_SIZE=8 SUTURE_MIN_IDLE=0 suture_mysql_config "$WORK/suture.toml" "$PORT" "$MDB_PORT"
sb() { # PORT ARGS...
    sysbench oltp_point_select --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$1" \
        --mysql-user=app --mysql-password=app-secret --mysql-db=app --tables=1 \
        --table-size=10000 --db-ps-mode=auto "${@:2}"
}
sb "$MDB_PORT" prepare >"$WORK/prepare.log"
cp "$SUTURE_BIN" "$WORK/suture"
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg" \
    "$WORK/suture" --config "$WORK/suture.toml" >"$WORK/cg.log" 2>&1 &
VG=$!
wait_port "$PORT" 300 || { cat "$WORK/cg.log" >&2; exit 1; }
sb "$PORT" run --threads=8 --events=400 --time=0 >/dev/null
short=$(( EVENTS / 5 ))
counted_run() { sb "$PORT" run --threads=8 --events="$1" --time=0 >"$WORK/run-$1.log"; }
for n in "$short" "$EVENTS"; do
    callgrind_window "$VG" counted_run "$n"
done
first=$(callgrind_total "$WORK/cg.1")
second=$(callgrind_total "$WORK/cg.2")
echo "-- suture, MySQL: user-space instructions per oltp_point_select (callgrind, $short and" \
    "$EVENTS events, difference over $(( EVENTS - short )))"
awk -v a="$first" -v b="$second" -v n=$(( EVENTS - short )) \
    'BEGIN {printf "   %.0f instructions per point select\n", (b - a) / n}'
