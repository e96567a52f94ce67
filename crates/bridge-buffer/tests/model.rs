//! Property test: random append/read/ack/restart sequences against a simple in-memory model.
//! Acks come out of order; after each restart, read must return exactly the un-committed suffix
//! and the resume offsets must match the model.

use std::collections::{BTreeMap, BTreeSet};

use bridge_buffer::{Buffer, DiskBuffer, DiskBufferConfig, Position, Record};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
enum Op {
    Append { partition: u32, n: u64 },
    Read { max: usize },
    Ack(Vec<Index>),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..3, 1u64..5).prop_map(|(partition, n)| Op::Append { partition, n }),
        3 => (1usize..6).prop_map(|max| Op::Read { max }),
        3 => prop::collection::vec(any::<Index>(), 0..4).prop_map(Op::Ack),
        1 => Just(Op::Restart),
    ]
}

fn record(partition: u32, offset: u64) -> Record {
    Record {
        partition,
        offset,
        event_type: format!("type{}", offset % 3),
        customer_id: "c".into(),
        created_at_ms: offset * 10,
        payload: Bytes::from(format!("p{partition}o{offset}")),
    }
}

#[derive(Default)]
struct Model {
    /// Every record ever appended; index = seq.
    log: Vec<Record>,
    /// Committed contiguous ack prefix.
    floor: u64,
    read_cursor: u64,
    /// Acknowledged above the floor, this session only.
    acked: BTreeSet<u64>,
    resume: BTreeMap<u32, u64>,
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskBufferConfig::new(dir.path());
    let mut buf = DiskBuffer::open(cfg.clone()).unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append { partition, n } => {
                let start = m.resume.get(&partition).map_or(0, |o| o + 1);
                let records: Vec<Record> =
                    (start..start + n).map(|o| record(partition, o)).collect();
                buf.append(records.clone()).await.unwrap();
                m.log.extend(records);
                m.resume.insert(partition, start + n - 1);
            }
            Op::Read { max } => {
                if m.read_cursor == m.log.len() as u64 {
                    continue; // read would wait
                }
                let got = buf.read(max, usize::MAX).await.unwrap();
                let end = (m.read_cursor as usize + max).min(m.log.len());
                let expected = &m.log[m.read_cursor as usize..end];
                assert_eq!(got.len(), expected.len());
                for (i, (e, r)) in got.iter().zip(expected).enumerate() {
                    assert_eq!(
                        e.position,
                        Position {
                            lane: 0,
                            seq: m.read_cursor + i as u64
                        }
                    );
                    assert_eq!(&e.record, r);
                }
                m.read_cursor = end as u64;
            }
            Op::Ack(picks) => {
                let open: Vec<u64> = (m.floor..m.read_cursor)
                    .filter(|s| !m.acked.contains(s))
                    .collect();
                if open.is_empty() {
                    continue;
                }
                let seqs: Vec<u64> = picks.iter().map(|i| open[i.index(open.len())]).collect();
                let positions: Vec<Position> =
                    seqs.iter().map(|&seq| Position { lane: 0, seq }).collect();
                buf.ack(&positions).await.unwrap();
                m.acked.extend(seqs);
                while m.acked.remove(&m.floor) {
                    m.floor += 1;
                }
            }
            Op::Restart => {
                buf.close().await.unwrap();
                drop(buf);
                buf = DiskBuffer::open(cfg.clone()).unwrap();
                m.read_cursor = m.floor;
                m.acked.clear();
                // Read must start at the committed prefix: exactly the un-committed suffix.
                let suffix = m.log.len() - m.floor as usize;
                if suffix > 0 {
                    let got = buf.read(usize::MAX, usize::MAX).await.unwrap();
                    let expected = &m.log[m.floor as usize..];
                    let got: Vec<&Record> = got.iter().map(|e| &e.record).collect();
                    assert_eq!(got, expected.iter().collect::<Vec<_>>());
                    m.read_cursor = m.log.len() as u64;
                }
            }
        }
        assert_eq!(buf.resume_offsets().await.unwrap(), m.resume);
        assert_eq!(buf.depth().records, m.log.len() as u64 - m.floor);
        let bytes: usize = m.log[m.floor as usize..]
            .iter()
            .map(Record::encoded_len)
            .sum();
        assert_eq!(buf.depth().bytes, bytes as u64);
    }
    buf.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
