#!/usr/bin/env bash
# Benchmarks the MySQL path: sysbench oltp_point_select, oltp_read_only and oltp_read_write
# (writes, in transactions), directly against
# a throwaway MariaDB and through Suture, interleaved (each round runs every workload against
# both targets, the order alternating from round to round), median over rounds. Reports tps
# and Suture's own CPU per transaction (utime + stime from /proc, in microseconds), and
# prints a table (DESIGN §10: the MySQL path no dearer per query than the PostgreSQL path).
#
#   bash scripts/bench_mysql.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_SECS     seconds per sysbench measurement                  [10]
#   BENCH_ROUNDS   interleaved rounds; the median is reported        [3]
#   BENCH_THREADS  sysbench threads (= Suture max_size)              [8]
#   BENCH_SIZE     rows per table (1 table)                          [10000]
#   SUTURE_BIN     suture binary [target/release/suture, built with cargo build --release]
# Needs sysbench (scripts/install-deps.sh installs it), mariadbd and mariadb-install-db.
# sysbench uses server-side prepared statements (--db-ps-mode=auto).
# The errors column is sysbench's "ignored errors": deadlocks and lock waits it retries
# (oltp_read_write has a few even directly); any other error stops sysbench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=tests/drivers/mariadb_lib.sh
source tests/drivers/mariadb_lib.sh

SECS="${BENCH_SECS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
THREADS="${BENCH_THREADS:-8}"
SIZE="${BENCH_SIZE:-10000}"
SUTURE_BIN="${SUTURE_BIN:-$ROOT/target/release/suture}"
log() { printf '[bench-mysql %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v sysbench >/dev/null || { log "sysbench is missing: run scripts/install-deps.sh"; exit 1; }
if [[ ! -x "$SUTURE_BIN" ]]; then
    log "building suture (cargo build --release)"
    cargo build --quiet --release --bin suture
fi

WORK="$(mktemp -d /tmp/suture-bench-mysql.XXXXXX)"
chmod 755 "$WORK"
SUTURE_PID=""
cleanup() {
    local rc=$?
    set +e
    stop_suture
    mariadb_kill
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MDB_PORT="$(free_port)"
mariadb_init "$WORK"
mariadb_start "$WORK" "$MDB_PORT"
SUTURE_PORT="$(free_port)"
SUTURE_MAX_SIZE=$THREADS SUTURE_MIN_IDLE=$THREADS \
    suture_mysql_config "$WORK/suture.toml" "$SUTURE_PORT" "$MDB_PORT"
TARGETS="direct suture"
if ! start_suture_mysql "$WORK/suture.toml" "$WORK/suture.log" "$SUTURE_PORT"; then
    log "suture could not be started: measuring direct only"
    TARGETS="direct"
fi

sb() { # sb PORT WORKLOAD ACTION [args]
    local port=$1 workload=$2 action=$3
    shift 3
    sysbench "$workload" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" \
        --mysql-user=app --mysql-password=app-secret --mysql-db=app --tables=1 \
        --table-size="$SIZE" --db-ps-mode=auto "$@" "$action"
}
log "preparing sbtest1 ($SIZE rows)"
sb "$MDB_PORT" oltp_read_only prepare >"$WORK/prepare.log"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# measure WORKLOAD TARGET: one sysbench run; appends "workload target tps errors cpu_us_per_tx".
measure() {
    local workload=$1 target=$2 port cpu0=0 cpu1 out
    port=$([[ $target == direct ]] && echo "$MDB_PORT" || echo "$SUTURE_PORT")
    [[ $target == suture ]] && cpu0=$(cpu_ticks "$SUTURE_PID")
    out=$(sb "$port" "$workload" run --threads="$THREADS" --time="$SECS" --report-interval=0)
    local tps txs errors cpu="-"
    tps=$(awk '/transactions:/ {gsub(/[(]/, "", $3); print $3}' <<<"$out")
    txs=$(awk '/transactions:/ {print $2}' <<<"$out")
    errors=$(awk '/ignored errors:/ {print $3}' <<<"$out")
    if [[ $target == suture ]]; then
        cpu1=$(cpu_ticks "$SUTURE_PID")
        cpu=$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v n="$txs" \
            'BEGIN {printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0)}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$workload" "$target" "${tps:-0}" "${errors:-?}" "$cpu" >>"$RESULTS"
    log "$workload $target: ${tps:-0} tps, ${errors:-?} errors, Suture CPU/tx ${cpu} us"
}

for round in $(seq "$ROUNDS"); do
    for workload in oltp_point_select oltp_read_only oltp_read_write; do
        order=$TARGETS
        (( round % 2 )) || order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')
        for target in $order; do
            measure "$workload" "$target"
        done
    done
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
echo
echo "MySQL path: sysbench, $THREADS threads, ${SECS}s x $ROUNDS rounds (median), $(nproc) cores"
printf '%-18s %12s %12s %8s %18s %10s\n' workload "direct tps" "suture tps" ratio "suture us CPU/tx" errors
for workload in oltp_point_select oltp_read_only oltp_read_write; do
    d=$(awk -F'\t' -v w="$workload" '$1 == w && $2 == "direct" {print $3}' "$RESULTS" | median)
    s=$(awk -F'\t' -v w="$workload" '$1 == w && $2 == "suture" {print $3}' "$RESULTS" | median)
    c=$(awk -F'\t' -v w="$workload" '$1 == w && $2 == "suture" {print $5}' "$RESULTS" | median)
    e=$(awk -F'\t' -v w="$workload" '$1 == w && $2 == "suture" {n += $4} END {print n + 0}' "$RESULTS")
    r=$(awk -v d="$d" -v s="$s" 'BEGIN {printf "%.2f", (d > 0 ? s / d : 0)}')
    printf '%-18s %12s %12s %8s %18s %10s\n' "$workload" "$d" "${s:--}" "${r}x" "${c:--}" "$e"
done
[[ $TARGETS == "direct suture" ]]
