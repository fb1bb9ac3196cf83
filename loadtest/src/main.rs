//! `fleet-loadtest`: load scenarios against the local stack.
//!
//! ## `passthrough` scenario
//! Measures the shared run loop's cost: N `TelemetryReading`s are written to a fresh topic,
//! then read twice in the same run from the same broker:
//!
//! 1. by a bare librdkafka consumer that only counts records (the ceiling), and
//! 2. by `passthrough-processor` (decode Avro, validate, encode, produce with acks=all, wait
//!    for the acknowledgement, store the offset), counted on its output topic;
//! 3. by `passthrough-processor` on the state runtime with per-vehicle de-duplication
//!    (`app.dedupe_ids = 64`), once `at_least_once` and once `exactly_once` (Kafka
//!    transactions every `runner.commit_interval`), counted by `read_committed` readers.
//!
//! Rates are measured from the first record seen to the last (start-up and group join are
//! excluded from both), and the report gives the ratio. Run release builds:
//!
//! ```text
//! cargo build --release -p fleet-loadtest -p fleet-passthrough
//! target/release/fleet-loadtest passthrough --records 200000
//! ```

mod anomaly;
mod api;
mod demo;
mod door;
mod drain;
mod fleet;
mod http;
mod lake;
mod mqtt;
mod replay;
mod telemetry;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fleet_runtime::testkit;
use fleet_schemas::{Encoder, Position, Registry, TelemetryReading, ids};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(version, about = "fleetstream load scenarios against the local stack")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// passthrough-processor vs a bare consumer on the same topic.
    Passthrough {
        /// Records to write and read.
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        /// Partitions of the input topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Distinct vehicles (keys).
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// A fixed-rate fleet through telemetry-processor: lag, vehicle_state freshness, max rate.
    Telemetry {
        /// Readings per second.
        #[arg(long, default_value_t = 5_000)]
        rate: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Records of the backlog used to measure the maximum rate.
        #[arg(long, default_value_t = 200_000)]
        backlog: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// anomaly-processor's maximum rate on a backlog, with its CPU.
    Anomaly {
        /// Readings in the backlog.
        #[arg(long, default_value_t = 300_000)]
        records: usize,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// A processor on a finite backlog: does its committed offset reach the end, how soon after
    /// its last output, and does a restart re-process anything?
    Drain {
        /// telemetry-processor or anomaly-processor.
        #[arg(long, default_value = "telemetry-processor")]
        processor: String,
        /// Readings in the backlog.
        #[arg(long, default_value_t = 2_000_000)]
        records: usize,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// http-ingest's capacity: closed-loop clients posting batches of readings.
    Http {
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Readings per request.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The whole pipeline under a simulated fleet over MQTT, audited: writes report.json and
    /// report.html to --out (what scripts/demo.sh runs).
    Demo {
        /// Readings per second.
        #[arg(long, default_value_t = 5_000)]
        rate: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// MQTT connections publishing.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// An emergency after every N-th reading, panic buttons and crashes in turn (0: none).
        #[arg(long, default_value_t = 5_000)]
        emergency_every: usize,
        /// Seed of the simulated fleet (routes, speeds, noise): same seed, same readings.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How the devices reach Kafka: MQTT through the bridge, or straight to Kafka.
        #[arg(long, value_enum, default_value = "mqtt")]
        transport: door::Transport,
        /// Use a pipeline that is already running (docker compose) instead of starting one on
        /// fresh topics: its topics, state store and lake below; this run's records carry a
        /// run tag in their vehicle and event ids.
        #[arg(long)]
        external: bool,
        /// (--external) Telemetry topic.
        #[arg(long, default_value = "fleet.telemetry")]
        telemetry_topic: String,
        /// (--external) Emergencies topic.
        #[arg(long, default_value = "fleet.emergencies")]
        emergencies_topic: String,
        /// (--external) Anomalies topic.
        #[arg(long, default_value = "fleet.anomalies")]
        anomalies_topic: String,
        /// (--external) Notifications topic.
        #[arg(long, default_value = "fleet.notifications")]
        notifications_topic: String,
        /// (--external) Vehicle profiles topic (planned routes are published there).
        #[arg(long, default_value = "fleet.vehicle-profiles")]
        profiles_topic: String,
        /// (--external) State store the processors write.
        #[arg(
            long,
            env = "FLEET_STATE_URL",
            default_value = "scylla://127.0.0.1:9042/fleet"
        )]
        state_url: String,
        /// (without --external) The processors' state store, e.g.
        /// scylla://127.0.0.1:9042/fleet_demo; default: a fresh SQLite file under --out.
        #[arg(long)]
        state: Option<String>,
        /// (without --external) runner.processing_guarantee of the stateful processors
        /// (telemetry, anomaly, emergency): at_least_once or exactly_once.
        #[arg(long, default_value = "at_least_once")]
        guarantee: String,
        /// (--external) Lake lake-sink writes.
        #[arg(long, env = "FLEET_LAKE_URL", default_value = "s3://fleet-lake/lake")]
        lake_url: String,
        /// (--external, MQTT transport) Topic prefix the pipeline's bridge subscribes to.
        #[arg(long, default_value = "vehicle")]
        mqtt_prefix: String,
        /// (--external) NAME=URL of a processor's HTTP endpoint, for its consumer lag
        /// (repeat), e.g. telemetry-processor=http://telemetry-processor:9100.
        #[arg(long)]
        metrics: Vec<String>,
        /// Directory for report.json, report.html, the lake and the state store.
        #[arg(long, default_value = "target/fleet-demo")]
        out: PathBuf,
    },
    /// Renders report.html from a report.json (the demo writes both; this re-renders).
    RenderReport {
        /// The report.json.
        #[arg(long)]
        json: PathBuf,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-sends a recorded stream (JSON lines of device messages, or a lake partition) at its
    /// original pace, scaled, or as fast as possible, and checks it arrived in Kafka
    Replay {
        #[command(flatten)]
        args: replay::ReplayArgs,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// fleet-api's read latency: closed-loop clients GET /v1/vehicles/{id} over a filled store.
    Api {
        /// Vehicles in the state store.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// lake-sink's rate on a backlog (Kafka -> Parquet files, committed), and its file sizes.
    Lake {
        /// Readings in the backlog.
        #[arg(long, default_value_t = 2_000_000)]
        records: usize,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// The sink's app.max_file_rows.
        #[arg(long, default_value_t = 100_000)]
        max_file_rows: usize,
        /// The sink's app.commit_interval, seconds.
        #[arg(long, default_value_t = 10)]
        commit_interval_s: u64,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Devices -> mosquitto -> mqtt-bridge -> Kafka at a fixed rate, then a burst.
    Mqtt {
        /// Messages per second in the fixed-rate phase.
        #[arg(long, default_value_t = 5_000)]
        rate: usize,
        /// Seconds of the fixed-rate phase.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Simulated vehicles.
        #[arg(long, default_value_t = 10_000)]
        vehicles: usize,
        /// MQTT connections publishing.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Messages of the as-fast-as-possible phase.
        #[arg(long, default_value_t = 200_000)]
        burst: usize,
        /// Also publish a panic button after every N-th reading of the fixed-rate phase and
        /// run emergency-processor: measures device -> notification latency under load (0: off).
        #[arg(long, default_value_t = 0)]
        emergency_every: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize)]
struct PassthroughReport {
    records: usize,
    partitions: i32,
    produce_records_per_s: f64,
    bare_consumer_records_per_s: f64,
    bare_pipe_records_per_s: f64,
    passthrough_records_per_s: f64,
    passthrough_over_bare: f64,
    passthrough_over_bare_pipe: f64,
    passthrough_outputs: usize,
    /// Records/s of the state runtime with de-duplication, by processing guarantee.
    stateful_at_least_once_records_per_s: f64,
    stateful_exactly_once_records_per_s: f64,
    exactly_once_over_at_least_once: f64,
}

fn reading(i: usize, vehicles: usize) -> TelemetryReading {
    reading_at(
        i,
        vehicles,
        1_700_000_000_000 + (i / vehicles) as i64 * 2_000,
    )
}

/// The `i`-th reading of a fleet of `vehicles`, taken at `t`.
pub(crate) fn reading_at(i: usize, vehicles: usize, t: i64) -> TelemetryReading {
    let v = i % vehicles;
    let vehicle_id = format!("VEH-{v:05}");
    TelemetryReading {
        event_id: ids::derived_id(&[&vehicle_id, &t.to_string()]),
        vehicle_id,
        event_time: t,
        ingest_time: t + 30,
        sent_time: Some(t + 10),
        position: Position::new(4.6 + (v as f64) * 1e-4, -74.08 + (i as f64) * 1e-7),
        speed_kmh: Some((i % 110) as f64),
        heading_deg: Some((i % 360) as f64),
        cargo_temp_c: Some(3.5 + (i % 10) as f64 * 0.1),
        door_open: Some(false),
        ignition_on: Some(true),
        accel_mps2: None,
        odometer_km: Some(100_000.0 + i as f64 * 0.01),
        battery_v: Some(12.7),
        camera_active: None,
        source: "loadtest".into(),
    }
}

/// Writes a backlog of `records` readings of a fleet of `vehicles` (2 s apart per vehicle,
/// ending now) to `topic`, registering the schema first.
pub(crate) async fn fleet_backlog(
    topic: &str,
    records: usize,
    vehicles: usize,
) -> anyhow::Result<()> {
    let registry = fleet_schemas::Registry::new(&testkit::registry_url())?;
    let enc = fleet_schemas::Encoder::<TelemetryReading>::register(&registry, topic).await?;
    let producer: rdkafka::producer::FutureProducer = producer_config(5).create()?;
    let base = fleet_runtime::metrics::now_ms() - (records / vehicles) as i64 * 2_000;
    write_all(&producer, topic, &enc, records, |i| {
        reading_at(i, vehicles, base + (i / vehicles) as i64 * 2_000)
    })
    .await?;
    eprintln!("{records} readings written to {topic}");
    Ok(())
}

/// Stops a process this load test started: SIGTERM (a graceful stop), then waits for it.
pub(crate) fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// The release binary `name` next to this one (built with `cargo build --release -p package`).
/// Waits up to `secs` seconds for a binary's `/health/ready` on `port` to answer 200.
pub(crate) async fn wait_ready(port: u16, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health/ready")).await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub(crate) fn release_bin(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} not built: cargo build --release -p {package}",
            bin.display()
        );
    }
    Ok(bin)
}

/// An idempotent `acks=all` lz4 producer configuration for the local stack.
pub(crate) fn producer_config(linger_ms: u32) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", testkit::brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4");
    c
}

/// Writes `n` readings made by `make` to `topic`, waiting for every acknowledgement.
pub(crate) async fn write_all(
    producer: &FutureProducer,
    topic: &str,
    enc: &Encoder<TelemetryReading>,
    n: usize,
    make: impl Fn(usize) -> TelemetryReading,
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for i in 0..n {
        let r = make(i);
        enc.encode_into(&r, &mut buf)?;
        loop {
            match producer.send_result(
                FutureRecord::to(topic)
                    .key(r.vehicle_id.as_bytes())
                    .payload(&buf),
            ) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                // librdkafka's queue is full: let it drain.
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Counts records on `topic` from the beginning until `want`; returns (first-seen, last-seen).
pub(crate) fn count_topic(
    topic: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<(Instant, Instant, usize)> {
    let c = testkit::fresh_reader("bench-count", topic);
    let deadline = Instant::now() + timeout;
    let mut first = None;
    let mut last = Instant::now();
    let mut n = 0;
    while n < want {
        if Instant::now() > deadline {
            bail!("timed out on {topic}: {n} of {want} records");
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m?;
            n += 1;
            last = Instant::now();
            first.get_or_insert(last);
        }
    }
    Ok((first.unwrap_or(last), last, n))
}

/// Forwards raw records from `src` to `dst` until `stop`.
fn bare_pipe(src: &str, dst: &str, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    use rdkafka::Message;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .set("group.id", testkit::random_name("bench-pipe"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    c.subscribe(&[src])?;
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        producer_config(5).create()?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            let mut rec = BaseRecord::<[u8], [u8]>::to(dst);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(v) = m.payload() {
                rec = rec.payload(v);
            }
            while let Err((_, r)) = p.send(rec) {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

pub(crate) fn rate(n: usize, first: Instant, last: Instant) -> f64 {
    let secs = last.duration_since(first).as_secs_f64().max(1e-6);
    (n.saturating_sub(1)) as f64 / secs
}

async fn passthrough(
    records: usize,
    partitions: i32,
    vehicles: usize,
) -> anyhow::Result<PassthroughReport> {
    let input = testkit::random_name("bench.in");
    testkit::create_topic(&input, partitions).await;
    let registry = Registry::new(&testkit::registry_url())?;
    let enc = Encoder::<TelemetryReading>::register(&registry, &input)
        .await
        .context("registering the schema (is the stack up? scripts/stack.sh up)")?;

    eprintln!("writing {records} records to {input} ({partitions} partitions)");
    let producer: FutureProducer = producer_config(10)
        .set("batch.num.messages", "10000")
        .create()?;
    let started = Instant::now();
    write_all(&producer, &input, &enc, records, |i| reading(i, vehicles)).await?;
    let produce_rate = records as f64 / started.elapsed().as_secs_f64();
    eprintln!("produced at {produce_rate:.0} records/s");

    let topic = input.clone();
    let (f, l, n) =
        tokio::task::spawn_blocking(move || count_topic(&topic, records, Duration::from_secs(600)))
            .await??;
    let bare = rate(n, f, l);
    eprintln!("bare consumer: {bare:.0} records/s");

    // A bare pipe: consume and re-produce the raw bytes (acks=all, idempotent), no decoding,
    // no per-record acknowledgement tracking: what any consume-transform-produce costs here.
    let piped = testkit::random_name("bench.pipe");
    testkit::create_topic(&piped, partitions).await;
    let (src, dst) = (input.clone(), piped.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let pipe = tokio::task::spawn_blocking(move || bare_pipe(&src, &dst, &stop2));
    let topic = piped.clone();
    let counted =
        tokio::task::spawn_blocking(move || count_topic(&topic, records, Duration::from_secs(600)))
            .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pipe.await??;
    let (f, l, n) = counted?;
    let bare_pipe = rate(n, f, l);
    eprintln!("bare pipe (consume + produce raw bytes): {bare_pipe:.0} records/s");

    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("passthrough-processor");
    if !bin.exists() {
        bail!(
            "{} not built: cargo build --release -p fleet-passthrough",
            bin.display()
        );
    }
    // Each mode reads the whole input into its own output topic and group.
    let run = |extra: &'static [(&'static str, &'static str)]| {
        let (bin, input) = (bin.clone(), input.clone());
        async move {
            let output = testkit::random_name("bench.out");
            testkit::create_topic(&output, partitions).await;
            let mut cmd = Command::new(&bin);
            cmd.env("FLEET_KAFKA_BROKERS", testkit::brokers())
                .env("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url())
                .env("FLEET__APP__INPUT_TOPIC", &input)
                .env("FLEET__APP__OUTPUT_TOPIC", &output)
                .env("FLEET__KAFKA__GROUP_ID", testkit::random_name("bench.pass"))
                .env("FLEET_HTTP_LISTEN", "")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null());
            for (k, v) in extra {
                cmd.env(k, v);
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let topic = output.clone();
            let counted = tokio::task::spawn_blocking(move || {
                count_topic(&topic, records, Duration::from_secs(600))
            })
            .await?;
            crate::terminate(&mut child);
            let (f, l, n) = counted?;
            anyhow::Ok((rate(n, f, l), n))
        }
    };
    let (pass, n) = run(&[]).await?;
    eprintln!("passthrough-processor: {pass:.0} records/s");
    let (alos, _) = run(&[
        ("FLEET__APP__DEDUPE_IDS", "64"),
        ("FLEET__RUNNER__PROCESSING_GUARANTEE", "at_least_once"),
    ])
    .await?;
    eprintln!("passthrough-processor, state runtime, dedupe, at_least_once: {alos:.0} records/s");
    let (eos, _) = run(&[
        ("FLEET__APP__DEDUPE_IDS", "64"),
        ("FLEET__RUNNER__PROCESSING_GUARANTEE", "exactly_once"),
    ])
    .await?;
    eprintln!("passthrough-processor, state runtime, dedupe, exactly_once: {eos:.0} records/s");
    Ok(PassthroughReport {
        records,
        partitions,
        produce_records_per_s: produce_rate.round(),
        bare_consumer_records_per_s: bare.round(),
        bare_pipe_records_per_s: bare_pipe.round(),
        passthrough_records_per_s: pass.round(),
        passthrough_over_bare: (pass / bare * 1000.0).round() / 1000.0,
        passthrough_over_bare_pipe: (pass / bare_pipe * 1000.0).round() / 1000.0,
        passthrough_outputs: n,
        stateful_at_least_once_records_per_s: alos.round(),
        stateful_exactly_once_records_per_s: eos.round(),
        exactly_once_over_at_least_once: (eos / alos * 1000.0).round() / 1000.0,
    })
}

/// What closed-loop clients saw.
pub(crate) struct ClosedLoop {
    /// Each request's latency, microseconds.
    pub(crate) latencies_us: Vec<u64>,
    /// Answers by HTTP status (0: no answer).
    pub(crate) statuses: std::collections::BTreeMap<u16, usize>,
    /// Wall-clock seconds the clients ran.
    pub(crate) seconds: f64,
}

/// Runs `clients` closed-loop clients for `duration`: client `c` calls `request(c, seq)` for
/// its `seq`-th request as soon as the previous one was answered. Calling `request` prepares
/// the request (not timed); awaiting the returned future sends it and gives the status (timed).
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    duration: Duration,
    request: F,
) -> anyhow::Result<ClosedLoop>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let request = std::sync::Arc::new(request);
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                let mut seq = 0;
                while Instant::now() < end {
                    let answer = request(c, seq);
                    let t0 = Instant::now();
                    let status = answer.await;
                    latencies.push(t0.elapsed().as_micros() as u64);
                    *statuses.entry(status).or_default() += 1;
                    seq += 1;
                }
                (latencies, statuses)
            })
        })
        .collect();
    let mut out = ClosedLoop {
        latencies_us: Vec::new(),
        statuses: std::collections::BTreeMap::new(),
        seconds: 0.0,
    };
    for t in tasks {
        let (latencies, statuses) = t.await?;
        out.latencies_us.extend(latencies);
        for (k, n) in statuses {
            *out.statuses.entry(k).or_default() += n;
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Prints a scenario's JSON report, and writes it to `report` too if given.
fn emit(r: &impl Serialize, report: Option<&std::path::Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(r)?;
    println!("{json}");
    if let Some(path) = report {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.scenario {
        Scenario::Http {
            clients,
            batch,
            duration,
            vehicles,
            report,
        } => {
            let r = http::run(clients.max(1), batch.max(1), duration, vehicles.max(1)).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Demo {
            rate,
            duration,
            vehicles,
            connections,
            emergency_every,
            seed,
            transport,
            external,
            telemetry_topic,
            emergencies_topic,
            anomalies_topic,
            notifications_topic,
            profiles_topic,
            state_url,
            state,
            guarantee,
            lake_url,
            mqtt_prefix,
            metrics,
            out,
        } => {
            let external = external.then(|| demo::External {
                telemetry: telemetry_topic,
                emergencies: emergencies_topic,
                anomalies: anomalies_topic,
                notifications: notifications_topic,
                profiles: profiles_topic,
                state_url,
                lake_url,
                mqtt_prefix,
                metrics: metrics
                    .iter()
                    .filter_map(|m| m.split_once('='))
                    .map(|(n, u)| (n.to_owned(), u.to_owned()))
                    .collect(),
            });
            let r = demo::run(demo::DemoArgs {
                rate: rate.max(1),
                duration,
                vehicles,
                connections: connections.max(1),
                emergency_every,
                seed,
                transport,
                external,
                state,
                guarantee,
                out: out.clone(),
            })
            .await?;
            emit(&r, None)?;
            eprintln!("report: {}/report.json and report.html", out.display());
            if !r.passed() {
                bail!("the demo's audit failed (report.json says what)");
            }
        }
        Scenario::RenderReport { json, out } => {
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            // Checked to be JSON: it is embedded in a script element.
            let _: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", json.display()))?;
            std::fs::write(&out, demo::render_html(&text))
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Scenario::Replay { args, report } => {
            let r = replay::run(args).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Api {
            vehicles,
            clients,
            duration,
            report,
        } => {
            let r = api::run(vehicles.max(1), clients.max(1), duration).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Lake {
            records,
            vehicles,
            max_file_rows,
            commit_interval_s,
            report,
        } => {
            let r = lake::run(records, vehicles.max(1), max_file_rows, commit_interval_s).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Drain {
            processor,
            records,
            vehicles,
            report,
        } => {
            let r = drain::run(&processor, records, vehicles.max(1)).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Anomaly {
            records,
            vehicles,
            report,
        } => {
            let r = anomaly::run(records, vehicles.max(1)).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Telemetry {
            rate,
            duration,
            vehicles,
            backlog,
            report,
        } => {
            let r = telemetry::run(rate, duration, vehicles.max(1), backlog).await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Mqtt {
            rate,
            duration,
            vehicles,
            connections,
            burst,
            emergency_every,
            report,
        } => {
            let r = mqtt::run(
                rate,
                duration,
                vehicles.max(1),
                connections,
                burst,
                emergency_every,
            )
            .await?;
            emit(&r, report.as_deref())?;
        }
        Scenario::Passthrough {
            records,
            partitions,
            vehicles,
            report,
        } => {
            let r = passthrough(records, partitions, vehicles.max(1)).await?;
            emit(&r, report.as_deref())?;
        }
    }
    Ok(())
}
