//! The metrics nango-sync records, through the [`metrics`](https://docs.rs/metrics)
//! facade: an application that installs a recorder (a Prometheus exporter, its own
//! registry) gets them; without one, recording costs next to nothing.
//!
//! Every name starts with `nango_sync_`; counters end in `_total`. Stream labels are
//! `integration`, `connection`, `model` and `variant`, so their number grows with the
//! number of streams (connections): the histograms carry only `integration` and
//! `model`, or the store's `backend`.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `nango_sync_runs_total` | counter | stream, `outcome` (`ok`, `error`, `interrupted`) | runs finished |
//! | `nango_sync_records_committed_total` | counter | stream, `change` (`added`, `updated`, `deleted`) | records a commit changed (sweep deletions included) |
//! | `nango_sync_run_duration_seconds` | histogram | `integration`, `model`, `outcome` | wall time of a run |
//! | `nango_sync_commit_duration_seconds` | histogram | `backend` | time a store took to write one commit |
//! | `nango_sync_lag_seconds` | gauge | stream | time since the stream's last successful run (refreshed by the health checks) |
//! | `nango_sync_last_success_timestamp_seconds` | gauge | stream | end of the last successful run, Unix seconds |
//! | `nango_sync_stream_warnings` | gauge | stream, `code` | 1 while the stream has the warning, else 0 |
//! | `nango_sync_count_difference` | gauge | stream | local live records minus Nango's at the last count check that compared |
//! | `nango_sync_count_checks_total` | counter | stream, `result` (`match`, `mismatch`, `skipped`) | count checks made |
//! | `nango_sync_webhooks_total` | counter | `outcome` (`accepted`, `unauthorized`, `malformed`, `too_large`), `type` | webhooks received |
//! | `nango_sync_webhook_hints_total` | counter | stream | runs a sync webhook triggered that received fewer records than the webhook reported (a hint only) |
//! | `nango_sync_requests_total` | counter | `request` (`GET /records`, ...), `class` (`2xx`..`5xx`, `transport`) | requests to Nango, every attempt |
//! | `nango_sync_retries_total` | counter | `request`, `class` (of the attempt that failed) | attempts made again after a retryable failure |
//! | `nango_sync_rate_budget_waits_total` | counter | – | requests that waited for the shared rate budget |
//! | `nango_sync_rate_budget_wait_seconds` | histogram | – | how long each of those requests waited |
//! | `nango_sync_outbox_deliveries_total` | counter | `outcome` (`done`, `retry`, `failed`, `lost`) | outbox attempts settled by the worker (`lost`: its lease ran out first) |
//! | `nango_sync_outbox_items` | gauge | `state` (`pending`, `running`, `done`, `failed`) | the store's outbox items per state (set by [`record_outbox_counts`], which `serve` calls on each scrape) |
//! | `nango_sync_leases_held` | gauge | – | streams whose lease this instance holds (several instances on PostgreSQL) |
//! | `nango_sync_lease_changes_total` | counter | `change` (`taken`, `released`, `lost`) | leases this instance took, released to their assigned instance, or failed to renew |
//! | `nango_sync_triggers_passed_on_total` | counter | – | triggers (webhooks) for streams another instance holds, passed on to it |
//!
//! [`describe`] registers the descriptions and units with the installed recorder.

use metrics::{Label, Unit, describe_counter, describe_gauge, describe_histogram};

use crate::record::StreamKey;

/// Runs finished, by stream and outcome.
pub const RUNS: &str = "nango_sync_runs_total";
/// Records committed, by stream and change.
pub const RECORDS_COMMITTED: &str = "nango_sync_records_committed_total";
/// Wall time of runs.
pub const RUN_DURATION: &str = "nango_sync_run_duration_seconds";
/// Time a store took to write a commit.
pub const COMMIT_DURATION: &str = "nango_sync_commit_duration_seconds";
/// Seconds since the last successful run, per stream.
pub const LAG: &str = "nango_sync_lag_seconds";
/// End of the last successful run, Unix seconds, per stream.
pub const LAST_SUCCESS: &str = "nango_sync_last_success_timestamp_seconds";
/// Active warnings, per stream and code.
pub const STREAM_WARNINGS: &str = "nango_sync_stream_warnings";
/// Local minus Nango's live record count at the last comparison.
pub const COUNT_DIFFERENCE: &str = "nango_sync_count_difference";
/// Count checks, by stream and result.
pub const COUNT_CHECKS: &str = "nango_sync_count_checks_total";
/// Webhooks received, by outcome and type.
pub const WEBHOOKS: &str = "nango_sync_webhooks_total";
/// Webhook-triggered runs that received fewer records than the webhook reported.
pub const WEBHOOK_HINTS: &str = "nango_sync_webhook_hints_total";
/// Requests to Nango, by request and status class.
pub const REQUESTS: &str = "nango_sync_requests_total";
/// Retried requests to Nango, by request and the failed attempt's status class.
pub const RETRIES: &str = "nango_sync_retries_total";
/// Requests that waited for the rate budget.
pub const RATE_BUDGET_WAITS: &str = "nango_sync_rate_budget_waits_total";
/// How long requests waited for the rate budget.
pub const RATE_BUDGET_WAIT_SECONDS: &str = "nango_sync_rate_budget_wait_seconds";

/// Outbox attempts settled by the worker, by outcome.
pub const OUTBOX_DELIVERIES: &str = "nango_sync_outbox_deliveries_total";
/// The store's outbox items per state.
pub const OUTBOX_ITEMS: &str = "nango_sync_outbox_items";

/// Streams whose lease this instance holds.
pub const LEASES_HELD: &str = "nango_sync_leases_held";
/// Leases taken, released or lost by this instance, by change.
pub const LEASE_CHANGES: &str = "nango_sync_lease_changes_total";
/// Triggers passed on to the instance holding the stream.
pub const TRIGGERS_PASSED_ON: &str = "nango_sync_triggers_passed_on_total";

/// Set the [`OUTBOX_ITEMS`] gauges from a store's counts.
pub fn record_outbox_counts(counts: &crate::sink::outbox::OutboxCounts) {
    for (state, n) in [
        ("pending", counts.pending),
        ("running", counts.running),
        ("done", counts.done),
        ("failed", counts.failed),
    ] {
        metrics::gauge!(OUTBOX_ITEMS, "state" => state).set(n as f64);
    }
}

/// Register the description and unit of every metric with the installed recorder (a
/// Prometheus exporter prints them as `# HELP` lines). Call it after installing one.
pub fn describe() {
    describe_counter!(
        RUNS,
        Unit::Count,
        "Sync runs finished, by stream and outcome."
    );
    describe_counter!(
        RECORDS_COMMITTED,
        Unit::Count,
        "Records committed to the store, by stream and change (added, updated, deleted)."
    );
    describe_histogram!(RUN_DURATION, Unit::Seconds, "Wall time of sync runs.");
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Time the store took to write one commit (a page and its cursor)."
    );
    describe_gauge!(
        LAG,
        Unit::Seconds,
        "Seconds since the stream's last successful run."
    );
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "End of the stream's last successful run, in Unix seconds."
    );
    describe_gauge!(
        STREAM_WARNINGS,
        "1 while the stream has the warning of this code, else 0."
    );
    describe_gauge!(
        COUNT_DIFFERENCE,
        "Local live records minus the live records Nango reports, at the last count check that compared them."
    );
    describe_counter!(
        COUNT_CHECKS,
        Unit::Count,
        "Count checks against Nango's record counts, by result."
    );
    describe_counter!(
        WEBHOOKS,
        Unit::Count,
        "Webhooks received, by outcome and type."
    );
    describe_counter!(
        WEBHOOK_HINTS,
        Unit::Count,
        "Webhook-triggered runs that received fewer records than the webhook reported (a hint: Nango's counts are not exact)."
    );
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests to Nango (every attempt), by request and status class."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Requests to Nango attempted again after a retryable failure, by the failed attempt's status class."
    );
    describe_counter!(
        RATE_BUDGET_WAITS,
        Unit::Count,
        "Requests that waited for the shared rate budget."
    );
    describe_histogram!(
        RATE_BUDGET_WAIT_SECONDS,
        Unit::Seconds,
        "How long requests waited for the shared rate budget."
    );
    describe_counter!(
        OUTBOX_DELIVERIES,
        Unit::Count,
        "Outbox attempts settled by the worker, by outcome (done, retry, failed, lost)."
    );
    describe_gauge!(OUTBOX_ITEMS, "The store's outbox items, by state.");
    describe_gauge!(
        LEASES_HELD,
        "Streams whose lease this instance holds (several instances on one PostgreSQL store)."
    );
    describe_counter!(
        LEASE_CHANGES,
        Unit::Count,
        "Leases this instance took, released to the instance they are assigned to, or lost."
    );
    describe_counter!(
        TRIGGERS_PASSED_ON,
        Unit::Count,
        "Triggers for streams another instance holds, passed on to it."
    );
}

/// The labels of a stream.
pub(crate) fn stream_labels(stream: &StreamKey) -> Vec<Label> {
    vec![
        Label::new("integration", stream.integration.clone()),
        Label::new("connection", stream.connection.clone()),
        Label::new("model", stream.model.clone()),
        Label::new("variant", stream.variant.clone()),
    ]
}

/// The labels of a stream and one more.
pub(crate) fn stream_labels_and(
    stream: &StreamKey,
    key: &'static str,
    value: impl Into<metrics::SharedString>,
) -> Vec<Label> {
    let mut labels = stream_labels(stream);
    labels.push(Label::new(key, value));
    labels
}

/// The class of an HTTP status: `2xx` to `5xx` (`other` outside 100..=599).
pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "other");
    }
}
