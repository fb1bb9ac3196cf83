//! `http` scenario: http-ingest's capacity.
//!
//! Starts `http-ingest` on fresh topics with one dispatch token (no rate limit in the way),
//! then `clients` closed-loop clients post batches of `batch` telemetry readings for
//! `duration` seconds (each sends its next request when the previous one is answered). Every
//! `202` means Kafka acknowledged the records. Reports requests/s, records/s, request latency
//! (p50/p99/max, ms), the answers by status and the ingest process's CPU.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use serde::Serialize;

use crate::mqtt::cpu_seconds;
use crate::telemetry::{Percentiles, free_port, percentiles};

const TOKEN: &str = "loadtest-dispatch-token-0001";

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct HttpReport {
    clients: usize,
    batch: usize,
    seconds: f64,
    requests: usize,
    requests_per_s: f64,
    records_accepted: usize,
    records_per_s: f64,
    latency_ms: Percentiles,
    latency_us_p50: u64,
    statuses: BTreeMap<u16, usize>,
    ingest_cores: f64,
}

pub(crate) async fn run(
    clients: usize,
    batch: usize,
    duration: u64,
    vehicles: usize,
) -> anyhow::Result<HttpReport> {
    let topics: Vec<String> = ["tel", "dlv", "emg", "dlq"]
        .iter()
        .map(|t| testkit::random_name(&format!("load.http.{t}")))
        .collect();
    for t in &topics {
        testkit::create_topic(t, 12).await;
    }
    let dir = std::env::temp_dir().join(testkit::random_name("load-http"));
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\ntoken = \"{TOKEN}\"\ndriver_id = \"loadtest\"\nrate_per_sec = 1e9\nburst = 1000000\n"
        ),
    )?;
    let bin = crate::release_bin("http-ingest", "fleet-http-ingest")?;
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("FLEET_HTTP_INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET_HTTP_TOKENS_FILE", &tokens)
        .env("FLEET__APP__TELEMETRY_TOPIC", &topics[0])
        .env("FLEET__APP__DELIVERIES_TOPIC", &topics[1])
        .env("FLEET__APP__EMERGENCIES_TOPIC", &topics[2])
        .env("FLEET__RUNNER__DLQ_TOPIC", &topics[3])
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
        let _ = child.kill();
        bail!("http-ingest did not become ready");
    }
    let url = format!("http://127.0.0.1:{port}/v1/telemetry");
    let cpu0 = cpu_seconds(child.id());
    let run = crate::closed_loop(clients, Duration::from_secs(duration), move |c, seq| {
        let now = fleet_runtime::metrics::now_ms();
        let body = (0..batch)
            .map(|k| {
                let i = seq * clients * batch + c * batch + k;
                let v = i % vehicles;
                format!(
                    r#"{{"eventId":"lt-{c}-{seq}-{k}","vehicleId":"VEH-{v:05}","timestamp":{now},"location":{{"lat":{},"lon":-74.08}},"speed":{}}}"#,
                    4.6 + (i % 1000) as f64 * 1e-4,
                    i % 110
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let req = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(format!("[{body}]"));
        async move {
            req.send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    })
    .await?;
    let seconds = run.seconds;
    let cores = (cpu_seconds(child.id()) - cpu0) / seconds;
    crate::terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    let lat = run.latencies_us;
    let statuses = run.statuses;
    let requests = lat.len();
    let accepted = statuses.get(&202).copied().unwrap_or(0) * batch;
    let us = percentiles(lat.clone());
    Ok(HttpReport {
        clients,
        batch,
        seconds: (seconds * 10.0).round() / 10.0,
        requests,
        requests_per_s: (requests as f64 / seconds).round(),
        records_accepted: accepted,
        records_per_s: (accepted as f64 / seconds).round(),
        latency_ms: Percentiles {
            p50: us.p50 / 1000,
            p90: us.p90 / 1000,
            p99: us.p99 / 1000,
            max: us.max / 1000,
        },
        latency_us_p50: us.p50,
        statuses,
        ingest_cores: (cores * 100.0).round() / 100.0,
    })
}
