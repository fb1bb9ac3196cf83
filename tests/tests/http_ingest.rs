//! `http-ingest` against the local stack: records answered 202 are in Kafka, rejected records
//! are dead-lettered with their original bytes, and 400 / 401 / 403 / 413 / 429 are answered
//! as documented; `kill -9` under load loses nothing that was answered 202.
#![cfg(feature = "stack")]

use std::collections::HashSet;
use std::time::Duration;

use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, decode_all, free_port, wait_ready};
use fleet_schemas::{DeadLetter, DeliveryEvent, EmergencyEvent, TelemetryReading};
use serde_json::Value;

const BIN: &str = "http-ingest";
const DRIVER: &str = "driver-one-token-0001";
const DISPATCH: &str = "dispatch-backend-token-01";
const SLOW: &str = "slow-driver-token-00001";

struct Run {
    telemetry: String,
    deliveries: String,
    emergencies: String,
    dlq: String,
    _dir: tempfile::TempDir,
    tokens: String,
}

impl Run {
    async fn new() -> Self {
        let run_topic = |p: &str| testkit::random_name(p);
        let (telemetry, deliveries, emergencies, dlq) = (
            run_topic("e2e.http.tel"),
            run_topic("e2e.http.dlv"),
            run_topic("e2e.http.emg"),
            run_topic("e2e.http.dlq"),
        );
        for t in [&telemetry, &deliveries, &emergencies, &dlq] {
            testkit::create_topic(t, 2).await;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            format!(
                r#"
[[tokens]]
token = "{DRIVER}"
driver_id = "DRV-1"
vehicles = ["VEH-H1"]

[[tokens]]
token = "{DISPATCH}"
driver_id = "dispatch"
rate_per_sec = 100000.0
burst = 100000

[[tokens]]
token = "{SLOW}"
driver_id = "DRV-SLOW"
vehicles = ["VEH-H2"]
rate_per_sec = 0.01
burst = 5
"#
            ),
        )
        .expect("tokens file");
        Self {
            telemetry,
            deliveries,
            emergencies,
            dlq,
            tokens: tokens.display().to_string(),
            _dir: dir,
        }
    }

    fn start(&self, port: u16) -> Proc {
        Proc::start(
            BIN,
            &[
                ("FLEET_HTTP_INGEST_LISTEN", format!("127.0.0.1:{port}")),
                ("FLEET_HTTP_TOKENS_FILE", self.tokens.clone()),
                ("FLEET__APP__TELEMETRY_TOPIC", self.telemetry.clone()),
                ("FLEET__APP__DELIVERIES_TOPIC", self.deliveries.clone()),
                ("FLEET__APP__EMERGENCIES_TOPIC", self.emergencies.clone()),
                ("FLEET__APP__MAX_BATCH_RECORDS", "5".into()),
                ("FLEET__APP__MAX_BODY_BYTES", "65536".into()),
                ("FLEET__APP__MAX_RECORD_BYTES", "4096".into()),
                ("FLEET__RUNNER__DLQ_TOPIC", self.dlq.clone()),
                ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
            ],
        )
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn reading(vehicle: &str, event_id: &str, ts: i64) -> String {
    format!(
        r#"{{"eventId":"{event_id}","vehicleId":"{vehicle}","timestamp":{ts},"location":{{"lat":4.6097,"lon":-74.0817}},"speed":42.0}}"#
    )
}

async fn post(
    port: u16,
    path: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, retry)
}

#[tokio::test]
async fn answers_and_routes_like_the_contract_says() {
    let run = Run::new().await;
    let port = free_port();
    let api = run.start(port);
    assert!(wait_ready(&api).await, "http-ingest ready");
    let (tel, dlv, emg, dlq) = (
        TopicTail::start(&run.telemetry),
        TopicTail::start(&run.deliveries),
        TopicTail::start(&run.emergencies),
        TopicTail::start(&run.dlq),
    );
    let ts = now_ms() - 1000;

    // 202: a single reading, then a batch of two; the answer lists the event ids.
    let (s, b, _) = post(
        port,
        "/v1/telemetry",
        Some(DRIVER),
        reading("VEH-H1", "ev-1", ts),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["event_ids"], serde_json::json!(["ev-1"]));
    let batch = format!(
        "[{}, {}]",
        reading("VEH-H1", "ev-2", ts + 1),
        reading("VEH-H1", "ev-3", ts + 2)
    );
    let (s, b, _) = post(port, "/v1/telemetry", Some(DRIVER), batch).await;
    assert_eq!((s, b["accepted"].as_u64()), (202, Some(2)), "{b}");
    // 202 means acknowledged by Kafka: the records are readable.
    assert_eq!(tel.wait_for(3, Duration::from_secs(20)).await, 3);
    let readings = decode_all::<TelemetryReading>(&tel.snapshot()).await;
    let ids: HashSet<_> = readings.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["ev-1", "ev-2", "ev-3"]));
    assert!(
        readings
            .iter()
            .all(|r| r.source == "http" && r.vehicle_id == "VEH-H1")
    );
    assert!(
        tel.snapshot()
            .iter()
            .all(|c| c.key.as_deref() == Some(b"VEH-H1".as_slice()))
    );

    // 400: a batch with one bad record; the good one is written, the bad one dead-lettered
    // with its exact bytes, and the answer names the failing field.
    let bad = r#"{"vehicleId":"VEH-H1","timestamp":1,"location":{"lat":4.6,"lon":-74.0}}"#;
    let batch = format!("[{}, {bad}]", reading("VEH-H1", "ev-4", ts + 3));
    let (s, b, _) = post(port, "/v1/telemetry", Some(DRIVER), batch).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["accepted"], 1);
    assert_eq!(b["rejected"][0]["index"], 1);
    assert_eq!(b["rejected"][0]["reason"], "timestamp_out_of_range");
    assert_eq!(b["rejected"][0]["field"], "timestamp");
    let (s, b, _) = post(
        port,
        "/v1/telemetry",
        Some(DRIVER),
        r#"{"vehicleId":"VEH-H1","timestamp":1"#,
    )
    .await;
    assert_eq!(
        (s, b["rejected"][0]["reason"].as_str()),
        (400, Some("invalid_json")),
        "{b}"
    );
    let (s, b, _) = post(port, "/v1/telemetry", Some(DRIVER), "[{}, ]").await;
    assert_eq!(s, 400, "an unsplittable body: {b}");

    // 403: a driver token reporting for another vehicle.
    let (s, b, _) = post(
        port,
        "/v1/telemetry",
        Some(DRIVER),
        reading("VEH-OTHER", "ev-x", ts),
    )
    .await;
    assert_eq!(
        (s, b["rejected"][0]["reason"].as_str()),
        (403, Some("vehicle_id_mismatch")),
        "{b}"
    );

    // 401: no token, an unknown token.
    let (s, b, _) = post(port, "/v1/telemetry", None, reading("VEH-H1", "ev-y", ts)).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _, _) = post(
        port,
        "/v1/telemetry",
        Some("not-a-known-token-at-all"),
        reading("VEH-H1", "ev-y", ts),
    )
    .await;
    assert_eq!(s, 401);

    // 413: too many records, too many bytes.
    let six = format!(
        "[{}]",
        (0..6)
            .map(|i| reading("VEH-H1", &format!("b{i}"), ts))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (s, b, _) = post(port, "/v1/telemetry", Some(DRIVER), six).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("too_large")), "{b}");
    let (s, _, _) = post(port, "/v1/telemetry", Some(DRIVER), vec![b' '; 70_000]).await;
    assert_eq!(s, 413);

    // 429: the slow token's bucket holds 5 records and refills one per 100 s (so the time the
    // five requests take cannot refill it).
    for i in 0..5 {
        let (s, b, _) = post(
            port,
            "/v1/telemetry",
            Some(SLOW),
            reading("VEH-H2", &format!("slow-{i}"), ts),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, b, retry) = post(
        port,
        "/v1/telemetry",
        Some(SLOW),
        reading("VEH-H2", "slow-5", ts),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (429, Some("rate_limited")));
    // One record per 100 s: the bucket refills in (at most) 100 s.
    let retry: u64 = retry
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=100).contains(&retry), "Retry-After {retry}");

    // Deliveries (the token's driver stamped) and emergencies go to their own topics, keyed
    // by delivery id and vehicle id.
    let delivery = format!(
        r#"{{"deliveryId":"DLV-77","vehicleId":"VEH-H9","status":"picked_up","timestamp":{ts},"destination":{{"lat":4.7,"lon":-74.1}},"promisedBy":{}}}"#,
        ts + 3_600_000
    );
    let (s, b, _) = post(port, "/v1/deliveries", Some(DISPATCH), delivery).await;
    assert_eq!(s, 202, "{b}");
    let panic = format!(r#"{{"vehicleId":"VEH-H1","type":"panic_button","timestamp":{ts}}}"#);
    let (s, b, _) = post(port, "/v1/emergencies", Some(DRIVER), panic).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(dlv.wait_for(1, Duration::from_secs(20)).await, 1);
    let d = &decode_all::<DeliveryEvent>(&dlv.snapshot()).await[0];
    assert_eq!(
        (d.delivery_id.as_str(), d.driver_id.as_deref()),
        ("DLV-77", Some("dispatch"))
    );
    assert_eq!(dlv.snapshot()[0].key.as_deref(), Some(b"DLV-77".as_slice()));
    assert_eq!(emg.wait_for(1, Duration::from_secs(20)).await, 1);
    let e = &decode_all::<EmergencyEvent>(&emg.snapshot()).await[0];
    assert_eq!(e.vehicle_id, "VEH-H1");

    // Every rejected record is in the dead-letter topic with its reason and exact bytes:
    // timestamp, invalid JSON, unsplittable body, mismatch.
    assert_eq!(dlq.wait_for(4, Duration::from_secs(20)).await, 4);
    let letters = decode_all::<DeadLetter>(&dlq.snapshot()).await;
    let reasons: Vec<_> = letters.iter().map(|l| l.reason.as_str()).collect();
    for r in [
        "timestamp_out_of_range",
        "invalid_json",
        "vehicle_id_mismatch",
    ] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
    let ts_letter = letters
        .iter()
        .find(|l| l.reason == "timestamp_out_of_range")
        .unwrap();
    assert_eq!(ts_letter.original.as_deref(), Some(bad.as_bytes()));
    assert_eq!(
        (
            ts_letter.source_system.as_str(),
            ts_letter.source_topic.as_str()
        ),
        ("http", "/v1/telemetry")
    );
    assert!(letters.iter().all(|l| l.component == "http-ingest"));
    // Rate-limited, unauthorised and oversized requests are refused, not dead-lettered: the
    // client keeps them and re-sends. Nothing else arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dlq.len(), 4);
    assert_eq!(tel.len(), 3 + 1 + 5, "ev-1..4 and slow-0..4");

    let (_, metrics) = api.get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("http_to_kafka_ack"),
        "latency histogram exported"
    );
    assert_eq!(
        api.terminate(Duration::from_secs(20)).map(|s| s.success()),
        Some(true)
    );
}

/// Many clients post while the process is killed: every event id answered 202 is in Kafka.
#[tokio::test]
async fn kill_nine_loses_nothing_that_was_accepted() {
    let run = Run::new().await;
    let port = free_port();
    let mut api = run.start(port);
    assert!(wait_ready(&api).await, "ready");
    let tel = TopicTail::start(&run.telemetry);
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (acc, stop) = (accepted.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<String> = (0..5).map(|k| format!("k{c}-{i}-{k}")).collect();
                let ts = now_ms();
                let body = format!(
                    "[{}]",
                    ids.iter()
                        .map(|id| reading("VEH-K1", id, ts))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let r = http
                    .post(format!("http://127.0.0.1:{port}/v1/telemetry"))
                    .bearer_auth(DISPATCH)
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        if let Ok(mut a) = acc.lock() {
                            a.extend(ids);
                        }
                    }
                    // Refused or dropped (the server is down): a real app backs off and
                    // re-sends; these readings are simply not counted as accepted.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                i += 1;
            }
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        api.kill9_in_place();
        api = run.start(port);
        assert!(wait_ready(&api).await, "ready after restart");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert!(
        accepted.len() > 100,
        "the clients got through: {}",
        accepted.len()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = decode_all::<TelemetryReading>(&tel.snapshot())
            .await
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        let missing = accepted.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} accepted readings not in Kafka",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(api);
}

/// Kafka stopped under a running http-ingest: every request is answered `503` within
/// `kafka_timeout`, also once librdkafka's queue is full (a request used to wait for room in
/// it for ever), and a client that sends its headers too slowly is disconnected while the
/// others are answered. Runs on a throw-away one-node cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_and_slow_clients_never_hang_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = fleet_e2e::KafkaCluster::start(1, 19_592);
    let brokers = cluster.brokers();
    let run = Run::new().await;
    for t in [&run.telemetry, &run.deliveries, &run.emergencies, &run.dlq] {
        testkit::create_topic_on(&brokers, t, 1).await;
    }
    let config = run._dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ncreate_topics = false\n\
             [kafka.options]\n\"queue.buffering.max.messages\" = \"5\"\n\
             [http]\nheader_timeout = \"1s\"\n\
             [app]\nkafka_timeout = \"2s\"\nmax_batch_records = 5\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let p = Proc::start(
        BIN,
        &[
            ("FLEET_CONFIG", config.display().to_string()),
            ("FLEET_HTTP_INGEST_LISTEN", format!("127.0.0.1:{port}")),
            ("FLEET_HTTP_TOKENS_FILE", run.tokens.clone()),
            ("FLEET_KAFKA_BROKERS", brokers.clone()),
            ("FLEET__APP__TELEMETRY_TOPIC", run.telemetry.clone()),
            ("FLEET__APP__DELIVERIES_TOPIC", run.deliveries.clone()),
            ("FLEET__APP__EMERGENCIES_TOPIC", run.emergencies.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", run.dlq.clone()),
        ],
    );
    assert!(wait_ready(&p).await, "http-ingest ready");
    let now = now_ms();
    let one = format!("[{}]", reading("VEH-K1", "k-0", now));
    assert_eq!(
        post(port, "/v1/telemetry", Some(DISPATCH), one).await.0,
        202
    );

    cluster.kill9(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Four requests of 5 records at once: the queue (5) is full after the first.
    let batch = |k: usize| {
        let rs: Vec<String> = (0..5)
            .map(|i| reading("VEH-K1", &format!("k-{k}-{i}"), now + i as i64))
            .collect();
        format!("[{}]", rs.join(","))
    };
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(
        (1..=4).map(|k| post(port, "/v1/telemetry", Some(DISPATCH), batch(k))),
    )
    .await;
    let took = started.elapsed();
    for (status, body, retry) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
    }
    assert!(
        took < Duration::from_secs(15),
        "answered within the timeout, not hung: {took:?}"
    );

    // A slow client is cut off after the header timeout; others are still answered.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/telemetry HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow client was disconnected");
    let (status, _, _) = post(port, "/v1/telemetry", None, "[]").await;
    assert_eq!(status, 401, "others are answered");
    let mut p = p;
    assert!(p.alive(), "http-ingest keeps running without Kafka");
}
