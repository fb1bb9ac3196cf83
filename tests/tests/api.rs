//! fleet-api against the local stack: telemetry-processor writes `vehicle_state` from a fresh
//! telemetry topic while 20 vehicles drive in circles (10 of customer "acme", 10 of "globex",
//! by their profiles loaded with `fleetctl`); fleet-api serves them. Checked: reads and
//! tenant isolation on what the processor wrote, the live stream (positions, an alert and an
//! incident from their Kafka topics, filtered per tenant), and the live map in headless
//! Chromium (scripts/browser-check.mjs): vehicles drawn, coloured, moving between two
//! samples, the alert listed; the screenshot is kept in `$CARGO_TARGET_DIR/fleet-e2e/map.png`.
#![cfg(feature = "stack")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_e2e::testkit;
use fleet_e2e::{Proc, bin_path, free_port, now_ms, wait_ready};
use fleet_schemas::{
    Anomaly, AnomalyKind, AnomalyState, EmergencyEvent, EmergencyKind, Encoder, Position, Registry,
    Severity, TelemetryReading, ids,
};
use rdkafka::producer::FutureRecord;

const OPS: &str = "operator-token-e2e-0001";
const ACME: &str = "customer-token-acme-e2e";

fn vehicle(i: usize) -> String {
    format!("VEH-API{i:02}")
}

fn reading(i: usize, step: u64) -> TelemetryReading {
    // Circles of ~1 km around points spread over Bogotá, one lap per 60 steps.
    let angle = (step as f64 / 60.0 + i as f64 / 20.0) * std::f64::consts::TAU;
    let (clat, clon) = (4.55 + (i % 5) as f64 * 0.04, -74.15 + (i / 5) as f64 * 0.04);
    let t = now_ms();
    let id = vehicle(i);
    TelemetryReading {
        event_id: ids::derived_id(&[&id, &step.to_string()]),
        vehicle_id: id,
        event_time: t,
        ingest_time: t,
        sent_time: Some(t),
        position: Position::new(clat + 0.009 * angle.sin(), clon + 0.009 * angle.cos()),
        // Vehicle 19 is parked: idle on the map.
        speed_kmh: Some(if i == 19 { 0.0 } else { 40.0 }),
        heading_deg: None,
        cargo_temp_c: Some(4.0),
        door_open: None,
        ignition_on: Some(true),
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "e2e".into(),
    }
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> (u16, serde_json::Value) {
    let r = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Collects SSE events (name, data) from `resp` for `secs` seconds.
async fn collect_events(
    mut resp: reqwest::Response,
    secs: u64,
) -> Vec<(String, serde_json::Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() {
                out.push((name, serde_json::from_str(&data).unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reads_streams_and_draws_the_live_map() {
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let telemetry = testkit::random_name("e2e.api.telemetry");
    let anomalies = testkit::random_name("e2e.api.anomalies");
    let emergencies = testkit::random_name("e2e.api.emergencies");
    let profiles = testkit::random_name("e2e.api.profiles");
    let windows = testkit::random_name("e2e.api.windows");
    let dlq = testkit::random_name("e2e.api.dlq");
    for t in [&telemetry, &anomalies, &emergencies, &windows, &dlq] {
        testkit::create_topic(t, 2).await;
    }
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-api"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // Owners through the CLI: VEH-API00..09 acme, 10..19 globex.
    let owners: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            serde_json::json!({"vehicle_id": vehicle(i), "customer_id": if i < 10 { "acme" } else { "globex" }})
        })
        .collect();
    let file = dir.join("profiles.json");
    std::fs::write(&file, serde_json::to_string(&owners).expect("json")).expect("write");
    let out = std::process::Command::new(bin_path("fleetctl"))
        .args([
            "profiles",
            "load",
            file.to_str().expect("path"),
            "--topic",
            &profiles,
        ])
        .env("FLEET_KAFKA_BROKERS", testkit::brokers())
        .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
        .output()
        .expect("fleetctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\ntoken = \"{OPS}\"\nname = \"ops\"\nrole = \"operator\"\n\n\
             [[tokens]]\ntoken = \"{ACME}\"\nname = \"ACME\"\nrole = \"customer\"\ncustomer_id = \"acme\"\n"
        ),
    )
    .expect("tokens");

    let state_url = format!("sqlite://{}/state.db", dir.display());
    let common = [
        ("FLEET_KAFKA_BROKERS", testkit::brokers()),
        ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
        ("FLEET_STATE_URL", state_url.clone()),
        ("FLEET__KAFKA__CREATE_TOPICS", "false".to_owned()),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
    ];
    let mut tele_env = common.to_vec();
    tele_env.extend([
        ("FLEET__APP__INPUT_TOPIC", telemetry.clone()),
        ("FLEET__APP__WINDOWS_TOPIC", windows.clone()),
        ("FLEET__RUNNER__TICK_INTERVAL", "200ms".to_owned()),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("e2e.api.tele"),
        ),
    ]);
    let api_port = free_port();
    let mut api_env = common.to_vec();
    api_env.extend([
        ("FLEET_API_LISTEN", format!("127.0.0.1:{api_port}")),
        ("FLEET_API_TOKENS_FILE", tokens.display().to_string()),
        ("FLEET__APP__PROFILES_TOPIC", profiles.clone()),
        ("FLEET__APP__TELEMETRY_TOPIC", telemetry.clone()),
        ("FLEET__APP__ANOMALIES_TOPIC", anomalies.clone()),
        ("FLEET__APP__EMERGENCIES_TOPIC", emergencies.clone()),
    ]);
    let tele = Proc::start("telemetry-processor", &tele_env);
    let api = Proc::start("fleet-api", &api_env);
    assert!(wait_ready(&tele).await, "telemetry-processor ready");
    assert!(wait_ready(&api).await, "fleet-api ready");
    let base = format!("http://127.0.0.1:{api_port}");
    let client = reqwest::Client::new();

    // 20 vehicles, one reading each every 250 ms, until the end of the test.
    let enc = Encoder::<TelemetryReading>::register(&registry, &telemetry)
        .await
        .expect("schema");
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (stop, topic) = (stop.clone(), telemetry.clone());
        tokio::spawn(async move {
            let producer = testkit::producer();
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..20 {
                    let r = reading(i, step);
                    let payload = enc.encode(&r).expect("encode");
                    let rec = FutureRecord::to(&topic)
                        .key(&r.vehicle_id)
                        .payload(&payload);
                    producer
                        .send(rec, Duration::from_secs(10))
                        .await
                        .expect("produce");
                }
                step += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            step
        })
    };

    // Reads of what telemetry-processor wrote.
    let mut seen = 0;
    for _ in 0..100 {
        let (_, body) = get(&client, &format!("{base}/v1/vehicles?limit=100"), OPS).await;
        seen = body["vehicles"].as_array().map_or(0, Vec::len);
        if seen == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(seen, 20, "every vehicle's state is listed");
    let (status, v) = get(&client, &format!("{base}/v1/vehicles/VEH-API03"), ACME).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "moving");
    let (_, v) = get(&client, &format!("{base}/v1/vehicles/VEH-API19"), OPS).await;
    assert_eq!(v["status"], "idle");
    let (status, _) = get(&client, &format!("{base}/v1/vehicles/VEH-API13"), ACME).await;
    assert_eq!(status, 404, "another customer's vehicle is invisible");
    let (_, body) = get(&client, &format!("{base}/v1/vehicles?status=moving"), ACME).await;
    let ids: Vec<&str> = body["vehicles"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["vehicle_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert!(ids.iter().all(|id| id < &"VEH-API10"), "{ids:?}");

    // The live stream: an acme subscriber and an operator subscriber to two vehicles.
    let subscribe = |query: String, token: &'static str| {
        let client = client.clone();
        let url = format!("{base}/v1/stream?{query}");
        async move {
            let r = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("stream");
            assert_eq!(r.status().as_u16(), 200);
            r
        }
    };
    let acme_stream = subscribe(String::new(), ACME).await;
    let ops_stream = subscribe("vehicles=VEH-API12,VEH-API13".into(), OPS).await;
    let acme_events = tokio::spawn(collect_events(acme_stream, 6));
    let ops_events = tokio::spawn(collect_events(ops_stream, 6));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = now_ms();
    let anomaly = Anomaly {
        event_id: ids::derived_id(&["e2e-api-anomaly", &t.to_string()]),
        vehicle_id: vehicle(13),
        event_time: t,
        ingest_time: t,
        sent_time: None,
        kind: AnomalyKind::Overspeed,
        state: AnomalyState::Raised,
        severity: Severity::Medium,
        value: Some(121.0),
        threshold: Some(90.0),
        position: Some(Position::new(4.6, -74.1)),
        message: "speed 121 km/h over the limit 90 km/h".into(),
        trigger_event_id: None,
    };
    let emergency = EmergencyEvent {
        event_id: ids::derived_id(&["e2e-api-emergency", &t.to_string()]),
        vehicle_id: vehicle(2),
        event_time: t,
        ingest_time: t,
        sent_time: Some(t),
        kind: EmergencyKind::PanicButton,
        severity: Severity::Critical,
        position: Some(Position::new(4.6, -74.1)),
        description: Some("panic button".into()),
        source_anomaly_id: None,
        source: "e2e".into(),
    };
    let aenc = Encoder::<Anomaly>::register(&registry, &anomalies)
        .await
        .expect("schema");
    let eenc = Encoder::<EmergencyEvent>::register(&registry, &emergencies)
        .await
        .expect("schema");
    testkit::populate_topic(
        &anomalies,
        &[(
            anomaly.vehicle_id.clone().into_bytes(),
            aenc.encode(&anomaly).expect("encode"),
        )],
    )
    .await;
    testkit::populate_topic(
        &emergencies,
        &[(
            emergency.vehicle_id.clone().into_bytes(),
            eenc.encode(&emergency).expect("encode"),
        )],
    )
    .await;
    let acme_events = acme_events.await.expect("acme events");
    let ops_events = ops_events.await.expect("ops events");
    let of = |evs: &[(String, serde_json::Value)], name: &str| -> Vec<String> {
        evs.iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, d)| d["vehicle_id"].as_str().map(str::to_owned))
            .collect()
    };
    let acme_positions = of(&acme_events, "position");
    assert!(
        acme_positions.len() >= 40,
        "acme saw {} positions",
        acme_positions.len()
    );
    assert!(
        acme_positions.iter().all(|v| v.as_str() < "VEH-API10"),
        "only acme's vehicles"
    );
    assert_eq!(
        of(&acme_events, "incident"),
        [vehicle(2)],
        "acme's own incident"
    );
    assert!(of(&acme_events, "alert").is_empty(), "not globex's alert");
    let ops_positions = of(&ops_events, "position");
    assert!(ops_positions.len() >= 8);
    assert!(
        ops_positions
            .iter()
            .all(|v| v == "VEH-API12" || v == "VEH-API13")
    );
    assert_eq!(of(&ops_events, "alert"), [vehicle(13)]);
    assert!(
        of(&ops_events, "incident").is_empty(),
        "not a subscribed vehicle"
    );

    // The live map in headless Chromium, while vehicles move; an alert arrives meanwhile.
    let out_dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("fleet-e2e");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let shot = out_dir.join("map.png");
    let _ = std::fs::remove_file(&shot);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser-check.mjs");
    let browser = {
        let (url, shot) = (format!("{base}/map#token={OPS}"), shot.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg(&script)
                .arg("map")
                .arg(url)
                .arg(shot)
                .arg("2500")
                .output()
        })
    };
    // Alerts keep coming while the browser runs (the page's stream starts when it connects,
    // which may take a while under load): at least one arrives after it subscribed.
    let alerting = Arc::new(AtomicBool::new(true));
    let alerts_task = {
        let (alerting, anomalies, anomaly) = (alerting.clone(), anomalies.clone(), anomaly.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while alerting.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                n += 1;
                let mut a = anomaly.clone();
                a.event_id =
                    ids::derived_id(&["e2e-api-anomaly-map", &n.to_string(), &t.to_string()]);
                testkit::populate_topic(
                    &anomalies,
                    &[(
                        a.vehicle_id.clone().into_bytes(),
                        aenc.encode(&a).expect("encode"),
                    )],
                )
                .await;
            }
        })
    };
    let out = browser.await;
    alerting.store(false, Ordering::Relaxed);
    alerts_task.await.expect("alerts task");
    let out = out
        .expect("browser task")
        .expect("node runs (scripts/lib.sh need_browser installs it)");
    assert!(
        out.status.success(),
        "browser check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    eprintln!("browser: {report}");
    assert_eq!(report["errors"], serde_json::json!([]), "no script errors");
    let (first, second) = (&report["first"], &report["second"]);
    assert_eq!(second["status"], "live");
    assert_eq!(first["stats"]["vehicles"], 20, "every vehicle on the map");
    assert_eq!(second["stats"]["drawn"], 20);
    assert!(
        second["stats"]["moved"].as_u64().unwrap_or(0) >= 15,
        "vehicles moved: {second}"
    );
    assert!(
        second["pixels"]["moving"].as_u64().unwrap_or(0) > 100,
        "green dots drawn"
    );
    assert!(
        second["pixels"]["idle"].as_u64().unwrap_or(0) > 10,
        "the parked one is amber"
    );
    assert!(
        second["pixels"]["alert"].as_u64().unwrap_or(0) > 10,
        "the alerted one is red"
    );
    assert!(
        second["alerts"].as_u64().unwrap_or(0) >= 1,
        "the alert is listed"
    );
    assert_ne!(
        first["hash"], second["hash"],
        "the picture changed: vehicles move"
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    stop.store(true, Ordering::Relaxed);
    let steps = driver.await.expect("driver");
    assert!(steps > 20);
    for p in [api, tele] {
        let status = p
            .terminate(Duration::from_secs(20))
            .expect("stops on SIGTERM");
        assert!(status.success(), "clean exit: {status:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
