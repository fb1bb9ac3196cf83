//! Property tests: windows computed incrementally from shuffled, replayed input equal a naive
//! recomputation from the sorted input; window boundaries and lateness behave.

use std::collections::{BTreeMap, HashSet};

use fleet_domain::geo::haversine_m;
use fleet_domain::{KeyedWindows, Outcome, Sample, Watermark, Windows};
use proptest::prelude::*;

const THRESHOLD: f64 = 3.0;

fn naive(samples: &mut [Sample]) -> (u64, f64, f64, f64, Option<f64>, Option<f64>, Option<f64>) {
    samples.sort_by_key(|s| s.t);
    let mut dist = 0.0;
    let (mut moving, mut idle) = (0i64, 0i64);
    for w in samples.windows(2) {
        let (a, b) = (w[0], w[1]);
        let d = haversine_m(a.lat, a.lon, b.lat, b.lon);
        let dt = b.t - a.t;
        let is_moving = match a.speed_kmh {
            Some(v) => v >= THRESHOLD,
            None => dt > 0 && d / (dt as f64 / 1000.0) * 3.6 >= THRESHOLD,
        };
        dist += d;
        if is_moving { moving += dt } else { idle += dt }
    }
    let speeds: Vec<f64> = samples.iter().filter_map(|s| s.speed_kmh).collect();
    let temps: Vec<f64> = samples.iter().filter_map(|s| s.cargo_temp_c).collect();
    (
        samples.len() as u64,
        dist,
        moving as f64 / 1000.0,
        idle as f64 / 1000.0,
        speeds.iter().cloned().reduce(f64::max),
        (!speeds.is_empty()).then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
        temps.iter().cloned().reduce(f64::min),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

prop_compose! {
    fn reading()(t in 0i64..600_000, lat in -60.0f64..60.0, lon in -179.0f64..179.0,
                 dlat in -0.01f64..0.01, speed in proptest::option::of(0.0f64..130.0),
                 temp in proptest::option::of(-25.0f64..30.0), key in 0usize..4)
                 -> (usize, Sample) {
        let _ = (lat, lon);
        (key, Sample { t, lat: 4.0 + dlat, lon: -74.0 + dlat * 2.0, speed_kmh: speed, cargo_temp_c: temp })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every reading lies in exactly size/slide windows, all containing it, consecutive starts.
    #[test]
    fn assignment_contains_the_instant(t in -10_000_000i64..10_000_000, size_k in 1i64..6, slide in 1i64..5_000) {
        let w = Windows::hopping(slide * size_k, slide).expect("valid");
        let all: Vec<_> = w.assign(t).collect();
        prop_assert_eq!(all.len() as i64, size_k);
        for (i, b) in all.iter().enumerate() {
            prop_assert!(b.contains(t));
            prop_assert_eq!(b.end - b.start, slide * size_k);
            prop_assert_eq!(b.start.rem_euclid(slide), 0);
            if i > 0 { prop_assert_eq!(b.start - all[i - 1].start, slide); }
        }
        prop_assert_eq!(w.last_end(t), all[all.len() - 1].end);
    }

    /// Shuffled (within the lateness), replayed input gives the windows of the sorted input.
    #[test]
    fn incremental_equals_naive(mut input in proptest::collection::vec(reading(), 1..200),
                                replay in proptest::collection::vec(0usize..200, 0..30),
                                seed in any::<u64>()) {
        // Unique event time per key (a device never sends two readings in the same ms).
        let mut seen = HashSet::new();
        input.retain(|(k, s)| seen.insert((*k, s.t)));
        // Bounded disorder: each reading arrives at its event time plus a random delay below
        // the lateness, so nothing that arrives before it is more than the lateness ahead.
        let lateness = 30_000;
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        let mut keyed: Vec<(i64, (usize, Sample))> = input
            .iter()
            .map(|r| (r.1.t + (next() % lateness as u64) as i64, *r))
            .collect();
        // Replays: copies of earlier readings delivered again (at-least-once input).
        for r in replay {
            if r < keyed.len() {
                let (at, dup) = keyed[r];
                keyed.push((at + (next() % 1_000) as i64, dup));
            }
        }
        keyed.sort_by_key(|(at, _)| *at);
        let arrival: Vec<(usize, Sample)> = keyed.into_iter().map(|(_, r)| r).collect();
        let windows = Windows::tumbling(60_000).expect("valid");
        let mut kw = KeyedWindows::new(windows, THRESHOLD);
        let mut wm = Watermark::new(lateness, i64::MAX / 4);
        let mut closed = Vec::new();
        for (now, (k, s)) in arrival.iter().enumerate() {
            wm.observe(s.t, now as i64);
            let current = wm.current(now as i64);
            let outcome = kw.add(k, *s, current);
            prop_assert_ne!(outcome, Outcome::Late, "disorder within the lateness is never late");
            if let Some(w) = current { closed.extend(kw.close_until(w)); }
        }
        closed.extend(kw.close_until(i64::MAX));
        prop_assert_eq!(kw.open_windows(), 0);

        let mut expected: BTreeMap<(usize, i64), Vec<Sample>> = BTreeMap::new();
        for (k, s) in &input {
            expected.entry((*k, s.t - s.t.rem_euclid(60_000))).or_default().push(*s);
        }
        prop_assert_eq!(closed.len(), expected.len());
        for c in &closed {
            let mut want = expected.get(&(c.key, c.window.start)).cloned().expect("window expected");
            let (n, dist, moving, idle, smax, savg, tmin) = naive(&mut want);
            prop_assert_eq!(c.summary.count, n);
            prop_assert!(close(c.summary.distance_m, dist), "{} vs {}", c.summary.distance_m, dist);
            prop_assert!(close(c.summary.moving_s, moving) && close(c.summary.idle_s, idle));
            prop_assert_eq!(c.summary.speed_max_kmh, smax);
            prop_assert_eq!(c.summary.speed_avg_kmh.is_some(), savg.is_some());
            if let (Some(a), Some(b)) = (c.summary.speed_avg_kmh, savg) { prop_assert!(close(a, b)); }
            prop_assert_eq!(c.summary.cargo_temp_min_c, tmin);
            prop_assert_eq!(c.summary.first.t, want[0].t);
            prop_assert_eq!(c.summary.last.t, want[want.len() - 1].t);
        }
    }

    /// Readings beyond the lateness are exactly those whose window closed before they came.
    #[test]
    fn late_readings_are_exactly_the_ones_behind_the_watermark(times in proptest::collection::vec(0i64..300_000, 1..150)) {
        let windows = Windows::tumbling(10_000).expect("valid");
        let mut kw = KeyedWindows::new(windows, THRESHOLD);
        let mut wm = Watermark::new(5_000, i64::MAX / 4);
        let mut aggregated = 0u64;
        let mut uniq = HashSet::new();
        for (now, t) in times.iter().enumerate() {
            let s = Sample { t: *t, lat: 1.0, lon: 1.0, speed_kmh: None, cargo_temp_c: None };
            let before = wm.current(now as i64);
            let outcome = kw.add("v", s, before);
            let late = before.is_some_and(|w| windows.last_end(*t) <= w);
            prop_assert_eq!(outcome == Outcome::Late, late);
            if outcome == Outcome::Added(1) { aggregated += 1; prop_assert!(uniq.insert(*t)); }
            if outcome == Outcome::Duplicate { prop_assert!(uniq.contains(t)); }
            wm.observe(*t, now as i64);
            if let Some(w) = wm.current(now as i64) { kw.close_until(w); }
        }
        let rest: u64 = kw.close_until(i64::MAX).iter().map(|c| c.summary.count).sum();
        prop_assert!(rest <= aggregated);
    }
}
