//! Every store runs the same conformance suite (`nango_sync::sink::conformance`).
//!
//! One module per store, gated by the store's cargo feature. The PostgreSQL tests need a
//! server: `scripts/test.sh` starts a throwaway one and exports
//! `NANGO_SYNC_TEST_POSTGRES_URL`; without it they fail (they never skip).
#![cfg(feature = "testkit")]

/// One `#[tokio::test]` per check of the suite. `$fresh` is an async fn returning a
/// `Harness` whose `store` field is a new, empty store (other fields keep its resources
/// alive for the test).
macro_rules! conformance_tests {
    ($fresh:path) => {
        conformance_tests!(@each $fresh;
            fresh_stream_has_no_cursor,
            commit_advances_cursor,
            replayed_commit_is_idempotent,
            cursor_conflict_writes_nothing,
            injected_failure_leaves_nothing,
            streams_are_isolated,
            large_commit,
            merge_outcomes_are_counted,
            full_read_sweeps_unseen_records,
            seq_is_monotonic_and_per_record,
            list_pages_in_code_point_order,
            stream_status_is_reported,
            run_and_upstream_error_round_trip,
            reads_during_commit_see_old_or_new,
            hostile_strings_round_trip,
        );
    };
    (@each $fresh:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $fresh().await;
                nango_sync::sink::conformance::$check(&harness.store).await;
            }
        )*
    };
}

mod memory {
    use nango_sync::sink::MemoryStore;
    use nango_sync::sink::conformance::{self, Open};

    pub struct Harness {
        pub store: MemoryStore,
    }

    async fn fresh() -> Harness {
        Harness {
            store: MemoryStore::new(),
        }
    }

    conformance_tests!(fresh);

    #[tokio::test]
    async fn run_all_passes() {
        conformance::run_all(
            |open| {
                assert_eq!(open, Open::Fresh, "the memory store is not durable");
                async { MemoryStore::new() }
            },
            false,
        )
        .await;
    }
}

#[cfg(feature = "sled")]
mod sled {
    use std::path::Path;
    use std::time::Duration;

    use nango_sync::sink::RunSummary;
    use nango_sync::sink::conformance::{self, Open};
    use nango_sync::sink::sled::{Durability, SledOptions};
    use nango_sync::sink::{DynRecordSink, SledStore, StreamStatus, read_all};
    use nango_sync::{RecordSink, StoredRecord, Timestamp};

    // `RecordSink` and `DynRecordSink` both name these methods: call the first.
    async fn streams(store: &SledStore) -> Vec<StreamStatus> {
        RecordSink::streams(store).await.unwrap()
    }
    use tempfile::TempDir;

    pub struct Harness {
        pub store: SledStore,
        _dir: TempDir,
    }

    async fn fresh() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("db")).await.unwrap();
        Harness { store, _dir: dir }
    }

    conformance_tests!(fresh);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        let mut dirs: Vec<TempDir> = Vec::new();
        conformance::reopen_keeps_everything(&mut |open: Open| {
            if open == Open::Fresh {
                dirs.push(tempfile::tempdir().unwrap());
            }
            let path = dirs.last().expect("a fresh store first").path().join("db");
            async move { SledStore::open(path).await.unwrap() }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_durability_passes_the_suite_too() {
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions::new()
            .with_durability(Durability::Periodic(std::time::Duration::from_millis(50)));
        let store = SledStore::open_with(dir.path().join("db"), options)
            .await
            .unwrap();
        conformance::merge_outcomes_are_counted(&store).await;
        conformance::full_read_sweeps_unseen_records(&store).await;
    }

    #[tokio::test]
    async fn open_url_builds_a_sled_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sled://{}", dir.path().join("via-url").display());
        let sink = nango_sync::sink::open(&url).await.unwrap();
        assert_eq!(sink.backend(), "sled");
    }

    // ---- Recovery from a snapshot sled was writing when its process died ----------

    /// The name sled 0.34 gives a snapshot while writing it, at an LSN past any real one.
    const LEFTOVER: &str = "snap.00000000FFFFFFFF.generating";

    /// A store holding two streams (10,000 records; merges, tombstones, a prune), closed.
    async fn filled_store(dir: &Path) {
        let store = SledStore::open(dir).await.unwrap();
        conformance::large_commit(&store).await;
        conformance::merge_outcomes_are_counted(&store).await;
        drop(store);
        // Open once more, so that sled writes a finished snapshot of all of it.
        drop(SledStore::open(dir).await.unwrap());
    }

    /// Everything a reader can see: every stream's status and every record, tombstones
    /// included.
    async fn contents(store: &SledStore) -> Vec<(StreamStatus, Vec<StoredRecord>)> {
        let mut out = Vec::new();
        for status in streams(store).await {
            let records = read_all(store as &dyn DynRecordSink, &status.stream, true)
                .await
                .unwrap();
            out.push((status, records));
        }
        out
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snap."))
            .collect();
        names.sort();
        names
    }

    /// sled itself refuses the directory (the fixture reproduces the failure).
    fn assert_sled_refuses(dir: &Path) {
        match ::sled::open(dir) {
            Err(::sled::Error::Corruption { .. }) => {}
            Err(e) => panic!("sled failed otherwise than with a corruption error: {e}"),
            Ok(_) => {
                panic!("sled opened the directory: the fixture does not reproduce the failure")
            }
        }
    }

    /// Open, expecting a recovery that removed exactly `leftovers`, and the same contents.
    async fn open_recovers(
        dir: &Path,
        leftovers: &[&str],
        before: &[(StreamStatus, Vec<StoredRecord>)],
    ) {
        let store = SledStore::open(dir).await.unwrap_or_else(|e| {
            panic!("the store does not open after an interrupted snapshot: {e}")
        });
        let recovery = store.recovery().expect("the open recovered");
        let mut removed: Vec<String> = recovery
            .removed
            .iter()
            .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, leftovers, "the interrupted snapshots removed");
        assert!(
            recovery.check.is_consistent(),
            "check after recovery: {:?}",
            recovery.check.problems
        );
        assert_eq!(recovery.check.streams, before.len() as u64);
        assert_eq!(
            recovery.check.records,
            before.iter().map(|(_, r)| r.len() as u64).sum::<u64>()
        );
        for name in leftovers {
            assert!(!dir.join(name).exists(), "{name} is still there");
        }
        assert!(
            contents(&store).await == before,
            "the recovered store differs from the store before the interrupted snapshot"
        );
        // It takes commits again.
        conformance::commit_advances_cursor(&store).await;
        assert!(store.check().await.unwrap().is_consistent());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_interrupted_snapshot_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let before = contents(&SledStore::open(&path).await.unwrap()).await;
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        assert_sled_refuses(&path);
        open_recovers(&path, &[LEFTOVER], &before).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_interrupted_snapshots_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let before = contents(&SledStore::open(&path).await.unwrap()).await;
        let finished = snapshot_files(&path);
        assert_eq!(finished.len(), 1, "one finished snapshot: {finished:?}");
        // The first half of the real snapshot, as a write killed midway leaves it, under
        // the name sled was writing it with...
        let real = std::fs::read(path.join(&finished[0])).unwrap();
        let partial = format!("{}.generating", finished[0]);
        std::fs::write(path.join(&partial), &real[..real.len() / 2]).unwrap();
        assert_sled_refuses(&path);
        // ...and 256 KiB of garbage at a later position.
        let garbage: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(path.join(LEFTOVER), &garbage).unwrap();
        assert_sled_refuses(&path);
        let mut leftovers = [partial.as_str(), LEFTOVER];
        leftovers.sort();
        open_recovers(&path, &leftovers, &before).await;
        assert_eq!(
            snapshot_files(&path)
                .iter()
                .filter(|n| n.ends_with(".generating"))
                .count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything_across_interrupted_snapshots() {
        let mut dirs: Vec<TempDir> = Vec::new();
        conformance::reopen_keeps_everything(&mut |open: Open| {
            if open == Open::Fresh {
                dirs.push(tempfile::tempdir().unwrap());
            }
            let path = dirs.last().expect("a fresh store first").path().join("db");
            if open == Open::Reopen {
                std::fs::write(path.join(LEFTOVER), b"").unwrap();
            }
            async move {
                let store = SledStore::open(&path).await.unwrap();
                assert!(store.recovery().is_some() || !path.join(LEFTOVER).exists());
                store
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_removed_while_another_process_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        // The lock sled takes (flock on `db`), held as another process would hold it.
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.join("db"))
            .unwrap();
        holder.try_lock().unwrap();
        let options = SledOptions::new().with_lock_wait(Duration::from_millis(300));
        let err = SledStore::open_with(&path, options.clone())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("another process uses the store"), "{msg}");
        assert!(
            path.join(LEFTOVER).exists(),
            "the leftover was removed while the lock was held"
        );
        // Released during the wait: the open recovers.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        let store = SledStore::open_with(&path, options.with_lock_wait(Duration::from_secs(5)))
            .await
            .unwrap();
        release.join().unwrap();
        assert_eq!(store.recovery().unwrap().removed.len(), 1);
        assert!(!path.join(LEFTOVER).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inconsistent_store_is_refused_after_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        // Remove one record behind the store's back: its stream's counts no longer match.
        {
            let db = ::sled::open(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            let (key, _) = tree.scan_prefix(b"r").next().unwrap().unwrap();
            tree.remove(key).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(&path).await.unwrap();
        let check = store.check().await.unwrap();
        assert!(!check.is_consistent());
        assert!(
            check.problems[0]
                .contains("10000 live and 0 deleted records, the store holds 9999 and 0"),
            "{:?}",
            check.problems
        );
        drop(store);
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err}");
        assert!(err.to_string().contains("inconsistent"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_finds_a_missing_cursor_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let store = SledStore::open(&path).await.unwrap();
        let large = streams(&store)
            .await
            .into_iter()
            .find(|s| s.stream.connection == "large")
            .unwrap();
        let last = RecordSink::get(&store, &large.stream, "rec-09999")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Some(&last.meta.cursor), large.state.cursor.as_ref());
        drop(store);
        {
            let db = ::sled::open(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            let key = tree
                .scan_prefix(b"r")
                .keys()
                .map(|k| k.unwrap())
                .find(|k| k.ends_with(b"rec-09999"))
                .unwrap();
            // Replace it by another id: the counts still match, the cursor's record is gone.
            let value = tree.remove(&key).unwrap().unwrap();
            let mut other = key.to_vec();
            other.extend_from_slice(b"-moved");
            tree.insert(other, value).unwrap();
            db.flush().unwrap();
        }
        let check = SledStore::open(&path).await.unwrap().check().await.unwrap();
        assert_eq!(check.problems.len(), 1, "{:?}", check.problems);
        assert!(
            check.problems[0]
                .contains("is the cursor of record \"rec-09999\", which the store does not hold"),
            "{:?}",
            check.problems
        );
    }

    fn run(pages: u64) -> RunSummary {
        RunSummary {
            started_at: Timestamp::from_micros(1),
            finished_at: Timestamp::from_micros(2),
            pages,
            counts: Default::default(),
            full: false,
            full_reason: None,
            high_water_mark: None,
            error: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_after_ops_makes_sled_write_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let store = SledStore::open_with(&path, SledOptions::new().with_snapshot_after_ops(2))
            .await
            .unwrap();
        let stream = streams(&store).await[0].stream.clone();
        let mut seen = vec![snapshot_files(&path)];
        for pages in 1..=6 {
            RecordSink::record_run(&store, &stream, &run(pages))
                .await
                .unwrap();
            seen.push(snapshot_files(&path));
        }
        // sled wrote a snapshot after writes 2, 4 and 6, and at no other time.
        for (write, names) in seen.iter().enumerate().skip(1) {
            assert_eq!(
                names != &seen[write - 1],
                write % 2 == 0,
                "write {write}: snapshots {:?} -> {names:?}",
                seen[write - 1]
            );
        }
        conformance::full_read_sweeps_unseen_records(&store).await;
        assert!(store.check().await.unwrap().is_consistent());
        let before = contents(&store).await;
        drop(store);
        assert!(contents(&SledStore::open(&path).await.unwrap()).await == before);

        // Through a sink URL too.
        let url = format!("sled://{}?snapshot_after_ops=1", path.display());
        let sink = nango_sync::sink::open(&url).await.unwrap();
        let first = snapshot_files(&path);
        sink.record_run(&stream, &run(7)).await.unwrap();
        assert_ne!(
            snapshot_files(&path),
            first,
            "a write through the URL made a snapshot"
        );
    }

    #[tokio::test]
    async fn a_corrupted_log_is_reported_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let len = std::fs::metadata(path.join("db")).unwrap().len() as usize;
        std::fs::write(path.join("db"), vec![0x5a; len]).unwrap();
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("damaged") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_replaced_log_is_reported_damaged_not_opened_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        // Garbage for a log and no snapshot: sled itself opens that as a new, empty
        // database.
        let len = std::fs::metadata(path.join("db")).unwrap().len() as usize;
        std::fs::write(path.join("db"), vec![0x5a; len]).unwrap();
        for name in snapshot_files(&path) {
            std::fs::remove_file(path.join(name)).unwrap();
        }
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        assert!(
            err.to_string().contains("holds none of the store's data"),
            "{err}"
        );
        // And it stays refused.
        assert!(SledStore::open(&path).await.unwrap_err().is_damaged_store());
    }

    #[tokio::test]
    async fn a_store_made_before_the_marker_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let marker = path.join("nango-sync-store");
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        let store = SledStore::open(&path).await.unwrap();
        assert_eq!(streams(&store).await.len(), 2);
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn unusable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = SledStore::open(file.join("db")).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sled") && msg.contains("a-file"), "{msg}");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    // The SQLite store is written on another branch; this module assumes its API:
    // `SqliteStore::open(path).await`.
    use nango_sync::sink::SqliteStore;
    use nango_sync::sink::conformance::{self, Open};
    use tempfile::TempDir;

    pub struct Harness {
        pub store: SqliteStore,
        _dir: TempDir,
    }

    async fn fresh() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("store.db"))
            .await
            .unwrap();
        Harness { store, _dir: dir }
    }

    conformance_tests!(fresh);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        let mut dirs: Vec<TempDir> = Vec::new();
        conformance::reopen_keeps_everything(&mut |open: Open| {
            if open == Open::Fresh {
                dirs.push(tempfile::tempdir().unwrap());
            }
            let path = dirs
                .last()
                .expect("a fresh store first")
                .path()
                .join("store.db");
            async move { SqliteStore::open(path).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn garbage_file_is_reported_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        std::fs::write(&path, vec![0x5a; 100_000]).unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("damaged") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use nango_sync::RecordSink;
    use nango_sync::sink::PostgresStore;
    use nango_sync::sink::conformance::{self, Open};

    /// The server `scripts/test.sh` started.
    fn server_url() -> String {
        std::env::var("NANGO_SYNC_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "NANGO_SYNC_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server. \
                 Run them with scripts/test.sh, which starts a throwaway PostgreSQL and sets it."
            )
        })
    }

    /// A schema name of its own for each test, so tests run in parallel.
    fn unique_schema() -> String {
        format!("nst_{}", uuid::Uuid::new_v4().simple())
    }

    async fn connect(schema: &str) -> PostgresStore {
        PostgresStore::builder(server_url())
            .schema(schema)
            .pool_size(4)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
    }

    pub struct Harness {
        pub store: PostgresStore,
    }

    async fn fresh() -> Harness {
        Harness {
            store: connect(&unique_schema()).await,
        }
    }

    conformance_tests!(fresh);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        let mut schema = String::new();
        conformance::reopen_keeps_everything(&mut |open: Open| {
            if open == Open::Fresh {
                schema = unique_schema();
            }
            let schema = schema.clone();
            async move { connect(&schema).await }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_migrations_are_safe() {
        let schema = unique_schema();
        let opens: Vec<_> = (0..6).map(|_| connect(&schema)).collect();
        let stores = futures::future::join_all(opens).await;
        conformance::commit_advances_cursor(&stores[0]).await;
        conformance::fresh_stream_has_no_cursor(&stores[5]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_url_builds_a_postgres_store() {
        let sink = nango_sync::sink::open(&server_url()).await.unwrap();
        assert_eq!(sink.backend(), "postgres");
        assert!(sink.streams().await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_table_is_reported_damaged() {
        let schema = unique_schema();
        let store = connect(&schema).await;
        conformance::commit_advances_cursor(&store).await;
        drop(store);
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE \"{schema}\".records"
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let err = PostgresStore::builder(server_url())
            .schema(&schema)
            .connect()
            .await
            .unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        assert!(err.to_string().contains("records"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_open_reads_and_refuses_writes() {
        let schema = unique_schema();
        let store = connect(&schema).await;
        conformance::commit_advances_cursor(&store).await;
        let before = RecordSink::streams(&store).await.unwrap();
        let ro = PostgresStore::builder(server_url())
            .schema(&schema)
            .read_only(true)
            .connect()
            .await
            .unwrap();
        assert_eq!(RecordSink::streams(&ro).await.unwrap(), before);
        let err = ro
            .set_upstream_error(&before[0].stream, Some("x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        // A schema that does not exist is not created by a read-only open.
        let missing = unique_schema();
        let err = PostgresStore::builder(server_url())
            .schema(&missing)
            .read_only(true)
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("there is no schema"), "{err}");
    }

    #[tokio::test]
    async fn bad_schema_names_are_rejected() {
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a b",
            "x\"; drop",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            let err = PostgresStore::builder(server_url())
                .schema(bad)
                .connect()
                .await
                .unwrap_err();
            assert!(err.to_string().contains("schema"), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn dead_server_error_hides_the_password() {
        // Port 1 on localhost: nothing listens there.
        let url = "postgres://user:s3cret-pw@127.0.0.1:1/db?connect_timeout=2";
        let err = PostgresStore::builder(url)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .unwrap_err();
        let msg = format!("{err} / {err:?}");
        assert!(!msg.contains("s3cret-pw"), "password leaked: {msg}");
        assert!(
            msg.contains("127.0.0.1:1"),
            "the error names the server: {msg}"
        );
        assert!(
            err.is_retryable(),
            "a refused connection is retryable: {msg}"
        );
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let url = server_url();
        let store = connect(&unique_schema()).await;
        let debug = format!("{store:?}");
        assert!(debug.contains("PostgresStore"), "{debug}");
        if let Some(pw) = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .and_then(|(u, _)| u.split_once(':'))
        {
            assert!(!debug.contains(pw.1), "password in Debug: {debug}");
        }
        let with_pw = PostgresStore::builder("postgres://u:hunter2@127.0.0.1:1/db");
        assert!(
            !format!("{with_pw:?}").contains("hunter2"),
            "password in the builder's Debug"
        );
    }
}
