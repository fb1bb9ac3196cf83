//! `demo` scenario: the whole pipeline under a simulated fleet, with an audit and a report.
//!
//! Starts, on fresh topics: `mqtt-bridge`, `telemetry-processor`, `anomaly-processor`,
//! `emergency-processor` and `lake-sink` (release builds; one SQLite state store, a local
//! lake directory). Then `vehicles` vehicles publish over MQTT QoS 1 at `rate` readings/s for
//! `duration` s, each message stamped with its *intended* send time (no coordinated
//! omission), with injected incidents ([`Plan`]): panic buttons every `emergency_every`
//! readings, overspeed, a warm reefer and a device going silent (one vehicle in every 1000 of
//! each). The audit afterwards:
//!
//! * every sent reading is in the telemetry topic (`lost`, `duplicates`) and in the lake:
//!   every event id read from Kafka is in exactly one committed Parquet row, and the lake holds
//!   nothing else (`lake_missing`, `lake_duplicates`, `lake_unexpected`; `lake_rows` counts);
//! * every panic button produced its operations notification (`notifications_received`),
//!   latency intended send -> notification read from Kafka;
//! * every injected incident raised its alert (`alerts_expected` / `alerts_received`, by
//!   vehicle and kind) and no other alert was raised (`alerts_unexpected`);
//! * `vehicle_state` holds each vehicle's last reading (`state_mismatches`); latency reading ->
//!   `vehicle_state` for 50 sampled vehicles (polled every 100 ms: 100 ms resolution);
//! * throughput per second (read from Kafka) and consumer lag of each processor over time;
//!   CPU per process (broker, mosquitto, registry, bridge, each processor, the load tester).
//!
//! Writes `report.json` and `report.html` (plots drawn by inline script, no network) to `out`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_lake::{Lake, catalog};
use fleet_runtime::testkit;
use fleet_schemas::{Anomaly, AnomalyState};
use fleet_state::{StateStore, Store, StoreOptions};
use serde::Serialize;

use crate::door::{Transport, kafka_publisher, publisher};
use crate::fleet::Fleet;
use crate::mqtt::{
    Phase, Plan, READERS_ASSIGNED, Scope, Seen, Topics, cpu_seconds, crashes_in, emergencies_in,
    follow_from, notification_reader, publish_range, reader, stack_pid, start_bridge,
    start_emergency,
};
use crate::telemetry::{Percentiles, free_port, metric_sum_at, percentiles};

/// Latencies of the report, ms.
#[derive(Debug, Serialize)]
pub(crate) struct Latencies {
    emergency_to_notification: Percentiles,
    reading_to_state: Percentiles,
    device_to_kafka: Percentiles,
}

/// The report (`report.json`).
#[derive(Debug, Serialize)]
pub(crate) struct DemoReport {
    rate_target: usize,
    duration_s: u64,
    vehicles: usize,
    /// The fleet's seed (same seed, same readings).
    seed: u64,
    /// How the devices reached Kafka.
    transport: Transport,
    /// Vehicles whose planned route was published as a profile (the route rule watches them).
    routes_published: usize,
    /// Vehicles driving each corridor.
    corridors: BTreeMap<&'static str, usize>,
    sent: usize,
    accepted: usize,
    lost: usize,
    duplicates: usize,
    achieved_rate: f64,
    lake_rows: u64,
    /// Event ids read from Kafka that no committed lake file holds.
    lake_missing: usize,
    /// Event ids held more than once by the lake.
    lake_duplicates: usize,
    /// Event ids in the lake that the telemetry topic does not hold.
    lake_unexpected: usize,
    lake_url: String,
    /// Panic buttons and crashes (every other emergency is a crash).
    emergencies_injected: usize,
    crashes_injected: usize,
    notifications_received: usize,
    alerts_expected: usize,
    alerts_received: usize,
    alerts_missing: Vec<String>,
    /// Raised alerts nothing injected explains.
    alerts_unexpected: Vec<String>,
    /// Alerts an injection explains besides its own (statistical outliers of an overspeed or
    /// a warm reefer).
    alerts_also: Vec<String>,
    state_vehicles_checked: usize,
    state_mismatches: usize,
    latency_ms: Latencies,
    /// Records read from the telemetry topic in each second of the run.
    throughput_per_s: Vec<u64>,
    /// (second, total consumer lag) of each processor, sampled every second.
    lag: BTreeMap<String, Vec<(u64, i64)>>,
    /// Device -> Kafka latency histogram: (upper bound ms, count).
    latency_histogram_ms: Vec<(u64, u64)>,
    /// CPU cores used by each process over the fixed-rate phase.
    cpu_cores: BTreeMap<String, f64>,
    passed: bool,
}

struct Proc {
    name: &'static str,
    child: Child,
    port: u16,
}

fn spawn(
    name: &'static str,
    package: &str,
    env: &[(&str, String)],
    port: u16,
) -> anyhow::Result<Proc> {
    let bin = crate::release_bin(name, package)?;
    let mut cmd = Command::new(&bin);
    cmd.env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET__KAFKA__CREATE_TOPICS", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc { name, child, port })
}

/// Log-spaced histogram bounds, ms.
const BOUNDS: [u64; 16] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    60_000,
    u64::MAX,
];

fn histogram(v: &[u64]) -> Vec<(u64, u64)> {
    let mut h: Vec<(u64, u64)> = BOUNDS.iter().map(|b| (*b, 0)).collect();
    for x in v {
        if let Some(slot) = h.iter_mut().find(|(b, _)| x <= b) {
            slot.1 += 1;
        }
    }
    h
}

/// Publishes profiles, Avro-encoded as fleetctl does: the planned route of every vehicle
/// `plan.routed` picks (so the route rule watches them), and a 20 s offline threshold for the
/// devices that go silent. Returns how many routes.
async fn publish_profiles(fleet: &Fleet, plan: Plan, topic: &str) -> anyhow::Result<usize> {
    let registry = fleet_schemas::Registry::new(&testkit::registry_url())?;
    let encoder =
        fleet_schemas::Encoder::<fleet_schemas::VehicleProfile>::register(&registry, topic)
            .await
            .context("registering the VehicleProfile schema")?;
    let now = fleet_runtime::metrics::now_ms();
    let mut records = Vec::new();
    for v in (0..fleet.vehicles()).filter(|v| plan.routed(*v) || plan.silent(*v)) {
        let vehicle_id = fleet.id(v);
        let profile = fleet_schemas::VehicleProfile {
            event_id: fleet_schemas::ids::derived_id(&["demo-profile", &vehicle_id]),
            vehicle_id: vehicle_id.clone(),
            updated_at: now,
            customer_id: None,
            cargo_temp_min_c: None,
            cargo_temp_max_c: None,
            speed_limit_kmh: None,
            // Silent devices are offline after 20 s (an external pipeline's default is 5 min).
            offline_after_ms: plan.silent(v).then_some(20_000),
            route_corridor_m: None,
            route: if plan.routed(v) {
                fleet
                    .corridor(v)
                    .points
                    .iter()
                    .map(|(lat, lon)| fleet_schemas::Waypoint {
                        lat: *lat,
                        lon: *lon,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            geofences: Vec::new(),
            contacts: Vec::new(),
        };
        records.push((vehicle_id.into_bytes(), encoder.encode(&profile)?));
    }
    testkit::populate_topic(topic, &records).await;
    Ok((0..fleet.vehicles()).filter(|v| plan.routed(*v)).count())
}

impl DemoReport {
    /// Whether the audit passed.
    pub(crate) fn passed(&self) -> bool {
        self.passed
    }
}

/// Starts the pipeline on the demo's fresh topics: the bridge (MQTT transport), then
/// emergency-, telemetry- and anomaly-processor and lake-sink (release builds).
fn start_pipeline(
    procs: &mut Vec<Proc>,
    transport: Transport,
    t: &Topics,
    (anomalies, windows, profiles): (&str, &str, &str),
    state_url: &str,
    lake_url: &str,
    guarantee: &str,
) -> anyhow::Result<()> {
    let state_url = state_url.to_owned();
    let lake_url = lake_url.to_owned();
    if transport == Transport::Mqtt {
        let bridge_port = free_port();
        procs.push(Proc {
            name: "mqtt-bridge",
            child: start_bridge(t, bridge_port)?,
            port: bridge_port,
        });
    }
    let emergency_port = free_port();
    procs.push(Proc {
        name: "emergency-processor",
        child: start_emergency(t, emergency_port, &state_url, guarantee)?,
        port: emergency_port,
    });
    let common = |group: &str| {
        vec![
            ("FLEET_STATE_URL", state_url.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", t.dlq.clone()),
            ("FLEET__KAFKA__GROUP_ID", testkit::random_name(group)),
            ("FLEET__RUNNER__PROCESSING_GUARANTEE", guarantee.to_owned()),
        ]
    };
    let mut env = common("demo.telemetry");
    env.extend([
        ("FLEET__APP__INPUT_TOPIC", t.telemetry.clone()),
        ("FLEET__APP__WINDOWS_TOPIC", windows.to_owned()),
    ]);
    procs.push(spawn(
        "telemetry-processor",
        "fleet-telemetry",
        &env,
        free_port(),
    )?);
    let mut env = common("demo.anomaly");
    env.extend([
        ("FLEET__APP__INPUT_TOPIC", t.telemetry.clone()),
        ("FLEET__APP__ANOMALIES_TOPIC", anomalies.to_owned()),
        ("FLEET__APP__EMERGENCIES_TOPIC", t.emergencies.clone()),
        ("FLEET__APP__NOTIFICATIONS_TOPIC", t.notifications.clone()),
        ("FLEET__APP__PROFILES_TOPIC", profiles.to_owned()),
        ("FLEET__APP__SUSTAIN", "10s".into()),
        ("FLEET__APP__OFFLINE_AFTER", "20s".into()),
        ("FLEET__APP__IDLE_TIMEOUT", "10s".into()),
    ]);
    procs.push(spawn(
        "anomaly-processor",
        "fleet-anomaly",
        &env,
        free_port(),
    )?);
    let mut env = common("demo.lake");
    // lake-sink keeps its own exactly-once protocol (its position lives in the lake).
    env.retain(|(k, _)| *k != "FLEET__RUNNER__PROCESSING_GUARANTEE");
    env.extend([
        ("FLEET_LAKE_URL", lake_url.clone()),
        ("FLEET__APP__TOPICS", format!("[\"{}\"]", t.telemetry)),
        ("FLEET__APP__COMMIT_INTERVAL", "5s".into()),
    ]);
    procs.push(spawn("lake-sink", "fleet-lake", &env, free_port())?);
    Ok(())
}

pub(crate) struct DemoArgs {
    pub(crate) rate: usize,
    pub(crate) duration: u64,
    pub(crate) vehicles: usize,
    pub(crate) connections: usize,
    pub(crate) emergency_every: usize,
    pub(crate) seed: u64,
    pub(crate) transport: Transport,
    /// `None`: start the pipeline on fresh topics; `Some`: use one that is already running.
    pub(crate) external: Option<External>,
    /// (not external) The processors' state store; `None`: a fresh SQLite file under `out`.
    /// A `scylla://` URL runs the demo with its state in Cassandra/ScyllaDB (`demo.sh --state`).
    pub(crate) state: Option<String>,
    /// (not external) `runner.processing_guarantee` of the stateful processors.
    pub(crate) guarantee: String,
    pub(crate) out: PathBuf,
}

/// A pipeline that is already running (`docker compose up`): its topics, state store, lake
/// and the processors' metrics endpoints. This run's records are told from everyone else's by
/// a run tag at the start of every vehicle and event id; readers start at the topics' end.
#[derive(Debug, Clone)]
pub(crate) struct External {
    pub(crate) telemetry: String,
    pub(crate) emergencies: String,
    pub(crate) anomalies: String,
    pub(crate) notifications: String,
    pub(crate) profiles: String,
    pub(crate) state_url: String,
    pub(crate) lake_url: String,
    /// The MQTT topic prefix the pipeline's bridge subscribes to (MQTT transport).
    pub(crate) mqtt_prefix: String,
    /// (processor, metrics URL) for consumer lag.
    pub(crate) metrics: Vec<(String, String)>,
}

pub(crate) async fn run(a: DemoArgs) -> anyhow::Result<DemoReport> {
    let DemoArgs {
        rate,
        duration,
        vehicles,
        connections,
        emergency_every,
        seed,
        transport,
        external,
        state,
        guarantee,
        out,
    } = a;
    if vehicles < 4 {
        bail!("--vehicles must be at least 4 (incidents are injected on vehicles 1, 2 and 3)");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let run_id = testkit::random_name("demo").replace('.', "");
    let (t, anomalies, windows, profiles, scope) = match &external {
        None => {
            let t = Topics::fresh("demo", &run_id);
            let (anomalies, windows, profiles) = (
                testkit::random_name("demo.anomalies"),
                testkit::random_name("demo.windows"),
                testkit::random_name("demo.profiles"),
            );
            t.create(&[&anomalies, &windows, &profiles]).await;
            (t, anomalies, windows, profiles, Scope::fresh())
        }
        Some(x) => {
            let t = Topics {
                notifications: x.notifications.clone(),
                telemetry: x.telemetry.clone(),
                emergencies: x.emergencies.clone(),
                deliveries: String::new(),
                commands: String::new(),
                dlq: String::new(),
                prefix: x.mqtt_prefix.clone(),
            };
            // Short and unique: "d" and the run name's random suffix.
            let tag = format!("d{}-", run_id.rsplit('-').next().unwrap_or(&run_id));
            let scope = Scope {
                tag,
                reset: "latest",
            };
            (
                t,
                x.anomalies.clone(),
                String::new(),
                x.profiles.clone(),
                scope,
            )
        }
    };
    let fleet = Arc::new(Fleet::tagged(seed, vehicles, &scope.tag));
    let plan = Plan {
        fixed: rate * duration as usize,
    };
    let routed = publish_profiles(&fleet, plan, &profiles).await?;
    let (state_url, lake_url) = match &external {
        None => {
            let state_dir = out.join("state");
            let _ = std::fs::remove_dir_all(&state_dir);
            std::fs::create_dir_all(&state_dir)?;
            let lake_dir = out.join("lake");
            let _ = std::fs::remove_dir_all(&lake_dir);
            std::fs::create_dir_all(&lake_dir)?;
            (
                state.unwrap_or_else(|| format!("sqlite://{}/state.db", state_dir.display())),
                lake_dir.display().to_string(),
            )
        }
        Some(x) => (x.state_url.clone(), x.lake_url.clone()),
    };

    // Readers first (their consumer groups join while the pipeline starts): telemetry
    // (completeness, device -> Kafka), notifications, alerts.
    let fixed = plan.fixed;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen {
        keep_ids: true,
        ..Seen::default()
    }));
    let tele_reader = reader(&t.telemetry, &scope, seen.clone(), fixed, stop.clone())?;
    let notified = Arc::new(Mutex::new((std::collections::HashSet::new(), Vec::new())));
    let notif_reader =
        notification_reader(&t.notifications, &scope, notified.clone(), stop.clone())?;
    let alerts = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let alert_reader = {
        let (alerts, tag) = (alerts.clone(), scope.tag.clone());
        follow_from(
            &anomalies,
            scope.reset,
            100,
            stop.clone(),
            move |a: Anomaly, _| {
                if a.state == AnomalyState::Raised
                    && a.vehicle_id.starts_with(tag.as_str())
                    && let Ok(mut s) = alerts.lock()
                {
                    s.insert(format!("{}:{:?}", a.vehicle_id, a.kind));
                }
            },
        )?
    };
    // The pipeline.
    let mut procs: Vec<Proc> = Vec::new();
    if external.is_none() {
        start_pipeline(
            &mut procs,
            transport,
            &t,
            (&anomalies, &windows, &profiles),
            &state_url,
            &lake_url,
            &guarantee,
        )?;
    }
    let mut not_ready = None;
    for p in &procs {
        if !crate::wait_ready(p.port, 60).await {
            not_ready = Some(p.name);
            break;
        }
    }
    if let Some(name) = not_ready {
        for p in &mut procs {
            crate::terminate(&mut p.child);
        }
        bail!("{name} did not become ready");
    }
    if !procs.is_empty() {
        eprintln!(
            "pipeline up: {}",
            procs.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        );
    }

    // Samplers: reading -> vehicle_state, and consumer lag, every 100 ms / 1 s.
    let store = Store::open(&state_url, StoreOptions::default()).await?;
    let sampled: Vec<String> = (0..vehicles)
        .step_by((vehicles / 50).max(1))
        .filter(|v| !plan.silent(*v))
        .map(|v| fleet.id(v))
        .collect();
    let sampler = {
        let (store, stop, sampled) = (store.clone(), stop.clone(), sampled.clone());
        let lag_urls: Vec<(String, String)> = match &external {
            None => procs
                .iter()
                .filter(|p| p.name != "mqtt-bridge")
                .map(|p| (p.name.to_owned(), format!("http://127.0.0.1:{}", p.port)))
                .collect(),
            Some(x) => x.metrics.clone(),
        };
        tokio::spawn(async move {
            let mut last: HashMap<String, i64> = HashMap::new();
            let mut fresh = Vec::new();
            let mut lag: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
            let start = Instant::now();
            let mut next_lag = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = fleet_runtime::metrics::now_ms();
                for v in &sampled {
                    if let Ok(Some(s)) = store.vehicle_state(v, now).await {
                        let prev = last.insert(v.clone(), s.event_time);
                        if prev.is_some_and(|p| p < s.event_time) {
                            fresh.push(
                                (fleet_runtime::metrics::now_ms() - s.event_time).max(0) as u64
                            );
                        }
                    }
                }
                if Instant::now() >= next_lag {
                    next_lag += Duration::from_secs(1);
                    for (name, url) in &lag_urls {
                        if let Some(l) = metric_sum_at(url, "fleet_consumer_lag_records").await {
                            lag.entry(name.clone())
                                .or_default()
                                .push((start.elapsed().as_secs(), l));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (fresh, lag)
        })
    };

    let mut pubs = Vec::with_capacity(connections);
    for i in 0..connections.max(1) {
        pubs.push(Arc::new(match transport {
            Transport::Mqtt => publisher(i).await?,
            Transport::Kafka => kafka_publisher(&t.telemetry, &t.emergencies).await?,
        }));
    }
    // Let the readers' and processors' group joins settle before the clock starts; readers
    // starting at the topics' end (external) must have their partitions first, or they miss
    // the first records.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if external.is_some() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while READERS_ASSIGNED.load(Ordering::Relaxed) < 3 {
            if Instant::now() > deadline {
                bail!("the audit readers got no partitions within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Their first fetch resolves `latest`.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The local stack's servers (not an external pipeline's: they are not on this machine).
    let stack: &[&str] = if external.is_none() {
        &["kafka-1", "mqtt", "registry"]
    } else {
        &[]
    };
    let named_pids: Vec<(String, u32)> = stack
        .iter()
        .filter_map(|s| stack_pid(s).map(|p| (format!("stack:{s}"), p)))
        .chain(procs.iter().map(|p| (p.name.to_owned(), p.child.id())))
        .chain([("fleet-loadtest".to_owned(), std::process::id())])
        .collect();
    let cpu0: Vec<f64> = named_pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let wall0 = Instant::now();
    eprintln!(
        "{rate} readings/s for {duration} s from {vehicles} vehicles over {connections} {transport:?} connections"
    );
    let achieved = publish_range(
        &pubs,
        &t.prefix,
        &fleet,
        Phase {
            from: 0,
            to: fixed,
            rate,
            emergency_every,
            acked_before: 0,
            plan,
        },
    )
    .await?;
    let wall = wall0.elapsed().as_secs_f64();
    let cpu_cores: BTreeMap<String, f64> = named_pids
        .iter()
        .zip(&cpu0)
        .map(|((n, p), c0)| {
            (
                n.clone(),
                ((cpu_seconds(*p) - c0) / wall * 100.0).round() / 100.0,
            )
        })
        .collect();
    let sent = fixed - plan.skipped_in(0, fixed, vehicles);
    let emergencies = emergencies_in(fixed, emergency_every);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    // Alerts the injections may also raise: a 120 km/h truck or a 35 °C reefer is a
    // statistical outlier too, once the vehicle has history enough for the statistical rules.
    let mut also: BTreeSet<String> = BTreeSet::new();
    for v in 0..vehicles {
        let id = fleet.id(v);
        if plan.overspeed(v) {
            expected.insert(format!("{id}:Overspeed"));
            also.insert(format!("{id}:Statistical"));
        }
        if plan.warm(v) {
            expected.insert(format!("{id}:CargoTemperature"));
            also.insert(format!("{id}:Statistical"));
        }
        if plan.silent(v) {
            expected.insert(format!("{id}:Offline"));
        }
        if plan.deviate(v) {
            expected.insert(format!("{id}:RouteDeviation"));
        }
    }
    eprintln!("published at {achieved:.0}/s; auditing");

    // Wait (bounded) for everything downstream.
    let deadline = Instant::now() + Duration::from_secs(120);
    let lake = Lake::open(&lake_url)?;
    let mut lake_rows = 0;
    let mut next_progress = Instant::now();
    loop {
        let accepted = seen.lock().map(|s| s.distinct).unwrap_or(0);
        let notes = notified.lock().map(|n| n.0.len()).unwrap_or(0);
        let got_alerts = alerts
            .lock()
            .map(|a| expected.iter().filter(|e| a.contains(*e)).count())
            .unwrap_or(0);
        lake_rows = if external.is_none() {
            // A fresh topic: every committed row is this run's (file footers: cheap).
            let mut n = 0;
            for p in catalog::list(&lake, std::slice::from_ref(&t.telemetry), None)
                .await
                .unwrap_or_default()
            {
                for f in &p.files {
                    n += catalog::file_rows(&lake, f).await.unwrap_or(0);
                }
            }
            n
        } else if Instant::now() >= next_progress {
            // A shared lake: this run's event ids (reads the files: every 10 s).
            lake_event_ids(&lake, &t.telemetry, &scope.tag)
                .await
                .map(|ids| ids.values().map(|n| u64::from(*n)).sum())
                .unwrap_or(lake_rows)
        } else {
            lake_rows
        };
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(10);
            eprintln!(
                "audit: {accepted}/{sent} in Kafka, {lake_rows} in the lake, {notes}/{emergencies} notified, {got_alerts}/{} alerts",
                expected.len()
            );
        }
        if (accepted >= sent
            && notes >= emergencies
            && got_alerts == expected.len()
            && lake_rows >= sent as u64)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // vehicle_state holds each vehicle's newest reading (by event time) that Kafka holds.
    let newest: Vec<(String, i64)> = seen
        .lock()
        .map(|s| s.newest.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    let now = fleet_runtime::metrics::now_ms();
    let mut mismatches = 0;
    for (id, t) in &newest {
        match store.vehicle_state(id, now).await {
            Ok(Some(s)) if s.event_time == *t => {}
            _ => mismatches += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (fresh, lag) = sampler.await?;
    for h in [tele_reader, notif_reader, alert_reader] {
        let _ = h.join();
    }
    for p in &mut procs {
        crate::terminate(&mut p.child);
    }
    drop(pubs);

    // The lake by event id: every id read from Kafka exactly once, nothing else.
    let lake_ids = lake_event_ids(&lake, &t.telemetry, &scope.tag).await?;
    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let lake_missing = s
        .ids
        .iter()
        .filter(|id| !lake_ids.contains_key(*id))
        .count();
    let lake_duplicates = lake_ids.values().filter(|n| **n > 1).count();
    let lake_unexpected = lake_ids.keys().filter(|id| !s.ids.contains(*id)).count();
    let lost = (0..fixed)
        .filter(|q| !plan.skipped(*q, vehicles))
        .filter(|q| !s.seqs.get(*q).copied().unwrap_or(false))
        .count();
    let got = alerts.lock().map(|a| a.clone()).unwrap_or_default();
    let (notes, note_lat) = notified
        .lock()
        .map(|n| (n.0.len(), n.1.clone()))
        .unwrap_or_default();
    let report = DemoReport {
        rate_target: rate,
        duration_s: duration,
        vehicles,
        seed,
        transport,
        routes_published: routed,
        corridors: fleet.per_corridor(),
        sent,
        accepted: s.distinct,
        lost,
        duplicates: s.total.saturating_sub(s.distinct),
        achieved_rate: achieved.round(),
        lake_rows,
        lake_missing,
        lake_duplicates,
        lake_unexpected,
        lake_url: lake_url.clone(),
        emergencies_injected: emergencies,
        crashes_injected: crashes_in(fixed, emergency_every),
        notifications_received: notes,
        alerts_expected: expected.len(),
        alerts_received: expected.iter().filter(|e| got.contains(*e)).count(),
        alerts_missing: expected.difference(&got).cloned().collect(),
        alerts_unexpected: got
            .difference(&expected)
            .filter(|a| !also.contains(*a))
            .cloned()
            .collect(),
        alerts_also: got.intersection(&also).cloned().collect(),
        state_vehicles_checked: newest.len(),
        state_mismatches: mismatches,
        latency_ms: Latencies {
            emergency_to_notification: percentiles(note_lat),
            reading_to_state: percentiles(fresh),
            device_to_kafka: percentiles(s.to_kafka.clone()),
        },
        throughput_per_s: s.per_second.clone(),
        lag,
        latency_histogram_ms: histogram(&s.to_kafka),
        cpu_cores,
        passed: false,
    };
    drop(s);
    let passed = report.lost == 0
        && report.notifications_received == report.emergencies_injected
        && report.alerts_received == report.alerts_expected
        && report.alerts_unexpected.is_empty()
        && report.lake_rows == report.accepted as u64
        && report.lake_missing == 0
        && report.lake_duplicates == 0
        && report.lake_unexpected == 0
        && report.state_mismatches == 0;
    let report = DemoReport { passed, ..report };
    if !passed {
        eprintln!(
            "the audit FAILED: see {}",
            out.join("report.json").display()
        );
    }
    write_report(&out, &report)?;
    Ok(report)
}

/// event_id -> copies, over every committed Parquet file of `topic` in the lake, for the event
/// ids that start with `tag`.
async fn lake_event_ids(
    lake: &Lake,
    topic: &str,
    tag: &str,
) -> anyhow::Result<HashMap<String, u32>> {
    use arrow::array::{Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out: HashMap<String, u32> = HashMap::new();
    for files in catalog::data_files(lake, topic, None).await?.values() {
        for f in files {
            let Some(bytes) = lake.get(&f.rel).await? else {
                bail!("listed lake file {} is gone", f.rel);
            };
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
                let batch = batch?;
                let ids = batch
                    .column_by_name("event_id")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .with_context(|| format!("{}: no string event_id column", f.rel))?;
                for i in 0..ids.len() {
                    if ids.is_valid(i) && ids.value(i).starts_with(tag) {
                        *out.entry(ids.value(i).to_owned()).or_default() += 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Writes `report.json` and `report.html` into `out`.
pub(crate) fn write_report(out: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out.join("report.json"), &json)?;
    std::fs::write(out.join("report.html"), render_html(&json))?;
    Ok(())
}

/// The HTML report for a report's JSON (plots drawn by inline script; no network).
pub(crate) fn render_html(json: &str) -> String {
    // `</` inside a script element would end it.
    TEMPLATE.replace("/*REPORT*/null", &json.replace("</", "<\\/"))
}

const TEMPLATE: &str = include_str!("report.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = histogram(&[0, 1, 2, 3, 999, 1_000, 1_001, u64::MAX]);
        let get = |b: u64| h.iter().find(|(x, _)| *x == b).map(|(_, n)| *n);
        assert_eq!(get(1), Some(2));
        assert_eq!(get(2), Some(1));
        assert_eq!(get(5), Some(1));
        assert_eq!(get(1_000), Some(2));
        assert_eq!(get(2_000), Some(1));
        assert_eq!(get(u64::MAX), Some(1));
        assert_eq!(h.iter().map(|(_, n)| n).sum::<u64>(), 8);
    }

    #[test]
    fn the_report_json_cannot_end_its_script_element() {
        let html = render_html(r#"{"lake_url": "</script><script>alert(1)</script>"}"#);
        assert!(!html.contains("</script><script>alert(1)"));
        assert!(html.contains(r#"const R = {"lake_url": "<\/script>"#));
        assert!(!html.contains("/*REPORT*/"));
    }

    #[test]
    fn the_plan_skips_only_silent_vehicles_after_a_fifth() {
        let plan = Plan { fixed: 10_000 };
        let vehicles = 1_000;
        assert!(plan.overspeed(1) && plan.warm(2) && plan.silent(3) && !plan.silent(4));
        assert!(plan.deviate(4) && plan.routed(4) && plan.routed(54) && !plan.deviate(54));
        assert!(!plan.routed(5) && !Plan::default().routed(4));
        assert!(plan.silent(1_003));
        // Vehicle 3 reports at seq 3, 1003, ...: silent from seq 2000 on.
        assert!(!plan.skipped(1_003, vehicles));
        assert!(plan.skipped(2_003, vehicles));
        assert!(!plan.skipped(2_004, vehicles));
        assert_eq!(plan.skipped_in(0, 10_000, vehicles), 8);
        assert_eq!(Plan::default().skipped_in(0, 10_000, vehicles), 0);
        // Emergencies after readings 0, 600, ..., 8400: the odd ones are crashes.
        assert_eq!(
            (emergencies_in(9_000, 600), crashes_in(9_000, 600)),
            (15, 7)
        );
        assert_eq!(
            (emergencies_in(9_001, 600), crashes_in(9_001, 600)),
            (16, 8)
        );
        assert_eq!(crashes_in(9_000, 0), 0);
    }
}
