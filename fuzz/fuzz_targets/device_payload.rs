//! Any bytes a device or an HTTP client sends, for every kind, bound or not to a vehicle:
//! `fleet_ingest::parse` returns a record or a rejection, never panics, and what it accepts
//! encodes as Avro and decodes back to the same record.
#![no_main]

use fleet_ingest::{Identity, Kind, Limits, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    for kind in Kind::ALL {
        for vehicle_id in [None, Some("VEH-FUZZ")] {
            let who = Identity {
                vehicle_id,
                source: "fuzz",
            };
            if let Ok(parsed) = parse(kind, data, &who, 1_795_392_000_000, &limits) {
                roundtrip(&parsed);
            }
        }
    }
});

fn roundtrip(parsed: &Parsed) {
    use fleet_schemas::{read_datum, write_datum};
    let mut body = Vec::new();
    match parsed {
        Parsed::Telemetry(r) => {
            write_datum(r, &mut body).expect("an accepted reading encodes");
            assert_eq!(
                &read_datum::<fleet_schemas::TelemetryReading>(&body).expect("decodes"),
                r
            );
        }
        Parsed::Emergency(e) => {
            write_datum(e, &mut body).expect("an accepted emergency encodes");
            assert_eq!(
                &read_datum::<fleet_schemas::EmergencyEvent>(&body).expect("decodes"),
                e
            );
        }
        Parsed::Delivery(d) => {
            write_datum(d, &mut body).expect("an accepted delivery event encodes");
            assert_eq!(
                &read_datum::<fleet_schemas::DeliveryEvent>(&body).expect("decodes"),
                d
            );
        }
    }
}
