//! The HTTP side of the fake: routing, auth, `GET /records`, `PATCH /records/prune`,
//! fault injection and the control API (the write-back routes are in `writeback.rs`).

use std::ops::Bound;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::json::{Normalized, normalize_record, str_lit};
use super::query::{Issue, RecordsParams, parse_pairs, validate_headers, validate_records_query};
use super::state::{Pos, RecRef, Renderer, State as Store, decode_cursor};
use super::{Effect, Fault, GenerateSpec, IdOrder, LoggedRequest, Shared};
use nango_sync::record::StreamKey;
use nango_sync::time::Timestamp;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

const JSON_UTF8: &str = "application/json; charset=utf-8";

pub(crate) fn json_response(status: u16, body: impl Into<String>) -> Response {
    let body: String = body.into();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, JSON_UTF8)
        .body(Body::from(body))
        .expect("static response parts")
}

pub(super) fn error_json(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

pub(super) fn issues_response(code: &str, issues: &[Issue]) -> Response {
    let errors: Vec<serde_json::Value> = issues.iter().map(Issue::to_json).collect();
    json_response(
        400,
        json!({"error": {"code": code, "errors": errors}}).to_string(),
    )
}

fn html_page(status: u16) -> Response {
    let page = "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Nango</title></head>\
                <body><div id=\"root\"></div><script>/* Nango dashboard */</script></body></html>";
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(page))
        .expect("static response parts")
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let resp = route(&shared, &method, &path, &raw_query, &headers, body).await;
    shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(LoggedRequest {
            method: method.to_string(),
            path,
            raw_query,
            status: resp.status().as_u16(),
        });
    resp
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    // Nango's routing is not strict: `/records/` is `/records` (its Node SDK sends
    // `GET /records/?...`). A proxy path is the provider's, forwarded as it is.
    let path = match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() && !path.starts_with("/proxy/") => trimmed,
        _ => path,
    };
    match (method, path) {
        (m, "/records") if m == Method::GET => records(shared, raw_query, headers).await,
        (m, "/sync/status") if m == Method::GET => {
            if let Some(r) = auth(shared, headers) {
                return r;
            }
            super::sync_status::respond(shared, raw_query)
        }
        (m, "/records/prune") if m == Method::PATCH => {
            if let Some(r) = content_type_check(headers).or_else(|| auth(shared, headers)) {
                return r;
            }
            prune_route(shared, raw_query, headers, &body)
        }
        (_, p) if p.starts_with("/_fake/") => {
            if let Some(r) = auth(shared, headers) {
                return r;
            }
            control(shared, method, p, &body)
        }
        _ if let Some(r) =
            super::writeback::route(shared, method, path, raw_query, headers, &body).await =>
        {
            r
        }
        _ if shared.unknown_path_html => html_page(200),
        _ => error_json(404, "not_found", &format!("Cannot {method} {path}")),
    }
}

/// Nango's JSON content-type middleware: a non-JSON `Content-Type` is refused.
pub(super) fn content_type_check(headers: &HeaderMap) -> Option<Response> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    if ct
        .to_str()
        .map(|s| s.starts_with("application/json"))
        .unwrap_or(false)
    {
        return None;
    }
    Some(error_json(
        415,
        "invalid_content_type",
        "Content-Type header must be application/json",
    ))
}

fn auth_error(code: &str, message: &str) -> Response {
    json_response(
        401,
        json!({"error": {"message": message, "code": code, "payload": {}}}).to_string(),
    )
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            14 => *c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b' | b'A' | b'B'),
            _ => c.is_ascii_hexdigit(),
        })
}

/// The secret key check of Nango's `secretKeyAuth`.
pub(super) fn auth(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Some(auth_error(
            "missing_auth_header",
            "Authentication failed. The request is missing the Authorization header.",
        ));
    };
    let malformed = || {
        Some(auth_error(
            "malformed_auth_header",
            "Authentication failed. The Authorization header is malformed.",
        ))
    };
    let Ok(value) = value.to_str() else {
        return malformed();
    };
    let Some(key) = value.strip_prefix("Bearer ") else {
        return malformed();
    };
    let key = key.trim();
    if key.is_empty() {
        return malformed();
    }
    if key == shared.secret.expose() {
        return None;
    }
    if !is_uuid_v4(key) {
        return Some(auth_error(
            "invalid_secret_key_format",
            "Authentication failed. The provided secret key is not a UUID v4.",
        ));
    }
    Some(auth_error(
        "unknown_account",
        "Authentication failed. The provided authorization header does not match any account.",
    ))
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// The `Connection-Id` and `Provider-Config-Key` headers, checked as Nango checks them:
/// (connection, integration), or the 400 `invalid_headers` answer.
pub(crate) fn connection_headers(headers: &HeaderMap) -> Result<(String, String), Box<Response>> {
    validate_headers(
        header_str(headers, "connection-id"),
        header_str(headers, "provider-config-key"),
    )
    .map_err(|issues| Box::new(issues_response("invalid_headers", &issues)))
}

/// Headers, then the connection: the stream's integration and connection.
fn connection_check(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, String), Box<Response>> {
    let (connection, integration) = connection_headers(headers)?;
    let known = shared
        .read()
        .connections
        .contains_key(&(integration.clone(), connection.clone()));
    if !known {
        return Err(Box::new(error_json(
            400,
            "unknown_connection",
            "Provided ConnectionId and ProviderConfigKey does not match a valid connection",
        )));
    }
    Ok((integration, connection))
}

fn next_fault(shared: &Shared) -> Option<Fault> {
    shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
}

fn status_fault(status: u16) -> Response {
    let (code, message) = match status {
        400 => ("invalid_request", "Invalid request"),
        401 => (
            "unknown_account",
            "Authentication failed. The provided authorization header does not match any account.",
        ),
        403 => ("forbidden", "Forbidden"),
        404 => ("not_found", "Not found"),
        408 => ("request_timeout", "Request timeout"),
        429 => ("too_many_request", "Too many requests"),
        500 => ("server_error", "Failed to fetch records"),
        502 => ("bad_gateway", "Bad gateway"),
        503 => ("service_unavailable", "Service unavailable"),
        504 => ("gateway_timeout", "Gateway timeout"),
        _ => (
            "generic_error_support",
            "An error occurred. Please contact support with this unique id: \"fake-0001\"",
        ),
    };
    let status = if (100..1000).contains(&status) {
        status
    } else {
        500
    };
    error_json(status, code, message)
}

fn rate_limited(retry_after: u64) -> Response {
    let reset = Timestamp::now().as_micros() / 1_000_000 + retry_after as i64;
    Response::builder()
        .status(429)
        .header(header::CONTENT_TYPE, JSON_UTF8)
        .header(header::RETRY_AFTER, retry_after.to_string())
        .header("X-RateLimit-Limit", "200")
        .header("X-RateLimit-Remaining", "0")
        .header("X-RateLimit-Reset", reset.to_string())
        .body(Body::from(
            json!({"error": {"code": "too_many_request", "method": "GET", "path": "/records"}})
                .to_string(),
        ))
        .expect("static response parts")
}

/// A response whose body is cut: `keep` bytes are sent, then the connection breaks.
fn broken_body(status: StatusCode, full: String, keep: usize) -> Response {
    let total = full.len();
    let mut bytes = full.into_bytes();
    bytes.truncate(keep);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(bytes)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault: connection closed",
        )),
    ];
    let stream = futures::stream::iter(
        chunks
            .into_iter()
            .filter(|c| c.as_ref().map(|b| !b.is_empty()).unwrap_or(true)),
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, JSON_UTF8)
        .header(header::CONTENT_LENGTH, HeaderValue::from(total))
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

async fn records(shared: &Shared, raw_query: &str, headers: &HeaderMap) -> Response {
    if let Some(r) = content_type_check(headers) {
        return r;
    }
    // The account's request limit (off unless set), after authentication as in Nango.
    if auth(shared, headers).is_none() {
        let decision = shared.rate.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(d) = decision {
            let mut resp = match d.retry_after {
                Some(after) => rate_limited(after),
                None => Box::pin(records_unlimited(shared, raw_query, headers)).await,
            };
            let h = resp.headers_mut();
            h.insert("X-RateLimit-Limit", HeaderValue::from(d.limit));
            h.insert("X-RateLimit-Remaining", HeaderValue::from(d.remaining));
            h.insert("X-RateLimit-Reset", HeaderValue::from(d.reset));
            return resp;
        }
    }
    records_unlimited(shared, raw_query, headers).await
}

async fn records_unlimited(shared: &Shared, raw_query: &str, headers: &HeaderMap) -> Response {
    let mut short_cap = None;
    let mut body_fault = None;
    let mut extra_record = None;
    match next_fault(shared) {
        Some(Fault::Status(s)) => return status_fault(s),
        Some(Fault::RateLimited { retry_after }) => return rate_limited(retry_after),
        Some(Fault::Html) => return html_page(200),
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::ShortPage(n)) => short_cap = Some(n.max(1)),
        Some(Fault::RawRecord(raw)) => extra_record = Some(raw),
        Some(f) => body_fault = Some(f),
        None => {}
    }
    let resp = records_inner(shared, raw_query, headers, short_cap);
    if let Some(raw) = extra_record {
        return with_extra_record(resp, &raw).await;
    }
    let Some(fault) = body_fault else { return resp };
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let half = text.len() / 2;
    match fault {
        Fault::TruncatedJson => {
            let mut cut = text;
            cut.truncate(cut.floor_char_boundary(half.max(1)));
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, JSON_UTF8)
                .body(Body::from(cut))
                .expect("static response parts")
        }
        Fault::CloseBeforeBody => broken_body(status, text, 0),
        _ => broken_body(status, text, half),
    }
}

/// A successful page with `raw` appended to its `records` (which end the body).
async fn with_extra_record(resp: Response, raw: &str) -> Response {
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let Some(head) = text.strip_suffix("]}").filter(|_| status.is_success()) else {
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, JSON_UTF8)
            .body(Body::from(text))
            .expect("static response parts");
    };
    let sep = if head.ends_with('[') { "" } else { "," };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, JSON_UTF8)
        .body(Body::from(format!("{head}{sep}{raw}]}}")))
        .expect("static response parts")
}

fn records_inner(
    shared: &Shared,
    raw_query: &str,
    headers: &HeaderMap,
    short_cap: Option<usize>,
) -> Response {
    if let Some(r) = auth(shared, headers) {
        return r;
    }
    let pairs = parse_pairs(raw_query);
    let params = match validate_records_query(&pairs, Timestamp::now()) {
        Ok(p) => p,
        Err(issues) => return issues_response("invalid_query_params", &issues),
    };
    let (integration, connection) = match connection_check(shared, headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let key = StreamKey::new(integration, connection, params.model.clone())
        .with_variant(params.variant.clone().unwrap_or_default());
    let budget = *shared.budget.lock().unwrap_or_else(|e| e.into_inner());
    let st = shared.read();
    match render_page(&st, &key, &params, shared.offset(), budget, short_cap) {
        Some(body) => json_response(200, body),
        None => error_json(500, "server_error", "Failed to fetch records"),
    }
}

/// Which records a `filter` keeps: Nango's filter switch, bug included.
#[derive(Debug, Clone, Copy)]
enum Filter {
    All,
    Live,
    LiveAdded,
    LiveUpdated,
    Deleted,
}

impl Filter {
    fn parse(filter: &str) -> Filter {
        let f = filter.to_uppercase();
        if f.contains("ADDED") && f.contains("UPDATED") {
            Filter::Live
        } else if f.contains("UPDATED") && f.contains("DELETED") {
            Filter::LiveUpdated
        } else if (f.contains("ADDED") && f.contains("DELETED")) || f == "ADDED" {
            Filter::LiveAdded
        } else if f == "UPDATED" {
            Filter::LiveUpdated
        } else if f == "DELETED" {
            Filter::Deleted
        } else {
            Filter::All
        }
    }

    fn keeps(self, r: &RecRef<'_>) -> bool {
        match self {
            Filter::All => true,
            Filter::Live => !r.is_deleted(),
            Filter::LiveAdded => !r.is_deleted() && r.is_added(),
            Filter::LiveUpdated => !r.is_deleted() && !r.is_added(),
            Filter::Deleted => r.is_deleted(),
        }
    }
}

/// The body of one page, or `None` for an invalid cursor (500).
fn render_page(
    st: &Store,
    key: &StreamKey,
    p: &RecordsParams,
    offset: i32,
    budget: Option<usize>,
    short_cap: Option<usize>,
) -> Option<String> {
    let after: Option<Pos> = match &p.cursor {
        Some(c) => Some(decode_cursor(c)?),
        None => None,
    };
    const EMPTY: &str = "{\"next_cursor\":null,\"records\":[]}";
    let Some(stream) = st.streams.get(key) else {
        return Some(EMPTY.to_string());
    };
    let from: Option<Pos> = p.modified_after.map(|t| (t, uuid::Uuid::nil()));
    let lower: Bound<Pos> = match (after, from) {
        (Some(a), Some(f)) if f > a => Bound::Included(f),
        (Some(a), _) => Bound::Excluded(a),
        (None, Some(f)) => Bound::Included(f),
        (None, None) => Bound::Unbounded,
    };
    let in_range = |r: &RecRef<'_>| match lower {
        Bound::Included(b) => r.pos() >= b,
        Bound::Excluded(b) => r.pos() > b,
        Bound::Unbounded => true,
    };
    let limit = p.limit.unwrap_or(100.0);
    // knex: `.limit(parseInt(limit + 1))`; then "has more" is `rows >= limit + 1`.
    let fetch = (limit + 1.0).floor() as usize;
    let filter = p.filter.as_deref().map_or(Filter::All, Filter::parse);
    let keep = |r: &RecRef<'_>| filter.keeps(r);
    let mut rows: Vec<RecRef<'_>> = match &p.ids {
        Some(ids) => {
            let mut v: Vec<RecRef<'_>> = ids
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|id| stream.get(id.replace('\0', "").as_str()))
                .filter(|r| in_range(r))
                .filter(keep)
                .collect();
            v.sort_by_key(|r| r.pos());
            v.truncate(fetch);
            v
        }
        None => stream.range_from(lower).filter(keep).take(fetch).collect(),
    };
    let mut has_more = rows.len() as f64 >= limit + 1.0;
    if has_more {
        rows.pop();
    }
    if let Some(cap) = short_cap
        && rows.len() > cap
    {
        rows.truncate(cap);
        has_more = true;
    }
    let mut rd = Renderer::new(offset);
    let Some(budget) = budget else {
        let mut out = String::with_capacity(rows.len() * 900 + 160);
        push_page_head(&mut out, &mut rd, rows.last().filter(|_| has_more));
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            r.render(&mut out, &mut rd);
        }
        out.push_str("]}");
        return Some(out);
    };
    let mut recs = String::with_capacity(rows.len() * 900);
    let mut count = 0usize;
    // The envelope, with room for a cursor.
    let overhead = 140usize;
    for r in &rows {
        let start = recs.len();
        if count > 0 {
            recs.push(',');
        }
        r.render(&mut recs, &mut rd);
        if count > 0 && overhead + recs.len() > budget {
            recs.truncate(start);
            has_more = true;
            break;
        }
        count += 1;
    }
    let mut out = String::with_capacity(recs.len() + overhead);
    let last = count.checked_sub(1).and_then(|i| rows.get(i));
    push_page_head(&mut out, &mut rd, last.filter(|_| has_more));
    out.push_str(&recs);
    out.push_str("]}");
    Some(out)
}

/// `{"next_cursor":<cursor of last, or null>,"records":[`.
fn push_page_head(out: &mut String, rd: &mut Renderer, last: Option<&RecRef<'_>>) {
    out.push_str("{\"next_cursor\":");
    match last {
        Some(last) => {
            out.push('"');
            rd.push_cursor(last.pos(), out);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"records\":[");
}

/// `PATCH /records/prune`: `{model, variant?, until_cursor, limit?}` → `{count, has_more}`.
fn prune_route(shared: &Shared, raw_query: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if !raw_query.is_empty() {
        let issue = Issue {
            code: "unrecognized_keys",
            message: "Unrecognized keys in the query".into(),
            path: Vec::new(),
        };
        return issues_response("invalid_query_params", &[issue]);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PruneBody {
        model: String,
        variant: Option<String>,
        until_cursor: String,
        limit: Option<u64>,
    }
    let parsed: PruneBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            let issue = Issue {
                code: "invalid_type",
                message: e.to_string(),
                path: Vec::new(),
            };
            return issues_response("invalid_body", &[issue]);
        }
    };
    let (integration, connection) = match connection_check(shared, headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(until) = decode_cursor(&parsed.until_cursor) else {
        return error_json(500, "server_error", "Failed to prune records");
    };
    let key = StreamKey::new(integration, connection, parsed.model)
        .with_variant(parsed.variant.unwrap_or_default());
    let limit = parsed.limit.unwrap_or(1000).clamp(1, 10_000) as usize;
    let mut st = shared.write();
    let (stream, clock) = st.stream_and_clock(&key);
    let (count, has_more) = stream.prune_until(until, limit, clock);
    json_response(
        200,
        json!({"count": count, "has_more": has_more}).to_string(),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    integration: Option<String>,
    connection: Option<String>,
    model: Option<String>,
    variant: Option<String>,
    records: Option<Vec<Box<RawValue>>>,
    ids: Option<Vec<String>>,
    until_cursor: Option<String>,
    count: Option<usize>,
    batch_size: Option<usize>,
    revision: Option<u64>,
    id_order: Option<String>,
    minutes: Option<i32>,
    status: Option<u16>,
    rate_limited: Option<u64>,
    html: Option<bool>,
    slow_ms: Option<u64>,
    short_page: Option<usize>,
    truncated_json: Option<bool>,
    close_before_body: Option<bool>,
    close_mid_body: Option<bool>,
    raw_record: Option<String>,
    times: Option<usize>,
}

impl ControlBody {
    /// `id_order`, sequential when absent.
    fn id_order(&self) -> Result<IdOrder, String> {
        self.id_order
            .as_deref()
            .map_or(Ok(IdOrder::Sequential), str::parse)
    }

    fn stream(&self) -> Result<StreamKey, String> {
        let need =
            |v: &Option<String>, what: &str| v.clone().ok_or_else(|| format!("missing \"{what}\""));
        let key = StreamKey::new(
            need(&self.integration, "integration")?,
            need(&self.connection, "connection")?,
            need(&self.model, "model")?,
        )
        .with_variant(self.variant.clone().unwrap_or_default());
        key.validate().map_err(|e| e.to_string())?;
        Ok(key)
    }

    fn records(&self) -> Result<Vec<Normalized>, String> {
        let recs = self.records.as_ref().ok_or("missing \"records\"")?;
        recs.iter().map(|r| normalize_record(r.get())).collect()
    }
}

fn effect_json(e: &Effect) -> String {
    json!({"added": e.added, "updated": e.updated, "deleted": e.deleted, "unchanged": e.unchanged})
        .to_string()
}

fn control(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Response {
    if method == Method::GET && path == "/_fake/streams" {
        let streams: Vec<serde_json::Value> = shared
            .streams()
            .into_iter()
            .map(|(k, n, live)| {
                json!({"integration": k.integration, "connection": k.connection, "model": k.model,
                       "variant": k.variant, "records": n, "live": live})
            })
            .collect();
        return json_response(200, json!({ "streams": streams }).to_string());
    }
    if method != Method::POST {
        return error_json(404, "not_found", &format!("Cannot {method} {path}"));
    }
    if let Some(result) = super::writeback::control(shared, path, body) {
        return match result {
            Ok(v) => json_response(200, v.to_string()),
            Err(msg) => error_json(400, "invalid_body", &msg),
        };
    }
    if path == "/_fake/webhooks" {
        return match super::webhooks::control(shared, body) {
            Ok(v) => json_response(200, v.to_string()),
            Err(msg) => error_json(400, "invalid_body", &msg),
        };
    }
    let parsed: ControlBody = if body.is_empty() {
        ControlBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error_json(400, "invalid_body", &e.to_string()),
        }
    };
    match control_op(shared, path, &parsed) {
        Ok(r) => r,
        Err(msg) => error_json(400, "invalid_body", &msg),
    }
}

fn control_op(shared: &Shared, path: &str, b: &ControlBody) -> Result<Response, String> {
    Ok(match path {
        "/_fake/records" => json_response(
            200,
            effect_json(&shared.save_normalized(&b.stream()?, b.records()?)),
        ),
        "/_fake/delete" => {
            let key = b.stream()?;
            let records = match (&b.ids, &b.records) {
                (Some(ids), None) => ids
                    .iter()
                    .filter(|id| !id.is_empty())
                    .map(|id| Normalized {
                        id: id.clone(),
                        text: format!("{{\"id\":{}}}", str_lit(id)),
                    })
                    .collect(),
                (None, Some(_)) => b.records()?,
                _ => return Err("give either \"ids\" or \"records\"".into()),
            };
            json_response(200, effect_json(&shared.delete_normalized(&key, records)))
        }
        "/_fake/prune" => {
            let key = b.stream()?;
            let n = match (&b.ids, &b.until_cursor) {
                (Some(ids), None) => {
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    shared.prune_ids(&key, &ids)
                }
                (None, Some(c)) => shared.prune_until(&key, c).map_err(|e| e.to_string())?,
                _ => return Err("give either \"ids\" or \"until_cursor\"".into()),
            };
            json_response(200, json!({ "pruned": n }).to_string())
        }
        "/_fake/reset" => json_response(
            200,
            json!({"removed": shared.hard_reset(&b.stream()?)}).to_string(),
        ),
        "/_fake/generate" => {
            let key = b.stream()?;
            let mut spec = GenerateSpec::new(
                b.count.ok_or("missing \"count\"")?,
                b.batch_size.unwrap_or(1000),
            );
            spec.id_order = b.id_order()?;
            let e = shared.generate_with(&key, spec, false);
            json_response(
                200,
                json!({"added": e.added.len(), "updated": e.updated.len(), "deleted": e.deleted.len(), "unchanged": e.unchanged.len()})
                    .to_string(),
            )
        }
        "/_fake/regenerate" => {
            let key = b.stream()?;
            let mut spec = GenerateSpec::new(
                b.count.ok_or("missing \"count\"")?,
                b.batch_size.unwrap_or(1000),
            );
            spec.revision = match b.revision {
                Some(r) if r > 0 => r,
                _ => return Err("\"revision\" must be 1 or more (0 is the first one)".into()),
            };
            spec.id_order = b.id_order()?;
            let e = shared.generate_with(&key, spec, true);
            json_response(
                200,
                json!({"added": e.added.len(), "updated": e.updated.len(), "deleted": e.deleted.len(), "unchanged": e.unchanged.len()})
                    .to_string(),
            )
        }
        "/_fake/connections" => {
            let need = |v: &Option<String>, what: &str| {
                v.clone().ok_or_else(|| format!("missing \"{what}\""))
            };
            let id = shared.write().add_connection(
                &need(&b.integration, "integration")?,
                &need(&b.connection, "connection")?,
            );
            json_response(200, json!({ "internal_connection_id": id }).to_string())
        }
        "/_fake/offset" => {
            let m = b.minutes.ok_or("missing \"minutes\"")?;
            if !(-24 * 60 + 1..24 * 60).contains(&m) {
                return Err("\"minutes\" must be within ±23:59".into());
            }
            shared.offset.store(m, std::sync::atomic::Ordering::Relaxed);
            json_response(200, json!({ "utc_offset_minutes": m }).to_string())
        }
        "/_fake/fault" => {
            let fault = if let Some(s) = b.status {
                Fault::Status(s)
            } else if let Some(r) = b.rate_limited {
                Fault::RateLimited { retry_after: r }
            } else if b.html == Some(true) {
                Fault::Html
            } else if let Some(ms) = b.slow_ms {
                Fault::Slow(std::time::Duration::from_millis(ms))
            } else if let Some(n) = b.short_page {
                Fault::ShortPage(n)
            } else if b.truncated_json == Some(true) {
                Fault::TruncatedJson
            } else if b.close_before_body == Some(true) {
                Fault::CloseBeforeBody
            } else if b.close_mid_body == Some(true) {
                Fault::CloseMidBody
            } else if let Some(raw) = &b.raw_record {
                Fault::RawRecord(raw.clone())
            } else {
                return Err("name a fault: status, rate_limited, html, slow_ms, short_page, truncated_json, close_before_body, close_mid_body or raw_record".into());
            };
            let times = b.times.unwrap_or(1).clamp(1, 10_000);
            let mut q = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..times {
                q.push_back(fault.clone());
            }
            json_response(200, json!({ "queued": q.len() }).to_string())
        }
        _ => error_json(404, "not_found", &format!("Cannot POST {path}")),
    })
}
