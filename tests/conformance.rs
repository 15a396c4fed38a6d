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
            restored_payload_fills_a_pruned_copy,
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
    use nango_sync::sink::SledStore;
    use nango_sync::sink::conformance::{self, Open};
    use nango_sync::sink::sled::{Durability, SledOptions};
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
}

#[cfg(feature = "postgres")]
mod postgres {
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
