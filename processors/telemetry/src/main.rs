//! `telemetry-processor`: see the library docs for inputs, outputs and the delivery guarantee.

use anyhow::Context;
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Cli, Config, Runtime, shutdown};
use fleet_schemas::WindowAggregate;
use fleet_state::{Store, StoreOptions};
use fleet_telemetry::{Telemetry, TelemetryConfig};

const NAME: &str = "telemetry-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_for::<TelemetryConfig>(
        NAME,
        "Hot vehicle state and event-time windowed aggregation of fleet.telemetry.",
    );
    shutdown::init_logging();
    let config = Config::<TelemetryConfig>::load(cli.config.as_deref()).context("configuration")?;
    if cli.print_config {
        println!("{}", config.to_pretty());
        return Ok(());
    }
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Throughput, token.clone())
        .await
        .context("starting the runtime")?;
    let store = Store::open(&config.app.state_url, StoreOptions::default())
        .await
        .with_context(|| format!("opening the state store {}", config.app.state_url))?;
    let encoder = runtime
        .encoder::<WindowAggregate>(&config.app.windows_topic)
        .await
        .context("registering the WindowAggregate schema")?;
    let processor = Telemetry::new(&config.app, &runtime.group_id(), encoder, store)?;
    let summary = runtime
        .run(processor, &[config.app.input_topic.as_str()], token)
        .await?;
    tracing::info!(
        processed = summary.processed,
        dead_lettered = summary.dead_lettered,
        "stopped cleanly"
    );
    Ok(())
}
