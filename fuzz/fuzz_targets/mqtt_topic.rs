//! Any MQTT topic name: `parse_topic` accepts only `<prefix>/<vehicle>/<kind>` with a valid
//! vehicle id, and never panics.
#![no_main]

use fleet_ingest::{parse_topic, valid_vehicle_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(topic) = std::str::from_utf8(data)
        && let Ok((vehicle, _kind)) = parse_topic("fleet", topic)
    {
        assert!(
            valid_vehicle_id(vehicle),
            "{vehicle:?} accepted from {topic:?}"
        );
    }
});
