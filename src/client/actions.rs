//! Actions: Nango runs an integration's action script, which writes to the provider's
//! API, and returns its output.
//!
//! - [`NangoClient::trigger_action`] runs one and waits for its output
//!   (`POST /action/trigger`; Nango keeps the request open while the script runs, up to
//!   about 15.5 minutes, so the request's timeout is
//!   [`NangoClientBuilder::action_timeout`](super::NangoClientBuilder::action_timeout),
//!   16 minutes by default).
//! - [`NangoClient::trigger_action_async`] queues one (`X-Async: true`) and returns its
//!   id at once; [`NangoClient::action_result`] asks for its output
//!   (`GET /action/{id}`), and [`NangoClient::wait_action`] polls with backoff until it
//!   is done, woken early by the `async_action` webhook through [`ActionWakeups`].
//!
//! An action changes the world, so a failed trigger is sent again only when the first
//! attempt certainly did nothing: no connection was made, Nango's rate limiter refused
//! it (429), or a gateway in front of Nango answered 502, 503 or 504. Anything else (a
//! timeout, a broken connection, a 5xx of Nango itself) is returned, since the action
//! may have run. The [outbox](crate::sink::outbox) retries durably instead.
//!
//! Failures surface as [`Error::Nango`] with Nango's code and the script's error data in
//! `payload` ([`Error::nango_payload`]): 404 `not_found` for an unknown action, 400
//! `unknown_connection`, 424 `script_http_error` when the provider refused the script's
//! request (its answer in `payload`), 500 `action_script_runtime_error` when the script
//! threw `ActionError` (its payload), other 5xx when the script or Nango broke.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::request::{JsonCall, check_name, from_body, not_carried_out, to_body};
use super::{NangoClient, RetryConfig};
use crate::error::{Error, Result};
use crate::record::RawJson;

/// The most retries Nango runs an async action with (`X-Max-Retries`).
pub const MAX_ASYNC_RETRIES: u8 = 5;

/// One action to trigger, its input as JSON text.
#[derive(Debug, Clone, Copy)]
pub struct ActionRequest<'a> {
    /// The integration id (Provider-Config-Key).
    pub integration: &'a str,
    /// The connection id.
    pub connection: &'a str,
    /// The action's name (`^[a-zA-Z0-9_-]+$`).
    pub action: &'a str,
    /// The input, as JSON text; `None` sends none.
    pub input: Option<&'a RawValue>,
}

impl ActionRequest<'_> {
    fn describe(&self) -> String {
        format!(
            "POST /action/trigger ({}/{}, action {})",
            self.integration, self.connection, self.action
        )
    }
}

/// An async action Nango accepted (`202`): its id, for [`NangoClient::action_result`]
/// and [`NangoClient::wait_action`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncAction {
    /// The action's id (a UUID).
    pub id: String,
    /// Where its result is read: `/action/{id}`, relative to the host.
    #[serde(rename = "statusUrl")]
    pub status_url: String,
}

/// How [`NangoClient::wait_action`] waits.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// The first wait between two polls (default 500 ms); it doubles up to
    /// `max_interval`, with jitter.
    pub initial_interval: Duration,
    /// The longest wait between two polls (default 15 s).
    pub max_interval: Duration,
    /// Give up with [`Error::ActionNotFinished`] after this long (default 30 minutes;
    /// Nango runs the async actions of an environment one at a time, so one can wait
    /// behind others).
    pub timeout: Duration,
    /// Woken when the `async_action` webhook for the action arrives, so the result is
    /// read at once instead of at the next poll.
    pub wakeups: Option<ActionWakeups>,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(30 * 60),
            wakeups: None,
        }
    }
}

impl WaitOptions {
    /// Be woken by the `async_action` webhooks `wakeups` is told about.
    pub fn with_wakeups(mut self, wakeups: ActionWakeups) -> Self {
        self.wakeups = Some(wakeups);
        self
    }

    /// Give up after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Poll first after `initial`, then back off up to `max`.
    pub fn with_intervals(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_interval = initial;
        self.max_interval = max.max(initial);
        self
    }
}

/// Async actions Nango said are finished (its `async_action` webhook), for
/// [`NangoClient::wait_action`] to read their results at once.
///
/// Give every `async_action` webhook to [`ActionWakeups::notify`] (the scheduler does it
/// for the webhooks it receives: `engine::scheduler::Scheduler::action_wakeups`, feature
/// `webhook`); the last 4,096 ids are remembered, so a webhook that arrives before the
/// wait starts is not lost.
#[derive(Debug, Clone, Default)]
pub struct ActionWakeups {
    inner: Arc<Mutex<Wakeups>>,
}

#[derive(Debug, Default)]
struct Wakeups {
    waiting: HashMap<String, Arc<Notify>>,
    done: HashSet<String>,
    order: VecDeque<String>,
}

const REMEMBERED: usize = 4096;

impl ActionWakeups {
    /// A registry nobody has notified yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakeups> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nango says action `id` is finished (successfully or not).
    pub fn notify(&self, id: &str) {
        let mut w = self.lock();
        if w.done.insert(id.to_string()) {
            w.order.push_back(id.to_string());
            while w.order.len() > REMEMBERED {
                if let Some(old) = w.order.pop_front() {
                    w.done.remove(&old);
                }
            }
        }
        if let Some(n) = w.waiting.get(id) {
            n.notify_one();
        }
    }

    /// Whether Nango said action `id` is finished.
    pub fn is_done(&self, id: &str) -> bool {
        self.lock().done.contains(id)
    }

    fn register(&self, id: &str) -> Arc<Notify> {
        self.lock()
            .waiting
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn unregister(&self, id: &str) {
        self.lock().waiting.remove(id);
    }
}

/// `^[0-9a-f]{8}-[0-9a-f]{4}-...` (any version): Nango answers 400 for other ids.
fn check_action_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Error::invalid("action id", format!("{id:?} is not a UUID")))
}

impl NangoClient {
    /// Run action `action` of a connection with `input` and return its output, typed.
    ///
    /// Waits while the script runs (see the [module documentation](self) for timeouts,
    /// retries and errors).
    pub async fn trigger_action<I, O>(
        &self,
        integration: &str,
        connection: &str,
        action: &str,
        input: &I,
    ) -> Result<O>
    where
        I: Serialize + ?Sized,
        O: DeserializeOwned,
    {
        let input = to_raw(input)?;
        let req = ActionRequest {
            integration,
            connection,
            action,
            input: Some(&input),
        };
        let out = self.trigger_action_raw(&req).await?;
        from_body(&req.describe(), out.as_str().as_bytes())
    }

    /// [`NangoClient::trigger_action`] with JSON text in and out.
    pub async fn trigger_action_raw(&self, req: &ActionRequest<'_>) -> Result<RawJson> {
        let policy = self.inner.retry.clone();
        self.trigger_action_with(req, &policy).await
    }

    /// Trigger once, without any retry (for a caller that retries durably, like the
    /// outbox worker).
    pub(crate) async fn trigger_action_once(&self, req: &ActionRequest<'_>) -> Result<RawJson> {
        self.trigger_action_with(req, &RetryConfig::none()).await
    }

    async fn trigger_action_with(
        &self,
        req: &ActionRequest<'_>,
        policy: &RetryConfig,
    ) -> Result<RawJson> {
        check_name("action name", req.action)?;
        let describe = req.describe();
        let answer = self
            .json_call(JsonCall {
                method: Method::POST,
                url: self.api_url("/action/trigger")?,
                headers: self.connection_headers(req.integration, req.connection)?,
                body: Some(trigger_body(req)?),
                describe: describe.clone(),
                timeout: Some(self.inner.action_timeout),
                policy,
                retry: not_carried_out,
            })
            .await?;
        raw_output(&describe, &answer.body)
    }

    /// Queue action `action` to run asynchronously (`X-Async: true`); Nango runs it up to
    /// `max_retries` more times if it fails (at most [`MAX_ASYNC_RETRIES`]). Returns the
    /// action's id; read its result with [`NangoClient::action_result`] or
    /// [`NangoClient::wait_action`].
    pub async fn trigger_action_async<I>(
        &self,
        integration: &str,
        connection: &str,
        action: &str,
        input: &I,
        max_retries: u8,
    ) -> Result<AsyncAction>
    where
        I: Serialize + ?Sized,
    {
        check_name("action name", action)?;
        if max_retries > MAX_ASYNC_RETRIES {
            return Err(Error::invalid(
                "max retries",
                format!("{max_retries}: Nango takes 0 to {MAX_ASYNC_RETRIES}"),
            ));
        }
        let input = to_raw(input)?;
        let req = ActionRequest {
            integration,
            connection,
            action,
            input: Some(&input),
        };
        let describe = format!("{} async", req.describe());
        let mut headers = self.connection_headers(integration, connection)?;
        headers.insert(
            HeaderName::from_static("x-async"),
            HeaderValue::from_static("true"),
        );
        headers.insert(
            HeaderName::from_static("x-max-retries"),
            HeaderValue::from(u16::from(max_retries)),
        );
        let answer = self
            .json_call(JsonCall {
                method: Method::POST,
                url: self.api_url("/action/trigger")?,
                headers,
                body: Some(trigger_body(&req)?),
                describe: describe.clone(),
                timeout: None,
                policy: &self.inner.retry,
                retry: not_carried_out,
            })
            .await?;
        if answer.status != 202 {
            return Err(Error::Invalid {
                what: "answer",
                detail: format!(
                    "{describe}: expected 202 Accepted for an async action, got {}",
                    answer.status
                ),
            });
        }
        from_body(&describe, &answer.body)
    }

    /// The output of async action `id`, typed, when it is done; `None` while it is
    /// queued, running or waiting for a retry (Nango answers 404 `not_found` for all of
    /// those, and for an id it does not know). A failed action is its error.
    pub async fn action_result<O: DeserializeOwned>(&self, id: &str) -> Result<Option<O>> {
        let describe = format!("GET /action/{id}");
        match self.action_result_raw(id).await? {
            Some(raw) => from_body(&describe, raw.as_str().as_bytes()).map(Some),
            None => Ok(None),
        }
    }

    /// [`NangoClient::action_result`] as JSON text.
    pub async fn action_result_raw(&self, id: &str) -> Result<Option<RawJson>> {
        check_action_id(id)?;
        let describe = format!("GET /action/{id}");
        let result = self
            .json_call(JsonCall {
                method: Method::GET,
                url: self.api_url(&format!("/action/{id}"))?,
                headers: self.auth_headers()?,
                body: None,
                describe: describe.clone(),
                timeout: None,
                policy: &self.inner.retry,
                retry: Error::is_retryable,
            })
            .await;
        match result {
            Ok(answer) => raw_output(&describe, &answer.body).map(Some),
            Err(e) if e.status() == Some(404) && e.nango_code() == Some("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Wait until async action `id` is done and return its output, typed: poll
    /// [`NangoClient::action_result`] with backoff, at once when `options.wakeups` is
    /// told that Nango sent the action's `async_action` webhook.
    ///
    /// Nango answers 404 for an action whose output is `null` as for one still running.
    /// When the webhook said the action is finished and Nango still answers 404 three
    /// times over about two seconds, the output is taken to be `null`. Without webhooks
    /// such an action waits until the timeout.
    pub async fn wait_action<O: DeserializeOwned>(
        &self,
        id: &str,
        options: &WaitOptions,
    ) -> Result<O> {
        let raw = self.wait_action_raw(id, options).await?;
        from_body(&format!("GET /action/{id}"), raw.as_str().as_bytes())
    }

    /// [`NangoClient::wait_action`] as JSON text.
    pub async fn wait_action_raw(&self, id: &str, options: &WaitOptions) -> Result<RawJson> {
        check_action_id(id)?;
        let notify = options.wakeups.as_ref().map(|w| (w, w.register(id)));
        let result = self.poll_action(id, options, notify.as_ref()).await;
        if let Some((w, _)) = &notify {
            w.unregister(id);
        }
        result
    }

    async fn poll_action(
        &self,
        id: &str,
        options: &WaitOptions,
        notify: Option<&(&ActionWakeups, Arc<Notify>)>,
    ) -> Result<RawJson> {
        let started = tokio::time::Instant::now();
        let deadline = started + options.timeout;
        let mut interval = options.initial_interval.max(Duration::from_millis(1));
        let mut missing_after_done = 0u32;
        loop {
            let done_before = notify.is_some_and(|(w, _)| w.is_done(id));
            if let Some(out) = self.action_result_raw(id).await? {
                return Ok(out);
            }
            if done_before {
                // Finished, yet 404: an output of `null` (see above), or a result not
                // readable yet.
                missing_after_done += 1;
                if missing_after_done >= 3 {
                    return Ok(RawJson::from_trusted("null"));
                }
                interval = Duration::from_millis(400 * u64::from(missing_after_done));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::ActionNotFinished {
                    id: id.to_string(),
                    waited_ms: (now - started).as_millis() as u64,
                });
            }
            let wait = jittered(interval).min(deadline - now);
            match notify {
                Some((_, n)) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = n.notified() => {}
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
            if missing_after_done == 0 {
                interval = (interval * 2).min(options.max_interval);
            }
        }
    }
}

/// `{"action_name": ..., "input": ...}` (`input` left out when there is none).
fn trigger_body(req: &ActionRequest<'_>) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Body<'a> {
        action_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<&'a RawValue>,
    }
    to_body(
        "action input",
        &Body {
            action_name: req.action,
            input: req.input,
        },
    )
}

/// `value` as JSON text.
fn to_raw<I: Serialize + ?Sized>(value: &I) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| Error::invalid("action input", e.to_string()))
}

/// An action's output as JSON text, checked.
fn raw_output(describe: &str, body: &[u8]) -> Result<RawJson> {
    let text = std::str::from_utf8(body).map_err(|_| Error::Invalid {
        what: "answer",
        detail: format!("{describe}: the output is not UTF-8"),
    })?;
    let text = text.trim();
    if text.is_empty() {
        // An action that returns nothing: express sends an empty body.
        return Ok(RawJson::from_trusted("null"));
    }
    RawJson::parse(text).map_err(|e| Error::Invalid {
        what: "answer",
        detail: format!("{describe}: the output is not JSON: {e}"),
    })
}

/// Between half and all of `d`.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.5 + 0.5 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_leave_out_a_missing_input() {
        let input = serde_json::value::to_raw_value(&serde_json::json!({"title": "é"})).unwrap();
        let mut req = ActionRequest {
            integration: "github",
            connection: "acme",
            action: "create-issue",
            input: Some(&input),
        };
        assert_eq!(
            String::from_utf8(trigger_body(&req).unwrap()).unwrap(),
            r#"{"action_name":"create-issue","input":{"title":"é"}}"#
        );
        req.input = None;
        assert_eq!(
            String::from_utf8(trigger_body(&req).unwrap()).unwrap(),
            r#"{"action_name":"create-issue"}"#
        );
    }

    #[test]
    fn outputs_are_checked_json() {
        assert_eq!(raw_output("r", b" [1,2] ").unwrap().as_str(), "[1,2]");
        assert_eq!(raw_output("r", b"").unwrap().as_str(), "null");
        assert!(raw_output("r", b"{nope").is_err());
    }

    #[test]
    fn wakeups_remember_a_bounded_number_of_ids() {
        let w = ActionWakeups::new();
        w.notify("a");
        assert!(w.is_done("a"));
        for i in 0..REMEMBERED {
            w.notify(&format!("x{i}"));
        }
        assert!(!w.is_done("a"), "the oldest id is forgotten");
        assert!(w.is_done(&format!("x{}", REMEMBERED - 1)));
    }

    #[test]
    fn action_ids_must_be_uuids() {
        assert!(check_action_id("5bd0c2d6-4e0b-4b53-8f0e-0f4d4d3c2a11").is_ok());
        assert!(check_action_id("trigger").is_err());
    }
}
