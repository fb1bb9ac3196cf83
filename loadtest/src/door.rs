//! How the simulated devices reach the pipeline: MQTT QoS 1 through the broker and the bridge
//! (the default, what devices do), or straight to Kafka (`--transport kafka`: the same device
//! JSON mapped to records by the same `fleet-ingest` parser the bridge uses, Avro-encoded
//! with the registry, keyed by vehicle id), to load the processors without the MQTT leg.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use fleet_ingest::{Identity, Kind, Limits, Parsed};
use fleet_runtime::testkit;
use fleet_schemas::{EmergencyEvent, Encoder, Registry, TelemetryReading};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Which door the devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// MQTT QoS 1 -> mosquitto -> mqtt-bridge -> Kafka.
    Mqtt,
    /// Straight to the Kafka topics (no bridge).
    Kafka,
}

/// One sending connection; `acked` counts messages the broker (MQTT PUBACK or Kafka delivery
/// report) acknowledged.
pub(crate) struct Publisher {
    door: Door,
    pub(crate) acked: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

enum Door {
    Mqtt(AsyncClient),
    Kafka(Arc<KafkaDoor>),
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Publisher {
    /// Sends one device message published to `topic` (`{prefix}/{vehicle}/{kind}`).
    pub(crate) async fn send(&self, topic: String, body: String) -> anyhow::Result<()> {
        match &self.door {
            Door::Mqtt(client) => Ok(client.publish(topic, QoS::AtLeastOnce, false, body).await?),
            Door::Kafka(k) => k.send(&topic, body.as_bytes()).await,
        }
    }
}

/// An MQTT connection as the stack's simulator account.
pub(crate) async fn publisher(i: usize) -> anyhow::Result<Publisher> {
    let creds = testkit::credentials();
    let port = std::env::var("FLEET_MQTT_URL")
        .ok()
        .and_then(|u| u.rsplit(':').next().and_then(|p| p.parse().ok()))
        .unwrap_or(1883);
    let mut o = MqttOptions::new(
        testkit::random_name(&format!("load-pub{i}")),
        "127.0.0.1",
        port,
    );
    o.set_credentials(
        &creds["FLEET_MQTT_SIMULATOR_USER"],
        &creds["FLEET_MQTT_SIMULATOR_PASSWORD"],
    )
    .set_keep_alive(Duration::from_secs(30))
    .set_inflight(1000);
    let (client, mut el) = AsyncClient::new(o, 20_000);
    let acked = Arc::new(AtomicUsize::new(0));
    let (a, connected) = (acked.clone(), Arc::new(AtomicBool::new(false)));
    let c2 = connected.clone();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => c2.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher {i}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    for _ in 0..100 {
        if connected.load(Ordering::Relaxed) {
            return Ok(Publisher {
                door: Door::Mqtt(client),
                acked,
                task: Some(task),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the simulator could not connect to MQTT on port {port} (is the stack up?)")
}

/// Counts delivery reports.
struct Counting {
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Straight to Kafka: the bridge's mapping without the bridge.
pub(crate) struct KafkaDoor {
    producer: ThreadedProducer<Counting>,
    telemetry: (String, Encoder<TelemetryReading>),
    emergencies: (String, Encoder<EmergencyEvent>),
    failed: Arc<AtomicUsize>,
}

impl KafkaDoor {
    async fn send(&self, mqtt_topic: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut levels = mqtt_topic.rsplit('/');
        let kind = levels.next().and_then(Kind::from_segment);
        let vehicle = levels.next();
        let (Some(kind), Some(vehicle)) = (kind, vehicle) else {
            bail!("{mqtt_topic}: not a device topic");
        };
        let who = Identity {
            vehicle_id: Some(vehicle),
            source: "loadtest",
        };
        let now = fleet_runtime::metrics::now_ms();
        let (topic, value) = match fleet_ingest::parse(kind, body, &who, now, &Limits::default()) {
            Ok(Parsed::Telemetry(r)) => (&self.telemetry.0, self.telemetry.1.encode(&r)?),
            Ok(Parsed::Emergency(e)) => (&self.emergencies.0, self.emergencies.1.encode(&e)?),
            Ok(Parsed::Delivery(_)) => bail!("deliveries are not simulated"),
            Err(e) => bail!("{mqtt_topic}: the simulator made a payload the bridge rejects: {e:?}"),
        };
        if self.failed.load(Ordering::Relaxed) > 0 {
            bail!("Kafka refused a simulated record");
        }
        loop {
            let record = BaseRecord::to(topic).key(vehicle).payload(&value);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
}

/// A Kafka producer (acks=all, idempotent, like the bridge) writing to `telemetry` and
/// `emergencies`.
pub(crate) async fn kafka_publisher(
    telemetry: &str,
    emergencies: &str,
) -> anyhow::Result<Publisher> {
    let registry = Registry::new(&testkit::registry_url())?;
    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create_with_context(Counting {
            acked: acked.clone(),
            failed: failed.clone(),
        })?;
    let door = KafkaDoor {
        producer,
        telemetry: (
            telemetry.to_owned(),
            Encoder::register(&registry, telemetry).await?,
        ),
        emergencies: (
            emergencies.to_owned(),
            Encoder::register(&registry, emergencies).await?,
        ),
        failed,
    };
    Ok(Publisher {
        door: Door::Kafka(Arc::new(door)),
        acked,
        task: None,
    })
}

impl Drop for KafkaDoor {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}
