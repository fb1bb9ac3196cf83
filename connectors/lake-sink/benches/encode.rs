//! Avro bytes -> Parquet bytes, one core: the lake sink's hot path without IO.
//!
//! `cargo bench -p fleet-lake --bench encode`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_lake::avro::Plan;
use fleet_lake::writer::FileLimits;
use fleet_schemas::{Position, Record, TelemetryReading, write_datum};
use parquet::arrow::ArrowWriter;

const ROWS: usize = 100_000;

fn datums() -> Vec<Vec<u8>> {
    (0..ROWS)
        .map(|i| {
            let v = i % 10_000;
            let r = TelemetryReading {
                event_id: format!("6f1c2a4e-0000-4000-8000-{i:012}"),
                vehicle_id: format!("VEH-{v:05}"),
                event_time: 1_795_400_000_000 + i as i64 * 200,
                ingest_time: 1_795_400_000_300 + i as i64 * 200,
                sent_time: Some(1_795_400_000_100 + i as i64 * 200),
                position: Position {
                    lat: 4.6 + (i % 997) as f64 * 1e-3,
                    lon: -74.08 + (i % 991) as f64 * 1e-3,
                    altitude_m: Some(2600.0),
                    accuracy_m: Some(5.0),
                },
                speed_kmh: Some((i % 120) as f64),
                heading_deg: Some((i % 360) as f64),
                cargo_temp_c: Some(-18.0 + (i % 7) as f64 * 0.1),
                door_open: Some(false),
                ignition_on: Some(true),
                accel_mps2: None,
                odometer_km: Some(10_000.0 + i as f64 * 0.01),
                battery_v: Some(12.6),
                camera_active: None,
                source: "loadtest".into(),
            };
            let mut b = Vec::new();
            write_datum(&r, &mut b).expect("encodes");
            b
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = datums();
    let plan = Arc::new(
        Plan::compile(TelemetryReading::compiled().schema(), "event_time").expect("compiles"),
    );
    let props = FileLimits::default().properties().expect("props");
    let mut g = c.benchmark_group("lake");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    g.bench_function("avro_to_arrow_100k", |b| {
        b.iter(|| {
            let mut rows = plan.rows();
            for (i, d) in data.iter().enumerate() {
                rows.append(d, 0, i as i64).expect("valid");
                if rows.len() == 8192 {
                    std::hint::black_box(rows.finish());
                }
            }
            std::hint::black_box(rows.finish())
        })
    });
    g.bench_function("avro_to_parquet_zstd_100k", |b| {
        b.iter(|| {
            let mut rows = plan.rows();
            let mut w =
                ArrowWriter::try_new(Vec::new(), plan.schema().clone(), Some(props.clone()))
                    .expect("writer");
            for (i, d) in data.iter().enumerate() {
                rows.append(d, 0, i as i64).expect("valid");
                if rows.len() == 8192 {
                    w.write(&rows.finish()).expect("write");
                }
            }
            w.write(&rows.finish()).expect("write");
            std::hint::black_box(w.into_inner().expect("close").len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
