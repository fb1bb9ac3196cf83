//! The anomaly processor's domain step: every rule of one vehicle on one reading, over 10,000
//! vehicles reporting every 2 s, each with a 200-waypoint planned route, two geofences and a
//! cargo temperature range (the expensive profile: route deviation runs on every reading).
#![allow(clippy::field_reassign_with_default)]

use std::collections::HashMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_domain::route::RouteCorridor;
use fleet_domain::rules::{Geofence, Observation, Profile, VehicleRules};

fn bench(c: &mut Criterion) {
    let route: Vec<(f64, f64)> = (0..200)
        .map(|i| {
            (
                4.7 + i as f64 * 0.0075,
                -74.07 - i as f64 * 0.0072 + (i % 7) as f64 * 1e-3,
            )
        })
        .collect();
    let mut profile = Profile::default();
    profile.route = Some(RouteCorridor::new(&route).expect("valid route"));
    profile.thresholds.cargo_temp_min_c = Some(2.0);
    profile.thresholds.cargo_temp_max_c = Some(8.0);
    profile.geofences = vec![
        Geofence {
            id: "depot".into(),
            lat: 4.7,
            lon: -74.07,
            radius_m: 500.0,
            planned_stop: true,
        },
        Geofence {
            id: "customer".into(),
            lat: 6.2,
            lon: -75.5,
            radius_m: 500.0,
            planned_stop: true,
        },
    ];
    let vehicles = 10_000usize;
    let n = 100_000usize;
    let input: Vec<(usize, Observation)> = (0..n)
        .map(|i| {
            let v = i % vehicles;
            let step = i / vehicles;
            let (lat, lon) = route[(v + step) % route.len()];
            (
                v,
                Observation {
                    event_time: step as i64 * 2_000 + (v % 2_000) as i64,
                    lat: lat + (v % 13) as f64 * 1e-4,
                    lon,
                    speed_kmh: Some(40.0 + (i % 60) as f64),
                    cargo_temp_c: Some(4.0 + (i % 7) as f64 * 0.1),
                    accel_mps2: Some(((i % 11) as f64 - 5.0) * 0.3),
                },
            )
        })
        .collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("all_rules_100k_readings_200_waypoint_route", |b| {
        b.iter(|| {
            let mut state: HashMap<usize, VehicleRules> = HashMap::with_capacity(vehicles);
            let mut alerts = Vec::new();
            for (v, o) in &input {
                state
                    .entry(*v)
                    .or_default()
                    .observe(&profile, o, &mut alerts);
            }
            alerts.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
