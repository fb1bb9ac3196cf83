//! Per-vehicle anomaly rules: thresholds with duration and hysteresis, a statistical detector,
//! geofences, route deviation, device silence and correlation.
//!
//! A [`VehicleRules`] is the complete detector state of one vehicle (plain serde data, so a
//! binary can persist it with the offsets it covers). Feed it the vehicle's readings in
//! event-time order with [`VehicleRules::observe`] and the partition's watermark with
//! [`VehicleRules::check_silence`]; each returns [`Alert`] transitions: one
//! [`Transition::Raised`] when a condition starts and one [`Transition::Cleared`] when it ends,
//! never a storm while it lasts.
//!
//! | rule | raised when | cleared when | level |
//! |---|---|---|---|
//! | cargo temperature | outside `[min, max]` for `cargo_temp_after` | back inside by `cargo_temp_band_c` | high |
//! | overspeed | above the limit for `overspeed_after` | below limit - `overspeed_band_kmh` | medium |
//! | harsh braking | acceleration <= -`harsh_braking_mps2` | above half of that | low |
//! | impact | \|acceleration\| >= `impact_mps2` | below half of that | critical |
//! | offline | watermark - last reading >= `offline_after` | the next reading | medium |
//! | unplanned stop | slower than `stop_speed_kmh` outside planned-stop geofences for `unplanned_stop_after` | moving (+2 km/h) or in a planned stop | medium |
//! | geofence enter / exit | inside the radius / beyond radius + max(25 m, 10 %) | (single events) | info |
//! | route deviation | cross-track distance > corridor for `route_after` | within 80 % of the corridor | medium |
//! | statistical | \|z\| >= `zscore_raise` on temperature or moving speed after `zscore_warmup` readings (EWMA mean and variance) | \|z\| <= `zscore_clear` | low |
//! | correlated | route deviation active and abnormal speed (overspeed or statistical) within `correlation_window` | route deviation cleared | critical |
//!
//! Critical alerts are the ones a binary escalates to the emergency fast lane.
//!
//! Every transition carries `since`, the event time its episode started, so an identifier
//! derived from (vehicle, rule, transition, since) is the same whenever the same readings are
//! replayed, whatever the processing time.
//!
//! ```
//! use fleet_domain::rules::{Observation, Profile, Rule, Transition, VehicleRules};
//! let mut profile = Profile::default();
//! profile.thresholds.speed_limit_kmh = 90.0;
//! profile.thresholds.overspeed_after_ms = 10_000;
//! let mut rules = VehicleRules::default();
//! let mut alerts = Vec::new();
//! for (t, speed) in [(0, 80.0), (5_000, 120.0), (10_000, 125.0), (15_000, 118.0), (20_000, 70.0)] {
//!     let obs = Observation { speed_kmh: Some(speed), ..Observation::at(t, 4.7, -74.0) };
//!     rules.observe(&profile, &obs, &mut alerts);
//! }
//! let got: Vec<_> = alerts.iter().map(|a| (a.rule, a.transition, a.since, a.at)).collect();
//! assert_eq!(got, [
//!     (Rule::Overspeed, Transition::Raised, 5_000, 15_000),
//!     (Rule::Overspeed, Transition::Cleared, 5_000, 20_000),
//! ]);
//! ```

use serde::{Deserialize, Serialize};

use crate::DomainError;
use crate::geo::haversine_m;
use crate::incident::Level;
use crate::route::RouteCorridor;

/// Thresholds of one vehicle's rules. Durations are milliseconds of event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Lowest allowed cargo temperature, °C (`None`: no lower bound).
    pub cargo_temp_min_c: Option<f64>,
    /// Highest allowed cargo temperature, °C (`None`: no upper bound).
    pub cargo_temp_max_c: Option<f64>,
    /// How far back inside the range the temperature must come to clear, °C.
    pub cargo_temp_band_c: f64,
    /// How long the temperature must stay out of range to raise.
    pub cargo_temp_after_ms: i64,
    /// Speed limit, km/h.
    pub speed_limit_kmh: f64,
    /// How far below the limit the speed must drop to clear, km/h.
    pub overspeed_band_kmh: f64,
    /// How long the speed must stay above the limit to raise.
    pub overspeed_after_ms: i64,
    /// Deceleration that counts as harsh braking, m/s² (positive number).
    pub harsh_braking_mps2: f64,
    /// Acceleration magnitude that counts as an impact, m/s².
    pub impact_mps2: f64,
    /// Silence after which a device is offline.
    pub offline_after_ms: i64,
    /// Below this speed the vehicle is stopped, km/h.
    pub stop_speed_kmh: f64,
    /// How long a stop outside planned-stop geofences may last.
    pub unplanned_stop_after_ms: i64,
    /// Half-width of the planned route's corridor, metres.
    pub route_corridor_m: f64,
    /// How long the vehicle must stay outside the corridor to raise.
    pub route_after_ms: i64,
    /// |z| from which the statistical detector raises.
    pub zscore_raise: f64,
    /// |z| under which it clears.
    pub zscore_clear: f64,
    /// Readings before the statistical detector judges anything.
    pub zscore_warmup: u32,
    /// Weight of a new reading in the exponentially weighted mean and variance.
    pub zscore_alpha: f64,
    /// Floor of the temperature standard deviation, °C (a constant signal is not "infinitely" surprising).
    pub zscore_min_sd_temp_c: f64,
    /// Floor of the speed standard deviation, km/h.
    pub zscore_min_sd_speed_kmh: f64,
    /// Route deviation and abnormal speed this close in time escalate to a critical alert.
    pub correlation_window_ms: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cargo_temp_min_c: None,
            cargo_temp_max_c: None,
            cargo_temp_band_c: 0.5,
            cargo_temp_after_ms: 60_000,
            speed_limit_kmh: 90.0,
            overspeed_band_kmh: 5.0,
            overspeed_after_ms: 30_000,
            harsh_braking_mps2: 7.0,
            impact_mps2: 25.0,
            offline_after_ms: 300_000,
            stop_speed_kmh: 3.0,
            unplanned_stop_after_ms: 900_000,
            route_corridor_m: 500.0,
            route_after_ms: 30_000,
            zscore_raise: 4.0,
            zscore_clear: 2.0,
            zscore_warmup: 30,
            zscore_alpha: 0.05,
            zscore_min_sd_temp_c: 0.5,
            zscore_min_sd_speed_kmh: 5.0,
            correlation_window_ms: 300_000,
        }
    }
}

impl Thresholds {
    /// Rejects thresholds that cannot work (negative durations, an empty temperature range,
    /// a clear level above the raise level, ...).
    pub fn validate(&self) -> Result<(), DomainError> {
        let bad = |m: String| Err(DomainError::InvalidProfile(m));
        for (name, v) in [
            ("cargo_temp_after_ms", self.cargo_temp_after_ms),
            ("overspeed_after_ms", self.overspeed_after_ms),
            ("offline_after_ms", self.offline_after_ms),
            ("unplanned_stop_after_ms", self.unplanned_stop_after_ms),
            ("route_after_ms", self.route_after_ms),
            ("correlation_window_ms", self.correlation_window_ms),
        ] {
            if v < 0 {
                return bad(format!("{name} must not be negative"));
            }
        }
        for (name, v) in [
            ("cargo_temp_band_c", self.cargo_temp_band_c),
            ("speed_limit_kmh", self.speed_limit_kmh),
            ("overspeed_band_kmh", self.overspeed_band_kmh),
            ("harsh_braking_mps2", self.harsh_braking_mps2),
            ("impact_mps2", self.impact_mps2),
            ("stop_speed_kmh", self.stop_speed_kmh),
            ("route_corridor_m", self.route_corridor_m),
            ("zscore_clear", self.zscore_clear),
            ("zscore_min_sd_temp_c", self.zscore_min_sd_temp_c),
            ("zscore_min_sd_speed_kmh", self.zscore_min_sd_speed_kmh),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a finite number >= 0, got {v}"));
            }
        }
        for v in [self.cargo_temp_min_c, self.cargo_temp_max_c]
            .into_iter()
            .flatten()
        {
            if !v.is_finite() {
                return bad(format!("cargo temperature bound {v} is not a number"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.cargo_temp_min_c, self.cargo_temp_max_c)
            && lo >= hi
        {
            return bad(format!("cargo temperature range {lo}..{hi} is empty"));
        }
        if !(self.zscore_raise.is_finite() && self.zscore_raise > self.zscore_clear) {
            return bad("zscore_raise must be greater than zscore_clear".into());
        }
        if !(self.zscore_alpha > 0.0 && self.zscore_alpha <= 1.0) {
            return bad("zscore_alpha must be in (0, 1]".into());
        }
        Ok(())
    }
}

/// A circular geofence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geofence {
    /// Identifier, reported in enter/exit alerts.
    pub id: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Radius, metres.
    pub radius_m: f64,
    /// Whether stopping inside is planned (depot, customer): no unplanned-stop alert there.
    #[serde(default)]
    pub planned_stop: bool,
}

/// Everything the rules know about one vehicle besides its readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Thresholds.
    pub thresholds: Thresholds,
    /// Planned route, if any (no route: no route-deviation rule).
    pub route: Option<RouteCorridor>,
    /// Geofences.
    pub geofences: Vec<Geofence>,
}

/// One reading, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Event time, ms.
    pub event_time: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Cargo temperature, °C.
    pub cargo_temp_c: Option<f64>,
    /// Longitudinal acceleration, m/s² (negative: braking).
    pub accel_mps2: Option<f64>,
}

impl Observation {
    /// A reading with only time and position.
    pub fn at(event_time: i64, lat: f64, lon: f64) -> Self {
        Self {
            event_time,
            lat,
            lon,
            speed_kmh: None,
            cargo_temp_c: None,
            accel_mps2: None,
        }
    }
}

/// Which rule produced an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rule {
    /// Cargo temperature out of range.
    CargoTemperature,
    /// Above the speed limit.
    Overspeed,
    /// Harsh braking.
    HarshBraking,
    /// Impact.
    Impact,
    /// Device silent.
    Offline,
    /// Stopped outside planned stops.
    UnplannedStop,
    /// Entered a geofence.
    GeofenceEnter,
    /// Left a geofence.
    GeofenceExit,
    /// Outside the planned route's corridor.
    RouteDeviation,
    /// Statistical outlier of the cargo temperature.
    StatisticalTemperature,
    /// Statistical outlier of the speed.
    StatisticalSpeed,
    /// Route deviation with abnormal speed.
    Correlated,
}

impl Rule {
    /// Stable snake_case name (metrics, identifiers, messages).
    pub fn name(self) -> &'static str {
        match self {
            Rule::CargoTemperature => "cargo_temperature",
            Rule::Overspeed => "overspeed",
            Rule::HarshBraking => "harsh_braking",
            Rule::Impact => "impact",
            Rule::Offline => "offline",
            Rule::UnplannedStop => "unplanned_stop",
            Rule::GeofenceEnter => "geofence_enter",
            Rule::GeofenceExit => "geofence_exit",
            Rule::RouteDeviation => "route_deviation",
            Rule::StatisticalTemperature => "statistical_temperature",
            Rule::StatisticalSpeed => "statistical_speed",
            Rule::Correlated => "correlated",
        }
    }

    /// The level of this rule's alerts.
    pub fn level(self) -> Level {
        match self {
            Rule::Impact | Rule::Correlated => Level::Critical,
            Rule::CargoTemperature => Level::High,
            Rule::Overspeed | Rule::Offline | Rule::UnplannedStop | Rule::RouteDeviation => {
                Level::Medium
            }
            Rule::HarshBraking | Rule::StatisticalTemperature | Rule::StatisticalSpeed => {
                Level::Low
            }
            Rule::GeofenceEnter | Rule::GeofenceExit => Level::Info,
        }
    }
}

/// Raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transition {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

impl Transition {
    /// `raised` / `cleared`.
    pub fn name(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Cleared => "cleared",
        }
    }
}

/// One rule transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The rule.
    pub rule: Rule,
    /// Raised or cleared.
    pub transition: Transition,
    /// Event time the episode started (first offending reading; for offline, the last reading).
    pub since: i64,
    /// Event time of the transition.
    pub at: i64,
    /// Level (from the rule).
    pub level: Level,
    /// Observed value (°C, km/h, m/s², metres, seconds or z).
    pub value: Option<f64>,
    /// Threshold compared with.
    pub threshold: Option<f64>,
    /// Position of the vehicle at the transition.
    pub lat: f64,
    /// Position of the vehicle at the transition.
    pub lon: f64,
    /// The geofence, for geofence alerts; empty otherwise.
    pub subject: String,
}

impl Alert {
    /// A human-readable one-line description.
    pub fn message(&self) -> String {
        let v = self.value.unwrap_or(f64::NAN);
        let th = self.threshold.unwrap_or(f64::NAN);
        let what = match self.rule {
            Rule::CargoTemperature => format!("cargo temperature {v:.1} °C (limit {th:.1} °C)"),
            Rule::Overspeed => format!("speed {v:.0} km/h (limit {th:.0} km/h)"),
            Rule::HarshBraking => format!("harsh braking {v:.1} m/s² (limit -{th:.1} m/s²)"),
            Rule::Impact => format!("impact {v:.1} m/s² (limit {th:.1} m/s²)"),
            Rule::Offline => format!("no reading for {v:.0} s (limit {th:.0} s)"),
            Rule::UnplannedStop => format!("stopped for {v:.0} s (limit {th:.0} s)"),
            Rule::GeofenceEnter => format!("entered geofence {}", self.subject),
            Rule::GeofenceExit => format!("left geofence {}", self.subject),
            Rule::RouteDeviation => format!("{v:.0} m from the planned route (corridor {th:.0} m)"),
            Rule::StatisticalTemperature => format!("cargo temperature z-score {v:.1}"),
            Rule::StatisticalSpeed => format!("speed z-score {v:.1}"),
            Rule::Correlated => {
                format!("off the planned route ({v:.0} m) with abnormal speed")
            }
        };
        format!("{} {}: {what}", self.rule.name(), self.transition.name())
    }
}

/// Duration and hysteresis of one condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Episode {
    pending_since: Option<i64>,
    active_since: Option<i64>,
}

impl Episode {
    /// One reading at `t`: `breach` (beyond the raise level) must hold for `raise_after` to
    /// raise; `within` (inside the clear level) clears. Between the two nothing changes.
    fn step(
        &mut self,
        t: i64,
        breach: bool,
        within: bool,
        raise_after: i64,
    ) -> Option<(Transition, i64)> {
        match self.active_since {
            Some(since) => {
                if within {
                    self.active_since = None;
                    return Some((Transition::Cleared, since));
                }
                None
            }
            None => {
                if breach {
                    let p = *self.pending_since.get_or_insert(t);
                    if t - p >= raise_after {
                        self.pending_since = None;
                        self.active_since = Some(p);
                        return Some((Transition::Raised, p));
                    }
                } else {
                    self.pending_since = None;
                }
                None
            }
        }
    }

    fn active(&self) -> bool {
        self.active_since.is_some()
    }
}

/// Exponentially weighted mean and variance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Ewma {
    n: u32,
    mean: f64,
    var: f64,
}

impl Ewma {
    /// The z-score of `x` against what came before (`None` while warming up), then learns `x`.
    fn score_and_learn(&mut self, x: f64, warmup: u32, alpha: f64, min_sd: f64) -> Option<f64> {
        let z = (self.n >= warmup.max(1)).then(|| (x - self.mean) / self.var.sqrt().max(min_sd));
        // Plain running mean during warm-up, EWMA afterwards.
        let a = alpha.max(1.0 / f64::from(self.n.saturating_add(1)));
        let diff = x - self.mean;
        let incr = a * diff;
        self.mean += incr;
        self.var = (1.0 - a) * (self.var + diff * incr);
        self.n = self.n.saturating_add(1);
        z
    }
}

/// What [`VehicleRules::observe`] did with a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Evaluated.
    Applied,
    /// Not newer than the last evaluated reading (late or replayed): ignored.
    OutOfOrder,
}

/// The detector state of one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VehicleRules {
    last_event_time: Option<i64>,
    last_pos: (f64, f64),
    offline_since: Option<i64>,
    temp: Episode,
    /// Which bound the temperature episode is about (for the alert's threshold).
    temp_high: bool,
    speed: Episode,
    braking: Episode,
    impact: Episode,
    stop: Episode,
    route: Episode,
    z_temp: Episode,
    z_speed: Episode,
    correlated: Episode,
    temp_stats: Ewma,
    speed_stats: Ewma,
    /// Last event time at which the speed was abnormal.
    speed_abnormal_at: Option<i64>,
    /// Geofences the vehicle is inside.
    inside: Vec<String>,
}

impl VehicleRules {
    /// Event time of the last evaluated reading.
    pub fn last_event_time(&self) -> Option<i64> {
        self.last_event_time
    }

    /// The rules whose condition is currently raised.
    pub fn active(&self) -> Vec<Rule> {
        let mut v: Vec<Rule> = [
            (Rule::CargoTemperature, &self.temp),
            (Rule::Overspeed, &self.speed),
            (Rule::HarshBraking, &self.braking),
            (Rule::Impact, &self.impact),
            (Rule::UnplannedStop, &self.stop),
            (Rule::RouteDeviation, &self.route),
            (Rule::StatisticalTemperature, &self.z_temp),
            (Rule::StatisticalSpeed, &self.z_speed),
            (Rule::Correlated, &self.correlated),
        ]
        .into_iter()
        .filter(|(_, e)| e.active())
        .map(|(r, _)| r)
        .collect();
        if self.offline_since.is_some() {
            v.push(Rule::Offline);
        }
        v.sort();
        v
    }

    /// Evaluates one reading; transitions are appended to `out`. Readings not newer than the
    /// last evaluated one are ignored (rules need event-time order).
    pub fn observe(
        &mut self,
        profile: &Profile,
        o: &Observation,
        out: &mut Vec<Alert>,
    ) -> Observed {
        if self
            .last_event_time
            .is_some_and(|last| o.event_time <= last)
        {
            return Observed::OutOfOrder;
        }
        let th = &profile.thresholds;
        let t = o.event_time;
        let alert = |rule: Rule, (transition, since): (Transition, i64), value, threshold| Alert {
            rule,
            transition,
            since,
            at: t,
            level: rule.level(),
            value,
            threshold,
            lat: o.lat,
            lon: o.lon,
            subject: String::new(),
        };

        if let Some(since) = self.offline_since.take() {
            let silent_s = (t - since) as f64 / 1000.0;
            let threshold = th.offline_after_ms as f64 / 1000.0;
            out.push(alert(
                Rule::Offline,
                (Transition::Cleared, since),
                Some(silent_s),
                Some(threshold),
            ));
        }

        if let Some(temp) = o.cargo_temp_c
            && temp.is_finite()
            && (th.cargo_temp_min_c.is_some() || th.cargo_temp_max_c.is_some())
        {
            let lo = th.cargo_temp_min_c.unwrap_or(f64::NEG_INFINITY);
            let hi = th.cargo_temp_max_c.unwrap_or(f64::INFINITY);
            let breach = temp < lo || temp > hi;
            let within = temp >= lo + th.cargo_temp_band_c && temp <= hi - th.cargo_temp_band_c;
            if !self.temp.active() && breach {
                self.temp_high = temp > hi;
            }
            let bound = if self.temp_high { hi } else { lo };
            if let Some(tr) = self.temp.step(t, breach, within, th.cargo_temp_after_ms) {
                out.push(alert(Rule::CargoTemperature, tr, Some(temp), Some(bound)));
            }
        }

        let mut speed_abnormal = false;
        if let Some(speed) = o.speed_kmh.filter(|s| s.is_finite()) {
            let limit = th.speed_limit_kmh;
            if let Some(tr) = self.speed.step(
                t,
                speed > limit,
                speed <= limit - th.overspeed_band_kmh,
                th.overspeed_after_ms,
            ) {
                out.push(alert(Rule::Overspeed, tr, Some(speed), Some(limit)));
            }
            // Stops are not speed outliers: the detector learns and judges moving readings.
            let z = (speed >= th.stop_speed_kmh)
                .then(|| {
                    self.speed_stats.score_and_learn(
                        speed,
                        th.zscore_warmup,
                        th.zscore_alpha,
                        th.zscore_min_sd_speed_kmh,
                    )
                })
                .flatten();
            if let Some(tr) = self.z_speed.step(
                t,
                z.is_some_and(|z| z.abs() >= th.zscore_raise),
                z.is_none_or(|z| z.abs() <= th.zscore_clear),
                0,
            ) {
                out.push(alert(Rule::StatisticalSpeed, tr, z, Some(th.zscore_raise)));
            }
            speed_abnormal = self.speed.active() || self.z_speed.active();
        }
        if speed_abnormal {
            self.speed_abnormal_at = Some(t);
        }

        if let Some(temp) = o.cargo_temp_c.filter(|x| x.is_finite()) {
            let z = self.temp_stats.score_and_learn(
                temp,
                th.zscore_warmup,
                th.zscore_alpha,
                th.zscore_min_sd_temp_c,
            );
            if let Some(tr) = self.z_temp.step(
                t,
                z.is_some_and(|z| z.abs() >= th.zscore_raise),
                z.is_none_or(|z| z.abs() <= th.zscore_clear),
                0,
            ) {
                out.push(alert(
                    Rule::StatisticalTemperature,
                    tr,
                    z,
                    Some(th.zscore_raise),
                ));
            }
        }

        let accel = o.accel_mps2.filter(|a| a.is_finite());
        let a = accel.unwrap_or(0.0);
        if let Some(tr) = self.braking.step(
            t,
            a <= -th.harsh_braking_mps2,
            a > -th.harsh_braking_mps2 / 2.0,
            0,
        ) {
            out.push(alert(
                Rule::HarshBraking,
                tr,
                Some(a),
                Some(th.harsh_braking_mps2),
            ));
        }
        if let Some(tr) = self.impact.step(
            t,
            a.abs() >= th.impact_mps2,
            a.abs() < th.impact_mps2 / 2.0,
            0,
        ) {
            out.push(alert(Rule::Impact, tr, Some(a.abs()), Some(th.impact_mps2)));
        }

        // Geofences (and whether the vehicle is at a planned stop).
        let mut at_planned_stop = false;
        for fence in &profile.geofences {
            let d = haversine_m(o.lat, o.lon, fence.lat, fence.lon);
            let inside = d <= fence.radius_m;
            at_planned_stop |= inside && fence.planned_stop;
            let was = self.inside.iter().position(|id| *id == fence.id);
            let margin = (fence.radius_m * 0.1).max(25.0);
            let transition = match was {
                None if inside => {
                    self.inside.push(fence.id.clone());
                    Some(Rule::GeofenceEnter)
                }
                Some(i) if d > fence.radius_m + margin => {
                    self.inside.swap_remove(i);
                    Some(Rule::GeofenceExit)
                }
                _ => None,
            };
            if let Some(rule) = transition {
                let mut a = alert(rule, (Transition::Raised, t), Some(d), Some(fence.radius_m));
                a.subject = fence.id.clone();
                out.push(a);
            }
        }
        // A geofence removed from the profile: forget it silently.
        if self.inside.len() > profile.geofences.len() {
            self.inside
                .retain(|id| profile.geofences.iter().any(|f| f.id == *id));
        }

        if let Some(speed) = o.speed_kmh.filter(|s| s.is_finite()) {
            let stopped = speed < th.stop_speed_kmh;
            let moving = speed >= th.stop_speed_kmh + 2.0;
            let since = self
                .stop
                .pending_since
                .or(self.stop.active_since)
                .unwrap_or(t);
            if let Some(tr) = self.stop.step(
                t,
                stopped && !at_planned_stop,
                moving || at_planned_stop,
                th.unplanned_stop_after_ms,
            ) {
                let stopped_s = (t - since) as f64 / 1000.0;
                let threshold = th.unplanned_stop_after_ms as f64 / 1000.0;
                out.push(alert(
                    Rule::UnplannedStop,
                    tr,
                    Some(stopped_s),
                    Some(threshold),
                ));
            }
        }

        if let Some(route) = &profile.route {
            let d = route.locate(o.lat, o.lon).cross_track_m;
            let corridor = th.route_corridor_m;
            if let Some(tr) =
                self.route
                    .step(t, d > corridor, d <= corridor * 0.8, th.route_after_ms)
            {
                out.push(alert(Rule::RouteDeviation, tr, Some(d), Some(corridor)));
            }
            // Speed abnormal at most a window ago while the deviation lasts (the deviation
            // started at or before now, so this also bounds the gap to its start).
            let correlated = self.route.active()
                && self
                    .speed_abnormal_at
                    .is_some_and(|s| t - s <= th.correlation_window_ms);
            if let Some(tr) = self.correlated.step(t, correlated, !self.route.active(), 0) {
                out.push(alert(Rule::Correlated, tr, Some(d), Some(corridor)));
            }
        } else if self.route.active() || self.correlated.active() {
            // The planned route was removed: end its episodes.
            if let Some(tr) = self.route.step(t, false, true, 0) {
                out.push(alert(Rule::RouteDeviation, tr, None, None));
            }
            if let Some(tr) = self.correlated.step(t, false, true, 0) {
                out.push(alert(Rule::Correlated, tr, None, None));
            }
        }

        self.last_event_time = Some(t);
        self.last_pos = (o.lat, o.lon);
        Observed::Applied
    }

    /// Raises [`Rule::Offline`] when the partition's event-time `watermark` is at least
    /// `offline_after` past this vehicle's last reading. The alert's time is
    /// last reading + `offline_after`, whenever the check runs. Returns whether it raised.
    pub fn check_silence(
        &mut self,
        profile: &Profile,
        watermark: i64,
        out: &mut Vec<Alert>,
    ) -> bool {
        let Some(last) = self.last_event_time else {
            return false;
        };
        let after = profile.thresholds.offline_after_ms;
        if self.offline_since.is_some() || watermark - last < after {
            return false;
        }
        self.offline_since = Some(last);
        out.push(Alert {
            rule: Rule::Offline,
            transition: Transition::Raised,
            since: last,
            at: last + after,
            level: Rule::Offline.level(),
            value: Some(after as f64 / 1000.0),
            threshold: Some(after as f64 / 1000.0),
            lat: self.last_pos.0,
            lon: self.last_pos.1,
            subject: String::new(),
        });
        true
    }
}

#[cfg(test)]
mod tests;
