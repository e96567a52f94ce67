//! Pure validation: raw structs in, validated immutable types out, every problem collected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::error::{Issue, hint};
use super::model::{
    AdminConfig, BatchLimit, BufferConfig, BufferType, Config, CredentialConfig, CredentialType,
    DeadLetterConfig, DiskBufferConfig, FalconConfig, HealthConfig, KafkaBufferConfig,
    KafkaProtocol, KafkaSecurity, LogConfig, ManagedIdentityId, Partitions, ProxyUrl,
    SaslMechanism, SentinelConfig, TlsConfig,
};
use super::raw::{
    self, RawBuffer, RawConfig, RawCredential, RawDeadLetter, RawFalcon, RawKafkaSecurity,
    RawPartitions, RawScalar, RawSecret, RawSentinel,
};
use super::secret::SecretRef;

/// Collects issues while the sections are checked.
#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn value(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        self.0.push(Issue {
            path: path.to_owned(),
            at_key: false,
            message: message.into(),
            hint,
        });
    }

    fn key(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        self.0.push(Issue {
            path: path.to_owned(),
            at_key: true,
            message: message.into(),
            hint,
        });
    }

    fn required<T>(&mut self, path: &str, value: Option<T>, hint: &str) -> Option<T> {
        if value.is_none() {
            self.key(path, "required key is missing", Some(hint.to_owned()));
        }
        value
    }

    fn range(&mut self, path: &str, value: u64, min: u64, max: u64, why: &str) -> u64 {
        if value < min || value > max {
            self.value(
                path,
                format!("{value} is out of range {min}..={max}"),
                Some(why.to_owned()),
            );
        }
        value
    }

    fn https_url(&mut self, path: &str, text: &str, what: &str) -> Option<Url> {
        let url = self.url(path, text, what)?;
        if url.scheme() != "https" {
            self.value(
                path,
                format!(
                    "`{}` must use https, not {}",
                    redact_userinfo(&url),
                    url.scheme()
                ),
                Some(format!(
                    "{what} is only reachable over HTTPS; write `https://…`"
                )),
            );
            return None;
        }
        if !url.username().is_empty() || url.password().is_some() {
            self.value(
                path,
                "the URL must not contain credentials",
                hint("remove `user:password@`"),
            );
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.value(
                path,
                "the URL must not have a query or fragment",
                Some(format!("give only the {what} base URL")),
            );
            return None;
        }
        Some(url)
    }

    fn url(&mut self, path: &str, text: &str, what: &str) -> Option<Url> {
        match Url::parse(text) {
            Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => Some(url),
            Ok(_) => {
                self.value(
                    path,
                    format!("`{text}` has no host"),
                    Some(format!("write the {what} as `https://host[:port]`")),
                );
                None
            }
            Err(error) => {
                self.value(
                    path,
                    format!("`{text}` is not a URL: {error}"),
                    Some(format!("write the {what} as `https://host[:port]`")),
                );
                None
            }
        }
    }

    fn absolute_path(&mut self, path: &str, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        if text.is_empty() {
            self.value(path, "the path is empty", hint("give an absolute path"));
        } else if !p.is_absolute() {
            self.value(
                path,
                format!("`{text}` is not an absolute path"),
                Some(
                    "paths must be absolute so they do not depend on the working directory"
                        .to_owned(),
                ),
            );
        }
        p
    }

    fn secret(&mut self, path: &str, raw: RawSecret) -> Option<SecretRef> {
        match raw {
            RawSecret::Inline => {
                self.value(
                    path,
                    "secrets cannot be written inline in the config",
                    hint(
                        "reference it instead: `{ env: VAR_NAME }` or `{ file: \
                            /var/run/secrets/... }`, so it never lands in a \
                            ConfigMap, in git or in the printed config",
                    ),
                );
                None
            }
            RawSecret::Ref(r) => match (r.env, r.file) {
                (Some(name), None) => {
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        self.value(
                            &format!("{path}.env"),
                            format!("`{name}` is not an environment variable name"),
                            hint(
                                "use letters, digits and `_`, e.g. `{ env: \
                                    FALCON_CLIENT_SECRET }`",
                            ),
                        );
                        return None;
                    }
                    Some(SecretRef::Env(name))
                }
                (None, Some(file)) => {
                    let p = self.absolute_path(&format!("{path}.file"), &file);
                    Some(SecretRef::File(p))
                }
                (Some(_), Some(_)) => {
                    self.value(path, "give either `env` or `file`, not both", None);
                    None
                }
                (None, None) => {
                    self.value(
                        path,
                        "a secret reference needs `env` or `file`",
                        hint("`{ env: VAR_NAME }` or `{ file: /path }`"),
                    );
                    None
                }
            },
        }
    }

    fn stream_name(&mut self, path: &str, name: &str) {
        let body = name
            .strip_prefix("Custom-")
            .or_else(|| name.strip_prefix("Microsoft-"));
        let ok = body.is_some_and(|b| {
            !b.is_empty()
                && b.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) && name.len() <= 256;
        if !ok {
            self.value(
                path,
                format!("`{name}` is not a DCR stream name"),
                hint(
                    "stream names are declared in the DCR and look like \
                        `Custom-FalconEvents` (letters, digits, `_`, `-` after \
                        `Custom-` or `Microsoft-`)",
                ),
            );
        }
    }

    fn guid(&mut self, path: &str, text: &str, what: &str) {
        if !is_guid(text) {
            self.value(
                path,
                format!("`{text}` is not a GUID"),
                Some(format!(
                    "the {what} looks like `00000000-0000-0000-0000-000000000000`"
                )),
            );
        }
    }

    fn tenant(&mut self, path: &str, text: &str) {
        let ok = is_guid(text)
            || (!text.is_empty()
                && text.contains('.')
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        if !ok {
            self.value(
                path,
                format!("`{text}` is not a tenant id"),
                Some(
                    "use the tenant GUID or its domain, e.g. `contoso.onmicrosoft.com`".to_owned(),
                ),
            );
        }
    }

    /// Keys that belong to another `type` of the same section: `(present, path)` pairs.
    fn foreign_keys(&mut self, section: &str, kind: &str, allowed: &str, keys: &[(bool, &str)]) {
        for (present, path) in keys {
            if *present {
                let key = path.rsplit('.').next().unwrap_or(path);
                self.key(
                    path,
                    format!("`{key}` is not a key of {section} type `{kind}`"),
                    Some(format!(
                        "keys of `{kind}`: {allowed}; remove it or change `type`"
                    )),
                );
            }
        }
    }
}

fn redact_userinfo(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(len, part)| is_hex(part, *len))
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

fn to_usize(value: u64) -> usize {
    // Values are range-checked far below usize::MAX on 64-bit targets; saturate elsewhere.
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Checks `raw` and builds the validated [`Config`], or returns every issue found.
pub(crate) fn validate(raw: RawConfig) -> Result<Config, Vec<Issue>> {
    let mut v = Issues::default();
    let falcon = falcon(&mut v, raw.falcon);
    let buffer = buffer(
        &mut v,
        raw.buffer,
        falcon.as_ref().map(|f| f.max_event_bytes),
    );
    let sentinel = sentinel(&mut v, raw.sentinel);
    let dead_letter = dead_letter(&mut v, &raw.dead_letter, buffer.as_ref());

    let listen = raw.admin.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
        v.value(
            "admin.listen",
            format!("`{}` is not an IP:PORT address", raw.admin.listen),
            hint("e.g. `0.0.0.0:8080`, or `[::]:8080` for IPv6"),
        );
    }

    let grace = v.range(
        "shutdown_grace_secs",
        raw.shutdown_grace_secs,
        1,
        3600,
        "keep it below the pod's terminationGracePeriodSeconds \
            (30 by default), so the drain ends before SIGKILL",
    );

    if raw.health.enabled {
        v.stream_name("health.stream", &raw.health.stream);
    }
    let health_interval = v.range(
        "health.interval_secs",
        raw.health.interval_secs,
        10,
        86_400,
        "one record every 10 s to 1 day",
    );

    // tracing-subscriber 0.3's directive parser slices by byte and panics on a multi-byte
    // character (found by the `config` fuzz target): only ASCII reaches it.
    if !raw.log.level.is_ascii() {
        v.value(
            "log.level",
            "a log filter is ASCII: targets, levels and span fields",
            hint("e.g. `info` or `info,falcon_stream=debug`"),
        );
    } else if let Err(error) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        v.value(
            "log.level",
            format!("`{}` is not a log filter: {error}", raw.log.level),
            hint(
                "use a level (error, warn, info, debug, trace) or a \
                    directive such as `info,falcon_stream=debug`",
            ),
        );
    }

    let extra_ca_files = raw
        .tls
        .extra_ca_files
        .iter()
        .enumerate()
        .map(|(i, f)| v.absolute_path(&format!("tls.extra_ca_files[{i}]"), f))
        .collect();

    let (Some(falcon), Some(buffer), Some(sentinel), Some(listen)) =
        (falcon, buffer, sentinel, listen)
    else {
        debug_assert!(!v.0.is_empty(), "a section failed without an issue");
        return Err(ensure_nonempty(v.0));
    };
    if !v.0.is_empty() {
        return Err(v.0);
    }
    Ok(Config {
        falcon,
        buffer,
        sentinel,
        dead_letter,
        admin: AdminConfig { listen },
        shutdown_grace: secs(grace),
        health: HealthConfig {
            enabled: raw.health.enabled,
            stream: raw.health.stream,
            interval: secs(health_interval),
        },
        log: LogConfig {
            level: raw.log.level,
            format: raw.log.format,
        },
        tls: TlsConfig { extra_ca_files },
        origin: String::new(),
        positions: BTreeMap::new(),
    })
}

fn ensure_nonempty(mut issues: Vec<Issue>) -> Vec<Issue> {
    if issues.is_empty() {
        issues.push(Issue {
            path: String::new(),
            at_key: false,
            message: "internal error: validation failed without a reason".to_owned(),
            hint: None,
        });
    }
    issues
}

#[allow(clippy::too_many_lines)] // one linear check per key reads better than helpers
fn falcon(v: &mut Issues, raw: RawFalcon) -> Option<FalconConfig> {
    let (cloud, base_url, base_url_override) = match (raw.cloud, raw.base_url) {
        (Some(_), Some(_)) => {
            v.key(
                "falcon.base_url",
                "give either `cloud` or `base_url`, not both",
                hint("`base_url` replaces the cloud's API host; remove one of them"),
            );
            (None, None, None)
        }
        (None, Some(text)) => {
            let url = v.https_url("falcon.base_url", &text, "the Falcon API");
            (None, url.clone(), url)
        }
        (cloud, None) => {
            let cloud = cloud.unwrap_or(raw::default_cloud());
            match Url::parse(cloud.api_base()) {
                Ok(url) => (Some(cloud), Some(url), None),
                Err(error) => {
                    v.value(
                        "falcon.cloud",
                        format!("internal error: bad API base: {error}"),
                        None,
                    );
                    (None, None, None)
                }
            }
        }
    };

    let client_id = v.required(
        "falcon.client_id",
        raw.client_id,
        "the API client id, e.g. `client_id: ${FALCON_CLIENT_ID}`",
    );
    if let Some(id) = &client_id
        && (id.is_empty() || id.chars().any(char::is_whitespace))
    {
        v.value(
            "falcon.client_id",
            "the client id is empty or contains spaces",
            hint("copy it from Falcon's API clients and keys page"),
        );
    }
    let client_secret = v
        .required(
            "falcon.client_secret",
            raw.client_secret,
            "`client_secret: { env: FALCON_CLIENT_SECRET }` or `{ file: /path }`",
        )
        .and_then(|s| v.secret("falcon.client_secret", s));

    let member_cid = raw.member_cid.map(|cid| {
        if !is_hex(&cid, 32) {
            let hint = if cid.len() == 35 && cid.as_bytes().get(32) == Some(&b'-') {
                "drop the `-XX` checksum suffix: the member CID is the 32 hex characters before it"
            } else {
                "the member CID is 32 hex characters"
            };
            v.value(
                "falcon.member_cid",
                format!("`{cid}` is not a CID"),
                Some(hint.to_owned()),
            );
        }
        cid.to_ascii_lowercase()
    });

    let app_id = v.required(
        "falcon.app_id",
        raw.app_id,
        "a label unique to this bridge instance, e.g. `app_id: fsbridge01`",
    );
    if let Some(app_id) = &app_id
        && (app_id.is_empty()
            || app_id.len() > 32
            || !app_id.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        v.value(
            "falcon.app_id",
            format!("`{app_id}` is not a valid appId"),
            Some(
                "Falcon allows 1 to 32 letters and digits (A-Z, a-z, 0-9), nothing else".to_owned(),
            ),
        );
    }

    let partitions = match raw.partitions {
        RawPartitions::All => Partitions::All,
        RawPartitions::List(mut list) => {
            if list.is_empty() {
                v.value(
                    "falcon.partitions",
                    "the partition list is empty",
                    hint("write `all`, or list at least one partition"),
                );
            }
            list.sort_unstable();
            let len = list.len();
            list.dedup();
            if list.len() != len {
                v.value("falcon.partitions", "a partition is listed twice", None);
            }
            Partitions::Only(list)
        }
    };

    for (i, event_type) in raw.event_types.iter().enumerate() {
        if event_type.is_empty()
            || !event_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            v.value(
                &format!("falcon.event_types[{i}]"),
                format!("`{event_type}` is not an event type"),
                hint("event types are names such as `EppDetectionSummaryEvent`"),
            );
        }
    }

    let read_idle = v.range(
        "falcon.read_idle_timeout_secs",
        raw.read_idle_timeout_secs,
        10,
        3600,
        "Falcon sends keep-alives on quiet streams; clients use 60 to 120 s",
    );
    let max_event = v.range(
        "falcon.max_event_bytes",
        raw.max_event_bytes,
        4096,
        256 * 1024 * 1024,
        "between 4 KiB and 256 MiB",
    );

    let proxy_url = raw.proxy_url.and_then(|text| {
        let url = v.url("falcon.proxy_url", &text, "proxy")?;
        if !matches!(url.scheme(), "http" | "https") {
            v.value(
                "falcon.proxy_url",
                format!("a proxy URL must be http or https, not {}", url.scheme()),
                hint("e.g. `http://proxy.internal:3128`"),
            );
            return None;
        }
        Some(ProxyUrl(url))
    });
    let request_timeout = v.range(
        "falcon.request_timeout_secs",
        raw.request_timeout_secs,
        1,
        600,
        "between 1 s and 10 min",
    );

    let (Some(base_url), Some(client_id), Some(client_secret), Some(app_id)) =
        (base_url, client_id, client_secret, app_id)
    else {
        return None;
    };
    Some(FalconConfig {
        cloud,
        base_url,
        base_url_override,
        client_id,
        client_secret,
        member_cid,
        app_id,
        partitions,
        start: raw.start,
        event_types: raw.event_types,
        read_idle_timeout: secs(read_idle),
        max_event_bytes: to_usize(max_event),
        proxy_url,
        region_autodiscovery: raw.region_autodiscovery,
        request_timeout: secs(request_timeout),
    })
}

const DISK_KEYS: &str = "path, max_bytes";
const KAFKA_KEYS: &str = "brokers, topic, checkpoint_topic, group_id, group_instance_id, \
     max_backlog_bytes, librdkafka_options, security";

fn buffer(v: &mut Issues, raw: RawBuffer, max_event_bytes: Option<usize>) -> Option<BufferConfig> {
    match raw.kind.unwrap_or(BufferType::Disk) {
        BufferType::Disk => {
            v.foreign_keys(
                "buffer",
                "disk",
                DISK_KEYS,
                &[
                    (raw.brokers.is_some(), "buffer.brokers"),
                    (raw.topic.is_some(), "buffer.topic"),
                    (raw.checkpoint_topic.is_some(), "buffer.checkpoint_topic"),
                    (raw.group_id.is_some(), "buffer.group_id"),
                    (raw.group_instance_id.is_some(), "buffer.group_instance_id"),
                    (raw.max_backlog_bytes.is_some(), "buffer.max_backlog_bytes"),
                    (
                        raw.librdkafka_options.is_some(),
                        "buffer.librdkafka_options",
                    ),
                    (raw.security.is_some(), "buffer.security"),
                ],
            );
            let path = v.absolute_path(
                "buffer.path",
                raw.path.as_deref().unwrap_or(raw::default_buffer_path()),
            );
            let max_bytes = v.range(
                "buffer.max_bytes",
                raw.max_bytes.unwrap_or(raw::default_buffer_max_bytes()),
                64 * 1024 * 1024,
                u64::MAX,
                "at least 64 MiB, so a burst of large events fits",
            );
            if let Some(max_event) = max_event_bytes
                && max_bytes < 4 * max_event as u64
            {
                v.value(
                    "buffer.max_bytes",
                    format!(
                        "{max_bytes} bytes cannot hold 4 events of \
                            falcon.max_event_bytes ({max_event})"
                    ),
                    hint("raise buffer.max_bytes or lower falcon.max_event_bytes"),
                );
            }
            Some(BufferConfig::Disk(DiskBufferConfig { path, max_bytes }))
        }
        BufferType::Kafka => kafka_buffer(v, raw),
    }
}

fn kafka_buffer(v: &mut Issues, raw: RawBuffer) -> Option<BufferConfig> {
    v.foreign_keys(
        "buffer",
        "kafka",
        KAFKA_KEYS,
        &[
            (raw.path.is_some(), "buffer.path"),
            (raw.max_bytes.is_some(), "buffer.max_bytes"),
        ],
    );
    let brokers = v.required(
        "buffer.brokers",
        raw.brokers,
        "a list of bootstrap servers, e.g. `brokers: [kafka-0.kafka:9092]`",
    )?;
    if brokers.is_empty() {
        v.value(
            "buffer.brokers",
            "the broker list is empty",
            hint("list at least one `host:port`"),
        );
    }
    for (i, broker) in brokers.iter().enumerate() {
        let ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            v.value(
                &format!("buffer.brokers[{i}]"),
                format!("`{broker}` is not `host:port`"),
                Some(
                    "e.g. `kafka-0.kafka:9092` or `NAMESPACE.servicebus.windows.net:9093`"
                        .to_owned(),
                ),
            );
        }
    }
    let topic = raw
        .topic
        .unwrap_or_else(|| raw::default_kafka_topic().to_owned());
    let checkpoint_topic = raw
        .checkpoint_topic
        .unwrap_or_else(|| raw::default_kafka_checkpoint_topic().to_owned());
    let group_id = raw
        .group_id
        .unwrap_or_else(|| raw::default_kafka_group_id().to_owned());
    kafka_name(v, "buffer.topic", &topic);
    kafka_name(v, "buffer.checkpoint_topic", &checkpoint_topic);
    kafka_name(v, "buffer.group_id", &group_id);
    if topic == checkpoint_topic {
        v.value(
            "buffer.checkpoint_topic",
            "the checkpoint topic must differ from the events topic",
            None,
        );
    }
    if let Some(id) = &raw.group_instance_id {
        kafka_name(v, "buffer.group_instance_id", id);
    }
    let max_backlog_bytes = raw.max_backlog_bytes.map(|cap| {
        v.range(
            "buffer.max_backlog_bytes",
            cap,
            64 * 1024 * 1024,
            u64::MAX,
            "at least 64 MiB; keep it below what the topic's retention holds",
        )
    });
    let librdkafka_options = librdkafka_options(v, raw.librdkafka_options.unwrap_or_default());
    let raw_security = raw.security.unwrap_or_default();
    oauth_scope_needs_oauthbearer(v, &raw_security);
    let security = kafka_security(v, raw_security, &brokers);
    Some(BufferConfig::Kafka(KafkaBufferConfig {
        brokers,
        topic,
        checkpoint_topic,
        group_id,
        group_instance_id: raw.group_instance_id,
        max_backlog_bytes,
        librdkafka_options,
        security,
    }))
}

/// `buffer.librdkafka_options`, without what the guarantee rests on, what has a key of its own,
/// and secrets (each refused with its path).
fn librdkafka_options(
    v: &mut Issues,
    raw: BTreeMap<String, RawScalar>,
) -> BTreeMap<String, String> {
    let mut librdkafka_options = BTreeMap::new();
    for (key, value) in raw {
        let path = format!("buffer.librdkafka_options.{key}");
        if bridge_buffer::kafka::GUARANTEED_PROPERTIES.contains(&key.as_str())
            || OWN_KEY_LIBRDKAFKA_OPTIONS.contains(&key.as_str())
        {
            v.key(
                &path,
                format!("`{key}` is set by the bridge and cannot be overridden"),
                hint(
                    "the delivery guarantee rests on it, or it has its own key \
                     (brokers, group_id, group_instance_id, security)",
                ),
            );
        } else if key.starts_with("sasl.") || key.starts_with("ssl.") {
            v.key(
                &path,
                format!("`{key}` belongs in `buffer.security` or `tls`"),
                hint("secrets go through `{ env: .. }`/`{ file: .. }` there, never inline"),
            );
        } else {
            librdkafka_options.insert(key, value.into_text());
        }
    }
    librdkafka_options
}

/// librdkafka properties `buffer.librdkafka_options` may not set besides the buffer's
/// `GUARANTEED_PROPERTIES` (the delivery guarantee rests on those): a key of our own sets
/// them, or the bridge's behaviour does (`auto.offset.reset=earliest`: never skip records).
const OWN_KEY_LIBRDKAFKA_OPTIONS: &[&str] = &[
    "group.instance.id",
    "security.protocol",
    "auto.offset.reset",
];

fn kafka_name(v: &mut Issues, path: &str, name: &str) {
    if name.is_empty()
        || name.len() > 249
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        v.value(
            path,
            format!("`{name}` is not a valid Kafka name"),
            hint("1 to 249 of letters, digits, `.`, `_`, `-`"),
        );
    }
}

fn kafka_security(v: &mut Issues, raw: RawKafkaSecurity, brokers: &[String]) -> KafkaSecurity {
    let protocol = raw.protocol.unwrap_or(raw::default_kafka_protocol());
    let password = raw
        .password
        .and_then(|s| v.secret("buffer.security.password", s));
    let connection_string = raw
        .event_hubs_connection_string
        .and_then(|s| v.secret("buffer.security.event_hubs_connection_string", s));
    let mut security = KafkaSecurity {
        protocol,
        sasl_mechanism: raw.sasl_mechanism,
        username: raw.username,
        password,
        event_hubs_connection_string: connection_string,
        oauth_scope: None,
    };
    if security.event_hubs_connection_string.is_some() {
        if protocol != KafkaProtocol::SaslSsl {
            v.value(
                "buffer.security.protocol",
                "Event Hubs requires `sasl_ssl`",
                hint("set `protocol: sasl_ssl` with an Event Hubs connection string"),
            );
        }
        if security
            .sasl_mechanism
            .is_some_and(|m| m != SaslMechanism::Plain)
        {
            v.value(
                "buffer.security.sasl_mechanism",
                "Event Hubs connection strings use the `plain` mechanism",
                hint("set `sasl_mechanism: plain` or leave it out"),
            );
        }
        if security.username.is_some() || security.password.is_some() {
            v.key(
                if security.username.is_some() {
                    "buffer.security.username"
                } else {
                    "buffer.security.password"
                },
                "`username`/`password` cannot be combined with `event_hubs_connection_string`",
                hint(
                    "the user name is `$ConnectionString` and the password \
                        is the connection string; remove username and password",
                ),
            );
        }
        security.sasl_mechanism = Some(SaslMechanism::Plain);
        return security;
    }
    if security.protocol_uses_sasl() {
        match security.sasl_mechanism {
            None => v.key(
                "buffer.security.sasl_mechanism",
                "required key is missing",
                hint(
                    "a `sasl_*` protocol needs `sasl_mechanism`: plain, \
                        scram-sha-256, scram-sha-512 or oauthbearer",
                ),
            ),
            Some(SaslMechanism::OauthBearer) => {
                security.oauth_scope = oauth_bearer(v, &security, raw.oauth_scope, brokers);
            }
            Some(_) => {
                if security.username.is_none() {
                    v.key(
                        "buffer.security.username",
                        "required key is missing",
                        hint("plain and scram mechanisms need `username` and `password`"),
                    );
                }
                if security.password.is_none() {
                    v.key(
                        "buffer.security.password",
                        "required key is missing",
                        hint("`password: { env: KAFKA_PASSWORD }` or `{ file: /path }`"),
                    );
                }
            }
        }
    } else {
        for (present, key) in [
            (security.sasl_mechanism.is_some(), "sasl_mechanism"),
            (security.username.is_some(), "username"),
            (security.password.is_some(), "password"),
        ] {
            if present {
                v.key(
                    &format!("buffer.security.{key}"),
                    format!("`{key}` has no effect without SASL"),
                    hint("set `protocol: sasl_ssl` (or sasl_plaintext), or remove it"),
                );
            }
        }
    }
    security
}

/// `oauth_scope` only means something with `sasl_mechanism: oauthbearer`.
fn oauth_scope_needs_oauthbearer(v: &mut Issues, raw: &RawKafkaSecurity) {
    if raw.sasl_mechanism != Some(SaslMechanism::OauthBearer) && raw.oauth_scope.is_some() {
        v.key(
            "buffer.security.oauth_scope",
            "`oauth_scope` has no effect without `sasl_mechanism: oauthbearer`",
            hint("remove it, or set `sasl_mechanism: oauthbearer`"),
        );
    }
}

/// Checks an `oauthbearer` section and returns its scope: `oauth_scope`, or
/// `https://HOST/.default` for the first broker's host (Event Hubs: the namespace, whose
/// tokens have audience `https://NAMESPACE.servicebus.windows.net`).
fn oauth_bearer(
    v: &mut Issues,
    security: &KafkaSecurity,
    scope: Option<String>,
    brokers: &[String],
) -> Option<String> {
    for (present, key) in [
        (security.username.is_some(), "username"),
        (security.password.is_some(), "password"),
    ] {
        if present {
            v.key(
                &format!("buffer.security.{key}"),
                format!("`{key}` has no effect with `oauthbearer`"),
                hint(
                    "oauthbearer authenticates with an Entra ID token of \
                     `sentinel.credential`'s identity; remove it",
                ),
            );
        }
    }
    let path = "buffer.security.oauth_scope";
    let Some(scope) = scope else {
        let host = brokers.first()?.rsplit_once(':')?.0;
        return Some(format!("https://{host}/.default"));
    };
    let valid = Url::parse(&scope).is_ok_and(|u| {
        u.scheme() == "https" && u.host_str().is_some() && u.path().ends_with("/.default")
    });
    if !valid {
        v.value(
            path,
            format!("`{scope}` is not an Entra scope for the client credentials flow"),
            hint("e.g. `https://NAMESPACE.servicebus.windows.net/.default`"),
        );
        return None;
    }
    Some(scope)
}

#[allow(clippy::too_many_lines)] // one linear check per key reads better than helpers
fn sentinel(v: &mut Issues, raw: RawSentinel) -> Option<SentinelConfig> {
    let endpoint = v
        .required(
            "sentinel.endpoint",
            raw.endpoint,
            "the DCE or DCR `logsIngestion` endpoint, e.g. \
                `https://my-dce.eastus-1.ingest.monitor.azure.com`",
        )
        .and_then(|text| v.https_url("sentinel.endpoint", &text, "the Logs Ingestion endpoint"));
    let dcr = v.required(
        "sentinel.dcr_immutable_id",
        raw.dcr_immutable_id,
        "the DCR's `immutableId`, `dcr-` followed by 32 hex characters",
    );
    if let Some(dcr) = &dcr
        && !dcr.strip_prefix("dcr-").is_some_and(|hex| is_hex(hex, 32))
    {
        v.value(
            "sentinel.dcr_immutable_id",
            format!("`{dcr}` is not a DCR immutable id"),
            Some(
                "copy `properties.immutableId` of the DCR: `dcr-` followed by 32 hex characters"
                    .to_owned(),
            ),
        );
    }
    v.stream_name("sentinel.default_stream", &raw.default_stream);
    let mut streams = BTreeMap::new();
    for (event_type, stream) in raw.streams {
        let path = format!("sentinel.streams.{event_type}");
        v.stream_name(&path, &stream);
        if streams
            .insert(event_type.to_ascii_lowercase(), stream)
            .is_some()
        {
            v.key(
                &path,
                format!("event type `{event_type}` is mapped twice (names are case-insensitive)"),
                None,
            );
        }
    }
    let credential = v
        .required(
            "sentinel.credential",
            raw.credential,
            "e.g. `credential: { type: workload_identity }` on AKS",
        )
        .and_then(|c| credential(v, c));
    let authority_host = v.https_url(
        "sentinel.authority_host",
        &raw.authority_host,
        "the Entra ID authority",
    );
    let audience = v.https_url("sentinel.audience", &raw.audience, "the token audience");

    let max_batch = match raw.batch_limit {
        BatchLimit::Uncompressed => v.range(
            "sentinel.max_batch_bytes",
            raw.max_batch_bytes,
            1024,
            1_000_000,
            "the Logs Ingestion API accepts at most 1 MB per call; \
                use `batch_limit: compressed` to measure after gzip",
        ),
        BatchLimit::Compressed => v.range(
            "sentinel.max_batch_bytes",
            raw.max_batch_bytes,
            1024,
            50 * 1024 * 1024,
            "in compressed mode this caps the decompressed JSON, \
                which Azure limits to 50 MiB",
        ),
    };
    let linger = v.range(
        "sentinel.batch_linger_ms",
        raw.batch_linger_ms,
        0,
        60_000,
        "at most one minute",
    );
    let concurrency = v.range(
        "sentinel.max_concurrency",
        raw.max_concurrency,
        1,
        64,
        "between 1 and 64 requests in flight",
    );
    let gzip = v.range(
        "sentinel.gzip_level",
        raw.gzip_level,
        1,
        12,
        "libdeflate levels are 1 (fastest) to 12 (smallest)",
    );
    let request_timeout = v.range(
        "sentinel.request_timeout_secs",
        raw.request_timeout_secs,
        1,
        600,
        "between 1 s and 10 min",
    );
    let retry_initial = v.range(
        "sentinel.retry_initial_ms",
        raw.retry_initial_ms,
        1,
        60_000,
        "between 1 ms and 1 min",
    );
    let retry_max = v.range(
        "sentinel.retry_max_secs",
        raw.retry_max_secs,
        1,
        3600,
        "between 1 s and 1 h",
    );
    if retry_initial > retry_max.saturating_mul(1000) {
        v.value(
            "sentinel.retry_initial_ms",
            "the first retry delay is longer than retry_max_secs",
            hint("lower retry_initial_ms or raise retry_max_secs"),
        );
    }

    let (Some(endpoint), Some(dcr), Some(credential), Some(authority_host), Some(audience)) =
        (endpoint, dcr, credential, authority_host, audience)
    else {
        return None;
    };
    Some(SentinelConfig {
        endpoint,
        dcr_immutable_id: dcr.to_ascii_lowercase(),
        default_stream: raw.default_stream,
        streams,
        credential,
        authority_host,
        audience,
        batch_limit: raw.batch_limit,
        max_batch_bytes: to_usize(max_batch),
        batch_linger: Duration::from_millis(linger),
        max_concurrency: to_usize(concurrency),
        gzip_level: u8::try_from(gzip).unwrap_or(u8::MAX),
        request_timeout: secs(request_timeout),
        retry_initial: Duration::from_millis(retry_initial),
        retry_max: secs(retry_max),
    })
}

const WORKLOAD_KEYS: &str = "tenant_id, client_id, token_file (all optional)";
const MANAGED_KEYS: &str = "at most one of client_id, resource_id, object_id";
const SECRET_KEYS: &str = "tenant_id, client_id, client_secret";
const CERTIFICATE_KEYS: &str = "tenant_id, client_id, certificate, password (optional)";

fn credential(v: &mut Issues, raw: RawCredential) -> Option<CredentialConfig> {
    let kind = v.required(
        "sentinel.credential.type",
        raw.kind,
        "workload_identity (AKS), managed_identity (Azure VM/ACI), client_secret or \
         client_certificate",
    )?;
    if let Some(tenant) = &raw.tenant_id {
        v.tenant("sentinel.credential.tenant_id", tenant);
    }
    if let Some(client) = &raw.client_id {
        v.guid("sentinel.credential.client_id", client, "client id");
    }
    match kind {
        CredentialType::WorkloadIdentity => {
            v.foreign_keys(
                "credential",
                "workload_identity",
                WORKLOAD_KEYS,
                &[
                    (raw.resource_id.is_some(), "sentinel.credential.resource_id"),
                    (raw.object_id.is_some(), "sentinel.credential.object_id"),
                    (
                        raw.client_secret.is_some(),
                        "sentinel.credential.client_secret",
                    ),
                    (raw.certificate.is_some(), "sentinel.credential.certificate"),
                    (raw.password.is_some(), "sentinel.credential.password"),
                ],
            );
            let token_file = raw
                .token_file
                .map(|f| v.absolute_path("sentinel.credential.token_file", &f));
            Some(CredentialConfig::WorkloadIdentity {
                tenant_id: raw.tenant_id,
                client_id: raw.client_id,
                token_file,
            })
        }
        CredentialType::ManagedIdentity => Some(managed_identity(v, raw)),
        CredentialType::ClientSecret => {
            v.foreign_keys(
                "credential",
                "client_secret",
                SECRET_KEYS,
                &[
                    (raw.token_file.is_some(), "sentinel.credential.token_file"),
                    (raw.resource_id.is_some(), "sentinel.credential.resource_id"),
                    (raw.object_id.is_some(), "sentinel.credential.object_id"),
                    (raw.certificate.is_some(), "sentinel.credential.certificate"),
                    (raw.password.is_some(), "sentinel.credential.password"),
                ],
            );
            let tenant_id = v.required(
                "sentinel.credential.tenant_id",
                raw.tenant_id,
                "the Entra tenant GUID or domain",
            );
            let client_id = v.required(
                "sentinel.credential.client_id",
                raw.client_id,
                "the app registration's client id",
            );
            let secret = v
                .required(
                    "sentinel.credential.client_secret",
                    raw.client_secret,
                    "`client_secret: { env: AZURE_CLIENT_SECRET }` or `{ file: /path }`",
                )
                .and_then(|s| v.secret("sentinel.credential.client_secret", s));
            let (Some(tenant_id), Some(client_id), Some(client_secret)) =
                (tenant_id, client_id, secret)
            else {
                return None;
            };
            Some(CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            })
        }
        CredentialType::ClientCertificate => client_certificate(v, raw),
    }
}

fn client_certificate(v: &mut Issues, raw: RawCredential) -> Option<CredentialConfig> {
    v.foreign_keys(
        "credential",
        "client_certificate",
        CERTIFICATE_KEYS,
        &[
            (raw.token_file.is_some(), "sentinel.credential.token_file"),
            (raw.resource_id.is_some(), "sentinel.credential.resource_id"),
            (raw.object_id.is_some(), "sentinel.credential.object_id"),
            (
                raw.client_secret.is_some(),
                "sentinel.credential.client_secret",
            ),
        ],
    );
    let tenant_id = v.required(
        "sentinel.credential.tenant_id",
        raw.tenant_id,
        "the Entra tenant GUID or domain",
    );
    let client_id = v.required(
        "sentinel.credential.client_id",
        raw.client_id,
        "the app registration's client id",
    );
    let certificate = v
        .required(
            "sentinel.credential.certificate",
            raw.certificate,
            "`certificate: { file: /var/run/secrets/azure/client.pfx }` (PKCS#12)",
        )
        .and_then(|s| v.secret("sentinel.credential.certificate", s))
        .and_then(|s| match s {
            SecretRef::File(_) => Some(s),
            // A PKCS#12 bundle is binary; an environment variable cannot carry it intact.
            SecretRef::Env(_) => {
                v.value(
                    "sentinel.credential.certificate.env",
                    "the certificate must be a file: a PKCS#12 bundle is binary",
                    hint(
                        "mount it (e.g. a Kubernetes secret) and use `certificate: { file: \
                         /var/run/secrets/azure/client.pfx }`",
                    ),
                );
                None
            }
        });
    // `None` when the key is absent; a present but invalid reference is reported and the
    // credential is not built.
    let password = match raw.password {
        None => Some(None),
        Some(p) => v.secret("sentinel.credential.password", p).map(Some),
    };
    let (Some(tenant_id), Some(client_id), Some(certificate), Some(password)) =
        (tenant_id, client_id, certificate, password)
    else {
        return None;
    };
    Some(CredentialConfig::ClientCertificate {
        tenant_id,
        client_id,
        certificate,
        password,
    })
}

fn managed_identity(v: &mut Issues, raw: RawCredential) -> CredentialConfig {
    v.foreign_keys(
        "credential",
        "managed_identity",
        MANAGED_KEYS,
        &[
            (raw.tenant_id.is_some(), "sentinel.credential.tenant_id"),
            (raw.token_file.is_some(), "sentinel.credential.token_file"),
            (
                raw.client_secret.is_some(),
                "sentinel.credential.client_secret",
            ),
            (raw.certificate.is_some(), "sentinel.credential.certificate"),
            (raw.password.is_some(), "sentinel.credential.password"),
        ],
    );
    if let Some(object) = &raw.object_id {
        v.guid("sentinel.credential.object_id", object, "object id");
    }
    if let Some(resource) = &raw.resource_id
        && !(resource.starts_with("/subscriptions/")
            && resource.contains("/providers/Microsoft.ManagedIdentity/"))
    {
        v.value(
            "sentinel.credential.resource_id",
            format!("`{resource}` is not a managed identity resource id"),
            hint(
                "it looks like `/subscriptions/…/resourceGroups/…/providers/\
                    Microsoft.ManagedIdentity/userAssignedIdentities/NAME`",
            ),
        );
    }
    let id = match (raw.client_id, raw.resource_id, raw.object_id) {
        (None, None, None) => None,
        (Some(c), None, None) => Some(ManagedIdentityId::ClientId(c)),
        (None, Some(r), None) => Some(ManagedIdentityId::ResourceId(r)),
        (None, None, Some(o)) => Some(ManagedIdentityId::ObjectId(o)),
        _ => {
            v.value(
                "sentinel.credential",
                "give at most one of `client_id`, `resource_id` and \
                    `object_id`",
                hint(
                    "each one names a user-assigned identity; leave all out \
                        for the system-assigned identity",
                ),
            );
            None
        }
    };
    CredentialConfig::ManagedIdentity { id }
}

fn dead_letter(
    v: &mut Issues,
    raw: &RawDeadLetter,
    buffer: Option<&BufferConfig>,
) -> DeadLetterConfig {
    let kind = raw.kind.unwrap_or(super::model::DeadLetterType::Directory);
    let default_max = match kind {
        super::model::DeadLetterType::Directory => raw::default_dead_letter_max_record_bytes(),
        super::model::DeadLetterType::Kafka => raw::default_kafka_dead_letter_max_record_bytes(),
    };
    let max = to_usize(v.range(
        "dead_letter.max_record_bytes",
        raw.max_record_bytes.unwrap_or(default_max),
        1024,
        256 * 1024 * 1024,
        "between 1 KiB and 256 MiB",
    ));
    match kind {
        super::model::DeadLetterType::Directory => {
            v.foreign_keys(
                "dead_letter",
                "directory",
                "path, max_record_bytes",
                &[(raw.topic.is_some(), "dead_letter.topic")],
            );
            let path = v.absolute_path(
                "dead_letter.path",
                raw.path
                    .as_deref()
                    .unwrap_or(raw::default_dead_letter_path()),
            );
            DeadLetterConfig::Directory {
                path,
                max_record_bytes: max,
            }
        }
        super::model::DeadLetterType::Kafka => {
            v.foreign_keys(
                "dead_letter",
                "kafka",
                "topic, max_record_bytes",
                &[(raw.path.is_some(), "dead_letter.path")],
            );
            let topic = raw
                .topic
                .clone()
                .unwrap_or_else(|| raw::default_dead_letter_topic().to_owned());
            kafka_name(v, "dead_letter.topic", &topic);
            match buffer {
                Some(BufferConfig::Kafka(kafka))
                    if topic == kafka.topic || topic == kafka.checkpoint_topic =>
                {
                    v.value(
                        "dead_letter.topic",
                        format!("`{topic}` is also buffer.topic or buffer.checkpoint_topic"),
                        hint("dead letters need a topic of their own, e.g. `falcon-dead-letters`"),
                    );
                }
                Some(BufferConfig::Disk(_)) => v.value(
                    "dead_letter.type",
                    "a Kafka dead-letter topic needs `buffer.type: kafka` \
                        (it uses the buffer's brokers and security)",
                    hint("use `dead_letter.type: directory` with a disk buffer"),
                ),
                // Fine; or the buffer section failed, with errors of its own.
                Some(BufferConfig::Kafka(_)) | None => {}
            }
            DeadLetterConfig::Kafka {
                topic,
                max_record_bytes: max,
            }
        }
    }
}

/// Paths of files the config refers to, with the key path naming each (for `check_files`).
pub(crate) fn file_refs(config: &Config) -> Vec<(String, &Path, FileUse)> {
    let mut refs = Vec::new();
    for (i, f) in config.tls.extra_ca_files.iter().enumerate() {
        refs.push((
            format!("tls.extra_ca_files[{i}]"),
            f.as_path(),
            FileUse::CaBundle,
        ));
    }
    let mut secrets: Vec<(&str, &SecretRef)> =
        vec![("falcon.client_secret", &config.falcon.client_secret)];
    match &config.sentinel.credential {
        CredentialConfig::ClientSecret { client_secret, .. } => {
            secrets.push(("sentinel.credential.client_secret", client_secret));
        }
        CredentialConfig::ClientCertificate {
            certificate,
            password,
            ..
        } => {
            secrets.push(("sentinel.credential.certificate", certificate));
            if let Some(p) = password {
                secrets.push(("sentinel.credential.password", p));
            }
        }
        _ => {}
    }
    if let BufferConfig::Kafka(k) = &config.buffer {
        if let Some(p) = &k.security.password {
            secrets.push(("buffer.security.password", p));
        }
        if let Some(c) = &k.security.event_hubs_connection_string {
            secrets.push(("buffer.security.event_hubs_connection_string", c));
        }
    }
    for (path, secret) in secrets {
        if let SecretRef::File(f) = secret {
            refs.push((format!("{path}.file"), f.as_path(), FileUse::Secret));
        }
    }
    if let CredentialConfig::WorkloadIdentity {
        token_file: Some(f),
        ..
    } = &config.sentinel.credential
    {
        refs.push((
            "sentinel.credential.token_file".to_owned(),
            f.as_path(),
            FileUse::Secret,
        ));
    }
    refs
}

/// What a referenced file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileUse {
    /// PEM trust roots.
    CaBundle,
    /// A secret or token.
    Secret,
}
