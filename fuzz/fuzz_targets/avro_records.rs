//! Any bytes on a Kafka topic: the wire-format split and the Avro decoding of every record
//! type return an error, never panic or allocate without bound.
#![no_main]

use fleet_schemas::{read_datum, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = match wire::split(data) {
        Ok((_, body)) => body,
        Err(_) => data,
    };
    let _ = read_datum::<fleet_schemas::TelemetryReading>(body);
    let _ = read_datum::<fleet_schemas::EmergencyEvent>(body);
    let _ = read_datum::<fleet_schemas::DeliveryEvent>(body);
    let _ = read_datum::<fleet_schemas::Notification>(body);
    let _ = read_datum::<fleet_schemas::VehicleProfile>(body);
    let _ = read_datum::<fleet_schemas::DeadLetter>(body);
});
