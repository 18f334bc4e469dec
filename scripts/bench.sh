#!/usr/bin/env bash
# Benchmarks Suture against direct PostgreSQL and PgBouncer (session mode), on one machine.
#
# One command: installs what is missing (scripts/install-deps.sh, pgbouncer, psycopg2-binary),
# builds Suture (release) and copies the binary into a temporary work directory, starts a
# throwaway PostgreSQL there (free port, SCRAM auth, fsync=off: durability is not what is being
# measured), PgBouncer (session mode, SCRAM) and Suture, both with the same pool size, and
# measures, interleaved (each round runs every workload against all three targets, the target
# order rotating from round to round), median over rounds:
#
#   select   pgbench -S at 1, 8, 32 clients, -M simple and -M prepared        (tps)
#   tpcb     pgbench TPC-B-like default script, 8 clients                     (tps)
#   connect  pgbench -S -C -c 8: a new connection per transaction              (tps)
#   unix     pgbench -S at 1 and 8 clients, -M simple and -M prepared, over Unix-domain
#            sockets: PostgreSQL's own socket directory, PgBouncer's unix_socket_dir and a
#            second Suture pool listening on unix:DIR/.s.PGSQL.PORT       (tps, proxy CPU)
#   stream   COPY (...) TO STDOUT of BENCH_STREAM_MB MiB via psql, and a SELECT of half
#            that size via pgbench -t 1 (libpq keeps the result, no formatting) (MiB/s)
#   idle     RSS per idle, logged-in client: BENCH_IDLE_CLIENTS psycopg2 connections to a
#            dedicated PgBouncer and a dedicated Suture (session mode: one backend each)
#                                                                              (KiB/client)
#   soak     pgbench -S -c 8 (plus one -C client churning logins) against Suture for
#            BENCH_SOAK_SECS, Suture's RSS sampled every BENCH_SOAK_INTERVAL s (KiB, %)
#
# It prints the table and writes it, with a machine description, to BENCH_OUT (markdown) and
# every single measurement to the same name with .tsv. Everything it started is stopped and
# the work directory removed on exit, Ctrl-C included.
#
# Environment knobs (defaults in brackets):
#   BENCH_SECS           seconds per pgbench measurement                     [10]
#   BENCH_ROUNDS         interleaved rounds; the median is reported          [3]
#   BENCH_STREAM_MB      MiB of COPY payload; the SELECT streams half        [1024]
#   BENCH_IDLE_CLIENTS   idle client connections for the memory test         [1000]
#   BENCH_SOAK_SECS      length of the soak against Suture                   [600]
#   BENCH_SOAK_INTERVAL  seconds between RSS samples during the soak         [10]
#   BENCH_SOAK_WARMUP    seconds before the soak's start RSS is taken        [30, at most soak/3]
#   BENCH_POOL_SIZE      Suture max_size = PgBouncer default_pool_size       [40]
#   BENCH_MIN_IDLE       Suture min_idle = PgBouncer min_pool_size           [8]
#   BENCH_SCALE          pgbench -i scale factor                             [10]
#   BENCH_ONLY           comma list of groups to run: select,tpcb,connect,unix,stream,idle,soak
#                        [all]
#   BENCH_OUT            results file [docs/benchmarks/results-YYYY-MM-DD.md]; raw data in
#                        the same name with .tsv
#   BENCH_SUTURE_BIN     use this Suture binary instead of building the working tree [unset]
#   BENCH_KEEP           1: keep the work directory (logs, configs) instead of removing it [0]
#
# Quick trial:
#   BENCH_SECS=3 BENCH_ROUNDS=1 BENCH_SOAK_SECS=30 BENCH_STREAM_MB=200 BENCH_IDLE_CLIENTS=200 \
#       bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
# as_pg, free_port, wait_port, pg_scratch_start, pgbouncer_*.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
STREAM_MB=${BENCH_STREAM_MB:-1024}
IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-1000}
SOAK_SECS=${BENCH_SOAK_SECS:-600}
SOAK_INTERVAL=${BENCH_SOAK_INTERVAL:-10}
SOAK_WARMUP=${BENCH_SOAK_WARMUP:-30}
POOL_SIZE=${BENCH_POOL_SIZE:-40}
MIN_IDLE=${BENCH_MIN_IDLE:-8}
SCALE=${BENCH_SCALE:-10}
SUTURE_BIN=${BENCH_SUTURE_BIN:-}
ONLY=${BENCH_ONLY:-select,tpcb,connect,unix,stream,idle,soak}
OUT=${BENCH_OUT:-docs/benchmarks/results-$(date +%Y-%m-%d).md}
KEEP=${BENCH_KEEP:-0}
RAW=${OUT%.md}.tsv
TARGETS=(direct pgbouncer suture)
if [ "$SOAK_WARMUP" -gt $((SOAK_SECS / 3)) ]; then
    SOAK_WARMUP=$((SOAK_SECS / 3))
fi

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- setup helpers

install_deps() {
    bash scripts/install-deps.sh
    if ! command -v cargo >/dev/null 2>&1; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    pgbouncer_install || die "could not install pgbouncer"
    if ! python3 -c 'import psycopg2' 2>/dev/null; then
        log "installing psycopg2-binary (idle-connection test)"
        python3 -m pip install -q psycopg2-binary ||
            python3 -m pip install -q --break-system-packages psycopg2-binary
    fi
}


rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# User plus system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# The PID of the proxy behind a target (empty for direct).
proxy_pid() {
    case $1 in
        pgbouncer) cat "$work/pgbouncer.pid" 2>/dev/null || true ;;
        suture) echo "$suture_pid" ;;
    esac
}

# ---------------------------------------------------------------- processes

work=""
pg_bin=""
suture_pids=()     # every Suture we started
pgb_pidfiles=()    # every PgBouncer we started (daemonised, as postgres)
bg_pids=()         # helpers: idle-connection holders, soak load and sampler

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    log "cleaning up"
    local pid f
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${suture_pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for f in "${pgb_pidfiles[@]}"; do
        if [ -s "$f" ]; then
            kill "$(cat "$f")" 2>/dev/null
        fi
    done
    for pid in "${bg_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -n "$work" ]; then
        pg_scratch_stop "$pg_bin" "$work"
    fi
    if [ -n "$work" ]; then
        if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; then
            for f in "$work"/suture*.log "$work"/pgbouncer*.log; do
                [ -f "$f" ] || continue
                log "last lines of $(basename "$f"):"
                tail -n 20 "$f" >&2
            done
        fi
        if [ "$KEEP" = 1 ]; then
            log "work directory kept: $work"
        else
            rm -rf "$work"
        fi
    fi
    exit "$status"
}

start_postgres() {
    pg_bin=$(pg_bin_dir)
    pg_port=$(free_port)
    # PgBouncer's pool, Suture's TCP pool and its Unix-socket pool, the idle test, a margin.
    local max_conn=$(( IDLE_CLIENTS + 3 * POOL_SIZE + 100 ))
    [ "$max_conn" -lt 200 ] && max_conn=200
    log "initdb in $work/data (PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'), port $pg_port, max_connections $max_conn)"
    pg_scratch_start "$pg_bin" "$work" "$pg_port" "$max_conn" || die "PostgreSQL did not start"
    log "pgbench -i -s $SCALE"
    as_pg "$pg_bin/pgbench" -h "$work" -p "$pg_port" -U app -i -s "$SCALE" -q app \
        >"$work/pgbench-init.log" 2>&1
    # Read the tables once, so the first round does not pay for a cold cache.
    as_pg "$pg_bin/pgbench" -h "$work" -p "$pg_port" -U app -n -S -T 5 app \
        >"$work/pgbench-warm.log" 2>&1
}

# Before each round and after TPC-B: what was written is checkpointed and written out by
# the kernel now, not during the next measurement. (In a run on 2026-12-03 without this, the
# first round's measurements took 3-5x the CPU per transaction of the later rounds', a third
# of the machine's time in I/O wait: pgbench -i's writes being flushed.)
settle_writes() {
    as_pg "$pg_bin/psql" -X -q -h "$work" -p "$pg_port" -U postgres -d postgres -c CHECKPOINT \
        >/dev/null 2>&1 || log "CHECKPOINT failed (measuring anyway)"
    sync
}

# PgBouncer instances (scripts/lib.sh writes their configuration) in the work directory.
write_pgbouncer_conf() { # name port pool_size min_pool max_client [socket_dir]
    pgbouncer_conf "$work" "$1" "$pg_port" "$2" "$3" "$4" "$5" "${6:-}"
}

start_pgbouncer() { # name port
    pgb_pidfiles+=("$work/$1.pid")
    pgbouncer_start "$work" "$1" "$2" || die "pgbouncer $1 did not start"
}

stop_pgbouncer() { pgbouncer_stop "$work" "$1"; }

# With a sixth argument a second pool, `unix`, serves the same database on that socket path.
write_suture_conf() { # name port max_size min_idle max_clients [socket_path]
    local name=$1 port=$2 max=$3 min=$4 maxc=$5 sock=${6:-}
    cat >"$work/$name.toml" <<TOML
[admin]
listen = "127.0.0.1:$(free_port)"

[log]
level = "info"

[pools.app]
protocol = "postgres"
listen = "127.0.0.1:$port"
servers = ["127.0.0.1:$pg_port"]
tls = "disable"
min_idle = $min
max_size = $max
max_client_connections = $maxc
max_lifetime = "30m"
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"

[pools.app.users.app]
password = "app-secret"
TOML
    if [ -n "$sock" ]; then
        cat >>"$work/$name.toml" <<TOML

[pools.unix]
protocol = "postgres"
listen = "unix:$sock"
servers = ["127.0.0.1:$pg_port"]
tls = "disable"
min_idle = $min
max_size = $max
max_client_connections = $maxc
max_lifetime = "30m"
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"

[pools.unix.users.app]
password = "app-secret"
TOML
    fi
    "$work/suture" check-config -c "$work/$name.toml" >"$work/$name.check" 2>&1 ||
        { cat "$work/$name.check" >&2; die "suture config $name is invalid"; }
}

# Starts Suture with $work/$1.toml; sets last_suture_pid.
start_suture() { # name port
    local name=$1 port=$2
    # In a session of its own, as PgBouncer (-d) and each PostgreSQL backend are: see lib.sh.
    setsid "$work/suture" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    last_suture_pid=$!
    suture_pids+=("$last_suture_pid")
    wait_port "$port" || { cat "$work/$name.log" >&2; die "suture $name not listening"; }
}

stop_suture() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------- measurements

# tcp, or unix while the Unix-socket rows are measured.
TRANSPORT=tcp

# Where pgbench connects for a target: 127.0.0.1, or (TRANSPORT=unix) the directory of the
# target's socket, libpq's host=DIR (it opens DIR/.s.PGSQL.PORT).
host_of() {
    if [ "$TRANSPORT" = tcp ]; then
        echo 127.0.0.1
        return
    fi
    case $1 in
        direct) echo "$work" ;;
        pgbouncer) echo "$work/pgbouncer-sock" ;;
        suture) echo "$work/suture-sock" ;;
    esac
}

# The port, the same number for both transports (Suture's Unix pool is named after it).
port_of() {
    case $1 in
        direct) echo "$pg_port" ;;
        pgbouncer) echo "$pgb_port" ;;
        suture) echo "$suture_port" ;;
    esac
}

# Appends one measurement to the raw file: round group workload unit target value [note].
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}" >>"$RAW"
}

# Target order for round $1: rotated so no target always runs first.
round_targets() {
    local r=$1 i
    for i in 0 1 2; do
        echo "${TARGETS[$(( (i + r) % 3 ))]}"
    done
}

# One pgbench run; records its tps (and a note on errors or failed transactions).
run_pgbench() { # round group workload target pgbench-args...
    local rnd=$1 group=$2 workload=$3 target=$4
    shift 4
    local port logf tps note="" rc=0
    port=$(port_of "$target")
    logf="$work/pgbench-r$rnd-${workload// /_}-$target.log"
    local proxy cpu0=""
    proxy=$(proxy_pid "$target")
    [ -z "$proxy" ] || cpu0=$(cpu_ticks "$proxy")
    PGPASSWORD=app-secret timeout --foreground $(( SECS + 120 )) "$pg_bin/pgbench" -h "$(host_of "$target")" -p "$port" \
        -U app -n -T "$SECS" "$@" app >"$logf" 2>&1 || rc=$?
    tps=$(awk '/^tps = / {print $3; exit}' "$logf")
    if [ -n "$cpu0" ]; then
        # The proxy's own CPU time per transaction: what it costs, whatever else is running.
        local cpu1 txs
        cpu1=$(cpu_ticks "$proxy")
        txs=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' "$logf")
        if [ -n "$txs" ] && [ "$txs" -gt 0 ]; then
            record "$rnd" "$group" "$workload: proxy CPU" "us/tx" "$target" \
                "$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v n="$txs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')"
        fi
    fi
    local failed
    failed=$(awk -F'[: ]+' '/^number of failed transactions/ {print $5; exit}' "$logf")
    if [ "$rc" -ne 0 ]; then
        note="exit $rc: $(grep -m1 -iE 'error|fatal|abort' "$logf" | cut -c1-160)"
    elif [ -n "$failed" ] && [ "$failed" != 0 ]; then
        note="$failed failed transactions"
    fi
    [ -n "$tps" ] || tps=NA
    record "$rnd" "$group" "$workload" tps "$target" "$tps" "$note"
    # One client: the time per transaction, from which the report derives the added latency.
    if [[ " $* " == *" -c 1 "* ]] && [ "$tps" != NA ]; then
        record "$rnd" "$group" "$workload: time per tx" us "$target" \
            "$(awk -v t="$tps" 'BEGIN {printf "%.1f", 1e6 / t}')"
    fi
    log "round $rnd  $workload  $target: $tps tps${note:+ ($note)}"
}

bench_select_round() { # round
    local rnd=$1 c mode t j
    for c in 1 8 32; do
        j=$(( c < 2 ? c : 2 ))
        for mode in simple prepared; do
            while read -r t; do
                run_pgbench "$rnd" select "select -c $c -M $mode" "$t" -S -M "$mode" -c "$c" -j "$j"
            done < <(round_targets "$rnd")
        done
    done
}

bench_tpcb_round() {
    local t
    while read -r t; do
        run_pgbench "$1" tpcb "tpcb -c 8" "$t" -c 8 -j 2
    done < <(round_targets "$1")
}

bench_connect_round() {
    local t
    while read -r t; do
        run_pgbench "$1" connect "select -C -c 8" "$t" -S -C -c 8 -j 2
    done < <(round_targets "$1")
}

# pgbench -S over Unix sockets to all three; PostgreSQL's own socket uses its local (trust)
# rule, which only the login sees.
bench_unix_round() { # round
    local rnd=$1 c mode t j
    TRANSPORT=unix
    for c in 1 8; do
        j=$(( c < 2 ? c : 2 ))
        for mode in simple prepared; do
            while read -r t; do
                run_pgbench "$rnd" unix "unix select -c $c -M $mode" "$t" -S -M "$mode" -c "$c" -j "$j"
            done < <(round_targets "$rnd")
        done
    done
    TRANSPORT=tcp
}

now_ns() { date +%s%N; }

# Times one streaming command; records MiB/s of payload.
stream_one() { # round workload target bytes command...
    local rnd=$1 workload=$2 target=$3 bytes=$4
    shift 4
    local t0 t1 rc=0 mibs note="" logf="$work/stream-r$rnd-${workload%% *}-$target.log"
    t0=$(now_ns)
    PGPASSWORD=app-secret timeout --foreground 900 "$@" >/dev/null 2>"$logf" || rc=$?
    t1=$(now_ns)
    if [ "$rc" -ne 0 ]; then
        note="exit $rc: $(head -c 160 "$logf" | tr '\n' ' ')"
        mibs=NA
    else
        mibs=$(awk -v b="$bytes" -v ns=$(( t1 - t0 )) 'BEGIN {printf "%.1f", b / 1048576 / (ns / 1e9)}')
    fi
    record "$rnd" stream "$workload" MiB/s "$target" "$mibs" "$note"
    log "round $rnd  $workload  $target: $mibs MiB/s${note:+ ($note)}"
}

bench_stream_round() {
    local rnd=$1 t port
    # repeat('x',1000) rows: COPY sends 1001 bytes a row (with the newline).
    local copy_rows=$(( (STREAM_MB * 1048576 + 999) / 1000 ))
    local sel_rows=$(( copy_rows / 2 ))
    echo "SELECT repeat('x',1000) FROM generate_series(1,$sel_rows);" >"$work/select-big.sql"
    while read -r t; do
        port=$(port_of "$t")
        stream_one "$rnd" "copy out ${STREAM_MB} MiB" "$t" $(( copy_rows * 1001 )) \
            "$pg_bin/psql" -X -q -h 127.0.0.1 -p "$port" -U app -d app -v ON_ERROR_STOP=1 \
            -c "COPY (SELECT repeat('x',1000) FROM generate_series(1,$copy_rows)) TO STDOUT"
        stream_one "$rnd" "select $(( STREAM_MB / 2 )) MiB" "$t" $(( sel_rows * 1000 )) \
            "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U app -n -t 1 -c 1 -f "$work/select-big.sql" app
    done < <(round_targets "$rnd")
}

server_backends() {
    as_pg "$pg_bin/psql" -X -A -t -h "$work" -p "$pg_port" -U postgres -d postgres \
        -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
}

wait_file() { # file pid: waits for file while pid lives, at most 10 minutes
    local deadline=$(( $(date +%s) + 600 ))
    while [ ! -f "$1" ] && kill -0 "$2" 2>/dev/null; do
        if [ "$(date +%s)" -gt "$deadline" ]; then
            log "gave up waiting for $1"
            return
        fi
        sleep 0.2
    done
}

# Opens IDLE_CLIENTS idle connections to port $2 and records the RSS growth of pid $3:
# once when they have only logged in, once after each ran one SELECT 1 (PgBouncer links a
# server connection to a session client only at its first query; Suture at login).
idle_measure() { # target port pid
    local target=$1 port=$2 pid=$3 before base login queried rss_login rss_query
    local be_login be_query note=""
    local ready="$work/idle-$target.ready"
    sleep 2
    before=$(rss_kib "$pid")
    base=$(server_backends)
    python3 "$repo/scripts/bench_helpers.py" idle --ready-file "$ready" --n "$IDLE_CLIENTS" \
        --dsn "host=127.0.0.1 port=$port user=app password=app-secret dbname=app" \
        2>"$work/idle-$target.err" &
    local idle_pid=$!
    bg_pids+=("$idle_pid")
    wait_file "$ready" "$idle_pid"
    login=$(awk '{print $2}' "$ready" 2>/dev/null || echo 0)
    sleep 3
    rss_login=$(rss_kib "$pid")
    be_login=$(( $(server_backends) - base ))
    kill -USR1 "$idle_pid" 2>/dev/null || true
    wait_file "$ready.q" "$idle_pid"
    queried=$(awk '{print $2}' "$ready.q" 2>/dev/null || echo 0)
    sleep 3
    rss_query=$(rss_kib "$pid")
    be_query=$(( $(server_backends) - base ))
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    if [ "${login:-0}" != "$IDLE_CLIENTS" ] || [ "${queried:-0}" != "$IDLE_CLIENTS" ]; then
        note="$login of $IDLE_CLIENTS logged in, $queried queried: $(head -c 160 "$work/idle-$target.err" | tr '\n' ' ')"
    fi
    local per_login=NA per_query=NA
    if [ "${login:-0}" -gt 0 ]; then
        per_login=$(awk -v a="$rss_login" -v b="$before" -v n="$login" 'BEGIN {printf "%.1f", (a - b) / n}')
        per_query=$(awk -v a="$rss_query" -v b="$before" -v n="$login" 'BEGIN {printf "%.1f", (a - b) / n}')
    fi
    local w="(${IDLE_CLIENTS} clients)"
    record 1 idle "idle client RSS, logged in $w" KiB/client "$target" "$per_login" "$note"
    record 1 idle "idle client RSS, after one query $w" KiB/client "$target" "$per_query" "$note"
    record 1 idle "proxy RSS before idle clients" KiB "$target" "$before"
    record 1 idle "proxy RSS, idle clients logged in" KiB "$target" "$rss_login"
    record 1 idle "proxy RSS, idle clients after one query" KiB "$target" "$rss_query"
    record 1 idle "server backends, idle clients logged in" count "$target" "$be_login"
    record 1 idle "server backends, idle clients after one query" count "$target" "$be_query"
    log "idle  $target: RSS $before → $rss_login KiB logged in ($per_login KiB/client, $be_login backends)" \
        "→ $rss_query KiB after one query ($per_query KiB/client, $be_query backends)${note:+ ($note)}"
}

bench_idle() {
    local port
    # Session mode on both: every idle client holds one backend, so both pools must be as
    # large as the number of clients. Dedicated instances keep the main pools' state out.
    port=$(free_port)
    write_pgbouncer_conf pgbouncer-idle "$port" $(( IDLE_CLIENTS + 10 )) 0 $(( IDLE_CLIENTS + 100 ))
    start_pgbouncer pgbouncer-idle "$port"
    idle_measure pgbouncer "$port" "$(cat "$work/pgbouncer-idle.pid")"
    stop_pgbouncer pgbouncer-idle

    port=$(free_port)
    write_suture_conf suture-idle "$port" $(( IDLE_CLIENTS + 10 )) 0 $(( IDLE_CLIENTS + 100 ))
    start_suture suture-idle "$port"
    local pid=$last_suture_pid
    idle_measure suture "$port" "$pid"
    stop_suture "$pid"
}

bench_soak() {
    local pid=$suture_pid samples="$work/soak-samples.tsv"
    log "soak: ${SOAK_SECS}s of pgbench -S -c 8 (+1 client with -C) against Suture, RSS every ${SOAK_INTERVAL}s"
    PGPASSWORD=app-secret "$pg_bin/pgbench" -h 127.0.0.1 -p "$suture_port" -U app -n -S \
        -c 8 -j 2 -T "$SOAK_SECS" app >"$work/soak-load.log" 2>&1 &
    local load_pid=$!
    bg_pids+=("$load_pid")
    PGPASSWORD=app-secret "$pg_bin/pgbench" -h 127.0.0.1 -p "$suture_port" -U app -n -S -C \
        -c 1 -j 1 -T "$SOAK_SECS" app >"$work/soak-connect.log" 2>&1 &
    local churn_pid=$!
    bg_pids+=("$churn_pid")
    local t0 el
    t0=$(date +%s)
    printf 'seconds\trss_kib\n' >"$samples"
    while kill -0 "$load_pid" 2>/dev/null; do
        el=$(( $(date +%s) - t0 ))
        printf '%s\t%s\n' "$el" "$(rss_kib "$pid")" >>"$samples"
        sleep "$SOAK_INTERVAL"
    done
    wait "$load_pid" || log "soak: pgbench (-c 8) exited non-zero: $(grep -m1 -iE 'error|abort' "$work/soak-load.log")"
    wait "$churn_pid" || log "soak: pgbench (-C) exited non-zero: $(grep -m1 -iE 'error|abort' "$work/soak-connect.log")"
    printf '%s\t%s\n' "$(( $(date +%s) - t0 ))" "$(rss_kib "$pid")" >>"$samples"

    local start end max drift pct tps ctps
    start=$(awk -v w="$SOAK_WARMUP" 'NR > 1 && $1 >= w {print $2; exit}' "$samples")
    end=$(awk 'END {print $2}' "$samples")
    max=$(awk -v w="$SOAK_WARMUP" 'NR > 1 && $1 >= w && $2 > m {m = $2} END {print m}' "$samples")
    drift=$(( end - start ))
    pct=$(awk -v d="$drift" -v s="$start" 'BEGIN {printf "%.1f", 100 * d / s}')
    tps=$(awk '/^tps = / {print $3; exit}' "$work/soak-load.log")
    ctps=$(awk '/^tps = / {print $3; exit}' "$work/soak-connect.log")
    record 1 soak "soak RSS start (after ${SOAK_WARMUP}s)" KiB suture "$start"
    record 1 soak "soak RSS end (${SOAK_SECS}s)" KiB suture "$end"
    record 1 soak "soak RSS max" KiB suture "$max"
    record 1 soak "soak RSS drift" KiB suture "$drift"
    record 1 soak "soak RSS drift" % suture "$pct"
    record 1 soak "soak select -c 8" tps suture "${tps:-NA}"
    record 1 soak "soak select -C -c 1" tps suture "${ctps:-NA}"
    log "soak: RSS start $start KiB, end $end KiB, max $max KiB, drift $drift KiB ($pct %); $tps tps, -C $ctps tps"
    {
        echo "### Soak: Suture RSS samples (KiB)"
        echo
        echo "pgbench -S -c 8 -j 2 and pgbench -S -C -c 1 against Suture for ${SOAK_SECS}s; start RSS is the first sample at or after ${SOAK_WARMUP}s."
        echo
        echo '```'
        cat "$samples"
        echo '```'
        echo
    } >>"$work/extra.md"
}

# ---------------------------------------------------------------- report

describe_machine() {
    local commit dirty=""
    commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$repo" status --porcelain -- src protocol Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        dirty=" with uncommitted changes under src/, protocol/ or Cargo.*"
    fi
    local suture_desc="release build of commit $commit"
    if [ -n "$dirty" ]; then
        suture_desc="$suture_desc plus the working tree's uncommitted changes"
    fi
    if [ -n "$SUTURE_BIN" ]; then
        suture_desc="prebuilt binary $SUTURE_BIN ($("$work/suture" --version)); the repository is at $commit$dirty"
    fi
    cat <<MD
# Suture benchmark, $(date '+%Y-%m-%d %H:%M %Z')

## Machine

- CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), nproc $(nproc)
- RAM: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
- Kernel: $(uname -sr)
- Load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows up here)
- PostgreSQL: $("$pg_bin/postgres" --version | awk '{print $3}'); pgbench $("$pg_bin/pgbench" --version | awk '{print $3}')
- PgBouncer: $(pgbouncer --version | awk 'NR == 1 {print $2}')
- Suture: $suture_desc

## Setup

- Everything on 127.0.0.1 over TCP; clients log in with SCRAM-SHA-256 (PGPASSWORD) to all three targets. The "unix" rows connect over Unix-domain sockets instead: PostgreSQL's own socket directory (its local rule is trust, so only the login differs), PgBouncer's unix_socket_dir (same pool as its TCP listener), and a second Suture pool (\`listen = "unix:..."\`, same sizes) in the same process; Suture and PgBouncer still reach PostgreSQL over TCP.
- PostgreSQL: shared_buffers 128MB, max_connections $(( IDLE_CLIENTS + 3 * POOL_SIZE + 100 < 200 ? 200 : IDLE_CLIENTS + 3 * POOL_SIZE + 100 )), **fsync off** (not a durability test), pgbench scale $SCALE.
- PgBouncer: session mode, default_pool_size $POOL_SIZE, min_pool_size $MIN_IDLE, auth_type scram-sha-256 with the SCRAM verifier from pg_authid in auth_file (SCRAM pass-through to the server), server_reset_query DISCARD ALL.
- Suture: max_size $POOL_SIZE, min_idle $MIN_IDLE, tls disable, client_auth scram-sha-256.
- pgbench: -T $SECS per measurement, -j = min(clients, 2), -n. $ROUNDS interleaved round(s); within a round every workload runs against direct, pgbouncer and suture, the starting target rotating per round. Values are medians over rounds; n = rounds with a value.
- Stream: COPY of ${STREAM_MB} MiB payload via \`psql -X -c "COPY (...) TO STDOUT" >/dev/null\`; SELECT of $(( STREAM_MB / 2 )) MiB via \`pgbench -n -t 1 -f\` (libpq collects the rows, no formatting). Wall time including connect; MiB/s of payload.
- Idle: ${IDLE_CLIENTS} psycopg2 connections (autocommit) held open by one Python process against a dedicated PgBouncer / Suture (pool size ${IDLE_CLIENTS}+10, min idle 0: session mode needs one backend per client); (VmRSS − VmRSS before) / clients, measured once after login and once after every client ran one SELECT 1. Suture checks a backend out at login, PgBouncer only at a client's first query, so the "after one query" row is the like-for-like one; both include the proxy's server-side connection per client. "server backends" = app sessions in pg_stat_activity minus those before the test.
- Groups run: $ONLY. Raw measurements: $(basename "$RAW").
MD
}

# ---------------------------------------------------------------- main

main() {
    install_deps
    # 1000 idle clients need more than the usual 1024 descriptors (Suture, the Python holder).
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $(( 2 * IDLE_CLIENTS + 200 )) ]; then
        log "warning: open-file limit $(ulimit -n) is low for $IDLE_CLIENTS idle clients"
    fi
    local suture_src="$repo/target/release/suture"
    if [ -n "$SUTURE_BIN" ]; then
        suture_src=$SUTURE_BIN
        log "using the prebuilt Suture $suture_src"
    else
        log "building Suture (release)"
        cargo build --release -q
    fi

    work=$(mktemp -d /tmp/suture-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cp "$suture_src" "$work/suture"
    chmod 755 "$work"
    chown postgres:postgres "$work" 2>/dev/null || true
    : >"$work/extra.md"

    load_start=$(cut -d' ' -f1-3 /proc/loadavg)
    start_postgres

    pgbouncer_userlist "$pg_bin" "$work" "$pg_port" || die "could not read app's SCRAM verifier"

    pgb_port=$(free_port)
    mkdir -p "$work/pgbouncer-sock" "$work/suture-sock"
    chown postgres:postgres "$work/pgbouncer-sock" 2>/dev/null || true
    write_pgbouncer_conf pgbouncer "$pgb_port" "$POOL_SIZE" "$MIN_IDLE" $(( IDLE_CLIENTS + 100 )) \
        "$work/pgbouncer-sock"
    start_pgbouncer pgbouncer "$pgb_port"

    suture_port=$(free_port)
    local maxc=$(( IDLE_CLIENTS + 100 < 1100 ? 1100 : IDLE_CLIENTS + 100 ))
    write_suture_conf suture "$suture_port" "$POOL_SIZE" "$MIN_IDLE" "$maxc" \
        "$work/suture-sock/.s.PGSQL.$suture_port"
    start_suture suture "$suture_port"
    suture_pid=$last_suture_pid
    # The TCP pool answers first; the Unix one is bound right after it.
    wait_socket "$work/suture-sock/.s.PGSQL.$suture_port" || true
    log "direct :$pg_port  pgbouncer :$pgb_port  suture :$suture_port  (work dir $work)"

    # Each target must answer before anything is measured.
    local t
    for t in "${TARGETS[@]}"; do
        PGPASSWORD=app-secret "$pg_bin/psql" -X -q -A -t -h 127.0.0.1 -p "$(port_of "$t")" \
            -U app -d app -c "SELECT 1" >/dev/null || die "$t does not answer"
    done
    if wants unix; then
        TRANSPORT=unix
        for t in "${TARGETS[@]}"; do
            PGPASSWORD=app-secret "$pg_bin/psql" -X -q -A -t -h "$(host_of "$t")" -p "$(port_of "$t")" \
                -U app -d app -c "SELECT 1" >/dev/null || die "$t does not answer on its Unix socket"
        done
        TRANSPORT=tcp
    fi

    mkdir -p "$(dirname "$OUT")"
    printf 'round\tgroup\tworkload\tunit\ttarget\tvalue\tnote\n' >"$RAW"

    local rnd
    for rnd in $(seq 1 "$ROUNDS"); do
        log "round $rnd of $ROUNDS"
        settle_writes
        if wants select; then bench_select_round "$rnd"; fi
        if wants tpcb; then bench_tpcb_round "$rnd" && settle_writes; fi
        if wants connect; then bench_connect_round "$rnd"; fi
        if wants unix; then bench_unix_round "$rnd"; fi
        if wants stream; then bench_stream_round "$rnd"; fi
    done
    if wants idle; then bench_idle; fi
    if wants soak; then bench_soak; fi

    # What Suture logged at WARN or ERROR during the run, for the record.
    local f n
    for f in "$work"/suture.log "$work"/suture-idle.log; do
        [ -f "$f" ] || continue
        n=$(grep -cE ' (WARN|ERROR) ' "$f" || true)
        {
            echo "### $(basename "$f"): $n WARN/ERROR lines"
            echo
            if [ "$n" -gt 0 ]; then
                echo '```'
                grep -E ' (WARN|ERROR) ' "$f" | head -n 20
                echo '```'
                echo
            fi
        } >>"$work/extra.md"
    done

    describe_machine >"$work/machine.md"
    echo
    python3 "$repo/scripts/bench_helpers.py" report --raw "$RAW" --machine "$work/machine.md" \
        --out "$OUT" --extra "$work/extra.md"
    echo
    log "results: $OUT   raw: $RAW"
}

main "$@"
