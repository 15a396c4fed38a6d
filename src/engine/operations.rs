//! Nango operations that concern local streams: a sync trigger that empties Nango's
//! cache, followed by a local full re-read ([`Engine::trigger_syncs`]), and the opt-in
//! prune after a run ([`EngineConfig::prune_after_run`](super::EngineConfig::prune_after_run)).

use tracing::{info, warn};

use super::{Engine, RunReport, SyncOptions};
use crate::client::{SyncRef, TriggerOptions};
use crate::error::Result;
use crate::record::{Cursor, StreamKey};

impl Engine {
    /// Trigger syncs on Nango ([`NangoClient::trigger_syncs`](crate::NangoClient::trigger_syncs)),
    /// then, for a reset that empties Nango's cache (`reset` + `empty_cache`), re-read
    /// `streams` fully, with sweep: Nango deletes the records of an emptied cache without
    /// any event, and only a full re-read finds the local records it no longer has.
    /// Returns the reports of those re-reads (none for other triggers).
    ///
    /// Nango runs the sync after it answers, so a re-read made at once may see the cache
    /// before that run has filled it again (then it sweeps records that come back as
    /// `ADDED` later, and converges on the next run). The run ends with a full-sync
    /// webhook, which makes a `Scheduler` (`engine::scheduler`, feature `webhook`) re-read
    /// again; without webhooks, sync these streams with [`SyncOptions::full`] once Nango
    /// reports the run finished.
    pub async fn trigger_syncs(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
        options: TriggerOptions,
        streams: &[StreamKey],
    ) -> Result<Vec<Result<RunReport>>> {
        self.client()
            .trigger_syncs(integration, connection, syncs, options)
            .await?;
        if !(options.reset && options.empty_cache) {
            return Ok(Vec::new());
        }
        info!(
            integration,
            streams = streams.len(),
            "Nango's cache was emptied: re-reading the streams fully"
        );
        Ok(self.sync_all(streams, &SyncOptions::full()).await)
    }

    /// Prune Nango's payloads of `stream` up to `cursor` (the run's last cursor).
    pub(super) async fn prune_after_run(&self, stream: &StreamKey, cursor: Option<&Cursor>) {
        let Some(cursor) = cursor else {
            return;
        };
        match self.client().prune_until(stream, cursor).await {
            Ok(n) => {
                info!(stream = %stream, pruned = n, "Nango's payloads pruned up to the stored cursor")
            }
            Err(e) => warn!(stream = %stream, error = %e, "pruning Nango's payloads failed"),
        }
    }
}
