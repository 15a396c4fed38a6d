//! Stored versions read ahead: the bookkeeping a store needs to take a page's stored
//! versions from a read made before the page's commit, and only when that read still
//! holds.
//!
//! A commit reads the stored versions of its page's ids before it writes. The engine
//! knows the next page while the current one commits, and says so
//! ([`RecordSink::prefetch`](crate::sink::RecordSink::prefetch)); a store that reads
//! those versions at once (PostgreSQL, on another connection) takes the read off the
//! commit's critical path. [`Prefetches`] keeps those reads per stream, and decides
//! whether the page's commit may use one.
//!
//! Each read carries the *version* of the stream it saw, taken with the records it
//! read: PostgreSQL's `streams.last_seq` (the number of the last commit that changed
//! the stream, from the read's own snapshot). The commit, holding the stream's lock,
//! compares it with the stream's current version:
//! - the same: no commit since the read began, every version read is current;
//! - one commit since, this store's own, which did not sweep: it wrote or marked only
//!   the ids of its page, so every other version read is current, and the ids of that
//!   page are read again (a page repeating ids of the one before);
//! - anything else (another process's commit, two commits, a sweep, a failed read, a
//!   read of other ids): the commit reads in its transaction, as it does without a hint.
//!
//! A commit that used a read is then exactly what it would have been without it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The reads a stream may hold at once: the page committing next, told of while the
/// page before it committed, and the page after it.
const PENDING: usize = 2;

/// A read of stored versions made outside a commit: the version of the stream it saw
/// and what it found, by id (absent ids are not stored).
#[derive(Debug)]
pub(crate) struct Snapshot<V> {
    pub(crate) version: i64,
    pub(crate) versions: HashMap<String, V>,
}

/// A commit of a stream by this store: the stream's version before and after it, the
/// ids of its page, and whether it swept (then it changed records of other ids).
#[derive(Debug)]
pub(crate) struct LastCommit {
    pub(crate) before: i64,
    pub(crate) after: i64,
    pub(crate) ids: HashSet<String>,
    pub(crate) swept: bool,
}

/// What a commit may take from a read.
#[derive(Debug)]
pub(crate) enum Usable<V> {
    /// Every version read: nothing changed the stream since.
    All(HashMap<String, V>),
    /// Every version read except those of these ids, which this store's last commit of
    /// the stream changed since: the commit reads them again.
    Except(HashMap<String, V>, HashSet<String>),
}

/// How a store's reads ahead served its commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefetchStats {
    /// Commits that took their page's stored versions from a read ahead.
    pub used: u64,
    /// Commits that found a read ahead of their page but read in their transaction:
    /// the stream had changed in a way the read could not follow, or the read failed.
    pub not_used: u64,
}

/// The reads ahead of one store, per stream (by a key the store chooses), with what it
/// remembers of its last commit of each. `R` is a read under way: whatever the store
/// waits on for its [`Snapshot`].
#[derive(Debug)]
pub(crate) struct Prefetches<R> {
    streams: Mutex<HashMap<Vec<u8>, Slot<R>>>,
    used: AtomicU64,
    not_used: AtomicU64,
}

impl<R> Default for Prefetches<R> {
    fn default() -> Self {
        Prefetches {
            streams: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            not_used: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
struct Slot<R> {
    /// Oldest first.
    pending: VecDeque<Pending<R>>,
    last: Option<LastCommit>,
}

impl<R> Default for Slot<R> {
    fn default() -> Self {
        Slot {
            pending: VecDeque::new(),
            last: None,
        }
    }
}

#[derive(Debug)]
struct Pending<R> {
    ids: Vec<String>,
    read: R,
}

impl<R> Prefetches<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Slot<R>>> {
        // The map holds no invariant a panic could break half-way.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start a read of the stored versions of `ids` in the stream `key`: `read` starts
    /// it and returns it, or `None` when it cannot start. The oldest read beyond the
    /// bound is dropped.
    pub(crate) fn start(&self, key: Vec<u8>, ids: Vec<String>, read: impl FnOnce() -> Option<R>) {
        if ids.is_empty() {
            return;
        }
        let mut streams = self.lock();
        let slot = streams.entry(key.clone()).or_default();
        let Some(read) = read() else {
            if slot.pending.is_empty() && slot.last.is_none() {
                streams.remove(&key);
            }
            return;
        };
        if slot.pending.len() == PENDING {
            slot.pending.pop_front();
        }
        slot.pending.push_back(Pending { ids, read });
    }

    /// The read of exactly these `ids` (in this order), if one was started: taken out,
    /// with the reads started before it (pages committed or passed over). A read of
    /// other ids started after it stays for a later commit.
    pub(crate) fn take<'a>(
        &self,
        key: &[u8],
        ids: impl ExactSizeIterator<Item = &'a str> + Clone,
    ) -> Option<R> {
        let mut streams = self.lock();
        let slot = streams.get_mut(key)?;
        let at = slot.pending.iter().position(|p| {
            p.ids.len() == ids.len() && p.ids.iter().map(String::as_str).eq(ids.clone())
        })?;
        slot.pending.drain(..at);
        slot.pending.pop_front().map(|p| p.read)
    }

    /// What a commit that found the stream at version `current`, under its lock, may
    /// take from `snapshot` (`None`: a failed read); counted in the stats.
    pub(crate) fn usable<V>(
        &self,
        key: &[u8],
        snapshot: Option<Snapshot<V>>,
        current: i64,
    ) -> Option<Usable<V>> {
        let usable = snapshot.and_then(|snapshot| {
            if snapshot.version == current {
                return Some(Usable::All(snapshot.versions));
            }
            let mut streams = self.lock();
            let last = streams.get_mut(key)?.last.take()?;
            (last.before == snapshot.version && last.after == current && !last.swept)
                .then(|| Usable::Except(snapshot.versions, last.ids))
        });
        let counter = if usable.is_some() {
            &self.used
        } else {
            &self.not_used
        };
        counter.fetch_add(1, Ordering::Relaxed);
        usable
    }

    /// Whether a read of the stream `key` waits for a later commit: only then is a
    /// commit of the stream worth remembering.
    pub(crate) fn pending(&self, key: &[u8]) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|slot| !slot.pending.is_empty())
    }

    /// Remember this store's commit of the stream `key`, once it is committed, for the
    /// read waiting for a later commit; `None`: forget the last one (a commit whose
    /// outcome is not known, or nothing waiting).
    pub(crate) fn committed(&self, key: &[u8], last: Option<LastCommit>) {
        let mut streams = self.lock();
        let Some(slot) = streams.get_mut(key) else {
            return;
        };
        slot.last = last.filter(|_| !slot.pending.is_empty());
        if slot.pending.is_empty() {
            streams.remove(key);
        }
    }

    /// The counts so far.
    pub(crate) fn stats(&self) -> PrefetchStats {
        PrefetchStats {
            used: self.used.load(Ordering::Relaxed),
            not_used: self.not_used.load(Ordering::Relaxed),
        }
    }
}
