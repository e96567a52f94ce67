//! One Falcon event → one JSON object of the stream declaration.
//!
//! The raw Falcon line goes into `Event` byte for byte: it is already JSON, and re-parsing it
//! would cost most of the writer's CPU budget and could change numbers or key order.

use bytes::Bytes;

/// Per-record columns written next to the raw event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta<'a> {
    /// `TimeGenerated`, epoch milliseconds (Falcon `metadata.eventCreationTime`).
    pub time_generated_ms: u64,
    /// Deterministic `EventId` (`"{customerId}:{partition}:{offset}"`), the dedup key.
    pub event_id: &'a str,
    /// Falcon `metadata.eventType`.
    pub event_type: &'a str,
    /// Falcon `metadata.customerIDString`.
    pub customer_id: &'a str,
    /// Falcon partition.
    pub partition: u32,
    /// Falcon offset.
    pub offset: u64,
}

/// One encoded record ready for [`crate::IngestClient::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The caller's handle, echoed back in dead letters (for example a buffer position index).
    pub id: u64,
    /// One JSON object as written by [`encode_record`].
    pub json: Bytes,
}

/// Appends one JSON object for `meta` and `raw_event` to `out`.
///
/// `raw_event` must be one JSON value; it is inserted without validation or re-serialization
/// (leading and trailing ASCII whitespace, such as a line ending, is dropped). An empty event is
/// written as `null` so that the object stays valid JSON. If the caller hands over something
/// that is not JSON, Azure answers 400 and the delivery path isolates that one record.
pub fn encode_record(meta: &RecordMeta<'_>, raw_event: &[u8], out: &mut Vec<u8>) {
    out.reserve(
        raw_event.len()
            + 160
            + meta.event_id.len()
            + meta.event_type.len()
            + meta.customer_id.len(),
    );
    out.extend_from_slice(b"{\"TimeGenerated\":\"");
    write_rfc3339_ms(meta.time_generated_ms, out);
    out.extend_from_slice(b"\",\"EventId\":");
    write_json_string(meta.event_id, out);
    out.extend_from_slice(b",\"EventType\":");
    write_json_string(meta.event_type, out);
    out.extend_from_slice(b",\"CustomerId\":");
    write_json_string(meta.customer_id, out);
    out.extend_from_slice(b",\"Partition\":");
    write_u64(u64::from(meta.partition), out);
    out.extend_from_slice(b",\"Offset\":");
    write_u64(meta.offset, out);
    out.extend_from_slice(b",\"Event\":");
    let event = raw_event.trim_ascii();
    if event.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(event);
    }
    out.push(b'}');
}

fn write_u64(mut value: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// JSON string with the escapes RFC 8259 requires; everything else (valid UTF-8) verbatim.
fn write_json_string(value: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Latest instant we format: 9999-12-31T23:59:59.999Z. Later values are clamped so the column
/// always parses; Azure replaces such a `TimeGenerated` with the receive time anyway.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` without going through a date library (hot path).
fn write_rfc3339_ms(ms: u64, out: &mut Vec<u8>) {
    let ms = ms.min(MAX_RFC3339_MS);
    let millis = ms % 1000;
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut buf[0..4], year);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    put_digits(&mut buf[11..13], hour);
    put_digits(&mut buf[14..16], minute);
    put_digits(&mut buf[17..19], second);
    put_digits(&mut buf[20..23], millis);
    out.extend_from_slice(&buf);
}

fn put_digits(slot: &mut [u8], mut value: u64) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ms: u64) -> RecordMeta<'static> {
        RecordMeta {
            time_generated_ms: ms,
            event_id: "cid:0:42",
            event_type: "DetectionSummaryEvent",
            customer_id: "cid",
            partition: 0,
            offset: 42,
        }
    }

    #[test]
    fn encodes_all_columns_and_keeps_event_verbatim() {
        let raw = br#"{"metadata":{"offset":42},"event":{"x":1.50,"y":"\u00e9"}}"#;
        let mut out = Vec::new();
        encode_record(&meta(1_700_000_000_123), raw, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(r#""Event":{"metadata":{"offset":42},"event":{"x":1.50,"y":"\u00e9"}}}"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["TimeGenerated"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["EventId"], "cid:0:42");
        assert_eq!(v["EventType"], "DetectionSummaryEvent");
        assert_eq!(v["CustomerId"], "cid");
        assert_eq!(v["Partition"], 0);
        assert_eq!(v["Offset"], 42);
    }

    #[test]
    fn escapes_strings() {
        let m = RecordMeta {
            event_type: "a\"b\\c\n\u{1}é",
            ..meta(0)
        };
        let mut out = Vec::new();
        encode_record(&m, b"{}\r\n", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["EventType"], "a\"b\\c\n\u{1}é");
        assert_eq!(v["TimeGenerated"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["Event"], serde_json::json!({}));
    }

    #[test]
    fn empty_event_is_null_and_huge_time_is_clamped() {
        let mut out = Vec::new();
        encode_record(&meta(u64::MAX), b"  ", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Event"], serde_json::Value::Null);
        assert_eq!(v["TimeGenerated"], "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_matches_time_crate() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let mut ms: u64 = 0;
        while ms < 8_000_000_000_000 {
            let mut out = Vec::new();
            write_rfc3339_ms(ms, &mut out);
            let expected =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap()
                    .format(&fmt)
                    .unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
            ms += 86_399_997 * 37 + 1;
        }
    }
}
