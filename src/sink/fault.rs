//! Failure injection between the steps of a commit, for tests of atomicity (cargo
//! feature `fault-injection`, which `testkit` enables).
//!
//! A store is given a [`FaultInjector`] through its options (`with_faults`); its commit
//! checks the injector at each [`FaultPoint`], and an armed point fails the next commit
//! that reaches it, once. Without the feature the checks compile to nothing.

#[cfg(feature = "fault-injection")]
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(feature = "fault-injection")]
use crate::error::Error;
use crate::error::Result;

/// A step inside a commit where a test can make the store fail.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum FaultPoint {
    /// After the page's records were written (and swept), before the stream's cursor
    /// is written.
    AfterRecords = 1,
    /// After the cursor was written, before the transaction commits.
    BeforeCommit = 2,
}

/// Arms [`FaultPoint`]s of the stores that were given it.
///
/// Disarmed, a check is one atomic load.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub struct FaultInjector {
    armed: AtomicU8,
}

#[cfg(feature = "fault-injection")]
impl FaultInjector {
    /// A disarmed injector, to share with a store's options.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Make the next commit that reaches `point` fail.
    pub fn arm(&self, point: FaultPoint) {
        self.armed.store(point as u8, Ordering::SeqCst);
    }

    /// Disarm whatever point is armed (a test step that ended before any commit
    /// reached it).
    pub fn disarm(&self) {
        self.armed.store(0, Ordering::SeqCst);
    }

    /// Fail here if this point is armed (and disarm it).
    fn check(&self, backend: &'static str, point: FaultPoint) -> Result<()> {
        if self.armed.load(Ordering::Relaxed) == point as u8
            && self
                .armed
                .compare_exchange(point as u8, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(Error::store(
                backend,
                "commit",
                false,
                format!("injected failure at {point:?}"),
            ));
        }
        Ok(())
    }
}

/// The fault points of one store: what its commit checks. Empty (and free) unless a
/// [`FaultInjector`] was given.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    injector: Option<Arc<FaultInjector>>,
}

impl Faults {
    /// Fault points armed by `injector`.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn new(injector: Arc<FaultInjector>) -> Self {
        Faults {
            injector: Some(injector),
        }
    }

    /// Fail if [`FaultPoint::AfterRecords`] is armed.
    #[inline]
    pub(crate) fn after_records(&self, backend: &'static str) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector {
            return f.check(backend, FaultPoint::AfterRecords);
        }
        let _ = backend;
        Ok(())
    }

    /// Fail if [`FaultPoint::BeforeCommit`] is armed.
    #[inline]
    pub(crate) fn before_commit(&self, backend: &'static str) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector {
            return f.check(backend, FaultPoint::BeforeCommit);
        }
        let _ = backend;
        Ok(())
    }
}

/// The `with_faults` method of a store's options (a type with a `faults: Faults` field),
/// the same for every store.
macro_rules! with_faults_option {
    () => {
        /// Check `injector` at the commit's fault points (cargo feature
        /// `fault-injection`).
        #[cfg(feature = "fault-injection")]
        pub fn with_faults(
            mut self,
            injector: std::sync::Arc<crate::sink::fault::FaultInjector>,
        ) -> Self {
            self.faults = crate::sink::fault::Faults::new(injector);
            self
        }
    };
}
pub(crate) use with_faults_option;
