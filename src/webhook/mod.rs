//! Nango's webhooks: payload types and signature verification.
//!
//! Nango POSTs a webhook to your backend when a sync run finished (one per model), when
//! a sync failed, when a connection was created or its credentials refreshed, and for
//! forwarded provider webhooks and finished async actions. Webhooks are hints, not data:
//! a sync webhook means "pull this stream with its stored cursor", never "apply these
//! counts". Nango retries a webhook only twice and never replays a lost one, so a
//! consumer must also poll.
//!
//! This module is always compiled so an application with its own HTTP server can verify
//! and parse webhooks itself; the ready-made axum receiver is behind the `webhook`
//! feature.

mod payload;
#[cfg(feature = "webhook")]
mod receiver;
mod signature;

pub use payload::{
    AsyncActionPayload, AsyncActionWebhook, AuthWebhook, Checkpoints, ForwardWebhook,
    MalformedWebhook, ResponseResults, SyncErrorInfo, SyncFailureWebhook, SyncWebhook,
    WebhookEvent,
};
#[cfg(feature = "webhook")]
pub use receiver::{
    DEFAULT_BODY_LIMIT, Outcome, ReceiverStats, WEBHOOK_PATH, WebhookHandler, WebhookReceiver,
    receive, router,
};
pub use signature::{HMAC_HEADER, LEGACY_HEADER, SignatureError, WebhookVerifier};
