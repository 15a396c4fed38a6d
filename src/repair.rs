//! Rebuild a store that cannot be used: move it aside, then re-read every stream from
//! Nango into a new store at the same place.
//!
//! A store reported as [`Error::Damaged`] (a garbage SQLite file, a sled directory whose
//! log is corrupted, a PostgreSQL schema whose tables are gone) cannot be fixed in place.
//! Everything it holds came from Nango except two things: payloads Nango has pruned
//! since (the store kept them, Nango serves only `{id}` now), and the outbox of
//! write-back actions. [`repair`] therefore:
//!
//! 1. checks that there is a store at the URL and takes its lock (sled's, or the writer
//!    lock of a SQLite file): another process using the store is an error naming it
//!    (stop it first); a PostgreSQL store must not be in use either, which `repair`
//!    cannot check;
//! 2. reads the old store if it still opens at all, without changing it: a file store
//!    is opened from a scratch copy next to it (so not even sled's own recovery writes
//!    to the original), a PostgreSQL schema read-only. Its streams are the ones rebuilt,
//!    with those given in [`RepairOptions::streams`]; when it cannot be read, the
//!    streams must be given;
//! 3. moves the store aside, never deleting it: `PATH.damaged-<UTC time>` for a SQLite
//!    file (with its `-wal` and `-shm` files) or a sled directory, schema
//!    `<schema>_damaged_<UTC time>` in the same database for PostgreSQL;
//! 4. creates a new store at the URL and runs a full re-read of every stream;
//! 5. compares, stream by stream, the new store with the old one (when it was read):
//!    records whose payload only the old store held (Nango now serves them pruned, or
//!    deleted with only `{id}`), and live records Nango no longer has at all;
//! 6. carries the outbox items not delivered yet (pending, or running: their worker is
//!    gone, so they may run again) over to the new store as pending items, with their
//!    action, input, idempotency key, then-sync models and attempt limit; finished items
//!    stay in the store kept aside (see [`RepairReport::notes`]).
//!
//! Disk use peaks at about three times the store for file stores (the store moved
//! aside, its scratch copy, the new store); the copy is removed at the end.

use serde::Serialize;

use crate::NangoClient;
use crate::engine::{DEFAULT_PAGE_SIZE, ProgressFn};
use crate::error::{Error, Result};
use crate::record::StreamKey;
use crate::sink::SinkUrl;

/// What to repair and how.
#[derive(Clone)]
pub struct RepairOptions {
    /// Streams to rebuild besides those the old store knew. Required when the old store
    /// cannot be read.
    pub streams: Vec<StreamKey>,
    /// Records per page of the re-read (default [`DEFAULT_PAGE_SIZE`]).
    pub page_size: u32,
    /// Called after every commit of the re-read.
    pub progress: Option<ProgressFn>,
    /// At most this many ids are listed per stream and kind of loss (all are counted);
    /// default 100.
    pub max_listed_ids: usize,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            streams: Vec::new(),
            page_size: DEFAULT_PAGE_SIZE,
            progress: None,
            max_listed_ids: 100,
        }
    }
}

impl std::fmt::Debug for RepairOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairOptions")
            .field("streams", &self.streams)
            .field("page_size", &self.page_size)
            .field("max_listed_ids", &self.max_listed_ids)
            .finish_non_exhaustive()
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// The store's URL (password hidden).
    pub store: String,
    /// Where the old store is now: a path, or `schema NAME` for PostgreSQL.
    pub moved_to: String,
    /// Whether the old store could be read (its streams listed, its records compared).
    pub old_store_readable: bool,
    /// Why it could not be read.
    pub old_store_error: Option<String>,
    /// Every stream, in the order rebuilt.
    pub streams: Vec<StreamRepair>,
    /// What the rebuild cannot recover in general (write-back actions, run history).
    pub notes: Vec<String>,
}

impl RepairReport {
    /// Whether every stream was rebuilt.
    pub fn complete(&self) -> bool {
        self.streams.iter().all(|s| s.error.is_none())
    }
}

/// The rebuild of one stream.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamRepair {
    /// The stream.
    pub stream: StreamKey,
    /// Whether the old store knew it.
    pub in_old_store: bool,
    /// Whether it was given in [`RepairOptions::streams`].
    pub given: bool,
    /// Why the full re-read failed (the stream is then missing or incomplete in the new
    /// store; running `sync` later completes it).
    pub error: Option<String>,
    /// Live records in the new store.
    pub live_records: u64,
    /// Tombstones in the new store.
    pub deleted_records: u64,
    /// Live records the old store counted, when it could be read.
    pub old_live_records: Option<u64>,
    /// Tombstones the old store counted, when it could be read.
    pub old_deleted_records: Option<u64>,
    /// Records whose payload only the old store held: Nango serves them pruned, or
    /// deleted with only `{id}`, so the new store has no payload for them.
    pub payloads_lost: IdList,
    /// Live records of the old store that Nango no longer has (deleted upstream without
    /// an event since the last full re-read): the new store does not have them.
    pub only_in_old_store: IdList,
}

/// A count of records and the first of their ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IdList {
    /// How many.
    pub count: u64,
    /// The first ids (in id order), at most [`RepairOptions::max_listed_ids`].
    pub ids: Vec<String>,
}

#[cfg(any(feature = "sqlite", feature = "sled", feature = "postgres"))]
impl IdList {
    fn push(&mut self, id: &str, max: usize) {
        self.count += 1;
        if self.ids.len() < max {
            self.ids.push(id.to_string());
        }
    }
}

/// The start of the note about write-back actions, in every report.
pub const OUTBOX_NOTE: &str = "write-back outbox:";

/// Move the store at `url` aside and rebuild it by a full re-read from Nango of every
/// stream it knew (see the [module documentation](self)).
///
/// Errors before the store is moved (no store at the URL, the store in use, an
/// unreadable store and no streams given) leave everything as it was. A stream whose
/// re-read fails is reported in [`StreamRepair::error`], not as an error.
pub async fn repair(
    url: &str,
    client: NangoClient,
    options: RepairOptions,
) -> Result<RepairReport> {
    #[cfg(any(feature = "sqlite", feature = "sled", feature = "postgres"))]
    return imp::rebuild(url, client, options).await;
    #[cfg(not(any(feature = "sqlite", feature = "sled", feature = "postgres")))]
    {
        let _ = (client, options);
        Err(match SinkUrl::parse(url)? {
            SinkUrl::Memory => Error::invalid("sink URL", "memory:// keeps nothing to repair"),
            SinkUrl::Sqlite(_) => Error::FeatureDisabled {
                scheme: "sqlite".into(),
                feature: "sqlite",
            },
            SinkUrl::Sled(_) => Error::FeatureDisabled {
                scheme: "sled".into(),
                feature: "sled",
            },
            _ => Error::FeatureDisabled {
                scheme: "postgres".into(),
                feature: "postgres",
            },
        })
    }
}

/// The repair itself, for builds with a persistent store.
#[cfg(any(feature = "sqlite", feature = "sled", feature = "postgres"))]
mod imp {
    use std::collections::VecDeque;
    #[cfg(any(feature = "sqlite", feature = "sled"))]
    use std::path::Path;
    use std::path::PathBuf;

    use super::*;
    use crate::engine::{Engine, EngineConfig, SyncOptions};
    use crate::record::StoredRecord;
    use crate::sink::{self, DynRecordSink, ListQuery, SharedSink, StreamStatus};
    use crate::time::Timestamp;

    /// Enqueue the old store's undelivered outbox items in the new store; the note
    /// saying what was carried over.
    async fn carry_outbox(old: &dyn DynRecordSink, new: &dyn DynRecordSink) -> String {
        use crate::sink::outbox::{NewOutboxItem, OutboxQuery, OutboxState};
        let (mut carried, mut finished) = (0u64, 0u64);
        let mut query = OutboxQuery::first(1000);
        loop {
            let page = match old.outbox_list(&query).await {
                Ok(page) => page,
                Err(e) => {
                    return format!(
                        "{OUTBOX_NOTE} {carried} undelivered actions carried over, then the outbox of the damaged store could not be read ({e}): the rest stay in it"
                    );
                }
            };
            let full = page.len() == query.limit;
            if let Some(last) = page.last() {
                query = query.clone().after(last.id);
            }
            for item in page {
                if matches!(item.state, OutboxState::Done | OutboxState::Failed) {
                    finished += 1;
                    continue;
                }
                let mut again =
                    NewOutboxItem::new(&item.integration, &item.connection, &item.action);
                again.input = item.input;
                again.key = item.key;
                again.then_sync = item.then_sync;
                again.max_attempts = item.max_attempts;
                again.created_at = item.created_at;
                if let Err(e) = new.outbox_enqueue(again).await {
                    return format!(
                        "{OUTBOX_NOTE} {carried} undelivered actions carried over, then item {} could not be enqueued in the new store ({e}): it and the rest stay in the damaged store",
                        item.id
                    );
                }
                carried += 1;
            }
            if !full {
                break;
            }
        }
        format!(
            "{OUTBOX_NOTE} {carried} undelivered actions carried over to the new store as pending (one that was running may run again); {finished} finished items stay in the damaged store"
        )
    }

    pub(super) async fn rebuild(
        url: &str,
        client: NangoClient,
        options: RepairOptions,
    ) -> Result<RepairReport> {
        let place = Place::of(url)?;
        let stamp = stamp(Timestamp::now());
        place.ensure_exists().await?;
        let lock = place.lock()?;

        // Read the old store without changing it, if it opens at all.
        let mut scratch = Scratch::default();
        let (mut old, mut old_error) = match place.open_old(&stamp, &mut scratch).await {
            Ok(store) => (Some(store), None),
            Err(e) if place.reads_in_place() => (None, Some(e.to_string())),
            Err(e) => (None, Some(format!("a copy of it does not open: {e}"))),
        };
        let mut old_streams: Vec<StreamStatus> = Vec::new();
        if let Some(store) = &old {
            match store.streams().await {
                Ok(streams) => old_streams = streams,
                Err(e) => old_error = Some(e.to_string()),
            }
        }
        if old_error.is_some() {
            old = None;
        }
        let mut streams: Vec<(StreamKey, bool, bool)> = old_streams
            .iter()
            .map(|s| (s.stream.clone(), true, false))
            .collect();
        for given in &options.streams {
            match streams.iter_mut().find(|(s, _, _)| s == given) {
                Some(entry) => entry.2 = true,
                None => streams.push((given.clone(), false, true)),
            }
        }
        if streams.is_empty() {
            return Err(Error::invalid(
                "repair request",
                match &old_error {
                    Some(e) => format!(
                        "{} cannot be read ({e}), so the streams to rebuild must be given (integration, connection and model); nothing was changed",
                        place.describe()
                    ),
                    None => format!(
                        "{} knows no streams and none were given: nothing to rebuild; nothing was changed",
                        place.describe()
                    ),
                },
            ));
        }

        // Move it aside.
        if place.reads_in_place() {
            // A PostgreSQL handle names the schema, which is about to be renamed.
            old = None;
        }
        let moved = place.move_aside(&stamp).await?;
        drop(lock);
        if old_error.is_none() && place.reads_in_place() {
            match moved.open_moved().await {
                Ok(store) => old = Some(store),
                Err(e) => old_error = Some(e.to_string()),
            }
        }

        // Rebuild.
        let new = sink::open(url).await.map_err(|e| {
            Error::store(
                place.backend(),
                format!(
                    "create the new store (the damaged one is kept at {})",
                    moved.describe()
                ),
                false,
                e.to_string(),
            )
        })?;
        let engine = Engine::with_config(
            client,
            new.clone(),
            EngineConfig {
                page_size: options.page_size,
                ..EngineConfig::default()
            },
        );
        let sync_options = SyncOptions {
            full: true,
            modified_after: None,
            page_size: Some(options.page_size),
            progress: options.progress.clone(),
            ..SyncOptions::default()
        };
        let mut report = RepairReport {
            store: crate::redact_url(url),
            moved_to: moved.describe(),
            old_store_readable: old.is_some(),
            old_store_error: old_error.clone(),
            streams: Vec::with_capacity(streams.len()),
            notes: Vec::new(),
        };
        for (stream, in_old_store, given) in streams {
            let error = engine
                .sync(&stream, &sync_options)
                .await
                .err()
                .map(|e| e.to_string());
            let new_status = new
                .streams()
                .await?
                .into_iter()
                .find(|s| s.stream == stream);
            let old_status = old_streams.iter().find(|s| s.stream == stream);
            let mut entry = StreamRepair {
                stream: stream.clone(),
                in_old_store,
                given,
                error,
                live_records: new_status.as_ref().map_or(0, |s| s.live_records),
                deleted_records: new_status.as_ref().map_or(0, |s| s.deleted_records),
                old_live_records: old.as_ref().and(old_status).map(|s| s.live_records),
                old_deleted_records: old.as_ref().and(old_status).map(|s| s.deleted_records),
                payloads_lost: IdList::default(),
                only_in_old_store: IdList::default(),
            };
            if let Some(old) = &old
                && in_old_store
                && let Err(e) =
                    compare(&**old, &*new, &stream, options.max_listed_ids, &mut entry).await
            {
                report.notes.push(format!(
                "{stream}: the records of the damaged store could not all be read ({e}): the payloads only it held are not all listed"
            ));
            }
            report.streams.push(entry);
        }
        report.notes.push(match &old {
            Some(old) => carry_outbox(&**old, &*new).await,
            None => format!(
                "{OUTBOX_NOTE} the damaged store could not be read, so the actions queued in its outbox (if any) were not carried over; they stay in it at {}",
                moved.describe()
            ),
        });
        drop(old);
        scratch.remove();

        report.notes.push(format!(
            "the damaged store is kept at {}; delete it once you no longer need it",
            moved.describe()
        ));
        if let Some(e) = &old_error {
            report.notes.push(format!(
            "the damaged store could not be read ({e}): payloads only it held (pruned by Nango since) cannot be listed, and only the streams given were rebuilt"
        ));
        }
        report.notes.push(
            "run history, last runs and upstream errors of the damaged store are not carried over"
                .to_string(),
        );
        tracing::info!(
            store = %report.store,
            moved_to = %report.moved_to,
            streams = report.streams.len(),
            complete = report.complete(),
            "store repaired: moved aside and rebuilt from Nango"
        );
        Ok(report)
    }

    /// Walk the old and new records of `stream` in id order (every store lists in
    /// code-point order) and note what only the old store held.
    async fn compare(
        old: &dyn DynRecordSink,
        new: &dyn DynRecordSink,
        stream: &StreamKey,
        max: usize,
        entry: &mut StreamRepair,
    ) -> Result<()> {
        let mut old = Pager::new(old, stream);
        let mut new = Pager::new(new, stream);
        loop {
            let Some(o) = old.peek().await? else {
                return Ok(());
            };
            let order = match new.peek().await? {
                None => std::cmp::Ordering::Less,
                Some(n) => o.id.as_str().cmp(n.id.as_str()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let o = old.take();
                    if !o.is_deleted() {
                        entry.only_in_old_store.push(&o.id, max);
                    }
                }
                std::cmp::Ordering::Greater => {
                    new.take();
                }
                std::cmp::Ordering::Equal => {
                    let (o, n) = (old.take(), new.take());
                    if has_payload(&o) && !has_payload(&n) {
                        entry.payloads_lost.push(&o.id, max);
                    }
                }
            }
        }
    }

    /// Whether a stored payload holds more than the record's `id` (a pruned record and an
    /// `{id}`-only delete hold nothing else).
    fn has_payload(r: &StoredRecord) -> bool {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(r.payload.as_str())
            .map(|m| m.keys().any(|k| k != "id"))
            .unwrap_or(true)
    }

    /// A stream's records, tombstones included, read a page at a time.
    struct Pager<'a> {
        sink: &'a dyn DynRecordSink,
        stream: &'a StreamKey,
        buffer: VecDeque<StoredRecord>,
        query: ListQuery,
        done: bool,
    }

    impl<'a> Pager<'a> {
        fn new(sink: &'a dyn DynRecordSink, stream: &'a StreamKey) -> Self {
            Pager {
                sink,
                stream,
                buffer: VecDeque::new(),
                query: ListQuery::first(1000).with_deleted(),
                done: false,
            }
        }

        async fn peek(&mut self) -> Result<Option<&StoredRecord>> {
            if self.buffer.is_empty() && !self.done {
                let page = self.sink.list(self.stream, &self.query).await?;
                self.done = page.len() < self.query.limit;
                self.query.after_id = page.last().map(|r| r.id.clone());
                self.buffer.extend(page);
            }
            Ok(self.buffer.front())
        }

        /// The record `peek` returned.
        fn take(&mut self) -> StoredRecord {
            self.buffer.pop_front().expect("peeked first")
        }
    }

    /// `20260430T101500Z`: the UTC time, for names.
    pub(super) fn stamp(t: Timestamp) -> String {
        let iso = t.to_utc_z();
        let digits: String = iso
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .collect();
        format!("{digits}Z")
    }

    /// A scratch copy of a file store, removed at the end (also when the repair fails).
    #[derive(Default)]
    struct Scratch(Option<PathBuf>);

    impl Scratch {
        fn remove(&mut self) {
            if let Some(dir) = self.0.take()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the repair's scratch copy");
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            self.remove();
        }
    }

    /// A path next to `path` named `<name><suffix>`, with `-2`, `-3`... added while taken.
    #[cfg(any(feature = "sqlite", feature = "sled"))]
    pub(super) fn free_name(path: &Path, suffix: &str, taken: impl Fn(&Path) -> bool) -> PathBuf {
        let base = format!("{}{suffix}", path.display());
        let mut candidate = PathBuf::from(&base);
        let mut n = 2;
        while taken(&candidate) {
            candidate = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        candidate
    }

    /// Where a store lives, by backend.
    enum Place {
        #[cfg(feature = "sqlite")]
        Sqlite(PathBuf),
        #[cfg(feature = "sled")]
        Sled(PathBuf),
        #[cfg(feature = "postgres")]
        Postgres { url: String, schema: String },
    }

    /// Where the old store went.
    enum Moved {
        #[cfg(any(feature = "sqlite", feature = "sled"))]
        Path(PathBuf),
        #[cfg(feature = "postgres")]
        Schema { url: String, schema: String },
    }

    impl Moved {
        fn describe(&self) -> String {
            match self {
                #[cfg(any(feature = "sqlite", feature = "sled"))]
                Moved::Path(p) => p.display().to_string(),
                #[cfg(feature = "postgres")]
                Moved::Schema { schema, .. } => format!("schema {schema}"),
            }
        }

        /// Open the moved store for reading (PostgreSQL: read-only).
        async fn open_moved(&self) -> Result<SharedSink> {
            match self {
                #[cfg(any(feature = "sqlite", feature = "sled"))]
                Moved::Path(p) => Err(Error::invalid(
                    "repair request",
                    format!("{} is read from its copy", p.display()),
                )),
                #[cfg(feature = "postgres")]
                Moved::Schema { url, schema } => Ok(std::sync::Arc::new(
                    crate::sink::postgres::PostgresStore::connect_with(
                        url,
                        crate::sink::postgres::PostgresOptions::new()
                            .with_schema(schema.clone())
                            .with_read_only(true)
                            .with_pool_size(2),
                    )
                    .await?,
                )),
            }
        }
    }

    impl Place {
        fn of(url: &str) -> Result<Place> {
            match SinkUrl::parse(url)? {
                SinkUrl::Memory => Err(Error::invalid(
                    "sink URL",
                    "memory:// keeps nothing to repair",
                )),
                #[cfg(feature = "sqlite")]
                SinkUrl::Sqlite(path) => Ok(Place::Sqlite(path)),
                #[cfg(not(feature = "sqlite"))]
                SinkUrl::Sqlite(_) => Err(Error::FeatureDisabled {
                    scheme: "sqlite".into(),
                    feature: "sqlite",
                }),
                #[cfg(feature = "sled")]
                SinkUrl::Sled(path) => Ok(Place::Sled(path)),
                #[cfg(not(feature = "sled"))]
                SinkUrl::Sled(_) => Err(Error::FeatureDisabled {
                    scheme: "sled".into(),
                    feature: "sled",
                }),
                #[cfg(feature = "postgres")]
                SinkUrl::Postgres(url) => {
                    let (url, schema) = sink::split_schema_param(&url);
                    // The table setting applies where the store is opened to write
                    // (`sink::open`); the connections here only read and move.
                    let (url, _) = sink::split_param(&url, "fillfactor");
                    Ok(Place::Postgres {
                        url,
                        schema: schema
                            .unwrap_or_else(|| crate::sink::postgres::DEFAULT_SCHEMA.to_string()),
                    })
                }
                #[cfg(not(feature = "postgres"))]
                SinkUrl::Postgres(_) => Err(Error::FeatureDisabled {
                    scheme: "postgres".into(),
                    feature: "postgres",
                }),
            }
        }

        fn backend(&self) -> &'static str {
            match *self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(_) => "sqlite",
                #[cfg(feature = "sled")]
                Place::Sled(_) => "sled",
                #[cfg(feature = "postgres")]
                Place::Postgres { .. } => "postgres",
            }
        }

        fn describe(&self) -> String {
            match self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(p) => format!("the SQLite store {}", p.display()),
                #[cfg(feature = "sled")]
                Place::Sled(p) => format!("the sled store {}", p.display()),
                #[cfg(feature = "postgres")]
                Place::Postgres { url, schema } => format!(
                    "the PostgreSQL store in schema {schema} of {}",
                    crate::redact_url(url)
                ),
            }
        }

        /// Whether the old store is read where it is (PostgreSQL) rather than from a copy.
        fn reads_in_place(&self) -> bool {
            match self {
                #[cfg(feature = "postgres")]
                Place::Postgres { .. } => true,
                #[allow(unreachable_patterns)]
                _ => false,
            }
        }

        async fn ensure_exists(&self) -> Result<()> {
            let exists = match self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(p) => p.is_file(),
                #[cfg(feature = "sled")]
                Place::Sled(p) => p.is_dir(),
                #[cfg(feature = "postgres")]
                Place::Postgres { url, schema } => {
                    crate::sink::postgres::schema_exists(url, schema).await?
                }
            };
            if exists {
                Ok(())
            } else {
                Err(Error::invalid(
                    "repair request",
                    format!(
                        "there is no store to repair: {} does not exist",
                        self.describe()
                    ),
                ))
            }
        }

        /// Take the store's lock, which is held until the store is moved: sled's, and
        /// the writer lock of a SQLite file (a process writing it is named, and nothing
        /// is changed).
        fn lock(&self) -> Result<Option<Box<dyn std::any::Any + Send>>> {
            match self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(p) => {
                    let mut lock_path = p.as_os_str().to_owned();
                    lock_path.push("-lock");
                    let held = crate::sink::process_lock::acquire(
                        "sqlite",
                        &format!("the SQLite file {}", p.display()),
                        std::path::Path::new(&lock_path),
                    )?;
                    Ok(Some(Box::new(held)))
                }
                #[cfg(feature = "sled")]
                Place::Sled(p) => {
                    match crate::sink::sled::lock_directory(p, std::time::Duration::from_secs(5)) {
                        Ok(Some(file)) => Ok(Some(Box::new(file))),
                        Ok(None) => Err(Error::store(
                            "sled",
                            format!("repair {}", p.display()),
                            true,
                            "another process uses the store: stop it before repairing; nothing was changed",
                        )),
                        Err(e) => Err(Error::store(
                            "sled",
                            format!("lock {}", p.display()),
                            false,
                            e,
                        )),
                    }
                }
                #[allow(unreachable_patterns)]
                _ => Ok(None),
            }
        }

        /// Open the old store for reading: file stores from a scratch copy (recorded in
        /// `scratch`), PostgreSQL read-only in place.
        async fn open_old(&self, stamp: &str, scratch: &mut Scratch) -> Result<SharedSink> {
            let _ = (stamp, &scratch);
            match self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(p) => {
                    let dir = scratch_dir(self.backend(), p, stamp)?;
                    scratch.0 = Some(dir.clone());
                    let copy = dir.join("store.db");
                    copy_file(self.backend(), p, &copy)?;
                    let wal = sidecar(p, "-wal");
                    if wal.exists() {
                        copy_file(self.backend(), &wal, &sidecar(&copy, "-wal"))?;
                    }
                    Ok(std::sync::Arc::new(
                        crate::sink::sqlite::SqliteStore::open(&copy).await?,
                    ))
                }
                #[cfg(feature = "sled")]
                Place::Sled(p) => {
                    let dir = scratch_dir(self.backend(), p, stamp)?;
                    scratch.0 = Some(dir.clone());
                    let copy = dir.join("store.sled");
                    copy_dir(self.backend(), p, &copy)?;
                    Ok(std::sync::Arc::new(
                        crate::sink::sled::SledStore::open(&copy).await?,
                    ))
                }
                #[cfg(feature = "postgres")]
                Place::Postgres { url, schema } => Ok(std::sync::Arc::new(
                    crate::sink::postgres::PostgresStore::connect_with(
                        url,
                        crate::sink::postgres::PostgresOptions::new()
                            .with_schema(schema.clone())
                            .with_read_only(true)
                            .with_pool_size(2),
                    )
                    .await?,
                )),
            }
        }

        /// Move the store aside: rename its file(s), directory or schema.
        async fn move_aside(&self, stamp: &str) -> Result<Moved> {
            let _ = stamp;
            match self {
                #[cfg(feature = "sqlite")]
                Place::Sqlite(p) => {
                    let suffix = format!(".damaged-{stamp}");
                    let target = free_name(p, &suffix, |c| c.exists());
                    // The WAL first: a WAL left next to a new database file of the same name
                    // would be replayed into it.
                    for side in ["-wal", "-shm", "-journal"] {
                        let from = sidecar(p, side);
                        if from.exists() {
                            rename(self.backend(), &from, &sidecar(&target, side))?;
                        }
                    }
                    rename(self.backend(), p, &target)?;
                    Ok(Moved::Path(target))
                }
                #[cfg(feature = "sled")]
                Place::Sled(p) => {
                    let target = free_name(p, &format!(".damaged-{stamp}"), |c| c.exists());
                    rename(self.backend(), p, &target)?;
                    Ok(Moved::Path(target))
                }
                #[cfg(feature = "postgres")]
                Place::Postgres { url, schema } => {
                    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
                    let suffix = format!("_damaged_{digits}");
                    let base = &schema[..schema.len().min(63 - suffix.len() - 3)];
                    let mut target = format!("{base}{suffix}");
                    let mut n = 2;
                    while crate::sink::postgres::schema_exists(url, &target).await? {
                        target = format!("{base}{suffix}_{n}");
                        n += 1;
                    }
                    crate::sink::postgres::rename_schema(url, schema, &target).await?;
                    Ok(Moved::Schema {
                        url: url.clone(),
                        schema: target,
                    })
                }
            }
        }
    }

    #[cfg(any(feature = "sqlite", feature = "sled"))]
    fn io_error(backend: &'static str, what: String) -> impl FnOnce(std::io::Error) -> Error {
        move |e| Error::store(backend, what, false, e)
    }

    #[cfg(any(feature = "sqlite", feature = "sled"))]
    fn rename(backend: &'static str, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(io_error(
            backend,
            format!("move {} to {}", from.display(), to.display()),
        ))
    }

    /// `PATH<side>`: SQLite's `-wal`, `-shm` and `-journal` files.
    #[cfg(feature = "sqlite")]
    fn sidecar(path: &Path, side: &str) -> PathBuf {
        PathBuf::from(format!("{}{side}", path.display()))
    }

    /// A new, empty directory next to the store for its scratch copy.
    #[cfg(any(feature = "sqlite", feature = "sled"))]
    fn scratch_dir(backend: &'static str, store: &Path, stamp: &str) -> Result<PathBuf> {
        let name = store
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        let parent = store
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = free_name(
            &parent.join(format!(".{name}")),
            &format!(".repair-{stamp}"),
            |c| c.exists(),
        );
        std::fs::create_dir(&dir)
            .map_err(io_error(backend, format!("create {}", dir.display())))?;
        Ok(dir)
    }

    #[cfg(any(feature = "sqlite", feature = "sled"))]
    fn copy_file(backend: &'static str, from: &Path, to: &Path) -> Result<()> {
        std::fs::copy(from, to).map(|_| ()).map_err(io_error(
            backend,
            format!("copy {} to {}", from.display(), to.display()),
        ))
    }

    #[cfg(feature = "sled")]
    fn copy_dir(backend: &'static str, from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)
            .map_err(io_error(backend, format!("create {}", to.display())))?;
        let entries = std::fs::read_dir(from)
            .map_err(io_error(backend, format!("read {}", from.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_error(backend, format!("read {}", from.display())))?;
            let kind = entry.file_type().map_err(io_error(
                backend,
                format!("read {}", entry.path().display()),
            ))?;
            let target = to.join(entry.file_name());
            if kind.is_dir() {
                copy_dir(backend, &entry.path(), &target)?;
            } else {
                copy_file(backend, &entry.path(), &target)?;
            }
        }
        Ok(())
    }
}

#[cfg(all(test, any(feature = "sqlite", feature = "sled", feature = "postgres")))]
mod tests {
    use std::path::{Path, PathBuf};

    use super::imp::*;
    use crate::time::Timestamp;

    #[test]
    fn stamps_are_compact_utc_times() {
        let t = Timestamp::parse("2026-04-30T10:15:07.123456Z").unwrap();
        assert_eq!(stamp(t), "20260430T101507Z");
    }

    #[cfg(any(feature = "sqlite", feature = "sled"))]
    #[test]
    fn free_names_count_up() {
        let taken = ["/x/a.db.damaged-S", "/x/a.db.damaged-S-2"];
        let name = free_name(Path::new("/x/a.db"), ".damaged-S", |c| {
            taken.iter().any(|t| Path::new(t) == c)
        });
        assert_eq!(name, PathBuf::from("/x/a.db.damaged-S-3"));
    }
}
