#!/usr/bin/env bash
# The whole benchmark in one run, one release binary: scripts/bench.sh (PostgreSQL over TCP and
# Unix sockets against direct and PgBouncer, CPU per transaction, added latency at -c 1, memory
# per idle client), scripts/bench_mysql.sh (sysbench direct vs Suture, TCP and Unix sockets) and
# scripts/bench_scale.sh (2,000 sessions, idle memory, the 5,000-attempt burst, 100 pools, the
# soak), one after the other. Writes everything to BENCH_ALL_OUT; each script's own knobs pass
# through (see their headers).
#
#   bash scripts/bench_all.sh        # 38 minutes on 2 cores with the defaults (2026-12-02)
#
# Knobs: BENCH_ALL_OUT [docs/benchmarks/all-YYYY-MM-DD.md]. bench.sh runs BENCH_ONLY
# [select,tpcb,connect,unix,idle] here: its COPY stream and its pgbench soak are left to
# bench.sh itself; the soak that counts is bench_scale.sh's (1,000 clients per protocol, 10 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${BENCH_ALL_OUT:-docs/benchmarks/all-$(date +%Y-%m-%d).md}
log() { printf '%s bench-all: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bash scripts/install-deps.sh
if [ -z "${SUTURE_BIN:-}" ]; then
    log "building Suture (release)"
    cargo build --release -q --bin suture
    SUTURE_BIN=$(pwd)/target/release/suture
fi
bin=$(mktemp /tmp/suture-bench-all.XXXXXX)
trap 'rm -f "$bin"' EXIT
cp "$SUTURE_BIN" "$bin"
chmod 755 "$bin"
mkdir -p "$(dirname "$OUT")"
pg_md=${OUT%.md}-postgres.md

log "1/3 PostgreSQL: scripts/bench.sh"
BENCH_SUTURE_BIN=$bin BENCH_OUT=$pg_md BENCH_ONLY=${BENCH_ONLY:-select,tpcb,connect,unix,idle} \
    bash scripts/bench.sh
log "2/3 MySQL: scripts/bench_mysql.sh"
mysql_txt=$(SUTURE_BIN=$bin bash scripts/bench_mysql.sh)
log "3/3 scale: scripts/bench_scale.sh"
scale_txt=$(SUTURE_BIN=$bin SCALE_OUT=${OUT%.md}-scale.json bash scripts/bench_scale.sh)

{
    cat "$pg_md"
    printf '\n## MySQL (scripts/bench_mysql.sh, same binary, right after)\n\n```\n%s\n```\n' "$mysql_txt"
    printf '\n## Scale (scripts/bench_scale.sh, same binary, right after)\n\n```\n%s\n```\n' "$scale_txt"
} >"$OUT"
rm -f "$pg_md"
log "results: $OUT (raw: ${pg_md%.md}.tsv, ${OUT%.md}-scale.json)"
