//! Stores for tests: one store per test ([`TestStore`]), the factories the conformance
//! suite opens the library's stores with, and the PostgreSQL server of the tests.
//!
//! Every store made here is given a [`FaultInjector`], so a test can fail a commit
//! between its steps. Stores on disk live in a temporary directory that is removed with
//! the [`TestStore`] (or the factory); PostgreSQL stores live in a schema of their own
//! on the server named by `NANGO_SYNC_TEST_POSTGRES_URL` (the server is thrown away by
//! the script that started it, so schemas are not dropped).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nango_sync::sink::fault::FaultInjector;
use nango_sync::sink::{MemoryOptions, MemoryStore, SharedSink};
#[cfg(feature = "postgres")]
use nango_sync::sink::{PostgresStore, postgres::PostgresOptions};
#[cfg(feature = "sled")]
use nango_sync::sink::{SledStore, sled::SledOptions};
#[cfg(feature = "sqlite")]
use nango_sync::sink::{SqliteStore, sqlite::SqliteOptions};
use tempfile::TempDir;

use crate::conformance::{Open, StoreFactory};

/// The environment variable naming the PostgreSQL server of the tests.
pub const POSTGRES_URL_VAR: &str = "NANGO_SYNC_TEST_POSTGRES_URL";

/// The environment variable holding a shell command that restarts that server (set by
/// `scripts/pg.sh`, for tests of a restart in the middle of a sync).
pub const POSTGRES_RESTART_VAR: &str = "NANGO_SYNC_TEST_PG_RESTART";

/// How to get a server, for the failure of a test that needs one.
const HOW_TO_START: &str = "the PostgreSQL tests need a server. Run the tests with \
    scripts/test.sh (or scripts/pg.sh cargo test ...), which starts a throwaway \
    PostgreSQL and sets it, or set NANGO_SYNC_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/DB \
    to a server of your own (each test works in a schema of its own)";

/// How to get a server a test may restart.
const HOW_TO_RESTART: &str = "this test restarts the PostgreSQL server of the tests. \
    Run it with scripts/test.sh (or scripts/pg.sh cargo test ...), which starts a \
    throwaway PostgreSQL and sets both NANGO_SYNC_TEST_POSTGRES_URL and this variable \
    (a shell command that restarts that server)";

/// The URL of the PostgreSQL server of the tests, from `NANGO_SYNC_TEST_POSTGRES_URL`.
///
/// # Panics
/// When the variable is not set, with a message saying how to start a server: a test
/// that needs PostgreSQL fails rather than skips.
#[track_caller]
pub fn postgres_server_url() -> String {
    required_env(POSTGRES_URL_VAR, HOW_TO_START)
}

/// The command that restarts the server of the tests, from `NANGO_SYNC_TEST_PG_RESTART`.
///
/// # Panics
/// When the variable is not set, like [`postgres_server_url`].
#[track_caller]
pub fn postgres_restart_command() -> String {
    required_env(POSTGRES_RESTART_VAR, HOW_TO_RESTART)
}

#[track_caller]
fn required_env(name: &str, how: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{name} is not set: {how}"),
    }
}

/// A schema name no other test uses: `nst_` and a random UUID's 32 hex digits.
pub fn unique_schema() -> String {
    format!("nst_{}", uuid::Uuid::new_v4().simple())
}

/// A sink URL of a fresh schema on the server of the tests:
/// [`postgres_server_url`] with `schema=` [`unique_schema`].
///
/// # Panics
/// Like [`postgres_server_url`].
#[track_caller]
pub fn fresh_postgres_url() -> String {
    let base = postgres_server_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={}", unique_schema())
}

/// Copy the directory `from` (a sled store, its files and its `blobs/`) into `to`, file
/// by file, as it is on disk now: taken while the store is open, the copy is what a
/// crash at that moment would leave.
///
/// # Panics
/// When a file cannot be read or written.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        let is_dir = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", entry.path().display()))
            .is_dir();
        if is_dir {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// A store for one test: the shared handle, the fault injector its options were given,
/// the URL that opens it again (for `nango_sync::sink::open` or the CLI's `--sink`), and
/// the temporary directory it lives in, removed when the `TestStore` is dropped.
///
/// ```no_run
/// use nango_sync_testkit::TestStore;
///
/// # async fn example() {
/// let store = TestStore::sqlite().await;
/// assert_eq!(store.sink.backend(), "sqlite");
/// assert!(store.url().starts_with("sqlite://"));
/// # }
/// ```
pub struct TestStore {
    /// The store.
    pub sink: SharedSink,
    /// Arms the store's fault points.
    pub faults: Arc<FaultInjector>,
    url: String,
    path: Option<PathBuf>,
    /// Declared last: dropped after the store.
    _dir: Option<TempDir>,
}

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStore")
            .field("backend", &self.sink.backend())
            .field("url", &nango_sync::redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl TestStore {
    /// An in-memory store.
    pub fn memory() -> TestStore {
        let faults = FaultInjector::new();
        let store = MemoryStore::with_options(MemoryOptions::new().with_faults(faults.clone()));
        TestStore {
            sink: Arc::new(store),
            faults,
            url: "memory://".to_string(),
            path: None,
            _dir: None,
        }
    }

    /// A SQLite file `store.db` in a new temporary directory, with the default options.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite() -> TestStore {
        Self::sqlite_with(SqliteOptions::new()).await
    }

    /// A SQLite file `store.db` in a new temporary directory, with `options` (and the
    /// store's fault injector).
    ///
    /// # Panics
    /// When the store does not open.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite_with(options: SqliteOptions) -> TestStore {
        let (dir, path) = temp_path("store.db");
        let faults = FaultInjector::new();
        let store = SqliteStore::open_with(&path, options.with_faults(faults.clone()))
            .await
            .unwrap_or_else(|e| panic!("opening a SQLite store in {}: {e}", path.display()));
        TestStore {
            sink: Arc::new(store),
            faults,
            url: format!("sqlite://{}", path.display()),
            path: Some(path),
            _dir: Some(dir),
        }
    }

    /// A sled store in the directory `store.sled` of a new temporary directory, with the
    /// default options.
    #[cfg(feature = "sled")]
    pub async fn sled() -> TestStore {
        Self::sled_with(SledOptions::new()).await
    }

    /// A sled store in a new temporary directory, with `options` (and the store's
    /// fault injector).
    ///
    /// # Panics
    /// When the store does not open.
    #[cfg(feature = "sled")]
    pub async fn sled_with(options: SledOptions) -> TestStore {
        let (dir, path) = temp_path("store.sled");
        let faults = FaultInjector::new();
        let store = SledStore::open_with(&path, options.with_faults(faults.clone()))
            .await
            .unwrap_or_else(|e| panic!("opening a sled store in {}: {e}", path.display()));
        TestStore {
            sink: Arc::new(store),
            faults,
            url: format!("sled://{}", path.display()),
            path: Some(path),
            _dir: Some(dir),
        }
    }

    /// A PostgreSQL store in a fresh schema on the server of the tests, with a pool of
    /// 4 connections.
    ///
    /// # Panics
    /// When `NANGO_SYNC_TEST_POSTGRES_URL` is not set (see [`postgres_server_url`]) or
    /// the server cannot be reached.
    #[cfg(feature = "postgres")]
    pub async fn postgres() -> TestStore {
        Self::postgres_with(PostgresOptions::new().with_pool_size(4)).await
    }

    /// A PostgreSQL store in a fresh schema on the server of the tests, with `options`
    /// (their schema replaced by a fresh one, and the store's fault injector).
    ///
    /// # Panics
    /// Like [`TestStore::postgres`].
    #[cfg(feature = "postgres")]
    pub async fn postgres_with(options: PostgresOptions) -> TestStore {
        let server = postgres_server_url();
        let schema = unique_schema();
        let faults = FaultInjector::new();
        let options = options.with_schema(&schema).with_faults(faults.clone());
        let store = PostgresStore::connect_with(&server, options)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"));
        let sep = if server.contains('?') { '&' } else { '?' };
        TestStore {
            sink: Arc::new(store),
            faults,
            url: format!("{server}{sep}schema={schema}"),
            path: None,
            _dir: None,
        }
    }

    /// The sink URL that opens this store (again): `memory://` (a new, empty store),
    /// `sqlite://PATH`, `sled://DIR` or `postgres://...?schema=NAME`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file or the sled directory.
    ///
    /// # Panics
    /// For a memory or PostgreSQL store, which have no path.
    pub fn path(&self) -> &Path {
        self.path
            .as_deref()
            .unwrap_or_else(|| panic!("a {} store has no path", self.sink.backend()))
    }
}

/// A new temporary directory and the path of `name` inside it.
#[cfg(any(feature = "sqlite", feature = "sled"))]
fn temp_path(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("nango-sync-test.")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
    let path = dir.path().join(name);
    (dir, path)
}

/// Conformance factory of in-memory stores (not durable: only [`Open::Fresh`]).
pub fn memory_factory() -> impl StoreFactory<Store = MemoryStore> {
    |open: Open, faults: Arc<FaultInjector>| {
        assert_eq!(open, Open::Fresh, "the memory store is not durable");
        async move { MemoryStore::with_options(MemoryOptions::new().with_faults(faults)) }
    }
}

/// Conformance factory of SQLite stores: each fresh store a file in a temporary
/// directory of its own, kept until the factory is dropped.
#[cfg(feature = "sqlite")]
pub fn sqlite_factory() -> impl StoreFactory<Store = SqliteStore> {
    let mut dirs = Dirs::default();
    move |open: Open, faults: Arc<FaultInjector>| {
        let path = dirs.path(open, "store.db");
        let options = SqliteOptions::new().with_faults(faults);
        async move {
            SqliteStore::open_with(&path, options)
                .await
                .unwrap_or_else(|e| panic!("opening a SQLite store in {}: {e}", path.display()))
        }
    }
}

/// Conformance factory of sled stores opened with `options`: each fresh store in a
/// temporary directory of its own, kept until the factory is dropped.
#[cfg(feature = "sled")]
pub fn sled_factory(options: SledOptions) -> impl StoreFactory<Store = SledStore> {
    let mut dirs = Dirs::default();
    move |open: Open, faults: Arc<FaultInjector>| {
        let path = dirs.path(open, "store.sled");
        let options = options.clone().with_faults(faults);
        async move {
            SledStore::open_with(&path, options)
                .await
                .unwrap_or_else(|e| panic!("opening a sled store in {}: {e}", path.display()))
        }
    }
}

/// Conformance factory of PostgreSQL stores: each fresh store in a schema of its own on
/// the server of the tests ([`postgres_server_url`]), with a pool of 4 connections.
#[cfg(feature = "postgres")]
pub fn postgres_factory() -> impl StoreFactory<Store = PostgresStore> {
    let mut schema = String::new();
    move |open: Open, faults: Arc<FaultInjector>| {
        if open == Open::Fresh {
            schema = unique_schema();
        }
        assert!(!schema.is_empty(), "a fresh store first");
        let options = PostgresOptions::new()
            .with_schema(&schema)
            .with_pool_size(4)
            .with_faults(faults);
        async move {
            PostgresStore::connect_with(&postgres_server_url(), options)
                .await
                .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
        }
    }
}

/// The directories of a factory's stores: a new one for each fresh store, the last one
/// again for a reopen.
#[cfg(any(feature = "sqlite", feature = "sled"))]
#[derive(Default)]
struct Dirs(Vec<TempDir>);

#[cfg(any(feature = "sqlite", feature = "sled"))]
impl Dirs {
    fn path(&mut self, open: Open, name: &str) -> PathBuf {
        if open == Open::Fresh {
            let (dir, _) = temp_path(name);
            self.0.push(dir);
        }
        self.0
            .last()
            .expect("a fresh store first")
            .path()
            .join(name)
    }
}
