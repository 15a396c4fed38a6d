-- nango-sync SQLite store, schema 6: the change feed indexed per commit.
--
-- Schema 3 indexed `nango_records (seq, id)`: every change of a record also moved its
-- entry in that index (a delete and an insert in a second B-tree). Instead, each commit
-- that changes records writes their ids once, in `nango_feed_commits`: one row per chunk
-- of at most 1,000 ids (a JSON array, sorted in byte order), keyed by
-- `seq * 1048576 + chunk` (so rows iterate in commit order, then chunk order), with the
-- stream they belong to. Chunk 0 also holds `live`, the number of the commit's records
-- whose `seq` is still this commit; a later commit that changes them decrements it, and
-- deletes the commit's rows when it reaches 0. A reader walks the rows in key order and
-- skips an id whose record's `seq` has moved on.
--
-- The rows are built here from the records (grouped by `seq`), and the old index is
-- dropped, in the migration's one transaction.

CREATE TABLE nango_feed_commits (
    key INTEGER PRIMARY KEY,            -- seq * 1048576 + chunk
    stream_id INTEGER NOT NULL,
    ids TEXT NOT NULL,                  -- JSON array of record ids, byte order
    live INTEGER                        -- chunk 0 only
);

INSERT INTO nango_feed_commits (key, stream_id, ids, live)
SELECT seq * 1048576 + chunk, min(stream_id), json_group_array(id ORDER BY id),
       CASE WHEN chunk = 0 THEN min(total) END
FROM (
    SELECT seq, stream_id, id,
           (row_number() OVER (PARTITION BY seq ORDER BY id) - 1) / 1000 AS chunk,
           count(*) OVER (PARTITION BY seq) AS total
    FROM nango_records
)
GROUP BY seq, chunk;

DROP INDEX IF EXISTS nango_records_feed;
