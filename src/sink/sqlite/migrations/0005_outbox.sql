-- nango-sync SQLite store, schema 5: the outbox (actions to deliver to Nango).
-- An application may insert items itself, inside its own transaction (the transactional
-- outbox pattern): only integration, connection and action are required, every other
-- column has a default. Timestamps are microseconds since the Unix epoch. The columns
-- are documented in the library's `sink::outbox` module and the README.

CREATE TABLE nango_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    integration TEXT NOT NULL,
    connection TEXT NOT NULL,
    action TEXT NOT NULL,
    input TEXT CHECK (input IS NULL OR json_valid(input)),
    idempotency_key TEXT UNIQUE,
    then_sync TEXT NOT NULL DEFAULT '[]'
        CHECK (json_valid(then_sync) AND json_type(then_sync) = 'array'),
    max_attempts INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    available_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    lease_until INTEGER,
    worker TEXT,
    output TEXT CHECK (output IS NULL OR json_valid(output)),
    error TEXT,
    finished_at INTEGER
);

-- What a claim scans: the items not finished, in id order.
CREATE INDEX nango_outbox_queue ON nango_outbox (id) WHERE state IN ('pending', 'running');
