//! Typed errors at the crate boundary.

/// Building an [`crate::IngestClient`] failed; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A configuration value is invalid.
    #[error("invalid ingestion config: {0}")]
    Config(String),
    /// An extra CA PEM could not be parsed.
    #[error("invalid CA certificate PEM")]
    CaCertificate(#[source] reqwest::Error),
    /// The HTTP client could not be built.
    #[error("cannot build http client")]
    HttpClient(#[source] reqwest::Error),
    /// The credential could not be constructed (missing env, missing token file, bad tenant).
    #[error("cannot build azure credential")]
    Credential(#[source] azure_core::Error),
}

/// [`crate::IngestClient::deliver`] stopped before every record was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The cancellation token fired. Records not reported as delivered must be delivered again
    /// later (some may already have reached Azure; duplicates carry the same EventId).
    #[error("delivery cancelled")]
    Cancelled,
}
