//! A desktop app's use of nango-sync: its data lives in a SQLite file, a timer syncs it
//! from Nango, and the view is refreshed from the change feed (only what changed, never
//! a re-read of everything), resuming where it stopped after a restart.
//!
//! ```sh
//! NANGO_SECRET_KEY=... cargo run --example desktop -- github acme-prod Ticket
//! ```
//!
//! Arguments: integration, connection, model. Environment: `NANGO_SECRET_KEY`,
//! `NANGO_HOST` (default Nango's cloud), `DESKTOP_DB` (default `desktop.db`),
//! `DESKTOP_SYNC_EVERY` (seconds, default 30), `DESKTOP_SYNCS` (stop after this many
//! syncs, once the view has caught up; default: run until Ctrl-C). Try it offline
//! against `nango-sync dev-server`.

use std::io::Write;
use std::time::Duration;

use nango_sync::feed::{FeedPosition, Subscription};
use nango_sync::{Engine, NangoClient, RecordSink, StreamKey, SyncOptions};

/// What the app knows of a record: the fields it shows. Any `serde` type works.
#[derive(Debug, serde::Deserialize)]
pub struct Item {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
}

/// The app's settings.
pub struct Config {
    pub host: String,
    pub secret_key: String,
    pub db: String,
    pub stream: StreamKey,
    pub sync_every: Duration,
    /// Stop after this many syncs (once the view has shown every change).
    pub syncs: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [integration, connection, model] = args.as_slice() else {
        return Err("usage: desktop INTEGRATION CONNECTION MODEL".into());
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let config = Config {
        host: env("NANGO_HOST").unwrap_or_else(|| nango_sync::client::DEFAULT_HOST.into()),
        secret_key: env("NANGO_SECRET_KEY").ok_or("set NANGO_SECRET_KEY")?,
        db: env("DESKTOP_DB").unwrap_or_else(|| "desktop.db".into()),
        stream: StreamKey::new(integration.as_str(), connection.as_str(), model.as_str()),
        sync_every: Duration::from_secs(env("DESKTOP_SYNC_EVERY").map_or(Ok(30), |s| s.parse())?),
        syncs: env("DESKTOP_SYNCS").map(|s| s.parse()).transpose()?,
    };
    run(config, &mut std::io::stdout()).await
}

/// Sync on a timer and print every change to `view` as it is committed.
pub async fn run(config: Config, view: &mut impl Write) -> Result<(), Box<dyn std::error::Error>> {
    let client = NangoClient::builder()
        .host(&config.host)
        .secret_key(config.secret_key)
        .build()?;
    let store = nango_sync::sink::open(&format!("sqlite://{}", config.db)).await?;
    let engine = Engine::new(client, store.clone());
    // The view's position is kept in the store: a restart shows only what is new.
    let mut changes = Subscription::for_consumer(store, "desktop-view").await?;
    let mut timer = tokio::time::interval(config.sync_every);
    let mut syncs = 0;
    loop {
        tokio::select! {
            _ = timer.tick(), if config.syncs.is_none_or(|n| syncs < n) => {
                match engine.sync(&config.stream, &SyncOptions::default()).await {
                    Ok(report) => eprintln!("synced: {} changed", report.counts.changed()),
                    Err(e) => eprintln!("sync failed (next try in {:?}): {e}", config.sync_every),
                }
                syncs += 1;
            }
            // Wakes after each commit that changed records (no polling).
            batch = changes.next_batch() => {
                for change in batch? {
                    match change.deserialize::<Item>()? {
                        Some(item) => writeln!(view, "{} {} {}", change.kind, item.id, item.title.unwrap_or_default())?,
                        None => writeln!(view, "deleted {}", change.id())?,
                    }
                }
                changes.ack().await?;
            }
        }
        if config.syncs.is_some_and(|n| syncs >= n) {
            let last = changes.sink().last_seq().await?;
            if *changes.position() >= FeedPosition::after_commit(last) {
                return Ok(()); // every change committed so far is shown
            }
        }
    }
}
