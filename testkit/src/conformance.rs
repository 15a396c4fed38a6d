//! The store conformance suite: one list of checks that every [`RecordSink`] runs
//! unchanged.
//!
//! The in-memory store is the reference implementation. Each check writes a history to
//! the store under test and, commit by commit, to a [`MemoryStore`]: every commit must
//! have the same outcome on both (the same sequence number, counts and sweep, or the
//! same cursor conflict), and at the end of the check both stores must hold the same
//! thing: the same statuses (state, totals, record counts, last run, upstream error)
//! and the same exports (every record, tombstones included, as its export line, with
//! its sequence number). A commit the store under test fails (an injected fault) is not
//! given to the reference, so the comparison also proves it left nothing behind. On top
//! of that, each check asserts what the history must produce, so the reference itself
//! is checked.
//!
//! Each check is a public async function taking a [`StoreFactory`], which makes the
//! stores it needs: a new one ([`Open::Fresh`]), and for the checks of durable stores
//! the same one opened again ([`Open::Reopen`]). A factory passes the check's
//! [`FaultInjector`] to the store's options (`with_faults`), so checks can fail a
//! commit between its steps ([`FaultPoint`]). [`Shared`] runs the checks through the
//! shared handle ([`SharedSink`]) instead.
//!
//! [`conformance_tests!`](crate::conformance_tests) generates one `#[tokio::test]` per
//! check, from the same list [`run_all`] runs. The library's stores have factories in
//! [`stores`](crate::stores) ([`sqlite_factory`](crate::stores::sqlite_factory), ...); a
//! store of your own takes a closure:
//!
//! ```no_run
//! mod my_store {
//!     use std::sync::Arc;
//!
//!     use nango_sync::sink::fault::FaultInjector;
//!     use nango_sync::sink::{MemoryOptions, MemoryStore};
//!     use nango_sync_testkit::conformance::{Open, Shared, StoreFactory};
//!
//!     /// A new store for each check (this one is not durable: no reopen).
//!     fn stores() -> impl StoreFactory<Store = MemoryStore> {
//!         |open: Open, faults: Arc<FaultInjector>| {
//!             assert_eq!(open, Open::Fresh);
//!             async move { MemoryStore::with_options(MemoryOptions::new().with_faults(faults)) }
//!         }
//!     }
//!
//!     nango_sync_testkit::conformance_tests!(stores());
//!
//!     mod shared {
//!         use super::*;
//!         nango_sync_testkit::conformance_tests!(Shared(stores()));
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! A durable store adds `durable` (`conformance_tests!(stores(), durable)`) and reopens
//! the last fresh store when asked for [`Open::Reopen`].
//!
//! Every check panics with a message naming the backend and what differed.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};

use nango_sync::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, Consumer, FeedPosition, ListAcross, RecordCounts,
    StreamFilter,
};
use nango_sync::merge::Counts;
use nango_sync::record::{Cursor, LastAction, Metadata, RawJson, Record, StoredRecord, StreamKey};
use nango_sync::sink::fault::{FaultInjector, FaultPoint};
use nango_sync::sink::outbox::{
    Claim, ClaimRequest, NewOutboxItem, OutboxCounts, OutboxError, OutboxItem, OutboxQuery,
    OutboxState, Settlement,
};
use nango_sync::sink::{
    Commit, CommitOutcome, DEFAULT_RUN_HISTORY, FullRead, HistoryQuery, ListQuery, MemoryStore,
    RecordSink, RunEntry, RunId, RunOutcome, RunSummary, SharedSink, StreamState, StreamStatus,
    read_all,
};
use nango_sync::time::Timestamp;
use nango_sync::{Error, Result};

/// What a store factory is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// A new, empty store.
    Fresh,
    /// The store the last [`Open::Fresh`] made, opened again (the previous handle has
    /// been dropped). Only asked of durable stores.
    Reopen,
}

/// Makes the stores the checks run on.
///
/// Implemented by closures `FnMut(Open, Arc<FaultInjector>) -> impl Future<Output = S>`.
pub trait StoreFactory {
    /// The store under test.
    type Store: RecordSink;

    /// A store (see [`Open`]) whose commits check `faults` at their [`FaultPoint`]s.
    fn open(&mut self, open: Open, faults: Arc<FaultInjector>)
    -> impl Future<Output = Self::Store>;
}

impl<F, Fut, S> StoreFactory for F
where
    F: FnMut(Open, Arc<FaultInjector>) -> Fut,
    Fut: Future<Output = S>,
    S: RecordSink,
{
    type Store = S;

    fn open(&mut self, open: Open, faults: Arc<FaultInjector>) -> impl Future<Output = S> {
        self(open, faults)
    }
}

/// The stores of a factory, used through the shared handle ([`SharedSink`], the
/// object-safe twin behind an `Arc`).
#[derive(Debug, Clone)]
pub struct Shared<F>(pub F);

impl<F: StoreFactory> StoreFactory for Shared<F> {
    type Store = SharedSink;

    async fn open(&mut self, open: Open, faults: Arc<FaultInjector>) -> SharedSink {
        Arc::new(self.0.open(open, faults).await)
    }
}

/// The store under test and the reference it is compared with: a [`RecordSink`] that
/// gives every commit, run and upstream error to both (reads go to the store under
/// test only).
#[derive(Debug)]
struct Mirrored<S> {
    store: S,
    reference: MemoryStore,
    /// Commits reach both stores in the same order.
    order: tokio::sync::Mutex<()>,
    /// Outbox item ids of the store under test and of the reference (a store may skip
    /// ids: a PostgreSQL sequence is not rolled back).
    outbox_ids: std::sync::Mutex<BTreeMap<u64, u64>>,
}

impl<S: RecordSink> Mirrored<S> {
    /// Check that the store under test holds what the reference holds: the same
    /// statuses, and for every stream the same state and the same records (as export
    /// lines, with their sequence numbers).
    async fn assert_matches_reference(&self) {
        let b = self.store.backend();
        let got = Holdings::read(&self.store).await;
        let want = Holdings::read(&self.reference).await;
        assert_eq!(
            got.statuses, want.statuses,
            "{b}: statuses differ from the reference store's"
        );
        for (stream, want) in &want.streams {
            let got = got.streams.get(stream);
            assert_eq!(
                got,
                Some(want),
                "{b}: {stream:?} differs from the reference store's (state, then export lines with seq)"
            );
        }
        assert_eq!(
            got.streams.len(),
            want.streams.len(),
            "{b}: streams differ from the reference store's"
        );
        assert_eq!(
            got.runs, want.runs,
            "{b}: the run history differs from the reference store's"
        );
        assert_eq!(
            got.feed, want.feed,
            "{b}: the change feed differs from the reference store's (seq, stream, id, kind, export line)"
        );
        assert_eq!(
            got.consumers, want.consumers,
            "{b}: consumers differ from the reference store's"
        );
        // The outbox: every item, its store id replaced by the reference's.
        let got_items: Vec<Value> = outbox_all(&self.store)
            .await
            .iter()
            .map(|item| self.as_reference(item))
            .collect();
        let want_items: Vec<Value> = outbox_all(&self.reference)
            .await
            .iter()
            .map(OutboxItem::to_json)
            .collect();
        assert_eq!(
            got_items, want_items,
            "{b}: the outbox differs from the reference store's"
        );
        assert_eq!(
            self.store.outbox_counts().await.unwrap(),
            self.reference.outbox_counts().await.unwrap(),
            "{b}: outbox counts differ from the reference store's"
        );
    }

    /// `item` of the store under test as JSON, with the reference's id.
    fn as_reference(&self, item: &OutboxItem) -> Value {
        let ids = self.outbox_ids.lock().unwrap();
        let mut v = item.to_json();
        v["id"] = json!(ids.get(&item.id).copied());
        v
    }

    /// `claim` of the store under test, for the reference.
    fn reference_claim(&self, claim: &Claim) -> Claim {
        let ids = self.outbox_ids.lock().unwrap();
        Claim {
            id: ids.get(&claim.id).copied().unwrap_or(u64::MAX),
            ..claim.clone()
        }
    }

    /// Check that an outbox answer of the store under test is the reference's.
    fn assert_same_item(&self, what: &str, got: Option<&OutboxItem>, want: Option<&OutboxItem>) {
        let b = self.store.backend();
        assert_eq!(
            got.map(|i| self.as_reference(i)),
            want.map(OutboxItem::to_json),
            "{b}: {what} differs from the reference store's"
        );
    }

    /// Give the reference the claims the store under test made concurrently (each
    /// with its item), in the store's id order, so that both hold the same thing.
    async fn mirror_claims(&self, mut claims: Vec<(ClaimRequest, OutboxItem)>) {
        let _order = self.order.lock().await;
        claims.sort_by_key(|(_, item)| item.id);
        for (request, got) in claims {
            let want = self.reference.outbox_claim(&request).await.unwrap();
            self.assert_same_item("a concurrent claim", Some(&got), want.as_ref());
        }
    }
}

/// Every outbox item of a store, in id order.
async fn outbox_all<S: RecordSink>(store: &S) -> Vec<OutboxItem> {
    let b = store.backend();
    let mut out = Vec::new();
    let mut q = OutboxQuery::first(100);
    loop {
        let batch = store
            .outbox_list(&q)
            .await
            .unwrap_or_else(|e| panic!("{b}: outbox_list failed: {e}"));
        let done = batch.len() < q.limit;
        if let Some(last) = batch.last() {
            q = q.after(last.id);
        }
        out.extend(batch);
        if done {
            return out;
        }
    }
}

/// What a store holds, in a form every store gives alike.
#[derive(Debug, PartialEq)]
struct Holdings {
    statuses: Vec<StreamStatus>,
    streams: BTreeMap<StreamKey, (StreamState, Vec<(String, u64)>)>,
    /// Every run of the history, newest first.
    runs: Vec<RunEntry>,
    /// The whole change feed, and the consumers.
    feed: Vec<FeedEntry>,
    consumers: Vec<Consumer>,
}

/// A change feed entry compared across stores: the record as its export line.
type FeedEntry = (u64, StreamKey, String, ChangeKind, String);

impl Holdings {
    async fn read<S: RecordSink>(store: &S) -> Holdings {
        let b = store.backend();
        let statuses = statuses(store).await;
        let mut streams = BTreeMap::new();
        for s in &statuses {
            let records = read_all(
                store as &dyn nango_sync::sink::DynRecordSink,
                &s.stream,
                true,
            )
            .await
            .unwrap_or_else(|e| panic!("{b}: list failed: {e}"));
            let lines = records
                .iter()
                .map(|r| (r.to_export_line(), r.seq))
                .collect();
            streams.insert(s.stream.clone(), (s.state.clone(), lines));
            let counts = store
                .count(&s.stream)
                .await
                .unwrap_or_else(|e| panic!("{b}: count failed: {e}"));
            assert_eq!(
                (counts.live, counts.deleted),
                (s.live_records, s.deleted_records),
                "{b}: count({}) differs from its status",
                s.stream
            );
        }
        let feed = read_feed(store, FeedPosition::START, &StreamFilter::all(), 1000)
            .await
            .iter()
            .map(|c| {
                (
                    c.seq(),
                    c.stream.clone(),
                    c.id().to_owned(),
                    c.kind,
                    c.record.to_export_line(),
                )
            })
            .collect();
        let consumers = store
            .consumers()
            .await
            .unwrap_or_else(|e| panic!("{b}: consumers failed: {e}"));
        let runs = store
            .run_history(&HistoryQuery::all(usize::MAX))
            .await
            .unwrap_or_else(|e| panic!("{b}: run_history failed: {e}"));
        Holdings {
            statuses,
            streams,
            runs,
            feed,
            consumers,
        }
    }
}

impl<S: RecordSink> RecordSink for Mirrored<S> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    async fn stream_state(&self, stream: &StreamKey) -> Result<StreamState> {
        self.store.stream_state(stream).await
    }

    fn prefetch(&self, stream: &StreamKey, records: &[Record]) {
        self.store.prefetch(stream, records);
    }

    async fn flush(&self) -> Result<()> {
        self.store.flush().await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let _order = self.order.lock().await;
        let b = self.store.backend();
        let got = self.store.commit(commit.clone()).await;
        match &got {
            Ok(outcome) => {
                let want = self.reference.commit(commit).await.unwrap_or_else(|e| {
                    panic!("{b}: a commit the store accepted fails on the reference store: {e}")
                });
                assert_eq!(
                    outcome, &want,
                    "{b}: the commit's outcome differs from the reference store's"
                );
            }
            Err(e @ Error::CursorConflict { .. }) => match self.reference.commit(commit).await {
                Err(want @ Error::CursorConflict { .. }) => assert_eq!(
                    e.to_string(),
                    want.to_string(),
                    "{b}: the cursor conflict differs from the reference store's"
                ),
                other => panic!(
                    "{b}: the store reports a cursor conflict ({e}), the reference store {other:?}"
                ),
            },
            // Any other failure (an injected fault) must leave nothing behind: the
            // reference does not take the commit, and the comparison at the end of the
            // check finds whatever the store kept of it.
            Err(_) => {}
        }
        got
    }

    async fn get(&self, stream: &StreamKey, id: &str) -> Result<Option<StoredRecord>> {
        self.store.get(stream, id).await
    }

    async fn list(&self, stream: &StreamKey, query: &ListQuery) -> Result<Vec<StoredRecord>> {
        self.store.list(stream, query).await
    }

    async fn set_upstream_error(&self, stream: &StreamKey, error: Option<&str>) -> Result<()> {
        let _order = self.order.lock().await;
        self.store.set_upstream_error(stream, error).await?;
        self.reference
            .set_upstream_error(stream, error)
            .await
            .expect("the memory store records upstream errors");
        Ok(())
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>> {
        self.store.streams().await
    }

    async fn record_run(&self, stream: &StreamKey, run: &RunSummary, keep: usize) -> Result<()> {
        let _order = self.order.lock().await;
        self.store.record_run(stream, run, keep).await?;
        self.reference
            .record_run(stream, run, keep)
            .await
            .expect("the memory store records runs");
        Ok(())
    }

    async fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        self.store.last_run(stream).await
    }

    async fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        self.store.run_history(query).await
    }

    async fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        self.store.stream_status(stream).await
    }

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        self.store.changes(query).await
    }

    async fn last_seq(&self) -> Result<u64> {
        self.store.last_seq().await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.subscribe()
    }

    async fn consumer_position(&self, consumer: &str) -> Result<FeedPosition> {
        self.store.consumer_position(consumer).await
    }

    async fn ack(&self, consumer: &str, position: &FeedPosition) -> Result<FeedPosition> {
        let _order = self.order.lock().await;
        let b = self.store.backend();
        let got = self.store.ack(consumer, position).await;
        let want = self.reference.ack(consumer, position).await;
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{b}: ack differs from the reference store's"),
            (Err(g), Err(w)) => assert_eq!(
                g.to_string().replace(b, "memory"),
                w.to_string(),
                "{b}: a refused ack differs from the reference store's"
            ),
            _ => panic!("{b}: ack gives {got:?}, the reference store {want:?}"),
        }
        got
    }

    async fn consumers(&self) -> Result<Vec<Consumer>> {
        self.store.consumers().await
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<bool> {
        let _order = self.order.lock().await;
        let b = self.store.backend();
        let got = self.store.remove_consumer(consumer).await?;
        let want = self
            .reference
            .remove_consumer(consumer)
            .await
            .expect("the memory store removes consumers");
        assert_eq!(
            got, want,
            "{b}: remove_consumer differs from the reference's"
        );
        Ok(got)
    }

    async fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        self.store.count(stream).await
    }

    // The outbox: every change reaches both stores (ids mapped), reads only the store
    // under test.

    async fn outbox_enqueue(&self, item: NewOutboxItem) -> Result<OutboxItem> {
        let _order = self.order.lock().await;
        let got = self.store.outbox_enqueue(item.clone()).await;
        let want = self.reference.outbox_enqueue(item).await;
        match (&got, &want) {
            (Ok(g), Ok(w)) => {
                self.outbox_ids.lock().unwrap().insert(g.id, w.id);
                self.assert_same_item("an enqueued item", Some(g), Some(w));
            }
            (Err(g), Err(w)) => assert_eq!(
                g.to_string(),
                w.to_string(),
                "{}: a refused enqueue differs from the reference store's",
                self.store.backend()
            ),
            (g, w) => panic!(
                "{}: enqueue gave {g:?}, the reference store {w:?}",
                self.store.backend()
            ),
        }
        got
    }

    async fn outbox_claim(&self, request: &ClaimRequest) -> Result<Option<OutboxItem>> {
        let _order = self.order.lock().await;
        let got = self.store.outbox_claim(request).await?;
        let want = self.reference.outbox_claim(request).await.unwrap();
        self.assert_same_item("a claim", got.as_ref(), want.as_ref());
        Ok(got)
    }

    async fn outbox_extend(&self, claim: &Claim, until: Timestamp, now: Timestamp) -> Result<bool> {
        let _order = self.order.lock().await;
        let got = self.store.outbox_extend(claim, until, now).await?;
        let want = self
            .reference
            .outbox_extend(&self.reference_claim(claim), until, now)
            .await
            .unwrap();
        assert_eq!(
            got,
            want,
            "{}: a lease extension differs from the reference store's",
            self.store.backend()
        );
        Ok(got)
    }

    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        let _order = self.order.lock().await;
        let got = self
            .store
            .outbox_settle(claim, settlement.clone(), now)
            .await?;
        let want = self
            .reference
            .outbox_settle(&self.reference_claim(claim), settlement, now)
            .await
            .unwrap();
        assert_eq!(
            got,
            want,
            "{}: a settlement differs from the reference store's",
            self.store.backend()
        );
        Ok(got)
    }

    async fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        self.store.outbox_get(id).await
    }

    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        self.store.outbox_list(query).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.store.outbox_counts().await
    }

    async fn outbox_purge(&self, finished_before: Timestamp) -> Result<u64> {
        let _order = self.order.lock().await;
        let got = self.store.outbox_purge(finished_before).await?;
        let want = self.reference.outbox_purge(finished_before).await.unwrap();
        assert_eq!(
            got,
            want,
            "{}: a purge differs from the reference store's",
            self.store.backend()
        );
        Ok(got)
    }
}

/// One check's store: the store under test mirrored to the reference, and the fault
/// injector the store was opened with. Dropping it without
/// [`Subject::finish`] panics, so no check forgets the comparison.
struct Subject<S: RecordSink> {
    mirrored: Option<Mirrored<S>>,
    faults: Arc<FaultInjector>,
}

impl<S: RecordSink> Subject<S> {
    async fn fresh<F: StoreFactory<Store = S>>(stores: &mut F) -> Self {
        let faults = FaultInjector::new();
        let store = stores.open(Open::Fresh, faults.clone()).await;
        Subject {
            mirrored: Some(Mirrored {
                store,
                reference: MemoryStore::new(),
                order: tokio::sync::Mutex::new(()),
                outbox_ids: std::sync::Mutex::default(),
            }),
            faults,
        }
    }

    /// The store, mirrored.
    fn store(&self) -> &Mirrored<S> {
        self.mirrored
            .as_ref()
            .expect("a subject holds its store until it finishes")
    }

    /// Close the store under test and open it again (the reference keeps its state).
    async fn reopen<F: StoreFactory<Store = S>>(&mut self, stores: &mut F) {
        let old = self.mirrored.take().expect("a store to reopen");
        let Mirrored {
            store,
            reference,
            outbox_ids,
            ..
        } = old;
        drop(store);
        let store = stores.open(Open::Reopen, self.faults.clone()).await;
        self.mirrored = Some(Mirrored {
            store,
            reference,
            order: tokio::sync::Mutex::new(()),
            outbox_ids,
        });
    }

    /// Compare the store with the reference, and end the check.
    async fn finish(mut self) {
        let mirrored = self.mirrored.take().expect("finish once");
        mirrored.assert_matches_reference().await;
    }
}

impl<S: RecordSink> Drop for Subject<S> {
    fn drop(&mut self) {
        if self.mirrored.is_some() && !std::thread::panicking() {
            panic!("a conformance check ended without comparing its store with the reference");
        }
    }
}

impl<S: RecordSink> fmt::Debug for Subject<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("mirrored", &self.mirrored)
            .finish_non_exhaustive()
    }
}

/// Run every check of the list, in order, on stores of `stores`; with `durable`, also
/// the checks of durable stores.
pub async fn run_all<F: StoreFactory>(stores: &mut F, durable: bool) {
    crate::conformance_tests!(@list run (stores, durable));
}

/// Generates one `#[tokio::test]` per conformance check, from the suite's one list of
/// checks (the list [`run_all`](crate::conformance::run_all) runs).
///
/// `conformance_tests!(FACTORY)` generates the checks every store runs;
/// `conformance_tests!(FACTORY, durable)` also the checks of durable stores
/// ([`reopen_keeps_everything`](crate::conformance::reopen_keeps_everything),
/// [`consumer_positions_survive_reopen`](crate::conformance::consumer_positions_survive_reopen)).
/// `FACTORY` is an expression giving a
/// [`StoreFactory`](crate::conformance::StoreFactory), evaluated once per test;
/// the tests run on tokio's multi-thread runtime, so the calling crate depends on
/// `tokio` with its `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@list tests ($factory, transient));
    };
    ($factory:expr, durable) => {
        $crate::conformance_tests!(@list tests ($factory, durable));
    };
    // The list: the checks every store runs, then those of durable stores.
    (@list $mode:ident $args:tt) => {
        $crate::conformance_tests!(@$mode $args [
            fresh_stream_has_no_cursor,
            commit_advances_cursor,
            replayed_commit_is_idempotent,
            cursor_conflict_writes_nothing,
            injected_failure_leaves_nothing,
            streams_are_isolated,
            large_commit,
            merge_outcomes_are_counted,
            restored_payload_fills_a_pruned_copy,
            full_read_sweeps_unseen_records,
            successive_full_reads_sweep_what_each_did_not_see,
            pages_told_ahead_commit_the_same,
            flush_keeps_every_commit,
            seq_is_monotonic_and_per_record,
            list_pages_in_code_point_order,
            stream_status_is_reported,
            run_and_upstream_error_round_trip,
            // The run history.
            run_history_is_newest_first_and_bounded,
            run_history_lists_every_stream_in_recording_order,
            // (end of the run history)
            reads_during_commit_see_old_or_new,
            hostile_strings_round_trip,
            // The application's side: the change feed, consumers, subscriptions, reads.
            feed_lists_every_change_once,
            feed_pages_inside_a_commit_and_filters,
            feed_sequence_never_goes_back,
            consumers_never_move_back,
            counts_kind_filters_and_typed_reads,
            subscribers_wake_after_each_commit,
            feed_is_gapless_under_concurrent_commits,
            // The outbox.
            outbox_enqueue_get_and_list,
            outbox_claims_leases_and_settlements,
            outbox_lease_runs_out_and_is_delivered_again,
            outbox_concurrent_claims_have_one_owner,
            outbox_purge_removes_finished_items,
        ] [
            reopen_keeps_everything,
            run_history_survives_a_reopen,
            consumer_positions_survive_reopen,
            // The outbox.
            outbox_survives_reopen,
        ]);
    };
    (@tests ($factory:expr, $durability:ident) [$($check:ident),* $(,)?] [$($durable:ident),* $(,)?]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut stores = $factory;
                $crate::conformance::$check(&mut stores).await;
            }
        )*
        $crate::conformance_tests!(@durable $durability ($factory) [$($durable),*]);
    };
    (@durable durable ($factory:expr) [$($check:ident),*]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut stores = $factory;
                $crate::conformance::$check(&mut stores).await;
            }
        )*
    };
    (@durable transient ($factory:expr) [$($check:ident),*]) => {};
    (@run ($stores:expr, $durable:expr) [$($check:ident),* $(,)?] [$($durable_check:ident),* $(,)?]) => {{
        $( $check(&mut *$stores).await; )*
        if $durable {
            $( $durable_check(&mut *$stores).await; )*
        }
    }};
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A stream of the conformance suite.
fn stream(name: &str) -> StreamKey {
    StreamKey::new("conformance", name, "Ticket")
}

fn ts(micros: i64) -> Timestamp {
    // A realistic base (2026) so stores that convert timestamps see ordinary values.
    Timestamp::from_micros(1_790_000_000_000_000 + micros)
}

fn cursor_at(t: i64) -> Cursor {
    Cursor(format!("cur-{t:012}"))
}

/// A record version: `payload` is the JSON payload (without metadata).
fn version(id: &str, t: i64, action: LastAction, payload: Value) -> Record {
    let bare = matches!(&payload, Value::Object(m) if m.len() == 1 && m.contains_key("id"));
    Record {
        id: id.to_string(),
        payload: RawJson::from_trusted(payload.to_string()),
        payload_is_bare: bare,
        meta: Metadata {
            first_seen_at: ts(t),
            last_modified_at: ts(t),
            last_action: action,
            deleted_at: (action == LastAction::Deleted).then(|| ts(t)),
            pruned_at: None,
            cursor: cursor_at(t),
        },
    }
}

fn added(id: &str, t: i64, title: &str) -> Record {
    version(id, t, LastAction::Added, json!({"id": id, "title": title}))
}

fn updated(id: &str, t: i64, title: &str) -> Record {
    version(
        id,
        t,
        LastAction::Updated,
        json!({"id": id, "title": title}),
    )
}

fn deleted_bare(id: &str, t: i64) -> Record {
    version(id, t, LastAction::Deleted, json!({"id": id}))
}

fn deleted_full(id: &str, t: i64, title: &str) -> Record {
    version(
        id,
        t,
        LastAction::Deleted,
        json!({"id": id, "title": title}),
    )
}

/// A pruned version: newer metadata, payload emptied to `{id}`.
fn pruned(id: &str, t: i64) -> Record {
    let mut r = version(id, t, LastAction::Updated, json!({"id": id}));
    r.meta.pruned_at = Some(ts(t + 1));
    r
}

fn backend<S: RecordSink>(store: &S) -> &'static str {
    store.backend()
}

/// A commit of `records` on top of the stream's stored cursor (the cursor moves to the
/// last record's cursor, or stays for an empty page).
async fn page<S: RecordSink>(store: &S, stream: &StreamKey, records: Vec<Record>) -> Commit {
    let state = state(store, stream).await;
    let cursor = records
        .last()
        .map(|r| r.meta.cursor.clone())
        .or_else(|| state.cursor.clone());
    Commit {
        stream: stream.clone(),
        expected_cursor: state.cursor,
        cursor,
        records: records.into(),
        full_read: None,
        now: ts(1_000_000),
        fence: None,
    }
}

async fn state<S: RecordSink>(store: &S, stream: &StreamKey) -> StreamState {
    store
        .stream_state(stream)
        .await
        .unwrap_or_else(|e| panic!("{}: stream_state failed: {e}", backend(store)))
}

async fn commit<S: RecordSink>(store: &S, c: Commit) -> CommitOutcome {
    store
        .commit(c)
        .await
        .unwrap_or_else(|e| panic!("{}: commit failed: {e}", backend(store)))
}

async fn commit_page<S: RecordSink>(
    store: &S,
    stream: &StreamKey,
    records: Vec<Record>,
) -> CommitOutcome {
    let c = page(store, stream, records).await;
    commit(store, c).await
}

async fn get<S: RecordSink>(store: &S, stream: &StreamKey, id: &str) -> Option<StoredRecord> {
    store
        .get(stream, id)
        .await
        .unwrap_or_else(|e| panic!("{}: get({id:?}) failed: {e}", backend(store)))
}

async fn all<S: RecordSink>(
    store: &S,
    stream: &StreamKey,
    include_deleted: bool,
) -> Vec<StoredRecord> {
    read_all(
        store as &dyn nango_sync::sink::DynRecordSink,
        stream,
        include_deleted,
    )
    .await
    .unwrap_or_else(|e| panic!("{}: list failed: {e}", backend(store)))
}

async fn statuses<S: RecordSink>(store: &S) -> Vec<StreamStatus> {
    let mut s = store
        .streams()
        .await
        .unwrap_or_else(|e| panic!("{}: streams failed: {e}", backend(store)));
    s.sort_by(|a, b| a.stream.cmp(&b.stream));
    s
}

async fn status<S: RecordSink>(store: &S, stream: &StreamKey) -> Option<StreamStatus> {
    statuses(store)
        .await
        .into_iter()
        .find(|s| &s.stream == stream)
}

fn counts(added: u64, updated: u64, deleted: u64, unchanged: u64, stale: u64) -> Counts {
    Counts {
        added,
        updated,
        deleted,
        unchanged,
        stale,
    }
}

/// A record compared across stores: the payload as a JSON value (PostgreSQL `jsonb`
/// normalizes the text), everything else exactly.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    payload: Value,
    meta: Metadata,
    seq: u64,
}

impl From<&StoredRecord> for Seen {
    fn from(r: &StoredRecord) -> Self {
        let payload = serde_json::from_str(r.payload.as_str()).unwrap_or_else(|e| {
            panic!(
                "stored payload of {:?} is not JSON ({e}): {}",
                r.id, r.payload
            )
        });
        Seen {
            id: r.id.clone(),
            payload,
            meta: r.meta.clone(),
            seq: r.seq,
        }
    }
}

/// What a commit leaves visible: per stream, its state, status and every record.
#[derive(Debug, PartialEq)]
struct Snapshot {
    streams: Vec<StreamStatus>,
    records: BTreeMap<StreamKey, (StreamState, Vec<Seen>)>,
}

async fn snapshot<S: RecordSink>(store: &S, keys: &[&StreamKey]) -> Snapshot {
    let mut records = BTreeMap::new();
    for k in keys {
        let recs = all(store, k, true).await.iter().map(Seen::from).collect();
        records.insert((*k).clone(), (state(store, k).await, recs));
    }
    Snapshot {
        streams: statuses(store).await,
        records,
    }
}

/// The highest sequence number visible in the store (0 when empty).
async fn max_seq<S: RecordSink>(store: &S) -> u64 {
    let mut max = 0;
    for s in statuses(store).await {
        for r in all(store, &s.stream, true).await {
            max = max.max(r.seq);
        }
    }
    max
}

/// Every change after `since` of the streams `filter` selects, read `limit` at a time
/// through the positions the store gives, checking what every read must hold: at most
/// `limit` changes, each after the read's position and after the one before it, and a
/// next position that never goes back.
async fn read_feed<S: RecordSink>(
    store: &S,
    since: FeedPosition,
    filter: &StreamFilter,
    limit: usize,
) -> Vec<Change> {
    let b = backend(store);
    let mut out: Vec<Change> = Vec::new();
    let mut query = ChangeQuery::since(since)
        .with_filter(filter.clone())
        .with_limit(limit);
    loop {
        let batch = store
            .changes(&query)
            .await
            .unwrap_or_else(|e| panic!("{b}: changes failed: {e}"));
        assert!(
            batch.changes.len() <= limit,
            "{b}: a read of the feed exceeded its limit {limit}"
        );
        assert!(
            batch.next >= query.since,
            "{b}: the next position {} goes back before {}",
            batch.next,
            query.since
        );
        for c in &batch.changes {
            assert!(
                c.is_after(&query.since),
                "{b}: change ({}, {:?}) is not after the read's position {}",
                c.seq(),
                c.id(),
                query.since
            );
            assert!(
                filter.matches(&c.stream),
                "{b}: change of {} outside the filter",
                c.stream
            );
            if let Some(prev) = out.last() {
                assert!(
                    prev.position() < c.position(),
                    "{b}: the feed is out of order: ({}, {:?}) then ({}, {:?})",
                    prev.seq(),
                    prev.id(),
                    c.seq(),
                    c.id()
                );
            }
        }
        let full = batch.changes.len() == limit && limit > 0;
        out.extend(batch.changes);
        if !full {
            return out;
        }
        query.since = batch.next;
    }
}

/// The changes after `since` as `(seq, id, kind)`.
async fn feed_since<S: RecordSink>(store: &S, since: u64) -> Vec<(u64, String, ChangeKind)> {
    read_feed(store, since.into(), &StreamFilter::all(), 1000)
        .await
        .into_iter()
        .map(|c| (c.seq(), c.id().to_owned(), c.kind))
        .collect()
}

fn entry(seq: u64, id: &str, kind: ChangeKind) -> (u64, String, ChangeKind) {
    (seq, id.to_string(), kind)
}

fn assert_seen(backend: &str, what: &str, actual: Option<&StoredRecord>, expected: &Seen) {
    let actual =
        actual.unwrap_or_else(|| panic!("{backend}: {what}: record {:?} missing", expected.id));
    assert_eq!(&Seen::from(actual), expected, "{backend}: {what}");
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Nango restores a pruned payload (the record saved again) without moving its cursor:
/// the same version, no longer pruned, fills in the payload of a copy that was read
/// pruned (`{id}` only), and clears the `pruned_at` of a copy whose payload the store
/// kept. It counts as `updated` and takes the commit's sequence number; the same restore
/// read again is unchanged.
pub async fn restored_payload_fills_a_pruned_copy<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("restore");
    // "a" first read pruned; "b" held in full, then read pruned (payload kept).
    commit_page(store, &s, vec![added("b", 5, "bee")]).await;
    let o1 = commit_page(store, &s, vec![pruned("a", 10), pruned("b", 11)]).await;
    assert_eq!(o1.counts, counts(1, 1, 0, 0, 0), "{b}: pruned page");
    assert_eq!(
        get(store, &s, "a").await.map(|r| r.payload.to_value()),
        Some(json!({"id": "a"})),
        "{b}: a first read pruned holds only its id"
    );
    // Restores: the same versions (same instant, same cursor), unpruned and full.
    let restore_a = version(
        "a",
        10,
        LastAction::Updated,
        json!({"id": "a", "title": "ay"}),
    );
    let restore_b = version(
        "b",
        11,
        LastAction::Updated,
        json!({"id": "b", "title": "bee"}),
    );
    let o2 = commit_page(store, &s, vec![restore_a.clone(), restore_b.clone()]).await;
    assert_eq!(
        o2.counts,
        counts(0, 2, 0, 0, 0),
        "{b}: restores count as updated"
    );
    assert!(
        o2.seq > o1.seq,
        "{b}: a restore takes a new sequence number"
    );
    for (want, title) in [(&restore_a, "ay"), (&restore_b, "bee")] {
        let got = get(store, &s, &want.id).await;
        assert_seen(
            b,
            "restored record",
            got.as_ref(),
            &Seen {
                id: want.id.clone(),
                payload: json!({"id": want.id, "title": title}),
                meta: want.meta.clone(),
                seq: o2.seq,
            },
        );
    }
    // The same restore again (a replayed page) changes nothing.
    let o3 = commit_page(store, &s, vec![restore_a, restore_b]).await;
    assert_eq!(
        o3.counts,
        counts(0, 0, 0, 2, 0),
        "{b}: a restore read again"
    );
    assert_eq!(
        get(store, &s, "a").await.map(|r| r.seq),
        Some(o2.seq),
        "{b}: an unchanged record keeps its sequence number"
    );
    // A version still pruned never replaces a payload.
    let o4 = commit_page(store, &s, vec![pruned("a", 10)]).await;
    assert_eq!(o4.counts, counts(0, 0, 0, 1, 0), "{b}: still pruned");
    assert_eq!(
        get(store, &s, "a").await.map(|r| r.payload.to_value()),
        Some(json!({"id": "a", "title": "ay"})),
        "{b}: the restored payload stays"
    );
    subject.finish().await;
}

/// A stream never committed has the default state (no cursor, generation 0), no records,
/// and is not listed by `streams()`.
pub async fn fresh_stream_has_no_cursor<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("fresh");
    assert_eq!(
        state(store, &s).await,
        StreamState::default(),
        "{b}: fresh stream state"
    );
    assert!(
        get(store, &s, "a").await.is_none(),
        "{b}: fresh stream has no record"
    );
    assert!(
        all(store, &s, true).await.is_empty(),
        "{b}: fresh stream lists nothing"
    );
    assert!(
        status(store, &s).await.is_none(),
        "{b}: reading a stream must not create it"
    );
    subject.finish().await;
}

/// A commit moves the cursor to the page's cursor and stores the records; an empty page
/// keeps the cursor (and still is a commit with its own sequence number).
pub async fn commit_advances_cursor<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("advance");
    let out = commit_page(store, &s, vec![added("a", 1, "one"), added("b", 2, "two")]).await;
    assert_eq!(out.counts, counts(2, 0, 0, 0, 0), "{b}: first page counts");
    assert_eq!(out.swept, 0);
    assert_eq!(
        state(store, &s).await.cursor,
        Some(cursor_at(2)),
        "{b}: cursor after first page"
    );

    let out2 = commit_page(store, &s, vec![updated("a", 3, "uno")]).await;
    assert_eq!(
        out2.counts,
        counts(0, 1, 0, 0, 0),
        "{b}: second page counts"
    );
    assert!(out2.seq > out.seq, "{b}: seq grows");
    assert_eq!(
        state(store, &s).await.cursor,
        Some(cursor_at(3)),
        "{b}: cursor after second page"
    );

    let out3 = commit_page(store, &s, vec![]).await;
    assert_eq!(out3.counts, Counts::default(), "{b}: empty page counts");
    assert_eq!(out3.seq, out2.seq + 1, "{b}: an empty page is a commit too");
    assert_eq!(
        state(store, &s).await.cursor,
        Some(cursor_at(3)),
        "{b}: empty page keeps the cursor"
    );

    let a = get(store, &s, "a").await;
    let expected = Seen {
        id: "a".into(),
        payload: json!({"id": "a", "title": "uno"}),
        meta: updated("a", 3, "uno").meta,
        seq: out2.seq,
    };
    assert_seen(b, "updated record", a.as_ref(), &expected);
    let st = status(store, &s)
        .await
        .expect("stream listed after a commit");
    assert_eq!(st.live_records, 2, "{b}: live records");
    assert_eq!(st.totals, counts(2, 1, 0, 0, 0), "{b}: totals");
    subject.finish().await;
}

/// Committing the same page again (as after a crash between commit and acknowledgement)
/// changes nothing: every record counts as unchanged and keeps its sequence number.
pub async fn replayed_commit_is_idempotent<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("replay");
    let records = vec![
        added("a", 1, "one"),
        added("b", 2, "two"),
        deleted_bare("c", 3),
    ];
    let first = page(store, &s, records.clone()).await;
    let out = commit(store, first.clone()).await;
    assert_eq!(out.counts, counts(2, 0, 1, 0, 0), "{b}: first commit");
    let before = snapshot(store, &[&s]).await;

    // The same records again, from the cursor the first commit wrote.
    let again = page(store, &s, records).await;
    let out2 = commit(store, again).await;
    assert_eq!(out2.counts, counts(0, 0, 0, 3, 0), "{b}: replay counts");
    let after = snapshot(store, &[&s]).await;
    assert_eq!(
        before.records, after.records,
        "{b}: replay changed records or state"
    );
    let st = status(store, &s).await.unwrap();
    assert_eq!(
        st.totals,
        counts(2, 0, 1, 3, 0),
        "{b}: totals count the replay as unchanged"
    );
    assert_eq!(
        (st.live_records, st.deleted_records),
        (2, 1),
        "{b}: live/deleted after replay"
    );
    subject.finish().await;
}

/// A commit whose expected cursor is not the stored one is rejected with
/// [`Error::CursorConflict`] and writes nothing, on a new and on an existing stream.
pub async fn cursor_conflict_writes_nothing<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("conflict");
    let fresh = stream("conflict-fresh");
    commit_page(store, &s, vec![added("a", 1, "one")]).await;
    let before = snapshot(store, &[&s, &fresh]).await;

    let mut c = page(store, &s, vec![updated("a", 2, "two"), added("b", 3, "b")]).await;
    c.expected_cursor = Some(Cursor("somebody-else".into()));
    let err = store
        .commit(c)
        .await
        .expect_err("a conflicting commit must fail");
    match &err {
        Error::CursorConflict {
            expected, actual, ..
        } => {
            assert_eq!(
                expected.as_deref(),
                Some("somebody-else"),
                "{b}: conflict names the expected cursor"
            );
            assert_eq!(
                actual.as_deref(),
                Some(cursor_at(1).as_str()),
                "{b}: conflict names the stored cursor"
            );
        }
        other => panic!("{b}: expected a cursor conflict, got {other}"),
    }
    assert!(!err.is_retryable(), "{b}: a conflict is not retryable");

    // Expecting no cursor where there is one.
    let mut c = page(store, &s, vec![updated("a", 2, "two")]).await;
    c.expected_cursor = None;
    assert!(
        matches!(store.commit(c).await, Err(Error::CursorConflict { .. })),
        "{b}: None vs Some conflicts"
    );

    // Expecting a cursor on a stream that has none.
    let mut c = page(store, &fresh, vec![added("x", 1, "x")]).await;
    c.expected_cursor = Some(cursor_at(1));
    assert!(
        matches!(store.commit(c).await, Err(Error::CursorConflict { .. })),
        "{b}: Some vs None conflicts"
    );

    assert_eq!(
        snapshot(store, &[&s, &fresh]).await,
        before,
        "{b}: a rejected commit wrote something"
    );
    let out = commit_page(store, &s, vec![updated("a", 2, "two")]).await;
    assert_eq!(
        out.counts,
        counts(0, 1, 0, 0, 0),
        "{b}: the right commit applies after a conflict"
    );
    subject.finish().await;
}

/// A failure injected at each [`FaultPoint`] leaves nothing visible (records, cursor,
/// sequence numbers, counts, sweep) and the same commit then succeeds, with the sequence
/// number the failed one would have had.
pub async fn injected_failure_leaves_nothing<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    for point in [FaultPoint::AfterRecords, FaultPoint::BeforeCommit] {
        let s = stream(&format!("fault-{point:?}"));
        let new_stream = stream(&format!("fault-new-{point:?}"));
        commit_page(
            store,
            &s,
            vec![
                added("a", 1, "one"),
                added("b", 2, "two"),
                added("c", 3, "three"),
            ],
        )
        .await;

        // A first commit on a new stream: the stream must not appear.
        let before = snapshot(store, &[&s, &new_stream]).await;
        let c = page(store, &new_stream, vec![added("x", 1, "x")]).await;
        subject.faults.arm(point);
        let err = store
            .commit(c.clone())
            .await
            .expect_err("an armed fault point must fail the commit");
        assert!(
            !matches!(err, Error::CursorConflict { .. }),
            "{b}: {point:?}: wrong error {err}"
        );
        assert_eq!(
            snapshot(store, &[&s, &new_stream]).await,
            before,
            "{b}: {point:?}: failed first commit visible"
        );
        let last = max_seq(store).await;
        let out = commit(store, c).await;
        assert_eq!(
            out.seq,
            last + 1,
            "{b}: {point:?}: a failed commit must not use up a sequence number"
        );

        // A page mixing every kind of write.
        let before = snapshot(store, &[&s, &new_stream]).await;
        let c = page(
            store,
            &s,
            vec![
                updated("a", 4, "uno"),
                deleted_bare("b", 5),
                added("d", 6, "four"),
            ],
        )
        .await;
        subject.faults.arm(point);
        assert!(
            store.commit(c.clone()).await.is_err(),
            "{b}: {point:?}: armed commit succeeded"
        );
        assert_eq!(
            snapshot(store, &[&s, &new_stream]).await,
            before,
            "{b}: {point:?}: failed page visible"
        );
        let out2 = commit(store, c).await;
        assert_eq!(
            out2.seq,
            out.seq + 1,
            "{b}: {point:?}: seq after a failed page"
        );
        assert_eq!(
            out2.counts,
            counts(1, 1, 1, 0, 0),
            "{b}: {point:?}: counts of the retried page"
        );

        // The completing commit of a full re-read, with a sweep.
        let mut c = page(store, &s, vec![updated("a", 7, "eins")]).await;
        c.full_read = Some(FullRead {
            generation: 1,
            complete: true,
        });
        let before = snapshot(store, &[&s, &new_stream]).await;
        subject.faults.arm(point);
        assert!(
            store.commit(c.clone()).await.is_err(),
            "{b}: {point:?}: armed sweep succeeded"
        );
        assert_eq!(
            snapshot(store, &[&s, &new_stream]).await,
            before,
            "{b}: {point:?}: failed sweep visible"
        );
        let out3 = commit(store, c).await;
        assert_eq!(
            out3.seq,
            out2.seq + 1,
            "{b}: {point:?}: seq after a failed sweep"
        );
        assert_eq!(
            out3.swept, 2,
            "{b}: {point:?}: c and d swept (b already deleted)"
        );
        assert_eq!(
            state(store, &s).await.generation,
            1,
            "{b}: {point:?}: generation after the sweep"
        );
    }
    subject.finish().await;
}

/// A durable store keeps everything when it is closed and opened again: records,
/// tombstones, cursors, generations, full reads in progress, counts, runs, upstream
/// errors and the sequence counter.
pub async fn reopen_keeps_everything<F: StoreFactory>(stores: &mut F) {
    let s1 = stream("reopen-1");
    let s2 = stream("reopen-2").with_variant("eu");
    let mut subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    commit_page(
        store,
        &s1,
        vec![
            added("a", 1, "one"),
            added("b", 2, "two"),
            added("c", 3, "three"),
        ],
    )
    .await;
    commit_page(store, &s1, vec![deleted_bare("b", 4), pruned("c", 5)]).await;
    let mut c = page(store, &s2, vec![added("x", 1, "x")]).await;
    c.full_read = Some(FullRead {
        generation: 3,
        complete: false,
    });
    let last = commit(store, c).await;
    let run = RunSummary {
        id: RunId::new(),
        instance: String::new(),
        started_at: ts(10),
        finished_at: ts(20),
        outcome: RunOutcome::Error,
        pages: 2,
        counts: counts(3, 0, 1, 0, 0),
        full: false,
        full_reason: None,
        high_water_mark: None,
        error: Some("boom 'quoted'".into()),
        count_check: None,
    };
    store
        .record_run(&s1, &run, DEFAULT_RUN_HISTORY)
        .await
        .unwrap();
    store
        .set_upstream_error(&s2, Some("sync failed: 'x'"))
        .await
        .unwrap();
    let before = snapshot(store, &[&s1, &s2]).await;

    subject.reopen(stores).await;
    let store = subject.store();
    let after = snapshot(store, &[&s1, &s2]).await;
    assert_eq!(after, before, "{b}: the reopened store differs");
    assert_eq!(
        after.records[&s2].0.full_read,
        Some(3),
        "{b}: full read in progress kept"
    );
    let out = commit_page(store, &s1, vec![updated("a", 6, "uno")]).await;
    assert_eq!(
        out.seq,
        last.seq + 1,
        "{b}: the sequence continues after a reopen"
    );

    subject.reopen(stores).await;
    let store = subject.store();
    assert_eq!(
        get(store, &s1, "a").await.map(|r| r.seq),
        Some(out.seq),
        "{b}: second reopen"
    );
    subject.finish().await;
}

/// Streams that differ in any one key field never see each other's records, cursors
/// or counts.
pub async fn streams_are_isolated<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let base = StreamKey::new("iso", "conn", "Ticket");
    let variants = [
        base.clone(),
        StreamKey::new("iso2", "conn", "Ticket"),
        StreamKey::new("iso", "conn2", "Ticket"),
        StreamKey::new("iso", "conn", "Tickets"),
        base.clone().with_variant("v2"),
        // Concatenations that are equal: keys must not be built by plain concatenation.
        StreamKey::new("isoc", "onn", "Ticket"),
        StreamKey::new("iso", "connTicket", ""),
    ];
    for (i, s) in variants.iter().enumerate() {
        let t = i as i64 * 10 + 1;
        commit_page(
            store,
            s,
            vec![
                added("shared", t, &format!("stream {i}")),
                added(&format!("own-{i}"), t + 1, "x"),
            ],
        )
        .await;
    }
    for (i, s) in variants.iter().enumerate() {
        let t = i as i64 * 10 + 1;
        let recs = all(store, s, true).await;
        let ids: Vec<&str> = recs.iter().map(|r| r.id.as_str()).collect();
        let own = format!("own-{i}");
        assert_eq!(
            ids,
            vec![own.as_str(), "shared"],
            "{b}: records of stream {s:?}"
        );
        let shared = get(store, s, "shared").await.unwrap();
        assert_eq!(
            Seen::from(&shared).payload["title"],
            json!(format!("stream {i}")),
            "{b}: {s:?}"
        );
        assert_eq!(
            state(store, s).await.cursor,
            Some(cursor_at(t + 1)),
            "{b}: cursor of {s:?}"
        );
        let st = status(store, s)
            .await
            .unwrap_or_else(|| panic!("{b}: {s:?} not listed"));
        assert_eq!(st.totals, counts(2, 0, 0, 0, 0), "{b}: totals of {s:?}");
        assert_eq!(st.live_records, 2, "{b}: live records of {s:?}");
    }
    // A delete in one stream does not touch the same id elsewhere.
    commit_page(store, &variants[0], vec![deleted_bare("shared", 100)]).await;
    for s in &variants[1..] {
        assert!(
            !get(store, s, "shared").await.unwrap().is_deleted(),
            "{b}: delete leaked into {s:?}"
        );
    }
    subject.finish().await;
}

/// One commit of 10,000 records stores all of them, and replaying it counts 10,000
/// unchanged records.
pub async fn large_commit<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("large");
    const N: usize = 10_000;
    let records: Vec<Record> = (0..N)
        .map(|i| added(&format!("rec-{i:05}"), i as i64, "a title of some length"))
        .collect();
    let c = page(store, &s, records).await;
    let out = commit(store, c.clone()).await;
    assert_eq!(
        out.counts,
        counts(N as u64, 0, 0, 0, 0),
        "{b}: large commit counts"
    );
    let recs = all(store, &s, false).await;
    assert_eq!(recs.len(), N, "{b}: large commit stored every record");
    assert!(
        recs.iter().all(|r| r.seq == out.seq),
        "{b}: every record has the commit's seq"
    );
    assert_eq!(recs[N - 1].id, format!("rec-{:05}", N - 1));
    assert_eq!(
        state(store, &s).await.cursor,
        Some(cursor_at(N as i64 - 1)),
        "{b}: large commit cursor"
    );

    let mut replay = c;
    replay.expected_cursor = replay.cursor.clone();
    let out2 = commit(store, replay).await;
    assert_eq!(
        out2.counts,
        counts(0, 0, 0, N as u64, 0),
        "{b}: large replay counts"
    );
    let st = status(store, &s).await.unwrap();
    assert_eq!(
        st.live_records, N as u64,
        "{b}: live records after large commit"
    );
    subject.finish().await;
}

/// `flush` finishes what the store defers and changes nothing it holds: flushes run
/// while two streams commit, every commit lands, the store equals the reference after
/// the last flush, and a commit after it lands too.
pub async fn flush_keeps_every_commit<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let (s1, s2) = (stream("flush-1"), stream("flush-2"));
    let (rounds, per_page) = (8i64, 40i64);
    let filler = "a title long enough to fill pages ".repeat(8);
    for round in 0..rounds {
        let records = |prefix: &str| -> Vec<Record> {
            (0..per_page)
                .map(|i| added(&format!("{prefix}{round}-{i:02}"), round * 100 + i, &filler))
                .collect()
        };
        let c1 = page(store, &s1, records("a")).await;
        let c2 = page(store, &s2, records("b")).await;
        let (o1, o2, flushed) = tokio::join!(store.commit(c1), store.commit(c2), store.flush());
        for (o, s) in [(o1, &s1), (o2, &s2)] {
            let o = o.unwrap_or_else(|e| panic!("{b}: a commit beside a flush failed: {e}"));
            assert_eq!(
                o.counts,
                counts(per_page as u64, 0, 0, 0, 0),
                "{b}: {s}, round {round}"
            );
        }
        flushed.unwrap_or_else(|e| panic!("{b}: a flush beside commits failed: {e}"));
    }
    store
        .flush()
        .await
        .unwrap_or_else(|e| panic!("{b}: flush failed: {e}"));
    for s in [&s1, &s2] {
        let records = all(store, s, false).await;
        assert_eq!(
            records.len() as i64,
            rounds * per_page,
            "{b}: {s} after the flush"
        );
    }
    commit_page(
        store,
        &s1,
        vec![updated("a0-00", 10_000, "after the flush")],
    )
    .await;
    assert_eq!(
        get(store, &s1, "a0-00").await.map(|r| r.payload.to_value()),
        Some(json!({"id": "a0-00", "title": "after the flush"})),
        "{b}: a commit after the flush"
    );
    subject.finish().await;
}

/// The merge rule's outcomes, scripted: add, update, stale, same version, delete with
/// `{id}` (keeps the payload), undelete, delete with a full payload, prune (keeps the
/// payload), a page mixing outcomes, and a repeated id inside one page.
pub async fn merge_outcomes_are_counted<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("merge");
    let title = |v: &str, id: &str| json!({"id": id, "title": v});
    // (step, page, expected counts, expected record "a" after the step: payload, meta, step whose seq it has)
    struct Step {
        name: &'static str,
        page: Vec<Record>,
        counts: Counts,
        payload: Value,
        meta: Metadata,
        /// Index of the step that last changed "a".
        changed_at: usize,
    }
    let mut undeleted = added("a", 40, "three");
    undeleted.meta.first_seen_at = ts(40);
    let mut deleted_kept = deleted_bare("a", 30).meta;
    deleted_kept.first_seen_at = ts(30);
    let prune = pruned("a", 70);
    let steps = vec![
        Step {
            name: "add",
            page: vec![added("a", 10, "one")],
            counts: counts(1, 0, 0, 0, 0),
            payload: title("one", "a"),
            meta: added("a", 10, "one").meta,
            changed_at: 0,
        },
        Step {
            name: "update",
            page: vec![updated("a", 20, "two")],
            counts: counts(0, 1, 0, 0, 0),
            payload: title("two", "a"),
            meta: updated("a", 20, "two").meta,
            changed_at: 1,
        },
        Step {
            name: "stale version",
            page: vec![updated("a", 15, "stale")],
            counts: counts(0, 0, 0, 0, 1),
            payload: title("two", "a"),
            meta: updated("a", 20, "two").meta,
            changed_at: 1,
        },
        Step {
            name: "same version",
            page: vec![updated("a", 20, "two")],
            counts: counts(0, 0, 0, 1, 0),
            payload: title("two", "a"),
            meta: updated("a", 20, "two").meta,
            changed_at: 1,
        },
        Step {
            name: "delete with {id} keeps the payload",
            page: vec![deleted_bare("a", 30)],
            counts: counts(0, 0, 1, 0, 0),
            payload: title("two", "a"),
            meta: deleted_kept,
            changed_at: 4,
        },
        Step {
            name: "undelete",
            page: vec![undeleted.clone()],
            counts: counts(1, 0, 0, 0, 0),
            payload: title("three", "a"),
            meta: undeleted.meta.clone(),
            changed_at: 5,
        },
        Step {
            name: "delete with a full payload takes it",
            page: vec![deleted_full("a", 50, "gone")],
            counts: counts(0, 0, 1, 0, 0),
            payload: title("gone", "a"),
            meta: deleted_full("a", 50, "gone").meta,
            changed_at: 6,
        },
        Step {
            name: "undelete again",
            page: vec![added("a", 60, "four")],
            counts: counts(1, 0, 0, 0, 0),
            payload: title("four", "a"),
            meta: added("a", 60, "four").meta,
            changed_at: 7,
        },
        Step {
            name: "prune keeps the payload",
            page: vec![prune.clone()],
            counts: counts(0, 1, 0, 0, 0),
            payload: title("four", "a"),
            meta: prune.meta.clone(),
            changed_at: 8,
        },
        Step {
            name: "pruned version again",
            page: vec![prune.clone()],
            counts: counts(0, 0, 0, 1, 0),
            payload: title("four", "a"),
            meta: prune.meta.clone(),
            changed_at: 8,
        },
    ];
    let mut seqs = Vec::new();
    let mut totals = Counts::default();
    for step in &steps {
        let out = commit_page(store, &s, step.page.clone()).await;
        assert_eq!(out.counts, step.counts, "{b}: step {:?}: counts", step.name);
        assert_eq!(out.swept, 0, "{b}: step {:?}: swept", step.name);
        totals.add(&out.counts);
        seqs.push(out.seq);
        let expected = Seen {
            id: "a".into(),
            payload: step.payload.clone(),
            meta: step.meta.clone(),
            seq: seqs[step.changed_at],
        };
        assert_seen(b, step.name, get(store, &s, "a").await.as_ref(), &expected);
    }

    // A page mixing every outcome, with an id repeated inside the page.
    commit_page(
        store,
        &s,
        vec![
            added("b", 100, "b1"),
            added("c", 101, "c1"),
            added("e", 102, "e1"),
        ],
    )
    .await;
    let mixed = vec![
        added("d", 110, "d1"),              // added
        updated("b", 111, "b2"),            // updated
        deleted_bare("c", 112),             // deleted, payload kept
        updated("a", 5, "ancient"),         // stale
        added("e", 102, "e1"),              // same version
        updated("d", 113, "d2"),            // the same id again in the page: merged against d1
        updated("b", 109, "older-than-b2"), // stale against the earlier version of the page
    ];
    let out = commit_page(store, &s, mixed).await;
    assert_eq!(out.counts, counts(1, 2, 1, 1, 2), "{b}: mixed page counts");
    let recs: Vec<Seen> = all(store, &s, true).await.iter().map(Seen::from).collect();
    let expect = |id: &str, payload: Value, meta: Metadata, seq: u64| Seen {
        id: id.into(),
        payload,
        meta,
        seq,
    };
    let mut c_deleted = deleted_bare("c", 112).meta;
    c_deleted.first_seen_at = ts(112);
    let seq_setup = out.seq - 1;
    let expected = vec![
        expect("a", title("four", "a"), prune.meta.clone(), seqs[8]),
        expect("b", title("b2", "b"), updated("b", 111, "b2").meta, out.seq),
        expect("c", title("c1", "c"), c_deleted, out.seq),
        expect("d", title("d2", "d"), updated("d", 113, "d2").meta, out.seq),
        expect("e", title("e1", "e"), added("e", 102, "e1").meta, seq_setup),
    ];
    assert_eq!(recs, expected, "{b}: records after the mixed page");
    let live: Vec<String> = all(store, &s, false)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        live,
        ["a", "b", "d", "e"],
        "{b}: live records skip the tombstone"
    );
    let st = status(store, &s).await.unwrap();
    totals.add(&counts(3, 0, 0, 0, 0));
    totals.add(&out.counts);
    assert_eq!(
        st.totals, totals,
        "{b}: stream totals are the sum of every commit's counts"
    );
    assert_eq!(
        (st.live_records, st.deleted_records),
        (4, 1),
        "{b}: live and deleted records"
    );
    subject.finish().await;
}

/// A full re-read stamps a new generation on every record it sees; its completing
/// commit marks every live record it did not see as deleted (`deleted_at == commit.now`,
/// counted in `swept` and `deleted`), keeps their payload, and sets the generation.
pub async fn full_read_sweeps_unseen_records<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("sweep");
    let other = stream("sweep-other");
    commit_page(store, &other, vec![added("c", 1, "other stream")]).await;
    commit_page(
        store,
        &s,
        vec![
            added("a", 1, "a"),
            added("b", 2, "b"),
            added("c", 3, "c"),
            added("d", 4, "d"),
        ],
    )
    .await;
    commit_page(store, &s, vec![deleted_bare("d", 5)]).await;
    let d_before = get(store, &s, "d").await.unwrap();

    // First page of the re-read: "a" comes again unchanged (it is still seen).
    let mut c1 = page(store, &s, vec![added("a", 1, "a")]).await;
    c1.full_read = Some(FullRead {
        generation: 1,
        complete: false,
    });
    let out1 = commit(store, c1).await;
    assert_eq!(
        (out1.counts, out1.swept),
        (counts(0, 0, 0, 1, 0), 0),
        "{b}: first page of the re-read"
    );
    let st = state(store, &s).await;
    assert_eq!(
        (st.generation, st.full_read),
        (0, Some(1)),
        "{b}: state during the re-read"
    );

    // Last page: "b" updated; "c" was not seen and is swept; "d" was already deleted.
    let mut c2 = page(store, &s, vec![updated("b", 6, "b2")]).await;
    c2.full_read = Some(FullRead {
        generation: 1,
        complete: true,
    });
    c2.now = ts(999);
    let out2 = commit(store, c2).await;
    assert_eq!(out2.swept, 1, "{b}: swept");
    assert_eq!(
        out2.counts,
        counts(0, 1, 1, 0, 0),
        "{b}: sweep counted as deleted"
    );
    let st = state(store, &s).await;
    assert_eq!(
        (st.generation, st.full_read, st.cursor.clone()),
        (1, None, Some(cursor_at(6))),
        "{b}: state after"
    );

    let c = get(store, &s, "c").await.unwrap();
    let mut meta = added("c", 3, "c").meta;
    meta.last_action = LastAction::Deleted;
    meta.deleted_at = Some(ts(999));
    assert_seen(
        b,
        "swept record",
        Some(&c),
        &Seen {
            id: "c".into(),
            payload: json!({"id": "c", "title": "c"}),
            meta,
            seq: out2.seq,
        },
    );
    assert_eq!(
        get(store, &s, "d").await.unwrap(),
        d_before,
        "{b}: an old tombstone is not swept again"
    );
    assert!(
        !get(store, &s, "a").await.unwrap().is_deleted(),
        "{b}: a record seen unchanged is not swept"
    );
    assert!(
        !get(store, &other, "c").await.unwrap().is_deleted(),
        "{b}: sweep stays in its stream"
    );
    let status1 = status(store, &s).await.unwrap();
    assert_eq!(
        (status1.live_records, status1.deleted_records),
        (2, 2),
        "{b}: live/deleted after sweep"
    );

    // A second re-read in one commit: "c" comes back, "a" and "b" are not seen.
    let mut c3 = page(store, &s, vec![added("c", 20, "c again")]).await;
    c3.full_read = Some(FullRead {
        generation: 2,
        complete: true,
    });
    c3.now = ts(2000);
    let out3 = commit(store, c3).await;
    assert_eq!(
        (out3.counts, out3.swept),
        (counts(1, 0, 2, 0, 0), 2),
        "{b}: second re-read"
    );
    let live: Vec<String> = all(store, &s, false)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, ["c"], "{b}: live records after the second re-read");
    let a = get(store, &s, "a").await.unwrap();
    assert_eq!(
        (a.meta.deleted_at, a.seq),
        (Some(ts(2000)), out3.seq),
        "{b}: swept a"
    );
    let st = status(store, &s).await.unwrap();
    assert_eq!(
        (st.live_records, st.deleted_records),
        (1, 3),
        "{b}: counts after the second re-read"
    );
    assert_eq!(st.state.generation, 2);
    subject.finish().await;
}

/// A stream's life of full reads: a first sync, incremental commits, re-reads that see
/// every live record and re-reads that miss some, a record rewritten outside a re-read,
/// and records stamped by a re-read numbered above the one completing. Each completing
/// commit sweeps exactly the live records its re-read did not see, whether the store
/// finds them by scanning the stream or knows from its count of seen records
/// ([`nango_sync::sink::seen`]) that there are none.
pub async fn successive_full_reads_sweep_what_each_did_not_see<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("reread");
    let mut t = 100;
    // Commit `records` (ids; "-id" a deletion) as a page of full read `full`
    // (generation, complete); returns the ids it swept, sorted.
    let mut step = async |ids: &[&str], full: Option<(u64, bool)>| -> Vec<String> {
        t += 1;
        let records = ids
            .iter()
            .map(|id| match id.strip_prefix('-') {
                Some(id) => deleted_bare(id, t),
                None => updated(id, t, &format!("{id} at {t}")),
            })
            .collect();
        let mut c = page(store, &s, records).await;
        c.full_read = full.map(|(generation, complete)| FullRead {
            generation,
            complete,
        });
        c.now = ts(t);
        let out = commit(store, c).await;
        let mut swept: Vec<String> = all(store, &s, true)
            .await
            .into_iter()
            .filter(|r| {
                r.seq == out.seq
                    && r.meta.deleted_at == Some(ts(t))
                    && !ids.iter().any(|id| id.trim_start_matches('-') == r.id)
            })
            .map(|r| r.id)
            .collect();
        swept.sort();
        assert_eq!(out.swept, swept.len() as u64, "{b}: swept count at {t}");
        swept
    };
    let none: Vec<String> = Vec::new();
    let live = async || -> Vec<String> {
        all(store, &s, false)
            .await
            .into_iter()
            .map(|r| r.id)
            .collect()
    };

    // A first sync, over two pages: nothing to sweep.
    assert_eq!(step(&["a", "b"], Some((1, false))).await, none, "{b}");
    assert_eq!(step(&["c"], Some((1, true))).await, none, "{b}: first sync");
    // Incremental commits: a new record, a deletion.
    step(&["d", "-a"], None).await;
    // A re-read that misses "b".
    step(&["c"], Some((2, false))).await;
    assert_eq!(step(&["d"], Some((2, true))).await, ["b"], "{b}: re-read 2");
    // A re-read that sees every live record, the last page empty.
    step(&["c", "d"], Some((3, false))).await;
    assert_eq!(step(&[], Some((3, true))).await, none, "{b}: re-read 3");
    // During a re-read, an incremental commit rewrites "c" with the stream's
    // generation (3), so the re-read no longer counts it as seen: swept.
    step(&["c", "d", "e"], Some((4, false))).await;
    step(&["c"], None).await;
    assert_eq!(step(&["d"], Some((4, true))).await, ["c"], "{b}: re-read 4");
    // Records stamped by a re-read numbered 10 that did not complete are spared by
    // the completing re-reads numbered 5 and 6, and swept by the one numbered 11.
    step(&["d"], Some((10, false))).await;
    assert_eq!(step(&["e"], Some((5, true))).await, none, "{b}: re-read 5");
    assert_eq!(step(&["f"], Some((6, true))).await, ["e"], "{b}: re-read 6");
    assert_eq!(live().await, ["d", "f"], "{b}");
    assert_eq!(
        step(&["f"], Some((11, true))).await,
        ["d"],
        "{b}: re-read 11"
    );
    // And a re-read that saw everything after that.
    assert_eq!(
        step(&["f"], Some((12, true))).await,
        none,
        "{b}: re-read 12"
    );
    assert_eq!(live().await, ["f"], "{b}");
    let st = status(store, &s).await.unwrap();
    assert_eq!((st.live_records, st.deleted_records), (1, 5), "{b}: counts");
    subject.finish().await;
}

/// The engine tells the store of the next page while the current one commits
/// (`RecordSink::prefetch`); a store that reads ahead commits exactly what it would
/// without the hint (the reference store, which ignores hints, checks every outcome).
/// Pages told two deep, ids repeated from one page to the next, deletions, unchanged
/// re-reads, a completing re-read's sweep followed by the page that brings a swept
/// record back, a hint for a page never committed and one for other ids, and
/// commits of another stream in between.
pub async fn pages_told_ahead_commit_the_same<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let (s, other) = (stream("ahead"), stream("ahead-other"));
    let mut t = 100;
    // The time of each id's last version sent.
    let mut sent: std::collections::HashMap<String, i64> = Default::default();
    // A run: its pages (ids; "-id" a deletion; "=id" the last version sent again,
    // unchanged; "<id" a version older than any, stale) as a full read `full`
    // (generation) or incremental, each page after the first told while the one
    // before commits, as the engine does; `then`: the ids of the next run's first page, told while the last
    // page commits.
    let mut run = async |pages: &[&[&str]], full: Option<u64>, then: &[&str]| {
        let mut built = Vec::new();
        for ids in pages {
            t += 1;
            let records: Vec<Record> = ids
                .iter()
                .map(|id| match id.split_at(1) {
                    ("-", id) => {
                        sent.insert(id.to_owned(), t);
                        deleted_bare(id, t)
                    }
                    ("=", id) => {
                        let at = sent[id];
                        updated(id, at, &format!("{id} at {at}"))
                    }
                    ("<", id) => updated(id, 1, "old"),
                    _ => {
                        sent.insert(id.to_string(), t);
                        updated(id, t, &format!("{id} at {t}"))
                    }
                })
                .collect();
            built.push(records);
        }
        for (i, records) in built.iter().enumerate() {
            match built.get(i + 1) {
                Some(next) => store.prefetch(&s, next),
                None if !then.is_empty() => {
                    let next: Vec<Record> = then.iter().map(|id| updated(id, t, "")).collect();
                    store.prefetch(&s, &next);
                }
                None => {}
            }
            let mut c = page(store, &s, records.clone()).await;
            c.full_read = full.map(|generation| FullRead {
                generation,
                complete: i + 1 == built.len(),
            });
            commit(store, c).await;
            // Another stream's commit between two pages changes nothing of this one.
            commit_page(store, &other, vec![updated("o", t, "other")]).await;
        }
    };
    // A first sync over four pages, each repeating an id of the one before.
    run(
        &[&["a", "b"], &["b", "c"], &["c", "d", "e"], &["e", "f"]],
        Some(1),
        &[],
    )
    .await;
    // Incremental runs: deletions, records changed again, versions unchanged and stale.
    run(&[&["a", "-b"], &["=c", "b", "<e"], &["-a", "g"]], None, &[]).await;
    // A re-read that misses "d" and sees unchanged records: the completing page sweeps
    // "d", the next run brings it back, told while the sweep commits.
    run(
        &[&["=b", "=c"], &["=c", "e", "=f", "=g"]],
        Some(2),
        &["d", "c"],
    )
    .await;
    run(&[&["d", "c"], &["=d", "h"]], None, &[]).await;
    // A hint for a page that is never committed (a run stopped), then one for other
    // ids than the page that commits, then a run.
    store.prefetch(&s, &[updated("x", 1, "never")]);
    store.prefetch(&s, &[updated("y", 1, "other ids")]);
    run(&[&["h", "x"], &["y"]], None, &[]).await;
    let live: Vec<String> = all(store, &s, false)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, ["b", "c", "d", "e", "f", "g", "h", "x", "y"], "{b}");
    subject.finish().await;
}

/// Commit sequence numbers grow by one per successful commit of the store (across
/// streams), and every record carries the sequence number of the commit that last
/// changed it (unchanged and stale versions leave it).
pub async fn seq_is_monotonic_and_per_record<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("seq");
    let t = stream("seq-other");
    let o1 = commit_page(store, &s, vec![added("a", 1, "a"), added("b", 2, "b")]).await;
    let o2 = commit_page(store, &t, vec![added("a", 1, "other")]).await;
    let o3 = commit_page(store, &s, vec![updated("b", 3, "b2"), added("c", 4, "c")]).await;
    let o4 = commit_page(
        store,
        &s,
        vec![updated("b", 3, "b2"), updated("a", 0, "stale")],
    )
    .await;
    let o5 = commit_page(store, &s, vec![]).await;
    let seqs = [o1.seq, o2.seq, o3.seq, o4.seq, o5.seq];
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{b}: commit sequence numbers {seqs:?}");
    }
    assert!(o1.seq >= 1, "{b}: sequence numbers start at 1");
    let got: Vec<(String, u64)> = all(store, &s, true)
        .await
        .into_iter()
        .map(|r| (r.id, r.seq))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), o1.seq),
            ("b".into(), o3.seq),
            ("c".into(), o3.seq)
        ],
        "{b}: per-record seq"
    );
    assert_eq!(
        get(store, &t, "a").await.unwrap().seq,
        o2.seq,
        "{b}: seq in the other stream"
    );
    // Runs and errors are not commits.
    store
        .record_run(&s, &sample_run(), DEFAULT_RUN_HISTORY)
        .await
        .unwrap();
    store.set_upstream_error(&s, Some("x")).await.unwrap();
    let o6 = commit_page(store, &s, vec![deleted_bare("a", 9)]).await;
    assert_eq!(
        o6.seq,
        o5.seq + 1,
        "{b}: record_run/set_upstream_error must not use sequence numbers"
    );
    assert_eq!(get(store, &s, "a").await.unwrap().seq, o6.seq);
    subject.finish().await;
}

fn sample_run() -> RunSummary {
    RunSummary {
        id: "0190f5c2-1111-7abc-8def-0123456789ab"
            .parse()
            .expect("a run id"),
        instance: "instance 'a'".into(),
        started_at: ts(100),
        finished_at: ts(250),
        outcome: RunOutcome::Error,
        pages: 3,
        counts: counts(5, 4, 3, 2, 1),
        full: true,
        full_reason: Some(nango_sync::sink::FullReadReason::CursorRejected),
        high_water_mark: Some(Timestamp::from_micros(1_700_000_000_123_456)),
        error: Some("store: 'x'; \"y\" -- %".into()),
        count_check: Some(nango_sync::sink::CountCheck::Mismatch {
            checked_at: ts(260),
            local: 7,
            nango: 5,
        }),
    }
}

/// `list` returns records in code-point (UTF-8 byte) order of ids, unicode included,
/// pages with `after_id` (which need not exist) and `limit`, and skips tombstones unless
/// asked.
pub async fn list_pages_in_code_point_order<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("list");
    let ids = [
        "b",
        "a",
        "B",
        "A",
        "aa",
        "a b",
        "a-b",
        "a_b",
        "~",
        "0",
        "9",
        "é",
        "e",
        "z",
        "日本",
        "😀",
        "\u{7f}",
        "\u{ff}",
        "\u{ffff}",
        "\u{10000}",
        "Z",
        " ",
        "!",
        "a%",
        "a\\",
    ];
    let recs: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| added(id, i as i64, "x"))
        .collect();
    commit_page(store, &s, recs).await;
    commit_page(
        store,
        &s,
        vec![deleted_bare("e", 100), deleted_bare("😀", 101)],
    )
    .await;

    let mut expected_all: Vec<&str> = ids.to_vec();
    expected_all.sort_unstable(); // str order is byte order is code-point order
    let expected_live: Vec<&str> = expected_all
        .iter()
        .copied()
        .filter(|id| *id != "e" && *id != "😀")
        .collect();

    for (include_deleted, expected) in [(true, &expected_all), (false, &expected_live)] {
        let one: Vec<String> = store
            .list(
                &s,
                &ListQuery {
                    after_id: None,
                    limit: 1000,
                    include_deleted,
                    change: None,
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            &one, expected,
            "{b}: list order (include_deleted {include_deleted})"
        );
        for limit in [1, 3, 7] {
            let mut paged = Vec::new();
            let mut q = ListQuery {
                after_id: None,
                limit,
                include_deleted,
                change: None,
            };
            loop {
                let batch = store.list(&s, &q).await.unwrap();
                assert!(batch.len() <= limit, "{b}: limit {limit} exceeded");
                let Some(last) = batch.last() else { break };
                q.after_id = Some(last.id.clone());
                paged.extend(batch.into_iter().map(|r| r.id));
            }
            assert_eq!(
                &paged, expected,
                "{b}: paged list, limit {limit}, include_deleted {include_deleted}"
            );
        }
    }
    // after_id that is not stored, and past the end.
    let q = ListQuery {
        after_id: Some("a0".into()),
        limit: 2,
        include_deleted: true,
        change: None,
    };
    let got: Vec<String> = store
        .list(&s, &q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let pos = expected_all.iter().position(|id| *id > "a0").unwrap();
    assert_eq!(
        got,
        expected_all[pos..pos + 2].to_vec(),
        "{b}: after an id that is not stored"
    );
    let q = ListQuery {
        after_id: Some("\u{10ffff}".into()),
        limit: 10,
        include_deleted: true,
        change: None,
    };
    assert!(
        store.list(&s, &q).await.unwrap().is_empty(),
        "{b}: after the last id"
    );
    assert!(
        store
            .list(&s, &ListQuery::first(0))
            .await
            .unwrap()
            .is_empty(),
        "{b}: limit 0"
    );
    assert!(
        store
            .list(&stream("list-none"), &ListQuery::first(5))
            .await
            .unwrap()
            .is_empty(),
        "{b}: unknown stream"
    );
    subject.finish().await;
}

/// `streams()` lists every stream with its state, totals, live and deleted record counts,
/// last run and upstream error.
pub async fn stream_status_is_reported<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s1 = stream("status-1");
    let s2 = stream("status-2").with_variant("v");
    let s3 = stream("status-3");
    let o1 = commit_page(
        store,
        &s1,
        vec![added("a", 1, "a"), added("b", 2, "b"), deleted_bare("c", 3)],
    )
    .await;
    let o2 = commit_page(
        store,
        &s1,
        vec![deleted_bare("a", 4), updated("b", 1, "stale")],
    )
    .await;
    commit_page(store, &s2, vec![added("x", 1, "x")]).await;
    store
        .set_upstream_error(&s3, Some("only an error"))
        .await
        .unwrap();

    let all = statuses(store).await;
    let keys: Vec<&StreamKey> = all.iter().map(|s| &s.stream).collect();
    for k in [&s1, &s2, &s3] {
        assert!(keys.contains(&k), "{b}: {k:?} missing from streams()");
    }
    let st1 = status(store, &s1).await.unwrap();
    let mut totals = o1.counts;
    totals.add(&o2.counts);
    let expected = StreamStatus {
        stream: s1.clone(),
        state: StreamState {
            cursor: Some(cursor_at(1)),
            generation: 0,
            full_read: None,
        },
        totals,
        live_records: 1,
        deleted_records: 2,
        last_run: None,
        upstream_error: None,
        last_success: None,
    };
    // The second page's last record is the stale "b" at t=1: the cursor is the page's.
    assert_eq!(st1, expected, "{b}: status of {s1:?}");
    assert_eq!(totals, counts(2, 0, 2, 0, 1));
    let st3 = status(store, &s3).await.unwrap();
    assert_eq!(
        (
            st3.state,
            st3.live_records,
            st3.deleted_records,
            st3.totals,
            st3.upstream_error.as_deref()
        ),
        (
            StreamState::default(),
            0,
            0,
            Counts::default(),
            Some("only an error")
        ),
        "{b}: a stream known only by its upstream error"
    );
    assert_eq!(
        status(store, &s2).await.unwrap().live_records,
        1,
        "{b}: {s2:?}"
    );
    subject.finish().await;
}

/// `record_run` and `set_upstream_error` round-trip, replace the previous value, and
/// leave records and cursors alone.
pub async fn run_and_upstream_error_round_trip<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("runs");
    commit_page(store, &s, vec![added("a", 1, "a")]).await;
    let before = snapshot(store, &[&s]).await.records;
    let run = sample_run();
    store
        .record_run(&s, &run, DEFAULT_RUN_HISTORY)
        .await
        .unwrap();
    assert_eq!(
        status(store, &s).await.unwrap().last_run,
        Some(run.clone()),
        "{b}: last run"
    );
    let run2 = RunSummary {
        id: RunId::new(),
        outcome: RunOutcome::Ok,
        error: None,
        count_check: None,
        full: false,
        pages: 0,
        counts: Counts::default(),
        ..run
    };
    store
        .record_run(&s, &run2, DEFAULT_RUN_HISTORY)
        .await
        .unwrap();
    assert_eq!(
        status(store, &s).await.unwrap().last_run,
        Some(run2.clone()),
        "{b}: last run replaced"
    );
    assert_eq!(
        store.last_run(&s).await.unwrap(),
        Some(run2.clone()),
        "{b}: last_run of one stream"
    );
    assert_eq!(
        store.last_run(&stream("never-ran")).await.unwrap(),
        None,
        "{b}: last_run of an unknown stream"
    );

    let msg = "Sync failed: 'quoted' \"double\"; DROP TABLE x; -- 100% \\ ✓";
    store.set_upstream_error(&s, Some(msg)).await.unwrap();
    assert_eq!(
        status(store, &s).await.unwrap().upstream_error.as_deref(),
        Some(msg),
        "{b}: upstream error"
    );
    store.set_upstream_error(&s, None).await.unwrap();
    let st = status(store, &s).await.unwrap();
    assert_eq!(
        (st.upstream_error, st.last_run),
        (None, Some(run2)),
        "{b}: upstream error cleared, run kept"
    );
    assert_eq!(
        snapshot(store, &[&s]).await.records,
        before,
        "{b}: runs and errors changed records"
    );

    // A run on a stream never committed creates its status, not a cursor.
    let fresh = stream("runs-fresh");
    store
        .record_run(&fresh, &sample_run(), DEFAULT_RUN_HISTORY)
        .await
        .unwrap();
    let st = status(store, &fresh)
        .await
        .unwrap_or_else(|| panic!("{b}: run on a new stream not listed"));
    assert_eq!(
        (st.state, st.last_run),
        (StreamState::default(), Some(sample_run())),
        "{b}: run on a new stream"
    );
    // The stream still commits from no cursor.
    commit_page(store, &fresh, vec![added("a", 1, "a")]).await;
    subject.finish().await;
}

// ---------------------------------------------------------------------------------------
// The run history
// ---------------------------------------------------------------------------------------

/// A run of the history tests: `n` tells runs apart (pages, counts, times).
fn history_run(n: u64, outcome: RunOutcome) -> RunSummary {
    RunSummary {
        id: RunId::new(),
        instance: String::new(),
        started_at: ts(n as i64 * 1_000),
        finished_at: ts(n as i64 * 1_000 + 500),
        outcome,
        pages: n,
        counts: counts(n, 0, 0, 0, 0),
        full: n == 1,
        full_reason: (n == 1).then_some(nango_sync::sink::FullReadReason::FirstSync),
        high_water_mark: None,
        error: match outcome {
            RunOutcome::Ok => None,
            RunOutcome::Error => Some(format!("run {n} failed: 'quoted' \"double\"")),
            RunOutcome::Interrupted => Some("stopped by shutdown".into()),
        },
        count_check: None,
    }
}

async fn history<S: RecordSink>(store: &S, query: HistoryQuery) -> Vec<RunEntry> {
    store
        .run_history(&query)
        .await
        .unwrap_or_else(|e| panic!("{}: run_history failed: {e}", backend(store)))
}

async fn record<S: RecordSink>(store: &S, stream: &StreamKey, run: &RunSummary, keep: usize) {
    store
        .record_run(stream, run, keep)
        .await
        .unwrap_or_else(|e| panic!("{}: record_run failed: {e}", backend(store)));
}

fn runs_of(entries: &[RunEntry]) -> Vec<RunSummary> {
    entries.iter().map(|e| e.run.clone()).collect()
}

/// A stream's history lists its runs newest first, keeps the last `keep` of them (at
/// least one), keeps the last successful run beyond that bound, and leaves records,
/// cursors and sequence numbers alone.
pub async fn run_history_is_newest_first_and_bounded<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("history");
    commit_page(store, &s, vec![added("a", 1, "a")]).await;
    let before = snapshot(store, &[&s]).await.records;
    let seq = max_seq(store).await;

    let outcomes = [
        RunOutcome::Ok,
        RunOutcome::Error,
        RunOutcome::Error,
        RunOutcome::Interrupted,
        RunOutcome::Error,
    ];
    let runs: Vec<RunSummary> = outcomes
        .iter()
        .zip(1..)
        .map(|(o, n)| history_run(n, *o))
        .collect();
    for run in &runs {
        record(store, &s, run, 3).await;
    }
    let newest_first: Vec<RunSummary> = runs.iter().rev().cloned().collect();
    assert_eq!(
        runs_of(&history(store, HistoryQuery::stream(&s, 10)).await),
        newest_first[..3],
        "{b}: the last three runs, newest first"
    );
    assert_eq!(
        runs_of(&history(store, HistoryQuery::stream(&s, 2)).await),
        newest_first[..2],
        "{b}: a limit"
    );
    assert!(
        history(store, HistoryQuery::stream(&s, 0)).await.is_empty(),
        "{b}: limit 0"
    );
    let st = status(store, &s).await.unwrap();
    assert_eq!(st.last_run.as_ref(), Some(&runs[4]), "{b}: last run");
    assert_eq!(
        st.last_success.as_ref(),
        Some(&runs[0]),
        "{b}: the last successful run is kept when the history no longer holds it"
    );
    assert_eq!(
        store.last_run(&s).await.unwrap().as_ref(),
        Some(&runs[4]),
        "{b}: last_run"
    );
    assert_eq!(
        store.stream_status(&s).await.unwrap().as_ref(),
        Some(&st),
        "{b}: stream_status of one stream equals its entry of streams()"
    );

    // A larger bound keeps more from now on; a bound of 0 keeps the last run.
    let sixth = history_run(6, RunOutcome::Ok);
    record(store, &s, &sixth, 10).await;
    assert_eq!(
        history(store, HistoryQuery::stream(&s, 10)).await.len(),
        4,
        "{b}: a larger bound keeps what is there"
    );
    assert_eq!(
        status(store, &s).await.unwrap().last_success.as_ref(),
        Some(&sixth),
        "{b}: a successful run becomes the last success"
    );
    let seventh = history_run(7, RunOutcome::Error);
    record(store, &s, &seventh, 0).await;
    assert_eq!(
        runs_of(&history(store, HistoryQuery::stream(&s, 10)).await),
        [seventh],
        "{b}: keep 0 keeps the last run"
    );

    assert!(
        history(store, HistoryQuery::stream(&stream("history-none"), 10))
            .await
            .is_empty(),
        "{b}: an unknown stream has no history"
    );
    assert_eq!(
        snapshot(store, &[&s]).await.records,
        before,
        "{b}: recording runs changed records or cursors"
    );
    assert_eq!(
        max_seq(store).await,
        seq,
        "{b}: runs use no sequence number"
    );
    commit_page(store, &s, vec![added("b", 2, "b")]).await;
    subject.finish().await;
}

/// The history of every stream interleaves the streams' runs in the order they were
/// recorded, newest first, each with its stream; a run of a new stream creates its
/// status without a cursor.
pub async fn run_history_lists_every_stream_in_recording_order<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let (s1, s2) = (stream("history-1"), stream("history-2").with_variant("eu"));
    let mut want = Vec::new();
    for (n, s) in [(1, &s1), (2, &s2), (3, &s1), (4, &s2), (5, &s2)] {
        let run = history_run(n, RunOutcome::Ok);
        record(store, s, &run, 2).await;
        want.push(RunEntry {
            stream: s.clone(),
            run,
        });
    }
    // s2 keeps runs 4 and 5, s1 runs 1 and 3.
    want.remove(1);
    want.reverse();
    assert_eq!(
        history(store, HistoryQuery::all(100)).await,
        want,
        "{b}: every stream's runs, newest first"
    );
    assert_eq!(
        history(store, HistoryQuery::all(2)).await,
        want[..2],
        "{b}: every stream's runs with a limit"
    );
    let st = status(store, &s2).await.unwrap();
    assert_eq!(
        (st.state, st.live_records),
        (StreamState::default(), 0),
        "{b}: a stream known by its runs only"
    );
    commit_page(store, &s2, vec![added("x", 1, "x")]).await;
    subject.finish().await;
}

/// A durable store keeps its run history and its order across a reopen: a run recorded
/// afterwards is the newest.
pub async fn run_history_survives_a_reopen<F: StoreFactory>(stores: &mut F) {
    let mut subject = Subject::fresh(stores).await;
    let (s1, s2) = (stream("history-reopen-1"), stream("history-reopen-2"));
    let store = subject.store();
    let b = backend(store);
    record(store, &s1, &history_run(1, RunOutcome::Ok), 5).await;
    record(store, &s2, &history_run(2, RunOutcome::Error), 5).await;
    let before = history(store, HistoryQuery::all(100)).await;
    let statuses_before = statuses(store).await;
    subject.reopen(stores).await;
    let store = subject.store();
    assert_eq!(
        history(store, HistoryQuery::all(100)).await,
        before,
        "{b}: the history after a reopen"
    );
    assert_eq!(
        statuses(store).await,
        statuses_before,
        "{b}: last runs after a reopen"
    );
    let third = history_run(3, RunOutcome::Interrupted);
    record(store, &s1, &third, 5).await;
    let all = history(store, HistoryQuery::all(100)).await;
    assert_eq!(
        (all.len(), &all[0].run, &all[0].stream),
        (3, &third, &s1),
        "{b}: a run recorded after a reopen is the newest"
    );
    subject.finish().await;
}

/// A `list` that runs while large commits are applied sees the state before or after
/// each commit, never a mix of the two.
pub async fn reads_during_commit_see_old_or_new<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("concurrent");
    const N: usize = 3_000;
    const ROUNDS: i64 = 6;
    let writer = async {
        for round in 0..ROUNDS {
            let t = round * 10_000;
            let records = (0..N)
                .map(|i| {
                    version(
                        &format!("r{i:05}"),
                        t + i as i64,
                        LastAction::Updated,
                        json!({"id": i, "round": round}),
                    )
                })
                .collect();
            commit_page(store, &s, records).await;
        }
    };
    let reader = async {
        let mut reads = 0u32;
        let mut rounds_seen = std::collections::BTreeSet::new();
        let q = ListQuery {
            after_id: None,
            limit: N + 10,
            include_deleted: true,
            change: None,
        };
        loop {
            let recs = store
                .list(&s, &q)
                .await
                .unwrap_or_else(|e| panic!("{b}: list during commit: {e}"));
            reads += 1;
            if recs.is_empty() {
                tokio::task::yield_now().await;
                continue;
            }
            assert_eq!(recs.len(), N, "{b}: a read saw part of a commit");
            let first = Seen::from(&recs[0]);
            let round = first.payload["round"].clone();
            for r in &recs {
                let seen = Seen::from(r);
                assert_eq!(
                    seen.payload["round"], round,
                    "{b}: a read mixed two commits ({})",
                    r.id
                );
                assert_eq!(
                    seen.seq, first.seq,
                    "{b}: a read mixed two commits' seq ({})",
                    r.id
                );
            }
            rounds_seen.insert(round.as_i64().unwrap());
            if round == json!(ROUNDS - 1) {
                return (reads, rounds_seen);
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), (reads, rounds_seen)) = futures::join!(writer, reader);
    assert!(
        reads >= 1 && rounds_seen.contains(&(ROUNDS - 1)),
        "{b}: reader saw {rounds_seen:?}"
    );
    subject.finish().await;
}

/// Quotes, `;`, `'--`, `%`, `_`, backslashes, unicode, emoji and 255-character strings
/// in every key field (integration, connection, model, variant, record id, cursor) are
/// stored and read back verbatim, and never collide.
pub async fn hostile_strings_round_trip<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let long: String = std::iter::repeat_n('é', 250)
        .chain("'😀;%\\".chars())
        .collect();
    assert_eq!(long.chars().count(), 255);
    let hostile = [
        "'",
        "\"",
        "';--",
        "'); DROP TABLE records; --",
        "Robert'); DROP TABLE streams;--",
        "%",
        "_",
        "\\",
        "\\'",
        "$1",
        "日本語",
        "😀🎉",
        "a\tb",
        "a\nb",
        "\u{1}x",
        long.as_str(),
    ];
    let mut keys = Vec::new();
    for (i, h) in hostile.iter().enumerate() {
        let n = hostile.len();
        let key = StreamKey {
            integration: (*h).to_string(),
            connection: hostile[(i + 1) % n].to_string(),
            model: hostile[(i + 2) % n].to_string(),
            variant: hostile[(i + 3) % n].to_string(),
        };
        let mut records = Vec::new();
        for (j, id) in hostile.iter().enumerate() {
            let mut r = added(id, j as i64, h);
            r.meta.cursor = Cursor(format!("{}{}", hostile[(i + j) % n], id));
            records.push(r);
        }
        let out = commit_page(store, &key, records.clone()).await;
        assert_eq!(
            out.counts.added,
            hostile.len() as u64,
            "{b}: hostile stream {i}"
        );
        keys.push((key, records));
    }
    for (key, records) in &keys {
        let st = state(store, key).await;
        assert_eq!(
            st.cursor.as_ref(),
            Some(&records.last().unwrap().meta.cursor),
            "{b}: hostile cursor of {key:?}"
        );
        for r in records {
            let got = get(store, key, &r.id)
                .await
                .unwrap_or_else(|| panic!("{b}: {:?} in {key:?} missing", r.id));
            assert_eq!(got.id, r.id, "{b}: hostile id");
            assert_eq!(got.meta, r.meta, "{b}: hostile cursor of {:?}", r.id);
            assert_eq!(
                Seen::from(&got).payload,
                r.payload.to_value(),
                "{b}: payload of {:?}",
                r.id
            );
        }
        let listed: Vec<String> = all(store, key, true)
            .await
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut expected: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
        expected.sort_unstable();
        assert_eq!(
            listed, expected,
            "{b}: hostile ids listed in code-point order"
        );
        // A second page finds each hostile id's stored version, and updates it.
        let newer: Vec<Record> = records
            .iter()
            .map(|r| {
                let mut u = updated(&r.id, 1_000, "again");
                u.meta.cursor = Cursor(format!("{}+", r.meta.cursor.as_str()));
                u
            })
            .collect();
        let out = commit_page(store, key, newer.clone()).await;
        assert_eq!(
            (out.counts.updated, out.counts.added),
            (hostile.len() as u64, 0),
            "{b}: hostile ids found again in {key:?}"
        );
        for r in &newer {
            let got = get(store, key, &r.id).await.expect("updated record");
            assert_eq!(got.meta, r.meta, "{b}: updated hostile id {:?}", r.id);
        }
        let msg = format!("{}{}", key.integration, key.model);
        store.set_upstream_error(key, Some(&msg)).await.unwrap();
        assert_eq!(
            status(store, key).await.unwrap().upstream_error,
            Some(msg),
            "{b}: hostile error text"
        );
    }
    let listed = statuses(store).await;
    for (key, _) in &keys {
        assert_eq!(
            listed.iter().filter(|s| &s.stream == key).count(),
            1,
            "{b}: {key:?} listed once, verbatim"
        );
    }
    // Hostile cursors in a conflict error come back verbatim too.
    let (key, records) = &keys[3];
    let mut c = page(store, key, vec![]).await;
    c.expected_cursor = Some(Cursor("'; --".into()));
    match store.commit(c).await {
        Err(Error::CursorConflict { actual, .. }) => {
            assert_eq!(
                actual.as_deref(),
                Some(format!("{}+", records.last().unwrap().meta.cursor.as_str()).as_str()),
                "{b}: conflict cursor (the second page's)"
            )
        }
        other => panic!("{b}: expected a conflict, got {other:?}"),
    }
    subject.finish().await;
}

// ---------------------------------------------------------------------------------------
// The application's side: the change feed, named consumers, subscriptions and reads
// ---------------------------------------------------------------------------------------

/// The feed lists exactly the records each commit changed, with the right kind, at the
/// commit's sequence number, compacted: adds, updates, a stale and a repeated page (no
/// entry, the records keep their sequence numbers), an `{id}` delete (the tombstone keeps
/// its payload), an undelete, a prune, an id added and updated in one page (`added`), a
/// live record deleted and added again in one page (`updated`), and a full re-read's
/// sweep (`deleted`).
pub async fn feed_lists_every_change_once<F: StoreFactory>(stores: &mut F) {
    use ChangeKind::{Added, Deleted, Updated};
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("feed");
    assert_eq!(feed_since(store, 0).await, [], "{b}: an empty store's feed");

    let o1 = commit_page(
        store,
        &s,
        vec![
            added("a", 1, "a1"),
            added("b", 2, "b1"),
            added("c", 3, "c1"),
        ],
    )
    .await;
    let want = [
        entry(o1.seq, "a", Added),
        entry(o1.seq, "b", Added),
        entry(o1.seq, "c", Added),
    ];
    assert_eq!(feed_since(store, 0).await, want, "{b}: adds");

    let o2 = commit_page(store, &s, vec![updated("a", 4, "a2")]).await;
    assert_eq!(
        feed_since(store, o1.seq).await,
        [entry(o2.seq, "a", Updated)],
        "{b}: an update"
    );
    assert_eq!(
        feed_since(store, 0).await,
        [
            entry(o1.seq, "b", Added),
            entry(o1.seq, "c", Added),
            entry(o2.seq, "a", Updated)
        ],
        "{b}: a record changed twice appears once, at its last change"
    );

    // A stale version of "a" and the same version of "b" again.
    let o3 = commit_page(store, &s, vec![updated("a", 2, "old"), added("b", 2, "b1")]).await;
    assert_eq!(o3.counts, counts(0, 0, 0, 1, 1), "{b}: stale and unchanged");
    assert_eq!(
        feed_since(store, o2.seq).await,
        [],
        "{b}: stale and repeated records are not changes"
    );
    assert_eq!(store.last_seq().await.unwrap(), o3.seq, "{b}: last_seq");

    let o4 = commit_page(store, &s, vec![deleted_bare("b", 5)]).await;
    let got = read_feed(store, o3.seq.into(), &StreamFilter::all(), 10).await;
    assert_eq!(got.len(), 1, "{b}: an {{id}} delete");
    assert_eq!(
        (got[0].seq(), got[0].id(), got[0].kind),
        (o4.seq, "b", Deleted)
    );
    assert!(
        got[0].record.is_deleted(),
        "{b}: the change's record is a tombstone"
    );
    assert_eq!(
        got[0].record.payload.to_value(),
        json!({"id": "b", "title": "b1"}),
        "{b}: the tombstone keeps the payload"
    );
    assert!(
        got[0].live().is_none(),
        "{b}: a deletion has no live record"
    );

    let o5 = commit_page(store, &s, vec![added("b", 6, "b2")]).await;
    assert_eq!(
        feed_since(store, o4.seq).await,
        [entry(o5.seq, "b", Added)],
        "{b}: an undelete is added"
    );

    let o6 = commit_page(store, &s, vec![pruned("c", 7)]).await;
    let got = read_feed(store, o5.seq.into(), &StreamFilter::all(), 10).await;
    assert_eq!(got.len(), 1, "{b}: a prune");
    assert_eq!((got[0].id(), got[0].kind), ("c", Updated), "{b}: a prune");
    assert_eq!(
        got[0].record.payload.to_value(),
        json!({"id": "c", "title": "c1"}),
        "{b}: a pruned record's change keeps the payload"
    );

    let o7 = commit_page(store, &s, vec![added("d", 8, "d1"), updated("d", 9, "d2")]).await;
    let got = read_feed(store, o6.seq.into(), &StreamFilter::all(), 10).await;
    assert_eq!(
        got.iter()
            .map(|c| (c.seq(), c.id().to_owned(), c.kind))
            .collect::<Vec<_>>(),
        [entry(o7.seq, "d", Added)],
        "{b}: a record added and updated in one page is added"
    );
    assert_eq!(
        got[0].record.payload.to_value(),
        json!({"id": "d", "title": "d2"})
    );

    let o8 = commit_page(store, &s, vec![deleted_bare("a", 10), added("a", 11, "a3")]).await;
    assert_eq!(
        feed_since(store, o7.seq).await,
        [entry(o8.seq, "a", Updated)],
        "{b}: a live record deleted and added again in one page is updated"
    );

    // A full re-read sees a and b only: c and d are swept.
    let mut c = page(store, &s, vec![added("a", 11, "a3"), added("b", 6, "b2")]).await;
    c.full_read = Some(FullRead {
        generation: 1,
        complete: true,
    });
    let o9 = commit(store, c).await;
    assert_eq!(o9.swept, 2, "{b}: swept");
    assert_eq!(
        feed_since(store, o8.seq).await,
        [entry(o9.seq, "c", Deleted), entry(o9.seq, "d", Deleted)],
        "{b}: a sweep's deletions"
    );
    assert_eq!(
        feed_since(store, 0).await,
        [
            entry(o5.seq, "b", Added),
            entry(o8.seq, "a", Updated),
            entry(o9.seq, "c", Deleted),
            entry(o9.seq, "d", Deleted),
        ],
        "{b}: the whole feed, compacted"
    );
    // Every change carries the record as `get` reads it.
    for change in read_feed(store, FeedPosition::START, &StreamFilter::all(), 10).await {
        assert_eq!(
            Some(&change.record),
            get(store, &s, change.id()).await.as_ref(),
            "{b}: the change's record is the stored one"
        );
        assert_eq!(change.stream, s, "{b}: the change's stream");
    }
    subject.finish().await;
}

/// A large commit is read a few changes at a time through positions inside it (any
/// limit gives the same feed); a position can name an id the commit does not hold; the
/// feed is filtered by integration, connection, model and variant, and a filtered read
/// moves its next position past the changes of other streams; a limit of 0 reads
/// nothing and stays; a position past the last commit reads nothing.
pub async fn feed_pages_inside_a_commit_and_filters<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let tickets = StreamKey::new("conformance", "feed-page", "Ticket");
    let contacts = StreamKey::new("conformance", "feed-page", "Contact");
    let other = StreamKey::new("other", "feed-page", "Ticket");
    let eu = tickets.clone().with_variant("eu");
    let big = (0..25)
        .map(|i| added(&format!("r{i:02}"), i, "t"))
        .collect::<Vec<_>>();
    let o1 = commit_page(store, &tickets, big).await;
    let o2 = commit_page(
        store,
        &other,
        (0..5).map(|i| added(&format!("o{i}"), i, "o")).collect(),
    )
    .await;
    let o3 = commit_page(
        store,
        &contacts,
        (0..3).map(|i| added(&format!("c{i}"), i, "c")).collect(),
    )
    .await;
    let o4 = commit_page(store, &eu, vec![added("e0", 1, "e"), added("e1", 2, "e")]).await;
    let o5 = commit_page(
        store,
        &tickets,
        vec![
            updated("r03", 100, "u"),
            updated("r17", 101, "u"),
            updated("r20", 102, "u"),
            updated("r09", 103, "u"),
        ],
    )
    .await;
    let all = StreamFilter::all();
    let whole = read_feed(store, FeedPosition::START, &all, 1000).await;
    assert_eq!(whole.len(), 21 + 5 + 3 + 2 + 4, "{b}: the whole feed");
    for limit in [1, 3, 7] {
        let paged = read_feed(store, FeedPosition::START, &all, limit).await;
        assert_eq!(paged, whole, "{b}: the feed read {limit} at a time");
    }
    // Positions inside the first commit, at ids it holds and at one it does not.
    let inside = read_feed(store, FeedPosition::after_change(o1.seq, "r10"), &all, 1000).await;
    assert_eq!(
        inside.first().map(Change::id),
        Some("r11"),
        "{b}: after r10"
    );
    // r00..r10 of the first commit, less r03 and r09 (changed again since).
    assert_eq!(inside.len(), whole.len() - 9, "{b}: after r10");
    let between = read_feed(
        store,
        FeedPosition::after_change(o1.seq, "r10x"),
        &all,
        1000,
    )
    .await;
    assert_eq!(between, inside, "{b}: after an id the commit does not hold");
    let end = read_feed(store, FeedPosition::after_change(o1.seq, "zz"), &all, 1000).await;
    assert_eq!(
        end.first().map(|c| c.seq()),
        Some(o2.seq),
        "{b}: after the last id of a commit"
    );

    // Filters.
    let ids =
        |changes: &[Change]| -> Vec<String> { changes.iter().map(|c| c.id().to_owned()).collect() };
    let only_other = read_feed(
        store,
        FeedPosition::START,
        &StreamFilter::integration("other"),
        2,
    )
    .await;
    assert_eq!(
        ids(&only_other),
        ["o0", "o1", "o2", "o3", "o4"],
        "{b}: by integration"
    );
    let conn = StreamFilter::connection("conformance", "feed-page");
    let by_conn = read_feed(store, FeedPosition::START, &conn, 4).await;
    assert_eq!(by_conn.len(), 21 + 3 + 2 + 4, "{b}: by connection");
    let by_model = read_feed(
        store,
        FeedPosition::START,
        &conn.clone().with_model("Contact"),
        1000,
    )
    .await;
    assert_eq!(ids(&by_model), ["c0", "c1", "c2"], "{b}: by model");
    let by_variant = read_feed(store, FeedPosition::START, &StreamFilter::stream(&eu), 1).await;
    assert_eq!(ids(&by_variant), ["e0", "e1"], "{b}: by variant");
    let base = read_feed(store, o4.seq.into(), &StreamFilter::stream(&tickets), 1000).await;
    assert_eq!(
        ids(&base),
        ["r03", "r09", "r17", "r20"],
        "{b}: one stream, since o4"
    );

    // A filtered read that finds nothing moves past what it scanned.
    let batch = store
        .changes(&ChangeQuery::since(o1.seq).with_filter(StreamFilter::integration("nobody")))
        .await
        .unwrap();
    assert!(batch.is_empty(), "{b}: nothing matches");
    assert_eq!(
        batch.next,
        FeedPosition::after_commit(o5.seq),
        "{b}: a filtered read moves past the changes it skipped"
    );
    // A full batch resumes after its last change.
    let batch = store
        .changes(&ChangeQuery::since(FeedPosition::START).with_limit(2))
        .await
        .unwrap();
    assert_eq!(
        batch.next,
        FeedPosition::after_change(o1.seq, "r01"),
        "{b}: a full batch's next position"
    );
    let batch = store
        .changes(&ChangeQuery::since(o3.seq).with_limit(0))
        .await
        .unwrap();
    assert!(batch.is_empty(), "{b}: limit 0");
    assert_eq!(
        batch.next,
        FeedPosition::after_commit(o3.seq),
        "{b}: limit 0 stays"
    );
    let past = FeedPosition::after_commit(o5.seq + 10);
    let batch = store
        .changes(&ChangeQuery::since(past.clone()))
        .await
        .unwrap();
    assert!(batch.is_empty(), "{b}: past the last commit");
    assert_eq!(batch.next, past, "{b}: a read never moves a position back");
    subject.finish().await;
}

/// Sequence numbers never go back: across streams, every commit gets a larger number
/// than the one before, the records of one commit share its number, a commit that
/// changes nothing has no entry, and a reader that resumes from its last position after
/// each commit sees exactly the records the commit changed.
pub async fn feed_sequence_never_goes_back<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let keys = [stream("seq-a"), stream("seq-b"), stream("seq-c")];
    let mut position = FeedPosition::START;
    let mut last = 0;
    for round in 0..12i64 {
        let s = &keys[(round % 3) as usize];
        let records = match round % 4 {
            // New records.
            0 | 1 => (0..4)
                .map(|i| added(&format!("r{round}-{i}"), round * 10 + i, "x"))
                .collect(),
            // Updates of records of this stream, and an unchanged one.
            2 => {
                let mut held = all(store, s, false).await;
                held.truncate(3);
                let mut page: Vec<Record> = held
                    .iter()
                    .map(|r| updated(&r.id, round * 10 + 5, "y"))
                    .collect();
                if let Some(r) = all(store, s, false).await.last() {
                    page.push(version(
                        &r.id,
                        r.meta.last_modified_at.as_micros() - ts(0).as_micros(),
                        r.meta.last_action,
                        r.payload.to_value(),
                    ));
                }
                page
            }
            // Nothing new.
            _ => vec![],
        };
        let out = commit_page(store, s, records).await;
        assert!(out.seq > last, "{b}: commit {} after {last}", out.seq);
        last = out.seq;
        let new = read_feed(store, position.clone(), &StreamFilter::all(), 3).await;
        assert_eq!(
            new.len() as u64,
            out.counts.changed(),
            "{b}: round {round}: a reader resuming from its position sees exactly the commit's changes"
        );
        for c in &new {
            assert_eq!(
                c.seq(),
                out.seq,
                "{b}: the records of one commit share its number"
            );
            assert_eq!(&c.stream, s, "{b}: a commit's changes are its stream's");
        }
        if let Some(c) = new.last() {
            position = c.position();
        }
        assert_eq!(store.last_seq().await.unwrap(), out.seq, "{b}: last_seq");
    }
    subject.finish().await;
}

/// A named consumer's position starts at the start of the feed, moves forward with each
/// acknowledgement and never back (an older position is ignored, and the stored one
/// returned), refuses a position past the last commit and a bad name, is listed by
/// `consumers` and forgotten by `remove_consumer`; independent consumers keep their own
/// positions.
pub async fn consumers_never_move_back<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("consumers");
    let o1 = commit_page(store, &s, vec![added("a", 1, "a"), added("b", 2, "b")]).await;
    let o2 = commit_page(store, &s, vec![added("c", 3, "c"), added("d", 4, "d")]).await;
    let pos = |name: &'static str| async move {
        store
            .consumer_position(name)
            .await
            .unwrap_or_else(|e| panic!("{b}: consumer_position({name}): {e}"))
    };
    assert_eq!(
        pos("search").await,
        FeedPosition::START,
        "{b}: a new consumer"
    );
    let ack = |name: &'static str, p: FeedPosition| async move {
        store
            .ack(name, &p)
            .await
            .unwrap_or_else(|e| panic!("{b}: ack({name}, {p}): {e}"))
    };
    assert_eq!(ack("search", o1.seq.into()).await, o1.seq.into());
    assert_eq!(
        ack("search", FeedPosition::after_change(o1.seq, "a")).await,
        o1.seq.into(),
        "{b}: an older position is ignored"
    );
    assert_eq!(ack("search", FeedPosition::START).await, o1.seq.into());
    assert_eq!(
        ack("search", FeedPosition::after_change(o2.seq, "c")).await,
        FeedPosition::after_change(o2.seq, "c"),
        "{b}: a position inside a commit"
    );
    assert_eq!(
        ack("search", FeedPosition::after_change(o2.seq, "b")).await,
        FeedPosition::after_change(o2.seq, "c"),
        "{b}: an earlier id of the same commit is ignored"
    );
    assert_eq!(
        ack("search", o2.seq.into()).await,
        o2.seq.into(),
        "{b}: the commit's end"
    );
    assert_eq!(pos("search").await, o2.seq.into());

    let err = store
        .ack("search", &FeedPosition::after_commit(o2.seq + 1))
        .await
        .expect_err("a position past the last commit is refused");
    assert!(matches!(err, Error::Invalid { .. }), "{b}: {err}");
    assert_eq!(
        pos("search").await,
        o2.seq.into(),
        "{b}: a refused ack changes nothing"
    );
    for bad in ["", "a\nb"] {
        assert!(
            matches!(
                store.ack(bad, &FeedPosition::START).await,
                Err(Error::Invalid { .. })
            ),
            "{b}: consumer name {bad:?}"
        );
    }

    // A second consumer, independent; hostile names are kept verbatim.
    let hostile = "'; DROP TABLE consumers; -- 日本 😀";
    assert_eq!(ack(hostile, o1.seq.into()).await, o1.seq.into());
    assert_eq!(pos(hostile).await, o1.seq.into());
    assert_eq!(pos("search").await, o2.seq.into());
    let listed = store.consumers().await.unwrap();
    let mut want = vec![
        Consumer {
            name: hostile.to_owned(),
            position: o1.seq.into(),
        },
        Consumer {
            name: "search".to_owned(),
            position: o2.seq.into(),
        },
    ];
    want.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    assert_eq!(listed, want, "{b}: consumers, by name");
    assert!(
        store.remove_consumer(hostile).await.unwrap(),
        "{b}: removed"
    );
    assert!(
        !store.remove_consumer(hostile).await.unwrap(),
        "{b}: removed twice"
    );
    assert_eq!(
        pos(hostile).await,
        FeedPosition::START,
        "{b}: a removed consumer starts over"
    );
    subject.finish().await;
}

/// A durable store keeps consumer positions and the change feed (kinds included) when it
/// is closed and opened again, and the feed continues after it.
pub async fn consumer_positions_survive_reopen<F: StoreFactory>(stores: &mut F) {
    let mut subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("reopen-feed");
    let o1 = commit_page(store, &s, vec![added("a", 1, "a"), added("b", 2, "b")]).await;
    let o2 = commit_page(store, &s, vec![updated("a", 3, "a2"), deleted_bare("b", 4)]).await;
    store.ack("first", &o1.seq.into()).await.unwrap();
    store
        .ack("second", &FeedPosition::after_change(o2.seq, "a"))
        .await
        .unwrap();
    let feed_before = feed_since(store, 0).await;
    subject.reopen(stores).await;
    let store = subject.store();
    assert_eq!(
        feed_since(store, 0).await,
        feed_before,
        "{b}: the feed after a reopen"
    );
    assert_eq!(
        store.consumer_position("first").await.unwrap(),
        o1.seq.into(),
        "{b}: a position after a reopen"
    );
    assert_eq!(
        store.consumer_position("second").await.unwrap(),
        FeedPosition::after_change(o2.seq, "a"),
        "{b}: a position inside a commit after a reopen"
    );
    let o3 = commit_page(store, &s, vec![added("c", 5, "c")]).await;
    let position = store.consumer_position("second").await.unwrap();
    let rest = read_feed(store, position, &StreamFilter::all(), 10).await;
    assert_eq!(
        rest.iter()
            .map(|c| (c.seq(), c.id().to_owned(), c.kind))
            .collect::<Vec<_>>(),
        [
            entry(o2.seq, "b", ChangeKind::Deleted),
            entry(o3.seq, "c", ChangeKind::Added)
        ],
        "{b}: a consumer resumes where it stopped"
    );
    subject.finish().await;
}

/// `count` gives the live and deleted records of a stream (no scan); `list` filters by
/// change kind; typed reads (`get_as`, `list_as`) deserialize live records into the
/// application's own types and never a tombstone, and name a record whose payload does
/// not fit; `get_live` leaves tombstones out; `list_across` reads every stream of a
/// connection in stream then id order, a page at a time.
pub async fn counts_kind_filters_and_typed_reads<F: StoreFactory>(stores: &mut F) {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Ticket {
        id: String,
        title: String,
    }
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = StreamKey::new("typed", "acme", "Ticket");
    commit_page(
        store,
        &s,
        vec![
            added("a", 1, "alpha"),
            added("b", 2, "beta"),
            added("c", 3, "gamma"),
            added("d", 4, "delta"),
        ],
    )
    .await;
    commit_page(
        store,
        &s,
        vec![
            updated("b", 5, "beta 2"),
            deleted_bare("c", 6),
            updated("d", 7, "delta 2"),
        ],
    )
    .await;
    assert_eq!(
        store.count(&s).await.unwrap(),
        RecordCounts {
            live: 3,
            deleted: 1
        },
        "{b}: count"
    );
    assert_eq!(
        store.count(&stream("never")).await.unwrap(),
        RecordCounts::default(),
        "{b}: count of an unknown stream"
    );
    let kind_ids = |kind: ChangeKind, limit: usize| {
        let s = &s;
        async move {
            let mut out = Vec::new();
            let mut q = ListQuery::first(limit).only(kind);
            loop {
                let page = store.list(s, &q).await.unwrap();
                let done = page.len() < limit;
                q.after_id = page.last().map(|r| r.id.clone());
                out.extend(page.into_iter().map(|r| r.id));
                if done {
                    return out;
                }
            }
        }
    };
    assert_eq!(kind_ids(ChangeKind::Added, 1).await, ["a"], "{b}: added");
    assert_eq!(
        kind_ids(ChangeKind::Updated, 1).await,
        ["b", "d"],
        "{b}: updated"
    );
    assert_eq!(
        kind_ids(ChangeKind::Deleted, 10).await,
        ["c"],
        "{b}: deleted"
    );

    assert_eq!(
        store.get_as::<Ticket>(&s, "b").await.unwrap(),
        Some(Ticket {
            id: "b".into(),
            title: "beta 2".into()
        }),
        "{b}: get_as"
    );
    assert_eq!(
        store.get_as::<Ticket>(&s, "c").await.unwrap(),
        None,
        "{b}: a tombstone is never deserialized"
    );
    assert!(
        store.get(&s, "c").await.unwrap().is_some(),
        "{b}: get sees the tombstone"
    );
    assert!(
        store.get_live(&s, "c").await.unwrap().is_none(),
        "{b}: get_live does not"
    );
    assert_eq!(
        store.get_as::<Ticket>(&s, "zz").await.unwrap(),
        None,
        "{b}: missing"
    );
    let typed = store
        .list_as::<Ticket>(&s, &ListQuery::first(10))
        .await
        .unwrap();
    assert_eq!(
        typed
            .iter()
            .map(|(id, t)| (id.as_str(), t.title.as_str()))
            .collect::<Vec<_>>(),
        [("a", "alpha"), ("b", "beta 2"), ("d", "delta 2")],
        "{b}: list_as"
    );
    assert!(
        matches!(
            store
                .list_as::<Ticket>(&s, &ListQuery::first(10).with_deleted())
                .await,
            Err(Error::Invalid { .. })
        ),
        "{b}: list_as refuses tombstones"
    );
    // A payload that does not fit the type is an error naming the record.
    commit_page(
        store,
        &s,
        vec![version(
            "e",
            8,
            LastAction::Added,
            json!({"id": "e", "title": 5}),
        )],
    )
    .await;
    match store.get_as::<Ticket>(&s, "e").await {
        Err(Error::Deserialize { id, stream, .. }) => {
            assert_eq!((id.as_str(), stream), ("e", s.to_string()), "{b}")
        }
        other => panic!("{b}: a payload that does not fit: {other:?}"),
    }

    // Every stream of a connection.
    let contacts = StreamKey::new("typed", "acme", "Contact");
    let elsewhere = StreamKey::new("typed", "globex", "Contact");
    commit_page(
        store,
        &contacts,
        vec![added("x", 1, "x"), added("y", 2, "y")],
    )
    .await;
    commit_page(store, &elsewhere, vec![added("z", 1, "z")]).await;
    let mut read = Vec::new();
    let mut q = ListAcross::new(StreamFilter::connection("typed", "acme"), 2);
    loop {
        let page = store.list_across(&q).await.unwrap();
        assert!(page.len() <= 2, "{b}: list_across limit");
        let Some((stream, record)) = page.last() else {
            break;
        };
        q = q.clone().after(stream.clone(), record.id.clone());
        read.extend(page.into_iter().map(|(s, r)| (s.model, r.id)));
    }
    let want: Vec<(String, String)> = [
        ("Contact", "x"),
        ("Contact", "y"),
        ("Ticket", "a"),
        ("Ticket", "b"),
        ("Ticket", "d"),
        ("Ticket", "e"),
    ]
    .iter()
    .map(|(m, id)| (m.to_string(), id.to_string()))
    .collect();
    assert_eq!(read, want, "{b}: every live record of a connection");
    let deleted = store
        .list_across(
            &ListAcross::new(StreamFilter::integration("typed"), 100).only(ChangeKind::Deleted),
        )
        .await
        .unwrap();
    assert_eq!(
        deleted
            .iter()
            .map(|(s, r)| (s.model.as_str(), r.id.as_str()))
            .collect::<Vec<_>>(),
        [("Ticket", "c")],
        "{b}: the tombstones of an integration"
    );
    subject.finish().await;
}

/// `subscribe` wakes after each commit that changes records, with that commit's
/// sequence number, and the feed then holds its changes.
pub async fn subscribers_wake_after_each_commit<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let s = stream("wake");
    let mut commits = store.subscribe();
    commits.borrow_and_update();
    let mut seen = FeedPosition::START;
    for round in 0..3i64 {
        let out = commit_page(store, &s, vec![added(&format!("r{round}"), round, "x")]).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), commits.changed())
            .await
            .unwrap_or_else(|_| panic!("{b}: round {round}: no wake-up within 10 s of a commit"))
            .unwrap_or_else(|_| panic!("{b}: the store dropped its commit signal"));
        assert!(
            *commits.borrow_and_update() >= out.seq,
            "{b}: the signal carries the commit's number"
        );
        let new = read_feed(store, seen.clone(), &StreamFilter::all(), 10).await;
        assert_eq!(new.len(), 1, "{b}: round {round}: the commit's change");
        seen = new[0].position();
    }
    subject.finish().await;
}

/// Gapless under concurrency: while three writers commit on three streams at the same
/// time (new records and updates of earlier ones), a reader that always resumes from the
/// position its last read returned sees positions only move forward, and at the end has
/// seen the last change of every record (a commit that became visible after a reader
/// had moved past its sequence number would be missed).
pub async fn feed_is_gapless_under_concurrent_commits<F: StoreFactory>(stores: &mut F) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    const WRITERS: usize = 3;
    const ROUNDS: i64 = 15;
    let running = AtomicUsize::new(WRITERS);
    let writer = |w: usize| {
        let running = &running;
        async move {
            let s = stream(&format!("gapless-{w}"));
            for round in 0..ROUNDS {
                // A few new records, and an update of one of the previous round's.
                let mut page: Vec<Record> = (0..1 + (round as usize + w) % 4)
                    .map(|i| added(&format!("r{round}-{i}"), round * 10 + i as i64, "x"))
                    .collect();
                if round > 0 {
                    page.push(updated(&format!("r{}-0", round - 1), round * 10 + 9, "y"));
                }
                commit_page(store, &s, page).await;
                tokio::task::yield_now().await;
            }
            running.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let reader = async {
        let mut seen: BTreeMap<FeedPosition, (StreamKey, ChangeKind)> = BTreeMap::new();
        let mut query = ChangeQuery::since(FeedPosition::START).with_limit(4);
        loop {
            let done = running.load(Ordering::SeqCst) == 0;
            let batch = store
                .changes(&query)
                .await
                .unwrap_or_else(|e| panic!("{b}: changes failed: {e}"));
            for c in &batch.changes {
                assert!(
                    c.position() > query.since,
                    "{b}: {} at or before the reader's position {}",
                    c.position(),
                    query.since
                );
                seen.insert(c.position(), (c.stream.clone(), c.kind));
            }
            assert!(batch.next >= query.since, "{b}: the position moved back");
            let caught_up = batch.changes.len() < query.limit;
            query.since = batch.next;
            if done && caught_up {
                return seen;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), (), (), seen) = tokio::join!(writer(0), writer(1), writer(2), reader);
    let all = read_feed(store, FeedPosition::START, &StreamFilter::all(), 1000).await;
    assert!(!all.is_empty());
    for c in &all {
        assert_eq!(
            seen.get(&c.position()),
            Some(&(c.stream.clone(), c.kind)),
            "{b}: the reader missed {} {} at {}",
            c.stream,
            c.id(),
            c.position()
        );
    }
    subject.finish().await;
}

// ---------------------------------------------------------------------------------------
// The outbox
// ---------------------------------------------------------------------------------------

/// A new item of the conformance connection, enqueued at `t`.
fn new_item(action: &str, t: i64) -> NewOutboxItem {
    NewOutboxItem::new("conformance", "outbox", action).at(ts(t))
}

fn claim_req(worker: &str, t: i64, lease_micros: u64) -> ClaimRequest {
    ClaimRequest {
        worker: worker.to_string(),
        now: ts(t),
        lease: std::time::Duration::from_micros(lease_micros),
    }
}

async fn enqueue<S: RecordSink>(store: &S, item: NewOutboxItem) -> OutboxItem {
    let b = backend(store);
    store
        .outbox_enqueue(item)
        .await
        .unwrap_or_else(|e| panic!("{b}: enqueue failed: {e}"))
}

async fn claim_one<S: RecordSink>(store: &S, req: &ClaimRequest) -> Option<OutboxItem> {
    let b = backend(store);
    store
        .outbox_claim(req)
        .await
        .unwrap_or_else(|e| panic!("{b}: claim failed: {e}"))
}

async fn settle<S: RecordSink>(store: &S, claim: &Claim, s: Settlement, t: i64) -> bool {
    let b = backend(store);
    store
        .outbox_settle(claim, s, ts(t))
        .await
        .unwrap_or_else(|e| panic!("{b}: settle failed: {e}"))
}

async fn outbox_item<S: RecordSink>(store: &S, id: u64) -> OutboxItem {
    let b = backend(store);
    store
        .outbox_get(id)
        .await
        .unwrap_or_else(|e| panic!("{b}: outbox_get failed: {e}"))
        .unwrap_or_else(|| panic!("{b}: outbox item {id} is missing"))
}

fn output(v: Value) -> RawJson {
    RawJson::from_trusted(v.to_string())
}

/// Enqueued items are stored with everything they carry (input, key, then-sync models,
/// attempts, times), read back by id and listed in id order with paging and a state
/// filter; an idempotency key already used returns the first item unchanged; an item
/// that breaks Nango's rules is refused and stores nothing.
pub async fn outbox_enqueue_get_and_list<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        OutboxCounts::default(),
        "{b}: a new store has an empty outbox"
    );
    let first = enqueue(
        store,
        new_item("create-issue", 1)
            .input(&json!({"title": "Café 'quoted' \"x\" ✓", "n": 9007199254740993u64, "tags": ["a", "b"]}))
            .unwrap()
            .key("order-1")
            .then_sync("Issue")
            .then_sync("Issue::eu")
            .max_attempts(3)
            .not_before(ts(50)),
    )
    .await;
    assert_eq!(first.state, OutboxState::Pending, "{b}");
    assert_eq!((first.attempts, first.max_attempts), (0, 3), "{b}");
    assert_eq!(first.then_sync, ["Issue", "Issue::eu"], "{b}");
    let bare = enqueue(store, new_item("ping", 2)).await;
    assert!(bare.id > first.id, "{b}: ids grow in enqueue order");
    assert_eq!(bare.input, None, "{b}");
    let again = enqueue(
        store,
        new_item("something-else", 3)
            .key("order-1")
            .input(&json!({"other": true}))
            .unwrap(),
    )
    .await;
    assert_eq!(again.id, first.id, "{b}: an idempotency key used again");
    assert_eq!(
        again.action, "create-issue",
        "{b}: the first item, unchanged"
    );
    for bad in [
        NewOutboxItem::new("conformance", "outbox", "bad name"),
        NewOutboxItem::new("bad key!", "outbox", "a"),
        NewOutboxItem::new("conformance", "outbox", "a").then_sync("issue"),
        NewOutboxItem::new("conformance", "outbox", "a").max_attempts(0),
    ] {
        let err = store.outbox_enqueue(bad).await.unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. }),
            "{b}: a bad item is an invalid-argument error: {err}"
        );
    }
    let got = outbox_item(store, first.id).await;
    assert_eq!(
        got.input.as_ref().map(RawJson::to_value),
        Some(
            json!({"title": "Café 'quoted' \"x\" ✓", "n": 9007199254740993u64, "tags": ["a", "b"]})
        ),
        "{b}: the input round-trips as JSON"
    );
    assert_eq!(got.available_at, ts(50), "{b}");
    assert_eq!(got.created_at, ts(1), "{b}");
    assert_eq!(
        store.outbox_get(first.id + 1000).await.unwrap(),
        None,
        "{b}"
    );
    for i in 0..5 {
        enqueue(store, new_item("bulk", 10 + i)).await;
    }
    // Paging in id order.
    let mut ids = Vec::new();
    let mut q = OutboxQuery::first(3);
    loop {
        let page = store.outbox_list(&q).await.unwrap();
        ids.extend(page.iter().map(|i| i.id));
        match page.last() {
            Some(last) if page.len() == 3 => q = OutboxQuery::first(3).after(last.id),
            _ => break,
        }
    }
    assert_eq!(ids.len(), 7, "{b}: every item listed once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{b}: in id order");
    // A state filter.
    let claimed = claim_one(store, &claim_req("w", 20, 1_000)).await.unwrap();
    assert_eq!(
        claimed.id, bare.id,
        "{b}: the first item is not available yet"
    );
    let running = store
        .outbox_list(&OutboxQuery::default().state(OutboxState::Running))
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "{b}");
    let pending_or_done = store
        .outbox_list(
            &OutboxQuery::default()
                .state(OutboxState::Pending)
                .state(OutboxState::Done),
        )
        .await
        .unwrap();
    assert_eq!(pending_or_done.len(), 6, "{b}");
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        OutboxCounts {
            pending: 6,
            running: 1,
            done: 0,
            failed: 0
        },
        "{b}"
    );
    subject.finish().await;
}

/// Claims take the oldest available item, hold it for their lease (extended by the
/// claim that holds it only), and only that claim settles it: done with the output,
/// failed with the error, or pending again not before a time; a pending item that
/// waits is claimed again, with one more attempt.
pub async fn outbox_claims_leases_and_settlements<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let a = enqueue(store, new_item("a", 1)).await;
    let c = enqueue(store, new_item("c", 2)).await;
    let later = enqueue(store, new_item("later", 3).not_before(ts(1_000))).await;

    let got = claim_one(store, &claim_req("w1", 10, 100)).await.unwrap();
    assert_eq!(got.id, a.id, "{b}: the oldest first");
    assert_eq!(got.state, OutboxState::Running, "{b}");
    assert_eq!(got.attempts, 1, "{b}");
    assert_eq!(got.worker.as_deref(), Some("w1"), "{b}");
    assert_eq!(got.lease_until, Some(ts(110)), "{b}");
    let claim_a = got.claim().unwrap();
    let got = claim_one(store, &claim_req("w2", 11, 600)).await.unwrap();
    assert_eq!(got.id, c.id, "{b}: a claimed item is not claimed again");
    let claim_c = got.claim().unwrap();
    assert_eq!(
        claim_one(store, &claim_req("w3", 12, 100)).await,
        None,
        "{b}: nothing is available before its time"
    );

    // Only the claim that holds an item extends it.
    assert!(
        store
            .outbox_extend(&claim_a, ts(500), ts(50))
            .await
            .unwrap(),
        "{b}"
    );
    let stranger = Claim {
        worker: "w9".into(),
        ..claim_a.clone()
    };
    assert!(
        !store
            .outbox_extend(&stranger, ts(900), ts(51))
            .await
            .unwrap(),
        "{b}: another worker's claim"
    );
    assert_eq!(
        outbox_item(store, a.id).await.lease_until,
        Some(ts(500)),
        "{b}"
    );
    assert_eq!(
        claim_one(store, &claim_req("w3", 200, 100)).await,
        None,
        "{b}: the extended lease still holds at 200"
    );

    // Done, with the output.
    assert!(
        settle(
            store,
            &claim_a,
            Settlement::Done {
                output: output(json!({"id": "issue-1", "url": "https://x/1"}))
            },
            300
        )
        .await,
        "{b}"
    );
    let done = outbox_item(store, a.id).await;
    assert_eq!(done.state, OutboxState::Done, "{b}");
    assert_eq!(done.finished_at, Some(ts(300)), "{b}");
    assert_eq!(done.lease_until, None, "{b}");
    assert_eq!(
        done.output.as_ref().map(RawJson::to_value),
        Some(json!({"id": "issue-1", "url": "https://x/1"})),
        "{b}"
    );
    assert!(
        !settle(
            store,
            &claim_a,
            Settlement::Failed {
                error: OutboxError::new("x", "y")
            },
            301
        )
        .await,
        "{b}: a settled item is settled once"
    );

    // Retry later: pending again with the error, not before `at`, then a new attempt.
    let error = OutboxError {
        status: Some(503),
        code: "service_unavailable".into(),
        message: Some("try later".into()),
        payload: Some(json!({"retry": true})),
    };
    assert!(
        settle(
            store,
            &claim_c,
            Settlement::Retry {
                error: error.clone(),
                at: ts(700)
            },
            310
        )
        .await,
        "{b}"
    );
    let waiting = outbox_item(store, c.id).await;
    assert_eq!(
        (waiting.state, waiting.available_at, waiting.error.clone()),
        (OutboxState::Pending, ts(700), Some(error.clone())),
        "{b}"
    );
    assert_eq!(
        claim_one(store, &claim_req("w1", 699, 100)).await,
        None,
        "{b}"
    );
    let again = claim_one(store, &claim_req("w1", 700, 100)).await.unwrap();
    assert_eq!(
        (again.id, again.attempts),
        (c.id, 2),
        "{b}: a second attempt"
    );
    assert_eq!(
        again.error,
        Some(error),
        "{b}: the last error stays while it runs"
    );

    // Failed, with Nango's error and payload.
    let failure = OutboxError {
        status: Some(424),
        code: "script_http_error".into(),
        message: Some("the provider answered HTTP 422".into()),
        payload: Some(json!({"message": "Validation failed", "errors": [{"field": "title"}]})),
    };
    assert!(
        settle(
            store,
            &again.claim().unwrap(),
            Settlement::Failed {
                error: failure.clone()
            },
            720
        )
        .await,
        "{b}"
    );
    let failed = outbox_item(store, c.id).await;
    assert_eq!(
        (failed.state, failed.error, failed.finished_at),
        (OutboxState::Failed, Some(failure), Some(ts(720))),
        "{b}"
    );
    let last = claim_one(store, &claim_req("w1", 1_000, 100))
        .await
        .unwrap();
    assert_eq!(last.id, later.id, "{b}: available at its time");
    subject.finish().await;
}

/// A claim whose worker died (its lease ran out) is claimed again by another worker,
/// with one more attempt; the dead worker's claim can no longer settle the item. After
/// the last attempt, a lease that runs out fails the item as abandoned.
pub async fn outbox_lease_runs_out_and_is_delivered_again<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let item = enqueue(store, new_item("flaky", 1).max_attempts(2)).await;
    let other = enqueue(store, new_item("other", 2)).await;
    let first = claim_one(store, &claim_req("dead", 10, 100)).await.unwrap();
    assert_eq!(first.id, item.id, "{b}");
    let dead = first.claim().unwrap();
    assert_eq!(
        claim_one(store, &claim_req("w2", 109, 10_000))
            .await
            .map(|i| i.id),
        Some(other.id),
        "{b}: the lease holds until it runs out"
    );
    let second = claim_one(store, &claim_req("w3", 110, 100)).await.unwrap();
    assert_eq!(
        (second.id, second.attempts, second.worker.as_deref()),
        (item.id, 2, Some("w3")),
        "{b}: delivered again after the lease ran out"
    );
    assert!(
        !settle(
            store,
            &dead,
            Settlement::Done {
                output: output(json!("late"))
            },
            120
        )
        .await,
        "{b}: the dead worker's claim settles nothing"
    );
    assert!(
        !store.outbox_extend(&dead, ts(999), ts(121)).await.unwrap(),
        "{b}"
    );
    // The second worker dies too: its attempt was the last one.
    assert_eq!(
        claim_one(store, &claim_req("w4", 500, 100)).await,
        None,
        "{b}"
    );
    let abandoned = outbox_item(store, item.id).await;
    assert_eq!(abandoned.state, OutboxState::Failed, "{b}: abandoned");
    let error = abandoned.error.expect("an abandoned item has an error");
    assert_eq!(error.code, nango_sync::sink::outbox::ABANDONED, "{b}");
    assert_eq!(abandoned.finished_at, Some(ts(500)), "{b}");
    subject.finish().await;
}

/// Workers claiming at the same time never get the same item: every item is claimed
/// once, by one worker.
pub async fn outbox_concurrent_claims_have_one_owner<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let mirrored = subject.store();
    let b = backend(mirrored);
    const ITEMS: i64 = 40;
    const WORKERS: usize = 6;
    for i in 0..ITEMS {
        enqueue(mirrored, new_item("race", i)).await;
    }
    // Straight to the store under test, concurrently; the reference gets the same
    // claims afterwards.
    let store = &mirrored.store;
    let workers = (0..WORKERS).map(|w| async move {
        let req = claim_req(&format!("worker-{w}"), 1_000, 1_000_000);
        let mut mine = Vec::new();
        while let Some(item) = store
            .outbox_claim(&req)
            .await
            .unwrap_or_else(|e| panic!("{b}: concurrent claim failed: {e}"))
        {
            mine.push((req.clone(), item));
            tokio::task::yield_now().await;
        }
        mine
    });
    let claims: Vec<(ClaimRequest, OutboxItem)> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut ids: Vec<u64> = claims.iter().map(|(_, i)| i.id).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "{b}: an item was claimed by two workers");
    assert_eq!(n, ITEMS as usize, "{b}: every item was claimed");
    for (req, item) in &claims {
        let stored = outbox_item(store, item.id).await;
        assert_eq!(
            stored.worker.as_deref(),
            Some(req.worker.as_str()),
            "{b}: the stored owner is the one that got the item"
        );
        assert_eq!(stored.attempts, 1, "{b}");
    }
    mirrored.mirror_claims(claims).await;
    subject.finish().await;
}

/// A purge removes the done and failed items finished before a time, and frees their
/// idempotency keys; pending and running items stay.
pub async fn outbox_purge_removes_finished_items<F: StoreFactory>(stores: &mut F) {
    let subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let early = enqueue(store, new_item("early", 1).key("k-early")).await;
    let late = enqueue(store, new_item("late", 2)).await;
    let failed = enqueue(store, new_item("failed", 3)).await;
    let waiting = enqueue(store, new_item("waiting", 4)).await;
    let running = enqueue(store, new_item("running", 5)).await;
    let mut claims = Vec::new();
    for _ in 0..4 {
        claims.push(
            claim_one(store, &claim_req("w", 10, 1_000))
                .await
                .unwrap()
                .claim()
                .unwrap(),
        );
    }
    let done = |t: i64| {
        (
            Settlement::Done {
                output: output(json!(t)),
            },
            t,
        )
    };
    let (s, t) = done(100);
    settle(store, &claims[0], s, t).await;
    let (s, t) = done(300);
    settle(store, &claims[1], s, t).await;
    settle(
        store,
        &claims[2],
        Settlement::Failed {
            error: OutboxError::new("not_found", "Action not found"),
        },
        150,
    )
    .await;
    settle(
        store,
        &claims[3],
        Settlement::Retry {
            error: OutboxError::new("transport", "reset"),
            at: ts(50),
        },
        160,
    )
    .await;
    claim_one(store, &claim_req("w", 170, 1_000_000))
        .await
        .unwrap();
    assert_eq!(
        store.outbox_purge(ts(200)).await.unwrap(),
        2,
        "{b}: the done and failed items finished before 200"
    );
    let left: Vec<u64> = outbox_all(store).await.iter().map(|i| i.id).collect();
    assert_eq!(
        left,
        [late.id, waiting.id, running.id],
        "{b}: the rest stays"
    );
    assert!(store.outbox_get(early.id).await.unwrap().is_none(), "{b}");
    assert!(store.outbox_get(failed.id).await.unwrap().is_none(), "{b}");
    let reused = enqueue(store, new_item("early-again", 400).key("k-early")).await;
    assert_ne!(
        reused.id, early.id,
        "{b}: a purged item's key is free again"
    );
    assert_eq!(store.outbox_purge(ts(200)).await.unwrap(), 0, "{b}");
    subject.finish().await;
}

/// Items survive a reopen in every state, their leases included: a running item of a
/// process that died is delivered again once its lease runs out; ids keep growing.
pub async fn outbox_survives_reopen<F: StoreFactory>(stores: &mut F) {
    let mut subject = Subject::fresh(stores).await;
    let store = subject.store();
    let b = backend(store);
    let pending = enqueue(
        store,
        new_item("pending", 1)
            .input(&json!({"x": 1}))
            .unwrap()
            .then_sync("Issue"),
    )
    .await;
    let running = enqueue(store, new_item("running", 2).key("r")).await;
    let done = enqueue(store, new_item("done", 3)).await;
    let c1 = claim_one(store, &claim_req("w", 10, 1_000)).await.unwrap();
    assert_eq!(c1.id, pending.id, "{b}");
    let c2 = claim_one(store, &claim_req("w", 10, 1_000)).await.unwrap();
    let c3 = claim_one(store, &claim_req("w", 10, 1_000)).await.unwrap();
    assert_eq!((c2.id, c3.id), (running.id, done.id), "{b}");
    settle(
        store,
        &c3.claim().unwrap(),
        Settlement::Done {
            output: output(json!({"ok": true})),
        },
        20,
    )
    .await;
    settle(
        store,
        &c1.claim().unwrap(),
        Settlement::Retry {
            error: OutboxError::new("transport", "reset"),
            at: ts(2_000),
        },
        20,
    )
    .await;
    let before = outbox_all(store).await;

    subject.reopen(stores).await;
    let store = subject.store();
    assert_eq!(
        outbox_all(store).await,
        before,
        "{b}: the reopened outbox differs"
    );
    assert_eq!(
        claim_one(store, &claim_req("w2", 500, 1_000)).await,
        None,
        "{b}: the dead process's lease still holds"
    );
    let redelivered = claim_one(store, &claim_req("w2", 1_010, 1_000))
        .await
        .unwrap();
    assert_eq!(
        (redelivered.id, redelivered.attempts),
        (running.id, 2),
        "{b}: delivered again after the lease ran out"
    );
    let next = enqueue(store, new_item("next", 30)).await;
    assert!(next.id > done.id, "{b}: ids keep growing after a reopen");
    assert_eq!(
        enqueue(store, new_item("dup", 31).key("r")).await.id,
        running.id,
        "{b}: keys survive a reopen"
    );
    subject.finish().await;
}
