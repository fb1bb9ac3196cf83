//! # mqtt-bridge: the only door from devices into Kafka, and the way back to them
//!
//! ```text
//! vehicle/{id}/telemetry  ─┐                          ┌─> fleet.telemetry     (throughput producer, key = vehicle id)
//! vehicle/{id}/emergency  ─┼─ MQTT QoS 1 ─> bridge ───┼─> fleet.emergencies   (latency producer: linger 0)
//! vehicle/{id}/delivery   ─┘   (manual acks)          ├─> fleet.deliveries    (key = delivery id)
//!                                                     └─> fleet.dlq           (rejected: reason, MQTT topic, original bytes)
//! fleet.commands ─> bridge ─> vehicle/{id}/commands (QoS 1)
//! ```
//!
//! **Uplink.** The bridge subscribes with QoS 1 to `{prefix}/+/telemetry`, `{prefix}/+/emergency`
//! and `{prefix}/+/delivery` (through `$share/{group}/...` when `shared_group` is set, so that
//! several instances split the load), over MQTT 5 or 3.1.1, with a persistent session. Each
//! payload is validated and mapped by [`fleet_ingest::parse`] (the payload contract is
//! documented there), the topic's vehicle id being the identity the payload must match;
//! `ingest_time` is stamped with the receive time. Records are produced with an idempotent
//! `acks=all` producer; rejected payloads become [`fleet_schemas::DeadLetter`]s on `fleet.dlq`.
//!
//! ## Delivery guarantee
//! **At least once, MQTT to Kafka.** A message is acknowledged to the broker (PUBACK, manual
//! acks) only after Kafka acknowledged its record (or its dead letter), and acknowledgements go
//! out in the order the messages arrived. Until then the broker keeps the message in the
//! bridge's persistent session and redelivers it after a reconnect or restart; while the bridge
//! is down the broker queues for it. A crash between the Kafka write and the PUBACK produces a
//! duplicate in Kafka with the same `event_id` (the device's, or one derived from the exact
//! payload bytes), which downstream consumers de-duplicate.
//!
//! **Downlink: at least once.** Each `DeviceCommand` on `fleet.commands` is published with
//! QoS 1 to `{prefix}/{vehicle_id}/commands`; its Kafka offset is stored only after the broker's
//! PUBACK (the run loop of `fleet-runtime`). Expired commands (`expires_at` in the past) are
//! skipped and counted. Devices de-duplicate by `commandId`.
//!
//! ## Security
//! The broker authenticates devices (password or client certificate) and its ACL lets a vehicle
//! publish only under its own id. The bridge checks again: a payload whose `vehicleId` differs
//! from the topic's is dead-lettered with reason `vehicle_id_mismatch`, so a misconfigured ACL
//! still cannot let one vehicle speak for another.

use std::time::Duration;

pub mod downlink;
pub mod mqtt;
pub mod uplink;

/// Errors of the bridge's IO edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid settings.
    #[error("configuration: {0}")]
    Config(String),
    /// The MQTT client failed.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// Kafka, registry or runtime failure.
    #[error(transparent)]
    Runtime(#[from] fleet_runtime::Error),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The largest MQTT packet the protocol allows (remaining length 268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

fleet_runtime::config_section! {
    /// mqtt-bridge settings.
    pub struct BridgeConfig {
        /// MQTT broker: mqtt://host:port, or mqtts://host:port for TLS.
        pub mqtt_url: String = "mqtt://127.0.0.1:1883".to_owned(), env = "FLEET_MQTT_URL",
        /// MQTT protocol: v5 (shared subscriptions, session expiry) or v3.1.1.
        pub protocol: String = "v5".to_owned(),
        /// MQTT user name of the bridge.
        pub username: String = "fleet-bridge".to_owned(), env = "FLEET_MQTT_BRIDGE_USER",
        /// MQTT password of the bridge.
        pub password: String = String::new(), env = "FLEET_MQTT_BRIDGE_PASSWORD",
        /// MQTT client id; keep it stable across restarts (the broker keeps the session under
        /// it) and distinct per instance. The downlink connection appends `-downlink`.
        pub client_id: String = "fleet-mqtt-bridge".to_owned(),
        /// First topic level(s) of device topics: {prefix}/{vehicle_id}/{telemetry|emergency|delivery}.
        pub topic_prefix: String = "vehicle".to_owned(),
        /// Shared-subscription group: when set, instances with the same group split the messages
        /// ($share/{group}/...). Empty: a plain subscription.
        pub shared_group: String = String::new(),
        /// How long the broker keeps the session (and queues messages) while the bridge is away (MQTT 5).
        #[serde(with = "humantime_serde")]
        pub session_expiry: Duration = Duration::from_secs(7 * 24 * 3600),
        /// Unacknowledged messages the broker may have in flight to the bridge (MQTT 5 receive maximum).
        pub receive_maximum: u16 = 10_000,
        /// MQTT keep-alive.
        #[serde(with = "humantime_serde")]
        pub keep_alive: Duration = Duration::from_secs(30),
        /// CA certificate (PEM) for mqtts://.
        pub tls_ca_file: String = String::new(),
        /// Client certificate and key as PKCS#12 (DER) for mqtts:// with client authentication.
        pub tls_client_pkcs12: String = String::new(),
        /// Password of the PKCS#12 file.
        pub tls_client_pkcs12_password: String = String::new(),
        /// Kafka topic for TelemetryReading records.
        pub telemetry_topic: String = "fleet.telemetry".to_owned(),
        /// Kafka topic for EmergencyEvent records (fast lane).
        pub emergencies_topic: String = "fleet.emergencies".to_owned(),
        /// Kafka topic for DeliveryEvent records.
        pub deliveries_topic: String = "fleet.deliveries".to_owned(),
        /// Kafka topic of DeviceCommand records to send down to vehicles.
        pub commands_topic: String = "fleet.commands".to_owned(),
        /// Run the downlink (fleet.commands -> MQTT).
        pub downlink: bool = true,
        /// How long to wait for the broker's PUBACK of a command before re-sending it.
        #[serde(with = "humantime_serde")]
        pub command_ack_timeout: Duration = Duration::from_secs(10),
        /// Largest accepted payload, bytes; larger messages are dead-lettered
        /// (`payload_too_large`, with their first 256 KiB, size and SHA-256) and acknowledged.
        pub max_payload_bytes: usize = 64 * 1024,
        /// Largest MQTT packet the bridge reads, bytes. Default: the protocol's maximum, so that
        /// every message the broker accepts is read and, when too large, dead-lettered. A lower
        /// value makes larger messages unreadable: on MQTT 3.1.1 the connection fails on them
        /// and the persistent session redelivers them first, for ever; on MQTT 5 the broker
        /// drops them unseen. Bound message sizes at the broker instead (mosquitto
        /// `max_packet_size`; the local stack and compose file set 16 MiB).
        pub max_packet_bytes: usize = MQTT_MAX_PACKET,
        /// How far in the future a device timestamp may be.
        #[serde(with = "humantime_serde")]
        pub max_future_skew: Duration = Duration::from_secs(300),
        /// How old a device timestamp may be (devices buffer while offline).
        #[serde(with = "humantime_serde")]
        pub max_age: Duration = Duration::from_secs(7 * 24 * 3600),
    }
    validate(c) {
        let bad = |m: String| Err(fleet_runtime::Error::Config(m));
        if mqtt::Protocol::parse(&c.protocol).is_none() {
            return bad(format!("app.protocol {:?}: use v5 or v3.1.1", c.protocol));
        }
        if let Err(e) = mqtt::parse_url(&c.mqtt_url) {
            return bad(e.to_string());
        }
        if c.client_id.is_empty() {
            return bad("app.client_id must not be empty (the persistent session lives under it)".into());
        }
        if c.max_packet_bytes < c.max_payload_bytes + 4096 || c.max_packet_bytes > MQTT_MAX_PACKET {
            return bad(format!(
                "app.max_packet_bytes {} must be between app.max_payload_bytes + 4096 and {MQTT_MAX_PACKET}",
                c.max_packet_bytes
            ));
        }
        if c.receive_maximum == 0 {
            return bad("app.receive_maximum must be at least 1".into());
        }
        if c.topic_prefix.is_empty() || c.topic_prefix.contains(['+', '#']) {
            return bad(format!("app.topic_prefix {:?} must be non-empty without wildcards", c.topic_prefix));
        }
        if c.shared_group.contains(['/', '+', '#']) {
            return bad(format!("app.shared_group {:?} must not contain /, + or #", c.shared_group));
        }
        if mqtt::parse_url(&c.mqtt_url).is_ok_and(|(_, _, tls)| tls) && c.tls_ca_file.is_empty() {
            return bad("mqtts:// needs app.tls_ca_file".into());
        }
        Ok(())
    }
}

impl BridgeConfig {
    /// The MQTT protocol (validated at start-up).
    pub fn protocol(&self) -> mqtt::Protocol {
        mqtt::Protocol::parse(&self.protocol).unwrap_or(mqtt::Protocol::V5)
    }

    /// The payload limits.
    pub fn limits(&self) -> fleet_ingest::Limits {
        fleet_ingest::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: self.max_future_skew.as_millis() as i64,
            max_age_ms: self.max_age.as_millis() as i64,
        }
    }

    /// The uplink subscription filters.
    pub fn filters(&self) -> Vec<String> {
        fleet_ingest::Kind::ALL
            .iter()
            .map(|k| {
                let f = format!("{}/+/{}", self.topic_prefix, k.as_str());
                if self.shared_group.is_empty() {
                    f
                } else {
                    format!("$share/{}/{f}", self.shared_group)
                }
            })
            .collect()
    }

    /// Connection settings of the uplink (`downlink == false`) or downlink connection.
    pub fn settings(&self, downlink: bool) -> Result<mqtt::Settings> {
        let (host, port, tls) = mqtt::parse_url(&self.mqtt_url)?;
        Ok(mqtt::Settings {
            protocol: self.protocol(),
            host,
            port,
            tls,
            client_id: if downlink {
                format!("{}-downlink", self.client_id)
            } else {
                self.client_id.clone()
            },
            persistent: !downlink,
            manual_acks: !downlink,
            receive_maximum: self.receive_maximum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_runtime::config::Section;

    #[test]
    fn filters_plain_and_shared() {
        let mut c = BridgeConfig::default();
        assert_eq!(
            c.filters(),
            [
                "vehicle/+/telemetry",
                "vehicle/+/emergency",
                "vehicle/+/delivery"
            ]
        );
        c.shared_group = "bridges".into();
        assert_eq!(c.filters()[1], "$share/bridges/vehicle/+/emergency");
    }

    #[test]
    fn validation() {
        assert!(BridgeConfig::default().validate().is_ok());
        for broken in [
            BridgeConfig {
                protocol: "v2".into(),
                ..Default::default()
            },
            BridgeConfig {
                mqtt_url: "http://x".into(),
                ..Default::default()
            },
            BridgeConfig {
                client_id: String::new(),
                ..Default::default()
            },
            BridgeConfig {
                topic_prefix: "v/#".into(),
                ..Default::default()
            },
            BridgeConfig {
                shared_group: "a/b".into(),
                ..Default::default()
            },
            BridgeConfig {
                mqtt_url: "mqtts://h:8883".into(),
                ..Default::default()
            },
            BridgeConfig {
                receive_maximum: 0,
                ..Default::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    #[test]
    fn downlink_connection_is_separate_and_clean() {
        let c = BridgeConfig::default();
        let up = c.settings(false).unwrap();
        let down = c.settings(true).unwrap();
        assert!(up.persistent && up.manual_acks);
        assert!(!down.persistent && !down.manual_acks);
        assert_eq!(down.client_id, "fleet-mqtt-bridge-downlink");
    }
}
