//! # emergency-processor: the fast lane
//!
//! ```text
//! fleet.emergencies ─> record incident (state store, once per incident id)
//!                   ─> severity policy (fleet_domain::incident)
//!                   ─> fleet.notifications  (operations dashboard; owner; authorities)
//!                   ─> fleet.commands       (start_camera, for high and critical)
//! ```
//!
//! Inputs: [`EmergencyEvent`]s (from `mqtt-bridge`, and from the anomaly processor as
//! `CRITICAL_ANOMALY`). Outputs: [`Notification`]s keyed by recipient, [`DeviceCommand`]s keyed
//! by vehicle, and the `incidents` table (plus its by-vehicle lookup, which is how a vehicle is
//! known to be in an open incident).
//!
//! ## Delivery guarantee
//! The processor runs on the state runtime ([`fleet_runtime::task`]). Its state is the set of
//! incidents it handled, keyed by [`incident_id`]: the emergency's `event_id` scoped to its
//! vehicle and kind (a device's `eventId` is only unique per device: firmware that restarts
//! its counter, or two vehicles using the same id, must not make one vehicle's panic a replay
//! of another's). An emergency whose incident is in the state (the bridge re-sent it) produces
//! nothing; incidents are remembered for `app.dedupe_window` (7 days).
//!
//! * `runner.processing_guarantee = "exactly_once"`: notifications, commands, the handled
//!   incidents and the input offsets commit in one Kafka transaction: a `read_committed`
//!   reader (the notifier) sees each notification once. The commit interval is 20 ms unless
//!   configured (the fast lane's latency: outputs are visible at the commit).
//! * `at_least_once` (the default): outputs are produced at once; a crash repeats those since
//!   the last commit with the same deterministic `event_id`s (derived from the incident id
//!   and the recipient), which the notifier uses as its idempotency key.
//!
//! The `incidents` table row is written (an idempotent insert) before the outputs are staged,
//! and marked `notified` after the commit that made them durable. A crash between the two
//! leaves a row unmarked until the emergency is handled again; an aborted batch may mark its
//! incidents before they are produced again. The table is a view for people and the API: the
//! state decides what is a duplicate.
//!
//! ## Latency
//! `main` uses the latency producer profile (linger 0), a short consumer fetch wait
//! (`kafka.fetch_wait` = 25 ms unless configured) and a short commit interval; the only other
//! work on the path is one write of the state store.
//!
//! Recipients: the vehicle's profile (`fleet.vehicle-profiles`, read as a table) names its OWNER
//! and AUTHORITY contacts with their channels; for a vehicle without such contacts the
//! configured `owner_recipient` (may contain `{vehicle_id}`) and `authorities_recipient` are
//! used. The operations dashboard (`operations_recipient`, log channel) is told of every incident.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::incident::{Cause, Level, Policy, Response};
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, State, StatefulProcessor, Table};
use fleet_schemas::{
    Channel, CommandKind, ContactRole, DeviceCommand, EmergencyEvent, EmergencyKind, Encoder,
    Notification, Severity, VehicleProfile, ids,
};
use fleet_state::{Incident, StateStore};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

fleet_runtime::config_section! {
    /// emergency-processor settings.
    pub struct EmergencyConfig {
        /// Topic of EmergencyEvent records.
        pub input_topic: String = "fleet.emergencies".to_owned(),
        /// Topic for Notification records.
        pub notifications_topic: String = "fleet.notifications".to_owned(),
        /// Topic for DeviceCommand records.
        pub commands_topic: String = "fleet.commands".to_owned(),
        /// State store URL: sqlite://path (embedded) or scylla://host:port/keyspace.
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// Topic of VehicleProfile records, read as a table for contacts ("" = configured recipients only).
        pub profiles_topic: String = "fleet.vehicle-profiles".to_owned(),
        /// Recipient of the owner's notification; `{vehicle_id}` is replaced.
        pub owner_recipient: String = "owner:{vehicle_id}".to_owned(),
        /// Recipient of the authorities' notification.
        pub authorities_recipient: String = "authorities".to_owned(),
        /// Recipient of the operations dashboard's notification (every incident).
        pub operations_recipient: String = "operations".to_owned(),
        /// Channel of owner and authority notifications: log, webhook, email or sms.
        pub channel: String = "webhook".to_owned(),
        /// From this level the owner is notified: info, low, medium, high, critical.
        pub owner_from: String = "medium".to_owned(),
        /// From this level the authorities are notified.
        pub authorities_from: String = "high".to_owned(),
        /// From this level the vehicle is told to start its camera.
        pub camera_from: String = "high".to_owned(),
        /// How long the camera records.
        #[serde(with = "humantime_serde")]
        pub camera_duration: Duration = Duration::from_secs(300),
        /// A command not delivered within this time is dropped by the bridge.
        #[serde(with = "humantime_serde")]
        pub command_ttl: Duration = Duration::from_secs(600),
        /// How long a handled incident is remembered (a re-sent emergency within it produces nothing).
        #[serde(with = "humantime_serde")]
        pub dedupe_window: Duration = Duration::from_secs(7 * 24 * 3600),
    }
    validate(c) {
        for (k, v) in [("owner_from", &c.owner_from), ("authorities_from", &c.authorities_from), ("camera_from", &c.camera_from)] {
            if Level::parse(v).is_none() {
                return Err(fleet_runtime::Error::Config(format!("app.{k} {v:?}: use info, low, medium, high or critical")));
            }
        }
        if Channel::parse(&c.channel).is_none() {
            return Err(fleet_runtime::Error::Config(format!("app.channel {:?}: use log, webhook, email or sms", c.channel)));
        }
        Ok(())
    }
}

fn cause(k: EmergencyKind) -> Cause {
    match k {
        EmergencyKind::PanicButton => Cause::PanicButton,
        EmergencyKind::Crash => Cause::Crash,
        EmergencyKind::CriticalAnomaly => Cause::CriticalAnomaly,
        EmergencyKind::Other => Cause::Other,
    }
}

fn kind_name(k: EmergencyKind) -> &'static str {
    match k {
        EmergencyKind::PanicButton => "PANIC_BUTTON",
        EmergencyKind::Crash => "CRASH",
        EmergencyKind::CriticalAnomaly => "CRITICAL_ANOMALY",
        EmergencyKind::Other => "OTHER",
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "INFO",
        Severity::Low => "LOW",
        Severity::Medium => "MEDIUM",
        Severity::High => "HIGH",
        Severity::Critical => "CRITICAL",
    }
}

/// The fast-lane processor.
pub struct Emergency<S> {
    policy: Policy,
    cfg: EmergencyConfig,
    channel: Channel,
    store: S,
    profiles: Table<VehicleProfile>,
    notifications: (Arc<str>, Encoder<Notification>),
    commands: (Arc<str>, Encoder<DeviceCommand>),
    /// Incidents handled since the last commit (marked notified once it is done).
    unconfirmed: Vec<String>,
    duplicates: Counter,
    to_incident: Histogram,
}

impl<S> std::fmt::Debug for Emergency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emergency")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: StateStore> Emergency<S> {
    /// Wires the processor; `profiles` supplies per-vehicle contacts.
    pub fn new(
        cfg: &EmergencyConfig,
        store: S,
        profiles: Table<VehicleProfile>,
        notifications: Encoder<Notification>,
        commands: Encoder<DeviceCommand>,
        metrics: &Metrics,
    ) -> Self {
        let policy = Policy {
            owner_from: Level::parse(&cfg.owner_from).unwrap_or(Level::Medium),
            authorities_from: Level::parse(&cfg.authorities_from).unwrap_or(Level::High),
            camera_from: Level::parse(&cfg.camera_from).unwrap_or(Level::High),
            ..Policy::default()
        };
        Self {
            policy,
            channel: Channel::parse(&cfg.channel).unwrap_or(Channel::Webhook),
            cfg: cfg.clone(),
            store,
            profiles,
            notifications: (Arc::from(cfg.notifications_topic.as_str()), notifications),
            commands: (Arc::from(cfg.commands_topic.as_str()), commands),
            unconfirmed: Vec::new(),
            duplicates: metrics.records(&cfg.input_topic, "duplicate"),
            to_incident: metrics.latency("ingest_to_incident"),
        }
    }

    fn notification(
        &self,
        e: &EmergencyEvent,
        response: &Response,
        recipient: String,
        channel: Channel,
        now: i64,
    ) -> Notification {
        let kind = kind_name(e.kind);
        let severity = Severity::from(response.level);
        let place = e
            .position
            .map(|p| format!(" at {:.5},{:.5}", p.lat, p.lon))
            .unwrap_or_default();
        let mut body = format!(
            "Vehicle {} reported {kind} ({}){place} at {} ms since the epoch.",
            e.vehicle_id,
            severity_name(severity),
            e.event_time
        );
        if let Some(d) = &e.description {
            body.push(' ');
            body.push_str(d);
        }
        if response.start_camera {
            body.push_str(" The camera was asked to start recording.");
        }
        Notification {
            event_id: ids::derived_id(&[&incident_id(e), &recipient]),
            recipient,
            channel,
            vehicle_id: e.vehicle_id.clone(),
            severity,
            subject: format!(
                "{kind}: vehicle {} ({})",
                e.vehicle_id,
                severity_name(severity)
            ),
            body,
            source_event_id: e.event_id.clone(),
            source_kind: format!("emergency.{kind}"),
            event_time: e.event_time,
            ingest_time: now,
            sent_time: e.sent_time,
        }
    }

    /// Stages the outputs of one emergency: the dashboard first, then the people, then the
    /// vehicle.
    fn stage(
        &self,
        e: &EmergencyEvent,
        response: &Response,
        now: i64,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let (ntopic, nenc) = &self.notifications;
        let mut recipients = vec![(self.cfg.operations_recipient.clone(), Channel::Log)];
        let profile = self.profiles.get(&e.vehicle_id);
        let contacts = |role: ContactRole| -> Vec<(String, Channel)> {
            profile
                .iter()
                .flat_map(|p| p.contacts.iter())
                .filter(|c| c.role == role)
                .map(|c| (c.address.clone(), c.channel))
                .collect()
        };
        if response.owner {
            let owners = contacts(ContactRole::Owner);
            if owners.is_empty() {
                recipients.push((
                    self.cfg
                        .owner_recipient
                        .replace("{vehicle_id}", &e.vehicle_id),
                    self.channel,
                ));
            } else {
                recipients.extend(owners);
            }
        }
        if response.authorities {
            let authorities = contacts(ContactRole::Authority);
            if authorities.is_empty() {
                recipients.push((self.cfg.authorities_recipient.clone(), self.channel));
            } else {
                recipients.extend(authorities);
            }
        }
        for (recipient, channel) in recipients {
            let n = self.notification(e, response, recipient, channel, now);
            out.push(ntopic, nenc, &n)?;
        }
        if response.start_camera {
            let (ctopic, cenc) = &self.commands;
            let cmd = DeviceCommand {
                event_id: ids::derived_id(&[&incident_id(e), "start_camera"]),
                vehicle_id: e.vehicle_id.clone(),
                command: CommandKind::StartCamera,
                params: BTreeMap::from([(
                    "duration_s".to_owned(),
                    self.cfg.camera_duration.as_secs().to_string(),
                )]),
                reason: format!("{} {}", kind_name(e.kind), e.event_id),
                event_time: e.event_time,
                ingest_time: now,
                expires_at: Some(now + self.cfg.command_ttl.as_millis() as i64),
            };
            out.push(ctopic, cenc, &cmd)?;
        }
        Ok(())
    }
}

/// What the state keeps of a handled incident (the key is its [`incident_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    /// Processing time it was handled (forgotten `dedupe_window` later).
    pub at: i64,
}

/// The key of an emergency's incident: its `event_id` scoped to the vehicle and the kind, so
/// that ids repeated across devices (or a device's restarted counter with another kind) never
/// collide. Stable: a re-sent emergency maps to the same incident.
pub fn incident_id(e: &EmergencyEvent) -> String {
    ids::derived_id(&["incident", &e.vehicle_id, kind_name(e.kind), &e.event_id])
}

impl<S: StateStore> StatefulProcessor for Emergency<S> {
    type Input = EmergencyEvent;
    type State = Handled;

    async fn process(
        &mut self,
        input: &Input<'_, EmergencyEvent>,
        state: &mut State<Handled>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let e = &input.record;
        if e.vehicle_id.is_empty() {
            return Err(ProcessError::poison(
                "missing_vehicle_id",
                "emergency without a vehicle id",
            ));
        }
        let now = now_ms();
        let id = incident_id(e);
        if state.get(&id).is_some() {
            // Already handled: a re-sent or replayed emergency.
            self.duplicates.inc();
            return Ok(());
        }
        let response = self.policy.respond(cause(e.kind), Level::from(e.severity));
        let incident = Incident {
            incident_id: id.clone(),
            vehicle_id: e.vehicle_id.clone(),
            kind: kind_name(e.kind).to_owned(),
            severity: severity_name(Severity::from(response.level)).to_owned(),
            status: "open".to_owned(),
            event_time: e.event_time,
            recorded_at: now,
            lat: e.position.map(|p| p.lat),
            lon: e.position.map(|p| p.lon),
            description: e.description.clone(),
            notified_at: None,
        };
        let existing = self
            .store
            .record_incident(&incident)
            .await
            .map_err(|err| ProcessError::Transient(format!("recording incident: {err}")))?;
        self.to_incident
            .observe(((now - e.ingest_time).max(0) as f64) / 1000.0);
        if existing.is_none() {
            tracing::info!(incident = %id, event = %e.event_id, vehicle = %e.vehicle_id, kind = kind_name(e.kind), level = ?response.level, "incident recorded");
        }
        self.stage(e, &response, now, out)?;
        state.insert(&id, Handled { at: now });
        self.unconfirmed.push(id);
        Ok(())
    }

    async fn on_tick(
        &mut self,
        now: i64,
        _topic: &str,
        _partition: i32,
        state: &mut State<Handled>,
        _out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let window = i64::try_from(self.cfg.dedupe_window.as_millis()).unwrap_or(i64::MAX);
        state.retain(|_, h, _| now.saturating_sub(h.at) < window);
        Ok(())
    }

    async fn committed(&mut self) {
        if self.unconfirmed.is_empty() {
            return;
        }
        match self.store.mark_notified(&self.unconfirmed, now_ms()).await {
            Ok(()) => self.unconfirmed.clear(),
            // Marked with the next commit.
            Err(err) => {
                tracing::warn!(error = %err, incidents = self.unconfirmed.len(), "marking incidents notified")
            }
        }
    }
}

#[cfg(test)]
mod tests;
