//! `notifier`: see the library docs for channels, lanes, retries and the delivery guarantee.

use anyhow::Context;
use fleet_notifier::{Notifier, NotifierConfig, runtime_dead_letters};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, shutdown};
use fleet_schemas::{Encoder, Notification};

const NAME: &str = "notifier";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<NotifierConfig>(
        NAME,
        "Delivers fleet.notifications: HTTP webhook (idempotency key, retries, then dead letter), e-mail and log.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    // Dead letters written by the delivery lanes carry the notification re-encoded with the
    // input topic's schema.
    let encoder = Encoder::<Notification>::register(&runtime.registry, &config.app.input_topic)
        .await
        .context("registering the Notification schema")?;
    let sink = runtime_dead_letters(runtime.clone(), encoder);
    let notifier = Notifier::new(&config.app, &runtime.metrics, sink).context("HTTP client")?;
    // The run loop logs its summary when it stops.
    runtime
        .run(notifier, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
