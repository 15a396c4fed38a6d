-- nango-sync PostgreSQL store, migration 10: the commit that last changed each stream.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
--
-- Every commit sets `last_seq` to its own number (`commit_seq`) when it writes the
-- stream's row. A read of the stream's stored versions made outside a commit's
-- transaction (the next page's, read while the current page commits) is used by that
-- commit only if the stream's `last_seq` shows that no other commit changed the stream
-- since the read (see `prefetch.rs`). 0: no commit since this migration.
ALTER TABLE {schema}.streams ADD COLUMN last_seq bigint NOT NULL DEFAULT 0;
