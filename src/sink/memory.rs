//! The in-memory store: the reference implementation of [`RecordSink`].
//!
//! Everything lives in one `BTreeMap` behind a mutex. A commit plans its writes with the
//! merge rule, checks the fault points, and only then applies them, so a failed commit
//! changes nothing. Useful for tests and for applications that only need a cache.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::merge::{Counts, PayloadSource, StoredVersionBuf, payload_text_is_bare, plan_page};
use crate::record::{LastAction, StoredRecord, StreamKey};
use crate::sink::{
    Commit, CommitOutcome, FaultInjector, FaultPoint, ListQuery, RecordSink, RunSummary,
    StreamState, StreamStatus,
};

const BACKEND: &str = "memory";

/// An in-memory store (not durable).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    faults: FaultInjector,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    streams: BTreeMap<StreamKey, StreamData>,
}

#[derive(Debug, Default, Clone)]
struct StreamData {
    state: StreamState,
    totals: Counts,
    last_run: Option<RunSummary>,
    upstream_error: Option<String>,
    records: BTreeMap<String, Row>,
}

#[derive(Debug, Clone)]
struct Row {
    record: StoredRecord,
    seen_gen: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit (commits are
        // applied after every check), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn check_cursor(stream: &StreamKey, state: &StreamState, commit: &Commit) -> Result<()> {
    if state.cursor != commit.expected_cursor {
        return Err(Error::CursorConflict {
            stream: stream.to_string(),
            expected: commit.expected_cursor.as_ref().map(|c| c.0.clone()),
            actual: state.cursor.as_ref().map(|c| c.0.clone()),
        });
    }
    Ok(())
}

/// The stream state after a commit.
pub(crate) fn next_state(state: &StreamState, commit: &Commit) -> StreamState {
    let mut next = state.clone();
    next.cursor = commit.cursor.clone();
    match commit.full_read {
        Some(f) if f.complete => {
            next.generation = f.generation;
            next.full_read = None;
        }
        Some(f) => next.full_read = Some(f.generation),
        None => {}
    }
    next
}

/// The generation stamped on records a commit writes or sees.
pub(crate) fn stamp_generation(state: &StreamState, commit: &Commit) -> u64 {
    commit
        .full_read
        .map(|f| f.generation)
        .unwrap_or(state.generation)
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
        check_cursor(&commit.stream, &data.state, &commit)?;
        let plan = plan_page(&commit.records, |id| {
            data.records.get(id).map(|row| StoredVersionBuf {
                last_modified_at: row.record.meta.last_modified_at,
                cursor: row.record.meta.cursor.0.clone(),
                deleted: row.record.is_deleted(),
                pruned: row.record.meta.pruned_at.is_some()
                    || payload_text_is_bare(id, row.record.payload.as_str()),
            })
        });
        let gen_stamp = stamp_generation(&data.state, &commit);
        // Stage every change; apply only after the fault points passed.
        let mut staged: Vec<Row> = Vec::with_capacity(plan.writes.len());
        for w in &plan.writes {
            let r = &commit.records[w.index];
            let payload = match w.payload {
                PayloadSource::Page(i) => commit.records[i].payload.clone(),
                PayloadSource::Stored => match data.records.get(&r.id) {
                    Some(row) => row.record.payload.clone(),
                    None => r.payload.clone(),
                },
            };
            staged.push(Row {
                record: StoredRecord {
                    id: r.id.clone(),
                    payload,
                    meta: r.meta.clone(),
                    seq,
                },
                seen_gen: gen_stamp,
            });
        }
        let touched: Vec<&str> = plan
            .untouched
            .iter()
            .map(|&i| commit.records[i].id.as_str())
            .collect();
        self.faults.check(BACKEND, FaultPoint::AfterRecords)?;
        let state = next_state(&data.state, &commit);
        self.faults.check(BACKEND, FaultPoint::BeforeCommit)?;

        // Apply.
        let touched: Vec<String> = touched.into_iter().map(str::to_owned).collect();
        let data = inner.streams.entry(commit.stream.clone()).or_default();
        for row in staged {
            data.records.insert(row.record.id.clone(), row);
        }
        if commit.full_read.is_some() {
            for id in &touched {
                if let Some(row) = data.records.get_mut(id) {
                    row.seen_gen = gen_stamp;
                }
            }
        }
        let mut counts = plan.counts;
        let mut swept = 0;
        if let Some(f) = commit.full_read.filter(|f| f.complete) {
            for row in data.records.values_mut() {
                if row.seen_gen < f.generation && !row.record.is_deleted() {
                    row.record.meta.last_action = LastAction::Deleted;
                    row.record.meta.deleted_at = Some(commit.now);
                    row.record.seq = seq;
                    swept += 1;
                }
            }
        }
        counts.deleted += swept;
        data.state = state;
        data.totals.add(&counts);
        inner.seq = seq;
        Ok(CommitOutcome { seq, counts, swept })
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary) -> Result<()> {
        self.lock()
            .streams
            .entry(stream.clone())
            .or_default()
            .last_run = Some(run.clone());
        Ok(())
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        self.lock()
            .streams
            .entry(stream.clone())
            .or_default()
            .upstream_error = error.map(str::to_owned);
        Ok(())
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
            .map(|(_, row)| &row.record)
            .filter(|r| query.include_deleted || !r.is_deleted())
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        let inner = self.lock();
        Ok(inner
            .streams
            .iter()
            .map(|(key, d)| {
                let deleted = d.records.values().filter(|r| r.record.is_deleted()).count() as u64;
                StreamStatus {
                    stream: key.clone(),
                    state: d.state.clone(),
                    totals: d.totals,
                    live_records: d.records.len() as u64 - deleted,
                    deleted_records: deleted,
                    last_run: d.last_run.clone(),
                    upstream_error: d.upstream_error.clone(),
                }
            })
            .collect())
    }

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }
}
