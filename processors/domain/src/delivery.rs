//! A delivery's lifecycle: status from the driver's updates, completion by the destination
//! geofence, ETA, and late-delivery prediction.
//!
//! [`Delivery`] is plain data (serde) that the deliveries processor keeps per delivery. It is
//! fed two kinds of input, both in event time:
//!
//! * [`Delivery::apply`] a driver / dispatch update ([`Update`]): status steps only move
//!   forward ([`Status::rank`]); a terminal status (delivered, failed, cancelled) is final;
//!   destination, radius and promised time take the value of the newest update carrying them.
//! * [`Delivery::observe`] a position of the delivery's vehicle: the last position, the
//!   destination geofence (arrival when inside; **completion** once the vehicle has stayed
//!   inside for [`DeliveryParams::dwell_ms`] after pick-up, leaving the circle grown by
//!   [`DeliveryParams::exit_margin`] resets the dwell), and the [`Eta`] with late prediction
//!   (late once the ETA passes the promised time by more than the grace, on time again once
//!   it is back before the promised time; overdue once the promised time itself has passed).
//!
//! Both return the [`Change`]s worth telling someone about, so the caller publishes a
//! notification per change and nothing for the many readings that change nothing. Replaying
//! input (at-least-once delivery) is harmless: a status step is never taken twice and old
//! positions (event time not after the last one) are ignored.

use serde::{Deserialize, Serialize};

use crate::eta::{self, Eta, EtaParams, SpeedEstimator};
use crate::geo::haversine_m;
use crate::route::RouteCorridor;

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Known to the dispatch system.
    Created,
    /// Given to a vehicle.
    Assigned,
    /// Goods loaded.
    PickedUp,
    /// On the way.
    InTransit,
    /// At the destination.
    Arrived,
    /// Handed over (final).
    Delivered,
    /// Could not be delivered (final).
    Failed,
    /// Called off (final).
    Cancelled,
}

impl Status {
    /// Order of the steps: a delivery never moves to a lower rank.
    pub fn rank(self) -> u8 {
        match self {
            Status::Created => 0,
            Status::Assigned => 1,
            Status::PickedUp => 2,
            Status::InTransit => 3,
            Status::Arrived => 4,
            Status::Delivered | Status::Failed | Status::Cancelled => 5,
        }
    }

    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        self.rank() == 5
    }

    /// snake_case name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Assigned => "assigned",
            Status::PickedUp => "picked_up",
            Status::InTransit => "in_transit",
            Status::Arrived => "arrived",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status named `s` (as [`Status::name`] spells it).
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Created,
            Status::Assigned,
            Status::PickedUp,
            Status::InTransit,
            Status::Arrived,
            Status::Delivered,
            Status::Failed,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
}

/// Who decided that the delivery was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompletedBy {
    /// The driver confirmed it.
    Driver,
    /// The vehicle stayed at the destination long enough.
    Geofence,
}

/// Tuning of delivery tracking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeliveryParams {
    /// Time inside the destination geofence that completes a picked-up delivery, ms.
    pub dwell_ms: i64,
    /// Radius used when an update gives none, metres.
    pub default_radius_m: f64,
    /// The vehicle leaves the geofence only beyond `radius * exit_margin` (GPS jitter at the
    /// edge must not reset the dwell).
    pub exit_margin: f64,
    /// An ETA this much after the promised time makes the delivery late, ms.
    pub late_grace_ms: i64,
    /// ETA estimation.
    pub eta: EtaParams,
}

impl Default for DeliveryParams {
    fn default() -> Self {
        Self {
            dwell_ms: 120_000,
            default_radius_m: 150.0,
            exit_margin: 1.2,
            late_grace_ms: 5 * 60_000,
            eta: EtaParams::default(),
        }
    }
}

/// A driver or dispatch update, as the domain sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// The step it reports.
    pub status: Status,
    /// When it happened, ms.
    pub event_time: i64,
    /// Destination (lat, lon), if it carries one.
    pub destination: Option<(f64, f64)>,
    /// Destination geofence radius, metres, if it carries one.
    pub radius_m: Option<f64>,
    /// Promised delivery time, ms, if it carries one.
    pub promised_by: Option<i64>,
    /// Where the driver was, if known.
    pub position: Option<(f64, f64)>,
}

impl Update {
    /// An update with only a status and a time.
    pub fn status(status: Status, event_time: i64) -> Self {
        Self {
            status,
            event_time,
            destination: None,
            radius_m: None,
            promised_by: None,
            position: None,
        }
    }
}

/// Something about a delivery worth telling someone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The status moved forward.
    Status {
        /// Previous status.
        from: Status,
        /// New status.
        to: Status,
        /// When (event time), ms.
        at: i64,
        /// For [`Status::Delivered`]: who decided.
        by: Option<CompletedBy>,
    },
    /// The ETA now passes the promised time by more than the grace.
    Late {
        /// Current ETA, ms.
        eta_ms: i64,
        /// Promised time, ms.
        promised_by: i64,
    },
    /// The ETA is back before the promised time.
    OnTime {
        /// Current ETA, ms.
        eta_ms: i64,
        /// Promised time, ms.
        promised_by: i64,
    },
    /// The promised time passed and the delivery is not completed.
    Overdue {
        /// Promised time, ms.
        promised_by: i64,
    },
}

/// One delivery's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Status.
    pub status: Status,
    /// Event time of the newest update or position applied, ms.
    pub updated_at: i64,
    /// Destination (lat, lon).
    pub destination: Option<(f64, f64)>,
    /// Destination geofence radius, metres.
    pub radius_m: Option<f64>,
    /// Promised delivery time, ms.
    pub promised_by: Option<i64>,
    /// Newest vehicle position (event time, lat, lon).
    pub last_position: Option<(i64, f64, f64)>,
    /// Since when the vehicle has been inside the destination geofence, ms.
    pub inside_since: Option<i64>,
    /// When it was delivered, ms.
    pub delivered_at: Option<i64>,
    /// Who decided it was delivered.
    pub completed_by: Option<CompletedBy>,
    /// Newest ETA.
    pub eta: Option<Eta>,
    /// Whether the newest ETA is late.
    pub late: bool,
    /// Whether the overdue change was reported.
    pub overdue: bool,
    /// Event time of the newest status update, ms (fields of older updates do not win).
    fields_at: i64,
}

impl Delivery {
    /// A delivery first seen with `update`.
    pub fn new(update: &Update) -> (Self, Vec<Change>) {
        let mut d = Self {
            status: Status::Created,
            updated_at: update.event_time,
            destination: None,
            radius_m: None,
            promised_by: None,
            last_position: None,
            inside_since: None,
            delivered_at: None,
            completed_by: None,
            eta: None,
            late: false,
            overdue: false,
            fields_at: i64::MIN,
        };
        let changes = d.apply(update);
        (d, changes)
    }

    /// Applies a driver / dispatch update.
    pub fn apply(&mut self, u: &Update) -> Vec<Change> {
        let mut changes = Vec::new();
        if u.event_time >= self.fields_at {
            self.fields_at = u.event_time;
            if let Some(dest) = u.destination.filter(|d| valid(*d)) {
                if self.destination != Some(dest) {
                    self.inside_since = None;
                }
                self.destination = Some(dest);
            }
            if let Some(r) = u.radius_m.filter(|r| r.is_finite() && *r > 0.0) {
                self.radius_m = Some(r);
            }
            if u.promised_by.is_some() && u.promised_by != self.promised_by {
                // A new promise: overdue is judged afresh (lateness on the next position).
                self.promised_by = u.promised_by;
                self.overdue = false;
            }
        }
        self.updated_at = self.updated_at.max(u.event_time);
        if !self.status.is_final() && u.status.rank() > self.status.rank() {
            let by = (u.status == Status::Delivered).then_some(CompletedBy::Driver);
            changes.push(self.step(u.status, u.event_time, by));
        }
        changes
    }

    /// Applies a position of the delivery's vehicle at `t` (event time): geofence, completion,
    /// ETA and lateness. Positions not newer than the last one are ignored.
    pub fn observe(
        &mut self,
        t: i64,
        pos: (f64, f64),
        route: Option<&RouteCorridor>,
        speed: &SpeedEstimator,
        p: &DeliveryParams,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if !valid(pos) || self.last_position.is_some_and(|(lt, _, _)| t <= lt) {
            return changes;
        }
        self.last_position = Some((t, pos.0, pos.1));
        self.updated_at = self.updated_at.max(t);
        if self.status.is_final() {
            return changes;
        }
        let Some(dest) = self.destination else {
            return changes;
        };
        let radius = self.radius_m.unwrap_or(p.default_radius_m);
        let d = haversine_m(pos.0, pos.1, dest.0, dest.1);
        if d <= radius {
            let since = *self.inside_since.get_or_insert(t);
            if self.status.rank() >= Status::PickedUp.rank() {
                if self.status.rank() < Status::Arrived.rank() {
                    changes.push(self.step(Status::Arrived, t, None));
                }
                if t - since >= p.dwell_ms {
                    changes.push(self.step(Status::Delivered, t, Some(CompletedBy::Geofence)));
                    return changes;
                }
            }
        } else if d > radius * p.exit_margin {
            self.inside_since = None;
        }
        let e = eta::estimate(route, pos, dest, t, speed, &p.eta);
        self.eta = Some(e);
        if let Some(promised_by) = self.promised_by {
            if !self.late && e.eta_ms > promised_by.saturating_add(p.late_grace_ms) {
                self.late = true;
                changes.push(Change::Late {
                    eta_ms: e.eta_ms,
                    promised_by,
                });
            } else if self.late && e.eta_ms <= promised_by {
                self.late = false;
                changes.push(Change::OnTime {
                    eta_ms: e.eta_ms,
                    promised_by,
                });
            }
            if !self.overdue && t > promised_by {
                self.overdue = true;
                changes.push(Change::Overdue { promised_by });
            }
        }
        changes
    }

    fn step(&mut self, to: Status, at: i64, by: Option<CompletedBy>) -> Change {
        let from = self.status;
        self.status = to;
        if to == Status::Delivered {
            self.delivered_at = Some(at);
            self.completed_by = by;
        }
        Change::Status { from, to, at, by }
    }
}

fn valid((lat, lon): (f64, f64)) -> bool {
    crate::geo::is_valid_position(lat, lon)
}

#[cfg(test)]
mod tests;
