//! sentinel-ingest: the writer half of falcon-sentinel-bridge. It turns Falcon events into
//! rows of a Logs Ingestion API stream and delivers them to Microsoft Sentinel.
//!
//! It owns: record encoding (`encode_record`), request sizing and gzip (`Batcher`), the Entra
//! credential and the azure_core pipeline (`IngestClient`), and the outcome policy
//! (`classify`) that decides between delivered, retry, split, and dead letter.
//!
//! It must never: report a record as delivered without a 204 covering it; give up on a
//! transient failure (429/5xx/timeouts/401/403/404 are retried forever, with bounded memory);
//! send a body over the API's 1 MiB limit in the default mode; drop a record silently: what
//! Azure refuses is isolated by bisection and handed back as a dead letter with Azure's code
//! and message, and everything else in its batch is still delivered.
//!
//! Layout:
//! - `encode`: [`RecordMeta`], [`encode_record`], [`EncodedRecord`].
//! - `batch`: [`Batcher`], [`BatchLimit`]: JSON arrays within the limit, libdeflate gzip.
//! - `policy`: [`classify`] → [`Action`], `Retry-After` parsing.
//! - `credential`: [`CredentialSpec`] (workload identity, managed identity, client secret,
//!   client certificate), the resettable token credential, and [`EntraTokenSource`]: tokens of
//!   the same identity for another resource (Event Hubs' Kafka endpoint).
//! - `client`: [`IngestClient`], [`IngestConfig`], the delivery loop and shared retry gate.
//! - `stats`: counters ([`StatsSnapshot`]) and readiness ([`Health`]).
//! - `error`: [`IngestError`], [`DeliverError`].

mod batch;
mod client;
mod credential;
mod encode;
mod error;
mod policy;
mod stats;

pub use batch::{
    API_MAX_BODY_BYTES, BatchLimit, Batcher, Body, BuildError, DEFAULT_MAX_COMPRESSED_BYTES,
    DEFAULT_MAX_DECOMPRESSED_BYTES, DEFAULT_MAX_UNCOMPRESSED_BYTES, Plan,
};
pub use client::{
    API_VERSION, DEFAULT_AUDIENCE, DeliveryReport, IngestClient, IngestConfig, RejectReason,
    RejectedRecord, RetryConfig,
};
pub use credential::{CredentialSpec, EntraToken, EntraTokenSource, UserAssigned};
pub use encode::{EncodedRecord, RecordMeta, encode_record};
pub use error::{DeliverError, IngestError};
pub use policy::{
    Action, MAX_RETRY_AFTER, RetryReason, classify, classify_at, classify_error, retry_after,
};
pub use stats::{Health, StatsSnapshot, StreamHealth};
