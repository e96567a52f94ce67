//! Counters and health, shared by all deliveries of one client.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::SystemTime,
};

use crate::policy::RetryReason;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests_2xx: AtomicU64,
    requests_3xx: AtomicU64,
    requests_4xx: AtomicU64,
    requests_5xx: AtomicU64,
    requests_failed: AtomicU64,
    retries: [AtomicU64; 8],
    bytes_wire: AtomicU64,
    bytes_uncompressed: AtomicU64,
    records_delivered: AtomicU64,
    records_dead_lettered: AtomicU64,
    splits: AtomicU64,
    bisects: AtomicU64,
    token_resets: AtomicU64,
}

fn reason_index(reason: RetryReason) -> usize {
    match reason {
        RetryReason::Throttled => 0,
        RetryReason::Timeout => 1,
        RetryReason::ServerError => 2,
        RetryReason::Transport => 3,
        RetryReason::Credential => 4,
        RetryReason::Unauthorized => 5,
        RetryReason::Misconfigured => 6,
        RetryReason::Unexpected => 7,
    }
}

const REASONS: [RetryReason; 8] = [
    RetryReason::Throttled,
    RetryReason::Timeout,
    RetryReason::ServerError,
    RetryReason::Transport,
    RetryReason::Credential,
    RetryReason::Unauthorized,
    RetryReason::Misconfigured,
    RetryReason::Unexpected,
];

impl Stats {
    pub(crate) fn request(&self, status: Option<u16>, wire: usize, uncompressed: usize) {
        let counter = match status {
            Some(200..=299) => &self.requests_2xx,
            Some(300..=399) => &self.requests_3xx,
            Some(400..=499) => &self.requests_4xx,
            Some(_) => &self.requests_5xx,
            None => &self.requests_failed,
        };
        counter.fetch_add(1, Relaxed);
        self.bytes_wire.fetch_add(wire as u64, Relaxed);
        self.bytes_uncompressed
            .fetch_add(uncompressed as u64, Relaxed);
    }
    pub(crate) fn retry(&self, reason: RetryReason) {
        self.retries[reason_index(reason)].fetch_add(1, Relaxed);
    }
    pub(crate) fn delivered(&self, n: usize) {
        self.records_delivered.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn dead_lettered(&self, n: usize) {
        self.records_dead_lettered.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn split(&self) {
        self.splits.fetch_add(1, Relaxed);
    }
    pub(crate) fn bisect(&self) {
        self.bisects.fetch_add(1, Relaxed);
    }
    pub(crate) fn token_reset(&self) {
        self.token_resets.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests_2xx: self.requests_2xx.load(Relaxed),
            requests_3xx: self.requests_3xx.load(Relaxed),
            requests_4xx: self.requests_4xx.load(Relaxed),
            requests_5xx: self.requests_5xx.load(Relaxed),
            requests_failed: self.requests_failed.load(Relaxed),
            retries: REASONS
                .iter()
                .map(|r| (*r, self.retries[reason_index(*r)].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            bytes_sent_wire: self.bytes_wire.load(Relaxed),
            bytes_sent_uncompressed: self.bytes_uncompressed.load(Relaxed),
            records_delivered: self.records_delivered.load(Relaxed),
            records_dead_lettered: self.records_dead_lettered.load(Relaxed),
            splits: self.splits.load(Relaxed),
            bisects: self.bisects.load(Relaxed),
            token_resets: self.token_resets.load(Relaxed),
        }
    }
}

/// Point-in-time copy of the client's counters (monotonic since construction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Responses with a 2xx status (only 204 counts as delivery).
    pub requests_2xx: u64,
    /// Responses with a 3xx status.
    pub requests_3xx: u64,
    /// Responses with a 4xx status.
    pub requests_4xx: u64,
    /// Responses with a 5xx status.
    pub requests_5xx: u64,
    /// Attempts without a response (connect/TLS/read errors, timeouts, token failures).
    pub requests_failed: u64,
    /// Retries by reason (reasons with zero retries are omitted).
    pub retries: BTreeMap<RetryReason, u64>,
    /// Gzip body bytes of every attempt.
    pub bytes_sent_wire: u64,
    /// JSON bytes of every attempt before gzip.
    pub bytes_sent_uncompressed: u64,
    /// Records acknowledged with 204.
    pub records_delivered: u64,
    /// Records handed back as dead letters.
    pub records_dead_lettered: u64,
    /// 413-driven splits (and compressed-mode pre-send splits).
    pub splits: u64,
    /// 400-driven bisections.
    pub bisects: u64,
    /// Credential rebuilds after a 401.
    pub token_resets: u64,
}

/// Readiness view of the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// False while any stream is misconfigured: its latest answer was 403/404, or its
    /// current body failed to authenticate (401 / token errors) 3 times in a row.
    pub healthy: bool,
    /// Latest outcome per stream.
    pub streams: BTreeMap<String, StreamHealth>,
    /// Latest error of any stream, for the operator.
    pub last_error: Option<String>,
}

/// Latest outcome of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHealth {
    /// HTTP status of the latest attempt, `None` when it got no response.
    pub last_status: Option<u16>,
    /// When the latest attempt finished.
    pub last_attempt: SystemTime,
    /// When the stream last got a 204.
    pub last_success: Option<SystemTime>,
    /// Whether the latest answer was 403/404 or authentication keeps failing (cleared by a 204).
    pub misconfigured: bool,
    /// Latest error message for this stream.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct HealthState {
    inner: Mutex<Health>,
}

impl HealthState {
    pub(crate) fn record(
        &self,
        stream: &str,
        status: Option<u16>,
        error: Option<String>,
        misconfigured: Option<bool>,
    ) {
        let now = SystemTime::now();
        let mut health = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !health.streams.contains_key(stream) {
            health.streams.insert(
                stream.to_owned(),
                StreamHealth {
                    last_status: None,
                    last_attempt: now,
                    last_success: None,
                    misconfigured: false,
                    last_error: None,
                },
            );
        }
        if let Some(entry) = health.streams.get_mut(stream) {
            entry.last_status = status;
            entry.last_attempt = now;
            if status == Some(204) {
                entry.last_success = Some(now);
                entry.misconfigured = false;
            }
            if let Some(m) = misconfigured {
                entry.misconfigured = m;
            }
            if error.is_some() {
                entry.last_error.clone_from(&error);
            }
        }
        if error.is_some() {
            health.last_error = error;
        }
    }

    pub(crate) fn mark_misconfigured(&self, stream: &str) {
        let mut health = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = health.streams.get_mut(stream) {
            entry.misconfigured = true;
        }
    }

    pub(crate) fn snapshot(&self) -> Health {
        let mut health = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        health.healthy = !health.streams.values().any(|s| s.misconfigured);
        health
    }
}
