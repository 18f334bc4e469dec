#!/usr/bin/env bash
# Scale benchmark of Suture (DESIGN §10, issue 13 item 4): thousands of clients, a burst of
# connection attempts beyond the pool, 100 pools in one process, memory over a soak.
#
# One command: installs what is missing (asyncpg and aiomysql from PyPI), builds Suture
# (release) unless SUTURE_BIN is given, starts its own PostgreSQL and MariaDB in a temporary
# directory on free ports (never the system services), and for each protocol runs, each
# against a fresh Suture with a generated config:
#
#   open   SCALE_CLIENTS sessions opened at once (pool max_size above that, min_idle 0, so
#          each gets its own backend); each logs in, runs SELECT 1 and stays open. All must
#          succeed; reports the time to open them and Suture's CPU per session.
#   idle   memory per idle client: Suture's VmRSS and Pss at no clients, then with each of
#          SCALE_IDLE_STEPS idle clients (each ran one query, so its backend exists);
#          (mem_n - mem_0) / n in KiB, target at most 16. They log in SCALE_IDLE_CONCURRENCY
#          at a time, so what is measured is what an idle session keeps, not what thousands
#          of logins in flight at once leave behind in the allocator (`open` shows that).
#   burst  SCALE_BURST_POOL backends all held (one of them by a client running SELECT 1
#          every 10 ms in its own process), then SCALE_BURST attempts at once: each must get
#          53300 (PostgreSQL) or ERR 1040 (MySQL) within the checkout timeout; reports the
#          time to the error (p99, max), the running client's latency before vs during, and
#          Suture's RSS before, at its peak and SCALE_BURST_AFTER s after. The PostgreSQL
#          burst then runs once more against PgBouncer (same pool size, client limit and
#          listen backlog), to show what the same burst does to a connected client there.
#   pools  SCALE_POOLS pools (both protocols, alternating) on distinct ports: time from
#          process start to every listener accepting, and to /startup answering 200.
#   soak   SCALE_SOAK_CLIENTS clients per protocol against one Suture for SCALE_SOAK_SECS,
#          each running a query every ~SCALE_SOAK_QUERY_EVERY s and logging in again after
#          a query with probability SCALE_SOAK_RECONNECT; RSS every SCALE_SOAK_INTERVAL s;
#          reports first (after the warm-up), last, max and the least-squares slope.
#
# It prints a table and writes every raw number (one JSON document per phase, merged) to
# SCALE_OUT. The load driver is scripts/bench_scale.py (asyncio; one process for the clients,
# a separate one for the client whose latency is watched during the burst).
#
# Environment knobs (defaults in brackets):
#   SCALE_PROTOCOLS        protocols to measure                               [postgres mysql]
#   SCALE_ONLY             comma list of phases: open,idle,burst,pools,soak   [all]
#   SCALE_CLIENTS          sessions opened at once in `open`                  [2000]
#   SCALE_IDLE_STEPS       idle client counts memory is read at               [1000,2000]
#   SCALE_IDLE_CONCURRENCY logins in flight at once while opening the idle clients [50]
#   SCALE_SETTLE           seconds to wait before each memory reading         [3]
#   SCALE_BURST            connection attempts in the burst                   [5000]
#   SCALE_BURST_POOL       pool max_size in the burst (all held)              [20]
#   SCALE_BURST_MAX_CLIENTS  max_client_connections in the burst              [1000]
#   SCALE_BURST_MAX_WAITERS  max_waiters in the burst (empty: Suture default) []
#   SCALE_CHECKOUT_TIMEOUT checkout_timeout in the burst                      [2s]
#   SCALE_BURST_AFTER      seconds after the burst before the "after" RSS     [5]
#   SCALE_POOLS            pools in one process                               [100]
#   SCALE_SOAK_SECS        soak length                                        [600]
#   SCALE_SOAK_CLIENTS     soak clients per protocol                          [1000]
#   SCALE_SOAK_INTERVAL    seconds between RSS samples                        [10]
#   SCALE_SOAK_WARMUP      seconds before the soak's first counted sample     [30]
#   SCALE_SOAK_QUERY_EVERY mean seconds between one client's queries          [10]
#   SCALE_SOAK_RECONNECT   probability that a client logs in again after a query [0.02]
#   SCALE_OUT              merged JSON                                       [target/bench/scale.json]
#   SUTURE_BIN             use this Suture binary instead of building         [unset]
#   SCALE_BURST_PGBOUNCER  1: run the PostgreSQL burst against PgBouncer too (same pool,
#                          client limit and backlog), for comparison  [1]
#   SCALE_PRELOAD          a library to LD_PRELOAD into Suture, e.g. the system's libjemalloc,
#                          to see how much of what a burst leaves behind is the allocator's [unset]
#   SCALE_KEEP             1: keep the work directory (logs, configs, per-phase JSON) [0]
#
# Quick trial:
#   SCALE_CLIENTS=200 SCALE_IDLE_STEPS=100,200 SCALE_BURST=500 SCALE_SOAK_SECS=30 \
#       SCALE_SOAK_CLIENTS=100 bash scripts/bench_scale.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
# as_pg, free_port, pg_scratch_start, pgbouncer_*.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# mariadb_init, mariadb_start, mariadb_kill.
# shellcheck source=tests/drivers/mariadb_lib.sh
source tests/drivers/mariadb_lib.sh

PROTOCOLS=${SCALE_PROTOCOLS:-postgres mysql}
ONLY=${SCALE_ONLY:-open,idle,burst,pools,soak}
CLIENTS=${SCALE_CLIENTS:-2000}
IDLE_STEPS=${SCALE_IDLE_STEPS:-1000,2000}
IDLE_CONCURRENCY=${SCALE_IDLE_CONCURRENCY:-50}
SETTLE=${SCALE_SETTLE:-3}
BURST=${SCALE_BURST:-5000}
BURST_POOL=${SCALE_BURST_POOL:-20}
BURST_MAX_CLIENTS=${SCALE_BURST_MAX_CLIENTS:-1000}
BURST_MAX_WAITERS=${SCALE_BURST_MAX_WAITERS:-}
CHECKOUT_TIMEOUT=${SCALE_CHECKOUT_TIMEOUT:-2s}
BURST_AFTER=${SCALE_BURST_AFTER:-5}
POOLS=${SCALE_POOLS:-100}
SOAK_SECS=${SCALE_SOAK_SECS:-600}
SOAK_CLIENTS=${SCALE_SOAK_CLIENTS:-1000}
SOAK_INTERVAL=${SCALE_SOAK_INTERVAL:-10}
SOAK_WARMUP=${SCALE_SOAK_WARMUP:-30}
SOAK_QUERY_EVERY=${SCALE_SOAK_QUERY_EVERY:-10}
SOAK_RECONNECT=${SCALE_SOAK_RECONNECT:-0.02}
OUT=${SCALE_OUT:-target/bench/scale.json}
SUTURE_BIN=${SUTURE_BIN:-}
KEEP=${SCALE_KEEP:-0}
PRELOAD=${SCALE_PRELOAD:-}
BURST_PGBOUNCER=${SCALE_BURST_PGBOUNCER:-1}
DRIVER="$ROOT/scripts/bench_scale.py"

log() { printf '%s bench-scale: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
has_proto() { [[ " $PROTOCOLS " == *" $1 "* ]]; }

# The most clients any phase has at once, per server (plus room for Suture's own logins).
max_backends=$(( CLIENTS > SOAK_CLIENTS ? CLIENTS : SOAK_CLIENTS ))
IFS=, read -r -a idle_steps <<<"$IDLE_STEPS"
for s in "${idle_steps[@]}"; do
    [ "$s" -gt "$max_backends" ] && max_backends=$s
done
max_backends=$(( max_backends + BURST_POOL + 100 ))

# ---------------------------------------------------------------- setup

install_deps() {
    if ! python3 -c 'import asyncpg, aiomysql' 2>/dev/null; then
        log "installing asyncpg and aiomysql (load driver)"
        python3 -m pip install -q asyncpg aiomysql ||
            python3 -m pip install -q --break-system-packages asyncpg aiomysql
    fi
    # Optional: a faster event loop for the burst's attempt processes.
    python3 -c 'import uvloop' 2>/dev/null || python3 -m pip install -q uvloop 2>/dev/null || true
    if [ "$BURST_PGBOUNCER" = 1 ] && has_proto postgres && wants burst; then
        pgbouncer_install || die "could not install pgbouncer"
    fi
    if [ -z "$SUTURE_BIN" ]; then
        log "building Suture (release)"
        cargo build --release -q --bin suture
        SUTURE_BIN="$ROOT/target/release/suture"
    fi
    [ -x "$SUTURE_BIN" ] || die "no Suture binary at $SUTURE_BIN"
}

WORK=""
pg_bin=""
pg_port=""
MDB_PORT=""
suture_pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local pid
    for pid in "${suture_pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    mariadb_kill
    if [ -n "$WORK" ]; then
        pgbouncer_stop "$WORK" pgbouncer-burst
        pg_scratch_stop "$pg_bin" "$WORK"
    fi
    if [ -n "$WORK" ]; then
        if [ "$status" -ne 0 ]; then
            for f in "$WORK"/suture-*.log; do
                [ -f "$f" ] || continue
                log "last lines of $(basename "$f"):"
                tail -n 15 "$f" >&2
            done
        fi
        if [ "$KEEP" = 1 ]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

start_postgres() {
    pg_bin=$(pg_bin_dir)
    pg_port=$(free_port)
    log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $pg_port, max_connections $max_backends"
    pg_scratch_start "$pg_bin" "$WORK" "$pg_port" "$max_backends" || die "PostgreSQL did not start"
}

start_mariadb() {
    MDB_PORT=$(free_port)
    log "MariaDB on port $MDB_PORT, max_connections $max_backends"
    mariadb_init "$WORK"
    mariadb_start "$WORK" "$MDB_PORT" --max-connections="$max_backends" \
        --open-files-limit=$(( 2 * max_backends + 1000 )) --thread-cache-size=100
}

server_port() { if [ "$1" = postgres ]; then echo "$pg_port"; else echo "$MDB_PORT"; fi; }

# One [pools.NAME] table: pool_toml NAME PROTOCOL PORT MAX_SIZE MAX_CLIENTS [EXTRA_LINES].
pool_toml() {
    local name=$1 proto=$2 port=$3 max=$4 maxc=$5 extra=${6:-}
    cat <<TOML

[pools.$name]
protocol = "$proto"
listen = "127.0.0.1:$port"
servers = ["127.0.0.1:$(server_port "$proto")"]
tls = "disable"
min_idle = 0
max_size = $max
max_client_connections = $maxc
$extra
[pools.$name.users.app]
password = "app-secret"
TOML
}

# Writes the [admin] and [log] head of config $1; sets ADMIN_PORT.
config_head() {
    ADMIN_PORT=$(free_port)
    cat >"$1" <<TOML
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "info"
TOML
}

# Starts Suture with config $1, logging to $2, and waits until port $3 accepts; sets SUTURE_PID.
start_suture() {
    local config=$1 logf=$2 port=$3 i
    "$WORK/suture" check-config -c "$config" >"$logf.check" 2>&1 ||
        { cat "$logf.check" >&2; die "config $config is invalid"; }
    # In a session of its own, as PgBouncer (-d) is: see lib.sh.
    setsid env ${PRELOAD:+LD_PRELOAD="$PRELOAD"} "$WORK/suture" --config "$config" >"$logf" 2>&1 &
    SUTURE_PID=$!
    suture_pids+=("$SUTURE_PID")
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$SUTURE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$logf" >&2
    die "suture ($config) did not listen on $port"
}

stop_suture() {
    kill "$SUTURE_PID" 2>/dev/null || true
    wait "$SUTURE_PID" 2>/dev/null || true
}

# A fresh Suture with one pool for protocol $1: single_pool PHASE PROTO MAX_SIZE MAX_CLIENTS
# [EXTRA]; sets SUTURE_PID and POOL_PORT.
single_pool() {
    local phase=$1 proto=$2 max=$3 maxc=$4 extra=${5:-}
    local config="$WORK/suture-$phase-$proto.toml"
    POOL_PORT=$(free_port)
    config_head "$config"
    pool_toml app "$proto" "$POOL_PORT" "$max" "$maxc" "$extra" >>"$config"
    start_suture "$config" "$WORK/suture-$phase-$proto.log" "$POOL_PORT"
}

# ---------------------------------------------------------------- phases

phase_open() { # proto
    local proto=$1
    log "open: $CLIENTS $proto sessions at once"
    single_pool open "$proto" $(( CLIENTS + 10 )) $(( CLIENTS + 100 ))
    python3 "$DRIVER" open --name open --proto "$proto" --port "$POOL_PORT" --pid "$SUTURE_PID" \
        --steps "$CLIENTS" --settle "$SETTLE" --json "$WORK/json/open-$proto.json"
    log "open: Suture said: $(grep -m1 -E 'file descriptors|open-file' "$WORK/suture-open-$proto.log" | cut -c1-200)"
    stop_suture
}

phase_idle() { # proto
    local proto=$1 top=${idle_steps[-1]}
    log "idle: $proto memory at 0, $IDLE_STEPS idle clients"
    single_pool idle "$proto" $(( top + 10 )) $(( top + 100 ))
    python3 "$DRIVER" open --name idle --proto "$proto" --port "$POOL_PORT" --pid "$SUTURE_PID" \
        --steps "$IDLE_STEPS" --settle "$SETTLE" --concurrency "$IDLE_CONCURRENCY" \
        --json "$WORK/json/idle-$proto.json"
    stop_suture
}

phase_burst() { # proto
    local proto=$1 extra="checkout_timeout = \"$CHECKOUT_TIMEOUT\""
    [ -n "$BURST_MAX_WAITERS" ] && extra="$extra
max_waiters = $BURST_MAX_WAITERS"
    log "burst: $BURST $proto attempts against a pool of $BURST_POOL, all held (max_client_connections $BURST_MAX_CLIENTS, checkout_timeout $CHECKOUT_TIMEOUT)"
    single_pool burst "$proto" "$BURST_POOL" "$BURST_MAX_CLIENTS" "$extra"
    python3 "$DRIVER" burst --proto "$proto" --port "$POOL_PORT" --pid "$SUTURE_PID" \
        --holders $(( BURST_POOL - 1 )) --n "$BURST" --after "$BURST_AFTER" \
        --steady-out "$WORK/steady-$proto.txt" --json "$WORK/json/burst-$proto.json"
    stop_suture
}

# $1, a duration as Suture's config writes it (2s, 500ms, 1m), in seconds.
seconds_of() {
    awk -v t="$1" 'BEGIN { n = t + 0; if (t ~ /ms$/) n /= 1000; else if (t ~ /m$/) n *= 60; print n }'
}

# The same burst against PgBouncer (same pool size and client limit, query_wait_timeout for
# checkout_timeout, the same listen backlog as Suture's), to compare what a connected
# client sees during it on this machine.
phase_burst_pgbouncer() {
    local port wait_s
    port=$(free_port)
    # PgBouncer takes whole seconds.
    wait_s=$(awk -v n="$(seconds_of "$CHECKOUT_TIMEOUT")" 'BEGIN { printf "%d", (n < 1 ? 1 : n) }')
    log "burst: $BURST postgres attempts against PgBouncer, pool of $BURST_POOL (max_client_conn $BURST_MAX_CLIENTS, query_wait_timeout $wait_s)"
    pgbouncer_userlist "$pg_bin" "$WORK" "$pg_port" || die "could not read app's SCRAM verifier"
    pgbouncer_conf "$WORK" pgbouncer-burst "$pg_port" "$port" "$BURST_POOL" 0 "$BURST_MAX_CLIENTS" "" \
        "query_wait_timeout = $wait_s
listen_backlog = 4096"
    pgbouncer_start "$WORK" pgbouncer-burst "$port" || die "pgbouncer did not start"
    python3 "$DRIVER" burst --proto postgres --label PgBouncer --port "$port" \
        --pid "$(cat "$WORK/pgbouncer-burst.pid")" \
        --holders $(( BURST_POOL - 1 )) --n "$BURST" --after "$BURST_AFTER" \
        --steady-out "$WORK/steady-pgbouncer.txt" --json "$WORK/json/burst-postgres-pgbouncer.json"
    pgbouncer_stop "$WORK" pgbouncer-burst
}

phase_pools() {
    local config="$WORK/suture-pools.toml" ports=() p i proto protos
    read -r -a protos <<<"$PROTOCOLS"
    config_head "$config"
    declare -A taken=()
    for i in $(seq 1 "$POOLS"); do
        p=$(free_port)
        while [ -n "${taken[$p]:-}" ] || [ "$p" = "$ADMIN_PORT" ]; do p=$(free_port); done
        taken[$p]=1
        ports+=("$p")
        proto=${protos[$(( (i - 1) % ${#protos[@]} ))]}
        pool_toml "p$i" "$proto" "$p" 10 1000 >>"$config"
    done
    "$WORK/suture" check-config -c "$config" >"$WORK/pools.check" 2>&1 ||
        { cat "$WORK/pools.check" >&2; die "the $POOLS-pool config is invalid"; }
    log "pools: $POOLS pools ($PROTOCOLS) in one process"
    LD_PRELOAD_SUTURE="$PRELOAD" python3 "$DRIVER" pools --bin "$WORK/suture" --config "$config" \
        --ports "$(IFS=,; echo "${ports[*]}")" --admin "$ADMIN_PORT" \
        --log "$WORK/suture-pools.log" --json "$WORK/json/pools.json"
}

phase_soak() {
    local config="$WORK/suture-soak.toml" targets="" proto port first=""
    config_head "$config"
    for proto in $PROTOCOLS; do
        port=$(free_port)
        [ -n "$first" ] || first=$port
        pool_toml "$proto" "$proto" "$port" $(( SOAK_CLIENTS + 10 )) $(( SOAK_CLIENTS + 100 )) >>"$config"
        targets="${targets:+$targets,}$proto:$port"
    done
    log "soak: ${SOAK_SECS}s, $SOAK_CLIENTS clients per protocol ($PROTOCOLS), RSS every ${SOAK_INTERVAL}s"
    start_suture "$config" "$WORK/suture-soak.log" "$first"
    python3 "$DRIVER" soak --targets "$targets" --clients "$SOAK_CLIENTS" --secs "$SOAK_SECS" \
        --interval "$SOAK_INTERVAL" --warmup "$SOAK_WARMUP" --query-every "$SOAK_QUERY_EVERY" \
        --reconnect "$SOAK_RECONNECT" --pid "$SUTURE_PID" --json "$WORK/json/soak.json"
    stop_suture
}

write_meta() {
    local commit dirty=false
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -z "$(git -C "$ROOT" status --porcelain -- src protocol Cargo.toml Cargo.lock 2>/dev/null)" ] || dirty=true
    python3 - "$WORK/meta.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "cpu": "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
    "nproc": $(nproc),
    "mem_gib": $(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo),
    "kernel": "$(uname -sr)",
    "load_at_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "commit": "$commit", "uncommitted_changes": $( $dirty && echo True || echo False ),
    "suture": "$("$WORK/suture" --version)",
    "postgres": "$( [ -n "$pg_bin" ] && "$pg_bin/postgres" --version | awk '{print $3}')",
    "mariadb": "$(/usr/sbin/mariadbd --version | awk '{print $3}')",
    "knobs": {"protocols": "$PROTOCOLS", "only": "$ONLY", "clients": $CLIENTS,
              "idle_steps": "$IDLE_STEPS", "burst": $BURST, "burst_pool": $BURST_POOL,
              "burst_max_clients": $BURST_MAX_CLIENTS, "burst_max_waiters": "$BURST_MAX_WAITERS",
              "checkout_timeout": "$CHECKOUT_TIMEOUT", "pools": $POOLS,
              "soak_secs": $SOAK_SECS, "soak_clients": $SOAK_CLIENTS},
    "open_file_limit": "$(ulimit -n)",
    "preload": "$PRELOAD",
}, open(sys.argv[1], "w"), indent=1)
PY
}

# ---------------------------------------------------------------- main

main() {
    install_deps
    # Thousands of sockets in Suture, the driver and MariaDB: the hard limit, not 1024.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local need=$(( 2 * (BURST + max_backends) + 1000 ))
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
        log "warning: open-file limit $(ulimit -n) is below the $need this run may need"
    fi
    WORK=$(mktemp -d /tmp/suture-bench-scale.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    chmod 755 "$WORK"
    # initdb runs as postgres and creates its data directory here.
    chown postgres:postgres "$WORK" 2>/dev/null || true
    mkdir -p "$WORK/json"
    cp "$SUTURE_BIN" "$WORK/suture"
    if has_proto postgres; then start_postgres; fi
    if has_proto mysql; then start_mariadb; fi

    local proto
    for proto in $PROTOCOLS; do
        if wants open; then phase_open "$proto"; fi
        if wants idle; then phase_idle "$proto"; fi
        if wants burst; then phase_burst "$proto"; fi
        if wants burst && [ "$proto" = postgres ] && [ "$BURST_PGBOUNCER" = 1 ]; then
            phase_burst_pgbouncer
        fi
    done
    if wants pools; then phase_pools; fi
    if wants soak; then phase_soak; fi

    write_meta
    mkdir -p "$(dirname "$OUT")"
    local checkout_s
    checkout_s=$(seconds_of "$CHECKOUT_TIMEOUT")
    echo
    python3 "$DRIVER" report --dir "$WORK/json" --meta "$WORK/meta.json" --out "$OUT" \
        --checkout-timeout "$CHECKOUT_TIMEOUT" --checkout-timeout-s "$checkout_s"
    echo
    log "raw numbers: $OUT"
}

main "$@"
