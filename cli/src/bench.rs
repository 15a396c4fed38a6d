//! `bench`: throughput of the engine against its two ceilings, on this machine.
//!
//! A fake Nango runs in this process on loopback with `--records` generated records
//! (realistic: 18 fields, nested objects, arrays, non-ASCII text; about
//! `--record-bytes` bytes each). Then, in one run:
//!
//! 1. **fetch ceiling**: the client pages through every record (HTTP + page parsing)
//!    and discards the pages;
//! 2. **raw ceiling**: the plainest fastest write of the same pages and cursor that the
//!    backend allows (no merge, no lookups: see [`crate::bench_raw`]), timed like the
//!    store ceiling;
//! 3. **store ceiling**: the store commits the same pages with no HTTP and no engine in
//!    the timed part: the pages are fetched untimed, 50,000 records at a time, then
//!    committed back to back, each commit timed (the ones the engine would make:
//!    records + cursor, one per page), and each such chunk ends with the store's
//!    `flush`, timed too;
//! 4. **engine**: a full `sync` of the same data into a fresh store, then the store's
//!    `flush`, timed together.
//!
//! The flushes count the work a store defers past its commits: SQLite copies its WAL
//! back into the database file in a thread of its own, and without them that work
//! would run free during the store ceiling's untimed fetches, and after the engine's
//! run, making the store look faster than it is (the ceilings of SQLite reported
//! before the flushes were 1.2 to 1.4 times too high).
//!
//! Each round reports `store / raw` (how close the store's write path is to its
//! database's best) and `engine / min(fetch, store)` (how close the engine is to the
//! slower of its two ceilings).
//!
//! Then every record changes upstream (a new payload revision), and 1–4 run again as
//! the **update** pass (the raw ceiling, the store ceiling and the engine each update
//! the store holding their first pass). Then a **no-change** incremental run counts its HTTP requests.
//! Last, the **feed read** reads the engine store's whole change feed (one change per
//! record, in batches of 1,000) and, 20 times, the changes of its last commit only (a
//! read of the newest changes: its cost does not grow with the store).
//!
//! # Id order
//!
//! The fake's ids are `rec-0000001`, `rec-0000002`, ... by default: each sorts after the
//! one before, so every store's key index grows at its end. With `--id-order scattered`
//! they are UUID-shaped and in no order, as many APIs' ids are: each page's new keys land
//! all over the index. That costs every store more, and more as the store grows (see the
//! README's sizing section); measure with the order your upstream's ids have.
//!
//! # Against a real upstream
//!
//! With `--upstream URL` (and `--integration`, `--connection`, `--model`, the secret key
//! from `NANGO_SECRET_KEY` or `--secret-key`), no fake runs: the fetch ceiling, the raw
//! and store ceilings and the engine read that stream's records as they are, from that
//! Nango (or a `dev-server` in another process), so the numbers are those of the
//! user's own upstream and network. Nothing is written upstream, so there is no update
//! pass; the no-change run counts the pages it fetched.
//!
//! # Fresh stores
//!
//! The raw ceiling, the store ceiling and the engine each get a store of their own,
//! derived from `--sink` and replaced at the start:
//! - `sqlite://DIR/NAME.EXT` → `DIR/NAME-raw.EXT`, `DIR/NAME-ceiling.EXT` and
//!   `DIR/NAME-engine.EXT` (with their `-wal`/`-shm` files and the writer lock file,
//!   `-lock`);
//! - `sled://DIR` → `DIR-raw`, `DIR-ceiling` and `DIR-engine`;
//! - `postgres://...[?schema=S]` → schemas `S_raw`, `S_ceiling` and `S_engine` (`S`
//!   defaults to `nango_sync_bench`), dropped with `DROP SCHEMA ... CASCADE` first;
//!   a `fillfactor=PERCENT` parameter applies to the store ceiling's and the engine's
//!   records tables, not to the raw ceiling's plain table.
//!
//! They are removed at the end unless `--keep`.
//!
//! # CPU
//!
//! Each pass also reports the CPU time of the whole process per record (all threads:
//! the fake, the client, the engine, the store), from `/proc/self/task/*/schedstat`.
//! The fake, the client and the store share this machine's cores, so the engine
//! cannot run at the store ceiling unless the CPU the fetch side needs fits beside the
//! store's: compare the engine's µs/rec with the sum of the two ceilings'.
//!
//! # Memory
//!
//! Peak RSS is Linux's `VmHWM` of this process (`/proc/self/status`). Before each
//! engine pass the high-water mark is reset to the current RSS (`5` written to
//! `/proc/self/clear_refs`), so the peak of a pass is the peak *during* it; the RSS just
//! before the pass (the fake's records, the runtime, allocator caches) is printed as the
//! baseline, and `peak - baseline` is what the engine and the store added. The fake
//! keeps generated ids and payloads as numbers and renders them when serving, so its
//! memory is about 50-60 bytes per record (about 55 MB at 1,000,000 records), not the
//! payloads: read the engine's memory as `peak - baseline`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use nango_sync::engine::EngineConfig;
use nango_sync::sink::{self, Commit, FullRead, SharedSink, SinkUrl};
use nango_sync::{
    Cursor, Engine, NangoClient, RecordsQuery, RetryConfig, SecretKey, StreamKey, SyncOptions,
};
use nango_sync_testkit::{FakeConfig, FakeNango, GenerateSpec, IdOrder};

use crate::bench_raw::RawStore;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The store to measure; the stores written are derived from it (see `--help` of the
    /// command's documentation: `NAME-ceiling`, `NAME-engine`).
    #[arg(long)]
    sink: String,
    /// Generated records.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Approximate size of a record's payload, in bytes (records land up to 90 bytes
    /// above; at least about 450).
    #[arg(long, default_value_t = 700)]
    record_bytes: u32,
    /// Records per page (default: the engine's default page size).
    #[arg(long)]
    page_size: Option<u32>,
    /// Pages the engine fetches ahead of the commit in progress (default: the engine's).
    #[arg(long)]
    pipeline_depth: Option<usize>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How the generated ids are formed: `sequential` (`rec-0000001`, ...: each id sorts
    /// after the one before) or `scattered` (UUID-shaped, in no order). Stores index
    /// records by id, so the two cost them differently: see the README's sizing section.
    #[arg(
        long,
        default_value = "sequential",
        value_name = "ORDER",
        conflicts_with = "upstream"
    )]
    id_order: IdOrder,
    /// Keep the stores written instead of removing them at the end.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure against this Nango (or a `dev-server` in another process) instead of an
    /// in-process fake: the records of one existing stream, read as they are (no update
    /// pass).
    #[arg(long, value_name = "URL", requires_all = ["integration", "connection", "model"])]
    upstream: Option<String>,
    /// The environment's secret key, with `--upstream` (prefer the environment
    /// variable: arguments are visible to other users of the machine).
    #[arg(long, env = "NANGO_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// With `--upstream`: the stream's integration id.
    #[arg(long, requires = "upstream")]
    integration: Option<String>,
    /// With `--upstream`: the stream's connection id.
    #[arg(long, requires = "upstream")]
    connection: Option<String>,
    /// With `--upstream`: the stream's model.
    #[arg(long, requires = "upstream")]
    model: Option<String>,
    /// With `--upstream`: the stream's variant (default: none).
    #[arg(long, requires = "upstream")]
    variant: Option<String>,
}

/// One measured pass.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Pass {
    records: u64,
    seconds: f64,
    records_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_p99_ms: Option<f64>,
    /// CPU time of the whole process (every thread: fake, client, store) during the
    /// timed part.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_mb: Option<f64>,
}

impl Pass {
    fn new(records: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Pass {
            records,
            seconds,
            records_per_second: if seconds > 0.0 {
                records as f64 / seconds
            } else {
                0.0
            },
            ..Pass::default()
        }
    }

    fn latencies(mut self, mut commits: Vec<Duration>) -> Self {
        commits.sort_unstable();
        let at = |q: f64| {
            (!commits.is_empty()).then(|| {
                let i = ((commits.len() as f64 * q).ceil() as usize).clamp(1, commits.len()) - 1;
                commits[i].as_secs_f64() * 1e3
            })
        };
        self.commit_p50_ms = at(0.50);
        self.commit_p99_ms = at(0.99);
        self
    }
}

/// The fetch, raw, store and engine passes over one version of the data.
#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    fetch: Pass,
    raw: Pass,
    store: Pass,
    engine: Pass,
    /// store / raw.
    store_ratio: f64,
    /// engine / min(fetch, store).
    ratio: f64,
}

impl Round {
    fn new(fetch: Pass, raw: Pass, store: Pass, engine: Pass) -> Self {
        let over = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let ceiling = fetch.records_per_second.min(store.records_per_second);
        Round {
            store_ratio: over(store.records_per_second, raw.records_per_second),
            ratio: over(engine.records_per_second, ceiling),
            fetch,
            raw,
            store,
            engine,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Report {
    backend: &'static str,
    /// The upstream measured (`None`: the in-process fake).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    records: usize,
    page_size: u32,
    record_bytes_avg: u64,
    /// How the fake's ids are formed (`None`: a real upstream's ids, as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    id_order: Option<&'static str>,
    fresh: Round,
    /// `None` with `--upstream`.
    update: Option<Round>,
    no_change: NoChange,
    feed: FeedRead,
    peak_rss_mb: Option<f64>,
    rss_method: &'static str,
}

#[derive(Debug, serde::Serialize)]
struct NoChange {
    seconds: f64,
    /// Requests the fake served; with `--upstream`, the pages the run fetched.
    http_requests: usize,
    streams: usize,
}

/// Reads of the change feed.
#[derive(Debug, serde::Serialize)]
struct FeedRead {
    /// The whole feed, in batches of [`FEED_BATCH`].
    all: Pass,
    /// Changes of the last commit (a read of the newest changes).
    newest_records: usize,
    /// Median time of that read over 20 reads.
    newest_p50_ms: f64,
}

const FEED_BATCH: usize = 1000;

const STREAM: (&str, &str, &str) = ("bench", "conn-1", "Ticket");

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(args.records >= 1, "--records must be at least 1");
    let page_size = args
        .page_size
        .unwrap_or(nango_sync::engine::DEFAULT_PAGE_SIZE);
    ensure!(
        (1..=10_000).contains(&page_size),
        "--page-size must be between 1 and 10000"
    );
    let targets = Targets::derive(&args.sink)?;
    // The allocator settings `sync` uses for this store, in every pass alike.
    crate::memory::for_store(&args.sink);
    let progress = |msg: &str| {
        if !args.json {
            eprintln!("bench: {msg}");
        }
    };

    // The upstream: a fake in this process with generated records, or a real one.
    let (fake, client, stream, spec) = match &args.upstream {
        None => {
            let stream = StreamKey::new(STREAM.0, STREAM.1, STREAM.2);
            let fake = FakeNango::start(FakeConfig {
                seed: args.seed,
                ..FakeConfig::default()
            })
            .await
            .context("cannot start the in-process fake Nango")?;
            let spec = GenerateSpec {
                record_bytes: args.record_bytes,
                id_order: args.id_order,
                ..GenerateSpec::new(args.records, 1000)
            };
            progress(&format!("generating {} records", args.records));
            drop(fake.generate_with(&stream, spec));
            let client = NangoClient::builder()
                .host(fake.url())
                .secret_key(fake.secret_key())
                .retry(RetryConfig::fast())
                .build()?;
            (Some(fake), client, stream, Some(spec))
        }
        Some(url) => {
            let key = args
                .secret_key
                .clone()
                .filter(|k| !k.trim().is_empty())
                .context(
                    "--upstream needs the secret key: set NANGO_SECRET_KEY or pass --secret-key",
                )?;
            let field = |v: &Option<String>, name: &str| {
                v.clone()
                    .with_context(|| format!("--upstream needs --{name}"))
            };
            let mut stream = StreamKey::new(
                field(&args.integration, "integration")?,
                field(&args.connection, "connection")?,
                field(&args.model, "model")?,
            );
            if let Some(v) = &args.variant {
                stream = stream.with_variant(v.as_str());
            }
            stream.validate()?;
            let client = NangoClient::builder()
                .host(url)
                .secret_key(SecretKey::new(key))
                .build()?;
            (None, client, stream, None)
        }
    };
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        page_size,
        pipeline_depth: args.pipeline_depth.unwrap_or(defaults.pipeline_depth),
        ..defaults.clone()
    };

    // Pass 1: fresh.
    progress("fresh: fetch ceiling");
    let (fetch_fresh, bytes) = fetch_ceiling(&client, &stream, page_size).await?;
    ensure!(
        fetch_fresh.records > 0,
        "the stream {stream} has no records to measure"
    );
    targets.reset().await?;
    progress("fresh: raw ceiling");
    let mut raw = RawStore::open(&targets.raw, true).await?;
    let (raw_fresh, raw_cursor) = store_ceiling(
        &client,
        Writer::Raw(&mut raw),
        &stream,
        page_size,
        None,
        true,
    )
    .await?;
    // Closed between passes: an open raw store would count in the engine's memory.
    drop(raw);
    progress("fresh: store ceiling");
    let ceiling_sink = sink::open(&targets.ceiling).await?;
    let (store_fresh, ceiling_cursor) = store_ceiling(
        &client,
        Writer::Sink(&ceiling_sink),
        &stream,
        page_size,
        None,
        true,
    )
    .await?;
    drop(ceiling_sink);
    progress("fresh: engine");
    let engine_sink = sink::open(&targets.engine).await?;
    let engine = Engine::with_config(client.clone(), engine_sink.clone(), config.clone());
    let engine_fresh = engine_pass(&engine, &engine_sink, &stream).await?;
    let fresh = Round::new(fetch_fresh, raw_fresh, store_fresh, engine_fresh);

    // Pass 2: every record changes upstream (the fake only).
    let update = match (&fake, spec) {
        (Some(fake), Some(spec)) => {
            progress("update: every record changes upstream");
            drop(fake.regenerate(
                &stream,
                GenerateSpec {
                    revision: 1,
                    ..spec
                },
            ));
            progress("update: fetch ceiling");
            let (fetch_update, _) = fetch_ceiling(&client, &stream, page_size).await?;
            progress("update: raw ceiling");
            let mut raw = RawStore::open(&targets.raw, false).await?;
            let (raw_update, _) = store_ceiling(
                &client,
                Writer::Raw(&mut raw),
                &stream,
                page_size,
                raw_cursor,
                false,
            )
            .await?;
            drop(raw);
            progress("update: store ceiling");
            let ceiling_sink = sink::open(&targets.ceiling).await?;
            let (store_update, _) = store_ceiling(
                &client,
                Writer::Sink(&ceiling_sink),
                &stream,
                page_size,
                ceiling_cursor,
                false,
            )
            .await?;
            drop(ceiling_sink);
            progress("update: engine");
            let engine_update = engine_pass(&engine, &engine_sink, &stream).await?;
            Some(Round::new(
                fetch_update,
                raw_update,
                store_update,
                engine_update,
            ))
        }
        _ => None,
    };

    // Pass 3: nothing changed.
    progress("no change: engine");
    let before = fake.as_ref().map(|f| f.request_count());
    let began = Instant::now();
    let report = engine.sync(&stream, &SyncOptions::default()).await?;
    let no_change = NoChange {
        seconds: began.elapsed().as_secs_f64(),
        http_requests: match (&fake, before) {
            (Some(fake), Some(before)) => fake.request_count() - before,
            _ => usize::try_from(report.pages).unwrap_or(usize::MAX),
        },
        streams: 1,
    };
    // A real upstream may have changed meanwhile; the fake has not.
    ensure!(
        fake.is_none() || report.counts.total() == 0,
        "the no-change run received {} records",
        report.counts.total()
    );
    progress("feed read");
    let feed = feed_read(&engine_sink).await?;
    let records = fresh.engine.records;
    ensure!(
        fake.is_none() || feed.all.records == records,
        "the feed holds {} changes for {} records",
        feed.all.records,
        records
    );
    let backend = engine_sink.backend();
    drop(engine);
    drop(engine_sink);
    if let Some(fake) = fake {
        fake.shutdown().await;
    }
    if !args.keep {
        targets.remove().await?;
    }

    let peak = std::iter::once(&fresh)
        .chain(update.as_ref())
        .filter_map(|r| r.engine.peak_rss_mb)
        .reduce(f64::max);
    let report = Report {
        backend,
        upstream: args.upstream.as_deref().map(nango_sync::redact_url),
        records: usize::try_from(fresh.fetch.records).unwrap_or(usize::MAX),
        page_size,
        record_bytes_avg: bytes / fresh.fetch.records.max(1),
        id_order: spec.map(|s| s.id_order.name()),
        fresh,
        update,
        no_change,
        feed,
        peak_rss_mb: peak,
        rss_method: "VmHWM of /proc/self/status, reset before each engine pass via /proc/self/clear_refs",
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Read the whole feed, then the last commit's changes 20 times.
async fn feed_read(sink: &SharedSink) -> Result<FeedRead> {
    use nango_sync::feed::{ChangeQuery, FeedPosition};
    let began = Instant::now();
    let cpu_began = cpu::seconds();
    let mut query = ChangeQuery::since(FeedPosition::START).with_limit(FEED_BATCH);
    let mut records = 0u64;
    loop {
        let batch = sink.changes(&query).await?;
        records += batch.changes.len() as u64;
        let done = batch.changes.len() < FEED_BATCH;
        query.since = batch.next;
        if done {
            break;
        }
    }
    let mut all = Pass::new(records, began.elapsed());
    all.cpu_seconds = cpu::since(cpu_began);
    let last = sink.last_seq().await?;
    let newest = ChangeQuery::since(last.saturating_sub(1)).with_limit(usize::MAX);
    let mut times = Vec::new();
    let mut newest_records = 0;
    for _ in 0..20 {
        let began = Instant::now();
        newest_records = sink.changes(&newest).await?.changes.len();
        times.push(began.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(FeedRead {
        all,
        newest_records,
        newest_p50_ms: times[times.len() / 2],
    })
}

/// Page through every record, parse, discard, as the engine reads them
/// ([`NangoClient::pages`]: each next page asked for while this one is parsed). Returns
/// the pass and the bytes of the payloads seen.
async fn fetch_ceiling(
    client: &NangoClient,
    stream: &StreamKey,
    page_size: u32,
) -> Result<(Pass, u64)> {
    let began = Instant::now();
    let cpu_began = cpu::seconds();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut pages = client.pages(stream, None, page_size);
    while let Some(page) = pages.next().await {
        let page = page?;
        records += page.records.len() as u64;
        bytes += page
            .records
            .iter()
            .map(|r| r.payload.as_str().len() as u64)
            .sum::<u64>();
    }
    let mut pass = Pass::new(records, began.elapsed());
    pass.cpu_seconds = cpu::since(cpu_began);
    Ok((pass, bytes))
}

/// Where [`store_ceiling`] writes: a store, or the raw ceiling's plain tables.
enum Writer<'a> {
    Sink(&'a SharedSink),
    Raw(&'a mut RawStore),
}

/// Records [`store_ceiling`] holds in memory at a time, in whole pages (about 40 MB of
/// records of the default size).
const CEILING_CHUNK_RECORDS: usize = 50_000;

/// The store's write path alone. Pages are fetched untimed, a chunk of them at a time
/// ([`CEILING_CHUNK_RECORDS`]); the chunk's pages are then committed back to back, each
/// commit timed, and the chunk ends with the store's [`flush`](RecordSink::flush),
/// timed too: the work a store defers past its commits (SQLite's WAL checkpoint) is
/// counted, and none of it runs for free during an untimed fetch. Like the engine,
/// the store is told of the next page before a commit (`RecordSink::prefetch`).
/// `full`: the commits of a first sync (a full read stamping generation 1).
async fn store_ceiling(
    client: &NangoClient,
    mut writer: Writer<'_>,
    stream: &StreamKey,
    page_size: u32,
    mut expected: Option<Cursor>,
    full: bool,
) -> Result<(Pass, Option<Cursor>)> {
    let fetch = |cursor: Option<Cursor>| async move {
        client
            .list_records(
                &RecordsQuery::new(stream)
                    .cursor(cursor.as_ref())
                    .limit(page_size),
            )
            .await
    };
    let mut commits = Vec::new();
    let mut flushes = Duration::ZERO;
    let mut cpu: Option<f64> = None;
    let mut add_cpu = |since: Option<f64>| {
        if let Some(c) = cpu::since(since) {
            *cpu.get_or_insert(0.0) += c;
        }
    };
    let mut records = 0u64;
    let mut next: Option<Cursor> = None;
    let mut done = false;
    while !done {
        let mut chunk = Vec::new();
        let mut held = 0;
        while !done && held < CEILING_CHUNK_RECORDS {
            let page = fetch(next.take()).await?;
            held += page.records.len();
            done = page.is_last();
            next = page.next_cursor.clone();
            chunk.push(page);
        }
        let mut pages = chunk.into_iter().peekable();
        while let Some(page) = pages.next() {
            let last = page.is_last();
            let cursor = page.end_cursor().cloned().or_else(|| expected.clone());
            records += page.records.len() as u64;
            let (began, cpu_began) = match &mut writer {
                Writer::Sink(sink) => {
                    if let Some(ahead) = pages.peek() {
                        sink.prefetch(stream, &ahead.records);
                    }
                    let mut commit = Commit::new(
                        stream.clone(),
                        expected.clone(),
                        cursor.clone(),
                        page.records,
                    );
                    commit.full_read = full.then_some(FullRead {
                        generation: 1,
                        complete: last,
                    });
                    let (began, cpu_began) = (Instant::now(), cpu::seconds());
                    sink.commit(commit).await?;
                    (began, cpu_began)
                }
                Writer::Raw(raw) => {
                    let (began, cpu_began) = (Instant::now(), cpu::seconds());
                    raw.write(&page.records, cursor.as_ref().map(Cursor::as_str))
                        .await?;
                    (began, cpu_began)
                }
            };
            commits.push(began.elapsed());
            add_cpu(cpu_began);
            expected = cursor;
        }
        let (began, cpu_began) = (Instant::now(), cpu::seconds());
        match &mut writer {
            Writer::Sink(sink) => sink.flush().await?,
            Writer::Raw(raw) => raw.flush().await?,
        }
        flushes += began.elapsed();
        add_cpu(cpu_began);
    }
    let total = commits.iter().sum::<Duration>() + flushes;
    let mut pass = Pass::new(records, total).latencies(commits);
    pass.cpu_seconds = cpu;
    Ok((pass, expected))
}

/// One engine run, with its commit latencies and memory high-water mark.
async fn engine_pass(engine: &Engine, sink: &SharedSink, stream: &StreamKey) -> Result<Pass> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let commit_times = latencies.clone();
    let options = SyncOptions {
        progress: Some(Arc::new(move |p| {
            if let Some(t) = p.commit_time {
                commit_times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t);
            }
        })),
        ..SyncOptions::default()
    };
    let baseline = rss::reset_peak();
    let began = Instant::now();
    let cpu_began = cpu::seconds();
    let report = engine.sync(stream, &options).await?;
    // What the store deferred past the run's commits counts, as in the store ceiling.
    sink.flush().await?;
    let elapsed = began.elapsed();
    let cpu_used = cpu::since(cpu_began);
    let peak = rss::peak();
    let commits = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    let mut pass = Pass::new(report.counts.total(), elapsed).latencies(commits);
    pass.baseline_rss_mb = baseline;
    pass.peak_rss_mb = peak;
    pass.cpu_seconds = cpu_used;
    Ok(pass)
}

/// The stores written by a bench: one for the raw ceiling, one for the store ceiling,
/// one for the engine.
struct Targets {
    raw: String,
    ceiling: String,
    engine: String,
    kind: Kind,
}

enum Kind {
    Files(Vec<PathBuf>),
    Dirs(Vec<PathBuf>),
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Schemas {
        url: String,
        schemas: Vec<String>,
    },
}

impl Targets {
    fn derive(url: &str) -> Result<Targets> {
        match SinkUrl::parse(url)? {
            SinkUrl::Sqlite(path) => {
                let name = |suffix: &str| -> PathBuf {
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "bench".into());
                    let file = match path.extension() {
                        Some(ext) => format!("{stem}-{suffix}.{}", ext.to_string_lossy()),
                        None => format!("{stem}-{suffix}"),
                    };
                    path.with_file_name(file)
                };
                let (r, c, e) = (name("raw"), name("ceiling"), name("engine"));
                let mut files = Vec::new();
                for p in [&r, &c, &e] {
                    for tail in ["", "-wal", "-shm", "-lock"] {
                        files.push(PathBuf::from(format!("{}{tail}", p.display())));
                    }
                }
                Ok(Targets {
                    raw: format!("sqlite://{}", r.display()),
                    ceiling: format!("sqlite://{}", c.display()),
                    engine: format!("sqlite://{}", e.display()),
                    kind: Kind::Files(files),
                })
            }
            SinkUrl::Sled(path) => {
                let name = |suffix: &str| PathBuf::from(format!("{}-{suffix}", path.display()));
                let (r, c, e) = (name("raw"), name("ceiling"), name("engine"));
                Ok(Targets {
                    raw: format!("sled://{}", r.display()),
                    ceiling: format!("sled://{}", c.display()),
                    engine: format!("sled://{}", e.display()),
                    kind: Kind::Dirs(vec![r, c, e]),
                })
            }
            SinkUrl::Postgres(_) => {
                let (base, schema) = nango_sync::sink::split_schema_param(url);
                let schema = schema.unwrap_or_else(|| "nango_sync_bench".to_string());
                let with = |suffix: &str| {
                    let sep = if base.contains('?') { '&' } else { '?' };
                    format!("{base}{sep}schema={schema}_{suffix}")
                };
                Ok(Targets {
                    raw: with("raw"),
                    ceiling: with("ceiling"),
                    engine: with("engine"),
                    kind: Kind::Schemas {
                        url: nango_sync::sink::split_param(&base, "fillfactor").0,
                        schemas: vec![
                            format!("{schema}_raw"),
                            format!("{schema}_ceiling"),
                            format!("{schema}_engine"),
                        ],
                    },
                })
            }
            _ => bail!("bench measures a persistent store: sqlite://, sled:// or postgres://"),
        }
    }

    /// Remove what a previous bench left.
    async fn reset(&self) -> Result<()> {
        self.remove().await
    }

    async fn remove(&self) -> Result<()> {
        match &self.kind {
            Kind::Files(files) => {
                for f in files {
                    remove_if_exists(f, |p| std::fs::remove_file(p))?;
                }
            }
            Kind::Dirs(dirs) => {
                for d in dirs {
                    remove_if_exists(d, |p| std::fs::remove_dir_all(p))?;
                }
            }
            Kind::Schemas { url, schemas } => drop_schemas(url, schemas).await?,
        }
        Ok(())
    }
}

fn remove_if_exists(p: &Path, remove: fn(&Path) -> std::io::Result<()>) -> Result<()> {
    match remove(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", p.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(feature = "postgres")]
async fn drop_schemas(url: &str, schemas: &[String]) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("cannot connect to PostgreSQL to drop the bench schemas")?;
    for s in schemas {
        // The names are derived from a validated schema parameter plus a fixed suffix;
        // they are quoted as identifiers all the same.
        let sql = format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            s.replace('"', "\"\"")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot drop schema {s}"))?;
    }
    Ok(())
}

#[cfg(not(feature = "postgres"))]
async fn drop_schemas(_url: &str, _schemas: &[String]) -> Result<()> {
    bail!("this nango-sync was built without the `postgres` feature")
}

fn print_table(out: &mut impl Write, r: &Report) -> Result<()> {
    writeln!(
        out,
        "nango-sync bench: {} records (~{} bytes each{}), pages of {}, store {}, upstream {}",
        r.records,
        r.record_bytes_avg,
        r.id_order.map(|o| format!(", {o} ids")).unwrap_or_default(),
        r.page_size,
        r.backend,
        r.upstream.as_deref().unwrap_or("in-process fake")
    )?;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let mb = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
    let rounds =
        std::iter::once(("fresh", &r.fresh)).chain(r.update.as_ref().map(|u| ("update", u)));
    for (name, round) in rounds {
        writeln!(out, "{name}:")?;
        for (what, p) in [
            ("fetch ceiling", &round.fetch),
            ("raw ceiling", &round.raw),
            ("store ceiling", &round.store),
            ("engine", &round.engine),
        ] {
            writeln!(
                out,
                "  {what:<14} {:>10.0} rec/s  {:>8.2} s  cpu {:>5} µs/rec  commit p50 {:>6} ms  p99 {:>6} ms  rss {} MB (baseline {} MB)",
                p.records_per_second,
                p.seconds,
                ms(p.cpu_seconds.map(|c| c * 1e6 / p.records.max(1) as f64)),
                ms(p.commit_p50_ms),
                ms(p.commit_p99_ms),
                mb(p.peak_rss_mb),
                mb(p.baseline_rss_mb),
            )?;
        }
        writeln!(
            out,
            "  store / raw = {:.2}   engine / min(fetch, store) = {:.2}",
            round.store_ratio, round.ratio
        )?;
    }
    writeln!(
        out,
        "no change: {} HTTP request(s) for {} stream(s), {:.3} s",
        r.no_change.http_requests, r.no_change.streams, r.no_change.seconds
    )?;
    writeln!(
        out,
        "feed read: {:.0} rec/s ({} changes in {:.2} s, cpu {} µs/rec); the last commit's {} changes in {:.2} ms (p50 of 20)",
        r.feed.all.records_per_second,
        r.feed.all.records,
        r.feed.all.seconds,
        ms(r.feed
            .all
            .cpu_seconds
            .map(|c| c * 1e6 / r.feed.all.records.max(1) as f64)),
        r.feed.newest_records,
        r.feed.newest_p50_ms
    )?;
    writeln!(
        out,
        "peak RSS during the engine passes: {} MB ({})",
        mb(r.peak_rss_mb),
        r.rss_method
    )?;
    Ok(())
}

/// CPU time of this process, summed over its threads from
/// `/proc/self/task/*/schedstat` (Linux; nanosecond resolution). A thread that exits
/// during a measured span takes its time with it, so a span's figure can be low, never
/// high.
mod cpu {
    /// CPU seconds used so far by the threads alive now.
    pub fn seconds() -> Option<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path().join("schedstat");
            // A thread may exit between the listing and the read: skip it.
            if let Ok(text) = std::fs::read_to_string(path) {
                ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
            }
        }
        Some(ns as f64 / 1e9)
    }

    /// CPU seconds since `began` (from [`seconds`]).
    pub fn since(began: Option<f64>) -> Option<f64> {
        Some((seconds()? - began?).max(0.0))
    }
}

/// Resident memory of this process, from `/proc/self/status` (Linux).
mod rss {
    fn field_mb(name: &str) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Reset the high-water mark to the current RSS; returns the current RSS.
    pub fn reset_peak() -> Option<f64> {
        // Writing 5 to clear_refs resets VmHWM (Linux 4.0 and later).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        field_mb("VmRSS:")
    }

    /// The high-water mark since the last reset.
    pub fn peak() -> Option<f64> {
        field_mb("VmHWM:")
    }
}
