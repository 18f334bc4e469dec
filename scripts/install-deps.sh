#!/usr/bin/env bash
# Installs what Suture's build, quickstart and tests need on Debian/Ubuntu.
# Idempotent: apt-get runs only when something is missing. Never starts or
# configures the system PostgreSQL; the tests and the quickstart run their own.
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

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: missing ${missing[*]} and no apt-get; install them by hand" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # postgresql-contrib etc. are not needed; --no-install-recommends keeps it small.
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
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
