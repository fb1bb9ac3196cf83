//! `notifier`: see the library docs for channels, retries and the delivery guarantee.

use anyhow::Context;
use fleet_notifier::{Notifier, NotifierConfig};
use fleet_runtime::kafka::ProducerProfile;
use fleet_runtime::{Runtime, shutdown};

const NAME: &str = "notifier";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<NotifierConfig>(
        NAME,
        "Delivers fleet.notifications: HTTP webhook (idempotency key, retries, then dead letter) and log.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    let notifier = Notifier::new(&config.app, &runtime.metrics).context("HTTP client")?;
    // The run loop logs its summary when it stops.
    runtime
        .run(notifier, &[config.app.input_topic.as_str()], token)
        .await?;
    Ok(())
}
