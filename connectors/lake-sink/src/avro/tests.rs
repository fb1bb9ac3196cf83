use std::collections::BTreeMap;

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, MapArray, StringArray,
    StructArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use fleet_schemas::{
    Channel, CommandKind, Contact, ContactRole, DeviceCommand, GeofenceCircle, Position, Record,
    TelemetryReading, VehicleProfile, Waypoint, write_datum,
};
use proptest::prelude::*;

use super::*;

fn reading(i: i64) -> TelemetryReading {
    TelemetryReading {
        event_id: format!("00000000-0000-0000-0000-{i:012}"),
        vehicle_id: format!("VEH-{:05}", i % 7),
        event_time: 1_700_000_000_000 + i * 1000,
        ingest_time: 1_700_000_000_500 + i * 1000,
        sent_time: (i % 2 == 0).then_some(1_700_000_000_100 + i),
        position: Position {
            lat: 4.6 + i as f64 * 1e-4,
            lon: -74.08,
            altitude_m: (i % 3 == 0).then_some(2600.0),
            accuracy_m: None,
        },
        speed_kmh: Some(60.0 + i as f64),
        heading_deg: None,
        cargo_temp_c: Some(-18.5),
        door_open: Some(i % 5 == 0),
        ignition_on: None,
        accel_mps2: None,
        odometer_km: Some(1000.0 + i as f64),
        battery_v: None,
        camera_active: Some(false),
        source: "loadtest".into(),
    }
}

fn datum<T: Record>(r: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    write_datum(r, &mut buf).unwrap();
    buf
}

fn plan<T: Record>() -> Arc<Plan> {
    Arc::new(Plan::compile(T::compiled().schema(), "event_time").unwrap())
}

#[test]
fn telemetry_schema_maps_logical_types_and_nullability() {
    let p = plan::<TelemetryReading>();
    let s = p.schema();
    let f = |n: &str| s.field_with_name(n).unwrap().clone();
    assert_eq!(f("event_id").data_type(), &DataType::Utf8);
    assert!(!f("event_id").is_nullable());
    assert_eq!(
        f("event_time").data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert!(f("sent_time").is_nullable());
    assert!(matches!(f("position").data_type(), DataType::Struct(fs) if fs.len() == 4));
    assert_eq!(f(PARTITION_COLUMN).data_type(), &DataType::Int32);
    assert_eq!(f(OFFSET_COLUMN).data_type(), &DataType::Int64);
    assert!(
        s.metadata()
            .get("avro.schema")
            .unwrap()
            .contains("TelemetryReading")
    );
    assert!(p.has_event_time());
}

#[test]
fn telemetry_values_round_trip() {
    let p = plan::<TelemetryReading>();
    let mut rows = p.rows();
    let input: Vec<_> = (0..50).map(reading).collect();
    for (i, r) in input.iter().enumerate() {
        let d = datum(r);
        assert_eq!(p.event_time(&d).unwrap(), Some(r.event_time));
        rows.append(&d, 3, 100 + i as i64).unwrap();
    }
    let batch = rows.finish();
    assert_eq!(batch.num_rows(), 50);
    assert!(rows.is_empty());
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let ids = col("event_id");
    let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
    let et = col("event_time");
    let et = et
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .unwrap();
    let sent = col("sent_time");
    let sent = sent
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .unwrap();
    let pos = col("position");
    let pos = pos.as_any().downcast_ref::<StructArray>().unwrap();
    let lat = pos
        .column_by_name("lat")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone();
    let alt = pos
        .column_by_name("altitude_m")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone();
    let door = col("door_open");
    let door = door.as_any().downcast_ref::<BooleanArray>().unwrap();
    let ign = col("ignition_on");
    let offs = col(OFFSET_COLUMN);
    let offs = offs.as_any().downcast_ref::<Int64Array>().unwrap();
    for (i, r) in input.iter().enumerate() {
        assert_eq!(ids.value(i), r.event_id);
        assert_eq!(et.value(i), r.event_time);
        assert_eq!(sent.is_valid(i).then(|| sent.value(i)), r.sent_time);
        assert_eq!(lat.value(i), r.position.lat);
        assert_eq!(alt.is_valid(i).then(|| alt.value(i)), r.position.altitude_m);
        assert_eq!(door.value(i), r.door_open.unwrap());
        assert!(ign.is_null(i));
        assert_eq!(offs.value(i), 100 + i as i64);
    }
}

#[test]
fn a_bad_datum_leaves_the_buffers_untouched() {
    let p = plan::<TelemetryReading>();
    let mut good = p.rows();
    let mut mixed = p.rows();
    let a = datum(&reading(1));
    let b = datum(&reading(2));
    good.append(&a, 0, 1).unwrap();
    good.append(&b, 0, 2).unwrap();
    mixed.append(&a, 0, 1).unwrap();
    // Every truncation point of a valid datum fails cleanly (none is a valid prefix here
    // because the last field is a non-empty string) ...
    for cut in 0..b.len() {
        assert!(mixed.append(&b[..cut], 0, 9).is_err(), "cut at {cut}");
    }
    // ... as do trailing bytes, a bad union index and invalid UTF-8.
    let mut trailing = b.clone();
    trailing.push(0);
    assert_eq!(
        mixed.append(&trailing, 0, 9),
        Err(AvroError::Malformed("trailing bytes after the record"))
    );
    let mut bad_utf8 = b.clone();
    let n = bad_utf8.len();
    bad_utf8[n - 1] = 0xff;
    assert_eq!(
        mixed.append(&bad_utf8, 0, 9),
        Err(AvroError::Malformed("string is not UTF-8"))
    );
    mixed.append(&b, 0, 2).unwrap();
    assert_eq!(mixed.finish(), good.finish());
}

#[test]
fn arrays_records_enums_and_maps() {
    let profile = VehicleProfile {
        event_id: "p1".into(),
        vehicle_id: "VEH-1".into(),
        updated_at: 5,
        customer_id: Some("acme".into()),
        cargo_temp_min_c: None,
        cargo_temp_max_c: Some(8.0),
        speed_limit_kmh: None,
        offline_after_ms: None,
        route_corridor_m: None,
        route: vec![
            Waypoint { lat: 1.0, lon: 2.0 },
            Waypoint { lat: 3.0, lon: 4.0 },
        ],
        geofences: vec![GeofenceCircle {
            id: "depot".into(),
            lat: 1.0,
            lon: 2.0,
            radius_m: 100.0,
            planned_stop: true,
        }],
        contacts: vec![Contact {
            role: ContactRole::Authority,
            channel: Channel::Email,
            address: "ops@example.com".into(),
        }],
    };
    let p = Arc::new(Plan::compile(VehicleProfile::compiled().schema(), "event_time").unwrap());
    assert!(
        !p.has_event_time(),
        "profiles have updated_at, not event_time"
    );
    let mut rows = p.rows();
    rows.append(&datum(&profile), 0, 0).unwrap();
    let mut empty = profile.clone();
    empty.route.clear();
    empty.contacts.clear();
    rows.append(&datum(&empty), 0, 1).unwrap();
    let batch = rows.finish();
    let route = batch.column_by_name("route").unwrap();
    let route = route.as_any().downcast_ref::<ListArray>().unwrap();
    assert_eq!(route.value_length(0), 2);
    assert_eq!(route.value_length(1), 0);
    let pts = route.value(0);
    let pts = pts.as_struct();
    assert_eq!(
        pts.column(1)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(1),
        4.0
    );
    let contacts = batch.column_by_name("contacts").unwrap();
    let c = contacts
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap()
        .value(0);
    let role = c
        .as_struct()
        .column_by_name("role")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_owned();
    assert_eq!(role, "AUTHORITY");

    let cmd = DeviceCommand {
        event_id: "c1".into(),
        vehicle_id: "VEH-1".into(),
        command: CommandKind::StartCamera,
        params: BTreeMap::from([
            ("duration_s".into(), "60".into()),
            ("q".into(), "hd".into()),
        ]),
        reason: "incident".into(),
        event_time: 7,
        ingest_time: 8,
        expires_at: None,
    };
    let p = plan::<DeviceCommand>();
    let mut rows = p.rows();
    let d = datum(&cmd);
    assert_eq!(p.event_time(&d).unwrap(), Some(7));
    rows.append(&d, 1, 2).unwrap();
    let batch = rows.finish();
    let params = batch.column_by_name("params").unwrap();
    let params = params.as_any().downcast_ref::<MapArray>().unwrap();
    assert_eq!(params.value_length(0), 2);
    let keys = params.keys().as_string::<i32>();
    let vals = params.values().as_string::<i32>();
    assert_eq!((keys.value(0), vals.value(0)), ("duration_s", "60"));
    let kind = batch
        .column_by_name("command")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_owned();
    assert_eq!(kind, "START_CAMERA");
}

#[test]
fn unsupported_unions_are_refused_at_compile_time() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"X","fields":[{"name":"v","type":["int","string"]}]}"#,
    )
    .unwrap();
    assert!(matches!(
        Plan::compile(&schema, "event_time"),
        Err(AvroError::Unsupported(_))
    ));
}

#[test]
fn every_schema_of_the_pipeline_compiles() {
    for (name, _, json) in fleet_schemas::all_schemas() {
        let schema = Schema::parse_str(json).unwrap();
        Plan::compile(&schema, "event_time").unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

proptest! {
    /// Arbitrary readings decode to exactly their values; the batch matches what arrow's own
    /// JSON-free path would give for the same rows (checked field by field).
    #[test]
    fn arbitrary_readings_round_trip(
        speeds in proptest::collection::vec(proptest::option::of(-1e6f64..1e6), 1..40),
        temp in proptest::option::of(-50f64..50.0),
        source in "[a-zé]{0,12}",
        et in any::<i64>(),
    ) {
        let p = plan::<TelemetryReading>();
        let mut rows = p.rows();
        for (i, s) in speeds.iter().enumerate() {
            let mut r = reading(i as i64);
            r.speed_kmh = *s;
            r.cargo_temp_c = temp;
            r.source = source.clone();
            r.event_time = et;
            let d = datum(&r);
            prop_assert_eq!(p.event_time(&d).unwrap(), Some(et));
            rows.append(&d, 0, i as i64).unwrap();
        }
        let b = rows.finish();
        let sp = b.column_by_name("speed_kmh").unwrap().as_primitive::<arrow::datatypes::Float64Type>().clone();
        let src = b.column_by_name("source").unwrap().as_string::<i32>().clone();
        let tc = b.column_by_name("cargo_temp_c").unwrap().as_primitive::<arrow::datatypes::Float64Type>().clone();
        for (i, s) in speeds.iter().enumerate() {
            prop_assert_eq!(sp.is_valid(i).then(|| sp.value(i)), *s);
            prop_assert_eq!(tc.is_valid(i).then(|| tc.value(i)), temp);
            prop_assert_eq!(src.value(i), source.as_str());
        }
    }
}
