//! The Logs Ingestion response policy: `classify_at` and `retry_after` on arbitrary statuses,
//! header sets and clocks. Checks the table of `policy.rs` (204 and only 204 is delivery; 429/503
//! wait exactly what `retry_after` says; every wait is clamped to `MAX_RETRY_AFTER`) and that no
//! header value (garbage, huge numbers, NaN, dates before the epoch) panics.
//!
//! The error-body parser (`client.rs::parse_error`) is private, so it is not reached here.
#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use azure_core::http::headers::{HeaderName, Headers};
use libfuzzer_sys::fuzz_target;
use sentinel_ingest::{Action, MAX_RETRY_AFTER, RetryReason, classify_at, retry_after};

/// Header names the policy reads, and a few it must ignore.
const NAMES: [&str; 6] = [
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "x-ms-error-code",
    "content-type",
    "date",
];

#[derive(Debug, Arbitrary)]
struct Input {
    status: u16,
    now_secs: u64,
    now_nanos: u32,
    headers: Vec<(u8, String)>,
}

fuzz_target!(|input: Input| {
    let mut headers = Headers::new();
    for (name, value) in input.headers.iter().take(8) {
        let name = NAMES[usize::from(*name) % NAMES.len()];
        headers.insert(HeaderName::from_static(name), value.clone());
    }
    // Clocks from the epoch to far in the future (SystemTime cannot hold every u64 seconds).
    let now = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(
            input.now_secs % (1 << 40),
            input.now_nanos % 1_000_000_000,
        ))
        .unwrap_or(SystemTime::UNIX_EPOCH);

    let wait = retry_after(&headers, now);
    if let Some(w) = wait {
        assert!(w <= MAX_RETRY_AFTER, "unclamped wait {w:?}");
    }
    let action = classify_at(input.status, &headers, now);
    match input.status {
        204 => assert_eq!(action, Action::Delivered),
        429 | 503 => assert_eq!(
            action,
            wait.map_or(Action::Backoff(RetryReason::Throttled), Action::RetryAfter)
        ),
        _ => {
            assert_ne!(action, Action::Delivered, "only 204 proves delivery");
            assert!(!matches!(action, Action::RetryAfter(_)));
        }
    }
    if (500..=599).contains(&input.status) && input.status != 503 {
        assert!(
            matches!(action, Action::Backoff(_)),
            "{}: {action:?}",
            input.status
        );
    }
});
