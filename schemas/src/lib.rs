//! # fleet-schemas
//!
//! The record contracts of fleetstream. The `.avsc` files in `schemas/avro/` are the source of
//! truth; this crate bundles them, offers a typed Rust struct per record ([`records`]) and a codec
//! for the **Confluent wire format** (magic byte 0, 4-byte big-endian schema id, Avro binary) with
//! schemas registered in a Confluent-compatible registry under `<topic>-value` subjects
//! (TopicNameStrategy).
//!
//! | record | default topic | key |
//! |---|---|---|
//! | [`TelemetryReading`] | `fleet.telemetry` | `vehicle_id` |
//! | [`EmergencyEvent`] | `fleet.emergencies` | `vehicle_id` |
//! | [`Anomaly`] | `fleet.anomalies` | `vehicle_id` |
//! | [`WindowAggregate`] | `fleet.telemetry-windows` | `vehicle_id` |
//! | [`Notification`] | `fleet.notifications` | `recipient` |
//! | [`DeviceCommand`] | `fleet.commands` | `vehicle_id` |
//! | [`DeliveryEvent`] | `fleet.deliveries` | `delivery_id` |
//! | [`DeadLetter`] | `fleet.dlq` | source key |
//! | [`VehicleProfile`] | `fleet.vehicle-profiles` (table) | `vehicle_id` |
//!
//! ## Design
//! * Encoding serialises straight from the struct to Avro binary into a reusable buffer
//!   ([`Encoder::encode_into`]), no intermediate `Value` tree, no allocation once warm.
//! * Decoding takes the fast path (direct deserialisation) when the writer schema is the record's
//!   own, and Avro schema resolution otherwise, so a reader built against a newer schema reads
//!   data written with an older one (new optional fields get their defaults).
//! * Errors say whether they are a property of the input ([`Error::Framing`], [`Error::Avro`]:
//!   poison, goes to the dead-letter topic) or transient ([`Error::is_transient`]).
//!
//! ## Example
//! ```
//! use fleet_schemas::{Decoder, Encoder, Position, TelemetryReading};
//! # tokio_test();
//! # fn tokio_test() {
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let reading = TelemetryReading {
//!     event_id: fleet_schemas::ids::derived_id(&["VEH-TEST-001", "1698765432000"]),
//!     vehicle_id: "VEH-TEST-001".into(),
//!     event_time: 1_698_765_432_000,
//!     ingest_time: 1_698_765_432_050,
//!     sent_time: None,
//!     position: Position::new(4.6097, -74.0817),
//!     speed_kmh: Some(65.5),
//!     heading_deg: None,
//!     cargo_temp_c: Some(22.0),
//!     door_open: None,
//!     ignition_on: Some(true),
//!     accel_mps2: None,
//!     odometer_km: None,
//!     battery_v: None,
//!     camera_active: None,
//!     source: "mqtt".into(),
//! };
//! // With a registry: `Encoder::register(&Registry::new(url)?, "fleet.telemetry").await?`.
//! let encoder = Encoder::<TelemetryReading>::with_schema_id(1);
//! let bytes = encoder.encode(&reading).unwrap();
//! assert_eq!(&bytes[..5], &[0, 0, 0, 0, 1]);
//! let decoded: TelemetryReading = Decoder::offline(&[1]).decode(&bytes).await.unwrap();
//! assert_eq!(decoded, reading);
//! # });
//! # }
//! ```

pub mod codec;
mod error;
pub mod ids;
pub mod profile;
pub mod records;
pub mod wire;

pub use codec::{Decoder, Encoder, Record, Registry, all_schemas, read_datum, write_datum};
pub use error::{Error, Result};
pub use records::*;
