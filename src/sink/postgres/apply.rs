//! A commit, applied: one transaction that locks the stream's row, reads the stored
//! versions in one query, lets [`commit::prepare`] decide, and writes what it prepared
//! with a few set-based statements.

use sqlx::postgres::{PgArguments, PgBindIterExt, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};

use super::error::{classify, decode};
use super::prefetch::Versions;
use super::rows::{state_from_row, to_i64, to_u64};
use super::{BACKEND, PostgresStore};
use crate::error::{Error, Result};
use crate::merge::StoredVersionBuf;
use crate::record::{Metadata, StreamKey};
use crate::sink::commit::{self, Stored, Sweep, WriteKind};
use crate::sink::prefetch::{LastCommit, Usable};
use crate::sink::seen::{SeenLive, SeenTally, Stamp};
use crate::sink::{Commit, CommitOutcome, StreamState};
use crate::time::Timestamp;

impl PostgresStore {
    /// Apply `commit` inside `tx` (the caller commits or rolls back); `hash` is its
    /// stream's key hash.
    ///
    /// Also returns what the store remembers of the commit for a prefetch of the
    /// stream's next page (`prefetch.rs`), when one waits.
    pub(super) async fn apply(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commit: &Commit,
        hash: &[u8],
    ) -> Result<(CommitOutcome, Option<LastCommit>)> {
        let locked = self.lock_stream(tx, &commit.stream, hash).await?;
        let (stream_id, state) = (locked.stream_id, &locked.state);

        // The stored versions of the page's ids, in one query, once the cursor is known
        // to be the expected one.
        commit::check_cursor(state, commit)?;
        // Each with the `seq` of the commit that last changed it, whose change list the
        // record leaves if this commit changes it, and its stamp (the handle). Read by
        // a prefetch while the previous page committed, when it is still good
        // (`prefetch.rs`).
        let mut stored = self
            .stored_versions(tx, hash, stream_id, locked.last_seq, commit)
            .await?;
        // Each distinct id is looked up once: its version moves out of the map.
        let prepared = commit::prepare(state, commit, |id| {
            Ok(stored
                .remove(id)
                .map(|(version, handle)| Stored { version, handle }))
        })?;

        let seq: i64 = sqlx::query_scalar(self.sql.next_seq.clone())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| classify("next commit number", e))?;
        let stamp = (seq, to_i64(prepared.generation()));
        let tally = SeenTally::of(locked.seen_live, locked.live, &prepared, |h| Ok(h.stamp))?;

        // Three kinds of writes, each one statement when there are any: records the
        // store does not hold are inserted (no conflict is possible: the stream's lock
        // orders its commits, and the read above saw every record of the stream);
        // stored records are updated with their new payload; stored records keeping
        // their payload get only the metadata. An update must find every row the read
        // above found.
        let mut inserts = Vec::new();
        let mut overwrites = Vec::new();
        let mut keeps = Vec::new();
        let mut written = Vec::with_capacity(prepared.writes().len());
        for w in prepared.writes() {
            written.push((w.record.id.as_str(), w.kind.stored().map(|h| h.seq)));
            match &w.kind {
                WriteKind::Insert { payload } => inserts.push((w.record, *payload, w.change)),
                WriteKind::Replace { payload, .. } => {
                    overwrites.push((w.record, *payload, w.change))
                }
                WriteKind::KeepPayload { .. } => keeps.push((w.record, w.change)),
            }
        }
        // Each statement's rows in key order (see `commit::ids_in_key_order`).
        inserts.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
        overwrites.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
        keeps.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
        for (sql, rows, must_exist) in [
            (&self.sql.insert_records, &inserts, false),
            (&self.sql.update_records, &overwrites, true),
        ] {
            if !rows.is_empty() {
                let q = sqlx::query(sql.clone())
                    .bind(stream_id)
                    .bind(rows.iter().map(|(r, _, _)| r.id.as_str()).bind_iter())
                    .bind(rows.iter().map(|(_, p, _)| p.as_str()).bind_iter());
                let affected = bind_metadata(q, || rows.iter().map(|(r, _, _)| &r.meta), stamp)
                    .bind(rows.iter().map(|(_, _, c)| i16::from(c.code())).bind_iter())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| classify("write records", e))?
                    .rows_affected();
                if must_exist {
                    all_found(affected, rows.len())?;
                }
            }
        }
        if !keeps.is_empty() {
            let q = sqlx::query(self.sql.update_metadata.clone())
                .bind(stream_id)
                .bind(keeps.iter().map(|(r, _)| r.id.as_str()).bind_iter());
            let updated = bind_metadata(q, || keeps.iter().map(|(r, _)| &r.meta), stamp)
                .bind(keeps.iter().map(|(_, c)| i16::from(c.code())).bind_iter())
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("write records", e))?
                .rows_affected();
            all_found(updated, keeps.len())?;
        }
        if !prepared.seen().is_empty() {
            sqlx::query(self.sql.mark_seen.clone())
                .bind(stream_id)
                .bind(stamp.1)
                .bind(prepared.seen().iter().map(|s| s.id).bind_iter())
                .execute(&mut **tx)
                .await
                .map_err(|e| classify("mark records seen", e))?;
        }
        // The sweep runs with the feed's upkeep, which needs the ids it deletes. It is
        // skipped when the stream's count says that every live record carries the
        // re-read's generation (`sink::seen`).
        let sweep = prepared.sweep().filter(|s| {
            !tally.nothing_to_sweep(s.generation, locked.live, prepared.live_delta_of_writes())
        });
        let scanned = if written.is_empty() && sweep.is_none() {
            None
        } else {
            let sweep = sweep.map(|sweep| (sweep, i16::from(Sweep::CHANGE.code())));
            self.feed_upkeep(tx, stream_id, seq, &written, sweep)
                .await?
                .zip(sweep)
                .map(|((swept, newer), (sweep, _))| (sweep.generation, swept, newer))
        };
        let swept = scanned.map_or(0, |(_, swept, _)| swept);
        self.faults.after_records(BACKEND)?;

        let done = prepared.finish(to_u64(seq), swept);
        let (next, counts) = (&done.state, &done.outcome.counts);
        // A stream row whose live count is off (rows removed by hand) keeps no count.
        let seen_after = locked
            .live
            .checked_add_signed(done.live_delta)
            .and_then(|live| {
                tally.finish(
                    scanned.map(|(generation, _, newer)| (generation, newer)),
                    live,
                )
            });
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
            .bind(done.live_delta)
            .bind(done.deleted_delta)
            .bind(seen_after.map(|s| to_i64(s.generation)))
            .bind(seen_after.map(|s| to_i64(s.count)))
            // A commit that changed records is announced to listeners when it commits
            // (`feed.rs`).
            .bind(counts.changed() > 0)
            .bind(&self.channel)
            .bind(seq.to_string())
            .bind(seq)
            .execute(&mut **tx)
            .await
            .map_err(|e| classify("write stream state", e))?;
        self.faults.before_commit(BACKEND)?;
        let last = self.prefetches.pending(hash).then(|| LastCommit {
            before: locked.last_seq,
            after: seq,
            ids: commit.records.iter().map(|r| r.id.clone()).collect(),
            swept: scanned.is_some(),
        });
        Ok((done.outcome, last))
    }

    /// The stored versions of the commit's ids: from the prefetch of these ids when it
    /// is still good (`prefetch.rs`), else read in the transaction.
    async fn stored_versions(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        hash: &[u8],
        stream_id: i64,
        last_seq: i64,
        commit: &Commit,
    ) -> Result<Versions> {
        let ids = commit.records.iter().map(|r| r.id.as_str());
        if commit.records.is_empty() {
            return Ok(Versions::new());
        }
        let prefetched = match self.prefetches.take(hash, ids.clone()) {
            // A failed read is only a missed shortcut: the commit reads itself.
            Some(read) => self.prefetches.usable(
                hash,
                read.await.ok().and_then(Result::ok).flatten(),
                last_seq,
            ),
            None => None,
        };
        match prefetched {
            Some(Usable::All(versions)) => Ok(versions),
            Some(Usable::Except(mut versions, changed)) => {
                let again: Vec<&str> = ids.filter(|id| changed.contains(*id)).collect();
                if again.is_empty() {
                    return Ok(versions);
                }
                for id in &again {
                    versions.remove(*id);
                }
                versions.extend(self.read_stored(tx, stream_id, again.into_iter()).await?);
                Ok(versions)
            }
            None => self.read_stored(tx, stream_id, ids).await,
        }
    }

    /// Read the stored versions of `ids` in the transaction.
    async fn read_stored<'a>(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        stream_id: i64,
        ids: impl Iterator<Item = &'a str> + Send + 'a,
    ) -> Result<Versions> {
        let ids = commit::ids_in_key_order(ids);
        let rows = sqlx::query(self.sql.stored_versions.clone())
            .bind(stream_id)
            .bind(ids.iter().copied().bind_iter())
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| classify("read stored versions", e))?;
        let mut stored = Versions::with_capacity(rows.len());
        for row in rows {
            let (id, version, handle) = decode_stored(&row)?;
            stored.insert(id, (version, handle));
        }
        Ok(stored)
    }

    /// The stream's row, locked until the transaction ends; the stream row is created
    /// when missing.
    async fn lock_stream(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        stream: &StreamKey,
        hash: &[u8],
    ) -> Result<Locked> {
        for _ in 0..2 {
            let row = sqlx::query(self.sql.lock_stream.clone())
                .bind(hash)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| classify("lock stream", e))?;
            if let Some(row) = row {
                let seen_live = match (
                    row.try_get::<Option<i64>, _>(5).map_err(decode)?,
                    row.try_get::<Option<i64>, _>(6).map_err(decode)?,
                ) {
                    (Some(generation), Some(count)) => Some(SeenLive {
                        generation: to_u64(generation),
                        count: to_u64(count),
                    }),
                    _ => None,
                };
                return Ok(Locked {
                    stream_id: row.try_get(0).map_err(decode)?,
                    state: state_from_row(&row, 1)?,
                    live: to_u64(row.try_get(4).map_err(decode)?),
                    seen_live,
                    last_seq: row.try_get(7).map_err(decode)?,
                });
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
}

/// A stream's row, locked by a commit.
struct Locked {
    stream_id: i64,
    state: StreamState,
    /// Its live records.
    live: u64,
    /// Its count of live records stamped with a generation, when known.
    seen_live: Option<SeenLive>,
    /// The number of the last commit that changed it (migration 10).
    last_seq: i64,
}

/// What a commit's lookup found for a stored record besides its version: the commit
/// that last changed it and its stamp.
#[derive(Debug, Clone, Copy)]
pub(super) struct Handle {
    seq: i64,
    stamp: Stamp,
}

/// A stored version as `schema::stored_version_of` gives it, after the id: the id, the
/// version and its handle.
pub(super) fn decode_stored(row: &PgRow) -> Result<(String, StoredVersionBuf, Handle)> {
    let id: String = row.try_get(0).map_err(decode)?;
    let version = StoredVersionBuf {
        last_modified_at: Timestamp::from_micros(row.try_get(1).map_err(decode)?),
        cursor: row.try_get(2).map_err(decode)?,
        deleted: row.try_get(3).map_err(decode)?,
        pruned: row.try_get(4).map_err(decode)?,
    };
    let handle = Handle {
        seq: row.try_get(5).map_err(decode)?,
        stamp: Stamp {
            generation: to_u64(row.try_get(6).map_err(decode)?),
            live: !version.deleted,
        },
    };
    Ok((id, version, handle))
}

/// Check that an update of stored records found each of the `expected` rows the
/// commit's read found; one missing was deleted by something outside nango-sync.
fn all_found(updated: u64, expected: usize) -> Result<()> {
    let expected = expected as u64;
    if updated == expected {
        return Ok(());
    }
    Err(Error::store(
        BACKEND,
        "write records",
        true,
        format!(
            "{} of {expected} stored records changed during the commit",
            expected - updated.min(expected),
        ),
    ))
}

/// Bind the metadata columns of a page write (one array per column, see
/// [`Statements`](super::schema::Statements)), then the commit's sequence number and
/// generation stamp.
fn bind_metadata<'q, I>(
    q: Query<'q, Postgres, PgArguments>,
    metas: impl Fn() -> I,
    (seq, generation): (i64, i64),
) -> Query<'q, Postgres, PgArguments>
where
    I: Iterator<Item = &'q Metadata> + Clone + Send + 'q,
{
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
        .bind(generation)
}
