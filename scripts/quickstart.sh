#!/usr/bin/env bash
# The README's first command: builds Suture, starts a throwaway PostgreSQL in
# a temporary directory on a free port, starts Suture in front of it with a
# sample config, prints the DSN to paste into psql, and runs until Ctrl-C.
# Everything it started is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

bash scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release
suture_bin="$repo/target/release/suture"

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

# as_pg, free_port.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

work=$(mktemp -d /tmp/suture-quickstart.XXXXXX)
suture_pid=""
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "quickstart: stopping"
    if [ -n "$suture_pid" ]; then
        kill "$suture_pid" 2>/dev/null || true
        wait "$suture_pid" 2>/dev/null || true
    fi
    if [ -f "$work/data/postmaster.pid" ]; then
        as_pg "$pg_bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$work"
fi
pg_port=$(free_port)
echo "quickstart: initdb in $work/data"
as_pg "$pg_bin/initdb" -D "$work/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C --no-sync >"$work/initdb.log"
cat >>"$work/data/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
shared_buffers = 32MB
CONF
as_pg "$pg_bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 60 start >/dev/null
as_pg "$pg_bin/psql" -X -q -h "$work" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'" \
    -c "CREATE DATABASE app OWNER app"
echo "quickstart: PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$pg_port"

listen_port=$(free_port)
admin_port=$(free_port)
# Same keys as suture.example.toml; a literal password is fine for a local trial.
cat >"$work/suture.toml" <<TOML
[admin]
listen = "127.0.0.1:$admin_port"

[pools.app]
protocol = "postgres"
listen = "127.0.0.1:$listen_port"
servers = ["127.0.0.1:$pg_port"]
tls = "disable"
min_idle = 2
max_size = 20
max_lifetime = "30m"
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"

[pools.app.users.app]
password = "app-secret"
TOML

"$suture_bin" --config "$work/suture.toml" >"$work/suture.log" 2>&1 &
suture_pid=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$listen_port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$suture_pid" 2>/dev/null; then
        echo "quickstart: suture exited; its log:" >&2
        cat "$work/suture.log" >&2
        exit 1
    fi
    sleep 0.1
done
if ! (exec 3<>"/dev/tcp/127.0.0.1/$listen_port") 2>/dev/null; then
    echo "quickstart: suture is not listening on $listen_port; its log:" >&2
    cat "$work/suture.log" >&2
    exit 1
fi

cat <<MSG

Suture is listening on 127.0.0.1:$listen_port in front of PostgreSQL on 127.0.0.1:$pg_port.
Config: $work/suture.toml    Log: $work/suture.log

Connect with:
    psql "postgres://app:app-secret@127.0.0.1:$listen_port/app"

Press Ctrl-C to stop Suture and the throwaway PostgreSQL.
MSG

set +e
wait "$suture_pid"
status=$?
suture_pid=""
if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; then
    echo "quickstart: suture exited with status $status; its log:" >&2
    cat "$work/suture.log" >&2
fi
exit "$status"
