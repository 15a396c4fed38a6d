#!/usr/bin/env bash
# Measurements of several `nango-sync serve` instances and of one at scale (not run by
# CI): prints what it measured.
#
#   scripts/instances-bench.sh            # spread, then scale at 2,000/min and 200/min
#   scripts/instances-bench.sh spread     # one of them
#
# spread: STREAMS (100) streams of RECORDS (2,000) records served by INSTANCES (1,2,3)
#   `serve` processes on one PostgreSQL (a throwaway one from scripts/pg.sh): the first
#   sync's records/s, and the time to take over a SIGKILLed instance's streams
#   (LEASE_TTL_MS, 5,000).
# scale: 1,000 streams of 20 records on one `serve` (SQLite) against a fake announcing
#   2,000 requests per minute, then 200 streams against 200 per minute: start-up sync,
#   one changed record and webhook per stream, the time until every change is committed,
#   answers 429, peak RSS and CPU time.
# Builds `nango-sync` and the measuring program in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
cargo build --release -p nango-sync-cli --bin nango-sync --example instances_bench
export BIN=$PWD/target/release/nango-sync
bench=$PWD/target/release/examples/instances_bench

if [[ $what == all || $what == spread ]]; then
    scripts/pg.sh "$bench" spread
fi
if [[ $what == all || $what == scale ]]; then
    STREAMS=${SCALE_STREAMS:-1000} RATE=2000 "$bench" scale
    STREAMS=${SLOW_STREAMS:-200} RATE=200 "$bench" scale
fi
