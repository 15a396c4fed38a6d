//! The writer lock of the one-process stores (SQLite, sled): a lock file next to the
//! store, locked by the operating system (`flock`) for as long as the process writes,
//! holding the holder's process id so that a second process is told who holds it.
//!
//! The lock is the operating system's, so it is released when its process ends in any
//! way (a `SIGKILL` included): a stale lock file is never an obstacle, and its content
//! only names the holder. Handles opened in the same process share one lock, so an
//! application may open a store twice (the stores allow it); only another process is
//! refused.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::Error;

/// A held writer lock; released when the last handle of this process drops it.
#[derive(Debug)]
pub(crate) struct ProcessLock {
    _file: File,
}

/// The locks this process holds, by lock file, so handles of one process share one.
fn held() -> &'static Mutex<HashMap<PathBuf, Weak<ProcessLock>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<ProcessLock>>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
}

/// Why the lock was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Another process holds it (the error names it).
    Held(Error),
    /// The lock file could not be opened or locked.
    Failed(Error),
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        match r {
            Refused::Held(e) | Refused::Failed(e) => e,
        }
    }
}

/// Take the writer lock file `lock_path` of the store `store` (described in errors, for
/// example `the SQLite file /data/app.db`), or fail at once, naming the process that
/// holds it. `backend` names the store's backend in the error.
pub(crate) fn acquire(
    backend: &'static str,
    store: &str,
    lock_path: &Path,
) -> std::result::Result<Arc<ProcessLock>, Refused> {
    // One key per file however it is named: the directory is canonical (the file may not
    // exist yet).
    let key = match (lock_path.parent(), lock_path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| lock_path.to_path_buf()),
        _ => lock_path.to_path_buf(),
    };
    let mut held = held().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(lock) = held.get(&key).and_then(Weak::upgrade) {
        return Ok(lock);
    }
    let operation = || format!("open {store} for writing");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(|e| {
            Refused::Failed(Error::store(
                backend,
                operation(),
                false,
                format!("cannot open its lock file {}: {e}", lock_path.display()),
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = describe_holder(&holder);
            return Err(Refused::Held(Error::store(
                backend,
                operation(),
                false,
                format!(
                    "{store} is open for writing by another process ({holder}; lock file {}): \
                     it allows one writing process at a time; stop that process first, or use \
                     PostgreSQL to run several",
                    lock_path.display()
                ),
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Refused::Failed(Error::store(
                backend,
                operation(),
                false,
                format!("cannot lock its lock file {}: {e}", lock_path.display()),
            )));
        }
    }
    // Ours now: say who holds it.
    let me = format!(
        "pid {}{}\n",
        std::process::id(),
        std::env::args()
            .next()
            .map(|a| {
                let name = Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(a);
                format!(" ({name})")
            })
            .unwrap_or_default()
    );
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(me.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %lock_path.display(), error = %e, "could not write the holder's pid into the lock file");
    }
    let lock = Arc::new(ProcessLock { _file: file });
    held.retain(|_, w| w.strong_count() > 0);
    held.insert(key, Arc::downgrade(&lock));
    Ok(lock)
}

/// The holder as its lock file names it (`pid N (program)`), or a neutral phrase when the
/// file is empty or unreadable (written by an older version, or not written yet).
fn describe_holder(content: &str) -> String {
    let line = content.lines().next().unwrap_or("").trim();
    if line.starts_with("pid ") && line.len() < 200 {
        line.to_string()
    } else {
        "process id unknown".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_of_one_process_share_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        let a = acquire("sqlite", "the store", &path).unwrap();
        let b = acquire("sqlite", "the store", &path).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let content = std::fs::read_to_string(&path).unwrap();
        assert!(
            content.starts_with(&format!("pid {}", std::process::id())),
            "{content}"
        );
        drop((a, b));
        // Released with its last handle: taken again from scratch.
        let other = File::options().read(true).write(true).open(&path).unwrap();
        other.try_lock().expect("released");
    }

    #[test]
    fn a_lock_held_elsewhere_is_refused_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        // Another open file description of the same file holds the lock, as another
        // process would.
        std::fs::write(&path, "pid 4242 (nango-sync)\n").unwrap();
        let other = File::options().read(true).write(true).open(&path).unwrap();
        other.lock().unwrap();
        let err = Error::from(acquire("sqlite", "the SQLite file x.db", &path).unwrap_err());
        let text = err.to_string();
        assert!(text.contains("pid 4242 (nango-sync)"), "{text}");
        assert!(text.contains("the SQLite file x.db"), "{text}");
        assert!(!err.is_retryable());
        other.unlock().unwrap();
        acquire("sqlite", "the SQLite file x.db", &path).unwrap();
    }

    #[test]
    fn holder_text_is_bounded() {
        assert_eq!(describe_holder(""), "process id unknown");
        assert_eq!(describe_holder("pid 7 (x)\n"), "pid 7 (x)");
        assert_eq!(describe_holder("garbage"), "process id unknown");
    }
}
