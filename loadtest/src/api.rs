//! `api` scenario: fleet-api's read latency under load.
//!
//! Fills a fresh SQLite state store with `vehicles` vehicle states (as telemetry-processor
//! would), starts `fleet-api` on it (release build, no live-stream topics), then `clients`
//! closed-loop clients `GET /v1/vehicles/{id}` for random vehicles for `duration` seconds.
//! Reports requests/s, latency (p50/p95/p99/max in microseconds, measured by the client over
//! loopback HTTP/1.1 keep-alive), the answers by status and the API process's CPU.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let cpu0 = cpu_seconds(child.id());
    let started = Instant::now();
    let end = started + Duration::from_secs(duration);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, lat, st) = (
            http.clone(),
            base.clone(),
            latencies.clone(),
            statuses.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut local: BTreeMap<u16, usize> = BTreeMap::new();
            // A cheap deterministic spread over the vehicles (LCG), different per client.
            let mut x = 0x9e37_79b9_u64.wrapping_mul(c as u64 + 1);
            let mut url = String::with_capacity(base.len() + 10);
            while Instant::now() < end {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let v = (x >> 33) as usize % vehicles;
                url.clear();
                url.push_str(&base);
                url.push_str(&format!("VEH-{v:05}"));
                let t0 = Instant::now();
                let status = match http.get(&url).bearer_auth(TOKEN).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                mine.push(t0.elapsed().as_micros() as u64);
                *local.entry(status).or_default() += 1;
            }
            if let Ok(mut l) = lat.lock() {
                l.extend(mine);
            }
            if let Ok(mut s) = st.lock() {
                for (k, n) in local {
                    *s.entry(k).or_default() += n;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cores = (cpu_seconds(child.id()) - cpu0) / seconds;
    crate::terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lat = std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let statuses = statuses
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
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
