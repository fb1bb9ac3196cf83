//! A Kafka topic read as a table: the latest value per key, in memory, kept current.
//!
//! [`Table::start`] reads every partition of the topic from the beginning (its own consumer,
//! no consumer group commits, so every instance of a binary holds the whole table), returns
//! once it has caught up with the end offsets it saw at start, then keeps following the topic
//! in a background task until shutdown. A record without a value (tombstone) removes its key.
//!
//! Each value is converted once, when it arrives, by the caller's `convert` (for example a
//! profile into the domain's thresholds with a precomputed route); a record that does not
//! decode or convert goes to the dead-letter topic with its reason and original bytes and the
//! table keeps the previous value of that key.
//!
//! Used for `fleet.vehicle-profiles`. On production Kafka the topic is compacted; the local
//! broker's compaction blocks it for seconds, so the local stack keeps it with infinite
//! retention instead ([`crate::kafka::TopicSpec::table`]); the reading side is the same.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleet_schemas::{Decoder, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::runner::{KafkaSource, kafka_dead_letter};
use crate::{Error, Result, Runtime};

type Map<V> = HashMap<String, Arc<V>>;

/// The latest converted value per key of a topic.
#[derive(Debug)]
pub struct Table<V> {
    map: Arc<RwLock<Map<V>>>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<V: Send + Sync + 'static> Table<V> {
    /// An empty table not attached to any topic (tests, or a binary run without profiles).
    pub fn empty() -> Self {
        Self {
            map: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `key` (tests and tools).
    pub fn insert(&self, key: &str, value: V) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), Arc::new(value));
    }

    /// Loads `topic` of `T` records, converting each with `convert` (an `Err` is the
    /// dead-letter detail), and keeps following it until `shutdown`. Returns after the initial
    /// load (everything up to the end offsets seen at start). An empty `topic` (a binary
    /// configured without the table) gives an empty table that never changes.
    pub async fn start<T, F>(
        rt: &Runtime,
        topic: &str,
        convert: F,
        shutdown: CancellationToken,
    ) -> Result<Self>
    where
        T: Record,
        F: Fn(T) -> std::result::Result<V, String> + Send + 'static,
    {
        let table = Self::empty();
        if topic.is_empty() {
            return Ok(table);
        }
        // The table's topic belongs to the pipeline: create it if missing (even when
        // `kafka.create_topics` is off), so a fresh cluster starts with an empty table.
        crate::kafka::ensure_topics(
            &rt.kafka,
            &[crate::kafka::TopicSpec::table(
                topic,
                rt.kafka.default_partitions,
            )],
        )
        .await?;
        let consumer = crate::kafka::table_consumer(&rt.kafka)?;
        let consumer = Arc::new(consumer);
        // Partitions and end offsets (blocking librdkafka calls: off the async threads).
        let (c, t) = (consumer.clone(), topic.to_owned());
        let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>> {
            // A topic created a moment ago may not list its partitions yet.
            let mut parts: Vec<i32> = Vec::new();
            for _ in 0..20 {
                let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
                parts = md
                    .topics()
                    .iter()
                    .filter(|mt| mt.name() == t)
                    .flat_map(|mt| mt.partitions().iter().map(|p| p.id()))
                    .collect();
                if !parts.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if parts.is_empty() {
                return Err(Error::Config(format!("table topic {t} has no partitions")));
            }
            let mut tpl = TopicPartitionList::new();
            let mut ends = Vec::with_capacity(parts.len());
            for p in parts {
                tpl.add_partition_offset(&t, p, Offset::Beginning)?;
                let (low, high) = c.fetch_watermarks(&t, p, Duration::from_secs(10))?;
                // A partition emptied by retention or deleted records has nothing to load.
                if high > low {
                    ends.push((p, high));
                }
            }
            c.assign(&tpl)?;
            Ok(ends)
        })
        .await
        .map_err(|e| Error::Fatal(format!("table loader: {e}")))??;

        let mut loader = Loader {
            rt: rt.clone(),
            topic: topic.to_owned(),
            decoder: Decoder::<T>::new(rt.registry.clone()),
            convert,
            map: table.map.clone(),
        };
        let mut remaining: HashMap<i32, i64> = ends.into_iter().collect();
        let started = std::time::Instant::now();
        while !remaining.is_empty() {
            if shutdown.is_cancelled() {
                return Ok(table);
            }
            let (batch, eofs) = poll_batch(&consumer).await?;
            for m in batch {
                if let Some(end) = remaining.get(&m.partition)
                    && m.offset + 1 >= *end
                {
                    remaining.remove(&m.partition);
                }
                loader.apply(m).await;
            }
            // A partition written in transactions ends with a commit marker (an offset no
            // record is delivered for; aborted records are skipped too): its end is the
            // consumer's end-of-partition event, not the offset of a last record.
            for p in eofs {
                remaining.remove(&p);
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(Error::Config(format!(
                    "table {topic}: initial load not done after 120 s (partitions left: {remaining:?})"
                )));
            }
        }
        tracing::info!(topic, keys = table.len(), "table loaded");
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                match poll_batch(&consumer).await {
                    Ok((batch, _)) => {
                        for m in batch {
                            loader.apply(m).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic = loader.topic, "table consumer error");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(table)
    }
}

/// One record read from the table topic.
#[derive(Debug)]
struct Raw {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Polls up to 500 records (waiting at most 200 ms for the first) off the async threads.
/// Up to 500 records, and the partitions whose end was reached (end-of-partition events).
async fn poll_batch(
    consumer: &Arc<BaseConsumer<crate::kafka::TableContext>>,
) -> Result<(Vec<Raw>, Vec<i32>)> {
    let c = consumer.clone();
    tokio::task::spawn_blocking(move || -> Result<(Vec<Raw>, Vec<i32>)> {
        let mut out = Vec::new();
        let mut eofs = Vec::new();
        let mut timeout = Duration::from_millis(200);
        while out.len() < 500 {
            match c.poll(timeout) {
                None => break,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => eofs.push(p),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => out.push(Raw {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                }),
            }
            timeout = Duration::ZERO;
        }
        Ok((out, eofs))
    })
    .await
    .map_err(|e| Error::Fatal(format!("table poll: {e}")))?
}

struct Loader<T: Record, V, F> {
    rt: Runtime,
    topic: String,
    decoder: Decoder<T>,
    convert: F,
    map: Arc<RwLock<Map<V>>>,
}

impl<T, V, F> Loader<T, V, F>
where
    T: Record,
    F: Fn(T) -> std::result::Result<V, String>,
{
    async fn apply(&mut self, m: Raw) {
        let key = m
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .map(|k| k.into_owned());
        let Some(payload) = m.payload.as_deref() else {
            if let Some(k) = key {
                self.map
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&k);
            }
            return;
        };
        let mut delay = Duration::from_millis(200);
        let result = loop {
            match self.decoder.decode(payload).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "table record needs the registry; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => break Err(("decode_error", e.to_string())),
                Ok(record) => {
                    let k = record.key().to_owned();
                    break (self.convert)(record)
                        .map(|v| (k, v))
                        .map_err(|d| ("invalid_profile", d));
                }
            }
        };
        match result {
            Ok((k, v)) => {
                self.map
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k, Arc::new(v));
            }
            Err((reason, detail)) => {
                tracing::warn!(
                    topic = self.topic,
                    partition = m.partition,
                    offset = m.offset,
                    reason,
                    detail,
                    "table record rejected; previous value kept"
                );
                self.rt.metrics.dead_letters(reason).inc();
                let dl = kafka_dead_letter(
                    self.rt.component,
                    KafkaSource {
                        topic: &self.topic,
                        partition: m.partition,
                        offset: m.offset,
                        key: m.key.as_deref(),
                        payload: m.payload.as_deref(),
                        timestamp_ms: None,
                    },
                    reason,
                    &detail,
                );
                if let Err(e) = self.rt.dead_letter(&dl).await {
                    tracing::error!(error = %e, "dead letter of a table record not written");
                }
            }
        }
    }
}
