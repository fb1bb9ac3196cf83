//! The load tester's HTML report renders its plots in headless Chromium: `fleet-loadtest
//! render-report` on a report.json with the demo's shape, opened by scripts/browser-check.mjs
//! (Debian's Chromium through playwright-core, installed by scripts/lib.sh need_browser).
#![cfg(feature = "stack")]

use fleet_e2e::bin_path;

#[test]
fn report_html_renders_every_plot() {
    let dir = tempfile::tempdir().expect("tmp");
    let throughput: Vec<u64> = (0..60).map(|s| 4_900 + (s * 37) % 200).collect();
    let lag: Vec<(u64, i64)> = (0..60).map(|s| (s, (s as i64 * 53) % 900)).collect();
    let report = serde_json::json!({
        "rate_target": 5000, "duration_s": 60, "vehicles": 10000,
        "sent": 299760, "accepted": 299760, "lost": 0, "duplicates": 0,
        "achieved_rate": 4995.0, "lake_rows": 299760, "lake_url": "/tmp/lake",
        "emergencies_injected": 30, "notifications_received": 30,
        "alerts_expected": 30, "alerts_received": 30, "alerts_missing": [], "alerts_unexpected": [],
        "state_vehicles_checked": 10000, "state_mismatches": 0,
        "latency_ms": {
            "emergency_to_notification": {"p50": 120, "p99": 480, "max": 700},
            "reading_to_state": {"p50": 300, "p99": 900, "max": 1500},
            "device_to_kafka": {"p50": 40, "p99": 200, "max": 900}
        },
        "throughput_per_s": throughput,
        "lag": {"telemetry-processor": lag, "lake-sink": lag.iter().map(|(s, l)| (s, l / 2)).collect::<Vec<_>>()},
        "latency_histogram_ms": [[1, 0], [2, 5], [5, 40], [10, 300], [20, 900], [50, 2000], [100, 800], [200, 90], [500, 8], [1000, 1]],
        "cpu_cores": {"stack:kafka": 0.95, "mqtt-bridge": 0.3, "telemetry-processor": 0.2, "lake-sink": 0.05},
        "passed": true
    });
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    std::fs::write(&json, report.to_string()).expect("write");
    let out = std::process::Command::new(bin_path("fleet-loadtest"))
        .args(["render-report", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&html)
        .output()
        .expect("fleet-loadtest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser-check.mjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .arg("report")
        .arg(&html)
        .arg(&png)
        .output()
        .expect("node runs (scripts/lib.sh need_browser installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(check["errors"], serde_json::json!([]), "no script errors");
    let plots = check["plots"].as_array().expect("plots");
    let ids: Vec<&str> = plots.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["throughput", "lag", "latency", "cpu"]);
    for p in plots {
        assert!(p["drawn"].as_u64().unwrap_or(0) > 500, "plot drawn: {p}");
    }
    let shot = std::fs::read(&png).expect("screenshot");
    assert!(shot.starts_with(b"\x89PNG") && shot.len() > 20_000);
    // A report with no data still renders (empty plots, no script error).
    std::fs::write(&json, "{}").expect("write");
    let out = std::process::Command::new(bin_path("fleet-loadtest"))
        .args(["render-report", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&html)
        .output()
        .expect("fleet-loadtest");
    assert!(out.status.success());
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").expect("write");
    let out = std::process::Command::new(bin_path("fleet-loadtest"))
        .args(["render-report", "--json"])
        .arg(&bad)
        .arg("--out")
        .arg(&html)
        .output()
        .expect("fleet-loadtest");
    assert!(!out.status.success(), "a non-JSON report is refused");
}
