//! # fleet-ingest: the device payload contract
//!
//! Trucks (over MQTT) and drivers' phone apps (over HTTPS) send JSON. This crate turns one such
//! payload into the Avro record it stands for ([`TelemetryReading`], [`EmergencyEvent`] or
//! [`DeliveryEvent`]), or into a [`Rejection`] with a stable reason code and the failing field.
//! It does no IO: the caller passes the current time, the identity the transport vouched for
//! (MQTT topic / username, HTTP token) and the [`Limits`]. `mqtt-bridge` and `http-ingest` both
//! call [`parse`], so the two doors validate identically.
//!
//! ## Payload contract
//!
//! Field names are camelCase; the snake_case spelling of every field is accepted too. Unknown
//! fields are ignored (devices can be upgraded before the pipeline). Times are integers in
//! milliseconds since the Unix epoch.
//!
//! **Telemetry** (`vehicle/{id}/telemetry`, `POST /v1/telemetry`):
//!
//! | field | type | required | meaning |
//! |---|---|---|---|
//! | `vehicleId` | string | yes | must equal the transport identity (topic id / token's vehicle) |
//! | `timestamp` | int ms | yes | when the reading was taken (device clock) |
//! | `location` | `{lat, lon (or lng), altitude?, accuracy?}` | yes | WGS84 degrees, metres |
//! | `eventId` | string | no | the device's unique id; else derived from the payload (stable across re-sends) |
//! | `sentAt` | int ms | no | when the device sent it (latency measurement) |
//! | `speed` | number km/h | no | 0..=400 |
//! | `heading` | number deg | no | 0..=360 |
//! | `cargoTemperature` (`cargo_temperature`) | number °C | no | -100..=150 |
//! | `doorOpen` | bool | no | cargo door |
//! | `ignition` | bool | no | ignition on |
//! | `acceleration` | number m/s² | no | longitudinal; -100..=100 |
//! | `odometer` | number km | no | >= 0 |
//! | `battery` | number V | no | 0..=100 |
//! | `cameraActive` (`camera`) | bool | no | camera recording |
//!
//! **Emergency** (`vehicle/{id}/emergency`): `vehicleId` (required), `type`
//! (`panic_button`, `crash`, `critical_anomaly`, anything else becomes `OTHER` with the raw type
//! kept in the description), `severity` (`info`..`critical`; missing or unknown: `CRITICAL` for
//! panic and crash, `HIGH` otherwise), `timestamp` (missing: the receive time, noted in the
//! description), `location` (optional; an invalid one is dropped and noted, never a reason to
//! lose an emergency), `description`, `eventId`, `sentAt`. The fast lane prefers a degraded
//! emergency to a dead letter: only an unidentifiable or forged one (bad JSON, missing or
//! mismatched `vehicleId`) is rejected.
//!
//! **Delivery** (`vehicle/{id}/delivery`, `POST /v1/deliveries`): `deliveryId`, `vehicleId`,
//! `status` (`created`, `assigned`, `picked_up`, `in_transit`, `arrived`, `delivered`, `failed`,
//! `cancelled`), `timestamp` (all required); `driverId`, `location`, `destination`,
//! `destinationRadius` (m), `promisedBy` (ms), `note`, `eventId`, `sentAt` optional.
//!
//! ## Reason codes
//! See [`Reason`]; they are the `reason` of the dead letter and the label of the rejection
//! counters.
//!
//! ```
//! use fleet_ingest::{Identity, Kind, Limits, Parsed, parse};
//! let json = br#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,
//!     "location":{"lat":4.6097,"lon":-74.0817},"speed":65.5,"cargo_temperature":22.0}"#;
//! let who = Identity { vehicle_id: Some("VEH-TEST-001"), source: "mqtt" };
//! let Parsed::Telemetry(r) = parse(Kind::Telemetry, json, &who, 1698765433000, &Limits::default()).unwrap()
//! else { unreachable!() };
//! assert_eq!(r.speed_kmh, Some(65.5));
//! assert_eq!(r.ingest_time, 1698765433000);
//!
//! let forged = Identity { vehicle_id: Some("VEH-TEST-002"), source: "mqtt" };
//! let err = parse(Kind::Telemetry, json, &forged, 1698765433000, &Limits::default()).unwrap_err();
//! assert_eq!(err.reason.code(), "vehicle_id_mismatch");
//! ```

use fleet_schemas::{
    DeliveryEvent, DeliveryKind, EmergencyEvent, EmergencyKind, Position, Severity,
    TelemetryReading, ids,
};
use serde::Deserialize;

mod topic;
pub use topic::{TopicError, parse_topic, valid_vehicle_id};

/// Which record a payload stands for (the last MQTT topic level, or the HTTP route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A [`TelemetryReading`].
    Telemetry,
    /// An [`EmergencyEvent`] (the fast lane).
    Emergency,
    /// A [`DeliveryEvent`].
    Delivery,
}

impl Kind {
    /// All kinds, in topic order.
    pub const ALL: [Kind; 3] = [Kind::Telemetry, Kind::Emergency, Kind::Delivery];

    /// The topic level / route segment: `telemetry`, `emergency`, `delivery`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Emergency => "emergency",
            Kind::Delivery => "delivery",
        }
    }

    /// The kind named by a topic level.
    pub fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Bounds applied to every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted payload, bytes.
    pub max_payload_bytes: usize,
    /// How far ahead of the receive time an event time may be (device clock skew), ms.
    pub max_future_skew_ms: i64,
    /// How far behind the receive time an event time may be (devices buffer while offline), ms.
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_future_skew_ms: 5 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// What the transport vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The vehicle the sender is authenticated as (MQTT topic level / username, token), if
    /// the transport binds senders to vehicles. The payload's `vehicleId` must equal it.
    pub vehicle_id: Option<&'a str>,
    /// Door name stored in the record's `source` (`mqtt`, `http`).
    pub source: &'a str,
}

/// Why a payload was rejected. [`Reason::code`] is the dead letter's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Larger than [`Limits::max_payload_bytes`].
    PayloadTooLarge,
    /// Not UTF-8.
    InvalidUtf8,
    /// Not a JSON object, or a field of the wrong JSON type.
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A field's value is out of its range or not one of its allowed values.
    InvalidField,
    /// Latitude/longitude missing parts, not finite or out of range.
    InvalidPosition,
    /// The payload's `vehicleId` differs from the sender's identity.
    VehicleIdMismatch,
    /// The vehicle id is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    InvalidVehicleId,
    /// Event time beyond the allowed skew into the future or older than the allowed age.
    TimestampOutOfRange,
    /// The MQTT topic is not `{prefix}/{vehicle}/{telemetry|emergency|delivery}`.
    UnknownTopic,
}

impl Reason {
    /// Stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidPosition => "invalid_position",
            Reason::VehicleIdMismatch => "vehicle_id_mismatch",
            Reason::InvalidVehicleId => "invalid_vehicle_id",
            Reason::TimestampOutOfRange => "timestamp_out_of_range",
            Reason::UnknownTopic => "unknown_topic",
        }
    }
}

/// A rejected payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Rejection {
    /// Reason code.
    pub reason: Reason,
    /// The failing field as a dotted path (`location.lat`), when one is to blame.
    pub field: Option<String>,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    fn new(reason: Reason, field: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.map(str::to_owned),
            detail: detail.into(),
        }
    }

    fn missing(field: &str) -> Self {
        Self::new(
            Reason::MissingField,
            Some(field),
            format!("required field `{field}` is missing"),
        )
    }

    fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(Reason::InvalidField, Some(field), detail)
    }
}

/// A payload turned into its record.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// For `fleet.telemetry`.
    Telemetry(TelemetryReading),
    /// For `fleet.emergencies`.
    Emergency(EmergencyEvent),
    /// For `fleet.deliveries`.
    Delivery(DeliveryEvent),
}

impl Parsed {
    /// The record's `event_id`.
    pub fn event_id(&self) -> &str {
        match self {
            Parsed::Telemetry(r) => &r.event_id,
            Parsed::Emergency(r) => &r.event_id,
            Parsed::Delivery(r) => &r.event_id,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    lat: Option<f64>,
    #[serde(alias = "lng")]
    lon: Option<f64>,
    #[serde(alias = "altitude_m")]
    altitude: Option<f64>,
    #[serde(alias = "accuracy_m")]
    accuracy: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TelemetryPayload {
    #[serde(alias = "vehicle_id")]
    vehicle_id: Option<String>,
    #[serde(alias = "event_id")]
    event_id: Option<String>,
    timestamp: Option<i64>,
    #[serde(alias = "sent_at")]
    sent_at: Option<i64>,
    location: Option<Location>,
    speed: Option<f64>,
    heading: Option<f64>,
    #[serde(alias = "cargo_temperature")]
    cargo_temperature: Option<f64>,
    #[serde(alias = "door_open")]
    door_open: Option<bool>,
    ignition: Option<bool>,
    acceleration: Option<f64>,
    odometer: Option<f64>,
    battery: Option<f64>,
    #[serde(alias = "camera_active", alias = "camera")]
    camera_active: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmergencyPayload {
    #[serde(alias = "vehicle_id")]
    vehicle_id: Option<String>,
    #[serde(alias = "event_id")]
    event_id: Option<String>,
    #[serde(alias = "kind")]
    r#type: Option<String>,
    severity: Option<String>,
    timestamp: Option<i64>,
    #[serde(alias = "sent_at")]
    sent_at: Option<i64>,
    location: Option<Location>,
    #[serde(alias = "message")]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryPayload {
    #[serde(alias = "delivery_id")]
    delivery_id: Option<String>,
    #[serde(alias = "vehicle_id")]
    vehicle_id: Option<String>,
    #[serde(alias = "driver_id")]
    driver_id: Option<String>,
    #[serde(alias = "event_id")]
    event_id: Option<String>,
    #[serde(alias = "type", alias = "kind")]
    status: Option<String>,
    timestamp: Option<i64>,
    #[serde(alias = "sent_at")]
    sent_at: Option<i64>,
    location: Option<Location>,
    destination: Option<Location>,
    #[serde(alias = "destination_radius", alias = "destinationRadiusM")]
    destination_radius: Option<f64>,
    #[serde(alias = "promised_by")]
    promised_by: Option<i64>,
    note: Option<String>,
}

/// Parses and validates one payload of `kind`.
///
/// `now_ms` is the receive time: it becomes `ingest_time` and anchors the timestamp checks.
/// The returned record's `event_id` is the device's `eventId` when present, otherwise a UUID
/// derived from the vehicle, the kind and the exact payload bytes, so a re-sent message (MQTT
/// redelivery, HTTP retry) keeps its id and downstream de-duplication works.
pub fn parse(
    kind: Kind,
    bytes: &[u8],
    who: &Identity<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<Parsed, Rejection> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(Rejection::new(
            Reason::PayloadTooLarge,
            None,
            format!("{} bytes, limit {}", bytes.len(), limits.max_payload_bytes),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            Reason::InvalidUtf8,
            None,
            format!("not UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    match kind {
        Kind::Telemetry => telemetry(text, who, now_ms, limits).map(Parsed::Telemetry),
        Kind::Emergency => emergency(text, who, now_ms, limits).map(Parsed::Emergency),
        Kind::Delivery => delivery(text, who, now_ms, limits).map(Parsed::Delivery),
    }
}

fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, Rejection> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        let inner = e.into_inner();
        Rejection {
            reason: Reason::InvalidJson,
            detail: match &field {
                Some(f) => format!("field `{f}`: {inner}"),
                None => inner.to_string(),
            },
            field,
        }
    })?;
    de.end()
        .map_err(|e| Rejection::new(Reason::InvalidJson, None, e.to_string()))?;
    Ok(value)
}

/// The payload's vehicle id, checked for syntax and against the transport's identity.
fn vehicle(id: Option<String>, who: &Identity<'_>) -> Result<String, Rejection> {
    let id = id.ok_or_else(|| Rejection::missing("vehicleId"))?;
    if !valid_vehicle_id(&id) {
        return Err(Rejection::new(
            Reason::InvalidVehicleId,
            Some("vehicleId"),
            format!(
                "vehicle id {id:?} is empty, longer than 64 or has characters outside [A-Za-z0-9_.:-]"
            ),
        ));
    }
    if let Some(claimed) = who.vehicle_id
        && claimed != id
    {
        return Err(Rejection::new(
            Reason::VehicleIdMismatch,
            Some("vehicleId"),
            format!("payload says {id:?} but the sender is {claimed:?}"),
        ));
    }
    Ok(id)
}

fn event_time(ts: Option<i64>, now_ms: i64, limits: &Limits) -> Result<i64, Rejection> {
    let ts = ts.ok_or_else(|| Rejection::missing("timestamp"))?;
    check_time(ts, now_ms, limits)
}

fn check_time(ts: i64, now_ms: i64, limits: &Limits) -> Result<i64, Rejection> {
    if ts > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(Rejection::new(
            Reason::TimestampOutOfRange,
            Some("timestamp"),
            format!(
                "timestamp {ts} is {} ms ahead of the receive time (allowed skew {} ms)",
                ts - now_ms,
                limits.max_future_skew_ms
            ),
        ));
    }
    if ts < now_ms.saturating_sub(limits.max_age_ms) {
        return Err(Rejection::new(
            Reason::TimestampOutOfRange,
            Some("timestamp"),
            format!(
                "timestamp {ts} is {} ms older than the receive time (allowed age {} ms)",
                now_ms - ts,
                limits.max_age_ms
            ),
        ));
    }
    Ok(ts)
}

fn parse_position(loc: Option<Location>, field: &str) -> Result<Option<Position>, Rejection> {
    let Some(loc) = loc else { return Ok(None) };
    let (Some(lat), Some(lon)) = (loc.lat, loc.lon) else {
        return Err(Rejection::new(
            Reason::InvalidPosition,
            Some(field),
            format!("`{field}` needs both lat and lon"),
        ));
    };
    let p = Position {
        lat,
        lon,
        altitude_m: finite(loc.altitude),
        accuracy_m: finite(loc.accuracy).filter(|a| *a >= 0.0),
    };
    p.check()
        .map_err(|e| Rejection::new(Reason::InvalidPosition, Some(field), e))?;
    Ok(Some(p))
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// `Some(v)` when within `range`, `None` when absent, a rejection otherwise.
fn ranged(
    v: Option<f64>,
    field: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, Rejection> {
    match v {
        None => Ok(None),
        Some(x) if range.contains(&x) => Ok(Some(x)),
        Some(x) => Err(Rejection::invalid(
            field,
            format!(
                "`{field}` = {x} is outside {}..={}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn text_id(id: Option<String>, field: &str) -> Result<Option<String>, Rejection> {
    match id {
        Some(s) if s.is_empty() || s.len() > 128 => Err(Rejection::invalid(
            field,
            format!("`{field}` must have 1 to 128 characters"),
        )),
        other => Ok(other),
    }
}

/// The device's `eventId`, or a UUID derived from the vehicle, the kind and the exact payload
/// text, so that a re-sent message keeps its id.
fn event_id(
    given: Option<String>,
    vehicle_id: &str,
    kind: Kind,
    text: &str,
) -> Result<String, Rejection> {
    Ok(text_id(given, "eventId")?
        .unwrap_or_else(|| ids::derived_id(&[vehicle_id, kind.as_str(), text])))
}

fn telemetry(
    text: &str,
    who: &Identity<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<TelemetryReading, Rejection> {
    let p: TelemetryPayload = from_json(text)?;
    let vehicle_id = vehicle(p.vehicle_id, who)?;
    let event_time = event_time(p.timestamp, now_ms, limits)?;
    let position =
        parse_position(p.location, "location")?.ok_or_else(|| Rejection::missing("location"))?;
    let speed_kmh = ranged(p.speed, "speed", 0.0..=400.0)?;
    let heading_deg = ranged(p.heading, "heading", 0.0..=360.0)?.map(|h| h % 360.0);
    let cargo_temp_c = ranged(p.cargo_temperature, "cargoTemperature", -100.0..=150.0)?;
    let accel_mps2 = ranged(p.acceleration, "acceleration", -100.0..=100.0)?;
    let odometer_km = ranged(p.odometer, "odometer", 0.0..=f64::MAX)?;
    let battery_v = ranged(p.battery, "battery", 0.0..=100.0)?;
    let event_id = event_id(p.event_id, &vehicle_id, Kind::Telemetry, text)?;
    Ok(TelemetryReading {
        event_id,
        vehicle_id,
        event_time,
        ingest_time: now_ms,
        sent_time: p.sent_at,
        position,
        speed_kmh,
        heading_deg,
        cargo_temp_c,
        door_open: p.door_open,
        ignition_on: p.ignition,
        accel_mps2,
        odometer_km,
        battery_v,
        camera_active: p.camera_active,
        source: who.source.to_owned(),
    })
}

/// `panic_button`, `Panic-Button` and `PANIC_BUTTON` all name the same symbol.
fn symbol(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace(['-', ' '], "_")
}

fn emergency_kind(raw: &str) -> Option<EmergencyKind> {
    match symbol(raw).as_str() {
        "panic_button" | "panic" => Some(EmergencyKind::PanicButton),
        "crash" | "collision" | "impact" => Some(EmergencyKind::Crash),
        "critical_anomaly" => Some(EmergencyKind::CriticalAnomaly),
        "other" => Some(EmergencyKind::Other),
        _ => None,
    }
}

fn severity(raw: &str) -> Option<Severity> {
    match symbol(raw).as_str() {
        "info" => Some(Severity::Info),
        "low" => Some(Severity::Low),
        "medium" => Some(Severity::Medium),
        "high" => Some(Severity::High),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

fn emergency(
    text: &str,
    who: &Identity<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<EmergencyEvent, Rejection> {
    let p: EmergencyPayload = from_json(text)?;
    let vehicle_id = vehicle(p.vehicle_id, who)?;
    let mut notes: Vec<String> = Vec::new();
    let raw_type = p.r#type.unwrap_or_default();
    let kind = emergency_kind(&raw_type).unwrap_or_else(|| {
        if raw_type.is_empty() {
            notes.push("no type given".into());
        } else {
            notes.push(format!("device type {raw_type:?}"));
        }
        EmergencyKind::Other
    });
    let default_severity = match kind {
        EmergencyKind::PanicButton | EmergencyKind::Crash => Severity::Critical,
        _ => Severity::High,
    };
    let severity = match p.severity.as_deref().map(|s| (s, severity(s))) {
        Some((_, Some(s))) => s,
        Some((raw, None)) => {
            notes.push(format!("unknown severity {raw:?}"));
            default_severity
        }
        None => default_severity,
    };
    let event_time = match p.timestamp {
        Some(ts) => match check_time(ts, now_ms, limits) {
            Ok(t) => t,
            Err(e) => {
                notes.push(format!("{}; receive time used", e.detail));
                now_ms
            }
        },
        None => {
            notes.push("no timestamp; receive time used".into());
            now_ms
        }
    };
    let position = match parse_position(p.location, "location") {
        Ok(pos) => pos,
        Err(e) => {
            notes.push(format!("{}; position dropped", e.detail));
            None
        }
    };
    let description = match (p.description, notes.is_empty()) {
        (d, true) => d,
        (Some(d), false) => Some(format!("{d} [{}]", notes.join("; "))),
        (None, false) => Some(format!("[{}]", notes.join("; "))),
    };
    let event_id = event_id(p.event_id, &vehicle_id, Kind::Emergency, text)?;
    Ok(EmergencyEvent {
        event_id,
        vehicle_id,
        event_time,
        ingest_time: now_ms,
        sent_time: p.sent_at,
        kind,
        severity,
        position,
        description,
        source_anomaly_id: None,
        source: who.source.to_owned(),
    })
}

fn delivery_kind(raw: &str) -> Option<DeliveryKind> {
    match symbol(raw).as_str() {
        "created" => Some(DeliveryKind::Created),
        "assigned" => Some(DeliveryKind::Assigned),
        "picked_up" | "pickedup" => Some(DeliveryKind::PickedUp),
        "in_transit" | "intransit" => Some(DeliveryKind::InTransit),
        "arrived" => Some(DeliveryKind::Arrived),
        "delivered" | "completed" => Some(DeliveryKind::Delivered),
        "failed" => Some(DeliveryKind::Failed),
        "cancelled" | "canceled" => Some(DeliveryKind::Cancelled),
        _ => None,
    }
}

fn delivery(
    text: &str,
    who: &Identity<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<DeliveryEvent, Rejection> {
    let p: DeliveryPayload = from_json(text)?;
    let vehicle_id = vehicle(p.vehicle_id, who)?;
    let delivery_id =
        text_id(p.delivery_id, "deliveryId")?.ok_or_else(|| Rejection::missing("deliveryId"))?;
    let raw = p.status.ok_or_else(|| Rejection::missing("status"))?;
    let kind = delivery_kind(&raw).ok_or_else(|| {
        Rejection::invalid(
            "status",
            format!("unknown status {raw:?} (created, assigned, picked_up, in_transit, arrived, delivered, failed, cancelled)"),
        )
    })?;
    let event_time = event_time(p.timestamp, now_ms, limits)?;
    let position = parse_position(p.location, "location")?;
    let destination = parse_position(p.destination, "destination")?;
    let destination_radius_m = ranged(p.destination_radius, "destinationRadius", 0.0..=100_000.0)?;
    let event_id = event_id(p.event_id, &vehicle_id, Kind::Delivery, text)?;
    Ok(DeliveryEvent {
        event_id,
        delivery_id,
        vehicle_id,
        driver_id: text_id(p.driver_id, "driverId")?,
        kind,
        event_time,
        ingest_time: now_ms,
        sent_time: p.sent_at,
        position,
        destination,
        destination_radius_m,
        promised_by: p.promised_by,
        note: p.note,
        reassigned_by: None,
    })
}

#[cfg(test)]
mod tests;
