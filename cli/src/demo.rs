//! `demo`: the offline quick start.
//!
//! Starts a fake Nango in-process with generated records across a few models, syncs them
//! into a SQLite file, changes some records upstream (updates, deletes, prunes, new
//! records), syncs again incrementally, checks that the store equals the fake, and says
//! how to look at the data.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use nango_sync::sink::{self, SharedSink};
use nango_sync::{Counts, Engine, NangoClient, RetryConfig, StreamKey, SyncOptions};
use nango_sync_testkit::{FakeConfig, FakeNango};

use crate::output::{self, Reporter};

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The SQLite file to create (replaced if it exists).
    #[arg(long, default_value = "nango-sync-demo.db")]
    db: PathBuf,
    /// Records in the largest model (the others get a half and a quarter as many).
    #[arg(long, default_value_t = 40_000)]
    records: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const INTEGRATION: &str = "demo-crm";
const CONNECTION: &str = "acme";

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    ensure!(args.records >= 100, "--records must be at least 100");
    let mut out = std::io::stdout().lock();
    let fake = FakeNango::start(FakeConfig {
        seed: args.seed,
        ..FakeConfig::default()
    })
    .await
    .context("cannot start the in-process fake Nango")?;
    let models = [
        ("Contact", args.records),
        ("Deal", args.records / 2),
        ("Company", args.records / 4),
    ];
    let streams: Vec<StreamKey> = models
        .iter()
        .map(|(m, _)| StreamKey::new(INTEGRATION, CONNECTION, *m))
        .collect();
    writeln!(
        out,
        "nango-sync demo: a fake Nango runs in this process at {} (no network needed)",
        fake.url()
    )?;
    for (stream, (_, n)) in streams.iter().zip(models) {
        fake.generate(stream, n, 1000);
    }
    writeln!(
        out,
        "upstream: {} with {} records in all\n",
        models
            .iter()
            .map(|(m, n)| format!("{m} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
        models.iter().map(|(_, n)| n).sum::<usize>()
    )?;

    remove_db(&args.db)?;
    let url = format!("sqlite://{}", args.db.display());
    let sink: SharedSink = sink::open(&url).await?;
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(RetryConfig::fast())
        .build()?;
    let engine = Engine::new(client, sink.clone());

    writeln!(
        out,
        "1. first sync into {} (a full read of every model)",
        args.db.display()
    )?;
    out.flush()?;
    let first = sync_all(&engine, &streams).await?;
    print_counts(&mut out, &first)?;

    writeln!(
        out,
        "\n2. upstream changes: records updated, deleted (payload reduced to {{id}}), pruned (payload emptied) and added"
    )?;
    let contact = &streams[0];
    let deal = &streams[1];
    let ids = |stream: &StreamKey, every: usize, offset: usize| -> Vec<String> {
        fake.records(stream)
            .iter()
            .skip(offset)
            .step_by(every)
            .map(|r| r.id.clone())
            .collect()
    };
    let to_update = ids(contact, 20, 3);
    let updated: Vec<serde_json::Value> = fake
        .records(contact)
        .into_iter()
        .filter(|r| to_update.contains(&r.id))
        .map(|r| {
            let mut p = r.payload;
            p["status"] = serde_json::json!("updated by the demo");
            p
        })
        .collect();
    let e = fake.save(contact, updated);
    writeln!(out, "   {}: {} updated", contact.model, e.updated.len())?;
    let to_delete = ids(deal, 25, 1);
    let refs: Vec<&str> = to_delete.iter().map(String::as_str).collect();
    let e = fake.delete(deal, &refs);
    writeln!(out, "   {}: {} deleted", deal.model, e.deleted.len())?;
    let to_prune = ids(contact, 10, 5);
    let refs: Vec<&str> = to_prune.iter().map(String::as_str).collect();
    let pruned = fake.prune(contact, &refs);
    writeln!(
        out,
        "   {}: {} pruned (Nango emptied their payloads; the local copy keeps them)",
        contact.model, pruned
    )?;
    let new: Vec<serde_json::Value> = (0..250)
        .map(|i| serde_json::json!({"id": format!("new-{i:04}"), "name": format!("New company {i}"), "country": "Ísland"}))
        .collect();
    let e = fake.save(&streams[2], new);
    writeln!(out, "   {}: {} added", streams[2].model, e.added.len())?;

    writeln!(out, "\n3. incremental sync: only what changed is fetched")?;
    out.flush()?;
    let second = sync_all(&engine, &streams).await?;
    print_counts(&mut out, &second)?;

    writeln!(out, "\n4. check: the local live records equal the fake's")?;
    for stream in &streams {
        let local = sink::read_all(&*sink, stream, false).await?;
        let upstream: Vec<_> = fake
            .records(stream)
            .into_iter()
            .filter(|r| !r.meta.is_deleted())
            .collect();
        ensure!(
            local.len() == upstream.len(),
            "{}: {} local records, {} upstream",
            stream.model,
            local.len(),
            upstream.len()
        );
        let local: std::collections::HashMap<&str, &nango_sync::StoredRecord> =
            local.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut kept = 0;
        for up in &upstream {
            let Some(r) = local.get(up.id.as_str()) else {
                bail!("{}: {} is missing locally", stream.model, up.id)
            };
            if up.meta.pruned_at.is_some() {
                // Pruned upstream: Nango holds only {id}, the store keeps the full payload.
                ensure!(
                    r.payload
                        .to_value()
                        .as_object()
                        .is_some_and(|o| o.len() > 1),
                    "{}: pruned payload lost",
                    r.id
                );
                kept += 1;
            } else {
                ensure!(
                    r.payload.to_value() == up.payload,
                    "{}: {} differs from upstream",
                    stream.model,
                    r.id
                );
            }
        }
        writeln!(
            out,
            "   {}: {} live records match{}",
            stream.model,
            local.len(),
            if kept > 0 {
                format!(" ({kept} pruned upstream, full payload kept locally)")
            } else {
                String::new()
            }
        )?;
    }

    let db = args.db.display();
    writeln!(out, "\nLook at the data:")?;
    writeln!(
        out,
        "   sqlite3 {db} \"SELECT model, id, json_extract(payload, '$.title') FROM nango_records_view WHERE NOT deleted LIMIT 5\""
    )?;
    writeln!(
        out,
        "   nango-sync export --sink sqlite://{db} --integration {INTEGRATION} --connection {CONNECTION} --model Contact | head -n 3"
    )?;
    writeln!(out, "   nango-sync status --sink sqlite://{db}")?;
    writeln!(out, "(with cargo: cargo run --release -- export ...)")?;
    fake.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn remove_db(path: &std::path::Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot replace {}", PathBuf::from(p).display()));
            }
        }
    }
    Ok(())
}

async fn sync_all(
    engine: &Engine,
    streams: &[StreamKey],
) -> Result<Vec<(StreamKey, Counts, u64, f64)>> {
    let reporter = Reporter::new(streams);
    let options = SyncOptions {
        progress: Some(reporter.callback()),
        ..SyncOptions::default()
    };
    let started = Instant::now();
    let results = engine.sync_all(streams, &options).await;
    reporter.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for r in results {
        let r = r?;
        out.push((r.stream.clone(), r.counts, r.pages, elapsed));
    }
    Ok(out)
}

fn print_counts(out: &mut impl Write, runs: &[(StreamKey, Counts, u64, f64)]) -> Result<()> {
    let mut total = Counts::default();
    let mut elapsed = 0.0f64;
    for (stream, c, pages, secs) in runs {
        writeln!(
            out,
            "   {:<8} {:>6} added {:>6} updated {:>6} deleted {:>6} unchanged  ({} pages)",
            stream.model, c.added, c.updated, c.deleted, c.unchanged, pages
        )?;
        total.add(c);
        elapsed = elapsed.max(*secs);
    }
    writeln!(
        out,
        "   {} records in {:.2} s: {}",
        output::thousands(total.total()),
        elapsed,
        output::rate(total.total(), std::time::Duration::from_secs_f64(elapsed))
    )?;
    Ok(())
}
