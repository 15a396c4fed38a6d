//! The run history: what every store keeps of the runs of each stream.
//!
//! Each run the engine finishes is recorded ([`RecordSink::record_run`]) as a
//! [`RunSummary`]: its [`RunId`], start and end, [`RunOutcome`], error, pages, counts,
//! whether it was a full re-read and why, and the result of the count check made after
//! it ([`CountCheck`]). A store keeps the last `keep` runs of each stream (the insert
//! and the pruning of older runs are one transaction), the stream's last run and its
//! last successful run (so `status` can tell the lag even when every run in the history
//! failed). [`RecordSink::run_history`] reads them back newest first, in the order the
//! store recorded them.
//!
//! [`RecordSink::record_run`]: super::RecordSink::record_run
//! [`RecordSink::run_history`]: super::RecordSink::run_history

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{FullReadReason, RunSummary};
use crate::merge::Counts;
use crate::record::StreamKey;
use crate::time::Timestamp;

/// The number of runs per stream a store keeps when nothing else is configured
/// ([`EngineConfig::run_history`](crate::engine::EngineConfig::run_history)).
pub const DEFAULT_RUN_HISTORY: usize = 100;

/// The identity of one run: a UUID v7 (ordered by its start time), made when the run
/// starts, so log lines and tracing spans of the run carry it before the store records
/// it. Runs recorded before runs had ids read back with the nil id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RunId(uuid::Uuid);

impl RunId {
    /// A new id, ordered after the ids made before it in this process.
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7())
    }

    /// The nil id, of runs recorded before runs had ids.
    pub fn nil() -> Self {
        RunId(uuid::Uuid::nil())
    }

    /// Whether this is the nil id.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({self})")
    }
}

impl FromStr for RunId {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        uuid::Uuid::parse_str(s)
            .map(RunId)
            .map_err(|e| crate::Error::invalid("run id", format!("{s:?}: {e}")))
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// It read to Nango's end (`next_cursor: null`): the store equals Nango as of then.
    Ok,
    /// It failed; [`RunSummary::error`] says why. What it committed stays committed.
    Error,
    /// It was stopped between two pages (shutdown, SIGINT/SIGTERM): the commit in
    /// flight completed, and the next run resumes from the stored cursor.
    Interrupted,
}

impl RunOutcome {
    /// `ok`, `error` or `interrupted`: the stored and printed form.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Error => "error",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    /// The outcome named `s` (see [`RunOutcome::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(RunOutcome::Ok),
            "error" => Some(RunOutcome::Error),
            "interrupted" => Some(RunOutcome::Interrupted),
            _ => None,
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The comparison of the store's live record count with the count Nango reports for
/// the stream (`recordCount` of `GET /sync/status`), made after a successful run.
///
/// Nango's `recordCount` counts the records it holds that are not deleted, pruned ones
/// included, which is what the store counts as live. The two are compared only when
/// Nango's last sync run finished before this run started and no Nango run is in
/// progress, so both sides describe the same data; otherwise the check is
/// [`CountCheck::Skipped`] with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CountCheck {
    /// Both sides count the same live records.
    Match {
        /// When Nango was asked.
        checked_at: Timestamp,
        /// The live records on both sides.
        records: u64,
    },
    /// The counts differ: records were removed upstream without a delete event (a
    /// cache reset), or a run missed changes. A full re-read with sweep repairs it.
    Mismatch {
        /// When Nango was asked.
        checked_at: Timestamp,
        /// The live records of the store.
        local: u64,
        /// The live records Nango reports.
        nango: u64,
    },
    /// The counts could not be compared.
    Skipped {
        /// When the check was tried.
        checked_at: Timestamp,
        /// Why not.
        reason: String,
    },
}

impl CountCheck {
    /// When the check was made.
    pub fn checked_at(&self) -> Timestamp {
        match self {
            CountCheck::Match { checked_at, .. }
            | CountCheck::Mismatch { checked_at, .. }
            | CountCheck::Skipped { checked_at, .. } => *checked_at,
        }
    }

    /// Whether the counts differed.
    pub fn is_mismatch(&self) -> bool {
        matches!(self, CountCheck::Mismatch { .. })
    }
}

/// A run of the history, with its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEntry {
    /// The stream the run read.
    pub stream: StreamKey,
    /// The run.
    pub run: RunSummary,
}

/// Which runs [`RecordSink::run_history`](super::RecordSink::run_history) returns:
/// newest first, at most `limit`, of one stream or of every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only the runs of this stream (`None`: every stream's, interleaved in the order
    /// they were recorded).
    pub stream: Option<StreamKey>,
    /// At most this many runs.
    pub limit: usize,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            stream: None,
            limit: DEFAULT_RUN_HISTORY,
        }
    }
}

impl HistoryQuery {
    /// The last `limit` runs of every stream.
    pub fn all(limit: usize) -> Self {
        HistoryQuery {
            stream: None,
            limit,
        }
    }

    /// The last `limit` runs of `stream`.
    pub fn stream(stream: &StreamKey, limit: usize) -> Self {
        HistoryQuery {
            stream: Some(stream.clone()),
            limit,
        }
    }
}

/// The serialized form of a [`RunSummary`], tolerant of summaries written before runs
/// had ids and outcomes: a missing outcome is told from the error (a run stopped by
/// shutdown said so in its error).
#[derive(Deserialize)]
pub(super) struct RunSummaryWire {
    #[serde(default)]
    id: Option<RunId>,
    #[serde(default)]
    instance: String,
    started_at: Timestamp,
    finished_at: Timestamp,
    #[serde(default)]
    outcome: Option<RunOutcome>,
    pages: u64,
    counts: Counts,
    full: bool,
    #[serde(default)]
    full_reason: Option<FullReadReason>,
    #[serde(default)]
    high_water_mark: Option<Timestamp>,
    error: Option<String>,
    #[serde(default)]
    count_check: Option<CountCheck>,
}

impl From<RunSummaryWire> for RunSummary {
    fn from(w: RunSummaryWire) -> Self {
        let outcome = w.outcome.unwrap_or(match &w.error {
            None => RunOutcome::Ok,
            Some(e) if e.starts_with("stopped by shutdown") => RunOutcome::Interrupted,
            Some(_) => RunOutcome::Error,
        });
        RunSummary {
            id: w.id.unwrap_or_default(),
            instance: w.instance,
            started_at: w.started_at,
            finished_at: w.finished_at,
            outcome,
            pages: w.pages,
            counts: w.counts,
            full: w.full,
            full_reason: w.full_reason,
            high_water_mark: w.high_water_mark,
            error: w.error,
            count_check: w.count_check,
        }
    }
}

/// How many runs of a stream a store keeps when asked to keep `keep`: at least the
/// last one.
pub(crate) fn runs_to_keep(keep: usize) -> usize {
    keep.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_ordered_and_round_trip() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a < b, "v7 ids made later sort later");
        assert_eq!(a.to_string().parse::<RunId>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<RunId>(&json).unwrap(), a);
        assert!("not-an-id".parse::<RunId>().is_err());
        assert!(RunId::default().is_nil());
    }

    #[test]
    fn summaries_without_ids_or_outcomes_read_back() {
        let old = |error: &str| {
            format!(
                r#"{{"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z","pages":1,
                "counts":{{"added":1,"updated":0,"deleted":0,"unchanged":0,"stale":0}},"full":false,"error":{error}}}"#
            )
        };
        let run: RunSummary = serde_json::from_str(&old("null")).unwrap();
        assert_eq!((run.outcome, run.id.is_nil()), (RunOutcome::Ok, true));
        let run: RunSummary = serde_json::from_str(&old(r#""boom""#)).unwrap();
        assert_eq!(run.outcome, RunOutcome::Error);
        let run: RunSummary =
            serde_json::from_str(&old(r#""stopped by shutdown before the end""#)).unwrap();
        assert_eq!(run.outcome, RunOutcome::Interrupted);
    }

    #[test]
    fn count_checks_serialize_with_their_result() {
        let c = CountCheck::Mismatch {
            checked_at: Timestamp::from_micros(0),
            local: 3,
            nango: 2,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["result"], "mismatch");
        assert_eq!(serde_json::from_value::<CountCheck>(v).unwrap(), c);
        assert!(c.is_mismatch());
    }
}
