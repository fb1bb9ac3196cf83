//! Kafka -> devices: `fleet.commands` to `{prefix}/{vehicle_id}/commands`, QoS 1.
//!
//! One command is in flight at a time on a dedicated MQTT connection; the run loop stores the
//! command's offset only after `process` returned, that is after the broker's PUBACK **for
//! this command's packet id** (at least once; devices de-duplicate by `commandId`). A command
//! whose PUBACK did not come in time is re-sent (a new publish); the abandoned publish stays
//! pending in the client, which resends it after a reconnect under its old packet id, and
//! its late PUBACK must not confirm a later command: [`AckTracker`] matches packet ids.
//!
//! The JSON a device receives:
//! `{"commandId":"…","vehicleId":"VEH-1","command":"start_camera","params":{},"reason":"…","issuedAt":1698765432000,"expiresAt":null}`

use std::collections::{BTreeMap, HashMap};
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

/// Which PUBACK confirms which command: pure bookkeeping fed with the connection's events.
///
/// The client reports the packet id of each publish it sends (`Published`); the first packet
/// id not belonging to an earlier, unconfirmed publish after [`AckTracker::publishing`] is
/// the current command's. A PUBACK confirms the current command when it carries that id, or
/// the id of an earlier publish of the same command (the first send arrived after all).
#[derive(Debug, Default)]
pub struct AckTracker {
    current: Option<(String, Option<u16>)>,
    unacked: HashMap<u16, String>,
}

impl AckTracker {
    /// A publish of `command_id` is about to be handed to the client. A previous command
    /// still unconfirmed becomes an abandoned publish.
    pub fn publishing(&mut self, command_id: &str) {
        self.abandon();
        self.current = Some((command_id.to_owned(), None));
    }

    /// The current command was not confirmed in time (or is given up): its publish, if sent,
    /// may still be acknowledged later and must then be recognised as stale.
    pub fn abandon(&mut self) {
        if let Some((id, Some(pkid))) = self.current.take() {
            self.unacked.insert(pkid, id);
        }
    }

    /// The client sent a publish with `pkid`.
    pub fn published(&mut self, pkid: u16) {
        if self.unacked.contains_key(&pkid) {
            return; // a resend of an abandoned publish
        }
        if let Some((_, slot @ None)) = &mut self.current {
            *slot = Some(pkid);
        }
    }

    /// The broker acknowledged `pkid`; true when that confirms the current command.
    pub fn acked(&mut self, pkid: u16) -> bool {
        if let Some((id, own)) = &self.current {
            if *own == Some(pkid) {
                self.current = None;
                return true;
            }
            if self.unacked.get(&pkid) == Some(id) {
                self.unacked.remove(&pkid);
                self.abandon();
                return true;
            }
        }
        self.unacked.remove(&pkid);
        false
    }

    /// Earlier publishes still waiting for their PUBACK.
    pub fn abandoned(&self) -> usize {
        self.unacked.len()
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
    acks: AckTracker,
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
            acks: AckTracker::default(),
        }
    }

    fn note(&mut self, ev: &MqttEvent) {
        match ev {
            MqttEvent::Published(pkid) => self.acks.published(*pkid),
            MqttEvent::PubAck(pkid) => {
                self.acks.acked(*pkid);
            }
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
        self.acks.publishing(&c.event_id);
        self.client
            .publish(topic, payload)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(MqttEvent::PubAck(pkid))) => {
                    if self.acks.acked(pkid) {
                        break;
                    }
                    tracing::debug!(pkid, "PUBACK of an earlier, abandoned publish");
                }
                Ok(Some(ev)) => self.note(&ev),
                Ok(None) => {
                    return Err(ProcessError::Fatal(
                        "downlink MQTT event loop stopped".into(),
                    ));
                }
                Err(_) => {
                    self.acks.abandon();
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

    /// Command A's PUBACK is late: A is re-sent after the timeout, given up, and command B is
    /// published. A's late acknowledgements must not confirm B; B's own PUBACK does.
    #[test]
    fn a_late_puback_does_not_confirm_the_next_command() {
        let mut t = AckTracker::default();
        t.publishing("A");
        t.published(1);
        t.abandon(); // no PUBACK in time
        t.publishing("A"); // the retry
        t.published(2);
        t.abandon(); // expired meanwhile: given up
        t.publishing("B");
        t.published(1); // reconnect: the client resends A's first publish...
        t.published(3); // ...then B
        assert!(!t.acked(1), "A's first PUBACK");
        assert!(!t.acked(2), "A's second PUBACK");
        assert_eq!(t.abandoned(), 0);
        assert!(t.acked(3), "B's own PUBACK");
    }

    /// The first send of a command arrives after its retry went out: it confirms the command
    /// (the device has it), and the retry's own PUBACK later is recognised as stale.
    #[test]
    fn a_late_puback_of_the_same_command_confirms_it() {
        let mut t = AckTracker::default();
        t.publishing("A");
        t.published(1);
        t.abandon();
        t.publishing("A");
        t.published(2);
        assert!(t.acked(1));
        t.publishing("B");
        t.published(3);
        assert!(!t.acked(2), "the retry's PUBACK is A's");
        assert!(t.acked(3));
    }

    /// The client reuses a packet id once it is acknowledged: B gets A's old id right after
    /// A's late PUBACK (the client's order: the PUBACK event, then the new publish).
    #[test]
    fn a_reused_packet_id_after_its_puback_is_the_new_commands() {
        let mut t = AckTracker::default();
        t.publishing("A");
        t.published(1);
        t.abandon();
        t.publishing("B");
        assert!(!t.acked(1));
        t.published(1);
        assert!(t.acked(1));
    }

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
