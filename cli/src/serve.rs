//! `serve`: the always-on service. Webhooks on `POST /webhook`, health on `GET /health`
//! (per stream: ok or degraded with its warnings; 503 when the store cannot be read),
//! Prometheus metrics on `GET /metrics`, delivery of the store's outbox (`--outbox-*`),
//! a poll per stream as a safety net, SIGINT/SIGTERM for a graceful stop.
//!
//! Streams come from the command line (`--integration --connection --model ...`) or a
//! TOML file (`--config`):
//!
//! ```toml
//! poll_interval = "5m"          # "500ms", "30s", "5m", "1h" or seconds
//! poll_jitter = 0.1
//! max_concurrent_runs = 4
//! rate_limit_per_minute = 200   # an upper bound; default: the limit Nango states
//! page_size = 1000
//! allow_legacy_signature = false
//! body_limit = 1048576
//! full_every = "7d"             # a full re-read with sweep when the last is older
//! reconcile = "warn"            # or "repair": compare live record counts with Nango's
//! reconcile_every = "1h"
//! run_history = 100             # runs kept per stream
//!
//! [[signing_keys]]              # current key first, then the previous one
//! key_env = "NANGO_WEBHOOK_KEY"
//! [[signing_keys]]
//! key_file = "secrets/previous-webhook-key"   # relative to this file
//!
//! [[streams]]
//! integration = "github"
//! connection = "acme"
//! models = ["Ticket", "User"]
//! # variant = "eu"
//!
//! [[discover]]                  # new connections of these models start syncing by themselves
//! integration = "github"
//! models = ["Ticket"]
//! ```
//!
//! Signing keys are never written to logs or output; a config file cannot hold a key
//! itself, only where to find it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use nango_sync::client::RateBudget;
use nango_sync::engine::scheduler::{DiscoveryRule, Scheduler, SchedulerConfig};
use nango_sync::engine::{CountCheckConfig, EngineConfig};
use nango_sync::webhook::{DEFAULT_BODY_LIMIT, WebhookReceiver, WebhookVerifier, router};
use nango_sync::{Engine, NangoClient, SecretKey, StreamKey};
use serde::Deserialize;
use tracing::{info, warn};

use crate::dev_server::shutdown_signal;
use crate::sync::{NangoArgs, Reconcile};

/// Nango's request limit per account on the free plan.
const DEFAULT_RATE_LIMIT: u32 = 200;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// A webhook signing key; repeat for the previous key during a rotation (prefer the
    /// environment variable, comma-separated: arguments are visible to other users).
    #[arg(
        long = "webhook-key",
        env = "NANGO_WEBHOOK_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    webhook_keys: Vec<String>,
    /// Poll every stream this often as a safety net for lost webhooks ("30s", "5m",
    /// "500ms", "1h"; default 5m; "0" disables polling).
    #[arg(long, value_parser = parse_duration)]
    poll_interval: Option<Duration>,
    /// The integration id (Provider-Config-Key) of the streams to serve.
    #[arg(long, conflicts_with = "config")]
    integration: Option<String>,
    /// The connection id.
    #[arg(long, conflicts_with = "config")]
    connection: Option<String>,
    /// A model; repeat for several models of the connection.
    #[arg(long = "model", conflicts_with = "config")]
    models: Vec<String>,
    /// The sync variant (default: none).
    #[arg(long, conflicts_with = "config")]
    variant: Option<String>,
    /// A TOML file with streams, discovery rules and settings (see `serve --help`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Register new connections announced by sync webhooks: `INTEGRATION` (every model)
    /// or `INTEGRATION:Model,Model`; repeatable.
    #[arg(long = "discover")]
    discover: Vec<String>,
    #[command(flatten)]
    nango: NangoArgs,
    /// Records per page (1 to 10000).
    #[arg(long)]
    page_size: Option<u32>,
    /// Runs at the same time over all streams.
    #[arg(long)]
    max_concurrent_runs: Option<usize>,
    /// Requests per minute to Nango, shared by every stream (Nango's limit per account);
    /// an upper bound of the limit Nango states on its answers. Default: the limit Nango
    /// states (200, the free plan's, until its first answer).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Also accept the deprecated X-Nango-Signature header.
    #[arg(long)]
    allow_legacy_signature: bool,
    /// Largest webhook body accepted, in bytes (larger ones are answered 413).
    #[arg(long)]
    body_limit: Option<usize>,
    /// Make a stream's run a full re-read with sweep when its last full re-read is
    /// older than this ("7d", "12h"): catches records Nango removed without any event.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    full_every: Option<Duration>,
    /// Compare each stream's live record count with Nango's after successful runs:
    /// `warn` (a `count_mismatch` warning in /health and `status`) or `repair` (also a
    /// full re-read with sweep on a mismatch). The key needs environment:syncs:read.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "warn", value_name = "MODE")]
    reconcile: Option<Reconcile>,
    /// At most one count check per stream this often (default 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    reconcile_every: Option<Duration>,
    /// Runs kept per stream in the store's run history (default 100).
    #[arg(long)]
    run_history: Option<usize>,
    #[command(flatten)]
    outbox: crate::outbox::WorkerArgs,
    #[command(flatten)]
    instance: crate::serve_cluster::InstanceArgs,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    poll_interval: Option<DurationValue>,
    poll_jitter: Option<f64>,
    max_concurrent_runs: Option<usize>,
    rate_limit_per_minute: Option<u32>,
    page_size: Option<u32>,
    allow_legacy_signature: Option<bool>,
    body_limit: Option<usize>,
    full_every: Option<DurationValue>,
    reconcile: Option<Reconcile>,
    reconcile_every: Option<DurationValue>,
    run_history: Option<usize>,
    #[serde(default)]
    signing_keys: Vec<KeySource>,
    #[serde(default)]
    streams: Vec<StreamEntry>,
    #[serde(default)]
    discover: Vec<DiscoverEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySource {
    key_env: Option<String>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamEntry {
    integration: String,
    connection: String,
    models: Vec<String>,
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverEntry {
    integration: String,
    #[serde(default)]
    models: Vec<String>,
}

/// Everything `serve` needs, from the arguments and the config file.
struct Plan {
    streams: Vec<StreamKey>,
    discovery: Vec<DiscoveryRule>,
    keys: Vec<SecretKey>,
    scheduler: SchedulerConfig,
    rate_limit: u32,
    /// Whether the limit was configured (an upper bound) or is the starting guess
    /// until Nango states the account's limit.
    rate_limit_configured: bool,
    page_size: u32,
    allow_legacy: bool,
    body_limit: usize,
    reconcile: Option<Reconcile>,
    reconcile_every: Duration,
    run_history: usize,
}

/// Parse "500ms", "30s", "5m", "1h", "2d" or a number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 500ms"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn load_key(source: &KeySource, base: &Path) -> Result<SecretKey> {
    let key = match (&source.key_env, &source.key_file) {
        (Some(var), None) => std::env::var(var)
            .with_context(|| format!("signing key: the environment variable {var} is not set"))?,
        (None, Some(file)) => {
            let path = base.join(file);
            std::fs::read_to_string(&path).with_context(|| {
                format!("signing key: cannot read the key file {}", path.display())
            })?
        }
        _ => bail!("each [[signing_keys]] entry needs exactly one of key_env or key_file"),
    };
    let key = SecretKey::new(key);
    if key.is_empty() {
        bail!("a signing key is empty");
    }
    Ok(key)
}

fn stream(integration: &str, connection: &str, model: &str, variant: Option<&str>) -> StreamKey {
    let key = StreamKey::new(integration, connection, model);
    match variant {
        Some(v) if !v.is_empty() => key.with_variant(v),
        _ => key,
    }
}

fn plan(args: &ServeArgs) -> Result<Plan> {
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let base = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let mut streams = Vec::new();
    match (&args.integration, &args.connection) {
        (Some(i), Some(c)) => {
            if args.models.is_empty() {
                bail!("--integration and --connection need at least one --model");
            }
            for m in &args.models {
                streams.push(stream(i, c, m, args.variant.as_deref()));
            }
        }
        (None, None) if args.models.is_empty() => {}
        _ => bail!("give --integration, --connection and --model together"),
    }
    for e in &config.streams {
        if e.models.is_empty() {
            bail!(
                "config: the stream of {}/{} lists no models",
                e.integration,
                e.connection
            );
        }
        for m in &e.models {
            streams.push(stream(
                &e.integration,
                &e.connection,
                m,
                e.variant.as_deref(),
            ));
        }
    }
    for s in &streams {
        s.validate()?;
    }

    let mut discovery: Vec<DiscoveryRule> = config
        .discover
        .iter()
        .map(|d| DiscoveryRule::new(d.integration.clone(), d.models.clone()))
        .collect();
    for d in &args.discover {
        let (integration, models) = match d.split_once(':') {
            Some((i, m)) => (
                i,
                m.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect(),
            ),
            None => (d.as_str(), Vec::new()),
        };
        if integration.trim().is_empty() {
            bail!("--discover {d:?}: the integration is empty");
        }
        discovery.push(DiscoveryRule::new(integration.trim(), models));
    }
    if streams.is_empty() && discovery.is_empty() && args.outbox.outbox_concurrency == 0 {
        bail!(
            "nothing to serve: give --integration, --connection and --model, or --config FILE with [[streams]] or [[discover]] entries, or let it deliver the outbox (--outbox-concurrency above 0)"
        );
    }

    let mut keys: Vec<SecretKey> = args
        .webhook_keys
        .iter()
        .map(SecretKey::new)
        .filter(|k| !k.is_empty())
        .collect();
    for source in &config.signing_keys {
        keys.push(load_key(source, &base)?);
    }

    let poll_interval = match (args.poll_interval, &config.poll_interval) {
        (Some(d), _) => Some(d),
        (None, Some(DurationValue::Seconds(s))) => Some(Duration::from_secs(*s)),
        (None, Some(DurationValue::Text(t))) => {
            Some(parse_duration(t).map_err(|e| anyhow::anyhow!("config poll_interval: {e}"))?)
        }
        (None, None) => Some(nango_sync::engine::scheduler::DEFAULT_POLL_INTERVAL),
    }
    .filter(|d| !d.is_zero());
    let duration = |what: &str, v: &Option<DurationValue>| -> Result<Option<Duration>> {
        match v {
            None => Ok(None),
            Some(DurationValue::Seconds(s)) => Ok(Some(Duration::from_secs(*s))),
            Some(DurationValue::Text(t)) => parse_duration(t)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("config {what}: {e}")),
        }
    };
    let full_every = match args.full_every {
        Some(d) => Some(d),
        None => duration("full_every", &config.full_every)?,
    }
    .filter(|d| !d.is_zero());
    let reconcile_every = match args.reconcile_every {
        Some(d) => d,
        None => duration("reconcile_every", &config.reconcile_every)?
            .unwrap_or(Duration::from_secs(3600)),
    };
    let defaults = SchedulerConfig::default();
    let jitter = config.poll_jitter.unwrap_or(defaults.poll_jitter);
    if !(0.0..=1.0).contains(&jitter) {
        bail!("config poll_jitter must be between 0 and 1");
    }
    let scheduler = SchedulerConfig {
        poll_interval,
        poll_jitter: jitter,
        max_concurrent_runs: args
            .max_concurrent_runs
            .or(config.max_concurrent_runs)
            .unwrap_or(defaults.max_concurrent_runs)
            .max(1),
        full_every,
        ..defaults
    };
    Ok(Plan {
        streams,
        discovery,
        keys,
        scheduler,
        rate_limit: args
            .rate_limit
            .or(config.rate_limit_per_minute)
            .unwrap_or(DEFAULT_RATE_LIMIT),
        rate_limit_configured: args.rate_limit.or(config.rate_limit_per_minute).is_some(),
        page_size: args
            .page_size
            .or(config.page_size)
            .unwrap_or(nango_sync::engine::DEFAULT_PAGE_SIZE),
        allow_legacy: args.allow_legacy_signature || config.allow_legacy_signature == Some(true),
        body_limit: args
            .body_limit
            .or(config.body_limit)
            .unwrap_or(DEFAULT_BODY_LIMIT),
        reconcile: args.reconcile.or(config.reconcile),
        reconcile_every,
        run_history: args
            .run_history
            .or(config.run_history)
            .unwrap_or(nango_sync::sink::DEFAULT_RUN_HISTORY),
    })
}

#[derive(Clone)]
struct AppState {
    scheduler: Scheduler,
    receiver: WebhookReceiver,
    monitor: crate::serve_monitor::Monitor,
    outbox: Option<nango_sync::engine::outbox::OutboxWorker>,
    instance: Arc<crate::serve_cluster::Instance>,
}

async fn health(State(app): State<AppState>) -> axum::response::Response {
    let checked = match app.monitor.health(&app.scheduler).await {
        Ok(checked) => checked,
        Err(error) => {
            let body = serde_json::json!({
                "status": "unavailable",
                "error": format!("the store cannot be read: {error}"),
            });
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    let mut degraded = false;
    let streams: Vec<serde_json::Value> = app
        .scheduler
        .all_stats()
        .into_iter()
        .map(|(key, st)| {
            let state = if st.running {
                "running"
            } else if st.pending {
                "pending"
            } else if st.last_error.is_some() {
                "error"
            } else {
                "idle"
            };
            let h = checked.iter().find(|h| h.status.stream == key);
            degraded |= h.is_some_and(|h| !h.warnings.is_empty());
            serde_json::json!({
                "integration": key.integration,
                "connection": key.connection,
                "model": key.model,
                "variant": key.variant,
                "state": state,
                "health": h.map(|h| h.health),
                "warnings": h.map(|h| h.warnings.clone()).unwrap_or_default(),
                "lag_seconds": h.and_then(|h| h.lag_seconds),
                "last_success_at": h.and_then(|h| h.last_success_at).map(|t| t.to_string()),
                "live_records": h.map(|h| h.status.live_records),
                "triggers": st.triggers,
                "triggers_coalesced": st.triggers_coalesced,
                "polls": st.polls,
                "runs_started": st.runs_started,
                "runs_finished": st.runs_finished,
                "runs_failed": st.runs_failed,
                "last_run_finished_at": st.last_run_finished_at.map(|t| t.to_string()),
                "last_error": st.last_error,
                "runs_here": app.scheduler.runs_here(&key),
            })
        })
        .collect();
    let w = app.receiver.stats();
    let status = if app.scheduler.is_shutting_down() {
        "stopping"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    let outbox = crate::outbox::health(&app.scheduler, app.outbox.as_ref()).await;
    let body = serde_json::json!({
        "status": status,
        "streams": streams,
        "webhooks": {
            "accepted": w.accepted,
            "unauthorized": w.unauthorized,
            "malformed": w.malformed,
            "too_large": w.too_large,
        },
        "outbox": outbox,
        "instance": app.instance.health(),
    });
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    app.monitor.metrics(&app.scheduler).await
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let plan = plan(&args)?;
    let key = args.nango.secret_key.clone().filter(|k| !k.trim().is_empty()).context(
        "no secret key: set NANGO_SECRET_KEY or pass --secret-key (the environment's secret key from Nango's dashboard)",
    )?;
    // A configured limit is an upper bound; otherwise the free plan's limit until
    // Nango states the account's own on its answers.
    let budget = Arc::new(if plan.rate_limit_configured {
        RateBudget::per_minute(plan.rate_limit)
    } else {
        RateBudget::learning(plan.rate_limit)
    });
    let client = NangoClient::builder()
        .host(&args.nango.host)
        .secret_key(SecretKey::new(key))
        .rate_budget(budget.clone())
        .build()?;
    let mut instance = crate::serve_cluster::open(&args.sink, &args.instance).await?;
    let sink = instance.sink.clone();
    instance.share_budget(&budget, &args.nango.host);
    let monitor = crate::serve_monitor::Monitor::install()?;
    let engine = Engine::with_config(
        client,
        sink,
        EngineConfig {
            page_size: plan.page_size,
            run_history: plan.run_history,
            count_check: CountCheckConfig {
                mode: Reconcile::mode(plan.reconcile),
                min_interval: plan.reconcile_every,
                ..CountCheckConfig::default()
            },
            instance: instance.id.clone(),
            ..EngineConfig::default()
        },
    );
    let scheduler = Scheduler::new(engine, plan.scheduler.clone());
    for rule in &plan.discovery {
        scheduler.add_discovery_rule(rule.clone());
    }
    instance.join(&scheduler).await?;
    let instance = Arc::new(instance);

    let verifier = match plan.keys.split_first() {
        Some((first, rest)) => rest
            .iter()
            .fold(WebhookVerifier::new(first.clone()), |v, k| {
                v.with_key(k.clone())
            })
            .allow_legacy_signature(plan.allow_legacy),
        None => {
            warn!(
                "no webhook signing key (--webhook-key, NANGO_WEBHOOK_KEY or [[signing_keys]]): every webhook is refused with 401, streams are only polled"
            );
            // A random key nobody knows: nothing verifies.
            WebhookVerifier::new(uuid::Uuid::new_v4().to_string())
        }
    };
    let receiver =
        WebhookReceiver::with_body_limit(verifier, Arc::new(scheduler.clone()), plan.body_limit);
    let outbox = crate::outbox::start_worker(&args.outbox, &scheduler);
    let state = AppState {
        scheduler: scheduler.clone(),
        receiver: receiver.clone(),
        monitor,
        outbox: outbox.as_ref().map(|(worker, _)| worker.clone()),
        instance: instance.clone(),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(router(receiver));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    for s in &plan.streams {
        scheduler.register(s.clone());
    }
    instance.refresh().await;
    info!(
        listen = %addr,
        streams = plan.streams.len(),
        discovery_rules = plan.discovery.len(),
        signing_keys = plan.keys.len(),
        poll_interval_ms = plan.scheduler.poll_interval.map(|d| d.as_millis() as u64),
        max_concurrent_runs = plan.scheduler.max_concurrent_runs,
        rate_limit_per_minute = plan.rate_limit,
        instance = %instance.id,
        "serving"
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listening on http://{addr} (webhooks: POST /webhook, health: GET /health, metrics: GET /metrics)"
        )?;
        out.flush()?;
    }

    let stopped = scheduler.stopped();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .into_future(),
    );
    shutdown_signal().await;
    info!("shutdown requested: finishing the commits in flight");
    if let Some((worker, task)) = outbox {
        worker.stop();
        if let Err(e) = task.await {
            warn!(error = %e, "the outbox worker task failed");
        }
    }
    scheduler.shutdown().await;
    instance.leave().await;
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "the HTTP server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "the HTTP server task failed"),
        Err(_) => warn!("the HTTP server did not stop within 10 s"),
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn config_file_parses_and_refuses_inline_keys() {
        let c: ConfigFile = toml::from_str(
            r#"
            poll_interval = "2s"
            max_concurrent_runs = 2
            [[signing_keys]]
            key_env = "X"
            [[streams]]
            integration = "github"
            connection = "acme"
            models = ["Ticket"]
            [[discover]]
            integration = "github"
            "#,
        )
        .unwrap();
        assert_eq!(c.streams[0].models, ["Ticket"]);
        assert!(c.discover[0].models.is_empty());
        assert!(toml::from_str::<ConfigFile>("[[signing_keys]]\nkey = \"secret\"").is_err());
    }
}
