# shellcheck shell=bash
# A throwaway MariaDB for the MySQL driver scripts (pymysql_suite.sh, mysql_ledger.sh,
# scripts/bench_mysql.sh); sourced, not run. Like tests/support/mariadb_server.rs: its own
# data directory under a work directory, mariadbd --no-defaults on a free loopback port,
# run as the mysql OS user when we are root; never the system server.
#
#   mariadb_init WORK            install a data directory in WORK/mdb (accounts below)
#   mariadb_start WORK PORT ARGS start mariadbd on 127.0.0.1:PORT with extra ARGS; sets MDB_PID
#   mariadb_stop WORK            SIGTERM and wait; mariadb_kill: SIGKILL
#   mariadb_sql WORK SQL         run SQL as root over the Unix socket
#
# Accounts (TCP from 127.0.0.1): root@'%' / root-secret (every privilege), app@'%' /
# app-secret (every privilege on database app). Databases: app, test1, test2.

MDB_PID=""

mariadb_init() {
    local work=$1
    mkdir -p "$work/mdb/tmp"
    cat >"$work/mdb/init.sql" <<'EOF'
FLUSH PRIVILEGES;
CREATE USER 'root'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('root-secret');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE app;
CREATE DATABASE test1;
CREATE DATABASE test2;
CREATE USER 'app'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('app-secret');
GRANT ALL PRIVILEGES ON app.* TO 'app'@'%';
EOF
    [[ "$(id -u)" -eq 0 ]] && chown -R mysql: "$work/mdb"
    mariadb-install-db --no-defaults --datadir="$work/mdb/data" --tmpdir="$work/mdb/tmp" \
        $( [[ "$(id -u)" -eq 0 ]] && echo --user=mysql ) \
        --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
        --extra-file="$work/mdb/init.sql" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M >"$work/mdb/install.log" 2>&1
}

mariadb_start() {
    local work=$1 port=$2
    shift 2
    local log="$work/mdb/mariadb.err" offset=0
    [[ -f "$log" ]] && offset=$(stat -c %s "$log")
    # OWN_SESSION=setsid (the bench scripts) runs it in a session, and so a scheduler
    # autogroup, of its own, as a server on its own host or in its own container would be.
    ${OWN_SESSION:-} /usr/sbin/mariadbd --no-defaults --datadir="$work/mdb/data" --port="$port" \
        --bind-address=127.0.0.1 --socket="$work/mdb/mysqld.sock" \
        --pid-file="$work/mdb/mariadbd.pid" --log-error="$log" --tmpdir="$work/mdb/tmp" \
        $( [[ "$(id -u)" -eq 0 ]] && echo --user=mysql ) \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --skip-name-resolve --max-connections=300 --performance-schema=OFF \
        --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
        --max-allowed-packet=64M --skip-log-bin "$@" </dev/null >/dev/null 2>>"$work/mdb/stderr.log" &
    MDB_PID=$!
    local i
    for i in $(seq 600); do
        if tail -c +"$((offset + 1))" "$log" 2>/dev/null | grep -q "ready for connections"; then
            return 0
        fi
        kill -0 "$MDB_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "mariadbd did not start on port $port:" >&2
    tail -20 "$log" >&2
    return 1
}

mariadb_stop() {
    [[ -n "$MDB_PID" ]] || return 0
    kill -TERM "$MDB_PID" 2>/dev/null
    wait "$MDB_PID" 2>/dev/null
    MDB_PID=""
}

mariadb_kill() {
    [[ -n "$MDB_PID" ]] || return 0
    kill -KILL "$MDB_PID" 2>/dev/null
    wait "$MDB_PID" 2>/dev/null
    MDB_PID=""
}

mariadb_sql() {
    local work=$1
    shift
    mariadb --no-defaults -uroot --socket="$work/mdb/mysqld.sock" -N -B -e "$*"
}

# Writes a Suture config with one MySQL pool `app` listening on LISTEN in front of
# 127.0.0.1:SERVER, users app and root, to FILE; extra pool lines from $4; the pool's
# max_size and min_idle from SUTURE_MAX_SIZE [20] and SUTURE_MIN_IDLE [1].
suture_mysql_config() {
    local file=$1 listen=$2 server=$3 extra=${4:-}
    local admin
    admin=$(free_port)
    cat >"$file" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[pools.app]
protocol = "mysql"
listen = "127.0.0.1:$listen"
servers = ["127.0.0.1:$server"]
tls = "disable"
min_idle = ${SUTURE_MIN_IDLE:-1}
max_size = ${SUTURE_MAX_SIZE:-20}
$extra

[pools.app.users.app]
password = "app-secret"

[pools.app.users.root]
password = "root-secret"
EOF
    SUTURE_ADMIN_PORT=$admin
}

# Starts SUTURE_BIN with config FILE, logging to LOG; waits until PORT accepts TCP. Sets SUTURE_PID.
start_suture_mysql() {
    local file=$1 log=$2 port=$3
    ${OWN_SESSION:-} "$SUTURE_BIN" --config "$file" >"$log" 2>&1 &
    SUTURE_PID=$!
    local i
    for i in $(seq 100); do
        if ! kill -0 "$SUTURE_PID" 2>/dev/null; then
            echo "suture exited at start:" >&2
            tail -20 "$log" >&2
            SUTURE_PID=""
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "suture did not listen on $port within 10s" >&2
    return 1
}

stop_suture() {
    [[ -n "${SUTURE_PID:-}" ]] || return 0
    kill "$SUTURE_PID" 2>/dev/null
    local i
    for i in $(seq 50); do kill -0 "$SUTURE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SUTURE_PID" 2>/dev/null
    wait "$SUTURE_PID" 2>/dev/null
    SUTURE_PID=""
}
