//! The SQLite schema: versioned migrations (`migrations/NNNN_name.sql`), applied when a
//! file is opened.
//!
//! `nango_meta` holds the schema version and the store's last commit sequence number;
//! the store creates it before reading the version, then applies, in one `BEGIN
//! IMMEDIATE` transaction, every migration newer than the file. The version is read
//! again inside that transaction, so two processes opening a new file at once migrate
//! it once. A file written by a newer nango-sync is refused.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::BACKEND;
use super::error::sql_err;
use crate::error::{Error, Result};

/// The migrations: version, SQL. The last version is the current schema.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_records_rowid.sql")),
    (3, include_str!("migrations/0003_change_feed.sql")),
    (4, include_str!("migrations/0004_run_history.sql")),
    (5, include_str!("migrations/0005_outbox.sql")),
    (6, include_str!("migrations/0006_feed_per_commit.sql")),
    (7, include_str!("migrations/0007_seen_live.sql")),
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Bring the file to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let err = |e| sql_err("migrate the schema", e);
    if schema_version(conn).map_err(err)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS nango_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .map_err(err)?;
    let current = schema_version(&tx).map_err(err)?.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::store(
            BACKEND,
            "open",
            false,
            format!(
                "the database has schema version {current}, newer than this nango-sync ({SCHEMA_VERSION}); upgrade nango-sync"
            ),
        ));
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql).map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO nango_meta (key, value) VALUES ('schema_version', ?1)",
            [version],
        )
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}

/// The schema version the file records; `None` for a new file.
pub(super) fn schema_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nango_meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM nango_meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .optional()
}
