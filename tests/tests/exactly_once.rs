//! The state runtime's exactly-once mode, proven through `passthrough-processor` with
//! de-duplication (per-vehicle state) against Apache Kafka: `kill -9` mid-stream, and a
//! zombie (SIGSTOP) whose partitions moved to another instance. A `read_committed` reader of
//! the output must see every distinct valid reading exactly once, and every bad input has
//! exactly one dead letter.
#![cfg(feature = "stack")]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, fast_rejoin, wait_committed_to_end, wait_progress};
use fleet_schemas::{DeadLetter, Decoder, Encoder, Position, Registry, TelemetryReading, ids};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const BIN: &str = "passthrough-processor";

/// One input record: key and payload.
type Rec = (Vec<u8>, Vec<u8>);

struct Run {
    input: String,
    output: String,
    dlq: String,
    group: String,
    registry: Registry,
    /// Distinct valid event ids.
    valid: HashSet<String>,
    /// Bad payloads.
    bad: HashSet<Vec<u8>>,
    /// Every input (key, payload), duplicates included, in production order.
    records: Vec<Rec>,
}

fn reading(vehicle: usize, seq: usize) -> TelemetryReading {
    let vehicle_id = format!("VEH-{vehicle:03}");
    let t = 1_700_000_000_000 + seq as i64 * 1000;
    TelemetryReading {
        event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
        vehicle_id,
        event_time: t,
        ingest_time: t + 20,
        sent_time: Some(t + 5),
        position: Position::new(4.6, -74.08 + seq as f64 * 1e-5),
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

impl Run {
    /// `n` distinct readings of 50 vehicles; every 10th is sent again 37 records later (a
    /// device's redelivery); a bad record every 100.
    async fn prepare(n: usize) -> Self {
        let input = testkit::random_name("e2e.eos.in");
        let output = testkit::random_name("e2e.eos.out");
        let dlq = testkit::random_name("e2e.eos.dlq");
        testkit::create_topic(&input, 4).await;
        testkit::create_topic(&output, 4).await;
        testkit::create_topic(&dlq, 2).await;
        let registry = Registry::new(&testkit::registry_url()).expect("registry client");
        let enc = Encoder::<TelemetryReading>::register(&registry, &input)
            .await
            .expect("register input schema (is the stack up? scripts/stack.sh up)");
        let mut valid = HashSet::new();
        let mut bad = HashSet::new();
        let mut records = Vec::new();
        // (position to send again at, record)
        let mut again: Vec<(usize, Rec)> = Vec::new();
        for i in 0..n {
            let r = reading(i % 50, i);
            let rec = (
                r.vehicle_id.clone().into_bytes(),
                enc.encode(&r).expect("encode"),
            );
            valid.insert(r.event_id.clone());
            records.push(rec.clone());
            if i % 10 == 0 {
                again.push((i + 37, rec));
            }
            while again.first().is_some_and(|(at, _)| *at <= i) {
                records.push(again.remove(0).1);
            }
            if i % 100 == 50 {
                let payload = format!("{{\"not\":\"avro {i}\"}}").into_bytes();
                records.push((format!("BAD-{i}").into_bytes(), payload.clone()));
                bad.insert(payload);
            }
        }
        records.extend(again.into_iter().map(|(_, r)| r));
        Self {
            group: testkit::random_name("e2e.eos.group"),
            input,
            output,
            dlq,
            registry,
            valid,
            bad,
            records,
        }
    }

    fn start_as(&self, instance: &str, guarantee: &str) -> Proc {
        self.start_with(instance, guarantee, &[])
    }

    fn start_with(
        &self,
        instance: &str,
        guarantee: &str,
        extra: &[(&'static str, String)],
    ) -> Proc {
        let mut env = vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET__APP__INPUT_TOPIC", self.input.clone()),
            ("FLEET__APP__OUTPUT_TOPIC", self.output.clone()),
            ("FLEET__APP__DEDUPE_IDS", "1000".into()),
            ("FLEET__RUNNER__DLQ_TOPIC", self.dlq.clone()),
            ("FLEET__RUNNER__PROCESSING_GUARANTEE", guarantee.into()),
            ("FLEET__RUNNER__INSTANCE_ID", instance.into()),
            ("FLEET__KAFKA__GROUP_ID", self.group.clone()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ];
        env.extend(fast_rejoin());
        env.extend_from_slice(extra);
        Proc::start(BIN, &env)
    }

    /// Valid event id -> times seen by a `read_committed` reader of the output.
    async fn output_ids(&self, tail: &TopicTail) -> HashMap<String, usize> {
        let dec = Decoder::<TelemetryReading>::new(self.registry.clone());
        let mut seen = HashMap::new();
        for rec in tail.snapshot() {
            let r = dec.decode(&rec.payload).await.expect("output decodes");
            assert!(
                self.valid.contains(&r.event_id),
                "output is one of the inputs"
            );
            *seen.entry(r.event_id).or_insert(0) += 1;
        }
        seen
    }

    async fn dead_letters(&self, tail: &TopicTail) -> HashMap<Vec<u8>, usize> {
        let dec = Decoder::<DeadLetter>::new(self.registry.clone());
        let mut seen = HashMap::new();
        for rec in tail.snapshot() {
            let d = dec.decode(&rec.payload).await.expect("dead letter decodes");
            assert_eq!(d.reason, "decode_error");
            *seen.entry(d.original.unwrap_or_default()).or_insert(0) += 1;
        }
        seen
    }

    /// Waits for the group to commit the whole input and for every valid reading in the
    /// output (none may be missing); returns how often each was seen.
    async fn settled_output(&self, out: &TopicTail, dlq: &TopicTail) -> HashMap<String, usize> {
        if let Err(view) =
            wait_committed_to_end(&self.group, &self.input, Duration::from_secs(120)).await
        {
            panic!("the group did not commit the whole input: {view:?}");
        }
        out.wait_for(self.valid.len(), Duration::from_secs(30))
            .await;
        dlq.wait_for(self.bad.len(), Duration::from_secs(30)).await;
        // Anything more (a duplicate) would arrive with the last commits: give it time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = self.output_ids(out).await;
        let missing = self
            .valid
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .count();
        assert_eq!(missing, 0, "valid readings missing from the output");
        seen
    }

    /// [`Run::settled_output`], then: every distinct valid reading once, every bad input
    /// dead-lettered once.
    async fn check_exactly_once(&self, out: &TopicTail, dlq: &TopicTail) {
        let seen = self.settled_output(out, dlq).await;
        let dup: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            dup.is_empty(),
            "{} readings forwarded more than once: {:?}",
            dup.len(),
            &dup[..dup.len().min(5)]
        );
        let dead = self.dead_letters(dlq).await;
        assert_eq!(dead.keys().cloned().collect::<HashSet<_>>(), self.bad);
        assert!(
            dead.values().all(|n| *n == 1),
            "a dead letter twice: {dead:?}"
        );
    }
}

/// Counts every record of `topic`, aborted transactions included (`read_uncommitted`).
fn uncommitted_count(topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .set("group.id", testkit::random_name("e2e.eos.uncommitted"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut n = 0;
    let mut idle = 0;
    while idle < 15 {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.payload().is_some() => {
                n += 1;
                idle = 0;
            }
            Some(_) => {}
            None => idle += 1,
        }
    }
    n
}

/// Feeds the input at 700/s while the processor is killed three times shortly after it
/// made progress (batches open, transactions in flight); returns the instance started after.
async fn kill_three_times(s: &Run, guarantee: &str) -> Proc {
    let (input, records) = (s.input.clone(), s.records.clone());
    let producer = tokio::spawn(async move {
        testkit::populate_topic_paced(&input, &records, 700).await;
    });
    let mut mid_input = 0;
    for round in 0..3u64 {
        let p = s.start_as("a", guarantee);
        assert!(
            wait_progress(&p).await,
            "round {round}: no progress within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(300 + round * 450)).await;
        if !producer.is_finished() {
            mid_input += 1;
        }
        p.kill9();
    }
    assert!(
        mid_input >= 2,
        "only {mid_input} kills landed while input was still arriving"
    );
    producer.await.expect("producer task");
    s.start_as("a", guarantee)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_neither_duplicates_nor_loses_with_exactly_once() {
    let s = Run::prepare(8_000).await;
    let out = TopicTail::start(&s.output);
    let dlq = TopicTail::start(&s.dlq);
    let p = kill_three_times(&s, "exactly_once").await;
    s.check_exactly_once(&out, &dlq).await;
    let all = tokio::task::spawn_blocking({
        let t = s.output.clone();
        move || uncommitted_count(&t)
    })
    .await
    .expect("reader");
    eprintln!(
        "exactly_once: {} committed output records, {all} including aborted transactions",
        s.valid.len()
    );
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|st| st.success()),
        "clean exit on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_loses_nothing_with_at_least_once() {
    let s = Run::prepare(8_000).await;
    let out = TopicTail::start(&s.output);
    let dlq = TopicTail::start(&s.dlq);
    let p = kill_three_times(&s, "at_least_once").await;
    let seen = s.settled_output(&out, &dlq).await;
    let extra: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "at_least_once: {} distinct readings, {extra} forwarded again after the kills",
        s.valid.len()
    );
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|st| st.success()),
        "clean exit on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_whose_partitions_moved_is_fenced_and_duplicates_nothing() {
    let s = Run::prepare(6_000).await;
    let out = TopicTail::start(&s.output);
    let dlq = TopicTail::start(&s.dlq);
    let (input, records) = (s.input.clone(), s.records.clone());
    let producer = tokio::spawn(async move {
        testkit::populate_topic_paced(&input, &records, 500).await;
    });
    // A transaction left open this long is aborted by the broker: the stalled instance below
    // outlives it, so its producer is fenced when it wakes up.
    let short = [("FLEET__RUNNER__TRANSACTION_TIMEOUT", "2s".to_owned())];
    let a = s.start_with("a", "exactly_once", &short);
    assert!(wait_progress(&a).await, "a: no progress");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A stalls with a batch open (a GC pause, a frozen VM): its session expires and B takes
    // every partition, restoring their state from the changelog.
    a.signal("STOP");
    let b = s.start_with("b", "exactly_once", &short);
    assert!(wait_progress(&b).await, "b: no progress");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A wakes up and tries to commit what it had: its transaction was aborted (its producer
    // is fenced: replaced) or its offsets are refused (it left the group): either way its
    // batch is aborted, and it rejoins and shares the partitions with B.
    a.signal("CONT");
    producer.await.expect("producer task");
    s.check_exactly_once(&out, &dlq).await;
    for p in [a, b] {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|st| st.success()),
            "clean exit on SIGTERM"
        );
    }
}
