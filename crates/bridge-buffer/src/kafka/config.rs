//! [`KafkaBufferConfig`] and its mapping to librdkafka properties.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::ClientConfig;

use crate::BufferError;

/// Where the Kafka backend connects and how it behaves.
///
/// Build it with [`KafkaBufferConfig::new`] and adjust the public fields.
#[derive(Clone)]
pub struct KafkaBufferConfig {
    /// Bootstrap brokers, `host:port`. Event Hubs: `NAMESPACE.servicebus.windows.net:9093`.
    pub brokers: Vec<String>,
    /// The topic holding the events (Event Hubs: the event hub). Must exist.
    pub topic: String,
    /// The checkpoint topic (key = Falcon partition, value = newest durable Falcon offset).
    /// Must exist; create it with `cleanup.policy=compact` so it stays small.
    pub checkpoint_topic: String,
    /// The consumer group of the writer side (Event Hubs: a consumer group of the event hub).
    pub group_id: String,
    /// Static group membership (`group.instance.id`, KIP-345) of the writer's consumer: a
    /// restarted process with the same id takes its partitions back at once, where a dynamic
    /// member waits for the dead one's `session.timeout.ms`. Unique per running instance (a
    /// StatefulSet's pod name); two live consumers with one id fence each other.
    pub group_instance_id: Option<String>,
    /// Transport security and authentication.
    pub security: KafkaSecurity,
    /// Bound on the memory librdkafka may use for events: half for the consumer's prefetch queue
    /// (`queued.max.messages.kbytes`), half for the producer queue (`queue.buffering.max.kbytes`).
    /// Also what [`capacity_bytes`](crate::Buffer::capacity_bytes) reports when
    /// [`max_backlog_bytes`](Self::max_backlog_bytes) is unset.
    pub max_bytes: u64,
    /// Cap on the undelivered backlog the topic may hold: appends wait while
    /// [`depth`](crate::Buffer::depth)`.bytes` (undelivered records × the mean record size seen)
    /// is at or above it, so the source stops reading and Falcon keeps the events, instead of
    /// the topic's retention deleting records before they are delivered. `connect` reads the
    /// depth once before it returns (if that fails, appends wait for the first refresh that
    /// succeeds); it is then refreshed from the brokers every two seconds and raised by every
    /// append in between, so the backlog can pass the cap by what the appends already
    /// waiting add. `None`: no cap;
    /// the topic's retention is the bound (see the module docs).
    pub max_backlog_bytes: Option<u64>,
    /// Raw librdkafka properties applied last (for both producer and consumer). Properties the
    /// delivery guarantee depends on are refused (see [`GUARANTEED_PROPERTIES`]).
    pub extra: BTreeMap<String, String>,
    /// Timeout of metadata, watermark and scan requests at `connect`.
    pub connect_timeout: Duration,
    /// How long `close` waits for the producer to flush and the final commit.
    pub close_timeout: Duration,
    /// How often stored consumer offsets are committed (asynchronously) and the checkpoint
    /// topic is written (when something changed).
    pub commit_interval: Duration,
}

/// librdkafka properties [`KafkaBufferConfig::extra`] may not override: the delivery guarantee
/// rests on them.
pub const GUARANTEED_PROPERTIES: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "isolation.level",
    // The consumer's rebalance handling assigns incrementally (cooperative protocol).
    "partition.assignment.strategy",
];

impl KafkaBufferConfig {
    /// A configuration with plaintext transport and default tuning.
    pub fn new(
        brokers: Vec<String>,
        topic: impl Into<String>,
        checkpoint_topic: impl Into<String>,
        group_id: impl Into<String>,
    ) -> Self {
        Self {
            brokers,
            topic: topic.into(),
            checkpoint_topic: checkpoint_topic.into(),
            group_id: group_id.into(),
            group_instance_id: None,
            security: KafkaSecurity::default(),
            max_bytes: 128 * 1024 * 1024,
            max_backlog_bytes: None,
            extra: BTreeMap::new(),
            connect_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
        }
    }

    /// Checks what librdkafka would not: required fields, SASL credentials, guarded properties.
    pub(crate) fn validate(&self) -> Result<(), BufferError> {
        let bad = |reason: String| Err(BufferError::KafkaConfig { reason });
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return bad("brokers must list at least one host:port".into());
        }
        for (name, value) in [
            ("topic", &self.topic),
            ("checkpoint_topic", &self.checkpoint_topic),
            ("group_id", &self.group_id),
        ] {
            if value.trim().is_empty() {
                return bad(format!("{name} must not be empty"));
            }
        }
        if self
            .group_instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return bad("group_instance_id must not be empty".into());
        }
        if self.topic == self.checkpoint_topic {
            return bad("topic and checkpoint_topic must differ".into());
        }
        if self.max_bytes < 2 * 1024 * 1024 {
            return bad("max_bytes must be at least 2 MiB".into());
        }
        if self.max_backlog_bytes == Some(0) {
            return bad("max_backlog_bytes must be positive (or unset: no cap)".into());
        }
        let s = &self.security;
        if s.protocol.is_sasl() {
            match s.sasl_mechanism {
                None => return bad("a SASL protocol needs sasl_mechanism".into()),
                Some(SaslMechanism::OAuthBearer) => {}
                Some(_) if s.username.is_none() || s.password.is_none() => {
                    return bad("SASL PLAIN/SCRAM needs username and password".into());
                }
                Some(_) => {}
            }
            if s.sasl_mechanism == Some(SaslMechanism::OAuthBearer)
                && s.oauth_token_source.is_none()
                && self
                    .extra
                    .get("sasl.oauthbearer.method")
                    .map(String::as_str)
                    != Some("oidc")
            {
                return bad(
                    "OAUTHBEARER needs an oauth_token_source (or librdkafka's own \
                     sasl.oauthbearer.method=oidc in extra)"
                        .into(),
                );
            }
        } else if s.sasl_mechanism.is_some() {
            return bad("sasl_mechanism is set but the protocol is not SASL".into());
        }
        if let Some(key) = self
            .extra
            .keys()
            .find(|k| GUARANTEED_PROPERTIES.contains(&k.as_str()))
        {
            return bad(format!(
                "extra property {key} may not be overridden: the delivery guarantee depends on it"
            ));
        }
        Ok(())
    }

    /// Properties shared by producer and consumer; reads the CA files.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, BufferError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        c.set("client.id", "falcon-sentinel-bridge");
        let s = &self.security;
        c.set("security.protocol", s.protocol.as_librdkafka());
        if let Some(m) = s.sasl_mechanism {
            c.set("sasl.mechanism", m.as_librdkafka());
        }
        if let Some(u) = &s.username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &s.password {
            c.set("sasl.password", p);
        }
        if s.protocol.is_tls() {
            if s.ca_pem_files.is_empty() {
                // The vendored OpenSSL has no usable default CA path: probe the system's.
                c.set("ssl.ca.location", "probe");
            } else {
                let mut pem = String::new();
                for path in &s.ca_pem_files {
                    let text = std::fs::read_to_string(path).map_err(|source| {
                        BufferError::KafkaCaFile {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    pem.push_str(&text);
                    pem.push('\n');
                }
                c.set("ssl.ca.pem", pem);
            }
        }
        Ok(c)
    }

    /// Applies [`extra`](Self::extra) last.
    /// The producer's `message.max.bytes`: from `extra`, else librdkafka's default.
    pub(crate) fn message_max_bytes(&self) -> usize {
        self.extra
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(super::DEFAULT_MESSAGE_MAX_BYTES)
    }

    pub(crate) fn apply_extra(&self, c: &mut ClientConfig) {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
    }
}

impl fmt::Debug for KafkaBufferConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "pem", "token", "jaas", "oauthbearer"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaBufferConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("group_id", &self.group_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("security", &self.security)
            .field("max_bytes", &self.max_bytes)
            .field("max_backlog_bytes", &self.max_backlog_bytes)
            .field("extra", &extra)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("commit_interval", &self.commit_interval)
            .finish()
    }
}

/// Transport security and authentication.
///
/// Azure Event Hubs (Kafka endpoint, port 9093): `protocol: SaslSsl`, `sasl_mechanism: Plain`,
/// `username: "$ConnectionString"`, `password:` the namespace's connection string
/// (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…`).
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    /// `security.protocol`.
    pub protocol: SecurityProtocol,
    /// `sasl.mechanism`; required with a SASL protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username`.
    pub username: Option<String>,
    /// `sasl.password`; never printed by `Debug`.
    pub password: Option<String>,
    /// PEM files of the CAs that sign the brokers' certificates (concatenated into
    /// `ssl.ca.pem`). Empty: the system's CA store (`ssl.ca.location=probe`).
    pub ca_pem_files: Vec<PathBuf>,
    /// Where OAUTHBEARER tokens come from (Event Hubs: an Entra ID access token for
    /// `https://NAMESPACE.servicebus.windows.net/.default`). Every client this crate creates
    /// (producer, group consumer, recovery consumer, topic writer and reader) asks it whenever
    /// librdkafka wants a token: at start and before the previous one expires.
    pub oauth_token_source: Option<Arc<dyn OAuthTokenSource>>,
}

/// A source of SASL OAUTHBEARER tokens (RFC 7628) for librdkafka.
///
/// [`token`](Self::token) is called on librdkafka's polling threads and on the task that
/// reads the group consumer, so it must not block: keep a current token ready (refresh it in
/// the background) and return it, or an error when there is none. After an error librdkafka
/// asks again about 10 s later and does not connect meanwhile; nothing is lost.
pub trait OAuthTokenSource: Send + Sync + 'static {
    /// The current token, or why there is none.
    fn token(&self) -> Result<OAuthBearerToken, String>;

    /// Called when a broker refused a token (SASL authentication failed): the next
    /// [`token`](Self::token) should be a fresh one, not the refused one from a cache.
    fn refused(&self) {}
}

/// A bearer token handed to librdkafka.
#[derive(Clone)]
pub struct OAuthBearerToken {
    /// The token itself (an Entra access token is a JWT); never printed.
    pub token: String,
    /// The principal the token names (informational; Event Hubs reads the token).
    pub principal: String,
    /// When librdkafka should consider it expired; it asks for a new one at 80% of the time
    /// left.
    pub expires_at: SystemTime,
}

impl fmt::Debug for OAuthBearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthBearerToken")
            .field("token", &"<redacted>")
            .field("principal", &self.principal)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem_files", &self.ca_pem_files)
            .field(
                "oauth_token_source",
                &self.oauth_token_source.as_ref().map(|_| "<token source>"),
            )
            .finish()
    }
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No TLS, no SASL (tests, local brokers).
    #[default]
    Plaintext,
    /// TLS without SASL.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS (Event Hubs).
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn is_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (Event Hubs with a connection string).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
    /// `OAUTHBEARER`, with tokens from [`KafkaSecurity::oauth_token_source`] (or librdkafka's
    /// own OIDC flow configured through [`KafkaBufferConfig::extra`], not tested).
    OAuthBearer,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> KafkaBufferConfig {
        KafkaBufferConfig::new(vec!["b:9093".into()], "events", "ckpt", "writer")
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = base();
        c.security = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::Plain),
            username: Some("$ConnectionString".into()),
            password: Some("Endpoint=sb://x/;SharedAccessKey=TOPSECRET".into()),
            ca_pem_files: vec![],
            oauth_token_source: None,
        };
        c.extra
            .insert("ssl.key.password".into(), "ALSOSECRET".into());
        c.extra.insert("linger.ms".into(), "7".into());
        c.validate().unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("TOPSECRET") && !text.contains("ALSOSECRET"),
            "{text}"
        );
        assert!(
            text.contains("$ConnectionString") && text.contains("\"7\""),
            "{text}"
        );
    }

    #[test]
    fn validation_refuses_weakening_and_incomplete_settings() {
        let mut c = base();
        c.extra.insert("enable.auto.commit".into(), "true".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("enable.auto.commit")
        );
        let mut c = base();
        c.security.protocol = SecurityProtocol::SaslSsl;
        assert!(c.validate().is_err());
        c.security.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        assert!(c.validate().is_err());
        c.security.username = Some("u".into());
        c.security.password = Some("p".into());
        c.validate().unwrap();
        let mut c = base();
        c.checkpoint_topic = c.topic.clone();
        assert!(c.validate().is_err());
        let mut c = base();
        c.brokers.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn missing_ca_file_is_named() {
        let mut c = base();
        c.security.protocol = SecurityProtocol::Ssl;
        c.security.ca_pem_files = vec!["/nonexistent/ca.pem".into()];
        let err = c.client_config().unwrap_err();
        assert!(format!("{err}").contains("/nonexistent/ca.pem"), "{err}");
    }
}
