//! # passthrough-processor
//!
//! The smallest processor: reads [`TelemetryReading`]s, rejects readings whose position is out
//! of range (dead letter, reason `invalid_position`), and forwards the rest unchanged to an
//! output topic. It exists to prove and measure the shared run loop (`fleet-runtime`): tests
//! kill it mid-stream, benchmarks compare it with a bare consumer, the demo runs it.
//!
//! * Input: `app.input_topic` (default `fleet.telemetry`), Avro `TelemetryReading`.
//! * Output: `app.output_topic` (default `fleet.passthrough`), the same record, same key.
//! * Dead letters: `runner.dlq_topic` (default `fleet.dlq`): undecodable input (`decode_error`)
//!   and out-of-range positions (`invalid_position`).
//!
//! ## Delivery guarantee
//! At least once (the runtime's): every valid input has an output and every invalid one a dead
//! letter, even across `kill -9`; after a crash, inputs since the last commit are forwarded
//! again (duplicates keep their `event_id`).

use std::sync::Arc;

use fleet_runtime::{Input, Outputs, ProcessError, Processor};
use fleet_schemas::{Encoder, TelemetryReading};

fleet_runtime::config_section! {
    /// passthrough-processor settings.
    pub struct PassthroughConfig {
        /// Topic to read TelemetryReading records from.
        pub input_topic: String = "fleet.telemetry".to_owned(),
        /// Topic to forward valid readings to.
        pub output_topic: String = "fleet.passthrough".to_owned(),
    }
    validate(this) {
        if this.input_topic.is_empty() || this.output_topic.is_empty() {
            return Err(fleet_runtime::Error::Config("app.input_topic and app.output_topic must be set".into()));
        }
        if this.input_topic == this.output_topic {
            return Err(fleet_runtime::Error::Config("app.output_topic must differ from app.input_topic".into()));
        }
        Ok(())
    }
}

/// Forwards valid readings.
#[derive(Debug)]
pub struct Passthrough {
    output: Arc<str>,
    encoder: Encoder<TelemetryReading>,
}

impl Passthrough {
    /// A pass-through to `output` using `encoder`'s registered schema id.
    pub fn new(output: &str, encoder: Encoder<TelemetryReading>) -> Self {
        Self {
            output: Arc::from(output),
            encoder,
        }
    }
}

impl Processor for Passthrough {
    type Input = TelemetryReading;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        r.position
            .check()
            .map_err(|why| ProcessError::poison("invalid_position", why))?;
        out.push(&self.output, &self.encoder, r)
    }
}
