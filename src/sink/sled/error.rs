//! The sled store's one error mapping: sled errors and corrupt values into
//! [`Error::Store`].

use std::fmt;

use super::BACKEND;
use crate::error::Error;

/// Map a sled error of `operation` (sled's I/O errors are not retried: a broken disk
/// does not heal between attempts).
pub(super) fn sled_err(operation: &'static str) -> impl Fn(::sled::Error) -> Error {
    move |e| Error::store(BACKEND, operation, false, e)
}

/// A value that does not decode: the store was damaged, or written by something else.
pub(super) fn corrupt(what: impl fmt::Display) -> Error {
    Error::store(BACKEND, "read", false, format!("corrupt store: {what}"))
}

/// A blocking task that panicked or was cancelled.
pub(super) fn task_err(operation: &'static str, e: tokio::task::JoinError) -> Error {
    Error::store(BACKEND, operation, false, format!("task failed: {e}"))
}
