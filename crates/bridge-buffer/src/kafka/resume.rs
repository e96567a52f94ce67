//! Recovery at `connect`: the resume offset of every Falcon partition, from the checkpoint
//! topic plus a scan of the event topic from the frontier the checkpoint names.
//!
//! Blocking librdkafka calls only; `connect` runs this on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::codec::{self, Checkpoint};
use super::{EVENT_SERVE_TIME, LogContext};
use crate::BufferError;

/// What recovery found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Falcon partition → newest durable Falcon offset.
    pub(crate) resume: BTreeMap<u32, u64>,
    /// What the checkpoint topic already holds (so only changes are rewritten).
    pub(crate) written: BTreeMap<u32, u64>,
    /// Kafka partition of the event topic → high watermark − 1 at connect (newest offset
    /// known to be written; everything produced from now on lands above it).
    pub(crate) delivered: HashMap<i32, i64>,
    /// Messages scanned in the event topic.
    pub(crate) scanned: u64,
}

/// A range `[start, end)` of one partition to read.
struct Range {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
}

/// Reads the checkpoint topic, then scans the event topic from each partition's frontier.
#[allow(clippy::too_many_arguments)] // one caller, passing its connect parameters through
pub(crate) fn recover(
    base: &ClientConfig,
    context: LogContext,
    topic: &str,
    topic_partitions: i32,
    checkpoint_topic: &str,
    checkpoint_partitions: i32,
    group_id: &str,
    timeout: Duration,
) -> Result<Recovered, BufferError> {
    let kafka = |operation| move |source| BufferError::Kafka { operation, source };
    let mut config = base.clone();
    // librdkafka refuses `assign` without a group id; this consumer never joins the group
    // (no subscribe) and never commits.
    config
        .set("group.id", format!("{group_id}-recovery"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let oauth = context.has_oauth();
    let consumer: BaseConsumer<LogContext> = config
        .create_with_context(context)
        .map_err(kafka("create recovery consumer"))?;
    if oauth {
        // Serves the token request queued at creation; nothing is assigned, so no message.
        let _ = consumer.poll(EVENT_SERVE_TIME);
    }

    let mut out = Recovered::default();
    let mut frontier = HashMap::new();
    let mut ranges = Vec::new();
    for p in 0..checkpoint_partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(checkpoint_topic, p, timeout)
            .map_err(kafka("fetch checkpoint topic watermarks"))?;
        ranges.push(Range {
            topic: checkpoint_topic.to_owned(),
            partition: p,
            start: lo,
            end: hi,
        });
    }
    scan(&consumer, ranges, timeout, |m| {
        let decoded = codec::decode_checkpoint(
            topic,
            m.key().unwrap_or_default(),
            m.payload().unwrap_or_default(),
        );
        match decoded {
            Checkpoint::Offset(p, o) => {
                let slot = out.written.entry(p).or_insert(o);
                *slot = (*slot).max(o);
            }
            Checkpoint::Frontier(p, f) => {
                frontier.insert(p, f);
            }
            Checkpoint::Other => {}
        }
    })?;
    out.resume.clone_from(&out.written);

    let mut ranges = Vec::new();
    for p in 0..topic_partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka("fetch event topic watermarks"))?;
        // No frontier: first start against this topic (or the checkpoint was lost): scan all
        // that retention kept.
        let start = frontier.get(&p).copied().unwrap_or(lo).max(lo);
        out.delivered.insert(p, hi - 1);
        ranges.push(Range {
            topic: topic.to_owned(),
            partition: p,
            start,
            end: hi,
        });
    }
    let mut scanned = 0u64;
    scan(&consumer, ranges, timeout, |m| {
        scanned += 1;
        if let Some((p, o)) = codec::decode_position(m) {
            let slot = out.resume.entry(p).or_insert(o);
            *slot = (*slot).max(o);
        } else {
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                "message without fsb-* headers in the event topic; ignored for resume offsets"
            );
        }
    })?;
    out.scanned = scanned;
    Ok(out)
}

/// Reads every range to its end. Fails if no message arrives and no position advances for
/// `timeout` while a range is unfinished.
fn scan(
    consumer: &BaseConsumer<LogContext>,
    ranges: Vec<Range>,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), BufferError> {
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for r in ranges.into_iter().filter(|r| r.start < r.end) {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.start))
            .map_err(|source| BufferError::Kafka {
                operation: "build recovery assignment",
                source,
            })?;
        pending.insert((r.topic, r.partition), r.end);
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(|source| BufferError::Kafka {
        operation: "assign recovery consumer",
        source,
    })?;
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_owned(), m.partition());
                if let Some(&end) = pending.get(&key) {
                    if m.offset() < end {
                        each(&m);
                    }
                    if m.offset() + 1 >= end {
                        pending.remove(&key);
                    }
                }
                last_progress = Instant::now();
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "recovery scan");
            }
            None => {
                // Gaps at the end of a range (compaction, control records) are never
                // delivered: the fetch position tells when a range is done.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        let key = (e.topic().to_owned(), e.partition());
                        if let (Some(&end), Offset::Offset(at)) = (pending.get(&key), e.offset())
                            && at >= end
                        {
                            pending.remove(&key);
                            last_progress = Instant::now();
                        }
                    }
                }
            }
        }
        if last_progress.elapsed() > timeout {
            let mut left: Vec<String> = pending.keys().map(|(t, p)| format!("{t}/{p}")).collect();
            left.sort();
            return Err(BufferError::KafkaTimeout {
                operation: "recovery scan",
                waited: timeout,
                detail: format!("no progress reading partitions {}", left.join(", ")),
            });
        }
    }
    consumer.unassign().ok();
    Ok(())
}
