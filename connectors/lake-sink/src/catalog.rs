//! What is in the lake (`lake ls`) and merging small files (`lake compact`).
//!
//! ## Compaction
//! Within one time partition of one topic, data files smaller than the target whose Arrow
//! schemas are equal are merged in name order (so rows keep their Kafka order per partition)
//! into `compacted-<hash of the input names>.parquet`:
//!
//! 1. a journal `_fleet_lake/compactions/<hash>.json` lists inputs and output;
//! 2. the output is written with one PUT (complete or absent);
//! 3. the inputs are deleted; 4. the journal is deleted.
//!
//! Readers see the new file before the old ones go (a query that lists in between may count a
//! merged row twice; none ever fails on a half-written file). A crash is finished by the next
//! run: a journal whose output exists has its inputs deleted, one whose output does not is
//! dropped (the inputs are untouched). Files a sink commit is still moving are never merged.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::TryStreamExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
// Deprecated in parquet 59 in favour of a hand-written AsyncFileReader; it is still the
// ranged-read path that reads only footers for `ls`. Replace when parquet ships the successor.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use serde::{Deserialize, Serialize};

use crate::lake::{Lake, LakeError, Result};
use crate::layout::META_DIR;
use crate::writer::{Committed, FileLimits};

/// One data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Lake-relative path.
    pub rel: String,
    /// Bytes.
    pub size: u64,
}

/// One time partition of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Topic.
    pub topic: String,
    /// Partition directory, e.g. `date=2026-11-23/hour=07`.
    pub dir: String,
    /// Data files.
    pub files: Vec<DataFile>,
    /// Rows (from the Parquet footers).
    pub rows: u64,
}

impl PartitionInfo {
    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Topics in the lake (top-level directories not starting with `_` or `.`).
pub async fn topics(lake: &Lake) -> Result<Vec<String>> {
    let (store, root) = lake.store();
    let listing = store.list_with_delimiter(Some(root)).await?;
    let mut topics: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    topics.sort();
    Ok(topics)
}

/// Data files of a topic grouped by time partition, optionally only partitions whose directory
/// starts with `dir_prefix` (e.g. `date=2026-11-23`).
pub async fn data_files(
    lake: &Lake,
    topic: &str,
    dir_prefix: Option<&str>,
) -> Result<BTreeMap<String, Vec<DataFile>>> {
    let mut out: BTreeMap<String, Vec<DataFile>> = BTreeMap::new();
    let prefix = match dir_prefix {
        Some(d) => format!("{topic}/{d}"),
        None => topic.to_owned(),
    };
    for meta in lake.list(topic).await? {
        let rel = lake.rel(&meta.location);
        if !rel.ends_with(".parquet") || !rel.starts_with(&prefix) {
            continue;
        }
        let Some((dir, _file)) = rel
            .strip_prefix(&format!("{topic}/"))
            .and_then(|r| r.rsplit_once('/'))
        else {
            continue;
        };
        out.entry(dir.to_owned()).or_default().push(DataFile {
            rel: rel.clone(),
            size: meta.size,
        });
    }
    for files in out.values_mut() {
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
    }
    Ok(out)
}

#[allow(deprecated)]
async fn footer(lake: &Lake, f: &DataFile) -> Result<(u64, SchemaRef)> {
    let (store, _) = lake.store();
    let reader = ParquetObjectReader::new(store.clone(), lake.path(&f.rel)).with_file_size(f.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let rows = builder.metadata().file_metadata().num_rows();
    Ok((u64::try_from(rows).unwrap_or(0), builder.schema().clone()))
}

/// Rows of one data file (from its Parquet footer).
pub async fn file_rows(lake: &Lake, f: &DataFile) -> Result<u64> {
    Ok(footer(lake, f).await?.0)
}

/// Every time partition of the given topics (all topics when empty) with files, rows, bytes.
pub async fn list(
    lake: &Lake,
    only: &[String],
    dir_prefix: Option<&str>,
) -> Result<Vec<PartitionInfo>> {
    let names = if only.is_empty() {
        topics(lake).await?
    } else {
        only.to_vec()
    };
    let mut out = Vec::new();
    for topic in names {
        for (dir, files) in data_files(lake, &topic, dir_prefix).await? {
            let mut rows = 0;
            for f in &files {
                rows += footer(lake, f).await?.0;
            }
            out.push(PartitionInfo {
                topic: topic.clone(),
                dir,
                files,
                rows,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    inputs: Vec<String>,
    output: String,
}

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Files merged away.
    pub inputs: usize,
    /// Files written.
    pub outputs: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Interrupted compactions finished first.
    pub recovered: usize,
}

/// Finishes compactions a crash interrupted (see the module docs).
pub async fn recover_compactions(lake: &Lake) -> Result<usize> {
    let mut n = 0;
    for meta in lake.list(&format!("{META_DIR}/compactions")).await? {
        let rel = lake.rel(&meta.location);
        let Some(bytes) = lake.get(&rel).await? else {
            continue;
        };
        let j: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| LakeError::Corrupt(rel.clone(), e.to_string()))?;
        if lake.exists(&j.output).await? {
            for input in &j.inputs {
                lake.delete(input).await?;
            }
        }
        lake.delete(&rel).await?;
        n += 1;
    }
    Ok(n)
}

async fn moving_files(lake: &Lake, topic: &str) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for meta in lake.list(&format!("{META_DIR}/offsets/{topic}")).await? {
        let rel = lake.rel(&meta.location);
        if let Some(b) = lake.get(&rel).await?
            && let Ok(c) = serde_json::from_slice::<Committed>(&b)
        {
            out.extend(c.moving);
        }
    }
    Ok(out)
}

/// Merges small files of `topic`'s time partitions (those starting with `dir_prefix`, or all)
/// into files of about `target_bytes`.
pub async fn compact(
    lake: &Lake,
    topic: &str,
    dir_prefix: Option<&str>,
    target_bytes: u64,
    limits: &FileLimits,
) -> Result<CompactStats> {
    let mut stats = CompactStats {
        recovered: recover_compactions(lake).await?,
        ..CompactStats::default()
    };
    let busy = moving_files(lake, topic).await?;
    let props = limits.properties()?;
    for (_dir, files) in data_files(lake, topic, dir_prefix).await? {
        // Group candidate files by schema, in name order.
        let mut by_schema: Vec<(SchemaRef, Vec<DataFile>)> = Vec::new();
        for f in files
            .into_iter()
            .filter(|f| f.size < target_bytes && !busy.contains(&f.rel))
        {
            let (_, schema) = footer(lake, &f).await?;
            match by_schema
                .iter_mut()
                .find(|(s, _)| s.fields() == schema.fields())
            {
                Some((_, v)) => v.push(f),
                None => by_schema.push((schema, vec![f])),
            }
        }
        for (schema, candidates) in by_schema {
            let mut group: Vec<DataFile> = Vec::new();
            let mut size = 0;
            let mut groups = Vec::new();
            for f in candidates {
                size += f.size;
                group.push(f);
                if size >= target_bytes {
                    groups.push(std::mem::take(&mut group));
                    size = 0;
                }
            }
            groups.push(group);
            for g in groups.into_iter().filter(|g| g.len() >= 2) {
                stats.rows += merge(lake, &schema, &g, &props).await?;
                stats.inputs += g.len();
                stats.outputs += 1;
            }
        }
    }
    Ok(stats)
}

#[allow(deprecated)]
async fn merge(
    lake: &Lake,
    schema: &SchemaRef,
    inputs: &[DataFile],
    props: &parquet::file::properties::WriterProperties,
) -> Result<u64> {
    let names: BTreeSet<&str> = inputs.iter().map(|f| f.rel.as_str()).collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut h);
    let id = format!("{:016x}", h.finish());
    let dir = inputs[0].rel.rsplit_once('/').map_or("", |(d, _)| d);
    let output = format!("{dir}/compacted-{id}.parquet");
    let journal_rel = format!("{META_DIR}/compactions/{id}.json");
    let journal = Journal {
        inputs: inputs.iter().map(|f| f.rel.clone()).collect(),
        output: output.clone(),
    };
    let json = serde_json::to_vec(&journal)
        .map_err(|e| LakeError::Corrupt(journal_rel.clone(), e.to_string()))?;
    // 1.
    lake.put(&journal_rel, Bytes::from(json)).await?;
    // 2.
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?;
    let (store, _) = lake.store();
    let mut rows = 0u64;
    for f in inputs {
        let reader =
            ParquetObjectReader::new(store.clone(), lake.path(&f.rel)).with_file_size(f.size);
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .build()?;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows() as u64;
            let batch = batch.with_schema(schema.clone())?;
            writer.write(&batch)?;
        }
    }
    let bytes = writer.into_inner()?;
    lake.put(&output, Bytes::from(bytes)).await?;
    // 3. 4.
    for f in inputs {
        lake.delete(&f.rel).await?;
    }
    lake.delete(&journal_rel).await?;
    Ok(rows)
}
