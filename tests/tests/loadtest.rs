//! The load tester on the local stack, small: the demo's whole pipeline and audit (MQTT, the
//! seeded fleet, every kind of injected incident) and the replay of a recording (Kafka and
//! MQTT transports). Figures come from release runs (README "Benchmarks"); these check that
//! the audit is right and that it can fail.
#![cfg(feature = "stack")]

use fleet_e2e::bin_path;
use serde_json::Value;

fn loadtest(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin_path("fleet-loadtest"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("fleet-loadtest runs");
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn report(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).expect("report json")
}

#[test]
fn the_demo_audits_the_whole_pipeline_and_passes() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("demo");
    let out_s = out.to_str().expect("utf-8 path");
    // 300 vehicles, one reading each per second for 30 s; an emergency every 600 readings.
    let (ok, log) = loadtest(&[
        "demo",
        "--rate",
        "300",
        "--duration",
        "30",
        "--vehicles",
        "300",
        "--emergency-every",
        "600",
        "--seed",
        "7",
        "--out",
        out_s,
    ]);
    assert!(ok, "{log}");
    let r = report(&out.join("report.json"));
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["seed"], 7);
    assert_eq!(r["transport"], "mqtt");
    // Vehicle 3 goes silent from 20 % of the run: 24 of its 30 readings are not sent.
    assert_eq!(r["sent"], 9_000 - 24);
    assert_eq!(r["accepted"], r["sent"]);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["lake_rows"], r["sent"]);
    assert_eq!(r["lake_missing"], 0);
    // 15 emergencies, every other one a crash; each notified to operations.
    assert_eq!(r["emergencies_injected"], 15);
    assert_eq!(r["crashes_injected"], 7);
    assert_eq!(r["notifications_received"], 15);
    // One vehicle of each injected kind, route deviation included (its planned route was
    // published with those of every 50th vehicle, which stay on course: no other alert).
    assert_eq!(r["alerts_missing"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["alerts_expected"], 4);
    assert_eq!(r["alerts_received"], 4);
    assert_eq!(r["alerts_unexpected"], serde_json::json!([]));
    assert_eq!(r["routes_published"], 6);
    assert_eq!(r["state_mismatches"], 0);
    assert!(r["state_vehicles_checked"].as_u64().unwrap_or(0) >= 299);
    let corridors = r["corridors"].as_object().expect("corridors");
    assert_eq!(corridors.len(), 6, "{corridors:?}");
    assert_eq!(
        corridors.values().filter_map(Value::as_u64).sum::<u64>(),
        300
    );
    for k in [
        "emergency_to_notification",
        "reading_to_state",
        "device_to_kafka",
    ] {
        let l = &r["latency_ms"][k];
        let (p50, p99) = (l["p50"].as_u64(), l["p99"].as_u64());
        assert!(p50.is_some() && p99 >= p50, "{k}: {l}");
    }
    assert!(out.join("report.html").exists());
}

#[test]
fn replay_sends_a_recording_in_order_and_finds_it_in_kafka() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("recorded.jsonl");
    let t0 = 1_795_400_000_000_i64;
    let mut lines = Vec::new();
    for i in 0..400 {
        lines.push(format!(
            r#"{{"vehicleId":"VEH-R{:03}","eventId":"rec-{i}","timestamp":{},"location":{{"lat":4.6,"lon":-74.08}},"speed":{}}}"#,
            i % 40,
            t0 + i * 10,
            30 + i % 50
        ));
    }
    lines.push(format!(
        r#"{{"vehicleId":"VEH-R001","eventId":"rec-panic","type":"panic_button","severity":"critical","timestamp":{t0}}}"#
    ));
    lines.push("this line is not a device message".to_owned());
    std::fs::write(&file, lines.join("\n")).expect("write");
    let file_s = file.to_str().expect("utf-8");
    for transport in ["kafka", "mqtt"] {
        let path = dir.path().join(format!("{transport}.json"));
        let (ok, log) = loadtest(&[
            "replay",
            "--file",
            file_s,
            "--speed",
            "2",
            "--transport",
            transport,
            "--report",
            path.to_str().expect("utf-8"),
        ]);
        assert!(ok, "{transport}: {log}");
        let r = report(&path);
        assert_eq!(r["read"], 401, "{transport}: {r:#}");
        assert_eq!(r["skipped"], 1);
        assert_eq!(r["sent"], 401);
        assert_eq!(r["acked"], 401);
        assert_eq!(r["checked"], 401);
        assert_eq!(r["found_in_kafka"], 401);
        assert_eq!(r["missing"], 0);
        // 4 s recorded at twice the speed: about 2 s, and never early.
        let took = r["replay_s"].as_f64().unwrap_or(0.0);
        assert!(took >= 1.9, "{transport}: replayed in {took} s");
        assert_eq!(r["recorded_span_s"], 3.99);
    }
    // Nothing to replay is an error, not an empty success.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "garbage\n").expect("write");
    let (ok, log) = loadtest(&["replay", "--file", empty.to_str().expect("utf-8")]);
    assert!(!ok && log.contains("nothing to replay"), "{log}");
}

/// `demo --external` against processors started here on fixed topics (as compose runs them),
/// twice on the same topics, lake and store: each run audits only its own records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_audits_an_external_pipeline_run_after_run() {
    use fleet_e2e::{Proc, wait_ready};
    use fleet_runtime::testkit;
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).expect("lake dir");
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let t = |s: &str| testkit::random_name(&format!("ext.{s}"));
    let (tel, emg, anom, notif, prof, win, cmd, dlq) = (
        t("telemetry"),
        t("emergencies"),
        t("anomalies"),
        t("notifications"),
        t("profiles"),
        t("windows"),
        t("commands"),
        t("dlq"),
    );
    testkit::create_topic(&tel, 6).await;
    for topic in [&emg, &anom, &notif, &prof, &win, &cmd, &dlq] {
        testkit::create_topic(topic, 3).await;
    }
    let common = |group: &str| {
        vec![
            ("FLEET_STATE_URL", state.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".to_owned()),
            ("FLEET__KAFKA__GROUP_ID", testkit::random_name(group)),
        ]
    };
    let with = |group: &str, extra: &[(&'static str, String)]| {
        let mut env = common(group);
        env.extend(extra.iter().cloned());
        env
    };
    let procs = [
        Proc::start(
            "telemetry-processor",
            &with(
                "ext.tel",
                &[
                    ("FLEET__APP__INPUT_TOPIC", tel.clone()),
                    ("FLEET__APP__WINDOWS_TOPIC", win.clone()),
                ],
            ),
        ),
        Proc::start(
            "anomaly-processor",
            &with(
                "ext.anom",
                &[
                    ("FLEET__APP__INPUT_TOPIC", tel.clone()),
                    ("FLEET__APP__ANOMALIES_TOPIC", anom.clone()),
                    ("FLEET__APP__EMERGENCIES_TOPIC", emg.clone()),
                    ("FLEET__APP__NOTIFICATIONS_TOPIC", notif.clone()),
                    ("FLEET__APP__PROFILES_TOPIC", prof.clone()),
                    ("FLEET__APP__SUSTAIN", "10s".into()),
                    // Silent devices' offline alerts once the run's input stops.
                    ("FLEET__APP__IDLE_TIMEOUT", "10s".into()),
                ],
            ),
        ),
        Proc::start(
            "emergency-processor",
            &with(
                "ext.emg",
                &[
                    ("FLEET__APP__INPUT_TOPIC", emg.clone()),
                    ("FLEET__APP__NOTIFICATIONS_TOPIC", notif.clone()),
                    ("FLEET__APP__COMMANDS_TOPIC", cmd.clone()),
                ],
            ),
        ),
        Proc::start(
            "lake-sink",
            &with(
                "ext.lake",
                &[
                    ("FLEET_LAKE_URL", lake.display().to_string()),
                    ("FLEET__APP__TOPICS", format!("[\"{tel}\"]")),
                    ("FLEET__APP__COMMIT_INTERVAL", "5s".into()),
                ],
            ),
        ),
    ];
    for p in &procs {
        assert!(wait_ready(p).await, "a processor did not become ready");
    }
    let metrics = format!(
        "telemetry-processor=http://127.0.0.1:{}",
        procs[0].http_port
    );
    let lake_s = lake.display().to_string();
    let mut sent = Vec::new();
    for run in 0..2 {
        let out = dir.path().join(format!("out{run}"));
        let args = [
            "demo",
            "--external",
            "--transport",
            "kafka",
            "--rate",
            "250",
            "--duration",
            "30",
            "--vehicles",
            "250",
            "--emergency-every",
            "750",
            "--telemetry-topic",
            &tel,
            "--emergencies-topic",
            &emg,
            "--anomalies-topic",
            &anom,
            "--notifications-topic",
            &notif,
            "--profiles-topic",
            &prof,
            "--state-url",
            &state,
            "--lake-url",
            &lake_s,
            "--metrics",
            &metrics,
            "--out",
            out.to_str().expect("utf-8"),
        ];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (ok, log) = tokio::task::spawn_blocking(move || {
            loadtest(&args.iter().map(String::as_str).collect::<Vec<&str>>())
        })
        .await
        .expect("join");
        assert!(ok, "run {run}: {log}");
        let r = report(&out.join("report.json"));
        assert_eq!(r["passed"], true, "run {run}: {r:#}");
        // Only this run's readings: 7,500 less the silent vehicle's 24 (vehicle 3 of 250
        // reports every second, silent from 6 s on).
        assert_eq!(r["sent"], 7_500 - 24, "run {run}");
        assert_eq!(r["accepted"], r["sent"]);
        assert_eq!(r["lake_rows"], r["sent"]);
        assert_eq!(r["lake_unexpected"], 0);
        assert_eq!(r["notifications_received"], 10);
        assert_eq!(r["alerts_received"], 4);
        assert_eq!(r["alerts_unexpected"], serde_json::json!([]));
        assert_eq!(r["state_mismatches"], 0);
        assert!(
            !r["lag"]["telemetry-processor"]
                .as_array()
                .expect("lag")
                .is_empty()
        );
        sent.push(r["sent"].as_u64().unwrap_or(0));
    }
    // The second run shared the topics, lake and store with the first and counted only its own.
    assert_eq!(sent[0], sent[1]);
    for p in procs {
        p.kill9();
    }
}
