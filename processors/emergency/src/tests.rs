use fleet_runtime::harness::Harness;
use fleet_schemas::{Decoder, Position};
use fleet_state::{Store, StoreOptions};

use super::*;

const NOTIF_ID: u32 = 11;
const CMD_ID: u32 = 12;

fn emergency(id: &str, vehicle: &str, kind: EmergencyKind, severity: Severity) -> EmergencyEvent {
    EmergencyEvent {
        event_id: id.into(),
        vehicle_id: vehicle.into(),
        event_time: 1_000,
        ingest_time: 1_010,
        sent_time: Some(1_005),
        kind,
        severity,
        position: Some(Position::new(4.6097, -74.0817)),
        description: Some("driver pressed the button".into()),
        source_anomaly_id: None,
        source: "mqtt".into(),
    }
}

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}/s.db", dir.path().display());
    Store::open(&url, StoreOptions::default())
        .await
        .expect("store")
}

type P = Harness<Emergency<Store>>;

fn processor(store: Store) -> P {
    Harness::new(new_processor(store, Table::empty()))
}

fn processor_with(store: Store, profiles: Table<VehicleProfile>) -> P {
    Harness::new(new_processor(store, profiles))
}

fn new_processor(store: Store, profiles: Table<VehicleProfile>) -> Emergency<Store> {
    let cfg = EmergencyConfig {
        notifications_topic: "notif".into(),
        commands_topic: "cmd".into(),
        ..Default::default()
    };
    Emergency::new(
        &cfg,
        store,
        profiles,
        Encoder::with_schema_id(NOTIF_ID),
        Encoder::with_schema_id(CMD_ID),
        &Metrics::new("test"),
    )
}

#[derive(Debug, Default)]
struct Staged {
    notifications: Vec<(String, Notification)>,
    commands: Vec<(String, DeviceCommand)>,
}

async fn feed(p: &mut P, offset: i64, e: EmergencyEvent) -> Staged {
    let input = Input {
        record: e,
        topic: "in",
        partition: 0,
        offset,
        key: None,
        timestamp_ms: None,
    };
    let out = p.process(&input).await.expect("processed");
    let mut staged = Staged::default();
    let nd = Decoder::<Notification>::offline(&[NOTIF_ID]);
    let cd = Decoder::<DeviceCommand>::offline(&[CMD_ID]);
    for (topic, key, payload) in out.iter() {
        let key = String::from_utf8(key.to_vec()).expect("utf8 key");
        match topic {
            "notif" => staged
                .notifications
                .push((key, nd.decode(payload).await.expect("notification"))),
            "cmd" => staged
                .commands
                .push((key, cd.decode(payload).await.expect("command"))),
            other => panic!("unexpected topic {other}"),
        }
    }
    staged
}

#[tokio::test]
async fn a_panic_button_notifies_everyone_and_starts_the_camera() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut p = processor(s.clone());
    let out = feed(
        &mut p,
        5,
        emergency("e-1", "VEH-1", EmergencyKind::PanicButton, Severity::Low),
    )
    .await;
    let recipients: Vec<&str> = out.notifications.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(recipients, ["operations", "owner:VEH-1", "authorities"]);
    for (key, n) in &out.notifications {
        assert_eq!(&n.recipient, key, "keyed by recipient");
        assert_eq!(
            n.severity,
            Severity::High,
            "a panic button is raised to high"
        );
        assert_eq!(n.source_event_id, "e-1");
        assert_eq!(n.source_kind, "emergency.PANIC_BUTTON");
        assert_eq!(
            n.sent_time,
            Some(1_005),
            "device send time carried for latency"
        );
        assert!(n.body.contains("4.60970,-74.08170"), "{}", n.body);
    }
    assert_eq!(out.notifications[0].1.channel, Channel::Log);
    assert_eq!(out.notifications[1].1.channel, Channel::Webhook);
    let ids: std::collections::HashSet<&str> = out
        .notifications
        .iter()
        .map(|(_, n)| n.event_id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "one id per recipient");
    assert_eq!(out.commands.len(), 1);
    let (key, cmd) = &out.commands[0];
    assert_eq!(key, "VEH-1");
    assert_eq!(cmd.command, CommandKind::StartCamera);
    assert_eq!(cmd.params["duration_s"], "300");
    assert!(cmd.expires_at.is_some_and(|t| t > cmd.ingest_time));

    let id = incident_id(&emergency(
        "e-1",
        "VEH-1",
        EmergencyKind::PanicButton,
        Severity::Low,
    ));
    let incident = s.incident(&id).await.unwrap().expect("recorded");
    assert_eq!(
        (
            incident.vehicle_id.as_str(),
            incident.kind.as_str(),
            incident.severity.as_str()
        ),
        ("VEH-1", "PANIC_BUTTON", "HIGH")
    );
    assert_eq!(incident.status, "open");
    assert_eq!(incident.notified_at, None, "not confirmed until committed");
    assert_eq!(s.incidents_for_vehicle("VEH-1", 5).await.unwrap().len(), 1);
    p.commit().await.expect("commit");
    assert!(
        s.incident(&id)
            .await
            .unwrap()
            .unwrap()
            .notified_at
            .is_some()
    );
}

#[tokio::test]
async fn a_committed_emergency_is_never_notified_twice_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut p = processor(s.clone());
    let e = emergency("e-2", "VEH-2", EmergencyKind::Crash, Severity::Critical);
    let first = feed(&mut p, 1, e.clone()).await;
    assert_eq!(first.notifications.len(), 3);
    // The bridge re-sent it (same event_id) before the commit: nothing.
    let again = feed(&mut p, 2, e.clone()).await;
    assert!(again.notifications.is_empty() && again.commands.is_empty());
    p.commit().await.expect("commit");
    // A restarted process, the bridge re-sending it once more: nothing either.
    p.restart(new_processor(s.clone(), Table::empty()));
    let replay = feed(&mut p, 3, e).await;
    assert!(replay.notifications.is_empty() && replay.commands.is_empty());
}

#[tokio::test]
async fn an_uncommitted_emergency_is_replayed_with_the_same_ids() {
    // A crash after the incident was recorded but before its batch committed.
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut p = processor(s.clone());
    let e = emergency(
        "e-3",
        "VEH-3",
        EmergencyKind::PanicButton,
        Severity::Critical,
    );
    let before = feed(&mut p, 7, e.clone()).await;
    p.restart(new_processor(s.clone(), Table::empty()));
    let after = feed(&mut p, 7, e).await;
    let ids = |s: &Staged| -> Vec<String> {
        s.notifications
            .iter()
            .map(|(_, n)| n.event_id.clone())
            .chain(s.commands.iter().map(|(_, c)| c.event_id.clone()))
            .collect()
    };
    assert_eq!(ids(&before), ids(&after));
    assert_eq!(ids(&after).len(), 4);
}

#[tokio::test]
async fn a_medium_report_reaches_the_owner_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = processor(store(&dir).await);
    let out = feed(
        &mut p,
        0,
        emergency("e-4", "VEH-4", EmergencyKind::Other, Severity::Medium),
    )
    .await;
    let recipients: Vec<&str> = out.notifications.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(recipients, ["operations", "owner:VEH-4"]);
    assert!(out.commands.is_empty());
    let low = feed(
        &mut p,
        1,
        emergency("e-5", "VEH-4", EmergencyKind::Other, Severity::Low),
    )
    .await;
    assert_eq!(
        low.notifications.len(),
        1,
        "the dashboard still hears of it"
    );
}

#[tokio::test]
async fn incidents_are_marked_notified_by_the_commit_and_forgotten_after_the_window() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut p = processor(s.clone());
    let e = |id: &'static str| emergency(id, "VEH-5", EmergencyKind::PanicButton, Severity::High);
    let notified = |id: &'static str| {
        let s = s.clone();
        let id = incident_id(&e(id));
        async move {
            s.incident(&id)
                .await
                .unwrap()
                .unwrap()
                .notified_at
                .is_some()
        }
    };
    feed(&mut p, 10, e("a")).await;
    feed(&mut p, 11, e("b")).await;
    p.commit().await.expect("commit");
    feed(&mut p, 12, e("c")).await;
    assert!(notified("a").await && notified("b").await);
    assert!(!notified("c").await, "not committed yet");
    p.commit().await.expect("commit");
    assert!(notified("c").await);
    // Remembered within the window, forgotten after it (the state stays bounded).
    let now = now_ms();
    p.tick(now + 3_600_000).await.expect("tick");
    assert_eq!(p.state("in", 0).map(State::len), Some(3));
    p.tick(now + 8 * 24 * 3_600_000).await.expect("tick");
    assert_eq!(p.state("in", 0).map(State::len), Some(0));
}

#[test]
fn config_levels_are_validated() {
    use fleet_runtime::config::Section;
    assert!(EmergencyConfig::default().validate().is_ok());
    let bad = EmergencyConfig {
        owner_from: "urgent".into(),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
    let bad = EmergencyConfig {
        channel: "pigeon".into(),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}

#[tokio::test]
async fn profile_contacts_replace_the_configured_recipients() {
    use fleet_schemas::{Contact, ContactRole};
    let dir = tempfile::tempdir().expect("tmp");
    let profiles = Table::empty();
    profiles.insert(
        "VEH-7",
        VehicleProfile {
            event_id: "p".into(),
            vehicle_id: "VEH-7".into(),
            updated_at: 0,
            customer_id: None,
            cargo_temp_min_c: None,
            cargo_temp_max_c: None,
            speed_limit_kmh: None,
            offline_after_ms: None,
            route_corridor_m: None,
            route: vec![],
            geofences: vec![],
            contacts: vec![
                Contact {
                    role: ContactRole::Owner,
                    channel: Channel::Email,
                    address: "boss@acme.example".into(),
                },
                Contact {
                    role: ContactRole::Owner,
                    channel: Channel::Sms,
                    address: "+5710000000".into(),
                },
                Contact {
                    role: ContactRole::Authority,
                    channel: Channel::Webhook,
                    address: "https://police.example/hook".into(),
                },
            ],
        },
    );
    let mut p = processor_with(store(&dir).await, profiles);
    let out = feed(
        &mut p,
        1,
        emergency("e-7", "VEH-7", EmergencyKind::Crash, Severity::High),
    )
    .await;
    let got: Vec<(&str, Channel)> = out
        .notifications
        .iter()
        .map(|(k, n)| (k.as_str(), n.channel))
        .collect();
    assert_eq!(
        got,
        [
            ("operations", Channel::Log),
            ("boss@acme.example", Channel::Email),
            ("+5710000000", Channel::Sms),
            ("https://police.example/hook", Channel::Webhook),
        ]
    );
    // A vehicle without a profile still gets the configured recipients.
    let out = feed(
        &mut p,
        2,
        emergency("e-8", "VEH-8", EmergencyKind::Crash, Severity::High),
    )
    .await;
    let got: Vec<&str> = out.notifications.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, ["operations", "owner:VEH-8", "authorities"]);
}

/// A device's `eventId` is unique only per device: the same id from another vehicle (firmware
/// that restarts its counter, or a copied id) is another emergency, never a replay.
#[tokio::test]
async fn the_same_event_id_from_another_vehicle_is_another_incident() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(&dir).await;
    let mut p = processor(s.clone());
    let a = emergency(
        "evt-1",
        "VEH-A",
        EmergencyKind::PanicButton,
        Severity::Critical,
    );
    let first = feed(&mut p, 1, a.clone()).await;
    assert_eq!(first.notifications.len(), 3);
    p.commit().await.expect("commit");
    let b = emergency(
        "evt-1",
        "VEH-B",
        EmergencyKind::PanicButton,
        Severity::Critical,
    );
    let second = feed(&mut p, 2, b.clone()).await;
    assert_eq!(
        second.notifications.len(),
        3,
        "VEH-B's panic is notified although VEH-A used the same eventId"
    );
    assert_eq!(second.commands.len(), 1, "and VEH-B's camera starts");
    assert_eq!(second.commands[0].0, "VEH-B");
    let ids_a: Vec<&str> = first
        .notifications
        .iter()
        .map(|(_, n)| n.event_id.as_str())
        .collect();
    for (_, n) in &second.notifications {
        assert!(
            !ids_a.contains(&n.event_id.as_str()),
            "distinct notification ids"
        );
    }
    assert!(s.incident(&incident_id(&b)).await.unwrap().is_some());
    assert_eq!(s.incidents_for_vehicle("VEH-B", 5).await.unwrap().len(), 1);
    // The same id with another kind on the same vehicle: another emergency too.
    let crash = emergency("evt-1", "VEH-A", EmergencyKind::Crash, Severity::Critical);
    assert_eq!(feed(&mut p, 3, crash).await.notifications.len(), 3);
    // A re-send of VEH-A's panic still is a replay.
    p.commit().await.expect("commit");
    assert!(feed(&mut p, 4, a).await.notifications.is_empty());
}
