#!/usr/bin/env bash
# Profiles one proxy under `pgbench -S` (DESIGN §10, issue 13: "profile first"): starts a
# throwaway PostgreSQL (free port, SCRAM over TCP), Suture (release build) and PgBouncer
# (session mode, SCRAM pass-through) as scripts/bench.sh does, then for each proxy runs pgbench
# three times: plain (tps, the proxy's CPU per transaction from /proc and its context switches
# per transaction from `perf stat`), under `strace -c -f`
# (system calls per transaction), and under `perf record -g` (where the proxy's CPU goes; the
# report's top entries are printed, the full data stays in the work directory with
# PROFILE_KEEP=1).
#
#   bash scripts/profile.sh
#
# Environment knobs (defaults in brackets):
#   PROFILE_SECS     seconds per pgbench run                           [10]
#   PROFILE_CLIENTS  pgbench clients                                   [8]
#   PROFILE_MODE     pgbench -M: simple, extended or prepared          [simple]
#   PROFILE_TARGETS  proxies to profile: suture, pgbouncer             [suture pgbouncer]
#   PROFILE_TRANSPORT  how pgbench reaches the proxy: tcp, or unix (Suture's pool listens on
#                    unix:WORK/suture-sock/.s.PGSQL.PORT, PgBouncer on its unix_socket_dir;
#                    both still reach PostgreSQL over TCP)                [tcp]
#   PROFILE_TOP      lines of `perf report` printed per proxy          [40]
#   PROFILE_KEEP     1: keep the work directory (perf.data, logs)      [0]
#   PROFILE_CALLGRIND  transactions per client for a run of Suture under valgrind's callgrind
#                    (user-space instructions per transaction, independent of what else the
#                    machine runs; 0: no such run)                      [0]
#   PROFILE_SCHED    1: one more pgbench run under `perf sched record -a`, printing how the
#                    proxy's threads left the CPU per transaction: blocked (S) or preempted
#                    (R), and which task ran next                        [0]
#   SUTURE_BIN       Suture binary [target/release/suture, built with cargo build --release]
# Needs pgbench, pgbouncer, perf and strace (apt-get installs strace and linux-perf when
# missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
# as_pg, free_port, wait_port.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SECS=${PROFILE_SECS:-10}
CLIENTS=${PROFILE_CLIENTS:-8}
MODE=${PROFILE_MODE:-simple}
TARGETS=${PROFILE_TARGETS:-suture pgbouncer}
TRANSPORT=${PROFILE_TRANSPORT:-tcp}
case $TRANSPORT in tcp | unix) ;; *) echo "PROFILE_TRANSPORT: tcp or unix" >&2; exit 2 ;; esac
if [ "$TRANSPORT" = unix ] && [ "${PROFILE_CALLGRIND:-0}" -gt 0 ]; then
    echo "PROFILE_CALLGRIND runs over TCP only; leave PROFILE_TRANSPORT at tcp" >&2
    exit 2
fi
TOP=${PROFILE_TOP:-40}
KEEP=${PROFILE_KEEP:-0}
CALLGRIND=${PROFILE_CALLGRIND:-0}
SCHED=${PROFILE_SCHED:-0}
SUTURE_BIN=${SUTURE_BIN:-$ROOT/target/release/suture}
log() { printf '%s profile: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need=()
command -v strace >/dev/null || need+=(strace)
command -v perf >/dev/null || need+=(linux-perf)
[ "$CALLGRIND" -gt 0 ] && ! command -v valgrind >/dev/null && need+=(valgrind)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
pgbouncer_install
if [ ! -x "$SUTURE_BIN" ]; then
    log "building suture (cargo build --release)"
    cargo build --release --quiet --bin suture
fi

work=$(mktemp -d /tmp/suture-profile.XXXXXX)
chmod 755 "$work"
chown postgres:postgres "$work"
pids=()
cleanup() {
    local status=$?
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    [ -s "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null
    pg_scratch_stop "$pg_bin" "$work"
    if [ "$KEEP" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


pg_bin=$(pg_bin_dir)
pg_port=$(free_port)
pg_scratch_start "$pg_bin" "$work" "$pg_port" 100
as_pg "$pg_bin/pgbench" -h "$work" -p "$pg_port" -U app -i -s 10 -q app >"$work/init.log" 2>&1

suture_port=$(free_port)
suture_listen=127.0.0.1:$suture_port
if [ "$TRANSPORT" = unix ]; then
    mkdir -p "$work/suture-sock" "$work/pgbouncer-sock"
    chown postgres:postgres "$work/pgbouncer-sock"
    suture_listen=unix:$work/suture-sock/.s.PGSQL.$suture_port
fi
cat >"$work/suture.toml" <<TOML
[admin]
listen = "127.0.0.1:$(free_port)"

[pools.app]
protocol = "postgres"
listen = "$suture_listen"
servers = ["127.0.0.1:$pg_port"]
tls = "disable"
min_idle = $CLIENTS
max_size = $(( CLIENTS * 2 ))

[pools.app.users.app]
password = "app-secret"
TOML
cp "$SUTURE_BIN" "$work/suture"
# In a session of its own, as PgBouncer (-d) is: see lib.sh.
setsid "$work/suture" --config "$work/suture.toml" >"$work/suture.log" 2>&1 &
suture_pid=$!
pids+=("$suture_pid")
if [ "$TRANSPORT" = unix ]; then
    wait_socket "$work/suture-sock/.s.PGSQL.$suture_port" || { cat "$work/suture.log" >&2; exit 1; }
else
    wait_port "$suture_port" || { cat "$work/suture.log" >&2; exit 1; }
fi

pgb_port=$(free_port)
pgbouncer_userlist "$pg_bin" "$work" "$pg_port"
pgb_sock=
[ "$TRANSPORT" = unix ] && pgb_sock=$work/pgbouncer-sock
pgbouncer_conf "$work" pgbouncer "$pg_port" "$pgb_port" $(( CLIENTS * 2 )) "$CLIENTS" 100 "$pgb_sock"
pgbouncer_start "$work" pgbouncer "$pgb_port"
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# "thread-name voluntary nonvoluntary" per thread of process $1.
thread_switches() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" \
            "$(awk '/^(non)?voluntary_ctxt_switches/ {printf "%s ", $2}' "$t/status")"
    done
}
CLK_TCK=$(getconf CLK_TCK)
host_of() { # target
    if [ "$TRANSPORT" = tcp ]; then echo 127.0.0.1; else echo "$work/$1-sock"; fi
}
pgbench_run() { # port -> prints "tps transactions" (the host is $host)
    PGPASSWORD=app-secret "$pg_bin/pgbench" -h "$host" -p "$1" -U app -n -S -M "$MODE" \
        -c "$CLIENTS" -j "$(( CLIENTS < 2 ? CLIENTS : 2 ))" -T "$SECS" app 2>&1 |
        awk '/number of transactions actually processed/ {split($NF, a, "/"); n = a[1]}
             /^tps/ {t = $3} END {print t, n}'
}

for target in $TARGETS; do
    case $target in
        suture) port=$suture_port pid=$suture_pid ;;
        pgbouncer) port=$pgb_port pid=$(cat "$work/pgbouncer.pid") ;;
        *) log "unknown target $target"; exit 1 ;;
    esac
    host=$(host_of "$target")
    perf stat -x, -e context-switches -p "$pid" -o "$work/$target.stat" &
    statpid=$!
    thread_switches "$pid" >"$work/$target.switches0"
    c0=$(cpu_ticks "$pid")
    read -r tps txs < <(pgbench_run "$port")
    c1=$(cpu_ticks "$pid")
    thread_switches "$pid" >"$work/$target.switches1"
    kill -INT "$statpid"; wait "$statpid" 2>/dev/null || true
    cpu=$(awk -v t=$(( c1 - c0 )) -v hz="$CLK_TCK" -v n="$txs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    switches=$(awk -F, -v n="$txs" '/context-switches/ {printf "%.2f", $1 / n}' "$work/$target.stat")
    echo "== $target: pgbench -S -M $MODE -c $CLIENTS: $tps tps, $cpu us CPU and" \
        "$switches context switches per transaction"
    echo "-- $target: context switches per transaction by thread (voluntary, involuntary)"
    paste -d' ' "$work/$target.switches0" "$work/$target.switches1" |
        awk -v n="$txs" '{v = $5 - $2; i = $6 - $3; if (v + i > 0)
            printf "   %-20s %6.3f %6.3f\n", $1, v / n, i / n}'

    strace -c -f -p "$pid" -o "$work/$target.strace" &
    tracer=$!
    sleep 0.5
    read -r _ txs < <(pgbench_run "$port")
    kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
    echo "-- $target: system calls per transaction (strace -c, $txs transactions)"
    awk -v n="$txs" '$1 ~ /^[0-9.]+$/ && NF >= 5 {
            calls = $4; name = $NF; if (name ~ /^[0-9]+$/ || name == "total") next
            printf "   %-16s %8.2f\n", name, calls / n; total += calls }
        END {printf "   %-16s %8.2f\n", "total", total / n}' "$work/$target.strace" |
        sort -k2 -n -r | head -12 || true

    perf record -q -g -p "$pid" -o "$work/$target.perf" -- sleep "$SECS" >/dev/null 2>&1 &
    perfpid=$!
    pgbench_run "$port" >/dev/null
    wait "$perfpid" 2>/dev/null || true
    echo "-- $target: perf report (self, top $TOP)"
    perf report -i "$work/$target.perf" --no-children --sort symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | cut -c1-120 | head -n "$TOP" || true

    if [ "$SCHED" = 1 ]; then
        perf sched record -a -q -o "$work/$target.sched" -- sleep "$SECS" >/dev/null 2>&1 &
        schedpid=$!
        read -r _ txs < <(pgbench_run "$port")
        wait "$schedpid" 2>/dev/null || true
        tids=$(ls "/proc/$pid/task" | tr '\n' ' ')
        echo "-- $target: switches off the CPU per transaction (perf sched, $txs transactions):" \
            "state (S blocked, R preempted) and the task that ran next"
        perf script -i "$work/$target.sched" -F trace 2>/dev/null |
            awk -v n="$txs" -v tids="$tids" '
                BEGIN {split(tids, t, " "); for (i in t) mine["prev_pid=" t[i]] = 1}
                /prev_pid=/ {
                    pid = ""; state = ""; next_comm = ""
                    for (i = 1; i <= NF; i++) {
                        if ($i ~ /^prev_pid=/) pid = $i
                        if ($i ~ /^prev_state=/) state = substr($i, 12, 1)
                        if ($i ~ /^next_comm=/) next_comm = substr($i, 11)
                    }
                    if (pid in mine) count[state " " next_comm]++
                }
                END {for (k in count) printf "   %-30s %6.3f\n", k, count[k] / n}' |
            sort -k3 -n -r | head -8 || true
    fi
done

# callgrind_of suture: Suture again, on a port of its own, under callgrind, with min_idle 0 so
# the backends of the warm-up run are reused and no backend login (a SCRAM key derivation
# costs as much as thousands of round trips) falls into the counted runs.
# (PgBouncer drops its privileges to the postgres user, after which callgrind_control cannot
# reach it; only Suture is measured this way.)
callgrind_of() {
    local target=$1 port pid
    port=$(free_port)
    sed -e "s/127.0.0.1:$suture_port/127.0.0.1:$port/" \
        -e "/^\[admin\]/,/^$/ s/127.0.0.1:[0-9]*/127.0.0.1:$(free_port)/" \
        -e "s/^min_idle = .*/min_idle = 0/" "$work/suture.toml" >"$work/cg.toml"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.$target" \
        "$work/suture" --config "$work/cg.toml" >"$work/cg.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port" 300 || { cat "$work/cg.log" >&2; return 1; }
    # Two counted runs, of N/5 and N transactions per client, each with its own logins (the
    # SCRAM key derivations of new clients and backends would swamp a round trip): the
    # difference is what N - N/5 round trips cost.
    PGPASSWORD=app-secret "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U app -n -S -M "$MODE" \
        -c "$CLIENTS" -j 2 -t 50 app >/dev/null 2>&1
    local short=$(( CALLGRIND / 5 )) n
    counted_run() { # transactions per client
        PGPASSWORD=app-secret "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U app -n -S \
            -M "$MODE" -c "$CLIENTS" -j 2 -t "$1" app >/dev/null 2>&1
    }
    for n in "$short" "$CALLGRIND"; do
        callgrind_window "$pid" counted_run "$n"
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    local first second
    first=$(callgrind_total "$work/cg.$target.1")
    second=$(callgrind_total "$work/cg.$target.2")
    echo "-- $target: user-space instructions per transaction (callgrind, -t $short and -t" \
        "$CALLGRIND per client, difference over $(( (CALLGRIND - short) * CLIENTS )) transactions)"
    awk -v a="$first" -v b="$second" -v n=$(( (CALLGRIND - short) * CLIENTS )) \
        'BEGIN {printf "   %.0f instructions per transaction\n", (b - a) / n}'
    echo "   (per function: callgrind_annotate $work/cg.$target.2, with PROFILE_KEEP=1)"
}

if [ "$CALLGRIND" -gt 0 ]; then
    callgrind_of suture
fi
