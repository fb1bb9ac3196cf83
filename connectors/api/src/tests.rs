//! The routes over a real SQLite store and a real HTTP server on a loopback port.

use fleet_state::{DeliveryRow, Incident, StoreOptions, WindowRow};
use reqwest::StatusCode as Http;

use super::*;

const OPS: &str = "operator-token-0001";
const ACME: &str = "customer-token-acme";
const GLOBEX: &str = "customer-token-globex";

const TOKENS: &str = r#"
[[tokens]]
token = "operator-token-0001"
name = "ops"
role = "operator"

[[tokens]]
token = "customer-token-acme"
name = "ACME"
role = "customer"
customer_id = "acme"

[[tokens]]
token = "customer-token-globex"
name = "Globex"
role = "customer"
customer_id = "globex"
vehicles = ["VEH-SHARED"]
"#;

struct Server {
    base: String,
    hub: broadcast::Sender<Arc<LiveEvent>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn get(&self, path: &str, token: Option<&str>) -> (Http, serde_json::Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let body = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }
}

fn state(id: &str, age_ms: i64, speed: f64) -> VehicleState {
    let mut s = VehicleState::new(id, now_ms() - age_ms, 4.6, -74.1);
    s.speed_kmh = Some(speed);
    s.event_id = format!("e-{id}");
    s
}

async fn server() -> Server {
    server_with(|_| {}).await
}

async fn server_with(tune: impl FnOnce(&mut ApiConfig)) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let store = Store::open(&url, StoreOptions::default())
        .await
        .expect("store");
    let now = now_ms();
    let mut rows = vec![
        state("VEH-A1", 1_000, 50.0),   // acme, moving
        state("VEH-A2", 2_000, 0.0),    // acme, idle
        state("VEH-A3", 900_000, 40.0), // acme, offline
        state("VEH-G1", 1_000, 80.0),   // globex, moving
        state("VEH-SHARED", 1_000, 0.0),
    ];
    for i in 0..30 {
        rows.push(state(&format!("VEH-X{i:02}"), 1_000, 60.0));
    }
    store
        .upsert_vehicle_states(&rows, now)
        .await
        .expect("states");
    store
        .put_windows(
            &[WindowRow {
                vehicle_id: "VEH-A1".into(),
                window_start: now - 120_000,
                window_end: now - 60_000,
                count: 12,
                speed_avg_kmh: Some(48.0),
                speed_max_kmh: Some(61.0),
                cargo_temp_min_c: None,
                cargo_temp_avg_c: None,
                cargo_temp_max_c: None,
                distance_m: 800.0,
                moving_s: 60.0,
                idle_s: 0.0,
                event_id: "w1".into(),
            }],
            now,
        )
        .await
        .expect("windows");
    for (id, vehicle) in [("INC-A", "VEH-A1"), ("INC-G", "VEH-G1")] {
        store
            .record_incident(&Incident {
                incident_id: id.into(),
                vehicle_id: vehicle.into(),
                kind: "PANIC_BUTTON".into(),
                severity: "CRITICAL".into(),
                status: "open".into(),
                event_time: now - 5_000,
                recorded_at: now - 4_900,
                lat: Some(4.6),
                lon: Some(-74.1),
                description: None,
                notified_at: None,
            })
            .await
            .expect("incident");
    }
    let delivery = |id: &str, vehicle: &str| DeliveryRow {
        delivery_id: id.into(),
        vehicle_id: vehicle.into(),
        driver_id: None,
        status: "in_transit".into(),
        updated_at: now,
        dest_lat: Some(4.7),
        dest_lon: Some(-74.0),
        promised_by: Some(now + 3_600_000),
        eta_ms: Some(now + 1_800_000),
        eta_confidence: Some(0.8),
        remaining_m: Some(12_000.0),
        late: false,
        last_lat: Some(4.6),
        last_lon: Some(-74.1),
        delivered_at: None,
        completed_by: None,
    };
    store
        .put_deliveries(&[delivery("DLV-A", "VEH-A1"), delivery("DLV-G", "VEH-G1")])
        .await
        .expect("deliveries");
    let owners = Table::empty();
    for v in ["VEH-A1", "VEH-A2", "VEH-A3"] {
        owners.insert(v, Some("acme".to_owned()));
    }
    owners.insert("VEH-G1", Some("globex".to_owned()));
    let mut cfg = ApiConfig {
        tokens_file: "unused".into(),
        max_page: 10,
        ..Default::default()
    };
    tune(&mut cfg);
    let hub = Api::hub(&cfg);
    let api = Api::new(
        cfg,
        Tokens::parse(TOKENS).expect("tokens"),
        store,
        owners,
        hub.clone(),
        &Metrics::new("test"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
        hub,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

#[test]
fn status_follows_age_and_speed() {
    let mut s = VehicleState::new("V", 1_000_000, 0.0, 0.0);
    assert_eq!(
        vehicle_status(&s, 1_000_000, 300_000, 5.0),
        "idle",
        "no speed"
    );
    s.speed_kmh = Some(4.9);
    assert_eq!(vehicle_status(&s, 1_000_000, 300_000, 5.0), "idle");
    s.speed_kmh = Some(5.0);
    assert_eq!(
        vehicle_status(&s, 1_300_000, 300_000, 5.0),
        "moving",
        "at the limit"
    );
    assert_eq!(vehicle_status(&s, 1_300_001, 300_000, 5.0), "offline");
}

#[tokio::test]
async fn every_route_needs_a_known_token() {
    let s = server().await;
    for path in [
        "/v1/vehicles/VEH-A1",
        "/v1/vehicles",
        "/v1/vehicles/VEH-A1/windows",
        "/v1/incidents?vehicle=VEH-A1",
        "/v1/deliveries/DLV-A",
        "/v1/stream",
    ] {
        for token in [None, Some("not-a-known-token-at-all")] {
            let r = s
                .client
                .get(format!("{}{path}", s.base))
                .header(
                    "authorization",
                    token.map(|t| format!("Bearer {t}")).unwrap_or_default(),
                )
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), Http::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value = r.json().await.expect("json");
            assert_eq!(body["error"], "unauthorized");
        }
    }
    // Public: the document and the page.
    assert_eq!(s.get("/openapi.json", None).await.0, Http::OK);
    let (status, page) = s.get("/map", None).await;
    assert_eq!(status, Http::OK);
    assert!(page.as_str().expect("html").contains("<canvas"));
}

#[tokio::test]
async fn operators_see_every_vehicle_with_its_status() {
    let s = server().await;
    let (status, v) = s.get("/v1/vehicles/VEH-A1", Some(OPS)).await;
    assert_eq!(status, Http::OK);
    let v: VehicleView = serde_json::from_value(v).expect("vehicle");
    assert_eq!(
        (v.vehicle_id.as_str(), v.status.as_str()),
        ("VEH-A1", "moving")
    );
    assert_eq!(v.speed_kmh, Some(50.0));
    assert!((0.5..60.0).contains(&v.age_s), "{}", v.age_s);
    for (id, want) in [
        ("VEH-A2", "idle"),
        ("VEH-A3", "offline"),
        ("VEH-G1", "moving"),
    ] {
        let (_, v) = s.get(&format!("/v1/vehicles/{id}"), Some(OPS)).await;
        assert_eq!(v["status"], want, "{id}");
    }
    let (status, body) = s.get("/v1/vehicles/VEH-NOPE", Some(OPS)).await;
    assert_eq!(status, Http::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn listings_filter_by_status_and_page_by_the_last_id() {
    let s = server().await;
    // 35 vehicles, pages of at most 10 (max_page): every one exactly once.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let (status, body) = s
            .get(&format!("/v1/vehicles?limit=50&after={after}"), Some(OPS))
            .await;
        assert_eq!(status, Http::OK);
        let page = body["vehicles"].as_array().expect("array").clone();
        assert!(page.len() <= 10);
        seen.extend(
            page.iter()
                .map(|v| v["vehicle_id"].as_str().unwrap_or("").to_owned()),
        );
        match body["next_after"].as_str() {
            Some(n) => after = n.to_owned(),
            None => break,
        }
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((n, seen.len()), (35, 35));
    let (_, body) = s.get("/v1/vehicles?status=offline", Some(OPS)).await;
    let ids: Vec<&str> = body["vehicles"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["vehicle_id"].as_str())
        .collect();
    assert_eq!(ids, ["VEH-A3"]);
    assert!(body["next_after"].is_null());
    let (status, body) = s.get("/v1/vehicles?status=parked", Some(OPS)).await;
    assert_eq!(status, Http::BAD_REQUEST);
    assert_eq!(body["error"], "bad_query");
    let (status, body) = s.get("/v1/vehicles?limit=ten", Some(OPS)).await;
    assert_eq!(status, Http::BAD_REQUEST, "{body}");
    let (status, _) = s.get("/v1/vehicles?colour=red", Some(OPS)).await;
    assert_eq!(status, Http::BAD_REQUEST, "unknown parameters are refused");
}

#[tokio::test]
async fn customers_see_only_their_own_vehicles() {
    let s = server().await;
    let (status, _) = s.get("/v1/vehicles/VEH-A1", Some(ACME)).await;
    assert_eq!(status, Http::OK);
    // Another tenant's vehicle looks exactly like a missing one.
    let (status, body) = s.get("/v1/vehicles/VEH-G1", Some(ACME)).await;
    assert_eq!(status, Http::NOT_FOUND);
    assert_eq!(body, s.get("/v1/vehicles/VEH-NOPE", Some(ACME)).await.1);
    assert_eq!(
        s.get("/v1/vehicles/VEH-SHARED", Some(GLOBEX)).await.0,
        Http::OK,
        "granted"
    );
    assert_eq!(
        s.get("/v1/vehicles/VEH-SHARED", Some(ACME)).await.0,
        Http::NOT_FOUND
    );
    let (_, body) = s.get("/v1/vehicles", Some(ACME)).await;
    let mut ids: Vec<&str> = body["vehicles"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["vehicle_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["VEH-A1", "VEH-A2", "VEH-A3"]);
    let (_, body) = s.get("/v1/vehicles", Some(GLOBEX)).await;
    assert_eq!(body["vehicles"].as_array().expect("array").len(), 2);
    // Windows, incidents and deliveries follow the same rule.
    assert_eq!(
        s.get("/v1/vehicles/VEH-G1/windows", Some(ACME)).await.0,
        Http::NOT_FOUND
    );
    let (_, body) = s.get("/v1/incidents?vehicle=VEH-G1", Some(ACME)).await;
    assert_eq!(body["incidents"], serde_json::json!([]));
    let (_, body) = s.get("/v1/incidents?vehicle=VEH-A1", Some(ACME)).await;
    assert_eq!(body["incidents"][0]["incident_id"], "INC-A");
    assert_eq!(
        s.get("/v1/deliveries/DLV-G", Some(ACME)).await.0,
        Http::NOT_FOUND
    );
    let (status, body) = s.get("/v1/deliveries/DLV-A", Some(ACME)).await;
    assert_eq!(status, Http::OK);
    assert_eq!(body["status"], "in_transit");
    assert_eq!(body["remaining_m"], 12_000.0);
    assert_eq!(s.get("/v1/deliveries/DLV-G", Some(OPS)).await.0, Http::OK);
}

#[tokio::test]
async fn windows_and_incidents_are_read_with_checked_parameters() {
    let s = server().await;
    let (status, body) = s.get("/v1/vehicles/VEH-A1/windows", Some(OPS)).await;
    assert_eq!(status, Http::OK);
    assert_eq!(body["windows"][0]["count"], 12);
    let now = now_ms();
    let (_, body) = s
        .get(
            &format!(
                "/v1/vehicles/VEH-A1/windows?from={}&to={}",
                now - 30_000,
                now
            ),
            Some(OPS),
        )
        .await;
    assert_eq!(
        body["windows"],
        serde_json::json!([]),
        "window started before from"
    );
    for q in ["from=10&to=5", &format!("from=0&to={now}")] {
        let (status, body) = s
            .get(&format!("/v1/vehicles/VEH-A1/windows?{q}"), Some(OPS))
            .await;
        assert_eq!(status, Http::BAD_REQUEST, "{q}");
        assert_eq!(body["error"], "bad_range");
    }
    let (status, body) = s.get("/v1/incidents", Some(OPS)).await;
    assert_eq!(status, Http::BAD_REQUEST);
    assert!(body["detail"].as_str().expect("detail").contains("vehicle"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let s = server().await;
    let (_, doc) = s.get("/openapi.json", None).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/vehicles/{id}",
        "/v1/vehicles",
        "/v1/vehicles/{id}/windows",
        "/v1/incidents",
        "/v1/deliveries/{id}",
        "/v1/stream",
        "/v1/stream/tickets",
        "/openapi.json",
        "/map",
    ] {
        assert!(paths.contains_key(p), "{p} documented");
    }
    // Every documented path is served (the stream is checked on its own below).
    for p in paths.keys() {
        let id = if p.starts_with("/v1/deliveries") {
            "DLV-A"
        } else {
            "VEH-A1"
        };
        let path = if p == "/v1/stream" {
            "/openapi.json".to_owned()
        } else {
            p.replace("{id}", id)
        };
        let (status, _) = s.get(&path, Some(OPS)).await;
        assert_ne!(status, Http::NOT_FOUND, "{path}");
    }
}

/// Reads SSE frames until `n` events (not comments) arrived.
async fn events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, serde_json::Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .expect("chunk")
            .expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() {
                out.push((name, serde_json::from_str(&data).expect("json data")));
            }
        }
    }
    out
}

fn ev(vehicle: &str, kind: Kind, n: i64) -> Arc<LiveEvent> {
    Arc::new(LiveEvent {
        vehicle_id: vehicle.into(),
        kind,
        json: format!("{{\"vehicle_id\":\"{vehicle}\",\"n\":{n}}}"),
    })
}

async fn subscribe(s: &Server, query: &str, token: &str) -> reqwest::Response {
    let r = s
        .client
        .get(format!("{}/v1/stream?{query}", s.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), Http::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r
}

#[tokio::test]
async fn the_live_stream_filters_by_vehicle_type_and_tenant() {
    let s = server().await;
    let mut ops_all = subscribe(&s, "", OPS).await;
    let mut ops_one = subscribe(&s, "vehicles=VEH-G1&types=alerts", OPS).await;
    let ticket = ticket(&s, ACME).await;
    let mut acme = s
        .client
        .get(format!("{}/v1/stream?ticket={ticket}", s.base))
        .send()
        .await
        .expect("stream");
    assert_eq!(acme.status(), Http::OK, "a ticket for EventSource");
    for _ in 0..100 {
        if s.hub.receiver_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.hub.receiver_count(), 3);
    let sent = [
        ev("VEH-A1", Kind::Position, 1),
        ev("VEH-G1", Kind::Position, 2),
        ev("VEH-G1", Kind::Alert, 3),
        ev("VEH-A2", Kind::Incident, 4),
    ];
    for e in &sent {
        s.hub.send(e.clone()).expect("subscribers");
    }
    let got = events(&mut ops_all, 4).await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["position", "position", "alert", "incident"]);
    let got = events(&mut ops_one, 1).await;
    assert_eq!(
        (got[0].0.as_str(), &got[0].1["n"]),
        ("alert", &serde_json::json!(3))
    );
    let got = events(&mut acme, 2).await;
    let ns: Vec<i64> = got.iter().filter_map(|(_, d)| d["n"].as_i64()).collect();
    assert_eq!(ns, [1, 4], "only ACME's vehicles");
    // The next event for the filtered subscriber proves nothing else was queued for it.
    s.hub.send(ev("VEH-G1", Kind::Alert, 5)).expect("send");
    let got = events(&mut ops_one, 1).await;
    assert_eq!(got[0].1["n"], 5);
    let r = s
        .client
        .get(format!("{}/v1/stream?types=windows", s.base))
        .bearer_auth(OPS)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), Http::BAD_REQUEST);
}

#[tokio::test]
async fn a_slow_subscriber_is_told_how_many_events_it_lost() {
    let s = server().await;
    let mut r = subscribe(&s, "", OPS).await;
    while s.hub.receiver_count() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More than the buffer (8192) before the subscriber reads anything.
    for i in 0..9_000 {
        s.hub.send(ev("VEH-A1", Kind::Position, i)).expect("send");
    }
    let got = events(&mut r, 1).await;
    assert_eq!(got[0].0, "lagged");
    assert!(got[0].1["dropped"].as_u64().expect("count") >= 808);
}

async fn ticket(s: &Server, token: &str) -> String {
    let r = s
        .client
        .post(format!("{}/v1/stream/tickets", s.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("ticket");
    assert_eq!(r.status(), Http::OK);
    let v: serde_json::Value = r.json().await.expect("json");
    v["ticket"].as_str().expect("ticket").to_owned()
}

/// Tokens never go in URLs (proxies log them; the map page used to put it there): the stream
/// refuses `?access_token=` and takes a single-use, short-lived ticket instead.
#[tokio::test]
async fn tokens_never_go_in_urls_and_tickets_are_single_use() {
    let s = server_with(|c| c.ticket_ttl = Duration::from_millis(300)).await;
    let get = |q: String| {
        let c = s.client.clone();
        let url = format!("{}/v1/stream?{q}", s.base);
        async move { c.get(url).send().await.expect("request") }
    };
    let r = get(format!("access_token={OPS}")).await;
    assert_eq!(r.status(), Http::BAD_REQUEST);
    assert!(r.text().await.expect("body").contains("token_in_url"));
    let r = s
        .client
        .post(format!("{}/v1/stream/tickets", s.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), Http::UNAUTHORIZED, "a ticket needs the token");
    let t = ticket(&s, ACME).await;
    let first = get(format!("ticket={t}")).await;
    assert_eq!(first.status(), Http::OK);
    assert_eq!(
        get(format!("ticket={t}")).await.status(),
        Http::UNAUTHORIZED,
        "used up"
    );
    let late = ticket(&s, ACME).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(format!("ticket={late}")).await.status(),
        Http::UNAUTHORIZED,
        "expired"
    );
    assert_eq!(
        get("ticket=made-up".into()).await.status(),
        Http::UNAUTHORIZED
    );
    // The map page holds no token-in-URL code path any more.
    assert!(!MAP_PAGE.contains("access_token"));
}

/// Each token has its own request budget: beyond it `429` with `Retry-After`, while another
/// token is served as before.
#[tokio::test]
async fn each_token_has_a_request_budget() {
    let s = server_with(|c| {
        c.rate_per_token = 1.0;
        c.burst_per_token = 5;
    })
    .await;
    let get = |token: &'static str| {
        let c = s.client.clone();
        let url = format!("{}/v1/vehicles/VEH-A1", s.base);
        async move { c.get(url).bearer_auth(token).send().await.expect("request") }
    };
    for _ in 0..5 {
        assert_eq!(get(ACME).await.status(), Http::OK);
    }
    let r = get(ACME).await;
    assert_eq!(r.status(), Http::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(get(OPS).await.status(), Http::OK, "other tokens unaffected");
}

/// A token may hold only `max_streams_per_token` live streams; closing one frees its slot.
#[tokio::test]
async fn live_streams_are_capped_per_token() {
    let s = server_with(|c| c.max_streams_per_token = 2).await;
    let a = subscribe(&s, "", GLOBEX).await;
    let _b = subscribe(&s, "", GLOBEX).await;
    let r = s
        .client
        .get(format!("{}/v1/stream", s.base))
        .bearer_auth(GLOBEX)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), Http::TOO_MANY_REQUESTS);
    let _ops = subscribe(&s, "", OPS).await;
    drop(a);
    // The server notices a closed stream when it next writes to it.
    let mut reopened = false;
    for n in 0..100 {
        let _ = s.hub.send(ev("VEH-G1", Kind::Position, n));
        let r = s
            .client
            .get(format!("{}/v1/stream", s.base))
            .bearer_auth(GLOBEX)
            .send()
            .await
            .expect("request");
        if r.status() == Http::OK {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "a closed stream frees its slot");
}
