#!/usr/bin/env bash
# The test command from the README: installs what is missing, builds
# everything and runs the whole suite against real PostgreSQL servers that
# the tests start themselves. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# test-hooks: the admin port's hook that stalls the event loop, for the watchdog test. Only the
# tests' build has it; release builds never do.
cargo build --all-targets --features test-hooks
# A widely used driver's own test suite, directly and through Suture: outcomes must match.
# Its result is kept while the Rust tests still run, so one failure does not hide the other.
driver_status=0
bash tests/drivers/psycopg2_suite.sh || driver_status=$?
# The replay contract under psycopg 3's pipeline mode, with backends killed and a restart.
bash tests/drivers/pipeline_ledger.sh || driver_status=$?
# PyMySQL's own suite directly and through Suture, and the MySQL ledger (kills, one restart).
bash tests/drivers/pymysql_suite.sh || driver_status=$?
bash tests/drivers/mysql_ledger.sh || driver_status=$?
# mysql-connector-python's server-side prepared statements and the mariadb CLI, across KILLs.
bash tests/drivers/mysql_clients.sh || driver_status=$?
# deploy/, docker/, the alert rules and the dashboard's metrics (promtool, kubernetes-validate).
ops_status=0
bash tests/ops/check.sh || ops_status=$?
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --features test-hooks --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest not available, using cargo test" >&2
    cargo test --workspace --features test-hooks --no-fail-fast "$@"
fi
if [ "$ops_status" -ne 0 ]; then
    echo "test.sh: tests/ops/check.sh failed (exit $ops_status); see above" >&2
fi
if [ "$driver_status" -ne 0 ]; then
    echo "test.sh: a driver suite (psycopg2, the psycopg 3 pipelined ledger, PyMySQL, the MySQL ledger or the MySQL clients) failed (exit $driver_status); see above" >&2
    exit "$driver_status"
fi
if [ "$ops_status" -ne 0 ]; then
    exit "$ops_status"
fi
