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

cargo build --all-targets
# A widely used driver's own test suite, directly and through Suture: outcomes must match.
# Its result is kept while the Rust tests still run, so one failure does not hide the other.
driver_status=0
bash tests/drivers/psycopg2_suite.sh || driver_status=$?
# The replay contract under psycopg 3's pipeline mode, with backends killed and a restart.
bash tests/drivers/pipeline_ledger.sh || driver_status=$?
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest not available, using cargo test" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
if [ "$driver_status" -ne 0 ]; then
    echo "test.sh: a driver suite (psycopg2 or the psycopg 3 pipelined ledger) failed (exit $driver_status); see above" >&2
    exit "$driver_status"
fi
