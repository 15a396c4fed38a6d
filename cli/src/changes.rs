//! `changes`: the store's change feed as JSON Lines on stdout, in sequence order, from a
//! sequence number or a named consumer's stored position, optionally following new
//! commits until SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nango_sync::RecordSink;
use nango_sync::feed::{Change, FeedPosition, StreamFilter, Subscription};
use nango_sync::sink::SharedSink;

use crate::dev_server::shutdown_signal;
use crate::sync::open_sink;

/// Arguments of `changes`.
#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// The store: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long)]
    sink: String,
    /// Start after this sequence number (default 0: every change the store holds).
    #[arg(long, value_name = "SEQ", conflicts_with = "consumer")]
    since: Option<u64>,
    /// A named consumer: start after its stored position, and store the position of
    /// each line once the line is written.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// Keep waiting for new commits until interrupted (SIGINT or SIGTERM).
    #[arg(long)]
    follow: bool,
    /// Only the changes of this integration.
    #[arg(long)]
    integration: Option<String>,
    /// Only the changes of this connection (needs --integration).
    #[arg(long, requires = "integration")]
    connection: Option<String>,
    /// Only the changes of this model (needs --connection).
    #[arg(long, requires = "connection")]
    model: Option<String>,
    /// Only the changes of this sync variant (needs --model; `base` is the default
    /// variant).
    #[arg(long, requires = "model")]
    variant: Option<String>,
}

impl ChangesArgs {
    fn filter(&self) -> StreamFilter {
        StreamFilter {
            integration: self.integration.clone(),
            connection: self.connection.clone(),
            model: self.model.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// How many changes one read of the feed returns (lines are flushed at least once per
/// batch, so a reader of stdout sees them soon).
const BATCH: usize = 500;

pub async fn run(args: ChangesArgs) -> Result<ExitCode> {
    let filter = args.filter();
    let sink = open_sink(&args.sink).await?;
    let subscription = match &args.consumer {
        Some(name) => Subscription::for_consumer(sink.clone(), name.as_str())
            .await
            .with_context(|| format!("cannot read the position of consumer {name:?}"))?,
        None => Subscription::new(sink.clone(), args.since.unwrap_or(0)),
    };
    let mut feed = Feed {
        sink,
        consumer: args.consumer.clone(),
        subscription: subscription.with_filter(filter).with_batch_size(BATCH),
        out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
    };
    if !args.follow {
        loop {
            let batch = feed.subscription.try_next_batch().await?;
            let done = batch.is_empty();
            if !feed.write(&batch).await? {
                return Ok(ExitCode::SUCCESS);
            }
            if done {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        // `next_batch` is cancel-safe: a signal while it waits or reads loses nothing,
        // and lines already written have their positions stored.
        let batch = tokio::select! {
            batch = feed.subscription.next_batch() => batch?,
            () = &mut stop => return Ok(ExitCode::SUCCESS),
        };
        if !feed.write(&batch).await? {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Where the lines go and whose position moves.
struct Feed<W: Write> {
    sink: SharedSink,
    consumer: Option<String>,
    subscription: Subscription<SharedSink>,
    out: W,
}

impl<W: Write> Feed<W> {
    /// Write a batch's lines; with a consumer, store each line's position once the line
    /// is written (flushed), then the batch's end (which moves a filtered consumer past
    /// the changes of other streams). `false` when stdout was closed (`changes | head`).
    async fn write(&mut self, batch: &[Change]) -> Result<bool> {
        for change in batch {
            let line = change.to_json_line();
            if let Err(e) = writeln!(self.out, "{line}") {
                return closed_ok(e);
            }
            if let Some(name) = &self.consumer {
                if let Err(e) = self.out.flush() {
                    return closed_ok(e);
                }
                ack(&self.sink, name, &change.position()).await?;
            }
        }
        if let Err(e) = self.out.flush() {
            return closed_ok(e);
        }
        if self.consumer.is_some() {
            self.subscription
                .ack()
                .await
                .context("cannot store the consumer's position")?;
        }
        Ok(true)
    }
}

async fn ack(sink: &SharedSink, name: &str, position: &FeedPosition) -> Result<()> {
    sink.ack(name, position)
        .await
        .with_context(|| format!("cannot store position {position} of consumer {name:?}"))?;
    Ok(())
}

/// A closed stdout ends the command without error; any other write error is one.
fn closed_ok(e: std::io::Error) -> Result<bool> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(e).context("cannot write to stdout")
    }
}
