//! # fleet-dev-registry
//!
//! A small Confluent-compatible schema registry for the local stack and tests. No Confluent
//! registry installs on the project's machines (no Docker, no Maven Central), so this serves the
//! REST subset that clients such as `schema_registry_converter` and the Confluent serializers
//! use; `docker-compose.yml` runs Confluent's real registry instead.
//!
//! ## What it does
//! * `POST /subjects/{s}/versions`: register (Avro only). Idempotent: the same schema under the
//!   same subject returns the same id and creates no version; the same schema under another
//!   subject reuses its global id. Ids are global, dense from 1 and never reused.
//! * `POST /subjects/{s}`: look a schema up under a subject.
//! * `GET /schemas/ids/{id}`, `GET /schemas/ids/{id}/versions`, `GET /schemas/types`.
//! * `GET /subjects`, `GET /subjects/{s}/versions`, `GET /subjects/{s}/versions/{v|latest}`,
//!   `GET /subjects/{s}/versions/{v}/schema`, `DELETE /subjects/{s}` (soft),
//!   `DELETE /subjects/{s}/versions/{v}` (soft).
//! * `GET|PUT /config`, `GET|PUT /config/{s}`: compatibility level (`NONE`, `BACKWARD` (default),
//!   `BACKWARD_TRANSITIVE`, `FORWARD`, `FORWARD_TRANSITIVE`, `FULL`, `FULL_TRANSITIVE`), checked on
//!   register with Avro schema resolution rules; an incompatible schema is answered `409` with
//!   Confluent's error JSON (`{"error_code":409,"message":...}`).
//! * `POST /compatibility/subjects/{s}/versions/{v}`: `{"is_compatible": bool}`.
//! * Persistence: every change is written to `<data_dir>/registry.json` (write to a temporary
//!   file, fsync, rename) before it is answered, so ids survive a restart or a crash.
//!
//! ## Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! let state = fleet_dev_registry::RegistryState::open("/tmp/registry-data".as_ref())?;
//! fleet_dev_registry::serve(listener, state, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod compat;
mod store;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub use compat::Level;
pub use store::{Store, StoreError};

/// Shared state of a running registry.
#[derive(Debug, Clone)]
pub struct RegistryState {
    store: Arc<Mutex<Store>>,
}

impl RegistryState {
    /// Opens (or creates) the registry persisted under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Arc::new(Mutex::new(Store::open(data_dir)?)),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut guard = match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: RegistryState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The HTTP routes, for embedding.
pub fn router(state: RegistryState) -> Router {
    Router::new()
        .route("/", get(|| async { Json(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route(
            "/subjects/{subject}",
            post(lookup_schema).delete(delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/schemas/ids/{id}/schema", get(get_raw_by_id))
        .route("/schemas/ids/{id}/versions", get(get_id_versions))
        .route("/schemas/types", get(|| async { Json(json!(["AVRO"])) }))
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .with_state(state)
}

/// An error answered in Confluent's JSON shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }
    fn schema_not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        with_content_type((self.status, Json(body)).into_response())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidSchema(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, m),
            StoreError::UnsupportedType(t) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("Schema type {t} is not supported by this registry (AVRO only)"),
            ),
            StoreError::Incompatible { level, details } => Self::new(
                StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject, \
                     compatibility level {level}; details: {details}"
                ),
            ),
            StoreError::SubjectNotFound(s) => Self::subject_not_found(&s),
            StoreError::VersionNotFound(v) => Self::version_not_found(&v),
            StoreError::InvalidLevel(l) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42203,
                format!("Invalid compatibility level {l}"),
            ),
            StoreError::Io(_) | StoreError::Corrupt(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                50001,
                format!("Error in the backend data store: {e}"),
            ),
        }
    }
}

fn with_content_type(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.schemaregistry.v1+json"),
    );
    r
}

fn ok(v: Value) -> Response {
    with_content_type(Json(v).into_response())
}

type ApiResult = Result<Response, ApiError>;

#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn parse_body(body: &[u8]) -> Result<SchemaRequest, ApiError> {
    let req: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid request body: {e}"),
        )
    })?;
    if !req.references.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Schema references are not supported by this registry",
        ));
    }
    Ok(req)
}

async fn list_subjects(State(s): State<RegistryState>) -> ApiResult {
    Ok(ok(json!(s.with(|st| st.subjects()))))
}

async fn list_versions(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
) -> ApiResult {
    let versions = s.with(|st| st.versions(&subject))?;
    Ok(ok(json!(versions)))
}

async fn register(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req = parse_body(&body)?;
    let id = s.with(|st| st.register(&subject, &req.schema, req.schema_type.as_deref()))?;
    tracing::info!(subject, id, "schema registered");
    Ok(ok(json!({ "id": id })))
}

async fn lookup_schema(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req = parse_body(&body)?;
    let found = s.with(|st| st.lookup(&subject, &req.schema))?;
    match found {
        Some(v) => Ok(ok(version_json(&subject, &v))),
        None => Err(ApiError::schema_not_found("")),
    }
}

fn version_json(subject: &str, v: &store::VersionView) -> Value {
    json!({"subject": subject, "version": v.version, "id": v.id, "schema": v.schema})
}

async fn get_version(
    State(s): State<RegistryState>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> ApiResult {
    let v = s.with(|st| st.version(&subject, &version))?;
    Ok(ok(version_json(&subject, &v)))
}

async fn get_version_schema(
    State(s): State<RegistryState>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> ApiResult {
    let v = s.with(|st| st.version(&subject, &version))?;
    Ok(ok(
        serde_json::from_str(&v.schema).unwrap_or(Value::String(v.schema))
    ))
}

async fn delete_subject(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
) -> ApiResult {
    let deleted = s.with(|st| st.delete_subject(&subject))?;
    Ok(ok(json!(deleted)))
}

async fn delete_version(
    State(s): State<RegistryState>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> ApiResult {
    let deleted = s.with(|st| st.delete_version(&subject, &version))?;
    Ok(ok(json!(deleted)))
}

async fn get_by_id(State(s): State<RegistryState>, UrlPath(id): UrlPath<u32>) -> ApiResult {
    let schema = s
        .with(|st| st.schema_by_id(id))
        .ok_or_else(|| ApiError::schema_not_found(id))?;
    Ok(ok(json!({ "schema": schema })))
}

async fn get_raw_by_id(State(s): State<RegistryState>, UrlPath(id): UrlPath<u32>) -> ApiResult {
    let schema = s
        .with(|st| st.schema_by_id(id))
        .ok_or_else(|| ApiError::schema_not_found(id))?;
    Ok(ok(
        serde_json::from_str(&schema).unwrap_or(Value::String(schema))
    ))
}

async fn get_id_versions(State(s): State<RegistryState>, UrlPath(id): UrlPath<u32>) -> ApiResult {
    let uses = s.with(|st| st.id_versions(id));
    if uses.is_empty() {
        return Err(ApiError::schema_not_found(id));
    }
    let list: Vec<Value> = uses
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(Value::Array(list)))
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

#[derive(Debug, Deserialize)]
struct ConfigQuery {
    #[serde(default, rename = "defaultToGlobal")]
    default_to_global: bool,
}

async fn get_global_config(State(s): State<RegistryState>) -> ApiResult {
    let level = s.with(|st| st.global_level());
    Ok(ok(json!({ "compatibilityLevel": level.as_str() })))
}

async fn put_global_config(
    State(s): State<RegistryState>,
    Json(req): Json<ConfigRequest>,
) -> ApiResult {
    let level: Level = req.compatibility.parse()?;
    s.with(|st| st.set_global_level(level))?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

async fn get_subject_config(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
    Query(q): Query<ConfigQuery>,
) -> ApiResult {
    match s.with(|st| st.subject_level(&subject)) {
        Some(level) => Ok(ok(json!({ "compatibilityLevel": level.as_str() }))),
        None if q.default_to_global => {
            let level = s.with(|st| st.global_level());
            Ok(ok(json!({ "compatibilityLevel": level.as_str() })))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(s): State<RegistryState>,
    UrlPath(subject): UrlPath<String>,
    Json(req): Json<ConfigRequest>,
) -> ApiResult {
    let level: Level = req.compatibility.parse()?;
    s.with(|st| st.set_subject_level(&subject, level))?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

async fn check_compatibility(
    State(s): State<RegistryState>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req = parse_body(&body)?;
    let compatible = s.with(|st| st.is_compatible(&subject, &version, &req.schema))?;
    Ok(ok(json!({ "is_compatible": compatible })))
}
