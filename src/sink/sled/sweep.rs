//! The sweep's shortcut on sled ([`crate::sink::seen`]): each stream's row keeps the
//! count of live records stamped with the running full read's generation, in its JSON
//! (`seen_live`), so the completing commit of a full read that saw every live record
//! skips the sweep's scan of the whole stream.
//!
//! With sled that scan costs more than time: every page read enters sled's cache, and
//! sled evicts only after 64 reads of the same cache shard (of 256), so a scan of
//! 1,000,000 records kept about 75 MB of pages in memory beyond the cache's capacity,
//! the peak of a first sync. A scan counts the live records stamped with a newer
//! generation, so the count is exact after it too. [`SledStore::check`] checks it.
//!
//! [`SledStore::check`]: super::SledStore::check

use super::rows::RecordView;
use crate::error::Result;
use crate::sink::seen::Stamp;

/// The stamp of a stored record's value.
pub(super) fn stamp_of(stored: &[u8]) -> Result<Stamp> {
    let view = RecordView::new(stored)?;
    Ok(Stamp {
        generation: view.seen_gen(),
        live: !view.deleted(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{SledOptions, SledStore};
    use crate::record::{Cursor, LastAction, Metadata, RawJson, Record, StreamKey};
    use crate::sink::seen::SeenLive;
    use crate::sink::{Commit, FullRead, RecordSink, full};
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
