//! The sled store's one error mapping: sled errors and corrupt values into
//! [`Error::Store`], or [`Error::Damaged`] when the store cannot be read as it is.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::BACKEND;
use crate::error::Error;

/// Map a sled error of `operation`: corruption is [`Error::Damaged`], anything else a
/// store error (sled's I/O errors are not retried: a broken disk does not heal between
/// attempts).
pub(super) fn sled_error(operation: impl Into<String>, e: ::sled::Error) -> Error {
    match e {
        ::sled::Error::Corruption { .. } => Error::damaged(BACKEND, operation, e.to_string()),
        e => Error::store(BACKEND, operation, false, e),
    }
}

/// [`sled_error`] for a `map_err`.
pub(super) fn sled_err(operation: &'static str) -> impl Fn(::sled::Error) -> Error {
    move |e| sled_error(operation, e)
}

/// A value that does not decode: the store was damaged, or written by something else.
pub(super) fn corrupt(what: impl fmt::Display) -> Error {
    Error::damaged(BACKEND, "read", format!("corrupt store: {what}"))
}

/// The directory's lock was still held by another process (or handle) after `wait`
/// (retryable: the other one may finish).
pub(super) fn lock_held(path: &Path, wait: Duration) -> Error {
    Error::store(
        BACKEND,
        format!("open sled database at {}", path.display()),
        true,
        format!(
            "another process uses the store (sled allows one process at a time; waited {} ms for its lock on {})",
            wait.as_millis(),
            path.join("db").display()
        ),
    )
}

/// A blocking task that panicked or was cancelled.
pub(super) fn task_err(operation: &'static str, e: tokio::task::JoinError) -> Error {
    Error::store(BACKEND, operation, false, format!("task failed: {e}"))
}
