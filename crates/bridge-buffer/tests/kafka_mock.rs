//! The Kafka backend against librdkafka's in-process mock cluster: real Kafka protocol over
//! loopback, with fault injection.
#![cfg(feature = "kafka")]

mod kafka_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bridge_buffer::{Buffer, BufferError, KafkaBuffer, Position};
use kafka_support::{CKPT, TOPIC, assert_exactly_once, config, read_n, recs, topic_contents};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn cluster(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, partitions, 1).expect("topic");
    mock.create_topic(CKPT, 1, 1).expect("checkpoint topic");
    mock
}

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_ack_commit_round_trip() {
    let mock = cluster(3);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g1")).await.unwrap();
    assert!(buf.resume_offsets().await.unwrap().is_empty());
    for p in 0..3 {
        buf.append(recs(p, 0, 20)).await.unwrap();
    }
    let entries = read_n(&buf, 60, WITHIN).await;
    // order holds per Falcon partition, and the payload comes back intact
    let mut per: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for e in &entries {
        assert_eq!(
            e.record,
            kafka_support::rec(e.record.partition, e.record.offset)
        );
        per.entry(e.record.partition)
            .or_default()
            .push(e.record.offset);
    }
    for p in 0..3 {
        assert_eq!(per[&p], (0..20).collect::<Vec<_>>());
    }
    let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
    buf.ack(&positions).await.unwrap();
    buf.close().await.unwrap();
    assert!(matches!(
        buf.append(recs(0, 20, 21)).await,
        Err(BufferError::Closed)
    ));

    // Restart: everything was committed, so the first entry read is the next new one.
    let buf = KafkaBuffer::connect(config(&brokers, "g1")).await.unwrap();
    buf.append(recs(1, 20, 21)).await.unwrap();
    let next = read_n(&buf, 1, WITHIN).await;
    assert_eq!((next[0].record.partition, next[0].record.offset), (1, 20));
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_offsets_survive_reconnect_with_and_without_close() {
    let mock = cluster(2);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    buf.append(recs(0, 0, 50)).await.unwrap();
    buf.append(recs(7, 100, 130)).await.unwrap();
    let expected = BTreeMap::from([(0, 49), (7, 129)]);
    assert_eq!(buf.resume_offsets().await.unwrap(), expected);
    buf.close().await.unwrap();

    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    assert_eq!(buf.resume_offsets().await.unwrap(), expected);
    // A crash: appended, never closed, checkpoint maybe not written.
    buf.append(recs(7, 130, 140)).await.unwrap();
    buf.append(recs(3, 5, 6)).await.unwrap();
    drop(buf);
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 49), (3, 5), (7, 139)])
    );
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_topic_is_a_floor_and_its_frontier_bounds_the_scan() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    buf.append(recs(1, 0, 10)).await.unwrap();
    buf.close().await.unwrap();
    // As if retention had deleted partition 9's records: only the checkpoint knows it. And a
    // frontier past partition 1's records: they are not scanned, the checkpoint covers them.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (k, v) in [("9", "500"), ("frontier:events:0", "10")] {
        producer
            .send(
                FutureRecord::to(CKPT).key(k).payload(v),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(1, 9), (9, 500)])
    );
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_while_the_broker_is_down_and_nothing_is_lost_or_duplicated() {
    let mock = cluster(2);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    buf.append(recs(0, 0, 10)).await.unwrap();

    mock.broker_down(-1).unwrap();
    let pending = tokio::spawn({
        let buf = buf.clone();
        async move {
            for chunk in 0..5 {
                buf.append(recs(0, 10 + chunk * 10, 20 + chunk * 10))
                    .await
                    .unwrap();
                buf.append(recs(1, chunk * 10, 10 + chunk * 10))
                    .await
                    .unwrap();
            }
        }
    });
    // Negative check (nothing can be awaited): no append completes while the broker is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !pending.is_finished(),
        "an append completed with the broker down"
    );
    mock.broker_up(-1).unwrap();
    tokio::time::timeout(WITHIN, pending)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 59), (1, 49)])
    );
    buf.close().await.unwrap();
    let contents = tokio::task::spawn_blocking(move || topic_contents(&brokers, TOPIC))
        .await
        .unwrap();
    assert_exactly_once(
        &contents,
        &BTreeMap::from([(0, (0..60).collect()), (1, (0..50).collect())]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_retried_without_duplicates() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    for chunk in 0..4 {
        buf.append(recs(4, chunk * 25, (chunk + 1) * 25))
            .await
            .unwrap();
    }
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(4, 99)])
    );
    buf.close().await.unwrap();
    let contents = tokio::task::spawn_blocking(move || topic_contents(&brokers, TOPIC))
        .await
        .unwrap();
    assert_exactly_once(&contents, &BTreeMap::from([(4, (0..100).collect())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_commit_only_the_prefix() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    buf.append(recs(2, 0, 10)).await.unwrap();
    let entries = read_n(&buf, 10, WITHIN).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.position.seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    let ack = |i: &[usize]| i.iter().map(|&i| entries[i].position).collect::<Vec<_>>();
    buf.ack(&ack(&[5, 6, 7, 0, 2])).await.unwrap();
    buf.ack(&ack(&[1])).await.unwrap();
    // Unknown positions are refused.
    assert!(matches!(
        buf.ack(&[Position { lane: 0, seq: 99 }]).await,
        Err(BufferError::UnknownPosition { .. })
    ));
    buf.close().await.unwrap();

    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    let again = read_n(&buf, 7, WITHIN).await;
    let offsets: Vec<u64> = again.iter().map(|e| e.record.offset).collect();
    assert_eq!(
        offsets,
        (3..10).collect::<Vec<_>>(),
        "resumes after the prefix 0..=2"
    );
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_respects_limits_and_is_cancel_safe() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    // A read cancelled while waiting consumes nothing.
    let cancelled = tokio::time::timeout(Duration::from_millis(300), buf.read(10, 1 << 20)).await;
    assert!(cancelled.is_err());
    buf.append(recs(0, 0, 30)).await.unwrap();
    let first = read_n(&buf, 1, WITHIN).await;
    assert_eq!(first[0].record.offset, 0);
    let mut got = vec![0];
    while got.len() < 30 {
        let one_record = first[0].record.encoded_len();
        // byte budget of two records: at most two per read (at least one always)
        let batch = tokio::time::timeout(WITHIN, buf.read(10, 2 * one_record))
            .await
            .unwrap()
            .unwrap();
        assert!((1..=2).contains(&batch.len()), "{}", batch.len());
        got.extend(batch.iter().map(|e| e.record.offset));
    }
    assert_eq!(
        got,
        (0..30).collect::<Vec<_>>(),
        "nothing skipped by the byte budget"
    );
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_in_the_error() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let mut c = config(&brokers, "g");
    c.topic = "no-such-topic".into();
    c.connect_timeout = Duration::from_secs(3);
    let err = KafkaBuffer::connect(c).await.unwrap_err().to_string();
    assert!(
        err.contains("no-such-topic") && err.contains(&brokers),
        "{err}"
    );
}

/// Polls `cond` until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_what_is_not_committed() {
    let mock = cluster(2);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    assert_eq!(buf.capacity_bytes(), config(&brokers, "g").max_bytes);
    buf.append(recs(0, 0, 30)).await.unwrap();
    buf.append(recs(1, 0, 20)).await.unwrap();
    eventually(WITHIN, "depth 50", || buf.depth().records == 50).await;
    let one = kafka_support::rec(0, 0).encoded_len() as u64;
    let bytes = buf.depth().bytes;
    assert!(
        bytes >= 45 * one && bytes <= 55 * one,
        "{bytes} bytes for 50 records of ~{one}"
    );

    let entries = read_n(&buf, 50, WITHIN).await;
    let mut acked: Vec<Position> = entries.iter().map(|e| e.position).collect();
    // Leave the last entry of one lane unacknowledged: it still counts.
    let held = acked.pop().unwrap();
    buf.ack(&acked).await.unwrap();
    eventually(WITHIN, "depth 1 after commit", || buf.depth().records == 1).await;
    buf.ack(&[held]).await.unwrap();
    eventually(WITHIN, "depth 0 after commit", || buf.depth().records == 0).await;
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_waiting_read_and_refuses_further_calls() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    let reader = tokio::spawn({
        let buf = buf.clone();
        async move { buf.read(10, 1 << 20).await }
    });
    buf.close().await.unwrap();
    let read = tokio::time::timeout(WITHIN, reader).await.unwrap().unwrap();
    assert!(matches!(read, Err(BufferError::Closed)), "{read:?}");
    assert!(matches!(buf.read(1, 1).await, Err(BufferError::Closed)));
    assert!(matches!(
        buf.append(recs(0, 0, 1)).await,
        Err(BufferError::Closed)
    ));
    assert!(matches!(buf.close().await, Err(BufferError::Closed)));
}

/// Records deleted by retention before delivery are reported, never silent. The mock cluster
/// keeps at most 5 MB per partition and drops the oldest message sets beyond that, which is
/// retention: committed offset 10, then ~8 MB of incompressible records, and the first offset
/// moves past the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_retention_before_delivery_are_reported() {
    use rand::{RngCore as _, SeedableRng as _};
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    buf.append(recs(0, 0, 10)).await.unwrap();
    let entries = read_n(&buf, 10, WITHIN).await;
    let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
    buf.ack(&positions).await.unwrap();
    eventually(WITHIN, "depth 0 after commit", || buf.depth().records == 0).await;
    assert_eq!(buf.records_lost_to_retention(), 0);

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for chunk in 0..8u64 {
        let records = (0..250u64)
            .map(|i| {
                let mut r = kafka_support::rec(0, 10 + chunk * 250 + i);
                let mut noise = vec![0u8; 4096];
                rng.fill_bytes(&mut noise);
                r.payload = bytes::Bytes::from(noise);
                r
            })
            .collect();
        buf.append(records).await.unwrap();
    }
    eventually(WITHIN, "the retention loss is reported", || {
        buf.records_lost_to_retention() > 0
    })
    .await;
    let lost = buf.records_lost_to_retention();
    assert!(
        (250..2_010).contains(&lost),
        "{lost} records reported lost of 2,000 appended past a 5 MB partition"
    );
    buf.close().await.unwrap();
}

/// Starts appending record `offset` of Falcon partition 0 and checks, `after` later, that the
/// append is still waiting (the backlog cap holds it).
async fn append_waits(
    buf: &KafkaBuffer,
    offset: u64,
    after: Duration,
) -> tokio::task::JoinHandle<Result<(), BufferError>> {
    let append = tokio::spawn({
        let buf = buf.clone();
        async move { buf.append(recs(0, offset, offset + 1)).await }
    });
    tokio::time::sleep(after).await;
    assert!(
        !append.is_finished(),
        "an append went past the backlog cap: {:?}",
        buf.depth()
    );
    append
}

/// Closes `buf` and checks that the waiting `append` ends with `Closed`.
async fn close_ends_the_wait(
    buf: &KafkaBuffer,
    append: tokio::task::JoinHandle<Result<(), BufferError>>,
) {
    buf.close().await.unwrap();
    let ended = tokio::time::timeout(WITHIN, append).await.unwrap().unwrap();
    assert!(matches!(ended, Err(BufferError::Closed)), "{ended:?}");
}

/// With `max_backlog_bytes`, an append waits while the undelivered backlog is at the cap (the
/// source stops reading Falcon), goes through once delivery brings the backlog down, and a
/// close ends the wait. A restarted process knows the backlog before its first append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_at_the_backlog_cap_until_delivery_makes_room() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let one = kafka_support::rec(0, 0).encoded_len() as u64;
    let mut cfg = config(&brokers, "g");
    cfg.max_backlog_bytes = Some(20 * one);
    let buf = KafkaBuffer::connect(cfg.clone()).await.unwrap();
    assert_eq!(buf.capacity_bytes(), 20 * one);
    buf.append(recs(0, 0, 20)).await.unwrap();
    assert_eq!(
        buf.depth().records,
        20,
        "the append counts before any refresh"
    );

    // Two depth refreshes (every 2 s) later the backlog is still 20: still waiting.
    let waiting = append_waits(&buf, 20, Duration::from_secs(5)).await;
    let entries = read_n(&buf, 20, WITHIN).await;
    let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
    buf.ack(&positions).await.unwrap();
    tokio::time::timeout(WITHIN, waiting)
        .await
        .expect("the append resumes once delivery made room")
        .unwrap()
        .unwrap();
    let next = read_n(&buf, 1, WITHIN).await;
    assert_eq!(next[0].record.offset, 20);

    // At the cap again (20 unacknowledged + 1 read but not acknowledged): close ends the wait.
    buf.append(recs(0, 21, 40)).await.unwrap();
    eventually(WITHIN, "depth 20", || buf.depth().records >= 20).await;
    let blocked = append_waits(&buf, 40, Duration::from_secs(1)).await;
    close_ends_the_wait(&buf, blocked).await;

    // A restarted process knows the backlog before its first append: it waits at once.
    let buf = KafkaBuffer::connect(cfg).await.unwrap();
    assert_eq!(buf.depth().records, 20, "connect refreshed the depth");
    let restarted = append_waits(&buf, 40, Duration::from_secs(3)).await;
    close_ends_the_wait(&buf, restarted).await;
}

/// Falcon partition `p` lands in Kafka partition `p % partitions`: consecutive Falcon
/// partitions use every Kafka partition (librdkafka's key hash put "0" and "1" both in
/// partition 1 of 2, leaving a second consumer of the group idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falcon_partitions_spread_over_kafka_partitions() {
    let mock = cluster(2);
    let brokers = mock.bootstrap_servers();
    let buf = KafkaBuffer::connect(config(&brokers, "g")).await.unwrap();
    for p in 0..4 {
        buf.append(recs(p, 0, 3)).await.unwrap();
    }
    let entries = read_n(&buf, 12, WITHIN).await;
    let lanes: BTreeMap<u32, std::collections::BTreeSet<u32>> =
        entries.iter().fold(BTreeMap::new(), |mut m, e| {
            m.entry(e.record.partition)
                .or_default()
                .insert(e.position.lane);
            m
        });
    let expected: BTreeMap<u32, std::collections::BTreeSet<u32>> =
        (0..4).map(|p| (p, [p % 2].into())).collect();
    assert_eq!(lanes, expected, "Falcon partition -> Kafka partitions");
    buf.close().await.unwrap();
}
