use super::*;

const MIN: i64 = 60_000;

fn straight_route() -> RouteCorridor {
    // Due north along a meridian, 0.1° (about 11.1 km) per leg.
    RouteCorridor::new(&[
        (4.60, -74.08),
        (4.70, -74.08),
        (4.80, -74.08),
        (4.90, -74.08),
    ])
    .unwrap()
}

fn steady(kmh: f64, n: i64, every_ms: i64) -> SpeedEstimator {
    let p = SpeedParams::default();
    let mut s = SpeedEstimator::default();
    for i in 0..n {
        s.observe(i * every_ms, kmh, &p);
    }
    s
}

#[test]
fn median_ignores_stops_and_spikes() {
    let p = SpeedParams::default();
    let mut s = SpeedEstimator::default();
    for (i, v) in [60.0, 0.0, 0.0, 2.0, 62.0, 58.0, 300.0, 61.0, 0.5]
        .iter()
        .enumerate()
    {
        s.observe(i as i64 * 1000, *v, &p);
    }
    assert_eq!(s.len(), 5, "stops are not samples");
    let e = s.estimate(10_000, &p);
    assert_eq!(e.basis, SpeedBasis::Observed);
    assert_eq!(e.kmh, 61.0, "median of 58, 60, 61, 62, 300");
    assert_eq!(e.samples, 5);
}

#[test]
fn absurd_and_non_finite_speeds_are_ignored() {
    let p = SpeedParams::default();
    let mut s = SpeedEstimator::default();
    for v in [f64::NAN, f64::INFINITY, -50.0, 401.0] {
        s.observe(0, v, &p);
    }
    assert!(s.is_empty());
    assert_eq!(s.estimate(0, &p).basis, SpeedBasis::Default);
    assert_eq!(s.estimate(0, &p).kmh, p.default_kmh);
}

#[test]
fn old_samples_leave_the_window() {
    let p = SpeedParams::default();
    let mut s = SpeedEstimator::default();
    s.observe(0, 90.0, &p);
    s.observe(MIN, 90.0, &p);
    s.observe(20 * MIN, 30.0, &p);
    // The 90s are more than 15 minutes before the newest sample: dropped.
    assert_eq!(s.len(), 1);
    assert_eq!(s.estimate(20 * MIN, &p).kmh, 30.0);
    // And an estimate long after the last sample falls back to the default.
    let late = s.estimate(60 * MIN, &p);
    assert_eq!((late.basis, late.kmh), (SpeedBasis::Default, p.default_kmh));
}

#[test]
fn at_most_max_samples_are_kept() {
    let s = steady(50.0, 500, 100);
    assert_eq!(s.len(), MAX_SPEED_SAMPLES);
    assert_eq!(
        s.estimate(50_000, &SpeedParams::default()).samples,
        MAX_SPEED_SAMPLES
    );
}

#[test]
fn slow_traffic_hits_the_floor() {
    let p = SpeedParams::default();
    let s = steady(6.0, 10, 1000);
    let e = s.estimate(10_000, &p);
    assert_eq!((e.basis, e.kmh), (SpeedBasis::Floor, p.floor_kmh));
}

#[test]
fn spread_measures_scatter() {
    let p = SpeedParams::default();
    let calm = steady(60.0, 10, 1000).estimate(10_000, &p);
    assert_eq!(calm.spread, 0.0);
    let mut s = SpeedEstimator::default();
    for (i, v) in [20.0, 90.0, 30.0, 80.0, 40.0, 70.0].iter().enumerate() {
        s.observe(i as i64, *v, &p);
    }
    assert!(s.estimate(10, &p).spread > 0.5);
}

#[test]
fn remaining_follows_the_route_not_the_crow() {
    // An L-shaped route: north then east. From the start to the end the crow flies the
    // diagonal; the truck drives both legs.
    let route = RouteCorridor::new(&[(4.6, -74.1), (4.7, -74.1), (4.7, -74.0)]).unwrap();
    let r = remaining(Some(&route), (4.6, -74.1), (4.7, -74.0), 1.3);
    assert!(r.along_route);
    assert!((r.metres - route.length_m()).abs() < 1.0, "{}", r.metres);
    let crow = haversine_m(4.6, -74.1, 4.7, -74.0);
    assert!(r.metres > crow * 1.3, "{} vs {}", r.metres, crow);
}

#[test]
fn remaining_adds_the_way_back_to_the_route_and_the_last_mile() {
    let route = straight_route();
    // 1 km east of the route at 4.70, destination 500 m east of the route at 4.80.
    let off = 1000.0 / (111_320.0 * 4.7f64.to_radians().cos());
    let dest_off = 500.0 / (111_320.0 * 4.8f64.to_radians().cos());
    let r = remaining(
        Some(&route),
        (4.70, -74.08 + off),
        (4.80, -74.08 + dest_off),
        1.3,
    );
    let leg = haversine_m(4.70, -74.08, 4.80, -74.08);
    assert!(
        (r.metres - (leg + 1500.0)).abs() < 20.0,
        "{} vs {}",
        r.metres,
        leg + 1500.0
    );
    assert!((r.off_route_m - 1000.0).abs() < 10.0);
}

#[test]
fn past_the_destination_goes_straight_back() {
    let route = straight_route();
    let r = remaining(Some(&route), (4.85, -74.08), (4.80, -74.08), 1.3);
    assert!(!r.along_route);
    let crow = haversine_m(4.85, -74.08, 4.80, -74.08);
    assert!((r.metres - crow * 1.3).abs() < 1.0);
}

#[test]
fn without_a_route_straight_line_times_detour() {
    let r = remaining(None, (4.6, -74.0), (4.7, -74.0), 1.5);
    assert!(!r.along_route);
    assert!((r.metres - haversine_m(4.6, -74.0, 4.7, -74.0) * 1.5).abs() < 1e-6);
}

#[test]
fn eta_is_distance_over_speed() {
    let p = EtaParams::default();
    let route = straight_route();
    let s = steady(72.0, 10, 10_000); // 72 km/h = 20 m/s
    let e = estimate(
        Some(&route),
        (4.60, -74.08),
        (4.90, -74.08),
        100_000,
        &s,
        &p,
    );
    let expected = 100_000 + (route.length_m() / 20.0 * 1000.0) as i64;
    assert!(
        (e.eta_ms - expected).abs() <= 1,
        "{} vs {expected}",
        e.eta_ms
    );
    assert_eq!(e.speed_kmh, 72.0);
    assert!(e.along_route);
}

#[test]
fn at_the_destination_eta_is_now() {
    let p = EtaParams::default();
    let route = straight_route();
    let e = estimate(
        Some(&route),
        (4.90, -74.08),
        (4.90, -74.08),
        5_000,
        &steady(50.0, 5, 1000),
        &p,
    );
    assert!(e.remaining_m < 1.0);
    assert!((e.eta_ms - 5_000).abs() < 100);
}

#[test]
fn confidence_drops_with_less_evidence() {
    let p = EtaParams::default();
    let route = straight_route();
    let at = |s: &SpeedEstimator, route: Option<&RouteCorridor>, pos| {
        estimate(route, pos, (4.90, -74.08), 100_000, s, &p).confidence
    };
    let on = (4.65, -74.08);
    let full = at(&steady(60.0, 20, 1000), Some(&route), on);
    let few = at(&steady(60.0, 1, 1000), Some(&route), on);
    let none = at(&SpeedEstimator::default(), Some(&route), on);
    let no_route = at(&steady(60.0, 20, 1000), None, on);
    let off_route = at(&steady(60.0, 20, 1000), Some(&route), (4.65, -74.0));
    let floor = at(&steady(6.0, 20, 1000), Some(&route), on);
    assert!(full > 0.8, "{full}");
    for (name, c) in [
        ("few", few),
        ("none", none),
        ("no route", no_route),
        ("off route", off_route),
        ("floor", floor),
    ] {
        assert!(c < full, "{name}: {c} !< {full}");
        assert!((0.05..=1.0).contains(&c), "{name}: {c}");
    }
    assert_eq!(none, 0.05);
}

#[test]
fn params_are_validated() {
    assert!(EtaParams::default().validate().is_ok());
    let mut p = EtaParams::default();
    p.speed.floor_kmh = 0.0;
    assert!(p.validate().is_err());
    let p = EtaParams {
        detour_factor: 0.9,
        ..EtaParams::default()
    };
    assert!(p.validate().is_err());
    let mut p = EtaParams::default();
    p.speed.default_kmh = 1.0;
    assert!(p.validate().is_err());
    let mut p = EtaParams::default();
    p.speed.window_ms = 0;
    assert!(p.validate().is_err());
}

#[test]
fn estimator_round_trips_through_serde() {
    let s = steady(55.0, 7, 1000);
    let json = serde_json::to_string(&s).unwrap();
    let back: SpeedEstimator = serde_json::from_str(&json).unwrap();
    assert_eq!(s, back);
}
