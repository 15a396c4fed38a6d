-- nango-sync SQLite store, schema 3: the change feed.
--
-- Each record keeps the kind of its last change next to `seq` (the commit that made
-- it): 1 added, 2 updated, 3 deleted. Records written before this schema have NULL and
-- are read with a kind derived from their metadata (3 for a tombstone, else 1 when
-- Nango's last_action is ADDED, else 2), so the migration rewrites no record.
-- The index on (seq, id) serves the feed's reads: the newest changes are found without
-- a scan, and a reader resumes inside a large commit by id.
-- Streams keep their live and deleted record counts (counted once here, then kept by
-- every commit), so counting a stream scans nothing.
-- Named consumers keep their position: after every change up to commit `seq`, or,
-- with `id`, up to that record of commit `seq`.

ALTER TABLE nango_records ADD COLUMN change_kind INTEGER;
CREATE INDEX IF NOT EXISTS nango_records_feed ON nango_records (seq, id);

ALTER TABLE nango_streams ADD COLUMN live_records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nango_streams ADD COLUMN deleted_records INTEGER NOT NULL DEFAULT 0;
UPDATE nango_streams SET
    live_records = (SELECT count(*) FROM nango_records r
                    WHERE r.stream_id = nango_streams.stream_id
                      AND r.deleted_at IS NULL AND r.last_action != 3),
    deleted_records = (SELECT count(*) FROM nango_records r
                       WHERE r.stream_id = nango_streams.stream_id
                         AND (r.deleted_at IS NOT NULL OR r.last_action = 3));

CREATE TABLE IF NOT EXISTS nango_consumers (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    id TEXT,
    updated_at INTEGER NOT NULL
);

DROP VIEW IF EXISTS nango_records_view;
CREATE VIEW nango_records_view AS
    SELECT s.integration, s.connection, s.model, s.variant, r.id, r.payload,
           r.last_action IN (3) OR r.deleted_at IS NOT NULL AS deleted,
           r.last_modified_at, r.seq,
           CASE COALESCE(r.change_kind,
                         CASE WHEN r.deleted_at IS NOT NULL OR r.last_action = 3 THEN 3
                              WHEN r.last_action = 1 THEN 1 ELSE 2 END)
               WHEN 1 THEN 'added' WHEN 2 THEN 'updated' ELSE 'deleted' END AS change
    FROM nango_records r JOIN nango_streams s ON s.stream_id = r.stream_id;
