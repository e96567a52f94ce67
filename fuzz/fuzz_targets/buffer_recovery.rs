//! Opening a `DiskBuffer` on a damaged or inconsistent file, then reading, acknowledging and
//! closing it: never a panic; either an error, or a buffer that serves exactly what was durable.
//!
//! The record and chunk decoders (`record::decode`, `record::chunk_records`) are `pub(crate)`,
//! so they are reached the way production reaches them: through `DiskBuffer::open` + `read`.
//! Two kinds of input:
//!
//! * `Db`: a redb file written directly with the buffer's tables (records, chunks, meta,
//!   source offsets) from a fuzzer-chosen description, optionally garbled (meta counters,
//!   format, chunk bytes, chunk keys). Without garbling the oracle is exact: the open succeeds,
//!   `depth` matches, `read` returns every record above the ack floor, in order, and
//!   `resume_offsets` is the table. With garbling: any error is fine, a panic is not.
//! * `Mutate`: a real file written by `DiskBuffer` itself (appends, reads, an ack, close), with
//!   bytes flipped and/or truncated. redb checks every page on open, so the buffer must either
//!   refuse to open (an error naming the file) or serve exactly the records of the intact file.
//!
//! `BufferError::OpenPanicked` is the crate's documented way of reporting a redb panic during
//! open; the panic hook lets exactly that one through. Any other panic (the writer thread, a
//! read, an ack) aborts as a crash.
#![no_main]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

use arbitrary::Arbitrary;
use bridge_buffer::{Buffer, BufferError, DiskBuffer, DiskBufferConfig, Entry, Record};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use redb::{Database, TableDefinition};

// The buffer's on-disk layout (bridge-buffer/src/disk.rs), written here directly.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const SOURCE_OFFSETS: TableDefinition<u32, u64> = TableDefinition::new("source_offsets");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

thread_local! {
    /// Set while `DiskBuffer::open` runs: the only place a (caught) panic is documented.
    static IN_OPEN: Cell<bool> = const { Cell::new(false) };
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys's hook aborts on every panic, even one the crate catches.
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_OPEN.with(Cell::get) {
                fuzzer_hook(info);
            } else if std::env::var_os("FUZZ_DEBUG").is_some() {
                // A caught panic during open: shown on request (replaying one input).
                eprintln!("panic during open (caught or not): {info}");
            }
        }));
    });
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    // tmpfs when there is one: the buffer fsyncs on every commit.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "fsb-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

fn config(dir: &Path) -> DiskBufferConfig {
    let mut c = DiskBufferConfig::new(dir);
    c.max_bytes = 1 << 20;
    c
}

fn open(dir: &Path) -> Result<DiskBuffer, BufferError> {
    IN_OPEN.with(|f| f.set(true));
    let result = std::panic::catch_unwind(|| DiskBuffer::open(config(dir)));
    IN_OPEN.with(|f| f.set(false));
    match result {
        Ok(r) => r,
        Err(_) => panic!("DiskBuffer::open let a panic escape (see the message above)"),
    }
}

/// Reads everything `depth` says is there, acks it, closes. Returns what was read, or the
/// first error.
fn drain(buffer: &DiskBuffer) -> Result<(Vec<Entry>, BTreeMap<u32, u64>), BufferError> {
    runtime().block_on(async {
        let resume = buffer.resume_offsets().await?;
        let want = buffer.depth().records;
        let mut all: Vec<Entry> = Vec::new();
        let mut result = Ok(());
        while (all.len() as u64) < want {
            match buffer.read(1000, 1 << 20).await {
                Ok(entries) => {
                    assert!(!entries.is_empty(), "read returned nothing");
                    all.extend(entries);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for pair in all.windows(2) {
            assert_eq!(
                pair[0].position.seq + 1,
                pair[1].position.seq,
                "read skipped a seq"
            );
        }
        let positions: Vec<_> = all.iter().map(|e| e.position).collect();
        // Acks in reverse order: the floor only advances once the prefix is complete.
        for p in positions.iter().rev() {
            buffer.ack(std::slice::from_ref(p)).await?;
        }
        let close = buffer.close().await;
        result?;
        close?;
        Ok((all, resume))
    })
}

// ---- Db: a file written directly -------------------------------------------------------------

#[derive(Debug, Arbitrary)]
struct SpecRecord {
    partition: u8,
    offset: u32,
    event_type: String,
    customer_id: String,
    created_at_ms: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Garble {
    Meta { key: u8, value: Option<u64> },
    ChunkBytes { index: u8, bytes: Vec<u8> },
    ChunkXor { index: u8, at: u16, xor: u8 },
    ChunkTruncate { index: u8, len: u16 },
    ChunkKey { index: u8, key: u64 },
    DropChunk { index: u8 },
}

#[derive(Debug, Arbitrary)]
struct DbSpec {
    records: Vec<SpecRecord>,
    /// Records per chunk, cycled (0 counts as 1).
    chunk_sizes: Vec<u8>,
    /// Records already acknowledged (modulo count + 1).
    acked: u8,
    /// Seq of the first record still in the file (earlier ones acknowledged and deleted).
    first_seq: u16,
    deleted_bytes: u16,
    offsets: Vec<(u8, u32)>,
    garbles: Vec<Garble>,
}

fn encode(r: &Record) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&r.partition.to_le_bytes());
    out.extend_from_slice(&r.offset.to_le_bytes());
    out.extend_from_slice(&r.created_at_ms.to_le_bytes());
    out.extend_from_slice(&(r.event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(r.event_type.as_bytes());
    out.extend_from_slice(&(r.customer_id.len() as u16).to_le_bytes());
    out.extend_from_slice(r.customer_id.as_bytes());
    out.extend_from_slice(&r.payload);
    out
}

fn encode_chunk(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (records.len() as u32).to_le_bytes().to_vec();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
    }
    for r in records {
        out.extend_from_slice(r);
    }
    out
}

fn run_db(spec: DbSpec) {
    let records: Vec<Record> = spec
        .records
        .into_iter()
        .take(12)
        .map(|r| Record {
            partition: u32::from(r.partition % 4),
            offset: u64::from(r.offset),
            event_type: r.event_type,
            customer_id: r.customer_id,
            created_at_ms: r.created_at_ms,
            payload: Bytes::from(r.payload),
        })
        .collect();
    let encoded: Vec<Vec<u8>> = records.iter().map(encode).collect();
    let n = records.len();
    let acked = usize::from(spec.acked) % (n + 1);
    let first_seq = u64::from(spec.first_seq);
    let floor = first_seq + acked as u64;
    let deleted = u64::from(spec.deleted_bytes);
    let floor_bytes = deleted + encoded[..acked].iter().map(|e| e.len() as u64).sum::<u64>();
    let appended = deleted + encoded.iter().map(|e| e.len() as u64).sum::<u64>();

    // Chunks: (first seq, bytes); chunks wholly below the floor were deleted by the ack flush.
    let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut i = 0;
    let mut sizes = spec.chunk_sizes.iter().cycle();
    while i < n {
        let size = sizes
            .next()
            .map_or(n, |s| usize::from(*s).max(1))
            .min(n - i);
        if i + size > acked {
            chunks.push((first_seq + i as u64, encode_chunk(&encoded[i..i + size])));
        }
        i += size;
    }
    let mut meta: Vec<(&str, Option<u64>)> = vec![
        ("format", Some(1)),
        ("ack_floor", Some(floor)),
        ("ack_floor_bytes", Some(floor_bytes)),
        ("appended_bytes", Some(appended)),
    ];
    let offsets: BTreeMap<u32, u64> = spec
        .offsets
        .iter()
        .take(4)
        .map(|(p, o)| (u32::from(*p % 4), u64::from(*o)))
        .collect();

    let garbled = !spec.garbles.is_empty();
    for g in spec.garbles.into_iter().take(4) {
        let pick = |index: u8, len: usize| (len > 0).then(|| usize::from(index) % len);
        match g {
            Garble::Meta { key, value } => {
                let k = usize::from(key) % meta.len();
                meta[k].1 = value;
            }
            Garble::ChunkBytes { index, bytes } => {
                if let Some(k) = pick(index, chunks.len()) {
                    chunks[k].1 = bytes;
                }
            }
            Garble::ChunkXor { index, at, xor } => {
                if let Some(k) = pick(index, chunks.len()) {
                    let c = &mut chunks[k].1;
                    if !c.is_empty() {
                        let at = usize::from(at) % c.len();
                        c[at] ^= xor;
                    }
                }
            }
            Garble::ChunkTruncate { index, len } => {
                if let Some(k) = pick(index, chunks.len()) {
                    chunks[k].1.truncate(usize::from(len));
                }
            }
            Garble::ChunkKey { index, key } => {
                if let Some(k) = pick(index, chunks.len()) {
                    chunks[k].0 = key;
                }
            }
            Garble::DropChunk { index } => {
                if let Some(k) = pick(index, chunks.len()) {
                    chunks.remove(k);
                }
            }
        }
    }

    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    {
        let db = Database::create(dir.join("buffer.redb")).expect("create db");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(RECORDS).expect("records");
            for (k, v) in &chunks {
                t.insert(*k, v.as_slice()).expect("insert chunk");
            }
            let mut t = txn.open_table(META).expect("meta");
            for (k, v) in &meta {
                if let Some(v) = v {
                    t.insert(*k, *v).expect("insert meta");
                }
            }
            let mut t = txn.open_table(SOURCE_OFFSETS).expect("offsets");
            for (p, o) in &offsets {
                t.insert(*p, *o).expect("insert offset");
            }
        }
        txn.commit().expect("commit");
    }

    let opened = open(&dir);
    match opened {
        Ok(buffer) => {
            let depth = buffer.depth();
            let drained = drain(&buffer);
            drop(buffer);
            if !garbled {
                assert_eq!(depth.records, (n - acked) as u64);
                assert_eq!(depth.bytes, appended - floor_bytes);
                let (entries, resume) = drained.expect("intact buffer must drain");
                assert_eq!(resume, offsets);
                let got: Vec<(u64, &Record)> = entries
                    .iter()
                    .map(|e| (e.position.seq, &e.record))
                    .collect();
                let want: Vec<(u64, &Record)> = (floor..).zip(records[acked..].iter()).collect();
                assert_eq!(got, want);
            }
        }
        Err(e) => assert!(garbled, "an intact file failed to open: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Mutate: a real file, damaged ------------------------------------------------------------

struct Template {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    resume: BTreeMap<u32, u64>,
}

fn sample(partition: u32, offset: u64) -> Record {
    Record {
        partition,
        offset,
        event_type: "EppDetectionSummaryEvent".into(),
        customer_id: "0123456789abcdef0123456789abcdef".into(),
        created_at_ms: 1_742_584_040_000 + offset,
        payload: Bytes::from(format!(
            "{{\"metadata\":{{\"offset\":{offset},\"eventType\":\"EppDetectionSummaryEvent\"}},\"event\":{{\"n\":{offset}}}}}"
        )),
    }
}

/// A file written by the buffer itself: 5 records, 2 read and acknowledged, closed cleanly;
/// plus what an intact reopen serves.
fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch_dir();
        let buffer = DiskBuffer::open(config(&dir)).expect("template open");
        runtime().block_on(async {
            buffer
                .append(vec![sample(0, 10), sample(0, 11), sample(1, 7)])
                .await
                .expect("append");
            let read = buffer.read(2, 1 << 20).await.expect("read");
            let positions: Vec<_> = read.iter().map(|e| e.position).collect();
            buffer.ack(&positions).await.expect("ack");
            // This append carries the advanced ack floor.
            buffer
                .append(vec![sample(1, 8), sample(0, 12)])
                .await
                .expect("append");
            buffer.close().await.expect("close");
        });
        drop(buffer);
        let path = dir.join("buffer.redb");
        let bytes = std::fs::read(&path).expect("read template");
        let check = scratch_dir();
        std::fs::create_dir_all(&check).expect("dir");
        std::fs::write(check.join("buffer.redb"), &bytes).expect("write");
        let reopened = DiskBuffer::open(config(&check)).expect("reopen template");
        let (entries, resume) = drain(&reopened).expect("drain template");
        drop(reopened);
        assert_eq!(entries.len(), 3, "template: 5 appended, 2 acknowledged");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&check);
        Template {
            bytes,
            entries,
            resume,
        }
    })
}

/// `FUZZ_SKIP_KNOWN=1`: do not stop on findings already reported and saved as regressions,
/// so that a campaign explores past them. Regression replays never set it.
fn skip_known() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

#[derive(Debug, Arbitrary)]
struct Mutation {
    flips: Vec<(u32, u8)>,
    truncate: Option<u32>,
}

fn run_mutate(m: Mutation) {
    let t = template();
    let mut bytes = t.bytes.clone();
    let mut changed = false;
    for (at, xor) in m.flips.iter().take(8) {
        let at = *at as usize % bytes.len();
        changed |= *xor != 0;
        bytes[at] ^= xor;
    }
    if let Some(len) = m.truncate {
        let len = len as usize % bytes.len();
        changed |= len < bytes.len();
        bytes.truncate(len);
    }
    if bytes.is_empty() && skip_known() {
        // Known finding (fuzz/regressions/buffer_recovery/README.md): a buffer file truncated
        // to zero bytes opens as a new, empty buffer.
        return;
    }
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("buffer.redb");
    std::fs::write(&path, &bytes).expect("write mutated file");
    match open(&dir) {
        Ok(buffer) => {
            let drained = drain(&buffer);
            drop(buffer);
            match drained {
                Ok((entries, resume)) => {
                    assert_eq!(entries, t.entries, "damaged file served other records");
                    assert_eq!(resume, t.resume, "damaged file gave other resume offsets");
                }
                // Damage found only when reading or writing back the ack floor: an error (the
                // record's seq, the failed storage operation) is the acceptable outcome.
                Err(_) => {}
            }
        }
        Err(e) => {
            assert!(changed, "intact template failed to open: {e}");
            let shown = format!("{e}");
            assert!(
                shown.contains(&*path.to_string_lossy()),
                "open error does not name the file: {shown}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Debug, Arbitrary)]
enum Input {
    Db(DbSpec),
    Mutate(Mutation),
}

fuzz_target!(|input: Input| {
    install_panic_hook();
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        // Replaying one input: show what it decodes to.
        eprintln!("{input:#?}");
    }
    match input {
        Input::Db(spec) => run_db(spec),
        Input::Mutate(m) => run_mutate(m),
    }
});
