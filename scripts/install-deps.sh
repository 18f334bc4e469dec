#!/usr/bin/env bash
# Installs what Suture's build, quickstart and tests need on Debian/Ubuntu.
# Idempotent: apt-get runs only when something is missing. Never starts or
# configures the system PostgreSQL or MariaDB; the tests and the quickstart
# run their own (on free ports, from their own data directories).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=()
have_pg_bin() {
    compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}
have_pg_bin initdb || missing+=(postgresql)
{ have_pg_bin psql && have_pg_bin pgbench; } || missing+=(postgresql-client)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# promtool and prometheus: the metrics, rules and end-to-end checks (tests/ops/).
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
# MariaDB for the MySQL-protocol tests: mariadbd and mariadb-install-db come
# with mariadb-server (which also ships the auth_ed25519 plugin the harness
# uses), the mariadb CLI with mariadb-client.
{ [ -x /usr/sbin/mariadbd ] && [ -x /usr/bin/mariadb-install-db ] &&
    [ -e /usr/lib/mysql/plugin/auth_ed25519.so ]; } || missing+=(mariadb-server)
[ -x /usr/bin/mariadb ] || missing+=(mariadb-client)
# sysbench: the MySQL-path benchmark (scripts/bench_mysql.sh).
command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)

# While packages install, a policy-rc.d that answers 101 ("action forbidden")
# keeps their maintainer scripts from starting the system MariaDB or
# PostgreSQL service. It is only added when the machine has none (container
# images often ship one) and removed again, also on failure.
POLICY_RC=/usr/sbin/policy-rc.d
policy_added=0
hold_services() {
    if [ ! -e "$POLICY_RC" ]; then
        printf '#!/bin/sh\n# Added by suture scripts/install-deps.sh during apt-get install.\nexit 101\n' |
            $SUDO tee "$POLICY_RC" >/dev/null
        $SUDO chmod 755 "$POLICY_RC"
        policy_added=1
    fi
}
release_services() {
    if [ "$policy_added" -eq 1 ]; then
        $SUDO rm -f "$POLICY_RC"
        policy_added=0
    fi
}
trap release_services EXIT

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: missing ${missing[*]} and no apt-get; install them by hand" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # postgresql-contrib etc. are not needed; --no-install-recommends keeps it small.
    hold_services
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    release_services
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found. Install Rust from https://rustup.rs" \
         "(rustup, then 'rustup default stable') and run this again." >&2
    exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "install-deps: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
