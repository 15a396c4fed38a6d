//! Recovery from a snapshot that sled was writing when its process died.
//!
//! # What sled 0.34 does with snapshots (read in sled 0.34.7, `pagecache/snapshot.rs`)
//!
//! A sled database is a log (the `db` file, plus large values in `blobs/`) and a
//! *snapshot*: the page table (where each page's latest versions are in the log) and the
//! log position (`stable_lsn`) it covers. The snapshot is derived from the log; it only
//! spares the next open a scan of the whole log.
//!
//! - **When one is written.** Only while a database is opened (`PageCache::start` calls
//!   `read_snapshot_or_default`): sled reads the newest snapshot, scans the log written
//!   after its `stable_lsn`, and when the log went further, writes a new snapshot
//!   (`advance_snapshot` → `write_snapshot`). A running database never writes one
//!   (`Config::snapshot_after_ops` is a no-op kept for compatibility), which is why
//!   [`SledOptions::with_snapshot_after_ops`](super::SledOptions::with_snapshot_after_ops)
//!   reopens the database.
//! - **How.** `write_snapshot` creates `snap.<LSN>.generating` (`<LSN>`: 16 upper-case hex
//!   digits), writes the serialized snapshot, its length and a CRC-32, calls `fsync`,
//!   renames the file to `snap.<LSN>`, then deletes every other file whose name starts
//!   with `snap.`. The rename is the commit point: a `.generating` file is never a
//!   finished snapshot. A process killed during the write leaves a partial one; killed
//!   between the `fsync` and the rename, a complete one that sled never used.
//! - **How one is read.** `read_snapshot` lists every file whose name starts with `snap.`
//!   (`.generating` files included), takes the one whose name sorts last, and fails the
//!   open with a corruption error when it is 12 bytes or shorter or its CRC does not
//!   match. `snap.X.generating` sorts after `snap.X` and after every smaller LSN, so a
//!   leftover of an interrupted write is the file read, and the open fails. Every later
//!   open fails the same way: the open that would write a good snapshot and delete the
//!   leftover is the one that fails.
//!
//! # Why removing a `.generating` file is safe
//!
//! Until the rename, every open recovers from the previous finished snapshot (or from
//! no snapshot: a scan of the whole log) plus the log, and the dying open had changed
//! nothing else that recovery depends on: before writing the snapshot it only zeroed
//! the log past the recovered tip (which the next recovery finds and zeroes again), and
//! the steps after the rename (zeroing torn segments, deleting blobs past the
//! `stable_lsn`) had not run. Removing the file puts the directory back in the state of
//! a process killed just before it began writing the snapshot, from which sled
//! recovers by itself. A complete but unrenamed file is removed too: it holds nothing
//! the log does not, and the next open writes its own.
//!
//! Nothing else is removed: not a finished `snap.<LSN>` whose checksum fails (no
//! interrupted write produces one, so the store is reported damaged), not the log, the
//! `conf` file or the blobs.
//!
//! # Locking
//!
//! sled locks the `db` file with `flock(LOCK_EX | LOCK_NB)` when it opens (the `fs2`
//! crate's `try_lock_exclusive`; `LockFileEx` on Windows) and holds it while the
//! database is open, so a process that has the store open may be writing a snapshot right
//! now. Recovery takes the same lock ([`std::fs::File::try_lock`] makes the same call),
//! waiting for it like `open` does, lists the files again, removes them, syncs the
//! directory, and releases the lock before sled opens (an `flock` lock belongs to an
//! open file, so sled's own attempt would fail against ours, even in this process). When
//! the lock stays held, nothing is removed and sled's open reports the lock.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{BACKEND, StoreCheck};
use crate::error::{Error, Result};

/// What opening a [`SledStore`](super::SledStore) recovered from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// The interrupted snapshots removed.
    pub removed: Vec<RemovedSnapshot>,
    /// The check of the store made after opening it (consistent, or the open failed).
    pub check: StoreCheck,
}

/// A snapshot file of an interrupted write, removed by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemovedSnapshot {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Whether `name` is sled's name for a snapshot being written: `snap.` then 16
/// upper-case hex digits then `.generating`.
fn is_interrupted_snapshot(name: &str) -> bool {
    name.strip_prefix("snap.")
        .and_then(|rest| rest.strip_suffix(".generating"))
        .is_some_and(|lsn| {
            lsn.len() == 16 && lsn.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
        })
}

/// The snapshot files of interrupted writes in `dir` (none when `dir` does not exist).
fn interrupted_snapshots(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(is_interrupted_snapshot)
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Take sled's lock on the store in `dir` (its `db` file, created when missing as sled
/// itself does), waiting up to `wait` while another process or handle holds it.
/// `Ok(None)`: still held after `wait`. The lock lasts as long as the returned file.
pub(crate) fn lock_directory(dir: &Path, wait: Duration) -> io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("db"))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Remove the snapshot files of interrupted writes from the store in `dir`, holding
/// sled's lock (see the module documentation). Returns what was removed.
pub(super) fn remove_interrupted_snapshots(
    dir: &Path,
    wait: Duration,
) -> Result<Vec<RemovedSnapshot>> {
    let io_err = |what: &str, e: io::Error| {
        Error::store(
            BACKEND,
            format!("recover {}: {what}", dir.display()),
            false,
            e,
        )
    };
    if interrupted_snapshots(dir)
        .map_err(|e| io_err("list the directory", e))?
        .is_empty()
    {
        return Ok(Vec::new());
    }
    let Some(lock) = lock_directory(dir, wait).map_err(|e| io_err("lock the store", e))? else {
        tracing::warn!(
            path = %dir.display(),
            "an interrupted sled snapshot is present but another process holds the store's lock: nothing removed"
        );
        return Ok(Vec::new());
    };
    // Listed again under the lock: the holder may have finished its snapshot meanwhile.
    let files = interrupted_snapshots(dir).map_err(|e| io_err("list the directory", e))?;
    let mut removed = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| io_err("read a snapshot's size", e))?;
        std::fs::remove_file(&path).map_err(|e| io_err("remove an interrupted snapshot", e))?;
        tracing::warn!(
            file = %path.display(),
            bytes,
            "removed an interrupted sled snapshot (sled renames a snapshot to its final name only once it is complete; this file never was one, and sled refuses to open a directory holding it)"
        );
        removed.push(RemovedSnapshot { path, bytes });
    }
    sync_directory(dir).map_err(|e| io_err("sync the directory", e))?;
    drop(lock);
    Ok(removed)
}

/// Make the directory's entries (removals, new files) durable.
#[cfg(unix)]
pub(super) fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(super) fn sync_directory(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sled_snapshot_writes_in_progress_are_recognized() {
        for yes in [
            "snap.00000000FFFFFFFF.generating",
            "snap.000000000059B0AA.generating",
        ] {
            assert!(is_interrupted_snapshot(yes), "{yes}");
        }
        for no in [
            "snap.00000000FFFFFFFF",
            "snap.00000000ffffffff.generating",
            "snap.FFFFFFFF.generating",
            "snap.00000000FFFFFFFF.generating.bak",
            "xsnap.00000000FFFFFFFF.generating",
            "db",
            "conf",
        ] {
            assert!(!is_interrupted_snapshot(no), "{no}");
        }
    }

    #[test]
    fn lock_is_refused_while_held_and_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_directory(dir.path(), Duration::ZERO)
            .unwrap()
            .expect("a free lock");
        assert!(
            lock_directory(dir.path(), Duration::from_millis(50))
                .unwrap()
                .is_none(),
            "a held lock must not be taken"
        );
        drop(held);
        assert!(
            lock_directory(dir.path(), Duration::ZERO)
                .unwrap()
                .is_some()
        );
    }
}
