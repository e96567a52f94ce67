//! Behaviour of the disk buffer across appends, reads, acks, restarts and corruption.

use std::collections::BTreeMap;
use std::time::Duration;

use bridge_buffer::{Buffer, BufferError, DiskBuffer, DiskBufferConfig, Position, Record};
use bytes::Bytes;

const DEADLINE: Duration = Duration::from_secs(20);

fn rec(partition: u32, offset: u64, payload_len: usize) -> Record {
    Record {
        partition,
        offset,
        event_type: "DetectionSummaryEvent".into(),
        customer_id: "cust".into(),
        created_at_ms: 1_700_000_000_000 + offset,
        payload: Bytes::from(vec![b'x'; payload_len]),
    }
}

fn config(dir: &std::path::Path) -> DiskBufferConfig {
    DiskBufferConfig::new(dir)
}

async fn reopen(buf: DiskBuffer, cfg: &DiskBufferConfig) -> DiskBuffer {
    buf.close().await.unwrap();
    drop(buf);
    DiskBuffer::open(cfg.clone()).unwrap()
}

async fn read_all(buf: &DiskBuffer, n: usize) -> Vec<bridge_buffer::Entry> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = tokio::time::timeout(DEADLINE, buf.read(n - out.len(), usize::MAX))
            .await
            .expect("read timed out")
            .unwrap();
        out.extend(got);
    }
    out
}

#[tokio::test]
async fn append_read_ack_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = DiskBuffer::open(cfg.clone()).unwrap();
    assert!(buf.resume_offsets().await.unwrap().is_empty());
    buf.append(vec![rec(0, 10, 100), rec(0, 11, 100)])
        .await
        .unwrap();
    buf.append(vec![rec(1, 5, 100)]).await.unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 11), (1, 5)])
    );
    let depth = buf.depth();
    assert_eq!(depth.records, 3);
    assert_eq!(depth.bytes, 3 * rec(0, 10, 100).encoded_len() as u64);

    let entries = read_all(&buf, 3).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.position.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(entries[0].record, rec(0, 10, 100));
    assert_eq!(entries[2].record.event_id(), "cust:1:5");

    let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
    buf.ack(&positions).await.unwrap();
    assert_eq!(buf.depth().records, 0);
    assert_eq!(buf.depth().bytes, 0);

    // Offsets survive the deletion of the acknowledged records and a restart.
    let buf = reopen(buf, &cfg).await;
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 11), (1, 5)])
    );
    assert_eq!(buf.depth().records, 0);
    buf.append(vec![rec(0, 12, 10)]).await.unwrap();
    let entries = read_all(&buf, 1).await;
    assert_eq!(
        entries[0].position.seq, 3,
        "sequence numbers are never reused"
    );
    assert_eq!(entries[0].record.offset, 12);
}

#[tokio::test]
async fn read_respects_max_records_and_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(config(dir.path())).unwrap();
    buf.append((0..10).map(|o| rec(0, o, 100)).collect())
        .await
        .unwrap();
    assert_eq!(buf.read(3, usize::MAX).await.unwrap().len(), 3);
    let one = rec(0, 0, 100).encoded_len();
    assert_eq!(buf.read(100, 2 * one + 1).await.unwrap().len(), 2);
    // The first record is returned even when it alone exceeds max_bytes.
    assert_eq!(buf.read(100, 1).await.unwrap().len(), 1);
    let rest = buf.read(100, usize::MAX).await.unwrap();
    assert_eq!(rest.first().unwrap().position.seq, 6);
    assert_eq!(rest.len(), 4);
}

#[tokio::test]
async fn out_of_order_acks_commit_only_the_contiguous_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = DiskBuffer::open(cfg.clone()).unwrap();
    buf.append((0..5).map(|o| rec(0, o, 50)).collect())
        .await
        .unwrap();
    let entries = read_all(&buf, 5).await;
    // Ack everything but the first: nothing is committed.
    let later: Vec<Position> = entries[1..].iter().map(|e| e.position).collect();
    buf.ack(&later).await.unwrap();
    assert_eq!(buf.depth().records, 5);

    let buf = reopen(buf, &cfg).await;
    let again = read_all(&buf, 5).await;
    assert_eq!(
        again, entries,
        "un-committed records are read again after restart"
    );

    // Ack 2, then 0 (prefix 0), then 1 (prefix 0..=2), leaving 3 and 4.
    buf.ack(&[again[2].position]).await.unwrap();
    buf.ack(&[again[0].position]).await.unwrap();
    assert_eq!(buf.depth().records, 4);
    buf.ack(&[again[1].position]).await.unwrap();
    assert_eq!(buf.depth().records, 2);
    // Duplicate acks of committed positions are harmless.
    buf.ack(&[again[0].position, again[1].position])
        .await
        .unwrap();
    assert_eq!(buf.depth().records, 2);

    let buf = reopen(buf, &cfg).await;
    let rest = read_all(&buf, 2).await;
    assert_eq!(rest, entries[3..].to_vec());
}

#[tokio::test]
async fn unknown_positions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(config(dir.path())).unwrap();
    buf.append(vec![rec(0, 0, 10), rec(0, 1, 10)])
        .await
        .unwrap();
    let entries = read_all(&buf, 1).await;
    // Not read yet.
    let err = buf.ack(&[Position { lane: 0, seq: 1 }]).await.unwrap_err();
    assert!(
        matches!(err, BufferError::UnknownPosition { seq: 1, .. }),
        "{err}"
    );
    // Wrong lane.
    let err = buf.ack(&[Position { lane: 3, seq: 0 }]).await.unwrap_err();
    assert!(
        matches!(err, BufferError::UnknownPosition { lane: 3, .. }),
        "{err}"
    );
    // A refused batch changes nothing.
    assert_eq!(buf.depth().records, 2);
    buf.ack(&[entries[0].position]).await.unwrap();
    assert_eq!(buf.depth().records, 1);
}

#[tokio::test]
async fn read_waits_for_data_and_is_woken_by_append() {
    let dir = tempfile::tempdir().unwrap();
    let buf = std::sync::Arc::new(DiskBuffer::open(config(dir.path())).unwrap());
    let reader = {
        let buf = buf.clone();
        tokio::spawn(async move { buf.read(10, usize::MAX).await })
    };
    buf.append(vec![rec(7, 1, 10)]).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("reader not woken")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.partition, 7);
}

#[tokio::test]
async fn append_waits_when_full_and_resumes_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let one = rec(0, 0, 1000).encoded_len() as u64;
    let mut cfg = config(dir.path());
    cfg.max_bytes = 4 * one;
    let buf = std::sync::Arc::new(DiskBuffer::open(cfg).unwrap());
    assert_eq!(buf.capacity_bytes(), 4 * one);
    buf.append((0..4).map(|o| rec(0, o, 1000)).collect())
        .await
        .unwrap();

    let blocked = {
        let buf = buf.clone();
        tokio::spawn(async move { buf.append(vec![rec(0, 4, 1000), rec(0, 5, 1000)]).await })
    };
    // Nothing frees space, so the append must still be waiting; a negative can only be
    // observed for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "append did not wait for space");
    assert_eq!(
        buf.resume_offsets().await.unwrap()[&0],
        3,
        "nothing reported durable"
    );
    assert_eq!(buf.depth().records, 4);

    // Freeing one record is not enough for a two-record append.
    let entries = read_all(&buf, 4).await;
    buf.ack(&[entries[0].position]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished());
    // Freeing a second is.
    buf.ack(&[entries[1].position]).await.unwrap();
    tokio::time::timeout(DEADLINE, blocked)
        .await
        .expect("append not resumed after acks")
        .unwrap()
        .unwrap();
    assert_eq!(buf.resume_offsets().await.unwrap()[&0], 5);
    assert_eq!(buf.depth().records, 4);
}

#[tokio::test]
async fn oversized_append_is_accepted_into_an_empty_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_bytes = 100;
    let buf = DiskBuffer::open(cfg).unwrap();
    tokio::time::timeout(DEADLINE, buf.append(vec![rec(0, 0, 1000)]))
        .await
        .expect("oversized append into an empty buffer must not wait forever")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_keep_per_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = std::sync::Arc::new(DiskBuffer::open(cfg.clone()).unwrap());
    let mut tasks = Vec::new();
    for partition in 0..8u32 {
        let buf = buf.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..25u64 {
                let records = (0..4).map(|i| rec(partition, batch * 4 + i, 64)).collect();
                buf.append(records).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let offsets = buf.resume_offsets().await.unwrap();
    assert_eq!(offsets, (0..8).map(|p| (p, 99)).collect());
    let entries = read_all(&buf, 800).await;
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.position.seq, i as u64);
        let expected = next.entry(e.record.partition).or_insert(0);
        assert_eq!(
            e.record.offset, *expected,
            "partition {} out of order",
            e.record.partition
        );
        *expected += 1;
    }
}

#[tokio::test]
async fn close_refuses_further_calls() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(config(dir.path())).unwrap();
    buf.close().await.unwrap();
    assert!(matches!(
        buf.append(vec![rec(0, 0, 1)]).await,
        Err(BufferError::Closed)
    ));
    assert!(matches!(buf.read(1, 1).await, Err(BufferError::Closed)));
    assert!(matches!(buf.close().await, Err(BufferError::Closed)));
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _buf = DiskBuffer::open(config(dir.path())).unwrap();
    let err = DiskBuffer::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("buffer.redb"), "{err}");
}

/// Replaces the chunk stored under `seq` behind the buffer's back.
fn overwrite_chunk(dir: &std::path::Path, seq: u64, value: &[u8]) {
    let db = redb::Database::open(dir.join("buffer.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");
        let mut t = txn.open_table(table).unwrap();
        assert!(
            t.insert(seq, value).unwrap().is_some(),
            "a chunk starts at {seq}"
        );
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn undecodable_record_is_an_error_naming_its_seq() {
    // A chunk whose header is fine but whose record is not, then a chunk with a bad header.
    let mut bad_record = Vec::new();
    bad_record.extend_from_slice(&1u32.to_le_bytes());
    bad_record.extend_from_slice(&3u32.to_le_bytes());
    bad_record.extend_from_slice(&[1, 0, 0]);
    for value in [bad_record.as_slice(), &[1, 0, 0][..]] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let buf = DiskBuffer::open(cfg.clone()).unwrap();
        // Two commits, two chunks: seq 0 and seq 1.
        buf.append(vec![rec(0, 0, 10)]).await.unwrap();
        buf.append(vec![rec(0, 1, 10)]).await.unwrap();
        buf.append(vec![rec(0, 2, 10)]).await.unwrap();
        buf.close().await.unwrap();
        drop(buf);
        overwrite_chunk(dir.path(), 1, value);
        let buf = DiskBuffer::open(cfg).unwrap();
        let first = buf.read(1, usize::MAX).await.unwrap();
        assert_eq!(first[0].record.offset, 0);
        let err = buf.read(1, usize::MAX).await.unwrap_err();
        assert!(
            matches!(err, BufferError::CorruptRecord { seq: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("seq 1"));
    }
}

#[tokio::test]
async fn garbage_file_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = DiskBuffer::open(config(dir.path())).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x5a; 64 * 1024],
        "file untouched"
    );
}

#[tokio::test]
async fn acked_backlog_space_is_given_back_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = DiskBuffer::open(cfg.clone()).unwrap();
    for batch in 0..20u64 {
        buf.append((0..100).map(|i| rec(0, batch * 100 + i, 1500)).collect())
            .await
            .unwrap();
    }
    let path = buf.path().to_path_buf();
    let full = std::fs::metadata(&path).unwrap().len();
    let entries = read_all(&buf, 2000).await;
    let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
    buf.ack(&positions).await.unwrap();
    buf.close().await.unwrap();
    drop(buf);
    let buf = DiskBuffer::open(cfg).unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(full > 3_000_000, "{full}");
    assert!(after < full / 4, "space given back: {full} -> {after}");
    assert_eq!(buf.resume_offsets().await.unwrap()[&0], 1999);
}

#[tokio::test]
async fn damaged_cleanly_closed_file_is_refused_or_intact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = DiskBuffer::open(cfg.clone()).unwrap();
    let written: Vec<Record> = (0..2000).map(|o| rec(0, o, 1500)).collect();
    for chunk in written.chunks(200) {
        buf.append(chunk.to_vec()).await.unwrap();
    }
    let path = buf.path().to_path_buf();
    buf.close().await.unwrap();
    drop(buf);
    let mut file = std::fs::read(&path).unwrap();
    let mid = file.len() / 2;
    for b in &mut file[mid..mid + 65536] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &file).unwrap();
    match DiskBuffer::open(cfg) {
        Err(e) => {
            let message = format!("{e}: {:?}", std::error::Error::source(&e));
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        Ok(buf) => {
            // Only acceptable if nothing was lost or altered.
            let got = read_all(&buf, 2000).await;
            let got: Vec<Record> = got.into_iter().map(|e| e.record).collect();
            assert!(got == written, "damaged file served altered records");
        }
    }
}

#[tokio::test]
async fn a_file_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let buf = DiskBuffer::open(cfg.clone()).unwrap();
    buf.append(vec![rec(0, 0, 10)]).await.unwrap();
    buf.close().await.unwrap();
    drop(buf);
    {
        let db = redb::Database::open(dir.path().join("buffer.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut t = txn.open_table(table).unwrap();
            assert_eq!(t.insert("format", 99).unwrap().map(|v| v.value()), Some(1));
        }
        txn.commit().unwrap();
    }
    let err = DiskBuffer::open(cfg).unwrap_err();
    let message = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        message.contains("buffer.redb") && message.contains("format 99"),
        "{message}"
    );
}

/// A truncated (empty) buffer file is damage, not a new buffer: refused, naming the file
/// (fuzz finding: redb would otherwise re-create it and drop what it held).
#[tokio::test]
async fn an_empty_buffer_file_is_refused_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buffer = DiskBuffer::open(DiskBufferConfig::new(dir.path())).unwrap();
        buffer.close().await.unwrap();
    }
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "redb"))
        .expect("the buffer file");
    std::fs::File::create(&file).unwrap(); // truncate to 0 bytes
    let error = DiskBuffer::open(DiskBufferConfig::new(dir.path())).unwrap_err();
    let text = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("empty"), "{text}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        0,
        "the damaged file is left as it was"
    );
}
