//! `TopicWriter` and `TopicReader` (the dead-letter topic) against librdkafka's in-process
//! mock cluster.
#![cfg(feature = "kafka")]

mod kafka_support;

use std::time::Duration;

use bridge_buffer::BufferError;
use bridge_buffer::kafka::{TopicMessage, TopicReader, TopicWriter};
use kafka_support::config;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const DLQ: &str = "dead-letters";
const GROUP: &str = "g-dead-letter-redrive";
const WITHIN: Duration = Duration::from_secs(20);

fn cluster(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(DLQ, partitions, 1).expect("topic");
    mock
}

fn payloads(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{{\"letter\":\"{prefix}-{i}\"}}").into_bytes())
        .collect()
}

/// Reads everything the reader has left, in batches of `batch`.
async fn drain(reader: &mut TopicReader, batch: usize) -> Vec<TopicMessage> {
    let mut out = Vec::new();
    loop {
        let got = tokio::time::timeout(WITHIN, reader.next_batch(batch))
            .await
            .expect("batch in time")
            .expect("batch");
        if got.is_empty() {
            return out;
        }
        assert!(got.len() <= batch);
        out.extend(got);
    }
}

fn values(messages: &[TopicMessage]) -> Vec<String> {
    let mut v: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_read_commit_and_a_second_reader_sees_only_what_is_left() {
    let mock = cluster(3);
    let brokers = mock.bootstrap_servers();
    let cfg = config(&brokers, "g");
    let writer = TopicWriter::connect(&cfg, DLQ).await.unwrap();
    writer.send("0", payloads("a", 5)).await.unwrap();
    writer.send("7", payloads("b", 4)).await.unwrap();

    let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(reader.remaining(), 9);
    // Produced after the reader took its watermarks: left for the next run.
    writer.send("3", payloads("late", 2)).await.unwrap();
    let first = drain(&mut reader, 4).await;
    assert_eq!(first.len(), 9);
    assert_eq!(reader.remaining(), 0);
    let mut expected: Vec<String> = values(&first);
    expected.dedup();
    assert_eq!(expected.len(), 9, "no duplicates");
    // Each key's messages keep their order within its partition.
    let a: Vec<_> = first
        .iter()
        .filter(|m| m.key.as_deref() == Some(b"0"))
        .map(|m| m.offset)
        .collect();
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a.len() == 5);
    reader.commit().await.unwrap();
    drop(reader);

    let mut second = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(second.remaining(), 2);
    let left = drain(&mut second, 10).await;
    assert_eq!(
        values(&left),
        vec!["{\"letter\":\"late-0\"}", "{\"letter\":\"late-1\"}"]
    );
    // Not committed: a third reader sees the same two again (at least once).
    drop(second);
    let mut third = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(drain(&mut third, 10).await.len(), 2);
    third.commit().await.unwrap();
    drop(third);
    let mut fourth = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(fourth.remaining(), 0);
    assert!(fourth.next_batch(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_a_partial_batch_resumes_at_the_next_message() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let cfg = config(&brokers, "g");
    let writer = TopicWriter::connect(&cfg, DLQ).await.unwrap();
    writer.send("1", payloads("x", 10)).await.unwrap();
    let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    let batch = tokio::time::timeout(WITHIN, reader.next_batch(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    reader.commit().await.unwrap();
    drop(reader);
    let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(reader.remaining(), 7);
    let rest = drain(&mut reader, 100).await;
    assert_eq!(
        rest.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (3..10).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_while_the_broker_is_down_then_completes() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let cfg = config(&brokers, "g");
    let writer = TopicWriter::connect(&cfg, DLQ).await.unwrap();
    writer.send("0", payloads("before", 1)).await.unwrap();
    mock.broker_down(-1).unwrap();
    let pending = tokio::spawn({
        let writer = writer.clone();
        async move { writer.send("0", payloads("during", 20)).await }
    });
    // Negative check (nothing can be awaited): no send completes while the broker is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !pending.is_finished(),
        "a send completed with the broker down"
    );
    mock.broker_up(-1).unwrap();
    tokio::time::timeout(WITHIN, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    let all = drain(&mut reader, 100).await;
    assert_eq!(
        all.len(),
        21,
        "every message exactly once (idempotent producer)"
    );
    let mut v = values(&all);
    v.dedup();
    assert_eq!(v.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_and_oversize_messages_are_refused_whole() {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let mut cfg = config(&brokers, "g");
    cfg.connect_timeout = Duration::from_secs(3);
    let err = TopicWriter::connect(&cfg, "no-such-topic")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BufferError::KafkaTopic { topic, .. } if topic == "no-such-topic"),
        "{err}"
    );
    let err = TopicReader::connect(&cfg, "no-such-topic", GROUP)
        .await
        .unwrap_err();
    assert!(matches!(err, BufferError::KafkaTopic { .. }), "{err}");

    let writer = TopicWriter::connect(&cfg, DLQ).await.unwrap();
    let big = vec![b'x'; writer.max_message_bytes() + 1];
    let err = writer
        .send("0", vec![b"small".to_vec(), big])
        .await
        .unwrap_err();
    assert!(matches!(err, BufferError::Unencodable { .. }), "{err}");
    let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
    assert_eq!(
        reader.remaining(),
        0,
        "nothing of a refused call was produced"
    );
    assert!(reader.next_batch(10).await.unwrap().is_empty());
}

/// The same round trip against a real broker (tansu as a child process, as in
/// `kafka_tansu.rs`): the reader's offset commits without group membership and the
/// committed-offset fetch are real broker protocol, not the mock's.
mod tansu {
    use super::{DLQ, GROUP, config, drain, payloads, values};
    use bridge_buffer::kafka::{TopicReader, TopicWriter};
    use testbench::Tansu;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_read_commit_against_a_real_broker() {
        let t = Tansu::start();
        t.create_topic(DLQ, 2);
        let cfg = config(&t.broker(), "g");
        let writer = TopicWriter::connect(&cfg, DLQ).await.unwrap();
        writer.send("0", payloads("a", 3)).await.unwrap();
        writer.send("1", payloads("b", 3)).await.unwrap();

        let mut reader = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
        assert_eq!(reader.remaining(), 6);
        writer.send("2", payloads("late", 1)).await.unwrap();
        assert_eq!(drain(&mut reader, 4).await.len(), 6);
        reader.commit().await.unwrap();
        drop(reader);

        let mut second = TopicReader::connect(&cfg, DLQ, GROUP).await.unwrap();
        assert_eq!(
            values(&drain(&mut second, 10).await),
            vec!["{\"letter\":\"late-0\"}"]
        );
    }
}
