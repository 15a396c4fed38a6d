//! `repair`: move a damaged store aside and rebuild it from Nango (the library's
//! `nango_sync::repair`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nango_sync::StreamKey;
use nango_sync::repair::{RepairOptions, RepairReport};

use crate::output::Reporter;
use crate::sync::NangoArgs;

/// Arguments of `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// The integration id of streams to rebuild (with --connection and --model); needed
    /// when the damaged store cannot be read, added to its streams otherwise.
    #[arg(long, requires_all = ["connection", "models"])]
    integration: Option<String>,
    /// The connection id of the streams to rebuild.
    #[arg(long, requires = "integration")]
    connection: Option<String>,
    /// A model to rebuild; repeat for several.
    #[arg(long = "model", requires = "integration")]
    models: Vec<String>,
    /// The sync variant of the streams given (default: none).
    #[arg(long, requires = "integration")]
    variant: Option<String>,
    #[command(flatten)]
    nango: NangoArgs,
    /// Records per page (1 to 10000).
    #[arg(long, default_value_t = nango_sync::engine::DEFAULT_PAGE_SIZE)]
    page_size: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RepairArgs) -> Result<ExitCode> {
    let streams: Vec<StreamKey> = match (&args.integration, &args.connection) {
        (Some(integration), Some(connection)) => args
            .models
            .iter()
            .map(|m| {
                StreamKey::new(integration.as_str(), connection.as_str(), m.as_str())
                    .with_variant(args.variant.clone().unwrap_or_default())
            })
            .collect(),
        _ => Vec::new(),
    };
    for s in &streams {
        s.validate()?;
    }
    let client = args.nango.client()?;
    let reporter = Reporter::new(&streams);
    let options = RepairOptions {
        streams,
        page_size: args.page_size,
        progress: Some(reporter.callback()),
        ..RepairOptions::default()
    };
    let report = nango_sync::repair::repair(&args.sink, client, options).await;
    reporter.finish();
    let report =
        report.with_context(|| format!("cannot repair {}", nango_sync::redact_url(&args.sink)))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_text(&mut out, &report)?;
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_text(out: &mut impl Write, r: &RepairReport) -> std::io::Result<()> {
    writeln!(
        out,
        "repaired {}: the damaged store was moved to {}",
        r.store, r.moved_to
    )?;
    if let Some(e) = &r.old_store_error {
        writeln!(out, "the damaged store could not be read: {e}")?;
    }
    for s in &r.streams {
        match &s.error {
            Some(e) => writeln!(out, "{}: NOT rebuilt: {e}", s.stream)?,
            None => {
                write!(
                    out,
                    "{}: rebuilt, {} live and {} deleted records",
                    s.stream, s.live_records, s.deleted_records
                )?;
                if let (Some(live), Some(deleted)) = (s.old_live_records, s.old_deleted_records) {
                    write!(out, " (the damaged store held {live} and {deleted})")?;
                }
                writeln!(out)?;
            }
        }
        let list = |ids: &[String], count: u64| {
            let more = count.saturating_sub(ids.len() as u64);
            let mut text = ids.join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        if s.payloads_lost.count > 0 {
            writeln!(
                out,
                "  {} payloads only the damaged store held (Nango has pruned them, or deleted them with only their id): {}",
                s.payloads_lost.count,
                list(&s.payloads_lost.ids, s.payloads_lost.count)
            )?;
        }
        if s.only_in_old_store.count > 0 {
            writeln!(
                out,
                "  {} live records of the damaged store that Nango no longer has: {}",
                s.only_in_old_store.count,
                list(&s.only_in_old_store.ids, s.only_in_old_store.count)
            )?;
        }
    }
    for note in &r.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}
