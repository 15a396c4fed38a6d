//! Stores: where records and stream state live, behind one [`RecordSink`] trait.
//!
//! A store takes one [`Commit`] value (a page's records, the stream's new cursor and the
//! cursor it expects to replace) and writes all of it or nothing. No transaction handle
//! crosses the trait, and no database transaction is held open across an HTTP request.
//!
//! | URL | store | cargo feature |
//! |---|---|---|
//! | `memory://` | [`MemoryStore`], the reference implementation | always |
//! | `sqlite://PATH` | `SqliteStore` | `sqlite` (default) |
//! | `sled://DIR[?snapshot_after_ops=N]` | `SledStore` (`N`: see `SledOptions::with_snapshot_after_ops`) | `sled` |
//! | `postgres://...[?schema=NAME]` | `PostgresStore` (tables in schema `NAME`, default `nango_sync`) | `postgres` |
//!
//! [`open`] knows every scheme in every build, and says which feature to enable when a
//! backend was not compiled in.
//!
//! Every store commits the same way: [`commit::prepare`] decides what a commit writes
//! (a pure step no backend owns), and the store applies it in one transaction. Each
//! store takes its options as `XOptions::new().with_*(..)`, opened by
//! `XStore::open_with` (`connect_with` for PostgreSQL); with the `fault-injection`
//! feature, `with_faults` arms failures between the steps of a commit for tests.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::feed::{
    ChangeBatch, ChangeKind, ChangeQuery, Consumer, FeedPosition, ListAcross, RecordCounts,
};
use crate::merge::Counts;
use crate::record::{Cursor, RawJson, Record, StoredRecord, StreamKey};
use crate::time::Timestamp;
use outbox::{
    Claim, ClaimRequest, NewOutboxItem, OutboxCounts, OutboxError, OutboxItem, OutboxQuery,
    Settlement,
};

pub mod commit;
mod history;
pub mod lease;
pub use history::{CountCheck, DEFAULT_RUN_HISTORY, HistoryQuery, RunEntry, RunId, RunOutcome};
pub mod outbox;
#[cfg(feature = "postgres")]
mod prefetch;
#[cfg(any(feature = "sqlite", feature = "sled"))]
pub(crate) mod process_lock;
pub mod seen;
#[cfg(feature = "postgres")]
pub use prefetch::PrefetchStats;

#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;

mod memory;
pub use memory::{MemoryOptions, MemoryStore};

#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

#[cfg(feature = "sled")]
pub mod sled;
#[cfg(feature = "sled")]
pub use self::sled::SledStore;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
pub use self::postgres::PostgresStore;

/// The persistent state of one stream, read at the start of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// The cursor of the last committed page; `None` before the first commit.
    pub cursor: Option<Cursor>,
    /// The generation of the last completed full re-read (0: none yet).
    pub generation: u64,
    /// The generation of a full re-read in progress, if one is.
    pub full_read: Option<u64>,
}

/// Marks a commit as part of a full re-read with sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullRead {
    /// The generation the re-read stamps on every record it sees.
    pub generation: u64,
    /// This is the last commit of the re-read: after merging its records, every live
    /// record of the stream not seen by the re-read is marked deleted (it was deleted
    /// upstream without an event), and the stream's generation becomes `generation`.
    pub complete: bool,
}

/// One atomic write: a page's records merged, the stream's new cursor, and the counts.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The stream.
    pub stream: StreamKey,
    /// The cursor the store must hold for the commit to apply (the one the previous
    /// commit of this run wrote). A mismatch means another writer moved the stream and
    /// the commit is rejected with [`Error::CursorConflict`].
    pub expected_cursor: Option<Cursor>,
    /// The cursor after this commit (the same as `expected_cursor` for an empty page).
    pub cursor: Option<Cursor>,
    /// The records, in stream order (shared, so a commit can be retried without copying
    /// its page).
    pub records: Arc<[Record]>,
    /// Set when this commit belongs to a full re-read.
    pub full_read: Option<FullRead>,
    /// The time recorded as `deleted_at` of records a completing full re-read sweeps.
    pub now: Timestamp,
    /// The lease the committing instance holds on the stream, when several instances
    /// share the store ([`lease`]): the store checks it inside the commit's transaction
    /// and refuses the commit with [`Error::LeaseLost`] when it is no longer held.
    /// `None` (the default) commits unchecked; stores only one process writes (memory,
    /// SQLite, sled) have no leases and ignore it.
    pub fence: Option<lease::Fence>,
}

impl Commit {
    /// A commit of `records` moving the stream from `expected_cursor` to `cursor`.
    pub fn new(
        stream: StreamKey,
        expected_cursor: Option<Cursor>,
        cursor: Option<Cursor>,
        records: Vec<Record>,
    ) -> Self {
        Commit {
            stream,
            expected_cursor,
            cursor,
            records: records.into(),
            full_read: None,
            now: Timestamp::now(),
            fence: None,
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The store's sequence number of this commit.
    pub seq: u64,
    /// Outcome counts of the merged records (sweep deletions included in `deleted`).
    pub counts: Counts,
    /// How many records a completing full re-read marked deleted.
    pub swept: u64,
}

/// How to list a stream's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only records whose id sorts after this one (code-point order), for paging.
    pub after_id: Option<String>,
    /// At most this many records.
    pub limit: usize,
    /// Include tombstones (deleted records).
    pub include_deleted: bool,
    /// Only records whose last change is of this kind ([`ChangeKind::Deleted`] lists
    /// tombstones, whatever `include_deleted` says; `Added` and `Updated` only live
    /// records).
    pub change: Option<ChangeKind>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            after_id: None,
            limit: 1000,
            include_deleted: false,
            change: None,
        }
    }
}

impl ListQuery {
    /// The first `limit` records.
    pub fn first(limit: usize) -> Self {
        ListQuery {
            limit,
            ..Self::default()
        }
    }

    /// Include deleted records.
    pub fn with_deleted(mut self) -> Self {
        self.include_deleted = true;
        self
    }

    /// Continue after `id`.
    pub fn after(mut self, id: impl Into<String>) -> Self {
        self.after_id = Some(id.into());
        self
    }

    /// Only records whose last change is `kind`.
    pub fn only(mut self, kind: ChangeKind) -> Self {
        self.change = Some(kind);
        self
    }

    /// Whether a record whose tombstone flag is `deleted` and whose last change is
    /// `kind` is listed.
    pub fn selects(&self, deleted: bool, kind: ChangeKind) -> bool {
        match self.change {
            Some(want) => want == kind,
            None => self.include_deleted || !deleted,
        }
    }
}

/// A summary of one sync run, kept in the stream's run history
/// ([`RecordSink::record_run`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "history::RunSummaryWire")]
pub struct RunSummary {
    /// The run's id (also in the run's tracing span as `run_id`).
    pub id: RunId,
    /// The instance that ran it (empty: a single-instance deployment).
    #[serde(default)]
    pub instance: String,
    /// When the run started.
    pub started_at: Timestamp,
    /// When the run ended.
    pub finished_at: Timestamp,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Pages committed.
    pub pages: u64,
    /// Outcome counts.
    pub counts: Counts,
    /// Whether it was a full re-read.
    pub full: bool,
    /// Why it was a full re-read, when it was one. `status` shows a warning when Nango
    /// rejected the cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<FullReadReason>,
    /// The stream's high-water mark after the run: the latest `last_modified_at` the
    /// store is known to hold (carried over from earlier runs). It anchors the optional
    /// overlap window ([`crate::engine::EngineConfig::overlap`]); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water_mark: Option<Timestamp>,
    /// The error that ended the run, if any (for an interrupted run, what stopped it).
    pub error: Option<String>,
    /// The comparison of the store's live record count with Nango's, made after a
    /// successful run when the engine is configured to
    /// ([`EngineConfig::count_check`](crate::engine::EngineConfig::count_check)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_check: Option<CountCheck>,
}

impl RunSummary {
    /// Whether the run was a full re-read because Nango rejected the stored cursor
    /// (worth a warning: a cursor Nango no longer understands, usually after an upgrade
    /// of Nango's cursor format).
    pub fn cursor_was_rejected(&self) -> bool {
        self.full_reason == Some(FullReadReason::CursorRejected)
    }
}

/// Why a run is a full re-read with sweep. Kept in the run summary as its text
/// ([`FullReadReason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FullReadReason {
    /// The stream had no cursor: its first sync.
    #[serde(rename = "first sync")]
    FirstSync,
    /// Asked for ([`SyncOptions::full`](crate::SyncOptions::full), a full-sync webhook).
    #[serde(rename = "requested")]
    Requested,
    /// Nango answered requests with the stored cursor with an error, and without a
    /// cursor normally.
    #[serde(rename = "Nango rejected the stored cursor")]
    CursorRejected,
    /// A full re-read an earlier run left unfinished, resumed from its cursor.
    #[serde(rename = "resuming an interrupted full re-read")]
    Resuming,
    /// The store's live record count differed from Nango's
    /// ([`CountCheck::Mismatch`]).
    #[serde(rename = "the live record count differed from Nango's")]
    CountMismatch,
    /// The periodic full re-read (catches hard resets no webhook announces).
    #[serde(rename = "periodic full re-read")]
    Periodic,
}

impl FullReadReason {
    /// The text kept in run summaries and shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            FullReadReason::FirstSync => "first sync",
            FullReadReason::Requested => "requested",
            FullReadReason::CursorRejected => "Nango rejected the stored cursor",
            FullReadReason::Resuming => "resuming an interrupted full re-read",
            FullReadReason::CountMismatch => "the live record count differed from Nango's",
            FullReadReason::Periodic => "periodic full re-read",
        }
    }
}

impl std::fmt::Display for FullReadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `status` shows for one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The stream.
    pub stream: StreamKey,
    /// Its state.
    pub state: StreamState,
    /// Outcome counts over the stream's whole life.
    pub totals: Counts,
    /// Live records held.
    pub live_records: u64,
    /// Tombstones held.
    pub deleted_records: u64,
    /// The last run.
    pub last_run: Option<RunSummary>,
    /// The last error Nango reported for the stream's sync (from a failure webhook).
    pub upstream_error: Option<String>,
    /// The last run that ended [`RunOutcome::Ok`] (kept even when the history holds
    /// only failed runs since).
    #[serde(default)]
    pub last_success: Option<RunSummary>,
}

/// A store of records and stream state.
///
/// Methods return `impl Future + Send`; [`DynRecordSink`] is the object-safe twin that
/// every `RecordSink` implements, so an application can choose a backend at run time
/// and hold a [`SharedSink`] (which is a `RecordSink` too).
///
/// The methods fall in groups:
///
/// - **the data path**: [`stream_state`](Self::stream_state) and
///   [`commit`](Self::commit), which the engine's runs use, and the reads of the
///   application, [`get`](Self::get) and [`list`](Self::list);
/// - **bookkeeping**: what `status` shows about streams, kept apart from the records
///   and the cursor: [`set_upstream_error`](Self::set_upstream_error) and
///   [`streams`](Self::streams);
/// - **the run history**: [`record_run`](Self::record_run),
///   [`last_run`](Self::last_run), [`run_history`](Self::run_history) and
///   [`stream_status`](Self::stream_status). Neither bookkeeping nor the history moves
///   a cursor or uses a commit sequence number;
/// - **the application's side** ([`crate::feed`]): the change feed
///   ([`changes`](Self::changes)), named consumers ([`ack`](Self::ack)), commit
///   signals ([`subscribe`](Self::subscribe)), counts and typed reads;
/// - **the outbox** ([`outbox`]): actions the application enqueued
///   ([`outbox_enqueue`](Self::outbox_enqueue)) that a worker claims
///   ([`outbox_claim`](Self::outbox_claim)), keeps
///   ([`outbox_extend`](Self::outbox_extend)) and settles
///   ([`outbox_settle`](Self::outbox_settle)), and their reads. They touch no record
///   and no cursor.
///
/// A store's commit is [`commit::prepare`] applied in one transaction of the store; the
/// conformance suite (crate `nango-sync-testkit`) compares every store with the in-memory
/// reference.
pub trait RecordSink: Debug + Send + Sync + 'static {
    /// The backend's name: `memory`, `sqlite`, `sled` or `postgres`.
    fn backend(&self) -> &'static str;

    // The data path.

    /// The stream's state (default state for a stream never committed).
    fn stream_state(&self, stream: &StreamKey) -> impl Future<Output = Result<StreamState>> + Send;

    /// Write a commit atomically: merge its records with the [merge rule](crate::merge),
    /// set the stream's cursor and counters, and, for the last commit of a full re-read,
    /// sweep. All of it or nothing.
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<CommitOutcome>> + Send;

    /// A hint: the next commit of `stream` will hold these `records`, after the commit
    /// of the stream that may be running now. The engine gives it when it has the next
    /// page in hand. A store may start reading their stored versions at once; its
    /// commit must still be exactly what it would be without the hint (the PostgreSQL
    /// store reads ahead and checks, under the stream's lock, that nothing changed the
    /// stream since in a way it does not know of). Must not block. The default does
    /// nothing.
    fn prefetch(&self, stream: &StreamKey, records: &[Record]) {
        let _ = (stream, records);
    }

    /// Finish the work the store defers past its commits, and wait for it: SQLite
    /// copies its write-ahead log back into the database file and empties the log;
    /// sled writes what it holds in memory to disk (under `Durability::Periodic`, the
    /// commits since its last flush become durable). PostgreSQL and the memory store
    /// defer nothing, and the default does nothing.
    ///
    /// Commits never need it: each is as durable as the store's settings say when it
    /// returns, and the store catches up on its own. It is for a caller that wants the
    /// store's files settled (at a quiet moment, before copying them) and for a
    /// measurement that counts a store's whole cost (`nango-sync bench`). A SQLite
    /// reader or another process holding an older snapshot past the busy timeout makes
    /// it fail with a retryable error; nothing is lost.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// One record by id, tombstones included (see [`StoredRecord::live`]).
    fn get(
        &self,
        stream: &StreamKey,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredRecord>>> + Send;

    /// A stream's records in id order (code-point order), a page at a time.
    fn list(
        &self,
        stream: &StreamKey,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<StoredRecord>>> + Send;

    // Bookkeeping.

    /// Keep (or clear) the last error Nango reported for the stream.
    fn set_upstream_error(
        &self,
        stream: &StreamKey,
        error: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every stream the store knows, with its status.
    fn streams(&self) -> impl Future<Output = Result<Vec<StreamStatus>>> + Send;

    // The run history (see the `history` types: [`RunSummary`], [`RunId`],
    // [`RunOutcome`], [`HistoryQuery`], [`RunEntry`]).

    /// Record a finished run of `stream`: appended to its history, kept as its last run
    /// (and as its last successful run when it ended [`RunOutcome::Ok`]), and the
    /// stream's history pruned to its last `keep` runs (at least one), all in one
    /// transaction. Creates the stream's status when the stream is new; never moves a
    /// cursor.
    fn record_run(
        &self,
        stream: &StreamKey,
        run: &RunSummary,
        keep: usize,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The last run recorded for `stream`, if any: one read of the stream's row.
    fn last_run(
        &self,
        stream: &StreamKey,
    ) -> impl Future<Output = Result<Option<RunSummary>>> + Send;

    /// The runs `query` asks for, newest first (in the order the store recorded them).
    fn run_history(
        &self,
        query: &HistoryQuery,
    ) -> impl Future<Output = Result<Vec<RunEntry>>> + Send;

    /// The status of one stream (`None` when the store does not know it). The default
    /// goes through [`RecordSink::streams`]; stores answer it without reading the
    /// other streams.
    fn stream_status(
        &self,
        stream: &StreamKey,
    ) -> impl Future<Output = Result<Option<StreamStatus>>> + Send {
        async move {
            Ok(self
                .streams()
                .await?
                .into_iter()
                .find(|s| &s.stream == stream))
        }
    }

    // The application's side: the change feed, named consumers, subscriptions and the
    // reads of an application beyond `get` and `list` (see `crate::feed`).

    /// The changes after `query.since`, in feed order (sequence number, then id), at
    /// most `query.limit`, of the streams `query.filter` selects, with the position the
    /// next read starts from ([`ChangeBatch::next`]). One consistent read: the changes
    /// of a commit are all there or none is.
    fn changes(&self, query: &ChangeQuery) -> impl Future<Output = Result<ChangeBatch>> + Send;

    /// The sequence number of the store's last commit (0 for an empty store).
    fn last_seq(&self) -> impl Future<Output = Result<u64>> + Send;

    /// A receiver of the sequence number of the last commit that changed records, which
    /// changes after each such commit ([`crate::feed::Subscription`] waits on it). A
    /// PostgreSQL store also hears the commits of other processes (`LISTEN`), and a
    /// SQLite store checks its file for them while a receiver exists; sled and memory
    /// stores have no other process. Call it from within a tokio runtime.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// The stored position of consumer `consumer` (the start of the feed for a consumer
    /// never acknowledged).
    fn consumer_position(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<FeedPosition>> + Send;

    /// Store `position` as consumer `consumer`'s, unless its stored position is already
    /// later (positions never move back); returns the position stored. A position past
    /// the store's last commit is refused ([`Error::Invalid`]).
    fn ack(
        &self,
        consumer: &str,
        position: &FeedPosition,
    ) -> impl Future<Output = Result<FeedPosition>> + Send;

    /// Every consumer with its position, by name.
    fn consumers(&self) -> impl Future<Output = Result<Vec<Consumer>>> + Send;

    /// Forget consumer `consumer`; whether it existed.
    fn remove_consumer(&self, consumer: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The live and deleted records of `stream`, from the stream's counters (no scan).
    fn count(&self, stream: &StreamKey) -> impl Future<Output = Result<RecordCounts>> + Send;

    /// One record by id, unless it is a tombstone.
    fn get_live(
        &self,
        stream: &StreamKey,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredRecord>>> + Send {
        async move { Ok(self.get(stream, id).await?.and_then(StoredRecord::live)) }
    }

    /// One live record by id, deserialized into the application's type; `None` for a
    /// record the store does not hold or holds as a tombstone (a tombstone is never
    /// deserialized). A payload that does not fit is [`Error::Deserialize`].
    fn get_as<T: DeserializeOwned + Send>(
        &self,
        stream: &StreamKey,
        id: &str,
    ) -> impl Future<Output = Result<Option<T>>> + Send {
        async move {
            match self.get_live(stream, id).await? {
                Some(record) => crate::feed::typed(stream, &record).map(Some),
                None => Ok(None),
            }
        }
    }

    /// A page of a stream's live records in id order, deserialized into the
    /// application's type, each with its id (for paging with `after_id`). Only live
    /// records: a query for tombstones (`include_deleted`, or the kind `deleted`) is
    /// refused with [`Error::Invalid`].
    fn list_as<T: DeserializeOwned + Send>(
        &self,
        stream: &StreamKey,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<(String, T)>>> + Send {
        async move {
            if query.include_deleted || query.change == Some(ChangeKind::Deleted) {
                return Err(Error::invalid(
                    "typed list",
                    "a typed list reads live records only; list tombstones with `list`",
                ));
            }
            let mut out = Vec::new();
            for record in self.list(stream, query).await? {
                let value = crate::feed::typed(stream, &record)?;
                out.push((record.id, value));
            }
            Ok(out)
        }
    }

    /// The records of every stream `query.filter` selects (for example every model of
    /// a connection), ordered by stream key then id, a page at a time.
    fn list_across(
        &self,
        query: &ListAcross,
    ) -> impl Future<Output = Result<Vec<(StreamKey, StoredRecord)>>> + Send {
        async move {
            let mut streams: Vec<StreamKey> = self
                .streams()
                .await?
                .into_iter()
                .map(|s| s.stream)
                .filter(|s| query.filter.matches(s))
                .collect();
            streams.sort();
            let mut out = Vec::new();
            for stream in streams {
                let after_id = match &query.after {
                    Some((after, _)) if stream < *after => continue,
                    Some((after, id)) if stream == *after => Some(id.clone()),
                    _ => None,
                };
                let mut list = ListQuery {
                    after_id,
                    limit: query.limit - out.len(),
                    include_deleted: query.include_deleted,
                    change: query.change,
                };
                while list.limit > 0 {
                    let batch = self.list(&stream, &list).await?;
                    let done = batch.len() < list.limit;
                    list.limit -= batch.len();
                    list.after_id = batch.last().map(|r| r.id.clone());
                    out.extend(batch.into_iter().map(|r| (stream.clone(), r)));
                    if done {
                        break;
                    }
                }
                if out.len() >= query.limit {
                    break;
                }
            }
            Ok(out)
        }
    }
    // The outbox (module `outbox`): actions enqueued by the application, delivered by a
    // worker. Every transition is decided by `outbox::{claimable, claim, abandon,
    // holds, settle, extend}`; a store finds the rows, applies them and writes the rows
    // back in one transaction. Times are given by the caller (`now`), never read by the
    // store.

    /// Store `item` (checked with [`NewOutboxItem::check`]) as a pending item and return
    /// it. When its idempotency key is already used, the item that has the key is
    /// returned unchanged and nothing is stored.
    fn outbox_enqueue(
        &self,
        item: NewOutboxItem,
    ) -> impl Future<Output = Result<OutboxItem>> + Send;

    /// Claim the claimable item with the lowest id for `request.worker`, at
    /// `request.now`, for `request.lease`: a pending item whose `available_at` is past,
    /// or a running one whose lease ran out. Running items whose lease ran out after
    /// their last attempt are failed on the way ([`outbox::ABANDONED`]). Two concurrent
    /// claims never get the same item. `None` when nothing is claimable.
    fn outbox_claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Option<OutboxItem>>> + Send;

    /// Extend the lease of the item `claim` holds to `until`. `false` (nothing changed)
    /// when the claim no longer holds it.
    fn outbox_extend(
        &self,
        claim: &Claim,
        until: Timestamp,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Settle the item `claim` holds: done, failed, or pending again. `false` (nothing
    /// changed) when the claim no longer holds it.
    fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// [`outbox_settle`](Self::outbox_settle) as done with `output`.
    fn outbox_complete(
        &self,
        claim: &Claim,
        output: RawJson,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.outbox_settle(claim, Settlement::Done { output }, now)
    }

    /// [`outbox_settle`](Self::outbox_settle) as failed with `error`.
    fn outbox_fail(
        &self,
        claim: &Claim,
        error: OutboxError,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.outbox_settle(claim, Settlement::Failed { error }, now)
    }

    /// [`outbox_settle`](Self::outbox_settle) as pending again, not before `at`.
    fn outbox_retry_later(
        &self,
        claim: &Claim,
        error: OutboxError,
        at: Timestamp,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.outbox_settle(claim, Settlement::Retry { error, at }, now)
    }

    /// One item by id.
    fn outbox_get(&self, id: u64) -> impl Future<Output = Result<Option<OutboxItem>>> + Send;

    /// Items in id order, a page at a time.
    fn outbox_list(
        &self,
        query: &OutboxQuery,
    ) -> impl Future<Output = Result<Vec<OutboxItem>>> + Send;

    /// How many items are in each state.
    fn outbox_counts(&self) -> impl Future<Output = Result<OutboxCounts>> + Send;

    /// Remove the done and failed items that finished before `finished_before`; returns
    /// how many. Their idempotency keys can be used again.
    fn outbox_purge(&self, finished_before: Timestamp) -> impl Future<Output = Result<u64>> + Send;

    // Writers: one-process stores (SQLite, sled) admit one writing process at a time
    // (a lock file next to the store naming its holder); stores that several processes
    // share (PostgreSQL, memory) admit any.

    /// Become the store's writing process, or fail naming the process that is (SQLite,
    /// sled: a second process is refused with an error naming the holder's pid; the
    /// lock is the operating system's, released when the holder ends in any way).
    /// Idempotent; [`RecordSink::commit`] claims it too, so a syncing process holds it
    /// from its first commit. Other processes may still read, consume the change feed
    /// and enqueue actions. The default claims nothing.
    fn claim_writer(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// A boxed future, for [`DynRecordSink`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe twin of [`RecordSink`], implemented for every `RecordSink`: each
/// method is the `RecordSink` method of the same name, its future boxed.
#[allow(missing_docs)]
pub trait DynRecordSink: Debug + Send + Sync + 'static {
    fn backend(&self) -> &'static str;
    fn stream_state<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<StreamState>>;
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome>>;
    fn prefetch(&self, stream: &StreamKey, records: &[Record]);
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    fn get<'a>(
        &'a self,
        stream: &'a StreamKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>>;
    fn list<'a>(
        &'a self,
        stream: &'a StreamKey,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<Vec<StoredRecord>>>;
    fn set_upstream_error<'a>(
        &'a self,
        stream: &'a StreamKey,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamStatus>>>;
    // The run history.
    fn record_run<'a>(
        &'a self,
        stream: &'a StreamKey,
        run: &'a RunSummary,
        keep: usize,
    ) -> BoxFuture<'a, Result<()>>;
    fn last_run<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<Option<RunSummary>>>;
    fn run_history<'a>(&'a self, query: &'a HistoryQuery) -> BoxFuture<'a, Result<Vec<RunEntry>>>;
    fn stream_status<'a>(
        &'a self,
        stream: &'a StreamKey,
    ) -> BoxFuture<'a, Result<Option<StreamStatus>>>;
    // The application's side.
    fn changes<'a>(&'a self, query: &'a ChangeQuery) -> BoxFuture<'a, Result<ChangeBatch>>;
    fn last_seq(&self) -> BoxFuture<'_, Result<u64>>;
    fn subscribe(&self) -> watch::Receiver<u64>;
    fn consumer_position<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<FeedPosition>>;
    fn ack<'a>(
        &'a self,
        consumer: &'a str,
        position: &'a FeedPosition,
    ) -> BoxFuture<'a, Result<FeedPosition>>;
    fn consumers(&self) -> BoxFuture<'_, Result<Vec<Consumer>>>;
    fn remove_consumer<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn count<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<RecordCounts>>;
    fn get_live<'a>(
        &'a self,
        stream: &'a StreamKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>>;
    fn list_across<'a>(
        &'a self,
        query: &'a ListAcross,
    ) -> BoxFuture<'a, Result<Vec<(StreamKey, StoredRecord)>>>;

    // The outbox.
    fn outbox_enqueue(&self, item: NewOutboxItem) -> BoxFuture<'_, Result<OutboxItem>>;
    fn outbox_claim<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> BoxFuture<'a, Result<Option<OutboxItem>>>;
    fn outbox_extend<'a>(
        &'a self,
        claim: &'a Claim,
        until: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool>>;
    fn outbox_settle<'a>(
        &'a self,
        claim: &'a Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool>>;
    fn outbox_get(&self, id: u64) -> BoxFuture<'_, Result<Option<OutboxItem>>>;
    fn outbox_list<'a>(&'a self, query: &'a OutboxQuery) -> BoxFuture<'a, Result<Vec<OutboxItem>>>;
    fn outbox_counts(&self) -> BoxFuture<'_, Result<OutboxCounts>>;
    fn outbox_purge(&self, finished_before: Timestamp) -> BoxFuture<'_, Result<u64>>;
    // Writers.
    fn claim_writer(&self) -> BoxFuture<'_, Result<()>>;
}

impl<T: RecordSink> DynRecordSink for T {
    fn backend(&self) -> &'static str {
        RecordSink::backend(self)
    }
    fn stream_state<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<StreamState>> {
        Box::pin(RecordSink::stream_state(self, stream))
    }
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome>> {
        Box::pin(RecordSink::commit(self, commit))
    }
    fn prefetch(&self, stream: &StreamKey, records: &[Record]) {
        RecordSink::prefetch(self, stream, records)
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(RecordSink::flush(self))
    }
    fn get<'a>(
        &'a self,
        stream: &'a StreamKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>> {
        Box::pin(RecordSink::get(self, stream, id))
    }
    fn list<'a>(
        &'a self,
        stream: &'a StreamKey,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<Vec<StoredRecord>>> {
        Box::pin(RecordSink::list(self, stream, query))
    }
    fn set_upstream_error<'a>(
        &'a self,
        stream: &'a StreamKey,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RecordSink::set_upstream_error(self, stream, error))
    }
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamStatus>>> {
        Box::pin(RecordSink::streams(self))
    }
    // The run history.
    fn record_run<'a>(
        &'a self,
        stream: &'a StreamKey,
        run: &'a RunSummary,
        keep: usize,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RecordSink::record_run(self, stream, run, keep))
    }
    fn last_run<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<Option<RunSummary>>> {
        Box::pin(RecordSink::last_run(self, stream))
    }
    fn run_history<'a>(&'a self, query: &'a HistoryQuery) -> BoxFuture<'a, Result<Vec<RunEntry>>> {
        Box::pin(RecordSink::run_history(self, query))
    }
    fn stream_status<'a>(
        &'a self,
        stream: &'a StreamKey,
    ) -> BoxFuture<'a, Result<Option<StreamStatus>>> {
        Box::pin(RecordSink::stream_status(self, stream))
    }
    fn changes<'a>(&'a self, query: &'a ChangeQuery) -> BoxFuture<'a, Result<ChangeBatch>> {
        Box::pin(RecordSink::changes(self, query))
    }
    fn last_seq(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(RecordSink::last_seq(self))
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        RecordSink::subscribe(self)
    }
    fn consumer_position<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<FeedPosition>> {
        Box::pin(RecordSink::consumer_position(self, consumer))
    }
    fn ack<'a>(
        &'a self,
        consumer: &'a str,
        position: &'a FeedPosition,
    ) -> BoxFuture<'a, Result<FeedPosition>> {
        Box::pin(RecordSink::ack(self, consumer, position))
    }
    fn consumers(&self) -> BoxFuture<'_, Result<Vec<Consumer>>> {
        Box::pin(RecordSink::consumers(self))
    }
    fn remove_consumer<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RecordSink::remove_consumer(self, consumer))
    }
    fn count<'a>(&'a self, stream: &'a StreamKey) -> BoxFuture<'a, Result<RecordCounts>> {
        Box::pin(RecordSink::count(self, stream))
    }
    fn get_live<'a>(
        &'a self,
        stream: &'a StreamKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>> {
        Box::pin(RecordSink::get_live(self, stream, id))
    }
    fn list_across<'a>(
        &'a self,
        query: &'a ListAcross,
    ) -> BoxFuture<'a, Result<Vec<(StreamKey, StoredRecord)>>> {
        Box::pin(RecordSink::list_across(self, query))
    }

    // The outbox.
    fn outbox_enqueue(&self, item: NewOutboxItem) -> BoxFuture<'_, Result<OutboxItem>> {
        Box::pin(RecordSink::outbox_enqueue(self, item))
    }
    fn outbox_claim<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> BoxFuture<'a, Result<Option<OutboxItem>>> {
        Box::pin(RecordSink::outbox_claim(self, request))
    }
    fn outbox_extend<'a>(
        &'a self,
        claim: &'a Claim,
        until: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RecordSink::outbox_extend(self, claim, until, now))
    }
    fn outbox_settle<'a>(
        &'a self,
        claim: &'a Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RecordSink::outbox_settle(self, claim, settlement, now))
    }
    fn outbox_get(&self, id: u64) -> BoxFuture<'_, Result<Option<OutboxItem>>> {
        Box::pin(RecordSink::outbox_get(self, id))
    }
    fn outbox_list<'a>(&'a self, query: &'a OutboxQuery) -> BoxFuture<'a, Result<Vec<OutboxItem>>> {
        Box::pin(RecordSink::outbox_list(self, query))
    }
    fn outbox_counts(&self) -> BoxFuture<'_, Result<OutboxCounts>> {
        Box::pin(RecordSink::outbox_counts(self))
    }
    fn outbox_purge(&self, finished_before: Timestamp) -> BoxFuture<'_, Result<u64>> {
        Box::pin(RecordSink::outbox_purge(self, finished_before))
    }
    // Writers.
    fn claim_writer(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(RecordSink::claim_writer(self))
    }
}

/// A store chosen at run time.
pub type SharedSink = Arc<dyn DynRecordSink>;

/// The shared handle is a store too: generic code (the conformance suite, an
/// application's own wrappers) takes it like any backend.
impl RecordSink for SharedSink {
    fn backend(&self) -> &'static str {
        DynRecordSink::backend(&**self)
    }
    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        DynRecordSink::stream_state(&**self, stream).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        DynRecordSink::commit(&**self, commit).await
    }
    fn prefetch(&self, stream: &StreamKey, records: &[Record]) {
        DynRecordSink::prefetch(&**self, stream, records)
    }
    async fn flush(&self) -> Result<()> {
        DynRecordSink::flush(&**self).await
    }
    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        DynRecordSink::get(&**self, stream, id).await
    }
    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        DynRecordSink::list(&**self, stream, query).await
    }
    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        DynRecordSink::set_upstream_error(&**self, stream, error).await
    }
    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        DynRecordSink::streams(&**self).await
    }
    // The run history.
    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        DynRecordSink::record_run(&**self, stream, run, keep).await
    }
    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        DynRecordSink::last_run(&**self, stream).await
    }
    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        DynRecordSink::run_history(&**self, query).await
    }
    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        DynRecordSink::stream_status(&**self, stream).await
    }
    async fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        DynRecordSink::changes(&**self, query).await
    }
    async fn last_seq(&self) -> Result<u64> {
        DynRecordSink::last_seq(&**self).await
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        DynRecordSink::subscribe(&**self)
    }
    async fn consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        DynRecordSink::consumer_position(&**self, consumer).await
    }
    async fn ack(&self, consumer: &str, position: &FeedPosition) -> Result<FeedPosition> {
        DynRecordSink::ack(&**self, consumer, position).await
    }
    async fn consumers(&self) -> Result<Vec<Consumer>> {
        DynRecordSink::consumers(&**self).await
    }
    async fn remove_consumer(&self, consumer: &str) -> Result<bool> {
        DynRecordSink::remove_consumer(&**self, consumer).await
    }
    async fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        DynRecordSink::count(&**self, stream).await
    }
    async fn get_live(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        DynRecordSink::get_live(&**self, stream, id).await
    }
    async fn list_across(&self, query: &ListAcross) -> Result<Vec<(StreamKey, StoredRecord)>> {
        DynRecordSink::list_across(&**self, query).await
    }

    // The outbox.
    async fn outbox_enqueue(&self, item: NewOutboxItem) -> Result<OutboxItem> {
        DynRecordSink::outbox_enqueue(&**self, item).await
    }
    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        DynRecordSink::outbox_claim(&**self, request).await
    }
    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        DynRecordSink::outbox_extend(&**self, claim, until, now).await
    }
    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        DynRecordSink::outbox_settle(&**self, claim, settlement, now).await
    }
    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        DynRecordSink::outbox_get(&**self, id).await
    }
    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        DynRecordSink::outbox_list(&**self, query).await
    }
    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        DynRecordSink::outbox_counts(&**self).await
    }
    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        DynRecordSink::outbox_purge(&**self, finished_before).await
    }

    // Writers.
    async fn claim_writer(&self) -> Result<()> {
        DynRecordSink::claim_writer(&**self).await
    }
}

/// Every record of a stream, in id order, read page by page.
pub async fn read_all(
    sink: &dyn DynRecordSink,
    stream: &StreamKey,
    include_deleted: bool,
) -> Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    let mut query = ListQuery {
        after_id: None,
        limit: 5000,
        include_deleted,
        change: None,
    };
    loop {
        let batch = sink.list(stream, &query).await?;
        let done = batch.len() < query.limit;
        if let Some(last) = batch.last() {
            query.after_id = Some(last.id.clone());
        }
        out.extend(batch);
        if done {
            return Ok(out);
        }
    }
}

/// Which backend a sink URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkUrl {
    /// `memory://`
    Memory,
    /// `sqlite://PATH`
    Sqlite(std::path::PathBuf),
    /// `sled://DIR` (parameters after a `?` are checked and left out of the path)
    Sled(std::path::PathBuf),
    /// `postgres://...` or `postgresql://...` (the whole URL)
    Postgres(String),
}

impl SinkUrl {
    /// Parse a sink URL. Every scheme is known in every build; whether its backend is
    /// compiled in is checked by [`open`].
    pub fn parse(url: &str) -> Result<SinkUrl> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid(
                "sink URL",
                format!("{url:?} has no scheme; use sqlite://PATH, sled://DIR or postgres://..."),
            )
        })?;
        let path = |kind: &str, rest: &str| -> Result<std::path::PathBuf> {
            if rest.is_empty() {
                return Err(Error::invalid(
                    "sink URL",
                    format!("{url:?}: the {kind} path is empty"),
                ));
            }
            Ok(std::path::PathBuf::from(rest))
        };
        match scheme {
            "memory" => Ok(SinkUrl::Memory),
            "sqlite" => Ok(SinkUrl::Sqlite(path("sqlite", rest)?)),
            "sled" => {
                let (dir, _) = sled_url_parts(url, rest)?;
                Ok(SinkUrl::Sled(path("sled", dir)?))
            }
            "postgres" | "postgresql" => Ok(SinkUrl::Postgres(url.to_string())),
            other => Err(Error::invalid(
                "sink URL",
                format!(
                    "unknown scheme {other:?} in {url:?}; use sqlite://PATH, sled://DIR, postgres://... or memory://"
                ),
            )),
        }
    }
}

/// Open the store a URL names (`sqlite://PATH`, `sled://DIR`, `postgres://...`,
/// `memory://`), creating it when it does not exist.
///
/// A PostgreSQL URL takes two parameters of nango-sync's own, taken out before it
/// connects: `schema=NAME` and `fillfactor=PERCENT` (`PostgresOptions::with_schema` and
/// `PostgresOptions::with_fillfactor`).
pub async fn open(url: &str) -> Result<SharedSink> {
    match SinkUrl::parse(url)? {
        SinkUrl::Memory => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        SinkUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        #[cfg(not(feature = "sqlite"))]
        SinkUrl::Sqlite(_) => Err(Error::FeatureDisabled {
            scheme: "sqlite".into(),
            feature: "sqlite",
        }),
        #[cfg(feature = "sled")]
        SinkUrl::Sled(path) => {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let (_, snapshot_after_ops) = sled_url_parts(url, rest)?;
            let options =
                sled::SledOptions::new().with_snapshot_after_ops(snapshot_after_ops.unwrap_or(0));
            Ok(Arc::new(sled::SledStore::open_with(path, options).await?))
        }
        #[cfg(not(feature = "sled"))]
        SinkUrl::Sled(_) => Err(Error::FeatureDisabled {
            scheme: "sled".into(),
            feature: "sled",
        }),
        #[cfg(feature = "postgres")]
        SinkUrl::Postgres(url) => {
            let (url, schema) = split_schema_param(&url);
            let (url, fillfactor) = split_param(&url, "fillfactor");
            let mut options = postgres::PostgresOptions::new();
            if let Some(schema) = schema {
                options = options.with_schema(schema);
            }
            if let Some(f) = fillfactor {
                let percent = f.parse().map_err(|_| {
                    Error::invalid(
                        "sink URL",
                        format!("fillfactor must be a number from 10 to 100, not {f:?}"),
                    )
                })?;
                options = options.with_fillfactor(percent);
            }
            Ok(Arc::new(
                postgres::PostgresStore::connect_with(&url, options).await?,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        SinkUrl::Postgres(_) => Err(Error::FeatureDisabled {
            scheme: "postgres".into(),
            feature: "postgres",
        }),
    }
}

/// Split the part of a `sled://DIR[?snapshot_after_ops=N]` URL after the scheme into the
/// directory and the parameter (the only one a sled URL takes; see
/// `SledOptions::with_snapshot_after_ops`). A `?` in a sled URL always starts its
/// parameters.
fn sled_url_parts<'a>(url: &str, rest: &'a str) -> Result<(&'a str, Option<u64>)> {
    let Some((dir, query)) = rest.split_once('?') else {
        return Ok((rest, None));
    };
    let mut snapshot_after_ops = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("snapshot_after_ops", n)) => {
                snapshot_after_ops = Some(n.parse::<u64>().map_err(|_| {
                    Error::invalid(
                        "sink URL",
                        format!("{url:?}: snapshot_after_ops must be a whole number, not {n:?}"),
                    )
                })?);
            }
            _ => {
                return Err(Error::invalid(
                    "sink URL",
                    format!(
                        "{url:?}: unknown parameter {kv:?} (a sled URL takes only snapshot_after_ops=N)"
                    ),
                ));
            }
        }
    }
    Ok((dir, snapshot_after_ops))
}

/// Take the `schema=NAME` parameter out of a Postgres sink URL (nango-sync's own
/// parameter: the schema holding the store's tables), returning the URL to connect to
/// and the schema.
pub fn split_schema_param(url: &str) -> (String, Option<String>) {
    split_param(url, "schema")
}

/// Take the query parameter `name` out of a Postgres sink URL, returning the URL without
/// it and its value (the last one when it is repeated). nango-sync's own parameters,
/// `schema` and `fillfactor` (see [`open`]), are taken out this way before the URL is
/// handed to the driver.
pub fn split_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_string());
                false
            }
            _ => !kv.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, value)
}

/// A commit's mark of full read `generation` (`complete`: its last commit), for tests.
#[cfg(test)]
pub(crate) fn full(generation: u64, complete: bool) -> Option<FullRead> {
    Some(FullRead {
        generation,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parameter_of_postgres_urls() {
        assert_eq!(
            split_schema_param("postgres://h/db"),
            ("postgres://h/db".into(), None)
        );
        assert_eq!(
            split_schema_param("postgres://h/db?schema=app_sync"),
            ("postgres://h/db".into(), Some("app_sync".into()))
        );
        assert_eq!(
            split_schema_param("postgres://h/db?sslmode=disable&schema=s&x=1"),
            (
                "postgres://h/db?sslmode=disable&x=1".into(),
                Some("s".into())
            )
        );
        // Any parameter by its whole name: `schema` is not `schemas`; the last one wins.
        assert_eq!(
            split_param(
                "postgres://h/db?fillfactor=70&schemas=1&fillfactor=100",
                "fillfactor"
            ),
            ("postgres://h/db?schemas=1".into(), Some("100".into()))
        );
        assert_eq!(
            split_schema_param("postgres://h/db?schemas=1"),
            ("postgres://h/db?schemas=1".into(), None)
        );
    }

    #[test]
    fn full_read_reasons_keep_their_stored_text() {
        for reason in [
            FullReadReason::FirstSync,
            FullReadReason::Requested,
            FullReadReason::CursorRejected,
            FullReadReason::Resuming,
            FullReadReason::CountMismatch,
            FullReadReason::Periodic,
        ] {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("{:?}", reason.as_str()));
            assert_eq!(
                serde_json::from_str::<FullReadReason>(&json).unwrap(),
                reason
            );
        }
        // A run summary written before the reasons were typed reads back.
        let old = r#"{"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z","pages":1,
            "counts":{"added":1,"updated":0,"deleted":0,"unchanged":0,"stale":0},"full":true,
            "full_reason":"Nango rejected the stored cursor","error":null}"#;
        let run: RunSummary = serde_json::from_str(old).unwrap();
        assert!(run.cursor_was_rejected());
    }

    #[test]
    fn sink_urls() {
        assert_eq!(
            SinkUrl::parse("sqlite://demo.db").unwrap(),
            SinkUrl::Sqlite("demo.db".into())
        );
        assert_eq!(
            SinkUrl::parse("sqlite:///tmp/x.db").unwrap(),
            SinkUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            SinkUrl::parse("sled:///tmp/d").unwrap(),
            SinkUrl::Sled("/tmp/d".into())
        );
        assert_eq!(
            SinkUrl::parse("postgresql://u@h/db").unwrap(),
            SinkUrl::Postgres("postgresql://u@h/db".into())
        );
        assert_eq!(SinkUrl::parse("memory://").unwrap(), SinkUrl::Memory);
        assert_eq!(
            SinkUrl::parse("sled:///tmp/d?snapshot_after_ops=5").unwrap(),
            SinkUrl::Sled("/tmp/d".into())
        );
        assert_eq!(
            sled_url_parts("u", "/tmp/d?snapshot_after_ops=5").unwrap(),
            ("/tmp/d", Some(5))
        );
        assert_eq!(sled_url_parts("u", "/tmp/d").unwrap(), ("/tmp/d", None));
        for bad in [
            "demo.db",
            "mysql://x",
            "sqlite://",
            "sled://",
            "sled://?snapshot_after_ops=1",
            "sled:///tmp/d?snapshot_after_ops=x",
            "sled:///tmp/d?cache=1",
        ] {
            assert!(SinkUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[cfg(not(feature = "sled"))]
    #[tokio::test]
    async fn missing_backend_names_its_feature() {
        let err = open("sled:///tmp/nope").await.err().unwrap();
        assert!(err.to_string().contains("`sled` cargo feature"), "{err}");
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn missing_postgres_names_its_feature() {
        let err = open("postgres://localhost/db").await.err().unwrap();
        assert!(
            err.to_string().contains("`postgres` cargo feature"),
            "{err}"
        );
    }
}
