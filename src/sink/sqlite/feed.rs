//! The SQLite store's side of the change feed: its index per commit
//! (`nango_feed_commits`: each commit's changed ids, in chunks, with a count of the
//! records it is still the last change of, kept by the commit itself), reads of the feed
//! through it, named consumers (`nango_consumers`), the counts of a stream, and the
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

use std::collections::HashMap;
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

/// At most this many ids in one row of `nango_feed_commits` (a full re-read's sweep can
/// change a whole stream in one commit).
const CHUNK_IDS: usize = 1_000;

/// A row's key: the commit's `seq` times this, plus the chunk.
const CHUNKS_PER_COMMIT: i64 = 1 << 20;

fn commit_key(seq: i64) -> i64 {
    seq.saturating_mul(CHUNKS_PER_COMMIT)
}

/// `ids` as one JSON array of strings: how a statement takes a list of ids (a feed
/// row's list, a commit's lookups through `json_each`).
pub(super) fn id_list<'a>(ids: impl Iterator<Item = &'a str>) -> rusqlite::Result<String> {
    serde_json::to_string(&ids.collect::<Vec<_>>())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

/// In a commit's transaction, after its writes: index the commit in the feed. `written`
/// holds each id the commit changed (its writes and its sweep, each once) with the `seq`
/// its record had before (`None` for a new record). Writes the commit's id lists, and
/// retires the ids it took over from older commits: one decrement of `live` per older
/// commit, or the deletion of that commit's rows when none of its records is left.
pub(super) fn index_commit(
    tx: &Connection,
    stream_id: i64,
    seq: i64,
    mut written: Vec<(&str, Option<i64>)>,
) -> rusqlite::Result<()> {
    if written.is_empty() {
        return Ok(());
    }
    written.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut insert = tx.prepare_cached(
        "INSERT INTO nango_feed_commits (key, stream_id, ids, live) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (chunk, ids) in written.chunks(CHUNK_IDS).enumerate() {
        let list = id_list(ids.iter().map(|(id, _)| *id))?;
        let live = (chunk == 0).then_some(written.len() as i64);
        insert.execute(params![
            commit_key(seq) + chunk as i64,
            stream_id,
            list,
            live
        ])?;
    }
    let mut olds: Vec<i64> = written.iter().filter_map(|(_, old)| *old).collect();
    olds.sort_unstable();
    let mut decrement = tx.prepare_cached(
        "UPDATE nango_feed_commits SET live = live - ?2 WHERE key = ?1 AND live > ?2",
    )?;
    let mut retire =
        tx.prepare_cached("DELETE FROM nango_feed_commits WHERE key >= ?1 AND key < ?2")?;
    for group in olds.chunk_by(|a, b| a == b) {
        let (old, n) = (group[0], group.len() as i64);
        if decrement.execute(params![commit_key(old), n])? == 0 {
            retire.execute(params![commit_key(old), commit_key(old + 1)])?;
        }
    }
    Ok(())
}

/// Read the feed on a read connection, in one read transaction: walk the commits' id
/// lists in key order (commit, then chunk, then the ids' byte order), fetch each
/// record, and skip an id whose record a later commit changed (its `seq` moved on).
fn read_changes(conn: &Connection, query: &ChangeQuery) -> rusqlite::Result<ChangeBatch> {
    let tx = conn.unchecked_transaction()?;
    let last = last_seq(&tx)?;
    let mut changes = Vec::new();
    if query.limit == 0 {
        drop(tx);
        return Ok(ChangeBatch::assemble(query, changes, last));
    }
    // A position inside a commit reads the rest of that commit; one at its end starts
    // at the next commit.
    let since = i64::try_from(query.since.seq).unwrap_or(i64::MAX);
    let (from_seq, after_id) = match &query.since.id {
        Some(id) => (since, Some(id.as_str())),
        None => (since.saturating_add(1), None),
    };
    let cols = RECORD_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lists = tx.prepare_cached(
        "SELECT key, stream_id, ids FROM nango_feed_commits WHERE key >= ?1 ORDER BY key",
    )?;
    let mut record = tx.prepare_cached(&format!(
        "SELECT {KIND}, {cols} FROM nango_records r WHERE r.stream_id = ?1 AND r.id = ?2 AND r.seq = ?3"
    ))?;
    let mut streams: HashMap<i64, Option<StreamKey>> = HashMap::new();
    let mut rows = lists.query(params![commit_key(from_seq)])?;
    'lists: while let Some(row) = rows.next()? {
        let (key, stream_id): (i64, i64) = (row.get(0)?, row.get(1)?);
        let seq = key / CHUNKS_PER_COMMIT;
        let stream = match streams.get(&stream_id) {
            Some(stream) => stream.clone(),
            None => {
                let stream = stream_of(&tx, stream_id)?.filter(|s| query.filter.matches(s));
                streams.insert(stream_id, stream.clone());
                stream
            }
        };
        let Some(stream) = stream else { continue };
        let ids: Vec<String> = serde_json::from_str(row.get_ref(2)?.as_str()?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?;
        for id in &ids {
            if seq == from_seq && after_id.is_some_and(|after| id.as_str() <= after) {
                continue;
            }
            let found = record
                .query_row(params![stream_id, id, seq], |r| {
                    Ok((kind_from_code(r.get(0)?)?, record_from_row_at(r, 1)?))
                })
                .optional()?;
            if let Some((kind, record)) = found {
                changes.push(Change {
                    stream: stream.clone(),
                    kind,
                    record,
                });
                if changes.len() >= query.limit {
                    break 'lists;
                }
            }
        }
    }
    drop(rows);
    drop(lists);
    drop(record);
    drop(tx);
    Ok(ChangeBatch::assemble(query, changes, last))
}

/// The key of stream `stream_id`, if it exists.
fn stream_of(conn: &Connection, stream_id: i64) -> rusqlite::Result<Option<StreamKey>> {
    conn.prepare_cached(
        "SELECT integration, connection, model, variant FROM nango_streams WHERE stream_id = ?1",
    )?
    .query_row([stream_id], |r| {
        Ok(StreamKey {
            integration: r.get(0)?,
            connection: r.get(1)?,
            model: r.get(2)?,
            variant: r.get(3)?,
        })
    })
    .optional()
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
