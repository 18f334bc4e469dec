#!/usr/bin/env bash
# Real MySQL clients through Suture (issue 12): mysql-connector-python with server-side
# prepared statements, the mariadb command-line client (queries, LOAD DATA LOCAL INFILE, an
# interactive session across a KILL of its backend) and sysbench oltp_read_write with zero
# errors, against a throwaway MariaDB.
#
#   bash tests/drivers/mysql_clients.sh
#
# SUTURE_BIN picks the binary (default target/debug/suture, built if missing). Installs
# mysql-connector-python and PyMySQL with pip when missing. Exit status non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=tests/drivers/mariadb_lib.sh
source "$HERE/mariadb_lib.sh"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/debug/suture}"
PYTHON="${PYTHON:-python3}"
log() { printf '[mysql-clients %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for module in mysql.connector:mysql-connector-python pymysql:PyMySQL; do
    if ! "$PYTHON" -c "import ${module%%:*}" 2>/dev/null; then
        log "installing ${module#*:}"
        "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${module#*:}"
    fi
done
if [[ ! -x "$SUTURE_BIN" ]]; then
    (cd "$ROOT" && cargo build --quiet --bin suture)
fi

WORK="$(mktemp -d /tmp/suture-mysql-clients.XXXXXX)"
chmod 755 "$WORK"
SUTURE_PID=""
cleanup() {
    local rc=$?
    set +e
    stop_suture
    mariadb_kill
    [[ $rc -ne 0 && -f "$WORK/suture.log" ]] && tail -30 "$WORK/suture.log" >&2
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MDB_PORT="$(free_port)"
mariadb_init "$WORK"
mariadb_start "$WORK" "$MDB_PORT"
mariadb_sql "$WORK" "SET GLOBAL local_infile = 1"
SUTURE_PORT="$(free_port)"
suture_mysql_config "$WORK/suture.toml" "$SUTURE_PORT" "$MDB_PORT"
start_suture_mysql "$WORK/suture.toml" "$WORK/suture.log" "$SUTURE_PORT"
"$PYTHON" "$HERE/mysql_clients.py" --port "$SUTURE_PORT" --server-port "$MDB_PORT" --work "$WORK"
