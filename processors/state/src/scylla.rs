//! The ScyllaDB backend (`scylla://host:port/keyspace`), through the `scylla` driver.
//!
//! * Keyspace and tables are created at start (`replication_factor` from the URL query,
//!   default 1, SimpleStrategy; use NetworkTopologyStrategy by creating the keyspace yourself).
//! * Prepared statements; the driver routes them token-aware. Tested against Apache Cassandra
//!   5.0 (`scripts/stack.sh up --cql`); ScyllaDB speaks the same CQL.
//! * `vehicle_state`: one partition per vehicle. Newest-wins is the server's own conflict
//!   resolution: each row is written `USING TIMESTAMP` derived from its `event_time`
//!   ([`write_timestamp`]), so an older reading written later is shadowed, with no read before
//!   the write and whatever the writers' order or number.
//! * `vehicle_windows`: partition `(vehicle_id, day)`, clustering `window_start`; a batch's
//!   windows are written as one UNLOGGED batch per partition; range reads with bound `>=`/`<`.
//! * TTL: `USING TTL` on every write of `vehicle_state` and `vehicle_windows`; the server drops
//!   expired rows by its own clock (the `now_ms` parameters of the reads do not apply here).
//! * Incidents: first write wins with a lightweight transaction (`INSERT ... IF NOT EXISTS`).
//! * Listings page in token order: `WHERE token(vehicle_id) > token(?) LIMIT ?`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::try_join_all;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::{
    DeliveryRow, Error, Incident, Result, StateStore, StoreOptions, VehicleState, WindowRow, day_of,
};

fn be<E: std::fmt::Display>(e: E) -> Error {
    Error::Backend(e.to_string())
}

const STATE_COLUMNS: &str = "vehicle_id, event_time, lat, lon, speed_kmh, heading_deg, \
    cargo_temp_c, door_open, ignition_on, event_id";
const WINDOW_COLUMNS: &str = "vehicle_id, day, window_start, window_end, count, speed_avg_kmh, \
    speed_max_kmh, cargo_temp_min_c, cargo_temp_avg_c, cargo_temp_max_c, distance_m, moving_s, \
    idle_s, event_id";

const INCIDENT_COLUMNS: &str = "incident_id, vehicle_id, kind, severity, status, event_time, \
    recorded_at, lat, lon, description, notified_at";

const DELIVERY_COLUMNS: &str = "delivery_id, vehicle_id, driver_id, status, updated_at, \
    dest_lat, dest_lon, promised_by, eta_ms, eta_confidence, remaining_m, late, last_lat, last_lon, \
    delivered_at, completed_by";

type DeliveryTuple = (
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    bool,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<String>,
);

fn delivery_of(r: DeliveryTuple) -> DeliveryRow {
    DeliveryRow {
        delivery_id: r.0,
        vehicle_id: r.1,
        driver_id: r.2,
        status: r.3,
        updated_at: r.4,
        dest_lat: r.5,
        dest_lon: r.6,
        promised_by: r.7,
        eta_ms: r.8,
        eta_confidence: r.9,
        remaining_m: r.10,
        late: r.11,
        last_lat: r.12,
        last_lon: r.13,
        delivered_at: r.14,
        completed_by: r.15,
    }
}

fn delivery_tuple(d: &DeliveryRow) -> DeliveryTuple {
    (
        d.delivery_id.clone(),
        d.vehicle_id.clone(),
        d.driver_id.clone(),
        d.status.clone(),
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
        d.completed_by.clone(),
    )
}

type IncidentRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<i64>,
);

fn incident_of(r: IncidentRow) -> Incident {
    Incident {
        incident_id: r.0,
        vehicle_id: r.1,
        kind: r.2,
        severity: r.3,
        status: r.4,
        event_time: r.5,
        recorded_at: r.6,
        lat: r.7,
        lon: r.8,
        description: r.9,
        notified_at: r.10,
    }
}

type StateRow = (
    String,
    i64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<bool>,
    Option<bool>,
    String,
);

/// The write timestamp (microseconds) of a `vehicle_state` row: its `event_time` in
/// microseconds, plus a tie-breaker in 0..1000 from its `event_id`. CQL keeps, per cell, the
/// value with the greatest timestamp, so the newest event wins. Two different readings with the
/// same `event_time` would otherwise tie, and CQL breaks ties cell by cell by value (a mix of
/// both rows): the tie-breaker makes one whole row win, the same one whatever the order.
fn write_timestamp(event_time_ms: i64, event_id: &str) -> i64 {
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let h = event_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tie = i64::try_from(h % 1000).unwrap_or(0);
    event_time_ms
        .clamp(0, i64::MAX / 1000 - 1)
        .saturating_mul(1000)
        .saturating_add(tie)
}

type WindowDbRow = (
    String,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    f64,
    f64,
    String,
);

/// ScyllaDB state store.
#[derive(Debug, Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    insert_state: PreparedStatement,
    select_state: PreparedStatement,
    first_states: PreparedStatement,
    next_states: PreparedStatement,
    insert_window: PreparedStatement,
    select_windows: PreparedStatement,
    insert_incident: PreparedStatement,
    select_incident: PreparedStatement,
    notify_incident: PreparedStatement,
    insert_incident_by_vehicle: PreparedStatement,
    select_incidents_by_vehicle: PreparedStatement,
    insert_delivery: PreparedStatement,
    select_delivery: PreparedStatement,
    insert_delivery_by_vehicle: PreparedStatement,
    select_deliveries_by_vehicle: PreparedStatement,
}

struct Target {
    node: String,
    keyspace: String,
    replication_factor: u32,
}

fn parse_url(url: &str) -> Result<Target> {
    let bad = |why: &str| Error::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("scylla://")
        .ok_or_else(|| bad("expected scylla://host:port/keyspace"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (node, keyspace) = rest
        .split_once('/')
        .ok_or_else(|| bad("missing /keyspace"))?;
    if node.is_empty() || keyspace.is_empty() {
        return Err(bad("expected scylla://host:port/keyspace"));
    }
    if !keyspace
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(bad("keyspace must be letters, digits and _"));
    }
    let mut replication_factor = 1;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("replication_factor", v)) => {
                replication_factor = v
                    .parse()
                    .map_err(|_| bad("replication_factor must be a number"))?;
            }
            _ => return Err(bad("unknown query parameter (known: replication_factor)")),
        }
    }
    let node = if node.contains(':') {
        node.to_owned()
    } else {
        format!("{node}:9042")
    };
    Ok(Target {
        node,
        keyspace: keyspace.to_owned(),
        replication_factor,
    })
}

impl ScyllaStore {
    /// Connects, creates the keyspace and tables if missing, prepares statements.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        let t = parse_url(url)?;
        let session = SessionBuilder::new()
            .known_node(&t.node)
            .build()
            .await
            .map_err(be)?;
        let ks = &t.keyspace;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                t.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.vehicle_state (vehicle_id text PRIMARY KEY, \
                 event_time bigint, lat double, lon double, speed_kmh double, heading_deg double, \
                 cargo_temp_c double, door_open boolean, ignition_on boolean, event_id text)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.vehicle_windows (vehicle_id text, day bigint, \
                 window_start bigint, window_end bigint, count bigint, speed_avg_kmh double, \
                 speed_max_kmh double, cargo_temp_min_c double, cargo_temp_avg_c double, \
                 cargo_temp_max_c double, distance_m double, moving_s double, idle_s double, \
                 event_id text, PRIMARY KEY ((vehicle_id, day), window_start)) \
                 WITH CLUSTERING ORDER BY (window_start ASC)"
            ),
        ];
        let ddl = ddl.into_iter().chain([
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.incidents (incident_id text PRIMARY KEY, \
                 vehicle_id text, kind text, severity text, status text, event_time bigint, \
                 recorded_at bigint, lat double, lon double, description text, notified_at bigint)"
            ),
            // The by-vehicle lookup: one partition per vehicle, newest first read client-side.
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.incidents_by_vehicle (vehicle_id text, \
                 event_time bigint, incident_id text, PRIMARY KEY (vehicle_id, event_time, incident_id))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.deliveries (delivery_id text PRIMARY KEY, \
                 vehicle_id text, driver_id text, status text, updated_at bigint, dest_lat double, \
                 dest_lon double, promised_by bigint, eta_ms bigint, eta_confidence double, \
                 remaining_m double, late boolean, last_lat double, last_lon double, \
                 delivered_at bigint, completed_by text)"
            ),
            // Deliveries per vehicle: one partition per vehicle (ordered client-side by the
            // delivery rows' updated_at).
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.deliveries_by_vehicle (vehicle_id text, \
                 delivery_id text, PRIMARY KEY (vehicle_id, delivery_id))"
            ),
        ]);
        for q in ddl {
            session.query_unpaged(q, ()).await.map_err(be)?;
        }
        let marks = |n: usize| vec!["?"; n].join(", ");
        // The TTLs are fixed per store, so they are literals of the prepared statements.
        let ttl = |d: std::time::Duration| d.as_secs().clamp(1, i32::MAX as u64);
        let insert_state = session
            .prepare(format!(
                "INSERT INTO {ks}.vehicle_state ({STATE_COLUMNS}) VALUES ({}) \
                 USING TTL {} AND TIMESTAMP ?",
                marks(10),
                ttl(options.vehicle_state_ttl)
            ))
            .await
            .map_err(be)?;
        let insert_window = session
            .prepare(format!(
                "INSERT INTO {ks}.vehicle_windows ({WINDOW_COLUMNS}) VALUES ({}) USING TTL {}",
                marks(14),
                ttl(options.windows_ttl)
            ))
            .await
            .map_err(be)?;
        let select_windows = session
            .prepare(format!(
                "SELECT {WINDOW_COLUMNS} FROM {ks}.vehicle_windows WHERE vehicle_id = ? AND day = ? \
                 AND window_start >= ? AND window_start < ?"
            ))
            .await
            .map_err(be)?;
        let select_state = session
            .prepare(format!(
                "SELECT {STATE_COLUMNS} FROM {ks}.vehicle_state WHERE vehicle_id = ?"
            ))
            .await
            .map_err(be)?;
        let first_states = session
            .prepare(format!(
                "SELECT {STATE_COLUMNS} FROM {ks}.vehicle_state LIMIT ?"
            ))
            .await
            .map_err(be)?;
        let next_states = session
            .prepare(format!(
                "SELECT {STATE_COLUMNS} FROM {ks}.vehicle_state \
                 WHERE token(vehicle_id) > token(?) LIMIT ?"
            ))
            .await
            .map_err(be)?;
        let insert_incident = session
            .prepare(format!(
                "INSERT INTO {ks}.incidents ({INCIDENT_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                marks(11)
            ))
            .await
            .map_err(be)?;
        let select_incident = session
            .prepare(format!(
                "SELECT {INCIDENT_COLUMNS} FROM {ks}.incidents WHERE incident_id = ?"
            ))
            .await
            .map_err(be)?;
        let notify_incident = session
            .prepare(format!(
                "UPDATE {ks}.incidents SET notified_at = ? WHERE incident_id = ?"
            ))
            .await
            .map_err(be)?;
        let insert_incident_by_vehicle = session
            .prepare(format!(
                "INSERT INTO {ks}.incidents_by_vehicle (vehicle_id, event_time, incident_id) \
                 VALUES (?, ?, ?)"
            ))
            .await
            .map_err(be)?;
        let select_incidents_by_vehicle = session
            .prepare(format!(
                "SELECT event_time, incident_id FROM {ks}.incidents_by_vehicle WHERE vehicle_id = ?"
            ))
            .await
            .map_err(be)?;
        let insert_delivery = session
            .prepare(format!(
                "INSERT INTO {ks}.deliveries ({DELIVERY_COLUMNS}) VALUES ({})",
                marks(16)
            ))
            .await
            .map_err(be)?;
        let select_delivery = session
            .prepare(format!(
                "SELECT {DELIVERY_COLUMNS} FROM {ks}.deliveries WHERE delivery_id = ?"
            ))
            .await
            .map_err(be)?;
        let insert_delivery_by_vehicle = session
            .prepare(format!(
                "INSERT INTO {ks}.deliveries_by_vehicle (vehicle_id, delivery_id) VALUES (?, ?)"
            ))
            .await
            .map_err(be)?;
        let select_deliveries_by_vehicle = session
            .prepare(format!(
                "SELECT delivery_id FROM {ks}.deliveries_by_vehicle WHERE vehicle_id = ?"
            ))
            .await
            .map_err(be)?;
        Ok(Self {
            session: Arc::new(session),
            insert_state,
            select_state,
            first_states,
            next_states,
            insert_window,
            select_windows,
            insert_incident,
            select_incident,
            notify_incident,
            insert_incident_by_vehicle,
            select_incidents_by_vehicle,
            insert_delivery,
            select_delivery,
            insert_delivery_by_vehicle,
            select_deliveries_by_vehicle,
        })
    }
}

impl StateStore for ScyllaStore {
    async fn upsert_vehicle_states(&self, rows: &[VehicleState], _now_ms: i64) -> Result<usize> {
        // Newest row per vehicle within the batch (the server would resolve the others too;
        // this only saves the writes).
        let mut newest: HashMap<&str, &VehicleState> = HashMap::with_capacity(rows.len());
        for r in rows {
            let e = newest.entry(r.vehicle_id.as_str()).or_insert(r);
            if r.event_time >= e.event_time {
                *e = r;
            }
        }
        let writes = newest.values().map(|r| {
            let values = (
                r.vehicle_id.as_str(),
                r.event_time,
                r.lat,
                r.lon,
                r.speed_kmh,
                r.heading_deg,
                r.cargo_temp_c,
                r.door_open,
                r.ignition_on,
                r.event_id.as_str(),
                write_timestamp(r.event_time, &r.event_id),
            );
            async move {
                self.session
                    .execute_unpaged(&self.insert_state, values)
                    .await
                    .map_err(be)
            }
        });
        Ok(try_join_all(writes).await?.len())
    }

    async fn vehicle_state(&self, vehicle_id: &str, _now_ms: i64) -> Result<Option<VehicleState>> {
        let result = self
            .session
            .execute_unpaged(&self.select_state, (vehicle_id,))
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        let row: Option<StateRow> = result.maybe_first_row().map_err(be)?;
        Ok(row.map(state_of_row))
    }

    async fn vehicle_states(
        &self,
        after: &str,
        limit: usize,
        _now_ms: i64,
    ) -> Result<Vec<VehicleState>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let result = if after.is_empty() {
            self.session
                .execute_unpaged(&self.first_states, (limit,))
                .await
        } else {
            self.session
                .execute_unpaged(&self.next_states, (after, limit))
                .await
        }
        .map_err(be)?
        .into_rows_result()
        .map_err(be)?;
        result
            .rows::<StateRow>()
            .map_err(be)?
            .map(|r| r.map(state_of_row).map_err(be))
            .collect()
    }

    async fn put_windows(&self, rows: &[WindowRow], _now_ms: i64) -> Result<()> {
        let mut by_partition: HashMap<(&str, i64), Vec<&WindowRow>> = HashMap::new();
        for w in rows {
            by_partition
                .entry((w.vehicle_id.as_str(), day_of(w.window_start)))
                .or_default()
                .push(w);
        }
        let batches = by_partition.into_iter().map(|((_, day), ws)| {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(ws.len());
            for w in ws {
                batch.append_statement(self.insert_window.clone());
                let v: WindowDbRow = (
                    w.vehicle_id.clone(),
                    day,
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
                    w.event_id.clone(),
                );
                values.push(v);
            }
            async move { self.session.batch(&batch, values).await.map_err(be) }
        });
        try_join_all(batches).await?;
        Ok(())
    }

    async fn windows(
        &self,
        vehicle_id: &str,
        from_ms: i64,
        to_ms: i64,
        _now_ms: i64,
    ) -> Result<Vec<WindowRow>> {
        let mut out = Vec::new();
        // One query per day partition, in day order; each is ordered by window_start.
        for day in day_of(from_ms)..=day_of(to_ms.saturating_sub(1)) {
            let result = self
                .session
                .execute_unpaged(&self.select_windows, (vehicle_id, day, from_ms, to_ms))
                .await
                .map_err(be)?
                .into_rows_result()
                .map_err(be)?;
            for row in result.rows::<WindowDbRow>().map_err(be)? {
                let r = row.map_err(be)?;
                out.push(WindowRow {
                    vehicle_id: r.0,
                    window_start: r.2,
                    window_end: r.3,
                    count: r.4,
                    speed_avg_kmh: r.5,
                    speed_max_kmh: r.6,
                    cargo_temp_min_c: r.7,
                    cargo_temp_avg_c: r.8,
                    cargo_temp_max_c: r.9,
                    distance_m: r.10,
                    moving_s: r.11,
                    idle_s: r.12,
                    event_id: r.13,
                });
            }
        }
        Ok(out)
    }

    async fn record_incident(&self, incident: &Incident) -> Result<Option<Incident>> {
        // First write wins, decided by the server (a Paxos round): safe whatever the writers.
        let i = incident.clone();
        let row: IncidentRow = (
            i.incident_id.clone(),
            i.vehicle_id,
            i.kind,
            i.severity,
            i.status,
            i.event_time,
            i.recorded_at,
            i.lat,
            i.lon,
            i.description,
            i.notified_at,
        );
        let result = self
            .session
            .execute_unpaged(&self.insert_incident, row)
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        // The first column of a conditional write's result is `[applied]`.
        let applied = matches!(
            result
                .maybe_first_row::<scylla::value::Row>()
                .map_err(be)?
                .and_then(|r| r.columns.into_iter().next().flatten()),
            Some(scylla::value::CqlValue::Boolean(true))
        );
        let stored = if applied {
            None
        } else {
            Some(
                self.incident(&incident.incident_id)
                    .await?
                    .ok_or_else(|| be("conditional insert not applied, yet no row to read"))?,
            )
        };
        // The by-vehicle index row is written in both cases (idempotent): a crash between the
        // two writes is repaired by the replay.
        let first = stored.as_ref().unwrap_or(incident);
        self.session
            .execute_unpaged(
                &self.insert_incident_by_vehicle,
                (&first.vehicle_id, first.event_time, &first.incident_id),
            )
            .await
            .map_err(be)?;
        Ok(stored)
    }

    async fn mark_notified(&self, ids: &[String], at_ms: i64) -> Result<()> {
        let writes = ids.iter().map(|id| async move {
            self.session
                .execute_unpaged(&self.notify_incident, (at_ms, id.as_str()))
                .await
                .map_err(be)
        });
        try_join_all(writes).await?;
        Ok(())
    }

    async fn incident(&self, incident_id: &str) -> Result<Option<Incident>> {
        let result = self
            .session
            .execute_unpaged(&self.select_incident, (incident_id,))
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        let row: Option<IncidentRow> = result.maybe_first_row().map_err(be)?;
        Ok(row.map(incident_of))
    }

    async fn incidents_for_vehicle(&self, vehicle_id: &str, limit: usize) -> Result<Vec<Incident>> {
        let result = self
            .session
            .execute_unpaged(&self.select_incidents_by_vehicle, (vehicle_id,))
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        let mut keys: Vec<(i64, String)> = result
            .rows::<(i64, String)>()
            .map_err(be)?
            .collect::<std::result::Result<_, _>>()
            .map_err(be)?;
        keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        keys.truncate(limit);
        let reads = keys.iter().map(|(_, id)| self.incident(id));
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    async fn put_deliveries(&self, rows: &[DeliveryRow]) -> Result<()> {
        let writes = rows.iter().map(|d| async move {
            self.session
                .execute_unpaged(&self.insert_delivery, delivery_tuple(d))
                .await
                .map_err(be)?;
            self.session
                .execute_unpaged(
                    &self.insert_delivery_by_vehicle,
                    (d.vehicle_id.as_str(), d.delivery_id.as_str()),
                )
                .await
                .map_err(be)
        });
        try_join_all(writes).await?;
        Ok(())
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        let result = self
            .session
            .execute_unpaged(&self.select_delivery, (delivery_id,))
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        let row: Option<DeliveryTuple> = result.maybe_first_row().map_err(be)?;
        Ok(row.map(delivery_of))
    }

    async fn deliveries_for_vehicle(
        &self,
        vehicle_id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>> {
        let result = self
            .session
            .execute_unpaged(&self.select_deliveries_by_vehicle, (vehicle_id,))
            .await
            .map_err(be)?
            .into_rows_result()
            .map_err(be)?;
        let ids: Vec<(String,)> = result
            .rows::<(String,)>()
            .map_err(be)?
            .collect::<std::result::Result<_, _>>()
            .map_err(be)?;
        let reads = ids.iter().map(|(id,)| self.delivery(id));
        let mut rows: Vec<DeliveryRow> = try_join_all(reads).await?.into_iter().flatten().collect();
        rows.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.delivery_id.cmp(&b.delivery_id))
        });
        rows.truncate(limit);
        Ok(rows)
    }
}

fn state_of_row(r: StateRow) -> VehicleState {
    VehicleState {
        vehicle_id: r.0,
        event_time: r.1,
        lat: r.2,
        lon: r.3,
        speed_kmh: r.4,
        heading_deg: r.5,
        cargo_temp_c: r.6,
        door_open: r.7,
        ignition_on: r.8,
        event_id: r.9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("scylla://10.0.0.1:9042/fleet?replication_factor=3").expect("valid");
        assert_eq!(
            (t.node.as_str(), t.keyspace.as_str(), t.replication_factor),
            ("10.0.0.1:9042", "fleet", 3)
        );
        let t = parse_url("scylla://scylla/fleet").expect("valid");
        assert_eq!(t.node, "scylla:9042");
        for bad in [
            "scylla://host",
            "scylla:///ks",
            "scylla://h/ks;drop",
            "scylla://h/ks?x=1",
            "sqlite://x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn newer_events_get_greater_write_timestamps() {
        assert!(write_timestamp(1_001, "a") > write_timestamp(1_000, "zzz"));
        assert!(write_timestamp(1_000, "a") >= 1_000_000);
        assert!(write_timestamp(1_000, "a") < 1_001_000);
        // Equal event times: one fixed winner, the same whatever the order of writes.
        assert_ne!(write_timestamp(5, "e-1"), write_timestamp(5, "e-2"));
        assert_eq!(write_timestamp(5, "e-1"), write_timestamp(5, "e-1"));
        // Out-of-range device clocks neither overflow nor go negative.
        assert!(write_timestamp(-7, "x") >= 0);
        assert!(write_timestamp(i64::MAX, "x") > write_timestamp(i64::MAX / 2000, "x"));
    }
}
