#!/usr/bin/env bash
# CI smoke run of the fuzz targets: installs cargo-fuzz if missing, builds the five targets once,
# then runs each for FUZZ_SECONDS (default 20) over its committed corpus. Fails on any crash,
# timeout (10 s for one input) or out-of-memory; the failing input is left in
# fuzz/artifacts/<target>/. New corpus entries go to a scratch folder under fuzz/target/, so the
# committed corpus is never changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-20}"
targets=(framing startup scanner mysql_framing mysql_handshake)
scratch=fuzz/target/smoke-corpus

start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz/smoke.sh: built in $(($(date +%s) - start)) s"

for target in "${targets[@]}"; do
    rm -rf "${scratch:?}/$target"
    mkdir -p "$scratch/$target"
    echo "fuzz/smoke.sh: $target for $seconds s"
    # The first folder receives new entries; the committed corpus is only read.
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>"$scratch/$target.log"; then
        log="$scratch/$target.log"
        # The panic message, libFuzzer's verdict and how to reproduce; the whole log stays.
        grep -A3 'panicked at' "$log" >&2 || tail -n 40 "$log" >&2
        grep -E 'SUMMARY|Test unit written' "$log" >&2 || true
        echo "fuzz/smoke.sh: full log in $log" >&2
        echo "fuzz/smoke.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::(number_of_executed_units|average_exec_per_sec))' \
        "$scratch/$target.log" || true
done
echo "fuzz/smoke.sh: ${#targets[@]} targets passed in $(($(date +%s) - start)) s"
