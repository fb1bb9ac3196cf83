//! # deliveries-processor
//!
//! ```text
//! fleet.deliveries (keyed by delivery) ─> per-delivery state (fleet_domain::delivery) ─> deliveries table
//!        ▲                                  ▲                                         └> fleet.notifications
//! fleet.vehicle-profiles (planned routes)   vehicle_state (positions of fleet.telemetry, kept by telemetry-processor)
//! ```
//!
//! Inputs: [`DeliveryEvent`]s (driver app / dispatch updates, through `http-ingest`), keyed by
//! delivery id; the positions of the delivering vehicles; planned routes from the profiles
//! table. Outputs: the `deliveries` table (status, ETA with confidence, remaining distance,
//! last position, `delivered_at`, who completed it) and [`Notification`]s on every status
//! change, when the ETA slips past the promised time (late), when it is back (on time) and
//! when the promised time passed undelivered (overdue).
//!
//! ## Why positions come from `vehicle_state`, not a second subscription
//! `fleet.deliveries` is keyed by delivery and `fleet.telemetry` by vehicle: the two are not
//! co-partitioned, so one instance owning a delivery's partition does not own its vehicle's
//! telemetry partition. Instead of a repartition topic, every `position_interval` the
//! processor reads the newest position of each vehicle carrying an open delivery from the
//! hot `vehicle_state` table (which `telemetry-processor` keeps from `fleet.telemetry`) and
//! feeds it to the domain in event time. Positions are therefore sampled (one per vehicle per
//! interval, deduplicated by event time): keep `position_interval` well below the geofence
//! dwell (default 5 s against 120 s). Positions a driver's update carries are applied too.
//!
//! ## Delivery guarantee
//! The processor runs on the state runtime ([`fleet_runtime::task`]): each delivery's state is
//! a key of its partition's [`State`], checkpointed by the runtime with the input offsets it
//! covers, and restored when the partition is assigned (so the open deliveries of a quiet
//! partition keep being tracked after a restart). With `runner.processing_guarantee =
//! "exactly_once"` notifications, state and offsets commit in one Kafka transaction: a
//! `read_committed` reader sees each notification once. With `at_least_once` (the default) a
//! crash may repeat the notifications since the last commit, with the same `event_id`
//! (derived from delivery, change and promised time / late episode, never from processing
//! time): the notifier's idempotency key de-duplicates them. The rows of the `deliveries`
//! table are written (idempotent upserts of the latest values) before each commit.
//!
//! ## Example
//! ```
//! use fleet_deliveries::{DeliveriesConfig, status_of};
//! use fleet_domain::delivery::Status;
//! use fleet_schemas::DeliveryKind;
//!
//! let params = DeliveriesConfig::default().params();
//! assert_eq!(params.dwell_ms, 120_000);
//! assert_eq!(status_of(DeliveryKind::PickedUp), Status::PickedUp);
//! // OTHER carries fields (destination, promise) but never moves the status.
//! assert_eq!(status_of(DeliveryKind::Other), Status::Created);
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::delivery::{Change, CompletedBy, Delivery, DeliveryParams, Status, Update};
use fleet_domain::eta::{EtaParams, SpeedEstimator, SpeedParams};
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, State, StatefulProcessor, Table};
use fleet_schemas::profile::ProfileEntry;
use fleet_schemas::{Channel, DeliveryEvent, DeliveryKind, Encoder, Notification, Severity, ids};
use fleet_state::{DeliveryRow, StateStore, VehicleState};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

fleet_runtime::config_section! {
    /// deliveries-processor settings.
    pub struct DeliveriesConfig {
        /// Topic of DeliveryEvent records.
        pub input_topic: String = "fleet.deliveries".to_owned(),
        /// Topic for Notification records.
        pub notifications_topic: String = "fleet.notifications".to_owned(),
        /// Topic of VehicleProfile records (planned routes), read as a table ("" = none).
        pub profiles_topic: String = "fleet.vehicle-profiles".to_owned(),
        /// State store URL (vehicle positions, deliveries table).
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// How often the positions of vehicles with open deliveries are read from vehicle_state.
        #[serde(with = "humantime_serde")]
        pub position_interval: Duration = Duration::from_secs(5),
        /// Time inside the destination geofence that completes a picked-up delivery.
        #[serde(with = "humantime_serde")]
        pub dwell: Duration = Duration::from_secs(120),
        /// Destination geofence radius when an update gives none (metres).
        pub default_radius_m: f64 = 150.0,
        /// An ETA this much past the promised time makes the delivery late.
        #[serde(with = "humantime_serde")]
        pub late_grace: Duration = Duration::from_secs(300),
        /// Speed used for the ETA before any moving sample is known (km/h).
        pub default_speed_kmh: f64 = 40.0,
        /// The ETA's speed never goes below this (km/h).
        pub floor_speed_kmh: f64 = 10.0,
        /// How long a finished delivery stays in memory (a late duplicate update changes nothing).
        #[serde(with = "humantime_serde")]
        pub retain_final: Duration = Duration::from_secs(3600),
        /// Recipient of delivery notifications; `{delivery_id}`, `{vehicle_id}`, `{driver_id}` are replaced.
        pub recipient: String = "dispatch:{vehicle_id}".to_owned(),
        /// Channel for that recipient: log, webhook, email or sms.
        pub channel: String = "webhook".to_owned(),
    }
    validate(c) {
        if Channel::parse(&c.channel).is_none() {
            return Err(fleet_runtime::Error::Config(format!("app.channel {:?}: use log, webhook, email or sms", c.channel)));
        }
        if c.position_interval.is_zero() || c.position_interval >= c.dwell {
            return Err(fleet_runtime::Error::Config("app.position_interval must be positive and below app.dwell".into()));
        }
        if !(c.default_radius_m.is_finite() && c.default_radius_m > 0.0) {
            return Err(fleet_runtime::Error::Config("app.default_radius_m must be positive".into()));
        }
        c.params().eta.validate().map_err(|e| fleet_runtime::Error::Config(format!("app: {e}")))?;
        Ok(())
    }
}

impl DeliveriesConfig {
    /// The domain's parameters.
    pub fn params(&self) -> DeliveryParams {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        DeliveryParams {
            dwell_ms: ms(self.dwell),
            default_radius_m: self.default_radius_m,
            late_grace_ms: ms(self.late_grace),
            eta: EtaParams {
                speed: SpeedParams {
                    default_kmh: self.default_speed_kmh,
                    floor_kmh: self.floor_speed_kmh,
                    ..SpeedParams::default()
                },
                ..EtaParams::default()
            },
            ..DeliveryParams::default()
        }
    }
}

/// The domain status of a record's kind (`OTHER` moves nothing: it only carries fields).
pub fn status_of(kind: DeliveryKind) -> Status {
    match kind {
        DeliveryKind::Created | DeliveryKind::Other => Status::Created,
        DeliveryKind::Assigned => Status::Assigned,
        DeliveryKind::PickedUp => Status::PickedUp,
        DeliveryKind::InTransit => Status::InTransit,
        DeliveryKind::Arrived => Status::Arrived,
        DeliveryKind::Delivered => Status::Delivered,
        DeliveryKind::Failed => Status::Failed,
        DeliveryKind::Cancelled => Status::Cancelled,
    }
}

/// One tracked delivery: the value of its key in the partition's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tracked {
    vehicle_id: String,
    /// Event time of the update that named the vehicle (a newer update may reassign it).
    vehicle_at: i64,
    driver_id: Option<String>,
    delivery: Delivery,
    speed: SpeedEstimator,
    /// Late episodes so far (part of the late / on-time notification ids).
    late_episodes: u32,
    /// Processing time it became final; dropped `retain_final` later.
    final_at: Option<i64>,
}

impl Tracked {
    fn row(&self, delivery_id: &str) -> DeliveryRow {
        let d = &self.delivery;
        DeliveryRow {
            delivery_id: delivery_id.to_owned(),
            vehicle_id: self.vehicle_id.clone(),
            driver_id: self.driver_id.clone(),
            status: d.status.name().to_owned(),
            updated_at: d.updated_at,
            dest_lat: d.destination.map(|p| p.0),
            dest_lon: d.destination.map(|p| p.1),
            promised_by: d.promised_by,
            eta_ms: d.eta.map(|e| e.eta_ms),
            eta_confidence: d.eta.map(|e| e.confidence),
            remaining_m: d.eta.map(|e| e.remaining_m),
            late: d.late,
            last_lat: d.last_position.map(|p| p.1),
            last_lon: d.last_position.map(|p| p.2),
            delivered_at: d.delivered_at,
            completed_by: d.completed_by.map(|b| {
                match b {
                    CompletedBy::Driver => "driver",
                    CompletedBy::Geofence => "geofence",
                }
                .to_owned()
            }),
        }
    }
}

/// Who is told, and how.
#[derive(Debug, Clone)]
struct Notify {
    recipient: String,
    channel: Channel,
}

impl Notify {
    /// The notifications for `changes` of delivery `id` (ids derived from the change, never
    /// from processing time, so a replay repeats them byte for byte but the ingest time).
    fn render(
        &self,
        id: &str,
        t: &mut Tracked,
        changes: &[Change],
        source_event_id: &str,
        sent_time: Option<i64>,
        out: &mut Vec<Notification>,
    ) {
        let now = now_ms();
        let recipient = self
            .recipient
            .replace("{delivery_id}", id)
            .replace("{vehicle_id}", &t.vehicle_id)
            .replace("{driver_id}", t.driver_id.as_deref().unwrap_or(""));
        for c in changes {
            let (tag, severity, at, subject, body) = match *c {
                Change::Status { to, at, by, .. } => {
                    if to == Status::Created {
                        continue;
                    }
                    let how = match by {
                        Some(CompletedBy::Geofence) => " (vehicle stayed at the destination)",
                        Some(CompletedBy::Driver) => " (confirmed by the driver)",
                        None => "",
                    };
                    let sev = match to {
                        Status::Failed => Severity::Medium,
                        _ => Severity::Info,
                    };
                    (
                        format!("status:{}", to.name()),
                        sev,
                        at,
                        format!("delivery {id}: {}", to.name()),
                        format!(
                            "Delivery {id} on vehicle {} is {}{how}.",
                            t.vehicle_id,
                            to.name()
                        ),
                    )
                }
                Change::Late {
                    eta_ms,
                    promised_by,
                } => {
                    t.late_episodes += 1;
                    (
                        format!("late:{promised_by}:{}", t.late_episodes),
                        Severity::Medium,
                        t.delivery.updated_at,
                        format!("delivery {id}: late"),
                        format!(
                            "Delivery {id} on vehicle {} is expected {} min after the promised time (ETA {eta_ms}, promised {promised_by}).",
                            t.vehicle_id,
                            (eta_ms - promised_by) / 60_000
                        ),
                    )
                }
                Change::OnTime {
                    eta_ms,
                    promised_by,
                } => (
                    format!("on_time:{promised_by}:{}", t.late_episodes),
                    Severity::Info,
                    t.delivery.updated_at,
                    format!("delivery {id}: back on time"),
                    format!(
                        "Delivery {id} on vehicle {} is expected on time again (ETA {eta_ms}, promised {promised_by}).",
                        t.vehicle_id
                    ),
                ),
                Change::Overdue { promised_by } => (
                    format!("overdue:{promised_by}"),
                    Severity::High,
                    t.delivery.updated_at,
                    format!("delivery {id}: overdue"),
                    format!(
                        "Delivery {id} on vehicle {} was promised by {promised_by} and is not delivered.",
                        t.vehicle_id
                    ),
                ),
            };
            let kind = tag.split(':').next().unwrap_or("status").to_owned();
            out.push(Notification {
                event_id: ids::derived_id(&["delivery", id, &tag, &recipient]),
                recipient: recipient.clone(),
                channel: self.channel,
                vehicle_id: t.vehicle_id.clone(),
                severity,
                subject,
                body,
                source_event_id: source_event_id.to_owned(),
                source_kind: format!("delivery.{kind}"),
                event_time: at,
                ingest_time: now,
                sent_time,
            });
        }
    }
}

/// The processor.
pub struct DeliveriesProcessor<S> {
    cfg: DeliveriesConfig,
    params: DeliveryParams,
    store: S,
    profiles: Table<ProfileEntry>,
    notify: Notify,
    notifications: (Arc<str>, Encoder<Notification>),
    /// Rows changed since the last flush (the latest value of each).
    rows: HashMap<String, DeliveryRow>,
    /// The tick being run (the runtime calls every partition with the same time).
    tick_now: i64,
    /// Whether this tick polls positions (`position_interval` since the last poll).
    poll_due: bool,
    last_poll_ms: i64,
    /// Positions read in this tick (a vehicle may carry deliveries of several partitions).
    polled: HashMap<String, Option<VehicleState>>,
    staged: Vec<Notification>,
    positions: Counter,
    changes: Counter,
}

impl<S> std::fmt::Debug for DeliveriesProcessor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveriesProcessor")
            .field("unwritten_rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl<S: StateStore> DeliveriesProcessor<S> {
    /// Wires the processor.
    pub fn new(
        cfg: &DeliveriesConfig,
        store: S,
        profiles: Table<ProfileEntry>,
        notifications: Encoder<Notification>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            params: cfg.params(),
            store,
            profiles,
            notify: Notify {
                recipient: cfg.recipient.clone(),
                channel: Channel::parse(&cfg.channel).unwrap_or(Channel::Webhook),
            },
            notifications: (Arc::from(cfg.notifications_topic.as_str()), notifications),
            rows: HashMap::new(),
            tick_now: i64::MIN,
            poll_due: false,
            last_poll_ms: 0,
            polled: HashMap::new(),
            staged: Vec::new(),
            positions: metrics.records("vehicle_state", "positions_applied"),
            changes: metrics.records(&cfg.notifications_topic, "delivery_changes"),
            cfg: cfg.clone(),
        }
    }

    /// Stages the notifications rendered so far.
    fn flush_staged(&mut self, out: &mut Outputs) -> Result<(), ProcessError> {
        for n in self.staged.drain(..) {
            self.changes.inc();
            out.push(&self.notifications.0, &self.notifications.1, &n)?;
        }
        Ok(())
    }

    /// Reads the newest position of every vehicle carrying an open delivery of `state`
    /// (once per tick across partitions) and applies it.
    async fn poll_positions(
        &mut self,
        now: i64,
        state: &mut State<Tracked>,
    ) -> Result<(), ProcessError> {
        let mut wanted: Vec<(String, String)> = state
            .iter()
            .filter(|(_, t)| !t.delivery.status.is_final())
            .map(|(id, t)| (id.to_owned(), t.vehicle_id.clone()))
            .collect();
        wanted.sort_unstable();
        for (_, v) in &wanted {
            if self.polled.contains_key(v) {
                continue;
            }
            let s = self
                .store
                .vehicle_state(v, now)
                .await
                .map_err(|e| ProcessError::Transient(format!("reading vehicle_state: {e}")))?;
            self.polled.insert(v.clone(), s);
        }
        for (id, v) in wanted {
            let Some(Some(s)) = self.polled.get(&v) else {
                continue;
            };
            let fresh = state.get(&id).is_some_and(|t| {
                t.delivery
                    .last_position
                    .is_none_or(|(lt, _, _)| s.event_time > lt)
            });
            if !fresh {
                continue;
            }
            let Some(t) = state.get_mut(&id) else {
                continue;
            };
            if let Some(kmh) = s.speed_kmh {
                t.speed.observe(s.event_time, kmh, &self.params.eta.speed);
            }
            let entry = self.profiles.get(&t.vehicle_id);
            let route = entry.as_ref().and_then(|e| e.profile.route.as_ref());
            let changes =
                t.delivery
                    .observe(s.event_time, (s.lat, s.lon), route, &t.speed, &self.params);
            self.positions.inc();
            if t.delivery.status.is_final() {
                t.final_at.get_or_insert(now);
            }
            self.notify
                .render(&id, t, &changes, &s.event_id, None, &mut self.staged);
            self.rows.insert(id.clone(), t.row(&id));
        }
        Ok(())
    }
}

impl<S: StateStore> StatefulProcessor for DeliveriesProcessor<S> {
    type Input = DeliveryEvent;
    type State = Tracked;

    async fn process(
        &mut self,
        input: &Input<'_, DeliveryEvent>,
        state: &mut State<Tracked>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        if r.delivery_id.trim().is_empty() || r.vehicle_id.trim().is_empty() {
            return Err(ProcessError::poison(
                "missing_field",
                "delivery_id and vehicle_id are required",
            ));
        }
        let pos = |p: &fleet_schemas::Position| p.is_valid().then_some((p.lat, p.lon));
        let update = Update {
            status: status_of(r.kind),
            event_time: r.event_time,
            destination: r.destination.as_ref().and_then(pos),
            radius_m: r.destination_radius_m,
            promised_by: r.promised_by,
            position: r.position.as_ref().and_then(pos),
        };
        let entry = self.profiles.get(&r.vehicle_id);
        let route = entry.as_ref().and_then(|e| e.profile.route.as_ref());
        let now = now_ms();
        let params = self.params;
        if let Some(t) = state.get(&r.delivery_id)
            && t.vehicle_id != r.vehicle_id
            && r.reassigned_by.is_none()
        {
            // A delivery belongs to its vehicle (and so its customer): another vehicle's
            // driver may not move it; only a dispatch client may reassign it.
            return Err(ProcessError::poison(
                "delivery_vehicle_mismatch",
                format!(
                    "delivery {:?} belongs to vehicle {:?}; an update from vehicle {:?} needs a dispatch client to reassign it",
                    r.delivery_id, t.vehicle_id, r.vehicle_id
                ),
            ));
        }
        let (t, mut changes) = match state.get_mut(&r.delivery_id) {
            Some(t) => {
                let changes = t.delivery.apply(&update);
                (t, changes)
            }
            None => {
                let (delivery, changes) = Delivery::new(&update);
                let t = state.get_or_insert_with(&r.delivery_id, || Tracked {
                    vehicle_id: r.vehicle_id.clone(),
                    vehicle_at: r.event_time,
                    driver_id: None,
                    delivery,
                    speed: SpeedEstimator::default(),
                    late_episodes: 0,
                    final_at: None,
                });
                (t, changes)
            }
        };
        if r.event_time >= t.vehicle_at && t.vehicle_id != r.vehicle_id {
            // Reassigned to another vehicle: its positions and speeds are what count now.
            t.vehicle_id.clone_from(&r.vehicle_id);
            t.speed = SpeedEstimator::default();
        }
        t.vehicle_at = t.vehicle_at.max(r.event_time);
        if r.driver_id.is_some() {
            t.driver_id.clone_from(&r.driver_id);
        }
        if let Some(p) = update.position {
            changes.extend(
                t.delivery
                    .observe(r.event_time, p, route, &t.speed, &params),
            );
        }
        if t.delivery.status.is_final() {
            t.final_at.get_or_insert(now);
        }
        let sent = r.sent_time.or(Some(r.event_time));
        self.notify.render(
            &r.delivery_id,
            t,
            &changes,
            &r.event_id,
            sent,
            &mut self.staged,
        );
        self.rows
            .insert(r.delivery_id.clone(), t.row(&r.delivery_id));
        self.flush_staged(out)
    }

    async fn on_tick(
        &mut self,
        now: i64,
        _topic: &str,
        _partition: i32,
        state: &mut State<Tracked>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        if now != self.tick_now {
            self.tick_now = now;
            self.polled.clear();
            self.poll_due =
                now - self.last_poll_ms >= self.cfg.position_interval.as_millis() as i64;
            if self.poll_due {
                self.last_poll_ms = now;
            }
        }
        if self.poll_due {
            self.poll_positions(now, state).await?;
            self.flush_staged(out)?;
        }
        let retain = self.cfg.retain_final.as_millis() as i64;
        state.retain(|_, t, _| t.final_at.is_none_or(|at| now - at < retain));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ProcessError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<DeliveryRow> = self.rows.values().cloned().collect();
        self.store
            .put_deliveries(&rows)
            .await
            .map_err(|e| ProcessError::Transient(format!("writing deliveries: {e}")))?;
        self.rows.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
