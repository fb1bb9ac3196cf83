//! Kafka -> devices: `fleet.commands` to `{prefix}/{vehicle_id}/commands`, QoS 1.
//!
//! One command is in flight at a time on a dedicated MQTT connection, so the next PUBACK is
//! this command's; the run loop stores the command's offset only after `process` returned,
//! that is after the PUBACK (at least once; devices de-duplicate by `commandId`).
//!
//! The JSON a device receives:
//! `{"commandId":"…","vehicleId":"VEH-1","command":"start_camera","params":{},"reason":"…","issuedAt":1698765432000,"expiresAt":null}`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_ingest::valid_vehicle_id;
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_runtime::{Input, Outputs, ProcessError, Processor};
use fleet_schemas::DeviceCommand;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::mqtt::{Client, MqttEvent};

/// The command as devices receive it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandPayload<'a> {
    /// The command's UUID (de-duplication key on the device).
    pub command_id: &'a str,
    /// Target vehicle.
    pub vehicle_id: &'a str,
    /// `start_camera`, `stop_camera`, `sound_alarm`, `lock_cargo`, `unlock_cargo`, `ping`, `other`.
    pub command: String,
    /// Parameters.
    pub params: &'a BTreeMap<String, String>,
    /// Why it was issued.
    pub reason: &'a str,
    /// When it was issued, ms.
    pub issued_at: i64,
    /// Do not execute after this time, ms.
    pub expires_at: Option<i64>,
}

impl<'a> CommandPayload<'a> {
    /// The device view of `c`.
    pub fn of(c: &'a DeviceCommand) -> Self {
        let command = serde_json::to_value(c.command)
            .ok()
            .and_then(|v| v.as_str().map(str::to_ascii_lowercase))
            .unwrap_or_else(|| "other".to_owned());
        Self {
            command_id: &c.event_id,
            vehicle_id: &c.vehicle_id,
            command,
            params: &c.params,
            reason: &c.reason,
            issued_at: c.ingest_time,
            expires_at: c.expires_at,
        }
    }
}

/// The downlink processor.
#[derive(Debug)]
pub struct Downlink {
    prefix: String,
    client: Client,
    events: mpsc::Receiver<MqttEvent>,
    ack_timeout: Duration,
    metrics: Arc<Metrics>,
    sent: Counter,
    expired: Counter,
}

impl Downlink {
    /// A downlink publishing through `client`, whose events arrive on `events`.
    pub fn new(
        prefix: &str,
        client: Client,
        events: mpsc::Receiver<MqttEvent>,
        ack_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.health.set_dependency("mqtt-downlink", false);
        Self {
            prefix: prefix.to_owned(),
            client,
            events,
            ack_timeout,
            sent: metrics.records("mqtt:commands", "ok"),
            expired: metrics.records("mqtt:commands", "expired"),
            metrics,
        }
    }

    fn note(&self, ev: &MqttEvent) {
        match ev {
            MqttEvent::Connected { .. } => {
                self.metrics.health.set_dependency("mqtt-downlink", true);
            }
            MqttEvent::Disconnected(why) => {
                tracing::warn!(error = %why, "downlink MQTT connection lost; reconnecting");
                self.metrics.health.set_dependency("mqtt-downlink", false);
            }
            _ => {}
        }
    }

    /// Consumes queued connection events (and stale PUBACKs).
    fn drain_events(&mut self) -> Result<(), ProcessError> {
        loop {
            match self.events.try_recv() {
                Ok(ev) => self.note(&ev),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(ProcessError::Fatal(
                        "downlink MQTT event loop stopped".into(),
                    ));
                }
            }
        }
    }
}

impl Processor for Downlink {
    type Input = DeviceCommand;

    async fn process(
        &mut self,
        input: &Input<'_, DeviceCommand>,
        _out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let c = &input.record;
        if !valid_vehicle_id(&c.vehicle_id) {
            return Err(ProcessError::poison(
                "invalid_vehicle_id",
                format!(
                    "command for vehicle {:?}: not a valid MQTT topic level",
                    c.vehicle_id
                ),
            ));
        }
        if c.expires_at.is_some_and(|e| e < now_ms()) {
            tracing::info!(command_id = %c.event_id, vehicle = %c.vehicle_id, "command expired before it could be sent; skipped");
            self.expired.inc();
            return Ok(());
        }
        self.drain_events()?;
        let payload = serde_json::to_vec(&CommandPayload::of(c))
            .map_err(|e| ProcessError::Fatal(format!("serialising a command: {e}")))?;
        let topic = format!("{}/{}/commands", self.prefix, c.vehicle_id);
        self.client
            .publish(topic, payload)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(MqttEvent::PubAck)) => break,
                Ok(Some(ev)) => self.note(&ev),
                Ok(None) => {
                    return Err(ProcessError::Fatal(
                        "downlink MQTT event loop stopped".into(),
                    ));
                }
                Err(_) => {
                    return Err(ProcessError::Transient(format!(
                        "no PUBACK for command {} within {:?}; re-sending",
                        c.event_id, self.ack_timeout
                    )));
                }
            }
        }
        self.sent.inc();
        Ok(())
    }

    async fn on_tick(&mut self, _now_ms: i64, _out: &mut Outputs) -> Result<(), ProcessError> {
        self.drain_events()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::CommandKind;

    #[test]
    fn device_payload() {
        let c = DeviceCommand {
            event_id: "c-1".into(),
            vehicle_id: "VEH-1".into(),
            command: CommandKind::StartCamera,
            params: BTreeMap::from([("duration_s".to_owned(), "60".to_owned())]),
            reason: "panic button".into(),
            event_time: 1,
            ingest_time: 2,
            expires_at: Some(3),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&CommandPayload::of(&c)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"commandId":"c-1","vehicleId":"VEH-1","command":"start_camera",
                "params":{"duration_s":"60"},"reason":"panic button","issuedAt":2,"expiresAt":3})
        );
    }
}
