-- nango-sync PostgreSQL store, migration 3: the run history.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
-- One row per recorded run, the last N of each stream (the store prunes older ones in
-- the transaction that records a run). `run_seq` is the order of recording; `run` is
-- the whole run summary (what the library reads back), the columns beside it are for
-- queries. The stream row also keeps its last successful run.

CREATE TABLE {schema}.runs (
    run_seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id    bigint NOT NULL,
    run_id       text NOT NULL,
    instance     text NOT NULL DEFAULT '',
    started_at   bigint NOT NULL,
    finished_at  bigint NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('ok', 'error', 'interrupted')),
    run          jsonb NOT NULL
);
CREATE INDEX runs_stream ON {schema}.runs (stream_id, run_seq);

ALTER TABLE {schema}.streams ADD COLUMN last_success jsonb;

-- The last run each stream kept so far becomes the first entry of its history.
INSERT INTO {schema}.runs (stream_id, run_id, instance, started_at, finished_at, outcome, run)
    SELECT stream_id, '00000000-0000-0000-0000-000000000000', '',
           coalesce((extract(epoch FROM (last_run->>'started_at')::timestamptz) * 1000000)::bigint, 0),
           coalesce((extract(epoch FROM (last_run->>'finished_at')::timestamptz) * 1000000)::bigint, 0),
           CASE WHEN last_run->>'error' IS NULL THEN 'ok'
                WHEN last_run->>'error' LIKE 'stopped by shutdown%' THEN 'interrupted'
                ELSE 'error' END,
           last_run
    FROM {schema}.streams WHERE last_run IS NOT NULL ORDER BY stream_id;
UPDATE {schema}.streams SET last_success = last_run
    WHERE last_run IS NOT NULL AND last_run->>'error' IS NULL;
