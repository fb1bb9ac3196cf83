//! The emergency fast lane's severity policy: who is told and what the vehicle is asked to do.
//!
//! ```
//! use fleet_domain::incident::{Cause, Level, Policy};
//! let r = Policy::default().respond(Cause::PanicButton, Level::Low);
//! assert_eq!(r.level, Level::High, "a panic button is never below high");
//! assert!(r.owner && r.authorities && r.operations && r.start_camera);
//! ```

use serde::{Deserialize, Serialize};

/// What caused an emergency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cause {
    /// The driver pressed the panic button.
    PanicButton,
    /// The crash sensor fired.
    Crash,
    /// The anomaly processor escalated correlated anomalies.
    CriticalAnomaly,
    /// Anything else a device reported.
    Other,
}

/// Severity, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Level {
    /// Parses a configuration value: `info`, `low`, `medium`, `high` or `critical` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Level::Info),
            "low" => Some(Level::Low),
            "medium" => Some(Level::Medium),
            "high" => Some(Level::High),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

/// Thresholds of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// From this level the vehicle's owner is notified.
    pub owner_from: Level,
    /// From this level the authorities are notified.
    pub authorities_from: Level,
    /// From this level the vehicle is told to start its camera.
    pub camera_from: Level,
    /// The lowest level of a panic button, a crash or a critical anomaly, whatever the device
    /// reported (a driver's panic is never "low").
    pub life_safety_floor: Level,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            owner_from: Level::Medium,
            authorities_from: Level::High,
            camera_from: Level::High,
            life_safety_floor: Level::High,
        }
    }
}

/// What to do about one emergency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The incident's level after the policy.
    pub level: Level,
    /// Notify the owner.
    pub owner: bool,
    /// Notify the authorities.
    pub authorities: bool,
    /// Update the operations dashboard (always).
    pub operations: bool,
    /// Send `start_camera` to the vehicle.
    pub start_camera: bool,
}

impl Policy {
    /// The response to an emergency of `cause` reported at `reported`.
    pub fn respond(&self, cause: Cause, reported: Level) -> Response {
        let floor = match cause {
            Cause::PanicButton | Cause::Crash | Cause::CriticalAnomaly => self.life_safety_floor,
            Cause::Other => Level::Info,
        };
        let level = reported.max(floor);
        Response {
            level,
            owner: level >= self.owner_from,
            authorities: level >= self.authorities_from,
            operations: true,
            start_camera: level >= self.camera_from,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVELS: [Level; 5] = [
        Level::Info,
        Level::Low,
        Level::Medium,
        Level::High,
        Level::Critical,
    ];
    const CAUSES: [Cause; 4] = [
        Cause::PanicButton,
        Cause::Crash,
        Cause::CriticalAnomaly,
        Cause::Other,
    ];

    #[test]
    fn life_safety_causes_are_high_at_least() {
        let p = Policy::default();
        for cause in [Cause::PanicButton, Cause::Crash, Cause::CriticalAnomaly] {
            for reported in LEVELS {
                let r = p.respond(cause, reported);
                assert!(r.level >= Level::High, "{cause:?} {reported:?}");
                assert!(r.owner && r.authorities && r.start_camera && r.operations);
            }
            assert_eq!(p.respond(cause, Level::Critical).level, Level::Critical);
        }
    }

    #[test]
    fn other_emergencies_follow_their_reported_level() {
        let p = Policy::default();
        let r = |l| p.respond(Cause::Other, l);
        assert_eq!(
            r(Level::Low),
            Response {
                level: Level::Low,
                owner: false,
                authorities: false,
                operations: true,
                start_camera: false
            }
        );
        assert!(r(Level::Medium).owner && !r(Level::Medium).authorities);
        assert!(r(Level::High).authorities && r(Level::High).start_camera);
    }

    #[test]
    fn the_response_is_monotonic_in_the_level() {
        let p = Policy::default();
        for cause in CAUSES {
            for pair in LEVELS.windows(2) {
                let (lo, hi) = (p.respond(cause, pair[0]), p.respond(cause, pair[1]));
                assert!(hi.level >= lo.level);
                assert!(hi.owner >= lo.owner && hi.authorities >= lo.authorities);
                assert!(hi.start_camera >= lo.start_camera);
            }
        }
    }

    #[test]
    fn thresholds_are_configurable() {
        let p = Policy {
            owner_from: Level::Info,
            authorities_from: Level::Critical,
            camera_from: Level::Critical,
            life_safety_floor: Level::Critical,
        };
        let r = p.respond(Cause::Crash, Level::Low);
        assert_eq!(r.level, Level::Critical);
        assert!(r.owner && r.authorities && r.start_camera);
        let r = p.respond(Cause::Other, Level::High);
        assert!(r.owner && !r.authorities && !r.start_camera);
    }
}
