//! notifier against the local stack: Notification records on a topic reach a real HTTP
//! webhook (idempotency key = event_id), log-channel ones are not posted, and one the endpoint
//! keeps refusing ends on the dead-letter topic while the others still get through.
#![cfg(feature = "stack")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, fast_rejoin, wait_ready};
use fleet_schemas::{Channel, DeadLetter, Decoder, Encoder, Notification, Registry, Severity};

fn notification(id: &str, recipient: &str, channel: Channel) -> Notification {
    Notification {
        event_id: id.into(),
        recipient: recipient.into(),
        channel,
        vehicle_id: "VEH-N1".into(),
        severity: Severity::High,
        subject: format!("subject {id}"),
        body: "body".into(),
        source_event_id: "e-1".into(),
        source_kind: "emergency.CRASH".into(),
        event_time: 1,
        ingest_time: 2,
        sent_time: None,
    }
}

#[tokio::test]
async fn webhook_notifications_are_posted_and_refused_ones_dead_lettered() {
    // The webhook: accepts everything except the recipient "broken".
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let s = s.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let (key, recipient) = (h("idempotency-key"), h("x-fleet-recipient"));
                let refused = recipient == "broken";
                s.lock().expect("lock").push((key, recipient));
                if refused {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
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

    let topic = testkit::random_name("e2e.notif");
    let dlq = testkit::random_name("e2e.notif.dlq");
    testkit::create_topic(&topic, 1).await;
    testkit::create_topic(&dlq, 1).await;
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let enc = Encoder::<Notification>::register(&registry, &topic)
        .await
        .expect("schema");
    let records: Vec<(Vec<u8>, Vec<u8>)> = [
        notification("n-1", "owner:VEH-N1", Channel::Webhook),
        notification("n-2", "operations", Channel::Log),
        notification("n-3", "broken", Channel::Webhook),
        notification("n-4", "authorities", Channel::Webhook),
    ]
    .iter()
    .map(|n| {
        (
            n.recipient.clone().into_bytes(),
            enc.encode(n).expect("encode"),
        )
    })
    .collect();
    testkit::populate_topic(&topic, &records).await;

    let mut env = fast_rejoin();
    env.extend([
        ("FLEET__APP__INPUT_TOPIC", topic.clone()),
        ("FLEET_NOTIFIER_WEBHOOK_URL", format!("http://{addr}/hook")),
        ("FLEET__APP__ATTEMPTS", "3".into()),
        ("FLEET__APP__RETRY_INITIAL", "50ms".into()),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
        ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("e2e.notifier"),
        ),
    ]);
    let notifier = Proc::start("notifier", &env);
    assert!(wait_ready(&notifier).await, "notifier ready");
    let dead = TopicTail::start(&dlq);
    assert_eq!(dead.wait_for(1, Duration::from_secs(30)).await, 1);
    for _ in 0..100 {
        if seen.lock().expect("lock").len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().expect("lock").clone();
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["n-1", "n-3", "n-3", "n-3", "n-4"],
        "in order; the refused one tried 3 times; the log one never posted"
    );
    let d = Decoder::<DeadLetter>::new(registry)
        .decode(&dead.snapshot()[0].payload)
        .await
        .expect("dead letter");
    assert_eq!(d.reason, "webhook_failed");
    assert_eq!(d.source_topic, topic);
    assert_eq!(d.original.as_deref(), Some(&records[2].1[..]));
    drop(notifier);
}
