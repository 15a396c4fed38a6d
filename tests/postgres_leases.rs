//! Leases and fencing on the PostgreSQL store: a commit carrying a lease that expired
//! and was taken over is refused with `LeaseLost` and writes nothing, even when its
//! expected cursor is right; takeover bumps the fencing token; renewal keeps a lease,
//! release and leave free it; a takeover waits for a commit in progress. Needs the
//! PostgreSQL of `scripts/pg.sh`.
#![cfg(feature = "postgres")]

use std::time::Duration;

use nango_sync::Error;
use nango_sync::record::{Cursor, LastAction, Metadata, RawJson, Record, StreamKey};
use nango_sync::sink::lease::Fence;
use nango_sync::sink::postgres::PostgresOptions;
use nango_sync::sink::{Commit, PostgresStore, RecordSink, read_all};
use nango_sync::time::Timestamp;
use nango_sync_testkit::stores::{postgres_server_url, unique_schema};

async fn open(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        &postgres_server_url(),
        PostgresOptions::new().with_schema(schema),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
}

fn record(id: &str, t: i64) -> Record {
    let at = Timestamp::from_micros(1_790_000_000_000_000 + t);
    Record {
        id: id.to_string(),
        payload: RawJson::from_trusted(format!(r#"{{"id":"{id}","t":{t}}}"#)),
        payload_is_bare: false,
        meta: Metadata {
            first_seen_at: at,
            last_modified_at: at,
            last_action: LastAction::Added,
            deleted_at: None,
            pruned_at: None,
            cursor: Cursor(format!("cur-{t:012}")),
        },
    }
}

/// A commit of `records` after what the store holds, under `fence`.
async fn page(
    store: &PostgresStore,
    stream: &StreamKey,
    records: Vec<Record>,
    fence: Option<Fence>,
) -> Commit {
    let state = store.stream_state(stream).await.unwrap();
    let cursor = records.last().map(|r| r.meta.cursor.clone());
    let mut c = Commit::new(stream.clone(), state.cursor, cursor, records);
    c.fence = fence;
    c
}

const TTL: Duration = Duration::from_millis(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_a_lost_lease_is_refused_and_writes_nothing() {
    let schema = unique_schema();
    let store = open(&schema).await;
    let stream = StreamKey::new("lease", "c1", "Ticket");

    let a = store
        .acquire_lease(&stream, "a", TTL)
        .await
        .unwrap()
        .expect("a free lease");
    assert_eq!(a.token, 1);
    assert_eq!(
        store.acquire_lease(&stream, "b", TTL).await.unwrap(),
        None,
        "a live lease is not taken"
    );
    // A commits under its lease.
    store
        .commit(page(&store, &stream, vec![record("r1", 1)], Some(a.clone())).await)
        .await
        .unwrap();

    // A pauses past its lease; B takes over with the next token.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let b = store
        .acquire_lease(&stream, "b", TTL)
        .await
        .unwrap()
        .expect("an expired lease is taken");
    assert_eq!(b.token, 2);
    assert_eq!(
        store
            .renew_leases("a", TTL, &[(stream.clone(), a.token)])
            .await
            .unwrap(),
        Vec::<StreamKey>::new(),
        "the old holder cannot renew"
    );

    // A's next commit expects the right cursor, so only the fence can refuse it.
    let before = read_all(&store, &stream, true).await.unwrap();
    let seq = store.last_seq().await.unwrap();
    let refused = store
        .commit(page(&store, &stream, vec![record("r2", 2)], Some(a.clone())).await)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::LeaseLost { instance, token: 1, .. } if instance == "a"),
        "{refused}"
    );
    assert!(refused.is_lease_lost() && !refused.is_retryable());
    assert_eq!(
        read_all(&store, &stream, true).await.unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(store.last_seq().await.unwrap(), seq);

    // B commits; a commit without a fence (a single instance) is not checked.
    store
        .commit(page(&store, &stream, vec![record("r2", 2)], Some(b.clone())).await)
        .await
        .unwrap();
    store
        .commit(page(&store, &stream, vec![record("r3", 3)], None).await)
        .await
        .unwrap();
    assert_eq!(read_all(&store, &stream, true).await.unwrap().len(), 3);

    // Renewal keeps B's lease past its first term; release frees it at once.
    for _ in 0..3 {
        tokio::time::sleep(TTL / 2).await;
        assert_eq!(
            store
                .renew_leases("b", TTL, &[(stream.clone(), b.token)])
                .await
                .unwrap(),
            vec![stream.clone()]
        );
    }
    let leases = store.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert!(leases[0].live && leases[0].holder == "b" && leases[0].token == 2);
    assert!(store.release_lease(&stream, &b).await.unwrap());
    let c = store
        .acquire_lease(&stream, "c", TTL)
        .await
        .unwrap()
        .expect("a released lease is free");
    assert_eq!(c.token, 3);
    let refused = store
        .commit(page(&store, &stream, vec![record("r4", 4)], Some(b)).await)
        .await
        .unwrap_err();
    assert!(refused.is_lease_lost(), "{refused}");

    // Leaving releases every lease of the instance and its membership.
    store.heartbeat("c", TTL).await.unwrap();
    store.heartbeat("d", TTL).await.unwrap();
    assert_eq!(store.live_instances().await.unwrap(), ["c", "d"]);
    store.leave("c").await.unwrap();
    assert_eq!(store.live_instances().await.unwrap(), ["d"]);
    assert!(!store.leases().await.unwrap()[0].live);
    let d = store
        .acquire_lease(&stream, "d", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.token, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_commit_in_progress() {
    let schema = unique_schema();
    let store = open(&schema).await;
    let other = open(&schema).await;
    let stream = StreamKey::new("lease", "c1", "Ticket");
    let a = store
        .acquire_lease(&stream, "a", TTL)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    // The lease expired, but nobody took it yet: A's commit is refused anyway (an
    // expired lease is not held).
    let refused = store
        .commit(page(&store, &stream, vec![record("r1", 1)], Some(a.clone())).await)
        .await
        .unwrap_err();
    assert!(refused.is_lease_lost(), "{refused}");
    // Taken again (same holder: a restarted instance), with the next token.
    let a2 = store
        .acquire_lease(&stream, "a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.token, a.token + 1);
    // While a commit holds the lease row, another instance's acquisition does not wait
    // and does not take it; after the commit it still cannot (the lease is live).
    let big: Vec<Record> = (0..20_000)
        .map(|i| record(&format!("r{i:06}"), i))
        .collect();
    let commit = page(&store, &stream, big, Some(a2.clone())).await;
    let committing =
        tokio::spawn(async move { store.commit(commit).await.map(|o| o.counts.added) });
    let started = std::time::Instant::now();
    assert_eq!(other.acquire_lease(&stream, "b", TTL).await.unwrap(), None);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the acquisition waited"
    );
    assert_eq!(committing.await.unwrap().unwrap(), 20_000);
}

/// Two processes' budgets (two clients, each its own learning budget) share Nango's
/// window through the store: together they never go past the limit the fake states,
/// and the fake refuses none of their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_rate_budget_through_the_store() {
    use std::sync::Arc;

    use nango_sync::client::{RateBudget, RecordsQuery};
    use nango_sync_testkit::{FakeConfig, FakeNango};

    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let stream = StreamKey::new("budget", "c1", "Ticket");
    fake.generate(&stream, 10, 10);
    fake.set_rate_limit(Some(30));
    let schema = unique_schema();
    let store = open(&schema).await;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let budget = Arc::new(RateBudget::learning(200));
            budget.set_ledger(store.rate_ledger("fake"));
            let client = fake
                .client_builder()
                .rate_budget(budget.clone())
                .build()
                .unwrap();
            (client, budget)
        })
        .collect();
    // One request each: both learn the limit (30) and the window.
    for (client, budget) in &clients {
        client
            .list_records(&RecordsQuery::new(&stream))
            .await
            .unwrap();
        assert_eq!(budget.limit(), 30);
    }
    // Then 20 more each, at once: 28 permits are left in the window.
    let mut tasks = Vec::new();
    for (client, _) in &clients {
        for _ in 0..20 {
            let client = client.clone();
            let stream = stream.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .list_records(&RecordsQuery::new(&stream))
                    .await
                    .unwrap();
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answered = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/records")
        .count();
    // One permit stays in reserve for the first requests no ledger counted (see
    // `RateBudget`): 29 or 30 answered, never more than the limit.
    assert!(
        (29..=30).contains(&answered),
        "{answered} answered: the two processes together must take the window's permits, and no more"
    );
    assert_eq!(fake.rate_limited_requests(), 0, "no request was refused");
    for t in tasks {
        t.abort();
    }
}
