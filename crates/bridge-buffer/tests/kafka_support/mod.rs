//! Helpers shared by the Kafka tests (mock cluster and tansu).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bridge_buffer::{Buffer, Entry, KafkaBuffer, KafkaBufferConfig, Record};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub const TOPIC: &str = "events";
pub const CKPT: &str = "events-checkpoint";

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A test configuration with short intervals.
pub fn config(brokers: &str, group: &str) -> KafkaBufferConfig {
    init_logs();
    let mut c = KafkaBufferConfig::new(vec![brokers.to_owned()], TOPIC, CKPT, group);
    c.commit_interval = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(10);
    c.close_timeout = Duration::from_secs(10);
    c.extra.insert("session.timeout.ms".into(), "6000".into());
    c.extra.insert("heartbeat.interval.ms".into(), "500".into());
    if let Ok(debug) = std::env::var("KAFKA_DEBUG") {
        c.extra.insert("debug".into(), debug);
    }
    c
}

/// A ~200-byte Falcon-shaped record.
pub fn rec(partition: u32, offset: u64) -> Record {
    Record {
        partition,
        offset,
        event_type: "DetectionSummaryEvent".into(),
        customer_id: "cid".into(),
        created_at_ms: 1_700_000_000_000 + offset,
        payload: Bytes::from(format!(
            "{{\"metadata\":{{\"offset\":{offset},\"partition\":{partition}}},\"event\":{{\"x\":\"{}\"}}}}",
            "y".repeat(120)
        )),
    }
}

/// Records `from..to` of Falcon partition `partition`.
pub fn recs(partition: u32, from: u64, to: u64) -> Vec<Record> {
    (from..to).map(|o| rec(partition, o)).collect()
}

/// Reads until `n` entries arrived, failing after `within`.
pub async fn read_n(buf: &KafkaBuffer, n: usize, within: Duration) -> Vec<Entry> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, buf.read(n - out.len(), 1 << 20))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} entries within {within:?}", out.len()))
            .expect("read");
        out.extend(batch);
    }
    out
}

/// Every (Falcon partition, Falcon offset) in the event topic, in Kafka order per partition,
/// read with a plain consumer (no group).
pub fn topic_contents(brokers: &str, topic: &str) -> Vec<(u32, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-inspector")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = i32::try_from(md.topics()[0].partitions().len()).unwrap();
    let mut out = Vec::new();
    for p in 0..partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if lo >= hi {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(lo))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "topic {topic}/{p} not read to {hi}"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let h = m.headers().expect("headers");
                    let mut fp = None;
                    let mut fo = None;
                    for i in 0..rdkafka::message::Headers::count(h) {
                        let hd = rdkafka::message::Headers::get(h, i);
                        let v = std::str::from_utf8(hd.value.unwrap()).unwrap();
                        match hd.key {
                            "fsb-partition" => fp = Some(v.parse().unwrap()),
                            "fsb-offset" => fo = Some(v.parse().unwrap()),
                            _ => {}
                        }
                    }
                    out.push((fp.unwrap(), fo.unwrap()));
                    if m.offset() + 1 >= hi {
                        break;
                    }
                }
                Some(Err(e)) => panic!("{e}"),
                None => {}
            }
        }
    }
    out
}

/// Asserts that the topic holds each of `expected` exactly once, in order per Falcon partition.
pub fn assert_exactly_once(contents: &[(u32, u64)], expected: &BTreeMap<u32, Vec<u64>>) {
    let mut got: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(p, o) in contents {
        got.entry(p).or_default().push(o);
    }
    assert_eq!(
        &got, expected,
        "topic contents (duplicates, gaps or reordering)"
    );
}
