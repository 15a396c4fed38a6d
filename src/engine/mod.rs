//! The sync engine: runs of a stream from its stored cursor to Nango's end.
//!
//! A run reads the stream's state, fetches pages with the stored cursor and commits each
//! page together with its cursor. Page *n+1* is fetched while page *n* is committed, and
//! each page's successor is asked for while the page is parsed ([`NangoClient::pages`]):
//! a bounded pipeline, at most `pipeline_depth + 2` pages in memory and one answer on
//! its way. Only `next_cursor == null` ends a run; short and empty pages do not.
//!
//! A run is a **full re-read with sweep** on the first sync, on request
//! ([`SyncOptions::full`]), when a previous full re-read was interrupted, and when Nango
//! rejects the stored cursor: it reads from no cursor, stamps every record it sees with a
//! new generation, and its last commit marks deleted the local records it did not see
//! (they were deleted upstream without an event, for example by a cache reset).
//! When Nango rejects the stored cursor, the run summary keeps the reason
//! ([`RunSummary::full_reason`]) and `status` shows a warning. If the probe without a
//! cursor fails too, Nango is simply down: the run fails with the original error and the
//! stored cursor stays (no loop of full re-reads).
//!
//! # Overlap window
//!
//! Nango stamps `last_modified_at` when a write starts, so a write that commits late can
//! land behind a cursor a run already passed. With [`EngineConfig::overlap`] set to `N`,
//! each incremental run first re-reads the records modified in the `N` before the
//! stream's high-water mark (the latest `last_modified_at` the store holds, kept in the
//! run summary), with `modified_after`, and commits them **without moving the cursor**
//! (`expected_cursor == cursor`). The merge rule makes the re-read harmless (the versions
//! already held count as unchanged), and atomic progress is kept: the cursor still moves
//! only with the records it covers. Off by default.
//!
//! # Store errors
//!
//! A commit that fails with a retryable store error (a busy SQLite file, a lost
//! PostgreSQL connection) is tried again with backoff ([`EngineConfig::commit_retry`]).
//! A commit is idempotent thanks to the expected-cursor check: when the first attempt
//! landed but its answer was lost, the retry finds the stream already at the commit's new
//! cursor, which counts as success. Other store errors end the run; the cursor stays at
//! the last committed page.
//!
//! # Bad data
//!
//! A page that cannot be understood (a record without `id`, a record that is not an
//! object, an unparseable metadata timestamp, an unknown `last_action`, a missing
//! `_nango_metadata`) ends the run of its stream with [`Error::MalformedPage`], which
//! names the stream, the cursor the page was read from and the record (its index in the
//! page and its id when known). Nothing of that page is committed: the stored cursor stays
//! before it, so the next run reads it again (and succeeds once Nango serves it fixed).
//! Other streams of [`Engine::sync_all`] go on. Record size is not limited by the engine:
//! a page is held in memory whole, so memory is bounded by Nango's response size.

#[cfg(all(feature = "postgres", feature = "webhook"))]
pub mod cluster;
pub mod instance;
mod operations;
pub mod outbox;
#[cfg(feature = "webhook")]
pub mod scheduler;

mod count_check;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::client::{NangoClient, OnGiveUp, RecordsQuery, RetryConfig};
use crate::error::{Error, Result};
use crate::merge::Counts;
use crate::page::Page;
use crate::record::{Cursor, StreamKey};
use crate::sink::{
    Commit, CommitOutcome, CountCheck, DEFAULT_RUN_HISTORY, DynRecordSink, FullRead,
    FullReadReason, RunId, RunOutcome, RunSummary, SharedSink, StreamState,
};
use crate::time::Timestamp;

pub use count_check::{CountCheckConfig, CountCheckMode};

/// The page size used when none is configured.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Records per page requested from Nango (1 to 10,000).
    pub page_size: u32,
    /// Pages fetched ahead of the commit in progress (at least 1).
    pub pipeline_depth: usize,
    /// The overlap window (off when `None`): each incremental run also re-reads the
    /// records modified in this span before the stream's high-water mark, for writes
    /// Nango commits late (see the [module documentation](self#overlap-window)). The
    /// cursor never moves backwards. Whole milliseconds count (Nango's precision).
    pub overlap: Option<Duration>,
    /// How a commit that failed with a retryable store error is retried (default: 8
    /// attempts, 100 ms doubling up to 5 s, within 2 minutes). `RetryConfig::none()`
    /// turns store retries off.
    pub commit_retry: RetryConfig,
    /// How many runs of each stream the store keeps in its run history (default
    /// [`DEFAULT_RUN_HISTORY`]; at least 1).
    pub run_history: usize,
    /// The check of the store's live record count against Nango's after a successful
    /// run (default: off; see [`CountCheckConfig`]).
    pub count_check: CountCheckConfig,
    /// After a run that reached Nango's end, tell Nango that the payloads of the
    /// stream's records up to the stored cursor may be dropped (`PATCH /records/prune`).
    /// Off by default, and only for a store that is the stream's one consumer: Nango
    /// then serves those records as `{id}` to everyone, a full re-read and
    /// [`repair`](crate::repair) included. A failed prune is logged, never an error of
    /// the run.
    pub prune_after_run: bool,
    /// The name of this instance, recorded with each run in the run history (empty by
    /// default; a run holding a lease records the lease's instance).
    pub instance: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            page_size: DEFAULT_PAGE_SIZE,
            pipeline_depth: 1,
            overlap: None,
            commit_retry: default_commit_retry(),
            run_history: DEFAULT_RUN_HISTORY,
            count_check: CountCheckConfig::default(),
            prune_after_run: false,
            instance: String::new(),
        }
    }
}

/// The default retry policy of commits.
fn default_commit_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(120),
        min_rate_limit_wait: Duration::from_secs(1),
    }
}

/// What a run knows even when it fails: for the run summary.
#[derive(Debug, Default)]
struct RunTrack {
    full: bool,
    full_reason: Option<FullReadReason>,
    high_water_mark: Option<Timestamp>,
    /// Pages read and counts committed so far.
    pages: u64,
    counts: Counts,
}

impl RunTrack {
    fn saw_instant(&mut self, t: Timestamp) {
        self.high_water_mark = Some(self.high_water_mark.map_or(t, |h| h.max(t)));
    }

    fn saw(&mut self, records: &[crate::record::Record]) {
        if let Some(t) = records.iter().map(|r| r.meta.last_modified_at).max() {
            self.high_water_mark = Some(self.high_water_mark.map_or(t, |h| h.max(t)));
        }
    }
}

/// Progress of a run, reported after every commit.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The stream.
    pub stream: StreamKey,
    /// Pages committed so far.
    pub pages: u64,
    /// Outcome counts so far.
    pub counts: Counts,
    /// Whether this run is a full re-read.
    pub full: bool,
    /// How long the store took to write this page's commit (`None` when the page needed
    /// no commit), for latency statistics.
    pub commit_time: Option<std::time::Duration>,
}

/// A callback receiving [`Progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Options of one run.
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// Read everything from no cursor and sweep records Nango no longer has.
    pub full: bool,
    /// On a stream with no stored cursor, start at records modified at or after this
    /// instant instead of reading everything (no sweep then). Ignored once a cursor is
    /// stored: the cursor is always preferred.
    pub modified_after: Option<Timestamp>,
    /// Override the engine's page size for this run.
    pub page_size: Option<u32>,
    /// Called after every commit.
    pub progress: Option<ProgressFn>,
    /// Why the run is a full re-read, when [`SyncOptions::full`] is set (default:
    /// [`FullReadReason::Requested`]); kept in the run's summary.
    pub full_reason: Option<FullReadReason>,
    /// The lease this run holds on the stream, when several instances share the store
    /// ([`crate::sink::lease`]): every commit of the run carries it, and a commit the
    /// store refuses ([`Error::LeaseLost`]) ends the run, unrecorded in the history
    /// (the stream's new holder records its own runs).
    pub fence: Option<crate::sink::lease::Fence>,
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("full", &self.full)
            .field("modified_after", &self.modified_after)
            .field("page_size", &self.page_size)
            .field("full_reason", &self.full_reason)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl SyncOptions {
    /// A full re-read with sweep.
    pub fn full() -> Self {
        SyncOptions {
            full: true,
            ..Self::default()
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The run's id (in its tracing span and its run history entry).
    pub run_id: RunId,
    /// The stream.
    pub stream: StreamKey,
    /// When the run started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// Pages fetched.
    pub pages: u64,
    /// Commits written.
    pub commits: u64,
    /// Outcome counts.
    pub counts: Counts,
    /// Records marked deleted by the sweep of a full re-read.
    pub swept: u64,
    /// Whether the run was a full re-read.
    pub full: bool,
    /// Why the run was a full re-read, if it was.
    pub full_reason: Option<FullReadReason>,
    /// The stream's cursor after the run.
    pub cursor: Option<Cursor>,
    /// The count check made after the run, if one was
    /// ([`EngineConfig::count_check`]).
    pub count_check: Option<CountCheck>,
}

impl RunReport {
    /// Records received per second of wall time.
    pub fn records_per_second(&self) -> f64 {
        let secs = (self.finished_at.as_micros() - self.started_at.as_micros()) as f64 / 1e6;
        if secs <= 0.0 {
            0.0
        } else {
            self.counts.total() as f64 / secs
        }
    }
}

/// The sync engine: a Nango client and a store.
#[derive(Clone)]
pub struct Engine {
    client: NangoClient,
    sink: SharedSink,
    config: EngineConfig,
    locks: Arc<Mutex<HashMap<StreamKey, Arc<tokio::sync::Mutex<()>>>>>,
    checks: Arc<count_check::Checks>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("client", &self.client)
            .field("sink", &self.sink.backend())
            .field("config", &self.config)
            .finish()
    }
}

impl Engine {
    /// An engine with the default configuration.
    pub fn new(client: NangoClient, sink: SharedSink) -> Self {
        Self::with_config(client, sink, EngineConfig::default())
    }

    /// An engine with `config`.
    pub fn with_config(client: NangoClient, sink: SharedSink, config: EngineConfig) -> Self {
        Engine {
            client,
            sink,
            config,
            locks: Arc::default(),
            checks: Arc::default(),
        }
    }

    /// The store.
    pub fn sink(&self) -> &SharedSink {
        &self.sink
    }

    /// The Nango client.
    pub fn client(&self) -> &NangoClient {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Sync several streams (for example several models of one connection)
    /// concurrently. A failing stream does not stop the others.
    pub async fn sync_all(
        &self,
        streams: &[StreamKey],
        options: &SyncOptions,
    ) -> Vec<Result<RunReport>> {
        futures::future::join_all(streams.iter().map(|s| self.sync(s, options))).await
    }

    /// Run one stream to the end of Nango's records. Runs of the same stream in this
    /// engine never overlap: a second call waits for the first to finish.
    pub async fn sync(&self, stream: &StreamKey, options: &SyncOptions) -> Result<RunReport> {
        let report = self
            .sync_until(stream, options, std::future::pending::<()>())
            .await?;
        Ok(report.expect("a run without a stop signal runs to the end"))
    }

    /// Like [`Engine::sync`], but stop at the first page boundary after `stop`
    /// completes (graceful shutdown). The commit in flight is never interrupted: every
    /// page committed so far stays committed with its cursor, and the next run resumes
    /// from there. Returns `Ok(None)` when the run was stopped before the end.
    pub async fn sync_until(
        &self,
        stream: &StreamKey,
        options: &SyncOptions,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<Option<RunReport>> {
        let wrap = |e: Error| match e {
            e @ Error::Stream { .. } => e,
            e => Error::Stream {
                stream: stream.to_string(),
                source: Box::new(e),
            },
        };
        stream.validate().map_err(wrap)?;
        let page_size = options.page_size.unwrap_or(self.config.page_size);
        if !(1..=crate::client::MAX_PAGE_SIZE).contains(&page_size) {
            return Err(wrap(Error::invalid(
                "page size",
                format!("{page_size} is not between 1 and 10000"),
            )));
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(stream.clone()).or_default().clone()
        };
        let mut stop = std::pin::pin!(stop);
        let _guard = tokio::select! {
            biased;
            () = stop.as_mut() => return Ok(None),
            guard = lock.lock() => guard,
        };
        let mut options = options.clone();
        loop {
            let run_id = RunId::new();
            let span = info_span!("sync", stream = %stream, run_id = %run_id);
            let started_at = Timestamp::now();
            let clock = std::time::Instant::now();
            let mut track = RunTrack {
                full: options.full,
                ..RunTrack::default()
            };
            let result = self
                .run(
                    stream,
                    run_id,
                    &options,
                    page_size,
                    stop.as_mut(),
                    &mut track,
                )
                .instrument(span.clone())
                .await;
            let mut summary = RunSummary {
                id: run_id,
                instance: options
                    .fence
                    .as_ref()
                    .map_or_else(|| self.config.instance.clone(), |f| f.instance.to_string()),
                started_at,
                finished_at: Timestamp::now(),
                outcome: RunOutcome::Ok,
                pages: track.pages,
                counts: track.counts,
                full: track.full,
                full_reason: track.full_reason,
                high_water_mark: track.high_water_mark,
                error: None,
                count_check: None,
            };
            match &result {
                Ok((r, stopped)) => {
                    summary.finished_at = r.finished_at;
                    if *stopped {
                        summary.outcome = RunOutcome::Interrupted;
                        summary.error = Some(
                            "stopped by shutdown before the end; the next run resumes from the stored cursor"
                                .to_string(),
                        );
                    }
                }
                Err(e) => {
                    summary.outcome = RunOutcome::Error;
                    summary.error = Some(e.to_string());
                }
            }
            // After a successful run: the count check, and a full re-read when it found
            // a mismatch and the configuration asks for a repair.
            let mut repair = false;
            if summary.outcome == RunOutcome::Ok
                && self.checks.due(stream, &self.config.count_check)
            {
                let check = self
                    .count_check(stream, started_at)
                    .instrument(span.clone())
                    .await;
                repair = check.is_mismatch()
                    && self.config.count_check.mode == CountCheckMode::Repair
                    && options.full_reason != Some(FullReadReason::CountMismatch)
                    && !self.repaired_recently(stream).await;
                summary.count_check = Some(check);
            }
            // A run fenced off by the stream's new holder leaves the history to it.
            let fenced = matches!(&result, Err(e) if e.is_lease_lost());
            if fenced {
                warn!(stream = %stream, run_id = %run_id, "the stream's lease was lost: the run stops, another instance runs the stream");
            } else if let Err(e) = self
                .sink
                .record_run(stream, &summary, self.config.run_history)
                .await
            {
                warn!(stream = %stream, run_id = %run_id, error = %e, "could not record the run in the history");
            }
            count_check::record_run_metrics(stream, &summary, clock.elapsed());
            match result {
                Ok((mut report, false)) => {
                    report.count_check = summary.count_check.clone();
                    if repair {
                        let _entered = span.enter();
                        warn!(
                            "the live record count differs from Nango's: full re-read with sweep"
                        );
                        options.full = true;
                        options.full_reason = Some(FullReadReason::CountMismatch);
                        continue;
                    }
                    if self.config.prune_after_run {
                        self.prune_after_run(stream, report.cursor.as_ref()).await;
                    }
                    return Ok(Some(report));
                }
                Ok((_, true)) => return Ok(None),
                Err(e) => return Err(wrap(e)),
            }
        }
    }

    /// One run; the flag says whether `stop` ended it before the last page.
    async fn run(
        &self,
        stream: &StreamKey,
        run_id: RunId,
        options: &SyncOptions,
        page_size: u32,
        mut stop: Pin<&mut (impl Future<Output = ()> + Send)>,
        track: &mut RunTrack,
    ) -> Result<(RunReport, bool)> {
        let started_at = Timestamp::now();
        let state = self
            .with_store_retries("read the stream state", || self.sink.stream_state(stream))
            .await?;
        let mut plan = RunPlan::new(&state, options);
        if let (Some(_), Some(reason)) = (plan.full, options.full_reason)
            && options.full
        {
            plan.reason = Some(reason);
        }
        track.full = plan.full.is_some();
        track.full_reason = plan.reason;
        if self.config.overlap.is_some() {
            // The high-water mark carries over from run to run in the run summary.
            let previous = self
                .with_store_retries("read the last run", || self.sink.last_run(stream))
                .await?;
            track.high_water_mark = previous.and_then(|r| r.high_water_mark);
        }
        let mut report = RunReport {
            run_id,
            stream: stream.clone(),
            started_at,
            finished_at: started_at,
            pages: 0,
            commits: 0,
            counts: Counts::default(),
            swept: 0,
            full: plan.full.is_some(),
            full_reason: plan.reason,
            cursor: state.cursor.clone(),
            count_check: None,
        };
        info!(
            full = plan.full.is_some(),
            reason = plan.reason.map_or("incremental", FullReadReason::as_str),
            "run starts"
        );

        if let (Some(window), Some(hwm), None, Some(_)) = (
            self.config.overlap,
            track.high_water_mark,
            plan.full,
            plan.start.as_ref(),
        ) {
            let stopped = self
                .overlap_read(
                    stream,
                    &state,
                    hwm,
                    window,
                    page_size,
                    stop.as_mut(),
                    &mut report,
                    track,
                    options.fence.as_ref(),
                )
                .await?;
            if stopped {
                return Ok((report, true));
            }
        }

        // The stored cursor may be one Nango no longer accepts (it answers 500 for it).
        // Read its first page apart, so a rejected cursor can turn into a full re-read.
        let first = tokio::select! {
            biased;
            () = stop.as_mut() => return Ok((report, true)),
            first = self.fetch_first(stream, &plan, page_size) => first,
        };
        let first = match first {
            Ok(page) => page,
            Err(err) if plan.start.is_some() && self.cursor_rejected(stream, &err).await => {
                warn!(stream = %stream, error = %err, "Nango rejects the stored cursor: full re-read with sweep");
                plan = RunPlan::rejected_cursor(&state);
                report.full = true;
                report.full_reason = plan.reason;
                track.full = true;
                track.full_reason = plan.reason;
                self.fetch_first(stream, &plan, page_size).await?
            }
            Err(err) => return Err(err),
        };

        let (tx, mut rx) = mpsc::channel::<Result<Page>>(self.config.pipeline_depth.max(1));
        let fetcher = if first.is_last() {
            None
        } else {
            let client = self.client.clone();
            let stream = stream.clone();
            let next = first.next_cursor.clone();
            Some(tokio::spawn(
                async move { fetch_rest(client, stream, next, page_size, tx).await }
                    .in_current_span(),
            ))
        };
        let mut expected = state.cursor.clone();
        let mut pending = Some(Ok(first));
        // The page after the one committing, when the fetcher had it ready: the store
        // was told of it (`RecordSink::prefetch`).
        let mut ahead: Option<Result<Page>> = None;
        let mut stopped = false;
        let result: Result<()> = async {
            loop {
                let item = match pending.take() {
                    Some(item) => item,
                    // Between pages: the only place a stop signal ends a run.
                    None => match tokio::select! {
                        biased;
                        () = stop.as_mut() => {
                            stopped = true;
                            return Ok(());
                        }
                        item = async {
                            match ahead.take() {
                                Some(item) => Some(item),
                                None => rx.recv().await,
                            }
                        } => item,
                    } {
                        Some(item) => item,
                        None => {
                            return Err(Error::invalid(
                                "run",
                                "the page fetcher stopped before the last page",
                            ));
                        }
                    },
                };
                let page = item?;
                report.pages += 1;
                track.pages = report.pages;
                let last = page.is_last();
                let cursor = page.end_cursor().cloned().or_else(|| expected.clone());
                let full_read = plan.full.map(|generation| FullRead {
                    generation,
                    complete: last,
                });
                let needed = !page.records.is_empty() || cursor != expected || full_read.is_some();
                let mut commit_time = None;
                if needed {
                    let mut page_track = RunTrack::default();
                    page_track.saw(&page.records);
                    let began = std::time::Instant::now();
                    let mut commit = Commit::new(
                        stream.clone(),
                        expected.clone(),
                        cursor.clone(),
                        page.records,
                    );
                    commit.full_read = full_read;
                    commit.fence = options.fence.clone();
                    if !last && ahead.is_none() {
                        ahead = rx.try_recv().ok();
                    }
                    if let Some(Ok(next)) = &ahead {
                        self.sink.prefetch(stream, &next.records);
                    }
                    let out = self.commit(commit).await?;
                    if let Some(t) = page_track.high_water_mark {
                        track.saw_instant(t);
                    }
                    report.commits += 1;
                    report.counts.add(&out.counts);
                    track.counts = report.counts;
                    report.swept += out.swept;
                    expected = cursor;
                    commit_time = Some(began.elapsed());
                }
                if let Some(progress) = &options.progress {
                    progress(&Progress {
                        stream: stream.clone(),
                        pages: report.pages,
                        counts: report.counts,
                        full: report.full,
                        commit_time,
                    });
                }
                if last {
                    return Ok(());
                }
            }
        }
        .await;
        drop(rx);
        if let Some(f) = fetcher {
            f.abort();
        }
        result?;
        report.cursor = expected;
        report.finished_at = Timestamp::now();
        if stopped {
            info!(
                pages = report.pages,
                "run stopped between pages; the stored cursor is where the next run resumes"
            );
            return Ok((report, true));
        }
        info!(
            pages = report.pages,
            added = report.counts.added,
            updated = report.counts.updated,
            deleted = report.counts.deleted,
            unchanged = report.counts.unchanged,
            stale = report.counts.stale,
            swept = report.swept,
            "run done"
        );
        Ok((report, false))
    }

    /// Commit, retrying retryable store errors (see the module documentation). A
    /// retry that finds the stream already at the commit's new cursor means an earlier
    /// attempt landed: success (its counts are lost with its answer).
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let began = std::time::Instant::now();
        let stream = commit.stream.clone();
        let out = self.commit_with_retries(commit).await?;
        count_check::record_commit_metrics(&stream, self.sink.backend(), &out, began.elapsed());
        Ok(out)
    }

    async fn commit_with_retries(&self, commit: Commit) -> Result<CommitOutcome> {
        let policy = &self.config.commit_retry;
        if policy.max_attempts <= 1 {
            return self.sink.commit(commit).await;
        }
        let what = format!("commit to {}", commit.stream);
        policy
            .run(&what, OnGiveUp::Wrap, |attempt| {
                let commit = commit.clone();
                async move {
                    let (new_cursor, expected) = (commit.cursor.clone(), commit.expected_cursor.clone());
                    let stream = commit.stream.clone();
                    match self.sink.commit(commit).await {
                        Err(Error::CursorConflict { actual, .. })
                            if attempt > 1
                                && new_cursor != expected
                                && actual.as_deref() == new_cursor.as_ref().map(Cursor::as_str) =>
                        {
                            info!(stream = %stream, "an earlier attempt of the commit landed (its answer was lost)");
                            Ok(CommitOutcome::default())
                        }
                        other => other,
                    }
                }
            })
            .await
    }

    /// Run a store read, retrying retryable store errors with the commit policy.
    async fn with_store_retries<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.config
            .commit_retry
            .run(what, OnGiveUp::Last, |_| op())
            .await
    }

    /// The overlap read: the records modified in `window` before `hwm`, committed
    /// without moving the cursor. Returns whether `stop` ended it.
    #[allow(clippy::too_many_arguments)]
    async fn overlap_read(
        &self,
        stream: &StreamKey,
        state: &StreamState,
        hwm: Timestamp,
        window: Duration,
        page_size: u32,
        mut stop: Pin<&mut (impl Future<Output = ()> + Send)>,
        report: &mut RunReport,
        track: &mut RunTrack,
        fence: Option<&crate::sink::lease::Fence>,
    ) -> Result<bool> {
        let window_micros = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        // Nango compares at millisecond precision and refuses instants older than
        // 12 months: start at a whole millisecond, never earlier than 364 days ago.
        let oldest = Timestamp::now().add_micros(-364 * 86_400 * 1_000_000);
        let from = Timestamp::from_micros(hwm.as_micros().saturating_sub(window_micros))
            .truncate_millis()
            .max(oldest);
        info!(from = %from.to_utc_z(), "overlap read before the cursor read");
        let mut cursor: Option<Cursor> = None;
        loop {
            let q = RecordsQuery::new(stream)
                .cursor(cursor.as_ref())
                .limit(page_size)
                .modified_after(Some(from));
            let page = tokio::select! {
                biased;
                () = stop.as_mut() => return Ok(true),
                page = self.client.list_records(&q) => page?,
            };
            report.pages += 1;
            track.pages = report.pages;
            let passed = page
                .records
                .last()
                .is_some_and(|r| r.meta.last_modified_at > hwm);
            let last = page.is_last();
            let next = page.next_cursor.clone();
            if !page.records.is_empty() {
                let mut page_track = RunTrack::default();
                page_track.saw(&page.records);
                // The cursor stays where it is: expected == new cursor.
                let mut commit = Commit::new(
                    stream.clone(),
                    state.cursor.clone(),
                    state.cursor.clone(),
                    page.records,
                );
                commit.fence = fence.cloned();
                let out = self.commit(commit).await?;
                if let Some(t) = page_track.high_water_mark {
                    track.saw_instant(t);
                }
                report.commits += 1;
                report.counts.add(&out.counts);
                track.counts = report.counts;
            }
            if last || passed {
                return Ok(false);
            }
            cursor = next;
        }
    }

    async fn fetch_first(
        &self,
        stream: &StreamKey,
        plan: &RunPlan,
        page_size: u32,
    ) -> Result<Page> {
        let q = RecordsQuery::new(stream)
            .cursor(plan.start.as_ref())
            .limit(page_size)
            .modified_after(if plan.start.is_none() {
                plan.modified_after
            } else {
                None
            });
        self.client.list_records(&q).await
    }

    /// Whether `err` (from a request with the stored cursor) means Nango rejects that
    /// cursor: a server error that persisted through the retries, while the same
    /// request without a cursor succeeds.
    async fn cursor_rejected(&self, stream: &StreamKey, err: &Error) -> bool {
        if !matches!(err.root(), Error::Nango { status: 500, .. }) {
            return false;
        }
        self.client
            .list_records(&RecordsQuery::new(stream).limit(1))
            .await
            .is_ok()
    }
}

/// How a run starts.
struct RunPlan {
    start: Option<Cursor>,
    /// The generation of a full re-read, when the run is one.
    full: Option<u64>,
    modified_after: Option<Timestamp>,
    reason: Option<FullReadReason>,
}

impl RunPlan {
    fn new(state: &StreamState, options: &SyncOptions) -> Self {
        if options.full {
            // A requested full re-read starts over, even when an interrupted one could be
            // resumed: records the interrupted one saw may have vanished since (a cache
            // reset in between), and only a read from the start notices.
            return RunPlan {
                start: None,
                full: Some(state.full_read.unwrap_or(state.generation) + 1),
                modified_after: None,
                reason: Some(FullReadReason::Requested),
            };
        }
        if let Some(g) = state.full_read {
            // An interrupted full re-read resumes where it stopped.
            return RunPlan {
                start: state.cursor.clone(),
                full: Some(g),
                modified_after: None,
                reason: Some(FullReadReason::Resuming),
            };
        }
        match &state.cursor {
            Some(c) => RunPlan {
                start: Some(c.clone()),
                full: None,
                modified_after: None,
                reason: None,
            },
            None if options.modified_after.is_some() => RunPlan {
                start: None,
                full: None,
                modified_after: options.modified_after,
                reason: None,
            },
            None => RunPlan {
                start: None,
                full: Some(state.generation + 1),
                modified_after: None,
                reason: Some(FullReadReason::FirstSync),
            },
        }
    }

    fn rejected_cursor(state: &StreamState) -> Self {
        RunPlan {
            start: None,
            full: Some(state.full_read.unwrap_or(state.generation) + 1),
            modified_after: None,
            reason: Some(FullReadReason::CursorRejected),
        }
    }
}

async fn fetch_rest(
    client: NangoClient,
    stream: StreamKey,
    cursor: Option<Cursor>,
    page_size: u32,
    tx: mpsc::Sender<Result<Page>>,
) {
    let mut pages = client.pages(&stream, cursor, page_size);
    while let Some(page) = pages.next().await {
        if tx.send(page).await.is_err() {
            return;
        }
    }
}

/// Used by the CLI and tests to read a store through the engine's handle.
impl AsRef<dyn DynRecordSink> for Engine {
    fn as_ref(&self) -> &(dyn DynRecordSink + 'static) {
        &*self.sink
    }
}
