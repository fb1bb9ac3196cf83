//! Webhook delivery against a real local HTTP server (axum on 127.0.0.1:0).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;

/// What the server saw: (Idempotency-Key, X-Fleet-Recipient, JSON body).
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Serves POST /hook, answering with `script[i]` for the i-th request (the last one repeats).
async fn server(script: Vec<u16>) -> (String, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            let script = script.clone();
            async move {
                let header = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut seen = s.lock().expect("lock");
                let n = seen.len();
                seen.push((
                    header("idempotency-key"),
                    header("x-fleet-recipient"),
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                ));
                let code = script.get(n).or(script.last()).copied().unwrap_or(200);
                StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

fn notifier(url: &str) -> Notifier {
    let cfg = NotifierConfig {
        webhook_url: url.to_owned(),
        attempts: 4,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..Default::default()
    };
    Notifier::new(&cfg, &Metrics::new("test")).expect("client")
}

fn notification(channel: Channel) -> Notification {
    Notification {
        event_id: "n-1".into(),
        recipient: "owner:VEH-1".into(),
        channel,
        vehicle_id: "VEH-1".into(),
        severity: Severity::Critical,
        subject: "PANIC_BUTTON: vehicle VEH-1 (CRITICAL)".into(),
        body: "Vehicle VEH-1 reported PANIC_BUTTON.".into(),
        source_event_id: "e-1".into(),
        source_kind: "emergency.PANIC_BUTTON".into(),
        event_time: 1_000,
        ingest_time: 1_020,
        sent_time: Some(1_005),
    }
}

async fn deliver(n: &mut Notifier, record: Notification) -> Result<(), ProcessError> {
    let input = Input {
        record,
        topic: "fleet.notifications",
        partition: 0,
        offset: 0,
        key: None,
        timestamp_ms: None,
    };
    n.process(&input, &mut Outputs::new()).await
}

fn poison_reason(r: Result<(), ProcessError>) -> &'static str {
    match r {
        Err(ProcessError::Poison { reason, .. }) => reason,
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn retries_until_the_endpoint_accepts_with_one_idempotency_key() {
    let (url, seen) = server(vec![503, 503, 200]).await;
    let mut n = notifier(&url);
    deliver(&mut n, notification(Channel::Webhook))
        .await
        .expect("delivered on the third attempt");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for (key, recipient, body) in &seen {
        assert_eq!(key, "n-1", "the same idempotency key on every attempt");
        assert_eq!(recipient, "owner:VEH-1");
        assert_eq!(body["eventId"], "n-1");
        assert_eq!(body["severity"], "CRITICAL");
        assert_eq!(body["sourceKind"], "emergency.PANIC_BUTTON");
        assert_eq!(body["sentTime"], 1_005);
    }
}

#[tokio::test]
async fn gives_up_after_the_retry_budget_and_dead_letters() {
    let (url, seen) = server(vec![500]).await;
    let mut n = notifier(&url);
    let r = deliver(&mut n, notification(Channel::Webhook)).await;
    assert_eq!(poison_reason(r), "webhook_failed");
    assert_eq!(seen.lock().expect("lock").len(), 4, "attempts = 4");
}

#[tokio::test]
async fn retries_throttling_but_not_a_rejection() {
    let (url, seen) = server(vec![429, 200]).await;
    let mut n = notifier(&url);
    deliver(&mut n, notification(Channel::Webhook))
        .await
        .expect("429 is retried");
    assert_eq!(seen.lock().expect("lock").len(), 2);

    let (url, seen) = server(vec![400]).await;
    let mut n = notifier(&url);
    let r = deliver(&mut n, notification(Channel::Webhook)).await;
    assert_eq!(poison_reason(r), "webhook_rejected");
    assert_eq!(seen.lock().expect("lock").len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_dead_lettered() {
    // A port nothing listens on: connection refused on every attempt.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut n = notifier(&format!("http://127.0.0.1:{port}/hook"));
    let r = deliver(&mut n, notification(Channel::Webhook)).await;
    assert_eq!(poison_reason(r), "webhook_failed");
}

#[tokio::test]
async fn log_and_unsupported_channels() {
    let (url, seen) = server(vec![200]).await;
    let mut n = notifier(&url);
    deliver(&mut n, notification(Channel::Log))
        .await
        .expect("logged");
    assert!(
        seen.lock().expect("lock").is_empty(),
        "the log channel calls no webhook"
    );
    let r = deliver(&mut n, notification(Channel::Email)).await;
    assert_eq!(poison_reason(r), "unsupported_channel");
    let mut unconfigured = notifier("");
    let r = deliver(&mut unconfigured, notification(Channel::Webhook)).await;
    assert_eq!(poison_reason(r), "no_webhook_configured");
}

#[test]
fn config_is_validated() {
    use fleet_runtime::config::Section;
    assert!(NotifierConfig::default().validate().is_ok());
    for bad in [
        NotifierConfig {
            attempts: 0,
            ..Default::default()
        },
        NotifierConfig {
            webhook_url: "ftp://x".into(),
            ..Default::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
