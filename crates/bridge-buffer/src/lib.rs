//! bridge-buffer: the durable buffer between the Falcon source and the Sentinel writer.
//!
//! The crate owns one trait, [`Buffer`], and its embedded disk backend, [`DiskBuffer`] (a
//! [redb](https://docs.rs/redb) file). Its guarantee:
//!
//! * **An append is acknowledged only once it is durable.** [`Buffer::append`] resolves after
//!   the transaction holding the records has been committed with fsync.
//! * **The buffer is the source checkpoint.** The newest durable Falcon offset of every Falcon
//!   partition is written in the *same* transaction as the records, and kept when acknowledged
//!   records are deleted, so [`Buffer::resume_offsets`] tells the source exactly where to resume
//!   after a restart: no gap, no duplicate into the buffer.
//! * **Only the contiguous acknowledged prefix is committed.** An ack for a later record never
//!   implies earlier ones; after a restart, reading resumes after the committed prefix, so a
//!   record that was read but not acknowledged is delivered again (at least once).
//!
//! What it must never do: drop or overwrite an unacknowledged record (when full, appends wait:
//! that is backpressure to Falcon), report a record durable that is not, silently truncate
//! unacknowledged data after corruption (it refuses to open instead), or panic on a record it
//! cannot decode (that is [`BufferError::CorruptRecord`] naming the sequence number).
//!
//! With the `kafka` feature, `KafkaBuffer` implements the same trait over a Kafka topic (or an
//! Azure Event Hub): lane = Kafka partition, seq = Kafka offset; an idempotent `acks=all`
//! producer, a checkpoint topic plus a bounded scan for the resume offsets, and a consumer
//! group whose commits cover only the contiguous acknowledged prefix. Its delivery semantics
//! and Event Hubs notes are in the `kafka` module docs.
//!
//! Layout:
//! * [`record`]: [`Record`], [`Position`], [`Entry`], [`Depth`] and the on-disk record codec.
//! * [`disk`]: [`DiskBuffer`] and [`DiskBufferConfig`], the redb backend with group commit.
//! * `kafka` (feature `kafka`): `KafkaBuffer` and `KafkaBufferConfig`, the Kafka backend.
//! * this file: the [`Buffer`] trait and [`BufferError`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

pub mod disk;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod record;

pub use disk::{DiskBuffer, DiskBufferConfig};
#[cfg(feature = "kafka")]
pub use kafka::{
    KafkaBuffer, KafkaBufferConfig, KafkaSecurity, OAuthBearerToken, OAuthTokenSource,
    SaslMechanism, SecurityProtocol,
};
pub use record::{Depth, Entry, Position, Record};

/// A durable, ordered buffer of Falcon events with contiguous-prefix acknowledgement.
///
/// Many source tasks may call [`append`](Buffer::append) concurrently; one reader calls
/// [`read`](Buffer::read); any number of delivery tasks call [`ack`](Buffer::ack).
pub trait Buffer: Send + Sync + 'static {
    /// Appends `records`; resolves once they are durable. Waits while the buffer is full.
    ///
    /// Records of one Falcon partition must be passed in ascending offset order; the offset of
    /// the last record of each partition becomes that partition's resume offset.
    fn append(&self, records: Vec<Record>) -> impl Future<Output = Result<(), BufferError>> + Send;

    /// Falcon partition → newest durable Falcon offset. The source resumes at `offset + 1`.
    fn resume_offsets(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<u32, u64>, BufferError>> + Send;

    /// The next entries after those already read, at least one, at most `max_records` and
    /// (beyond the first) `max_bytes` of encoded records. Waits, without polling, until one is
    /// available. After a restart, reading starts after the committed acknowledged prefix.
    ///
    /// Cancel-safe: a read dropped before it resolves consumes nothing.
    fn read(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, BufferError>> + Send;

    /// Acknowledges delivered positions, in any order. The committed cursor advances only
    /// through the contiguous acknowledged prefix; it is persisted, and the records below it
    /// deleted, in batches.
    fn ack(&self, positions: &[Position]) -> impl Future<Output = Result<(), BufferError>> + Send;

    /// Records (and their encoded bytes) not yet covered by the committed acknowledged prefix.
    fn depth(&self) -> Depth;

    /// The cap on [`Depth::bytes`] beyond which appends wait.
    fn capacity_bytes(&self) -> u64;

    /// Records the backend's storage deleted before they were acknowledged, since it was
    /// opened: Kafka's retention can do that during an outage longer than it. The disk log
    /// never deletes an unacknowledged record, so the default is 0.
    fn records_lost(&self) -> u64 {
        0
    }

    /// Persists the acknowledged prefix and stops accepting appends. Further calls fail with
    /// [`BufferError::Closed`].
    fn close(&self) -> impl Future<Output = Result<(), BufferError>> + Send;
}

/// Errors of the buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    /// The buffer directory could not be created.
    #[error("create buffer directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened: corrupt, locked by another process, unreadable.
    #[error("open buffer file {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause, from redb.
        #[source]
        source: redb::Error,
    },
    /// redb panicked while opening the file; it does so on some corruptions of a file that was
    /// closed cleanly. The file is left untouched.
    #[error("open buffer file {path}: corrupt ({message})")]
    OpenPanicked {
        /// The database file.
        path: PathBuf,
        /// The panic message.
        message: String,
    },
    /// A storage operation failed.
    #[error("buffer storage: {operation}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// The cause, from redb.
        #[source]
        source: redb::Error,
    },
    /// A stored record's header cannot be decoded.
    #[error("buffer record seq {seq} is corrupt: {reason}")]
    CorruptRecord {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A record cannot be encoded (a header field is longer than the format allows).
    #[error("record cannot be encoded: {reason}")]
    Unencodable {
        /// What is wrong.
        reason: &'static str,
    },
    /// An acknowledged position was never handed out by `read` (wrong lane, or not read yet).
    #[error("position lane {lane} seq {seq} was not read from this buffer")]
    UnknownPosition {
        /// Its lane.
        lane: u32,
        /// Its sequence number.
        seq: u64,
    },
    /// The buffer was closed.
    #[error("buffer is closed")]
    Closed,
    /// A Kafka operation failed.
    #[cfg(feature = "kafka")]
    #[error("kafka: {operation}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The cause, from librdkafka.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A Kafka operation did not finish in time.
    #[cfg(feature = "kafka")]
    #[error("kafka: {operation} timed out after {waited:?}: {detail}")]
    KafkaTimeout {
        /// What was being done.
        operation: &'static str,
        /// How long it was given.
        waited: std::time::Duration,
        /// What was still missing.
        detail: String,
    },
    /// The Kafka configuration is invalid.
    #[cfg(feature = "kafka")]
    #[error("kafka configuration: {reason}")]
    KafkaConfig {
        /// What is wrong.
        reason: String,
    },
    /// A CA file named in the Kafka configuration cannot be read.
    #[cfg(feature = "kafka")]
    #[error("read kafka CA file {path}")]
    KafkaCaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configured topic does not exist or cannot be described.
    #[cfg(feature = "kafka")]
    #[error("kafka topic {topic:?} is not usable on brokers {brokers}: {reason}")]
    KafkaTopic {
        /// The topic.
        topic: String,
        /// The bootstrap brokers asked.
        brokers: String,
        /// What is wrong.
        reason: String,
    },
    /// An earlier commit failed; redb must reopen the file to repair its allocator state, so the
    /// buffer refuses further appends until the process restarts.
    #[error("buffer failed earlier and must be reopened: {0}")]
    Failed(String),
}

impl BufferError {
    /// Whether opening again later may succeed without an operator: an I/O error (no space
    /// left, EIO), the file still locked by handles being dropped, a buffer that failed
    /// after an I/O error. Not: corruption, a format this version cannot read, a bad record.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::CreateDir { .. } | Self::Failed(_) => true,
            Self::Open { source, .. } | Self::Storage { source, .. } => matches!(
                source,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen
            ),
            _ => false,
        }
    }
}
