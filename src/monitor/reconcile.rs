//! Reconciliation: the store's live record count against the count Nango reports.
//!
//! [`compare_counts`] decides, from Nango's sync statuses of the stream's connection
//! (`GET /sync/status`), whether the two counts describe the same data and whether they
//! agree. They describe the same data when Nango's last sync run of the model finished
//! before the local run started and no Nango run is in progress: the local run then
//! read everything that run wrote. Hard deletes (a cache reset, Nango's retention) are
//! not runs and change Nango's count at any time: those are what the check catches.
//!
//! Sync webhooks' `responseResults` are not compared here: Nango counts a record saved
//! twice in a run twice, counts identical rewrites of a partial update, misses deletes
//! credited to an earlier run and never counts hard deletes, so they match neither the
//! records a local run reads nor the store. The scheduler uses them as a hint only.

use crate::client::SyncStatus;
use crate::record::StreamKey;
use crate::sink::CountCheck;
use crate::time::Timestamp;

/// Compare `local` (the stream's live records after a run that started at
/// `run_started`) with what `syncs` (the sync statuses of the stream's connection)
/// report; `now` is the time of the check.
pub fn compare_counts(
    stream: &StreamKey,
    syncs: &[SyncStatus],
    local: u64,
    run_started: Timestamp,
    now: Timestamp,
) -> CountCheck {
    let skipped = |reason: String| CountCheck::Skipped {
        checked_at: now,
        reason,
    };
    if stream.variant != StreamKey::BASE_VARIANT {
        return skipped(format!(
            "Nango reports the base variant's record count for every variant of a sync, so variant {:?} cannot be compared",
            stream.variant
        ));
    }
    let Some(sync) = syncs.iter().find(|s| {
        s.variant == StreamKey::BASE_VARIANT
            && s.connection_id == stream.connection
            && s.record_count.contains_key(&stream.model)
    }) else {
        return skipped(format!(
            "no sync of connection {:?} reports a record count of model {}",
            stream.connection, stream.model
        ));
    };
    if sync.is_running() {
        return skipped(format!(
            "Nango's sync {} is running; the next run after it compares",
            sync.name
        ));
    }
    let Some(finished) = sync.finished_at else {
        return skipped(format!("Nango's sync {} has not finished a run", sync.name));
    };
    if finished > run_started {
        return skipped(format!(
            "Nango's sync {} finished a run at {finished}, after this run started; the next run compares",
            sync.name
        ));
    }
    let nango = sync.record_count[&stream.model];
    if nango == local {
        CountCheck::Match {
            checked_at: now,
            records: local,
        }
    } else {
        CountCheck::Mismatch {
            checked_at: now,
            local,
            nango,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(variant: &str, status: &str, finished: Option<&str>, count: u64) -> SyncStatus {
        let finished = finished.map_or("null".to_string(), |f| format!("{f:?}"));
        serde_json::from_str(&format!(
            r#"{{"id":"x","connection_id":"acme","name":"tickets","variant":"{variant}","status":"{status}","finishedAt":{finished},"recordCount":{{"Ticket":{count}}}}}"#
        ))
        .unwrap()
    }

    /// Data-driven: (stream variant, Nango's syncs, local count, expected result prefix).
    #[test]
    fn counts_are_compared_only_when_both_sides_describe_the_same_data() {
        let started = Timestamp::parse("2026-08-21T10:00:00Z").unwrap();
        let now = Timestamp::parse("2026-08-21T10:01:00Z").unwrap();
        let before = Some("2026-08-21T09:59:00Z");
        let after = Some("2026-08-21T10:00:30Z");
        let cases = [
            ("base", vec![sync("base", "SUCCESS", before, 5)], 5, "match"),
            (
                "base",
                vec![sync("base", "SUCCESS", before, 4)],
                5,
                "mismatch",
            ),
            (
                "base",
                vec![sync("base", "RUNNING", before, 4)],
                5,
                "skipped: Nango's sync tickets is running",
            ),
            (
                "base",
                vec![sync("base", "SUCCESS", after, 4)],
                5,
                "skipped: Nango's sync tickets finished a run",
            ),
            (
                "base",
                vec![sync("base", "SUCCESS", None, 4)],
                5,
                "skipped: Nango's sync tickets has not finished",
            ),
            (
                "base",
                vec![sync("eu", "SUCCESS", before, 4)],
                5,
                "skipped: no sync",
            ),
            ("base", vec![], 5, "skipped: no sync"),
            (
                "eu",
                vec![sync("eu", "SUCCESS", before, 4)],
                5,
                "skipped: Nango reports the base variant's",
            ),
        ];
        for (variant, syncs, local, want) in cases {
            let stream = StreamKey::new("github", "acme", "Ticket").with_variant(variant);
            let got = compare_counts(&stream, &syncs, local, started, now);
            let text = match &got {
                CountCheck::Match { records, .. } => {
                    assert_eq!(*records, local);
                    "match".to_string()
                }
                CountCheck::Mismatch {
                    local: l, nango, ..
                } => {
                    assert_eq!((*l, *nango), (5, 4));
                    "mismatch".to_string()
                }
                CountCheck::Skipped { reason, .. } => format!("skipped: {reason}"),
            };
            assert!(text.starts_with(want), "{variant} {syncs:?}: {text}");
            assert_eq!(got.checked_at(), now);
        }
    }
}
