//! Logging: JSON lines to stdout for Kubernetes (or text for a terminal), filtered by the
//! config's `log.level` unless `RUST_LOG` is set.

use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once: later calls are ignored.
pub fn init(level: &str, format: LogFormat) {
    // Only ASCII reaches the directive parser: tracing-subscriber 0.3 panics on a multi-byte
    // character in a filter (found by fuzzing `log.level`, which `validate` checks too).
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|v| v.is_ascii())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| {
            level
                .is_ascii()
                .then(|| EnvFilter::try_new(level).ok())
                .flatten()
        })
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // `try_init` fails only if a subscriber is already installed (tests, demo after run).
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
