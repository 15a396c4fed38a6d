//! `dev-server`: a local fake Nango for developers building against nango-sync.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nango_sync::{SecretKey, StreamKey};
use nango_sync_testkit::fake::ActionScript;
use nango_sync_testkit::{FakeConfig, FakeNango, GenerateSpec, IdOrder};

/// Arguments of `dev-server`.
#[derive(Debug, Args)]
pub struct DevServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3003")]
    listen: SocketAddr,
    /// Generated records per model.
    #[arg(long, default_value_t = 1000)]
    records: usize,
    /// Seed of the generated data (the same seed gives the same records).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Integration id of the generated streams.
    #[arg(long, default_value = "demo-crm")]
    integration: String,
    /// Connection id of the generated streams.
    #[arg(long, default_value = "acme")]
    connection: String,
    /// Models to generate; repeat for several (default: Contact, Company, Deal).
    #[arg(long = "model")]
    models: Vec<String>,
    /// How the generated ids are formed: `sequential` (`rec-0000001`, ...) or
    /// `scattered` (UUID-shaped, in no order).
    #[arg(long, default_value = "sequential", value_name = "ORDER")]
    id_order: IdOrder,
    /// Use this secret key instead of one derived from the seed.
    #[arg(long, env = "NANGO_DEV_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

pub async fn run(args: DevServerArgs) -> Result<ExitCode> {
    let models = if args.models.is_empty() {
        vec![
            "Contact".to_string(),
            "Company".to_string(),
            "Deal".to_string(),
        ]
    } else {
        args.models.clone()
    };
    let config = FakeConfig {
        listen: args.listen,
        seed: args.seed,
        secret_key: args.secret_key.map(SecretKey::new),
        ..FakeConfig::default()
    };
    let fake = FakeNango::start(config)
        .await
        .with_context(|| format!("cannot serve on {}", args.listen))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "NANGO_HOST={}", fake.url())?;
    writeln!(out, "NANGO_SECRET_KEY={}", fake.secret_key().expose())?;
    for model in &models {
        let stream = StreamKey::new(&args.integration, &args.connection, model.as_str());
        stream.validate()?;
        let spec = GenerateSpec {
            id_order: args.id_order,
            ..GenerateSpec::new(args.records, 1000)
        };
        fake.generate_with(&stream, spec);
        writeln!(
            out,
            "stream integration={} connection={} model={} records={}",
            stream.integration, stream.connection, stream.model, args.records
        )?;
    }
    // Write-back out of the box: one sync per model (its name in lower case), and an
    // action that answers its input.
    for model in &models {
        let name = model.to_lowercase();
        fake.define_sync(&args.integration, &name, &[model.as_str()]);
        writeln!(
            out,
            "sync integration={} name={name} models={model}",
            args.integration
        )?;
    }
    fake.script_action("echo", ActionScript::echo());
    writeln!(out, "action name=echo (answers its input)")?;
    writeln!(
        out,
        "control API: {}/_fake (see the nango_sync_testkit::fake docs); Ctrl-C stops",
        fake.url()
    )?;
    out.flush()?;
    drop(out);
    shutdown_signal().await;
    fake.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
