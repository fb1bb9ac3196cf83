//! # fleet-api
//!
//! Read side of fleetstream over HTTP, for the operations room, customers and dispatch
//! tools:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/vehicles/{id}` | the vehicle's latest state (`vehicle_state`) and its status |
//! | `GET /v1/vehicles?status=moving\|idle\|offline&limit=&after=` | vehicles, paged by the last id |
//! | `GET /v1/vehicles/{id}/windows?from=&to=` | closed windows (`vehicle_windows`), ms since the epoch |
//! | `GET /v1/incidents?vehicle=&limit=` | a vehicle's incidents, newest first |
//! | `GET /v1/deliveries/{id}` | a delivery: status, ETA, late, delivered_at |
//! | `GET /v1/stream?vehicles=a,b&types=position,alert,incident` | live Server-Sent Events ([`live`]) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of all of this |
//! | `GET /map` | a live map page (no external tiles or scripts) fed by the stream |
//!
//! Reads go to the state store the processors write (`sqlite://` or `scylla://`); the stream
//! follows the Kafka topics. Every `/v1` route needs `Authorization: Bearer <token>`; tokens
//! never go in URLs (proxies log them): browsers' `EventSource`, which cannot set headers,
//! first takes a single-use ticket from `POST /v1/stream/tickets` (valid `ticket_ttl`) and
//! opens `/v1/stream?ticket=...`. Tokens carry a role ([`auth`]): an operator sees every vehicle, a customer only its own
//! (by the `customer_id` of the vehicles' profiles, or vehicles granted to the token), and
//! anything else answers `404` as if it did not exist.
//!
//! ## Limits
//! Each token has a request budget (a token bucket: `rate_per_token` requests/s, bursts of
//! `burst_per_token`; the seed design's 1,000 req/s per client): beyond it the API answers
//! `429` with `Retry-After`. A listing that scans many rows (a customer's
//! `GET /v1/vehicles` filters the whole table) is charged one more request per 1,000 rows
//! scanned. Live streams are capped per token (`max_streams_per_token`) and in total
//! (`max_streams`); outstanding tickets in total (10,000).
//!
//! Vehicle status: `offline` when the last reading is older than `offline_after`, else
//! `moving` at or above `moving_kmh`, else `idle` ([`vehicle_status`]).
//!
//! ## Delivery guarantee
//! None needed: the API only reads. The live stream is best effort by design (a view of
//! "now"; it starts at the topics' end and drops the oldest events for a slow subscriber,
//! saying how many); the durable record is the state store and the topics.
//!
//! ## Example
//! ```
//! use fleet_api::vehicle_status;
//! use fleet_state::VehicleState;
//!
//! let mut s = VehicleState::new("VEH-1", 1_000_000, 4.6, -74.1);
//! s.speed_kmh = Some(42.0);
//! assert_eq!(vehicle_status(&s, 1_010_000, 300_000, 5.0), "moving");
//! assert_eq!(vehicle_status(&s, 2_000_000, 300_000, 5.0), "offline");
//! ```

pub mod auth;
pub mod live;
pub mod openapi;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_runtime::Table;
use fleet_runtime::limit::Bucket;
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_state::{StateStore, Store, VehicleState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use auth::{Principal, Tokens};
use live::{Kind, LiveEvent};

fleet_runtime::config_section! {
    /// fleet-api settings.
    pub struct ApiConfig {
        /// Address the API listens on (plain HTTP; put TLS in front).
        pub listen: String = "127.0.0.1:8090".to_owned(), env = "FLEET_API_LISTEN",
        /// TOML file of bearer tokens with roles (see the `auth` module docs). Required.
        pub tokens_file: String = String::new(), env = "FLEET_API_TOKENS_FILE",
        /// State store URL: sqlite://path or scylla://host:port/keyspace.
        pub state_url: String = "sqlite://.fleet/state.db".to_owned(), env = "FLEET_STATE_URL",
        /// Topic of VehicleProfile records (vehicle -> customer), read as a table ("" = none).
        pub profiles_topic: String = "fleet.vehicle-profiles".to_owned(),
        /// Live stream: TelemetryReading topic ("" = no positions).
        pub telemetry_topic: String = "fleet.telemetry".to_owned(),
        /// Live stream: Anomaly topic ("" = no alerts).
        pub anomalies_topic: String = "fleet.anomalies".to_owned(),
        /// Live stream: EmergencyEvent topic ("" = no incidents).
        pub emergencies_topic: String = "fleet.emergencies".to_owned(),
        /// A vehicle silent for longer is `offline`.
        #[serde(with = "humantime_serde")]
        pub offline_after: Duration = Duration::from_secs(300),
        /// From this speed (km/h) a vehicle is `moving`, below it `idle`.
        pub moving_kmh: f64 = 5.0,
        /// Largest page of `GET /v1/vehicles`.
        pub max_page: usize = 10_000,
        /// Longest range of `GET /v1/vehicles/{id}/windows`.
        #[serde(with = "humantime_serde")]
        pub max_windows_range: Duration = Duration::from_secs(7 * 24 * 3600),
        /// Events buffered per live subscriber before the oldest are dropped.
        pub stream_buffer: usize = 8192,
        /// Requests per second per token (the budget refills at this rate).
        pub rate_per_token: f64 = 1000.0,
        /// Burst of requests per token (the budget's size).
        pub burst_per_token: u32 = 2000,
        /// Live streams one token may hold open at once.
        pub max_streams_per_token: usize = 16,
        /// Live streams open at once in total.
        pub max_streams: usize = 10_000,
        /// How long a stream ticket stays valid (it is single-use).
        #[serde(with = "humantime_serde")]
        pub ticket_ttl: Duration = Duration::from_secs(30),
    }
    validate(c) {
        let bad = |m: String| Err(fleet_runtime::Error::Config(m));
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!("app.listen {:?} is not host:port", c.listen));
        }
        if c.tokens_file.is_empty() {
            return bad("app.tokens_file (FLEET_API_TOKENS_FILE) is required: nobody could read".into());
        }
        if c.max_page == 0 || c.stream_buffer == 0 {
            return bad("app.max_page and app.stream_buffer must be positive".into());
        }
        if c.rate_per_token.is_nan() || c.rate_per_token <= 0.0 || c.burst_per_token == 0 {
            return bad("app.rate_per_token and app.burst_per_token must be positive".into());
        }
        if c.max_streams_per_token == 0 || c.max_streams == 0 || c.ticket_ttl.is_zero() {
            return bad("app.max_streams_per_token, app.max_streams and app.ticket_ttl must be positive".into());
        }
        Ok(())
    }
}

/// `offline`, `moving` or `idle` at `now_ms`.
pub fn vehicle_status(
    s: &VehicleState,
    now_ms: i64,
    offline_after_ms: i64,
    moving_kmh: f64,
) -> &'static str {
    if now_ms - s.event_time > offline_after_ms {
        "offline"
    } else if s.speed_kmh.is_some_and(|v| v >= moving_kmh) {
        "moving"
    } else {
        "idle"
    }
}

/// A vehicle as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleView {
    /// Vehicle id.
    pub vehicle_id: String,
    /// `moving`, `idle` or `offline`.
    pub status: String,
    /// Event time of the last reading, ms.
    pub event_time: i64,
    /// Seconds since that reading.
    pub age_s: f64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Heading, degrees.
    pub heading_deg: Option<f64>,
    /// Cargo temperature, Celsius.
    pub cargo_temp_c: Option<f64>,
    /// Cargo door open.
    pub door_open: Option<bool>,
    /// Ignition on.
    pub ignition_on: Option<bool>,
}

/// The API's shared state.
pub struct Api {
    cfg: ApiConfig,
    tokens: Tokens,
    store: Store,
    /// vehicle -> customer id, from the profiles.
    owners: Table<Option<String>>,
    hub: broadcast::Sender<Arc<LiveEvent>>,
    latency: Vec<(&'static str, Histogram)>,
    /// Per token: request budget and open streams.
    clients: HashMap<String, Arc<Client>>,
    /// Live streams open in total.
    streams: Arc<AtomicUsize>,
    /// Stream tickets: ticket -> (token, expiry ms).
    tickets: Mutex<HashMap<String, (String, i64)>>,
    rate_limited: Counter,
    streams_refused: Counter,
}

/// What the API tracks per token.
#[derive(Debug)]
struct Client {
    bucket: Mutex<Bucket>,
    streams: AtomicUsize,
}

impl Client {
    fn take(&self, n: u32) -> Result<(), u64> {
        let now = now_ms();
        match self.bucket.lock() {
            Ok(mut b) => b.take(n, now),
            // A panic while holding the lock cannot leave the bucket inconsistent.
            Err(poisoned) => poisoned.into_inner().take(n, now),
        }
    }

    fn charge(&self, n: u32) {
        let now = now_ms();
        match self.bucket.lock() {
            Ok(mut b) => b.charge(n, now),
            Err(poisoned) => poisoned.into_inner().charge(n, now),
        }
    }
}

/// One open live stream, counted per token and in total until it is dropped (the client
/// went away).
#[derive(Debug)]
struct StreamSlot {
    client: Arc<Client>,
    total: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.client.streams.fetch_sub(1, Ordering::Relaxed);
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most stream tickets outstanding at once.
const MAX_TICKETS: usize = 10_000;

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// A JSON error answer.
fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    let mut r = (
        status,
        Json(serde_json::json!({"error": code, "detail": detail})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Why a request was not served.
#[derive(Debug, Clone, Copy)]
enum Denied {
    /// No known token.
    Unauthorized,
    /// The token's budget is spent; enough again in this many ms.
    RateLimited(u64),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => unauthorized(),
            Denied::RateLimited(wait_ms) => too_many_requests(wait_ms),
        }
    }
}

fn too_many_requests(wait_ms: u64) -> Response {
    let secs = if wait_ms == u64::MAX {
        60
    } else {
        wait_ms.div_ceil(1000).max(1)
    };
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this token's request budget is spent; retry after the Retry-After seconds",
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid `Authorization: Bearer <token>` header is required",
    )
}

fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", what)
}

fn unavailable(e: &fleet_state::Error) -> Response {
    tracing::warn!(error = %e, "state store read failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the state store did not answer; retry",
    )
}

fn bad_query(e: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_query", &e.body_text())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VehiclesQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsQuery {
    from: Option<i64>,
    to: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentsQuery {
    vehicle: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    vehicles: Option<String>,
    types: Option<String>,
    /// Refused with a clear answer: tokens never go in URLs.
    access_token: Option<String>,
    ticket: Option<String>,
}

const STATUSES: [&str; 3] = ["moving", "idle", "offline"];
/// Rows read per store page while filtering a listing.
const SCAN_PAGE: usize = 1_000;
/// Most rows one listing request scans (then it answers with a cursor).
const MAX_SCAN: usize = 100_000;

impl Api {
    /// The API over `store`, with `owners` (vehicle -> customer) and the live `hub`.
    pub fn new(
        cfg: ApiConfig,
        tokens: Tokens,
        store: Store,
        owners: Table<Option<String>>,
        hub: broadcast::Sender<Arc<LiveEvent>>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let latency = ["vehicle", "vehicles", "windows", "incidents", "delivery"]
            .into_iter()
            .map(|r| (r, metrics.latency(&format!("api_{r}"))))
            .collect();
        let clients = tokens
            .iter()
            .map(|(t, _)| {
                let c = Client {
                    bucket: Mutex::new(Bucket::new(
                        cfg.rate_per_token,
                        cfg.burst_per_token,
                        now_ms(),
                    )),
                    streams: AtomicUsize::new(0),
                };
                (t.to_owned(), Arc::new(c))
            })
            .collect();
        Arc::new(Self {
            cfg,
            tokens,
            store,
            owners,
            hub,
            latency,
            clients,
            streams: Arc::new(AtomicUsize::new(0)),
            tickets: Mutex::new(HashMap::new()),
            rate_limited: metrics.records("api", "rate_limited"),
            streams_refused: metrics.records("api", "stream_refused"),
        })
    }

    /// A broadcast channel for the live stream, sized by the config.
    pub fn hub(cfg: &ApiConfig) -> broadcast::Sender<Arc<LiveEvent>> {
        broadcast::channel(cfg.stream_buffer).0
    }

    /// Every route.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/vehicles", get(vehicles))
            .route("/v1/vehicles/{id}", get(vehicle))
            .route("/v1/vehicles/{id}/windows", get(windows))
            .route("/v1/incidents", get(incidents))
            .route("/v1/deliveries/{id}", get(delivery))
            .route("/v1/stream", get(stream))
            .route("/v1/stream/tickets", post(ticket))
            .route("/openapi.json", get(|| async { Json(openapi::document()) }))
            .route("/map", get(|| async { Html(MAP_PAGE) }))
            .route(
                "/",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/map")]) }),
            )
            .with_state(self.clone())
    }

    fn observe(&self, route: &str, started: Instant) {
        if let Some((_, h)) = self.latency.iter().find(|(r, _)| *r == route) {
            h.observe(started.elapsed().as_secs_f64());
        }
    }

    /// The principal of `token`, charged one request: `401` without a known token, `429`
    /// (with `Retry-After`) when its budget is spent.
    fn authorize(&self, token: Option<&str>) -> Result<(Arc<Principal>, Arc<Client>), Denied> {
        let token = token.ok_or(Denied::Unauthorized)?;
        let (Some(p), Some(c)) = (self.tokens.get(token), self.clients.get(token)) else {
            return Err(Denied::Unauthorized);
        };
        if let Err(wait_ms) = c.take(1) {
            self.rate_limited.inc();
            return Err(Denied::RateLimited(wait_ms));
        }
        Ok((p.clone(), c.clone()))
    }

    /// A single-use ticket for `token`'s next live stream.
    fn issue_ticket(&self, token: &str) -> Option<String> {
        let now = now_ms();
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        if tickets.len() >= MAX_TICKETS {
            tickets.retain(|_, (_, expires)| *expires > now);
            if tickets.len() >= MAX_TICKETS {
                return None;
            }
        }
        let ticket = uuid::Uuid::new_v4().simple().to_string();
        let ttl = i64::try_from(self.cfg.ticket_ttl.as_millis()).unwrap_or(i64::MAX);
        tickets.insert(ticket.clone(), (token.to_owned(), now.saturating_add(ttl)));
        Some(ticket)
    }

    /// The token a ticket was issued for, if it is valid; the ticket is used up either way.
    fn redeem_ticket(&self, ticket: &str) -> Option<String> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let (token, expires) = tickets.remove(ticket)?;
        (expires > now_ms()).then_some(token)
    }

    /// A slot for one more live stream of `client`, if neither cap is reached.
    fn open_stream(&self, client: &Arc<Client>) -> Option<StreamSlot> {
        if self.streams.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_streams {
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if client.streams.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_streams_per_token {
            client.streams.fetch_sub(1, Ordering::Relaxed);
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(StreamSlot {
            client: client.clone(),
            total: self.streams.clone(),
        })
    }

    fn sees(&self, p: &Principal, vehicle: &str) -> bool {
        match p.role {
            auth::Role::Operator => true,
            auth::Role::Customer => {
                let owner = self.owners.get(vehicle);
                p.sees(vehicle, owner.as_deref().and_then(Option::as_deref))
            }
        }
    }

    fn view(&self, s: VehicleState, now: i64) -> VehicleView {
        let offline_ms = i64::try_from(self.cfg.offline_after.as_millis()).unwrap_or(i64::MAX);
        VehicleView {
            status: vehicle_status(&s, now, offline_ms, self.cfg.moving_kmh).to_owned(),
            age_s: (now - s.event_time) as f64 / 1000.0,
            vehicle_id: s.vehicle_id,
            event_time: s.event_time,
            lat: s.lat,
            lon: s.lon,
            speed_kmh: s.speed_kmh,
            heading_deg: s.heading_deg,
            cargo_temp_c: s.cargo_temp_c,
            door_open: s.door_open,
            ignition_on: s.ignition_on,
        }
    }
}

type ApiState = State<Arc<Api>>;

async fn vehicle(State(api): ApiState, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let started = Instant::now();
    let (p, _) = match api.authorize(bearer(&headers)) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    if !api.sees(&p, &id) {
        return not_found("no such vehicle");
    }
    let now = now_ms();
    let r = match api.store.vehicle_state(&id, now).await {
        Ok(Some(s)) => Json(api.view(s, now)).into_response(),
        Ok(None) => not_found("no such vehicle"),
        Err(e) => unavailable(&e),
    };
    api.observe("vehicle", started);
    r
}

async fn vehicles(
    State(api): ApiState,
    headers: HeaderMap,
    q: Result<Query<VehiclesQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let (p, client) = match api.authorize(bearer(&headers)) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    if let Some(s) = q.status.as_deref()
        && !STATUSES.contains(&s)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "status must be moving, idle or offline",
        );
    }
    let limit = q.limit.unwrap_or(100).clamp(1, api.cfg.max_page);
    let now = now_ms();
    let mut after = q.after.unwrap_or_default();
    let mut out = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    'scan: while scanned < MAX_SCAN {
        let page = match api.store.vehicle_states(&after, SCAN_PAGE, now).await {
            Ok(page) => page,
            Err(e) => return unavailable(&e),
        };
        if page.len() < SCAN_PAGE {
            exhausted = true;
        }
        for s in page {
            scanned += 1;
            after.clone_from(&s.vehicle_id);
            if !api.sees(&p, &s.vehicle_id) {
                continue;
            }
            let v = api.view(s, now);
            if q.status.as_deref().is_none_or(|want| v.status == want) {
                out.push(v);
                if out.len() == limit {
                    break 'scan;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    let next = (!exhausted || out.len() == limit).then_some(after);
    // A scan costs one more request per page read beyond the first.
    let pages = scanned.div_ceil(SCAN_PAGE);
    if pages > 1 {
        client.charge(u32::try_from(pages - 1).unwrap_or(u32::MAX));
    }
    api.observe("vehicles", started);
    Json(serde_json::json!({"vehicles": out, "next_after": next})).into_response()
}

async fn windows(
    State(api): ApiState,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<WindowsQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let (p, _) = match api.authorize(bearer(&headers)) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    if !api.sees(&p, &id) {
        return not_found("no such vehicle");
    }
    let now = now_ms();
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - 3_600_000);
    let max = i64::try_from(api.cfg.max_windows_range.as_millis()).unwrap_or(i64::MAX);
    if from >= to || to - from > max {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_range",
            &format!("need from < to and a range of at most {max} ms"),
        );
    }
    let r = match api.store.windows(&id, from, to, now).await {
        Ok(w) => Json(serde_json::json!({"vehicle_id": id, "from": from, "to": to, "windows": w}))
            .into_response(),
        Err(e) => unavailable(&e),
    };
    api.observe("windows", started);
    r
}

async fn incidents(
    State(api): ApiState,
    headers: HeaderMap,
    q: Result<Query<IncidentsQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let (p, _) = match api.authorize(bearer(&headers)) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let Some(vehicle) = q.vehicle else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "vehicle is required (incidents are kept per vehicle)",
        );
    };
    if !api.sees(&p, &vehicle) {
        return Json(serde_json::json!({"vehicle_id": vehicle, "incidents": []})).into_response();
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1_000);
    let r = match api.store.incidents_for_vehicle(&vehicle, limit).await {
        Ok(list) => {
            Json(serde_json::json!({"vehicle_id": vehicle, "incidents": list})).into_response()
        }
        Err(e) => unavailable(&e),
    };
    api.observe("incidents", started);
    r
}

async fn delivery(State(api): ApiState, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let started = Instant::now();
    let (p, _) = match api.authorize(bearer(&headers)) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    let r = match api.store.delivery(&id).await {
        Ok(Some(d)) if api.sees(&p, &d.vehicle_id) => Json(d).into_response(),
        Ok(_) => not_found("no such delivery"),
        Err(e) => unavailable(&e),
    };
    api.observe("delivery", started);
    r
}

/// What one subscriber wants.
struct Filter {
    vehicles: HashSet<String>,
    kinds: HashSet<Kind>,
    principal: Arc<Principal>,
    /// Released when the stream is dropped.
    _slot: StreamSlot,
}

async fn stream(
    State(api): ApiState,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    if q.access_token.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "token_in_url",
            "tokens never go in URLs (proxies and servers log them): send `Authorization: \
             Bearer <token>`, or get a single-use ticket from POST /v1/stream/tickets and pass \
             `?ticket=`",
        );
    }
    let redeemed;
    let token = match q.ticket.as_deref() {
        Some(t) => match api.redeem_ticket(t) {
            Some(token) => {
                redeemed = token;
                Some(redeemed.as_str())
            }
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "bad_ticket",
                    "unknown, expired or already used ticket: get a new one from POST /v1/stream/tickets",
                );
            }
        },
        None => bearer(&headers),
    };
    let (p, client) = match api.authorize(token) {
        Ok(pc) => pc,
        Err(d) => return d.into_response(),
    };
    let Some(slot) = api.open_stream(&client) else {
        api.streams_refused.inc();
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "too many live streams open for this token (or in total); close one first",
        );
    };
    let mut kinds = HashSet::new();
    for t in q
        .types
        .as_deref()
        .unwrap_or("position,alert,incident")
        .split(',')
    {
        match Kind::parse(t) {
            Some(k) => {
                kinds.insert(k);
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    &format!("unknown type {t:?}: use position, alert, incident"),
                );
            }
        }
    }
    let vehicles: HashSet<String> = q
        .vehicles
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let filter = Filter {
        vehicles,
        kinds,
        principal: p,
        _slot: slot,
    };
    let rx = api.hub.subscribe();
    let events = futures::stream::unfold(
        (rx, filter, api.clone()),
        |(mut rx, filter, api)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if !filter.kinds.contains(&ev.kind)
                            || (!filter.vehicles.is_empty()
                                && !filter.vehicles.contains(&ev.vehicle_id))
                            || !api.sees(&filter.principal, &ev.vehicle_id)
                        {
                            continue;
                        }
                        let e = Event::default().event(ev.kind.name()).data(&ev.json);
                        return Some((Ok::<_, Infallible>(e), (rx, filter, api)));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = Event::default()
                            .event("lagged")
                            .data(format!("{{\"dropped\":{n}}}"));
                        return Some((Ok(e), (rx, filter, api)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    // A comment first, so that clients (and proxies) see the stream open at once.
    let hello = futures::stream::once(async { Ok(Event::default().comment("fleetstream live")) });
    use futures::StreamExt as _;
    Sse::new(hello.chain(events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `POST /v1/stream/tickets`: a single-use ticket for one live stream.
async fn ticket(State(api): ApiState, headers: HeaderMap) -> Response {
    let token = bearer(&headers);
    if let Err(d) = api.authorize(token) {
        return d.into_response();
    }
    let Some(t) = token.and_then(|t| api.issue_ticket(t)) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tickets",
            "too many stream tickets outstanding; retry shortly",
        );
    };
    Json(serde_json::json!({"ticket": t, "expires_in_s": api.cfg.ticket_ttl.as_secs()}))
        .into_response()
}

/// The live map page.
pub const MAP_PAGE: &str = include_str!("map.html");

#[cfg(test)]
mod tests;
