#!/usr/bin/env bash
# Peak memory and time of a standalone `nango-sync sync` process, per store and size:
# a `dev-server` in another process serves N generated records of one model, and
# `nango-sync sync` (under /usr/bin/time -v) syncs them into a fresh store, then syncs
# again after nothing changed, then again after every record changed upstream (the
# dev-server's `/_fake/regenerate`: a bulk update of all N). One line per run:
#
#   store pass records seconds records_per_second peak_rss_mb
#
#   scripts/sizing.sh [--bin PATH] [--stores "sqlite sled postgres"] [--dir DIR]
#                     [--id-order sequential|scattered] N...
#
# `--id-order scattered` serves UUID-shaped ids in no order instead of `rec-0000001`...
# (see `nango-sync bench --help`).
#
# Stores are written under DIR (default: a temporary directory) and deleted after each
# run; postgres needs NANGO_SYNC_TEST_POSTGRES_URL (run under scripts/pg.sh) and uses a
# schema dropped after each run. Not part of CI: a run at 10,000,000 records takes
# minutes per store and about 11 GB of disk for SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release/nango-sync
STORES="sqlite sled postgres"
DIR=""
ID_ORDER=sequential
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --stores) STORES=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --id-order) ID_ORDER=$2; shift 2 ;;
        *) break ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--bin PATH] [--stores \"sqlite sled postgres\"] [--dir DIR] [--id-order ORDER] RECORDS..." >&2
    exit 2
fi
[[ -x "$BIN" ]] || { echo "error: $BIN not found (cargo build --release -p nango-sync-cli)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time (GNU time) is needed for the peak RSS" >&2; exit 1; }
command -v curl >/dev/null || { echo "error: curl is needed to change the dev-server's records" >&2; exit 1; }
if [[ -z "$DIR" ]]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/nango-sync-sizing.XXXXXX")
    trap 'rm -rf "$DIR"' EXIT
fi
mkdir -p "$DIR"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for n in "$@"; do
    port=$((20000 + RANDOM % 40000))
    while ! port_free "$port"; do port=$((20000 + RANDOM % 40000)); done
    "$BIN" dev-server --listen "127.0.0.1:$port" --records "$n" --model Ticket --id-order "$ID_ORDER" >"$DIR/dev.env" 2>"$DIR/dev.log" &
    dev=$!
    for _ in $(seq 1 600); do
        grep -q '^stream ' "$DIR/dev.env" 2>/dev/null && break
        kill -0 "$dev" 2>/dev/null || break
        sleep 0.5
    done
    grep -q '^stream ' "$DIR/dev.env" || { cat "$DIR/dev.log" >&2; kill "$dev"; exit 1; }
    export NANGO_HOST="http://127.0.0.1:$port"
    NANGO_SECRET_KEY=$(sed -n 's/^NANGO_SECRET_KEY=//p' "$DIR/dev.env")
    export NANGO_SECRET_KEY
    revision=0
    for store in $STORES; do
        case "$store" in
            sqlite) sink="sqlite://$DIR/sizing.db" ;;
            sled) sink="sled://$DIR/sizing-sled" ;;
            postgres)
                : "${NANGO_SYNC_TEST_POSTGRES_URL:?postgres needs NANGO_SYNC_TEST_POSTGRES_URL: run under scripts/pg.sh}"
                sink="$NANGO_SYNC_TEST_POSTGRES_URL?schema=nango_sync_sizing" ;;
            *) echo "error: unknown store $store" >&2; kill "$dev"; exit 2 ;;
        esac
        for pass in sync no-change update; do
            if [[ "$pass" == update ]]; then
                # Every record changes upstream (a revision of its own per store: the
                # next store's first sync reads this one's).
                revision=$((revision + 1))
                curl -sf -X POST "$NANGO_HOST/_fake/regenerate" \
                    -H "Authorization: Bearer $NANGO_SECRET_KEY" -H 'Content-Type: application/json' \
                    -d "{\"integration\":\"demo-crm\",\"connection\":\"acme\",\"model\":\"Ticket\",\"count\":$n,\"revision\":$revision,\"id_order\":\"$ID_ORDER\"}" \
                    >/dev/null || { echo "error: the dev-server did not regenerate its records" >&2; kill "$dev"; exit 1; }
            fi
            /usr/bin/time -v -o "$DIR/time.txt" "$BIN" sync --sink "$sink" \
                --integration demo-crm --connection acme --model Ticket >/dev/null 2>"$DIR/sync.log" \
                || { cat "$DIR/sync.log" >&2; kill "$dev"; exit 1; }
            awk -v store="$store" -v n="$n" -v pass="$pass" '
                /Elapsed \(wall clock\)/ { split($NF, t, ":"); s = (length(t) == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
                /Maximum resident set size/ { rss = $NF / 1024 }
                END { printf "%s %s %s %.1f %.0f %.0f\n", store, pass, n, s, (pass != "no-change" && s > 0) ? n / s : 0, rss }
            ' "$DIR/time.txt"
        done
        case "$store" in
            sqlite) rm -f "$DIR/sizing.db" "$DIR/sizing.db-wal" "$DIR/sizing.db-shm" ;;
            sled) rm -rf "$DIR/sizing-sled" ;;
            postgres)
                psql=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1)
                PGOPTIONS="-c client_min_messages=warning" "$psql" "$NANGO_SYNC_TEST_POSTGRES_URL" -qc 'DROP SCHEMA IF EXISTS nango_sync_sizing CASCADE' >/dev/null ;;
        esac
    done
    kill "$dev"
    wait "$dev" 2>/dev/null || true
done
