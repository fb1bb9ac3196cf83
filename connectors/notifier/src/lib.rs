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
//! ## Delivery guarantee
//! At least once. The offset of a notification is stored only after it was delivered or its
//! dead letter acknowledged (the run loop of `fleet-runtime`); a crash re-delivers with the same
//! idempotency key. Notifications of one recipient are delivered in order (one partition, one
//! at a time), so a failing endpoint delays that partition by at most the retry budget.

use std::time::Duration;

use fleet_runtime::metrics::Metrics;
use fleet_runtime::{Input, Outputs, ProcessError, Processor};
use fleet_schemas::{Channel, Notification, Severity};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

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
    }
    validate(c) {
        if c.attempts == 0 {
            return Err(fleet_runtime::Error::Config("app.attempts must be at least 1".into()));
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

/// The notifier.
#[derive(Debug)]
pub struct Notifier {
    http: reqwest::Client,
    cfg: NotifierConfig,
    webhook_ok: Counter,
    email_ok: Counter,
    log_ok: Counter,
    retries: Counter,
}

impl Notifier {
    /// A notifier with its HTTP client.
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

    async fn email(&self, n: &Notification) -> Result<(), ProcessError> {
        let Some(addr) = self
            .cfg
            .smtp_url
            .strip_prefix("smtp://")
            .filter(|a| !a.is_empty())
        else {
            return Err(ProcessError::poison(
                "no_smtp_configured",
                "app.smtp_url is empty",
            ));
        };
        if !valid_address(&n.recipient) {
            return Err(ProcessError::poison(
                "invalid_recipient",
                format!("{:?} is not an e-mail address", n.recipient),
            ));
        }
        let addr = addr.trim_end_matches('/');
        let mail = smtp::Mail {
            from: &self.cfg.smtp_from,
            to: &n.recipient,
            subject: &n.subject,
            body: &n.body,
            id: &n.event_id,
        };
        self.with_retries(n, "e-mail", "email_failed", addr, || async {
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

    async fn webhook(&self, n: &Notification) -> Result<(), ProcessError> {
        if self.cfg.webhook_url.is_empty() {
            return Err(ProcessError::poison(
                "no_webhook_configured",
                "app.webhook_url is empty",
            ));
        }
        let url = &self.cfg.webhook_url;
        self.with_retries(n, "webhook", "webhook_failed", url, || async {
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

    /// Runs `attempt` up to `app.attempts` times with capped exponential backoff between
    /// retryable failures. `Ok` once delivered; a rejection is returned at once; after the
    /// last retryable failure, the dead letter `failed` naming `target` and the last error.
    async fn with_retries<F, Fut>(
        &self,
        n: &Notification,
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
        for i in 1..=self.cfg.attempts {
            match attempt().await {
                Attempt::Delivered => return Ok(()),
                Attempt::Reject(e) => return Err(e),
                Attempt::Retry(m) => last = m,
            }
            if i < self.cfg.attempts {
                self.retries.inc();
                tracing::warn!(notification = %n.event_id, attempt = i, error = %last, "{channel} delivery failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.cfg.retry_max);
            }
        }
        Err(ProcessError::poison(
            failed,
            format!(
                "{} attempts to {target} failed; last: {last}",
                self.cfg.attempts
            ),
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

impl Processor for Notifier {
    type Input = Notification;

    async fn process(
        &mut self,
        input: &Input<'_, Notification>,
        _out: &mut Outputs,
    ) -> Result<(), ProcessError> {
        let n = &input.record;
        match n.channel {
            Channel::Webhook => self.webhook(n).await,
            Channel::Log => {
                tracing::info!(recipient = %n.recipient, vehicle = %n.vehicle_id, severity = ?n.severity, subject = %n.subject, body = %n.body, "notification");
                self.log_ok.inc();
                Ok(())
            }
            Channel::Email => self.email(n).await,
            Channel::Sms => Err(ProcessError::poison(
                "unsupported_channel",
                format!("channel {:?} is not implemented", n.channel),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
