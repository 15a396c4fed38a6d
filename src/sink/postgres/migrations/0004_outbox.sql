-- nango-sync PostgreSQL store, migration 4: the outbox (actions to deliver to Nango).
-- `{schema}` is replaced by the validated, quoted schema name; nothing else is.
-- An application may insert items itself, inside its own transaction (the transactional
-- outbox pattern): only integration, connection and action are required, every other
-- column has a default. Timestamps are microseconds since the Unix epoch. The columns
-- are documented in the library's `sink::outbox` module and the README.

CREATE TABLE {schema}.outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integration      text NOT NULL,
    connection       text NOT NULL,
    action           text NOT NULL,
    input            jsonb,
    idempotency_key  text UNIQUE,
    then_sync        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(then_sync) = 'array'),
    max_attempts     integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    available_at     bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    updated_at       bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    lease_until      bigint,
    worker           text,
    output           jsonb,
    error            jsonb,
    finished_at      bigint
);

-- What a claim scans: the items not finished, in id order.
CREATE INDEX outbox_queue ON {schema}.outbox (id) WHERE state IN ('pending', 'running');
