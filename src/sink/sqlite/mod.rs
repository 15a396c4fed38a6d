//! The SQLite store (feature `sqlite`): one file, WAL mode, one writer, many readers.
//!
//! # Layout
//!
//! | table | what |
//! |---|---|
//! | `nango_streams` | one row per stream: key, cursor, full re-read generations, counters, live and deleted record counts, last run |
//! | `nango_records` | one row per record: payload (JSON text, as received), metadata, the generation that last saw it, `seq` (the commit that last changed it) and `change_kind` (what that change did); a rowid table (new rows are appended whatever their id) with a unique index on `(stream_id, id)` |
//! | `nango_feed_commits` | the change feed's index, one row per commit (per 1,000 ids): the ids it changed (a JSON array in byte order), its stream, and on its first row how many of them it is still the last change of; keyed `seq * 2^20 + chunk`, written and retired by the commits themselves |
//! | `nango_meta` | schema version and the store's last commit sequence number |
//! | `nango_consumers` | the change feed's named consumers and their positions |
//! | `nango_records_view` | records joined with their stream key, for people reading the file with `sqlite3` |
//! | `nango_outbox` | the outbox: actions to deliver to Nango, which an application may insert into in its own transaction (columns: [`crate::sink::outbox`]) |
//!
//! The schema is created and upgraded by versioned migrations
//! (`src/sink/sqlite/migrations/`) when a file is opened.
//!
//! # Atomicity and durability
//!
//! A [`Commit`] is one `BEGIN IMMEDIATE` transaction: the records, the stream's cursor,
//! counters and sequence number are all written, or none is. The database runs in WAL
//! mode. With the default `synchronous=NORMAL`, a process crash loses nothing committed;
//! a power loss or OS crash can roll back the last commits (always whole commits, so the
//! cursor never gets ahead of the records). [`SqliteOptions::with_synchronous_full`]
//! makes every commit durable on disk before it returns, at a cost in throughput.
//!
//! No commit copies the WAL back into the database file: a thread of the store does it
//! between commits (see `checkpoint.rs`), so a commit's latency does not include a
//! checkpoint, and the WAL stays bounded.
//!
//! # Threads
//!
//! `rusqlite` is blocking. The writer connection is used only inside
//! `tokio::task::spawn_blocking`, behind a mutex; reads take connections of their own
//! from a small pool, so they run while a commit is in progress and see the state
//! before or after it, never a mix.
//!
//! # Files
//!
//! `mod.rs` the store and its [`RecordSink`] implementation, `options.rs`
//! [`SqliteOptions`], `schema.rs` and `migrations/` the schema, `apply.rs` a commit
//! applied, `rows.rs` rows and their values, `error.rs` the error mapping, `feed.rs`
//! the change feed, consumers and the commit watcher, `history.rs` the run history,
//! `outbox.rs` the outbox, `checkpoint.rs` the WAL checkpoint in a thread of its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::feed::{ChangeBatch, ChangeQuery, Consumer, FeedPosition, RecordCounts};
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
mod checkpoint;
mod error;
mod feed;
mod history;
mod options;
mod outbox;
mod rows;
mod schema;
mod writer;

use error::{sql_err, task_err};
pub use options::SqliteOptions;
use rows::{RECORD_COLUMNS, ensure_stream, record_from_row, stream_row};

const BACKEND: &str = "sqlite";

/// A store in one SQLite file (see the module documentation).
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    options: SqliteOptions,
    feed: Arc<feed::FeedState>,
    /// The writer lock, once this handle has written (`writer.rs`).
    writer_lock: std::sync::OnceLock<Arc<crate::sink::process_lock::ProcessLock>>,
    checkpointer: checkpoint::Checkpointer,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside a transaction rolls it back when the transaction is dropped, so
    // the connection behind a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Open (or create) the store at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Open (or create) the store at `path`.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (p, o) = (path.clone(), options.clone());
        let (writer, last_seq) = tokio::task::spawn_blocking(move || {
            let writer = open_writer(&p, &o)?;
            let last_seq = feed::last_seq(&writer).map_err(|e| sql_err("open", e))?;
            Ok::<_, Error>((writer, last_seq))
        })
        .await
        .map_err(|e| task_err("open", e))??;
        let writer = Arc::new(Mutex::new(writer));
        let checkpointer = checkpoint::Checkpointer::start(
            &path,
            options.busy_timeout,
            options.wal_autocheckpoint,
            writer.clone(),
        )
        .map_err(|e| {
            Error::store(
                BACKEND,
                "open",
                true,
                format!("cannot start the checkpoint thread: {e}"),
            )
        })?;
        Ok(SqliteStore {
            path,
            writer,
            readers: Arc::default(),
            options,
            feed: Arc::new(feed::FeedState::new(last_seq)),
            writer_lock: std::sync::OnceLock::new(),
            checkpointer,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Faults) -> Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        let faults = self.options.faults.clone();
        let out = tokio::task::spawn_blocking(move || f(&mut lock(&writer), &faults))
            .await
            .map_err(|e| task_err(operation, e))?;
        // What was written is in the WAL: the checkpointer copies it back later.
        self.checkpointer.committed();
        out
    }

    async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let busy = self.options.busy_timeout;
        tokio::task::spawn_blocking(move || {
            let conn = lock(&readers).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&path, busy)?,
            };
            let out = f(&conn);
            let mut pool = lock(&readers);
            if pool.len() < 4 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| task_err(operation, e))?
    }

    /// Set one text column of the stream's row (`last_run` or `upstream_error`),
    /// creating the row if needed.
    async fn set_stream_column(
        &self,
        stream: &StreamKey,
        operation: &'static str,
        column: &'static str,
        value: Option<String>,
    ) -> Result<()> {
        let key = stream.clone();
        self.write(operation, move |c, _| {
            let e = |e| sql_err(operation, e);
            let (id, _) = ensure_stream(c, &key).map_err(e)?;
            // `column` is one of two fixed names, never input.
            c.prepare_cached(&format!(
                "UPDATE nango_streams SET {column} = ?2 WHERE stream_id = ?1"
            ))
            .map_err(e)?
            .execute(params![id, value])
            .map_err(e)?;
            Ok(())
        })
        .await
    }
}

fn open_writer(path: &Path, o: &SqliteOptions) -> Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Error::store(
            BACKEND,
            "open",
            false,
            format!(
                "the directory {} of the database file does not exist",
                parent.display()
            ),
        ));
    }
    let open_err = |e: rusqlite::Error| sql_err(&format!("open {}", path.display()), e);
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(o.busy_timeout).map_err(open_err)?;
    // page_size only takes effect on a new (empty) database, before WAL is on.
    conn.execute_batch(&format!("PRAGMA page_size = {};", o.page_size))
        .map_err(open_err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::store(
            BACKEND,
            "open",
            false,
            format!("could not enable WAL mode (got {mode})"),
        ));
    }
    conn.execute_batch(&format!(
        // No automatic checkpoint inside a commit: the store's checkpoint thread does it.
        "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = 0; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;",
        if o.synchronous_full { "FULL" } else { "NORMAL" },
    ))
    .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    schema::migrate(&mut conn)?;
    if let Some(n) = o.max_page_count {
        conn.query_row(&format!("PRAGMA max_page_count = {n}"), [], |_| Ok(()))
            .map_err(open_err)?;
    }
    Ok(conn)
}

fn open_reader(path: &Path, busy: Duration) -> Result<Connection> {
    let err = |e| sql_err("open a read connection", e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(err)?;
    conn.busy_timeout(busy).map_err(err)?;
    Ok(conn)
}

impl RecordSink for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        let key = stream.clone();
        self.read("read the stream state", move |c| {
            Ok(stream_row(c, &key)
                .map_err(|e| sql_err("read the stream state", e))?
                .map(|r| r.1)
                .unwrap_or_default())
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        let flusher = self.checkpointer.flusher();
        tokio::task::spawn_blocking(move || flusher.flush())
            .await
            .map_err(|e| task_err("flush", e))?
            .map_err(|f| Error::store(BACKEND, "flush", f.retryable, f.detail))
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.claim().await?;
        let outcome = self
            .write("commit", move |c, faults| apply::commit(c, faults, commit))
            .await?;
        if outcome.counts.changed() > 0 {
            self.feed.signal.committed(outcome.seq);
        }
        Ok(outcome)
    }

    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        let key = stream.clone();
        let id = id.to_owned();
        self.read("get a record", move |c| {
            let e = |e| sql_err("get a record", e);
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM nango_records WHERE id = ?5 AND stream_id =
                 (SELECT stream_id FROM nango_streams WHERE integration = ?1 AND connection = ?2 AND model = ?3 AND variant = ?4)"
            );
            c.prepare_cached(&sql)
                .map_err(e)?
                .query_row(params![key.integration, key.connection, key.model, key.variant, id], record_from_row)
                .optional()
                .map_err(e)
        })
        .await
    }

    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        let key = stream.clone();
        let query = query.clone();
        self.read("list records", move |c| {
            let e = |e| sql_err("list records", e);
            let deleted_filter = feed::kind_condition(&query);
            let after = if query.after_id.is_some() { "AND id > ?5" } else { "AND ?5 IS NULL" };
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM nango_records r WHERE stream_id =
                 (SELECT stream_id FROM nango_streams WHERE integration = ?1 AND connection = ?2 AND model = ?3 AND variant = ?4)
                 {after} {deleted_filter} ORDER BY id LIMIT ?6"
            );
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let mut stmt = c.prepare_cached(&sql).map_err(e)?;
            let rows = stmt
                .query_map(
                    params![key.integration, key.connection, key.model, key.variant, query.after_id, limit],
                    record_from_row,
                )
                .map_err(e)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
        })
        .await
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        let error = error.map(str::to_owned);
        self.set_stream_column(stream, "record the upstream error", "upstream_error", error)
            .await
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        self.read("list streams", |c| {
            let e = |e| sql_err("list streams", e);
            let mut stmt = c.prepare_cached(&rows::statuses_sql()).map_err(e)?;
            let rows = stmt.query_map([], rows::status_from_row).map_err(e)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
        })
        .await
    }

    // The run history (`history.rs`).

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        let (key, run) = (stream.clone(), run.clone());
        self.write("record the run", move |c, _| {
            history::record(c, &key, &run, keep)
        })
        .await
    }

    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        let key = stream.clone();
        self.read("read the last run", move |c| history::last_run(c, &key))
            .await
    }

    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        let query = query.clone();
        self.read("read the run history", move |c| history::read(c, &query))
            .await
    }

    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        let key = stream.clone();
        self.read("read the stream status", move |c| {
            history::stream_status(c, &key)
        })
        .await
    }

    // The application's side: see `feed.rs`.

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        self.feed_changes(query).await
    }

    async fn last_seq(&self) -> Result<u64> {
        self.feed_last_seq().await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_subscribe()
    }

    async fn consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        self.feed_consumer_position(consumer).await
    }

    async fn ack(&self, consumer: &str, position: &FeedPosition) -> Result<FeedPosition> {
        self.feed_ack(consumer, position).await
    }

    async fn consumers(&self) -> Result<Vec<Consumer>> {
        self.feed_consumers().await
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<bool> {
        self.feed_remove_consumer(consumer).await
    }

    async fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        self.feed_count(stream).await
    }

    // The outbox (`outbox.rs`).

    async fn outbox_enqueue(&self, item: NewOutboxItem) -> Result<OutboxItem> {
        self.write("enqueue an outbox item", move |c, _| {
            outbox::enqueue(c, item)
        })
        .await
    }

    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        let request = request.clone();
        self.write("claim an outbox item", move |c, _| {
            outbox::claim(c, &request)
        })
        .await
    }

    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        let claim = claim.clone();
        self.write("extend an outbox lease", move |c, _| {
            outbox::extend(c, &claim, until, now)
        })
        .await
    }

    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        let claim = claim.clone();
        self.write("settle an outbox item", move |c, _| {
            outbox::settle(c, &claim, settlement, now)
        })
        .await
    }

    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        self.read("read an outbox item", move |c| outbox::get(c, id))
            .await
    }

    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        let query = query.clone();
        self.read("list outbox items", move |c| outbox::list(c, &query))
            .await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.read("count outbox items", outbox::counts).await
    }

    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        self.write("purge outbox items", move |c, _| {
            outbox::purge(c, finished_before)
        })
        .await
    }

    // Writers (`writer.rs`).
    async fn claim_writer(&self) -> Result<()> {
        self.claim().await
    }
}

#[cfg(test)]
mod tests {
    use super::schema::{SCHEMA_VERSION, schema_version};
    use super::*;
    use crate::feed::ChangeKind;
    use crate::record::{Cursor, LastAction, Metadata, RawJson, Record};
    use crate::sink::{FullRead, full};
    use crate::time::Timestamp;

    fn record(id: &str, lma: i64, action: LastAction, payload: &str) -> Record {
        Record {
            id: id.into(),
            payload: RawJson::from_trusted(payload),
            payload_is_bare: payload == format!(r#"{{"id":"{id}"}}"#),
            meta: Metadata {
                first_seen_at: Timestamp::from_micros(1),
                last_modified_at: Timestamp::from_micros(lma),
                last_action: action,
                deleted_at: (action == LastAction::Deleted).then_some(Timestamp::from_micros(lma)),
                pruned_at: None,
                cursor: Cursor(format!("c-{id}-{lma}")),
            },
        }
    }

    /// Commit records `ids` (each added at its time, its payload padded with `filler`) on
    /// top of the cursor `expected`, which moves to `cursor`.
    async fn commit_padded(
        store: &SqliteStore,
        stream: &StreamKey,
        expected: &mut Option<Cursor>,
        ids: impl Iterator<Item = (String, i64)>,
        filler: &str,
        cursor: String,
    ) {
        let records = ids
            .map(|(id, t)| {
                let payload = format!(r#"{{"id":"{id}","f":"{filler}"}}"#);
                record(&id, t, LastAction::Added, &payload)
            })
            .collect();
        let cursor = Some(Cursor(cursor));
        store
            .commit(Commit::new(
                stream.clone(),
                expected.clone(),
                cursor.clone(),
                records,
            ))
            .await
            .unwrap();
        *expected = cursor;
    }

    /// A database written by schema 1 (records in a `WITHOUT ROWID` table).
    const SCHEMA_1: &str = "
        CREATE TABLE nango_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE nango_streams (
            stream_id INTEGER PRIMARY KEY, integration TEXT NOT NULL, connection TEXT NOT NULL,
            model TEXT NOT NULL, variant TEXT NOT NULL, cursor TEXT,
            generation INTEGER NOT NULL DEFAULT 0, full_read INTEGER,
            added INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0, unchanged INTEGER NOT NULL DEFAULT 0,
            stale INTEGER NOT NULL DEFAULT 0, last_run TEXT, upstream_error TEXT,
            UNIQUE (integration, connection, model, variant));
        CREATE TABLE nango_records (
            stream_id INTEGER NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL,
            first_seen_at INTEGER NOT NULL, last_modified_at INTEGER NOT NULL,
            last_action INTEGER NOT NULL, deleted_at INTEGER, pruned_at INTEGER,
            cursor TEXT NOT NULL, seen_gen INTEGER NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY (stream_id, id)) WITHOUT ROWID;
        CREATE VIEW nango_records_view AS
            SELECT s.integration, s.connection, s.model, s.variant, r.id, r.payload,
                   r.last_action IN (3) OR r.deleted_at IS NOT NULL AS deleted,
                   r.last_modified_at, r.seq
            FROM nango_records r JOIN nango_streams s ON s.stream_id = r.stream_id;
        INSERT INTO nango_meta VALUES ('last_seq', 2), ('schema_version', 1);
        INSERT INTO nango_streams (stream_id, integration, connection, model, variant, cursor, added, deleted)
            VALUES (7, 'github', 'acme', 'Ticket', 'base', 'c2', 2, 1);
        INSERT INTO nango_records VALUES
            (7, 'a', '{\"id\":\"a\",\"v\":1}', 1, 11, 3, 11, NULL, 'c-a-11', 0, 2),
            (7, 'b', '{\"id\":\"b\"}', 1, 10, 1, NULL, NULL, 'c-b-10', 0, 1);";

    #[tokio::test]
    async fn a_schema_1_file_is_migrated_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA_1)
            .unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            store.stream_state(&stream).await.unwrap().cursor,
            Some(Cursor("c2".into()))
        );
        let a = store.get(&stream, "a").await.unwrap().unwrap();
        assert!(a.is_deleted());
        assert_eq!(a.payload.as_str(), r#"{"id":"a","v":1}"#);
        assert_eq!((a.seq, a.meta.cursor.as_str()), (2, "c-a-11"));
        let live = store.list(&stream, &ListQuery::default()).await.unwrap();
        assert_eq!(
            live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        // The change feed is indexed from the records' `seq`.
        assert_eq!(
            feed_of(&store).await,
            [
                (1, "b".to_string(), ChangeKind::Added),
                (2, "a".to_string(), ChangeKind::Deleted)
            ]
        );
        // The migrated file takes new commits, which continue its sequence.
        let out = store
            .commit(Commit::new(
                stream.clone(),
                Some(Cursor("c2".into())),
                Some(Cursor("c3".into())),
                vec![
                    record("b", 12, LastAction::Updated, r#"{"id":"b","v":2}"#),
                    record("c", 12, LastAction::Added, r#"{"id":"c"}"#),
                ],
            ))
            .await
            .unwrap();
        assert_eq!((out.seq, out.counts.updated, out.counts.added), (3, 1, 1));
        assert_eq!(
            feed_of(&store).await,
            [
                (2, "a".to_string(), ChangeKind::Deleted),
                (3, "b".to_string(), ChangeKind::Updated),
                (3, "c".to_string(), ChangeKind::Added)
            ]
        );
        drop(store);
        // Commit 1 lost its last record to commit 3: its list is gone.
        assert_eq!(
            feed_rows(&Connection::open(&path).unwrap()),
            [(2 << 20, Some(1)), (3 << 20, Some(2))]
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), Some(SCHEMA_VERSION));
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM nango_records_view", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3);
        // Reopening a current file changes nothing.
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.get(&stream, "c").await.unwrap().unwrap().seq, 3);
    }

    /// Every change of the feed: seq, id, kind.
    async fn feed_of(store: &SqliteStore) -> Vec<(u64, String, ChangeKind)> {
        store
            .changes(&ChangeQuery::since(0).with_limit(usize::MAX))
            .await
            .unwrap()
            .changes
            .into_iter()
            .map(|c| (c.record.seq, c.record.id, c.kind))
            .collect()
    }

    /// The feed's index: each row's key and `live`.
    fn feed_rows(conn: &Connection) -> Vec<(i64, Option<i64>)> {
        conn.prepare("SELECT key, live FROM nango_feed_commits ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_large_commit_of_an_old_file_is_indexed_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        // 2,500 more records, all changed by commit 2.
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
             INSERT INTO nango_records SELECT 7, printf('r%05d', i), '{}', 1, 10, 1, NULL, NULL,
                 'c', 0, 2 FROM n;",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).await.unwrap();
        let feed = feed_of(&store).await;
        assert_eq!(feed.len(), 2502);
        assert_eq!(feed[0], (1, "b".to_string(), ChangeKind::Added));
        let ids: Vec<&str> = feed[1..].iter().map(|(_, id, _)| id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "a commit's changes in id order");
        assert_eq!((ids[0], ids[1]), ("a", "r00001"));
        drop(store);
        assert_eq!(
            feed_rows(&Connection::open(&path).unwrap()),
            [
                (1 << 20, Some(1)),
                (2 << 20, Some(2501)),
                ((2 << 20) + 1, None),
                ((2 << 20) + 2, None)
            ]
        );
        // Reading from inside the large commit resumes after the position's id.
        let store = SqliteStore::open(&path).await.unwrap();
        let from = FeedPosition {
            seq: 2,
            id: Some("r01500".into()),
        };
        let rest = store
            .changes(&ChangeQuery::since(from).with_limit(usize::MAX))
            .await
            .unwrap();
        assert_eq!(rest.changes.len(), 1000);
        assert_eq!(rest.changes[0].record.id, "r01501");
    }

    #[tokio::test]
    async fn commits_merge_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let stream = StreamKey::new("github", "acme", "Ticket");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            let out = store
                .commit(Commit::new(
                    stream.clone(),
                    None,
                    Some(Cursor("c1".into())),
                    vec![
                        record("a", 10, LastAction::Added, r#"{"id":"a","v":1}"#),
                        record("b", 10, LastAction::Added, r#"{"id":"b"}"#),
                    ],
                ))
                .await
                .unwrap();
            assert_eq!(out.counts.added, 2);
            assert_eq!(out.seq, 1);
            let out = store
                .commit(Commit::new(
                    stream.clone(),
                    Some(Cursor("c1".into())),
                    Some(Cursor("c2".into())),
                    vec![record("a", 11, LastAction::Deleted, r#"{"id":"a"}"#)],
                ))
                .await
                .unwrap();
            assert_eq!(out.counts.deleted, 1);
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            store.stream_state(&stream).await.unwrap().cursor,
            Some(Cursor("c2".into()))
        );
        let a = store.get(&stream, "a").await.unwrap().unwrap();
        assert!(a.is_deleted());
        assert_eq!(
            a.payload.as_str(),
            r#"{"id":"a","v":1}"#,
            "a {{id}}-only delete keeps the payload"
        );
        assert_eq!(a.seq, 2);
        let live = store.list(&stream, &ListQuery::default()).await.unwrap();
        assert_eq!(
            live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        let all = store
            .list(&stream, &ListQuery::default().with_deleted())
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
    }

    /// With a WAL bound of one page, every checkpoint after a commit is a `RESTART`,
    /// which the checkpointer runs holding the writer: commits of several streams and a
    /// reader run meanwhile, every commit lands, and the WAL keeps starting over instead
    /// of growing (to about 20 MB when it never restarts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_run_while_every_checkpoint_restarts_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let options = SqliteOptions::default().with_wal_autocheckpoint(1);
        let store = Arc::new(SqliteStore::open_with(&path, options).await.unwrap());
        let filler = "x".repeat(400);
        let (streams, commits, per_commit) = (3, 60, 20);
        let writers: Vec<_> = (0..streams)
            .map(|s| {
                let (store, filler) = (store.clone(), filler.clone());
                tokio::spawn(async move {
                    let stream = StreamKey::new("github", "acme", format!("M{s}"));
                    let mut expected = None;
                    for c in 0..commits {
                        let ids = (0..per_commit).map(|i| (format!("r{c}-{i}"), 10 + c));
                        let cursor = format!("c{c}");
                        commit_padded(&store, &stream, &mut expected, ids, &filler, cursor).await;
                    }
                    stream
                })
            })
            .collect();
        let reading = {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamKey::new("github", "acme", "M0");
                for _ in 0..200 {
                    store.list(&stream, &ListQuery::default()).await.unwrap();
                }
            })
        };
        for w in writers {
            let stream = w.await.unwrap();
            let counts = store.count(&stream).await.unwrap();
            assert_eq!(counts.live, (commits * per_commit) as u64, "{stream}");
        }
        reading.await.unwrap();
        let wal = std::fs::metadata(dir.path().join("s.db-wal"))
            .unwrap()
            .len();
        assert!(wal < 6 << 20, "the WAL grew to {wal} bytes");
    }

    /// `flush` copies the whole WAL back and empties it: a copy of the database file
    /// alone holds every commit. A reader holding an older snapshot makes it fail,
    /// retryable and naming the cause, with nothing lost; once the reader is done it
    /// succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_empties_the_wal_or_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let options = SqliteOptions::default().with_busy_timeout(Duration::from_millis(200));
        let store = SqliteStore::open_with(&path, options).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let filler = "y".repeat(2000);
        let mut expected = None;
        let mut commit_ids = async |from: usize, to: usize| {
            let ids = (from..to).map(|i| (format!("r{i:04}"), 10 + i as i64));
            commit_padded(
                &store,
                &stream,
                &mut expected,
                ids,
                &filler,
                format!("c{to}"),
            )
            .await;
        };
        let wal = dir.path().join("s.db-wal");
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        let rows_in_file_alone = |name: &str| -> i64 {
            let copy = dir.path().join(name);
            std::fs::copy(&path, &copy).unwrap();
            Connection::open(&copy)
                .unwrap()
                .query_row("SELECT count(*) FROM nango_records", [], |r| r.get(0))
                .unwrap()
        };

        commit_ids(0, 300).await;
        store.flush().await.unwrap();
        assert_eq!(wal_len(), 0, "the WAL is emptied");
        assert_eq!(rows_in_file_alone("copy1.db"), 300);

        commit_ids(300, 400).await;
        assert!(wal_len() > 0, "a commit after the flush is in the WAL");
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM nango_records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 400);
        // A commit after the reader began: the reader's snapshot is older.
        commit_ids(400, 450).await;
        let err = store.flush().await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("reader"), "{err}");
        assert_eq!(store.count(&stream).await.unwrap().live, 450);

        reader.execute_batch("COMMIT").unwrap();
        store.flush().await.unwrap();
        assert_eq!(wal_len(), 0, "the WAL is emptied once the reader is done");
        assert_eq!(rows_in_file_alone("copy2.db"), 450);
        assert_eq!(
            store.stream_state(&stream).await.unwrap().cursor,
            Some(Cursor("c450".into()))
        );
    }

    #[cfg(feature = "fault-injection")]
    #[tokio::test]
    async fn injected_failure_after_records_leaves_nothing() {
        use crate::sink::fault::{FaultInjector, FaultPoint};
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let options = SqliteOptions::new().with_faults(faults.clone());
        let store = SqliteStore::open_with(dir.path().join("s.db"), options)
            .await
            .unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        faults.arm(FaultPoint::AfterRecords);
        let commit = Commit::new(
            stream.clone(),
            None,
            Some(Cursor("c1".into())),
            vec![record("a", 10, LastAction::Added, r#"{"id":"a"}"#)],
        );
        assert!(store.commit(commit.clone()).await.is_err());
        assert_eq!(
            store.stream_state(&stream).await.unwrap(),
            StreamState::default()
        );
        assert!(store.get(&stream, "a").await.unwrap().is_none());
        assert_eq!(
            store.commit(commit).await.unwrap().seq,
            1,
            "the failed commit used no sequence number"
        );
    }

    #[tokio::test]
    async fn completing_full_read_sweeps_unseen_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let mut c = Commit::new(
            stream.clone(),
            None,
            Some(Cursor("c1".into())),
            vec![
                record("a", 10, LastAction::Added, r#"{"id":"a"}"#),
                record("b", 10, LastAction::Added, r#"{"id":"b"}"#),
            ],
        );
        c.full_read = full(1, true);
        store.commit(c).await.unwrap();
        let mut c = Commit::new(
            stream.clone(),
            Some(Cursor("c1".into())),
            Some(Cursor("c1".into())),
            vec![record("a", 10, LastAction::Added, r#"{"id":"a"}"#)],
        );
        c.full_read = full(2, true);
        let out = store.commit(c).await.unwrap();
        assert_eq!(
            (out.swept, out.counts.deleted, out.counts.unchanged),
            (1, 1, 1)
        );
        assert!(store.get(&stream, "b").await.unwrap().unwrap().is_deleted());
        assert!(!store.get(&stream, "a").await.unwrap().unwrap().is_deleted());
        assert_eq!(store.stream_state(&stream).await.unwrap().generation, 2);
    }

    /// A stream's kept count (generation, count) and the true count of its live records
    /// stamped with that generation.
    type Counted = (Option<i64>, Option<i64>, i64);

    /// The sweeps that scanned the database at `path`, and its streams' counts.
    fn scans_and_counts(path: &std::path::Path) -> (u64, Vec<Counted>) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let canonical = conn.path().unwrap().to_owned();
        let scans = apply::SWEEP_SCANS
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == canonical)
            .map_or(0, |(_, n)| *n);
        let mut q = conn
            .prepare(
                "SELECT s.seen_live_generation, s.seen_live_count,
                        (SELECT count(*) FROM nango_records r WHERE r.stream_id = s.stream_id
                           AND r.seen_gen = s.seen_live_generation
                           AND r.deleted_at IS NULL AND r.last_action != 3)
                 FROM nango_streams s ORDER BY s.stream_id",
            )
            .unwrap();
        let counts = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        (scans, counts)
    }

    #[tokio::test]
    async fn a_full_read_that_saw_every_live_record_skips_the_sweeps_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let mut cursor: Option<Cursor> = None;
        let mut t = 10;
        let mut page = async |ids: &[&str], full: Option<(u64, bool)>| {
            t += 1;
            let records = ids
                .iter()
                .map(|id| {
                    let action = if id.starts_with('-') {
                        LastAction::Deleted
                    } else {
                        LastAction::Added
                    };
                    let id = id.trim_start_matches('-');
                    record(id, t, action, &format!(r#"{{"id":"{id}","t":{t}}}"#))
                })
                .collect();
            let next = Some(Cursor(format!("c{t}")));
            let mut c = Commit::new(stream.clone(), cursor.clone(), next.clone(), records);
            c.full_read = full.map(|(generation, complete)| FullRead {
                generation,
                complete,
            });
            let out = store.commit(c).await.unwrap();
            cursor = next;
            let (scans, counts) = scans_and_counts(&path);
            if let [(Some(_), Some(kept), actual)] = counts[..] {
                assert_eq!(kept, actual, "the kept count is exact");
            }
            (out.swept, scans, counts[0].0.zip(counts[0].1))
        };

        // A first sync: counted from 0, no scan.
        page(&["a", "b"], Some((1, false))).await;
        assert_eq!(page(&["c"], Some((1, true))).await, (0, 0, Some((1, 3))));
        // Incremental commits stamp the stream's generation: still counted, deletions
        // included.
        assert_eq!(page(&["d", "-a"], None).await, (0, 0, Some((1, 3))));
        // A re-read that misses "b": the count says so, the sweep scans and marks it
        // deleted, and the count is exact again after the scan.
        page(&["c"], Some((2, false))).await;
        assert_eq!(page(&["d"], Some((2, true))).await, (1, 1, Some((2, 2))));
        assert!(store.get(&stream, "b").await.unwrap().unwrap().is_deleted());
        // A re-read that sees every live record: no scan.
        page(&["c", "d"], Some((3, false))).await;
        assert_eq!(page(&[], Some((3, true))).await, (0, 1, Some((3, 2))));
        // A record rewritten outside the re-read with the stream's older generation
        // leaves the count: the sweep scans, and marks it deleted, as a scan always did.
        page(&["c", "d"], Some((4, false))).await;
        page(&["c"], None).await;
        assert_eq!(page(&["d"], Some((4, true))).await, (1, 2, Some((4, 1))));
        assert!(store.get(&stream, "c").await.unwrap().unwrap().is_deleted());
        // A re-read that sees "d" again unchanged (a seen mark, no write) counts it: no
        // scan.
        let d = store.get(&stream, "d").await.unwrap().unwrap();
        let unchanged = Record {
            id: d.id,
            payload: d.payload,
            payload_is_bare: false,
            meta: d.meta,
        };
        let mut c = Commit::new(
            stream.clone(),
            cursor.clone(),
            cursor.clone(),
            vec![unchanged],
        );
        c.full_read = full(5, true);
        let out = store.commit(c).await.unwrap();
        assert_eq!((out.counts.unchanged, out.swept), (1, 0));
        assert_eq!(scans_and_counts(&path), (2, vec![(Some(5), Some(1), 1)]));
    }

    #[tokio::test]
    async fn a_stream_without_a_count_is_scanned_once_then_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let c = Commit::new(
            stream.clone(),
            None,
            Some(Cursor("c1".into())),
            vec![
                record("a", 10, LastAction::Added, r#"{"id":"a","v":1}"#),
                record("b", 10, LastAction::Added, r#"{"id":"b","v":1}"#),
            ],
        );
        store.commit(c).await.unwrap();
        // As a stream of a file written before the count existed.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "UPDATE nango_streams SET seen_live_generation = NULL, seen_live_count = NULL",
            )
            .unwrap();
        let mut c = Commit::new(
            stream.clone(),
            Some(Cursor("c1".into())),
            Some(Cursor("c2".into())),
            vec![record("a", 11, LastAction::Updated, r#"{"id":"a","v":2}"#)],
        );
        c.full_read = full(1, true);
        assert_eq!(store.commit(c).await.unwrap().swept, 1);
        assert_eq!(scans_and_counts(&path), (1, vec![(Some(1), Some(1), 1)]));
        let mut c = Commit::new(
            stream.clone(),
            Some(Cursor("c2".into())),
            Some(Cursor("c3".into())),
            vec![record("a", 12, LastAction::Updated, r#"{"id":"a","v":3}"#)],
        );
        c.full_read = full(2, true);
        assert_eq!(store.commit(c).await.unwrap().swept, 0);
        assert_eq!(scans_and_counts(&path).0, 1, "counted from then on");
    }

    #[tokio::test]
    async fn a_stream_row_whose_live_count_is_off_still_commits_and_keeps_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        let mut c = Commit::new(
            stream.clone(),
            None,
            Some(Cursor("c1".into())),
            vec![record("a", 10, LastAction::Added, r#"{"id":"a","v":1}"#)],
        );
        c.full_read = full(1, true);
        store.commit(c).await.unwrap();
        // As if rows had been counted wrong, or removed and counted by hand.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE nango_streams SET live_records = 0")
            .unwrap();
        let c = Commit::new(
            stream.clone(),
            Some(Cursor("c1".into())),
            Some(Cursor("c2".into())),
            vec![record("a", 11, LastAction::Deleted, r#"{"id":"a"}"#)],
        );
        assert_eq!(store.commit(c).await.unwrap().counts.deleted, 1);
        assert!(store.get(&stream, "a").await.unwrap().unwrap().is_deleted());
        assert_eq!(scans_and_counts(&path).1, vec![(None, None, 0)]);
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_error() {
        let err = SqliteStore::open("/nonexistent-dir-for-nango-sync/x.db")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
