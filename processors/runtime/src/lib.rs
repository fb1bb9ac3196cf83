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
//! * [`task`] and [`state`]: the state runtime: a [`StatefulProcessor`] works against the
//!   runtime-owned [`State`] of its input's partition; the runtime restores it from a
//!   changelog topic on assign, checkpoints changed keys with each commit, and with
//!   `runner.processing_guarantee = "exactly_once"` commits outputs, state and offsets in one
//!   Kafka transaction. New stateful processors are written this way (see the example below);
//!   [`harness`] drives one in unit tests, commits and restarts included, without Kafka.
//! * [`metrics`]: Prometheus `/metrics`, `/health/live`, `/health/ready`.
//! * [`table`]: a topic read from the beginning as an in-memory table (vehicle profiles).
//! * [`shutdown`]: SIGINT/SIGTERM -> cancellation token; a second signal exits at once.
//!
//! ## Delivery guarantee
//! [`runner`]: at least once, with per-partition order; see its docs for the exact argument.
//! [`task`]: exactly once or at least once, as configured.
//!
//! ## Example: a stateful processor
//! Counts readings per vehicle and forwards each one; the count survives restarts and
//! rebalances because it lives in the runtime's [`State`]. `runtime.run_stateful(Count { .. },
//! &["fleet.telemetry"], shutdown)` runs it.
//! ```no_run
//! use fleet_runtime::{Input, Outputs, ProcessError, State, StatefulProcessor};
//! use fleet_schemas::{Encoder, TelemetryReading};
//! use std::sync::Arc;
//!
//! struct Count { topic: Arc<str>, enc: Encoder<TelemetryReading> }
//!
//! impl StatefulProcessor for Count {
//!     type Input = TelemetryReading;
//!     type State = u64;
//!     async fn process(&mut self, input: &Input<'_, TelemetryReading>, state: &mut State<u64>,
//!         out: &mut Outputs) -> Result<(), ProcessError> {
//!         *state.get_or_insert_with(&input.record.vehicle_id, || 0) += 1;
//!         out.push(&self.topic, &self.enc, &input.record)
//!     }
//! }
//! ```
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

pub mod backoff;
pub mod config;
mod error;
pub mod harness;
pub mod http;
pub mod kafka;
pub mod limit;
pub mod metrics;
mod outputs;
pub mod runner;
pub mod secrets;
pub mod shutdown;
pub mod state;
pub mod table;
pub mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Cli, Config, Section};
pub use error::{Error, ProcessError, Result};
pub use outputs::Outputs;
pub use runner::{Input, Processor, RunSummary, Runtime};
pub use state::State;
pub use table::Table;
pub use task::StatefulProcessor;
