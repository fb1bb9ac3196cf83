//! `anomaly-processor`: see the library docs for the rules, the outputs and the delivery
//! guarantee (the state runtime: `runner.processing_guarantee` chooses exactly once or at
//! least once).

use anyhow::Context;
use fleet_anomaly::{AnomalyConfig, AnomalyEncoders, AnomalyProcessor, profile_entry};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, Table, shutdown};
use fleet_schemas::VehicleProfile;

const NAME: &str = "anomaly-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<AnomalyConfig>(
        NAME,
        "Anomaly detection over fleet.telemetry: rules, statistics, route deviation, correlation.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let token = shutdown::install();
    // Critical anomalies go to the fast lane: no linger.
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    let defaults = config.app.thresholds();
    let profiles = Table::start::<VehicleProfile, _>(
        &runtime,
        &config.app.profiles_topic,
        move |p| profile_entry(p, &defaults),
        token.clone(),
    )
    .await
    .with_context(|| format!("loading profiles from {}", config.app.profiles_topic))?;
    let encoders = AnomalyEncoders {
        anomalies: runtime.encoder(&config.app.anomalies_topic).await?,
        emergencies: runtime.encoder(&config.app.emergencies_topic).await?,
        notifications: runtime.encoder(&config.app.notifications_topic).await?,
    };
    let processor = AnomalyProcessor::new(&config.app, profiles, encoders, &runtime.metrics);
    runtime
        .run_stateful(processor, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
