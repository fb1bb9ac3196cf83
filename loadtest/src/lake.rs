//! `lake` scenario: lake-sink's end-to-end rate on a backlog, and the files it leaves.
//!
//! Writes `records` readings of a fleet of `vehicles` (2 s apart per vehicle) to a fresh
//! 12-partition topic, then runs `lake-sink` over it into a fresh local lake directory with
//! `max_file_rows` and `commit_interval`, and reports committed rows/s (Kafka -> Avro decode ->
//! Arrow -> Parquet zstd -> file, exactly-once commit protocol included), the sink's CPU, and
//! the sizes of the files it wrote (how many reached `max_file_rows`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_lake::catalog;
use fleet_lake::lake::Lake;
use fleet_runtime::testkit;
use serde::Serialize;

use crate::mqtt::cpu_seconds;
use crate::telemetry::{free_port, metric_sum};

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub(crate) struct LakeReport {
    records: usize,
    vehicles: usize,
    max_file_rows: usize,
    commit_interval_s: u64,
    rows_committed: i64,
    seconds: f64,
    rows_per_s: f64,
    sink_cores: f64,
    rows_per_core_s: f64,
    files: usize,
    files_at_max_rows: usize,
    rows_per_file_min: u64,
    rows_per_file_max: u64,
    bytes_per_file_avg: u64,
    bytes_per_row: f64,
    lake_rows: u64,
}

pub(crate) async fn run(
    records: usize,
    vehicles: usize,
    max_file_rows: usize,
    commit_interval_s: u64,
) -> anyhow::Result<LakeReport> {
    let input = testkit::random_name("load.lake.in");
    testkit::create_topic(&input, 12).await;
    crate::fleet_backlog(&input, records, vehicles).await?;

    let bin = crate::release_bin("lake-sink", "fleet-lake")?;
    let dir = std::env::temp_dir().join(testkit::random_name("load-lake"));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let mut child = Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_LAKE_URL", dir.display().to_string())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET__APP__TOPICS", format!("[\"{input}\"]"))
        .env("FLEET__APP__MAX_FILE_ROWS", max_file_rows.to_string())
        .env(
            "FLEET__APP__COMMIT_INTERVAL",
            format!("{commit_interval_s}s"),
        )
        .env("FLEET__KAFKA__GROUP_ID", testkit::random_name("load.lake"))
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let rows =
        "fleet_processor_records_total{component=\"lake-sink\",topic=\"lake\",outcome=\"rows\"}";
    // The clock starts when the sink is up (before it has read anything), so the figure
    // includes its start-up, the first fetches and the final time-triggered commit.
    let mut start: Option<(Instant, f64)> = None;
    let mut last = (Instant::now(), 0i64, 0.0);
    let give_up = Instant::now() + Duration::from_secs(1800);
    while Instant::now() < give_up {
        let done = metric_sum(port, rows).await;
        let cpu = cpu_seconds(child.id());
        if done.is_some() && start.is_none() {
            start = Some((Instant::now(), cpu));
        }
        let done = done.unwrap_or(0);
        last = (Instant::now(), done, cpu);
        if done as usize >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::terminate(&mut child);
    let Some((t0, c0)) = start else {
        bail!("lake-sink never served its metrics");
    };
    let lake = Lake::open(&dir.display().to_string())?;
    let parts = catalog::list(&lake, std::slice::from_ref(&input), None).await?;
    let mut per_file = Vec::new();
    let mut bytes = 0u64;
    for p in &parts {
        for f in &p.files {
            bytes += f.size;
        }
    }
    for p in &parts {
        for f in &p.files {
            per_file.push((catalog::file_rows(&lake, f).await?, f.size));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let lake_rows: u64 = per_file.iter().map(|f| f.0).sum();
    let seconds = last.0.duration_since(t0).as_secs_f64().max(1e-3);
    let rate = last.1 as f64 / seconds;
    let cores = (last.2 - c0) / seconds;
    Ok(LakeReport {
        records,
        vehicles,
        max_file_rows,
        commit_interval_s,
        rows_committed: last.1,
        seconds: (seconds * 10.0).round() / 10.0,
        rows_per_s: rate.round(),
        sink_cores: (cores * 100.0).round() / 100.0,
        rows_per_core_s: (rate / cores.max(1e-3)).round(),
        files: per_file.len(),
        files_at_max_rows: per_file
            .iter()
            .filter(|f| f.0 as usize == max_file_rows)
            .count(),
        rows_per_file_min: per_file.iter().map(|f| f.0).min().unwrap_or(0),
        rows_per_file_max: per_file.iter().map(|f| f.0).max().unwrap_or(0),
        bytes_per_file_avg: bytes / per_file.len().max(1) as u64,
        bytes_per_row: ((bytes as f64 / lake_rows.max(1) as f64) * 10.0).round() / 10.0,
        lake_rows,
    })
}
