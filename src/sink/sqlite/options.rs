//! Options of the SQLite store.

use std::time::Duration;

use crate::sink::fault::Faults;

/// Options of a [`SqliteStore`](super::SqliteStore): `SqliteOptions::new()` then
/// `with_*`, passed to [`SqliteStore::open_with`](super::SqliteStore::open_with).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub(super) synchronous_full: bool,
    pub(super) busy_timeout: Duration,
    pub(super) page_size: u32,
    pub(super) wal_autocheckpoint: u32,
    pub(super) max_page_count: Option<u64>,
    pub(super) faults: Faults,
    pub(super) commit_poll_interval: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
            page_size: 16 * 1024,
            wal_autocheckpoint: 4096,
            max_page_count: None,
            faults: Faults::default(),
            commit_poll_interval: Duration::from_millis(250),
        }
    }
}

impl SqliteOptions {
    /// The defaults: `synchronous=NORMAL`, a 5 s busy timeout, 16 KiB pages, WAL
    /// checkpoints in the background waiting for the writer past 4096 pages of WAL, no
    /// size cap.
    pub fn new() -> Self {
        Self::default()
    }

    /// `PRAGMA synchronous=FULL` instead of `NORMAL`: every commit is durable on disk
    /// before it returns, at a cost in throughput (see the
    /// [module documentation](super#atomicity-and-durability)).
    pub fn with_synchronous_full(mut self, full: bool) -> Self {
        self.synchronous_full = full;
        self
    }

    /// How long a connection waits for a lock held by another process before failing
    /// with a retryable "database is busy" error (default 5 s).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Page size of a new database file, in bytes (default 16 KiB).
    ///
    /// A commit writes every page it changes whole to the WAL. With ids in no order
    /// (UUIDs), each new record changes a page of the id index of its own once the store
    /// holds about a million records, so smaller pages write less: 4 KiB made a first
    /// sync of 1,000,000 such records 1.25 times faster, and cost 10 to 12% at 100,000
    /// records (README, sizing).
    pub fn with_page_size(mut self, bytes: u32) -> Self {
        self.page_size = bytes;
        self
    }

    /// The WAL's bound, in pages (default 4096: 64 MiB with 16 KiB pages). Checkpoints
    /// run in a thread of the store after commits, without waiting for the writer or
    /// the readers; when the WAL holds more than this many pages, that thread also
    /// copies the rest between two commits (the next one waits for it) and makes the
    /// next commit start the WAL anew.
    pub fn with_wal_autocheckpoint(mut self, pages: u32) -> Self {
        self.wal_autocheckpoint = pages;
        self
    }

    /// A cap on the database size, in pages (`PRAGMA max_page_count`; default: SQLite's
    /// own). A commit that would grow the file past it fails like a full disk
    /// (`SQLITE_FULL`) and the store keeps its last committed state.
    pub fn with_max_page_count(mut self, pages: u64) -> Self {
        self.max_page_count = Some(pages);
        self
    }

    /// How often, while someone is subscribed to the store's commits
    /// ([`RecordSink::subscribe`](crate::RecordSink::subscribe)), the store checks the
    /// file for commits of other processes (default 250 ms; this process's own commits
    /// wake subscribers at once).
    pub fn with_commit_poll_interval(mut self, every: Duration) -> Self {
        self.commit_poll_interval = every.max(Duration::from_millis(1));
        self
    }

    crate::sink::fault::with_faults_option!();
}
