//! The PostgreSQL store's side of the change feed: each commit's list of changed ids
//! (`feed_commits`, written on the commit path), reads of the feed through those lists,
//! named consumers (`consumers`), the counts of a stream, and the commit signal, fed by
//! this process's commits and by `LISTEN` for other processes'.
//!
//! # One entry per commit
//!
//! A commit that changes records writes one row of `feed_commits` per chunk of at most
//! 1,000 of its ids (sorted), keyed (seq, chunk); chunk 0 holds `live`, how many of the
//! commit's records still carry its `seq`. The records themselves keep `seq` and the
//! change kind, unindexed, so an update of a record changes no indexed column and can be
//! HOT. A read walks the lists from the position and skips an id whose record's `seq`
//! is no longer the list's: a later commit changed it, and the feed shows it there (the
//! feed keeps only each record's last change). A commit that rewrites records of an
//! older commit decrements that commit's `live` by their number, once per distinct
//! older commit, and deletes its rows when `live` reaches 0, in the commit's
//! transaction; so `feed_commits` holds at most one row per chunk of live records.
//!
//! # Why a reader misses nothing
//!
//! Every commit updates the one row of `commit_seq` inside its transaction to take its
//! sequence number, and that row lock is held until the transaction ends. So a commit
//! takes number `n + 1` only after the commit numbered `n` has committed (PostgreSQL makes
//! a transaction visible before it releases its locks), and commits become visible in
//! the order of their numbers. A feed read is one read-only `REPEATABLE READ` transaction,
//! so all its statements read one snapshot: if it sees commit `n + 1`, it sees every
//! commit before it. A
//! reader that stores the position of the last change it handled and resumes from it
//! can therefore never skip a change, whatever crashed, and however many processes
//! commit at once (the cost: commits of all streams are serialized on that row, from
//! taking their number to their end).
//!
//! # Notifications
//!
//! A commit that changed records sends `NOTIFY` on the store's channel
//! ([`PostgresStore::notify_channel`]) with its sequence number, in its transaction (by
//! the statement that writes the stream's row, sparing a round trip), so the
//! notification is delivered only if it commits. The first
//! [`subscribe`](crate::RecordSink::subscribe) starts a task that `LISTEN`s on a
//! connection of its own and wakes the subscribers; after the connection is lost and
//! made again it reads `commit_seq`, so a commit made meanwhile still wakes them.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgBindIterExt, PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Row, SqlStr};

use super::error::{classify, decode};
use super::rows::{record_from_row, stream_hash, to_i64, to_u64};
use super::schema::RECORD_COLUMNS;
use super::{BACKEND, PostgresStore};
use crate::error::{Error, Result};
use crate::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, CommitSignal, Consumer, FeedPosition,
    RecordCounts, check_ack, validate_consumer,
};
use crate::record::StreamKey;
use crate::sink::commit::Sweep;

/// The change kind of a row of `records r`: the stored one, or for a record written
/// before migration 2, the kind derived from its metadata
/// ([`ChangeKind::of_legacy`]).
pub(super) const KIND: &str = "COALESCE(r.change_kind, CASE WHEN r.deleted THEN 3::int2 WHEN r.last_action = 1 THEN 1::int2 ELSE 2::int2 END)";

/// The most ids a row of `feed_commits` holds: a commit that changes more (a full
/// re-read's sweep) writes several rows, keyed (seq, chunk).
const FEED_CHUNK: usize = 1000;

/// The feed's statements, with the schema filled in once.
#[derive(Debug)]
pub(super) struct FeedStatements {
    read: SqlStr,
    upkeep: SqlStr,
    upkeep_sweep: SqlStr,
    last_seq: SqlStr,
    consumer: SqlStr,
    ack: SqlStr,
    consumers: SqlStr,
    remove_consumer: SqlStr,
    count: SqlStr,
}

impl FeedStatements {
    pub(super) fn new(schema: &str) -> Self {
        // `schema` is validated and quoted; every other value is a bind parameter.
        let s = |sql: String| -> SqlStr {
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.replace("{s}", schema)))
        };
        // One statement, one snapshot: the changes and the last commit number agree.
        // `$1`/`$2` the position, `$3..$6` the stream filter, `$7` the limit.
        // Walks the commits' id lists in order (the key (seq, chunk), then each list's
        // order, which is the ids' byte order), fetches each record, and skips an id
        // whose record a later commit changed (its `seq` moved on).
        // `$8`/`$9` the last list read by the round before (seq, chunk), `$10` how many
        // lists this round reads at most. The position's commit `$1` lists only its ids
        // after `$2`.
        let read = s(format!(
            "WITH last AS (SELECT seq FROM {{s}}.commit_seq), \
             c AS (SELECT fc.seq, fc.chunk, fc.stream_id, fc.ids FROM {{s}}.feed_commits fc \
               JOIN {{s}}.streams t ON t.stream_id = fc.stream_id \
               WHERE (fc.seq, fc.chunk) > ($8, $9) \
                 AND (fc.seq > $1 OR ($2::text IS NOT NULL AND fc.seq = $1 \
                      AND fc.ids[array_upper(fc.ids, 1)] > $2::text)) \
                 AND ($3::text IS NULL OR t.integration = $3) \
                 AND ($4::text IS NULL OR t.connection = $4) \
                 AND ($5::text IS NULL OR t.model = $5) \
                 AND ($6::text IS NULL OR t.variant = $6) \
               ORDER BY fc.seq, fc.chunk LIMIT $10), \
             scanned AS (SELECT count(*) AS n, max(seq) AS seq, \
               max(chunk) FILTER (WHERE seq = (SELECT max(seq) FROM c)) AS chunk FROM c) \
             SELECT f.*, last.seq AS last_seq, scanned.n, scanned.seq, scanned.chunk \
             FROM last CROSS JOIN scanned LEFT JOIN LATERAL ( \
               SELECT {RECORD_COLUMNS}, t.integration, t.connection, t.model, t.variant, \
                      {KIND} AS kind \
               FROM c JOIN {{s}}.streams t ON t.stream_id = c.stream_id \
               CROSS JOIN LATERAL unnest(c.ids) WITH ORDINALITY AS u(id, n) \
               CROSS JOIN LATERAL (SELECT o.* FROM {{s}}.records o \
                 WHERE o.stream_id = c.stream_id AND o.id = u.id OFFSET 0) r \
               WHERE r.seq = c.seq AND (c.seq > $1 OR u.id > $2::text) \
               ORDER BY c.seq, c.chunk, u.n LIMIT $7) f ON true"
        ));
        // A commit's upkeep, after its writes: its id list, in chunks (`$1` the stream,
        // `$2` the commit's number), and the retirement of the ids it took over from
        // older commits (`gone`: each older commit and how many of its ids this one
        // took over): one decrement of `live` per older commit, or the deletion of that
        // commit's rows when none of its records is left.
        let retire = "kept AS (UPDATE {s}.feed_commits f SET live = f.live - g.n FROM gone g \
                   WHERE f.seq = g.old AND f.chunk = 0 AND f.live > g.n), \
                 retired AS (DELETE FROM {s}.feed_commits f USING {s}.feed_commits h, gone g \
                   WHERE h.seq = g.old AND h.chunk = 0 AND h.live <= g.n AND f.seq = h.seq)";
        // The ids of a commit without a sweep come sorted (byte order) from the client,
        // `$3`, with `$4` the older commits and `$5` how many ids each gave up: the
        // server slices them into chunks without sorting or grouping anything (half of
        // the statement's time when it sorted them).
        let upkeep = s(format!(
            "WITH entry AS (INSERT INTO {{s}}.feed_commits (seq, chunk, stream_id, ids, live) \
               SELECT $2, k, $1, $3[k * {FEED_CHUNK} + 1 : (k + 1) * {FEED_CHUNK}], \
                      CASE WHEN k = 0 THEN cardinality($3) END \
               FROM generate_series(0, (cardinality($3) - 1) / {FEED_CHUNK}) AS k \
               WHERE cardinality($3) > 0), \
             gone AS (SELECT old, n FROM UNNEST($4::int8[], $5::int4[]) AS g(old, n)), \
             {retire} \
             SELECT 0::int8"
        ));
        // With a sweep, the swept ids join the written ones (`$3` and `$4` the `seq` each
        // had, NULL for a new record) on the server, which sorts and chunks them.
        let upkeep_with = |swept: &str, ids: &str, result: &str| {
            s(format!(
                "WITH {swept} c AS ({ids}), \
                 entry AS (INSERT INTO {{s}}.feed_commits (seq, chunk, stream_id, ids, live) \
                   SELECT $2, k, $1, array_agg(id ORDER BY id COLLATE \"C\"), \
                          CASE WHEN k = 0 THEN (SELECT count(*) FROM c)::int END \
                   FROM (SELECT id, (row_number() OVER (ORDER BY id COLLATE \"C\") - 1) / {FEED_CHUNK} AS k \
                         FROM c) x \
                   GROUP BY k), \
                 gone AS (SELECT old, count(*)::int AS n FROM c WHERE old IS NOT NULL GROUP BY old), \
                 {retire} \
                 SELECT {result}"
            ))
        };
        let written = "SELECT id, old FROM UNNEST($3::text[], $4::int8[]) AS u(id, old)";
        FeedStatements {
            read,
            upkeep,
            // One scan finds the stream's live records stamped with another generation
            // (the page's carry the re-read's already): the older ones are swept, the
            // newer ones counted, for the stream's count of `sink::seen`.
            upkeep_sweep: upkeep_with(
                "other AS (SELECT id, seq, seen_generation FROM {s}.records \
                   WHERE stream_id = $1 AND seen_generation <> $5 AND NOT deleted), \
                 swept AS (UPDATE {s}.records r SET last_action = 3, deleted_at = $6, deleted = true, \
                   seq = $2, change_kind = $7 \
                   FROM other o \
                   WHERE o.seen_generation < $5 AND r.stream_id = $1 AND r.id = o.id \
                   RETURNING r.id, o.seq AS old),",
                &format!("{written} UNION ALL SELECT id, old FROM swept"),
                "(SELECT count(*) FROM swept), \
                 (SELECT count(*) FROM other WHERE seen_generation > $5)",
            ),
            last_seq: s("SELECT seq FROM {s}.commit_seq".into()),
            consumer: s("SELECT seq, id FROM {s}.consumers WHERE name = $1".into()),
            // Stored only when later than the stored position (the end of a commit,
            // a NULL id, comes after each of its ids).
            ack: s("INSERT INTO {s}.consumers AS c (name, seq, id) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, id = EXCLUDED.id, updated_at = now() \
                 WHERE EXCLUDED.seq > c.seq \
                    OR (EXCLUDED.seq = c.seq AND c.id IS NOT NULL AND (EXCLUDED.id IS NULL OR EXCLUDED.id > c.id)) \
                 RETURNING seq, id"
                .into()),
            consumers: s("SELECT name, seq, id FROM {s}.consumers ORDER BY name".into()),
            remove_consumer: s("DELETE FROM {s}.consumers WHERE name = $1".into()),
            count: s(
                "SELECT live_records, deleted_records FROM {s}.streams WHERE key_hash = $1".into(),
            ),
        }
    }
}

/// The store's feed state: the commit signal and the task that listens for other
/// processes' commits (stopped when the store is dropped).
#[derive(Debug, Default)]
pub(super) struct FeedState {
    pub(super) signal: CommitSignal,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FeedState {
    pub(super) fn new(last_seq: u64) -> Self {
        FeedState {
            signal: CommitSignal::new(last_seq),
            listener: Mutex::new(None),
        }
    }
}

impl Drop for FeedState {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// The channel of a schema's commits: `nango_sync_` and 16 hex digits of the schema's
/// SHA-256 (a channel name is an identifier of at most 63 bytes).
pub(super) fn channel(schema: &str) -> String {
    let digest = Sha256::digest(schema.as_bytes());
    format!("nango_sync_{}", hex::encode(&digest[..8]))
}

fn position_of(seq: i64, id: Option<String>) -> FeedPosition {
    FeedPosition {
        seq: to_u64(seq),
        id,
    }
}

fn change_from_row(row: &PgRow) -> Result<Change> {
    let record = record_from_row(row)?;
    let stream = StreamKey {
        integration: row.try_get(9).map_err(decode)?,
        connection: row.try_get(10).map_err(decode)?,
        model: row.try_get(11).map_err(decode)?,
        variant: row.try_get(12).map_err(decode)?,
    };
    let code: i16 = row.try_get(13).map_err(decode)?;
    let kind = u8::try_from(code)
        .ok()
        .and_then(ChangeKind::from_code)
        .ok_or_else(|| {
            Error::store(
                BACKEND,
                "read the change feed",
                false,
                format!("unknown change kind {code}"),
            )
        })?;
    Ok(Change {
        stream,
        kind,
        record,
    })
}

/// The last commit number, read on `conn`.
async fn read_last_seq(
    conn: &mut PgConnection,
    sql: &SqlStr,
) -> std::result::Result<u64, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(sql.clone()).fetch_one(conn).await?;
    Ok(to_u64(seq))
}

impl PostgresStore {
    /// The channel this store's commits are announced on with `NOTIFY` (payload: the
    /// commit's sequence number), for applications that listen themselves.
    pub fn notify_channel(&self) -> &str {
        &self.channel
    }

    /// In a commit's transaction, after its writes: write the commit's id list (the ids
    /// of `written`, each with the `seq` its record had before, `None` for a new record,
    /// and those of the sweep when there is one) and retire the ids it took over from
    /// older commits. With a sweep, returns the number of records it deleted and of the
    /// live records it spared for carrying a newer generation than the re-read's.
    pub(super) async fn feed_upkeep(
        &self,
        conn: &mut PgConnection,
        stream_id: i64,
        seq: i64,
        written: &[(&str, Option<i64>)],
        sweep: Option<(&Sweep<'_>, i16)>,
    ) -> Result<Option<(u64, u64)>> {
        match sweep {
            None => {
                let mut sorted: Vec<&str> = written.iter().map(|(id, _)| *id).collect();
                sorted.sort_unstable();
                let mut gone: Vec<(i64, i32)> = Vec::new();
                let mut olds: Vec<i64> = written.iter().filter_map(|(_, old)| *old).collect();
                olds.sort_unstable();
                for old in olds {
                    match gone.last_mut() {
                        Some((seq, n)) if *seq == old => *n += 1,
                        _ => gone.push((old, 1)),
                    }
                }
                sqlx::query(self.feed_sql.upkeep.clone())
                    .bind(stream_id)
                    .bind(seq)
                    .bind(sorted)
                    .bind(gone.iter().map(|(old, _)| *old).bind_iter())
                    .bind(gone.iter().map(|(_, n)| *n).bind_iter())
                    .execute(conn)
                    .await
                    .map_err(|e| classify("write the commit's change list", e))?;
                Ok(None)
            }
            Some((sweep, kind)) => {
                let (swept, newer): (i64, i64) = sqlx::query_as(self.feed_sql.upkeep_sweep.clone())
                    .bind(stream_id)
                    .bind(seq)
                    .bind(written.iter().map(|(id, _)| *id).bind_iter())
                    .bind(written.iter().map(|(_, old)| *old).bind_iter())
                    .bind(to_i64(sweep.generation))
                    .bind(sweep.deleted_at.as_micros())
                    .bind(kind)
                    .fetch_one(conn)
                    .await
                    .map_err(|e| classify("sweep", e))?;
                Ok(Some((to_u64(swept), to_u64(newer))))
            }
        }
    }

    /// Acknowledge a position inside the application's own transaction (or on its own
    /// connection), so that what the application wrote while handling the changes and
    /// the consumer's position commit together: exactly once, without a second
    /// transaction. `conn` must be a connection to this store's database (for example
    /// `&mut *tx` of a `sqlx::Transaction`). Like [`RecordSink::ack`](crate::RecordSink::ack):
    /// a position never moves back, and one past the store's last commit is refused.
    pub async fn ack_in(
        &self,
        conn: &mut PgConnection,
        consumer: &str,
        position: &FeedPosition,
    ) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let last = read_last_seq(&mut *conn, &self.feed_sql.last_seq)
            .await
            .map_err(|e| classify("read the last commit number", e))?;
        check_ack(consumer, position, last)?;
        let stored = sqlx::query(self.feed_sql.ack.clone())
            .bind(consumer)
            .bind(to_i64(position.seq))
            .bind(position.id.as_deref())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| classify("acknowledge a feed position", e))?;
        match stored {
            Some(row) => Ok(position_of(
                row.try_get(0).map_err(decode)?,
                row.try_get(1).map_err(decode)?,
            )),
            // Not later than the stored position: that one stays.
            None => self.consumer_on(conn, consumer).await,
        }
    }

    async fn consumer_on(&self, conn: &mut PgConnection, consumer: &str) -> Result<FeedPosition> {
        let row = sqlx::query(self.feed_sql.consumer.clone())
            .bind(consumer)
            .fetch_optional(conn)
            .await
            .map_err(|e| classify("read a consumer position", e))?;
        match row {
            Some(row) => Ok(position_of(
                row.try_get(0).map_err(decode)?,
                row.try_get(1).map_err(decode)?,
            )),
            None => Ok(FeedPosition::START),
        }
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool
            .acquire()
            .await
            .map_err(|e| classify("acquire a connection", e))
    }

    /// Read the feed in rounds of id lists (1, 2, 4, ... up to 256 lists a round) until
    /// the limit is reached or the lists end, in one read-only `REPEATABLE READ`
    /// transaction: every round reads the same snapshot, so the changes and the last
    /// commit number agree.
    pub(super) async fn feed_changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        let err = |e| classify("read the change feed", e);
        let f = &query.filter;
        let limit = query.limit.max(1);
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(err)?;
        let since = to_i64(query.since.seq);
        let (mut after_seq, mut after_chunk) = (since, -1i32);
        let mut lists: i64 = 1;
        let mut last = 0;
        let mut changes = Vec::new();
        loop {
            // At least one row: the last commit number and what the round scanned,
            // with NULL columns when no change follows.
            let rows = sqlx::query(self.feed_sql.read.clone())
                .bind(since)
                .bind(query.since.id.as_deref())
                .bind(f.integration.as_deref())
                .bind(f.connection.as_deref())
                .bind(f.model.as_deref())
                .bind(f.variant.as_deref())
                .bind(i64::try_from(limit - changes.len()).unwrap_or(i64::MAX))
                .bind(after_seq)
                .bind(after_chunk)
                .bind(lists)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            let mut scanned = (0i64, None::<i64>, None::<i32>);
            for row in &rows {
                last = to_u64(row.try_get(14).map_err(decode)?);
                scanned = (
                    row.try_get(15).map_err(decode)?,
                    row.try_get(16).map_err(decode)?,
                    row.try_get(17).map_err(decode)?,
                );
                if row
                    .try_get::<Option<String>, _>(0)
                    .map_err(decode)?
                    .is_some()
                {
                    changes.push(change_from_row(row)?);
                }
            }
            match scanned {
                (n, Some(seq), Some(chunk)) if n == lists && changes.len() < limit => {
                    (after_seq, after_chunk) = (seq, chunk);
                    lists = (lists * 2).min(256);
                }
                _ => break,
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(ChangeBatch::assemble(query, changes, last))
    }

    pub(super) async fn feed_last_seq(&self) -> Result<u64> {
        let mut conn = self.connection().await?;
        read_last_seq(&mut conn, &self.feed_sql.last_seq)
            .await
            .map_err(|e| classify("read the last commit number", e))
    }

    /// A receiver of the commit signal; starts the `LISTEN` task the first time.
    pub(super) fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.feed.signal.subscribe();
        let mut listener = self.feed.listener.lock().unwrap_or_else(|p| p.into_inner());
        if listener.is_none() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    *listener = Some(runtime.spawn(listen(
                        Arc::downgrade(&self.feed),
                        self.connect.clone(),
                        self.channel.clone(),
                        self.feed_sql.last_seq.clone(),
                    )));
                }
                Err(_) => tracing::warn!(
                    "subscribe was called outside a tokio runtime: subscribers wake on this process's commits only"
                ),
            }
        }
        receiver
    }

    pub(super) async fn feed_consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let mut conn = self.connection().await?;
        self.consumer_on(&mut conn, consumer).await
    }

    pub(super) async fn feed_ack(
        &self,
        consumer: &str,
        position: &FeedPosition,
    ) -> Result<FeedPosition> {
        let mut conn = self.connection().await?;
        self.ack_in(&mut conn, consumer, position).await
    }

    pub(super) async fn feed_consumers(&self) -> Result<Vec<Consumer>> {
        let rows = sqlx::query(self.feed_sql.consumers.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list consumers", e))?;
        rows.iter()
            .map(|row| {
                Ok(Consumer {
                    name: row.try_get(0).map_err(decode)?,
                    position: position_of(
                        row.try_get(1).map_err(decode)?,
                        row.try_get(2).map_err(decode)?,
                    ),
                })
            })
            .collect()
    }

    pub(super) async fn feed_remove_consumer(&self, consumer: &str) -> Result<bool> {
        validate_consumer(consumer)?;
        let done = sqlx::query(self.feed_sql.remove_consumer.clone())
            .bind(consumer)
            .execute(&self.pool)
            .await
            .map_err(|e| classify("remove a consumer", e))?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn feed_count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        let row = sqlx::query(self.feed_sql.count.clone())
            .bind(stream_hash(stream))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("count records", e))?;
        match row {
            Some(row) => Ok(RecordCounts {
                live: to_u64(row.try_get(0).map_err(decode)?),
                deleted: to_u64(row.try_get(1).map_err(decode)?),
            }),
            None => Ok(RecordCounts::default()),
        }
    }
}

/// A pool of the one long-lived connection a `LISTEN` task holds.
pub(super) fn listener_pool(connect: PgConnectOptions) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(connect)
}

/// A listener on `pool`'s connection, listening on `channel` (it reconnects by itself
/// only when told to: the caller's loop does, with its backoff).
pub(super) async fn listen_on(
    pool: &sqlx::PgPool,
    channel: &str,
) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The `LISTEN` task: a connection of its own on the store's channel; every
/// notification (and every reconnection, after reading `commit_seq`) signals the
/// subscribers. Retries with backoff while the server is unreachable; ends with the
/// store (the task is aborted when its feed state is dropped).
async fn listen(
    feed: Weak<FeedState>,
    connect: PgConnectOptions,
    channel: String,
    last_seq: SqlStr,
) {
    let pool = listener_pool(connect);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match listen_on(&pool, &channel).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for the store's commits; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut catch_up = true;
        loop {
            if catch_up {
                // Commits made while nobody listened.
                match sqlx::query_scalar::<_, i64>(last_seq.clone())
                    .fetch_one(&mut listener)
                    .await
                {
                    Ok(seq) => match feed.upgrade() {
                        Some(feed) => feed.signal.committed(to_u64(seq)),
                        None => return,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the last commit number failed; reconnecting");
                        break;
                    }
                }
                catch_up = false;
            }
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some(feed) = feed.upgrade() else { return };
                    match notification.payload().parse::<u64>() {
                        Ok(seq) => feed.signal.committed(seq),
                        Err(_) => catch_up = true,
                    }
                }
                // The connection was lost and made again: notifications may have been
                // missed.
                Ok(None) => catch_up = true,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN for the store's commits failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
