//! Devices -> Kafka. See the crate docs for the delivery guarantee.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_ingest::{Identity, Limits, Parsed, parse, parse_topic};
use fleet_runtime::kafka;
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_schemas::{
    DeadLetter, DeliveryEvent, EmergencyEvent, Encoder, Record, TelemetryReading, ids,
};
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::message::Message as _;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{Client, Message, MqttEvent};
use crate::{BridgeConfig, Error, Result};

const COMPONENT: &str = "mqtt-bridge";
/// Rejections logged per second at most (all are counted).
const REJECT_LOG_PER_SEC: u32 = 20;

/// Where one kind of record goes.
#[derive(Debug)]
struct Route<T> {
    topic: Arc<str>,
    encoder: Encoder<T>,
    ok: Counter,
}

/// The Kafka side of the uplink: encoders, producers and counters.
pub struct Uplink {
    prefix: String,
    filters: Vec<String>,
    limits: Limits,
    /// Telemetry, deliveries and dead letters: batched.
    bulk: FutureProducer,
    /// Emergencies: linger 0.
    fast: FutureProducer,
    telemetry: Route<TelemetryReading>,
    emergencies: Route<EmergencyEvent>,
    deliveries: Route<DeliveryEvent>,
    dlq: Route<DeadLetter>,
    metrics: Arc<Metrics>,
    ack_latency: Histogram,
    redelivered: Counter,
    rejected: Vec<(&'static str, Counter)>,
    buf: Vec<u8>,
    key: Vec<u8>,
    log_budget: u32,
    log_window: Instant,
    suppressed: u64,
}

/// Encoders the uplink needs, registered by the caller.
#[derive(Debug)]
pub struct Encoders {
    /// TelemetryReading.
    pub telemetry: Encoder<TelemetryReading>,
    /// EmergencyEvent.
    pub emergencies: Encoder<EmergencyEvent>,
    /// DeliveryEvent.
    pub deliveries: Encoder<DeliveryEvent>,
    /// DeadLetter.
    pub dlq: Encoder<DeadLetter>,
}

/// What an uplink run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UplinkSummary {
    /// Messages written to Kafka and acknowledged to the broker.
    pub forwarded: u64,
    /// Messages dead-lettered and acknowledged.
    pub rejected: u64,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("prefix", &self.prefix)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

struct Pending {
    msg: Message,
    fut: DeliveryFuture,
    received: Instant,
    ok: Option<Counter>,
}

impl Uplink {
    /// Wires the uplink. `bulk` must be a throughput producer, `fast` a latency producer.
    pub fn new(
        cfg: &BridgeConfig,
        dlq_topic: &str,
        bulk: FutureProducer,
        fast: FutureProducer,
        enc: Encoders,
        metrics: Arc<Metrics>,
    ) -> Self {
        let route = |topic: &str| (Arc::<str>::from(topic), metrics.records(topic, "ok"));
        let (t, tc) = route(&cfg.telemetry_topic);
        let (e, ec) = route(&cfg.emergencies_topic);
        let (d, dc) = route(&cfg.deliveries_topic);
        let (q, qc) = (
            Arc::<str>::from(dlq_topic),
            metrics.records(dlq_topic, "dead_lettered"),
        );
        Self {
            prefix: cfg.topic_prefix.clone(),
            filters: cfg.filters(),
            limits: cfg.limits(),
            bulk,
            fast,
            telemetry: Route {
                topic: t,
                encoder: enc.telemetry,
                ok: tc,
            },
            emergencies: Route {
                topic: e,
                encoder: enc.emergencies,
                ok: ec,
            },
            deliveries: Route {
                topic: d,
                encoder: enc.deliveries,
                ok: dc,
            },
            dlq: Route {
                topic: q,
                encoder: enc.dlq,
                ok: qc,
            },
            ack_latency: metrics.latency("mqtt_to_kafka_ack"),
            redelivered: metrics.retries("mqtt_redelivered"),
            metrics,
            rejected: Vec::new(),
            buf: Vec::with_capacity(512),
            key: Vec::with_capacity(64),
            log_budget: REJECT_LOG_PER_SEC,
            log_window: Instant::now(),
            suppressed: 0,
        }
    }

    /// Runs until `shutdown` fires: forwards messages, acknowledges them once Kafka has them.
    /// On shutdown it stops taking messages, waits (up to `drain_timeout`) for the writes in
    /// flight, acknowledges them and disconnects; what was not acknowledged stays in the
    /// broker's session.
    pub async fn run(
        mut self,
        client: Client,
        mut events: mpsc::Receiver<MqttEvent>,
        max_pending: usize,
        drain_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<UplinkSummary> {
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(max_pending);
        // Acknowledgements the client's request queue could not take yet, in order. The uplink
        // never waits on that queue: the MQTT event loop may be waiting on us at that moment.
        let mut acks: VecDeque<Message> = VecDeque::new();
        let mut summary = UplinkSummary::default();
        self.metrics.health.set_dependency("mqtt", false);
        let mut report = tokio::time::interval(Duration::from_secs(5));
        loop {
            flush_acks(&client, &mut acks)?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                res = poll_fn(|cx| pending.front_mut().map_or(std::task::Poll::Pending, |p| p.fut.poll_unpin(cx))), if !pending.is_empty() => {
                    self.settle_head(&mut pending, &mut acks, res, &mut summary).await?;
                    // Everything behind it that is already acknowledged goes too, in order.
                    while let Some(res) = pending.front_mut().and_then(|p| (&mut p.fut).now_or_never()) {
                        self.settle_head(&mut pending, &mut acks, res, &mut summary).await?;
                    }
                }
                ev = events.recv(), if pending.len() < max_pending => match ev {
                    None => return Err(Error::Mqtt("MQTT event loop stopped".into())),
                    Some(MqttEvent::Message(msg)) => {
                        let p = self.forward(msg).await?;
                        pending.push_back(p);
                    }
                    Some(MqttEvent::Connected { session_present }) => {
                        tracing::info!(session_present, filters = ?self.filters, "MQTT connected; subscribing");
                        // Not awaited here: the request queue may be full of acknowledgements.
                        let (c, f) = (client.clone(), self.filters.clone());
                        tokio::spawn(async move {
                            if let Err(e) = c.subscribe(&f).await {
                                tracing::error!(error = %e, "subscribing failed");
                            }
                        });
                    }
                    // Ready once the broker granted the subscription: a new session has no
                    // subscription before that, and a device's message would find nobody.
                    Some(MqttEvent::Subscribed) => {
                        self.metrics.health.set_dependency("mqtt", true);
                    }
                    Some(MqttEvent::SubscribeRefused(codes)) => {
                        tracing::error!(%codes, filters = ?self.filters, "the broker refused a subscription (ACL?)");
                        self.metrics.health.set_dependency("mqtt", false);
                    }
                    Some(MqttEvent::Disconnected(why)) => {
                        tracing::warn!(error = %why, in_flight = pending.len(), "MQTT connection lost; reconnecting (unacknowledged messages will be redelivered)");
                        self.metrics.health.set_dependency("mqtt", false);
                    }
                    Some(MqttEvent::PubAck(_) | MqttEvent::Published(_)) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(2)), if !acks.is_empty() => {}
                _ = report.tick() => {
                    tracing::debug!(pending = pending.len(), acks_queued = acks.len(), events_queued = events.len(), forwarded = summary.forwarded, "uplink state");
                }
            }
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while let Some(head) = pending.front_mut() {
            match tokio::time::timeout_at(deadline, &mut head.fut).await {
                Ok(res) => {
                    self.settle_head(&mut pending, &mut acks, res, &mut summary)
                        .await?
                }
                Err(_) => {
                    tracing::warn!(
                        in_flight = pending.len(),
                        "drain timed out; the broker redelivers those messages"
                    );
                    break;
                }
            }
            flush_acks(&client, &mut acks)?;
        }
        while !acks.is_empty() && tokio::time::Instant::now() < deadline {
            flush_acks(&client, &mut acks)?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the event loop put the last acknowledgements on the wire before disconnecting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.disconnect().await;
        Ok(summary)
    }

    /// The head's Kafka write finished: queue its acknowledgement, or re-send it.
    async fn settle_head(
        &mut self,
        pending: &mut VecDeque<Pending>,
        acks: &mut VecDeque<Message>,
        res: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
        summary: &mut UplinkSummary,
    ) -> Result<()> {
        match res {
            Ok(Ok(_)) => {
                let Some(p) = pending.pop_front() else {
                    return Ok(());
                };
                acks.push_back(p.msg);
                self.ack_latency.observe(p.received.elapsed().as_secs_f64());
                match p.ok {
                    Some(c) => {
                        c.inc();
                        summary.forwarded += 1;
                    }
                    None => {
                        self.dlq.ok.inc();
                        summary.rejected += 1;
                    }
                }
                Ok(())
            }
            Ok(Err((e, owned))) => {
                // librdkafka gave up (message.timeout.ms): write it again, keep the order.
                self.metrics.retries("produce").inc();
                tracing::warn!(error = %e, topic = owned.topic(), "Kafka write failed; re-sending");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let producer = if owned.topic() == &*self.emergencies.topic {
                    &self.fast
                } else {
                    &self.bulk
                };
                let fut =
                    kafka::send(producer, owned.topic(), owned.key(), owned.payload()).await?;
                if let Some(head) = pending.front_mut() {
                    head.fut = fut;
                }
                Ok(())
            }
            Err(_) => Err(Error::Mqtt("the Kafka producer dropped a delivery".into())),
        }
    }

    /// Validates, encodes and produces one message (or its dead letter).
    async fn forward(&mut self, msg: Message) -> Result<Pending> {
        let received = Instant::now();
        let now = now_ms();
        if msg.dup() {
            self.redelivered.inc();
        }
        let outcome = match msg.topic() {
            None => Err(("unknown_topic", "topic is not UTF-8".to_owned(), None)),
            Some(topic) => match parse_topic(&self.prefix, topic) {
                Err(e) => Err(("unknown_topic", e.to_string(), None)),
                Ok((vehicle, kind)) => {
                    let who = Identity {
                        vehicle_id: Some(vehicle),
                        source: "mqtt",
                    };
                    parse(kind, msg.payload(), &who, now, &self.limits).map_err(|r| {
                        let detail = match &r.field {
                            Some(f) => format!("{} (field {f})", r.detail),
                            None => r.detail,
                        };
                        (r.reason.code(), detail, Some(vehicle.to_owned()))
                    })
                }
            },
        };
        self.key.clear();
        let (producer, route, ok) = match outcome {
            Ok(Parsed::Telemetry(r)) => {
                encode(&self.telemetry, &r, &mut self.buf)?;
                self.key.extend_from_slice(r.key().as_bytes());
                (&self.bulk, &self.telemetry.topic, Some(&self.telemetry.ok))
            }
            Ok(Parsed::Emergency(r)) => {
                encode(&self.emergencies, &r, &mut self.buf)?;
                self.key.extend_from_slice(r.key().as_bytes());
                (
                    &self.fast,
                    &self.emergencies.topic,
                    Some(&self.emergencies.ok),
                )
            }
            Ok(Parsed::Delivery(r)) => {
                encode(&self.deliveries, &r, &mut self.buf)?;
                self.key.extend_from_slice(r.key().as_bytes());
                (
                    &self.bulk,
                    &self.deliveries.topic,
                    Some(&self.deliveries.ok),
                )
            }
            Err((reason, detail, vehicle)) => {
                let dl = self.dead_letter(&msg, reason, detail, vehicle, now);
                encode(&self.dlq, &dl, &mut self.buf)?;
                // Keyed like the source: the vehicle, or the MQTT topic when there is none.
                let key = dl
                    .source_key
                    .as_deref()
                    .unwrap_or(dl.source_topic.as_bytes());
                self.key.extend_from_slice(key);
                (&self.bulk, &self.dlq.topic, None)
            }
        };
        let fut = kafka::send(producer, route, Some(&self.key), Some(&self.buf)).await?;
        Ok(Pending {
            msg,
            fut,
            received,
            ok: ok.cloned(),
        })
    }

    fn dead_letter(
        &mut self,
        msg: &Message,
        reason: &'static str,
        detail: String,
        vehicle: Option<String>,
        now: i64,
    ) -> DeadLetter {
        let topic = msg.topic_lossy();
        let counter = match self.rejected.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.clone(),
            None => {
                let c = self.metrics.dead_letters(reason);
                self.rejected.push((reason, c.clone()));
                c
            }
        };
        counter.inc();
        if self.log_window.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "more messages rejected than logged (see fleet_processor_dead_letters_total)"
                );
            }
            self.log_window = Instant::now();
            self.log_budget = REJECT_LOG_PER_SEC;
            self.suppressed = 0;
        }
        if self.log_budget > 0 {
            self.log_budget -= 1;
            tracing::warn!(reason, %detail, mqtt_topic = %topic, bytes = msg.payload().len(), "message rejected to the dead-letter topic");
        } else {
            self.suppressed += 1;
        }
        let payload_text = String::from_utf8_lossy(msg.payload());
        DeadLetter {
            event_id: ids::derived_id(&[COMPONENT, &topic, &payload_text]),
            reason: reason.to_owned(),
            detail,
            component: COMPONENT.to_owned(),
            source_system: "mqtt".to_owned(),
            source_topic: topic,
            source_partition: None,
            source_offset: None,
            source_key: vehicle.map(String::into_bytes),
            original: None,
            event_time: now,
            ingest_time: now,
            original_size: None,
            original_sha256: None,
        }
        .with_original(Some(msg.payload()))
    }
}

/// Hands queued acknowledgements to the client, in order, as far as its queue takes them.
fn flush_acks(client: &Client, acks: &mut VecDeque<Message>) -> Result<()> {
    while let Some(m) = acks.front() {
        if !client.try_ack(m)? {
            break;
        }
        acks.pop_front();
    }
    Ok(())
}

fn encode<T: Record>(route: &Route<T>, record: &T, buf: &mut Vec<u8>) -> Result<()> {
    route.encoder.encode_into(record, buf).map_err(|e| {
        Error::Runtime(fleet_runtime::Error::Fatal(format!(
            "encoding {}: {e}",
            T::FULL_NAME
        )))
    })
}
