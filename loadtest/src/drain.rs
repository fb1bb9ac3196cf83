//! `drain` scenario: does a processor's committed position reach the end of a finite backlog?
//!
//! Writes `records` readings of `vehicles` vehicles (2 s apart per vehicle, ending now) to a
//! fresh 12-partition topic, runs `telemetry-processor` or `anomaly-processor` over it in a
//! fresh group and samples, every 250 ms, its outputs (from `/metrics`) and the group's lag as
//! the broker reports it (high watermark minus committed offset, summed over partitions: what
//! `kafka-consumer-groups --describe` shows). Reports when the last input was processed, when
//! the last output appeared, the broker-side lag from then on, and the seconds from the last
//! output to lag 0. Then stops the processor with SIGTERM, starts it again and reports how many
//! inputs the restart processed again (`fleet_processor_reprocessed_records_total`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use serde::Serialize;

use crate::telemetry::{free_port, metric_sum};

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct DrainReport {
    processor: String,
    records: usize,
    vehicles: usize,
    /// Seconds from start to the last input processed.
    all_processed_s: f64,
    /// Seconds from start to the last new output.
    last_output_s: f64,
    /// Seconds from the last output until the broker showed lag 0 on every partition.
    last_output_to_committed_lag_0_s: Option<f64>,
    /// (seconds after the last output, broker-side committed lag) samples.
    committed_lag_after_last_output: Vec<(f64, i64)>,
    /// The processor's own committed-lag metric at the end (sum over partitions).
    metric_lag_end: i64,
    /// Inputs processed again by a restart after SIGTERM.
    restart_reprocessed: i64,
    /// Inputs handled at all by the restarted instance (within 10 s).
    restart_records: i64,
}

fn start(
    bin: &std::path::Path,
    processor: &str,
    input: &str,
    out: &str,
    group: &str,
    state: &str,
    port: u16,
) -> anyhow::Result<Child> {
    let mut c = Command::new(bin);
    c.env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_STATE_URL", state)
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET__APP__INPUT_TOPIC", input)
        .env("FLEET__KAFKA__GROUP_ID", group)
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("FLEET__KAFKA__STATISTICS_INTERVAL", "1s")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if processor == "telemetry-processor" {
        c.env("FLEET__APP__WINDOWS_TOPIC", out);
    } else {
        c.env("FLEET__APP__ANOMALIES_TOPIC", out)
            .env("FLEET__APP__EMERGENCIES_TOPIC", out)
            .env("FLEET__APP__NOTIFICATIONS_TOPIC", out);
    }
    c.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn broker_lag(group: &str, topic: &str) -> anyhow::Result<i64> {
    let (g, t) = (group.to_owned(), topic.to_owned());
    let view = tokio::task::spawn_blocking(move || testkit::group_lag(&g, &t)).await?;
    Ok(view.iter().map(testkit::PartitionLag::lag).sum())
}

pub(crate) async fn run(
    processor: &str,
    records: usize,
    vehicles: usize,
) -> anyhow::Result<DrainReport> {
    let package = match processor {
        "telemetry-processor" => "fleet-telemetry",
        "anomaly-processor" => "fleet-anomaly",
        other => bail!("--processor must be telemetry-processor or anomaly-processor, not {other}"),
    };
    let bin = crate::release_bin(processor, package)?;
    let input = testkit::random_name("load.drain.in");
    testkit::create_topic(&input, 12).await;
    let out = testkit::random_name("load.drain.out");
    testkit::create_topic(&out, 6).await;
    crate::fleet_backlog(&input, records, vehicles).await?;
    let dir = std::env::temp_dir().join(testkit::random_name("load-drain-state"));
    std::fs::create_dir_all(&dir)?;
    let state = format!("sqlite://{}/state.db", dir.display());
    let group = testkit::random_name("load.drain");
    let port = free_port();
    let mut child = start(&bin, processor, &input, &out, &group, &state, port)?;

    let ok = format!("fleet_processor_records_total{{component=\"{processor}\",topic=\"{input}\"");
    let t0 = Instant::now();
    let give_up = t0 + Duration::from_secs(1800);
    let (mut all_processed, mut last_output) = (None, Duration::ZERO);
    let mut outputs = 0;
    let mut samples: Vec<(Duration, i64)> = Vec::new();
    let mut lag_zero_at = None;
    while Instant::now() < give_up {
        let done = metric_sum(port, &ok).await.unwrap_or(0);
        if all_processed.is_none() && done as usize >= records {
            all_processed = Some(t0.elapsed());
        }
        let now_outputs = metric_sum(port, "fleet_processor_outputs_total")
            .await
            .unwrap_or(0);
        if now_outputs != outputs {
            outputs = now_outputs;
            last_output = t0.elapsed();
            lag_zero_at = None;
        }
        let lag = broker_lag(&group, &input).await?;
        samples.push((t0.elapsed(), lag));
        if all_processed.is_some() && lag == 0 && lag_zero_at.is_none() {
            lag_zero_at = Some(t0.elapsed());
        }
        // Done: lag 0 and no new output for 10 s after it.
        if let Some(z) = lag_zero_at
            && t0.elapsed() > z + Duration::from_secs(10)
            && last_output < z
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metric_lag_end = metric_sum(port, "fleet_consumer_lag_records")
        .await
        .unwrap_or(-1);
    crate::terminate(&mut child);

    let port2 = free_port();
    let mut again = start(&bin, processor, &input, &out, &group, &state, port2)?;
    crate::wait_ready(port2, 60).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restart_reprocessed = metric_sum(port2, "fleet_processor_reprocessed_records_total")
        .await
        .unwrap_or(0);
    let restart_records = metric_sum(port2, &ok).await.unwrap_or(0);
    crate::terminate(&mut again);
    let _ = std::fs::remove_dir_all(&dir);

    let Some(all) = all_processed else {
        bail!("{processor} did not process the backlog in time");
    };
    let round = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    Ok(DrainReport {
        processor: processor.to_owned(),
        records,
        vehicles,
        all_processed_s: round(all),
        last_output_s: round(last_output),
        last_output_to_committed_lag_0_s: lag_zero_at.map(|z| round(z.saturating_sub(last_output))),
        committed_lag_after_last_output: samples
            .iter()
            .filter(|(t, _)| *t >= last_output)
            .map(|(t, l)| (round(*t - last_output), *l))
            .collect(),
        metric_lag_end,
        restart_reprocessed,
        restart_records,
    })
}
