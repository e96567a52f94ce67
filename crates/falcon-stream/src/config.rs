//! Plain-Rust configuration of the source. The bridge maps its YAML into [`SourceConfig`];
//! this module only validates what the protocol itself constrains (cloud hosts, `appId`).

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::ConfigError;

/// A CrowdStrike cloud with a known API host (reference §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cloud {
    /// `us-1`, `https://api.crowdstrike.com`.
    Us1,
    /// `us-2`, `https://api.us-2.crowdstrike.com`.
    Us2,
    /// `eu-1`, `https://api.eu-1.crowdstrike.com`.
    Eu1,
    /// `us-gov-1`, `https://api.laggar.gcw.crowdstrike.com`.
    UsGov1,
    /// `us-gov-2`, `https://api.us-gov-2.crowdstrike.mil`.
    UsGov2,
}

impl Cloud {
    /// Every known cloud, in a stable order.
    pub const ALL: [Cloud; 5] = [
        Cloud::Us1,
        Cloud::Us2,
        Cloud::Eu1,
        Cloud::UsGov1,
        Cloud::UsGov2,
    ];

    /// The region name as CrowdStrike spells it (also the `X-Cs-Region` header value).
    pub const fn name(self) -> &'static str {
        match self {
            Cloud::Us1 => "us-1",
            Cloud::Us2 => "us-2",
            Cloud::Eu1 => "eu-1",
            Cloud::UsGov1 => "us-gov-1",
            Cloud::UsGov2 => "us-gov-2",
        }
    }

    const fn base_str(self) -> &'static str {
        match self {
            Cloud::Us1 => "https://api.crowdstrike.com/",
            Cloud::Us2 => "https://api.us-2.crowdstrike.com/",
            Cloud::Eu1 => "https://api.eu-1.crowdstrike.com/",
            Cloud::UsGov1 => "https://api.laggar.gcw.crowdstrike.com/",
            Cloud::UsGov2 => "https://api.us-gov-2.crowdstrike.mil/",
        }
    }

    /// The API base URL (OAuth2, discover, refresh) of this cloud.
    pub fn base_url(self) -> Url {
        // The literals above are valid URLs; a unit test parses every one of them.
        Url::parse(self.base_str()).unwrap_or_else(|_| unreachable!("static cloud URL"))
    }

    /// Parses a region name (`us-1`, `US-1`, `us1` are all accepted).
    pub fn from_name(name: &str) -> Option<Cloud> {
        let norm: String = name
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Cloud::ALL
            .into_iter()
            .find(|c| c.name().replace('-', "") == norm)
    }

    /// The cloud whose API host `url` points at, if any.
    pub fn from_base_url(url: &Url) -> Option<Cloud> {
        let host = url.host_str()?;
        Cloud::ALL
            .into_iter()
            .find(|c| c.base_url().host_str() == Some(host))
    }
}

/// A validated Event Streams `appId`: 1–32 characters of `[A-Za-z0-9]` (reference §1.8).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppId(String);

impl AppId {
    /// Validates `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, ConfigError> {
        let value = value.into();
        if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ConfigError::InvalidAppId(value));
        }
        Ok(AppId(value))
    }

    /// The id as sent in `appId=`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which partitions this consumer follows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionSelection {
    /// Every partition discover returns (the safe default: anything else risks silently
    /// ignoring a partition, reference §4 item 14).
    #[default]
    All,
    /// Only these partition numbers.
    List(Vec<u32>),
}

impl PartitionSelection {
    /// Whether `partition` is followed.
    pub fn contains(&self, partition: u32) -> bool {
        match self {
            PartitionSelection::All => true,
            PartitionSelection::List(list) => list.contains(&partition),
        }
    }
}

/// Where a partition starts when the sink holds nothing for it yet. Once the sink has a
/// durable offset, the feed always resumes at `durable + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest retained event (no `offset` parameter).
    #[default]
    Earliest,
    /// Only new events (`whence=2`).
    Latest,
    /// This offset, inclusive (`offset=N`).
    Offset(u64),
}

/// Configuration of a [`crate::FalconSource`].
#[derive(Clone)]
pub struct SourceConfig {
    /// API base URL (OAuth2, discover, refresh): a [`Cloud::base_url`] or an explicit https URL.
    pub base_url: Url,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret. Never printed: `Debug` redacts it and it is never logged.
    pub client_secret: String,
    /// MSSP child CID (`member_cid` form field), if any.
    pub member_cid: Option<String>,
    /// The `appId`; must pass [`AppId::new`]. Unique per consumer: a second consumer with the
    /// same id waits as a standby.
    pub app_id: String,
    /// Partitions to follow.
    pub partitions: PartitionSelection,
    /// Start position for partitions the sink holds nothing for.
    pub start: StartPosition,
    /// Server-side `eventType` filter; empty means all types.
    pub event_types: Vec<String>,
    /// A feed that delivers no byte at all (keepalives included) for this long is reconnected.
    pub read_idle_timeout: Duration,
    /// Longest accepted line; longer lines are skipped without buffering and dead-lettered.
    pub max_event_bytes: usize,
    /// Most events handed to one `EventSink::write`.
    pub max_batch_events: usize,
    /// Extra PEM CA bundles trusted in addition to the platform roots.
    pub extra_ca_pems: Vec<Vec<u8>>,
    /// Explicit proxy for every request; when unset, `HTTPS_PROXY`/`NO_PROXY` apply.
    pub proxy_url: Option<Url>,
    /// Switch to the cloud named by the token response's `X-Cs-Region` header. Only applies
    /// when `base_url` is one of the known clouds.
    pub region_autodiscovery: bool,
    /// Timeout of each API request (token, discover, refresh) and of opening the feed.
    pub request_timeout: Duration,
    /// First reconnect/retry delay.
    pub backoff_initial: Duration,
    /// Largest reconnect/retry delay.
    pub backoff_max: Duration,
    /// Fraction of `refreshActiveSessionInterval` after which the session is refreshed.
    pub refresh_fraction: f64,
}

impl SourceConfig {
    /// A configuration with the documented defaults for everything but the credentials.
    pub fn new(
        base_url: Url,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        app_id: impl Into<String>,
    ) -> Self {
        SourceConfig {
            base_url,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            member_cid: None,
            app_id: app_id.into(),
            partitions: PartitionSelection::All,
            start: StartPosition::Earliest,
            event_types: Vec::new(),
            read_idle_timeout: Duration::from_secs(90),
            max_event_bytes: 16 * 1024 * 1024,
            max_batch_events: 2048,
            extra_ca_pems: Vec::new(),
            proxy_url: None,
            region_autodiscovery: false,
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_mins(1),
            refresh_fraction: 0.9,
        }
    }

    /// Checks every field, collecting all problems.
    pub fn validate(&self) -> Result<AppId, ConfigError> {
        let mut problems = Vec::new();
        if self.base_url.scheme() != "https" {
            problems.push(format!(
                "base_url must be https, got {}",
                self.base_url.scheme()
            ));
        }
        if self.client_id.is_empty() {
            problems.push("client_id is empty".to_owned());
        }
        if self.client_secret.is_empty() {
            problems.push("client_secret is empty".to_owned());
        }
        let app_id = AppId::new(self.app_id.clone());
        if let Err(e) = &app_id {
            problems.push(e.to_string());
        }
        if self.read_idle_timeout.is_zero() {
            problems.push("read_idle_timeout must be positive".to_owned());
        }
        if self.max_event_bytes < 1024 {
            problems.push("max_event_bytes must be at least 1024".to_owned());
        }
        if self.max_batch_events == 0 {
            problems.push("max_batch_events must be positive".to_owned());
        }
        if self.request_timeout.is_zero() {
            problems.push("request_timeout must be positive".to_owned());
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            problems.push("backoff_initial must be positive and not above backoff_max".to_owned());
        }
        if !(self.refresh_fraction > 0.0 && self.refresh_fraction < 1.0) {
            problems.push("refresh_fraction must be in (0, 1)".to_owned());
        }
        if self
            .event_types
            .iter()
            .any(|t| t.is_empty() || t.contains(','))
        {
            problems.push("event_types entries must be non-empty and contain no comma".to_owned());
        }
        match app_id {
            Ok(id) if problems.is_empty() => Ok(id),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("base_url", &self.base_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("member_cid", &self.member_cid)
            .field("app_id", &self.app_id)
            .field("partitions", &self.partitions)
            .field("start", &self.start)
            .field("event_types", &self.event_types)
            .field("read_idle_timeout", &self.read_idle_timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_batch_events", &self.max_batch_events)
            .field("extra_ca_pems", &self.extra_ca_pems.len())
            .field("proxy_url", &self.proxy_url.as_ref().map(redact_url))
            .field("region_autodiscovery", &self.region_autodiscovery)
            .field("request_timeout", &self.request_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("refresh_fraction", &self.refresh_fraction)
            .finish()
    }
}

/// A URL without userinfo, for logs (proxy URLs may carry credentials).
pub(crate) fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("***");
        let _ = u.set_password(None);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SourceConfig {
        SourceConfig::new(Cloud::Us1.base_url(), "id", "s3cr3t-value", "bridge01")
    }

    #[test]
    fn every_cloud_url_parses_and_round_trips() {
        for c in Cloud::ALL {
            let url = c.base_url();
            assert_eq!(url.scheme(), "https");
            assert_eq!(Cloud::from_base_url(&url), Some(c));
            assert_eq!(Cloud::from_name(c.name()), Some(c));
        }
        assert_eq!(Cloud::from_name("US-GOV-1"), Some(Cloud::UsGov1));
        assert_eq!(
            Cloud::UsGov2.base_url().as_str(),
            "https://api.us-gov-2.crowdstrike.mil/"
        );
        assert_eq!(Cloud::from_name("us-3"), None);
    }

    #[test]
    fn app_id_rules() {
        assert!(AppId::new("a").is_ok());
        assert!(AppId::new("A".repeat(32)).is_ok());
        assert!(AppId::new("A".repeat(33)).is_err());
        assert!(AppId::new("").is_err());
        assert!(AppId::new("fig-default-app-id").is_err());
        assert!(AppId::new("with space").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = cfg();
        c.proxy_url = Some(Url::parse("http://user:pw@proxy:3128").unwrap());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
        assert!(!dbg.contains("pw@"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn validation_collects_all_problems() {
        let mut c = cfg();
        c.base_url = Url::parse("http://x").unwrap();
        c.app_id = "bad id".into();
        c.refresh_fraction = 1.5;
        let Err(ConfigError::Invalid(problems)) = c.validate() else {
            panic!("expected invalid")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(cfg().validate().is_ok());
    }
}
