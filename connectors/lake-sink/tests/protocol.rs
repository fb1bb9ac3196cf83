//! The commit protocol and compaction on a local lake, with crashes simulated at every step
//! (the kill tests against a running sink are in `tests/tests/lake.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fleet_lake::Lake;
use fleet_lake::avro::Plan;
use fleet_lake::catalog;
use fleet_lake::layout;
use fleet_lake::writer::{Committed, FileLimits, PartitionWriter};
use fleet_schemas::{Position, Record, TelemetryReading, write_datum};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

fn datum(i: i64) -> (Vec<u8>, i64) {
    let t = T0 + (i % 3) * HOUR + i;
    let r = TelemetryReading {
        event_id: format!("id-{i}"),
        vehicle_id: format!("VEH-{}", i % 5),
        event_time: t,
        ingest_time: t,
        sent_time: None,
        position: Position::new(4.6, -74.0),
        speed_kmh: Some(50.0),
        heading_deg: None,
        cargo_temp_c: None,
        door_open: None,
        ignition_on: None,
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "test".into(),
    };
    let mut b = Vec::new();
    write_datum(&r, &mut b).unwrap();
    (b, t)
}

fn plan() -> Arc<Plan> {
    Arc::new(Plan::compile(TelemetryReading::compiled().schema(), "event_time").unwrap())
}

/// event_id -> copies, over every committed data file of the topic.
async fn ids(lake: &Lake, topic: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for files in catalog::data_files(lake, topic, None)
        .await
        .unwrap()
        .values()
    {
        for f in files {
            let bytes = lake.get(&f.rel).await.unwrap().unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let col = b.column_by_name("event_id").unwrap();
                let col = col
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap();
                for v in col.iter().flatten() {
                    *out.entry(v.to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn limits() -> FileLimits {
    FileLimits {
        max_rows: 50,
        row_group_rows: 16,
        batch_rows: 8,
        ..FileLimits::default()
    }
}

/// Feeds offsets [from, to) into a fresh writer recovered from the lake, committing every
/// `every` records; returns the writer (uncommitted tail kept in memory, as at a crash).
async fn feed(lake: &Lake, from: i64, to: i64, every: i64) -> PartitionWriter {
    let p = plan();
    let mut w = PartitionWriter::recover(lake, "t", 0, limits())
        .await
        .unwrap();
    for off in from.max(w.next_offset())..to {
        let (d, t) = datum(off);
        w.append(&p, &d, off, t, 0).unwrap();
        if (off + 1) % every == 0 {
            w.commit(lake).await.unwrap();
        }
    }
    w
}

#[tokio::test]
async fn commits_files_into_hive_partitions_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut w = feed(&lake, 0, 120, 40).await;
    assert_eq!(w.next_offset(), 120);
    assert!(!w.pending());
    w.commit(&lake).await.unwrap();
    let files = catalog::data_files(&lake, "t", None).await.unwrap();
    let dirs: Vec<_> = files.keys().cloned().collect();
    assert_eq!(
        dirs,
        [
            "date=2026-11-23/hour=00",
            "date=2026-11-23/hour=01",
            "date=2026-11-23/hour=02"
        ]
    );
    let got = ids(&lake, "t").await;
    assert_eq!(got.len(), 120);
    assert!(got.values().all(|n| *n == 1));
    // Nothing left in staging; the position is in the lake.
    assert!(lake.list("_fleet_lake/staging").await.unwrap().is_empty());
    let c: Committed = serde_json::from_slice(
        &lake
            .get(&layout::offsets_path("t", 0))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!((c.next_offset, c.moving.len()), (120, 0));
    assert!(c.epoch >= 1, "claimed by the writer that recovered it");
}

#[tokio::test]
async fn a_crash_before_the_commit_point_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    drop(feed(&lake, 0, 60, 30).await);
    // A commit that staged its files and died before writing the offsets, plus the leftover of
    // an interrupted local PUT.
    let stray =
        layout::staging_path("t/date=2026-11-23/hour=00/part-00000-00000000000000000060.parquet");
    lake.put(&stray, Bytes::from_static(b"half")).await.unwrap();
    let partial = dir
        .path()
        .join("t/date=2026-11-23/hour=01/part-00000-00000000000000000061.parquet#1");
    std::fs::write(&partial, b"partial").unwrap();
    // Restart: re-reads from 60.
    let mut w = feed(&lake, 0, 90, 30).await;
    w.commit(&lake).await.unwrap();
    assert!(!lake.exists(&stray).await.unwrap());
    assert!(!partial.exists());
    let got = ids(&lake, "t").await;
    assert_eq!(got.len(), 90);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
}

#[tokio::test]
async fn a_crash_after_the_commit_point_is_rolled_forward() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut w = feed(&lake, 0, 40, 1000).await;
    w.commit(&lake).await.unwrap();
    // Simulate: files of the next commit staged, offsets written with `moving`, one file moved,
    // then the crash.
    let p = plan();
    let mut w2 = PartitionWriter::recover(&lake, "t2", 0, limits())
        .await
        .unwrap();
    for off in 40..70 {
        let (d, t) = datum(off);
        w2.append(&p, &d, off, t, 0).unwrap();
    }
    w2.commit(&lake).await.unwrap(); // a complete commit in a scratch topic gives real files
    let scratch = catalog::data_files(&lake, "t2", None).await.unwrap();
    let mut moving = Vec::new();
    for (i, f) in scratch.values().flatten().enumerate() {
        let rel = f.rel.replacen("t2/", "t/", 1);
        let bytes = lake.get(&f.rel).await.unwrap().unwrap();
        if i == 0 {
            lake.put(&rel, bytes).await.unwrap(); // already moved
        } else {
            lake.put(&layout::staging_path(&rel), bytes).await.unwrap();
        }
        moving.push(rel);
    }
    let c = Committed {
        next_offset: 70,
        moving,
        epoch: 0,
    };
    lake.put(
        &layout::offsets_path("t", 0),
        Bytes::from(serde_json::to_vec(&c).unwrap()),
    )
    .await
    .unwrap();
    let mut w = feed(&lake, 0, 100, 1000).await;
    w.commit(&lake).await.unwrap();
    let got = ids(&lake, "t").await;
    assert_eq!(got.len(), 100);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    assert!(
        lake.list("_fleet_lake/staging/t/")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn compaction_merges_small_files_and_finishes_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut w = feed(&lake, 0, 300, 10).await;
    w.commit(&lake).await.unwrap();
    let before: usize = catalog::data_files(&lake, "t", None)
        .await
        .unwrap()
        .values()
        .map(Vec::len)
        .sum();
    assert!(before >= 30, "{before} small files");
    // An interrupted compaction: journal and output written, inputs not yet deleted. Recovery
    // must delete the inputs (the output holds their rows).
    let files = catalog::data_files(&lake, "t", Some("date=2026-11-23/hour=00"))
        .await
        .unwrap();
    let inputs: Vec<_> = files.values().flatten().take(2).cloned().collect();
    let mut rows = Vec::new();
    for f in &inputs {
        rows.push(lake.get(&f.rel).await.unwrap().unwrap());
    }
    // Output = the first input's bytes + the second's rows would need a merge; use the real
    // compactor on a copy instead: copy both into a scratch dir, compact there, bring back.
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch = Lake::open(scratch_dir.path().to_str().unwrap()).unwrap();
    for (f, b) in inputs.iter().zip(&rows) {
        scratch.put(&f.rel, b.clone()).await.unwrap();
    }
    let s = catalog::compact(&scratch, "t", None, 1 << 30, &limits())
        .await
        .unwrap();
    assert_eq!((s.inputs, s.outputs), (2, 1));
    let out = catalog::data_files(&scratch, "t", None)
        .await
        .unwrap()
        .values()
        .flatten()
        .next()
        .unwrap()
        .clone();
    lake.put(&out.rel, scratch.get(&out.rel).await.unwrap().unwrap())
        .await
        .unwrap();
    let journal = serde_json::json!({"inputs": inputs.iter().map(|f| f.rel.clone()).collect::<Vec<_>>(), "output": out.rel});
    lake.put(
        "_fleet_lake/compactions/x.json",
        Bytes::from(journal.to_string()),
    )
    .await
    .unwrap();
    // Now a real run: recovers, then merges everything small.
    let s = catalog::compact(&lake, "t", None, 1 << 30, &limits())
        .await
        .unwrap();
    assert_eq!(s.recovered, 1);
    let after = catalog::data_files(&lake, "t", None).await.unwrap();
    assert_eq!(
        after.values().map(Vec::len).sum::<usize>(),
        3,
        "one file per hour"
    );
    let got = ids(&lake, "t").await;
    assert_eq!(got.len(), 300);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    let listed = catalog::list(&lake, &[], None).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.rows).sum::<u64>(), 300);
}
