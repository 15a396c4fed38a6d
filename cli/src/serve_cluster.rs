//! `serve` among several instances on one PostgreSQL store: `--instance-id` and
//! `--lease-ttl`, the store opened with its lease methods, and the instance joined to
//! the others (`nango_sync::engine::cluster`). On SQLite and sled (one writing process)
//! the instance id only names the runs in the history.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use nango_sync::engine::instance;
use nango_sync::engine::scheduler::Scheduler;
use nango_sync::sink::{SharedSink, SinkUrl};

use crate::serve::parse_duration;
use crate::sync::open_writer_sink;

/// The instance's arguments of `serve`.
#[derive(Debug, Clone, Args)]
pub struct InstanceArgs {
    /// This instance's id among the instances sharing a PostgreSQL store, recorded with
    /// each run in the history (default: host name and process id, `host-1234`).
    #[arg(long, env = "NANGO_SYNC_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long a stream's lease lasts without renewal (PostgreSQL only; default 15s):
    /// a dead instance's streams are taken over by the others within about this time.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub lease_ttl: Option<Duration>,
}

/// The store of `serve`, and the instance's place among the others.
pub struct Instance {
    pub sink: SharedSink,
    pub id: String,
    #[cfg(feature = "postgres")]
    postgres: Option<(
        std::sync::Arc<nango_sync::sink::PostgresStore>,
        nango_sync::engine::cluster::ClusterConfig,
    )>,
    #[cfg(feature = "postgres")]
    cluster: Option<std::sync::Arc<nango_sync::engine::cluster::Cluster>>,
}

/// Open the store for `serve` and check the instance's arguments.
pub async fn open(url: &str, args: &InstanceArgs) -> Result<Instance> {
    let id = args
        .instance_id
        .clone()
        .unwrap_or_else(instance::default_instance_id);
    if !instance::is_valid_instance_id(&id) {
        bail!("--instance-id {id:?}: 1 to 200 characters without control characters");
    }
    if let SinkUrl::Postgres(_) = SinkUrl::parse(url)? {
        #[cfg(feature = "postgres")]
        {
            use anyhow::Context;
            use nango_sync::engine::cluster::{ClusterConfig, DEFAULT_LEASE_TTL};
            let config =
                ClusterConfig::new(id.clone(), args.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL));
            config.validate().context("--lease-ttl")?;
            let store = nango_sync::sink::PostgresStore::connect_url(url)
                .await
                .map_err(|e| {
                    let shown = nango_sync::redact_url(url);
                    anyhow::anyhow!(
                        "cannot open the store {shown}: {e}{}",
                        crate::sync::repair_hint(&e, url)
                    )
                })?;
            let store = std::sync::Arc::new(store);
            let sink: SharedSink = store.clone();
            return Ok(Instance {
                sink,
                id,
                postgres: Some((store, config)),
                cluster: None,
            });
        }
    }
    if args.lease_ttl.is_some() {
        bail!(
            "--lease-ttl needs a PostgreSQL store (postgres://...): SQLite and sled stores are written by one process, which runs every stream"
        );
    }
    Ok(Instance {
        sink: open_writer_sink(url).await?,
        id,
        #[cfg(feature = "postgres")]
        postgres: None,
        #[cfg(feature = "postgres")]
        cluster: None,
    })
}

impl Instance {
    /// Join the other instances (PostgreSQL only): from now on the scheduler runs only
    /// the streams whose lease this instance holds. Call it before registering streams.
    pub async fn join(&mut self, scheduler: &Scheduler) -> Result<()> {
        #[cfg(feature = "postgres")]
        if let Some((store, config)) = &self.postgres {
            use anyhow::Context;
            let cluster = nango_sync::engine::cluster::Cluster::join(
                store.clone(),
                scheduler.clone(),
                config.clone(),
            )
            .await
            .context("cannot join the instances sharing the store")?;
            self.cluster = Some(std::sync::Arc::new(cluster));
        }
        let _ = scheduler;
        Ok(())
    }

    /// Among several instances: take the permits of `budget` from the store's shared
    /// count of Nango's windows for `account`, so that the instances together stay
    /// within the account's limit.
    pub fn share_budget(&self, budget: &nango_sync::client::RateBudget, account: &str) {
        #[cfg(feature = "postgres")]
        if let Some((store, _)) = &self.postgres {
            budget.set_ledger(store.rate_ledger(account));
        }
        let _ = (budget, account);
    }

    /// Take the leases of the streams registered since joining, at once.
    pub async fn refresh(&self) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.refresh().await;
        }
    }

    /// Release this instance's leases (after the scheduler stopped).
    pub async fn leave(&self) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster
            && let Err(e) = c.leave().await
        {
            tracing::warn!(error = %e, "could not release the leases; they expire by themselves");
        }
    }

    /// The instance in `/health`: its id, and among several instances its leases and
    /// counters.
    pub fn health(&self) -> serde_json::Value {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            return serde_json::to_value(c.stats()).unwrap_or_default();
        }
        serde_json::json!({ "instance": self.id })
    }
}
