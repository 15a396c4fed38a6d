//! The sweep's shortcut: each stream's row counts the live records that the running
//! full read has seen, so the completing commit of a full read that saw every live
//! record skips the sweep's scan of the whole stream.
//!
//! The sweep marks deleted every live record of the stream that the full read did not
//! see (stamped with an older generation). Finding them means reading every record of
//! the stream, and with sled that read costs more than time: every page read enters
//! sled's cache, and sled evicts only after 64 reads of the same cache shard (of 256),
//! so a scan of 1,000,000 records kept about 75 MB of pages in memory beyond the cache's
//! capacity, the peak of a first sync. When the row's count says that every live record
//! is stamped with the full read's generation, there is nothing to sweep and the scan is
//! skipped.
//!
//! The count ([`SeenLive`]: a generation and the live records stamped with it) is
//! changed by every commit in the batch that writes the records, from each record's
//! stored and new stamp. It is only kept while it is known to be exact: it starts at 0
//! when a full read begins on a stream with no live record, or on a stream whose every
//! live record the previous count covered (the new generation is newer than all of
//! them); after a scan, it is set from what the scan found. A stream without a count
//! (made by an older build, or after a full read that began otherwise) is swept by a
//! scan, as before, and has a count from then on. [`SledStore::check`] checks it.
//!
//! [`SledStore::check`]: super::SledStore::check

use serde::{Deserialize, Serialize};

use super::rows::RecordView;
use crate::error::Result;
use crate::sink::FullRead;

/// How many live records of a stream are stamped with a generation: kept in the
/// stream's row while exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SeenLive {
    pub(super) generation: u64,
    pub(super) count: u64,
}

/// A commit's changes to its stream's [`SeenLive`], gathered while it plans its writes.
pub(super) struct SeenTally {
    /// The count the commit starts from (none: not known exactly).
    start: Option<SeenLive>,
    /// Live records stamped with the count's generation, added minus removed.
    delta: i64,
}

impl SeenTally {
    /// The tally of a commit (a full read's when `full_read`) on a stream whose row
    /// holds `live` live records and the count `kept`.
    pub(super) fn new(kept: Option<SeenLive>, live: u64, full_read: Option<FullRead>) -> Self {
        let start = match (kept, full_read) {
            (kept, None) => kept,
            (Some(s), Some(f)) if s.generation == f.generation => Some(s),
            // No live record, or every one stamped with an older generation: none has
            // the new one yet.
            (_, Some(f)) if live == 0 => Some(SeenLive {
                generation: f.generation,
                count: 0,
            }),
            (Some(s), Some(f)) if s.count == live && s.generation < f.generation => {
                Some(SeenLive {
                    generation: f.generation,
                    count: 0,
                })
            }
            (_, Some(_)) => None,
        };
        SeenTally { start, delta: 0 }
    }

    /// A record the commit writes or stamps: its stored value (none for a new record)
    /// and its new state, live or not, stamped with `generation`.
    pub(super) fn changed(
        &mut self,
        stored: Option<&[u8]>,
        generation: u64,
        live: bool,
    ) -> Result<()> {
        let counted = self.start.map(|s| s.generation);
        if let Some(stored) = stored {
            let view = RecordView::new(stored)?;
            if !view.deleted() && Some(view.seen_gen()) == counted {
                self.delta -= 1;
            }
        }
        if live && Some(generation) == counted {
            self.delta += 1;
        }
        Ok(())
    }

    /// The count after the commit's writes, when known.
    fn counted(&self) -> Option<SeenLive> {
        let s = self.start?;
        let count = u64::try_from(i64::try_from(s.count).ok()?.checked_add(self.delta)?).ok()?;
        Some(SeenLive { count, ..s })
    }

    /// Whether the sweep of full read `generation` has nothing to mark deleted: every
    /// live record, after the commit's writes, is stamped with `generation`. `live` is
    /// the stream's live records before the commit, `writes_delta` the change the
    /// commit's writes make to it ([`Prepared::live_delta_of_writes`]).
    ///
    /// [`Prepared::live_delta_of_writes`]: crate::sink::commit::Prepared::live_delta_of_writes
    pub(super) fn nothing_to_sweep(&self, generation: u64, live: u64, writes_delta: i64) -> bool {
        let live_after = i64::try_from(live)
            .ok()
            .and_then(|l| l.checked_add(writes_delta));
        match (self.counted(), live_after) {
            (Some(s), Some(l)) => s.generation == generation && i64::try_from(s.count) == Ok(l),
            _ => false,
        }
    }

    /// The count to keep in the row after the commit. `scanned`: the sweep of full read
    /// `generation` scanned the stream and found `newer` live records (not the commit's
    /// own) stamped with a newer generation; `live` is the stream's live records after
    /// the commit, sweep included. Every other live record is the commit's or was not
    /// swept, so it carries `generation`.
    pub(super) fn finish(self, scanned: Option<(u64, u64)>, live: u64) -> Option<SeenLive> {
        match scanned {
            Some((generation, newer)) => Some(SeenLive {
                generation,
                count: live.checked_sub(newer)?,
            }),
            None => self.counted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{SledOptions, SledStore};
    use super::*;
    use crate::record::{Cursor, LastAction, Metadata, RawJson, Record, StreamKey};
    use crate::sink::{Commit, RecordSink};
    use crate::time::Timestamp;

    fn record(id: &str, t: i64) -> Record {
        Record {
            id: id.to_owned(),
            payload: RawJson::from_trusted(format!(r#"{{"id":"{id}","t":{t}}}"#)),
            payload_is_bare: false,
            meta: Metadata {
                first_seen_at: Timestamp::from_micros(t),
                last_modified_at: Timestamp::from_micros(t),
                last_action: LastAction::Added,
                deleted_at: None,
                pruned_at: None,
                cursor: Cursor(format!("c{t:06}")),
            },
        }
    }

    /// Commit `ids` as one page (of full read `full`, when set) after `cursor`.
    async fn page(
        store: &SledStore,
        stream: &StreamKey,
        ids: &[&str],
        t: i64,
        full: Option<FullRead>,
    ) -> u64 {
        let expected = store.stream_state(stream).await.unwrap().cursor;
        let records: Vec<Record> = ids.iter().map(|id| record(id, t)).collect();
        let mut commit = Commit::new(
            stream.clone(),
            expected,
            Some(Cursor(format!("c{t:06}"))),
            records,
        );
        commit.full_read = full;
        commit.now = Timestamp::from_micros(t);
        store.commit(commit).await.unwrap().swept
    }

    fn full(generation: u64, complete: bool) -> Option<FullRead> {
        Some(FullRead {
            generation,
            complete,
        })
    }

    async fn kept(store: &SledStore, stream: &StreamKey) -> Option<SeenLive> {
        let stream = stream.clone();
        store
            .blocking("test", move |inner, _| {
                Ok(inner.row(inner.sid(&stream)?.unwrap())?.seen_live)
            })
            .await
            .unwrap()
    }

    /// The sweeps that scanned the store's records since it was opened.
    async fn scans(store: &SledStore) -> u64 {
        store
            .blocking("test", |inner, _| {
                Ok(inner.sweep_scans.load(Ordering::Relaxed))
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_read_that_saw_every_record_skips_the_scan_and_one_that_did_not_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path().join("s"), SledOptions::new())
            .await
            .unwrap();
        let s = StreamKey::new("i", "c", "M");
        let before = scans(&store).await;

        // A first full read of an empty stream: counted from 0, no scan.
        page(&store, &s, &["a", "b"], 1, full(1, false)).await;
        page(&store, &s, &["c"], 2, full(1, true)).await;
        assert_eq!(scans(&store).await, before);
        assert_eq!(
            kept(&store, &s).await,
            Some(SeenLive {
                generation: 1,
                count: 3
            })
        );

        // An incremental commit stamps the stream's generation (1): still counted.
        page(&store, &s, &["d"], 3, None).await;
        assert_eq!(kept(&store, &s).await.map(|k| k.count), Some(4));

        // A re-read that misses "b": its count (2 of 4 live) says there is something to
        // sweep, so it scans, and sweeps exactly "b".
        page(&store, &s, &["a"], 4, full(2, false)).await;
        assert_eq!(
            kept(&store, &s).await,
            Some(SeenLive {
                generation: 2,
                count: 1
            })
        );
        assert_eq!(page(&store, &s, &["c", "d"], 5, full(2, true)).await, 1);
        assert_eq!(scans(&store).await, before + 1);
        assert!(store.get(&s, "b").await.unwrap().unwrap().meta.is_deleted());
        assert_eq!(
            kept(&store, &s).await,
            Some(SeenLive {
                generation: 2,
                count: 3
            })
        );

        // A re-read that sees all three again, unchanged (stamped without a write): no
        // scan, nothing swept.
        page(&store, &s, &["a"], 4, full(3, false)).await;
        assert_eq!(page(&store, &s, &["c", "d"], 5, full(3, true)).await, 0);
        assert_eq!(scans(&store).await, before + 1);

        // During a re-read, an incremental commit stamps a record it saw with the
        // stream's older generation: the count drops, the sweep scans and marks it
        // deleted, as a scan always did.
        page(&store, &s, &["a", "c"], 8, full(4, false)).await;
        page(&store, &s, &["a"], 9, None).await;
        assert_eq!(page(&store, &s, &["d"], 10, full(4, true)).await, 1);
        assert_eq!(scans(&store).await, before + 2);
        assert!(store.get(&s, "a").await.unwrap().unwrap().meta.is_deleted());

        let check = store.check().await.unwrap();
        assert!(check.is_consistent(), "{:?}", check.problems);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_without_a_count_is_scanned_once_then_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path().join("s"), SledOptions::new())
            .await
            .unwrap();
        let s = StreamKey::new("i", "c", "M");
        page(&store, &s, &["a", "b"], 1, None).await;
        // As a row written by an older build: no count.
        let s2 = s.clone();
        store
            .blocking("test", move |inner, _| {
                inner.update_row(&s2, "test", |row| row.seen_live = None)
            })
            .await
            .unwrap();
        let before = scans(&store).await;
        page(&store, &s, &["a"], 2, full(1, false)).await;
        assert_eq!(kept(&store, &s).await, None);
        assert_eq!(page(&store, &s, &["c"], 3, full(1, true)).await, 1);
        assert_eq!(scans(&store).await, before + 1);
        assert_eq!(
            kept(&store, &s).await,
            Some(SeenLive {
                generation: 1,
                count: 2
            })
        );
        // From then on, counted.
        page(&store, &s, &["a", "c"], 4, full(2, true)).await;
        assert_eq!(scans(&store).await, before + 1);
        let check = store.check().await.unwrap();
        assert!(check.is_consistent(), "{:?}", check.problems);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_check_reports_a_wrong_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path().join("s"), SledOptions::new())
            .await
            .unwrap();
        let s = StreamKey::new("i", "c", "M");
        page(&store, &s, &["a", "b"], 1, full(1, true)).await;
        let s2 = s.clone();
        store
            .blocking("test", move |inner, _| {
                inner.update_row(&s2, "test", |row| {
                    row.seen_live = Some(SeenLive {
                        generation: 1,
                        count: 3,
                    })
                })
            })
            .await
            .unwrap();
        let check = store.check().await.unwrap();
        assert!(
            check
                .problems
                .iter()
                .any(|p| p.contains("3 live records stamped with generation 1")),
            "{:?}",
            check.problems
        );
    }
}
