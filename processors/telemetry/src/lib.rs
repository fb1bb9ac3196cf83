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
//! ## Delivery guarantee: a crash loses no window and double-counts nothing
//! * Open windows live in memory. The offset committed for a partition never passes the first
//!   record of its oldest open window ([`Processor::hold`]), nor a record whose state update is
//!   not yet written, nor the first record of a closed window whose emission is not yet durable
//!   (or that a failed store write left unemitted: it is emitted again on the retry).
//!   A restart therefore re-reads every record of every window that was not durably emitted and
//!   rebuilds those windows completely.
//! * Once the outputs of the input that closed some windows are acknowledged
//!   ([`Processor::on_durable`]), the partition's *frontier* (the watermark at that close) is
//!   saved in the state store. After a restart, re-read records whose every window ends at or
//!   before the frontier belong to windows already emitted and are skipped, so no partial copy
//!   of an emitted window is ever produced.
//! * Windows are identified by a deterministic `event_id` (vehicle + bounds) and are written
//!   with idempotent upserts: a window re-emitted after a crash is identical to the first copy.
//! * A replayed reading already in an open window (same vehicle and event time) is ignored.
//!
//! Limit: a reading that arrives after a restart and is late relative to the saved frontier
//! is skipped as a replay rather than dead-lettered; it is still in the raw topic (and the lake).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_domain::{Closed, KeyedWindows, Outcome, Sample, Watermark, Windows, trusted_event_time};
use fleet_runtime::metrics::now_ms;
use fleet_runtime::{Input, Outputs, ProcessError, Processor};
use fleet_schemas::{Encoder, Position, TelemetryReading, WindowAggregate, ids};
use fleet_state::{StateStore, VehicleState, WindowRow};

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

/// One input partition's state.
#[derive(Debug)]
struct Part {
    windows: KeyedWindows<String>,
    watermark: Watermark,
    /// Saved frontier: every window ending at or before it was emitted durably.
    frontier: Option<i64>,
    /// Closed windows not yet covered by the saved frontier: (first offset, end).
    closed_pending: BTreeSet<(i64, i64)>,
    /// Closes by inputs awaiting durability: (the input's offset, watermark at the close).
    closes: VecDeque<(i64, i64)>,
    /// Offset of the last input seen.
    last_offset: i64,
    /// Smallest offset whose vehicle state is buffered, not yet written.
    unflushed: Option<i64>,
    /// Windows closed but not yet handed to the outputs and the store.
    unemitted: Vec<Closed<String>>,
}

/// The processor.
#[derive(Debug)]
pub struct Telemetry<S> {
    group: String,
    input_topic: String,
    windows_topic: Arc<str>,
    encoder: Encoder<WindowAggregate>,
    store: S,
    windows: Windows,
    lateness_ms: i64,
    idle_ms: i64,
    max_skew_ms: i64,
    moving_threshold_kmh: f64,
    max_buffered: usize,
    parts: HashMap<i32, Part>,
    states: HashMap<String, VehicleState>,
    /// Closes made by each successful tick, in order: (partition, watermark at the close);
    /// durable when [`Processor::on_tick_durable`] pops them.
    tick_closes: VecDeque<Vec<(i32, i64)>>,
    /// Durable closes whose frontier could not be saved yet (store error): retried next tick.
    unsaved_closes: Vec<(i32, i64)>,
    /// Replayed readings skipped because their windows were already emitted.
    pub skipped_replays: u64,
}

impl<S: StateStore> Telemetry<S> {
    /// A processor writing windows with `encoder` and state to `store`; `group` names the
    /// consumer group (the frontiers are kept per group).
    pub fn new(
        config: &TelemetryConfig,
        group: &str,
        encoder: Encoder<WindowAggregate>,
        store: S,
    ) -> Result<Self, fleet_runtime::Error> {
        let windows = Windows::hopping(ms(config.window_size), ms(config.window_slide))
            .map_err(|e| fleet_runtime::Error::Config(e.to_string()))?;
        Ok(Self {
            group: group.to_owned(),
            input_topic: config.input_topic.clone(),
            windows_topic: Arc::from(config.windows_topic.as_str()),
            encoder,
            store,
            windows,
            lateness_ms: ms(config.allowed_lateness),
            idle_ms: ms(config.idle_timeout),
            max_skew_ms: ms(config.max_clock_skew),
            moving_threshold_kmh: config.moving_threshold_kmh,
            max_buffered: config.max_buffered_states.max(1),
            parts: HashMap::new(),
            states: HashMap::new(),
            tick_closes: VecDeque::new(),
            unsaved_closes: Vec::new(),
            skipped_replays: 0,
        })
    }

    async fn part(&mut self, partition: i32) -> Result<&mut Part, ProcessError> {
        if !self.parts.contains_key(&partition) {
            let frontier = self
                .store
                .load_frontier(&self.group, &self.input_topic, partition)
                .await
                .map_err(|e| ProcessError::Transient(e.to_string()))?;
            self.parts.insert(
                partition,
                Part {
                    windows: KeyedWindows::new(self.windows, self.moving_threshold_kmh),
                    watermark: Watermark::new(self.lateness_ms, self.idle_ms),
                    frontier,
                    closed_pending: BTreeSet::new(),
                    closes: VecDeque::new(),
                    last_offset: -1,
                    unflushed: None,
                    unemitted: Vec::new(),
                },
            );
        }
        self.parts
            .get_mut(&partition)
            .ok_or_else(|| ProcessError::Fatal("partition state vanished".into()))
    }

    /// Writes the buffered vehicle states.
    async fn flush_states(&mut self, now: i64) -> Result<(), ProcessError> {
        if self.states.is_empty() {
            return Ok(());
        }
        let batch: Vec<VehicleState> = self.states.drain().map(|(_, v)| v).collect();
        if let Err(e) = self.store.upsert_vehicle_states(&batch, now).await {
            // Keep the batch for the retry: a state dropped here would never be written if
            // its vehicle goes quiet (nothing newer can have arrived during this call).
            for s in batch {
                self.states.entry(s.vehicle_id.clone()).or_insert(s);
            }
            return Err(ProcessError::Transient(e.to_string()));
        }
        for p in self.parts.values_mut() {
            p.unflushed = None;
        }
        Ok(())
    }

    /// Emits the closed, not yet emitted windows of `partitions` ((partition, watermark of the
    /// close)) to `out` and the store, and returns the (partition, watermark) closes the caller
    /// must make durable. Only when the store write succeeded are the windows handed over to
    /// the frontier bookkeeping; on a failure they stay in `unemitted` and the caller's retry
    /// emits them again, so a window is never dropped between closing and emission.
    async fn emit(
        &mut self,
        partitions: &[(i32, i64)],
        out: &mut Outputs,
        now: i64,
    ) -> Result<Vec<(i32, i64)>, ProcessError> {
        let mut rows = Vec::new();
        for (p, _) in partitions {
            let Some(part) = self.parts.get(p) else {
                continue;
            };
            for c in &part.unemitted {
                let record = to_record(c, now);
                out.push(&self.windows_topic, &self.encoder, &record)?;
                rows.push(to_row(&record));
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .put_windows(&rows, now)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let mut closes = Vec::with_capacity(partitions.len());
        for (p, watermark) in partitions {
            let Some(part) = self.parts.get_mut(p) else {
                continue;
            };
            if part.unemitted.is_empty() {
                continue;
            }
            for c in part.unemitted.drain(..) {
                part.closed_pending.insert((c.first_tag, c.window.end));
            }
            closes.push((*p, *watermark));
        }
        Ok(closes)
    }

    /// Saves `frontier` for `partition` (once the outputs of the closes up to it are durable)
    /// and forgets the closed windows it covers, releasing their hold.
    async fn advance_frontier(&mut self, partition: i32, f: i64) -> Result<(), ProcessError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(());
        };
        if part.frontier.is_some_and(|old| old >= f) {
            return Ok(());
        }
        self.store
            .save_frontier(&self.group, &self.input_topic, partition, f)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        if let Some(part) = self.parts.get_mut(&partition) {
            part.frontier = Some(f);
            part.closed_pending.retain(|(_, end)| *end > f);
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

impl<S: StateStore> Processor for Telemetry<S> {
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
        let now = now_ms();
        let windows = self.windows;
        let offset = input.offset;
        let trusted = trusted_event_time(r.event_time, r.ingest_time, self.max_skew_ms);
        let part = self.part(input.partition).await?;
        part.last_offset = offset;
        // A re-read record whose windows were all emitted before a restart: skip it.
        if part
            .frontier
            .is_some_and(|f| windows.last_end(r.event_time) <= f)
        {
            self.skipped_replays += 1;
            return Ok(());
        }
        part.watermark.observe(trusted, now);
        let wm = part.watermark.current(now);
        let sample = Sample {
            t: r.event_time,
            lat: r.position.lat,
            lon: r.position.lon,
            speed_kmh: r.speed_kmh,
            cargo_temp_c: r.cargo_temp_c,
        };
        let outcome = part
            .windows
            .add_tagged(r.vehicle_id.as_str(), sample, wm, offset);
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
        part.unflushed.get_or_insert(offset);
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
        // State writes first: emission must be the last fallible step, so that a retry after a
        // failure here cannot discard window outputs whose closing was already recorded.
        if self.states.len() >= self.max_buffered {
            self.flush_states(now).await?;
        }
        if let Some(wm) = wm {
            let part = self.part(input.partition).await?;
            let closed = part.windows.close_until(wm);
            part.unemitted.extend(closed);
            let closes = self.emit(&[(input.partition, wm)], out, now).await?;
            if let Some(part) = self.parts.get_mut(&input.partition) {
                // This input's outputs carry the close: durable with it (`on_durable`).
                part.closes
                    .extend(closes.into_iter().map(|(_, wm)| (offset, wm)));
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self, now_ms: i64, out: &mut Outputs) -> Result<(), ProcessError> {
        self.flush_states(now_ms).await?;
        // Idle partitions: their watermark follows processing time, closing the last windows.
        let mut due = Vec::with_capacity(self.parts.len());
        for (p, part) in self.parts.iter_mut() {
            let Some(wm) = part.watermark.current(now_ms) else {
                continue;
            };
            let closed = part.windows.close_until(wm);
            part.unemitted.extend(closed);
            due.push((*p, wm));
        }
        // Durable with this tick's entry (`on_tick_durable`), also when no input follows:
        // a quiet partition's last windows release their hold, so its offset can be committed.
        let closes = self.emit(&due, out, now_ms).await?;
        self.tick_closes.push_back(closes);
        Ok(())
    }

    async fn on_tick_durable(&mut self) -> Result<(), ProcessError> {
        let Some(mut closes) = self.tick_closes.pop_front() else {
            return Ok(());
        };
        // Closes whose frontier failed to save at an earlier tick are durable all the same.
        closes.append(&mut self.unsaved_closes);
        let mut result = Ok(());
        for (p, wm) in closes {
            if let Err(e) = self.advance_frontier(p, wm).await {
                // Saved at the next tick; the partition's hold stays until then.
                self.unsaved_closes.push((p, wm));
                result = Err(e);
            }
        }
        result
    }

    fn hold(&self, topic: &str, partition: i32) -> Option<i64> {
        if topic != self.input_topic {
            return None;
        }
        let part = self.parts.get(&partition)?;
        [
            part.windows.oldest_tag(),
            part.unemitted.iter().map(|c| c.first_tag).min(),
            part.closed_pending.first().map(|(tag, _)| *tag),
            part.unflushed,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_durable(
        &mut self,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> Result<(), ProcessError> {
        if topic != self.input_topic {
            return Ok(());
        }
        let Some(part) = self.parts.get_mut(&partition) else {
            return Ok(());
        };
        let mut frontier = None;
        while let Some(&(carrier, wm)) = part.closes.front() {
            if carrier >= next_offset {
                break;
            }
            part.closes.pop_front();
            frontier = Some(frontier.map_or(wm, |f: i64| f.max(wm)));
        }
        let Some(f) = frontier else {
            return Ok(());
        };
        self.advance_frontier(partition, f).await
    }

    fn on_revoke(&mut self, partitions: &[(String, i32)]) {
        for (topic, p) in partitions {
            if *topic == self.input_topic {
                self.parts.remove(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use fleet_schemas::Decoder;
    use fleet_state::{Result as StateResult, Store, StoreOptions};

    use super::*;

    /// The real SQLite store, with `put_windows` failing a chosen number of times.
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
        async fn save_frontier(&self, g: &str, t: &str, p: i32, wm: i64) -> StateResult<()> {
            self.inner.save_frontier(g, t, p, wm).await
        }
        async fn load_frontier(&self, g: &str, t: &str, p: i32) -> StateResult<Option<i64>> {
            self.inner.load_frontier(g, t, p).await
        }
        async fn save_checkpoint(
            &self,
            g: &str,
            t: &str,
            p: i32,
            next: i64,
            state: &[u8],
        ) -> StateResult<()> {
            self.inner.save_checkpoint(g, t, p, next, state).await
        }
        async fn load_checkpoint(
            &self,
            g: &str,
            t: &str,
            p: i32,
        ) -> StateResult<Option<(i64, Vec<u8>)>> {
            self.inner.load_checkpoint(g, t, p).await
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

    async fn feed(
        p: &mut Telemetry<Flaky>,
        offset: i64,
        r: TelemetryReading,
        out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let input = Input {
            record: r,
            topic: "in",
            partition: 0,
            offset,
            key: None,
            timestamp_ms: None,
        };
        p.process(&input, out).await
    }

    /// A failed `vehicle_state` write keeps its batch: the retry writes it (it used to be
    /// dropped, so a vehicle that then went quiet never got its last state written).
    #[tokio::test]
    async fn a_failed_state_write_is_retried_not_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = flaky(&dir, 0).await;
        store.state_failures_left = Arc::new(AtomicUsize::new(1));
        let config = TelemetryConfig {
            input_topic: "in".into(),
            windows_topic: "windows".into(),
            ..Default::default()
        };
        let mut p =
            Telemetry::new(&config, "g", Encoder::with_schema_id(7), store).expect("processor");
        let t = now_ms();
        let mut r = reading("V-QUIET", t);
        r.position = Position::new(4.6, -74.0);
        feed(&mut p, 0, r, &mut Outputs::new()).await.expect("ok");
        let err = p.on_tick(t, &mut Outputs::new()).await;
        assert!(matches!(err, Err(ProcessError::Transient(_))), "{err:?}");
        assert!(
            p.store
                .vehicle_state("V-QUIET", t)
                .await
                .expect("read")
                .is_none()
        );
        p.on_tick(t + 1, &mut Outputs::new())
            .await
            .expect("store back");
        assert!(
            p.store
                .vehicle_state("V-QUIET", t)
                .await
                .expect("read")
                .is_some(),
            "the state of the failed batch is written by the retry"
        );
    }

    #[tokio::test]
    async fn a_failed_store_write_never_drops_a_closed_window() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let failures = Arc::new(AtomicUsize::new(1));
        let store = Flaky {
            inner: Store::open(&url, StoreOptions::default())
                .await
                .expect("store"),
            failures_left: failures.clone(),
            state_failures_left: Arc::new(AtomicUsize::new(0)),
        };
        let config = TelemetryConfig {
            input_topic: "in".into(),
            windows_topic: "windows".into(),
            allowed_lateness: Duration::from_secs(0),
            ..Default::default()
        };
        let mut p =
            Telemetry::new(&config, "g", Encoder::with_schema_id(7), store).expect("processor");
        let mut out = Outputs::new();
        // Window [0, 60 s) gets two readings (offsets 10 and 11); offset 12 at 61 s closes it.
        feed(&mut p, 10, reading("V", 1_000), &mut out)
            .await
            .expect("ok");
        feed(&mut p, 11, reading("V", 2_000), &mut out)
            .await
            .expect("ok");
        assert_eq!(
            p.hold("in", 0),
            Some(10),
            "the open window holds its first offset"
        );
        let err = feed(&mut p, 12, reading("V", 61_000), &mut out)
            .await
            .expect_err("injected");
        assert!(matches!(err, ProcessError::Transient(_)));
        assert_eq!(
            p.hold("in", 0),
            Some(10),
            "the unemitted window still holds its offset"
        );
        // The runtime clears the outputs and retries the same input: the window is emitted.
        out = Outputs::new();
        feed(&mut p, 12, reading("V", 61_000), &mut out)
            .await
            .expect("retry succeeds");
        let dec = Decoder::<WindowAggregate>::offline(&[7]);
        let emitted: Vec<WindowAggregate> = {
            let mut v = Vec::new();
            for (topic, key, payload) in out.iter() {
                assert_eq!((topic, key), ("windows", &b"V"[..]));
                v.push(dec.decode(payload).await.expect("window"));
            }
            v
        };
        assert_eq!(emitted.len(), 1);
        assert_eq!((emitted[0].window_start, emitted[0].count), (0, 2));
        assert_eq!(failures.load(Ordering::SeqCst), 0);
        // Until its outputs are durable the closed window holds offset 10 (as do the buffered
        // vehicle states until the tick writes them); afterwards the hold moves to the open
        // window [60 s, 120 s) that starts at offset 12.
        p.on_tick(now_ms(), &mut Outputs::new())
            .await
            .expect("tick writes the states");
        assert_eq!(p.hold("in", 0), Some(10));
        p.on_durable("in", 0, 13).await.expect("durable");
        assert_eq!(p.hold("in", 0), Some(12));
        // The frontier is saved: a restarted processor skips re-read records of that window.
        assert_eq!(
            p.store.load_frontier("g", "in", 0).await.expect("read"),
            Some(61_000)
        );
        let mut restarted =
            Telemetry::new(&config, "g", Encoder::with_schema_id(7), p.store).expect("processor");
        let mut out = Outputs::new();
        feed(&mut restarted, 10, reading("V", 1_000), &mut out)
            .await
            .expect("skipped");
        feed(&mut restarted, 11, reading("V", 2_000), &mut out)
            .await
            .expect("skipped");
        assert_eq!(restarted.skipped_replays, 2);
        assert!(out.is_empty(), "no partial copy of the emitted window");
    }

    /// One truck whose clock is 4 minutes fast among honest ones: the honest vehicles' windows
    /// are exactly those of a run without it, and none of their readings is late.
    #[tokio::test]
    async fn a_fast_device_clock_leaves_the_other_vehicles_windows_unchanged() {
        async fn run(with_fast: bool) -> Vec<WindowAggregate> {
            let dir = tempfile::tempdir().expect("tmp");
            let store = flaky(&dir, 0).await;
            let config = TelemetryConfig {
                input_topic: "in".into(),
                windows_topic: "windows".into(),
                idle_timeout: Duration::from_secs(3600),
                ..Default::default()
            };
            let mut p =
                Telemetry::new(&config, "g", Encoder::with_schema_id(7), store).expect("processor");
            let mut out = Outputs::new();
            let mut offset = 0;
            for t in (0..300_000i64).step_by(1_000) {
                for v in ["A", "B", "C"] {
                    let mut r = reading(v, t);
                    r.ingest_time = t + 50;
                    feed(&mut p, offset, r, &mut out)
                        .await
                        .unwrap_or_else(|e| panic!("{v} at {t}: {e:?}"));
                    offset += 1;
                }
                if with_fast {
                    let mut r = reading("FAST", t + 240_000);
                    r.ingest_time = t + 60;
                    feed(&mut p, offset, r, &mut out).await.expect("fast");
                    offset += 1;
                }
            }
            let dec = Decoder::<WindowAggregate>::offline(&[7]);
            let mut windows = Vec::new();
            for (_, _, payload) in out.iter() {
                let mut w = dec.decode(payload).await.expect("window");
                if w.vehicle_id != "FAST" {
                    w.ingest_time = 0;
                    windows.push(w);
                }
            }
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
    async fn late_and_invalid_readings_are_poison() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = flaky(&dir, 0).await;
        let config = TelemetryConfig {
            input_topic: "in".into(),
            allowed_lateness: Duration::from_secs(5),
            ..Default::default()
        };
        let mut p =
            Telemetry::new(&config, "g", Encoder::with_schema_id(7), store).expect("processor");
        let mut out = Outputs::new();
        feed(&mut p, 1, reading("V", 130_000), &mut out)
            .await
            .expect("ok");
        let late = feed(&mut p, 2, reading("V", 10_000), &mut out)
            .await
            .expect_err("late");
        assert!(matches!(late, ProcessError::Poison { reason: "late", .. }));
        let mut bad = reading("V", 131_000);
        bad.position.lat = 95.0;
        let invalid = feed(&mut p, 3, bad, &mut out).await.expect_err("invalid");
        assert!(matches!(
            invalid,
            ProcessError::Poison {
                reason: "invalid_position",
                ..
            }
        ));
    }
}
