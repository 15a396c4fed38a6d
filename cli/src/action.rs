//! `action`: run an action of a connection and print its output, or enqueue it in a
//! store's outbox for `serve` to deliver.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nango_sync::client::{ActionRequest, WaitOptions};
use nango_sync::sink::outbox::NewOutboxItem;
use serde_json::value::RawValue;

use crate::serve::parse_duration;
use crate::sync::{NangoArgs, open_sink};

/// Arguments of `action`.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The integration id (Provider-Config-Key).
    #[arg(long)]
    integration: String,
    /// The connection id.
    #[arg(long)]
    connection: String,
    /// The action's name.
    #[arg(long)]
    name: String,
    /// The input, as JSON.
    #[arg(long)]
    input: Option<String>,
    /// Run it asynchronously (`X-Async`) and wait for its result, polling with backoff.
    #[arg(long, conflicts_with = "enqueue")]
    r#async: bool,
    /// With --async: how many times Nango retries a failed run (0 to 5).
    #[arg(long, default_value_t = 0, requires = "async")]
    max_retries: u8,
    /// With --async: how long to wait for the result ("30s", "10m"; default 30m).
    #[arg(long, value_parser = parse_duration, requires = "async")]
    wait: Option<Duration>,
    /// Write the action to the outbox of --sink instead of running it; prints its id.
    #[arg(long, requires = "sink")]
    enqueue: bool,
    /// The store whose outbox --enqueue writes to: sqlite://PATH, sled://DIR or postgres://...
    #[arg(long, requires = "enqueue")]
    sink: Option<String>,
    /// With --enqueue: a model to sync once the action is done (`Model` or
    /// `Model::variant`); repeatable.
    #[arg(long = "then-sync", requires = "enqueue")]
    then_sync: Vec<String>,
    /// With --enqueue: an idempotency key (an item with this key is not enqueued twice).
    #[arg(long, requires = "enqueue")]
    key: Option<String>,
    /// With --enqueue: attempts before the item fails.
    #[arg(long, requires = "enqueue")]
    max_attempts: Option<u32>,
    #[command(flatten)]
    nango: NangoArgs,
}

pub async fn run(args: ActionArgs) -> Result<ExitCode> {
    let input: Option<Box<RawValue>> = args
        .input
        .as_deref()
        .map(|text| RawValue::from_string(text.to_string()))
        .transpose()
        .context("--input is not JSON")?;
    if args.enqueue {
        let Some(url) = &args.sink else {
            bail!("--enqueue needs --sink");
        };
        let mut item = NewOutboxItem::new(&args.integration, &args.connection, &args.name);
        item.input = input
            .as_deref()
            .map(|raw| nango_sync::RawJson::from_trusted(raw.get()));
        item.then_sync = args.then_sync.clone();
        item.key = args.key.clone();
        if let Some(n) = args.max_attempts {
            item.max_attempts = n;
        }
        item.check()?;
        let sink = open_sink(url).await?;
        let stored = sink.outbox_enqueue(item).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::json!({ "id": stored.id }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.nango.client()?;
    let output = if args.r#async {
        let handle = client
            .trigger_action_async(
                &args.integration,
                &args.connection,
                &args.name,
                &input,
                args.max_retries,
            )
            .await
            .map_err(with_payload)?;
        eprintln!("action {} queued; waiting for its result", handle.id);
        let mut options = WaitOptions::default();
        if let Some(w) = args.wait {
            options = options.with_timeout(w);
        }
        client
            .wait_action_raw(&handle.id, &options)
            .await
            .map_err(with_payload)?
    } else {
        client
            .trigger_action_raw(&ActionRequest {
                integration: &args.integration,
                connection: &args.connection,
                action: &args.name,
                input: input.as_deref(),
            })
            .await
            .map_err(with_payload)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{output}")?;
    Ok(ExitCode::SUCCESS)
}

/// An error with Nango's payload (the script's error data) on the same line.
pub fn with_payload(e: nango_sync::Error) -> anyhow::Error {
    match e.nango_payload() {
        Some(payload) => {
            let mut text = payload.to_string();
            if text.len() > 2000 {
                text.truncate(text.floor_char_boundary(2000));
                text.push_str("...");
            }
            anyhow::anyhow!("{e} (payload: {text})")
        }
        None => anyhow::Error::new(e),
    }
}
