//! The shared run loop, proven through `passthrough-processor` against the local stack:
//! dead letters, graceful shutdown, health and metrics, and `kill -9` mid-stream.
#![cfg(feature = "stack")]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, fast_rejoin, wait_ready};
use fleet_schemas::{DeadLetter, Decoder, Encoder, Position, Registry, TelemetryReading, ids};

const BIN: &str = "passthrough-processor";

struct Scenario {
    input: String,
    output: String,
    dlq: String,
    group: String,
    registry: Registry,
    /// Valid readings by event id.
    valid: HashMap<String, TelemetryReading>,
    /// Bad inputs: payload -> expected reason.
    bad: Vec<(Vec<u8>, &'static str)>,
    /// Every input record (key, payload) in production order.
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

fn reading(vehicle: usize, seq: usize, lat: f64) -> TelemetryReading {
    let vehicle_id = format!("VEH-{vehicle:05}");
    let t = 1_700_000_000_000 + seq as i64 * 1000;
    TelemetryReading {
        event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
        vehicle_id,
        event_time: t,
        ingest_time: t + 20,
        sent_time: Some(t + 5),
        position: Position::new(lat, -74.08 + seq as f64 * 1e-5),
        speed_kmh: Some((seq % 120) as f64),
        heading_deg: None,
        cargo_temp_c: Some(4.0),
        door_open: None,
        ignition_on: Some(true),
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "e2e".into(),
    }
}

impl Scenario {
    /// Topics with fresh names; `n_valid` good readings and `n_bad` bad inputs of three kinds,
    /// interleaved, produced to the input topic at once.
    async fn produce(n_valid: usize, n_bad: usize) -> Self {
        let s = Self::prepare(n_valid, n_bad).await;
        testkit::populate_topic(&s.input, &s.records).await;
        s
    }

    /// Like [`Scenario::produce`] but leaves producing to the caller.
    async fn prepare(n_valid: usize, n_bad: usize) -> Self {
        let input = testkit::random_name("e2e.in");
        let output = testkit::random_name("e2e.out");
        let dlq = testkit::random_name("e2e.dlq");
        testkit::create_topic(&input, 4).await;
        testkit::create_topic(&output, 4).await;
        testkit::create_topic(&dlq, 2).await;
        let registry = Registry::new(&testkit::registry_url()).expect("registry client");
        let enc = Encoder::<TelemetryReading>::register(&registry, &input)
            .await
            .expect("register input schema (is the stack up? scripts/stack.sh up)");
        let mut valid = HashMap::new();
        let mut bad = Vec::new();
        let mut records = Vec::with_capacity(n_valid + n_bad);
        let every = n_valid.checked_div(n_bad).unwrap_or(usize::MAX).max(1);
        let mut b = 0;
        for i in 0..n_valid {
            let r = reading(i % 97, i, 4.6 + (i % 50) as f64 * 0.001);
            records.push((
                r.vehicle_id.clone().into_bytes(),
                enc.encode(&r).expect("encode"),
            ));
            valid.insert(r.event_id.clone(), r);
            if i % every == 0 && b < n_bad {
                let (payload, reason) = match b % 3 {
                    // The device JSON, never converted: not the Confluent wire format.
                    0 => (
                        format!("{{\"vehicleId\":\"VEH-{b}\",\"speed\":65.5}}").into_bytes(),
                        "decode_error",
                    ),
                    // Framed, but the Avro body is truncated.
                    1 => {
                        let mut p = enc.encode(&reading(1, 1_000_000 + b, 4.6)).expect("encode");
                        p.truncate(p.len() / 2);
                        (p, "decode_error")
                    }
                    // Valid Avro, rejected by the processor's rule.
                    _ => (
                        enc.encode(&reading(2, 2_000_000 + b, 123.0))
                            .expect("encode"),
                        "invalid_position",
                    ),
                };
                records.push((format!("BAD-{b}").into_bytes(), payload.clone()));
                bad.push((payload, reason));
                b += 1;
            }
        }
        Self {
            group: testkit::random_name("e2e.group"),
            input,
            output,
            dlq,
            registry,
            valid,
            bad,
            records,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET__APP__INPUT_TOPIC", self.input.clone()),
            ("FLEET__APP__OUTPUT_TOPIC", self.output.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", self.dlq.clone()),
            ("FLEET__KAFKA__GROUP_ID", self.group.clone()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ]
    }

    fn start(&self) -> Proc {
        Proc::start(BIN, &self.env())
    }

    fn start_with(&self, extra: &[(&'static str, String)]) -> Proc {
        let mut env = self.env();
        env.extend_from_slice(extra);
        Proc::start(BIN, &env)
    }

    /// Decodes the output topic: event id -> times seen; fails on any foreign record.
    async fn output_ids(&self, tail: &TopicTail) -> HashMap<String, usize> {
        let dec = Decoder::<TelemetryReading>::new(self.registry.clone());
        let mut seen = HashMap::new();
        for rec in tail.snapshot() {
            let r = dec.decode(&rec.payload).await.expect("output decodes");
            let want = self
                .valid
                .get(&r.event_id)
                .expect("output is one of the inputs");
            assert_eq!(&r, want, "forwarded unchanged");
            assert_eq!(
                rec.key.as_deref(),
                Some(r.vehicle_id.as_bytes()),
                "keyed by vehicle"
            );
            *seen.entry(r.event_id).or_insert(0) += 1;
        }
        seen
    }

    /// Decodes the DLQ: (original bytes, reason) -> times seen.
    async fn dead_letters(&self, tail: &TopicTail) -> HashMap<(Vec<u8>, String), usize> {
        let dec = Decoder::<DeadLetter>::new(self.registry.clone());
        let mut seen = HashMap::new();
        for rec in tail.snapshot() {
            let d = dec.decode(&rec.payload).await.expect("dead letter decodes");
            assert_eq!(d.source_topic, self.input);
            assert_eq!(d.component, BIN);
            assert!(d.source_partition.is_some() && d.source_offset.is_some());
            assert!(
                d.source_key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(b"BAD-")),
                "source key kept"
            );
            assert!(!d.detail.is_empty(), "detail says why");
            *seen
                .entry((d.original.unwrap_or_default(), d.reason))
                .or_insert(0) += 1;
        }
        seen
    }

    fn expected_dead_letters(&self) -> HashSet<(Vec<u8>, String)> {
        self.bad
            .iter()
            .map(|(p, r)| (p.clone(), (*r).to_owned()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_valid_records_dead_letters_bad_ones_and_stops_cleanly() {
    let s = Scenario::produce(600, 30).await;
    let out = TopicTail::start(&s.output);
    let dlq = TopicTail::start(&s.dlq);
    let p = s.start();
    assert!(wait_ready(&p).await, "ready: partitions assigned");
    assert_eq!(
        out.wait_for(600, Duration::from_secs(90)).await,
        600,
        "every valid input forwarded"
    );
    assert_eq!(
        dlq.wait_for(30, Duration::from_secs(30)).await,
        30,
        "every bad input dead-lettered"
    );

    let forwarded = s.output_ids(&out).await;
    assert_eq!(
        forwarded.keys().cloned().collect::<HashSet<_>>(),
        s.valid.keys().cloned().collect()
    );
    assert!(
        forwarded.values().all(|n| *n == 1),
        "no duplicates without a crash"
    );
    let dead = s.dead_letters(&dlq).await;
    assert_eq!(
        dead.keys().cloned().collect::<HashSet<_>>(),
        s.expected_dead_letters()
    );
    assert_eq!(
        dead.keys().filter(|(_, r)| r == "invalid_position").count(),
        10
    );

    // Metrics count what happened.
    let (status, metrics) = p.get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let ok_line = format!(
        "fleet_processor_records_total{{component=\"{BIN}\",topic=\"{}\",outcome=\"ok\"}} 600",
        s.input
    );
    assert!(metrics.contains(&ok_line), "{ok_line} in\n{metrics}");
    assert!(
        metrics.contains("outcome=\"dead_lettered\"} 30"),
        "{metrics}"
    );
    assert!(metrics.contains("fleet_processor_dead_letters_total{component=\"passthrough-processor\",reason=\"invalid_position\"} 10"));
    assert_eq!(p.get("/health/live").await.map(|r| r.0), Some(200));

    // SIGTERM: drain, commit, exit 0.
    let status = p
        .terminate(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    // A restart in the same group resumes after the committed offsets: nothing is re-sent.
    let p2 = s.start();
    assert!(wait_ready(&p2).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        out.len(),
        600,
        "graceful stop committed every finished input"
    );
    assert_eq!(dlq.len(), 30);
    assert!(
        p2.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_loses_nothing() {
    const VALID: usize = 20_000;
    const BAD: usize = 150;
    let s = Scenario::prepare(VALID, BAD).await;
    let out = TopicTail::start(&s.output);
    let dlq = TopicTail::start(&s.dlq);
    // The input arrives over ~20 s while the processor is killed three times, each time shortly
    // after it started making progress: inputs consumed, outputs in flight, offsets not yet
    // committed. (A restarted member waits for the killed one's session timeout, 6 s here.)
    let input = s.input.clone();
    let records = s.records.clone();
    let producer = tokio::spawn(async move {
        testkit::populate_topic_paced(&input, &records, 1_000).await;
    });
    let mut kills = 0;
    let mut mid_input = 0;
    for round in 0..3u64 {
        let started = std::time::Instant::now();
        let p = s.start_with(&fast_rejoin());
        let progressed = fleet_e2e::wait_progress(&p).await;
        assert!(progressed, "round {round}: no progress within 40 s");
        eprintln!(
            "round {round}: progress {:?} after start",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300 + round * 400)).await;
        if !producer.is_finished() {
            mid_input += 1;
        }
        p.kill9();
        kills += 1;
        // Restarted at once: Apache Kafka rebalances the killed member's partitions to the new
        // one when its session expires.
    }
    assert!(
        mid_input >= 2,
        "only {mid_input} kills landed while input was still arriving"
    );
    producer.await.expect("producer task");
    let mut p = s.start_with(&fast_rejoin());
    // Wait for every valid input by id, not by count: replays after the kills add duplicates,
    // so the count can reach VALID while inputs are still on their way.
    let mut got = 0;
    for _ in 0..18 {
        out.wait_for(VALID, Duration::from_secs(10)).await;
        let forwarded = s.output_ids(&out).await;
        got = s
            .valid
            .keys()
            .filter(|id| forwarded.contains_key(*id))
            .count();
        if got >= VALID {
            break;
        }
        let (_, metrics) = p.get("/metrics").await.unwrap_or_default();
        let progress: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("fleet_processor_records_total")
                    || l.starts_with("fleet_consumer_assigned")
                    || l.starts_with("fleet_processor_in_flight")
            })
            .collect();
        eprintln!("final run: {got} of {VALID} valid inputs forwarded so far; {progress:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(
        got >= VALID,
        "only {got} of {VALID} valid inputs forwarded after {kills} kills"
    );
    // Let the last in-flight records land, then check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(p.alive());

    let forwarded = s.output_ids(&out).await;
    let missing: Vec<_> = s
        .valid
        .keys()
        .filter(|id| !forwarded.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} valid inputs lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let duplicates: usize = forwarded.values().map(|n| n - 1).sum();
    let dead = s.dead_letters(&dlq).await;
    let expected = s.expected_dead_letters();
    for want in &expected {
        assert!(
            dead.contains_key(want),
            "bad input without a dead letter: reason {}",
            want.1
        );
    }
    assert_eq!(dead.len(), expected.len(), "no unexpected dead letters");
    eprintln!(
        "kill -9 x{kills} ({mid_input} while input was arriving): {VALID} valid inputs, {} outputs ({duplicates} duplicates), {} dead letters for {BAD} bad inputs",
        forwarded.values().sum::<usize>(),
        dead.values().sum::<usize>()
    );
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}
