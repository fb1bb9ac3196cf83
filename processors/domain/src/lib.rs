//! # fleet-domain
//!
//! The pure domain logic of fleetstream: no Kafka, no database, no async runtime, and time is
//! always a parameter, so every rule is unit- and property-testable and benchmarkable.
//!
//! * [`Windows`]: tumbling and hopping event-time window assignment.
//! * [`Watermark`]: per-partition watermark with allowed lateness and idle advancement.
//! * [`WindowAggregate`]: count, speed avg/max, cargo temperature min/avg/max, distance
//!   (haversine between consecutive readings in event-time order), moving vs idle time, first
//!   and last reading; out-of-order readings are placed in event-time order, replays ignored.
//! * [`KeyedWindows`]: the open windows of every vehicle of one partition; closes them as the
//!   watermark passes their end; late readings are reported, not aggregated.
//! * [`geo`]: geodesy through the `geo` crate.
//! * [`route`]: [`route::RouteCorridor`], cross-track and along-track distance from a planned
//!   route.
//! * [`rules`]: per-vehicle anomaly rules with duration and hysteresis, a statistical
//!   detector, geofences, route deviation, silence and correlation.
//! * [`incident`]: the emergency fast lane's severity policy.
//! * [`eta`]: ETA from the remaining distance along the planned route and a robust recent
//!   moving speed, with a floor and a confidence.
//! * [`delivery`]: a delivery's status, completion by destination geofence or driver, ETA and
//!   late-delivery prediction.
//!
//! ## Design
//! Binaries map their records to [`Sample`]s, feed them with the partition's watermark, and
//! turn [`Closed`] windows into output records. State is plain data (serde), so a binary can
//! persist it with the offsets it covers.

mod aggregate;
pub mod delivery;
pub mod eta;
pub mod geo;
pub mod incident;
mod keyed;
pub mod route;
pub mod rules;
mod watermark;
mod window;

pub use aggregate::{Added, Sample, Summary, WindowAggregate};
pub use keyed::{Closed, EndIndex, KeyWindows, KeyedWindows, Outcome};
pub use watermark::{Watermark, trusted_event_time};
pub use window::{WindowBounds, Windows};

/// Errors of the domain crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A window definition that cannot work.
    #[error("invalid window: {0}")]
    InvalidWindow(String),
    /// A planned route that cannot work.
    #[error("invalid route: {0}")]
    InvalidRoute(String),
    /// A vehicle profile that cannot work.
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
}
