//! The sled store (`sled://DIR`, cargo feature `sled`): an embedded, pure-Rust key-value
//! store, for applications that want no SQL engine.
//!
//! # Layout
//!
//! Everything lives in ONE sled tree (`nango_sync`), because a sled [`Batch`] is atomic
//! only within one tree: a commit's records, the stream's new state (cursor, generation,
//! counters) and the store's sequence counter are written by one batch, so they land
//! together or not at all, also across a crash.
//!
//! | key | value |
//! |---|---|
//! | `0x00 "format"` | on-disk format version (`u64`, big-endian) |
//! | `0x00 "seq"` | the last commit's sequence number |
//! | `0x00 "sid"` | the last stream number handed out |
//! | `'i'` + stream key | the stream's number (`sid`, `u64` big-endian) |
//! | `'s'` + sid | the stream's row: key, state, totals, record counts, last run, upstream error (JSON) |
//! | `'r'` + sid + record id | one record: a fixed binary header (seq, generation seen, timestamps, action, flags), the cursor, then the payload JSON verbatim |
//!
//! The stream key is encoded as its four fields, each prefixed with its length (`u32`
//! big-endian), so strings containing any bytes cannot make two streams collide. Records
//! are keyed by the stream's 8-byte number then the id's UTF-8 bytes, so a stream's
//! records iterate in code-point order of ids, like every other store.
//!
//! # Concurrency
//!
//! Commits (and the other writes) are serialized by a mutex: a commit reads the stored
//! versions, plans with the [merge rule](crate::merge), and writes. Readers never wait for
//! that planning; only while a batch is applied do they wait (a read-write lock), so a
//! `list` sees the state before or after a commit, never a mix (sled's own iterators are
//! not isolated from a concurrent batch). Every sled call runs on tokio's blocking pool.
//!
//! # Durability
//!
//! By default ([`Durability::EveryCommit`]) the store flushes sled to disk after each
//! commit, before `commit` returns: a commit that returned `Ok` survives a crash of the
//! process or of the machine. [`Durability::Periodic`] leaves flushing to sled's
//! background thread: faster, but a crash can lose the last commits of the interval.
//! Because a commit is one batch, what is lost is always whole commits, cursors included,
//! so a sync simply resumes from the older cursor.

//!
//! # Files
//!
//! `mod.rs` the store and its [`RecordSink`] implementation, `options.rs`
//! [`SledOptions`], `schema.rs` the keys and the format version, `apply.rs` a commit
//! applied, `rows.rs` stream rows and record values, `error.rs` the error mapping.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ::sled::{Batch, Tree};

use crate::error::{Error, Result};
use crate::record::{StoredRecord, StreamKey};
use crate::sink::fault::Faults;
use crate::sink::{
    Commit, CommitOutcome, ListQuery, RecordSink, RunSummary, StreamState, StreamStatus,
};

mod apply;
mod error;
mod options;
mod rows;
mod schema;

use error::{corrupt, sled_err, task_err};
pub use options::{Durability, SledOptions};
use rows::{RecordView, StreamRow};
use schema::{
    FORMAT, KEY_FORMAT, KEY_SID, TAG_STREAM, TREE, be_u64, index_key, record_prefix, stream_row_key,
};

const BACKEND: &str = "sled";

/// A store in a sled directory. See the [module documentation](self) for its layout,
/// concurrency and durability.
pub struct SledStore {
    inner: Arc<Inner>,
    faults: Faults,
}

struct Inner {
    db: ::sled::Db,
    tree: Tree,
    path: PathBuf,
    durability: Durability,
    /// Serializes writers (commits, runs, errors): they read, then write.
    write: Mutex<()>,
    /// Held for writing while a batch is applied, for reading by multi-key reads.
    apply: RwLock<()>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Open (or create) the store in directory `path`, with default [`SledOptions`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SledOptions::default()).await
    }

    /// Open (or create) the store in directory `path`.
    pub async fn open_with(path: impl AsRef<Path>, options: SledOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let faults = options.faults.clone();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path, options))
            .await
            .map_err(|e| {
                Error::store(BACKEND, "open", false, format!("open task failed: {e}"))
            })??;
        Ok(SledStore {
            inner: Arc::new(inner),
            faults,
        })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` on tokio's blocking pool.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Faults) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || f(&inner, &faults))
            .await
            .map_err(|e| task_err(operation, e))?
    }
}

/// How long `open` waits for the directory's lock, which another handle of this process
/// (being dropped, its background flusher still running) or another process may hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Open, retrying while the database's file lock is held elsewhere, up to [`LOCK_WAIT`].
fn open_waiting_for_lock(
    config: &::sled::Config,
) -> std::result::Result<::sled::Db, ::sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(::sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Inner {
    fn open(path: PathBuf, options: SledOptions) -> Result<Inner> {
        let mut config = ::sled::Config::new().path(&path).cache_capacity(
            options
                .cache_capacity
                .unwrap_or(SledOptions::DEFAULT_CACHE_CAPACITY),
        );
        if let Durability::Periodic(every) = options.durability {
            config = config.flush_every_ms(Some(every.as_millis().max(1) as u64));
        }
        let open_err = |e: ::sled::Error| {
            Error::store(
                BACKEND,
                format!("open sled database at {}", path.display()),
                false,
                e,
            )
        };
        let db = open_waiting_for_lock(&config).map_err(open_err)?;
        let tree = db.open_tree(TREE).map_err(open_err)?;
        match tree.get(KEY_FORMAT).map_err(open_err)? {
            Some(v) => {
                let format = be_u64(&v).ok_or_else(|| corrupt("format key"))?;
                if format != FORMAT {
                    return Err(Error::store(
                        BACKEND,
                        format!("open sled database at {}", path.display()),
                        false,
                        format!(
                            "on-disk format {format} is not supported by this nango-sync (it reads format {FORMAT})"
                        ),
                    ));
                }
            }
            None if tree.is_empty() => {
                tree.insert(KEY_FORMAT, &FORMAT.to_be_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
            None => {
                return Err(corrupt(format!(
                    "{} holds a tree {TREE:?} without a format key",
                    path.display()
                )));
            }
        }
        Ok(Inner {
            db,
            tree,
            path,
            durability: options.durability,
            write: Mutex::new(()),
            apply: RwLock::new(()),
        })
    }

    fn lock_write(&self) -> std::sync::MutexGuard<'_, ()> {
        // Writes are applied by one batch at the end, so a panic never leaves half a write.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.apply.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply a batch atomically for readers, then make it durable per the policy.
    fn apply(&self, batch: Batch, operation: &'static str) -> Result<()> {
        {
            let _g = self.apply.write().unwrap_or_else(|p| p.into_inner());
            self.tree.apply_batch(batch).map_err(sled_err(operation))?;
        }
        if self.durability == Durability::EveryCommit {
            self.db.flush().map_err(sled_err("flush"))?;
        }
        Ok(())
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64> {
        match self.tree.get(key).map_err(sled_err("read"))? {
            Some(v) => be_u64(&v).ok_or_else(|| corrupt("counter")),
            None => Ok(0),
        }
    }

    /// The stream's number, if it has one.
    fn sid(&self, stream: &StreamKey) -> Result<Option<u64>> {
        match self.tree.get(index_key(stream)).map_err(sled_err("read"))? {
            Some(v) => Ok(Some(be_u64(&v).ok_or_else(|| corrupt("stream index"))?)),
            None => Ok(None),
        }
    }

    fn row(&self, sid: u64) -> Result<StreamRow> {
        let v = self
            .tree
            .get(stream_row_key(sid))
            .map_err(sled_err("read"))?
            .ok_or_else(|| corrupt("missing stream row"))?;
        serde_json::from_slice(&v).map_err(|e| corrupt(format!("stream row: {e}")))
    }

    /// The stream's number and row, or a new number (staged in `batch`) and a new row.
    fn row_for_write(&self, stream: &StreamKey, batch: &mut Batch) -> Result<(u64, StreamRow)> {
        if let Some(sid) = self.sid(stream)? {
            return Ok((sid, self.row(sid)?));
        }
        let sid = self.get_u64(KEY_SID)? + 1;
        batch.insert(KEY_SID, &sid.to_be_bytes());
        batch.insert(index_key(stream), &sid.to_be_bytes());
        Ok((sid, StreamRow::new(stream.clone())))
    }

    /// Change a stream's row (creating the stream if needed).
    fn update_row(
        &self,
        stream: &StreamKey,
        operation: &'static str,
        f: impl FnOnce(&mut StreamRow),
    ) -> Result<()> {
        let _w = self.lock_write();
        let mut batch = Batch::default();
        let (sid, mut row) = self.row_for_write(stream, &mut batch)?;
        f(&mut row);
        batch.insert(&stream_row_key(sid)[..], row.to_json()?);
        self.apply(batch, operation)
    }

    fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        let _r = self.read_guard();
        match self.sid(stream)? {
            Some(sid) => Ok(self.row(sid)?.state),
            None => Ok(StreamState::default()),
        }
    }

    fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        let _r = self.read_guard();
        let Some(sid) = self.sid(stream)? else {
            return Ok(None);
        };
        let mut key = record_prefix(sid);
        key.extend_from_slice(id.as_bytes());
        match self.tree.get(&key).map_err(sled_err("get"))? {
            Some(v) => Ok(Some(RecordView::new(&v)?.to_record(id.to_owned())?)),
            None => Ok(None),
        }
    }

    fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        let _r = self.read_guard();
        let Some(sid) = self.sid(stream)? else {
            return Ok(Vec::new());
        };
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let start = record_prefix(sid);
        let prefix_len = start.len();
        let lower = match &query.after_id {
            Some(after) => {
                let mut k = start;
                k.extend_from_slice(after.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(start),
        };
        let upper = Bound::Excluded(record_prefix(sid + 1));
        let mut out = Vec::with_capacity(query.limit.min(1024));
        for item in self.tree.range::<Vec<u8>, _>((lower, upper)) {
            let (k, v) = item.map_err(sled_err("list"))?;
            let view = RecordView::new(&v)?;
            if view.deleted() && !query.include_deleted {
                continue;
            }
            let id = std::str::from_utf8(&k[prefix_len..])
                .map_err(|_| corrupt("record id is not UTF-8"))?;
            out.push(view.to_record(id.to_owned())?);
            if out.len() == query.limit {
                break;
            }
        }
        Ok(out)
    }

    fn streams(&self) -> Result<Vec<StreamStatus>> {
        let _r = self.read_guard();
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([TAG_STREAM]) {
            let (_, v) = item.map_err(sled_err("streams"))?;
            let row: StreamRow =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("stream row: {e}")))?;
            out.push(StreamStatus {
                stream: row.stream,
                state: row.state,
                totals: row.totals,
                live_records: row.live,
                deleted_records: row.deleted,
                last_run: row.last_run,
                upstream_error: row.upstream_error,
            });
        }
        out.sort_by(|a, b| a.stream.cmp(&b.stream));
        Ok(out)
    }
}

impl RecordSink for SledStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        let stream = stream.clone();
        self.blocking("stream_state", move |inner, _| inner.stream_state(&stream))
            .await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.blocking("commit", move |inner, faults| inner.commit(faults, commit))
            .await
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary) -> Result<()> {
        let (stream, run) = (stream.clone(), run.clone());
        self.blocking("record_run", move |inner, _| {
            inner.update_row(&stream, "record_run", |row| row.last_run = Some(run))
        })
        .await
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        let (stream, error) = (stream.clone(), error.map(str::to_owned));
        self.blocking("set_upstream_error", move |inner, _| {
            inner.update_row(&stream, "set_upstream_error", |row| {
                row.upstream_error = error
            })
        })
        .await
    }

    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        let (stream, id) = (stream.clone(), id.to_owned());
        self.blocking("get", move |inner, _| inner.get(&stream, &id))
            .await
    }

    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        let (stream, query) = (stream.clone(), query.clone());
        self.blocking("list", move |inner, _| inner.list(&stream, &query))
            .await
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        self.blocking("streams", |inner, _| inner.streams()).await
    }
}
