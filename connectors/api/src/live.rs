//! The live stream: positions (`fleet.telemetry`), alerts (`fleet.anomalies`) and incidents
//! (`fleet.emergencies`) as they happen, fanned out to every subscriber.
//!
//! One Kafka consumer per process follows the three topics from their end (no consumer group
//! offsets: a live view starts at "now"); each record is decoded and rendered to JSON once,
//! and shared by every subscriber through a broadcast channel. When nobody is subscribed,
//! records are not even decoded. A subscriber that cannot keep up loses the oldest events,
//! and is told how many in a `lagged` event (a live map redraws from the next positions).
//!
//! Records that do not decode are skipped, logged and counted
//! (`fleet_processor_records_total{topic,outcome="undecodable"}`): the processors that own
//! these topics dead-letter bad input; this reader must not stop on it.

use std::sync::Arc;

use fleet_runtime::metrics::Metrics;
use fleet_schemas::{Anomaly, Decoder, EmergencyEvent, Registry, TelemetryReading};
use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A vehicle's position and readings.
    Position,
    /// An anomaly raised or cleared.
    Alert,
    /// An emergency (incident).
    Incident,
}

impl Kind {
    /// The SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Position => "position",
            Kind::Alert => "alert",
            Kind::Incident => "incident",
        }
    }

    /// The kind named `s` (`position(s)`, `alert(s)`, `incident(s)`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().trim_end_matches('s') {
            "position" => Some(Kind::Position),
            "alert" => Some(Kind::Alert),
            "incident" => Some(Kind::Incident),
            _ => None,
        }
    }
}

/// One event of the stream, rendered once.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// Vehicle it is about.
    pub vehicle_id: String,
    /// Kind.
    pub kind: Kind,
    /// The JSON body sent to subscribers.
    pub json: String,
}

#[derive(Serialize)]
struct PositionJson<'a> {
    vehicle_id: &'a str,
    t: i64,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f64>,
    heading_deg: Option<f64>,
    cargo_temp_c: Option<f64>,
}

#[derive(Serialize)]
struct AlertJson<'a> {
    vehicle_id: &'a str,
    t: i64,
    id: &'a str,
    kind: fleet_schemas::AnomalyKind,
    state: fleet_schemas::AnomalyState,
    severity: fleet_schemas::Severity,
    message: &'a str,
    lat: Option<f64>,
    lon: Option<f64>,
}

#[derive(Serialize)]
struct IncidentJson<'a> {
    vehicle_id: &'a str,
    t: i64,
    id: &'a str,
    kind: fleet_schemas::EmergencyKind,
    severity: fleet_schemas::Severity,
    description: Option<&'a str>,
    lat: Option<f64>,
    lon: Option<f64>,
}

fn render<T: Serialize>(v: &T) -> String {
    // These structs have no maps with non-string keys: serialisation cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// A position event.
pub fn position(r: &TelemetryReading) -> LiveEvent {
    LiveEvent {
        vehicle_id: r.vehicle_id.clone(),
        kind: Kind::Position,
        json: render(&PositionJson {
            vehicle_id: &r.vehicle_id,
            t: r.event_time,
            lat: r.position.lat,
            lon: r.position.lon,
            speed_kmh: r.speed_kmh,
            heading_deg: r.heading_deg,
            cargo_temp_c: r.cargo_temp_c,
        }),
    }
}

/// An alert event.
pub fn alert(a: &Anomaly) -> LiveEvent {
    LiveEvent {
        vehicle_id: a.vehicle_id.clone(),
        kind: Kind::Alert,
        json: render(&AlertJson {
            vehicle_id: &a.vehicle_id,
            t: a.event_time,
            id: &a.event_id,
            kind: a.kind,
            state: a.state,
            severity: a.severity,
            message: &a.message,
            lat: a.position.as_ref().map(|p| p.lat),
            lon: a.position.as_ref().map(|p| p.lon),
        }),
    }
}

/// An incident event.
pub fn incident(e: &EmergencyEvent) -> LiveEvent {
    LiveEvent {
        vehicle_id: e.vehicle_id.clone(),
        kind: Kind::Incident,
        json: render(&IncidentJson {
            vehicle_id: &e.vehicle_id,
            t: e.event_time,
            id: &e.event_id,
            kind: e.kind,
            severity: e.severity,
            description: e.description.as_deref(),
            lat: e.position.as_ref().map(|p| p.lat),
            lon: e.position.as_ref().map(|p| p.lon),
        }),
    }
}

/// The topics the stream follows.
#[derive(Debug, Clone)]
pub struct LiveTopics {
    /// TelemetryReading records.
    pub telemetry: String,
    /// Anomaly records.
    pub anomalies: String,
    /// EmergencyEvent records.
    pub emergencies: String,
}

/// Follows the topics and publishes every event to `hub` until `shutdown`.
pub async fn follow(
    consumer: StreamConsumer,
    registry: Registry,
    topics: LiveTopics,
    hub: broadcast::Sender<Arc<LiveEvent>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let wanted: Vec<&str> = [&topics.telemetry, &topics.anomalies, &topics.emergencies]
        .into_iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    if wanted.is_empty() {
        tracing::info!("live stream: no topics configured; the stream stays empty");
        return;
    }
    if let Err(e) = consumer.subscribe(&wanted) {
        tracing::error!(error = %e, "live stream: cannot subscribe; the stream stays empty");
        return;
    }
    let tele = Decoder::<TelemetryReading>::new(registry.clone());
    let anom = Decoder::<Anomaly>::new(registry.clone());
    let emerg = Decoder::<EmergencyEvent>::new(registry);
    let published = metrics.records("live", "published");
    let skipped = metrics.records("live", "no_subscriber");
    let bad: Vec<_> = wanted
        .iter()
        .map(|t| ((*t).to_owned(), metrics.records(t, "undecodable")))
        .collect();
    tracing::info!(topics = ?wanted, "live stream following");
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "live stream: consumer error");
                continue;
            }
        };
        if hub.receiver_count() == 0 {
            skipped.inc();
            continue;
        }
        let Some(payload) = m.payload() else { continue };
        let topic = m.topic();
        let event = if topic == topics.telemetry {
            tele.decode(payload).await.map(|r| position(&r))
        } else if topic == topics.anomalies {
            anom.decode(payload).await.map(|a| alert(&a))
        } else {
            emerg.decode(payload).await.map(|e| incident(&e))
        };
        match event {
            Ok(ev) => {
                published.inc();
                // No receiver left meanwhile: nothing to do.
                let _ = hub.send(Arc::new(ev));
            }
            Err(e) => {
                if let Some((_, c)) = bad.iter().find(|(t, _)| t == topic) {
                    c.inc();
                }
                tracing::warn!(topic, partition = m.partition(), offset = m.offset(), error = %e,
                    "live stream: record skipped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_schemas::{AnomalyKind, AnomalyState, EmergencyKind, Position, Severity};

    use super::*;

    #[test]
    fn kinds_parse_singular_and_plural() {
        assert_eq!(Kind::parse("positions"), Some(Kind::Position));
        assert_eq!(Kind::parse(" alert"), Some(Kind::Alert));
        assert_eq!(Kind::parse("incidents"), Some(Kind::Incident));
        assert_eq!(Kind::parse("windows"), None);
        for k in [Kind::Position, Kind::Alert, Kind::Incident] {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn events_render_their_fields() {
        let r = TelemetryReading {
            event_id: "e1".into(),
            vehicle_id: "VEH-1".into(),
            event_time: 1_000,
            ingest_time: 1_001,
            sent_time: None,
            position: Position::new(4.5, -74.0),
            speed_kmh: Some(50.0),
            heading_deg: None,
            cargo_temp_c: Some(3.5),
            door_open: None,
            ignition_on: None,
            accel_mps2: None,
            odometer_km: None,
            battery_v: None,
            camera_active: None,
            source: "t".into(),
        };
        let ev = position(&r);
        assert_eq!(ev.kind, Kind::Position);
        let v: serde_json::Value = serde_json::from_str(&ev.json).expect("json");
        assert_eq!(v["vehicle_id"], "VEH-1");
        assert_eq!(v["lat"], 4.5);
        assert_eq!(v["speed_kmh"], 50.0);
        assert_eq!(v["heading_deg"], serde_json::Value::Null);

        let a = Anomaly {
            event_id: "a1".into(),
            vehicle_id: "VEH-1".into(),
            event_time: 2_000,
            ingest_time: 2_001,
            sent_time: None,
            kind: AnomalyKind::CargoTemperature,
            state: AnomalyState::Raised,
            severity: Severity::High,
            value: Some(9.0),
            threshold: Some(8.0),
            position: None,
            message: "too warm".into(),
            trigger_event_id: None,
        };
        let v: serde_json::Value = serde_json::from_str(&alert(&a).json).expect("json");
        assert_eq!(v["kind"], "CARGO_TEMPERATURE");
        assert_eq!(v["state"], "RAISED");
        assert_eq!(v["severity"], "HIGH");
        assert_eq!(v["message"], "too warm");

        let e = EmergencyEvent {
            event_id: "x1".into(),
            vehicle_id: "VEH-2".into(),
            event_time: 3_000,
            ingest_time: 3_001,
            sent_time: None,
            kind: EmergencyKind::PanicButton,
            severity: Severity::Critical,
            position: Some(Position::new(4.0, -74.0)),
            description: Some("panic".into()),
            source_anomaly_id: None,
            source: "t".into(),
        };
        let ev = incident(&e);
        assert_eq!(ev.vehicle_id, "VEH-2");
        let v: serde_json::Value = serde_json::from_str(&ev.json).expect("json");
        assert_eq!(v["kind"], "PANIC_BUTTON");
        assert_eq!(v["id"], "x1");
        assert_eq!(v["lon"], -74.0);
    }
}
