//! Kafka clients (librdkafka through `rdkafka`, built with `cmake-build`) and topic provisioning.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// How a producer is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerProfile {
    /// Batches for throughput (bulk telemetry): linger 5 ms, lz4.
    Throughput,
    /// Sends at once (emergencies, notifications): linger 0.
    Latency,
}

/// Base client settings from the config (brokers, statistics, raw options last).
fn base(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set(
        "statistics.interval.ms",
        cfg.statistics_interval.as_millis().to_string(),
    );
    c
}

fn apply_options(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
}

/// An idempotent producer with `acks=all`, tuned by `profile`.
pub fn producer(cfg: &KafkaConfig, profile: ProducerProfile) -> Result<FutureProducer> {
    let mut c = base(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("statistics.interval.ms", "0")
        .set("message.timeout.ms", "300000");
    match profile {
        ProducerProfile::Throughput => {
            c.set("linger.ms", "5")
                .set("compression.type", "lz4")
                .set("batch.num.messages", "10000");
        }
        ProducerProfile::Latency => {
            c.set("linger.ms", "0");
        }
    }
    apply_options(&mut c, cfg);
    Ok(c.create()?)
}

/// A transactional producer with `transactional.id` = `id`, transactions initialised: what it
/// sends between `begin_transaction` and `commit_transaction` becomes visible to
/// `read_committed` readers (librdkafka's default) all at once or not at all. A second
/// producer with the same id fences the first (its transaction is aborted).
pub fn transactional_producer(cfg: &KafkaConfig, id: &str) -> Result<FutureProducer> {
    transactional_producer_with(cfg, id, Duration::from_secs(60))
}

/// [`transactional_producer`] whose open transactions the broker aborts after `timeout`
/// without a commit (`transaction.timeout.ms`).
pub fn transactional_producer_with(
    cfg: &KafkaConfig,
    id: &str,
    timeout: Duration,
) -> Result<FutureProducer> {
    use rdkafka::producer::Producer as _;
    let mut c = base(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("statistics.interval.ms", "0")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", timeout.as_millis().to_string())
        .set("transactional.id", id);
    apply_options(&mut c, cfg);
    let p: FutureProducer = c.create()?;
    p.init_transactions(Duration::from_secs(30))?;
    Ok(p)
}

/// A rebalance as the consumer's owner sees it: the (topic, partition)s that came or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// Partitions given to this instance.
    Assigned(Vec<(String, i32)>),
    /// Partitions taken away from this instance.
    Revoked(Vec<(String, i32)>),
}

/// Consumer context: rebalance and statistics callbacks feed metrics, readiness and the run
/// loop (assigned and revoked partitions).
#[derive(Debug)]
pub struct FleetContext {
    metrics: Arc<Metrics>,
    rebalances: Option<tokio::sync::mpsc::UnboundedSender<Rebalanced>>,
    /// Offsets committed through a producer's transaction, which the consumer's own
    /// statistics do not see.
    txn_committed: std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

impl FleetContext {
    /// Records offsets committed in a transaction (`send_offsets_to_transaction`), so the
    /// committed-lag metric reflects them.
    pub fn note_committed(&self, offsets: &TopicPartitionList) {
        let mut m = self
            .txn_committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in offsets.elements() {
            if let Some(o) = e.offset().to_raw() {
                m.insert((e.topic().to_owned(), e.partition()), o);
            }
        }
    }

    fn txn_committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.txn_committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .copied()
    }
}

impl ClientContext for FleetContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.hi_offset < 0 || p.fetch_state == "none" {
                    continue;
                }
                let committed = self
                    .txn_committed(topic, *partition)
                    .map_or(p.committed_offset, |t| t.max(p.committed_offset));
                if let Some(lag) = committed_lag(p.hi_offset, p.lo_offset, committed) {
                    self.metrics.set_lag(topic, *partition, lag);
                }
                if p.app_offset >= 0 {
                    self.metrics.set_fetch_lag(
                        topic,
                        *partition,
                        (p.hi_offset - p.app_offset).max(0),
                    );
                }
            }
        }
    }
}

/// The lag an operator's tools show for a partition: records after the group's committed
/// offset. With nothing committed yet, every retained record counts (a restart would read them
/// all with `auto.offset.reset=earliest`). `None` when the watermarks are not known yet.
pub fn committed_lag(hi_offset: i64, lo_offset: i64, committed_offset: i64) -> Option<i64> {
    if hi_offset < 0 {
        return None;
    }
    let from = if committed_offset >= 0 {
        committed_offset
    } else if lo_offset >= 0 {
        lo_offset
    } else {
        return None;
    };
    Some((hi_offset - from).max(0))
}

impl ConsumerContext for FleetContext {
    fn post_rebalance(
        &self,
        _base_consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        let parts = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.metrics.set_assigned(tpl.count());
                if let Some(tx) = &self.rebalances {
                    let _ = tx.send(Rebalanced::Assigned(parts(tpl)));
                }
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.metrics.set_assigned(0);
                let mut txn = self
                    .txn_committed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in tpl.elements() {
                    self.metrics.forget_lag(e.topic(), e.partition());
                    txn.remove(&(e.topic().to_owned(), e.partition()));
                }
                drop(txn);
                if let Some(tx) = &self.rebalances {
                    let _ = tx.send(Rebalanced::Revoked(parts(tpl)));
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // NoOffset just means nothing new was stored since the last commit.
            if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                tracing::warn!(error = %e, "offset commit failed (will retry on the next commit)");
            }
        }
    }
}

/// The consumer type every binary uses.
pub type Consumer = StreamConsumer<FleetContext>;

/// An at-least-once consumer: offsets are stored by the run loop only after the outputs they
/// depend on are durable, and committed from the store every `auto.commit.interval.ms`.
pub fn consumer(
    cfg: &KafkaConfig,
    group_id: &str,
    metrics: Arc<Metrics>,
    rebalances: Option<tokio::sync::mpsc::UnboundedSender<Rebalanced>>,
) -> Result<Consumer> {
    group_consumer(cfg, group_id, metrics, rebalances, true)
}

/// A consumer of the state runtime ([`crate::task`]): offsets are committed only by the run
/// loop's commits (in the transaction with `exactly_once`), never automatically; reads
/// `read_committed` (and so waits for pending transactional offsets when it is assigned).
pub fn task_consumer(
    cfg: &KafkaConfig,
    group_id: &str,
    metrics: Arc<Metrics>,
    rebalances: Option<tokio::sync::mpsc::UnboundedSender<Rebalanced>>,
) -> Result<Consumer> {
    group_consumer(cfg, group_id, metrics, rebalances, false)
}

fn group_consumer(
    cfg: &KafkaConfig,
    group_id: &str,
    metrics: Arc<Metrics>,
    rebalances: Option<tokio::sync::mpsc::UnboundedSender<Rebalanced>>,
    auto_commit: bool,
) -> Result<Consumer> {
    let mut c = base(cfg);
    c.set("group.id", group_id)
        .set("enable.auto.commit", auto_commit.to_string())
        .set("isolation.level", "read_committed")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.auto_offset_reset)
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            cfg.session_timeout.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        // A fetch with nothing new returns after at most `fetch_wait` (100 ms by default;
        // librdkafka's is 500 ms), so a reading reaches the run loop quickly at low
        // per-partition rates.
        .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string())
        .set(
            "max.poll.interval.ms",
            cfg.max_poll_interval.as_millis().to_string(),
        );
    apply_options(&mut c, cfg);
    Ok(c.create_with_context(FleetContext {
        metrics,
        rebalances,
        txn_committed: std::sync::Mutex::default(),
    })?)
}

/// Partitions and configs of a topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Explicit topic configs (besides `min.insync.replicas`, which [`ensure_topics`] sets).
    pub configs: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A delete-policy topic with 7 days retention.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            configs: vec![
                ("cleanup.policy", "delete".into()),
                ("retention.ms", (7 * 24 * 3600 * 1000_i64).to_string()),
            ],
        }
    }
}

impl TopicSpec {
    /// A table topic (latest value per key, read from the beginning): compacted, so Kafka keeps
    /// at least the newest record of every key forever and drops the versions it replaced.
    pub fn table(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            configs: vec![
                ("cleanup.policy", "compact".into()),
                // A replaced version stays readable for an hour before the cleaner may drop it.
                ("min.compaction.lag.ms", "3600000".into()),
            ],
        }
    }
}

/// Replication of the topics a binary creates: `kafka.replication_factor` or, when it is 0,
/// the cluster's size up to 3; `kafka.min_insync_replicas` or, when 0, one less than the
/// replication factor (at least 1), so a write acknowledged by `acks=all` survives the loss of
/// any one broker once there are three.
pub fn replication_for(cfg: &KafkaConfig, brokers: usize) -> (i32, i32) {
    let rf = if cfg.replication_factor > 0 {
        cfg.replication_factor
    } else {
        i32::try_from(brokers.clamp(1, 3)).unwrap_or(1)
    };
    let min_isr = if cfg.min_insync_replicas > 0 {
        cfg.min_insync_replicas
    } else {
        (rf - 1).max(1)
    };
    (rf, min_isr)
}

/// The table consumer's context: end-of-partition events are how the table loader knows it
/// caught up (returned by `poll`), not errors worth a log line; everything else is logged as
/// by rdkafka's default context.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableContext;

impl ClientContext for TableContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(&error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for TableContext {}

/// A consumer for reading a whole topic as a table: no group offsets, assigned explicitly.
pub fn table_consumer(cfg: &KafkaConfig) -> Result<BaseConsumer<TableContext>> {
    let mut c = base(cfg);
    c.set(
        "group.id",
        format!(
            "fleet-table-{}-{}",
            std::process::id(),
            crate::metrics::now_ms()
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    // The initial load ends at each partition's end-of-partition event.
    .set("enable.partition.eof", "true")
    .set("statistics.interval.ms", "0")
    .set("fetch.wait.max.ms", "500");
    apply_options(&mut c, cfg);
    Ok(c.create_with_context(TableContext)?)
}

/// A consumer that follows topics from their current end, for readers that only want what
/// happens from now on (the API's live stream): a fresh group per process, no commits.
pub fn tail_consumer(cfg: &KafkaConfig, name: &str) -> Result<StreamConsumer> {
    let mut c = base(cfg);
    c.set(
        "group.id",
        format!(
            "fleet-tail-{name}-{}-{}",
            std::process::id(),
            crate::metrics::now_ms()
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "latest")
    .set("enable.partition.eof", "false")
    .set("statistics.interval.ms", "0")
    .set("session.timeout.ms", "6000")
    .set("heartbeat.interval.ms", "1000")
    .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string());
    apply_options(&mut c, cfg);
    Ok(c.create()?)
}

/// The default fleet topics with their partition counts (`fleet.telemetry` gets at least 12).
pub fn fleet_topics(default_partitions: i32) -> Vec<TopicSpec> {
    let p = default_partitions;
    vec![
        TopicSpec::new("fleet.telemetry", p.max(12)),
        TopicSpec::new("fleet.emergencies", p),
        TopicSpec::new("fleet.anomalies", p),
        TopicSpec::new("fleet.telemetry-windows", p),
        TopicSpec::new("fleet.notifications", p),
        TopicSpec::new("fleet.commands", p),
        TopicSpec::new("fleet.deliveries", p),
        TopicSpec::table("fleet.vehicle-profiles", p),
        TopicSpec::new("fleet.dlq", p),
    ]
}

/// How to create a configured topic: the [`fleet_topics`] entry for its key's default name
/// (a renamed `profiles_topic` stays a compacted table), else the entry whose name it is or
/// ends with (`prod.fleet.telemetry` gets `fleet.telemetry`'s 12 partitions), else a plain
/// delete-policy topic with `default_partitions`.
pub fn spec_for(topic: &crate::config::ConfiguredTopic, default_partitions: i32) -> TopicSpec {
    let all = fleet_topics(default_partitions);
    let by_default = topic
        .default
        .as_deref()
        .and_then(|d| all.iter().find(|s| s.name == d));
    let by_name = || {
        all.iter()
            .filter(|s| topic.name.ends_with(s.name.as_str()))
            .max_by_key(|s| s.name.len())
    };
    match by_default.or_else(by_name) {
        Some(spec) => TopicSpec {
            name: topic.name.clone(),
            ..spec.clone()
        },
        None => TopicSpec::new(topic.name.clone(), default_partitions),
    }
}

/// The names among `topics` that the cluster does not have (a metadata request, bounded).
pub async fn missing_topics(cfg: &KafkaConfig, topics: &[String]) -> Result<Vec<String>> {
    let mut c = base(cfg);
    c.set("statistics.interval.ms", "0");
    apply_options(&mut c, cfg);
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))?;
        let have: std::collections::HashSet<&str> = md.topics().iter().map(|t| t.name()).collect();
        Ok(topics
            .into_iter()
            .filter(|t| !have.contains(t.as_str()))
            .collect())
    })
    .await
    .map_err(|e| Error::Fatal(format!("metadata task: {e}")))?
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let mut c = base(cfg);
    c.set("statistics.interval.ms", "0");
    apply_options(&mut c, cfg);
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let brokers = if cfg.replication_factor > 0 && cfg.min_insync_replicas > 0 {
        0
    } else {
        // A metadata request at start-up (blocking, bounded): how many brokers the cluster has.
        admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))?
            .brokers()
            .len()
    };
    let (rf, min_isr) = replication_for(cfg, brokers);
    let min_isr = min_isr.to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut nt = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(rf))
                .set("min.insync.replicas", &min_isr);
            for (k, v) in &t.configs {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Config(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Produces one record, waiting while librdkafka's queue is full; resolves when queued and
/// returns the delivery future (acknowledgement by the broker).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<DeliveryFuture> {
    send_to(producer, topic, None, key, payload).await
}

/// [`send`] to an explicit partition (`None`: the partitioner's choice by key).
pub async fn send_to(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<DeliveryFuture> {
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        match producer.send_result(record) {
            Ok(fut) => return Ok(fut),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // Let librdkafka drain its queue; deliveries keep completing meanwhile.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(Error::Kafka(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production clusters use TLS and SASL: the client must be built with them (the `ssl`
    /// feature). librdkafka refuses these settings at creation when built without OpenSSL.
    #[tokio::test]
    async fn clients_accept_tls_and_sasl_settings() {
        let mut cfg = KafkaConfig::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "fleet"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            cfg.options.insert(k.into(), v.into());
        }
        assert!(producer(&cfg, ProducerProfile::Latency).is_ok());
        assert!(consumer(&cfg, "g", Metrics::new("test"), None).is_ok());
        cfg.options
            .insert("security.protocol".into(), "NOT_A_PROTOCOL".into());
        assert!(
            producer(&cfg, ProducerProfile::Latency).is_err(),
            "bad settings are refused"
        );
    }

    #[test]
    fn replication_follows_the_cluster_size_unless_configured() {
        let mut cfg = KafkaConfig::default();
        assert_eq!(replication_for(&cfg, 1), (1, 1));
        assert_eq!(replication_for(&cfg, 2), (2, 1));
        assert_eq!(replication_for(&cfg, 3), (3, 2));
        assert_eq!(replication_for(&cfg, 9), (3, 2), "at most 3 copies");
        assert_eq!(replication_for(&cfg, 0), (1, 1), "no metadata: 1");
        cfg.replication_factor = 5;
        assert_eq!(replication_for(&cfg, 9), (5, 4));
        cfg.min_insync_replicas = 3;
        assert_eq!(replication_for(&cfg, 9), (5, 3));
    }

    #[test]
    fn committed_lag_is_what_the_broker_tools_show() {
        assert_eq!(committed_lag(1000, 0, 1000), Some(0), "drained");
        assert_eq!(committed_lag(1000, 0, 400), Some(600));
        assert_eq!(
            committed_lag(1000, 300, -1001),
            Some(700),
            "nothing committed: every retained record"
        );
        assert_eq!(committed_lag(0, 0, -1001), Some(0), "empty partition");
        assert_eq!(committed_lag(-1, 0, 5), None, "watermarks unknown");
        assert_eq!(committed_lag(10, -1, -1001), None);
        assert_eq!(committed_lag(10, 0, 12), Some(0), "never negative");
    }
}
