//! # fleet-runtime
//!
//! The IO edge every fleetstream binary shares, so that each binary is thin wiring around pure
//! domain logic:
//!
//! * [`config`]: one `Config<A>` per binary (shared `kafka`, `registry`, `http`, `runner`
//!   sections + the binary's `app` section), defaults < TOML file < environment, validated at
//!   start, `--help` generated from the doc comments, raw librdkafka options passthrough.
//! * [`kafka`]: librdkafka consumer (manual offset store) and idempotent `acks=all` producers
//!   tuned for throughput or latency; topic provisioning (`fleet.telemetry`: 12 partitions).
//! * [`runner`]: the run loop: consume -> decode (bad input: [`fleet_schemas::DeadLetter`] to
//!   `fleet.dlq`) -> [`Processor::process`] -> produce -> store the offset once every output is
//!   acknowledged; timers; graceful drain on shutdown.
//! * [`metrics`]: Prometheus `/metrics`, `/health/live`, `/health/ready`.
//! * [`table`]: a topic read from the beginning as an in-memory table (vehicle profiles).
//! * [`shutdown`]: SIGINT/SIGTERM -> cancellation token; a second signal exits at once.
//!
//! ## Delivery guarantee
//! At least once, with per-partition order; see [`runner`] for the exact argument.
//!
//! ## Example: a processor
//! ```no_run
//! use fleet_runtime::{Input, Outputs, ProcessError, Processor};
//! use fleet_schemas::{Encoder, TelemetryReading};
//! use std::sync::Arc;
//!
//! struct Forward { topic: Arc<str>, enc: Encoder<TelemetryReading> }
//!
//! impl Processor for Forward {
//!     type Input = TelemetryReading;
//!     async fn process(&mut self, input: &Input<'_, TelemetryReading>, out: &mut Outputs)
//!         -> Result<(), ProcessError> {
//!         if !input.record.position.is_valid() {
//!             return Err(ProcessError::poison("invalid_position", "lat/lon out of range"));
//!         }
//!         out.push(&self.topic, &self.enc, &input.record)
//!     }
//! }
//! ```

pub mod config;
mod error;
pub mod http;
pub mod kafka;
pub mod limit;
pub mod metrics;
mod outputs;
pub mod runner;
pub mod secrets;
pub mod shutdown;
pub mod table;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Cli, Config, Section};
pub use error::{Error, ProcessError, Result};
pub use outputs::Outputs;
pub use runner::{Input, Processor, RunSummary, Runtime};
pub use table::Table;
