//! The webhook receiver: an axum router that verifies Nango's webhooks and hands them
//! to a [`WebhookHandler`].
//!
//! The receiver never syncs inline. It reads the body (up to a size limit), checks the
//! signature over the raw bytes, parses the payload and calls the handler, which only
//! records a trigger (the [`Scheduler`](crate::engine::scheduler::Scheduler) sets a
//! flag and wakes a worker). So a webhook is answered within milliseconds, and only after
//! its trigger is queued.
//!
//! | answer | when |
//! |---|---|
//! | 200 | a verified webhook, whatever its `type` (unknown types are logged and ignored by the scheduler) |
//! | 401 | the signature header is missing, malformed or matches no key (nothing is triggered) |
//! | 400 | a verified body that is not a webhook (not JSON, or a sync webhook without its fields) |
//! | 413 | a body over the size limit ([`DEFAULT_BODY_LIMIT`] unless configured) |
//!
//! ```no_run
//! # #[cfg(feature = "webhook")]
//! # async fn example(scheduler: nango_sync::engine::scheduler::Scheduler) {
//! use std::sync::Arc;
//! use nango_sync::webhook::{WebhookReceiver, WebhookVerifier, router};
//!
//! let verifier = WebhookVerifier::new(std::env::var("NANGO_WEBHOOK_KEY").unwrap());
//! let receiver = WebhookReceiver::new(verifier, Arc::new(scheduler));
//! // Serves `POST /webhook`; merge it into the application's own router.
//! let app = axum::Router::new().merge(router(receiver));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{HMAC_HEADER, LEGACY_HEADER, WebhookEvent, WebhookVerifier};

/// The body size limit when none is configured: 1 MiB (Nango's webhooks are a few KiB).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// The path [`router`] serves.
pub const WEBHOOK_PATH: &str = "/webhook";

/// Receives verified webhooks. It must return quickly: record what to do, do not do it.
///
/// The [`Scheduler`](crate::engine::scheduler::Scheduler) implements it; so does any
/// `Fn(WebhookEvent) + Send + Sync` closure.
pub trait WebhookHandler: Send + Sync + 'static {
    /// Called once per verified, parsed webhook, before the receiver answers.
    fn handle(&self, event: WebhookEvent);
}

impl<F> WebhookHandler for F
where
    F: Fn(WebhookEvent) + Send + Sync + 'static,
{
    fn handle(&self, event: WebhookEvent) {
        self(event)
    }
}

/// Counts of the receiver's answers, for health checks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Verified webhooks handed to the handler (answered 200).
    pub accepted: u64,
    /// Refused for a missing, malformed or wrong signature (401).
    pub unauthorized: u64,
    /// Verified but not a webhook body (400).
    pub malformed: u64,
    /// Over the body size limit (413).
    pub too_large: u64,
}

/// The state of the receiver: the verifier, the handler and the body size limit.
///
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: RwLock<Arc<WebhookVerifier>>,
    handler: Arc<dyn WebhookHandler>,
    body_limit: usize,
    accepted: AtomicU64,
    unauthorized: AtomicU64,
    malformed: AtomicU64,
    too_large: AtomicU64,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("verifier", &*self.verifier())
            .field("body_limit", &self.inner.body_limit)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// A receiver that verifies with `verifier` and passes webhooks to `handler`, with
    /// the default body size limit.
    pub fn new(verifier: WebhookVerifier, handler: Arc<dyn WebhookHandler>) -> Self {
        Self::with_body_limit(verifier, handler, DEFAULT_BODY_LIMIT)
    }

    /// A receiver that answers 413 to bodies over `body_limit` bytes.
    pub fn with_body_limit(
        verifier: WebhookVerifier,
        handler: Arc<dyn WebhookHandler>,
        body_limit: usize,
    ) -> Self {
        WebhookReceiver {
            inner: Arc::new(Inner {
                verifier: RwLock::new(Arc::new(verifier)),
                handler,
                body_limit,
                accepted: AtomicU64::new(0),
                unauthorized: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
                too_large: AtomicU64::new(0),
            }),
        }
    }

    /// Replace the verifier (a signing key rotation at run time: keep the previous key
    /// in the new verifier for the overlap).
    pub fn set_verifier(&self, verifier: WebhookVerifier) {
        *self
            .inner
            .verifier
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(verifier);
    }

    /// The body size limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    /// Counts of the answers so far.
    pub fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            unauthorized: self.inner.unauthorized.load(Ordering::Relaxed),
            malformed: self.inner.malformed.load(Ordering::Relaxed),
            too_large: self.inner.too_large.load(Ordering::Relaxed),
        }
    }

    fn verifier(&self) -> Arc<WebhookVerifier> {
        self.inner
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Verify, parse and dispatch one webhook given its signature headers and raw body,
    /// and say how to answer. This is what the router does after reading the body; an
    /// application with another HTTP framework can call it directly.
    pub fn receive(
        &self,
        hmac_header: Option<&str>,
        legacy_header: Option<&str>,
        body: &[u8],
    ) -> Outcome {
        counted(self.verify_and_dispatch(hmac_header, legacy_header, body))
    }

    fn verify_and_dispatch(
        &self,
        hmac_header: Option<&str>,
        legacy_header: Option<&str>,
        body: &[u8],
    ) -> Outcome {
        if body.len() > self.inner.body_limit {
            self.inner.too_large.fetch_add(1, Ordering::Relaxed);
            return Outcome::TooLarge;
        }
        if let Err(e) = self.verifier().verify(hmac_header, legacy_header, body) {
            self.inner.unauthorized.fetch_add(1, Ordering::Relaxed);
            warn!(reason = %e, bytes = body.len(), "webhook refused: bad signature");
            return Outcome::Unauthorized;
        }
        let event = match WebhookEvent::parse(body) {
            Ok(event) => event,
            Err(e) => {
                self.inner.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "webhook refused: malformed body");
                return Outcome::Malformed;
            }
        };
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        let kind = event.kind().to_string();
        if matches!(event, WebhookEvent::Unknown { .. }) {
            info!(kind = %kind, "webhook of an unknown type: ignored");
        } else {
            debug!(kind = %kind, "webhook accepted");
        }
        self.inner.handler.handle(event);
        Outcome::Accepted { kind }
    }
}

/// How the receiver answers a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Verified and handed to the handler: 200.
    Accepted {
        /// The webhook's `type` (empty when it had none).
        kind: String,
    },
    /// Missing, malformed or wrong signature: 401.
    Unauthorized,
    /// Verified, but not a webhook body: 400.
    Malformed,
    /// Over the body size limit: 413.
    TooLarge,
}

/// Count `outcome` in `nango_sync_webhooks_total` and return it.
fn counted(outcome: Outcome) -> Outcome {
    let (result, kind) = match &outcome {
        Outcome::Accepted { kind } => ("accepted", kind.clone()),
        Outcome::Unauthorized => ("unauthorized", String::new()),
        Outcome::Malformed => ("malformed", String::new()),
        Outcome::TooLarge => ("too_large", String::new()),
    };
    metrics::counter!(crate::monitor::metrics::WEBHOOKS, "outcome" => result, "type" => kind)
        .increment(1);
    outcome
}

impl Outcome {
    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Accepted { .. } => StatusCode::OK,
            Outcome::Unauthorized => StatusCode::UNAUTHORIZED,
            Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let body = match &self {
            Outcome::Accepted { kind } => {
                serde_json::json!({ "status": "accepted", "type": kind }).to_string()
            }
            Outcome::Unauthorized => error_body("invalid_signature"),
            Outcome::Malformed => error_body("malformed_body"),
            Outcome::TooLarge => error_body("body_too_large"),
        };
        (self.status(), [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn error_body(code: &str) -> String {
    serde_json::json!({ "error": { "code": code } }).to_string()
}

/// A router serving `POST /webhook` with `receiver`. Merge it into an application's
/// router, or serve it alone (`nango-sync serve` does).
pub fn router(receiver: WebhookReceiver) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(receiver)
}

/// The axum handler behind [`router`], for an application that wants the receiver at
/// another path: `Router::new().route("/hooks/nango", post(receive)).with_state(receiver)`.
pub async fn receive(
    State(receiver): State<WebhookReceiver>,
    headers: HeaderMap,
    body: Body,
) -> Outcome {
    let limit = receiver.inner.body_limit;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        receiver.inner.too_large.fetch_add(1, Ordering::Relaxed);
        return counted(Outcome::TooLarge);
    }
    // Read the raw bytes ourselves, stopping at the limit (chunked bodies have no length).
    let mut bytes = Vec::with_capacity(declared.map_or(1024, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            receiver.inner.malformed.fetch_add(1, Ordering::Relaxed);
            debug!("webhook body could not be read");
            return counted(Outcome::Malformed);
        };
        if bytes.len() + chunk.len() > limit {
            receiver.inner.too_large.fetch_add(1, Ordering::Relaxed);
            return counted(Outcome::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    receiver.receive(header(HMAC_HEADER), header(LEGACY_HEADER), &bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::secret::SecretKey;

    const SYNC: &str = r#"{"connectionId":"acme","model":"Ticket","providerConfigKey":"github","success":true,"type":"sync"}"#;

    fn setup(limit: usize) -> (Router, WebhookReceiver, Arc<Mutex<Vec<WebhookEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let receiver = WebhookReceiver::with_body_limit(
            WebhookVerifier::new("new-key").with_key("old-key"),
            Arc::new(move |e: WebhookEvent| sink.lock().unwrap().push(e)),
            limit,
        );
        (router(receiver.clone()), receiver, seen)
    }

    fn request(body: &str, signature: Option<String>) -> Request<Body> {
        let mut b = Request::post(WEBHOOK_PATH).header(CONTENT_TYPE, "application/json");
        if let Some(sig) = signature {
            b = b.header("X-Nango-Hmac-Sha256", sig);
        }
        b.body(Body::from(body.to_string())).unwrap()
    }

    fn sign(key: &str, body: &str) -> Option<String> {
        Some(WebhookVerifier::sign(&SecretKey::new(key), body.as_bytes()))
    }

    async fn status(app: &Router, req: Request<Body>) -> StatusCode {
        app.clone().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn verified_webhooks_reach_the_handler() {
        let (app, receiver, seen) = setup(DEFAULT_BODY_LIMIT);
        assert_eq!(
            status(&app, request(SYNC, sign("new-key", SYNC))).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&app, request(SYNC, sign("old-key", SYNC))).await,
            StatusCode::OK,
            "the previous key is accepted during a rotation"
        );
        let unknown = r#"{"type":"brand_new"}"#;
        assert_eq!(
            status(&app, request(unknown, sign("new-key", unknown))).await,
            StatusCode::OK
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(matches!(seen[0], WebhookEvent::Sync(_)));
        assert_eq!(seen[2].kind(), "brand_new");
        assert_eq!(receiver.stats().accepted, 3);
    }

    #[tokio::test]
    async fn bad_signatures_are_refused_and_trigger_nothing() {
        let (app, receiver, seen) = setup(DEFAULT_BODY_LIMIT);
        for sig in [
            None,
            sign("attacker", SYNC),
            Some("not hex".into()),
            sign("new-key", "{}"),
        ] {
            assert_eq!(
                status(&app, request(SYNC, sig)).await,
                StatusCode::UNAUTHORIZED
            );
        }
        // The legacy header alone is not enough unless enabled.
        let legacy = WebhookVerifier::sign_legacy(&SecretKey::new("new-key"), SYNC.as_bytes());
        let req = Request::post(WEBHOOK_PATH)
            .header("X-Nango-Signature", legacy)
            .body(Body::from(SYNC))
            .unwrap();
        assert_eq!(status(&app, req).await, StatusCode::UNAUTHORIZED);
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(receiver.stats().unauthorized, 5);
    }

    #[tokio::test]
    async fn malformed_and_oversized_bodies() {
        let (app, receiver, seen) = setup(256);
        for bad in ["not json", "[1]", r#"{"type":"sync","success":true}"#] {
            assert_eq!(
                status(&app, request(bad, sign("new-key", bad))).await,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let big = format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(300));
        assert_eq!(
            status(&app, request(&big, sign("new-key", &big))).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // A chunked body without Content-Length is cut at the limit too.
        let chunks = futures::stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64]))),
        );
        let req = Request::post(WEBHOOK_PATH)
            .body(Body::from_stream(chunks))
            .unwrap();
        assert_eq!(status(&app, req).await, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(seen.lock().unwrap().is_empty());
        let stats = receiver.stats();
        assert_eq!((stats.malformed, stats.too_large), (3, 2));
    }

    #[tokio::test]
    async fn a_rotated_verifier_applies_to_the_next_webhook() {
        let (app, receiver, _seen) = setup(DEFAULT_BODY_LIMIT);
        receiver.set_verifier(WebhookVerifier::new("newest-key").with_key("new-key"));
        assert_eq!(
            status(&app, request(SYNC, sign("old-key", SYNC))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, request(SYNC, sign("new-key", SYNC))).await,
            StatusCode::OK
        );
        assert!(!format!("{receiver:?}").contains("new-key"));
    }
}
