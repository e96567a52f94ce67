//! OAUTHBEARER tokens for the Kafka buffer: Entra ID access tokens of `sentinel.credential`'s
//! identity, for the Event Hubs namespace (`buffer.security.oauth_scope`).
//!
//! librdkafka asks for a token when a client starts and again at 80% of the lifetime it was
//! told. Three choices follow from how it asks:
//!
//! * The lifetime we report is capped at [`MAX_REPORTED_LIFETIME`], so librdkafka asks at
//!   least every four minutes. A token a broker refused ([`OAuthTokenSource::refused`]: the
//!   credential is rebuilt, its cache dropped) is thus replaced within minutes, not at 80% of
//!   an hour.
//! * The token comes from azure_identity's credential, which caches it until five minutes
//!   before its expiry; asking often costs nothing.
//! * When Entra cannot be reached, the last token is handed out again while it is still
//!   valid for [`MIN_VALIDITY`]: an Entra outage costs nothing until the token expires, and
//!   after that librdkafka stops connecting (and retries) — delay, never data.
//!
//! librdkafka asks from its own threads and from the task that reads the group consumer; the
//! fetch runs on a scoped thread (`Handle::block_on`), inside `block_in_place` when the caller
//! is a runtime worker, so no worker is stalled.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bridge_buffer::kafka::{OAuthBearerToken, OAuthTokenSource};
use sentinel_ingest::{EntraToken, EntraTokenSource};
use tokio::runtime::{Handle, RuntimeFlavor};

/// The longest token lifetime told to librdkafka (it asks again at 80% of it).
pub const MAX_REPORTED_LIFETIME: Duration = Duration::from_mins(5);
/// A cached token is handed out while Entra is unreachable only if valid this much longer.
pub const MIN_VALIDITY: Duration = Duration::from_secs(30);
/// The principal name given with the token (Event Hubs reads the identity from the token).
const PRINCIPAL: &str = "falcon-sentinel-bridge";

/// Entra tokens for librdkafka. See the module docs.
#[derive(Debug)]
pub struct EntraKafkaTokens {
    source: EntraTokenSource,
    runtime: Handle,
    last: Mutex<Option<EntraToken>>,
}

impl EntraKafkaTokens {
    /// Wraps `source`; tokens are fetched on `runtime`.
    pub fn new(source: EntraTokenSource, runtime: Handle) -> Self {
        Self {
            source,
            runtime,
            last: Mutex::new(None),
        }
    }

    fn fetch(&self) -> Result<EntraToken, String> {
        let fetch = || {
            std::thread::scope(|s| {
                s.spawn(|| {
                    self.runtime
                        .block_on(self.source.token())
                        .map_err(|e| e.to_string())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(fetch)
            }
            _ => fetch(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<EntraToken>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OAuthTokenSource for EntraKafkaTokens {
    fn token(&self) -> Result<OAuthBearerToken, String> {
        let now = SystemTime::now();
        let token = match self.fetch() {
            Ok(token) => {
                *self.lock() = Some(token.clone());
                token
            }
            Err(error) => {
                let cached = self
                    .lock()
                    .clone()
                    .filter(|t| t.expires_at > now + MIN_VALIDITY);
                match cached {
                    Some(token) => {
                        tracing::warn!(
                            %error,
                            scope = self.source.scope(),
                            "cannot refresh the Kafka OAUTHBEARER token; using the current one \
                             while it is valid"
                        );
                        token
                    }
                    None => {
                        return Err(format!(
                            "cannot get an Entra token for {}: {error}",
                            self.source.scope()
                        ));
                    }
                }
            }
        };
        Ok(OAuthBearerToken {
            token: token.secret,
            principal: PRINCIPAL.to_owned(),
            expires_at: token.expires_at.min(now + MAX_REPORTED_LIFETIME),
        })
    }

    fn refused(&self) {
        *self.lock() = None;
        if self.source.reset() {
            tracing::warn!(
                scope = self.source.scope(),
                "a Kafka broker refused the OAUTHBEARER token; the next one comes from Entra"
            );
        }
    }
}
