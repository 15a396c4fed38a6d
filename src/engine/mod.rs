//! The sync engine: runs of a stream from its stored cursor to Nango's end.
//!
//! A run reads the stream's state, fetches pages with the stored cursor and commits each
//! page together with its cursor. Page *n+1* is fetched while page *n* is committed (a
//! bounded pipeline: at most `pipeline_depth + 2` pages in memory). Only
//! `next_cursor == null` ends a run; short and empty pages do not.
//!
//! A run is a **full re-read with sweep** on the first sync, on request
//! ([`SyncOptions::full`]), when a previous full re-read was interrupted, and when Nango
//! rejects the stored cursor: it reads from no cursor, stamps every record it sees with a
//! new generation, and its last commit marks deleted the local records it did not see
//! (they were deleted upstream without an event, for example by a cache reset).

#[cfg(feature = "webhook")]
pub mod scheduler;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::client::{NangoClient, RecordsQuery};
use crate::error::{Error, Result};
use crate::merge::Counts;
use crate::page::Page;
use crate::record::{Cursor, StreamKey};
use crate::sink::{Commit, DynRecordSink, FullRead, RunSummary, SharedSink, StreamState};
use crate::time::Timestamp;

/// The page size used when none is configured.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Records per page requested from Nango (1 to 10,000).
    pub page_size: u32,
    /// Pages fetched ahead of the commit in progress (at least 1).
    pub pipeline_depth: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            page_size: DEFAULT_PAGE_SIZE,
            pipeline_depth: 1,
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
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("full", &self.full)
            .field("modified_after", &self.modified_after)
            .field("page_size", &self.page_size)
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
    pub full_reason: Option<&'static str>,
    /// The stream's cursor after the run.
    pub cursor: Option<Cursor>,
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
        let span = info_span!("sync", stream = %stream);
        let started_at = Timestamp::now();
        let result = self
            .run(stream, options, page_size, stop)
            .instrument(span)
            .await;
        let summary = match &result {
            Ok((r, stopped)) => RunSummary {
                started_at,
                finished_at: r.finished_at,
                pages: r.pages,
                counts: r.counts,
                full: r.full,
                error: stopped.then(|| {
                    "stopped by shutdown before the end; the next run resumes from the stored cursor"
                        .to_string()
                }),
            },
            Err(e) => RunSummary {
                started_at,
                finished_at: Timestamp::now(),
                pages: 0,
                counts: Counts::default(),
                full: options.full,
                error: Some(e.to_string()),
            },
        };
        if let Err(e) = self.sink.record_run(stream, &summary).await {
            warn!(stream = %stream, error = %e, "could not record the run summary");
        }
        match result {
            Ok((report, false)) => Ok(Some(report)),
            Ok((_, true)) => Ok(None),
            Err(e) => Err(wrap(e)),
        }
    }

    /// One run; the flag says whether `stop` ended it before the last page.
    async fn run(
        &self,
        stream: &StreamKey,
        options: &SyncOptions,
        page_size: u32,
        mut stop: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<(RunReport, bool)> {
        let started_at = Timestamp::now();
        let state = self.sink.stream_state(stream).await?;
        let mut plan = RunPlan::new(&state, options);
        let mut report = RunReport {
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
        };
        info!(
            full = plan.full.is_some(),
            reason = plan.reason.unwrap_or("incremental"),
            "run starts"
        );

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
                        item = rx.recv() => item,
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
                let last = page.is_last();
                let cursor = page.end_cursor().cloned().or_else(|| expected.clone());
                let full_read = plan.full.map(|generation| FullRead {
                    generation,
                    complete: last,
                });
                let needed = !page.records.is_empty() || cursor != expected || full_read.is_some();
                let mut commit_time = None;
                if needed {
                    let began = std::time::Instant::now();
                    let mut commit = Commit::new(
                        stream.clone(),
                        expected.clone(),
                        cursor.clone(),
                        page.records,
                    );
                    commit.full_read = full_read;
                    let out = self.sink.commit(commit).await?;
                    report.commits += 1;
                    report.counts.add(&out.counts);
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
    reason: Option<&'static str>,
}

impl RunPlan {
    fn new(state: &StreamState, options: &SyncOptions) -> Self {
        if let Some(g) = state.full_read {
            // An interrupted full re-read resumes where it stopped.
            return RunPlan {
                start: state.cursor.clone(),
                full: Some(g),
                modified_after: None,
                reason: Some("resuming an interrupted full re-read"),
            };
        }
        if options.full {
            return RunPlan {
                start: None,
                full: Some(state.generation + 1),
                modified_after: None,
                reason: Some("requested"),
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
                reason: Some("first sync"),
            },
        }
    }

    fn rejected_cursor(state: &StreamState) -> Self {
        RunPlan {
            start: None,
            full: Some(state.full_read.unwrap_or(state.generation) + 1),
            modified_after: None,
            reason: Some("Nango rejected the stored cursor"),
        }
    }
}

async fn fetch_rest(
    client: NangoClient,
    stream: StreamKey,
    mut cursor: Option<Cursor>,
    page_size: u32,
    tx: mpsc::Sender<Result<Page>>,
) {
    loop {
        let q = RecordsQuery::new(&stream)
            .cursor(cursor.as_ref())
            .limit(page_size);
        let page = client.list_records(&q).await;
        let (next, last) = match &page {
            Ok(p) => (p.next_cursor.clone(), p.is_last()),
            Err(_) => (None, true),
        };
        if tx.send(page).await.is_err() || last {
            return;
        }
        cursor = next;
    }
}

/// Used by the CLI and tests to read a store through the engine's handle.
impl AsRef<dyn DynRecordSink> for Engine {
    fn as_ref(&self) -> &(dyn DynRecordSink + 'static) {
        &*self.sink
    }
}
