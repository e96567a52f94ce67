//! The Kafka backend: [`KafkaBuffer`], a [`Buffer`] over a Kafka topic (or an Azure Event Hub
//! through its Kafka endpoint). Lane = Kafka partition, seq = Kafka offset.
//!
//! # Kafka backend
//!
//! ## Delivery semantics
//!
//! * **Append is acknowledged only once durable.** The producer is idempotent with
//!   `acks=all` and `message.timeout.ms=0` (a message never times out: while brokers are
//!   unreachable, appends wait, which is backpressure to Falcon). [`Buffer::append`] resolves
//!   when the delivery report of every record came back successful. With
//!   `enable.gapless.guarantee=true`, a failure that could leave a gap in a partition stops the
//!   producer (the buffer then answers [`BufferError::Failed`] and the process must restart)
//!   instead of writing later records after a lost one. When librdkafka's producer queue
//!   (`queue.buffering.max.kbytes`, half of [`KafkaBufferConfig::max_bytes`]) is full, an append
//!   waits and retries; nothing is dropped.
//! * **Order.** Falcon partition `p` goes to Kafka partition `p % partitions` (the count at
//!   `connect`), so each Falcon partition stays in one Kafka partition, in order (idempotent
//!   producer), and consecutive Falcon partitions spread evenly over the topic for consumer
//!   scale-out. The message key is still the Falcon partition. (Before this mapping the
//!   key's hash chose the partition; after an upgrade, or when the topic gains partitions,
//!   a Falcon partition's older records can sit in another Kafka partition than its newer
//!   ones: delivery order across the two is not kept, nothing is lost or resumed wrongly,
//!   since the resume scan reads every partition.)
//! * **The buffer is the source checkpoint.** After each successful append the newest Falcon
//!   offset of each Falcon partition is kept in memory ([`Buffer::resume_offsets`]). Every
//!   `commit_interval`, when something changed, the checkpoint topic (compacted; key = Falcon
//!   partition, value = offset) receives the changed offsets and then, once those are durable,
//!   one *frontier* marker per Kafka partition: the lowest Kafka offset at which a record not
//!   covered by those offsets can sit (every append still in flight registered, when it
//!   started, the newest delivered offset it could land after). At `connect`, recovery reads
//!   the checkpoint topic and scans the event topic from the frontier to the high watermark:
//!   resume = max(checkpoint, newest offset seen in the scan). The scan is exact (it covers
//!   every record not in the checkpoint) and short (what was appended during about one
//!   `commit_interval`), and the checkpoint is the floor for Falcon partitions whose records
//!   retention already deleted. Without a frontier (first start, lost checkpoint topic) the
//!   whole retained topic is scanned. A record retention deleted before it was checkpointed
//!   yields a lower resume offset: duplicates, never a gap.
//! * **Only the contiguous acknowledged prefix is committed.** The writer side is one
//!   consumer-group member (`StreamConsumer`, `enable.auto.commit=false`,
//!   `enable.auto.offset.store=false`, `cooperative-sticky`). [`Buffer::ack`] stores, per
//!   Kafka partition, one past the contiguous acknowledged prefix of the offsets `read` handed
//!   out; stored offsets are committed asynchronously every `commit_interval`, when partitions
//!   are revoked, and synchronously on [`Buffer::close`]. After a restart or a rebalance,
//!   reading starts at the committed offset (`auto.offset.reset=earliest` when none), so a
//!   record that was read but not acknowledged is delivered again: at least once.
//! * **Rebalance.** On revoke the un-acknowledged state of the revoked partitions is dropped
//!   (the new owner reads them again); late acks for them are ignored.
//! * **Memory is bounded.** The consumer prefetch is bounded by `queued.max.messages.kbytes`
//!   (half of `max_bytes`), the producer queue by the other half, [`Buffer::read`] by its
//!   arguments.
//! * **Capacity.** [`Buffer::depth`] is Σ over partitions of high watermark − committed
//!   offset, refreshed every two seconds and raised by each append in between; bytes are
//!   estimated from the mean record size seen. With
//!   [`KafkaBufferConfig::max_backlog_bytes`] set, appends wait while the depth is at or above
//!   it (the source stops reading; Falcon keeps the events), and
//!   [`Buffer::capacity_bytes`] reports it. Without it appends never wait on the backlog,
//!   `capacity_bytes` reports `max_bytes`, and Kafka's retention is the bound on what the
//!   buffer holds: a record retention deletes before it is delivered is lost (and reported,
//!   see below), so size retention, or set the cap below it.
//! * A record in the event topic without our headers makes [`Buffer::read`] fail with
//!   [`BufferError::CorruptRecord`] (seq = its Kafka offset) and is never acknowledged, so its
//!   partition's commit stops there until an operator acts; the resume scan ignores it.
//!
//! ## Other topics: [`TopicWriter`] and [`TopicReader`]
//!
//! For the bridge's dead-letter topic, over the same connection settings:
//! [`TopicWriter::send`] resolves once every message is acknowledged (same producer
//! guarantees as appends; waits while brokers are unreachable), and [`TopicReader`] reads a
//! topic from a consumer group's committed offsets up to the high watermarks taken at
//! connect, committing (synchronously, without joining the group) only when the caller
//! says a batch is processed. Both check at connect that the topic exists.
//!
//! ## Azure Event Hubs
//!
//! Kafka endpoint `NAMESPACE.servicebus.windows.net:9093`, [`SecurityProtocol::SaslSsl`],
//! [`SaslMechanism::Plain`], username `$ConnectionString`, password the connection string
//! (namespace- or hub-level SAS policy with Send and Listen). The event hub is the topic and a
//! second event hub is the checkpoint topic; Event Hubs offers compaction only on the Premium
//! and Dedicated tiers, so on Standard the checkpoint topic grows with retention and recovery
//! reads all of it (a few messages per second: acceptable). Event Hubs' retention (1 to 7
//! days on Standard) is the capacity. Event Hubs accepts idempotent producers. Instead of the
//! connection string, [`SaslMechanism::OAuthBearer`] with an [`OAuthTokenSource`]
//! ([`KafkaSecurity::oauth_token_source`]; the bridge's gives Entra ID tokens for
//! `https://NAMESPACE.servicebus.windows.net/.default`). Every client of this crate answers
//! librdkafka's token requests from it; librdkafka serves them only while a client is polled,
//! so connect-time metadata goes through the producer (polled by librdkafka's thread) and new
//! consumers are polled briefly before their first blocking request.
//!
//! ## Retention
//!
//! Records the topic deleted before they were delivered (the group's committed offset fell
//! below a partition's first offset: retention shorter than an outage) cannot be delivered.
//! The depth task detects it, logs an error per range and counts them
//! ([`KafkaBuffer::records_lost_to_retention`], [`Buffer::records_lost`]).

mod codec;
mod config;
mod lanes;
mod resume;
mod topic_reader;
mod topic_writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::FutureExt as _;
use rdkafka::client::OAuthToken;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

pub use config::{
    GUARANTEED_PROPERTIES, KafkaBufferConfig, KafkaSecurity, OAuthBearerToken, OAuthTokenSource,
    SaslMechanism, SecurityProtocol,
};

pub use topic_reader::{TopicMessage, TopicReader};
pub use topic_writer::TopicWriter;

use crate::{Buffer, BufferError, Depth, Entry, Position, Record};

use lanes::Lanes;
use topic_writer::topic_partitions;

/// How long a new consumer is polled for the events librdkafka queued at its creation.
pub(crate) const EVENT_SERVE_TIME: Duration = Duration::from_millis(100);
/// How long [`enqueue`] sleeps before retrying when librdkafka's producer queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// How often the same consumer error is logged again while it persists.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How often the depth is refreshed from the brokers.
const DEPTH_REFRESH: Duration = Duration::from_secs(2);
/// Record size assumed for the depth's byte estimate before any record was seen.
const DEFAULT_RECORD_BYTES: u64 = 1536;
/// librdkafka's default `message.max.bytes`, used when `extra` does not set it.
pub(crate) const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// A [`Buffer`] over a Kafka topic. See the [module docs](self) for its guarantees.
#[derive(Debug, Clone)]
pub struct KafkaBuffer {
    inner: Arc<Inner>,
}

type GroupConsumer = StreamConsumer<LaneContext>;

struct Inner {
    topic: String,
    checkpoint_topic: String,
    max_bytes: u64,
    max_backlog_bytes: Option<u64>,
    /// Partitions of the topic at connect (at least 1): appends map Falcon partitions onto
    /// them. A topic given more partitions later is used fully after a restart.
    topic_partitions: i32,
    /// Notified after every depth refresh (and on close): appends waiting for backlog room
    /// look again.
    depth_refreshed: tokio::sync::Notify,
    message_max_bytes: usize,
    close_timeout: Duration,
    producer: FutureProducer<LogContext>,
    /// Taken by `close` so that the consumer leaves its group on a blocking thread.
    consumer: Mutex<Option<Arc<GroupConsumer>>>,
    read_state: Arc<Mutex<ReadState>>,
    progress: Mutex<Progress>,
    /// One checkpoint round at a time.
    checkpoint_round: tokio::sync::Mutex<()>,
    /// Held while a depth refresh uses the consumer on a blocking thread, so that `close`
    /// drops the last consumer handle itself (a handle dropped later, after the brokers are
    /// gone, could block that thread, and runtime shutdown with it, for a long time).
    depth_busy: tokio::sync::Mutex<()>,
    closed: watch::Sender<bool>,
    /// Set when the producer hit a fatal error; appends refuse from then on.
    failed: Mutex<Option<String>>,
    commit_pending: AtomicBool,
    depth_records: AtomicU64,
    /// Whether a depth refresh succeeded yet; with a backlog cap, appends wait until then.
    depth_known: AtomicBool,
    /// Depth refreshes failed in a row (logged as a warning now and then when a cap waits).
    depth_failures: AtomicU64,
    /// Records found deleted from the topic before delivery (see `report_retention_loss`).
    retention_lost: AtomicU64,
    /// Per partition, the first offset up to which a retention loss was reported.
    retention_reported: Mutex<HashMap<i32, i64>>,
    seen_records: AtomicU64,
    seen_bytes: AtomicU64,
    next_append_id: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBuffer")
            .field("topic", &self.topic)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .finish_non_exhaustive()
    }
}

/// Reader-side state, shared with the rebalance callback.
#[derive(Debug, Default)]
struct ReadState {
    lanes: Lanes,
    /// What the last `read` pulled from the consumer but could not return.
    stash: Option<Stashed>,
}

#[derive(Debug)]
enum Stashed {
    /// An entry beyond the last read's byte budget.
    Entry(Entry),
    /// A message that is not a record of ours: reported by the next `read`.
    Corrupt { seq: u64, reason: &'static str },
}

/// Writer-side state: what the source may resume from, and what the checkpoint topic holds.
#[derive(Debug, Default)]
struct Progress {
    /// Falcon partition → newest Falcon offset of a completed append (or recovered).
    resume: BTreeMap<u32, u64>,
    /// What the checkpoint topic holds for each Falcon partition.
    written: BTreeMap<u32, u64>,
    /// Kafka partition → newest offset known delivered (a lower bound of the truth).
    delivered: HashMap<i32, i64>,
    /// Appends in flight → `delivered` when they started: their records land above it.
    inflight: HashMap<u64, HashMap<i32, i64>>,
    /// The frontier markers the checkpoint topic holds.
    frontier_written: BTreeMap<i32, i64>,
}

impl Progress {
    /// Kafka partition → lowest offset at which a record not covered by `resume` can sit.
    fn frontier(&self) -> BTreeMap<i32, i64> {
        self.delivered
            .iter()
            .map(|(&p, &d)| {
                let floor = self
                    .inflight
                    .values()
                    .filter_map(|snap| snap.get(&p))
                    .fold(d, |a, &b| a.min(b));
                (p, floor + 1)
            })
            .collect()
    }
}

impl KafkaBuffer {
    /// Records found deleted from the topic (by retention) before they were delivered, since
    /// this buffer connected. Each is also logged as an error. Kafka's retention bounds what
    /// the buffer can hold through an outage; size it above the longest outage to ride out.
    pub fn records_lost_to_retention(&self) -> u64 {
        self.inner.retention_lost.load(Ordering::Relaxed)
    }

    /// Connects: validates `config`, checks that both topics exist, recovers the resume
    /// offsets (see the module docs), and joins the consumer group.
    ///
    /// Must be called within a tokio runtime; spawns the commit, depth and checkpoint tasks,
    /// which end when the buffer is closed or dropped.
    pub async fn connect(config: KafkaBufferConfig) -> Result<Self, BufferError> {
        config.validate()?;
        let base = config.client_config()?;
        let kafka = |operation| move |source| BufferError::Kafka { operation, source };

        let log = LogContext::new(&config);
        let producer: FutureProducer<LogContext> = producer_config(&base, &config)
            .create_with_context(log.clone())
            .map_err(kafka("create producer"))?;
        let cc = consumer_config(&base, &config);
        let read_state = Arc::new(Mutex::new(ReadState::default()));
        let context = LaneContext {
            read_state: Arc::clone(&read_state),
            log: log.clone(),
        };
        let consumer: Arc<GroupConsumer> = Arc::new(
            cc.create_with_context(context)
                .map_err(kafka("create consumer"))?,
        );

        let brokers = config.brokers.join(",");
        let timeout = config.connect_timeout;
        // Metadata through the producer: its polling thread serves librdkafka's events (an
        // OAUTHBEARER token request among them) while this blocks; the consumer's are served
        // only when it is polled.
        let (topic_parts, ckpt_parts) = {
            let producer = producer.clone();
            let (topic, ckpt) = (config.topic.clone(), config.checkpoint_topic.clone());
            blocking(move || {
                Ok((
                    topic_partitions(producer.client(), &log, &topic, &brokers, timeout)?,
                    topic_partitions(producer.client(), &log, &ckpt, &brokers, timeout)?,
                ))
            })
            .await?
        };
        let recovered = {
            let (topic, ckpt) = (config.topic.clone(), config.checkpoint_topic.clone());
            let group = config.group_id.clone();
            let mut base_with_extra = base.clone();
            config.apply_extra(&mut base_with_extra);
            let context = LogContext::new(&config);
            blocking(move || {
                resume::recover(
                    &base_with_extra,
                    context,
                    &topic,
                    topic_parts,
                    &ckpt,
                    ckpt_parts,
                    &group,
                    timeout,
                )
            })
            .await?
        };
        tracing::info!(
            topic = %config.topic,
            partitions = topic_parts,
            falcon_partitions = recovered.resume.len(),
            scanned = recovered.scanned,
            "kafka buffer recovered resume offsets"
        );
        if config.security.oauth_token_source.is_some() {
            // Serve the token request librdkafka queued at creation, so the group join and
            // the depth task's requests need not wait for the first `read`. Not subscribed
            // yet: no message can be taken here.
            let _ = tokio::time::timeout(EVENT_SERVE_TIME, consumer.recv()).await;
        }

        let inner = Arc::new(Inner::new(
            &config,
            producer,
            consumer,
            read_state,
            recovered,
            topic_parts,
        ));
        // The depth is known when `connect` returns (the backlog cap needs it: a restarted
        // process must not append past the cap before its first refresh). Before the group
        // join: the committed offsets are not answered while a rebalance is in progress.
        inner.refresh_depth(depth_timeout(timeout)).await;
        inner
            .consumer()?
            .subscribe(&[&config.topic])
            .map_err(kafka("subscribe"))?;
        spawn_background(&inner, config.commit_interval, timeout);
        Ok(Self { inner })
    }
}

impl Inner {
    fn new(
        config: &KafkaBufferConfig,
        producer: FutureProducer<LogContext>,
        consumer: Arc<GroupConsumer>,
        read_state: Arc<Mutex<ReadState>>,
        recovered: resume::Recovered,
        topic_partitions: i32,
    ) -> Self {
        Self {
            topic_partitions: topic_partitions.max(1),
            topic: config.topic.clone(),
            checkpoint_topic: config.checkpoint_topic.clone(),
            max_bytes: config.max_bytes,
            max_backlog_bytes: config.max_backlog_bytes,
            depth_refreshed: tokio::sync::Notify::new(),
            message_max_bytes: config.message_max_bytes(),
            close_timeout: config.close_timeout,
            producer,
            consumer: Mutex::new(Some(consumer)),
            read_state,
            progress: Mutex::new(Progress {
                resume: recovered.resume,
                written: recovered.written,
                delivered: recovered.delivered,
                inflight: HashMap::new(),
                frontier_written: BTreeMap::new(),
            }),
            checkpoint_round: tokio::sync::Mutex::new(()),
            depth_busy: tokio::sync::Mutex::new(()),
            closed: watch::channel(false).0,
            failed: Mutex::new(None),
            commit_pending: AtomicBool::new(false),
            depth_records: AtomicU64::new(0),
            depth_known: AtomicBool::new(false),
            depth_failures: AtomicU64::new(0),
            retention_lost: AtomicU64::new(0),
            retention_reported: Mutex::new(HashMap::new()),
            seen_records: AtomicU64::new(0),
            seen_bytes: AtomicU64::new(0),
            next_append_id: AtomicU64::new(0),
        }
    }
}

/// The producer's properties: idempotent, `acks=all`, never timing out a message.
pub(crate) fn producer_config(base: &ClientConfig, config: &KafkaBufferConfig) -> ClientConfig {
    let mut pc = base.clone();
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        .set(
            "queue.buffering.max.kbytes",
            queue_kbytes(config).to_string(),
        )
        .set("linger.ms", "5")
        .set("compression.type", "zstd")
        // The topic checks at connect must not create a topic (brokers with auto-creation
        // on, the mock cluster): a mistyped name is an error, not a new topic.
        .set("allow.auto.create.topics", "false");
    config.apply_extra(&mut pc);
    pc
}

/// The group consumer's properties: manual offset store and commit, bounded prefetch.
fn consumer_config(base: &ClientConfig, config: &KafkaBufferConfig) -> ClientConfig {
    let mut cc = base.clone();
    cc.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false")
        .set(
            "queued.max.messages.kbytes",
            queue_kbytes(config).min(2_097_151).to_string(),
        );
    if let Some(id) = &config.group_instance_id {
        cc.set("group.instance.id", id);
    }
    config.apply_extra(&mut cc);
    cc
}

/// Half of `max_bytes`, in KiB: the producer queue and the consumer prefetch each get that.
fn queue_kbytes(config: &KafkaBufferConfig) -> u64 {
    (config.max_bytes / 2 / 1024).max(1)
}

/// Runs blocking librdkafka work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BufferError> + Send + 'static,
) -> Result<T, BufferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BufferError::Failed(format!("blocking kafka task panicked: {e}")))?
}

/// Enqueues one record on `producer` and returns its delivery future. While librdkafka's
/// queue is full (its size is bounded by `queue.buffering.max.kbytes`) it sleeps
/// [`QUEUE_FULL_WAIT`] and retries the same record, so memory stays bounded and nothing is
/// dropped; any other enqueue error is returned for the caller to map.
pub(crate) async fn enqueue<K, P>(
    producer: &FutureProducer<LogContext>,
    mut record: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((source, _)) => return Err(source),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the periodic commit, depth and checkpoint tasks. They hold only a `Weak`, so they
/// end when the buffer is dropped, and they end when it is closed.
fn spawn_background(inner: &Arc<Inner>, commit_interval: Duration, timeout: Duration) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(periodic(
        weak.clone(),
        commit_interval,
        |inner| async move {
            inner.commit_async();
            if let Err(e) = inner.checkpoint().await {
                tracing::warn!(error = %e, "checkpoint topic write failed; retrying");
            }
        },
    ));
    let timeout = depth_timeout(timeout);
    tokio::spawn(periodic(weak, DEPTH_REFRESH, move |inner| async move {
        inner.refresh_depth(timeout).await;
    }));
}

/// The timeout of a depth refresh: short, so that an unreachable coordinator delays the next
/// refresh only a little.
fn depth_timeout(connect_timeout: Duration) -> Duration {
    connect_timeout.min(DEPTH_REFRESH * 2)
}

async fn periodic<F, Fut>(weak: Weak<Inner>, every: Duration, mut f: F)
where
    F: FnMut(Arc<Inner>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut closed = match weak.upgrade() {
        Some(inner) => inner.closed.subscribe(),
        None => return,
    };
    // The first tick comes after one period (`connect` did the first depth refresh itself).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.wait_for(|c| *c) => return,
        }
        let Some(inner) = weak.upgrade() else { return };
        f(inner).await;
    }
}

/// Removes an append's in-flight registration however the append ends.
struct Inflight<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(&self.inner.progress).inflight.remove(&self.id);
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), BufferError> {
        if *self.closed.borrow() {
            return Err(BufferError::Closed);
        }
        if let Some(f) = lock(&self.failed).as_ref() {
            return Err(BufferError::Failed(f.clone()));
        }
        Ok(())
    }

    fn consumer(&self) -> Result<Arc<GroupConsumer>, BufferError> {
        lock(&self.consumer).clone().ok_or(BufferError::Closed)
    }

    /// The Kafka partition of a Falcon partition: `falcon % partitions`. Consecutive Falcon
    /// partitions spread evenly over the topic, and each stays in one Kafka partition (its
    /// order). Hashing the key instead (librdkafka's default) can put small integers all in
    /// one partition: CRC32 sends both "0" and "1" to partition 1 of 2.
    fn kafka_partition(&self, falcon: u32) -> i32 {
        i32::try_from(falcon % self.topic_partitions.unsigned_abs()).unwrap_or(0)
    }

    fn note_sizes(&self, records: u64, bytes: u64) {
        self.seen_records.fetch_add(records, Ordering::Relaxed);
        self.seen_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    async fn append(&self, records: Vec<Record>) -> Result<(), BufferError> {
        self.check_open()?;
        if records.is_empty() {
            return Ok(());
        }
        // Refuse the whole batch before producing any of it: a half-enqueued batch would
        // leave later records of a Falcon partition in Kafka after a refused earlier one.
        if records
            .iter()
            .any(|r| codec::wire_len(r) > self.message_max_bytes)
        {
            return Err(BufferError::Unencodable {
                reason: "record larger than message.max.bytes",
            });
        }
        self.wait_for_backlog_room().await?;
        let id = self.next_append_id.fetch_add(1, Ordering::Relaxed);
        let _inflight = {
            let mut progress = lock(&self.progress);
            let snapshot = progress.delivered.clone();
            progress.inflight.insert(id, snapshot);
            Inflight { inner: self, id }
        };

        let mut deliveries = Vec::with_capacity(records.len());
        let mut bytes = 0u64;
        for r in &records {
            bytes += r.encoded_len() as u64;
            let key = r.partition.to_string();
            let record = FutureRecord::to(&self.topic)
                .partition(self.kafka_partition(r.partition))
                .key(&key)
                .payload(&r.payload[..])
                .headers(codec::headers(r));
            let delivery = enqueue(&self.producer, record)
                .await
                .map_err(|source| self.producer_error("enqueue event", source))?;
            deliveries.push(delivery);
        }

        let mut newest: HashMap<i32, i64> = HashMap::new();
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => {
                    let slot = newest.entry(d.partition).or_insert(d.offset);
                    *slot = (*slot).max(d.offset);
                }
                Ok(Err((source, _))) => return Err(self.producer_error("deliver event", source)),
                Err(_) => return Err(BufferError::Closed),
            }
        }
        {
            let mut progress = lock(&self.progress);
            for (p, o) in newest {
                let slot = progress.delivered.entry(p).or_insert(o);
                *slot = (*slot).max(o);
            }
            for r in &records {
                let slot = progress.resume.entry(r.partition).or_insert(r.offset);
                *slot = (*slot).max(r.offset);
            }
        }
        self.note_sizes(records.len() as u64, bytes);
        // Until the next refresh, the depth counts these too (the cap must see them).
        self.depth_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// With a backlog cap, waits while the depth is at or above it: the caller (the source)
    /// stops reading Falcon, which keeps the events, rather than the topic holding more than
    /// its retention may keep. Each depth refresh (every [`DEPTH_REFRESH`]) wakes the waiters.
    async fn wait_for_backlog_room(&self) -> Result<(), BufferError> {
        let Some(cap) = self.max_backlog_bytes else {
            return Ok(());
        };
        let mut closed = self.closed.subscribe();
        let mut waited = false;
        loop {
            // Registered before the check, so a refresh between the two is not missed.
            let refreshed = self.depth_refreshed.notified();
            self.check_open()?;
            let depth = self.depth();
            if self.depth_known.load(Ordering::Relaxed) && depth.bytes < cap {
                if waited {
                    tracing::debug!(
                        depth_bytes = depth.bytes,
                        cap,
                        "kafka backlog below its cap; appending again"
                    );
                }
                return Ok(());
            }
            if !waited {
                tracing::debug!(
                    depth_records = depth.records,
                    depth_bytes = depth.bytes,
                    cap,
                    "kafka backlog at its cap (buffer.max_backlog_bytes): append waits"
                );
                waited = true;
            }
            tokio::select! {
                () = refreshed => {}
                _ = closed.wait_for(|c| *c) => return Err(BufferError::Closed),
            }
        }
    }

    /// Maps a producer error; a fatal one (idempotence or gapless guarantee broken) fails the
    /// buffer for good: the process must restart and recover from what Kafka holds.
    fn producer_error(&self, operation: &'static str, source: KafkaError) -> BufferError {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            let message = format!("fatal kafka producer error {code:?}: {reason}");
            lock(&self.failed).get_or_insert_with(|| message.clone());
            return BufferError::Failed(message);
        }
        BufferError::Kafka { operation, source }
    }

    async fn read(&self, max_records: usize, max_bytes: usize) -> Result<Vec<Entry>, BufferError> {
        if *self.closed.borrow() {
            return Err(BufferError::Closed);
        }
        let consumer = self.consumer()?;
        let max_records = max_records.max(1);
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;

        let stashed = lock(&self.read_state).stash.take();
        match stashed {
            Some(Stashed::Entry(e)) => {
                self.register(&e);
                bytes += e.record.encoded_len();
                out.push(e);
            }
            Some(Stashed::Corrupt { seq, reason }) => {
                return Err(BufferError::CorruptRecord { seq, reason });
            }
            None => {
                let mut closed = self.closed.subscribe();
                let mut last_error: Option<(String, tokio::time::Instant)> = None;
                loop {
                    let received = tokio::select! {
                        m = consumer.recv() => m,
                        _ = closed.wait_for(|c| *c) => return Err(BufferError::Closed),
                    };
                    // From here to the end no await: a cancelled read consumes nothing.
                    match received {
                        Ok(m) => match decode_entry(&m) {
                            Ok(e) => {
                                self.register(&e);
                                bytes += e.record.encoded_len();
                                out.push(e);
                                break;
                            }
                            Err((lane, seq, reason)) => {
                                lock(&self.read_state).lanes.read(lane, seq);
                                return Err(BufferError::CorruptRecord { seq, reason });
                            }
                        },
                        Err(e) => {
                            // While brokers are down librdkafka reports the same error
                            // many times a second: log a change, or a repeat every 30 s.
                            let text = e.to_string();
                            let now = tokio::time::Instant::now();
                            let repeat = last_error.as_ref().is_some_and(|(t, at)| {
                                *t == text && now.duration_since(*at) < ERROR_LOG_INTERVAL
                            });
                            if !repeat {
                                tracing::warn!(error = %text, "kafka consumer");
                                last_error = Some((text, now));
                            }
                        }
                    }
                }
            }
        }
        while out.len() < max_records {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    let stash = match decode_entry(&m) {
                        Ok(e) if bytes + e.record.encoded_len() <= max_bytes => {
                            self.register(&e);
                            bytes += e.record.encoded_len();
                            out.push(e);
                            continue;
                        }
                        // Registered when a later read hands it out.
                        Ok(e) => Stashed::Entry(e),
                        Err((lane, seq, reason)) => {
                            lock(&self.read_state).lanes.read(lane, seq);
                            Stashed::Corrupt { seq, reason }
                        }
                    };
                    lock(&self.read_state).stash = Some(stash);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer");
                    break;
                }
                None => break,
            }
        }
        self.note_sizes(out.len() as u64, bytes as u64);
        Ok(out)
    }

    /// Registers `e` as handed out (a no-op for a lane revoked since it was fetched).
    fn register(&self, e: &Entry) {
        lock(&self.read_state)
            .lanes
            .read(e.position.lane, e.position.seq);
    }

    fn ack(&self, positions: &[Position]) -> Result<(), BufferError> {
        let advanced = lock(&self.read_state).lanes.ack(positions)?;
        if advanced.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        // `store_offsets` stores the offsets as given (the next offset to read), unlike
        // `store_offset`, which stores offset + 1.
        let mut tpl = TopicPartitionList::with_capacity(advanced.len());
        for (lane, next) in advanced {
            let (Ok(p), Ok(o)) = (i32::try_from(lane), i64::try_from(next)) else {
                continue;
            };
            if let Err(e) = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o)) {
                tracing::warn!(partition = p, error = %e, "offset not stored");
            }
        }
        // Fails for a partition revoked meanwhile: its new owner reads it again.
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored");
        }
        self.commit_pending.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Enqueues a commit of the stored offsets; librdkafka sends it in the background, so
    /// this does not block.
    fn commit_async(&self) {
        if !self.commit_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Ok(consumer) = self.consumer()
            && let Err(e) = consumer.commit_consumer_state(CommitMode::Async)
            && !is_no_offset(&e)
        {
            tracing::warn!(error = %e, "commit failed; retrying");
            self.commit_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Writes changed resume offsets, then the frontier markers, to the checkpoint topic.
    async fn checkpoint(&self) -> Result<(), BufferError> {
        let _round = self.checkpoint_round.lock().await;
        let (offsets, frontier) = {
            let p = lock(&self.progress);
            let offsets: Vec<(u32, u64)> = p
                .resume
                .iter()
                .filter(|(k, v)| p.written.get(k) != Some(v))
                .map(|(&k, &v)| (k, v))
                .collect();
            let frontier = p.frontier();
            if offsets.is_empty() && frontier == p.frontier_written {
                return Ok(());
            }
            (offsets, frontier)
        };
        self.produce_checkpoint(offsets.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .await?;
        {
            let mut p = lock(&self.progress);
            for &(k, v) in &offsets {
                p.written.insert(k, v);
            }
        }
        // Only now, with the offsets durable, may the markers move the scan start forward.
        self.produce_checkpoint(
            frontier
                .iter()
                .map(|(&k, v)| (codec::frontier_key(&self.topic, k), v.to_string())),
        )
        .await?;
        lock(&self.progress).frontier_written = frontier;
        Ok(())
    }

    async fn produce_checkpoint(
        &self,
        messages: impl Iterator<Item = (String, String)>,
    ) -> Result<(), BufferError> {
        let mut deliveries = Vec::new();
        for (key, value) in messages {
            let record = FutureRecord::to(&self.checkpoint_topic)
                .key(&key)
                .payload(&value);
            let delivery = enqueue(&self.producer, record)
                .await
                .map_err(|source| self.producer_error("enqueue checkpoint", source))?;
            deliveries.push(delivery);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(self.producer_error("deliver checkpoint", source));
                }
                Err(_) => return Err(BufferError::Closed),
            }
        }
        Ok(())
    }

    /// Σ over partitions of (high watermark − committed offset), from the brokers.
    async fn refresh_depth(&self, timeout: Duration) {
        let _busy = self.depth_busy.lock().await;
        if *self.closed.borrow() {
            return;
        }
        let Ok(consumer) = self.consumer() else {
            return;
        };
        let topic = self.topic.clone();
        let result = blocking(move || {
            let md = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|source| BufferError::Kafka {
                    operation: "fetch metadata",
                    source,
                })?;
            let partitions: Vec<i32> = md
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| {
                    t.partitions()
                        .iter()
                        .map(rdkafka::metadata::MetadataPartition::id)
                })
                .collect();
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition(&topic, p);
            }
            let committed =
                consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|source| BufferError::Kafka {
                        operation: "fetch committed offsets",
                        source,
                    })?;
            let mut total = 0u64;
            let mut deleted = Vec::new();
            for p in partitions {
                let (lo, hi) = consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|source| BufferError::Kafka {
                        operation: "fetch watermarks",
                        source,
                    })?;
                let from = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(c)) => {
                        if c < lo {
                            deleted.push((p, c, lo));
                        }
                        c.max(lo)
                    }
                    _ => lo,
                };
                total += u64::try_from(hi - from).unwrap_or(0);
            }
            Ok((total, deleted))
        })
        .await;
        match result {
            Ok((records, deleted)) => {
                self.depth_records.store(records, Ordering::Relaxed);
                self.depth_known.store(true, Ordering::Relaxed);
                self.depth_failures.store(0, Ordering::Relaxed);
                self.report_retention_loss(&deleted);
            }
            Err(e) => {
                let failures = self.depth_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // With a cap, appends wait on the depth: say so when it persists (three in a
                // row), then every minute or so. A single slow answer is routine.
                if self.max_backlog_bytes.is_some()
                    && (failures == 3 || failures.is_multiple_of(30))
                {
                    tracing::warn!(
                        error = %e,
                        failures,
                        "kafka depth refresh failed; appends wait on the backlog cap until \
                         one succeeds"
                    );
                } else {
                    tracing::debug!(error = %e, "depth refresh failed");
                }
            }
        }
        self.depth_refreshed.notify_waiters();
    }

    /// The group's committed offset of a partition is below the partition's first offset:
    /// retention (or a deletion) removed records the writer had not delivered. Kafka cannot
    /// give them back; the consumer resumes at the first offset (`auto.offset.reset=earliest`).
    /// Never silent: an error per newly deleted range, and a counter.
    fn report_retention_loss(&self, deleted: &[(i32, i64, i64)]) {
        let mut reported = lock(&self.retention_reported);
        for &(partition, committed, first) in deleted {
            let from = reported
                .get(&partition)
                .copied()
                .unwrap_or(committed)
                .max(committed);
            if first <= from {
                continue;
            }
            let lost = u64::try_from(first - from).unwrap_or(0);
            self.retention_lost.fetch_add(lost, Ordering::Relaxed);
            reported.insert(partition, first);
            tracing::error!(
                topic = %self.topic,
                partition,
                committed_offset = committed,
                first_offset = first,
                lost,
                "records were deleted from the Kafka topic before they were delivered \
                 (retention shorter than the backlog): they cannot be delivered; raise the \
                 topic's retention above the longest outage to ride out"
            );
        }
    }

    fn depth(&self) -> Depth {
        let records = self.depth_records.load(Ordering::Relaxed);
        let seen = self.seen_records.load(Ordering::Relaxed);
        let mean = self
            .seen_bytes
            .load(Ordering::Relaxed)
            .checked_div(seen)
            .unwrap_or(DEFAULT_RECORD_BYTES);
        Depth {
            records,
            bytes: records.saturating_mul(mean),
        }
    }

    async fn close(&self) -> Result<(), BufferError> {
        if self.closed.send_replace(true) {
            return Err(BufferError::Closed);
        }
        let deadline = self.close_timeout;
        let producer = self.producer.clone();
        let flushed = blocking(move || {
            producer
                .flush(deadline)
                .map_err(|source| BufferError::Kafka {
                    operation: "flush producer on close",
                    source,
                })
        })
        .await;
        let checkpointed = match flushed {
            Ok(()) => tokio::time::timeout(deadline, self.checkpoint())
                .await
                .unwrap_or_else(|_| {
                    Err(BufferError::KafkaTimeout {
                        operation: "final checkpoint",
                        waited: deadline,
                        detail: "checkpoint topic write not acknowledged".into(),
                    })
                }),
            Err(e) => Err(e),
        };
        let _no_refresh = self.depth_busy.lock().await;
        let consumer = lock(&self.consumer).take();
        let committed = match consumer {
            Some(consumer) => {
                let commit = blocking(move || {
                    let result = consumer.commit_consumer_state(CommitMode::Sync);
                    // Dropping the last handle leaves the group (blocking), here rather than
                    // on an async worker.
                    drop(consumer);
                    match result {
                        Err(e) if !is_no_offset(&e) => Err(BufferError::Kafka {
                            operation: "commit on close",
                            source: e,
                        }),
                        _ => Ok(()),
                    }
                });
                // librdkafka's synchronous commit and group leave have no timeout of their
                // own; past the deadline the blocking thread finishes (or not) on its own.
                tokio::time::timeout(deadline, commit)
                    .await
                    .unwrap_or_else(|_| {
                        Err(BufferError::KafkaTimeout {
                            operation: "final commit and group leave",
                            waited: deadline,
                            detail: "group coordinator did not answer".into(),
                        })
                    })
            }
            None => Ok(()),
        };
        checkpointed.and(committed)
    }
}

/// The entry carried by `m`, or (lane, seq, why) it is not one of our records.
fn decode_entry(m: &impl Message) -> Result<Entry, (u32, u64, &'static str)> {
    let lane = u32::try_from(m.partition()).unwrap_or_default();
    let seq = u64::try_from(m.offset()).unwrap_or_default();
    let record = codec::decode(m).map_err(|reason| (lane, seq, reason))?;
    Ok(Entry {
        position: Position { lane, seq },
        record,
    })
}

pub(crate) fn is_no_offset(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset)
}

impl Buffer for KafkaBuffer {
    async fn append(&self, records: Vec<Record>) -> Result<(), BufferError> {
        self.inner.append(records).await
    }

    async fn resume_offsets(&self) -> Result<BTreeMap<u32, u64>, BufferError> {
        if let Some(f) = lock(&self.inner.failed).as_ref() {
            return Err(BufferError::Failed(f.clone()));
        }
        Ok(lock(&self.inner.progress).resume.clone())
    }

    async fn read(&self, max_records: usize, max_bytes: usize) -> Result<Vec<Entry>, BufferError> {
        self.inner.read(max_records, max_bytes).await
    }

    async fn ack(&self, positions: &[Position]) -> Result<(), BufferError> {
        self.inner.ack(positions)
    }

    fn depth(&self) -> Depth {
        self.inner.depth()
    }

    fn capacity_bytes(&self) -> u64 {
        self.inner.max_backlog_bytes.unwrap_or(self.inner.max_bytes)
    }

    fn records_lost(&self) -> u64 {
        self.records_lost_to_retention()
    }

    async fn close(&self) -> Result<(), BufferError> {
        self.inner.close().await
    }
}

/// Routes librdkafka's logs and errors to `tracing`, and serves OAUTHBEARER token requests
/// from the configured [`OAuthTokenSource`].
#[derive(Clone, Default)]
pub(crate) struct LogContext {
    oauth: Option<Arc<dyn OAuthTokenSource>>,
    /// The newest error librdkafka reported (authentication, TLS, transport): the cause of a
    /// failed metadata request, which itself only says the brokers were not reached.
    /// Shared by the clones (a client's context is a clone of the one its creator keeps).
    last_error: Arc<Mutex<Option<String>>>,
}

impl LogContext {
    pub(crate) fn new(config: &KafkaBufferConfig) -> Self {
        Self {
            oauth: config.security.oauth_token_source.clone(),
            last_error: Arc::default(),
        }
    }

    /// The newest error librdkafka reported through this client, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Whether tokens are served (the client must then be polled before blocking requests).
    pub(crate) fn has_oauth(&self) -> bool {
        self.oauth.is_some()
    }
}

impl fmt::Debug for LogContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogContext")
            .field("oauth", &self.oauth.is_some())
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl ClientContext for LogContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if log_librdkafka(level, fac, log_message) {
            *lock(&self.last_error) = Some(log_message.to_owned());
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // "n/n brokers are down" follows the cause (authentication, TLS); keep the cause.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *lock(&self.last_error) = Some(if reason.is_empty() {
                error.to_string()
            } else {
                reason.to_owned()
            });
        }
        client_error(self.oauth.as_deref(), &error, reason);
    }
    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.oauth.as_deref())
    }
}

/// librdkafka asks for a token (at start, and at 80% of the last one's lifetime).
fn oauth_token(
    source: Option<&dyn OAuthTokenSource>,
) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let source = source.ok_or("sasl.mechanism OAUTHBEARER needs an oauth_token_source")?;
    let t = source.token().map_err(|reason| {
        tracing::warn!(%reason, "no OAUTHBEARER token for Kafka");
        reason
    })?;
    let lifetime_ms = t
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the token expires before 1970")?
        .as_millis();
    Ok(OAuthToken {
        token: t.token,
        principal_name: t.principal,
        lifetime_ms: i64::try_from(lifetime_ms).map_err(|_| "token expiry out of range")?,
    })
}

/// A client-level error: logged; a refused token is reported to the token source so the
/// next request gets a fresh one.
fn client_error(oauth: Option<&dyn OAuthTokenSource>, error: &KafkaError, reason: &str) {
    if let Some(source) = oauth
        && error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication)
    {
        source.refused();
    }
    tracing::warn!(error = %error, reason, "librdkafka");
}

/// Logs a librdkafka line at its level; true when it was an error (or worse).
fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) -> bool {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(fac, message, "librdkafka");
            return true;
        }
        RDKafkaLogLevel::Warning => tracing::warn!(fac, message, "librdkafka"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(fac, message, "librdkafka");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(fac, message, "librdkafka"),
    }
    false
}

/// The consumer's context: keeps [`ReadState`] in step with rebalances.
/// Logs, errors and tokens as [`LogContext`] handles them.
struct LaneContext {
    read_state: Arc<Mutex<ReadState>>,
    log: LogContext,
}

impl ClientContext for LaneContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.log.generate_oauth_token(oauthbearer_config)
    }
}

impl ConsumerContext for LaneContext {
    /// rdkafka's default asks librdkafka for the group's protocol (`rebalance_protocol`),
    /// which waits forever on the group thread when the event comes while the consumer is
    /// being closed: a deadlock seen when the buffer closed (gdb: `Inner::close` → drop of
    /// the consumer → revoke event → `rd_kafka_rebalance_protocol`). The protocol is ours
    /// (`cooperative-sticky`, which `extra` may not change), so assign incrementally.
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let tpl: &TopicPartitionList = tpl;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => {
                let code = RDKafkaErrorCode::from(other);
                tracing::warn!(error = %code, "kafka rebalance error");
                Rebalance::Error(KafkaError::Rebalance(code))
            }
        };
        self.pre_rebalance(base_consumer, &rebalance);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                base_consumer.incremental_assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                base_consumer.incremental_unassign(tpl)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "kafka incremental (un)assign failed");
        }
        self.post_rebalance(base_consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<u32> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| u32::try_from(e.partition()).ok())
                    .collect();
                {
                    let mut state = lock(&self.read_state);
                    for &lane in &revoked {
                        state.lanes.revoke(lane);
                    }
                    let drop_stash = match &state.stash {
                        Some(Stashed::Entry(e)) => !state.lanes.owns(e.position.lane),
                        Some(Stashed::Corrupt { .. }) | None => false,
                    };
                    if drop_stash {
                        state.stash = None;
                    }
                }
                // Hand over what is acknowledged before the partitions go; async, so this
                // callback (run on the reading task) does not block.
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Async)
                    && !is_no_offset(&e)
                {
                    tracing::warn!(error = %e, "commit on revoke failed");
                }
                tracing::info!(partitions = ?revoked, "kafka partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let assigned: Vec<u32> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| u32::try_from(e.partition()).ok())
                    .collect();
                let mut state = lock(&self.read_state);
                for &lane in &assigned {
                    state.lanes.assign(lane);
                }
                drop(state);
                tracing::info!(partitions = ?assigned, "kafka partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}
