//! The SQLite store (feature `sqlite`): one file, WAL mode, one writer, many readers.
//!
//! # Layout
//!
//! | table | what |
//! |---|---|
//! | `nango_streams` | one row per stream: key, cursor, full re-read generations, counters, last run |
//! | `nango_records` | one row per record: payload (JSON text, as received), metadata, the generation that last saw it, and `seq`, the commit that last changed it; a rowid table (new rows are appended whatever their id) with a unique index on `(stream_id, id)` |
//! | `nango_meta` | schema version and the store's last commit sequence number |
//! | `nango_records_view` | records joined with their stream key, for people reading the file with `sqlite3` |
//!
//! # Atomicity and durability
//!
//! A [`Commit`] is one `BEGIN IMMEDIATE` transaction: the records, the stream's cursor,
//! counters and sequence number are all written, or none is. The database runs in WAL
//! mode. With the default `synchronous=NORMAL`, a process crash loses nothing committed;
//! a power loss or OS crash can roll back the last commits (always whole commits, so the
//! cursor never gets ahead of the records). [`SqliteOptions::synchronous_full`] makes
//! every commit durable on disk before it returns, at a cost in throughput.
//!
//! # Threads
//!
//! `rusqlite` is blocking. The writer connection is used only inside
//! `tokio::task::spawn_blocking`, behind a mutex; reads take connections of their own
//! from a small pool, so they run while a commit is in progress and see the state
//! before or after it, never a mix.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::merge::{Counts, PayloadSource, StoredVersionBuf, plan_page};
use crate::record::{Cursor, LastAction, Metadata, RawJson, StoredRecord, StreamKey};
use crate::sink::memory::{check_cursor, next_state, stamp_generation};
use crate::sink::{
    Commit, CommitOutcome, FaultInjector, FaultPoint, ListQuery, RecordSink, RunSummary,
    StreamState, StreamStatus,
};
use crate::time::Timestamp;

const BACKEND: &str = "sqlite";
const SCHEMA_VERSION: i64 = 2;
const DELETED: i64 = 3;

/// Options of a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// `PRAGMA synchronous=FULL` instead of `NORMAL` (see the module documentation).
    pub synchronous_full: bool,
    /// How long a connection waits for a lock held by another process before failing
    /// with a retryable "database is busy" error (default 5 s).
    pub busy_timeout: Duration,
    /// Page size of a new database file, in bytes (default 16 KiB).
    pub page_size: u32,
    /// WAL size, in pages, at which SQLite checkpoints (default 4096: 64 MiB with 16 KiB pages).
    pub wal_autocheckpoint: u32,
    /// A cap on the database size, in pages (`PRAGMA max_page_count`; `None`: SQLite's
    /// default). A commit that would grow the file past it fails like a full disk
    /// (`SQLITE_FULL`) and the store keeps its last committed state.
    pub max_page_count: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
            page_size: 16 * 1024,
            wal_autocheckpoint: 4096,
            max_page_count: None,
        }
    }
}

/// A store in one SQLite file (see the module documentation).
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    options: SqliteOptions,
    faults: Arc<FaultInjector>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

fn sql_err(operation: &str, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        )
    {
        return Error::damaged(BACKEND, operation, e.to_string());
    }
    let retryable = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    let detail = match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            format!(
                "{e} (the disk is full: free space and retry; the store keeps its last committed state)"
            )
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            format!("{e} (another process holds a lock on the database)")
        }
        _ => e.to_string(),
    };
    Error::store(BACKEND, operation, retryable, detail)
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
        let writer = tokio::task::spawn_blocking(move || open_writer(&p, &o))
            .await
            .map_err(|e| Error::store(BACKEND, "open", false, e.to_string()))??;
        Ok(SqliteStore {
            path,
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::default(),
            options,
            faults: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &FaultInjector) -> Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&writer), &faults))
            .await
            .map_err(|e| {
                Error::store(
                    BACKEND,
                    operation,
                    false,
                    format!("the writer task failed: {e}"),
                )
            })?
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
        .map_err(|e| {
            Error::store(
                BACKEND,
                operation,
                false,
                format!("the reader task failed: {e}"),
            )
        })?
    }
}

impl SqliteStore {
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
        "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = {}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;",
        if o.synchronous_full { "FULL" } else { "NORMAL" },
        o.wal_autocheckpoint
    ))
    .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn)?;
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

fn migrate(conn: &mut Connection) -> Result<()> {
    let err = |e| sql_err("migrate the schema", e);
    let current = schema_version(conn).map_err(err)?;
    if current == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    // The version is read again inside the write transaction, so two processes opening
    // a new file at once migrate it once.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS nango_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .map_err(err)?;
    let version = schema_version(&tx).map_err(err)?;
    match version {
        Some(v) if v == SCHEMA_VERSION => return tx.commit().map_err(err),
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Error::store(
                BACKEND,
                "open",
                false,
                format!(
                    "the database has schema version {v}, newer than this nango-sync ({SCHEMA_VERSION}); upgrade nango-sync"
                ),
            ));
        }
        _ => {}
    }
    let ddl = match version {
        // An empty file: the current schema.
        None => format!("{STREAMS_DDL}{RECORDS_DDL}{VIEW_DDL}"),
        // Schema 1 kept records in a `WITHOUT ROWID` table clustered on (stream_id, id):
        // rows of a few hundred bytes made every insert at a random key split pages.
        // Copy them into the rowid table of schema 2.
        Some(_) => format!(
            "DROP VIEW IF EXISTS nango_records_view;
             ALTER TABLE nango_records RENAME TO nango_records_v1;
             {RECORDS_DDL}
             INSERT INTO nango_records (stream_id, id, payload, first_seen_at, last_modified_at, last_action,
                                        deleted_at, pruned_at, cursor, seen_gen, seq)
                 SELECT stream_id, id, payload, first_seen_at, last_modified_at, last_action,
                        deleted_at, pruned_at, cursor, seen_gen, seq
                 FROM nango_records_v1 ORDER BY stream_id, id;
             DROP TABLE nango_records_v1;
             {VIEW_DDL}"
        ),
    };
    tx.execute_batch(&format!(
        "{ddl}
         INSERT OR IGNORE INTO nango_meta (key, value) VALUES ('last_seq', 0);
         INSERT OR REPLACE INTO nango_meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION});"
    ))
    .map_err(err)?;
    tx.commit().map_err(err)
}

/// The schema version the file records; `None` for a new file.
fn schema_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nango_meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM nango_meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .optional()
}

const STREAMS_DDL: &str = "
    CREATE TABLE IF NOT EXISTS nango_streams (
        stream_id INTEGER PRIMARY KEY,
        integration TEXT NOT NULL,
        connection TEXT NOT NULL,
        model TEXT NOT NULL,
        variant TEXT NOT NULL,
        cursor TEXT,
        generation INTEGER NOT NULL DEFAULT 0,
        full_read INTEGER,
        added INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        unchanged INTEGER NOT NULL DEFAULT 0,
        stale INTEGER NOT NULL DEFAULT 0,
        last_run TEXT,
        upstream_error TEXT,
        UNIQUE (integration, connection, model, variant)
    );";

/// Records live in a rowid table (new rows are appended, whatever their id) with a
/// unique index on the key; `record_id` is internal and never shown.
const RECORDS_DDL: &str = "
    CREATE TABLE nango_records (
        record_id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL,
        id TEXT NOT NULL,
        payload TEXT NOT NULL,
        first_seen_at INTEGER NOT NULL,
        last_modified_at INTEGER NOT NULL,
        last_action INTEGER NOT NULL,
        deleted_at INTEGER,
        pruned_at INTEGER,
        cursor TEXT NOT NULL,
        seen_gen INTEGER NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX nango_records_key ON nango_records (stream_id, id);";

const VIEW_DDL: &str = "
    CREATE VIEW IF NOT EXISTS nango_records_view AS
        SELECT s.integration, s.connection, s.model, s.variant, r.id, r.payload,
               r.last_action IN (3) OR r.deleted_at IS NOT NULL AS deleted,
               r.last_modified_at, r.seq
        FROM nango_records r JOIN nango_streams s ON s.stream_id = r.stream_id;";

/// The id and state of a stream; `None` when the stream has no row yet.
fn stream_row(conn: &Connection, key: &StreamKey) -> rusqlite::Result<Option<(i64, StreamState)>> {
    conn.prepare_cached(
        "SELECT stream_id, cursor, generation, full_read FROM nango_streams
         WHERE integration = ?1 AND connection = ?2 AND model = ?3 AND variant = ?4",
    )?
    .query_row(
        params![key.integration, key.connection, key.model, key.variant],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                StreamState {
                    cursor: r.get::<_, Option<String>>(1)?.map(Cursor),
                    generation: r.get::<_, i64>(2)? as u64,
                    full_read: r.get::<_, Option<i64>>(3)?.map(|g| g as u64),
                },
            ))
        },
    )
    .optional()
}

fn ensure_stream(conn: &Connection, key: &StreamKey) -> rusqlite::Result<(i64, StreamState)> {
    if let Some(row) = stream_row(conn, key)? {
        return Ok(row);
    }
    conn.prepare_cached("INSERT INTO nango_streams (integration, connection, model, variant) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![key.integration, key.connection, key.model, key.variant])?;
    Ok((conn.last_insert_rowid(), StreamState::default()))
}

fn ts(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
}

fn commit_blocking(
    conn: &mut Connection,
    faults: &FaultInjector,
    commit: Commit,
) -> Result<CommitOutcome> {
    let e = |e| sql_err("commit", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let (stream_id, state) = ensure_stream(&tx, &commit.stream).map_err(e)?;
    check_cursor(&commit.stream, &state, &commit)?;
    let last_seq: i64 = tx
        .query_row(
            "SELECT value FROM nango_meta WHERE key = 'last_seq'",
            [],
            |r| r.get(0),
        )
        .map_err(e)?;
    let seq = last_seq + 1;
    let gen_stamp = stamp_generation(&state, &commit) as i64;

    // The stored versions of the page's ids (and where their rows are), one indexed
    // lookup per distinct id; `None` for an id the store does not hold.
    let mut stored: HashMap<&str, Option<(i64, StoredVersionBuf)>> =
        HashMap::with_capacity(commit.records.len());
    {
        let mut select = tx
            .prepare_cached(
                "SELECT record_id, last_modified_at, cursor, deleted_at IS NOT NULL OR last_action = 3
                 FROM nango_records WHERE stream_id = ?1 AND id = ?2",
            )
            .map_err(e)?;
        for r in commit.records.iter() {
            let Entry::Vacant(slot) = stored.entry(r.id.as_str()) else {
                continue;
            };
            let row = select
                .query_row(params![stream_id, r.id], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        StoredVersionBuf {
                            last_modified_at: Timestamp::from_micros(row.get(1)?),
                            cursor: row.get(2)?,
                            deleted: row.get(3)?,
                        },
                    ))
                })
                .optional()
                .map_err(e)?;
            slot.insert(row);
        }
    }
    let row_of = |id: &str| stored.get(id).and_then(Option::as_ref);
    let plan = plan_page(&commit.records, |id| row_of(id).map(|(_, v)| v.clone()));

    {
        // Within this IMMEDIATE transaction nobody else writes, so the lookups above
        // decide between a plain insert and an update of the row in place.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO nango_records (stream_id, id, payload, first_seen_at, last_modified_at, last_action,
                     deleted_at, pruned_at, cursor, seen_gen, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(e)?;
        let mut update = tx
            .prepare_cached(
                "UPDATE nango_records SET payload = ?2, first_seen_at = ?3, last_modified_at = ?4,
                     last_action = ?5, deleted_at = ?6, pruned_at = ?7, cursor = ?8, seen_gen = ?9, seq = ?10
                 WHERE record_id = ?1",
            )
            .map_err(e)?;
        let mut keep_payload = tx
            .prepare_cached(
                "UPDATE nango_records SET first_seen_at = ?2, last_modified_at = ?3, last_action = ?4,
                     deleted_at = ?5, pruned_at = ?6, cursor = ?7, seen_gen = ?8, seq = ?9
                 WHERE record_id = ?1",
            )
            .map_err(e)?;
        for w in &plan.writes {
            let r = &commit.records[w.index];
            let m = &r.meta;
            // The page's payload (for a new row, even when the merge chose the stored
            // one: there is none to keep).
            let payload = match w.payload {
                PayloadSource::Page(i) => commit.records[i].payload.as_str(),
                PayloadSource::Stored => r.payload.as_str(),
            };
            let (first, last, action) = (
                m.first_seen_at.as_micros(),
                m.last_modified_at.as_micros(),
                m.last_action.code(),
            );
            let (deleted, pruned, cursor) = (ts(m.deleted_at), ts(m.pruned_at), m.cursor.as_str());
            match (row_of(&r.id).map(|(row, _)| *row), w.payload) {
                (None, _) => insert.execute(params![
                    stream_id, r.id, payload, first, last, action, deleted, pruned, cursor,
                    gen_stamp, seq,
                ]),
                (Some(row), PayloadSource::Page(_)) => update.execute(params![
                    row, payload, first, last, action, deleted, pruned, cursor, gen_stamp, seq,
                ]),
                (Some(row), PayloadSource::Stored) => keep_payload.execute(params![
                    row, first, last, action, deleted, pruned, cursor, gen_stamp, seq,
                ]),
            }
            .map_err(e)?;
        }
        if commit.full_read.is_some() && !plan.untouched.is_empty() {
            let mut seen = tx
                .prepare_cached("UPDATE nango_records SET seen_gen = ?2 WHERE record_id = ?1")
                .map_err(e)?;
            for &i in &plan.untouched {
                if let Some((row, _)) = row_of(&commit.records[i].id) {
                    seen.execute(params![row, gen_stamp]).map_err(e)?;
                }
            }
        }
    }
    faults.check(BACKEND, FaultPoint::AfterRecords)?;

    let mut counts: Counts = plan.counts;
    let mut swept = 0u64;
    if let Some(f) = commit.full_read.filter(|f| f.complete) {
        swept = tx
            .prepare_cached(
                "UPDATE nango_records SET last_action = 3, deleted_at = ?3, seq = ?4
                 WHERE stream_id = ?1 AND seen_gen < ?2 AND deleted_at IS NULL AND last_action != 3",
            )
            .map_err(e)?
            .execute(params![stream_id, f.generation as i64, commit.now.as_micros(), seq])
            .map_err(e)? as u64;
        counts.deleted += swept;
    }
    let next = next_state(&state, &commit);
    tx.prepare_cached(
        "UPDATE nango_streams SET cursor = ?2, generation = ?3, full_read = ?4,
             added = added + ?5, updated = updated + ?6, deleted = deleted + ?7,
             unchanged = unchanged + ?8, stale = stale + ?9
         WHERE stream_id = ?1",
    )
    .map_err(e)?
    .execute(params![
        stream_id,
        next.cursor.as_ref().map(Cursor::as_str),
        next.generation as i64,
        next.full_read.map(|g| g as i64),
        counts.added as i64,
        counts.updated as i64,
        counts.deleted as i64,
        counts.unchanged as i64,
        counts.stale as i64,
    ])
    .map_err(e)?;
    tx.prepare_cached("UPDATE nango_meta SET value = ?1 WHERE key = 'last_seq'")
        .map_err(e)?
        .execute([seq])
        .map_err(e)?;
    faults.check(BACKEND, FaultPoint::BeforeCommit)?;
    tx.commit().map_err(e)?;
    Ok(CommitOutcome {
        seq: seq as u64,
        counts,
        swept,
    })
}

const RECORD_COLUMNS: &str =
    "id, payload, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, seq";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let code: u8 = r.get(4)?;
    let last_action = LastAction::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Integer,
            format!("bad last_action code {code}").into(),
        )
    })?;
    Ok(StoredRecord {
        id: r.get(0)?,
        payload: RawJson::from_trusted(r.get::<_, String>(1)?),
        meta: Metadata {
            first_seen_at: Timestamp::from_micros(r.get(2)?),
            last_modified_at: Timestamp::from_micros(r.get(3)?),
            last_action,
            deleted_at: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
            pruned_at: r.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
            cursor: Cursor(r.get(7)?),
        },
        seq: r.get::<_, i64>(8)? as u64,
    })
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

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.write("commit", move |c, faults| {
            commit_blocking(c, faults, commit)
        })
        .await
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary) -> Result<()> {
        let json = serde_json::to_string(run)
            .map_err(|e| Error::store(BACKEND, "record the run", false, e))?;
        self.set_stream_column(stream, "record the run", "last_run", Some(json))
            .await
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        let error = error.map(str::to_owned);
        self.set_stream_column(stream, "record the upstream error", "upstream_error", error)
            .await
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
            let deleted_filter =
                if query.include_deleted { "" } else { "AND deleted_at IS NULL AND last_action != 3" };
            let after = if query.after_id.is_some() { "AND id > ?5" } else { "AND ?5 IS NULL" };
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM nango_records WHERE stream_id =
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

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        self.read("list streams", |c| {
            let e = |e| sql_err("list streams", e);
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT s.integration, s.connection, s.model, s.variant, s.cursor, s.generation, s.full_read,
                            s.added, s.updated, s.deleted, s.unchanged, s.stale, s.last_run, s.upstream_error,
                            (SELECT count(*) FROM nango_records r WHERE r.stream_id = s.stream_id),
                            (SELECT count(*) FROM nango_records r WHERE r.stream_id = s.stream_id
                                 AND (r.deleted_at IS NOT NULL OR r.last_action = {DELETED}))
                     FROM nango_streams s
                     ORDER BY s.integration, s.connection, s.model, s.variant"
                ))
                .map_err(e)?;
            let rows = stmt
                .query_map([], |r| {
                    let total: i64 = r.get(14)?;
                    let deleted: i64 = r.get(15)?;
                    let last_run: Option<String> = r.get(12)?;
                    Ok(StreamStatus {
                        stream: StreamKey {
                            integration: r.get(0)?,
                            connection: r.get(1)?,
                            model: r.get(2)?,
                            variant: r.get(3)?,
                        },
                        state: StreamState {
                            cursor: r.get::<_, Option<String>>(4)?.map(Cursor),
                            generation: r.get::<_, i64>(5)? as u64,
                            full_read: r.get::<_, Option<i64>>(6)?.map(|g| g as u64),
                        },
                        totals: Counts {
                            added: r.get::<_, i64>(7)? as u64,
                            updated: r.get::<_, i64>(8)? as u64,
                            deleted: r.get::<_, i64>(9)? as u64,
                            unchanged: r.get::<_, i64>(10)? as u64,
                            stale: r.get::<_, i64>(11)? as u64,
                        },
                        live_records: (total - deleted) as u64,
                        deleted_records: deleted as u64,
                        last_run: last_run.and_then(|s| serde_json::from_str(&s).ok()),
                        upstream_error: r.get(13)?,
                    })
                })
                .map_err(e)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
        })
        .await
    }

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crate::sink::FullRead;

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
        drop(store);
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

    #[tokio::test]
    async fn injected_failure_after_records_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
        let stream = StreamKey::new("github", "acme", "Ticket");
        store.faults().arm(FaultPoint::AfterRecords);
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
        c.full_read = Some(FullRead {
            generation: 1,
            complete: true,
        });
        store.commit(c).await.unwrap();
        let mut c = Commit::new(
            stream.clone(),
            Some(Cursor("c1".into())),
            Some(Cursor("c1".into())),
            vec![record("a", 10, LastAction::Added, r#"{"id":"a"}"#)],
        );
        c.full_read = Some(FullRead {
            generation: 2,
            complete: true,
        });
        let out = store.commit(c).await.unwrap();
        assert_eq!(
            (out.swept, out.counts.deleted, out.counts.unchanged),
            (1, 1, 1)
        );
        assert!(store.get(&stream, "b").await.unwrap().unwrap().is_deleted());
        assert!(!store.get(&stream, "a").await.unwrap().unwrap().is_deleted());
        assert_eq!(store.stream_state(&stream).await.unwrap().generation, 2);
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_error() {
        let err = SqliteStore::open("/nonexistent-dir-for-nango-sync/x.db")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
