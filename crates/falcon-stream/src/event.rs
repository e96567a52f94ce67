//! The event handed downstream, the sink interface (docs/ARCHITECTURE.md) and the metadata
//! parser. Only `metadata` is parsed, with borrowed strings; the event body is validated as
//! JSON but never copied or re-serialized: `raw` is the received line itself.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, Visitor};

/// One Falcon event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FalconEvent {
    /// Partition it came from.
    pub partition: u32,
    /// `metadata.offset`, unique and increasing within the partition.
    pub offset: u64,
    /// `metadata.eventType` (empty if absent).
    pub event_type: String,
    /// `metadata.customerIDString` (empty if absent).
    pub customer_id: String,
    /// `metadata.eventCreationTime`, epoch milliseconds (0 if absent).
    pub created_at_ms: u64,
    /// The line exactly as received, without its line ending.
    pub raw: Bytes,
}

/// Error reported by an [`EventSink`]. The source treats it as transient: it drops the
/// session, backs off and resumes from `durable_offset`.
#[derive(Debug, thiserror::Error)]
#[error("event sink: {message}")]
pub struct SinkError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with a message only.
    pub fn msg(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
    }

    /// An error wrapping its cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Why a line could not become an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// Longer than `max_event_bytes`.
    Oversized,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not valid JSON.
    InvalidJson,
    /// Valid JSON but not an object.
    NotAnObject,
    /// No usable `metadata.offset`.
    MissingOffset,
}

impl DeadLetterReason {
    /// Every reason, in a stable order (index = `as usize`).
    pub const ALL: [DeadLetterReason; 5] = [
        DeadLetterReason::Oversized,
        DeadLetterReason::InvalidUtf8,
        DeadLetterReason::InvalidJson,
        DeadLetterReason::NotAnObject,
        DeadLetterReason::MissingOffset,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Oversized => "oversized",
            DeadLetterReason::InvalidUtf8 => "invalid_utf8",
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::NotAnObject => "not_an_object",
            DeadLetterReason::MissingOffset => "missing_offset",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that could not become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDeadLetter {
    /// Partition it came from.
    pub partition: u32,
    /// Offset of the last event seen before it on this connection (its position in the stream).
    pub after_offset: Option<u64>,
    /// Why it was refused.
    pub reason: DeadLetterReason,
    /// Human-readable detail (parser message); never contains the line itself.
    pub detail: String,
    /// The line, truncated to [`DEAD_LETTER_RAW_CAP`] bytes.
    pub raw: Bytes,
    /// Full length of the line without its line ending.
    pub raw_len: usize,
}

/// Most bytes of a bad line kept in a [`SourceDeadLetter`].
pub const DEAD_LETTER_RAW_CAP: usize = 64 * 1024;

/// Where events go. Implemented by the bridge over the buffer; the buffer is the source's
/// checkpoint.
pub trait EventSink: Send + Sync + 'static {
    /// Newest Falcon offset of `partition` that is durable downstream, if any.
    fn durable_offset(
        &self,
        partition: u32,
    ) -> impl Future<Output = Result<Option<u64>, SinkError>> + Send;
    /// Make `events` (one partition, ascending offsets) durable; resolves once they are.
    /// May wait for a long time: that is backpressure. If the future is dropped (only on
    /// shutdown), the batch must be either wholly durable or not at all.
    fn write(
        &self,
        partition: u32,
        events: Vec<FalconEvent>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Hand over a line that could not become an event (malformed, oversized, no offset).
    fn dead_letter(
        &self,
        letter: SourceDeadLetter,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A parse failure: the reason and the parser's message.
pub type ParseFailure = (DeadLetterReason, String);

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
    // Everything else (`event`) is validated and skipped without allocation.
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(rename = "customerIDString", borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_u64")]
    offset: Option<u64>,
    #[serde(rename = "eventType", borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(
        rename = "eventCreationTime",
        default,
        deserialize_with = "lenient_u64"
    )]
    created: Option<u64>,
    // Unknown keys (`version`, ...) are skipped by serde without allocating.
}

/// An unsigned integer, also accepted as a numeric string (reference §2.3: types drift).
fn lenient_u64<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer or numeric string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.trim().parse().ok())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _v: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// Parses one non-blank line of `partition` into an event; `raw` is shared, not copied.
pub fn parse_line(partition: u32, raw: &Bytes) -> Result<FalconEvent, ParseFailure> {
    let text =
        std::str::from_utf8(raw).map_err(|e| (DeadLetterReason::InvalidUtf8, e.to_string()))?;
    // serde would also accept an array for a struct; Falcon lines are objects.
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    if first != Some(b'{') {
        let reason = match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => DeadLetterReason::NotAnObject,
            Err(_) => DeadLetterReason::InvalidJson,
        };
        return Err((reason, "line is not a JSON object".to_owned()));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| (DeadLetterReason::InvalidJson, e.to_string()))?;
    let Some(meta) = env.metadata else {
        return Err((
            DeadLetterReason::MissingOffset,
            "no metadata object".to_owned(),
        ));
    };
    let Some(offset) = meta.offset else {
        return Err((
            DeadLetterReason::MissingOffset,
            "metadata.offset absent or not an integer".to_owned(),
        ));
    };
    Ok(FalconEvent {
        partition,
        offset,
        event_type: meta.event_type.map(Cow::into_owned).unwrap_or_default(),
        customer_id: meta.customer_id.map(Cow::into_owned).unwrap_or_default(),
        created_at_ms: meta.created.unwrap_or(0),
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<FalconEvent, ParseFailure> {
        parse_line(3, &Bytes::copy_from_slice(s))
    }

    #[test]
    fn parses_metadata_and_keeps_raw() {
        let line = br#"{"metadata":{"customerIDString":"abc","offset":42,"eventType":"EppDetectionSummaryEvent","eventCreationTime":1742584040000,"version":"1.0"},"event":{"ProcessId":1719309930613520072,"x":[1,{"y":null}]}}"#;
        let ev = parse(line).unwrap();
        assert_eq!(ev.partition, 3);
        assert_eq!(ev.offset, 42);
        assert_eq!(ev.customer_id, "abc");
        assert_eq!(ev.event_type, "EppDetectionSummaryEvent");
        assert_eq!(ev.created_at_ms, 1_742_584_040_000);
        assert_eq!(&ev.raw[..], &line[..]);
    }

    #[test]
    fn event_before_metadata_and_string_offset() {
        let ev = parse(br#"{"event":{"a":"b"},"metadata":{"offset":"17","eventType":"A\u00e9"}}"#)
            .unwrap();
        assert_eq!(ev.offset, 17);
        assert_eq!(ev.event_type, "A\u{e9}");
        assert_eq!(ev.created_at_ms, 0);
    }

    #[test]
    fn every_bad_kind_is_classified() {
        let r = |s: &[u8]| parse(s).unwrap_err().0;
        assert_eq!(
            r(b"{\"metadata\":{\"offset\":1},"),
            DeadLetterReason::InvalidJson
        );
        assert_eq!(r(b"not json"), DeadLetterReason::InvalidJson);
        assert_eq!(r(b"[1,2]"), DeadLetterReason::NotAnObject);
        assert_eq!(r(b"\"str\""), DeadLetterReason::NotAnObject);
        assert_eq!(
            r(b"{\"metadata\":{\"offset\":1},\"e\":\"\xff\"}"),
            DeadLetterReason::InvalidUtf8
        );
        assert_eq!(r(b"{\"event\":{}}"), DeadLetterReason::MissingOffset);
        assert_eq!(
            r(b"{\"metadata\":{\"eventType\":\"x\"}}"),
            DeadLetterReason::MissingOffset
        );
        assert_eq!(
            r(b"{\"metadata\":{\"offset\":-4}}"),
            DeadLetterReason::MissingOffset
        );
        assert_eq!(
            r(b"{\"metadata\":{\"offset\":1}} trailing"),
            DeadLetterReason::InvalidJson
        );
    }
}
