//! `trigger`: run syncs on Nango now, optionally a reset that empties Nango's cache; with
//! `--sink` and `--model`, re-read those streams fully afterwards (Nango's emptied cache
//! never reports the records it dropped).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use nango_sync::client::{SyncRef, TriggerOptions};
use nango_sync::{Engine, StreamKey};

use crate::output;
use crate::sync::{NangoArgs, open_sink, repair_hint};

/// Arguments of `trigger`.
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The integration id (Provider-Config-Key).
    #[arg(long)]
    integration: String,
    /// The connection id (default: every connection of the integration).
    #[arg(long)]
    connection: Option<String>,
    /// A sync (`name` or `name::variant`); repeatable.
    #[arg(long = "sync", required = true)]
    syncs: Vec<String>,
    /// A full run: Nango forgets the syncs' last run date and checkpoints.
    #[arg(long)]
    reset: bool,
    /// With --reset: Nango deletes the syncs' records before the run.
    #[arg(long, requires = "reset")]
    empty_cache: bool,
    /// With --empty-cache: re-read these streams of the store fully afterwards.
    #[arg(long, requires_all = ["empty_cache", "connection"])]
    sink: Option<String>,
    /// With --sink: a model to re-read; repeatable.
    #[arg(long = "model", requires = "sink")]
    models: Vec<String>,
    /// With --sink: the sync variant of the models (default: none).
    #[arg(long, requires = "sink")]
    variant: Option<String>,
    #[command(flatten)]
    nango: NangoArgs,
}

pub async fn run(args: TriggerArgs) -> Result<ExitCode> {
    let syncs = args
        .syncs
        .iter()
        .map(|s| SyncRef::parse(s))
        .collect::<nango_sync::Result<Vec<_>>>()?;
    if args.sink.is_some() && args.models.is_empty() {
        bail!("--sink needs at least one --model to re-read");
    }
    let options = TriggerOptions {
        reset: args.reset,
        empty_cache: args.empty_cache,
    };
    let client = args.nango.client()?;
    let what = format!(
        "{} of {}{}{}",
        args.syncs.join(", "),
        args.integration,
        args.connection
            .as_deref()
            .map(|c| format!("/{c}"))
            .unwrap_or_else(|| " (every connection)".into()),
        match (args.reset, args.empty_cache) {
            (true, true) => " (reset, cache emptied)",
            (true, false) => " (reset)",
            _ => "",
        }
    );
    let (Some(url), Some(connection)) = (&args.sink, &args.connection) else {
        client
            .trigger_syncs(
                &args.integration,
                args.connection.as_deref(),
                &syncs,
                options,
            )
            .await?;
        writeln!(std::io::stdout().lock(), "triggered {what}")?;
        return Ok(ExitCode::SUCCESS);
    };
    let streams: Vec<StreamKey> = args
        .models
        .iter()
        .map(|m| {
            StreamKey::new(&args.integration, connection, m.as_str())
                .with_variant(args.variant.clone().unwrap_or_default())
        })
        .collect();
    for s in &streams {
        s.validate()?;
    }
    let engine = Engine::new(client, open_sink(url).await?);
    let results = engine
        .trigger_syncs(
            &args.integration,
            Some(connection),
            &syncs,
            options,
            &streams,
        )
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "triggered {what}")?;
    let mut failed = false;
    for result in results {
        match result {
            Ok(report) => writeln!(out, "{}", output::report_line(&report))?,
            Err(e) => {
                failed = true;
                eprintln!("error: {e}{}", repair_hint(&e, url));
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
