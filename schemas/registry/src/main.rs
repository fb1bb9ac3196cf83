//! `dev-registry`: the local stack's Confluent-compatible schema registry (see the library docs).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// A small Confluent-compatible schema registry (Avro, persisted to disk) for local use.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FLEET_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Directory holding registry.json (created if missing).
    #[arg(
        long,
        env = "FLEET_REGISTRY_DATA_DIR",
        default_value = "./registry-data"
    )]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let state = fleet_dev_registry::RegistryState::open(&args.data_dir)
        .with_context(|| format!("opening registry data in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {} (is another registry running?)", args.listen))?;
    tracing::info!(listen = %args.listen, data_dir = %args.data_dir.display(), "dev-registry ready");
    fleet_dev_registry::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
