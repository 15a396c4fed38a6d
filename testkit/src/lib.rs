//! # nango-sync-testkit
//!
//! What it takes to test code built on [nango-sync](nango_sync), and nango-sync itself:
//!
//! - [`FakeNango`] ([`fake`]): an in-process fake of Nango's records API, faithful to
//!   Nango's pagination, cursors, validation and errors, with scripted upstream changes
//!   (saves, deletes, prunes, hard resets, generated records), injected faults and
//!   signed webhooks. The `nango-sync dev-server`, `demo` and `bench` commands serve it.
//! - [`conformance`]: the store conformance suite, one list of checks that every
//!   [`RecordSink`](nango_sync::RecordSink) runs unchanged, each history mirrored to the
//!   in-memory reference store; [`conformance_tests!`] generates a test per check.
//! - [`stores`]: a store for one test ([`TestStore`]: a temporary SQLite file or sled
//!   directory, a fresh PostgreSQL schema, or memory, with its fault injector), and
//!   store factories for the conformance suite.
//! - [`harness`]: a fake, a store and an engine wired together ([`Harness`]), and the
//!   convergence oracle: the store's live records equal the fake's
//!   ([`assert_converged`]).
//! - [`wait`]: [`eventually`], a condition polled until it holds, failing the test with
//!   what it saw when it does not in time.
//!
//! ```no_run
//! use nango_sync::StreamKey;
//! use nango_sync_testkit::{Harness, TestStore};
//!
//! # async fn example() {
//! let h = Harness::start(TestStore::sqlite().await).await;
//! let stream = StreamKey::new("github", "acme-prod", "Ticket");
//! h.fake.generate(&stream, 250, 100);
//! h.sync(&stream).await.unwrap();
//! h.assert_converged(&stream).await;
//! # }
//! ```
//!
//! The crate enables the library's `fault-injection` feature: every store a test opens
//! through it can be made to fail between the steps of a commit.
//!
//! ## PostgreSQL
//!
//! Tests of the PostgreSQL store need a server: [`stores::postgres_server_url`] reads it
//! from `NANGO_SYNC_TEST_POSTGRES_URL` and fails, saying how to start one, when it is not
//! set (a test never passes by skipping). The repository's `scripts/test.sh` starts a
//! throwaway server and sets it. Each test works in a schema of its own
//! ([`stores::fresh_postgres_url`]), so tests run in parallel on one server.
//!
//! ## Cargo features
//!
//! | feature | default | what it enables |
//! |---|---|---|
//! | `sqlite` | yes | [`TestStore::sqlite`], the SQLite conformance factory; the library's `sqlite` |
//! | `sled` | no | [`TestStore::sled`], the sled conformance factory; the library's `sled` |
//! | `postgres` | no | [`TestStore::postgres`], the PostgreSQL conformance factory; the library's `postgres` |
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

pub mod conformance;
pub mod fake;
pub mod harness;
pub mod rng;
pub mod stores;
pub mod wait;

pub use fake::{
    Effect, FakeConfig, FakeNango, FakeRecord, Fault, GenerateSpec, IdOrder, LoggedRequest,
    WebhookDelivery, WebhookSettings,
};
pub use harness::{Harness, HarnessBuilder, assert_converged, assert_cursor_covered, local_live};
pub use rng::SplitMix64;
pub use stores::TestStore;
pub use wait::eventually;
