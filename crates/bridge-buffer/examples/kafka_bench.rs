//! Throughput of the Kafka buffer: durable (acks=all, idempotent) appends of ~1.5 KB records
//! from 1 and 4 concurrent appenders, then the read+ack path, against a tansu broker (sqlite)
//! started as a child process, or against librdkafka's in-process mock cluster.
//!
//! `cargo run --release -p bridge-buffer --features kafka --example kafka_bench [tansu|mock] [events]`
//! (default: tansu from `TANSU_BIN` or `$HOME/.cache/falcon-sentinel-bridge/tools/bin/tansu`,
//! 50,000 events per phase).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bridge_buffer::{Buffer, KafkaBuffer, KafkaBufferConfig, Position, Record};
use bytes::Bytes;
use rdkafka::mocking::MockCluster;

const PAYLOAD: usize = 1400;
const BATCH: u64 = 500;
const TOPIC: &str = "bench-events";
const CKPT: &str = "bench-checkpoint";
const PARTITIONS: i32 = 4;

fn report(label: &str, events: u64, bytes: u64, secs: f64) {
    println!(
        "{label:<44} {events:>8} events in {secs:>6.2} s = {:>9.0} events/s, {:>7.1} MiB/s",
        events as f64 / secs,
        bytes as f64 / secs / 1024.0 / 1024.0
    );
}

fn record(partition: u32, offset: u64, payload: &Bytes) -> Record {
    Record {
        partition,
        offset,
        event_type: "ProcessRollup2".into(),
        customer_id: "0123456789abcdef0123456789abcdef".into(),
        created_at_ms: 1_700_000_000_000,
        payload: payload.clone(),
    }
}

async fn append_phase(buf: &KafkaBuffer, appenders: u32, total: u64, first: u64) -> f64 {
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let per = total / u64::from(appenders);
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let buf = buf.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut offset = first;
                while offset < first + per {
                    let end = (offset + BATCH).min(first + per);
                    let batch = (offset..end).map(|o| record(a, o, &payload)).collect();
                    buf.append(batch).await?;
                    offset = end;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("appender task").expect("append");
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "tansu".into());
    let total: u64 = args.next().map_or(Ok(50_000), |s| s.parse())?;

    let mock;
    let _broker;
    let brokers = if mode == "mock" {
        mock = MockCluster::new(1)?;
        mock.create_topic(TOPIC, PARTITIONS, 1)?;
        mock.create_topic(CKPT, 1, 1)?;
        mock.bootstrap_servers()
    } else {
        let tansu = testbench::Tansu::start();
        tansu.create_topic(TOPIC, PARTITIONS.unsigned_abs());
        tansu.create_topic(CKPT, 1);
        let brokers = tansu.broker();
        _broker = tansu;
        brokers
    };
    println!("broker: {mode} ({brokers}), {PARTITIONS} partitions, {PAYLOAD}-byte payloads");

    let mut config = KafkaBufferConfig::new(vec![brokers], TOPIC, CKPT, "bench");
    // Extra librdkafka properties to compare settings: BENCH_EXTRA="k=v,k=v".
    for kv in std::env::var("BENCH_EXTRA").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            config.extra.insert(k.into(), v.into());
        }
    }
    let buf = KafkaBuffer::connect(config).await?;
    let record_bytes = record(0, 0, &Bytes::from(vec![b'x'; PAYLOAD])).encoded_len() as u64;

    let secs = append_phase(&buf, 1, total, 0).await;
    report(
        "append, 1 appender, 500/batch",
        total,
        total * record_bytes,
        secs,
    );
    let secs = append_phase(&buf, 4, total, total).await;
    report(
        "append, 4 appenders, 500/batch",
        total,
        total * record_bytes,
        secs,
    );

    let events = 2 * total;
    let start = Instant::now();
    // The first read includes joining the consumer group; it is reported on its own.
    let first = tokio::time::timeout(Duration::from_mins(2), buf.read(1000, 4 << 20))
        .await
        .map_err(|_| anyhow::anyhow!("no partition assigned within 120 s"))??;
    println!(
        "first read (group join + first fetch): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let mut read = first.len() as u64;
    let positions: Vec<Position> = first.iter().map(|e| e.position).collect();
    buf.ack(&positions).await?;
    let start = Instant::now();
    while read < events {
        let batch = tokio::time::timeout(Duration::from_mins(2), buf.read(1000, 4 << 20))
            .await
            .map_err(|_| anyhow::anyhow!("read stalled after {read} events"))??;
        read += batch.len() as u64;
        let positions: Vec<Position> = batch.iter().map(|e| e.position).collect();
        buf.ack(&positions).await?;
    }
    let after_first = events - first.len() as u64;
    report(
        "read + ack, 1000/read (after the first)",
        after_first,
        after_first * record_bytes,
        start.elapsed().as_secs_f64(),
    );
    let start = Instant::now();
    buf.close().await?;
    println!(
        "close (flush, checkpoint, commit): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
