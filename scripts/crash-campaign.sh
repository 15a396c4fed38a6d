#!/usr/bin/env bash
# The long crash campaign (not run by CI): hundreds of SIGKILLs sent to `nango-sync sync`
# while sled writes a snapshot, into a store of 50,000 records, then hundreds more at
# random moments of syncs into sled and into SQLite, then hundreds sent to `nango-sync serve` while it
# delivers queued actions (SQLite and sled). Each phase prints what it saw (kills, kills that
# left an interrupted snapshot, how many of those sled alone would refuse to open,
# recoveries), then hundreds of SIGKILLs sent to a `nango-sync changes --consumer --follow`
# process while syncs run concurrently (no change missed, positions never back). Exits
# non-zero when a kill left a store that does not open, fails its check, has its cursor
# ahead of its records, ends different from the fake, or made a consumer miss a change.
#
#   scripts/crash-campaign.sh
#   SNAPSHOT_KILLS=1000 RANDOM_KILLS=0 scripts/crash-campaign.sh
#
# SNAPSHOT_KILLS (default 400), SNAPSHOT_RECORDS (default 50000), RANDOM_KILLS (default
# 300), FEED_KILLS (default 300), OUTBOX_KILLS (default 300 per store), NANGO_SYNC_CRASH_SEED
# (default: a new seed, printed, to replay a failure).
# Builds in release mode (the tests and `nango-sync` itself).
set -euo pipefail
cd "$(dirname "$0")/.."

SNAPSHOT_KILLS=${SNAPSHOT_KILLS:-400}
SNAPSHOT_RECORDS=${SNAPSHOT_RECORDS:-50000}
RANDOM_KILLS=${RANDOM_KILLS:-300}
FEED_KILLS=${FEED_KILLS:-300}
OUTBOX_KILLS=${OUTBOX_KILLS:-300}
SEED=${NANGO_SYNC_CRASH_SEED:-$(date +%s)}
export NANGO_SYNC_CRASH_SEED=$SEED
# The CLI crate owns the binary and its crash tests; its default features have every store.
PKG=nango-sync-cli

echo "== crash campaign, seed $SEED"
cargo test --release -p "$PKG" --test crash --test changes --test outbox_crash --no-run

started=$(date +%s)
if [[ $SNAPSHOT_KILLS -gt 0 ]]; then
    echo "== $SNAPSHOT_KILLS kills during sled snapshots, $SNAPSHOT_RECORDS records"
    NANGO_SYNC_SNAPSHOT_KILLS=$SNAPSHOT_KILLS NANGO_SYNC_SNAPSHOT_RECORDS=$SNAPSHOT_RECORDS \
        cargo test --release -p "$PKG" --test crash \
        sled_survives_sigkill_during_snapshots -- --exact --nocapture
fi
if [[ $RANDOM_KILLS -gt 0 ]]; then
    echo "== $RANDOM_KILLS kills at random moments of syncs, into sled then into SQLite"
    NANGO_SYNC_CRASH_KILLS=$RANDOM_KILLS \
        cargo test --release -p "$PKG" --test crash -- --nocapture --test-threads 1 \
        sled_survives_sigkill_at_random_moments sqlite_survives_sigkill_at_random_moments
fi
if [[ $FEED_KILLS -gt 0 ]]; then
    echo "== $FEED_KILLS kills of a following consumer during concurrent syncs (SQLite)"
    NANGO_SYNC_FEED_KILLS=$FEED_KILLS \
        cargo test --release -p "$PKG" --test changes \
        a_consumer_killed_at_random_moments_misses_nothing -- --exact --nocapture
fi
if [[ $OUTBOX_KILLS -gt 0 ]]; then
    echo "== $OUTBOX_KILLS kills of serve delivering the outbox, per store"
    NANGO_SYNC_OUTBOX_KILLS=$OUTBOX_KILLS \
        cargo test --release -p "$PKG" --test outbox_crash -- --nocapture --test-threads 1 \
        sqlite_outbox_survives_sigkill_of_serve sled_outbox_survives_sigkill_of_serve
fi
echo "== campaign passed in $(( $(date +%s) - started )) s (seed $SEED)"
