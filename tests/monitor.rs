//! Monitoring against the fake Nango over HTTP and a real SQLite store: the fake's
//! `GET /sync/status`, the count check and its repair, and every warning code of the
//! health checks, driven by an injected clock (no test waits for days to pass).

use std::time::Duration;

use nango_sync::client::{SyncSelector, SyncState};
use nango_sync::engine::{CountCheckConfig, CountCheckMode, EngineConfig};
use nango_sync::monitor::health::{self, HealthConfig, WarningCode};
use nango_sync::monitor::{ManualClock, SystemClock};
use nango_sync::sink::{CountCheck, HistoryQuery};
use nango_sync::{Cursor, FullReadReason, RetryConfig, RunOutcome, StreamKey, Timestamp};
use nango_sync_testkit::{Harness, TestStore};

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

async fn harness(mode: CountCheckMode) -> Harness {
    Harness::builder()
        .retry(RetryConfig {
            max_attempts: 2,
            ..RetryConfig::fast()
        })
        .engine_config(EngineConfig {
            page_size: 50,
            count_check: CountCheckConfig {
                mode,
                ..CountCheckConfig::default()
            },
            ..EngineConfig::default()
        })
        .start(TestStore::sqlite().await)
        .await
}

async fn health_of(h: &Harness, clock: &dyn nango_sync::monitor::Clock) -> health::StreamHealth {
    let mut all = health::check(&*h.sink, Some(&[stream()]), &HealthConfig::default(), clock)
        .await
        .unwrap();
    all.remove(0)
}

fn codes(h: &health::StreamHealth) -> Vec<WarningCode> {
    h.warnings.iter().map(|w| w.code).collect()
}

#[tokio::test]
async fn the_fakes_sync_status_counts_live_records_as_nango_does() {
    let h = harness(CountCheckMode::Off).await;
    let s = stream();
    h.fake.generate(&s, 10, 10);
    h.fake.delete(&s, &["rec-0000001"]);
    h.fake.prune(&s, &["rec-0000002"]);
    let eu = s.clone().with_variant("eu");
    h.fake.generate(&eu, 3, 3);
    h.fake.define_sync("github", "tickets", &["Ticket"]);
    h.fake.define_sync("github", "tickets::eu", &["Ticket"]);

    let syncs = h
        .client
        .sync_status("github", Some("acme"), &SyncSelector::All)
        .await
        .unwrap();
    assert_eq!(syncs.len(), 2);
    let base = syncs.iter().find(|x| x.variant == "base").unwrap();
    assert_eq!(
        base.record_count["Ticket"], 9,
        "live records, the pruned one included, the deleted one not"
    );
    assert_eq!(base.status, SyncState::Success);
    assert!(base.finished_at.is_some());
    let variant = syncs.iter().find(|x| x.variant == "eu").unwrap();
    assert_eq!(
        variant.record_count["Ticket"], 9,
        "a variant reports the base variant's count, as Nango does"
    );
    let named = h
        .client
        .sync_status(
            "github",
            None,
            &SyncSelector::Names(vec!["tickets::eu".into(), "unknown".into()]),
        )
        .await
        .unwrap();
    assert_eq!(named.len(), 1, "unknown names are skipped");
    h.fake.hard_reset(&s);
    let after = h
        .client
        .sync_status("github", Some("acme"), &SyncSelector::All)
        .await
        .unwrap();
    assert_eq!(after[0].record_count["Ticket"], 0, "a hard reset lowers it");
    let err = h
        .client
        .sync_status("github", Some("nobody"), &SyncSelector::All)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Connection not found"),
        "an unknown connection: {err}"
    );
}

#[tokio::test]
async fn a_reset_without_webhook_is_a_count_mismatch_and_repair_sweeps_it() {
    let h = harness(CountCheckMode::Warn).await;
    let s = stream();
    h.fake.define_sync("github", "tickets", &["Ticket"]);
    h.fake.generate(&s, 120, 40);
    let first = h.sync(&s).await.unwrap();
    assert!(
        matches!(
            first.count_check,
            Some(CountCheck::Match { records: 120, .. })
        ),
        "{:?}",
        first.count_check
    );
    // Nango empties its cache and the sync saves all but five records again; no
    // webhook announces it, so an incremental run reads the saves and never the loss.
    let before = h.fake.records(&s);
    h.fake.hard_reset(&s);
    let again = before.iter().skip(5).map(|r| r.payload.clone()).collect();
    h.fake.save(&s, again);
    let report = h.sync(&s).await.unwrap();
    assert!(!report.full);
    assert!(
        matches!(
            report.count_check,
            Some(CountCheck::Mismatch {
                local: 120,
                nango: 115,
                ..
            })
        ),
        "{:?}",
        report.count_check
    );
    let health = health_of(&h, &SystemClock).await;
    assert_eq!(codes(&health), [WarningCode::CountMismatch]);
    assert!(
        health.warnings[0]
            .message
            .contains("120 live records, Nango reports 115")
    );

    // With repair, the mismatch starts a full re-read with sweep at once.
    let repairing = h.engine_with(EngineConfig {
        page_size: 50,
        count_check: CountCheckConfig {
            mode: CountCheckMode::Repair,
            ..CountCheckConfig::default()
        },
        ..EngineConfig::default()
    });
    let repaired = repairing.sync(&s, &Default::default()).await.unwrap();
    assert_eq!(repaired.full_reason, Some(FullReadReason::CountMismatch));
    assert_eq!(repaired.swept, 5);
    assert!(matches!(
        repaired.count_check,
        Some(CountCheck::Match { records: 115, .. })
    ));
    h.assert_converged(&s).await;
    let runs = h
        .sink
        .run_history(&HistoryQuery::stream(&s, 10))
        .await
        .unwrap();
    assert_eq!(
        runs.iter()
            .map(|e| (
                e.run.full_reason,
                e.run.count_check.as_ref().map(CountCheck::is_mismatch)
            ))
            .collect::<Vec<_>>(),
        [
            (Some(FullReadReason::CountMismatch), Some(false)),
            (None, Some(true)),
            (None, Some(true)),
            (Some(FullReadReason::FirstSync), Some(false)),
        ],
        "the repair is a run of its own in the history"
    );
    assert!(health_of(&h, &SystemClock).await.warnings.is_empty());
}

#[tokio::test]
async fn counts_are_not_compared_while_nango_runs_or_for_a_variant() {
    let h = harness(CountCheckMode::Warn).await;
    let s = stream();
    h.fake.define_sync("github", "tickets", &["Ticket"]);
    h.fake.generate(&s, 10, 10);
    h.fake
        .set_sync_state("github", "acme", "tickets", "RUNNING", None);
    let report = h.sync(&s).await.unwrap();
    assert!(
        matches!(&report.count_check, Some(CountCheck::Skipped { reason, .. }) if reason.contains("running")),
        "{:?}",
        report.count_check
    );
    let eu = s.clone().with_variant("eu");
    h.fake.generate(&eu, 4, 4);
    let report = h.sync(&eu).await.unwrap();
    assert!(
        matches!(&report.count_check, Some(CountCheck::Skipped { reason, .. }) if reason.contains("base variant")),
        "{:?}",
        report.count_check
    );
}

#[tokio::test]
async fn retention_warnings_follow_an_injected_clock() {
    let h = harness(CountCheckMode::Off).await;
    let s = stream();
    h.fake.generate(&s, 5, 5);
    h.sync(&s).await.unwrap();
    let clock = ManualClock::new(Timestamp::now());
    let fresh = health_of(&h, &clock).await;
    assert!(fresh.warnings.is_empty(), "{:?}", fresh.warnings);
    assert!(fresh.lag_seconds.unwrap() < 60);

    clock.advance(Duration::from_secs(16 * 86_400));
    let h16 = health_of(&h, &clock).await;
    assert_eq!(codes(&h16), [WarningCode::RetentionPruneRisk]);
    assert!(h16.lag_seconds.unwrap() >= 16 * 86_400);
    assert!(h16.warnings[0].message.contains("prune"));

    clock.advance(Duration::from_secs(15 * 86_400));
    let h31 = health_of(&h, &clock).await;
    assert_eq!(
        codes(&h31),
        [
            WarningCode::RetentionPruneRisk,
            WarningCode::RetentionDeleteRisk
        ]
    );
    assert!(h31.warnings[1].message.contains("--full"));

    // A successful run clears them (measured at the clock's time).
    h.sync(&s).await.unwrap();
    clock.set(Timestamp::now());
    assert!(health_of(&h, &clock).await.warnings.is_empty());
}

#[tokio::test]
async fn a_rejected_cursor_warns_for_a_day() {
    let h = harness(CountCheckMode::Off).await;
    let s = stream();
    h.fake.generate(&s, 20, 20);
    h.sync(&s).await.unwrap();
    // A cursor Nango does not understand, as an old-format cursor would be.
    let state = h.sink.stream_state(&s).await.unwrap();
    h.sink
        .commit(nango_sync::Commit::new(
            s.clone(),
            state.cursor,
            Some(Cursor(
                "Y3JlYXRlZF9hdF4yMDI0LTAxLTAxVDAwOjAwOjAwLjAwMFp8aWReMQ==".into(),
            )),
            vec![],
        ))
        .await
        .unwrap();
    let report = h.sync(&s).await.unwrap();
    assert_eq!(report.full_reason, Some(FullReadReason::CursorRejected));
    // A later, normal run does not hide it: the history remembers.
    h.sync(&s).await.unwrap();
    let clock = ManualClock::new(Timestamp::now());
    let health = health_of(&h, &clock).await;
    assert_eq!(codes(&health), [WarningCode::CursorRejected]);
    clock.advance(Duration::from_secs(2 * 86_400));
    assert!(
        !health_of(&h, &clock).await.has(WarningCode::CursorRejected),
        "no longer recent"
    );
}

#[tokio::test]
async fn a_failed_run_and_a_failure_webhook_are_warnings() {
    let h = harness(CountCheckMode::Off).await;
    let s = stream();
    h.fake.generate(&s, 5, 5);
    h.sync(&s).await.unwrap();
    // A run with a key Nango refuses fails; the stream says so.
    let bad = nango_sync::NangoClient::builder()
        .host(h.fake.url())
        .secret_key("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c")
        .retry(RetryConfig::none())
        .build()
        .unwrap();
    let engine = nango_sync::Engine::new(bad, h.sink.clone());
    assert!(engine.sync(&s, &Default::default()).await.is_err());
    let health = health_of(&h, &SystemClock).await;
    assert_eq!(codes(&health), [WarningCode::LastRunFailed]);
    assert!(
        health.warnings[0].message.contains("unknown_account"),
        "{}",
        health.warnings[0].message
    );
    assert_eq!(
        health.status.last_run.as_ref().unwrap().outcome,
        RunOutcome::Error
    );
    assert!(health.lag_seconds.is_some(), "the last success is kept");

    // A signed failure webhook through the receiver (the `webhook` feature): Nango's
    // sync failed.
    #[cfg(feature = "webhook")]
    {
        use nango_sync::SecretKey;
        use nango_sync::engine::scheduler::{Scheduler, SchedulerConfig};
        use nango_sync::webhook::{WebhookReceiver, WebhookVerifier};
        use std::sync::Arc;

        let scheduler = Scheduler::new(
            h.engine.clone(),
            SchedulerConfig {
                poll_interval: None,
                run_on_register: false,
                ..SchedulerConfig::default()
            },
        );
        scheduler.register(s.clone());
        let key = SecretKey::new("webhook-key");
        let receiver = WebhookReceiver::new(
            WebhookVerifier::new(key.clone()),
            Arc::new(scheduler.clone()),
        );
        let body = r#"{"type":"sync","success":false,"connectionId":"acme","providerConfigKey":"github","syncName":"tickets","model":"Ticket","error":{"type":"script_error","description":"the provider answered 500"},"startedAt":"2026-01-01T00:00:00Z","failedAt":"2026-01-01T00:01:00Z"}"#;
        let signature = WebhookVerifier::sign(&key, body.as_bytes());
        let outcome = receiver.receive(Some(&signature), None, body.as_bytes());
        assert_eq!(outcome.status(), 200);
        scheduler.shutdown().await;
        let health = health_of(&h, &SystemClock).await;
        assert_eq!(
            codes(&health),
            [WarningCode::UpstreamError, WarningCode::LastRunFailed]
        );
        assert!(
            health.warnings[0]
                .message
                .contains("the provider answered 500")
        );
    }
}
