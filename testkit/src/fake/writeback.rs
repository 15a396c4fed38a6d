//! The fake's write-back side: actions (sync and async, with the `async_action` webhook),
//! the proxy (an echo of what it received), sync operations (trigger, start, pause,
//! frequency) with their effect on records, and the connections list.
//!
//! # Actions
//!
//! An action exists once scripted ([`FakeNango::script_action`], or `POST
//! /_fake/actions`); an unknown name is answered 404 `not_found` "Action not found", as
//! Nango does. An [`ActionScript`] says what a run returns (a fixed output, or the input
//! echoed), how long it takes, whether it fails (always, or its first `n` runs, with one
//! of Nango's script errors: [`ActionFailure`]) and whether it saves its input as a
//! record of a model of the action's connection (an action writing upstream, whose
//! record the next sync brings back).
//!
//! Every run is logged ([`FakeNango::action_executions`]) when it starts, with its input,
//! and completed with its outcome. A run goes on when its caller hangs up (Nango's
//! orchestrator runs it whatever the HTTP request does), so the log holds every run that
//! started, the ones of a killed client included.
//!
//! `X-Async: true` answers 202 with `Location: /action/<id>` and `{id, statusUrl}`; async
//! runs go one at a time (Nango runs the async actions of an environment sequentially),
//! retried up to `X-Max-Retries` times, and when one is finished (successfully or not)
//! an `async_action` webhook is sent, signed, when webhooks are configured.
//! `GET /action/{id}` answers 404 `not_found` until then (and forever for an output of
//! `null`, like Nango), the output, or the run's error.
//!
//! # Proxy
//!
//! Any method on `/proxy/<path>` answers 200 with a JSON echo: `method`, `path` (after
//! `/proxy`), `query` (raw), `headers` (the `Nango-Proxy-*` headers, without the prefix,
//! names lower-cased: what Nango forwards), `body` (JSON when it parses, else text,
//! `null` when empty), and Nango's own settings (`retries`, `retry_on`,
//! `base_url_override`, `decompress`). Two provider paths behave differently:
//! `/status/<code>` answers that status with the echo (a provider error passed through),
//! and `/bytes/<n>` streams `n` bytes in chunks of 1,000. An unknown connection is 400
//! `server_error` "Failed to get connection", as Nango answers.
//!
//! # Syncs
//!
//! Syncs exist once declared ([`FakeNango::define_sync`]: a name, its models; the same
//! syncs `GET /sync/status` reports). `POST
//! /sync/trigger`, `/sync/start`, `/sync/pause` and `PUT
//! /sync/update-connection-frequency` validate like Nango (strict bodies, unknown
//! integration, connection and sync errors) and are logged
//! ([`FakeNango::sync_commands`]). A trigger with `reset` and `emptyCache` does what
//! Nango's does to records: every record of the sync's models is removed without any
//! event, then the run saves the live ones again (new `ADDED` versions, new timestamps;
//! deleted ones never come back), and a full-sync webhook follows when webhooks are
//! configured. Start and pause set the schedule's state ([`FakeNango::sync_schedule`]).
//!
//! # Connections
//!
//! `GET /connections` lists the fake's connections with Nango's paging (`limit` 1 to
//! 2,000, default 10,000; `page`), newest first, filtered by `integrationId`,
//! `connectionId` and `search`; other keys than Nango's are 400 `invalid_query_params`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{
    auth, connection_headers, content_type_check, error_json, header_str, issues_response,
    json_response,
};
use super::json::normalize_record;
use super::query::{Issue, parse_pairs};
use super::{FakeNango, Shared};
use nango_sync::record::StreamKey;
use nango_sync::time::Timestamp;

/// A failure a scripted action answers with, as Nango reports a script's failure.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ActionFailure {
    /// The provider refused the script's request: 424 `script_http_error`, with the
    /// provider's status in `upstream` and its body as `payload`.
    ProviderError {
        /// The provider's status.
        status: u16,
        /// The provider's body.
        body: Value,
    },
    /// The script threw `ActionError(payload)`: 500 `action_script_runtime_error`.
    ActionError(Value),
    /// The script crashed: 500 `script_internal_error`.
    InternalError,
    /// A network error inside the script: 500 `script_network_error`.
    NetworkError,
}

impl ActionFailure {
    /// The status and body Nango answers with.
    fn response(&self) -> (u16, Value) {
        match self {
            ActionFailure::ProviderError { status, body } => (
                424,
                json!({"error": {"code": "script_http_error", "payload": body,
                    "upstream": {"status": status, "headers": {"content-type": "application/json"}, "body": body}}}),
            ),
            ActionFailure::ActionError(payload) => {
                let payload = if payload.is_object() {
                    payload.clone()
                } else {
                    json!({ "message": payload })
                };
                (
                    500,
                    json!({"error": {"message": "The action script failed with a runtime error",
                        "code": "action_script_runtime_error", "payload": payload}}),
                )
            }
            ActionFailure::InternalError => (
                500,
                json!({"error": {"message": "An internal error occurred during the script execution",
                    "code": "script_internal_error",
                    "payload": {"name": "TypeError", "message": "Cannot read properties of undefined"}}}),
            ),
            ActionFailure::NetworkError => (
                500,
                json!({"error": {"message": "A network error occurred during an HTTP call",
                    "code": "script_network_error",
                    "payload": {"name": "AxiosError", "code": "ECONNRESET", "message": "socket hang up"}}}),
            ),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ActionFailure::ProviderError { .. } => "script_http_error",
            ActionFailure::ActionError(_) => "action_script_runtime_error",
            ActionFailure::InternalError => "script_internal_error",
            ActionFailure::NetworkError => "script_network_error",
        }
    }
}

/// What a scripted action does (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionScript {
    output: Option<Value>,
    failure: Option<ActionFailure>,
    fail_first: u32,
    delay: Duration,
    writes_model: Option<String>,
}

impl ActionScript {
    /// Return `output`.
    pub fn output(output: Value) -> Self {
        ActionScript {
            output: Some(output),
            failure: None,
            fail_first: 0,
            delay: Duration::ZERO,
            writes_model: None,
        }
    }

    /// Return the input as the output.
    pub fn echo() -> Self {
        ActionScript {
            output: None,
            ..Self::output(Value::Null)
        }
    }

    /// Always fail with `failure`.
    pub fn failing(failure: ActionFailure) -> Self {
        ActionScript {
            failure: Some(failure),
            ..Self::echo()
        }
    }

    /// Fail the first `n` runs with `failure`, then succeed.
    pub fn failing_first(mut self, n: u32, failure: ActionFailure) -> Self {
        self.fail_first = n;
        self.failure = Some(failure);
        self
    }

    /// Take `delay` per run.
    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Save the input (an object with an `id`) as a record of `model` on the action's
    /// connection, as an action that writes to the provider whose sync then reads it.
    pub fn writes_record(mut self, model: impl Into<String>) -> Self {
        self.writes_model = Some(model.into());
        self
    }
}

/// One run of an action, as the fake logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionExecution {
    /// The run's number, from 1, in start order.
    pub seq: u64,
    /// The integration.
    pub integration: String,
    /// The connection.
    pub connection: String,
    /// The action's name.
    pub action: String,
    /// The input (`null` when none).
    pub input: Value,
    /// The async action's id, for an async run.
    pub async_id: Option<String>,
    /// `None` while it runs; then `Ok(output)` or `Err(error code)`.
    pub outcome: Option<Result<Value, String>>,
}

/// One sync command the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCommand {
    /// `trigger`, `start`, `pause` or `frequency`.
    pub command: String,
    /// The integration.
    pub integration: String,
    /// The connection, when one was named.
    pub connection: Option<String>,
    /// The syncs as sent (`name` or `name::variant`; empty: all).
    pub syncs: Vec<String>,
    /// `opts.reset` of a trigger.
    pub reset: bool,
    /// `opts.emptyCache` of a trigger.
    pub empty_cache: bool,
    /// The frequency of a frequency update.
    pub frequency: Option<String>,
}

/// The schedule of one sync of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSchedule {
    /// Paused by `POST /sync/pause`.
    pub paused: bool,
    /// The connection's frequency, when set.
    pub frequency: Option<String>,
}

/// An async run's result.
#[derive(Debug, Clone)]
enum AsyncResult {
    Running,
    Done(Value),
    Failed(u16, Value),
}

/// The fake's write-back state.
#[derive(Default)]
pub(crate) struct Writeback {
    inner: Mutex<Inner>,
    /// Async runs go one at a time.
    async_lane: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    actions: HashMap<String, ActionScript>,
    runs_per_action: HashMap<String, u32>,
    executions: Vec<ActionExecution>,
    async_results: HashMap<String, AsyncResult>,
    /// (integration, sync name, variant) → models.
    syncs: BTreeMap<(String, String, String), Vec<String>>,
    schedules: BTreeMap<(String, String, String, String), SyncSchedule>,
    commands: Vec<SyncCommand>,
}

impl Writeback {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The routes of this module; `None` when the path is not one of them.
pub(crate) async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    if path == "/proxy" || path.starts_with("/proxy/") {
        if let Some(r) = auth(shared, headers) {
            return Some(r);
        }
        return Some(
            proxy(
                shared,
                method,
                &path["/proxy".len()..],
                raw_query,
                headers,
                body,
            )
            .await,
        );
    }
    let json_routes = matches!(
        (method.as_str(), path),
        ("POST", "/action/trigger")
            | ("POST", "/sync/trigger" | "/sync/start" | "/sync/pause")
            | ("PUT", "/sync/update-connection-frequency")
            | ("GET", "/connections")
    ) || (method == Method::GET && path.starts_with("/action/"));
    if !json_routes {
        return None;
    }
    if let Some(r) = auth(shared, headers).or_else(|| content_type_check(headers)) {
        return Some(r);
    }
    Some(match (method.as_str(), path) {
        ("POST", "/action/trigger") => trigger_action(shared, raw_query, headers, body).await,
        ("GET", p) if p.starts_with("/action/") => action_result(shared, &p["/action/".len()..]),
        ("POST", "/sync/trigger") => sync_trigger(shared, raw_query, headers, body),
        ("POST", "/sync/start") => sync_schedule(shared, "start", body),
        ("POST", "/sync/pause") => sync_schedule(shared, "pause", body),
        ("PUT", _) => sync_frequency(shared, raw_query, body),
        _ => connections(shared, raw_query),
    })
}

fn invalid_body(message: impl Into<String>) -> Response {
    issues_response(
        "invalid_body",
        &[Issue {
            code: "invalid_type",
            message: message.into(),
            path: Vec::new(),
        }],
    )
}

fn empty_query_or_error(raw_query: &str) -> Option<Response> {
    (!raw_query.is_empty()).then(|| {
        issues_response(
            "invalid_query_params",
            &[Issue {
                code: "unrecognized_keys",
                message: "Unrecognized keys in the query".into(),
                path: Vec::new(),
            }],
        )
    })
}

fn known_connection(shared: &Shared, integration: &str, connection: &str) -> bool {
    shared
        .read()
        .connections
        .contains_key(&(integration.to_string(), connection.to_string()))
}

fn known_integration(shared: &Shared, integration: &str) -> bool {
    shared
        .read()
        .connections
        .keys()
        .any(|(i, _)| i == integration)
}

// ---- Actions ---------------------------------------------------------------------------

/// zod's `stringbool`.
fn stringbool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" | "enabled" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "disabled" => Some(false),
        _ => None,
    }
}

async fn trigger_action(
    shared: &Arc<Shared>,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (connection, integration) = match connection_headers(headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let is_async = match header_str(headers, "x-async").map(stringbool) {
        None => false,
        Some(Some(b)) => b,
        Some(None) => {
            return issues_response(
                "invalid_headers",
                &[Issue {
                    code: "invalid_format",
                    message: "Invalid input: expected stringbool".into(),
                    path: vec!["x-async".into()],
                }],
            );
        }
    };
    let max_retries = match header_str(headers, "x-max-retries").map(|v| v.trim().parse::<f64>()) {
        None => 0,
        Some(Ok(n)) if (0.0..=5.0).contains(&n) => n.floor() as u32,
        Some(_) => {
            return issues_response(
                "invalid_headers",
                &[Issue {
                    code: "too_big",
                    message: "Too big: expected number to be <=5".into(),
                    path: vec!["x-max-retries".into()],
                }],
            );
        }
    };
    if let Some(r) = empty_query_or_error(raw_query) {
        return r;
    }
    #[derive(Deserialize)]
    struct TriggerBody {
        action_name: Option<String>,
        input: Option<Value>,
    }
    let parsed: TriggerBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error_json(400, "invalid_json", &e.to_string()),
    };
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 255
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let Some(action) = parsed.action_name.filter(|n| name_ok(n)) else {
        return issues_response(
            "invalid_body",
            &[Issue {
                code: "invalid_format",
                message: "Invalid string: must match pattern /^[a-zA-Z0-9_-]+$/".into(),
                path: vec!["action_name".into()],
            }],
        );
    };
    if !known_connection(shared, &integration, &connection) {
        return error_json(400, "unknown_connection", "Failed to find connection");
    }
    let Some(script) = shared.writeback.lock().actions.get(&action).cloned() else {
        return error_json(404, "not_found", "Action not found");
    };
    // Nango: `input ? JSON.parse(JSON.stringify(input)) : null`.
    let input = match parsed.input {
        Some(Value::Bool(false)) | Some(Value::Null) | None => Value::Null,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(v) => v,
    };
    let run = Run {
        integration,
        connection,
        action,
        input,
        script,
    };
    if is_async {
        let id = uuid::Uuid::new_v4().to_string();
        shared
            .writeback
            .lock()
            .async_results
            .insert(id.clone(), AsyncResult::Running);
        tokio::spawn(run_async(shared.clone(), run, id.clone(), max_retries));
        let location = format!("/action/{id}");
        return Response::builder()
            .status(202)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(header::LOCATION, &location)
            .body(Body::from(
                json!({"id": id, "statusUrl": location}).to_string(),
            ))
            .expect("static response parts");
    }
    // The run goes on if the caller hangs up.
    let task = tokio::spawn(execute(shared.clone(), run, None));
    match task.await {
        Ok(Ok(output)) => json_response(200, output.to_string()),
        Ok(Err((status, body))) => json_response(status, body.to_string()),
        Err(e) => error_json(
            500,
            "internal_server_error",
            &format!("Failed to run action: {e}"),
        ),
    }
}

/// One run's request.
#[derive(Debug, Clone)]
struct Run {
    integration: String,
    connection: String,
    action: String,
    input: Value,
    script: ActionScript,
}

/// Run once: log, wait, fail or write and answer.
async fn execute(
    shared: Arc<Shared>,
    run: Run,
    async_id: Option<String>,
) -> Result<Value, (u16, Value)> {
    let (seq, nth) = {
        let mut w = shared.writeback.lock();
        let nth = w.runs_per_action.entry(run.action.clone()).or_default();
        *nth += 1;
        let nth = *nth;
        let seq = w.executions.len() as u64 + 1;
        w.executions.push(ActionExecution {
            seq,
            integration: run.integration.clone(),
            connection: run.connection.clone(),
            action: run.action.clone(),
            input: run.input.clone(),
            async_id,
            outcome: None,
        });
        (seq, nth)
    };
    if !run.script.delay.is_zero() {
        tokio::time::sleep(run.script.delay).await;
    }
    let s = &run.script;
    let failure = match &s.failure {
        Some(f) if s.fail_first == 0 || nth <= s.fail_first => Some(f.clone()),
        _ => None,
    };
    let result = match failure {
        Some(f) => Err(f),
        None => {
            if let Some(model) = &s.writes_model {
                write_record(&shared, &run, model)
                    .map(|()| s.output.clone().unwrap_or_else(|| run.input.clone()))
            } else {
                Ok(s.output.clone().unwrap_or_else(|| run.input.clone()))
            }
        }
    };
    let mut w = shared.writeback.lock();
    let entry = &mut w.executions[(seq - 1) as usize];
    match result {
        Ok(output) => {
            entry.outcome = Some(Ok(output.clone()));
            Ok(output)
        }
        Err(f) => {
            entry.outcome = Some(Err(f.code().to_string()));
            Err(f.response())
        }
    }
}

/// Save the run's input as a record of `model` on its connection.
fn write_record(shared: &Shared, run: &Run, model: &str) -> Result<(), ActionFailure> {
    let record = normalize_record(&run.input.to_string()).map_err(|e| {
        ActionFailure::ActionError(json!({"message": format!("the input is not a record: {e}")}))
    })?;
    let stream = StreamKey::new(run.integration.clone(), run.connection.clone(), model);
    shared.save_normalized(&stream, vec![record]);
    Ok(())
}

async fn run_async(shared: Arc<Shared>, run: Run, id: String, max_retries: u32) {
    let lane = shared.writeback.async_lane.clone();
    let _one_at_a_time = lane.lock().await;
    let mut attempt = 0;
    let result = loop {
        let r = execute(shared.clone(), run.clone(), Some(id.clone())).await;
        if r.is_ok() || attempt >= max_retries {
            break r;
        }
        attempt += 1;
    };
    shared.writeback.lock().async_results.insert(
        id.clone(),
        match result {
            Ok(v) => AsyncResult::Done(v),
            Err((status, body)) => AsyncResult::Failed(status, body),
        },
    );
    let body = json!({
        "from": "nango",
        "type": "async_action",
        "connectionId": run.connection,
        "providerConfigKey": run.integration,
        "payload": {"id": id, "statusUrl": format!("/action/{id}")},
    });
    shared.webhooks.send_now("async_action", None, &body).await;
}

fn action_result(shared: &Shared, id: &str) -> Response {
    if uuid::Uuid::parse_str(id).is_err() {
        return json_response(
            400,
            json!({"error": {"code": "invalid_uri_params", "errors": [
                {"code": "invalid_format", "message": "Invalid UUID", "path": ["id"]}]}})
            .to_string(),
        );
    }
    let not_found = || error_json(404, "not_found", &format!("No action '{id}' found"));
    match shared.writeback.lock().async_results.get(id) {
        // Nango takes a `null` output for "not found" too.
        Some(AsyncResult::Done(Value::Null)) | Some(AsyncResult::Running) | None => not_found(),
        Some(AsyncResult::Done(v)) => json_response(200, v.to_string()),
        Some(AsyncResult::Failed(status, body)) => json_response(*status, body.to_string()),
    }
}

// ---- Proxy -----------------------------------------------------------------------------

async fn proxy(
    shared: &Shared,
    method: &Method,
    provider_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (connection, integration) = match connection_headers(headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(v) = header_str(headers, "decompress")
        && v != "true"
        && v != "false"
    {
        return issues_response(
            "invalid_headers",
            &[Issue {
                code: "invalid_value",
                message: "Invalid option: expected one of \"true\"|\"false\"".into(),
                path: vec!["decompress".into()],
            }],
        );
    }
    if let Some(v) = header_str(headers, "retries")
        && !v.is_empty()
        && v.trim().parse::<f64>().is_err()
    {
        return issues_response(
            "invalid_headers",
            &[Issue {
                code: "invalid_type",
                message: "Invalid input: expected number, received NaN".into(),
                path: vec!["retries".into()],
            }],
        );
    }
    if !known_integration(shared, &integration) {
        return error_json(
            404,
            "unknown_provider_config",
            "Provider config not found for the given provider config key. Please make sure the provider config exists in the Nango dashboard.",
        );
    }
    if !known_connection(shared, &integration, &connection) {
        return error_json(400, "server_error", "Failed to get connection");
    }
    if let Some(n) = provider_path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..n.div_ceil(1000))
            .map(|i| {
                Ok(Bytes::from(vec![
                    b'a' + (i % 26) as u8;
                    (n - i * 1000).min(1000)
                ]))
            })
            .collect();
        return Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .expect("static response parts");
    }
    let status = provider_path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c))
        .unwrap_or(200);
    let forwarded: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("nango-proxy-")?;
            Some((
                name.to_string(),
                v.to_str().unwrap_or("\u{fffd}").to_string(),
            ))
        })
        .collect();
    let body_value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let echo = json!({
        "method": method.as_str(),
        "path": provider_path,
        "query": raw_query,
        "headers": forwarded,
        "body": body_value,
        "retries": header_str(headers, "retries"),
        "retry_on": header_str(headers, "retry-on"),
        "base_url_override": header_str(headers, "base-url-override"),
        "decompress": header_str(headers, "decompress"),
        "connection": connection,
        "integration": integration,
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-request-id", "fake-proxy-1")
        .body(Body::from(echo.to_string()))
        .expect("static response parts")
}

// ---- Syncs -----------------------------------------------------------------------------

/// A sync of a `syncs` list: `name`, `name::variant` or `{name, variant}`.
fn parse_sync(v: &Value) -> Option<(String, String)> {
    let (name, variant) = match v {
        Value::String(s) => match s.split_once("::") {
            Some((n, var)) => (n.to_string(), var.to_string()),
            None => (s.clone(), "base".to_string()),
        },
        Value::Object(m) => (
            m.get("name")?.as_str()?.to_string(),
            m.get("variant")?.as_str()?.to_string(),
        ),
        _ => return None,
    };
    (!name.is_empty()).then_some((
        name,
        if variant.is_empty() {
            "base".into()
        } else {
            variant
        },
    ))
}

/// The `syncs` of a command body, or the answer refusing it (boxed: a response is large).
fn parse_syncs(v: Option<&Value>) -> Result<Vec<(String, String)>, Box<Response>> {
    let Some(Value::Array(items)) = v else {
        return Err(Box::new(issues_response(
            "invalid_body",
            &[Issue {
                code: "invalid_type",
                message: "Invalid input: expected array, received undefined".into(),
                path: vec!["syncs".into()],
            }],
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            parse_sync(v).ok_or_else(|| {
                Box::new(issues_response(
                    "invalid_body",
                    &[Issue {
                        code: "invalid_union",
                        message: "Each sync must be either a string or a { name: string, variant: string } object".into(),
                        path: vec!["syncs".into(), i.to_string()],
                    }],
                ))
            })
        })
        .collect()
}

/// A strict JSON object body, as Nango's schemas take it: an object whose keys are all
/// in `allowed` (else 400, as Nango answers).
fn object_body(
    body: &[u8],
    allowed: &[&str],
) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(Box::new(invalid_body("Invalid input: expected object"))),
        Err(e) => return Err(Box::new(error_json(400, "invalid_json", &e.to_string()))),
    };
    match unknown_keys(&obj, allowed) {
        Some(r) => Err(Box::new(r)),
        None => Ok(obj),
    }
}

fn unknown_keys(obj: &serde_json::Map<String, Value>, allowed: &[&str]) -> Option<Response> {
    let unknown: Vec<&String> = obj
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    (!unknown.is_empty()).then(|| {
        issues_response(
            "invalid_body",
            &[Issue {
                code: "unrecognized_keys",
                message: format!("Unrecognized keys: {unknown:?}"),
                path: Vec::new(),
            }],
        )
    })
}

/// The (connection, sync name, variant, models) a command selects, or the error Nango
/// answers.
#[allow(clippy::type_complexity)]
fn select_syncs(
    shared: &Shared,
    integration: &str,
    connection: Option<&str>,
    syncs: &[(String, String)],
) -> Result<Vec<(String, String, String, Vec<String>)>, Box<Response>> {
    if !known_integration(shared, integration) {
        return Err(json_response(
            400,
            json!({"error": {"message": "There is no Provider Configuration matching this key. Please make sure this value exists in the Nango dashboard {}",
                "code": "unknown_provider_config", "payload": {}}})
            .to_string(),
        ).into());
    }
    let connections: Vec<String> = match connection {
        Some(c) => {
            if !known_connection(shared, integration, c) {
                return Err(json_response(
                    404,
                    json!({"error": {"message": "No connection matching the provided params of 'connection_id' and 'provider_config_key'. Please make sure these values exist in the Nango dashboard",
                        "code": "unknown_connection",
                        "payload": {"connectionId": c, "providerConfigKey": integration}}})
                    .to_string(),
                ).into());
            }
            vec![c.to_string()]
        }
        None => shared
            .read()
            .connections
            .keys()
            .filter(|(i, _)| i == integration)
            .map(|(_, c)| c.clone())
            .collect(),
    };
    let declared: Vec<(String, String, Vec<String>)> = shared
        .writeback
        .lock()
        .syncs
        .iter()
        .filter(|((i, _, _), _)| i == integration)
        .map(|((_, n, v), models)| (n.clone(), v.clone(), models.clone()))
        .collect();
    let wanted: Vec<&(String, String, Vec<String>)> = if syncs.is_empty() {
        declared.iter().collect()
    } else {
        let mut out = Vec::new();
        for (name, variant) in syncs {
            match declared.iter().find(|(n, v, _)| n == name && v == variant) {
                Some(d) => out.push(d),
                None if connection.is_some() => {
                    return Err(json_response(
                        400,
                        json!({"error": {"message": "No syncs found given the inputs.",
                            "code": "no_syncs_found", "payload": {}}})
                        .to_string(),
                    )
                    .into());
                }
                None => {}
            }
        }
        out
    };
    if wanted.is_empty() {
        return Err(json_response(
            400,
            json!({"error": {"message": "No syncs found given the inputs.",
                "code": "no_syncs_found", "payload": {}}})
            .to_string(),
        )
        .into());
    }
    Ok(connections
        .iter()
        .flat_map(|c| {
            wanted
                .iter()
                .map(move |(n, v, m)| (c.clone(), n.clone(), v.clone(), m.clone()))
        })
        .collect())
}

fn sync_trigger(
    shared: &Arc<Shared>,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(r) = empty_query_or_error(raw_query) {
        return r;
    }
    let obj = match object_body(
        body,
        &[
            "syncs",
            "provider_config_key",
            "connection_id",
            "opts",
            "sync_mode",
            "full_resync",
        ],
    ) {
        Ok(obj) => obj,
        Err(r) => return *r,
    };
    let syncs = match parse_syncs(obj.get("syncs")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let legacy = obj.contains_key("sync_mode") || obj.contains_key("full_resync");
    if obj.contains_key("opts") && legacy {
        return error_json(
            400,
            "invalid_body",
            "Cannot use opts with deprecated sync_mode/full_resync parameters",
        );
    }
    let opt = |k: &str| {
        obj.get("opts")
            .and_then(|o| o.get(k))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let (mut reset, mut empty_cache) = (opt("reset"), opt("emptyCache"));
    match obj.get("sync_mode").and_then(Value::as_str) {
        Some("full_refresh") => reset = true,
        Some("full_refresh_and_clear_cache") => (reset, empty_cache) = (true, true),
        _ => {}
    }
    if obj.get("full_resync").and_then(Value::as_bool) == Some(true) {
        reset = true;
    }
    let integration = obj
        .get("provider_config_key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| header_str(headers, "provider-config-key").map(str::to_string));
    let Some(integration) = integration else {
        return error_json(
            400,
            "missing_provider_config_key",
            "Missing provider_config_key. Provide it in the body or headers.",
        );
    };
    let connection = obj
        .get("connection_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| header_str(headers, "connection-id").map(str::to_string));
    let selected = match select_syncs(shared, &integration, connection.as_deref(), &syncs) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    shared.writeback.lock().commands.push(SyncCommand {
        command: "trigger".into(),
        integration: integration.clone(),
        connection: connection.clone(),
        syncs: syncs.iter().map(|(n, v)| wire(n, v)).collect(),
        reset,
        empty_cache,
        frequency: None,
    });
    // `emptyCache` only with `reset`: a plain run ignores it.
    if reset && empty_cache {
        for (conn, _, variant, models) in &selected {
            for model in models {
                let stream = StreamKey::new(integration.clone(), conn.clone(), model.clone())
                    .with_variant(if variant == "base" { "" } else { variant });
                empty_cache_and_rerun(shared, &stream);
            }
        }
    }
    json_response(200, json!({"success": true}).to_string())
}

fn wire(name: &str, variant: &str) -> String {
    if variant == "base" {
        name.to_string()
    } else {
        format!("{name}::{variant}")
    }
}

/// What an `emptyCache` reset does to a stream: every record removed without an event,
/// then the run saves the live ones again (new `ADDED` versions), and a full-sync
/// webhook follows.
fn empty_cache_and_rerun(shared: &Arc<Shared>, stream: &StreamKey) {
    let live: Vec<String> = {
        let st = shared.read();
        st.streams
            .get(stream)
            .map(|s| {
                s.records()
                    .filter(|r| !r.is_deleted())
                    .map(|r| r.saved_text())
                    .collect()
            })
            .unwrap_or_default()
    };
    shared.hard_reset(stream);
    let records = live
        .iter()
        .filter_map(|text| normalize_record(text).ok())
        .collect::<Vec<_>>();
    if records.is_empty() {
        return;
    }
    let effect = {
        let mut st = shared.write();
        let (s, clock) = st.stream_and_clock(stream);
        s.save(records, clock)
    };
    let body: Value = serde_json::from_str(&super::webhooks::sync_body(
        stream,
        true,
        Some((effect.added.len(), 0, 0)),
    ))
    .expect("a JSON object");
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let shared = shared.clone();
        let stream = stream.clone();
        runtime.spawn(async move {
            shared.webhooks.send_now("sync", Some(stream), &body).await;
        });
    }
}

fn sync_schedule(shared: &Shared, command: &str, body: &[u8]) -> Response {
    let obj = match object_body(body, &["syncs", "provider_config_key", "connection_id"]) {
        Ok(obj) => obj,
        Err(r) => return *r,
    };
    let syncs = match parse_syncs(obj.get("syncs")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(integration) = obj.get("provider_config_key").and_then(Value::as_str) else {
        return issues_response(
            "invalid_body",
            &[Issue {
                code: "invalid_type",
                message: "Invalid input: expected string, received undefined".into(),
                path: vec!["provider_config_key".into()],
            }],
        );
    };
    let connection = obj.get("connection_id").and_then(Value::as_str);
    let selected = match select_syncs(shared, integration, connection, &syncs) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut w = shared.writeback.lock();
    for (conn, name, variant, _) in selected {
        w.schedules
            .entry((integration.to_string(), conn, name, variant))
            .or_default()
            .paused = command == "pause";
    }
    w.commands.push(SyncCommand {
        command: command.into(),
        integration: integration.into(),
        connection: connection.map(str::to_string),
        syncs: syncs.iter().map(|(n, v)| wire(n, v)).collect(),
        reset: false,
        empty_cache: false,
        frequency: None,
    });
    json_response(200, json!({"success": true}).to_string())
}

/// `every 2h`, `30m`, `half hour`, ... as Nango's regex takes them, and at least 30 s.
fn frequency_ok(f: &str) -> bool {
    let f = f.strip_prefix("every ").unwrap_or(f);
    if matches!(
        f,
        "month" | "week" | "half day" | "half hour" | "quarter hour"
    ) {
        return true;
    }
    let split = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
    let (num, unit) = f.split_at(split);
    let n: u64 = if num.is_empty() {
        1
    } else {
        num.parse().unwrap_or(0)
    };
    let secs = match unit.trim_start() {
        "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => n * 3600,
        "d" | "day" | "days" => n * 86400,
        _ => return false,
    };
    secs >= 30
}

fn sync_frequency(shared: &Shared, raw_query: &str, body: &[u8]) -> Response {
    if let Some(r) = empty_query_or_error(raw_query) {
        return r;
    }
    let obj = match object_body(
        body,
        &[
            "sync_name",
            "sync_variant",
            "provider_config_key",
            "connection_id",
            "frequency",
        ],
    ) {
        Ok(obj) => obj,
        Err(r) => return *r,
    };
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(name), Some(integration), Some(connection)) =
        (s("sync_name"), s("provider_config_key"), s("connection_id"))
    else {
        return invalid_body("sync_name, provider_config_key and connection_id are required");
    };
    let variant = s("sync_variant").unwrap_or_else(|| "base".into());
    let frequency = match obj.get("frequency") {
        Some(Value::Null) => None,
        Some(Value::String(f)) => Some(f.clone()),
        _ => return invalid_body("frequency must be a string or null"),
    };
    if !known_connection(shared, &integration, &connection) {
        return json_response(
            400,
            json!({"error": {"code": "unknown_connection"}}).to_string(),
        );
    }
    let declared = shared.writeback.lock().syncs.contains_key(&(
        integration.clone(),
        name.clone(),
        variant.clone(),
    ));
    if !declared {
        return json_response(400, json!({"error": {"code": "unknown_sync"}}).to_string());
    }
    if let Some(f) = &frequency
        && !frequency_ok(f)
    {
        return error_json(400, "invalid_body", "Sync interval is invalid");
    }
    let stored = frequency
        .as_deref()
        .map(|f| f.strip_prefix("every ").unwrap_or(f).to_string());
    let mut w = shared.writeback.lock();
    w.schedules
        .entry((
            integration.clone(),
            connection.clone(),
            name.clone(),
            variant.clone(),
        ))
        .or_default()
        .frequency = stored.clone();
    w.commands.push(SyncCommand {
        command: "frequency".into(),
        integration,
        connection: Some(connection),
        syncs: vec![wire(&name, &variant)],
        reset: false,
        empty_cache: false,
        frequency: frequency.clone(),
    });
    json_response(
        200,
        json!({"frequency": stored.unwrap_or_else(|| DEFAULT_RUNS.into())}).to_string(),
    )
}

// ---- Connections -----------------------------------------------------------------------

fn connections(shared: &Shared, raw_query: &str) -> Response {
    let pairs = parse_pairs(raw_query);
    let mut integrations: Option<Vec<String>> = None;
    let mut connection_id = None;
    let mut search = None;
    let mut limit = 10_000usize;
    let mut page = 0usize;
    for (k, values) in &pairs {
        // A repeated key is an array for Nango's query parser, which its schema refuses;
        // the last value is taken here.
        let v = values.last().cloned().unwrap_or_default();
        match k.as_str() {
            "integrationId" => {
                integrations = Some(v.split(',').map(str::to_string).collect());
            }
            "connectionId" => connection_id = Some(v.clone()),
            "search" => search = Some(v.clone()),
            "endUserId" | "endUserOrganizationId" => {}
            k if k.starts_with("tags[") && k.ends_with(']') => {}
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=2000).contains(&n) => limit = n,
                _ => {
                    return issues_response(
                        "invalid_query_params",
                        &[Issue {
                            code: "too_big",
                            message: "Too big: expected number to be <=2000".into(),
                            path: vec!["limit".into()],
                        }],
                    );
                }
            },
            "page" => match v.parse::<usize>() {
                Ok(n) => page = n,
                Err(_) => {
                    return issues_response(
                        "invalid_query_params",
                        &[Issue {
                            code: "invalid_type",
                            message: "Invalid input: expected number, received NaN".into(),
                            path: vec!["page".into()],
                        }],
                    );
                }
            },
            other => {
                return issues_response(
                    "invalid_query_params",
                    &[Issue {
                        code: "unrecognized_keys",
                        message: format!("Unrecognized key: \"{other}\""),
                        path: Vec::new(),
                    }],
                );
            }
        }
    }
    let mut all: Vec<(u64, String, String)> = shared
        .read()
        .connections
        .iter()
        .map(|((i, c), id)| (*id, i.clone(), c.clone()))
        .filter(|(_, i, c)| {
            integrations.as_ref().is_none_or(|l| l.contains(i))
                && connection_id.as_ref().is_none_or(|x| x == c)
                && search
                    .as_ref()
                    .is_none_or(|s| c.to_lowercase().contains(&s.to_lowercase()))
        })
        .collect();
    // Newest first.
    all.sort_by_key(|c| std::cmp::Reverse(c.0));
    let list: Vec<Value> = all
        .into_iter()
        .skip(page.saturating_mul(limit))
        .take(limit)
        .map(|(id, integration, connection)| {
            let created = Timestamp::from_micros(1_767_225_600_000_000 + id as i64 * 1_000_000);
            json!({
                "id": id,
                "connection_id": connection,
                "provider_config_key": integration,
                "provider": integration,
                "errors": [],
                "end_user": null,
                "tags": {},
                "metadata": null,
                "created": created.to_string(),
            })
        })
        .collect();
    json_response(200, json!({ "connections": list }).to_string())
}

// ---- The control API and the Rust API ---------------------------------------------------

/// `POST /_fake/actions`: `{"name", "output"?, "echo"?, "fail"? (a failure), "fail_first"?,
/// "delay_ms"?, "writes_model"?}`; `fail` is `{"code": "script_http_error", "status"?,
/// "payload"?}`, `{"code": "action_script_runtime_error", "payload"?}`,
/// `{"code": "script_internal_error"}` or `{"code": "script_network_error"}`.
/// `POST /_fake/syncs`: `{"integration", "name", "variant"?, "models": [...]}`.
pub(crate) fn control(shared: &Shared, path: &str, body: &[u8]) -> Option<Result<Value, String>> {
    match path {
        "/_fake/actions" => Some(control_action(shared, body)),
        "/_fake/syncs" => Some(control_sync(shared, body)),
        _ => None,
    }
}

fn control_action(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fail {
        code: String,
        status: Option<u16>,
        payload: Option<Value>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        name: String,
        output: Option<Value>,
        #[serde(default)]
        echo: bool,
        fail: Option<Fail>,
        fail_first: Option<u32>,
        delay_ms: Option<u64>,
        writes_model: Option<String>,
    }
    let b: B = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut script = match (&b.output, b.echo) {
        (Some(o), false) => ActionScript::output(o.clone()),
        (None, _) => ActionScript::echo(),
        (Some(_), true) => return Err("give either \"output\" or \"echo\"".into()),
    };
    if let Some(f) = b.fail {
        let failure = match f.code.as_str() {
            "script_http_error" => ActionFailure::ProviderError {
                status: f.status.unwrap_or(422),
                body: f
                    .payload
                    .unwrap_or_else(|| json!({"message": "Unprocessable"})),
            },
            "action_script_runtime_error" => ActionFailure::ActionError(
                f.payload.unwrap_or_else(|| json!({"message": "failed"})),
            ),
            "script_internal_error" => ActionFailure::InternalError,
            "script_network_error" => ActionFailure::NetworkError,
            other => return Err(format!("unknown failure code {other:?}")),
        };
        script = match b.fail_first {
            Some(n) => script.failing_first(n, failure),
            None => ActionScript {
                failure: Some(failure),
                ..script
            },
        };
    }
    if let Some(ms) = b.delay_ms {
        script = script.slow(Duration::from_millis(ms));
    }
    if let Some(m) = b.writes_model {
        script = script.writes_record(m);
    }
    let check = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !check(&b.name) {
        return Err(format!("{:?} is not an action name", b.name));
    }
    shared
        .writeback
        .lock()
        .actions
        .insert(b.name.clone(), script);
    Ok(json!({ "action": b.name }))
}

fn control_sync(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        integration: String,
        name: String,
        variant: Option<String>,
        models: Vec<String>,
    }
    let b: B = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    add_sync(
        shared,
        &b.integration,
        &b.name,
        b.variant.as_deref(),
        &b.models,
    );
    Ok(json!({ "sync": b.name }))
}

pub(crate) fn add_sync(
    shared: &Shared,
    integration: &str,
    name: &str,
    variant: Option<&str>,
    models: &[String],
) {
    let variant = variant.filter(|v| !v.is_empty()).unwrap_or("base");
    shared.writeback.lock().syncs.insert(
        (
            integration.to_string(),
            name.to_string(),
            variant.to_string(),
        ),
        models.to_vec(),
    );
}

/// The `runs` of every sync's configuration in the fake: what a connection without a
/// frequency of its own runs at.
pub(crate) const DEFAULT_RUNS: &str = "every day";

/// The syncs declared for `integration`: (name, variant, models), by name then variant.
pub(crate) fn declared_syncs(
    shared: &Shared,
    integration: &str,
) -> Vec<(String, String, Vec<String>)> {
    shared
        .writeback
        .lock()
        .syncs
        .iter()
        .filter(|((i, _, _), _)| i == integration)
        .map(|((_, name, variant), models)| (name.clone(), variant.clone(), models.clone()))
        .collect()
}

/// The schedule of a declared sync of a connection, as start, pause and frequency
/// updates left it.
pub(crate) fn schedule_of(
    shared: &Shared,
    integration: &str,
    connection: &str,
    name: &str,
    variant: &str,
) -> SyncSchedule {
    shared
        .writeback
        .lock()
        .schedules
        .get(&(
            integration.to_string(),
            connection.to_string(),
            name.to_string(),
            variant.to_string(),
        ))
        .cloned()
        .unwrap_or_default()
}

impl FakeNango {
    /// Script action `name` (any integration and connection); replaces an earlier script.
    pub fn script_action(&self, name: &str, script: ActionScript) {
        self.shared
            .writeback
            .lock()
            .actions
            .insert(name.to_string(), script);
    }

    /// Every action run so far, in start order (see the [module documentation](self)).
    pub fn action_executions(&self) -> Vec<ActionExecution> {
        self.shared.writeback.lock().executions.clone()
    }

    /// Every sync command received so far, in order.
    pub fn sync_commands(&self) -> Vec<SyncCommand> {
        self.shared.writeback.lock().commands.clone()
    }

    /// The schedule of sync `name` (base variant) of a connection, as start, pause and
    /// frequency updates left it.
    pub fn sync_schedule(&self, integration: &str, connection: &str, name: &str) -> SyncSchedule {
        schedule_of(
            &self.shared,
            integration,
            connection,
            name,
            StreamKey::BASE_VARIANT,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_nangos_rules() {
        for ok in [
            "every 2h",
            "30m",
            "every day",
            "half hour",
            "every 30s",
            "1d",
            "every week",
        ] {
            assert!(frequency_ok(ok), "{ok}");
        }
        for bad in ["every 10s", "2 fortnights", "", "every"] {
            assert!(!frequency_ok(bad), "{bad}");
        }
    }

    #[test]
    fn syncs_parse_in_every_form() {
        assert_eq!(
            parse_sync(&json!("issues")),
            Some(("issues".into(), "base".into()))
        );
        assert_eq!(
            parse_sync(&json!("issues::eu")),
            Some(("issues".into(), "eu".into()))
        );
        assert_eq!(
            parse_sync(&json!({"name": "issues", "variant": "eu"})),
            Some(("issues".into(), "eu".into()))
        );
        assert_eq!(parse_sync(&json!(3)), None);
    }

    #[test]
    fn failures_answer_like_nango() {
        let (status, body) = ActionFailure::ProviderError {
            status: 422,
            body: json!({"message": "bad"}),
        }
        .response();
        assert_eq!(status, 424);
        assert_eq!(body["error"]["upstream"]["status"], 422);
        assert!(body["error"].get("message").is_none());
        let (status, body) = ActionFailure::ActionError(json!("nope")).response();
        assert_eq!(
            (status, &body["error"]["payload"]),
            (500, &json!({"message": "nope"}))
        );
    }
}
