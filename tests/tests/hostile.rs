//! A hostile world, against the local stack: inputs and states of the broker that the happy
//! path never produces.
#![cfg(feature = "stack")]

use std::time::Duration;

use fleet_e2e::testkit;
use fleet_e2e::{Proc, fast_rejoin, wait_ready};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// A profiles topic whose records were all removed (retention, `kafka-delete-records`): its
/// high watermark is above 0 but no record can be read. Loading the table must finish at the
/// partition's end instead of waiting for offset `high - 1` until the 120 s start-up limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_topic_emptied_by_retention_does_not_block_start_up() {
    let profiles = testkit::random_name("e2e.hostile.profiles");
    testkit::create_topic(&profiles, 1).await;
    let junk: Vec<(Vec<u8>, Vec<u8>)> = (0..3)
        .map(|i| (format!("VEH-{i}").into_bytes(), b"gone".to_vec()))
        .collect();
    testkit::populate_topic(&profiles, &junk).await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .create()
        .expect("admin");
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(&profiles, 0, rdkafka::Offset::Offset(3))
        .expect("offset");
    admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("delete records");
    let view = testkit::group_lag("nobody", &profiles);
    assert_eq!(view[0].high, 3, "high watermark stays");

    let input = testkit::random_name("e2e.hostile.emergencies");
    let out = testkit::random_name("e2e.hostile.out");
    let dlq = testkit::random_name("e2e.hostile.dlq");
    for t in [&input, &out, &dlq] {
        testkit::create_topic(t, 1).await;
    }
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-hostile"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut env = vec![
        ("FLEET_KAFKA_BROKERS", testkit::brokers()),
        ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
        (
            "FLEET_STATE_URL",
            format!("sqlite://{}/state.db", dir.display()),
        ),
        ("FLEET__APP__INPUT_TOPIC", input),
        ("FLEET__APP__NOTIFICATIONS_TOPIC", out.clone()),
        ("FLEET__APP__COMMANDS_TOPIC", out),
        ("FLEET__APP__PROFILES_TOPIC", profiles),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("e2e.hostile"),
        ),
        ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
    ];
    env.extend(fast_rejoin());
    let p = Proc::start("emergency-processor", &env);
    assert!(
        wait_ready(&p).await,
        "emergency-processor ready although its profiles partition is empty"
    );
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

/// An undecodable input close to Kafka's 1 MB record limit: its dead letter (which carries the
/// original bytes) would exceed the limit, fail to be written, and stop the partition for ever.
/// The dead letter carries the first 256 KiB, the whole size and the SHA-256, and the next
/// input of the partition is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_input_near_the_record_limit_is_dead_lettered_and_the_partition_goes_on() {
    use fleet_schemas::{DeadLetter, Decoder, Registry};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use sha2::Digest as _;

    let input = testkit::random_name("e2e.hostile.big.in");
    let output = testkit::random_name("e2e.hostile.big.out");
    let dlq = testkit::random_name("e2e.hostile.big.dlq");
    for t in [&input, &output, &dlq] {
        testkit::create_topic(t, 1).await;
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", testkit::brokers())
        .set("message.max.bytes", "1048576")
        .create()
        .expect("producer");
    for payload in [&big[..], b"{\"not\":\"avro\"}"] {
        producer
            .send(
                FutureRecord::to(&input).key("VEH-BIG").payload(payload),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
    let dead = testkit::TopicTail::start(&dlq);
    let mut env = vec![
        ("FLEET_KAFKA_BROKERS", testkit::brokers()),
        ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
        ("FLEET__APP__INPUT_TOPIC", input.clone()),
        ("FLEET__APP__OUTPUT_TOPIC", output),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("e2e.hostile.big"),
        ),
        ("FLEET__KAFKA__CREATE_TOPICS", "false".into()),
    ];
    env.extend(fast_rejoin());
    let p = Proc::start("passthrough-processor", &env);
    assert_eq!(
        dead.wait_for(2, Duration::from_secs(60)).await,
        2,
        "both inputs dead-lettered: the big one did not stop the partition"
    );
    let dec =
        Decoder::<DeadLetter>::new(Registry::new(&testkit::registry_url()).expect("registry"));
    let records = dead.snapshot();
    let first = dec.decode(&records[0].payload).await.expect("dead letter");
    assert_eq!(first.source_offset, Some(0));
    assert_eq!(first.original_size, Some(1_000_000));
    assert_eq!(
        first.original.as_deref(),
        Some(&big[..DeadLetter::MAX_ORIGINAL_BYTES])
    );
    let sha: String = sha2::Sha256::digest(&big)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(first.original_sha256.as_deref(), Some(sha.as_str()));
    let second = dec.decode(&records[1].payload).await.expect("dead letter");
    assert_eq!(second.source_offset, Some(1));
    assert_eq!(second.original.as_deref(), Some(&b"{\"not\":\"avro\"}"[..]));
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

/// A deployment that renames its topics (a prefix per environment): start-up creates them under
/// the configured names, with the partitions of the default topic they stand for
/// (`<prefix>.fleet.telemetry` gets at least 12), and never the default names. With
/// `kafka.create_topics` off, a missing topic stops start-up with its name and config key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_topics_are_provisioned_under_their_configured_names() {
    let prefix = testkit::random_name("e2e.renamed");
    let input = format!("{prefix}.fleet.telemetry");
    let windows = format!("{prefix}.fleet.telemetry-windows");
    let dlq = format!("{prefix}.fleet.dlq");
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-renamed"));
    std::fs::create_dir_all(&dir).expect("dir");
    let base = vec![
        ("FLEET_KAFKA_BROKERS", testkit::brokers()),
        ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
        (
            "FLEET_STATE_URL",
            format!("sqlite://{}/state.db", dir.display()),
        ),
        ("FLEET__APP__INPUT_TOPIC", input.clone()),
        ("FLEET__APP__WINDOWS_TOPIC", windows.clone()),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq.clone()),
        (
            "FLEET__KAFKA__GROUP_ID",
            testkit::random_name("e2e.renamed"),
        ),
        ("FLEET__KAFKA__DEFAULT_PARTITIONS", "3".into()),
    ];
    let p = Proc::start("telemetry-processor", &base);
    assert!(wait_ready(&p).await, "telemetry-processor ready");
    assert_eq!(testkit::group_lag("nobody", &input).len(), 12, "input");
    assert_eq!(testkit::group_lag("nobody", &windows).len(), 3, "windows");
    assert_eq!(testkit::group_lag("nobody", &dlq).len(), 3, "dead letters");
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );

    // The same binary, told not to create topics, with one output missing.
    let missing = format!("{prefix}.missing-windows");
    let mut env = base.clone();
    env.retain(|(k, _)| *k != "FLEET__APP__WINDOWS_TOPIC");
    env.push(("FLEET__APP__WINDOWS_TOPIC", missing.clone()));
    env.push(("FLEET__KAFKA__CREATE_TOPICS", "false".into()));
    let mut cmd = std::process::Command::new(fleet_e2e::bin_path("telemetry-processor"));
    cmd.env("FLEET_HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("exits at start-up")
    .expect("join")
    .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "start-up must fail: {text}");
    assert!(
        text.contains(&missing) && text.contains("app.windows_topic"),
        "the error names the topic and its key: {text}"
    );
    assert!(
        testkit::group_lag("nobody", &missing).is_empty(),
        "nothing created"
    );
}

/// The state store stops taking writes (another process holds SQLite's write lock, as a
/// stalled or unreachable store would): telemetry-processor retries, and `/health/ready` says
/// so (503, "retrying a transient failure") instead of ready; once the store is back it is
/// ready again and the reading's state is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_outage_makes_the_processor_not_ready_until_it_is_back() {
    use fleet_schemas::{Encoder, Position, Registry, TelemetryReading, ids};
    let input = testkit::random_name("e2e.hostile.store.in");
    let windows = testkit::random_name("e2e.hostile.store.win");
    let dlq = testkit::random_name("e2e.hostile.store.dlq");
    for t in [&input, &windows, &dlq] {
        testkit::create_topic(t, 1).await;
    }
    let dir = std::env::temp_dir().join(testkit::random_name("fleet-e2e-store"));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("state.db");
    let mut env = vec![
        ("FLEET_KAFKA_BROKERS", testkit::brokers()),
        ("FLEET_SCHEMA_REGISTRY_URL", testkit::registry_url()),
        ("FLEET_STATE_URL", format!("sqlite://{}", db.display())),
        ("FLEET__APP__INPUT_TOPIC", input.clone()),
        ("FLEET__APP__WINDOWS_TOPIC", windows),
        ("FLEET__RUNNER__DLQ_TOPIC", dlq),
        ("FLEET__RUNNER__TICK_INTERVAL", "200ms".into()),
        ("FLEET__KAFKA__GROUP_ID", testkit::random_name("e2e.store")),
    ];
    env.extend(fast_rejoin());
    let p = Proc::start("telemetry-processor", &env);
    assert!(wait_ready(&p).await, "ready");

    // Another process takes SQLite's write lock and keeps it until killed.
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked',flush=True)\n\
             time.sleep(600)",
        )
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(locker.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked");
    }
    let registry = Registry::new(&testkit::registry_url()).expect("registry");
    let enc = Encoder::<TelemetryReading>::register(&registry, &input)
        .await
        .expect("schema");
    let t = fleet_e2e::now_ms();
    let r = TelemetryReading {
        event_id: ids::derived_id(&["e2e-store", &t.to_string()]),
        vehicle_id: "VEH-STORE".into(),
        event_time: t,
        ingest_time: t,
        sent_time: None,
        position: Position::new(4.6, -74.08),
        speed_kmh: Some(40.0),
        heading_deg: None,
        cargo_temp_c: None,
        door_open: None,
        ignition_on: None,
        accel_mps2: None,
        odometer_km: None,
        battery_v: None,
        camera_active: None,
        source: "e2e".into(),
    };
    testkit::populate_topic(
        &input,
        &[(b"VEH-STORE".to_vec(), enc.encode(&r).expect("encode"))],
    )
    .await;
    let mut not_ready = None;
    for _ in 0..600 {
        if let Some((503, body)) = p.get("/health/ready").await
            && body.contains("retrying a transient failure")
        {
            not_ready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = not_ready.expect("not ready while the store refuses writes");
    eprintln!("during the outage: {}", body.trim());

    let _ = locker.kill();
    let _ = locker.wait();
    assert!(wait_ready(&p).await, "ready again once the store is back");
    let store = fleet_state::Store::open(
        &format!("sqlite://{}", db.display()),
        fleet_state::StoreOptions::default(),
    )
    .await
    .expect("store");
    let mut written = false;
    for _ in 0..100 {
        use fleet_state::StateStore as _;
        if store
            .vehicle_state("VEH-STORE", fleet_e2e::now_ms())
            .await
            .ok()
            .flatten()
            .is_some()
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "the reading's state is written after the outage");
    assert!(
        p.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}
