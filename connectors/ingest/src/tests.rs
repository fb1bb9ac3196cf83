use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_698_765_433_000;
const TS: i64 = 1_698_765_432_000;

fn who(v: &'static str) -> Identity<'static> {
    Identity {
        vehicle_id: Some(v),
        source: "mqtt",
    }
}

fn tel(json: &str) -> Result<TelemetryReading, Rejection> {
    match parse(
        Kind::Telemetry,
        json.as_bytes(),
        &who("VEH-TEST-001"),
        NOW,
        &Limits::default(),
    )? {
        Parsed::Telemetry(r) => Ok(r),
        other => panic!("not telemetry: {other:?}"),
    }
}

fn emg(json: &str) -> Result<EmergencyEvent, Rejection> {
    match parse(
        Kind::Emergency,
        json.as_bytes(),
        &who("VEH-TEST-001"),
        NOW,
        &Limits::default(),
    )? {
        Parsed::Emergency(r) => Ok(r),
        other => panic!("not an emergency: {other:?}"),
    }
}

fn dlv(json: &str) -> Result<DeliveryEvent, Rejection> {
    match parse(
        Kind::Delivery,
        json.as_bytes(),
        &who("VEH-TEST-001"),
        NOW,
        &Limits::default(),
    )? {
        Parsed::Delivery(r) => Ok(r),
        other => panic!("not a delivery: {other:?}"),
    }
}

fn reason<T: std::fmt::Debug>(r: Result<T, Rejection>) -> (&'static str, Option<String>) {
    let e = r.expect_err("should be rejected");
    (e.reason.code(), e.field)
}

const TRUCK: &str = r#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{"lat":4.6097,"lon":-74.0817},"speed":65.5,"cargo_temperature":22.0}"#;

#[test]
fn todays_truck_payload_maps_every_field() {
    let r = tel(TRUCK).unwrap();
    assert_eq!(r.vehicle_id, "VEH-TEST-001");
    assert_eq!(r.event_time, TS);
    assert_eq!(r.ingest_time, NOW);
    assert_eq!(r.position, Position::new(4.6097, -74.0817));
    assert_eq!(r.speed_kmh, Some(65.5));
    assert_eq!(r.cargo_temp_c, Some(22.0));
    assert_eq!(r.source, "mqtt");
    assert_eq!(r.sent_time, None);
    assert_eq!(r.heading_deg, None);
}

#[test]
fn optional_fields_in_both_spellings() {
    let camel = tel(
        r#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"sentAt":1698765432100,
        "location":{"lat":1,"lng":2,"altitude":2600,"accuracy":4.5},"heading":360,"doorOpen":true,
        "ignition":false,"acceleration":-7.5,"odometer":12345.6,"battery":12.6,"cameraActive":true,
        "cargoTemperature":-18.5,"eventId":"dev-42"}"#,
    )
    .unwrap();
    let snake = tel(r#"{"vehicle_id":"VEH-TEST-001","timestamp":1698765432000,"sent_at":1698765432100,
        "location":{"lat":1,"lon":2,"altitude_m":2600,"accuracy_m":4.5},"heading":360,"door_open":true,
        "ignition":false,"acceleration":-7.5,"odometer":12345.6,"battery":12.6,"camera":true,
        "cargo_temperature":-18.5,"event_id":"dev-42"}"#)
    .unwrap();
    assert_eq!(camel, snake);
    assert_eq!(camel.event_id, "dev-42");
    assert_eq!(camel.sent_time, Some(1_698_765_432_100));
    assert_eq!(camel.position.altitude_m, Some(2600.0));
    assert_eq!(camel.position.accuracy_m, Some(4.5));
    assert_eq!(camel.heading_deg, Some(0.0), "360 degrees is north");
    assert_eq!(camel.door_open, Some(true));
    assert_eq!(camel.ignition_on, Some(false));
    assert_eq!(camel.accel_mps2, Some(-7.5));
    assert_eq!(camel.odometer_km, Some(12345.6));
    assert_eq!(camel.battery_v, Some(12.6));
    assert_eq!(camel.camera_active, Some(true));
    assert_eq!(camel.cargo_temp_c, Some(-18.5));
}

#[test]
fn unknown_fields_are_ignored() {
    let r = tel(
        r#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{"lat":1,"lon":2},"firmware":"2.1","tyres":[1,2]}"#,
    );
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn derived_event_id_is_stable_and_payload_specific() {
    let a = tel(TRUCK).unwrap();
    let b = tel(TRUCK).unwrap();
    assert_eq!(a.event_id, b.event_id, "a re-sent message keeps its id");
    let other = TRUCK.replace("65.5", "65.6");
    assert_ne!(a.event_id, tel(&other).unwrap().event_id);
    // The id does not depend on the receive time.
    let later = parse(
        Kind::Telemetry,
        TRUCK.as_bytes(),
        &who("VEH-TEST-001"),
        NOW + 5000,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(later.event_id(), a.event_id);
}

#[test]
fn vehicle_id_must_match_the_sender() {
    let r = parse(
        Kind::Telemetry,
        TRUCK.as_bytes(),
        &who("VEH-TEST-002"),
        NOW,
        &Limits::default(),
    );
    assert_eq!(
        reason(r),
        ("vehicle_id_mismatch", Some("vehicleId".to_owned()))
    );
    // Without a transport identity (an HTTP operator token, say) any valid id is accepted.
    let anon = Identity {
        vehicle_id: None,
        source: "http",
    };
    let r = parse(
        Kind::Telemetry,
        TRUCK.as_bytes(),
        &anon,
        NOW,
        &Limits::default(),
    );
    assert!(r.is_ok());
}

#[test]
fn the_emergency_vehicle_id_is_checked_too() {
    let r = parse(
        Kind::Emergency,
        br#"{"vehicleId":"VEH-TEST-001","type":"panic_button"}"#,
        &who("VEH-TEST-009"),
        NOW,
        &Limits::default(),
    );
    assert_eq!(reason(r).0, "vehicle_id_mismatch");
}

#[test]
fn required_fields() {
    assert_eq!(
        reason(tel(
            r#"{"timestamp":1698765432000,"location":{"lat":1,"lon":2}}"#
        )),
        ("missing_field", Some("vehicleId".into()))
    );
    assert_eq!(
        reason(tel(
            r#"{"vehicleId":"VEH-TEST-001","location":{"lat":1,"lon":2}}"#
        )),
        ("missing_field", Some("timestamp".into()))
    );
    assert_eq!(
        reason(tel(
            r#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000}"#
        )),
        ("missing_field", Some("location".into()))
    );
}

#[test]
fn wrong_json_types_name_the_field() {
    let (code, field) = reason(tel(
        r#"{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{"lat":"north","lon":2}}"#,
    ));
    assert_eq!(code, "invalid_json");
    assert_eq!(field.as_deref(), Some("location.lat"));
    let (code, field) = reason(tel(
        r#"{"vehicleId":"VEH-TEST-001","timestamp":"yesterday","location":{"lat":1,"lon":2}}"#,
    ));
    assert_eq!(
        (code, field.as_deref()),
        ("invalid_json", Some("timestamp"))
    );
}

#[test]
fn malformed_payloads() {
    assert_eq!(reason(tel("")).0, "invalid_json");
    assert_eq!(reason(tel("{")).0, "invalid_json");
    assert_eq!(reason(tel("[1,2]")).0, "invalid_json");
    assert_eq!(reason(tel("null")).0, "invalid_json");
    assert_eq!(
        reason(tel(r#"{"vehicleId":"VEH-TEST-001"} trailing"#)).0,
        "invalid_json"
    );
    let bytes = b"{\"vehicleId\":\"VEH-\xff\"}";
    let r = parse(
        Kind::Telemetry,
        bytes,
        &who("VEH-TEST-001"),
        NOW,
        &Limits::default(),
    );
    assert_eq!(reason(r).0, "invalid_utf8");
}

#[test]
fn payload_size_is_bounded() {
    let limits = Limits {
        max_payload_bytes: 100,
        ..Limits::default()
    };
    let r = parse(
        Kind::Telemetry,
        TRUCK.as_bytes(),
        &who("VEH-TEST-001"),
        NOW,
        &limits,
    );
    assert_eq!(reason(r).0, "payload_too_large");
    let limits = Limits {
        max_payload_bytes: TRUCK.len(),
        ..Limits::default()
    };
    assert!(
        parse(
            Kind::Telemetry,
            TRUCK.as_bytes(),
            &who("VEH-TEST-001"),
            NOW,
            &limits
        )
        .is_ok()
    );
}

#[test]
fn coordinates_in_range() {
    for loc in [
        r#"{"lat":91,"lon":0}"#,
        r#"{"lat":-90.0001,"lon":0}"#,
        r#"{"lat":0,"lon":180.5}"#,
        r#"{"lat":0,"lon":-181}"#,
        r#"{"lat":1}"#,
        r#"{"lon":1}"#,
    ] {
        let json =
            format!(r#"{{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{loc}}}"#);
        assert_eq!(
            reason(tel(&json)),
            ("invalid_position", Some("location".into())),
            "{loc}"
        );
    }
    for loc in [r#"{"lat":90,"lon":180}"#, r#"{"lat":-90,"lon":-180}"#] {
        let json =
            format!(r#"{{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{loc}}}"#);
        assert!(tel(&json).is_ok(), "{loc}");
    }
}

#[test]
fn timestamps_within_skew_and_age() {
    let limits = Limits::default();
    let at = |ts: i64| {
        format!(r#"{{"vehicleId":"VEH-TEST-001","timestamp":{ts},"location":{{"lat":1,"lon":2}}}}"#)
    };
    assert!(tel(&at(NOW + limits.max_future_skew_ms)).is_ok());
    assert_eq!(
        reason(tel(&at(NOW + limits.max_future_skew_ms + 1))).0,
        "timestamp_out_of_range"
    );
    assert!(tel(&at(NOW - limits.max_age_ms)).is_ok());
    assert_eq!(
        reason(tel(&at(NOW - limits.max_age_ms - 1))).0,
        "timestamp_out_of_range"
    );
    assert_eq!(reason(tel(&at(0))).0, "timestamp_out_of_range");
    assert_eq!(
        reason(tel(&at(1_698_765_432))).0,
        "timestamp_out_of_range",
        "seconds, not ms"
    );
    assert_eq!(reason(tel(&at(i64::MAX))).0, "timestamp_out_of_range");
}

#[test]
fn sensor_ranges() {
    let with = |field: &str, v: &str| {
        format!(
            r#"{{"vehicleId":"VEH-TEST-001","timestamp":1698765432000,"location":{{"lat":1,"lon":2}},"{field}":{v}}}"#
        )
    };
    for (field, bad, good) in [
        ("speed", "-1", "0"),
        ("speed", "401", "400"),
        ("heading", "361", "359.9"),
        ("cargoTemperature", "-101", "-100"),
        ("acceleration", "150", "-9.8"),
        ("odometer", "-0.1", "0"),
        ("battery", "120", "24"),
    ] {
        assert_eq!(
            reason(tel(&with(field, bad))),
            ("invalid_field", Some(field.to_owned())),
            "{field}={bad}"
        );
        assert!(tel(&with(field, good)).is_ok(), "{field}={good}");
    }
}

#[test]
fn vehicle_id_syntax() {
    for bad in ["", "VEH/1", "VEH+1", "VEH#", "VEH 1", &"X".repeat(65)] {
        let json = format!(
            r#"{{"vehicleId":"{bad}","timestamp":1698765432000,"location":{{"lat":1,"lon":2}}}}"#
        );
        let r = parse(
            Kind::Telemetry,
            json.as_bytes(),
            &Identity {
                vehicle_id: None,
                source: "http",
            },
            NOW,
            &Limits::default(),
        );
        assert_eq!(reason(r).0, "invalid_vehicle_id", "{bad:?}");
    }
}

#[test]
fn the_panic_button_payload() {
    let e = emg(r#"{"vehicleId":"VEH-TEST-001","type":"panic_button","severity":"critical","location":{"lat":4.6097,"lon":-74.0817},"timestamp":1698765432000}"#).unwrap();
    assert_eq!(e.kind, EmergencyKind::PanicButton);
    assert_eq!(e.severity, Severity::Critical);
    assert_eq!(e.position, Some(Position::new(4.6097, -74.0817)));
    assert_eq!(e.event_time, TS);
    assert_eq!(e.ingest_time, NOW);
    assert_eq!(e.description, None);
    assert_eq!(e.source_anomaly_id, None);
}

#[test]
fn emergencies_are_degraded_not_dropped() {
    // Unknown type, unknown severity, no timestamp, broken location: still an emergency.
    let e = emg(r#"{"vehicleId":"VEH-TEST-001","type":"fire","severity":"apocalyptic","location":{"lat":200,"lon":0}}"#).unwrap();
    assert_eq!(e.kind, EmergencyKind::Other);
    assert_eq!(e.severity, Severity::High);
    assert_eq!(e.event_time, NOW);
    assert_eq!(e.position, None);
    let d = e.description.unwrap();
    for needle in [
        "\"fire\"",
        "apocalyptic",
        "no timestamp",
        "position dropped",
    ] {
        assert!(d.contains(needle), "{needle} in {d}");
    }
    // A crash without severity is critical; an absurd timestamp is replaced and noted.
    let e = emg(
        r#"{"vehicleId":"VEH-TEST-001","type":"CRASH","timestamp":5,"description":"rollover"}"#,
    )
    .unwrap();
    assert_eq!(e.kind, EmergencyKind::Crash);
    assert_eq!(e.severity, Severity::Critical);
    assert_eq!(e.event_time, NOW);
    assert!(e.description.unwrap().starts_with("rollover ["));
}

#[test]
fn unidentifiable_emergencies_are_rejected() {
    assert_eq!(reason(emg(r#"{"type":"panic_button"}"#)).0, "missing_field");
    assert_eq!(reason(emg("panic!")).0, "invalid_json");
}

#[test]
fn delivery_payloads() {
    let d = dlv(r#"{"deliveryId":"D-1","vehicleId":"VEH-TEST-001","driverId":"drv-7","status":"picked-up","timestamp":1698765432000,
        "location":{"lat":6.2,"lon":-75.5},"destination":{"lat":6.25,"lon":-75.56},"destinationRadius":150,"promisedBy":1698790000000,"note":"gate 3"}"#).unwrap();
    assert_eq!(d.delivery_id, "D-1");
    assert_eq!(d.kind, DeliveryKind::PickedUp);
    assert_eq!(d.driver_id.as_deref(), Some("drv-7"));
    assert_eq!(d.destination, Some(Position::new(6.25, -75.56)));
    assert_eq!(d.destination_radius_m, Some(150.0));
    assert_eq!(d.promised_by, Some(1_698_790_000_000));
    assert_eq!(d.note.as_deref(), Some("gate 3"));
    assert_eq!(
        reason(dlv(
            r#"{"vehicleId":"VEH-TEST-001","status":"delivered","timestamp":1698765432000}"#
        )),
        ("missing_field", Some("deliveryId".into()))
    );
    assert_eq!(
        reason(dlv(
            r#"{"deliveryId":"D-1","vehicleId":"VEH-TEST-001","status":"lost","timestamp":1698765432000}"#
        )),
        ("invalid_field", Some("status".into()))
    );
    assert_eq!(
        reason(dlv(
            r#"{"deliveryId":"D-1","vehicleId":"VEH-TEST-001","status":"delivered","timestamp":1698765432000,"destination":{"lat":1,"lon":500}}"#
        )),
        ("invalid_position", Some("destination".into()))
    );
}

#[test]
fn topics() {
    assert_eq!(
        parse_topic("vehicle", "vehicle/VEH-TEST-001/telemetry").unwrap(),
        ("VEH-TEST-001", Kind::Telemetry)
    );
    assert_eq!(
        parse_topic("fleet/v1", "fleet/v1/T-9/delivery").unwrap(),
        ("T-9", Kind::Delivery)
    );
    for bad in [
        "vehicle/VEH-1",
        "vehicle//telemetry",
        "vehicles/VEH-1/telemetry",
        "vehicle/VEH-1/telemetry/extra",
        "vehicle/VEH-1/commands",
        "vehicleX/VEH-1/telemetry",
        "",
    ] {
        assert!(parse_topic("vehicle", bad).is_err(), "{bad}");
    }
}

proptest! {
    /// Arbitrary bytes never panic: they parse or are rejected with a reason.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), k in 0usize..3) {
        let _ = parse(Kind::ALL[k], &bytes, &who("VEH-TEST-001"), NOW, &Limits::default());
    }

    /// Any in-range reading round-trips its values.
    #[test]
    fn valid_readings_round_trip(
        lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, speed in 0.0f64..=400.0,
        temp in -100.0f64..=150.0, age in 0i64..(7 * 24 * 3600 * 1000),
    ) {
        let ts = NOW - age;
        let json = format!(r#"{{"vehicleId":"VEH-TEST-001","timestamp":{ts},"location":{{"lat":{lat},"lon":{lon}}},"speed":{speed},"cargoTemperature":{temp}}}"#);
        let r = tel(&json).unwrap();
        prop_assert_eq!(r.position.lat, lat);
        prop_assert_eq!(r.position.lon, lon);
        prop_assert_eq!(r.speed_kmh, Some(speed));
        prop_assert_eq!(r.cargo_temp_c, Some(temp));
        prop_assert_eq!(r.event_time, ts);
    }

    /// Out-of-range coordinates are always rejected as invalid_position.
    #[test]
    fn out_of_range_positions_rejected(lat in 90.0001f64..1e6, sign in prop::bool::ANY) {
        let lat = if sign { lat } else { -lat };
        let json = format!(r#"{{"vehicleId":"VEH-TEST-001","timestamp":{TS},"location":{{"lat":{lat},"lon":0}}}}"#);
        prop_assert_eq!(reason(tel(&json)).0, "invalid_position");
    }
}
