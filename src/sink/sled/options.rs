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
    pub(super) faults: Faults,
}

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
    /// 64 MiB. (sled's own default, 1 GiB, made a 1,000,000-record sync peak above
    /// 2 GB of RSS.)
    pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

    /// The size of sled's page cache, in bytes.
    pub fn with_cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }

    crate::sink::fault::with_faults_option!();
}
