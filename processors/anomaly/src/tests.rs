use fleet_runtime::harness::Harness;
use fleet_schemas::{Contact, Decoder, GeofenceCircle, VehicleProfile, Waypoint};

use super::*;

const A_ID: u32 = 21;
const E_ID: u32 = 22;
const N_ID: u32 = 23;
const TOPIC: &str = "fleet.telemetry";

fn reading(vehicle: &str, t: i64, speed: f64, temp: f64) -> TelemetryReading {
    TelemetryReading {
        event_id: ids::derived_id(&[vehicle, &t.to_string()]),
        vehicle_id: vehicle.into(),
        event_time: t,
        ingest_time: t + 5,
        sent_time: Some(t + 1),
        position: Position::new(4.5, -74.0),
        speed_kmh: Some(speed),
        heading_deg: None,
        cargo_temp_c: Some(temp),
        door_open: None,
        ignition_on: Some(true),
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "test".into(),
    }
}

fn config() -> AnomalyConfig {
    AnomalyConfig {
        anomalies_topic: "anom".into(),
        emergencies_topic: "emerg".into(),
        notifications_topic: "notif".into(),
        sustain: Duration::from_secs(10),
        ..Default::default()
    }
}

type P = Harness<AnomalyProcessor>;

fn processor(profiles: Table<ProfileEntry>) -> P {
    processor_with(&config(), profiles)
}

fn processor_with(cfg: &AnomalyConfig, profiles: Table<ProfileEntry>) -> P {
    Harness::new(new_processor(cfg, profiles))
}

fn new_processor(cfg: &AnomalyConfig, profiles: Table<ProfileEntry>) -> AnomalyProcessor {
    AnomalyProcessor::new(
        cfg,
        profiles,
        AnomalyEncoders {
            anomalies: Encoder::with_schema_id(A_ID),
            emergencies: Encoder::with_schema_id(E_ID),
            notifications: Encoder::with_schema_id(N_ID),
        },
        &Metrics::new("test"),
    )
}

/// Vehicles with rule state in `partition`.
fn vehicles(p: &P, partition: i32) -> usize {
    p.state(TOPIC, partition).map_or(0, |s| {
        s.iter()
            .filter(|(_, v)| matches!(v, Slot::Vehicle(_)))
            .count()
    })
}

fn input(partition: i32, offset: i64, r: TelemetryReading) -> Input<'static, TelemetryReading> {
    Input {
        record: r,
        topic: TOPIC,
        partition,
        offset,
        key: None,
        timestamp_ms: None,
    }
}

#[derive(Debug, Default, PartialEq)]
struct Staged {
    anomalies: Vec<Anomaly>,
    emergencies: Vec<EmergencyEvent>,
    notifications: Vec<Notification>,
}

impl Staged {
    fn ids(&self) -> Vec<(AnomalyKind, AnomalyState, String)> {
        self.anomalies
            .iter()
            .map(|a| (a.kind, a.state, a.event_id.clone()))
            .collect()
    }

    /// The records without the emission time (which differs between runs).
    fn normalized(mut self) -> Self {
        for a in &mut self.anomalies {
            a.ingest_time = 0;
        }
        for e in &mut self.emergencies {
            e.ingest_time = 0;
        }
        for n in &mut self.notifications {
            n.ingest_time = 0;
        }
        self
    }
}

async fn decode(out: &Outputs, staged: &mut Staged) {
    let ad = Decoder::<Anomaly>::offline(&[A_ID]);
    let ed = Decoder::<EmergencyEvent>::offline(&[E_ID]);
    let nd = Decoder::<Notification>::offline(&[N_ID]);
    for (topic, key, payload) in out.iter() {
        let key = std::str::from_utf8(key).expect("utf8 key");
        match topic {
            "anom" => {
                let a = ad.decode(payload).await.expect("anomaly");
                assert_eq!(key, a.vehicle_id);
                staged.anomalies.push(a);
            }
            "emerg" => {
                let e = ed.decode(payload).await.expect("emergency");
                assert_eq!(key, e.vehicle_id);
                staged.emergencies.push(e);
            }
            "notif" => {
                let n = nd.decode(payload).await.expect("notification");
                assert_eq!(key, n.recipient);
                staged.notifications.push(n);
            }
            other => panic!("unexpected topic {other}"),
        }
    }
}

async fn feed(p: &mut P, partition: i32, offset: i64, r: TelemetryReading) -> Staged {
    let out = p
        .process(&input(partition, offset, r))
        .await
        .expect("processed");
    let mut staged = Staged::default();
    decode(&out, &mut staged).await;
    staged
}

async fn tick(p: &mut P, now: i64) -> Staged {
    let out = p.tick(now).await.expect("tick");
    let mut staged = Staged::default();
    decode(&out, &mut staged).await;
    staged
}

fn extend(into: &mut Staged, s: Staged) {
    into.anomalies.extend(s.anomalies);
    into.emergencies.extend(s.emergencies);
    into.notifications.extend(s.notifications);
}

#[tokio::test]
async fn overspeed_raises_once_and_clears_with_deterministic_ids() {
    let mut p = processor(Table::empty());
    let mut all = Staged::default();
    for (i, speed) in [80.0, 120.0, 121.0, 122.0, 123.0, 119.0, 70.0]
        .into_iter()
        .enumerate()
    {
        let s = feed(
            &mut p,
            0,
            i as i64,
            reading("VEH-1", 1_000_000 + i as i64 * 5_000, speed, 4.0),
        )
        .await;
        extend(&mut all, s);
    }
    let got: Vec<_> = all
        .anomalies
        .iter()
        .map(|a| (a.kind, a.state, a.event_time))
        .collect();
    assert_eq!(
        got,
        [
            (AnomalyKind::Overspeed, AnomalyState::Raised, 1_015_000),
            (AnomalyKind::Overspeed, AnomalyState::Cleared, 1_030_000),
        ]
    );
    let raised = &all.anomalies[0];
    assert_eq!(raised.severity, Severity::Medium);
    assert_eq!(raised.value, Some(122.0));
    assert_eq!(raised.threshold, Some(90.0));
    assert_eq!(
        raised.sent_time,
        Some(1_015_001),
        "the triggering reading's send time"
    );
    assert_eq!(
        raised.trigger_event_id.as_deref(),
        Some(ids::derived_id(&["VEH-1", "1015000"]).as_str())
    );
    assert!(
        raised.message.contains("speed 122 km/h"),
        "{}",
        raised.message
    );
    assert_ne!(all.anomalies[0].event_id, all.anomalies[1].event_id);
    // Medium is below the default notify level (high); not critical: no emergency.
    assert!(all.notifications.is_empty());
    assert!(all.emergencies.is_empty());
}

#[tokio::test]
async fn an_impact_goes_to_the_fast_lane_and_to_the_owner() {
    let mut p = processor(Table::empty());
    let mut r = reading("VEH-2", 2_000_000, 60.0, 4.0);
    r.accel_mps2 = Some(-32.0);
    let s = feed(&mut p, 1, 0, r).await;
    assert_eq!(
        s.anomalies.len(),
        2,
        "harsh braking and impact: {:?}",
        s.ids()
    );
    let impact = s
        .anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::Impact)
        .expect("impact");
    assert_eq!(impact.severity, Severity::Critical);
    assert_eq!(s.emergencies.len(), 1);
    let e = &s.emergencies[0];
    assert_eq!(e.kind, EmergencyKind::CriticalAnomaly);
    assert_eq!(e.severity, Severity::Critical);
    assert_eq!(
        e.source_anomaly_id.as_deref(),
        Some(impact.event_id.as_str())
    );
    assert_eq!(e.sent_time, Some(2_000_001));
    assert_eq!(e.source, "anomaly-processor");
    let recipients: Vec<_> = s
        .notifications
        .iter()
        .map(|n| (n.recipient.as_str(), n.channel))
        .collect();
    assert_eq!(recipients, [("owner:VEH-2", Channel::Webhook)]);
    assert_eq!(s.notifications[0].source_event_id, impact.event_id);
    assert_eq!(s.notifications[0].source_kind, "anomaly.impact");
}

fn reefer_profile(vehicle: &str) -> VehicleProfile {
    VehicleProfile {
        event_id: "p-1".into(),
        vehicle_id: vehicle.into(),
        updated_at: 0,
        customer_id: Some("acme".into()),
        cargo_temp_min_c: Some(2.0),
        cargo_temp_max_c: Some(8.0),
        speed_limit_kmh: Some(60.0),
        offline_after_ms: Some(60_000),
        route_corridor_m: Some(300.0),
        route: vec![
            Waypoint {
                lat: 4.0,
                lon: -74.0,
            },
            Waypoint {
                lat: 5.0,
                lon: -74.0,
            },
        ],
        geofences: vec![GeofenceCircle {
            id: "depot".into(),
            lat: 4.5,
            lon: -74.0,
            radius_m: 200.0,
            planned_stop: true,
        }],
        contacts: vec![Contact {
            role: ContactRole::Owner,
            channel: Channel::Email,
            address: "ops@acme.example".into(),
        }],
    }
}

#[tokio::test]
async fn the_profile_decides_thresholds_and_recipients() {
    let profiles = Table::empty();
    let cfg = config();
    profiles.insert(
        "VEH-3",
        profile_entry(reefer_profile("VEH-3"), &cfg.thresholds()).expect("valid"),
    );
    let mut p = processor(profiles);
    let mut all = Staged::default();
    // 9.5 °C: inside the default range (-30..30), outside the profile's 2..8.
    for i in 0..4 {
        extend(
            &mut all,
            feed(
                &mut p,
                0,
                i,
                reading("VEH-3", 3_000_000 + i * 5_000, 30.0, 9.5),
            )
            .await,
        );
        extend(
            &mut all,
            feed(
                &mut p,
                0,
                100 + i,
                reading("VEH-9", 3_000_000 + i * 5_000, 30.0, 9.5),
            )
            .await,
        );
    }
    let kinds: Vec<_> = all
        .anomalies
        .iter()
        .map(|a| (a.vehicle_id.as_str(), a.kind, a.state))
        .collect();
    assert_eq!(
        kinds,
        [
            ("VEH-3", AnomalyKind::GeofenceEnter, AnomalyState::Raised),
            ("VEH-3", AnomalyKind::CargoTemperature, AnomalyState::Raised),
        ]
    );
    let n: Vec<_> = all
        .notifications
        .iter()
        .map(|n| (n.recipient.as_str(), n.channel, n.severity))
        .collect();
    assert_eq!(
        n,
        [("ops@acme.example", Channel::Email, Severity::High)],
        "the profile's owner contact"
    );
}

#[tokio::test]
async fn silence_is_judged_on_the_partition_watermark() {
    let mut p = processor(Table::empty());
    let t0 = now_ms();
    feed(&mut p, 0, 0, reading("VEH-QUIET", t0, 30.0, 4.0)).await;
    // Another vehicle keeps the partition's event time moving: 6 minutes later.
    feed(&mut p, 0, 1, reading("VEH-TALKER", t0 + 360_000, 30.0, 4.0)).await;
    let s = tick(&mut p, now_ms()).await;
    let got: Vec<_> = s
        .anomalies
        .iter()
        .map(|a| (a.vehicle_id.as_str(), a.kind, a.state, a.event_time))
        .collect();
    assert_eq!(
        got,
        [(
            "VEH-QUIET",
            AnomalyKind::Offline,
            AnomalyState::Raised,
            t0 + 300_000
        )]
    );
    assert!(
        tick(&mut p, now_ms()).await.anomalies.is_empty(),
        "raised once"
    );
    let back = feed(&mut p, 0, 2, reading("VEH-QUIET", t0 + 400_000, 30.0, 4.0)).await;
    assert_eq!(back.anomalies[0].state, AnomalyState::Cleared);
    assert_eq!(
        back.anomalies[0].event_id,
        anomaly_id(
            "VEH-QUIET",
            &Alert {
                rule: Rule::Offline,
                transition: Transition::Cleared,
                since: t0,
                at: 0,
                level: Level::Medium,
                value: None,
                threshold: None,
                lat: 0.0,
                lon: 0.0,
                subject: String::new(),
            }
        )
    );
}

/// A stream of readings for two vehicles on one partition that raises and clears overspeed and
/// temperature alerts several times.
fn stream() -> Vec<TelemetryReading> {
    (0..120)
        .map(|i| {
            let v = if i % 2 == 0 { "VEH-A" } else { "VEH-B" };
            let t = 5_000_000 + i * 2_500;
            let phase = (i / 16) % 2 == 1;
            let speed = if phase { 130.0 } else { 50.0 };
            let temp = if (i / 24) % 2 == 1 { 45.0 } else { 4.0 };
            reading(v, t, speed, temp)
        })
        .collect()
}

#[tokio::test]
async fn a_restart_from_the_committed_state_neither_loses_nor_repeats_an_alert() {
    let input = stream();
    // The uninterrupted run.
    let mut whole = processor(Table::empty());
    let mut expected = Staged::default();
    for (i, r) in input.iter().enumerate() {
        extend(
            &mut expected,
            feed(&mut whole, 0, i as i64, r.clone()).await,
        );
    }
    assert!(
        expected.anomalies.len() >= 8,
        "the stream exercises the rules: {:?}",
        expected.ids()
    );

    // A run that commits after input 49, keeps going to 79, then crashes.
    let mut p = processor(Table::empty());
    let mut got = Staged::default();
    for (i, r) in input.iter().enumerate().take(50) {
        extend(&mut got, feed(&mut p, 0, i as i64, r.clone()).await);
    }
    p.commit().await.expect("commit");
    let mut lost_with_the_crash = Staged::default();
    for (i, r) in input.iter().enumerate().skip(50).take(30) {
        extend(
            &mut lost_with_the_crash,
            feed(&mut p, 0, i as i64, r.clone()).await,
        );
    }
    assert!(!lost_with_the_crash.anomalies.is_empty());
    // The restart resumes from the committed state and offset (50).
    p.restart(new_processor(&config(), Table::empty()));
    for (i, r) in input.iter().enumerate().skip(50) {
        extend(&mut got, feed(&mut p, 0, i as i64, r.clone()).await);
    }
    assert_eq!(
        got.normalized(),
        expected.normalized(),
        "the same records, ids and order"
    );
}

#[tokio::test]
async fn invalid_positions_are_poison() {
    let mut p = processor(Table::empty());
    let mut r = reading("VEH-1", 1_000, 50.0, 4.0);
    r.position.lat = 123.0;
    let err = p.process(&input(0, 0, r)).await.expect_err("poison");
    assert!(
        matches!(
            err,
            ProcessError::Poison {
                reason: "invalid_position",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn profiles_are_validated() {
    let d = Thresholds::default();
    assert!(profile_entry(reefer_profile("V"), &d).is_ok());
    let mut one_point = reefer_profile("V");
    one_point.route.truncate(1);
    assert!(profile_entry(one_point, &d).unwrap_err().contains("route"));
    let mut empty_range = reefer_profile("V");
    empty_range.cargo_temp_min_c = Some(9.0);
    assert!(
        profile_entry(empty_range, &d)
            .unwrap_err()
            .contains("empty")
    );
    let mut bad_fence = reefer_profile("V");
    bad_fence.geofences[0].radius_m = -1.0;
    assert!(
        profile_entry(bad_fence, &d)
            .unwrap_err()
            .contains("geofence")
    );
    // Unset values keep the defaults.
    let mut sparse = reefer_profile("V");
    sparse.speed_limit_kmh = None;
    sparse.cargo_temp_min_c = None;
    sparse.cargo_temp_max_c = None;
    let e = profile_entry(sparse, &d).expect("valid");
    assert_eq!(e.profile.thresholds.speed_limit_kmh, d.speed_limit_kmh);
    assert_eq!(e.profile.thresholds.cargo_temp_max_c, d.cargo_temp_max_c);
    assert_eq!(e.customer_id.as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_million_invented_vehicle_ids_leave_the_state_bounded() {
    let cfg = AnomalyConfig {
        max_unprofiled_vehicles: 1_000,
        ..config()
    };
    let profiles = Table::empty();
    profiles.insert(
        "VEH-3",
        profile_entry(reefer_profile("VEH-3"), &cfg.thresholds()).expect("valid"),
    );
    let mut p = processor_with(&cfg, profiles);
    let t0 = 7_000_000;
    let mut refused = 0u32;
    for i in 0..1_000_000i64 {
        match p
            .process(&input(
                0,
                i,
                reading(&format!("FAKE-{i}"), t0 + i, 30.0, 4.0),
            ))
            .await
        {
            Ok(_) => {}
            Err(ProcessError::Poison { reason, .. }) => {
                assert_eq!(reason, "vehicle_limit");
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if i % 100_000 == 0 {
            tick(&mut p, now_ms()).await;
            p.commit().await.expect("commit");
        }
    }
    assert_eq!(refused, 999_000);
    // A vehicle with a profile is admitted over the cap.
    feed(
        &mut p,
        0,
        1_000_000,
        reading("VEH-3", t0 + 1_000_000, 30.0, 4.0),
    )
    .await;
    // Known vehicles keep reporting and are not refused.
    feed(
        &mut p,
        0,
        1_000_001,
        reading("FAKE-7", t0 + 1_000_001, 30.0, 4.0),
    )
    .await;
    tick(&mut p, now_ms()).await;
    assert_eq!(vehicles(&p, 0), 1_001);
    let state = p.state(TOPIC, 0).expect("assigned");
    let Some(Slot::Partition(clock)) = state.get(PARTITION_KEY) else {
        panic!("no partition clock");
    };
    assert_eq!(clock.unprofiled, 1_000);
    let checkpoint: usize = state
        .iter()
        .map(|(_, v)| serde_json::to_vec(v).expect("json").len())
        .sum();
    assert!(
        checkpoint < 2_000_000,
        "checkpoint of 1,001 vehicles: {checkpoint} bytes"
    );
}

#[tokio::test]
async fn silent_vehicles_are_reported_offline_then_forgotten() {
    let cfg = AnomalyConfig {
        forget_after: Duration::from_secs(3600),
        max_unprofiled_vehicles: 2,
        ..config()
    };
    let mut p = processor_with(&cfg, Table::empty());
    let t0 = now_ms() - 3 * 3_600_000;
    feed(&mut p, 0, 0, reading("VEH-GONE", t0, 30.0, 4.0)).await;
    feed(&mut p, 0, 1, reading("VEH-TALKER", t0 + 1_000, 30.0, 4.0)).await;
    // The cap is reached: a third unknown vehicle is refused...
    let r = p
        .process(&input(0, 2, reading("VEH-NEW", t0 + 2_000, 30.0, 4.0)))
        .await
        .map(|_| ());
    assert!(
        matches!(
            r,
            Err(ProcessError::Poison {
                reason: "vehicle_limit",
                ..
            })
        ),
        "{r:?}"
    );
    // Two hours later only the talker still reports.
    feed(
        &mut p,
        0,
        3,
        reading("VEH-TALKER", t0 + 7_200_000, 30.0, 4.0),
    )
    .await;
    let s = tick(&mut p, now_ms()).await;
    let got: Vec<_> = s
        .anomalies
        .iter()
        .map(|a| (a.vehicle_id.as_str(), a.kind, a.state))
        .collect();
    assert_eq!(
        got,
        [("VEH-GONE", AnomalyKind::Offline, AnomalyState::Raised)],
        "reported offline in the tick that forgets it"
    );
    assert_eq!(vehicles(&p, 0), 1);
    // The forgotten one made room; when it reports again it starts afresh.
    let back = feed(&mut p, 0, 4, reading("VEH-GONE", t0 + 7_202_000, 30.0, 4.0)).await;
    assert!(back.anomalies.is_empty(), "no state left to clear");
    assert_eq!(vehicles(&p, 0), 2);
}

/// Offline alerts of honest vehicles with a short threshold, when one vehicle of their
/// partition reports with a clock 4 minutes fast, given `max_clock_skew`.
async fn offline_alerts_with_one_fast_clock(max_clock_skew: Duration) -> Vec<String> {
    let cfg = AnomalyConfig {
        offline_after: Duration::from_secs(120),
        max_clock_skew,
        ..config()
    };
    let mut p = processor_with(&cfg, Table::empty());
    let t = now_ms();
    let mut offset = 0;
    for v in ["VEH-H1", "VEH-H2", "VEH-H3"] {
        let mut r = reading(v, t, 50.0, 4.0);
        r.ingest_time = t;
        feed(&mut p, 0, offset, r).await;
        offset += 1;
    }
    // Received now, stamped 4 minutes ahead.
    let mut fast = reading("VEH-FAST", t + 240_000, 50.0, 4.0);
    fast.ingest_time = t;
    feed(&mut p, 0, offset, fast).await;
    let s = tick(&mut p, now_ms()).await;
    s.anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::Offline)
        .map(|a| a.vehicle_id.clone())
        .collect()
}

#[tokio::test]
async fn a_fast_device_clock_raises_no_offline_alert_for_honest_vehicles() {
    assert_eq!(
        offline_alerts_with_one_fast_clock(Duration::from_secs(10)).await,
        Vec::<String>::new(),
        "event time is trusted up to max_clock_skew past its receive time"
    );
    // The defect this guards against: trusting the device clock flaps honest vehicles.
    let mut flapped = offline_alerts_with_one_fast_clock(Duration::from_secs(3600)).await;
    flapped.sort();
    assert_eq!(flapped, ["VEH-H1", "VEH-H2", "VEH-H3"]);
}

#[tokio::test]
async fn a_partition_that_stays_quiet_after_a_restart_still_raises_offline() {
    let t0 = now_ms();
    let mut p = processor(Table::empty());
    feed(&mut p, 0, 0, reading("VEH-QUIET", t0, 30.0, 4.0)).await;
    tick(&mut p, now_ms()).await;
    p.commit().await.expect("commit");
    // The restarted instance gets partition 0 back, which receives nothing more. Its first
    // tick (within a tick interval of the restore) restarts the idle clock; an hour later
    // the vehicle's silence is judged.
    p.restart(new_processor(&config(), Table::empty()));
    assert!(tick(&mut p, now_ms()).await.anomalies.is_empty());
    let later = now_ms() + 3_600_000;
    let got: Vec<_> = tick(&mut p, later)
        .await
        .anomalies
        .iter()
        .map(|a| (a.vehicle_id.clone(), a.kind, a.state))
        .collect();
    assert_eq!(
        got,
        [(
            "VEH-QUIET".to_owned(),
            AnomalyKind::Offline,
            AnomalyState::Raised
        )],
        "judged without waiting for a record of the partition"
    );
    // A partition assigned with no state has nothing to judge.
    p.assign(TOPIC, 1);
    assert!(tick(&mut p, later + 1_000).await.anomalies.is_empty());
    assert_eq!(vehicles(&p, 1), 0);
}

/// The time a process was down is not silence: a restored watermark restarts its idle clock,
/// so the vehicles of a partition are not reported offline because nobody was listening.
#[tokio::test]
async fn downtime_is_not_silence() {
    let t0 = now_ms();
    let mut p = processor(Table::empty());
    feed(&mut p, 0, 0, reading("VEH-1", t0, 30.0, 4.0)).await;
    p.commit().await.expect("commit");
    p.restart(new_processor(&config(), Table::empty()));
    // Back ten minutes later (offline_after is 5 min, idle_timeout 1 min): the first tick
    // restarts the idle clock instead of reading ten minutes of silence.
    let back = now_ms() + 600_000;
    assert!(tick(&mut p, back).await.anomalies.is_empty());
    assert!(tick(&mut p, back + 30_000).await.anomalies.is_empty());
}

#[tokio::test]
async fn vehicle_ids_that_could_name_the_partition_entry_are_poison() {
    let mut p = processor(Table::empty());
    for id in ["", PARTITION_KEY, "\0x"] {
        let err = p
            .process(&input(0, 0, reading(id, 1_000, 30.0, 4.0)))
            .await
            .expect_err("poison");
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
