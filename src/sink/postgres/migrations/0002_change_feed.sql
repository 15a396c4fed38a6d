-- nango-sync PostgreSQL store, migration 2: the change feed.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
--
-- Each record keeps the kind of its last change next to `seq` (the commit that made
-- it): 1 added, 2 updated, 3 deleted. Records written before this migration have NULL
-- and are read with a kind derived from their metadata (3 for a tombstone, else 1 when
-- Nango's last_action is ADDED, else 2), so the migration rewrites no row.
-- The index on (seq, id) serves the feed's reads: the newest changes are found without
-- a scan, and a reader resumes inside a large commit by id. Building it reads the whole
-- table once, inside the migration's transaction.
-- Named consumers keep their position: after every change up to commit `seq`, or,
-- with `id`, up to that record of commit `seq`.

ALTER TABLE {schema}.records ADD COLUMN change_kind smallint;
CREATE INDEX records_feed ON {schema}.records (seq, id);

CREATE TABLE {schema}.consumers (
    name             text COLLATE "C" PRIMARY KEY,
    seq              bigint NOT NULL,
    id               text COLLATE "C",
    updated_at       timestamptz NOT NULL DEFAULT now()
);
