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
    std::env::var("FLEET_SCHEMA_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned())
}

/// The local stack's state directory (`FLEET_STATE_DIR`, default `.fleet/` in the clone).
pub fn state_dir() -> std::path::PathBuf {
    std::env::var("FLEET_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.fleet")
        })
}

/// The development credentials `scripts/stack.sh up` generated (`credentials.env`).
pub fn credentials() -> std::collections::HashMap<String, String> {
    #[allow(clippy::expect_used)]
    let text = std::fs::read_to_string(state_dir().join("credentials.env"))
        .expect("credentials.env (scripts/stack.sh up writes it)");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
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
    send_all(&producer(), topic, records).await;
}

async fn send_all(p: &FutureProducer, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
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

/// A consumer in a fresh group, subscribed to `topic`, reading it from the beginning.
pub fn fresh_reader(prefix: &str, topic: &str) -> BaseConsumer {
    fresh_reader_on(&brokers(), prefix, topic)
}

/// [`fresh_reader`] on the cluster at `brokers`.
pub fn fresh_reader_on(brokers: &str, prefix: &str, topic: &str) -> BaseConsumer {
    #[allow(clippy::expect_used)]
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", random_name(prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    #[allow(clippy::expect_used)]
    c.subscribe(&[topic]).expect("subscribe");
    c
}

impl Consumed {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }
}

/// Follows a topic from the beginning in a background thread, collecting every record.
#[derive(Debug)]
pub struct TopicTail {
    records: std::sync::Arc<std::sync::Mutex<Vec<Consumed>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TopicTail {
    /// Starts following `topic`.
    pub fn start(topic: &str) -> Self {
        Self::start_on(&brokers(), topic)
    }

    /// Starts following `topic` on the cluster at `brokers`.
    pub fn start_on(brokers: &str, topic: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, t, b) = (
            records.clone(),
            stop.clone(),
            topic.to_owned(),
            brokers.to_owned(),
        );
        let handle = std::thread::spawn(move || {
            let c = fresh_reader_on(&b, "tail", &t);
            while !s.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let rec = Consumed::of(&m);
                    if let Ok(mut v) = r.lock() {
                        v.push(rec);
                    }
                }
            }
        });
        Self {
            records,
            stop,
            handle: Some(handle),
        }
    }

    /// Records seen so far.
    pub fn len(&self) -> usize {
        self.records.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Whether nothing was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the records seen so far.
    pub fn snapshot(&self) -> Vec<Consumed> {
        self.records.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` records were seen or `timeout` passed; returns the count.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let len = self.len();
            if len >= n || Instant::now() >= deadline {
                return len;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TopicTail {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Creates `topic` with `partitions` if it does not exist (replication from the cluster size).
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_on(&brokers(), topic, partitions).await;
}

/// [`create_topic`] on the cluster at `brokers`.
pub async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) {
    let cfg = crate::config::KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    #[allow(clippy::expect_used)]
    crate::kafka::ensure_topics(&cfg, &[crate::kafka::TopicSpec::new(topic, partitions)])
        .await
        .expect("create topic");
}

/// Produces `records` to `topic` at about `per_sec` records per second (acknowledged in
/// batches), so that a test can act on a process while its input is still arriving.
pub async fn populate_topic_paced(topic: &str, records: &[(Vec<u8>, Vec<u8>)], per_sec: usize) {
    let batch = (per_sec / 20).max(1);
    let p = producer();
    let start = Instant::now();
    for (i, chunk) in records.chunks(batch).enumerate() {
        send_all(&p, topic, chunk).await;
        let due = start + Duration::from_secs_f64((i + 1) as f64 * batch as f64 / per_sec as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
}

/// One partition as the broker's group tools see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
    /// The high watermark.
    pub high: i64,
}

impl PartitionLag {
    /// High watermark minus the committed offset (every retained record if none).
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(0)
    }
}

/// `group`'s committed offsets and the high watermarks of every partition of `topic`, read
/// like `kafka-consumer-groups --describe` does (an OffsetFetch; the caller does not join).
pub fn group_lag(group: &str, topic: &str) -> Vec<PartitionLag> {
    let timeout = Duration::from_secs(10);
    #[allow(clippy::expect_used)]
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("admin consumer");
    #[allow(clippy::expect_used)]
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    // Right after a broker starts, the group coordinator may still be loading or moving
    // (NotCoordinator, CoordinatorLoadInProgress): an OffsetFetch is retried until the deadline,
    // as `kafka-consumer-groups` does.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        match c.committed_offsets(tpl.clone(), timeout) {
            Ok(committed) => break committed,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "committed offsets: retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            #[allow(clippy::panic)]
            Err(e) => panic!("committed offsets of {group} on {topic}: {e}"),
        }
    };
    partitions
        .into_iter()
        .map(|p| {
            #[allow(clippy::expect_used)]
            let (_, high) = c.fetch_watermarks(topic, p, timeout).expect("watermarks");
            let committed = committed
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0);
            PartitionLag {
                partition: p,
                committed,
                high,
            }
        })
        .collect()
}
