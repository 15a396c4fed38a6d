//! The count check after a successful run
//! ([`EngineConfig::count_check`](super::EngineConfig::count_check)), and the
//! metrics of runs and commits.
//!
//! After a run that read to Nango's end, the engine asks Nango for its sync statuses of
//! the stream's connection (`GET /sync/status`) and compares the model's `recordCount`
//! with the store's live records ([`compare_counts`]). The result is kept in the run's
//! summary. In [`CountCheckMode::Repair`], a mismatch starts a full re-read with sweep
//! right away (recorded as a run of its own, reason
//! [`FullReadReason::CountMismatch`]), at most once per
//! [`CountCheckConfig::repair_cooldown`], so a mismatch that a sweep cannot fix (a
//! stream first synced with `modified_after`) does not make every run a full re-read.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::Label;
use tracing::{info, warn};

use super::Engine;
use crate::client::SyncSelector;
use crate::monitor::compare_counts;
use crate::monitor::metrics::{
    COMMIT_DURATION, COUNT_CHECKS, COUNT_DIFFERENCE, LAG, LAST_SUCCESS, RECORDS_COMMITTED,
    RUN_DURATION, RUNS, stream_labels, stream_labels_and,
};
use crate::record::StreamKey;
use crate::sink::{
    CommitOutcome, CountCheck, FullReadReason, HistoryQuery, RunOutcome, RunSummary,
};
use crate::time::Timestamp;

/// Whether the count check runs, and what a mismatch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CountCheckMode {
    /// No check (the default: it costs a request, and the API key needs the
    /// `environment:syncs:read` scope).
    #[default]
    Off,
    /// Check, and keep the result (a mismatch is a `count_mismatch` warning).
    Warn,
    /// Check, and on a mismatch run a full re-read with sweep.
    Repair,
}

/// The count check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountCheckConfig {
    /// Off, warn or repair.
    pub mode: CountCheckMode,
    /// At most one check per stream in this span (default: none, every successful run
    /// checks). A service polling often sets an hour or so.
    pub min_interval: Duration,
    /// No repair if one ran for the stream within this span (default 6 hours).
    pub repair_cooldown: Duration,
}

impl Default for CountCheckConfig {
    fn default() -> Self {
        CountCheckConfig {
            mode: CountCheckMode::Off,
            min_interval: Duration::ZERO,
            repair_cooldown: Duration::from_secs(6 * 3600),
        }
    }
}

/// When each stream was last checked, and the streams whose next run must check.
#[derive(Debug, Default)]
pub(super) struct Checks {
    last: Mutex<HashMap<StreamKey, Instant>>,
    forced: Mutex<HashSet<StreamKey>>,
}

impl Checks {
    /// Whether a successful run of `stream` checks now (and if so, note it).
    pub(super) fn due(&self, stream: &StreamKey, config: &CountCheckConfig) -> bool {
        if config.mode == CountCheckMode::Off {
            return false;
        }
        let forced = self
            .forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = forced
            || last
                .get(stream)
                .is_none_or(|t| now.duration_since(*t) >= config.min_interval);
        if due {
            last.insert(stream.clone(), now);
        }
        due
    }
}

impl Engine {
    /// Make the next successful run of `stream` check its count, whatever
    /// [`CountCheckConfig::min_interval`] says (when checks are on).
    pub fn request_count_check(&self, stream: &StreamKey) {
        self.checks
            .forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.clone());
    }

    /// Compare the store's live records of `stream` (after a run that started at
    /// `run_started`) with Nango's count. A failure to ask Nango or to read the store
    /// is a skipped check, not a failed run: the run itself succeeded.
    pub(super) async fn count_check(
        &self,
        stream: &StreamKey,
        run_started: Timestamp,
    ) -> CountCheck {
        let skipped = |reason: String| CountCheck::Skipped {
            checked_at: Timestamp::now(),
            reason,
        };
        let syncs = match self
            .client
            .sync_status(
                &stream.integration,
                Some(&stream.connection),
                &SyncSelector::All,
            )
            .await
        {
            Ok(syncs) => syncs,
            Err(e) => {
                let hint = if e.status() == Some(403) {
                    " (the secret key needs the environment:syncs:read scope)"
                } else {
                    ""
                };
                warn!(error = %e, "count check: could not read Nango's sync status{hint}");
                return skipped(format!("Nango's sync status could not be read: {e}{hint}"));
            }
        };
        let local = match self.sink.stream_status(stream).await {
            Ok(status) => status.map_or(0, |s| s.live_records),
            Err(e) => return skipped(format!("the store's count could not be read: {e}")),
        };
        let check = compare_counts(stream, &syncs, local, run_started, Timestamp::now());
        let result = match &check {
            CountCheck::Match { records, .. } => {
                info!(
                    records,
                    "count check: the store holds as many live records as Nango"
                );
                metrics::gauge!(COUNT_DIFFERENCE, stream_labels(stream)).set(0.0);
                "match"
            }
            CountCheck::Mismatch { local, nango, .. } => {
                warn!(
                    local,
                    nango, "count check: the store's live record count differs from Nango's"
                );
                metrics::gauge!(COUNT_DIFFERENCE, stream_labels(stream))
                    .set(*local as f64 - *nango as f64);
                "mismatch"
            }
            CountCheck::Skipped { reason, .. } => {
                info!(reason = %reason, "count check skipped");
                "skipped"
            }
        };
        metrics::counter!(COUNT_CHECKS, stream_labels_and(stream, "result", result)).increment(1);
        check
    }

    /// Whether a full re-read repaired a count mismatch of `stream` within the cooldown.
    pub(super) async fn repaired_recently(&self, stream: &StreamKey) -> bool {
        let cooldown = self.config.count_check.repair_cooldown;
        let since =
            Timestamp::now().add_micros(-i64::try_from(cooldown.as_micros()).unwrap_or(i64::MAX));
        match self
            .sink
            .run_history(&HistoryQuery::stream(stream, 50))
            .await
        {
            Ok(runs) => runs.iter().any(|e| {
                e.run.full_reason == Some(FullReadReason::CountMismatch)
                    && e.run.started_at >= since
            }),
            // Unknown: do not repair (a full re-read is expensive).
            Err(_) => true,
        }
    }
}

/// The metrics of a finished run.
pub(super) fn record_run_metrics(stream: &StreamKey, run: &RunSummary, took: Duration) {
    let outcome = run.outcome.as_str();
    metrics::counter!(RUNS, stream_labels_and(stream, "outcome", outcome)).increment(1);
    metrics::histogram!(
        RUN_DURATION,
        vec![
            Label::new("integration", stream.integration.clone()),
            Label::new("model", stream.model.clone()),
            Label::new("outcome", outcome),
        ]
    )
    .record(took.as_secs_f64());
    if run.outcome == RunOutcome::Ok {
        metrics::gauge!(LAST_SUCCESS, stream_labels(stream))
            .set(run.finished_at.as_micros() as f64 / 1e6);
        metrics::gauge!(LAG, stream_labels(stream)).set(0.0);
    }
}

/// The metrics of a commit.
pub(super) fn record_commit_metrics(
    stream: &StreamKey,
    backend: &'static str,
    out: &CommitOutcome,
    took: Duration,
) {
    metrics::histogram!(COMMIT_DURATION, "backend" => backend).record(took.as_secs_f64());
    for (change, n) in [
        ("added", out.counts.added),
        ("updated", out.counts.updated),
        ("deleted", out.counts.deleted),
    ] {
        if n > 0 {
            metrics::counter!(
                RECORDS_COMMITTED,
                stream_labels_and(stream, "change", change)
            )
            .increment(n);
        }
    }
}
