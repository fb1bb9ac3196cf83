//! `deliveries-processor`: see the library docs for inputs, outputs and the delivery guarantee
//! (the state runtime: `runner.processing_guarantee` chooses exactly once or at least once).

use anyhow::Context;
use fleet_deliveries::{DeliveriesConfig, DeliveriesProcessor};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, Table, shutdown};
use fleet_schemas::VehicleProfile;
use fleet_schemas::profile::profile_entry;
use fleet_state::{Store, StoreOptions};

const NAME: &str = "deliveries-processor";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<DeliveriesConfig>(
        NAME,
        "Delivery status, completion by geofence, ETA and late prediction over fleet.deliveries.",
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
    let profiles = if config.app.profiles_topic.is_empty() {
        Table::empty()
    } else {
        // Only the planned route matters here; thresholds keep their defaults.
        let defaults = fleet_domain::rules::Thresholds::default();
        Table::start::<VehicleProfile, _>(
            &runtime,
            &config.app.profiles_topic,
            move |p| profile_entry(p, &defaults),
            token.clone(),
        )
        .await
        .with_context(|| format!("loading profiles from {}", config.app.profiles_topic))?
    };
    let notifications = runtime.encoder(&config.app.notifications_topic).await?;
    let processor = DeliveriesProcessor::new(
        &config.app,
        store,
        profiles,
        notifications,
        &runtime.metrics,
    );
    runtime
        .run_stateful(processor, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
