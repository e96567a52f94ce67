//! The record, its position in the buffer, and the on-disk record and chunk codecs.
//!
//! The disk backend stores records in chunks (one redb value holds consecutive records, so that
//! redb's per-entry cost is paid per chunk): `count u32 | len u32 × count | records`.
//!
//! Encoded record (all integers little-endian):
//! `version u8 (=1) | partition u32 | offset u64 | created_at_ms u64 |
//!  event_type_len u16 | event_type | customer_id_len u16 | customer_id | payload`.

use bytes::Bytes;

use crate::BufferError;

/// One Falcon event as the buffer stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Falcon partition.
    pub partition: u32,
    /// Falcon offset within the partition.
    pub offset: u64,
    /// Falcon `metadata.eventType`.
    pub event_type: String,
    /// Falcon `metadata.customerIDString`.
    pub customer_id: String,
    /// Falcon `metadata.eventCreationTime`, epoch milliseconds.
    pub created_at_ms: u64,
    /// The raw Falcon line, without its line ending.
    pub payload: Bytes,
}

impl Record {
    /// The deterministic event id, `"{customer_id}:{partition}:{offset}"`; a replay after a crash
    /// produces the same id.
    pub fn event_id(&self) -> String {
        format!("{}:{}:{}", self.customer_id, self.partition, self.offset)
    }

    /// Length of the encoded record: what it counts against the buffer's capacity.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED + self.event_type.len() + self.customer_id.len() + self.payload.len()
    }
}

/// Where an entry sits in the buffer. Disk: lane 0, `seq` ascending from 0.
/// Kafka (later): lane = Kafka partition, `seq` = Kafka offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Disk: always 0.
    pub lane: u32,
    /// Sequence number within the lane.
    pub seq: u64,
}

/// A record read from the buffer, with the position to acknowledge once it is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Pass this to [`Buffer::ack`](crate::Buffer::ack) after delivery.
    pub position: Position,
    /// The record.
    pub record: Record,
}

/// How much the buffer holds that is not covered by the committed acknowledged prefix
/// (records acknowledged out of order still count until the prefix reaches them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    /// Number of records.
    pub records: u64,
    /// Their encoded bytes (header + payload).
    pub bytes: u64,
}

const VERSION: u8 = 1;
// version + partition + offset + created_at_ms + two u16 lengths
const HEADER_FIXED: usize = 1 + 4 + 8 + 8 + 2 + 2;

/// Encodes `record` for storage.
pub(crate) fn encode(record: &Record) -> Result<Vec<u8>, BufferError> {
    let event_type =
        u16::try_from(record.event_type.len()).map_err(|_| BufferError::Unencodable {
            reason: "event_type longer than 65535 bytes",
        })?;
    let customer_id =
        u16::try_from(record.customer_id.len()).map_err(|_| BufferError::Unencodable {
            reason: "customer_id longer than 65535 bytes",
        })?;
    let mut out = Vec::with_capacity(record.encoded_len());
    out.push(VERSION);
    out.extend_from_slice(&record.partition.to_le_bytes());
    out.extend_from_slice(&record.offset.to_le_bytes());
    out.extend_from_slice(&record.created_at_ms.to_le_bytes());
    out.extend_from_slice(&event_type.to_le_bytes());
    out.extend_from_slice(record.event_type.as_bytes());
    out.extend_from_slice(&customer_id.to_le_bytes());
    out.extend_from_slice(record.customer_id.as_bytes());
    out.extend_from_slice(&record.payload);
    Ok(out)
}

/// Decodes the record stored under `seq`.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<Record, BufferError> {
    let corrupt = |reason| BufferError::CorruptRecord { seq, reason };
    let mut r = Reader { bytes };
    let version = r.take(1).ok_or_else(|| corrupt("truncated header"))?[0];
    if version != VERSION {
        return Err(corrupt("unknown record version"));
    }
    let partition = r.u32().ok_or_else(|| corrupt("truncated header"))?;
    let offset = r.u64().ok_or_else(|| corrupt("truncated header"))?;
    let created_at_ms = r.u64().ok_or_else(|| corrupt("truncated header"))?;
    let event_type = r.string().ok_or_else(|| corrupt("bad event_type"))?;
    let customer_id = r.string().ok_or_else(|| corrupt("bad customer_id"))?;
    Ok(Record {
        partition,
        offset,
        event_type,
        customer_id,
        created_at_ms,
        payload: Bytes::copy_from_slice(r.bytes),
    })
}

/// Packs encoded records into one chunk.
pub(crate) fn encode_chunk<'a>(
    records: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let body: usize = records.clone().map(<[u8]>::len).sum();
    let mut out = Vec::with_capacity(4 + 4 * records.len() + body);
    // Lengths fit: callers bound a chunk far below 4 GiB, and a record's length by u16 fields
    // plus a payload that is itself bounded by the chunk.
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records.clone() {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
    }
    for r in records {
        out.extend_from_slice(r);
    }
    out
}

/// The encoded records of the chunk stored under `first_seq`.
pub(crate) fn chunk_records(first_seq: u64, chunk: &[u8]) -> Result<Vec<&[u8]>, BufferError> {
    let corrupt = |reason| BufferError::CorruptRecord {
        seq: first_seq,
        reason,
    };
    let mut r = Reader { bytes: chunk };
    let count = r.u32().ok_or_else(|| corrupt("truncated chunk header"))? as usize;
    if count == 0 || count > chunk.len() / 4 {
        return Err(corrupt("bad chunk record count"));
    }
    let mut lens = Reader {
        bytes: r
            .take(4 * count)
            .ok_or_else(|| corrupt("truncated chunk header"))?,
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = lens
            .u32()
            .ok_or_else(|| corrupt("truncated chunk header"))? as usize;
        out.push(
            r.take(len)
                .ok_or_else(|| corrupt("chunk shorter than its records"))?,
        );
    }
    if !r.bytes.is_empty() {
        return Err(corrupt("chunk longer than its records"));
    }
    Ok(out)
}

/// Number of records in a chunk, from its header alone.
pub(crate) fn chunk_count(chunk: &[u8]) -> Option<u64> {
    let mut r = Reader { bytes: chunk };
    r.u32().map(u64::from)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            partition: 3,
            offset: 42,
            event_type: "DetectionSummaryEvent".into(),
            customer_id: "abc".into(),
            created_at_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"{\"x\":1}"),
        }
    }

    #[test]
    fn roundtrip_and_event_id() {
        let r = sample();
        let enc = encode(&r).unwrap();
        assert_eq!(enc.len(), r.encoded_len());
        assert_eq!(decode(7, &enc).unwrap(), r);
        assert_eq!(r.event_id(), "abc:3:42");
    }

    #[test]
    fn truncated_or_garbled_header_is_an_error_naming_the_seq() {
        let enc = encode(&sample()).unwrap();
        for cut in 0..HEADER_FIXED + 3 {
            let err = decode(9, &enc[..cut]).unwrap_err();
            assert!(err.to_string().contains("seq 9"), "{err}");
        }
        let mut bad = enc.clone();
        bad[0] = 99;
        assert!(matches!(
            decode(1, &bad),
            Err(BufferError::CorruptRecord { seq: 1, .. })
        ));
        let mut bad = enc;
        bad[21] = 0xff; // event_type length high byte: longer than the record
        assert!(decode(2, &bad).is_err());
    }

    #[test]
    fn chunk_roundtrip_and_corruption() {
        let a = encode(&sample()).unwrap();
        let b = b"xyz".to_vec();
        let chunk = encode_chunk([a.as_slice(), b.as_slice()].into_iter());
        assert_eq!(chunk_count(&chunk), Some(2));
        let parts = chunk_records(5, &chunk).unwrap();
        assert_eq!(parts, vec![a.as_slice(), b.as_slice()]);
        for cut in 0..chunk.len() {
            let err = chunk_records(5, &chunk[..cut]).unwrap_err();
            assert!(
                matches!(err, BufferError::CorruptRecord { seq: 5, .. }),
                "{err}"
            );
        }
        let mut long = chunk.clone();
        long.push(0);
        assert!(chunk_records(5, &long).is_err());
        let mut zero = chunk;
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(chunk_records(5, &zero).is_err());
    }

    #[test]
    fn oversized_header_field_is_refused() {
        let mut r = sample();
        r.event_type = "x".repeat(70_000);
        assert!(matches!(encode(&r), Err(BufferError::Unencodable { .. })));
    }
}
