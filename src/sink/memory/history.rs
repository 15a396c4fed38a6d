//! The run history of the in-memory store: per stream, its runs oldest first with the
//! store-wide number each was recorded under, pruned to the last `keep` on each insert.

use super::Inner;
use crate::record::StreamKey;
use crate::sink::history::runs_to_keep;
use crate::sink::{HistoryQuery, RunEntry, RunOutcome, RunSummary};

/// Record `run` of `stream` (under the store's lock: one step for readers).
pub(super) fn record(inner: &mut Inner, stream: &StreamKey, run: &RunSummary, keep: usize) {
    inner.run_seq += 1;
    let number = inner.run_seq;
    let data = inner.streams.entry(stream.clone()).or_default();
    data.runs.push_back((number, run.clone()));
    while data.runs.len() > runs_to_keep(keep) {
        data.runs.pop_front();
    }
    data.last_run = Some(run.clone());
    if run.outcome == RunOutcome::Ok {
        data.last_success = Some(run.clone());
    }
}

/// The runs `query` asks for, newest first.
pub(super) fn read(inner: &Inner, query: &HistoryQuery) -> Vec<RunEntry> {
    let mut runs: Vec<(u64, &StreamKey, &RunSummary)> = inner
        .streams
        .iter()
        .filter(|(key, _)| query.stream.as_ref().is_none_or(|s| s == *key))
        .flat_map(|(key, d)| d.runs.iter().map(move |(n, run)| (*n, key, run)))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    runs.into_iter()
        .take(query.limit)
        .map(|(_, stream, run)| RunEntry {
            stream: stream.clone(),
            run: run.clone(),
        })
        .collect()
}
