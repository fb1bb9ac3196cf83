//! mqtt-bridge against the local stack (mosquitto + Apache Kafka + registry): routing and validation,
//! no loss under SIGKILL, shared subscriptions across two instances (MQTT 5 and 3.1.1),
//! per-vehicle identity (ACL, TLS client certificates, and the bridge's own check behind a
//! misconfigured broker), and the command downlink.
//!
//! Tests publish as the stack's `fleet-simulator` user under their own `test/{run}` prefix, so
//! that bridges of tests running in parallel never see each other's messages; the identity
//! tests use the real `vehicle/` prefix and per-vehicle credentials.
#![cfg(feature = "stack")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use fleet_e2e::mqtt::{Auth, Device};
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{
    BridgeRun as Run, Proc, credentials, decode_all, free_port, mqtt_port, mqtt_tls_port,
    reading_json, state_dir, wait_ready,
};
use fleet_schemas::{
    CommandKind, DeadLetter, DeliveryEvent, DeviceCommand, EmergencyEvent, EmergencyKind, Encoder,
    Registry, Severity, TelemetryReading,
};

const BIN: &str = "mqtt-bridge";

fn simulator(name: &str) -> Device {
    let creds = credentials();
    Device::connect(
        &testkit::random_name(name),
        mqtt_port(),
        Auth::Password(
            creds["FLEET_MQTT_SIMULATOR_USER"].clone(),
            creds["FLEET_MQTT_SIMULATOR_PASSWORD"].clone(),
        ),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn metric(text: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn routes_validates_and_dead_letters() {
    let run = Run::new(2).await;
    let bridge = Proc::start(BIN, &run.env(&testkit::random_name("bridge")));
    assert!(wait_ready(&bridge).await, "bridge ready");
    let (tel, emg, dlv, dlq) = (
        TopicTail::start(&run.telemetry),
        TopicTail::start(&run.emergencies),
        TopicTail::start(&run.deliveries),
        TopicTail::start(&run.dlq),
    );
    let dev = simulator("sim-route");
    assert!(dev.connected(Duration::from_secs(10)).await);
    let before = now_ms();
    let good = reading_json("VEH-R1", 1, before);
    dev.publish(&run.topic("VEH-R1", "telemetry"), good.clone())
        .await;
    let panic = format!(
        r#"{{"vehicleId":"VEH-R1","type":"panic_button","severity":"critical","location":{{"lat":4.6,"lon":-74.08}},"timestamp":{before}}}"#
    );
    dev.publish(&run.topic("VEH-R1", "emergency"), panic).await;
    let delivery = format!(
        r#"{{"deliveryId":"D-77","vehicleId":"VEH-R1","status":"delivered","timestamp":{before}}}"#
    );
    dev.publish(&run.topic("VEH-R1", "delivery"), delivery)
        .await;
    // Rejected: not JSON, another vehicle's id, coordinates out of range.
    let bad: [(&str, String, &str); 3] = [
        ("VEH-R1", "{not json".to_owned(), "invalid_json"),
        (
            "VEH-R2",
            reading_json("VEH-R1", 2, before),
            "vehicle_id_mismatch",
        ),
        ("VEH-R1", good.replace("4.6097", "95.5"), "invalid_position"),
    ];
    for (v, payload, _) in &bad {
        dev.publish(&run.topic(v, "telemetry"), payload.clone())
            .await;
    }
    assert_eq!(dev.wait_acked(6, Duration::from_secs(10)).await, 6);
    assert_eq!(tel.wait_for(1, Duration::from_secs(20)).await, 1);
    assert_eq!(emg.wait_for(1, Duration::from_secs(10)).await, 1);
    assert_eq!(dlv.wait_for(1, Duration::from_secs(10)).await, 1);
    assert_eq!(dlq.wait_for(3, Duration::from_secs(10)).await, 3);
    let after = now_ms();

    let t = &decode_all::<TelemetryReading>(&tel.snapshot()).await[0];
    assert_eq!(tel.snapshot()[0].key.as_deref(), Some(&b"VEH-R1"[..]));
    assert_eq!(t.vehicle_id, "VEH-R1");
    assert_eq!(t.event_time, before);
    assert_eq!(t.sent_time, Some(before));
    assert!(
        (before..=after).contains(&t.ingest_time),
        "ingest_time stamped"
    );
    assert_eq!(t.source, "mqtt");
    assert_eq!(t.odometer_km, Some(1.0));

    let e = &decode_all::<EmergencyEvent>(&emg.snapshot()).await[0];
    assert_eq!(
        (e.kind, e.severity),
        (EmergencyKind::PanicButton, Severity::Critical)
    );
    assert_eq!(emg.snapshot()[0].key.as_deref(), Some(&b"VEH-R1"[..]));

    let d = &decode_all::<DeliveryEvent>(&dlv.snapshot()).await[0];
    assert_eq!(d.delivery_id, "D-77");
    assert_eq!(
        dlv.snapshot()[0].key.as_deref(),
        Some(&b"D-77"[..]),
        "deliveries keyed by delivery id"
    );

    let dead = decode_all::<DeadLetter>(&dlq.snapshot()).await;
    let by_reason: HashMap<&str, &DeadLetter> =
        dead.iter().map(|d| (d.reason.as_str(), d)).collect();
    for (v, payload, reason) in &bad {
        let d = by_reason
            .get(reason)
            .unwrap_or_else(|| panic!("a {reason} dead letter in {dead:?}"));
        assert_eq!(
            d.original.as_deref(),
            Some(payload.as_bytes()),
            "original bytes kept"
        );
        assert_eq!(d.source_topic, run.topic(v, "telemetry"));
        assert_eq!(d.source_system, "mqtt");
        assert_eq!(d.component, "mqtt-bridge");
        assert!(!d.detail.is_empty());
    }
    let (_, m) = bridge.get("/metrics").await.expect("metrics");
    for (_, _, reason) in &bad {
        assert_eq!(
            metric(
                &m,
                &format!(
                    "fleet_processor_dead_letters_total{{component=\"mqtt-bridge\",reason=\"{reason}\"}}"
                )
            ),
            1.0,
            "{reason} counted"
        );
    }
    assert!(m.contains("fleet_stage_latency_seconds_count{component=\"mqtt-bridge\",stage=\"mqtt_to_kafka_ack\"} 6"), "{m}");
    let mut bridge = bridge;
    assert!(bridge.alive(), "bad input never stops the bridge");
    let status = bridge.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {status:?}"
    );
}

/// Payloads far above the bridge's 64 KiB limit (200 kB and 1 MiB, QoS 1), then a good
/// reading. On MQTT 3.1.1 a packet above the client's read limit used to fail the connection
/// and come back first after every reconnect (the session wedged); on MQTT 5 the broker dropped
/// it unseen. Both are now read, dead-lettered (`payload_too_large`, size and digest, first
/// 256 KiB) and acknowledged, and the reading behind them is forwarded.
#[tokio::test]
async fn oversized_messages_are_dead_lettered_and_never_block_the_session() {
    for protocol in ["v3.1.1", "v5"] {
        let run = Run::new(1).await;
        let mut env = run.env(&testkit::random_name("bridge-big"));
        env.push(("FLEET__APP__PROTOCOL", protocol.into()));
        env.push(("FLEET__APP__DOWNLINK", "false".into()));
        let bridge = Proc::start(BIN, &env);
        assert!(wait_ready(&bridge).await, "{protocol}: bridge ready");
        let (tel, dlq) = (TopicTail::start(&run.telemetry), TopicTail::start(&run.dlq));
        let dev = simulator("sim-big");
        assert!(dev.connected(Duration::from_secs(10)).await);
        let sizes = [200_000_usize, 1 << 20];
        for n in sizes {
            let mut big = br#"{"vehicleId":"VEH-BIG","pad":""#.to_vec();
            big.resize(n - 2, b'x');
            big.extend_from_slice(b"\"}");
            dev.publish(&run.topic("VEH-BIG", "telemetry"), big).await;
        }
        dev.publish(
            &run.topic("VEH-BIG", "telemetry"),
            reading_json("VEH-BIG", 1, now_ms()),
        )
        .await;
        assert_eq!(dev.wait_acked(3, Duration::from_secs(20)).await, 3);
        assert_eq!(
            tel.wait_for(1, Duration::from_secs(30)).await,
            1,
            "{protocol}: the reading behind the oversized messages is forwarded"
        );
        assert_eq!(
            dlq.wait_for(2, Duration::from_secs(10)).await,
            2,
            "{protocol}"
        );
        let mut dead = decode_all::<DeadLetter>(&dlq.snapshot()).await;
        dead.sort_by_key(|d| d.original_size);
        for (d, n) in dead.iter().zip(sizes) {
            assert_eq!(d.reason, "payload_too_large", "{protocol}");
            assert_eq!(d.original_size, Some(n as i64), "{protocol}");
            assert!(d.original_sha256.is_some(), "{protocol}");
            assert!(
                d.original.as_ref().is_some_and(|o| o.len() <= 256 * 1024),
                "{protocol}: the dead letter fits"
            );
        }
        let mut bridge = bridge;
        assert!(bridge.alive(), "{protocol}");
        assert!(
            bridge
                .terminate(Duration::from_secs(20))
                .is_some_and(|s| s.success())
        );
    }
}

/// Publishes `n` numbered readings for `vehicles` vehicles as fast as the broker takes them.
async fn publish_numbered(dev: &Device, run: &Run, n: usize, vehicles: usize, per_sec: usize) {
    let start = std::time::Instant::now();
    let ts = now_ms();
    for i in 0..n {
        let v = format!("VEH-K{:03}", i % vehicles);
        dev.publish(&run.topic(&v, "telemetry"), reading_json(&v, i, ts))
            .await;
        if i % 100 == 99 {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / per_sec as f64);
            let now = std::time::Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
    }
}

/// Distinct sequence numbers (odometer) and the number of records.
async fn sequences(tail: &TopicTail) -> (HashSet<i64>, usize, HashSet<String>) {
    let recs = decode_all::<TelemetryReading>(&tail.snapshot()).await;
    let seqs = recs
        .iter()
        .filter_map(|r| r.odometer_km)
        .map(|o| o as i64)
        .collect();
    let ids = recs.iter().map(|r| r.event_id.clone()).collect();
    (seqs, recs.len(), ids)
}

#[tokio::test]
async fn nothing_is_lost_when_the_bridge_is_killed() {
    const N: usize = 24_000;
    let run = Run::new(4).await;
    let client_id = testkit::random_name("bridge-kill");
    let env = run.env(&client_id);
    let mut bridge = Proc::start(BIN, &env);
    assert!(wait_ready(&bridge).await, "bridge ready");
    let tail = TopicTail::start(&run.telemetry);
    let dev = simulator("sim-kill");
    assert!(dev.connected(Duration::from_secs(10)).await);
    let publisher = async {
        publish_numbered(&dev, &run, N, 200, 4_000).await;
        dev.wait_acked(N, Duration::from_secs(60)).await
    };
    let killer = async {
        for round in 0..3 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let seen = tail.len();
            bridge.kill9_in_place();
            eprintln!("round {round}: killed the bridge with {seen} records in Kafka");
            // Down for a moment: the broker queues for the persistent session.
            tokio::time::sleep(Duration::from_millis(400)).await;
            bridge = Proc::start(BIN, &env);
        }
        bridge
    };
    let (acked, bridge) = tokio::join!(publisher, killer);
    assert_eq!(acked, N, "the broker acknowledged every publish");
    tail.wait_for(N, Duration::from_secs(90)).await;
    // Give redeliveries a moment to land, then compare.
    let mut last = 0;
    for _ in 0..60 {
        let (seqs, _, _) = sequences(&tail).await;
        if seqs.len() == N && seqs.len() == last {
            break;
        }
        last = seqs.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (seqs, total, ids) = sequences(&tail).await;
    let missing: Vec<i64> = (0..N as i64)
        .filter(|s| !seqs.contains(s))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "lost messages, e.g. {missing:?} ({} of {N} present)",
        seqs.len()
    );
    assert_eq!(
        ids.len(),
        N,
        "one event_id per message: duplicates carry the same id"
    );
    eprintln!(
        "all {N} messages in Kafka after 3 SIGKILLs; {} duplicates ({:.2}%)",
        total - N,
        (total - N) as f64 * 100.0 / N as f64
    );
    drop(bridge);
}

#[tokio::test]
async fn two_instances_split_a_shared_subscription() {
    const N: usize = 4_000;
    let run = Run::new(2).await;
    let group = testkit::random_name("g").replace('.', "");
    let mut a_env = run.env(&testkit::random_name("bridge-a"));
    a_env.push(("FLEET__APP__SHARED_GROUP", group.clone()));
    let mut b_env = run.env(&testkit::random_name("bridge-b"));
    b_env.push(("FLEET__APP__SHARED_GROUP", group));
    // One instance speaks MQTT 5, the other MQTT 3.1.1: both protocols are exercised.
    b_env.push(("FLEET__APP__PROTOCOL", "v3.1.1".into()));
    b_env.push(("FLEET__APP__DOWNLINK", "false".into()));
    let a = Proc::start(BIN, &a_env);
    let b = Proc::start(BIN, &b_env);
    assert!(wait_ready(&a).await && wait_ready(&b).await, "both ready");
    let tail = TopicTail::start(&run.telemetry);
    let dev = simulator("sim-share");
    assert!(dev.connected(Duration::from_secs(10)).await);
    publish_numbered(&dev, &run, N, 50, 4_000).await;
    assert_eq!(dev.wait_acked(N, Duration::from_secs(30)).await, N);
    assert_eq!(tail.wait_for(N, Duration::from_secs(30)).await, N);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (seqs, total, _) = sequences(&tail).await;
    assert_eq!(seqs.len(), N, "every message forwarded");
    assert_eq!(total, N, "each message forwarded by exactly one instance");
    let ok = |m: &str| {
        metric(
            m,
            &format!(
                "fleet_processor_records_total{{component=\"mqtt-bridge\",topic=\"{}\",outcome=\"ok\"}}",
                run.telemetry
            ),
        )
    };
    let (_, ma) = a.get("/metrics").await.expect("metrics a");
    let (_, mb) = b.get("/metrics").await.expect("metrics b");
    let (fa, fb) = (ok(&ma), ok(&mb));
    eprintln!("instance a (v5) forwarded {fa}, instance b (v3.1.1) forwarded {fb}");
    assert_eq!(fa + fb, N as f64);
    assert!(
        fa > N as f64 * 0.2 && fb > N as f64 * 0.2,
        "load split: {fa} / {fb}"
    );
}

fn cert_auth(name: &str) -> Auth {
    let dir = state_dir().join("mqtt/certs");
    Auth::Certificate {
        ca: std::fs::read(dir.join("ca.crt")).expect("dev CA (scripts/dev-certs.sh)"),
        pkcs12: std::fs::read(dir.join(format!("{name}.p12"))).expect("client certificate"),
        password: "fleet".into(),
    }
}

#[tokio::test]
async fn vehicles_are_who_their_credentials_say() {
    let run = Run::new(1).await;
    // A bridge on the real `vehicle/` prefix, itself connected over TLS with its certificate.
    let certs = state_dir().join("mqtt/certs");
    let mut env = run.env(&testkit::random_name("bridge-tls"));
    env.retain(|(k, _)| *k != "FLEET__APP__TOPIC_PREFIX" && *k != "FLEET_MQTT_URL");
    env.extend([
        (
            "FLEET_MQTT_URL",
            format!("mqtts://127.0.0.1:{}", mqtt_tls_port()),
        ),
        (
            "FLEET__APP__TLS_CA_FILE",
            certs.join("ca.crt").display().to_string(),
        ),
        (
            "FLEET__APP__TLS_CLIENT_PKCS12",
            certs.join("fleet-bridge.p12").display().to_string(),
        ),
        ("FLEET__APP__TLS_CLIENT_PKCS12_PASSWORD", "fleet".into()),
        ("FLEET__APP__DOWNLINK", "false".into()),
    ]);
    let bridge = Proc::start(BIN, &env);
    assert!(wait_ready(&bridge).await, "bridge ready over TLS");
    let tail = TopicTail::start(&run.telemetry);
    let marker = now_ms();

    // Password device: its own topic passes, another vehicle's topic is refused by the ACL.
    let creds = credentials();
    let pw = Device::connect(
        &testkit::random_name("veh5"),
        mqtt_port(),
        Auth::Password(
            "VEH-TEST-005".into(),
            creds["FLEET_MQTT_DEVICE_PASSWORD"].clone(),
        ),
    );
    assert!(pw.connected(Duration::from_secs(10)).await);
    pw.publish(
        "vehicle/VEH-TEST-005/telemetry",
        reading_json("VEH-TEST-005", 1, marker),
    )
    .await;
    pw.publish(
        "vehicle/VEH-TEST-006/telemetry",
        reading_json("VEH-TEST-006", 2, marker),
    )
    .await;
    // Certificate device (CN = VEH-TEST-007): same rules.
    let tls = Device::connect(
        &testkit::random_name("veh7"),
        mqtt_tls_port(),
        cert_auth("VEH-TEST-007"),
    );
    assert!(
        tls.connected(Duration::from_secs(10)).await,
        "certificate accepted: {:?}",
        tls.errors()
    );
    tls.publish(
        "vehicle/VEH-TEST-007/telemetry",
        reading_json("VEH-TEST-007", 3, marker),
    )
    .await;
    tls.publish(
        "vehicle/VEH-TEST-008/telemetry",
        reading_json("VEH-TEST-008", 4, marker),
    )
    .await;
    // No credentials at all: refused on both listeners.
    let anon = Device::connect(&testkit::random_name("anon"), mqtt_port(), Auth::Anonymous);
    assert!(
        !anon.connected(Duration::from_secs(2)).await,
        "anonymous refused"
    );
    let no_cert = Device::connect(
        &testkit::random_name("nocert"),
        mqtt_tls_port(),
        Auth::Password(
            "VEH-TEST-009".into(),
            creds["FLEET_MQTT_DEVICE_PASSWORD"].clone(),
        ),
    );
    assert!(
        !no_cert.connected(Duration::from_secs(2)).await,
        "TLS listener needs a certificate"
    );

    pw.wait_acked(2, Duration::from_secs(10)).await;
    tls.wait_acked(2, Duration::from_secs(10)).await;
    tail.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mine: BTreeMap<String, f64> = decode_all::<TelemetryReading>(&tail.snapshot())
        .await
        .into_iter()
        .filter(|r| r.event_time == marker)
        .map(|r| (r.vehicle_id, r.odometer_km.unwrap_or(-1.0)))
        .collect();
    assert_eq!(
        mine,
        BTreeMap::from([
            ("VEH-TEST-005".to_owned(), 1.0),
            ("VEH-TEST-007".to_owned(), 3.0)
        ]),
        "only the vehicles' own topics reach Kafka"
    );
    drop(bridge);
}

/// A broker without authentication or ACL (misconfigured): the bridge's own check still stops
/// a vehicle from speaking for another.
#[tokio::test]
async fn a_misconfigured_broker_still_cannot_forge_a_vehicle() {
    let port = free_port();
    let dir = tempfile_dir();
    let conf = dir.join("open.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto");
    let run = Run::new(1).await;
    let mut env = run.env(&testkit::random_name("bridge-open"));
    env.retain(|(k, _)| !k.starts_with("FLEET_MQTT_"));
    env.push(("FLEET_MQTT_URL", format!("mqtt://127.0.0.1:{port}")));
    env.push(("FLEET_MQTT_BRIDGE_USER", String::new()));
    let bridge = Proc::start(BIN, &env);
    assert!(wait_ready(&bridge).await, "bridge ready");
    let dlq = TopicTail::start(&run.dlq);
    let tel = TopicTail::start(&run.telemetry);
    let dev = Device::connect("forger", port, Auth::Anonymous);
    assert!(dev.connected(Duration::from_secs(10)).await);
    let ts = now_ms();
    // VEH-A publishes a reading claiming to be VEH-B, on VEH-B's topic: rejected.
    dev.publish(
        &run.topic("VEH-B", "telemetry"),
        reading_json("VEH-A", 1, ts),
    )
    .await;
    dev.publish(
        &run.topic("VEH-A", "telemetry"),
        reading_json("VEH-A", 2, ts),
    )
    .await;
    assert_eq!(dlq.wait_for(1, Duration::from_secs(20)).await, 1);
    assert_eq!(tel.wait_for(1, Duration::from_secs(20)).await, 1);
    let d = &decode_all::<DeadLetter>(&dlq.snapshot()).await[0];
    assert_eq!(d.reason, "vehicle_id_mismatch");
    assert_eq!(d.source_key.as_deref(), Some(&b"VEH-B"[..]));
    let t = &decode_all::<TelemetryReading>(&tel.snapshot()).await[0];
    assert_eq!((t.vehicle_id.as_str(), t.odometer_km), ("VEH-A", Some(2.0)));
    drop(bridge);
    let _ = broker.kill();
    let _ = broker.wait();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(testkit::random_name("mqtt-open"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test]
async fn commands_go_down_to_their_vehicle() {
    let run = Run::new(1).await;
    let bridge = Proc::start(BIN, &run.env(&testkit::random_name("bridge-down")));
    assert!(wait_ready(&bridge).await, "bridge ready");
    let dev = simulator("sim-down");
    assert!(dev.connected(Duration::from_secs(10)).await);
    dev.subscribe(&format!("{}/+/commands", run.prefix)).await;
    let dlq = TopicTail::start(&run.dlq);
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let enc = Encoder::<DeviceCommand>::register(&registry, &run.commands)
        .await
        .expect("schema");
    let now = now_ms();
    let cmd = |id: &str, v: &str, expires_at: Option<i64>| DeviceCommand {
        event_id: id.into(),
        vehicle_id: v.into(),
        command: CommandKind::StartCamera,
        params: BTreeMap::from([("duration_s".to_owned(), "120".to_owned())]),
        reason: "panic button".into(),
        event_time: now,
        ingest_time: now,
        expires_at,
    };
    let records = vec![
        (
            b"VEH-C1".to_vec(),
            enc.encode(&cmd("cmd-1", "VEH-C1", Some(now + 60_000)))
                .unwrap(),
        ),
        (
            b"VEH-C2".to_vec(),
            enc.encode(&cmd("cmd-expired", "VEH-C2", Some(now - 1)))
                .unwrap(),
        ),
        (b"VEH-C3".to_vec(), b"not avro".to_vec()),
        (
            b"VEH-C4".to_vec(),
            enc.encode(&cmd("cmd-4", "VEH-C4", None)).unwrap(),
        ),
    ];
    testkit::populate_topic(&run.commands, &records).await;
    for _ in 0..200 {
        if dev.received().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = dev.received();
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            run.topic("VEH-C1", "commands"),
            run.topic("VEH-C4", "commands")
        ],
        "valid, unexpired commands reach their vehicle, in order"
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].1).expect("JSON");
    assert_eq!(body["commandId"], "cmd-1");
    assert_eq!(body["command"], "start_camera");
    assert_eq!(body["params"]["duration_s"], "120");
    assert_eq!(
        dlq.wait_for(1, Duration::from_secs(10)).await,
        1,
        "undecodable command dead-lettered"
    );
    let (_, m) = bridge.get("/metrics").await.expect("metrics");
    assert_eq!(
        metric(
            &m,
            "fleet_processor_records_total{component=\"mqtt-bridge\",topic=\"mqtt:commands\",outcome=\"expired\"}"
        ),
        1.0
    );
    drop(bridge);
}
