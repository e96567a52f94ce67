//! End-to-end benchmark: the real (release) binary against the in-process testbench.
//!
//! `cargo run --release -p e2e --example bench` (after `cargo build --release --bins`);
//! `FSB_BENCH_EVENTS` sets the backlog (default 1,000,000 events of ~1.5 KB, ~1.5 GB).
//!
//! 1. **Source**: Azure answers 503 to everything, so Falcon → disk buffer runs alone;
//!    events/s until every event is durable.
//! 2. **Drain**: Azure recovers; time until the whole backlog is in the ingestion ledger,
//!    events/s and MiB/s, and the bridge process's peak RSS (VmHWM) over both phases.
//! 3. **Restart**: SIGKILL with a fresh backlog, restart, time to the first delivered event.
//! 4. **Latency**: a steady 1,000 events/s (100 every 100 ms) for 20 s; each burst's latency
//!    is the time from its append at the emulated Falcon until the ledger holds as many
//!    distinct events as had been appended by then (polled every 5 ms), p50 and p99.
//!
//! Figures, not assertions: a benchmark measures; the tests assert behaviour.
#![allow(clippy::print_stdout, clippy::missing_panics_doc)]

use std::time::{Duration, Instant};

use e2e::{BridgeOptions, free_port, spawn_bridge, terminate, testbench_config, write_config};
use testbench::{Fault, Target, Testbench};

fn events_env() -> u64 {
    std::env::var("FSB_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Sum of `fsb_source_events_total` over partitions, from `/metrics`.
async fn durable_events(client: &reqwest::Client, port: u16) -> u64 {
    let Ok(response) = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("fsb_source_events_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one benchmark, read top to bottom
async fn main() {
    let total = events_env();
    let tb = Testbench::start(testbench_config(2))
        .await
        .expect("start testbench");
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(1),
        count: None,
        duration_secs: None,
    });
    tb.falcon().append_events(0, total / 2);
    tb.falcon().append_events(1, total - total / 2);
    let bytes: u64 = (0..2)
        .flat_map(|p| (1..=3).map(move |o| (p, o)))
        .filter_map(|(p, o)| tb.falcon().event_line(p, o))
        .map(|l| l.len() as u64)
        .sum::<u64>()
        / 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            admin_port: port,
            buffer_max_bytes: 8 << 30,
            // The shipped default (config/reference.yaml), so the latency figure is honest.
            batch_linger_ms: 1_000,
            ..BridgeOptions::default()
        },
    );
    let client = reqwest::Client::new();

    // 1. Source alone.
    let started = Instant::now();
    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    while durable_events(&client, port).await < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source_secs = started.elapsed().as_secs_f64();

    // 2. Drain the backlog.
    tb.faults().clear();
    let drain_started = Instant::now();
    while (tb.ingestion().distinct_event_ids() as u64) < total {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let rss = peak_rss_mib(bridge.id());
    let status = terminate(&mut bridge, Duration::from_secs(30));
    assert!(status.success(), "bridge exit: {status}");

    // 3. Restart after SIGKILL with a backlog waiting.
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(1),
        count: None,
        duration_secs: None,
    });
    tb.falcon().append_events(0, 20_000);
    let mut bridge = spawn_bridge(&config, dir.path(), 1);
    while durable_events(&client, port).await < 20_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.kill().expect("SIGKILL");
    bridge.wait().expect("reap");
    tb.faults().clear();
    let before = tb.ingestion().records();
    let restart_started = Instant::now();
    let mut bridge = spawn_bridge(&config, dir.path(), 2);
    while tb.ingestion().records() == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restart_secs = restart_started.elapsed().as_secs_f64();
    while tb.ingestion().distinct_event_ids() < tb.falcon().expected_event_ids().len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. Steady 1,000 events/s.
    let latencies = steady_latencies(&tb).await;
    terminate(&mut bridge, Duration::from_secs(30));

    let mib = |n: u64, secs: f64| n as f64 * bytes as f64 / secs / 1_048_576.0;
    let duplicates = tb.ingestion().ledger().duplicates;
    println!("\nfalcon-sentinel-bridge end-to-end benchmark ({total} events, ~{bytes} B each)");
    println!("{:<46}{:>16}", "measure", "value");
    println!(
        "{:<46}{:>16.0}",
        "source: Falcon → disk buffer, events/s",
        total as f64 / source_secs
    );
    println!("{:<46}{:>16.1}", "source: MiB/s", mib(total, source_secs));
    println!("{:<46}{:>16.1}", "drain: backlog drained, s", drain_secs);
    println!(
        "{:<46}{:>16.0}",
        "drain: events/s",
        total as f64 / drain_secs
    );
    println!(
        "{:<46}{:>16.1}",
        "drain: MiB/s of events",
        mib(total, drain_secs)
    );
    println!(
        "{:<46}{:>16}",
        "bridge peak RSS (source + drain), MiB",
        rss.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
    );
    println!(
        "{:<46}{:>16.2}",
        "restart: SIGKILL → first delivery, s", restart_secs
    );
    println!("{:<46}{:>16}", "duplicates (after the SIGKILL)", duplicates);
    println!(
        "{:<46}{:>16.0}",
        "latency at 1,000 events/s, p50 ms",
        percentile(&latencies, 0.50)
    );
    println!(
        "{:<46}{:>16.0}",
        "latency at 1,000 events/s, p99 ms",
        percentile(&latencies, 0.99)
    );
    tb.shutdown().await;
}

/// Appends 100 events every 100 ms for 20 s and returns each burst's latency in ms.
async fn steady_latencies(tb: &Testbench) -> Vec<f64> {
    let base = tb.ingestion().distinct_event_ids();
    let mut appended_at: Vec<(usize, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let mut next_burst = Instant::now();
    let mut appended = 0_usize;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end || !appended_at.is_empty() {
        let now = Instant::now();
        if now >= next_burst && now < end {
            tb.falcon()
                .append_events(u32::from(appended % 200 == 100), 100);
            appended += 100;
            appended_at.push((appended, now));
            next_burst += Duration::from_millis(100);
        }
        let arrived = tb.ingestion().distinct_event_ids() - base;
        appended_at.retain(|(count, at)| {
            if arrived >= *count {
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                false
            } else {
                true
            }
        });
        if Instant::now() > end + Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies
}

#[allow(clippy::cast_sign_loss)] // q in 0..=1: the index is never negative
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
