//! [`TopicWriter`]: a durable producer to one topic (the dead-letter topic), over the same
//! connection settings as the buffer.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::client::Client;

use super::{KafkaBufferConfig, LogContext, blocking, enqueue, producer_config};
use crate::BufferError;

/// Bytes a message needs besides its key and value in a record batch (headers, lengths,
/// timestamps, batch header share), kept as a margin below `message.max.bytes`.
const MESSAGE_OVERHEAD: usize = 512;

/// A producer to one topic that resolves [`send`](Self::send) only once every message is
/// acknowledged by all in-sync replicas.
///
/// Same guarantees as the buffer's producer: idempotent, `acks=all`,
/// `message.timeout.ms=0` (while brokers are unreachable a send waits; it never times out
/// and nothing is dropped), `enable.gapless.guarantee=true` (a failure that could lose a
/// message stops the writer for good: [`BufferError::Failed`]).
#[derive(Clone)]
pub struct TopicWriter {
    producer: FutureProducer<LogContext>,
    topic: String,
    message_max_bytes: usize,
}

impl std::fmt::Debug for TopicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicWriter")
            .field("topic", &self.topic)
            .field("message_max_bytes", &self.message_max_bytes)
            .finish_non_exhaustive()
    }
}

impl TopicWriter {
    /// Connects to the brokers of `config` (its security, CA files and `extra` properties;
    /// its topics are not used) and checks that `topic` exists: a missing topic is a
    /// [`BufferError::KafkaTopic`] naming it and the brokers, as for the buffer's topics.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(config: &KafkaBufferConfig, topic: &str) -> Result<Self, BufferError> {
        config.validate()?;
        if topic.trim().is_empty() {
            return Err(BufferError::KafkaConfig {
                reason: "the topic of a topic writer must not be empty".into(),
            });
        }
        let base = config.client_config()?;
        let pc = producer_config(&base, config);
        let log = LogContext::new(config);
        let producer: FutureProducer<LogContext> =
            pc.create_with_context(log.clone())
                .map_err(|source| BufferError::Kafka {
                    operation: "create topic producer",
                    source,
                })?;
        {
            let producer = producer.clone();
            let topic = topic.to_owned();
            let brokers = config.brokers.join(",");
            let timeout = config.connect_timeout;
            blocking(move || topic_partitions(producer.client(), &log, &topic, &brokers, timeout))
                .await?;
        }
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            message_max_bytes: config.message_max_bytes(),
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The largest key + value [`send`](Self::send) accepts (`message.max.bytes` less a
    /// margin for the message's framing).
    pub fn max_message_bytes(&self) -> usize {
        self.message_max_bytes.saturating_sub(MESSAGE_OVERHEAD)
    }

    /// Produces one message per payload, all with `key` (so they land in one partition, in
    /// order), and resolves once every one is acknowledged by the brokers. Waits while the
    /// brokers are unreachable or librdkafka's queue is full.
    ///
    /// A payload larger than [`max_message_bytes`](Self::max_message_bytes) refuses the whole
    /// call before anything is produced ([`BufferError::Unencodable`]). On an error, some
    /// messages may have been written: a retry may duplicate them, never lose one.
    pub async fn send(&self, key: &str, payloads: Vec<Vec<u8>>) -> Result<(), BufferError> {
        if payloads
            .iter()
            .any(|p| p.len() + key.len() > self.max_message_bytes())
        {
            return Err(BufferError::Unencodable {
                reason: "message larger than message.max.bytes",
            });
        }
        let mut deliveries = Vec::with_capacity(payloads.len());
        for payload in &payloads {
            let record = FutureRecord::to(&self.topic).key(key).payload(&payload[..]);
            let delivery = enqueue(&self.producer, record)
                .await
                .map_err(|source| self.error("enqueue message", source))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => return Err(self.error("deliver message", source)),
                Err(_) => return Err(BufferError::Closed),
            }
        }
        Ok(())
    }

    fn error(&self, operation: &'static str, source: KafkaError) -> BufferError {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            return BufferError::Failed(format!("fatal kafka producer error {code:?}: {reason}"));
        }
        BufferError::Kafka { operation, source }
    }
}

/// Number of partitions of `topic`, or a [`BufferError::KafkaTopic`] naming the topic and the
/// brokers (the same checks as the buffer's own topics). `log` is the client's context (or a
/// clone): a failed request says only that no broker answered, so the error adds the last
/// cause librdkafka reported (authentication, TLS).
pub(crate) fn topic_partitions<C: ClientContext>(
    client: &Client<C>,
    log: &LogContext,
    topic: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<i32, BufferError> {
    let unusable = |reason: String| BufferError::KafkaTopic {
        topic: topic.to_owned(),
        brokers: brokers.to_owned(),
        reason,
    };
    let md = client.fetch_metadata(Some(topic), timeout).map_err(|e| {
        unusable(match log.last_error() {
            Some(cause) => format!("metadata request failed: {e}; librdkafka: {cause}"),
            None => format!("metadata request failed: {e}"),
        })
    })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| unusable("not in the metadata response".into()))?;
    if let Some(err) = t.error() {
        return Err(unusable(format!("{:?}", RDKafkaErrorCode::from(err))));
    }
    if t.partitions().is_empty() {
        return Err(unusable("topic has no partitions (does it exist?)".into()));
    }
    i32::try_from(t.partitions().len()).map_err(|_| unusable("too many partitions".into()))
}
