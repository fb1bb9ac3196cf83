//! notifier against the local stack: Notification records on a topic reach a real HTTP
//! webhook (idempotency key = event_id), log-channel ones are not posted, and one the endpoint
//! keeps refusing ends on the dead-letter topic while the others still get through. A webhook
//! that hangs stalls neither the log channel nor other partitions, holds only its own offset,
//! and is delivered after a SIGKILL and restart.
#![cfg(feature = "stack")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, fast_rejoin, metric_samples, wait_ready};
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

/// What the webhook saw: (Idempotency-Key, X-Fleet-Recipient) per request.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A real webhook on 127.0.0.1: answers 204, or 503 for the recipient "broken".
async fn webhook() -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
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
    (addr, seen)
}

#[tokio::test]
async fn webhook_notifications_are_posted_and_refused_ones_dead_lettered() {
    // The webhook: accepts everything except the recipient "broken".
    let (addr, seen) = webhook().await;

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

/// `fleet_processor_records_total{topic="channel:log",outcome="delivered"}` of `p`.
async fn logged(p: &Proc) -> f64 {
    let Some((_, text)) = p.get("/metrics").await else {
        return 0.0;
    };
    metric_samples(&text, "fleet_processor_records_total")
        .iter()
        .filter(|(l, _)| l.contains("channel:log") && l.contains("delivered"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn a_hanging_webhook_stalls_no_other_channel_or_partition_and_survives_sigkill() {
    // An endpoint that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    let conns = Arc::new(Mutex::new(Vec::new()));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = hang.accept().await {
            c.lock().expect("lock").push(s);
        }
    });

    let topic = testkit::random_name("e2e.notif.lanes");
    let dlq = testkit::random_name("e2e.notif.lanes.dlq");
    testkit::create_topic(&topic, 2).await;
    testkit::create_topic(&dlq, 1).await;
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let enc = Encoder::<Notification>::register(&registry, &topic)
        .await
        .expect("schema");
    let record = |n: &Notification| {
        (
            n.recipient.clone().into_bytes(),
            enc.encode(n).expect("encode"),
        )
    };
    let group = testkit::random_name("e2e.notifier.lanes");
    let env = |url: String| {
        let mut env = fast_rejoin();
        env.extend([
            ("FLEET__APP__INPUT_TOPIC", topic.clone()),
            ("FLEET_NOTIFIER_WEBHOOK_URL", url),
            ("FLEET__APP__WEBHOOK_TIMEOUT", "1h".into()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
            ("FLEET__RUNNER__TICK_INTERVAL", "200ms".into()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
            ("FLEET__KAFKA__GROUP_ID", group.clone()),
        ]);
        env
    };
    // The hanging webhook first, then log notifications of ten recipients (keyed by recipient:
    // both partitions get some).
    let mut records = vec![record(&notification(
        "w-1",
        "owner:VEH-W",
        Channel::Webhook,
    ))];
    for i in 0..10 {
        records.push(record(&notification(
            &format!("l-{i}"),
            &format!("owner:VEH-{i}"),
            Channel::Log,
        )));
    }
    testkit::populate_topic(&topic, &records).await;

    let mut notifier = Proc::start("notifier", &env(format!("http://{hang_addr}/hook")));
    assert!(wait_ready(&notifier).await, "notifier ready");
    for _ in 0..300 {
        if logged(&notifier).await >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        logged(&notifier).await,
        10.0,
        "every log notification delivered"
    );
    assert_eq!(
        conns.lock().expect("lock").len(),
        1,
        "the webhook request hangs"
    );
    // Committed offsets: the webhook's partition held at the webhook, the other at its end.
    let mut lag = Vec::new();
    for _ in 0..100 {
        lag = testkit::group_lag(&group, &topic);
        let held = lag.iter().filter(|p| p.lag() > 0).count();
        let done = lag.iter().filter(|p| p.committed == Some(p.high)).count();
        if held == 1 && done == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        lag.iter().filter(|p| p.committed == Some(p.high)).count(),
        1,
        "the partition without the webhook is fully committed: {lag:?}"
    );
    let held = lag
        .iter()
        .find(|p| p.committed != Some(p.high))
        .expect("held partition");
    notifier.kill9_in_place();

    // Restarted with a working endpoint: the held webhook is delivered (at least once).
    let (addr, seen) = webhook().await;
    let notifier = Proc::start("notifier", &env(format!("http://{addr}/hook")));
    assert!(wait_ready(&notifier).await, "notifier ready again");
    for _ in 0..300 {
        let done = testkit::group_lag(&group, &topic)
            .iter()
            .all(|p| p.committed == Some(p.high));
        if done && !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys, ["w-1"], "delivered after the restart");
    assert!(
        testkit::group_lag(&group, &topic)
            .iter()
            .all(|p| p.committed == Some(p.high)),
        "everything committed once delivered (partition {} was held)",
        held.partition
    );
    drop(notifier);
}
