//! Every store runs the same conformance suite (`nango_sync_testkit::conformance`), each
//! history also on the in-memory reference store, whose exports and statuses the store
//! must match.
//!
//! One module per store, gated by the store's cargo feature; `conformance_tests!`
//! generates one test per check of the suite's list, with the store factories of
//! `nango_sync_testkit::stores`, and its `shared` submodule runs them again through the
//! shared handle (`SharedSink`). The PostgreSQL tests need a server: `scripts/test.sh`
//! starts a throwaway one and exports `NANGO_SYNC_TEST_POSTGRES_URL`; without it they
//! fail (they never skip).

mod memory {
    use nango_sync_testkit::conformance::{self, Shared};
    use nango_sync_testkit::stores::memory_factory as stores;

    nango_sync_testkit::conformance_tests!(stores());

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_all_runs_every_check() {
        conformance::run_all(&mut stores(), false).await;
    }
}

#[cfg(feature = "sled")]
mod sled {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use nango_sync::sink::fault::FaultInjector;
    use nango_sync::sink::sled::{Durability, SledOptions};
    use nango_sync::sink::{
        Commit, CommitOutcome, FullRead, RunSummary, SledStore, StreamStatus, read_all,
    };
    use nango_sync::{
        Cursor, LastAction, Metadata, RawJson, Record, RecordSink, StoredRecord, StreamKey,
        Timestamp,
    };
    use nango_sync_testkit::conformance::{self, Open, Shared, StoreFactory};
    use nango_sync_testkit::stores::sled_factory;
    use serde_json::json;
    use tempfile::TempDir;

    /// Every stream's status.
    async fn streams(store: &SledStore) -> Vec<StreamStatus> {
        RecordSink::streams(store).await.unwrap()
    }

    fn stores() -> impl StoreFactory<Store = SledStore> {
        sled_factory(SledOptions::new())
    }

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }

    /// The whole suite again with sled reopened (so writing a snapshot) after every
    /// third write.
    mod snapshots {
        use super::*;
        nango_sync_testkit::conformance_tests!(
            sled_factory(SledOptions::new().with_snapshot_after_ops(3)),
            durable
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_durability_passes_the_merge_and_sweep_checks() {
        let mut stores = sled_factory(
            SledOptions::new()
                .with_durability(Durability::Periodic(std::time::Duration::from_millis(50))),
        );
        conformance::merge_outcomes_are_counted(&mut stores).await;
        conformance::full_read_sweeps_unseen_records(&mut stores).await;
    }

    /// Under `Durability::Periodic`, `flush` makes the commits so far durable: a copy of
    /// the directory taken right after it, with the store still open and its own
    /// flushes an hour apart, holds every one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_makes_periodic_commits_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (path, copy) = (dir.path().join("s"), dir.path().join("copy"));
        let options =
            SledOptions::new().with_durability(Durability::Periodic(Duration::from_secs(3600)));
        let store = SledStore::open_with(&path, options).await.unwrap();
        let stream = StreamKey::new("conformance", "flush", "Ticket");
        for page in 0..3 {
            let records = (0..20)
                .map(|i| {
                    let t = page * 100 + i;
                    titled(&format!("r{t:03}"), t, LastAction::Added, "flushed")
                })
                .collect();
            commit_page(&store, &stream, records, None).await;
        }
        RecordSink::flush(&store).await.unwrap();
        nango_sync_testkit::stores::copy_dir(&path, &copy);
        drop(store);
        let reopened = SledStore::open(&copy).await.unwrap();
        let records = read_all(&reopened, &stream, false).await.unwrap();
        assert_eq!(
            records.len(),
            60,
            "every commit before the flush is in the copy"
        );
        assert_eq!(
            RecordSink::stream_state(&reopened, &stream)
                .await
                .unwrap()
                .cursor,
            records
                .iter()
                .find(|r| r.id == "r219")
                .map(|r| r.meta.cursor.clone()),
        );
    }

    #[tokio::test]
    async fn open_url_builds_a_sled_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sled://{}", dir.path().join("via-url").display());
        let sink = nango_sync::sink::open(&url).await.unwrap();
        assert_eq!(sink.backend(), "sled");
    }

    // ---- Recovery from a snapshot sled was writing when its process died ----------

    /// The name sled 0.34 gives a snapshot while writing it, at an LSN past any real one.
    const LEFTOVER: &str = "snap.00000000FFFFFFFF.generating";

    fn ts(t: i64) -> Timestamp {
        Timestamp::from_micros(1_790_000_000_000_000 + t)
    }

    /// A version of record `id` at instant `t` (its cursor too), with `payload`.
    fn version(id: &str, t: i64, action: LastAction, payload: serde_json::Value) -> Record {
        Record {
            id: id.to_string(),
            payload_is_bare: payload.as_object().is_some_and(|m| m.len() == 1),
            payload: RawJson::from_trusted(payload.to_string()),
            meta: Metadata {
                first_seen_at: ts(t),
                last_modified_at: ts(t),
                last_action: action,
                deleted_at: (action == LastAction::Deleted).then(|| ts(t)),
                pruned_at: None,
                cursor: Cursor(format!("cur-{t:012}")),
            },
        }
    }

    fn titled(id: &str, t: i64, action: LastAction, title: &str) -> Record {
        version(id, t, action, json!({"id": id, "title": title}))
    }

    /// Commit `records` on top of the stream's cursor (moved to the last record's).
    async fn commit_page(
        store: &SledStore,
        stream: &StreamKey,
        records: Vec<Record>,
        full_read: Option<FullRead>,
    ) -> CommitOutcome {
        let expected = RecordSink::stream_state(store, stream)
            .await
            .unwrap()
            .cursor;
        let cursor = records
            .last()
            .map(|r| r.meta.cursor.clone())
            .or(expected.clone());
        let mut commit = Commit::new(stream.clone(), expected, cursor, records);
        commit.full_read = full_read;
        RecordSink::commit(store, commit).await.unwrap()
    }

    /// A store holding two streams, closed: `large`, 10,000 records written by one
    /// commit; `merge`, updates, a stale version, a delete with only its id (the payload
    /// kept), a prune (the payload kept), and a full re-read whose sweep leaves a
    /// tombstone.
    async fn filled_store(dir: &Path) {
        let store = SledStore::open(dir).await.unwrap();
        let large = StreamKey::new("conformance", "large", "Ticket");
        let records = (0..10_000)
            .map(|i| {
                titled(
                    &format!("rec-{i:05}"),
                    i,
                    LastAction::Added,
                    "a title of some length",
                )
            })
            .collect();
        commit_page(&store, &large, records, None).await;

        let merge = StreamKey::new("conformance", "merge", "Ticket");
        let add = |id: &str, t| titled(id, t, LastAction::Added, "first");
        commit_page(
            &store,
            &merge,
            vec![add("a", 1), add("b", 2), add("c", 3), add("d", 4)],
            None,
        )
        .await;
        let mut pruned = version("c", 7, LastAction::Updated, json!({"id": "c"}));
        pruned.meta.pruned_at = Some(ts(8));
        let out = commit_page(
            &store,
            &merge,
            vec![
                titled("a", 5, LastAction::Updated, "second"),
                titled("a", 1, LastAction::Added, "stale"),
                version("b", 6, LastAction::Deleted, json!({"id": "b"})),
                pruned,
            ],
            None,
        )
        .await;
        assert_eq!((out.counts.updated, out.counts.deleted), (2, 1), "{out:?}");
        // A full re-read that sees `a` and a new `e`: its completing commit sweeps the
        // live records it did not see, `c` and `d`.
        let full = |complete| {
            Some(FullRead {
                generation: 1,
                complete,
            })
        };
        commit_page(
            &store,
            &merge,
            vec![titled("a", 9, LastAction::Updated, "third")],
            full(false),
        )
        .await;
        let out = commit_page(
            &store,
            &merge,
            vec![titled("e", 10, LastAction::Added, "new")],
            full(true),
        )
        .await;
        assert_eq!(
            out.swept, 2,
            "c and d are swept, b is a tombstone already: {out:?}"
        );
        drop(store);
        // Open once more, so that sled writes a finished snapshot of all of it.
        drop(SledStore::open(dir).await.unwrap());
    }

    /// Everything a reader can see: every stream's status and every record, tombstones
    /// included.
    async fn contents(store: &SledStore) -> Vec<(StreamStatus, Vec<StoredRecord>)> {
        let mut out = Vec::new();
        for status in streams(store).await {
            let records = read_all(
                store as &dyn nango_sync::sink::DynRecordSink,
                &status.stream,
                true,
            )
            .await
            .unwrap();
            out.push((status, records));
        }
        out
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snap."))
            .collect();
        names.sort();
        names
    }

    /// Open the directory with plain sled, as a tool or a test fixture would. A store just
    /// dropped can hold sled's file lock a moment longer (sled's own I/O threads finish
    /// their last writes after the handle is gone): wait for it, up to 10 s.
    fn open_plain_sled(dir: &Path) -> ::sled::Result<::sled::Db> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match ::sled::open(dir) {
                Err(::sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// sled itself refuses the directory (the fixture reproduces the failure).
    fn assert_sled_refuses(dir: &Path) {
        match open_plain_sled(dir) {
            Err(::sled::Error::Corruption { .. }) => {}
            Err(e) => panic!("sled failed otherwise than with a corruption error: {e}"),
            Ok(_) => {
                panic!("sled opened the directory: the fixture does not reproduce the failure")
            }
        }
    }

    /// Open, expecting a recovery that removed exactly `leftovers`, and the same contents.
    async fn open_recovers(
        dir: &Path,
        leftovers: &[&str],
        before: &[(StreamStatus, Vec<StoredRecord>)],
    ) {
        let store = SledStore::open(dir).await.unwrap_or_else(|e| {
            panic!("the store does not open after an interrupted snapshot: {e}")
        });
        let recovery = store.recovery().expect("the open recovered");
        let mut removed: Vec<String> = recovery
            .removed
            .iter()
            .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, leftovers, "the interrupted snapshots removed");
        assert!(
            recovery.check.is_consistent(),
            "check after recovery: {:?}",
            recovery.check.problems
        );
        assert_eq!(recovery.check.streams, before.len() as u64);
        assert_eq!(
            recovery.check.records,
            before.iter().map(|(_, r)| r.len() as u64).sum::<u64>()
        );
        for name in leftovers {
            assert!(!dir.join(name).exists(), "{name} is still there");
        }
        assert!(
            contents(&store).await == before,
            "the recovered store differs from the store before the interrupted snapshot"
        );
        // It takes commits again.
        let stream = StreamKey::new("conformance", "after-recovery", "Ticket");
        let out = commit_page(
            &store,
            &stream,
            vec![titled("x", 1, LastAction::Added, "x")],
            None,
        )
        .await;
        assert_eq!(out.counts.added, 1);
        assert!(store.check().await.unwrap().is_consistent());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_interrupted_snapshot_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let before = contents(&SledStore::open(&path).await.unwrap()).await;
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        assert_sled_refuses(&path);
        open_recovers(&path, &[LEFTOVER], &before).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_interrupted_snapshots_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let before = contents(&SledStore::open(&path).await.unwrap()).await;
        let finished = snapshot_files(&path);
        assert_eq!(finished.len(), 1, "one finished snapshot: {finished:?}");
        // The first half of the real snapshot, as a write killed midway leaves it, under
        // the name sled was writing it with...
        let real = std::fs::read(path.join(&finished[0])).unwrap();
        let partial = format!("{}.generating", finished[0]);
        std::fs::write(path.join(&partial), &real[..real.len() / 2]).unwrap();
        assert_sled_refuses(&path);
        // ...and 256 KiB of garbage at a later position.
        let garbage: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(path.join(LEFTOVER), &garbage).unwrap();
        assert_sled_refuses(&path);
        let mut leftovers = [partial.as_str(), LEFTOVER];
        leftovers.sort();
        open_recovers(&path, &leftovers, &before).await;
        assert_eq!(
            snapshot_files(&path)
                .iter()
                .filter(|n| n.ends_with(".generating"))
                .count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything_across_interrupted_snapshots() {
        let mut dirs: Vec<TempDir> = Vec::new();
        conformance::reopen_keeps_everything(&mut |open: Open, faults: Arc<FaultInjector>| {
            if open == Open::Fresh {
                dirs.push(tempfile::tempdir().unwrap());
            }
            let path = dirs.last().expect("a fresh store first").path().join("db");
            if open == Open::Reopen {
                std::fs::write(path.join(LEFTOVER), b"").unwrap();
            }
            async move {
                let store = SledStore::open_with(&path, SledOptions::new().with_faults(faults))
                    .await
                    .unwrap();
                assert_eq!(store.recovery().is_some(), open == Open::Reopen);
                assert!(!path.join(LEFTOVER).exists());
                store
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_removed_while_another_process_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        // The lock sled takes (flock on `db`), held as another process would hold it.
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.join("db"))
            .unwrap();
        holder.try_lock().unwrap();
        let options = SledOptions::new().with_lock_wait(Duration::from_millis(300));
        let err = SledStore::open_with(&path, options.clone())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("another process uses the store"), "{msg}");
        assert!(
            path.join(LEFTOVER).exists(),
            "the leftover was removed while the lock was held"
        );
        // Released during the wait: the open recovers.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        let store = SledStore::open_with(&path, options.with_lock_wait(Duration::from_secs(5)))
            .await
            .unwrap();
        release.join().unwrap();
        assert_eq!(store.recovery().unwrap().removed.len(), 1);
        assert!(!path.join(LEFTOVER).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inconsistent_store_is_refused_after_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        // Remove one record behind the store's back: its stream's counts no longer match.
        {
            let db = open_plain_sled(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            let (key, _) = tree.scan_prefix(b"r").next().unwrap().unwrap();
            tree.remove(key).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(&path).await.unwrap();
        let check = store.check().await.unwrap();
        assert!(!check.is_consistent());
        for problem in [
            "10000 live and 0 deleted records, the store holds 9999 and 0",
            "the change feed lists record \"rec-00000\" of stream 1 at 1, which the store does not hold",
        ] {
            assert!(
                check.problems.iter().any(|p| p.contains(problem)),
                "{problem}: {:?}",
                check.problems
            );
        }
        drop(store);
        std::fs::write(path.join(LEFTOVER), b"").unwrap();
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err}");
        assert!(err.to_string().contains("inconsistent"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_finds_a_missing_cursor_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let store = SledStore::open(&path).await.unwrap();
        let large = streams(&store)
            .await
            .into_iter()
            .find(|s| s.stream.connection == "large")
            .unwrap();
        let last = RecordSink::get(&store, &large.stream, "rec-09999")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Some(&last.meta.cursor), large.state.cursor.as_ref());
        drop(store);
        {
            let db = open_plain_sled(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            let key = tree
                .scan_prefix(b"r")
                .keys()
                .map(|k| k.unwrap())
                .find(|k| k.ends_with(b"rec-09999"))
                .unwrap();
            // Replace it by another id (its change feed entry too): the counts still
            // match, the cursor's record is gone.
            let value = tree.remove(&key).unwrap().unwrap();
            let mut other = key.to_vec();
            other.extend_from_slice(b"-moved");
            tree.insert(other, value).unwrap();
            // The commit's last chunk of ids ends with the record's id, prefixed with its
            // length (`u32` big-endian).
            let listed = [&9u32.to_be_bytes()[..], b"rec-09999"].concat();
            let (chunk, ids) = tree
                .scan_prefix(b"e")
                .map(|kv| kv.unwrap())
                .find(|(_, v)| v.ends_with(&listed))
                .unwrap();
            let mut ids = ids[..ids.len() - listed.len()].to_vec();
            ids.extend_from_slice(&15u32.to_be_bytes());
            ids.extend_from_slice(b"rec-09999-moved");
            tree.insert(chunk, ids).unwrap();
            db.flush().unwrap();
        }
        let check = SledStore::open(&path).await.unwrap().check().await.unwrap();
        assert_eq!(check.problems.len(), 1, "{:?}", check.problems);
        assert!(
            check.problems[0]
                .contains("is the cursor of record \"rec-09999\", which the store does not hold"),
            "{:?}",
            check.problems
        );
    }

    /// Every answer of the feed a reader can get: all of it read in pages of 7 (so
    /// from positions inside commits, the 10,000-record commit's chunks included),
    /// one stream's, and from a position inside the large commit.
    async fn feed_answers(store: &SledStore) -> Vec<nango_sync::ChangeBatch> {
        use nango_sync::{ChangeQuery, FeedPosition, StreamFilter};
        let mut out = Vec::new();
        let mut since = FeedPosition::START;
        loop {
            let batch =
                RecordSink::changes(store, &ChangeQuery::since(since.clone()).with_limit(7))
                    .await
                    .unwrap();
            let done = batch.changes.is_empty();
            since = batch.next.clone();
            out.push(batch);
            if done {
                break;
            }
        }
        let merge = StreamKey::new("conformance", "merge", "Ticket");
        for query in [
            ChangeQuery::since(FeedPosition::START)
                .with_filter(StreamFilter::stream(&merge))
                .with_limit(100),
            ChangeQuery::since(FeedPosition::after_change(1, "rec-04999")).with_limit(3),
            ChangeQuery::since(FeedPosition::after_change(1, "rec-09999")).with_limit(100),
        ] {
            out.push(RecordSink::changes(store, &query).await.unwrap());
        }
        out
    }

    /// Write the change feed's index of format 2 (one key per record: `'c'` + seq +
    /// sid + id) by hand in place of the current one, and mark the store format 2 (or
    /// format 1: no index at all). `interrupted` leaves the current index in place and
    /// half of format 2's keys, as a migration killed midway does.
    fn downgrade(path: &Path, format: u64, interrupted: bool) {
        let db = open_plain_sled(path).unwrap();
        let tree = db.open_tree("nango_sync").unwrap();
        if !interrupted {
            for key in tree.scan_prefix(b"e").keys() {
                tree.remove(key.unwrap()).unwrap();
            }
        }
        if format == 2 {
            let mut n = 0;
            for item in tree.scan_prefix(b"r") {
                let (key, value) = item.unwrap();
                n += 1;
                if interrupted && n % 2 == 0 {
                    continue;
                }
                let seq = u64::from_be_bytes(value[1..9].try_into().unwrap());
                let index = [&b"c"[..], &seq.to_be_bytes(), &key[1..]].concat();
                tree.insert(index, &[][..]).unwrap();
            }
        }
        tree.insert(b"\x00format", &format.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_of_formats_1_and_2_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let store = SledStore::open(&path).await.unwrap();
        let before = feed_answers(&store).await;
        // The large commit, the merge stream's changes, and every record read once.
        let read: usize = before[..before.len() - 3]
            .iter()
            .map(|b| b.changes.len())
            .sum();
        assert_eq!(read, 10_005, "{:?}", before.last());
        let contents_before = contents(&store).await;
        drop(store);
        for (format, interrupted) in [(2, false), (2, true), (1, false), (1, true)] {
            downgrade(&path, format, interrupted);
            let store = SledStore::open(&path).await.unwrap();
            assert!(
                feed_answers(&store).await == before,
                "format {format} (interrupted: {interrupted}): the feed changed"
            );
            assert!(contents(&store).await == contents_before);
            let check = store.check().await.unwrap();
            assert!(check.is_consistent(), "{:?}", check.problems);
            drop(store);
            let db = open_plain_sled(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            assert_eq!(
                tree.get(b"\x00format").unwrap().unwrap().as_ref(),
                &3u64.to_be_bytes()[..]
            );
            assert_eq!(
                tree.scan_prefix(b"c").count(),
                0,
                "format 2's index is removed"
            );
        }
        // The migrated store keeps changing: a commit superseding records of the
        // migrated entries.
        let store = SledStore::open(&path).await.unwrap();
        let merge = StreamKey::new("conformance", "merge", "Ticket");
        commit_page(
            &store,
            &merge,
            vec![
                titled("a", 20, LastAction::Updated, "fourth"),
                titled("e", 21, LastAction::Updated, "again"),
            ],
            None,
        )
        .await;
        let check = store.check().await.unwrap();
        assert!(check.is_consistent(), "{:?}", check.problems);
        let after = feed_answers(&store).await;
        let tail: Vec<_> = after[..after.len() - 3]
            .iter()
            .flat_map(|b| b.changes.iter().map(|c| (c.seq(), c.id().to_owned())))
            .collect();
        assert_eq!(tail.len(), 10_005);
        assert_eq!(
            tail[tail.len() - 2..],
            [(6, "a".to_owned()), (6, "e".to_owned())]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_finds_a_damaged_change_feed_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let header = |seq: u64| [&b"e"[..], &seq.to_be_bytes()].concat();
        let chunk = |seq: u64, n: u32| [header(seq), n.to_be_bytes().to_vec()].concat();
        let damage = |f: &dyn Fn(&::sled::Tree)| {
            let db = open_plain_sled(&path).unwrap();
            let tree = db.open_tree("nango_sync").unwrap();
            f(&tree);
            db.flush().unwrap();
        };
        let problems = || async {
            let store = SledStore::open(&path).await.unwrap();
            store.check().await.unwrap().problems
        };
        assert_eq!(problems().await, Vec::<String>::new());
        // Commit 1 (10,000 records in 10 chunks) loses a chunk: its records are missing.
        let lost = std::sync::Mutex::new(None);
        damage(&|tree| *lost.lock().unwrap() = tree.remove(chunk(1, 4)).unwrap());
        assert_eq!(
            problems().await,
            [
                "the change feed's entry for commit 1 counts 10000 records it is the last change of, its ids name 9000",
                "the change feed's entry for commit 1 has 9 chunks, its header says 10",
                "1000 of the 10000 records last changed by commit 1 are missing from the change feed's index",
            ]
        );
        // Put back; commit 5's live count is off by one, commit 2 (whose records were
        // all changed again) has a header still, commit 3's header is lost.
        let lost = lost.into_inner().unwrap().unwrap();
        damage(&|tree| {
            tree.insert(chunk(1, 4), lost.clone()).unwrap();
            assert!(tree.get(header(2)).unwrap().is_none());
            let mut more = tree.get(header(5)).unwrap().unwrap().to_vec();
            more[7] += 1;
            tree.insert(header(5), more).unwrap();
            let mut one = 1u64.to_be_bytes().to_vec();
            one.extend_from_slice(&1u32.to_be_bytes());
            tree.insert(header(2), one).unwrap();
            tree.remove(header(3)).unwrap().unwrap();
        });
        let found = problems().await;
        for problem in [
            "the change feed's entry for commit 5 counts 4 records it is the last change of, its ids name 3",
            "the change feed's entry for commit 2 counts 1 records it is the last change of, its ids name 0",
            "the change feed's entry for commit 2 has 0 chunks, its header says 1",
            "the change feed holds ids of commit 3 without its header",
        ] {
            assert!(found.iter().any(|p| p == problem), "{problem}: {found:?}");
        }
        assert_eq!(found.len(), 4, "{found:?}");
        // Ids out of order in a chunk, and one naming no record.
        damage(&|tree| {
            let mut ids = tree.get(chunk(1, 0)).unwrap().unwrap().to_vec();
            ids.extend_from_slice(&5u32.to_be_bytes());
            ids.extend_from_slice(b"ghost");
            tree.insert(chunk(1, 0), ids).unwrap();
        });
        let found = problems().await;
        for problem in [
            "commit 1: the change feed lists record \"ghost\" out of order",
            "the change feed lists record \"ghost\" of stream 1 at 1, which the store does not hold",
        ] {
            assert!(found.iter().any(|p| p == problem), "{problem}: {found:?}");
        }
    }

    fn run(pages: u64) -> RunSummary {
        RunSummary {
            id: nango_sync::RunId::new(),
            instance: String::new(),
            started_at: Timestamp::from_micros(1),
            finished_at: Timestamp::from_micros(2),
            outcome: nango_sync::RunOutcome::Ok,
            pages,
            counts: Default::default(),
            full: false,
            full_reason: None,
            high_water_mark: None,
            error: None,
            count_check: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_after_ops_makes_sled_write_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let store = SledStore::open_with(&path, SledOptions::new().with_snapshot_after_ops(2))
            .await
            .unwrap();
        let stream = streams(&store).await[0].stream.clone();
        let mut seen = vec![snapshot_files(&path)];
        for pages in 1..=6 {
            RecordSink::record_run(&store, &stream, &run(pages), 100)
                .await
                .unwrap();
            seen.push(snapshot_files(&path));
        }
        // sled wrote a snapshot after writes 2, 4 and 6, and at no other time.
        for (write, names) in seen.iter().enumerate().skip(1) {
            assert_eq!(
                names != &seen[write - 1],
                write % 2 == 0,
                "write {write}: snapshots {:?} -> {names:?}",
                seen[write - 1]
            );
        }
        // Commits land across the reopens (a reopen after each second write).
        let s = StreamKey::new("conformance", "snapshots", "Ticket");
        for t in 1..=5 {
            let out = commit_page(
                &store,
                &s,
                vec![titled(&format!("s{t}"), t, LastAction::Added, "x")],
                None,
            )
            .await;
            assert_eq!(out.counts.added, 1);
        }
        assert!(store.check().await.unwrap().is_consistent());
        let before = contents(&store).await;
        drop(store);
        assert!(contents(&SledStore::open(&path).await.unwrap()).await == before);

        // Through a sink URL too.
        let url = format!("sled://{}?snapshot_after_ops=1", path.display());
        let sink = nango_sync::sink::open(&url).await.unwrap();
        let first = snapshot_files(&path);
        sink.record_run(&stream, &run(7), 100).await.unwrap();
        assert_ne!(
            snapshot_files(&path),
            first,
            "a write through the URL made a snapshot"
        );
    }

    #[tokio::test]
    async fn a_corrupted_log_is_reported_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let len = std::fs::metadata(path.join("db")).unwrap().len() as usize;
        std::fs::write(path.join("db"), vec![0x5a; len]).unwrap();
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("damaged") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_replaced_log_is_reported_damaged_not_opened_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        // Garbage for a log and no snapshot: sled itself opens that as a new, empty
        // database.
        let len = std::fs::metadata(path.join("db")).unwrap().len() as usize;
        std::fs::write(path.join("db"), vec![0x5a; len]).unwrap();
        for name in snapshot_files(&path) {
            std::fs::remove_file(path.join(name)).unwrap();
        }
        let err = SledStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        assert!(
            err.to_string().contains("holds none of the store's data"),
            "{err}"
        );
        // And it stays refused.
        assert!(SledStore::open(&path).await.unwrap_err().is_damaged_store());
    }

    #[tokio::test]
    async fn a_store_made_before_the_marker_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        filled_store(&path).await;
        let marker = path.join("nango-sync-store");
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        let store = SledStore::open(&path).await.unwrap();
        assert_eq!(streams(&store).await.len(), 2);
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn unusable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = SledStore::open(file.join("db")).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sled") && msg.contains("a-file"), "{msg}");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use nango_sync::sink::SqliteStore;
    use nango_sync_testkit::conformance::Shared;
    use nango_sync_testkit::stores::sqlite_factory as stores;

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }

    #[tokio::test]
    async fn garbage_file_is_reported_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        std::fs::write(&path, vec![0x5a; 100_000]).unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("damaged") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use nango_sync::sink::fault::FaultInjector;
    use nango_sync::sink::postgres::PostgresOptions;
    use nango_sync::sink::{PostgresStore, RecordSink};
    use nango_sync_testkit::conformance::{self, Open, Shared};
    use nango_sync_testkit::stores::{
        postgres_factory as stores, postgres_server_url as server_url, unique_schema,
    };

    async fn connect(options: PostgresOptions) -> PostgresStore {
        PostgresStore::connect_with(&server_url(), options.with_pool_size(4))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"))
    }

    nango_sync_testkit::conformance_tests!(stores(), durable);

    mod shared {
        use super::*;
        nango_sync_testkit::conformance_tests!(Shared(stores()), durable);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_migrations_are_safe() {
        let schema = unique_schema();
        let opens: Vec<_> = (0..6)
            .map(|_| connect(PostgresOptions::new().with_schema(&schema)))
            .collect();
        let mut stores = futures::future::join_all(opens).await;
        let first = stores.remove(0);
        let mut handed = Some(first);
        conformance::commit_advances_cursor(&mut |open: Open, _faults: Arc<FaultInjector>| {
            assert_eq!(open, Open::Fresh);
            let store = handed.take().expect("one store for one check");
            async move { store }
        })
        .await;
        // The others share the one migrated schema: they see what the check wrote.
        let expected = stores[0].streams().await.unwrap();
        assert_eq!(expected.len(), 1, "{expected:?}");
        for store in &stores[1..] {
            assert_eq!(store.streams().await.unwrap(), expected);
        }
    }

    /// Record `id` added at `t` (microseconds), with the cursor `c{t}`.
    fn added_at(id: &str, t: i64) -> nango_sync::Record {
        use nango_sync::{Cursor, LastAction, Metadata, RawJson, Record, Timestamp};
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
                cursor: Cursor(format!("c{t}")),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_wakes_the_subscribers_of_another_store_on_the_same_schema() {
        use nango_sync::sink::Commit;
        use nango_sync::{Cursor, StreamKey};

        let schema = unique_schema();
        let writer = connect(PostgresOptions::new().with_schema(&schema)).await;
        // Another store on the same schema, as another process would open it: only the
        // commit's `NOTIFY` can tell it.
        let reader = connect(PostgresOptions::new().with_schema(&schema)).await;
        let mut commits = reader.subscribe();
        commits.borrow_and_update();
        let stream = StreamKey::new("conformance", "notify", "Ticket");
        let mut cursor = None;
        for t in 1..=3i64 {
            let next = Some(Cursor(format!("c{t}")));
            let record = added_at(&format!("r{t}"), t);
            let commit = Commit::new(stream.clone(), cursor.clone(), next.clone(), vec![record]);
            let seq = writer.commit(commit).await.unwrap().seq;
            cursor = next;
            nango_sync_testkit::eventually(std::time::Duration::from_secs(10), || {
                let seen = *commits.borrow_and_update();
                async move {
                    match seen {
                        s if s >= seq => Ok(()),
                        s => Err(format!("the other store's signal is at {s}, not {seq}")),
                    }
                }
            })
            .await;
        }
    }

    /// Record `id` at `t` (microseconds) with the given action and cursor `c{t}`.
    fn version_at(id: &str, t: i64, action: nango_sync::LastAction) -> nango_sync::Record {
        let mut record = added_at(id, t);
        record.meta.last_action = action;
        record
    }

    #[tokio::test]
    async fn the_records_tables_fillfactor_is_set_when_asked_and_kept_otherwise() {
        use nango_sync::sink::Commit;
        use nango_sync::{Cursor, StreamKey};

        let schema = unique_schema();
        let created = connect(PostgresOptions::new().with_schema(&schema)).await;
        assert_eq!(
            created.records_fillfactor().await.unwrap(),
            50,
            "the default"
        );

        let full = connect(
            PostgresOptions::new()
                .with_schema(&schema)
                .with_fillfactor(100),
        )
        .await;
        assert_eq!(full.records_fillfactor().await.unwrap(), 100);
        // The store writes and reads as before.
        let stream = StreamKey::new("conformance", "fillfactor", "Ticket");
        let page = vec![added_at("f1", 1), added_at("f2", 1)];
        let out = full
            .commit(Commit::new(
                stream.clone(),
                None,
                Some(Cursor("c1".into())),
                page,
            ))
            .await
            .unwrap();
        assert_eq!(out.counts.added, 2, "{out:?}");
        assert!(created.get(&stream, "f2").await.unwrap().is_some());

        // A store opened without the option leaves the table's as it is.
        let again = connect(PostgresOptions::new().with_schema(&schema)).await;
        assert_eq!(again.records_fillfactor().await.unwrap(), 100);

        // Out of PostgreSQL's range, or on a read-only store: refused before connecting.
        for (options, want) in [
            (PostgresOptions::new().with_fillfactor(9), "from 10 to 100"),
            (
                PostgresOptions::new().with_fillfactor(101),
                "from 10 to 100",
            ),
            (
                PostgresOptions::new()
                    .with_read_only(true)
                    .with_fillfactor(100),
                "read-only",
            ),
        ] {
            let e = PostgresStore::connect_with(&server_url(), options.with_schema(&schema))
                .await
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        assert_eq!(again.records_fillfactor().await.unwrap(), 100);

        // As a parameter of a store URL, beside `schema`.
        let sep = if server_url().contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}fillfactor=80&schema={schema}", server_url());
        nango_sync::sink::open(&url).await.unwrap();
        assert_eq!(again.records_fillfactor().await.unwrap(), 80);
        let bad = format!("{}{sep}schema={schema}&fillfactor=most", server_url());
        let Err(e) = nango_sync::sink::open(&bad).await else {
            panic!("a fillfactor that is no number is refused");
        };
        assert!(
            e.to_string()
                .contains("fillfactor must be a number from 10 to 100, not \"most\""),
            "{e}"
        );
        assert_eq!(again.records_fillfactor().await.unwrap(), 80);
    }

    /// Tell `store` of `page` until it starts a read ahead of it. A read is made only
    /// with an idle connection at that moment (`PrefetchStats::not_made` counts the
    /// others), and on a busy machine the connection of the commit before can still be
    /// on its way back to the pool.
    async fn tell_until_read(
        store: &PostgresStore,
        stream: &nango_sync::StreamKey,
        page: &[nango_sync::Record],
    ) {
        for _ in 0..500 {
            let before = store.prefetch_stats().not_made;
            store.prefetch(stream, page);
            if store.prefetch_stats().not_made == before {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no read ahead started in 5 s: the store's pool never had an idle connection");
    }

    /// Commit `held` while another session holds its stream's row, and tell the store
    /// of the page `next` meanwhile: the read ahead of `next` sees the stream before
    /// `held` commits (unless the machine takes longer than 300 ms to start it).
    async fn commit_reading_ahead_while_held(
        pool: &sqlx::PgPool,
        store: &Arc<PostgresStore>,
        held: nango_sync::sink::Commit,
        next: &[nango_sync::Record],
    ) -> nango_sync::sink::CommitOutcome {
        let stream = held.stream.clone();
        let mut holder = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM \"{}\".streams FOR UPDATE",
            store.schema()
        )))
        .execute(&mut *holder)
        .await
        .unwrap();
        let committing = tokio::spawn({
            let store = store.clone();
            async move { store.commit(held).await }
        });
        tell_until_read(store, &stream, next).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        holder.rollback().await.unwrap();
        committing.await.unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_takes_its_stored_versions_from_a_prefetch_only_while_it_is_good() {
        use nango_sync::LastAction::Updated;
        use nango_sync::sink::Commit;
        use nango_sync::sink::PrefetchStats;
        use nango_sync::{Cursor, Record, StreamKey};

        let schema = unique_schema();
        let store = Arc::new(connect(PostgresOptions::new().with_schema(&schema)).await);
        let other = connect(PostgresOptions::new().with_schema(&schema)).await;
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        let stream = StreamKey::new("conformance", "prefetch", "Ticket");
        let commit = |from: u32, to: u32, records| {
            Commit::new(
                stream.clone(),
                Some(Cursor(format!("c{from}"))).filter(|_| from > 0),
                Some(Cursor(format!("c{to}"))),
                records,
            )
        };
        let stats = |s: PrefetchStats| (s.used, s.not_used);

        store
            .commit(commit(0, 1, vec![added_at("r1", 1), added_at("r2", 1)]))
            .await
            .unwrap();
        assert_eq!(stats(store.prefetch_stats()), (0, 0), "no prefetch yet");

        // Read ahead after the stream's last commit: every version read is current.
        let p2 = vec![version_at("r2", 2, Updated), added_at("r3", 2)];
        tell_until_read(&store, &stream, &p2).await;
        let out = store.commit(commit(1, 2, p2)).await.unwrap();
        assert_eq!((out.counts.added, out.counts.updated), (1, 1), "{out:?}");
        assert_eq!(stats(store.prefetch_stats()), (1, 0));

        // Read ahead while the commit before is held up (another session holds the
        // stream's row): the read sees the stream before that commit, which writes r3.
        // The next commit takes r1's version from the read and reads r3 again.
        let p4 = vec![
            version_at("r3", 4, Updated),
            version_at("r1", 4, Updated),
            added_at("r9", 4),
        ];
        let p3 = commit(2, 3, vec![version_at("r3", 3, Updated)]);
        let out = commit_reading_ahead_while_held(&pool, &store, p3, &p4).await;
        assert_eq!(out.counts.updated, 1, "{out:?}");
        let out = store.commit(commit(3, 4, p4)).await.unwrap();
        assert_eq!(
            (out.counts.added, out.counts.updated, out.counts.stale),
            (1, 2, 0),
            "{out:?}"
        );
        assert_eq!(stats(store.prefetch_stats()), (2, 0));

        // Another store commits to the stream between the read and the commit: the
        // read is not used, and the newer version the other store wrote wins.
        let p5 = vec![version_at("r1", 5, Updated)];
        tell_until_read(&store, &stream, &p5).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let out = other
            .commit(commit(4, 4, vec![version_at("r1", 50, Updated)]))
            .await
            .unwrap();
        assert_eq!(out.counts.updated, 1, "{out:?}");
        let out = store.commit(commit(4, 5, p5)).await.unwrap();
        assert_eq!((out.counts.updated, out.counts.stale), (0, 1), "{out:?}");
        assert_eq!(stats(store.prefetch_stats()), (2, 1));
        let r1 = store.get(&stream, "r1").await.unwrap().unwrap();
        assert_eq!(r1.meta.last_modified_at.as_micros(), 50);

        // A prefetch of other ids than the commit's is not used, and stays.
        tell_until_read(&store, &stream, &[added_at("r7", 6)]).await;
        let out = store
            .commit(commit(5, 6, vec![version_at("r2", 6, Updated)]))
            .await
            .unwrap();
        assert_eq!(out.counts.updated, 1, "{out:?}");
        let out = store
            .commit(commit(6, 7, vec![added_at("r7", 6)]))
            .await
            .unwrap();
        assert_eq!(out.counts.added, 1, "{out:?}");
        assert_eq!(stats(store.prefetch_stats()), (3, 1));

        // As the engine does: each page told of while the one before commits, each
        // page repeating an id of the one before.
        let pages: Vec<Vec<Record>> = (8..13)
            .map(|k| {
                vec![
                    version_at(&format!("p{}", k - 1), k, Updated),
                    added_at(&format!("p{k}"), k),
                ]
            })
            .collect();
        let before = store.prefetch_stats();
        store.prefetch(&stream, &pages[0]);
        for (i, page) in pages.iter().enumerate() {
            if let Some(next) = pages.get(i + 1) {
                store.prefetch(&stream, next);
            }
            let k = i as u32 + 8;
            let out = store.commit(commit(k - 1, k, page.clone())).await.unwrap();
            let updated = u64::from(i > 0);
            assert_eq!(
                (out.counts.added, out.counts.updated),
                (2 - updated, updated),
                "page {k}: {out:?}"
            );
        }
        // Every read made is used. A read is not made when the pool has no idle
        // connection at that moment (the connection of the commit before can still be
        // on its way back on a busy machine): that page's commit reads itself.
        let after = store.prefetch_stats();
        assert_eq!(after.not_used, before.not_used, "{after:?}");
        assert_eq!(
            (after.used - before.used) + (after.not_made - before.not_made),
            5,
            "{after:?}"
        );

        // Outside a tokio runtime the hint starts nothing (and does not panic).
        let hinted = vec![version_at("r1", 60, Updated)];
        std::thread::scope(|scope| {
            scope
                .spawn(|| store.prefetch(&stream, &hinted))
                .join()
                .expect("the hint returns")
        });
        let out = store.commit(commit(12, 13, hinted)).await.unwrap();
        assert_eq!(out.counts.updated, 1, "{out:?}");
        let hinted_outside = store.prefetch_stats();
        assert_eq!(
            (
                hinted_outside.used,
                hinted_outside.not_used,
                hinted_outside.not_made
            ),
            (after.used, after.not_used, after.not_made + 1),
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_ahead_on_a_pool_of_one_connection_neither_deadlock_nor_change_commits() {
        // The read ahead takes the only idle connection; the commit waits for it to
        // come back, never the other way round.
        let store = PostgresStore::connect_with(
            &server_url(),
            PostgresOptions::new()
                .with_schema(unique_schema())
                .with_pool_size(1),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"));
        let mut handed = Some(store);
        let mut factory = |open: Open, _faults: Arc<FaultInjector>| {
            assert_eq!(open, Open::Fresh);
            let store = handed.take().expect("one store for one check");
            async move { store }
        };
        let check = conformance::pages_told_ahead_commit_the_same(&mut factory);
        tokio::time::timeout(std::time::Duration::from_secs(60), check)
            .await
            .expect("the commits finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prefetch_read_before_a_sweep_is_not_used() {
        use nango_sync::LastAction::Updated;
        use nango_sync::sink::{Commit, FullRead, read_all};
        use nango_sync::{Cursor, StreamKey};

        // The same commits on a store told of the pages ahead and on one that is not.
        let told = Arc::new(connect(PostgresOptions::new().with_schema(unique_schema())).await);
        let plain = connect(PostgresOptions::new().with_schema(unique_schema())).await;
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        let stream = StreamKey::new("conformance", "prefetch", "Ticket");
        let commit = |from: u32, to: u32, records, full: Option<(u64, bool)>| {
            let mut c = Commit::new(
                stream.clone(),
                Some(Cursor(format!("c{from}"))).filter(|_| from > 0),
                Some(Cursor(format!("c{to}"))),
                records,
            );
            c.full_read = full.map(|(generation, complete)| FullRead {
                generation,
                complete,
            });
            c
        };
        let both = async |c: Commit| {
            let expected = plain.commit(c.clone()).await.unwrap();
            (expected, c)
        };
        let (_, first) = both(commit(
            0,
            1,
            vec![added_at("s1", 1), added_at("s2", 1), added_at("s3", 1)],
            None,
        ))
        .await;
        told.commit(first).await.unwrap();
        let (_, f1) = both(commit(1, 2, vec![added_at("s1", 1)], Some((1, false)))).await;
        told.commit(f1).await.unwrap();

        // The completing page sweeps s3, which the next page brings back; that page's
        // versions are read ahead while the sweep waits for the stream's row.
        let (swept, f2) = both(commit(2, 3, vec![added_at("s2", 1)], Some((1, true)))).await;
        assert_eq!(swept.swept, 1, "{swept:?}");
        let next = vec![version_at("s3", 5, Updated)];
        assert_eq!(
            commit_reading_ahead_while_held(&pool, &told, f2, &next).await,
            swept
        );
        let (expected, last) = both(commit(3, 4, next, None)).await;
        assert_eq!(told.commit(last).await.unwrap(), expected);
        let stats = told.prefetch_stats();
        assert_eq!((stats.used, stats.not_used), (0, 1), "{stats:?}");
        assert_eq!(
            read_all(&*told, &stream, true).await.unwrap(),
            read_all(&plain, &stream, true).await.unwrap()
        );
    }

    /// The stream's kept count of live records stamped with a generation, and the count
    /// of them in `records`.
    async fn seen_counts(pool: &sqlx::PgPool, schema: &str) -> (Option<(i64, i64)>, i64) {
        let (generation, count, actual): (Option<i64>, Option<i64>, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT s.seen_live_generation, s.seen_live_count, \
                   (SELECT count(*) FROM \"{schema}\".records r WHERE r.stream_id = s.stream_id \
                      AND r.seen_generation = s.seen_live_generation AND NOT r.deleted) \
                 FROM \"{schema}\".streams s"
            )))
            .fetch_one(pool)
            .await
            .unwrap();
        (generation.zip(count), actual)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_scans_only_when_the_count_of_seen_records_falls_short() {
        use nango_sync::sink::{Commit, FullRead};
        use nango_sync::{Cursor, Record, StreamKey};

        let schema = unique_schema();
        let store = connect(PostgresOptions::new().with_schema(&schema)).await;
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        let stream = StreamKey::new("conformance", "seen", "Ticket");
        let mut cursor: Option<Cursor> = None;
        let mut t = 10;
        let mut page = async |ids: &[&str], generation: u64, complete: bool| -> u64 {
            t += 1;
            let records = ids.iter().map(|id| added_at(id, t)).collect();
            let next = Some(Cursor(format!("c{t}")));
            let mut c = Commit::new(stream.clone(), cursor.clone(), next.clone(), records);
            c.full_read = Some(FullRead {
                generation,
                complete,
            });
            let swept = store.commit(c).await.unwrap().swept;
            cursor = next;
            let (kept, actual) = seen_counts(&pool, &schema).await;
            if let Some((_, count)) = kept {
                assert_eq!(count, actual, "the kept count is exact: {kept:?} at {t}");
            }
            swept
        };

        page(&["a", "b"], 1, false).await;
        // A row written behind the store's back, which its counts do not know of, shows
        // whether a sweep scans: a scan would mark it deleted, the count's shortcut does
        // not see it. It is removed again before the store's counts matter.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".records (stream_id, id, payload, first_seen_at, \
               last_modified_at, last_action, cursor, deleted, seq, seen_generation) \
             SELECT stream_id, 'behind', '{{}}', 0, 0, 1, 'c0', false, 0, 0 FROM \"{schema}\".streams"
        )))
        .execute(&pool)
        .await
        .unwrap();
        // A first sync: counted from 0, and its completing commit does not scan.
        assert_eq!(page(&["c"], 1, true).await, 0);
        assert_eq!(seen_counts(&pool, &schema).await.0, Some((1, 3)));
        assert!(
            !store
                .get(&stream, "behind")
                .await
                .unwrap()
                .unwrap()
                .is_deleted()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM \"{schema}\".records WHERE id = 'behind'"
        )))
        .execute(&pool)
        .await
        .unwrap();
        // A re-read that misses "b": the count falls short, the sweep scans and marks
        // "b" deleted, and the count is set from the scan.
        assert_eq!(page(&["a", "c"], 2, true).await, 1);
        assert!(store.get(&stream, "b").await.unwrap().unwrap().is_deleted());
        assert_eq!(seen_counts(&pool, &schema).await, (Some((2, 2)), 2));
        // A re-read that sees both: no scan needed, nothing swept.
        assert_eq!(page(&["a"], 3, false).await, 0);
        assert_eq!(page(&["c"], 3, true).await, 0);
        assert_eq!(seen_counts(&pool, &schema).await, (Some((3, 2)), 2));
        // A re-read that sees both again unchanged (seen marks, no write) counts them,
        // page by page.
        for (id, complete, counted) in [("a", false, 1), ("c", true, 2)] {
            let r = store.get(&stream, id).await.unwrap().unwrap();
            let again = Record {
                id: r.id,
                payload: r.payload,
                payload_is_bare: false,
                meta: r.meta,
            };
            let at = store.stream_state(&stream).await.unwrap().cursor;
            let mut c = Commit::new(stream.clone(), at.clone(), at, vec![again]);
            c.full_read = Some(FullRead {
                generation: 4,
                complete,
            });
            let out = store.commit(c).await.unwrap();
            assert_eq!((out.counts.unchanged, out.swept), (1, 0));
            assert_eq!(
                seen_counts(&pool, &schema).await,
                (Some((4, counted)), counted)
            );
        }
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_url_builds_a_postgres_store() {
        let sink = nango_sync::sink::open(&server_url()).await.unwrap();
        assert_eq!(sink.backend(), "postgres");
        assert!(sink.streams().await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_table_is_reported_damaged() {
        let schema = unique_schema();
        let store = connect(PostgresOptions::new().with_schema(&schema)).await;
        let stream = nango_sync::StreamKey::new("conformance", "damaged", "Ticket");
        store.set_upstream_error(&stream, Some("x")).await.unwrap();
        drop(store);
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE \"{schema}\".records"
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let err =
            PostgresStore::connect_with(&server_url(), PostgresOptions::new().with_schema(&schema))
                .await
                .unwrap_err();
        assert!(err.is_damaged_store(), "{err:?}");
        assert!(err.to_string().contains("records"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_open_reads_and_refuses_writes() {
        let schema = unique_schema();
        let store = connect(PostgresOptions::new().with_schema(&schema)).await;
        let stream = nango_sync::StreamKey::new("conformance", "read-only", "Ticket");
        store
            .set_upstream_error(&stream, Some("before"))
            .await
            .unwrap();
        let before = store.streams().await.unwrap();
        let ro = connect(
            PostgresOptions::new()
                .with_schema(&schema)
                .with_read_only(true),
        )
        .await;
        assert_eq!(ro.streams().await.unwrap(), before);
        let err = ro
            .set_upstream_error(&before[0].stream, Some("x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        // A schema that does not exist is not created by a read-only open.
        let missing = unique_schema();
        let err = PostgresStore::connect_with(
            &server_url(),
            PostgresOptions::new()
                .with_schema(&missing)
                .with_read_only(true),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("there is no schema"), "{err}");
    }

    #[tokio::test]
    async fn bad_schema_names_are_rejected() {
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a b",
            "x\"; drop",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            let err =
                PostgresStore::connect_with(&server_url(), PostgresOptions::new().with_schema(bad))
                    .await
                    .unwrap_err();
            assert!(err.to_string().contains("schema"), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn dead_server_error_hides_the_password() {
        // Port 1 on localhost: nothing listens there.
        for url in [
            "postgres://user:s3cret-pw@127.0.0.1:1/db?connect_timeout=2",
            "postgres://user@127.0.0.1:1/db?connect_timeout=2&password=s3cret-pw",
        ] {
            let err = PostgresStore::connect_with(
                url,
                PostgresOptions::new().with_acquire_timeout(std::time::Duration::from_secs(3)),
            )
            .await
            .unwrap_err();
            let msg = format!("{err} / {err:?}");
            assert!(!msg.contains("s3cret-pw"), "password leaked: {msg}");
            assert!(
                msg.contains("127.0.0.1:1"),
                "the error names the server: {msg}"
            );
            assert!(
                err.is_retryable(),
                "a refused connection is retryable: {msg}"
            );
        }
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let url = server_url();
        let store = connect(PostgresOptions::new().with_schema(unique_schema())).await;
        let debug = format!("{store:?}");
        assert!(debug.contains("PostgresStore"), "{debug}");
        if let Some(pw) = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .and_then(|(u, _)| u.split_once(':'))
        {
            assert!(!debug.contains(pw.1), "password in Debug: {debug}");
        }
        let err = PostgresStore::connect_with(
            "postgres://u:hunter2@127.0.0.1:notaport/db",
            PostgresOptions::new(),
        )
        .await
        .unwrap_err();
        let msg = format!("{err} / {err:?}");
        assert!(
            !msg.contains("hunter2"),
            "password in an invalid-URL error: {msg}"
        );
    }
}
