-- nango-sync SQLite store, schema 7: the sweep's shortcut (see the library's
-- `sink::seen`). Each stream may keep the count of its live records stamped with a
-- generation (`seen_gen`), both NULL while not known exactly; existing streams start
-- without one, and are swept by a scan once, as before.

ALTER TABLE nango_streams ADD COLUMN seen_live_generation INTEGER;
ALTER TABLE nango_streams ADD COLUMN seen_live_count INTEGER;
