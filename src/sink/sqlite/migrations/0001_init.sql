-- nango-sync SQLite store, schema 1: streams, records and the view for people reading
-- the file with sqlite3. `nango_meta` (schema version, last commit sequence number) is
-- created by the store before any migration, to read the version.
-- Timestamps are microseconds since the Unix epoch; last_action is 1 ADDED, 2 UPDATED,
-- 3 DELETED.

CREATE TABLE IF NOT EXISTS nango_streams (
    stream_id INTEGER PRIMARY KEY,
    integration TEXT NOT NULL,
    connection TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    cursor TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    full_read INTEGER,
    added INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    stale INTEGER NOT NULL DEFAULT 0,
    last_run TEXT,
    upstream_error TEXT,
    UNIQUE (integration, connection, model, variant)
);

CREATE TABLE IF NOT EXISTS nango_records (
    stream_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    payload TEXT NOT NULL,
    first_seen_at INTEGER NOT NULL,
    last_modified_at INTEGER NOT NULL,
    last_action INTEGER NOT NULL,
    deleted_at INTEGER,
    pruned_at INTEGER,
    cursor TEXT NOT NULL,
    seen_gen INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (stream_id, id)
) WITHOUT ROWID;

CREATE VIEW IF NOT EXISTS nango_records_view AS
    SELECT s.integration, s.connection, s.model, s.variant, r.id, r.payload,
           r.last_action IN (3) OR r.deleted_at IS NOT NULL AS deleted,
           r.last_modified_at, r.seq
    FROM nango_records r JOIN nango_streams s ON s.stream_id = r.stream_id;

INSERT OR IGNORE INTO nango_meta (key, value) VALUES ('last_seq', 0);
