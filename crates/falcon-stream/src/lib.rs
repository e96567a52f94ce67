//! CrowdStrike Falcon Event Streams client.
//!
//! Owns the Falcon side of the bridge: OAuth2 client credentials, discover, one resumable
//! task per partition with its own session-refresh timer, framing of the NDJSON feed and
//! parsing of `metadata` only. Events go to an [`EventSink`] (implemented by the bridge over
//! the buffer), whose `durable_offset` is the only checkpoint: the feed always reopens at
//! `durable + 1`.
//!
//! It must never: lose or reorder an event of a partition, move an offset backwards, reuse a
//! session token, stop on bad input (bad lines become [`SourceDeadLetter`]s), buffer without
//! bound, or print the client secret or a token.
//!
//! Layout:
//! - [`config`]: [`SourceConfig`], [`Cloud`], [`AppId`], partition and start selection.
//! - [`framing`]: pure line framer (LF/CRLF, keepalives, oversized lines).
//! - [`event`]: [`FalconEvent`], [`EventSink`], dead letters, metadata parser.
//! - `api`: token cache, discover, refresh, feed open (one attempt each).
//! - `source`: [`FalconSource`], the session group and per-partition readers.
//! - [`stats`]: [`SourceStats`] telemetry.
//! - [`error`]: [`SourceError`], [`ConfigError`].

mod api;
pub mod config;
pub mod error;
pub mod event;
pub mod framing;
mod source;
pub mod stats;

pub use config::{AppId, Cloud, PartitionSelection, SourceConfig, StartPosition};
pub use error::{ConfigError, SourceError};
pub use event::{
    DEAD_LETTER_RAW_CAP, DeadLetterReason, EventSink, FalconEvent, SinkError, SourceDeadLetter,
    parse_line,
};
pub use framing::{Frame, LineFramer};
pub use source::FalconSource;
pub use stats::{PartitionSnapshot, PartitionStats, ReconnectCause, SourceSnapshot, SourceStats};
pub use tokio_util::sync::CancellationToken;
