//! The proxy: a request to the provider's API through Nango (`/proxy/<path>`), which adds
//! the connection's credentials.
//!
//! [`NangoClient::proxy`] sends a [`ProxyRequest`] and returns the provider's answer as
//! a [`ProxyResponse`]: its status, its headers and its body as a stream (read it whole
//! with [`ProxyResponse::bytes`] or [`ProxyResponse::json`], or chunk by chunk). A
//! non-2xx answer is a response too, not an error: the provider's 404 is data for the
//! caller. [`ProxyResponse::error_for_status`] turns it into [`Error::Nango`].
//!
//! Headers for the provider travel as `Nango-Proxy-<Name>` ([`ProxyRequest::header`]);
//! Nango forwards only those. `Retries`, `Retry-On`, `Base-Url-Override` and
//! `Decompress` are Nango's own retry and routing settings. The client itself sends a
//! proxy request again only when no connection could be made: Nango may have forwarded
//! a request that failed later, and provider calls change things.
//!
//! Nango's own errors (an unknown connection is 400 `server_error` "Failed to get
//! connection", an unknown integration 404 `unknown_provider_config`) come back the same
//! way as the provider's: no header tells them apart.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::request::not_carried_out;
use super::{NangoClient, nango_error, transport_error};
use crate::error::{Error, Result};

/// The methods a proxy request can use.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// A request for the provider's API (see the [module documentation](self)).
#[derive(Clone)]
pub struct ProxyRequest {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<(Bytes, String)>,
    retries: Option<u32>,
    retry_on: Vec<u16>,
    base_url_override: Option<String>,
    decompress: Option<bool>,
    timeout: Duration,
}

impl std::fmt::Debug for ProxyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values can be credentials of the provider: names only.
        f.debug_struct("ProxyRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.as_ref().map(|(b, _)| b.len()))
            .field("retries", &self.retries)
            .field("retry_on", &self.retry_on)
            .field("base_url_override", &self.base_url_override)
            .field("decompress", &self.decompress)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ProxyRequest {
    /// `method` (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS`, any case)
    /// on the provider's `path`, which may carry a query (`/issues?state=open`).
    pub fn new(method: &str, path: impl Into<String>) -> Result<Self> {
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            return Err(Error::invalid(
                "proxy method",
                format!("{method:?}: use one of {}", METHODS.join(", ")),
            ));
        }
        let mut path: String = path.into();
        if path.is_empty() || path.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                "proxy path",
                format!("{path:?} must be a non-empty path without control characters"),
            ));
        }
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Ok(ProxyRequest {
            method: Method::from_bytes(upper.as_bytes()).expect("a listed method"),
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            retries: None,
            retry_on: Vec::new(),
            base_url_override: None,
            decompress: None,
            timeout: Duration::from_secs(300),
        })
    }

    /// Add a query parameter (after those of the path).
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// A header for the provider, sent as `Nango-Proxy-<name>`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A JSON body.
    pub fn json<T: Serialize + ?Sized>(self, body: &T) -> Result<Self> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| Error::invalid("proxy body", e.to_string()))?;
        Ok(self.body(bytes, "application/json"))
    }

    /// A body of `content_type`.
    pub fn body(mut self, bytes: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        self.body = Some((bytes.into(), content_type.into()));
        self
    }

    /// How many times Nango tries again when the provider fails (`Retries`).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// More provider statuses Nango retries on (`Retry-On`).
    pub fn retry_on(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.retry_on.extend(statuses);
        self
    }

    /// Another base URL for the provider (`Base-Url-Override`).
    pub fn base_url_override(mut self, url: impl Into<String>) -> Self {
        self.base_url_override = Some(url.into());
        self
    }

    /// Whether Nango decompresses the provider's answer (`Decompress`).
    pub fn decompress(mut self, decompress: bool) -> Self {
        self.decompress = Some(decompress);
        self
    }

    /// The time allowed for the whole exchange, body included (default 5 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The provider's path, with its query.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn headers_for(&self, mut h: HeaderMap) -> Result<HeaderMap> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| Error::invalid("proxy header", format!("{n:?} is not a header name")))
        };
        let value = |n: &str, v: &str| {
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                Error::invalid(
                    "proxy header",
                    format!("the value of {n:?} cannot be sent in an HTTP header"),
                )
            })?;
            // Provider headers are often credentials.
            value.set_sensitive(true);
            Ok::<_, Error>(value)
        };
        for (n, v) in &self.headers {
            if n.trim().is_empty() {
                return Err(Error::invalid("proxy header", "a header name is empty"));
            }
            h.append(name(&format!("nango-proxy-{n}"))?, value(n, v)?);
        }
        if let Some((_, ct)) = &self.body {
            h.insert(CONTENT_TYPE, value("Content-Type", ct)?);
            if !self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                h.insert(
                    HeaderName::from_static("nango-proxy-content-type"),
                    value("Content-Type", ct)?,
                );
            }
        }
        if let Some(r) = self.retries {
            h.insert(HeaderName::from_static("retries"), HeaderValue::from(r));
        }
        if !self.retry_on.is_empty() {
            let list: Vec<String> = self.retry_on.iter().map(u16::to_string).collect();
            h.insert(
                HeaderName::from_static("retry-on"),
                value("Retry-On", &list.join(","))?,
            );
        }
        if let Some(url) = &self.base_url_override {
            h.insert(
                HeaderName::from_static("base-url-override"),
                value("Base-Url-Override", url)?,
            );
        }
        if let Some(d) = self.decompress {
            h.insert(
                HeaderName::from_static("decompress"),
                HeaderValue::from_static(if d { "true" } else { "false" }),
            );
        }
        Ok(h)
    }
}

/// The provider's answer to a [`ProxyRequest`] (see the [module documentation](self)).
pub struct ProxyResponse {
    status: u16,
    headers: HeaderMap,
    describe: String,
    body: reqwest::Response,
}

impl std::fmt::Debug for ProxyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyResponse")
            .field("status", &self.status)
            .field("request", &self.describe)
            .finish_non_exhaustive()
    }
}

impl ProxyResponse {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header's value, when it is present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every header, as names (lower case) and raw values.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))
    }

    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.body
            .chunk()
            .await
            .map_err(|e| transport_error(&self.describe, e))
    }

    /// The body as a stream of chunks.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes>> + Send {
        let describe = self.describe;
        self.body
            .bytes_stream()
            .map(move |c| c.map_err(|e| transport_error(&describe, e)))
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes> {
        let describe = self.describe;
        self.body
            .bytes()
            .await
            .map_err(|e| transport_error(&describe, e))
    }

    /// The whole body, deserialized from JSON.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T> {
        let describe = self.describe.clone();
        let body = self.bytes().await?;
        serde_json::from_slice(&body).map_err(|e| Error::Invalid {
            what: "answer",
            detail: format!("{describe}: the body is not the expected JSON: {e}"),
        })
    }

    /// Itself when the status is 2xx; otherwise [`Error::Nango`] with the status and, when
    /// the body is Nango's error shape, its code, message and payload (`http_error`
    /// when it is not).
    pub async fn error_for_status(self) -> Result<Self> {
        if self.is_success() {
            return Ok(self);
        }
        let (status, describe) = (self.status, self.describe.clone());
        let body = self.bytes().await?;
        Err(nango_error(&describe, status, &body, None))
    }
}

impl NangoClient {
    /// Send `request` to the provider of a connection through Nango's proxy.
    pub async fn proxy(
        &self,
        integration: &str,
        connection: &str,
        request: &ProxyRequest,
    ) -> Result<ProxyResponse> {
        let describe = format!(
            "{} /proxy{} ({integration}/{connection})",
            request.method,
            request.path.split('?').next().unwrap_or_default()
        );
        let mut url = self.api_url(&format!("/proxy{}", request.path))?;
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &request.query {
                pairs.append_pair(k, v);
            }
        }
        let headers = request.headers_for(self.connection_headers(integration, connection)?)?;
        let policy = self.inner.retry.clone();
        self.with_retries_if(&describe, &policy, not_carried_out_before_nango, || {
            let mut req = self
                .inner
                .http
                .request(request.method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(request.timeout);
            if let Some((bytes, _)) = &request.body {
                req = req.body(bytes.clone());
            }
            let describe = &describe;
            async move {
                let resp = self.send(describe, req).await?;
                Ok(ProxyResponse {
                    status: resp.status().as_u16(),
                    headers: resp.headers().clone(),
                    describe: describe.clone(),
                    body: resp,
                })
            }
        })
        .await
    }
}

/// A proxy request is sent again only when no connection was made (any answer, even a
/// 429 or a 502, may come from the provider and is returned as it is).
fn not_carried_out_before_nango(e: &Error) -> bool {
    matches!(e, Error::Transport { .. }) && not_carried_out(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_headers_travel_with_the_prefix() {
        let req = ProxyRequest::new("patch", "issues/1?x=1")
            .unwrap()
            .header("Accept", "application/vnd.github+json")
            .json(&serde_json::json!({"state": "closed"}))
            .unwrap()
            .retries(3)
            .retry_on([404, 409])
            .decompress(true);
        assert_eq!(req.method(), "PATCH");
        assert_eq!(req.path(), "/issues/1?x=1");
        let h = req.headers_for(HeaderMap::new()).unwrap();
        assert_eq!(h["nango-proxy-accept"], "application/vnd.github+json");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["nango-proxy-content-type"], "application/json");
        assert_eq!(h["retries"], "3");
        assert_eq!(h["retry-on"], "404,409");
        assert_eq!(h["decompress"], "true");
        assert!(!format!("{req:?}").contains("vnd.github"));
    }

    #[test]
    fn bad_methods_paths_and_headers_are_refused() {
        assert!(ProxyRequest::new("BREW", "/x").is_err());
        assert!(ProxyRequest::new("GET", "").is_err());
        assert!(ProxyRequest::new("GET", "/a\nb").is_err());
        let req = ProxyRequest::new("GET", "/x")
            .unwrap()
            .header("bad name", "v");
        assert!(req.headers_for(HeaderMap::new()).is_err());
        let req = ProxyRequest::new("GET", "/x")
            .unwrap()
            .header("X-A", "line\nbreak");
        assert!(req.headers_for(HeaderMap::new()).is_err());
    }
}
