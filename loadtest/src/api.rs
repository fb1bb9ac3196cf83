//! `api` scenario: fleet-api's read latency under load.
//!
//! Fills a fresh SQLite state store with `vehicles` vehicle states (as telemetry-processor
//! would), starts `fleet-api` on it (release build, no live-stream topics), then `clients`
//! closed-loop clients `GET /v1/vehicles/{id}` for random vehicles for `duration` seconds.
//! Reports requests/s, latency (p50/p95/p99/max in microseconds, measured by the client over
//! loopback HTTP/1.1 keep-alive), the answers by status and the API process's CPU.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use fleet_state::{StateStore, Store, StoreOptions, VehicleState};
use serde::Serialize;

use crate::mqtt::cpu_seconds;
use crate::telemetry::free_port;

const TOKEN: &str = "loadtest-operator-token-0001";

/// Latency percentiles, microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Micros {
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct ApiReport {
    vehicles: usize,
    clients: usize,
    seconds: f64,
    requests: usize,
    requests_per_s: f64,
    latency_us: Micros,
    statuses: BTreeMap<u16, usize>,
    api_cores: f64,
}

pub(crate) async fn run(
    vehicles: usize,
    clients: usize,
    duration: u64,
) -> anyhow::Result<ApiReport> {
    let dir = std::env::temp_dir().join(testkit::random_name("load-api"));
    std::fs::create_dir_all(&dir)?;
    let state_url = format!("sqlite://{}/state.db", dir.display());
    let store = Store::open(&state_url, StoreOptions::default()).await?;
    let now = fleet_runtime::metrics::now_ms();
    let rows: Vec<VehicleState> = (0..vehicles)
        .map(|v| {
            let mut s = VehicleState::new(
                &format!("VEH-{v:05}"),
                now - (v as i64 % 600) * 1_000,
                4.6 + (v % 1000) as f64 * 1e-4,
                -74.08,
            );
            s.speed_kmh = Some((v % 110) as f64);
            s.event_id = format!("load-{v}");
            s
        })
        .collect();
    for chunk in rows.chunks(1_000) {
        store.upsert_vehicle_states(chunk, now).await?;
    }
    drop(store);
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[tokens]]\ntoken = \"{TOKEN}\"\nname = \"loadtest\"\nrole = \"operator\"\n"),
    )?;
    let bin = crate::release_bin("fleet-api", "fleet-api")?;
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("FLEET_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET_API_TOKENS_FILE", &tokens)
        .env("FLEET_STATE_URL", &state_url)
        .env("FLEET__APP__PROFILES_TOPIC", "")
        .env("FLEET__APP__TELEMETRY_TOPIC", "")
        .env("FLEET__APP__ANOMALIES_TOPIC", "")
        .env("FLEET__APP__EMERGENCIES_TOPIC", "")
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let up = crate::wait_ready(metrics_port, 30).await;
    if !up {
        crate::terminate(&mut child);
        bail!("fleet-api did not become ready");
    }
    let base = format!("http://127.0.0.1:{port}/v1/vehicles/");
    let cpu0 = cpu_seconds(child.id());
    let run = crate::closed_loop(clients, Duration::from_secs(duration), move |c, seq| {
        // A cheap deterministic spread over the vehicles (splitmix64 of client and sequence).
        let mut x = ((c as u64) << 40 | seq as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let v = (x ^ (x >> 31)) as usize % vehicles;
        let req = http.get(format!("{base}VEH-{v:05}")).bearer_auth(TOKEN);
        async move {
            match req.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let _ = r.bytes().await;
                    s
                }
                Err(_) => 0,
            }
        }
    })
    .await?;
    let seconds = run.seconds;
    let cores = (cpu_seconds(child.id()) - cpu0) / seconds;
    crate::terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lat = run.latencies_us;
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let statuses = run.statuses;
    Ok(ApiReport {
        vehicles,
        clients,
        seconds: (seconds * 10.0).round() / 10.0,
        requests: lat.len(),
        requests_per_s: (lat.len() as f64 / seconds).round(),
        latency_us: Micros {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: lat.last().copied().unwrap_or(0),
        },
        statuses,
        api_cores: (cores * 100.0).round() / 100.0,
    })
}
