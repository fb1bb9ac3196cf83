//! The `lake-sink` loop: Kafka records (Avro, any registered schema) -> Parquet in the lake.
//!
//! ```text
//! recv -> (first record of a partition: recover it from the lake, skip what is committed)
//!      -> split the wire header -> plan of the writer schema (registry, cached per id)
//!      -> event time -> append to the open file of (time partition, schema)
//!      -> [a file full / commit_interval passed / too many files open] -> commit the partition
//! SIGTERM -> commit every partition -> commit Kafka offsets -> exit 0
//! ```
//!
//! ## Delivery guarantee
//! **Exactly once into the lake** (see [`crate::writer`] for the protocol): the committed
//! position lives in the lake itself and moves atomically with the files, so after any crash a
//! record is in exactly one committed data file. Rejected records (no wire header, unknown
//! schema id, a schema without an Arrow mapping, a datum that does not decode) go to the
//! dead-letter topic, acknowledged before the commit that passes their offset (at least once
//! there, with ids derived from topic/partition/offset).
//!
//! ## Backpressure
//! Rows wait in memory until their partition commits. When the lake refuses writes, commits
//! fail and are retried every second; once the uncommitted bytes of all partitions pass
//! `max_buffered_bytes`, the sink pauses its assigned partitions (it still serves the group
//! protocol, so it keeps them), reports not ready (`/health/ready` 503 with the reason) and
//! commits everything it holds on every tick; it resumes once under half the limit.
//!
//! ## Zombies are fenced
//! One sink instance owns a partition at a time (Kafka consumer group). An instance that
//! lost a partition without noticing yet (paused, partitioned from the broker) and then
//! commits is fenced by the lake itself on S3 (conditional writes of the offsets object, see
//! [`crate::writer`]): its commit fails with `Fenced`, it drops the partition's rows (the new
//! owner reads them) and ignores the partition until the next rebalance. A local-directory
//! lake is not fenced: keep one sink per host there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_runtime::Runtime;
use fleet_runtime::backoff::Backoff;
use fleet_runtime::kafka::{self, Consumer};
use fleet_runtime::metrics::now_ms;
use fleet_runtime::runner::{KafkaSource, kafka_dead_letter};
use fleet_schemas::wire;
use prometheus_client::metrics::counter::Counter;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::avro::Plan;
use crate::lake::Lake;
use crate::writer::{Due, FileLimits, PartitionWriter};

fleet_runtime::config_section! {
    /// lake-sink settings.
    pub struct LakeSinkConfig {
        /// Where the lake is: a directory (`/var/lib/lake`, `file:///var/lib/lake`) or
        /// `s3://bucket/prefix` (endpoint and keys from FLEET_S3_ENDPOINT, FLEET_S3_ACCESS_KEY,
        /// FLEET_S3_SECRET_KEY or the AWS_* variables).
        pub lake_url: String = ".fleet/lake".to_owned(), env = "FLEET_LAKE_URL",
        /// Topics to sink (Avro with the registry's wire format).
        pub topics: Vec<String> = default_topics(),
        /// Top-level field holding the event time (ms) that places a row in a time partition;
        /// records without it use the Kafka timestamp.
        pub event_time_field: String = "event_time".to_owned(),
        /// Time partitions: "hour" (date=/hour=) or "day" (date=).
        pub granularity: crate::layout::Granularity = crate::layout::Granularity::Hour,
        /// A file is closed (and the partition committed) at this many rows.
        pub max_file_rows: usize = 4_000_000,
        /// ... or at about this many bytes of Parquet (files are held in memory until
        /// uploaded with one PUT, so this also bounds memory per open file).
        pub max_file_bytes: usize = 128 << 20,
        /// Rows per Parquet row group.
        pub row_group_rows: usize = 131_072,
        /// zstd compression level.
        pub zstd_level: i32 = 3,
        /// Uncommitted input is committed after at most this long (bounds how stale the lake
        /// is; longer means larger files at low rates).
        #[serde(with = "humantime_serde")]
        pub commit_interval: Duration = Duration::from_secs(300),
        /// A partition is committed when it has more files open than this (late data spread
        /// over many hours).
        pub max_open_files: usize = 48,
        /// Uncommitted bytes (open files and files whose upload failed, all partitions) above
        /// which consumption pauses until commits bring it under half of this: while the
        /// lake refuses writes, memory stays bounded instead of growing with the input.
        pub max_buffered_bytes: usize = 1 << 30,
    }
    validate(c) {
        if c.topics.is_empty() {
            return Err(fleet_runtime::Error::Config("app.topics is empty".into()));
        }
        if c.max_file_rows == 0 || c.max_file_bytes == 0 || c.row_group_rows == 0 {
            return Err(fleet_runtime::Error::Config("file limits must be positive".into()));
        }
        if c.max_buffered_bytes == 0 {
            return Err(fleet_runtime::Error::Config("app.max_buffered_bytes must be positive".into()));
        }
        if c.max_file_bytes > (4usize << 30) {
            return Err(fleet_runtime::Error::Config(
                "app.max_file_bytes above 4 GiB (one PUT, held in memory)".into(),
            ));
        }
        Ok(())
    }
}

fn default_topics() -> Vec<String> {
    [
        "fleet.telemetry",
        "fleet.emergencies",
        "fleet.anomalies",
        "fleet.telemetry-windows",
        "fleet.notifications",
        "fleet.commands",
        "fleet.deliveries",
        "fleet.dlq",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl LakeSinkConfig {
    /// File limits of this config.
    pub fn limits(&self) -> FileLimits {
        FileLimits {
            max_rows: self.max_file_rows,
            max_bytes: self.max_file_bytes,
            row_group_rows: self.row_group_rows,
            batch_rows: 8192.min(self.row_group_rows),
            zstd_level: self.zstd_level,
            granularity: self.granularity,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    /// Rows committed to the lake.
    pub rows: u64,
    /// Files committed.
    pub files: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// Records skipped because the lake already had them.
    pub skipped: u64,
}

struct Counters {
    rows: Counter,
    dead: Counter,
    skipped: Counter,
    files: Counter,
    bytes: Counter,
    commits: Counter,
    commit_failures: Counter,
    pauses: Counter,
    fenced: Counter,
    buffered: prometheus_client::metrics::gauge::Gauge,
}

/// A Kafka partition the sink is writing.
struct Part {
    writer: PartitionWriter,
}

/// The sink: one consumer, one writer per assigned partition.
pub struct Sink<'a> {
    rt: &'a Runtime,
    cfg: LakeSinkConfig,
    lake: Lake,
    consumer: Arc<Consumer>,
    revoked: tokio::sync::mpsc::UnboundedReceiver<kafka::Rebalanced>,
    parts: HashMap<(usize, i32), Part>,
    topics: Vec<Arc<str>>,
    plans: HashMap<(usize, u32), Result<Arc<Plan>, String>>,
    counters: Counters,
    summary: SinkSummary,
    /// Fired at shutdown: retry loops give way to it.
    stop: CancellationToken,
    /// Consumption paused for backpressure.
    paused: bool,
    /// Partitions another instance claimed in the lake: ignored until the next rebalance.
    fenced: std::collections::HashSet<(usize, i32)>,
    /// Messages since the buffered bytes were last summed.
    since_check: u32,
}

impl std::fmt::Debug for Sink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("lake", &self.lake.url())
            .field("partitions", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Sink<'a> {
    /// Subscribes to the configured topics.
    pub fn new(rt: &'a Runtime, cfg: LakeSinkConfig, lake: Lake) -> fleet_runtime::Result<Self> {
        let (tx, revoked) = tokio::sync::mpsc::unbounded_channel();
        let consumer = kafka::consumer(&rt.kafka, &rt.group_id(), rt.metrics.clone(), Some(tx))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let m = &rt.metrics;
        let counters = Counters {
            rows: m.records("lake", "rows"),
            dead: m.records("lake", "dead_lettered"),
            skipped: m.records("lake", "already_committed"),
            files: m.outputs("lake.files"),
            bytes: m.outputs("lake.bytes"),
            commits: m.records("lake", "commits"),
            commit_failures: m.retries("lake_commit"),
            pauses: m.records("lake", "backpressure_pauses"),
            fenced: m.records("lake", "fenced"),
            buffered: m.buffered("lake_commit"),
        };
        tracing::info!(lake = lake.url(), ?topics, group = %rt.group_id(), "sinking");
        Ok(Self {
            rt,
            topics: cfg.topics.iter().map(|t| Arc::from(t.as_str())).collect(),
            cfg,
            lake,
            consumer: Arc::new(consumer),
            revoked,
            parts: HashMap::new(),
            plans: HashMap::new(),
            counters,
            summary: SinkSummary::default(),
            paused: false,
            stop: CancellationToken::new(),
            fenced: std::collections::HashSet::new(),
            since_check: 0,
        })
    }

    /// Runs until `shutdown`; then commits every partition and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> fleet_runtime::Result<SinkSummary> {
        // The loop borrows its own handle, so a received message can be handled in place
        // (no copy of each payload).
        let consumer = self.consumer.clone();
        self.stop = shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(r) = self.revoked.recv() => {
                    // A rebalance settles who owns what: fenced partitions assigned to this
                    // instance again are recovered (claimed) afresh.
                    self.fenced.clear();
                    if let kafka::Rebalanced::Revoked(parts) = r {
                        self.on_revoke(&parts);
                    }
                }
                _ = tick.tick() => {
                    // Paused: everything held is committed as soon as the lake takes it.
                    self.on_tick(self.paused).await?;
                    self.backpressure();
                }
                msg = consumer.recv() => match msg {
                    Ok(m) => match self.on_message(&m).await {
                        Ok(()) => {}
                        // A retry given up for shutdown: the record was not taken (its
                        // offset is not covered); commit the rest and stop.
                        Err(e) if shutdown.is_cancelled() => {
                            tracing::info!(error = %e, "stopped while retrying");
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
            }
        }
        tracing::info!("shutting down: committing every partition");
        self.on_tick(true).await?;
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e) => tracing::info!(error = %e, "final Kafka offset commit (a hint only)"),
        }
        tracing::info!(summary = ?self.summary, "lake-sink stopped");
        Ok(self.summary)
    }

    /// Uncommitted bytes held, all partitions.
    fn buffered(&self) -> usize {
        self.parts.values().map(|p| p.writer.buffered_bytes()).sum()
    }

    /// Pauses the assigned partitions while more than `max_buffered_bytes` wait for a commit;
    /// resumes under half of it (see the module docs).
    fn backpressure(&mut self) {
        self.since_check = 0;
        let (buffered, limit) = (self.buffered(), self.cfg.max_buffered_bytes);
        self.counters
            .buffered
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
        let pause = buffered > limit || (self.paused && buffered > limit / 2);
        if !pause && !self.paused {
            return;
        }
        let assigned = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading the assignment for backpressure");
                return;
            }
        };
        if pause {
            // Re-applied on every check: partitions assigned meanwhile are paused too.
            if let Err(e) = self.consumer.pause(&assigned) {
                tracing::warn!(error = %e, "pausing the consumer");
            }
            if !self.paused {
                self.paused = true;
                self.counters.pauses.inc();
                let why = format!(
                    "{buffered} bytes wait for a lake commit (over app.max_buffered_bytes = {limit}): consumption paused"
                );
                tracing::warn!("{why}");
                self.rt.metrics.health.set_failing(Some(&why), now_ms());
            }
        } else if self.paused {
            if let Err(e) = self.consumer.resume(&assigned) {
                tracing::warn!(error = %e, "resuming the consumer");
                return;
            }
            self.paused = false;
            tracing::info!(buffered, "lake commits caught up: consumption resumed");
            self.rt.metrics.health.set_failing(None, now_ms());
        }
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| &**t == topic)
    }

    fn on_revoke(&mut self, parts: &[(String, i32)]) {
        for (topic, partition) in parts {
            if let Some(t) = self.topic_index(topic)
                && let Some(p) = self.parts.remove(&(t, *partition))
                && p.writer.pending()
            {
                tracing::info!(
                    topic,
                    partition,
                    rows = p.writer.pending_rows(),
                    "partition revoked: uncommitted rows dropped (its new owner re-reads them)"
                );
            }
        }
    }

    async fn on_tick(&mut self, all: bool) -> fleet_runtime::Result<()> {
        let now = now_ms();
        let interval = i64::try_from(self.cfg.commit_interval.as_millis()).unwrap_or(i64::MAX);
        let due: Vec<(usize, i32)> = self
            .parts
            .iter()
            .filter(|(_, p)| {
                if all {
                    p.writer.pending()
                } else {
                    p.writer
                        .due(now, interval, self.cfg.max_open_files)
                        .is_some()
                }
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.commit(key).await?;
        }
        self.rt.metrics.health.progress(now);
        Ok(())
    }

    async fn commit(&mut self, key: (usize, i32)) -> fleet_runtime::Result<()> {
        let Some(part) = self.parts.get_mut(&key) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        match part.writer.commit(&self.lake).await {
            Ok((next, stats)) => {
                self.counters.commits.inc();
                self.counters.rows.inc_by(stats.rows as u64);
                self.counters.files.inc_by(stats.files as u64);
                self.counters.bytes.inc_by(stats.bytes as u64);
                self.summary.rows += stats.rows as u64;
                self.summary.files += stats.files as u64;
                tracing::debug!(
                    topic = &*self.topics[key.0],
                    partition = key.1,
                    next_offset = next,
                    files = stats.files,
                    rows = stats.rows,
                    bytes = stats.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "committed"
                );
                let mut tpl = TopicPartitionList::with_capacity(1);
                tpl.add_partition_offset(&self.topics[key.0], key.1, Offset::Offset(next))
                    .and_then(|()| self.consumer.store_offsets(&tpl))
                    .unwrap_or_else(
                        |e| tracing::debug!(error = %e, "storing the Kafka offset hint failed"),
                    );
            }
            Err(crate::LakeError::Fenced(what)) => {
                // Another instance claimed the partition (this one lost it in a rebalance it
                // has not seen yet): write nothing more to it until the next rebalance.
                self.counters.fenced.inc();
                tracing::warn!(
                    topic = &*self.topics[key.0],
                    partition = key.1,
                    object = what,
                    rows = part.writer.pending_rows(),
                    "fenced: another sink instance owns this partition now; its uncommitted rows are dropped (the owner reads them)"
                );
                self.parts.remove(&key);
                self.fenced.insert(key);
            }
            Err(e) => {
                self.counters.commit_failures.inc();
                tracing::warn!(
                    error = %e,
                    topic = &*self.topics[key.0],
                    partition = key.1,
                    "lake commit failed; retrying on the next tick"
                );
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: &BorrowedMessage<'_>) -> fleet_runtime::Result<()> {
        let Some(t) = self.topic_index(msg.topic()) else {
            return Ok(());
        };
        let key = (t, msg.partition());
        let offset = msg.offset();
        if self.fenced.contains(&key) {
            return Ok(());
        }
        if !self.parts.contains_key(&key) {
            let writer = self.recover(t, msg.partition()).await?;
            let next = writer.next_offset();
            self.parts.insert(key, Part { writer });
            if offset + 10_000 < next {
                tracing::info!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    from = offset,
                    to = next,
                    "seeking past records already in the lake"
                );
                if let Err(e) = self.consumer.seek(
                    msg.topic(),
                    msg.partition(),
                    Offset::Offset(next),
                    Duration::from_secs(5),
                ) {
                    tracing::warn!(error = %e, "seek failed; skipping records one by one");
                }
            }
        }
        let now = now_ms();
        let part = self.parts.get_mut(&key).expect("inserted above");
        if part.writer.is_committed(offset) {
            self.counters.skipped.inc();
            self.summary.skipped += 1;
            return Ok(());
        }
        let Some(payload) = msg.payload() else {
            // A tombstone carries no row.
            part.writer.skip(offset, now);
            return Ok(());
        };
        let (schema_id, datum) = match wire::split(payload) {
            Ok(x) => x,
            Err(e) => return self.reject(key, msg, "bad_framing", &e.to_string()).await,
        };
        let plan = match self.plan(t, schema_id).await? {
            Ok(p) => p,
            Err(why) => return self.reject(key, msg, "unsupported_schema", &why).await,
        };
        let event_time = match plan.event_time(datum) {
            Ok(Some(t)) => t,
            Ok(None) => msg.timestamp().to_millis().unwrap_or(now),
            Err(e) => return self.reject(key, msg, "undecodable", &e.to_string()).await,
        };
        let part = self.parts.get_mut(&key).expect("inserted above");
        match part.writer.append(&plan, datum, offset, event_time, now) {
            Ok(Some(Due::Size)) => self.commit(key).await?,
            Ok(_) => {}
            Err(e) => return self.reject(key, msg, "undecodable", &e.to_string()).await,
        }
        self.since_check += 1;
        if self.since_check >= 256 {
            self.backpressure();
        }
        Ok(())
    }

    async fn recover(&self, t: usize, partition: i32) -> fleet_runtime::Result<PartitionWriter> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match PartitionWriter::recover(
                &self.lake,
                &self.topics[t],
                partition,
                self.cfg.limits(),
            )
            .await
            {
                Ok(w) => {
                    tracing::info!(
                        topic = &*self.topics[t],
                        partition,
                        next_offset = w.next_offset(),
                        "partition recovered from the lake"
                    );
                    return Ok(w);
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = &*self.topics[t], partition, "recovering the partition's lake state failed; retrying");
                    self.counters.commit_failures.inc();
                    if !backoff.wait(&self.stop).await {
                        return Err(stopped("recovering a partition"));
                    }
                }
            }
        }
    }

    /// The plan for a writer schema id: `Err(reason)` when the schema cannot be sunk; registry
    /// outages are retried here (the record waits).
    async fn plan(
        &mut self,
        t: usize,
        id: u32,
    ) -> fleet_runtime::Result<Result<Arc<Plan>, String>> {
        if let Some(p) = self.plans.get(&(t, id)) {
            return Ok(p.clone());
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let schema = loop {
            match self.rt.registry.schema_by_id(id).await {
                Ok(s) => break Ok(s),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, id, "schema registry unavailable; retrying");
                    if !backoff.wait(&self.stop).await {
                        return Err(stopped("fetching a schema"));
                    }
                }
                Err(e) => break Err(format!("schema id {id}: {e}")),
            }
        };
        let plan = schema.and_then(|s| {
            Plan::compile(&s, &self.cfg.event_time_field)
                .map(Arc::new)
                .map_err(|e| format!("schema id {id}: {e}"))
        });
        self.plans.insert((t, id), plan.clone());
        Ok(plan)
    }

    async fn reject(
        &mut self,
        key: (usize, i32),
        msg: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
    ) -> fleet_runtime::Result<()> {
        let dl = kafka_dead_letter(self.rt.component, KafkaSource::of(msg), reason, detail);
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            reason,
            detail,
            "record dead-lettered"
        );
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(e) = self.rt.dead_letter(&dl).await {
            tracing::warn!(error = %e, "dead-letter produce failed; retrying");
            if !backoff.wait(&self.stop).await {
                return Err(stopped("writing a dead letter"));
            }
        }
        self.rt.metrics.dead_letters(reason).inc();
        self.counters.dead.inc();
        self.summary.dead_letters += 1;
        if let Some(p) = self.parts.get_mut(&key) {
            p.writer.skip(msg.offset(), now_ms());
        }
        Ok(())
    }
}

/// The error of a retry given up because the sink is stopping.
fn stopped(what: &str) -> fleet_runtime::Error {
    fleet_runtime::Error::Fatal(format!("stopped while {what}"))
}
