//! The SQLite store's side of the change feed: reads of the feed through the index on
//! `(seq, id)`, named consumers (`nango_consumers`), the counts of a stream, and the
//! commit signal, with a watcher that notices commits made by other processes.
//!
//! A feed read runs in one read transaction, so it sees whole commits and the last
//! sequence number of the same snapshot. Commits are serialized by SQLite's write lock
//! (`BEGIN IMMEDIATE`), and each takes `last_seq + 1` inside its transaction, so a
//! commit with a larger number always becomes visible after every smaller one: a
//! reader that resumes from the last position it handled misses nothing.
//!
//! Other processes' commits cannot wake this one directly (SQLite has no notifications
//! between processes), so while a receiver of [`subscribe`](super::SqliteStore) exists,
//! a thread checks `PRAGMA data_version` every
//! [`SqliteOptions::with_commit_poll_interval`](super::SqliteOptions::with_commit_poll_interval)
//! (250 ms by default) and signals when another connection committed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::error::sql_err;
use super::rows::{RECORD_COLUMNS, record_from_row_at, stream_row};
use super::{SqliteStore, open_reader};
use crate::error::Result;
use crate::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, CommitSignal, Consumer, FeedPosition,
    RecordCounts, check_ack, validate_consumer,
};
use crate::record::StreamKey;
use crate::sink::ListQuery;
use crate::time::Timestamp;

/// The change kind of a row of `nango_records r`: the stored one, or for a record
/// written before schema 3, the kind derived from its metadata
/// ([`ChangeKind::of_legacy`]).
pub(super) const KIND: &str = "COALESCE(r.change_kind, CASE WHEN r.deleted_at IS NOT NULL OR r.last_action = 3 THEN 3 WHEN r.last_action = 1 THEN 1 ELSE 2 END)";

/// The store's feed state: the commit signal, and whether the watcher of other
/// processes' commits runs.
#[derive(Debug, Default)]
pub(super) struct FeedState {
    pub(super) signal: CommitSignal,
    watching: AtomicBool,
}

impl FeedState {
    pub(super) fn new(last_seq: u64) -> Self {
        FeedState {
            signal: CommitSignal::new(last_seq),
            watching: AtomicBool::new(false),
        }
    }
}

/// The store's last commit sequence number.
pub(super) fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM nango_meta WHERE key = 'last_seq'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// The SQL condition a [`ListQuery`]'s kind filter adds to a list (`r` the records).
pub(super) fn kind_condition(query: &ListQuery) -> String {
    match query.change {
        None if query.include_deleted => String::new(),
        None => "AND r.deleted_at IS NULL AND r.last_action != 3".to_string(),
        // A fixed code, never input.
        Some(kind) => format!("AND {KIND} = {}", kind.code()),
    }
}

fn kind_from_code(code: i64) -> rusqlite::Result<ChangeKind> {
    u8::try_from(code)
        .ok()
        .and_then(ChangeKind::from_code)
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Integer,
                format!("bad change kind {code}").into(),
            )
        })
}

/// Read the feed on a read connection, in one read transaction.
fn read_changes(conn: &Connection, query: &ChangeQuery) -> rusqlite::Result<ChangeBatch> {
    let tx = conn.unchecked_transaction()?;
    let last = last_seq(&tx)?;
    let mut changes = Vec::new();
    if query.limit > 0 {
        // `(r.seq, r.id) > (?1, ?2)` is a range of the (seq, id) index; a position at the
        // end of a commit starts at the next commit's first id.
        let (seq, id) = match &query.since.id {
            Some(id) => (query.since.seq, id.clone()),
            None => match query.since.seq.checked_add(1) {
                Some(next) => (next, String::new()),
                None => return Ok(ChangeBatch::assemble(query, changes, last)),
            },
        };
        let bound = if query.since.id.is_some() { ">" } else { ">=" };
        // CROSS JOIN keeps the records (in index order) as the outer loop; the stream of
        // each row is one primary-key lookup.
        let sql = format!(
            "SELECT s.integration, s.connection, s.model, s.variant, {KIND}, {cols}
             FROM nango_records r CROSS JOIN nango_streams s
             WHERE (r.seq, r.id) {bound} (?1, ?2) AND s.stream_id = r.stream_id
               AND (?3 IS NULL OR s.integration = ?3) AND (?4 IS NULL OR s.connection = ?4)
               AND (?5 IS NULL OR s.model = ?5) AND (?6 IS NULL OR s.variant = ?6)
             ORDER BY r.seq, r.id LIMIT ?7",
            cols = RECORD_COLUMNS
                .split(", ")
                .map(|c| format!("r.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let f = &query.filter;
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                id,
                f.integration,
                f.connection,
                f.model,
                f.variant,
                i64::try_from(query.limit).unwrap_or(i64::MAX),
            ],
            |r| {
                let stream = StreamKey {
                    integration: r.get(0)?,
                    connection: r.get(1)?,
                    model: r.get(2)?,
                    variant: r.get(3)?,
                };
                let kind = kind_from_code(r.get(4)?)?;
                let record = record_from_row_at(r, 5)?;
                Ok(Change {
                    stream,
                    kind,
                    record,
                })
            },
        )?;
        for row in rows {
            changes.push(row?);
        }
    }
    drop(tx);
    Ok(ChangeBatch::assemble(query, changes, last))
}

fn position_of(seq: i64, id: Option<String>) -> FeedPosition {
    FeedPosition {
        seq: u64::try_from(seq).unwrap_or(0),
        id,
    }
}

fn read_consumer(conn: &Connection, name: &str) -> rusqlite::Result<Option<FeedPosition>> {
    conn.prepare_cached("SELECT seq, id FROM nango_consumers WHERE name = ?1")?
        .query_row([name], |r| Ok(position_of(r.get(0)?, r.get(1)?)))
        .optional()
}

/// Store `position` for `consumer` unless it is behind the stored one, in one write
/// transaction that also reads the store's last commit.
fn write_ack(
    conn: &mut Connection,
    consumer: &str,
    position: &FeedPosition,
) -> Result<FeedPosition> {
    let e = |e| sql_err("acknowledge a feed position", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    check_ack(consumer, position, last_seq(&tx).map_err(e)?)?;
    let stored = read_consumer(&tx, consumer).map_err(e)?.unwrap_or_default();
    if *position <= stored {
        return Ok(stored);
    }
    tx.prepare_cached(
        "INSERT INTO nango_consumers (name, seq, id, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, id = excluded.id, updated_at = excluded.updated_at",
    )
    .map_err(e)?
    .execute(params![
        consumer,
        i64::try_from(position.seq).unwrap_or(i64::MAX),
        position.id,
        Timestamp::now().as_micros()
    ])
    .map_err(e)?;
    tx.commit().map_err(e)?;
    Ok(position.clone())
}

impl SqliteStore {
    /// See [`RecordSink::changes`](crate::RecordSink::changes).
    pub(super) async fn feed_changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        let query = query.clone();
        self.read("read the change feed", move |c| {
            read_changes(c, &query).map_err(|e| sql_err("read the change feed", e))
        })
        .await
    }

    pub(super) async fn feed_last_seq(&self) -> Result<u64> {
        self.read("read the last commit number", |c| {
            last_seq(c).map_err(|e| sql_err("read the last commit number", e))
        })
        .await
    }

    /// A receiver of the commit signal; starts the watcher of other processes' commits
    /// the first time.
    pub(super) fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.feed.signal.subscribe();
        if !self.feed.watching.swap(true, Ordering::SeqCst) {
            let feed = Arc::downgrade(&self.feed);
            let path = self.path.clone();
            let (busy, every) = (self.options.busy_timeout, self.options.commit_poll_interval);
            let spawned = std::thread::Builder::new()
                .name("nango-sync-sqlite-watch".into())
                .spawn(move || watch_other_processes(feed, path, busy, every));
            if let Err(e) = spawned {
                self.feed.watching.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start the thread that notices other processes' commits; subscribers wake on this process's commits only");
            }
        }
        receiver
    }

    pub(super) async fn feed_consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let name = consumer.to_owned();
        self.read("read a consumer position", move |c| {
            read_consumer(c, &name)
                .map(Option::unwrap_or_default)
                .map_err(|e| sql_err("read a consumer position", e))
        })
        .await
    }

    pub(super) async fn feed_ack(
        &self,
        consumer: &str,
        position: &FeedPosition,
    ) -> Result<FeedPosition> {
        validate_consumer(consumer)?;
        let (name, position) = (consumer.to_owned(), position.clone());
        self.write("acknowledge a feed position", move |c, _| {
            write_ack(c, &name, &position)
        })
        .await
    }

    pub(super) async fn feed_consumers(&self) -> Result<Vec<Consumer>> {
        self.read("list consumers", |c| {
            let e = |e| sql_err("list consumers", e);
            let mut stmt = c
                .prepare_cached("SELECT name, seq, id FROM nango_consumers ORDER BY name")
                .map_err(e)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Consumer {
                        name: r.get(0)?,
                        position: position_of(r.get(1)?, r.get(2)?),
                    })
                })
                .map_err(e)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
        })
        .await
    }

    pub(super) async fn feed_remove_consumer(&self, consumer: &str) -> Result<bool> {
        validate_consumer(consumer)?;
        let name = consumer.to_owned();
        self.write("remove a consumer", move |c, _| {
            c.prepare_cached("DELETE FROM nango_consumers WHERE name = ?1")
                .and_then(|mut s| s.execute([&name]))
                .map(|n| n > 0)
                .map_err(|e| sql_err("remove a consumer", e))
        })
        .await
    }

    pub(super) async fn feed_count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        let key = stream.clone();
        self.read("count records", move |c| {
            let e = |e| sql_err("count records", e);
            let Some((id, _)) = stream_row(c, &key).map_err(e)? else {
                return Ok(RecordCounts::default());
            };
            c.prepare_cached(
                "SELECT live_records, deleted_records FROM nango_streams WHERE stream_id = ?1",
            )
            .map_err(e)?
            .query_row([id], |r| {
                Ok(RecordCounts {
                    live: r.get::<_, i64>(0)? as u64,
                    deleted: r.get::<_, i64>(1)? as u64,
                })
            })
            .map_err(e)
        })
        .await
    }
}

/// The watcher's loop: every `every`, while someone is subscribed, compare
/// `PRAGMA data_version` (which changes when any other connection commits) with its last
/// value, and signal the store's last commit when it moved. Ends with the store.
fn watch_other_processes(feed: Weak<FeedState>, path: PathBuf, busy: Duration, every: Duration) {
    let mut conn: Option<Connection> = None;
    let mut version: Option<i64> = None;
    loop {
        std::thread::sleep(every);
        let Some(feed) = feed.upgrade() else { return };
        if !feed.signal.has_subscribers() {
            continue;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match open_reader(&path, busy) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "commit watcher: cannot open the database");
                    continue;
                }
            },
        };
        let checked = c
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .and_then(|v| {
                if version.replace(v) != Some(v) {
                    feed.signal.committed(last_seq(&c)?);
                }
                Ok(())
            });
        match checked {
            Ok(()) => conn = Some(c),
            Err(e) => tracing::debug!(error = %e, "commit watcher: check failed; retrying"),
        }
    }
}
