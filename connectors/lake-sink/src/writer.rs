//! One Kafka partition's open files and its commit protocol.
//!
//! ## Exactly once
//! The sink keeps its position in the lake, next to the data
//! (`_fleet_lake/offsets/<topic>/<partition>.json`: `next_offset` and the files of the commit
//! in progress). A commit:
//!
//! 1. closes every open file of the partition and PUTs it to `_fleet_lake/staging/...`
//!    (single atomic PUTs: nothing partial is ever visible, no multipart upload is left behind);
//! 2. PUTs the offsets object with the new `next_offset` and the list of staged files: **this
//!    is the commit point**;
//! 3. moves each staged file to its final place in the Hive layout;
//! 4. PUTs the offsets object again with an empty list.
//!
//! [`PartitionWriter::recover`] runs when the partition is (re)assigned, before any record:
//! it finishes step 3 for a commit that passed step 2 (roll forward: a staged file still there
//! is moved, one already moved is left), deletes staged files of a commit that never reached
//! step 2 (roll back: their records are after `next_offset` and will be read again), removes
//! leftovers of interrupted local writes, and returns `next_offset`. Records below it are
//! skipped. So each record lands in exactly one committed file, whatever the point of a crash,
//! and readers of the Hive directories only ever see committed files.
//!
//! ## Fencing
//! On an S3 lake every write of the offsets object is conditional (`If-Match` the version
//! this writer last read or wrote, `If-None-Match: *` for the first): [`PartitionWriter::recover`]
//! claims the partition by writing it with `epoch + 1`, so a zombie (an instance that lost
//! the partition in a rebalance but still holds rows) fails its next commit point with
//! [`LakeError::Fenced`] and writes nothing more; its staged files carry its epoch in their
//! name, so they can never replace its successor's. A local-directory lake has no conditional
//! overwrite and is not fenced (one host, one sink).
//!
//! Kafka's committed offset is only a hint (lag monitoring, where to start fetching): it is
//! stored after step 4 and may trail the lake's.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};

use object_store::UpdateVersion;

use crate::avro::{Plan, Rows};
use crate::lake::{Lake, LakeError, Result};
use crate::layout::{self, Granularity};

/// When files are closed and how they are encoded.
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// Close a file at this many rows.
    pub max_rows: usize,
    /// Close a file at about this many bytes (encoded, compressed).
    pub max_bytes: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows buffered before they are encoded into the open row group.
    pub batch_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Time partitions.
    pub granularity: Granularity,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_rows: 4_000_000,
            max_bytes: 128 << 20,
            row_group_rows: 131_072,
            batch_rows: 8192,
            zstd_level: 3,
            granularity: Granularity::Hour,
        }
    }
}

impl FileLimits {
    /// Parquet writer settings: zstd, page statistics, row-group size.
    pub fn properties(&self) -> Result<WriterProperties> {
        Ok(WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(self.zstd_level)?))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_created_by("fleetstream lake-sink".to_owned())
            .build())
    }
}

/// The committed position of one partition, as stored in the lake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// First offset not in the lake.
    pub next_offset: i64,
    /// Data files of a commit whose move out of staging may be unfinished.
    #[serde(default)]
    pub moving: Vec<String>,
    /// Incremented by each writer that takes the partition over (its claim); its staged
    /// files carry it (see [`layout::staging_path_at`]).
    #[serde(default)]
    pub epoch: u64,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Files written.
    pub files: usize,
    /// Rows written.
    pub rows: usize,
    /// Bytes written.
    pub bytes: usize,
}

struct OpenFile {
    rel: String,
    rows: Rows,
    writer: ArrowWriter<Vec<u8>>,
    written_rows: usize,
    /// Avro bytes of the rows buffered but not encoded yet (an estimate of their memory).
    raw_bytes: usize,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("rel", &self.rel)
            .field("rows", &(self.written_rows + self.rows.len()))
            .finish_non_exhaustive()
    }
}

impl OpenFile {
    fn total_rows(&self) -> usize {
        self.written_rows + self.rows.len()
    }

    fn bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Memory held: encoded Parquet plus the rows not encoded yet.
    fn buffered(&self) -> usize {
        self.bytes() + self.raw_bytes
    }

    fn encode_buffered(&mut self) -> Result<()> {
        if !self.rows.is_empty() {
            let n = self.rows.len();
            let batch = self.rows.finish();
            self.writer.write(&batch)?;
            self.written_rows += n;
            self.raw_bytes = 0;
        }
        Ok(())
    }
}

/// Open files of one Kafka partition of one topic.
#[derive(Debug)]
pub struct PartitionWriter {
    topic: Arc<str>,
    partition: i32,
    limits: FileLimits,
    props: WriterProperties,
    next_offset: i64,
    last_offset: Option<i64>,
    /// (time bucket, plan identity) -> file. Plans are per writer schema, so a schema change
    /// starts new files.
    files: BTreeMap<(i64, usize), OpenFile>,
    first_pending_ms: Option<i64>,
    /// A closed set of files whose publication failed: (last offset, files); published
    /// first by the next commit (every step is idempotent).
    unpublished: Option<Unpublished>,
    /// This writer's claim on the partition.
    epoch: u64,
    /// Version of the offsets object this writer last read or wrote (its fencing token).
    version: Option<UpdateVersion>,
}

/// Closed files whose publication has not succeeded yet.
#[derive(Debug)]
struct Unpublished {
    /// Last input offset they cover.
    last: i64,
    /// Rows in them.
    rows: usize,
    /// (relative path, Parquet bytes).
    files: Vec<(String, Bytes)>,
}

/// Why a partition wants a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A file reached its row or byte limit.
    Size,
    /// Too many files open at once (late or scattered data).
    OpenFiles,
    /// Data has waited `commit_interval`.
    Time,
}

impl PartitionWriter {
    /// Recovers the partition's committed state from the lake (see the module docs) and
    /// returns a writer positioned at `next_offset`.
    pub async fn recover(
        lake: &Lake,
        topic: &str,
        partition: i32,
        limits: FileLimits,
    ) -> Result<Self> {
        let offsets_rel = layout::offsets_path(topic, partition);
        let (mut committed, version) = match lake.get_versioned(&offsets_rel).await? {
            Some((b, v)) => (
                serde_json::from_slice::<Committed>(&b)
                    .map_err(|e| LakeError::Corrupt(offsets_rel.clone(), e.to_string()))?,
                Some(v),
            ),
            None => (Committed::default(), None),
        };
        // Roll forward the moves of a commit that passed its commit point.
        for data in &committed.moving {
            let staged = layout::staging_path_at(data, committed.epoch);
            if lake.exists(&staged).await? {
                lake.rename(&staged, data).await?;
            }
        }
        // Roll back staged files of commits that never reached it.
        let name_prefix = format!("part-{partition:05}-");
        let staging_prefix = format!("{}/staging/{topic}", layout::META_DIR);
        for meta in lake.list(&staging_prefix).await? {
            let rel = lake.rel(&meta.location);
            if meta
                .location
                .filename()
                .is_some_and(|f| f.starts_with(&name_prefix))
            {
                lake.delete(&rel).await?;
            }
        }
        let partials = lake.remove_local_partials(&staging_prefix, &name_prefix)?
            + lake.remove_local_partials(topic, &name_prefix)?;
        if partials > 0 {
            tracing::info!(
                topic,
                partition,
                partials,
                "removed files of interrupted writes"
            );
        }
        // The claim: from now on a writer with an older claim fails its commit point.
        committed.moving.clear();
        committed.epoch += 1;
        let version = put_committed(lake, &offsets_rel, &committed, version.as_ref()).await?;
        Ok(Self {
            topic: Arc::from(topic),
            partition,
            props: limits.properties()?,
            limits,
            next_offset: committed.next_offset,
            last_offset: None,
            files: BTreeMap::new(),
            first_pending_ms: None,
            unpublished: None,
            epoch: committed.epoch,
            version: Some(version),
        })
    }

    /// First offset not yet committed to the lake (records below it are already there).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether `offset` is already in the lake.
    pub fn is_committed(&self, offset: i64) -> bool {
        offset < self.next_offset
    }

    /// Records a consumed offset that produced no row (a dead letter, a tombstone): the next
    /// commit covers it.
    pub fn skip(&mut self, offset: i64, now_ms: i64) {
        self.last_offset = Some(offset);
        self.first_pending_ms.get_or_insert(now_ms);
    }

    /// Appends one datum. On a decode error nothing is buffered (the caller dead-letters it
    /// and calls [`PartitionWriter::skip`]).
    pub fn append(
        &mut self,
        plan: &Arc<Plan>,
        datum: &[u8],
        offset: i64,
        event_time_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Due>, crate::avro::AvroError> {
        let bucket = self.limits.granularity.bucket(event_time_ms);
        let key = (bucket, Arc::as_ptr(plan) as usize);
        let file = match self.files.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let dir = self.limits.granularity.dir(bucket);
                let rel = layout::data_path(
                    &self.topic,
                    &dir,
                    &layout::part_file_name(self.partition, offset),
                );
                let writer = ArrowWriter::try_new(
                    Vec::with_capacity(1 << 20),
                    plan.schema().clone(),
                    Some(self.props.clone()),
                )
                .map_err(|e| crate::avro::AvroError::Unsupported(e.to_string()))?;
                v.insert(OpenFile {
                    rel,
                    rows: plan.rows(),
                    writer,
                    written_rows: 0,
                    raw_bytes: 0,
                })
            }
        };
        file.rows.append(datum, self.partition, offset)?;
        file.raw_bytes += datum.len();
        self.last_offset = Some(offset);
        self.first_pending_ms.get_or_insert(now_ms);
        if file.rows.len() >= self.limits.batch_rows {
            file.encode_buffered()
                .map_err(|e| crate::avro::AvroError::Unsupported(e.to_string()))?;
            if file.total_rows() >= self.limits.max_rows || file.bytes() >= self.limits.max_bytes {
                return Ok(Some(Due::Size));
            }
        } else if file.total_rows() >= self.limits.max_rows {
            return Ok(Some(Due::Size));
        }
        Ok(None)
    }

    /// Whether uncommitted input has waited `interval_ms`, or too many files are open.
    pub fn due(&self, now_ms: i64, interval_ms: i64, max_open_files: usize) -> Option<Due> {
        if self.files.len() > max_open_files {
            return Some(Due::OpenFiles);
        }
        if self.unpublished.is_some() {
            return Some(Due::Time);
        }
        match self.first_pending_ms {
            Some(t) if now_ms - t >= interval_ms => Some(Due::Time),
            _ => None,
        }
    }

    /// Uncommitted input exists.
    pub fn pending(&self) -> bool {
        self.unpublished.is_some() || self.last_offset.is_some_and(|o| o >= self.next_offset)
    }

    /// Bytes held in memory for the next commit: open files (encoded and not yet encoded
    /// rows) and closed files whose publication failed.
    pub fn buffered_bytes(&self) -> usize {
        let unpublished: usize = self
            .unpublished
            .as_ref()
            .map_or(0, |u| u.files.iter().map(|(_, b)| b.len()).sum());
        unpublished + self.files.values().map(OpenFile::buffered).sum::<usize>()
    }

    /// Rows buffered or encoded but not committed.
    pub fn pending_rows(&self) -> usize {
        self.files.values().map(OpenFile::total_rows).sum()
    }

    /// Commits everything consumed so far (see the module docs). Returns the new
    /// `next_offset` and what was written. On error the closed files stay in the writer and
    /// the next call publishes them again (every step is idempotent); records consumed
    /// meanwhile go to new files of the following commit.
    pub async fn commit(&mut self, lake: &Lake) -> Result<(i64, CommitStats)> {
        let mut stats = CommitStats::default();
        if self.unpublished.is_none() {
            let Some(last) = self.last_offset.filter(|o| *o >= self.next_offset) else {
                return Ok((self.next_offset, stats));
            };
            // 1. close every file.
            let mut closed = Vec::with_capacity(self.files.len());
            let mut rows = 0;
            for mut file in std::mem::take(&mut self.files).into_values() {
                file.encode_buffered()?;
                rows += file.total_rows();
                let bytes = Bytes::from(file.writer.into_inner()?);
                closed.push((file.rel, bytes));
            }
            self.unpublished = Some(Unpublished {
                last,
                rows,
                files: closed,
            });
            self.last_offset = None;
            self.first_pending_ms = None;
        }
        let Some(u) = self.unpublished.take() else {
            unreachable!("set above")
        };
        // Counted when published (a retry after a failed publication counts them then).
        stats.rows = u.rows;
        stats.files = u.files.len();
        stats.bytes = u.files.iter().map(|(_, b)| b.len()).sum();
        if let Err(e) = self.publish(lake, u.last, &u.files).await {
            self.unpublished = Some(u);
            return Err(e);
        }
        self.next_offset = u.last + 1;
        Ok((self.next_offset, stats))
    }

    /// Steps 1-4 for closed files; keeps the offsets object's version it wrote.
    async fn publish(&mut self, lake: &Lake, last: i64, closed: &[(String, Bytes)]) -> Result<()> {
        for (rel, bytes) in closed {
            lake.put(&layout::staging_path_at(rel, self.epoch), bytes.clone())
                .await?;
        }
        let offsets_rel = layout::offsets_path(&self.topic, self.partition);
        let mut committed = Committed {
            next_offset: last + 1,
            moving: closed.iter().map(|(r, _)| r.clone()).collect(),
            epoch: self.epoch,
        };
        // 2. the commit point (fenced: fails if another writer claimed the partition).
        let version = put_committed(lake, &offsets_rel, &committed, self.version.as_ref()).await?;
        self.version = Some(version);
        // 3. publish; a crash from here on is rolled forward by `recover`.
        for (rel, _) in closed {
            let staged = layout::staging_path_at(rel, self.epoch);
            // A retry after a partial publish finds some files already moved.
            if lake.exists(&staged).await? || !lake.exists(rel).await? {
                lake.rename(&staged, rel).await?;
            }
        }
        // 4.
        committed.moving.clear();
        let version = put_committed(lake, &offsets_rel, &committed, self.version.as_ref()).await?;
        self.version = Some(version);
        Ok(())
    }
}

/// Writes the offsets object if it is still at `expected` (see the module docs: fencing).
async fn put_committed(
    lake: &Lake,
    rel: &str,
    c: &Committed,
    expected: Option<&UpdateVersion>,
) -> Result<UpdateVersion> {
    let json =
        serde_json::to_vec(c).map_err(|e| LakeError::Corrupt(rel.to_owned(), e.to_string()))?;
    lake.put_if(rel, Bytes::from(json), expected).await
}
