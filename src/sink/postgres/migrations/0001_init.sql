-- nango-sync PostgreSQL store, migration 1: streams, records and the commit sequence.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
-- Timestamps are microseconds since the Unix epoch (bigint), exactly as the library
-- holds them; text that must sort like the other stores uses COLLATE "C" (code points).

CREATE TABLE {schema}.streams (
    stream_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 of the four key fields, each length-prefixed: a fixed-size unique key
    -- whatever the length of the fields.
    key_hash         bytea NOT NULL UNIQUE,
    integration      text COLLATE "C" NOT NULL,
    connection       text COLLATE "C" NOT NULL,
    model            text COLLATE "C" NOT NULL,
    variant          text COLLATE "C" NOT NULL,
    cursor           text,
    generation       bigint NOT NULL DEFAULT 0,
    full_read        bigint,
    added            bigint NOT NULL DEFAULT 0,
    updated          bigint NOT NULL DEFAULT 0,
    deleted          bigint NOT NULL DEFAULT 0,
    unchanged        bigint NOT NULL DEFAULT 0,
    stale            bigint NOT NULL DEFAULT 0,
    live_records     bigint NOT NULL DEFAULT 0,
    deleted_records  bigint NOT NULL DEFAULT 0,
    last_run         jsonb,
    upstream_error   text
);

CREATE TABLE {schema}.records (
    -- No foreign key to streams: the store always creates the stream row first, in the
    -- same transaction, and a per-row referential check would slow every page write.
    stream_id        bigint NOT NULL,
    id               text COLLATE "C" NOT NULL,
    payload          jsonb NOT NULL,
    first_seen_at    bigint NOT NULL,
    last_modified_at bigint NOT NULL,
    last_action      smallint NOT NULL, -- 1 ADDED, 2 UPDATED, 3 DELETED
    deleted_at       bigint,
    pruned_at        bigint,
    cursor           text NOT NULL,
    deleted          boolean NOT NULL,  -- a tombstone (deleted_at set or last_action DELETED)
    seq              bigint NOT NULL,   -- the commit that last changed the record
    seen_generation  bigint NOT NULL,   -- the last full re-read that saw it
    PRIMARY KEY (stream_id, id)
);

-- The store's commit counter: one row, locked by each commit, so sequence numbers are
-- gap-free and in commit order.
CREATE TABLE {schema}.commit_seq (
    one              boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq              bigint NOT NULL
);
INSERT INTO {schema}.commit_seq (one, seq) VALUES (true, 0);
