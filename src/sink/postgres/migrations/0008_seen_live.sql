-- nango-sync PostgreSQL store, migration 8: the sweep's shortcut (see the library's
-- `sink::seen`).
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
--
-- Each stream may keep the count of its live records stamped with a generation
-- (`records.seen_generation`), both columns NULL while it is not known exactly. The
-- completing commit of a full read whose count covers every live record skips the
-- sweep's scan of the stream. Existing streams start without a count and are swept by
-- a scan once, as before; the scan sets it.
ALTER TABLE {schema}.streams
    ADD COLUMN seen_live_generation bigint,
    ADD COLUMN seen_live_count bigint;
