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
//! ## Delivery guarantee
//! The processor runs on the state runtime ([`fleet_runtime::task`]). A partition's state
//! holds each vehicle's rules ([`Slot::Vehicle`]) and the partition's own clock
//! ([`Slot::Partition`]: its event-time watermark), checkpointed by the runtime with the input
//! offsets they cover and restored when the partition is assigned, so a partition that stays
//! quiet after a restart still judges its vehicles' silence. The time the process was down is
//! not silence: a restored watermark restarts its idle clock.
//! * `runner.processing_guarantee = "exactly_once"`: anomalies, emergencies, notifications,
//!   rule state and offsets commit in one Kafka transaction; a `read_committed` reader sees
//!   every transition once.
//! * `at_least_once` (the default): a crash repeats the outputs since the last commit, as
//!   byte-identical records with the same `event_id` (derived from vehicle, rule, transition
//!   and the event time the episode started; the rules are deterministic in event time):
//!   downstream de-duplicates by `event_id` (the emergency processor records an incident once
//!   per id; the notifier's idempotency key is the notification id).
//!
//! ## Bounded state
//! A vehicle silent for `forget_after` (default 24 h, longer than `offline_after`, so it was
//! reported offline first) is forgotten: its rules leave memory and the snapshots, and it
//! starts afresh if it reports again (its old `offline` episode is then not CLEARED); its key
//! is removed from the checkpoints. Vehicles
//! without a profile are capped per partition (`max_unprofiled_vehicles`): readings of further
//! unknown ids are dead-lettered (`vehicle_limit`), so a client inventing ids cannot grow the
//! state without bound; vehicles with a profile are always admitted (operators create those).
//!
//! ## Rules and profiles
//! See [`fleet_domain::rules`] for each rule's raise/clear conditions. Profiles are published
//! with `fleetctl profiles load FILE`; a profile that does not validate goes to the dead-letter
//! topic and the previous version stays in force.

use std::sync::Arc;
use std::time::Duration;

use fleet_domain::Watermark;
use fleet_domain::incident::Level;
use fleet_domain::rules::{
    Alert, Observation, Observed, Rule, Thresholds, Transition, VehicleRules,
};
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, State, StatefulProcessor, Table};
use fleet_schemas::{
    Anomaly, AnomalyKind, AnomalyState, Channel, ContactRole, EmergencyEvent, EmergencyKind,
    Encoder, Notification, Position, Severity, TelemetryReading, ids,
};
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
        /// watermark) is forgotten: its rule state leaves memory and checkpoints (it starts
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

/// The key of a partition's own entry in its state. Vehicle ids never start with NUL (such
/// readings are refused), so it cannot collide with one.
pub const PARTITION_KEY: &str = "\u{0}partition";

/// One entry of a partition's state: a vehicle's rules, or (under [`PARTITION_KEY`]) the
/// partition's clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Slot {
    /// The rule state of one vehicle.
    Vehicle(Box<VehicleRules>),
    /// The partition's own state.
    Partition(PartitionClock),
}

/// A partition's event-time clock and admission count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionClock {
    watermark: Watermark,
    /// How many vehicles of the partition have no profile (recounted on every tick).
    unprofiled: usize,
    /// False in a state restored by this process, until its idle clock is restarted.
    #[serde(skip)]
    live: bool,
}

impl PartitionClock {
    /// Restarts the idle clock of a restored watermark, once: the time the process was down
    /// (or the partition was elsewhere) is not silence.
    fn wake(&mut self, now: i64) {
        if !self.live {
            self.live = true;
            self.watermark.observe(i64::MIN, now);
        }
    }
}

/// The processor.
pub struct AnomalyProcessor {
    cfg: AnomalyConfig,
    profiles: Table<ProfileEntry>,
    default_profile: Arc<ProfileEntry>,
    notify_from: Option<Level>,
    channel: Channel,
    anomalies: (Arc<str>, Encoder<Anomaly>),
    emergencies: (Arc<str>, Encoder<EmergencyEvent>),
    notifications: (Arc<str>, Encoder<Notification>),
    alerts: Vec<Alert>,
    out_of_order: Counter,
    forgotten: Counter,
    raised: Counter,
}

impl std::fmt::Debug for AnomalyProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyProcessor")
            .field("notify_from", &self.notify_from)
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

impl AnomalyProcessor {
    /// Wires the processor.
    pub fn new(
        cfg: &AnomalyConfig,
        profiles: Table<ProfileEntry>,
        encoders: AnomalyEncoders,
        metrics: &Metrics,
    ) -> Self {
        Self {
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
            alerts: Vec::new(),
            out_of_order: metrics.records(&cfg.input_topic, "out_of_order"),
            forgotten: metrics.records(&cfg.input_topic, "vehicle_forgotten"),
            raised: metrics.records(&cfg.anomalies_topic, "raised"),
            cfg: cfg.clone(),
        }
    }

    fn profile(&self, vehicle: &str) -> Arc<ProfileEntry> {
        lookup(&self.profiles, &self.default_profile, vehicle)
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

impl StatefulProcessor for AnomalyProcessor {
    type Input = TelemetryReading;
    type State = Slot;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        state: &mut State<Slot>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        if !r.position.is_valid() {
            return Err(ProcessError::poison(
                "invalid_position",
                format!("lat {} lon {} out of range", r.position.lat, r.position.lon),
            ));
        }
        if r.vehicle_id.is_empty() || r.vehicle_id.starts_with('\0') {
            return Err(ProcessError::poison(
                "invalid_vehicle_id",
                format!("vehicle id {:?} is empty or starts with NUL", r.vehicle_id),
            ));
        }
        let (lateness, idle, skew) = (
            self.cfg.allowed_lateness.as_millis() as i64,
            self.cfg.idle_timeout.as_millis() as i64,
            self.cfg.max_clock_skew.as_millis() as i64,
        );
        let now = now_ms();
        let entry = self.profile(&r.vehicle_id);
        let profiled = !Arc::ptr_eq(&entry, &self.default_profile);
        let trusted = fleet_domain::trusted_event_time(r.event_time, r.ingest_time, skew);
        let unprofiled = match state.get_or_insert_with(PARTITION_KEY, || {
            Slot::Partition(PartitionClock {
                watermark: Watermark::new(lateness, idle),
                unprofiled: 0,
                live: true,
            })
        }) {
            Slot::Partition(c) => {
                c.wake(now);
                c.watermark.observe(trusted, now);
                c.unprofiled
            }
            Slot::Vehicle(_) => {
                return Err(ProcessError::Fatal(
                    "the partition key of the anomaly state holds a vehicle".into(),
                ));
            }
        };
        if state.get(&r.vehicle_id).is_none() {
            if profiled {
                // A vehicle with a profile: always admitted.
            } else if unprofiled >= self.cfg.max_unprofiled_vehicles {
                return Err(ProcessError::poison(
                    "vehicle_limit",
                    format!(
                        "partition {} already keeps {unprofiled} vehicles without a profile (app.max_unprofiled_vehicles); {:?} has none",
                        input.partition, r.vehicle_id
                    ),
                ));
            } else if let Some(Slot::Partition(c)) = state.get_mut(PARTITION_KEY) {
                c.unprofiled += 1;
            }
            state.insert(&r.vehicle_id, Slot::Vehicle(Box::default()));
        }
        let Some(Slot::Vehicle(rules)) = state.get_mut(&r.vehicle_id) else {
            return Err(ProcessError::Fatal(format!(
                "the anomaly state of vehicle {:?} is not a vehicle's",
                r.vehicle_id
            )));
        };
        let obs = Observation {
            event_time: r.event_time,
            lat: r.position.lat,
            lon: r.position.lon,
            speed_kmh: r.speed_kmh,
            cargo_temp_c: r.cargo_temp_c,
            accel_mps2: r.accel_mps2,
        };
        let mut alerts = std::mem::take(&mut self.alerts);
        alerts.clear();
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

    /// Silence: every vehicle of the partition against its watermark; vehicles silent for
    /// `forget_after` are forgotten.
    async fn on_tick(
        &mut self,
        now: i64,
        _topic: &str,
        _partition: i32,
        state: &mut State<Slot>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let Some(Slot::Partition(clock)) = state.get(PARTITION_KEY) else {
            return Ok(());
        };
        if !clock.live
            && let Some(Slot::Partition(c)) = state.get_mut(PARTITION_KEY)
        {
            c.wake(now);
        }
        let Some(Slot::Partition(clock)) = state.get(PARTITION_KEY) else {
            return Ok(());
        };
        // Advanced on a copy: written back only with other changes, so an idle partition's
        // tick changes nothing that needs a checkpoint.
        let mut advanced = clock.watermark.clone();
        let counted = clock.unprofiled;
        let Some(wm) = advanced.current(now) else {
            return Ok(());
        };
        let mut raised: Vec<(String, Arc<ProfileEntry>, Vec<Alert>)> = Vec::new();
        let forget_after = self.cfg.forget_after.as_millis() as i64;
        let (mut unprofiled, mut forgotten) = (0usize, 0u64);
        state.retain(|vehicle, slot, changed| {
            let Slot::Vehicle(rules) = slot else {
                return true;
            };
            let entry = lookup(&self.profiles, &self.default_profile, vehicle);
            let mut alerts = Vec::new();
            if rules.check_silence(&entry.profile, wm, &mut alerts) {
                *changed = true;
                raised.push((vehicle.to_owned(), entry.clone(), alerts));
            }
            // Silent for `forget_after` (reported offline by now): forgotten.
            if rules
                .last_event_time()
                .is_some_and(|t| t < wm.saturating_sub(forget_after))
            {
                forgotten += 1;
                return false;
            }
            unprofiled += usize::from(Arc::ptr_eq(&entry, &self.default_profile));
            true
        });
        if forgotten > 0 {
            self.forgotten.inc_by(forgotten);
        }
        if (!raised.is_empty() || forgotten > 0 || unprofiled != counted)
            && let Some(Slot::Partition(c)) = state.get_mut(PARTITION_KEY)
        {
            c.watermark = advanced;
            c.unprofiled = unprofiled;
        }
        for (vehicle, entry, alerts) in raised {
            self.alerts.clear();
            self.alerts.extend(alerts);
            self.stage(&vehicle, &entry, None, None, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
