//! The crate's one public error type.
//!
//! Every fallible function of the library returns [`Error`]. Each variant carries the
//! context a user needs to act (which stream, which request, what Nango said), and
//! [`Error::is_retryable`] says whether trying again can help. Underlying library errors
//! (reqwest, rusqlite, sqlx, sled) are boxed so none of their types leak into the API.

use std::fmt;

use crate::page::PageError;

/// A boxed error from an underlying library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in nango-sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nango answered with an error status and (usually) its JSON error body.
    #[error("Nango answered {status} {code}{} to {request}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Nango {
        /// HTTP status code.
        status: u16,
        /// Nango's `error.code` (for example `unknown_connection`), or `http_error` when
        /// the body had none.
        code: String,
        /// Nango's `error.message`, and the messages of `error.errors[]` when present.
        message: Option<String>,
        /// What was requested, for example `GET /records (model=Ticket)`.
        request: String,
        /// Seconds to wait before retrying, from `Retry-After` (429 and 503 answers).
        retry_after: Option<u64>,
        /// Nango's `error.payload`, when the answer had one: the error data of an
        /// action's script (what it threw, or the provider's answer for a
        /// `script_http_error`), the parameters Nango did not find, a support id.
        payload: Option<Box<serde_json::Value>>,
    },

    /// The response was not JSON (for example an HTML page from a self-hosted web UI at
    /// a wrong URL).
    #[error(
        "{request}: expected a JSON answer but got status {status} with content type {content_type:?}: {snippet:?} (is the host URL right?)"
    )]
    NotJson {
        /// What was requested.
        request: String,
        /// HTTP status code.
        status: u16,
        /// The `Content-Type` header, or empty when absent.
        content_type: String,
        /// The start of the body.
        snippet: String,
    },

    /// The request could not be sent or its answer could not be read (connection refused,
    /// reset, timeout, TLS error).
    #[error("{request}: {kind}: {source}")]
    Transport {
        /// What was requested.
        request: String,
        /// What kind of failure this was.
        kind: TransportKind,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A page of records could not be understood.
    #[error("malformed page from {request}: {source}")]
    MalformedPage {
        /// What was requested (the stream and the cursor it was read from).
        request: String,
        /// What was wrong, naming the record when it is known.
        #[source]
        source: PageError,
    },

    /// An async action was not finished within the time given to wait for it (Nango
    /// answers `GET /action/{id}` with 404 until it is; see
    /// [`NangoClient::wait_action`](crate::NangoClient::wait_action)).
    #[error("action {id} was not finished after {waited_ms} ms of waiting")]
    ActionNotFinished {
        /// The async action's id.
        id: String,
        /// Time spent waiting, in milliseconds.
        waited_ms: u64,
    },

    /// Retries were exhausted; the last error is attached.
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// Time spent, in milliseconds.
        elapsed_ms: u64,
        /// The last attempt's error.
        last: Box<Error>,
    },

    /// A store operation failed.
    #[error("{backend} store: {operation} failed: {source}")]
    Store {
        /// `sqlite`, `sled`, `postgres` or `memory`.
        backend: &'static str,
        /// What was being done.
        operation: String,
        /// Whether trying again can succeed (busy database, lost connection, ...).
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A store exists but is damaged: its files (or, for PostgreSQL, its tables) cannot
    /// be read as they are, so the store cannot be opened or used. Nothing fixes it in
    /// place; [`crate::repair`] moves it aside (it is kept, never deleted) and rebuilds
    /// it by a full re-read from Nango.
    #[error("{backend} store: {operation} failed: the store is damaged: {detail}")]
    Damaged {
        /// `sqlite`, `sled` or `postgres`.
        backend: &'static str,
        /// What was being done, naming the store's file, directory or schema.
        operation: String,
        /// What is wrong.
        detail: String,
    },

    /// A commit expected the stream to be at one cursor but the store holds another:
    /// another writer moved the stream.
    #[error(
        "cursor conflict on stream {stream}: expected {expected:?}, the store holds {actual:?}"
    )]
    CursorConflict {
        /// The stream.
        stream: String,
        /// The cursor the commit expected.
        expected: Option<String>,
        /// The cursor in the store.
        actual: Option<String>,
    },

    /// A commit was fenced off: the committing instance no longer holds the stream's
    /// lease with the fencing token the commit carries (its lease ran out and another
    /// instance took the stream over). Nothing of the commit was written; the run stops
    /// (not retryable: the stream belongs to another instance now).
    #[error(
        "stream {stream}: the commit of instance {instance:?} was refused: it no longer holds the stream's lease with fencing token {token} (another instance took the stream over); nothing was written"
    )]
    LeaseLost {
        /// The stream.
        stream: String,
        /// The instance that committed.
        instance: String,
        /// The fencing token the commit carried.
        token: u64,
    },

    /// An invalid argument or configuration value.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was invalid (for example `sink URL`, `model name`).
        what: &'static str,
        /// Why.
        detail: String,
    },

    /// A sink URL names a backend that was not compiled in.
    #[error(
        "the {scheme}:// sink needs the `{feature}` cargo feature of nango-sync, which is not enabled in this build"
    )]
    FeatureDisabled {
        /// The URL scheme.
        scheme: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },

    /// A stored record's payload does not deserialize into the application's type (a
    /// typed read such as [`RecordSink::get_as`](crate::RecordSink::get_as)).
    #[error("record {id:?} of stream {stream} does not deserialize into {type_name}: {source}")]
    Deserialize {
        /// The record's stream.
        stream: String,
        /// The record id.
        id: String,
        /// The type asked for.
        type_name: &'static str,
        /// What did not fit.
        #[source]
        source: BoxError,
    },

    /// A sync run failed for one stream; the cause is attached.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
}

/// The code of a script that threw Nango's `ActionError`: a failure the script chose,
/// which trying again repeats.
const PERMANENT_SCRIPT_ERROR: &str = "action_script_runtime_error";

/// The kind of an [`Error::Transport`] failure: whether the request could be sent at
/// all, and how it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// Could not connect.
    Connect,
    /// The request or the body read timed out.
    Timeout,
    /// The connection broke while sending or reading.
    Io,
    /// The request could not be built (bad header value, bad URL).
    Request,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Io => "connection broken",
            TransportKind::Request => "bad request",
        })
    }
}

impl Error {
    /// Whether trying the same operation again can succeed: connection errors,
    /// timeouts, 5xx, 408, 429, a busy or disconnected store.
    ///
    /// An action's script that threw Nango's `ActionError` (500
    /// `action_script_runtime_error`) failed on purpose and fails again: not retryable,
    /// like every 4xx (a 424 `script_http_error` included). Other 5xx of actions
    /// (a network error inside the script, a timeout, a task that expired) are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Nango { status, code, .. } => {
                (*status >= 500 && code != PERMANENT_SCRIPT_ERROR)
                    || *status == 408
                    || *status == 429
            }
            Error::NotJson { status, .. } => *status >= 500,
            Error::Transport { kind, .. } => *kind != TransportKind::Request,
            // A body cut short is reported as a transport error (retryable); one that
            // arrived whole and is still wrong will be wrong again.
            Error::MalformedPage { .. } => false,
            Error::Store { retryable, .. } => *retryable,
            Error::Stream { source, .. } => source.is_retryable(),
            Error::RetriesExhausted { .. }
            | Error::ActionNotFinished { .. }
            | Error::Damaged { .. }
            | Error::CursorConflict { .. }
            | Error::LeaseLost { .. }
            | Error::Invalid { .. }
            | Error::Deserialize { .. }
            | Error::FeatureDisabled { .. } => false,
        }
    }

    /// The HTTP status of a Nango answer, following wrapped errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Nango { status, .. } | Error::NotJson { status, .. } => Some(*status),
            Error::RetriesExhausted { last, .. } => last.status(),
            Error::Stream { source, .. } => source.status(),
            _ => None,
        }
    }

    /// Nango's error code (`error.code`), following wrapped errors.
    pub fn nango_code(&self) -> Option<&str> {
        match self {
            Error::Nango { code, .. } => Some(code),
            Error::RetriesExhausted { last, .. } => last.nango_code(),
            Error::Stream { source, .. } => source.nango_code(),
            _ => None,
        }
    }

    /// Nango's `error.payload` (an action script's error data), following wrapped
    /// errors.
    pub fn nango_payload(&self) -> Option<&serde_json::Value> {
        match self.root() {
            Error::Nango { payload, .. } => payload.as_deref(),
            _ => None,
        }
    }

    /// Whether this is (or wraps) an [`Error::Damaged`]: a store that cannot be used as
    /// it is and needs a repair ([`crate::repair`]).
    pub fn is_damaged_store(&self) -> bool {
        matches!(self.root(), Error::Damaged { .. })
    }

    /// Whether this is (or wraps) an [`Error::LeaseLost`]: the instance lost the
    /// stream's lease, and another instance runs it now.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self.root(), Error::LeaseLost { .. })
    }

    /// The innermost error: unwraps [`Error::Stream`] and [`Error::RetriesExhausted`].
    pub fn root(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } => last.root(),
            Error::Stream { source, .. } => source.root(),
            other => other,
        }
    }

    /// Build an [`Error::Invalid`].
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            detail: detail.into(),
        }
    }

    /// Build an [`Error::Damaged`].
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "sled", feature = "postgres")),
        allow(dead_code)
    )]
    pub(crate) fn damaged(
        backend: &'static str,
        operation: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Damaged {
            backend,
            operation: operation.into(),
            detail: detail.into(),
        }
    }

    /// Build an [`Error::Store`].
    #[cfg_attr(
        not(any(
            feature = "sqlite",
            feature = "sled",
            feature = "postgres",
            feature = "fault-injection"
        )),
        allow(
            dead_code,
            reason = "only the memory store is built, and it never fails"
        )
    )]
    pub(crate) fn store(
        backend: &'static str,
        operation: impl Into<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Store {
            backend,
            operation: operation.into(),
            retryable,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nango(status: u16) -> Error {
        Error::Nango {
            status,
            code: "x".into(),
            message: None,
            request: "GET /records".into(),
            retry_after: None,
            payload: None,
        }
    }

    #[test]
    fn retryable_statuses() {
        for (status, retryable) in [
            (500, true),
            (502, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
        ] {
            assert_eq!(nango(status).is_retryable(), retryable, "status {status}");
        }
    }

    #[test]
    fn script_errors_are_retried_by_kind() {
        let script = |status: u16, code: &str| Error::Nango {
            status,
            code: code.into(),
            message: None,
            request: "POST /action/trigger (github/acme, action x)".into(),
            retry_after: None,
            payload: Some(Box::new(serde_json::json!({"reason": "no"}))),
        };
        for (status, code, retryable) in [
            (500, "action_script_runtime_error", false),
            (424, "script_http_error", false),
            (404, "not_found", false),
            (400, "unknown_connection", false),
            (410, "script_aborted", false),
            (500, "script_network_error", true),
            (500, "script_internal_error", true),
            (500, "action_script_failure", true),
            (500, "generic_error_support", true),
        ] {
            let e = script(status, code);
            assert_eq!(e.is_retryable(), retryable, "{status} {code}");
            assert_eq!(e.nango_payload().unwrap()["reason"], "no");
        }
    }

    #[test]
    fn wrapped_errors_keep_status_and_code() {
        let e = Error::Stream {
            stream: "s".into(),
            source: Box::new(Error::RetriesExhausted {
                attempts: 3,
                elapsed_ms: 1,
                last: Box::new(nango(503)),
            }),
        };
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.nango_code(), Some("x"));
        assert!(!e.is_retryable());
        assert!(matches!(e.root(), Error::Nango { status: 503, .. }));
    }
}
