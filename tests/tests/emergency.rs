//! The emergency fast lane end to end on the local stack: a panic button pressed on a device
//! (MQTT) -> mqtt-bridge -> `fleet.emergencies` -> emergency-processor -> incident +
//! notifications + `start_camera` -> mqtt-bridge downlink -> the device. Then the processor is
//! killed with SIGKILL and restarted, and the device re-sends the same panic: no second
//! incident, no second round of notifications.
#![cfg(feature = "stack")]

use std::time::Duration;

use fleet_e2e::mqtt::{Auth, Device};
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{BridgeRun, Proc, credentials, fast_rejoin, mqtt_port, wait_ready};
use fleet_schemas::{Decoder, EmergencyEvent, Notification, Registry, Severity};
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
