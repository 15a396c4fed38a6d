//! The plumbing the calls beyond `GET /records` share: URLs under the host, the headers
//! that name a connection, and one JSON request sent through the client's retry loop
//! and rate budget.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{NangoClient, RetryConfig};
use crate::error::{Error, Result, TransportKind};
use crate::record::StreamKey;

/// One JSON request: what it is, how to send it and which failures to try again.
pub(crate) struct JsonCall<'a> {
    /// `GET`, `POST`, ...
    pub(crate) method: reqwest::Method,
    /// The full URL.
    pub(crate) url: reqwest::Url,
    /// Authorization and the connection's headers, and any others.
    pub(crate) headers: HeaderMap,
    /// A JSON body (sent with `Content-Type: application/json`).
    pub(crate) body: Option<Vec<u8>>,
    /// How errors name the request, for example `POST /action/trigger (github/acme, action x)`.
    pub(crate) describe: String,
    /// Replaces the client's timeout for this request.
    pub(crate) timeout: Option<Duration>,
    /// The retry policy.
    pub(crate) policy: &'a RetryConfig,
    /// Which errors are tried again.
    pub(crate) retry: fn(&Error) -> bool,
}

/// The answer to a [`JsonCall`] with a 2xx status.
pub(crate) struct JsonAnswer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// Whether a request that changes something can be sent again: only when the first
/// attempt certainly did nothing (no connection was made, the rate limiter refused it,
/// or a gateway in front of Nango answered).
pub(crate) fn not_carried_out(e: &Error) -> bool {
    match e {
        Error::Transport { kind, .. } => *kind == TransportKind::Connect,
        Error::Nango { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        _ => false,
    }
}

impl NangoClient {
    /// `{host}{path}` (`path` starts with `/`).
    pub(crate) fn api_url(&self, path: &str) -> Result<reqwest::Url> {
        reqwest::Url::parse(&format!("{}{path}", self.inner.host))
            .map_err(|e| Error::invalid("URL", format!("{path:?}: {e}")))
    }

    /// `Authorization: Bearer <key>`, marked sensitive.
    pub(crate) fn auth_headers(&self) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.inner.secret.expose()))
            .map_err(|_| Error::invalid("secret key", "it cannot be sent in an HTTP header"))?;
        auth.set_sensitive(true);
        h.insert(AUTHORIZATION, auth);
        Ok(h)
    }

    /// The authorization and a connection's `Connection-Id` and `Provider-Config-Key`,
    /// checked against Nango's rules first.
    pub(crate) fn connection_headers(
        &self,
        integration: &str,
        connection: &str,
    ) -> Result<HeaderMap> {
        check_connection(integration, connection)?;
        let mut h = self.auth_headers()?;
        // Checked above: visible ASCII only.
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| Error::invalid("header", v));
        h.insert(HeaderName::from_static("connection-id"), value(connection)?);
        h.insert(
            HeaderName::from_static("provider-config-key"),
            value(integration)?,
        );
        Ok(h)
    }

    /// Send `call`, retrying per its policy; a 2xx JSON answer, or the error.
    pub(crate) async fn json_call(&self, call: JsonCall<'_>) -> Result<JsonAnswer> {
        let JsonCall {
            method,
            url,
            headers,
            body,
            describe,
            timeout,
            policy,
            retry,
        } = call;
        let body = body.map(Bytes::from);
        self.with_retries_if(&describe, policy, retry, || {
            let mut req = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = &body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let describe = &describe;
            async move {
                let resp = self.send(describe, req).await?;
                let status = resp.status().as_u16();
                let body = self.read_json_body(describe, resp).await?;
                Ok(JsonAnswer { status, body })
            }
        })
        .await
    }
}

/// Check an integration key and a connection id against the header rules of Nango's
/// API (the rules of [`StreamKey::validate`], whose model part is not involved here).
pub(crate) fn check_connection(integration: &str, connection: &str) -> Result<()> {
    StreamKey::new(integration, connection, "Model").validate()
}

/// Check an action or sync name: `^[a-zA-Z0-9_-]+$`, at most 255 characters.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("{name:?} must be 1 to 255 characters matching ^[a-zA-Z0-9_-]+$"),
        ))
    }
}

/// Serialize a request body.
pub(crate) fn to_body(what: &'static str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::invalid(what, e.to_string()))
}

/// Deserialize a 2xx answer's body, naming the request when it does not fit.
pub(crate) fn from_body<T: serde::de::DeserializeOwned>(describe: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Invalid {
        what: "answer",
        detail: format!("{describe}: the answer does not have the expected shape: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_did_nothing_are_sent_again() {
        let nango = |status| Error::Nango {
            status,
            code: "x".into(),
            message: None,
            request: "r".into(),
            retry_after: None,
            payload: None,
        };
        let transport = |kind| Error::Transport {
            request: "r".into(),
            kind,
            source: "boom".into(),
        };
        assert!(not_carried_out(&transport(TransportKind::Connect)));
        assert!(!not_carried_out(&transport(TransportKind::Timeout)));
        assert!(!not_carried_out(&transport(TransportKind::Io)));
        for (status, again) in [
            (429, true),
            (502, true),
            (503, true),
            (500, false),
            (424, false),
        ] {
            assert_eq!(not_carried_out(&nango(status)), again, "{status}");
        }
    }

    #[test]
    fn names_follow_nangos_rules() {
        assert!(check_name("action name", "create-issue_2").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(256)] {
            assert!(check_name("action name", bad).is_err(), "{bad:?}");
        }
        assert!(check_connection("github", "acme-prod").is_ok());
        assert!(check_connection("git hub!", "acme").is_err());
        assert!(check_connection("github", "").is_err());
    }
}
