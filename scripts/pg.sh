#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server.
#
#   scripts/pg.sh COMMAND [ARGS...]
#
# Starts a fresh PostgreSQL (15 preferred; PG_BIN=/path/to/bin to choose) in a temporary
# directory, listening on 127.0.0.1 at a free port, with fsync off (it is thrown away),
# exports NANGO_SYNC_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres and
# NANGO_SYNC_TEST_PG_RESTART (a shell command line that restarts the server, `pg_ctl
# restart -m fast`, for tests of a restart in the middle of a sync), runs
# the command, then stops the server and deletes its files, also when the command fails
# or is interrupted. Exits with the command's exit status. Fails loudly when PostgreSQL
# is not installed (Debian/Ubuntu: apt-get install postgresql).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$newest" && -x "$newest/initdb" ]]; then
        echo "$newest"
        return
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
}

PG_BIN=$(find_pg_bin)
for tool in initdb pg_ctl postgres; do
    if [[ -z "$PG_BIN" || ! -x "$PG_BIN/$tool" ]]; then
        echo "error: PostgreSQL server binaries not found (looked for $tool in PG_BIN, /usr/lib/postgresql/*/bin and PATH)." >&2
        echo "       The PostgreSQL tests need a server: install PostgreSQL 15 (apt-get install postgresql-15) or set PG_BIN." >&2
        exit 1
    fi
done

# PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
if [[ $(id -u) -eq 0 ]]; then
    if ! id postgres >/dev/null 2>&1; then
        echo "error: running as root but there is no 'postgres' user to run the server as" >&2
        exit 1
    fi
    as_pg() { runuser -u postgres -- "$@"; }
    PG_USER_OWNER=postgres
    AS_PG_PREFIX="runuser -u postgres --"
else
    as_pg() { "$@"; }
    PG_USER_OWNER=
    AS_PG_PREFIX=
fi

PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/nango-sync-pg.XXXXXX")
chmod 755 "$PG_TMP"
mkdir -p "$PG_TMP/data" "$PG_TMP/socket"
if [[ -n "$PG_USER_OWNER" ]]; then
    chown -R "$PG_USER_OWNER" "$PG_TMP"
fi
chmod 700 "$PG_TMP/data"

STARTED=0
cleanup() {
    local rc=$?
    if [[ $STARTED -eq 1 ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_pg "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync \
    >"$PG_TMP/initdb.log" 2>&1 || { cat "$PG_TMP/initdb.log" >&2; echo "error: initdb failed" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for attempt in 1 2 3 4 5 6 7 8 9 10; do
    PORT=$((20000 + RANDOM % 40000))
    port_free "$PORT" || continue
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 start \
        -o "-p $PORT -k $PG_TMP/socket -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        >/dev/null 2>&1; then
        STARTED=1
        break
    fi
    # Port taken in between, or another failure: show the log if it was the last attempt.
    if [[ $attempt -eq 10 ]]; then
        cat "$PG_TMP/server.log" >&2 || true
    fi
done
if [[ $STARTED -ne 1 ]]; then
    echo "error: could not start PostgreSQL (see the log above)" >&2
    exit 1
fi

export NANGO_SYNC_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
export NANGO_SYNC_TEST_PG_RESTART="$AS_PG_PREFIX $PG_BIN/pg_ctl -D $PG_TMP/data -l $PG_TMP/server.log -w -t 60 -m fast restart"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (NANGO_SYNC_TEST_POSTGRES_URL is set)" >&2

set +e
"$@"
rc=$?
set -e
exit "$rc"
