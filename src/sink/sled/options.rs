//! Options of the sled store.

use std::time::Duration;

use crate::sink::fault::Faults;

/// When the sled store writes commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Flush after every commit, before `commit` returns (the default): a commit that
    /// returned `Ok` survives a crash of the process or the machine.
    #[default]
    EveryCommit,
    /// Let sled's background thread flush at this interval. A crash can lose the commits
    /// of the last interval (whole commits, their cursors included; never part of one).
    Periodic(Duration),
}

/// Options of a [`SledStore`](super::SledStore): `SledOptions::new()` then `with_*`,
/// passed to [`SledStore::open_with`](super::SledStore::open_with).
#[derive(Debug, Clone, Default)]
pub struct SledOptions {
    pub(super) durability: Durability,
    pub(super) cache_capacity: Option<u64>,
    pub(super) snapshot_after_ops: Option<u64>,
    pub(super) lock_wait: Option<Duration>,
    pub(super) faults: Faults,
}

/// How long opening waits for the directory's lock unless
/// [`SledOptions::with_lock_wait`] says otherwise.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

impl SledOptions {
    /// Default options: flush every commit, a page cache of
    /// [`SledOptions::DEFAULT_CACHE_CAPACITY`] bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// When commits are written to disk (see [`Durability`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The page cache used unless [`SledOptions::with_cache_capacity`] sets another:
    /// 16 MiB. sled's memory runs past its cache: sled 0.34 splits the cache into 256
    /// shards and evicts from a shard only once 64 reads of it have queued up, so a pass
    /// over many pages (a full scan, or updates spread over the whole store) keeps up to
    /// 256 × 64 pages in memory whatever the capacity (about 75 MB of 1,000,000 records of
    /// ~740 bytes during a scan). The cache is kept small, as a smaller one did not lower
    /// that: sled's own default, 1 GiB, made a 1,000,000-record sync peak above 2 GB of
    /// RSS, 64 MiB at 250 MB; 16, 4 and 1 MiB all peaked between 125 and 170 MB, most of
    /// it pages read by the first sync's sweep, a scan the store now skips when the full
    /// read saw every live record.
    pub const DEFAULT_CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

    /// The size of sled's page cache, in bytes.
    pub fn with_cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }

    /// Have sled write a snapshot after every `n` writes (commits, run records, upstream
    /// errors); `0` turns it off (the default). For crash tests of sled's snapshots.
    ///
    /// sled 0.34 writes a snapshot only while it opens a database: its own
    /// `Config::snapshot_after_ops` is kept for compatibility but does nothing. So this
    /// store closes its sled database and opens it again after every `n` writes, which
    /// makes sled write a snapshot of the log written since the last one. Operations
    /// wait while that happens (a flush, a scan of the new log, a snapshot write with an
    /// `fsync`). Also reachable from a sink URL: `sled://DIR?snapshot_after_ops=N`.
    pub fn with_snapshot_after_ops(mut self, n: u64) -> Self {
        self.snapshot_after_ops = (n > 0).then_some(n);
        self
    }

    /// How long opening waits for the directory's lock, which another process (or
    /// another handle of this process being dropped) may hold: 5 s unless set.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// The wait for the directory's lock in force.
    pub(super) fn lock_wait(&self) -> Duration {
        self.lock_wait.unwrap_or(DEFAULT_LOCK_WAIT)
    }

    crate::sink::fault::with_faults_option!();
}
