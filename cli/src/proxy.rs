//! `proxy`: a request to the provider's API through Nango's proxy. The provider's body
//! goes to stdout as it arrives, its status to stderr; a non-2xx answer exits non-zero.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use nango_sync::client::ProxyRequest;

use crate::sync::NangoArgs;

/// Arguments of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The integration id (Provider-Config-Key).
    #[arg(long)]
    integration: String,
    /// The connection id.
    #[arg(long)]
    connection: String,
    /// GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS.
    method: String,
    /// The provider's path, with its query (`/repos/acme/app/issues?state=open`).
    path: String,
    /// A JSON body.
    #[arg(long)]
    data: Option<String>,
    /// A header for the provider, `Name: value` (sent as `Nango-Proxy-Name`); repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// How many times Nango retries a failed provider request (`Retries`).
    #[arg(long)]
    retries: Option<u32>,
    /// More provider statuses Nango retries on, comma-separated (`Retry-On`).
    #[arg(long, value_delimiter = ',')]
    retry_on: Vec<u16>,
    /// Another base URL for the provider (`Base-Url-Override`).
    #[arg(long)]
    base_url_override: Option<String>,
    #[command(flatten)]
    nango: NangoArgs,
}

pub async fn run(args: ProxyArgs) -> Result<ExitCode> {
    let mut request = ProxyRequest::new(&args.method, args.path.clone())?;
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?}: write it as Name:value");
        };
        request = request.header(name.trim(), value.trim());
    }
    if let Some(data) = &args.data {
        let body: serde_json::Value = serde_json::from_str(data).context("--data is not JSON")?;
        request = request.json(&body)?;
    }
    if let Some(r) = args.retries {
        request = request.retries(r);
    }
    if !args.retry_on.is_empty() {
        request = request.retry_on(args.retry_on.iter().copied());
    }
    if let Some(url) = &args.base_url_override {
        request = request.base_url_override(url);
    }
    let client = args.nango.client()?;
    let mut response = client
        .proxy(&args.integration, &args.connection, &request)
        .await?;
    let status = response.status();
    eprintln!("HTTP {status}");
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response.chunk().await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(if response.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
