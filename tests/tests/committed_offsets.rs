//! Offsets that reach the end: every consuming binary, given a finite backlog, commits the
//! high watermark of every input partition once its work is done (what
//! `kafka-consumer-groups --describe` shows, read here the same way), its own
//! `fleet_consumer_lag_records` agrees with the broker, and a restart after SIGTERM processes
//! nothing again (`fleet_processor_reprocessed_records_total` and the input counters stay 0).
//!
//! The backlogs are small and old (event times an hour ago), so that the last windows of
//! telemetry-processor close only by its idle timeout: the case where a processor's hold, not
//! its last input, decides what may be committed. Anomaly-, deliveries- and
//! emergency-processor run on the state runtime, whose commits carry their state.
#![cfg(feature = "stack")]

use std::time::Duration;

use fleet_e2e::testkit;
use fleet_e2e::{Proc, fast_rejoin, metric_samples, metric_sum, now_ms, wait_committed_to_end};
use fleet_schemas::{
    Channel, DeliveryEvent, DeliveryKind, EmergencyEvent, EmergencyKind, Encoder, Notification,
    Position, Record, Registry, Severity, TelemetryReading, ids,
};

const PARTITIONS: i32 = 3;

/// One binary on its own fresh topics and group.
struct Case {
    bin: &'static str,
    input: String,
    group: String,
    env: Vec<(&'static str, String)>,
}

impl Case {
    /// A fresh input topic, DLQ and group for `bin`, the common environment, and `records`
    /// encoded and produced to the input.
    async fn new<T: Record>(bin: &'static str, records: &[(String, T)]) -> Self {
        let input = testkit::random_name(&format!("e2e.drain.{bin}"));
        let dlq = testkit::random_name("e2e.drain.dlq");
        testkit::create_topic(&input, PARTITIONS).await;
        testkit::create_topic(&dlq, 1).await;
        let registry = Registry::new(&testkit::registry_url()).expect("registry");
        let enc = Encoder::<T>::register(&registry, &input)
            .await
            .expect("schema");
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(k, r)| (k.clone().into_bytes(), enc.encode(r).expect("encode")))
            .collect();
        testkit::populate_topic(&input, &encoded).await;
        let group = testkit::random_name(&format!("e2e.drain.{bin}"));
        let mut env = vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET__APP__INPUT_TOPIC", input.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq),
            ("FLEET__RUNNER__TICK_INTERVAL", "250ms".into()),
            ("FLEET__KAFKA__GROUP_ID", group.clone()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
            ("FLEET__KAFKA__STATISTICS_INTERVAL", "500ms".into()),
        ];
        env.extend(fast_rejoin());
        Self {
            bin,
            input,
            group,
            env,
        }
    }

    /// A fresh topic the binary writes to (or reads as a table), set through `var`.
    async fn topic(&mut self, var: &'static str, partitions: i32) -> String {
        let t = testkit::random_name("e2e.drain.out");
        testkit::create_topic(&t, partitions).await;
        self.env.push((var, t.clone()));
        t
    }

    fn state_in(&mut self, dir: &std::path::Path) {
        self.env.push((
            "FLEET_STATE_URL",
            format!("sqlite://{}/{}.db", dir.display(), self.bin),
        ));
    }

    /// Runs the binary on the backlog until the broker shows every offset committed, checks
    /// its lag metric, stops it with SIGTERM, restarts it and checks that it reads nothing
    /// again.
    async fn check(self) {
        let p = Proc::start(self.bin, &self.env);
        let took = wait_committed_to_end(&self.group, &self.input, Duration::from_secs(120)).await;
        let took = match took {
            Ok(t) => t,
            Err(view) => panic!(
                "{}: committed offsets never reached the high watermarks: {view:?}",
                self.bin
            ),
        };
        let metrics = self.wait_lag_metric_zero(&p).await;
        let processed = metric_sum(&metrics, "fleet_processor_records_total");
        assert!(
            processed > 0.0,
            "{}: processed its input:\n{metrics}",
            self.bin
        );
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{}: clean stop on SIGTERM",
            self.bin
        );
        let after = testkit::group_lag(&self.group, &self.input);
        assert!(
            after
                .iter()
                .all(|p| p.committed == Some(p.high) || p.high == 0),
            "{}: the stop kept the committed offsets at the end: {after:?}",
            self.bin
        );

        // The restart: assigned, watermarks known (its lag series are in), and a window for
        // anything wrongly re-read to show up.
        let p = Proc::start(self.bin, &self.env);
        self.wait_lag_metric_zero(&p).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, later) = p.get("/metrics").await.unwrap_or_default();
        assert_eq!(
            metric_sum(&later, "fleet_processor_records_total"),
            0.0,
            "{}: a restart after a drain reads nothing again:\n{later}",
            self.bin
        );
        assert_eq!(
            metric_sum(&later, "fleet_processor_reprocessed_records_total"),
            0.0,
            "{}: nothing re-processed:\n{later}",
            self.bin
        );
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success())
        );
        eprintln!(
            "{}: {processed} inputs; committed offsets at the high watermarks {:.1} s after start; restart re-processed 0",
            self.bin,
            took.as_secs_f64()
        );
    }

    /// Waits until the binary reports a committed lag of 0 on every input partition.
    async fn wait_lag_metric_zero(&self, p: &Proc) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let needle = format!("topic=\"{}\"", self.input);
        loop {
            let (_, m) = p.get("/metrics").await.unwrap_or_default();
            let lags: Vec<f64> = metric_samples(&m, "fleet_consumer_lag_records")
                .into_iter()
                .filter(|(labels, _)| labels.contains(&needle))
                .map(|(_, v)| v)
                .collect();
            if lags.len() == PARTITIONS as usize && lags.iter().all(|v| *v == 0.0) {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: fleet_consumer_lag_records never showed 0 on every partition:\n{m}",
                self.bin
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn readings(vehicles: usize, per_vehicle: usize) -> Vec<(String, TelemetryReading)> {
    // An hour old, one reading per 10 s: the last window of each vehicle closes only when the
    // partition goes idle.
    let base = now_ms() - 3_600_000;
    let mut out = Vec::with_capacity(vehicles * per_vehicle);
    for i in 0..per_vehicle {
        for v in 0..vehicles {
            let vehicle_id = format!("VEH-C{v:03}");
            let t = base + i as i64 * 10_000 + v as i64;
            out.push((
                vehicle_id.clone(),
                TelemetryReading {
                    event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
                    vehicle_id,
                    event_time: t,
                    ingest_time: t,
                    sent_time: None,
                    position: Position::new(4.6 + v as f64 * 0.01, -74.08 + i as f64 * 1e-4),
                    speed_kmh: Some(40.0),
                    heading_deg: None,
                    cargo_temp_c: Some(4.0),
                    door_open: Some(false),
                    ignition_on: Some(true),
                    accel_mps2: None,
                    odometer_km: None,
                    battery_v: None,
                    camera_active: None,
                    source: "e2e".into(),
                },
            ));
        }
    }
    out
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-drain"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_processor_commits_to_the_end_including_idle_closed_windows() {
    let mut c = Case::new("telemetry-processor", &readings(30, 40)).await;
    c.topic("FLEET__APP__WINDOWS_TOPIC", 1).await;
    c.state_in(&temp_dir());
    c.env.push(("FLEET__APP__IDLE_TIMEOUT", "2s".into()));
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_processor_commits_to_the_end() {
    let mut c = Case::new("anomaly-processor", &readings(30, 40)).await;
    for var in [
        "FLEET__APP__ANOMALIES_TOPIC",
        "FLEET__APP__EMERGENCIES_TOPIC",
        "FLEET__APP__NOTIFICATIONS_TOPIC",
        "FLEET__APP__PROFILES_TOPIC",
    ] {
        c.topic(var, 1).await;
    }
    c.state_in(&temp_dir());
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_processor_commits_to_the_end() {
    let base = now_ms() - 3_600_000;
    let mut events = Vec::new();
    for v in 0..12usize {
        for (i, kind) in [
            DeliveryKind::Created,
            DeliveryKind::Assigned,
            DeliveryKind::PickedUp,
        ]
        .into_iter()
        .enumerate()
        {
            let t = base + i as i64 * 1_000;
            let vehicle_id = format!("VEH-C{v:03}");
            events.push((
                vehicle_id.clone(),
                DeliveryEvent {
                    event_id: ids::derived_id(&["e2e-drain", &v.to_string(), &i.to_string()]),
                    delivery_id: format!("DLV-C{v:03}"),
                    vehicle_id,
                    driver_id: Some(format!("DRV-{v:03}")),
                    kind,
                    event_time: t,
                    ingest_time: t,
                    sent_time: Some(t),
                    destination: Some(Position::new(4.6, -74.08)),
                    destination_radius_m: Some(150.0),
                    promised_by: Some(base + 86_400_000),
                    position: None,
                    note: None,
                    reassigned_by: None,
                },
            ));
        }
    }
    let mut c = Case::new("deliveries-processor", &events).await;
    c.topic("FLEET__APP__NOTIFICATIONS_TOPIC", 1).await;
    c.env.push(("FLEET__APP__PROFILES_TOPIC", String::new()));
    c.state_in(&temp_dir());
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_processor_commits_to_the_end() {
    let base = now_ms() - 3_600_000;
    let events: Vec<(String, EmergencyEvent)> = (0..20usize)
        .map(|v| {
            let t = base + v as i64 * 1_000;
            let vehicle_id = format!("VEH-C{v:03}");
            (
                vehicle_id.clone(),
                EmergencyEvent {
                    event_id: ids::derived_id(&["e2e-drain-emergency", &v.to_string()]),
                    vehicle_id,
                    event_time: t,
                    ingest_time: t,
                    sent_time: Some(t),
                    kind: EmergencyKind::PanicButton,
                    severity: Severity::Critical,
                    position: Some(Position::new(4.6, -74.1)),
                    description: Some("panic button".into()),
                    source_anomaly_id: None,
                    source: "e2e".into(),
                },
            )
        })
        .collect();
    let mut c = Case::new("emergency-processor", &events).await;
    for var in [
        "FLEET__APP__NOTIFICATIONS_TOPIC",
        "FLEET__APP__COMMANDS_TOPIC",
        "FLEET__APP__PROFILES_TOPIC",
    ] {
        c.topic(var, 1).await;
    }
    c.state_in(&temp_dir());
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_commits_to_the_end() {
    let notes: Vec<(String, Notification)> = (0..20usize)
        .map(|i| {
            (
                "operations".to_owned(),
                Notification {
                    event_id: format!("drain-{i}"),
                    recipient: "operations".into(),
                    channel: Channel::Log,
                    vehicle_id: "VEH-C001".into(),
                    severity: Severity::High,
                    subject: format!("subject {i}"),
                    body: "body".into(),
                    source_event_id: format!("e-{i}"),
                    source_kind: "emergency.CRASH".into(),
                    event_time: 1,
                    ingest_time: 2,
                    sent_time: None,
                },
            )
        })
        .collect();
    let c = Case::new("notifier", &notes).await;
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_processor_commits_to_the_end() {
    let mut c = Case::new("passthrough-processor", &readings(30, 20)).await;
    c.topic("FLEET__APP__OUTPUT_TOPIC", PARTITIONS).await;
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_on_the_state_runtime_commits_to_the_end_in_either_guarantee() {
    for guarantee in ["at_least_once", "exactly_once"] {
        let mut c = Case::new("passthrough-processor", &readings(30, 20)).await;
        c.topic("FLEET__APP__OUTPUT_TOPIC", PARTITIONS).await;
        c.env.push(("FLEET__APP__DEDUPE_IDS", "16".into()));
        c.env
            .push(("FLEET__RUNNER__PROCESSING_GUARANTEE", guarantee.into()));
        c.check().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_sink_commits_to_the_end_after_its_time_based_rotation() {
    let mut c = Case::new("lake-sink", &readings(30, 20)).await;
    let dir = temp_dir();
    let topics = format!("[\"{}\"]", c.input);
    c.env.retain(|(k, _)| *k != "FLEET__APP__INPUT_TOPIC");
    c.env.extend([
        ("FLEET_LAKE_URL", dir.join("lake").display().to_string()),
        ("FLEET__APP__TOPICS", topics),
        ("FLEET__APP__COMMIT_INTERVAL", "1s".into()),
    ]);
    c.check().await;
}
