use fleet_runtime::harness::Harness;
use fleet_schemas::{Decoder, Position};
use fleet_state::{Store, StoreOptions};

use super::*;

const N_ID: u32 = 31;
const TOPIC: &str = "fleet.deliveries";
/// Destination: Bogotá, Plaza de Bolívar.
const DEST: (f64, f64) = (4.5981, -74.0760);
/// About 11 km north of it.
const FAR: (f64, f64) = (4.6981, -74.0760);

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}/s.db", dir.path().display());
    Store::open(&url, StoreOptions::default())
        .await
        .expect("store")
}

fn config() -> DeliveriesConfig {
    DeliveriesConfig {
        notifications_topic: "notif".into(),
        position_interval: Duration::from_millis(1),
        recipient: "dispatch:{delivery_id}".into(),
        ..Default::default()
    }
}

type P = Harness<DeliveriesProcessor<Store>>;

fn new_processor(store: Store) -> DeliveriesProcessor<Store> {
    DeliveriesProcessor::new(
        &config(),
        store,
        Table::empty(),
        Encoder::with_schema_id(N_ID),
        &Metrics::new("test"),
    )
}

fn processor(store: Store) -> P {
    Harness::new(new_processor(store))
}

fn event(id: &str, vehicle: &str, kind: DeliveryKind, t: i64) -> DeliveryEvent {
    DeliveryEvent {
        event_id: ids::derived_id(&[id, &format!("{kind:?}"), &t.to_string()]),
        delivery_id: id.into(),
        vehicle_id: vehicle.into(),
        driver_id: Some("DRV-1".into()),
        kind,
        event_time: t,
        ingest_time: t + 5,
        sent_time: Some(t + 1),
        position: None,
        destination: None,
        destination_radius_m: None,
        promised_by: None,
        note: None,
        reassigned_by: None,
    }
}

fn created(id: &str, vehicle: &str, t: i64, promised_by: Option<i64>) -> DeliveryEvent {
    DeliveryEvent {
        destination: Some(Position::new(DEST.0, DEST.1)),
        destination_radius_m: Some(100.0),
        promised_by,
        ..event(id, vehicle, DeliveryKind::Created, t)
    }
}

async fn decode(out: &Outputs) -> Vec<Notification> {
    let nd = Decoder::<Notification>::offline(&[N_ID]);
    let mut v = Vec::new();
    for (topic, key, payload) in out.iter() {
        assert_eq!(topic, "notif");
        let n = nd.decode(payload).await.expect("notification");
        assert_eq!(key, n.recipient.as_bytes(), "keyed by recipient");
        v.push(n);
    }
    v
}

fn input(partition: i32, offset: i64, r: DeliveryEvent) -> Input<'static, DeliveryEvent> {
    Input {
        record: r,
        topic: TOPIC,
        partition,
        offset,
        key: None,
        timestamp_ms: None,
    }
}

async fn feed(p: &mut P, partition: i32, offset: i64, r: DeliveryEvent) -> Vec<Notification> {
    let out = p
        .process(&input(partition, offset, r))
        .await
        .expect("processed");
    decode(&out).await
}

/// Processing time for ticks: one second later on every call (a poll is due on each).
fn clock() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static OFFSET: AtomicI64 = AtomicI64::new(0);
    now_ms() + OFFSET.fetch_add(1_000, Ordering::Relaxed)
}

/// One tick, then a commit (which writes the rows).
async fn tick(p: &mut P, now: i64) -> Vec<Notification> {
    let out = p.tick(now).await.expect("tick");
    p.commit().await.expect("commit");
    decode(&out).await
}

async fn position(store: &Store, vehicle: &str, t: i64, at: (f64, f64), kmh: f64) {
    let mut s = VehicleState::new(vehicle, t, at.0, at.1);
    s.speed_kmh = Some(kmh);
    s.event_id = ids::derived_id(&[vehicle, &t.to_string()]);
    store
        .upsert_vehicle_states(&[s], now_ms())
        .await
        .expect("vehicle state");
}

fn kinds(ns: &[Notification]) -> Vec<(String, String)> {
    ns.iter()
        .map(|n| (n.source_kind.clone(), n.subject.clone()))
        .collect()
}

#[tokio::test]
async fn driver_steps_notify_once_each_and_the_row_follows() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    let mut all = Vec::new();
    all.extend(feed(&mut p, 0, 0, created("D-1", "VEH-1", t0, None)).await);
    all.extend(
        feed(
            &mut p,
            0,
            1,
            event("D-1", "VEH-1", DeliveryKind::Assigned, t0 + 1_000),
        )
        .await,
    );
    all.extend(
        feed(
            &mut p,
            0,
            2,
            event("D-1", "VEH-1", DeliveryKind::PickedUp, t0 + 2_000),
        )
        .await,
    );
    // A retried (older) step changes nothing.
    all.extend(
        feed(
            &mut p,
            0,
            3,
            event("D-1", "VEH-1", DeliveryKind::Assigned, t0 + 1_000),
        )
        .await,
    );
    all.extend(
        feed(
            &mut p,
            0,
            4,
            event("D-1", "VEH-1", DeliveryKind::Delivered, t0 + 9_000),
        )
        .await,
    );
    // Final is final.
    all.extend(
        feed(
            &mut p,
            0,
            5,
            event("D-1", "VEH-1", DeliveryKind::Failed, t0 + 10_000),
        )
        .await,
    );
    assert_eq!(
        kinds(&all),
        [
            (
                "delivery.status".to_owned(),
                "delivery D-1: assigned".to_owned()
            ),
            (
                "delivery.status".to_owned(),
                "delivery D-1: picked_up".to_owned()
            ),
            (
                "delivery.status".to_owned(),
                "delivery D-1: delivered".to_owned()
            ),
        ]
    );
    assert!(all.iter().all(|n| n.recipient == "dispatch:D-1"));
    assert!(
        all[2].body.contains("confirmed by the driver"),
        "{}",
        all[2].body
    );
    assert_eq!(all[2].event_time, t0 + 9_000);
    assert_eq!(all[2].sent_time, Some(t0 + 9_001));
    // Rows are written before the commit.
    assert!(st.delivery("D-1").await.expect("read").is_none());
    tick(&mut p, clock()).await;
    let row = st.delivery("D-1").await.expect("read").expect("row");
    assert_eq!(row.status, "delivered");
    assert_eq!(row.delivered_at, Some(t0 + 9_000));
    assert_eq!(row.completed_by.as_deref(), Some("driver"));
    assert_eq!(row.driver_id.as_deref(), Some("DRV-1"));
    assert_eq!((row.dest_lat, row.dest_lon), (Some(DEST.0), Some(DEST.1)));
}

#[tokio::test]
async fn geofence_dwell_completes_from_vehicle_positions() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    feed(&mut p, 0, 0, created("D-2", "VEH-2", t0, None)).await;
    feed(
        &mut p,
        0,
        1,
        event("D-2", "VEH-2", DeliveryKind::PickedUp, t0 + 1_000),
    )
    .await;
    // Driving towards the destination: an ETA, no completion.
    position(&st, "VEH-2", t0 + 10_000, FAR, 50.0).await;
    let ns = tick(&mut p, clock()).await;
    assert!(ns.is_empty(), "{ns:?}");
    let row = st.delivery("D-2").await.expect("read").expect("row");
    assert_eq!(row.status, "picked_up");
    let remaining = row.remaining_m.expect("remaining");
    assert!((10_000.0..16_000.0).contains(&remaining), "{remaining}");
    assert!(row.eta_ms.expect("eta") > t0 + 10_000);
    assert_eq!((row.last_lat, row.last_lon), (Some(FAR.0), Some(FAR.1)));
    // The same position again (the next poll) is not a new sample.
    assert!(tick(&mut p, clock()).await.is_empty());
    // Inside the geofence: arrived; 120 s later: delivered by the geofence.
    position(&st, "VEH-2", t0 + 1_000_000, DEST, 0.0).await;
    let ns = tick(&mut p, clock()).await;
    assert_eq!(
        kinds(&ns),
        [("delivery.status".into(), "delivery D-2: arrived".into())]
    );
    position(&st, "VEH-2", t0 + 1_060_000, DEST, 0.0).await;
    assert!(
        tick(&mut p, clock()).await.is_empty(),
        "60 s is not the dwell"
    );
    position(&st, "VEH-2", t0 + 1_125_000, DEST, 0.0).await;
    let ns = tick(&mut p, clock()).await;
    assert_eq!(
        kinds(&ns),
        [("delivery.status".into(), "delivery D-2: delivered".into())]
    );
    assert!(ns[0].body.contains("stayed at the destination"));
    let row = st.delivery("D-2").await.expect("read").expect("row");
    assert_eq!(row.status, "delivered");
    assert_eq!(row.delivered_at, Some(t0 + 1_125_000));
    assert_eq!(row.completed_by.as_deref(), Some("geofence"));
    // Later positions change nothing.
    position(&st, "VEH-2", t0 + 1_200_000, FAR, 60.0).await;
    assert!(tick(&mut p, clock()).await.is_empty());
}

#[tokio::test]
async fn a_slipping_eta_is_late_once_then_overdue_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    // 11 km at <= 40 km/h cannot make it in 2 minutes.
    feed(
        &mut p,
        0,
        0,
        created("D-3", "VEH-3", t0, Some(t0 + 120_000)),
    )
    .await;
    feed(
        &mut p,
        0,
        1,
        event("D-3", "VEH-3", DeliveryKind::InTransit, t0 + 1_000),
    )
    .await;
    position(&st, "VEH-3", t0 + 10_000, FAR, 30.0).await;
    let ns = tick(&mut p, clock()).await;
    assert_eq!(
        kinds(&ns),
        [("delivery.late".into(), "delivery D-3: late".into())]
    );
    assert_eq!(ns[0].severity, Severity::Medium);
    let late_id = ns[0].event_id.clone();
    position(&st, "VEH-3", t0 + 20_000, FAR, 30.0).await;
    assert!(tick(&mut p, clock()).await.is_empty(), "late is told once");
    position(&st, "VEH-3", t0 + 130_000, FAR, 30.0).await;
    let ns = tick(&mut p, clock()).await;
    assert_eq!(
        kinds(&ns),
        [("delivery.overdue".into(), "delivery D-3: overdue".into())]
    );
    assert_eq!(ns[0].severity, Severity::High);
    assert!(st.delivery("D-3").await.expect("read").expect("row").late);
    // A new promise far ahead: back on time (a new episode id next time it slips).
    let mut later = event("D-3", "VEH-3", DeliveryKind::Other, t0 + 140_000);
    later.promised_by = Some(t0 + 86_400_000);
    feed(&mut p, 0, 2, later).await;
    position(&st, "VEH-3", t0 + 150_000, FAR, 30.0).await;
    let ns = tick(&mut p, clock()).await;
    assert_eq!(
        kinds(&ns),
        [(
            "delivery.on_time".into(),
            "delivery D-3: back on time".into()
        )]
    );
    assert_ne!(ns[0].event_id, late_id);
}

#[tokio::test]
async fn restart_resumes_from_the_committed_state_with_the_same_notification_ids() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let t0 = now_ms() - 3_600_000;
    let inputs = [
        created("D-4", "VEH-4", t0, Some(t0 + 60_000)),
        event("D-4", "VEH-4", DeliveryKind::PickedUp, t0 + 1_000),
        event("D-4", "VEH-4", DeliveryKind::InTransit, t0 + 2_000),
    ];
    // Undisturbed reference run, in its own store.
    let ref_dir = tempfile::tempdir().expect("tmp");
    let ref_st = store(&ref_dir).await;
    let mut r = processor(ref_st.clone());
    let mut reference = Vec::new();
    for (i, e) in inputs.iter().enumerate() {
        reference.extend(feed(&mut r, 3, i as i64, e.clone()).await);
    }
    position(&ref_st, "VEH-4", t0 + 10_000, FAR, 40.0).await;
    reference.extend(tick(&mut r, clock()).await);
    position(&ref_st, "VEH-4", t0 + 400_000, DEST, 0.0).await;
    reference.extend(tick(&mut r, clock()).await);
    position(&ref_st, "VEH-4", t0 + 530_000, DEST, 0.0).await;
    reference.extend(tick(&mut r, clock()).await);

    // First life: the inputs and a tick, committed; then a crash.
    let mut p = processor(st.clone());
    let mut seen = Vec::new();
    for (i, e) in inputs.iter().enumerate() {
        seen.extend(feed(&mut p, 3, i as i64, e.clone()).await);
    }
    position(&st, "VEH-4", t0 + 10_000, FAR, 40.0).await;
    seen.extend(tick(&mut p, clock()).await);
    // Second life: the partition is restored from the committed state; no input arrives on
    // the quiet partition, yet the open delivery is still tracked.
    p.restart(new_processor(st.clone()));
    position(&st, "VEH-4", t0 + 400_000, DEST, 0.0).await;
    seen.extend(tick(&mut p, clock()).await);
    position(&st, "VEH-4", t0 + 530_000, DEST, 0.0).await;
    seen.extend(tick(&mut p, clock()).await);
    let ids = |v: &[Notification]| v.iter().map(|n| n.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&seen), ids(&reference));
    assert_eq!(
        kinds(&seen).into_iter().map(|k| k.1).collect::<Vec<_>>(),
        [
            "delivery D-4: picked_up",
            "delivery D-4: in_transit",
            "delivery D-4: late",
            "delivery D-4: arrived",
            "delivery D-4: overdue",
            "delivery D-4: delivered",
        ]
    );
    let row = st.delivery("D-4").await.expect("read").expect("row");
    assert_eq!(
        row,
        ref_st.delivery("D-4").await.expect("read").expect("row")
    );
    assert_eq!(row.delivered_at, Some(t0 + 530_000));
}

/// A crash before the commit loses the batch's state: the inputs come again (from the
/// committed offset) and produce the same notifications, with the same ids.
#[tokio::test]
async fn a_crash_before_the_commit_repeats_the_batch_identically() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let t0 = now_ms() - 3_600_000;
    let mut p = processor(st.clone());
    feed(&mut p, 0, 0, created("D-7", "VEH-7", t0, None)).await;
    p.commit().await.expect("commit");
    let step = event("D-7", "VEH-7", DeliveryKind::PickedUp, t0 + 1_000);
    let first = feed(&mut p, 0, 1, step.clone()).await;
    p.restart(new_processor(st.clone()));
    let again = feed(&mut p, 0, 1, step).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, again[0].event_id);
    assert_eq!(first[0].subject, again[0].subject);
}

#[tokio::test]
async fn records_without_ids_are_poison() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = processor(store(&dir).await);
    let err = p
        .process(&input(0, 0, event(" ", "VEH-1", DeliveryKind::Created, 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, ProcessError::Poison { .. }), "{err:?}");
}

#[tokio::test]
async fn reassignment_follows_the_new_vehicle() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    feed(&mut p, 0, 0, created("D-5", "VEH-OLD", t0, None)).await;
    let dispatch = |e: DeliveryEvent| DeliveryEvent {
        reassigned_by: Some("dispatch".into()),
        ..e
    };
    feed(
        &mut p,
        0,
        1,
        dispatch(event("D-5", "VEH-NEW", DeliveryKind::PickedUp, t0 + 1_000)),
    )
    .await;
    // A late copy naming the old vehicle does not win.
    feed(
        &mut p,
        0,
        2,
        dispatch(event("D-5", "VEH-OLD", DeliveryKind::Assigned, t0 + 500)),
    )
    .await;
    position(&st, "VEH-OLD", t0 + 10_000, DEST, 0.0).await;
    position(&st, "VEH-NEW", t0 + 10_000, FAR, 50.0).await;
    tick(&mut p, clock()).await;
    let row = st.delivery("D-5").await.expect("read").expect("row");
    assert_eq!(row.vehicle_id, "VEH-NEW");
    assert_eq!((row.last_lat, row.last_lon), (Some(FAR.0), Some(FAR.1)));
    assert_eq!(row.status, "picked_up");
}

/// A driver of another vehicle (any token that may report for its own vehicle) cannot take a
/// delivery over: the update is rejected with its reason and the delivery keeps its vehicle,
/// status and customer. Before the fix it moved to the sender's vehicle.
#[tokio::test]
async fn another_vehicles_driver_cannot_take_a_delivery_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    feed(&mut p, 0, 0, created("D-9", "VEH-OWN", t0, None)).await;
    for (offset, kind) in [(1, DeliveryKind::PickedUp), (2, DeliveryKind::Delivered)] {
        let err = p
            .process(&input(
                0,
                offset,
                event("D-9", "VEH-THIEF", kind, t0 + 1_000),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProcessError::Poison {
                    reason: "delivery_vehicle_mismatch",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // Its own vehicle goes on as before.
    feed(
        &mut p,
        0,
        3,
        event("D-9", "VEH-OWN", DeliveryKind::PickedUp, t0 + 2_000),
    )
    .await;
    tick(&mut p, clock()).await;
    let row = st.delivery("D-9").await.expect("read").expect("row");
    assert_eq!(row.vehicle_id, "VEH-OWN");
    assert_eq!(row.status, "picked_up");
}

#[tokio::test]
async fn finished_deliveries_leave_memory_after_the_retention() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(&dir).await;
    let mut p = processor(st.clone());
    let t0 = now_ms() - 3_600_000;
    feed(&mut p, 0, 0, created("D-6", "VEH-6", t0, None)).await;
    feed(
        &mut p,
        0,
        1,
        event("D-6", "VEH-6", DeliveryKind::Cancelled, t0 + 1),
    )
    .await;
    let now = clock();
    tick(&mut p, now).await;
    assert_eq!(p.state(TOPIC, 0).map(State::len), Some(1));
    tick(&mut p, now + 3_600_000).await;
    assert_eq!(p.state(TOPIC, 0).map(State::len), Some(0));
    // The row stays.
    let row = st.delivery("D-6").await.expect("read").expect("row");
    assert_eq!(row.status, "cancelled");
}

#[test]
fn config_validation() {
    use fleet_runtime::config::Section;
    assert!(DeliveriesConfig::default().validate().is_ok());
    let bad = DeliveriesConfig {
        position_interval: Duration::from_secs(300),
        ..Default::default()
    };
    assert!(bad.validate().is_err(), "sampling slower than the dwell");
    let bad = DeliveriesConfig {
        channel: "pigeon".into(),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}
