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

/// The streams the registry keeps reads for. A read whose page is never committed (a
/// run stopped or failed after the hint) stays until the stream's next commit; beyond
/// this many streams, the reads of another stream are dropped to make room (its next
/// commit reads for itself).
const STREAMS: usize = 64;

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
    /// Pages told of for which no read was started: the store had no idle connection
    /// at that moment (a read ahead never waits for one), or no tokio runtime ran the
    /// call. Their commits read in their transaction.
    pub not_made: u64,
}

/// The reads ahead of one store, per stream (by a key the store chooses), with what it
/// remembers of its last commit of each. `R` is a read under way: whatever the store
/// waits on for its [`Snapshot`].
#[derive(Debug)]
pub(crate) struct Prefetches<R> {
    streams: Mutex<HashMap<Vec<u8>, Slot<R>>>,
    used: AtomicU64,
    not_used: AtomicU64,
    not_made: AtomicU64,
}

impl<R> Default for Prefetches<R> {
    fn default() -> Self {
        Prefetches {
            streams: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            not_used: AtomicU64::new(0),
            not_made: AtomicU64::new(0),
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
        if streams.len() >= STREAMS && !streams.contains_key(&key) {
            let other = streams.keys().next().cloned();
            if let Some(other) = other {
                streams.remove(&other);
            }
        }
        let slot = streams.entry(key.clone()).or_default();
        let Some(read) = read() else {
            self.not_made.fetch_add(1, Ordering::Relaxed);
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
            not_made: self.not_made.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn snapshot(version: i64, found: &[&str]) -> Option<Snapshot<u8>> {
        Some(Snapshot {
            version,
            versions: found.iter().map(|id| ((*id).to_owned(), 1)).collect(),
        })
    }

    fn last(before: i64, after: i64, page: &[&str], swept: bool) -> Option<LastCommit> {
        Some(LastCommit {
            before,
            after,
            ids: page.iter().map(|s| (*s).to_owned()).collect(),
            swept,
        })
    }

    #[test]
    fn a_read_is_taken_by_the_commit_of_its_ids_with_the_older_ones() {
        let p: Prefetches<u32> = Prefetches::default();
        let key = b"s".to_vec();
        p.start(key.clone(), ids(&["a"]), || Some(1));
        p.start(key.clone(), ids(&["b"]), || Some(2));
        // Beyond two, the oldest goes.
        p.start(key.clone(), ids(&["c"]), || Some(3));
        assert_eq!(p.take(&key, ["a"].into_iter()), None);
        // Other ids: nothing taken, nothing dropped.
        assert_eq!(p.take(&key, ["x"].into_iter()), None);
        assert_eq!(p.take(&key, ["c"].into_iter()), Some(3), "b goes with it");
        assert_eq!(p.take(&key, ["b"].into_iter()), None);
        assert!(!p.pending(&key));
        // Same ids in another order are other ids; no read started: nothing kept.
        p.start(key.clone(), ids(&["a", "b"]), || Some(4));
        assert_eq!(p.take(&key, ["b", "a"].into_iter()), None);
        p.start(b"t".to_vec(), ids(&["a"]), || None);
        assert!(!p.pending(b"t"));
        // Only the read not started counts as not made; an empty page starts nothing.
        p.start(b"t".to_vec(), Vec::new(), || None);
        let stats = p.stats();
        assert_eq!((stats.used, stats.not_used, stats.not_made), (0, 0, 1));
    }

    #[test]
    fn a_read_is_usable_only_across_no_commit_or_this_stores_one_commit_without_sweep() {
        let p: Prefetches<u32> = Prefetches::default();
        let key = b"s".to_vec();
        let all = |u: Option<Usable<u8>>| match u {
            Some(Usable::All(v)) => Some((v.len(), 0)),
            Some(Usable::Except(v, again)) => Some((v.len(), again.len())),
            None => None,
        };
        // No commit since the read.
        assert_eq!(all(p.usable(&key, snapshot(7, &["a"]), 7)), Some((1, 0)));
        // A failed read.
        assert_eq!(all(p.usable(&key, None, 7)), None);
        // One commit since: only when it is this store's last one, and did not sweep.
        let remember = |l| {
            p.start(key.clone(), ids(&["z"]), || Some(0));
            p.committed(&key, l);
        };
        remember(last(7, 9, &["a", "b"], false));
        assert_eq!(
            all(p.usable(&key, snapshot(7, &["a", "c"]), 9)),
            Some((2, 2))
        );
        remember(last(7, 9, &["a"], true));
        assert_eq!(all(p.usable(&key, snapshot(7, &["a"]), 9)), None, "a sweep");
        remember(last(8, 9, &["a"], false));
        assert_eq!(
            all(p.usable(&key, snapshot(7, &["a"]), 9)),
            None,
            "two commits"
        );
        remember(last(7, 9, &["a"], false));
        assert_eq!(
            all(p.usable(&key, snapshot(7, &["a"]), 10)),
            None,
            "another commit"
        );
        // The last commit is used once.
        remember(last(7, 9, &["a"], false));
        assert!(p.usable(&key, snapshot(7, &[]), 9).is_some());
        assert!(p.usable(&key, snapshot(7, &[]), 9).is_none());
        assert_eq!(
            p.stats(),
            PrefetchStats {
                used: 3,
                not_used: 5,
                not_made: 0
            }
        );
        // Nothing waiting: a commit is not remembered, and the slot goes.
        while p.take(&key, ["z"].into_iter()).is_some() {}
        p.committed(&key, last(9, 10, &["a"], false));
        assert!(p.lock().is_empty());
    }

    #[test]
    fn reads_are_kept_for_a_bounded_number_of_streams() {
        let p: Prefetches<u32> = Prefetches::default();
        for i in 0..STREAMS + 10 {
            p.start(format!("s{i}").into_bytes(), ids(&["a"]), || Some(1));
        }
        assert_eq!(p.lock().len(), STREAMS);
        let newest = format!("s{}", STREAMS + 9).into_bytes();
        assert!(p.pending(&newest));
    }
}
