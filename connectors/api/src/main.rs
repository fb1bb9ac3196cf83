//! `fleet-api`: see the library docs for the routes, auth and the live stream.

use std::path::Path;

use anyhow::Context;
use fleet_api::auth::Tokens;
use fleet_api::live::{self, LiveTopics};
use fleet_api::{Api, ApiConfig};
use fleet_runtime::kafka::{self, ProducerProfile};
use fleet_runtime::{Runtime, Table, shutdown};
use fleet_schemas::VehicleProfile;
use fleet_state::{Store, StoreOptions};

const NAME: &str = "fleet-api";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = fleet_runtime::config::from_command_line::<ApiConfig>(
        NAME,
        "Fleet API: vehicles, windows, incidents, deliveries, a live stream (SSE) and a live map.",
    )
    .context("configuration")?
    else {
        return Ok(());
    };
    let app: ApiConfig = config.app.clone();
    let tokens = Tokens::load(Path::new(&app.tokens_file))?;
    if tokens.is_empty() {
        tracing::warn!(file = %app.tokens_file, "the tokens file lists no token: every request will be refused");
    }
    let token = shutdown::install();
    let runtime = Runtime::start(NAME, &config, ProducerProfile::Latency, token.clone())
        .await
        .context("starting the runtime")?;
    runtime.metrics.health.consumer_optional();
    // Ready once the API answers (the profiles table loads first).
    runtime.metrics.health.set_dependency("api_listener", false);
    let store = Store::open(&app.state_url, StoreOptions::default())
        .await
        .with_context(|| format!("opening the state store {}", app.state_url))?;
    let owners = Table::start::<VehicleProfile, _>(
        &runtime,
        &app.profiles_topic,
        |p| Ok(p.customer_id),
        token.clone(),
    )
    .await
    .with_context(|| format!("loading vehicle owners from {}", app.profiles_topic))?;
    let hub = Api::hub(&app);
    let consumer = kafka::tail_consumer(&config.kafka, NAME).context("live stream consumer")?;
    let follower = tokio::spawn(live::follow(
        consumer,
        runtime.registry.clone(),
        LiveTopics {
            telemetry: app.telemetry_topic.clone(),
            anomalies: app.anomalies_topic.clone(),
            emergencies: app.emergencies_topic.clone(),
        },
        hub.clone(),
        runtime.metrics.clone(),
        token.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(&app.listen)
        .await
        .with_context(|| format!("binding {}", app.listen))?;
    let addr = listener.local_addr()?;
    runtime.metrics.health.set_dependency("api_listener", true);
    let api = Api::new(app, tokens, store, owners, hub, &runtime.metrics);
    tracing::info!(%addr, "fleet-api listening on http://{addr}/v1/ (map: http://{addr}/map#token=...)");
    let t = token.clone();
    // Connection cap, header and request timeouts: `[http]` (fleet_runtime::http).
    fleet_runtime::http::serve(listener, api.router(), &config.http, t)
        .await
        .context("serving")?;
    token.cancel();
    let _ = follower.await;
    tracing::info!("fleet-api stopped");
    Ok(())
}
