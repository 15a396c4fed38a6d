//! The SQLite store's one error mapping: rusqlite errors into [`Error::Store`], busy and
//! locked databases retryable, or [`Error::Damaged`] for a file that is not a database
//! or is corrupt.

use crate::error::Error;

use super::BACKEND;

/// Classify a rusqlite error: a busy or locked database is retryable; a full disk and a
/// lock held by another process say so; a file that is not a database, or a corrupt one,
/// is [`Error::Damaged`].
pub(super) fn sql_err(operation: &str, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        )
    {
        return Error::damaged(BACKEND, operation, e.to_string());
    }
    let retryable = busy_or_locked(&e);
    let detail = match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            format!(
                "{e} (the disk is full: free space and retry; the store keeps its last committed state)"
            )
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            format!("{e} (another process holds a lock on the database)")
        }
        _ => e.to_string(),
    };
    Error::store(BACKEND, operation, retryable, detail)
}

/// The database was busy or locked: worth retrying.
pub(super) fn busy_or_locked(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A blocking task that panicked or was cancelled.
pub(super) fn task_err(operation: &str, e: tokio::task::JoinError) -> Error {
    Error::store(BACKEND, operation, false, format!("the task failed: {e}"))
}
