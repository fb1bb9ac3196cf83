//! The dev registry exercised through `schema_registry_converter`, the client the pipeline uses,
//! and through raw HTTP for the Confluent error shapes.

use std::net::SocketAddr;

use apache_avro::types::Value;
use fleet_dev_registry::{RegistryState, serve};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const V1: &str = r#"{"type":"record","name":"Heartbeat","namespace":"io.test","fields":[{"name":"beat","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"Heartbeat","namespace":"io.test","fields":[{"name":"beat","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;
const INCOMPATIBLE: &str = r#"{"type":"record","name":"Heartbeat","namespace":"io.test","fields":[{"name":"beat","type":"string"}]}"#;

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(dir: &std::path::Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = RegistryState::open(dir).expect("open");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn settings(&self) -> SrSettings {
        SrSettings::new_builder(self.url())
            .no_proxy()
            .build()
            .expect("settings")
    }
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("join").expect("serve");
    }
}

fn supplied(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(
        Some("io.test.Heartbeat".into()),
        SchemaType::Avro,
        schema.into(),
    )
}

#[tokio::test]
async fn encoder_and_decoder_round_trip_through_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Running::start(dir.path()).await;
    let encoder = AvroEncoder::new(reg.settings());
    let strategy =
        SubjectNameStrategy::TopicNameStrategyWithSchema("beats".into(), false, supplied(V1));
    let bytes = encoder
        .encode(vec![("beat", Value::Long(3))], strategy)
        .await
        .expect("encode registers the schema");
    assert_eq!(bytes, vec![0, 0, 0, 0, 1, 6], "id 1, zigzag(3) = 6");

    let decoder = AvroDecoder::new(reg.settings());
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode by id");
    assert_eq!(
        decoded.value,
        Value::Record(vec![("beat".into(), Value::Long(3))])
    );

    // Plain TopicNameStrategy finds the registered latest version.
    let encoder2 = AvroEncoder::new(reg.settings());
    let bytes2 = encoder2
        .encode(
            vec![("beat", Value::Long(1))],
            SubjectNameStrategy::TopicNameStrategy("beats".into(), false),
        )
        .await
        .expect("latest");
    assert_eq!(&bytes2[..5], &[0, 0, 0, 0, 1]);
    reg.stop().await;
}

#[tokio::test]
async fn registration_is_idempotent_evolves_and_rejects_incompatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Running::start(dir.path()).await;
    let s = reg.settings();
    let a = post_schema(&s, "beats-value".into(), supplied(V1))
        .await
        .expect("v1");
    let b = post_schema(&s, "beats-value".into(), supplied(V1))
        .await
        .expect("v1 again");
    assert_eq!(a.id, b.id);
    let other = post_schema(&s, "other-value".into(), supplied(V1))
        .await
        .expect("other subject");
    assert_eq!(
        other.id, a.id,
        "ids are global: the same schema keeps its id"
    );
    let v2 = post_schema(&s, "beats-value".into(), supplied(V2))
        .await
        .expect("v2 is backward compatible");
    assert_eq!(v2.id, a.id + 1);
    let err = post_schema(&s, "beats-value".into(), supplied(INCOMPATIBLE))
        .await
        .expect_err("incompatible");
    assert!(!err.retriable);

    // The HTTP shape of the rejection is Confluent's.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/subjects/beats-value/versions", reg.url()))
        .json(&serde_json::json!({"schema": INCOMPATIBLE}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 409);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error_code"], 409);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("incompatible")
    );

    // Compatibility endpoint and config.
    let resp: serde_json::Value = http
        .post(format!(
            "{}/compatibility/subjects/beats-value/versions/latest",
            reg.url()
        ))
        .json(&serde_json::json!({"schema": INCOMPATIBLE}))
        .send()
        .await
        .expect("compat")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["is_compatible"], false);
    let resp: serde_json::Value = http
        .put(format!("{}/config/beats-value", reg.url()))
        .json(&serde_json::json!({"compatibility": "NONE"}))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["compatibility"], "NONE");
    let forced = post_schema(&s, "beats-value".into(), supplied(INCOMPATIBLE))
        .await
        .expect("NONE allows it");
    assert_eq!(forced.id, v2.id + 1);

    // Unknown things answer Confluent's codes.
    let resp = http
        .get(format!("{}/schemas/ids/999", reg.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 404);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error_code"], 40403);
    let body: serde_json::Value = http
        .get(format!("{}/subjects/nope/versions", reg.url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["error_code"], 40401);
    let subjects: Vec<String> = http
        .get(format!("{}/subjects", reg.url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        subjects,
        vec!["beats-value".to_string(), "other-value".to_string()]
    );
    let versions: Vec<u32> = http
        .get(format!("{}/subjects/beats-value/versions", reg.url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(versions, vec![1, 2, 3]);
    reg.stop().await;
}

#[tokio::test]
async fn ids_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Running::start(dir.path()).await;
    let s = reg.settings();
    let a = post_schema(&s, "beats-value".into(), supplied(V1))
        .await
        .expect("v1");
    let b = post_schema(&s, "beats-value".into(), supplied(V2))
        .await
        .expect("v2");
    reg.stop().await;

    let reg = Running::start(dir.path()).await;
    let s = reg.settings();
    let fetched = get_schema_by_id(b.id, &s)
        .await
        .expect("by id after restart");
    assert!(fetched.schema.contains("note"));
    let again = post_schema(&s, "beats-value".into(), supplied(V1))
        .await
        .expect("v1 again");
    assert_eq!(again.id, a.id);
    reg.stop().await;
}
