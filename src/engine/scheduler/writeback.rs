//! What write-back asks of the scheduler: sync a stream at once after an action
//! ([`SyncTrigger`]), wake the waiters of async actions ([`Scheduler::action_wakeups`]),
//! and re-read streams fully after Nango's cache was emptied
//! ([`Scheduler::trigger_syncs`]).

use tracing::{debug, warn};

use super::Scheduler;
use crate::client::{ActionWakeups, SyncRef, TriggerOptions};
use crate::engine::SyncOptions;
use crate::engine::outbox::SyncTrigger;
use crate::error::Result;
use crate::record::StreamKey;

impl Scheduler {
    /// The async actions Nango said are finished: the `async_action` webhooks the
    /// receiver verified. Give it to [`WaitOptions::with_wakeups`](crate::client::WaitOptions::with_wakeups).
    pub fn action_wakeups(&self) -> ActionWakeups {
        self.inner.wakeups.clone()
    }

    /// [`Engine::trigger_syncs`](crate::Engine::trigger_syncs) for registered streams:
    /// trigger the syncs on Nango, then, for a reset that empties Nango's cache, request
    /// a full re-read of `streams` (registered ones are triggered; others run once in
    /// the background).
    pub async fn trigger_syncs(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
        options: TriggerOptions,
        streams: &[StreamKey],
    ) -> Result<()> {
        self.engine()
            .client()
            .trigger_syncs(integration, connection, syncs, options)
            .await?;
        if options.reset && options.empty_cache {
            for stream in streams {
                self.run_now(stream, true);
            }
        }
        Ok(())
    }

    /// Run `stream` now: a trigger when it is registered, else one run in the
    /// background (the engine keeps runs of a stream from overlapping).
    fn run_now(&self, stream: &StreamKey, full: bool) {
        if self.trigger(stream, full) {
            return;
        }
        if self.is_shutting_down() {
            return;
        }
        let engine = self.engine().clone();
        let stream = stream.clone();
        let options = SyncOptions {
            full,
            ..SyncOptions::default()
        };
        debug!(stream = %stream, full, "a stream that is not registered runs once");
        tokio::spawn(async move {
            if let Err(e) = engine.sync(&stream, &options).await {
                warn!(stream = %stream, error = %e, "a run asked by write-back failed");
            }
        });
    }
}

/// A done action's streams run at once.
impl SyncTrigger for Scheduler {
    fn sync_now(&self, stream: &StreamKey) {
        self.run_now(stream, false);
    }
}
