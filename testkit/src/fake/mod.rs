//! A fake Nango server for tests and local development.
//!
//! [`FakeNango`] is an in-process HTTP server (axum, `127.0.0.1:0` by default) that
//! answers `GET /records` the way Nango's server does, checked against a transcript of
//! Nango's real records store (`tests/transcript_replay.rs` replays it step by step).
//! Tests script upstream changes through the Rust API ([`FakeNango::save`],
//! [`FakeNango::delete`], [`FakeNango::prune_until`], [`FakeNango::hard_reset`], ...),
//! inject faults ([`FakeNango::inject`]) and read back what the fake holds
//! ([`FakeNango::records`], [`FakeNango::live_payloads`]) as the oracle of convergence.
//!
//! ```no_run
//! use nango_sync_testkit::{FakeConfig, FakeNango};
//! use nango_sync::{NangoClient, RecordsQuery, StreamKey};
//!
//! # async fn example() -> nango_sync::Result<()> {
//! let fake = FakeNango::start(FakeConfig::default()).await?;
//! let stream = StreamKey::new("github", "acme-prod", "Ticket");
//! fake.save(&stream, vec![serde_json::json!({"id": "tk-1", "title": "Café"})]);
//! let client = NangoClient::builder().host(fake.url()).secret_key(fake.secret_key()).build()?;
//! let page = client.list_records(&RecordsQuery::new(&stream).limit(100)).await?;
//! assert_eq!(page.records.len(), 1);
//! # Ok(()) }
//! ```
//!
//! # What is faithful
//!
//! - **Auth** (checked first): no `Authorization` header → 401 `missing_auth_header`; a
//!   header that is not `Bearer <key>` → 401 `malformed_auth_header`; a key that is not a
//!   UUID v4 → 401 `invalid_secret_key_format`; another UUID v4 → 401 `unknown_account`.
//!   Bodies are Nango's: `{"error":{"message","code","payload":{}}}`.
//! - **Query validation** like Nango's strict zod schema, with zod 4 issue codes,
//!   messages and paths: unknown keys (`modifiedAfter`) → `unrecognized_keys`; `model`
//!   required, `^[A-Z][a-zA-Z0-9_-]+$`; `variant` `^[a-zA-Z0-9_-]+$`; `cursor` 1 to 1000
//!   characters; `limit` coerced with JavaScript's `Number()` and checked to 1..=10000;
//!   `modified_after` (and the legacy `delta`) an ISO datetime ending in `Z`, at most
//!   365 days old; `filter` a comma list of `added|updated|deleted`; `ids` repeated, at
//!   most 100. Then the `Connection-Id` / `Provider-Config-Key` headers
//!   (`invalid_headers`), then the connection (`unknown_connection`, 400).
//! - A `Content-Type` that is not JSON on `/records` → 415 `invalid_content_type`.
//! - **Records**: per stream `(integration, connection, model, variant)`, ordered by
//!   `(last_modified_at, internal uuid)` in a sorted log searched by bisection, so a page
//!   costs O(log n + page) even with millions of records. The internal uuid is Nango's:
//!   `uuid5(uuid5(NIL, "<internal connection id><model>"), "<internal connection id><model><id>")`
//!   (the model is `Model::variant` for a variant), with internal connection ids handed out
//!   in registration order from [`FakeConfig::first_internal_connection_id`].
//! - **Cursors**: padded base64 of `"<last_modified_at as to_json>||<uuid>"`, rendered with
//!   the current UTC offset; decoded back to a position (any offset), records strictly
//!   after it are returned. An undecodable or old-format cursor → 500 `server_error`
//!   `Failed to fetch records`. A cursor of records that vanished (hard reset) still works.
//! - **Pages**: `{"next_cursor":..,"records":[..]}`, `application/json; charset=utf-8`;
//!   each record is the saved payload (key order kept, `id` always a string in its
//!   original place; only `id` when pruned) followed by `_nango_metadata`. Nango's quirks
//!   are reproduced: `limit=1.5` fetches `floor(limit + 1)` rows and never reports more
//!   (so 2 records and `next_cursor: null`); `modified_after` is compared at millisecond
//!   precision and inclusive; a filter list combining `deleted` with another value never
//!   returns deleted records (`updated,deleted` = `updated`).
//! - **Timestamps** in PostgreSQL `to_json` form with a UTC offset changeable at run time
//!   ([`FakeNango::set_utc_offset`]). One timestamp per mutation batch, strictly
//!   increasing across batches.
//! - **Mutations** follow Nango's upsert: identical payload → unchanged (nothing moves;
//!   a pruned payload comes back); changed → `UPDATED`; saved after a delete → `ADDED`
//!   with a new `first_seen_at`; delete → `DELETED`, moving forward (again on a second
//!   delete, which is not reported as deleted); an `{id}` delete keeps only `{id}`
//!   (`deleted_at` in whole milliseconds slightly before a microsecond
//!   `last_modified_at`); a delete with the unchanged payload has
//!   `last_modified_at == deleted_at` in whole milliseconds; deleting a never-seen id
//!   creates a `DELETED` `{id}` record that the effect does not list. Prune empties the
//!   payload and sets `pruned_at` without moving the record. A hard reset removes a
//!   stream's records without any event.
//! - `PATCH /records/prune` (`{model, variant?, until_cursor, limit?}` → `{count, has_more}`).
//! - `GET /sync/status` of the syncs a test defines ([`FakeNango::define_sync`]), with
//!   `recordCount` as Nango computes it (live records, pruned included; a variant
//!   reports the base variant's count): see the `sync_status` module's source.
//! - An optional response byte budget ([`FakeNango::set_max_response_bytes`]): records
//!   stop once the body would exceed it (at least one record per page) and `next_cursor`
//!   is set, as Nango's `RECORDS_MAX_RESPONSE_SIZE_BYTES` does.
//!
//! # What is simplified
//!
//! - One account, one environment, one secret key; scopes are not checked (no 403). A
//!   configured key that is not a UUID v4 is accepted when it matches exactly (handy for
//!   `dev-server`), where Nango would refuse it.
//! - `Authorization: Basic ...` is answered `malformed_auth_header` (Nango would say
//!   `invalid_secret_key_format`: it takes the text after `Bearer `).
//! - No rate limiting and no `X-RateLimit-*` headers (inject [`Fault::RateLimited`]).
//! - Payloads are compared as compact JSON text (Nango compares an MD5 of
//!   `JSON.stringify` of the record as sent, so `1005` vs `"1005"` as an id differ there).
//! - No read replicas: every write is visible at once, in order. Late commits are
//!   scripted with [`FakeNango::save_late`].
//! - Unknown paths answer 404 JSON (like the transcript's shim); set
//!   [`FakeConfig::unknown_path_html`] to answer 200 HTML like hosted Nango's dashboard.
//! - Webhooks are sent only when configured ([`FakeNango::set_webhooks`], see
//!   [`WebhookSettings`]): one sync webhook per scripted change, not per sync run.
//!
//! # Control API
//!
//! The same server answers a small control API for developers (`nango-sync dev-server`),
//! with the same `Authorization: Bearer <key>` check as the records API. Bodies are JSON;
//! every stream is named by `integration`, `connection`, `model` and an optional `variant`.
//!
//! | request | body (besides the stream) | answer |
//! |---|---|---|
//! | `POST /_fake/records` | `records: [{id, ...}]` | save: `{added, updated, deleted, unchanged}` id lists |
//! | `POST /_fake/delete` | `ids: [..]` (`{id}` payloads) or `records: [..]` (full payloads) | the effect |
//! | `POST /_fake/prune` | `ids: [..]` or `until_cursor` | `{"pruned": n}` |
//! | `POST /_fake/reset` | nothing | hard reset: `{"removed": n}` |
//! | `POST /_fake/generate` | `count`, optional `batch_size` (default 1000) and `id_order` (`"sequential"`, the default, or `"scattered"`: [`IdOrder`]) | `{"added": n, "updated": n, "deleted": n, "unchanged": n}` |
//! | `POST /_fake/regenerate` | `count`, `revision` (1 or more), optional `batch_size` and `id_order` (the one they were generated with): generated records `1..=count` saved again with that revision's payloads (a bulk update, [`FakeNango::regenerate`]) | like `generate` |
//! | `POST /_fake/connections` | `integration`, `connection` only | `{"internal_connection_id": n}` |
//! | `GET /_fake/streams` | – | `{"streams": [{integration, connection, model, variant, records, live}]}` |
//! | `POST /_fake/offset` | `{"minutes": -300}` only | `{"utc_offset_minutes": -300}` |
//! | `POST /_fake/fault` | one of `status`, `rate_limited` (Retry-After seconds), `html: true`, `slow_ms`, `short_page`, `truncated_json: true`, `close_before_body: true`, `close_mid_body: true`, `raw_record` (text of one more record); optional `times` | `{"queued": n}` |
//! | `POST /_fake/webhooks` | `{"url", "signing_key", "drop"?, "retry_delays_ms"?}` only (`"url": null` stops) | `{"webhooks": bool, "drop": bool}` |
//!
//! A bad body is answered 400 `{"error":{"code":"invalid_body","message":...}}`.
//!
//! ```text
//! curl -s -X POST "$NANGO_HOST/_fake/records" -H "Authorization: Bearer $NANGO_SECRET_KEY" \
//!      -H 'Content-Type: application/json' \
//!      -d '{"integration":"github","connection":"acme-prod","model":"Ticket",
//!           "records":[{"id":"tk-1","title":"Café"}]}'
//! curl -s "$NANGO_HOST/records?model=Ticket" -H "Authorization: Bearer $NANGO_SECRET_KEY" \
//!      -H 'Connection-Id: acme-prod' -H 'Provider-Config-Key: github'
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nango_sync::SecretKey;
use nango_sync::record::{Metadata, StreamKey};
use nango_sync::time::Timestamp;

mod generate;
mod http;
mod json;
mod late;
mod query;
mod rate_limit;
mod state;
mod sync_status;
mod webhooks;
pub mod writeback;

pub use generate::IdOrder;
pub use webhooks::{WebhookDelivery, WebhookSettings, canonical_json};
pub use writeback::{ActionExecution, ActionFailure, ActionScript, SyncCommand, SyncSchedule};

use state::{Clock, State};

/// How to start a [`FakeNango`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Where to listen (default `127.0.0.1:0`, a free port).
    pub listen: SocketAddr,
    /// The environment secret key; `None`: a UUID v4 derived from [`FakeConfig::seed`].
    pub secret_key: Option<SecretKey>,
    /// Seed of everything random (generated records, the derived secret key).
    pub seed: u64,
    /// The UTC offset timestamps are rendered with, in minutes east of UTC (`-300` is
    /// `-05:00`).
    pub utc_offset_minutes: i32,
    /// A response byte budget that makes pages short (`None`: off).
    pub max_response_bytes: Option<usize>,
    /// The internal id of the first connection registered (Nango's `_nango_connections.id`;
    /// the transcript's are 9101 and 9102). Part of every internal record uuid.
    pub first_internal_connection_id: u64,
    /// Answer unknown paths with 200 and an HTML page (hosted Nango's dashboard) instead
    /// of 404 JSON.
    pub unknown_path_html: bool,
    /// Start a manual clock at this instant instead of using real time (deterministic
    /// timestamps). Note that `modified_after` is still checked against real time.
    pub clock_start: Option<Timestamp>,
    /// The step of the manual clock per batch, in microseconds (default 1,000).
    pub clock_step_micros: i64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret_key: None,
            seed: 0,
            utc_offset_minutes: 0,
            max_response_bytes: None,
            first_internal_connection_id: 9101,
            unknown_path_html: false,
            clock_start: None,
            clock_step_micros: 1_000,
        }
    }
}

/// What [`FakeNango::generate_with`] and [`FakeNango::regenerate`] generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateSpec {
    /// How many records.
    pub count: usize,
    /// Records per save (one timestamp per save).
    pub batch_size: usize,
    /// The payload revision: 0 is the first version of each record; every other value
    /// gives every record different content (same ids).
    pub revision: u64,
    /// The size of each payload in bytes: records land between this and 90 bytes more
    /// (default 700; at least about 450 whatever is asked).
    pub record_bytes: u32,
    /// How ids are formed (default [`IdOrder::Sequential`]). Give
    /// [`FakeNango::regenerate`] the order the records were generated with: a record of
    /// the other order is another record.
    pub id_order: IdOrder,
}

impl GenerateSpec {
    /// `count` records of revision 0 and the default size, `batch_size` per save.
    pub fn new(count: usize, batch_size: usize) -> Self {
        GenerateSpec {
            count,
            batch_size,
            revision: 0,
            record_bytes: generate::DEFAULT_RECORD_BYTES,
            id_order: IdOrder::Sequential,
        }
    }
}

/// What a mutation did, like the `effect` Nango's store reports: the ids added
/// (inserted or undeleted), updated, deleted and unchanged, in batch order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    /// Inserted, or saved again after a delete.
    pub added: Vec<String>,
    /// Saved with a different payload.
    pub updated: Vec<String>,
    /// Deleted (a record that was live). Deleting a deleted or never-seen id is not listed.
    pub deleted: Vec<String>,
    /// Saved with the identical payload.
    pub unchanged: Vec<String>,
}

/// A record as the fake holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRecord {
    /// The record id.
    pub id: String,
    /// The payload as served: the saved payload, or only `{id}` when pruned.
    pub payload: serde_json::Value,
    /// The metadata as served now (the cursor rendered with the current UTC offset).
    pub meta: Metadata,
    /// Nango's internal record uuid (the second half of the cursor).
    pub uuid: uuid::Uuid,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, for example `/records`.
    pub path: String,
    /// The raw (still encoded) query string, empty when there was none.
    pub raw_query: String,
    /// The status answered.
    pub status: u16,
}

/// A fault for the next `/records` request (one request per injected fault, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer this status with a Nango-like JSON error body (for example 500
    /// `server_error`, 503 `service_unavailable`).
    Status(u16),
    /// 429 `too_many_request` with `Retry-After: retry_after` (0 happens) and
    /// `X-RateLimit-*` headers.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after: u64,
    },
    /// 200 with an HTML page (a self-hosted web UI at a wrong URL).
    Html,
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Answer normally but cut the JSON body in half (well-framed HTTP).
    TruncatedJson,
    /// Send the headers, then drop the connection before any body byte.
    CloseBeforeBody,
    /// Send half of the body, then drop the connection.
    CloseMidBody,
    /// Answer with at most this many records (with a `next_cursor` when more follow).
    ShortPage(usize),
    /// Answer normally, with this raw text appended as one more record at the end of
    /// `records` (bad data: a record without `id`, a payload that is not an object, an
    /// unparseable timestamp, an unknown `last_action`, ...). `next_cursor` is unchanged.
    RawRecord(String),
}

/// State shared by the server task and the handle.
pub(crate) struct Shared {
    pub(crate) state: RwLock<State>,
    pub(crate) secret: SecretKey,
    pub(crate) seed: u64,
    pub(crate) offset: AtomicI32,
    pub(crate) budget: Mutex<Option<usize>>,
    pub(crate) faults: Mutex<VecDeque<Fault>>,
    pub(crate) log: Mutex<Vec<LoggedRequest>>,
    pub(crate) unknown_path_html: bool,
    pub(crate) webhooks: webhooks::Webhooks,
    /// The sync states tests set for `GET /sync/status` (`sync_status.rs`).
    pub(crate) sync_states: Mutex<sync_status::SyncStates>,
    pub(crate) writeback: writeback::Writeback,
    /// The request limit per account (`rate_limit.rs`).
    pub(crate) rate: Mutex<rate_limit::RateLimiter>,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn offset(&self) -> i32 {
        self.offset.load(Ordering::Relaxed)
    }

    pub(crate) fn save_normalized(
        &self,
        stream: &StreamKey,
        records: Vec<json::Normalized>,
    ) -> Effect {
        let effect = {
            let mut st = self.write();
            let (s, clock) = st.stream_and_clock(stream);
            s.save(records, clock)
        };
        self.webhooks.after_change(stream, &effect);
        effect
    }

    pub(crate) fn delete_normalized(
        &self,
        stream: &StreamKey,
        records: Vec<json::Normalized>,
    ) -> Effect {
        let effect = {
            let mut st = self.write();
            let (s, clock) = st.stream_and_clock(stream);
            s.delete(records, clock)
        };
        self.webhooks.after_change(stream, &effect);
        effect
    }

    pub(crate) fn prune_until(
        &self,
        stream: &StreamKey,
        until_cursor: &str,
    ) -> nango_sync::Result<u64> {
        let pos = state::decode_cursor(until_cursor)
            .ok_or_else(|| invalid("cursor", "not a cursor of Nango's current format"))?;
        let mut st = self.write();
        let (s, clock) = st.stream_and_clock(stream);
        Ok(s.prune(Some(pos), None, clock))
    }

    pub(crate) fn prune_ids(&self, stream: &StreamKey, ids: &[&str]) -> u64 {
        let mut st = self.write();
        let (s, clock) = st.stream_and_clock(stream);
        s.prune(None, Some(ids), clock)
    }

    pub(crate) fn hard_reset(&self, stream: &StreamKey) -> u64 {
        self.write()
            .streams
            .get_mut(stream)
            .map(|s| s.hard_reset())
            .unwrap_or(0)
    }

    pub(crate) fn generate(&self, stream: &StreamKey, count: usize, batch_size: usize) -> Effect {
        self.generate_with(stream, GenerateSpec::new(count, batch_size), false)
    }

    /// Generate new records, or (`again`) save a new revision of records already generated.
    pub(crate) fn generate_with(
        &self,
        stream: &StreamKey,
        spec: GenerateSpec,
        again: bool,
    ) -> Effect {
        let GenerateSpec {
            count,
            batch_size,
            revision,
            record_bytes,
            id_order,
        } = spec;
        let salt = generate::fnv1a(&[
            &stream.integration,
            &stream.connection,
            &stream.model,
            &stream.variant,
        ]);
        let batch_size = batch_size.max(1);
        let kind = generate::GenKind {
            mix: generate::generated_mix(self.seed, salt, revision),
            bytes: record_bytes,
            ids: id_order,
        };
        // What happened to each record, and the first number of each batch; the id lists
        // are made at the end, in one go (no id `String` per record while saving).
        let mut outcomes = Vec::with_capacity(count);
        let mut batches = Vec::new();
        let mut done = 0usize;
        while done < count {
            let n = batch_size.min(count - done);
            let seen = outcomes.len();
            {
                let mut st = self.write();
                let (s, clock) = st.stream_and_clock(stream);
                let first = if again {
                    1 + done as u64
                } else {
                    let first = s.next_generated;
                    s.next_generated += n as u64;
                    first
                };
                batches.push((first, n));
                s.save_generated(first, n as u64, kind, clock, &mut outcomes);
            }
            let batch = &outcomes[seen..];
            let counted = |o| batch.iter().filter(|x| **x == o).count();
            self.webhooks.after_change_counts(
                stream,
                counted(state::Outcome::Added),
                counted(state::Outcome::Updated),
                0,
            );
            done += n;
        }
        let counted = |o| outcomes.iter().filter(|x| **x == o).count();
        let mut effect = Effect {
            added: Vec::with_capacity(counted(state::Outcome::Added)),
            updated: Vec::with_capacity(counted(state::Outcome::Updated)),
            deleted: Vec::new(),
            unchanged: Vec::with_capacity(counted(state::Outcome::Unchanged)),
        };
        let numbers = batches
            .iter()
            .flat_map(|(first, n)| *first..*first + *n as u64);
        for (k, o) in numbers.zip(&outcomes) {
            let list = match o {
                state::Outcome::Added => &mut effect.added,
                state::Outcome::Updated => &mut effect.updated,
                state::Outcome::Unchanged => &mut effect.unchanged,
            };
            list.push(generate::generated_id(k, id_order));
        }
        effect
    }

    pub(crate) fn streams(&self) -> Vec<(StreamKey, usize, usize)> {
        self.read()
            .streams
            .iter()
            .map(|(k, s)| (k.clone(), s.len(), s.live_count()))
            .collect()
    }
}

/// The position a cursor of the fake (or of Nango) names: `(last_modified_at, internal
/// uuid)`, the order of [`FakeNango::records`] (a record's own position is
/// `(meta.last_modified_at, uuid)`). `None` when `cursor` is not one. Only tests decode
/// cursors; the engine treats them as opaque.
pub fn decode_cursor(cursor: &str) -> Option<(Timestamp, uuid::Uuid)> {
    state::decode_cursor(cursor)
}

/// A fake Nango server running in this process. Dropping it stops the server.
pub struct FakeNango {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeNango {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNango")
            .field("addr", &self.addr)
            .field("secret_key", &self.shared.secret)
            .finish()
    }
}

/// An [`Error::Invalid`](nango_sync::Error::Invalid).
fn invalid(what: &'static str, detail: impl Into<String>) -> nango_sync::Error {
    nango_sync::Error::Invalid {
        what,
        detail: detail.into(),
    }
}

/// A UUID v4 made from the seed.
fn secret_from_seed(seed: u64) -> SecretKey {
    let mut r = generate::SplitMix64::new(seed ^ 0x5EC2_E7C0_FFEE_0001);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    SecretKey::new(
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string(),
    )
}

impl FakeNango {
    /// Bind and start serving (on the current tokio runtime).
    pub async fn start(config: FakeConfig) -> nango_sync::Result<FakeNango> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| invalid("listen address", format!("{}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| invalid("listen address", format!("{}: {e}", config.listen)))?;
        let secret = config
            .secret_key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| secret_from_seed(config.seed));
        let shared = Arc::new(Shared {
            state: RwLock::new(State::new(
                config.first_internal_connection_id,
                Clock::new(config.clock_start, config.clock_step_micros),
            )),
            secret,
            seed: config.seed,
            offset: AtomicI32::new(config.utc_offset_minutes),
            budget: Mutex::new(config.max_response_bytes),
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            unknown_path_html: config.unknown_path_html,
            webhooks: webhooks::Webhooks::default(),
            sync_states: Mutex::default(),
            writeback: writeback::Writeback::default(),
            rate: Mutex::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeNango {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The secret key requests must carry.
    pub fn secret_key(&self) -> SecretKey {
        self.shared.secret.clone()
    }

    /// A client builder for this fake: its URL, its secret key and the short waits of
    /// [`RetryConfig::fast`](nango_sync::RetryConfig::fast).
    pub fn client_builder(&self) -> nango_sync::NangoClientBuilder {
        nango_sync::NangoClient::builder()
            .host(self.url())
            .secret_key(self.secret_key())
            .retry(nango_sync::RetryConfig::fast())
    }

    /// Register a connection (idempotent). [`FakeNango::save`] and the other mutations
    /// register their stream's connection too.
    pub fn add_connection(&self, integration: &str, connection: &str) {
        self.shared.write().add_connection(integration, connection);
    }

    /// Save records in one batch (one `last_modified_at`): insert, update, undelete, or
    /// nothing for an identical payload.
    ///
    /// # Panics
    /// When a record is not an object with a non-empty `id` (a bug in the test).
    pub fn save(&self, stream: &StreamKey, records: Vec<serde_json::Value>) -> Effect {
        self.shared.save_normalized(stream, normalize_all(&records))
    }

    /// Delete records in one batch, passing only `{id}` (the payload becomes `{id}`).
    pub fn delete(&self, stream: &StreamKey, ids: &[&str]) -> Effect {
        let records = ids
            .iter()
            .map(|id| json::Normalized {
                id: id.to_string(),
                text: format!("{{\"id\":{}}}", json::str_lit(id)),
            })
            .collect();
        self.shared.delete_normalized(stream, records)
    }

    /// Delete records in one batch, passing full payloads (kept as the payload).
    ///
    /// # Panics
    /// When a record is not an object with a non-empty `id`.
    pub fn delete_with_payload(
        &self,
        stream: &StreamKey,
        records: Vec<serde_json::Value>,
    ) -> Effect {
        self.shared
            .delete_normalized(stream, normalize_all(&records))
    }

    /// Prune every record up to and including the position of `until_cursor` (Nango's
    /// `PATCH /records/prune`): payload emptied to `{id}`, `pruned_at` set, nothing else
    /// changes. Returns how many records were pruned (already pruned ones are skipped).
    pub fn prune_until(&self, stream: &StreamKey, until_cursor: &str) -> nango_sync::Result<u64> {
        self.shared.prune_until(stream, until_cursor)
    }

    /// Prune these records. Returns how many were pruned.
    pub fn prune(&self, stream: &StreamKey, ids: &[&str]) -> u64 {
        self.shared.prune_ids(stream, ids)
    }

    /// Remove every record of the stream without any event (an `emptyCache` reset, a
    /// deleted connection). Returns how many were removed.
    pub fn hard_reset(&self, stream: &StreamKey) -> u64 {
        self.shared.hard_reset(stream)
    }

    /// Add `count` realistic records (`rec-0000001`, `rec-0000002`, ... continuing the
    /// stream's numbering), `batch_size` per save (one timestamp per batch). Payloads
    /// depend only on the seed, the stream and the number.
    pub fn generate(&self, stream: &StreamKey, count: usize, batch_size: usize) -> Effect {
        self.shared.generate(stream, count, batch_size)
    }

    /// Like [`FakeNango::generate`], with a revision and a record size: add
    /// `spec.count` new records continuing the stream's numbering. Ids and payloads are
    /// kept as the numbers that determine them and rendered when served, so even millions
    /// of generated records take little memory: about 52 bytes each (60 after every
    /// record changed once), for the record, its place in the stream order and its id.
    /// The returned [`Effect`] lists every id, which takes more while it lives.
    pub fn generate_with(&self, stream: &StreamKey, spec: GenerateSpec) -> Effect {
        self.shared.generate_with(stream, spec, false)
    }

    /// Save generated records `1..=spec.count` again with the payloads of
    /// `spec.revision`: with a revision never used before, every one of them changes
    /// (`UPDATED`, a new position at the end of the stream), as a bulk update upstream.
    pub fn regenerate(&self, stream: &StreamKey, spec: GenerateSpec) -> Effect {
        self.shared.generate_with(stream, spec, true)
    }

    /// Render timestamps (and the timestamps inside new cursors) with this UTC offset, in
    /// minutes east of UTC.
    pub fn set_utc_offset(&self, minutes: i32) {
        self.shared.offset.store(minutes, Ordering::Relaxed);
    }

    /// Set or remove the response byte budget.
    pub fn set_max_response_bytes(&self, budget: Option<usize>) {
        *self.shared.budget.lock().unwrap_or_else(|e| e.into_inner()) = budget;
    }

    /// Limit `/records` requests to `per_minute` per 60-second window, as Nango limits an
    /// account (Free 200, Starter 1,000, Growth 2,000): every answer carries
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`, and requests
    /// beyond the limit are answered 429 with `Retry-After` (whole seconds, can be 0).
    /// `None` (the default) turns it off: no limit and no headers.
    pub fn set_rate_limit(&self, per_minute: Option<u32>) {
        self.shared
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_limit(per_minute);
    }

    /// How many `/records` requests the rate limit refused with 429 so far.
    pub fn rate_limited_requests(&self) -> u64 {
        self.shared
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rejected()
    }

    /// Every record of the stream, deleted ones included, in stream order.
    pub fn records(&self, stream: &StreamKey) -> Vec<FakeRecord> {
        let offset = self.shared.offset();
        let st = self.shared.read();
        st.streams
            .get(stream)
            .map(|s| s.ordered().map(|r| r.to_fake_record(offset)).collect())
            .unwrap_or_default()
    }

    /// The live (not deleted) records' last saved payloads by id. A pruned record gives
    /// the payload it had before the prune (what a store that read it holds).
    pub fn live_payloads(&self, stream: &StreamKey) -> BTreeMap<String, serde_json::Value> {
        let st = self.shared.read();
        st.streams
            .get(stream)
            .map(|s| {
                s.records()
                    .filter(|r| !r.is_deleted())
                    .map(|r| {
                        (
                            r.id().into_owned(),
                            serde_json::from_str(&r.saved_text())
                                .unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every stream and its number of records (deleted ones included).
    pub fn streams(&self) -> Vec<(StreamKey, usize)> {
        self.shared
            .streams()
            .into_iter()
            .map(|(k, n, _)| (k, n))
            .collect()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests were answered so far.
    pub fn request_count(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Drop every queued fault that no request consumed yet.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Queue a fault for the next `/records` request; each queued fault applies to one
    /// request, in order.
    pub fn inject(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fault);
    }

    /// Stop serving and wait for the server task (at most a few seconds).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for FakeNango {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn normalize_all(records: &[serde_json::Value]) -> Vec<json::Normalized> {
    records
        .iter()
        .map(|v| {
            json::normalize_value(v).unwrap_or_else(|e| panic!("FakeNango: invalid record: {e}"))
        })
        .collect()
}
