//! Stream health: "is my data healthy?", per stream, from what the store keeps.
//!
//! [`assess`] is a pure function of a stream's status, its recent runs, the
//! [`HealthConfig`] and the current time; [`check`] reads a store and assesses every
//! stream (or the streams asked for) with a [`Clock`]. Each [`Warning`] has a stable
//! [`WarningCode`] and a message that says what to do.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Clock;
use super::metrics::{LAG, LAST_SUCCESS, STREAM_WARNINGS, stream_labels, stream_labels_and};
use crate::error::Result;
use crate::record::StreamKey;
use crate::sink::{
    CountCheck, DynRecordSink, FullReadReason, HistoryQuery, RunOutcome, RunSummary, StreamStatus,
};
use crate::time::Timestamp;

const DAY: u64 = 86_400;

/// The thresholds of the warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Nango's prune window: it empties the payload of a record not updated for this
    /// long (30 days).
    pub prune_window: Duration,
    /// Warn `retention_prune_risk` when no run succeeded for this fraction of
    /// [`HealthConfig::prune_window`] (default 0.5: 15 days).
    pub prune_fraction: f64,
    /// Nango's delete window: records are deleted after this long without a sync run
    /// (60 days).
    pub delete_window: Duration,
    /// Warn `retention_delete_risk` when no run succeeded for this fraction of
    /// [`HealthConfig::delete_window`] (default 0.5: 30 days).
    pub delete_fraction: f64,
    /// How far back a rejected cursor still warns (default 24 hours).
    pub recent: Duration,
    /// How many of each stream's last runs are read (default 20).
    pub runs: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            prune_window: Duration::from_secs(30 * DAY),
            prune_fraction: 0.5,
            delete_window: Duration::from_secs(60 * DAY),
            delete_fraction: 0.5,
            recent: Duration::from_secs(DAY),
            runs: 20,
        }
    }
}

impl HealthConfig {
    /// The age of the last successful run that warns `retention_prune_risk`.
    pub fn prune_threshold(&self) -> Duration {
        self.prune_window
            .mul_f64(self.prune_fraction.clamp(0.0, 1.0))
    }

    /// The age of the last successful run that warns `retention_delete_risk`.
    pub fn delete_threshold(&self) -> Duration {
        self.delete_window
            .mul_f64(self.delete_fraction.clamp(0.0, 1.0))
    }
}

/// What a warning is about. The codes are stable: scripts and alerts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarningCode {
    /// No successful run for long enough that Nango may prune payloads before they are
    /// read.
    RetentionPruneRisk,
    /// No successful run for long enough that Nango may delete records without a
    /// delete event.
    RetentionDeleteRisk,
    /// The store's live record count differs from Nango's.
    CountMismatch,
    /// Nango rejected the stored cursor recently (the run re-read everything).
    CursorRejected,
    /// Nango reports that its sync of the stream failed.
    UpstreamError,
    /// The stream's last run failed.
    LastRunFailed,
}

impl WarningCode {
    /// Every code, in a fixed order.
    pub const ALL: [WarningCode; 6] = [
        WarningCode::RetentionPruneRisk,
        WarningCode::RetentionDeleteRisk,
        WarningCode::CountMismatch,
        WarningCode::CursorRejected,
        WarningCode::UpstreamError,
        WarningCode::LastRunFailed,
    ];

    /// The code as scripts see it: `retention_prune_risk`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            WarningCode::RetentionPruneRisk => "retention_prune_risk",
            WarningCode::RetentionDeleteRisk => "retention_delete_risk",
            WarningCode::CountMismatch => "count_mismatch",
            WarningCode::CursorRejected => "cursor_rejected",
            WarningCode::UpstreamError => "upstream_error",
            WarningCode::LastRunFailed => "last_run_failed",
        }
    }
}

impl fmt::Display for WarningCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A warning about a stream: its code and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The stable code.
    pub code: WarningCode,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// Whether a stream needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No warning.
    Ok,
    /// At least one warning.
    Degraded,
}

/// The health of one stream: its status, the lag, and the warnings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHealth {
    /// What the store holds of the stream.
    #[serde(flatten)]
    pub status: StreamStatus,
    /// When the last successful run ended.
    pub last_success_at: Option<Timestamp>,
    /// Seconds since then (`None`: no successful run).
    pub lag_seconds: Option<u64>,
    /// `ok`, or `degraded` when there is a warning.
    pub health: HealthState,
    /// The warnings, in the order of [`WarningCode::ALL`].
    pub warnings: Vec<Warning>,
}

impl StreamHealth {
    /// Whether the stream has a warning of `code`.
    pub fn has(&self, code: WarningCode) -> bool {
        self.warnings.iter().any(|w| w.code == code)
    }

    /// Set the stream's gauges: lag, last success, and one 0/1 gauge per warning code.
    pub fn publish_metrics(&self) {
        let stream = &self.status.stream;
        if let Some(lag) = self.lag_seconds {
            metrics::gauge!(LAG, stream_labels(stream)).set(lag as f64);
        }
        if let Some(at) = self.last_success_at {
            metrics::gauge!(LAST_SUCCESS, stream_labels(stream)).set(at.as_micros() as f64 / 1e6);
        }
        for code in WarningCode::ALL {
            metrics::gauge!(
                STREAM_WARNINGS,
                stream_labels_and(stream, "code", code.as_str())
            )
            .set(if self.has(code) { 1.0 } else { 0.0 });
        }
    }
}

/// A duration in words: `3 days 4 h`, `5 h 12 min`, `42 s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= DAY => {
            let h = (s % DAY) / 3600;
            if h == 0 {
                format!("{} days", s / DAY)
            } else {
                format!("{} days {h} h", s / DAY)
            }
        }
        s if s >= 3600 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_micros(u64::try_from(now.as_micros() - then.as_micros()).unwrap_or(0))
}

/// Assess one stream: `runs` are its recent runs, newest first (for the rejected
/// cursors and the count checks; the lag comes from `status.last_success`).
pub fn assess(
    status: StreamStatus,
    runs: &[RunSummary],
    config: &HealthConfig,
    now: Timestamp,
) -> StreamHealth {
    let mut warnings = Vec::new();
    let last_success_at = status.last_success.as_ref().map(|r| r.finished_at);
    let lag = last_success_at.map(|t| since(now, t));

    // Retention: measured from the last success, or, when none is known, from the
    // oldest run kept (there was no success for at least that long).
    let without_success = match (lag, runs.last()) {
        (Some(lag), _) => Some((lag, "no successful run for")),
        (None, Some(oldest)) => Some((
            since(now, oldest.started_at),
            "no successful run in the history kept, which goes back",
        )),
        (None, None) => None,
    };
    if let Some((age, what)) = without_success {
        let hint = match &status.last_run {
            Some(run) if run.outcome == RunOutcome::Error => {
                " (fix what makes the runs fail: see the last run's error)"
            }
            _ => "",
        };
        if age >= config.prune_threshold() {
            warnings.push(Warning {
                code: WarningCode::RetentionPruneRisk,
                message: format!(
                    "{what} {} (warning at {} of Nango's {}-day prune window): Nango empties the payload of a record not updated for {} days, and a record pruned before this store reads it arrives with its id only. Run a sync of this stream now{hint}.",
                    human_duration(age),
                    human_duration(config.prune_threshold()),
                    config.prune_window.as_secs() / DAY,
                    config.prune_window.as_secs() / DAY,
                ),
            });
        }
        if age >= config.delete_threshold() {
            warnings.push(Warning {
                code: WarningCode::RetentionDeleteRisk,
                message: format!(
                    "{what} {} (warning at {} of Nango's {}-day delete window): Nango deletes records after {} days without a sync run, and sends no delete event for them. Get the runs going again{hint}, then run a full re-read with sweep (`nango-sync sync --full`, `SyncOptions::full`) so records Nango dropped meanwhile are marked deleted here.",
                    human_duration(age),
                    human_duration(config.delete_threshold()),
                    config.delete_window.as_secs() / DAY,
                    config.delete_window.as_secs() / DAY,
                ),
            });
        }
    }

    // The most recent count check that compared (a skipped one says nothing).
    let check = runs
        .iter()
        .chain(status.last_success.iter())
        .filter_map(|r| r.count_check.as_ref())
        .find(|c| !matches!(c, CountCheck::Skipped { .. }));
    if let Some(CountCheck::Mismatch {
        checked_at,
        local,
        nango,
    }) = check
    {
        warnings.push(Warning {
            code: WarningCode::CountMismatch,
            message: format!(
                "this store holds {local} live records, Nango reports {nango} (checked {checked_at}): records were removed upstream without a delete event (a cache reset) or a run missed changes. Run a full re-read with sweep (`nango-sync sync --full`, or `--reconcile repair` to do it on a mismatch)."
            ),
        });
    }

    let rejected: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| {
            r.full_reason == Some(FullReadReason::CursorRejected)
                && since(now, r.started_at) <= config.recent
        })
        .collect();
    if let Some(latest) = rejected.first() {
        warnings.push(Warning {
            code: WarningCode::CursorRejected,
            message: format!(
                "Nango rejected the stored cursor {} in the last {} (last at {}); each time the run re-read the whole stream with a sweep, so nothing was lost. Once after a Nango upgrade is expected; if it repeats, every run reads everything: check Nango's version and report it.",
                if rejected.len() == 1 {
                    "once".to_string()
                } else {
                    format!("{} times", rejected.len())
                },
                human_duration(config.recent),
                latest.started_at,
            ),
        });
    }

    if let Some(error) = &status.upstream_error {
        warnings.push(Warning {
            code: WarningCode::UpstreamError,
            message: format!(
                "Nango reports that its sync failed: {error}. Nango's records (and so this store) may be stale until its sync works again: see the sync's logs in Nango's dashboard. The warning clears with Nango's next successful sync webhook."
            ),
        });
    }

    if let Some(run) = &status.last_run
        && run.outcome == RunOutcome::Error
    {
        warnings.push(Warning {
            code: WarningCode::LastRunFailed,
            message: format!(
                "the last run (started {}) failed: {}. The next run starts again from the stored cursor; if runs keep failing, fix the cause (401 or 403: the secret key or its scopes; a store error: the store).",
                run.started_at,
                run.error.as_deref().unwrap_or("no error recorded"),
            ),
        });
    }

    StreamHealth {
        health: if warnings.is_empty() {
            HealthState::Ok
        } else {
            HealthState::Degraded
        },
        last_success_at,
        lag_seconds: lag.map(|d| d.as_secs()),
        warnings,
        status,
    }
}

/// Assess every stream of `sink` (`streams`: `None`), or the streams listed (a stream
/// the store does not know yet is assessed from an empty status), at `clock`'s time.
pub async fn check(
    sink: &dyn DynRecordSink,
    streams: Option<&[StreamKey]>,
    config: &HealthConfig,
    clock: &dyn Clock,
) -> Result<Vec<StreamHealth>> {
    let statuses = sink.streams().await?;
    let now = clock.now();
    let statuses: Vec<StreamStatus> = match streams {
        None => statuses,
        Some(keys) => {
            let mut by_key: HashMap<StreamKey, StreamStatus> = statuses
                .into_iter()
                .map(|s| (s.stream.clone(), s))
                .collect();
            keys.iter()
                .map(|k| by_key.remove(k).unwrap_or_else(|| empty_status(k)))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(statuses.len());
    for status in statuses {
        let runs: Vec<RunSummary> = sink
            .run_history(&HistoryQuery::stream(&status.stream, config.runs))
            .await?
            .into_iter()
            .map(|e| e.run)
            .collect();
        out.push(assess(status, &runs, config, now));
    }
    Ok(out)
}

fn empty_status(stream: &StreamKey) -> StreamStatus {
    StreamStatus {
        stream: stream.clone(),
        state: Default::default(),
        totals: Default::default(),
        live_records: 0,
        deleted_records: 0,
        last_run: None,
        upstream_error: None,
        last_success: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Counts;
    use crate::sink::RunId;

    const NOW: i64 = 1_800_000_000_000_000;

    fn at_days_ago(days: f64) -> Timestamp {
        Timestamp::from_micros(NOW - (days * 86_400e6) as i64)
    }

    fn run(days_ago: f64, outcome: RunOutcome) -> RunSummary {
        RunSummary {
            id: RunId::new(),
            instance: String::new(),
            started_at: at_days_ago(days_ago),
            finished_at: at_days_ago(days_ago),
            outcome,
            pages: 1,
            counts: Counts::default(),
            full: false,
            full_reason: None,
            high_water_mark: None,
            error: (outcome == RunOutcome::Error).then(|| "401 unknown_account".to_string()),
            count_check: None,
        }
    }

    fn status(last_success: Option<RunSummary>, last_run: Option<RunSummary>) -> StreamStatus {
        StreamStatus {
            last_success,
            last_run,
            ..empty_status(&StreamKey::new("github", "acme", "Ticket"))
        }
    }

    fn codes(h: &StreamHealth) -> Vec<&'static str> {
        h.warnings.iter().map(|w| w.code.as_str()).collect()
    }

    /// Data-driven: (days since the last success, expected warning codes).
    #[test]
    fn retention_warnings_follow_the_lag() {
        let config = HealthConfig::default();
        let now = Timestamp::from_micros(NOW);
        for (days, want) in [
            (0.0, vec![]),
            (14.9, vec![]),
            (15.0, vec!["retention_prune_risk"]),
            (29.9, vec!["retention_prune_risk"]),
            (30.0, vec!["retention_prune_risk", "retention_delete_risk"]),
        ] {
            let ok = run(days, RunOutcome::Ok);
            let h = assess(
                status(Some(ok.clone()), Some(ok.clone())),
                &[ok],
                &config,
                now,
            );
            assert_eq!(codes(&h), want, "{days} days");
            assert_eq!(h.lag_seconds, Some((days * 86_400.0) as u64));
            assert_eq!(
                h.health,
                if want.is_empty() {
                    HealthState::Ok
                } else {
                    HealthState::Degraded
                }
            );
        }
    }

    #[test]
    fn without_a_success_the_oldest_run_kept_counts() {
        let now = Timestamp::from_micros(NOW);
        let runs = [run(1.0, RunOutcome::Error), run(20.0, RunOutcome::Error)];
        let h = assess(
            status(None, Some(runs[0].clone())),
            &runs,
            &HealthConfig::default(),
            now,
        );
        assert_eq!(codes(&h), ["retention_prune_risk", "last_run_failed"]);
        assert_eq!(h.lag_seconds, None);
        assert!(
            h.warnings[0]
                .message
                .contains("fix what makes the runs fail")
        );
        assert!(h.warnings[1].message.contains("401 unknown_account"));
    }

    #[test]
    fn count_mismatch_comes_from_the_latest_check_that_compared() {
        let now = Timestamp::from_micros(NOW);
        let mut older = run(0.5, RunOutcome::Ok);
        older.count_check = Some(CountCheck::Mismatch {
            checked_at: at_days_ago(0.5),
            local: 10,
            nango: 7,
        });
        let mut newer = run(0.1, RunOutcome::Ok);
        newer.count_check = Some(CountCheck::Skipped {
            checked_at: at_days_ago(0.1),
            reason: "Nango's sync is running".into(),
        });
        let runs = [newer.clone(), older.clone()];
        let h = assess(
            status(Some(newer.clone()), Some(newer.clone())),
            &runs,
            &HealthConfig::default(),
            now,
        );
        assert_eq!(codes(&h), ["count_mismatch"]);
        assert!(
            h.warnings[0]
                .message
                .contains("10 live records, Nango reports 7")
        );
        let mut fixed = run(0.0, RunOutcome::Ok);
        fixed.count_check = Some(CountCheck::Match {
            checked_at: now,
            records: 7,
        });
        let runs = [fixed.clone(), newer, older];
        let h = assess(
            status(Some(fixed.clone()), Some(fixed)),
            &runs,
            &HealthConfig::default(),
            now,
        );
        assert!(h.warnings.is_empty(), "{h:?}");
    }

    #[test]
    fn rejected_cursors_warn_while_recent_and_upstream_errors_while_stored() {
        let now = Timestamp::from_micros(NOW);
        let mut rejected = run(0.5, RunOutcome::Ok);
        rejected.full = true;
        rejected.full_reason = Some(FullReadReason::CursorRejected);
        let later = run(0.1, RunOutcome::Ok);
        let mut st = status(Some(later.clone()), Some(later.clone()));
        st.upstream_error = Some("sync tickets failed: script_error: boom".into());
        let h = assess(
            st.clone(),
            &[later.clone(), rejected.clone()],
            &HealthConfig::default(),
            now,
        );
        assert_eq!(codes(&h), ["cursor_rejected", "upstream_error"]);
        assert!(h.warnings[1].message.contains("boom"));
        let old = Timestamp::from_micros(NOW + 2 * 86_400_000_000);
        st.last_success = None;
        let h = assess(st, &[later, rejected], &HealthConfig::default(), old);
        assert_eq!(
            codes(&h),
            ["upstream_error"],
            "the rejection is no longer recent"
        );
    }

    #[test]
    fn health_serializes_with_the_status_fields() {
        let now = Timestamp::from_micros(NOW);
        let ok = run(1.0, RunOutcome::Ok);
        let h = assess(
            status(Some(ok.clone()), Some(ok)),
            &[],
            &HealthConfig::default(),
            now,
        );
        let v = serde_json::to_value(&h).unwrap();
        for key in [
            "stream",
            "state",
            "live_records",
            "deleted_records",
            "last_run",
            "upstream_error",
            "last_success_at",
            "lag_seconds",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert_eq!(v["lag_seconds"], 86_400);
        assert_eq!(v["health"], "ok");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(human_duration(Duration::from_secs(3 * 60)), "3 min");
        assert_eq!(human_duration(Duration::from_secs(3600 + 120)), "1 h 2 min");
        assert_eq!(human_duration(Duration::from_secs(15 * DAY)), "15 days");
        assert_eq!(
            human_duration(Duration::from_secs(2 * DAY + 7200)),
            "2 days 2 h"
        );
    }
}
