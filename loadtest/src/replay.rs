//! `replay` scenario: re-sends a recorded stream at its original pace, scaled, or as fast as
//! possible, and checks it all arrived in Kafka.
//!
//! Sources:
//! * a **JSON lines** file of device messages, as devices publish them (`vehicleId`,
//!   `timestamp`, `location`, ...; a line with a `type` field is an emergency); lines that are
//!   not JSON objects with a `vehicleId` and a `timestamp` are counted and skipped;
//! * a **lake partition**: the committed Parquet files of a topic of TelemetryReadings, all of
//!   them or those under one partition directory (`date=2026-11-23/hour=10`), turned back into
//!   device messages (the lake's columns map one to one onto the device fields).
//!
//! Message `i` is due `(timestamp_i - timestamp_0) / speed` after the start (`--speed 0`: no
//! pacing). Its `timestamp` is moved to its due time (the pipeline sees a live stream; keep
//! the recorded ones with `--keep-timestamps`, within the ingest's 7-day window) and `sentAt`
//! is the due time, so latency is measured from when it should have been sent (no coordinated
//! omission). Recorded `eventId`s are kept: replaying the same file into the same topics twice
//! is de-duplicated downstream, like a device re-sending.
//!
//! Transport as in the demo: MQTT through an `mqtt-bridge` it starts (default) or straight
//! to Kafka. Topics: fresh ones unless `--telemetry-topic` / `--emergencies-topic` name
//! existing ones (e.g. the running pipeline's). The report gives what was read, sent and
//! acknowledged, how far behind schedule the sender fell, and how many of the sent messages a
//! reader found in Kafka (by event id) with their device -> Kafka latency.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_ingest::Kind;
use fleet_runtime::testkit;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::door::{Publisher, Transport, kafka_publisher, publisher};
use crate::mqtt::{Topics, follow, start_bridge};
use crate::telemetry::{Percentiles, free_port, percentiles};

/// One message to re-send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub(crate) kind: Kind,
    pub(crate) vehicle: String,
    /// The recorded timestamp, ms.
    pub(crate) ts: i64,
    /// The device JSON (its `timestamp` and `sentAt` are set when it is sent).
    pub(crate) body: Map<String, Value>,
}

/// Messages of a JSON lines text, in timestamp order, and the number of lines skipped.
pub(crate) fn from_json_lines(text: &str) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(body)) => match message(body) {
                Some(m) => out.push(m),
                None => skipped += 1,
            },
            _ => skipped += 1,
        }
    }
    // Stable: equal timestamps keep their file order.
    out.sort_by_key(|m| m.ts);
    (out, skipped)
}

fn message(body: Map<String, Value>) -> Option<Message> {
    let vehicle = body
        .get("vehicleId")
        .or_else(|| body.get("vehicle_id"))?
        .as_str()?
        .to_owned();
    let ts = body.get("timestamp")?.as_i64()?;
    let kind = if body.contains_key("type") {
        Kind::Emergency
    } else {
        Kind::Telemetry
    };
    Some(Message {
        kind,
        vehicle,
        ts,
        body,
    })
}

/// A lake row (TelemetryReading columns as [`lake_rows`] renders them: timestamps in ms) as
/// the device message it came from; `None` when it lacks a vehicle, a time or a position.
pub(crate) fn from_lake_row(row: &Map<String, Value>) -> Option<Message> {
    let vehicle = row.get("vehicle_id")?.as_str()?.to_owned();
    let ts = row.get("event_time")?.as_i64()?;
    let pos = row.get("position")?.as_object()?;
    let mut location = Map::new();
    for (from, to) in [
        ("lat", "lat"),
        ("lon", "lon"),
        ("altitude_m", "altitude"),
        ("accuracy_m", "accuracy"),
    ] {
        if let Some(v) = pos.get(from).filter(|v| !v.is_null()) {
            location.insert(to.to_owned(), v.clone());
        }
    }
    let mut body = Map::new();
    body.insert("vehicleId".into(), Value::String(vehicle.clone()));
    if let Some(id) = row.get("event_id").filter(|v| v.is_string()) {
        body.insert("eventId".into(), id.clone());
    }
    body.insert("timestamp".into(), Value::from(ts));
    body.insert("location".into(), Value::Object(location));
    for (from, to) in [
        ("speed_kmh", "speed"),
        ("heading_deg", "heading"),
        ("cargo_temp_c", "cargo_temperature"),
        ("door_open", "doorOpen"),
        ("ignition_on", "ignition"),
        ("accel_mps2", "acceleration"),
        ("odometer_km", "odometer"),
        ("battery_v", "battery"),
        ("camera_active", "cameraActive"),
    ] {
        if let Some(v) = row.get(from).filter(|v| !v.is_null()) {
            body.insert(to.to_owned(), v.clone());
        }
    }
    Some(Message {
        kind: Kind::Telemetry,
        vehicle,
        ts,
        body,
    })
}

/// When message `i` is due, ms after the start: recorded gaps divided by `speed` (0: at once).
pub(crate) fn due_ms(first_ts: i64, ts: i64, speed: f64) -> i64 {
    if speed <= 0.0 {
        0
    } else {
        ((ts - first_ts).max(0) as f64 / speed) as i64
    }
}

/// The device message to publish: `timestamp` moved to the due time unless `keep`, `sentAt`
/// the due time.
pub(crate) fn render(m: &Message, prefix: &str, due_at_ms: i64, keep: bool) -> (String, String) {
    let mut body = m.body.clone();
    if !keep {
        body.insert("timestamp".into(), Value::from(due_at_ms));
    }
    body.insert("sentAt".into(), Value::from(due_at_ms));
    let topic = format!("{prefix}/{}/{}", m.vehicle, m.kind.as_str());
    (topic, Value::Object(body).to_string())
}

/// Every row of the committed lake files of `topic` (under `partition` when given).
async fn lake_messages(
    url: &str,
    topic: &str,
    partition: Option<&str>,
) -> anyhow::Result<(Vec<Message>, usize)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let lake = fleet_lake::Lake::open(url)?;
    let mut out = Vec::new();
    let mut skipped = 0;
    let files = fleet_lake::catalog::data_files(&lake, topic, partition).await?;
    if files.is_empty() {
        bail!("no committed files of {topic} under {url} (partition {partition:?})");
    }
    for f in files.values().flatten() {
        let Some(bytes) = lake.get(&f.rel).await? else {
            bail!("listed lake file {} is gone", f.rel);
        };
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
            for row in &lake_rows(&batch?)? {
                match from_lake_row(row) {
                    Some(m) => out.push(m),
                    None => skipped += 1,
                }
            }
        }
    }
    out.sort_by_key(|m| m.ts);
    Ok((out, skipped))
}

/// The rows of a lake batch as JSON objects, timestamp columns as ms since the epoch.
fn lake_rows(batch: &arrow::record_batch::RecordBatch) -> anyhow::Result<Vec<Map<String, Value>>> {
    let batch = millis_as_numbers(batch)?;
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(&batch)?;
    w.finish()?;
    Ok(serde_json::from_slice(&w.into_inner())?)
}

/// The batch with its timestamp columns as plain numbers (arrow's JSON writer cannot render a
/// named zone such as the lake's "UTC" without chrono-tz).
fn millis_as_numbers(
    batch: &arrow::record_batch::RecordBatch,
) -> anyhow::Result<arrow::record_batch::RecordBatch> {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Timestamp(unit, _) => {
                let ms = arrow::compute::cast(c, &DataType::Timestamp(*unit, None))?;
                let ms =
                    arrow::compute::cast(&ms, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                columns.push(arrow::compute::cast(&ms, &DataType::Int64)?);
                fields.push(Field::new(f.name(), DataType::Int64, f.is_nullable()));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    Ok(arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// What `replay` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// JSON lines file of device messages (as devices publish them).
    #[arg(long, conflicts_with = "lake")]
    pub(crate) file: Option<PathBuf>,
    /// Lake URL (directory or s3://bucket/prefix) whose committed files to replay.
    #[arg(long)]
    pub(crate) lake: Option<String>,
    /// Topic whose lake files to replay (with --lake).
    #[arg(long)]
    pub(crate) lake_topic: Option<String>,
    /// Only this partition directory, e.g. date=2026-11-23/hour=10 (with --lake).
    #[arg(long)]
    pub(crate) partition: Option<String>,
    /// Pace: 1 = as recorded, 10 = ten times faster, 0 = as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) speed: f64,
    /// Keep the recorded timestamps (default: move each to its send time).
    #[arg(long)]
    pub(crate) keep_timestamps: bool,
    /// How the messages reach Kafka.
    #[arg(long, value_enum, default_value = "mqtt")]
    pub(crate) transport: Transport,
    /// Sending connections (a vehicle's messages always share one, in order).
    #[arg(long, default_value_t = 2)]
    pub(crate) connections: usize,
    /// Existing telemetry topic to write (default: a fresh one).
    #[arg(long)]
    pub(crate) telemetry_topic: Option<String>,
    /// Existing emergencies topic to write (default: a fresh one).
    #[arg(long)]
    pub(crate) emergencies_topic: Option<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub(crate) struct ReplayReport {
    source: String,
    speed: f64,
    transport: Transport,
    telemetry_topic: String,
    emergencies_topic: String,
    /// Messages read from the source / skipped (not a device message).
    read: usize,
    skipped: usize,
    sent: usize,
    acked: usize,
    /// Recorded span and how long the replay took, s.
    recorded_span_s: f64,
    replay_s: f64,
    achieved_rate: f64,
    /// How late each send was against its due time, ms.
    behind_schedule_ms: Percentiles,
    /// Sent messages a reader found in Kafka by event id (messages without one: not checked).
    checked: usize,
    found_in_kafka: usize,
    missing: usize,
    /// Due time -> record read from Kafka, ms.
    device_to_kafka_ms: Percentiles,
}

pub(crate) async fn run(a: ReplayArgs) -> anyhow::Result<ReplayReport> {
    let (source, (messages, skipped)) = match (&a.file, &a.lake) {
        (Some(f), None) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            (f.display().to_string(), from_json_lines(&text))
        }
        (None, Some(url)) => {
            let topic = a
                .lake_topic
                .as_deref()
                .context("--lake needs --lake-topic (the topic whose files to replay)")?;
            (
                format!("{url} {topic} {}", a.partition.as_deref().unwrap_or("")),
                lake_messages(url, topic, a.partition.as_deref()).await?,
            )
        }
        _ => bail!("give either --file or --lake"),
    };
    if messages.is_empty() {
        bail!("{source}: nothing to replay ({skipped} lines/rows skipped)");
    }
    let run_id = testkit::random_name("replay").replace('.', "");
    // Fresh topics, but the telemetry and emergencies ones the user named (left as they are).
    let mut t = Topics::fresh("replay", &run_id);
    if let Some(x) = &a.telemetry_topic {
        t.telemetry = x.clone();
    }
    if let Some(x) = &a.emergencies_topic {
        t.emergencies = x.clone();
    }
    t.create(&[]).await;
    // Read back what is sent, by event id.
    let want: HashSet<String> = messages
        .iter()
        .filter_map(|m| m.body.get("eventId")?.as_str().map(str::to_owned))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let found = Arc::new(Mutex::new((HashSet::<String>::new(), Vec::<u64>::new())));
    let readers = {
        let mut r = Vec::new();
        for topic in [&t.telemetry, &t.emergencies] {
            let (found, want) = (found.clone(), want.clone());
            let on = move |id: &str, sent: Option<i64>, now: i64| {
                if want.contains(id)
                    && let Ok(mut f) = found.lock()
                    && f.0.insert(id.to_owned())
                    && let Some(s) = sent
                {
                    f.1.push((now - s).max(0) as u64);
                }
            };
            if topic == &t.telemetry {
                r.push(follow(
                    topic,
                    50,
                    stop.clone(),
                    move |x: fleet_schemas::TelemetryReading, now| {
                        on(&x.event_id, x.sent_time, now)
                    },
                )?);
            } else {
                r.push(follow(
                    topic,
                    50,
                    stop.clone(),
                    move |x: fleet_schemas::EmergencyEvent, now| on(&x.event_id, x.sent_time, now),
                )?);
            }
        }
        r
    };
    let mut bridge = None;
    if a.transport == Transport::Mqtt {
        let port = free_port();
        bridge = Some(start_bridge(&t, port)?);
        if !crate::wait_ready(port, 60).await {
            if let Some(b) = &mut bridge {
                crate::terminate(b);
            }
            bail!("mqtt-bridge did not become ready");
        }
    }
    let mut pubs: Vec<Arc<Publisher>> = Vec::new();
    for i in 0..a.connections.max(1) {
        pubs.push(Arc::new(match a.transport {
            Transport::Mqtt => publisher(i).await?,
            Transport::Kafka => kafka_publisher(&t.telemetry, &t.emergencies).await?,
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Each vehicle's messages go through one connection, in order.
    let messages = Arc::new(messages);
    let first_ts = messages[0].ts;
    let start = Instant::now();
    let start_ms = fleet_runtime::metrics::now_ms();
    let mut handles = Vec::new();
    for (k, p) in pubs.iter().enumerate() {
        let (p, messages, prefix, n) = (p.clone(), messages.clone(), t.prefix.clone(), pubs.len());
        let (speed, keep) = (a.speed, a.keep_timestamps);
        handles.push(tokio::spawn(async move {
            let mut late = Vec::new();
            let mut sent = 0usize;
            for m in messages.iter() {
                if vehicle_slot(&m.vehicle, n) != k {
                    continue;
                }
                let due = due_ms(first_ts, m.ts, speed);
                let due_at = start + Duration::from_millis(due as u64);
                let now = Instant::now();
                if due_at > now {
                    tokio::time::sleep(due_at - now).await;
                }
                late.push(due_at.elapsed().as_millis() as u64);
                let due_at_ms = if speed > 0.0 {
                    start_ms + due
                } else {
                    fleet_runtime::metrics::now_ms()
                };
                let (topic, body) = render(m, &prefix, due_at_ms, keep);
                if let Err(e) = p.send(topic, body).await {
                    eprintln!("publisher {k}: {e:#}");
                    break;
                }
                sent += 1;
            }
            (sent, late)
        }));
    }
    let mut sent = 0;
    let mut late = Vec::new();
    for h in handles {
        let (s, l) = h.await?;
        sent += s;
        late.extend(l);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let acked = || {
        pubs.iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .sum::<usize>()
    };
    while acked() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay_s = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while found.lock().map(|f| f.0.len()).unwrap_or(0) < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    if let Some(b) = &mut bridge {
        crate::terminate(b);
    }
    let acked = acked();
    drop(pubs);
    let (found_ids, lat) = found.lock().map(|f| f.clone()).unwrap_or_default();
    let span = (messages[messages.len() - 1].ts - first_ts) as f64 / 1000.0;
    Ok(ReplayReport {
        source,
        speed: a.speed,
        transport: a.transport,
        telemetry_topic: t.telemetry,
        emergencies_topic: t.emergencies,
        read: messages.len(),
        skipped,
        sent,
        acked,
        recorded_span_s: span,
        replay_s: (replay_s * 10.0).round() / 10.0,
        achieved_rate: (sent as f64 / replay_s.max(1e-6)).round(),
        behind_schedule_ms: percentiles(late),
        checked: want.len(),
        found_in_kafka: found_ids.len(),
        missing: want.len() - found_ids.len(),
        device_to_kafka_ms: percentiles(lat),
    })
}

/// The connection that carries `vehicle`'s messages (so they stay in order).
fn vehicle_slot(vehicle: &str, n: usize) -> usize {
    let h = vehicle.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_in_time_order_with_bad_lines_counted() {
        let text = r#"
{"vehicleId":"VEH-1","timestamp":2000,"location":{"lat":4.6,"lon":-74.1},"speed":50}
not json
{"vehicleId":"VEH-2","timestamp":1000,"type":"panic_button","severity":"critical"}
{"timestamp":1500}
[1,2]
{"vehicle_id":"VEH-3","timestamp":2000,"location":{"lat":4.7,"lon":-74.0}}
"#;
        let (m, skipped) = from_json_lines(text);
        assert_eq!(skipped, 3);
        let got: Vec<(&str, i64, Kind)> = m
            .iter()
            .map(|m| (m.vehicle.as_str(), m.ts, m.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("VEH-2", 1000, Kind::Emergency),
                ("VEH-1", 2000, Kind::Telemetry),
                ("VEH-3", 2000, Kind::Telemetry),
            ]
        );
    }

    #[test]
    fn pacing_scales_recorded_gaps() {
        assert_eq!(due_ms(1_000, 1_000, 1.0), 0);
        assert_eq!(due_ms(1_000, 61_000, 1.0), 60_000);
        assert_eq!(due_ms(1_000, 61_000, 10.0), 6_000);
        assert_eq!(due_ms(1_000, 61_000, 0.5), 120_000);
        assert_eq!(due_ms(1_000, 61_000, 0.0), 0);
        // Out-of-order timestamps never schedule before the start.
        assert_eq!(due_ms(1_000, 500, 1.0), 0);
    }

    #[test]
    fn rendering_retimes_unless_asked_not_to() {
        let (m, _) =
            from_json_lines(r#"{"vehicleId":"VEH-1","eventId":"e1","timestamp":5,"speed":1}"#);
        let (topic, body) = render(&m[0], "test/x", 9_000, false);
        assert_eq!(topic, "test/x/VEH-1/telemetry");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["timestamp"], 9_000);
        assert_eq!(v["sentAt"], 9_000);
        assert_eq!(v["eventId"], "e1");
        let (_, body) = render(&m[0], "test/x", 9_000, true);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["timestamp"], 5);
    }

    #[test]
    fn a_lake_row_becomes_the_device_message_the_bridge_maps_back() {
        let row: Map<String, Value> = serde_json::from_str(
            r#"{"event_id":"e-9","vehicle_id":"VEH-00009","event_time":1795428000250,
                "ingest_time":1795428000300,"position":{"lat":4.61,"lon":-74.08,"altitude_m":null},
                "speed_kmh":61.5,"heading_deg":90.0,"cargo_temp_c":4.2,"ignition_on":true,
                "odometer_km":123.4,"source":"mqtt","_kafka_partition":3,"_kafka_offset":77}"#,
        )
        .unwrap();
        let m = from_lake_row(&row).unwrap();
        assert_eq!(m.ts, 1_795_428_000_250);
        let (_, body) = render(&m, "p", m.ts, true);
        let who = fleet_ingest::Identity {
            vehicle_id: Some("VEH-00009"),
            source: "mqtt",
        };
        let parsed = fleet_ingest::parse(
            Kind::Telemetry,
            body.as_bytes(),
            &who,
            m.ts + 10,
            &fleet_ingest::Limits::default(),
        )
        .unwrap();
        let fleet_ingest::Parsed::Telemetry(r) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(r.event_id, "e-9");
        assert_eq!(r.event_time, m.ts);
        assert_eq!((r.position.lat, r.position.lon), (4.61, -74.08));
        assert_eq!(r.position.altitude_m, None);
        assert_eq!(r.speed_kmh, Some(61.5));
        assert_eq!(r.heading_deg, Some(90.0));
        assert_eq!(r.cargo_temp_c, Some(4.2));
        assert_eq!(r.ignition_on, Some(true));
        assert_eq!(r.odometer_km, Some(123.4));
        // Rows without a position or a time are not device messages.
        let mut bad = row.clone();
        bad.remove("position");
        assert!(from_lake_row(&bad).is_none());
    }

    #[test]
    fn lake_batches_render_timestamps_as_millis() {
        use arrow::array::{
            ArrayRef, Float64Array, StringArray, StructArray, TimestampMillisecondArray,
        };
        use arrow::datatypes::{DataType, Field};
        use std::sync::Arc;
        let position = StructArray::from(vec![
            (
                Arc::new(Field::new("lat", DataType::Float64, false)),
                Arc::new(Float64Array::from(vec![4.61])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("lon", DataType::Float64, false)),
                Arc::new(Float64Array::from(vec![-74.08])) as ArrayRef,
            ),
        ]);
        // As the lake stores it: timestamp-millis with the "UTC" zone.
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "vehicle_id",
                Arc::new(StringArray::from(vec!["VEH-1"])) as ArrayRef,
            ),
            (
                "event_time",
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_795_428_000_250]).with_timezone("UTC"),
                ) as ArrayRef,
            ),
            ("position", Arc::new(position) as ArrayRef),
        ])
        .unwrap();
        let rows = lake_rows(&batch).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["event_time"], 1_795_428_000_250_i64);
        let m = from_lake_row(&rows[0]).unwrap();
        assert_eq!((m.vehicle.as_str(), m.ts), ("VEH-1", 1_795_428_000_250));
        assert_eq!(m.body["location"]["lat"], 4.61);
    }

    #[test]
    fn a_vehicle_always_uses_the_same_connection() {
        for v in ["VEH-1", "VEH-2", "VEH-00042"] {
            let s = vehicle_slot(v, 4);
            assert!(s < 4);
            assert_eq!(s, vehicle_slot(v, 4));
        }
        assert_eq!(vehicle_slot("VEH-1", 1), 0);
    }
}
