//! The in-memory store (`memory://`): the reference implementation of [`RecordSink`].
//!
//! Everything lives in one `BTreeMap` behind a mutex. A commit is prepared by
//! [`commit::prepare`](super::commit::prepare) and applied under the lock; the store has
//! no transaction to roll back, so it checks both fault points before it changes
//! anything, and a failed commit changes nothing. The change feed is a `(seq, id)`
//! index kept beside the records under the same lock. The conformance suite compares every
//! other store with this one. Useful for tests and for applications that only need a
//! cache.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use crate::error::Result;
use crate::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, CommitSignal, Consumer, FeedPosition,
    RecordCounts, check_ack, validate_consumer,
};
use crate::merge::{Counts, StoredVersionBuf, payload_text_is_bare};
use crate::record::{StoredRecord, StreamKey};
use crate::sink::commit::{self, Stored, Sweep, WriteKind};
use crate::sink::fault::Faults;
use crate::sink::outbox::{
    Claim, ClaimRequest, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery, Settlement,
};
use crate::sink::{
    Commit, CommitOutcome, HistoryQuery, ListQuery, RecordSink, RunEntry, RunSummary, StreamState,
    StreamStatus,
};
use crate::time::Timestamp;

mod outbox;

mod history;

const BACKEND: &str = "memory";

/// Options of a [`MemoryStore`].
#[derive(Debug, Clone, Default)]
pub struct MemoryOptions {
    faults: Faults,
}

impl MemoryOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    crate::sink::fault::with_faults_option!();
}

/// An in-memory store (not durable).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    faults: Faults,
    signal: CommitSignal,
    outbox: Mutex<outbox::MemoryOutbox>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    streams: BTreeMap<StreamKey, StreamData>,
    /// The number of the last run recorded (the store-wide order of the history).
    run_seq: u64,
    /// The change feed's index: `(seq, id)` of every record, with its stream (each
    /// commit writes one stream).
    feed: BTreeMap<(u64, String), StreamKey>,
    /// Named consumers' positions.
    consumers: BTreeMap<String, FeedPosition>,
}

#[derive(Debug, Default, Clone)]
struct StreamData {
    state: StreamState,
    totals: Counts,
    last_run: Option<RunSummary>,
    upstream_error: Option<String>,
    records: BTreeMap<String, Row>,
    /// The run history: (run number, run), oldest first.
    runs: std::collections::VecDeque<(u64, RunSummary)>,
    last_success: Option<RunSummary>,
}

#[derive(Debug, Clone)]
struct Row {
    record: StoredRecord,
    seen_gen: u64,
    /// The kind of the record's last change.
    change: ChangeKind,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `options`.
    pub fn with_options(options: MemoryOptions) -> Self {
        MemoryStore {
            inner: Mutex::default(),
            faults: options.faults,
            signal: CommitSignal::default(),
            outbox: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit (commits are
        // applied after every check), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, outbox::MemoryOutbox> {
        // Every outbox change is one assignment after its checks: a poisoned lock holds
        // a consistent outbox.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RecordSink for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map(|d| d.state.clone())
            .unwrap_or_default())
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let mut inner = self.lock();
        let seq = inner.seq + 1;
        let empty = StreamData::default();
        let data = inner.streams.get(&commit.stream).unwrap_or(&empty);
        let prepared = commit::prepare(&data.state, &commit, |id| {
            Ok(data.records.get(id).map(|row| Stored {
                version: StoredVersionBuf {
                    last_modified_at: row.record.meta.last_modified_at,
                    cursor: row.record.meta.cursor.0.clone(),
                    deleted: row.record.is_deleted(),
                    pruned: row.record.meta.pruned_at.is_some()
                        || payload_text_is_bare(id, row.record.payload.as_str()),
                },
                handle: (),
            }))
        })?;
        // No transaction to roll back: every check comes before the first change.
        self.faults.after_records(BACKEND)?;
        self.faults.before_commit(BACKEND)?;

        let generation = prepared.generation();
        let Inner { streams, feed, .. } = &mut *inner;
        let data = streams.entry(commit.stream.clone()).or_default();
        for w in prepared.writes() {
            let r = w.record;
            let payload = match &w.kind {
                WriteKind::Insert { payload } | WriteKind::Replace { payload, .. } => {
                    Some(*payload)
                }
                WriteKind::KeepPayload { .. } => None,
            };
            // The lock is held since the lookups: a row found then is here now.
            match data.records.get_mut(&r.id) {
                Some(row) => {
                    if let Some(payload) = payload {
                        row.record.payload = payload.clone();
                    }
                    row.record.meta = r.meta.clone();
                    feed.remove(&(row.record.seq, r.id.clone()));
                    row.record.seq = seq;
                    row.seen_gen = generation;
                    row.change = w.change;
                }
                None => {
                    let record = StoredRecord {
                        id: r.id.clone(),
                        payload: payload.unwrap_or(&r.payload).clone(),
                        meta: r.meta.clone(),
                        seq,
                    };
                    let row = Row {
                        record,
                        seen_gen: generation,
                        change: w.change,
                    };
                    data.records.insert(r.id.clone(), row);
                }
            }
            feed.insert((seq, r.id.clone()), commit.stream.clone());
        }
        for s in prepared.seen() {
            if let Some(row) = data.records.get_mut(s.id) {
                row.seen_gen = generation;
            }
        }
        let mut swept = 0;
        if let Some(sweep) = prepared.sweep() {
            for row in data.records.values_mut() {
                if sweep.sweeps(row.seen_gen, row.record.is_deleted()) {
                    sweep.tombstone(&mut row.record.meta);
                    feed.remove(&(row.record.seq, row.record.id.clone()));
                    row.record.seq = seq;
                    row.change = Sweep::CHANGE;
                    feed.insert((seq, row.record.id.clone()), commit.stream.clone());
                    swept += 1;
                }
            }
        }
        let done = prepared.finish(seq, swept);
        data.state = done.state;
        data.totals.add(&done.outcome.counts);
        inner.seq = seq;
        drop(inner);
        if done.outcome.counts.changed() > 0 {
            self.signal.committed(seq);
        }
        Ok(done.outcome)
    }

    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .and_then(|d| d.records.get(id))
            .map(|row| row.record.clone()))
    }

    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        let inner = self.lock();
        let Some(data) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let lower = match &query.after_id {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        Ok(data
            .records
            .range((lower, Bound::Unbounded))
            .filter(|(_, row)| query.selects(row.record.is_deleted(), row.change))
            .map(|(_, row)| row.record.clone())
            .take(query.limit)
            .collect())
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        self.lock()
            .streams
            .entry(stream.clone())
            .or_default()
            .upstream_error = error.map(str::to_owned);
        Ok(())
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        let inner = self.lock();
        Ok(inner.streams.iter().map(|(key, d)| d.status(key)).collect())
    }

    // The run history (`memory/history.rs`).

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        history::record(&mut self.lock(), stream, run, keep);
        Ok(())
    }

    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .and_then(|d| d.last_run.clone()))
    }

    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        Ok(history::read(&self.lock(), query))
    }

    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        Ok(self.lock().streams.get(stream).map(|d| d.status(stream)))
    }

    // The application's side: the feed is read from the `(seq, id)` index; counts are
    // counted (this is the reference the other stores' counters are compared with).

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        let inner = self.lock();
        let lower = match &query.since.id {
            Some(id) => Bound::Excluded((query.since.seq, id.clone())),
            None => match query.since.seq.checked_add(1) {
                Some(next) => Bound::Included((next, String::new())),
                None => return Ok(ChangeBatch::assemble(query, Vec::new(), inner.seq)),
            },
        };
        let mut changes = Vec::new();
        for ((_, id), stream) in inner.feed.range((lower, Bound::Unbounded)) {
            if changes.len() >= query.limit {
                break;
            }
            if !query.filter.matches(stream) {
                continue;
            }
            let row = &inner.streams[stream].records[id];
            changes.push(Change {
                stream: stream.clone(),
                kind: row.change,
                record: row.record.clone(),
            });
        }
        Ok(ChangeBatch::assemble(query, changes, inner.seq))
    }

    async fn last_seq(&self) -> Result<u64> {
        Ok(self.lock().seq)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        Ok(self
            .lock()
            .consumers
            .get(consumer)
            .cloned()
            .unwrap_or_default())
    }

    async fn ack(&self, consumer: &str, position: &FeedPosition) -> Result<FeedPosition> {
        let mut inner = self.lock();
        check_ack(consumer, position, inner.seq)?;
        let stored = inner.consumers.entry(consumer.to_owned()).or_default();
        if *position > *stored {
            *stored = position.clone();
        }
        Ok(stored.clone())
    }

    async fn consumers(&self) -> Result<Vec<Consumer>> {
        Ok(self
            .lock()
            .consumers
            .iter()
            .map(|(name, position)| Consumer {
                name: name.clone(),
                position: position.clone(),
            })
            .collect())
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<bool> {
        validate_consumer(consumer)?;
        Ok(self.lock().consumers.remove(consumer).is_some())
    }

    async fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        let inner = self.lock();
        let Some(data) = inner.streams.get(stream) else {
            return Ok(RecordCounts::default());
        };
        let deleted = data
            .records
            .values()
            .filter(|r| r.record.is_deleted())
            .count() as u64;
        Ok(RecordCounts {
            live: data.records.len() as u64 - deleted,
            deleted,
        })
    }

    // The outbox.

    async fn outbox_enqueue(&self, item: NewOutboxItem) -> Result<OutboxItem> {
        self.outbox().enqueue(item)
    }

    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        Ok(self.outbox().claim(request))
    }

    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        Ok(self.outbox().extend(claim, until, now))
    }

    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        Ok(self.outbox().settle(claim, settlement, now))
    }

    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        Ok(self.outbox().get(id))
    }

    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        Ok(self.outbox().list(query))
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        Ok(self.outbox().counts())
    }

    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        Ok(self.outbox().purge(finished_before))
    }
}

impl StreamData {
    fn status(&self, key: &StreamKey) -> StreamStatus {
        let deleted = self
            .records
            .values()
            .filter(|r| r.record.is_deleted())
            .count() as u64;
        StreamStatus {
            stream: key.clone(),
            state: self.state.clone(),
            totals: self.totals,
            live_records: self.records.len() as u64 - deleted,
            deleted_records: deleted,
            last_run: self.last_run.clone(),
            upstream_error: self.upstream_error.clone(),
            last_success: self.last_success.clone(),
        }
    }
}
