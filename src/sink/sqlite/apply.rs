//! A commit, applied: one `BEGIN IMMEDIATE` transaction that reads the stored versions,
//! lets [`commit::prepare`] decide, and writes what it prepared.

use std::collections::HashMap;

use rusqlite::{Connection, TransactionBehavior, params};

use super::error::sql_err;
use super::rows::{ensure_stream, micros};
use super::{BACKEND, feed};
use crate::error::Result;
use crate::merge::{StoredVersionBuf, payload_bytes_are_bare};
use crate::record::Cursor;
use crate::sink::commit::{self, Stored, Sweep, WriteKind};
use crate::sink::fault::Faults;
use crate::sink::seen::{SeenLive, SeenTally, Stamp};
use crate::sink::{Commit, CommitOutcome};
use crate::time::Timestamp;

/// What a commit's lookup found for a stored record: the row to write, the commit that
/// last changed it, and its stamp (for the sweep's count, [`crate::sink::seen`]).
#[derive(Debug, Clone, Copy)]
struct Handle {
    rowid: i64,
    seq: i64,
    stamp: Stamp,
}

/// The stored versions of `commit`'s ids that the stream holds, by id.
fn read_stored(
    tx: &Connection,
    stream_id: i64,
    commit: &Commit,
) -> rusqlite::Result<HashMap<String, Stored<Handle>>> {
    let ids = commit::ids_in_key_order(commit.records.iter().map(|r| r.id.as_str()));
    let ids = feed::id_list(ids.into_iter())?;
    let mut select = tx.prepare_cached(
        "SELECT r.id, r.record_id, r.last_modified_at, r.cursor,
                r.deleted_at IS NOT NULL OR r.last_action = 3, r.pruned_at IS NOT NULL,
                CASE WHEN octet_length(r.payload) <= 64 + 6 * octet_length(r.id) THEN r.payload END,
                r.seq, r.seen_gen
         FROM json_each(?2) AS j CROSS JOIN nango_records AS r
         WHERE r.stream_id = ?1 AND r.id = j.value",
    )?;
    let mut rows = select.query(params![stream_id, ids])?;
    let mut found = HashMap::with_capacity(commit.records.len());
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let bare = row
            .get_ref(6)?
            .as_bytes_or_null()?
            .is_some_and(|p| payload_bytes_are_bare(&id, p));
        let deleted: bool = row.get(4)?;
        let stored = Stored {
            handle: Handle {
                rowid: row.get(1)?,
                seq: row.get(7)?,
                stamp: Stamp {
                    generation: row.get::<_, i64>(8)? as u64,
                    live: !deleted,
                },
            },
            version: StoredVersionBuf {
                last_modified_at: Timestamp::from_micros(row.get(2)?),
                cursor: row.get(3)?,
                deleted,
                pruned: row.get::<_, bool>(5)? || bare,
            },
        };
        found.insert(id, stored);
    }
    Ok(found)
}

/// The sweeps that scanned a stream, by database file (for tests, which run
/// concurrently, each on files of its own).
#[cfg(test)]
pub(super) static SWEEP_SCANS: std::sync::Mutex<Vec<(String, u64)>> =
    std::sync::Mutex::new(Vec::new());

/// Count a sweep's scan of the database `conn` writes.
#[cfg(test)]
fn count_scan(conn: &Connection) {
    let path = conn.path().unwrap_or_default().to_owned();
    let mut scans = SWEEP_SCANS.lock().unwrap();
    match scans.iter_mut().find(|(p, _)| *p == path) {
        Some((_, n)) => *n += 1,
        None => scans.push((path, 1)),
    }
}

/// The stream's live records and its kept count of them stamped with a generation.
fn seen_live(tx: &Connection, stream_id: i64) -> rusqlite::Result<(u64, Option<SeenLive>)> {
    tx.prepare_cached(
        "SELECT live_records, seen_live_generation, seen_live_count FROM nango_streams WHERE stream_id = ?1",
    )?
    .query_row([stream_id], |r| {
        let live = r.get::<_, i64>(0)?.max(0) as u64;
        let kept = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?) {
            (Some(generation), Some(count)) => Some(SeenLive {
                generation: generation as u64,
                count: count.max(0) as u64,
            }),
            _ => None,
        };
        Ok((live, kept))
    })
}

/// The order a commit's writes are made in: new records by id, then stored ones by
/// rowid.
fn write_order<'c>(w: &commit::Write<'c, Handle>) -> (Option<i64>, &'c str) {
    (w.kind.stored().map(|h| h.rowid), w.record.id.as_str())
}

/// Apply `commit` on the writer connection.
pub(super) fn commit(
    conn: &mut Connection,
    faults: &Faults,
    commit: Commit,
) -> Result<CommitOutcome> {
    let e = |e| sql_err("commit", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let (stream_id, state) = ensure_stream(&tx, &commit.stream).map_err(e)?;
    let (live, kept) = seen_live(&tx, stream_id).map_err(e)?;

    // The stored versions of the page's ids, read by one statement on the first lookup
    // (after `prepare` checked the cursor): the page's ids go in as one JSON array, and
    // each is one indexed probe. The handle the writes use is the rowid, with the `seq`
    // of the commit that last changed the record (whose change list the record leaves if
    // this commit changes it).
    let prepared = {
        let mut stored: Option<HashMap<String, Stored<Handle>>> = None;
        commit::prepare(&state, &commit, |id| {
            if stored.is_none() {
                stored = Some(read_stored(&tx, stream_id, &commit).map_err(e)?);
            }
            Ok(stored.as_mut().and_then(|m| m.remove(id)))
        })?
    };
    let last_seq: i64 = tx
        .query_row(
            "SELECT value FROM nango_meta WHERE key = 'last_seq'",
            [],
            |r| r.get(0),
        )
        .map_err(e)?;
    let seq = last_seq + 1;
    let generation = prepared.generation() as i64;
    let tally = SeenTally::of(kept, live, &prepared, |h| Ok(h.stamp))?;

    // Each written id with the `seq` its record had (`None` when new), for the feed.
    let mut written: Vec<(&str, Option<i64>)> = Vec::with_capacity(prepared.writes().len());
    {
        // Within this IMMEDIATE transaction nobody else writes, so the lookups above
        // decide between a plain insert and an update of the row in place.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO nango_records (stream_id, id, payload, first_seen_at, last_modified_at, last_action,
                     deleted_at, pruned_at, cursor, seen_gen, seq, change_kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(e)?;
        let mut update = tx
            .prepare_cached(
                "UPDATE nango_records SET payload = ?2, first_seen_at = ?3, last_modified_at = ?4,
                     last_action = ?5, deleted_at = ?6, pruned_at = ?7, cursor = ?8, seen_gen = ?9, seq = ?10,
                     change_kind = ?11
                 WHERE record_id = ?1",
            )
            .map_err(e)?;
        let mut keep_payload = tx
            .prepare_cached(
                "UPDATE nango_records SET first_seen_at = ?2, last_modified_at = ?3, last_action = ?4,
                     deleted_at = ?5, pruned_at = ?6, cursor = ?7, seen_gen = ?8, seq = ?9, change_kind = ?10
                 WHERE record_id = ?1",
            )
            .map_err(e)?;
        // New records in id order (their entries in the key index go in leaf by leaf),
        // stored ones in rowid order (their rows, page by page).
        let mut writes: Vec<_> = prepared.writes().iter().collect();
        writes.sort_unstable_by(|a, b| write_order(a).cmp(&write_order(b)));
        for w in writes {
            written.push((w.record.id.as_str(), w.kind.stored().map(|h| h.seq)));
            let m = &w.record.meta;
            let (first, last, action) = (
                m.first_seen_at.as_micros(),
                m.last_modified_at.as_micros(),
                m.last_action.code(),
            );
            let (deleted, pruned, cursor) =
                (micros(m.deleted_at), micros(m.pruned_at), m.cursor.as_str());
            let change = w.change.code();
            match &w.kind {
                WriteKind::Insert { payload } => insert.execute(params![
                    stream_id,
                    w.record.id,
                    payload.as_str(),
                    first,
                    last,
                    action,
                    deleted,
                    pruned,
                    cursor,
                    generation,
                    seq,
                    change,
                ]),
                WriteKind::Replace { stored, payload } => update.execute(params![
                    stored.rowid,
                    payload.as_str(),
                    first,
                    last,
                    action,
                    deleted,
                    pruned,
                    cursor,
                    generation,
                    seq,
                    change,
                ]),
                WriteKind::KeepPayload { stored } => keep_payload.execute(params![
                    stored.rowid,
                    first,
                    last,
                    action,
                    deleted,
                    pruned,
                    cursor,
                    generation,
                    seq,
                    change,
                ]),
            }
            .map_err(e)?;
        }
        if !prepared.seen().is_empty() {
            let mut seen = tx
                .prepare_cached("UPDATE nango_records SET seen_gen = ?2 WHERE record_id = ?1")
                .map_err(e)?;
            let mut rowids: Vec<i64> = prepared.seen().iter().map(|s| s.stored.rowid).collect();
            rowids.sort_unstable();
            for rowid in rowids {
                seen.execute(params![rowid, generation]).map_err(e)?;
            }
        }
    }
    // The sweep: one scan finds the stream's live records stamped with another
    // generation than the re-read's, with the `seq` each had (for the feed): the older
    // ones are tombstoned by their rowid (nobody else writes inside this transaction),
    // the newer ones counted. It runs after the writes, so the page's records carry the
    // re-read's generation already. It is skipped when the stream's count says that
    // every live record carries it ([`crate::sink::seen`]).
    let mut swept_ids: Vec<(String, i64)> = Vec::new();
    let mut scanned = None;
    let sweep = prepared
        .sweep()
        .filter(|s| !tally.nothing_to_sweep(s.generation, live, prepared.live_delta_of_writes()));
    let swept = match sweep {
        Some(sweep) => {
            #[cfg(test)]
            count_scan(&tx);
            let mut select = tx
                .prepare_cached(
                    "SELECT record_id, id, seq, seen_gen FROM nango_records
                     WHERE stream_id = ?1 AND seen_gen != ?2 AND deleted_at IS NULL AND last_action != 3",
                )
                .map_err(e)?;
            let rows = select
                .query_map(params![stream_id, sweep.generation as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(e)?;
            let mut rowids = Vec::new();
            let mut newer = 0u64;
            for row in rows {
                let (rowid, id, old, seen_gen) = row.map_err(e)?;
                if sweep.sweeps(seen_gen as u64, false) {
                    rowids.push(rowid);
                    swept_ids.push((id, old));
                } else {
                    newer += 1;
                }
            }
            scanned = Some((sweep.generation, newer));
            let mut tombstone = tx
                .prepare_cached(
                    "UPDATE nango_records SET last_action = 3, deleted_at = ?2, seq = ?3, change_kind = ?4
                     WHERE record_id = ?1",
                )
                .map_err(e)?;
            for rowid in &rowids {
                tombstone
                    .execute(params![
                        rowid,
                        sweep.deleted_at.as_micros(),
                        seq,
                        Sweep::CHANGE.code(),
                    ])
                    .map_err(e)?;
            }
            rowids.len() as u64
        }
        None => 0,
    };
    written.extend(swept_ids.iter().map(|(id, old)| (id.as_str(), Some(*old))));
    feed::index_commit(&tx, stream_id, seq, written).map_err(e)?;
    faults.after_records(BACKEND)?;

    let done = prepared.finish(seq as u64, swept);
    // A stream row whose live count is off (rows removed by hand) keeps no count.
    let seen_after = live
        .checked_add_signed(done.live_delta)
        .and_then(|live| tally.finish(scanned, live));
    let (next, counts) = (&done.state, &done.outcome.counts);
    tx.prepare_cached(
        "UPDATE nango_streams SET cursor = ?2, generation = ?3, full_read = ?4,
             added = added + ?5, updated = updated + ?6, deleted = deleted + ?7,
             unchanged = unchanged + ?8, stale = stale + ?9,
             live_records = live_records + ?10, deleted_records = deleted_records + ?11,
             seen_live_generation = ?12, seen_live_count = ?13
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
        done.live_delta,
        done.deleted_delta,
        seen_after.map(|s| s.generation as i64),
        seen_after.map(|s| s.count as i64),
    ])
    .map_err(e)?;
    tx.prepare_cached("UPDATE nango_meta SET value = ?1 WHERE key = 'last_seq'")
        .map_err(e)?
        .execute([seq])
        .map_err(e)?;
    faults.before_commit(BACKEND)?;
    tx.commit().map_err(e)?;
    Ok(done.outcome)
}
