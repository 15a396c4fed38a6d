-- nango-sync PostgreSQL store, migration 9: the change feed's id lists stored without
-- compression.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
--
-- A commit's list of 1,000 ids (about 40 kB) is stored out of line (TOAST). PostgreSQL
-- first tried to compress it with pglz, which costs about 0.8 ms per list and, on ids
-- such as UUIDs, saves nothing: 200 lists took 16 MB either way, and 166 ms to insert
-- compressed against 22-28 ms uncompressed. It applies to lists written from now on.
ALTER TABLE {schema}.feed_commits ALTER COLUMN ids SET STORAGE EXTERNAL;
