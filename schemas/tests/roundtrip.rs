//! Every record survives encode -> decode, through the wire format and through a real
//! (dev) registry; a reader with a newer schema reads data written with an older one.

use std::collections::BTreeMap;

use fleet_schemas::*;

fn pos(lat: f64, lon: f64) -> Position {
    Position {
        lat,
        lon,
        altitude_m: Some(2640.5),
        accuracy_m: None,
    }
}

fn telemetry(full: bool) -> TelemetryReading {
    TelemetryReading {
        event_id: ids::derived_id(&["VEH-TEST-001", "1698765432000"]),
        vehicle_id: "VEH-TEST-001".into(),
        event_time: 1_698_765_432_000,
        ingest_time: 1_698_765_432_123,
        sent_time: full.then_some(1_698_765_432_010),
        position: pos(4.6097, -74.0817),
        speed_kmh: Some(65.5),
        heading_deg: full.then_some(271.0),
        cargo_temp_c: Some(-18.25),
        door_open: full.then_some(false),
        ignition_on: Some(true),
        accel_mps2: full.then_some(-3.5),
        odometer_km: full.then_some(120_345.6),
        battery_v: full.then_some(12.6),
        camera_active: full.then_some(true),
        source: "mqtt".into(),
    }
}

fn emergency() -> EmergencyEvent {
    EmergencyEvent {
        event_id: ids::random_id(),
        vehicle_id: "VEH-7".into(),
        event_time: 1,
        ingest_time: 2,
        sent_time: None,
        kind: EmergencyKind::PanicButton,
        severity: Severity::Critical,
        position: Some(pos(6.2442, -75.5812)),
        description: Some("driver pressed panic".into()),
        source_anomaly_id: None,
        source: "mqtt".into(),
    }
}

fn anomaly() -> Anomaly {
    Anomaly {
        event_id: ids::random_id(),
        vehicle_id: "VEH-7".into(),
        event_time: 10,
        ingest_time: 11,
        sent_time: Some(9),
        kind: AnomalyKind::RouteDeviation,
        state: AnomalyState::Cleared,
        severity: Severity::High,
        value: Some(812.0),
        threshold: Some(500.0),
        position: None,
        message: "812 m off the planned route".into(),
        trigger_event_id: Some(ids::random_id()),
    }
}

fn window() -> WindowAggregate {
    WindowAggregate {
        event_id: ids::derived_id(&["VEH-7", "0", "60000"]),
        vehicle_id: "VEH-7".into(),
        window_start: 0,
        window_end: 60_000,
        event_time: 59_000,
        ingest_time: 91_000,
        count: 12,
        speed_avg_kmh: Some(54.2),
        speed_max_kmh: Some(88.0),
        cargo_temp_min_c: None,
        cargo_temp_avg_c: None,
        cargo_temp_max_c: None,
        distance_m: 903.3,
        moving_s: 55.0,
        idle_s: 4.0,
        first_position: Some(pos(1.0, 2.0)),
        last_position: Some(pos(1.001, 2.002)),
        first_event_time: 1_000,
        late_records: 2,
    }
}

fn notification() -> Notification {
    Notification {
        event_id: ids::random_id(),
        recipient: "owner:acme".into(),
        channel: Channel::Webhook,
        vehicle_id: "VEH-7".into(),
        severity: Severity::High,
        subject: "Panic button".into(),
        body: "VEH-7 driver pressed the panic button at 6.2442,-75.5812".into(),
        source_event_id: ids::random_id(),
        source_kind: "emergency.PANIC_BUTTON".into(),
        event_time: 5,
        ingest_time: 6,
        sent_time: Some(4),
    }
}

fn command() -> DeviceCommand {
    DeviceCommand {
        event_id: ids::random_id(),
        vehicle_id: "VEH-7".into(),
        command: CommandKind::StartCamera,
        params: BTreeMap::from([("duration_s".to_string(), "300".to_string())]),
        reason: "incident 42".into(),
        event_time: 5,
        ingest_time: 6,
        expires_at: Some(600_006),
    }
}

fn delivery() -> DeliveryEvent {
    DeliveryEvent {
        event_id: ids::random_id(),
        delivery_id: "DLV-1".into(),
        vehicle_id: "VEH-7".into(),
        driver_id: Some("driver-9".into()),
        kind: DeliveryKind::PickedUp,
        event_time: 5,
        ingest_time: 6,
        sent_time: None,
        position: Some(pos(10.9685, -74.7813)),
        destination: Some(pos(10.99, -74.8)),
        destination_radius_m: Some(75.0),
        promised_by: Some(1_000_000),
        note: Some("ñandú — unicode ok".into()),
        reassigned_by: Some("dispatch-backend".into()),
    }
}

fn profile() -> VehicleProfile {
    VehicleProfile {
        event_id: "5f0c1a52-2a9d-4c1e-9a51-000000000001".into(),
        vehicle_id: "VEH-TEST-001".into(),
        updated_at: 1_698_765_432_000,
        customer_id: Some("acme".into()),
        cargo_temp_min_c: Some(2.0),
        cargo_temp_max_c: Some(8.0),
        speed_limit_kmh: Some(90.0),
        offline_after_ms: Some(120_000),
        route_corridor_m: None,
        route: vec![
            Waypoint {
                lat: 4.711,
                lon: -74.0721,
            },
            Waypoint {
                lat: 6.2442,
                lon: -75.5812,
            },
        ],
        geofences: vec![GeofenceCircle {
            id: "depot-bog".into(),
            lat: 4.711,
            lon: -74.0721,
            radius_m: 400.0,
            planned_stop: true,
        }],
        contacts: vec![Contact {
            role: ContactRole::Owner,
            channel: Channel::Webhook,
            address: "https://acme.example/hooks/fleet".into(),
        }],
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        event_id: ids::random_id(),
        reason: "decode_error".into(),
        detail: "magic byte is 0x7b".into(),
        component: "passthrough-processor".into(),
        source_system: "kafka".into(),
        source_topic: "fleet.telemetry".into(),
        source_partition: Some(3),
        source_offset: Some(1_234_567),
        source_key: Some(b"VEH-7".to_vec()),
        original: None,
        event_time: 5,
        ingest_time: 6,
        original_size: None,
        original_sha256: None,
    }
    .with_original(Some(&[0x7b, 0x00, 0xff, 0xfe]))
}

#[test]
fn a_dead_letter_carries_at_most_256_kib_of_the_original_and_its_digest() {
    let big = vec![0xabu8; 1_000_000];
    let dl = DeadLetter {
        source_key: Some(vec![b'k'; 100_000]),
        detail: "é".repeat(10_000),
        ..dead_letter()
    }
    .with_original(Some(&big));
    assert_eq!(dl.original.as_ref().map(Vec::len), Some(256 * 1024));
    assert_eq!(dl.original_size, Some(1_000_000));
    let sha = dl.original_sha256.clone().expect("digest");
    assert_eq!(sha.len(), 64);
    assert_eq!(dl.source_key.as_ref().map(Vec::len), Some(16 * 1024));
    assert!(dl.detail.len() <= 8 * 1024 + 20 && dl.detail.ends_with("(truncated)"));
    let bytes = Encoder::<DeadLetter>::with_schema_id(1)
        .encode(&dl)
        .expect("encode");
    assert!(
        bytes.len() < 400 * 1024,
        "fits a Kafka record: {}",
        bytes.len()
    );
    // SHA-256 test vector (FIPS 180-2): "abc".
    let abc = dead_letter().with_original(Some(b"abc"));
    assert_eq!(
        abc.original_sha256.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(abc.original.as_deref(), Some(&b"abc"[..]));
    assert_eq!(dead_letter().with_original(None).original_size, None);
}

async fn round_trip<T: Record + PartialEq + std::fmt::Debug>(record: T) {
    let encoder = Encoder::<T>::with_schema_id(42);
    let bytes = encoder.encode(&record).expect("encode");
    assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
    // The body is valid Avro for the .avsc (checked with the generic reader too).
    let schema = apache_avro::Schema::parse_str(T::SCHEMA_JSON).expect("schema");
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader")
        .read_value(&mut &bytes[5..])
        .expect("generic read");
    let generic: T = apache_avro::from_value(&value).expect("generic to struct");
    assert_eq!(generic, record, "{}", T::FULL_NAME);
    let decoded: T = Decoder::offline(&[42])
        .decode(&bytes)
        .await
        .expect("decode");
    assert_eq!(decoded, record, "{}", T::FULL_NAME);
    // A reused buffer gives identical bytes.
    let mut buf = Vec::new();
    encoder.encode_into(&record, &mut buf).expect("encode_into");
    encoder
        .encode_into(&record, &mut buf)
        .expect("encode_into again");
    assert_eq!(buf, bytes);
}

#[tokio::test]
async fn every_record_round_trips() {
    round_trip(telemetry(true)).await;
    round_trip(telemetry(false)).await;
    round_trip(emergency()).await;
    round_trip(anomaly()).await;
    round_trip(window()).await;
    round_trip(notification()).await;
    round_trip(command()).await;
    round_trip(delivery()).await;
    round_trip(dead_letter()).await;
    round_trip(profile()).await;
    round_trip(VehicleProfile {
        route: vec![],
        geofences: vec![],
        contacts: vec![],
        customer_id: None,
        ..profile()
    })
    .await;
    let mut empty = dead_letter();
    empty.original = None;
    empty.source_key = None;
    round_trip(empty).await;
}

#[test]
fn schemas_have_docs_on_every_field_and_match_their_names() {
    for (name, topic, json) in all_schemas() {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(
            format!(
                "{}.{}",
                v["namespace"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            ),
            name
        );
        assert!(topic.starts_with("fleet."));
        assert!(v["doc"].is_string(), "{name} has a doc");
        for f in v["fields"].as_array().expect("fields") {
            assert!(f["doc"].is_string(), "{name}.{} has a doc", f["name"]);
        }
    }
}

#[tokio::test]
async fn garbage_is_a_poison_error_not_a_panic() {
    let d = Decoder::<TelemetryReading>::offline(&[1]);
    for bad in [
        &b""[..],
        b"{\"vehicleId\":1}",
        &[0, 0, 0, 0, 1],
        &[0, 0, 0, 0, 1, 0xff, 0xff, 0xff],
        &[0, 0, 0, 0, 9, 2, 3],
    ] {
        let err = d.decode(bad).await.expect_err("must fail");
        assert!(!err.is_transient(), "{err}");
    }
    // Trailing bytes after a valid record are rejected as well.
    let mut bytes = Encoder::<TelemetryReading>::with_schema_id(1)
        .encode(&telemetry(false))
        .expect("encode");
    bytes.push(0);
    assert!(d.decode(&bytes).await.is_err());
}

/// TelemetryReading as it was before a field was added: the old writer.
const TELEMETRY_OLD: &str = r#"{"type":"record","name":"TelemetryReading","namespace":"io.fleetstream","fields":[
  {"name":"event_id","type":"string"},
  {"name":"vehicle_id","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"ingest_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"position","type":{"type":"record","name":"Position","fields":[{"name":"lat","type":"double"},{"name":"lon","type":"double"}]}},
  {"name":"speed_kmh","type":["null","double"],"default":null}
]}"#;

async fn start_registry() -> (String, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let state = fleet_dev_registry::RegistryState::open(dir.path()).expect("state");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(fleet_dev_registry::serve(listener, state, async {
        let _ = rx.await;
    }));
    (url, tx, dir)
}

#[tokio::test]
async fn new_reader_reads_old_data_through_the_registry() {
    let (url, _stop, _dir) = start_registry().await;
    // An old producer registered the old schema and wrote with it.
    let http = reqwest_free_register(&url, "compat.telemetry-value", TELEMETRY_OLD).await;
    let old_schema = apache_avro::Schema::parse_str(TELEMETRY_OLD).expect("old");
    let mut record = apache_avro::types::Record::new(&old_schema).expect("record");
    record.put("event_id", "e-1");
    record.put("vehicle_id", "VEH-OLD");
    record.put(
        "event_time",
        apache_avro::types::Value::TimestampMillis(1000),
    );
    record.put(
        "ingest_time",
        apache_avro::types::Value::TimestampMillis(2000),
    );
    record.put(
        "position",
        apache_avro::types::Value::Record(vec![
            ("lat".into(), apache_avro::types::Value::Double(1.5)),
            ("lon".into(), apache_avro::types::Value::Double(-2.5)),
        ]),
    );
    record.put(
        "speed_kmh",
        apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Double(40.0))),
    );
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&old_schema)
        .build()
        .expect("writer")
        .write_value_to_vec(record)
        .expect("old datum");
    let mut bytes = Vec::new();
    fleet_schemas::wire::write_header(http, &mut bytes);
    bytes.extend_from_slice(&body);

    // The current code registers the current schema (BACKWARD compatible with the old one)...
    let registry = Registry::new(&url).expect("registry");
    let new_id = registry
        .register::<TelemetryReading>("compat.telemetry")
        .await
        .expect("evolve");
    assert_ne!(new_id, http);
    // ...and reads old data: new optional fields take their defaults.
    let decoder = Decoder::<TelemetryReading>::new(registry.clone());
    let decoded = decoder.decode(&bytes).await.expect("old data, new reader");
    assert_eq!(decoded.vehicle_id, "VEH-OLD");
    assert_eq!(decoded.position, Position::new(1.5, -2.5));
    assert_eq!(decoded.speed_kmh, Some(40.0));
    assert_eq!(decoded.cargo_temp_c, None);
    assert_eq!(decoded.source, "unknown");
    // And its own data through the fast path.
    let enc = Encoder::<TelemetryReading>::register(&registry, "compat.telemetry")
        .await
        .expect("enc");
    assert_eq!(enc.schema_id(), new_id, "registration is idempotent");
    let mine = telemetry(true);
    assert_eq!(
        decoder
            .decode(&enc.encode(&mine).expect("enc"))
            .await
            .expect("dec"),
        mine
    );
    // An id the registry does not know is a non-transient error.
    let err = decoder
        .decode(&[0, 0, 0, 3, 0xe7, 0])
        .await
        .expect_err("unknown id");
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn unreachable_registry_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let registry = Registry::new(&url).expect("registry");
    let err = registry
        .register::<TelemetryReading>("x")
        .await
        .expect_err("down");
    assert!(err.is_transient(), "{err}");
}

/// Registers a raw schema text with the registry's HTTP API (as another team's producer would).
async fn reqwest_free_register(url: &str, subject: &str, schema: &str) -> u32 {
    use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
    use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
    let settings = SrSettings::new_builder(url.to_owned())
        .no_proxy()
        .build()
        .expect("settings");
    post_schema(
        &settings,
        subject.to_owned(),
        SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned()),
    )
    .await
    .expect("register old")
    .id
}
