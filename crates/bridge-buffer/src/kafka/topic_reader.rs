//! [`TopicReader`]: reads one topic from a consumer group's committed offsets up to the high
//! watermarks taken at connect, and commits only what the caller says it processed.
//!
//! Used by `dead-letter list` and `dead-letter redrive` on the dead-letter topic: the reader
//! never joins the group (it assigns partitions itself, so no rebalance can take them away
//! mid-run) and commits synchronously, so a crash between two commits re-reads the last
//! batch (at least once), never skips one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::topic_writer::topic_partitions;
use super::{EVENT_SERVE_TIME, KafkaBufferConfig, LogContext, blocking};
use crate::BufferError;

impl ConsumerContext for LogContext {}

/// One message read by a [`TopicReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value (empty for a null value).
    pub payload: Vec<u8>,
}

/// Reads a topic from a group's committed offsets (the low watermark where the group has
/// none) to the high watermarks taken at [`connect`](Self::connect): what is produced later,
/// including what the caller produces to the same topic meanwhile, is left for the next run.
pub struct TopicReader {
    consumer: Arc<BaseConsumer<LogContext>>,
    topic: String,
    timeout: Duration,
    /// Partition → high watermark at connect.
    ends: BTreeMap<i32, i64>,
    /// Partition → next offset to hand out.
    next: BTreeMap<i32, i64>,
    /// Partition → offset the group has committed (or where this reader started).
    committed: BTreeMap<i32, i64>,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("ends", &self.ends)
            .field("next", &self.next)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Connects with the connection settings of `config` (its topics are not used), checks
    /// that `topic` exists, reads `group_id`'s committed offsets and the high watermarks.
    pub async fn connect(
        config: &KafkaBufferConfig,
        topic: &str,
        group_id: &str,
    ) -> Result<Self, BufferError> {
        config.validate()?;
        if topic.trim().is_empty() || group_id.trim().is_empty() {
            return Err(BufferError::KafkaConfig {
                reason: "the topic and group of a topic reader must not be empty".into(),
            });
        }
        let mut cc = config.client_config()?;
        cc.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false");
        config.apply_extra(&mut cc);
        let context = LogContext::new(config);
        let oauth = context.has_oauth();
        let consumer: Arc<BaseConsumer<LogContext>> = Arc::new(
            cc.create_with_context(context)
                .map_err(|source| BufferError::Kafka {
                    operation: "create topic reader",
                    source,
                })?,
        );
        let brokers = config.brokers.join(",");
        let timeout = config.connect_timeout;
        let (ends, committed) = {
            let consumer = Arc::clone(&consumer);
            let topic = topic.to_owned();
            blocking(move || {
                if oauth {
                    // Serves the token request queued at creation (nothing assigned yet).
                    let _ = consumer.poll(EVENT_SERVE_TIME);
                }
                start_and_end(&consumer, &topic, &brokers, timeout)
            })
            .await?
        };
        let reader = Self {
            consumer,
            topic: topic.to_owned(),
            timeout,
            ends,
            next: committed.clone(),
            committed,
        };
        let mut tpl = TopicPartitionList::new();
        for (&p, &start) in &reader.next {
            if start < reader.ends[&p] {
                tpl.add_partition_offset(&reader.topic, p, Offset::Offset(start))
                    .map_err(|source| BufferError::Kafka {
                        operation: "build topic reader assignment",
                        source,
                    })?;
            }
        }
        reader
            .consumer
            .assign(&tpl)
            .map_err(|source| BufferError::Kafka {
                operation: "assign topic reader",
                source,
            })?;
        Ok(reader)
    }

    /// Offsets not yet handed out below the end watermarks (an upper bound of the messages
    /// left: compaction and transaction markers leave gaps).
    pub fn remaining(&self) -> u64 {
        self.ends
            .iter()
            .map(|(p, &end)| u64::try_from(end - self.next[p]).unwrap_or(0))
            .sum()
    }

    /// Up to `max_messages` further messages below the end watermarks; empty when every
    /// partition is read to its end. Fails when no message arrives and no position advances
    /// for the config's `connect_timeout`.
    pub async fn next_batch(
        &mut self,
        max_messages: usize,
    ) -> Result<Vec<TopicMessage>, BufferError> {
        if self.remaining() == 0 {
            return Ok(Vec::new());
        }
        let consumer = Arc::clone(&self.consumer);
        let ends = self.ends.clone();
        let mut next = self.next.clone();
        let timeout = self.timeout;
        let (batch, next) = blocking(move || {
            let batch = read(&consumer, &ends, &mut next, max_messages.max(1), timeout)?;
            Ok((batch, next))
        })
        .await?;
        self.next = next;
        Ok(batch)
    }

    /// Commits (synchronously) the group's offsets past every message handed out so far.
    pub async fn commit(&mut self) -> Result<(), BufferError> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in &self.next {
            if self.committed.get(&p) != Some(&next) {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                    .map_err(|source| BufferError::Kafka {
                        operation: "build topic reader commit",
                        source,
                    })?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = Arc::clone(&self.consumer);
        blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|source| BufferError::Kafka {
                    operation: "commit topic reader offsets",
                    source,
                })
        })
        .await?;
        self.committed.clone_from(&self.next);
        Ok(())
    }
}

/// (partition → high watermark, partition → committed offset or low watermark).
type Bounds = (BTreeMap<i32, i64>, BTreeMap<i32, i64>);

fn start_and_end(
    consumer: &BaseConsumer<LogContext>,
    topic: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<Bounds, BufferError> {
    let kafka = |operation| move |source| BufferError::Kafka { operation, source };
    let partitions = topic_partitions(
        consumer.client(),
        consumer.context(),
        topic,
        brokers,
        timeout,
    )?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(kafka("fetch topic reader committed offsets"))?;
    let mut ends = BTreeMap::new();
    let mut starts = BTreeMap::new();
    for p in 0..partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka("fetch topic reader watermarks"))?;
        let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(c)) => c.max(lo).min(hi),
            _ => lo,
        };
        ends.insert(p, hi);
        starts.insert(p, start);
    }
    Ok((ends, starts))
}

/// Polls until `max` messages arrived or every partition reached its end.
fn read(
    consumer: &BaseConsumer<LogContext>,
    ends: &BTreeMap<i32, i64>,
    next: &mut BTreeMap<i32, i64>,
    max: usize,
    timeout: Duration,
) -> Result<Vec<TopicMessage>, BufferError> {
    let done = |next: &BTreeMap<i32, i64>| ends.iter().all(|(p, end)| next[p] >= *end);
    let mut out = Vec::new();
    let mut last_progress = Instant::now();
    while out.len() < max && !done(next) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition();
                if let (Some(&end), Some(slot)) = (ends.get(&p), next.get_mut(&p))
                    && m.offset() >= *slot
                    && m.offset() < end
                {
                    *slot = m.offset() + 1;
                    out.push(TopicMessage {
                        partition: p,
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                last_progress = Instant::now();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "topic reader"),
            None => {
                // Gaps at the end of a range (compaction, transaction markers) are never
                // delivered: the position tells when a partition is read to its end.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let (Some(&end), Some(slot), Offset::Offset(at)) = (
                            ends.get(&e.partition()),
                            next.get_mut(&e.partition()),
                            e.offset(),
                        ) && at > *slot
                        {
                            *slot = at.min(end);
                            last_progress = Instant::now();
                        }
                    }
                }
            }
        }
        if last_progress.elapsed() > timeout {
            return Err(BufferError::KafkaTimeout {
                operation: "read topic",
                waited: timeout,
                detail: format!("no progress; {} offsets left", {
                    ends.iter()
                        .map(|(p, &end)| u64::try_from(end - next[p]).unwrap_or(0))
                        .sum::<u64>()
                }),
            });
        }
    }
    Ok(out)
}
