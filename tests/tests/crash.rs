#![allow(clippy::print_stdout)] // the suite prints its figures table (scenario, kills, lost, duplicates)
//! The guarantee under SIGKILL: the real binary is killed at seeded random moments while
//! events flow, restarted on the same data directory, and every event Falcon produced is
//! counted on the far side. CI runs the short profile; `FSB_E2E_KILLS`, `FSB_E2E_EVENTS`
//! and `FSB_E2E_SEED` select the full one (50 kills over 1,000,000 events).

use std::time::{Duration, Instant};

use e2e::{
    BridgeOptions, eventually, log_tail, missing_event_ids, spawn_bridge, terminate,
    testbench_config, write_config,
};
use rand::{Rng as _, SeedableRng as _};
use testbench::Testbench;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records one kill can leave delivered-but-unacknowledged, so resent after the restart:
/// - the writer's read-ahead (2 reads) + the chunk being batched + `max_concurrency` (4)
///   chunks in flight, each at most `max_batch_bytes` (1,000,000) of ~1.5 KB events:
///   7 × ~670 ≈ 4,700;
/// - acknowledgements the disk buffer holds in memory until it persists them (with the
///   next append, or after `bridge_buffer::disk::ACK_FLUSH_INTERVAL` (100 ms) without one):
///   at most 100 ms of drain, ≈ 5,000 at 50k events/s.
const IN_FLIGHT_WINDOW: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let kills = env_or("FSB_E2E_KILLS", 5);
    let events = env_or("FSB_E2E_EVENTS", 50_000);
    let seed = env_or("FSB_E2E_SEED", 20_261_124);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut config = testbench_config(2);
    config.falcon.refresh_interval_secs = 3;
    let tb = Testbench::start(config).await.expect("start testbench");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&tb, dir.path(), &BridgeOptions::default());

    // Half the events exist at the start; the rest arrive in steps while the bridge is
    // being killed, so kills land in every phase: reading Falcon, appending, delivering.
    let half = events / 2;
    tb.falcon().append_events(0, half / 2);
    tb.falcon().append_events(1, half - half / 2);
    let steps = kills.max(1);
    let per_step = (events - half) / steps;
    let mut appended = half;

    for run in 0..usize::try_from(kills).unwrap() {
        let mut bridge = spawn_bridge(&config, dir.path(), run);
        let alive_for = Duration::from_millis(rng.random_range(300..2_500));
        tokio::time::sleep(alive_for).await;
        let add = if run + 1 == usize::try_from(steps).unwrap() {
            events - appended
        } else {
            per_step
        };
        tb.falcon()
            .append_events(u32::from(rng.random_bool(0.5)), add);
        appended += add;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        bridge.kill().expect("SIGKILL the bridge");
        bridge.wait().expect("reap the bridge");
    }
    if appended < events {
        tb.falcon().append_events(0, events - appended);
    }

    let final_run = usize::try_from(kills).unwrap();
    let recovery_started = Instant::now();
    let mut bridge = spawn_bridge(&config, dir.path(), final_run);
    let all_there = eventually(Duration::from_mins(4), || missing_event_ids(&tb).is_empty()).await;
    let recovery = recovery_started.elapsed();
    let missing = missing_event_ids(&tb);
    assert!(
        all_there,
        "{} events lost after {kills} kills (seed {seed}), e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        log_tail(dir.path(), final_run)
    );
    assert!(terminate(&mut bridge, Duration::from_secs(20)).success());

    let ledger = tb.ingestion().ledger();
    let dead_lettered =
        std::fs::read_dir(dir.path().join("dead-letter")).map_or(0, Iterator::count);
    println!(
        "scenario\tevents\tkills\tlost\tduplicates\tdead-letter files\trecovery\n\
         sigkill-disk\t{events}\t{kills}\t0\t{}\t{dead_lettered}\t{:.1}s",
        ledger.duplicates,
        recovery.as_secs_f64()
    );
    assert_eq!(ledger.event_ids.len() as u64, events);
    assert!(
        ledger.duplicates <= kills * IN_FLIGHT_WINDOW,
        "{} duplicates after {kills} kills: more than one in-flight window per kill",
        ledger.duplicates
    );
    tb.shutdown().await;
}
