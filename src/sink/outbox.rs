//! The outbox: actions an application wants Nango to run, kept in its store until they
//! are delivered.
//!
//! An application enqueues an action ([`RecordSink::outbox_enqueue`], or a plain
//! `INSERT` into the SQL stores' outbox table inside its own transaction: see
//! [The outbox table](#the-outbox-table)); the item is stored before the call returns.
//! A worker ([`crate::engine::outbox::OutboxWorker`], which `nango-sync serve` runs)
//! claims items one at a time, triggers each action, and settles it: **done** with the
//! action's output, **failed** with Nango's error, or back to **pending** for a later
//! attempt. Delivery is at least once: an item whose worker died while delivering it
//! is claimed again when its lease runs out, and Nango may have run it already.
//!
//! # States
//!
//! ```text
//!            claim (attempts + 1, lease)           settle: done (output)
//! pending ───────────────────────────────▶ running ─────────────────────▶ done
//!    ▲                                       │  │
//!    └──── settle: retry later (error,       │  └──── settle: failed (error) ──▶ failed
//!          not before available_at) ◀────────┘
//!          lease ran out ─▶ claimed again; after the last attempt ─▶ failed (abandoned)
//! ```
//!
//! - **pending**: waiting; claimable once `available_at` is past.
//! - **running**: claimed by `worker` until `lease_until`; the worker extends the lease
//!   while the action runs. A lease that ran out makes the item claimable again (its
//!   worker is taken for dead), unless it used its last attempt: then it is **failed**
//!   with the code [`ABANDONED`], since the action may have run.
//! - **done**: the action's `output` is kept.
//! - **failed**: Nango's `error` is kept (status, code, message, payload).
//!
//! Only the claim that made an item running can settle it or extend its lease (a
//! [`Claim`]: the item, its worker and its attempt number): a worker that lost its lease
//! and comes back late changes nothing.
//!
//! Claims take the oldest claimable item first (by id). Items are not ordered further:
//! with several workers, or after a retry, a later item can be delivered first.
//!
//! # Then sync
//!
//! An item may name models of its connection to sync as soon as it is done
//! ([`NewOutboxItem::then_sync`]), so the record the action wrote upstream comes back
//! through the normal path: `"Model"` or `"Model::variant"`.
//!
//! # The outbox table
//!
//! The SQLite store keeps items in `nango_outbox`, the PostgreSQL store in
//! `<schema>.outbox` (default `nango_sync.outbox`). An application that writes its own
//! data to the same database can insert an item **in the same transaction** (the
//! transactional outbox pattern: the action is queued if and only if the application's
//! change commits). Every column but four has a default:
//!
//! | column | type (SQLite / PostgreSQL) | insert | meaning |
//! |---|---|---|---|
//! | `id` | `INTEGER` / `bigint`, generated | never | the item's id, in enqueue order |
//! | `integration` | `TEXT` / `text` | **required** | Provider-Config-Key |
//! | `connection` | `TEXT` / `text` | **required** | Connection-Id |
//! | `action` | `TEXT` / `text` | **required** | the action's name |
//! | `input` | JSON `TEXT` / `jsonb` | the input, or `NULL` for none | |
//! | `idempotency_key` | `TEXT` / `text`, unique | optional | a second insert with the same key fails; [`RecordSink::outbox_enqueue`] returns the existing item |
//! | `then_sync` | JSON `TEXT` / `jsonb` array, default `[]` | optional | models to sync when done: `["Ticket", "Ticket::eu"]` |
//! | `max_attempts` | `INTEGER` / `integer`, default 5 | optional | attempts before the item fails |
//! | `state` | `TEXT` / `text`, default `'pending'` | leave it | `pending`, `running`, `done`, `failed` |
//! | `attempts` | default 0 | leave it | attempts so far |
//! | `created_at`, `available_at`, `updated_at` | microseconds since the epoch, default now | `available_at` to delay | |
//! | `lease_until`, `worker` | | leave them | the claim of a running item |
//! | `output` | JSON `TEXT` / `jsonb` | leave it | a done item's output |
//! | `error` | JSON `TEXT` / `jsonb` | leave it | the last error: `{"status", "code", "message", "payload"}` |
//! | `finished_at` | microseconds | leave it | when it became done or failed |
//!
//! ```sql
//! -- SQLite (the store's file), inside the application's transaction:
//! INSERT INTO nango_outbox (integration, connection, action, input, then_sync)
//! VALUES ('github', 'acme-prod', 'create-issue', '{"title":"Bug"}', '["Issue"]');
//! -- PostgreSQL:
//! INSERT INTO nango_sync.outbox (integration, connection, action, input, then_sync)
//! VALUES ('github', 'acme-prod', 'create-issue', '{"title":"Bug"}', '["Issue"]');
//! ```
//!
//! The tables check what they can (a JSON `input`, a JSON array `then_sync`, a known
//! `state`, `max_attempts` of at least 1); an item whose names break Nango's rules is
//! failed by the worker with the code [`INVALID_ITEM`]. The sled store has no SQL: enqueue
//! through the library. Finished items stay until [`RecordSink::outbox_purge`] removes
//! them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{RawJson, StreamKey};
use crate::time::Timestamp;

#[cfg(doc)]
use crate::sink::RecordSink;

/// The attempts an item gets unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The error code of an item whose last attempt's worker died: the action may have run.
pub const ABANDONED: &str = "abandoned";

/// The error code of an item that cannot be delivered as it is (a name breaking Nango's
/// rules, written into the outbox table by hand).
pub const INVALID_ITEM: &str = "invalid_item";

/// Where an item is in its life (see the [module documentation](self#states)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    /// Waiting to be delivered.
    Pending,
    /// Claimed by a worker.
    Running,
    /// Delivered: the output is kept.
    Done,
    /// Given up: the error is kept.
    Failed,
}

impl OutboxState {
    /// Every state, in life order.
    pub const ALL: [OutboxState; 4] = [
        OutboxState::Pending,
        OutboxState::Running,
        OutboxState::Done,
        OutboxState::Failed,
    ];

    /// `pending`, `running`, `done` or `failed` (the stored text).
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Running => "running",
            OutboxState::Done => "done",
            OutboxState::Failed => "failed",
        }
    }

    /// The state a stored text names.
    pub fn parse(text: &str) -> Option<Self> {
        OutboxState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the item is done or failed.
    pub fn is_finished(self) -> bool {
        matches!(self, OutboxState::Done | OutboxState::Failed)
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed: Nango's answer, or what went wrong on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxError {
    /// The HTTP status, when Nango answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Nango's error code (`not_found`, `script_http_error`, ...), or this library's
    /// ([`ABANDONED`], [`INVALID_ITEM`], `transport`, ...).
    pub code: String,
    /// The message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Nango's `error.payload`: the script's error data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl OutboxError {
    /// An error of this library (no status).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        OutboxError {
            status: None,
            code: code.into(),
            message: Some(message.into()),
            payload: None,
        }
    }

    /// What an [`Error`] says: Nango's status, code, message and payload when it is
    /// Nango's answer, otherwise a code for its kind and its text.
    pub fn from_error(e: &Error) -> Self {
        match e.root() {
            Error::Nango {
                status,
                code,
                message,
                payload,
                ..
            } => OutboxError {
                status: Some(*status),
                code: code.clone(),
                message: message.clone(),
                payload: payload.as_deref().cloned(),
            },
            Error::NotJson { status, .. } => OutboxError {
                status: Some(*status),
                code: "not_json".into(),
                message: Some(e.root().to_string()),
                payload: None,
            },
            Error::Transport { .. } => OutboxError::new("transport", e.root().to_string()),
            Error::Invalid { .. } => OutboxError::new(INVALID_ITEM, e.root().to_string()),
            other => OutboxError::new("error", other.to_string()),
        }
    }

    /// The error as JSON text (the stored form).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error serializes")
    }
}

impl std::fmt::Display for OutboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = self.status {
            write!(f, "{s} ")?;
        }
        f.write_str(&self.code)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// An action to enqueue ([`RecordSink::outbox_enqueue`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutboxItem {
    /// The integration id (Provider-Config-Key).
    pub integration: String,
    /// The connection id.
    pub connection: String,
    /// The action's name.
    pub action: String,
    /// The input, as JSON text; `None` sends none.
    pub input: Option<RawJson>,
    /// An idempotency key: enqueueing again with a key already used returns the item
    /// that has it, unchanged (at most 255 characters).
    pub key: Option<String>,
    /// Models of the connection to sync once the action is done: `Model` or
    /// `Model::variant`.
    pub then_sync: Vec<String>,
    /// Attempts before the item fails (at least 1).
    pub max_attempts: u32,
    /// When the item was enqueued (now, by default).
    pub created_at: Timestamp,
    /// Not delivered before this instant (`created_at` by default).
    pub available_at: Timestamp,
}

impl NewOutboxItem {
    /// Action `action` of a connection, without input, enqueued now.
    pub fn new(
        integration: impl Into<String>,
        connection: impl Into<String>,
        action: impl Into<String>,
    ) -> Self {
        let now = Timestamp::now();
        NewOutboxItem {
            integration: integration.into(),
            connection: connection.into(),
            action: action.into(),
            input: None,
            key: None,
            then_sync: Vec::new(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            created_at: now,
            available_at: now,
        }
    }

    /// With `input`, serialized to JSON.
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Result<Self> {
        let text = serde_json::to_string(input)
            .map_err(|e| Error::invalid("action input", e.to_string()))?;
        self.input = Some(RawJson::from_trusted(text));
        Ok(self)
    }

    /// With an idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sync `model` (`Model` or `Model::variant`) of the connection once the action is
    /// done.
    pub fn then_sync(mut self, model: impl Into<String>) -> Self {
        self.then_sync.push(model.into());
        self
    }

    /// With at most `n` attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Enqueued at `t` (and available from then).
    pub fn at(mut self, t: Timestamp) -> Self {
        self.created_at = t;
        self.available_at = t;
        self
    }

    /// Not delivered before `t`.
    pub fn not_before(mut self, t: Timestamp) -> Self {
        self.available_at = t;
        self
    }

    /// Check the item against Nango's rules (integration, connection, action name), its
    /// then-sync models and its limits.
    pub fn check(&self) -> Result<()> {
        check_fields(
            &self.integration,
            &self.connection,
            &self.action,
            &self.then_sync,
        )?;
        if self.max_attempts == 0 {
            return Err(Error::invalid("max attempts", "an item needs at least 1"));
        }
        if let Some(k) = &self.key
            && (k.is_empty() || k.len() > 255)
        {
            return Err(Error::invalid(
                "idempotency key",
                "a key has 1 to 255 bytes",
            ));
        }
        Ok(())
    }

    /// The stored item this enqueue makes, with id `id`.
    pub(crate) fn into_item(self, id: u64) -> OutboxItem {
        OutboxItem {
            id,
            integration: self.integration,
            connection: self.connection,
            action: self.action,
            input: self.input,
            key: self.key,
            then_sync: self.then_sync,
            max_attempts: self.max_attempts,
            state: OutboxState::Pending,
            attempts: 0,
            created_at: self.created_at,
            available_at: self.available_at,
            updated_at: self.created_at,
            lease_until: None,
            worker: None,
            output: None,
            error: None,
            finished_at: None,
        }
    }
}

fn check_fields(integration: &str, connection: &str, action: &str, then: &[String]) -> Result<()> {
    StreamKey::new(integration, connection, "Model").validate()?;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if action.is_empty() || action.len() > 255 || !action.chars().all(word) {
        return Err(Error::invalid(
            "action name",
            format!("{action:?} must be 1 to 255 characters matching ^[a-zA-Z0-9_-]+$"),
        ));
    }
    for m in then {
        then_sync_stream(integration, connection, m)?.validate()?;
    }
    Ok(())
}

/// The stream a then-sync entry (`Model` or `Model::variant`) names.
fn then_sync_stream(integration: &str, connection: &str, entry: &str) -> Result<StreamKey> {
    let (model, variant) = match entry.split_once("::") {
        Some((m, v)) => (m, v),
        None => (entry, ""),
    };
    if model.is_empty() || (entry.contains("::") && variant.is_empty()) {
        return Err(Error::invalid(
            "then-sync model",
            format!("{entry:?}: name a model as Model or Model::variant"),
        ));
    }
    Ok(StreamKey::new(integration, connection, model).with_variant(variant))
}

/// One item of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// The id, in enqueue order.
    pub id: u64,
    /// The integration id.
    pub integration: String,
    /// The connection id.
    pub connection: String,
    /// The action's name.
    pub action: String,
    /// The input as JSON text.
    pub input: Option<RawJson>,
    /// The idempotency key.
    pub key: Option<String>,
    /// Models to sync once done.
    pub then_sync: Vec<String>,
    /// Attempts before it fails.
    pub max_attempts: u32,
    /// Its state.
    pub state: OutboxState,
    /// Attempts so far (claims).
    pub attempts: u32,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Not delivered before this instant.
    pub available_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// While running: the end of its worker's lease.
    pub lease_until: Option<Timestamp>,
    /// The worker of its last claim.
    pub worker: Option<String>,
    /// Once done: the action's output as JSON text.
    pub output: Option<RawJson>,
    /// The last attempt's error (kept while it waits for another attempt, and once
    /// failed).
    pub error: Option<OutboxError>,
    /// When it became done or failed.
    pub finished_at: Option<Timestamp>,
}

impl OutboxItem {
    /// The claim that made this item running, if it is running.
    pub fn claim(&self) -> Option<Claim> {
        match (self.state, &self.worker) {
            (OutboxState::Running, Some(worker)) => Some(Claim {
                id: self.id,
                worker: worker.clone(),
                attempt: self.attempts,
            }),
            _ => None,
        }
    }

    /// The streams to sync once done.
    pub fn then_sync_streams(&self) -> Result<Vec<StreamKey>> {
        self.then_sync
            .iter()
            .map(|m| {
                let s = then_sync_stream(&self.integration, &self.connection, m)?;
                s.validate()?;
                Ok(s)
            })
            .collect()
    }

    /// Check what a worker needs to deliver the item (an item written into the outbox
    /// table by hand may break Nango's rules).
    pub fn check(&self) -> Result<()> {
        check_fields(
            &self.integration,
            &self.connection,
            &self.action,
            &self.then_sync,
        )
    }

    /// The item as the JSON object `nango-sync outbox --json` prints: `id`,
    /// `integration`, `connection`, `name`, `state`, `attempts`, `output`, `error`, and
    /// the rest of its fields.
    pub fn to_json(&self) -> serde_json::Value {
        let ts = |t: Option<Timestamp>| t.map(|t| t.to_utc_z());
        serde_json::json!({
            "id": self.id,
            "integration": self.integration,
            "connection": self.connection,
            "name": self.action,
            "input": self.input.as_ref().map(RawJson::to_value),
            "key": self.key,
            "then_sync": self.then_sync,
            "state": self.state.as_str(),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at.to_utc_z(),
            "available_at": self.available_at.to_utc_z(),
            "updated_at": self.updated_at.to_utc_z(),
            "lease_until": ts(self.lease_until),
            "worker": self.worker,
            "output": self.output.as_ref().map(RawJson::to_value),
            "error": self.error,
            "finished_at": ts(self.finished_at),
        })
    }
}

/// The claim of a running item: only it can settle the item or extend its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The item.
    pub id: u64,
    /// The worker that claimed it.
    pub worker: String,
    /// The attempt the claim started (the item's `attempts` then).
    pub attempt: u32,
}

/// A worker asking for an item ([`RecordSink::outbox_claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The worker's name (unique among the workers of a store).
    pub worker: String,
    /// The time of the claim.
    pub now: Timestamp,
    /// How long the claim holds without an extension.
    pub lease: Duration,
}

/// How a claim ends ([`RecordSink::outbox_settle`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The action ran: keep its output.
    Done {
        /// The output as JSON text.
        output: RawJson,
    },
    /// Give up: keep the error.
    Failed {
        /// Why.
        error: OutboxError,
    },
    /// Try again, not before `at`.
    Retry {
        /// Why this attempt failed.
        error: OutboxError,
        /// The earliest next attempt.
        at: Timestamp,
    },
}

/// Which items [`RecordSink::outbox_list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxQuery {
    /// Only items in these states (every state when empty).
    pub states: Vec<OutboxState>,
    /// Only items with an id above this one, for paging.
    pub after_id: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

impl Default for OutboxQuery {
    fn default() -> Self {
        OutboxQuery {
            states: Vec::new(),
            after_id: None,
            limit: 1000,
        }
    }
}

impl OutboxQuery {
    /// The first `limit` items of every state.
    pub fn first(limit: usize) -> Self {
        OutboxQuery {
            limit,
            ..Self::default()
        }
    }

    /// Only items in `state` (may be given several times).
    pub fn state(mut self, state: OutboxState) -> Self {
        self.states.push(state);
        self
    }

    /// Continue after item `id`.
    pub fn after(mut self, id: u64) -> Self {
        self.after_id = Some(id);
        self
    }

    /// Whether `item` is selected (ignoring paging).
    pub fn selects(&self, item: &OutboxItem) -> bool {
        self.states.is_empty() || self.states.contains(&item.state)
    }
}

/// How many items are in each state ([`RecordSink::outbox_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    /// Waiting.
    pub pending: u64,
    /// Claimed.
    pub running: u64,
    /// Delivered.
    pub done: u64,
    /// Given up.
    pub failed: u64,
}

impl OutboxCounts {
    /// Count one item in `state`.
    pub fn add(&mut self, state: OutboxState) {
        match state {
            OutboxState::Pending => self.pending += 1,
            OutboxState::Running => self.running += 1,
            OutboxState::Done => self.done += 1,
            OutboxState::Failed => self.failed += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The transitions, decided once for every store (each store finds the rows, applies
// these, and writes the rows back in one transaction).
// ---------------------------------------------------------------------------------------

/// What a claim does with an item it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimable {
    /// Not now (finished, not yet available, or leased to a live worker).
    No,
    /// Claim it.
    Deliver,
    /// Its last attempt's worker died: fail it.
    Abandon,
}

/// Whether a claim at `now` takes `item`.
pub(crate) fn claimable(item: &OutboxItem, now: Timestamp) -> Claimable {
    match item.state {
        OutboxState::Pending if item.available_at <= now => Claimable::Deliver,
        OutboxState::Running if item.lease_until.is_none_or(|l| l <= now) => {
            if item.attempts >= item.max_attempts {
                Claimable::Abandon
            } else {
                Claimable::Deliver
            }
        }
        _ => Claimable::No,
    }
}

/// The item claimed by `req`.
pub(crate) fn claim(item: &mut OutboxItem, req: &ClaimRequest) {
    item.state = OutboxState::Running;
    item.attempts += 1;
    item.worker = Some(req.worker.clone());
    item.lease_until = Some(req.now.add_micros(duration_micros(req.lease)));
    item.updated_at = req.now;
}

/// The item failed because the worker of its last attempt died.
pub(crate) fn abandon(item: &mut OutboxItem, now: Timestamp) {
    let worker = item.worker.as_deref().unwrap_or("a worker");
    item.error = Some(OutboxError::new(
        ABANDONED,
        format!(
            "{worker} stopped during attempt {} of {} (its lease ran out); the action may have run",
            item.attempts, item.max_attempts
        ),
    ));
    item.state = OutboxState::Failed;
    item.lease_until = None;
    item.finished_at = Some(now);
    item.updated_at = now;
}

/// Whether `claim` is the claim that made `item` running.
pub(crate) fn holds(item: &OutboxItem, claim: &Claim) -> bool {
    item.state == OutboxState::Running
        && item.id == claim.id
        && item.attempts == claim.attempt
        && item.worker.as_deref() == Some(claim.worker.as_str())
}

/// The item settled (its claim checked by [`holds`]).
pub(crate) fn settle(item: &mut OutboxItem, settlement: Settlement, now: Timestamp) {
    item.lease_until = None;
    item.updated_at = now;
    match settlement {
        Settlement::Done { output } => {
            item.state = OutboxState::Done;
            item.output = Some(output);
            item.error = None;
            item.finished_at = Some(now);
        }
        Settlement::Failed { error } => {
            item.state = OutboxState::Failed;
            item.error = Some(error);
            item.finished_at = Some(now);
        }
        Settlement::Retry { error, at } => {
            item.state = OutboxState::Pending;
            item.error = Some(error);
            item.available_at = at;
        }
    }
}

/// The lease of a running item extended to `until` (its claim checked by [`holds`]).
pub(crate) fn extend(item: &mut OutboxItem, until: Timestamp, now: Timestamp) {
    item.lease_until = Some(until);
    item.updated_at = now;
}

/// Whether a purge of items finished before `before` removes `item`.
pub(crate) fn purged(item: &OutboxItem, before: Timestamp) -> bool {
    item.state.is_finished() && item.finished_at.is_some_and(|t| t < before)
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// The stored `then_sync` and `error` columns, decoded leniently: a row written by hand
/// must still list (an entry that is not a model name fails [`OutboxItem::check`], and
/// the worker fails the item).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(
        dead_code,
        reason = "no SQL store is built: the memory and sled stores keep items whole"
    )
)]
pub(crate) fn decode_json_columns(
    then_sync: &str,
    error: Option<&str>,
) -> (Vec<String>, Option<OutboxError>) {
    let then = match serde_json::from_str::<serde_json::Value>(then_sync) {
        Ok(serde_json::Value::Array(entries)) => entries
            .into_iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => vec![then_sync.to_string()],
    };
    let error = error.map(|e| {
        serde_json::from_str::<OutboxError>(e).unwrap_or_else(|_| OutboxError::new("error", e))
    });
    (then, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> OutboxItem {
        NewOutboxItem::new("github", "acme", "create-issue")
            .max_attempts(2)
            .at(Timestamp::from_micros(1_000))
            .into_item(1)
    }

    fn req(worker: &str, now: i64) -> ClaimRequest {
        ClaimRequest {
            worker: worker.into(),
            now: Timestamp::from_micros(now),
            lease: Duration::from_micros(100),
        }
    }

    #[test]
    fn an_item_lives_through_claims_and_settlements() {
        let mut it = item();
        assert_eq!(claimable(&it, Timestamp::from_micros(999)), Claimable::No);
        assert_eq!(
            claimable(&it, Timestamp::from_micros(1_000)),
            Claimable::Deliver
        );
        claim(&mut it, &req("w1", 1_000));
        let c1 = it.claim().unwrap();
        assert_eq!(
            (c1.attempt, it.lease_until),
            (1, Some(Timestamp::from_micros(1_100)))
        );
        assert_eq!(claimable(&it, Timestamp::from_micros(1_099)), Claimable::No);
        // The lease runs out: claimed again by another worker; the first claim is stale.
        assert_eq!(
            claimable(&it, Timestamp::from_micros(1_100)),
            Claimable::Deliver
        );
        claim(&mut it, &req("w2", 1_100));
        assert!(!holds(&it, &c1));
        let c2 = it.claim().unwrap();
        assert!(holds(&it, &c2));
        settle(
            &mut it,
            Settlement::Retry {
                error: OutboxError::new("transport", "reset"),
                at: Timestamp::from_micros(2_000),
            },
            Timestamp::from_micros(1_150),
        );
        assert_eq!((it.state, it.lease_until), (OutboxState::Pending, None));
        assert_eq!(claimable(&it, Timestamp::from_micros(1_999)), Claimable::No);
        claim(&mut it, &req("w1", 2_000));
        // The third claim is past max_attempts only when it dies.
        assert_eq!(
            claimable(&it, Timestamp::from_micros(2_100)),
            Claimable::Abandon
        );
        abandon(&mut it, Timestamp::from_micros(2_100));
        assert_eq!(it.state, OutboxState::Failed);
        assert_eq!(it.error.as_ref().unwrap().code, ABANDONED);
        assert!(purged(&it, Timestamp::from_micros(2_101)));
        assert!(!purged(&it, Timestamp::from_micros(2_100)));
    }

    #[test]
    fn new_items_are_checked() {
        let ok = NewOutboxItem::new("github", "acme", "create-issue").then_sync("Issue::eu");
        assert!(ok.check().is_ok());
        for bad in [
            NewOutboxItem::new("git/hub", "acme", "a"),
            NewOutboxItem::new("github", "acme", "bad name"),
            NewOutboxItem::new("github", "acme", "a").then_sync("issue"),
            NewOutboxItem::new("github", "acme", "a").then_sync("Issue::"),
            NewOutboxItem::new("github", "acme", "a").max_attempts(0),
            NewOutboxItem::new("github", "acme", "a").key(""),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let it = ok.into_item(3);
        assert_eq!(
            it.then_sync_streams().unwrap(),
            [StreamKey::new("github", "acme", "Issue").with_variant("eu")]
        );
    }

    #[test]
    fn states_round_trip_their_text() {
        for s in OutboxState::ALL {
            assert_eq!(OutboxState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(OutboxState::parse("Pending"), None);
    }
}
