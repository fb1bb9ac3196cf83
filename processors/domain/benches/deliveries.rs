//! The deliveries processor's domain step: one reading of a vehicle with an open delivery
//! (speed estimator update + geofence + ETA along a 200-waypoint route + lateness), over
//! 10,000 vehicles reporting every 2 s.
//!
//! `cargo bench -p fleet-domain --bench deliveries`

use std::collections::HashMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_domain::delivery::{Delivery, DeliveryParams, Status, Update};
use fleet_domain::eta::SpeedEstimator;
use fleet_domain::route::RouteCorridor;

fn bench(c: &mut Criterion) {
    let route: Vec<(f64, f64)> = (0..200)
        .map(|i| {
            (
                4.7 + i as f64 * 0.0075,
                -74.07 - i as f64 * 0.0072 + (i % 7) as f64 * 1e-3,
            )
        })
        .collect();
    let corridor = RouteCorridor::new(&route).expect("valid route");
    let dest = *route.last().expect("waypoints");
    let p = DeliveryParams::default();
    let vehicles = 10_000usize;
    let n = 100_000usize;
    let input: Vec<(usize, i64, (f64, f64), f64)> = (0..n)
        .map(|i| {
            let v = i % vehicles;
            let step = i / vehicles;
            let (lat, lon) = route[(v + step) % (route.len() - 1)];
            (
                v,
                step as i64 * 2_000 + (v % 2_000) as i64,
                (lat + (v % 13) as f64 * 1e-4, lon),
                40.0 + (i % 60) as f64,
            )
        })
        .collect();
    let mut g = c.benchmark_group("deliveries");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("observe_100k_readings_200_waypoint_route", |b| {
        b.iter(|| {
            let mut state: HashMap<usize, (Delivery, SpeedEstimator)> =
                HashMap::with_capacity(vehicles);
            let mut changes = 0usize;
            for &(v, t, pos, kmh) in &input {
                let (d, s) = state.entry(v).or_insert_with(|| {
                    let (d, _) = Delivery::new(&Update {
                        destination: Some(dest),
                        promised_by: Some(3_600_000),
                        ..Update::status(Status::InTransit, 0)
                    });
                    (d, SpeedEstimator::default())
                });
                s.observe(t, kmh, &p.eta.speed);
                changes += d.observe(t, pos, Some(&corridor), s, &p).len();
            }
            changes
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
