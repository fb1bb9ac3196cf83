#![allow(clippy::field_reassign_with_default)]

use super::*;
use proptest::prelude::*;

const LAT: f64 = 4.7;
const LON: f64 = -74.0;

fn obs(t: i64) -> Observation {
    Observation::at(t, LAT, LON)
}

fn speed(t: i64, kmh: f64) -> Observation {
    Observation {
        speed_kmh: Some(kmh),
        ..obs(t)
    }
}

fn temp(t: i64, c: f64) -> Observation {
    Observation {
        cargo_temp_c: Some(c),
        ..obs(t)
    }
}

/// Feeds `readings` and returns (rule, transition, since, at) of every alert.
fn run(
    profile: &Profile,
    rules: &mut VehicleRules,
    readings: &[Observation],
) -> Vec<(Rule, Transition, i64, i64)> {
    let mut out = Vec::new();
    for r in readings {
        rules.observe(profile, r, &mut out);
    }
    out.iter()
        .map(|a| (a.rule, a.transition, a.since, a.at))
        .collect()
}

fn reefer() -> Profile {
    let mut p = Profile::default();
    p.thresholds.cargo_temp_min_c = Some(2.0);
    p.thresholds.cargo_temp_max_c = Some(8.0);
    p.thresholds.cargo_temp_after_ms = 60_000;
    p
}

use Rule::*;
use Transition::*;

#[test]
fn temperature_needs_the_duration_and_clears_with_hysteresis() {
    let p = reefer();
    let mut r = VehicleRules::default();
    // A 30 s excursion: nothing.
    let brief = [
        temp(0, 5.0),
        temp(10_000, 9.0),
        temp(40_000, 9.5),
        temp(50_000, 5.0),
    ];
    assert!(run(&p, &mut r, &brief).is_empty());
    // Out of range from 100 s on: raised at 160 s, with `since` the first offending reading.
    let mut readings: Vec<_> = (0..20)
        .map(|i| temp(100_000 + i * 10_000, 9.0 + i as f64 * 0.1))
        .collect();
    // Back to 7.8: inside the range but within the 0.5 band: still raised.
    readings.push(temp(300_000, 7.8));
    // 7.0: cleared.
    readings.push(temp(310_000, 7.0));
    let got = run(&p, &mut r, &readings);
    assert_eq!(
        got,
        [
            (CargoTemperature, Raised, 100_000, 160_000),
            (CargoTemperature, Cleared, 100_000, 310_000)
        ]
    );
}

#[test]
fn temperature_reports_the_violated_bound_and_level() {
    let p = reefer();
    let mut r = VehicleRules::default();
    let mut out = Vec::new();
    for i in 0..8 {
        r.observe(&p, &temp(i * 10_000, -1.0), &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].threshold, Some(2.0));
    assert_eq!(out[0].value, Some(-1.0));
    assert_eq!(out[0].level, Level::High);
    assert!(
        out[0].message().contains("cargo temperature -1.0"),
        "{}",
        out[0].message()
    );
}

#[test]
fn no_temperature_rule_without_a_range() {
    let mut p = Profile::default();
    p.thresholds.zscore_warmup = u32::MAX;
    let mut r = VehicleRules::default();
    let readings: Vec<_> = (0..100).map(|i| temp(i * 10_000, 40.0)).collect();
    assert!(run(&p, &mut r, &readings).is_empty());
}

#[test]
fn a_long_overspeed_is_one_alert_not_a_storm() {
    let p = Profile::default();
    let mut r = VehicleRules::default();
    let mut readings: Vec<_> = (0..500).map(|i| speed(i * 1_000, 120.0)).collect();
    readings.push(speed(600_000, 86.0)); // under the limit but inside the 5 km/h band
    readings.push(speed(601_000, 84.0));
    let got: Vec<_> = run(&p, &mut r, &readings)
        .into_iter()
        .filter(|a| a.0 == Overspeed)
        .collect();
    assert_eq!(
        got,
        [
            (Overspeed, Raised, 0, 30_000),
            (Overspeed, Cleared, 0, 601_000)
        ]
    );
}

#[test]
fn overspeed_interrupted_before_the_duration_restarts_its_clock() {
    let p = Profile::default();
    let mut r = VehicleRules::default();
    let readings = [
        speed(0, 100.0),
        speed(20_000, 100.0),
        speed(25_000, 80.0),
        speed(30_000, 100.0),
        speed(55_000, 100.0),
        speed(60_000, 100.0),
    ];
    let got: Vec<_> = run(&p, &mut r, &readings)
        .into_iter()
        .filter(|a| a.0 == Overspeed)
        .collect();
    assert_eq!(got, [(Overspeed, Raised, 30_000, 60_000)]);
}

#[test]
fn harsh_braking_and_impact_are_instant_with_one_alert_per_episode() {
    let p = Profile::default();
    let mut r = VehicleRules::default();
    let a = |t, x| Observation {
        accel_mps2: Some(x),
        ..obs(t)
    };
    let readings = [
        a(0, -1.0),
        a(1_000, -8.0),
        a(2_000, -9.0),
        a(3_000, -4.0),
        a(4_000, -3.0),
        a(5_000, 30.0),
        a(6_000, -28.0),
        a(7_000, 1.0),
    ];
    let got = run(&p, &mut r, &readings);
    assert_eq!(
        got,
        [
            (HarshBraking, Raised, 1_000, 1_000),
            // -4.0 is still within the hysteresis band (-3.5 clears).
            (HarshBraking, Cleared, 1_000, 4_000),
            (Impact, Raised, 5_000, 5_000),
            (HarshBraking, Raised, 6_000, 6_000),
            (HarshBraking, Cleared, 6_000, 7_000),
            (Impact, Cleared, 5_000, 7_000),
        ]
    );
    let mut out = Vec::new();
    r.observe(&p, &a(8_000, 40.0), &mut out);
    assert_eq!(out[0].level, Level::Critical);
}

#[test]
fn offline_raises_once_at_a_deterministic_time_and_clears_on_the_next_reading() {
    let p = Profile::default(); // 300 s
    let mut r = VehicleRules::default();
    let mut out = Vec::new();
    assert!(
        !r.check_silence(&p, 1_000_000, &mut out),
        "never seen: never offline"
    );
    r.observe(&p, &obs(10_000), &mut out);
    assert!(!r.check_silence(&p, 309_999, &mut out));
    assert!(r.check_silence(&p, 900_000, &mut out));
    assert!(!r.check_silence(&p, 2_000_000, &mut out), "raised once");
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].rule, out[0].transition, out[0].since, out[0].at),
        (Offline, Raised, 10_000, 310_000)
    );
    assert_eq!(r.active(), [Offline]);
    r.observe(&p, &obs(2_500_000), &mut out);
    assert_eq!(
        (out[1].rule, out[1].transition, out[1].since, out[1].at),
        (Offline, Cleared, 10_000, 2_500_000)
    );
    assert!(r.active().is_empty());
}

#[test]
fn unplanned_stop_outside_planned_geofences_only() {
    let mut p = Profile::default();
    p.thresholds.unplanned_stop_after_ms = 600_000;
    p.geofences.push(Geofence {
        id: "depot".into(),
        lat: 5.0,
        lon: -74.0,
        radius_m: 300.0,
        planned_stop: true,
    });
    let mut r = VehicleRules::default();
    // Stopped 20 minutes at the depot: only the geofence entry.
    let depot: Vec<_> = (0..21)
        .map(|i| Observation {
            speed_kmh: Some(0.0),
            ..Observation::at(i * 60_000, 5.0, -74.0)
        })
        .collect();
    assert_eq!(run(&p, &mut r, &depot), [(GeofenceEnter, Raised, 0, 0)]);
    // Stopped 20 minutes on the road: raised after 10 minutes, cleared when moving again.
    let mut road: Vec<_> = (0..21)
        .map(|i| speed(2_000_000 + i * 60_000, 1.0))
        .collect();
    road.push(speed(4_000_000, 4.0)); // not yet moving (+2 km/h band)
    road.push(speed(4_010_000, 30.0));
    let got = run(&p, &mut r, &road);
    assert_eq!(
        got,
        [
            (GeofenceExit, Raised, 2_000_000, 2_000_000),
            (UnplannedStop, Raised, 2_000_000, 2_600_000),
            (UnplannedStop, Cleared, 2_000_000, 4_010_000),
        ]
    );
}

#[test]
fn geofence_edges_do_not_flap() {
    let mut p = Profile::default();
    p.geofences.push(Geofence {
        id: "customer-42".into(),
        lat: 0.0,
        lon: 0.0,
        radius_m: 1_000.0,
        planned_stop: false,
    });
    let mut r = VehicleRules::default();
    let deg_per_m = 1.0 / 111_195.0;
    // In and out around the edge within the 100 m margin: one enter, no exit.
    let jitter: Vec<_> = (0..50)
        .map(|i| {
            let d = if i % 2 == 0 { 990.0 } else { 1_080.0 };
            Observation::at(i * 1_000, 0.0, d * deg_per_m)
        })
        .collect();
    let got = run(&p, &mut r, &jitter);
    assert_eq!(got, [(GeofenceEnter, Raised, 0, 0)]);
    let mut out = Vec::new();
    r.observe(
        &p,
        &Observation::at(60_000, 0.0, 1_200.0 * deg_per_m),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].rule, out[0].subject.as_str()),
        (GeofenceExit, "customer-42")
    );
    assert!(out[0].message().contains("customer-42"));
}

fn routed() -> Profile {
    let mut p = Profile::default();
    // A north-south road along lon -74.0.
    p.route = Some(RouteCorridor::new(&[(4.0, -74.0), (5.0, -74.0)]).unwrap());
    p.thresholds.route_corridor_m = 500.0;
    p.thresholds.route_after_ms = 30_000;
    p
}

/// A reading `off_m` metres east of the road at minute `min`.
fn off(t: i64, off_m: f64, kmh: f64) -> Observation {
    let lon = -74.0 + off_m / (111_195.0 * 4.5f64.to_radians().cos());
    Observation {
        speed_kmh: Some(kmh),
        ..Observation::at(t, 4.5, lon)
    }
}

#[test]
fn route_deviation_with_duration_and_hysteresis() {
    let p = routed();
    let mut r = VehicleRules::default();
    let readings = [
        off(0, 100.0, 60.0),
        off(10_000, 800.0, 60.0), // out, clock starts
        off(20_000, 100.0, 60.0), // back: clock reset
        off(30_000, 900.0, 60.0),
        off(50_000, 950.0, 60.0),
        off(60_000, 1_000.0, 60.0), // 30 s outside: raised
        off(70_000, 450.0, 60.0),   // inside the corridor but beyond 80 %: stays raised
        off(80_000, 350.0, 60.0),   // cleared
    ];
    let got = run(&p, &mut r, &readings);
    assert_eq!(
        got,
        [
            (RouteDeviation, Raised, 30_000, 60_000),
            (RouteDeviation, Cleared, 30_000, 80_000)
        ]
    );
}

#[test]
fn route_deviation_with_abnormal_speed_escalates_to_critical() {
    let mut p = routed();
    p.thresholds.zscore_warmup = u32::MAX; // rules only
    p.thresholds.overspeed_after_ms = 10_000;
    let mut r = VehicleRules::default();
    let mut out = Vec::new();
    let readings = [
        off(0, 2_000.0, 60.0),
        off(30_000, 2_000.0, 60.0), // deviation raised
        off(40_000, 2_000.0, 120.0),
        off(50_000, 2_000.0, 125.0), // overspeed raised -> correlated
        off(60_000, 2_000.0, 125.0),
        off(70_000, 100.0, 60.0), // back on the road: both clear
    ];
    for o in &readings {
        r.observe(&p, o, &mut out);
    }
    let got: Vec<_> = out.iter().map(|a| (a.rule, a.transition, a.at)).collect();
    assert_eq!(
        got,
        [
            (RouteDeviation, Raised, 30_000),
            (Overspeed, Raised, 50_000),
            (Correlated, Raised, 50_000),
            (Overspeed, Cleared, 70_000),
            (RouteDeviation, Cleared, 70_000),
            (Correlated, Cleared, 70_000),
        ]
    );
    assert_eq!(out[2].level, Level::Critical);
}

#[test]
fn no_correlation_when_the_speed_anomaly_is_outside_the_window() {
    let mut p = routed();
    p.thresholds.zscore_warmup = u32::MAX;
    p.thresholds.overspeed_after_ms = 0;
    p.thresholds.correlation_window_ms = 60_000;
    let mut r = VehicleRules::default();
    let readings = [
        off(0, 0.0, 120.0),          // overspeed at t=0
        off(10_000, 0.0, 60.0),      // cleared
        off(200_000, 2_000.0, 60.0), // deviation starts 190 s later
        off(230_000, 2_000.0, 60.0),
        off(240_000, 2_000.0, 60.0),
    ];
    let got = run(&p, &mut r, &readings);
    assert!(!got.iter().any(|a| a.0 == Correlated), "{got:?}");
    assert!(got.contains(&(RouteDeviation, Raised, 200_000, 230_000)));
    // Deviation alone, no speed anomaly: no escalation either.
    let mut r = VehicleRules::default();
    let got = run(
        &p,
        &mut r,
        &[off(0, 2_000.0, 60.0), off(40_000, 2_000.0, 60.0)],
    );
    assert_eq!(got, [(RouteDeviation, Raised, 0, 40_000)]);
}

#[test]
fn statistical_detector_waits_for_its_warmup_then_flags_outliers() {
    let mut p = Profile::default();
    p.thresholds.zscore_warmup = 20;
    let mut r = VehicleRules::default();
    // Wild values during warm-up: nothing.
    let warm: Vec<_> = (0..20)
        .map(|i| temp(i * 1_000, if i % 2 == 0 { -20.0 } else { 30.0 }))
        .collect();
    assert!(run(&p, &mut r, &warm).is_empty());
    // Settle on 5 °C for a long time, then a jump to 15 °C.
    let mut r = VehicleRules::default();
    let mut readings: Vec<_> = (0..200)
        .map(|i| temp(i * 1_000, 5.0 + (i % 3) as f64 * 0.1))
        .collect();
    readings.push(temp(200_000, 15.0));
    readings.push(temp(201_000, 5.1));
    let got = run(&p, &mut r, &readings);
    assert_eq!(
        got,
        [
            (StatisticalTemperature, Raised, 200_000, 200_000),
            (StatisticalTemperature, Cleared, 200_000, 201_000)
        ]
    );
}

#[test]
fn late_and_replayed_readings_are_ignored() {
    let p = Profile::default();
    let mut r = VehicleRules::default();
    let mut out = Vec::new();
    assert_eq!(
        r.observe(&p, &speed(10_000, 50.0), &mut out),
        Observed::Applied
    );
    assert_eq!(
        r.observe(&p, &speed(10_000, 150.0), &mut out),
        Observed::OutOfOrder
    );
    assert_eq!(
        r.observe(&p, &speed(5_000, 150.0), &mut out),
        Observed::OutOfOrder
    );
    assert_eq!(r.last_event_time(), Some(10_000));
    assert!(out.is_empty());
}

#[test]
fn removing_the_route_ends_its_episodes() {
    let mut p = routed();
    let mut r = VehicleRules::default();
    run(
        &p,
        &mut r,
        &[off(0, 2_000.0, 60.0), off(40_000, 2_000.0, 60.0)],
    );
    assert_eq!(r.active(), [RouteDeviation]);
    p.route = None;
    let got = run(&p, &mut r, &[off(50_000, 2_000.0, 60.0)]);
    assert_eq!(got, [(RouteDeviation, Cleared, 0, 50_000)]);
}

#[test]
fn thresholds_validation() {
    assert!(Thresholds::default().validate().is_ok());
    let bad = [
        Thresholds {
            cargo_temp_min_c: Some(8.0),
            cargo_temp_max_c: Some(2.0),
            ..Thresholds::default()
        },
        Thresholds {
            offline_after_ms: -1,
            ..Thresholds::default()
        },
        Thresholds {
            zscore_clear: 5.0,
            ..Thresholds::default()
        },
        Thresholds {
            zscore_alpha: 0.0,
            ..Thresholds::default()
        },
        Thresholds {
            route_corridor_m: f64::NAN,
            ..Thresholds::default()
        },
    ];
    for t in bad {
        assert!(t.validate().is_err(), "{t:?}");
    }
}

fn arb_reading() -> impl Strategy<Value = (i64, f64, f64, f64, f64)> {
    (
        1i64..20_000,
        0.0f64..3_000.0,
        0.0f64..140.0,
        -5.0f64..15.0,
        -30.0f64..30.0,
    )
}

fn readings_from(steps: &[(i64, f64, f64, f64, f64)]) -> Vec<Observation> {
    let mut t = 0;
    steps
        .iter()
        .map(|&(dt, off_m, kmh, c, a)| {
            t += dt;
            Observation {
                cargo_temp_c: Some(c),
                accel_mps2: Some(a),
                ..off(t, off_m, kmh)
            }
        })
        .collect()
}

fn full_profile() -> Profile {
    let mut p = routed();
    p.thresholds.cargo_temp_min_c = Some(0.0);
    p.thresholds.cargo_temp_max_c = Some(10.0);
    p.thresholds.zscore_warmup = 10;
    p.geofences.push(Geofence {
        id: "g".into(),
        lat: 4.5,
        lon: -73.99,
        radius_m: 800.0,
        planned_stop: true,
    });
    p
}

proptest! {
    /// Per rule, transitions alternate raised / cleared (never two raises in a row), and a
    /// cleared alert names the episode its raise started.
    #[test]
    fn transitions_alternate(steps in proptest::collection::vec(arb_reading(), 1..300), wm_every in 1usize..50) {
        let p = full_profile();
        let mut r = VehicleRules::default();
        let mut out = Vec::new();
        for (i, o) in readings_from(&steps).iter().enumerate() {
            r.observe(&p, o, &mut out);
            if i % wm_every == 0 {
                r.check_silence(&p, o.event_time + 400_000, &mut out);
            }
        }
        let mut open: std::collections::HashMap<Rule, i64> = Default::default();
        for a in out.iter().filter(|a| !matches!(a.rule, GeofenceEnter | GeofenceExit)) {
            match a.transition {
                Raised => prop_assert!(open.insert(a.rule, a.since).is_none(), "double raise {:?}", a),
                Cleared => prop_assert_eq!(open.remove(&a.rule), Some(a.since), "clear without raise {:?}", a),
            }
            prop_assert!(a.since <= a.at);
        }
        let mut still: Vec<_> = open.keys().copied().collect();
        still.sort();
        prop_assert_eq!(still, r.active());
    }

    /// The state is plain data: serialising it at any point and continuing from the copy gives
    /// exactly the alerts of an uninterrupted run (what a restart from a snapshot relies on).
    #[test]
    fn snapshot_and_resume_is_invisible(steps in proptest::collection::vec(arb_reading(), 2..200), cut in 0usize..200) {
        let p = full_profile();
        let readings = readings_from(&steps);
        let cut = cut % readings.len();
        let mut whole = VehicleRules::default();
        let mut expected = Vec::new();
        for o in &readings {
            whole.observe(&p, o, &mut expected);
        }
        let mut first = VehicleRules::default();
        let mut got = Vec::new();
        for o in &readings[..cut] {
            first.observe(&p, o, &mut got);
        }
        let json = serde_json::to_vec(&first).unwrap();
        let mut resumed: VehicleRules = serde_json::from_slice(&json).unwrap();
        for o in &readings {
            // Replaying what the snapshot already covers changes nothing.
            resumed.observe(&p, o, &mut got);
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(resumed, whole);
    }
}
