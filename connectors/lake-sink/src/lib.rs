//! `lake-sink` and the lake it writes: Kafka (Avro) -> Arrow -> Parquet on object storage.
//!
//! * [`avro`]: Avro binary straight into Arrow columns (pure).
//! * [`layout`]: Hive time partitions and deterministic file names (pure).
//! * [`lake`]: the object store (`file://` or `s3://`).
//! * [`writer`]: one partition's files and the exactly-once commit protocol.
//! * [`sink`]: the binary's Kafka loop and its delivery guarantee.
//! * [`catalog`]: listing partitions and compacting small files (used by `fleetctl lake`).

pub mod avro;
pub mod catalog;
pub mod lake;
pub mod layout;
pub mod sink;
pub mod writer;

pub use lake::{Lake, LakeError, S3Settings};
pub use sink::{LakeSinkConfig, Sink, SinkSummary};
