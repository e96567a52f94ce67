//! Crash safety: the test binary re-executes itself as an appender child, which the parent
//! SIGKILLs at seeded random moments; every reopen must hold every record reported durable,
//! exact resume offsets, no gap and no duplicate. Then the killed file's tail is truncated or
//! garbled, and the file size is capped (EFBIG, standing in for a full disk).
//!
//! `BRIDGE_BUFFER_CRASH_KILLS` (default 20) and `BRIDGE_BUFFER_CRASH_SEED` (default 1) tune it.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_buffer::{Buffer, BufferError, DiskBuffer, DiskBufferConfig, Record};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "BRIDGE_BUFFER_CRASH_CHILD";
/// Set: the child only appends (so the file grows), with a large capacity.
const CHILD_NO_READER_ENV: &str = "BRIDGE_BUFFER_CRASH_CHILD_NO_READER";
const PARTITIONS: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(30);

fn record(partition: u32, offset: u64) -> Record {
    Record {
        partition,
        offset,
        event_type: "ProcessRollup2".into(),
        customer_id: "cust".into(),
        created_at_ms: offset,
        payload: Bytes::from(format!(
            "{{\"p\":{partition},\"o\":{offset},\"pad\":\"{}\"}}",
            "z".repeat(300)
        )),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent only counts lines that arrive; a failed write just reports less.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: appends to every partition from its resume offset, reads and acknowledges
/// concurrently (out of order within each read), reporting each durable append and each ack.
/// Does nothing unless started by a parent test below.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let no_reader = std::env::var_os(CHILD_NO_READER_ENV).is_some();
        let mut cfg = DiskBufferConfig::new(&dir);
        cfg.max_bytes = if no_reader { 1 << 30 } else { 2 * 1024 * 1024 };
        let buf = Arc::new(DiskBuffer::open(cfg).unwrap());
        let resume = buf.resume_offsets().await.unwrap();
        let mut tasks = Vec::new();
        for partition in 0..PARTITIONS {
            let buf = buf.clone();
            let mut next = resume.get(&partition).map_or(0, |o| o + 1);
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(u64::from(partition) ^ next);
                loop {
                    let n = rng.random_range(1..40);
                    let records = (next..next + n).map(|o| record(partition, o)).collect();
                    match buf.append(records).await {
                        Ok(()) => {
                            next += n;
                            say(&format!("DURABLE {partition} {}", next - 1));
                        }
                        Err(e) => {
                            say(&format!("FAILED {e}"));
                            return;
                        }
                    }
                }
            }));
        }
        let reader = {
            let buf = buf.clone();
            tokio::spawn(async move {
                if no_reader {
                    return;
                }
                let mut rng = StdRng::seed_from_u64(7);
                loop {
                    let Ok(mut entries) = buf.read(rng.random_range(1..200), usize::MAX).await
                    else {
                        return;
                    };
                    let mut max: BTreeMap<u32, u64> = BTreeMap::new();
                    for e in &entries {
                        max.insert(e.record.partition, e.record.offset);
                    }
                    // Ack in two halves, the later half first.
                    let mid = entries.len() / 2;
                    let tail: Vec<_> = entries.split_off(mid).iter().map(|e| e.position).collect();
                    let head: Vec<_> = entries.iter().map(|e| e.position).collect();
                    // Announced before the ack: the writer may persist it and delete the
                    // records before the ack call even returns.
                    for (p, o) in max {
                        say(&format!("ACKING {p} {o}"));
                    }
                    if buf.ack(&tail).await.is_err() || buf.ack(&head).await.is_err() {
                        return;
                    }
                }
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        reader.abort();
    });
}

#[derive(Debug, Default)]
struct Reported {
    /// Highest offset per partition reported durable by the child.
    durable: BTreeMap<u32, u64>,
    /// Highest offset per partition passed to `ack` (with every earlier record of it).
    acked: BTreeMap<u32, u64>,
    failed: bool,
    failure: Option<String>,
}

impl Reported {
    fn absorb(&mut self, line: &str) {
        let mut words = line.split(' ');
        let kind = words.next();
        if kind == Some("FAILED") {
            self.failed = true;
            self.failure.get_or_insert_with(|| line.to_owned());
            return;
        }
        let (Some(p), Some(o)) = (words.next(), words.next()) else {
            return;
        };
        let (Ok(p), Ok(o)) = (p.parse::<u32>(), o.parse::<u64>()) else {
            return;
        };
        let map = match kind {
            Some("DURABLE") => &mut self.durable,
            Some("ACKING") => &mut self.acked,
            _ => return,
        };
        let e = map.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
}

/// Starts the child on `dir`, optionally under a file-size limit (KiB), and returns it with a
/// channel of its stdout lines.
fn spawn_child(
    dir: &Path,
    fsize_limit_kib: Option<u64>,
    no_reader: bool,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match fsize_limit_kib {
        None => Command::new(&exe),
        Some(kib) => {
            // Ignoring SIGXFSZ survives exec, so exceeding the limit fails the write with EFBIG
            // instead of killing the child: the closest to ENOSPC without a root mount.
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
                    kib * 2
                ))
                .arg(&exe);
            c
        }
    };
    if no_reader {
        cmd.env(CHILD_NO_READER_ENV, "1");
    }
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pump = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx, pump)
}

/// Reopens `dir` and checks the buffer against what the child reported.
async fn verify(dir: &Path, reported: &Reported) -> Result<(), BufferError> {
    let buf = DiskBuffer::open(DiskBufferConfig::new(dir))?;
    let resume = buf.resume_offsets().await?;
    let mut remaining = buf.depth().records;
    let mut present: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    while remaining > 0 {
        let entries = tokio::time::timeout(DEADLINE, buf.read(10_000, usize::MAX))
            .await
            .expect("read timed out")?;
        remaining -= entries.len() as u64;
        for e in entries {
            present
                .entry(e.record.partition)
                .or_default()
                .push(e.record.offset);
        }
    }
    for p in 0..PARTITIONS {
        let durable = reported.durable.get(&p).copied();
        let acked = reported.acked.get(&p).copied();
        let resume = resume.get(&p).copied();
        assert!(
            resume >= durable,
            "partition {p}: resume {resume:?} < durable {durable:?}"
        );
        let offsets = present.get(&p).map_or(&[][..], Vec::as_slice);
        for w in offsets.windows(2) {
            assert_eq!(w[1], w[0] + 1, "partition {p}: gap or duplicate at {w:?}");
        }
        match (offsets.first(), offsets.last()) {
            (Some(&first), Some(&last)) => {
                assert_eq!(
                    Some(last),
                    resume,
                    "partition {p}: last record vs resume offset"
                );
                // Everything below the first remaining record was deleted: it must have been
                // acknowledged.
                if first > 0 {
                    assert!(
                        acked >= Some(first - 1),
                        "partition {p}: records below {first} deleted, acked only {acked:?}"
                    );
                }
            }
            _ => assert!(
                acked >= resume,
                "partition {p}: no records left, resume {resume:?}, acked {acked:?}"
            ),
        }
    }
    buf.close().await?;
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the child once and SIGKILLs it `delay` after its first durable append.
/// `no_reader`: the child only appends.
fn run_and_kill(dir: &Path, delay: Duration, no_reader: bool, reported: &mut Reported) {
    let (mut child, rx, pump) = spawn_child(dir, None, no_reader);
    let first = rx.recv_timeout(DEADLINE).expect("child reported nothing");
    reported.absorb(&first);
    let kill_at = Instant::now() + delay;
    while let Some(left) = kill_at.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => reported.absorb(&line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("child exited early"),
        }
    }
    // SIGKILL on Unix.
    child.kill().unwrap();
    child.wait().unwrap();
    pump.join().unwrap();
    for line in rx.try_iter() {
        reported.absorb(&line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_durable() {
    let kills = env_u64("BRIDGE_BUFFER_CRASH_KILLS", 20);
    let seed = env_u64("BRIDGE_BUFFER_CRASH_SEED", 1);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut reported = Reported::default();
    for kill in 0..kills {
        let delay = Duration::from_millis(rng.random_range(0..400));
        // Some runs only append, so that later kills also hit a backlog being drained.
        let no_reader = rng.random_bool(0.3);
        run_and_kill(dir.path(), delay, no_reader, &mut reported);
        verify(dir.path(), &reported)
            .await
            .unwrap_or_else(|e| panic!("kill {kill} (seed {seed}): reopen failed: {e}"));
    }
    let total: u64 = reported.durable.values().map(|o| o + 1).sum();
    assert!(total > kills, "the child made progress: {reported:?}");
    println!("{kills} kills, {total} records durable, {reported:?}");
}

type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// Damages the tail of a file that was SIGKILLed mid-write. redb (with the two-phase commit
/// the buffer uses) must then either refuse to open, naming the file, or recover every record
/// reported durable. Neither may it silently fall back to an older commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_tail_after_a_kill_is_an_error_or_a_clean_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut reported = Reported::default();
    // Without a reader, so that the file is full of unacknowledged records.
    run_and_kill(dir.path(), Duration::from_millis(500), true, &mut reported);
    let original = std::fs::read(dir.path().join("buffer.redb")).unwrap();
    let len = original.len();
    let damages: [(&str, Damage); 4] = [
        (
            "truncate last page",
            Box::new(|f: &mut Vec<u8>| f.truncate(f.len() - 4096)),
        ),
        (
            "truncate to half",
            Box::new(|f: &mut Vec<u8>| f.truncate(f.len() / 2)),
        ),
        (
            "garble last 64 KiB",
            Box::new(|f: &mut Vec<u8>| {
                let n = f.len();
                for b in &mut f[n.saturating_sub(65536)..] {
                    *b ^= 0xa5;
                }
            }),
        ),
        (
            "garble the middle 64 KiB",
            Box::new(|f: &mut Vec<u8>| {
                let mid = f.len() / 2;
                for b in &mut f[mid..mid + 65536] {
                    *b ^= 0x5a;
                }
            }),
        ),
    ];
    for (name, damage) in damages {
        let case = tempfile::tempdir().unwrap();
        let mut file = original.clone();
        damage(&mut file);
        let path = case.path().join("buffer.redb");
        std::fs::write(&path, &file).unwrap();
        match verify(case.path(), &reported).await {
            Ok(()) => println!("{name} ({len} B file): recovered, every durable record present"),
            Err(e) => {
                let message = format!("{e}: {:?}", std::error::Error::source(&e));
                assert!(
                    message.contains(&path.display().to_string()),
                    "{name}: {message}"
                );
                println!("{name} ({len} B file): refused: {message}");
            }
        }
    }
}

/// Caps the child's file size so that redb's writes fail with EFBIG mid-run: appends must fail
/// (not hang, not report success), and a reopen without the cap holds everything reported
/// durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_size_limit_fails_appends_without_losing_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut reported = Reported::default();
    let (mut child, rx, pump) = spawn_child(dir.path(), Some(8 * 1024), true);
    let deadline = Instant::now() + DEADLINE;
    while !reported.failed {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => reported.absorb(&line),
            Err(e) => panic!("child never hit the file size limit: {e:?}, {reported:?}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    pump.join().unwrap();
    for line in rx.try_iter() {
        reported.absorb(&line);
    }
    assert!(
        !reported.durable.is_empty(),
        "child made progress before the limit"
    );
    verify(dir.path(), &reported).await.unwrap();
    println!("after EFBIG: {reported:?}");
}
