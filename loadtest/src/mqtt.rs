//! `mqtt` scenario: devices -> mosquitto -> mqtt-bridge -> Kafka, QoS 1 end to end.
//!
//! 1. **Fixed rate**: `rate` telemetry messages/s for `duration` s from `vehicles` vehicles,
//!    published by the stack's `fleet-simulator` user over `connections` MQTT connections.
//!    Each message carries its *intended* send time (`sentAt`), so a stalled publisher cannot
//!    hide latency (no coordinated omission). A reader on the Kafka topic measures device ->
//!    Kafka latency per record and checks completeness (every sequence number arrived).
//! 2. **Burst**: `burst` messages as fast as the publishers can go; the bridge's throughput is
//!    measured on the Kafka side (first to last record).
//!
//! The report also gives the bridge's own "received from MQTT -> acknowledged by Kafka"
//! latency (its `fleet_stage_latency_seconds` histogram; bucket upper bounds) and the CPU time
//! of mosquitto, the bridge and the Kafka broker during each phase (from /proc), to show where
//! the time goes.
//!
//! ```text
//! cargo build --release -p fleet-loadtest -p fleet-mqtt-bridge
//! target/release/fleet-loadtest mqtt --rate 5000 --duration 60 --burst 200000
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_runtime::testkit;
use fleet_schemas::TelemetryReading;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::door::{Publisher, publisher};
use crate::fleet::{self, Fleet};
use crate::telemetry::{Percentiles, free_port, percentiles};

/// The report.
#[derive(Debug, Serialize)]
pub(crate) struct MqttReport {
    rate_target: usize,
    duration_s: u64,
    vehicles: usize,
    connections: usize,
    sent: usize,
    acked_by_broker: usize,
    in_kafka: usize,
    lost: usize,
    duplicates: usize,
    achieved_publish_rate: f64,
    /// Intended send time -> record read from Kafka.
    device_to_kafka_ms: Percentiles,
    /// Intended send time -> the bridge stamped `ingest_time` (publisher + mosquitto).
    device_to_bridge_ms: Percentiles,
    /// The bridge's own histogram: message received -> Kafka acknowledged (bucket bounds).
    bridge_receive_to_kafka_ack_ms: BucketQuantiles,
    cpu_fixed_rate: CpuShare,
    burst_messages: usize,
    burst_publish_rate: f64,
    burst_kafka_rate: f64,
    cpu_burst: CpuShare,
    /// Panic buttons published during the fixed-rate phase (`--emergency-every`).
    emergencies_sent: usize,
    /// Distinct emergencies whose operations notification arrived on the notifications topic.
    notifications_received: usize,
    /// Intended device send time -> Notification read from Kafka (through the bridge and
    /// emergency-processor, with the telemetry load flowing).
    emergency_to_notification_ms: Percentiles,
    /// emergency-processor's histogram: bridge `ingest_time` -> the emergency is being
    /// processed (bridge produce + broker + fetch), bucket bounds.
    bridge_ingest_to_incident_ms: BucketQuantiles,
}

#[derive(Debug, Serialize, Default)]
pub(crate) struct BucketQuantiles {
    pub(crate) p50_le: f64,
    pub(crate) p99_le: f64,
    pub(crate) count: u64,
}

/// CPU seconds per process over a phase and as a share of one core.
#[derive(Debug, Serialize, Default)]
struct CpuShare {
    wall_s: f64,
    mosquitto_cores: f64,
    bridge_cores: f64,
    kafka_broker_cores: f64,
    loadtest_cores: f64,
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}

pub(crate) fn stack_pid(service: &str) -> Option<u32> {
    std::fs::read_to_string(testkit::state_dir().join(format!("pids/{service}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct CpuProbe {
    pids: [Option<u32>; 4],
    start: [f64; 4],
    at: Instant,
}

impl CpuProbe {
    fn start(bridge: u32) -> Self {
        let pids = [
            stack_pid("mqtt"),
            Some(bridge),
            stack_pid("kafka-1"),
            Some(std::process::id()),
        ];
        let start = pids.map(|p| p.map_or(0.0, cpu_seconds));
        Self {
            pids,
            start,
            at: Instant::now(),
        }
    }

    fn finish(&self) -> CpuShare {
        let wall = self.at.elapsed().as_secs_f64().max(1e-6);
        let used: Vec<f64> = self
            .pids
            .iter()
            .zip(self.start)
            .map(|(p, s)| p.map_or(0.0, |p| (cpu_seconds(p) - s) / wall))
            .collect();
        CpuShare {
            wall_s: wall,
            mosquitto_cores: used[0],
            bridge_cores: used[1],
            kafka_broker_cores: used[2],
            loadtest_cores: used[3],
        }
    }
}

pub(crate) struct Topics {
    pub(crate) notifications: String,
    pub(crate) telemetry: String,
    pub(crate) emergencies: String,
    pub(crate) deliveries: String,
    pub(crate) commands: String,
    pub(crate) dlq: String,
    pub(crate) prefix: String,
}

impl Topics {
    /// Fresh topics named `{scope}.telemetry-…` etc., and the MQTT prefix `test/{run_id}` (the
    /// stack's simulator account may publish under `test/`).
    pub(crate) fn fresh(scope: &str, run_id: &str) -> Self {
        let name = |t: &str| testkit::random_name(&format!("{scope}.{t}"));
        Self {
            notifications: name("notifications"),
            telemetry: name("telemetry"),
            emergencies: name("emergencies"),
            deliveries: name("deliveries"),
            commands: name("commands"),
            dlq: name("dlq"),
            prefix: format!("test/{run_id}"),
        }
    }

    /// Creates the topics (telemetry with 12 partitions, the others and `extra` with 3);
    /// existing ones are left as they are.
    pub(crate) async fn create(&self, extra: &[&str]) {
        testkit::create_topic(&self.telemetry, 12).await;
        for topic in [
            self.emergencies.as_str(),
            &self.deliveries,
            &self.commands,
            &self.dlq,
            &self.notifications,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            testkit::create_topic(topic, 3).await;
        }
    }
}

pub(crate) fn start_bridge(t: &Topics, http_port: u16) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("mqtt-bridge");
    if !bin.exists() {
        bail!(
            "{} not built: cargo build --release -p fleet-mqtt-bridge",
            bin.display()
        );
    }
    let creds = testkit::credentials();
    Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("FLEET_MQTT_BRIDGE_USER", &creds["FLEET_MQTT_BRIDGE_USER"])
        .env(
            "FLEET_MQTT_BRIDGE_PASSWORD",
            &creds["FLEET_MQTT_BRIDGE_PASSWORD"],
        )
        .env("FLEET__APP__CLIENT_ID", testkit::random_name("load-bridge"))
        .env("FLEET__APP__TOPIC_PREFIX", &t.prefix)
        .env("FLEET__APP__TELEMETRY_TOPIC", &t.telemetry)
        .env("FLEET__APP__EMERGENCIES_TOPIC", &t.emergencies)
        .env("FLEET__APP__DELIVERIES_TOPIC", &t.deliveries)
        .env("FLEET__APP__COMMANDS_TOPIC", &t.commands)
        .env("FLEET__RUNNER__DLQ_TOPIC", &t.dlq)
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

pub(crate) fn start_emergency(
    t: &Topics,
    http_port: u16,
    state_url: &str,
    guarantee: &str,
) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("emergency-processor");
    if !bin.exists() {
        bail!(
            "{} not built: cargo build --release -p fleet-emergency",
            bin.display()
        );
    }
    Command::new(&bin)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("FLEET_STATE_URL", state_url)
        .env("FLEET__APP__INPUT_TOPIC", &t.emergencies)
        .env("FLEET__APP__NOTIFICATIONS_TOPIC", &t.notifications)
        .env("FLEET__APP__COMMANDS_TOPIC", &t.commands)
        .env("FLEET__RUNNER__DLQ_TOPIC", &t.dlq)
        .env(
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("load.emergency"),
        )
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("FLEET__RUNNER__PROCESSING_GUARANTEE", guarantee)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Follows `topic` from the beginning in a thread, decoding each record as `T` and handing it
/// to `on_record` with the wall-clock time (ms) it was read, until `stop`.
pub(crate) fn follow<T: fleet_schemas::Record>(
    topic: &str,
    fetch_wait_ms: u32,
    stop: Arc<AtomicBool>,
    on_record: impl FnMut(T, i64) + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    follow_from(topic, "earliest", fetch_wait_ms, stop, on_record)
}

/// Readers ([`follow_from`]) whose group has given them partitions: a reader starting at
/// `latest` sees only what is written after that.
pub(crate) static READERS_ASSIGNED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// [`follow`] from `reset` (`earliest`, or `latest`: only what is written from now on, for
/// topics shared with other runs).
pub(crate) fn follow_from<T: fleet_schemas::Record>(
    topic: &str,
    reset: &str,
    fetch_wait_ms: u32,
    stop: Arc<AtomicBool>,
    mut on_record: impl FnMut(T, i64) + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .set("group.id", testkit::random_name("load-follow"))
        .set("auto.offset.reset", reset)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    c.subscribe(&[topic])?;
    Ok(std::thread::spawn(move || {
        let mut assigned = false;
        while !stop.load(Ordering::Relaxed) {
            let polled = c.poll(Duration::from_millis(100));
            if !assigned && c.assignment().is_ok_and(|a| a.count() > 0) {
                assigned = true;
                READERS_ASSIGNED.fetch_add(1, Ordering::Relaxed);
            }
            let Some(Ok(m)) = polled else {
                continue;
            };
            let now = fleet_runtime::metrics::now_ms();
            // Confluent framing: magic byte and schema id, then the Avro datum.
            if let Some(Ok(r)) = m
                .payload()
                .and_then(|p| p.get(5..))
                .map(fleet_schemas::read_datum::<T>)
            {
                on_record(r, now);
            }
        }
    }))
}

/// Reads notifications: (distinct emergencies notified, latencies in ms).
/// Which records a reader counts: event ids starting with `tag`, read from `reset`
/// (`earliest` on a fresh topic, `latest` on one shared with other runs).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) tag: String,
    pub(crate) reset: &'static str,
}

impl Scope {
    /// A fresh topic: everything on it.
    pub(crate) fn fresh() -> Self {
        Self {
            tag: String::new(),
            reset: "earliest",
        }
    }
}

pub(crate) fn notification_reader(
    topic: &str,
    scope: &Scope,
    out: Arc<Mutex<(std::collections::HashSet<String>, Vec<u64>)>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let tag = scope.tag.clone();
    follow_from(
        topic,
        scope.reset,
        25,
        stop,
        move |n: fleet_schemas::Notification, now| {
            // The injected emergencies (critical anomalies also notify operations).
            let injected = n
                .source_event_id
                .strip_prefix(tag.as_str())
                .is_some_and(|id| id.starts_with("panic-") || id.starts_with("crash-"));
            if n.recipient != "operations" || !injected {
                return;
            }
            if let Ok(mut o) = out.lock()
                && o.0.insert(n.source_event_id.clone())
                && let Some(sent) = n.sent_time
            {
                o.1.push((now - sent).max(0) as u64);
            }
        },
    )
}

/// What the Kafka reader saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) seqs: Vec<bool>,
    pub(crate) distinct: usize,
    pub(crate) total: usize,
    pub(crate) to_kafka: Vec<u64>,
    pub(crate) to_bridge: Vec<u64>,
    /// Records read per second since the reader started.
    pub(crate) per_second: Vec<u64>,
    pub(crate) started: Option<Instant>,
    /// Newest event time read per vehicle.
    pub(crate) newest: std::collections::HashMap<String, i64>,
    /// Every distinct event id read (kept only when `keep_ids`).
    pub(crate) ids: std::collections::HashSet<String>,
    pub(crate) keep_ids: bool,
}

impl Seen {
    fn mark(&mut self, seq: usize) {
        if seq >= self.seqs.len() {
            self.seqs.resize(seq + 1, false);
        }
        if !self.seqs[seq] {
            self.seqs[seq] = true;
            self.distinct += 1;
        }
    }
}

/// Reads `topic` from the start in a thread; records latency for sequence numbers below
/// `measure_below` (the fixed-rate phase).
pub(crate) fn reader(
    topic: &str,
    scope: &Scope,
    seen: Arc<Mutex<Seen>>,
    measure_below: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let tag = scope.tag.clone();
    follow_from(
        topic,
        scope.reset,
        50,
        stop,
        move |r: TelemetryReading, now| {
            let Some(seq) = seq_of(&r.event_id, &tag) else {
                return;
            };
            if let Ok(mut s) = seen.lock() {
                s.total += 1;
                s.mark(seq);
                let sec = s
                    .started
                    .get_or_insert_with(Instant::now)
                    .elapsed()
                    .as_secs() as usize;
                if s.per_second.len() <= sec {
                    s.per_second.resize(sec + 1, 0);
                }
                s.per_second[sec] += 1;
                if s.keep_ids && !s.ids.contains(r.event_id.as_str()) {
                    s.ids.insert(r.event_id.clone());
                }
                match s.newest.get_mut(r.vehicle_id.as_str()) {
                    Some(t) => *t = (*t).max(r.event_time),
                    None => {
                        s.newest.insert(r.vehicle_id.clone(), r.event_time);
                    }
                }
                if seq < measure_below
                    && let Some(sent) = r.sent_time
                {
                    s.to_kafka.push((now - sent).max(0) as u64);
                    s.to_bridge.push((r.ingest_time - sent).max(0) as u64);
                }
            }
        },
    )
}

/// Incidents injected into a fixed-rate phase of `fixed` readings (0: none), one vehicle in
/// every 1000 of each kind: overspeed (120 km/h), a warm reefer (35 °C) and a route deviation
/// (3 km off the planned route) from 10 % to 60 % of the phase, and a device that goes silent
/// from 20 % on. Emergencies: a panic button after every `emergency_every`-th reading, every
/// other one a crash instead.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Plan {
    pub(crate) fixed: usize,
}

impl Plan {
    pub(crate) fn overspeed(self, v: usize) -> bool {
        self.fixed > 0 && v % 1000 == 1
    }
    pub(crate) fn warm(self, v: usize) -> bool {
        self.fixed > 0 && v % 1000 == 2
    }
    pub(crate) fn silent(self, v: usize) -> bool {
        self.fixed > 0 && v % 1000 == 3
    }
    pub(crate) fn deviate(self, v: usize) -> bool {
        self.fixed > 0 && v % 1000 == 4
    }
    /// Vehicles whose planned route is published as a profile (so the route rule watches
    /// them): one in 50, the deviating ones among them.
    pub(crate) fn routed(self, v: usize) -> bool {
        self.fixed > 0 && v % 50 == 4
    }
    fn in_window(self, seq: usize) -> bool {
        seq >= self.fixed / 10 && seq < self.fixed * 6 / 10
    }
    /// Whether reading `seq` is not sent (its vehicle is silent by then).
    pub(crate) fn skipped(self, seq: usize, vehicles: usize) -> bool {
        self.silent(seq % vehicles) && seq >= self.fixed / 5 && seq < self.fixed
    }
    /// Readings skipped in `from..to`.
    pub(crate) fn skipped_in(self, from: usize, to: usize, vehicles: usize) -> usize {
        if self.fixed == 0 {
            return 0;
        }
        (from..to).filter(|s| self.skipped(*s, vehicles)).count()
    }
    /// What is injected into reading `seq` of vehicle `v`.
    pub(crate) fn inject(self, seq: usize, v: usize) -> fleet::Inject {
        let on = self.in_window(seq);
        fleet::Inject {
            overspeed: on && self.overspeed(v),
            warm: on && self.warm(v),
            deviate: on && self.deviate(v),
        }
    }
}

/// The sequence number a reading's event id carries (`{tag}r-{seq}`) when it has `tag`.
pub(crate) fn seq_of(event_id: &str, tag: &str) -> Option<usize> {
    event_id.strip_prefix(tag)?.strip_prefix("r-")?.parse().ok()
}

/// Reading `seq` (vehicle `seq % vehicles`, `t_s` seconds into the run) as the device sends it.
fn payload(
    fleet: &Fleet,
    prefix: &str,
    seq: usize,
    t_s: f64,
    sent_ms: i64,
    plan: Plan,
) -> (String, String) {
    let v = seq % fleet.vehicles();
    let vehicle = fleet.id(v);
    let tag = fleet.tag();
    let topic = format!("{prefix}/{vehicle}/telemetry");
    let r = fleet.reading(v, t_s, (seq / fleet.vehicles()) as u64, plan.inject(seq, v));
    let body = format!(
        r#"{{"vehicleId":"{vehicle}","eventId":"{tag}r-{seq}","timestamp":{sent_ms},"sentAt":{sent_ms},"location":{{"lat":{:.6},"lon":{:.6}}},"speed":{:.1},"heading":{:.0},"cargo_temperature":{:.1},"odometer":{:.3},"ignition":true}}"#,
        r.lat, r.lon, r.speed_kmh, r.heading, r.cargo_temp_c, r.odometer_km,
    );
    (topic, body)
}

/// Emergencies published for sequence numbers below `to`.
pub(crate) fn emergencies_in(to: usize, every: usize) -> usize {
    if every == 0 { 0 } else { to.div_ceil(every) }
}

/// Whether the emergency after reading `seq` (a multiple of `every`) is a crash: every other
/// one, the rest are panic buttons.
fn is_crash(seq: usize, every: usize) -> bool {
    !(seq / every.max(1)).is_multiple_of(2)
}

/// Crashes among the emergencies published for sequence numbers below `to`.
pub(crate) fn crashes_in(to: usize, every: usize) -> usize {
    if every == 0 {
        return 0;
    }
    (0..to)
        .step_by(every)
        .filter(|s| is_crash(*s, every))
        .count()
}

/// The emergency sent after reading `seq` (every `every`-th): a panic button, every other one a
/// crash, where the vehicle is.
fn emergency_payload(
    fleet: &Fleet,
    prefix: &str,
    seq: usize,
    every: usize,
    t_s: f64,
    sent_ms: i64,
) -> (String, String) {
    let v = seq % fleet.vehicles();
    let vehicle = fleet.id(v);
    let tag = fleet.tag();
    let topic = format!("{prefix}/{vehicle}/emergency");
    let r = fleet.reading(
        v,
        t_s,
        (seq / fleet.vehicles()) as u64,
        fleet::Inject::default(),
    );
    let (kind, id) = if is_crash(seq, every) {
        ("crash", "crash")
    } else {
        ("panic_button", "panic")
    };
    let body = format!(
        r#"{{"vehicleId":"{vehicle}","eventId":"{tag}{id}-{seq}","type":"{kind}","severity":"critical","location":{{"lat":{:.6},"lon":{:.6}}},"timestamp":{sent_ms},"sentAt":{sent_ms}}}"#,
        r.lat, r.lon
    );
    (topic, body)
}

/// Publishes a phase over `pubs`, each message stamped with its intended send time.
/// One publishing phase: sequence numbers `from..to` at `rate`/s (0: as fast as possible),
/// a panic button after every `emergency_every`-th reading (0: none); `acked_before` broker
/// acknowledgements came from earlier phases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) rate: usize,
    pub(crate) emergency_every: usize,
    pub(crate) acked_before: usize,
    pub(crate) plan: Plan,
}

pub(crate) async fn publish_range(
    pubs: &[Arc<Publisher>],
    prefix: &str,
    fleet: &Arc<Fleet>,
    phase: Phase,
) -> anyhow::Result<f64> {
    let Phase {
        from,
        to,
        rate,
        emergency_every,
        acked_before,
        plan,
    } = phase;
    let start = Instant::now();
    let start_ms = fleet_runtime::metrics::now_ms();
    let mut handles = Vec::new();
    for (k, p) in pubs.iter().enumerate() {
        let publisher = p.clone();
        let prefix = prefix.to_owned();
        let n = pubs.len();
        let fleet = fleet.clone();
        handles.push(tokio::spawn(async move {
            let mut seq = from + k;
            while seq < to {
                let offset_s = if rate > 0 {
                    (seq - from) as f64 / rate as f64
                } else {
                    0.0
                };
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(offset_s);
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep(due - now).await;
                    }
                }
                let intended = if rate > 0 {
                    start_ms + (offset_s * 1000.0) as i64
                } else {
                    fleet_runtime::metrics::now_ms()
                };
                if plan.skipped(seq, fleet.vehicles()) {
                    seq += n;
                    continue;
                }
                // Fleet time: reading `seq` at the nominal rate (deterministic for a seed).
                let t_s = seq as f64 / if rate > 0 { rate as f64 } else { 5_000.0 };
                let (topic, body) = payload(&fleet, &prefix, seq, t_s, intended, plan);
                if let Err(e) = publisher.send(topic, body).await {
                    eprintln!("publisher {k}: {e:#}");
                    return;
                }
                if emergency_every > 0 && seq.is_multiple_of(emergency_every) {
                    let (topic, body) =
                        emergency_payload(&fleet, &prefix, seq, emergency_every, t_s, intended);
                    if let Err(e) = publisher.send(topic, body).await {
                        eprintln!("publisher {k}: {e:#}");
                        return;
                    }
                }
                seq += n;
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    // Acknowledgements expected in total: earlier phases' plus this one's.
    let want: usize = acked_before + (to - from) + emergencies_in(to - from, emergency_every)
        - plan.skipped_in(from, to, fleet.vehicles());
    let deadline = Instant::now() + Duration::from_secs(120);
    while pubs
        .iter()
        .map(|p| p.acked.load(Ordering::Relaxed))
        .sum::<usize>()
        < want
    {
        if Instant::now() > deadline {
            bail!("the broker did not acknowledge every publish within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((to - from) as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn bucket_quantiles(port: u16, stage: &str) -> BucketQuantiles {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return BucketQuantiles::default();
    };
    let body = resp.text().await.unwrap_or_default();
    let mut buckets: Vec<(f64, u64)> = body
        .lines()
        .filter(|l| {
            l.starts_with("fleet_stage_latency_seconds_bucket")
                && l.contains(&format!("stage=\"{stage}\""))
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((le, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map_or(0, |b| b.1);
    let q = |f: f64| {
        let want = (count as f64 * f).ceil() as u64;
        buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    BucketQuantiles {
        p50_le: q(0.5),
        p99_le: q(0.99),
        count,
    }
}

pub(crate) async fn run(
    rate: usize,
    duration: u64,
    vehicles: usize,
    connections: usize,
    burst: usize,
    emergency_every: usize,
) -> anyhow::Result<MqttReport> {
    let run_id = testkit::random_name("bench").replace('.', "");
    let t = Topics::fresh("load.mqtt", &run_id);
    t.create(&[]).await;
    let fleet = Arc::new(Fleet::new(1, vehicles.max(1)));
    let http_port = free_port();
    let mut bridge = start_bridge(&t, http_port)?;
    if !crate::wait_ready(http_port, 30).await {
        let _ = bridge.kill();
        bail!("mqtt-bridge did not become ready");
    }
    let state_dir = std::env::temp_dir().join(testkit::random_name("load-emergency"));
    let emergency_port = (emergency_every > 0).then(free_port);
    let mut emergency = match emergency_port {
        Some(port) => {
            std::fs::create_dir_all(&state_dir)?;
            let url = format!("sqlite://{}/state.db", state_dir.display());
            Some(start_emergency(&t, port, &url, "at_least_once")?)
        }
        None => None,
    };
    let notified = Arc::new(Mutex::new((std::collections::HashSet::new(), Vec::new())));
    let fixed = rate * duration as usize;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let scope = Scope::fresh();
    let reader = reader(&t.telemetry, &scope, seen.clone(), fixed, stop.clone())?;
    let notif_reader =
        notification_reader(&t.notifications, &scope, notified.clone(), stop.clone())?;
    let mut pubs = Vec::with_capacity(connections);
    for i in 0..connections.max(1) {
        pubs.push(Arc::new(publisher(i).await?));
    }

    eprintln!(
        "fixed rate: {rate}/s for {duration} s from {vehicles} vehicles over {connections} MQTT connections"
    );
    let probe = CpuProbe::start(bridge.id());
    let publish_rate = publish_range(
        &pubs,
        &t.prefix,
        &fleet,
        Phase {
            from: 0,
            to: fixed,
            rate,
            emergency_every,
            acked_before: 0,
            plan: Plan::default(),
        },
    )
    .await?;
    let emergencies_sent = emergencies_in(fixed, emergency_every);
    let wait_all = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.lock().map(|s| s.distinct).unwrap_or(0) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_all(fixed).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while notified.lock().map(|n| n.0.len()).unwrap_or(0) < emergencies_sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_fixed = probe.finish();
    let bridge_hist = bucket_quantiles(http_port, "mqtt_to_kafka_ack").await;
    let incident_hist = match emergency_port {
        Some(port) => bucket_quantiles(port, "ingest_to_incident").await,
        None => BucketQuantiles::default(),
    };
    eprintln!("fixed-rate phase done at {publish_rate:.0} msg/s; burst of {burst}");

    let probe = CpuProbe::start(bridge.id());
    // The burst starts where the broker's acknowledgement count stands (emergencies included).
    let burst_rate = publish_range(
        &pubs,
        &t.prefix,
        &fleet,
        Phase {
            from: fixed,
            to: fixed + burst,
            rate: 0,
            emergency_every: 0,
            acked_before: fixed + emergencies_sent,
            plan: Plan::default(),
        },
    )
    .await?;
    wait_all(fixed + burst).await;
    let cpu_burst = probe.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let _ = notif_reader.join();
    if let Some(e) = emergency.as_mut() {
        crate::terminate(e);
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    crate::terminate(&mut bridge);

    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let sent = fixed + burst;
    let acked = pubs.iter().map(|p| p.acked.load(Ordering::Relaxed)).sum();
    // Burst throughput end to end: from the first publish of the burst until its last record
    // was read from Kafka.
    let burst_kafka_rate = burst as f64 / cpu_burst.wall_s.max(1e-6);
    let report = MqttReport {
        rate_target: rate,
        duration_s: duration,
        vehicles,
        connections,
        sent,
        acked_by_broker: acked,
        in_kafka: s.distinct,
        lost: sent.saturating_sub(s.distinct),
        duplicates: s.total.saturating_sub(s.distinct),
        achieved_publish_rate: publish_rate,
        device_to_kafka_ms: percentiles(s.to_kafka.clone()),
        device_to_bridge_ms: percentiles(s.to_bridge.clone()),
        bridge_receive_to_kafka_ack_ms: bridge_hist,
        cpu_fixed_rate: cpu_fixed,
        burst_messages: burst,
        burst_publish_rate: burst_rate,
        burst_kafka_rate,
        cpu_burst,
        emergencies_sent,
        notifications_received: notified.lock().map(|n| n.0.len()).unwrap_or(0),
        emergency_to_notification_ms: percentiles(
            notified.lock().map(|n| n.1.clone()).unwrap_or_default(),
        ),
        bridge_ingest_to_incident_ms: incident_hist,
    };
    Ok(report)
}
