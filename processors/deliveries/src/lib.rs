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
//! ## Delivery guarantee: no lost and no repeated notification after a crash
//! As in `anomaly-processor`: every `checkpoint_interval` the state of every delivery of a
//! partition is snapshotted with the offset it covers; the rows of the `deliveries` table
//! are written (idempotent upserts) before the snapshot is taken, and the snapshot is saved
//! once every notification staged before it is acknowledged by Kafka. The committed offset
//! never passes the last saved snapshot ([`Processor::hold`]). After a crash the snapshot is
//! loaded **when the partition is assigned** (so open deliveries of a quiet partition keep
//! being tracked), re-read inputs it covers are skipped, and the rest re-evaluated. A
//! notification emitted after the last snapshot may be emitted again, with the same
//! `event_id` (derived from delivery, change and promised time / late episode, never from
//! processing time): the notifier's idempotency key de-duplicates it.
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::delivery::{Change, CompletedBy, Delivery, DeliveryParams, Status, Update};
use fleet_domain::eta::{EtaParams, SpeedEstimator, SpeedParams};
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, Processor, Table};
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
        /// State store URL (vehicle positions, deliveries table, snapshots).
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// How often the positions of vehicles with open deliveries are read from vehicle_state.
        #[serde(with = "humantime_serde")]
        pub position_interval: Duration = Duration::from_secs(5),
        /// How often the state of each partition is snapshotted (bounds the replay after a crash).
        #[serde(with = "humantime_serde")]
        pub checkpoint_interval: Duration = Duration::from_secs(5),
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

/// One tracked delivery (what a snapshot holds per delivery).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracked {
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
    /// The row changed since it was last written.
    #[serde(skip)]
    row_dirty: bool,
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

/// What a partition's snapshot holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    deliveries: HashMap<String, Tracked>,
}

/// One input partition's state.
#[derive(Debug)]
struct Part {
    state: Snapshot,
    /// Inputs below this offset are covered by the loaded snapshot: skipped.
    skip_below: i64,
    /// The committed offset must not pass this (last saved snapshot, or the first input of
    /// this run while there is none).
    hold: i64,
    /// Offset of the last input applied.
    last_offset: i64,
    /// Changed since the last snapshot.
    dirty: bool,
}

/// Snapshots taken at one tick: (partition, next offset, bytes).
type Pending = Vec<(i32, i64, Vec<u8>)>;

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
    group: String,
    store: S,
    profiles: Table<ProfileEntry>,
    notify: Notify,
    notifications: (Arc<str>, Encoder<Notification>),
    parts: HashMap<i32, Part>,
    pending: VecDeque<Pending>,
    last_checkpoint_ms: i64,
    last_poll_ms: i64,
    staged: Vec<Notification>,
    replays: Counter,
    positions: Counter,
    changes: Counter,
}

impl<S> std::fmt::Debug for DeliveriesProcessor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveriesProcessor")
            .field("group", &self.group)
            .field("partitions", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl<S: StateStore> DeliveriesProcessor<S> {
    /// Wires the processor; `group` names the consumer group (snapshots are kept per group).
    pub fn new(
        cfg: &DeliveriesConfig,
        group: &str,
        store: S,
        profiles: Table<ProfileEntry>,
        notifications: Encoder<Notification>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            params: cfg.params(),
            group: group.to_owned(),
            store,
            profiles,
            notify: Notify {
                recipient: cfg.recipient.clone(),
                channel: Channel::parse(&cfg.channel).unwrap_or(Channel::Webhook),
            },
            notifications: (Arc::from(cfg.notifications_topic.as_str()), notifications),
            parts: HashMap::new(),
            pending: VecDeque::new(),
            last_checkpoint_ms: 0,
            last_poll_ms: 0,
            staged: Vec::new(),
            replays: metrics.records(&cfg.input_topic, "replay_skipped"),
            positions: metrics.records("vehicle_state", "positions_applied"),
            changes: metrics.records(&cfg.notifications_topic, "delivery_changes"),
            cfg: cfg.clone(),
        }
    }

    /// The saved snapshot of `partition`, if any, as a partition state.
    async fn load(&self, partition: i32) -> Result<Option<Part>, ProcessError> {
        let saved = self
            .store
            .load_checkpoint(&self.group, &self.cfg.input_topic, partition)
            .await
            .map_err(|e| {
                ProcessError::Transient(format!("loading the deliveries snapshot: {e}"))
            })?;
        let Some((next, bytes)) = saved else {
            return Ok(None);
        };
        let mut state: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
            ProcessError::Fatal(format!(
                "deliveries snapshot of partition {partition} does not decode: {e}"
            ))
        })?;
        for t in state.deliveries.values_mut() {
            // Re-write the rows: the table may be behind the snapshot after a failed write.
            t.row_dirty = true;
        }
        tracing::info!(
            partition,
            next_offset = next,
            deliveries = state.deliveries.len(),
            "deliveries snapshot loaded"
        );
        Ok(Some(Part {
            state,
            skip_below: next,
            hold: next,
            last_offset: next - 1,
            dirty: false,
        }))
    }

    /// Makes sure the partition's state is there, loading its snapshot the first time.
    async fn ensure_part(&mut self, partition: i32, offset: i64) -> Result<(), ProcessError> {
        if !self.parts.contains_key(&partition) {
            let part = self.load(partition).await?.unwrap_or(Part {
                state: Snapshot::default(),
                skip_below: i64::MIN,
                hold: offset,
                last_offset: offset - 1,
                dirty: false,
            });
            self.parts.insert(partition, part);
        }
        Ok(())
    }

    /// Stages the notifications rendered so far.
    fn flush_staged(&mut self, out: &mut Outputs) -> Result<(), ProcessError> {
        for n in self.staged.drain(..) {
            self.changes.inc();
            out.push(&self.notifications.0, &self.notifications.1, &n)?;
        }
        Ok(())
    }

    /// Reads the newest position of every vehicle carrying an open delivery and applies it.
    async fn poll_positions(&mut self, now: i64) -> Result<(), ProcessError> {
        let mut wanted: Vec<String> = Vec::new();
        for part in self.parts.values() {
            for t in part.state.deliveries.values() {
                if !t.delivery.status.is_final() {
                    wanted.push(t.vehicle_id.clone());
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut positions: HashMap<String, VehicleState> = HashMap::with_capacity(wanted.len());
        for v in wanted {
            let state = self
                .store
                .vehicle_state(&v, now)
                .await
                .map_err(|e| ProcessError::Transient(format!("reading vehicle_state: {e}")))?;
            if let Some(s) = state {
                positions.insert(v, s);
            }
        }
        let (params, notify) = (&self.params, &self.notify);
        for part in self.parts.values_mut() {
            for (id, t) in part.state.deliveries.iter_mut() {
                if t.delivery.status.is_final() {
                    continue;
                }
                let Some(s) = positions.get(&t.vehicle_id) else {
                    continue;
                };
                if t.delivery
                    .last_position
                    .is_some_and(|(lt, _, _)| s.event_time <= lt)
                {
                    continue;
                }
                if let Some(kmh) = s.speed_kmh {
                    t.speed.observe(s.event_time, kmh, &params.eta.speed);
                }
                let entry = self.profiles.get(&t.vehicle_id);
                let route = entry.as_ref().and_then(|e| e.profile.route.as_ref());
                let changes =
                    t.delivery
                        .observe(s.event_time, (s.lat, s.lon), route, &t.speed, params);
                self.positions.inc();
                t.row_dirty = true;
                part.dirty = true;
                if t.delivery.status.is_final() {
                    t.final_at.get_or_insert(now);
                }
                notify.render(id, t, &changes, &s.event_id, None, &mut self.staged);
            }
        }
        Ok(())
    }

    /// Writes every changed row.
    async fn write_rows(&mut self) -> Result<(), ProcessError> {
        let rows: Vec<DeliveryRow> = self
            .parts
            .values()
            .flat_map(|p| p.state.deliveries.iter())
            .filter(|(_, t)| t.row_dirty)
            .map(|(id, t)| t.row(id))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.store
            .put_deliveries(&rows)
            .await
            .map_err(|e| ProcessError::Transient(format!("writing deliveries: {e}")))?;
        for part in self.parts.values_mut() {
            for t in part.state.deliveries.values_mut() {
                t.row_dirty = false;
            }
        }
        Ok(())
    }
}

impl<S: StateStore> Processor for DeliveriesProcessor<S> {
    type Input = DeliveryEvent;

    async fn process(
        &mut self,
        input: &Input<'_, DeliveryEvent>,
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
        self.ensure_part(input.partition, input.offset).await?;
        let part = self.parts.get_mut(&input.partition).expect("ensured above");
        if input.offset < part.skip_below {
            self.replays.inc();
            return Ok(());
        }
        if let Some(t) = part.state.deliveries.get(r.delivery_id.as_str())
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
        part.last_offset = input.offset;
        part.dirty = true;
        let (t, mut changes) = match part.state.deliveries.get_mut(r.delivery_id.as_str()) {
            Some(t) => {
                let changes = t.delivery.apply(&update);
                (t, changes)
            }
            None => {
                let (delivery, changes) = Delivery::new(&update);
                let t = part
                    .state
                    .deliveries
                    .entry(r.delivery_id.clone())
                    .or_insert(Tracked {
                        vehicle_id: r.vehicle_id.clone(),
                        vehicle_at: r.event_time,
                        driver_id: None,
                        delivery,
                        speed: SpeedEstimator::default(),
                        late_episodes: 0,
                        final_at: None,
                        row_dirty: true,
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
        t.row_dirty = true;
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
        self.flush_staged(out)
    }

    async fn on_tick(&mut self, now: i64, out: &mut Outputs) -> Result<(), ProcessError> {
        if now - self.last_poll_ms >= self.cfg.position_interval.as_millis() as i64 {
            self.last_poll_ms = now;
            self.poll_positions(now).await?;
            self.flush_staged(out)?;
        }
        // Rows first: a snapshot never claims more than the table shows.
        self.write_rows().await?;
        let retain = self.cfg.retain_final.as_millis() as i64;
        for part in self.parts.values_mut() {
            let before = part.state.deliveries.len();
            part.state
                .deliveries
                .retain(|_, t| t.final_at.is_none_or(|at| now - at < retain));
            if part.state.deliveries.len() != before {
                part.dirty = true;
            }
        }
        let mut snaps = Pending::new();
        if now - self.last_checkpoint_ms >= self.cfg.checkpoint_interval.as_millis() as i64 {
            self.last_checkpoint_ms = now;
            for (p, part) in self.parts.iter_mut().filter(|(_, part)| part.dirty) {
                let bytes = serde_json::to_vec(&part.state)
                    .map_err(|e| ProcessError::Fatal(format!("deliveries snapshot: {e}")))?;
                part.dirty = false;
                snaps.push((*p, part.last_offset + 1, bytes));
            }
        }
        self.pending.push_back(snaps);
        Ok(())
    }

    async fn on_tick_durable(&mut self) -> Result<(), ProcessError> {
        let Some(snaps) = self.pending.pop_front() else {
            return Ok(());
        };
        for (p, next, bytes) in snaps {
            if !self.parts.contains_key(&p) {
                continue;
            }
            if let Err(e) = self
                .store
                .save_checkpoint(&self.group, &self.cfg.input_topic, p, next, &bytes)
                .await
            {
                if let Some(part) = self.parts.get_mut(&p) {
                    part.dirty = true;
                }
                return Err(ProcessError::Transient(format!(
                    "saving the deliveries snapshot: {e}"
                )));
            }
            if let Some(part) = self.parts.get_mut(&p) {
                part.hold = part.hold.max(next);
            }
        }
        Ok(())
    }

    fn hold(&self, _topic: &str, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|p| p.hold)
    }

    async fn on_assign(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        for (topic, p) in partitions {
            if *topic != self.cfg.input_topic || self.parts.contains_key(p) {
                continue;
            }
            if let Some(part) = self.load(*p).await? {
                self.parts.insert(*p, part);
            }
        }
        Ok(())
    }

    fn on_revoke(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.parts.remove(p);
        }
    }
}

#[cfg(test)]
mod tests;
