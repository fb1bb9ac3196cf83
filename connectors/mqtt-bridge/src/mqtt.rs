//! One MQTT client API over rumqttc's MQTT 5 and MQTT 3.1.1 clients.
//!
//! The event loop runs in its own task (so that acks and subscriptions sent from the bridge
//! task can never block it) and forwards what the bridge needs as [`MqttEvent`]s through a
//! bounded channel; reconnection with backoff happens there too.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BridgeConfig, Error, Result};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

impl Protocol {
    /// `v5` or `v3.1.1` (also `5`, `3.1.1`, `v311`, `4`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v5" | "5" | "5.0" | "mqtt5" => Some(Protocol::V5),
            "v3.1.1" | "3.1.1" | "v311" | "4" | "v4" | "mqtt311" => Some(Protocol::V311),
            _ => None,
        }
    }
}

/// A received PUBLISH, kept whole until it is acknowledged.
#[derive(Debug, Clone)]
pub enum Message {
    /// From an MQTT 3.1.1 session.
    V311(rumqttc::Publish),
    /// From an MQTT 5 session.
    V5(p5::Publish),
}

impl Message {
    /// Topic name; `None` when it is not UTF-8 (MQTT requires UTF-8; a broken broker or client).
    pub fn topic(&self) -> Option<&str> {
        match self {
            Message::V311(p) => Some(p.topic.as_str()),
            Message::V5(p) => std::str::from_utf8(&p.topic).ok(),
        }
    }

    /// Topic bytes, for dead letters of messages with a non-UTF-8 topic.
    pub fn topic_lossy(&self) -> String {
        match self {
            Message::V311(p) => p.topic.clone(),
            Message::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::V311(p) => &p.payload,
            Message::V5(p) => &p.payload,
        }
    }

    /// Whether the broker flagged it as a redelivery.
    pub fn dup(&self) -> bool {
        match self {
            Message::V311(p) => p.dup,
            Message::V5(p) => p.dup,
        }
    }
}

/// What the event-loop task reports.
#[derive(Debug)]
pub enum MqttEvent {
    /// Connected (again); `session_present`: the broker kept our session and its queue.
    Connected {
        /// Whether the broker resumed an existing session.
        session_present: bool,
    },
    /// A PUBLISH from the broker.
    Message(Message),
    /// The broker acknowledged our QoS 1 publish with this packet id.
    PubAck(u16),
    /// A QoS 1 publish of ours went out with this packet id (first send or a resend after a
    /// reconnect: the client keeps a pending publish's packet id).
    Published(u16),
    /// Every filter of a subscription was granted: messages now flow.
    Subscribed,
    /// A subscription was refused.
    SubscribeRefused(String),
    /// The connection failed or dropped; the task reconnects after a backoff.
    Disconnected(String),
}

/// Cloneable client handle.
#[derive(Debug, Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

fn client_err(e: impl std::fmt::Display) -> Error {
    Error::Mqtt(e.to_string())
}

impl Client {
    /// Acknowledges `msg` (PUBACK): the broker may forget it.
    pub async fn ack(&self, msg: &Message) -> Result<()> {
        match (self, msg) {
            (Client::V311(c), Message::V311(p)) => c.ack(p).await.map_err(client_err),
            (Client::V5(c), Message::V5(p)) => c.ack(p).await.map_err(client_err),
            _ => Err(Error::Mqtt(
                "message and client speak different protocols".into(),
            )),
        }
    }

    /// Queues the acknowledgement of `msg` without waiting: `Ok(false)` when the client's
    /// request queue is full (try again later; the event loop may itself be waiting for us).
    pub fn try_ack(&self, msg: &Message) -> Result<bool> {
        match (self, msg) {
            (Client::V311(c), Message::V311(p)) => match c.try_ack(p) {
                Ok(()) => Ok(true),
                Err(rumqttc::ClientError::TryRequest(_)) => Ok(false),
                Err(e) => Err(client_err(e)),
            },
            (Client::V5(c), Message::V5(p)) => match c.try_ack(p) {
                Ok(()) => Ok(true),
                Err(rumqttc::v5::ClientError::TryRequest(_)) => Ok(false),
                Err(e) => Err(client_err(e)),
            },
            _ => Err(Error::Mqtt(
                "message and client speak different protocols".into(),
            )),
        }
    }

    /// Subscribes to `filters` with QoS 1.
    pub async fn subscribe(&self, filters: &[String]) -> Result<()> {
        match self {
            Client::V311(c) => c
                .subscribe_many(
                    filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)
                    }),
                )
                .await
                .map_err(client_err),
            Client::V5(c) => c
                .subscribe_many(
                    filters.iter().map(|f| {
                        p5::Filter::new(f.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    }),
                )
                .await
                .map_err(client_err),
        }
    }

    /// Publishes `payload` to `topic` with QoS 1 (not retained).
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        match self {
            Client::V311(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(client_err),
            Client::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .map_err(client_err),
        }
    }

    /// Sends DISCONNECT (the broker keeps a persistent session and queues for it).
    pub async fn disconnect(&self) {
        let r = match self {
            Client::V311(c) => c.disconnect().await.map_err(client_err),
            Client::V5(c) => c.disconnect().await.map_err(client_err),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "MQTT disconnect");
        }
    }
}

/// Connection settings derived from [`BridgeConfig`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Protocol.
    pub protocol: Protocol,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Client id.
    pub client_id: String,
    /// Keep a session across connections (queued messages survive a bridge restart).
    pub persistent: bool,
    /// Manual acknowledgements (uplink) or automatic (downlink).
    pub manual_acks: bool,
    /// Unacknowledged messages the broker may have in flight to us.
    pub receive_maximum: u16,
}

/// `mqtt://host:port` or `mqtts://host:port` (`tcp://`, `ssl://` accepted).
pub fn parse_url(url: &str) -> Result<(String, u16, bool)> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::Config(format!(
            "MQTT URL {url:?} has no scheme (mqtt:// or mqtts://)"
        ))
    })?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(Error::Config(format!(
                "MQTT URL scheme {other:?}: use mqtt:// or mqtts://"
            )));
        }
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::Config(format!("MQTT URL {url:?}: bad port")))?,
        ),
        None => (authority, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(Error::Config(format!("MQTT URL {url:?} has no host")));
    }
    Ok((host.to_owned(), port, tls))
}

fn tls_config(cfg: &BridgeConfig) -> Result<rumqttc::TlsConfiguration> {
    let ca = std::fs::read(&cfg.tls_ca_file)
        .map_err(|e| Error::Config(format!("reading tls_ca_file {:?}: {e}", cfg.tls_ca_file)))?;
    let client_auth = if cfg.tls_client_pkcs12.is_empty() {
        None
    } else {
        let der = std::fs::read(&cfg.tls_client_pkcs12).map_err(|e| {
            Error::Config(format!(
                "reading tls_client_pkcs12 {:?}: {e}",
                cfg.tls_client_pkcs12
            ))
        })?;
        Some((der, cfg.tls_client_pkcs12_password.clone()))
    };
    Ok(rumqttc::TlsConfiguration::SimpleNative { ca, client_auth })
}

/// Connects (lazily: the event-loop task dials) and starts the event-loop task. Events arrive
/// on the returned receiver; the task ends when `stop` fires or the receiver is dropped.
pub fn start(
    cfg: &BridgeConfig,
    s: &Settings,
    stop: CancellationToken,
) -> Result<(Client, mpsc::Receiver<MqttEvent>)> {
    let (tx, rx) = mpsc::channel(usize::from(s.receive_maximum).max(64) * 2);
    let keep_alive = cfg.keep_alive.max(Duration::from_secs(5));
    let transport = if s.tls {
        Some(rumqttc::Transport::tls_with_config(tls_config(cfg)?))
    } else {
        None
    };
    let cap = usize::from(s.receive_maximum).max(64) * 2;
    match s.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(!s.persistent)
                .set_manual_acks(s.manual_acks)
                .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
                .set_inflight(s.receive_maximum);
            if !cfg.username.is_empty() {
                o.set_credentials(&cfg.username, &cfg.password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, cap);
            tokio::spawn(forward_events(
                async move || from_v311(el.poll().await),
                tx,
                stop,
            ));
            Ok((Client::V311(client), rx))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, &s.host, s.port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(!s.persistent)
                .set_manual_acks(s.manual_acks)
                .set_receive_maximum(Some(s.receive_maximum))
                .set_max_packet_size(Some(
                    u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX),
                ));
            if s.persistent {
                o.set_session_expiry_interval(Some(
                    cfg.session_expiry.as_secs().min(u32::MAX as u64) as u32,
                ));
            }
            if !cfg.username.is_empty() {
                o.set_credentials(&cfg.username, &cfg.password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, mut el) = rumqttc::v5::AsyncClient::new(o, cap);
            tokio::spawn(forward_events(
                async move || from_v5(el.poll().await),
                tx,
                stop,
            ));
            Ok((Client::V5(client), rx))
        }
    }
}

/// What the bridge needs from an MQTT 3.1.1 event (`None`: nothing).
fn from_v311(ev: Result<rumqttc::Event, rumqttc::ConnectionError>) -> Option<MqttEvent> {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match ev {
        Ok(Event::Incoming(Packet::Publish(p))) => Some(MqttEvent::Message(Message::V311(p))),
        Ok(Event::Incoming(Packet::ConnAck(c))) => Some(MqttEvent::Connected {
            session_present: c.session_present,
        }),
        Ok(Event::Incoming(Packet::PubAck(a))) => Some(MqttEvent::PubAck(a.pkid)),
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
            Some(MqttEvent::Published(pkid))
        }
        Ok(Event::Incoming(Packet::SubAck(a)))
            if a.return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
        {
            Some(MqttEvent::SubscribeRefused(format!("{:?}", a.return_codes)))
        }
        Ok(Event::Incoming(Packet::SubAck(_))) => Some(MqttEvent::Subscribed),
        Ok(_) => None,
        Err(e) => Some(MqttEvent::Disconnected(e.to_string())),
    }
}

/// What the bridge needs from an MQTT 5 event (`None`: nothing).
fn from_v5(ev: Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>) -> Option<MqttEvent> {
    use p5::{Packet, SubscribeReasonCode};
    use rumqttc::Outgoing;
    use rumqttc::v5::Event;
    match ev {
        Ok(Event::Incoming(Packet::Publish(p))) => Some(MqttEvent::Message(Message::V5(p))),
        Ok(Event::Incoming(Packet::ConnAck(c))) => Some(MqttEvent::Connected {
            session_present: c.session_present,
        }),
        Ok(Event::Incoming(Packet::PubAck(a))) => Some(MqttEvent::PubAck(a.pkid)),
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
            Some(MqttEvent::Published(pkid))
        }
        Ok(Event::Incoming(Packet::SubAck(a)))
            if a.return_codes
                .iter()
                .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
        {
            Some(MqttEvent::SubscribeRefused(format!("{:?}", a.return_codes)))
        }
        Ok(Event::Incoming(Packet::SubAck(_))) => Some(MqttEvent::Subscribed),
        Ok(_) => None,
        Err(e) => Some(MqttEvent::Disconnected(e.to_string())),
    }
}

/// The event-loop task: forwards what `next` yields until `stop` fires or the receiver is
/// gone; after a connection failure it backs off before polling (reconnecting) again.
async fn forward_events(
    mut next: impl AsyncFnMut() -> Option<MqttEvent>,
    tx: mpsc::Sender<MqttEvent>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = next() => ev,
        };
        let Some(ev) = ev else { continue };
        if matches!(ev, MqttEvent::Connected { .. }) {
            backoff.reset();
        }
        let failed = matches!(ev, MqttEvent::Disconnected(_));
        if tx.send(ev).await.is_err() {
            return;
        }
        if failed && backoff.wait(&stop).await {
            return;
        }
    }
}

/// Reconnect backoff: 100 ms doubling to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }

    /// Sleeps; true if `stop` fired meanwhile.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://broker.example").unwrap(),
            ("broker.example".into(), 8883, true)
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
        assert!(parse_url("mqtt://h:port").is_err());
        assert!(parse_url("127.0.0.1:1883").is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("v5"), Some(Protocol::V5));
        assert_eq!(Protocol::parse("3.1.1"), Some(Protocol::V311));
        assert_eq!(Protocol::parse("v3"), None);
    }
}
