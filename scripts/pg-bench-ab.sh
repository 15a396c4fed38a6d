#!/usr/bin/env bash
# Compare nango-sync binaries on the PostgreSQL store, in one sitting: `bench` runs of
# each binary, alternated, against one throwaway PostgreSQL (scripts/pg.sh) with
# pg_stat_statements loaded, so each run also reports the server's time per statement
# (time inside the server: with fsync off and the data cached, mostly CPU, though it
# still grows when other processes take the cores).
#
#   scripts/pg-bench-ab.sh [--rounds N] [--records N] NAME=BINARY [NAME=BINARY ...]
#   scripts/pg-bench-ab.sh --rounds 3 before=/tmp/bin-before after=target/release/nango-sync
#
# Prints one line per run: store, raw and engine records/s, fresh and update, their
# ratios, the feed reads, and the server's milliseconds in the statements of each
# schema (the store ceiling's, the raw ceiling's, the engine's with the feed reads;
# schema changes left out). The JSON of each run and its per-statement table are left
# in $PG_BENCH_OUT (default: a temporary directory, printed at the end).
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

rounds=3
records=100000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--rounds N] [--records N] NAME=BINARY [NAME=BINARY ...]" >&2
    exit 2
fi
runs=()
for nb in "$@"; do
    bin=${nb#*=}
    if [[ "$nb" != *=* || ! -x "$bin" ]]; then
        echo "error: $nb is not NAME=BINARY with an executable BINARY" >&2
        exit 2
    fi
    runs+=("${nb%%=*}=$(realpath "$bin")")
done
command -v psql >/dev/null || { echo "error: psql is needed (apt-get install postgresql-client)" >&2; exit 1; }

if [[ -z "${PG_BENCH_INNER:-}" ]]; then
    export PG_BENCH_OUT=${PG_BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/pg-bench-ab.XXXXXX")}
    PG_BENCH_INNER=1 exec "$(dirname "$self")/pg.sh" "$self" --rounds "$rounds" --records "$records" "${runs[@]}"
fi

url="$NANGO_SYNC_TEST_POSTGRES_URL"
psql -q "$url" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
eval "$NANGO_SYNC_TEST_PG_RESTART" >/dev/null
psql -q "$url" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null

out=$PG_BENCH_OUT
for round in $(seq 1 "$rounds"); do
    for nb in "${runs[@]}"; do
        name=${nb%%=*}
        bin=${nb#*=}
        psql -q "$url" -c "SELECT pg_stat_statements_reset()" >/dev/null
        if ! "$bin" bench --sink "$url" --records "$records" --json >"$out/$name.$round.json" 2>"$out/$name.$round.err"; then
            echo "$name round $round failed: $(tail -n 1 "$out/$name.$round.err")"
            continue
        fi
        # ms | calls | schema (`ceiling`: the store ceiling, `raw`, `engine`) | statement
        psql -qAt "$url" -F '|' -c "SELECT round(sum(total_exec_time)::numeric, 1), sum(calls), \
              coalesce(substring(query FROM 'nango_sync_bench_([a-z]+)'), '-'), \
              left(regexp_replace(query, '\s+', ' ', 'g'), 120) FROM pg_stat_statements \
              WHERE (query LIKE '%nango_sync_bench_%' OR query LIKE 'COPY%') \
                AND query !~* '^\s*(DROP|CREATE|ALTER|--)' GROUP BY 3, 4 ORDER BY 1 DESC" \
            >"$out/$name.$round.statements"
        server() { awk -F'|' -v k="$1" '$3 == k {s += $1} END {printf "%.0f", s}' "$out/$name.$round.statements"; }
        line=$(python3 - "$out/$name.$round.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
f, u = d["fresh"], d["update"]
rate = lambda p: p["records_per_second"]
print("fresh store %.0f raw %.0f store/raw %.2f engine %.0f ratio %.2f | update store %.0f raw %.0f store/raw %.2f engine %.0f ratio %.2f | feed all %.0f/s newest %.1f ms"
      % (rate(f["store"]), rate(f["raw"]), f["store_ratio"], rate(f["engine"]), f["ratio"],
         rate(u["store"]), rate(u["raw"]), u["store_ratio"], rate(u["engine"]), u["ratio"],
         rate(d["feed"]["all"]), d["feed"]["newest_p50_ms"]))
EOF
)
        echo "$name round $round: $line | server ms: ceiling $(server ceiling) raw $(server raw) engine $(server engine)"
    done
done
echo "runs and per-statement tables: $out"
