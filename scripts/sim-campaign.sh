#!/usr/bin/env bash
# The seeded simulation with far more seeds than CI runs, on every store (memory, SQLite,
# sled, PostgreSQL), against a throwaway PostgreSQL. Not part of CI: run it before
# changing the merge rule, a commit path or the engine lands, or on a schedule.
#
#   scripts/sim-campaign.sh            # 5000 seeds per store
#   scripts/sim-campaign.sh 20000      # more
#   SIM_FROM=5001 scripts/sim-campaign.sh 10000   # seeds 5001..10000 (fresh ground)
#
# A failure prints its store and seed; replay it with
#   NANGO_SYNC_SIM_SEED=<seed> scripts/test.sh --test simulation simulation_<store>
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5000}
export NANGO_SYNC_SIM_SEEDS=$seeds
if [[ -n "${SIM_FROM:-}" ]]; then
    export NANGO_SYNC_SIM_FROM=$SIM_FROM
fi
exec scripts/pg.sh cargo test --release --all-features --test simulation -- --test-threads 2 --nocapture
