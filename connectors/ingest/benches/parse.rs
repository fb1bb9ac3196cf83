//! Device JSON -> validated record: the per-message cost of the MQTT bridge and HTTP ingest.
//!
//! `cargo bench -p fleet-ingest`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_ingest::{Identity, Kind, Limits, parse};

const NOW: i64 = 1_698_765_433_000;

fn bench(c: &mut Criterion) {
    let truck = br#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"sentAt":1698765432010,"location":{"lat":4.6097,"lon":-74.0817},"speed":65.5,"heading":182.0,"cargo_temperature":4.2,"doorOpen":false,"ignition":true,"odometer":123456.7,"battery":12.7}"#;
    let who = Identity {
        vehicle_id: Some("VEH-TEST-001"),
        source: "mqtt",
    };
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("telemetry_derived_id", |b| {
        b.iter(|| parse(Kind::Telemetry, black_box(truck), &who, NOW, &limits).unwrap())
    });
    let with_id = br#"{"vehicleId":"VEH-TEST-001","eventId":"d1b4c2a0-0000-4000-8000-000000000001","timestamp":1698765432000,"location":{"lat":4.6097,"lon":-74.0817},"speed":65.5,"cargo_temperature":4.2}"#;
    g.bench_function("telemetry_device_id", |b| {
        b.iter(|| parse(Kind::Telemetry, black_box(with_id), &who, NOW, &limits).unwrap())
    });
    let bad =
        br#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{"lat":"x","lon":1}}"#;
    g.bench_function("telemetry_rejected", |b| {
        b.iter(|| parse(Kind::Telemetry, black_box(bad), &who, NOW, &limits).unwrap_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
