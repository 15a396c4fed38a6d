//! Several instances on one PostgreSQL store (features `postgres` and `webhook`):
//! membership, the spread of streams over the live instances, leases and their
//! takeover, and triggers passed on to a stream's holder.
//!
//! A [`Cluster`] joins a [`Scheduler`] to the other instances sharing its store:
//!
//! - **Membership.** The instance records a heartbeat in the store every quarter of the
//!   lease time ([`ClusterConfig::lease_ttl`]); an instance whose heartbeat is older than
//!   the lease time is dead.
//! - **Assignment.** Each stream belongs to the live instance with the highest
//!   rendezvous score (a hash of the instance id and the stream key), computed by every
//!   instance from the same membership: each holds about an equal share, and an instance
//!   that arrives or leaves moves only the streams whose highest score changes.
//! - **Leases are the authority.** An instance runs a stream only while it holds the
//!   stream's lease ([`crate::sink::lease`]), renewed with each heartbeat. It takes the
//!   lease of a stream assigned to it once the lease is free (at once after a graceful
//!   leave, within the lease time after a crash), then runs the stream to catch up. It
//!   releases the lease of a stream assigned to another instance as soon as no run of
//!   it is in progress. A lease it fails to renew is lost: the stream's next commit is
//!   refused ([`crate::Error::LeaseLost`]) and it stops running it.
//! - **Triggers reach the holder.** A trigger (a webhook) received for a stream this
//!   instance does not hold is passed on with `NOTIFY`; the holder's `LISTEN` task marks
//!   the stream due, where single-flight and coalescing apply as for a local trigger.
//!   Polls fire everywhere, but only the holder runs.
//! - **Discovered streams are shared.** A stream discovered by a webhook on one instance
//!   is stored there on its first commit; the others register the stored streams that
//!   match their discovery rules at each heartbeat, so its lease can move like any other.
//!
//! [`Cluster::leave`] ends the loop and releases the instance's leases (call it after
//! [`Scheduler::shutdown`]): the other instances take its streams over at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::scheduler::{Ownership, Scheduler};
use crate::RecordSink;
use crate::error::{Error, Result};
use crate::monitor::metrics::{LEASE_CHANGES, LEASES_HELD, TRIGGERS_PASSED_ON};
use crate::record::StreamKey;
use crate::sink::lease::Fence;
use crate::sink::postgres::PostgresStore;

/// The lease time when none is configured.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// The shortest lease time accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// How an instance joins the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This instance's id: unique among the instances sharing the store (default:
    /// [`ClusterConfig::default_instance_id`]).
    pub instance: String,
    /// How long a lease and a heartbeat last without renewal: a dead instance's streams
    /// are taken over within about this time (default [`DEFAULT_LEASE_TTL`]).
    pub lease_ttl: Duration,
}

pub use super::instance::is_valid_instance_id;

impl ClusterConfig {
    /// An instance `instance` with leases of `lease_ttl`.
    pub fn new(instance: impl Into<String>, lease_ttl: Duration) -> Self {
        ClusterConfig {
            instance: instance.into(),
            lease_ttl,
        }
    }

    /// The host name and the process id (`host-1234`), unique on one machine and
    /// across machines with distinct host names
    /// ([`instance::default_instance_id`](super::instance::default_instance_id)).
    pub fn default_instance_id() -> String {
        super::instance::default_instance_id()
    }

    /// Check the id (1 to 200 characters, no control characters) and the lease time
    /// (at least [`MIN_LEASE_TTL`]).
    pub fn validate(&self) -> Result<()> {
        if !is_valid_instance_id(&self.instance) {
            return Err(Error::invalid(
                "instance id",
                format!(
                    "{:?}: it must be 1 to 200 characters without control characters",
                    self.instance
                ),
            ));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(Error::invalid(
                "lease time",
                format!(
                    "{} ms is shorter than the minimum of {} ms",
                    self.lease_ttl.as_millis(),
                    MIN_LEASE_TTL.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// How often the instance renews its heartbeat and leases.
    pub fn tick(&self) -> Duration {
        self.lease_ttl / 4
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::new(Self::default_instance_id(), DEFAULT_LEASE_TTL)
    }
}

/// The rendezvous score of `instance` for `stream`: the live instance with the highest
/// score is the stream's assigned instance.
pub fn score(instance: &str, stream: &StreamKey) -> u64 {
    let mut h = Sha256::new();
    for f in [
        instance,
        &stream.integration,
        &stream.connection,
        &stream.model,
        &stream.variant,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The instance among `live` that `stream` is assigned to (`None` when `live` is empty).
pub fn assigned<'a>(live: &'a [String], stream: &StreamKey) -> Option<&'a str> {
    live.iter()
        .max_by_key(|i| (score(i, stream), i.as_str()))
        .map(String::as_str)
}

/// Counters of an instance, for health pages and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStats {
    /// The instance id.
    pub instance: String,
    /// The live instances at the last heartbeat.
    pub live_instances: Vec<String>,
    /// Streams whose lease this instance holds.
    pub leases_held: usize,
    /// Leases taken (streams started here).
    pub leases_taken: u64,
    /// Leases released to the assigned instance.
    pub leases_released: u64,
    /// Leases this instance failed to renew (lost to another instance or expired).
    pub leases_lost: u64,
    /// Triggers passed on to other instances.
    pub triggers_passed_on: u64,
    /// Triggers received from other instances for streams held here.
    pub triggers_received: u64,
}

/// A lease this instance holds.
struct Held {
    fence: Fence,
    /// Runs in progress under it (it is not released while there is one).
    runs: usize,
}

struct Shared {
    store: Arc<PostgresStore>,
    scheduler: Scheduler,
    config: ClusterConfig,
    held: Mutex<HashMap<StreamKey, Held>>,
    stats: Mutex<ClusterStats>,
    /// One heartbeat at a time (a lease is taken once).
    ticking: tokio::sync::Mutex<()>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, ClusterStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Gate(Arc<Shared>);

impl Ownership for Gate {
    fn fence(&self, stream: &StreamKey) -> Option<Fence> {
        self.0.held().get(stream).map(|h| h.fence.clone())
    }

    fn begin_run(&self, stream: &StreamKey) -> Option<Fence> {
        let mut held = self.0.held();
        let h = held.get_mut(stream)?;
        h.runs += 1;
        Some(h.fence.clone())
    }

    fn end_run(&self, stream: &StreamKey) {
        if let Some(h) = self.0.held().get_mut(stream) {
            h.runs = h.runs.saturating_sub(1);
        }
    }

    fn pass_on(&self, stream: &StreamKey, full: bool) {
        let shared = self.0.clone();
        let stream = stream.clone();
        shared.stats().triggers_passed_on += 1;
        metrics::counter!(TRIGGERS_PASSED_ON).increment(1);
        tokio::spawn(async move {
            if let Err(e) = shared.store.notify_trigger(&stream, full).await {
                warn!(stream = %stream, error = %e, "could not pass the trigger on to the stream's holder; its poll will catch up");
            } else {
                debug!(stream = %stream, "trigger passed on to the stream's holder");
            }
        });
    }
}

/// An instance among those sharing a PostgreSQL store (see the module documentation).
pub struct Cluster {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Join: record the first heartbeat (an unreachable store fails here), make
    /// `scheduler` run only the streams whose lease this instance holds, take the
    /// leases of the streams assigned to it that are free, and start the heartbeat and
    /// trigger tasks. `store` must be the store `scheduler`'s engine writes to.
    pub async fn join(
        store: Arc<PostgresStore>,
        scheduler: Scheduler,
        config: ClusterConfig,
    ) -> Result<Cluster> {
        config.validate()?;
        store.heartbeat(&config.instance, config.lease_ttl).await?;
        let shared = Arc::new(Shared {
            store,
            scheduler: scheduler.clone(),
            stats: Mutex::new(ClusterStats {
                instance: config.instance.clone(),
                ..ClusterStats::default()
            }),
            config,
            held: Mutex::default(),
            ticking: tokio::sync::Mutex::new(()),
        });
        scheduler.set_ownership(Arc::new(Gate(shared.clone())));
        info!(instance = %shared.config.instance, lease_ttl_ms = shared.config.lease_ttl.as_millis() as u64, "joined the instances sharing the store");
        let (stop, _) = watch::channel(false);
        let mut triggers = shared.store.listen_triggers();
        let listener = {
            let shared = shared.clone();
            let mut stop_rx = stop.subscribe();
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => return,
                        m = triggers.recv() => match m {
                            Some(m) => m,
                            None => return,
                        },
                    };
                    received(&shared, &msg.stream, msg.full);
                }
            })
        };
        tick(&shared).await;
        let heart = {
            let shared = shared.clone();
            let mut stop_rx = stop.subscribe();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(shared.config.tick());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    let stopped = tokio::select! {
                        r = stop_rx.wait_for(|s| *s) => {
                            drop(r);
                            true
                        }
                        _ = every.tick() => false,
                    };
                    if stopped {
                        return;
                    }
                    tick(&shared).await;
                }
            })
        };
        Ok(Cluster {
            shared,
            stop,
            tasks: Mutex::new(vec![listener, heart]),
        })
    }

    /// Run one heartbeat now: renew, and take the leases of the streams assigned here
    /// that are free (for streams registered since the last heartbeat).
    pub async fn refresh(&self) {
        tick(&self.shared).await;
    }

    /// This instance's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    /// The streams whose lease this instance holds, sorted.
    pub fn held_streams(&self) -> Vec<StreamKey> {
        let mut v: Vec<StreamKey> = self.shared.held().keys().cloned().collect();
        v.sort();
        v
    }

    /// Counters of this instance.
    pub fn stats(&self) -> ClusterStats {
        let mut s = self.shared.stats().clone();
        s.leases_held = self.shared.held().len();
        s
    }

    /// Stop the heartbeat and trigger tasks and release every lease of this instance
    /// (the other instances take its streams at once). Call it after
    /// [`Scheduler::shutdown`], so that no run is in progress.
    pub async fn leave(&self) -> Result<()> {
        self.stop.send_replace(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.shared.held().clear();
        metrics::gauge!(LEASES_HELD).set(0.0);
        self.shared
            .store
            .leave(&self.shared.config.instance)
            .await?;
        info!(instance = %self.shared.config.instance, "left the instances sharing the store; leases released");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A trigger another instance passed on.
fn received(shared: &Shared, stream: &StreamKey, full: bool) {
    let scheduler = &shared.scheduler;
    if !scheduler.is_registered(stream) {
        let discoverable = scheduler
            .discovery_rules()
            .iter()
            .any(|r| r.matches(stream));
        if discoverable && stream.validate().is_ok() {
            info!(stream = %stream, "stream announced by another instance: registered by discovery");
            scheduler.register(stream.clone());
        }
        return;
    }
    if shared.held().contains_key(stream) {
        shared.stats().triggers_received += 1;
        debug!(stream = %stream, full, "trigger passed on by another instance: run due");
        scheduler.trigger_here(stream, full);
    }
}

/// One heartbeat: membership, renewals, takeovers and releases.
async fn tick(shared: &Shared) {
    let _one = shared.ticking.lock().await;
    tick_once(shared).await;
    metrics::gauge!(LEASES_HELD).set(shared.held().len() as f64);
}

async fn tick_once(shared: &Shared) {
    let config = &shared.config;
    let me = config.instance.as_str();
    if let Err(e) = shared.store.heartbeat(me, config.lease_ttl).await {
        warn!(error = %e, "could not record this instance's heartbeat; retrying at the next one");
    }
    let live = match shared.store.live_instances().await {
        Ok(live) => live,
        Err(e) => {
            warn!(error = %e, "could not read the live instances");
            Vec::new()
        }
    };

    // Renew what is held; what is not renewed is lost.
    let held: Vec<(StreamKey, u64)> = shared
        .held()
        .iter()
        .map(|(s, h)| (s.clone(), h.fence.token))
        .collect();
    match shared.store.renew_leases(me, config.lease_ttl, &held).await {
        Ok(renewed) => {
            let renewed: HashSet<StreamKey> = renewed.into_iter().collect();
            let mut map = shared.held();
            let lost: Vec<StreamKey> = map
                .keys()
                .filter(|s| !renewed.contains(*s))
                .cloned()
                .collect();
            for s in &lost {
                map.remove(s);
                warn!(stream = %s, "the stream's lease was lost (expired or taken over): not run here any more");
            }
            drop(map);
            shared.stats().leases_lost += lost.len() as u64;
            metrics::counter!(LEASE_CHANGES, "change" => "lost").increment(lost.len() as u64);
        }
        Err(e) => warn!(error = %e, "could not renew the leases; retrying at the next heartbeat"),
    }
    if live.is_empty() {
        return;
    }
    shared.stats().live_instances = live.clone();

    // Streams discovered and stored by other instances.
    let rules = shared.scheduler.discovery_rules();
    if !rules.is_empty() {
        match shared.store.streams().await {
            Ok(stored) => {
                for s in stored {
                    if !shared.scheduler.is_registered(&s.stream)
                        && rules.iter().any(|r| r.matches(&s.stream))
                        && s.stream.validate().is_ok()
                    {
                        info!(stream = %s.stream, "stream discovered by another instance: registered");
                        shared.scheduler.register(s.stream);
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not read the stored streams"),
        }
    }

    for stream in shared.scheduler.stream_keys() {
        let mine = assigned(&live, &stream) == Some(me);
        let holding = shared.held().contains_key(&stream);
        if mine && !holding {
            match shared
                .store
                .acquire_lease(&stream, me, config.lease_ttl)
                .await
            {
                Ok(Some(fence)) => {
                    info!(stream = %stream, token = fence.token, "took the stream's lease: it runs here");
                    shared
                        .held()
                        .insert(stream.clone(), Held { fence, runs: 0 });
                    shared.stats().leases_taken += 1;
                    metrics::counter!(LEASE_CHANGES, "change" => "taken").increment(1);
                    shared.scheduler.trigger_here(&stream, false);
                }
                Ok(None) => {
                    debug!(stream = %stream, "the stream's lease is still held elsewhere");
                }
                Err(e) => warn!(stream = %stream, error = %e, "could not take the stream's lease"),
            }
        } else if !mine && holding {
            // Not while a run is in progress: no run starts under a lease once it is
            // out of the map, and none is in progress when it leaves it.
            let fence = {
                let mut held = shared.held();
                match held.get(&stream) {
                    Some(h) if h.runs == 0 => held.remove(&stream).map(|h| h.fence),
                    _ => None,
                }
            };
            if let Some(fence) = fence {
                match shared.store.release_lease(&stream, &fence).await {
                    Ok(_) => {
                        info!(stream = %stream, "released the stream's lease to the instance it is assigned to");
                        shared.stats().leases_released += 1;
                        metrics::counter!(LEASE_CHANGES, "change" => "released").increment(1);
                    }
                    Err(e) => {
                        warn!(stream = %stream, error = %e, "could not release the stream's lease; it expires by itself");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(n: usize) -> Vec<StreamKey> {
        (0..n)
            .map(|i| StreamKey::new("github", format!("c{i}"), "Issue"))
            .collect()
    }

    #[test]
    fn assignment_is_fair_and_moves_only_what_it_must() {
        let all = streams(3000);
        let two: Vec<String> = vec!["a".into(), "b".into()];
        let three: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let mut share: HashMap<&str, usize> = HashMap::new();
        let mut moved = 0;
        for s in &all {
            let before = assigned(&two, s).unwrap();
            let after = assigned(&three, s).unwrap();
            *share.entry(after).or_default() += 1;
            if before != after {
                // Only to the newcomer.
                assert_eq!(after, "c");
                moved += 1;
            }
        }
        for (i, n) in &share {
            assert!((850..=1150).contains(n), "{i} holds {n} of 3000");
        }
        assert_eq!(moved, share["c"]);
        assert_eq!(assigned(&[], &all[0]), None);
    }

    #[test]
    fn ids_and_lease_times_are_checked() {
        assert!(
            ClusterConfig::new("", DEFAULT_LEASE_TTL)
                .validate()
                .is_err()
        );
        assert!(
            ClusterConfig::new("a\nb", DEFAULT_LEASE_TTL)
                .validate()
                .is_err()
        );
        assert!(
            ClusterConfig::new("a", Duration::from_millis(200))
                .validate()
                .is_err()
        );
        assert!(ClusterConfig::default().validate().is_ok());
        assert!(
            ClusterConfig::default()
                .instance
                .ends_with(&format!("-{}", std::process::id()))
        );
    }
}
