//! `nango-sync`: the command-line tool of the nango-sync engine (crate `nango-sync-cli`).
//!
//! A thin layer over the library: it parses arguments, runs one command, and turns any
//! error into one clear line on stderr and a non-zero exit status. Progress goes to
//! stderr, data to stdout.
//!
//! Every store is built in by default (cargo features `sqlite`, `sled` and `postgres`,
//! which enable the library's), so `--sink` takes `sqlite://`, `sled://` and
//! `postgres://` URLs; a build without one of them says which feature to enable. The
//! `dev-server`, `demo` and `bench` commands serve the fake Nango of
//! `nango-sync-testkit`. Install with `cargo install --path cli` from the repository.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod action;
mod bench;
mod bench_raw;
mod changes;
mod demo;
mod dev_server;
mod history;
mod logging;
mod memory;
mod outbox;
mod output;
mod proxy;
mod repair;
mod serve;
mod serve_cluster;
mod serve_monitor;
mod status;
mod sync;
mod trigger;

/// Keep a local database equal to Nango's records.
#[derive(Debug, Parser)]
#[command(name = "nango-sync", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter (tracing syntax, e.g. `info` or `nango_sync=debug`); also `NANGO_SYNC_LOG`.
    #[arg(long, global = true, env = "NANGO_SYNC_LOG", default_value = "warn")]
    log: String,

    /// Log format on stderr: text (colours only on a terminal) or JSON lines for log
    /// collectors (each line with the stream and run id of its run); also
    /// `NANGO_SYNC_LOG_FORMAT`.
    #[arg(
        long,
        global = true,
        env = "NANGO_SYNC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: logging::LogFormat,

    /// Same as `--log-format json`.
    #[arg(long, global = true, hide = true)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync streams from Nango into a store, from their stored cursors to the end.
    Sync(sync::SyncArgs),
    /// Write a stream's records to stdout as JSON Lines, sorted by id.
    Export(sync::ExportArgs),
    /// Write the store's change feed to stdout as JSON Lines, in sequence order, from a
    /// sequence number or a named consumer's position; --follow waits for new commits.
    Changes(changes::ChangesArgs),
    /// Is my data healthy? Every stream of a store: cursor, counts, last run, last
    /// successful run, lag, Nango's last error, and warnings saying what to do.
    Status(status::StatusArgs),
    /// The runs of a store's streams, newest first.
    History(history::HistoryArgs),
    /// Move a damaged store aside (it is kept) and rebuild it by a full re-read from
    /// Nango of every stream it knew; reports what could not be rebuilt.
    Repair(repair::RepairArgs),
    /// Keep streams fresh: receive Nango's webhooks, poll as a safety net, serve health.
    Serve(Box<serve::ServeArgs>),
    /// Serve a local fake Nango for building against (records API + control API).
    DevServer(dev_server::DevServerArgs),
    /// Offline quick start: sync generated data from an in-process fake Nango into SQLite.
    Demo(demo::DemoArgs),
    /// Measure the engine against its ceilings (fetch alone, store alone) with an
    /// in-process fake Nango: fresh sync, update of every record, no-change run.
    Bench(bench::BenchArgs),
    /// Run an action of a connection and print its output (JSON), or enqueue it in a
    /// store's outbox (`--enqueue --sink URL`) for `serve` to deliver.
    Action(action::ActionArgs),
    /// List the actions of a store's outbox: state, attempts, output or error.
    Outbox(outbox::OutboxArgs),
    /// Send a request to the provider's API through Nango's proxy; the body goes to
    /// stdout, the status to stderr, and a non-2xx answer exits non-zero.
    Proxy(proxy::ProxyArgs),
    /// Run syncs on Nango now (optionally a reset, optionally emptying Nango's cache).
    Trigger(trigger::TriggerArgs),
}

fn main() -> ExitCode {
    memory::limit_arenas();
    let cli = Cli::parse();
    let format = if cli.log_json {
        logging::LogFormat::Json
    } else {
        cli.log_format
    };
    logging::init(&cli.log, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sync(args) => sync::sync(args).await,
            Command::Export(args) => sync::export(args).await,
            Command::Changes(args) => changes::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::History(args) => history::run(args).await,
            Command::Repair(args) => repair::run(args).await,
            Command::Serve(args) => serve::run(*args).await,
            Command::DevServer(args) => dev_server::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Action(args) => action::run(args).await,
            Command::Outbox(args) => outbox::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Trigger(args) => trigger::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}
