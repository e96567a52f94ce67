//! The end-to-end fault suite (issue #6): the real binary as a child process, the testbench
//! as the far side, one scenario after the other, each with its own testbench, data
//! directory and bridge. The invariant checked after every scenario: every event the
//! testbench's Falcon emitted is in the ingestion ledger at least once or in the dead-letter
//! directory with a reason; duplicates are counted and bounded by one in-flight window per
//! kill (or bridge restart); after the faults stop, new events still flow.
//!
//! It prints one table (scenario, events, kills/faults, lost, duplicates, dead-lettered,
//! recovery time) and exits non-zero after printing it if any scenario lost an event, broke
//! its duplicate bound or failed otherwise.
//!
//! Env: `FSB_FAULTS_PROFILE=ci` (default) | `full`; `FSB_FAULTS_SEED`;
//! `FSB_FAULTS_ONLY=name,name`; `FSB_FAULTS_KILLS` and `FSB_FAULTS_EVENTS` override the
//! sigkill scenarios' sizes; `FSB_FAULTS_KEEP=1` keeps the data directories (bridge logs,
//! dead letters) for a post-mortem. Positional arguments are substring filters on scenario
//! names (as libtest's); other libtest flags are ignored; `--list` prints nothing.
//!
//! Disk full and slow disk run the real binary under an `LD_PRELOAD` shim
//! (`tests/faults/shim.c`, compiled with `cc` at test time).
#![allow(clippy::print_stdout, clippy::print_stderr)] // the suite reports by printing its table
#![allow(clippy::too_many_lines)] // one scenario per function, read top to bottom

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use e2e::{
    BridgeOptions, Tansu, log_tail, spawn_bridge_with_env, testbench_config, wait_with_deadline,
    write_config,
};
use rand::{Rng as _, SeedableRng as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use testbench::{Fault, MalformedKind, Target, Testbench, TestbenchConfig};

/// Records one kill of a disk-buffered bridge can leave delivered-but-unacknowledged, so
/// resent after the restart:
/// - the writer's read-ahead (2 reads) + the chunk being batched + `max_concurrency` (4)
///   chunks in flight, each at most `max_batch_bytes` (1,000,000) of ~1.5 KB events:
///   7 × ~670 ≈ 4,700;
/// - acknowledgements the disk buffer holds in memory until it persists them (with the
///   next append, or after `bridge_buffer::disk::ACK_FLUSH_INTERVAL` (100 ms) without one):
///   at most 100 ms of drain, ≈ 5,000 at 50k events/s.
const IN_FLIGHT_WINDOW: u64 = 10_000;

/// The same for the Kafka buffer: the writer's in-flight chunks (≈ 4,700, as above) plus
/// the consumer offsets stored but not yet committed: they are committed every
/// `commit_interval` (1 s by default), so up to 1 s of drain, ≈ 20,000 at 20k events/s.
const KAFKA_IN_FLIGHT_WINDOW: u64 = 25_000;

/// The events appended after the faults stop, per partition, to prove new events flow.
const TAIL_EVENTS: u64 = 500;

/// How long a scenario waits for everything to arrive once the faults stopped (unless it sets
/// a longer `delivery_deadline`), and how long any scenario waits without progress.
const DELIVERY_DEADLINE: Duration = Duration::from_mins(3);

#[derive(Debug, Clone, Copy)]
struct Profile {
    full: bool,
    seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    events: u64,
    faults: String,
    lost: u64,
    duplicates: u64,
    dup_bound: u64,
    dead_lettered: u64,
    recovery: Option<Duration>,
    outcome: Outcome,
    notes: Vec<String>,
}

impl Row {
    fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            events: 0,
            faults: String::new(),
            lost: 0,
            duplicates: 0,
            dup_bound: 0,
            dead_lettered: 0,
            recovery: None,
            outcome: Outcome::Ok,
            notes: Vec::new(),
        }
    }

    fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        match &mut self.outcome {
            Outcome::Failed(all) => {
                all.push_str("; ");
                all.push_str(&why);
            }
            other => *other = Outcome::Failed(why),
        }
    }

    fn passed(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed(_))
    }
}

/// One dead-letter line, the fields the accounting needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Letter {
    stage: String,
    reason: String,
    partition: u32,
    offset: Option<u64>,
    status: Option<u64>,
}

/// What the far side holds after a scenario.
#[derive(Debug, Default)]
struct Account {
    /// Expected events neither in the ledger nor dead-lettered.
    lost: Vec<String>,
    duplicates: u64,
    /// Distinct dead letters (a bad line re-read after a restart is lettered again).
    dead_lettered: u64,
    letters: BTreeSet<Letter>,
    /// Events in total (valid and malformed).
    events: u64,
}

/// A testbench, a data directory and the bridge child(ren) of one scenario.
struct Bench {
    tb: Testbench,
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    runs: usize,
    bridge: Option<Child>,
    partitions: u32,
    /// Malformed lines injected: `(partition, offset)`.
    malformed: Vec<(u32, u64)>,
    /// Their kinds, to inject again after [`Faults::clear`](testbench::Faults::clear)
    /// (the emulator forgets a line was malformed when its faults are cleared).
    malformed_kinds: Vec<MalformedKind>,
    /// How long [`finish`](Self::finish) waits for everything to arrive.
    delivery_deadline: Duration,
}

impl Bench {
    async fn new(
        partitions: u32,
        options: &BridgeOptions,
        tweak: impl FnOnce(&mut TestbenchConfig),
    ) -> Bench {
        let mut config = testbench_config(partitions);
        tweak(&mut config);
        let tb = Testbench::start(config).await.expect("start testbench");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(&tb, dir.path(), options);
        Bench {
            tb,
            dir,
            config,
            env: Vec::new(),
            runs: 0,
            bridge: None,
            partitions,
            malformed: Vec::new(),
            malformed_kinds: Vec::new(),
            delivery_deadline: DELIVERY_DEADLINE,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn start(&mut self) {
        assert!(self.bridge.is_none(), "a bridge is already running");
        self.bridge = Some(spawn_bridge_with_env(
            &self.config,
            self.dir.path(),
            self.runs,
            &self.env,
        ));
        self.runs += 1;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.bridge.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; an error if the exit was not clean.
    fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.bridge.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match wait_with_deadline(&mut child, Duration::from_secs(30)) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!(
                "exit after SIGTERM: {status}; log:\n{}",
                self.last_log()
            )),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "no exit within 30 s of SIGTERM (SIGKILLed); log:\n{}",
                    self.last_log()
                ))
            }
        }
    }

    /// The exit status if the bridge exited on its own.
    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.bridge.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.bridge = None;
        Some(status)
    }

    fn last_log(&self) -> String {
        log_tail(self.dir.path(), self.runs.saturating_sub(1))
    }

    fn append_everywhere(&self, per_partition: u64) {
        for p in 0..self.partitions {
            self.tb.falcon().append_events(p, per_partition);
        }
    }

    fn inject_malformed(&mut self, partition: u32, offset: u64, kind: MalformedKind) {
        self.tb.faults().inject(Fault::Malformed {
            partition,
            offset,
            kind: kind.clone(),
        });
        self.malformed.push((partition, offset));
        self.malformed_kinds.push(kind);
    }

    fn generated(&self) -> u64 {
        (0..self.partitions)
            .map(|p| self.tb.falcon().generated(p))
            .sum()
    }

    fn letters(&self) -> BTreeSet<Letter> {
        let mut letters = BTreeSet::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("dead-letter")) else {
            return letters;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // A line torn by a SIGKILL mid-write is not a letter; the record is then
            // lettered again (or delivered) after the restart.
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                letters.insert(Letter {
                    stage: v["stage"].as_str().unwrap_or_default().to_owned(),
                    reason: v["reason"].as_str().unwrap_or_default().to_owned(),
                    partition: v["partition"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(u32::MAX),
                    offset: v["offset"].as_u64(),
                    status: v["status"].as_u64(),
                });
            }
        }
        letters
    }

    /// The invariant, computed: every expected event in the ledger or dead-lettered (with
    /// a reason), every malformed line in the ledger or dead-lettered.
    fn account(&self) -> Account {
        let ledger = self.tb.ingestion().ledger();
        let letters = self.letters();
        let cid = self.tb.falcon().customer_id().to_owned();
        let with_reason = |l: &&Letter| !l.reason.is_empty();
        let sentinel: BTreeSet<(u32, u64)> = letters
            .iter()
            .filter(with_reason)
            .filter(|l| l.stage == "sentinel")
            .filter_map(|l| Some((l.partition, l.offset?)))
            .collect();
        // A source letter carries the last offset seen before the bad line.
        let source_after: BTreeSet<(u32, u64)> = letters
            .iter()
            .filter(with_reason)
            .filter(|l| l.stage == "source")
            .filter_map(|l| Some((l.partition, l.offset?)))
            .collect();
        let mut lost = Vec::new();
        for id in self.tb.falcon().expected_event_ids() {
            if ledger.event_ids.contains_key(&id) {
                continue;
            }
            let position = parse_id(&id);
            if position.is_some_and(|p| sentinel.contains(&p)) {
                continue;
            }
            lost.push(id);
        }
        for &(p, o) in &self.malformed {
            let id = format!("{cid}:{p}:{o}");
            let arrived = ledger.event_ids.contains_key(&id)
                || sentinel.contains(&(p, o))
                || source_after.contains(&(p, o.saturating_sub(1)));
            if !arrived
                && o < self.tb.falcon().config().first_offset + self.tb.falcon().generated(p)
            {
                lost.push(format!("{id} (malformed)"));
            }
        }
        let dead_lettered = letters
            .iter()
            .map(|l| (&l.stage, l.partition, l.offset, &l.reason))
            .collect::<BTreeSet<_>>()
            .len() as u64;
        Account {
            lost,
            duplicates: ledger.duplicates,
            dead_lettered,
            letters,
            events: self.generated(),
        }
    }

    /// Polls until nothing is missing (a cheap count first, the full account then).
    /// Waits until every expected event arrived (or was dead-lettered). Gives up after
    /// `within`, or earlier when nothing new arrived for [`DELIVERY_DEADLINE`] (a stall).
    async fn wait_all(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (mut last_seen, mut progress_at) = (0u64, Instant::now());
        loop {
            let expected = self.generated() - self.malformed.len() as u64;
            let seen =
                self.tb.ingestion().distinct_event_ids() as u64 + self.letters().len() as u64;
            if seen >= expected && self.account().lost.is_empty() {
                return true;
            }
            if seen != last_seen {
                (last_seen, progress_at) = (seen, Instant::now());
            }
            if Instant::now() >= deadline || progress_at.elapsed() >= DELIVERY_DEADLINE {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clears the faults, appends the tail, waits for everything, stops the bridge and
    /// fills the row's accounting. `since` is when the faults stopped.
    async fn finish(&mut self, row: &mut Row, since: Instant) {
        self.tb.faults().clear();
        for (&(partition, offset), kind) in self.malformed.iter().zip(&self.malformed_kinds) {
            self.tb.faults().inject(Fault::Malformed {
                partition,
                offset,
                kind: kind.clone(),
            });
        }
        if self.bridge.is_none() {
            self.start();
        }
        self.append_everywhere(TAIL_EVENTS);
        let all = self.wait_all(self.delivery_deadline).await;
        row.recovery = Some(since.elapsed());
        if let Err(e) = self.stop() {
            row.fail(e);
        }
        let account = self.account();
        row.events = account.events;
        row.lost = account.lost.len() as u64;
        row.duplicates = account.duplicates;
        row.dead_lettered = account.dead_lettered;
        if !all || !account.lost.is_empty() {
            row.fail(format!(
                "{} lost, e.g. {:?}; log:\n{}",
                account.lost.len(),
                &account.lost[..account.lost.len().min(5)],
                self.last_log()
            ));
        }
        if row.duplicates > row.dup_bound {
            row.fail(format!(
                "{} duplicates: more than the bound {}",
                row.duplicates, row.dup_bound
            ));
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("FSB_FAULTS_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// `(partition, offset)` of `"{cid}:{partition}:{offset}"`.
fn parse_id(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.rsplitn(3, ':');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((partition, offset))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Waits until `at`, without holding anything.
async fn until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

// ---------------------------------------------------------------------------------------
// Kills.

async fn sigkill(profile: Profile, kafka: bool) -> Row {
    let mut row = Row::new(if kafka {
        "sigkill-kafka"
    } else {
        "sigkill-disk"
    });
    let (kills, events) = if profile.full {
        (50u64, 1_000_000u64)
    } else {
        (5, 50_000)
    };
    let kills = env_u64("FSB_FAULTS_KILLS").unwrap_or(kills).max(1);
    let events = env_u64("FSB_FAULTS_EVENTS").unwrap_or(events).max(2);
    // Kafka is tansu, a separate Kafka-compatible broker process (the launcher indexes its
    // sqlite header table; without that its fetches are quadratic in the records stored).
    // librdkafka's mock cluster cannot hold this volume: it keeps at most 5 MB per partition
    // and silently drops older records, as retention would.
    if kafka && !Tansu::available() {
        row.fail("tansu is not installed: run scripts/provision-tansu.sh");
        return row;
    }
    let tansu = kafka.then(|| e2e::with_bridge_topics(Tansu::start(), 2));
    let mut rng = rand::rngs::StdRng::seed_from_u64(profile.seed);
    let options = BridgeOptions {
        kafka_brokers: tansu.as_ref().map(Tansu::broker),
        // The smallest cap the config allows: the source pauses while the topic holds 64 MiB
        // undelivered. It bounds tansu's fetch cost too, which grows with what a partition
        // holds past the fetch offset (sqlite window over every record to the end).
        kafka_max_backlog_bytes: kafka.then_some(64 << 20),
        ..BridgeOptions::default()
    };
    let mut bench = Bench::new(2, &options, |c| c.falcon.refresh_interval_secs = 3).await;
    if kafka {
        // On tansu (debug builds, 2 shared cores) the whole path runs at ~1k events/s once
        // topics hold a few hundred MB (its produce and fetch share one sqlite database), and
        // the kills leave most of a large run to after them: allow 3 ms an event, still
        // giving up early on a stall (nothing new for `DELIVERY_DEADLINE`).
        bench.delivery_deadline = DELIVERY_DEADLINE.max(Duration::from_millis(events * 3));
    }

    // Half the events exist at the start; the rest arrive in steps while the bridge is
    // being killed, so kills land in every phase: reading Falcon, appending, delivering.
    // On Kafka each run lives longer: the restarted bridge gets its partitions 6–8 s after
    // start on tansu (connect, recovery scan, the group join), and a kill should land while
    // it delivers.
    let (alive, after_append) = if kafka {
        (8_000..14_000, 100..1_200)
    } else {
        (300..2_500, 50..500)
    };
    let half = events / 2;
    bench.tb.falcon().append_events(0, half / 2);
    bench.tb.falcon().append_events(1, half - half / 2);
    let per_step = (events - half) / kills;
    let mut appended = half;
    for step in 0..kills {
        bench.start();
        tokio::time::sleep(Duration::from_millis(rng.random_range(alive.clone()))).await;
        let add = if step + 1 == kills {
            events - appended
        } else {
            per_step
        };
        bench
            .tb
            .falcon()
            .append_events(u32::from(rng.random_bool(0.5)), add);
        appended += add;
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(after_append.clone()),
        ))
        .await;
        if let Some(status) = bench.exited() {
            row.fail(format!(
                "the bridge exited on its own before kill {step}: {status}; log:\n{}",
                bench.last_log()
            ));
        }
        bench.kill();
    }
    row.faults = format!(
        "{kills} kills (seed {}){}",
        profile.seed,
        if kafka { ", tansu" } else { "" }
    );
    let window = if kafka {
        KAFKA_IN_FLIGHT_WINDOW
    } else {
        IN_FLIGHT_WINDOW
    };
    row.dup_bound = kills * window;
    let since = Instant::now();
    bench.finish(&mut row, since).await;
    drop(tansu);
    row
}

// ---------------------------------------------------------------------------------------
// Outages.

async fn ingestion_storm(profile: Profile) -> Row {
    let mut row = Row::new("ingestion-503-storm");
    let scale = if profile.full { 5 } else { 1 };
    let mut bench = Bench::new(2, &BridgeOptions::default(), |_| {}).await;
    bench.tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(1),
        count: None,
        duration_secs: Some(5),
    });
    let storm_end = Instant::now() + Duration::from_secs(5);
    bench.append_everywhere(10_000 * scale);
    bench.start();
    until(storm_end).await;
    // A 429 storm with Retry-After while new events keep arriving.
    bench.tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 429,
        retry_after_secs: Some(2),
        count: None,
        duration_secs: Some(5),
    });
    let storm_end = Instant::now() + Duration::from_secs(5);
    bench.append_everywhere(2_500 * scale);
    until(storm_end).await;
    bench.finish(&mut row, storm_end).await;
    let statuses = bench.tb.ingestion().ledger().statuses;
    let (s503, s429) = (
        statuses.get(&503).copied().unwrap_or(0),
        statuses.get(&429).copied().unwrap_or(0),
    );
    row.faults = format!("503×{s503}, 429×{s429}");
    if s503 == 0 || s429 == 0 {
        row.fail(format!("a storm was never seen: {statuses:?}"));
    }
    row
}

async fn token_endpoint_down(_profile: Profile) -> Row {
    let mut row = Row::new("token-endpoint-down");
    let mut bench = Bench::new(1, &BridgeOptions::default(), |_| {}).await;
    bench.append_everywhere(5_000);
    bench.start();
    if !bench.wait_all(Duration::from_mins(1)).await {
        row.fail(format!(
            "first 5,000 never arrived; log:\n{}",
            bench.last_log()
        ));
    }
    let issued_before = bench.tb.entra().tokens_issued();
    let ledger_before = bench.tb.ingestion().ledger();
    // Entra resets connections, then answers 503, while the cached token becomes invalid.
    // (Faulted token requests never reach the emulator's counters: the evidence that the
    // bridge noticed is the 401s it got for the expired token.)
    bench.tb.faults().inject(Fault::Reset {
        target: Target::Entra,
        count: Some(3),
    });
    bench.tb.faults().inject(Fault::Status {
        target: Target::Entra,
        status: 503,
        retry_after_secs: None,
        count: None,
        duration_secs: Some(8),
    });
    let outage_end = Instant::now() + Duration::from_secs(8);
    bench.tb.entra().expire_all_tokens();
    bench.append_everywhere(5_000);
    until(outage_end).await;
    let ledger = bench.tb.ingestion().ledger();
    let status = |l: &testbench::Ledger, s: u16| l.statuses.get(&s).copied().unwrap_or(0);
    let unauthorized = status(&ledger, 401) - status(&ledger_before, 401);
    let accepted_during = ledger.accepted_requests - ledger_before.accepted_requests;
    let issued_during = bench.tb.entra().tokens_issued() - issued_before;
    bench.finish(&mut row, outage_end).await;
    let issued_after = bench.tb.entra().tokens_issued() - issued_before - issued_during;
    row.faults = format!("Entra down 8 s, {unauthorized}×401");
    row.notes.push(format!(
        "token-endpoint-down: {accepted_during} ingestion requests accepted and {issued_during} \
         tokens issued during the 8 s outage (both expected 0), {issued_after} issued after it"
    ));
    if unauthorized == 0 {
        row.fail("the expired token was never refused: the outage was not exercised");
    }
    if issued_after == 0 {
        row.fail("no new token after the outage");
    }
    row
}

async fn falcon_cut(profile: Profile, mid_line: bool) -> Row {
    let mut row = Row::new(if mid_line {
        "falcon-cut-mid-line"
    } else {
        "falcon-cut-every-n"
    });
    let scale = if profile.full { 5 } else { 1 };
    let mut bench = Bench::new(2, &BridgeOptions::default(), |_| {}).await;
    let every = if mid_line { 777 } else { 1_000 };
    bench.tb.faults().inject(Fault::CutFeed {
        every_events: every,
        mid_line,
    });
    bench.append_everywhere(10_000 * scale);
    bench.start();
    let cut_phase = bench.wait_all(Duration::from_mins(2)).await;
    if !cut_phase {
        row.fail(format!(
            "not everything arrived while the feed was being cut; log:\n{}",
            bench.last_log()
        ));
    }
    let cuts = bench.tb.falcon().stats().feed_cuts;
    let since = Instant::now();
    bench.finish(&mut row, since).await;
    row.faults = format!("{cuts} cuts every {every}");
    if cuts == 0 {
        row.fail("the feed was never cut");
    }
    row
}

async fn falcon_refresh_failing(_profile: Profile) -> Row {
    let mut row = Row::new("falcon-refresh-failing");
    // Sessions expire 5 s after discovery or the last refresh (testbench_config).
    let mut bench = Bench::new(2, &BridgeOptions::default(), |_| {}).await;
    bench.tb.faults().inject(Fault::Status {
        target: Target::FalconRefresh,
        status: 500,
        retry_after_secs: None,
        count: None,
        duration_secs: Some(14),
    });
    let outage_end = Instant::now() + Duration::from_secs(14);
    bench.append_everywhere(2_500);
    bench.start();
    while Instant::now() + Duration::from_secs(2) < outage_end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench.append_everywhere(1_000);
    }
    until(outage_end).await;
    let stats = bench.tb.falcon().stats();
    let refresh_500 = stats.refreshes;
    bench.finish(&mut row, outage_end).await;
    row.faults = format!(
        "refresh 500 for 14 s ({} sessions expired)",
        stats.sessions_expired
    );
    row.notes.push(format!(
        "falcon-refresh-failing: {refresh_500} refreshes succeeded and {} discovers by the end of the outage",
        stats.discovers
    ));
    row
}

// ---------------------------------------------------------------------------------------
// Bad input.

async fn bad_input(_profile: Profile) -> Row {
    let mut row = Row::new("bad-input");
    let mut bench = Bench::new(1, &BridgeOptions::default(), |_| {}).await;
    let kinds = [
        (100, MalformedKind::InvalidJson, "malformed line"),
        (300, MalformedKind::InvalidUtf8, "invalid UTF-8"),
        (500, MalformedKind::MissingOffset, "no offset"),
        (700, MalformedKind::NotAnObject, "not an object"),
        (
            900,
            MalformedKind::Oversize { bytes: 1_200_000 },
            "event > 1 MB",
        ),
        (
            1_100,
            MalformedKind::Oversize { bytes: 100_000 },
            "field > 64 KB",
        ),
    ];
    for (offset, kind, _) in &kinds {
        bench.inject_malformed(0, *offset, kind.clone());
    }
    let cid = bench.tb.falcon().customer_id().to_owned();
    let poison = 1_300u64;
    bench.tb.faults().inject(Fault::RejectEventIds {
        event_ids: vec![format!("{cid}:0:{poison}")],
    });
    bench.append_everywhere(3_000);
    bench.start();
    let arrived = bench.wait_all(Duration::from_mins(2)).await;
    if !arrived {
        row.fail(format!(
            "bad input stopped the flow; log:\n{}",
            bench.last_log()
        ));
    }
    // The quirks every stream carries: integers above 2^53, event types without a stream.
    let first = bench.tb.falcon().config().first_offset;
    let mut big_ints = 0;
    let mut unmapped = BTreeMap::<&str, u64>::new();
    for offset in first..first + 3_000 {
        if bench.malformed.contains(&(0, offset)) {
            continue;
        }
        if let Some(line) = bench.tb.falcon().event_line(0, offset)
            && has_int_above_2_53(&line)
        {
            big_ints += 1;
        }
        let kind = bench.tb.falcon().event_type(0, offset);
        if kind != "EppDetectionSummaryEvent" {
            *unmapped.entry(kind).or_default() += 1;
        }
    }
    let since = Instant::now();
    bench.finish(&mut row, since).await;

    let account = bench.account();
    let ledger = bench.tb.ingestion().ledger();
    let mut fate = Vec::new();
    for (offset, _, what) in &kinds {
        let id = format!("{cid}:0:{offset}");
        let outcome = if ledger.event_ids.contains_key(&id) {
            "delivered".to_owned()
        } else if let Some(l) = account.letters.iter().find(|l| {
            l.partition == 0
                && ((l.stage == "sentinel" && l.offset == Some(*offset))
                    || (l.stage == "source" && l.offset == Some(offset - 1)))
        }) {
            format!("dead-lettered ({}/{})", l.stage, l.reason)
        } else {
            "NOWHERE".to_owned()
        };
        fate.push(format!("{what} → {outcome}"));
    }
    let refused = account
        .letters
        .iter()
        .find(|l| l.stage == "sentinel" && l.offset == Some(poison));
    match refused {
        Some(l) if l.status == Some(400) => {
            fate.push(format!("Azure 400 → dead-lettered (sentinel/{})", l.reason));
        }
        other => row.fail(format!(
            "the record Azure refused is not lettered with 400: {other:?}"
        )),
    }
    fate.push(format!(
        "{big_ints} events with integers > 2^53 → delivered"
    ));
    fate.push(format!(
        "{} events of types without a `streams:` entry ({}) → default stream",
        unmapped.values().sum::<u64>(),
        unmapped.len()
    ));
    row.faults = format!("{} bad lines + 1 refused", kinds.len());
    row.notes.push(format!("bad-input: {}", fate.join("; ")));
    row.notes
        .push(format!("bad-input per stream: {:?}", ledger.per_stream));
    if letters_without_reason(&account.letters) > 0 {
        row.fail("dead letters without a reason");
    }
    row
}

/// Whether the line has an unsigned integer literal above 2^53 (outside strings: the
/// generator's integers are not quoted).
fn has_int_above_2_53(line: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b.is_ascii_digit() {
            let start = i;
            while i < line.len() && line[i].is_ascii_digit() {
                i += 1;
            }
            let digits = std::str::from_utf8(&line[start..i]).unwrap_or("0");
            if digits.parse::<u128>().is_ok_and(|n| n > 1u128 << 53) {
                return true;
            }
            continue;
        }
        i += 1;
    }
    false
}

fn letters_without_reason(letters: &BTreeSet<Letter>) -> usize {
    letters.iter().filter(|l| l.reason.is_empty()).count()
}

// ---------------------------------------------------------------------------------------
// Resource faults, through the LD_PRELOAD shim.

/// Compiles `tests/faults/shim.c` into `dir/shim.so`.
fn build_shim(dir: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("faults/shim.c");
    let out = dir.join("shim.so");
    let output = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("run cc: {e}"))?;
    if output.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "cc {}: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Lines of the bridge's logs (all runs) that mention `needle`.
fn log_lines_with(dir: &Path, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    let mut logs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("bridge-"))
        })
        .collect();
    logs.sort();
    for log in logs {
        if let Ok(text) = std::fs::read_to_string(&log) {
            lines.extend(
                text.lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned),
            );
        }
    }
    lines
}

async fn disk_full(profile: Profile) -> Row {
    let mut row = Row::new("disk-full");
    let scale = if profile.full { 5 } else { 1 };
    let mut bench = Bench::new(1, &BridgeOptions::default(), |_| {}).await;
    let shim = match build_shim(bench.path()) {
        Ok(shim) => shim,
        Err(e) => {
            row.fail(format!("could not build the LD_PRELOAD shim: {e}"));
            return row;
        }
    };
    let flag = bench.path().join("disk-full.flag");
    bench.env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        (
            "FSB_SHIM_DIR".into(),
            bench.path().join("buffer").display().to_string(),
        ),
        ("FSB_SHIM_ENOSPC_FLAG".into(), flag.display().to_string()),
    ];
    bench.append_everywhere(5_000 * scale);
    bench.start();
    if !bench.wait_all(Duration::from_mins(1)).await {
        row.fail(format!(
            "the first events never arrived under the shim; log:\n{}",
            bench.last_log()
        ));
    }

    // The disk fills while events keep arriving; the bridge is restarted whenever it
    // exits, as a supervisor would (a crash loop shows as many exits).
    std::fs::write(&flag, b"full").expect("create the flag");
    let full_from = Instant::now();
    let delivered_before = bench.tb.ingestion().distinct_event_ids();
    let full_for = Duration::from_secs(8);
    let mut exits = Vec::new();
    let mut exit_logs = Vec::new();
    bench.append_everywhere(5_000 * scale);
    while full_from.elapsed() < full_for {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = bench.exited() {
            exits.push(status.to_string());
            if exit_logs.len() < 2 {
                exit_logs.push(last_lines(&bench.last_log(), 2));
            }
            // A supervisor's restart delay (systemd `RestartSec=1`).
            tokio::time::sleep(Duration::from_secs(1)).await;
            bench.start();
        }
    }
    let delivered_while_full = bench.tb.ingestion().distinct_event_ids() - delivered_before;
    // Space returns: the same process reopens its buffer and catches up, no restart.
    std::fs::remove_file(&flag).expect("remove the flag");
    if !bench.wait_all(Duration::from_mins(2)).await {
        row.fail(format!(
            "after space returned, the running bridge did not catch up; log:\n{}",
            bench.last_log()
        ));
    }
    // Full again, and the bridge dies while the disk is full: what it acknowledged must be
    // durable, and the restart (with space back) delivers the rest.
    std::fs::write(&flag, b"full").expect("create the flag");
    bench.append_everywhere(2_000 * scale);
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = bench.exited() {
        exits.push(status.to_string());
    }
    bench.kill();
    std::fs::remove_file(&flag).expect("remove the flag");
    row.dup_bound = (exits.len() as u64 + 1) * IN_FLIGHT_WINDOW;
    let since = Instant::now();
    bench.finish(&mut row, since).await;

    let enospc = log_lines_with(bench.path(), "No space left on device");
    row.faults = format!("ENOSPC 8 s, then 3 s + kill; {} exits", exits.len());
    row.notes.push(format!(
        "disk-full: while full the bridge {} ({} exits, statuses {:?}); {delivered_while_full} events \
         delivered while full (already buffered); {} log lines mention ENOSPC{}",
        if exits.is_empty() {
            "stayed up"
        } else {
            "exited and was restarted"
        },
        exits.len(),
        exits.iter().collect::<BTreeSet<_>>(),
        enospc.len(),
        enospc
            .first()
            .map(|l| format!(", first: {}", truncate(l, 400)))
            .unwrap_or_default()
    ));
    if !exits.is_empty() {
        // Exiting on a full disk is a crash loop under a supervisor: the bridge must stay
        // up, not ready, and reopen its buffer when space returns.
        row.fail(format!(
            "the bridge exited {} times while the disk was full; last lines: {}",
            exits.len(),
            exit_logs.join(" | ")
        ));
    }
    row
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| truncate(l, 300))
        .collect::<Vec<_>>()
        .join(" / ")
}

async fn slow_disk(profile: Profile) -> Row {
    let mut row = Row::new("slow-disk");
    let scale = if profile.full { 5 } else { 1 };
    let mut bench = Bench::new(2, &BridgeOptions::default(), |_| {}).await;
    let shim = match build_shim(bench.path()) {
        Ok(shim) => shim,
        Err(e) => {
            row.fail(format!("could not build the LD_PRELOAD shim: {e}"));
            return row;
        }
    };
    let delay_ms = 50;
    bench.env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        (
            "FSB_SHIM_DIR".into(),
            bench.path().join("buffer").display().to_string(),
        ),
        ("FSB_SHIM_FSYNC_DELAY_MS".into(), delay_ms.to_string()),
    ];
    bench.append_everywhere(10_000 * scale);
    let started = Instant::now();
    bench.start();
    let arrived = bench.wait_all(Duration::from_mins(2)).await;
    let took = started.elapsed();
    if !arrived {
        row.fail(format!(
            "not everything arrived on the slow disk; log:\n{}",
            bench.last_log()
        ));
    }
    let events = bench.generated();
    // One kill on the slow disk: fsync latency must not widen what a crash loses.
    bench.append_everywhere(2_000 * scale);
    tokio::time::sleep(Duration::from_millis(700)).await;
    bench.kill();
    row.dup_bound = IN_FLIGHT_WINDOW;
    let since = Instant::now();
    bench.finish(&mut row, since).await;
    row.faults = format!("fsync +{delay_ms} ms, 1 kill");
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = events as f64 / took.as_secs_f64();
    row.notes.push(format!(
        "slow-disk: {events} events in {:.1} s from start with fsync +{delay_ms} ms ({rate:.0} events/s incl. startup)",
        took.as_secs_f64()
    ));
    row
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------
// Kafka.

/// The consumer session timeout the bridge gets against the mock cluster.
const MOCK_SESSION_TIMEOUT_MS: u64 = 6_000;

/// A mock cluster of 3 brokers with the bridge's two topics.
fn mock_cluster(replication: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic("falcon-events", 4, replication)
        .expect("events topic");
    mock.create_topic("falcon-checkpoints", 1, replication)
        .expect("checkpoint topic");
    mock
}

/// SIGKILL of the broker (tansu, a separate Kafka-compatible broker) and a restart on the
/// same sqlite file, twice, under a running bridge. Small volumes: see [`sigkill`].
async fn kafka_broker_kill(profile: Profile) -> Row {
    let mut row = Row::new("kafka-broker-kill");
    if !Tansu::available() {
        row.outcome = Outcome::Skipped("skipped (no tansu)".into());
        return row;
    }
    let scale = if profile.full { 3 } else { 1 };
    let mut tansu = e2e::with_bridge_topics(Tansu::start(), 2);
    let options = BridgeOptions {
        kafka_brokers: Some(tansu.broker()),
        ..BridgeOptions::default()
    };
    let mut bench = Bench::new(2, &options, |_| {}).await;
    bench.append_everywhere(1_000 * scale);
    bench.start();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut exits = Vec::new();
    let broker_kills = 2;
    for _ in 0..broker_kills {
        tansu.kill();
        bench.append_everywhere(250 * scale);
        tokio::time::sleep(Duration::from_secs(3)).await;
        tansu.restart();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(status) = bench.exited() {
            exits.push(status.to_string());
            bench.start();
        }
    }
    row.dup_bound = (exits.len() as u64 + 1) * KAFKA_IN_FLIGHT_WINDOW;
    let since = Instant::now();
    bench.finish(&mut row, since).await;
    row.faults = format!("{broker_kills} broker SIGKILLs (3 s down), tansu");
    if !exits.is_empty() {
        row.fail(format!(
            "the bridge exited {} times: {exits:?}",
            exits.len()
        ));
    }
    drop(tansu);
    row
}

/// Every broker of the mock cluster unreachable for 5 s, twice, under a running bridge
/// with events flowing.
async fn kafka_cluster_outage(profile: Profile) -> Row {
    let mut row = Row::new("kafka-cluster-outage");
    let scale = if profile.full { 10 } else { 1 };
    let mock = mock_cluster(3);
    let options = BridgeOptions {
        kafka_brokers: Some(mock.bootstrap_servers()),
        kafka_session_timeout_ms: Some(MOCK_SESSION_TIMEOUT_MS),
        ..BridgeOptions::default()
    };
    let mut bench = Bench::new(2, &options, |_| {}).await;
    bench.append_everywhere(5_000 * scale);
    bench.start();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outages = 2;
    let mut exits = Vec::new();
    for _ in 0..outages {
        mock.broker_down(-1).expect("brokers down");
        bench.append_everywhere(2_500 * scale);
        tokio::time::sleep(Duration::from_secs(5)).await;
        mock.broker_up(-1).expect("brokers up");
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some(status) = bench.exited() {
            exits.push(status.to_string());
            bench.start();
        }
    }
    row.dup_bound = KAFKA_IN_FLIGHT_WINDOW;
    let since = Instant::now();
    bench.finish(&mut row, since).await;
    row.faults = format!("{outages} outages of all 3 brokers (5 s), mock cluster");
    if !exits.is_empty() {
        row.fail(format!(
            "the bridge exited {} times: {exits:?}",
            exits.len()
        ));
    }
    row
}

// ---------------------------------------------------------------------------------------
// The runner.

const SCENARIOS: &[&str] = &[
    "sigkill-disk",
    "ingestion-503-storm",
    "token-endpoint-down",
    "falcon-cut-every-n",
    "falcon-cut-mid-line",
    "falcon-refresh-failing",
    "bad-input",
    "disk-full",
    "slow-disk",
    "sigkill-kafka",
    "kafka-broker-kill",
    "kafka-cluster-outage",
];

async fn run_scenario(name: &'static str, profile: Profile) -> Row {
    // A local task: the mock cluster's handle is not `Send`. A panic is still caught by
    // the join handle and becomes a FAIL row.
    let local = tokio::task::LocalSet::new();
    let task = local.spawn_local(async move {
        match name {
            "sigkill-disk" => sigkill(profile, false).await,
            "ingestion-503-storm" => ingestion_storm(profile).await,
            "token-endpoint-down" => token_endpoint_down(profile).await,
            "falcon-cut-every-n" => falcon_cut(profile, false).await,
            "falcon-cut-mid-line" => falcon_cut(profile, true).await,
            "falcon-refresh-failing" => falcon_refresh_failing(profile).await,
            "bad-input" => bad_input(profile).await,
            "disk-full" => disk_full(profile).await,
            "slow-disk" => slow_disk(profile).await,
            "sigkill-kafka" => sigkill(profile, true).await,
            "kafka-broker-kill" => kafka_broker_kill(profile).await,
            "kafka-cluster-outage" => kafka_cluster_outage(profile).await,
            other => {
                let mut row = Row::new("unknown");
                row.fail(format!("no scenario {other}"));
                row
            }
        }
    });
    match local.run_until(task).await {
        Ok(row) => row,
        Err(e) => {
            let mut row = Row::new(name);
            let why = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panic".to_owned())
            } else {
                e.to_string()
            };
            row.fail(format!("panicked: {why}"));
            row
        }
    }
}

fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "events",
        "kills/faults",
        "lost",
        "duplicates",
        "dead-lettered",
        "recovery",
        "result",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let skipped = matches!(r.outcome, Outcome::Skipped(_));
            let dash = |s: String| if skipped { "-".to_owned() } else { s };
            [
                r.scenario.to_owned(),
                dash(r.events.to_string()),
                dash(r.faults.clone()),
                dash(r.lost.to_string()),
                dash(format!("{} (≤ {})", r.duplicates, r.dup_bound)),
                dash(r.dead_lettered.to_string()),
                r.recovery
                    .map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
                match &r.outcome {
                    Outcome::Ok => "ok".to_owned(),
                    Outcome::Failed(_) => "FAIL".to_owned(),
                    Outcome::Skipped(why) => why.clone(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            // Numbers right-aligned, words left-aligned.
            if matches!(i, 1 | 3 | 5 | 6) {
                let _ = write!(text, "{}{c}  ", " ".repeat(pad));
            } else {
                let _ = write!(text, "{c}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned));
    line(&mut out, &widths.map(|w| "-".repeat(w)));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    // libtest passes flags (`--nocapture`, `--test-threads=2`, `--format x`); positional
    // arguments are name filters.
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in &args {
        if skip_value {
            skip_value = false;
        } else if matches!(
            arg.as_str(),
            "--test-threads" | "--format" | "--color" | "--skip" | "-Z" | "--logfile"
        ) {
            skip_value = true;
        } else if !arg.starts_with('-') {
            filters.push(arg.clone());
        }
    }
    let profile = Profile {
        full: std::env::var("FSB_FAULTS_PROFILE").is_ok_and(|p| p == "full"),
        seed: std::env::var("FSB_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_261_124),
    };
    let only: Option<Vec<String>> = std::env::var("FSB_FAULTS_ONLY").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(only) = &only
        && let Some(bad) = only.iter().find(|n| !SCENARIOS.contains(&n.as_str()))
    {
        eprintln!("FSB_FAULTS_ONLY: no scenario {bad:?}; scenarios: {SCENARIOS:?}");
        return ExitCode::FAILURE;
    }
    let selected: Vec<&'static str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s)))
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        println!("fault suite: no scenario matches {filters:?}");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    println!(
        "fault suite: profile {}, seed {}, {} scenarios",
        if profile.full { "full" } else { "ci" },
        profile.seed,
        selected.len()
    );
    let mut rows = Vec::new();
    for name in selected {
        let t = Instant::now();
        let row = runtime.block_on(run_scenario(name, profile));
        println!(
            "  {name}: {} in {:.1} s",
            match &row.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed(_) => "FAIL",
                Outcome::Skipped(_) => "skipped",
            },
            t.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    println!();
    print!("{}", table(&rows));
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    for row in &rows {
        for note in &row.notes {
            println!("note: {note}");
        }
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.passed()).collect();
    for row in &failed {
        if let Outcome::Failed(why) = &row.outcome {
            println!("\nFAIL {}: {why}", row.scenario);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
