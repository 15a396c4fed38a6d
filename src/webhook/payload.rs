//! Webhook payload types, tolerant of fields Nango adds later.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::StreamKey;

/// A webhook Nango sent, by its `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WebhookEvent {
    /// A sync run succeeded for one model (`type: "sync"`, `success: true`).
    Sync(SyncWebhook),
    /// A sync run failed (`type: "sync"`, `success: false`).
    SyncFailure(SyncFailureWebhook),
    /// A connection was created, overridden or refreshed (`type: "auth"`).
    Auth(AuthWebhook),
    /// A provider's webhook forwarded by Nango (`type: "forward"`).
    Forward(ForwardWebhook),
    /// An async action finished (`type: "async_action"`).
    AsyncAction(AsyncActionWebhook),
    /// A type this version does not know (or a body without `type`, like a provider
    /// payload Nango could not match to a connection). Accept and ignore it.
    Unknown {
        /// The `type` field, empty when absent.
        kind: String,
        /// The whole body.
        body: Value,
    },
}

/// Why a webhook body could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("malformed webhook body: {0}")]
pub struct MalformedWebhook(String);

impl WebhookEvent {
    /// Parse a webhook body (the raw bytes, after the signature was checked).
    pub fn parse(body: &[u8]) -> Result<WebhookEvent, MalformedWebhook> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| MalformedWebhook(e.to_string()))?;
        if !value.is_object() {
            return Err(MalformedWebhook("the body is not a JSON object".into()));
        }
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let v = value;
        let event = match kind.as_str() {
            "sync" => {
                if v.get("success").and_then(Value::as_bool) == Some(false) {
                    WebhookEvent::SyncFailure(from_value(v)?)
                } else {
                    WebhookEvent::Sync(from_value(v)?)
                }
            }
            "auth" => WebhookEvent::Auth(from_value(v)?),
            "forward" => WebhookEvent::Forward(from_value(v)?),
            "async_action" => WebhookEvent::AsyncAction(from_value(v)?),
            _ => WebhookEvent::Unknown { kind, body: v },
        };
        Ok(event)
    }

    /// The `type` field.
    pub fn kind(&self) -> &str {
        match self {
            WebhookEvent::Sync(_) | WebhookEvent::SyncFailure(_) => "sync",
            WebhookEvent::Auth(_) => "auth",
            WebhookEvent::Forward(_) => "forward",
            WebhookEvent::AsyncAction(_) => "async_action",
            WebhookEvent::Unknown { kind, .. } => kind,
        }
    }
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, MalformedWebhook> {
    serde_json::from_value(v).map_err(|e| MalformedWebhook(e.to_string()))
}

/// `checkpoints` of a sync webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoints {
    /// Where the run started; `null` for a full sync.
    #[serde(default)]
    pub from: Option<Value>,
    /// Where the run ended.
    #[serde(default)]
    pub to: Option<Value>,
}

/// `responseResults` of a sync webhook. Informational only: never apply them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseResults {
    /// Records added.
    #[serde(default)]
    pub added: u64,
    /// Records updated.
    #[serde(default)]
    pub updated: u64,
    /// Records deleted.
    #[serde(default)]
    pub deleted: u64,
}

/// A successful sync run for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncWebhook {
    /// The connection id.
    pub connection_id: String,
    /// The integration id.
    pub provider_config_key: String,
    /// The sync's name.
    #[serde(default)]
    pub sync_name: String,
    /// The sync variant (`base` or absent: none).
    #[serde(default)]
    pub sync_variant: Option<String>,
    /// The model.
    pub model: String,
    /// `INITIAL`, `INCREMENTAL` or (deprecated) `WEBHOOK`.
    #[serde(default)]
    pub sync_type: Option<String>,
    /// Where the run started and ended.
    #[serde(default)]
    pub checkpoints: Option<Checkpoints>,
    /// Counts of the run (informational).
    #[serde(default)]
    pub response_results: Option<ResponseResults>,
    /// The run's start time (not "what changed": prefer the stored cursor).
    #[serde(default)]
    pub modified_after: Option<String>,
    /// When Nango queried.
    #[serde(default)]
    pub query_time_stamp: Option<String>,
}

impl SyncWebhook {
    /// Whether this run was a full sync: `checkpoints` absent or `checkpoints.from`
    /// null, or (older servers) `syncType == "INITIAL"`. The local copy should then be
    /// re-read in full so records dropped upstream are swept.
    pub fn is_full_sync(&self) -> bool {
        if self.sync_type.as_deref() == Some("INITIAL") {
            return true;
        }
        match &self.checkpoints {
            None => self.sync_type.is_none(),
            Some(c) => c.from.as_ref().is_none_or(Value::is_null),
        }
    }

    /// The stream this webhook is about.
    pub fn stream(&self) -> StreamKey {
        StreamKey::new(&self.provider_config_key, &self.connection_id, &self.model)
            .with_variant(self.sync_variant.as_deref().unwrap_or_default())
    }
}

/// The `error` of a failure webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncErrorInfo {
    /// The error type.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// What went wrong.
    #[serde(default)]
    pub description: String,
}

/// A failed sync run (one per run, for all its models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncFailureWebhook {
    /// The connection id.
    pub connection_id: String,
    /// The integration id.
    pub provider_config_key: String,
    /// The sync's name.
    #[serde(default)]
    pub sync_name: String,
    /// The sync variant.
    #[serde(default)]
    pub sync_variant: Option<String>,
    /// The run's model names joined by commas.
    #[serde(default)]
    pub model: String,
    /// The sync type.
    #[serde(default)]
    pub sync_type: Option<String>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<SyncErrorInfo>,
    /// When the run started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it failed.
    #[serde(default)]
    pub failed_at: Option<String>,
}

impl SyncFailureWebhook {
    /// The models of the failed run (`model` split at commas).
    pub fn models(&self) -> Vec<&str> {
        self.model
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect()
    }

    /// The streams of the failed run.
    pub fn streams(&self) -> Vec<StreamKey> {
        self.models()
            .into_iter()
            .map(|m| {
                StreamKey::new(&self.provider_config_key, &self.connection_id, m)
                    .with_variant(self.sync_variant.as_deref().unwrap_or_default())
            })
            .collect()
    }

    /// A one-line description of the failure, for status.
    pub fn describe(&self) -> String {
        match &self.error {
            Some(e) => format!(
                "sync {} failed: {}: {}",
                self.sync_name, e.kind, e.description
            ),
            None => format!("sync {} failed", self.sync_name),
        }
    }
}

/// A connection was created, overridden, or its credentials refreshed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthWebhook {
    /// The connection id.
    pub connection_id: String,
    /// The integration id.
    pub provider_config_key: String,
    /// The auth mode (`OAUTH2`, `API_KEY`, ...).
    #[serde(default)]
    pub auth_mode: Option<String>,
    /// The provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// The Nango environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// `creation`, `override` or `refresh`.
    #[serde(default)]
    pub operation: Option<String>,
    /// Whether it succeeded.
    #[serde(default)]
    pub success: bool,
    /// The error, when it failed.
    #[serde(default)]
    pub error: Option<Value>,
    /// Tags of the connection.
    #[serde(default)]
    pub tags: Option<Value>,
    /// The end user.
    #[serde(default)]
    pub end_user: Option<Value>,
}

/// A provider's webhook forwarded by Nango.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardWebhook {
    /// The provider.
    #[serde(default)]
    pub from: Option<String>,
    /// The connection id.
    #[serde(default)]
    pub connection_id: Option<String>,
    /// The integration id.
    #[serde(default)]
    pub provider_config_key: Option<String>,
    /// The provider's payload.
    #[serde(default)]
    pub payload: Value,
}

/// The `payload` of an async action webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncActionPayload {
    /// The action run's id.
    pub id: String,
    /// Where to get its result.
    #[serde(default)]
    pub status_url: Option<String>,
}

/// An async action finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncActionWebhook {
    /// The connection id.
    pub connection_id: String,
    /// The integration id.
    pub provider_config_key: String,
    /// The action run.
    pub payload: AsyncActionPayload,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> WebhookEvent {
        WebhookEvent::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn sync_success_incremental_and_full() {
        let body = r#"{"checkpoints":{"from":"2026-11-26T19:00:00.000Z","to":"2026-11-26T19:05:00.000Z"},"connectionId":"acme","from":"nango","model":"Ticket","modifiedAfter":"2026-11-26T19:05:00.000Z","newField":{"x":1},"providerConfigKey":"github","queryTimeStamp":"2026-11-26T19:05:01.000Z","responseResults":{"added":1,"deleted":0,"updated":2},"success":true,"syncName":"tickets","syncType":"INCREMENTAL","syncVariant":"base","type":"sync"}"#;
        let WebhookEvent::Sync(w) = parse(body) else {
            panic!("not a sync webhook")
        };
        assert_eq!(w.stream(), StreamKey::new("github", "acme", "Ticket"));
        assert!(!w.is_full_sync());
        assert_eq!(w.response_results.unwrap().updated, 2);
        let full = body.replace(r#""from":"2026-11-26T19:00:00.000Z""#, r#""from":null"#);
        let WebhookEvent::Sync(w) = parse(&full) else {
            panic!()
        };
        assert!(w.is_full_sync());
        let initial = r#"{"type":"sync","connectionId":"c","providerConfigKey":"p","model":"M","syncType":"INITIAL","success":true,"syncVariant":"eu"}"#;
        let WebhookEvent::Sync(w) = parse(initial) else {
            panic!()
        };
        assert!(w.is_full_sync());
        assert_eq!(w.stream().variant, "eu");
    }

    #[test]
    fn sync_failure_splits_models() {
        let body = r#"{"type":"sync","success":false,"connectionId":"c","providerConfigKey":"p","syncName":"s","model":"Ticket,User","error":{"type":"script_error","description":"boom"},"startedAt":"x","failedAt":"y"}"#;
        let WebhookEvent::SyncFailure(w) = parse(body) else {
            panic!()
        };
        assert_eq!(w.models(), ["Ticket", "User"]);
        assert_eq!(w.streams()[1], StreamKey::new("p", "c", "User"));
        assert!(w.describe().contains("script_error: boom"));
    }

    #[test]
    fn auth_forward_async_and_unknown() {
        let auth = r#"{"type":"auth","connectionId":"c","providerConfigKey":"p","authMode":"OAUTH2","provider":"github","environment":"prod","operation":"creation","success":true}"#;
        assert!(
            matches!(parse(auth), WebhookEvent::Auth(a) if a.operation.as_deref() == Some("creation"))
        );
        let fwd = r#"{"type":"forward","from":"hubspot","connectionId":"c","providerConfigKey":"p","payload":{"a":1}}"#;
        assert!(matches!(parse(fwd), WebhookEvent::Forward(f) if f.payload["a"] == 1));
        let act = r#"{"type":"async_action","connectionId":"c","providerConfigKey":"p","payload":{"id":"x","statusUrl":"/action/x"}}"#;
        assert!(matches!(parse(act), WebhookEvent::AsyncAction(a) if a.payload.id == "x"));
        assert!(
            matches!(parse(r#"{"type":"brand_new","x":1}"#), WebhookEvent::Unknown { kind, .. } if kind == "brand_new")
        );
        assert!(
            matches!(parse(r#"{"raw":"provider payload"}"#), WebhookEvent::Unknown { kind, .. } if kind.is_empty())
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in ["", "not json", "[1,2]", r#"{"type":"sync","success":true}"#] {
            assert!(WebhookEvent::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
