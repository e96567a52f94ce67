//! The outcome policy: every response or transport failure maps to exactly one [`Action`].
//!
//! Pure and synchronous so each row of the table is a unit test. The delivery loop in
//! `client.rs` carries the actions out (waits, token resets, splits, dead letters).
//!
//! | status | action |
//! |---|---|
//! | 204 | [`Action::Delivered`] |
//! | 429, 503 | [`Action::RetryAfter`] when the server says how long, else [`Action::Backoff`] |
//! | 408, 500, 502, 504, transport errors | [`Action::Backoff`] |
//! | 401 | [`Action::Reauthenticate`] |
//! | 403, 404, other unexpected 4xx | [`Action::Misconfigured`] (slow retry, unhealthy) |
//! | 413 | [`Action::Split`] |
//! | 400, 422 | [`Action::Reject`] (bisect to isolate) |
//! | anything else (other 2xx, 3xx, 5xx) | [`Action::Backoff`]: only 204 proves delivery |

use std::time::{Duration, SystemTime};

use azure_core::http::headers::{HeaderName, Headers};

/// Longest server-requested wait we honour as given; larger values are clamped so a bogus
/// header cannot park the writer for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// 204: every record of the request is accepted.
    Delivered,
    /// The server named a wait (`Retry-After` and friends); retry the same body after it.
    RetryAfter(Duration),
    /// Transient failure: jittered exponential backoff, then retry the same body.
    Backoff(RetryReason),
    /// 401: drop the cached token, obtain a fresh one, retry.
    Reauthenticate,
    /// 403/404 and other configuration errors: retry slowly forever, report unhealthy.
    Misconfigured,
    /// 413: the body is too large; split it (a single record is dead-lettered).
    Split,
    /// 400: Azure refuses the content; bisect to isolate the refused record(s).
    Reject,
}

/// Why an attempt is retried; a label of the retry counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryReason {
    /// 429 or 503.
    Throttled,
    /// 408 or 504.
    Timeout,
    /// 500, 502 and other 5xx.
    ServerError,
    /// Connect, TLS, read errors and client-side timeouts.
    Transport,
    /// The credential could not obtain a token.
    Credential,
    /// 401.
    Unauthorized,
    /// 403/404.
    Misconfigured,
    /// A status that proves nothing (non-204 2xx, 3xx).
    Unexpected,
}

impl RetryReason {
    /// Stable lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Timeout => "timeout",
            Self::ServerError => "server_error",
            Self::Transport => "transport",
            Self::Credential => "credential",
            Self::Unauthorized => "unauthorized",
            Self::Misconfigured => "misconfigured",
            Self::Unexpected => "unexpected",
        }
    }
}

/// Classifies one HTTP response.
pub fn classify(status: u16, headers: &Headers) -> Action {
    classify_at(status, headers, SystemTime::now())
}

/// [`classify`] with an explicit clock for HTTP-date `Retry-After` values.
pub fn classify_at(status: u16, headers: &Headers, now: SystemTime) -> Action {
    match status {
        204 => Action::Delivered,
        429 | 503 => retry_after(headers, now)
            .map_or(Action::Backoff(RetryReason::Throttled), Action::RetryAfter),
        408 | 504 => Action::Backoff(RetryReason::Timeout),
        401 => Action::Reauthenticate,
        413 => Action::Split,
        400 | 422 => Action::Reject,
        402..=499 => Action::Misconfigured,
        500..=599 => Action::Backoff(RetryReason::ServerError),
        _ => Action::Backoff(RetryReason::Unexpected),
    }
}

/// Classifies a failure that produced no HTTP response.
pub fn classify_error(error: &azure_core::Error) -> Action {
    match error.kind() {
        azure_core::error::ErrorKind::Credential => Action::Backoff(RetryReason::Credential),
        _ => Action::Backoff(RetryReason::Transport),
    }
}

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

/// The wait the server asks for, from `x-ms-retry-after-ms`, `retry-after-ms` or `Retry-After`
/// (delta-seconds or HTTP date), in azure_core's order; clamped to [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &Headers, now: SystemTime) -> Option<Duration> {
    let from_ms = |name: &HeaderName| {
        headers
            .get_optional_str(name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(MAX_RETRY_AFTER.as_secs_f64())))
    };
    let wait = from_ms(&X_MS_RETRY_AFTER_MS)
        .or_else(|| from_ms(&RETRY_AFTER_MS))
        .or_else(|| {
            let value = headers.get_optional_str(&RETRY_AFTER)?.trim();
            if let Ok(secs) = value.parse::<u64>() {
                return Some(Duration::from_secs(secs));
            }
            let at = httpdate::parse_http_date(value).ok()?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        })?;
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), (*v).to_owned());
        }
        h
    }

    fn none() -> Headers {
        Headers::new()
    }

    #[test]
    fn row_204_delivered() {
        assert_eq!(classify(204, &none()), Action::Delivered);
    }

    #[test]
    fn row_200_is_not_proof_of_delivery() {
        assert_eq!(
            classify(200, &none()),
            Action::Backoff(RetryReason::Unexpected)
        );
        assert_eq!(
            classify(302, &none()),
            Action::Backoff(RetryReason::Unexpected)
        );
    }

    #[test]
    fn row_429_503_retry_after_seconds() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            classify(429, &h),
            Action::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            classify(503, &h),
            Action::RetryAfter(Duration::from_secs(7))
        );
    }

    #[test]
    fn row_429_retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(12));
        let h = headers(&[("retry-after", &date)]);
        assert_eq!(
            classify_at(429, &h, now),
            Action::RetryAfter(Duration::from_secs(12))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(
            classify_at(429, &headers(&[("retry-after", &past)]), now),
            Action::RetryAfter(Duration::ZERO)
        );
    }

    #[test]
    fn row_429_retry_after_ms_headers_take_precedence() {
        let h = headers(&[("retry-after", "9"), ("retry-after-ms", "1500")]);
        assert_eq!(
            classify(429, &h),
            Action::RetryAfter(Duration::from_millis(1500))
        );
        let h = headers(&[("retry-after-ms", "1500"), ("x-ms-retry-after-ms", "250")]);
        assert_eq!(
            classify(503, &h),
            Action::RetryAfter(Duration::from_millis(250))
        );
    }

    #[test]
    fn row_429_503_without_header_backs_off() {
        assert_eq!(
            classify(429, &none()),
            Action::Backoff(RetryReason::Throttled)
        );
        let garbage = headers(&[("retry-after", "soon")]);
        assert_eq!(
            classify(503, &garbage),
            Action::Backoff(RetryReason::Throttled)
        );
    }

    #[test]
    fn retry_after_is_clamped() {
        let h = headers(&[("retry-after", "999999")]);
        assert_eq!(classify(429, &h), Action::RetryAfter(MAX_RETRY_AFTER));
    }

    #[test]
    fn row_408_500_502_504_backoff() {
        assert_eq!(
            classify(408, &none()),
            Action::Backoff(RetryReason::Timeout)
        );
        assert_eq!(
            classify(504, &none()),
            Action::Backoff(RetryReason::Timeout)
        );
        assert_eq!(
            classify(500, &none()),
            Action::Backoff(RetryReason::ServerError)
        );
        assert_eq!(
            classify(502, &none()),
            Action::Backoff(RetryReason::ServerError)
        );
    }

    #[test]
    fn row_transport_errors_backoff() {
        let io = azure_core::Error::with_message(azure_core::error::ErrorKind::Io, "reset");
        assert_eq!(classify_error(&io), Action::Backoff(RetryReason::Transport));
        let conn =
            azure_core::Error::with_message(azure_core::error::ErrorKind::Connection, "refused");
        assert_eq!(
            classify_error(&conn),
            Action::Backoff(RetryReason::Transport)
        );
        let cred =
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "AADSTS");
        assert_eq!(
            classify_error(&cred),
            Action::Backoff(RetryReason::Credential)
        );
    }

    #[test]
    fn row_401_reauthenticates() {
        assert_eq!(classify(401, &none()), Action::Reauthenticate);
    }

    #[test]
    fn row_403_404_misconfigured() {
        assert_eq!(classify(403, &none()), Action::Misconfigured);
        assert_eq!(classify(404, &none()), Action::Misconfigured);
        assert_eq!(classify(407, &none()), Action::Misconfigured);
    }

    #[test]
    fn row_413_splits() {
        assert_eq!(classify(413, &none()), Action::Split);
    }

    #[test]
    fn row_400_rejects() {
        assert_eq!(classify(400, &none()), Action::Reject);
        assert_eq!(classify(422, &none()), Action::Reject);
    }
}
