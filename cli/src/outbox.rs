//! `outbox`: list the items of a store's outbox.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use nango_sync::sink::outbox::{OutboxItem, OutboxQuery, OutboxState};

use crate::sync::open_sink;

/// Arguments of `outbox`.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Only items in this state; repeatable.
    #[arg(long = "state", value_enum)]
    states: Vec<StateArg>,
    /// Print a JSON array: `id`, `integration`, `connection`, `name`, `state`,
    /// `attempts`, `output`, `error` and the rest of each item.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Pending,
    Running,
    Done,
    Failed,
}

impl From<StateArg> for OutboxState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => OutboxState::Pending,
            StateArg::Running => OutboxState::Running,
            StateArg::Done => OutboxState::Done,
            StateArg::Failed => OutboxState::Failed,
        }
    }
}

pub async fn run(args: OutboxArgs) -> Result<ExitCode> {
    let sink = open_sink(&args.sink).await?;
    let mut query = OutboxQuery::first(1000);
    for s in &args.states {
        query = query.state((*s).into());
    }
    let mut items = Vec::new();
    loop {
        let page = sink.outbox_list(&query).await?;
        let full = page.len() == query.limit;
        if let Some(last) = page.last() {
            query = query.clone().after(last.id);
        }
        items.extend(page);
        if !full {
            break;
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json: Vec<serde_json::Value> = items.iter().map(OutboxItem::to_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        writeln!(out, "the outbox is empty")?;
    }
    for item in &items {
        writeln!(out, "{}", line(item))?;
    }
    let counts = sink.outbox_counts().await?;
    if !items.is_empty() {
        writeln!(
            out,
            "{} pending, {} running, {} done, {} failed",
            counts.pending, counts.running, counts.done, counts.failed
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One item as a line: id, state, attempts, action, and its output or error.
fn line(item: &OutboxItem) -> String {
    let detail = match (item.state, &item.output, &item.error) {
        (OutboxState::Done, Some(output), _) => format!("output {}", short(output.as_str())),
        (_, _, Some(error)) => format!("error {}", short(&error.to_string())),
        _ => String::new(),
    };
    format!(
        "{:>6} {:<7} {}/{} {}/{} {} {}",
        item.id,
        item.state,
        item.attempts,
        item.max_attempts,
        item.integration,
        item.connection,
        item.action,
        detail
    )
    .trim_end()
    .to_string()
}

fn short(text: &str) -> String {
    if text.len() <= 120 {
        text.to_string()
    } else {
        format!("{}...", &text[..text.floor_char_boundary(120)])
    }
}

/// How `serve` delivers its store's outbox.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Outbox deliveries at the same time (1 delivers in enqueue order; 0 does not
    /// deliver the outbox).
    #[arg(long, default_value_t = 4)]
    pub outbox_concurrency: usize,
    /// How long a delivery holds its item without an extension: after a crash, the
    /// items that were running are delivered again this long after ("60s").
    #[arg(long, value_parser = crate::serve::parse_duration)]
    pub outbox_lease: Option<std::time::Duration>,
    /// The wait after a failed delivery attempt, doubled after each further one ("2s").
    #[arg(long, value_parser = crate::serve::parse_duration)]
    pub outbox_backoff: Option<std::time::Duration>,
}

/// Start delivering the outbox of `scheduler`'s store (its engine's client, so the
/// shared rate budget covers the deliveries; done items' streams are synced through the
/// scheduler). `None` when `--outbox-concurrency 0`.
pub fn start_worker(
    args: &WorkerArgs,
    scheduler: &nango_sync::engine::scheduler::Scheduler,
) -> Option<(
    nango_sync::engine::outbox::OutboxWorker,
    tokio::task::JoinHandle<()>,
)> {
    use nango_sync::engine::outbox::{OutboxConfig, OutboxWorker};
    if args.outbox_concurrency == 0 {
        return None;
    }
    let mut config = OutboxConfig {
        concurrency: args.outbox_concurrency,
        ..OutboxConfig::default()
    };
    if let Some(lease) = args.outbox_lease {
        config.lease = lease.max(std::time::Duration::from_millis(100));
    }
    if let Some(b) = args.outbox_backoff {
        config.initial_backoff = b;
        config.max_backoff = config.max_backoff.max(b);
    }
    let worker = OutboxWorker::new(scheduler.engine().clone(), config)
        .with_sync_trigger(std::sync::Arc::new(scheduler.clone()));
    let task = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.run().await })
    };
    Some((worker, task))
}

/// The outbox part of `serve`'s `/health`: the items per state (`null` when the store
/// cannot be read) and what the worker did (`null` when it does not run).
pub async fn health(
    scheduler: &nango_sync::engine::scheduler::Scheduler,
    worker: Option<&nango_sync::engine::outbox::OutboxWorker>,
) -> serde_json::Value {
    let counts = scheduler.engine().sink().outbox_counts().await.ok();
    serde_json::json!({
        "pending": counts.map(|c| c.pending),
        "running": counts.map(|c| c.running),
        "done": counts.map(|c| c.done),
        "failed": counts.map(|c| c.failed),
        "worker": worker.map(|w| serde_json::to_value(w.stats()).unwrap_or_default()),
    })
}
