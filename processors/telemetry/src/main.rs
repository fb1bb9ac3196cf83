//! `telemetry-processor`: see the library docs for inputs, outputs and the delivery guarantee
//! (the state runtime: `runner.processing_guarantee` chooses exactly once or at least once).

use anyhow::Context;
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, shutdown};
use fleet_schemas::WindowAggregate;
use fleet_state::{Store, StoreOptions};
use fleet_telemetry::{Telemetry, TelemetryConfig};

const NAME: &str = "telemetry-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<TelemetryConfig>(
        NAME,
        "Hot vehicle state and event-time windowed aggregation of fleet.telemetry.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
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
    let processor = Telemetry::new(&config.app, encoder, store)?;
    // The run loop logs its summary when it stops.
    runtime
        .run_stateful(processor, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
