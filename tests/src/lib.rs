//! Helpers for end-to-end tests: locate and run the workspace's binaries as child processes,
//! configured through the environment like a user would, and stop them with real signals.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fleet_runtime::testkit;

/// Path of a workspace binary in the same target directory as the running test.
///
/// `scripts/test.sh` builds every binary before running the tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running binary.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Port of its metrics/health server.
    pub http_port: u16,
}

impl Proc {
    /// Starts `name` with extra environment variables; its metrics server gets a free port.
    pub fn start(name: &str, env: &[(&str, String)]) -> Self {
        let http_port = free_port();
        let mut cmd = Command::new(bin_path(name));
        cmd.env("FLEET_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Self { child, http_port }
    }

    /// Sends `signal` (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        self.kill9_in_place();
    }

    /// SIGKILL and reap, keeping the handle (for a restart loop).
    pub fn kill9_in_place(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for the exit status (None if it did not exit).
    pub fn terminate(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GET `path` on its metrics server: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{}", self.http_port, path);
        let resp = reqwest::get(url).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wall-clock time, ms since the epoch.
pub fn now_ms() -> i64 {
    fleet_runtime::metrics::now_ms()
}

/// Environment that keeps consumer-group restarts short on the local broker: a killed member
/// holds its partitions until its session times out, and a rebalance waits up to the members'
/// max poll interval.
pub fn fast_rejoin() -> Vec<(&'static str, String)> {
    vec![
        ("FLEET__KAFKA__SESSION_TIMEOUT", "6s".into()),
        ("FLEET__KAFKA__MAX_POLL_INTERVAL", "10s".into()),
    ]
}

/// Waits up to 30 s for `/health/ready` to answer 200.
pub async fn wait_ready(p: &Proc) -> bool {
    for _ in 0..300 {
        if let Some((200, _)) = p.get("/health/ready").await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits up to 40 s until the process reports a finished input in its metrics.
pub async fn wait_progress(p: &Proc) -> bool {
    for _ in 0..400 {
        let (_, metrics) = p.get("/metrics").await.unwrap_or_default();
        if metrics.contains("outcome=\"ok\"} ") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub use fleet_runtime::testkit::{credentials, state_dir};

/// Decodes consumed records through the local registry; panics on a record that does not decode.
pub async fn decode_all<T: fleet_schemas::Record>(records: &[testkit::Consumed]) -> Vec<T> {
    let registry = fleet_schemas::Registry::new(&testkit::registry_url()).expect("registry");
    let dec = fleet_schemas::Decoder::<T>::new(registry);
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(dec.decode(&r.payload).await.expect("decodes"));
    }
    out
}

/// A device's telemetry JSON for `vehicle` with sequence number `seq` in its odometer (tests
/// find every message by it) and `ts` as both device and send time.
pub fn reading_json(vehicle: &str, seq: usize, ts: i64) -> String {
    format!(
        r#"{{"vehicleId":"{vehicle}","timestamp":{ts},"sentAt":{ts},"location":{{"lat":4.6097,"lon":-74.0817}},"speed":65.5,"cargo_temperature":4.0,"odometer":{seq}}}"#
    )
}

/// Port of the local MQTT broker's plain listener.
pub fn mqtt_port() -> u16 {
    std::env::var("FLEET_MQTT_URL")
        .ok()
        .and_then(|u| u.rsplit(':').next().and_then(|p| p.parse().ok()))
        .unwrap_or(1883)
}

/// Port of the local MQTT broker's TLS (client certificate) listener.
pub fn mqtt_tls_port() -> u16 {
    std::env::var("FLEET_MQTT_TLS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8883)
}

/// Kafka topics and the MQTT prefix of one bridge under test (`test/{run}` on the local
/// broker, so that bridges of tests running in parallel never see each other's messages).
#[derive(Debug)]
pub struct BridgeRun {
    /// MQTT topic prefix.
    pub prefix: String,
    /// Kafka topic for telemetry.
    pub telemetry: String,
    /// Kafka topic for emergencies.
    pub emergencies: String,
    /// Kafka topic for deliveries.
    pub deliveries: String,
    /// Kafka topic of commands (downlink).
    pub commands: String,
    /// Dead-letter topic.
    pub dlq: String,
}

impl BridgeRun {
    /// Fresh names; the Kafka topics are created.
    pub async fn new(partitions: i32) -> Self {
        Self::new_on(&testkit::brokers(), partitions).await
    }

    /// [`BridgeRun::new`] on the cluster at `brokers`.
    pub async fn new_on(brokers: &str, partitions: i32) -> Self {
        let id = testkit::random_name("r").replace('.', "");
        let run = Self {
            prefix: format!("test/{id}"),
            telemetry: testkit::random_name("e2e.mqtt.tel"),
            emergencies: testkit::random_name("e2e.mqtt.emg"),
            deliveries: testkit::random_name("e2e.mqtt.dlv"),
            commands: testkit::random_name("e2e.mqtt.cmd"),
            dlq: testkit::random_name("e2e.mqtt.dlq"),
        };
        for t in [
            &run.telemetry,
            &run.emergencies,
            &run.deliveries,
            &run.commands,
        ] {
            testkit::create_topic_on(brokers, t, partitions).await;
        }
        testkit::create_topic_on(brokers, &run.dlq, 1).await;
        run
    }

    /// Environment of an `mqtt-bridge` instance with MQTT client id `client_id`.
    pub fn env(&self, client_id: &str) -> Vec<(&'static str, String)> {
        let creds = credentials();
        let mut env = vec![
            (
                "FLEET_MQTT_URL",
                format!("mqtt://127.0.0.1:{}", mqtt_port()),
            ),
            (
                "FLEET_MQTT_BRIDGE_USER",
                creds["FLEET_MQTT_BRIDGE_USER"].clone(),
            ),
            (
                "FLEET_MQTT_BRIDGE_PASSWORD",
                creds["FLEET_MQTT_BRIDGE_PASSWORD"].clone(),
            ),
            ("FLEET__APP__CLIENT_ID", client_id.to_owned()),
            ("FLEET__APP__TOPIC_PREFIX", self.prefix.clone()),
            ("FLEET__APP__TELEMETRY_TOPIC", self.telemetry.clone()),
            ("FLEET__APP__EMERGENCIES_TOPIC", self.emergencies.clone()),
            ("FLEET__APP__DELIVERIES_TOPIC", self.deliveries.clone()),
            ("FLEET__APP__COMMANDS_TOPIC", self.commands.clone()),
            ("FLEET__RUNNER__DLQ_TOPIC", self.dlq.clone()),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
            // The downlink's consumer group: one per test run.
            (
                "FLEET__KAFKA__GROUP_ID",
                format!("{}-downlink", self.commands),
            ),
        ];
        env.extend(fast_rejoin());
        env
    }

    /// The MQTT topic of `vehicle`'s `kind` (`telemetry`, `emergency`, `commands`, ...).
    pub fn topic(&self, vehicle: &str, kind: &str) -> String {
        format!("{}/{vehicle}/{kind}", self.prefix)
    }
}

/// A throw-away Apache Kafka cluster for failure tests, started by `scripts/stack.sh` in its own
/// state directory (`up --kafka-nodes N --only kafka`), so a test can SIGKILL and restart its
/// brokers without touching the shared stack; stopped (`down`) on drop.
#[derive(Debug)]
pub struct KafkaCluster {
    dir: tempfile::TempDir,
    port: u16,
    nodes: usize,
}

impl KafkaCluster {
    /// Starts `nodes` nodes with Kafka ports `base_port`, `base_port + 100`, ... (controllers
    /// on each port + 1) and waits until every node has started.
    pub fn start(nodes: usize, base_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("state dir");
        let cluster = Self {
            dir,
            port: base_port,
            nodes,
        };
        cluster.up();
        cluster
    }

    fn stack(&self, args: &[&str]) -> std::process::ExitStatus {
        Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh"))
            .args(args)
            .env("FLEET_STATE_DIR", self.dir.path())
            .env("FLEET_KAFKA_PORT", self.port.to_string())
            .env_remove("FLEET_KAFKA_BROKERS")
            .stdin(Stdio::null())
            .status()
            .expect("running scripts/stack.sh")
    }

    /// Starts every node that is not running (all of them at first) and waits for them.
    pub fn up(&self) {
        let n = self.nodes.to_string();
        let status = self.stack(&["up", "--kafka-nodes", &n, "--only", "kafka"]);
        assert!(
            status.success(),
            "scripts/stack.sh up --kafka-nodes {n} failed"
        );
    }

    /// The bootstrap list of every node.
    pub fn brokers(&self) -> String {
        (0..self.nodes)
            .map(|i| format!("127.0.0.1:{}", self.port as usize + i * 100))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The pid of node `node` (1-based), from its pid file.
    pub fn pid(&self, node: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(format!("pids/kafka-{node}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs node `node` (1-based).
    pub fn kill9(&self, node: usize) {
        let pid = self.pid(node).expect("node's pid file");
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let _ = self.stack(&["down"]);
    }
}

pub mod mqtt;

/// Polls the broker (every 200 ms, up to `timeout`) until `group` has committed the high
/// watermark of every partition of `topic`; returns how long that took, or the last view.
pub async fn wait_committed_to_end(
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Duration, Vec<testkit::PartitionLag>> {
    let started = std::time::Instant::now();
    loop {
        let (g, t) = (group.to_owned(), topic.to_owned());
        let view = tokio::task::spawn_blocking(move || testkit::group_lag(&g, &t))
            .await
            .expect("group_lag");
        if view
            .iter()
            .all(|p| p.high == 0 || p.committed == Some(p.high))
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(view);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The samples of metric `name` (exact name, any labels) in a Prometheus text exposition.
pub fn metric_samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of metric `name`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_samples(text, name).iter().map(|(_, v)| v).sum()
}
