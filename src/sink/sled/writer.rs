//! One process per sled directory, named: sled itself locks its `db` file for the life
//! of a handle; before opening it the store takes its own lock file,
//! `nango-sync.lock` in the directory, which holds the holder's pid, so a second process
//! is told which process has the store open instead of only that sled's lock is taken.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BACKEND;
use crate::error::{Error, Result};
use crate::sink::process_lock::{self, ProcessLock, Refused};

/// The lock file's name inside the store's directory.
pub(super) const LOCK_FILE: &str = "nango-sync.lock";

/// Take the directory's lock file, retrying while another process holds it, up to
/// `wait`; then fail with an error naming the holder's pid.
pub(super) fn acquire(path: &Path, wait: Duration) -> Result<Arc<ProcessLock>> {
    std::fs::create_dir_all(path).map_err(|e| {
        Error::store(
            BACKEND,
            format!("open sled database at {}", path.display()),
            false,
            format!("cannot create the directory: {e}"),
        )
    })?;
    let store = format!("the sled store {}", path.display());
    let lock_path = path.join(LOCK_FILE);
    let started = Instant::now();
    loop {
        match process_lock::acquire(BACKEND, &store, &lock_path) {
            Ok(lock) => return Ok(lock),
            Err(Refused::Held(_)) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(refused) => return Err(refused.into()),
        }
    }
}
