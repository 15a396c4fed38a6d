//! The scheduler among several instances: which registered streams this instance runs
//! and where a trigger for a stream it does not run goes. A scheduler alone runs every
//! stream it registers; given an [`Ownership`] (an instance of
//! `engine::cluster::Cluster`, features `postgres` and `webhook`), it runs a stream only
//! under the lease the ownership holds for it, and passes other streams' triggers on.

use std::sync::Arc;

use super::Scheduler;
use crate::record::StreamKey;
use crate::sink::lease::Fence;

/// Decides which streams a scheduler sharing its store with other instances runs.
pub trait Ownership: Send + Sync + 'static {
    /// The lease under which this instance runs `stream` now, or `None` when it does
    /// not hold the stream's lease (another instance runs it, or nobody yet).
    fn fence(&self, stream: &StreamKey) -> Option<Fence>;

    /// A run of `stream` starts: its lease, kept (not released to another instance)
    /// until [`Ownership::end_run`]; `None` when this instance does not hold it (the run
    /// does not start).
    fn begin_run(&self, stream: &StreamKey) -> Option<Fence>;

    /// The run [`Ownership::begin_run`] started has ended (recorded in the history).
    fn end_run(&self, stream: &StreamKey);

    /// A trigger of `stream` arrived here while this instance does not hold the
    /// stream's lease: pass it on to the holder.
    fn pass_on(&self, stream: &StreamKey, full: bool);
}

impl Scheduler {
    /// Share the streams with other instances: from now on a stream runs only under the
    /// lease `ownership` holds for it (polls included), and a trigger for a stream
    /// another instance holds is passed on to it.
    pub fn set_ownership(&self, ownership: Arc<dyn Ownership>) {
        *self
            .inner
            .ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ownership);
    }

    pub(super) fn ownership(&self) -> Option<Arc<dyn Ownership>> {
        self.inner.ownership()
    }

    /// Ask for a run of `stream` here, without passing the trigger on (for triggers
    /// another instance passed on, and for a stream whose lease was just taken).
    /// Returns `false` when the stream is not registered.
    pub fn trigger_here(&self, stream: &StreamKey, full: bool) -> bool {
        let Some(slot) = self.slot(stream) else {
            return false;
        };
        let coalesced = slot.mark(full);
        let mut stats = slot.stats();
        stats.triggers += 1;
        if coalesced {
            stats.triggers_coalesced += 1;
        }
        true
    }

    /// Whether `stream` runs here now: registered and, among several instances, under a
    /// lease this instance holds.
    pub fn runs_here(&self, stream: &StreamKey) -> bool {
        self.is_registered(stream) && self.ownership().is_none_or(|o| o.fence(stream).is_some())
    }
}

impl super::Inner {
    pub(super) fn ownership(&self) -> Option<Arc<dyn Ownership>> {
        self.ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the worker does with a due run.
pub(super) enum Gate {
    /// Run it, under this lease when there is one.
    Run(Option<Fence>),
    /// Not here: another instance holds the stream.
    Elsewhere,
}

/// Before a run: whether it runs here (see [`Ownership::begin_run`]).
pub(super) fn gate(inner: &super::Inner, stream: &StreamKey) -> Gate {
    match inner.ownership() {
        None => Gate::Run(None),
        Some(o) => match o.begin_run(stream) {
            Some(f) => Gate::Run(Some(f)),
            None => Gate::Elsewhere,
        },
    }
}

/// After a run that [`gate`] let through under a lease.
pub(super) fn ended(inner: &super::Inner, stream: &StreamKey, fence: Option<&Fence>) {
    if fence.is_some()
        && let Some(o) = inner.ownership()
    {
        o.end_run(stream);
    }
}
