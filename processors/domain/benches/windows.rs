//! The domain step of the telemetry processor: watermark + window assignment + incremental
//! aggregate, over 10,000 vehicles reporting every 2 s into 60 s tumbling windows.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_domain::{KeyedWindows, Sample, Watermark, Windows};

fn readings(n: usize, vehicles: usize) -> Vec<(String, Sample)> {
    let keys: Vec<String> = (0..vehicles).map(|v| format!("VEH-{v:05}")).collect();
    (0..n)
        .map(|i| {
            let v = i % vehicles;
            let t = (i / vehicles) as i64 * 2_000 + (v as i64 % 2_000);
            (
                keys[v].clone(),
                Sample {
                    t,
                    lat: 4.6 + v as f64 * 1e-4,
                    lon: -74.08 + t as f64 * 1e-8,
                    speed_kmh: Some((i % 110) as f64),
                    cargo_temp_c: Some(4.0 + (i % 7) as f64 * 0.1),
                },
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let input = readings(300_000, 10_000);
    let mut g = c.benchmark_group("domain");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.sample_size(10);
    g.bench_function("window_update_and_close_300k_readings", |b| {
        b.iter(|| {
            let mut kw =
                KeyedWindows::<String>::new(Windows::tumbling(60_000).expect("valid"), 3.0);
            let mut wm = Watermark::new(30_000, 60_000);
            let mut closed = 0usize;
            for (i, (k, s)) in input.iter().enumerate() {
                wm.observe(s.t, i as i64);
                let w = wm.current(i as i64);
                kw.add(k.as_str(), *s, w);
                if i % 1_000 == 0
                    && let Some(w) = w
                {
                    closed += kw.close_until(w).len();
                }
            }
            closed + kw.close_until(i64::MAX).len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
