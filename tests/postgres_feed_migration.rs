//! The PostgreSQL store's migration of the change feed's index: a schema of the previous
//! format (migration 4: the feed read through an index on `records (seq, id)`) is
//! rebuilt into per-commit id lists when it is opened, and its feed reads the same,
//! change for change, before and after. Needs the PostgreSQL of `scripts/pg.sh`.
#![cfg(feature = "postgres")]

use nango_sync::feed::{Change, ChangeQuery, FeedPosition, StreamFilter};
use nango_sync::record::{Cursor, LastAction, Metadata, RawJson, Record, StreamKey};
use nango_sync::sink::postgres::PostgresOptions;
use nango_sync::sink::{Commit, FullRead, PostgresStore, RecordSink};
use nango_sync::time::Timestamp;
use nango_sync_testkit::stores::{postgres_server_url, unique_schema};
use sqlx::AssertSqlSafe;

async fn open(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        &postgres_server_url(),
        PostgresOptions::new().with_schema(schema),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
}

fn record(id: &str, t: i64, action: LastAction, title: &str) -> Record {
    let at = Timestamp::from_micros(1_790_000_000_000_000 + t);
    Record {
        id: id.to_string(),
        payload: RawJson::from_trusted(format!(r#"{{"id":"{id}","title":"{title}"}}"#)),
        payload_is_bare: false,
        meta: Metadata {
            first_seen_at: at,
            last_modified_at: at,
            last_action: action,
            deleted_at: (action == LastAction::Deleted).then_some(at),
            pruned_at: None,
            cursor: Cursor(format!("cur-{t:012}")),
        },
    }
}

async fn commit(store: &PostgresStore, stream: &StreamKey, records: Vec<Record>) -> u64 {
    commit_read(store, stream, records, None).await
}

async fn commit_read(
    store: &PostgresStore,
    stream: &StreamKey,
    records: Vec<Record>,
    full_read: Option<FullRead>,
) -> u64 {
    let state = store.stream_state(stream).await.unwrap();
    let cursor = records
        .last()
        .map(|r| r.meta.cursor.clone())
        .or(state.cursor.clone());
    let mut c = Commit::new(stream.clone(), state.cursor, cursor, records);
    c.full_read = full_read;
    store.commit(c).await.unwrap().seq
}

/// The whole feed from `since`, read `limit` changes at a time.
async fn feed(store: &PostgresStore, since: FeedPosition, limit: usize) -> Vec<Change> {
    let mut out = Vec::new();
    let mut query = ChangeQuery::since(since).with_limit(limit);
    loop {
        let batch = store.changes(&query).await.unwrap();
        let full = batch.changes.len() == limit;
        out.extend(batch.changes);
        if !full {
            return out;
        }
        query.since = batch.next;
    }
}

/// Run `sql` (statements; `{s}` the quoted schema) on a connection of its own.
async fn execute(schema: &str, sql: &str) {
    let pool = sqlx::PgPool::connect(&postgres_server_url()).await.unwrap();
    let sql = sql.replace("{s}", &format!("\"{schema}\""));
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

/// The `bigint` that `sql` (`{s}` the quoted schema) selects.
async fn scalar(schema: &str, sql: &str) -> i64 {
    let pool = sqlx::PgPool::connect(&postgres_server_url()).await.unwrap();
    let sql = sql.replace("{s}", &format!("\"{schema}\""));
    let value = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.clone()))
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
    value
}

/// Turn a schema of this version back into the format before migration 5: no
/// per-commit lists, the index on `records (seq, id)`, full record pages, migrations 5
/// and later (the instances' tables) not recorded. The records, streams, consumers and
/// commit counter are the same in both formats.
const PREVIOUS_FORMAT: &str = "DROP TABLE {s}.feed_commits; \
    CREATE INDEX records_feed ON {s}.records (seq, id); \
    DROP TABLE {s}.leases; DROP TABLE {s}.instances; DROP TABLE {s}.rate_windows; \
    ALTER TABLE {s}.records RESET (fillfactor); \
    ALTER TABLE {s}.streams DROP COLUMN seen_live_generation, DROP COLUMN seen_live_count, DROP COLUMN last_seq; \
    DELETE FROM {s}.schema_migrations WHERE version >= 5";

const INDEXES: &str = "SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}' \
    AND tablename = 'records' AND indexname = 'records_feed'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_format_store_is_migrated_and_reads_the_same_feed() {
    use LastAction::{Added, Deleted, Updated};
    let schema = unique_schema();
    let tickets = StreamKey::new("migration", "c1", "Ticket");
    let users = StreamKey::new("migration", "c1", "User");
    let store = open(&schema).await;
    // A large commit (several chunks of ids), then commits that take records over from
    // it and from each other, on two streams, a delete, and a full re-read's sweep.
    let big: Vec<Record> = (0..2_500)
        .map(|i| record(&format!("t{i:05}"), i, Added, "v1"))
        .collect();
    commit(&store, &tickets, big).await;
    commit(
        &store,
        &users,
        vec![record("u1", 1, Added, "a"), record("u2", 2, Added, "b")],
    )
    .await;
    let rewritten: Vec<Record> = (0..2_500)
        .step_by(7)
        .map(|i| record(&format!("t{i:05}"), 10_000 + i, Updated, "v2"))
        .collect();
    commit(&store, &tickets, rewritten).await;
    commit(
        &store,
        &tickets,
        vec![
            record("t00003", 20_000, Deleted, "v1"),
            record("t00007", 20_001, Updated, "v3"),
        ],
    )
    .await;
    commit(&store, &users, vec![record("u1", 3, Updated, "c")]).await;
    let generation = store.stream_state(&users).await.unwrap().generation + 1;
    commit_read(
        &store,
        &users,
        vec![record("u3", 4, Added, "d")],
        Some(FullRead {
            generation,
            complete: true,
        }),
    )
    .await;
    store
        .ack("reader", &FeedPosition::from(2))
        .await
        .expect("ack");
    let last = store.last_seq().await.unwrap();
    let before = feed(&store, FeedPosition::START, 1_000).await;
    assert!(
        before.len() > 2_000,
        "the feed before the migration: {} changes",
        before.len()
    );
    drop(store);

    execute(&schema, PREVIOUS_FORMAT).await;
    assert_eq!(
        scalar(&schema, &INDEXES.replace("{schema}", &schema)).await,
        1,
        "the previous format's index"
    );

    // Opened: migrated in place.
    let store = open(&schema).await;
    assert_eq!(
        scalar(&schema, &INDEXES.replace("{schema}", &schema)).await,
        0,
        "the per-record index is dropped"
    );
    assert_eq!(
        scalar(&schema, "SELECT max(version) FROM {s}.schema_migrations").await,
        10,
        "migrated to the latest version"
    );
    assert_eq!(
        scalar(
            &schema,
            "SELECT count(*) FROM pg_class WHERE oid = '{s}.records'::regclass \
             AND reloptions @> ARRAY['fillfactor=50']"
        )
        .await,
        1,
        "record pages are filled to half, for updates in place"
    );
    // One list per commit that still has live records, in chunks of at most 1,000 ids,
    // whose live counts add up to the records.
    assert_eq!(
        scalar(&schema, "SELECT sum(live)::int8 FROM {s}.feed_commits").await,
        scalar(&schema, "SELECT count(*) FROM {s}.records").await,
    );
    assert_eq!(
        scalar(
            &schema,
            "SELECT count(*) FROM {s}.feed_commits WHERE cardinality(ids) > 1000              OR (chunk = 0) = (live IS NULL)"
        )
        .await,
        0
    );
    assert_eq!(store.last_seq().await.unwrap(), last);
    assert_eq!(
        store.consumer_position("reader").await.unwrap(),
        FeedPosition::from(2)
    );
    for limit in [1_000, 333, 7, 1] {
        assert_eq!(
            feed(&store, FeedPosition::START, limit).await,
            before,
            "the feed read {limit} at a time"
        );
    }
    // From inside a commit (every 97th change's position), and filtered.
    for (i, change) in before.iter().enumerate().step_by(97) {
        assert_eq!(
            feed(&store, change.position(), 50).await,
            before[i + 1..],
            "the feed after {:?}",
            change.position()
        );
    }
    let filtered = store
        .changes(
            &ChangeQuery::since(FeedPosition::START)
                .with_filter(StreamFilter::stream(&users))
                .with_limit(100),
        )
        .await
        .unwrap()
        .changes;
    let want: Vec<Change> = before
        .iter()
        .filter(|c| c.stream == users)
        .cloned()
        .collect();
    assert_eq!(filtered, want);

    // A commit after the migration retires the migrated lists it takes every record of.
    let first_seq = before[0].seq();
    let remaining: Vec<Record> = before
        .iter()
        .filter(|c| c.seq() == first_seq)
        .map(|c| record(c.id(), 30_000, Updated, "v4"))
        .collect();
    assert!(remaining.len() > 1_000, "{} records", remaining.len());
    let lists = |seq: u64| {
        let sql = format!("SELECT count(*) FROM {{s}}.feed_commits WHERE seq = {seq}");
        let schema = schema.clone();
        async move { scalar(&schema, &sql).await }
    };
    assert!(lists(first_seq).await >= 2);
    let seq = commit(&store, &tickets, remaining.clone()).await;
    assert_eq!(lists(first_seq).await, 0, "a list without live records");
    assert_eq!(lists(seq).await, remaining.len().div_ceil(1_000) as i64);
    let after = feed(&store, FeedPosition::START, 1_000).await;
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after.iter().filter(|c| c.seq() == seq).count(),
        remaining.len()
    );
    drop(store);

    // Opening again changes nothing.
    let store = open(&schema).await;
    assert_eq!(feed(&store, FeedPosition::START, 1_000).await, after);
    execute(&schema, "DROP SCHEMA {s} CASCADE").await;
}
