//! The always-on scheduler: which stream runs when.
//!
//! A [`Scheduler`] keeps a registry of streams and one worker task per stream. A stream
//! runs when it is triggered (a sync webhook, [`Scheduler::trigger`]) and when its poll
//! timer fires (a safety net: Nango never replays a lost webhook). The rules:
//!
//! - **Single-flight with one coalesced follow-up.** A stream never runs twice at once.
//!   A trigger while the stream is running (or already waiting to run) only sets a
//!   flag; when the run ends, exactly one follow-up run reads what changed meanwhile.
//!   A burst of any number of webhooks for a stream causes at most two runs.
//! - **A global limit on concurrent runs** (a semaphore shared by all streams).
//! - **One rate budget per account**: give the engine's [`NangoClient`](crate::NangoClient)
//!   a shared [`RateBudget`](crate::client::RateBudget) (it also slows down on 429).
//! - **Polling with jitter**: after each run, the next poll is due after the poll
//!   interval ± the jitter fraction, so streams do not poll in lockstep.
//! - **Graceful shutdown**: [`Scheduler::shutdown`] stops starting runs and stops the
//!   runs in progress at their next page boundary (the commit in flight completes, so the
//!   store stays consistent and the next start resumes from the stored cursor).
//!
//! What webhooks do ([`Scheduler`] is a [`WebhookHandler`]):
//! - a sync success triggers a pull of the stream with its stored cursor (the webhook's
//!   `responseResults` and `modifiedAfter` are never used); a full-sync webhook makes
//!   the triggered run a full re-read with sweep; it also clears the stream's upstream
//!   error (Nango's sync works again);
//! - a sync failure is stored as the upstream error of each of its streams (status shows
//!   it) and triggers nothing;
//! - a sync webhook for a stream not registered yet registers it when a
//!   [`DiscoveryRule`] matches, so new connections start syncing by themselves;
//! - every verified webhook (auth ones included) is published to
//!   [`Scheduler::subscribe`]rs;
//! - an `async_action` webhook wakes whoever waits for that action
//!   ([`Scheduler::action_wakeups`], given to
//!   [`NangoClient::wait_action`](crate::NangoClient::wait_action)).
//!
//! The scheduler also runs what write-back asks of streams: it is the
//! [`SyncTrigger`](super::outbox::SyncTrigger) of an outbox worker (a done action's
//! streams are synced at once) and [`Scheduler::trigger_syncs`] re-reads streams fully
//! after Nango's cache was emptied (see `scheduler/writeback.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Engine, SyncOptions};
use crate::client::ActionWakeups;
use crate::monitor::{Clock, SystemClock};
use crate::record::StreamKey;
use crate::time::Timestamp;
use crate::webhook::{WebhookEvent, WebhookHandler};

mod monitor;

/// The poll interval when none is configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// How the scheduler runs streams.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Poll every stream this often (after its last run); `None` disables polling.
    pub poll_interval: Option<Duration>,
    /// The poll delay is drawn from `interval × (1 ± jitter)` (0.0 to 1.0).
    pub poll_jitter: f64,
    /// Runs allowed at the same time, over all streams (at least 1).
    pub max_concurrent_runs: usize,
    /// Run a stream as soon as it is registered (catch up at start).
    pub run_on_register: bool,
    /// Capacity of the event channel of [`Scheduler::subscribe`] (a subscriber that
    /// falls further behind misses events).
    pub event_capacity: usize,
    /// Make a stream's run a full re-read with sweep when its last successful full
    /// re-read is older than this (`None`: never). It catches records Nango removed
    /// without any event (a hard reset whose webhook was lost); the stream also wakes
    /// for it when it is due and nothing else runs it.
    pub full_every: Option<Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            poll_interval: Some(DEFAULT_POLL_INTERVAL),
            poll_jitter: 0.1,
            max_concurrent_runs: 4,
            run_on_register: true,
            event_capacity: 256,
            full_every: None,
        }
    }
}

/// Streams to register automatically when a sync webhook announces them: one
/// integration, some models, any connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveryRule {
    /// The integration id (Provider-Config-Key).
    pub integration: String,
    /// The models to sync; empty means every model.
    pub models: Vec<String>,
}

impl DiscoveryRule {
    /// A rule for `models` of `integration` (every model when `models` is empty).
    pub fn new<M: Into<String>>(
        integration: impl Into<String>,
        models: impl IntoIterator<Item = M>,
    ) -> Self {
        DiscoveryRule {
            integration: integration.into(),
            models: models.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `stream` falls under this rule.
    pub fn matches(&self, stream: &StreamKey) -> bool {
        stream.integration == self.integration
            && (self.models.is_empty() || self.models.contains(&stream.model))
    }
}

/// Counters and state of one stream, for health checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    /// Triggers received (webhooks and explicit calls, polls not included).
    pub triggers: u64,
    /// Triggers that found a run already pending and were merged into it.
    pub triggers_coalesced: u64,
    /// Poll timer firings.
    pub polls: u64,
    /// Runs started.
    pub runs_started: u64,
    /// Runs finished (successfully, with an error, or stopped by shutdown).
    pub runs_finished: u64,
    /// Runs that ended with an error.
    pub runs_failed: u64,
    /// Whether a run is in progress.
    pub running: bool,
    /// Whether a run is pending (it starts when a run slot is free).
    pub pending: bool,
    /// When the last run finished.
    pub last_run_finished_at: Option<Timestamp>,
    /// The error of the last run, if it failed.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Pending {
    due: bool,
    full: bool,
    /// The largest counts the sync webhooks that asked for this run reported.
    hint: Option<crate::webhook::ResponseResults>,
}

struct Slot {
    pending: Mutex<Pending>,
    wake: Notify,
    stats: Mutex<StreamStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Whether the store may hold an upstream error for the stream (unknown at start).
    upstream_error: AtomicBool,
    /// When the stream's last successful full re-read ended (`monitor.rs`).
    last_full: Mutex<monitor::LastFull>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            stats: Mutex::new(StreamStats::default()),
            worker: Mutex::new(None),
            upstream_error: AtomicBool::new(true),
            last_full: Mutex::default(),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, StreamStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark a run due; returns whether one was already due (the trigger coalesced).
    fn mark(&self, full: bool) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let coalesced = p.due;
        p.due = true;
        p.full |= full;
        drop(p);
        self.stats().pending = true;
        self.wake.notify_one();
        coalesced
    }

    /// Take the due run, if any: `Some((full, webhook hint))`.
    fn take(&self) -> Option<(bool, Option<crate::webhook::ResponseResults>)> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let due = std::mem::take(&mut *p);
        drop(p);
        due.due.then_some((due.full, due.hint))
    }

    fn is_due(&self) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).due
    }
}

/// Runs registered streams on triggers and poll timers (see the module documentation).
///
/// Cheap to clone (one `Arc`). Create it inside a tokio runtime: it spawns tasks.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: SchedulerConfig,
    streams: Mutex<HashMap<StreamKey, Arc<Slot>>>,
    discovery: Mutex<Vec<DiscoveryRule>>,
    runs: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    stopping: AtomicBool,
    events: broadcast::Sender<WebhookEvent>,
    upstream: mpsc::UnboundedSender<Upstream>,
    upstream_task: Mutex<Option<JoinHandle<()>>>,
    rng: Mutex<u64>,
    next_run_seq: AtomicU64,
    clock: Arc<dyn Clock>,
    /// Woken by `async_action` webhooks.
    wakeups: ActionWakeups,
    /// Among several instances: which streams run here (`scheduler/ownership.rs`).
    ownership: Mutex<Option<Arc<dyn Ownership>>>,
}

mod ownership;
pub use ownership::Ownership;
mod writeback;

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("engine", &self.inner.engine)
            .field("config", &self.inner.config)
            .field("streams", &self.stream_keys().len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler running streams with `engine`. No stream is registered yet.
    pub fn new(engine: Engine, config: SchedulerConfig) -> Self {
        Self::with_clock(engine, config, Arc::new(SystemClock))
    }

    /// A scheduler whose health checks and periodic full re-reads read the time from
    /// `clock` (tests move a [`ManualClock`](crate::monitor::ManualClock)).
    pub fn with_clock(engine: Engine, config: SchedulerConfig, clock: Arc<dyn Clock>) -> Self {
        let (stop, _) = watch::channel(false);
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let (upstream, mut upstream_rx) = mpsc::unbounded_channel::<Upstream>();
        let sink = engine.sink().clone();
        // Upstream errors are written in arrival order by one task, so a failure and
        // the success that follows it cannot be reordered, and the receiver never waits
        // for the store.
        let upstream_task = tokio::spawn(async move {
            while let Some(msg) = upstream_rx.recv().await {
                match msg {
                    Upstream::Set(stream, error) => {
                        if let Err(e) = sink.set_upstream_error(&stream, error.as_deref()).await {
                            warn!(stream = %stream, error = %e, "could not store the upstream error");
                        }
                    }
                    Upstream::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        Scheduler {
            inner: Arc::new(Inner {
                runs: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
                engine,
                config,
                streams: Mutex::default(),
                discovery: Mutex::default(),
                stop,
                stopping: AtomicBool::new(false),
                events,
                upstream,
                upstream_task: Mutex::new(Some(upstream_task)),
                rng: Mutex::new(seed),
                next_run_seq: AtomicU64::new(0),
                clock,
                wakeups: ActionWakeups::new(),
                ownership: Mutex::new(None),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    /// Register a stream: it runs now (when [`SchedulerConfig::run_on_register`]), on
    /// triggers and on its poll timer. Returns `false` when it was already registered
    /// or the scheduler is shutting down.
    pub fn register(&self, stream: StreamKey) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        let slot = {
            let mut streams = self.lock_streams();
            if streams.contains_key(&stream) {
                return false;
            }
            let slot = Arc::new(Slot::new());
            streams.insert(stream.clone(), slot.clone());
            slot
        };
        if self.inner.config.run_on_register {
            slot.mark(false);
        }
        info!(stream = %stream, "stream registered");
        let span = info_span!("stream", stream = %stream);
        let handle =
            tokio::spawn(worker(self.inner.clone(), stream, slot.clone()).instrument(span));
        *slot.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        true
    }

    /// Register streams of unknown connections when a sync webhook announces them.
    pub fn add_discovery_rule(&self, rule: DiscoveryRule) {
        self.inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// The discovery rules.
    pub fn discovery_rules(&self) -> Vec<DiscoveryRule> {
        self.inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ask for a run of `stream` (a full re-read when `full`). A trigger while the stream
    /// runs or already waits to run is merged into one follow-up run (a full request
    /// makes that run full). Among several instances ([`Scheduler::set_ownership`]), a
    /// trigger for a stream another instance holds is passed on to it. Returns `false`
    /// when the stream is not registered.
    pub fn trigger(&self, stream: &StreamKey, full: bool) -> bool {
        if let Some(o) = self.ownership()
            && self.is_registered(stream)
            && o.fence(stream).is_none()
        {
            o.pass_on(stream, full);
        }
        self.trigger_here(stream, full)
    }

    /// Whether `stream` is registered.
    pub fn is_registered(&self, stream: &StreamKey) -> bool {
        self.slot(stream).is_some()
    }

    /// The registered streams, sorted.
    pub fn stream_keys(&self) -> Vec<StreamKey> {
        let mut keys: Vec<StreamKey> = self.lock_streams().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Counters and state of `stream`, when it is registered.
    pub fn stats(&self, stream: &StreamKey) -> Option<StreamStats> {
        self.slot(stream).map(|s| s.stats().clone())
    }

    /// Counters and state of every registered stream, sorted by stream.
    pub fn all_stats(&self) -> Vec<(StreamKey, StreamStats)> {
        let mut all: Vec<_> = self
            .lock_streams()
            .iter()
            .map(|(k, s)| (k.clone(), s.stats().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every verified webhook, as the receiver hands it to the scheduler (auth
    /// `creation` webhooks tell the application about new connections).
    pub fn subscribe(&self) -> broadcast::Receiver<WebhookEvent> {
        self.inner.events.subscribe()
    }

    /// Whether [`Scheduler::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// A future that completes when shutdown begins (for an HTTP server's graceful
    /// shutdown).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.inner.stop.subscribe())
    }

    /// Stop: no run starts any more, runs in progress stop at their next page boundary
    /// (the commit in flight completes), and this returns when every worker has ended.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop.send_replace(true);
        let handles: Vec<JoinHandle<()>> = self
            .lock_streams()
            .values()
            .filter_map(|s| s.worker.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        for h in handles {
            if let Err(e) = h.await {
                warn!(error = %e, "a stream worker ended abnormally");
            }
        }
        // Let queued upstream-error writes land (bounded), then end their task.
        let task = self
            .inner
            .upstream_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            if self.inner.upstream.send(Upstream::Flush(done_tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
            }
            task.abort();
        }
        info!("scheduler stopped");
    }

    fn slot(&self, stream: &StreamKey) -> Option<Arc<Slot>> {
        self.lock_streams().get(stream).cloned()
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Arc<Slot>>> {
        self.inner.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn discoverable(&self, stream: &StreamKey) -> bool {
        self.inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.matches(stream))
    }
}

/// A write of the upstream-error queue.
enum Upstream {
    Set(StreamKey, Option<String>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl WebhookHandler for Scheduler {
    fn handle(&self, event: WebhookEvent) {
        match &event {
            WebhookEvent::Sync(w) => {
                let stream = w.stream();
                if !self.is_registered(&stream) {
                    if self.discoverable(&stream) && stream.validate().is_ok() {
                        info!(stream = %stream, "new stream announced by a sync webhook: registered by discovery");
                        // The first run of a new stream is a full read anyway.
                        self.register(stream.clone());
                    } else {
                        debug!(stream = %stream, "sync webhook for a stream that is not configured: ignored");
                    }
                }
                let full = w.is_full_sync();
                if let (Some(slot), Some(results)) = (self.slot(&stream), &w.response_results) {
                    slot.add_hint(results);
                }
                if self.trigger(&stream, full) {
                    debug!(stream = %stream, full, "sync webhook: run triggered");
                    // Nango's sync works again: clear a stored failure (once, not per
                    // webhook of a burst).
                    if let Some(slot) = self.slot(&stream)
                        && slot.upstream_error.swap(false, Ordering::SeqCst)
                    {
                        let _ = self.inner.upstream.send(Upstream::Set(stream, None));
                    }
                }
            }
            WebhookEvent::SyncFailure(f) => {
                let message = f.describe();
                for stream in f.streams() {
                    if let Some(slot) = self.slot(&stream) {
                        slot.upstream_error.store(true, Ordering::SeqCst);
                    } else if !self.discoverable(&stream) {
                        continue;
                    }
                    warn!(stream = %stream, error = %message, "Nango reports a failed sync");
                    let _ = self
                        .inner
                        .upstream
                        .send(Upstream::Set(stream, Some(message.clone())));
                }
            }
            WebhookEvent::Auth(a) => {
                info!(
                    integration = %a.provider_config_key,
                    connection = %a.connection_id,
                    operation = a.operation.as_deref().unwrap_or(""),
                    success = a.success,
                    "auth webhook"
                );
            }
            WebhookEvent::AsyncAction(a) => {
                debug!(action = %a.payload.id, "async action finished");
                self.inner.wakeups.notify(&a.payload.id);
            }
            other => debug!(kind = other.kind(), "webhook: nothing to sync"),
        }
        // No subscriber is not an error.
        let _ = self.inner.events.send(event);
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the scheduler is gone: that is a stop too.
    let _ = rx.wait_for(|stop| *stop).await;
}

fn next_poll(inner: &Inner) -> Option<Instant> {
    let interval = inner.config.poll_interval?;
    let jitter = inner.config.poll_jitter.clamp(0.0, 1.0);
    let r = {
        // xorshift64: plenty for spreading timers.
        let mut s = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    };
    let factor = 1.0 + jitter * (2.0 * r - 1.0);
    Some(Instant::now() + interval.mul_f64(factor.max(0.0)))
}

async fn worker(inner: Arc<Inner>, stream: StreamKey, slot: Arc<Slot>) {
    let mut stop_rx = inner.stop.subscribe();
    let mut poll_at = next_poll(&inner);
    loop {
        if *stop_rx.borrow() {
            break;
        }
        if !slot.is_due() {
            let wake_at = match (poll_at, monitor::full_due_at(&inner, &slot)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let poll = async {
                match wake_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                () = slot.wake.notified() => {}
                () = poll => {
                    slot.stats().polls += 1;
                    slot.mark(false);
                    debug!("poll timer: run due");
                }
            }
            continue;
        }
        // A run is due: wait for a run slot (triggers meanwhile merge into this run).
        let permit = tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            p = inner.runs.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let Some((full, hint)) = slot.take() else {
            continue;
        };
        // Among several instances, only the stream's lease holder runs it (polls too).
        let fence = match ownership::gate(&inner, &stream) {
            ownership::Gate::Run(fence) => fence,
            ownership::Gate::Elsewhere => {
                slot.stats().pending = slot.is_due();
                debug!("run due, but another instance holds the stream: not run here");
                poll_at = next_poll(&inner);
                continue;
            }
        };
        let periodic = !full && monitor::periodic_full_due(&inner, &stream, &slot).await;
        let seq = inner.next_run_seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut stats = slot.stats();
            stats.runs_started += 1;
            stats.running = true;
            stats.pending = slot.is_due();
        }
        let options = SyncOptions {
            full: full || periodic,
            full_reason: periodic.then_some(crate::sink::FullReadReason::Periodic),
            fence: fence.clone(),
            ..SyncOptions::default()
        };
        debug!(run = seq, full, "run starts");
        let result = inner
            .engine
            .sync_until(&stream, &options, stopped(inner.stop.subscribe()))
            .await;
        ownership::ended(&inner, &stream, fence.as_ref());
        drop(permit);
        let mut stats = slot.stats();
        stats.runs_finished += 1;
        stats.running = false;
        stats.pending = slot.is_due();
        stats.last_run_finished_at = Some(Timestamp::now());
        let mut finished = None;
        match result {
            Ok(Some(report)) => {
                stats.last_error = None;
                finished = Some(report.clone());
                debug!(
                    run = seq,
                    pages = report.pages,
                    records = report.counts.total(),
                    "run finished"
                );
            }
            Ok(None) => {
                info!(
                    run = seq,
                    "run stopped by shutdown; the next start resumes from the stored cursor"
                );
                break;
            }
            Err(e) => {
                stats.runs_failed += 1;
                stats.last_error = Some(e.to_string());
                warn!(run = seq, error = %e, "run failed; the next trigger or poll retries");
            }
        }
        drop(stats);
        if let Some(report) = finished {
            monitor::after_run(&inner, &stream, &slot, &report, hint);
        }
        poll_at = next_poll(&inner);
    }
    debug!("stream worker ended");
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::extract::{Query, State};
    use axum::routing::get;

    use super::*;
    use crate::client::{NangoClient, RetryConfig};
    use crate::sink::{MemoryStore, SharedSink};
    use crate::webhook::{SyncFailureWebhook, SyncWebhook};

    /// A stub of `GET /records`: `pages` pages of one record each, every answer delayed.
    #[derive(Clone)]
    struct Stub {
        pages: usize,
        delay: Duration,
        requests: Arc<AtomicUsize>,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        without_cursor: Arc<AtomicUsize>,
    }

    async fn records(
        State(stub): State<Stub>,
        Query(q): Query<Map<String, String>>,
    ) -> axum::response::Response {
        stub.requests.fetch_add(1, Ordering::SeqCst);
        let now = stub.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stub.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(stub.delay).await;
        stub.in_flight.fetch_sub(1, Ordering::SeqCst);
        let page = match q.get("cursor") {
            Some(c) => c.trim_start_matches('c').parse::<usize>().unwrap() + 1,
            None => {
                stub.without_cursor.fetch_add(1, Ordering::SeqCst);
                0
            }
        };
        let body = if page >= stub.pages {
            r#"{"next_cursor":null,"records":[]}"#.to_string()
        } else {
            let next = if page + 1 == stub.pages {
                "null".to_string()
            } else {
                format!("\"c{page}\"")
            };
            format!(
                r#"{{"next_cursor":{next},"records":[{{"id":"r{page}","_nango_metadata":{{"first_seen_at":"2026-01-01T00:00:00+00:00","last_modified_at":"2026-01-01T00:00:0{s}+00:00","last_action":"ADDED","deleted_at":null,"pruned_at":null,"cursor":"c{page}"}}}}]}}"#,
                s = page % 10
            )
        };
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }

    use axum::response::IntoResponse;

    async fn stub(pages: usize, delay: Duration) -> (Stub, String) {
        let stub = Stub {
            pages,
            delay,
            requests: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            without_cursor: Arc::default(),
        };
        let app = Router::new()
            .route("/records", get(records))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (stub, url)
    }

    fn scheduler(url: &str, config: SchedulerConfig) -> (Scheduler, SharedSink) {
        let client = NangoClient::builder()
            .host(url)
            .secret_key("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c")
            .retry(RetryConfig::fast())
            .build()
            .unwrap();
        let sink: SharedSink = Arc::new(MemoryStore::new());
        let engine = Engine::new(client, sink.clone());
        (Scheduler::new(engine, config), sink)
    }

    fn quiet() -> SchedulerConfig {
        SchedulerConfig {
            poll_interval: None,
            run_on_register: false,
            ..SchedulerConfig::default()
        }
    }

    fn key(model: &str) -> StreamKey {
        StreamKey::new("github", "acme", model)
    }

    /// Wait (generously) until `f` holds.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn idle(s: &Scheduler, k: &StreamKey) -> bool {
        let st = s.stats(k).unwrap();
        !st.running && !st.pending && st.runs_started == st.runs_finished
    }

    fn sync_webhook(stream: &StreamKey, full: bool) -> WebhookEvent {
        let from = if full {
            serde_json::Value::Null
        } else {
            "2026-01-01T00:00:00.000Z".into()
        };
        WebhookEvent::Sync(
            serde_json::from_value::<SyncWebhook>(serde_json::json!({
                "connectionId": stream.connection, "providerConfigKey": stream.integration,
                "model": stream.model, "syncName": "s", "syncType": "INCREMENTAL",
                "checkpoints": {"from": from, "to": "x"},
            }))
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_triggers_gives_at_most_two_runs() {
        // Slow pages: the whole burst lands while the first run is in flight, even on a
        // loaded machine.
        let (_stub, url) = stub(3, Duration::from_millis(300)).await;
        let (s, _sink) = scheduler(&url, quiet());
        let k = key("Ticket");
        assert!(s.register(k.clone()));
        assert!(!s.register(k.clone()), "registering twice is a no-op");
        for _ in 0..1000 {
            s.handle(sync_webhook(&k, false));
        }
        eventually("the stream ran", || s.stats(&k).unwrap().runs_finished >= 1).await;
        eventually("the stream is idle", || idle(&s, &k)).await;
        let st = s.stats(&k).unwrap();
        assert_eq!(st.triggers, 1000);
        assert!(
            (1..=2).contains(&st.runs_started),
            "{} runs for one burst",
            st.runs_started
        );
        assert!(st.triggers_coalesced >= 998);
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn triggers_during_a_run_give_exactly_one_follow_up() {
        let (_stub, url) = stub(4, Duration::from_millis(250)).await;
        let (s, _sink) = scheduler(&url, quiet());
        let k = key("Ticket");
        s.register(k.clone());
        s.trigger(&k, false);
        eventually("the run started", || s.stats(&k).unwrap().running).await;
        for _ in 0..50 {
            assert!(s.trigger(&k, false));
        }
        eventually("both runs ended", || {
            s.stats(&k).unwrap().runs_finished >= 2 && idle(&s, &k)
        })
        .await;
        assert_eq!(s.stats(&k).unwrap().runs_started, 2);
        assert!(!s.trigger(&key("Other"), false), "unregistered stream");
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_poll_timer_runs_streams_without_triggers() {
        let (stub, url) = stub(1, Duration::ZERO).await;
        let (s, _sink) = scheduler(
            &url,
            SchedulerConfig {
                poll_interval: Some(Duration::from_millis(50)),
                poll_jitter: 0.5,
                run_on_register: false,
                ..SchedulerConfig::default()
            },
        );
        let k = key("Ticket");
        s.register(k.clone());
        eventually("three polls ran", || {
            s.stats(&k).unwrap().runs_finished >= 3
        })
        .await;
        let st = s.stats(&k).unwrap();
        assert!(st.polls >= 3);
        assert_eq!(st.triggers, 0);
        assert!(stub.requests.load(Ordering::SeqCst) >= 3);
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_stay_within_the_limit() {
        let (stub, url) = stub(3, Duration::from_millis(30)).await;
        let (s, _sink) = scheduler(
            &url,
            SchedulerConfig {
                max_concurrent_runs: 2,
                run_on_register: true,
                poll_interval: None,
                ..SchedulerConfig::default()
            },
        );
        let keys: Vec<StreamKey> = ["A1", "B1", "C1", "D1", "E1"].map(key).into();
        for k in &keys {
            s.register(k.clone());
        }
        for k in &keys {
            eventually("every stream ran", || {
                s.stats(k).unwrap().runs_finished == 1 && idle(&s, k)
            })
            .await;
        }
        let max = stub.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= 2, "{max} runs at once with a limit of 2");
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_sync_webhooks_make_the_run_a_full_read() {
        let (stub, url) = stub(2, Duration::ZERO).await;
        let (s, sink) = scheduler(&url, quiet());
        let k = key("Ticket");
        s.register(k.clone());
        s.handle(sync_webhook(&k, false));
        eventually("first run", || s.stats(&k).unwrap().runs_finished == 1).await;
        let before = stub.without_cursor.load(Ordering::SeqCst);
        s.handle(sync_webhook(&k, false));
        eventually("second run", || s.stats(&k).unwrap().runs_finished == 2).await;
        assert_eq!(
            stub.without_cursor.load(Ordering::SeqCst),
            before,
            "an incremental webhook pulls with the stored cursor"
        );
        s.handle(sync_webhook(&k, true));
        eventually("third run", || s.stats(&k).unwrap().runs_finished == 3).await;
        assert_eq!(stub.without_cursor.load(Ordering::SeqCst), before + 1);
        let status = sink.streams().await.unwrap();
        assert!(status[0].last_run.as_ref().unwrap().full);
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_webhooks_set_the_upstream_error_and_success_clears_it() {
        let (stub, url) = stub(1, Duration::ZERO).await;
        let (s, sink) = scheduler(&url, quiet());
        let (a, b) = (key("Ticket"), key("User"));
        s.register(a.clone());
        s.register(b.clone());
        let mut events = s.subscribe();
        let failure: SyncFailureWebhook = serde_json::from_value(serde_json::json!({
            "connectionId": "acme", "providerConfigKey": "github", "syncName": "tickets",
            "model": "Ticket,User", "error": {"type": "script_error", "description": "boom"},
        }))
        .unwrap();
        s.handle(WebhookEvent::SyncFailure(failure));
        let upstream = |sink: SharedSink| async move {
            sink.streams()
                .await
                .unwrap()
                .into_iter()
                .map(|st| (st.stream.model, st.upstream_error))
                .collect::<Map<_, _>>()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let errs = upstream(sink.clone()).await;
            if errs.values().filter(|e| e.is_some()).count() == 2 {
                assert!(errs["Ticket"].as_ref().unwrap().contains("boom"));
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stub.requests.load(Ordering::SeqCst),
            0,
            "failures trigger nothing"
        );
        assert_eq!(events.recv().await.unwrap().kind(), "sync");

        s.handle(sync_webhook(&a, false));
        loop {
            let errs = upstream(sink.clone()).await;
            if errs["Ticket"].is_none() {
                assert!(
                    errs["User"].is_some(),
                    "only the announced stream is cleared"
                );
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_registers_new_connections() {
        let (_stub, url) = stub(1, Duration::ZERO).await;
        let (s, _sink) = scheduler(&url, quiet());
        s.add_discovery_rule(DiscoveryRule::new("github", ["Ticket"]));
        let new = StreamKey::new("github", "new-customer", "Ticket");
        s.handle(sync_webhook(&new, false));
        assert!(s.is_registered(&new));
        eventually("the new stream ran", || {
            s.stats(&new).unwrap().runs_finished == 1
        })
        .await;
        for other in [
            StreamKey::new("github", "new-customer", "User"),
            StreamKey::new("gitlab", "new-customer", "Ticket"),
        ] {
            s.handle(sync_webhook(&other, false));
            assert!(!s.is_registered(&other), "{other}");
        }
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_a_run_between_pages() {
        let (stub, url) = stub(1000, Duration::from_millis(20)).await;
        let (s, sink) = scheduler(&url, quiet());
        let k = key("Ticket");
        s.register(k.clone());
        s.trigger(&k, false);
        eventually("a few pages were read", || {
            stub.requests.load(Ordering::SeqCst) >= 5
        })
        .await;
        s.shutdown().await;
        let st = s.stats(&k).unwrap();
        assert_eq!(st.runs_started, st.runs_finished);
        assert!(!s.register(key("Late")), "no registration after shutdown");
        let requests = stub.requests.load(Ordering::SeqCst);
        assert!(requests < 1000, "the run stopped early");
        // The store holds a prefix of the stream, with the cursor of its last record.
        let state = sink.stream_state(&k).await.unwrap();
        let live = crate::sink::read_all(&*sink, &k, false).await.unwrap();
        let n = live.len();
        assert!(n >= 1);
        assert_eq!(state.cursor.unwrap().as_str(), format!("c{}", n - 1));
        let summary = sink.streams().await.unwrap()[0].last_run.clone().unwrap();
        assert!(summary.error.unwrap().contains("stopped by shutdown"));
    }

    #[test]
    fn discovery_rules_match_integration_and_models() {
        let r = DiscoveryRule::new("github", ["Ticket"]);
        assert!(r.matches(&StreamKey::new("github", "x", "Ticket")));
        assert!(!r.matches(&StreamKey::new("github", "x", "User")));
        assert!(!r.matches(&StreamKey::new("gitlab", "x", "Ticket")));
        let any = DiscoveryRule::new("github", Vec::<String>::new());
        assert!(any.matches(&StreamKey::new("github", "x", "User")));
    }
}
