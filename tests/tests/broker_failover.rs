//! A broker dies under load: on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2, started by `scripts/stack.sh up --kafka-nodes 3` in a state dir of
//! its own), devices publish over MQTT through `mqtt-bridge` while `passthrough-processor`
//! consumes and produces; one broker is SIGKILLed mid-stream. Every acknowledged message must
//! reach Kafka and the processor's output, processing must go on while the node is down, and
//! the restarted node must rejoin and serve again.
#![cfg(feature = "stack")]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_e2e::mqtt::{Auth, Device};
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{
    BridgeRun, KafkaCluster, Proc, credentials, decode_all, mqtt_port, reading_json, wait_ready,
};
use fleet_schemas::TelemetryReading;

/// Kafka ports of this test's cluster: 19092, 19192, 19292 (controllers on each + 1).
const BASE_PORT: u16 = 19_092;

/// Publishes readings `from..to` at about `per_sec`, spread over 100 vehicles.
async fn publish(dev: &Device, run: &BridgeRun, from: usize, to: usize, per_sec: usize) {
    let start = Instant::now();
    let ts = fleet_e2e::now_ms();
    for i in from..to {
        let v = format!("VEH-F{:03}", i % 100);
        dev.publish(&run.topic(&v, "telemetry"), reading_json(&v, i, ts))
            .await;
        if i % 50 == 49 {
            let due = start + Duration::from_secs_f64((i + 1 - from) as f64 / per_sec as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
    }
}

/// The distinct sequence numbers (odometer) in a tail, and its record count.
async fn seqs(tail: &TopicTail) -> (HashSet<usize>, usize) {
    let recs = decode_all::<TelemetryReading>(&tail.snapshot()).await;
    let set = recs
        .iter()
        .filter_map(|r| r.odometer_km)
        .map(|o| o as usize)
        .collect();
    (set, recs.len())
}

/// Waits (up to `timeout`) until every sequence number below `n` is in `tail`.
async fn wait_all(tail: &TopicTail, n: usize, timeout: Duration) -> HashSet<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let (set, _) = seqs(tail).await;
        if (0..n).all(|s| set.contains(&s)) || Instant::now() >= deadline {
            return set;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn missing(set: &HashSet<usize>, n: usize) -> Vec<usize> {
    (0..n).filter(|s| !set.contains(s)).take(10).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_when_a_broker_is_killed_under_load() {
    const N: usize = 16_000;
    const MORE: usize = 2_000;
    let cluster = KafkaCluster::start(3, BASE_PORT);
    let brokers = cluster.brokers();
    let run = BridgeRun::new_on(&brokers, 6).await;
    let output = testkit::random_name("e2e.failover.out");
    testkit::create_topic_on(&brokers, &output, 6).await;

    let kafka = [("FLEET_KAFKA_BROKERS", brokers.clone())];
    let mut bridge_env = run.env(&testkit::random_name("bridge-failover"));
    bridge_env.extend(kafka.clone());
    let bridge = Proc::start("mqtt-bridge", &bridge_env);
    let mut proc_env = vec![
        ("FLEET__APP__INPUT_TOPIC", run.telemetry.clone()),
        ("FLEET__APP__OUTPUT_TOPIC", output.clone()),
        ("FLEET__RUNNER__DLQ_TOPIC", run.dlq.clone()),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("failover-passthrough"),
        ),
        ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
    ];
    proc_env.extend(kafka);
    let processor = Proc::start("passthrough-processor", &proc_env);
    assert!(wait_ready(&bridge).await, "bridge ready");
    assert!(wait_ready(&processor).await, "processor ready");

    let telemetry = TopicTail::start_on(&brokers, &run.telemetry);
    let out = TopicTail::start_on(&brokers, &output);
    let creds = credentials();
    let dev = Device::connect(
        &testkit::random_name("sim-failover"),
        mqtt_port(),
        Auth::Password(
            creds["FLEET_MQTT_SIMULATOR_USER"].clone(),
            creds["FLEET_MQTT_SIMULATOR_PASSWORD"].clone(),
        ),
    );
    assert!(
        dev.connected(Duration::from_secs(10)).await,
        "device connected"
    );

    // 16,000 readings at 2,000/s; node 1 (the first bootstrap address) dies after ~3 s.
    let killer = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (seen_in, seen_out) = (telemetry.len(), out.len());
        cluster.kill9(1);
        eprintln!("SIGKILLed kafka-1 with {seen_in} readings in Kafka, {seen_out} processed");
        (Instant::now(), seen_out)
    };
    let (_, (killed_at, out_at_kill)) = tokio::join!(publish(&dev, &run, 0, N, 2_000), killer);
    assert_eq!(
        dev.wait_acked(N, Duration::from_secs(120)).await,
        N,
        "the MQTT broker acknowledged every publish (each after Kafka's ack)"
    );
    let in_set = wait_all(&telemetry, N, Duration::from_secs(120)).await;
    assert!(
        missing(&in_set, N).is_empty(),
        "readings lost in Kafka, e.g. {:?}",
        missing(&in_set, N)
    );
    let out_set = wait_all(&out, N, Duration::from_secs(120)).await;
    assert!(
        missing(&out_set, N).is_empty(),
        "readings the processor never produced, e.g. {:?}",
        missing(&out_set, N)
    );
    let (_, out_total) = seqs(&out).await;
    eprintln!(
        "with kafka-1 down: all {N} readings in Kafka and processed ({} more outputs than inputs: \
         replays), {:.1} s after the kill",
        out_total.saturating_sub(N),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        out_total > out_at_kill,
        "processing went on while the node was down"
    );

    // The node comes back (the same script starts what is down) and the pipeline still serves.
    let restarted = Instant::now();
    tokio::task::block_in_place(|| cluster.up());
    eprintln!(
        "kafka-1 restarted in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    publish(&dev, &run, N, N + MORE, 2_000).await;
    assert_eq!(
        dev.wait_acked(N + MORE, Duration::from_secs(60)).await,
        N + MORE
    );
    let out_set = wait_all(&out, N + MORE, Duration::from_secs(90)).await;
    assert!(
        missing(&out_set, N + MORE).is_empty(),
        "after the restart, readings not processed, e.g. {:?}",
        missing(&out_set, N + MORE)
    );
    drop((bridge, processor, telemetry, out));
}
