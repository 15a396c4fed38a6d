//! Leases and fencing, for several instances sharing one PostgreSQL store.
//!
//! Each stream is run by one instance at a time: the one holding the stream's **lease**,
//! a row of the store with the holder, an expiry (the server's clock) and a **fencing
//! token** that grows by one each time the lease changes hands. A holder renews its
//! leases well before they expire; a lease that expired (its holder died, or was paused
//! past the expiry) can be taken by another instance, with the next token.
//!
//! Every commit of a leased run carries its [`Fence`] (the instance and the token it
//! got), and the store checks, inside the commit's transaction, that the instance still
//! holds the lease with that token and that it has not expired, locking the lease row
//! (`FOR SHARE`) so that no takeover lands until the commit ends. A commit that fails
//! the check is refused with [`Error::LeaseLost`](crate::Error::LeaseLost) and writes
//! nothing: an instance that lost its lease (a pause, a network partition) can never
//! overwrite what the new holder wrote.
//!
//! The lease statements are methods of `PostgresStore` (`src/sink/postgres/lease.rs`);
//! `crate::engine::cluster` (features `postgres` and `webhook`) keeps an instance's
//! membership, leases and triggers.

use std::sync::Arc;

/// A lease as a commit carries it: who holds it and with which fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The holder's instance id.
    pub instance: Arc<str>,
    /// The fencing token the holder got when it took the lease (grows by one per
    /// change of holder).
    pub token: u64,
}

impl Fence {
    /// The lease of `instance` with `token`.
    pub fn new(instance: impl Into<Arc<str>>, token: u64) -> Self {
        Fence {
            instance: instance.into(),
            token,
        }
    }
}

/// A stream's lease as the store holds it (for status pages and tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// The stream.
    pub stream: crate::record::StreamKey,
    /// The instance holding (or that last held) the lease.
    pub holder: String,
    /// The fencing token of the holder.
    pub token: u64,
    /// Whether the lease is still in force (not expired nor released).
    pub live: bool,
    /// Milliseconds until it expires (negative: expired that long ago).
    pub expires_in_ms: i64,
}

/// An instance as the membership table holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceInfo {
    /// The instance id.
    pub instance: String,
    /// Whether its last heartbeat is still in force.
    pub live: bool,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
}
