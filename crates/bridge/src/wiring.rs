//! From the validated config to each library's own configuration. The libraries never see
//! the YAML schema, and secrets are resolved here, at start-up, and nowhere else.

use anyhow::Context as _;
use falcon_stream::{PartitionSelection, SourceConfig};
use sentinel_ingest::{BatchLimit, CredentialSpec, IngestConfig, RetryConfig, UserAssigned};

use crate::config::{self, Config, CredentialConfig, Env, ManagedIdentityId, Partitions};
use crate::pipeline::router::StreamRouter;

/// The Falcon source's configuration, with its secret resolved.
pub fn source_config(
    cfg: &Config,
    env: &dyn Env,
    extra_ca_pems: &[Vec<u8>],
) -> anyhow::Result<SourceConfig> {
    let falcon = &cfg.falcon;
    let secret = falcon
        .client_secret
        .resolve(env)
        .context("resolve falcon.client_secret")?;
    let mut source = SourceConfig::new(
        falcon.base_url.clone(),
        falcon.client_id.clone(),
        secret.expose(),
        falcon.app_id.clone(),
    );
    source.member_cid.clone_from(&falcon.member_cid);
    source.partitions = match &falcon.partitions {
        Partitions::All => PartitionSelection::All,
        Partitions::Only(list) => PartitionSelection::List(list.clone()),
    };
    source.start = match falcon.start {
        config::StartPosition::Earliest => falcon_stream::StartPosition::Earliest,
        config::StartPosition::Latest => falcon_stream::StartPosition::Latest,
        config::StartPosition::Offset(offset) => falcon_stream::StartPosition::Offset(offset),
    };
    source.event_types.clone_from(&falcon.event_types);
    source.read_idle_timeout = falcon.read_idle_timeout;
    source.max_event_bytes = falcon.max_event_bytes;
    source.extra_ca_pems = extra_ca_pems.to_vec();
    source.proxy_url = falcon.proxy_url.as_ref().map(|p| p.expose().clone());
    source.region_autodiscovery = falcon.region_autodiscovery;
    source.request_timeout = falcon.request_timeout;
    Ok(source)
}

/// The Logs Ingestion client's configuration.
pub fn ingest_config(cfg: &Config, extra_ca_pems: &[Vec<u8>]) -> IngestConfig {
    let sentinel = &cfg.sentinel;
    let mut ingest =
        IngestConfig::new(sentinel.endpoint.clone(), sentinel.dcr_immutable_id.clone());
    ingest.audience = sentinel.audience.clone();
    ingest.authority_host = Some(sentinel.authority_host.clone());
    ingest.extra_ca_pems = extra_ca_pems.to_vec();
    ingest.request_timeout = sentinel.request_timeout;
    ingest.batch_limit = match sentinel.batch_limit {
        config::BatchLimit::Uncompressed => BatchLimit::Uncompressed {
            max_bytes: sentinel.max_batch_bytes,
        },
        config::BatchLimit::Compressed => BatchLimit::Compressed {
            max_compressed_bytes: sentinel_ingest::DEFAULT_MAX_COMPRESSED_BYTES,
            max_decompressed_bytes: sentinel.max_batch_bytes,
        },
    };
    ingest.gzip_level = sentinel.gzip_level;
    let defaults = RetryConfig::default();
    ingest.retry = RetryConfig {
        initial: sentinel.retry_initial,
        max: sentinel.retry_max,
        // "Slowly" for a 403/404 means at the backoff cap, at most the library's 30 s.
        forbidden_retry_interval: defaults.forbidden_retry_interval.min(sentinel.retry_max),
    };
    ingest.max_in_flight = sentinel.max_concurrency;
    ingest
}

/// Raw event bytes the writer hands to one `deliver` call. In the default mode a chunk
/// becomes one request body: the record envelope (`TimeGenerated`, `EventId`, …) adds about
/// 10% to a ~1.5 KB event, so 85% of the body limit fills one body without spilling a small
/// second one. In compressed mode a body holds ~1 MiB of gzip, about 6–8 MiB of JSON; a
/// chunk of 6 MiB keeps memory bounded (`max_concurrency` chunks in flight).
pub fn writer_chunk_bytes(cfg: &Config) -> usize {
    match cfg.sentinel.batch_limit {
        config::BatchLimit::Uncompressed => cfg.sentinel.max_batch_bytes / 100 * 85,
        config::BatchLimit::Compressed => 6 * 1024 * 1024,
    }
}

/// The Entra credential, with its secret (or certificate file) resolved.
pub fn credential(cfg: &Config, env: &dyn Env) -> anyhow::Result<CredentialSpec> {
    Ok(match &cfg.sentinel.credential {
        CredentialConfig::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => CredentialSpec::WorkloadIdentity {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            token_file: token_file.clone(),
        },
        CredentialConfig::ManagedIdentity { id } => CredentialSpec::ManagedIdentity {
            user_assigned: id.as_ref().map(|id| match id {
                ManagedIdentityId::ClientId(v) => UserAssigned::ClientId(v.clone()),
                ManagedIdentityId::ResourceId(v) => UserAssigned::ResourceId(v.clone()),
                ManagedIdentityId::ObjectId(v) => UserAssigned::ObjectId(v.clone()),
            }),
        },
        CredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        } => CredentialSpec::ClientSecret {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            secret: client_secret
                .resolve(env)
                .context("resolve sentinel.credential.client_secret")?
                .expose()
                .to_owned(),
        },
        // The PKCS#12 file is read here, once at start; a rotated certificate takes effect
        // on restart (as does a rotated client secret).
        CredentialConfig::ClientCertificate {
            tenant_id,
            client_id,
            certificate,
            password,
        } => CredentialSpec::ClientCertificate {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            certificate: certificate
                .resolve_bytes()
                .context("read sentinel.credential.certificate")?
                .expose()
                .to_vec(),
            password: password
                .as_ref()
                .map(|p| {
                    p.resolve(env)
                        .context("resolve sentinel.credential.password")
                        .map(|s| s.expose().to_owned())
                })
                .transpose()?,
        },
    })
}

/// The event-type → stream router.
pub fn router(cfg: &Config) -> StreamRouter {
    StreamRouter::new(
        &cfg.sentinel.default_stream,
        cfg.sentinel
            .streams
            .iter()
            .map(|(event_type, stream)| (event_type.as_str(), stream.as_str())),
    )
}

/// The dead-letter directory and the cap on raw bytes kept per letter; `None` when dead
/// letters go to a Kafka topic ([`dead_letter_kafka`]).
pub fn dead_letter_dir(cfg: &Config) -> Option<(&std::path::Path, usize)> {
    match &cfg.dead_letter {
        config::DeadLetterConfig::Directory {
            path,
            max_record_bytes,
        } => Some((path.as_path(), *max_record_bytes)),
        config::DeadLetterConfig::Kafka { .. } => None,
    }
}

/// The dead-letter topic with the buffer's connection settings (secrets resolved).
#[derive(Debug, Clone)]
pub struct KafkaDeadLetters {
    /// The buffer's connection settings (its topics are not used).
    pub connection: bridge_buffer::kafka::KafkaBufferConfig,
    /// The dead-letter topic.
    pub topic: String,
    /// The consumer group `dead-letter list`/`redrive` track their progress with:
    /// `{buffer.group_id}-dead-letter-redrive`.
    pub redrive_group: String,
    /// The cap on raw bytes kept per letter.
    pub max_record_bytes: usize,
}

/// The Kafka dead-letter destination, or `None` when dead letters go to a directory.
/// Validation guarantees `buffer.type: kafka` with it.
pub fn dead_letter_kafka(cfg: &Config, env: &dyn Env) -> anyhow::Result<Option<KafkaDeadLetters>> {
    let config::DeadLetterConfig::Kafka {
        topic,
        max_record_bytes,
    } = &cfg.dead_letter
    else {
        return Ok(None);
    };
    let config::BufferConfig::Kafka(kafka) = &cfg.buffer else {
        anyhow::bail!("dead_letter.type kafka needs buffer.type kafka");
    };
    Ok(Some(KafkaDeadLetters {
        connection: kafka_buffer_config(kafka, cfg, env)?,
        topic: topic.clone(),
        redrive_group: format!("{}-dead-letter-redrive", kafka.group_id),
        max_record_bytes: *max_record_bytes,
    }))
}

/// OAUTHBEARER tokens for `scope`, of `sentinel.credential`'s identity, through the same
/// authority host and extra CAs as the Logs Ingestion client. Needs a tokio runtime.
fn kafka_oauth_tokens(
    cfg: &Config,
    env: &dyn Env,
    scope: &str,
) -> anyhow::Result<crate::kafka_oauth::EntraKafkaTokens> {
    let runtime = tokio::runtime::Handle::try_current()
        .context("OAUTHBEARER tokens are fetched on the tokio runtime; none is running")?;
    let extra_ca_pems = crate::pipeline::read_extra_cas(cfg)?;
    let source = sentinel_ingest::EntraTokenSource::new(
        credential(cfg, env)?,
        scope,
        &extra_ca_pems,
        Some(&cfg.sentinel.authority_host),
        cfg.sentinel.request_timeout,
    )
    .context("build the Entra credential for Kafka OAUTHBEARER")?;
    Ok(crate::kafka_oauth::EntraKafkaTokens::new(source, runtime))
}

/// The Kafka buffer's configuration, with its secrets resolved. Event Hubs' Kafka endpoint
/// takes SASL PLAIN with the user `$ConnectionString` and the connection string as password.
pub fn kafka_buffer_config(
    kafka: &config::KafkaBufferConfig,
    cfg: &Config,
    env: &dyn Env,
) -> anyhow::Result<bridge_buffer::kafka::KafkaBufferConfig> {
    use bridge_buffer::kafka::{SaslMechanism, SecurityProtocol};
    let mut out = bridge_buffer::kafka::KafkaBufferConfig::new(
        kafka.brokers.clone(),
        kafka.topic.clone(),
        kafka.checkpoint_topic.clone(),
        kafka.group_id.clone(),
    );
    let security = &kafka.security;
    out.security.protocol = match security.protocol {
        config::KafkaProtocol::Plaintext => SecurityProtocol::Plaintext,
        config::KafkaProtocol::Ssl => SecurityProtocol::Ssl,
        config::KafkaProtocol::SaslPlaintext => SecurityProtocol::SaslPlaintext,
        config::KafkaProtocol::SaslSsl => SecurityProtocol::SaslSsl,
    };
    out.security.sasl_mechanism = security.sasl_mechanism.map(|m| match m {
        config::SaslMechanism::Plain => SaslMechanism::Plain,
        config::SaslMechanism::ScramSha256 => SaslMechanism::ScramSha256,
        config::SaslMechanism::ScramSha512 => SaslMechanism::ScramSha512,
        config::SaslMechanism::OauthBearer => SaslMechanism::OAuthBearer,
    });
    out.security.username.clone_from(&security.username);
    if let Some(password) = &security.password {
        let secret = password
            .resolve(env)
            .context("resolve buffer.security.password")?;
        out.security.password = Some(secret.expose().to_owned());
    }
    if let Some(connection) = &security.event_hubs_connection_string {
        let secret = connection
            .resolve(env)
            .context("resolve buffer.security.event_hubs_connection_string")?;
        out.security.username = Some("$ConnectionString".to_owned());
        out.security.password = Some(secret.expose().to_owned());
        out.security.sasl_mechanism = Some(SaslMechanism::Plain);
    }
    if let Some(scope) = &security.oauth_scope {
        out.security.oauth_token_source =
            Some(std::sync::Arc::new(kafka_oauth_tokens(cfg, env, scope)?));
    }
    out.security
        .ca_pem_files
        .clone_from(&cfg.tls.extra_ca_files);
    out.group_instance_id.clone_from(&kafka.group_instance_id);
    out.max_backlog_bytes = kafka.max_backlog_bytes;
    out.extra.clone_from(&kafka.librdkafka_options);
    Ok(out)
}
