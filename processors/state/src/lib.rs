//! # fleet-state
//!
//! The state store of fleetstream's processors: the latest state of every vehicle
//! (`vehicle_state`) and closed window aggregates (`vehicle_windows`), behind one trait,
//! [`StateStore`], with the backend chosen by URL ([`Store::open`]):
//!
//! * `sqlite://path/to/file.db` (relative) or `sqlite:///abs/path.db`: the embedded default.
//!   WAL journal, busy timeout, one transaction per batch; several processes may share a file.
//! * `scylla://host:port/keyspace[?replication_factor=N]`: ScyllaDB (or Apache Cassandra)
//!   through the `scylla` driver; keyspace and tables created at start, prepared statements,
//!   newest-wins by write timestamp, `USING TTL`, incidents by lightweight transaction, one
//!   UNLOGGED batch per window partition (see [`ScyllaStore`]).
//!
//! ## Semantics (every backend)
//! * `vehicle_state`: one row per vehicle; an older event never overwrites a newer one (the
//!   row with the greater `event_time` wins), so replays and out-of-order writes are harmless.
//! * `vehicle_windows`: keyed by (vehicle, day of the window start, window start); writing the
//!   same window again replaces it (idempotent upsert).
//! * `deliveries`: one row per delivery (status, ETA, lateness, last position), replaced by
//!   each write of its single writer; listed per vehicle.
//! * Rows expire after their TTL (`vehicle_state` 7 days and `vehicle_windows` 30 days by
//!   default). SQLite takes time as a parameter (`now_ms`), so its expiry is testable without
//!   waiting; the CQL backend uses the server's `USING TTL`, which expires by the server's
//!   clock (the `now_ms` of its reads is unused).
//!
//! ## Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use fleet_state::{StateStore, Store, StoreOptions, VehicleState};
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}/state.db", dir.path().display());
//! let store = Store::open(&url, StoreOptions::default()).await.unwrap();
//! let mut s = VehicleState::new("VEH-1", 1_000, 4.6, -74.08);
//! s.speed_kmh = Some(60.0);
//! store.upsert_vehicle_states(&[s.clone()], 2_000).await.unwrap();
//! assert_eq!(store.vehicle_state("VEH-1", 2_000).await.unwrap(), Some(s));
//! # });
//! ```

mod scylla;
mod sqlite;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use scylla::ScyllaStore;
pub use sqlite::SqliteStore;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// State store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no backend this build has, or is malformed.
    #[error("state store URL {url:?}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The backend failed (I/O, busy beyond the timeout, constraint): usually transient.
    #[error("state backend: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

/// Time-to-live of the stored rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// TTL of `vehicle_state` rows, from their last write.
    pub vehicle_state_ttl: Duration,
    /// TTL of `vehicle_windows` rows, from their write.
    pub windows_ttl: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            vehicle_state_ttl: Duration::from_secs(7 * 24 * 3600),
            windows_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The latest known state of one vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleState {
    /// Vehicle id.
    pub vehicle_id: String,
    /// Event time of the reading this state comes from (ms).
    pub event_time: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Heading, degrees.
    pub heading_deg: Option<f64>,
    /// Cargo temperature, Celsius.
    pub cargo_temp_c: Option<f64>,
    /// Cargo door open.
    pub door_open: Option<bool>,
    /// Ignition on.
    pub ignition_on: Option<bool>,
    /// event_id of the reading.
    pub event_id: String,
}

impl VehicleState {
    /// A state with a position and nothing else.
    pub fn new(vehicle_id: &str, event_time: i64, lat: f64, lon: f64) -> Self {
        Self {
            vehicle_id: vehicle_id.to_owned(),
            event_time,
            lat,
            lon,
            speed_kmh: None,
            heading_deg: None,
            cargo_temp_c: None,
            door_open: None,
            ignition_on: None,
            event_id: String::new(),
        }
    }
}

/// One closed window of one vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    /// Vehicle id.
    pub vehicle_id: String,
    /// Inclusive start (ms).
    pub window_start: i64,
    /// Exclusive end (ms).
    pub window_end: i64,
    /// Readings.
    pub count: i64,
    /// Mean speed.
    pub speed_avg_kmh: Option<f64>,
    /// Max speed.
    pub speed_max_kmh: Option<f64>,
    /// Min cargo temperature.
    pub cargo_temp_min_c: Option<f64>,
    /// Mean cargo temperature.
    pub cargo_temp_avg_c: Option<f64>,
    /// Max cargo temperature.
    pub cargo_temp_max_c: Option<f64>,
    /// Distance, metres.
    pub distance_m: f64,
    /// Seconds moving.
    pub moving_s: f64,
    /// Seconds idle.
    pub idle_s: f64,
    /// Deterministic event id of the window.
    pub event_id: String,
}

/// An incident recorded by the emergency fast lane (one per emergency `event_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The emergency's `event_id` (the de-duplication key).
    pub incident_id: String,
    /// Vehicle id.
    pub vehicle_id: String,
    /// What happened (`PANIC_BUTTON`, `CRASH`, `CRITICAL_ANOMALY`, `OTHER`).
    pub kind: String,
    /// Severity after the policy (`MEDIUM`, `HIGH`, `CRITICAL`, ...).
    pub severity: String,
    /// `open` (closing is an operator action).
    pub status: String,
    /// When it happened (ms).
    pub event_time: i64,
    /// When the fast lane recorded it (ms).
    pub recorded_at: i64,
    /// Latitude, if known.
    pub lat: Option<f64>,
    /// Longitude, if known.
    pub lon: Option<f64>,
    /// Free text.
    pub description: Option<String>,
    /// When its notifications were acknowledged by Kafka (ms); `None` until then.
    pub notified_at: Option<i64>,
}

/// A delivery's current state, kept by the deliveries processor (one writer per delivery: the
/// owner of its `fleet.deliveries` partition; every write replaces the row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    /// Delivery id (the key).
    pub delivery_id: String,
    /// Vehicle carrying it.
    pub vehicle_id: String,
    /// Driver, if known.
    pub driver_id: Option<String>,
    /// `created`, `assigned`, `picked_up`, `in_transit`, `arrived`, `delivered`, `failed`, `cancelled`.
    pub status: String,
    /// Event time of the newest update or position applied (ms).
    pub updated_at: i64,
    /// Destination latitude.
    pub dest_lat: Option<f64>,
    /// Destination longitude.
    pub dest_lon: Option<f64>,
    /// Promised delivery time (ms).
    pub promised_by: Option<i64>,
    /// Estimated arrival (ms).
    pub eta_ms: Option<i64>,
    /// Confidence of the ETA, 0..1.
    pub eta_confidence: Option<f64>,
    /// Distance left (m).
    pub remaining_m: Option<f64>,
    /// Whether the ETA is past the promised time (beyond the grace).
    pub late: bool,
    /// Last known vehicle latitude.
    pub last_lat: Option<f64>,
    /// Last known vehicle longitude.
    pub last_lon: Option<f64>,
    /// When the vehicle delivered (ms).
    pub delivered_at: Option<i64>,
    /// `driver` or `geofence`.
    pub completed_by: Option<String>,
}

/// Day number (days since the epoch) of a window start: the partition of `vehicle_windows`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// What every backend offers.
pub trait StateStore: Send + Sync {
    /// Writes a batch of states; per vehicle, the newest `event_time` wins, whatever the order
    /// of calls. Returns how many rows it wrote: SQLite counts the rows that changed; the CQL
    /// backend (no read before the write: the server resolves newest-wins) counts the newest
    /// row of each vehicle in the batch.
    fn upsert_vehicle_states(
        &self,
        rows: &[VehicleState],
        now_ms: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// The state of `vehicle_id`, unless absent or expired at `now_ms`.
    fn vehicle_state(
        &self,
        vehicle_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<VehicleState>>> + Send;

    /// Unexpired states in the backend's order of vehicles, after vehicle `after` (exclusive;
    /// `""`: from the first), at most `limit`: pass the last id of a page to get the next one
    /// (the API's listings page through every vehicle this way). SQLite orders by vehicle id;
    /// CQL in token order (`token(vehicle_id) > token(after)`).
    fn vehicle_states(
        &self,
        after: &str,
        limit: usize,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<VehicleState>>> + Send;

    /// Writes closed windows (idempotent per vehicle and window start).
    fn put_windows(
        &self,
        rows: &[WindowRow],
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Windows of `vehicle_id` starting in `[from_ms, to_ms)`, oldest first, unexpired.
    fn windows(
        &self,
        vehicle_id: &str,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<WindowRow>>> + Send;

    /// Records `incident` unless one with its id exists; returns the stored one if it did
    /// (the first write wins: a replayed emergency never overwrites its incident). Safe with
    /// one writer per vehicle, which Kafka partition ownership gives.
    fn record_incident(
        &self,
        incident: &Incident,
    ) -> impl Future<Output = Result<Option<Incident>>> + Send;

    /// Sets `notified_at` on the incidents `ids`.
    fn mark_notified(&self, ids: &[String], at_ms: i64) -> impl Future<Output = Result<()>> + Send;

    /// One incident by id.
    fn incident(&self, incident_id: &str) -> impl Future<Output = Result<Option<Incident>>> + Send;

    /// Incidents of `vehicle_id`, newest first, at most `limit`.
    fn incidents_for_vehicle(
        &self,
        vehicle_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Incident>>> + Send;

    /// Writes deliveries (each row replaces the stored one's values: idempotent). Writers
    /// never clear a column: a `None` over a stored value may be kept or cleared by the
    /// backend (CQL servers differ on null binds).
    fn put_deliveries(&self, rows: &[DeliveryRow]) -> impl Future<Output = Result<()>> + Send;

    /// One delivery by id.
    fn delivery(
        &self,
        delivery_id: &str,
    ) -> impl Future<Output = Result<Option<DeliveryRow>>> + Send;

    /// Deliveries of `vehicle_id`, most recently updated first, at most `limit`.
    fn deliveries_for_vehicle(
        &self,
        vehicle_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeliveryRow>>> + Send;
}

/// A store chosen by URL.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// ScyllaDB (boxed: its prepared statements make it large).
    Scylla(Box<ScyllaStore>),
}

impl Store {
    /// Opens the backend named by `url`, creating its tables if needed.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(Error::Url {
                    url: url.to_owned(),
                    why: "no file path after sqlite://".into(),
                });
            }
            return Ok(Store::Sqlite(SqliteStore::open(path, options).await?));
        }
        if url.starts_with("scylla://") {
            return Ok(Store::Scylla(Box::new(
                ScyllaStore::open(url, options).await?,
            )));
        }
        Err(Error::Url {
            url: url.to_owned(),
            why: "unknown scheme: expected sqlite://path or scylla://host:port/keyspace".into(),
        })
    }
}

impl StateStore for Store {
    async fn upsert_vehicle_states(&self, rows: &[VehicleState], now_ms: i64) -> Result<usize> {
        match self {
            Store::Sqlite(s) => s.upsert_vehicle_states(rows, now_ms).await,
            Store::Scylla(s) => s.upsert_vehicle_states(rows, now_ms).await,
        }
    }

    async fn vehicle_state(&self, vehicle_id: &str, now_ms: i64) -> Result<Option<VehicleState>> {
        match self {
            Store::Sqlite(s) => s.vehicle_state(vehicle_id, now_ms).await,
            Store::Scylla(s) => s.vehicle_state(vehicle_id, now_ms).await,
        }
    }

    async fn vehicle_states(
        &self,
        after: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<VehicleState>> {
        match self {
            Store::Sqlite(s) => s.vehicle_states(after, limit, now_ms).await,
            Store::Scylla(s) => s.vehicle_states(after, limit, now_ms).await,
        }
    }

    async fn put_windows(&self, rows: &[WindowRow], now_ms: i64) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.put_windows(rows, now_ms).await,
            Store::Scylla(s) => s.put_windows(rows, now_ms).await,
        }
    }

    async fn windows(
        &self,
        vehicle_id: &str,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<WindowRow>> {
        match self {
            Store::Sqlite(s) => s.windows(vehicle_id, from_ms, to_ms, now_ms).await,
            Store::Scylla(s) => s.windows(vehicle_id, from_ms, to_ms, now_ms).await,
        }
    }

    async fn record_incident(&self, incident: &Incident) -> Result<Option<Incident>> {
        match self {
            Store::Sqlite(s) => s.record_incident(incident).await,
            Store::Scylla(s) => s.record_incident(incident).await,
        }
    }

    async fn mark_notified(&self, ids: &[String], at_ms: i64) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.mark_notified(ids, at_ms).await,
            Store::Scylla(s) => s.mark_notified(ids, at_ms).await,
        }
    }

    async fn incident(&self, incident_id: &str) -> Result<Option<Incident>> {
        match self {
            Store::Sqlite(s) => s.incident(incident_id).await,
            Store::Scylla(s) => s.incident(incident_id).await,
        }
    }

    async fn incidents_for_vehicle(&self, vehicle_id: &str, limit: usize) -> Result<Vec<Incident>> {
        match self {
            Store::Sqlite(s) => s.incidents_for_vehicle(vehicle_id, limit).await,
            Store::Scylla(s) => s.incidents_for_vehicle(vehicle_id, limit).await,
        }
    }

    async fn put_deliveries(&self, rows: &[DeliveryRow]) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.put_deliveries(rows).await,
            Store::Scylla(s) => s.put_deliveries(rows).await,
        }
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        match self {
            Store::Sqlite(s) => s.delivery(delivery_id).await,
            Store::Scylla(s) => s.delivery(delivery_id).await,
        }
    }

    async fn deliveries_for_vehicle(
        &self,
        vehicle_id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>> {
        match self {
            Store::Sqlite(s) => s.deliveries_for_vehicle(vehicle_id, limit).await,
            Store::Scylla(s) => s.deliveries_for_vehicle(vehicle_id, limit).await,
        }
    }
}
