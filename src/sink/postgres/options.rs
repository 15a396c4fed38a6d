//! Options of the PostgreSQL store.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::sink::fault::Faults;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "nango_sync";

/// Options of a [`PostgresStore`](super::PostgresStore): `PostgresOptions::new()` then
/// `with_*`, passed to [`PostgresStore::connect_with`](super::PostgresStore::connect_with).
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub(super) schema: String,
    pub(super) pool_size: u32,
    pub(super) acquire_timeout: Duration,
    pub(super) read_only: bool,
    pub(super) fillfactor: Option<u8>,
    pub(super) faults: Faults,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            acquire_timeout: Duration::from_secs(30),
            read_only: false,
            fillfactor: None,
            faults: Faults::default(),
        }
    }
}

impl PostgresOptions {
    /// The defaults: schema [`DEFAULT_SCHEMA`], 8 connections, 30 s to acquire one.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the store's tables (created if missing). It must match
    /// `^[a-z_][a-z0-9_]{0,62}$` and not start with `pg_`;
    /// [`connect_with`](super::PostgresStore::connect_with) rejects other names.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The maximum number of connections of the pool (at least 1).
    pub fn with_pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long an operation waits for a connection (and the first connect may take).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Open an existing store without changing it: no schema is created or migrated
    /// (the schema must exist, at the version this nango-sync writes), and every session
    /// is read-only (`default_transaction_read_only`), so writes fail. For reading a store
    /// another process owns, or one being repaired.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// How full PostgreSQL fills the pages of the records table when it inserts rows,
    /// in percent (10 to 100), set on the table when the store connects. It applies to
    /// the pages written from then on (`VACUUM FULL` rewrites the others), and the
    /// table keeps it for every process: give all of a schema's stores the same value,
    /// or none (none leaves the table's as it is: 50 when the store created it).
    ///
    /// Half-full pages leave room to write an updated record beside its old version
    /// (a heap-only tuple: no index entry). `nango-sync bench` (100,000 records of
    /// about 740 bytes, 2 cores, 3 alternated rounds per value, 6 for 50) measured:
    ///
    /// | fillfactor | first sync, store/raw | update of every record, store/raw |
    /// |---:|---:|---:|
    /// | 50 (default) | 0.75-0.82 | 0.87-0.95 |
    /// | 70 | 0.84-0.86 | 0.73-0.80 |
    /// | 80 | 0.86-0.91 | 0.74-0.79 |
    /// | 100 | 0.84-0.93 | 0.72-0.74 |
    ///
    /// and a table half the size at 100. For models whose records are written once and
    /// rarely changed (events, messages, logs), 100 is the better choice. A read-only
    /// store refuses the option.
    pub fn with_fillfactor(mut self, percent: u8) -> Self {
        self.fillfactor = Some(percent);
        self
    }

    crate::sink::fault::with_faults_option!();
}

/// Check a fillfactor: PostgreSQL takes 10 to 100 for a table.
pub(super) fn validate_fillfactor(fillfactor: Option<u8>, read_only: bool) -> Result<()> {
    match fillfactor {
        Some(f) if !(10..=100).contains(&f) => Err(Error::invalid(
            "postgres fillfactor",
            format!("{f} is not a percentage from 10 to 100"),
        )),
        Some(_) if read_only => Err(Error::invalid(
            "postgres fillfactor",
            "a read-only store cannot set the records table's fillfactor",
        )),
        _ => Ok(()),
    }
}

/// Check a schema name: `^[a-z_][a-z0-9_]{0,62}$`, not reserved (`pg_*`).
pub(super) fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && schema.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Error::invalid(
            "postgres schema name",
            format!("{schema:?} must match ^[a-z_][a-z0-9_]{{0,62}}$"),
        ));
    }
    if schema.starts_with("pg_") {
        return Err(Error::invalid(
            "postgres schema name",
            format!("{schema:?}: names starting with pg_ are reserved"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fillfactors_are_validated() {
        for ok in [None, Some(10), Some(50), Some(100)] {
            assert!(validate_fillfactor(ok, false).is_ok(), "{ok:?}");
        }
        for bad in [Some(0), Some(9), Some(101), Some(255)] {
            let e = validate_fillfactor(bad, false).unwrap_err().to_string();
            assert!(e.contains("from 10 to 100"), "{e}");
        }
        assert!(validate_fillfactor(None, true).is_ok());
        let e = validate_fillfactor(Some(100), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("read-only"), "{e}");
    }

    #[test]
    fn schema_names_are_validated() {
        for ok in ["nango_sync", "_x", "a1", &"a".repeat(63)] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-b",
            "a\"b",
            "a b",
            "pg_x",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }
}
