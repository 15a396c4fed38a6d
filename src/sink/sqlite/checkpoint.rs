//! SQLite: the WAL checkpoint, off the commit path.
//!
//! The writer connection runs with `wal_autocheckpoint=0`, so no commit ever copies the
//! WAL back into the database file (SQLite's own automatic checkpoint runs inside the
//! commit that crosses the threshold, which made that commit tens of milliseconds
//! slower than the others). Instead, a thread with a connection of its own runs a
//! `PASSIVE` checkpoint after commits (one at a time, coalescing the commits made while
//! it ran): it copies what it can without waiting for the writer or the readers, and a
//! checkpoint that caught up lets the next commit start the WAL from its beginning.
//!
//! The WAL stays bounded: a commit starts the WAL anew only when it finds all of it
//! copied back, which a steady writer rarely does. So when a `PASSIVE` checkpoint
//! reports a WAL longer than the store's bound
//! ([`SqliteOptions::with_wal_autocheckpoint`](super::SqliteOptions::with_wal_autocheckpoint)),
//! a `RESTART` follows at once: it has little left to copy, and makes the next commit
//! start the WAL from its beginning. It runs holding the store's writer (the mutex of
//! its connection), after the commit in progress and before the next one: waiting for
//! each other through SQLite's locks instead, both sides slept in SQLite's busy handler,
//! whose pauses grow (1, 2, 5, 10, 15, 20, 25 ms...), and at 1,000,000 records the
//! engine's commit p99 on a first sync was 8 to 60 ms over 6 runs (median about 30)
//! against 7 to 34 ms (median about 10) with the mutex, and the engine 8 to 11% faster.
//! Only readers and other processes are still waited for in the busy handler.
//!
//! [`RecordSink::flush`](crate::sink::RecordSink::flush) asks the thread for a
//! `TRUNCATE` checkpoint, run holding the writer like a `RESTART`, and waits for it: the
//! whole WAL copied back and the WAL file emptied. Asked while a checkpoint runs, it
//! is served right after; several callers waiting at once share one.
//!
//! The thread stops when the store is dropped; a failed checkpoint is logged and tried
//! again after the next commit (the data is safe in the WAL meanwhile).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// What the writer tells the checkpointer.
#[derive(Debug, Default)]
struct Pending {
    /// Commits since the checkpointer last looked.
    commits: u64,
    /// The store is closing.
    stop: bool,
    /// Flushes asked for, numbered from 1.
    asked: u64,
    /// The last flush asked for when the last `TRUNCATE` began: every flush up to it
    /// is served.
    served: u64,
    /// Why the last `TRUNCATE` failed, if it did.
    failure: Option<FlushFailure>,
    /// The thread has ended (the store closing, or a panic).
    ended: bool,
}

/// A `TRUNCATE` checkpoint that did not empty the WAL.
#[derive(Debug, Clone)]
pub(super) struct FlushFailure {
    /// Worth retrying: a reader or another process held the WAL.
    pub(super) retryable: bool,
    pub(super) detail: String,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the thread.
    wake: Condvar,
    /// Wakes the callers of [`Flusher::flush`].
    done: Condvar,
}

/// Marks the thread ended when it returns or unwinds, so no flush waits for it.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        super::lock(&self.0.pending).ended = true;
        self.0.done.notify_all();
    }
}

/// The background checkpointer of one store.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Start the thread for the database at `path`; `limit_pages`: the WAL size, in
    /// pages, beyond which a `RESTART` follows the `PASSIVE` checkpoint; `writer`: the
    /// store's writer connection, held while that `RESTART` runs.
    pub(super) fn start(
        path: &Path,
        busy: Duration,
        limit_pages: u32,
        writer: Arc<Mutex<Connection>>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (s, path) = (shared.clone(), path.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("nango-sync-sqlite-checkpoint".into())
            .spawn(move || run(&s, &path, busy, i64::from(limit_pages), &writer))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// A commit landed in the WAL.
    pub(super) fn committed(&self) {
        let mut p = super::lock(&self.shared.pending);
        p.commits += 1;
        self.shared.wake.notify_one();
    }

    /// A handle that asks this thread for a flush, for a blocking task.
    pub(super) fn flusher(&self) -> Flusher {
        Flusher {
            shared: self.shared.clone(),
        }
    }
}

/// Asks the checkpoint thread for a `TRUNCATE` checkpoint and waits for it.
#[derive(Debug)]
pub(super) struct Flusher {
    shared: Arc<Shared>,
}

impl Flusher {
    /// Block until a `TRUNCATE` checkpoint that began after this call has run: the WAL
    /// holds nothing that is not in the database file.
    pub(super) fn flush(&self) -> Result<(), FlushFailure> {
        let mut p = super::lock(&self.shared.pending);
        p.asked += 1;
        let ticket = p.asked;
        self.shared.wake.notify_one();
        while p.served < ticket {
            if p.ended {
                return Err(FlushFailure {
                    retryable: false,
                    detail: "the store's checkpoint thread has stopped".into(),
                });
            }
            p = self.shared.done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.failure.clone().map_or(Ok(()), Err)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        super::lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, path: &Path, busy: Duration, limit: i64, writer: &Mutex<Connection>) {
    let _ended = Ended(shared);
    let mut conn: Option<Connection> = None;
    loop {
        let flush = {
            let mut p = super::lock(&shared.pending);
            while p.commits == 0 && p.asked == p.served && !p.stop {
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.stop {
                return;
            }
            p.commits = 0;
            (p.asked > p.served).then_some(p.asked)
        };
        let c = match conn.take() {
            Some(c) => c,
            None => match open(path, busy) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the checkpoint connection; the WAL is checkpointed later");
                    if let Some(upto) = flush {
                        let detail = format!("cannot open the checkpoint connection: {e}");
                        served(
                            shared,
                            upto,
                            Some(FlushFailure {
                                retryable: true,
                                detail,
                            }),
                        );
                    }
                    continue;
                }
            },
        };
        if let Some(upto) = flush {
            // Holding the writer, as the RESTART below does.
            let outcome = {
                let _writer = super::lock(writer);
                checkpoint(&c, "TRUNCATE")
            };
            let failure = match outcome {
                Ok((0, _, _)) => None,
                Ok((_, log, copied)) => Some(FlushFailure {
                    retryable: true,
                    detail: format!(
                        "the WAL was not emptied: {copied} of its {log} pages were copied back before the busy timeout (a reader or another process holds an older snapshot)"
                    ),
                }),
                Err(e) => Some(FlushFailure {
                    retryable: super::error::busy_or_locked(&e),
                    detail: format!("the WAL checkpoint failed: {e}"),
                }),
            };
            served(shared, upto, failure);
            conn = Some(c);
            continue;
        }
        // First without waiting for anyone; then, when the WAL has grown past its bound
        // (the writer never found it all copied when it began), a RESTART, which has
        // little left to copy and makes the next commit start the WAL anew.
        let mut outcome = checkpoint(&c, "PASSIVE");
        if matches!(outcome, Ok((_, log, _)) if log > limit) {
            // With the store's writer held, so no commit of this process is under way:
            // the RESTART does not wait for one, nor one for it, in SQLite's busy handler
            // (which sleeps 1, 2, 5, 10, 15, 20, 25 ms... between tries, so a wait
            // there lasted up to tens of milliseconds after the other side was done).
            // The next commit waits on the mutex instead and starts as soon as it is
            // released.
            let _writer = super::lock(writer);
            outcome = checkpoint(&c, "RESTART");
        }
        if let Err(e) = outcome {
            tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed; tried again after the next commit");
        }
        conn = Some(c);
    }
}

/// Flushes up to `upto` are served, with `failure`.
fn served(shared: &Shared, upto: u64, failure: Option<FlushFailure>) {
    let mut p = super::lock(&shared.pending);
    p.served = upto;
    p.failure = failure;
    shared.done.notify_all();
}

/// One checkpoint: (busy, frames in the WAL, frames copied back).
fn checkpoint(c: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

fn open(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(busy)?;
    // This connection never writes; it must not checkpoint on its own either.
    c.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    Ok(c)
}
