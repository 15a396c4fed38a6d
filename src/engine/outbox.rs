//! The outbox worker: delivers the actions of a store's [outbox](crate::sink::outbox)
//! to Nango, at least once.
//!
//! [`OutboxWorker::run`] runs `concurrency` delivery loops. Each claims the oldest
//! claimable item with a lease ([`OutboxConfig::lease`]), triggers its action (one
//! attempt per claim: the retries are the outbox's own, durable ones), extends the lease
//! every third of it while the action runs, and settles the item:
//!
//! - the action ran: **done** with its output; then the models it names in `then_sync`
//!   are synced at once ([`SyncTrigger`]), so the record it wrote comes back through the
//!   normal path;
//! - a permanent error (any 4xx, a 424 `script_http_error` included, or a 500
//!   `action_script_runtime_error`: what [`Error::is_retryable`] says): **failed** at once
//!   with Nango's status, code, message and payload;
//! - a retryable error (connection errors, timeouts, 5xx, 429): **pending** again after
//!   an exponential backoff with jitter (429: at least `Retry-After`), until the item
//!   used its `max_attempts`, then **failed** with the last error.
//!
//! A worker that dies leaves its item running; once the lease runs out, another claim
//! (of this process after a restart, or of another process sharing the store) delivers
//! it again. An action can therefore run more than once: actions should be idempotent,
//! or take an idempotency key from their input.
//!
//! The worker's requests go through its client, so a client built with a shared
//! [`RateBudget`](crate::client::RateBudget) keeps them within the account's limit
//! together with the syncs. [`OutboxWorker::stop`] stops claiming and waits for the
//! deliveries in flight (up to [`OutboxConfig::shutdown_grace`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Engine, SyncOptions};
use crate::client::ActionRequest;
use crate::error::{Error, Result};
use crate::record::{RawJson, StreamKey};
use crate::sink::outbox::{Claim, ClaimRequest, OutboxError, OutboxItem, Settlement};
use crate::sink::{DynRecordSink, SharedSink};
use crate::time::Timestamp;

/// How an [`OutboxWorker`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// The worker's name, stored in the items it claims (unique per process sharing a
    /// store; default: `<host>-<pid>-<random>`).
    pub worker_id: String,
    /// Deliveries at the same time (default 4; 1 delivers in enqueue order).
    pub concurrency: usize,
    /// How long a claim holds without an extension (default 60 s). The worker extends
    /// it every third of it while an action runs; when the worker dies, its items are
    /// delivered again this long after its last extension.
    pub lease: Duration,
    /// How often an empty outbox is looked at again (default 1 s; an enqueue through
    /// [`OutboxWorker::enqueue`] wakes the worker at once).
    pub poll_interval: Duration,
    /// The wait after the first failed attempt (default 2 s); it doubles after each
    /// further one, with jitter.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (default 5 minutes).
    pub max_backoff: Duration,
    /// How long [`OutboxWorker::stop`] waits for the deliveries in flight (default
    /// 30 s); an action still running then is delivered again after its lease.
    pub shutdown_grace: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            worker_id: default_worker_id(),
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

fn default_worker_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}-{}-{:06x}", std::process::id(), r & 0xff_ffff)
}

impl OutboxConfig {
    /// The wait before attempt `attempts + 1`, after `attempts` failed with `err`.
    pub fn backoff(&self, attempts: u32, err: &Error) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let jittered = jitter(base);
        match err.root() {
            Error::Nango {
                status: 429,
                retry_after,
                ..
            } => jittered.max(Duration::from_secs(retry_after.unwrap_or(1).max(1))),
            _ => jittered,
        }
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d.mul_f64(0.5 + 0.5 * ((r >> 11) as f64 / (1u64 << 53) as f64))
}

/// Syncs a stream named by a done item's `then_sync` at once. The scheduler implements
/// it (a trigger of a registered stream); without one, the worker runs the sync itself.
pub trait SyncTrigger: Send + Sync + 'static {
    /// Sync `stream` now (a trigger; the sync runs in the background).
    fn sync_now(&self, stream: &StreamKey);
}

/// What a worker did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Items claimed (deliveries started).
    pub claimed: u64,
    /// Items done.
    pub done: u64,
    /// Items failed.
    pub failed: u64,
    /// Attempts that failed and were put back for later.
    pub retried: u64,
    /// Claims lost before they were settled (the lease ran out meanwhile).
    pub lost: u64,
    /// Syncs triggered by done items.
    pub syncs_triggered: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    syncs_triggered: AtomicU64,
}

/// Delivers the outbox of an engine's store (see the [module documentation](self)).
/// Cheap to clone.
#[derive(Clone)]
pub struct OutboxWorker {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: OutboxConfig,
    trigger: Option<Arc<dyn SyncTrigger>>,
    wake: Notify,
    stopping: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
    counters: Counters,
    syncs: std::sync::Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl OutboxWorker {
    /// A worker delivering the outbox of `engine`'s store with `engine`'s client.
    pub fn new(engine: Engine, config: OutboxConfig) -> Self {
        let (stop, _) = tokio::sync::watch::channel(false);
        OutboxWorker {
            inner: Arc::new(Inner {
                engine,
                config,
                trigger: None,
                wake: Notify::new(),
                stopping: AtomicBool::new(false),
                stop,
                counters: Counters::default(),
                syncs: std::sync::Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// Sync the streams of done items through `trigger` (the scheduler) instead of
    /// running them in the worker.
    pub fn with_sync_trigger(self, trigger: Arc<dyn SyncTrigger>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("with_sync_trigger is called on a new worker, before it is cloned")
        });
        OutboxWorker {
            inner: Arc::new(Inner {
                trigger: Some(trigger),
                ..inner
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// What the worker did so far.
    pub fn stats(&self) -> OutboxStats {
        let c = &self.inner.counters;
        OutboxStats {
            claimed: c.claimed.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            syncs_triggered: c.syncs_triggered.load(Ordering::Relaxed),
        }
    }

    /// Enqueue `item` in the store and wake the worker.
    pub async fn enqueue(&self, item: crate::sink::outbox::NewOutboxItem) -> Result<OutboxItem> {
        let item = self.sink().outbox_enqueue(item).await?;
        self.wake();
        Ok(item)
    }

    /// Look at the outbox now (after an enqueue by another handle of the store).
    pub fn wake(&self) {
        self.inner.wake.notify_waiters();
    }

    fn sink(&self) -> &SharedSink {
        self.inner.engine.sink()
    }

    /// Deliver until [`OutboxWorker::stop`] is called (or the returned future is
    /// dropped: the deliveries in flight are then abandoned, and their items delivered
    /// again after their lease).
    pub async fn run(&self) {
        let mut stop = self.inner.stop.subscribe();
        if *stop.borrow() {
            return;
        }
        info!(
            worker = %self.inner.config.worker_id,
            concurrency = self.inner.config.concurrency,
            "outbox worker starts"
        );
        let mut lanes = JoinSet::new();
        for lane in 0..self.inner.config.concurrency.max(1) {
            let worker = self.clone();
            lanes.spawn(async move { worker.lane(lane).await });
        }
        // Stop requested: the lanes finish the deliveries in flight.
        let _ = stop.wait_for(|s| *s).await;
        let grace = self.inner.config.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while lanes.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "outbox deliveries still running at the end of the grace period: abandoned (delivered again after their lease)"
            );
            lanes.abort_all();
        }
        let syncs =
            std::mem::take(&mut *self.inner.syncs.lock().unwrap_or_else(|p| p.into_inner()));
        let mut syncs = syncs;
        let _ =
            tokio::time::timeout(grace, async { while syncs.join_next().await.is_some() {} }).await;
        syncs.abort_all();
        info!(stats = ?self.stats(), "outbox worker stopped");
    }

    /// Stop claiming; [`OutboxWorker::run`] returns once the deliveries in flight are
    /// settled (or the grace period ends).
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop.send_replace(true);
        self.inner.wake.notify_waiters();
    }

    fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    async fn lane(&self, lane: usize) {
        let config = &self.inner.config;
        let mut failures = 0u32;
        while !self.stopping() {
            let request = ClaimRequest {
                worker: config.worker_id.clone(),
                now: Timestamp::now(),
                lease: config.lease,
            };
            let wake = self.inner.wake.notified();
            match self.sink().outbox_claim(&request).await {
                Ok(Some(item)) => {
                    failures = 0;
                    self.inner.counters.claimed.fetch_add(1, Ordering::Relaxed);
                    self.deliver(item).await;
                }
                Ok(None) => {
                    tokio::select! {
                        () = tokio::time::sleep(config.poll_interval) => {}
                        () = wake => {}
                    }
                }
                Err(e) => {
                    failures += 1;
                    let wait = config.poll_interval.saturating_mul(failures.min(30));
                    warn!(lane, error = %e, wait_ms = wait.as_millis() as u64, "outbox claim failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Deliver one claimed item and settle it.
    async fn deliver(&self, item: OutboxItem) {
        let Some(claim) = item.claim() else {
            return;
        };
        let config = &self.inner.config;
        debug!(item = item.id, action = %item.action, attempt = item.attempts, "delivering");
        let settlement = match self.attempt(&item, &claim).await {
            Ok(output) => Settlement::Done { output },
            Err(e) => {
                let error = OutboxError::from_error(&e);
                if !e.is_retryable() || item.attempts >= item.max_attempts {
                    warn!(item = item.id, action = %item.action, attempts = item.attempts, error = %e, "outbox item failed");
                    Settlement::Failed { error }
                } else {
                    let wait = config.backoff(item.attempts, &e);
                    debug!(item = item.id, error = %e, wait_ms = wait.as_millis() as u64, "attempt failed; retrying later");
                    Settlement::Retry {
                        error,
                        at: Timestamp::now().add_micros(wait.as_micros() as i64),
                    }
                }
            }
        };
        let done = matches!(settlement, Settlement::Done { .. });
        let (outcome, label) = match &settlement {
            Settlement::Done { .. } => (&self.inner.counters.done, "done"),
            Settlement::Failed { .. } => (&self.inner.counters.failed, "failed"),
            Settlement::Retry { .. } => (&self.inner.counters.retried, "retry"),
        };
        match settle_with_retries(&**self.sink(), &claim, settlement).await {
            Ok(true) => {
                outcome.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::monitor::metrics::OUTBOX_DELIVERIES, "outcome" => label)
                    .increment(1);
                if done {
                    self.then_sync(&item);
                }
            }
            Ok(false) => {
                self.inner.counters.lost.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::monitor::metrics::OUTBOX_DELIVERIES, "outcome" => "lost")
                    .increment(1);
                warn!(
                    item = item.id,
                    "the claim ran out before the item was settled; another delivery owns it"
                );
            }
            Err(e) => {
                self.inner.counters.lost.fetch_add(1, Ordering::Relaxed);
                warn!(item = item.id, error = %e, "could not settle the outbox item; it is delivered again after its lease");
            }
        }
    }

    /// Trigger the item's action once, extending the lease meanwhile.
    async fn attempt(&self, item: &OutboxItem, claim: &Claim) -> Result<RawJson> {
        item.check()?;
        let input =
            match &item.input {
                Some(text) => Some(RawValue::from_string(text.as_str().to_owned()).map_err(
                    |e| Error::invalid("action input", format!("item {}: {e}", item.id)),
                )?),
                None => None,
            };
        let request = ActionRequest {
            integration: &item.integration,
            connection: &item.connection,
            action: &item.action,
            input: input.as_deref(),
        };
        let call = self.inner.engine.client().trigger_action_once(&request);
        let keep = self.keep_lease(claim);
        tokio::pin!(call, keep);
        tokio::select! {
            result = &mut call => result,
            () = &mut keep => {
                // The lease is lost: someone else delivers the item now. Finish the
                // call anyway (its outcome is refused when settled).
                call.await
            }
        }
    }

    /// Extend `claim`'s lease every third of the lease; returns when it cannot.
    async fn keep_lease(&self, claim: &Claim) {
        let lease = self.inner.config.lease;
        let every = (lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let now = Timestamp::now();
            let until = now.add_micros(lease.as_micros() as i64);
            match self.sink().outbox_extend(claim, until, now).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(item = claim.id, "outbox lease lost while the action runs");
                    return;
                }
                Err(e) => warn!(item = claim.id, error = %e, "could not extend an outbox lease"),
            }
        }
    }

    fn then_sync(&self, item: &OutboxItem) {
        let streams = match item.then_sync_streams() {
            Ok(s) => s,
            Err(e) => {
                warn!(item = item.id, error = %e, "an outbox item names a stream that cannot be synced");
                return;
            }
        };
        for stream in streams {
            self.inner
                .counters
                .syncs_triggered
                .fetch_add(1, Ordering::Relaxed);
            debug!(item = item.id, stream = %stream, "then sync");
            match &self.inner.trigger {
                Some(t) => t.sync_now(&stream),
                None => {
                    let engine = self.inner.engine.clone();
                    self.inner
                        .syncs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .spawn(async move {
                            if let Err(e) = engine.sync(&stream, &SyncOptions::default()).await {
                                warn!(stream = %stream, error = %e, "the sync after an action failed");
                            }
                        });
                }
            }
        }
    }
}

/// Settle, trying again a few times on a retryable store error (a busy file, a lost
/// connection).
async fn settle_with_retries(
    sink: &dyn DynRecordSink,
    claim: &Claim,
    settlement: Settlement,
) -> Result<bool> {
    let mut wait = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        tries += 1;
        match sink
            .outbox_settle(claim, settlement.clone(), Timestamp::now())
            .await
        {
            Err(e) if e.is_retryable() && tries < 6 => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let c = OutboxConfig {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            ..OutboxConfig::default()
        };
        let e = Error::Nango {
            status: 503,
            code: "x".into(),
            message: None,
            request: "r".into(),
            retry_after: None,
            payload: None,
        };
        for (attempts, full) in [(1, 2), (2, 4), (3, 8), (6, 60), (30, 60)] {
            let d = c.backoff(attempts, &e);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
        let limited = Error::Nango {
            status: 429,
            code: "too_many_request".into(),
            message: None,
            request: "r".into(),
            retry_after: Some(30),
            payload: None,
        };
        assert!(c.backoff(1, &limited) >= Duration::from_secs(30));
    }

    #[test]
    fn worker_ids_name_the_process() {
        let id = default_worker_id();
        assert!(id.contains(&std::process::id().to_string()), "{id}");
        assert_ne!(id, default_worker_id(), "a random part tells workers apart");
    }
}
