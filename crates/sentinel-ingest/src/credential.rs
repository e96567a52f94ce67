//! Entra credentials, and a wrapper that can throw its token cache away.
//!
//! azure_identity caches tokens inside each credential until five minutes before expiry, and
//! `BearerTokenAuthorizationPolicy` only clears its *own* cache on a 401. A token revoked early
//! (or an emulator that expires tokens) would be served again from the credential's cache. So
//! on a 401 the client calls [`ResettableCredential::reset`], which rebuilds the credential.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use azure_core::{
    cloud::CloudConfiguration,
    credentials::{AccessToken, Secret, SecretBytes, TokenCredential, TokenRequestOptions},
    http::{ClientOptions, Transport},
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientCertificateCredential,
    ClientCertificateCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

/// Which Entra identity the client authenticates as.
#[derive(Clone)]
pub enum CredentialSpec {
    /// AKS Workload Identity. `None` fields fall back to the webhook-injected environment
    /// (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`). The token file is
    /// re-read by azure_identity when its copy is older than 10 minutes.
    WorkloadIdentity {
        /// Entra tenant.
        tenant_id: Option<String>,
        /// Application (client) ID of the federated identity.
        client_id: Option<String>,
        /// Projected service-account token file.
        token_file: Option<PathBuf>,
    },
    /// Managed identity (IMDS / App Service / Arc); system-assigned when `user_assigned` is `None`.
    ManagedIdentity {
        /// Which user-assigned identity to use.
        user_assigned: Option<UserAssigned>,
    },
    /// Service principal with a client secret.
    ClientSecret {
        /// Entra tenant.
        tenant_id: String,
        /// Application (client) ID.
        client_id: String,
        /// The secret; never printed.
        secret: String,
    },
    /// Service principal with a certificate: azure_identity signs an RS256 client assertion
    /// (header `x5t` = the certificate's SHA-1 thumbprint) with the certificate's private key.
    ClientCertificate {
        /// Entra tenant.
        tenant_id: String,
        /// Application (client) ID.
        client_id: String,
        /// The PKCS#12 (`.pfx`/`.p12`) file's raw DER bytes, not base64: certificate plus its
        /// RSA private key. Never printed.
        certificate: Vec<u8>,
        /// The PKCS#12 password, if it has one; never printed.
        password: Option<String>,
    },
}

impl fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            Self::ManagedIdentity { user_assigned } => f
                .debug_struct("ManagedIdentity")
                .field("user_assigned", user_assigned)
                .finish(),
            Self::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", &"<redacted>")
                .finish(),
            Self::ClientCertificate {
                tenant_id,
                client_id,
                password,
                ..
            } => f
                .debug_struct("ClientCertificate")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("certificate", &"<redacted>")
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// A user-assigned managed identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssigned {
    /// By client ID.
    ClientId(String),
    /// By ARM resource ID.
    ResourceId(String),
    /// By object (principal) ID.
    ObjectId(String),
}

/// What every credential built from a spec shares: the HTTP transport (extra CAs) and cloud.
#[derive(Clone)]
pub(crate) struct CredentialEnv {
    pub(crate) transport: Transport,
    pub(crate) cloud: Option<Arc<CloudConfiguration>>,
}

impl CredentialEnv {
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            transport: Some(self.transport.clone()),
            cloud: self.cloud.clone(),
            ..ClientOptions::default()
        }
    }
}

pub(crate) fn build_credential(
    spec: &CredentialSpec,
    env: &CredentialEnv,
) -> azure_core::Result<Arc<dyn TokenCredential>> {
    Ok(match spec {
        CredentialSpec::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: env.client_options(),
            },
            client_id: client_id.clone(),
            tenant_id: tenant_id.clone(),
            token_file_path: token_file.clone(),
        }))?,
        CredentialSpec::ManagedIdentity { user_assigned } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: user_assigned.as_ref().map(|u| match u {
                    UserAssigned::ClientId(id) => UserAssignedId::ClientId(id.clone()),
                    UserAssigned::ResourceId(id) => UserAssignedId::ResourceId(id.clone()),
                    UserAssigned::ObjectId(id) => UserAssignedId::ObjectId(id.clone()),
                }),
                client_options: env.client_options(),
            }))?
        }
        CredentialSpec::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            Secret::new(secret.clone()),
            Some(ClientSecretCredentialOptions {
                client_options: env.client_options(),
            }),
        )?,
        // Parses the PKCS#12 here, so a wrong password or a bundle without an RSA key fails
        // `IngestClient::new` (at start) rather than every token request.
        CredentialSpec::ClientCertificate {
            tenant_id,
            client_id,
            certificate,
            password,
        } => ClientCertificateCredential::new(
            tenant_id.clone(),
            client_id.clone(),
            SecretBytes::new(certificate.clone()),
            Some(ClientCertificateCredentialOptions {
                client_options: env.client_options(),
                password: password.clone().map(Secret::new),
            }),
        )?,
    })
}

/// Minimum spacing of rebuilds, so a burst of 401s from concurrent batches rebuilds once.
const MIN_RESET_INTERVAL: Duration = Duration::from_secs(1);

/// A [`TokenCredential`] whose inner credential (and thus its token cache) can be replaced.
pub(crate) struct ResettableCredential {
    spec: CredentialSpec,
    env: CredentialEnv,
    inner: RwLock<Arc<dyn TokenCredential>>,
    last_reset: Mutex<Option<Instant>>,
}

impl fmt::Debug for ResettableCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResettableCredential")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl ResettableCredential {
    pub(crate) fn new(spec: CredentialSpec, env: CredentialEnv) -> azure_core::Result<Self> {
        let inner = build_credential(&spec, &env)?;
        Ok(Self {
            spec,
            env,
            inner: RwLock::new(inner),
            last_reset: Mutex::new(None),
        })
    }

    /// Replaces the inner credential so the next token comes from Entra, not a cache.
    /// Returns whether a rebuild happened (false when one happened within the last second or
    /// the rebuild failed; the old credential then stays in place).
    pub(crate) fn reset(&self) -> bool {
        {
            let mut last = self
                .last_reset
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < MIN_RESET_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match build_credential(&self.spec, &self.env) {
            Ok(fresh) => {
                *self
                    .inner
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot rebuild credential after 401; keeping the current one");
                false
            }
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for ResettableCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let inner = Arc::clone(
            &self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        inner.get_token(scopes, options).await
    }
}

/// Tokens of one Entra identity for a resource other than the Logs Ingestion API: the
/// bridge's Kafka buffer on Azure Event Hubs authenticates with OAUTHBEARER and a token for
/// `https://NAMESPACE.servicebus.windows.net/.default`. Same credential kinds, transport
/// (extra CAs) and authority host as [`crate::IngestClient`].
pub struct EntraTokenSource {
    credential: ResettableCredential,
    scope: String,
}

impl fmt::Debug for EntraTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokenSource")
            .field("credential", &self.credential)
            .field("scope", &self.scope)
            .finish()
    }
}

/// An access token and its expiry.
#[derive(Clone)]
pub struct EntraToken {
    /// The bearer token; never printed.
    pub secret: String,
    /// When Entra says it expires.
    pub expires_at: std::time::SystemTime,
}

impl fmt::Debug for EntraToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraToken")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl EntraTokenSource {
    /// Builds the credential; no network IO (a workload identity credential reads its file).
    pub fn new(
        spec: CredentialSpec,
        scope: impl Into<String>,
        extra_ca_pems: &[Vec<u8>],
        authority_host: Option<&url::Url>,
        request_timeout: Duration,
    ) -> Result<Self, crate::IngestError> {
        let (transport, cloud) =
            crate::client::http_transport(extra_ca_pems, authority_host, request_timeout)?;
        let credential = ResettableCredential::new(spec, CredentialEnv { transport, cloud })
            .map_err(crate::IngestError::Credential)?;
        Ok(Self {
            credential,
            scope: scope.into(),
        })
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A token for the scope: azure_identity's cached one until five minutes before its
    /// expiry, then a new one.
    pub async fn token(&self) -> azure_core::Result<EntraToken> {
        let token = self.credential.get_token(&[&self.scope], None).await?;
        Ok(EntraToken {
            secret: token.token.secret().to_owned(),
            expires_at: token.expires_on.into(),
        })
    }

    /// Throws the cached token away (a broker refused it): the next [`token`](Self::token)
    /// comes from Entra. Returns whether a rebuild happened (at most one per second).
    pub fn reset(&self) -> bool {
        self.credential.reset()
    }
}
