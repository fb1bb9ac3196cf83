//! Property tests of ETA and delivery completion on random route geometry: the distance left
//! never grows as a truck drives its route, is never shorter than the straight line, ETAs are
//! monotone in distance and speed, and dwelling at the destination completes exactly once.

use fleet_domain::delivery::{Change, CompletedBy, Delivery, DeliveryParams, Status, Update};
use fleet_domain::eta::{self, EtaParams, SpeedEstimator, SpeedParams};
use fleet_domain::geo::haversine_m;
use fleet_domain::route::RouteCorridor;
use proptest::prelude::*;

/// A route that never turns back: every leg heads within ±60° of `base` (degrees), 200 m to
/// 5 km long, starting somewhere between 60°S and 60°N.
fn route() -> impl Strategy<Value = Vec<(f64, f64)>> {
    (
        -60.0f64..60.0,
        -170.0f64..170.0,
        0.0f64..360.0,
        prop::collection::vec((-60.0f64..60.0, 200.0f64..5000.0), 1..40),
    )
        .prop_map(|(lat, lon, base, legs)| {
            let mut pts = vec![(lat, lon)];
            for (turn, len) in legs {
                let (lat, lon) = *pts.last().unwrap();
                let h = (base + turn).to_radians();
                let dlat = len * h.cos() / 111_195.0;
                let dlon = len * h.sin() / (111_195.0 * lat.to_radians().cos());
                pts.push((lat + dlat, lon + dlon));
            }
            pts
        })
}

/// The point a fraction `f` along leg `i` (linear in degrees: within centimetres of the great
/// circle for legs of a few km).
fn on_leg(pts: &[(f64, f64)], i: usize, f: f64) -> (f64, f64) {
    let (a, b) = (pts[i], pts[i + 1]);
    (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn remaining_never_grows_while_driving_the_route(pts in route(), steps in 2usize..40) {
        let route = RouteCorridor::new(&pts).unwrap();
        let dest = *pts.last().unwrap();
        let legs = pts.len() - 1;
        let mut prev = f64::INFINITY;
        for k in 0..=steps {
            let x = k as f64 / steps as f64 * legs as f64;
            let i = (x.floor() as usize).min(legs - 1);
            let pos = on_leg(&pts, i, x - i as f64);
            let r = eta::remaining(Some(&route), pos, dest, 1.3);
            prop_assert!(r.metres <= prev + 1.0, "step {k}: {} > {prev}", r.metres);
            prev = r.metres;
        }
        prop_assert!(prev < 1.0, "at the end: {prev}");
    }

    #[test]
    fn remaining_is_never_shorter_than_the_straight_line(
        pts in route(),
        at in 0.0f64..1.0,
        to in 0.0f64..1.0,
        off in (-3000.0f64..3000.0, -3000.0f64..3000.0),
        detour in 1.0f64..2.0,
    ) {
        let route = RouteCorridor::new(&pts).unwrap();
        let legs = (pts.len() - 1) as f64;
        let pick = |f: f64| {
            let x = f * legs;
            let i = (x.floor() as usize).min(pts.len() - 2);
            on_leg(&pts, i, x - i as f64)
        };
        let p = pick(at);
        let pos = (p.0 + off.0 / 111_195.0, p.1 + off.1 / (111_195.0 * p.0.to_radians().cos()));
        let dest = pick(to);
        let r = eta::remaining(Some(&route), pos, dest, detour);
        let crow = haversine_m(pos.0, pos.1, dest.0, dest.1);
        prop_assert!(r.metres >= crow - 1.0, "{} < {crow}", r.metres);
        if !r.along_route {
            prop_assert!((r.metres - crow * detour).abs() < 1e-6);
        }
    }

    #[test]
    fn eta_is_monotone_in_distance_and_speed(
        pts in route(),
        a in 0.0f64..1.0,
        b in 0.0f64..1.0,
        v1 in 5.0f64..130.0,
        v2 in 5.0f64..130.0,
        now in 0i64..4_000_000_000_000,
    ) {
        let route = RouteCorridor::new(&pts).unwrap();
        let dest = *pts.last().unwrap();
        let legs = (pts.len() - 1) as f64;
        let pick = |f: f64| {
            let x = f * legs;
            let i = (x.floor() as usize).min(pts.len() - 2);
            on_leg(&pts, i, x - i as f64)
        };
        let (near, far) = if a >= b { (pick(a), pick(b)) } else { (pick(b), pick(a)) };
        let p = EtaParams::default();
        let speed = |v: f64| {
            let mut s = SpeedEstimator::default();
            for i in 0..10 {
                s.observe(now - i * 1000, v, &SpeedParams::default());
            }
            s
        };
        let (slow, fast) = (speed(v1.min(v2)), speed(v1.max(v2)));
        let e_near = eta::estimate(Some(&route), near, dest, now, &slow, &p);
        let e_far = eta::estimate(Some(&route), far, dest, now, &slow, &p);
        prop_assert!(e_far.eta_ms + 500 >= e_near.eta_ms, "{} < {}", e_far.eta_ms, e_near.eta_ms);
        let e_fast = eta::estimate(Some(&route), far, dest, now, &fast, &p);
        prop_assert!(e_fast.eta_ms <= e_far.eta_ms);
        for e in [e_near, e_far, e_fast] {
            prop_assert!(e.eta_ms >= now);
            prop_assert!((0.05..=1.0).contains(&e.confidence));
            prop_assert!(e.speed_kmh >= p.speed.floor_kmh);
        }
    }

    #[test]
    fn dwelling_completes_exactly_once_iff_long_enough(
        stay_s in 0i64..600,
        every_s in 1i64..30,
        jitter in prop::collection::vec((-60.0f64..60.0, -60.0f64..60.0), 1..64),
    ) {
        let p = DeliveryParams::default();
        let dest = (10.0, 20.0);
        let (mut d, _) = Delivery::new(&Update {
            destination: Some(dest),
            radius_m: Some(100.0),
            ..Update::status(Status::PickedUp, 0)
        });
        let speed = SpeedEstimator::default();
        let mut completions = Vec::new();
        let mut t = 1000;
        let mut k = 0;
        while t <= 1000 + stay_s * 1000 {
            let (dn, de) = jitter[k % jitter.len()];
            let pos = (dest.0 + dn / 111_195.0, dest.1 + de / (111_195.0 * dest.0.to_radians().cos()));
            for c in d.observe(t, pos, None, &speed, &p) {
                if let Change::Status { to: Status::Delivered, by, at, .. } = c {
                    completions.push((by, at));
                }
            }
            t += every_s * 1000;
            k += 1;
        }
        let last_reading = 1000 + (stay_s / every_s) * every_s * 1000;
        if last_reading - 1000 >= p.dwell_ms {
            prop_assert_eq!(completions.len(), 1);
            prop_assert_eq!(completions[0].0, Some(CompletedBy::Geofence));
            // Completed on the first reading at or after the dwell.
            let first = 1000 + (p.dwell_ms + every_s * 1000 - 1) / (every_s * 1000) * every_s * 1000;
            prop_assert_eq!(completions[0].1, first);
        } else {
            prop_assert!(completions.is_empty());
            prop_assert_eq!(d.status, Status::Arrived);
        }
    }
}
