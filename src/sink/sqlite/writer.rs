//! One writing process per SQLite file: the writer lock (`<file>-lock`, next to the
//! `-wal` and `-shm` files), taken by the first commit or by
//! [`RecordSink::claim_writer`](crate::sink::RecordSink::claim_writer) and held until the
//! store is dropped. Other processes may still read the file (SQLite's own locking
//! orders their transactions); a second process that writes is refused with an error
//! naming the holder's pid.

use std::path::PathBuf;

use super::error::task_err;
use super::{BACKEND, SqliteStore};
use crate::error::Result;
use crate::sink::process_lock;

impl SqliteStore {
    /// The writer lock file of the store.
    pub fn writer_lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push("-lock");
        PathBuf::from(name)
    }

    /// Take the writer lock, unless this handle holds it already.
    pub(super) async fn claim(&self) -> Result<()> {
        if self.writer_lock.get().is_some() {
            return Ok(());
        }
        let lock_path = self.writer_lock_path();
        let store = format!("the SQLite file {}", self.path.display());
        let lock =
            tokio::task::spawn_blocking(move || process_lock::acquire(BACKEND, &store, &lock_path))
                .await
                .map_err(|e| task_err("open for writing", e))?
                .map_err(crate::error::Error::from)?;
        let _ = self.writer_lock.set(lock);
        Ok(())
    }
}
