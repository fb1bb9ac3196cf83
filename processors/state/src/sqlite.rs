//! The embedded SQLite backend.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    DeliveryRow, Error, Incident, Result, StateStore, StoreOptions, VehicleState, WindowRow, day_of,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vehicle_state (
    vehicle_id   TEXT PRIMARY KEY,
    event_time   INTEGER NOT NULL,
    lat          REAL NOT NULL,
    lon          REAL NOT NULL,
    speed_kmh    REAL,
    heading_deg  REAL,
    cargo_temp_c REAL,
    door_open    INTEGER,
    ignition_on  INTEGER,
    event_id     TEXT NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vehicle_windows (
    vehicle_id       TEXT NOT NULL,
    day              INTEGER NOT NULL,
    window_start     INTEGER NOT NULL,
    window_end       INTEGER NOT NULL,
    count            INTEGER NOT NULL,
    speed_avg_kmh    REAL,
    speed_max_kmh    REAL,
    cargo_temp_min_c REAL,
    cargo_temp_avg_c REAL,
    cargo_temp_max_c REAL,
    distance_m       REAL NOT NULL,
    moving_s         REAL NOT NULL,
    idle_s           REAL NOT NULL,
    event_id         TEXT NOT NULL,
    expires_at       INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, day, window_start)
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    vehicle_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    status      TEXT NOT NULL,
    event_time  INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    lat         REAL,
    lon         REAL,
    description TEXT,
    notified_at INTEGER
);
CREATE INDEX IF NOT EXISTS incidents_by_vehicle ON incidents(vehicle_id, event_time);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id    TEXT PRIMARY KEY,
    vehicle_id     TEXT NOT NULL,
    driver_id      TEXT,
    status         TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,
    dest_lat       REAL,
    dest_lon       REAL,
    promised_by    INTEGER,
    eta_ms         INTEGER,
    eta_confidence REAL,
    remaining_m    REAL,
    late           INTEGER NOT NULL,
    last_lat       REAL,
    last_lon       REAL,
    delivered_at   INTEGER,
    completed_by   TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_by_vehicle ON deliveries(vehicle_id, updated_at);
CREATE INDEX IF NOT EXISTS vehicle_state_expiry ON vehicle_state(expires_at);
CREATE INDEX IF NOT EXISTS vehicle_windows_expiry ON vehicle_windows(expires_at);
";

/// Expired rows are purged once every this many writes.
const PURGE_EVERY: u64 = 256;

/// SQLite in WAL mode; blocking calls run on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    options: StoreOptions,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    writes: u64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub async fn open(path: &str, options: StoreOptions) -> Result<Self> {
        let path = PathBuf::from(path);
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::Backend(e.to_string()))?;
            }
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))??;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner { conn, writes: 0 })),
            options,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner
                .lock()
                .map_err(|_| Error::Backend("sqlite connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
    }
}

impl Inner {
    fn maybe_purge(&mut self, now_ms: i64) -> Result<()> {
        self.writes += 1;
        if self.writes % PURGE_EVERY == 1 {
            self.conn
                .execute("DELETE FROM vehicle_state WHERE expires_at <= ?1", [now_ms])?;
            self.conn.execute(
                "DELETE FROM vehicle_windows WHERE expires_at <= ?1",
                [now_ms],
            )?;
        }
        Ok(())
    }
}

const DELIVERY_COLUMNS: &str = "delivery_id, vehicle_id, driver_id, status, updated_at, \
    dest_lat, dest_lon, promised_by, eta_ms, eta_confidence, remaining_m, late, last_lat, last_lon, \
    delivered_at, completed_by";

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        delivery_id: r.get(0)?,
        vehicle_id: r.get(1)?,
        driver_id: r.get(2)?,
        status: r.get(3)?,
        updated_at: r.get(4)?,
        dest_lat: r.get(5)?,
        dest_lon: r.get(6)?,
        promised_by: r.get(7)?,
        eta_ms: r.get(8)?,
        eta_confidence: r.get(9)?,
        remaining_m: r.get(10)?,
        late: r.get(11)?,
        last_lat: r.get(12)?,
        last_lon: r.get(13)?,
        delivered_at: r.get(14)?,
        completed_by: r.get(15)?,
    })
}

const INCIDENT_COLUMNS: &str = "incident_id, vehicle_id, kind, severity, status, event_time, \
    recorded_at, lat, lon, description, notified_at";

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        incident_id: r.get(0)?,
        vehicle_id: r.get(1)?,
        kind: r.get(2)?,
        severity: r.get(3)?,
        status: r.get(4)?,
        event_time: r.get(5)?,
        recorded_at: r.get(6)?,
        lat: r.get(7)?,
        lon: r.get(8)?,
        description: r.get(9)?,
        notified_at: r.get(10)?,
    })
}

impl StateStore for SqliteStore {
    async fn upsert_vehicle_states(&self, rows: &[VehicleState], now_ms: i64) -> Result<usize> {
        let rows = rows.to_vec();
        let expires = now_ms.saturating_add(ms(self.options.vehicle_state_ttl));
        self.with(move |inner| {
            let tx = inner.conn.transaction()?;
            let mut changed = 0;
            {
                // The newest event wins: an update applies only when it is not older.
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO vehicle_state (vehicle_id, event_time, lat, lon, speed_kmh,
                        heading_deg, cargo_temp_c, door_open, ignition_on, event_id, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT(vehicle_id) DO UPDATE SET
                        event_time = excluded.event_time, lat = excluded.lat, lon = excluded.lon,
                        speed_kmh = excluded.speed_kmh, heading_deg = excluded.heading_deg,
                        cargo_temp_c = excluded.cargo_temp_c, door_open = excluded.door_open,
                        ignition_on = excluded.ignition_on, event_id = excluded.event_id,
                        expires_at = excluded.expires_at
                     WHERE excluded.event_time >= vehicle_state.event_time
                        OR vehicle_state.expires_at <= ?12",
                )?;
                for r in &rows {
                    changed += stmt.execute(params![
                        r.vehicle_id,
                        r.event_time,
                        r.lat,
                        r.lon,
                        r.speed_kmh,
                        r.heading_deg,
                        r.cargo_temp_c,
                        r.door_open,
                        r.ignition_on,
                        r.event_id,
                        expires,
                        now_ms,
                    ])?;
                }
            }
            tx.commit()?;
            inner.maybe_purge(now_ms)?;
            Ok(changed)
        })
        .await
    }

    async fn vehicle_state(&self, vehicle_id: &str, now_ms: i64) -> Result<Option<VehicleState>> {
        let id = vehicle_id.to_owned();
        self.with(move |inner| {
            let row = inner
                .conn
                .prepare_cached(&format!(
                    "SELECT {STATE_SELECT} FROM vehicle_state WHERE vehicle_id = ?1 AND expires_at > ?2"
                ))?
                .query_row(params![id, now_ms], state_of_row)
                .optional()?;
            Ok(row)
        })
        .await
    }

    async fn vehicle_states(
        &self,
        after: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<VehicleState>> {
        let after = after.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |inner| {
            let mut stmt = inner.conn.prepare_cached(&format!(
                "SELECT {STATE_SELECT} FROM vehicle_state WHERE vehicle_id > ?1 AND expires_at > ?2
                 ORDER BY vehicle_id LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![after, now_ms, limit], state_of_row)?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn put_windows(&self, rows: &[WindowRow], now_ms: i64) -> Result<()> {
        let rows = rows.to_vec();
        let expires = now_ms.saturating_add(ms(self.options.windows_ttl));
        self.with(move |inner| {
            let tx = inner.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO vehicle_windows (vehicle_id, day, window_start,
                        window_end, count, speed_avg_kmh, speed_max_kmh, cargo_temp_min_c,
                        cargo_temp_avg_c, cargo_temp_max_c, distance_m, moving_s, idle_s,
                        event_id, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )?;
                for w in &rows {
                    stmt.execute(params![
                        w.vehicle_id,
                        day_of(w.window_start),
                        w.window_start,
                        w.window_end,
                        w.count,
                        w.speed_avg_kmh,
                        w.speed_max_kmh,
                        w.cargo_temp_min_c,
                        w.cargo_temp_avg_c,
                        w.cargo_temp_max_c,
                        w.distance_m,
                        w.moving_s,
                        w.idle_s,
                        w.event_id,
                        expires,
                    ])?;
                }
            }
            tx.commit()?;
            inner.maybe_purge(now_ms)?;
            Ok(())
        })
        .await
    }

    async fn windows(
        &self,
        vehicle_id: &str,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<WindowRow>> {
        let id = vehicle_id.to_owned();
        self.with(move |inner| {
            let mut stmt = inner.conn.prepare_cached(
                "SELECT vehicle_id, window_start, window_end, count, speed_avg_kmh,
                    speed_max_kmh, cargo_temp_min_c, cargo_temp_avg_c, cargo_temp_max_c,
                    distance_m, moving_s, idle_s, event_id
                 FROM vehicle_windows
                 WHERE vehicle_id = ?1 AND day BETWEEN ?2 AND ?3
                   AND window_start >= ?4 AND window_start < ?5 AND expires_at > ?6
                 ORDER BY window_start",
            )?;
            let rows = stmt
                .query_map(
                    params![id, day_of(from_ms), day_of(to_ms), from_ms, to_ms, now_ms],
                    |r| {
                        Ok(WindowRow {
                            vehicle_id: r.get(0)?,
                            window_start: r.get(1)?,
                            window_end: r.get(2)?,
                            count: r.get(3)?,
                            speed_avg_kmh: r.get(4)?,
                            speed_max_kmh: r.get(5)?,
                            cargo_temp_min_c: r.get(6)?,
                            cargo_temp_avg_c: r.get(7)?,
                            cargo_temp_max_c: r.get(8)?,
                            distance_m: r.get(9)?,
                            moving_s: r.get(10)?,
                            idle_s: r.get(11)?,
                            event_id: r.get(12)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn record_incident(&self, incident: &Incident) -> Result<Option<Incident>> {
        let i = incident.clone();
        self.with(move |inner| {
            let tx = inner.conn.transaction()?;
            let existing = tx
                .query_row(
                    &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE incident_id = ?1"),
                    [&i.incident_id],
                    incident_row,
                )
                .optional()?;
            if existing.is_none() {
                tx.execute(
                    &format!(
                        "INSERT INTO incidents ({INCIDENT_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    params![
                        i.incident_id,
                        i.vehicle_id,
                        i.kind,
                        i.severity,
                        i.status,
                        i.event_time,
                        i.recorded_at,
                        i.lat,
                        i.lon,
                        i.description,
                        i.notified_at
                    ],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })
        .await
    }

    async fn mark_notified(&self, ids: &[String], at_ms: i64) -> Result<()> {
        let ids = ids.to_vec();
        self.with(move |inner| {
            let tx = inner.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE incidents SET notified_at = ?2 WHERE incident_id = ?1",
                )?;
                for id in &ids {
                    stmt.execute(params![id, at_ms])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn incident(&self, incident_id: &str) -> Result<Option<Incident>> {
        let id = incident_id.to_owned();
        self.with(move |inner| {
            Ok(inner
                .conn
                .query_row(
                    &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE incident_id = ?1"),
                    [&id],
                    incident_row,
                )
                .optional()?)
        })
        .await
    }

    async fn incidents_for_vehicle(&self, vehicle_id: &str, limit: usize) -> Result<Vec<Incident>> {
        let id = vehicle_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |inner| {
            let mut stmt = inner.conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE vehicle_id = ?1 \
                 ORDER BY event_time DESC, incident_id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![id, limit], incident_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
    async fn put_deliveries(&self, rows: &[DeliveryRow]) -> Result<()> {
        let rows = rows.to_vec();
        self.with(move |inner| {
            let tx = inner.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO deliveries ({DELIVERY_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ))?;
                for d in &rows {
                    stmt.execute(params![
                        d.delivery_id,
                        d.vehicle_id,
                        d.driver_id,
                        d.status,
                        d.updated_at,
                        d.dest_lat,
                        d.dest_lon,
                        d.promised_by,
                        d.eta_ms,
                        d.eta_confidence,
                        d.remaining_m,
                        d.late,
                        d.last_lat,
                        d.last_lon,
                        d.delivered_at,
                        d.completed_by
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        let id = delivery_id.to_owned();
        self.with(move |inner| {
            Ok(inner
                .conn
                .query_row(
                    &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = ?1"),
                    [&id],
                    delivery_row,
                )
                .optional()?)
        })
        .await
    }

    async fn deliveries_for_vehicle(
        &self,
        vehicle_id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>> {
        let id = vehicle_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |inner| {
            let mut stmt = inner.conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE vehicle_id = ?1 \
                 ORDER BY updated_at DESC, delivery_id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![id, limit], delivery_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

const STATE_SELECT: &str = "vehicle_id, event_time, lat, lon, speed_kmh, heading_deg, \
    cargo_temp_c, door_open, ignition_on, event_id";

fn state_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VehicleState> {
    Ok(VehicleState {
        vehicle_id: r.get(0)?,
        event_time: r.get(1)?,
        lat: r.get(2)?,
        lon: r.get(3)?,
        speed_kmh: r.get(4)?,
        heading_deg: r.get(5)?,
        cargo_temp_c: r.get(6)?,
        door_open: r.get(7)?,
        ignition_on: r.get(8)?,
        event_id: r.get(9)?,
    })
}
