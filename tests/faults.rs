//! Every fault the fake Nango can inject, at the first request and in the middle of a
//! run: retried or a clear permanent error, and never lost or corrupted data.
#![cfg(all(feature = "testkit", feature = "sqlite"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nango_sync::engine::{EngineConfig, Progress};
use nango_sync::sink::{self, SharedSink, SqliteStore};
use nango_sync::testkit::{FakeConfig, FakeNango, Fault};
use nango_sync::{Engine, Error, NangoClient, RetryConfig, StreamKey, SyncOptions};

struct Setup {
    fake: Arc<FakeNango>,
    sink: SharedSink,
    engine: Engine,
    _dir: tempfile::TempDir,
}

async fn setup(retry: RetryConfig, timeout: Duration) -> Setup {
    setup_with(
        retry,
        timeout,
        EngineConfig {
            page_size: 100,
            ..Default::default()
        },
    )
    .await
}

async fn setup_with(retry: RetryConfig, timeout: Duration, config: EngineConfig) -> Setup {
    let fake = Arc::new(FakeNango::start(FakeConfig::default()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sink: SharedSink = Arc::new(SqliteStore::open(dir.path().join("f.db")).await.unwrap());
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(retry)
        .timeout(timeout)
        .build()
        .unwrap();
    let engine = Engine::with_config(client, sink.clone(), config);
    Setup {
        fake,
        sink,
        engine,
        _dir: dir,
    }
}

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

async fn assert_converged(s: &Setup) {
    let local: std::collections::BTreeMap<String, serde_json::Value> =
        sink::read_all(&*s.sink, &stream(), false)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id.clone(), r.payload.to_value()))
            .collect();
    assert_eq!(local, s.fake.live_payloads(&stream()));
}

/// The cursor is always the one of a committed page: its record is stored.
async fn assert_cursor_consistent(s: &Setup) {
    let state = s.sink.stream_state(&stream()).await.unwrap();
    if let Some(cursor) = state.cursor {
        let upstream = s.fake.records(&stream());
        let at = upstream
            .iter()
            .position(|r| r.meta.cursor == cursor)
            .expect("the stored cursor is a real position");
        for r in &upstream[..=at] {
            assert!(
                s.sink.get(&stream(), &r.id).await.unwrap().is_some(),
                "{} is before the cursor but not stored",
                r.id
            );
        }
    }
}

fn retryable_faults() -> Vec<Fault> {
    vec![
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::RateLimited { retry_after: 0 },
        Fault::TruncatedJson,
        Fault::CloseBeforeBody,
        Fault::CloseMidBody,
        Fault::Slow(Duration::from_millis(1500)),
        Fault::ShortPage(7),
    ]
}

#[tokio::test]
async fn retryable_faults_at_the_first_request_are_retried() {
    for fault in retryable_faults() {
        let s = setup(RetryConfig::fast(), Duration::from_millis(500)).await;
        s.fake.generate(&stream(), 250, 250);
        s.fake.inject(fault.clone());
        let report = s
            .engine
            .sync(&stream(), &SyncOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(report.counts.added, 250, "{fault:?}");
        assert_converged(&s).await;
    }
}

#[tokio::test]
async fn retryable_faults_in_the_middle_of_a_run_are_retried() {
    for fault in retryable_faults() {
        let s = setup(RetryConfig::fast(), Duration::from_millis(500)).await;
        s.fake.generate(&stream(), 450, 450);
        let fired = Arc::new(AtomicBool::new(false));
        let (fake, f, fault2) = (s.fake.clone(), fired.clone(), fault.clone());
        let options = SyncOptions {
            progress: Some(Arc::new(move |_p: &Progress| {
                if !f.swap(true, Ordering::SeqCst) {
                    fake.inject(fault2.clone());
                }
            })),
            ..SyncOptions::default()
        };
        let report = s
            .engine
            .sync(&stream(), &options)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(report.counts.added, 450, "{fault:?}");
        assert_converged(&s).await;
    }
}

#[tokio::test]
async fn permanent_faults_stop_the_run_with_a_clear_error_and_keep_what_was_committed() {
    for (fault, expected) in [
        (Fault::Html, "expected a JSON answer"),
        (Fault::Status(400), "400"),
        (Fault::Status(403), "403"),
    ] {
        let s = setup(RetryConfig::fast(), Duration::from_secs(5)).await;
        s.fake.generate(&stream(), 450, 450);
        let fired = Arc::new(AtomicBool::new(false));
        let (fake, f, fault2) = (s.fake.clone(), fired.clone(), fault.clone());
        let options = SyncOptions {
            progress: Some(Arc::new(move |_p: &Progress| {
                if !f.swap(true, Ordering::SeqCst) {
                    fake.inject(fault2.clone());
                }
            })),
            ..SyncOptions::default()
        };
        let err = s.engine.sync(&stream(), &options).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{fault:?}: {err}");
        assert!(
            err.to_string().contains("github/acme/Ticket"),
            "the error names the stream: {err}"
        );
        assert_cursor_consistent(&s).await;
        // The next run converges.
        s.engine
            .sync(&stream(), &SyncOptions::default())
            .await
            .unwrap();
        assert_converged(&s).await;
    }
}

#[tokio::test]
async fn persistent_server_errors_give_up_within_the_policy() {
    let retry = RetryConfig {
        max_attempts: 3,
        ..RetryConfig::fast()
    };
    let s = setup(retry, Duration::from_secs(5)).await;
    s.fake.generate(&stream(), 50, 50);
    for _ in 0..3 {
        s.fake.inject(Fault::Status(503));
    }
    let err = s
        .engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.root(), Error::Nango { status: 503, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    assert_eq!(s.fake.request_count(), 3);
    assert_eq!(s.sink.stream_state(&stream()).await.unwrap().cursor, None);
}

#[tokio::test]
async fn retry_after_zero_still_waits_the_minimum() {
    let retry = RetryConfig {
        min_rate_limit_wait: Duration::from_millis(300),
        ..RetryConfig::fast()
    };
    let s = setup(retry, Duration::from_secs(5)).await;
    s.fake.generate(&stream(), 10, 10);
    s.fake.inject(Fault::RateLimited { retry_after: 0 });
    s.fake.inject(Fault::RateLimited { retry_after: 0 });
    let started = Instant::now();
    s.engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two 429s with Retry-After: 0 waited only {:?}",
        started.elapsed()
    );
    assert_eq!(
        s.fake.request_count(),
        3,
        "no hot loop: one request per wait"
    );
}

#[tokio::test]
async fn a_rejected_stored_cursor_turns_into_a_full_reread_with_sweep() {
    let s = setup(
        RetryConfig {
            max_attempts: 2,
            ..RetryConfig::fast()
        },
        Duration::from_secs(5),
    )
    .await;
    s.fake.generate(&stream(), 120, 120);
    s.engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    // Plant a cursor Nango does not understand, as an old-format cursor would be.
    let state = s.sink.stream_state(&stream()).await.unwrap();
    let bogus =
        nango_sync::Cursor("Y3JlYXRlZF9hdF4yMDI0LTAxLTAxVDAwOjAwOjAwLjAwMFp8aWReMQ==".into());
    s.sink
        .commit(nango_sync::Commit::new(
            stream(),
            state.cursor.clone(),
            Some(bogus),
            vec![],
        ))
        .await
        .unwrap();
    // Upstream resets its cache: every record comes back with new timestamps, except
    // one that vanished without an event.
    let before = s.fake.records(&stream());
    let victim = before[5].id.clone();
    s.fake.hard_reset(&stream());
    let again = before
        .iter()
        .filter(|r| r.id != victim)
        .map(|r| r.payload.clone())
        .collect();
    s.fake.save(&stream(), again);
    let report = s
        .engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert!(report.full, "a rejected cursor gives a full re-read");
    assert_eq!(
        report.full_reason,
        Some(nango_sync::FullReadReason::CursorRejected)
    );
    assert_eq!(report.swept, 1);
    assert!(
        s.sink
            .get(&stream(), &victim)
            .await
            .unwrap()
            .unwrap()
            .is_deleted()
    );
    assert_converged(&s).await;
    let status = s.sink.streams().await.unwrap();
    let last_run = status[0].last_run.as_ref().unwrap();
    assert!(last_run.full);
    assert!(
        last_run.cursor_was_rejected(),
        "status can warn: {last_run:?}"
    );
}

#[tokio::test]
async fn a_failing_probe_keeps_the_cursor_and_reports_the_original_error() {
    let s = setup(
        RetryConfig {
            max_attempts: 2,
            ..RetryConfig::fast()
        },
        Duration::from_secs(5),
    )
    .await;
    s.fake.generate(&stream(), 30, 30);
    s.engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    let before = s.sink.stream_state(&stream()).await.unwrap();
    s.fake.generate(&stream(), 5, 5);
    // Nango is down: the request with the cursor and the probe without one both fail.
    for _ in 0..4 {
        s.fake.inject(Fault::Status(500));
    }
    let err = s
        .engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(", cursor "),
        "the original error (the request with the cursor): {text}"
    );
    assert_eq!(s.sink.stream_state(&stream()).await.unwrap(), before);
    let last_run = s.sink.streams().await.unwrap()[0].last_run.clone().unwrap();
    assert!(
        !last_run.full && !last_run.cursor_was_rejected(),
        "{last_run:?}"
    );
    // Nango is back: an incremental run, not a full re-read.
    let report = s
        .engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert!(!report.full);
    assert_eq!(report.counts.added, 5);
    assert_converged(&s).await;
}

/// One scenario: records, a sync, more records, a sync, then a write committed late
/// (stamped before the stored cursor), then a sync. Returns whether the late record was
/// stored, and checks the cursor never moved backwards.
async fn late_write_scenario(overlap: Option<Duration>) -> bool {
    let s = setup_with(
        RetryConfig::fast(),
        Duration::from_secs(5),
        EngineConfig {
            page_size: 20,
            overlap,
            ..Default::default()
        },
    )
    .await;
    s.fake.generate(&stream(), 50, 25);
    s.engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    s.fake.generate(&stream(), 30, 10);
    s.engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    let cursor = s.sink.stream_state(&stream()).await.unwrap().cursor;
    let hwm = s
        .fake
        .records(&stream())
        .last()
        .unwrap()
        .meta
        .last_modified_at;
    // A write whose transaction started 300 ms before the newest record but committed
    // only now: behind the stored cursor.
    let effect = s.fake.save_late(
        &stream(),
        serde_json::json!({"id": "late-1", "title": "committed late"}),
        hwm.add_micros(-300_000),
    );
    assert_eq!(effect.added, vec!["late-1".to_string()]);
    assert!(
        s.fake.records(&stream()).last().unwrap().id != "late-1",
        "the late record sits behind the newest one"
    );
    let report = s
        .engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert!(!report.full);
    assert_eq!(
        s.sink.stream_state(&stream()).await.unwrap().cursor,
        cursor,
        "no new record after the cursor: the cursor stays (never moves backwards)"
    );
    let stored = s.sink.get(&stream(), "late-1").await.unwrap().is_some();
    if stored {
        // A late write breaks atomic progress from outside; the window restores it.
        assert_cursor_consistent(&s).await;
        assert_converged(&s).await;
        // Again: the window re-reads what the store holds, all unchanged.
        let again = s
            .engine
            .sync(&stream(), &SyncOptions::default())
            .await
            .unwrap();
        assert_eq!(again.counts.added + again.counts.updated, 0, "{again:?}");
        assert_converged(&s).await;
    }
    stored
}

#[tokio::test]
async fn a_late_write_is_missed_without_the_overlap_window_and_caught_with_it() {
    assert!(
        !late_write_scenario(None).await,
        "without a window the late write behind the cursor is missed"
    );
    assert!(
        late_write_scenario(Some(Duration::from_secs(2))).await,
        "the overlap window catches the late write"
    );
}
