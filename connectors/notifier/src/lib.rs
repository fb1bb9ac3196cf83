//! # notifier: notifications to people and systems
//!
//! Consumes [`Notification`]s (`fleet.notifications`, keyed by recipient) and delivers each by
//! its channel:
//!
//! * `WEBHOOK`: `POST {webhook_url}` with the notification as JSON, header `Idempotency-Key` =
//!   the notification's `event_id` (stable across replays, so the receiver can de-duplicate) and
//!   `X-Fleet-Recipient`. 2xx is delivered; 408, 429, 5xx and network errors are retried with
//!   capped exponential backoff up to `attempts` times, then dead-lettered
//!   (`webhook_failed`); any other 4xx is dead-lettered at once (`webhook_rejected`).
//! * `LOG`: written to the log (the operations dashboard's channel in the local stack).
//! * `EMAIL`: sent through the SMTP relay at `smtp_url` ([`smtp`]: plain SMTP, one connection
//!   per message, `Message-ID` derived from the notification's `event_id`); 4xx replies and
//!   connection errors are retried like webhooks, then dead-lettered (`email_failed`), 5xx at
//!   once (`email_rejected`); a recipient that is not an address goes to `invalid_recipient`;
//!   with no `smtp_url`, `no_smtp_configured`.
//! * `SMS`: not implemented (no gateway reachable here): dead-lettered
//!   (`unsupported_channel`) so that they are visible and replayable, never silently dropped.
//!
//! ## Lanes: one failing channel never stalls the others
//! `WEBHOOK` and `EMAIL` notifications are handed to a **delivery lane** per channel (a task
//! with a bounded queue, `lane_capacity`); `LOG` ones and those rejected up front (no endpoint
//! configured, not an address, `SMS`) are finished at once. A webhook endpoint that is down
//! therefore delays only the webhook lane: log and e-mail notifications of every partition
//! keep flowing. A lane that gave up on a notification (its retry budget spent) is
//! **degraded**: the next ones get one attempt each until one is delivered, so an endpoint
//! that stays down costs one attempt per notification, not the whole budget. Only when a lane
//! is `lane_capacity` notifications behind does the run loop wait for it (backpressure).
//! Notifications of one channel are delivered in the order they were read, so the
//! notifications of one recipient stay in order.
//!
//! ## Delivery guarantee
//! At least once. A notification's offset is held ([`Processor::hold`]) until its lane
//! delivered it or its dead letter (with the notification's bytes) was acknowledged by Kafka;
//! a crash or a rebalance re-delivers from the oldest held offset with the same idempotency
//! key (`Idempotency-Key` header, e-mail `Message-ID`), so receivers can de-duplicate.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_runtime::metrics::Metrics;
use fleet_runtime::{Input, Outputs, ProcessError, Processor};
use fleet_schemas::{Channel, Notification, Severity};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::mpsc;

fleet_runtime::config_section! {
    /// notifier settings.
    pub struct NotifierConfig {
        /// Topic of Notification records.
        pub input_topic: String = "fleet.notifications".to_owned(),
        /// Endpoint receiving WEBHOOK notifications (the recipient is in the body and the
        /// X-Fleet-Recipient header). Empty: webhook notifications are dead-lettered.
        pub webhook_url: String = String::new(), env = "FLEET_NOTIFIER_WEBHOOK_URL",
        /// SMTP relay for EMAIL notifications, smtp://host:port (plain, no auth). Empty: e-mails are dead-lettered.
        pub smtp_url: String = String::new(), env = "FLEET_NOTIFIER_SMTP_URL",
        /// Sender address of e-mails.
        pub smtp_from: String = "fleetstream@localhost".to_owned(),
        /// Timeout of one webhook request (and of one SMTP exchange).
        #[serde(with = "humantime_serde")]
        pub webhook_timeout: Duration = Duration::from_secs(5),
        /// Attempts per notification before it is dead-lettered.
        pub attempts: u32 = 5,
        /// First retry delay (doubles per attempt).
        #[serde(with = "humantime_serde")]
        pub retry_initial: Duration = Duration::from_millis(200),
        /// Longest retry delay.
        #[serde(with = "humantime_serde")]
        pub retry_max: Duration = Duration::from_secs(5),
        /// Notifications a delivery lane (webhook, e-mail) may have queued before the run
        /// loop waits for it.
        pub lane_capacity: usize = 10_000,
    }
    validate(c) {
        if c.attempts == 0 {
            return Err(fleet_runtime::Error::Config("app.attempts must be at least 1".into()));
        }
        if c.lane_capacity == 0 {
            return Err(fleet_runtime::Error::Config("app.lane_capacity must be at least 1".into()));
        }
        let url = &c.webhook_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fleet_runtime::Error::Config(format!("app.webhook_url {:?} must be http(s)://", c.webhook_url)));
        }
        if !(c.smtp_url.is_empty() || c.smtp_url.starts_with("smtp://")) {
            return Err(fleet_runtime::Error::Config(format!("app.smtp_url {:?} must be smtp://host:port", c.smtp_url)));
        }
        if !valid_address(&c.smtp_from) {
            return Err(fleet_runtime::Error::Config(format!("app.smtp_from {:?} is not an e-mail address", c.smtp_from)));
        }
        Ok(())
    }
}

pub mod smtp;

/// Whether `a` looks like `local@domain` with nothing that could break an SMTP command or header.
pub fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 254
        && a.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '<' | '>' | '(' | ')' | ',' | ';' | '"' | '\\')
        })
}

/// The JSON a webhook receives.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody<'a> {
    /// Notification id (also the `Idempotency-Key` header).
    pub event_id: &'a str,
    /// Recipient.
    pub recipient: &'a str,
    /// Vehicle concerned.
    pub vehicle_id: &'a str,
    /// `INFO` .. `CRITICAL`.
    pub severity: Severity,
    /// Title.
    pub subject: &'a str,
    /// Text.
    pub body: &'a str,
    /// The event it is about (an emergency's id, ...).
    pub source_event_id: &'a str,
    /// For example `emergency.PANIC_BUTTON`.
    pub source_kind: &'a str,
    /// When the source event happened, ms.
    pub event_time: i64,
    /// When the device sent it, ms, if known.
    pub sent_time: Option<i64>,
}

impl<'a> WebhookBody<'a> {
    /// The webhook view of `n`.
    pub fn of(n: &'a Notification) -> Self {
        Self {
            event_id: &n.event_id,
            recipient: &n.recipient,
            vehicle_id: &n.vehicle_id,
            severity: n.severity,
            subject: &n.subject,
            body: &n.body,
            source_event_id: &n.source_event_id,
            source_kind: &n.source_kind,
            event_time: n.event_time,
            sent_time: n.sent_time,
        }
    }
}

/// Delivers one notification to its channel, with retries (no Kafka: the lanes and the tests
/// call it).
#[derive(Debug)]
pub struct Deliverer {
    http: reqwest::Client,
    cfg: NotifierConfig,
    webhook_ok: Counter,
    email_ok: Counter,
    log_ok: Counter,
    retries: Counter,
}

impl Deliverer {
    /// A deliverer with its HTTP client.
    pub fn new(cfg: &NotifierConfig, metrics: &Metrics) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.webhook_timeout)
            .build()?;
        Ok(Self {
            http,
            cfg: cfg.clone(),
            webhook_ok: metrics.records("channel:webhook", "delivered"),
            email_ok: metrics.records("channel:email", "delivered"),
            log_ok: metrics.records("channel:log", "delivered"),
            retries: metrics.retries("webhook"),
        })
    }

    /// Delivers `n` with up to `app.attempts` attempts: `Ok` once delivered, else the dead
    /// letter.
    pub async fn deliver(&self, n: &Notification) -> Result<(), ProcessError> {
        self.deliver_with(n, self.cfg.attempts).await
    }

    /// Delivers `n` with at most `attempts` attempts (at least one).
    pub async fn deliver_with(&self, n: &Notification, attempts: u32) -> Result<(), ProcessError> {
        self.check(n)?;
        match n.channel {
            Channel::Webhook => self.webhook(n, attempts.max(1)).await,
            Channel::Email => self.email(n, attempts.max(1)).await,
            Channel::Log => {
                tracing::info!(recipient = %n.recipient, vehicle = %n.vehicle_id, severity = ?n.severity, subject = %n.subject, body = %n.body, "notification");
                self.log_ok.inc();
                Ok(())
            }
            // `check` refused it.
            Channel::Sms => Ok(()),
        }
    }

    /// What is known to fail without trying: no endpoint for the channel, a recipient that is
    /// not an address, a channel we do not implement.
    pub fn check(&self, n: &Notification) -> Result<(), ProcessError> {
        match n.channel {
            Channel::Webhook if self.cfg.webhook_url.is_empty() => Err(ProcessError::poison(
                "no_webhook_configured",
                "app.webhook_url is empty",
            )),
            Channel::Email if self.smtp_addr().is_none() => Err(ProcessError::poison(
                "no_smtp_configured",
                "app.smtp_url is empty",
            )),
            Channel::Email if !valid_address(&n.recipient) => Err(ProcessError::poison(
                "invalid_recipient",
                format!("{:?} is not an e-mail address", n.recipient),
            )),
            Channel::Sms => Err(ProcessError::poison(
                "unsupported_channel",
                format!("channel {:?} is not implemented", n.channel),
            )),
            _ => Ok(()),
        }
    }

    fn smtp_addr(&self) -> Option<&str> {
        self.cfg
            .smtp_url
            .strip_prefix("smtp://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty())
    }

    async fn email(&self, n: &Notification, attempts: u32) -> Result<(), ProcessError> {
        let Some(addr) = self.smtp_addr() else {
            return Err(ProcessError::poison(
                "no_smtp_configured",
                "app.smtp_url is empty",
            ));
        };
        let mail = smtp::Mail {
            from: &self.cfg.smtp_from,
            to: &n.recipient,
            subject: &n.subject,
            body: &n.body,
            id: &n.event_id,
        };
        self.with_retries(n, attempts, "e-mail", "email_failed", addr, || async {
            match smtp::send(addr, &mail, self.cfg.webhook_timeout).await {
                Ok(()) => Attempt::Delivered,
                Err(smtp::SmtpError::Permanent(m)) => {
                    Attempt::Reject(ProcessError::poison("email_rejected", m))
                }
                Err(smtp::SmtpError::Transient(m)) => Attempt::Retry(m),
            }
        })
        .await?;
        self.email_ok.inc();
        Ok(())
    }

    async fn webhook(&self, n: &Notification, attempts: u32) -> Result<(), ProcessError> {
        let url = &self.cfg.webhook_url;
        self.with_retries(n, attempts, "webhook", "webhook_failed", url, || async {
            let sent = self
                .http
                .post(url)
                .header("Idempotency-Key", &n.event_id)
                .header("X-Fleet-Recipient", &n.recipient)
                .json(&WebhookBody::of(n))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => Attempt::Delivered,
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if retryable {
                        Attempt::Retry(format!("HTTP {status}"))
                    } else {
                        Attempt::Reject(ProcessError::poison(
                            "webhook_rejected",
                            format!("{url} answered {status}"),
                        ))
                    }
                }
                Err(e) => Attempt::Retry(e.to_string()),
            }
        })
        .await?;
        self.webhook_ok.inc();
        Ok(())
    }

    /// Runs `attempt` up to `attempts` times with capped exponential backoff between
    /// retryable failures. `Ok` once delivered; a rejection is returned at once; after the
    /// last retryable failure, the dead letter `failed` naming `target` and the last error.
    async fn with_retries<F, Fut>(
        &self,
        n: &Notification,
        attempts: u32,
        channel: &str,
        failed: &'static str,
        target: &str,
        mut attempt: F,
    ) -> Result<(), ProcessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let mut delay = self.cfg.retry_initial;
        let mut last = String::new();
        for i in 1..=attempts {
            match attempt().await {
                Attempt::Delivered => return Ok(()),
                Attempt::Reject(e) => return Err(e),
                Attempt::Retry(m) => last = m,
            }
            if i < attempts {
                self.retries.inc();
                tracing::warn!(notification = %n.event_id, attempt = i, error = %last, "{channel} delivery failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.cfg.retry_max);
            }
        }
        Err(ProcessError::poison(
            failed,
            format!("{attempts} attempts to {target} failed; last: {last}"),
        ))
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug)]
enum Attempt {
    Delivered,
    /// Worth another attempt (the reason).
    Retry(String),
    /// Not worth another attempt: the dead letter.
    Reject(ProcessError),
}

/// A notification a lane gave up on, for the dead-letter sink.
#[derive(Debug)]
pub struct Failed {
    /// The notification.
    pub notification: Notification,
    /// Where it was read.
    pub source: Source,
    /// Dead-letter reason (`webhook_failed`, ...).
    pub reason: &'static str,
    /// What happened.
    pub detail: String,
}

/// Kafka coordinates of a notification handed to a lane.
#[derive(Debug, Clone)]
pub struct Source {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Kafka timestamp, ms.
    pub timestamp_ms: Option<i64>,
}

/// Where lanes send what they gave up on; resolves once the dead letter is durable (an error
/// is retried by the lane, with backoff, until it succeeds: the offset stays held meanwhile).
pub type DeadLetterSink =
    Arc<dyn Fn(Failed) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The dead-letter sink of a running binary: the notification re-encoded with the registry
/// (same schema, so a replay to the input topic is processed like the original), sent to the
/// runtime's dead-letter topic and acknowledged.
pub fn runtime_dead_letters(
    rt: fleet_runtime::Runtime,
    encoder: fleet_schemas::Encoder<Notification>,
) -> DeadLetterSink {
    let encoder = Arc::new(encoder);
    Arc::new(move |f: Failed| {
        let (rt, encoder) = (rt.clone(), encoder.clone());
        Box::pin(async move {
            let mut bytes = Vec::new();
            encoder
                .encode_into(&f.notification, &mut bytes)
                .map_err(|e| e.to_string())?;
            let src = fleet_runtime::runner::KafkaSource {
                topic: &f.source.topic,
                partition: f.source.partition,
                offset: f.source.offset,
                key: f.source.key.as_deref(),
                payload: Some(&bytes),
                timestamp_ms: f.source.timestamp_ms,
            };
            let dl =
                fleet_runtime::runner::kafka_dead_letter(rt.component, src, f.reason, &f.detail);
            rt.dead_letter(&dl).await.map_err(|e| e.to_string())?;
            rt.metrics.dead_letters(f.reason).inc();
            tracing::warn!(reason = f.reason, detail = %f.detail, topic = %f.source.topic, partition = f.source.partition, offset = f.source.offset, "notification dead-lettered");
            Ok(())
        })
    })
}

/// Offsets handed to lanes and not finished yet, per (topic, partition): offset -> how many
/// copies (a rebalance can hand the same offset over again while the first is queued).
type Pending = Arc<Mutex<HashMap<Arc<str>, HashMap<i32, BTreeMap<i64, u32>>>>>;

fn pending_add(pending: &Pending, s: &Source) {
    let mut p = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *p.entry(s.topic.clone())
        .or_default()
        .entry(s.partition)
        .or_default()
        .entry(s.offset)
        .or_default() += 1;
}

fn pending_done(pending: &Pending, s: &Source) {
    let mut p = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(offsets) = p.get_mut(&*s.topic).and_then(|t| t.get_mut(&s.partition))
        && let Some(n) = offsets.get_mut(&s.offset)
    {
        *n -= 1;
        if *n == 0 {
            offsets.remove(&s.offset);
        }
    }
}

struct Job {
    notification: Notification,
    source: Source,
}

/// One delivery lane: a task delivering its channel's notifications in order.
#[derive(Debug)]
struct Lane {
    tx: mpsc::Sender<Job>,
    queued: Gauge,
}

impl Lane {
    fn start(
        name: &'static str,
        deliverer: Arc<Deliverer>,
        pending: Pending,
        sink: DeadLetterSink,
        metrics: &Metrics,
    ) -> Self {
        let cfg = deliverer.cfg.clone();
        let (tx, mut rx) = mpsc::channel::<Job>(cfg.lane_capacity);
        let queued = metrics.queued(name);
        let gauge = queued.clone();
        tokio::spawn(async move {
            let mut degraded = false;
            while let Some(job) = rx.recv().await {
                let attempts = if degraded { 1 } else { cfg.attempts };
                let failed = match deliverer.deliver_with(&job.notification, attempts).await {
                    Ok(()) => {
                        if degraded {
                            tracing::info!(
                                lane = name,
                                "delivering again: lane no longer degraded"
                            );
                        }
                        degraded = false;
                        None
                    }
                    Err(ProcessError::Poison { reason, detail }) => {
                        if reason.ends_with("_failed") && !degraded {
                            degraded = true;
                            tracing::warn!(
                                lane = name,
                                "retry budget spent: one attempt per notification until one is delivered"
                            );
                        }
                        Some((reason, detail))
                    }
                    Err(e) => Some(("delivery_error", e.to_string())),
                };
                if let Some((reason, detail)) = failed {
                    let mut delay = cfg.retry_initial;
                    loop {
                        let f = Failed {
                            notification: job.notification.clone(),
                            source: job.source.clone(),
                            reason,
                            detail: detail.clone(),
                        };
                        match sink(f).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(lane = name, error = %e, "dead letter not written; retrying in {delay:?}");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(cfg.retry_max);
                            }
                        }
                    }
                }
                pending_done(&pending, &job.source);
                gauge.dec();
            }
        });
        Self { tx, queued }
    }
}

/// The notifier: the run loop's processor, with a delivery lane per slow channel.
#[derive(Debug)]
pub struct Notifier {
    deliverer: Arc<Deliverer>,
    webhook: Lane,
    email: Lane,
    pending: Pending,
    topics: HashMap<String, Arc<str>>,
}

impl Notifier {
    /// A notifier whose lanes send what they give up on to `sink`. Spawns the lanes: call
    /// it inside a Tokio runtime.
    pub fn new(
        cfg: &NotifierConfig,
        metrics: &Metrics,
        sink: DeadLetterSink,
    ) -> Result<Self, reqwest::Error> {
        let deliverer = Arc::new(Deliverer::new(cfg, metrics)?);
        let pending = Pending::default();
        let lane = |name| {
            Lane::start(
                name,
                deliverer.clone(),
                pending.clone(),
                sink.clone(),
                metrics,
            )
        };
        Ok(Self {
            webhook: lane("webhook"),
            email: lane("email"),
            deliverer,
            pending,
            topics: HashMap::new(),
        })
    }

    /// Notifications handed to lanes and not finished yet.
    pub fn pending(&self) -> usize {
        let p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.values()
            .flat_map(HashMap::values)
            .flat_map(BTreeMap::values)
            .map(|n| *n as usize)
            .sum()
    }

    fn topic(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topics.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.to_owned(), t.clone());
        t
    }
}

impl Processor for Notifier {
    type Input = Notification;

    async fn process(
        &mut self,
        input: &Input<'_, Notification>,
        _out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let n = &input.record;
        let webhook = match n.channel {
            Channel::Webhook => true,
            Channel::Email => false,
            Channel::Log | Channel::Sms => return self.deliverer.deliver(n).await,
        };
        // Known failures are dead-lettered by the run loop with the original bytes.
        self.deliverer.check(n)?;
        let source = Source {
            topic: self.topic(input.topic),
            partition: input.partition,
            offset: input.offset,
            key: input.key.map(<[u8]>::to_vec),
            timestamp_ms: input.timestamp_ms,
        };
        let lane = if webhook { &self.webhook } else { &self.email };
        pending_add(&self.pending, &source);
        lane.queued.inc();
        let job = Job {
            notification: n.clone(),
            source: source.clone(),
        };
        if lane.tx.send(job).await.is_err() {
            pending_done(&self.pending, &source);
            lane.queued.dec();
            return Err(ProcessError::Fatal("a delivery lane stopped".into()));
        }
        Ok(())
    }

    fn hold(&self, topic: &str, partition: i32) -> Option<i64> {
        let p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.get(topic)
            .and_then(|t| t.get(&partition))
            .and_then(|o| o.keys().next().copied())
    }

    fn on_revoke(&mut self, partitions: &[(String, i32)]) {
        // Queued notifications of revoked partitions are still delivered (the new owner
        // re-delivers them too, with the same idempotency key); their holds no longer matter.
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, partition) in partitions {
            if let Some(t) = p.get_mut(topic.as_str()) {
                t.remove(partition);
            }
        }
    }
}

#[cfg(test)]
mod tests;
