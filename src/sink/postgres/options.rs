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
    pub(super) faults: Faults,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            acquire_timeout: Duration::from_secs(30),
            read_only: false,
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

    crate::sink::fault::with_faults_option!();
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
