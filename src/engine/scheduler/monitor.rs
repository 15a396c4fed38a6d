//! What the scheduler does for monitoring: periodic full re-reads
//! ([`SchedulerConfig::full_every`](super::SchedulerConfig::full_every)), the webhook
//! hint, and the health of the registered streams ([`Scheduler::health`]).

use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{Inner, Scheduler, Slot};
use crate::engine::{CountCheckMode, RunReport};
use crate::error::Result;
use crate::monitor::health::{self, HealthConfig, StreamHealth};
use crate::monitor::metrics::{WEBHOOK_HINTS, stream_labels};
use crate::record::StreamKey;
use crate::sink::{HistoryQuery, RunOutcome};
use crate::time::Timestamp;
use crate::webhook::ResponseResults;

/// How many runs are searched for the last full re-read when a stream's first run
/// needs to know it.
const FULL_SEARCH: usize = 1_000;

/// When a stream's last successful full re-read ended, once known.
#[derive(Debug, Default)]
pub(super) enum LastFull {
    /// Not read from the store yet.
    #[default]
    Unknown,
    /// None in the history kept.
    Never,
    /// It ended then.
    At(Timestamp),
}

impl Slot {
    /// Keep the largest counts of the sync webhooks asking for the pending run.
    pub(super) fn add_hint(&self, results: &ResponseResults) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let h = p.hint.get_or_insert_with(ResponseResults::default);
        h.added = h.added.max(results.added);
        h.updated = h.updated.max(results.updated);
        h.deleted = h.deleted.max(results.deleted);
    }

    fn last_full(&self) -> std::sync::MutexGuard<'_, LastFull> {
        self.last_full.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When the next periodic full re-read of the stream is due, on tokio's clock (`None`:
/// not configured, or not known yet).
pub(super) fn full_due_at(inner: &Inner, slot: &Slot) -> Option<Instant> {
    let every = inner.config.full_every?;
    let LastFull::At(at) = *slot.last_full() else {
        return None;
    };
    let age = Duration::from_micros(
        u64::try_from(inner.clock.now().as_micros() - at.as_micros()).unwrap_or(0),
    );
    Some(Instant::now() + every.saturating_sub(age))
}

/// Whether this run of `stream` must be a periodic full re-read.
pub(super) async fn periodic_full_due(inner: &Inner, stream: &StreamKey, slot: &Slot) -> bool {
    let Some(every) = inner.config.full_every else {
        return false;
    };
    if matches!(*slot.last_full(), LastFull::Unknown) {
        let found = inner
            .engine
            .sink()
            .run_history(&HistoryQuery::stream(stream, FULL_SEARCH))
            .await;
        let known = match found {
            Ok(runs) => runs
                .iter()
                .find(|e| e.run.full && e.run.outcome == RunOutcome::Ok)
                .map_or(LastFull::Never, |e| LastFull::At(e.run.finished_at)),
            // Try again at the next run.
            Err(_) => return false,
        };
        *slot.last_full() = known;
    }
    match *slot.last_full() {
        LastFull::At(at) => {
            inner.clock.now().as_micros() - at.as_micros()
                >= i64::try_from(every.as_micros()).unwrap_or(i64::MAX)
        }
        // A stream that never had a full re-read has no cursor (its first run is one)
        // or was first synced from a start date: none is due.
        LastFull::Never | LastFull::Unknown => false,
    }
}

/// After a successful run: note a full re-read, and compare what the run received with
/// what the webhooks that asked for it reported.
pub(super) fn after_run(
    inner: &Inner,
    stream: &StreamKey,
    slot: &Slot,
    report: &RunReport,
    hint: Option<ResponseResults>,
) {
    if report.full {
        *slot.last_full() = LastFull::At(inner.clock.now());
    }
    let Some(hint) = hint else {
        return;
    };
    // Nango's counts are not exact (see `monitor::reconcile`), but every record they
    // count moved past the stored cursor, so a run that received fewer records than
    // any one of them is worth a look: it makes the next run check the counts.
    let reported = hint.added.max(hint.updated).max(hint.deleted);
    let received = report.counts.total();
    if received >= reported {
        return;
    }
    metrics::counter!(WEBHOOK_HINTS, stream_labels(stream)).increment(1);
    info!(
        received,
        added = hint.added,
        updated = hint.updated,
        deleted = hint.deleted,
        "the run received fewer records than the sync webhook reported (a hint only: Nango's counts are not exact)"
    );
    if inner.engine.config().count_check.mode != CountCheckMode::Off {
        inner.engine.request_count_check(stream);
        slot.mark(false);
    }
}

impl Scheduler {
    /// The health of every registered stream (see [`health::check`]), at the time of
    /// the scheduler's clock; also sets their gauges (lag, warnings). Fails when the
    /// store cannot be read.
    pub async fn health(&self, config: &HealthConfig) -> Result<Vec<StreamHealth>> {
        let streams = self.stream_keys();
        let all = health::check(
            &**self.inner.engine.sink(),
            Some(&streams),
            config,
            &*self.inner.clock,
        )
        .await?;
        for h in &all {
            h.publish_metrics();
        }
        Ok(all)
    }
}
