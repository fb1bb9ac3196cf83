//! # http-ingest: the door for drivers' phone apps
//!
//! ```text
//! POST /v1/telemetry    ─┐                               ┌─> fleet.telemetry    (key = vehicle id)
//! POST /v1/deliveries   ─┼─ Bearer token ─> http-ingest ─┼─> fleet.deliveries   (key = delivery id)
//! POST /v1/emergencies  ─┘   (JSON: one record or [..]) ├─> fleet.emergencies  (latency producer)
//!                                                        └─> fleet.dlq          (rejected records: reason, original bytes)
//! ```
//!
//! The body is one JSON record or an array of them (at most `app.max_batch_records`), in the
//! payload contract of [`fleet_ingest`] (the same validation as the MQTT bridge, through the
//! same function). `ingest_time` is the receive time; `source` is `http`.
//!
//! ## Answers
//! | status | when | body |
//! |---|---|---|
//! | 202 | every record is in Kafka (acknowledged, `acks=all`) | `{"accepted": n, "event_ids": [..]}` |
//! | 400 | some records were rejected (the others are in Kafka); or the body is not JSON | `{"error", "accepted", "rejected": [{"index", "reason", "field", "detail"}]}` |
//! | 401 | no or unknown bearer token | `{"error": "unauthorized"}` + `WWW-Authenticate: Bearer` |
//! | 403 | every rejected record names a vehicle the token may not report for | as 400 |
//! | 413 | body over `app.max_body_bytes` or more than `app.max_batch_records` records | `{"error": "too_large"}` |
//! | 429 | the token's records-per-second budget is spent | `{"error": "rate_limited"}` + `Retry-After` (s) |
//! | 503 | Kafka did not confirm in time | `{"error": "unavailable"}` + `Retry-After`; nothing to undo: re-send |
//!
//! ## Delivery guarantee
//! **At least once.** `202` is sent only after Kafka acknowledged every record of the request
//! (and the dead letter of every rejected one). A client that gets no answer, a 503, or loses
//! the connection re-sends; records carry the app's `eventId` (or one derived from the exact
//! payload), so the duplicates a re-send may create are removed downstream by `event_id`.
//! Rejected records are never lost: each is written to `fleet.dlq` with its reason, the route
//! and its original bytes before the answer goes out.
//!
//! ## Security
//! Tokens come from a file ([`auth`]); a token bound to one vehicle can only report for it, a
//! token listing several only for those (others: `vehicle_id_mismatch`, 403, dead-lettered).
//! Terminate TLS in front of it (a load balancer or reverse proxy): the listener speaks plain
//! HTTP/1.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use fleet_ingest::{Identity, Kind, Limits, Parsed, Rejection};
use fleet_runtime::kafka;
use fleet_runtime::metrics::{Metrics, now_ms};
use fleet_schemas::{
    DeadLetter, DeliveryEvent, EmergencyEvent, Encoder, Record, TelemetryReading, ids,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::producer::FutureProducer;
use serde_json::json;

pub mod auth;
pub mod batch;

use auth::{Principal, Tokens};

const COMPONENT: &str = "http-ingest";

fleet_runtime::config_section! {
    /// http-ingest settings.
    pub struct HttpIngestConfig {
        /// Address the API listens on (plain HTTP; put TLS in front).
        pub listen: String = "127.0.0.1:8088".to_owned(), env = "FLEET_HTTP_INGEST_LISTEN",
        /// TOML file of bearer tokens (see the `auth` module docs). Required.
        pub tokens_file: String = String::new(), env = "FLEET_HTTP_TOKENS_FILE",
        /// Records per second each token may send (unless its entry says otherwise).
        pub rate_per_token: f64 = 50.0,
        /// Token bucket size per token, records (at least `max_batch_records`).
        pub burst_per_token: u32 = 1000,
        /// Largest request body, bytes.
        pub max_body_bytes: usize = 1024 * 1024,
        /// Most records in one request.
        pub max_batch_records: u32 = 500,
        /// Largest single record, bytes.
        pub max_record_bytes: usize = 64 * 1024,
        /// How far in the future a device timestamp may be.
        #[serde(with = "humantime_serde")]
        pub max_future_skew: Duration = Duration::from_secs(300),
        /// How old a device timestamp may be (apps buffer while offline).
        #[serde(with = "humantime_serde")]
        pub max_age: Duration = Duration::from_secs(7 * 24 * 3600),
        /// How long a request waits for Kafka's acknowledgements before answering 503.
        #[serde(with = "humantime_serde")]
        pub kafka_timeout: Duration = Duration::from_secs(10),
        /// Kafka topic for TelemetryReading records.
        pub telemetry_topic: String = "fleet.telemetry".to_owned(),
        /// Kafka topic for DeliveryEvent records.
        pub deliveries_topic: String = "fleet.deliveries".to_owned(),
        /// Kafka topic for EmergencyEvent records (fast lane).
        pub emergencies_topic: String = "fleet.emergencies".to_owned(),
    }
    validate(c) {
        let bad = |m: String| Err(fleet_runtime::Error::Config(m));
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!("app.listen {:?} is not host:port", c.listen));
        }
        if c.tokens_file.is_empty() {
            return bad("app.tokens_file (FLEET_HTTP_TOKENS_FILE) is required: nobody could send".into());
        }
        if !(c.rate_per_token.is_finite() && c.rate_per_token > 0.0) {
            return bad("app.rate_per_token must be positive".into());
        }
        if c.max_batch_records == 0 || c.burst_per_token < c.max_batch_records {
            return bad("app.max_batch_records must be >= 1 and <= app.burst_per_token".into());
        }
        if c.max_record_bytes == 0 || c.max_body_bytes < c.max_record_bytes {
            return bad("app.max_record_bytes must be >= 1 and <= app.max_body_bytes".into());
        }
        Ok(())
    }
}

impl HttpIngestConfig {
    /// The per-record limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_record_bytes,
            max_future_skew_ms: self.max_future_skew.as_millis() as i64,
            max_age_ms: self.max_age.as_millis() as i64,
        }
    }
}

/// Encoders the API needs, registered by the caller.
#[derive(Debug)]
pub struct Encoders {
    /// TelemetryReading.
    pub telemetry: Encoder<TelemetryReading>,
    /// DeliveryEvent.
    pub deliveries: Encoder<DeliveryEvent>,
    /// EmergencyEvent.
    pub emergencies: Encoder<EmergencyEvent>,
    /// DeadLetter.
    pub dlq: Encoder<DeadLetter>,
}

/// Kafka producers: bulk (telemetry, deliveries, dead letters) and fast (emergencies).
#[derive(Clone)]
pub struct Producers {
    /// Throughput producer.
    pub bulk: FutureProducer,
    /// Latency producer (linger 0).
    pub fast: FutureProducer,
}

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producers")
    }
}

/// The API's shared state.
#[derive(Debug)]
pub struct Api {
    cfg: HttpIngestConfig,
    limits: Limits,
    tokens: Tokens,
    producers: Producers,
    enc: Encoders,
    dlq_topic: String,
    metrics: Arc<Metrics>,
    accepted: [Counter; 3],
    requests_rejected: [(&'static str, Counter); 4],
    latency: Histogram,
}

/// Why a request could not be completed (answered 503 or 500).
#[derive(Debug)]
enum Fail {
    /// Kafka did not confirm (re-send).
    Unavailable(String),
    /// A record could not be encoded with its registered schema (a bug).
    Internal(String),
}

/// Why a record was refused, with its index in the request.
struct Refused {
    index: usize,
    rejection: Rejection,
}

impl Api {
    /// Wires the API.
    pub fn new(
        cfg: HttpIngestConfig,
        tokens: Tokens,
        producers: Producers,
        enc: Encoders,
        dlq_topic: &str,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let accepted = [
            metrics.records(&cfg.telemetry_topic, "ok"),
            metrics.records(&cfg.deliveries_topic, "ok"),
            metrics.records(&cfg.emergencies_topic, "ok"),
        ];
        let requests_rejected = ["unauthorized", "too_large", "rate_limited", "unavailable"]
            .map(|r| (r, metrics.records("http_requests", r)));
        Arc::new(Self {
            limits: cfg.limits(),
            latency: metrics.latency("http_to_kafka_ack"),
            cfg,
            tokens,
            producers,
            enc,
            dlq_topic: dlq_topic.to_owned(),
            metrics,
            accepted,
            requests_rejected,
        })
    }

    /// The routes: `POST /v1/telemetry`, `/v1/deliveries`, `/v1/emergencies`.
    pub fn router(self: &Arc<Self>) -> Router {
        let route = |kind: Kind| {
            move |State(api): State<Arc<Api>>, headers: HeaderMap, body: Body| async move {
                api.handle(kind, &headers, body).await
            }
        };
        Router::new()
            .route("/v1/telemetry", post(route(Kind::Telemetry)))
            .route("/v1/deliveries", post(route(Kind::Delivery)))
            .route("/v1/emergencies", post(route(Kind::Emergency)))
            .with_state(self.clone())
    }

    fn count(&self, what: &str) {
        if let Some((_, c)) = self.requests_rejected.iter().find(|(r, _)| *r == what) {
            c.inc();
        }
    }

    async fn handle(&self, kind: Kind, headers: &HeaderMap, body: Body) -> Response {
        let started = Instant::now();
        let Some(principal) = bearer(headers).and_then(|t| self.tokens.get(t)) else {
            self.count("unauthorized");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        };
        let too_large = |what: String| {
            self.count("too_large");
            error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &what)
        };
        let body = match axum::body::to_bytes(body, self.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(_) => {
                return too_large(format!(
                    "the body is larger than {} bytes",
                    self.cfg.max_body_bytes
                ));
            }
        };
        let split = batch::split(&body);
        // Every record counts against the token's budget, a body that does not split as one
        // (its dead letter is a write too).
        let n = split.as_ref().map_or(1, Vec::len);
        if n > self.cfg.max_batch_records as usize {
            return too_large(format!(
                "{n} records in one request; at most {}",
                self.cfg.max_batch_records
            ));
        }
        let now = now_ms();
        if let Err(wait_ms) = principal.take(n as u32, now) {
            self.count("rate_limited");
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this token's records-per-second budget is spent",
            );
            let secs = wait_ms.div_ceil(1000).clamp(1, 3600);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        let records = match split {
            Ok(r) => r,
            Err(e) => {
                // Not even splittable: one dead letter for the whole body.
                let rejection = Rejection {
                    reason: fleet_ingest::Reason::InvalidJson,
                    field: None,
                    detail: e.to_string(),
                };
                let refused = [Refused {
                    index: 0,
                    rejection,
                }];
                let written = self
                    .bounded(self.dead_letters(kind, principal, &[&body], &refused))
                    .await;
                return match written {
                    Ok(()) => rejected_answer(0, &refused),
                    Err(f) => self.fail(f),
                };
            }
        };
        match self
            .bounded(self.write(kind, principal, &records, now))
            .await
        {
            Ok((event_ids, refused)) => {
                self.latency.observe(started.elapsed().as_secs_f64());
                self.metrics.health.progress(now_ms());
                if refused.is_empty() {
                    (
                        StatusCode::ACCEPTED,
                        axum::Json(json!({"accepted": event_ids.len(), "event_ids": event_ids})),
                    )
                        .into_response()
                } else {
                    rejected_answer(event_ids.len(), &refused)
                }
            }
            Err(f) => self.fail(f),
        }
    }

    /// Every Kafka wait of a request, bounded by `kafka_timeout` in total: queueing while
    /// librdkafka's queue is full (Kafka down) included, so a request never hangs past it.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Fail>>,
    ) -> Result<T, Fail> {
        tokio::time::timeout(self.cfg.kafka_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(Fail::Unavailable(format!(
                    "Kafka did not take the records within {:?}",
                    self.cfg.kafka_timeout
                )))
            })
    }

    fn fail(&self, f: Fail) -> Response {
        match f {
            Fail::Unavailable(why) => {
                self.count("unavailable");
                tracing::error!(error = %why, "Kafka write failed; answering 503");
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event store did not confirm the write; re-send",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            Fail::Internal(why) => {
                tracing::error!(error = %why, "request failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "encoding failed",
                )
            }
        }
    }

    /// Validates and produces every record (rejected ones as dead letters), then waits for
    /// Kafka's acknowledgement of all of them.
    async fn write(
        &self,
        kind: Kind,
        principal: &Principal,
        records: &[&[u8]],
        now: i64,
    ) -> Result<(Vec<String>, Vec<Refused>), Fail> {
        let who = Identity {
            vehicle_id: principal.bound_vehicle(),
            source: "http",
        };
        let mut buf = Vec::with_capacity(512);
        let mut pending = Vec::with_capacity(records.len());
        let mut event_ids = Vec::with_capacity(records.len());
        let mut refused = Vec::new();
        let mut refused_bytes: Vec<&[u8]> = Vec::new();
        for (index, raw) in records.iter().enumerate() {
            let parsed = fleet_ingest::parse(kind, raw, &who, now, &self.limits)
                .and_then(|p| scope(p, principal));
            let (producer, topic, key) = match parsed {
                Ok(Parsed::Telemetry(r)) => {
                    self.encode(&self.enc.telemetry, &r, &mut buf)?;
                    event_ids.push(r.event_id);
                    (
                        &self.producers.bulk,
                        &self.cfg.telemetry_topic,
                        r.vehicle_id,
                    )
                }
                Ok(Parsed::Delivery(r)) => {
                    self.encode(&self.enc.deliveries, &r, &mut buf)?;
                    event_ids.push(r.event_id);
                    (
                        &self.producers.bulk,
                        &self.cfg.deliveries_topic,
                        r.delivery_id,
                    )
                }
                Ok(Parsed::Emergency(r)) => {
                    self.encode(&self.enc.emergencies, &r, &mut buf)?;
                    event_ids.push(r.event_id);
                    (
                        &self.producers.fast,
                        &self.cfg.emergencies_topic,
                        r.vehicle_id,
                    )
                }
                Err(rejection) => {
                    refused.push(Refused { index, rejection });
                    refused_bytes.push(raw);
                    continue;
                }
            };
            let fut = kafka::send(producer, topic, Some(key.as_bytes()), Some(&buf))
                .await
                .map_err(|e| Fail::Unavailable(e.to_string()))?;
            pending.push(fut);
        }
        self.dead_letters(kind, principal, &refused_bytes, &refused)
            .await?;
        self.await_all(pending).await?;
        let counter = match kind {
            Kind::Telemetry => &self.accepted[0],
            Kind::Delivery => &self.accepted[1],
            Kind::Emergency => &self.accepted[2],
        };
        counter.inc_by(event_ids.len() as u64);
        Ok((event_ids, refused))
    }

    /// Writes a dead letter per refused record (`raw[i]` belongs to `refused[i]`) and waits
    /// for Kafka.
    async fn dead_letters(
        &self,
        kind: Kind,
        principal: &Principal,
        raw: &[&[u8]],
        refused: &[Refused],
    ) -> Result<(), Fail> {
        if refused.is_empty() {
            return Ok(());
        }
        let route = route_of(kind);
        let now = now_ms();
        let mut pending = Vec::with_capacity(refused.len());
        let mut buf = Vec::with_capacity(512);
        for (r, bytes) in refused.iter().zip(raw) {
            let reason = r.rejection.reason.code();
            self.metrics.dead_letters(reason).inc();
            tracing::warn!(reason, detail = %r.rejection.detail, field = ?r.rejection.field, route, driver = %principal.driver_id, bytes = bytes.len(), "record rejected to the dead-letter topic");
            let text = String::from_utf8_lossy(bytes);
            let detail = match &r.rejection.field {
                Some(f) => format!("{} (field {f})", r.rejection.detail),
                None => r.rejection.detail.clone(),
            };
            let dl = DeadLetter {
                event_id: ids::derived_id(&[COMPONENT, route, &principal.driver_id, &text]),
                reason: reason.to_owned(),
                detail,
                component: COMPONENT.to_owned(),
                source_system: "http".to_owned(),
                source_topic: route.to_owned(),
                source_partition: None,
                source_offset: None,
                source_key: Some(principal.driver_id.clone().into_bytes()),
                original: None,
                event_time: now,
                ingest_time: now,
                original_size: None,
                original_sha256: None,
            }
            .with_original(Some(bytes));
            self.encode(&self.enc.dlq, &dl, &mut buf)?;
            let fut = kafka::send(
                &self.producers.bulk,
                &self.dlq_topic,
                dl.source_key.as_deref(),
                Some(&buf),
            )
            .await
            .map_err(|e| Fail::Unavailable(e.to_string()))?;
            pending.push(fut);
        }
        self.await_all(pending).await
    }

    async fn await_all(&self, pending: Vec<rdkafka::producer::DeliveryFuture>) -> Result<(), Fail> {
        let all = futures::future::join_all(pending);
        match tokio::time::timeout(self.cfg.kafka_timeout, all).await {
            Err(_) => Err(Fail::Unavailable(
                "Kafka did not acknowledge in time".into(),
            )),
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => return Err(Fail::Unavailable(e.to_string())),
                        Err(_) => {
                            return Err(Fail::Unavailable(
                                "the producer dropped a delivery".into(),
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn encode<T: Record>(
        &self,
        enc: &Encoder<T>,
        record: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        enc.encode_into(record, buf)
            .map_err(|e| Fail::Internal(format!("encoding {}: {e}", T::FULL_NAME)))
    }
}

/// The token's scope: a record for a vehicle it may not report for is a mismatch; a delivery
/// without a driver gets the token's.
fn scope(parsed: Parsed, principal: &Principal) -> Result<Parsed, Rejection> {
    let vehicle = match &parsed {
        Parsed::Telemetry(r) => &r.vehicle_id,
        Parsed::Delivery(r) => &r.vehicle_id,
        Parsed::Emergency(r) => &r.vehicle_id,
    };
    if !principal.may_report(vehicle) {
        return Err(Rejection {
            reason: fleet_ingest::Reason::VehicleIdMismatch,
            field: Some("vehicleId".into()),
            detail: format!("this token may not report for vehicle {vehicle:?}"),
        });
    }
    Ok(match parsed {
        Parsed::Delivery(mut d) => {
            if d.driver_id.is_none() {
                d.driver_id = Some(principal.driver_id.clone());
            }
            // Only a dispatch client (a token not bound to vehicles) may move a delivery to
            // another vehicle; the processor checks this mark, which no payload can set.
            d.reassigned_by = principal.is_dispatch().then(|| principal.driver_id.clone());
            Parsed::Delivery(d)
        }
        other => other,
    })
}

fn route_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Telemetry => "/v1/telemetry",
        Kind::Delivery => "/v1/deliveries",
        Kind::Emergency => "/v1/emergencies",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    (status, axum::Json(json!({"error": code, "detail": detail}))).into_response()
}

fn rejected_answer(accepted: usize, refused: &[Refused]) -> Response {
    let all_scope = refused
        .iter()
        .all(|r| r.rejection.reason == fleet_ingest::Reason::VehicleIdMismatch);
    let status = if all_scope {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    let rejected: Vec<_> = refused
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "reason": r.rejection.reason.code(),
                "field": r.rejection.field,
                "detail": r.rejection.detail,
            })
        })
        .collect();
    let code = if all_scope {
        "forbidden"
    } else {
        "invalid_records"
    };
    (
        status,
        axum::Json(json!({"error": code, "accepted": accepted, "rejected": rejected})),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
