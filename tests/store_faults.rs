//! Store faults: a SQLite file locked by another connection (the run waits for it and
//! goes on, or fails with an error naming the lock) and a full disk (a clear error, then
//! the store reopens with its last committed state and converges).
#![cfg(all(feature = "testkit", feature = "sqlite"))]

use std::sync::Arc;
use std::time::Duration;

use nango_sync::engine::EngineConfig;
use nango_sync::sink::{self, SharedSink, SqliteStore, sqlite::SqliteOptions};
use nango_sync::testkit::{FakeConfig, FakeNango};
use nango_sync::{Engine, NangoClient, RetryConfig, StreamKey, SyncOptions};

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

fn engine(fake: &FakeNango, sink: SharedSink, commit_retry: RetryConfig) -> Engine {
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(RetryConfig::fast())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Engine::with_config(
        client,
        sink,
        EngineConfig {
            page_size: 50,
            commit_retry,
            ..Default::default()
        },
    )
}

async fn assert_converged(fake: &FakeNango, sink: &SharedSink) {
    let local: std::collections::BTreeMap<String, serde_json::Value> =
        sink::read_all(&**sink, &stream(), false)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id.clone(), r.payload.to_value()))
            .collect();
    assert_eq!(local, fake.live_payloads(&stream()));
}

/// Hold `BEGIN EXCLUSIVE` on the file from another connection for `hold`.
fn lock_for(path: std::path::PathBuf, hold: Duration) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    });
    rx.recv().unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_is_waited_for() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let sink: SharedSink = Arc::new(
        SqliteStore::open_with(
            &path,
            SqliteOptions::new().with_busy_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap(),
    );
    fake.generate(&stream(), 120, 120);
    let engine = engine(&fake, sink.clone(), EngineConfig::default().commit_retry);
    // Longer than the busy timeout: the engine's commit retries wait it out.
    let holder = lock_for(path.clone(), Duration::from_millis(1200));
    let report = engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    holder.join().unwrap();
    assert_eq!(report.counts.added, 120);
    assert_converged(&fake, &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_locked_for_too_long_is_a_clear_error() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let sink: SharedSink = Arc::new(
        SqliteStore::open_with(
            &path,
            SqliteOptions::new().with_busy_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap(),
    );
    fake.generate(&stream(), 60, 60);
    let engine = engine(
        &fake,
        sink.clone(),
        RetryConfig {
            max_attempts: 2,
            ..RetryConfig::fast()
        },
    );
    let holder = lock_for(path.clone(), Duration::from_secs(3));
    let err = engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap_err();
    holder.join().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("locked") || text.contains("another process holds a lock"),
        "the error names the lock: {text}"
    );
    assert!(text.contains("github/acme/Ticket"), "{text}");
    // The lock is gone: the next run converges.
    engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert_converged(&fake, &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_the_store_keeps_its_last_commit() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    // Small pages and a cap of 40 pages: room for a few pages of records only.
    let small = SqliteOptions::new()
        .with_page_size(4096)
        .with_max_page_count(40);
    let sink: SharedSink = Arc::new(SqliteStore::open_with(&path, small).await.unwrap());
    for _ in 0..8 {
        fake.generate(&stream(), 100, 100);
    }
    let engine1 = engine(&fake, sink.clone(), EngineConfig::default().commit_retry);
    let err = engine1
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("disk is full"), "a clear error: {text}");
    let state = sink.stream_state(&stream()).await.unwrap();
    let held = sink::read_all(&*sink, &stream(), true).await.unwrap().len();
    drop(engine1);
    drop(sink);
    // Reopen without the cap ("space freed"): the last committed state is there, and the
    // cursor covers exactly what is stored.
    let sink: SharedSink = Arc::new(SqliteStore::open(&path).await.unwrap());
    assert_eq!(sink.stream_state(&stream()).await.unwrap(), state);
    let stored = sink::read_all(&*sink, &stream(), true).await.unwrap();
    assert_eq!(stored.len(), held);
    if let Some(cursor) = &state.cursor {
        let upstream = fake.records(&stream());
        let at = upstream
            .iter()
            .position(|r| &r.meta.cursor == cursor)
            .expect("a real position");
        assert_eq!(stored.len(), at + 1, "the cursor covers what is stored");
    } else {
        assert!(stored.is_empty());
    }
    let engine2 = engine(&fake, sink.clone(), EngineConfig::default().commit_retry);
    engine2
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert_converged(&fake, &sink).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_in_the_middle_of_a_sync_is_retried_and_converges() {
    let missing = |name: &str| {
        panic!(
            "{name} is not set: the PostgreSQL tests need a server. \
             Run them with scripts/test.sh (or scripts/pg.sh cargo test ...)."
        )
    };
    let url = std::env::var("NANGO_SYNC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| missing("NANGO_SYNC_TEST_POSTGRES_URL"));
    let restart = std::env::var("NANGO_SYNC_TEST_PG_RESTART")
        .unwrap_or_else(|_| missing("NANGO_SYNC_TEST_PG_RESTART"));
    let fake = Arc::new(FakeNango::start(FakeConfig::default()).await.unwrap());
    let schema = format!("nrs_{}", uuid::Uuid::new_v4().simple());
    let sink: SharedSink = Arc::new(
        nango_sync::sink::PostgresStore::connect_with(
            &url,
            nango_sync::sink::postgres::PostgresOptions::new()
                .with_schema(&schema)
                .with_pool_size(2),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}")),
    );
    for _ in 0..6 {
        fake.generate(&stream(), 500, 500);
    }
    let commit_retry = RetryConfig {
        max_attempts: 30,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        max_elapsed: Duration::from_secs(120),
        ..RetryConfig::default()
    };
    let engine = engine(&fake, sink.clone(), commit_retry);
    let restarted = Arc::new(std::sync::Mutex::new(None::<std::thread::JoinHandle<bool>>));
    let r2 = restarted.clone();
    let options = SyncOptions {
        progress: Some(Arc::new(move |p: &nango_sync::engine::Progress| {
            let mut slot = r2.lock().unwrap();
            if p.pages == 5 && slot.is_none() {
                let cmd = restart.clone();
                *slot = Some(std::thread::spawn(move || {
                    std::process::Command::new("sh")
                        .arg("-c")
                        .arg(&cmd)
                        .stdout(std::process::Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                }));
            }
        })),
        ..SyncOptions::default()
    };
    let report = engine.sync(&stream(), &options).await;
    let handle = restarted.lock().unwrap().take().expect("the restart ran");
    assert!(handle.join().unwrap(), "pg_ctl restart failed");
    let report = report.unwrap_or_else(|e| panic!("the run did not survive the restart: {e}"));
    assert!(report.pages >= 60, "{report:?}");
    assert_converged(&fake, &sink).await;
    // And the stream goes on normally afterwards.
    fake.generate(&stream(), 100, 100);
    engine
        .sync(&stream(), &SyncOptions::default())
        .await
        .unwrap();
    assert_converged(&fake, &sink).await;
}
