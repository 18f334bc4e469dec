# shellcheck shell=bash
# Shell helpers shared by quickstart.sh, the bench and profile scripts and the driver suite
# (ports, a throwaway PostgreSQL, PgBouncer);
# sourced, not run.
#
# Sessions and the scheduler: Linux puts each session (setsid) in a scheduler autogroup of its
# own (CONFIG_SCHED_AUTOGROUP, on by default), and the CPU is shared fairly between groups
# first. PgBouncer (-d) daemonizes into its own session and every PostgreSQL backend calls
# setsid, so a proxy started as `cmd &` from a bench script is the one process left sharing a
# group with the load generator (pgbench, sysbench). On the 2-CPU machine, at `pgbench -S
# -c 8`, Suture started that way was switched out 0.75-0.89 times per transaction, and 0.51-0.57
# times in a session of its own (PgBouncer: 0.51-0.58), and its CPU per transaction fell by
# about a tenth (docs/performance.md, "The autogroup"). The bench and profile
# scripts therefore start Suture, and MariaDB, with setsid, as a container or a systemd unit
# would be on its own, so the two proxies are placed alike. (It does not favour Suture
# everywhere: beside sysbench's eight threads, Suture's MySQL CPU per query is higher in a
# group of its own; bench_mysql.sh BENCH_OWN_SESSION=0 shows the other placement.)

# Runs a command as the postgres OS user when we are root (initdb and postgres refuse root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A port nobody uses right now, below the kernel's ephemeral range (so outgoing connections,
# of which the benchmark's idle test opens a thousand, cannot take it before we bind it).
free_port() {
    local low hi p
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    hi=$(( low > 12000 ? low - 1 : 32767 ))
    while :; do
        p=$(( 10000 + RANDOM % (hi - 10000) ))
        if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Waits until 127.0.0.1:$1 accepts connections, for at most $2 tenths of a second (default
# 100, 10 s); non-zero when it never did.
wait_port() {
    local _
    for _ in $(seq 1 "${2:-100}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Waits until $1 is a socket (a Unix-socket listener is bound), for at most $2 tenths of a
# second (default 100); non-zero when it never was.
wait_socket() {
    local _
    for _ in $(seq 1 "${2:-100}"); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# One counted window of a process running under valgrind's callgrind: zeroes the counts of
# process $1, runs the rest of the arguments (the traffic), then dumps the counts to the next
# numbered part of its callgrind output file. callgrind_control's requests are seen only when
# the process next runs, so each is sent before the traffic that wakes it.
callgrind_window() { # PID COMMAND...
    local pid=$1 ctl
    shift
    callgrind_control -z "$pid" >/dev/null &
    ctl=$!
    sleep 1
    "$@"
    wait "$ctl" || true
    sleep 1
    callgrind_control -d "$pid" >/dev/null
}

# The instructions counted in callgrind output file $1 (PROGRAM TOTALS).
callgrind_total() {
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

log_lib() { printf '%s lib: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- PostgreSQL and PgBouncer

# The newest installed PostgreSQL's bin directory.
pg_bin_dir() { printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }

# Starts a throwaway PostgreSQL: pg_scratch_start PG_BIN DIR PORT MAX_CONNECTIONS.
# Data in DIR/data, log in DIR/postgres.log, its socket in DIR (local rule trust), TCP on
# 127.0.0.1:PORT with SCRAM-SHA-256; role app (password app-secret) owning database app.
# fsync is off: what the scripts measure is never durability. DIR must be the postgres
# user's to write.
pg_scratch_start() {
    local bin=$1 dir=$2 port=$3 maxc=$4
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$dir/initdb.log" || return
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
password_encryption = 'scram-sha-256'
shared_buffers = 128MB
max_connections = $maxc
fsync = off
log_min_messages = warning
CONF
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 120 start >/dev/null || return
    as_pg "$bin/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'" -c "CREATE DATABASE app OWNER app"
}

# Stops what pg_scratch_start started in DIR (immediately: nothing in it is worth a checkpoint).
pg_scratch_stop() { # PG_BIN DIR
    [ -f "$2/data/postmaster.pid" ] || return 0
    as_pg "$1/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1
}

# Installs PgBouncer when it is missing, without starting the package's system service.
pgbouncer_install() {
    command -v pgbouncer >/dev/null 2>&1 && return 0
    log_lib "installing pgbouncer (its system service is not started; the scripts run their own)"
    # A policy-rc.d that says no keeps the package's service from starting on install.
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends pgbouncer >/dev/null ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends pgbouncer; } ||
        rc=$?
    [ "$made_policy" = 1 ] && rm -f "$policy"
    return "$rc"
}

# DIR/userlist.txt with role app's SCRAM verifier as the server stores it (same salt and
# iterations): PgBouncer checks the client's proof against it and, because the client proved
# the key, logs in to PostgreSQL with SCRAM on its behalf without knowing the password.
pgbouncer_userlist() { # PG_BIN DIR PG_PORT
    local verifier
    verifier=$(as_pg "$1/psql" -X -A -t -h "$2" -p "$3" -U postgres -d postgres \
        -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'") || return
    printf '"app" "%s"\n' "$verifier" >"$2/userlist.txt"
    chown postgres:postgres "$2/userlist.txt" 2>/dev/null || true
}

# DIR/NAME.ini: session mode, SCRAM against DIR/userlist.txt, database app on 127.0.0.1:PG_PORT,
# pid and log files DIR/NAME.pid and DIR/NAME.log. With SOCKET_DIR it also listens on
# SOCKET_DIR/.s.PGSQL.PORT; EXTRA is appended to [pgbouncer] as is.
pgbouncer_conf() { # DIR NAME PG_PORT PORT POOL MIN_POOL MAX_CLIENTS [SOCKET_DIR] [EXTRA]
    local dir=$1 name=$2 pg_port=$3 port=$4 pool=$5 min=$6 maxc=$7 sock=${8:-} extra=${9:-}
    cat >"$dir/$name.ini" <<INI
[databases]
app = host=127.0.0.1 port=$pg_port dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $sock
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = session
default_pool_size = $pool
min_pool_size = $min
reserve_pool_size = 0
max_client_conn = $maxc
max_db_connections = 0
server_reset_query = DISCARD ALL
server_idle_timeout = 600
ignore_startup_parameters = extra_float_digits,options
pidfile = $dir/$name.pid
logfile = $dir/$name.log
log_connections = 0
log_disconnections = 0
$extra
INI
}

# Starts PgBouncer with DIR/NAME.ini and waits until PORT accepts; non-zero (its log on
# stderr) when it does not.
pgbouncer_start() { # DIR NAME PORT
    local dir=$1 name=$2 port=$3
    # Started as root and switching to postgres itself (-u), so it keeps this shell's open-file
    # limit; runuser's PAM session would cut it to 1024, too few for thousands of clients.
    if [ "$(id -u)" -eq 0 ]; then
        pgbouncer -d -u postgres "$dir/$name.ini"
    else
        pgbouncer -d "$dir/$name.ini"
    fi || { cat "$dir/$name.log" >&2; return 1; }
    wait_port "$port" || { cat "$dir/$name.log" >&2; return 1; }
}

# Stops the PgBouncer of DIR/NAME.pid and waits until it has exited.
pgbouncer_stop() { # DIR NAME
    local f="$1/$2.pid" pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
