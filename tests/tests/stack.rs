//! The local stack does what ARCHITECTURE.md promises: MQTT needs credentials and enforces the
//! per-vehicle ACL, the S3 API and the registry answer. Uses the real clients (mosquitto_pub /
//! mosquitto_sub, HTTP).
#![cfg(feature = "stack")]

use std::process::{Command, Output, Stdio};

use fleet_e2e::credentials;

fn mqtt_port() -> String {
    fleet_e2e::mqtt_port().to_string()
}

/// `mosquitto_pub` or `mosquitto_sub` against the local broker at QoS 1 as `user`.
fn mqtt(bin: &str, user: &str, password: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt_port(),
        "-q",
        "1",
        "-u",
        user,
        "-P",
        password,
    ]);
    cmd
}

fn publish(user: &str, password: &str, topic: &str, msg: &str) -> Output {
    mqtt("mosquitto_pub", user, password)
        .args(["-t", topic, "-m", msg])
        .output()
        .expect("mosquitto_pub installed by scripts/stack.sh")
}

/// Subscribes as `user` and collects what arrives within `secs`.
fn subscribe(user: &str, password: &str, topic: &str, secs: u32) -> std::process::Child {
    mqtt("mosquitto_sub", user, password)
        .args(["-t", topic, "-v", "-W", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

#[test]
fn mqtt_requires_credentials_and_enforces_the_per_vehicle_acl() {
    let creds = credentials();
    let device_pw = &creds["FLEET_MQTT_DEVICE_PASSWORD"];
    let sub = subscribe(
        &creds["FLEET_MQTT_BRIDGE_USER"],
        &creds["FLEET_MQTT_BRIDGE_PASSWORD"],
        "vehicle/+/telemetry",
        4,
    );
    std::thread::sleep(std::time::Duration::from_millis(700));

    // A vehicle publishes under its own id: delivered.
    let own = publish(
        "VEH-TEST-001",
        device_pw,
        "vehicle/VEH-TEST-001/telemetry",
        "own-1",
    );
    assert!(own.status.success(), "{own:?}");
    // The same vehicle speaking for another one: dropped by the ACL (MQTT 3.1.1 has no way to
    // tell the publisher, so only the subscriber's view below can show it).
    let _ = publish(
        "VEH-TEST-001",
        device_pw,
        "vehicle/VEH-TEST-002/telemetry",
        "forged-1",
    );
    // Wrong password and anonymous: refused at connect.
    let wrong = publish(
        "VEH-TEST-001",
        "not-the-password",
        "vehicle/VEH-TEST-001/telemetry",
        "x",
    );
    assert!(!wrong.status.success(), "a wrong password must be refused");
    let anon = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port(),
            "-t",
            "vehicle/VEH-TEST-001/telemetry",
            "-m",
            "x",
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(!anon.status.success(), "anonymous clients must be refused");

    let out = sub.wait_with_output().expect("subscriber");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("vehicle/VEH-TEST-001/telemetry own-1"),
        "got: {seen}"
    );
    assert!(
        !seen.contains("forged-1"),
        "a vehicle must not publish for another: {seen}"
    );
    assert!(
        !seen.contains(" x"),
        "refused clients delivered nothing: {seen}"
    );
}

#[test]
fn a_vehicle_reads_only_its_own_commands() {
    let creds = credentials();
    let device_pw = creds["FLEET_MQTT_DEVICE_PASSWORD"].clone();
    let spy = subscribe("VEH-TEST-003", &device_pw, "vehicle/+/commands/#", 3);
    std::thread::sleep(std::time::Duration::from_millis(700));
    for v in ["VEH-TEST-003", "VEH-TEST-004"] {
        let o = publish(
            &creds["FLEET_MQTT_BRIDGE_USER"],
            &creds["FLEET_MQTT_BRIDGE_PASSWORD"],
            &format!("vehicle/{v}/commands/camera"),
            &format!("start-{v}"),
        );
        assert!(o.status.success(), "{o:?}");
    }
    let out = spy.wait_with_output().expect("spy");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("start-VEH-TEST-003"),
        "own command delivered: {seen}"
    );
    assert!(
        !seen.contains("start-VEH-TEST-004"),
        "another vehicle's command must not be readable: {seen}"
    );
}

#[tokio::test]
async fn s3_and_registry_answer() {
    let s3 = std::env::var("FLEET_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    // Unsigned requests are refused by a real S3 API (403), not ignored.
    let resp = reqwest::get(format!("{s3}/fleet-lake/"))
        .await
        .expect("s3s-fs answers");
    assert_eq!(resp.status().as_u16(), 403);
    let reg = fleet_e2e::testkit::registry_url();
    let types: Vec<String> = reqwest::get(format!("{reg}/schemas/types"))
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("json");
    assert_eq!(types, vec!["AVRO".to_string()]);
}
