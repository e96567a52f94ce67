//! The YAML schema as written by operators: one struct per section, unknown keys rejected.
//!
//! These structs are what serde parses; they are deliberately lenient about *values*
//! (strings instead of URLs, options for required keys) so that `validate` can report every
//! semantic problem at once, with a hint. Sections that choose between alternatives by
//! `type:` are flat here (the union of the alternatives' keys) and split into enums by
//! `validate`, which also rejects a key that does not belong to the chosen `type`. This keeps
//! exact positions for every key, which serde's buffered tagged enums would lose.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::model::{
    BatchLimit, BufferType, CredentialType, DeadLetterType, FalconCloud, KafkaProtocol, LogFormat,
    SaslMechanism, StartPosition,
};

// ---------------------------------------------------------------------------------------------
// Defaults. Each is named so the reference file and the code cannot drift apart silently.
// ---------------------------------------------------------------------------------------------

/// The default cloud: us-1 is CrowdStrike's original and largest cloud (`api.crowdstrike.com`).
pub(crate) const fn default_cloud() -> FalconCloud {
    FalconCloud::Us1
}
/// Never lose events: on the very first start, read everything Falcon still retains.
pub(crate) const fn default_start() -> StartPosition {
    StartPosition::Earliest
}
/// Falcon sends keep-alive lines on quiet streams; clients use 60–120 s read timeouts (FIG,
/// SEKOIA, XSOAR; reference §keepalives). 90 s sits in that range.
pub(crate) const fn default_read_idle_timeout_secs() -> u64 {
    90
}
/// 16 MiB: far above any Falcon event seen (a few KiB to ~1 MiB), yet a hard bound on memory
/// for a runaway line.
pub(crate) const fn default_max_event_bytes() -> u64 {
    16 * 1024 * 1024
}
/// 30 s for token, discover and refresh calls: they are small and should answer in seconds.
pub(crate) const fn default_request_timeout_secs() -> u64 {
    30
}
/// The path the Helm chart mounts the persistent volume at.
pub(crate) const fn default_buffer_path() -> &'static str {
    "/var/lib/falcon-sentinel-bridge/buffer"
}
/// 10 GiB: hours of a busy tenant's events during a Sentinel outage, on a small PVC.
pub(crate) const fn default_buffer_max_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}
/// Kafka topic that holds the events.
pub(crate) const fn default_kafka_topic() -> &'static str {
    "falcon-events"
}
/// Kafka topic that holds the Falcon offsets (the source's checkpoint).
pub(crate) const fn default_kafka_checkpoint_topic() -> &'static str {
    "falcon-events-checkpoints"
}
/// Kafka consumer group of the Sentinel writer.
pub(crate) const fn default_kafka_group_id() -> &'static str {
    "falcon-sentinel-bridge"
}
/// Plaintext is Kafka's own default; production configs set `sasl_ssl`.
pub(crate) const fn default_kafka_protocol() -> KafkaProtocol {
    KafkaProtocol::Plaintext
}
/// The stream name used by the DCR template shipped with the project.
pub(crate) const fn default_stream() -> &'static str {
    "Custom-FalconEvents"
}
/// Azure public cloud's Entra ID authority.
pub(crate) const fn default_authority_host() -> &'static str {
    "https://login.microsoftonline.com"
}
/// The Logs Ingestion API's token audience in the Azure public cloud.
pub(crate) const fn default_audience() -> &'static str {
    "https://monitor.azure.com"
}
/// The documented-safe batching mode: ≤ 1 MB of JSON before gzip (reference §1.6).
pub(crate) const fn default_batch_limit() -> BatchLimit {
    BatchLimit::Uncompressed
}
/// The API's 1 MB limit per call, measured on uncompressed JSON as Microsoft's SDKs do.
pub(crate) const fn default_max_batch_bytes() -> u64 {
    1_000_000
}
/// 1 s: the latency cost is invisible next to Sentinel's own ingestion delay (minutes).
pub(crate) const fn default_batch_linger_ms() -> u64 {
    1000
}
/// 4 requests in flight keep one pod well below the per-DCR rate limits.
pub(crate) const fn default_max_concurrency() -> u64 {
    4
}
/// Level 1: libdeflate's fastest level still compresses Falcon JSON about 6x (measured,
/// reference verified-here.md).
pub(crate) const fn default_gzip_level() -> u64 {
    1
}
/// 500 ms first retry delay: quick enough for a blip, slow enough not to hammer a 503.
pub(crate) const fn default_retry_initial_ms() -> u64 {
    500
}
/// 60 s between retries at most: an outage is noticed within a minute of recovering.
pub(crate) const fn default_retry_max_secs() -> u64 {
    60
}
/// Dead letters sit next to the buffer on the same volume.
pub(crate) const fn default_dead_letter_path() -> &'static str {
    "/var/lib/falcon-sentinel-bridge/dead-letter"
}
/// The dead-letter topic of `dead_letter.type: kafka`.
pub(crate) const fn default_dead_letter_topic() -> &'static str {
    "falcon-dead-letters"
}
/// 512 KiB per record in a dead-letter topic: a letter (JSON, the raw bytes maybe base64)
/// must fit Kafka's default 1 MB message limit, which Event Hubs does not raise.
pub(crate) const fn default_kafka_dead_letter_max_record_bytes() -> u64 {
    512 * 1024
}
/// 1 MiB per dead-letter record: the Logs Ingestion API refuses larger calls anyway.
pub(crate) const fn default_dead_letter_max_record_bytes() -> u64 {
    1024 * 1024
}
/// All interfaces, port 8080: what the Kubernetes probes and Prometheus scrape.
pub(crate) const fn default_admin_listen() -> &'static str {
    "0.0.0.0:8080"
}
/// 25 s: below Kubernetes' default terminationGracePeriodSeconds of 30, so the drain finishes
/// before SIGKILL.
pub(crate) const fn default_shutdown_grace_secs() -> u64 {
    25
}
/// Health records are on by default: a silent bridge is indistinguishable from a quiet tenant.
pub(crate) const fn default_health_enabled() -> bool {
    true
}
/// The health stream name used by the DCR template shipped with the project.
pub(crate) const fn default_health_stream() -> &'static str {
    "Custom-FalconBridgeHealth"
}
/// One health record a minute: enough for an alert rule, negligible ingestion cost.
pub(crate) const fn default_health_interval_secs() -> u64 {
    60
}
/// `info` logs lifecycle changes only, never per event.
pub(crate) const fn default_log_level() -> &'static str {
    "info"
}
/// JSON to stdout is what Kubernetes log collectors expect.
pub(crate) const fn default_log_format() -> LogFormat {
    LogFormat::Json
}

fn string_of(value: &'static str) -> String {
    value.to_owned()
}
fn d_read_idle() -> u64 {
    default_read_idle_timeout_secs()
}
fn d_max_event() -> u64 {
    default_max_event_bytes()
}
fn d_request_timeout() -> u64 {
    default_request_timeout_secs()
}
fn d_stream() -> String {
    string_of(default_stream())
}
fn d_authority() -> String {
    string_of(default_authority_host())
}
fn d_audience() -> String {
    string_of(default_audience())
}
fn d_batch_limit() -> BatchLimit {
    default_batch_limit()
}
fn d_max_batch() -> u64 {
    default_max_batch_bytes()
}
fn d_linger() -> u64 {
    default_batch_linger_ms()
}
fn d_concurrency() -> u64 {
    default_max_concurrency()
}
fn d_gzip() -> u64 {
    default_gzip_level()
}
fn d_retry_initial() -> u64 {
    default_retry_initial_ms()
}
fn d_retry_max() -> u64 {
    default_retry_max_secs()
}
fn d_listen() -> String {
    string_of(default_admin_listen())
}
fn d_grace() -> u64 {
    default_shutdown_grace_secs()
}
fn d_health_enabled() -> bool {
    default_health_enabled()
}
fn d_health_stream() -> String {
    string_of(default_health_stream())
}
fn d_health_interval() -> u64 {
    default_health_interval_secs()
}
fn d_log_level() -> String {
    string_of(default_log_level())
}
fn d_log_format() -> LogFormat {
    default_log_format()
}
fn d_start() -> StartPosition {
    default_start()
}

// ---------------------------------------------------------------------------------------------
// Sections.
// ---------------------------------------------------------------------------------------------

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Where events come from: the Falcon Event Streams API.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) falcon: RawFalcon,
    /// Where events wait between Falcon and Sentinel.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) buffer: RawBuffer,
    /// Where events go: the Azure Logs Ingestion API.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) sentinel: RawSentinel,
    /// Where events that cannot be delivered are kept.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) dead_letter: RawDeadLetter,
    /// The admin listener (probes, metrics).
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) admin: RawAdmin,
    /// Seconds allowed for draining on SIGTERM; must be below the pod's
    /// terminationGracePeriodSeconds.
    #[serde(default = "d_grace")]
    pub(crate) shutdown_grace_secs: u64,
    /// Health records written into Sentinel.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) health: RawHealth,
    /// Logging.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) log: RawLog,
    /// Extra trust roots for outbound HTTPS.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) tls: RawTls,
}

/// `falcon:` — the source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFalcon {
    /// Falcon cloud: us-1 | us-2 | eu-1 | us-gov-1 | us-gov-2. Exactly one of `cloud` and
    /// `base_url`; us-1 when neither is given.
    #[serde(default)]
    pub(crate) cloud: Option<FalconCloud>,
    /// API base URL overriding `cloud` (https only), e.g. for a test double.
    #[serde(default)]
    pub(crate) base_url: Option<String>,
    /// OAuth2 API client id (not a secret). Required.
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    /// OAuth2 API client secret, as `{ env: NAME }` or `{ file: /path }`. Required.
    #[serde(default)]
    pub(crate) client_secret: Option<RawSecret>,
    /// MSSP child CID (32 hex characters), or null.
    #[serde(default)]
    pub(crate) member_cid: Option<String>,
    /// Connection label, unique per bridge instance: 1–32 of A–Z, a–z, 0–9. Required.
    #[serde(default)]
    pub(crate) app_id: Option<String>,
    /// `all`, or a list of partition numbers to read.
    #[serde(default)]
    pub(crate) partitions: RawPartitions,
    /// Where to start when the buffer holds no position: earliest | latest | { offset: N }.
    #[serde(default = "d_start")]
    pub(crate) start: StartPosition,
    /// Server-side eventType filter; empty means every type.
    #[serde(default)]
    pub(crate) event_types: Vec<String>,
    /// Reconnect when the stream sends nothing (not even a keep-alive) for this long.
    #[serde(default = "d_read_idle")]
    pub(crate) read_idle_timeout_secs: u64,
    /// Largest event line accepted; longer lines are dead-lettered.
    #[serde(default = "d_max_event")]
    pub(crate) max_event_bytes: u64,
    /// HTTP(S) proxy for Falcon; HTTPS_PROXY / NO_PROXY are honoured too.
    #[serde(default)]
    pub(crate) proxy_url: Option<String>,
    /// Follow the `X-Cs-Region` header of the token response to the right cloud.
    #[serde(default)]
    pub(crate) region_autodiscovery: bool,
    /// Timeout of the token, discover and refresh requests.
    #[serde(default = "d_request_timeout")]
    pub(crate) request_timeout_secs: u64,
}

impl Default for RawFalcon {
    fn default() -> Self {
        Self {
            cloud: None,
            base_url: None,
            client_id: None,
            client_secret: None,
            member_cid: None,
            app_id: None,
            partitions: RawPartitions::All,
            start: default_start(),
            event_types: Vec::new(),
            read_idle_timeout_secs: default_read_idle_timeout_secs(),
            max_event_bytes: default_max_event_bytes(),
            proxy_url: None,
            region_autodiscovery: false,
            request_timeout_secs: default_request_timeout_secs(),
        }
    }
}

/// `buffer:` — flat union of the `disk` and `kafka` keys; `validate` splits it by `type`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuffer {
    /// disk | kafka; disk when absent.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<BufferType>,
    /// disk: directory of the buffer (absolute).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// disk: capacity in bytes; the source pauses when the buffer is full.
    #[serde(default)]
    pub(crate) max_bytes: Option<u64>,
    /// kafka: bootstrap servers, `host:port`.
    #[serde(default)]
    pub(crate) brokers: Option<Vec<String>>,
    /// kafka: events topic.
    #[serde(default)]
    pub(crate) topic: Option<String>,
    /// kafka: offsets topic.
    #[serde(default)]
    pub(crate) checkpoint_topic: Option<String>,
    /// kafka: consumer group.
    #[serde(default)]
    pub(crate) group_id: Option<String>,
    /// kafka: cap on the undelivered backlog in the topic; the source pauses at it.
    #[serde(default)]
    pub(crate) max_backlog_bytes: Option<u64>,
    /// kafka: static group membership (KIP-345): a restarted bridge takes its partitions
    /// back at once instead of after the session timeout.
    #[serde(default)]
    pub(crate) group_instance_id: Option<String>,
    /// kafka: raw librdkafka properties for both producer and consumer.
    #[serde(default)]
    pub(crate) librdkafka_options: Option<BTreeMap<String, RawScalar>>,
    /// kafka: connection security.
    #[serde(default)]
    pub(crate) security: Option<RawKafkaSecurity>,
}

/// A YAML scalar taken as text (`session.timeout.ms: 10000` and `"10000"` alike).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawScalar {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl RawScalar {
    pub(crate) fn into_text(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// `buffer.security:` for Kafka.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKafkaSecurity {
    /// plaintext | ssl | sasl_plaintext | sasl_ssl.
    #[serde(default)]
    pub(crate) protocol: Option<KafkaProtocol>,
    /// plain | scram-sha-256 | scram-sha-512 | oauthbearer; required with sasl_*.
    #[serde(default)]
    pub(crate) sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// SASL password, `{ env: NAME }` or `{ file: /path }`.
    #[serde(default)]
    pub(crate) password: Option<RawSecret>,
    /// Azure Event Hubs connection string (implies sasl_ssl, plain, `$ConnectionString`).
    #[serde(default)]
    pub(crate) event_hubs_connection_string: Option<RawSecret>,
    /// oauthbearer: the Entra scope of the token (default `https://HOST/.default`, HOST the
    /// first broker's host: the Event Hubs namespace).
    #[serde(default)]
    pub(crate) oauth_scope: Option<String>,
}

/// `sentinel:` — the destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSentinel {
    /// Logs ingestion endpoint of the DCE or DCR (https only). Required.
    #[serde(default)]
    pub(crate) endpoint: Option<String>,
    /// The DCR's immutable id, `dcr-` and 32 hex characters. Required.
    #[serde(default)]
    pub(crate) dcr_immutable_id: Option<String>,
    /// Stream for event types not listed in `streams`.
    #[serde(default = "d_stream")]
    pub(crate) default_stream: String,
    /// eventType (case-insensitive) → stream.
    #[serde(default)]
    pub(crate) streams: BTreeMap<String, String>,
    /// How to obtain Entra ID tokens. Required.
    #[serde(default)]
    pub(crate) credential: Option<RawCredential>,
    /// Entra ID authority (https only).
    #[serde(default = "d_authority")]
    pub(crate) authority_host: String,
    /// Token audience; the scope is `{audience}/.default`.
    #[serde(default = "d_audience")]
    pub(crate) audience: String,
    /// uncompressed | compressed: what `max_batch_bytes` measures.
    #[serde(default = "d_batch_limit")]
    pub(crate) batch_limit: BatchLimit,
    /// Largest batch, in bytes of JSON before gzip.
    #[serde(default = "d_max_batch")]
    pub(crate) max_batch_bytes: u64,
    /// How long a partly filled batch waits for more records.
    #[serde(default = "d_linger")]
    pub(crate) batch_linger_ms: u64,
    /// Requests in flight at most.
    #[serde(default = "d_concurrency")]
    pub(crate) max_concurrency: u64,
    /// gzip level for libdeflate, 1–12.
    #[serde(default = "d_gzip")]
    pub(crate) gzip_level: u64,
    /// Timeout of one upload.
    #[serde(default = "d_request_timeout")]
    pub(crate) request_timeout_secs: u64,
    /// First retry delay.
    #[serde(default = "d_retry_initial")]
    pub(crate) retry_initial_ms: u64,
    /// Largest retry delay.
    #[serde(default = "d_retry_max")]
    pub(crate) retry_max_secs: u64,
}

impl Default for RawSentinel {
    fn default() -> Self {
        Self {
            endpoint: None,
            dcr_immutable_id: None,
            default_stream: d_stream(),
            streams: BTreeMap::new(),
            credential: None,
            authority_host: d_authority(),
            audience: d_audience(),
            batch_limit: default_batch_limit(),
            max_batch_bytes: default_max_batch_bytes(),
            batch_linger_ms: default_batch_linger_ms(),
            max_concurrency: default_max_concurrency(),
            gzip_level: default_gzip_level(),
            request_timeout_secs: default_request_timeout_secs(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_secs: default_retry_max_secs(),
        }
    }
}

/// `sentinel.credential:` — flat union of the credential kinds; `validate` splits it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    /// workload_identity | managed_identity | client_secret | client_certificate. Required.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<CredentialType>,
    /// Entra tenant (GUID or domain).
    #[serde(default)]
    pub(crate) tenant_id: Option<String>,
    /// Application (client) id, a GUID.
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    /// workload_identity: projected service-account token file.
    #[serde(default)]
    pub(crate) token_file: Option<String>,
    /// managed_identity: ARM resource id of a user-assigned identity.
    #[serde(default)]
    pub(crate) resource_id: Option<String>,
    /// managed_identity: object (principal) id of a user-assigned identity.
    #[serde(default)]
    pub(crate) object_id: Option<String>,
    /// client_secret: the application secret.
    #[serde(default)]
    pub(crate) client_secret: Option<RawSecret>,
    /// client_certificate: the PKCS#12 file, `{ file: /path.pfx }`.
    #[serde(default)]
    pub(crate) certificate: Option<RawSecret>,
    /// client_certificate: the PKCS#12 password, if any.
    #[serde(default)]
    pub(crate) password: Option<RawSecret>,
}

/// `dead_letter:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeadLetter {
    /// directory (default) or kafka.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<DeadLetterType>,
    /// directory: the directory (absolute).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// kafka: the topic.
    #[serde(default)]
    pub(crate) topic: Option<String>,
    /// Largest record kept; a longer payload is truncated and flagged.
    #[serde(default)]
    pub(crate) max_record_bytes: Option<u64>,
}

/// `admin:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// `IP:PORT` to serve /live, /ready and /metrics on.
    #[serde(default = "d_listen")]
    pub(crate) listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: d_listen() }
    }
}

/// `health:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    /// Write health records into Sentinel.
    #[serde(default = "d_health_enabled")]
    pub(crate) enabled: bool,
    /// Stream of the health records.
    #[serde(default = "d_health_stream")]
    pub(crate) stream: String,
    /// Period of the health records.
    #[serde(default = "d_health_interval")]
    pub(crate) interval_secs: u64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            enabled: default_health_enabled(),
            stream: d_health_stream(),
            interval_secs: default_health_interval_secs(),
        }
    }
}

/// `log:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// A level or an EnvFilter directive; RUST_LOG overrides it.
    #[serde(default = "d_log_level")]
    pub(crate) level: String,
    /// json | text.
    #[serde(default = "d_log_format")]
    pub(crate) format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: d_log_level(),
            format: default_log_format(),
        }
    }
}

/// `tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// PEM files of extra trust roots (absolute paths).
    #[serde(default)]
    pub(crate) extra_ca_files: Vec<String>,
}

/// A section written as `tls:` with nothing under it (every key commented out) means "all
/// defaults", not an error.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

// ---------------------------------------------------------------------------------------------
// Values with more than one shape.
// ---------------------------------------------------------------------------------------------

/// `all` or a list of partitions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum RawPartitions {
    #[default]
    All,
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for RawPartitions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPartitions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of partition numbers such as [0, 1]")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawPartitions, E> {
                if value == "all" {
                    Ok(RawPartitions::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawPartitions, A::Error> {
                Vec::<u32>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawPartitions::List)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A secret as written: a reference, or an inline value that `validate` rejects with a hint
/// (accepting it here lets that error be reported alongside all the others).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RawSecret {
    Inline,
    Ref(RawSecretRef),
}

/// `{ env: NAME }` or `{ file: PATH }`.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretRef {
    /// Name of the environment variable holding the secret.
    #[serde(default)]
    pub(crate) env: Option<String>,
    /// Absolute path of the file holding the secret.
    #[serde(default)]
    pub(crate) file: Option<String>,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`{ env: NAME }` or `{ file: /path }`")
            }
            // The inline value itself is dropped here: it must not survive in memory longer
            // than parsing, nor appear in any error message.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                RawSecretRef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSecret::Ref)
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Schema introspection, so every unknown key can be reported at once (serde stops at the
// first). The key lists come from the serde derives themselves, so they cannot drift.
// ---------------------------------------------------------------------------------------------

/// The keys each section accepts, by section path.
pub(crate) fn section_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields_of::<RawConfig>()),
        ("falcon", fields_of::<RawFalcon>()),
        ("buffer", fields_of::<RawBuffer>()),
        ("buffer.security", fields_of::<RawKafkaSecurity>()),
        ("sentinel", fields_of::<RawSentinel>()),
        ("sentinel.credential", fields_of::<RawCredential>()),
        ("dead_letter", fields_of::<RawDeadLetter>()),
        ("admin", fields_of::<RawAdmin>()),
        ("health", fields_of::<RawHealth>()),
        ("log", fields_of::<RawLog>()),
        ("tls", fields_of::<RawTls>()),
    ]
}

/// The field names serde's derive passes to `deserialize_struct` for `T`.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The introspector always fails after recording the fields; the error is expected.
    let _ = T::deserialize(Introspect(&mut fields));
    fields
}

struct Introspect<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Introspect<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("schema introspection"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("schema introspection"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
