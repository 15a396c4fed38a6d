//! Every store runs the same conformance suite (`nango_sync_testkit::conformance`), each
//! history also on the in-memory reference store, whose exports and statuses the store
//! must match.
//!
//! One module per store, gated by the store's cargo feature; `conformance_tests!`
//! generates one test per check of the suite's list, with the store factories of
//! `nango_sync_testkit::stores`, and its `shared` submodule runs them again through the
//! shared handle (`SharedSink`). The PostgreSQL tests need a server: `scripts/test.sh`
//! starts a throwaway one and exports `NANGO_SYNC_TEST_POSTGRES_URL`; without it they
//! fail (they never skip).

mod memory {
    use nango_sync_testkit::conformance::{self, Shared};
    use nango_sync_testkit::stores::memory_factory as stores;

    nango_sync_testkit::conformance_tests!(stores());

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_all_runs_every_check() {
        conformance::run_all(&mut stores(), false).await;
    }
}

#[cfg(feature = "sled")]
mod sled {
    use nango_sync::sink::SledStore;
    use nango_sync::sink::sled::{Durability, SledOptions};
    use nango_sync_testkit::conformance::{self, Shared, StoreFactory};
    use nango_sync_testkit::stores::sled_factory;

    fn stores() -> impl StoreFactory<Store = SledStore> {
        sled_factory(SledOptions::new())
    }

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_durability_passes_the_merge_and_sweep_checks() {
        let mut stores = sled_factory(
            SledOptions::new()
                .with_durability(Durability::Periodic(std::time::Duration::from_millis(50))),
        );
        conformance::merge_outcomes_are_counted(&mut stores).await;
        conformance::full_read_sweeps_unseen_records(&mut stores).await;
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
    use nango_sync_testkit::conformance::Shared;
    use nango_sync_testkit::stores::sqlite_factory as stores;

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use nango_sync::sink::fault::FaultInjector;
    use nango_sync::sink::postgres::PostgresOptions;
    use nango_sync::sink::{PostgresStore, RecordSink};
    use nango_sync_testkit::conformance::{self, Open, Shared};
    use nango_sync_testkit::stores::{
        postgres_factory as stores, postgres_server_url as server_url, unique_schema,
    };

    async fn connect(options: PostgresOptions) -> PostgresStore {
        PostgresStore::connect_with(&server_url(), options.with_pool_size(4))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
    }

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_migrations_are_safe() {
        let schema = unique_schema();
        let opens: Vec<_> = (0..6)
            .map(|_| connect(PostgresOptions::new().with_schema(&schema)))
            .collect();
        let mut stores = futures::future::join_all(opens).await;
        let first = stores.remove(0);
        let mut handed = Some(first);
        conformance::commit_advances_cursor(&mut |open: Open, _faults: Arc<FaultInjector>| {
            assert_eq!(open, Open::Fresh);
            let store = handed.take().expect("one store for one check");
            async move { store }
        })
        .await;
        // The others share the one migrated schema: they see what the check wrote.
        let expected = stores[0].streams().await.unwrap();
        assert_eq!(expected.len(), 1, "{expected:?}");
        for store in &stores[1..] {
            assert_eq!(store.streams().await.unwrap(), expected);
        }
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
            let err =
                PostgresStore::connect_with(&server_url(), PostgresOptions::new().with_schema(bad))
                    .await
                    .unwrap_err();
            assert!(err.to_string().contains("schema"), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn dead_server_error_hides_the_password() {
        // Port 1 on localhost: nothing listens there.
        for url in [
            "postgres://user:s3cret-pw@127.0.0.1:1/db?connect_timeout=2",
            "postgres://user@127.0.0.1:1/db?connect_timeout=2&password=s3cret-pw",
        ] {
            let err = PostgresStore::connect_with(
                url,
                PostgresOptions::new().with_acquire_timeout(std::time::Duration::from_secs(3)),
            )
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
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let url = server_url();
        let store = connect(PostgresOptions::new().with_schema(unique_schema())).await;
        let debug = format!("{store:?}");
        assert!(debug.contains("PostgresStore"), "{debug}");
        if let Some(pw) = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .and_then(|(u, _)| u.split_once(':'))
        {
            assert!(!debug.contains(pw.1), "password in Debug: {debug}");
        }
        let err = PostgresStore::connect_with(
            "postgres://u:hunter2@127.0.0.1:notaport/db",
            PostgresOptions::new(),
        )
        .await
        .unwrap_err();
        let msg = format!("{err} / {err:?}");
        assert!(
            !msg.contains("hunter2"),
            "password in an invalid-URL error: {msg}"
        );
    }
}
