//! Fault injection shared by all emulators.
//!
//! Faults are consumed by the request they hit: a `count` of 3 affects the next three
//! matching requests. Without `count` and `duration_secs` a fault stays until
//! [`Faults::clear`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// `POST /dataCollectionRules/..`
    Ingestion,
    /// `POST /oauth2/token`
    FalconToken,
    /// `GET /sensors/entities/datafeed/v2`
    FalconDiscover,
    /// `GET /sensors/entities/datafeed/v1/{partition}`
    FalconFeed,
    /// `POST /sensors/entities/datafeed-actions/v1/{partition}`
    FalconRefresh,
    /// `POST /{tenant}/oauth2/v2.0/token`
    Entra,
}

/// The bad line that replaces an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MalformedKind {
    /// A truncated JSON object.
    InvalidJson,
    /// A valid event padded to `bytes` bytes.
    Oversize {
        /// Size of the line.
        bytes: usize,
    },
    /// A valid event whose metadata has no `offset`.
    MissingOffset,
    /// A line containing bytes that are not UTF-8.
    InvalidUtf8,
    /// Valid JSON that is not an object.
    NotAnObject,
}

/// A fault to inject; the same JSON is accepted at `POST /_testbench/faults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Answer with `status` instead of serving the request. 429 from Falcon targets carries
    /// `X-RateLimit-RetryAfter` (epoch seconds), 429/503 from Ingestion `Retry-After`.
    Status {
        /// Endpoint.
        target: Target,
        /// HTTP status to send.
        status: u16,
        /// Seconds to ask the client to wait (default 1 on 429).
        #[serde(default)]
        retry_after_secs: Option<u64>,
        /// Number of requests affected.
        #[serde(default)]
        count: Option<u64>,
        /// Seconds after injection during which the fault is active.
        #[serde(default)]
        duration_secs: Option<u64>,
    },
    /// Delay the response by `millis`.
    Latency {
        /// Endpoint.
        target: Target,
        /// Delay.
        millis: u64,
        /// Number of requests affected.
        #[serde(default)]
        count: Option<u64>,
        /// Seconds after injection during which the fault is active.
        #[serde(default)]
        duration_secs: Option<u64>,
    },
    /// Close the connection without answering.
    Reset {
        /// Endpoint.
        target: Target,
        /// Number of requests affected.
        #[serde(default)]
        count: Option<u64>,
    },
    /// Close every feed after it wrote `every_events` events, optionally in the middle of a line.
    CutFeed {
        /// Events per connection before it is cut.
        every_events: u64,
        /// Write half of the next line, then abort the connection.
        #[serde(default)]
        mid_line: bool,
    },
    /// Replace the line at `(partition, offset)` by a bad one.
    Malformed {
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// What is wrong with it.
        kind: MalformedKind,
    },
    /// Answer 400 to any ingestion request containing a record with one of these EventIds.
    RejectEventIds {
        /// EventIds to refuse.
        event_ids: Vec<String>,
    },
}

/// What a request must suffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    Reset,
}

#[derive(Debug)]
struct Active {
    target: Target,
    effect: Effect,
    remaining: Option<u64>,
    until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    Latency(u64),
    Reset,
}

#[derive(Debug, Default)]
struct State {
    active: Vec<Active>,
    cut_feed: Option<(u64, bool)>,
    malformed: BTreeMap<(u32, u64), MalformedKind>,
    reject_event_ids: BTreeSet<String>,
    injected: u64,
}

/// The fault registry.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the data is still consistent
        // because every critical section is a few plain assignments.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Activate a fault.
    pub fn inject(&self, fault: Fault) {
        let mut s = self.lock();
        s.injected += 1;
        let now = Instant::now();
        let until = |d: Option<u64>| d.map(|d| now + Duration::from_secs(d));
        match fault {
            Fault::Status {
                target,
                status,
                retry_after_secs,
                count,
                duration_secs,
            } => s.active.push(Active {
                target,
                effect: Effect::Status {
                    status,
                    retry_after_secs,
                },
                remaining: count,
                until: until(duration_secs),
            }),
            Fault::Latency {
                target,
                millis,
                count,
                duration_secs,
            } => s.active.push(Active {
                target,
                effect: Effect::Latency(millis),
                remaining: count,
                until: until(duration_secs),
            }),
            Fault::Reset { target, count } => {
                s.active.push(Active {
                    target,
                    effect: Effect::Reset,
                    remaining: count,
                    until: None,
                });
            }
            Fault::CutFeed {
                every_events,
                mid_line,
            } => s.cut_feed = Some((every_events.max(1), mid_line)),
            Fault::Malformed {
                partition,
                offset,
                kind,
            } => {
                s.malformed.insert((partition, offset), kind);
            }
            Fault::RejectEventIds { event_ids } => s.reject_event_ids.extend(event_ids),
        }
    }

    /// Remove every fault.
    pub fn clear(&self) {
        let mut s = self.lock();
        let injected = s.injected;
        *s = State {
            injected,
            ..State::default()
        };
    }

    /// Number of faults injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Consume the faults matching `target`: the total latency to apply, then at most one
    /// terminal action (status or reset).
    pub(crate) fn take(&self, target: Target) -> (Duration, Option<Action>) {
        let mut s = self.lock();
        let now = Instant::now();
        s.active
            .retain(|a| a.remaining != Some(0) && a.until.is_none_or(|u| u > now));
        let mut latency = 0u64;
        let mut action = None;
        for a in s.active.iter_mut().filter(|a| a.target == target) {
            match a.effect {
                Effect::Latency(ms) => latency = latency.saturating_add(ms),
                Effect::Status {
                    status,
                    retry_after_secs,
                } if action.is_none() => {
                    action = Some(Action::Status {
                        status,
                        retry_after_secs,
                    });
                }
                Effect::Reset if action.is_none() => action = Some(Action::Reset),
                _ => continue,
            }
            if let Some(r) = a.remaining.as_mut() {
                *r = r.saturating_sub(1);
            }
        }
        (Duration::from_millis(latency), action)
    }

    pub(crate) fn cut_feed(&self) -> Option<(u64, bool)> {
        self.lock().cut_feed
    }

    pub(crate) fn malformed(&self, partition: u32, offset: u64) -> Option<MalformedKind> {
        let s = self.lock();
        if s.malformed.is_empty() {
            return None;
        }
        s.malformed.get(&(partition, offset)).cloned()
    }

    pub(crate) fn malformed_offsets(&self) -> BTreeSet<(u32, u64)> {
        self.lock().malformed.keys().copied().collect()
    }

    /// The first of `ids` that a `RejectEventIds` fault refuses.
    pub(crate) fn rejected<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let s = self.lock();
        if s.reject_event_ids.is_empty() {
            return None;
        }
        ids.into_iter()
            .find(|id| s.reject_event_ids.contains(*id))
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed_per_matching_request_only() {
        let faults = Faults::default();
        faults.inject(Fault::Status {
            target: Target::Ingestion,
            status: 503,
            retry_after_secs: None,
            count: Some(2),
            duration_secs: None,
        });
        faults.inject(Fault::Latency {
            target: Target::Ingestion,
            millis: 10,
            count: Some(1),
            duration_secs: None,
        });
        assert_eq!(faults.take(Target::Entra), (Duration::ZERO, None));
        let status = Some(Action::Status {
            status: 503,
            retry_after_secs: None,
        });
        assert_eq!(
            faults.take(Target::Ingestion),
            (Duration::from_millis(10), status.clone())
        );
        assert_eq!(faults.take(Target::Ingestion), (Duration::ZERO, status));
        assert_eq!(faults.take(Target::Ingestion), (Duration::ZERO, None));
    }

    #[test]
    fn first_terminal_fault_wins_and_later_ones_wait_their_turn() {
        let faults = Faults::default();
        faults.inject(Fault::Reset {
            target: Target::FalconFeed,
            count: Some(1),
        });
        faults.inject(Fault::Status {
            target: Target::FalconFeed,
            status: 500,
            retry_after_secs: None,
            count: Some(1),
            duration_secs: None,
        });
        assert_eq!(faults.take(Target::FalconFeed).1, Some(Action::Reset));
        assert_eq!(
            faults.take(Target::FalconFeed).1,
            Some(Action::Status {
                status: 500,
                retry_after_secs: None
            })
        );
        assert_eq!(faults.take(Target::FalconFeed).1, None);
    }

    #[test]
    fn clear_removes_everything() {
        let faults = Faults::default();
        faults.inject(Fault::Reset {
            target: Target::Entra,
            count: None,
        });
        faults.inject(Fault::CutFeed {
            every_events: 0,
            mid_line: false,
        });
        faults.inject(Fault::Malformed {
            partition: 0,
            offset: 1,
            kind: MalformedKind::InvalidJson,
        });
        faults.inject(Fault::RejectEventIds {
            event_ids: vec!["a".into()],
        });
        assert_eq!(
            faults.cut_feed(),
            Some((1, false)),
            "every_events is at least 1"
        );
        assert_eq!(faults.rejected(["b", "a"]), Some("a".to_owned()));
        faults.clear();
        assert_eq!(faults.take(Target::Entra).1, None);
        assert_eq!(faults.cut_feed(), None);
        assert_eq!(faults.malformed(0, 1), None);
        assert_eq!(faults.rejected(["a"]), None);
        assert_eq!(faults.injected(), 4);
    }
}
