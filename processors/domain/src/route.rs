//! A vehicle's planned route as a polyline, and where a position lies relative to it.
//!
//! [`RouteCorridor::locate`] returns the cross-track distance (shortest distance from the
//! position to the polyline, on the sphere) and the along-track distance (how far along the
//! route the closest point lies), the two numbers route deviation and ETA need.
//!
//! ## Design
//! Finding the closest segment is the hot part (every reading of every routed vehicle). It is
//! done on a local equirectangular projection (a few multiplications per segment), visiting
//! chunks of 16 segments nearest bounding box first and skipping chunks whose box is farther
//! than the best segment found; then every segment within 5 % (+ 10 m + a bound of the
//! projection's error, which grows with segment length) of the best planar distance is
//! measured exactly on the sphere (haversine distances and bearings through
//! `geo`), so near-ties between legs are decided exactly (a property test compares with a
//! brute-force exact search).
//!
//! ```
//! use fleet_domain::route::RouteCorridor;
//! // Bogotá -> Medellín (two straight legs, for the example).
//! let route = RouteCorridor::new(&[(4.7110, -74.0721), (5.0689, -75.5174), (6.2442, -75.5812)]).unwrap();
//! let on = route.locate(5.0689, -75.5174);
//! assert!(on.cross_track_m < 1.0);
//! let off = route.locate(6.0, -74.0);
//! assert!(off.cross_track_m > 10_000.0);
//! assert!(on.along_track_m > 100_000.0 && on.along_track_m < route.length_m());
//! ```

use geo::{Bearing, Distance, Haversine, Point};

use crate::DomainError;

/// Mean Earth radius used by `geo`'s haversine, metres.
const R: f64 = 6_371_008.8;

/// Where a position lies relative to a route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    /// Shortest distance from the position to the route, metres.
    pub cross_track_m: f64,
    /// Distance along the route from its start to the closest point, metres.
    pub along_track_m: f64,
    /// Index of the closest segment (0 = first leg).
    pub segment: usize,
}

/// A planned route: a polyline of (lat, lon) waypoints in degrees.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCorridor {
    points: Vec<(f64, f64)>,
    /// The points in radians (lat, lon), for the planar pass.
    radians: Vec<(f64, f64)>,
    /// Cumulative haversine length at each waypoint, metres.
    cumulative_m: Vec<f64>,
    /// Groups of consecutive segments with their bounding boxes.
    chunks: Vec<Chunk>,
    /// Longest segment, metres (bounds the planar pass's error).
    max_segment_m: f64,
}

/// Segments `first..last` (segment i joins points i and i + 1) and their bounding box, radians.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    first: usize,
    last: usize,
    lat_min: f64,
    lat_max: f64,
    lon_min: f64,
    lon_max: f64,
}

/// Segments per chunk.
const CHUNK: usize = 16;

impl RouteCorridor {
    /// A route through `points` (lat, lon in degrees); at least two valid points.
    pub fn new(points: &[(f64, f64)]) -> Result<Self, DomainError> {
        if points.len() < 2 {
            return Err(DomainError::InvalidRoute(format!(
                "a route needs at least 2 points, got {}",
                points.len()
            )));
        }
        if let Some((lat, lon)) = points
            .iter()
            .find(|(lat, lon)| !crate::geo::is_valid_position(*lat, *lon))
        {
            return Err(DomainError::InvalidRoute(format!(
                "waypoint lat {lat} lon {lon} out of range"
            )));
        }
        let mut cumulative_m = Vec::with_capacity(points.len());
        let mut total = 0.0;
        cumulative_m.push(0.0);
        for w in points.windows(2) {
            total += crate::geo::haversine_m(w[0].0, w[0].1, w[1].0, w[1].1);
            cumulative_m.push(total);
        }
        let radians: Vec<(f64, f64)> = points
            .iter()
            .map(|(lat, lon)| (lat.to_radians(), lon.to_radians()))
            .collect();
        let segments = points.len() - 1;
        let chunks = (0..segments)
            .step_by(CHUNK)
            .map(|first| {
                let last = (first + CHUNK).min(segments);
                let pts = &radians[first..=last];
                let fold = |f: fn(f64, f64) -> f64, g: fn(&(f64, f64)) -> f64, init| {
                    pts.iter().map(g).fold(init, f)
                };
                Chunk {
                    first,
                    last,
                    lat_min: fold(f64::min, |p| p.0, f64::INFINITY),
                    lat_max: fold(f64::max, |p| p.0, f64::NEG_INFINITY),
                    lon_min: fold(f64::min, |p| p.1, f64::INFINITY),
                    lon_max: fold(f64::max, |p| p.1, f64::NEG_INFINITY),
                }
            })
            .collect();
        let max_segment_m = cumulative_m
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0, f64::max);
        Ok(Self {
            max_segment_m,
            points: points.to_vec(),
            radians,
            chunks,
            cumulative_m,
        })
    }

    /// The waypoints.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// Total length, metres.
    pub fn length_m(&self) -> f64 {
        *self.cumulative_m.last().unwrap_or(&0.0)
    }

    /// Cross-track and along-track distance of (lat, lon) from the route.
    pub fn locate(&self, lat: f64, lon: f64) -> Located {
        use std::f64::consts::{PI, TAU};
        // Planar pass: equirectangular projection centred on the query point, in radians.
        let (lat0, lon0) = (lat.to_radians(), lon.to_radians());
        let k = lat0.cos();
        let wrap = |mut dlon: f64| {
            if dlon > PI {
                dlon -= TAU;
            } else if dlon < -PI {
                dlon += TAU;
            }
            dlon
        };
        let project = |(plat, plon): (f64, f64)| (wrap(plon - lon0) * k, plat - lat0);
        // Chunks of segments with a bounding box: a chunk whose box is farther than the best
        // segment so far cannot hold a closer one. The nearest box is searched first.
        let bound = |c: &Chunk| {
            let dy = (c.lat_min - lat0).max(lat0 - c.lat_max).max(0.0);
            let dx = if c.lon_max - c.lon_min > PI {
                0.0 // spans the antimeridian: no cheap bound
            } else {
                let (a, b) = (wrap(c.lon_min - lon0), wrap(c.lon_max - lon0));
                if a <= 0.0 && b >= 0.0 {
                    0.0
                } else {
                    a.abs().min(b.abs()) * k
                }
            };
            (dx * dx + dy * dy).sqrt()
        };
        let first = self
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (bound(c), i))
            .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
            .1;
        let mut best = (f64::INFINITY, 0usize);
        let order = std::iter::once(first).chain((0..self.chunks.len()).filter(|&i| i != first));
        for ci in order {
            let c = &self.chunks[ci];
            if bound(c) > best.0 {
                continue;
            }
            let mut prev = project(self.radians[c.first]);
            for i in c.first..c.last {
                let next = project(self.radians[i + 1]);
                let d = point_segment_planar(prev, next);
                if d < best.0 {
                    best = (d, i);
                }
                prev = next;
            }
        }
        // Exact pass on every segment whose planar distance is within 5 % (+ 10 m + the
        // projection's error bound) of the best: a great circle strays from the projected
        // straight line by about L²/8R·tan(lat) over a segment of length L (well under a
        // metre for road polylines, kilometres for 300 km legs), so near-ties are decided on
        // the sphere.
        let l = self.max_segment_m;
        let error_m = l * l / R * (1.0 + lat0.tan().abs());
        let limit = best.0 * 1.05 + (10.0 + error_m) / R;
        let mut result = Located {
            cross_track_m: f64::INFINITY,
            along_track_m: 0.0,
            segment: 0,
        };
        for c in self.chunks.iter().filter(|c| bound(c) <= limit) {
            let mut prev = project(self.radians[c.first]);
            for i in c.first..c.last {
                let next = project(self.radians[i + 1]);
                let planar = point_segment_planar(prev, next);
                prev = next;
                if planar > limit {
                    continue;
                }
                let (xt, along) = spherical(self.points[i], self.points[i + 1], (lat, lon));
                if xt < result.cross_track_m {
                    result = Located {
                        cross_track_m: xt,
                        along_track_m: self.cumulative_m[i] + along,
                        segment: i,
                    };
                }
            }
        }
        result
    }

    /// Remaining distance along the route from the closest point to (lat, lon) to the end.
    pub fn remaining_m(&self, lat: f64, lon: f64) -> f64 {
        (self.length_m() - self.locate(lat, lon).along_track_m).max(0.0)
    }
}

/// Distance from the origin to segment a-b in the plane (same unit as the inputs).
fn point_segment_planar(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (-(a.0 * dx + a.1 * dy) / len2).clamp(0.0, 1.0)
    };
    let (x, y) = (a.0 + t * dx, a.1 + t * dy);
    (x * x + y * y).sqrt()
}

/// Cross-track distance of `p` from the great-circle segment a-b (clamped to the segment's
/// ends) and the along-track distance from `a` to the closest point, metres.
fn spherical(a: (f64, f64), b: (f64, f64), p: (f64, f64)) -> (f64, f64) {
    let pa = Point::new(a.1, a.0);
    let pb = Point::new(b.1, b.0);
    let pp = Point::new(p.1, p.0);
    let d_ab = Haversine.distance(pa, pb);
    let d_ap = Haversine.distance(pa, pp);
    if d_ab == 0.0 || d_ap == 0.0 {
        return (d_ap, 0.0);
    }
    let delta13 = d_ap / R;
    let theta = (Haversine.bearing(pa, pp) - Haversine.bearing(pa, pb)).to_radians();
    let xt = (delta13.sin() * theta.sin()).clamp(-1.0, 1.0).asin();
    // Behind the start of the segment: the closest point is `a`.
    if theta.cos() < 0.0 {
        return (d_ap, 0.0);
    }
    let at = ((delta13.cos() / xt.cos()).clamp(-1.0, 1.0)).acos() * R;
    if at > d_ab {
        return (Haversine.distance(pb, pp), d_ab);
    }
    (xt.abs() * R, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::haversine_m;
    use proptest::prelude::*;

    fn equator() -> RouteCorridor {
        RouteCorridor::new(&[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]).unwrap()
    }

    #[test]
    fn rejects_bad_routes() {
        assert!(RouteCorridor::new(&[(0.0, 0.0)]).is_err());
        assert!(RouteCorridor::new(&[(0.0, 0.0), (91.0, 0.0)]).is_err());
        assert!(RouteCorridor::new(&[(0.0, 0.0), (f64::NAN, 0.0)]).is_err());
    }

    #[test]
    fn cross_track_on_a_leg() {
        let r = equator();
        // 0.01 degree north of the first leg's middle: ~1112 m.
        let l = r.locate(0.01, 0.5);
        assert!((l.cross_track_m - 1_111.95).abs() < 2.0, "{l:?}");
        assert_eq!(l.segment, 0);
        assert!((l.along_track_m - 55_597.5).abs() < 50.0, "{l:?}");
    }

    #[test]
    fn beyond_the_ends_measures_to_the_endpoint() {
        let r = equator();
        let before = r.locate(0.0, -0.1);
        assert!((before.cross_track_m - haversine_m(0.0, 0.0, 0.0, -0.1)).abs() < 1.0);
        assert_eq!(before.along_track_m, 0.0);
        let after = r.locate(1.1, 1.0);
        assert!((after.cross_track_m - haversine_m(1.0, 1.0, 1.1, 1.0)).abs() < 1.0);
        assert!((after.along_track_m - r.length_m()).abs() < 1.0);
        assert!(r.remaining_m(1.1, 1.0) < 1.0);
    }

    #[test]
    fn picks_the_nearest_leg_at_a_corner() {
        let r = equator();
        // Close to the second leg (lon 1, going north), far from the first.
        let l = r.locate(0.5, 1.01);
        assert_eq!(l.segment, 1);
        assert!((l.cross_track_m - 1_111.8).abs() < 5.0, "{l:?}");
    }

    #[test]
    fn across_the_antimeridian() {
        let r = RouteCorridor::new(&[(0.0, 179.5), (0.0, -179.5)]).unwrap();
        assert!(r.length_m() < 112_000.0);
        let l = r.locate(0.0, 180.0);
        assert!(l.cross_track_m < 1.0, "{l:?}");
        assert!((l.along_track_m - 55_597.5).abs() < 100.0, "{l:?}");
    }

    proptest! {
        /// Every waypoint lies on the route; a point's distance to the route is never more than
        /// its distance to any waypoint and the along-track distance stays within the length.
        #[test]
        fn geometry_invariants(
            pts in proptest::collection::vec((-60.0f64..60.0, -170.0f64..170.0), 2..8)
                .prop_map(|v| v.into_iter().map(|(a, b)| (a / 10.0 + 4.0, b / 10.0 - 74.0)).collect::<Vec<_>>()),
            q in (-2.0f64..10.0, -80.0f64..-68.0),
        ) {
            let r = RouteCorridor::new(&pts).unwrap();
            for &(lat, lon) in &pts {
                prop_assert!(r.locate(lat, lon).cross_track_m < 1.0);
            }
            let l = r.locate(q.0, q.1);
            for &(lat, lon) in &pts {
                prop_assert!(l.cross_track_m <= haversine_m(q.0, q.1, lat, lon) + 1.0);
            }
            prop_assert!(l.along_track_m >= 0.0 && l.along_track_m <= r.length_m() + 1.0);
        }

        /// The pruned search finds what a brute-force exact search over every segment finds,
        /// on long zig-zag routes (many chunks).
        #[test]
        fn pruned_search_matches_brute_force(
            pts in proptest::collection::vec((-1.0f64..1.0, -1.0f64..1.0), 2..120),
            q in (-1.5f64..1.5, -1.5f64..1.5),
        ) {
            let pts: Vec<(f64, f64)> = pts.iter().enumerate()
                .map(|(i, (a, b))| (4.0 + a + i as f64 * 0.01, -74.0 + b)).collect();
            let r = RouteCorridor::new(&pts).unwrap();
            let (lat, lon) = (4.6 + q.0, -74.0 + q.1);
            let brute = (0..pts.len() - 1)
                .map(|i| spherical(pts[i], pts[i + 1], (lat, lon)).0)
                .fold(f64::INFINITY, f64::min);
            let got = r.locate(lat, lon).cross_track_m;
            prop_assert!((got - brute).abs() <= brute * 0.005 + 1.0, "{} vs {}", got, brute);
        }

        /// A point moved perpendicular off the middle of a north-south leg by d metres is d
        /// metres from the route (within 0.5 %).
        #[test]
        fn perpendicular_offset(d in 1.0f64..50_000.0, lat0 in -50.0f64..50.0) {
            let r = RouteCorridor::new(&[(lat0, 10.0), (lat0 + 1.0, 10.0)]).unwrap();
            let mid = Point::new(10.0, lat0 + 0.5);
            let off = geo::Destination::destination(&Haversine, mid, 90.0, d);
            let l = r.locate(off.y(), off.x());
            prop_assert!((l.cross_track_m - d).abs() <= d * 0.005 + 0.5, "{} vs {}", l.cross_track_m, d);
        }
    }
}
