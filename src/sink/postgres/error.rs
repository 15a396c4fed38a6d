//! The PostgreSQL store's one error mapping: sqlx errors into [`Error::Store`], with
//! what can succeed when tried again marked retryable, or [`Error::Damaged`] for
//! corruption the server reports.

use super::BACKEND;
use crate::error::Error;

/// Classify a sqlx error: retryable when trying again can succeed; data or index
/// corruption reported by the server (XX001, XX002) is [`Error::Damaged`].
pub(super) fn classify(operation: impl Into<String>, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e
        && db.code().is_some_and(|c| c == "XX001" || c == "XX002")
    {
        return Error::damaged(BACKEND, operation, db.message().to_string());
    }
    let retryable = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| retryable_sqlstate(&code)),
        _ => false,
    };
    Error::store(BACKEND, operation, retryable, e)
}

/// Serialization failure, deadlock, too many connections, shutdowns, connection
/// exceptions (class 08).
fn retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

/// Whether a database error is "undefined table" or "undefined column" (42P01, 42703):
/// a table of the store is missing or altered.
pub(super) fn is_missing_table_or_column(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "42P01" || c == "42703"))
}

/// A row that does not decode into what the store wrote.
pub(super) fn decode(e: sqlx::Error) -> Error {
    Error::store(BACKEND, "decode row", false, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes() {
        for code in ["40001", "40P01", "53300", "57P01", "08006"] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }
}
