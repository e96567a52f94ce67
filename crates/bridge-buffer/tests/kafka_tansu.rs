//! The Kafka backend against a real broker: tansu (Kafka-compatible, sqlite storage) as a
//! child process on loopback. The broker binary comes from `TANSU_BIN`, else
//! `$HOME/.cache/falcon-sentinel-bridge/tools/bin/tansu` (`scripts/provision-tansu.sh`).
//! A missing binary fails the tests; they are never skipped silently.
#![cfg(feature = "kafka")]

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bridge_buffer::{Buffer, Entry, KafkaBuffer, Position};
use kafka_support::{CKPT, TOPIC, assert_exactly_once, config, read_n, recs, topic_contents};
use testbench::Tansu;

const WITHIN: Duration = Duration::from_secs(30);

fn broker(partitions: u32) -> Tansu {
    let t = Tansu::start();
    t.create_topic(TOPIC, partitions);
    t.create_topic(CKPT, 1);
    t
}

fn positions(entries: &[Entry]) -> Vec<Position> {
    entries.iter().map(|e| e.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_commit_and_restart_mid_batch() {
    let t = broker(2);
    let buf = KafkaBuffer::connect(config(&t.broker(), "w"))
        .await
        .unwrap();
    for p in 0..4 {
        buf.append(recs(p, 0, 25)).await.unwrap();
    }
    let entries = read_n(&buf, 100, WITHIN).await;
    let mut per_lane: BTreeMap<u32, Vec<&Entry>> = BTreeMap::new();
    for e in &entries {
        per_lane.entry(e.position.lane).or_default().push(e);
    }
    // Acknowledge, per lane, the first 10 entries plus a few later ones (out of order).
    let mut acked = Vec::new();
    let mut expect_again = BTreeSet::new();
    for lane in per_lane.values() {
        for (i, e) in lane.iter().enumerate() {
            if i < 10 || i % 3 == 0 {
                acked.push(e.position);
            }
            if i >= 10 {
                expect_again.insert((e.record.partition, e.record.offset));
            }
        }
    }
    acked.reverse();
    buf.ack(&acked).await.unwrap();
    buf.close().await.unwrap();

    let buf = KafkaBuffer::connect(config(&t.broker(), "w"))
        .await
        .unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        (0..4).map(|p| (p, 24)).collect::<BTreeMap<_, _>>()
    );
    let again = read_n(&buf, expect_again.len(), WITHIN).await;
    let got: BTreeSet<(u32, u64)> = again
        .iter()
        .map(|e| (e.record.partition, e.record.offset))
        .collect();
    assert_eq!(
        got, expect_again,
        "resumes right after each lane's acknowledged prefix"
    );
    buf.ack(&positions(&again)).await.unwrap();
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_between_two_consumers_delivers_everything() {
    let t = broker(4);
    let a = KafkaBuffer::connect(config(&t.broker(), "g"))
        .await
        .unwrap();
    for p in 0..8 {
        a.append(recs(p, 0, 30)).await.unwrap();
    }
    let all: BTreeSet<(u32, u64)> = (0..8).flat_map(|p| (0..30).map(move |o| (p, o))).collect();
    let first = read_n(&a, 40, WITHIN).await;
    a.ack(&positions(&first)).await.unwrap();
    let mut seen: BTreeSet<(u32, u64)> = first
        .iter()
        .map(|e| (e.record.partition, e.record.offset))
        .collect();

    // A second member joins: partitions move; both read and acknowledge what they get.
    let b = KafkaBuffer::connect(config(&t.broker(), "g"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut b_got = 0;
    while seen != all {
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            all.difference(&seen).count()
        );
        for (buf, is_b) in [(&a, false), (&b, true)] {
            if let Ok(Ok(batch)) =
                tokio::time::timeout(Duration::from_millis(300), buf.read(50, 1 << 20)).await
            {
                if is_b {
                    b_got += batch.len();
                }
                seen.extend(batch.iter().map(|e| (e.record.partition, e.record.offset)));
                buf.ack(&positions(&batch)).await.unwrap();
            }
        }
    }
    assert!(b_got > 0, "the second member never got a partition");
    a.close().await.unwrap();
    b.close().await.unwrap();

    // Everything was acknowledged, so the group's committed offset of every partition is its
    // high watermark.
    let brokers = t.broker();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "g")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition(TOPIC, p);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        for p in 0..4 {
            let (_, hi) = c
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .unwrap();
            let at = committed.find_partition(TOPIC, p).unwrap().offset();
            assert_eq!(at, rdkafka::Offset::Offset(hi), "partition {p}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_appends_survive_a_broker_kill_and_restart() {
    let mut t = broker(2);
    let buf = KafkaBuffer::connect(config(&t.broker(), "k"))
        .await
        .unwrap();
    for p in 0..3 {
        buf.append(recs(p, 0, 40)).await.unwrap();
    }
    t.kill();
    // Appends made while the broker is dead wait, then complete once it is back.
    let pending = tokio::spawn({
        let buf = buf.clone();
        async move { buf.append(recs(0, 40, 60)).await }
    });
    t.restart();
    tokio::time::timeout(WITHIN, pending)
        .await
        .expect("append completes after the broker restarts")
        .unwrap()
        .unwrap();
    buf.close().await.unwrap();
    drop(buf);

    let buf = KafkaBuffer::connect(config(&t.broker(), "k"))
        .await
        .unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 59), (1, 39), (2, 39)])
    );
    buf.close().await.unwrap();
    let brokers = t.broker();
    let contents = tokio::task::spawn_blocking(move || topic_contents(&brokers, TOPIC))
        .await
        .unwrap();
    assert_exactly_once(
        &contents,
        &BTreeMap::from([
            (0, (0..60).collect()),
            (1, (0..40).collect()),
            (2, (0..40).collect()),
        ]),
    );
}
