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
