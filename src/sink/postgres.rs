//! The PostgreSQL store (`postgres://...`, cargo feature `postgres`): for applications
//! whose database is PostgreSQL, and for several processes sharing one store.
//!
//! # Schema
//!
//! Tables live in one schema (default `nango_sync`, see [`PostgresBuilder::schema`]),
//! created and upgraded by embedded, versioned migrations (`src/sink/postgres/migrations/`)
//! that [`PostgresBuilder::connect`] applies in a transaction holding an advisory lock,
//! so processes starting at the same time migrate once. The applied versions are kept in
//! `<schema>.schema_migrations`; a database migrated by a newer nango-sync is refused.
//!
//! - `streams`: one row per stream (the four key fields, cursor, generation, counters,
//!   last run as `jsonb`, upstream error);
//! - `records`: one row per record, keyed by `(stream_id, id)`: payload as `jsonb`,
//!   timestamps as microseconds since the epoch (`bigint`), cursor, tombstone flag, the
//!   sequence number of the commit that last changed it, and the last full re-read
//!   generation that saw it;
//! - `commit_seq`: the store's commit counter.
//!
//! Record ids and stream fields are `text COLLATE "C"`, so `list` returns ids in
//! code-point order like every other store. The payload is `jsonb`, which normalizes
//! the JSON text (key order, white space): compare payloads as JSON values.
//!
//! # A commit
//!
//! One transaction: the stream's row is locked (`SELECT ... FOR UPDATE`) and its cursor
//! checked; the stored versions of the page's ids are read by one query (one primary-key
//! lookup per id) and merged with [`plan_page`]; the commit counter row is bumped (its
//! lock orders commits, so sequence numbers are gap-free and follow commit order). The
//! writes take at most three statements, each over arrays (`UNNEST`): a plain `INSERT`
//! of the records the store does not hold (the stream's lock orders the stream's
//! commits, so none can appear between the read and the write), an
//! `INSERT ... ON CONFLICT DO UPDATE` of the stored records that get the page's payload,
//! and an `UPDATE` of the metadata of the stored records that keep their payload. A full
//! re-read marks the ids it saw and sweeps with one `UPDATE` each; the stream's row gets
//! the cursor and counters. A page costs the same few round trips whatever its size.
//! Durability is PostgreSQL's: a commit that returned `Ok` is committed.
//!
//! # Performance notes
//!
//! - Every statement reaches records through the primary key, one lookup per id, in
//!   forms whose plan does not depend on table statistics: before the first `ANALYZE`
//!   of a growing table, `id = ANY($ids)` was planned as a scan of the whole stream for
//!   the first executions of each connection (about 0.3 s per page at 100,000 records).
//! - The pool's sessions run with `jit = off` (see `session_setup`).
//! - Half of the server's time on a page goes into parsing payloads into `jsonb`.
//! - Updates are not HOT (heap-only tuple) updates at the default fill factor: each new
//!   version goes to another page and gets an index entry. On a store whose records are
//!   rewritten often, `ALTER TABLE <schema>.records SET (fillfactor = 50)` keeps the new
//!   versions on the same page (for pages written afterwards; `VACUUM FULL` rewrites the
//!   others): measured at 100,000 records of 760 bytes, about 15% less server time for
//!   an update of every record, 10% more for the first sync, and a table twice as large.
//!   It is not the default for that last reason.
//! - `synchronous_commit` is left to the server: each page's commit waits for its WAL
//!   flush. Lowering it (for example `ALTER ROLE ... SET synchronous_commit = off`)
//!   trades the durability of the last commits before a server crash for speed; the
//!   cursor and its records still commit together either way.
//!
//! Values are always bound; the only identifier formatted into SQL is the schema name,
//! validated (`^[a-z_][a-z0-9_]{0,62}$`, not `pg_*`) and quoted.
//!
//! # Errors and secrets
//!
//! Lost connections, I/O errors, pool timeouts, serialization failures (40001),
//! deadlocks (40P01), too many connections (53300) and server shutdowns (57P01..57P03)
//! are retryable; other errors are not. The password of the URL never appears in
//! errors or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgBindIterExt, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, SqlStr, Transaction};

use super::memory::{check_cursor, next_state, stamp_generation};
use crate::error::{Error, Result};
use crate::merge::{Counts, PayloadSource, PlannedWrite, StoredVersionBuf, plan_page};
use crate::record::{Cursor, LastAction, Metadata, RawJson, Record, StoredRecord, StreamKey};
use crate::sink::{
    Commit, CommitOutcome, FaultInjector, FaultPoint, ListQuery, RecordSink, RunSummary,
    StreamState, StreamStatus,
};
use crate::time::Timestamp;

const BACKEND: &str = "postgres";

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "nango_sync";

/// The embedded migrations: version, name, SQL (with `{schema}` placeholders).
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("postgres/migrations/0001_init.sql"))];

/// First key of the advisory lock taken while migrating (the second is the schema's hash).
const MIGRATION_LOCK: i32 = 0x6e73_796e; // "nsyn"

/// Builds a [`PostgresStore`]: URL, schema, pool size.
#[derive(Clone)]
pub struct PostgresBuilder {
    url: String,
    schema: String,
    pool_size: u32,
    acquire_timeout: Duration,
    read_only: bool,
}

impl fmt::Debug for PostgresBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBuilder")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl PostgresBuilder {
    /// A builder for the database at `url` (`postgres://user:password@host:port/db`, with
    /// libpq-style parameters such as `sslmode`), schema [`DEFAULT_SCHEMA`], 8 connections.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            acquire_timeout: Duration::from_secs(30),
            read_only: false,
        }
    }

    /// The schema holding the store's tables (created if missing). It must match
    /// `^[a-z_][a-z0-9_]{0,62}$` and not start with `pg_`; [`connect`](Self::connect)
    /// rejects other names.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The maximum number of connections of the pool (at least 1).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long an operation waits for a connection (and the first connect may take).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Open an existing store without changing it: no schema is created or migrated
    /// (the schema must exist, at the version this nango-sync writes), and every session
    /// is read-only (`default_transaction_read_only`), so writes fail. For reading a store
    /// another process owns, or one being repaired.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Connect, create or upgrade the schema (unless [`read_only`](Self::read_only)),
    /// and check that its tables are there. A schema whose tables are missing or altered
    /// is reported as [`Error::Damaged`].
    pub async fn connect(self) -> Result<PostgresStore> {
        validate_schema(&self.schema)?;
        let shown = redact_url(&self.url);
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| Error::invalid("postgres URL", format!("{shown}: {e}")))?
            .application_name("nango-sync");
        let read_only = self.read_only;
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| Box::pin(session_setup(conn, read_only)))
            .max_connections(self.pool_size)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| classify(format!("connect to {shown}"), e))?;
        let quoted = format!("\"{}\"", self.schema);
        if self.read_only {
            check_version(&pool, &self.schema, &quoted).await?;
        } else {
            migrate(&pool, &self.schema, &quoted).await?;
        }
        check_tables(&pool, &self.schema, &quoted).await?;
        Ok(PostgresStore {
            sql: Statements::new(&quoted),
            pool,
            url: shown,
            schema: self.schema,
            pool_size: self.pool_size,
            faults: FaultInjector::default(),
        })
    }
}

/// A store in a PostgreSQL schema. See the [module documentation](self).
pub struct PostgresStore {
    pool: PgPool,
    sql: Statements,
    /// The URL with its password redacted.
    url: String,
    schema: String,
    pool_size: u32,
    faults: FaultInjector,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connect to `url` with the default schema and pool size, creating or upgrading the
    /// schema.
    pub async fn connect(url: &str) -> Result<Self> {
        PostgresBuilder::new(url).connect().await
    }

    /// A builder, to choose the schema and the pool size.
    pub fn builder(url: impl Into<String>) -> PostgresBuilder {
        PostgresBuilder::new(url)
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(|e| classify("begin transaction", e))
    }

    /// The stream's id and state, locked until the transaction ends; the stream row is
    /// created when missing.
    async fn lock_stream(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        stream: &StreamKey,
        hash: &[u8],
    ) -> Result<(i64, StreamState)> {
        for _ in 0..2 {
            let row = sqlx::query(self.sql.lock_stream.clone())
                .bind(hash)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| classify("lock stream", e))?;
            if let Some(row) = row {
                let state = StreamState {
                    cursor: row
                        .try_get::<Option<String>, _>(1)
                        .map_err(decode)?
                        .map(Cursor),
                    generation: to_u64(row.try_get(2).map_err(decode)?),
                    full_read: row
                        .try_get::<Option<i64>, _>(3)
                        .map_err(decode)?
                        .map(to_u64),
                };
                return Ok((row.try_get(0).map_err(decode)?, state));
            }
            self.bind_stream(sqlx::query(self.sql.insert_stream.clone()), stream, hash)
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("create stream", e))?;
        }
        Err(Error::store(
            BACKEND,
            "lock stream",
            true,
            "the stream row vanished while it was created",
        ))
    }

    fn bind_stream<'q>(
        &self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        stream: &StreamKey,
        hash: &[u8],
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(hash.to_vec())
            .bind(stream.integration.clone())
            .bind(stream.connection.clone())
            .bind(stream.model.clone())
            .bind(stream.variant.clone())
    }

    /// A write statement with its parameters bound for `writes`: `$1` the stream,
    /// `$2..` one array per column (the payload's only when `payload`), then the commit's
    /// sequence number and generation stamp.
    fn bind_writes<'q>(
        &self,
        sql: &SqlStr,
        stream_id: i64,
        recs: &'q [Record],
        writes: &'q [PlannedWrite],
        payload: bool,
        (seq, gen_stamp): (i64, i64),
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        let metas = move || writes.iter().map(move |w| &recs[w.index].meta);
        let mut q = sqlx::query(sql.clone())
            .bind(stream_id)
            .bind(writes.iter().map(|w| recs[w.index].id.as_str()).bind_iter());
        if payload {
            q = q.bind(
                writes
                    .iter()
                    .map(|w| match w.payload {
                        PayloadSource::Page(i) => recs[i].payload.as_str(),
                        // Only for a record the store does not hold (see `commit_in`).
                        PayloadSource::Stored => recs[w.index].payload.as_str(),
                    })
                    .bind_iter(),
            );
        }
        q.bind(metas().map(|m| m.first_seen_at.as_micros()).bind_iter())
            .bind(metas().map(|m| m.last_modified_at.as_micros()).bind_iter())
            .bind(metas().map(|m| i16::from(m.last_action.code())).bind_iter())
            .bind(
                metas()
                    .map(|m| m.deleted_at.map(Timestamp::as_micros))
                    .bind_iter(),
            )
            .bind(
                metas()
                    .map(|m| m.pruned_at.map(Timestamp::as_micros))
                    .bind_iter(),
            )
            .bind(metas().map(|m| m.cursor.as_str()).bind_iter())
            .bind(metas().map(|m| m.is_deleted()).bind_iter())
            .bind(seq)
            .bind(gen_stamp)
    }

    async fn commit_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commit: &Commit,
    ) -> Result<CommitOutcome> {
        let hash = stream_hash(&commit.stream);
        let (stream_id, state) = self.lock_stream(tx, &commit.stream, &hash).await?;
        check_cursor(&commit.stream, &state, commit)?;

        // The stored versions of the page's ids, in one query.
        let mut stored: HashMap<String, StoredVersionBuf> = HashMap::new();
        if !commit.records.is_empty() {
            let rows = sqlx::query(self.sql.stored_versions.clone())
                .bind(stream_id)
                .bind(commit.records.iter().map(|r| r.id.as_str()).bind_iter())
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| classify("read stored versions", e))?;
            stored.reserve(rows.len());
            for row in rows {
                let id: String = row.try_get(0).map_err(decode)?;
                let version = StoredVersionBuf {
                    last_modified_at: Timestamp::from_micros(row.try_get(1).map_err(decode)?),
                    cursor: row.try_get(2).map_err(decode)?,
                    deleted: row.try_get(3).map_err(decode)?,
                };
                stored.insert(id, version);
            }
        }
        let plan = plan_page(&commit.records, |id| stored.get(id).cloned());
        let gen_stamp = to_i64(stamp_generation(&state, commit));

        let seq: i64 = sqlx::query_scalar(self.sql.next_seq.clone())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| classify("next commit number", e))?;

        let (mut live, mut deleted) = (0i64, 0i64);
        for w in &plan.writes {
            let r = &commit.records[w.index];
            match stored.get(r.id.as_str()) {
                Some(old) if old.deleted => deleted -= 1,
                Some(_) => live -= 1,
                None => {}
            }
            if r.is_deleted() {
                deleted += 1;
            } else {
                live += 1;
            }
        }
        // Three kinds of writes, each one statement when there are any: records the
        // store does not hold are inserted (no conflict is possible: the stream's lock
        // orders its commits, and the read above saw every record of the stream);
        // stored records are overwritten by an upsert; stored records keeping their
        // payload get only the metadata.
        let mut inserts = Vec::new();
        let mut overwrites = Vec::new();
        let mut keeps = Vec::new();
        for w in &plan.writes {
            match (w.existed, w.payload) {
                (false, _) => inserts.push(*w),
                (true, PayloadSource::Page(_)) => overwrites.push(*w),
                (true, PayloadSource::Stored) => keeps.push(*w),
            }
        }
        let recs = &commit.records[..];
        let stamp = (seq, gen_stamp);
        for (sql, writes) in [
            (&self.sql.insert_records, &inserts),
            (&self.sql.upsert_records, &overwrites),
        ] {
            if !writes.is_empty() {
                self.bind_writes(sql, stream_id, recs, writes, true, stamp)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| classify("write records", e))?;
            }
        }
        if !keeps.is_empty() {
            let updated = self
                .bind_writes(
                    &self.sql.update_metadata,
                    stream_id,
                    recs,
                    &keeps,
                    false,
                    stamp,
                )
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("write records", e))?
                .rows_affected();
            if updated != keeps.len() as u64 {
                // A record read above is gone: something outside nango-sync deleted it.
                return Err(Error::store(
                    BACKEND,
                    "write records",
                    true,
                    format!(
                        "{} of {} stored records changed during the commit",
                        keeps.len() as u64 - updated.min(keeps.len() as u64),
                        keeps.len()
                    ),
                ));
            }
        }
        if commit.full_read.is_some() && !plan.untouched.is_empty() {
            sqlx::query(self.sql.mark_seen.clone())
                .bind(stream_id)
                .bind(gen_stamp)
                .bind(
                    plan.untouched
                        .iter()
                        .map(|&i| commit.records[i].id.as_str())
                        .bind_iter(),
                )
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("mark records seen", e))?;
        }
        let mut counts = plan.counts;
        let mut swept = 0u64;
        if let Some(f) = commit.full_read.filter(|f| f.complete) {
            swept = sqlx::query(self.sql.sweep.clone())
                .bind(stream_id)
                .bind(to_i64(f.generation))
                .bind(commit.now.as_micros())
                .bind(seq)
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("sweep", e))?
                .rows_affected();
        }
        counts.deleted += swept;
        live -= swept as i64;
        deleted += swept as i64;

        self.faults.check(BACKEND, FaultPoint::AfterRecords)?;
        let next = next_state(&state, commit);
        sqlx::query(self.sql.update_stream.clone())
            .bind(stream_id)
            .bind(next.cursor.as_ref().map(|c| c.as_str()))
            .bind(to_i64(next.generation))
            .bind(next.full_read.map(to_i64))
            .bind(to_i64(counts.added))
            .bind(to_i64(counts.updated))
            .bind(to_i64(counts.deleted))
            .bind(to_i64(counts.unchanged))
            .bind(to_i64(counts.stale))
            .bind(live)
            .bind(deleted)
            .execute(&mut **tx)
            .await
            .map_err(|e| classify("write stream state", e))?;
        self.faults.check(BACKEND, FaultPoint::BeforeCommit)?;
        Ok(CommitOutcome {
            seq: to_u64(seq),
            counts,
            swept,
        })
    }

    /// Upsert one column of a stream's row (`last_run` or `upstream_error`).
    async fn set_stream_column(
        &self,
        sql: &SqlStr,
        operation: &'static str,
        stream: &StreamKey,
        value: Option<String>,
    ) -> Result<()> {
        let hash = stream_hash(stream);
        self.bind_stream(sqlx::query(sql.clone()), stream, &hash)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(())
    }
}

impl RecordSink for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        let row = sqlx::query(self.sql.stream_state.clone())
            .bind(stream_hash(stream))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("read stream state", e))?;
        let Some(row) = row else {
            return Ok(StreamState::default());
        };
        Ok(StreamState {
            cursor: row
                .try_get::<Option<String>, _>(0)
                .map_err(decode)?
                .map(Cursor),
            generation: to_u64(row.try_get(1).map_err(decode)?),
            full_read: row
                .try_get::<Option<i64>, _>(2)
                .map_err(decode)?
                .map(to_u64),
        })
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let mut tx = self.begin().await?;
        match self.commit_in(&mut tx, &commit).await {
            Ok(outcome) => {
                tx.commit().await.map_err(|e| classify("commit", e))?;
                Ok(outcome)
            }
            Err(e) => {
                // Dropping the transaction would roll it back too; doing it here returns
                // the connection to the pool clean.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary) -> Result<()> {
        let json = serde_json::to_string(run)
            .map_err(|e| Error::store(BACKEND, "encode run", false, e))?;
        self.set_stream_column(&self.sql.set_last_run, "record run", stream, Some(json))
            .await
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        self.set_stream_column(
            &self.sql.set_upstream_error,
            "set upstream error",
            stream,
            error.map(str::to_owned),
        )
        .await
    }

    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        let row = sqlx::query(self.sql.get.clone())
            .bind(stream_hash(stream))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("get", e))?;
        row.map(|r| record_from_row(&r)).transpose()
    }

    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let q = match &query.after_id {
            Some(after) => sqlx::query(self.sql.list_after.clone())
                .bind(stream_hash(stream))
                .bind(query.include_deleted)
                .bind(limit)
                .bind(after.as_str()),
            None => sqlx::query(self.sql.list_first.clone())
                .bind(stream_hash(stream))
                .bind(query.include_deleted)
                .bind(limit),
        };
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list", e))?;
        rows.iter().map(record_from_row).collect()
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        let rows = sqlx::query(self.sql.streams.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list streams", e))?;
        rows.iter().map(status_from_row).collect()
    }

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }
}

/// The SQL of every statement, with the schema filled in once.
struct Statements {
    lock_stream: SqlStr,
    insert_stream: SqlStr,
    stored_versions: SqlStr,
    insert_records: SqlStr,
    update_metadata: SqlStr,
    next_seq: SqlStr,
    upsert_records: SqlStr,
    mark_seen: SqlStr,
    sweep: SqlStr,
    update_stream: SqlStr,
    stream_state: SqlStr,
    set_last_run: SqlStr,
    set_upstream_error: SqlStr,
    get: SqlStr,
    list_first: SqlStr,
    list_after: SqlStr,
    streams: SqlStr,
}

/// The columns a page write sets, and the rows it writes: `$2..$10` one array per
/// column, `$11` the commit's sequence number, `$12` its generation stamp.
const WRITE_COLUMNS: &str = "stream_id, id, payload, first_seen_at, last_modified_at, last_action, \
     deleted_at, pruned_at, cursor, deleted, seq, seen_generation";
const WRITE_VALUES: &str = "SELECT $1, u.id, u.payload::jsonb, u.first_seen_at, u.last_modified_at, u.last_action, \
       u.deleted_at, u.pruned_at, u.cursor, u.deleted, $11, $12 \
     FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int2[], $7::int8[], $8::int8[], \
                 $9::text[], $10::bool[]) \
       AS u(id, payload, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, deleted)";

const RECORD_COLUMNS: &str = "r.id, r.payload::text, r.first_seen_at, r.last_modified_at, r.last_action, r.deleted_at, r.pruned_at, r.cursor, r.seq";

impl Statements {
    fn new(schema: &str) -> Self {
        // `schema` is validated and quoted; every other value is a bind parameter.
        let s = |sql: String| -> SqlStr {
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.replace("{s}", schema)))
        };
        let upsert_stream = |column: &str| {
            s(format!(
                "INSERT INTO {{s}}.streams (key_hash, integration, connection, model, variant, {column}) \
                 VALUES ($1, $2, $3, $4, $5, $6{cast}) \
                 ON CONFLICT (key_hash) DO UPDATE SET {column} = EXCLUDED.{column}",
                cast = if column == "last_run" { "::jsonb" } else { "" },
            ))
        };
        let list = |after: &str| {
            s(format!(
                "SELECT {RECORD_COLUMNS} FROM {{s}}.records r \
                 JOIN {{s}}.streams t ON t.stream_id = r.stream_id \
                 WHERE t.key_hash = $1 AND ($2 OR NOT r.deleted) {after} \
                 ORDER BY r.id LIMIT $3"
            ))
        };
        Statements {
            lock_stream: s(
                "SELECT stream_id, cursor, generation, full_read FROM {s}.streams WHERE key_hash = $1 FOR UPDATE"
                    .into(),
            ),
            insert_stream: s("INSERT INTO {s}.streams (key_hash, integration, connection, model, variant) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_hash) DO NOTHING"
                .into()),
            stored_versions: s("SELECT u.id, r.last_modified_at, r.cursor, r.deleted \
                 FROM UNNEST($2::text[]) AS u(id) \
                 CROSS JOIN LATERAL (SELECT o.last_modified_at, o.cursor, o.deleted FROM {s}.records o \
                   WHERE o.stream_id = $1 AND o.id = u.id OFFSET 0) AS r"
                .into()),
            next_seq: s("UPDATE {s}.commit_seq SET seq = seq + 1 RETURNING seq".into()),
            upsert_records: s(format!(
                "INSERT INTO {{s}}.records AS r ({WRITE_COLUMNS}) {WRITE_VALUES} \
                 ON CONFLICT (stream_id, id) DO UPDATE SET \
                   payload = EXCLUDED.payload, first_seen_at = EXCLUDED.first_seen_at, \
                   last_modified_at = EXCLUDED.last_modified_at, last_action = EXCLUDED.last_action, \
                   deleted_at = EXCLUDED.deleted_at, pruned_at = EXCLUDED.pruned_at, cursor = EXCLUDED.cursor, \
                   deleted = EXCLUDED.deleted, seq = EXCLUDED.seq, seen_generation = EXCLUDED.seen_generation"
            )),
            insert_records: s(format!(
                "INSERT INTO {{s}}.records ({WRITE_COLUMNS}) {WRITE_VALUES}"
            )),
            update_metadata: s(
                "UPDATE {s}.records AS r SET first_seen_at = u.first_seen_at, \
                   last_modified_at = u.last_modified_at, last_action = u.last_action, \
                   deleted_at = u.deleted_at, pruned_at = u.pruned_at, cursor = u.cursor, \
                   deleted = u.deleted, seq = $10, seen_generation = $11 \
                 FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::int2[], $6::int8[], $7::int8[], \
                             $8::text[], $9::bool[]) \
                   AS u(id, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, deleted) \
                 WHERE r.stream_id = $1 AND r.id = u.id"
                    .into(),
            ),
            mark_seen: s("UPDATE {s}.records AS r SET seen_generation = $2 \
                 FROM UNNEST($3::text[]) AS u(id) \
                 WHERE r.stream_id = $1 AND r.id = u.id AND r.seen_generation <> $2"
                .into()),
            sweep: s("UPDATE {s}.records SET last_action = 3, deleted_at = $3, deleted = true, seq = $4 \
                 WHERE stream_id = $1 AND seen_generation < $2 AND NOT deleted"
                .into()),
            update_stream: s("UPDATE {s}.streams SET cursor = $2, generation = $3, full_read = $4, \
                   added = added + $5, updated = updated + $6, deleted = deleted + $7, \
                   unchanged = unchanged + $8, stale = stale + $9, \
                   live_records = live_records + $10, deleted_records = deleted_records + $11 \
                 WHERE stream_id = $1"
                .into()),
            stream_state: s("SELECT cursor, generation, full_read FROM {s}.streams WHERE key_hash = $1".into()),
            set_last_run: upsert_stream("last_run"),
            set_upstream_error: upsert_stream("upstream_error"),
            get: s(format!(
                "SELECT {RECORD_COLUMNS} FROM {{s}}.records r JOIN {{s}}.streams t ON t.stream_id = r.stream_id \
                 WHERE t.key_hash = $1 AND r.id = $2"
            )),
            list_first: list(""),
            list_after: list("AND r.id > $4"),
            streams: s("SELECT integration, connection, model, variant, cursor, generation, full_read, \
                   added, updated, deleted, unchanged, stale, live_records, deleted_records, \
                   last_run::text, upstream_error \
                 FROM {s}.streams ORDER BY integration, connection, model, variant"
                .into()),
        }
    }
}

fn record_from_row(row: &PgRow) -> Result<StoredRecord> {
    let code: i16 = row.try_get(4).map_err(decode)?;
    let last_action = u8::try_from(code)
        .ok()
        .and_then(LastAction::from_code)
        .ok_or_else(|| {
            Error::store(
                BACKEND,
                "read record",
                false,
                format!("unknown last_action {code}"),
            )
        })?;
    let payload: String = row.try_get(1).map_err(decode)?;
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row
            .try_get::<Option<i64>, _>(i)
            .map_err(decode)?
            .map(Timestamp::from_micros))
    };
    Ok(StoredRecord {
        id: row.try_get(0).map_err(decode)?,
        payload: RawJson::from_trusted(payload),
        meta: Metadata {
            first_seen_at: Timestamp::from_micros(row.try_get(2).map_err(decode)?),
            last_modified_at: Timestamp::from_micros(row.try_get(3).map_err(decode)?),
            last_action,
            deleted_at: ts(5)?,
            pruned_at: ts(6)?,
            cursor: Cursor(row.try_get(7).map_err(decode)?),
        },
        seq: to_u64(row.try_get(8).map_err(decode)?),
    })
}

fn status_from_row(row: &PgRow) -> Result<StreamStatus> {
    let n = |i: usize| -> Result<u64> { Ok(to_u64(row.try_get(i).map_err(decode)?)) };
    let last_run = match row.try_get::<Option<String>, _>(14).map_err(decode)? {
        Some(json) => Some(
            serde_json::from_str(&json)
                .map_err(|e| Error::store(BACKEND, "read last run", false, e))?,
        ),
        None => None,
    };
    Ok(StreamStatus {
        stream: StreamKey {
            integration: row.try_get(0).map_err(decode)?,
            connection: row.try_get(1).map_err(decode)?,
            model: row.try_get(2).map_err(decode)?,
            variant: row.try_get(3).map_err(decode)?,
        },
        state: StreamState {
            cursor: row
                .try_get::<Option<String>, _>(4)
                .map_err(decode)?
                .map(Cursor),
            generation: n(5)?,
            full_read: row
                .try_get::<Option<i64>, _>(6)
                .map_err(decode)?
                .map(to_u64),
        },
        totals: Counts {
            added: n(7)?,
            updated: n(8)?,
            deleted: n(9)?,
            unchanged: n(10)?,
            stale: n(11)?,
        },
        live_records: n(12)?,
        deleted_records: n(13)?,
        last_run,
        upstream_error: row.try_get(15).map_err(decode)?,
    })
}

/// Settings of each of the pool's sessions, applied when it connects.
///
/// `jit = off`: the store's statements touch one page of rows through the primary key,
/// where LLVM compilation only adds time. Until a table's statistics are gathered
/// (`ANALYZE`, autovacuum), the planner estimates about 30 rows per primary-key lookup,
/// so a page's statements pass `jit_above_cost` once the table holds some 100,000 rows,
/// and compiling then took 10-20 ms per statement, more than the work itself. A server
/// without the setting (before PostgreSQL 11) is used as it is.
async fn session_setup(
    conn: &mut sqlx::PgConnection,
    read_only: bool,
) -> std::result::Result<(), sqlx::Error> {
    match sqlx::raw_sql("SET jit = off").execute(&mut *conn).await {
        Err(sqlx::Error::Database(_)) | Ok(_) => {}
        Err(e) => return Err(e),
    }
    if read_only {
        sqlx::raw_sql("SET default_transaction_read_only = on")
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// For a read-only open: the schema exists and is at the version this nango-sync writes.
async fn check_version(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let operation = || format!("open schema {schema}");
    if !schema_exists_in(pool, schema).await? {
        return Err(Error::store(
            BACKEND,
            operation(),
            false,
            format!("there is no schema {schema}"),
        ));
    }
    let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {quoted}.schema_migrations"
    )))
    .fetch_one(pool)
    .await
    .map_err(|e| classify(operation(), e))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    match version {
        Some(v) if v == latest => Ok(()),
        Some(v) if v > latest => Err(Error::store(
            BACKEND,
            operation(),
            false,
            format!(
                "the schema is at version {v}, newer than this nango-sync knows ({latest}); upgrade nango-sync"
            ),
        )),
        other => Err(Error::damaged(
            BACKEND,
            operation(),
            format!(
                "the schema is at version {}, not {latest}, and a read-only open does not migrate",
                other.unwrap_or(0)
            ),
        )),
    }
}

/// The store's tables are there with the columns the store uses, and the commit counter
/// has its one row; otherwise the schema is damaged.
async fn check_tables(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let operation = || format!("check the tables of schema {schema}");
    let probes = [
        format!(
            "SELECT stream_id, key_hash, integration, connection, model, variant, cursor, generation, \
               full_read, added, updated, deleted, unchanged, stale, live_records, deleted_records, \
               last_run, upstream_error FROM {quoted}.streams LIMIT 0"
        ),
        format!(
            "SELECT stream_id, id, payload, first_seen_at, last_modified_at, last_action, deleted_at, \
               pruned_at, cursor, deleted, seq, seen_generation FROM {quoted}.records LIMIT 0"
        ),
    ];
    for sql in probes {
        if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
            return Err(match &e {
                sqlx::Error::Database(db)
                    if db.code().is_some_and(|c| c == "42P01" || c == "42703") =>
                {
                    Error::damaged(BACKEND, operation(), db.message().to_string())
                }
                _ => classify(operation(), e),
            });
        }
    }
    let rows: std::result::Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(
        format!("SELECT seq FROM {quoted}.commit_seq"),
    ))
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) if rows.len() == 1 => Ok(()),
        Ok(rows) => Err(Error::damaged(
            BACKEND,
            operation(),
            format!(
                "{quoted}.commit_seq holds {} rows instead of one",
                rows.len()
            ),
        )),
        Err(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c == "42P01" || c == "42703") =>
        {
            Err(Error::damaged(
                BACKEND,
                operation(),
                db.message().to_string(),
            ))
        }
        Err(e) => Err(classify(operation(), e)),
    }
}

async fn schema_exists_in(pool: &PgPool, schema: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .map_err(|e| classify(format!("look for schema {schema}"), e))
}

/// One connection to the database of `url`, for schema operations.
async fn admin_pool(url: &str) -> Result<PgPool> {
    let shown = redact_url(url);
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("postgres URL", format!("{shown}: {e}")))?
        .application_name("nango-sync");
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| classify(format!("connect to {shown}"), e))
}

/// Whether the database of `url` holds a schema named `schema`.
pub(crate) async fn schema_exists(url: &str, schema: &str) -> Result<bool> {
    validate_schema(schema)?;
    let pool = admin_pool(url).await?;
    let exists = schema_exists_in(&pool, schema).await;
    pool.close().await;
    exists
}

/// Rename schema `from` to `to` (which must not exist) in the database of `url`.
pub(crate) async fn rename_schema(url: &str, from: &str, to: &str) -> Result<()> {
    validate_schema(from)?;
    validate_schema(to)?;
    let pool = admin_pool(url).await?;
    // Both names are validated; they are quoted identifiers, never values.
    let result = sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER SCHEMA \"{from}\" RENAME TO \"{to}\""
    )))
    .execute(&pool)
    .await
    .map_err(|e| classify(format!("rename schema {from} to {to}"), e));
    pool.close().await;
    result.map(|_| ())
}

/// Create the schema if needed and apply the migrations it lacks, under an advisory lock.
async fn migrate(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let err = |op: &'static str| {
        move |e: sqlx::Error| classify(format!("migrate schema {schema}: {op}"), e)
    };
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(MIGRATION_LOCK)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(err("lock"))?;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ( \
           version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .map_err(err("create schema"))?;
    let current: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {quoted}.schema_migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(err("read version"))?;
    let current = current.unwrap_or(0);
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Error::store(
            BACKEND,
            format!("migrate schema {schema}"),
            false,
            format!(
                "the schema is at version {current}, newer than this nango-sync knows ({latest}); upgrade nango-sync"
            ),
        ));
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::raw_sql(AssertSqlSafe(sql.replace("{schema}", quoted)))
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                // 42P07: a table of the migration exists though the migration is not
                // recorded.
                sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "42P07") => {
                    Error::damaged(
                        BACKEND,
                        format!("migrate schema {schema}"),
                        format!(
                            "{} (migration {version} is not recorded in {schema}.schema_migrations)",
                            db.message()
                        ),
                    )
                }
                _ => err("apply migration")(e),
            })?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(err("record migration"))?;
    }
    tx.commit().await.map_err(err("commit"))
}

/// Check a schema name: `^[a-z_][a-z0-9_]{0,62}$`, not reserved (`pg_*`).
fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && schema.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Error::invalid(
            "postgres schema name",
            format!("{schema:?} must match ^[a-z_][a-z0-9_]{{0,62}}$"),
        ));
    }
    if schema.starts_with("pg_") {
        return Err(Error::invalid(
            "postgres schema name",
            format!("{schema:?}: names starting with pg_ are reserved"),
        ));
    }
    Ok(())
}

/// SHA-256 of the stream key's fields, each prefixed by its length: the streams' unique
/// key (fixed size, whatever the fields hold).
fn stream_hash(stream: &StreamKey) -> Vec<u8> {
    let mut h = Sha256::new();
    for f in [
        &stream.integration,
        &stream.connection,
        &stream.model,
        &stream.variant,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().to_vec()
}

/// `url` with the password (in the user info or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let auth_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..auth_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// Classify a sqlx error: retryable when trying again can succeed; data or index
/// corruption reported by the server (XX001, XX002) is [`Error::Damaged`].
fn classify(operation: impl Into<String>, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e
        && db.code().is_some_and(|c| c == "XX001" || c == "XX002")
    {
        return Error::damaged(BACKEND, operation, db.message().to_string());
    }
    let retryable = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| retryable_sqlstate(&code)),
        _ => false,
    };
    Error::store(BACKEND, operation, retryable, e)
}

/// Serialization failure, deadlock, too many connections, shutdowns, connection
/// exceptions (class 08).
fn retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

fn decode(e: sqlx::Error) -> Error {
    Error::store(BACKEND, "decode row", false, e)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for ok in ["nango_sync", "_x", "a1", &"a".repeat(63)] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-b",
            "a\"b",
            "a b",
            "pg_x",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u:p@w@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=x&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn retryable_codes() {
        for code in ["40001", "40P01", "53300", "57P01", "08006"] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn stream_hashes_do_not_collide_on_concatenation() {
        assert_ne!(
            stream_hash(&StreamKey::new("ab", "c", "M")),
            stream_hash(&StreamKey::new("a", "bc", "M"))
        );
    }
}
