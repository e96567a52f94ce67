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
//! A Kafka backend (lane = Kafka partition) is planned for a later session; it does not exist
//! yet, and nothing in this crate pretends otherwise.
//!
//! Layout:
//! * [`record`]: [`Record`], [`Position`], [`Entry`], [`Depth`] and the on-disk record codec.
//! * [`disk`]: [`DiskBuffer`] and [`DiskBufferConfig`], the redb backend with group commit.
//! * this file: the [`Buffer`] trait and [`BufferError`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

pub mod disk;
pub mod record;

pub use disk::{DiskBuffer, DiskBufferConfig};
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
    /// An earlier commit failed; redb must reopen the file to repair its allocator state, so the
    /// buffer refuses further appends until the process restarts.
    #[error("buffer failed earlier and must be reopened: {0}")]
    Failed(String),
}
