use super::*;
use fleet_runtime::config::Section;

fn tokens() -> Tokens {
    Tokens::parse(
        r#"
        [[tokens]]
        token = "driver-one-token-0001"
        driver_id = "DRV-1"
        vehicles = ["VEH-1", "VEH-2"]
        "#,
        10.0,
        100,
        10,
        0,
    )
    .unwrap()
}

fn delivery(vehicle: &str, driver: Option<&str>) -> Parsed {
    let json = format!(
        r#"{{"deliveryId":"D-1","vehicleId":"{vehicle}","status":"picked_up","timestamp":1700000000000{}}}"#,
        driver
            .map(|d| format!(r#","driverId":"{d}""#))
            .unwrap_or_default()
    );
    let who = Identity {
        vehicle_id: None,
        source: "http",
    };
    fleet_ingest::parse(
        Kind::Delivery,
        json.as_bytes(),
        &who,
        1_700_000_000_500,
        &Limits::default(),
    )
    .unwrap()
}

#[test]
fn scope_checks_the_vehicle_and_stamps_the_driver() {
    let t = tokens();
    let p = t.get("driver-one-token-0001").unwrap();
    let Ok(Parsed::Delivery(d)) = scope(delivery("VEH-2", None), p) else {
        panic!()
    };
    assert_eq!(d.driver_id.as_deref(), Some("DRV-1"));
    let Ok(Parsed::Delivery(d)) = scope(delivery("VEH-1", Some("DRV-9")), p) else {
        panic!()
    };
    assert_eq!(
        d.driver_id.as_deref(),
        Some("DRV-9"),
        "the app's own driver id is kept"
    );
    let e = scope(delivery("VEH-3", None), p).unwrap_err();
    assert_eq!(e.reason.code(), "vehicle_id_mismatch");
    assert_eq!(e.field.as_deref(), Some("vehicleId"));
}

/// Only a dispatch client (a token bound to no vehicle) marks its delivery updates as able to
/// reassign; a driver's token never does, whatever its payload says.
#[test]
fn only_dispatch_tokens_may_reassign_deliveries() {
    let t = Tokens::parse(
        r#"
        [[tokens]]
        token = "driver-one-token-0001"
        driver_id = "DRV-1"
        vehicles = ["VEH-1", "VEH-2"]
        [[tokens]]
        token = "dispatch-token-00001"
        driver_id = "dispatch-backend"
        "#,
        10.0,
        100,
        10,
        0,
    )
    .unwrap();
    let driver = t.get("driver-one-token-0001").unwrap();
    let dispatch = t.get("dispatch-token-00001").unwrap();
    let Ok(Parsed::Delivery(d)) = scope(delivery("VEH-2", None), driver) else {
        panic!()
    };
    assert_eq!(d.reassigned_by, None);
    let Ok(Parsed::Delivery(d)) = scope(delivery("VEH-7", None), dispatch) else {
        panic!()
    };
    assert_eq!(d.reassigned_by.as_deref(), Some("dispatch-backend"));
    // A payload cannot claim it.
    let json = r#"{"deliveryId":"D-1","vehicleId":"VEH-1","status":"picked_up","timestamp":1700000000000,"reassignedBy":"dispatch-backend","reassigned_by":"x"}"#;
    let who = Identity {
        vehicle_id: None,
        source: "http",
    };
    if let Ok(Parsed::Delivery(d)) = fleet_ingest::parse(
        Kind::Delivery,
        json.as_bytes(),
        &who,
        1_700_000_000_500,
        &Limits::default(),
    ) {
        let Ok(Parsed::Delivery(d)) = scope(Parsed::Delivery(d), driver) else {
            panic!()
        };
        assert_eq!(d.reassigned_by, None);
    }
}

#[test]
fn bearer_header_parsing() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer(&h), None);
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer abc"),
    );
    assert_eq!(bearer(&h), Some("abc"));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer  abc "),
    );
    assert_eq!(bearer(&h), Some("abc"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer(&h), None);
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
    assert_eq!(bearer(&h), None);
}

#[test]
fn rejections_answer_400_or_403() {
    let r = |reason| Refused {
        index: 3,
        rejection: Rejection {
            reason,
            field: Some("x".into()),
            detail: "d".into(),
        },
    };
    let a = rejected_answer(2, &[r(fleet_ingest::Reason::VehicleIdMismatch)]);
    assert_eq!(a.status(), StatusCode::FORBIDDEN);
    let a = rejected_answer(
        0,
        &[
            r(fleet_ingest::Reason::VehicleIdMismatch),
            r(fleet_ingest::Reason::MissingField),
        ],
    );
    assert_eq!(a.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn config_validation() {
    let ok = HttpIngestConfig {
        tokens_file: "/etc/fleet/tokens.toml".into(),
        ..Default::default()
    };
    assert!(ok.validate().is_ok());
    assert!(
        HttpIngestConfig::default().validate().is_err(),
        "no tokens file"
    );
    for broken in [
        HttpIngestConfig {
            listen: "nowhere".into(),
            ..ok.clone()
        },
        HttpIngestConfig {
            rate_per_token: 0.0,
            ..ok.clone()
        },
        HttpIngestConfig {
            max_batch_records: 2000,
            ..ok.clone()
        },
        HttpIngestConfig {
            max_batch_records: 0,
            ..ok.clone()
        },
        HttpIngestConfig {
            max_record_bytes: 2 << 20,
            ..ok.clone()
        },
    ] {
        assert!(broken.validate().is_err(), "{broken:?}");
    }
    assert_eq!(ok.limits().max_payload_bytes, 64 * 1024);
}
