//! `passthrough-processor`: see the library docs for inputs, outputs and guarantees.

use anyhow::Context;
use fleet_passthrough::{Passthrough, PassthroughConfig};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, shutdown};
use fleet_schemas::TelemetryReading;

const NAME: &str = "passthrough-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<PassthroughConfig>(
        NAME,
        "Forwards valid TelemetryReadings to an output topic; dead-letters invalid ones.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Throughput, token.clone())
        .await
        .context("starting the runtime")?;
    let encoder = runtime
        .encoder::<TelemetryReading>(&config.app.output_topic)
        .await
        .context("registering the output schema")?;
    let processor =
        Passthrough::new(&config.app.output_topic, encoder).dedupe(config.app.dedupe_ids);
    let topics = [config.app.input_topic.as_str()];
    // The run loops log their summary when they stop.
    if config.app.dedupe_ids > 0 || config.runner.exactly_once() {
        runtime.run_stateful(processor, &topics, token).await?;
    } else {
        runtime.run(processor, &topics, token).await?;
    }
    Ok(())
}
