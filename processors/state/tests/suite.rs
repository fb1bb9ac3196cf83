//! The behaviour every state backend must have, as one generic suite, run against SQLite and
//! against the CQL backend talking to Apache Cassandra 5.0 (the local stack's `cql` service:
//! `scripts/stack.sh up --cql`, address in `FLEET_TEST_CQL`; `scripts/test.sh` starts it). A
//! real ScyllaDB run (testcontainers) needs a Docker engine: `scylla_container_passes_the_suite`
//! says so.

use std::time::Duration;

use fleet_state::{
    DeliveryRow, Incident, StateStore, Store, StoreOptions, VehicleState, WindowRow,
};

fn state(id: &str, t: i64, lat: f64) -> VehicleState {
    VehicleState {
        vehicle_id: id.into(),
        event_time: t,
        lat,
        lon: -74.0,
        speed_kmh: Some(t as f64 / 1000.0),
        heading_deg: None,
        cargo_temp_c: Some(4.5),
        door_open: Some(false),
        ignition_on: None,
        event_id: format!("e-{id}-{t}"),
    }
}

fn window(id: &str, start: i64, count: i64) -> WindowRow {
    WindowRow {
        vehicle_id: id.into(),
        window_start: start,
        window_end: start + 60_000,
        count,
        speed_avg_kmh: Some(50.0),
        speed_max_kmh: Some(80.0),
        cargo_temp_min_c: None,
        cargo_temp_avg_c: None,
        cargo_temp_max_c: None,
        distance_m: 812.5,
        moving_s: 50.0,
        idle_s: 10.0,
        event_id: format!("w-{id}-{start}"),
    }
}

const DAY: i64 = 86_400_000;

/// How a backend expires rows and counts writes.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// Expiry follows the `now_ms` parameter; the upsert count is the rows that changed.
    Sqlite,
    /// Expiry by the server's clock (`USING TTL`); the upsert count is the rows sent (the
    /// server resolves newest-wins by write timestamp, without a read).
    Cql,
}

async fn newest_event_wins(store: &impl StateStore, backend: Backend) {
    let now = 1_000_000;
    assert_eq!(
        store
            .upsert_vehicle_states(&[state("A", 5_000, 1.0)], now)
            .await
            .expect("write"),
        1
    );
    // Older event: ignored, whatever the call order.
    let written = store
        .upsert_vehicle_states(&[state("A", 4_000, 2.0)], now)
        .await
        .expect("write");
    match backend {
        Backend::Sqlite => assert_eq!(written, 0, "nothing changed"),
        Backend::Cql => assert_eq!(written, 1, "sent; the server keeps the newer row"),
    }
    assert_eq!(
        store.vehicle_state("A", now).await.expect("read"),
        Some(state("A", 5_000, 1.0))
    );
    // Newer event, and in one batch the newest of several wins.
    let batch = [
        state("A", 7_000, 3.0),
        state("A", 6_000, 4.0),
        state("B", 1, 9.0),
    ];
    store
        .upsert_vehicle_states(&batch, now)
        .await
        .expect("write");
    assert_eq!(
        store.vehicle_state("A", now).await.expect("read"),
        Some(state("A", 7_000, 3.0))
    );
    assert_eq!(
        store.vehicle_state("B", now).await.expect("read"),
        Some(state("B", 1, 9.0))
    );
    // A replay of the current event is harmless.
    store
        .upsert_vehicle_states(&[state("A", 7_000, 3.0)], now)
        .await
        .expect("write");
    assert_eq!(
        store.vehicle_state("A", now).await.expect("read"),
        Some(state("A", 7_000, 3.0))
    );
    assert_eq!(
        store.vehicle_state("nobody", now).await.expect("read"),
        None
    );
}

async fn windows_are_idempotent_and_range_queried(store: &impl StateStore) {
    let now = 1_000_000;
    let rows: Vec<WindowRow> = (0..5)
        .map(|i| window("V", DAY - 120_000 + i * 60_000, i))
        .collect();
    store.put_windows(&rows, now).await.expect("write");
    store.put_windows(&rows[1..2], now).await.expect("replay");
    let mut changed = window("V", rows[2].window_start, 99);
    changed.distance_m = 1.0;
    store
        .put_windows(&[changed.clone()], now)
        .await
        .expect("replace");
    // Crossing midnight: the range spans two day partitions.
    let got = store
        .windows("V", DAY - 120_000, DAY + 120_000, now)
        .await
        .expect("read");
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], rows[0]);
    assert_eq!(got[2], changed, "a re-written window replaces the old one");
    let got = store
        .windows("V", DAY, DAY + 60_000, now)
        .await
        .expect("read");
    assert_eq!(
        got.iter().map(|w| w.window_start).collect::<Vec<_>>(),
        vec![DAY]
    );
    assert!(
        store
            .windows("other", 0, 10 * DAY, now)
            .await
            .expect("read")
            .is_empty()
    );
}

async fn rows_expire(store: &impl StateStore, ttl: Duration) {
    let ttl_ms = ttl.as_millis() as i64;
    let t0 = 10_000_000;
    store
        .upsert_vehicle_states(&[state("X", 1, 1.0)], t0)
        .await
        .expect("write");
    store
        .put_windows(&[window("X", 0, 1)], t0)
        .await
        .expect("write");
    assert!(
        store
            .vehicle_state("X", t0 + ttl_ms - 1)
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        store
            .vehicle_state("X", t0 + ttl_ms)
            .await
            .expect("read")
            .is_none()
    );
    assert_eq!(
        store
            .windows("X", 0, DAY, t0 + ttl_ms - 1)
            .await
            .expect("read")
            .len(),
        1
    );
    assert!(
        store
            .windows("X", 0, DAY, t0 + ttl_ms)
            .await
            .expect("read")
            .is_empty()
    );
    // After expiry even an older event may be written again: the row is gone. (Not so on
    // CQL: an expired cell still shadows older write timestamps until compaction purges it.)
    store
        .upsert_vehicle_states(&[state("X", 0, 5.0)], t0 + ttl_ms)
        .await
        .expect("write");
    assert_eq!(
        store
            .vehicle_state("X", t0 + ttl_ms)
            .await
            .expect("read")
            .map(|s| s.lat),
        Some(5.0)
    );
}

/// CQL: rows written `USING TTL` disappear by the server's clock (a store with a 2 s TTL).
async fn rows_expire_by_the_server_clock(store: &impl StateStore) {
    let now = fleet_now_ms();
    store
        .upsert_vehicle_states(&[state("TTL-X", 1, 1.0)], now)
        .await
        .expect("write");
    store
        .put_windows(&[window("TTL-X", 0, 1)], now)
        .await
        .expect("write");
    assert!(
        store
            .vehicle_state("TTL-X", now)
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(
        store
            .windows("TTL-X", 0, DAY, now)
            .await
            .expect("read")
            .len(),
        1
    );
    // Poll (no fixed sleep): expiry is at 2 s; 30 s is the bound before the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state_gone = store
            .vehicle_state("TTL-X", now)
            .await
            .expect("read")
            .is_none();
        let windows_gone = store
            .windows("TTL-X", 0, DAY, now)
            .await
            .expect("read")
            .is_empty();
        if state_gone && windows_gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rows with a 2 s TTL still there after 30 s (state gone: {state_gone}, windows gone: {windows_gone})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fleet_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn incident(id: &str, vehicle: &str, t: i64) -> Incident {
    Incident {
        incident_id: id.to_owned(),
        vehicle_id: vehicle.to_owned(),
        kind: "PANIC_BUTTON".into(),
        severity: "CRITICAL".into(),
        status: "open".into(),
        event_time: t,
        recorded_at: t + 5,
        lat: Some(4.6),
        lon: None,
        description: Some("driver pressed panic".into()),
        notified_at: None,
    }
}

async fn incidents_are_recorded_once_and_listed_per_vehicle(store: &impl StateStore) {
    let v = format!("VEH-I-{}", std::process::id());
    let first = incident(&format!("{v}-a"), &v, 1_000);
    assert_eq!(store.record_incident(&first).await.unwrap(), None, "new");
    // A replay with different details does not overwrite the first record.
    let mut replay = first.clone();
    replay.severity = "LOW".into();
    replay.recorded_at = 9_999;
    assert_eq!(
        store.record_incident(&replay).await.unwrap(),
        Some(first.clone()),
        "duplicate detected, stored incident returned"
    );
    assert_eq!(
        store.incident(&first.incident_id).await.unwrap(),
        Some(first.clone())
    );
    store
        .record_incident(&incident(&format!("{v}-b"), &v, 3_000))
        .await
        .unwrap();
    store
        .record_incident(&incident(&format!("{v}-c"), &v, 2_000))
        .await
        .unwrap();
    store
        .record_incident(&incident("other", "VEH-OTHER", 5_000))
        .await
        .unwrap();
    let listed: Vec<String> = store
        .incidents_for_vehicle(&v, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.incident_id)
        .collect();
    assert_eq!(
        listed,
        [format!("{v}-b"), format!("{v}-c"), format!("{v}-a")],
        "newest first"
    );
    assert_eq!(store.incidents_for_vehicle(&v, 2).await.unwrap().len(), 2);
    assert!(
        store
            .incidents_for_vehicle("VEH-NONE", 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .mark_notified(std::slice::from_ref(&first.incident_id), 7_777)
        .await
        .unwrap();
    let got = store.incident(&first.incident_id).await.unwrap().unwrap();
    assert_eq!(got.notified_at, Some(7_777));
    assert_eq!(
        got.description, first.description,
        "other columns untouched"
    );
    assert_eq!(got.severity, "CRITICAL");
    assert_eq!(store.incident("missing").await.unwrap(), None);
}

fn delivery(id: &str, vehicle: &str, updated_at: i64) -> DeliveryRow {
    DeliveryRow {
        delivery_id: id.to_owned(),
        vehicle_id: vehicle.to_owned(),
        driver_id: Some("DRV-1".into()),
        status: "in_transit".into(),
        updated_at,
        dest_lat: Some(6.2442),
        dest_lon: Some(-75.5812),
        promised_by: Some(updated_at + 3_600_000),
        eta_ms: Some(updated_at + 1_800_000),
        eta_confidence: Some(0.8),
        remaining_m: Some(12_345.5),
        late: false,
        last_lat: Some(5.0),
        last_lon: None,
        delivered_at: None,
        completed_by: None,
    }
}

async fn deliveries_are_replaced_and_listed_per_vehicle(store: &impl StateStore) {
    let v = format!("VEH-D-{}", std::process::id());
    let a = delivery(&format!("{v}-a"), &v, 1_000);
    store
        .put_deliveries(std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(
        store.delivery(&a.delivery_id).await.unwrap(),
        Some(a.clone())
    );
    // A later write replaces the row's values. (A `None` over a stored value is not part of
    // the contract: the deliveries processor never clears a column.)
    let mut done = a.clone();
    done.status = "delivered".into();
    done.updated_at = 5_000;
    done.delivered_at = Some(5_000);
    done.completed_by = Some("geofence".into());
    done.eta_ms = Some(5_000);
    done.late = true;
    store
        .put_deliveries(&[
            done.clone(),
            delivery(&format!("{v}-b"), &v, 3_000),
            delivery("other-d", "VEH-OTHER", 9_000),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.delivery(&a.delivery_id).await.unwrap(),
        Some(done.clone())
    );
    let listed: Vec<String> = store
        .deliveries_for_vehicle(&v, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    assert_eq!(
        listed,
        [format!("{v}-a"), format!("{v}-b")],
        "most recently updated first"
    );
    assert_eq!(store.deliveries_for_vehicle(&v, 1).await.unwrap().len(), 1);
    assert!(
        store
            .deliveries_for_vehicle("VEH-NONE", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.delivery("missing").await.unwrap(), None);
}

async fn every_vehicle_is_listed_page_by_page(store: &impl StateStore) {
    let now = 2_000_000;
    let ids: Vec<String> = (0..25).map(|i| format!("LIST-{i:02}")).collect();
    let rows: Vec<VehicleState> = ids.iter().map(|id| state(id, 9_000, 1.0)).collect();
    store
        .upsert_vehicle_states(&rows, now)
        .await
        .expect("write");
    // Pages of 7, each continuing after the last id of the previous one.
    let mut seen: Vec<String> = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.vehicle_states(&after, 7, now).await.expect("page");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after.clone_from(&last.vehicle_id);
        seen.extend(page.into_iter().map(|s| s.vehicle_id));
    }
    let mut listed: Vec<String> = seen
        .iter()
        .filter(|id| id.starts_with("LIST-"))
        .cloned()
        .collect();
    let total = listed.len();
    listed.sort();
    listed.dedup();
    assert_eq!(total, listed.len(), "no vehicle twice");
    assert_eq!(listed, ids, "every vehicle once");
    let one = store.vehicle_states("", 1, now).await.expect("page");
    assert_eq!(one.len(), 1);
}

async fn suite(store: &impl StateStore, backend: Backend) {
    deliveries_are_replaced_and_listed_per_vehicle(store).await;
    every_vehicle_is_listed_page_by_page(store).await;
    incidents_are_recorded_once_and_listed_per_vehicle(store).await;
    newest_event_wins(store, backend).await;
    windows_are_idempotent_and_range_queried(store).await;
    if let Backend::Sqlite = backend {
        rows_expire(store, Duration::from_secs(3600)).await;
    }
}

fn short_ttl() -> StoreOptions {
    StoreOptions {
        vehicle_state_ttl: Duration::from_secs(3600),
        windows_ttl: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn sqlite_backend_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}/nested/state.db", dir.path().display());
    let store = Store::open(&url, short_ttl()).await.expect("open");
    suite(&store, Backend::Sqlite).await;
}

/// Two stores on `url` (two processes) write vehicle "S" concurrently: one the even event
/// times 398..0 (newest first), the other the odd ones 1..399; returns what a third reads.
async fn two_writers_race(url: &str) -> VehicleState {
    let a = Store::open(url, StoreOptions::default()).await.expect("a");
    let b = Store::open(url, StoreOptions::default()).await.expect("b");
    let wa = tokio::spawn(async move {
        for t in (0..200).rev() {
            a.upsert_vehicle_states(&[state("S", t * 2, 1.0)], 1)
                .await
                .expect("a writes");
        }
    });
    let wb = tokio::spawn(async move {
        for t in 0..200 {
            b.upsert_vehicle_states(&[state("S", t * 2 + 1, 2.0)], 1)
                .await
                .expect("b writes");
        }
    });
    wa.await.expect("a");
    wb.await.expect("b");
    let c = Store::open(url, StoreOptions::default()).await.expect("c");
    c.vehicle_state("S", 1).await.expect("read").expect("row")
}

#[tokio::test]
async fn several_processes_share_one_sqlite_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}/shared.db", dir.path().display());
    // Two independent connections, as two processes would have, writing concurrently.
    let s = two_writers_race(&url).await;
    assert_eq!(s.event_time, 399, "the newest event of either writer wins");
}

#[tokio::test]
async fn urls_are_checked() {
    for bad in [
        "sqlite://",
        "postgres://x",
        "scylla://127.0.0.1:1/fleet",
        "nonsense",
    ] {
        assert!(
            Store::open(bad, StoreOptions::default()).await.is_err(),
            "{bad}"
        );
    }
}

/// The Cassandra address of the local stack (`FLEET_TEST_CQL`, e.g. `127.0.0.1:9042`), or
/// `None` with a message; in CI (`CI` set) a missing server fails the test instead.
fn cql_address() -> Option<String> {
    match std::env::var("FLEET_TEST_CQL") {
        Ok(a) if !a.is_empty() => Some(a),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "FLEET_TEST_CQL is not set: CI must run the suite against Cassandra (scripts/test.sh starts it)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: FLEET_TEST_CQL not set (scripts/stack.sh up --cql, then FLEET_TEST_CQL=127.0.0.1:9042)"
            );
            None
        }
    }
}

/// The suite against Apache Cassandra 5.0: newest-wins by `USING TIMESTAMP`, first-write-wins
/// incidents by LWT, token paging, bound ranges; then real `USING TTL` expiry.
#[tokio::test]
async fn cql_backend_passes_the_suite_against_cassandra() {
    let Some(addr) = cql_address() else { return };
    // A keyspace of this run: the server keeps its data between runs.
    let ks = format!("fleet_test_{}_{}", std::process::id(), fleet_now_ms());
    let store = Store::open(&format!("scylla://{addr}/{ks}"), short_ttl())
        .await
        .expect("open against Cassandra");
    assert!(matches!(store, Store::Scylla(_)));
    suite(&store, Backend::Cql).await;
    let expiring = Store::open(
        &format!("scylla://{addr}/{ks}_ttl"),
        StoreOptions {
            vehicle_state_ttl: Duration::from_secs(2),
            windows_ttl: Duration::from_secs(2),
        },
    )
    .await
    .expect("open with a 2 s TTL");
    rows_expire_by_the_server_clock(&expiring).await;
}

/// Two writers racing on one vehicle through separate sessions (two processes after a
/// rebalance): the newest event wins without any read, in any interleaving.
#[tokio::test]
async fn cql_newest_wins_between_concurrent_writers() {
    let Some(addr) = cql_address() else { return };
    let url = format!(
        "scylla://{addr}/fleet_race_{}_{}",
        std::process::id(),
        fleet_now_ms()
    );
    let s = two_writers_race(&url).await;
    assert_eq!(
        s,
        state("S", 399, 2.0),
        "the newest event of either writer, whole"
    );
}

/// The same suite against a real ScyllaDB, started with testcontainers. Needs a Docker engine;
/// where there is none (this project's machines) the test says so and does nothing else.
#[tokio::test]
async fn scylla_container_passes_the_suite() {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};
    let docker = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !docker {
        eprintln!(
            "SKIPPED: no Docker engine, so the suite did not run against a real ScyllaDB \
             (it runs against Apache Cassandra above)"
        );
        return;
    }
    let container = GenericImage::new("scylladb/scylla", "6.2")
        .with_exposed_port(9042.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "Starting listening for CQL clients",
        ))
        .with_cmd([
            "--smp",
            "1",
            "--memory",
            "750M",
            "--overprovisioned",
            "1",
            "--developer-mode",
            "1",
        ])
        .start()
        .await
        .expect("ScyllaDB container");
    let port = container
        .get_host_port_ipv4(9042)
        .await
        .expect("mapped CQL port");
    let url = format!("scylla://127.0.0.1:{port}/fleet_test");
    // The CQL port can accept connections a moment before the node serves queries.
    let mut store = None;
    for _ in 0..60 {
        match Store::open(&url, short_ttl()).await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    let store = store.expect("ScyllaDB answers CQL");
    assert!(matches!(store, Store::Scylla(_)));
    suite(&store, Backend::Cql).await;
}
