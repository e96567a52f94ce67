//! Configuration of the three emulators. Every default is chosen so a client configured
//! with the matching defaults talks to the testbench without further setup.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Seed used by [`TestbenchConfig::default`].
pub const DEFAULT_SEED: u64 = 42;

/// Everything the testbench needs to start.
#[derive(Debug, Clone)]
pub struct TestbenchConfig {
    /// Address of the single HTTPS listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Seed of every deterministic choice (customer id, event contents).
    pub seed: u64,
    /// Falcon Event Streams emulator.
    pub falcon: FalconConfig,
    /// Entra ID token endpoint emulator.
    pub entra: EntraConfig,
    /// Logs Ingestion API emulator.
    pub ingestion: IngestionConfig,
}

impl Default for TestbenchConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed: DEFAULT_SEED,
            falcon: FalconConfig::default(),
            entra: EntraConfig::default(),
            ingestion: IngestionConfig::default(),
        }
    }
}

impl TestbenchConfig {
    /// Default configuration with another seed; the Falcon customer id follows the seed.
    pub fn with_seed(seed: u64) -> Self {
        let mut config = Self {
            seed,
            ..Self::default()
        };
        config.falcon.customer_id = customer_id_for_seed(seed);
        config
    }
}

/// How the Falcon feed terminates lines. The real framing is undocumented
/// (reference §1.5), so clients must accept both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LineEnding {
    /// `\n` after every line.
    #[default]
    Lf,
    /// `\r\n` after every line.
    Crlf,
    /// `\r\n` after every third offset (and every other keepalive), `\n` otherwise.
    Mixed,
}

/// Falcon Event Streams emulator settings.
#[derive(Debug, Clone)]
pub struct FalconConfig {
    /// OAuth2 client id accepted by `POST /oauth2/token`.
    pub client_id: String,
    /// OAuth2 client secret accepted by `POST /oauth2/token`.
    pub client_secret: String,
    /// Customer id (CID), 32 hex characters. Empty means "derive from the seed".
    pub customer_id: String,
    /// Number of partitions; discover returns one resource per partition.
    pub partitions: u32,
    /// Offset of the first event of every partition.
    pub first_offset: u64,
    /// Events generated on every partition at start.
    pub initial_events: u64,
    /// Continuous generation rate per partition, if any.
    pub events_per_sec: Option<u64>,
    /// `refreshActiveSessionInterval`: a session not refreshed within this many seconds
    /// of discovery or of its last refresh expires.
    pub refresh_interval_secs: u64,
    /// `expires_in` of OAuth2 access tokens.
    pub token_expires_in_secs: u64,
    /// A blank keepalive line is written when the feed has been idle this long.
    pub keepalive_interval_ms: u64,
    /// Line terminator on the feed.
    pub line_ending: LineEnding,
    /// Approximate size of one event line in bytes.
    pub event_size_bytes: usize,
}

impl Default for FalconConfig {
    fn default() -> Self {
        Self {
            client_id: "testbench-falcon-client".into(),
            client_secret: "testbench-falcon-secret".into(),
            customer_id: customer_id_for_seed(DEFAULT_SEED),
            partitions: 1,
            first_offset: 1,
            initial_events: 0,
            events_per_sec: None,
            // 1800 s in every real example (reference §1.3).
            refresh_interval_secs: 1800,
            // 1799 s in the documented token sample (reference §1.2).
            token_expires_in_secs: 1799,
            keepalive_interval_ms: 1000,
            line_ending: LineEnding::Lf,
            event_size_bytes: 1500,
        }
    }
}

/// The CID derived from `seed`: 32 lowercase hex characters.
pub fn customer_id_for_seed(seed: u64) -> String {
    let a = crate::falcon::generator::mix(seed ^ 0x0c1d_c1d0_c1d0_c1d0);
    let b = crate::falcon::generator::mix(a ^ 0x5eed);
    format!("{a:016x}{b:016x}")
}

/// How an Entra client proves its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntraCredential {
    /// `client_secret` form field.
    Secret(String),
    /// `client_assertion` JWT whose `iss` and `sub` must match (workload identity federation).
    FederatedSubject {
        /// Expected `iss` claim.
        issuer: String,
        /// Expected `sub` claim.
        subject: String,
    },
    /// `client_assertion` JWT signed (RS256) with the private key of this certificate, as
    /// azure_identity's `ClientCertificateCredential` sends it: header `x5t` is the
    /// certificate's SHA-1 thumbprint, `aud` the token endpoint URL, `iss` = `sub` = client id.
    Certificate {
        /// The registered certificate (X.509, DER) whose public key verifies the assertion.
        certificate_der: Vec<u8>,
    },
}

/// An application registration that may obtain tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntraClient {
    /// Application (client) id.
    pub client_id: String,
    /// Its credential.
    pub credential: EntraCredential,
}

/// Entra ID token endpoint settings.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Tenant id in the token URL `/{tenant}/oauth2/v2.0/token`.
    pub tenant_id: String,
    /// Registered clients.
    pub clients: Vec<EntraClient>,
    /// `expires_in` of issued tokens.
    pub token_lifetime_secs: u64,
}

/// Client id of the default secret-based Entra client.
pub const DEFAULT_AZURE_CLIENT_ID: &str = "testbench-azure-client";
/// Secret of the default secret-based Entra client.
pub const DEFAULT_AZURE_CLIENT_SECRET: &str = "testbench-azure-secret";
/// Client id of the user-assigned managed identity the managed-identity endpoint
/// (`GET /msi/token`, Azure's App Service protocol) issues tokens for; a GUID, as Azure's.
pub const DEFAULT_MI_CLIENT_ID: &str = "7d3c5a1e-2b4f-4c6d-8e9f-0a1b2c3d4e5f";
/// The secret the managed-identity endpoint expects in `X-IDENTITY-HEADER` (the platform
/// injects it as `IDENTITY_HEADER`).
pub const MANAGED_IDENTITY_HEADER: &str = "testbench-identity-header";
/// Client id of the default federated (workload identity) Entra client.
pub const DEFAULT_WI_CLIENT_ID: &str = "testbench-wi-client";
/// Issuer of the default federated client.
pub const DEFAULT_WI_ISSUER: &str = "https://oidc.testbench.local";
/// Subject of the default federated client.
pub const DEFAULT_WI_SUBJECT: &str = "system:serviceaccount:security:falcon-sentinel-bridge";

impl Default for EntraConfig {
    fn default() -> Self {
        Self {
            tenant_id: "00000000-0000-0000-0000-0000000000aa".into(),
            clients: vec![
                EntraClient {
                    client_id: DEFAULT_AZURE_CLIENT_ID.into(),
                    credential: EntraCredential::Secret(DEFAULT_AZURE_CLIENT_SECRET.into()),
                },
                EntraClient {
                    client_id: DEFAULT_WI_CLIENT_ID.into(),
                    credential: EntraCredential::FederatedSubject {
                        issuer: DEFAULT_WI_ISSUER.into(),
                        subject: DEFAULT_WI_SUBJECT.into(),
                    },
                },
            ],
            token_lifetime_secs: 3599,
        }
    }
}

/// Column types of a DCR stream declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    /// `string`
    String,
    /// `int`
    Int,
    /// `long`
    Long,
    /// `real`
    Real,
    /// `boolean`
    Boolean,
    /// `datetime`
    Datetime,
    /// `dynamic`
    Dynamic,
    /// `guid` (stored as string)
    Guid,
}

/// One `streamDeclarations` entry of the DCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDeclaration {
    /// Stream name, e.g. `Custom-FalconEvents`.
    pub name: String,
    /// Declared columns; anything else in a record is dropped silently.
    pub columns: Vec<(String, ColumnType)>,
}

/// Logs Ingestion API settings.
#[derive(Debug, Clone)]
pub struct IngestionConfig {
    /// The DCR immutable id in the URL.
    pub dcr_immutable_id: String,
    /// Declared streams.
    pub streams: Vec<StreamDeclaration>,
    /// Principals holding Monitoring Metrics Publisher on the DCR.
    pub authorized_client_ids: Vec<String>,
    /// Maximum request body on the wire (after gzip), 1 MiB like Azure.
    pub max_body_bytes: usize,
}

/// The columns of the default stream declarations (ARCHITECTURE.md record shape).
pub fn default_columns() -> Vec<(String, ColumnType)> {
    [
        ("TimeGenerated", ColumnType::Datetime),
        ("EventId", ColumnType::String),
        ("EventType", ColumnType::String),
        ("CustomerId", ColumnType::String),
        ("Partition", ColumnType::Int),
        ("Offset", ColumnType::Long),
        ("Event", ColumnType::Dynamic),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t))
    .collect()
}

impl Default for IngestionConfig {
    fn default() -> Self {
        Self {
            dcr_immutable_id: "dcr-00000000000000000000000000000001".into(),
            streams: vec![
                StreamDeclaration {
                    name: "Custom-FalconEvents".into(),
                    columns: default_columns(),
                },
                StreamDeclaration {
                    name: "Custom-FalconDetections".into(),
                    columns: default_columns(),
                },
            ],
            authorized_client_ids: vec![
                DEFAULT_AZURE_CLIENT_ID.into(),
                DEFAULT_WI_CLIENT_ID.into(),
                DEFAULT_MI_CLIENT_ID.into(),
            ],
            max_body_bytes: 1_048_576,
        }
    }
}
