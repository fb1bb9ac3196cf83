//! `mqtt-bridge`: see the library docs for routing, validation and the delivery guarantee.

use anyhow::Context;
use fleet_mqtt_bridge::downlink::Downlink;
use fleet_mqtt_bridge::uplink::{Encoders, Uplink};
use fleet_mqtt_bridge::{BridgeConfig, mqtt};
use fleet_runtime::kafka::{self, ProducerProfile};
use fleet_runtime::{Runtime, shutdown};

const NAME: &str = "mqtt-bridge";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<BridgeConfig>(
        NAME,
        "MQTT <-> Kafka: device telemetry, emergencies and deliveries in (QoS 1, acknowledged after Kafka), commands out.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let app = &config.app;
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Throughput, token.clone())
        .await
        .context("starting the runtime")?;
    let fast = kafka::producer(&config.kafka, ProducerProfile::Latency)
        .context("creating the latency producer")?;
    let encoders = Encoders {
        telemetry: runtime.encoder(&app.telemetry_topic).await?,
        emergencies: runtime.encoder(&app.emergencies_topic).await?,
        deliveries: runtime.encoder(&app.deliveries_topic).await?,
        dlq: runtime.encoder(&config.runner.dlq_topic).await?,
    };
    let uplink = Uplink::new(
        app,
        &config.runner.dlq_topic,
        runtime.producer.clone(),
        fast,
        encoders,
        runtime.metrics.clone(),
    );
    // The MQTT tasks stop on their own token, after the loops that use them have finished.
    let mqtt_stop = tokio_util::sync::CancellationToken::new();
    let (client, events) = mqtt::start(app, &app.settings(false)?, mqtt_stop.clone())?;
    let max_pending = usize::from(app.receive_maximum) * 2;
    let up = tokio::spawn(uplink.run(
        client,
        events,
        max_pending,
        config.runner.drain_timeout,
        token.clone(),
    ));
    // Ready = the MQTT connections are up; the downlink may legitimately own no partition
    // (more instances than partitions of fleet.commands).
    runtime.metrics.health.consumer_optional();
    let down = if app.downlink {
        let (dclient, devents) = mqtt::start(app, &app.settings(true)?, mqtt_stop.clone())?;
        let downlink = Downlink::new(
            &app.topic_prefix,
            dclient,
            devents,
            app.command_ack_timeout,
            runtime.metrics.clone(),
        );
        let rt = runtime.clone();
        let topic = app.commands_topic.clone();
        let t = token.clone();
        Some(tokio::spawn(async move {
            let r = rt.run(downlink, &[topic.as_str()], t.clone()).await;
            if r.is_err() {
                // A failed downlink stops the whole bridge (exit non-zero, restarted by the
                // supervisor) rather than leaving commands silently undelivered.
                t.cancel();
            }
            r
        }))
    } else {
        None
    };
    tracing::info!(url = %app.mqtt_url, protocol = %app.protocol, downlink = app.downlink, "bridge running");
    let up_result = up.await.context("uplink task")?;
    // Whatever stopped the uplink stops the downlink too.
    token.cancel();
    let down_result = match down {
        Some(h) => Some(h.await.context("downlink task")?),
        None => None,
    };
    mqtt_stop.cancel();
    let summary = up_result.context("uplink")?;
    tracing::info!(
        forwarded = summary.forwarded,
        rejected = summary.rejected,
        "uplink stopped"
    );
    if let Some(r) = down_result {
        // The downlink's run loop logs its own summary.
        r.context("downlink")?;
    }
    Ok(())
}
