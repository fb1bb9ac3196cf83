//! # telemetry-processor
//!
//! Consumes `fleet.telemetry` ([`TelemetryReading`]) and
//! * keeps each vehicle's latest state in `vehicle_state` (batched writes every timer tick; an
//!   older event never overwrites a newer one),
//! * aggregates readings per vehicle over event-time windows (tumbling by default, 60 s; hopping
//!   with `window_slide` < `window_size`) with a per-partition watermark (`allowed_lateness`,
//!   idle partitions advance with processing time after `idle_timeout`),
//! * emits every closed window as a [`WindowAggregate`] to `fleet.telemetry-windows` and to the
//!   `vehicle_windows` table; readings later than the lateness go to the DLQ with reason `late`.
//!
//! ## Delivery guarantee
//! The processor runs on the state runtime ([`fleet_runtime::task`]). A partition's state
//! holds each vehicle's open windows ([`Slot::Vehicle`]: the window aggregates, checkpointed
//! by key when they change) and the partition's own clock ([`Slot::Partition`]: its
//! watermark). The runtime checkpoints them with the input offsets they cover and restores
//! them when the partition is assigned, so a restart resumes the open windows where they
//! were, without re-reading their records.
//! * `runner.processing_guarantee = "exactly_once"`: closed windows, window state and offsets
//!   commit in one Kafka transaction; a `read_committed` reader of `fleet.telemetry-windows`
//!   sees each window once, complete.
//! * `at_least_once` (the default): a crash repeats the windows closed since the last commit,
//!   identical (a window's `event_id` is derived from vehicle and bounds, and its contents
//!   from the same readings).
//!
//! The `vehicle_state` and `vehicle_windows` rows are written before each commit
//! (idempotent upserts; an older event never overwrites a newer vehicle state). A replayed
//! reading already in an open window (same vehicle and event time) is ignored. The time the
//! process was down is not idleness: a restored watermark restarts its idle clock, so the
//! backlog's readings are not made late by it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::{
    Closed, EndIndex, KeyWindows, Outcome, Sample, Watermark, Windows, trusted_event_time,
};
use fleet_runtime::metrics::now_ms;
use fleet_runtime::{Input, Outputs, ProcessError, State, StatefulProcessor};
use fleet_schemas::{Encoder, Position, TelemetryReading, WindowAggregate, ids};
use fleet_state::{StateStore, VehicleState, WindowRow};
use serde::{Deserialize, Serialize};

fleet_runtime::config_section! {
    /// telemetry-processor settings.
    pub struct TelemetryConfig {
        /// Topic of TelemetryReading records.
        pub input_topic: String = "fleet.telemetry".to_owned(),
        /// Topic for closed windows (WindowAggregate).
        pub windows_topic: String = "fleet.telemetry-windows".to_owned(),
        /// State store URL: sqlite://path (embedded) or scylla://host:port/keyspace.
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// Window length.
        #[serde(with = "humantime_serde")]
        pub window_size: Duration = Duration::from_secs(60),
        /// Window slide; equal to window_size for tumbling windows.
        #[serde(with = "humantime_serde")]
        pub window_slide: Duration = Duration::from_secs(60),
        /// How late (in event time) a reading may arrive and still be aggregated.
        #[serde(with = "humantime_serde")]
        pub allowed_lateness: Duration = Duration::from_secs(30),
        /// After this long without input a partition's watermark follows processing time.
        #[serde(with = "humantime_serde")]
        pub idle_timeout: Duration = Duration::from_secs(60),
        /// How far ahead of its receive time (`ingest_time`) a reading's event time may move
        /// the partition's watermark: a device with a fast clock cannot make other vehicles'
        /// readings late (see `fleet_domain::trusted_event_time`).
        #[serde(with = "humantime_serde")]
        pub max_clock_skew: Duration = Duration::from_secs(10),
        /// Speed (km/h) from which a vehicle counts as moving.
        pub moving_threshold_kmh: f64 = 3.0,
        /// Buffered vehicle states that force a write before the next tick.
        pub max_buffered_states: usize = 5_000,
    }
    validate(this) {
        let ms = |d: Duration| d.as_millis() as i64;
        Windows::hopping(ms(this.window_size), ms(this.window_slide))
            .map_err(|e| fleet_runtime::Error::Config(format!("app.window_size/window_slide: {e}")))?;
        if this.input_topic == this.windows_topic {
            return Err(fleet_runtime::Error::Config("app.windows_topic must differ from app.input_topic".into()));
        }
        Ok(())
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The key of a partition's own entry in its state. Vehicle ids never start with NUL (such
/// readings are refused), so it cannot collide with one.
pub const PARTITION_KEY: &str = "\u{0}partition";

/// One entry of a partition's state: a vehicle's open windows, or (under [`PARTITION_KEY`])
/// the partition's clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Slot {
    /// The open windows of one vehicle.
    Vehicle(KeyWindows),
    /// The partition's own state.
    Partition(PartitionClock),
}

/// A partition's watermark, and (rebuilt in each life, not checkpointed) the index of its
/// vehicles' window ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionClock {
    watermark: Watermark,
    /// `None` in a state restored by this process until its first use, which rebuilds it
    /// from the vehicles' windows and restarts the watermark's idle clock.
    #[serde(skip)]
    index: Option<EndIndex<String>>,
}

/// The processor.
#[derive(Debug)]
pub struct Telemetry<S> {
    windows_topic: Arc<str>,
    encoder: Encoder<WindowAggregate>,
    store: S,
    windows: Windows,
    lateness_ms: i64,
    idle_ms: i64,
    max_skew_ms: i64,
    moving_threshold_kmh: f64,
    max_buffered: usize,
    /// Latest state per vehicle since the last write.
    states: HashMap<String, VehicleState>,
    /// Closed windows' rows since the last write.
    rows: Vec<WindowRow>,
    opened: Vec<i64>,
    closed: Vec<Closed<String>>,
}

impl<S: StateStore> Telemetry<S> {
    /// A processor writing windows with `encoder` and rows to `store`.
    pub fn new(
        config: &TelemetryConfig,
        encoder: Encoder<WindowAggregate>,
        store: S,
    ) -> Result<Self, fleet_runtime::Error> {
        let windows = Windows::hopping(ms(config.window_size), ms(config.window_slide))
            .map_err(|e| fleet_runtime::Error::Config(e.to_string()))?;
        Ok(Self {
            windows_topic: Arc::from(config.windows_topic.as_str()),
            encoder,
            store,
            windows,
            lateness_ms: ms(config.allowed_lateness),
            idle_ms: ms(config.idle_timeout),
            max_skew_ms: ms(config.max_clock_skew),
            moving_threshold_kmh: config.moving_threshold_kmh,
            max_buffered: config.max_buffered_states.max(1),
            states: HashMap::new(),
            rows: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
        })
    }

    /// The partition's clock, created on first use; in a restored state, its index rebuilt
    /// and its idle clock restarted (the time nobody consumed is not idleness).
    fn clock<'s>(
        &self,
        state: &'s mut State<Slot>,
        now: i64,
    ) -> Result<&'s mut PartitionClock, ProcessError> {
        let restored = match state.get(PARTITION_KEY) {
            Some(Slot::Partition(c)) => c.index.is_none(),
            Some(Slot::Vehicle(_)) => {
                return Err(ProcessError::Fatal(
                    "the partition key of the telemetry state holds a vehicle".into(),
                ));
            }
            None => {
                state.insert(
                    PARTITION_KEY,
                    Slot::Partition(PartitionClock {
                        watermark: Watermark::new(self.lateness_ms, self.idle_ms),
                        index: Some(EndIndex::default()),
                    }),
                );
                false
            }
        };
        if restored {
            let mut index = EndIndex::default();
            for (k, slot) in state.iter() {
                if let Slot::Vehicle(w) = slot {
                    for end in w.ends() {
                        index.insert(end, k.to_owned());
                    }
                }
            }
            if let Some(Slot::Partition(c)) = state.get_mut(PARTITION_KEY) {
                c.watermark.observe(i64::MIN, now);
                c.index = Some(index);
            }
        }
        match state.get_mut(PARTITION_KEY) {
            Some(Slot::Partition(c)) => Ok(c),
            _ => Err(ProcessError::Fatal("the partition clock vanished".into())),
        }
    }

    /// Closes the windows of `state` that end at or before `wm` into `self.closed`.
    fn close_until(&mut self, state: &mut State<Slot>, wm: i64) {
        loop {
            let due = match state.get_mut(PARTITION_KEY) {
                Some(Slot::Partition(c)) => c.index.as_mut().and_then(|i| i.pop_due(wm)),
                _ => None,
            };
            let Some((end, vehicle)) = due else { break };
            let empty = match state.get_mut(&vehicle) {
                Some(Slot::Vehicle(w)) => {
                    w.close_until(&vehicle, end, &mut self.closed);
                    w.is_empty()
                }
                _ => false,
            };
            if empty {
                state.remove(&vehicle);
            }
        }
    }

    /// Stages the closed windows as outputs and rows.
    fn emit(&mut self, out: &mut Outputs, now: i64) -> Result<(), ProcessError> {
        for c in self.closed.drain(..) {
            let record = to_record(&c, now);
            out.push(&self.windows_topic, &self.encoder, &record)?;
            self.rows.push(to_row(&record));
        }
        Ok(())
    }

    /// Writes the buffered window rows and vehicle states (kept for the retry on a failure:
    /// a state dropped here would never be written if its vehicle goes quiet).
    async fn write_rows(&mut self, now: i64) -> Result<(), ProcessError> {
        if !self.rows.is_empty() {
            self.store
                .put_windows(&self.rows, now)
                .await
                .map_err(|e| ProcessError::Transient(format!("writing windows: {e}")))?;
            self.rows.clear();
        }
        if !self.states.is_empty() {
            let batch: Vec<VehicleState> = self.states.values().cloned().collect();
            self.store
                .upsert_vehicle_states(&batch, now)
                .await
                .map_err(|e| ProcessError::Transient(format!("writing vehicle_state: {e}")))?;
            self.states.clear();
        }
        Ok(())
    }
}

fn to_record(c: &Closed<String>, now: i64) -> WindowAggregate {
    let s = &c.summary;
    let pos = |x: &Sample| Position::new(x.lat, x.lon);
    WindowAggregate {
        event_id: ids::derived_id(&[
            &c.key,
            &c.window.start.to_string(),
            &c.window.end.to_string(),
        ]),
        vehicle_id: c.key.clone(),
        window_start: c.window.start,
        window_end: c.window.end,
        event_time: s.last.t,
        ingest_time: now,
        count: s.count as i64,
        speed_avg_kmh: s.speed_avg_kmh,
        speed_max_kmh: s.speed_max_kmh,
        cargo_temp_min_c: s.cargo_temp_min_c,
        cargo_temp_avg_c: s.cargo_temp_avg_c,
        cargo_temp_max_c: s.cargo_temp_max_c,
        distance_m: s.distance_m,
        moving_s: s.moving_s,
        idle_s: s.idle_s,
        first_position: Some(pos(&s.first)),
        last_position: Some(pos(&s.last)),
        first_event_time: s.first.t,
        late_records: c.late_records as i64,
    }
}

fn to_row(w: &WindowAggregate) -> WindowRow {
    WindowRow {
        vehicle_id: w.vehicle_id.clone(),
        window_start: w.window_start,
        window_end: w.window_end,
        count: w.count,
        speed_avg_kmh: w.speed_avg_kmh,
        speed_max_kmh: w.speed_max_kmh,
        cargo_temp_min_c: w.cargo_temp_min_c,
        cargo_temp_avg_c: w.cargo_temp_avg_c,
        cargo_temp_max_c: w.cargo_temp_max_c,
        distance_m: w.distance_m,
        moving_s: w.moving_s,
        idle_s: w.idle_s,
        event_id: w.event_id.clone(),
    }
}

impl<S: StateStore> StatefulProcessor for Telemetry<S> {
    type Input = TelemetryReading;
    type State = Slot;

    async fn process(
        &mut self,
        input: &Input<'_, TelemetryReading>,
        state: &mut State<Slot>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let r = &input.record;
        r.position
            .check()
            .map_err(|why| ProcessError::poison("invalid_position", why))?;
        if r.vehicle_id.is_empty() || r.vehicle_id.starts_with('\0') {
            return Err(ProcessError::poison(
                "invalid_vehicle_id",
                format!("vehicle id {:?} is empty or starts with NUL", r.vehicle_id),
            ));
        }
        let now = now_ms();
        let trusted = trusted_event_time(r.event_time, r.ingest_time, self.max_skew_ms);
        let clock = self.clock(state, now)?;
        clock.watermark.observe(trusted, now);
        let wm = clock.watermark.current(now);
        let sample = Sample {
            t: r.event_time,
            lat: r.position.lat,
            lon: r.position.lon,
            speed_kmh: r.speed_kmh,
            cargo_temp_c: r.cargo_temp_c,
        };
        self.opened.clear();
        let (windows, th) = (self.windows, self.moving_threshold_kmh);
        let outcome = match state.get_mut(&r.vehicle_id) {
            Some(Slot::Vehicle(w)) => w.add(&windows, th, sample, wm, &mut self.opened),
            Some(Slot::Partition(_)) => {
                return Err(ProcessError::Fatal(
                    "a vehicle id names the partition entry".into(),
                ));
            }
            None => {
                let mut w = KeyWindows::default();
                let outcome = w.add(&windows, th, sample, wm, &mut self.opened);
                if !w.is_empty() {
                    state.insert(&r.vehicle_id, Slot::Vehicle(w));
                }
                outcome
            }
        };
        if !self.opened.is_empty()
            && let Some(Slot::Partition(c)) = state.get_mut(PARTITION_KEY)
            && let Some(index) = c.index.as_mut()
        {
            for end in self.opened.drain(..) {
                index.insert(end, r.vehicle_id.clone());
            }
        }
        if outcome == Outcome::Late {
            return Err(ProcessError::poison(
                "late",
                format!(
                    "event time {} is behind the watermark {:?} by more than the allowed lateness",
                    r.event_time, wm
                ),
            ));
        }
        // Latest state per vehicle, written in batches.
        let newer = self
            .states
            .get(&r.vehicle_id)
            .is_none_or(|s| s.event_time <= r.event_time);
        if newer {
            self.states.insert(
                r.vehicle_id.clone(),
                VehicleState {
                    vehicle_id: r.vehicle_id.clone(),
                    event_time: r.event_time,
                    lat: r.position.lat,
                    lon: r.position.lon,
                    speed_kmh: r.speed_kmh,
                    heading_deg: r.heading_deg,
                    cargo_temp_c: r.cargo_temp_c,
                    door_open: r.door_open,
                    ignition_on: r.ignition_on,
                    event_id: r.event_id.clone(),
                },
            );
        }
        if let Some(wm) = wm {
            self.close_until(state, wm);
            self.emit(out, now)?;
        }
        if self.states.len() >= self.max_buffered {
            self.write_rows(now).await?;
        }
        Ok(())
    }

    /// Idle partitions: their watermark follows processing time, closing the last windows.
    async fn on_tick(
        &mut self,
        now: i64,
        _topic: &str,
        _partition: i32,
        state: &mut State<Slot>,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        if state.is_empty() {
            return Ok(());
        }
        let clock = self.clock(state, now)?;
        // Advanced on a copy: written back only when it closes windows, so an idle
        // partition's tick changes nothing that needs a checkpoint.
        let mut advanced = clock.watermark.clone();
        let Some(wm) = advanced.current(now) else {
            return Ok(());
        };
        let due = clock
            .index
            .as_ref()
            .and_then(|i| i.first_end())
            .is_some_and(|end| end <= wm);
        if !due {
            return Ok(());
        }
        clock.watermark = advanced;
        self.close_until(state, wm);
        self.emit(out, now)
    }

    async fn flush(&mut self) -> Result<(), ProcessError> {
        self.write_rows(now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use fleet_runtime::harness::Harness;
    use fleet_schemas::Decoder;
    use fleet_state::{Result as StateResult, Store, StoreOptions};

    use super::*;

    /// The real SQLite store, with `put_windows` failing a chosen number of times.
    #[derive(Clone)]
    struct Flaky {
        inner: Store,
        failures_left: Arc<AtomicUsize>,
        /// Failures left of `upsert_vehicle_states`.
        state_failures_left: Arc<AtomicUsize>,
    }

    impl StateStore for Flaky {
        async fn upsert_vehicle_states(
            &self,
            rows: &[VehicleState],
            now: i64,
        ) -> StateResult<usize> {
            if self
                .state_failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(fleet_state::Error::Backend("injected failure".into()));
            }
            self.inner.upsert_vehicle_states(rows, now).await
        }
        async fn vehicle_state(&self, id: &str, now: i64) -> StateResult<Option<VehicleState>> {
            self.inner.vehicle_state(id, now).await
        }
        async fn vehicle_states(
            &self,
            after: &str,
            limit: usize,
            now: i64,
        ) -> StateResult<Vec<VehicleState>> {
            self.inner.vehicle_states(after, limit, now).await
        }
        async fn put_windows(&self, rows: &[WindowRow], now: i64) -> StateResult<()> {
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(fleet_state::Error::Backend("injected failure".into()));
            }
            self.inner.put_windows(rows, now).await
        }
        async fn windows(&self, v: &str, f: i64, t: i64, now: i64) -> StateResult<Vec<WindowRow>> {
            self.inner.windows(v, f, t, now).await
        }
        async fn record_incident(
            &self,
            i: &fleet_state::Incident,
        ) -> StateResult<Option<fleet_state::Incident>> {
            self.inner.record_incident(i).await
        }
        async fn mark_notified(&self, ids: &[String], at: i64) -> StateResult<()> {
            self.inner.mark_notified(ids, at).await
        }
        async fn incident(&self, id: &str) -> StateResult<Option<fleet_state::Incident>> {
            self.inner.incident(id).await
        }
        async fn incidents_for_vehicle(
            &self,
            v: &str,
            limit: usize,
        ) -> StateResult<Vec<fleet_state::Incident>> {
            self.inner.incidents_for_vehicle(v, limit).await
        }
        async fn put_deliveries(&self, rows: &[fleet_state::DeliveryRow]) -> StateResult<()> {
            self.inner.put_deliveries(rows).await
        }
        async fn delivery(&self, id: &str) -> StateResult<Option<fleet_state::DeliveryRow>> {
            self.inner.delivery(id).await
        }
        async fn deliveries_for_vehicle(
            &self,
            v: &str,
            limit: usize,
        ) -> StateResult<Vec<fleet_state::DeliveryRow>> {
            self.inner.deliveries_for_vehicle(v, limit).await
        }
    }

    /// The real SQLite store in `dir`, failing `put_windows` `failures` times.
    async fn flaky(dir: &tempfile::TempDir, failures: usize) -> Flaky {
        let url = format!("sqlite://{}/s.db", dir.path().display());
        Flaky {
            inner: Store::open(&url, StoreOptions::default())
                .await
                .expect("store"),
            failures_left: Arc::new(AtomicUsize::new(failures)),
            state_failures_left: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn reading(vehicle: &str, t: i64) -> TelemetryReading {
        TelemetryReading {
            event_id: ids::derived_id(&[vehicle, &t.to_string()]),
            vehicle_id: vehicle.into(),
            event_time: t,
            ingest_time: t,
            sent_time: None,
            position: Position::new(4.6, -74.0 + t as f64 * 1e-9),
            speed_kmh: Some(40.0),
            heading_deg: None,
            cargo_temp_c: Some(3.0),
            door_open: None,
            ignition_on: None,
            accel_mps2: None,
            odometer_km: None,
            battery_v: None,
            camera_active: None,
            source: "test".into(),
        }
    }

    type P = Harness<Telemetry<Flaky>>;

    fn config() -> TelemetryConfig {
        TelemetryConfig {
            input_topic: "in".into(),
            windows_topic: "windows".into(),
            ..Default::default()
        }
    }

    fn processor(config: &TelemetryConfig, store: Flaky) -> Telemetry<Flaky> {
        Telemetry::new(config, Encoder::with_schema_id(7), store).expect("processor")
    }

    async fn feed(p: &mut P, offset: i64, r: TelemetryReading) -> Result<Outputs, ProcessError> {
        let input = Input {
            record: r,
            topic: "in",
            partition: 0,
            offset,
            key: None,
            timestamp_ms: None,
        };
        p.process(&input).await
    }

    async fn decode(out: &Outputs) -> Vec<WindowAggregate> {
        let dec = Decoder::<WindowAggregate>::offline(&[7]);
        let mut v = Vec::new();
        for (topic, key, payload) in out.iter() {
            let w = dec.decode(payload).await.expect("window");
            assert_eq!(topic, "windows");
            assert_eq!(key, w.vehicle_id.as_bytes(), "keyed by vehicle");
            v.push(w);
        }
        v
    }

    /// A failed `vehicle_state` write keeps its batch: the retry writes it (it used to be
    /// dropped, so a vehicle that then went quiet never got its last state written).
    #[tokio::test]
    async fn a_failed_state_write_is_retried_not_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = flaky(&dir, 0).await;
        store.state_failures_left = Arc::new(AtomicUsize::new(1));
        let mut p = Harness::new(processor(&config(), store.clone()));
        let t = now_ms();
        let mut r = reading("V-QUIET", t);
        r.position = Position::new(4.6, -74.0);
        feed(&mut p, 0, r).await.expect("ok");
        let err = p.commit().await;
        assert!(matches!(err, Err(ProcessError::Transient(_))), "{err:?}");
        assert!(
            store
                .vehicle_state("V-QUIET", t)
                .await
                .expect("read")
                .is_none()
        );
        p.commit().await.expect("store back");
        assert!(
            store
                .vehicle_state("V-QUIET", t)
                .await
                .expect("read")
                .is_some(),
            "the state of the failed batch is written by the retry"
        );
    }

    /// A failed window write aborts the batch: its inputs come again and close the same
    /// window, which is written; a restart from the committed state emits it no more.
    #[tokio::test]
    async fn a_failed_store_write_never_drops_a_closed_window() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = flaky(&dir, 1).await;
        let config = TelemetryConfig {
            allowed_lateness: Duration::from_secs(0),
            ..config()
        };
        let mut p = Harness::new(processor(&config, store.clone()));
        // Window [0, 60 s) gets two readings (offsets 10 and 11); offset 12 at 61 s closes it.
        let batch = [
            (10, reading("V", 1_000)),
            (11, reading("V", 2_000)),
            (12, reading("V", 61_000)),
        ];
        let mut first = Vec::new();
        for (o, r) in &batch {
            first.extend(decode(&feed(&mut p, *o, r.clone()).await.expect("ok")).await);
        }
        assert_eq!(first.len(), 1);
        let err = p.commit().await.expect_err("injected");
        assert!(matches!(err, ProcessError::Transient(_)));
        // The runtime aborts the batch and feeds its inputs again.
        p.abort();
        let mut again = Vec::new();
        for (o, r) in &batch {
            again.extend(decode(&feed(&mut p, *o, r.clone()).await.expect("ok")).await);
        }
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].event_id, first[0].event_id);
        assert_eq!((again[0].window_start, again[0].count), (0, 2));
        p.commit().await.expect("commit");
        let rows = store.windows("V", 0, 60_000, now_ms()).await.expect("read");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].count, 2);
        // A restart resumes from the committed state: the window is not emitted again, and
        // the open window [60 s, 120 s) goes on with its reading.
        p.restart(processor(&config, store.clone()));
        let out = feed(&mut p, 13, reading("V", 62_000)).await.expect("ok");
        assert!(out.is_empty());
        let out = feed(&mut p, 14, reading("V", 121_000)).await.expect("ok");
        let w = decode(&out).await;
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].window_start, w[0].count), (60_000, 2));
    }

    /// A restart in the middle of a window neither loses the readings before it nor counts
    /// any twice: the window comes out as in an undisturbed run.
    #[tokio::test]
    async fn a_restart_mid_window_resumes_its_aggregate() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = flaky(&dir, 0).await;
        let config = TelemetryConfig {
            allowed_lateness: Duration::from_secs(0),
            idle_timeout: Duration::from_secs(3600),
            ..config()
        };
        let input: Vec<TelemetryReading> =
            (0..13).map(|i| reading("V", 1_000 + i * 5_000)).collect();
        let mut whole = Harness::new(processor(&config, store.clone()));
        let mut expected = Vec::new();
        for (i, r) in input.iter().enumerate() {
            expected
                .extend(decode(&feed(&mut whole, i as i64, r.clone()).await.expect("ok")).await);
        }
        let mut p = Harness::new(processor(&config, store.clone()));
        let mut got = Vec::new();
        for (i, r) in input.iter().enumerate().take(6) {
            got.extend(decode(&feed(&mut p, i as i64, r.clone()).await.expect("ok")).await);
        }
        p.commit().await.expect("commit");
        // Two more readings, lost with the crash before the next commit.
        for (i, r) in input.iter().enumerate().skip(6).take(2) {
            feed(&mut p, i as i64, r.clone()).await.expect("ok");
        }
        p.restart(processor(&config, store.clone()));
        for (i, r) in input.iter().enumerate().skip(6) {
            got.extend(decode(&feed(&mut p, i as i64, r.clone()).await.expect("ok")).await);
        }
        let strip = |v: Vec<WindowAggregate>| {
            v.into_iter()
                .map(|mut w| {
                    w.ingest_time = 0;
                    w
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[0].count, 12);
        assert_eq!(strip(got), strip(expected));
    }

    /// An idle partition's last window closes on the tick, also after a restart.
    #[tokio::test]
    async fn an_idle_partition_closes_its_last_window_on_the_tick() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = flaky(&dir, 0).await;
        let config = TelemetryConfig {
            idle_timeout: Duration::from_secs(60),
            ..config()
        };
        let mut p = Harness::new(processor(&config, store.clone()));
        let t = now_ms() - 3_600_000;
        let mut r = reading("V", t);
        r.position = Position::new(4.6, -74.0);
        feed(&mut p, 0, r).await.expect("ok");
        p.commit().await.expect("commit");
        p.restart(processor(&config, store.clone()));
        let now = now_ms();
        assert!(
            p.tick(now).await.expect("tick").is_empty(),
            "the first tick after a restore restarts the idle clock"
        );
        let w = decode(&p.tick(now + 200_000).await.expect("tick")).await;
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].count, 1);
        p.commit().await.expect("commit");
        assert_eq!(
            p.state("in", 0).map(State::len),
            Some(1),
            "only the partition's clock is left"
        );
    }

    /// One truck whose clock is 4 minutes fast among honest ones: the honest vehicles' windows
    /// are exactly those of a run without it, and none of their readings is late.
    #[tokio::test]
    async fn a_fast_device_clock_leaves_the_other_vehicles_windows_unchanged() {
        async fn run(with_fast: bool) -> Vec<WindowAggregate> {
            let dir = tempfile::tempdir().expect("tmp");
            let store = flaky(&dir, 0).await;
            let config = TelemetryConfig {
                idle_timeout: Duration::from_secs(3600),
                ..config()
            };
            let mut p = Harness::new(processor(&config, store));
            let mut windows = Vec::new();
            let mut offset = 0;
            for t in (0..300_000i64).step_by(1_000) {
                for v in ["A", "B", "C"] {
                    let mut r = reading(v, t);
                    r.ingest_time = t + 50;
                    let out = feed(&mut p, offset, r)
                        .await
                        .unwrap_or_else(|e| panic!("{v} at {t}: {e:?}"));
                    windows.extend(decode(&out).await);
                    offset += 1;
                }
                if with_fast {
                    let mut r = reading("FAST", t + 240_000);
                    r.ingest_time = t + 60;
                    windows.extend(decode(&feed(&mut p, offset, r).await.expect("fast")).await);
                    offset += 1;
                }
            }
            let mut windows: Vec<WindowAggregate> = windows
                .into_iter()
                .filter(|w| w.vehicle_id != "FAST")
                .map(|mut w| {
                    w.ingest_time = 0;
                    w
                })
                .collect();
            windows.sort_by(|a, b| {
                (&a.vehicle_id, a.window_start).cmp(&(&b.vehicle_id, b.window_start))
            });
            windows
        }
        let honest = run(false).await;
        assert!(honest.len() >= 9, "windows closed: {}", honest.len());
        assert_eq!(run(true).await, honest);
    }

    #[tokio::test]
    async fn late_invalid_and_reserved_readings_are_poison() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = flaky(&dir, 0).await;
        let config = TelemetryConfig {
            allowed_lateness: Duration::from_secs(5),
            ..config()
        };
        let mut p = Harness::new(processor(&config, store));
        feed(&mut p, 1, reading("V", 130_000)).await.expect("ok");
        let late = feed(&mut p, 2, reading("V", 10_000))
            .await
            .expect_err("late");
        assert!(matches!(late, ProcessError::Poison { reason: "late", .. }));
        let mut bad = reading("V", 131_000);
        bad.position.lat = 95.0;
        let invalid = feed(&mut p, 3, bad).await.expect_err("invalid");
        assert!(matches!(
            invalid,
            ProcessError::Poison {
                reason: "invalid_position",
                ..
            }
        ));
        for id in ["", PARTITION_KEY] {
            let err = feed(&mut p, 4, reading(id, 131_000))
                .await
                .expect_err("reserved");
            assert!(
                matches!(
                    err,
                    ProcessError::Poison {
                        reason: "invalid_vehicle_id",
                        ..
                    }
                ),
                "{id:?}: {err:?}"
            );
        }
    }
}
