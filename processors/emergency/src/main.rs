//! `emergency-processor`: see the library docs for the flow and the delivery guarantee.

use anyhow::Context;
use fleet_emergency::{Emergency, EmergencyConfig};
use fleet_runtime::config::{KafkaConfig, RunnerConfig};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, Table, shutdown};
use fleet_schemas::VehicleProfile;
use fleet_state::{Store, StoreOptions};

const NAME: &str = "emergency-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(mut config) = fleet_runtime::config::from_command_line::<EmergencyConfig>(
        NAME,
        "The emergency fast lane: incidents, severity policy, notifications and camera commands.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    // The fast lane polls the broker more often than the bulk processors (unless configured
    // otherwise). Not lower: every empty fetch costs the broker work (on the SQLite-backed broker
    // this project used before Apache Kafka, ~4 ms of CPU for 6 partitions).
    if config.kafka.fetch_wait == KafkaConfig::default().fetch_wait {
        config.kafka.fetch_wait = std::time::Duration::from_millis(25);
    }
    // Exactly once, outputs become visible at the commit: commit often (an idle lane commits
    // nothing).
    if config.runner.commit_interval == RunnerConfig::default().commit_interval {
        config.runner.commit_interval = std::time::Duration::from_millis(20);
    }
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    let store = Store::open(&config.app.state_url, StoreOptions::default())
        .await
        .with_context(|| format!("opening the state store {}", config.app.state_url))?;
    let profiles =
        Table::start::<VehicleProfile, _>(&runtime, &config.app.profiles_topic, Ok, token.clone())
            .await
            .with_context(|| format!("loading profiles from {}", config.app.profiles_topic))?;
    let notifications = runtime.encoder(&config.app.notifications_topic).await?;
    let commands = runtime.encoder(&config.app.commands_topic).await?;
    let processor = Emergency::new(
        &config.app,
        store,
        profiles,
        notifications,
        commands,
        &runtime.metrics,
    );
    // The run loop logs its summary when it stops.
    runtime
        .run_stateful(processor, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
