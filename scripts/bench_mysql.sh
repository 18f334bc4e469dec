#!/usr/bin/env bash
# Benchmarks the MySQL path: sysbench oltp_point_select, oltp_read_only and oltp_read_write
# (writes, in transactions), directly against
# a throwaway MariaDB and through Suture, interleaved (each round runs every workload against
# both targets, the order alternating from round to round), median over rounds. Reports tps
# and Suture's own CPU per transaction (utime + stime from /proc, in microseconds), and
# prints a table (DESIGN §10: the MySQL path no dearer per query than the PostgreSQL path).
# Point selects also run with 1 thread (added latency: time per transaction, threads / tps,
# through Suture minus direct) and over Unix-domain sockets (MariaDB's own socket, and a second
# Suture pool on unix:WORK/suture-mysql.sock that reaches MariaDB over TCP).
#
#   bash scripts/bench_mysql.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_SECS     seconds per sysbench measurement                  [10]
#   BENCH_ROUNDS   interleaved rounds; the median is reported        [3]
#   BENCH_THREADS  sysbench threads (= Suture max_size)              [8]
#   BENCH_SIZE     rows per table (1 table)                          [10000]
#   BENCH_CASES    workload:threads:transport list      [the eight-thread and one-thread cases above]
#   BENCH_OWN_SESSION  1: MariaDB and Suture each in a session (scheduler autogroup) of their
#                  own, as in scripts/lib.sh; 0: in this script's, beside sysbench  [1]
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
# MariaDB and Suture each in a session of their own (see the note at the top of scripts/lib.sh).
OWN_SESSION=
[[ ${BENCH_OWN_SESSION:-1} == 1 ]] && OWN_SESSION=setsid

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
# A second pool of the same Suture serves the same server on a Unix-domain socket.
SUTURE_SOCK="$WORK/suture-mysql.sock"
cat >>"$WORK/suture.toml" <<EOF

[pools.unix]
protocol = "mysql"
listen = "unix:$SUTURE_SOCK"
servers = ["127.0.0.1:$MDB_PORT"]
tls = "disable"
min_idle = $THREADS
max_size = $THREADS

[pools.unix.users.app]
password = "app-secret"
EOF
TARGETS="direct suture"
if ! start_suture_mysql "$WORK/suture.toml" "$WORK/suture.log" "$SUTURE_PORT"; then
    log "suture could not be started: measuring direct only"
    TARGETS="direct"
fi
wait_socket "$SUTURE_SOCK" || true

# sb TRANSPORT PORT-OR-SOCKET WORKLOAD ACTION [args]
sb() {
    local transport=$1 where=$2 workload=$3 action=$4
    shift 4
    local conn=(--mysql-host=127.0.0.1 --mysql-port="$where")
    [[ $transport == unix ]] && conn=(--mysql-socket="$where")
    sysbench "$workload" --db-driver=mysql "${conn[@]}" \
        --mysql-user=app --mysql-password=app-secret --mysql-db=app --tables=1 \
        --table-size="$SIZE" --db-ps-mode=auto "$@" "$action"
}
log "preparing sbtest1 ($SIZE rows)"
sb tcp "$MDB_PORT" oltp_read_only prepare >"$WORK/prepare.log"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# measure CASE TARGET: one sysbench run of CASE (workload:threads:transport); appends
# "case target tps errors cpu_us_per_tx latency_us".
measure() {
    local case=$1 target=$2 workload threads transport where cpu0=0 cpu1 out
    IFS=: read -r workload threads transport <<<"$case"
    if [[ $transport == unix ]]; then
        where=$([[ $target == direct ]] && echo "$WORK/mdb/mysqld.sock" || echo "$SUTURE_SOCK")
    else
        where=$([[ $target == direct ]] && echo "$MDB_PORT" || echo "$SUTURE_PORT")
    fi
    [[ $target == suture ]] && cpu0=$(cpu_ticks "$SUTURE_PID")
    out=$(sb "$transport" "$where" "$workload" run --threads="$threads" --time="$SECS" --report-interval=0)
    local tps txs errors lat cpu="-"
    tps=$(awk '/transactions:/ {gsub(/[(]/, "", $3); print $3}' <<<"$out")
    txs=$(awk '/transactions:/ {print $2}' <<<"$out")
    errors=$(awk '/ignored errors:/ {print $3}' <<<"$out")
    # Mean time per transaction per thread, in µs (sysbench's own average has 10 µs steps).
    lat=$(awk -v n="$threads" -v t="${tps:-0}" 'BEGIN {printf "%.1f", (t > 0 ? n * 1e6 / t : 0)}')
    if [[ $target == suture ]]; then
        cpu1=$(cpu_ticks "$SUTURE_PID")
        cpu=$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v n="$txs" \
            'BEGIN {printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0)}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$target" "${tps:-0}" "${errors:-?}" "$cpu" "${lat:-0}" >>"$RESULTS"
    log "$case $target: ${tps:-0} tps, ${lat:-?} us/tx per thread, ${errors:-?} errors, Suture CPU/tx ${cpu} us"
}

CASES="oltp_point_select:$THREADS:tcp oltp_point_select:1:tcp oltp_read_only:$THREADS:tcp"
CASES+=" oltp_read_write:$THREADS:tcp oltp_point_select:$THREADS:unix oltp_point_select:1:unix"
CASES=${BENCH_CASES:-$CASES}
for round in $(seq "$ROUNDS"); do
    for case in $CASES; do
        order=$TARGETS
        (( round % 2 )) || order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')
        for target in $order; do
            measure "$case" "$target"
        done
    done
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
# col CASE TARGET FIELD: the median of one column over the rounds.
col() { awk -F'\t' -v c="$1" -v t="$2" -v k="$3" '$1 == c && $2 == t {print $k}' "$RESULTS" | median; }
echo
echo "MySQL path: sysbench (server-side prepared statements), ${SECS}s x $ROUNDS rounds (median), $(nproc) cores"
printf '%-18s %-9s %7s %11s %11s %6s %14s %10s %10s %10s %6s\n' workload transport threads \
    "direct tps" "suture tps" ratio "suture CPU/tx" "direct lat" "suture lat" "added" errors
for case in $CASES; do
    IFS=: read -r workload threads transport <<<"$case"
    d=$(col "$case" direct 3)
    s=$(col "$case" suture 3)
    c=$(col "$case" suture 5)
    dl=$(col "$case" direct 6)
    sl=$(col "$case" suture 6)
    e=$(awk -F'\t' -v w="$case" '$1 == w && $2 == "suture" {n += $4} END {print n + 0}' "$RESULTS")
    r=$(awk -v d="$d" -v s="$s" 'BEGIN {printf "%.2f", (d > 0 ? s / d : 0)}')
    added=$(awk -v d="$dl" -v s="$sl" 'BEGIN {printf "%.1f", s - d}')
    printf '%-18s %-9s %7s %11s %11s %6s %11s us %7s us %7s us %7s us %6s\n' "$workload" "$transport" \
        "$threads" "$d" "${s:--}" "${r}x" "${c:--}" "$dl" "${sl:--}" "$added" "$e"
done
[[ $TARGETS == "direct suture" ]]
