//! Monitoring: is the local copy healthy, and what did the engine do?
//!
//! - [`health`]: per stream, the cursor, the last run and the last successful run, the
//!   lag, the live and deleted counts, Nango's last reported error, and warnings with
//!   stable codes ([`WarningCode`]), each saying what to do. Thresholds are a
//!   [`HealthConfig`]; the time comes from a [`Clock`], so tests move it instead of
//!   waiting.
//! - [`reconcile`]: the store's live record count against Nango's `recordCount`
//!   ([`compare_counts`]); the engine makes the check after a successful run when
//!   [`EngineConfig::count_check`](crate::engine::EngineConfig::count_check) asks for
//!   it, and keeps the result in the run's summary.
//! - [`metrics`]: the names of the metrics the library records through the `metrics`
//!   facade (an application installs the recorder it wants).
//!
//! The run history itself is kept by every store ([`RecordSink::record_run`],
//! [`RecordSink::run_history`]).
//!
//! [`RecordSink::record_run`]: crate::RecordSink::record_run
//! [`RecordSink::run_history`]: crate::RecordSink::run_history

mod clock;
pub mod health;
pub mod metrics;
pub mod reconcile;

pub use clock::{Clock, ManualClock, SystemClock};
pub use health::{HealthConfig, HealthState, StreamHealth, Warning, WarningCode};
pub use reconcile::compare_counts;
