//! `sync`, `export` and `status`: the commands that work on a store.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use nango_sync::engine::EngineConfig;
use nango_sync::sink::{self, SharedSink};
use nango_sync::{Engine, NangoClient, SecretKey, StreamKey, SyncOptions, Timestamp};

use crate::output::{self, Reporter};

/// Where Nango is and how to authenticate.
#[derive(Debug, Args)]
pub struct NangoArgs {
    /// Nango's API base URL.
    #[arg(long, env = "NANGO_HOST", default_value = nango_sync::client::DEFAULT_HOST)]
    pub host: String,
    /// The environment's secret key (prefer the environment variable: arguments are
    /// visible to other users of the machine).
    #[arg(long, env = "NANGO_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

impl NangoArgs {
    pub fn client(&self) -> Result<NangoClient> {
        let key = self.secret_key.clone().filter(|k| !k.trim().is_empty()).context(
            "no secret key: set NANGO_SECRET_KEY or pass --secret-key (the environment's secret key from Nango's dashboard)",
        )?;
        Ok(NangoClient::builder()
            .host(&self.host)
            .secret_key(SecretKey::new(key))
            .build()?)
    }
}

/// Arguments of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// The integration id (Provider-Config-Key).
    #[arg(long)]
    integration: String,
    /// The connection id.
    #[arg(long)]
    connection: String,
    /// A model to sync; repeat for several models of the connection.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// The sync variant (default: none).
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    nango: NangoArgs,
    /// Records per page (1 to 10000).
    #[arg(long, default_value_t = nango_sync::engine::DEFAULT_PAGE_SIZE)]
    page_size: u32,
    /// On a first sync, start at records modified at or after this RFC 3339 instant.
    #[arg(long)]
    modified_after: Option<String>,
    /// Re-read everything and mark deleted the records Nango no longer has.
    #[arg(long)]
    full: bool,
    /// Overlap window in seconds (off by default): each incremental run also re-reads
    /// the records modified in this many seconds before the stream's high-water mark,
    /// for writes Nango commits late. The cursor never moves backwards.
    #[arg(long, value_name = "SECONDS")]
    overlap: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn stream_keys(
    integration: &str,
    connection: &str,
    models: &[String],
    variant: Option<&str>,
) -> Vec<StreamKey> {
    models
        .iter()
        .map(|m| {
            StreamKey::new(integration, connection, m.as_str())
                .with_variant(variant.unwrap_or_default())
        })
        .collect()
}

pub async fn sync(args: SyncArgs) -> Result<ExitCode> {
    let streams = stream_keys(
        &args.integration,
        &args.connection,
        &args.models,
        args.variant.as_deref(),
    );
    for s in &streams {
        s.validate()?;
    }
    let modified_after = args
        .modified_after
        .as_deref()
        .map(Timestamp::parse)
        .transpose()
        .context("--modified-after")?;
    let client = args.nango.client()?;
    let sink = open_sink(&args.sink).await?;
    let engine = Engine::with_config(
        client,
        sink,
        EngineConfig {
            page_size: args.page_size,
            overlap: args.overlap.map(std::time::Duration::from_secs),
            ..EngineConfig::default()
        },
    );
    let reporter = Reporter::new(&streams);
    let options = SyncOptions {
        full: args.full,
        modified_after,
        page_size: Some(args.page_size),
        progress: Some(reporter.callback()),
    };
    let started = Instant::now();
    let results = engine.sync_all(&streams, &options).await;
    reporter.finish();
    let mut failed = 0;
    let mut reports = Vec::new();
    for (stream, result) in streams.iter().zip(results) {
        match result {
            Ok(report) => reports.push(report),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}{}", repair_hint(&e, &args.sink));
                let _ = stream;
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let json: Vec<_> = reports.iter().map(output::report_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        for r in &reports {
            writeln!(out, "{}", output::report_line(r))?;
        }
        if reports.len() > 1 {
            let total: u64 = reports.iter().map(|r| r.counts.total()).sum();
            writeln!(
                out,
                "total: {} records in {:.2} s ({})",
                total,
                started.elapsed().as_secs_f64(),
                output::rate(total, started.elapsed())
            )?;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn open_sink(url: &str) -> Result<SharedSink> {
    sink::open(url).await.map_err(|e| {
        let shown = nango_sync::redact_url(url);
        if e.is_damaged_store() {
            // One line, the cause first and what to do last.
            anyhow::anyhow!("cannot open the store {shown}: {e}{}", repair_hint(&e, url))
        } else {
            anyhow::Error::new(e).context(format!("cannot open the store {shown}"))
        }
    })
}

/// For a damaged store: what to do about it (empty for other errors).
pub fn repair_hint(e: &nango_sync::Error, url: &str) -> String {
    if e.is_damaged_store() {
        format!(
            "; to rebuild it from Nango, run `nango-sync repair --sink {}` (the damaged store is moved aside, not deleted)",
            nango_sync::redact_url(url)
        )
    } else {
        String::new()
    }
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// The integration id (Provider-Config-Key).
    #[arg(long)]
    integration: String,
    /// The connection id.
    #[arg(long)]
    connection: String,
    /// The model.
    #[arg(long)]
    model: String,
    /// The sync variant (default: none).
    #[arg(long)]
    variant: Option<String>,
    /// Also write deleted records (tombstones).
    #[arg(long)]
    include_deleted: bool,
}

pub async fn export(args: ExportArgs) -> Result<ExitCode> {
    let sink = open_sink(&args.sink).await?;
    let stream = stream_keys(
        &args.integration,
        &args.connection,
        std::slice::from_ref(&args.model),
        args.variant.as_deref(),
    )
    .remove(0);
    let mut query = sink::ListQuery {
        include_deleted: args.include_deleted,
        ..sink::ListQuery::first(2000)
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    loop {
        let batch = sink.list(&stream, &query).await?;
        for r in &batch {
            if let Err(e) = writeln!(out, "{}", r.to_export_line()) {
                return broken_pipe_ok(e);
            }
        }
        if batch.len() < query.limit {
            break;
        }
        query.after_id = batch.last().map(|r| r.id.clone());
    }
    if let Err(e) = out.flush() {
        return broken_pipe_ok(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// `export | head` closes the pipe early: that is not an error.
fn broken_pipe_ok(e: std::io::Error) -> Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(e).context("cannot write to stdout")
    }
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn status(args: StatusArgs) -> Result<ExitCode> {
    let sink = open_sink(&args.sink).await?;
    let streams = sink.streams().await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&streams)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if streams.is_empty() {
        writeln!(out, "no streams in {}", nango_sync::redact_url(&args.sink))?;
    }
    for s in &streams {
        writeln!(out, "{}", s.stream)?;
        writeln!(
            out,
            "  records:   {} live, {} deleted",
            s.live_records, s.deleted_records
        )?;
        let cursor = match &s.state.cursor {
            Some(c) if c.as_str().len() > 60 => {
                format!("{}...", &c.as_str()[..c.as_str().floor_char_boundary(60)])
            }
            Some(c) => c.to_string(),
            None => "(none: the next run is a full read)".to_string(),
        };
        writeln!(out, "  cursor:    {cursor}")?;
        if let Some(g) = s.state.full_read {
            writeln!(
                out,
                "  full read: generation {g} in progress (the next run resumes it)"
            )?;
        }
        let t = &s.totals;
        writeln!(
            out,
            "  totals:    {} added, {} updated, {} deleted, {} unchanged, {} stale",
            t.added, t.updated, t.deleted, t.unchanged, t.stale
        )?;
        match &s.last_run {
            Some(run) => {
                let secs = (run.finished_at.as_micros() - run.started_at.as_micros()) as f64 / 1e6;
                let what = match &run.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!(
                        "ok, {} pages, {} added, {} updated, {} deleted",
                        run.pages, run.counts.added, run.counts.updated, run.counts.deleted
                    ),
                };
                writeln!(
                    out,
                    "  last run:  {} ({secs:.2} s{}) {what}",
                    run.started_at,
                    if run.full { ", full" } else { "" }
                )?;
                if run.cursor_was_rejected() {
                    writeln!(
                        out,
                        "  warning:   Nango rejected the stored cursor; the last run was a full re-read with sweep"
                    )?;
                }
            }
            None => writeln!(out, "  last run:  never")?,
        }
        if let Some(e) = &s.upstream_error {
            writeln!(out, "  upstream error: {e}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
