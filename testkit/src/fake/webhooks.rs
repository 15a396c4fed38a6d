//! Webhooks the fake sends the way Nango does.
//!
//! With [`FakeNango::set_webhooks`] configured, every scripted change that adds, updates
//! or deletes records (the Rust API and the control API alike) is followed by a sync
//! webhook for its stream, POSTed to the configured URL:
//!
//! - the body is JSON with keys sorted at every level, `Content-Type: application/json`
//!   and a `nango/...` user agent;
//! - it is signed with both headers: `X-Nango-Hmac-Sha256` (hex HMAC-SHA256 of the raw
//!   body) and the legacy `X-Nango-Signature` (hex SHA-256 of key ‖ body);
//! - it is tried 3 times in all, waiting 3 s then 6 s (configurable, milliseconds for
//!   tests), only after a network error or a 5xx (never after a 3xx or 4xx), with a 20 s
//!   timeout per attempt;
//! - [`WebhookSettings::drop_all`] loses every webhook (Nango's circuit breaker, a
//!   network partition): nothing is sent, and the delivery is logged as dropped.
//!
//! Webhooks are sent in the background; [`FakeNango::webhook_deliveries`] lists what
//! happened to each one. [`FakeNango::send_sync_webhook`] and [`FakeNango::send_webhook`]
//! send one explicitly (a full-sync announcement, a failure, an auth webhook) and wait
//! for its delivery.
//!
//! Control API (same authorization as the rest of `/_fake/`):
//! `POST /_fake/webhooks` with `{"url": "...", "signing_key": "...", "drop": false,
//! "retry_delays_ms": [3000, 6000]}` configures the sender, `{"url": null}` turns it off.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Effect, FakeNango, Shared};
use nango_sync::SecretKey;
use nango_sync::record::StreamKey;
use nango_sync::time::Timestamp;
use nango_sync::webhook::{HMAC_HEADER, LEGACY_HEADER, WebhookVerifier};

/// Where and how the fake sends webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// The URL webhooks are POSTed to.
    pub url: String,
    /// The environment's webhook signing key.
    pub signing_key: SecretKey,
    /// Waits before the second, third, ... attempt (Nango: 3 s, 6 s).
    pub retry_delays: Vec<Duration>,
    /// Timeout of one attempt (Nango: 20 s).
    pub timeout: Duration,
    /// Lose every webhook instead of sending it.
    pub drop_all: bool,
}

impl WebhookSettings {
    /// Nango's delivery policy to `url`, signed with `signing_key`.
    pub fn new(url: impl Into<String>, signing_key: SecretKey) -> Self {
        WebhookSettings {
            url: url.into(),
            signing_key,
            retry_delays: vec![Duration::from_secs(3), Duration::from_secs(6)],
            timeout: Duration::from_secs(20),
            drop_all: false,
        }
    }

    /// Lose every webhook (or stop losing them).
    pub fn drop_all(mut self, drop: bool) -> Self {
        self.drop_all = drop;
        self
    }

    /// Waits between attempts (short ones for tests).
    pub fn retry_delays(mut self, delays: Vec<Duration>) -> Self {
        self.retry_delays = delays;
        self
    }

    /// Timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What happened to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The webhook's `type`.
    pub kind: String,
    /// The stream, for sync webhooks.
    pub stream: Option<StreamKey>,
    /// The body as sent (keys sorted).
    pub body: String,
    /// Lost on purpose ([`WebhookSettings::drop_all`]): never sent.
    pub dropped: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The status of the last attempt, when one was answered.
    pub status: Option<u16>,
    /// The error of the last attempt, when it failed without a status.
    pub error: Option<String>,
}

impl WebhookDelivery {
    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The fake's webhook sender (state held by the server).
#[derive(Default)]
pub(crate) struct Webhooks {
    settings: RwLock<Option<WebhookSettings>>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
}

impl Webhooks {
    fn settings(&self) -> Option<WebhookSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a scripted change: a sync webhook for the stream, in the background, when
    /// the change added, updated or deleted something and webhooks are configured.
    pub(crate) fn after_change(&self, stream: &StreamKey, effect: &Effect) {
        self.after_change_counts(
            stream,
            effect.added.len(),
            effect.updated.len(),
            effect.deleted.len(),
        );
    }

    /// [`Webhooks::after_change`] of an effect with these numbers of ids.
    pub(crate) fn after_change_counts(
        &self,
        stream: &StreamKey,
        added: usize,
        updated: usize,
        deleted: usize,
    ) {
        if added == 0 && updated == 0 && deleted == 0 {
            return;
        }
        let Some(settings) = self.settings() else {
            return;
        };
        let body = sync_body(stream, false, Some((added, updated, deleted)));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let log = self.deliveries.clone();
        let stream = stream.clone();
        runtime.spawn(async move {
            let d = deliver(&settings, "sync", Some(stream), &body).await;
            log.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        });
    }

    pub(crate) async fn send_now(
        &self,
        kind: &str,
        stream: Option<StreamKey>,
        body: &Value,
    ) -> WebhookDelivery {
        let text = canonical_json(body);
        let d = match self.settings() {
            Some(settings) => deliver(&settings, kind, stream, &text).await,
            None => WebhookDelivery {
                kind: kind.to_string(),
                stream,
                body: text,
                dropped: true,
                attempts: 0,
                status: None,
                error: Some("webhooks are not configured".into()),
            },
        };
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(d.clone());
        d
    }
}

/// The body of a sync success webhook, keys sorted.
/// The body of a sync webhook; `counts` are the added, updated and deleted records.
pub(crate) fn sync_body(
    stream: &StreamKey,
    full: bool,
    counts: Option<(usize, usize, usize)>,
) -> String {
    let now = Timestamp::now().to_utc_z();
    let (added, updated, deleted) = counts.unwrap_or((0, 0, 0));
    let variant = if stream.variant.is_empty() {
        "base".to_string()
    } else {
        stream.variant.clone()
    };
    canonical_json(&json!({
        "from": "nango",
        "type": "sync",
        "connectionId": stream.connection,
        "providerConfigKey": stream.integration,
        "syncName": format!("{}-sync", stream.model.to_lowercase()),
        "syncVariant": variant,
        "model": stream.model,
        "syncType": if full { "INITIAL" } else { "INCREMENTAL" },
        "checkpoints": {"from": if full { Value::Null } else { json!(now) }, "to": now},
        "success": true,
        "responseResults": {"added": added, "updated": updated, "deleted": deleted},
        "modifiedAfter": now,
        "queryTimeStamp": now,
    }))
}

/// JSON text with the keys of every object sorted (Nango's `stringify` of its webhook
/// bodies), whatever the map order of this build's `serde_json`.
pub fn canonical_json(v: &Value) -> String {
    nango_sync::record::canonical_json(v)
}

/// POST one webhook with Nango's retry policy.
async fn deliver(
    settings: &WebhookSettings,
    kind: &str,
    stream: Option<StreamKey>,
    body: &str,
) -> WebhookDelivery {
    let mut d = WebhookDelivery {
        kind: kind.to_string(),
        stream,
        body: body.to_string(),
        dropped: settings.drop_all,
        attempts: 0,
        status: None,
        error: None,
    };
    if settings.drop_all {
        return d;
    }
    nango_sync::client::install_crypto_provider();
    let http = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!(
            "nango/0.0.0-fake nango-sync/{}",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            d.error = Some(e.to_string());
            return d;
        }
    };
    let hmac = WebhookVerifier::sign(&settings.signing_key, body.as_bytes());
    let legacy = WebhookVerifier::sign_legacy(&settings.signing_key, body.as_bytes());
    let mut delays = settings.retry_delays.iter();
    loop {
        d.attempts += 1;
        let result = http
            .post(&settings.url)
            .header("content-type", "application/json")
            .header(HMAC_HEADER, &hmac)
            .header(LEGACY_HEADER, &legacy)
            .body(body.to_string())
            .send()
            .await;
        let retry = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                d.status = Some(status);
                d.error = None;
                status >= 500
            }
            Err(e) => {
                d.status = None;
                d.error = Some(e.to_string());
                true
            }
        };
        match delays.next() {
            Some(wait) if retry => tokio::time::sleep(*wait).await,
            _ => return d,
        }
    }
}

/// `POST /_fake/webhooks`.
pub(crate) fn control(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: Option<String>,
        signing_key: Option<String>,
        #[serde(default)]
        drop: bool,
        retry_delays_ms: Option<Vec<u64>>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let settings = match b.url {
        None => None,
        Some(url) => {
            let key = b
                .signing_key
                .filter(|k| !k.trim().is_empty())
                .ok_or("missing \"signing_key\"")?;
            let mut s = WebhookSettings::new(url, SecretKey::new(key)).drop_all(b.drop);
            if let Some(ms) = b.retry_delays_ms {
                s = s.retry_delays(ms.into_iter().map(Duration::from_millis).collect());
            }
            Some(s)
        }
    };
    let on = settings.is_some();
    *shared
        .webhooks
        .settings
        .write()
        .unwrap_or_else(|e| e.into_inner()) = settings;
    Ok(json!({ "webhooks": on, "drop": b.drop }))
}

impl FakeNango {
    /// Send webhooks like Nango after every scripted change (`None`: stop sending).
    pub fn set_webhooks(&self, settings: Option<WebhookSettings>) {
        *self
            .shared
            .webhooks
            .settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// What happened to every webhook so far, in completion order.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared
            .webhooks
            .deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Send a sync success webhook for `stream` now and wait for its delivery; `full`
    /// announces a full sync (`checkpoints.from: null`, `syncType: "INITIAL"`), as after a
    /// reset.
    pub async fn send_sync_webhook(&self, stream: &StreamKey, full: bool) -> WebhookDelivery {
        let body: Value =
            serde_json::from_str(&sync_body(stream, full, None)).expect("a JSON object");
        self.shared
            .webhooks
            .send_now("sync", Some(stream.clone()), &body)
            .await
    }

    /// Send any webhook body (a failure, an auth webhook, an unknown type) with Nango's
    /// signing and retries, and wait for its delivery.
    pub async fn send_webhook(&self, body: &Value) -> WebhookDelivery {
        let kind = body
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.shared.webhooks.send_now(&kind, None, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"z": [{"y": 1, "x": "é\""}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"z":[{"x":"é\"","y":1}]},"b":1}"#
        );
    }

    #[test]
    fn sync_bodies_announce_full_syncs() {
        let s = StreamKey::new("github", "acme", "Ticket");
        let full: Value = serde_json::from_str(&sync_body(&s, true, None)).unwrap();
        assert_eq!(full["checkpoints"]["from"], Value::Null);
        let parsed = nango_sync::webhook::WebhookEvent::parse(sync_body(&s, true, None).as_bytes());
        assert!(
            matches!(parsed, Ok(nango_sync::webhook::WebhookEvent::Sync(w)) if w.is_full_sync())
        );
        let inc = sync_body(&s, false, Some((0, 0, 0)));
        let parsed = nango_sync::webhook::WebhookEvent::parse(inc.as_bytes());
        assert!(
            matches!(parsed, Ok(nango_sync::webhook::WebhookEvent::Sync(w)) if !w.is_full_sync() && w.stream() == s)
        );
    }
}
