//! `status`: is my data healthy? Per stream, what the store holds, its runs, the lag,
//! Nango's last error and the warnings of `nango_sync::monitor::health`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nango_sync::monitor::SystemClock;
use nango_sync::monitor::health::{self, HealthConfig, HealthState, human_duration};
use nango_sync::{RunOutcome, RunSummary};

use crate::sync::open_sink;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Print JSON: an array with one entry per stream.
    #[arg(long)]
    json: bool,
    /// Warn `retention_prune_risk` after this fraction of Nango's 30-day prune window
    /// without a successful run.
    #[arg(long, default_value_t = HealthConfig::default().prune_fraction)]
    prune_fraction: f64,
    /// Warn `retention_delete_risk` after this fraction of Nango's 60-day delete window
    /// without a successful run.
    #[arg(long, default_value_t = HealthConfig::default().delete_fraction)]
    delete_fraction: f64,
}

pub async fn run(args: StatusArgs) -> Result<ExitCode> {
    for (name, f) in [
        ("--prune-fraction", args.prune_fraction),
        ("--delete-fraction", args.delete_fraction),
    ] {
        if !(0.0..=1.0).contains(&f) {
            anyhow::bail!("{name} must be between 0 and 1, not {f}");
        }
    }
    let config = HealthConfig {
        prune_fraction: args.prune_fraction,
        delete_fraction: args.delete_fraction,
        ..HealthConfig::default()
    };
    let sink = open_sink(&args.sink).await?;
    let streams = health::check(&*sink, None, &config, &SystemClock).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&streams)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if streams.is_empty() {
        writeln!(out, "no streams in {}", nango_sync::redact_url(&args.sink))?;
    }
    for h in &streams {
        let s = &h.status;
        let state = match h.health {
            HealthState::Ok => "ok",
            HealthState::Degraded => "DEGRADED",
        };
        writeln!(out, "{}  [{state}]", s.stream)?;
        writeln!(
            out,
            "  records:      {} live, {} deleted",
            s.live_records, s.deleted_records
        )?;
        let cursor = match &s.state.cursor {
            Some(c) if c.as_str().len() > 60 => {
                format!("{}...", &c.as_str()[..c.as_str().floor_char_boundary(60)])
            }
            Some(c) => c.to_string(),
            None => "(none: the next run is a full read)".to_string(),
        };
        writeln!(out, "  cursor:       {cursor}")?;
        if let Some(g) = s.state.full_read {
            writeln!(
                out,
                "  full read:    generation {g} in progress (the next run resumes it)"
            )?;
        }
        let t = &s.totals;
        writeln!(
            out,
            "  totals:       {} added, {} updated, {} deleted, {} unchanged, {} stale",
            t.added, t.updated, t.deleted, t.unchanged, t.stale
        )?;
        match &s.last_run {
            Some(run) => writeln!(out, "  last run:     {}", describe_run(run))?,
            None => writeln!(out, "  last run:     never")?,
        }
        match (&s.last_success, h.lag_seconds) {
            (Some(run), Some(lag)) => writeln!(
                out,
                "  last success: {} (lag {})",
                run.finished_at,
                human_duration(std::time::Duration::from_secs(lag))
            )?,
            _ => writeln!(out, "  last success: never")?,
        }
        if let Some(e) = &s.upstream_error {
            writeln!(out, "  upstream error: {e}")?;
        }
        for w in &h.warnings {
            writeln!(out, "  warning [{}]: {}", w.code, w.message)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A run on one line: start, duration, full re-read, outcome and counts or error.
pub fn describe_run(run: &RunSummary) -> String {
    let secs = (run.finished_at.as_micros() - run.started_at.as_micros()) as f64 / 1e6;
    let what = match (run.outcome, &run.error) {
        (RunOutcome::Ok, _) => format!(
            "ok, {} pages, {} added, {} updated, {} deleted",
            run.pages, run.counts.added, run.counts.updated, run.counts.deleted
        ),
        (RunOutcome::Interrupted, _) => format!("interrupted after {} pages", run.pages),
        (RunOutcome::Error, e) => format!("FAILED: {}", e.as_deref().unwrap_or("")),
    };
    let full = match run.full_reason {
        Some(reason) => format!(", full: {reason}"),
        None if run.full => ", full".to_string(),
        None => String::new(),
    };
    let by = if run.instance.is_empty() {
        String::new()
    } else {
        format!(" on {}", run.instance)
    };
    format!("{} ({secs:.2} s{full}{by}) {what}", run.started_at)
}
