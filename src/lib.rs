//! # nango-sync
//!
//! An embedded sync engine that keeps an application's local database equal to
//! [Nango](https://nango.dev)'s records cache: crash-safe, deduplicated and fast.
//!
//! Nango syncs data from third-party APIs into its records cache and tells the
//! application by webhook when something changed. The application then has to page
//! through `GET /records` with a cursor and store what it gets, remembering the cursor
//! per stream. nango-sync does that job once and correctly:
//!
//! - the [`Engine`] pages through the records API with the stored cursor, with retries,
//!   backoff and a bounded fetch/commit pipeline;
//! - every page is merged by the [merge rule](merge) (stale versions ignored, pruned
//!   payloads and `{id}`-only deletes never wipe data you hold) and committed **together
//!   with its cursor** in one transaction, so a crash never loses or duplicates data;
//! - the storage backend is chosen with a cargo feature behind one [`RecordSink`] trait;
//! - the application reads its data back through the same store ([`RecordSink::get`],
//!   [`RecordSink::list`], typed reads such as [`RecordSink::get_as`]), and reacts to
//!   what changed through the [change feed](feed) ([`RecordSink::changes`], named
//!   consumers, a [`Subscription`] woken after each commit).
//!
//! ```no_run
//! use nango_sync::{Engine, NangoClient, SecretKey, StreamKey, SyncOptions};
//!
//! # async fn example() -> Result<(), nango_sync::Error> {
//! let client = NangoClient::builder()
//!     .secret_key(SecretKey::new(std::env::var("NANGO_SECRET_KEY").unwrap()))
//!     .build()?;
//! let sink = nango_sync::sink::open("sqlite://app.db").await?;
//! let engine = Engine::new(client, sink);
//! let stream = StreamKey::new("github", "acme-prod", "Ticket");
//! let report = engine.sync(&stream, &SyncOptions::default()).await?;
//! println!("{} added, {} updated, {} deleted", report.counts.added, report.counts.updated, report.counts.deleted);
//! # Ok(()) }
//! ```
//!
//! ## Cargo features
//!
#![doc = include_str!("../features.md")]
#![deny(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::invalid_rust_codeblocks
)]
#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod client;
pub mod engine;
mod error;
pub mod feed;
pub mod merge;
pub mod monitor;
pub mod page;
pub mod record;
pub mod repair;
mod secret;
pub mod sink;
pub mod time;
pub mod webhook;

pub use client::{NangoClient, NangoClientBuilder, Pages, RecordsQuery, RetryConfig};
pub use engine::{Engine, RunReport, SyncOptions};
pub use error::{BoxError, Error, Result, TransportKind};
pub use feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, FeedPosition, StreamFilter, Subscription,
};
pub use merge::{Counts, Outcome};
pub use page::{Page, PageError, PageErrorKind};
pub use record::{Cursor, LastAction, Metadata, RawJson, Record, StoredRecord, StreamKey};
pub use secret::{SecretKey, redact_url};
pub use sink::{
    Commit, CommitOutcome, DynRecordSink, FullReadReason, RecordSink, RunId, RunOutcome,
    RunSummary, SharedSink,
};
pub use time::Timestamp;

/// The README's examples, compiled by `cargo test --doc` so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
