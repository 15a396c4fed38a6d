//! End-to-end runs of the engine against the fake Nango, into a real SQLite file.
#![cfg(all(feature = "testkit", feature = "sqlite"))]

use std::collections::BTreeMap;
use std::sync::Arc;

use nango_sync::sink::fault::{FaultInjector, FaultPoint};
use nango_sync::sink::sqlite::SqliteOptions;
use nango_sync::sink::{self, ListQuery, SharedSink, SqliteStore};
use nango_sync::testkit::{FakeConfig, FakeNango};
use nango_sync::{Engine, Error, NangoClient, RetryConfig, SecretKey, StreamKey, SyncOptions};
use serde_json::{Value, json};

struct Setup {
    fake: Arc<FakeNango>,
    sink: SharedSink,
    /// Arms the store's fault points.
    faults: Arc<FaultInjector>,
    engine: Engine,
    _dir: tempfile::TempDir,
}

async fn setup_with(page_size: u32) -> Setup {
    let fake = Arc::new(FakeNango::start(FakeConfig::default()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let sink: SharedSink = Arc::new(
        SqliteStore::open_with(
            dir.path().join("store.db"),
            SqliteOptions::new().with_faults(faults.clone()),
        )
        .await
        .unwrap(),
    );
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(RetryConfig::fast())
        .build()
        .unwrap();
    let engine = Engine::with_config(
        client,
        sink.clone(),
        nango_sync::engine::EngineConfig {
            page_size,
            ..Default::default()
        },
    );
    Setup {
        fake,
        sink,
        faults,
        engine,
        _dir: dir,
    }
}

fn ticket(id: &str, title: &str) -> Value {
    json!({"id": id, "title": title, "priority": 2, "assignee": {"name": "Zoë", "tags": ["a"]}})
}

fn stream() -> StreamKey {
    StreamKey::new("github", "acme-prod", "Ticket")
}

/// The store's live records as `id -> payload`.
async fn local_live(sink: &SharedSink, stream: &StreamKey) -> BTreeMap<String, Value> {
    sink::read_all(&**sink, stream, false)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r.payload.to_value()))
        .collect()
}

/// Every request the fake answered with an error status.
fn rejected_requests(fake: &FakeNango) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.status >= 400)
        .map(|r| format!("{} {}?{} -> {}", r.method, r.path, r.raw_query, r.status))
        .collect()
}

#[tokio::test]
async fn multi_page_sync_then_incremental_fetches_only_changes() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.generate(&stream, 1050, 300);
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.added, 1050);
    assert_eq!(report.pages, 11, "1050 records in pages of 100");
    assert!(report.full, "a first sync is a full read");
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );

    // Nothing changed: one request, nothing written, cursor kept.
    let before = s.fake.request_count();
    let cursor = s.sink.stream_state(&stream).await.unwrap().cursor;
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(s.fake.request_count() - before, 1);
    assert_eq!(report.counts.total(), 0);
    assert_eq!(s.sink.stream_state(&stream).await.unwrap().cursor, cursor);

    // Two records change: the next run receives exactly those.
    let ids: Vec<String> = s
        .fake
        .records(&stream)
        .iter()
        .take(2)
        .map(|r| r.id.clone())
        .collect();
    s.fake.save(
        &stream,
        ids.iter().map(|id| ticket(id, "changed")).collect(),
    );
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((report.counts.updated, report.counts.total()), (2, 2));
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
    assert_eq!(
        rejected_requests(&s.fake),
        Vec::<String>::new(),
        "the client sent a request the fake rejected"
    );
}

#[tokio::test]
async fn short_pages_from_a_byte_budget_do_not_end_the_run() {
    let s = setup_with(500).await;
    let stream = stream();
    s.fake.generate(&stream, 400, 400);
    s.fake.set_max_response_bytes(Some(20_000));
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert!(
        report.pages > 10,
        "expected many short pages, got {}",
        report.pages
    );
    assert_eq!(report.counts.added, 400);
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
}

#[tokio::test]
async fn empty_stream_and_empty_last_page() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake
        .add_connection(&stream.integration, &stream.connection);
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((report.pages, report.counts.total()), (1, 0));
    assert_eq!(s.sink.stream_state(&stream).await.unwrap().cursor, None);
    // Exactly one page of records: the last page of the next run is empty.
    s.fake.save(
        &stream,
        (0..100).map(|i| ticket(&format!("t{i:03}"), "x")).collect(),
    );
    s.engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    let cursor = s.sink.stream_state(&stream).await.unwrap().cursor;
    assert!(cursor.is_some());
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.total(), 0);
    assert_eq!(
        s.sink.stream_state(&stream).await.unwrap().cursor,
        cursor,
        "an empty page keeps the cursor"
    );
}

#[tokio::test]
async fn record_changed_while_paging_appears_again_on_a_later_page() {
    let s = setup_with(50).await;
    let stream = stream();
    s.fake.generate(&stream, 300, 300);
    let first = s.fake.records(&stream)[0].clone();
    // After the first commit, change a record of the first page upstream: it moves to
    // the end of the stream and comes again on the last page.
    let pending = std::sync::Mutex::new(Some(first.payload.clone()));
    let changer = {
        let fake = s.fake.clone();
        let stream = stream.clone();
        Arc::new(move |_p: &nango_sync::engine::Progress| {
            if let Some(mut payload) = pending.lock().unwrap().take() {
                payload["title"] = json!("changed while paging");
                fake.save(&stream, vec![payload]);
            }
        })
    };
    let options = SyncOptions {
        progress: Some(changer),
        ..SyncOptions::default()
    };
    let report = s.engine.sync(&stream, &options).await.unwrap();
    assert_eq!(report.counts.added, 300);
    assert_eq!(
        report.counts.updated, 1,
        "the changed record came again, newer"
    );
    let local = s.sink.get(&stream, &first.id).await.unwrap().unwrap();
    assert_eq!(local.payload.to_value()["title"], "changed while paging");
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
}

#[tokio::test]
async fn deletes_undeletes_and_prunes_keep_the_right_payload() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.save(
        &stream,
        vec![
            ticket("a", "A"),
            ticket("b", "B"),
            ticket("c", "C"),
            ticket("d", "D"),
        ],
    );
    s.engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();

    // Delete with {id} payload keeps the old payload; a full-payload delete takes it.
    s.fake.delete(&stream, &["a"]);
    s.fake
        .delete_with_payload(&stream, vec![ticket("b", "B at deletion")]);
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.deleted, 2);
    let a = s.sink.get(&stream, "a").await.unwrap().unwrap();
    assert!(a.is_deleted());
    assert_eq!(
        a.payload.to_value(),
        ticket("a", "A"),
        "{{id}}-only delete keeps the last full payload"
    );
    let b = s.sink.get(&stream, "b").await.unwrap().unwrap();
    assert_eq!(b.payload.to_value(), ticket("b", "B at deletion"));
    assert!(!local_live(&s.sink, &stream).await.contains_key("a"));

    // Undelete brings it back.
    s.fake.save(&stream, vec![ticket("a", "A again")]);
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.added, 1);
    let a = s.sink.get(&stream, "a").await.unwrap().unwrap();
    assert!(!a.is_deleted());
    assert_eq!(a.payload.to_value(), ticket("a", "A again"));

    // Prune: nothing new for an incremental run; a full re-read sees the pruned
    // versions and keeps the payloads.
    assert_eq!(s.fake.prune(&stream, &["c", "d"]), 2);
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.total(), 0);
    let report = s.engine.sync(&stream, &SyncOptions::full()).await.unwrap();
    assert_eq!(report.swept, 0);
    for id in ["c", "d"] {
        let r = s.sink.get(&stream, id).await.unwrap().unwrap();
        assert_eq!(
            r.payload.to_value(),
            ticket(id, &id.to_uppercase()),
            "pruned {id} keeps its payload"
        );
    }
    assert_eq!(local_live(&s.sink, &stream).await.len(), 3);
}

#[tokio::test]
async fn full_reread_sweeps_records_gone_after_a_hard_reset() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.save(
        &stream,
        vec![ticket("a", "A"), ticket("b", "B"), ticket("c", "C")],
    );
    s.engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    s.fake.hard_reset(&stream);
    s.fake
        .save(&stream, vec![ticket("a", "A"), ticket("z", "Z")]);
    // Incremental: the re-added records come, the vanished ones cannot be known.
    s.engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(local_live(&s.sink, &stream).await.len(), 4);
    let report = s.engine.sync(&stream, &SyncOptions::full()).await.unwrap();
    assert_eq!(report.swept, 2);
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
    let b = s.sink.get(&stream, "b").await.unwrap().unwrap();
    assert!(b.is_deleted() && b.meta.deleted_at.is_some());
}

#[tokio::test]
async fn two_streams_stay_isolated() {
    let s = setup_with(100).await;
    let tickets = stream();
    let other = StreamKey::new("github", "other-conn", "Ticket");
    let users = StreamKey::new("github", "acme-prod", "User");
    s.fake.save(&tickets, vec![ticket("1", "ticket")]);
    s.fake.save(&other, vec![ticket("1", "other connection")]);
    s.fake
        .save(&users, vec![json!({"id": "1", "name": "user"})]);
    let results = s
        .engine
        .sync_all(
            &[tickets.clone(), other.clone(), users.clone()],
            &SyncOptions::default(),
        )
        .await;
    assert!(results.iter().all(Result::is_ok));
    s.fake.delete(&tickets, &["1"]);
    s.engine
        .sync(&tickets, &SyncOptions::default())
        .await
        .unwrap();
    assert!(local_live(&s.sink, &tickets).await.is_empty());
    assert_eq!(
        local_live(&s.sink, &other).await["1"]["title"],
        "other connection"
    );
    assert_eq!(local_live(&s.sink, &users).await["1"]["name"], "user");
    let statuses = s.sink.streams().await.unwrap();
    assert_eq!(statuses.len(), 3);
}

#[tokio::test]
async fn wrong_secret_key_is_a_clear_error_and_writes_nothing() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.save(&stream, vec![ticket("a", "A")]);
    let wrong = "0b0e5a5e-8a55-4c2e-9f6a-3d2b1c0a9e8f";
    let client = NangoClient::builder()
        .host(s.fake.url())
        .secret_key(SecretKey::new(wrong))
        .retry(RetryConfig::fast())
        .build()
        .unwrap();
    let engine = Engine::new(client, s.sink.clone());
    let err = engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("github/acme-prod/Ticket"),
        "{text}"
    );
    assert!(
        !text.contains(wrong),
        "the key must not appear in errors: {text}"
    );
    assert!(!err.is_retryable());
    assert_eq!(s.sink.stream_state(&stream).await.unwrap().cursor, None);
    assert!(
        s.sink
            .list(&stream, &ListQuery::default().with_deleted())
            .await
            .unwrap()
            .is_empty()
    );
    let status = s.sink.streams().await.unwrap();
    let run = status[0].last_run.as_ref().unwrap();
    assert!(
        run.error.as_deref().unwrap().contains("401"),
        "status shows the failed run"
    );
}

#[tokio::test]
async fn unknown_connection_is_a_permanent_error() {
    let s = setup_with(100).await;
    let stream = StreamKey::new("github", "no-such-connection", "Ticket");
    let err = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.nango_code(), Some("unknown_connection"), "{err}");
    assert_eq!(s.fake.request_count(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn store_failure_between_records_and_cursor_leaves_nothing_and_the_next_run_converges() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.generate(&stream, 250, 250);
    s.faults.arm(FaultPoint::AfterRecords);
    let err = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.root(), Error::Store { .. }), "{err}");
    assert_eq!(
        s.sink.stream_state(&stream).await.unwrap().cursor,
        None,
        "the cursor did not move"
    );
    assert!(
        s.sink
            .list(&stream, &ListQuery::default().with_deleted())
            .await
            .unwrap()
            .is_empty(),
        "the page's records are not visible"
    );
    let report = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.counts.added, 250);
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
}

#[tokio::test]
async fn store_failure_on_a_later_page_keeps_the_earlier_pages() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake.generate(&stream, 250, 250);
    // Fail the second commit: arm after the first one landed.
    let faults = s.faults.clone();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = SyncOptions {
        progress: Some(Arc::new(move |_p: &nango_sync::engine::Progress| {
            if !armed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                faults.arm(FaultPoint::BeforeCommit);
            }
        })),
        ..SyncOptions::default()
    };
    s.engine.sync(&stream, &options).await.unwrap_err();
    let state = s.sink.stream_state(&stream).await.unwrap();
    let stored = s
        .sink
        .list(&stream, &ListQuery::first(1000).with_deleted())
        .await
        .unwrap();
    assert_eq!(stored.len(), 100, "exactly the first page is stored");
    let last = s.fake.records(&stream)[99].meta.cursor.clone();
    assert_eq!(state.cursor, Some(last), "the cursor is the first page's");
    s.engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        local_live(&s.sink, &stream).await,
        s.fake.live_payloads(&stream)
    );
}

/// A payload Nango restored after a prune (the record saved again, unchanged) does not
/// move the cursor: an incremental run cannot see it, and a full re-read takes it back.
#[tokio::test]
async fn full_reread_takes_back_a_payload_restored_after_a_prune() {
    let s = setup_with(100).await;
    let stream = stream();
    s.fake
        .add_connection(&stream.integration, &stream.connection);
    let a = ticket("a", "Restored");
    s.fake
        .save(&stream, vec![a.clone(), ticket("b", "Still pruned")]);
    s.fake.prune(&stream, &["a", "b"]);
    let first = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(first.counts.added, 2);
    let bare = |id: &str| json!({ "id": id });
    assert_eq!(
        local_live(&s.sink, &stream).await,
        BTreeMap::from([("a".into(), bare("a")), ("b".into(), bare("b"))]),
        "read pruned: only ids exist anywhere"
    );

    s.fake.save(&stream, vec![a.clone()]);
    let incremental = s
        .engine
        .sync(&stream, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(incremental.counts.total(), 0, "the cursor did not move");

    let full = s
        .engine
        .sync(
            &stream,
            &SyncOptions {
                full: true,
                ..SyncOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(full.counts.updated, 1, "the restore counts as an update");
    assert_eq!(full.counts.unchanged, 1);
    assert_eq!(
        local_live(&s.sink, &stream).await,
        BTreeMap::from([("a".into(), a), ("b".into(), bare("b"))])
    );
    let stored = s.sink.get(&stream, "a").await.unwrap().unwrap();
    assert_eq!(
        stored.meta.pruned_at, None,
        "pruned_at cleared like upstream"
    );
}
