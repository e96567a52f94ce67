//! Error types. Only configuration problems ever surface from [`crate::FalconSource::run`];
//! everything on the wire is transient and retried.

use std::time::Duration;

/// A configuration the source cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `appId` is not 1–32 characters of `[A-Za-z0-9]`.
    #[error("invalid appId {0:?}: must be 1-32 characters of [A-Za-z0-9]")]
    InvalidAppId(String),
    /// One or more fields are invalid; every problem is listed.
    #[error("invalid falcon source configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// An entry of `extra_ca_pems` is not a PEM certificate bundle.
    #[error("extra CA #{index} is not a valid PEM certificate bundle")]
    InvalidCaPem {
        /// Position in `extra_ca_pems`.
        index: usize,
        /// Why it was refused.
        #[source]
        source: reqwest::Error,
    },
    /// `proxy_url` was refused by the HTTP client.
    #[error("invalid proxy_url")]
    InvalidProxy(#[source] reqwest::Error),
}

/// Returned by [`crate::FalconSource::new`] and [`crate::FalconSource::run`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration is unusable.
    #[error("falcon source configuration")]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("build falcon http client")]
    HttpClient(#[source] reqwest::Error),
}

/// Failure of one API exchange (token, discover, refresh, feed open). Always transient from
/// the source's point of view; the variant decides how long to wait and what to drop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("request failed")]
    Transport(#[source] reqwest::Error),
    #[error("request timed out")]
    Timeout,
    #[error("rate limited")]
    RateLimited { wait: Option<Duration> },
    #[error("unauthorized (401)")]
    Unauthorized,
    #[error(
        "client credentials refused ({0}): check client_id, client_secret, member_cid and the API client's IP allow-list"
    )]
    CredentialsRefused(u16),
    #[error("not found (404)")]
    NotFound,
    #[error("unexpected status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
}

impl ApiError {
    /// The server said how long to wait.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { wait } => *wait,
            _ => None,
        }
    }
}
