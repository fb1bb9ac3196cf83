//! An MQTT device (or fleet simulator) for tests: rumqttc, MQTT 3.1.1, QoS 1, counting the
//! broker's PUBACKs and collecting what it receives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// Messages a device received: (topic, payload).
type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A connected test client.
#[derive(Debug)]
pub struct Device {
    client: AsyncClient,
    acked: Arc<AtomicUsize>,
    connacks: Arc<AtomicUsize>,
    received: Inbox,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// How a device authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credentials.
    Anonymous,
    /// User name and password.
    Password(String, String),
    /// TLS client certificate (PKCS#12 DER, password) with the CA (PEM).
    Certificate {
        /// CA certificate, PEM.
        ca: Vec<u8>,
        /// PKCS#12 archive.
        pkcs12: Vec<u8>,
        /// Its password.
        password: String,
    },
}

impl Device {
    /// Connects `client_id` to 127.0.0.1:`port`; returns once the event loop runs (check
    /// [`Device::connected`] for the broker's verdict).
    pub fn connect(client_id: &str, port: u16, auth: Auth) -> Self {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10))
            .set_inflight(1000)
            .set_max_packet_size(32 << 20, 32 << 20)
            .set_clean_session(true);
        match auth {
            Auth::Anonymous => {}
            Auth::Password(u, p) => {
                o.set_credentials(u, p);
            }
            Auth::Certificate {
                ca,
                pkcs12,
                password,
            } => {
                o.set_transport(Transport::tls_with_config(TlsConfiguration::SimpleNative {
                    ca,
                    client_auth: Some((pkcs12, password)),
                }));
            }
        }
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicUsize::new(0));
        let connacks = Arc::new(AtomicUsize::new(0));
        let received: Inbox = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (a, c, r, e) = (
            acked.clone(),
            connacks.clone(),
            received.clone(),
            errors.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut v) = r.lock() {
                            v.push((p.topic.clone(), p.payload.to_vec()));
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if let Ok(mut v) = e.lock() {
                            v.push(err.to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Self {
            client,
            acked,
            connacks,
            received,
            errors,
            task,
        }
    }

    /// Waits up to `timeout` for the broker to accept the connection.
    pub async fn connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.connacks.load(Ordering::Relaxed) > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Connection errors seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Publishes with QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish request");
    }

    /// Subscribes with QoS 1 and waits briefly for the subscription to take effect.
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// PUBACKs received from the broker so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` publishes were acknowledged by the broker or `timeout` passed.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.acked() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acked()
    }

    /// Messages received so far: (topic, payload).
    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}
