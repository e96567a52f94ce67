//! The real binary with Kafka as the buffer (tansu, a Kafka-compatible broker, on sqlite):
//! SIGKILL of the bridge and of the broker mid-flight, and every event still arrives. Volume
//! and repeated kills on Kafka run in the fault suite (`tests/tests/faults.rs`). Event Hubs'
//! Kafka endpoint (TLS, SASL PLAIN with a connection string, OAUTHBEARER with Entra tokens) is
//! the testbench's front before tansu.

use std::time::Duration;

use e2e::{
    BridgeOptions, Tansu, eventually, log_tail, missing_event_ids, spawn_bridge, terminate,
    testbench_config, write_config,
};
use rand::{Rng as _, SeedableRng as _};
use testbench::{KafkaFront, KafkaFrontConfig, Testbench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_buffer_delivers_everything_and_a_clean_restart_resends_nothing() {
    let tansu = e2e::with_bridge_topics(Tansu::start(), 2);
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
    let mut tansu = e2e::with_bridge_topics(Tansu::start(), 2);

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

/// Placeholder for [`KafkaFrontConfig::upstream`]: [`event_hubs`] points it at its broker.
const UPSTREAM_SET_BY_EVENT_HUBS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The testbench's Event Hubs front (`front`, its `upstream` set here) before a tansu broker
/// that advertises the front's address, with the bridge's two topics.
async fn event_hubs(
    tb: &Testbench,
    mut front: KafkaFrontConfig,
    partitions: u32,
) -> (KafkaFront, Tansu) {
    let tansu_port = e2e::free_port();
    front.upstream = ([127, 0, 0, 1], tansu_port).into();
    let front = tb
        .start_kafka_front(front)
        .await
        .expect("start the Event Hubs front");
    let tansu = Tansu::start_advertising(tansu_port, front.addr().port());
    (front, e2e::with_bridge_topics(tansu, partitions))
}

/// Azure Event Hubs' Kafka endpoint, emulated: the testbench's front terminates TLS and SASL
/// in front of tansu. The bridge authenticates with OAUTHBEARER and Entra tokens of its
/// `sentinel.credential` identity (client secret here), scope derived from the broker host.
/// Tokens live 20 s, so during the run the front closes connections whose token expired and
/// the bridge must have handed librdkafka fresh ones: nothing is lost across rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_oauthbearer_with_rotating_entra_tokens_delivers_everything() {
    let mut tb_config = testbench_config(2);
    tb_config.entra.token_lifetime_secs = 20;
    let tb = Testbench::start(tb_config).await.expect("start testbench");
    let (front, _tansu) = event_hubs(
        &tb,
        KafkaFrontConfig {
            upstream: UPSTREAM_SET_BY_EVENT_HUBS,
            connection_string: None,
            oauth_audience: Some("https://127.0.0.1".to_owned()),
            authorized_clients: vec![e2e::AZURE_CLIENT_ID.to_owned()],
        },
        2,
    )
    .await;

    tb.falcon().append_events(0, 1_000);
    tb.falcon().append_events(1, 1_000);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            kafka_brokers: Some(front.addr().to_string()),
            kafka_security: Some(
                "    protocol: sasl_ssl\n    sasl_mechanism: oauthbearer\n".to_owned(),
            ),
            ..BridgeOptions::default()
        },
    );
    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    let all_there = eventually(Duration::from_mins(2), || missing_event_ids(&tb).is_empty()).await;
    assert!(
        all_there,
        "{} events not delivered; front {:?}; log:\n{}",
        missing_event_ids(&tb).len(),
        front.stats(),
        log_tail(dir.path(), 0)
    );

    // Keep events flowing across at least two token lifetimes: connections whose token
    // expires are closed by the front and must come back with a fresh one.
    for round in 0..5u32 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        tb.falcon().append_events(round % 2, 300);
    }
    let closed_expired = eventually(Duration::from_secs(30), || {
        front.stats().closed_token_expired > 0
    })
    .await;
    let all_there = eventually(Duration::from_mins(2), || missing_event_ids(&tb).is_empty()).await;
    let stats = front.stats();
    assert!(
        all_there,
        "{} events not delivered after token rotation; front {stats:?}; log:\n{}",
        missing_event_ids(&tb).len(),
        log_tail(dir.path(), 0)
    );
    assert!(
        closed_expired,
        "no connection outlived its token, so rotation was not exercised: {stats:?}"
    );
    assert_eq!(
        stats.authentication_failures_total(),
        0,
        "a stale or wrong token was offered: {stats:?}; log:\n{}",
        log_tail(dir.path(), 0)
    );
    let kafka_tokens = tb
        .entra()
        .audiences()
        .iter()
        .filter(|a| a.as_str() == "https://127.0.0.1")
        .count();
    assert!(
        kafka_tokens >= 3,
        "{kafka_tokens} Event Hubs tokens over ~70 s of 20 s tokens"
    );
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());
    assert_eq!(tb.ingestion().distinct_event_ids(), 3_500);
    tb.shutdown().await;
}

/// The Event Hubs connection string (SASL PLAIN, user `$ConnectionString`) over TLS, and a
/// wrong one: the bridge stays up, not ready, naming the authentication failure, and
/// delivers once the right secret is in place (a restart with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_connection_string_over_tls_delivers_and_a_wrong_one_is_reported() {
    const CONNECTION_STRING: &str = "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=bridge;\
                                     SharedAccessKey=dGVzdGJlbmNoLWV2ZW50LWh1YnM=";
    let tb = Testbench::start(testbench_config(1))
        .await
        .expect("start testbench");
    let (front, _tansu) = event_hubs(
        &tb,
        KafkaFrontConfig {
            upstream: UPSTREAM_SET_BY_EVENT_HUBS,
            connection_string: Some(CONNECTION_STRING.to_owned()),
            oauth_audience: None,
            authorized_clients: Vec::new(),
        },
        1,
    )
    .await;
    tb.falcon().append_events(0, 1_000);

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("eh.secret");
    let options = BridgeOptions {
        kafka_brokers: Some(front.addr().to_string()),
        kafka_security: Some(format!(
            "    protocol: sasl_ssl\n    event_hubs_connection_string: {{ file: {} }}\n",
            secret.display()
        )),
        ..BridgeOptions::default()
    };
    let config = write_config(&tb, dir.path(), &options);
    std::fs::write(
        &secret,
        "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=bridge;SharedAccessKey=d3Jvbmc=",
    )
    .unwrap();
    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    let refused = eventually(Duration::from_mins(1), || {
        front.stats().authentication_failures_total() > 0
    })
    .await;
    assert!(refused, "front {:?}", front.stats());
    assert_eq!(tb.ingestion().records(), 0);
    assert!(
        bridge.try_wait().expect("poll the bridge").is_none(),
        "a wrong Kafka secret must not end the process (a crash loop in Kubernetes); log:\n{}",
        log_tail(dir.path(), 0)
    );
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());

    std::fs::write(&secret, CONNECTION_STRING).unwrap();
    let mut bridge = spawn_bridge(&config, dir.path(), 1);
    let all_there = eventually(Duration::from_mins(2), || missing_event_ids(&tb).is_empty()).await;
    assert!(
        all_there,
        "{} events not delivered; front {:?}; log:\n{}",
        missing_event_ids(&tb).len(),
        front.stats(),
        log_tail(dir.path(), 1)
    );
    assert!(front.stats().authentications_succeeded > 0);
    assert!(terminate(&mut bridge, Duration::from_secs(30)).success());
    tb.shutdown().await;
}
