//! The validated, immutable configuration handed to the rest of the service.
//!
//! Every type here serializes back to the YAML schema (units in key names, secrets as
//! references), which is what `Config::redacted_yaml` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::secret::SecretRef;

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The Falcon Event Streams source.
    pub falcon: FalconConfig,
    /// The durable buffer between source and writer.
    pub buffer: BufferConfig,
    /// The Logs Ingestion API writer.
    pub sentinel: SentinelConfig,
    /// Where undeliverable records go.
    pub dead_letter: DeadLetterConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Time allowed to drain on SIGTERM.
    #[serde(rename = "shutdown_grace_secs", serialize_with = "secs")]
    pub shutdown_grace: Duration,
    /// Health records.
    pub health: HealthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Extra trust roots.
    pub tls: TlsConfig,
    /// File name the config was loaded from, for `check_files` messages.
    #[serde(skip)]
    pub(crate) origin: String,
    /// Source positions of the keys that name files, for `check_files` messages.
    #[serde(skip)]
    pub(crate) positions: BTreeMap<String, (usize, usize)>,
}

/// Falcon clouds and their API hosts (reference falcon-event-streams.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FalconCloud {
    /// `https://api.crowdstrike.com`
    #[serde(rename = "us-1")]
    Us1,
    /// `https://api.us-2.crowdstrike.com`
    #[serde(rename = "us-2")]
    Us2,
    /// `https://api.eu-1.crowdstrike.com`
    #[serde(rename = "eu-1")]
    Eu1,
    /// `https://api.laggar.gcw.crowdstrike.com`
    #[serde(rename = "us-gov-1")]
    UsGov1,
    /// `https://api.us-gov-2.crowdstrike.mil`
    #[serde(rename = "us-gov-2")]
    UsGov2,
}

impl FalconCloud {
    /// The API base URL of the cloud.
    pub fn api_base(self) -> &'static str {
        match self {
            Self::Us1 => "https://api.crowdstrike.com",
            Self::Us2 => "https://api.us-2.crowdstrike.com",
            Self::Eu1 => "https://api.eu-1.crowdstrike.com",
            Self::UsGov1 => "https://api.laggar.gcw.crowdstrike.com",
            Self::UsGov2 => "https://api.us-gov-2.crowdstrike.mil",
        }
    }
}

/// Validated `falcon:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FalconConfig {
    /// The configured cloud; `None` when `base_url` was given instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<FalconCloud>,
    /// The API base URL: the cloud's, or the `base_url` override. Always https.
    #[serde(skip)]
    pub base_url: Url,
    /// `base_url` as written, for printing the effective config.
    #[serde(rename = "base_url", skip_serializing_if = "Option::is_none")]
    pub(crate) base_url_override: Option<Url>,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret (resolved at start-up).
    pub client_secret: SecretRef,
    /// MSSP child CID, lowercase hex.
    pub member_cid: Option<String>,
    /// Connection label (appId).
    pub app_id: String,
    /// Partitions to read.
    pub partitions: Partitions,
    /// Start position when the buffer holds none.
    pub start: StartPosition,
    /// Server-side eventType filter; empty = all.
    pub event_types: Vec<String>,
    /// Reconnect after this long without a byte.
    #[serde(rename = "read_idle_timeout_secs", serialize_with = "secs")]
    pub read_idle_timeout: Duration,
    /// Largest event line accepted.
    pub max_event_bytes: usize,
    /// Proxy for Falcon requests.
    pub proxy_url: Option<ProxyUrl>,
    /// Follow `X-Cs-Region`.
    pub region_autodiscovery: bool,
    /// Timeout of token, discover and refresh requests.
    #[serde(rename = "request_timeout_secs", serialize_with = "secs")]
    pub request_timeout: Duration,
}

/// Which partitions to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition discover returns.
    All,
    /// These partitions only (sorted, unique, non-empty).
    Only(Vec<u32>),
}

impl Partitions {
    /// Whether `partition` is to be read.
    pub fn includes(&self, partition: u32) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.binary_search(&partition).is_ok(),
        }
    }
}

impl Serialize for Partitions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::Only(list) => list.serialize(s),
        }
    }
}

/// Where to start reading a partition for which the buffer holds no position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest event Falcon retains.
    Earliest,
    /// Only events from now on.
    Latest,
    /// This Falcon offset (inclusive).
    Offset(u64),
}

/// An HTTP(S) proxy URL; its password never appears in `Debug` or the printed config.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(pub(crate) Url);

impl ProxyUrl {
    /// The URL with credentials, for building the HTTP client.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Cannot fail: the URL has a host, since it has a password.
            let _ = url.set_password(Some("REDACTED"));
        }
        url.to_string()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl Serialize for ProxyUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Kind names of `buffer.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferType {
    /// Local disk log.
    Disk,
    /// Kafka (or the Kafka endpoint of Event Hubs).
    Kafka,
}

/// Validated `buffer:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one value per process, built once at startup
pub enum BufferConfig {
    /// A disk log on a persistent volume.
    Disk(DiskBufferConfig),
    /// Kafka (or the Kafka endpoint of Event Hubs).
    Kafka(KafkaBufferConfig),
}

/// The disk buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskBufferConfig {
    /// Directory (absolute).
    pub path: PathBuf,
    /// Capacity in bytes.
    pub max_bytes: u64,
}

/// The Kafka buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KafkaBufferConfig {
    /// Bootstrap servers, `host:port`.
    pub brokers: Vec<String>,
    /// Events topic.
    pub topic: String,
    /// Offsets topic.
    pub checkpoint_topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Static group membership id (`group.instance.id`), if set.
    pub group_instance_id: Option<String>,
    /// Cap on the topic's undelivered backlog (estimated bytes); reading from Falcon pauses
    /// at it. `None`: no cap, the topic's retention bounds the backlog.
    pub max_backlog_bytes: Option<u64>,
    /// Raw librdkafka properties, applied last (never those the guarantee rests on).
    pub librdkafka_options: BTreeMap<String, String>,
    /// Connection security.
    pub security: KafkaSecurity,
}

/// Kafka `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS (Event Hubs).
    SaslSsl,
}

impl KafkaProtocol {
    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// Kafka `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// PLAIN.
    #[serde(rename = "plain")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// OAUTHBEARER.
    #[serde(rename = "oauthbearer")]
    OauthBearer,
}

/// Validated Kafka security settings. Invariants: SASL settings only with a `sasl_*`
/// protocol; `username` and `password` together; an Event Hubs connection string only with
/// `sasl_ssl` + `plain` and no username/password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KafkaSecurity {
    /// Protocol.
    pub protocol: KafkaProtocol,
    /// SASL mechanism (set iff the protocol uses SASL).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password.
    pub password: Option<SecretRef>,
    /// Event Hubs connection string (user name `$ConnectionString`).
    pub event_hubs_connection_string: Option<SecretRef>,
    /// The Entra scope of OAUTHBEARER tokens (set iff the mechanism is `oauthbearer`); the
    /// identity is `sentinel.credential`'s.
    pub oauth_scope: Option<String>,
}

impl KafkaSecurity {
    pub(crate) fn protocol_uses_sasl(&self) -> bool {
        self.protocol.uses_sasl()
    }
}

/// Validated `sentinel:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentinelConfig {
    /// Logs ingestion endpoint (https).
    pub endpoint: Url,
    /// DCR immutable id, lowercase.
    pub dcr_immutable_id: String,
    /// Stream for event types not in `streams`.
    pub default_stream: String,
    /// Lowercased eventType → stream.
    pub streams: BTreeMap<String, String>,
    /// Entra ID credential.
    pub credential: CredentialConfig,
    /// Entra ID authority (https).
    pub authority_host: Url,
    /// Token audience.
    pub audience: Url,
    /// What `max_batch_bytes` measures.
    pub batch_limit: BatchLimit,
    /// Largest batch in bytes of JSON before gzip.
    pub max_batch_bytes: usize,
    /// Wait for a partly filled batch.
    #[serde(rename = "batch_linger_ms", serialize_with = "millis")]
    pub batch_linger: Duration,
    /// Requests in flight at most.
    pub max_concurrency: usize,
    /// libdeflate level, 1–12.
    pub gzip_level: u8,
    /// Timeout of one upload.
    #[serde(rename = "request_timeout_secs", serialize_with = "secs")]
    pub request_timeout: Duration,
    /// First retry delay.
    #[serde(rename = "retry_initial_ms", serialize_with = "millis")]
    pub retry_initial: Duration,
    /// Largest retry delay.
    #[serde(rename = "retry_max_secs", serialize_with = "secs")]
    pub retry_max: Duration,
}

impl SentinelConfig {
    /// The stream for `event_type` (matched case-insensitively), else `default_stream`.
    pub fn stream_for(&self, event_type: &str) -> &str {
        self.streams
            .get(&event_type.to_ascii_lowercase())
            .map_or(self.default_stream.as_str(), String::as_str)
    }

    /// The token scope: `{audience}/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.audience.as_str().trim_end_matches('/'))
    }
}

/// How batches are sized (reference azure-logs-ingestion.md §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchLimit {
    /// At most `max_batch_bytes` (≤ 1,000,000) of JSON before gzip: the documented-safe mode.
    Uncompressed,
    /// Up to 1 MiB − 4 KiB of gzip and `max_batch_bytes` (≤ 50 MiB) decompressed: fewer calls.
    Compressed,
}

/// Kind names of `sentinel.credential.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// AKS workload identity (federated token file).
    WorkloadIdentity,
    /// Azure managed identity (IMDS).
    ManagedIdentity,
    /// App registration with a client secret.
    ClientSecret,
    /// App registration with a certificate (PKCS#12 file).
    ClientCertificate,
}

/// Validated `sentinel.credential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// Workload identity; unset fields come from AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_FEDERATED_TOKEN_FILE, which the AKS webhook injects.
    WorkloadIdentity {
        /// Tenant (GUID or domain).
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant_id: Option<String>,
        /// Client id (GUID).
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Federated token file.
        #[serde(skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    /// Managed identity: system-assigned when no id is given.
    ManagedIdentity {
        /// User-assigned identity, if any.
        #[serde(flatten)]
        id: Option<ManagedIdentityId>,
    },
    /// App registration with a secret.
    ClientSecret {
        /// Tenant (GUID or domain).
        tenant_id: String,
        /// Client id (GUID).
        client_id: String,
        /// The secret.
        client_secret: SecretRef,
    },
    /// App registration with a certificate: a signed client assertion instead of a secret.
    ClientCertificate {
        /// Tenant (GUID or domain).
        tenant_id: String,
        /// Client id (GUID).
        client_id: String,
        /// The PKCS#12 (`.pfx`) bundle: certificate and RSA private key. Always
        /// [`SecretRef::File`] (the bundle is binary); read at start-up.
        certificate: SecretRef,
        /// The bundle's password, if it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<SecretRef>,
    },
}

/// A user-assigned managed identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedIdentityId {
    /// By client id.
    ClientId(String),
    /// By ARM resource id.
    ResourceId(String),
    /// By object id.
    ObjectId(String),
}

/// Kind names of `dead_letter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterType {
    /// Files in a directory.
    Directory,
    /// A Kafka topic on the buffer's cluster (only with `buffer.type: kafka`).
    Kafka,
}

/// Validated `dead_letter:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeadLetterConfig {
    /// Files in a directory.
    Directory {
        /// Directory (absolute).
        path: PathBuf,
        /// Largest record kept.
        max_record_bytes: usize,
    },
    /// Messages in a Kafka topic on the buffer's cluster, with the buffer's connection
    /// settings (`buffer.type: kafka` only).
    Kafka {
        /// The topic (must exist).
        topic: String,
        /// Largest record kept.
        max_record_bytes: usize,
    },
}

/// Validated `admin:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
}

/// Validated `health:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// Whether health records are written.
    pub enabled: bool,
    /// Their stream.
    pub stream: String,
    /// Their period.
    #[serde(rename = "interval_secs", serialize_with = "secs")]
    pub interval: Duration,
}

/// Validated `log:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// An EnvFilter directive (already checked to parse).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Validated `tls:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// PEM files of extra trust roots.
    pub extra_ca_files: Vec<PathBuf>,
}
