//! Estimated time of arrival: the remaining distance along the planned route, divided by a
//! robust recent speed, with a floor and a confidence.
//!
//! * [`SpeedEstimator`] keeps the vehicle's recent *moving* speed samples (stops, below
//!   [`SpeedParams::stop_kmh`], are ignored: a truck at a red light or a loading bay does not
//!   make the rest of the trip slower) within an event-time window, and reports their
//!   median (robust to a GPS spike or one fast stretch) and their spread.
//! * [`remaining`] measures the distance still to drive: along the planned route from the
//!   vehicle's closest point to the destination's closest point, plus how far each lies off
//!   the route; straight-line distance times a detour factor when there is no route (or the
//!   vehicle is past the destination along it), with a lower confidence.
//! * [`estimate`] combines the two into an [`Eta`].
//!
//! ```
//! use fleet_domain::eta::{self, EtaParams, SpeedEstimator};
//! use fleet_domain::route::RouteCorridor;
//! let p = EtaParams::default();
//! let route = RouteCorridor::new(&[(4.60, -74.08), (4.70, -74.08), (4.80, -74.08)]).unwrap();
//! let mut speed = SpeedEstimator::default();
//! for i in 0..10 {
//!     speed.observe(i * 10_000, 60.0, &p.speed);
//! }
//! // Halfway, 60 km/h: about 11 km left, about 11 minutes.
//! let eta = eta::estimate(Some(&route), (4.70, -74.08), (4.80, -74.08), 90_000, &speed, &p);
//! assert!((eta.remaining_m - 11_120.0).abs() < 50.0, "{}", eta.remaining_m);
//! assert!((eta.eta_ms - 90_000 - 667_000).abs() < 5_000, "{}", eta.eta_ms);
//! assert!(eta.along_route && eta.confidence > 0.5);
//! ```

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::DomainError;
use crate::geo::haversine_m;
use crate::route::RouteCorridor;

/// Most samples a [`SpeedEstimator`] keeps (the median is taken over at most this many).
pub const MAX_SPEED_SAMPLES: usize = 64;

/// How the recent speed is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeedParams {
    /// Samples older than this (event time, relative to the estimate's time) are ignored, ms.
    pub window_ms: i64,
    /// Below this the vehicle is stopped and the sample is ignored, km/h.
    pub stop_kmh: f64,
    /// The estimate never goes below this, km/h (a truck stuck in traffic still arrives).
    pub floor_kmh: f64,
    /// Used when no moving sample is known yet, km/h.
    pub default_kmh: f64,
    /// Samples needed for full confidence in the speed (fewer lower the confidence).
    pub min_samples: usize,
}

impl Default for SpeedParams {
    fn default() -> Self {
        Self {
            window_ms: 15 * 60_000,
            stop_kmh: 5.0,
            floor_kmh: 10.0,
            default_kmh: 40.0,
            min_samples: 5,
        }
    }
}

/// How an ETA is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EtaParams {
    /// Speed estimation.
    pub speed: SpeedParams,
    /// Road distance over straight-line distance, used when there is no route to follow.
    pub detour_factor: f64,
    /// Farther than this from the route the vehicle is off it (lower confidence), metres.
    pub off_route_m: f64,
}

impl Default for EtaParams {
    fn default() -> Self {
        Self {
            speed: SpeedParams::default(),
            detour_factor: 1.3,
            off_route_m: 500.0,
        }
    }
}

impl EtaParams {
    /// Checks that the parameters can work.
    pub fn validate(&self) -> Result<(), DomainError> {
        let s = &self.speed;
        let bad = |m: &str| Err(DomainError::InvalidProfile(format!("eta: {m}")));
        if s.window_ms <= 0 {
            return bad("speed window must be positive");
        }
        if !(s.floor_kmh > 0.0 && s.floor_kmh.is_finite()) {
            return bad("speed floor must be positive");
        }
        if !(s.default_kmh >= s.floor_kmh && s.default_kmh.is_finite()) {
            return bad("default speed must be finite and at least the floor");
        }
        if !(s.stop_kmh >= 0.0 && s.stop_kmh.is_finite()) {
            return bad("stop speed must be >= 0");
        }
        if !(self.detour_factor >= 1.0 && self.detour_factor.is_finite()) {
            return bad("detour factor must be >= 1");
        }
        if self.off_route_m.is_nan() || self.off_route_m <= 0.0 {
            return bad("off-route distance must be positive");
        }
        Ok(())
    }
}

/// Where a speed estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpeedBasis {
    /// The median of recent moving samples.
    Observed,
    /// Recent samples were slower than the floor: the floor.
    Floor,
    /// No recent moving sample: the default speed.
    Default,
}

/// A robust recent speed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeedEstimate {
    /// The speed to plan with, km/h (never below the floor).
    pub kmh: f64,
    /// Moving samples it is based on.
    pub samples: usize,
    /// Inter-quartile range over the median (0 = steady).
    pub spread: f64,
    /// Where it came from.
    pub basis: SpeedBasis,
}

/// Recent moving speed samples of one vehicle, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeedEstimator {
    samples: VecDeque<(i64, f64)>,
}

impl SpeedEstimator {
    /// Records a speed sample taken at `t_ms` (event time). Stops, non-finite and absurd
    /// (over 400 km/h) speeds are ignored; samples older than the window before the newest
    /// one are dropped, and at most [`MAX_SPEED_SAMPLES`] are kept.
    pub fn observe(&mut self, t_ms: i64, kmh: f64, p: &SpeedParams) {
        if !(kmh.is_finite() && kmh >= p.stop_kmh && kmh > 0.0 && kmh <= 400.0) {
            return;
        }
        if self.samples.len() == MAX_SPEED_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((t_ms, kmh));
        let newest = self.samples.iter().map(|s| s.0).max().unwrap_or(t_ms);
        self.samples.retain(|s| s.0 >= newest - p.window_ms);
    }

    /// Moving samples currently held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no moving sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The speed to plan with at `now_ms`: the median of the moving samples within the window
    /// before `now_ms` (samples after it, from a clock ahead, count too), at least the floor.
    pub fn estimate(&self, now_ms: i64, p: &SpeedParams) -> SpeedEstimate {
        let mut buf = [0.0f64; MAX_SPEED_SAMPLES];
        let mut n = 0;
        for &(t, v) in &self.samples {
            if t >= now_ms - p.window_ms {
                buf[n] = v;
                n += 1;
            }
        }
        if n == 0 {
            return SpeedEstimate {
                kmh: p.default_kmh,
                samples: 0,
                spread: 0.0,
                basis: SpeedBasis::Default,
            };
        }
        let v = &mut buf[..n];
        v.sort_unstable_by(f64::total_cmp);
        let median = quantile(v, 0.5);
        let spread = (quantile(v, 0.75) - quantile(v, 0.25)) / median;
        let (kmh, basis) = if median < p.floor_kmh {
            (p.floor_kmh, SpeedBasis::Floor)
        } else {
            (median, SpeedBasis::Observed)
        };
        SpeedEstimate {
            kmh,
            samples: n,
            spread,
            basis,
        }
    }
}

/// Linear-interpolated quantile of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The distance still to drive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Remaining {
    /// Metres.
    pub metres: f64,
    /// Whether it follows the planned route (else: straight line times the detour factor).
    pub along_route: bool,
    /// How far the vehicle is from the route, metres (0 without a route).
    pub off_route_m: f64,
}

/// Distance from `pos` to `dest` (both (lat, lon) degrees): along `route` when there is one
/// and the destination still lies ahead on it, else straight line times the detour factor.
pub fn remaining(
    route: Option<&RouteCorridor>,
    pos: (f64, f64),
    dest: (f64, f64),
    detour_factor: f64,
) -> Remaining {
    let straight = || haversine_m(pos.0, pos.1, dest.0, dest.1) * detour_factor;
    let Some(route) = route else {
        return Remaining {
            metres: straight(),
            along_route: false,
            off_route_m: 0.0,
        };
    };
    let at = route.locate(pos.0, pos.1);
    let to = route.locate(dest.0, dest.1);
    if to.along_track_m > at.along_track_m {
        Remaining {
            metres: at.cross_track_m + (to.along_track_m - at.along_track_m) + to.cross_track_m,
            along_route: true,
            off_route_m: at.cross_track_m,
        }
    } else {
        // Past the destination along the route (or level with it): head straight back.
        Remaining {
            metres: straight(),
            along_route: false,
            off_route_m: at.cross_track_m,
        }
    }
}

/// An estimated time of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Eta {
    /// When the vehicle is expected at the destination, ms since the epoch.
    pub eta_ms: i64,
    /// Distance still to drive, metres.
    pub remaining_m: f64,
    /// Speed planned with, km/h.
    pub speed_kmh: f64,
    /// 0..=1: how much to trust it (few or scattered speed samples, no route, off the route,
    /// or a floor/default speed lower it).
    pub confidence: f64,
    /// Whether the distance follows the planned route.
    pub along_route: bool,
}

/// The ETA at `now_ms` of a vehicle at `pos` heading for `dest`.
pub fn estimate(
    route: Option<&RouteCorridor>,
    pos: (f64, f64),
    dest: (f64, f64),
    now_ms: i64,
    speed: &SpeedEstimator,
    p: &EtaParams,
) -> Eta {
    let rem = remaining(route, pos, dest, p.detour_factor);
    let s = speed.estimate(now_ms, &p.speed);
    let travel_ms = rem.metres / (s.kmh / 3.6) * 1000.0;
    let travel_ms = if travel_ms.is_finite() {
        travel_ms.min(i64::MAX as f64 / 4.0) as i64
    } else {
        0
    };
    let samples = s.samples as f64;
    let mut confidence = samples / (samples + p.speed.min_samples.max(1) as f64 / 2.0);
    confidence /= 1.0 + s.spread;
    confidence *= match s.basis {
        SpeedBasis::Observed => 1.0,
        SpeedBasis::Floor => 0.5,
        SpeedBasis::Default => 0.0,
    };
    if !rem.along_route {
        confidence *= 0.7;
    }
    if rem.off_route_m > p.off_route_m {
        confidence *= 0.5;
    }
    Eta {
        eta_ms: now_ms.saturating_add(travel_ms),
        remaining_m: rem.metres,
        speed_kmh: s.kmh,
        // A default-speed ETA is still an ETA, but barely one.
        confidence: confidence.clamp(0.05, 1.0),
        along_route: rem.along_route,
    }
}

#[cfg(test)]
mod tests;
