//! `fleetctl profiles load`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use fleet_runtime::config::KafkaConfig;
use fleet_runtime::kafka::{self, TopicSpec};
use fleet_schemas::{Contact, Encoder, GeofenceCircle, Registry, VehicleProfile, Waypoint, ids};
use rdkafka::producer::Producer as _;
use serde::Deserialize;

/// A profile as written in the file: the Avro record's fields, ids and times optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileInput {
    #[serde(default)]
    event_id: Option<String>,
    vehicle_id: String,
    #[serde(default)]
    updated_at: Option<i64>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    cargo_temp_min_c: Option<f64>,
    #[serde(default)]
    cargo_temp_max_c: Option<f64>,
    #[serde(default)]
    speed_limit_kmh: Option<f64>,
    #[serde(default)]
    offline_after_ms: Option<i64>,
    #[serde(default)]
    route_corridor_m: Option<f64>,
    #[serde(default)]
    route: Vec<Waypoint>,
    #[serde(default)]
    geofences: Vec<GeofenceCircle>,
    #[serde(default)]
    contacts: Vec<Contact>,
}

fn parse(text: &str) -> anyhow::Result<Vec<ProfileInput>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).context("parsing the JSON array");
    }
    trimmed
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
        .collect()
}

/// Validates the profiles in `file` and publishes them to `topic` (all or nothing: nothing is
/// published if one is invalid, and the publishing is one Kafka transaction).
pub(crate) async fn load(
    brokers: String,
    registry_url: &str,
    file: &Path,
    topic: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    // The domain's defaults: what a profile sets is validated the same whatever defaults a
    // processor puts under the values it leaves out.
    let defaults = fleet_domain::rules::Thresholds::default();
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for p in parse(&text)? {
        let body = serde_json::to_string(&(&p.vehicle_id, p.updated_at, now)).unwrap_or_default();
        let record = VehicleProfile {
            event_id: p
                .event_id
                .unwrap_or_else(|| ids::derived_id(&["profile", &body])),
            vehicle_id: p.vehicle_id,
            updated_at: p.updated_at.unwrap_or(now),
            customer_id: p.customer_id,
            cargo_temp_min_c: p.cargo_temp_min_c,
            cargo_temp_max_c: p.cargo_temp_max_c,
            speed_limit_kmh: p.speed_limit_kmh,
            offline_after_ms: p.offline_after_ms,
            route_corridor_m: p.route_corridor_m,
            route: p.route,
            geofences: p.geofences,
            contacts: p.contacts,
        };
        if record.vehicle_id.is_empty() {
            errors.push("a profile without a vehicle_id".to_owned());
            continue;
        }
        if let Err(e) = fleet_schemas::profile::profile_entry(record.clone(), &defaults) {
            errors.push(format!("{}: {e}", record.vehicle_id));
        }
        records.push(record);
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("invalid profile: {e}");
        }
        bail!("{} invalid profile(s); nothing published", errors.len());
    }
    if dry_run {
        println!(
            "{} profile(s) valid (dry run: nothing published)",
            records.len()
        );
        return Ok(());
    }
    let kcfg = KafkaConfig {
        brokers,
        ..KafkaConfig::default()
    };
    kafka::ensure_topics(&kcfg, &[TopicSpec::table(topic, kcfg.default_partitions)]).await?;
    let registry = Registry::new(registry_url)?;
    let encoder = Encoder::<VehicleProfile>::register(&registry, topic)
        .await
        .context("registering the VehicleProfile schema")?;
    // One Kafka transaction: readers (read_committed, librdkafka's default) see every profile
    // of the file or none; a concurrent load to the same topic is fenced by the shared id.
    let producer = kafka::transactional_producer(&kcfg, &format!("fleetctl-profiles-{topic}"))?;
    producer.begin_transaction()?;
    if let Err(e) = send_all(&producer, &encoder, topic, &records).await {
        let _ = producer.abort_transaction(Duration::from_secs(30));
        return Err(e.context("nothing published (transaction aborted)"));
    }
    producer
        .commit_transaction(Duration::from_secs(60))
        .context("committing the transaction (nothing published)")?;
    println!("{} profile(s) published to {topic}", records.len());
    Ok(())
}

async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    encoder: &Encoder<VehicleProfile>,
    topic: &str,
    records: &[VehicleProfile],
) -> Result<()> {
    let mut acks = Vec::with_capacity(records.len());
    for r in records {
        let payload = encoder.encode(r)?;
        acks.push(
            kafka::send(
                producer,
                topic,
                Some(r.vehicle_id.as_bytes()),
                Some(&payload),
            )
            .await?,
        );
    }
    for a in acks {
        match a.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("the broker refused a profile: {e}"),
            Err(_) => bail!("the producer dropped a delivery"),
        }
    }
    Ok(())
}
