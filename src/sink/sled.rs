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
//! | `'s'` + sid | the stream's row: key, state, totals, record counts, last run, upstream error, the id of the record whose cursor is the stream's cursor (JSON) |
//! | `'r'` + sid + record id | one record: a fixed binary header (seq, generation seen, timestamps, action, flags), the cursor, then the payload JSON verbatim |
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::sled::{Batch, IVec, Tree};
use serde::{Deserialize, Serialize};

use super::memory::{check_cursor, next_state, stamp_generation};
use crate::error::{Error, Result};
use crate::merge::{Counts, PayloadSource, StoredVersionBuf, plan_page};
use crate::record::{Cursor, LastAction, Metadata, RawJson, StoredRecord, StreamKey};
use crate::sink::{
    Commit, CommitOutcome, FaultInjector, FaultPoint, ListQuery, RecordSink, RunSummary,
    StreamState, StreamStatus,
};
use crate::time::Timestamp;

mod check;
mod recovery;

pub use check::StoreCheck;
pub(crate) use recovery::lock_directory;
pub use recovery::{Recovery, RemovedSnapshot};

const BACKEND: &str = "sled";
const TREE: &str = "nango_sync";
const FORMAT: u64 = 1;

/// A file written next to sled's own once the store is created (sled ignores it).
const MARKER: &str = "nango-sync-store";
const MARKER_TEXT: &str = "a nango-sync store: sled database, format 1\n";

const KEY_FORMAT: &[u8] = b"\x00format";
const KEY_SEQ: &[u8] = b"\x00seq";
const KEY_SID: &[u8] = b"\x00sid";
const TAG_META: u8 = 0;
const TAG_INDEX: u8 = b'i';
const TAG_STREAM: u8 = b's';
const TAG_RECORD: u8 = b'r';

/// When the sled store writes commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Flush after every commit, before `commit` returns (the default): a commit that
    /// returned `Ok` survives a crash of the process or the machine.
    #[default]
    EveryCommit,
    /// Let sled's background thread flush at this interval. A crash can lose the commits
    /// of the last interval (whole commits, their cursors included; never part of one).
    Periodic(Duration),
}

/// Options of a [`SledStore`].
#[derive(Debug, Clone, Default)]
pub struct SledOptions {
    durability: Durability,
    cache_capacity: Option<u64>,
    snapshot_after_ops: Option<u64>,
    lock_wait: Option<Duration>,
}

impl SledOptions {
    /// Default options: flush every commit, a page cache of
    /// [`SledOptions::DEFAULT_CACHE_CAPACITY`] bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// When commits are written to disk (see [`Durability`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The page cache used unless [`SledOptions::with_cache_capacity`] sets another:
    /// 64 MiB. (sled's own default, 1 GiB, made a 1,000,000-record sync peak above
    /// 2 GB of RSS.)
    pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

    /// The size of sled's page cache, in bytes.
    pub fn with_cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }

    /// Have sled write a snapshot after every `n` writes (commits, run records, upstream
    /// errors); `0` turns it off (the default). For crash tests of sled's snapshots.
    ///
    /// sled 0.34 writes a snapshot only while it opens a database: its own
    /// `Config::snapshot_after_ops` is kept for compatibility but does nothing. So this
    /// store closes its sled database and opens it again after every `n` writes, which
    /// makes sled write a snapshot of the log written since the last one. Operations
    /// wait while that happens (a flush, a scan of the new log, a snapshot write with an
    /// `fsync`). Also reachable from a sink URL: `sled://DIR?snapshot_after_ops=N`.
    pub fn with_snapshot_after_ops(mut self, n: u64) -> Self {
        self.snapshot_after_ops = (n > 0).then_some(n);
        self
    }

    /// How long opening waits for the directory's lock, which another process (or
    /// another handle of this process being dropped) may hold: 5 s unless set.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    fn lock_wait(&self) -> Duration {
        self.lock_wait.unwrap_or(DEFAULT_LOCK_WAIT)
    }
}

/// A store in a sled directory. See the [module documentation](self) for its layout,
/// concurrency, durability and recovery.
pub struct SledStore {
    shared: Arc<Shared>,
    faults: Arc<FaultInjector>,
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
}

struct Inner {
    db: ::sled::Db,
    tree: Tree,
    durability: Durability,
    /// Serializes writers (commits, runs, errors): they read, then write.
    write: Mutex<()>,
    /// Held for writing while a batch is applied, for reading by multi-key reads.
    apply: RwLock<()>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.shared.path)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Map a sled error: corruption is [`Error::Damaged`], anything else a store error.
fn sled_error(operation: impl Into<String>, e: ::sled::Error) -> Error {
    match e {
        ::sled::Error::Corruption { .. } => Error::damaged(BACKEND, operation, e.to_string()),
        e => Error::store(BACKEND, operation, false, e),
    }
}

fn sled_err(operation: &'static str) -> impl Fn(::sled::Error) -> Error {
    move |e| sled_error(operation, e)
}

fn corrupt(what: impl fmt::Display) -> Error {
    Error::damaged(BACKEND, "read", format!("corrupt store: {what}"))
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
        let (p, o) = (path.clone(), options.clone());
        let (inner, recovery) = tokio::task::spawn_blocking(move || Inner::open(&p, &o))
            .await
            .map_err(|e| {
                Error::store(BACKEND, "open", false, format!("open task failed: {e}"))
            })??;
        Ok(SledStore {
            shared: Arc::new(Shared {
                path,
                options,
                slot: RwLock::new(Ok(inner)),
                writes: AtomicU64::new(0),
                recovery,
            }),
            faults: Arc::new(FaultInjector::default()),
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
    /// records it holds, every record's sequence number at most the store's, and the
    /// record whose cursor is a stream's cursor present. Reads every record (writes wait
    /// until it is done). Run by `open` after a recovery.
    pub async fn check(&self) -> Result<StoreCheck> {
        self.blocking("check", |inner, _| inner.check()).await
    }

    /// Run `f` on tokio's blocking pool, with the open database.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &FaultInjector) -> Result<T> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let faults = Arc::clone(&self.faults);
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
        .map_err(|e| Error::store(BACKEND, operation, false, format!("task failed: {e}")))?
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

/// How long `open` waits for the directory's lock unless [`SledOptions::with_lock_wait`]
/// says otherwise.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

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
                return Err(Error::store(
                    BACKEND,
                    format!("open sled database at {}", path.display()),
                    true,
                    format!(
                        "another process uses the store (sled allows one process at a time; waited {} ms for its lock on {})",
                        wait.as_millis(),
                        path.join("db").display()
                    ),
                ));
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
                if format != FORMAT {
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

    fn commit(&self, faults: &FaultInjector, commit: Commit) -> Result<CommitOutcome> {
        let _w = self.lock_write();
        let seq = self.get_u64(KEY_SEQ)? + 1;
        let mut batch = Batch::default();
        let (sid, mut row) = self.row_for_write(&commit.stream, &mut batch)?;
        check_cursor(&commit.stream, &row.state, &commit)?;

        // Read the stored versions (one get per distinct id) and plan with the merge rule.
        let mut key = record_prefix(sid);
        let prefix_len = key.len();
        let mut stored: HashMap<String, IVec> = HashMap::new();
        let mut read_error = None;
        let plan = plan_page(&commit.records, |id| {
            key.truncate(prefix_len);
            key.extend_from_slice(id.as_bytes());
            match self.tree.get(&key) {
                Ok(Some(v)) => match RecordView::new(&v).and_then(|view| view.version()) {
                    Ok(version) => {
                        stored.insert(id.to_owned(), v);
                        Some(version)
                    }
                    Err(e) => {
                        read_error.get_or_insert(e);
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    read_error.get_or_insert(sled_err("read")(e));
                    None
                }
            }
        });
        if let Some(e) = read_error {
            return Err(e);
        }

        let gen_stamp = stamp_generation(&row.state, &commit);
        let mut live = row.live as i64;
        let mut deleted = row.deleted as i64;
        for w in &plan.writes {
            let r = &commit.records[w.index];
            let old = stored
                .get(r.id.as_str())
                .map(|v| RecordView::new(v))
                .transpose()?;
            let payload = match (w.payload, &old) {
                (PayloadSource::Page(i), _) => commit.records[i].payload.as_str().as_bytes(),
                (PayloadSource::Stored, Some(old)) => old.payload_bytes(),
                (PayloadSource::Stored, None) => r.payload.as_str().as_bytes(),
            };
            match &old {
                Some(old) if old.deleted() => deleted -= 1,
                Some(_) => live -= 1,
                None => {}
            }
            if r.is_deleted() {
                deleted += 1;
            } else {
                live += 1;
            }
            key.truncate(prefix_len);
            key.extend_from_slice(r.id.as_bytes());
            batch.insert(
                key.as_slice(),
                encode_record(seq, gen_stamp, &r.meta, payload),
            );
        }
        if commit.full_read.is_some() {
            // Records seen unchanged (or stale) by a full re-read are marked as seen.
            for &i in &plan.untouched {
                let id = commit.records[i].id.as_str();
                if let Some(v) = stored.get(id) {
                    let mut value = v.to_vec();
                    put_u64(&mut value, OFF_GEN, gen_stamp);
                    key.truncate(prefix_len);
                    key.extend_from_slice(id.as_bytes());
                    batch.insert(key.as_slice(), value);
                }
            }
        }
        let mut counts = plan.counts;
        let mut swept = 0u64;
        if let Some(f) = commit.full_read.filter(|f| f.complete) {
            let seen: HashSet<&str> = commit.records.iter().map(|r| r.id.as_str()).collect();
            for item in self.tree.scan_prefix(record_prefix(sid)) {
                let (k, v) = item.map_err(sled_err("sweep"))?;
                let id = &k[prefix_len..];
                if std::str::from_utf8(id).is_ok_and(|id| seen.contains(id)) {
                    continue;
                }
                let view = RecordView::new(&v)?;
                if view.seen_gen() < f.generation && !view.deleted() {
                    let mut value = v.to_vec();
                    value[OFF_ACTION] = LastAction::Deleted.code();
                    value[OFF_FLAGS] |= FLAG_DELETED_AT | FLAG_DELETED;
                    put_u64(&mut value, OFF_DELETED_AT, commit.now.as_micros() as u64);
                    put_u64(&mut value, OFF_SEQ, seq);
                    batch.insert(k, value);
                    swept += 1;
                }
            }
        }
        counts.deleted += swept;
        live -= swept as i64;
        deleted += swept as i64;

        faults.check(BACKEND, FaultPoint::AfterRecords)?;
        if commit.cursor != row.state.cursor {
            // Remember which record the new cursor belongs to, for `check`. (A cursor
            // that is not the page's last record's is not tracked.)
            row.cursor_record = match (commit.records.last(), &commit.cursor) {
                (Some(last), Some(cursor)) if last.meta.cursor == *cursor => Some(last.id.clone()),
                _ => None,
            };
        }
        row.state = next_state(&row.state, &commit);
        row.totals.add(&counts);
        row.live = u64::try_from(live).map_err(|_| corrupt("negative live record count"))?;
        row.deleted =
            u64::try_from(deleted).map_err(|_| corrupt("negative deleted record count"))?;
        batch.insert(&stream_row_key(sid)[..], row.to_json()?);
        batch.insert(KEY_SEQ, &seq.to_be_bytes());
        faults.check(BACKEND, FaultPoint::BeforeCommit)?;
        self.apply(batch, "commit")?;
        Ok(CommitOutcome { seq, counts, swept })
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
        let outcome = self
            .blocking("commit", move |inner, faults| inner.commit(faults, commit))
            .await?;
        self.wrote().await;
        Ok(outcome)
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary) -> Result<()> {
        let (stream, run) = (stream.clone(), run.clone());
        self.blocking("record_run", move |inner, _| {
            inner.update_row(&stream, "record_run", |row| row.last_run = Some(run))
        })
        .await?;
        self.wrote().await;
        Ok(())
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

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }
}

// ---------------------------------------------------------------------------------------
// Stream rows and keys
// ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct StreamRow {
    stream: StreamKey,
    state: StreamState,
    totals: Counts,
    live: u64,
    deleted: u64,
    last_run: Option<RunSummary>,
    upstream_error: Option<String>,
    /// The id of the record whose cursor became the stream's cursor (the last record of
    /// the commit that moved it), when it was one; checked by [`SledStore::check`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor_record: Option<String>,
}

impl StreamRow {
    fn new(stream: StreamKey) -> Self {
        StreamRow {
            stream,
            state: StreamState::default(),
            totals: Counts::default(),
            live: 0,
            deleted: 0,
            last_run: None,
            upstream_error: None,
            cursor_record: None,
        }
    }

    fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::store(BACKEND, "encode stream row", false, e))
    }
}

/// `'i'` then each field of the stream key, length-prefixed.
fn index_key(stream: &StreamKey) -> Vec<u8> {
    let fields = [
        &stream.integration,
        &stream.connection,
        &stream.model,
        &stream.variant,
    ];
    let mut key = Vec::with_capacity(1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    key.push(TAG_INDEX);
    for f in fields {
        key.extend_from_slice(&(f.len() as u32).to_be_bytes());
        key.extend_from_slice(f.as_bytes());
    }
    key
}

fn stream_row_key(sid: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_STREAM;
    key[1..].copy_from_slice(&sid.to_be_bytes());
    key
}

/// `'r'` + sid: the prefix of a stream's record keys (room for an id after it).
fn record_prefix(sid: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + 64);
    key.push(TAG_RECORD);
    key.extend_from_slice(&sid.to_be_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------
// Record values: a fixed header, the cursor, the payload
// ---------------------------------------------------------------------------------------

const RECORD_VERSION: u8 = 1;
const OFF_SEQ: usize = 1;
const OFF_GEN: usize = 9;
const OFF_FIRST_SEEN: usize = 17;
const OFF_LAST_MODIFIED: usize = 25;
const OFF_ACTION: usize = 33;
const OFF_FLAGS: usize = 34;
const OFF_DELETED_AT: usize = 35;
const OFF_PRUNED_AT: usize = 43;
const OFF_CURSOR_LEN: usize = 51;
const HEADER: usize = 55;
const FLAG_DELETED_AT: u8 = 1;
const FLAG_PRUNED_AT: u8 = 2;
/// The record is a tombstone (`Metadata::is_deleted`), for filtering without decoding.
const FLAG_DELETED: u8 = 4;

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn encode_record(seq: u64, seen_gen: u64, meta: &Metadata, payload: &[u8]) -> Vec<u8> {
    let cursor = meta.cursor.as_str().as_bytes();
    let mut v = Vec::with_capacity(HEADER + cursor.len() + payload.len());
    v.push(RECORD_VERSION);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&seen_gen.to_be_bytes());
    v.extend_from_slice(&meta.first_seen_at.as_micros().to_be_bytes());
    v.extend_from_slice(&meta.last_modified_at.as_micros().to_be_bytes());
    v.push(meta.last_action.code());
    let mut flags = 0;
    if meta.deleted_at.is_some() {
        flags |= FLAG_DELETED_AT;
    }
    if meta.pruned_at.is_some() {
        flags |= FLAG_PRUNED_AT;
    }
    if meta.is_deleted() {
        flags |= FLAG_DELETED;
    }
    v.push(flags);
    v.extend_from_slice(
        &meta
            .deleted_at
            .map_or(0, Timestamp::as_micros)
            .to_be_bytes(),
    );
    v.extend_from_slice(&meta.pruned_at.map_or(0, Timestamp::as_micros).to_be_bytes());
    v.extend_from_slice(&(cursor.len() as u32).to_be_bytes());
    v.extend_from_slice(cursor);
    v.extend_from_slice(payload);
    v
}

/// A checked view of an encoded record value.
struct RecordView<'a> {
    bytes: &'a [u8],
    cursor_end: usize,
}

impl<'a> RecordView<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(bytes).map_err(corrupt)
    }

    /// The view, or what is wrong with the value.
    fn parse(bytes: &'a [u8]) -> std::result::Result<Self, &'static str> {
        if bytes.len() < HEADER || bytes[0] != RECORD_VERSION {
            return Err("record value has an unknown layout");
        }
        let len =
            u32::from_be_bytes(bytes[OFF_CURSOR_LEN..HEADER].try_into().expect("4 bytes")) as usize;
        let cursor_end = HEADER + len;
        if bytes.len() < cursor_end {
            return Err("record value is truncated");
        }
        Ok(RecordView { bytes, cursor_end })
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn ts_at(&self, at: usize) -> Timestamp {
        Timestamp::from_micros(self.u64_at(at) as i64)
    }

    fn seen_gen(&self) -> u64 {
        self.u64_at(OFF_GEN)
    }

    fn deleted(&self) -> bool {
        self.bytes[OFF_FLAGS] & FLAG_DELETED != 0
    }

    fn cursor(&self) -> Result<&'a str> {
        std::str::from_utf8(&self.bytes[HEADER..self.cursor_end])
            .map_err(|_| corrupt("cursor is not UTF-8"))
    }

    fn payload_bytes(&self) -> &'a [u8] {
        &self.bytes[self.cursor_end..]
    }

    fn version(&self) -> Result<StoredVersionBuf> {
        Ok(StoredVersionBuf {
            last_modified_at: self.ts_at(OFF_LAST_MODIFIED),
            cursor: self.cursor()?.to_owned(),
            deleted: self.deleted(),
        })
    }

    fn to_record(&self, id: String) -> Result<StoredRecord> {
        let flags = self.bytes[OFF_FLAGS];
        let last_action = LastAction::from_code(self.bytes[OFF_ACTION])
            .ok_or_else(|| corrupt("unknown last action"))?;
        let payload = std::str::from_utf8(self.payload_bytes())
            .map_err(|_| corrupt("payload is not UTF-8"))?;
        Ok(StoredRecord {
            id,
            payload: RawJson::from_trusted(payload),
            meta: Metadata {
                first_seen_at: self.ts_at(OFF_FIRST_SEEN),
                last_modified_at: self.ts_at(OFF_LAST_MODIFIED),
                last_action,
                deleted_at: (flags & FLAG_DELETED_AT != 0).then(|| self.ts_at(OFF_DELETED_AT)),
                pruned_at: (flags & FLAG_PRUNED_AT != 0).then(|| self.ts_at(OFF_PRUNED_AT)),
                cursor: Cursor(self.cursor()?.to_owned()),
            },
            seq: self.u64_at(OFF_SEQ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_length_prefixed() {
        let a = StreamKey::new("ab", "c", "M");
        let b = StreamKey::new("a", "bc", "M");
        assert_ne!(index_key(&a), index_key(&b));
    }

    #[test]
    fn record_values_round_trip() {
        let meta = Metadata {
            first_seen_at: Timestamp::from_micros(-5),
            last_modified_at: Timestamp::from_micros(1_790_000_000_123_456),
            last_action: LastAction::Deleted,
            deleted_at: Some(Timestamp::from_micros(7)),
            pruned_at: None,
            cursor: Cursor("c'ü".into()),
        };
        let v = encode_record(9, 3, &meta, br#"{"id":"x"}"#);
        let view = RecordView::new(&v).unwrap();
        assert!(view.deleted());
        assert_eq!(view.seen_gen(), 3);
        let r = view.to_record("x".into()).unwrap();
        assert_eq!(
            (r.meta, r.seq, r.payload.as_str()),
            (meta, 9, r#"{"id":"x"}"#)
        );
        assert!(RecordView::new(&v[..HEADER + 1]).is_err());
    }
}
