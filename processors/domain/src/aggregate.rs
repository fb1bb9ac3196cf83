//! Aggregates of one vehicle's readings over one window, maintained incrementally in
//! event-time order even when readings arrive out of order.

use serde::{Deserialize, Serialize};

use crate::geo::haversine_m;

/// One reading, as the window logic sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Event time, ms.
    pub t: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Speed, km/h, if reported.
    pub speed_kmh: Option<f64>,
    /// Cargo temperature, Celsius, if reported.
    pub cargo_temp_c: Option<f64>,
}

/// A closed window's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Readings aggregated.
    pub count: u64,
    /// Mean of reported speeds.
    pub speed_avg_kmh: Option<f64>,
    /// Max reported speed.
    pub speed_max_kmh: Option<f64>,
    /// Min cargo temperature.
    pub cargo_temp_min_c: Option<f64>,
    /// Mean cargo temperature.
    pub cargo_temp_avg_c: Option<f64>,
    /// Max cargo temperature.
    pub cargo_temp_max_c: Option<f64>,
    /// Haversine distance between consecutive readings in event-time order, metres.
    pub distance_m: f64,
    /// Seconds between consecutive readings spent moving.
    pub moving_s: f64,
    /// Seconds between consecutive readings spent stationary.
    pub idle_s: f64,
    /// Earliest reading.
    pub first: Sample,
    /// Latest reading.
    pub last: Sample,
}

/// Whether a reading was taken into the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Aggregated.
    Yes,
    /// A reading with the same event time was already aggregated (a replay): ignored.
    Duplicate,
}

/// Incremental aggregate over one window.
///
/// Readings are kept sorted by event time (a window holds tens of readings per vehicle), so
/// distance and moving/idle time are always those of the event-time order: an out-of-order
/// reading splits the segment it falls into. A second reading with an event time already
/// present is a replay and is ignored, so at-least-once input does not double-count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    moving_threshold_kmh: f64,
    points: Vec<Sample>,
    speed_sum: f64,
    speed_n: u64,
    speed_max: Option<f64>,
    temp_sum: f64,
    temp_n: u64,
    temp_min: Option<f64>,
    temp_max: Option<f64>,
    distance_m: f64,
    moving_ms: i64,
    idle_ms: i64,
}

fn max_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn min_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Contribution of the segment from `a` to `b` (a.t <= b.t): (metres, moving ms, idle ms).
fn segment(a: &Sample, b: &Sample, moving_threshold_kmh: f64) -> (f64, i64, i64) {
    let d = haversine_m(a.lat, a.lon, b.lat, b.lon);
    let dt = b.t - a.t;
    let moving = match a.speed_kmh {
        Some(v) => v >= moving_threshold_kmh,
        None => dt > 0 && d / (dt as f64 / 1000.0) * 3.6 >= moving_threshold_kmh,
    };
    if moving { (d, dt, 0) } else { (d, 0, dt) }
}

impl WindowAggregate {
    /// An empty aggregate; a segment counts as moving when the earlier reading's speed is at
    /// least `moving_threshold_kmh` (or, without a speed, when the implied speed is).
    pub fn new(moving_threshold_kmh: f64) -> Self {
        Self {
            moving_threshold_kmh,
            points: Vec::new(),
            speed_sum: 0.0,
            speed_n: 0,
            speed_max: None,
            temp_sum: 0.0,
            temp_n: 0,
            temp_min: None,
            temp_max: None,
            distance_m: 0.0,
            moving_ms: 0,
            idle_ms: 0,
        }
    }

    /// Adds a reading.
    pub fn add(&mut self, s: Sample) -> Added {
        let i = self.points.partition_point(|p| p.t < s.t);
        if self.points.get(i).is_some_and(|p| p.t == s.t) {
            return Added::Duplicate;
        }
        let th = self.moving_threshold_kmh;
        let mut apply = |(d, m, idle): (f64, i64, i64), sign: f64| {
            self.distance_m += sign * d;
            self.moving_ms += sign as i64 * m;
            self.idle_ms += sign as i64 * idle;
        };
        let prev = i.checked_sub(1).map(|j| self.points[j]);
        let next = self.points.get(i).copied();
        if let (Some(p), Some(n)) = (prev, next) {
            apply(segment(&p, &n, th), -1.0);
        }
        if let Some(p) = prev {
            apply(segment(&p, &s, th), 1.0);
        }
        if let Some(n) = next {
            apply(segment(&s, &n, th), 1.0);
        }
        self.points.insert(i, s);
        if let Some(v) = s.speed_kmh {
            self.speed_sum += v;
            self.speed_n += 1;
            self.speed_max = max_opt(self.speed_max, v);
        }
        if let Some(c) = s.cargo_temp_c {
            self.temp_sum += c;
            self.temp_n += 1;
            self.temp_min = min_opt(self.temp_min, c);
            self.temp_max = max_opt(self.temp_max, c);
        }
        Added::Yes
    }

    /// Number of readings aggregated.
    pub fn count(&self) -> usize {
        self.points.len()
    }

    /// The results, `None` when empty.
    pub fn summary(&self) -> Option<Summary> {
        let first = *self.points.first()?;
        let last = *self.points.last()?;
        Some(Summary {
            count: self.points.len() as u64,
            speed_avg_kmh: (self.speed_n > 0).then(|| self.speed_sum / self.speed_n as f64),
            speed_max_kmh: self.speed_max,
            cargo_temp_min_c: self.temp_min,
            cargo_temp_avg_c: (self.temp_n > 0).then(|| self.temp_sum / self.temp_n as f64),
            cargo_temp_max_c: self.temp_max,
            distance_m: self.distance_m.max(0.0),
            moving_s: self.moving_ms as f64 / 1000.0,
            idle_s: self.idle_ms as f64 / 1000.0,
            first,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, lat: f64, lon: f64, speed: Option<f64>, temp: Option<f64>) -> Sample {
        Sample {
            t,
            lat,
            lon,
            speed_kmh: speed,
            cargo_temp_c: temp,
        }
    }

    #[test]
    fn aggregates_in_event_time_order() {
        let mut a = WindowAggregate::new(3.0);
        // Arrival order 0, 2, 1: distance must be 0->1->2, not 0->2->1.
        assert_eq!(a.add(s(0, 0.0, 0.0, Some(50.0), Some(4.0))), Added::Yes);
        assert_eq!(a.add(s(2000, 0.0, 0.002, Some(0.0), Some(6.0))), Added::Yes);
        assert_eq!(a.add(s(1000, 0.0, 0.001, Some(40.0), None)), Added::Yes);
        let sum = a.summary().expect("non-empty");
        let one = haversine_m(0.0, 0.0, 0.0, 0.001);
        assert!(
            (sum.distance_m - 2.0 * one).abs() < 1e-6,
            "{}",
            sum.distance_m
        );
        assert_eq!(sum.count, 3);
        assert_eq!(sum.speed_avg_kmh, Some(30.0));
        assert_eq!(sum.speed_max_kmh, Some(50.0));
        assert_eq!(
            (sum.cargo_temp_min_c, sum.cargo_temp_max_c),
            (Some(4.0), Some(6.0))
        );
        assert_eq!(sum.cargo_temp_avg_c, Some(5.0));
        // 0->1 moving (50 km/h), 1->2 moving (40 km/h): 2 s moving.
        assert_eq!((sum.moving_s, sum.idle_s), (2.0, 0.0));
        assert_eq!(sum.first.t, 0);
        assert_eq!(sum.last.t, 2000);
    }

    #[test]
    fn stationary_segments_count_as_idle_and_replays_are_ignored() {
        let mut a = WindowAggregate::new(3.0);
        a.add(s(0, 1.0, 1.0, Some(0.0), None));
        a.add(s(5000, 1.0, 1.0, Some(0.0), None));
        assert_eq!(a.add(s(5000, 9.0, 9.0, Some(99.0), None)), Added::Duplicate);
        let sum = a.summary().expect("non-empty");
        assert_eq!(
            (sum.count, sum.moving_s, sum.idle_s, sum.distance_m),
            (2, 0.0, 5.0, 0.0)
        );
        assert_eq!(sum.speed_max_kmh, Some(0.0));
        assert_eq!(sum.cargo_temp_avg_c, None);
    }

    #[test]
    fn missing_speed_is_inferred_from_distance() {
        let mut a = WindowAggregate::new(3.0);
        a.add(s(0, 0.0, 0.0, None, None));
        a.add(s(10_000, 0.0, 0.01, None, None)); // ~1.1 km in 10 s: moving
        a.add(s(20_000, 0.0, 0.01, None, None)); // stationary
        let sum = a.summary().expect("non-empty");
        assert_eq!((sum.moving_s, sum.idle_s), (10.0, 10.0));
        assert_eq!(sum.speed_avg_kmh, None);
        assert!(WindowAggregate::new(3.0).summary().is_none());
    }
}
