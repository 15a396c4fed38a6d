//! `feed::Subscription` over a real SQLite store fed by the engine from the fake Nango:
//! woken by commits in a spawned task, resumed by a named consumer, batch sizes, and
//! cancel safety.
#![cfg(feature = "sqlite")]

use std::time::Duration;

use nango_sync::feed::{ChangeKind, FeedPosition, Subscription};
use nango_sync::{Engine, RecordSink, StreamKey, SyncOptions};
use nango_sync_testkit::{FakeConfig, FakeNango, TestStore};
use serde_json::json;

fn tickets() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

#[derive(Debug, serde::Deserialize)]
struct Ticket {
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_consumer_is_woken_by_commits_and_resumes_after_its_ack() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let store = TestStore::sqlite().await;
    let engine = Engine::new(fake.client_builder().build().unwrap(), store.sink.clone());
    fake.generate(&tickets(), 12, 12);

    // A consumer in a task of its own, batches of 5, acknowledging each.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = store.sink.clone();
    let consumer = tokio::spawn(async move {
        let mut feed = Subscription::for_consumer(sink, "indexer")
            .await
            .unwrap()
            .with_batch_size(5);
        loop {
            let batch = feed.next_batch().await.unwrap();
            assert!(!batch.is_empty() && batch.len() <= 5, "{}", batch.len());
            for change in &batch {
                if let Some(t) = change.deserialize::<Ticket>().unwrap() {
                    assert_eq!(t.id, change.id());
                }
                tx.send((change.kind, change.id().to_string())).unwrap();
            }
            feed.ack().await.unwrap();
        }
    });
    engine
        .sync(&tickets(), &SyncOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 12 {
        let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("woken by the commit")
            .unwrap();
        got.push(c);
    }
    assert!(got.iter().all(|(k, _)| *k == ChangeKind::Added));

    // More changes: only they arrive.
    let ids: Vec<String> = fake.live_payloads(&tickets()).into_keys().collect();
    let mut p = fake.live_payloads(&tickets())[&ids[0]].clone();
    p["title"] = json!("changed");
    fake.save(&tickets(), vec![p]);
    fake.delete(&tickets(), &[&ids[1]]);
    engine
        .sync(&tickets(), &SyncOptions::default())
        .await
        .unwrap();
    let mut next = Vec::new();
    while next.len() < 2 {
        next.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("woken by the second commit")
                .unwrap(),
        );
    }
    next.sort();
    assert_eq!(
        next,
        vec![
            (ChangeKind::Updated, ids[0].clone()),
            (ChangeKind::Deleted, ids[1].clone())
        ]
    );
    // The handler saw the changes before the consumer acknowledged them: wait for the
    // acknowledgement to be stored before stopping it.
    let last = FeedPosition::after_commit(store.sink.last_seq().await.unwrap());
    nango_sync_testkit::eventually(Duration::from_secs(10), || async {
        match store.sink.consumer_position("indexer").await.unwrap() {
            p if p == last => Ok(()),
            p => Err(format!("the consumer acknowledged {p:?}, not {last:?}")),
        }
    })
    .await;
    consumer.abort();
    let _ = consumer.await;

    // Its position is stored: a new subscription for it has nothing to read.
    let mut again = Subscription::for_consumer(store.sink.clone(), "indexer")
        .await
        .unwrap();
    assert!(again.try_next_batch().await.unwrap().is_empty());
    assert_eq!(
        store.sink.consumer_position("indexer").await.unwrap(),
        FeedPosition::after_commit(store.sink.last_seq().await.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_loses_nothing() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let store = TestStore::sqlite().await;
    let engine = Engine::new(fake.client_builder().build().unwrap(), store.sink.clone());
    let mut feed = Subscription::new(store.sink.clone(), 0);
    // Nothing yet: the wait is cancelled by the timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), feed.next_batch())
            .await
            .is_err()
    );
    assert_eq!(feed.position(), &FeedPosition::START);
    fake.generate(&tickets(), 3, 3);
    engine
        .sync(&tickets(), &SyncOptions::default())
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), feed.next_batch())
        .await
        .expect("the commit wakes the next wait")
        .unwrap();
    assert_eq!(batch.len(), 3);
    // A subscription without a consumer has nothing to acknowledge.
    let err = feed.ack().await.unwrap_err();
    assert!(err.to_string().contains("named consumer"), "{err}");
    // A bad consumer name is refused before any read.
    let err = Subscription::for_consumer(store.sink.clone(), "bad\nname")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("consumer name"), "{err}");
}
