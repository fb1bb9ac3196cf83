//! The run loop every processor shares.
//!
//! ```text
//! recv -> decode (poison: DeadLetter) -> Processor::process -> produce outputs
//!      -> [in flight until the broker acknowledged every output] -> store offset -> auto-commit
//! timer -> Processor::on_tick (watermarks, flushes) -> produce
//! SIGTERM -> stop polling -> drain in-flight -> commit -> Ok
//! ```
//!
//! ## Delivery guarantee
//! At least once. An input's offset is stored only after every output it produced (including
//! its dead letter) was acknowledged by the broker with `acks=all`; offsets are stored strictly
//! in consumption order, so a committed offset never skips an unfinished input. After a crash
//! the inputs after the last commit are processed again: outputs may be duplicated (they carry
//! deterministic `event_id`s for downstream de-duplication), nothing is lost.
//!
//! ## Committed offsets follow the hold
//! For every assigned partition the loop keeps `next`, the offset after its last finished
//! input. The stored offset is `min(Processor::hold, next)`, and it is stored again whenever it
//! can move: after each finished input, after each tick's outputs settle and after the
//! drain. librdkafka commits the stored
//! offsets every `auto.commit.interval.ms` (1 s), on revoke and at shutdown, so a drained
//! processor's committed offsets reach the high watermarks within about two ticks plus one
//! commit interval after its last output, and what operators' lag tools show is the truth.
//!
//! When the stored offset trails `next` (held back), the commit carries `next` in its metadata
//! (`fleet:next=N`). After a restart, inputs below that offset are counted in
//! `fleet_processor_reprocessed_records_total`: the work a restart repeats (0 after a clean
//! drain; a lower bound after a crash, which loses the uncommitted metadata too).
//!
//! ## Failure handling
//! * Poison (undecodable input, or the processor says [`ProcessError::Poison`]): a
//!   [`DeadLetter`] with the reason, detail, source topic/partition/offset, key and original
//!   bytes goes to the DLQ topic; the offset is stored once the dead letter is acknowledged.
//! * Transient ([`ProcessError::Transient`], registry unreachable, a produce that failed after
//!   librdkafka's own retries): retried with capped exponential backoff; the offset waits.
//!   `/health/ready` answers 503 ("retrying a transient failure for N ms: why") from the first
//!   failure until the input (or timer step) succeeds. The retry holds the loop: no other input
//!   and no rebalance event is handled meanwhile. If it outlasts `kafka.max_poll_interval`
//!   (300 s), librdkafka leaves the group and the partitions move to other members; the
//!   retried input is not lost (its offset was never stored) and is processed again by the
//!   new owner, and this member rejoins when its retry ends.
//! * Fatal ([`ProcessError::Fatal`], producer gone): the loop stops taking input, drains what is
//!   in flight, commits, and returns the error (the binary exits non-zero).
//!
//! Per-partition order is kept: inputs are processed one at a time in the order the consumer
//! delivers them, and produced in that order.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use fleet_schemas::{DeadLetter, Decoder, Encoder, Record, Registry, ids};
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Config, RunnerConfig, Section};
use crate::kafka::{self, Consumer, ProducerProfile};
use crate::metrics::{Metrics, now_ms};
use crate::outputs::Outputs;
use crate::{Error, ProcessError, Result};

/// One decoded input record with its Kafka coordinates.
#[derive(Debug)]
pub struct Input<'a, T> {
    /// The decoded record.
    pub record: T,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Source key.
    pub key: Option<&'a [u8]>,
    /// Kafka timestamp (ms), if any.
    pub timestamp_ms: Option<i64>,
}

/// A stateless processor's logic, called by the at-least-once run loop. Keep it thin: domain
/// decisions belong in the pure `fleet-domain` crate; this is where they meet Kafka. A
/// processor with state implements [`crate::StatefulProcessor`] instead.
pub trait Processor: Send {
    /// The record type of the input topics.
    type Input: Record;

    /// Handles one input; stage outputs in `out`.
    fn process(
        &mut self,
        input: &Input<'_, Self::Input>,
        out: &mut Outputs,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Called every `runner.tick_interval` with the current time (watermarks, flushes).
    fn on_tick(
        &mut self,
        _now_ms: i64,
        _out: &mut Outputs,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// The lowest offset of `partition` this processor still needs after a restart (for
    /// example the first notification of a lane still retrying its delivery). The runtime never stores an offset
    /// beyond it, so a restarted instance re-reads from there. `None`: no constraint.
    fn hold(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    /// Partitions taken away from this instance by a rebalance: forget their state (their
    /// new owner rebuilds it from the stored offsets).
    fn on_revoke(&mut self, _partitions: &[(String, i32)]) {}
}

/// What a run did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Inputs whose outputs were acknowledged and whose offsets were stored.
    pub processed: u64,
    /// Inputs sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Output records produced (dead letters included).
    pub outputs: u64,
}

/// Shared IO of one binary: config, registry client, producer, metrics.
#[derive(Clone)]
pub struct Runtime {
    /// Component name (the binary), used in metrics, dead letters and the default group id.
    pub component: &'static str,
    /// Kafka settings.
    pub kafka: crate::config::KafkaConfig,
    /// Loop settings.
    pub runner: RunnerConfig,
    /// Schema registry client.
    pub registry: Registry,
    /// Producer for outputs (idempotent, acks=all).
    pub producer: FutureProducer,
    /// Metrics and health.
    pub metrics: Arc<Metrics>,
    /// Address of the metrics server, if enabled.
    pub http_addr: Option<std::net::SocketAddr>,
    pub(crate) dlq_topic: Arc<str>,
    pub(crate) dlq: Encoder<DeadLetter>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("component", &self.component)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Creates the topics the binary is configured to use (`kafka.create_topics`), or checks they
/// exist and fails naming each missing one with its key. Table topics are left to
/// [`crate::table`], which creates its topic in either mode.
async fn provision_topics<A: Section>(config: &Config<A>) -> Result<()> {
    let topics = config.topics();
    let p = config.kafka.default_partitions;
    if config.kafka.create_topics {
        let mut specs: Vec<kafka::TopicSpec> = Vec::new();
        for t in &topics {
            if !specs.iter().any(|s| s.name == t.name) {
                specs.push(kafka::spec_for(t, p));
            }
        }
        return kafka::ensure_topics(&config.kafka, &specs).await;
    }
    let streams: Vec<&crate::config::ConfiguredTopic> = topics
        .iter()
        .filter(|t| {
            !kafka::spec_for(t, p)
                .configs
                .iter()
                .any(|(k, v)| *k == "cleanup.policy" && v == "compact")
        })
        .collect();
    let names: Vec<String> = streams.iter().map(|t| t.name.clone()).collect();
    let missing = kafka::missing_topics(&config.kafka, &names).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = streams
        .iter()
        .filter(|t| missing.contains(&t.name))
        .map(|t| format!("{} ({})", t.name, t.key))
        .collect();
    Err(Error::Config(format!(
        "missing topics and kafka.create_topics is off: {}; create them or turn \
         kafka.create_topics on",
        named.join(", ")
    )))
}

impl Runtime {
    /// Sets up the IO edge: creates missing topics (when `kafka.create_topics`), registers the
    /// dead-letter schema, creates the producer and starts the metrics/health server.
    pub async fn start<A: Section>(
        component: &'static str,
        config: &Config<A>,
        profile: ProducerProfile,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let metrics = Metrics::new(component);
        metrics.health.stall_timeout_ms.store(
            config.runner.stall_timeout.as_millis() as i64,
            Ordering::Relaxed,
        );
        metrics.health.progress(now_ms());
        let http_addr = crate::metrics::serve(&config.http, metrics.clone(), shutdown).await?;
        if let Some(addr) = http_addr {
            tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
        }
        provision_topics(config).await?;
        let registry = Registry::new(&config.registry.url)?;
        let dlq = retry_transient("registering the DeadLetter schema", &config.runner, || {
            Encoder::<DeadLetter>::register(&registry, &config.runner.dlq_topic)
        })
        .await?;
        let producer = kafka::producer(&config.kafka, profile)?;
        Ok(Self {
            component,
            kafka: config.kafka.clone(),
            runner: config.runner.clone(),
            registry,
            producer,
            metrics,
            http_addr,
            dlq_topic: Arc::from(config.runner.dlq_topic.as_str()),
            dlq,
        })
    }

    /// Writes one dead letter to the dead-letter topic and waits for the broker's
    /// acknowledgement (for rejections outside the run loop, e.g. a table record).
    pub async fn dead_letter(&self, dl: &DeadLetter) -> Result<()> {
        let payload = self.dlq.encode(dl)?;
        let fut = kafka::send(
            &self.producer,
            &self.dlq_topic,
            dl.source_key.as_deref(),
            Some(&payload),
        )
        .await?;
        match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(Error::Kafka(e)),
            Err(_) => Err(Error::Fatal("producer dropped a delivery".into())),
        }
    }

    /// The consumer group: `kafka.group_id`, or the component name.
    pub fn group_id(&self) -> String {
        if self.kafka.group_id.is_empty() {
            self.component.to_owned()
        } else {
            self.kafka.group_id.clone()
        }
    }

    /// Registers `T`'s schema for `topic` (retrying while the registry is unreachable).
    pub async fn encoder<T: Record>(&self, topic: &str) -> Result<Encoder<T>> {
        retry_transient("registering a schema", &self.runner, || {
            Encoder::<T>::register(&self.registry, topic)
        })
        .await
    }

    /// Consumes `topics` with `processor` until `shutdown` fires or a fatal error occurs.
    pub async fn run<P: Processor>(
        &self,
        processor: P,
        topics: &[&str],
        shutdown: CancellationToken,
    ) -> Result<RunSummary> {
        if self.runner.exactly_once() {
            return Err(Error::Config(format!(
                "{} runs on the at-least-once loop: runner.processing_guarantee = {:?} needs \
                 a processor on the state runtime (fleet_runtime::task)",
                self.component, self.runner.processing_guarantee
            )));
        }
        let (rebalances_tx, rebalances) = tokio::sync::mpsc::unbounded_channel();
        let consumer = kafka::consumer(
            &self.kafka,
            &self.group_id(),
            self.metrics.clone(),
            Some(rebalances_tx),
        )?;
        consumer.subscribe(topics)?;
        tracing::info!(component = self.component, group = %self.group_id(), ?topics, "consuming");
        let decoder = Decoder::<P::Input>::new(self.registry.clone());
        let mut lp = Loop {
            rt: self,
            consumer: &consumer,
            decoder,
            processor,
            out: Outputs::new(),
            in_flight: InFlight::default(),
            summary: RunSummary::default(),
            counters: Counters::new(&self.metrics),
            topics: Vec::new(),
            rebalances,
            dlq_log: DeadLetterLog::default(),
            positions: HashMap::new(),
            shutdown,
        };
        let result = lp.run().await;
        let summary = lp.summary.clone();
        drop(lp);
        // Offsets stored so far are exactly the finished inputs: commit them.
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; inputs after the last auto-commit will be re-processed")
            }
        }
        tracing::info!(?summary, "run loop stopped");
        result.map(|()| summary)
    }
}

/// Retries `op` while it fails with a transient schemas error (registry down at start-up).
async fn retry_transient<T, F, Fut>(what: &str, cfg: &RunnerConfig, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = fleet_schemas::Result<T>>,
{
    let mut delay = cfg.retry_initial;
    let mut attempts = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempts < 30 => {
                attempts += 1;
                tracing::warn!(error = %e, attempt = attempts, "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cfg.retry_max);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Metric handles of a run loop, created once per topic (a handle lookup allocates its
/// labels: not on the hot path).
pub(crate) struct Counters {
    pub(crate) ok: Vec<(String, Counter)>,
    pub(crate) dead: Vec<(String, Counter)>,
    outputs: Vec<(Arc<str>, Counter)>,
    in_flight: Gauge,
    pub(crate) retry_decode: Counter,
    pub(crate) retry_process: Counter,
    retry_produce: Counter,
}

impl Counters {
    pub(crate) fn new(m: &Metrics) -> Self {
        Self {
            ok: Vec::new(),
            dead: Vec::new(),
            outputs: Vec::new(),
            in_flight: m.in_flight(),
            retry_decode: m.retries("decode"),
            retry_process: m.retries("process"),
            retry_produce: m.retries("produce"),
        }
    }

    pub(crate) fn cached<'a>(
        cache: &'a mut Vec<(String, Counter)>,
        topic: &str,
        make: impl FnOnce() -> Counter,
    ) -> &'a Counter {
        let idx = match cache.iter().position(|(t, _)| t == topic) {
            Some(i) => i,
            None => {
                cache.push((topic.to_owned(), make()));
                cache.len() - 1
            }
        };
        &cache[idx].1
    }

    pub(crate) fn output(&mut self, m: &Metrics, topic: &Arc<str>) {
        let idx = match self
            .outputs
            .iter()
            .position(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic)
        {
            Some(i) => i,
            None => {
                self.outputs.push((topic.clone(), m.outputs(topic)));
                self.outputs.len() - 1
            }
        };
        self.outputs[idx].1.inc();
    }
}

/// Outputs of one input awaiting acknowledgement.
struct Entry {
    /// Source coordinates, `None` for timer outputs.
    source: Option<(Arc<str>, i32, i64)>,
    dead_lettered: bool,
    pending: Vec<(Arc<str>, DeliveryFuture)>,
}

/// Inputs in flight, in consumption order.
#[derive(Default)]
struct InFlight {
    entries: std::collections::VecDeque<Entry>,
}

enum Settled {
    /// The head entry is fully acknowledged.
    Done(Entry),
    /// One output of the head entry failed after librdkafka's retries; it must be re-sent.
    Failed {
        topic: Arc<str>,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        error: KafkaError,
    },
    /// The producer was dropped: fatal.
    Canceled,
}

impl InFlight {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Resolves when the head entry settles. Pending on an empty queue.
    fn poll_head(
        &mut self,
        cx: &mut std::task::Context<'_>,
        on_ack: &mut impl FnMut(&Arc<str>),
    ) -> Poll<Settled> {
        let Some(head) = self.entries.front_mut() else {
            return Poll::Pending;
        };
        let mut i = 0;
        while i < head.pending.len() {
            match head.pending[i].1.poll_unpin(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(result) => {
                    let (topic, _) = head.pending.swap_remove(i);
                    match result {
                        Ok(Ok(_delivery)) => on_ack(&topic),
                        Ok(Err((error, msg))) => {
                            return Poll::Ready(Settled::Failed {
                                topic,
                                key: msg.key().map(<[u8]>::to_vec),
                                payload: msg.payload().map(<[u8]>::to_vec),
                                error,
                            });
                        }
                        Err(_canceled) => return Poll::Ready(Settled::Canceled),
                    }
                }
            }
        }
        if head.pending.is_empty()
            && let Some(entry) = self.entries.pop_front()
        {
            return Poll::Ready(Settled::Done(entry));
        }
        Poll::Pending
    }
}

struct Loop<'r, P: Processor> {
    rt: &'r Runtime,
    consumer: &'r Consumer,
    decoder: Decoder<P::Input>,
    processor: P,
    out: Outputs,
    in_flight: InFlight,
    summary: RunSummary,
    counters: Counters,
    topics: Vec<Arc<str>>,
    rebalances: tokio::sync::mpsc::UnboundedReceiver<kafka::Rebalanced>,
    dlq_log: DeadLetterLog,
    positions: HashMap<(Arc<str>, i32), Position>,
    shutdown: CancellationToken,
}

/// Where an assigned partition stands.
struct Position {
    /// The offset after the last finished input of this run (`None`: none yet).
    next: Option<i64>,
    /// Last stored (offset, next).
    stored: (i64, i64),
    /// Inputs below this offset were processed by an earlier run.
    processed_before: i64,
    reprocessed: Counter,
}

/// Commit metadata prefix carrying the processed position when the committed offset is held
/// back.
const NEXT_META: &str = "fleet:next=";

/// How long reading the committed offsets of newly assigned partitions may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_next(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(NEXT_META)?.parse().ok()
}

/// Where a rejected Kafka record came from.
#[derive(Debug, Clone, Copy)]
pub struct KafkaSource<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Source key.
    pub key: Option<&'a [u8]>,
    /// Original bytes.
    pub payload: Option<&'a [u8]>,
    /// The record's timestamp; the dead letter's event time (now when absent).
    pub timestamp_ms: Option<i64>,
}

impl<'a> KafkaSource<'a> {
    /// The coordinates, key, bytes and timestamp of a consumed record.
    pub fn of<M: Message>(msg: &'a M) -> Self {
        Self {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key(),
            payload: msg.payload(),
            timestamp_ms: msg.timestamp().to_millis(),
        }
    }
}

/// The dead letter of a rejected Kafka record: id derived from component and coordinates (the
/// same on every replay), original key and bytes kept.
pub fn kafka_dead_letter(
    component: &str,
    src: KafkaSource<'_>,
    reason: &str,
    detail: &str,
) -> DeadLetter {
    let now = now_ms();
    let (partition, offset) = (src.partition.to_string(), src.offset.to_string());
    DeadLetter {
        event_id: ids::derived_id(&[component, src.topic, &partition, &offset]),
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        component: component.to_owned(),
        source_system: "kafka".to_owned(),
        source_topic: src.topic.to_owned(),
        source_partition: Some(src.partition),
        source_offset: Some(src.offset),
        source_key: src.key.map(<[u8]>::to_vec),
        original: None,
        event_time: src.timestamp_ms.unwrap_or(now),
        ingest_time: now,
        original_size: None,
        original_sha256: None,
    }
    .with_original(src.payload)
}

/// Dead letters logged individually per timer period.
const DLQ_LOG_PER_TICK: u32 = 20;

/// The log of dead-lettered records of a run loop: every dead letter is counted in metrics,
/// at most [`DLQ_LOG_PER_TICK`] are logged per timer period so that a flood of bad input
/// cannot flood the log; the rest are summarised at the end of the period.
#[derive(Debug)]
pub(crate) struct DeadLetterLog {
    budget: u32,
    suppressed: u64,
}

impl Default for DeadLetterLog {
    fn default() -> Self {
        Self {
            budget: DLQ_LOG_PER_TICK,
            suppressed: 0,
        }
    }
}

impl DeadLetterLog {
    /// Logs one dead-lettered record, within the period's budget.
    pub(crate) fn log(&mut self, msg: &BorrowedMessage<'_>, reason: &str, detail: &str) {
        if self.budget > 0 {
            self.budget -= 1;
            tracing::warn!(
                reason,
                detail,
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                "record dead-lettered"
            );
        } else {
            self.suppressed += 1;
        }
    }

    /// Ends the timer period: summarises what was not logged, refills the budget.
    pub(crate) fn end_period(&mut self) {
        if self.suppressed > 0 {
            tracing::warn!(
                suppressed = self.suppressed,
                "more records dead-lettered than logged (see fleet_processor_dead_letters_total)"
            );
        }
        *self = Self::default();
    }
}

enum Step {
    Continue,
    Stop,
}

enum Event<'m> {
    Stop,
    Rebalanced(kafka::Rebalanced),
    Settled(Settled),
    Tick,
    Message(rdkafka::error::KafkaResult<BorrowedMessage<'m>>),
}

impl<P: Processor> Loop<'_, P> {
    async fn run(&mut self) -> Result<()> {
        let mut tick = tokio::time::interval(self.rt.runner.tick_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max = self.rt.runner.max_in_flight;
        let shutdown = self.shutdown.clone();
        let consumer: &Consumer = self.consumer;
        let result = loop {
            let can_take = self.in_flight.len() < max;
            let has_in_flight = self.in_flight.len() > 0;
            let event = {
                let in_flight = &mut self.in_flight;
                let counters = &mut self.counters;
                let metrics = &self.rt.metrics;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => Event::Stop,
                    Some(r) = self.rebalances.recv() => Event::Rebalanced(r),
                    settled = poll_fn(|cx| {
                        in_flight.poll_head(cx, &mut |topic| counters.output(metrics, topic))
                    }), if has_in_flight => Event::Settled(settled),
                    _ = tick.tick() => Event::Tick,
                    msg = consumer.recv(), if can_take => Event::Message(msg),
                }
            };
            let step = match event {
                Event::Stop => Ok(Step::Stop),
                Event::Rebalanced(kafka::Rebalanced::Revoked(parts)) => {
                    for (topic, partition) in &parts {
                        let key = (self.topic_arc(topic), *partition);
                        self.positions.remove(&key);
                    }
                    self.processor.on_revoke(&parts);
                    Ok(Step::Continue)
                }
                Event::Rebalanced(kafka::Rebalanced::Assigned(parts)) => {
                    self.load_positions(&parts);
                    Ok(Step::Continue)
                }
                Event::Settled(settled) => self.on_settled(settled).await,
                Event::Tick => self.on_tick().await,
                Event::Message(Ok(m)) => self.on_message(&m).await,
                Event::Message(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    Ok(Step::Continue)
                }
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Stop) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.drain().await;
        self.store_all();
        result
    }

    /// Reads the committed offsets (and their `fleet:next=` metadata) of newly assigned
    /// partitions: where this run starts and what an earlier run had already processed.
    fn load_positions(&mut self, parts: &[(String, i32)]) {
        let mut tpl = TopicPartitionList::with_capacity(parts.len());
        for (topic, partition) in parts {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Invalid);
        }
        let committed = match self.consumer.committed_offsets(tpl, COMMITTED_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading committed offsets failed; re-processed inputs are not counted for these partitions");
                TopicPartitionList::new()
            }
        };
        for (topic, partition) in parts {
            let (offset, meta) = committed
                .find_partition(topic, *partition)
                .map(|e| (e.offset().to_raw().unwrap_or(-1), e.metadata().to_owned()))
                .unwrap_or((-1, String::new()));
            let processed = parse_next(&meta).map_or(offset, |n| n.max(offset));
            let topic = self.topic_arc(topic);
            // An input of the partition may have finished before this event was handled (the
            // poll that ran the rebalance callback can also return its first record): keep it.
            let next = self
                .positions
                .get(&(topic.clone(), *partition))
                .and_then(|p| p.next);
            self.positions.insert(
                (topic.clone(), *partition),
                Position {
                    next,
                    stored: (offset, processed),
                    processed_before: processed,
                    reprocessed: self.rt.metrics.reprocessed(&topic),
                },
            );
        }
    }

    /// Stores `min(hold, next)` for one partition if it moved (`next`: the offset after its
    /// last finished input in this run).
    fn store_position(&mut self, topic: &Arc<str>, partition: i32) {
        let Some(pos) = self.positions.get_mut(&(topic.clone(), partition)) else {
            return;
        };
        let Some(next) = pos.next else {
            return;
        };
        let at = self
            .processor
            .hold(topic, partition)
            .map_or(next, |h| h.min(next));
        if pos.stored == (at, next) {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(1);
        let stored = tpl
            .add_partition_offset(topic, partition, Offset::Offset(at))
            .and_then(|()| {
                if at < next
                    && let Some(mut e) = tpl.find_partition(topic, partition)
                {
                    e.set_metadata(format!("{NEXT_META}{next}"));
                }
                self.consumer.store_offsets(&tpl)
            });
        match stored {
            Ok(()) => pos.stored = (at, next),
            // The partition was revoked meanwhile: its new owner re-processes.
            Err(e) => {
                tracing::debug!(error = %e, topic = &**topic, partition, at, "offset not stored")
            }
        }
    }

    /// [`Self::store_position`] for every assigned partition (holds move on ticks).
    fn store_all(&mut self) {
        let keys: Vec<(Arc<str>, i32)> = self.positions.keys().cloned().collect();
        for (topic, partition) in keys {
            self.store_position(&topic, partition);
        }
    }

    fn next_settled(&mut self) -> impl Future<Output = Settled> + '_ {
        let in_flight = &mut self.in_flight;
        let counters = &mut self.counters;
        let metrics = &self.rt.metrics;
        poll_fn(move |cx| in_flight.poll_head(cx, &mut |topic| counters.output(metrics, topic)))
    }

    /// Waits (bounded by `drain_timeout`) for everything in flight and stores its offsets.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + self.rt.runner.drain_timeout;
        while self.in_flight.len() > 0 {
            let settled = match tokio::time::timeout_at(deadline, self.next_settled()).await {
                Ok(s) => s,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.in_flight.len(),
                        "drain timed out; those inputs will be re-processed after restart"
                    );
                    return;
                }
            };
            match self.on_settled(settled).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "while draining");
                    return;
                }
            }
        }
    }

    async fn on_settled(&mut self, settled: Settled) -> Result<Step> {
        match settled {
            Settled::Done(entry) => {
                if let Some((topic, partition, offset)) = &entry.source {
                    let next = offset + 1;
                    let metrics = &self.rt.metrics;
                    self.positions
                        .entry((topic.clone(), *partition))
                        .or_insert_with(|| Position {
                            next: None,
                            stored: (-1, -1),
                            processed_before: -1,
                            reprocessed: metrics.reprocessed(topic),
                        })
                        .next = Some(next);
                    self.store_position(topic, *partition);
                    let metrics = &self.rt.metrics;
                    if entry.dead_lettered {
                        self.summary.dead_lettered += 1;
                        Counters::cached(&mut self.counters.dead, topic, || {
                            metrics.records(topic, "dead_lettered")
                        })
                        .inc();
                    } else {
                        self.summary.processed += 1;
                        Counters::cached(&mut self.counters.ok, topic, || {
                            metrics.records(topic, "ok")
                        })
                        .inc();
                    }
                }
                if entry.source.is_none() {
                    // The tick may have moved holds (a lane's deliveries finished): store
                    // where each partition now stands.
                    self.store_all();
                }
                self.rt.metrics.health.progress(now_ms());
                self.set_in_flight();
                Ok(Step::Continue)
            }
            Settled::Failed {
                topic,
                key,
                payload,
                error,
            } => {
                self.counters.retry_produce.inc();
                tracing::warn!(error = %error, topic = &*topic, "output not acknowledged; re-sending");
                tokio::time::sleep(self.rt.runner.retry_initial).await;
                let fut = self
                    .send_one(&topic, key.as_deref(), payload.as_deref())
                    .await?;
                if let Some(head) = self.in_flight.entries.front_mut() {
                    head.pending.push((topic, fut));
                }
                Ok(Step::Continue)
            }
            Settled::Canceled => Err(Error::Fatal("producer dropped a delivery".into())),
        }
    }

    async fn on_tick(&mut self) -> Result<Step> {
        let now = now_ms();
        self.dlq_log.end_period();
        if self.in_flight.len() == 0 {
            self.rt.metrics.health.progress(now);
        }
        self.out.clear();
        match self.processor.on_tick(now, &mut self.out).await {
            Ok(()) => {}
            Err(ProcessError::Fatal(m)) => return Err(Error::Fatal(m)),
            Err(e) => {
                // A tick has no input to dead-letter; it runs again next period.
                self.counters.retry_process.inc();
                tracing::warn!(error = %e, "timer step failed; retried next tick");
                self.rt
                    .metrics
                    .health
                    .set_failing(Some(&format!("timer step: {e}")), now);
                self.out.clear();
                return Ok(Step::Continue);
            }
        }
        self.rt.metrics.health.set_failing(None, now);
        // Always an entry, empty or not: its settling stores the positions the tick's holds
        // allow.
        self.enqueue(None, false).await?;
        Ok(Step::Continue)
    }

    async fn on_message(&mut self, msg: &BorrowedMessage<'_>) -> Result<Step> {
        let topic = msg.topic();
        self.count_reprocessed(topic, msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or(&[]);
        let mut backoff = self.backoff();
        let mut dead = false;
        // Decode, retrying only while the registry is unreachable.
        let record = loop {
            match self.decoder.decode(payload).await {
                Ok(r) => break Some(r),
                Err(e) if e.is_transient() => {
                    self.counters.retry_decode.inc();
                    tracing::warn!(error = %e, "decode needs the registry; retrying in {:?}", backoff.delay());
                    self.rt
                        .metrics
                        .health
                        .set_failing(Some(&format!("decoding (registry): {e}")), now_ms());
                    if !backoff.wait(&self.shutdown).await {
                        return Ok(Step::Stop);
                    }
                }
                Err(e) => {
                    self.stage_dead_letter(msg, "decode_error", &e.to_string())?;
                    dead = true;
                    break None;
                }
            }
        };
        if let Some(record) = record {
            let input = Input {
                record,
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
                timestamp_ms: msg.timestamp().to_millis(),
            };
            loop {
                self.out.clear();
                match self.processor.process(&input, &mut self.out).await {
                    Ok(()) => break,
                    Err(ProcessError::Poison { reason, detail }) => {
                        self.stage_dead_letter(msg, reason, &detail)?;
                        dead = true;
                        break;
                    }
                    Err(ProcessError::Transient(m)) => {
                        self.counters.retry_process.inc();
                        tracing::warn!(error = %m, offset = msg.offset(), "transient; retrying in {:?}", backoff.delay());
                        self.rt.metrics.health.set_failing(
                            Some(&format!("{topic}/{}: {m}", msg.partition())),
                            now_ms(),
                        );
                        if !backoff.wait(&self.shutdown).await {
                            self.out.clear();
                            return Ok(Step::Stop);
                        }
                    }
                    Err(ProcessError::Fatal(m)) => return Err(Error::Fatal(m)),
                }
            }
        }
        self.rt.metrics.health.set_failing(None, now_ms());
        let source = Some((self.topic_arc(topic), msg.partition(), msg.offset()));
        self.enqueue(source, dead).await?;
        Ok(Step::Continue)
    }

    fn count_reprocessed(&mut self, topic: &str, partition: i32, offset: i64) {
        // Few partitions per instance; the Arc clone is a reference-count increment.
        let key = (self.topic_arc(topic), partition);
        if let Some(pos) = self.positions.get(&key)
            && offset < pos.processed_before
        {
            pos.reprocessed.inc();
        }
    }

    fn topic_arc(&mut self, topic: &str) -> Arc<str> {
        // Few input topics: a linear scan avoids an allocation per input.
        if let Some(t) = self.topics.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let arc: Arc<str> = Arc::from(topic);
        self.topics.push(arc.clone());
        arc
    }

    /// The retry delays of one input.
    fn backoff(&self) -> Backoff {
        Backoff::new(self.rt.runner.retry_initial, self.rt.runner.retry_max)
    }

    fn stage_dead_letter(
        &mut self,
        msg: &BorrowedMessage<'_>,
        reason: &'static str,
        detail: &str,
    ) -> Result<()> {
        let dl = kafka_dead_letter(self.rt.component, KafkaSource::of(msg), reason, detail);
        self.rt.metrics.dead_letters(reason).inc();
        self.dlq_log.log(msg, reason, detail);
        self.out.clear();
        let key = dl.source_key.as_deref().unwrap_or(&[]);
        self.out
            .push_keyed(&self.rt.dlq_topic, key, &self.rt.dlq, &dl)
            .map_err(|e| Error::Fatal(e.to_string()))
    }

    /// Produces the staged outputs and queues them as one in-flight entry.
    async fn enqueue(
        &mut self,
        source: Option<(Arc<str>, i32, i64)>,
        dead_lettered: bool,
    ) -> Result<()> {
        let mut pending = Vec::with_capacity(self.out.staged.len());
        for i in 0..self.out.staged.len() {
            let s = self.out.staged[i].clone();
            let key = &self.out.arena[s.key.clone()];
            let payload = &self.out.arena[s.payload.clone()];
            let fut = kafka::send(&self.rt.producer, &s.topic, Some(key), Some(payload)).await?;
            pending.push((s.topic, fut));
        }
        self.summary.outputs += pending.len() as u64;
        self.in_flight.entries.push_back(Entry {
            source,
            dead_lettered,
            pending,
        });
        self.set_in_flight();
        Ok(())
    }

    async fn send_one(
        &self,
        topic: &Arc<str>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<DeliveryFuture> {
        kafka::send(&self.rt.producer, topic, key, payload).await
    }

    fn set_in_flight(&self) {
        let n = self.in_flight.len();
        self.counters.in_flight.set(n as i64);
        self.rt.metrics.health.in_flight.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_carries_the_processed_position() {
        assert_eq!(parse_next(&format!("{NEXT_META}12345")), Some(12345));
        assert_eq!(parse_next(""), None);
        assert_eq!(parse_next("fleet:next="), None);
        assert_eq!(parse_next("other-tool-metadata"), None);
        assert_eq!(parse_next("fleet:next=12x"), None);
    }
}
