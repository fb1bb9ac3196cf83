//! telemetry-processor against the local stack: runs over the same live input, one
//! undisturbed and two killed with SIGKILL three times mid-stream (at least once and exactly
//! once), must emit the same windows (no window lost, nothing double-counted; exactly once:
//! no window emitted twice to a `read_committed` reader), and `vehicle_state` must hold each
//! vehicle's latest reading.
#![cfg(feature = "stack")]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, fast_rejoin, wait_progress, wait_ready};
use fleet_schemas::{Decoder, Encoder, Position, Registry, TelemetryReading, WindowAggregate, ids};
use fleet_state::{StateStore, Store, StoreOptions};

const BIN: &str = "telemetry-processor";
const VEHICLES: usize = 40;
const READINGS: usize = 150; // every 2 s: 5 minutes of event time per vehicle
const BASE: i64 = 1_700_000_040_000; // a minute boundary

fn dataset() -> Vec<TelemetryReading> {
    let mut out = Vec::with_capacity(VEHICLES * READINGS);
    for i in 0..READINGS {
        for v in 0..VEHICLES {
            let vehicle_id = format!("VEH-T{v:03}");
            let t = BASE + i as i64 * 2_000 + v as i64 * 17;
            out.push(TelemetryReading {
                event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
                vehicle_id,
                event_time: t,
                ingest_time: t,
                sent_time: None,
                position: Position::new(
                    4.6 + v as f64 * 0.01 + i as f64 * 1e-4,
                    -74.08 + i as f64 * 2e-4,
                ),
                speed_kmh: Some(((i * 7 + v) % 90) as f64),
                heading_deg: None,
                cargo_temp_c: Some(2.0 + ((i + v) % 9) as f64 * 0.5),
                door_open: Some(false),
                ignition_on: Some(true),
                accel_mps2: None,
                odometer_km: None,
                battery_v: None,
                camera_active: None,
                source: "e2e".into(),
            });
        }
    }
    // Bounded disorder: every 7th reading swaps with the next one (2 s apart, within lateness).
    for i in (0..out.len() - 1).step_by(7) {
        out.swap(i, i + 1);
    }
    out
}

/// A fresh input topic with the dataset encoded for it (not yet produced) and a DLQ topic.
struct LiveInput {
    data: Vec<TelemetryReading>,
    input: String,
    dlq: String,
    registry: Registry,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl LiveInput {
    async fn new() -> Self {
        let data = dataset();
        let input = testkit::random_name("e2e.tele.in");
        let dlq = testkit::random_name("e2e.tele.dlq");
        testkit::create_topic(&input, 4).await;
        testkit::create_topic(&dlq, 1).await;
        let registry = Registry::new(&testkit::registry_url()).expect("registry");
        let enc = Encoder::<TelemetryReading>::register(&registry, &input)
            .await
            .expect("schema");
        let records = data
            .iter()
            .map(|r| {
                (
                    r.vehicle_id.clone().into_bytes(),
                    enc.encode(r).expect("encode"),
                )
            })
            .collect();
        Self {
            data,
            input,
            dlq,
            registry,
            records,
        }
    }

    /// Produces the dataset over ~20 s (300 readings/s) in the background.
    fn produce_paced(&self) -> tokio::task::JoinHandle<()> {
        let (topic, records) = (self.input.clone(), self.records.clone());
        tokio::spawn(async move {
            testkit::populate_topic_paced(&topic, &records, 300).await;
        })
    }
}

struct Run {
    windows_topic: String,
    state_url: String,
    env: Vec<(&'static str, String)>,
}

impl Run {
    async fn new(input: &str, dlq: &str, dir: &std::path::Path, name: &str) -> Self {
        let windows_topic = testkit::random_name(&format!("e2e.windows.{name}"));
        testkit::create_topic(&windows_topic, 2).await;
        let state_url = format!("sqlite://{}/{name}.db", dir.display());
        let mut env = vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET_STATE_URL", state_url.clone()),
            ("FLEET__APP__INPUT_TOPIC", input.to_owned()),
            ("FLEET__APP__WINDOWS_TOPIC", windows_topic.clone()),
            ("FLEET__APP__ALLOWED_LATENESS", "10s".into()),
            ("FLEET__APP__IDLE_TIMEOUT", "3s".into()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.to_owned()),
            ("FLEET__RUNNER__TICK_INTERVAL", "250ms".into()),
            (
                "FLEET__KAFKA__GROUP_ID",
                testkit::random_name(&format!("e2e.tele.{name}")),
            ),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ];
        env.extend(fast_rejoin());
        Self {
            windows_topic,
            state_url,
            env,
        }
    }

    fn start(&self) -> Proc {
        Proc::start(BIN, &self.env)
    }
}

/// Window event id -> the window without its emission time; fails if two copies differ.
async fn windows(
    registry: &Registry,
    tail: &TopicTail,
) -> (BTreeMap<String, WindowAggregate>, usize) {
    let dec = Decoder::<WindowAggregate>::new(registry.clone());
    let mut seen: BTreeMap<String, WindowAggregate> = BTreeMap::new();
    let mut copies = 0;
    for rec in tail.snapshot() {
        let mut w = dec.decode(&rec.payload).await.expect("window decodes");
        w.ingest_time = 0;
        copies += 1;
        if let Some(prev) = seen.get(&w.event_id) {
            assert_eq!(
                prev, &w,
                "a re-emitted window must be identical to the first copy"
            );
        } else {
            seen.insert(w.event_id.clone(), w);
        }
    }
    (seen, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_window_and_double_counts_nothing() {
    let live = LiveInput::new().await;
    let (data, input, dlq, registry) = (&live.data, &live.input, &live.dlq, &live.registry);
    // Expected windows: distinct (vehicle, minute) pairs of the dataset.
    let mut expected_windows = std::collections::HashSet::new();
    let mut latest: HashMap<String, i64> = HashMap::new();
    for r in data {
        expected_windows.insert((
            r.vehicle_id.clone(),
            r.event_time - r.event_time.rem_euclid(60_000),
        ));
        let e = latest.entry(r.vehicle_id.clone()).or_insert(r.event_time);
        *e = (*e).max(r.event_time);
    }

    let dir = tempfile_dir();
    let steady = Run::new(input, dlq, &dir, "steady").await;
    let crashy = Run::new(input, dlq, &dir, "crashy").await;
    // The same, exactly once: its read_committed reader must see every window once.
    let mut exact = Run::new(input, dlq, &dir, "exact").await;
    exact
        .env
        .push(("FLEET__RUNNER__PROCESSING_GUARANTEE", "exactly_once".into()));
    let steady_tail = TopicTail::start(&steady.windows_topic);
    let crashy_tail = TopicTail::start(&crashy.windows_topic);
    let exact_tail = TopicTail::start(&exact.windows_topic);
    let a = steady.start();
    assert!(wait_ready(&a).await, "steady run ready");

    // The input arrives over ~20 s; the other runs are killed three times meanwhile.
    let producer = live.produce_paced();
    let mut kills = 0;
    for round in 0..3u64 {
        let p = crashy.start();
        let q = exact.start();
        assert!(wait_progress(&p).await, "round {round}: no progress");
        assert!(
            wait_progress(&q).await,
            "round {round}: no progress (exactly once)"
        );
        tokio::time::sleep(Duration::from_millis(400 + round * 300)).await;
        p.kill9();
        q.kill9();
        kills += 1;
    }
    let b = crashy.start();
    let c = exact.start();
    producer.await.expect("producer");

    let want = expected_windows.len();
    let got_a = steady_tail.wait_for(want, Duration::from_secs(90)).await;
    assert!(
        got_a >= want,
        "steady run emitted {got_a} of {want} windows"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut wb, mut copies_b) = windows(registry, &crashy_tail).await;
    while wb.len() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (wb, copies_b) = windows(registry, &crashy_tail).await;
    }
    let (mut wc, mut copies_c) = windows(registry, &exact_tail).await;
    while wc.len() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (wc, copies_c) = windows(registry, &exact_tail).await;
    }
    let (wa, copies_a) = windows(registry, &steady_tail).await;
    assert_eq!(
        wa.len(),
        want,
        "steady run: one window per vehicle and minute"
    );
    assert_eq!(copies_a, want, "an undisturbed run emits each window once");
    assert_eq!(wb.len(), want, "killed run: no window lost");
    for (id, w) in &wa {
        assert_eq!(
            wb.get(id),
            Some(w),
            "window {id} differs after {kills} kills"
        );
    }
    assert_eq!(
        wc, wa,
        "exactly once, killed {kills} times: the undisturbed run's windows"
    );
    assert_eq!(copies_c, want, "exactly once: no window emitted twice");
    let total: i64 = wa.values().map(|w| w.count).sum();
    assert_eq!(
        total as usize,
        data.len(),
        "every reading counted exactly once"
    );
    eprintln!(
        "telemetry kill -9 x{kills}: {want} windows, identical to the undisturbed run; {copies_b} copies emitted ({} re-emissions)",
        copies_b - want
    );

    // vehicle_state holds each vehicle's latest reading (writes are batched per tick).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = Store::open(&crashy.state_url, StoreOptions::default())
        .await
        .expect("state");
    let now = fleet_runtime_now();
    for (v, t) in &latest {
        let s = store
            .vehicle_state(v, now)
            .await
            .expect("read")
            .expect("vehicle state");
        assert_eq!(s.event_time, *t, "{v}: latest reading");
    }
    let rows = store
        .windows("VEH-T000", BASE, BASE + 3_600_000, now)
        .await
        .expect("windows");
    assert_eq!(rows.len(), 5, "vehicle_windows holds the closed windows");

    assert!(
        a.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    assert!(
        b.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    assert!(
        c.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_agree_with_one() {
    let live = LiveInput::new().await;
    let (input, dlq, registry) = (&live.input, &live.dlq, &live.registry);
    let dir = tempfile_dir();
    let single = Run::new(input, dlq, &dir, "single").await;
    let pair = Run::new(input, dlq, &dir, "pair").await;
    let single_tail = TopicTail::start(&single.windows_topic);
    let pair_tail = TopicTail::start(&pair.windows_topic);
    let s1 = single.start();
    let p1 = pair.start();
    assert!(wait_ready(&s1).await && wait_ready(&p1).await);
    let producer = live.produce_paced();
    // The second instance joins mid-stream: the group rebalances and partitions move.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p2 = pair.start();
    producer.await.expect("producer");
    let want = 200;
    assert_eq!(
        single_tail.wait_for(want, Duration::from_secs(90)).await,
        want
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (mut wp, _) = windows(registry, &pair_tail).await;
    while wp.len() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (wp, _) = windows(registry, &pair_tail).await;
    }
    let (ws, _) = windows(registry, &single_tail).await;
    assert_eq!(wp, ws, "two instances produce the same windows as one");
    // Both instances took part.
    for p in [&p1, &p2] {
        let (_, m) = p.get("/metrics").await.expect("metrics");
        assert!(
            m.contains("outcome=\"ok\"} "),
            "each instance processed input:\n{m}"
        );
    }
    for p in [s1, p1, p2] {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success())
        );
    }
}

fn fleet_runtime_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-telemetry"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
