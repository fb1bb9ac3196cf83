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

fn notifier(url: &str) -> Deliverer {
    let cfg = NotifierConfig {
        webhook_url: url.to_owned(),
        attempts: 4,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..Default::default()
    };
    Deliverer::new(&cfg, &Metrics::new("test")).expect("client")
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

async fn deliver(n: &mut Deliverer, record: Notification) -> Result<(), ProcessError> {
    n.deliver(&record).await
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
    let r = deliver(&mut n, notification(Channel::Sms)).await;
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

/// Python's standard-library SMTP server (`smtpd`, an independent implementation), on a free
/// port: the first `fail_first` messages get `451`, recipients containing "reject" get `550`;
/// accepted messages are appended to the returned file as JSON lines.
struct SmtpServer {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const SMTPD: &str = r#"
import asyncore, json, smtpd, sys, warnings
warnings.simplefilter("ignore")
port, log, fail_first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
class S(smtpd.SMTPServer):
    n = 0
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        S.n += 1
        if any("reject" in r for r in rcpttos):
            return "550 no such user"
        if S.n <= fail_first:
            return "451 try again later"
        with open(log, "a") as f:
            f.write(json.dumps({"from": mailfrom, "to": rcpttos, "data": data.decode("utf-8")}) + "\n")
S(("127.0.0.1", port), None, decode_data=False)
print("ready", flush=True)
asyncore.loop()
"#;

impl SmtpServer {
    fn start(fail_first: u32) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("mail.jsonl");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut child = std::process::Command::new("python3")
            .args(["-W", "ignore", "-c", SMTPD, &port.to_string()])
            .arg(&log)
            .arg(fail_first.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        Self {
            child,
            addr: format!("smtp://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mailer(smtp_url: &str) -> Deliverer {
    let cfg = NotifierConfig {
        smtp_url: smtp_url.to_owned(),
        smtp_from: "alerts@fleet.example".into(),
        attempts: 3,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..Default::default()
    };
    Deliverer::new(&cfg, &Metrics::new("test")).expect("client")
}

fn email_to(recipient: &str) -> Notification {
    Notification {
        recipient: recipient.into(),
        subject: "cargo_temperature: vehicle VEH-1".into(),
        body: "Vehicle VEH-1: cargo temperature 9.5 °C (limit 8.0 °C).\n.\nend".into(),
        ..notification(Channel::Email)
    }
}

#[tokio::test]
async fn email_goes_through_a_real_smtp_server_after_a_temporary_failure() {
    let server = SmtpServer::start(1);
    let mut n = mailer(&server.addr);
    deliver(&mut n, email_to("cold-chain@acme.example"))
        .await
        .expect("delivered on the second attempt");
    let got = server.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["from"], "alerts@fleet.example");
    assert_eq!(got[0]["to"][0], "cold-chain@acme.example");
    let data = got[0]["data"].as_str().expect("data");
    assert!(data.contains("Message-ID: <n-1@fleetstream>"), "{data}");
    assert!(
        data.contains("Subject: cargo_temperature: vehicle VEH-1"),
        "{data}"
    );
    // The server un-stuffs the dot line and keeps UTF-8 text.
    assert!(data.contains("9.5 °C (limit 8.0 °C).\n.\nend"), "{data:?}");
}

#[tokio::test]
async fn email_rejections_and_bad_addresses_are_dead_lettered() {
    let server = SmtpServer::start(0);
    let mut n = mailer(&server.addr);
    assert_eq!(
        poison_reason(deliver(&mut n, email_to("reject@acme.example")).await),
        "email_rejected"
    );
    assert_eq!(
        poison_reason(deliver(&mut n, email_to("owner:VEH-1")).await),
        "invalid_recipient"
    );
    assert_eq!(
        poison_reason(deliver(&mut n, email_to("a@b.example>\r\nRCPT TO:<x@y")).await),
        "invalid_recipient"
    );
    assert!(server.received().is_empty());
    let always_busy = SmtpServer::start(100);
    let mut n = mailer(&always_busy.addr);
    assert_eq!(
        poison_reason(deliver(&mut n, email_to("ops@acme.example")).await),
        "email_failed"
    );
    let mut unconfigured = mailer("");
    assert_eq!(
        poison_reason(deliver(&mut unconfigured, email_to("ops@acme.example")).await),
        "no_smtp_configured"
    );
}

// ---- lanes: the processor ----

/// What the sink received; its first `fail` calls fail (Kafka unavailable).
#[derive(Clone, Default)]
struct Sink {
    got: Arc<Mutex<Vec<Failed>>>,
    fail: Arc<Mutex<u32>>,
}

impl Sink {
    fn failing(n: u32) -> Self {
        let s = Self::default();
        *s.fail.lock().expect("lock") = n;
        s
    }

    fn sink(&self) -> DeadLetterSink {
        let s = self.clone();
        Arc::new(move |f: Failed| {
            let s = s.clone();
            Box::pin(async move {
                {
                    let mut fail = s.fail.lock().expect("lock");
                    if *fail > 0 {
                        *fail -= 1;
                        return Err("broker unavailable".to_owned());
                    }
                }
                s.got.lock().expect("lock").push(f);
                Ok(())
            })
        })
    }

    fn reasons(&self) -> Vec<(&'static str, i64)> {
        let got = self.got.lock().expect("lock");
        got.iter().map(|f| (f.reason, f.source.offset)).collect()
    }
}

async fn process(n: &mut Notifier, record: Notification, partition: i32, offset: i64) {
    let input = Input {
        record,
        topic: "fleet.notifications",
        partition,
        offset,
        key: Some(b"owner:VEH-1"),
        timestamp_ms: Some(1_000),
    };
    n.process(&input, &mut Outputs::new())
        .await
        .expect("accepted");
}

/// Waits until `cond` holds (a liveness bound, not a performance threshold).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not after 30 s: {what}");
}

#[tokio::test]
async fn a_hanging_webhook_stalls_neither_log_nor_email_nor_other_partitions() {
    // An endpoint that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", hang.local_addr().expect("addr"));
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = hang.accept().await {
            h.lock().expect("lock").push(s);
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = NotifierConfig {
        webhook_url: hook,
        webhook_timeout: Duration::from_secs(3600),
        smtp_url: format!("smtp://127.0.0.1:{closed}"),
        attempts: 2,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(20),
        ..Default::default()
    };
    let sink = Sink::default();
    let mut n = Notifier::new(&cfg, &Metrics::new("test"), sink.sink()).expect("notifier");

    process(&mut n, notification(Channel::Webhook), 0, 10).await;
    eventually("the webhook request is on the wire", || {
        !held.lock().expect("lock").is_empty()
    })
    .await;
    // Behind it, on the same and on another partition: log is done at once, e-mail in its own
    // lane (to a relay that refuses: dead-lettered after its budget).
    process(&mut n, notification(Channel::Log), 0, 11).await;
    process(&mut n, notification(Channel::Log), 1, 5).await;
    process(&mut n, email_to("ops@acme.example"), 1, 6).await;
    eventually("the e-mail is dead-lettered", || {
        sink.reasons() == vec![("email_failed", 6)]
    })
    .await;
    let got = sink.got.lock().expect("lock");
    assert_eq!(got[0].source.partition, 1);
    assert_eq!(got[0].source.key.as_deref(), Some(&b"owner:VEH-1"[..]));
    assert_eq!(got[0].notification.recipient, "ops@acme.example");
    drop(got);

    // The webhook is still waiting: its offset holds partition 0, partition 1 is free.
    assert_eq!(n.pending(), 1);
    assert_eq!(n.hold("fleet.notifications", 0), Some(10));
    assert_eq!(n.hold("fleet.notifications", 1), None);
    // A rebalance that takes partition 0 away releases its hold.
    n.on_revoke(&[("fleet.notifications".to_owned(), 0)]);
    assert_eq!(n.hold("fleet.notifications", 0), None);
}

#[tokio::test]
async fn a_lane_that_gave_up_tries_once_per_notification_until_one_is_delivered() {
    // 1st: 3 attempts, all 500 -> degraded; 2nd: 1 attempt (500); 3rd: 1 attempt (200) ->
    // healthy; 4th: 3 attempts again, all 500.
    let (url, seen) = server(vec![500, 500, 500, 500, 200, 500, 500, 500]).await;
    let cfg = NotifierConfig {
        webhook_url: url,
        attempts: 3,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(20),
        ..Default::default()
    };
    // The first dead letter fails twice (Kafka down): retried, the offset stays held.
    let sink = Sink::failing(2);
    let mut n = Notifier::new(&cfg, &Metrics::new("test"), sink.sink()).expect("notifier");
    for offset in 0..4 {
        process(&mut n, notification(Channel::Webhook), 0, offset).await;
    }
    eventually("every notification finished", || n.pending() == 0).await;
    assert_eq!(seen.lock().expect("lock").len(), 8);
    assert_eq!(
        sink.reasons(),
        vec![
            ("webhook_failed", 0),
            ("webhook_failed", 1),
            ("webhook_failed", 3)
        ]
    );
    assert_eq!(n.hold("fleet.notifications", 0), None);
}
