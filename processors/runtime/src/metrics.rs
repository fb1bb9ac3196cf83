//! Prometheus metrics, liveness and readiness, served over HTTP.
//!
//! Metric names follow `fleet_<component>_<name>_<unit>`; counters get `_total` on export.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `fleet_processor_records_total` | component, topic, outcome | inputs finished: `ok`, `dead_lettered` |
//! | `fleet_processor_dead_letters_total` | component, reason | records sent to the DLQ |
//! | `fleet_processor_outputs_total` | component, topic | records produced and acknowledged |
//! | `fleet_processor_retries_total` | component, stage | transient failures retried (`decode`, `process`, `produce`) |
//! | `fleet_processor_in_flight_records` | component | inputs whose outputs await acknowledgement |
//! | `fleet_processor_queued_records` | component, stage | inputs accepted but not finished by an asynchronous stage (the notifier's delivery lanes) |
//! | `fleet_buffered_bytes` | component, stage | bytes held in memory for a stage (lake-sink: uncommitted Parquet and rows, stage `lake_commit`) |
//! | `fleet_consumer_lag_records` | component, topic, partition | **committed lag**: high watermark minus the group's committed offset (what `kafka-consumer-groups --describe`, Burrow or KEDA show); with no committed offset yet, minus the low watermark |
//! | `fleet_consumer_fetch_lag_records` | component, topic, partition | fetch lag: high watermark minus the offset of the next record handed to the run loop (how far reading trails; the committed lag can trail further on purpose, e.g. held for open windows) |
//! | `fleet_processor_reprocessed_records_total` | component, topic | inputs at or below a partition's offset already processed by an earlier run (read from the commit metadata): the cost of a restart; 0 after a clean drain |
//! | `fleet_consumer_assigned_partitions` | component | partitions currently assigned |
//! | `fleet_stage_latency_seconds` | component, stage | histogram of a stage's latency (for example `mqtt_to_kafka_ack`) |
//! | `fleet_ready` | component | 1 when `/health/ready` answers 200, else 0 (computed at scrape time) |
//! | `fleet_dependency_up` | component, dependency | 1 while an external dependency (an MQTT connection, ...) is connected |
//! | `fleet_process_cpu_seconds_total` | component | CPU time of the process (user + system, from `/proc/self/stat`) |
//! | `fleet_process_resident_memory_bytes` | component | resident memory of the process |
//!
//! Alerts and recording rules over these live in `deploy/prometheus/rules.yml`, with promtool
//! unit tests beside them (run by `scripts/test.sh`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The metrics of one binary.
#[derive(Debug)]
pub struct Metrics {
    component: &'static str,
    registry: Registry,
    records: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    outputs: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    in_flight: Family<Labels, Gauge>,
    queued: Family<Labels, Gauge>,
    buffered: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    fetch_lag: Family<Labels, Gauge>,
    reprocessed: Family<Labels, Counter>,
    assigned: Family<Labels, Gauge>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    ready: Family<Labels, Gauge>,
    dependency_up: Family<Labels, Gauge>,
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    cpu_ticks_seen: std::sync::atomic::AtomicU64,
    resident_bytes: Gauge,
    /// Readiness inputs.
    pub health: Health,
}

impl Metrics {
    /// Metrics for `component` (the binary's name).
    pub fn new(component: &'static str) -> Arc<Self> {
        let mut registry = Registry::default();
        let records = Family::<Labels, Counter>::default();
        let dead_letters = Family::<Labels, Counter>::default();
        let outputs = Family::<Labels, Counter>::default();
        let retries = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let queued = Family::<Labels, Gauge>::default();
        let buffered = Family::<Labels, Gauge>::default();
        let lag = Family::<Labels, Gauge>::default();
        let fetch_lag = Family::<Labels, Gauge>::default();
        let reprocessed = Family::<Labels, Counter>::default();
        let assigned = Family::<Labels, Gauge>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            // 0.25 ms .. ~16 s
            Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
        });
        registry.register(
            "fleet_processor_records",
            "Input records finished, by outcome",
            records.clone(),
        );
        registry.register(
            "fleet_processor_dead_letters",
            "Records sent to the dead-letter topic, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "fleet_processor_outputs",
            "Output records acknowledged by the broker",
            outputs.clone(),
        );
        registry.register(
            "fleet_processor_retries",
            "Transient failures retried, by stage",
            retries.clone(),
        );
        registry.register(
            "fleet_processor_in_flight_records",
            "Inputs whose outputs await broker acknowledgement",
            in_flight.clone(),
        );
        registry.register(
            "fleet_processor_queued_records",
            "Inputs accepted but not finished by an asynchronous stage, by stage",
            queued.clone(),
        );
        registry.register(
            "fleet_buffered_bytes",
            "Bytes held in memory for a stage, by stage",
            buffered.clone(),
        );
        registry.register(
            "fleet_consumer_lag_records",
            "Committed lag per partition: high watermark minus the committed offset",
            lag.clone(),
        );
        registry.register(
            "fleet_consumer_fetch_lag_records",
            "Fetch lag per partition: high watermark minus the next record handed to the loop",
            fetch_lag.clone(),
        );
        registry.register(
            "fleet_processor_reprocessed_records",
            "Inputs already processed by an earlier run (per the commit metadata), read again",
            reprocessed.clone(),
        );
        registry.register(
            "fleet_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer",
            assigned.clone(),
        );
        registry.register(
            "fleet_stage_latency_seconds",
            "Latency of a pipeline stage, seconds",
            latency.clone(),
        );
        let ready = Family::<Labels, Gauge>::default();
        let dependency_up = Family::<Labels, Gauge>::default();
        let cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let resident_bytes = Gauge::default();
        registry.register(
            "fleet_ready",
            "1 when /health/ready answers 200, else 0 (at scrape time)",
            ready.clone(),
        );
        registry.register(
            "fleet_dependency_up",
            "1 when an external dependency (an MQTT connection, ...) is connected, else 0",
            dependency_up.clone(),
        );
        registry.register(
            "fleet_process_cpu_seconds",
            "CPU time (user + system) used by the process, seconds",
            cpu_seconds.clone(),
        );
        registry.register(
            "fleet_process_resident_memory_bytes",
            "Resident memory of the process, bytes",
            resident_bytes.clone(),
        );
        Arc::new(Self {
            component,
            registry,
            records,
            dead_letters,
            outputs,
            retries,
            in_flight,
            queued,
            buffered,
            lag,
            fetch_lag,
            reprocessed,
            assigned,
            latency,
            ready,
            dependency_up,
            cpu_seconds,
            cpu_ticks_seen: std::sync::atomic::AtomicU64::new(0),
            resident_bytes,
            health: Health::default(),
        })
    }

    fn labels(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut l = Vec::with_capacity(extra.len() + 1);
        l.push(("component", self.component.to_owned()));
        l.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        l
    }

    /// Counter of finished inputs of `topic` with `outcome` (cache the handle on hot paths).
    pub fn records(&self, topic: &str, outcome: &str) -> Counter {
        self.records
            .get_or_create(&self.labels(&[("topic", topic), ("outcome", outcome)]))
            .clone()
    }

    /// Counter of dead letters with `reason`.
    pub fn dead_letters(&self, reason: &str) -> Counter {
        self.dead_letters
            .get_or_create(&self.labels(&[("reason", reason)]))
            .clone()
    }

    /// Counter of acknowledged outputs to `topic`.
    pub fn outputs(&self, topic: &str) -> Counter {
        self.outputs
            .get_or_create(&self.labels(&[("topic", topic)]))
            .clone()
    }

    /// Counter of retries at `stage`.
    pub fn retries(&self, stage: &str) -> Counter {
        self.retries
            .get_or_create(&self.labels(&[("stage", stage)]))
            .clone()
    }

    /// Gauge of in-flight inputs.
    pub fn in_flight(&self) -> Gauge {
        self.in_flight.get_or_create(&self.labels(&[])).clone()
    }

    /// Gauge of inputs queued in the asynchronous stage `stage`.
    pub fn queued(&self, stage: &str) -> Gauge {
        self.queued
            .get_or_create(&self.labels(&[("stage", stage)]))
            .clone()
    }

    /// Gauge of bytes held in memory for `stage`.
    pub fn buffered(&self, stage: &str) -> Gauge {
        self.buffered
            .get_or_create(&self.labels(&[("stage", stage)]))
            .clone()
    }

    /// Sets the committed-lag gauge of one partition.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .get_or_create(&self.labels(&[("topic", topic), ("partition", &partition.to_string())]))
            .set(lag);
    }

    /// Sets the fetch-lag gauge of one partition.
    pub fn set_fetch_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.fetch_lag
            .get_or_create(&self.labels(&[("topic", topic), ("partition", &partition.to_string())]))
            .set(lag);
    }

    /// Drops both lag series of a partition this instance no longer owns (its new owner
    /// reports it).
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let labels = self.labels(&[("topic", topic), ("partition", &partition.to_string())]);
        self.lag.remove(&labels);
        self.fetch_lag.remove(&labels);
    }

    /// Counter of re-processed inputs of `topic` (cache the handle).
    pub fn reprocessed(&self, topic: &str) -> Counter {
        self.reprocessed
            .get_or_create(&self.labels(&[("topic", topic)]))
            .clone()
    }

    /// Histogram of the latency of `stage`, in seconds (cache the handle on hot paths).
    pub fn latency(&self, stage: &str) -> Histogram {
        self.latency
            .get_or_create(&self.labels(&[("stage", stage)]))
            .clone()
    }

    /// Sets the number of assigned partitions.
    pub fn set_assigned(&self, n: usize) {
        self.health.assigned.store(n, Ordering::Relaxed);
        self.assigned.get_or_create(&self.labels(&[])).set(n as i64);
    }

    /// The Prometheus text exposition (scrape-time values refreshed first).
    pub fn encode(&self) -> String {
        self.refresh();
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Metrics {
    /// Sets the values read at scrape time: readiness, dependencies, CPU and memory.
    fn refresh(&self) {
        let ready = self.health.ready(now_ms()).is_ok();
        self.ready
            .get_or_create(&self.labels(&[]))
            .set(i64::from(ready));
        if let Ok(deps) = self.health.deps.lock() {
            for (name, up) in deps.iter() {
                self.dependency_up
                    .get_or_create(&self.labels(&[("dependency", name)]))
                    .set(i64::from(*up));
            }
        }
        if let Some((ticks, rss_pages)) = proc_self() {
            let seen = self.cpu_ticks_seen.swap(ticks, Ordering::Relaxed);
            if ticks > seen {
                self.cpu_seconds
                    .inc_by((ticks - seen) as f64 / CLOCK_TICKS_PER_S);
            }
            self.resident_bytes
                .set(i64::try_from(rss_pages * PAGE_BYTES).unwrap_or(i64::MAX));
        }
    }
}

/// Linux's `USER_HZ` (100 on every mainstream architecture; `sysconf(_SC_CLK_TCK)` without
/// a libc binding).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Page size of `/proc/self/statm` (4 KiB on x86-64 and most arm64 kernels).
const PAGE_BYTES: u64 = 4096;

/// CPU ticks (user + system) and resident pages of this process, from `/proc/self` (Linux;
/// `None` elsewhere).
fn proc_self() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks, rss))
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15; the command name in
/// parentheses may contain spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// What readiness is computed from.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicUsize,
    /// Inputs in flight.
    pub(crate) in_flight: AtomicUsize,
    /// Last time (ms) the loop finished an input or found nothing in flight.
    pub(crate) last_progress_ms: AtomicI64,
    /// Stall timeout in ms.
    pub(crate) stall_timeout_ms: AtomicI64,
    /// Set by binaries whose readiness does not depend on a Kafka consumer assignment.
    no_consumer: AtomicBool,
    /// External dependencies (an MQTT connection, ...) and whether each is up.
    deps: Mutex<Vec<(&'static str, bool)>>,
    /// What the loop is retrying (a transient failure of an input or a timer step), and since
    /// when (ms): not ready meanwhile.
    failing: Mutex<Option<(String, i64)>>,
    /// Whether `failing` is set: clearing it (after every input) skips the lock when it is not.
    failing_set: AtomicBool,
}

impl Health {
    /// Ready = partitions assigned and offsets advancing (nothing stuck in flight longer than
    /// the stall timeout). Returns the reason when not ready.
    pub fn ready(&self, now_ms: i64) -> Result<(), String> {
        if let Ok(deps) = self.deps.lock()
            && let Some((name, _)) = deps.iter().find(|(_, up)| !up)
        {
            return Err(format!("{name} is not connected"));
        }
        if let Ok(f) = self.failing.lock()
            && let Some((why, since)) = f.as_ref()
        {
            return Err(format!(
                "retrying a transient failure for {} ms: {why}",
                now_ms - since
            ));
        }
        if self.assigned.load(Ordering::Relaxed) == 0 && !self.no_consumer.load(Ordering::Relaxed) {
            return Err("no partitions assigned".into());
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let since = now_ms - self.last_progress_ms.load(Ordering::Relaxed);
        let timeout = self.stall_timeout_ms.load(Ordering::Relaxed);
        if in_flight > 0 && timeout > 0 && since > timeout {
            return Err(format!(
                "{in_flight} records in flight without progress for {since} ms"
            ));
        }
        Ok(())
    }

    /// Records progress at `now_ms` (binaries with their own loop call it).
    pub fn progress(&self, now_ms: i64) {
        self.last_progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Readiness no longer requires assigned partitions (a binary without a consumer, or
    /// whose consumer is optional).
    pub fn consumer_optional(&self) {
        self.no_consumer.store(true, Ordering::Relaxed);
    }

    /// The loop is retrying a transient failure (`Some(why)`, e.g. the state store is
    /// unreachable) or is past it (`None`). Not ready while it retries: this instance makes no
    /// progress, and an orchestrator should neither route to it nor count it as healthy
    /// capacity. The first failure's time is kept while the failure repeats.
    pub fn set_failing(&self, why: Option<&str>, now_ms: i64) {
        if why.is_none() && !self.failing_set.load(Ordering::Relaxed) {
            return;
        }
        self.failing_set.store(why.is_some(), Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            match (why, f.as_mut()) {
                (None, _) => *f = None,
                (Some(w), Some((prev, _))) => w.clone_into(prev),
                (Some(w), None) => *f = Some((w.to_owned(), now_ms)),
            }
        }
    }

    /// Records whether the external dependency `name` is up; readiness requires all to be.
    pub fn set_dependency(&self, name: &'static str, up: bool) {
        if let Ok(mut deps) = self.deps.lock() {
            match deps.iter_mut().find(|(n, _)| *n == name) {
                Some(d) => d.1 = up,
                None => deps.push((name, up)),
            }
        }
    }
}

/// Routes: `/metrics`, `/health/live`, `/health/ready`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route("/health/live", get(|| async { "live\n" }))
        .route(
            "/health/ready",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.health.ready(now_ms()) {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    )
                        .into_response(),
                }
            }),
        )
        .with_state(metrics)
}

/// Binds `listen` and serves the routes until `shutdown` fires; returns the bound address.
pub async fn serve(
    limits: &crate::config::HttpConfig,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<Option<std::net::SocketAddr>> {
    let listen = &limits.listen;
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding metrics listener {listen}: {e}"))
    })?;
    let addr = listener.local_addr()?;
    let limits = limits.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, router(metrics), &limits, shutdown).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_carry_readiness_dependencies_cpu_and_memory() {
        let m = Metrics::new("test-proc");
        m.health.set_dependency("mqtt", false);
        let text = m.encode();
        assert!(
            text.contains("fleet_ready{component=\"test-proc\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("fleet_dependency_up{component=\"test-proc\",dependency=\"mqtt\"} 0"),
            "{text}"
        );
        assert!(text.contains("fleet_process_cpu_seconds_total"), "{text}");
        let rss = text
            .lines()
            .find(|l| l.starts_with("fleet_process_resident_memory_bytes "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(rss.is_some_and(|v| v > 0.0), "{text}");
        m.health.set_dependency("mqtt", true);
        m.health.consumer_optional();
        let text = m.encode();
        assert!(
            text.contains("fleet_ready{component=\"test-proc\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn counters_export_with_total_suffix_and_labels() {
        let m = Metrics::new("test-proc");
        m.records("fleet.telemetry", "ok").inc_by(3);
        m.dead_letters("decode_error").inc();
        m.set_lag("fleet.telemetry", 4, 17);
        let text = m.encode();
        assert!(text.contains(
            "fleet_processor_records_total{component=\"test-proc\",topic=\"fleet.telemetry\",outcome=\"ok\"} 3"
        ), "{text}");
        assert!(text.contains(
            "fleet_processor_dead_letters_total{component=\"test-proc\",reason=\"decode_error\"} 1"
        ));
        assert!(text.contains("fleet_consumer_lag_records{component=\"test-proc\",topic=\"fleet.telemetry\",partition=\"4\"} 17"));
    }

    #[test]
    fn readiness_needs_assignment_and_progress() {
        let h = Health::default();
        h.stall_timeout_ms.store(1_000, Ordering::Relaxed);
        assert!(h.ready(0).is_err(), "nothing assigned");
        h.assigned.store(3, Ordering::Relaxed);
        h.progress(10_000);
        assert!(h.ready(10_500).is_ok());
        h.in_flight.store(5, Ordering::Relaxed);
        assert!(h.ready(10_900).is_ok(), "in flight but recent progress");
        assert!(h.ready(11_500).is_err(), "stalled");
        h.in_flight.store(0, Ordering::Relaxed);
        assert!(h.ready(99_000).is_ok(), "idle is not stalled");
        h.set_dependency("mqtt", false);
        assert_eq!(h.ready(99_000), Err("mqtt is not connected".into()));
        h.set_dependency("mqtt", true);
        assert!(h.ready(99_000).is_ok());
    }

    /// A processor retrying a transient failure (its state store is down) makes no progress
    /// and must say so, with the first failure's time, until it is past it.
    #[test]
    fn readiness_goes_false_while_a_transient_failure_is_retried() {
        let h = Health::default();
        h.consumer_optional();
        assert!(h.ready(1_000).is_ok());
        h.set_failing(Some("state store: connection refused"), 1_000);
        h.set_failing(Some("state store: timed out"), 4_000);
        assert_eq!(
            h.ready(5_000),
            Err("retrying a transient failure for 4000 ms: state store: timed out".into())
        );
        h.set_failing(None, 6_000);
        assert!(h.ready(6_000).is_ok());
    }

    #[test]
    fn readiness_without_a_consumer() {
        let h = Health::default();
        assert!(h.ready(0).is_err());
        h.consumer_optional();
        assert!(h.ready(0).is_ok());
    }

    #[test]
    fn latency_histograms_export() {
        let m = Metrics::new("test-proc");
        m.latency("mqtt_to_kafka_ack").observe(0.003);
        let text = m.encode();
        assert!(text.contains("fleet_stage_latency_seconds_count{component=\"test-proc\",stage=\"mqtt_to_kafka_ack\"} 1"), "{text}");
    }
}
