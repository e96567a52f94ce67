//! Integration tests against the testbench's Falcon emulator over real HTTPS. Each trap of
//! reference §4 that applies to a consumer has a test here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falcon_stream::{
    CancellationToken, DeadLetterReason, EventSink, FalconEvent, FalconSource, ReconnectCause,
    SinkError, SourceConfig, SourceDeadLetter, SourceError,
};
use testbench::{
    FalconConfig, Fault, LineEnding, MalformedKind, Target, Testbench, TestbenchConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An in-memory sink: events per partition, dead letters, and an optional gate that holds
/// every `write` (backpressure).
#[derive(Default, Debug)]
struct MemSink {
    state: Mutex<MemState>,
    blocked: AtomicBool,
    unblock: tokio::sync::Notify,
}

#[derive(Default, Debug)]
struct MemState {
    events: BTreeMap<u32, Vec<FalconEvent>>,
    dead: Vec<SourceDeadLetter>,
    writes: u64,
}

impl MemSink {
    fn offsets(&self, partition: u32) -> Vec<u64> {
        let s = self.state.lock().unwrap();
        s.events
            .get(&partition)
            .map(|v| v.iter().map(|e| e.offset).collect())
            .unwrap_or_default()
    }
    fn count(&self, partition: u32) -> usize {
        self.state
            .lock()
            .unwrap()
            .events
            .get(&partition)
            .map_or(0, Vec::len)
    }
    fn dead(&self) -> Vec<SourceDeadLetter> {
        self.state.lock().unwrap().dead.clone()
    }
    fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
    }
    fn release(&self) {
        self.blocked.store(false, Ordering::SeqCst);
        self.unblock.notify_waiters();
    }
}

impl EventSink for MemSink {
    async fn durable_offset(&self, partition: u32) -> Result<Option<u64>, SinkError> {
        let s = self.state.lock().unwrap();
        Ok(s.events
            .get(&partition)
            .and_then(|v| v.last())
            .map(|e| e.offset))
    }

    async fn write(&self, partition: u32, events: Vec<FalconEvent>) -> Result<(), SinkError> {
        while self.blocked.load(Ordering::SeqCst) {
            let notified = self.unblock.notified();
            if !self.blocked.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        let mut s = self.state.lock().unwrap();
        s.writes += 1;
        let v = s.events.entry(partition).or_default();
        for e in events {
            assert_eq!(e.partition, partition);
            assert!(
                v.last().is_none_or(|l| l.offset < e.offset),
                "offsets must ascend: {} after {:?}",
                e.offset,
                v.last().map(|l| l.offset)
            );
            v.push(e);
        }
        Ok(())
    }

    async fn dead_letter(&self, letter: SourceDeadLetter) -> Result<(), SinkError> {
        self.state.lock().unwrap().dead.push(letter);
        Ok(())
    }
}

async fn bench(falcon: FalconConfig) -> Testbench {
    Testbench::start(TestbenchConfig {
        falcon,
        ..Default::default()
    })
    .await
    .expect("start testbench")
}

fn falcon(partitions: u32, initial_events: u64) -> FalconConfig {
    FalconConfig {
        partitions,
        initial_events,
        keepalive_interval_ms: 200,
        ..Default::default()
    }
}

fn config(tb: &Testbench) -> SourceConfig {
    let mut c = SourceConfig::new(
        tb.url(),
        "testbench-falcon-client",
        "testbench-falcon-secret",
        "bridgetest",
    );
    c.extra_ca_pems = vec![tb.ca_pem().as_bytes().to_vec()];
    c.read_idle_timeout = Duration::from_secs(5);
    c.request_timeout = Duration::from_secs(5);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), SourceError>>,
    stats: Arc<falcon_stream::SourceStats>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("source stops promptly")
            .expect("join")
            .expect("run returns Ok on cancel");
    }
}

fn start(config: SourceConfig, sink: &Arc<MemSink>) -> Running {
    let source = FalconSource::new(config, Arc::clone(sink)).expect("valid config");
    let stats = source.stats();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let handle = tokio::spawn(async move { source.run(c).await });
    Running {
        cancel,
        handle,
        stats,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event of `partition` in `first..=last`, once, in order, byte-exact.
fn assert_exact(tb: &Testbench, sink: &MemSink, partition: u32, expected: &[u64]) {
    assert_eq!(sink.offsets(partition), expected, "partition {partition}");
    let s = sink.state.lock().unwrap();
    for e in s.events.get(&partition).into_iter().flatten() {
        let line = tb
            .falcon()
            .event_line(partition, e.offset)
            .expect("event exists");
        assert_eq!(e.raw, line, "raw bytes of {partition}:{}", e.offset);
        assert_eq!(e.customer_id, tb.falcon().customer_id());
        assert!(
            e.created_at_ms > 1_600_000_000_000,
            "eventCreationTime in ms"
        );
        assert!(!e.event_type.is_empty());
    }
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_partitions_consumed_concurrently_with_independent_offsets() {
    let tb = bench(falcon(3, 300)).await;
    tb.falcon().append_events(1, 50);
    let sink = Arc::new(MemSink::default());
    let run = start(config(&tb), &sink);
    wait_until("all partitions", T, || {
        sink.count(0) == 300 && sink.count(1) == 350 && sink.count(2) == 300
    })
    .await;
    tb.falcon().append_events(2, 25);
    wait_until("appended events", T, || sink.count(2) == 325).await;
    let stats = run.stats.snapshot();
    run.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 300));
    assert_exact(&tb, &sink, 1, &range(1, 350));
    assert_exact(&tb, &sink, 2, &range(1, 325));
    let opens = tb.falcon().stats().feed_opens_with_offset;
    assert_eq!(
        opens.len(),
        3,
        "one open per partition, no reconnect: {opens:?}"
    );
    assert!(
        opens.iter().all(|(_, o)| o.is_none()),
        "Earliest sends no offset: {opens:?}"
    );
    for p in 0..3 {
        let ps = &stats.partitions[&p];
        assert_eq!(ps.total_reconnects(), 0);
        assert_eq!(
            ps.latest_durable_offset,
            Some(if p == 1 {
                350
            } else if p == 2 {
                325
            } else {
                300
            })
        );
    }
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_has_no_gap_and_no_duplicate() {
    let tb = bench(falcon(1, 200)).await;
    let sink = Arc::new(MemSink::default());
    let first = start(config(&tb), &sink);
    wait_until("first run", T, || sink.count(0) == 200).await;
    first.stop().await;
    tb.falcon().append_events(0, 100);
    let second = start(config(&tb), &sink);
    wait_until("second run", T, || sink.count(0) == 300).await;
    second.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 300));
    let opens = tb.falcon().stats().feed_opens_with_offset;
    assert_eq!(
        opens.last(),
        Some(&(0, Some(201))),
        "resumes at durable + 1: {opens:?}"
    );
    assert_eq!(tb.falcon().stats().stale_token_rejections, 0);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_stream_outlives_the_refresh_interval_and_refresh_carries_content_type() {
    let tb = bench(FalconConfig {
        refresh_interval_secs: 2,
        ..falcon(1, 5)
    })
    .await;
    let sink = Arc::new(MemSink::default());
    let run = start(config(&tb), &sink);
    wait_until("initial events", T, || sink.count(0) == 5).await;
    // Nothing but keepalives for more than two refresh intervals.
    wait_until("two refreshes", T, || tb.falcon().stats().refreshes >= 3).await;
    tb.falcon().append_events(0, 5);
    wait_until("events after the quiet period", T, || sink.count(0) == 10).await;
    let fs = tb.falcon().stats();
    let ours = run.stats.snapshot();
    run.stop().await;
    assert_eq!(fs.refresh_415, 0, "refresh must send Content-Type");
    assert_eq!(fs.feed_opens, 1, "the session never dropped");
    assert_eq!(fs.sessions_expired, 0);
    assert!(ours.partitions[&0].refreshes >= 3);
    assert_eq!(ours.partitions[&0].total_reconnects(), 0);
    assert!(ours.partitions[&0].keepalives > 0);
    assert_eq!(
        ours.token_requests, 1,
        "token cached, never fetched per request"
    );
    assert_exact(&tb, &sink, 0, &range(1, 10));
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_rediscovers_and_never_reuses_a_session_token() {
    let tb = bench(FalconConfig {
        refresh_interval_secs: 2,
        ..falcon(2, 50)
    })
    .await;
    let sink = Arc::new(MemSink::default());
    let run = start(config(&tb), &sink);
    wait_until("initial events", T, || {
        sink.count(0) == 50 && sink.count(1) == 50
    })
    .await;
    tb.falcon().expire_all_tokens();
    tb.falcon().append_events(0, 10);
    tb.falcon().append_events(1, 10);
    wait_until("events after expiry", T, || {
        sink.count(0) == 60 && sink.count(1) == 60
    })
    .await;
    let fs = tb.falcon().stats();
    let ours = run.stats.snapshot();
    run.stop().await;
    assert_eq!(
        fs.stale_token_rejections, 0,
        "a session token is never reused"
    );
    assert!(fs.feed_opens >= 4, "both partitions reopened: {fs:?}");
    assert!(ours.token_requests >= 2, "expired bearer token replaced");
    assert!(ours.partitions.values().all(|p| p.total_reconnects() >= 1));
    assert_exact(&tb, &sink, 0, &range(1, 60));
    assert_exact(&tb, &sink, 1, &range(1, 60));
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_mixed_line_endings_and_keepalives() {
    for ending in [LineEnding::Crlf, LineEnding::Mixed] {
        let tb = bench(FalconConfig {
            line_ending: ending,
            keepalive_interval_ms: 30,
            ..falcon(1, 100)
        })
        .await;
        let sink = Arc::new(MemSink::default());
        let run = start(config(&tb), &sink);
        wait_until("events", T, || sink.count(0) == 100).await;
        wait_until("keepalives", T, || {
            run.stats.snapshot().partitions[&0].keepalives >= 3
        })
        .await;
        tb.falcon().append_events(0, 20);
        wait_until("more events", T, || sink.count(0) == 120).await;
        run.stop().await;
        assert_exact(&tb, &sink, 0, &range(1, 120));
        assert!(
            sink.dead().is_empty(),
            "{ending:?}: no blank line is an event or a dead letter"
        );
        tb.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_lines_are_dead_lettered_while_the_rest_flows() {
    let tb = bench(falcon(1, 0)).await;
    let bad = [
        (
            10,
            MalformedKind::InvalidJson,
            DeadLetterReason::InvalidJson,
        ),
        (
            20,
            MalformedKind::Oversize { bytes: 200_000 },
            DeadLetterReason::Oversized,
        ),
        (
            30,
            MalformedKind::MissingOffset,
            DeadLetterReason::MissingOffset,
        ),
        (
            40,
            MalformedKind::InvalidUtf8,
            DeadLetterReason::InvalidUtf8,
        ),
        (
            50,
            MalformedKind::NotAnObject,
            DeadLetterReason::NotAnObject,
        ),
    ];
    for (offset, kind, _) in &bad {
        tb.faults().inject(Fault::Malformed {
            partition: 0,
            offset: *offset,
            kind: kind.clone(),
        });
    }
    tb.falcon().append_events(0, 60);
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.max_event_bytes = 8192;
    let run = start(c, &sink);
    wait_until("good events", T, || sink.count(0) == 55).await;
    let ours = run.stats.snapshot();
    run.stop().await;
    let expected: Vec<u64> = (1..=60).filter(|o| o % 10 != 0 || *o == 60).collect();
    assert_exact(&tb, &sink, 0, &expected);
    let dead = sink.dead();
    assert_eq!(dead.len(), 5, "{dead:?}");
    for ((offset, _, reason), letter) in bad.iter().zip(&dead) {
        assert_eq!(letter.reason, *reason);
        assert_eq!(letter.after_offset, Some(offset - 1), "{reason}");
        assert!(letter.raw.len() <= falcon_stream::DEAD_LETTER_RAW_CAP);
        let line = tb.falcon().event_line(0, *offset).unwrap();
        assert_eq!(letter.raw_len, line.len());
        assert!(line.starts_with(&letter.raw));
    }
    assert!(
        dead[1].raw_len >= 200_000 && dead[1].raw.len() <= 8192,
        "oversized line kept only as a prefix"
    );
    assert_eq!(ours.partitions[&0].total_dead_letters(), 5);
    assert_eq!(
        ours.partitions[&0].total_reconnects(),
        0,
        "bad input never stops the stream"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_429_honours_x_ratelimit_retryafter() {
    let tb = bench(falcon(1, 10)).await;
    tb.faults().inject(Fault::Status {
        target: Target::FalconToken,
        status: 429,
        retry_after_secs: Some(2),
        count: Some(1),
        duration_secs: None,
    });
    let sink = Arc::new(MemSink::default());
    let started = Instant::now();
    let run = start(config(&tb), &sink);
    wait_until("events after the 429", T, || sink.count(0) == 10).await;
    let waited = started.elapsed();
    let ours = run.stats.snapshot();
    run.stop().await;
    // The header is an epoch second two seconds ahead: at least one full second remains,
    // far beyond the 50 ms backoff the client would otherwise use.
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert_eq!(
        ours.token_requests, 2,
        "one refused, one granted, no hammering"
    );
    assert_eq!(ours.token_failures, 1);
    assert_eq!(tb.falcon().stats().tokens_issued, 1);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_with_the_same_app_id_waits_and_takes_over() {
    let tb = bench(FalconConfig {
        refresh_interval_secs: 2,
        ..falcon(1, 100)
    })
    .await;
    let sink = Arc::new(MemSink::default());
    let active = start(config(&tb), &sink);
    wait_until("active consumer", T, || sink.count(0) == 100).await;
    let standby = start(config(&tb), &sink);
    wait_until("standby is refused", T, || {
        standby.stats.snapshot().discovers_empty >= 2
    })
    .await;
    tb.falcon().append_events(0, 20);
    wait_until("active still consuming", T, || sink.count(0) == 120).await;
    assert_eq!(standby.stats.snapshot().discovers, 0);
    active.stop().await;
    tb.falcon().append_events(0, 30);
    wait_until("standby took over", T, || sink.count(0) == 150).await;
    assert!(standby.stats.snapshot().discovers >= 1);
    standby.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 150));
    let opens = tb.falcon().stats().feed_opens_with_offset;
    assert_eq!(opens.last(), Some(&(0, Some(121))), "{opens:?}");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_feeds_mid_line_resume_exactly() {
    let tb = bench(falcon(2, 500)).await;
    tb.faults().inject(Fault::CutFeed {
        every_events: 100,
        mid_line: true,
    });
    let sink = Arc::new(MemSink::default());
    let run = start(config(&tb), &sink);
    wait_until("all events despite cuts", Duration::from_secs(40), || {
        sink.count(0) == 500 && sink.count(1) == 500
    })
    .await;
    let ours = run.stats.snapshot();
    run.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 500));
    assert_exact(&tb, &sink, 1, &range(1, 500));
    assert!(
        sink.dead().is_empty(),
        "a line cut by the connection is not a dead letter"
    );
    for p in ours.partitions.values() {
        assert!(p.total_reconnects() >= 4, "{p:?}");
    }
    let cut = |c| {
        ours.partitions
            .values()
            .map(|p| p.reconnects.get(&c).copied().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        cut(ReconnectCause::ReadError) + cut(ReconnectCause::Eof) >= 4,
        "{ours:?}"
    );
    assert!(
        ours.partitions
            .values()
            .map(|p| p.truncated_lines)
            .sum::<u64>()
            >= 1,
        "cut lines counted: {ours:?}"
    );
    assert_eq!(tb.falcon().stats().stale_token_rejections, 0);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_reading_but_refresh_keeps_the_session() {
    let tb = bench(FalconConfig {
        refresh_interval_secs: 2,
        ..falcon(1, 0)
    })
    .await;
    let sink = Arc::new(MemSink::default());
    sink.block();
    tb.falcon().append_events(0, 50);
    let run = start(config(&tb), &sink);
    wait_until("feed open", T, || tb.falcon().stats().feed_opens == 1).await;
    let before = tb.falcon().stats().refreshes;
    // Longer than the refresh interval with the sink blocked.
    wait_until("refreshes while blocked", T, || {
        tb.falcon().stats().refreshes >= before + 2
    })
    .await;
    assert_eq!(sink.count(0), 0);
    sink.release();
    wait_until("events after release", T, || sink.count(0) == 50).await;
    tb.falcon().append_events(0, 10);
    wait_until("more events", T, || sink.count(0) == 60).await;
    let fs = tb.falcon().stats();
    run.stop().await;
    assert_eq!(fs.feed_opens, 1, "the session survived the backpressure");
    assert_exact(&tb, &sink, 0, &range(1, 60));
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_start_skips_the_backlog_and_event_type_filter_is_sent() {
    let tb = bench(falcon(1, 50)).await;
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.start = falcon_stream::StartPosition::Latest;
    let wanted = tb.falcon().event_type(0, 51).to_owned();
    c.event_types = vec![wanted.clone()];
    let run = start(c, &sink);
    wait_until("feed open", T, || tb.falcon().stats().feed_opens == 1).await;
    tb.falcon().append_events(0, 40);
    let expected: Vec<u64> = (51..=90)
        .filter(|o| tb.falcon().event_type(0, *o) == wanted)
        .collect();
    assert!(!expected.is_empty());
    wait_until("filtered new events", T, || sink.count(0) == expected.len()).await;
    run.stop().await;
    assert_exact(&tb, &sink, 0, &expected);
    assert_eq!(
        tb.falcon().stats().feed_opens_with_offset,
        vec![(0, None)],
        "whence=2, no offset"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_feed_hits_the_read_idle_timeout_and_reconnects() {
    let tb = bench(FalconConfig {
        keepalive_interval_ms: 60_000,
        refresh_interval_secs: 2,
        ..falcon(1, 10)
    })
    .await;
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.read_idle_timeout = Duration::from_millis(400);
    let run = start(c, &sink);
    wait_until("initial events", T, || sink.count(0) == 10).await;
    wait_until("idle reconnect", T, || {
        run.stats.snapshot().partitions[&0]
            .reconnects
            .get(&ReconnectCause::IdleTimeout)
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    wait_until("reopened", T, || tb.falcon().stats().feed_opens >= 2).await;
    tb.falcon().append_events(0, 5);
    wait_until("events after reconnect", T, || sink.count(0) == 15).await;
    run.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 15));
    assert_eq!(tb.falcon().stats().stale_token_rejections, 0);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_401_and_discover_errors_are_retried_with_a_fresh_session() {
    let tb = bench(falcon(1, 30)).await;
    tb.faults().inject(Fault::Status {
        target: Target::FalconDiscover,
        status: 503,
        retry_after_secs: None,
        count: Some(2),
        duration_secs: None,
    });
    tb.faults().inject(Fault::Status {
        target: Target::FalconFeed,
        status: 401,
        retry_after_secs: None,
        count: Some(1),
        duration_secs: None,
    });
    let sink = Arc::new(MemSink::default());
    let run = start(config(&tb), &sink);
    wait_until("events after the faults", T, || sink.count(0) == 30).await;
    let ours = run.stats.snapshot();
    run.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 30));
    assert_eq!(ours.discover_failures, 2);
    assert_eq!(
        ours.partitions[&0]
            .reconnects
            .get(&ReconnectCause::FeedUnauthorized),
        Some(&1)
    );
    assert!(ours.discovers >= 2, "re-discovered after the 401: {ours:?}");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_list_follows_only_the_listed_partitions() {
    let tb = bench(falcon(3, 40)).await;
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.partitions = falcon_stream::PartitionSelection::List(vec![0, 2]);
    let run = start(c, &sink);
    wait_until("listed partitions", T, || {
        sink.count(0) == 40 && sink.count(2) == 40
    })
    .await;
    run.stop().await;
    assert_eq!(sink.count(1), 0);
    let opened: Vec<u32> = tb
        .falcon()
        .stats()
        .feed_opens_with_offset
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert!(!opened.contains(&1), "{opened:?}");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_keep_retrying_and_the_secret_never_shows() {
    let tb = bench(falcon(1, 5)).await;
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.client_secret = "wrong-secret-value".into();
    let source = FalconSource::new(c, Arc::clone(&sink)).unwrap();
    assert!(!format!("{source:?}").contains("wrong-secret-value"));
    let stats = source.stats();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let handle = tokio::spawn(async move { source.run(c2).await });
    wait_until("several refused attempts", T, || {
        stats.snapshot().token_failures >= 3
    })
    .await;
    assert!(
        !handle.is_finished(),
        "a refused credential is retried, not fatal"
    );
    assert_eq!(stats.snapshot().discovers, 0);
    assert_eq!(sink.count(0), 0);
    cancel.cancel();
    handle.await.unwrap().unwrap();
    tb.shutdown().await;
}

/// A minimal HTTP CONNECT proxy that counts tunnels.
async fn connect_proxy() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&tunnels);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let mut parts = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, tunnels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_proxy_tunnels_every_request() {
    let tb = bench(falcon(1, 50)).await;
    let (proxy, tunnels) = connect_proxy().await;
    let sink = Arc::new(MemSink::default());
    let mut c = config(&tb);
    c.proxy_url = Some(url::Url::parse(&format!("http://{proxy}")).unwrap());
    let run = start(c, &sink);
    wait_until("events through the proxy", T, || sink.count(0) == 50).await;
    run.stop().await;
    assert_exact(&tb, &sink, 0, &range(1, 50));
    assert!(
        tunnels.load(Ordering::SeqCst) >= 1,
        "traffic went through the CONNECT proxy"
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn invalid_configuration_is_refused_up_front() {
    let sink = Arc::new(MemSink::default());
    let base = url::Url::parse("https://127.0.0.1:9/").unwrap();
    let mut c = SourceConfig::new(base.clone(), "id", "secret", "app1");
    c.extra_ca_pems =
        vec![b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec()];
    assert!(matches!(
        FalconSource::new(c, Arc::clone(&sink)),
        Err(SourceError::Config(_))
    ));
    let c = SourceConfig::new(base, "id", "secret", "not-alnum");
    assert!(matches!(
        FalconSource::new(c, sink),
        Err(SourceError::Config(_))
    ));
}
