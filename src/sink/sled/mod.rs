//! The sled store (`sled://DIR`, cargo feature `sled`): an embedded, pure-Rust key-value
//! store, for applications that want no SQL engine.
//!
//! sled 0.34 is beta software (its authors say so, and its 1.0 line has another on-disk
//! format). For a desktop application, where a process can be killed or the machine lose
//! power at any moment, the SQLite store is the safer choice; this store recovers from
//! the one crash outcome of sled 0.34 found to leave a directory that will not open (see
//! [Recovery](#recovery)).
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
//! | `'s'` + sid | the stream's row: key, state, totals, record counts, last run, upstream error, the id of the record whose cursor is the stream's cursor, the live records stamped with the running full read's generation (JSON) |
//! | `'r'` + sid + record id | one record: a fixed binary header (seq, generation seen, timestamps, action, flags with the kind of the last change), the cursor, then the payload JSON verbatim |
//! | `'e'` + seq, `'e'` + seq + chunk | the change feed's index: one entry per commit, its ids and how many of them it is still the last change of (see `feed.rs`) |
//! | `'k'` + consumer name | a named consumer's feed position |
//! | `0x00 "runs"`, `'h'` + sid + run number | the run history (see `history.rs`) |
//! | `'o'` + id, `'q'` + ... | the outbox: items, their queue, the last id and the idempotency keys (see `outbox.rs`) |
//!
//! The stream key is encoded as its four fields, each prefixed with its length (`u32`
//! big-endian), so strings containing any bytes cannot make two streams collide. Records
//! are keyed by the stream's 8-byte number then the id's UTF-8 bytes, so a stream's
//! records iterate in code-point order of ids, like every other store.
//!
//! Next to sled's own files, creating a store writes a file `nango-sync-store`. sled
//! takes a log it cannot read at all (overwritten, replaced) for an empty one and starts
//! it anew; with that file present, an empty database is reported as a damaged store
//! instead of being used as a new one.
//!
//! # Concurrency
//!
//! Commits (and the other writes) are serialized by a mutex: a commit reads the stored
//! versions, plans with the [merge rule](crate::merge), and writes. Readers never wait for
//! that planning; only while a batch is applied do they wait (a read-write lock), so a
//! `list` sees the state before or after a commit, never a mix (sled's own iterators are
//! not isolated from a concurrent batch). Every sled call runs on tokio's blocking pool.
//!
//! sled allows one process at a time in a directory (it locks the `db` file); `open`
//! waits for that lock up to [`SledOptions::with_lock_wait`] (5 s by default), then
//! fails with an error saying that another process uses the store.
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
//! # Recovery
//!
//! sled 0.34 writes a *snapshot* of its page table each time a database is opened
//! (`snap.<LSN>.generating`, then renamed to `snap.<LSN>`); a process killed while it
//! writes one leaves the `.generating` file behind, and sled then refuses to open the
//! directory ("Read corrupted data"), on every later attempt. Opening this store
//! removes such a leftover first, while holding sled's own lock on the directory, logs
//! a warning naming each file removed, then checks the store (see
//! [`SledStore::check`]) and refuses to open it if the check finds a problem. Why the
//! removal is safe is explained, from sled's code, in the `recovery` module's source.
//! [`SledStore::recovery`] tells what an open recovered from.
//!
//! A store that still cannot be opened is reported as [`Error::Damaged`];
//! [`crate::repair`] moves it aside and rebuilds it from Nango.
//!
//! # Files
//!
//! `mod.rs` the store, its opening and its [`RecordSink`] implementation, `options.rs`
//! [`SledOptions`], `schema.rs` the keys, the format version and the marker file,
//! `apply.rs` a commit applied, `rows.rs` stream rows and record values, `error.rs` the
//! error mapping, `recovery.rs` the removal of interrupted snapshots, `check.rs`
//! [`SledStore::check`], `feed.rs` the change feed's index and reads, consumers, and the
//! migration of format-1 and format-2 stores, `sweep.rs` the count that lets a full
//! read that saw every record skip the sweep's scan.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::sled::{Batch, Tree};

use crate::error::{Error, Result};
use crate::feed::{
    ChangeBatch, ChangeQuery, CommitSignal, Consumer, FeedPosition, RecordCounts, validate_consumer,
};
use crate::record::{StoredRecord, StreamKey};
use crate::sink::fault::Faults;
use crate::sink::outbox::{
    Claim, ClaimRequest, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery, Settlement,
};
use crate::sink::{
    Commit, CommitOutcome, HistoryQuery, ListQuery, RecordSink, RunEntry, RunSummary, StreamState,
    StreamStatus,
};
use crate::time::Timestamp;

mod apply;
mod check;
mod error;
mod feed;
mod history;
mod options;
mod outbox;
mod recovery;
mod rows;
mod schema;
mod sweep;
mod writer;

pub use check::StoreCheck;
use error::{corrupt, lock_held, sled_err, sled_error, task_err};
pub use options::{Durability, SledOptions};
pub(crate) use recovery::lock_directory;
pub use recovery::{Recovery, RemovedSnapshot};
use rows::{RecordView, StreamRow};
use schema::{
    FORMAT, KEY_FORMAT, KEY_SID, MARKER, MARKER_TEXT, TAG_STREAM, TREE, be_u64, index_key,
    record_prefix, stream_row_key,
};

const BACKEND: &str = "sled";

/// A store in a sled directory. See the [module documentation](self) for its layout,
/// concurrency, durability and recovery.
pub struct SledStore {
    shared: Arc<Shared>,
    faults: Faults,
}

struct Shared {
    path: PathBuf,
    options: SledOptions,
    /// The open database. Replaced under the write lock (so no operation is in flight)
    /// when the store reopens sled to have it write a snapshot
    /// ([`SledOptions::with_snapshot_after_ops`]); holds the reason when that failed.
    slot: RwLock<std::result::Result<Inner, String>>,
    /// Writes so far, counted only with `snapshot_after_ops`.
    writes: AtomicU64,
    /// What the first open recovered from.
    recovery: Option<Recovery>,
    /// Wakes subscribers after each commit that changed records.
    signal: CommitSignal,
    /// The directory's lock file, naming this process (`writer.rs`).
    _writer_lock: Arc<crate::sink::process_lock::ProcessLock>,
}

struct Inner {
    db: ::sled::Db,
    tree: Tree,
    durability: Durability,
    /// Serializes writers (commits, runs, errors): they read, then write.
    write: Mutex<()>,
    /// Held for writing while a batch is applied, for reading by multi-key reads.
    apply: RwLock<()>,
    /// Sweeps that scanned a stream's records (the others were skipped: `sweep.rs`).
    #[cfg(test)]
    sweep_scans: AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.shared.path)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Open (or create) the store in directory `path`, with default [`SledOptions`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SledOptions::default()).await
    }

    /// Open (or create) the store in directory `path`, first recovering from an
    /// interrupted snapshot (see [Recovery](self#recovery)).
    pub async fn open_with(path: impl AsRef<Path>, options: SledOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let faults = options.faults.clone();
        let (p, o) = (path.clone(), options.clone());
        let (inner, recovery, last_seq, writer_lock) = tokio::task::spawn_blocking(move || {
            let writer_lock = writer::acquire(&p, o.lock_wait())?;
            let (inner, recovery) = Inner::open(&p, &o)?;
            let last_seq = inner.last_seq()?;
            Ok::<_, Error>((inner, recovery, last_seq, writer_lock))
        })
        .await
        .map_err(|e| Error::store(BACKEND, "open", false, format!("open task failed: {e}")))??;
        Ok(SledStore {
            shared: Arc::new(Shared {
                path,
                options,
                slot: RwLock::new(Ok(inner)),
                writes: AtomicU64::new(0),
                recovery,
                signal: CommitSignal::new(last_seq),
                _writer_lock: writer_lock,
            }),
            faults,
        })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// What opening the store recovered from (interrupted snapshots removed, and the
    /// check made afterwards), or `None` when it found nothing to recover from.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.shared.recovery.as_ref()
    }

    /// Check the whole store: every key known and decodable, every stream's index entry
    /// and row matching, each stream's live and deleted record counts equal to the
    /// records it holds, every record's sequence number at most the store's, the
    /// record whose cursor is a stream's cursor present, and every record in the change
    /// feed's index once, at its sequence number. Reads every record (writes wait until
    /// it is done). Run by `open` after a recovery.
    pub async fn check(&self) -> Result<StoreCheck> {
        self.blocking("check", |inner, _| inner.check()).await
    }

    /// Run `f` on tokio's blocking pool, with the open database.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Faults) -> Result<T> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || {
            let slot = shared.slot.read().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Ok(inner) => f(inner, &faults),
                Err(why) => Err(Error::store(
                    BACKEND,
                    operation,
                    false,
                    format!(
                        "the store at {} is closed: reopening it failed: {why}",
                        shared.path.display()
                    ),
                )),
            }
        })
        .await
        .map_err(|e| task_err(operation, e))?
    }

    /// Count a write; every `snapshot_after_ops` writes, reopen sled so that it writes a
    /// snapshot.
    async fn wrote(&self) {
        let Some(n) = self.shared.options.snapshot_after_ops else {
            return;
        };
        if !(self.shared.writes.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        // A failure is logged and kept in the slot: the write itself has landed.
        let _ = tokio::task::spawn_blocking(move || shared.reopen()).await;
    }
}

impl Shared {
    /// Close the database and open it again, which makes sled write a snapshot. Waits
    /// for the operations in flight (they hold the slot's read lock).
    fn reopen(&self) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Ok(inner) => {
                if let Err(e) = inner.db.flush() {
                    tracing::error!(path = %self.path.display(), error = %e, "sled flush before a reopen failed; the store stays open");
                    return;
                }
            }
            Err(_) => return,
        }
        // Dropping the old handles closes sled (its flusher thread is joined).
        *slot = Err("it was being reopened".to_string());
        *slot = match Inner::open(&self.path, &self.options) {
            Ok((inner, _)) => Ok(inner),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "reopening the sled store (to have sled write a snapshot) failed; the store is closed");
                Err(e.to_string())
            }
        };
    }
}

/// Open, retrying while the database's file lock is held elsewhere, up to `wait`.
fn open_waiting_for_lock(
    config: &::sled::Config,
    path: &Path,
    wait: Duration,
) -> Result<::sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(::sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() < wait {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                return Err(lock_held(path, wait));
            }
            other => {
                return other.map_err(|e| {
                    sled_error(format!("open sled database at {}", path.display()), e)
                });
            }
        }
    }
}

impl Inner {
    /// Recover from an interrupted snapshot, open sled, check the format, and check the
    /// whole store when something was recovered.
    fn open(path: &Path, options: &SledOptions) -> Result<(Inner, Option<Recovery>)> {
        let removed = recovery::remove_interrupted_snapshots(path, options.lock_wait())?;
        let mut config = ::sled::Config::new().path(path).cache_capacity(
            options
                .cache_capacity
                .unwrap_or(SledOptions::DEFAULT_CACHE_CAPACITY),
        );
        if let Durability::Periodic(every) = options.durability {
            config = config.flush_every_ms(Some(every.as_millis().max(1) as u64));
        }
        let operation = || format!("open sled database at {}", path.display());
        let open_err = |e: ::sled::Error| sled_error(operation(), e);
        // Read before sled opens: sled takes a log it cannot read at all for an empty
        // one (and starts it anew), so the marker is how an existing store is told apart.
        let marker = path.join(MARKER);
        let existed = marker.exists();
        let db = open_waiting_for_lock(&config, path, options.lock_wait())?;
        let tree = db.open_tree(TREE).map_err(open_err)?;
        let mark = || {
            std::fs::write(&marker, MARKER_TEXT)
                .and_then(|()| std::fs::File::open(&marker)?.sync_all())
                .and_then(|()| recovery::sync_directory(path))
                .map_err(|e| Error::store(BACKEND, format!("write {}", marker.display()), false, e))
        };
        match tree.get(KEY_FORMAT).map_err(open_err)? {
            Some(v) => {
                let format = be_u64(&v).ok_or_else(|| corrupt("format key"))?;
                if format == 1 || format == 2 {
                    feed::migrate(&tree, format, FORMAT)?;
                    mark()?;
                } else if format != FORMAT {
                    return Err(Error::store(
                        BACKEND,
                        operation(),
                        false,
                        format!(
                            "on-disk format {format} is not supported by this nango-sync (it reads format {FORMAT})"
                        ),
                    ));
                }
                if !existed {
                    // A store made before the marker existed.
                    mark()?;
                }
            }
            None if tree.is_empty() && existed => {
                return Err(Error::damaged(
                    BACKEND,
                    operation(),
                    format!(
                        "sled opened the store's database as an empty one: its log (`db`) is damaged or was replaced, and holds none of the store's data ({} says a store was made here)",
                        marker.display()
                    ),
                ));
            }
            None if tree.is_empty() => {
                tree.insert(KEY_FORMAT, &FORMAT.to_be_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
                mark()?;
            }
            None => {
                return Err(corrupt(format!(
                    "{} holds a tree {TREE:?} without a format key",
                    path.display()
                )));
            }
        }
        let inner = Inner {
            db,
            tree,
            durability: options.durability,
            write: Mutex::new(()),
            apply: RwLock::new(()),
            #[cfg(test)]
            sweep_scans: AtomicU64::new(0),
        };
        if removed.is_empty() {
            return Ok((inner, None));
        }
        let check = inner.check()?;
        if !check.is_consistent() {
            return Err(Error::damaged(
                BACKEND,
                operation(),
                format!(
                    "after removing an interrupted snapshot, the store is inconsistent: {}",
                    check.problems.join("; ")
                ),
            ));
        }
        tracing::warn!(
            path = %path.display(),
            streams = check.streams,
            records = check.records,
            "sled store checked after recovering from an interrupted snapshot: consistent"
        );
        Ok((inner, Some(Recovery { removed, check })))
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
            if !query.selects(view.deleted(), feed::change_of(&view, &v)) {
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
            out.push(row.into_status());
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
        let outcome = self
            .blocking("commit", move |inner, faults| inner.commit(faults, commit))
            .await?;
        if outcome.counts.changed() > 0 {
            self.shared.signal.committed(outcome.seq);
        }
        self.wrote().await;
        Ok(outcome)
    }

    async fn flush(&self) -> Result<()> {
        self.blocking("flush", |inner, _| {
            inner.db.flush().map_err(sled_err("flush"))?;
            Ok(())
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
        .await?;
        self.wrote().await;
        Ok(())
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

    // The run history (`history.rs`).

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        let (stream, run) = (stream.clone(), run.clone());
        self.blocking("record_run", move |inner, _| {
            inner.record_run(&stream, &run, keep)
        })
        .await?;
        self.wrote().await;
        Ok(())
    }

    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        let stream = stream.clone();
        self.blocking("last_run", move |inner, _| inner.last_run(&stream))
            .await
    }

    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        let query = query.clone();
        self.blocking("run_history", move |inner, _| inner.run_history(&query))
            .await
    }

    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        let stream = stream.clone();
        self.blocking("stream_status", move |inner, _| {
            inner.stream_status(&stream)
        })
        .await
    }
    // The application's side: see `feed.rs`.

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        let query = query.clone();
        self.blocking("changes", move |inner, _| inner.changes(&query))
            .await
    }

    async fn last_seq(&self) -> Result<u64> {
        self.blocking("last_seq", |inner, _| inner.last_seq()).await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_subscribe()
    }

    async fn consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let name = consumer.to_owned();
        self.blocking("consumer_position", move |inner, _| {
            inner.consumer_position(&name)
        })
        .await
    }

    async fn ack(&self, consumer: &str, position: &FeedPosition) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let (name, position) = (consumer.to_owned(), position.clone());
        let stored = self
            .blocking("ack", move |inner, _| inner.ack(&name, &position))
            .await?;
        self.wrote().await;
        Ok(stored)
    }

    async fn consumers(&self) -> Result<Vec<Consumer>> {
        self.blocking("consumers", |inner, _| inner.consumers())
            .await
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<bool> {
        validate_consumer(consumer)?;
        let name = consumer.to_owned();
        let removed = self
            .blocking("remove_consumer", move |inner, _| {
                inner.remove_consumer(&name)
            })
            .await?;
        self.wrote().await;
        Ok(removed)
    }

    async fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        let stream = stream.clone();
        self.blocking("count", move |inner, _| inner.count(&stream))
            .await
    }

    // The outbox (`outbox.rs`).

    async fn outbox_enqueue(&self, item: NewOutboxItem) -> Result<OutboxItem> {
        let item = self
            .blocking("outbox_enqueue", move |inner, _| inner.outbox_enqueue(item))
            .await?;
        self.wrote().await;
        Ok(item)
    }

    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        let request = request.clone();
        let item = self
            .blocking("outbox_claim", move |inner, _| inner.outbox_claim(&request))
            .await?;
        if item.is_some() {
            self.wrote().await;
        }
        Ok(item)
    }

    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        let claim = claim.clone();
        let done = self
            .blocking("outbox_extend", move |inner, _| {
                inner.outbox_extend(&claim, until, now)
            })
            .await?;
        self.wrote().await;
        Ok(done)
    }

    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        let claim = claim.clone();
        let done = self
            .blocking("outbox_settle", move |inner, _| {
                inner.outbox_settle(&claim, settlement, now)
            })
            .await?;
        self.wrote().await;
        Ok(done)
    }

    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        self.blocking("outbox_get", move |inner, _| inner.outbox_get(id))
            .await
    }

    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        let query = query.clone();
        self.blocking("outbox_list", move |inner, _| inner.outbox_list(&query))
            .await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.blocking("outbox_counts", |inner, _| inner.outbox_counts())
            .await
    }

    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        let n = self
            .blocking("outbox_purge", move |inner, _| {
                inner.outbox_purge(finished_before)
            })
            .await?;
        self.wrote().await;
        Ok(n)
    }
}
