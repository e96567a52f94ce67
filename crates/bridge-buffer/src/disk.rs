//! The embedded disk backend: one redb file, group commit, contiguous-prefix acks.
//!
//! File `<dir>/buffer.redb`, tables:
//! * `records`: seq of a chunk's first record `u64` → chunk of consecutive encoded records (see
//!   [`crate::record`]), at most [`CHUNK_MAX_BYTES`] unless one record is larger. A commit packs
//!   all its records into as few chunks as that allows: redb's cost is per entry, not per byte;
//! * `source_offsets`: Falcon partition `u32` → newest durable Falcon offset `u64`, written in the
//!   same transaction as the records, never deleted with them;
//! * `meta`: `ack_floor` (first seq not covered by the committed ack prefix), `ack_floor_bytes`
//!   (encoded bytes of all records below it, ever) and `appended_bytes` (encoded bytes of all
//!   records ever appended), so opening does not have to scan the records to know the depth;
//!   `format`, the layout version (a file of another format is refused, never misread).
//!
//! Writes: appenders encode their records, reserve capacity, and send the request over a bounded
//! channel to one writer thread. It takes every request that is waiting (up to
//! `max_batch_records`/`max_batch_bytes`, optionally lingering), commits them in ONE transaction
//! with `Durability::Immediate` and two-phase commit, then answers all of them: one durable commit
//! (two fsyncs) per batch. Advancing the persisted ack floor, and deleting the records below it,
//! rides along with the next append transaction, or gets its own transaction at most every
//! [`ACK_FLUSH_INTERVAL`] when no appends come.
//!
//! Why two-phase commit: with redb's default one-phase commit, a primary commit slot that fails
//! its checksums on recovery silently falls back to the previous commit, which would lose a batch
//! already acknowledged as durable if its pages were damaged after the fsync. With two-phase
//! commit the primary is trusted after its fsync, and a damaged one makes the open fail with
//! "Primary is corrupted despite 2-phase commit". The price is a second fsync per commit: on a
//! disk with 7 ms fsyncs, small commits run at about half the rate (see `examples/disk_bench.rs`);
//! large group commits hide it.
//!
//! What redb guarantees, and what `tests/crash.rs` checks: a commit that returned survives a
//! process kill and (given honest fsync) a power loss; a commit torn by a crash is rolled back on
//! the next open (it was never acknowledged). A file damaged afterwards (truncated, garbled)
//! either opens with every acknowledged record, or fails to open naming the file; the buffer
//! never repairs by dropping data. The same holds for a file that was closed cleanly and damaged
//! afterwards, because every open verifies all page checksums (redb would otherwise trust such a
//! file, and may even panic on it; a panic on open is caught as [`BufferError::OpenPanicked`]).
//!
//! Reads run on `spawn_blocking` in a redb read transaction; the reader waits on a
//! [`Notify`] that the writer signals after each commit.
//!
//! Space: capacity counts unacknowledged encoded bytes (in memory, exact; acknowledged records
//! free their capacity at once, before their deletion is persisted). The file holds those, plus
//! records acknowledged since the last ack flush, plus redb's free pages: redb reuses pages freed
//! by deletions and gives back free space at the end of the file (a drained 3 MB backlog leaves a
//! file of about 48 KiB), but free space in the middle stays until reused. On open, if at most
//! 64 MiB are live, the file is compacted.
//!
//! Every open (after a crash: redb's recovery; otherwise: the integrity check) walks the file to
//! verify checksums: the open takes time proportional to the file size (see the benchmark).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::record::{self, Depth, Entry, Position, Record};
use crate::{Buffer, BufferError};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const SOURCE_OFFSETS: TableDefinition<u32, u64> = TableDefinition::new("source_offsets");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_ACK_FLOOR: &str = "ack_floor";
const META_ACK_FLOOR_BYTES: &str = "ack_floor_bytes";
const META_APPENDED_BYTES: &str = "appended_bytes";
const META_FORMAT: &str = "format";
/// Layout of the tables and values; a file of another format is refused, never misread.
const FORMAT: u64 = 1;

/// The file name inside [`DiskBufferConfig::dir`].
pub const FILE_NAME: &str = "buffer.redb";
/// When acks advanced the floor and no append transaction carried it, persist it after this.
/// Losing it in a crash only re-delivers (same EventIds); it never loses data.
pub const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Pending append requests the writer queue holds; memory is bounded by `max_bytes` anyway.
const QUEUE_DEPTH: usize = 1024;
/// redb page cache. Its 1 GiB default is too much for a forwarder (peak RSS goal 128 MiB);
/// reads are sequential and mostly of recent pages, so a small cache costs little.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Target size of one stored chunk. Bigger chunks cost the reader more re-reading when it takes
/// fewer records than a chunk holds; smaller ones cost redb more entries.
pub const CHUNK_MAX_BYTES: usize = 256 * 1024;
/// Compact on open only when this little data is live, so that an open stays fast.
const COMPACT_ON_OPEN_MAX_LIVE_BYTES: u64 = 64 * 1024 * 1024;

/// Configuration of a [`DiskBuffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBufferConfig {
    /// Directory holding `buffer.redb`; created if missing.
    pub dir: PathBuf,
    /// Cap on unacknowledged encoded bytes (header + payload); appends wait beyond it. A single
    /// append larger than the cap is still accepted when the buffer is empty, so it cannot wait
    /// forever.
    pub max_bytes: u64,
    /// Most records one group-commit transaction takes (whole requests; at least one request).
    pub max_batch_records: usize,
    /// Most encoded bytes one group-commit transaction takes (at least one request).
    pub max_batch_bytes: usize,
    /// How long the writer waits for more requests before committing a batch that is below
    /// both limits. Zero: commit what is waiting; requests that arrive during a commit form
    /// the next batch anyway.
    pub linger: Duration,
}

impl DiskBufferConfig {
    /// Defaults: 1 GiB, batches of up to 8192 records / 16 MiB, no linger.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1024 * 1024 * 1024,
            max_batch_records: 8192,
            max_batch_bytes: 16 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }
}

/// The redb-backed [`Buffer`]. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct DiskBuffer {
    path: PathBuf,
    max_bytes: u64,
    shared: Arc<Shared>,
    db: Arc<Database>,
    tx: mpsc::Sender<Command>,
    /// Serialises readers: the read cursor advances only by the one in-flight read.
    reader: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled after each commit that added records (and on close/failure).
    data: Notify,
    /// Signalled when capacity is freed (and on close/failure).
    space: Notify,
    /// Signalled when the ack floor advanced, to wake the writer for an ack flush.
    acked: Notify,
}

#[derive(Debug)]
struct State {
    /// One past the last durable seq.
    next_seq: u64,
    /// Next seq `read` hands out.
    read_cursor: u64,
    /// First seq not covered by the contiguous acknowledged prefix (in memory).
    floor: u64,
    /// Encoded bytes of all records below `floor`, ever.
    floor_bytes: u64,
    /// `floor` as last persisted.
    persisted_floor: u64,
    /// For seqs `floor..read_cursor`: (encoded length, acknowledged).
    window: VecDeque<(u32, bool)>,
    /// Encoded bytes of seqs `floor..next_seq`.
    unacked_bytes: u64,
    /// Bytes admitted but not yet committed.
    reserved_bytes: u64,
    resume_offsets: BTreeMap<u32, u64>,
    closed: bool,
    failed: Option<String>,
}

impl State {
    fn check_usable(&self) -> Result<(), BufferError> {
        if let Some(failed) = &self.failed {
            return Err(BufferError::Failed(failed.clone()));
        }
        if self.closed {
            return Err(BufferError::Closed);
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Command {
    Append(AppendRequest),
    Close(oneshot::Sender<Result<(), BufferError>>),
}

#[derive(Debug)]
struct AppendRequest {
    /// (partition, offset, encoded) per record.
    records: Vec<(u32, u64, Vec<u8>)>,
    bytes: u64,
    reply: oneshot::Sender<Result<(), BufferError>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than the panic itself; keep serving rather than poisoning every caller.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn storage(operation: &'static str) -> impl FnOnce(redb::Error) -> BufferError {
    move |source| BufferError::Storage { operation, source }
}

fn st<E: Into<redb::Error>>(operation: &'static str) -> impl FnOnce(E) -> BufferError {
    move |e| storage(operation)(e.into())
}

impl DiskBuffer {
    /// Opens (or creates) the buffer in `config.dir`. Blocking: may run redb's crash recovery,
    /// which reads the whole file; call it at startup or from `spawn_blocking`.
    pub fn open(config: DiskBufferConfig) -> Result<Self, BufferError> {
        let DiskBufferConfig {
            dir,
            max_bytes,
            max_batch_records,
            max_batch_bytes,
            linger,
        } = config;
        std::fs::create_dir_all(&dir).map_err(|source| BufferError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        create_if_missing(&path)?;
        let mut db = open_database(&path)?;
        let open_err = |source: redb::Error| BufferError::Open {
            path: path.clone(),
            source,
        };

        let (floor, floor_bytes, appended_bytes, next_seq, resume_offsets) =
            load(&db).map_err(open_err)?;
        let unacked_bytes = appended_bytes.checked_sub(floor_bytes).ok_or_else(|| {
            open_err(redb::Error::Corrupted(
                "buffer meta: ack_floor_bytes exceeds appended_bytes".into(),
            ))
        })?;

        if unacked_bytes <= COMPACT_ON_OPEN_MAX_LIVE_BYTES {
            // Cheap when little is live; it gives back the space of a drained backlog.
            let compacted = db.compact().map_err(|e| open_err(e.into()))?;
            tracing::debug!(path = %path.display(), compacted, "compacted buffer file on open");
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_seq,
                read_cursor: floor,
                floor,
                floor_bytes,
                persisted_floor: floor,
                window: VecDeque::new(),
                unacked_bytes,
                reserved_bytes: 0,
                resume_offsets,
                closed: false,
                failed: None,
            }),
            data: Notify::new(),
            space: Notify::new(),
            acked: Notify::new(),
        });
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db: Arc::clone(&db),
            shared: Arc::clone(&shared),
            rx,
            next_seq,
            appended_bytes,
            max_batch_records: max_batch_records.max(1),
            max_batch_bytes: max_batch_bytes.max(1),
            linger,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| open_err(e.into()))?;
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("bridge-buffer-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| runtime.block_on(writer.run()));
                if std::panic::catch_unwind(run).is_err() {
                    // Without its writer the buffer can make nothing durable: fail every caller
                    // instead of letting them wait.
                    tracing::error!("buffer writer thread panicked");
                    watched.lock().failed = Some("writer thread panicked".into());
                    watched.data.notify_waiters();
                    watched.space.notify_waiters();
                }
            })
            .map_err(|e| open_err(e.into()))?;
        tracing::info!(
            path = %path.display(),
            unacked_records = next_seq - floor,
            unacked_bytes,
            "opened disk buffer"
        );
        Ok(Self {
            path,
            max_bytes,
            shared,
            db,
            tx,
            reader: tokio::sync::Mutex::new(()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once a `read` would return without waiting (or the buffer closed/failed).
    pub async fn readable(&self) {
        loop {
            let notified = self.shared.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if state.read_cursor < state.next_seq || state.check_usable().is_err() {
                    return;
                }
            }
            notified.await;
        }
    }

    async fn append_inner(&self, records: Vec<Record>) -> Result<(), BufferError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(records.len());
        let mut bytes = 0u64;
        for r in &records {
            let e = record::encode(r)?;
            bytes += e.len() as u64;
            encoded.push((r.partition, r.offset, e));
        }
        drop(records);

        // Admission: wait for capacity, never drop.
        let reservation = loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                state.check_usable()?;
                let used = state.unacked_bytes + state.reserved_bytes;
                if used == 0 || used + bytes <= self.max_bytes {
                    state.reserved_bytes += bytes;
                    break Reservation {
                        shared: &self.shared,
                        bytes,
                    };
                }
            }
            notified.await;
        };

        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            records: encoded,
            bytes,
            reply,
        };
        self.tx
            .send(Command::Append(request))
            .await
            .map_err(|_| BufferError::Closed)?;
        // The writer now owns the reservation: it converts it into depth or releases it.
        std::mem::forget(reservation);
        answer.await.map_err(|_| {
            self.shared
                .lock()
                .failed
                .clone()
                .map_or(BufferError::Closed, BufferError::Failed)
        })?
    }

    async fn read_inner(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, BufferError> {
        let _reader = self.reader.lock().await;
        let (start, end) = loop {
            let notified = self.shared.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                state.check_usable()?;
                if state.read_cursor < state.next_seq {
                    break (state.read_cursor, state.next_seq);
                }
            }
            notified.await;
        };
        let max_records = max_records.max(1);
        let db = Arc::clone(&self.db);
        let read = tokio::task::spawn_blocking(move || {
            read_range(&db, start, end, max_records, max_bytes)
        })
        .await
        .map_err(|e| BufferError::Failed(format!("read task: {e}")))??;

        let mut state = self.shared.lock();
        debug_assert_eq!(state.read_cursor, start);
        for (_, len) in &read {
            state.window.push_back((*len, false));
        }
        state.read_cursor = start + read.len() as u64;
        Ok(read.into_iter().map(|(entry, _)| entry).collect())
    }

    fn ack_inner(&self, positions: &[Position]) -> Result<(), BufferError> {
        let mut state = self.shared.lock();
        for p in positions {
            if p.lane != 0 || p.seq >= state.read_cursor {
                return Err(BufferError::UnknownPosition {
                    lane: p.lane,
                    seq: p.seq,
                });
            }
        }
        for p in positions {
            if p.seq >= state.floor {
                let i = (p.seq - state.floor) as usize;
                state.window[i].1 = true;
            }
        }
        let mut freed = 0u64;
        let mut advanced = 0u64;
        while let Some(&(len, true)) = state.window.front() {
            state.window.pop_front();
            freed += u64::from(len);
            advanced += 1;
        }
        if advanced > 0 {
            state.floor += advanced;
            state.floor_bytes += freed;
            // Open refuses counters that leave unacknowledged records uncounted, but cannot
            // afford to sum every record of a large file, so a damaged or foreign file may
            // still count fewer bytes than its records hold. Saturate (a wrapped count would
            // make every later append wait forever) and say so; only the byte depth is off,
            // and only until the buffer drains.
            if state.unacked_bytes < freed {
                tracing::warn!(
                    unacked_bytes = state.unacked_bytes,
                    freed,
                    "buffer byte counters were below the records' size (a damaged or foreign \
                     file); the byte depth is an estimate until the buffer drains"
                );
            }
            state.unacked_bytes = state.unacked_bytes.saturating_sub(freed);
            drop(state);
            self.shared.space.notify_waiters();
            self.shared.acked.notify_one();
        }
        Ok(())
    }

    async fn close_inner(&self) -> Result<(), BufferError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).await.is_err() {
            return Err(BufferError::Closed);
        }
        answer.await.map_err(|_| BufferError::Closed)?
    }
}

/// Releases reserved capacity if an append is cancelled before the writer owns it.
struct Reservation<'a> {
    shared: &'a Shared,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared.lock().reserved_bytes -= self.bytes;
        self.shared.space.notify_waiters();
    }
}

impl Buffer for DiskBuffer {
    fn append(&self, records: Vec<Record>) -> impl Future<Output = Result<(), BufferError>> + Send {
        self.append_inner(records)
    }

    async fn resume_offsets(&self) -> Result<BTreeMap<u32, u64>, BufferError> {
        let state = self.shared.lock();
        if let Some(failed) = &state.failed {
            return Err(BufferError::Failed(failed.clone()));
        }
        Ok(state.resume_offsets.clone())
    }

    fn read(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, BufferError>> + Send {
        self.read_inner(max_records, max_bytes)
    }

    async fn ack(&self, positions: &[Position]) -> Result<(), BufferError> {
        self.ack_inner(positions)
    }

    fn depth(&self) -> Depth {
        let state = self.shared.lock();
        Depth {
            records: state.next_seq - state.floor,
            bytes: state.unacked_bytes,
        }
    }

    fn capacity_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn close(&self) -> impl Future<Output = Result<(), BufferError>> + Send {
        self.close_inner()
    }
}

/// `e` and its sources, for the one place that keeps an error as text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Opens the file, turning a redb panic on a corrupt file into an error.
/// Creates a new, initialised buffer file under a temporary name and renames it into place,
/// so `buffer.redb` only ever exists complete. An existing file is never re-created: redb
/// would turn an empty (truncated) file into a fresh database and silently drop everything
/// it held, so an empty one is refused as damaged instead.
fn create_if_missing(path: &Path) -> Result<(), BufferError> {
    let damaged = |reason: String| BufferError::Open {
        path: path.to_path_buf(),
        source: redb::Error::Corrupted(reason),
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(damaged(
                "the buffer file is empty, so it was truncated (it is created complete); move it \
                 aside to start with an empty buffer"
                    .into(),
            ));
        }
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(damaged(format!("cannot stat the buffer file: {error}"))),
    }
    let fresh = path.with_extension("redb.creating");
    // A leftover from a crash during an earlier creation never held data.
    let _ = std::fs::remove_file(&fresh);
    {
        let db = open_database(&fresh)?;
        load(&db).map_err(|source| BufferError::Open {
            path: fresh.clone(),
            source,
        })?;
    }
    let io = |error: std::io::Error| damaged(format!("create the buffer file: {error}"));
    std::fs::rename(&fresh, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

fn open_database(path: &Path) -> Result<Database, BufferError> {
    let opened = std::panic::catch_unwind(|| {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        // Verify every page checksum on each open, not only after a crash: a file damaged while
        // closed then fails to open instead of serving garbage records (or panicking). It costs
        // one read of the file, bounded by the capacity.
        builder.set_check_integrity_on_open(true);
        builder.create(path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(source)) => Err(BufferError::Open {
            path: path.to_path_buf(),
            source: source.into(),
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Err(BufferError::OpenPanicked {
                path: path.to_path_buf(),
                message,
            })
        }
    }
}

type Loaded = (u64, u64, u64, u64, BTreeMap<u32, u64>);

/// Reads the persisted cursor, counters and resume offsets; creates the tables if missing.
fn load(db: &Database) -> Result<Loaded, redb::Error> {
    let txn = db.begin_write()?;
    let loaded = {
        let mut meta = txn.open_table(META)?;
        let format = meta.get(META_FORMAT)?.map(|v| v.value());
        match format {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(redb::Error::Corrupted(format!(
                    "buffer format {other}, this version reads format {FORMAT}"
                )));
            }
            None if meta.len()? == 0 && txn.open_table(RECORDS)?.len()? == 0 => {
                meta.insert(META_FORMAT, FORMAT)?;
            }
            None => {
                return Err(redb::Error::Corrupted(
                    "buffer file without a format version: not written by this version".into(),
                ));
            }
        }
        let get = |key| -> Result<u64, redb::Error> { Ok(meta.get(key)?.map_or(0, |v| v.value())) };
        let floor = get(META_ACK_FLOOR)?;
        let floor_bytes = get(META_ACK_FLOOR_BYTES)?;
        let appended_bytes = get(META_APPENDED_BYTES)?;
        let records = txn.open_table(RECORDS)?;
        let next_seq = match records.last()? {
            Some((k, v)) => {
                let count = record::chunk_count(v.value()).ok_or_else(|| {
                    redb::Error::Corrupted(format!("buffer chunk at seq {}: bad header", k.value()))
                })?;
                // A damaged key near u64::MAX must be an error, not a wrapped cursor.
                k.value()
                    .checked_add(count)
                    .ok_or_else(|| {
                        redb::Error::Corrupted(format!(
                            "buffer chunk at seq {} with {count} records: seq out of range",
                            k.value()
                        ))
                    })?
                    .max(floor)
            }
            None => floor,
        };
        if let Some((k, v)) = records.first()? {
            let end = k
                .value()
                .saturating_add(record::chunk_count(v.value()).unwrap_or(0));
            if end <= floor {
                return Err(redb::Error::Corrupted(format!(
                    "buffer records: chunk at seq {} lies below the ack floor {floor}",
                    k.value()
                )));
            }
        }
        // Unacknowledged records must be counted in the byte counters, or the capacity check
        // (and the arithmetic of acknowledgement) would be wrong from here on.
        if next_seq > floor && appended_bytes <= floor_bytes {
            return Err(redb::Error::Corrupted(format!(
                "buffer counters: records {floor}..{next_seq} are unacknowledged but the byte \
                 counters (appended {appended_bytes}, acknowledged {floor_bytes}) leave none"
            )));
        }
        let offsets = txn.open_table(SOURCE_OFFSETS)?;
        let mut resume = BTreeMap::new();
        for item in offsets.iter()? {
            let (k, v) = item?;
            resume.insert(k.value(), v.value());
        }
        (floor, floor_bytes, appended_bytes, next_seq, resume)
    };
    txn.commit()?;
    Ok(loaded)
}

/// Reads up to `max_records` records (and `max_bytes`, beyond the first) from `start..end`.
fn read_range(
    db: &Database,
    start: u64,
    end: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<(Entry, u32)>, BufferError> {
    let txn = db.begin_read().map_err(st("begin read"))?;
    let table = txn.open_table(RECORDS).map_err(st("open records"))?;
    // The chunk holding `start` begins at or before it.
    let first_chunk = match table
        .range(..=start)
        .map_err(st("read records"))?
        .next_back()
    {
        Some(item) => item.map_err(st("read records"))?.0.value(),
        None => start,
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut expected = first_chunk;
    'chunks: for item in table.range(first_chunk..end).map_err(st("read records"))? {
        if out.len() >= max_records {
            break;
        }
        let (k, v) = item.map_err(st("read records"))?;
        let chunk_seq = k.value();
        if chunk_seq != expected {
            // A hole below the durable end means the file lost committed records.
            return Err(BufferError::CorruptRecord {
                seq: expected,
                reason: "record missing below the durable end",
            });
        }
        let chunk = v.value();
        let records = record::chunk_records(chunk_seq, chunk)?;
        expected = chunk_seq.saturating_add(records.len() as u64);
        for (seq, value) in (chunk_seq..).zip(records) {
            if seq < start {
                continue;
            }
            if out.len() >= max_records || (!out.is_empty() && bytes + value.len() > max_bytes) {
                break 'chunks;
            }
            bytes += value.len();
            let record = record::decode(seq, value)?;
            out.push((
                Entry {
                    position: Position { lane: 0, seq },
                    record,
                },
                value.len() as u32,
            ));
        }
    }
    if out.is_empty() {
        return Err(BufferError::CorruptRecord {
            seq: start,
            reason: "record missing below the durable end",
        });
    }
    Ok(out)
}

struct Writer {
    db: Arc<Database>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    next_seq: u64,
    appended_bytes: u64,
    max_batch_records: usize,
    max_batch_bytes: usize,
    linger: Duration,
}

enum Wake {
    Command(Option<Command>),
    AckFlush,
}

impl Writer {
    async fn run(mut self) {
        let mut ack_deadline: Option<Instant> = None;
        let mut closing: Option<oneshot::Sender<Result<(), BufferError>>> = None;
        loop {
            let wake = if let Some(deadline) = ack_deadline {
                tokio::select! {
                    cmd = self.rx.recv() => Wake::Command(cmd),
                    () = tokio::time::sleep_until(deadline) => Wake::AckFlush,
                }
            } else {
                tokio::select! {
                    cmd = self.rx.recv() => Wake::Command(cmd),
                    () = self.shared.acked.notified() => {
                        ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                        continue;
                    }
                }
            };
            let mut batch = Vec::new();
            match wake {
                Wake::AckFlush => {}
                Wake::Command(None) => break,
                Wake::Command(Some(Command::Close(reply))) => {
                    closing = Some(reply);
                    break;
                }
                Wake::Command(Some(Command::Append(request))) => {
                    batch.push(request);
                    if let Some(reply) = self.fill(&mut batch).await {
                        closing = Some(reply);
                    }
                }
            }
            ack_deadline = None;
            let result = self.commit(&mut batch);
            let failed = result.is_err();
            if let Err(e) = result {
                let message = error_chain(&e);
                tracing::error!(error = %message, "buffer commit failed; refusing further appends");
                self.shared.lock().failed = Some(message.clone());
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(BufferError::Failed(message.clone())));
                }
            }
            if failed || closing.is_some() {
                break;
            }
        }
        self.shutdown(closing);
    }

    /// Adds waiting requests to `batch` up to the limits, lingering if configured. Returns a
    /// close request met on the way (the batch is committed first).
    async fn fill(
        &mut self,
        batch: &mut Vec<AppendRequest>,
    ) -> Option<oneshot::Sender<Result<(), BufferError>>> {
        let mut records: usize = batch.iter().map(|r| r.records.len()).sum();
        let mut bytes: u64 = batch.iter().map(|r| r.bytes).sum();
        let deadline = Instant::now() + self.linger;
        while records < self.max_batch_records && bytes < self.max_batch_bytes as u64 {
            let cmd = match self.rx.try_recv() {
                Ok(cmd) => cmd,
                Err(_) if self.linger.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(cmd)) => cmd,
                    Ok(None) | Err(_) => break,
                },
            };
            match cmd {
                Command::Append(request) => {
                    records += request.records.len();
                    bytes += request.bytes;
                    batch.push(request);
                }
                Command::Close(reply) => return Some(reply),
            }
        }
        None
    }

    /// Commits `batch` and the ack floor in one durable transaction, then answers the batch.
    fn commit(&mut self, batch: &mut Vec<AppendRequest>) -> Result<(), BufferError> {
        let (floor, floor_bytes, persisted_floor) = {
            let state = self.shared.lock();
            (state.floor, state.floor_bytes, state.persisted_floor)
        };
        if batch.is_empty() && floor == persisted_floor {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(st("begin write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(st("set durability"))?;
        txn.set_two_phase_commit(true);
        let mut seq = self.next_seq;
        let batch_bytes: u64 = batch.iter().map(|r| r.bytes).sum();
        let mut offsets: BTreeMap<u32, u64> = BTreeMap::new();
        {
            let mut records = txn.open_table(RECORDS).map_err(st("open records"))?;
            let mut chunk: Vec<&[u8]> = Vec::new();
            let mut chunk_bytes = 0usize;
            let mut chunk_seq = seq;
            let all = batch.iter().flat_map(|r| r.records.iter());
            for (partition, offset, encoded) in all {
                if !chunk.is_empty() && chunk_bytes + encoded.len() > CHUNK_MAX_BYTES {
                    let value = record::encode_chunk(chunk.iter().copied());
                    records
                        .insert(chunk_seq, value.as_slice())
                        .map_err(st("insert records"))?;
                    chunk.clear();
                    chunk_bytes = 0;
                    chunk_seq = seq;
                }
                chunk.push(encoded);
                chunk_bytes += encoded.len();
                offsets.insert(*partition, *offset);
                seq += 1;
            }
            if !chunk.is_empty() {
                let value = record::encode_chunk(chunk.iter().copied());
                records
                    .insert(chunk_seq, value.as_slice())
                    .map_err(st("insert records"))?;
            }
            if floor > persisted_floor {
                // Delete the chunks wholly below the floor; the one straddling it stays.
                let from = records
                    .range(..=persisted_floor)
                    .map_err(st("delete acknowledged records"))?
                    .next_back()
                    .transpose()
                    .map_err(st("delete acknowledged records"))?
                    .map_or(persisted_floor, |(k, _)| k.value());
                records
                    .retain_in(from..floor, |first, chunk| {
                        record::chunk_count(chunk).is_none_or(|n| first + n > floor)
                    })
                    .map_err(st("delete acknowledged records"))?;
            }
            let mut table = txn
                .open_table(SOURCE_OFFSETS)
                .map_err(st("open source offsets"))?;
            for (partition, offset) in &offsets {
                table
                    .insert(partition, offset)
                    .map_err(st("write source offset"))?;
            }
            let mut meta = txn.open_table(META).map_err(st("open meta"))?;
            meta.insert(META_APPENDED_BYTES, self.appended_bytes + batch_bytes)
                .map_err(st("write meta"))?;
            meta.insert(META_ACK_FLOOR, floor)
                .map_err(st("write meta"))?;
            meta.insert(META_ACK_FLOOR_BYTES, floor_bytes)
                .map_err(st("write meta"))?;
        }
        txn.commit().map_err(st("commit"))?;

        self.next_seq = seq;
        self.appended_bytes += batch_bytes;
        {
            let mut state = self.shared.lock();
            state.next_seq = seq;
            state.unacked_bytes += batch_bytes;
            state.reserved_bytes -= batch_bytes;
            state.persisted_floor = floor;
            state.resume_offsets.extend(offsets);
        }
        if !batch.is_empty() {
            self.shared.data.notify_waiters();
        }
        for request in batch.drain(..) {
            // The caller may have given up waiting; the records are durable regardless.
            let _ = request.reply.send(Ok(()));
        }
        Ok(())
    }

    /// Persists the ack floor, marks the buffer closed and fails what is still queued.
    fn shutdown(mut self, closing: Option<oneshot::Sender<Result<(), BufferError>>>) {
        let failed = self.shared.lock().failed.clone();
        let result = match &failed {
            Some(failed) => Err(BufferError::Failed(failed.clone())),
            None => self.commit(&mut Vec::new()),
        };
        self.shared.lock().closed = true;
        let refused = || {
            failed
                .clone()
                .map_or(BufferError::Closed, BufferError::Failed)
        };
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Append(request) => {
                    self.shared.lock().reserved_bytes -= request.bytes;
                    let _ = request.reply.send(Err(refused()));
                }
                Command::Close(reply) => {
                    let _ = reply.send(Err(refused()));
                }
            }
        }
        self.shared.data.notify_waiters();
        self.shared.space.notify_waiters();
        // Release the file before answering, so a reopen in this process can lock it.
        drop(self.db);
        if let Some(reply) = closing {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(offset: u64) -> Record {
        Record {
            partition: 0,
            offset,
            event_type: "t".into(),
            customer_id: "c".into(),
            created_at_ms: 0,
            payload: Bytes::from_static(b"{}"),
        }
    }

    /// With no appends to ride along, acks are persisted (and records deleted) by the timer.
    #[tokio::test]
    async fn idle_acks_are_persisted_by_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let buf = DiskBuffer::open(DiskBufferConfig::new(dir.path())).unwrap();
        buf.append((0..10).map(rec).collect()).await.unwrap();
        let entries = buf.read(10, usize::MAX).await.unwrap();
        let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
        buf.ack(&positions[..6]).await.unwrap();
        assert_eq!(buf.shared.lock().persisted_floor, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while buf.shared.lock().persisted_floor != 6 {
            assert!(
                std::time::Instant::now() < deadline,
                "ack floor never persisted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let txn = buf.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(META_ACK_FLOOR).unwrap().unwrap().value(), 6);
        // The chunk straddling the floor stays; reading on is unaffected.
        buf.ack(&positions[6..]).await.unwrap();
        buf.append(vec![rec(10)]).await.unwrap();
        let next = buf.read(10, usize::MAX).await.unwrap();
        assert_eq!(next[0].position.seq, 10);
    }
}
