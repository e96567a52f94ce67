//! The real binary with Kafka as the buffer (tansu, a Kafka-compatible broker, on sqlite):
//! SIGKILL of the bridge and of the broker mid-flight, and every event still arrives. Volume
//! and repeated kills on Kafka run in the fault suite (`tests/tests/faults.rs`).

use std::time::Duration;

use e2e::{
    BridgeOptions, Tansu, eventually, log_tail, missing_event_ids, spawn_bridge, terminate,
    testbench_config, write_config,
};
use rand::{Rng as _, SeedableRng as _};
use testbench::Testbench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_buffer_delivers_everything_and_a_clean_restart_resends_nothing() {
    let tansu = Tansu::start();
    tansu.create_topic("falcon-events", 2);
    tansu.create_topic("falcon-checkpoints", 1);
    let tb = Testbench::start(testbench_config(2))
        .await
        .expect("start testbench");
    tb.falcon().append_events(0, 3_000);
    tb.falcon().append_events(1, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            kafka_brokers: Some(tansu.broker()),
            ..BridgeOptions::default()
        },
    );
    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    let all_there = eventually(Duration::from_mins(2), || missing_event_ids(&tb).is_empty()).await;
    assert!(
        all_there,
        "{} events not delivered; log:\n{}",
        missing_event_ids(&tb).len(),
        log_tail(dir.path(), 0)
    );
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());
    let delivered = tb.ingestion().records();
    // A clean restart resumes after the last event and commits were flushed on shutdown.
    tb.falcon().append_events(1, 500);
    let mut bridge = spawn_bridge(&config, dir.path(), 1);
    let all_there = eventually(Duration::from_mins(1), || missing_event_ids(&tb).is_empty()).await;
    assert!(all_there, "log:\n{}", log_tail(dir.path(), 1));
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());
    assert_eq!(
        tb.ingestion().records(),
        delivered + 500,
        "resent after a clean restart"
    );
    assert_eq!(tb.ingestion().distinct_event_ids(), 5_500);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_buffer_survives_bridge_and_broker_kills_with_nothing_lost() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_124);
    let mut tansu = Tansu::start();
    tansu.create_topic("falcon-events", 2);
    tansu.create_topic("falcon-checkpoints", 1);

    let tb = Testbench::start(testbench_config(2))
        .await
        .expect("start testbench");
    // Small volumes: tansu 0.6's sqlite engine scans the table on fetch, and past ~20 MB
    // of records its single storage task falls behind for minutes (seen with gdb), which
    // tests tansu rather than the bridge. Volume runs go to librdkafka's mock cluster.
    tb.falcon().append_events(0, 1_500);
    tb.falcon().append_events(1, 1_500);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            kafka_brokers: Some(tansu.broker()),
            ..BridgeOptions::default()
        },
    );

    // Two SIGKILLs of the bridge while events flow.
    for run in 0..2 {
        let mut bridge = spawn_bridge(&config, dir.path(), run);
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_500))).await;
        tb.falcon().append_events(run as u32 % 2, 500);
        bridge.kill().expect("SIGKILL the bridge");
        bridge.wait().expect("reap the bridge");
    }

    // The broker is SIGKILLed and restarted on the same file while the bridge runs.
    let mut bridge = spawn_bridge(&config, dir.path(), 2);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tansu.kill();
    tb.falcon().append_events(0, 500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tansu.restart();

    let all_there = eventually(Duration::from_mins(3), || missing_event_ids(&tb).is_empty()).await;
    let missing = missing_event_ids(&tb);
    assert!(
        all_there,
        "{} events lost, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        log_tail(dir.path(), 2)
    );
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());
    assert_eq!(tb.ingestion().distinct_event_ids(), 4_500);
    tb.shutdown().await;
}
