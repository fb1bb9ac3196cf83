//! `telemetry` scenario: a fixed-rate simulated fleet through telemetry-processor.
//!
//! Writes `rate` readings/s for `duration` seconds from `vehicles` vehicles (event time = send
//! time), runs `telemetry-processor` on them, and reports:
//! * achieved produce rate, consumer lag over time (from the processor's `/metrics`),
//! * freshness of `vehicle_state`: for sampled vehicles, the time from sending a reading to
//!   seeing it in the state store (p50/p99/max),
//! * then the processor's maximum rate on a backlog next to a bare consumer on the same topic.

use std::collections::{HashMap, VecDeque};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use fleet_schemas::{Encoder, Registry, TelemetryReading};
use fleet_state::{StateStore, Store, StoreOptions};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::{count_topic, producer_config, rate, reading_at, write_all};

/// The report.
#[derive(Debug, Serialize)]
pub(crate) struct TelemetryReport {
    rate_target: usize,
    duration_s: u64,
    vehicles: usize,
    sent: usize,
    achieved_rate: f64,
    lag_max_records: i64,
    lag_end_records: i64,
    lag_samples: Vec<(u64, i64)>,
    state_freshness_ms: Percentiles,
    freshness_samples: usize,
    backlog_records: usize,
    bare_consumer_records_per_s: f64,
    telemetry_max_records_per_s: f64,
    telemetry_over_bare: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

pub(crate) fn percentiles(mut v: Vec<u64>) -> Percentiles {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v.last().copied().unwrap_or(0),
    }
}

fn start_processor(
    input: &str,
    windows: &str,
    state_url: &str,
    http_port: u16,
) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("telemetry-processor");
    if !bin.exists() {
        bail!(
            "{} not built: cargo build --release -p fleet-telemetry",
            bin.display()
        );
    }
    Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_STATE_URL", state_url)
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("FLEET__APP__INPUT_TOPIC", input)
        .env("FLEET__APP__WINDOWS_TOPIC", windows)
        .env("FLEET__RUNNER__TICK_INTERVAL", "250ms")
        .env("FLEET__KAFKA__GROUP_ID", testkit::random_name("load.tele"))
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("FLEET__KAFKA__STATISTICS_INTERVAL", "1s")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

pub(crate) async fn metric_sum(port: u16, prefix: &str) -> Option<i64> {
    metric_sum_at(&format!("http://127.0.0.1:{port}"), prefix).await
}

/// The sum of the metric lines starting with `prefix` at `base`/metrics.
pub(crate) async fn metric_sum_at(base: &str, prefix: &str) -> Option<i64> {
    let body = reqwest::get(format!("{}/metrics", base.trim_end_matches('/')))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64,
    )
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    fleet_runtime::metrics::now_ms()
}

pub(crate) async fn run(
    rate_target: usize,
    duration_s: u64,
    vehicles: usize,
    backlog: usize,
) -> anyhow::Result<TelemetryReport> {
    let input = testkit::random_name("load.tele.in");
    let windows = testkit::random_name("load.tele.windows");
    testkit::create_topic(&input, 12).await;
    testkit::create_topic(&windows, 6).await;
    let state_dir = std::env::temp_dir().join(testkit::random_name("fleet-load-state"));
    std::fs::create_dir_all(&state_dir)?;
    let state_url = format!("sqlite://{}/state.db", state_dir.display());
    let registry = Registry::new(&testkit::registry_url())?;
    let enc = Encoder::<TelemetryReading>::register(&registry, &input)
        .await
        .context("schema (is the stack up?)")?;

    let port = free_port();
    let mut child = start_processor(&input, &windows, &state_url, port)?;
    let store = Store::open(&state_url, StoreOptions::default()).await?;
    // Wait for the processor to join before the clock starts.
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let producer: FutureProducer = producer_config(5).create()?;
    // Sampled vehicles: their sent readings await observation in vehicle_state.
    let sample_every = (vehicles / 50).max(1);
    let mut pending: HashMap<String, VecDeque<(i64, Instant)>> = HashMap::new();
    let mut freshness = Vec::new();
    let mut lag_samples = Vec::new();
    let mut buf = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(duration_s);
    let mut sent = 0usize;
    let mut next_check = Instant::now();
    let mut next_lag = Instant::now();
    let mut inflight = VecDeque::new();
    while Instant::now() < deadline {
        let due = (start.elapsed().as_secs_f64() * rate_target as f64) as usize;
        while sent < due {
            let now = now_ms();
            let r = reading_at(sent, vehicles, now);
            enc.encode_into(&r, &mut buf)?;
            match producer.send_result(
                FutureRecord::to(&input)
                    .key(r.vehicle_id.as_bytes())
                    .payload(&buf),
            ) {
                Ok(f) => inflight.push_back(f),
                Err(_) => break,
            }
            if (sent % vehicles).is_multiple_of(sample_every) {
                pending
                    .entry(r.vehicle_id.clone())
                    .or_default()
                    .push_back((now, Instant::now()));
            }
            sent += 1;
        }
        while inflight.len() > 50_000 {
            if let Some(f) = inflight.pop_front() {
                let _ = f.await;
            }
        }
        if Instant::now() >= next_check {
            next_check += Duration::from_millis(100);
            for (v, q) in pending.iter_mut() {
                if q.is_empty() {
                    continue;
                }
                if let Ok(Some(s)) = store.vehicle_state(v, now_ms()).await {
                    while q.front().is_some_and(|(t, _)| *t <= s.event_time) {
                        if let Some((_, at)) = q.pop_front() {
                            freshness.push(at.elapsed().as_millis() as u64);
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_lag {
            next_lag += Duration::from_secs(5);
            if let Some(lag) = metric_sum(port, "fleet_consumer_lag_records").await {
                lag_samples.push((start.elapsed().as_secs(), lag));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for f in inflight {
        let _ = f.await;
    }
    let achieved = sent as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lag_end = metric_sum(port, "fleet_consumer_lag_records")
        .await
        .unwrap_or(-1);
    crate::terminate(&mut child);

    // Maximum rate on a backlog, next to a bare consumer on the same topic.
    let backlog_topic = testkit::random_name("load.tele.backlog");
    testkit::create_topic(&backlog_topic, 12).await;
    let enc2 = Encoder::<TelemetryReading>::register(&registry, &backlog_topic).await?;
    let base = now_ms();
    write_all(&producer, &backlog_topic, &enc2, backlog, |i| {
        reading_at(i, vehicles, base + (i / vehicles) as i64 * 2_000)
    })
    .await?;
    let t = backlog_topic.clone();
    let (f, l, n) =
        tokio::task::spawn_blocking(move || count_topic(&t, backlog, Duration::from_secs(600)))
            .await??;
    let bare = rate(n, f, l);
    let port2 = free_port();
    let windows2 = testkit::random_name("load.tele.windows2");
    testkit::create_topic(&windows2, 6).await;
    let mut child = start_processor(&backlog_topic, &windows2, &state_url, port2)?;
    let mut first: Option<(Instant, i64)> = None;
    let mut last = (Instant::now(), 0i64);
    let give_up = Instant::now() + Duration::from_secs(600);
    while Instant::now() < give_up {
        let done = metric_sum(port2, "fleet_processor_records_total")
            .await
            .unwrap_or(0);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        last = (Instant::now(), done);
        if done as usize >= backlog {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::terminate(&mut child);
    let tele = match first {
        Some((t0, d0)) => (last.1 - d0) as f64 / last.0.duration_since(t0).as_secs_f64().max(1e-3),
        None => 0.0,
    };
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(TelemetryReport {
        rate_target,
        duration_s,
        vehicles,
        sent,
        achieved_rate: achieved.round(),
        lag_max_records: lag_samples.iter().map(|(_, l)| *l).max().unwrap_or(0),
        lag_end_records: lag_end,
        lag_samples,
        freshness_samples: freshness.len(),
        state_freshness_ms: percentiles(freshness),
        backlog_records: backlog,
        bare_consumer_records_per_s: bare.round(),
        telemetry_max_records_per_s: tele.round(),
        telemetry_over_bare: (tele / bare * 1000.0).round() / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_rank_of_every_sample() {
        // Out of order on purpose: 1..=100.
        let v: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (51, 90, 99, 100));
        let p = percentiles(vec![7]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (7, 7, 7, 7));
        let p = percentiles(Vec::new());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0, 0, 0, 0));
    }
}
