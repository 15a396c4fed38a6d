//! The Nango HTTP client: the records pager with retries, backoff and a rate budget,
//! and the calls that write back and operate Nango.
//!
//! [`NangoClient::list_records`] sends `GET /records` exactly as Nango's server validates
//! it (three headers, only documented query parameters, `modified_after` in `Z` form),
//! parses the page without building a JSON tree, and retries what can be retried:
//! connection errors, timeouts, 5xx, 408 and 429 (waiting `Retry-After`, at least one
//! second), with exponential backoff and jitter, bounded by an attempt count and a total
//! deadline. [`NangoClient::pages`] reads every page after a cursor the same way, asking
//! for each next page while it parses the one before ([`Pages`]).
//!
//! Beyond records, the client writes back and operates Nango, every call through the
//! same retry loop, rate budget and error mapping:
//!
//! | call | module |
//! |---|---|
//! | [`NangoClient::trigger_action`], [`NangoClient::trigger_action_async`], [`NangoClient::wait_action`] | [`actions`] |
//! | [`NangoClient::proxy`] | [`proxy`] |
//! | [`NangoClient::trigger_syncs`], [`NangoClient::start_syncs`], [`NangoClient::pause_syncs`], [`NangoClient::update_sync_frequency`] | [`syncs`] |
//! | [`NangoClient::list_connections`], [`NangoClient::all_connections`] | [`connections`] |
//! | [`NangoClient::prune_records`], [`NangoClient::prune_until`] | [`prune`] |

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tracing::debug;

use crate::error::{BoxError, Error, Result, TransportKind};
use crate::page::Page;
use crate::record::{Cursor, StreamKey};
use crate::secret::SecretKey;
use crate::time::Timestamp;

pub mod actions;
mod budget;
pub mod connections;
mod pages;
pub mod proxy;
pub mod prune;
mod request;
mod retry;
mod sync_status;
pub mod syncs;

pub use actions::{ActionRequest, ActionWakeups, AsyncAction, WaitOptions};
pub use budget::{RateBudget, RateLedger, RateObservation};
pub use connections::{Connection, ConnectionsQuery};
pub use pages::Pages;
pub use proxy::{ProxyRequest, ProxyResponse};
pub use prune::PruneOutcome;
pub(crate) use retry::OnGiveUp;
pub use retry::RetryConfig;
pub use sync_status::{ModelResult, SyncSelector, SyncState, SyncStatus};
pub use syncs::{SyncRef, TriggerOptions};

/// Nango's cloud API.
pub const DEFAULT_HOST: &str = "https://api.nango.dev";

/// How long a sync action's trigger may take by default: Nango gives up after about
/// 15.5 minutes.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(16 * 60);

/// The largest page Nango serves.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// A `filter` value of `GET /records`.
///
/// Only one value can be sent: Nango never returns deleted records for a list that
/// combines `deleted` with another value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFilter {
    /// Only records whose last action is `ADDED`.
    Added,
    /// Only records whose last action is `UPDATED`.
    Updated,
    /// Only records whose last action is `DELETED`.
    Deleted,
}

impl RecordFilter {
    fn as_str(self) -> &'static str {
        match self {
            RecordFilter::Added => "added",
            RecordFilter::Updated => "updated",
            RecordFilter::Deleted => "deleted",
        }
    }
}

/// One `GET /records` request.
#[derive(Debug, Clone)]
pub struct RecordsQuery<'a> {
    /// The stream to read.
    pub stream: &'a StreamKey,
    /// Read the records strictly after this position.
    pub cursor: Option<&'a Cursor>,
    /// Page size (1 to 10,000; Nango's default is 100).
    pub limit: Option<u32>,
    /// Only records with `last_modified_at >=` this instant (compared at millisecond
    /// precision by Nango, at most 12 months ago).
    pub modified_after: Option<Timestamp>,
    /// Only records with these ids (at most 100).
    pub ids: &'a [String],
    /// Only records whose last action is this one.
    pub filter: Option<RecordFilter>,
}

impl<'a> RecordsQuery<'a> {
    /// The first page of a stream.
    pub fn new(stream: &'a StreamKey) -> Self {
        RecordsQuery {
            stream,
            cursor: None,
            limit: None,
            modified_after: None,
            ids: &[],
            filter: None,
        }
    }

    /// Continue after `cursor`.
    pub fn cursor(mut self, cursor: Option<&'a Cursor>) -> Self {
        self.cursor = cursor;
        self
    }

    /// Set the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only records modified at or after `t`.
    pub fn modified_after(mut self, t: Option<Timestamp>) -> Self {
        self.modified_after = t;
        self
    }

    fn describe(&self) -> String {
        let mut s = format!("GET /records ({}", self.stream);
        if let Some(c) = self.cursor {
            let c = c.as_str();
            if c.len() > 48 {
                s.push_str(&format!(", cursor {}...", &c[..c.floor_char_boundary(48)]));
            } else {
                s.push_str(&format!(", cursor {c}"));
            }
        } else {
            s.push_str(", no cursor");
        }
        if let Some(t) = self.modified_after {
            s.push_str(&format!(", modified_after {}", t.to_utc_z()));
        }
        s.push(')');
        s
    }
}

/// A client of Nango's API.
#[derive(Clone)]
pub struct NangoClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    host: String,
    secret: SecretKey,
    retry: RetryConfig,
    budget: Option<Arc<RateBudget>>,
    action_timeout: Duration,
}

impl std::fmt::Debug for NangoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NangoClient")
            .field("host", &self.inner.host)
            .field("secret_key", &self.inner.secret)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// Builds a [`NangoClient`].
#[derive(Debug, Clone)]
pub struct NangoClientBuilder {
    host: String,
    secret: Option<SecretKey>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryConfig,
    budget: Option<Arc<RateBudget>>,
    user_agent: String,
    action_timeout: Duration,
}

impl Default for NangoClientBuilder {
    fn default() -> Self {
        NangoClientBuilder {
            host: DEFAULT_HOST.to_string(),
            secret: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryConfig::default(),
            budget: None,
            user_agent: format!("nango-sync/{}", env!("CARGO_PKG_VERSION")),
            action_timeout: DEFAULT_ACTION_TIMEOUT,
        }
    }
}

impl NangoClientBuilder {
    /// Take the host from `NANGO_HOST` and the secret key from `NANGO_SECRET_KEY` when
    /// they are set.
    pub fn from_env() -> Self {
        let mut b = Self::default();
        if let Ok(host) = std::env::var("NANGO_HOST")
            && !host.trim().is_empty()
        {
            b.host = host.trim().to_string();
        }
        if let Ok(key) = std::env::var("NANGO_SECRET_KEY") {
            b.secret = Some(SecretKey::new(key));
        }
        b
    }

    /// The base URL of Nango's API (default `https://api.nango.dev`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The environment's secret key.
    pub fn secret_key(mut self, key: impl Into<SecretKey>) -> Self {
        self.secret = Some(key.into());
        self
    }

    /// Timeout of one request, body included (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Timeout of establishing a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Share a rate budget (requests per minute of one Nango account) with other clients.
    pub fn rate_budget(mut self, budget: Arc<RateBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Timeout of a sync action's trigger (default 16 minutes). Nango keeps the request
    /// open while the action runs and gives up after about 15.5 minutes; a shorter
    /// timeout abandons actions that may still complete.
    pub fn action_timeout(mut self, timeout: Duration) -> Self {
        self.action_timeout = timeout;
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Build the client.
    pub fn build(self) -> Result<NangoClient> {
        let secret = self.secret.filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::invalid(
                "secret key",
                "no secret key given (set NANGO_SECRET_KEY or pass one)",
            )
        })?;
        let host = self.host.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&host)
            .map_err(|e| Error::invalid("host URL", format!("{host:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::invalid(
                "host URL",
                format!("{host:?} must be an http:// or https:// URL"),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::invalid(
                "host URL",
                format!("{host:?} must not have a query or a fragment"),
            ));
        }
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
            Error::invalid(
                "secret key",
                "it contains characters that cannot be sent in an HTTP header",
            )
        })?;
        install_crypto_provider();
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .default_headers(headers)
            .user_agent(self.user_agent)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::invalid("HTTP client", e.to_string()))?;
        Ok(NangoClient {
            inner: Arc::new(Inner {
                http,
                host,
                secret,
                retry: self.retry,
                budget: self.budget,
                action_timeout: self.action_timeout,
            }),
        })
    }
}

/// Install rustls' ring provider as the process default, once.
///
/// reqwest is built without a TLS provider of its own; the client installs this one
/// before it builds its HTTP client. Public for other reqwest clients in the same
/// process (the test kit's webhook sender).
#[doc(hidden)]
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl NangoClient {
    /// A builder with Nango cloud's defaults.
    pub fn builder() -> NangoClientBuilder {
        NangoClientBuilder::default()
    }

    /// The base URL.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The retry policy.
    pub fn retry_config(&self) -> &RetryConfig {
        &self.inner.retry
    }

    /// Fetch one page of records, retrying retryable failures.
    pub async fn list_records(&self, query: &RecordsQuery<'_>) -> Result<Page> {
        let (url, headers, describe) = self.records_request(query)?;
        self.with_retries(&describe, || async {
            self.records_body_once(&url, &headers, &describe)
                .await?
                .parse()
        })
        .await
    }

    /// The body of one `GET /records`, retried as [`NangoClient::list_records`] retries
    /// its requests, not parsed yet (a body cut short is found, and retried, by whoever
    /// parses it).
    pub(crate) async fn records_body(&self, query: &RecordsQuery<'_>) -> Result<RecordsBody> {
        let (url, headers, describe) = self.records_request(query)?;
        self.with_retries(&describe, || {
            self.records_body_once(&url, &headers, &describe)
        })
        .await
    }

    fn records_request(
        &self,
        query: &RecordsQuery<'_>,
    ) -> Result<(reqwest::Url, HeaderMap, String)> {
        Ok((
            self.records_url(query)?,
            self.stream_headers(query.stream)?,
            query.describe(),
        ))
    }

    async fn records_body_once(
        &self,
        url: &reqwest::Url,
        headers: &HeaderMap,
        describe: &str,
    ) -> Result<RecordsBody> {
        let resp = self
            .send(
                describe,
                self.inner.http.get(url.clone()).headers(headers.clone()),
            )
            .await?;
        // Nango's own limit, stated on its records answers (not on the proxy's, whose
        // headers may be the provider's).
        if let Some(budget) = &self.inner.budget
            && let Some(o) = RateObservation::from_headers(resp.headers())
        {
            budget.observe(o);
        }
        Ok(RecordsBody {
            bytes: self.read_json_body(describe, resp).await?,
            describe: describe.to_owned(),
        })
    }

    /// Run `attempt` until it succeeds, fails permanently, or the retry policy gives up.
    pub(crate) async fn with_retries<T, F, Fut>(&self, describe: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.with_retries_if(describe, &self.inner.retry, Error::is_retryable, attempt)
            .await
    }

    /// [`NangoClient::with_retries`] with `policy`, retrying only what `retry` accepts.
    /// Every attempt takes a permit of the rate budget; a 429 pauses the budget.
    pub(crate) async fn with_retries_if<T, F, Fut>(
        &self,
        describe: &str,
        policy: &RetryConfig,
        retry: impl Fn(&Error) -> bool,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        // `describe` starts with the method and path ("GET /records (...)"): the
        // request label of the metrics.
        let request = describe.split(" (").next().unwrap_or(describe).to_string();
        let failed_class = std::sync::Mutex::new(None::<&'static str>);
        policy
            .run_if(describe, retry::OnGiveUp::Wrap, retry, |_| {
                let result = attempt();
                let (request, failed_class) = (&request, &failed_class);
                async move {
                    if let Some(budget) = &self.inner.budget {
                        budget.acquire().await;
                    }
                    let result = result.await;
                    let class = result_class(&result);
                    metrics::counter!(crate::monitor::metrics::REQUESTS, "request" => request.clone(), "class" => class)
                        .increment(1);
                    {
                        let mut failed = failed_class.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(previous) = failed.take() {
                            metrics::counter!(crate::monitor::metrics::RETRIES, "request" => request.clone(), "class" => previous)
                                .increment(1);
                        }
                        if result.as_ref().is_err_and(Error::is_retryable) {
                            *failed = Some(class);
                        }
                    }
                    if let (
                        Some(budget),
                        Err(Error::Nango {
                            status: 429,
                            retry_after,
                            ..
                        }),
                    ) = (&self.inner.budget, &result)
                    {
                        budget.pause_for(retry::rate_limit_wait(*retry_after, policy));
                    }
                    result
                }
            })
            .await
    }

    fn records_url(&self, q: &RecordsQuery<'_>) -> Result<reqwest::Url> {
        if let Some(limit) = q.limit
            && !(1..=MAX_PAGE_SIZE).contains(&limit)
        {
            return Err(Error::invalid(
                "page size",
                format!("{limit} is not between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        if q.ids.len() > 100 {
            return Err(Error::invalid(
                "ids",
                format!("{} ids given, Nango takes at most 100", q.ids.len()),
            ));
        }
        if let Some(c) = q.cursor
            && (c.as_str().is_empty() || c.as_str().len() > 1000)
        {
            return Err(Error::invalid(
                "cursor",
                "a cursor has 1 to 1000 characters",
            ));
        }
        q.stream.validate()?;
        let mut url = reqwest::Url::parse(&format!("{}/records", self.inner.host))
            .map_err(|e| Error::invalid("host URL", e.to_string()))?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("model", &q.stream.model);
            if let Some(v) = q.stream.variant_param() {
                pairs.append_pair("variant", v);
            }
            if let Some(limit) = q.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(c) = q.cursor {
                pairs.append_pair("cursor", c.as_str());
            }
            if let Some(t) = q.modified_after {
                pairs.append_pair("modified_after", &t.to_utc_z());
            }
            if let Some(f) = q.filter {
                pairs.append_pair("filter", f.as_str());
            }
            for id in q.ids {
                pairs.append_pair("ids", id);
            }
        }
        Ok(url)
    }

    fn stream_headers(&self, stream: &StreamKey) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.inner.secret.expose()))
            .map_err(|_| Error::invalid("secret key", "it cannot be sent in an HTTP header"))?;
        auth.set_sensitive(true);
        h.insert(AUTHORIZATION, auth);
        let value = |what: &'static str, v: &str| {
            let ok = v.bytes().all(|b| (0x20..0x7f).contains(&b));
            ok.then(|| HeaderValue::from_str(v).ok())
                .flatten()
                .ok_or_else(|| {
                    Error::invalid(
                        what,
                        format!(
                            "{v:?} cannot be sent in an HTTP header (use visible ASCII characters)"
                        ),
                    )
                })
        };
        h.insert(
            HeaderName::from_static("connection-id"),
            value("connection id", &stream.connection)?,
        );
        h.insert(
            HeaderName::from_static("provider-config-key"),
            value("integration key", &stream.integration)?,
        );
        Ok(h)
    }

    async fn send(
        &self,
        describe: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| transport_error(describe, e))?;
        debug!(
            request = describe,
            status = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answer"
        );
        Ok(resp)
    }

    /// Read a JSON body; turn error statuses and non-JSON answers into errors.
    async fn read_json_body(
        &self,
        describe: &str,
        resp: reqwest::Response,
    ) -> Result<bytes::Bytes> {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| {
                let reset = resp
                    .headers()
                    .get("x-ratelimit-reset")?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()?;
                let now = Timestamp::now().as_micros() / 1_000_000;
                Some((reset - now).max(0) as u64).filter(|_| status == 429)
            });
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(describe, e))?;
        let is_json = content_type.to_ascii_lowercase().contains("json");
        if (200..300).contains(&status) {
            if !is_json {
                return Err(not_json(describe, status, &content_type, &body));
            }
            return Ok(body);
        }
        if !is_json {
            return Err(not_json(describe, status, &content_type, &body));
        }
        Err(nango_error(describe, status, &body, retry_after))
    }
}

/// A `GET /records` answer's body, read and not parsed yet.
pub(crate) struct RecordsBody {
    bytes: bytes::Bytes,
    /// The request, for errors.
    describe: String,
}

impl std::fmt::Debug for RecordsBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsBody")
            .field("request", &self.describe)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl RecordsBody {
    /// The `next_cursor` the body opens with, unchecked (see `Page::next_cursor_hint`).
    pub(crate) fn next_cursor_hint(&self) -> Option<Cursor> {
        Page::next_cursor_hint(&self.bytes)
    }

    /// The page: a body cut short is a transport error (retryable: the connection
    /// broke), any other problem [`Error::MalformedPage`].
    pub(crate) fn parse(&self) -> Result<Page> {
        Page::parse(&self.bytes).map_err(|e| {
            if e.is_truncated() {
                Error::Transport {
                    request: self.describe.clone(),
                    kind: TransportKind::Io,
                    source: Box::new(e),
                }
            } else {
                Error::MalformedPage {
                    request: self.describe.clone(),
                    source: e,
                }
            }
        })
    }
}

/// The status class of a request's result, for the metrics: the HTTP status's class,
/// or `transport` when no answer came.
fn result_class<T>(result: &Result<T>) -> &'static str {
    use crate::monitor::metrics::status_class;
    match result {
        Ok(_) | Err(Error::MalformedPage { .. }) => "2xx",
        Err(Error::Nango { status, .. } | Error::NotJson { status, .. }) => status_class(*status),
        Err(Error::Transport { .. }) => "transport",
        Err(_) => "other",
    }
}

fn not_json(describe: &str, status: u16, content_type: &str, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(160)]);
    Error::NotJson {
        request: describe.to_string(),
        status,
        content_type: content_type.to_string(),
        snippet: text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn nango_error(describe: &str, status: u16, body: &[u8], retry_after: Option<u64>) -> Error {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<ErrorBody>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        code: Option<String>,
        message: Option<String>,
        #[serde(default)]
        errors: Vec<Detail>,
        payload: Option<serde_json::Value>,
        upstream: Option<Upstream>,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        message: Option<String>,
        #[serde(default)]
        path: Vec<serde_json::Value>,
    }
    /// What a `script_http_error` says about the provider's answer.
    #[derive(serde::Deserialize)]
    struct Upstream {
        status: Option<u16>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error);
    let (code, message, payload) = match parsed {
        Some(e) => {
            let mut parts: Vec<String> = e.message.into_iter().collect();
            for d in e.errors {
                let path: Vec<String> = d
                    .path
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| p.to_string())
                    })
                    .collect();
                let m = d.message.unwrap_or_default();
                parts.push(if path.is_empty() {
                    m
                } else {
                    format!("{}: {m}", path.join("."))
                });
            }
            if parts.is_empty()
                && let Some(upstream) = e.upstream.and_then(|u| u.status)
            {
                // A script's request to the provider failed (424 `script_http_error`,
                // which has no message).
                parts.push(format!("the provider answered HTTP {upstream}"));
            }
            (
                e.code.unwrap_or_else(|| "http_error".into()),
                (!parts.is_empty()).then(|| parts.join("; ")),
                e.payload.filter(|p| !p.is_null()).map(Box::new),
            )
        }
        None => ("http_error".to_string(), None, None),
    };
    Error::Nango {
        status,
        code,
        message,
        request: describe.to_string(),
        retry_after,
        payload,
    }
}

fn transport_error(describe: &str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else if e.is_builder() {
        TransportKind::Request
    } else {
        TransportKind::Io
    };
    // reqwest's message can name the URL; it never holds headers, so no secret.
    let source: BoxError = Box::new(e.without_url());
    Error::Transport {
        request: describe.to_string(),
        kind,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> NangoClient {
        NangoClient::builder()
            .host("https://nango.example.com/api/")
            .secret_key("k")
            .build()
            .unwrap()
    }

    #[test]
    fn url_has_only_documented_snake_case_parameters() {
        let stream = StreamKey::new("github", "acme", "Ticket").with_variant("eu");
        let cursor = Cursor("MjAy+/=".into());
        let q = RecordsQuery::new(&stream)
            .cursor(Some(&cursor))
            .limit(1000)
            .modified_after(Some(
                Timestamp::parse("2026-11-26T14:47:22.997-05:00").unwrap(),
            ));
        let url = client().records_url(&q).unwrap();
        assert_eq!(
            url.as_str(),
            "https://nango.example.com/api/records?model=Ticket&variant=eu&limit=1000&cursor=MjAy%2B%2F%3D&modified_after=2026-11-26T19%3A47%3A22.997Z"
        );
    }

    #[test]
    fn rejects_what_nango_would_reject_before_sending() {
        let stream = StreamKey::new("github", "acme", "Ticket");
        let c = client();
        assert!(c.records_url(&RecordsQuery::new(&stream).limit(0)).is_err());
        assert!(
            c.records_url(&RecordsQuery::new(&stream).limit(10_001))
                .is_err()
        );
        let bad = StreamKey::new("github", "acme", "ticket");
        assert!(c.records_url(&RecordsQuery::new(&bad)).is_err());
        let non_ascii = StreamKey::new("github", "café", "Ticket");
        let err = c.stream_headers(&non_ascii).unwrap_err();
        assert!(err.to_string().contains("connection id"), "{err}");
    }

    #[test]
    fn bad_hosts_and_missing_keys_are_clear_errors() {
        for host in ["ftp://x", "not a url", "https://", "https://x/?a=1"] {
            let err = NangoClient::builder()
                .host(host)
                .secret_key("k")
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("host URL"), "{host}: {err}");
        }
        let err = NangoClient::builder().build().unwrap_err();
        assert!(err.to_string().contains("secret key"), "{err}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = NangoClient::builder()
            .secret_key("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c")
            .build()
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("4f1a7c2e"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn nango_error_bodies_are_surfaced() {
        let body = br#"{"error":{"code":"invalid_query_params","errors":[{"code":"unrecognized_keys","message":"Unrecognized key: \"modifiedAfter\"","path":[]},{"code":"too_small","message":"Too small","path":["limit"]}]}}"#;
        let e = nango_error("GET /records", 400, body, None);
        let text = e.to_string();
        assert!(text.contains("400 invalid_query_params"), "{text}");
        assert!(text.contains("Unrecognized key"), "{text}");
        assert!(text.contains("limit: Too small"), "{text}");
        assert_eq!(e.nango_code(), Some("invalid_query_params"));
        let e = nango_error("GET /records", 502, b"{}", None);
        assert_eq!(e.nango_code(), Some("http_error"));
        assert!(e.is_retryable());
    }
}
