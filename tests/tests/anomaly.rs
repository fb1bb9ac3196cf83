//! anomaly-processor against the local stack.
//!
//! Profiles are published with `fleetctl profiles load` (one vehicle gets a reefer range, a
//! planned route and an e-mail owner contact), a malformed profile record is put on the
//! profiles topic, and a dataset with known incidents flows into a fresh telemetry topic:
//! a temperature excursion, overspeed, a route deviation with overspeed (correlated ->
//! critical), an impact, a device going silent. Three runs consume it: one undisturbed, two
//! killed with SIGKILL three times mid-stream (at least once, exactly once). All must emit the
//! same set of anomalies (by `event_id`, every copy identical; exactly once: one copy each),
//! the expected ones, and the critical ones as emergencies.
#![cfg(feature = "stack")]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, bin_path, fast_rejoin, wait_progress, wait_ready};
use fleet_schemas::{
    Anomaly, AnomalyKind, AnomalyState, Channel, DeadLetter, Decoder, EmergencyEvent,
    EmergencyKind, Encoder, Notification, Position, Registry, TelemetryReading, ids,
};

const BIN: &str = "anomaly-processor";
const VEHICLES: usize = 24;
const READINGS: usize = 200; // every 2 s: 400 s of event time per vehicle
const BASE: i64 = 1_700_000_000_000;

fn dataset() -> Vec<TelemetryReading> {
    let mut out = Vec::with_capacity(VEHICLES * READINGS);
    for i in 0..READINGS {
        for v in 0..VEHICLES {
            // VEH-A004 goes silent after 2 minutes.
            if v == 4 && i > 60 {
                continue;
            }
            let vehicle_id = format!("VEH-A{v:03}");
            let t = BASE + i as i64 * 2_000 + v as i64 * 11;
            let mut lon = -74.0;
            let mut speed = 60.0;
            let mut temp = 4.0;
            let mut accel = None;
            match v {
                // Reefer with a profile: too warm from reading 50 to 79; off the route and
                // speeding from 120 to 149.
                0 => {
                    if (50..80).contains(&i) {
                        temp = 9.5;
                    }
                    if (120..150).contains(&i) {
                        lon = -73.99; // ~1.1 km east of the planned road
                        speed = 110.0;
                    }
                }
                // Same temperatures without a profile: inside the default range, no alert.
                1 if (50..80).contains(&i) => temp = 9.5,
                2 if (30..60).contains(&i) => speed = 120.0,
                3 if i == 100 => accel = Some(-30.0),
                _ => {}
            }
            out.push(TelemetryReading {
                event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
                vehicle_id,
                event_time: t,
                ingest_time: t,
                sent_time: Some(t),
                position: Position::new(4.0 + i as f64 * 0.0005, lon),
                speed_kmh: Some(speed),
                heading_deg: None,
                cargo_temp_c: Some(temp),
                door_open: None,
                ignition_on: Some(true),
                accel_mps2: accel,
                odometer_km: None,
                battery_v: None,
                camera_active: None,
                source: "e2e".into(),
            });
        }
    }
    out
}

const PROFILES: &str = r#"[
  {"vehicle_id": "VEH-A000", "customer_id": "acme", "cargo_temp_min_c": 2, "cargo_temp_max_c": 8,
   "speed_limit_kmh": 80, "route_corridor_m": 300,
   "route": [{"lat": 4.0, "lon": -74.0}, {"lat": 4.05, "lon": -74.0}, {"lat": 5.0, "lon": -74.0}],
   "contacts": [{"role": "OWNER", "channel": "EMAIL", "address": "cold-chain@acme.example"}]}
]"#;

fn fleetctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("fleetctl"))
        .args(args)
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .output()
        .expect("fleetctl runs")
}

struct Run {
    anomalies: String,
    emergencies: String,
    notifications: String,
    env: Vec<(&'static str, String)>,
}

impl Run {
    async fn new(
        input: &str,
        profiles: &str,
        dlq: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> Self {
        let anomalies = testkit::random_name(&format!("e2e.anom.{name}"));
        let emergencies = testkit::random_name(&format!("e2e.anom-emerg.{name}"));
        let notifications = testkit::random_name(&format!("e2e.anom-notif.{name}"));
        for t in [&anomalies, &emergencies, &notifications] {
            testkit::create_topic(t, 2).await;
        }
        let mut env = vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            (
                "FLEET_STATE_URL",
                format!("sqlite://{}/{name}.db", dir.display()),
            ),
            ("FLEET__APP__INPUT_TOPIC", input.to_owned()),
            ("FLEET__APP__PROFILES_TOPIC", profiles.to_owned()),
            ("FLEET__APP__ANOMALIES_TOPIC", anomalies.clone()),
            ("FLEET__APP__EMERGENCIES_TOPIC", emergencies.clone()),
            ("FLEET__APP__NOTIFICATIONS_TOPIC", notifications.clone()),
            ("FLEET__APP__SUSTAIN", "10s".into()),
            ("FLEET__APP__OFFLINE_AFTER", "60s".into()),
            // Event time only: no idle advancement while the test waits after the input.
            ("FLEET__APP__IDLE_TIMEOUT", "1h".into()),
            ("FLEET__RUNNER__TICK_INTERVAL", "250ms".into()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.to_owned()),
            (
                "FLEET__KAFKA__GROUP_ID",
                testkit::random_name(&format!("e2e.anom.{name}")),
            ),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ];
        env.extend(fast_rejoin());
        Self {
            anomalies,
            emergencies,
            notifications,
            env,
        }
    }

    fn start(&self) -> Proc {
        Proc::start(BIN, &self.env)
    }
}

/// event_id -> anomaly without its emission time; fails if two copies differ.
async fn anomalies(registry: &Registry, tail: &TopicTail) -> (BTreeMap<String, Anomaly>, usize) {
    let dec = Decoder::<Anomaly>::new(registry.clone());
    let mut seen: BTreeMap<String, Anomaly> = BTreeMap::new();
    let mut copies = 0;
    for rec in tail.snapshot() {
        let mut a = dec.decode(&rec.payload).await.expect("anomaly decodes");
        a.ingest_time = 0;
        copies += 1;
        if let Some(prev) = seen.get(&a.event_id) {
            assert_eq!(
                prev, &a,
                "a re-emitted anomaly must be identical to the first copy"
            );
        } else {
            seen.insert(a.event_id.clone(), a);
        }
    }
    (seen, copies)
}

fn has(
    all: &BTreeMap<String, Anomaly>,
    vehicle: &str,
    kind: AnomalyKind,
    state: AnomalyState,
) -> bool {
    all.values()
        .any(|a| a.vehicle_id == vehicle && a.kind == kind && a.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_incidents_raise_the_same_alerts_with_and_without_sigkill() {
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let input = testkit::random_name("e2e.anom.in");
    let profiles = testkit::random_name("e2e.anom.profiles");
    let dlq = testkit::random_name("e2e.anom.dlq");
    testkit::create_topic(&input, 4).await;
    testkit::create_topic(&dlq, 1).await;

    // Profiles through the CLI: an invalid file publishes nothing; the valid one is published.
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-anomaly"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"vehicle_id": "VEH-X", "cargo_temp_min_c": 9, "cargo_temp_max_c": 2}]"#,
    )
    .expect("write");
    let out = fleetctl(&[
        "profiles",
        "load",
        bad.to_str().expect("path"),
        "--topic",
        &profiles,
    ]);
    assert!(!out.status.success(), "an invalid profile is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("VEH-X"));
    let good = dir.join("profiles.json");
    std::fs::write(&good, PROFILES).expect("write");
    let out = fleetctl(&[
        "profiles",
        "load",
        good.to_str().expect("path"),
        "--topic",
        &profiles,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One transaction: each partition written carries a commit marker, which takes an offset.
    let n = serde_json::from_str::<Vec<serde_json::Value>>(PROFILES)
        .expect("profiles json")
        .len() as i64;
    let high: i64 = testkit::group_lag("nobody", &profiles)
        .iter()
        .map(|p| p.high)
        .sum();
    assert!(
        high > n,
        "published in a transaction: {high} offsets used for {n} profiles"
    );
    // A malformed record on the profiles topic: dead-lettered by the processor, not fatal.
    testkit::populate_topic(&profiles, &[(b"VEH-A001".to_vec(), b"not avro".to_vec())]).await;

    let data = dataset();
    let enc = Encoder::<TelemetryReading>::register(&registry, &input)
        .await
        .expect("schema");
    let records: Vec<(Vec<u8>, Vec<u8>)> = data
        .iter()
        .map(|r| {
            (
                r.vehicle_id.clone().into_bytes(),
                enc.encode(r).expect("encode"),
            )
        })
        .collect();

    let steady = Run::new(&input, &profiles, &dlq, &dir, "steady").await;
    let crashy = Run::new(&input, &profiles, &dlq, &dir, "crashy").await;
    // The same, exactly once: its read_committed reader must see every transition once.
    let mut exact = Run::new(&input, &profiles, &dlq, &dir, "exact").await;
    exact
        .env
        .push(("FLEET__RUNNER__PROCESSING_GUARANTEE", "exactly_once".into()));
    let steady_tail = TopicTail::start(&steady.anomalies);
    let crashy_tail = TopicTail::start(&crashy.anomalies);
    let exact_tail = TopicTail::start(&exact.anomalies);
    let emerg_tail = TopicTail::start(&crashy.emergencies);
    let notif_tail = TopicTail::start(&steady.notifications);
    let dlq_tail = TopicTail::start(&dlq);
    let a = steady.start();
    assert!(wait_ready(&a).await, "steady run ready");

    // ~16 s of input at 300 readings/s; the second run is killed three times meanwhile.
    let producer = {
        let (topic, records) = (input.clone(), records.clone());
        tokio::spawn(async move { testkit::populate_topic_paced(&topic, &records, 300).await })
    };
    for round in 0..3u64 {
        let p = crashy.start();
        let q = exact.start();
        assert!(wait_progress(&p).await, "round {round}: no progress");
        assert!(
            wait_progress(&q).await,
            "round {round}: no progress (exactly once)"
        );
        tokio::time::sleep(Duration::from_millis(1_200 + round * 500)).await;
        p.kill9();
        q.kill9();
    }
    let b = crashy.start();
    let c = exact.start();
    producer.await.expect("producer");

    // The steady run's result, once it stops growing.
    let mut last = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = steady_tail.len();
        if n > 0 && n == last {
            break;
        }
        last = n;
    }
    let (want, copies_a) = anomalies(&registry, &steady_tail).await;
    assert_eq!(
        copies_a,
        want.len(),
        "an undisturbed run emits each anomaly once"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut got, mut copies_b) = anomalies(&registry, &crashy_tail).await;
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (got, copies_b) = anomalies(&registry, &crashy_tail).await;
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the killed run raised and cleared exactly the same alerts"
    );
    assert_eq!(got, want);
    let (mut exact_got, mut copies_c) = anomalies(&registry, &exact_tail).await;
    while exact_got.len() < want.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (exact_got, copies_c) = anomalies(&registry, &exact_tail).await;
    }
    assert_eq!(
        exact_got, want,
        "exactly once, killed 3 times: the same alerts"
    );
    assert_eq!(copies_c, want.len(), "exactly once: no alert emitted twice");
    eprintln!(
        "anomaly kill -9 x3: {} anomalies, identical to the undisturbed run; {copies_b} copies emitted ({} re-emitted with the same id)",
        want.len(),
        copies_b - want.len()
    );

    // The injected incidents, and nothing for the vehicle without a profile.
    use AnomalyKind::*;
    use AnomalyState::*;
    for (vehicle, kind, state) in [
        ("VEH-A000", CargoTemperature, Raised),
        ("VEH-A000", CargoTemperature, Cleared),
        ("VEH-A000", RouteDeviation, Raised),
        ("VEH-A000", RouteDeviation, Cleared),
        ("VEH-A000", Overspeed, Raised),
        ("VEH-A000", Correlated, Raised),
        ("VEH-A002", Overspeed, Raised),
        ("VEH-A002", Overspeed, Cleared),
        ("VEH-A003", Impact, Raised),
        ("VEH-A004", Offline, Raised),
    ] {
        assert!(
            has(&want, vehicle, kind, state),
            "{vehicle} {kind:?} {state:?} missing: {want:#?}"
        );
    }
    let a001: Vec<_> = want
        .values()
        .filter(|a| a.vehicle_id == "VEH-A001")
        .map(|a| (a.kind, a.state))
        .collect();
    assert_eq!(
        a001,
        [(Statistical, Raised), (Statistical, Cleared)],
        "9.5 °C is inside the default range: only the statistical detector notices the jump"
    );
    assert!(
        !has(&want, "VEH-A004", Offline, Cleared),
        "it never came back"
    );

    // Critical anomalies went to the fast lane, once per anomaly id.
    let edec = Decoder::<EmergencyEvent>::new(registry.clone());
    let mut emergencies = BTreeMap::new();
    for _ in 0..100 {
        if emerg_tail.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for rec in emerg_tail.snapshot() {
        let e = edec.decode(&rec.payload).await.expect("emergency");
        emergencies.insert(e.event_id.clone(), e);
    }
    let mut crit: Vec<(&str, AnomalyKind)> = emergencies
        .values()
        .map(|e| {
            assert_eq!(e.kind, EmergencyKind::CriticalAnomaly);
            let src = e.source_anomaly_id.as_deref().expect("source anomaly");
            (e.vehicle_id.as_str(), want[src].kind)
        })
        .collect();
    crit.sort_unstable_by_key(|c| c.0);
    assert_eq!(crit, [("VEH-A000", Correlated), ("VEH-A003", Impact)]);

    // The profile's owner contact got the high ones for VEH-A000.
    let ndec = Decoder::<Notification>::new(registry.clone());
    let mut to_acme = 0;
    for rec in notif_tail.snapshot() {
        let n = ndec.decode(&rec.payload).await.expect("notification");
        if n.vehicle_id == "VEH-A000" {
            assert_eq!(
                (n.recipient.as_str(), n.channel),
                ("cold-chain@acme.example", Channel::Email)
            );
            to_acme += 1;
        }
    }
    assert_eq!(to_acme, 2, "temperature (high) and correlated (critical)");

    // The malformed profile record is in the DLQ with its bytes.
    let ddec = Decoder::<DeadLetter>::new(registry.clone());
    let mut found = false;
    for rec in dlq_tail.snapshot() {
        let d = ddec.decode(&rec.payload).await.expect("dead letter");
        if d.source_topic == profiles {
            assert_eq!(d.reason, "decode_error");
            assert_eq!(d.original.as_deref(), Some(&b"not avro"[..]));
            found = true;
        }
    }
    assert!(found, "the malformed profile was dead-lettered");

    for p in [a, b, c] {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success())
        );
    }
}
