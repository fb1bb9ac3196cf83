//! `anomaly` scenario: anomaly-processor's maximum rate on a backlog.
//!
//! Writes `records` readings of a fleet of `vehicles` (2 s apart per vehicle; speeds sweep
//! 0-109 km/h so overspeed and statistical alerts keep raising and clearing) to a fresh
//! 12-partition topic, then runs `anomaly-processor` (default thresholds, sqlite snapshots
//! every 5 s) over it and reports records/s, the processor's CPU and the anomalies emitted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use serde::Serialize;

use crate::mqtt::cpu_seconds;
use crate::telemetry::{free_port, metric_sum};

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct AnomalyReport {
    records: usize,
    vehicles: usize,
    processed: i64,
    seconds: f64,
    records_per_s: f64,
    processor_cores: f64,
    records_per_core_s: f64,
    anomalies_emitted: i64,
}

pub(crate) async fn run(records: usize, vehicles: usize) -> anyhow::Result<AnomalyReport> {
    let input = testkit::random_name("load.anom.in");
    testkit::create_topic(&input, 12).await;
    let outputs = testkit::random_name("load.anom.out");
    testkit::create_topic(&outputs, 6).await;
    crate::fleet_backlog(&input, records, vehicles).await?;

    let bin = crate::release_bin("anomaly-processor", "fleet-anomaly")?;
    let dir = std::env::temp_dir().join(testkit::random_name("load-anom-state"));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let mut child = Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env(
            "FLEET_STATE_URL",
            format!("sqlite://{}/state.db", dir.display()),
        )
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET__APP__INPUT_TOPIC", &input)
        .env("FLEET__APP__ANOMALIES_TOPIC", &outputs)
        .env("FLEET__APP__EMERGENCIES_TOPIC", &outputs)
        .env("FLEET__APP__NOTIFICATIONS_TOPIC", &outputs)
        .env("FLEET__KAFKA__GROUP_ID", testkit::random_name("load.anom"))
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let ok = format!(
        "fleet_processor_records_total{{component=\"anomaly-processor\",topic=\"{input}\",outcome=\"ok\"}}"
    );
    let mut first: Option<(Instant, i64, f64)> = None;
    let mut last = (Instant::now(), 0i64, 0.0);
    let give_up = Instant::now() + Duration::from_secs(900);
    while Instant::now() < give_up {
        let done = metric_sum(port, &ok).await.unwrap_or(0);
        let cpu = cpu_seconds(child.id());
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done, cpu));
        }
        last = (Instant::now(), done, cpu);
        if done as usize >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let emitted = metric_sum(port, "fleet_processor_outputs_total")
        .await
        .unwrap_or(0);
    crate::terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    let Some((t0, d0, c0)) = first else {
        bail!("anomaly-processor processed nothing");
    };
    let seconds = last.0.duration_since(t0).as_secs_f64().max(1e-3);
    let rate = (last.1 - d0) as f64 / seconds;
    let cores = (last.2 - c0) / seconds;
    Ok(AnomalyReport {
        records,
        vehicles,
        processed: last.1,
        seconds: (seconds * 10.0).round() / 10.0,
        records_per_s: rate.round(),
        processor_cores: (cores * 100.0).round() / 100.0,
        records_per_core_s: (rate / cores.max(1e-3)).round(),
        anomalies_emitted: emitted,
    })
}
