//! The change feed: what changed in a store, in commit order, for the application to
//! react to.
//!
//! Every commit that changes records takes the next value of one store-wide sequence
//! and stamps it on each record it changed, with the [kind](ChangeKind) of the change,
//! in the same transaction. [`RecordSink::changes`] reads, in increasing sequence order,
//! every record whose last change is after a [`FeedPosition`]: its stream, id, change
//! kind and current record. The feed is
//!
//! - **compacted**: a record changed twice since a position appears once, in its latest
//!   state, at the sequence number of its last change;
//! - **gapless**: a reader that resumes from the position of the last change it handled
//!   misses nothing, whatever crashed (changes of one commit become visible together,
//!   and a commit with a smaller sequence number is always visible before one with a
//!   larger number);
//! - **indexed**: reading the newest changes costs the same however many records the
//!   store holds.
//!
//! Changes are ordered by sequence number, then (within one commit, which always
//! belongs to one stream) by record id in code-point order, so a position inside a
//! commit is its sequence number and the last id handled ([`FeedPosition`]).
//!
//! A **named consumer** keeps its position in the store itself
//! ([`RecordSink::ack`], [`RecordSink::consumer_position`]), so several independent
//! readers each resume where they stopped. A [`Subscription`] reads the feed from a
//! position or a consumer's, and waits for the next commit when it has read everything:
//! every store wakes it after each commit that changed records (no polling loop in the
//! application; a PostgreSQL store also hears commits of other processes through
//! `LISTEN`, a SQLite store checks the file for them a few times a second while
//! someone is subscribed).
//!
//! ```no_run
//! use nango_sync::feed::Subscription;
//!
//! # async fn example(sink: nango_sync::SharedSink) -> nango_sync::Result<()> {
//! let mut feed = Subscription::for_consumer(sink, "search-index").await?;
//! loop {
//!     let batch = feed.next_batch().await?; // waits for the next commit when caught up
//!     for change in &batch {
//!         match change.live() {
//!             Some(record) => println!("upsert {} {}", change.stream, record.payload),
//!             None => println!("delete {} {}", change.stream, change.id()),
//!         }
//!     }
//!     feed.ack().await?; // the consumer resumes after this batch next time
//! }
//! # }
//! ```
//!
//! [`RecordSink::changes`]: crate::RecordSink::changes
//! [`RecordSink::ack`]: crate::RecordSink::ack
//! [`RecordSink::consumer_position`]: crate::RecordSink::consumer_position

use std::cmp::Ordering;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::merge::Outcome;
use crate::record::{StoredRecord, StreamKey};
use crate::sink::{BoxFuture, RecordSink};

/// What the last change of a record did, relative to what the store held before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The store did not hold the record live before: a new record, or a deleted one
    /// brought back.
    Added,
    /// A live record got a newer version (a new payload, or new metadata: a prune keeps
    /// the payload and changes `pruned_at`).
    Updated,
    /// The record is now a tombstone: deleted upstream, or marked deleted by the sweep
    /// of a full re-read. Its record keeps the last payload the store held.
    Deleted,
}

impl ChangeKind {
    /// Every kind, in code order.
    pub const ALL: [ChangeKind; 3] = [ChangeKind::Added, ChangeKind::Updated, ChangeKind::Deleted];

    /// `added`, `updated` or `deleted` (the form of `nango-sync changes`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }

    /// Parse [`ChangeKind::as_str`]'s form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A small integer code, for stores: 1, 2, 3.
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::Added => 1,
            ChangeKind::Updated => 2,
            ChangeKind::Deleted => 3,
        }
    }

    /// The inverse of [`ChangeKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind of a write: a tombstone is `Deleted`; a live record the store held live
    /// before is `Updated`; any other live record is `Added`. Decided by
    /// [`commit::prepare`](crate::sink::commit::prepare) for every store.
    pub fn of_write(now_deleted: bool, was_live: bool) -> Self {
        if now_deleted {
            ChangeKind::Deleted
        } else if was_live {
            ChangeKind::Updated
        } else {
            ChangeKind::Added
        }
    }

    /// The kind a store gives a record whose change kind it never recorded (a record
    /// written before the store kept kinds): `Deleted` for a tombstone, else `Added` when
    /// Nango's `last_action` is `ADDED`, else `Updated`.
    pub fn of_legacy(record: &StoredRecord) -> Self {
        if record.is_deleted() {
            ChangeKind::Deleted
        } else if record.meta.last_action == crate::record::LastAction::Added {
            ChangeKind::Added
        } else {
            ChangeKind::Updated
        }
    }

    /// The kind that matches a merge [`Outcome`] that writes (`None` for `unchanged` and
    /// `stale`).
    pub fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Added => Some(ChangeKind::Added),
            Outcome::Updated => Some(ChangeKind::Updated),
            Outcome::Deleted => Some(ChangeKind::Deleted),
            Outcome::Unchanged | Outcome::Stale => None,
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in the change feed: everything up to it has been read.
///
/// - `id: None`: after every change of the commits numbered up to `seq`
///   ([`FeedPosition::after_commit`]); `FeedPosition::default()` is the start of the
///   feed.
/// - `id: Some(id)`: after every change of the commits before `seq`, and the changes of
///   commit `seq` whose id is at most `id` in code-point order
///   ([`FeedPosition::after_change`], [`Change::position`]): a reader that stopped in the
///   middle of a large commit resumes in it.
///
/// Positions are ordered the way the feed is: by `seq`, then inside a commit by id, the
/// end of a commit (`None`) after all of its ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeedPosition {
    /// The commit's sequence number.
    pub seq: u64,
    /// The last record id read in commit `seq`; `None` when all of it was read.
    pub id: Option<String>,
}

impl FeedPosition {
    /// The start of the feed: before every change.
    pub const START: FeedPosition = FeedPosition { seq: 0, id: None };

    /// After every change of the commits numbered up to `seq`.
    pub fn after_commit(seq: u64) -> Self {
        FeedPosition { seq, id: None }
    }

    /// After the change of record `id` in commit `seq` (and every change before it).
    pub fn after_change(seq: u64, id: impl Into<String>) -> Self {
        FeedPosition {
            seq,
            id: Some(id.into()),
        }
    }

    /// Whether the change `(seq, id)` comes after this position.
    pub fn is_before(&self, seq: u64, id: &str) -> bool {
        match seq.cmp(&self.seq) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.id.as_deref().is_some_and(|after| id > after),
        }
    }
}

impl From<u64> for FeedPosition {
    fn from(seq: u64) -> Self {
        FeedPosition::after_commit(seq)
    }
}

impl Ord for FeedPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        self.seq
            .cmp(&other.seq)
            .then_with(|| match (&self.id, &other.id) {
                (None, None) => Ordering::Equal,
                // The end of a commit comes after every id of it.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            })
    }
}

impl PartialOrd for FeedPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            None => write!(f, "{}", self.seq),
            Some(id) => write!(f, "{} (after id {id:?})", self.seq),
        }
    }
}

/// Which streams a read covers: every field that is set must match. The default
/// matches every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamFilter {
    /// Only this integration.
    pub integration: Option<String>,
    /// Only this connection id.
    pub connection: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this variant.
    pub variant: Option<String>,
}

impl StreamFilter {
    /// Every stream.
    pub fn all() -> Self {
        Self::default()
    }

    /// The streams of one integration.
    pub fn integration(integration: impl Into<String>) -> Self {
        StreamFilter {
            integration: Some(integration.into()),
            ..Self::default()
        }
    }

    /// The streams of one connection (every model and variant).
    pub fn connection(integration: impl Into<String>, connection: impl Into<String>) -> Self {
        StreamFilter {
            connection: Some(connection.into()),
            ..Self::integration(integration)
        }
    }

    /// One stream.
    pub fn stream(stream: &StreamKey) -> Self {
        StreamFilter {
            integration: Some(stream.integration.clone()),
            connection: Some(stream.connection.clone()),
            model: Some(stream.model.clone()),
            variant: Some(stream.variant.clone()),
        }
    }

    /// Only this model (of whatever else the filter selects).
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only this variant (of whatever else the filter selects).
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// Whether `stream` is selected.
    pub fn matches(&self, stream: &StreamKey) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.integration, &stream.integration)
            && ok(&self.connection, &stream.connection)
            && ok(&self.model, &stream.model)
            && ok(&self.variant, &stream.variant)
    }

    /// Whether the filter selects every stream.
    pub fn is_all(&self) -> bool {
        *self == Self::default()
    }
}

/// How to read the change feed ([`RecordSink::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeQuery {
    /// Read the changes after this position.
    pub since: FeedPosition,
    /// Only changes of these streams.
    pub filter: StreamFilter,
    /// At most this many changes (0 reads none, but still gives the store's position).
    pub limit: usize,
}

impl ChangeQuery {
    /// The default number of changes per read.
    pub const DEFAULT_LIMIT: usize = 1000;

    /// The changes after `since` (a sequence number or a [`FeedPosition`]), of every
    /// stream, at most [`ChangeQuery::DEFAULT_LIMIT`].
    pub fn since(since: impl Into<FeedPosition>) -> Self {
        ChangeQuery {
            since: since.into(),
            filter: StreamFilter::default(),
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Only changes of the streams `filter` selects.
    pub fn with_filter(mut self, filter: StreamFilter) -> Self {
        self.filter = filter;
        self
    }

    /// At most `limit` changes.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

impl Default for ChangeQuery {
    fn default() -> Self {
        Self::since(FeedPosition::START)
    }
}

/// One entry of the change feed: a record's last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The record's stream.
    pub stream: StreamKey,
    /// What the change did.
    pub kind: ChangeKind,
    /// The record as the store holds it now (its `seq` is the change's). For a
    /// `deleted` change, a tombstone that keeps the last payload the store held: use
    /// [`Change::live`] or [`Change::deserialize`], which never give a tombstone.
    pub record: StoredRecord,
}

impl Change {
    /// The sequence number of the commit that made the change.
    pub fn seq(&self) -> u64 {
        self.record.seq
    }

    /// The record id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The feed position just after this change: acknowledge it once it is handled.
    pub fn position(&self) -> FeedPosition {
        FeedPosition::after_change(self.record.seq, self.record.id.clone())
    }

    /// Whether this change comes after `position`.
    pub fn is_after(&self, position: &FeedPosition) -> bool {
        position.is_before(self.record.seq, &self.record.id)
    }

    /// The record, unless the change is a deletion.
    pub fn live(&self) -> Option<&StoredRecord> {
        (self.kind != ChangeKind::Deleted && !self.record.is_deleted()).then_some(&self.record)
    }

    /// The record's payload in the application's own type; `Ok(None)` for a deletion (a
    /// tombstone is never deserialized).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.live() {
            Some(record) => typed(&self.stream, record).map(Some),
            None => Ok(None),
        }
    }

    /// The change as one line of `nango-sync changes`:
    /// `{"seq":N,"integration":..,"connection":..,"model":..,"variant":..,"id":..,"change":..,"record":{..}}`,
    /// the record in the form of `nango-sync export` (payload with its `_nango_metadata`).
    pub fn to_json_line(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let record = self.record.to_export_line();
        let mut out = String::with_capacity(record.len() + 160);
        out.push_str("{\"seq\":");
        out.push_str(&self.record.seq.to_string());
        for (key, value) in [
            ("integration", &self.stream.integration),
            ("connection", &self.stream.connection),
            ("model", &self.stream.model),
            ("variant", &self.stream.variant),
            ("id", &self.record.id),
        ] {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            out.push_str(&s(value));
        }
        out.push_str(",\"change\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"record\":");
        out.push_str(&record);
        out.push('}');
        out
    }
}

/// Deserialize a live record into `T`, naming the record when it does not fit.
pub(crate) fn typed<T: DeserializeOwned>(stream: &StreamKey, record: &StoredRecord) -> Result<T> {
    record
        .payload
        .deserialize()
        .map_err(|source| Error::Deserialize {
            stream: stream.to_string(),
            id: record.id.clone(),
            type_name: std::any::type_name::<T>(),
            source: Box::new(source),
        })
}

/// One read of the change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// The changes, in feed order.
    pub changes: Vec<Change>,
    /// Where the next read starts: after the last change read when the batch is full
    /// (`limit` changes), otherwise after the store's last commit as this read saw it,
    /// so a filtered read moves past the changes of other streams. Never before the
    /// query's `since`.
    pub next: FeedPosition,
}

impl ChangeBatch {
    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes.
    pub fn iter(&self) -> std::slice::Iter<'_, Change> {
        self.changes.iter()
    }

    /// The batch a store returns for `query`, from the changes after `query.since` it
    /// found (in feed order, filtered, at most `query.limit` of them) and `last_seq`, its
    /// last commit's sequence number as the same read saw it.
    pub(crate) fn assemble(query: &ChangeQuery, mut changes: Vec<Change>, last_seq: u64) -> Self {
        let next = if query.limit == 0 {
            changes.clear();
            query.since.clone()
        } else if changes.len() >= query.limit {
            changes.truncate(query.limit);
            changes
                .last()
                .map(Change::position)
                .unwrap_or_else(|| query.since.clone())
        } else {
            FeedPosition::after_commit(last_seq).max(query.since.clone())
        };
        ChangeBatch { changes, next }
    }
}

impl<'a> IntoIterator for &'a ChangeBatch {
    type Item = &'a Change;
    type IntoIter = std::slice::Iter<'a, Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}

impl IntoIterator for ChangeBatch {
    type Item = Change;
    type IntoIter = std::vec::IntoIter<Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter()
    }
}

/// A named consumer and its stored position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// The consumer's name.
    pub name: String,
    /// Everything up to this position has been acknowledged.
    pub position: FeedPosition,
}

/// Check a consumer name: 1 to 200 characters, no control characters.
pub(crate) fn validate_consumer(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "consumer name",
            format!("{name:?} must be 1 to 200 characters, without control characters"),
        ));
    }
    Ok(())
}

/// Refuse to acknowledge a position past the store's last commit (it would skip
/// changes not made yet).
pub(crate) fn check_ack(consumer: &str, position: &FeedPosition, last_seq: u64) -> Result<()> {
    validate_consumer(consumer)?;
    if position.seq > last_seq {
        return Err(Error::invalid(
            "feed position",
            format!(
                "consumer {consumer:?} cannot acknowledge position {position}: the store's last commit is {last_seq}"
            ),
        ));
    }
    Ok(())
}

/// How to list the records of several streams at once
/// ([`RecordSink::list_across`]): for example every
/// model of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAcross {
    /// The streams to read.
    pub filter: StreamFilter,
    /// Continue after this record (stream and id), for paging: the last one of the
    /// previous page.
    pub after: Option<(StreamKey, String)>,
    /// At most this many records.
    pub limit: usize,
    /// Include tombstones.
    pub include_deleted: bool,
    /// Only records whose last change is of this kind (see
    /// [`ListQuery::change`](crate::sink::ListQuery::change)).
    pub change: Option<ChangeKind>,
}

impl ListAcross {
    /// The first `limit` live records of the streams `filter` selects.
    pub fn new(filter: StreamFilter, limit: usize) -> Self {
        ListAcross {
            filter,
            after: None,
            limit,
            include_deleted: false,
            change: None,
        }
    }

    /// Continue after record `id` of `stream`.
    pub fn after(mut self, stream: StreamKey, id: impl Into<String>) -> Self {
        self.after = Some((stream, id.into()));
        self
    }

    /// Include tombstones.
    pub fn with_deleted(mut self) -> Self {
        self.include_deleted = true;
        self
    }

    /// Only records whose last change is `kind`.
    pub fn only(mut self, kind: ChangeKind) -> Self {
        self.change = Some(kind);
        self
    }
}

/// The number of live records and tombstones of a stream
/// ([`RecordSink::count`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Live records.
    pub live: u64,
    /// Tombstones (deleted records kept with their last payload).
    pub deleted: u64,
}

/// The store's side of subscriptions: a `watch` channel of the sequence number of the
/// last commit that changed records, which every store keeps and bumps after such a
/// commit ([`RecordSink::subscribe`](crate::RecordSink::subscribe)).
#[derive(Debug)]
pub(crate) struct CommitSignal {
    sender: watch::Sender<u64>,
}

impl CommitSignal {
    /// A signal starting at `last_seq`.
    pub(crate) fn new(last_seq: u64) -> Self {
        CommitSignal {
            sender: watch::Sender::new(last_seq),
        }
    }

    /// A new receiver.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }

    /// Record that commit `seq` changed records (receivers wake unless they saw a later
    /// one).
    pub(crate) fn committed(&self, seq: u64) {
        self.sender.send_if_modified(|last| {
            if seq > *last {
                *last = seq;
                true
            } else {
                false
            }
        });
    }

    /// Whether anyone is subscribed.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}

impl Default for CommitSignal {
    fn default() -> Self {
        Self::new(0)
    }
}

/// A reader of the change feed that waits for new commits: it reads the feed from a
/// position (or a named consumer's stored one), returns the changes a batch at a time,
/// and when it has read everything waits until the store commits changes (see the
/// [module documentation](self)).
///
/// [`next_batch`](Subscription::next_batch) is cancel-safe: dropped while it waits or
/// reads, it leaves the subscription's position where it was.
///
/// Its methods return boxed `Send` futures, so a task holding a subscription over a
/// [`SharedSink`](crate::SharedSink) can be given to `tokio::spawn`.
#[derive(Debug)]
pub struct Subscription<S: RecordSink> {
    sink: S,
    consumer: Option<String>,
    query: ChangeQuery,
    acked: FeedPosition,
    commits: watch::Receiver<u64>,
}

impl<S: RecordSink> Subscription<S> {
    /// Read every change after `since` (a sequence number or a [`FeedPosition`]).
    pub fn new(sink: S, since: impl Into<FeedPosition>) -> Self {
        let commits = sink.subscribe();
        let query = ChangeQuery::since(since);
        Subscription {
            acked: query.since.clone(),
            sink,
            consumer: None,
            query,
            commits,
        }
    }

    /// Read the changes after consumer `name`'s stored position (the start of the feed
    /// for a new consumer); [`ack`](Subscription::ack) stores the position reached.
    pub fn for_consumer(sink: S, name: impl Into<String>) -> BoxFuture<'static, Result<Self>> {
        let name = name.into();
        Box::pin(async move {
            validate_consumer(&name)?;
            let position = sink.consumer_position(&name).await?;
            let mut subscription = Self::new(sink, position);
            subscription.consumer = Some(name);
            Ok(subscription)
        })
    }

    /// Only the changes of the streams `filter` selects.
    pub fn with_filter(mut self, filter: StreamFilter) -> Self {
        self.query.filter = filter;
        self
    }

    /// At most `size` changes per batch (default [`ChangeQuery::DEFAULT_LIMIT`]; at least
    /// 1).
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.query.limit = size.max(1);
        self
    }

    /// The position after the last batch returned.
    pub fn position(&self) -> &FeedPosition {
        &self.query.since
    }

    /// The consumer name, when the subscription is a named consumer's.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    /// The store.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The next changes, waiting for a commit when there are none yet. Never empty.
    pub fn next_batch(&mut self) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(self.next_batch_inner())
    }

    async fn next_batch_inner(&mut self) -> Result<Vec<Change>> {
        loop {
            // Mark the current value seen before reading: a commit that lands after the
            // read wakes the wait below.
            self.commits.borrow_and_update();
            let batch = self.try_next_batch().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if self.commits.changed().await.is_err() {
                return Err(Error::invalid(
                    "subscription",
                    "the store was closed while a subscription waited for its commits",
                ));
            }
        }
    }

    /// The next changes if there are any now (an empty batch when the subscription has
    /// read everything), without waiting.
    pub fn try_next_batch(&mut self) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(async move {
            let batch = self.sink.changes(&self.query).await?;
            self.query.since = batch.next;
            Ok(batch.changes)
        })
    }

    /// Store the position reached (after the last batch returned) as the consumer's, so
    /// the consumer resumes after it. Only for a subscription made by
    /// [`for_consumer`](Subscription::for_consumer). Positions never move back.
    pub fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.ack_inner())
    }

    async fn ack_inner(&mut self) -> Result<()> {
        let Some(name) = &self.consumer else {
            return Err(Error::invalid(
                "subscription",
                "ack needs a named consumer (Subscription::for_consumer)",
            ));
        };
        if self.query.since > self.acked {
            self.acked = self.sink.ack(name, &self.query.since).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_like_the_feed() {
        let p = |seq, id: Option<&str>| FeedPosition {
            seq,
            id: id.map(str::to_owned),
        };
        let ordered = [
            p(0, None),
            p(1, Some("")),
            p(1, Some("a")),
            p(1, Some("b")),
            p(1, Some("é")),
            p(1, None),
            p(2, Some("a")),
            p(2, None),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        assert!(p(1, Some("a")).is_before(1, "b"));
        assert!(!p(1, Some("b")).is_before(1, "b"));
        assert!(!p(1, None).is_before(1, "zzz"));
        assert!(p(1, None).is_before(2, ""));
        assert!(!p(3, None).is_before(2, "x"));
        assert_eq!(FeedPosition::from(7), FeedPosition::after_commit(7));
        assert_eq!(FeedPosition::default(), FeedPosition::START);
    }

    #[test]
    fn change_kinds() {
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_code(k.code()), Some(k));
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(ChangeKind::from_code(0), None);
        assert_eq!(ChangeKind::of_write(true, true), ChangeKind::Deleted);
        assert_eq!(ChangeKind::of_write(false, true), ChangeKind::Updated);
        assert_eq!(ChangeKind::of_write(false, false), ChangeKind::Added);
    }

    #[test]
    fn filters_match_every_set_field() {
        let s = StreamKey::new("github", "acme", "Ticket");
        assert!(StreamFilter::all().matches(&s));
        assert!(StreamFilter::integration("github").matches(&s));
        assert!(!StreamFilter::integration("gitlab").matches(&s));
        assert!(StreamFilter::connection("github", "acme").matches(&s));
        assert!(
            !StreamFilter::connection("github", "acme")
                .with_model("Issue")
                .matches(&s)
        );
        assert!(StreamFilter::stream(&s).matches(&s));
        assert!(!StreamFilter::stream(&s).matches(&s.clone().with_variant("eu")));
    }

    #[test]
    fn batches_say_where_the_next_read_starts() {
        use crate::record::{Cursor, LastAction, Metadata, RawJson};
        use crate::time::Timestamp;
        let change = |seq, id: &str| Change {
            stream: StreamKey::new("g", "c", "M"),
            kind: ChangeKind::Added,
            record: StoredRecord {
                id: id.into(),
                payload: RawJson::from_trusted(format!(r#"{{"id":"{id}"}}"#)),
                meta: Metadata {
                    first_seen_at: Timestamp::from_micros(1),
                    last_modified_at: Timestamp::from_micros(1),
                    last_action: LastAction::Added,
                    deleted_at: None,
                    pruned_at: None,
                    cursor: Cursor("c".into()),
                },
                seq,
            },
        };
        let q = ChangeQuery::since(3).with_limit(2);
        // Full: resume after the last change returned.
        let b = ChangeBatch::assemble(&q, vec![change(4, "a"), change(4, "b")], 9);
        assert_eq!(b.changes.len(), 2);
        assert_eq!(b.next, FeedPosition::after_change(4, "b"));
        // Not full: resume after the last commit the read saw.
        let b = ChangeBatch::assemble(&q, vec![change(4, "a")], 9);
        assert_eq!(b.next, FeedPosition::after_commit(9));
        // Nothing new, and a store behind the position (never moves back).
        let b = ChangeBatch::assemble(&q, vec![], 2);
        assert_eq!(b.next, FeedPosition::after_commit(3));
        // Limit 0.
        let b = ChangeBatch::assemble(&q.clone().with_limit(0), vec![change(4, "a")], 9);
        assert!(b.is_empty());
        assert_eq!(b.next, FeedPosition::after_commit(3));
        let line = change(4, "a\"b").to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seq"], 4);
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["change"], "added");
        assert_eq!(v["variant"], "base");
        assert_eq!(v["record"]["_nango_metadata"]["cursor"], "c");
    }

    #[test]
    fn consumer_names_and_acks_are_checked() {
        assert!(validate_consumer("search-index").is_ok());
        assert!(validate_consumer("").is_err());
        assert!(validate_consumer("a\nb").is_err());
        assert!(validate_consumer(&"x".repeat(201)).is_err());
        assert!(check_ack("c", &FeedPosition::after_commit(5), 5).is_ok());
        let err = check_ack("c", &FeedPosition::after_commit(6), 5).unwrap_err();
        assert!(err.to_string().contains("last commit is 5"), "{err}");
    }
}
