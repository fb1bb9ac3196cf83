//! The simulated fleet: trucks driving back and forth along planned routes on Colombian road
//! corridors (Bogotá, Medellín, Cali, Barranquilla, Bucaramanga, Cartagena), deterministic for
//! a seed. Pure: no IO, time is a parameter.
//!
//! Vehicle `v` is assigned a corridor, a direction, a starting point along it, a cruising speed
//! (55-85 km/h), a reefer set-point and an odometer base, all derived from `(seed, v)`. Its
//! reading at `t` seconds into the run is where that speed has taken it along the corridor
//! (turning round at the ends), with small seeded speed and temperature noise; heading is the
//! bearing of the leg it is on; the odometer grows with the distance driven.
//!
//! Injected incidents (see [`Plan`](crate::mqtt::Plan)) change a reading: overspeed (120 km/h),
//! a warm reefer (35 °C), a route deviation (the truck 3 km to the side of its corridor) in the incident
//! window; silent devices stop reporting.

/// A named corridor: waypoints (lat, lon) along the main road between two cities.
pub(crate) struct Corridor {
    pub(crate) name: &'static str,
    pub(crate) points: &'static [(f64, f64)],
}

/// The corridors (towns on the trunk roads as waypoints).
pub(crate) const CORRIDORS: [Corridor; 6] = [
    Corridor {
        name: "Bogotá - Medellín (Ruta 60 via Honda)",
        points: &[
            (4.7110, -74.0721),
            (4.8270, -74.3540),
            (5.0030, -74.4720),
            (5.2060, -74.7360),
            (5.4830, -74.6620),
            (5.8960, -74.8520),
            (6.0880, -75.0540),
            (6.1550, -75.3740),
            (6.2442, -75.5812),
        ],
    },
    Corridor {
        name: "Bogotá - Cali (Ruta 40 via Ibagué, Armenia)",
        points: &[
            (4.7110, -74.0721),
            (4.5810, -74.2170),
            (4.3030, -74.8010),
            (4.4389, -75.2322),
            (4.5339, -75.6811),
            (4.0840, -76.1950),
            (3.9010, -76.2980),
            (3.4516, -76.5320),
        ],
    },
    Corridor {
        name: "Medellín - Barranquilla (Ruta 25 via Caucasia, Sincelejo)",
        points: &[
            (6.2442, -75.5812),
            (6.6370, -75.8130),
            (7.1210, -75.6350),
            (7.9860, -75.1930),
            (8.7520, -75.4400),
            (9.3047, -75.3978),
            (9.8960, -75.1190),
            (10.3910, -75.4794),
            (10.9639, -74.7964),
        ],
    },
    Corridor {
        name: "Bogotá - Barranquilla (Ruta 45 via Bucaramanga)",
        points: &[
            (4.7110, -74.0721),
            (5.5353, -73.3678),
            (6.4640, -73.2600),
            (7.1193, -73.1227),
            (8.3090, -73.6160),
            (9.3270, -73.6580),
            (9.9960, -73.8900),
            (10.4631, -74.2650),
            (10.9639, -74.7964),
        ],
    },
    Corridor {
        name: "Medellín - Cali (Ruta 25 via Manizales, Pereira)",
        points: &[
            (6.2442, -75.5812),
            (5.7530, -75.6880),
            (5.0703, -75.5138),
            (4.8133, -75.6961),
            (4.0840, -76.1950),
            (3.4516, -76.5320),
        ],
    },
    Corridor {
        name: "Cartagena - Barranquilla (Ruta 90)",
        points: &[
            (10.3910, -75.4794),
            (10.6400, -75.3000),
            (10.7800, -75.0900),
            (10.9639, -74.7964),
        ],
    },
];

/// How far a deviating truck strays from its corridor (to the right of its leg), metres.
const DEVIATION_M: f64 = 3_000.0;

/// SplitMix64 of `x`: a well-mixed 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform value in [0, 1) from `(seed, a, b)`.
pub(crate) fn unit(seed: u64, a: u64, b: u64) -> f64 {
    let h = mix(mix(mix(seed) ^ a) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One corridor with its cumulative lengths.
struct Route {
    points: &'static [(f64, f64)],
    cumulative_m: Vec<f64>,
}

impl Route {
    fn new(points: &'static [(f64, f64)]) -> Self {
        let mut cumulative_m = Vec::with_capacity(points.len());
        let mut total = 0.0;
        cumulative_m.push(0.0);
        for w in points.windows(2) {
            total += fleet_domain::geo::haversine_m(w[0].0, w[0].1, w[1].0, w[1].1);
            cumulative_m.push(total);
        }
        Self {
            points,
            cumulative_m,
        }
    }

    fn length_m(&self) -> f64 {
        *self.cumulative_m.last().unwrap_or(&0.0)
    }

    /// The position `d` metres from the start (clamped), and the leg's bearing in degrees.
    fn at(&self, d: f64) -> (f64, f64, f64) {
        let d = d.clamp(0.0, self.length_m());
        let leg = self
            .cumulative_m
            .windows(2)
            .position(|c| d <= c[1])
            .unwrap_or(self.points.len() - 2);
        let (a, b) = (self.points[leg], self.points[leg + 1]);
        let span = self.cumulative_m[leg + 1] - self.cumulative_m[leg];
        let f = if span > 0.0 {
            (d - self.cumulative_m[leg]) / span
        } else {
            0.0
        };
        // Interpolated along the great circle (the planned route's legs are great circles).
        let (lat, lon) = slerp(a, b, f);
        (lat, lon, bearing(a, b))
    }
}

/// The point a fraction `f` of the way from `a` to `b` along the great circle.
fn slerp(a: (f64, f64), b: (f64, f64), f: f64) -> (f64, f64) {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let v1 = (la1.cos() * lo1.cos(), la1.cos() * lo1.sin(), la1.sin());
    let v2 = (la2.cos() * lo2.cos(), la2.cos() * lo2.sin(), la2.sin());
    let dot = (v1.0 * v2.0 + v1.1 * v2.1 + v1.2 * v2.2).clamp(-1.0, 1.0);
    let omega = dot.acos();
    if omega < 1e-12 {
        return a;
    }
    let (s1, s2) = (
        ((1.0 - f) * omega).sin() / omega.sin(),
        (f * omega).sin() / omega.sin(),
    );
    let v = (
        s1 * v1.0 + s2 * v2.0,
        s1 * v1.1 + s2 * v2.1,
        s1 * v1.2 + s2 * v2.2,
    );
    (
        v.2.atan2((v.0 * v.0 + v.1 * v.1).sqrt()).to_degrees(),
        v.1.atan2(v.0).to_degrees(),
    )
}

/// Initial bearing from `a` to `b`, degrees in [0, 360).
fn bearing(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dlon = (b.1 - a.1).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// What one vehicle is doing at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) speed_kmh: f64,
    pub(crate) heading: f64,
    pub(crate) cargo_temp_c: f64,
    pub(crate) odometer_km: f64,
}

/// A vehicle's fixed parameters.
#[derive(Debug, Clone, Copy)]
struct Truck {
    route: usize,
    start_m: f64,
    reverse: bool,
    speed_kmh: f64,
    setpoint_c: f64,
    odometer_km: f64,
}

/// Injected changes to one reading.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Inject {
    pub(crate) overspeed: bool,
    pub(crate) warm: bool,
    pub(crate) deviate: bool,
}

/// The simulated fleet.
pub(crate) struct Fleet {
    seed: u64,
    /// Prefix of this run's vehicle and event ids ("" on fresh topics).
    tag: String,
    routes: Vec<Route>,
    trucks: Vec<Truck>,
}

impl Fleet {
    pub(crate) fn new(seed: u64, vehicles: usize) -> Self {
        Self::tagged(seed, vehicles, "")
    }

    /// A fleet whose vehicle and event ids start with `tag`, to tell this run's records from
    /// others' on shared topics.
    pub(crate) fn tagged(seed: u64, vehicles: usize, tag: &str) -> Self {
        let routes: Vec<Route> = CORRIDORS.iter().map(|c| Route::new(c.points)).collect();
        let trucks = (0..vehicles as u64)
            .map(|v| {
                let route = (unit(seed, v, 1) * routes.len() as f64) as usize % routes.len();
                Truck {
                    route,
                    start_m: unit(seed, v, 2) * routes[route].length_m(),
                    reverse: unit(seed, v, 3) < 0.5,
                    speed_kmh: 55.0 + unit(seed, v, 4) * 30.0,
                    setpoint_c: 2.0 + unit(seed, v, 5) * 4.0,
                    odometer_km: 20_000.0 + unit(seed, v, 6) * 400_000.0,
                }
            })
            .collect();
        Self {
            seed,
            tag: tag.to_owned(),
            routes,
            trucks,
        }
    }

    pub(crate) fn vehicles(&self) -> usize {
        self.trucks.len()
    }

    /// The prefix of this run's vehicle and event ids.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// Vehicle `v`'s id.
    pub(crate) fn id(&self, v: usize) -> String {
        format!("{}VEH-{v:05}", self.tag)
    }

    /// Vehicles driving each corridor, by corridor name.
    pub(crate) fn per_corridor(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for t in &self.trucks {
            *out.entry(CORRIDORS[t.route].name).or_default() += 1;
        }
        out
    }

    /// The corridor vehicle `v` drives (its planned route).
    pub(crate) fn corridor(&self, v: usize) -> &'static Corridor {
        &CORRIDORS[self.trucks[v].route]
    }

    /// Vehicle `v`'s reading `t_s` seconds into the run; `n` numbers its readings (noise).
    pub(crate) fn reading(&self, v: usize, t_s: f64, n: u64, inject: Inject) -> Reading {
        let truck = self.trucks[v];
        let route = &self.routes[truck.route];
        let len = route.length_m();
        let driven = truck.speed_kmh / 3.6 * t_s.max(0.0);
        // Back and forth along the corridor: position on a loop of twice its length.
        let lap = (truck.start_m + driven).rem_euclid(2.0 * len);
        let (forward, d) = if lap <= len {
            (true, lap)
        } else {
            (false, 2.0 * len - lap)
        };
        let forward = forward != truck.reverse;
        let d = if truck.reverse { len - d } else { d };
        let (mut lat, mut lon, leg_bearing) = route.at(d);
        let heading = if forward {
            leg_bearing
        } else {
            (leg_bearing + 180.0).rem_euclid(360.0)
        };
        let mut speed_kmh = truck.speed_kmh + (unit(self.seed, v as u64, 100 + n) - 0.5) * 6.0;
        let mut cargo_temp_c =
            truck.setpoint_c + (unit(self.seed, v as u64, 1 << 40 | n) - 0.5) * 0.8;
        if inject.overspeed {
            speed_kmh = 120.0;
        }
        if inject.warm {
            cargo_temp_c = 35.0;
        }
        if inject.deviate {
            // Square off the leg (small-distance approximation: 3 km).
            let right = (leg_bearing + 90.0).to_radians();
            lat += (DEVIATION_M * right.cos() / 6_371_008.8).to_degrees();
            lon +=
                (DEVIATION_M * right.sin() / (6_371_008.8 * lat.to_radians().cos())).to_degrees();
        }
        Reading {
            lat,
            lon,
            speed_kmh,
            heading,
            cargo_temp_c,
            odometer_km: truck.odometer_km + driven / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_domain::route::RouteCorridor;

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds() {
        let (a, b, c) = (Fleet::new(7, 100), Fleet::new(7, 100), Fleet::new(8, 100));
        let mut differs = 0;
        for v in 0..100 {
            let ra = a.reading(v, 12.5, 3, Inject::default());
            assert_eq!(ra, b.reading(v, 12.5, 3, Inject::default()));
            if ra != c.reading(v, 12.5, 3, Inject::default()) {
                differs += 1;
            }
        }
        assert!(differs > 95, "{differs}");
        let tagged = Fleet::tagged(7, 100, "run1-");
        assert_eq!(tagged.id(42), "run1-VEH-00042");
        assert_eq!(a.id(42), "VEH-00042");
        assert!(fleet_ingest::valid_vehicle_id(&tagged.id(99)));
        assert_eq!(
            tagged.reading(5, 1.0, 0, Inject::default()),
            a.reading(5, 1.0, 0, Inject::default())
        );
    }

    #[test]
    fn trucks_stay_in_their_corridor_and_move_at_their_speed() {
        let fleet = Fleet::new(42, 300);
        let corridors: Vec<RouteCorridor> = CORRIDORS
            .iter()
            .map(|c| RouteCorridor::new(c.points).unwrap())
            .collect();
        let mut used = std::collections::HashSet::new();
        for v in 0..300 {
            used.insert(fleet.trucks[v].route);
            let route = &corridors[fleet.trucks[v].route];
            let mut prev: Option<Reading> = None;
            for step in 0..40 {
                let t = step as f64 * 90.0;
                let r = fleet.reading(v, t, step, Inject::default());
                let at = route.locate(r.lat, r.lon);
                // The default corridor is 500 m: a truck on its route never deviates.
                assert!(at.cross_track_m < 50.0, "v{v} t{t}: {at:?}");
                assert!((50.0..90.0).contains(&r.speed_kmh), "{}", r.speed_kmh);
                assert!((1.5..6.5).contains(&r.cargo_temp_c), "{}", r.cargo_temp_c);
                assert!((0.0..360.0).contains(&r.heading));
                if let Some(p) = prev {
                    // 90 s at 55-85 km/h: 1.4-2.1 km (less where it turned round at an end).
                    let moved = fleet_domain::geo::haversine_m(p.lat, p.lon, r.lat, r.lon);
                    assert!(moved <= 2_200.0, "v{v}: {moved}");
                    let odo = (r.odometer_km - p.odometer_km) * 1000.0;
                    assert!((1_300.0..2_200.0).contains(&odo), "v{v}: {odo}");
                    assert!(moved <= odo + 1.0);
                }
                prev = Some(r);
            }
        }
        assert_eq!(used.len(), CORRIDORS.len(), "every corridor is driven");
        let per = fleet.per_corridor();
        assert_eq!(per.len(), CORRIDORS.len());
        assert_eq!(per.values().sum::<usize>(), 300);
    }

    #[test]
    fn heading_points_where_the_truck_goes() {
        let fleet = Fleet::new(1, 50);
        for v in 0..50 {
            let a = fleet.reading(v, 100.0, 0, Inject::default());
            let b = fleet.reading(v, 110.0, 0, Inject::default());
            let moved = bearing((a.lat, a.lon), (b.lat, b.lon));
            let diff = (moved - a.heading).rem_euclid(360.0);
            let diff = diff.min(360.0 - diff);
            // Except within 10 s of a waypoint or a turn.
            if fleet_domain::geo::haversine_m(a.lat, a.lon, b.lat, b.lon) > 100.0 {
                assert!(
                    diff < 30.0 || diff > 150.0 && a.heading != b.heading,
                    "v{v}: {diff}"
                );
            }
        }
    }

    #[test]
    fn injections_change_what_the_rules_look_at() {
        let fleet = Fleet::new(3, 10);
        let route = RouteCorridor::new(fleet.corridor(4).points).unwrap();
        let normal = fleet.reading(4, 500.0, 9, Inject::default());
        let all = Inject {
            overspeed: true,
            warm: true,
            deviate: true,
        };
        let bad = fleet.reading(4, 500.0, 9, all);
        assert_eq!(bad.speed_kmh, 120.0);
        assert_eq!(bad.cargo_temp_c, 35.0);
        let off = route.locate(bad.lat, bad.lon).cross_track_m;
        assert!((2_500.0..3_100.0).contains(&off), "{off}");
        assert_eq!(bad.odometer_km, normal.odometer_km);
    }

    #[test]
    fn unit_is_uniform_enough() {
        let n = 10_000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let u = unit(9, i, 0);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }
}
