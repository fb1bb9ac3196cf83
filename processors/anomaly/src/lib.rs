//! # anomaly-processor
//!
//! ```text
//! fleet.telemetry ─> per-vehicle rules (fleet_domain::rules) ─> fleet.anomalies      (every RAISED / CLEARED)
//!        ▲                                                   ├─> fleet.emergencies  (CRITICAL raised: CRITICAL_ANOMALY)
//! fleet.vehicle-profiles (table: thresholds, route,          └─> fleet.notifications (raised at >= notify_from: the owner)
//!                         geofences, contacts)
//! ```
//!
//! Inputs: [`TelemetryReading`]s keyed by vehicle; the profiles table ([`fleet_runtime::Table`]
//! of [`VehicleProfile`]s; vehicles without one get the configured default thresholds).
//! Outputs: [`Anomaly`] records (one RAISED when a condition starts, one CLEARED when it ends),
//! [`EmergencyEvent`]s of kind `CRITICAL_ANOMALY` for critical ones (impact; route deviation
//! with abnormal speed), and owner [`Notification`]s for raised anomalies from a configurable
//! level. Device silence (offline) is judged against each partition's event-time watermark
//! (which follows processing time once the partition is idle), on every timer tick.
//!
//! ## Delivery guarantee: no lost and no repeated alert after a crash
//! * The rule state of every vehicle of a partition is snapshotted on a timer
//!   (`checkpoint_interval`) together with the offset it covers, and the snapshot is written
//!   to the state store (`checkpoints` table) only once every output of every input it covers
//!   is acknowledged by Kafka ([`Processor::on_tick_durable`]).
//! * The offset committed for a partition never passes its last written snapshot
//!   ([`Processor::hold`]). After a crash the processor loads the snapshot, skips re-read
//!   inputs the snapshot already covers, and evaluates the rest: the rules are deterministic
//!   in event time, so it emits exactly the transitions the crashed instance had emitted (or
//!   would have) after the snapshot, with the same `event_id`s (derived from vehicle, rule,
//!   transition and the event time the episode started).
//! * Records emitted between the last snapshot and the crash are therefore produced again,
//!   as byte-identical records with the same `event_id` (at-least-once records, exactly-once
//!   alerts by id): downstream de-duplicates by `event_id` (the emergency processor records an
//!   incident once per id; the notifier's idempotency key is the notification id).
//!
//! ## Bounded state
//! A vehicle silent for `forget_after` (default 24 h, longer than `offline_after`, so it was
//! reported offline first) is forgotten: its rules leave memory and the snapshots, and it
//! starts afresh if it reports again (its old `offline` episode is then not CLEARED). Vehicles
//! without a profile are capped per partition (`max_unprofiled_vehicles`): readings of further
//! unknown ids are dead-lettered (`vehicle_limit`), so a client inventing ids cannot grow the
//! state without bound; vehicles with a profile are always admitted (operators create those).
//!
//! ## Rules and profiles
//! See [`fleet_domain::rules`] for each rule's raise/clear conditions. Profiles are published
//! with `fleetctl profiles load FILE`; a profile that does not validate goes to the dead-letter
//! topic and the previous version stays in force.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::Watermark;
use fleet_domain::incident::Level;
use fleet_domain::rules::{
    Alert, Observation, Observed, Rule, Thresholds, Transition, VehicleRules,
};
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, Processor, Table};
use fleet_schemas::{
    Anomaly, AnomalyKind, AnomalyState, Channel, ContactRole, EmergencyEvent, EmergencyKind,
    Encoder, Notification, Position, Severity, TelemetryReading, ids,
};
use fleet_state::StateStore;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

pub use fleet_schemas::profile::{ProfileEntry, profile_entry};

fleet_runtime::config_section! {
    /// anomaly-processor settings.
    pub struct AnomalyConfig {
        /// Topic of TelemetryReading records.
        pub input_topic: String = "fleet.telemetry".to_owned(),
        /// Topic for Anomaly records.
        pub anomalies_topic: String = "fleet.anomalies".to_owned(),
        /// Topic for EmergencyEvent records (critical anomalies).
        pub emergencies_topic: String = "fleet.emergencies".to_owned(),
        /// Topic for Notification records.
        pub notifications_topic: String = "fleet.notifications".to_owned(),
        /// Topic of VehicleProfile records, read from the beginning as a table ("" = no profiles).
        pub profiles_topic: String = "fleet.vehicle-profiles".to_owned(),
        /// State store URL (rule snapshots): sqlite://path or scylla://host:port/keyspace.
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// How often the rule state of each partition is snapshotted (bounds the replay after a crash).
        #[serde(with = "humantime_serde")]
        pub checkpoint_interval: Duration = Duration::from_secs(5),
        /// How late a reading may be for the offline check's watermark.
        #[serde(with = "humantime_serde")]
        pub allowed_lateness: Duration = Duration::from_secs(10),
        /// After this long without input a partition's watermark follows processing time.
        #[serde(with = "humantime_serde")]
        pub idle_timeout: Duration = Duration::from_secs(60),
        /// How far ahead of its receive time (`ingest_time`) a reading's event time may move
        /// the partition's watermark (a fast device clock must not raise `offline` for others).
        #[serde(with = "humantime_serde")]
        pub max_clock_skew: Duration = Duration::from_secs(10),
        /// Default speed limit (km/h) for vehicles without a profile value.
        pub speed_limit_kmh: f64 = 90.0,
        /// Default lowest cargo temperature (°C) for vehicles without a profile value.
        pub cargo_temp_min_c: f64 = -30.0,
        /// Default highest cargo temperature (°C) for vehicles without a profile value.
        pub cargo_temp_max_c: f64 = 30.0,
        /// Default silence after which a device is offline.
        #[serde(with = "humantime_serde")]
        pub offline_after: Duration = Duration::from_secs(300),
        /// Default half-width of a planned route's corridor (metres).
        pub route_corridor_m: f64 = 500.0,
        /// How long a speed or temperature condition must last before it raises.
        #[serde(with = "humantime_serde")]
        pub sustain: Duration = Duration::from_secs(30),
        /// How long a stop outside planned stops may last.
        #[serde(with = "humantime_serde")]
        pub unplanned_stop_after: Duration = Duration::from_secs(900),
        /// Route deviation and abnormal speed this close in time escalate to a critical emergency.
        #[serde(with = "humantime_serde")]
        pub correlation_window: Duration = Duration::from_secs(300),
        /// A vehicle with no reading for this long (event time, against its partition's
        /// watermark) is forgotten: its rule state leaves memory and snapshots (it starts
        /// afresh if it reports again). Bounds the state of fleets whose vehicles come and go.
        #[serde(with = "humantime_serde")]
        pub forget_after: Duration = Duration::from_secs(24 * 3600),
        /// Most vehicles without a profile one partition keeps rule state for. Readings of
        /// further unprofiled vehicles are dead-lettered (`vehicle_limit`) until some are
        /// forgotten; vehicles with a profile are always admitted. Bounds the memory a client
        /// inventing vehicle ids (a dispatch token may report for any vehicle) can take.
        pub max_unprofiled_vehicles: usize = 100_000,
        /// Raised anomalies from this level notify the vehicle's owner: info, low, medium, high, critical or off.
        pub notify_from: String = "high".to_owned(),
        /// Owner recipient when the profile names none; `{vehicle_id}` is replaced.
        pub owner_recipient: String = "owner:{vehicle_id}".to_owned(),
        /// Channel for that default owner recipient: log, webhook, email or sms.
        pub channel: String = "webhook".to_owned(),
    }
    validate(c) {
        if notify_level(&c.notify_from).is_none() {
            return Err(fleet_runtime::Error::Config(format!("app.notify_from {:?}: use info, low, medium, high, critical or off", c.notify_from)));
        }
        if Channel::parse(&c.channel).is_none() {
            return Err(fleet_runtime::Error::Config(format!("app.channel {:?}: use log, webhook, email or sms", c.channel)));
        }
        if c.forget_after <= c.offline_after {
            return Err(fleet_runtime::Error::Config(format!("app.forget_after ({:?}) must be longer than app.offline_after ({:?}): a vehicle is forgotten only after it was reported offline", c.forget_after, c.offline_after)));
        }
        c.thresholds().validate().map_err(|e| fleet_runtime::Error::Config(format!("app: {e}")))?;
        Ok(())
    }
}

impl AnomalyConfig {
    /// The thresholds of a vehicle without a profile.
    pub fn thresholds(&self) -> Thresholds {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        Thresholds {
            speed_limit_kmh: self.speed_limit_kmh,
            cargo_temp_min_c: Some(self.cargo_temp_min_c),
            cargo_temp_max_c: Some(self.cargo_temp_max_c),
            offline_after_ms: ms(self.offline_after),
            route_corridor_m: self.route_corridor_m,
            cargo_temp_after_ms: ms(self.sustain),
            overspeed_after_ms: ms(self.sustain),
            route_after_ms: ms(self.sustain),
            unplanned_stop_after_ms: ms(self.unplanned_stop_after),
            correlation_window_ms: ms(self.correlation_window),
            ..Thresholds::default()
        }
    }
}

/// `Some(None)` = off.
fn notify_level(s: &str) -> Option<Option<Level>> {
    if s.eq_ignore_ascii_case("off") {
        return Some(None);
    }
    Level::parse(s).map(Some)
}

fn kind(r: Rule) -> AnomalyKind {
    match r {
        Rule::CargoTemperature => AnomalyKind::CargoTemperature,
        Rule::Overspeed => AnomalyKind::Overspeed,
        Rule::HarshBraking => AnomalyKind::HarshBraking,
        Rule::Impact => AnomalyKind::Impact,
        Rule::Offline => AnomalyKind::Offline,
        Rule::UnplannedStop => AnomalyKind::UnplannedStop,
        Rule::GeofenceEnter => AnomalyKind::GeofenceEnter,
        Rule::GeofenceExit => AnomalyKind::GeofenceExit,
        Rule::RouteDeviation => AnomalyKind::RouteDeviation,
        Rule::StatisticalTemperature | Rule::StatisticalSpeed => AnomalyKind::Statistical,
        Rule::Correlated => AnomalyKind::Correlated,
    }
}

/// The `event_id` of a transition: the same whenever the same readings are evaluated.
pub fn anomaly_id(vehicle: &str, a: &Alert) -> String {
    ids::derived_id(&[
        vehicle,
        a.rule.name(),
        a.transition.name(),
        &a.since.to_string(),
        &a.subject,
    ])
}

/// The profile of `vehicle`, or the defaults.
fn lookup(
    profiles: &Table<ProfileEntry>,
    default: &Arc<ProfileEntry>,
    vehicle: &str,
) -> Arc<ProfileEntry> {
    profiles.get(vehicle).unwrap_or_else(|| default.clone())
}

/// What a partition's snapshot holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    watermark: Option<Watermark>,
    vehicles: HashMap<String, VehicleRules>,
    /// How many of `vehicles` have no profile (recounted on load and on every forget pass).
    #[serde(skip)]
    unprofiled: usize,
}

/// One input partition's state.
#[derive(Debug)]
struct Part {
    state: Snapshot,
    /// Inputs below this offset are covered by the loaded snapshot: skipped.
    skip_below: i64,
    /// The offset the committed position must not pass (last durable snapshot, or the first
    /// input of this run while there is none).
    hold: i64,
    /// Offset of the last input applied.
    last_offset: i64,
    /// Changed since the last snapshot.
    dirty: bool,
}

/// Snapshots taken at one tick: (partition, next offset, bytes).
type Pending = Vec<(i32, i64, Vec<u8>)>;

/// The processor.
pub struct AnomalyProcessor<S> {
    cfg: AnomalyConfig,
    group: String,
    store: S,
    profiles: Table<ProfileEntry>,
    default_profile: Arc<ProfileEntry>,
    notify_from: Option<Level>,
    channel: Channel,
    anomalies: (Arc<str>, Encoder<Anomaly>),
    emergencies: (Arc<str>, Encoder<EmergencyEvent>),
    notifications: (Arc<str>, Encoder<Notification>),
    parts: HashMap<i32, Part>,
    pending: VecDeque<Pending>,
    last_checkpoint_ms: i64,
    alerts: Vec<Alert>,
    out_of_order: Counter,
    replays: Counter,
    forgotten: Counter,
    raised: Counter,
}

impl<S> std::fmt::Debug for AnomalyProcessor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyProcessor")
            .field("group", &self.group)
            .field("partitions", &self.parts.len())
            .finish_non_exhaustive()
    }
}

/// The encoders of the three output topics.
#[derive(Debug)]
pub struct AnomalyEncoders {
    /// Anomaly records.
    pub anomalies: Encoder<Anomaly>,
    /// Emergency events.
    pub emergencies: Encoder<EmergencyEvent>,
    /// Notifications.
    pub notifications: Encoder<Notification>,
}

impl<S: StateStore> AnomalyProcessor<S> {
    /// Wires the processor; `group` names the consumer group (snapshots are kept per group).
    pub fn new(
        cfg: &AnomalyConfig,
        group: &str,
        store: S,
        profiles: Table<ProfileEntry>,
        encoders: AnomalyEncoders,
        metrics: &Metrics,
    ) -> Self {
        Self {
            group: group.to_owned(),
            store,
            profiles,
            default_profile: Arc::new(ProfileEntry {
                profile: fleet_domain::rules::Profile {
                    thresholds: cfg.thresholds(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            notify_from: notify_level(&cfg.notify_from).flatten(),
            channel: Channel::parse(&cfg.channel).unwrap_or(Channel::Webhook),
            anomalies: (Arc::from(cfg.anomalies_topic.as_str()), encoders.anomalies),
            emergencies: (
                Arc::from(cfg.emergencies_topic.as_str()),
                encoders.emergencies,
            ),
            notifications: (
                Arc::from(cfg.notifications_topic.as_str()),
                encoders.notifications,
            ),
            parts: HashMap::new(),
            pending: VecDeque::new(),
            last_checkpoint_ms: 0,
            alerts: Vec::new(),
            out_of_order: metrics.records(&cfg.input_topic, "out_of_order"),
            replays: metrics.records(&cfg.input_topic, "replay_skipped"),
            forgotten: metrics.records(&cfg.input_topic, "vehicle_forgotten"),
            raised: metrics.records(&cfg.anomalies_topic, "raised"),
            cfg: cfg.clone(),
        }
    }

    fn profile(&self, vehicle: &str) -> Arc<ProfileEntry> {
        lookup(&self.profiles, &self.default_profile, vehicle)
    }

    /// The partition's saved snapshot and the offset after the last input it covers.
    async fn load(&self, partition: i32) -> Result<Option<(Snapshot, i64)>, ProcessError> {
        let saved = self
            .store
            .load_checkpoint(&self.group, &self.cfg.input_topic, partition)
            .await
            .map_err(|e| ProcessError::Transient(format!("loading the rule snapshot: {e}")))?;
        let Some((next, bytes)) = saved else {
            return Ok(None);
        };
        let mut state: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
            ProcessError::Fatal(format!(
                "rule snapshot of partition {partition} does not decode: {e}"
            ))
        })?;
        state.unprofiled = state
            .vehicles
            .keys()
            .filter(|v| {
                Arc::ptr_eq(
                    &lookup(&self.profiles, &self.default_profile, v),
                    &self.default_profile,
                )
            })
            .count();
        // The time the process was down is not silence: restart the idle clock.
        if let Some(wm) = state.watermark.as_mut() {
            wm.observe(i64::MIN, now_ms());
        }
        tracing::info!(
            partition,
            next_offset = next,
            vehicles = state.vehicles.len(),
            "rule snapshot loaded"
        );
        Ok(Some((state, next)))
    }

    /// The partition's state, loading its snapshot the first time it is seen.
    async fn part(&mut self, partition: i32, offset: i64) -> Result<&mut Part, ProcessError> {
        if !self.parts.contains_key(&partition) {
            let (state, skip_below) = self
                .load(partition)
                .await?
                .unwrap_or((Snapshot::default(), i64::MIN));
            self.parts.insert(
                partition,
                Part {
                    state,
                    skip_below,
                    hold: skip_below.max(offset),
                    last_offset: offset - 1,
                    dirty: false,
                },
            );
        }
        Ok(self.parts.get_mut(&partition).expect("inserted above"))
    }

    /// Stages the outputs of `self.alerts` for `vehicle`.
    fn stage(
        &mut self,
        vehicle: &str,
        entry: &ProfileEntry,
        sent_time: Option<i64>,
        trigger: Option<&str>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let now = now_ms();
        for a in self.alerts.drain(..) {
            let id = anomaly_id(vehicle, &a);
            let sev = Severity::from(a.level);
            let message = a.message();
            let anomaly = Anomaly {
                event_id: id.clone(),
                vehicle_id: vehicle.to_owned(),
                event_time: a.at,
                ingest_time: now,
                sent_time,
                kind: kind(a.rule),
                state: match a.transition {
                    Transition::Raised => AnomalyState::Raised,
                    Transition::Cleared => AnomalyState::Cleared,
                },
                severity: sev,
                value: a.value,
                threshold: a.threshold,
                position: Some(Position::new(a.lat, a.lon)),
                message: message.clone(),
                trigger_event_id: trigger.map(str::to_owned),
            };
            out.push(&self.anomalies.0, &self.anomalies.1, &anomaly)?;
            if a.transition != Transition::Raised {
                continue;
            }
            self.raised.inc();
            if a.level == Level::Critical {
                let e = EmergencyEvent {
                    event_id: ids::derived_id(&["anomaly-emergency", &id]),
                    vehicle_id: vehicle.to_owned(),
                    event_time: a.at,
                    ingest_time: now,
                    sent_time,
                    kind: EmergencyKind::CriticalAnomaly,
                    severity: Severity::Critical,
                    position: Some(Position::new(a.lat, a.lon)),
                    description: Some(message.clone()),
                    source_anomaly_id: Some(id.clone()),
                    source: "anomaly-processor".to_owned(),
                };
                out.push(&self.emergencies.0, &self.emergencies.1, &e)?;
            }
            if self.notify_from.is_some_and(|from| a.level >= from) {
                let owners: Vec<(String, Channel)> = entry
                    .contacts
                    .iter()
                    .filter(|c| c.role == ContactRole::Owner)
                    .map(|c| (c.address.clone(), c.channel))
                    .collect();
                let recipients = if owners.is_empty() {
                    vec![(
                        self.cfg.owner_recipient.replace("{vehicle_id}", vehicle),
                        self.channel,
                    )]
                } else {
                    owners
                };
                for (recipient, channel) in recipients {
                    let n = Notification {
                        event_id: ids::derived_id(&[&id, &recipient]),
                        recipient,
                        channel,
                        vehicle_id: vehicle.to_owned(),
                        severity: sev,
                        subject: format!("{}: vehicle {vehicle}", a.rule.name()),
                        body: format!("Vehicle {vehicle}: {message}."),
                        source_event_id: id.clone(),
                        source_kind: format!("anomaly.{}", a.rule.name()),
                        event_time: a.at,
                        ingest_time: now,
                        sent_time,
                    };
                    out.push(&self.notifications.0, &self.notifications.1, &n)?;
                }
            }
        }
        Ok(())
    }
}

impl<S: StateStore> Processor for AnomalyProcessor<S> {
    type Input = TelemetryReading;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        if !r.position.is_valid() {
            return Err(ProcessError::poison(
                "invalid_position",
                format!("lat {} lon {} out of range", r.position.lat, r.position.lon),
            ));
        }
        let (lateness, idle, skew) = (
            self.cfg.allowed_lateness.as_millis() as i64,
            self.cfg.idle_timeout.as_millis() as i64,
            self.cfg.max_clock_skew.as_millis() as i64,
        );
        let entry = self.profile(&r.vehicle_id);
        let profiled = !Arc::ptr_eq(&entry, &self.default_profile);
        let max_unprofiled = self.cfg.max_unprofiled_vehicles;
        let mut alerts = std::mem::take(&mut self.alerts);
        alerts.clear();
        let part = self.part(input.partition, input.offset).await?;
        if input.offset < part.skip_below {
            self.alerts = alerts;
            self.replays.inc();
            return Ok(());
        }
        part.last_offset = input.offset;
        part.dirty = true;
        part.state
            .watermark
            .get_or_insert_with(|| Watermark::new(lateness, idle))
            .observe(
                fleet_domain::trusted_event_time(r.event_time, r.ingest_time, skew),
                now_ms(),
            );
        let obs = Observation {
            event_time: r.event_time,
            lat: r.position.lat,
            lon: r.position.lon,
            speed_kmh: r.speed_kmh,
            cargo_temp_c: r.cargo_temp_c,
            accel_mps2: r.accel_mps2,
        };
        let rules = match part.state.vehicles.get_mut(r.vehicle_id.as_str()) {
            Some(rules) => rules,
            None => {
                if profiled {
                    // A vehicle with a profile: always admitted.
                } else if part.state.unprofiled >= max_unprofiled {
                    // (The alert buffer is dropped with this rare path.)
                    return Err(ProcessError::poison(
                        "vehicle_limit",
                        format!(
                            "partition {} already keeps {} vehicles without a profile (app.max_unprofiled_vehicles); {:?} has none",
                            input.partition, part.state.unprofiled, r.vehicle_id
                        ),
                    ));
                } else {
                    part.state.unprofiled += 1;
                }
                part.state.vehicles.entry(r.vehicle_id.clone()).or_default()
            }
        };
        let observed = rules.observe(&entry.profile, &obs, &mut alerts);
        self.alerts = alerts;
        if observed == Observed::OutOfOrder {
            self.out_of_order.inc();
            return Ok(());
        }
        if self.alerts.is_empty() {
            return Ok(());
        }
        let sent = r.sent_time.or(Some(r.event_time));
        self.stage(&r.vehicle_id, &entry, sent, Some(&r.event_id), out)
    }

    async fn on_tick(&mut self, now: i64, out: &mut Outputs) -> Result<(), ProcessError> {
        // Silence: every vehicle against its partition's watermark.
        let mut raised: Vec<(String, Arc<ProfileEntry>, Vec<Alert>)> = Vec::new();
        let forget_after = self.cfg.forget_after.as_millis() as i64;
        for part in self.parts.values_mut() {
            let Some(wm) = part.state.watermark.as_mut().and_then(|w| w.current(now)) else {
                continue;
            };
            let (mut unprofiled, mut silenced) = (0, false);
            let before = part.state.vehicles.len();
            part.state.vehicles.retain(|vehicle, rules| {
                let entry = lookup(&self.profiles, &self.default_profile, vehicle);
                let mut alerts = Vec::new();
                if rules.check_silence(&entry.profile, wm, &mut alerts) {
                    silenced = true;
                    raised.push((vehicle.clone(), entry.clone(), alerts));
                }
                // Silent for `forget_after` (reported offline by now): forgotten.
                if rules
                    .last_event_time()
                    .is_some_and(|t| t < wm.saturating_sub(forget_after))
                {
                    return false;
                }
                unprofiled += usize::from(Arc::ptr_eq(&entry, &self.default_profile));
                true
            });
            let forgotten = before - part.state.vehicles.len();
            if forgotten > 0 {
                self.forgotten.inc_by(forgotten as u64);
            }
            part.dirty |= silenced || forgotten > 0;
            part.state.unprofiled = unprofiled;
        }
        for (vehicle, entry, alerts) in raised {
            self.alerts.clear();
            self.alerts.extend(alerts);
            self.stage(&vehicle, &entry, None, None, out)?;
        }
        // Snapshots, made durable once this tick's entry settles.
        let mut snaps = Pending::new();
        if now - self.last_checkpoint_ms >= self.cfg.checkpoint_interval.as_millis() as i64 {
            self.last_checkpoint_ms = now;
            for (p, part) in self.parts.iter_mut().filter(|(_, part)| part.dirty) {
                let bytes = serde_json::to_vec(&part.state)
                    .map_err(|e| ProcessError::Fatal(format!("rule snapshot: {e}")))?;
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
            // A partition revoked meanwhile: its new owner has its own snapshots.
            if !self.parts.contains_key(&p) {
                continue;
            }
            if let Err(e) = self
                .store
                .save_checkpoint(&self.group, &self.cfg.input_topic, p, next, &bytes)
                .await
            {
                // The committed offset stays held at the previous snapshot; the next one covers it.
                if let Some(part) = self.parts.get_mut(&p) {
                    part.dirty = true;
                }
                return Err(ProcessError::Transient(format!(
                    "saving the rule snapshot: {e}"
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

    fn on_revoke(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.parts.remove(p);
        }
    }

    /// Loads the snapshots of newly assigned partitions at once, so that the offline rule
    /// judges the vehicles of a partition that stays quiet after a restart.
    async fn on_assign(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        for (topic, p) in partitions {
            if *topic != self.cfg.input_topic || self.parts.contains_key(p) {
                continue;
            }
            if let Some((state, next)) = self.load(*p).await? {
                self.parts.insert(
                    *p,
                    Part {
                        state,
                        skip_below: next,
                        hold: next,
                        last_offset: next - 1,
                        dirty: false,
                    },
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
