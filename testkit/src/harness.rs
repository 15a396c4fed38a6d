//! A fake Nango, a store and an engine wired together for one test, and the oracles
//! that check a store against the fake.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use nango_sync::StreamKey;
//! use nango_sync_testkit::{Fault, Harness, TestStore};
//!
//! # async fn example() {
//! let h = Harness::builder()
//!     .page_size(100)
//!     .timeout(Duration::from_secs(30))
//!     .start(TestStore::memory())
//!     .await;
//! let stream = StreamKey::new("github", "acme", "Ticket");
//! h.fake.generate(&stream, 1_000, 250);
//! h.fake.inject(Fault::Status(503));
//! h.sync(&stream).await.unwrap();
//! h.assert_converged(&stream).await;
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use nango_sync::engine::EngineConfig;
use nango_sync::sink::fault::FaultInjector;
use nango_sync::sink::{DynRecordSink, SharedSink, read_all};
use nango_sync::{Engine, NangoClient, RetryConfig, RunReport, StreamKey, SyncOptions, Timestamp};
use serde_json::Value;

use crate::fake::{FakeConfig, FakeNango, decode_cursor};
use crate::stores::TestStore;

/// A [`FakeNango`], a store and an [`Engine`] syncing from the one into the other.
///
/// Everything is public: tests script the fake, arm the store's faults, build engines
/// of their own from [`Harness::client`] and [`Harness::sink`].
#[derive(Debug)]
pub struct Harness {
    /// The fake Nango (shared, so tasks of the test can hold it).
    pub fake: Arc<FakeNango>,
    /// The store.
    pub sink: SharedSink,
    /// Arms the store's fault points.
    pub faults: Arc<FaultInjector>,
    /// A client of the fake, with the builder's retry policy and timeout.
    pub client: NangoClient,
    /// An engine over [`Harness::client`] and [`Harness::sink`], with the builder's
    /// engine configuration.
    pub engine: Engine,
    /// Holds the store's directory; declared last, so it goes after the store.
    store: TestStore,
}

/// How to build a [`Harness`]: the fake's configuration, the client's retry policy
/// ([`RetryConfig::fast`] by default) and timeout, the engine's configuration.
#[derive(Debug, Clone)]
pub struct HarnessBuilder {
    fake: FakeConfig,
    retry: RetryConfig,
    timeout: Option<Duration>,
    engine: EngineConfig,
}

impl Default for HarnessBuilder {
    fn default() -> Self {
        HarnessBuilder {
            fake: FakeConfig::default(),
            retry: RetryConfig::fast(),
            timeout: None,
            engine: EngineConfig::default(),
        }
    }
}

impl HarnessBuilder {
    /// Start the fake with `config` (default: [`FakeConfig::default`]).
    pub fn fake_config(mut self, config: FakeConfig) -> Self {
        self.fake = config;
        self
    }

    /// The client's retry policy (default: [`RetryConfig::fast`]).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The client's request timeout (default: the client's own).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The engine's configuration (default: [`EngineConfig::default`]).
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// The engine's page size.
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.engine.page_size = page_size;
        self
    }

    /// Start the fake and build the engine over `store`.
    ///
    /// # Panics
    /// When the fake cannot start or the client cannot be built.
    pub async fn start(self, store: TestStore) -> Harness {
        let fake = FakeNango::start(self.fake)
            .await
            .unwrap_or_else(|e| panic!("starting the fake Nango: {e}"));
        let mut client = fake.client_builder().retry(self.retry);
        if let Some(timeout) = self.timeout {
            client = client.timeout(timeout);
        }
        let client = client
            .build()
            .unwrap_or_else(|e| panic!("building a client of the fake: {e}"));
        let sink = store.sink.clone();
        let engine = Engine::with_config(client.clone(), sink.clone(), self.engine);
        Harness {
            fake: Arc::new(fake),
            faults: store.faults.clone(),
            sink,
            client,
            engine,
            store,
        }
    }
}

impl Harness {
    /// A builder with the defaults: [`FakeConfig::default`], [`RetryConfig::fast`],
    /// [`EngineConfig::default`].
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }

    /// A harness with the defaults over `store`.
    pub async fn start(store: TestStore) -> Harness {
        HarnessBuilder::default().start(store).await
    }

    /// The store, for its URL or path.
    pub fn store(&self) -> &TestStore {
        &self.store
    }

    /// Run the engine on `stream` with the default options.
    pub async fn sync(&self, stream: &StreamKey) -> nango_sync::Result<RunReport> {
        self.engine.sync(stream, &SyncOptions::default()).await
    }

    /// An engine over the same client and store with another configuration.
    pub fn engine_with(&self, config: EngineConfig) -> Engine {
        Engine::with_config(self.client.clone(), self.sink.clone(), config)
    }

    /// The store's live records of `stream` as `id -> payload`.
    pub async fn local_live(&self, stream: &StreamKey) -> BTreeMap<String, Value> {
        local_live(&*self.sink, stream).await
    }

    /// See [`assert_converged`].
    pub async fn assert_converged(&self, stream: &StreamKey) {
        assert_converged(&self.fake, &*self.sink, stream).await;
    }

    /// See [`assert_cursor_covered`].
    pub async fn assert_cursor_covered(&self, stream: &StreamKey) {
        assert_cursor_covered(&self.fake, &*self.sink, stream).await;
    }
}

/// The live (not deleted) records of `stream` in `sink` as `id -> payload`.
///
/// # Panics
/// When the store cannot be read.
pub async fn local_live(sink: &dyn DynRecordSink, stream: &StreamKey) -> BTreeMap<String, Value> {
    read_all(sink, stream, false)
        .await
        .unwrap_or_else(|e| panic!("{}: reading {stream} failed: {e}", sink.backend()))
        .into_iter()
        .map(|r| (r.id.clone(), r.payload.to_value()))
        .collect()
}

/// The convergence oracle: the live records of `stream` in `sink` are exactly the
/// fake's live records, with the fake's last saved payloads (for a pruned record, the
/// payload it had before the prune, which a store that read it keeps).
///
/// # Panics
/// When they differ, naming the ids that differ.
pub async fn assert_converged(fake: &FakeNango, sink: &dyn DynRecordSink, stream: &StreamKey) {
    let local = local_live(sink, stream).await;
    let upstream = fake.live_payloads(stream);
    if local == upstream {
        return;
    }
    let missing: Vec<&String> = upstream
        .keys()
        .filter(|id| !local.contains_key(*id))
        .collect();
    let extra: Vec<&String> = local
        .keys()
        .filter(|id| !upstream.contains_key(*id))
        .collect();
    let different: Vec<&String> = local
        .iter()
        .filter(|(id, v)| upstream.get(*id).is_some_and(|u| u != *v))
        .map(|(id, _)| id)
        .collect();
    panic!(
        "{}: the live records of {stream} differ from the fake's ({} local, {} upstream): \
         missing {missing:?}, not live upstream {extra:?}, other payload {different:?}",
        sink.backend(),
        local.len(),
        upstream.len()
    );
}

/// Atomic progress: every record the fake holds at or before the stream's stored cursor
/// is stored, with its current version (a record that changed after the commit moved
/// past the cursor). Nothing to check before the first commit.
///
/// # Panics
/// When a record before the cursor is missing or stored at another version, or when the
/// stored cursor is not a cursor of the fake.
pub async fn assert_cursor_covered(fake: &FakeNango, sink: &dyn DynRecordSink, stream: &StreamKey) {
    let b = sink.backend();
    let state = sink
        .stream_state(stream)
        .await
        .unwrap_or_else(|e| panic!("{b}: reading the state of {stream} failed: {e}"));
    let Some(cursor) = state.cursor else { return };
    let at = decode_cursor(cursor.as_str())
        .unwrap_or_else(|| panic!("{b}: the stored cursor {cursor:?} is not a cursor of the fake"));
    // One read of the whole stream (a `get` per record is much slower on a large one).
    let stored: HashMap<String, Timestamp> = read_all(sink, stream, true)
        .await
        .unwrap_or_else(|e| panic!("{b}: reading {stream} failed: {e}"))
        .into_iter()
        .map(|r| (r.id, r.meta.last_modified_at))
        .collect();
    for r in fake.records(stream) {
        if (r.meta.last_modified_at, r.uuid) > at {
            continue;
        }
        let version = stored
            .get(&r.id)
            .unwrap_or_else(|| panic!("{b}: {} is before the cursor but not stored", r.id));
        assert_eq!(
            *version, r.meta.last_modified_at,
            "{b}: {} is before the cursor but stored at another version",
            r.id
        );
    }
}
