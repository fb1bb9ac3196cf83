//! deliveries-processor against the local stack, with telemetry-processor keeping the
//! positions it reads (`vehicle_state`).
//!
//! Ten deliveries on ten vehicles are created, assigned and picked up on a fresh deliveries
//! topic; the vehicles then drive to their destinations and park there (paced telemetry on a
//! fresh telemetry topic). One delivery is confirmed by its driver, one is cancelled, one was
//! promised for a time already past (late, then overdue), and an undecodable record sits in
//! the input. Two runs (each its own telemetry-processor and state database) consume the same
//! input: one undisturbed, one whose deliveries-processor is SIGKILLed twice mid-stream. Both
//! must publish the same notifications (by id), the expected ones, and end with the same
//! deliveries table: completion by the geofence after the dwell, by the driver, cancelled.
#![cfg(feature = "stack")]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, decode_all, fast_rejoin, now_ms, wait_ready};
use fleet_schemas::{
    DeadLetter, DeliveryEvent, DeliveryKind, Encoder, Notification, Position, Registry,
    TelemetryReading, ids,
};
use fleet_state::{StateStore, Store, StoreOptions};

const VEHICLES: usize = 10;
/// Readings per vehicle, 10 s apart: 20 driving, then 40 parked at the destination.
const DRIVING: usize = 20;
const PARKED: usize = 40;
const STEP_MS: i64 = 10_000;
const DWELL_S: i64 = 60;

fn dest(v: usize) -> (f64, f64) {
    (4.60 + v as f64 * 0.02, -74.08)
}

/// Where vehicle `v` is at reading `i`: ~4 km south of its destination, closing in.
fn pos(v: usize, i: usize) -> (f64, f64) {
    let (lat, lon) = dest(v);
    let left = DRIVING.saturating_sub(i) as f64 / DRIVING as f64;
    (lat - 0.036 * left, lon)
}

struct Data {
    base: i64,
    deliveries: Vec<DeliveryEvent>,
    telemetry: Vec<TelemetryReading>,
}

fn delivery_event(v: usize, kind: DeliveryKind, t: i64) -> DeliveryEvent {
    DeliveryEvent {
        event_id: ids::derived_id(&["e2e-delivery", &v.to_string(), &format!("{kind:?}")]),
        delivery_id: format!("DLV-{v:03}"),
        vehicle_id: format!("VEH-D{v:03}"),
        driver_id: Some(format!("DRV-{v:03}")),
        kind,
        event_time: t,
        ingest_time: t,
        sent_time: Some(t),
        position: None,
        destination: None,
        destination_radius_m: None,
        promised_by: None,
        note: None,
        reassigned_by: None,
    }
}

fn dataset() -> Data {
    let base = now_ms() - 2 * 3_600_000;
    let mut deliveries = Vec::new();
    for v in 0..VEHICLES {
        let (lat, lon) = dest(v);
        // DLV-002 was promised for a time already past.
        let promised = if v == 2 { base } else { base + 86_400_000 };
        deliveries.push(DeliveryEvent {
            destination: Some(Position::new(lat, lon)),
            destination_radius_m: Some(150.0),
            promised_by: Some(promised),
            ..delivery_event(v, DeliveryKind::Created, base)
        });
        deliveries.push(delivery_event(v, DeliveryKind::Assigned, base + 1_000));
        if v != 9 {
            deliveries.push(delivery_event(v, DeliveryKind::PickedUp, base + 2_000));
        }
    }
    // DLV-008: the driver confirms it; DLV-009 (never picked up) is cancelled.
    deliveries.push(delivery_event(8, DeliveryKind::Delivered, base + 5_000));
    deliveries.push(delivery_event(9, DeliveryKind::Cancelled, base + 5_000));
    let mut telemetry = Vec::new();
    for i in 0..DRIVING + PARKED {
        for v in 0..VEHICLES {
            let t = base + 10_000 + i as i64 * STEP_MS;
            let vehicle_id = format!("VEH-D{v:03}");
            let (lat, lon) = pos(v, i);
            telemetry.push(TelemetryReading {
                event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
                vehicle_id,
                event_time: t,
                ingest_time: t,
                sent_time: Some(t),
                position: Position::new(lat, lon),
                speed_kmh: Some(if i < DRIVING { 45.0 } else { 0.0 }),
                heading_deg: None,
                cargo_temp_c: None,
                door_open: None,
                ignition_on: Some(true),
                accel_mps2: None,
                odometer_km: None,
                battery_v: None,
                camera_active: None,
                source: "e2e".into(),
            });
        }
    }
    Data {
        base,
        deliveries,
        telemetry,
    }
}

struct Run {
    notifications: String,
    dlq: String,
    state_url: String,
    telemetry_env: Vec<(&'static str, String)>,
    env: Vec<(&'static str, String)>,
}

impl Run {
    async fn new(deliveries: &str, telemetry: &str, dir: &std::path::Path, name: &str) -> Self {
        let notifications = testkit::random_name(&format!("e2e.dlv-notif.{name}"));
        let dlq = testkit::random_name(&format!("e2e.dlv-dlq.{name}"));
        let windows = testkit::random_name(&format!("e2e.dlv-windows.{name}"));
        for t in [&notifications, &dlq, &windows] {
            testkit::create_topic(t, 2).await;
        }
        let state_url = format!("sqlite://{}/{name}.db", dir.display());
        let common = [
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET_STATE_URL", state_url.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
            ("FLEET__RUNNER__TICK_INTERVAL", "200ms".into()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ];
        let mut telemetry_env = common.to_vec();
        telemetry_env.extend([
            ("FLEET__APP__INPUT_TOPIC", telemetry.to_owned()),
            ("FLEET__APP__WINDOWS_TOPIC", windows),
            (
                "FLEET__KAFKA__GROUP_ID",
                testkit::random_name(&format!("e2e.dlv-tele.{name}")),
            ),
        ]);
        let mut env = common.to_vec();
        env.extend([
            ("FLEET__APP__INPUT_TOPIC", deliveries.to_owned()),
            ("FLEET__APP__NOTIFICATIONS_TOPIC", notifications.clone()),
            ("FLEET__APP__PROFILES_TOPIC", String::new()),
            ("FLEET__APP__DWELL", format!("{DWELL_S}s")),
            ("FLEET__APP__POSITION_INTERVAL", "200ms".into()),
            (
                "FLEET__KAFKA__GROUP_ID",
                testkit::random_name(&format!("e2e.dlv.{name}")),
            ),
        ]);
        env.extend(fast_rejoin());
        Self {
            notifications,
            dlq,
            state_url,
            telemetry_env,
            env,
        }
    }

    fn start(&self) -> Proc {
        Proc::start("deliveries-processor", &self.env)
    }

    fn start_telemetry(&self) -> Proc {
        Proc::start("telemetry-processor", &self.telemetry_env)
    }
}

/// event_id -> (source_kind, subject); fails if two copies of an id differ.
async fn notifications(tail: &TopicTail) -> (BTreeMap<String, (String, String)>, usize) {
    let all: Vec<Notification> = decode_all(&tail.snapshot()).await;
    let mut seen = BTreeMap::new();
    for n in &all {
        let v = (n.source_kind.clone(), n.subject.clone());
        if let Some(prev) = seen.insert(n.event_id.clone(), v.clone()) {
            assert_eq!(prev, v, "copies of one notification id differ");
        }
    }
    (seen, all.len())
}

async fn settle(tail: &TopicTail, want: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = usize::MAX;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (seen, _) = notifications(tail).await;
        if seen.len() >= want && seen.len() == last {
            return;
        }
        last = seen.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_complete_and_notify_the_same_with_and_without_sigkill() {
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let deliveries = testkit::random_name("e2e.dlv.in");
    let telemetry = testkit::random_name("e2e.dlv.telemetry");
    testkit::create_topic(&deliveries, 3).await;
    testkit::create_topic(&telemetry, 4).await;
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-deliveries"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let data = dataset();
    let denc = Encoder::<DeliveryEvent>::register(&registry, &deliveries)
        .await
        .expect("schema");
    let mut drecords: Vec<(Vec<u8>, Vec<u8>)> = data
        .deliveries
        .iter()
        .map(|d| {
            (
                d.delivery_id.clone().into_bytes(),
                denc.encode(d).expect("encode"),
            )
        })
        .collect();
    drecords.push((b"DLV-BAD".to_vec(), b"not avro at all".to_vec()));
    let tenc = Encoder::<TelemetryReading>::register(&registry, &telemetry)
        .await
        .expect("schema");
    let trecords: Vec<(Vec<u8>, Vec<u8>)> = data
        .telemetry
        .iter()
        .map(|r| {
            (
                r.vehicle_id.clone().into_bytes(),
                tenc.encode(r).expect("encode"),
            )
        })
        .collect();

    let steady = Run::new(&deliveries, &telemetry, &dir, "steady").await;
    let crashy = Run::new(&deliveries, &telemetry, &dir, "crashy").await;
    // The same, exactly once: its read_committed reader must see every notification once.
    let mut exact = Run::new(&deliveries, &telemetry, &dir, "exact").await;
    exact
        .env
        .push(("FLEET__RUNNER__PROCESSING_GUARANTEE", "exactly_once".into()));
    let steady_tail = TopicTail::start(&steady.notifications);
    let crashy_tail = TopicTail::start(&crashy.notifications);
    let exact_tail = TopicTail::start(&exact.notifications);
    let dlq_tail = TopicTail::start(&steady.dlq);
    let tele = [
        steady.start_telemetry(),
        crashy.start_telemetry(),
        exact.start_telemetry(),
    ];
    let a = steady.start();
    let mut b = crashy.start();
    let mut c = exact.start();
    for p in tele.iter().chain([&a, &b, &c]) {
        assert!(wait_ready(p).await, "process ready");
    }
    testkit::populate_topic(&deliveries, &drecords).await;
    // Every delivery known (its picked_up / confirmed steps notified) before the vehicles move.
    assert!(
        steady_tail
            .wait_for(VEHICLES * 2, Duration::from_secs(60))
            .await
            >= VEHICLES * 2,
        "the steady run notified the status steps"
    );
    // 600 readings at 20/s: 30 s of wall clock; the crashy run is killed twice meanwhile.
    let producer = {
        let (topic, records) = (telemetry.clone(), trecords.clone());
        tokio::spawn(async move { testkit::populate_topic_paced(&topic, &records, 20).await })
    };
    for delay in [2_000u64, 1_500] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        b.kill9();
        c.kill9();
        b = crashy.start();
        c = exact.start();
        assert!(wait_ready(&b).await, "restarted");
        assert!(wait_ready(&c).await, "restarted (exactly once)");
    }
    producer.await.expect("producer");

    // Expected: per geofence delivery picked_up, arrived, delivered; DLV-002 also late and
    // overdue; DLV-008 picked_up, delivered; DLV-009 assigned, cancelled; assigned for all.
    let expected = VEHICLES /* assigned */ + 9 /* picked_up */ + 8 * 2 /* arrived, delivered */
        + 2 /* late, overdue */ + 1 /* DLV-008 delivered */ + 1 /* DLV-009 cancelled */;
    settle(&steady_tail, expected).await;
    settle(&crashy_tail, expected).await;
    settle(&exact_tail, expected).await;
    let (want, copies_a) = notifications(&steady_tail).await;
    let (got, copies_b) = notifications(&crashy_tail).await;
    let (exact_got, copies_c) = notifications(&exact_tail).await;
    assert_eq!(
        copies_a,
        want.len(),
        "an undisturbed run notifies each change once"
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, subject) in want.values() {
        let k = if kind == "delivery.status" {
            subject.rsplit(' ').next().unwrap_or("")
        } else {
            kind.as_str()
        };
        *kinds.entry(k).or_default() += 1;
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("arrived", 8),
            ("assigned", VEHICLES),
            ("cancelled", 1),
            ("delivered", 9),
            ("delivery.late", 1),
            ("delivery.overdue", 1),
            ("picked_up", 9),
        ]),
        "{want:#?}"
    );
    assert_eq!(got, want, "the killed run told exactly the same changes");
    assert_eq!(
        exact_got, want,
        "exactly once, killed twice: the same changes"
    );
    assert_eq!(copies_c, want.len(), "exactly once: no notification twice");
    eprintln!(
        "notifications: {} distinct; copies undisturbed {copies_a}, killed twice {copies_b}",
        want.len()
    );

    // The deliveries table of both runs.
    for run in [&steady, &crashy, &exact] {
        let store = Store::open(&run.state_url, StoreOptions::default())
            .await
            .expect("state");
        for v in 0..VEHICLES {
            let id = format!("DLV-{v:03}");
            let row = store.delivery(&id).await.expect("read").expect("row");
            match v {
                8 => {
                    assert_eq!(row.status, "delivered");
                    assert_eq!(row.completed_by.as_deref(), Some("driver"));
                    assert_eq!(row.delivered_at, Some(data.base + 5_000));
                }
                9 => assert_eq!(row.status, "cancelled"),
                _ => {
                    assert_eq!(row.status, "delivered", "{row:?}");
                    assert_eq!(row.completed_by.as_deref(), Some("geofence"));
                    // Parked from reading DRIVING on; delivered once the dwell has passed
                    // (positions are sampled, so up to the end of the parked readings).
                    let parked = data.base + 10_000 + DRIVING as i64 * STEP_MS;
                    let at = row.delivered_at.expect("delivered_at");
                    assert!(
                        at >= parked + DWELL_S * 1_000
                            && at <= parked + (PARKED as i64 - 1) * STEP_MS,
                        "{id}: delivered_at {} s after parking",
                        (at - parked) / 1_000
                    );
                    assert_eq!(row.late, v == 2);
                    assert_eq!(
                        (row.dest_lat, row.dest_lon),
                        (Some(dest(v).0), Some(dest(v).1))
                    );
                }
            }
            assert_eq!(row.vehicle_id, format!("VEH-D{v:03}"));
            assert_eq!(row.driver_id, Some(format!("DRV-{v:03}")));
        }
    }

    // The undecodable record: dead-lettered with its bytes, the process kept running.
    assert!(dlq_tail.wait_for(1, Duration::from_secs(20)).await >= 1);
    let dls: Vec<DeadLetter> = decode_all(&dlq_tail.snapshot()).await;
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0].original.as_deref(), Some(&b"not avro at all"[..]));
    assert_eq!(dls[0].source_topic, deliveries);

    for p in tele.into_iter().chain([a, b, c]) {
        let status = p
            .terminate(Duration::from_secs(20))
            .expect("stops on SIGTERM");
        assert!(status.success(), "clean exit: {status:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
