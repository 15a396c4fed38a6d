-- nango-sync PostgreSQL store, migration 5: the change feed indexed per commit.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
--
-- Migration 2 indexed `records (seq, id)`: every change of a record changed an indexed
-- column, so no update of `records` could be HOT and each one added an entry to every
-- index of the table. Instead, each commit that changes records writes its ids once, in
-- `feed_commits`: one row per chunk of at most 1,000 ids (sorted, byte order), keyed
-- (seq, chunk), with the stream they belong to. Chunk 0 also holds `live`, the number of
-- the commit's records whose `seq` is still this commit; a later commit that changes
-- them decrements it, and deletes the commit's rows when it reaches 0. A reader walks
-- the rows in order and skips an id whose record's `seq` has moved on.
--
-- The rows are built here from the records (grouped by `seq`), and the old index is
-- dropped, in the migration's one transaction (interrupted, it leaves migration 4's
-- schema, and the next open runs it again).

CREATE TABLE {schema}.feed_commits (
    seq              bigint NOT NULL,
    chunk            integer NOT NULL,
    stream_id        bigint NOT NULL,
    ids              text[] COLLATE "C" NOT NULL,
    live             integer,           -- chunk 0 only
    PRIMARY KEY (seq, chunk)
);

INSERT INTO {schema}.feed_commits (seq, chunk, stream_id, ids, live)
SELECT seq, chunk, min(stream_id), array_agg(id ORDER BY id COLLATE "C"),
       CASE WHEN chunk = 0 THEN min(total)::int END
FROM (
    SELECT seq, stream_id, id,
           ((row_number() OVER (PARTITION BY seq ORDER BY id COLLATE "C")) - 1) / 1000 AS chunk,
           count(*) OVER (PARTITION BY seq) AS total
    FROM {schema}.records
) x
GROUP BY seq, chunk;

DROP INDEX {schema}.records_feed;
