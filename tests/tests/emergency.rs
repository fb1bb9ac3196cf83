//! The emergency fast lane end to end on the local stack: a panic button pressed on a device
//! (MQTT) -> mqtt-bridge -> `fleet.emergencies` -> emergency-processor -> incident +
//! notifications + `start_camera` -> mqtt-bridge downlink -> the device. Then the processor is
//! killed with SIGKILL and restarted, and the device re-sends the same panic: no second
//! incident, no second round of notifications. And exactly once: a stream of emergencies
//! through a processor SIGKILLed three times reaches a `read_committed` reader as exactly one
//! notification per recipient and one camera command per emergency.
#![cfg(feature = "stack")]

use std::time::Duration;

use fleet_e2e::mqtt::{Auth, Device};
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{BridgeRun, Proc, credentials, fast_rejoin, mqtt_port, wait_progress, wait_ready};
use fleet_schemas::{
    Decoder, DeviceCommand, EmergencyEvent, EmergencyKind, Encoder, Notification, Position,
    Registry, Severity,
};
use fleet_state::{StateStore, Store, StoreOptions};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn notifications(tail: &TopicTail) -> Vec<Notification> {
    let dec =
        Decoder::<Notification>::new(Registry::new(&testkit::registry_url()).expect("registry"));
    let mut v = Vec::new();
    for r in tail.snapshot() {
        v.push(dec.decode(&r.payload).await.expect("notification"));
    }
    v
}

#[tokio::test]
async fn a_panic_button_reaches_people_and_the_camera_once() {
    let run = BridgeRun::new(2).await;
    let prefix = run.prefix.clone();
    let (emergencies, commands) = (run.emergencies.clone(), run.commands.clone());
    let notif = testkit::random_name("e2e.fast.notif");
    testkit::create_topic(&notif, 2).await;
    let creds = credentials();
    let bridge_env = run.env(&testkit::random_name("bridge-fast"));
    let dir = std::env::temp_dir().join(testkit::random_name("fast-state"));
    std::fs::create_dir_all(&dir).expect("state dir");
    let state_url = format!("sqlite://{}/state.db", dir.display());
    let mut proc_env = fast_rejoin();
    proc_env.extend([
        ("FLEET__KAFKA__CREATE_TOPICS", "false".to_owned()),
        ("FLEET__RUNNER__DLQ_TOPIC", run.dlq.clone()),
        ("FLEET_STATE_URL", state_url.clone()),
        ("FLEET__APP__INPUT_TOPIC", emergencies.clone()),
        ("FLEET__APP__NOTIFICATIONS_TOPIC", notif.clone()),
        ("FLEET__APP__COMMANDS_TOPIC", commands.clone()),
        ("FLEET__KAFKA__GROUP_ID", format!("{emergencies}-proc")),
    ]);
    let bridge = Proc::start("mqtt-bridge", &bridge_env);
    let processor = Proc::start("emergency-processor", &proc_env);
    assert!(wait_ready(&bridge).await, "bridge ready");
    assert!(wait_ready(&processor).await, "processor ready");

    let notif_tail = TopicTail::start(&notif);
    let emg_tail = TopicTail::start(&emergencies);
    let device = Device::connect(
        &testkit::random_name("sim-fast"),
        mqtt_port(),
        Auth::Password(
            creds["FLEET_MQTT_SIMULATOR_USER"].clone(),
            creds["FLEET_MQTT_SIMULATOR_PASSWORD"].clone(),
        ),
    );
    assert!(device.connected(Duration::from_secs(10)).await);
    device.subscribe(&format!("{prefix}/+/commands")).await;
    let sent = now_ms();
    let panic = format!(
        r#"{{"vehicleId":"VEH-F1","type":"panic_button","severity":"critical","location":{{"lat":4.6097,"lon":-74.0817}},"timestamp":{sent},"sentAt":{sent}}}"#
    );
    device
        .publish(&format!("{prefix}/VEH-F1/emergency"), panic.clone())
        .await;

    assert_eq!(notif_tail.wait_for(3, Duration::from_secs(30)).await, 3);
    let got = notifications(&notif_tail).await;
    let mut recipients: Vec<&str> = got.iter().map(|n| n.recipient.as_str()).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, ["authorities", "operations", "owner:VEH-F1"]);
    assert!(
        got.iter()
            .all(|n| n.severity == Severity::Critical && n.sent_time == Some(sent))
    );
    // The camera command travelled back down to the vehicle over MQTT.
    for _ in 0..100 {
        if !device.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cmds = device.received();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0].0, format!("{prefix}/VEH-F1/commands"));
    let body: serde_json::Value = serde_json::from_slice(&cmds[0].1).expect("JSON");
    assert_eq!(body["command"], "start_camera");
    // The tail of the emergencies topic may see the record after the notifications arrived.
    assert!(emg_tail.wait_for(1, Duration::from_secs(30)).await >= 1);
    let emergency = {
        let dec = Decoder::<EmergencyEvent>::new(
            Registry::new(&testkit::registry_url()).expect("registry"),
        );
        dec.decode(&emg_tail.snapshot()[0].payload)
            .await
            .expect("emergency")
    };
    assert!(got.iter().all(|n| n.source_event_id == emergency.event_id));
    let incident_id = fleet_emergency::incident_id(&emergency);

    // Kill the processor, restart it, and let the device send the very same panic again.
    tokio::time::sleep(Duration::from_secs(2)).await; // offsets auto-committed
    processor.kill9();
    tokio::time::sleep(Duration::from_secs(7)).await; // the killed member's session ends
    let processor = Proc::start("emergency-processor", &proc_env);
    assert!(wait_ready(&processor).await, "processor ready again");
    device
        .publish(&format!("{prefix}/VEH-F1/emergency"), panic)
        .await;
    assert_eq!(
        emg_tail.wait_for(2, Duration::from_secs(20)).await,
        2,
        "the bridge forwarded the re-send"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(notif_tail.len(), 3, "no second round of notifications");
    assert_eq!(device.received().len(), 1, "no second camera command");
    drop(processor);
    let store = Store::open(&state_url, StoreOptions::default())
        .await
        .expect("state store");
    let incidents = store
        .incidents_for_vehicle("VEH-F1", 10)
        .await
        .expect("incidents");
    assert_eq!(incidents.len(), 1, "one incident");
    assert_eq!(incidents[0].incident_id, incident_id);
    assert!(incidents[0].notified_at.is_some());
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_killed_fast_lane_notifies_each_emergency_once() {
    const N: usize = 900;
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let input = testkit::random_name("e2e.eos.emerg");
    let notif = testkit::random_name("e2e.eos.notif");
    let commands = testkit::random_name("e2e.eos.cmd");
    let profiles = testkit::random_name("e2e.eos.profiles");
    let dlq = testkit::random_name("e2e.eos.dlq");
    for (t, n) in [
        (&input, 3),
        (&notif, 2),
        (&commands, 2),
        (&profiles, 1),
        (&dlq, 1),
    ] {
        testkit::create_topic(t, n).await;
    }
    let dir = std::env::temp_dir().join(testkit::random_name("eos-fast-state"));
    std::fs::create_dir_all(&dir).expect("state dir");
    let mut env = fast_rejoin();
    env.extend([
        ("FLEET__KAFKA__CREATE_TOPICS", "false".to_owned()),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
        (
            "FLEET_STATE_URL",
            format!("sqlite://{}/state.db", dir.display()),
        ),
        ("FLEET__APP__INPUT_TOPIC", input.clone()),
        ("FLEET__APP__NOTIFICATIONS_TOPIC", notif.clone()),
        ("FLEET__APP__COMMANDS_TOPIC", commands.clone()),
        ("FLEET__APP__PROFILES_TOPIC", profiles.clone()),
        ("FLEET__KAFKA__GROUP_ID", format!("{input}-proc")),
        (
            "FLEET__RUNNER__PROCESSING_GUARANTEE",
            "exactly_once".to_owned(),
        ),
    ]);
    let enc = Encoder::<EmergencyEvent>::register(&registry, &input)
        .await
        .expect("schema");
    let base = now_ms();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..N)
        .map(|i| {
            let e = EmergencyEvent {
                event_id: format!("eos-{i}"),
                vehicle_id: format!("VEH-E{i:04}"),
                event_time: base + i as i64,
                ingest_time: base + i as i64,
                sent_time: Some(base + i as i64),
                kind: EmergencyKind::PanicButton,
                severity: Severity::Critical,
                position: Some(Position::new(4.6, -74.1)),
                description: None,
                source_anomaly_id: None,
                source: "e2e".into(),
            };
            (
                e.vehicle_id.clone().into_bytes(),
                enc.encode(&e).expect("encode"),
            )
        })
        .collect();
    let notif_tail = TopicTail::start(&notif);
    let cmd_tail = TopicTail::start(&commands);
    // ~22 s of input; the processor is killed three times meanwhile.
    let producer = {
        let (topic, records) = (input.clone(), records.clone());
        tokio::spawn(async move { testkit::populate_topic_paced(&topic, &records, 40).await })
    };
    for round in 0..3u64 {
        let p = Proc::start("emergency-processor", &env);
        assert!(wait_progress(&p).await, "round {round}: no progress");
        tokio::time::sleep(Duration::from_millis(700 + round * 400)).await;
        p.kill9();
    }
    let p = Proc::start("emergency-processor", &env);
    producer.await.expect("producer");
    assert_eq!(
        notif_tail.wait_for(3 * N, Duration::from_secs(90)).await,
        3 * N
    );
    assert_eq!(cmd_tail.wait_for(N, Duration::from_secs(30)).await, N);
    // Anything a zombie or a replay would add arrives by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = notifications(&notif_tail).await;
    let ids: std::collections::HashSet<&str> = got.iter().map(|n| n.event_id.as_str()).collect();
    assert_eq!(got.len(), 3 * N, "three recipients per emergency, no copy");
    assert_eq!(ids.len(), 3 * N, "distinct notification ids");
    let cdec = Decoder::<DeviceCommand>::new(registry.clone());
    let mut vehicles = std::collections::HashSet::new();
    for r in cmd_tail.snapshot() {
        let c = cdec.decode(&r.payload).await.expect("command");
        assert!(
            vehicles.insert(c.vehicle_id),
            "one camera command per vehicle"
        );
    }
    assert_eq!(vehicles.len(), N);
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
