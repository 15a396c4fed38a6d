-- nango-sync SQLite store, schema 2: records in a rowid table.
-- Schema 1 kept records in a `WITHOUT ROWID` table clustered on (stream_id, id): rows of
-- a few hundred bytes made every insert at a random key split pages. Records now live
-- in a rowid table (new rows are appended, whatever their id) with a unique index on
-- the key; `record_id` is internal and never shown. The rows are copied over.

DROP VIEW IF EXISTS nango_records_view;
ALTER TABLE nango_records RENAME TO nango_records_v1;

CREATE TABLE nango_records (
    record_id INTEGER PRIMARY KEY,
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
    seq INTEGER NOT NULL
);
CREATE UNIQUE INDEX nango_records_key ON nango_records (stream_id, id);

INSERT INTO nango_records (stream_id, id, payload, first_seen_at, last_modified_at, last_action,
                           deleted_at, pruned_at, cursor, seen_gen, seq)
    SELECT stream_id, id, payload, first_seen_at, last_modified_at, last_action,
           deleted_at, pruned_at, cursor, seen_gen, seq
    FROM nango_records_v1 ORDER BY stream_id, id;
DROP TABLE nango_records_v1;

CREATE VIEW nango_records_view AS
    SELECT s.integration, s.connection, s.model, s.variant, r.id, r.payload,
           r.last_action IN (3) OR r.deleted_at IS NOT NULL AS deleted,
           r.last_modified_at, r.seq
    FROM nango_records r JOIN nango_streams s ON s.stream_id = r.stream_id;
