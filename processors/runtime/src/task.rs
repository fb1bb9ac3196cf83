//! The state runtime: processors whose per-partition state the runtime owns, loads,
//! checkpoints and commits, at least once or exactly once.
//!
//! ## Writing a stateful processor
//! Implement [`StatefulProcessor`]: `process` handles one input against the [`State`] of the
//! input's partition, `on_tick` (optional) runs timers against each partition's state. That is
//! all: no offsets, holds, snapshots or partition maps. The runtime
//!
//! * creates a partition's state when the partition is assigned (quiet partitions too, so
//!   their timers run after a restart), by replaying its changelog partition, and drops it
//!   when the partition is revoked;
//! * batches inputs for `runner.commit_interval` (100 ms) or `runner.max_batch` inputs,
//!   whichever comes first, then commits the batch: the outputs, every state key the batch
//!   changed (once, its latest value; a tombstone if removed) to the changelog topic
//!   `<group>-changelog` (compacted; partition *p* holds the state of every input topic's
//!   partition *p*), a checkpoint record per partition naming the input offset its state
//!   covers, and the input offsets;
//! * with `runner.processing_guarantee = "exactly_once"` does all of that in one Kafka
//!   transaction (`transactional.id = <group>-<instance_id>`, offsets through
//!   `send_offsets_to_transaction` with the consumer's group metadata, so a zombie whose
//!   partitions were reassigned is fenced by the group generation).
//!
//! The shape follows Kafka Streams (a task per partition, its stores restored from changelog
//! topics, `exactly_once_v2`) rather than Arroyo's barrier checkpoints: we are Kafka-only, and
//! per-partition transactions need no coordination between instances. It differs in one
//! respect: the processor object is one per instance and is handed the input's partition
//! state, instead of one processor instance per task, so it holds its encoders and config once.
//!
//! ## Delivery guarantee
//! * `exactly_once`: outputs, state changes and input offsets of a batch become visible
//!   together (to `read_committed` readers, librdkafka's default) or not at all. A crash, a
//!   failed commit or a transient error aborts the open batch: the touched partitions' state
//!   is restored from the changelog and the consumer rewinds to the committed offsets, so an
//!   input is reflected in state and outputs exactly once. A restart with the same
//!   `instance_id` aborts its previous life's open transaction at once; otherwise the broker
//!   aborts it after `runner.transaction_timeout`. Side effects outside Kafka are not covered:
//!   a processor that writes elsewhere must write idempotently.
//! * `at_least_once`: the same batches, committed in steps: outputs acknowledged, then
//!   changelog records acknowledged, then offsets committed. State is never durable before
//!   the outputs it records, so a restart never finds an input handled whose outputs were
//!   lost. A crash repeats the inputs since the last commit: their outputs are produced
//!   again (same `event_id`s) and, if the batch's changelog records had landed, their state
//!   changes are applied twice.
//!
//! Writes outside Kafka (a processor's table rows) happen in [`StatefulProcessor::flush`],
//! before the commit, under either guarantee: at least once, idempotent.
//!
//! A restore reads the changelog partition to its end and on until it has seen the
//! checkpoint record of the committed offset (read after the group's pending transactional
//! offsets are resolved), so it never starts from state older than its offsets.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_schemas::{Decoder, Record};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::kafka::{self, Consumer};
use crate::metrics::now_ms;
use crate::runner::{Counters, DeadLetterLog, KafkaSource, kafka_dead_letter};
use crate::state::{ChangelogKey, State, checkpoint_key, parse_changelog_key, parse_checkpoint};
use crate::{Error, Input, Outputs, ProcessError, Result, RunSummary, Runtime};

/// A processor whose per-partition state the runtime owns (see the module docs).
pub trait StatefulProcessor: Send {
    /// The record type of the input topics.
    type Input: Record;
    /// The value of one state key (e.g. one vehicle's), checkpointed as JSON.
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Handles one input against the state of its partition; stages outputs in `out`. On an
    /// error the batch is aborted (poison: the input is dead-lettered instead, its state
    /// changes kept), so a failed call may leave `state` half changed.
    fn process(
        &mut self,
        input: &Input<'_, Self::Input>,
        state: &mut State<Self::State>,
        out: &mut Outputs,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Called every `runner.tick_interval` for each assigned partition, with its state.
    fn on_tick(
        &mut self,
        _now_ms: i64,
        _topic: &str,
        _partition: i32,
        _state: &mut State<Self::State>,
        _out: &mut Outputs,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// Called before each commit: write what the batch changed outside Kafka (rows of a
    /// table), idempotently. Kafka's transaction does not cover these writes: they may land
    /// for a batch that is then aborted, and are written again when its inputs are
    /// processed again, so write the latest value of a row, never a delta. An error aborts
    /// the batch.
    fn flush(&mut self) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// Called after each commit: the outputs, state and offsets of everything handled so
    /// far are durable (e.g. mark records "notified" in a table). Errors are the
    /// processor's to log and retry.
    fn committed(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Exactly once or at least once (`runner.processing_guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs, state and offsets in one Kafka transaction.
    ExactlyOnce,
    /// Outputs and state acknowledged, then offsets committed.
    AtLeastOnce,
}

impl Guarantee {
    fn of(runner: &crate::config::RunnerConfig) -> Self {
        if runner.exactly_once() {
            Self::ExactlyOnce
        } else {
            Self::AtLeastOnce
        }
    }
}

/// The changelog topic of a consumer group.
pub fn changelog_topic(group: &str) -> String {
    format!("{group}-changelog")
}

/// How long a restore may take before the run fails.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restore waits, at the changelog's end, for the checkpoint of the committed
/// offset (transaction markers still being written) before going on with what it read.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(15);
/// Timeout of one transactional call.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Commit attempts after retriable errors before the batch is aborted.
const COMMIT_ATTEMPTS: u32 = 5;

/// One assigned partition.
struct Task<V> {
    state: State<V>,
    /// Offset after the last input handled (in the open batch or before); -1: none yet.
    next: i64,
    /// Offset after the last input whose outputs, state and offset are committed; -1: unknown
    /// (nothing committed by the group yet).
    committed: i64,
    /// First offset consumed in the open batch (where to rewind when `committed` is unknown).
    batch_first: i64,
    /// Whether the open batch consumed or ticked this partition.
    touched: bool,
}

impl Runtime {
    /// Consumes `topics` with a [`StatefulProcessor`] until `shutdown` fires or a fatal
    /// error occurs (see the module docs for the guarantee).
    pub async fn run_stateful<P: StatefulProcessor>(
        &self,
        processor: P,
        topics: &[&str],
        shutdown: CancellationToken,
    ) -> Result<RunSummary> {
        let guarantee = Guarantee::of(&self.runner);
        let group = self.group_id();
        let changelog = changelog_topic(&group);
        self.ensure_changelog(&changelog, topics).await?;
        let txn_id = format!("{group}-{}", instance_id(&self.runner.instance_id));
        let producer = match guarantee {
            Guarantee::ExactlyOnce => self.init_transactions(&txn_id).await?,
            Guarantee::AtLeastOnce => self.producer.clone(),
        };
        let (rebalances_tx, rebalances) = tokio::sync::mpsc::unbounded_channel();
        let consumer = kafka::task_consumer(
            &self.kafka,
            &group,
            self.metrics.clone(),
            Some(rebalances_tx),
        )?;
        consumer.subscribe(topics)?;
        tracing::info!(component = self.component, %group, ?topics, %changelog, ?guarantee, "consuming (state runtime)");
        let mut lp = TaskLoop {
            rt: self,
            guarantee,
            consumer: &consumer,
            producer,
            txn_id,
            fenced_at: std::collections::VecDeque::new(),
            changelog: Arc::from(changelog.as_str()),
            decoder: Decoder::<P::Input>::new(self.registry.clone()),
            processor,
            out: Outputs::new(),
            tasks: HashMap::new(),
            open: None,
            batch_inputs: 0,
            deliveries: Vec::new(),
            rebalances,
            summary: RunSummary::default(),
            dlq_log: DeadLetterLog::default(),
            counters: Counters::new(&self.metrics),
            stopping: false,
            commits: 0,
            shutdown,
        };
        let result = lp.run().await;
        let summary = lp.summary.clone();
        tracing::info!(?summary, "state run loop stopped");
        result.map(|()| summary)
    }

    /// A transactional producer with `id`, its transactions initialised (which aborts what a
    /// previous producer with the same id left open).
    async fn init_transactions(&self, id: &str) -> Result<FutureProducer> {
        let (cfg, timeout, id) = (
            self.kafka.clone(),
            self.runner.transaction_timeout,
            id.to_owned(),
        );
        tokio::task::spawn_blocking(move || kafka::transactional_producer_with(&cfg, &id, timeout))
            .await
            .map_err(|e| Error::Fatal(format!("initialising transactions: {e}")))?
    }

    /// Creates the changelog topic (compacted, as many partitions as the widest input topic)
    /// or checks that it has enough partitions.
    async fn ensure_changelog(&self, changelog: &str, topics: &[&str]) -> Result<()> {
        let cfg = self.kafka.clone();
        let mut names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        names.push(changelog.to_owned());
        let counts = tokio::task::spawn_blocking(move || partition_counts(&cfg, &names))
            .await
            .map_err(|e| Error::Fatal(format!("reading topic metadata: {e}")))??;
        let need = topics
            .iter()
            .filter_map(|t| counts.get(*t).copied())
            .max()
            .unwrap_or(self.kafka.default_partitions);
        match counts.get(changelog) {
            Some(&have) if have >= need => Ok(()),
            Some(&have) => Err(Error::Config(format!(
                "changelog topic {changelog} has {have} partitions; the input topics have up to \
                 {need}: add partitions to it (its partition p holds the state of input partition p)"
            ))),
            None => {
                let mut spec = kafka::TopicSpec::table(changelog, need);
                spec.configs.retain(|(k, _)| *k != "retention.ms");
                kafka::ensure_topics(&self.kafka, &[spec]).await
            }
        }
    }
}

/// `runner.instance_id`, or the host name.
fn instance_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "0".to_owned())
}

/// Partition counts of the named topics that exist.
fn partition_counts(
    cfg: &crate::config::KafkaConfig,
    names: &[String],
) -> Result<HashMap<String, i32>> {
    let c = kafka::table_consumer(cfg)?;
    let md = c.fetch_metadata(None, Duration::from_secs(30))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| names.iter().any(|n| n == t.name()) && t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// The latest record of each changelog key of `partitions`, read to each partition's end
/// and on until the checkpoint of `want[(topic, partition)]` (the committed offset) is seen or
/// [`CHECKPOINT_WAIT`] passed at the end.
type Changes = HashMap<i32, HashMap<Vec<u8>, Option<Vec<u8>>>>;

fn read_changelog(
    cfg: &crate::config::KafkaConfig,
    changelog: &str,
    want: &HashMap<(String, i32), i64>,
) -> Result<Changes> {
    let c: BaseConsumer<kafka::TableContext> = kafka::table_consumer(cfg)?;
    let mut partitions: Vec<i32> = want.keys().map(|(_, p)| *p).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut out: Changes = partitions.iter().map(|p| (*p, HashMap::new())).collect();
    let mut at_end: HashMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    let mut seen: HashMap<(String, i32), i64> = HashMap::new();
    let started = Instant::now();
    let mut all_at_end_since: Option<Instant> = None;
    loop {
        let satisfied = want
            .iter()
            .all(|(k, committed)| *committed < 0 || seen.get(k).is_some_and(|s| s >= committed));
        if at_end.values().all(|e| *e) {
            if satisfied {
                break;
            }
            let since = *all_at_end_since.get_or_insert_with(Instant::now);
            if since.elapsed() > CHECKPOINT_WAIT {
                let missing: Vec<String> = want
                    .iter()
                    .filter(|(k, c)| **c >= 0 && seen.get(*k).is_none_or(|s| s < *c))
                    .map(|((t, p), c)| {
                        format!(
                            "{t}/{p} (committed {c}, checkpoint {:?})",
                            seen.get(&(t.clone(), *p))
                        )
                    })
                    .collect();
                tracing::warn!(
                    ?missing,
                    "no changelog checkpoint for the committed offsets (offsets reset by hand, or state written by another tool): going on with the state read"
                );
                break;
            }
        }
        if started.elapsed() > RESTORE_TIMEOUT {
            return Err(Error::Fatal(format!(
                "restoring state from {changelog} took more than {RESTORE_TIMEOUT:?}"
            )));
        }
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p, true);
            }
            Some(Err(e)) => {
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
                    continue;
                }
                tracing::warn!(error = %e, "reading the changelog");
            }
            Some(Ok(m)) => {
                at_end.insert(m.partition(), false);
                all_at_end_since = None;
                let Some(key) = m.key() else { continue };
                if let Ok(ChangelogKey::Checkpoint { topic }) = parse_changelog_key(key) {
                    if let Some(o) = parse_checkpoint(m.payload()) {
                        seen.insert((topic.to_owned(), m.partition()), o);
                    }
                    continue;
                }
                if let Some(part) = out.get_mut(&m.partition()) {
                    part.insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
                }
            }
        }
    }
    Ok(out)
}

struct TaskLoop<'r, P: StatefulProcessor> {
    rt: &'r Runtime,
    guarantee: Guarantee,
    consumer: &'r Consumer,
    producer: FutureProducer,
    /// `exactly_once`: the producer's transactional id.
    txn_id: String,
    /// When the producer was last fenced (at most [`MAX_FENCES`] within [`FENCE_WINDOW`]).
    fenced_at: std::collections::VecDeque<Instant>,
    changelog: Arc<str>,
    decoder: Decoder<P::Input>,
    processor: P,
    out: Outputs,
    tasks: HashMap<(Arc<str>, i32), Task<P::State>>,
    /// When the open batch began (`None`: no batch open).
    open: Option<Instant>,
    batch_inputs: usize,
    /// At least once: acknowledgements the commit waits for.
    deliveries: Vec<DeliveryFuture>,
    rebalances: tokio::sync::mpsc::UnboundedReceiver<kafka::Rebalanced>,
    summary: RunSummary,
    dlq_log: DeadLetterLog,
    counters: Counters,
    /// Set for the last commit, at shutdown.
    stopping: bool,
    /// Batches committed.
    commits: u64,
    shutdown: CancellationToken,
}

/// A producer fenced this often within [`FENCE_WINDOW`] means another live instance has the
/// same transactional id (`runner.instance_id` not unique): stop instead of fencing it back.
const MAX_FENCES: usize = 3;
/// See [`MAX_FENCES`].
const FENCE_WINDOW: Duration = Duration::from_secs(60);

/// Why a batch could not be committed.
enum BatchError {
    /// The producer was fenced: its open transaction is gone (the broker aborted it after
    /// `runner.transaction_timeout`, e.g. while this process was paused, or a newer producer
    /// with the same id started). A new producer is created and the batch handled as aborted.
    Fenced(String),
    /// Abort the batch, restore the touched partitions, rewind, go on.
    Abort(String),
    /// Stop the loop (fenced producer, broken invariant).
    Fatal(String),
}

impl<P: StatefulProcessor> TaskLoop<'_, P> {
    async fn run(&mut self) -> Result<()> {
        let mut tick = tokio::time::interval(self.rt.runner.tick_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shutdown.clone();
        let consumer: &Consumer = self.consumer;
        let mut backoff = Backoff::new(self.rt.runner.retry_initial, self.rt.runner.retry_max);
        let mut commits_seen = self.commits;
        loop {
            let deadline = self
                .open
                .map(|t| tokio::time::Instant::from_std(t + self.rt.runner.commit_interval));
            let full = self.batch_inputs >= self.rt.runner.max_batch;
            enum Ev<'m> {
                Stop,
                Rebalanced(kafka::Rebalanced),
                Commit,
                Tick,
                Message(rdkafka::error::KafkaResult<BorrowedMessage<'m>>),
            }
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Ev::Stop,
                Some(r) = self.rebalances.recv() => Ev::Rebalanced(r),
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => Ev::Commit,
                _ = async {}, if full => Ev::Commit,
                _ = tick.tick() => Ev::Tick,
                m = consumer.recv(), if !full => Ev::Message(m),
            };
            let step = match ev {
                Ev::Stop => break,
                Ev::Rebalanced(r) => self.on_rebalance(r).await,
                Ev::Commit => self.commit().await,
                Ev::Tick => self.on_tick().await,
                Ev::Message(Ok(m)) => {
                    // The poll that returned this record may have run rebalance callbacks:
                    // handle them first, so the record meets the assignment it belongs to.
                    let mut r = Ok(());
                    while let Ok(ev) = self.rebalances.try_recv() {
                        r = self.on_rebalance(ev).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    match r {
                        Ok(()) => self.on_message(&m).await,
                        e => e,
                    }
                }
                Ev::Message(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    Ok(())
                }
            };
            match step {
                Ok(()) => {
                    // Back to the first delay once a batch commits again (not after any
                    // step: a tick between two failing attempts is no recovery).
                    if self.commits != commits_seen {
                        commits_seen = self.commits;
                        backoff.reset();
                    }
                }
                Err(BatchError::Abort(why)) => {
                    self.rt.metrics.retries("batch").inc();
                    tracing::warn!(reason = %why, "batch aborted; restoring state and rewinding to the last commit in {:?}", backoff.delay());
                    self.rt.metrics.health.set_failing(Some(&why), now_ms());
                    match self.abort().await {
                        Err(BatchError::Fatal(e)) => return Err(Error::Fatal(e)),
                        Err(BatchError::Fenced(why)) => {
                            self.replace_producer(why).await?;
                            if let Err(BatchError::Fatal(e)) = self.abort().await {
                                return Err(Error::Fatal(e));
                            }
                        }
                        _ => {}
                    }
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
                Err(BatchError::Fenced(why)) => {
                    tracing::warn!(reason = %why, "producer fenced; creating a new one, restoring state and rewinding to the last commit");
                    self.replace_producer(why).await?;
                    if let Err(BatchError::Fatal(e)) = self.abort().await {
                        return Err(Error::Fatal(e));
                    }
                }
                Err(BatchError::Fatal(e)) => {
                    let _ = self.abort_txn().await;
                    return Err(Error::Fatal(e));
                }
            }
        }
        // Shutdown: commit what is open, and wait for it.
        self.stopping = true;
        match self.commit().await {
            Ok(()) => Ok(()),
            Err(BatchError::Fenced(why)) => {
                tracing::warn!(reason = %why, "final commit fenced; the open batch is processed again after restart");
                Ok(())
            }
            Err(BatchError::Abort(why) | BatchError::Fatal(why)) => {
                let _ = self.abort_txn().await;
                tracing::warn!(reason = %why, "final commit failed; the open batch is processed again after restart");
                Ok(())
            }
        }
    }

    /// Replaces a fenced producer (its transaction is gone: nothing to abort), unless it was
    /// fenced too often to be a paused process.
    async fn replace_producer(&mut self, why: String) -> Result<()> {
        let now = Instant::now();
        self.fenced_at
            .retain(|t| now.duration_since(*t) < FENCE_WINDOW);
        self.fenced_at.push_back(now);
        if self.fenced_at.len() >= MAX_FENCES {
            return Err(Error::Fatal(format!(
                "producer fenced {MAX_FENCES} times within {FENCE_WINDOW:?} ({why}): is another \
                 instance running with the same runner.instance_id?"
            )));
        }
        self.open = None;
        self.deliveries.clear();
        self.producer = self.rt.init_transactions(&self.txn_id).await?;
        Ok(())
    }

    fn topic_arc(&self, topic: &str) -> Arc<str> {
        self.tasks
            .keys()
            .find(|(t, _)| &**t == topic)
            .map_or_else(|| Arc::from(topic), |(t, _)| t.clone())
    }

    async fn on_rebalance(&mut self, r: kafka::Rebalanced) -> Result<(), BatchError> {
        match r {
            kafka::Rebalanced::Revoked(parts) => {
                // Commit what is open while the generation may still be ours; if the group
                // has moved on, the commit is fenced and the batch aborted: the new owner
                // starts from the last commit either way.
                let committed = self.commit().await;
                for (topic, partition) in &parts {
                    let key = (self.topic_arc(topic), *partition);
                    self.tasks.remove(&key);
                }
                match committed {
                    Ok(()) => Ok(()),
                    Err(BatchError::Abort(why)) => {
                        tracing::warn!(reason = %why, "commit at revoke failed; batch aborted");
                        // Partitions that stay assigned lost their batch too.
                        self.abort().await
                    }
                    Err(fatal) => Err(fatal),
                }
            }
            kafka::Rebalanced::Assigned(parts) => {
                let new: Vec<(String, i32)> = parts
                    .into_iter()
                    .filter(|(t, p)| !self.tasks.contains_key(&(Arc::from(t.as_str()), *p)))
                    .collect();
                self.restore(&new, false).await
            }
        }
    }

    /// Creates the tasks of `parts` from the committed offsets and the changelog; with
    /// `rewind`, also moves the consumer back to each one's committed offset.
    async fn restore(&mut self, parts: &[(String, i32)], rewind: bool) -> Result<(), BatchError> {
        if parts.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::with_capacity(parts.len());
        for (t, p) in parts {
            let _ = tpl.add_partition_offset(t, *p, Offset::Invalid);
        }
        // read_committed: waits for the group's pending transactional offsets.
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .map_err(|e| BatchError::Abort(format!("reading committed offsets: {e}")))?;
        let want: HashMap<(String, i32), i64> = parts
            .iter()
            .map(|(t, p)| {
                let o = committed
                    .find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                ((t.clone(), *p), o)
            })
            .collect();
        let (cfg, changelog, want2) = (
            self.rt.kafka.clone(),
            self.changelog.to_string(),
            want.clone(),
        );
        let changes = tokio::task::spawn_blocking(move || read_changelog(&cfg, &changelog, &want2))
            .await
            .map_err(|e| BatchError::Fatal(format!("restore task: {e}")))?
            .map_err(|e| BatchError::Abort(format!("restoring state: {e}")))?;
        let mut keys = 0usize;
        for ((topic, partition), committed) in &want {
            let mut state = State::new();
            if let Some(records) = changes.get(partition) {
                for (k, v) in records {
                    match parse_changelog_key(k) {
                        Ok(ChangelogKey::Entry { topic: t, key }) if t == topic => {
                            if let Err(e) = state.apply(key, v.as_deref()) {
                                return Err(BatchError::Fatal(format!(
                                    "changelog {} partition {partition} holds a value the state type cannot read ({e}): was the processor's state type changed incompatibly?",
                                    self.changelog
                                )));
                            }
                        }
                        _ => {}
                    }
                }
            }
            keys += state.len();
            if rewind
                && *committed >= 0
                && let Err(e) = self.consumer.seek(
                    topic,
                    *partition,
                    Offset::Offset(*committed),
                    Duration::from_secs(10),
                )
            {
                if self.still_assigned(topic, *partition) {
                    // Reading on from where the consumer is would skip the aborted inputs.
                    return Err(BatchError::Fatal(format!(
                        "rewinding {topic}/{partition} to {committed}: {e}"
                    )));
                }
                // Taken away meanwhile (a zombie fenced by the group): its new owner starts
                // from the committed offset; if it comes back, it is restored then.
                tracing::info!(topic, partition, "not rewound: no longer assigned");
                continue;
            }
            self.tasks.insert(
                (Arc::from(topic.as_str()), *partition),
                Task {
                    state,
                    next: *committed,
                    committed: *committed,
                    batch_first: -1,
                    touched: false,
                },
            );
        }
        tracing::info!(
            partitions = parts.len(),
            keys,
            ms = started.elapsed().as_millis() as u64,
            "state restored"
        );
        Ok(())
    }

    /// Whether the consumer still holds `topic`/`partition` (true when it cannot tell).
    fn still_assigned(&self, topic: &str, partition: i32) -> bool {
        self.consumer.assignment().map_or(true, |a| {
            a.elements()
                .iter()
                .any(|e| e.topic() == topic && e.partition() == partition)
        })
    }

    fn begin(&mut self) -> Result<(), BatchError> {
        if self.open.is_some() {
            return Ok(());
        }
        if self.guarantee == Guarantee::ExactlyOnce {
            self.producer
                .begin_transaction()
                .map_err(|e| classify(&e, "beginning a transaction"))?;
        }
        self.open = Some(Instant::now());
        Ok(())
    }

    async fn send_staged(&mut self) -> Result<(), BatchError> {
        for i in 0..self.out.staged.len() {
            let s = self.out.staged[i].clone();
            let key = &self.out.arena[s.key.clone()];
            let payload = &self.out.arena[s.payload.clone()];
            let fut = kafka::send(&self.producer, &s.topic, Some(key), Some(payload))
                .await
                .map_err(|e| BatchError::Abort(format!("producing to {}: {e}", s.topic)))?;
            if self.guarantee == Guarantee::AtLeastOnce {
                self.deliveries.push(fut);
            }
            self.counters.output(&self.rt.metrics, &s.topic);
        }
        self.summary.outputs += self.out.staged.len() as u64;
        Ok(())
    }

    async fn on_message(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), BatchError> {
        let topic = self.topic_arc(msg.topic());
        let key = (topic.clone(), msg.partition());
        if !self.tasks.contains_key(&key) {
            // Assigned before its event was seen (defensive: events are drained first).
            self.restore(&[(topic.to_string(), msg.partition())], false)
                .await?;
        }
        let offset = msg.offset();
        {
            let task = self.tasks.get_mut(&key).expect("restored above");
            if task.next >= 0 && offset < task.next {
                // Already in the state (a fetch from before a rewind): skip.
                return Ok(());
            }
        }
        self.begin()?;
        {
            // Touched before it is handled: if handling fails, the abort rewinds to it.
            let task = self.tasks.get_mut(&key).expect("restored above");
            if !task.touched {
                task.touched = true;
                task.batch_first = offset;
            }
        }
        self.out.clear();
        let payload = msg.payload().unwrap_or(&[]);
        let mut dead: Option<(&'static str, String)> = None;
        match self.decoder.decode(payload).await {
            Ok(record) => {
                let input = Input {
                    record,
                    topic: &topic,
                    partition: msg.partition(),
                    offset,
                    key: msg.key(),
                    timestamp_ms: msg.timestamp().to_millis(),
                };
                let task = self.tasks.get_mut(&key).expect("restored above");
                match self
                    .processor
                    .process(&input, &mut task.state, &mut self.out)
                    .await
                {
                    Ok(()) => {}
                    Err(ProcessError::Poison { reason, detail }) => dead = Some((reason, detail)),
                    Err(ProcessError::Transient(m)) => {
                        self.counters.retry_process.inc();
                        return Err(BatchError::Abort(format!(
                            "{topic}/{}: {m}",
                            msg.partition()
                        )));
                    }
                    Err(ProcessError::Fatal(m)) => return Err(BatchError::Fatal(m)),
                }
            }
            Err(e) if e.is_transient() => {
                self.counters.retry_decode.inc();
                return Err(BatchError::Abort(format!("decoding (registry): {e}")));
            }
            Err(e) => dead = Some(("decode_error", e.to_string())),
        }
        if let Some((reason, detail)) = dead {
            let dl = kafka_dead_letter(self.rt.component, KafkaSource::of(msg), reason, &detail);
            self.rt.metrics.dead_letters(reason).inc();
            tracing::warn!(
                reason,
                detail,
                topic = msg.topic(),
                partition = msg.partition(),
                offset,
                "record dead-lettered"
            );
            self.out.clear();
            let k = dl.source_key.clone().unwrap_or_default();
            self.out
                .push_keyed(&self.rt.dlq_topic, &k, &self.rt.dlq, &dl)
                .map_err(|e| BatchError::Fatal(e.to_string()))?;
            self.summary.dead_lettered += 1;
            let metrics = &self.rt.metrics;
            Counters::cached(&mut self.counters.dead, &topic, || {
                metrics.records(&topic, "dead_lettered")
            })
            .inc();
        } else {
            self.summary.processed += 1;
            let metrics = &self.rt.metrics;
            Counters::cached(&mut self.counters.ok, &topic, || {
                metrics.records(&topic, "ok")
            })
            .inc();
        }
        self.send_staged().await?;
        let task = self.tasks.get_mut(&key).expect("restored above");
        task.next = offset + 1;
        self.batch_inputs += 1;
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), BatchError> {
        let now = now_ms();
        self.dlq_log.end_period();
        let keys: Vec<(Arc<str>, i32)> = self.tasks.keys().cloned().collect();
        for key in keys {
            self.out.clear();
            let task = self.tasks.get_mut(&key).expect("listed above");
            match self
                .processor
                .on_tick(now, &key.0, key.1, &mut task.state, &mut self.out)
                .await
            {
                Ok(()) => {}
                Err(ProcessError::Fatal(m)) => return Err(BatchError::Fatal(m)),
                Err(e) => {
                    return Err(BatchError::Abort(format!(
                        "timer of {}/{}: {e}",
                        key.0, key.1
                    )));
                }
            }
            let dirty = task.state.dirty_len() > 0;
            if dirty || !self.out.is_empty() {
                self.begin()?;
                self.send_staged().await?;
                let task = self.tasks.get_mut(&key).expect("listed above");
                task.touched = true;
            }
        }
        if self.open.is_none() {
            self.rt.metrics.health.progress(now);
        }
        Ok(())
    }

    /// Commits the open batch (see the module docs).
    async fn commit(&mut self) -> Result<(), BatchError> {
        if self.open.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        // Rows outside Kafka first: a committed offset never covers an unwritten row.
        match self.processor.flush().await {
            Ok(()) => {}
            Err(ProcessError::Fatal(m)) => return Err(BatchError::Fatal(m)),
            Err(e) => return Err(BatchError::Abort(format!("flushing: {e}"))),
        }
        if self.guarantee == Guarantee::AtLeastOnce {
            // Outputs before the state that records them: if the changelog could land
            // without the outputs, a restart would find the inputs handled and never
            // produce them.
            self.await_deliveries().await?;
        }
        let mut offsets = TopicPartitionList::new();
        let mut changed = 0usize;
        let keys: Vec<(Arc<str>, i32)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.touched)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            let task = self.tasks.get_mut(key).expect("listed above");
            let mut records = task
                .state
                .take_changes(&key.0)
                .map_err(|e| BatchError::Fatal(e.to_string()))?;
            changed += records.len();
            if task.next >= 0 {
                records.push((
                    checkpoint_key(&key.0),
                    Some(task.next.to_string().into_bytes()),
                ));
                offsets
                    .add_partition_offset(&key.0, key.1, Offset::Offset(task.next))
                    .map_err(|e| BatchError::Fatal(e.to_string()))?;
            }
            for (k, v) in records {
                let fut = kafka::send_to(
                    &self.producer,
                    &self.changelog,
                    Some(key.1),
                    Some(&k),
                    v.as_deref(),
                )
                .await
                .map_err(|e| BatchError::Abort(format!("writing the changelog: {e}")))?;
                if self.guarantee == Guarantee::AtLeastOnce {
                    self.deliveries.push(fut);
                }
            }
        }
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let tpl = offsets.clone();
                self.commit_txn(offsets).await?;
                self.consumer.context().note_committed(&tpl);
            }
            Guarantee::AtLeastOnce => {
                self.await_deliveries().await?;
                if offsets.count() > 0 {
                    // Asynchronous while running (the next commit supersedes a lost one);
                    // synchronous at shutdown, so that a drained instance's offsets are the
                    // end of what it processed.
                    let mode = if self.stopping {
                        CommitMode::Sync
                    } else {
                        CommitMode::Async
                    };
                    self.consumer
                        .commit(&offsets, mode)
                        .map_err(|e| BatchError::Abort(format!("committing offsets: {e}")))?;
                }
            }
        }
        for key in &keys {
            if let Some(t) = self.tasks.get_mut(key) {
                t.touched = false;
                t.committed = t.next;
                t.batch_first = -1;
            }
        }
        self.open = None;
        self.batch_inputs = 0;
        self.commits += 1;
        let now = now_ms();
        self.rt.metrics.health.set_failing(None, now);
        self.rt.metrics.health.progress(now);
        self.rt
            .metrics
            .latency("commit")
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(partitions = keys.len(), changed, "batch committed");
        self.processor.committed().await;
        Ok(())
    }

    /// At least once: waits for every record sent so far to be acknowledged.
    async fn await_deliveries(&mut self) -> Result<(), BatchError> {
        for fut in std::mem::take(&mut self.deliveries) {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(BatchError::Abort(format!("output not acknowledged: {e}")));
                }
                Err(_) => return Err(BatchError::Fatal("producer dropped a delivery".into())),
            }
        }
        Ok(())
    }

    async fn commit_txn(&mut self, offsets: TopicPartitionList) -> Result<(), BatchError> {
        let cgm = if offsets.count() > 0 {
            Some(self.consumer.group_metadata().ok_or_else(|| {
                BatchError::Abort("no consumer group metadata (not in a group yet)".into())
            })?)
        } else {
            None
        };
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BatchError> {
            if let Some(cgm) = &cgm {
                producer
                    .send_offsets_to_transaction(&offsets, cgm, TXN_TIMEOUT)
                    .map_err(|e| classify(&e, "sending offsets to the transaction"))?;
            }
            let mut attempt = 0;
            loop {
                match producer.commit_transaction(TXN_TIMEOUT) {
                    Ok(()) => return Ok(()),
                    Err(KafkaError::Transaction(e))
                        if e.is_retriable() && attempt < COMMIT_ATTEMPTS =>
                    {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "committing the transaction; retrying");
                        std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                    }
                    Err(e) => return Err(classify(&e, "committing the transaction")),
                }
            }
        })
        .await
        .map_err(|e| BatchError::Fatal(format!("commit task: {e}")))?
    }

    async fn abort_txn(&mut self) -> Result<(), BatchError> {
        self.deliveries.clear();
        if self.open.take().is_none() || self.guarantee != Guarantee::ExactlyOnce {
            return Ok(());
        }
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.abort_transaction(TXN_TIMEOUT))
            .await
            .map_err(|e| BatchError::Fatal(format!("abort task: {e}")))?
            .map_err(|e| classify(&e, "aborting the transaction"))
    }

    /// Aborts the open batch: its partitions' state is restored from the changelog and the
    /// consumer rewound to their committed offsets.
    async fn abort(&mut self) -> Result<(), BatchError> {
        self.abort_txn().await?;
        self.batch_inputs = 0;
        let touched: Vec<(Arc<str>, i32)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.touched || t.state.dirty_len() > 0)
            .map(|(k, _)| k.clone())
            .collect();
        let mut parts = Vec::with_capacity(touched.len());
        for key in touched {
            if let Some(t) = self.tasks.remove(&key) {
                // Nothing committed yet by the group: rewind to where this batch began.
                if t.committed < 0 && t.batch_first >= 0 {
                    let _ = self.consumer.seek(
                        &key.0,
                        key.1,
                        Offset::Offset(t.batch_first),
                        Duration::from_secs(10),
                    );
                }
            }
            parts.push((key.0.to_string(), key.1));
        }
        self.restore(&parts, true).await
    }
}

/// A transactional error as the loop treats it: fatal to the producer (fenced, or otherwise
/// unusable: replaced) or abortable.
fn classify(e: &KafkaError, what: &str) -> BatchError {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => BatchError::Fenced(format!("{what}: {t}")),
        _ => BatchError::Abort(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guarantee_and_names_follow_the_config() {
        let mut runner = crate::config::RunnerConfig::default();
        assert_eq!(
            Guarantee::of(&runner),
            Guarantee::AtLeastOnce,
            "the default"
        );
        runner.processing_guarantee = "exactly_once".into();
        assert_eq!(Guarantee::of(&runner), Guarantee::ExactlyOnce);
        assert_eq!(
            changelog_topic("telemetry-processor"),
            "telemetry-processor-changelog"
        );
        assert_eq!(instance_id("a-1"), "a-1");
        assert!(!instance_id("").is_empty());
    }
}
