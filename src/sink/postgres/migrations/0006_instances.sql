-- nango-sync PostgreSQL store, migration 6: several instances on one store.
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
-- Times are the server's (`clock_timestamp()`), so instances need no synchronized
-- clocks.

-- The live instances: each renews its row (its heartbeat) while it lives; a row whose
-- `expires_at` passed belongs to a dead instance.
CREATE TABLE {schema}.instances (
    instance_id   text COLLATE "C" PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz NOT NULL
);

-- One lease per stream: the instance that runs it, until `expires_at`. `token` (the
-- fencing token) grows by one each time the lease changes hands; every commit of a
-- leased run checks holder, token and expiry inside its transaction.
CREATE TABLE {schema}.leases (
    key_hash      bytea PRIMARY KEY,
    integration   text COLLATE "C" NOT NULL,
    connection    text COLLATE "C" NOT NULL,
    model         text COLLATE "C" NOT NULL,
    variant       text COLLATE "C" NOT NULL,
    holder        text COLLATE "C" NOT NULL,
    token         bigint NOT NULL CHECK (token >= 1),
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);

CREATE INDEX leases_holder ON {schema}.leases (holder);

-- The permits taken in each of Nango's rate-limit windows by every instance of one
-- account (`account`: the Nango host), keyed by the window's end as Nango states it
-- (`X-RateLimit-Reset`, epoch seconds), so that instances together stay within the
-- account's limit.
CREATE TABLE {schema}.rate_windows (
    account       text COLLATE "C" NOT NULL,
    window_reset  bigint NOT NULL,
    used          integer NOT NULL,
    PRIMARY KEY (account, window_reset)
);
