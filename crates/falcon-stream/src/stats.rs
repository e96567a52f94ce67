//! Telemetry counters, shared with the bridge which exports them as Prometheus metrics.
//! Atomics only on the hot path; the partition map is locked only to find or add a partition.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::event::DeadLetterReason;

/// Why a partition's feed was reconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReconnectCause {
    /// The server ended the body.
    Eof,
    /// Reading the body failed (reset, TLS error, chunked-encoding error).
    ReadError,
    /// No byte at all for `read_idle_timeout`.
    IdleTimeout,
    /// Refresh answered 404: the session expired.
    SessionExpired,
    /// The feed answered 401 (stale or expired session token).
    FeedUnauthorized,
    /// The feed answered another non-200 status or could not be reached.
    FeedOpenFailed,
    /// The sink failed (`durable_offset`, `write` or `dead_letter`).
    SinkError,
    /// Another partition of the same session group ended, so every partition re-discovers
    /// together (the appId is held until all feeds of the group are closed).
    GroupRestart,
}

impl ReconnectCause {
    /// Every cause (index = `as usize`).
    pub const ALL: [ReconnectCause; 8] = [
        ReconnectCause::Eof,
        ReconnectCause::ReadError,
        ReconnectCause::IdleTimeout,
        ReconnectCause::SessionExpired,
        ReconnectCause::FeedUnauthorized,
        ReconnectCause::FeedOpenFailed,
        ReconnectCause::SinkError,
        ReconnectCause::GroupRestart,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReconnectCause::Eof => "eof",
            ReconnectCause::ReadError => "read_error",
            ReconnectCause::IdleTimeout => "idle_timeout",
            ReconnectCause::SessionExpired => "session_expired",
            ReconnectCause::FeedUnauthorized => "feed_unauthorized",
            ReconnectCause::FeedOpenFailed => "feed_open_failed",
            ReconnectCause::SinkError => "sink_error",
            ReconnectCause::GroupRestart => "group_restart",
        }
    }
}

impl fmt::Display for ReconnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one partition.
#[derive(Debug, Default)]
pub struct PartitionStats {
    connected: AtomicBool,
    has_seen: AtomicBool,
    latest_seen: AtomicU64,
    has_durable: AtomicBool,
    latest_durable: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    keepalives: AtomicU64,
    reconnects: [AtomicU64; ReconnectCause::ALL.len()],
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    dead_letters: [AtomicU64; DeadLetterReason::ALL.len()],
    replays_dropped: AtomicU64,
    truncated_lines: AtomicU64,
}

/// A point-in-time copy of [`PartitionStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// Whether the feed is open right now.
    pub connected: bool,
    /// Highest offset received (monotonic).
    pub latest_offset_seen: Option<u64>,
    /// Highest offset the sink reported durable.
    pub latest_durable_offset: Option<u64>,
    /// Events handed to the sink.
    pub events: u64,
    /// Bytes of event lines handed to the sink.
    pub bytes: u64,
    /// Blank keepalive lines received.
    pub keepalives: u64,
    /// Reconnects by cause.
    pub reconnects: BTreeMap<ReconnectCause, u64>,
    /// Successful session refreshes.
    pub refreshes: u64,
    /// Failed session refresh attempts.
    pub refresh_failures: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<DeadLetterReason, u64>,
    /// Events dropped because their offset was not above the last one seen.
    pub replays_dropped: u64,
    /// Incomplete lines discarded because the connection ended mid-line.
    pub truncated_lines: u64,
}

impl PartitionSnapshot {
    /// Total reconnects, all causes.
    pub fn total_reconnects(&self) -> u64 {
        self.reconnects.values().sum()
    }

    /// Total dead letters, all reasons.
    pub fn total_dead_letters(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

impl PartitionStats {
    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
    pub(crate) fn seen(&self, offset: u64) {
        self.latest_seen.fetch_max(offset, Ordering::Relaxed);
        self.has_seen.store(true, Ordering::Release);
    }
    pub(crate) fn durable(&self, offset: u64) {
        self.latest_durable.fetch_max(offset, Ordering::Relaxed);
        self.has_durable.store(true, Ordering::Release);
    }
    pub(crate) fn delivered(&self, events: u64, bytes: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn add_keepalives(&self, n: u64) {
        self.keepalives.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn reconnect(&self, cause: ReconnectCause) {
        self.reconnects[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn refreshed(&self, ok: bool) {
        if ok {
            &self.refreshes
        } else {
            &self.refresh_failures
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn replay_dropped(&self) {
        self.replays_dropped.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn truncated_line(&self) {
        self.truncated_lines.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> PartitionSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PartitionSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            latest_offset_seen: self
                .has_seen
                .load(Ordering::Acquire)
                .then(|| load(&self.latest_seen)),
            latest_durable_offset: self
                .has_durable
                .load(Ordering::Acquire)
                .then(|| load(&self.latest_durable)),
            events: load(&self.events),
            bytes: load(&self.bytes),
            keepalives: load(&self.keepalives),
            reconnects: ReconnectCause::ALL
                .iter()
                .map(|c| (*c, load(&self.reconnects[*c as usize])))
                .filter(|(_, n)| *n > 0)
                .collect(),
            refreshes: load(&self.refreshes),
            refresh_failures: load(&self.refresh_failures),
            dead_letters: DeadLetterReason::ALL
                .iter()
                .map(|r| (*r, load(&self.dead_letters[*r as usize])))
                .filter(|(_, n)| *n > 0)
                .collect(),
            replays_dropped: load(&self.replays_dropped),
            truncated_lines: load(&self.truncated_lines),
        }
    }
}

/// Telemetry of one [`crate::FalconSource`].
#[derive(Debug, Default)]
pub struct SourceStats {
    partitions: Mutex<BTreeMap<u32, Arc<PartitionStats>>>,
    token_requests: AtomicU64,
    token_failures: AtomicU64,
    discovers: AtomicU64,
    discovers_empty: AtomicU64,
    discover_failures: AtomicU64,
}

/// A point-in-time copy of [`SourceStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSnapshot {
    /// Per partition.
    pub partitions: BTreeMap<u32, PartitionSnapshot>,
    /// OAuth2 token requests made.
    pub token_requests: u64,
    /// OAuth2 token requests that failed.
    pub token_failures: u64,
    /// Successful discovers that returned at least one stream.
    pub discovers: u64,
    /// Discovers that returned no stream (appId held by another consumer, or no entitlement).
    pub discovers_empty: u64,
    /// Discovers that failed.
    pub discover_failures: u64,
}

impl SourceStats {
    /// The counters of `partition`, created on first use.
    pub fn partition(&self, partition: u32) -> Arc<PartitionStats> {
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(partition).or_default())
    }

    pub(crate) fn token_request(&self, ok: bool) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.token_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn discover(&self, outcome: DiscoverOutcome) {
        let counter = match outcome {
            DiscoverOutcome::Streams => &self.discovers,
            DiscoverOutcome::Empty => &self.discovers_empty,
            DiscoverOutcome::Failed => &self.discover_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> SourceSnapshot {
        let parts: Vec<(u32, Arc<PartitionStats>)> = {
            let map = self
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(p, s)| (*p, Arc::clone(s))).collect()
        };
        SourceSnapshot {
            partitions: parts.into_iter().map(|(p, s)| (p, s.snapshot())).collect(),
            token_requests: self.token_requests.load(Ordering::Relaxed),
            token_failures: self.token_failures.load(Ordering::Relaxed),
            discovers: self.discovers.load(Ordering::Relaxed),
            discovers_empty: self.discovers_empty.load(Ordering::Relaxed),
            discover_failures: self.discover_failures.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum DiscoverOutcome {
    Streams,
    Empty,
    Failed,
}
