//! Helpers for tests against a real broker (feature `testkit`): random names, bootstrap address
//! from the environment, populate and drain topics.

use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// `FLEET_KAFKA_BROKERS`, or the local stack's default.
pub fn brokers() -> String {
    std::env::var("FLEET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// `FLEET_SCHEMA_REGISTRY_URL`, or the local stack's default.
pub fn registry_url() -> String {
    std::env::var("FLEET_SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned())
}

/// A fresh name like `prefix-3f9a1c2b` (the local broker must never have a topic deleted).
pub fn random_name(prefix: &str) -> String {
    let n: u32 = rand::rng().random();
    format!("{prefix}-{n:08x}")
}

/// An idempotent producer for tests.
pub fn producer() -> FutureProducer {
    #[allow(clippy::expect_used)]
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("test producer")
}

/// Produces `records` (key, payload) to `topic` and waits for every acknowledgement.
pub async fn populate_topic(topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    let p = producer();
    let mut futs = Vec::with_capacity(records.len());
    for (k, v) in records {
        loop {
            match p.send_result(FutureRecord::to(topic).key(k).payload(v)) {
                Ok(f) => {
                    futs.push(f);
                    break;
                }
                Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for f in futs {
        #[allow(clippy::expect_used)]
        f.await.expect("delivery future").expect("delivered");
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Reads `topic` from the beginning with a fresh group until `want` records arrived or
/// `timeout` passed; returns what it read.
pub fn read_topic(topic: &str, want: usize, timeout: Duration) -> Vec<Consumed> {
    #[allow(clippy::expect_used)]
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", random_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    #[allow(clippy::expect_used)]
    c.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
    }
    out
}
