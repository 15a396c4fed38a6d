-- nango-sync SQLite store, schema 4: the run history.
-- One row per recorded run, the last N of each stream (the store prunes older ones in
-- the transaction that records a run). `run_seq` is the order of recording, store-wide;
-- `run` is the whole run summary as JSON (what the library reads back); the columns
-- beside it are for people querying the file. The stream row also keeps its last
-- successful run, so the lag is known even when the history holds only failed runs.

CREATE TABLE nango_runs (
    run_seq     INTEGER PRIMARY KEY,
    stream_id   INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    instance    TEXT NOT NULL DEFAULT '',
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('ok', 'error', 'interrupted')),
    run         TEXT NOT NULL
);
CREATE INDEX nango_runs_stream ON nango_runs (stream_id, run_seq);

ALTER TABLE nango_streams ADD COLUMN last_success TEXT;

-- The last run each stream kept so far becomes the first entry of its history.
INSERT INTO nango_runs (stream_id, run_id, instance, started_at, finished_at, outcome, run)
    SELECT stream_id, '00000000-0000-0000-0000-000000000000', '',
           coalesce(CAST(round((julianday(json_extract(last_run, '$.started_at')) - 2440587.5)
                               * 86400000000.0) AS INTEGER), 0),
           coalesce(CAST(round((julianday(json_extract(last_run, '$.finished_at')) - 2440587.5)
                               * 86400000000.0) AS INTEGER), 0),
           CASE WHEN json_extract(last_run, '$.error') IS NULL THEN 'ok'
                WHEN json_extract(last_run, '$.error') LIKE 'stopped by shutdown%' THEN 'interrupted'
                ELSE 'error' END,
           last_run
    FROM nango_streams WHERE last_run IS NOT NULL ORDER BY stream_id;
UPDATE nango_streams SET last_success = last_run
    WHERE last_run IS NOT NULL AND json_extract(last_run, '$.error') IS NULL;
