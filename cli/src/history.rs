//! `history`: the runs a store recorded, newest first, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use nango_sync::StreamKey;
use nango_sync::sink::{HistoryQuery, RunEntry};
use serde_json::json;

use crate::sync::open_sink;

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Only the runs of this stream: its integration id (with --connection and --model).
    #[arg(long)]
    integration: Option<String>,
    /// The stream's connection id.
    #[arg(long)]
    connection: Option<String>,
    /// The stream's model.
    #[arg(long)]
    model: Option<String>,
    /// The stream's sync variant (default: none).
    #[arg(long)]
    variant: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON: an array of runs, newest first.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: HistoryArgs) -> Result<ExitCode> {
    let stream = match (&args.integration, &args.connection, &args.model) {
        (Some(i), Some(c), Some(m)) => Some(
            StreamKey::new(i.as_str(), c.as_str(), m.as_str())
                .with_variant(args.variant.clone().unwrap_or_default()),
        ),
        (None, None, None) if args.variant.is_none() => None,
        _ => bail!(
            "give --integration, --connection and --model together (or none of them for every stream)"
        ),
    };
    let sink = open_sink(&args.sink).await?;
    let runs = sink
        .run_history(&HistoryQuery {
            stream: stream.clone(),
            limit: args.limit,
        })
        .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let list: Vec<_> = runs.iter().map(entry_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        writeln!(out, "no runs recorded")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<[String; 11]> = vec![[
        "STARTED (UTC)".to_string(),
        "SECONDS".into(),
        "STREAM".into(),
        "INSTANCE".into(),
        "OUTCOME".into(),
        "PAGES".into(),
        "ADDED".into(),
        "UPDATED".into(),
        "DELETED".into(),
        "FULL".into(),
        "ERROR".into(),
    ]];
    for e in &runs {
        let r = &e.run;
        let secs = (r.finished_at.as_micros() - r.started_at.as_micros()) as f64 / 1e6;
        let mut error = r.error.clone().unwrap_or_default();
        if error.chars().count() > 80 {
            error = format!("{}...", error.chars().take(80).collect::<String>());
        }
        rows.push([
            r.started_at.to_utc_z(),
            format!("{secs:.2}"),
            e.stream.to_string(),
            r.instance.clone(),
            r.outcome.to_string(),
            r.pages.to_string(),
            r.counts.added.to_string(),
            r.counts.updated.to_string(),
            r.counts.deleted.to_string(),
            match r.full_reason {
                Some(reason) => reason.to_string(),
                None if r.full => "yes".into(),
                None => "-".into(),
            },
            error,
        ]);
    }
    // The instance column only when runs name their instance (several instances).
    let instances = runs.iter().any(|e| !e.run.instance.is_empty());
    let widths: Vec<usize> = (0..11)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if stream.is_some() && c == 2 || !instances && c == 3 {
                continue;
            }
            if c == 10 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A run as `history --json` prints it (the command-line contract).
fn entry_json(e: &RunEntry) -> serde_json::Value {
    let r = &e.run;
    json!({
        "stream": e.stream,
        "id": r.id,
        "instance": r.instance,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "outcome": r.outcome,
        "error": r.error,
        "pages": r.pages,
        "added": r.counts.added,
        "updated": r.counts.updated,
        "deleted": r.counts.deleted,
        "unchanged": r.counts.unchanged,
        "stale": r.counts.stale,
        "full": r.full,
        "full_reason": r.full_reason,
        "count_check": r.count_check,
    })
}
