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
//! ## De-duplication: the smallest stateful processor
//! With `app.dedupe_ids = N` (> 0), a reading whose `event_id` is among the last N forwarded
//! for its vehicle is dropped (a device's QoS 1 redelivery, a replayed file). The recent ids
//! are per-vehicle state owned by the state runtime ([`fleet_runtime::task`]): restored when a
//! partition is assigned, checkpointed (changed vehicles only) with each commit. This mode is
//! also the example of how to write a stateful processor: [`Passthrough`]'s
//! [`StatefulProcessor`] impl is all of it.
//!
//! ## Delivery guarantee
//! * Default (`dedupe_ids = 0`, `runner.processing_guarantee = "at_least_once"`): at least
//!   once (the runtime's run loop): every valid input has an output and every invalid one a
//!   dead letter, even across `kill -9`; after a crash, inputs since the last commit are
//!   forwarded again (duplicates keep their `event_id`).
//! * `dedupe_ids > 0` or `processing_guarantee = "exactly_once"`: the state runtime. With
//!   `exactly_once`, outputs, dead letters, the recent-id state and the input offsets commit
//!   in one Kafka transaction: a `read_committed` reader of the output sees every distinct
//!   valid reading exactly once, whatever is killed when; with `at_least_once`, a crash may
//!   forward a reading again.

use std::collections::VecDeque;
use std::sync::Arc;

use fleet_runtime::{Input, Outputs, ProcessError, Processor, State, StatefulProcessor};
use fleet_schemas::{Encoder, TelemetryReading};

fleet_runtime::config_section! {
    /// passthrough-processor settings.
    pub struct PassthroughConfig {
        /// Topic to read TelemetryReading records from.
        pub input_topic: String = "fleet.telemetry".to_owned(),
        /// Topic to forward valid readings to.
        pub output_topic: String = "fleet.passthrough".to_owned(),
        /// Recent event ids remembered per vehicle to drop duplicates; 0: forward every
        /// reading (and run on the stateless loop unless exactly-once is asked for).
        pub dedupe_ids: usize = 0,
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
    dedupe_ids: usize,
}

impl Passthrough {
    /// A pass-through to `output` using `encoder`'s registered schema id.
    pub fn new(output: &str, encoder: Encoder<TelemetryReading>) -> Self {
        Self {
            output: Arc::from(output),
            encoder,
            dedupe_ids: 0,
        }
    }

    /// Drops a reading whose event id is among the last `n` forwarded for its vehicle (state
    /// runtime only).
    pub fn dedupe(mut self, n: usize) -> Self {
        self.dedupe_ids = n;
        self
    }
}

impl Passthrough {
    /// Refuses an out-of-range position (poison).
    fn check(r: &TelemetryReading) -> Result<(), ProcessError> {
        r.position
            .check()
            .map_err(|why| ProcessError::poison("invalid_position", why))
    }
}

impl Processor for Passthrough {
    type Input = TelemetryReading;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        Self::check(&input.record)?;
        out.push(&self.output, &self.encoder, &input.record)
    }
}

/// The event ids last forwarded for one vehicle, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecentIds(VecDeque<String>);

impl StatefulProcessor for Passthrough {
    type Input = TelemetryReading;
    type State = RecentIds;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        state: &mut State<RecentIds>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        Self::check(r)?;
        if self.dedupe_ids > 0 {
            if state
                .get(&r.vehicle_id)
                .is_some_and(|recent| recent.0.contains(&r.event_id))
            {
                return Ok(());
            }
            let recent = state.get_or_insert_with(&r.vehicle_id, RecentIds::default);
            if recent.0.len() >= self.dedupe_ids {
                recent.0.pop_front();
            }
            recent.0.push_back(r.event_id.clone());
        }
        out.push(&self.output, &self.encoder, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::Position;

    fn reading(vehicle: &str, id: &str) -> TelemetryReading {
        TelemetryReading {
            event_id: id.into(),
            vehicle_id: vehicle.into(),
            event_time: 1_700_000_000_000,
            ingest_time: 1_700_000_000_020,
            sent_time: None,
            position: Position::new(4.6, -74.08),
            speed_kmh: None,
            heading_deg: None,
            cargo_temp_c: None,
            door_open: None,
            ignition_on: None,
            accel_mps2: None,
            odometer_km: None,
            battery_v: None,
            camera_active: None,
            source: "test".into(),
        }
    }

    async fn forward(
        p: &mut Passthrough,
        state: &mut State<RecentIds>,
        r: TelemetryReading,
    ) -> usize {
        let mut out = Outputs::new();
        let input = Input {
            record: r,
            topic: "in",
            partition: 0,
            offset: 0,
            key: None,
            timestamp_ms: None,
        };
        StatefulProcessor::process(p, &input, state, &mut out)
            .await
            .expect("valid reading");
        out.len()
    }

    #[tokio::test]
    async fn drops_a_vehicles_recent_ids_only_and_forgets_the_oldest() {
        let mut p = Passthrough::new("out", Encoder::with_schema_id(1)).dedupe(2);
        let mut s = State::new();
        assert_eq!(forward(&mut p, &mut s, reading("A", "1")).await, 1);
        assert_eq!(
            forward(&mut p, &mut s, reading("A", "1")).await,
            0,
            "duplicate"
        );
        assert_eq!(
            forward(&mut p, &mut s, reading("B", "1")).await,
            1,
            "ids are per vehicle"
        );
        assert_eq!(forward(&mut p, &mut s, reading("A", "2")).await, 1);
        assert_eq!(forward(&mut p, &mut s, reading("A", "3")).await, 1);
        assert_eq!(
            forward(&mut p, &mut s, reading("A", "1")).await,
            1,
            "beyond the last 2: forwarded again"
        );
        assert_eq!(
            s.get("A").map(|r| r.0.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["3".to_owned(), "1".to_owned()])
        );
        let mut off = Passthrough::new("out", Encoder::with_schema_id(1));
        assert_eq!(forward(&mut off, &mut s, reading("A", "3")).await, 1);
        assert_eq!(s.len(), 2, "dedupe off: no state written");
    }
}
