//! `lake-sink` against the local stack, on a local directory and on the S3 API (s3s-fs):
//! exactly once under repeated SIGKILL, dead letters, schema evolution, an independent Parquet
//! reader (pyarrow), SQL through `fleetctl lake query` and `fleetctl lake compact`.
#![cfg(feature = "stack")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::Array as _;
use fleet_e2e::testkit::{self, TopicTail};
use fleet_e2e::{Proc, bin_path, fast_rejoin, wait_ready};
use fleet_lake::{Lake, S3Settings, catalog};
use fleet_schemas::{
    DeadLetter, Decoder, Encoder, Position, Registry, TelemetryReading, ids, write_datum,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z
const V1: usize = 6_000;
const V2: usize = 3_000;
const BAD: usize = 6;

fn reading(i: usize) -> TelemetryReading {
    let vehicle_id = format!("VEH-{:04}", i % 250);
    // Four hours of event time, interleaved (late data across hour directories).
    let t = T0 + (i % 4) as i64 * 3_600_000 + i as i64;
    TelemetryReading {
        event_id: ids::derived_id(&["lake", &i.to_string()]),
        vehicle_id,
        event_time: t,
        ingest_time: t + 10,
        sent_time: Some(t + 1),
        position: Position::new(4.6 + (i % 100) as f64 * 1e-3, -74.08),
        speed_kmh: Some((i % 110) as f64),
        heading_deg: None,
        cargo_temp_c: Some(3.5),
        door_open: None,
        ignition_on: Some(true),
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "e2e".into(),
    }
}

/// TelemetryReading plus one optional field: a backward-compatible evolution.
fn v2_schema() -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(<TelemetryReading as fleet_schemas::Record>::SCHEMA_JSON).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "driver_id", "type": ["null", "string"], "default": null}
    ));
    v.to_string()
}

async fn register_raw(topic: &str, schema: &str) -> u32 {
    let url = format!(
        "{}/subjects/{topic}-value/versions",
        testkit::registry_url()
    );
    let resp: serde_json::Value = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "schema": schema }).to_string())
        .send()
        .await
        .expect("registry reachable")
        .json()
        .await
        .expect("registry answers JSON");
    resp["id"].as_u64().expect("schema id") as u32
}

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(body);
    p
}

struct Case {
    topic: String,
    dlq: String,
    lake_url: String,
    s3: S3Settings,
    env: Vec<(&'static str, String)>,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// event_id -> driver_id (Some for v2 records).
    expected: HashMap<String, Option<String>>,
    _dir: tempfile::TempDir,
}

impl Case {
    async fn new(s3: bool) -> Self {
        let topic = testkit::random_name("e2e.lake");
        let dlq = testkit::random_name("e2e.lake-dlq");
        testkit::create_topic(&topic, 3).await;
        testkit::create_topic(&dlq, 1).await;
        let registry = Registry::new(&testkit::registry_url()).unwrap();
        let enc = Encoder::<TelemetryReading>::register(&registry, &topic)
            .await
            .expect("register (is the stack up? scripts/stack.sh up)");
        let v2_id = register_raw(&topic, &v2_schema()).await;
        assert_ne!(v2_id, enc.schema_id());
        let mut records = Vec::new();
        let mut expected = HashMap::new();
        for i in 0..V1 + V2 {
            let r = reading(i);
            let payload = if i < V1 {
                expected.insert(r.event_id.clone(), None);
                enc.encode(&r).unwrap()
            } else {
                // v2 body = v1 body + the union branch of driver_id (appended last).
                let mut body = Vec::new();
                write_datum(&r, &mut body).unwrap();
                let driver = (i % 2 == 0).then(|| format!("DRV-{}", i % 17));
                match &driver {
                    None => body.push(0),
                    Some(d) => {
                        body.push(2);
                        body.push((d.len() * 2) as u8);
                        body.extend_from_slice(d.as_bytes());
                    }
                }
                expected.insert(r.event_id.clone(), driver);
                framed(v2_id, &body)
            };
            records.push((r.vehicle_id.into_bytes(), payload));
            if i % ((V1 + V2) / BAD) == 7 {
                let bad = if records.len() % 2 == 0 {
                    b"{\"not\":\"avro\"}".to_vec()
                } else {
                    let mut p = enc.encode(&reading(1_000_000 + i)).unwrap();
                    p.truncate(p.len() - 3);
                    p
                };
                records.push((b"BAD".to_vec(), bad));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (lake_url, s3s) = if s3 {
            let c = testkit::credentials();
            let bucket = c
                .get("FLEET_S3_BUCKET")
                .cloned()
                .unwrap_or_else(|| "fleet-lake".into());
            let s = S3Settings {
                endpoint: Some(
                    std::env::var("FLEET_S3_ENDPOINT")
                        .unwrap_or_else(|_| "http://127.0.0.1:9000".into()),
                ),
                access_key: c.get("FLEET_S3_ACCESS_KEY").cloned(),
                secret_key: c.get("FLEET_S3_SECRET_KEY").cloned(),
                region: None,
            };
            (format!("s3://{bucket}/{}", testkit::random_name("lake")), s)
        } else {
            (
                dir.path().join("lake").display().to_string(),
                S3Settings::default(),
            )
        };
        let mut env = vec![
            ("FLEET_KAFKA_BROKERS", testkit::brokers()),
            ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
            ("FLEET_LAKE_URL", lake_url.clone()),
            ("FLEET__APP__TOPICS", format!("[\"{topic}\"]")),
            ("FLEET__APP__MAX_FILE_ROWS", "700".into()),
            ("FLEET__APP__ROW_GROUP_ROWS", "256".into()),
            ("FLEET__APP__COMMIT_INTERVAL", "1s".into()),
            ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
            ("FLEET__KAFKA__GROUP_ID", testkit::random_name("e2e.lake")),
            ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
        ];
        if let Some(e) = &s3s.endpoint {
            env.push(("FLEET_S3_ENDPOINT", e.clone()));
        }
        if let (Some(k), Some(s)) = (&s3s.access_key, &s3s.secret_key) {
            env.push(("FLEET_S3_ACCESS_KEY", k.clone()));
            env.push(("FLEET_S3_SECRET_KEY", s.clone()));
        }
        env.extend(fast_rejoin());
        Self {
            topic,
            dlq,
            lake_url,
            s3: s3s,
            env,
            records,
            expected,
            _dir: dir,
        }
    }

    /// What the lake holds once it has every expected record, or after 120 s.
    async fn wait_for_all(&self) -> HashMap<String, (usize, Option<String>)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got = self.read_back().await;
        while got.len() < self.expected.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            got = self.read_back().await;
        }
        got
    }

    fn lake(&self) -> Lake {
        Lake::open_with(&self.lake_url, &self.s3).unwrap()
    }

    /// event_id -> (copies, driver_id) over every committed file.
    async fn read_back(&self) -> HashMap<String, (usize, Option<String>)> {
        let lake = self.lake();
        let mut out: HashMap<String, (usize, Option<String>)> = HashMap::new();
        for files in catalog::data_files(&lake, &self.topic, None)
            .await
            .unwrap()
            .values()
        {
            for f in files {
                let bytes = lake.get(&f.rel).await.unwrap().expect("listed file exists");
                for b in ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap()
                {
                    let b = b.unwrap();
                    let ids = b.column_by_name("event_id").unwrap();
                    let ids = ids
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .unwrap();
                    let drivers = b.column_by_name("driver_id").map(|c| {
                        c.as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .unwrap()
                            .clone()
                    });
                    for i in 0..b.num_rows() {
                        let e = out.entry(ids.value(i).to_owned()).or_insert((0, None));
                        e.0 += 1;
                        e.1 = drivers
                            .as_ref()
                            .and_then(|d| d.is_valid(i).then(|| d.value(i).to_owned()));
                    }
                }
            }
        }
        out
    }

    fn fleetctl(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(bin_path("fleetctl"));
        cmd.arg("lake").args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("fleetctl runs");
        assert!(
            out.status.success(),
            "fleetctl lake {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Kills the sink at pseudo-random moments while the input is produced, then lets a last
/// instance finish; returns how many SIGKILLs were delivered.
async fn run_with_kills(case: &Case) -> usize {
    let records = case.records.clone();
    let topic = case.topic.clone();
    let producer = tokio::spawn(async move {
        testkit::populate_topic_paced(&topic, &records, 1500).await;
    });
    let mut kills = 0;
    let mut seed = 0x9e37_79b9_u64;
    let mut p = Proc::start("lake-sink", &case.env);
    while !producer.is_finished() || kills < 6 {
        // Kill only an instance that owns partitions (ready): a kill while the group is still
        // rebalancing tests the broker's session expiry, not the sink.
        assert!(wait_ready(&p).await, "lake-sink became ready");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(700 + seed % 2300)).await;
        p.kill9_in_place();
        kills += 1;
        p = Proc::start("lake-sink", &case.env);
        if kills > 20 {
            break;
        }
    }
    producer.await.unwrap();
    // Let the last instance catch up.
    let want = case.expected.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = case.read_back().await;
        if got.len() >= want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Anything extra would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = p.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop: {status:?}"
    );
    kills
}

async fn exactly_once(s3: bool) {
    let case = Case::new(s3).await;
    let dlq = TopicTail::start(&case.dlq);
    let kills = run_with_kills(&case).await;
    assert!(kills >= 6);

    // Exactly once: every produced event_id once, nothing else; evolved rows keep driver_id.
    let got = case.read_back().await;
    let dups: Vec<_> = got.iter().filter(|(_, (n, _))| *n != 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates after {kills} kills: {dups:?}");
    assert_eq!(
        got.len(),
        case.expected.len(),
        "every record in the lake after {kills} kills"
    );
    for (id, driver) in &case.expected {
        assert_eq!(&got[id].1, driver, "driver_id of {id}");
    }
    // Nothing left in staging.
    let lake = case.lake();
    let staging = lake
        .list(&format!("_fleet_lake/staging/{}", case.topic))
        .await
        .unwrap();
    assert!(staging.is_empty(), "{staging:?}");

    // Bad records: dead-lettered with reason and original bytes (at least once).
    dlq.wait_for(BAD, Duration::from_secs(20)).await;
    let dec = Decoder::<DeadLetter>::new(Registry::new(&testkit::registry_url()).unwrap());
    let mut offsets = HashMap::new();
    for rec in dlq.snapshot() {
        let dl = dec.decode(&rec.payload).await.unwrap();
        assert_eq!(dl.source_topic, case.topic);
        assert!(
            ["bad_framing", "undecodable"].contains(&dl.reason.as_str()),
            "{}",
            dl.reason
        );
        assert!(dl.original.is_some());
        offsets.insert((dl.source_partition, dl.source_offset), dl.reason);
    }
    assert_eq!(offsets.len(), BAD, "{offsets:?}");

    // SQL over old and new files together (DataFusion, partition columns from the paths).
    let table = case.topic.replace(['-', '.'], "_");
    let q = format!(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS d, count(driver_id) AS drivers, \
         count(DISTINCT hour) AS hours FROM {table}"
    );
    let drivers = case.expected.values().filter(|d| d.is_some()).count();
    let want = serde_json::json!({"n": got.len(), "d": got.len(), "drivers": drivers, "hours": 4});
    let out = case.fleetctl(&["query", &q, "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(),
        want,
        "{out}"
    );
    let pruned = case.fleetctl(&[
        "query",
        &format!("SELECT count(*) AS n FROM {table} WHERE date = '2026-11-23' AND hour = '02'"),
        "--format",
        "csv",
    ]);
    let hour2 = case.expected.keys().count() / 4;
    let n: usize = pruned.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(n.abs_diff(hour2) <= 1, "{pruned}");

    // Compaction: fewer files, same rows, no duplicates; the query still answers the same.
    let before = catalog::data_files(&lake, &case.topic, None).await.unwrap();
    let files_before: usize = before.values().map(Vec::len).sum();
    let out = case.fleetctl(&["compact", "--topic", &case.topic, "--target-mb", "64"]);
    assert!(out.contains("compacted"), "{out}");
    let after = catalog::data_files(&lake, &case.topic, None).await.unwrap();
    let files_after: usize = after.values().map(Vec::len).sum();
    assert!(
        files_after < files_before,
        "{files_before} -> {files_after}"
    );
    // One file per (hour, schema version) at most.
    assert!(after.values().all(|f| f.len() <= 2), "{after:?}");
    let again = case.read_back().await;
    assert_eq!(again.len(), got.len());
    assert!(again.values().all(|(n, _)| *n == 1));
    let out = case.fleetctl(&["query", &q, "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(),
        want
    );
    let ls = case.fleetctl(&["ls", "--topic", &case.topic]);
    assert!(ls.contains(&format!("{}", got.len())), "{ls}");

    // An independent reader: pyarrow reads every file of the local lake.
    if !s3 {
        let python =
            std::env::var("FLEET_PYTHON").expect("FLEET_PYTHON (scripts/test.sh installs pyarrow)");
        let script = r#"
import sys, glob, json, pyarrow.parquet as pq
ids, drivers = [], 0
for f in glob.glob(sys.argv[1] + "/" + sys.argv[2] + "/date=*/hour=*/*.parquet"):
    t = pq.read_table(f)
    ids += t.column("event_id").to_pylist()
    if "driver_id" in t.column_names:
        drivers += len([d for d in t.column("driver_id").to_pylist() if d is not None])
    assert str(t.schema.field("event_time").type) == "timestamp[ms, tz=UTC]", t.schema
print(json.dumps({"rows": len(ids), "distinct": len(set(ids)), "drivers": drivers}))
"#;
        let out = std::process::Command::new(python)
            .args(["-c", script, &case.lake_url, &case.topic])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"rows": got.len(), "distinct": got.len(), "drivers": drivers})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_lake_exactly_once_under_sigkill_with_evolution_sql_and_compaction() {
    exactly_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_lake_exactly_once_under_sigkill_with_evolution_sql_and_compaction() {
    exactly_once(true).await;
}

/// A TCP forwarder to the S3 endpoint that can refuse: while down, new connections are closed
/// at once and open ones are cut.
struct Switch {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Switch {
    async fn start(target: String) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (up, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let (mut rx, target) = (rx.clone(), target.clone());
                tokio::spawn(async move {
                    if !*rx.borrow() {
                        return;
                    }
                    let Ok(mut out) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// A switch between the case's sink and its S3 endpoint.
    async fn before_lake(case: &mut Case) -> Self {
        let target = case
            .s3
            .endpoint
            .clone()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned();
        let switch = Self::start(target).await;
        for (k, v) in &mut case.env {
            if *k == "FLEET_S3_ENDPOINT" {
                *v = format!("http://{}", switch.addr);
            }
        }
        switch
    }
}

/// `fleet_buffered_bytes{stage="lake_commit"}` of the sink.
async fn buffered(p: &Proc) -> f64 {
    let (_, text) = p.get("/metrics").await.unwrap_or_default();
    fleet_e2e::metric_sum(
        &text
            .lines()
            .filter(|l| l.contains("lake_commit"))
            .collect::<Vec<_>>()
            .join("\n"),
        "fleet_buffered_bytes",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_refusing_writes_pauses_the_sink_with_memory_bounded_and_loses_nothing() {
    const LIMIT: usize = 256 << 10;
    let mut case = Case::new(true).await;
    let switch = Switch::before_lake(&mut case).await;
    case.env
        .push(("FLEET__APP__MAX_BUFFERED_BYTES", LIMIT.to_string()));
    // The whole input is ~1 MB of Avro: far above the limit.
    let (first, rest) = case.records.split_at(300);
    testkit::populate_topic(&case.topic, first).await;
    let p = Proc::start("lake-sink", &case.env);
    assert!(wait_ready(&p).await, "lake-sink ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while case.read_back().await.len() < 250 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The lake refuses every request from now on.
    switch.set(false);
    testkit::populate_topic(&case.topic, rest).await;
    let mut paused = String::new();
    for _ in 0..120 {
        if let Some((503, body)) = p.get("/health/ready").await
            && body.contains("consumption paused")
        {
            paused = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        paused.contains("max_buffered_bytes"),
        "not paused: {paused:?}"
    );
    // Stays paused while the lake refuses, holding about the limit (the whole input would
    // be several times more).
    let mut peak = 0.0f64;
    for _ in 0..20 {
        peak = peak.max(buffered(&p).await);
        let ready = p.get("/health/ready").await.map(|(s, _)| s);
        assert_eq!(ready, Some(503), "not ready while paused");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        peak <= (2 * LIMIT) as f64,
        "held {peak} bytes with a limit of {LIMIT} while the lake refuses writes"
    );
    assert!(
        case.read_back().await.len() < case.expected.len(),
        "nothing was committed while the lake refused"
    );

    // The lake is back: everything lands exactly once and the sink is ready again.
    switch.set(true);
    let want = case.expected.len();
    let got = case.wait_for_all().await;
    assert_eq!(got.len(), want, "every record in the lake");
    assert!(got.values().all(|(n, _)| *n == 1), "exactly once");
    assert!(
        wait_ready(&p).await,
        "ready again once the lake accepts commits"
    );
    let status = p.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_sink_is_fenced_by_the_lake_and_writes_nothing() {
    let case = Case::new(true).await;
    let (first, rest) = case.records.split_at(case.records.len() / 2);
    testkit::populate_topic(&case.topic, first).await;
    // The zombie-to-be holds everything it reads (no commit before an hour or a million rows).
    let mut zombie_env = case.env.clone();
    zombie_env.extend([
        ("FLEET__APP__COMMIT_INTERVAL", "1h".to_owned()),
        ("FLEET__APP__MAX_FILE_ROWS", "1000000".to_owned()),
    ]);
    let mut zombie = Proc::start("lake-sink", &zombie_env);
    assert!(wait_ready(&zombie).await, "first sink ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = zombie.get("/metrics").await.unwrap_or_default();
        let fetched: f64 = fleet_e2e::metric_samples(&text, "fleet_buffered_bytes")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if fetched > 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // It stalls (a long GC pause, a frozen VM): the group gives its partitions to another
    // instance, which claims them in the lake and commits everything.
    zombie.signal("STOP");
    let owner = Proc::start("lake-sink", &case.env);
    testkit::populate_topic(&case.topic, rest).await;
    let want = case.expected.len();
    let got = case.wait_for_all().await;
    assert_eq!(got.len(), want, "the new owner committed everything");
    // The zombie wakes up into a SIGTERM: its shutdown commits what it holds, which the lake
    // refuses (fenced).
    zombie.signal("TERM");
    zombie.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while zombie.alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !zombie.alive(),
        "the zombie exits after its shutdown commit"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = case.read_back().await;
    let dups: Vec<_> = got.iter().filter(|(_, (n, _))| *n != 1).take(5).collect();
    assert!(dups.is_empty(), "the zombie wrote duplicates: {dups:?}");
    assert_eq!(got.len(), want, "the zombie removed nothing");
    let status = owner.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let got = case.read_back().await;
    assert_eq!(got.len(), want);
    assert!(got.values().all(|(n, _)| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_sink_retrying_an_unreachable_lake_at_once() {
    let mut case = Case::new(true).await;
    let switch = Switch::before_lake(&mut case).await;
    switch.set(false);
    testkit::populate_topic(&case.topic, &case.records[..50]).await;
    let p = Proc::start("lake-sink", &case.env);
    // It consumes, and retries recovering the partitions' lake state (the lake is down).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = p.get("/metrics").await.unwrap_or_default();
        let retries: Vec<&str> = m.lines().filter(|l| l.contains("lake_commit")).collect();
        if fleet_e2e::metric_sum(&retries.join("\n"), "fleet_processor_retries_total") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "never retried:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Before the retry loops gave way to shutdown, this waited for the lake forever.
    let status = p.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM while retrying: {status:?}"
    );
}
