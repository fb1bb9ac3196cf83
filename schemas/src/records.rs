//! Typed Rust records, one per `.avsc` file in `schemas/avro/`.
//!
//! Field names and types mirror the Avro schemas exactly (the `.avsc` files are the source of
//! truth; the round-trip tests in this crate fail when the two drift apart). Timestamps are
//! milliseconds since the Unix epoch (`timestamp-millis`), optional fields are `["null", T]`
//! unions with a `null` default, and enums carry a default symbol so that readers survive a new
//! symbol being added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A WGS84 position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Latitude in degrees, -90..90.
    pub lat: f64,
    /// Longitude in degrees, -180..180.
    pub lon: f64,
    /// Altitude above sea level in metres, if known.
    #[serde(default)]
    pub altitude_m: Option<f64>,
    /// Horizontal accuracy radius in metres, if known.
    #[serde(default)]
    pub accuracy_m: Option<f64>,
}

impl Position {
    /// A position with only latitude and longitude.
    pub fn new(lat: f64, lon: f64) -> Self {
        Self {
            lat,
            lon,
            altitude_m: None,
            accuracy_m: None,
        }
    }

    /// `Err` with a human-readable reason when latitude or longitude is not finite or out of
    /// range.
    pub fn check(&self) -> Result<(), String> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(format!("lat {} lon {} out of range", self.lat, self.lon))
        }
    }

    /// Whether latitude and longitude are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium: the owner is told.
    Medium,
    /// High: owner and authorities are told.
    High,
    /// Critical: the fast lane.
    Critical,
}

/// The domain's severity levels are the records' severities, one for one.
impl From<fleet_domain::incident::Level> for Severity {
    fn from(l: fleet_domain::incident::Level) -> Self {
        use fleet_domain::incident::Level;
        match l {
            Level::Info => Severity::Info,
            Level::Low => Severity::Low,
            Level::Medium => Severity::Medium,
            Level::High => Severity::High,
            Level::Critical => Severity::Critical,
        }
    }
}

impl From<Severity> for fleet_domain::incident::Level {
    fn from(s: Severity) -> Self {
        use fleet_domain::incident::Level;
        match s {
            Severity::Info => Level::Info,
            Severity::Low => Level::Low,
            Severity::Medium => Level::Medium,
            Severity::High => Level::High,
            Severity::Critical => Level::Critical,
        }
    }
}

/// One reading from a vehicle. Topic `fleet.telemetry`, key = `vehicle_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReading {
    /// UUID of this reading, for de-duplication.
    pub event_id: String,
    /// Vehicle identifier; the Kafka key.
    pub vehicle_id: String,
    /// Device time of the reading, ms since the epoch.
    pub event_time: i64,
    /// Pipeline acceptance time, ms since the epoch.
    pub ingest_time: i64,
    /// Device send time, ms since the epoch, if known.
    #[serde(default)]
    pub sent_time: Option<i64>,
    /// Where the vehicle was.
    pub position: Position,
    /// Ground speed, km/h.
    #[serde(default)]
    pub speed_kmh: Option<f64>,
    /// Heading, degrees from true north.
    #[serde(default)]
    pub heading_deg: Option<f64>,
    /// Cargo temperature, Celsius.
    #[serde(default)]
    pub cargo_temp_c: Option<f64>,
    /// Cargo door open.
    #[serde(default)]
    pub door_open: Option<bool>,
    /// Ignition on.
    #[serde(default)]
    pub ignition_on: Option<bool>,
    /// Longitudinal acceleration, m/s^2.
    #[serde(default)]
    pub accel_mps2: Option<f64>,
    /// Odometer, km.
    #[serde(default)]
    pub odometer_km: Option<f64>,
    /// Battery voltage, V.
    #[serde(default)]
    pub battery_v: Option<f64>,
    /// Camera recording.
    #[serde(default)]
    pub camera_active: Option<bool>,
    /// Which door the reading came through (mqtt, http, loadtest, ...).
    #[serde(default = "unknown")]
    pub source: String,
}

fn unknown() -> String {
    "unknown".to_owned()
}

/// Kind of emergency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmergencyKind {
    /// The driver pressed the panic button.
    PanicButton,
    /// The crash sensor fired.
    Crash,
    /// A critical anomaly escalated by the anomaly processor.
    CriticalAnomaly,
    /// Anything else.
    Other,
}

/// An emergency on the fast lane. Topic `fleet.emergencies`, key = `vehicle_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyEvent {
    /// UUID, for de-duplication.
    pub event_id: String,
    /// Vehicle identifier; the Kafka key.
    pub vehicle_id: String,
    /// When it happened, ms since the epoch.
    pub event_time: i64,
    /// Pipeline acceptance time, ms since the epoch.
    pub ingest_time: i64,
    /// Device send time, ms since the epoch, if known.
    #[serde(default)]
    pub sent_time: Option<i64>,
    /// What happened.
    pub kind: EmergencyKind,
    /// Reported severity.
    pub severity: Severity,
    /// Where, if known.
    #[serde(default)]
    pub position: Option<Position>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// For `CriticalAnomaly`: the anomaly's event id.
    #[serde(default)]
    pub source_anomaly_id: Option<String>,
    /// Producing component.
    #[serde(default = "unknown")]
    pub source: String,
}

/// Which rule or detector produced an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnomalyKind {
    /// Cargo temperature out of range.
    CargoTemperature,
    /// Speed above the limit.
    Overspeed,
    /// Hard deceleration.
    HarshBraking,
    /// Impact.
    Impact,
    /// Device silent.
    Offline,
    /// Stopped where no stop was planned.
    UnplannedStop,
    /// Entered a geofence.
    GeofenceEnter,
    /// Left a geofence.
    GeofenceExit,
    /// Off the planned route.
    RouteDeviation,
    /// Statistical outlier.
    Statistical,
    /// Several anomalies together.
    Correlated,
    /// Anything else.
    Other,
}

/// Anomaly transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnomalyState {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

/// A detector changed state for a vehicle. Topic `fleet.anomalies`, key = `vehicle_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Deterministic UUID of this transition.
    pub event_id: String,
    /// Vehicle identifier; the Kafka key.
    pub vehicle_id: String,
    /// Event time of the triggering reading.
    pub event_time: i64,
    /// Emission time.
    pub ingest_time: i64,
    /// Send time of the triggering reading.
    #[serde(default)]
    pub sent_time: Option<i64>,
    /// Rule or detector.
    pub kind: AnomalyKind,
    /// Raised or cleared.
    pub state: AnomalyState,
    /// Severity.
    pub severity: Severity,
    /// Observed value.
    #[serde(default)]
    pub value: Option<f64>,
    /// Threshold compared with.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Where, if known.
    #[serde(default)]
    pub position: Option<Position>,
    /// Explanation.
    #[serde(default)]
    pub message: String,
    /// Triggering reading's event id.
    #[serde(default)]
    pub trigger_event_id: Option<String>,
}

/// One vehicle's aggregates over one closed event-time window. Topic `fleet.telemetry-windows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// Deterministic UUID from vehicle and window bounds.
    pub event_id: String,
    /// Vehicle identifier; the Kafka key.
    pub vehicle_id: String,
    /// Inclusive window start.
    pub window_start: i64,
    /// Exclusive window end.
    pub window_end: i64,
    /// Event time of the last reading.
    pub event_time: i64,
    /// When the window was emitted.
    pub ingest_time: i64,
    /// Readings aggregated.
    pub count: i64,
    /// Mean speed, km/h.
    #[serde(default)]
    pub speed_avg_kmh: Option<f64>,
    /// Max speed, km/h.
    #[serde(default)]
    pub speed_max_kmh: Option<f64>,
    /// Min cargo temperature.
    #[serde(default)]
    pub cargo_temp_min_c: Option<f64>,
    /// Mean cargo temperature.
    #[serde(default)]
    pub cargo_temp_avg_c: Option<f64>,
    /// Max cargo temperature.
    #[serde(default)]
    pub cargo_temp_max_c: Option<f64>,
    /// Distance travelled, metres.
    #[serde(default)]
    pub distance_m: f64,
    /// Seconds moving.
    #[serde(default)]
    pub moving_s: f64,
    /// Seconds stationary.
    #[serde(default)]
    pub idle_s: f64,
    /// Earliest position.
    #[serde(default)]
    pub first_position: Option<Position>,
    /// Latest position.
    #[serde(default)]
    pub last_position: Option<Position>,
    /// Event time of the earliest reading.
    pub first_event_time: i64,
    /// Late readings for this window.
    #[serde(default)]
    pub late_records: i64,
}

/// Notification delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    /// Written to the notifier's log.
    Log,
    /// HTTP webhook.
    Webhook,
    /// E-mail.
    Email,
    /// Text message.
    Sms,
}

impl Channel {
    /// Parses a configuration value: `log`, `webhook`, `email` or `sms` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "log" => Some(Channel::Log),
            "webhook" => Some(Channel::Webhook),
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            _ => None,
        }
    }
}

/// A message for a person or a system. Topic `fleet.notifications`, key = `recipient`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Deterministic UUID from source event and recipient.
    pub event_id: String,
    /// Recipient; the Kafka key.
    pub recipient: String,
    /// Delivery channel.
    pub channel: Channel,
    /// Vehicle concerned.
    pub vehicle_id: String,
    /// Severity.
    pub severity: Severity,
    /// Short title.
    pub subject: String,
    /// Full text.
    pub body: String,
    /// Source event id.
    pub source_event_id: String,
    /// Source event kind, e.g. `emergency.PANIC_BUTTON`.
    pub source_kind: String,
    /// Source event time.
    pub event_time: i64,
    /// Creation time.
    pub ingest_time: i64,
    /// Device send time of the source event.
    #[serde(default)]
    pub sent_time: Option<i64>,
}

/// Command kind for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandKind {
    /// Start recording.
    StartCamera,
    /// Stop recording.
    StopCamera,
    /// Sound the alarm.
    SoundAlarm,
    /// Lock the cargo door.
    LockCargo,
    /// Unlock the cargo door.
    UnlockCargo,
    /// Liveness check.
    Ping,
    /// Anything else.
    Other,
}

/// A command for one vehicle. Topic `fleet.commands`, key = `vehicle_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCommand {
    /// Command UUID.
    pub event_id: String,
    /// Target vehicle; the Kafka key.
    pub vehicle_id: String,
    /// The command.
    pub command: CommandKind,
    /// Parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Cause's event time.
    pub event_time: i64,
    /// Issue time.
    pub ingest_time: i64,
    /// Not to be executed after this time.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// Delivery lifecycle step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryKind {
    /// Created.
    Created,
    /// Assigned to a vehicle.
    Assigned,
    /// Picked up.
    PickedUp,
    /// On the way.
    InTransit,
    /// Arrived at the destination.
    Arrived,
    /// Delivered.
    Delivered,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Anything else.
    Other,
}

/// A delivery update. Topic `fleet.deliveries`, key = `delivery_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    /// UUID, for de-duplication.
    pub event_id: String,
    /// Delivery identifier; the Kafka key.
    pub delivery_id: String,
    /// Vehicle carrying it.
    pub vehicle_id: String,
    /// Reporting driver.
    #[serde(default)]
    pub driver_id: Option<String>,
    /// Lifecycle step.
    pub kind: DeliveryKind,
    /// When it happened.
    pub event_time: i64,
    /// Acceptance time.
    pub ingest_time: i64,
    /// App send time.
    #[serde(default)]
    pub sent_time: Option<i64>,
    /// Driver position.
    #[serde(default)]
    pub position: Option<Position>,
    /// Destination.
    #[serde(default)]
    pub destination: Option<Position>,
    /// Destination geofence radius, metres.
    #[serde(default)]
    pub destination_radius_m: Option<f64>,
    /// Promised delivery time.
    #[serde(default)]
    pub promised_by: Option<i64>,
    /// Driver's note.
    #[serde(default)]
    pub note: Option<String>,
    /// The dispatch client that sent this update, set by the ingest edge (never from a
    /// payload); only such an update may move a delivery to another vehicle.
    #[serde(default)]
    pub reassigned_by: Option<String>,
}

/// A rejected input with its reason and original bytes. Topic `fleet.dlq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Deterministic UUID from the source position.
    pub event_id: String,
    /// Reason code (`decode_error`, `invalid_payload`, `late`, ...).
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub detail: String,
    /// Rejecting component.
    pub component: String,
    /// `kafka`, `mqtt` or `http`.
    #[serde(default)]
    pub source_system: String,
    /// Source topic or path.
    pub source_topic: String,
    /// Source partition.
    #[serde(default)]
    pub source_partition: Option<i32>,
    /// Source offset.
    #[serde(default)]
    pub source_offset: Option<i64>,
    /// Source key bytes.
    #[serde(default, with = "apache_avro::serde::bytes_opt")]
    pub source_key: Option<Vec<u8>>,
    /// Original payload bytes.
    #[serde(default, with = "apache_avro::serde::bytes_opt")]
    pub original: Option<Vec<u8>>,
    /// Input timestamp.
    pub event_time: i64,
    /// Dead-letter time.
    pub ingest_time: i64,
    /// Size of the whole original payload, bytes.
    #[serde(default)]
    pub original_size: Option<i64>,
    /// SHA-256 of the whole original payload, lowercase hex.
    #[serde(default)]
    pub original_sha256: Option<String>,
}

impl DeadLetter {
    /// The most of the original payload a dead letter carries: with key and detail bounded
    /// too, a dead letter always fits Kafka's default 1 MB record limit, so rejecting an input
    /// can never fail for its size (a dead letter that cannot be written would stop its
    /// partition).
    pub const MAX_ORIGINAL_BYTES: usize = 256 * 1024;
    /// The most of the source key a dead letter carries.
    pub const MAX_KEY_BYTES: usize = 16 * 1024;
    /// The most of the detail text a dead letter carries.
    pub const MAX_DETAIL_BYTES: usize = 8 * 1024;

    /// Sets `original` (the first [`Self::MAX_ORIGINAL_BYTES`] of `payload`), its whole size
    /// and digest, and bounds the key and the detail. Every dead letter passes here.
    #[must_use]
    pub fn with_original(mut self, payload: Option<&[u8]>) -> Self {
        use sha2::Digest as _;
        self.original_size = payload.map(|p| p.len() as i64);
        self.original_sha256 = payload.map(|p| {
            let digest = sha2::Sha256::digest(p);
            let mut hex = String::with_capacity(64);
            for b in digest {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        });
        self.original = payload.map(|p| p[..p.len().min(Self::MAX_ORIGINAL_BYTES)].to_vec());
        if let Some(k) = &mut self.source_key {
            k.truncate(Self::MAX_KEY_BYTES);
        }
        if self.detail.len() > Self::MAX_DETAIL_BYTES {
            let mut cut = Self::MAX_DETAIL_BYTES;
            while !self.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            self.detail.truncate(cut);
            self.detail.push_str(" ...(truncated)");
        }
        self
    }
}

/// A point of a planned route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Waypoint {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// A circular geofence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeofenceCircle {
    /// Identifier.
    pub id: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Radius, metres.
    pub radius_m: f64,
    /// Whether stopping inside is planned.
    #[serde(default)]
    pub planned_stop: bool,
}

/// Why a contact is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContactRole {
    /// The vehicle's owner or customer.
    Owner,
    /// Police, ambulance, ...
    Authority,
    /// The operations room.
    Operations,
}

/// Who is told about a vehicle's incidents and alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Role.
    pub role: ContactRole,
    /// Channel.
    pub channel: Channel,
    /// Address (the notification's recipient).
    pub address: String,
}

/// What the pipeline knows about one vehicle. Topic `fleet.vehicle-profiles` (a table), key =
/// `vehicle_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleProfile {
    /// UUID of this version.
    pub event_id: String,
    /// Vehicle identifier; the Kafka key.
    pub vehicle_id: String,
    /// Publication time.
    pub updated_at: i64,
    /// Owning customer (tenant).
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Lowest allowed cargo temperature, °C.
    #[serde(default)]
    pub cargo_temp_min_c: Option<f64>,
    /// Highest allowed cargo temperature, °C.
    #[serde(default)]
    pub cargo_temp_max_c: Option<f64>,
    /// Speed limit, km/h.
    #[serde(default)]
    pub speed_limit_kmh: Option<f64>,
    /// Offline after this much silence, ms.
    #[serde(default)]
    pub offline_after_ms: Option<i64>,
    /// Route corridor half-width, metres.
    #[serde(default)]
    pub route_corridor_m: Option<f64>,
    /// Planned route.
    #[serde(default)]
    pub route: Vec<Waypoint>,
    /// Geofences.
    #[serde(default)]
    pub geofences: Vec<GeofenceCircle>,
    /// Contacts.
    #[serde(default)]
    pub contacts: Vec<Contact>,
}
