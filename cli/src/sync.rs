//! `sync` and `export`: the commands that sync a store and read its records.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use nango_sync::engine::{CountCheckConfig, CountCheckMode, EngineConfig};
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
    /// Compare each stream's live record count with Nango's after a successful run:
    /// `warn` keeps the result (a `count_mismatch` warning in `status`), `repair` also
    /// runs a full re-read with sweep on a mismatch. The secret key needs the
    /// environment:syncs:read scope.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "warn", value_name = "MODE")]
    reconcile: Option<Reconcile>,
    /// Runs kept per stream in the store's run history.
    #[arg(long, default_value_t = nango_sync::sink::DEFAULT_RUN_HISTORY)]
    run_history: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// What `--reconcile` does on a count mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconcile {
    /// Keep the result: `status` warns `count_mismatch`.
    Warn,
    /// Also run a full re-read with sweep.
    Repair,
}

impl Reconcile {
    /// The engine's mode.
    pub fn mode(reconcile: Option<Reconcile>) -> CountCheckMode {
        match reconcile {
            None => CountCheckMode::Off,
            Some(Reconcile::Warn) => CountCheckMode::Warn,
            Some(Reconcile::Repair) => CountCheckMode::Repair,
        }
    }
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
    let sink = open_writer_sink(&args.sink).await?;
    let engine = Engine::with_config(
        client,
        sink,
        EngineConfig {
            page_size: args.page_size,
            overlap: args.overlap.map(std::time::Duration::from_secs),
            run_history: args.run_history,
            count_check: CountCheckConfig {
                mode: Reconcile::mode(args.reconcile),
                ..CountCheckConfig::default()
            },
            ..EngineConfig::default()
        },
    );
    let reporter = Reporter::new(&streams);
    let options = SyncOptions {
        full: args.full,
        modified_after,
        page_size: Some(args.page_size),
        progress: Some(reporter.callback()),
        ..SyncOptions::default()
    };
    let started = Instant::now();
    // SIGINT/SIGTERM stop every run at its next page boundary: the commit in flight
    // completes and the run is recorded as interrupted. A second signal exits at once
    // (every commit is atomic, so the store keeps its last one).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        crate::dev_server::shutdown_signal().await;
        eprintln!("interrupted: finishing the commits in flight (interrupt again to exit at once)");
        let _ = stop_tx.send(true);
        crate::dev_server::shutdown_signal().await;
        eprintln!("interrupted again: exiting; the store keeps its last commit");
        std::process::exit(130);
    });
    let results = futures::future::join_all(streams.iter().map(|s| {
        let mut stop = stop_rx.clone();
        engine.sync_until(s, &options, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
    }))
    .await;
    signals.abort();
    reporter.finish();
    let mut failed = 0;
    let mut interrupted = 0;
    let mut reports = Vec::new();
    for (stream, result) in streams.iter().zip(results) {
        match result {
            Ok(Some(report)) => reports.push(report),
            Ok(None) => {
                interrupted += 1;
                eprintln!(
                    "{stream}: interrupted; the run is recorded as interrupted and the next sync resumes from the stored cursor"
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}{}", repair_hint(&e, &args.sink));
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
    Ok(if interrupted > 0 {
        // The shell's convention for a command stopped by SIGINT.
        ExitCode::from(130)
    } else if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn open_sink(url: &str) -> Result<SharedSink> {
    crate::memory::for_store(url);
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

/// Open the store as its writing process: a one-process store (SQLite, sled) that
/// another process writes is refused at once, naming that process.
pub async fn open_writer_sink(url: &str) -> Result<SharedSink> {
    let sink = open_sink(url).await?;
    sink::DynRecordSink::claim_writer(&*sink)
        .await
        .with_context(|| format!("cannot write to the store {}", nango_sync::redact_url(url)))?;
    Ok(sink)
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
