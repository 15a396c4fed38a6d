//! The next page's stored versions, read while the current page commits.
//!
//! A commit reads the stored versions of its page's ids before it writes: a round trip
//! and about a millisecond for a page of new records, about five for a page of updates
//! (a quarter of the commit). The engine knows the next page while the current one
//! commits, and says so ([`RecordSink::prefetch`](crate::sink::RecordSink::prefetch)).
//! The store then reads that page's stored versions at once, on another connection of
//! its pool, in one statement that also reads the stream's `last_seq` (the number of
//! the last commit that changed the stream, migration 10) from the same snapshot.
//!
//! The commit of that page uses what was read only when, under the stream's lock,
//! nothing it does not know of can have changed the stream since the read:
//! - the stream's `last_seq` is the one read: no commit since the read; or
//! - the only commit since the read is this store's last commit of the stream: it went
//!   from the read's `last_seq` to the current one, and it did not sweep. That commit
//!   wrote or marked only the ids of its own page: the read stands for every other id,
//!   and the ids of both pages are read again in the transaction.
//!
//! Otherwise (another process committed, a sweep ran, the read failed or was for other
//! ids) the commit reads in its transaction, as it does without a hint. Commits of one
//! stream are ordered by the stream row's lock and each sets `last_seq` to its own,
//! unique number, so two equal values mean the same state of the stream.
//!
//! The read never waits for a connection: with none idle in the pool it is not made.
//! A commit that awaits it, holding a connection of its own, can then never wait for
//! a connection it holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgBindIterExt;
use sqlx::{PgPool, Row, SqlStr};
use tokio::task::JoinHandle;

use super::apply::{Handle, decode_stored};
use super::error::{classify, decode};
use crate::error::Result;
use crate::merge::StoredVersionBuf;

/// Stored versions by id, with their handles.
pub(super) type Versions = HashMap<String, (StoredVersionBuf, Handle)>;

/// A read of stored versions outside a commit, with the stream's `last_seq` it saw.
#[derive(Debug)]
pub(super) struct Snapshot {
    last_seq: i64,
    versions: Versions,
}

/// The prefetches of one store, and what it remembers of its last commit of each
/// stream. Keyed by the stream's key hash.
#[derive(Debug, Default)]
pub(super) struct Prefetches {
    streams: Mutex<HashMap<Vec<u8>, Slot>>,
    used: AtomicU64,
    not_used: AtomicU64,
}

/// How the prefetches of a [`PostgresStore`](super::PostgresStore) served its commits
/// (see [`PostgresStore::prefetch_stats`](super::PostgresStore::prefetch_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefetchStats {
    /// Commits that took their page's stored versions from a prefetch.
    pub used: u64,
    /// Commits that found a prefetch of their page but read in their transaction: the
    /// stream had changed in a way the prefetch could not follow, or its read failed.
    pub not_used: u64,
}

/// The prefetches a stream may hold at once: the page committing next, told of while
/// the page before it committed, and the page after it.
const PENDING: usize = 2;

#[derive(Debug, Default)]
struct Slot {
    /// Oldest first.
    pending: VecDeque<Pending>,
    last: Option<LastCommit>,
}

/// A read under way or done, for the ids of one page.
#[derive(Debug)]
struct Pending {
    ids: Vec<String>,
    read: JoinHandle<Result<Option<Snapshot>>>,
}

/// A commit of the stream by this store: `last_seq` before and after it, the ids it
/// wrote or marked, and whether it swept (then it changed records of other ids).
#[derive(Debug)]
pub(super) struct LastCommit {
    pub(super) before: i64,
    pub(super) seq: i64,
    pub(super) ids: HashSet<String>,
    pub(super) swept: bool,
}

/// What a commit may take from a prefetched read.
#[derive(Debug)]
pub(super) enum Usable {
    /// Every version read: nothing changed the stream since.
    All(Versions),
    /// Every version read except those of these ids, which a commit of this store
    /// changed since: they are read again.
    Except(Versions, HashSet<String>),
}

impl Prefetches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Slot>> {
        // The map holds no invariant a panic could break half-way.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start reading the stored versions of `ids` in the stream `hash`, replacing any
    /// earlier prefetch of the stream. Nothing is started without an idle connection.
    pub(super) fn start(&self, pool: &PgPool, sql: &SqlStr, hash: Vec<u8>, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let Some(conn) = pool.try_acquire() else {
            return;
        };
        let (sql, key, wanted) = (sql.clone(), hash.clone(), ids.clone());
        let read = tokio::spawn(async move {
            let mut conn = conn;
            let rows = sqlx::query(sql)
                .bind(key)
                .bind(wanted.iter().map(String::as_str).bind_iter())
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| classify("prefetch stored versions", e))?;
            let mut last_seq = None;
            let mut versions = Versions::with_capacity(rows.len());
            for row in rows {
                match row.try_get::<Option<String>, _>(0).map_err(decode)? {
                    None => last_seq = Some(row.try_get::<i64, _>(7).map_err(decode)?),
                    Some(_) => {
                        let (id, version, handle) = decode_stored(&row)?;
                        versions.insert(id, (version, handle));
                    }
                }
            }
            Ok(last_seq.map(|last_seq| Snapshot { last_seq, versions }))
        });
        // The oldest prefetch beyond the bound is dropped; its read finishes on its own.
        let mut streams = self.lock();
        let pending = &mut streams.entry(hash).or_default().pending;
        if pending.len() == PENDING {
            pending.pop_front();
        }
        pending.push_back(Pending { ids, read });
    }

    /// The prefetched read of exactly these `ids` (in this order), if one was started:
    /// taken out of the slot, with the prefetches started before it (pages committed
    /// or passed over). A prefetch of other ids started after it stays for a later
    /// commit.
    pub(super) fn take<'a>(
        &self,
        hash: &[u8],
        ids: impl ExactSizeIterator<Item = &'a str> + Clone,
    ) -> Option<JoinHandle<Result<Option<Snapshot>>>> {
        let mut streams = self.lock();
        let slot = streams.get_mut(hash)?;
        let at = slot.pending.iter().position(|p| {
            p.ids.len() == ids.len() && p.ids.iter().map(String::as_str).eq(ids.clone())
        })?;
        slot.pending.drain(..at);
        slot.pending.pop_front().map(|p| p.read)
    }

    /// What a commit that found the stream's `last_seq` at `current`, under its lock,
    /// may take from `snapshot`; `None`: nothing.
    pub(super) fn usable(&self, hash: &[u8], snapshot: Snapshot, current: i64) -> Option<Usable> {
        if snapshot.last_seq == current {
            return Some(Usable::All(snapshot.versions));
        }
        let mut streams = self.lock();
        let slot = streams.get_mut(hash)?;
        let last = slot.last.take();
        if slot.pending.is_empty() {
            streams.remove(hash);
        }
        let last = last?;
        (last.before == snapshot.last_seq && last.seq == current && !last.swept)
            .then(|| Usable::Except(snapshot.versions, last.ids))
    }

    /// Count a commit that found a prefetch of its page.
    pub(super) fn count(&self, used: bool) {
        let counter = if used { &self.used } else { &self.not_used };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(super) fn stats(&self) -> PrefetchStats {
        PrefetchStats {
            used: self.used.load(Ordering::Relaxed),
            not_used: self.not_used.load(Ordering::Relaxed),
        }
    }

    /// Whether a prefetch of the stream `hash` waits for a later commit: only then is
    /// a commit of the stream worth remembering.
    pub(super) fn pending(&self, hash: &[u8]) -> bool {
        self.lock()
            .get(hash)
            .is_some_and(|slot| !slot.pending.is_empty())
    }

    /// Remember this store's commit of the stream `hash`, once it is committed, for the
    /// prefetch waiting for a later commit; `None`: forget the last one (a commit whose
    /// outcome is not known, or nothing waiting).
    pub(super) fn committed(&self, hash: &[u8], last: Option<LastCommit>) {
        let mut streams = self.lock();
        let Some(slot) = streams.get_mut(hash) else {
            return;
        };
        slot.last = last.filter(|_| !slot.pending.is_empty());
        if slot.pending.is_empty() {
            streams.remove(hash);
        }
    }
}
