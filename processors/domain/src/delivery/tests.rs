use super::*;
use crate::eta::SpeedParams;

const S: i64 = 1000;
const MIN: i64 = 60 * S;
const DEST: (f64, f64) = (4.80, -74.08);

fn created(t: i64, promised_by: Option<i64>) -> (Delivery, Vec<Change>) {
    Delivery::new(&Update {
        status: Status::Created,
        event_time: t,
        destination: Some(DEST),
        radius_m: Some(100.0),
        promised_by,
        position: None,
    })
}

fn route() -> RouteCorridor {
    RouteCorridor::new(&[(4.60, -74.08), (4.70, -74.08), (4.80, -74.08)]).unwrap()
}

fn moving(kmh: f64) -> SpeedEstimator {
    let mut s = SpeedEstimator::default();
    for i in 0..10 {
        s.observe(i * S, kmh, &SpeedParams::default());
    }
    s
}

fn picked_up() -> Delivery {
    let (mut d, _) = created(0, None);
    d.apply(&Update::status(Status::PickedUp, S));
    d
}

/// A point `m` metres north of the destination.
fn north_of_dest(m: f64) -> (f64, f64) {
    (DEST.0 + m / 111_195.0, DEST.1)
}

#[test]
fn status_names_round_trip() {
    for s in [
        Status::Created,
        Status::Assigned,
        Status::PickedUp,
        Status::InTransit,
        Status::Arrived,
        Status::Delivered,
        Status::Failed,
        Status::Cancelled,
    ] {
        assert_eq!(Status::parse(s.name()), Some(s));
    }
    assert_eq!(Status::parse("lost"), None);
}

#[test]
fn status_only_moves_forward() {
    let (mut d, changes) = created(0, None);
    assert!(changes.is_empty(), "created is the starting status");
    let c = d.apply(&Update::status(Status::InTransit, 10 * S));
    assert_eq!(
        c,
        vec![Change::Status {
            from: Status::Created,
            to: Status::InTransit,
            at: 10 * S,
            by: None
        }]
    );
    // A late-arriving older step changes nothing.
    assert!(d.apply(&Update::status(Status::Assigned, 5 * S)).is_empty());
    assert_eq!(d.status, Status::InTransit);
    // Replaying the same update changes nothing.
    assert!(
        d.apply(&Update::status(Status::InTransit, 10 * S))
            .is_empty()
    );
}

#[test]
fn final_statuses_are_final() {
    let (mut d, _) = created(0, None);
    let c = d.apply(&Update::status(Status::Delivered, 10 * S));
    assert_eq!(
        c,
        vec![Change::Status {
            from: Status::Created,
            to: Status::Delivered,
            at: 10 * S,
            by: Some(CompletedBy::Driver)
        }]
    );
    assert_eq!(d.delivered_at, Some(10 * S));
    assert!(
        d.apply(&Update::status(Status::Cancelled, 20 * S))
            .is_empty()
    );
    assert!(d.apply(&Update::status(Status::Failed, 20 * S)).is_empty());
    assert_eq!(d.status, Status::Delivered);
    // Nor do positions change a final delivery.
    let p = DeliveryParams::default();
    assert!(d.observe(30 * S, DEST, None, &moving(50.0), &p).is_empty());
    assert_eq!(d.status, Status::Delivered);
}

#[test]
fn newest_update_fields_win() {
    let (mut d, _) = created(10 * S, Some(100 * MIN));
    d.apply(&Update {
        promised_by: Some(50 * MIN),
        ..Update::status(Status::Assigned, 5 * S)
    });
    assert_eq!(
        d.promised_by,
        Some(100 * MIN),
        "an older update's promise does not win"
    );
    d.apply(&Update {
        promised_by: Some(120 * MIN),
        radius_m: Some(-5.0),
        destination: Some((91.0, 0.0)),
        ..Update::status(Status::Assigned, 20 * S)
    });
    assert_eq!(d.promised_by, Some(120 * MIN));
    assert_eq!(d.radius_m, Some(100.0), "an invalid radius is ignored");
    assert_eq!(
        d.destination,
        Some(DEST),
        "an invalid destination is ignored"
    );
}

#[test]
fn dwelling_at_the_destination_completes_it_once() {
    let p = DeliveryParams::default();
    let mut d = picked_up();
    let speed = moving(40.0);
    let c = d.observe(10 * S, north_of_dest(50.0), None, &speed, &p);
    assert_eq!(
        c,
        vec![Change::Status {
            from: Status::PickedUp,
            to: Status::Arrived,
            at: 10 * S,
            by: None
        }]
    );
    assert!(
        d.observe(60 * S, north_of_dest(30.0), None, &speed, &p)
            .is_empty()
    );
    let c = d.observe(10 * S + p.dwell_ms, north_of_dest(20.0), None, &speed, &p);
    assert_eq!(
        c,
        vec![Change::Status {
            from: Status::Arrived,
            to: Status::Delivered,
            at: 10 * S + p.dwell_ms,
            by: Some(CompletedBy::Geofence)
        }]
    );
    assert_eq!(d.completed_by, Some(CompletedBy::Geofence));
    assert!(
        d.observe(20 * MIN, DEST, None, &speed, &p).is_empty(),
        "completed once"
    );
    // The driver's confirmation afterwards does not complete it again.
    assert!(
        d.apply(&Update::status(Status::Delivered, 21 * MIN))
            .is_empty()
    );
}

#[test]
fn leaving_before_the_dwell_resets_it() {
    let p = DeliveryParams::default();
    let mut d = picked_up();
    let speed = moving(40.0);
    d.observe(10 * S, north_of_dest(50.0), None, &speed, &p);
    // Jitter just outside the radius but inside the exit margin keeps the dwell.
    d.observe(40 * S, north_of_dest(110.0), None, &speed, &p);
    assert_eq!(d.inside_since, Some(10 * S));
    // Really leaving resets it.
    d.observe(70 * S, north_of_dest(500.0), None, &speed, &p);
    assert_eq!(d.inside_since, None);
    let c = d.observe(10 * S + p.dwell_ms, north_of_dest(10.0), None, &speed, &p);
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(d.status, Status::Arrived);
    let c = d.observe(
        10 * S + 2 * p.dwell_ms,
        north_of_dest(10.0),
        None,
        &speed,
        &p,
    );
    assert!(
        matches!(
            c[..],
            [Change::Status {
                to: Status::Delivered,
                ..
            }]
        ),
        "{c:?}"
    );
}

#[test]
fn no_completion_before_pick_up() {
    let p = DeliveryParams::default();
    let (mut d, _) = created(0, None);
    let speed = moving(40.0);
    for t in 0..10 {
        assert!(d.observe(t * MIN, DEST, None, &speed, &p).is_empty());
    }
    assert_eq!(d.status, Status::Created);
    // Once picked up, the dwell counts from when the vehicle entered.
    d.apply(&Update::status(Status::PickedUp, 10 * MIN));
    let c = d.observe(11 * MIN, DEST, None, &speed, &p);
    assert!(
        matches!(
            c[..],
            [
                Change::Status {
                    to: Status::Arrived,
                    ..
                },
                Change::Status {
                    to: Status::Delivered,
                    ..
                }
            ]
        ),
        "{c:?}"
    );
}

#[test]
fn old_and_invalid_positions_are_ignored() {
    let p = DeliveryParams::default();
    let mut d = picked_up();
    let speed = moving(40.0);
    d.observe(100 * S, (4.7, -74.08), None, &speed, &p);
    assert!(d.observe(50 * S, DEST, None, &speed, &p).is_empty());
    assert!(
        d.observe(100 * S, DEST, None, &speed, &p).is_empty(),
        "replayed time"
    );
    assert!(
        d.observe(200 * S, (f64::NAN, 0.0), None, &speed, &p)
            .is_empty()
    );
    assert_eq!(d.last_position, Some((100 * S, 4.7, -74.08)));
    assert_eq!(d.status, Status::PickedUp);
}

#[test]
fn eta_slipping_past_the_promise_is_late_then_on_time_again() {
    let p = DeliveryParams::default();
    let route = route();
    // 11.1 km from the destination at t = 10 min; promised for t = 30 min.
    let (mut d, _) = created(0, Some(30 * MIN));
    d.apply(&Update::status(Status::InTransit, S));
    let fast = moving(60.0); // ~11 minutes: on time
    assert!(
        d.observe(10 * MIN, (4.70, -74.08), Some(&route), &fast, &p)
            .is_empty()
    );
    assert!(!d.late);
    let eta = d.eta.unwrap();
    assert!(
        eta.eta_ms > 20 * MIN && eta.eta_ms < 23 * MIN,
        "{}",
        eta.eta_ms
    );
    // Crawling: 11 km at the 10 km/h floor is over an hour.
    let slow = moving(6.0);
    let c = d.observe(11 * MIN, (4.70, -74.08), Some(&route), &slow, &p);
    assert!(
        matches!(c[..], [Change::Late { promised_by, .. }] if promised_by == 30 * MIN),
        "{c:?}"
    );
    // Still late: no repeat.
    assert!(
        d.observe(12 * MIN, (4.701, -74.08), Some(&route), &slow, &p)
            .is_empty()
    );
    // Speeding up brings it back.
    let c = d.observe(13 * MIN, (4.702, -74.08), Some(&route), &fast, &p);
    assert!(matches!(c[..], [Change::OnTime { .. }]), "{c:?}");
}

#[test]
fn within_the_grace_is_not_late() {
    let p = DeliveryParams::default();
    let (mut d, _) = created(0, Some(20 * MIN));
    d.apply(&Update::status(Status::InTransit, S));
    // ETA ~ 21 min: past the promise by less than the 5-minute grace.
    let c = d.observe(10 * MIN, (4.70, -74.08), Some(&route()), &moving(60.0), &p);
    assert!(c.is_empty(), "{c:?}");
    assert!(d.eta.unwrap().eta_ms > 20 * MIN);
}

#[test]
fn overdue_once_per_promise() {
    let p = DeliveryParams::default();
    let (mut d, _) = created(0, Some(10 * MIN));
    d.apply(&Update::status(Status::InTransit, S));
    let speed = moving(60.0);
    let c = d.observe(11 * MIN, (4.70, -74.08), None, &speed, &p);
    assert!(
        c.contains(&Change::Overdue {
            promised_by: 10 * MIN
        }),
        "{c:?}"
    );
    let c = d.observe(12 * MIN, (4.70, -74.08), None, &speed, &p);
    assert!(
        !c.iter().any(|c| matches!(c, Change::Overdue { .. })),
        "{c:?}"
    );
    // A new promise is judged afresh.
    d.apply(&Update {
        promised_by: Some(12 * MIN + 30 * S),
        ..Update::status(Status::InTransit, 12 * MIN)
    });
    let c = d.observe(13 * MIN, (4.70, -74.08), None, &speed, &p);
    assert!(
        c.contains(&Change::Overdue {
            promised_by: 12 * MIN + 30 * S
        }),
        "{c:?}"
    );
}

#[test]
fn a_new_destination_restarts_the_dwell() {
    let p = DeliveryParams::default();
    let mut d = picked_up();
    let speed = moving(40.0);
    d.observe(10 * S, DEST, None, &speed, &p);
    assert!(d.inside_since.is_some());
    d.apply(&Update {
        destination: Some((4.9, -74.08)),
        ..Update::status(Status::InTransit, 20 * S)
    });
    assert_eq!(d.inside_since, None);
    // Staying at the old destination no longer completes it.
    assert!(d.observe(10 * MIN, DEST, None, &speed, &p).is_empty());
    assert_eq!(d.status, Status::Arrived);
}

#[test]
fn state_round_trips_through_serde() {
    let p = DeliveryParams::default();
    let mut d = picked_up();
    d.observe(10 * S, (4.7, -74.08), Some(&route()), &moving(50.0), &p);
    let json = serde_json::to_string(&d).unwrap();
    let back: Delivery = serde_json::from_str(&json).unwrap();
    assert_eq!(d, back);
}
