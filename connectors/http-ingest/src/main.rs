//! `http-ingest`: see the library docs for the routes, answers and the delivery guarantee.

use std::path::Path;

use anyhow::Context;
use fleet_http_ingest::auth::Tokens;
use fleet_http_ingest::{Api, Encoders, HttpIngestConfig, Producers};
use fleet_runtime::kafka::{self, ProducerProfile};
use fleet_runtime::metrics::now_ms;
use fleet_runtime::{Runtime, shutdown};

const NAME: &str = "http-ingest";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<HttpIngestConfig>(
        NAME,
        "HTTP ingest for drivers' phone apps: telemetry, deliveries and emergencies, answered 202 after Kafka confirmed.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let app = config.app.clone();
    let tokens = Tokens::load(
        Path::new(&app.tokens_file),
        app.rate_per_token,
        app.burst_per_token,
        app.max_batch_records,
        now_ms(),
    )?;
    if tokens.is_empty() {
        tracing::warn!(file = %app.tokens_file, "the tokens file lists no token: every request will be refused");
    }
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Throughput, token.clone())
        .await
        .context("starting the runtime")?;
    let fast = kafka::producer(&config.kafka, ProducerProfile::Latency)
        .context("creating the latency producer")?;
    let encoders = Encoders {
        telemetry: runtime.encoder(&app.telemetry_topic).await?,
        deliveries: runtime.encoder(&app.deliveries_topic).await?,
        emergencies: runtime.encoder(&app.emergencies_topic).await?,
        dlq: runtime.encoder(&config.runner.dlq_topic).await?,
    };
    let producers = Producers {
        bulk: runtime.producer.clone(),
        fast,
    };
    runtime.metrics.health.consumer_optional();
    let listener = tokio::net::TcpListener::bind(&app.listen)
        .await
        .with_context(|| format!("binding {}", app.listen))?;
    let addr = listener.local_addr()?;
    let api = Api::new(
        app,
        tokens,
        producers.clone(),
        encoders,
        &config.runner.dlq_topic,
        runtime.metrics.clone(),
    );
    tracing::info!(%addr, "http-ingest listening on http://{addr}/v1/");
    let t = token.clone();
    // Connection cap, header and request timeouts: `[http]` (fleet_runtime::http).
    fleet_runtime::http::serve(listener, api.router(), &config.http, t)
        .await
        .context("serving")?;
    // Requests in flight were answered (graceful shutdown waits for them); flush what is left.
    for p in [&producers.bulk, &producers.fast] {
        use rdkafka::producer::Producer as _;
        let _ = p.flush(std::time::Duration::from_secs(10));
    }
    tracing::info!("http-ingest stopped");
    Ok(())
}
