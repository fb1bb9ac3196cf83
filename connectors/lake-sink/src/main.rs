//! `lake-sink`: see the library docs ([`fleet_lake::sink`]) for the delivery guarantee.

use anyhow::Context;
use fleet_lake::{Lake, LakeSinkConfig, Sink};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, shutdown};

const NAME: &str = "lake-sink";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<LakeSinkConfig>(
        NAME,
        "Writes Kafka topics (Avro) to Parquet files in a data lake (local directory or S3), exactly once.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let lake = Lake::open(&config.app.lake_url).context("opening the lake")?;
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    let sink = Sink::new(&runtime, config.app.clone(), lake).context("subscribing")?;
    sink.run(token).await?;
    Ok(())
}
