//! Throughput of the disk buffer: durable appends of ~1.5 KB records (1 and 4 concurrent
//! appenders, group commit), then the read+ack path.
//!
//! `cargo run --release -p bridge-buffer --example disk_bench [dir]` (default: a temp dir; point
//! it at the volume the buffer will live on, since fsync cost is the figure that matters).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use bridge_buffer::{Buffer, DiskBuffer, DiskBufferConfig, Position, Record};
use bytes::Bytes;

const PAYLOAD: usize = 1400;
const TOTAL: u64 = 100_000;

fn report(label: &str, events: u64, bytes: u64, secs: f64) {
    println!(
        "{label:<40} {events:>8} events in {secs:>6.2} s = {:>9.0} events/s, {:>7.1} MiB/s",
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

async fn appenders(
    dir: &std::path::Path,
    n: u32,
    batch: u64,
    linger_ms: u64,
    payload: &Bytes,
) -> anyhow::Result<()> {
    let mut cfg = DiskBufferConfig::new(dir.join(format!("append-{n}-{batch}-{linger_ms}")));
    cfg.linger = std::time::Duration::from_millis(linger_ms);
    cfg.max_bytes = 4 * 1024 * 1024 * 1024;
    let buf = Arc::new(DiskBuffer::open(cfg)?);
    let per_task = TOTAL / u64::from(n) / batch * batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..n {
        let buf = buf.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut offset = 0;
            while offset < per_task {
                let records: Vec<Record> = (offset..offset + batch)
                    .map(|o| record(partition, o, &payload))
                    .collect();
                buf.append(records).await?;
                offset += batch;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let depth = buf.depth();
    report(
        &format!("append {n:>2} appender(s) x {batch:>4}, linger {linger_ms} ms"),
        depth.records,
        depth.bytes,
        secs,
    );

    // Reopen: the integrity check reads the whole file.
    buf.close().await?;
    drop(buf);
    let mut cfg = DiskBufferConfig::new(dir.join(format!("append-{n}-{batch}-{linger_ms}")));
    cfg.max_bytes = 4 * 1024 * 1024 * 1024;
    let started = Instant::now();
    let buf = DiskBuffer::open(cfg)?;
    println!(
        "reopen with {} MiB unacknowledged: {:.2} s",
        depth.bytes / 1024 / 1024,
        started.elapsed().as_secs_f64()
    );

    // Read+ack path on what was just appended.
    let started = Instant::now();
    let mut read = 0u64;
    let mut bytes = 0u64;
    while read < depth.records {
        let entries = buf.read(2000, 4 * 1024 * 1024).await?;
        read += entries.len() as u64;
        bytes += entries
            .iter()
            .map(|e| e.record.encoded_len() as u64)
            .sum::<u64>();
        let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
        buf.ack(&positions).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    report("read+ack (batches of 2000)", read, bytes, secs);
    buf.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp;
    let dir = if let Some(dir) = std::env::args().nth(1) {
        std::path::PathBuf::from(dir)
    } else {
        tmp = tempfile::tempdir()?;
        tmp.path().to_path_buf()
    };
    let payload = Bytes::from(vec![b'e'; PAYLOAD]);
    println!(
        "record: {} B encoded; dir {}",
        record(0, 0, &payload).encoded_len(),
        dir.display()
    );
    for (n, batch, linger_ms) in [
        (1, 100, 0),
        (1, 1000, 0),
        (4, 100, 0),
        (4, 100, 2),
        (4, 500, 0),
        (16, 100, 0),
        (16, 100, 2),
    ] {
        appenders(&dir, n, batch, linger_ms, &payload).await?;
    }
    Ok(())
}
