//! How a [`Record`] travels as a Kafka message, and the checkpoint topic's messages.
//!
//! Event message: key = Falcon partition (decimal), so the default partitioner keeps every
//! Falcon partition in one Kafka partition and in order; payload = the raw Falcon line;
//! headers (decimal or UTF-8 text): `fsb-partition`, `fsb-offset`, `fsb-event-type`,
//! `fsb-customer-id`, `fsb-created-ms`.
//!
//! Checkpoint message: key = Falcon partition (decimal), value = newest durable Falcon offset
//! (decimal); or key = `frontier:{topic}:{kafka partition}`, value = the Kafka offset from
//! which a restart must scan that partition (decimal). See the module docs of [`super`].

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::Record;

pub(crate) const H_PARTITION: &str = "fsb-partition";
pub(crate) const H_OFFSET: &str = "fsb-offset";
pub(crate) const H_EVENT_TYPE: &str = "fsb-event-type";
pub(crate) const H_CUSTOMER_ID: &str = "fsb-customer-id";
pub(crate) const H_CREATED_MS: &str = "fsb-created-ms";

/// Bytes a record adds to a produce request beyond its payload, key and header values
/// (header names, record framing); used to refuse what the broker would refuse.
pub(crate) const FRAMING_ALLOWANCE: usize = 128;

/// The headers of `record`.
pub(crate) fn headers(record: &Record) -> OwnedHeaders {
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let created = record.created_at_ms.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: H_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: H_OFFSET,
            value: Some(&offset),
        })
        .insert(Header {
            key: H_EVENT_TYPE,
            value: Some(&record.event_type),
        })
        .insert(Header {
            key: H_CUSTOMER_ID,
            value: Some(&record.customer_id),
        })
        .insert(Header {
            key: H_CREATED_MS,
            value: Some(&created),
        })
}

/// What a record costs in a produce request (checked against `message.max.bytes`).
pub(crate) fn wire_len(record: &Record) -> usize {
    record.payload.len()
        + record.event_type.len()
        + record.customer_id.len()
        + 3 * 20
        + 10
        + FRAMING_ALLOWANCE
}

/// The record carried by `message`, or why it is not one of ours.
pub(crate) fn decode(message: &impl Message) -> Result<Record, &'static str> {
    let headers = message.headers().ok_or("no fsb-* headers")?;
    let mut partition = None;
    let mut offset = None;
    let mut event_type = None;
    let mut customer_id = None;
    let mut created = None;
    for h in headers.iter() {
        let slot = match h.key {
            H_PARTITION => &mut partition,
            H_OFFSET => &mut offset,
            H_EVENT_TYPE => &mut event_type,
            H_CUSTOMER_ID => &mut customer_id,
            H_CREATED_MS => &mut created,
            _ => continue,
        };
        *slot = Some(h.value.unwrap_or_default());
    }
    let text = |v: Option<&[u8]>, missing: &'static str| -> Result<String, &'static str> {
        let v = v.ok_or(missing)?;
        String::from_utf8(v.to_vec()).map_err(|_| "header is not UTF-8")
    };
    Ok(Record {
        partition: parse_u32(partition).ok_or("bad fsb-partition header")?,
        offset: parse_u64(offset).ok_or("bad fsb-offset header")?,
        event_type: text(event_type, "no fsb-event-type header")?,
        customer_id: text(customer_id, "no fsb-customer-id header")?,
        created_at_ms: parse_u64(created).ok_or("bad fsb-created-ms header")?,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    })
}

/// Falcon partition and offset only (the resume scan needs nothing else).
pub(crate) fn decode_position(message: &impl Message) -> Option<(u32, u64)> {
    let headers = message.headers()?;
    let mut partition = None;
    let mut offset = None;
    for h in headers.iter() {
        match h.key {
            H_PARTITION => partition = h.value,
            H_OFFSET => offset = h.value,
            _ => {}
        }
    }
    Some((parse_u32(partition)?, parse_u64(offset)?))
}

pub(crate) fn parse_u32(v: Option<&[u8]>) -> Option<u32> {
    std::str::from_utf8(v?).ok()?.parse().ok()
}

pub(crate) fn parse_u64(v: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(v?).ok()?.parse().ok()
}

/// Key of the frontier marker of `topic`'s Kafka partition `partition`.
pub(crate) fn frontier_key(topic: &str, partition: i32) -> String {
    format!("frontier:{topic}:{partition}")
}

/// A checkpoint message, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checkpoint {
    /// Falcon partition → newest durable Falcon offset.
    Offset(u32, u64),
    /// Kafka partition of our topic → offset from which a restart scans.
    Frontier(i32, i64),
    /// Something else (another topic's frontier, garbage).
    Other,
}

pub(crate) fn decode_checkpoint(topic: &str, key: &[u8], value: &[u8]) -> Checkpoint {
    let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
        return Checkpoint::Other;
    };
    if let Some(rest) = key.strip_prefix("frontier:") {
        // The topic name may itself contain ':', so split at the last one.
        if let Some((t, p)) = rest.rsplit_once(':')
            && t == topic
            && let (Ok(p), Ok(v)) = (p.parse(), value.parse())
        {
            return Checkpoint::Frontier(p, v);
        }
        return Checkpoint::Other;
    }
    match (key.parse(), value.parse()) {
        (Ok(p), Ok(o)) => Checkpoint::Offset(p, o),
        _ => Checkpoint::Other,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn sample() -> Record {
        Record {
            partition: 3,
            offset: 42,
            event_type: "DetectionSummaryEvent".into(),
            customer_id: "cid".into(),
            created_at_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"{\"x\":1}"),
        }
    }

    fn message(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{\"x\":1}".to_vec()),
            Some(b"3".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            7,
            headers,
        )
    }

    #[test]
    fn record_roundtrips_through_headers() {
        let r = sample();
        let m = message(Some(headers(&r)));
        assert_eq!(decode(&m).unwrap(), r);
        assert_eq!(decode_position(&m), Some((3, 42)));
    }

    #[test]
    fn foreign_messages_are_refused_not_guessed() {
        assert!(decode(&message(None)).is_err());
        let partial = OwnedHeaders::new().insert(Header {
            key: H_PARTITION,
            value: Some("x"),
        });
        assert_eq!(
            decode(&message(Some(partial))).unwrap_err(),
            "bad fsb-partition header"
        );
    }

    #[test]
    fn checkpoint_keys() {
        assert_eq!(
            decode_checkpoint("ev", b"12", b"99"),
            Checkpoint::Offset(12, 99)
        );
        let k = frontier_key("a:b", 4);
        assert_eq!(
            decode_checkpoint("a:b", k.as_bytes(), b"17"),
            Checkpoint::Frontier(4, 17)
        );
        assert_eq!(
            decode_checkpoint("other", k.as_bytes(), b"17"),
            Checkpoint::Other
        );
        assert_eq!(decode_checkpoint("ev", b"x", b"1"), Checkpoint::Other);
    }
}
