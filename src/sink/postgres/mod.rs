//! The PostgreSQL store (`postgres://...`, cargo feature `postgres`): for applications
//! whose database is PostgreSQL, and for several processes sharing one store.
//!
//! # Schema
//!
//! Tables live in one schema (default `nango_sync`, see [`PostgresOptions::with_schema`]),
//! created and upgraded by embedded, versioned migrations (`src/sink/postgres/migrations/`)
//! that [`PostgresStore::connect_with`] applies in a transaction holding an advisory lock,
//! so processes starting at the same time migrate once. The applied versions are kept in
//! `<schema>.schema_migrations`; a database migrated by a newer nango-sync is refused.
//! Every connect then checks that the tables are there with the columns the store uses
//! (a schema whose tables were dropped or altered is [`Error::Damaged`]).
//! [`PostgresOptions::with_read_only`] opens an existing store without migrating or
//! writing anything.
//!
//! - `streams`: one row per stream (the four key fields, cursor, generation, counters,
//!   last run as `jsonb`, upstream error, the number of the last commit that changed it);
//! - `records`: one row per record, keyed by `(stream_id, id)`: payload as `jsonb`,
//!   timestamps as microseconds since the epoch (`bigint`), cursor, tombstone flag, the
//!   sequence number of the commit that last changed it, and the last full re-read
//!   generation that saw it;
//! - `commit_seq`: the store's commit counter;
//! - `consumers`: the change feed's named consumers and their positions;
//! - `feed_commits`: the change feed's index, one row per commit that changed records
//!   (per chunk of 1,000 of its ids), with the count of its records no later commit
//!   changed.
//!
//! Each record also keeps the kind of its last change (`change_kind`), unindexed like
//! its `seq`, so an update of a record changes only its primary key's index when its
//! page has room (see `feed.rs` for how the feed is read and kept, why a reader of the
//! feed never misses a change, and how commits are announced with `NOTIFY`).
//! - `outbox`: actions to deliver to Nango, which an application may insert into in its
//!   own transaction (columns: [`crate::sink::outbox`]).
//!
//! Record ids and stream fields are `text COLLATE "C"`, so `list` returns ids in
//! code-point order like every other store. The payload is `jsonb`, which normalizes
//! the JSON text (key order, white space): compare payloads as JSON values.
//!
//! # A commit
//!
//! One transaction: the stream's row is locked (`SELECT ... FOR UPDATE`) and its cursor
//! checked; the stored versions of the page's ids are read by one query (one primary-key
//! lookup per id), or taken from the read made ahead while the previous page committed
//! when the stream's `last_seq` shows it still holds (`prefetch.rs`,
//! [`RecordSink::prefetch`]), and the commit is prepared by
//! [`commit::prepare`](crate::sink::commit::prepare); the commit counter row is bumped (its
//! lock orders commits, so sequence numbers are gap-free and follow commit order). The
//! writes take at most three statements, each over arrays (`UNNEST`): a plain `INSERT`
//! of the records the store does not hold (the stream's lock orders the stream's
//! commits, so none can appear between the read and the write), an
//! `INSERT ... ON CONFLICT DO UPDATE` of the stored records that get the page's payload,
//! and an `UPDATE` of the metadata of the stored records that keep their payload. A full
//! re-read marks the ids it saw with one `UPDATE`; its completing commit sweeps with
//! another, which scans the stream, unless the stream's count of live records stamped
//! with the re-read's generation ([`crate::sink::seen`], in `streams`) says that it saw
//! every one, as a first sync always does. The stream's row gets the cursor, counters
//! and that count. A page costs the same few round trips whatever its size.
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
//! - Updates change no indexed column, so they can be HOT (heap-only tuple) updates when
//!   the row's page has room for the new version: `records` is filled to half
//!   (`fillfactor = 50`, migration 7), which took 29% off the server's time for an
//!   update of every record and added 4-10% to a first sync's, for a table twice as
//!   large after a first sync and no larger after updates (see the migration). A store
//!   that is mostly read and rarely rewritten can go back to full pages with
//!   `ALTER TABLE <schema>.records SET (fillfactor = 100)` (for pages written
//!   afterwards; `VACUUM FULL` rewrites the others).
//! - `synchronous_commit` is left to the server: each page's commit waits for its WAL
//!   flush. Lowering it (for example `ALTER ROLE ... SET synchronous_commit = off`)
//!   trades the durability of the last commits before a server crash for speed; the
//!   cursor and its records still commit together either way.
//! - Where a page's server time goes (`scripts/pg-bench-ab.sh`, 100,000 records of
//!   ~740 bytes in pages of 1,000, `pg_stat_statements`): the page write itself (the
//!   `INSERT` of new records, 49-105 ms a page on a loaded 2-core machine, or the
//!   upsert of changed ones, 47-78 ms) takes about 85% of it, about as much as the raw
//!   ceiling's `UNNEST` upsert; the stored-version read about 10%; the feed's upkeep
//!   statement 4-5%.
//! - The next page's stored versions are read while the current page commits, on
//!   another connection of the pool (`prefetch.rs`): the read leaves the commit's
//!   critical path, and the commit checks under the stream's lock that the stream's
//!   `last_seq` (migration 10) is the one read, or that the only commit since was this
//!   store's previous one (whose ids it reads again, usually none). In `bench`
//!   (2 alternated rounds of `scripts/pg-bench-ab.sh`), the store ceiling went from
//!   47-48k to 54-56k records/s on updates (store/raw 0.75-0.76 to 0.86-0.88), the
//!   engine's update pass from 44-46k to 50-51k; a first sync gained little (store/raw
//!   0.75-0.76 to 0.77-0.80): its read, which finds nothing, is short, and it now runs
//!   beside the page write on the same two cores.
//! - The change feed's id lists are stored without compression (migration 9): pglz cost
//!   about 0.8 ms per list of 1,000 ids and saved nothing on UUID-like ids.
//! - Tried and not kept: inserting a page's records first with `ON CONFLICT DO NOTHING
//!   RETURNING id` when they are expected to be new (an empty stream, or a stream whose
//!   previous commit was mostly inserts), then reading and preparing again only the ids
//!   that conflicted. It spares the stored-version read of a first sync, but that read is
//!   cheap when it finds nothing (0.8 ms a page, against 4 ms a page of stored records),
//!   and the speculative insertion cost more than it saved: 1,305 against 1,150 ms of
//!   server time for the 100 pages of new records, store ceiling store/raw 0.63-0.64
//!   against 0.66-0.69 (3 alternated rounds of `scripts/pg-bench-ab.sh`).
//! - Tried and not kept: binary `COPY` of each page into a per-session temporary
//!   table (`ON COMMIT DELETE ROWS`) merged by one statement. The merge took about half
//!   of the two write statements' time, but the `COPY` cost more than that saving
//!   (parsing the `jsonb` there, and writing the temporary table): 1.3 to 1.8 times the
//!   server time of a page write, store ceiling fresh / update 8.8k / 7.0k records/s
//!   against 12.2k / 13.4k in the same sitting (medians of 2). It would also need the
//!   temporary table on every session, which a transaction-pooling proxy does not keep.
//! - A stored-version read in the commit stays a statement of its own, after the
//!   stream's lock: folded into the locking statement, it would read the snapshot taken
//!   when that statement started, before a concurrent commit of the same stream that
//!   the lock waited for had committed (`READ COMMITTED` re-reads only the locked row).
//!   The read ahead has the same problem, which is why it is checked against the
//!   stream's `last_seq` under the lock.
//! - Reading the feed's newest 1,000 changes is mostly rendering their payloads as text
//!   (`jsonb` output, about 17 of 25 ms for 740-byte payloads in `EXPLAIN ANALYZE`),
//!   not the primary-key lookups (5 ms). One index scan per list with
//!   `id = ANY(ids)` was no faster; a plain join of the list with `records` was planned
//!   as a hash join over the whole stream (265 ms).
//!
//! Values are always bound; the only identifier formatted into SQL is the schema name,
//! validated (`^[a-z_][a-z0-9_]{0,62}$`, not `pg_*`) and quoted.
//!
//! # Errors and secrets
//!
//! Lost connections, I/O errors, pool timeouts, serialization failures (40001),
//! deadlocks (40P01), too many connections (53300) and server shutdowns (57P01..57P03)
//! are retryable; other errors are not. Data or index corruption reported by the server
//! (XX001, XX002), missing tables, and tables of an unrecorded migration are
//! [`Error::Damaged`]. The password of the URL never appears in errors or `Debug`
//! output.
//!
//! # Files
//!
//! `mod.rs` the store and its [`RecordSink`] implementation, `options.rs`
//! [`PostgresOptions`], `schema.rs` and `migrations/` the schema and the statements over
//! it, `apply.rs` a commit applied, `prefetch.rs` the stored versions read ahead,
//! `rows.rs` rows and their values, `error.rs` the
//! error mapping, `feed.rs` the change feed, consumers and notifications, `history.rs`
//! the run history, `outbox.rs` the outbox.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, SqlStr, Transaction};

use crate::error::{Error, Result};
use crate::feed::{ChangeBatch, ChangeQuery, Consumer, FeedPosition, RecordCounts};
use crate::record::{StoredRecord, StreamKey};
use crate::secret::redact_url;
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
mod error;
mod feed;
mod history;
mod lease;
mod options;
mod outbox;
mod prefetch;
mod rows;
mod schema;

use error::classify;
pub use lease::TriggerMessage;
pub use options::{DEFAULT_SCHEMA, PostgresOptions};
use rows::{record_from_row, state_from_row, status_from_row, stream_hash};
use schema::Statements;
pub(crate) use schema::{rename_schema, schema_exists};

const BACKEND: &str = "postgres";

/// A store in a PostgreSQL schema. See the [module documentation](self).
pub struct PostgresStore {
    pool: PgPool,
    sql: Statements,
    history: history::Statements,
    outbox_sql: outbox::OutboxStatements,
    /// The URL with its password redacted.
    url: String,
    schema: String,
    pool_size: u32,
    faults: Faults,
    /// The change feed's statements, commit signal and `LISTEN` task (`feed.rs`).
    feed_sql: feed::FeedStatements,
    feed: std::sync::Arc<feed::FeedState>,
    channel: String,
    /// How to connect (for the `LISTEN` connection); holds the password, never shown.
    connect: PgConnectOptions,
    /// The next pages' stored versions, read ahead (`prefetch.rs`).
    prefetches: crate::sink::prefetch::Prefetches<prefetch::Read>,
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
    /// Connect to `url` (`postgres://user:password@host:port/db`, with libpq-style
    /// parameters such as `sslmode`) with default [`PostgresOptions`], creating or
    /// upgrading the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connect to `url` with `options`, create or upgrade the schema (unless
    /// [`with_read_only`](PostgresOptions::with_read_only)), and check that its tables are
    /// there. A schema whose tables are missing or altered is reported as
    /// [`Error::Damaged`].
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        options::validate_schema(&options.schema)?;
        options::validate_fillfactor(options.fillfactor, options.read_only)?;
        let shown = redact_url(url);
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("postgres URL", format!("{shown}: {e}")))?
            .application_name("nango-sync");
        let read_only = options.read_only;
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| Box::pin(session_setup(conn, read_only)))
            .max_connections(options.pool_size)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|e| classify(format!("connect to {shown}"), e))?;
        let quoted = format!("\"{}\"", options.schema);
        if options.read_only {
            schema::check_version(&pool, &options.schema, &quoted).await?;
        } else {
            schema::migrate(&pool, &options.schema, &quoted).await?;
        }
        schema::check_tables(&pool, &options.schema, &quoted).await?;
        if let Some(fillfactor) = options.fillfactor {
            schema::set_fillfactor(&pool, &options.schema, &quoted, fillfactor).await?;
        }
        let mut store = PostgresStore {
            sql: Statements::new(&quoted),
            history: history::Statements::new(&quoted),
            feed_sql: feed::FeedStatements::new(&quoted),
            feed: Default::default(),
            channel: feed::channel(&options.schema),
            connect,
            outbox_sql: outbox::OutboxStatements::new(&quoted),
            pool,
            url: shown,
            schema: options.schema,
            pool_size: options.pool_size,
            faults: options.faults,
            prefetches: Default::default(),
        };
        store.feed = std::sync::Arc::new(feed::FeedState::new(store.feed_last_seq().await?));
        Ok(store)
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The fillfactor of the records table now, in percent (see
    /// [`PostgresOptions::with_fillfactor`]).
    pub async fn records_fillfactor(&self) -> Result<u8> {
        schema::fillfactor_of(&self.pool, &self.schema).await
    }

    /// How the stored versions read ahead for the next page of a stream (see
    /// [`RecordSink::prefetch`]) served the commits of this store since it connected.
    pub fn prefetch_stats(&self) -> crate::sink::PrefetchStats {
        self.prefetches.stats()
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(|e| classify("begin transaction", e))
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
        match row {
            Some(row) => state_from_row(&row, 0),
            None => Ok(StreamState::default()),
        }
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let result = self.commit_in_tx(&commit).await;
        // A leased commit that failed for any reason is refused as such when its lease
        // is lost (for example a holder paused inside the commit loses its session when
        // its lease runs out: `lease.rs`).
        self.fenced(&commit, result).await
    }

    fn prefetch(&self, stream: &StreamKey, records: &[crate::record::Record]) {
        let ids = records.iter().map(|r| r.id.clone()).collect();
        prefetch::start(
            &self.prefetches,
            &self.pool,
            &self.sql.prefetch_versions,
            stream_hash(stream),
            ids,
        );
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
        let kind = query.change.map(|k| i16::from(k.code()));
        let q = match &query.after_id {
            Some(after) => sqlx::query(self.sql.list_after.clone())
                .bind(stream_hash(stream))
                .bind(query.include_deleted)
                .bind(limit)
                .bind(after.as_str())
                .bind(kind),
            None => sqlx::query(self.sql.list_first.clone())
                .bind(stream_hash(stream))
                .bind(query.include_deleted)
                .bind(limit)
                .bind(kind),
        };
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list", e))?;
        rows.iter().map(record_from_row).collect()
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

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        let rows = sqlx::query(self.sql.streams.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list streams", e))?;
        rows.iter().map(status_from_row).collect()
    }

    // The run history (`history.rs`).

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        self.history_record(stream, run, keep).await
    }

    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        self.history_last_run(stream).await
    }

    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        self.history_read(query).await
    }

    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        self.history_stream_status(stream).await
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
        self.outbox_enqueue_impl(item).await
    }

    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        self.outbox_claim_impl(request).await
    }

    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        self.outbox_extend_impl(claim, until, now).await
    }

    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        self.outbox_settle_impl(claim, settlement, now).await
    }

    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        self.outbox_get_impl(id).await
    }

    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        self.outbox_list_impl(query).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.outbox_counts_impl().await
    }

    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        self.outbox_purge_impl(finished_before).await
    }
}

impl PostgresStore {
    /// A commit in one transaction (see the module documentation).
    async fn commit_in_tx(&self, commit: &Commit) -> Result<CommitOutcome> {
        let mut tx = self.begin().await?;
        // A leased commit is refused before anything is written when its lease is lost
        // (`lease.rs`).
        let hash = stream_hash(&commit.stream);
        let applied = match self.check_fence(&mut tx, commit).await {
            Ok(()) => self.apply(&mut tx, commit, &hash).await,
            Err(e) => Err(e),
        };
        match applied {
            Ok((outcome, last)) => {
                if let Err(e) = tx.commit().await {
                    self.prefetches.committed(&hash, None);
                    return Err(classify("commit", e));
                }
                self.prefetches.committed(&hash, last);
                if outcome.counts.changed() > 0 {
                    self.feed.signal.committed(outcome.seq);
                }
                Ok(outcome)
            }
            Err(e) => {
                // Dropping the transaction would roll it back too; doing it here returns
                // the connection to the pool clean.
                let _ = tx.rollback().await;
                self.prefetches.committed(&hash, None);
                Err(e)
            }
        }
    }
}

/// Settings of each of the pool's sessions, applied when it connects.
///
/// `jit = off`: the store's statements touch one page of rows through the primary key,
/// where LLVM compilation only adds time. Until a table's statistics are gathered
/// (`ANALYZE`, autovacuum), the planner estimates about 30 rows per primary-key lookup,
/// so a page's statements pass `jit_above_cost` once the table holds some 100,000 rows,
/// and compiling then took 10-20 ms per statement, more than the work itself. A server
/// without the setting (before PostgreSQL 11) is used as it is.
///
/// A read-only store's sessions also run with `default_transaction_read_only = on`.
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
