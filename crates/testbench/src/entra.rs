//! Entra ID token endpoint emulator: `POST /{tenant}/oauth2/v2.0/token` with the client
//! credentials grant, by secret, by federated client assertion (workload identity), or by a
//! client assertion signed with a registered certificate (RS256, checked signature).
//! Tokens are opaque random strings remembered with their client, audience and expiry, so
//! the ingestion emulator can check audience and principal like Azure does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::config::{DEFAULT_MI_CLIENT_ID, EntraConfig, EntraCredential, MANAGED_IDENTITY_HEADER};
use crate::http::{self as h, Resp};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(Debug, Clone)]
struct IssuedToken {
    client_id: String,
    audience: String,
    expires: Instant,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Unknown,
    Expired,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<String, IssuedToken>,
    issued: u64,
    requests: u64,
    audiences: Vec<String>,
}

/// The Entra ID emulator.
#[derive(Debug)]
pub struct EntraEmulator {
    config: EntraConfig,
    state: Mutex<State>,
}

fn error(status: StatusCode, error: &str, code: u32, description: &str) -> Resp {
    let trace = h::trace_id();
    let correlation = h::trace_id();
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    h::json(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": correlation,
        }),
    )
}

pub(crate) fn fault_response(status: StatusCode, retry_after_secs: Option<u64>) -> Resp {
    let mut resp = error(
        status,
        "temporarily_unavailable",
        50_196,
        "The server is temporarily unavailable (injected fault).",
    );
    if let Some(secs) = retry_after_secs {
        h::set_header(&mut resp, "retry-after", &secs.to_string());
    }
    resp
}

fn decode_jwt_payload(jwt: &str) -> Option<serde_json::Value> {
    let mut parts = jwt.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl EntraEmulator {
    pub(crate) fn new(config: EntraConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().issued
    }

    /// Token requests received (any outcome).
    pub fn token_requests(&self) -> u64 {
        self.lock().requests
    }

    /// Audiences of issued tokens, in order (last 1,000).
    pub fn audiences(&self) -> Vec<String> {
        self.lock().audiences.clone()
    }

    /// Make every issued token expired: the next ingestion request using one gets 401.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for t in self.lock().tokens.values_mut() {
            t.expires = now;
        }
    }

    /// The tenant id in the token URL.
    pub fn tenant_id(&self) -> &str {
        &self.config.tenant_id
    }

    /// The principal and audience of a valid token.
    pub(crate) fn validate(&self, token: &str) -> Result<(String, String), TokenProblem> {
        let s = self.lock();
        let t = s.tokens.get(token).ok_or(TokenProblem::Unknown)?;
        if Instant::now() >= t.expires {
            return Err(TokenProblem::Expired);
        }
        Ok((t.client_id.clone(), t.audience.clone()))
    }

    #[allow(clippy::too_many_lines)] // Entra's checks in order, each with its own AADSTS error
    pub(crate) async fn token(&self, tenant: &str, req: Request<Incoming>) -> Resp {
        self.lock().requests += 1;
        if tenant != self.config.tenant_id {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90_002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            );
        }
        // A certificate assertion's `aud` must be the URL the client posted to. The listener
        // is HTTPS only; HTTP/2 carries the authority in the URI, HTTP/1.1 in `Host`.
        let endpoint = {
            let authority = req.uri().authority().map(ToString::to_string).or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
            authority.map(|a| format!("https://{a}{}", req.uri().path()))
        };
        let Ok(body) = h::read_bounded(req.into_body(), 64 * 1024).await else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                "The request body is too large or could not be read.",
            );
        };
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| h::param(&form, k);
        match get("grant_type") {
            Some("client_credentials") => {}
            Some(other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    70_003,
                    &format!("The app requested an unsupported grant type '{other}'."),
                );
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900_144,
                    "The request body must contain the following parameter: 'grant_type'.",
                );
            }
        }
        let Some(client_id) = get("client_id") else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                "The request body must contain the following parameter: 'client_id'.",
            );
        };
        let Some(client) = self
            .config
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700_016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant.",
                    self.config.tenant_id
                ),
            );
        };
        let Some(scope) = get("scope") else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                "The request body must contain the following parameter: 'scope'.",
            );
        };
        // `https://monitor.azure.com//.default` (Python SDK) and the single-slash form both occur.
        let Some(audience) = scope
            .strip_suffix("/.default")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains(' '))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70_011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' ('{scope}') is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            );
        };
        match &client.credential {
            EntraCredential::Secret(secret) => {
                if get("client_secret") != Some(secret.as_str()) {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        7_000_215,
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
                    );
                }
            }
            EntraCredential::FederatedSubject { issuer, subject } => {
                if let Err(resp) = check_assertion(
                    get("client_assertion_type"),
                    get("client_assertion"),
                    issuer,
                    subject,
                ) {
                    return *resp;
                }
            }
            EntraCredential::Certificate { certificate_der } => {
                if let Err(resp) = check_certificate_assertion(
                    get("client_assertion_type"),
                    get("client_assertion"),
                    client_id,
                    endpoint.as_deref(),
                    certificate_der,
                ) {
                    return *resp;
                }
            }
        }
        self.issue(client_id, audience)
    }

    /// `GET /msi/token?api-version=2019-08-01&resource=…[&client_id=…]`: the managed-identity
    /// endpoint of App Service / Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), the
    /// one protocol of azure_identity's `ManagedIdentityCredential` whose address a test can
    /// choose (IMDS is fixed at 169.254.169.254). Tokens are those of [`Self::issue`], so the
    /// ingestion emulator authorizes them the same way; the identity is the user-assigned
    /// [`DEFAULT_MI_CLIENT_ID`] (also when none is named: the system-assigned identity).
    pub(crate) fn managed_identity(&self, req: &Request<Incoming>) -> Resp {
        self.lock().requests += 1;
        let bad = |status: StatusCode, message: &str| {
            h::json(
                status,
                &json!({"statusCode": status.as_u16(), "message": message}),
            )
        };
        if req
            .headers()
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok())
            != Some(MANAGED_IDENTITY_HEADER)
        {
            return bad(
                StatusCode::UNAUTHORIZED,
                "X-IDENTITY-HEADER is missing or wrong",
            );
        }
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("api-version") != Some("2019-08-01") {
            return bad(
                StatusCode::BAD_REQUEST,
                "api-version 2019-08-01 is required",
            );
        }
        let Some(resource) = get("resource").map(|r| r.trim_end_matches('/')) else {
            return bad(StatusCode::BAD_REQUEST, "resource is required");
        };
        match get("client_id") {
            None => {}
            Some(id) if id == DEFAULT_MI_CLIENT_ID => {}
            Some(_) => {
                // What Azure answers for an identity not assigned to the resource.
                return bad(
                    StatusCode::BAD_REQUEST,
                    "No managed identity found for the specified client id",
                );
            }
        }
        let token = self.mint(DEFAULT_MI_CLIENT_ID, resource);
        let expires_on = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.config.token_lifetime_secs;
        h::json(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": DEFAULT_MI_CLIENT_ID,
            }),
        )
    }

    /// Remember and return a new token for `client_id` and `audience`.
    fn issue(&self, client_id: &str, audience: &str) -> Resp {
        let token = self.mint(client_id, audience);
        let lifetime = self.config.token_lifetime_secs;
        h::json(
            StatusCode::OK,
            &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
        )
    }

    /// Remembers a new token for `client_id` and `audience` and returns it.
    fn mint(&self, client_id: &str, audience: &str) -> String {
        let token = {
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let lifetime = self.config.token_lifetime_secs;
        {
            let mut s = self.lock();
            let now = Instant::now();
            if s.tokens.len() > 10_000 {
                s.tokens.retain(|_, t| t.expires > now);
            }
            s.tokens.insert(
                token.clone(),
                IssuedToken {
                    client_id: client_id.to_owned(),
                    audience: audience.to_owned(),
                    expires: now + Duration::from_secs(lifetime),
                },
            );
            s.issued += 1;
            if s.audiences.len() >= 1000 {
                s.audiences.remove(0);
            }
            s.audiences.push(audience.to_owned());
        }
        token
    }
}

fn check_assertion(
    kind: Option<&str>,
    assertion: Option<&str>,
    issuer: &str,
    subject: &str,
) -> Result<(), Box<Resp>> {
    let (Some(ASSERTION_TYPE), Some(assertion)) = (kind, assertion) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )));
    };
    let Some(claims) = decode_jwt_payload(assertion) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            50_027,
            "JWT token is invalid or malformed.",
        )));
    };
    let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == FEDERATION_AUDIENCE,
        Some(serde_json::Value::Array(a)) => {
            a.iter().any(|x| x.as_str() == Some(FEDERATION_AUDIENCE))
        }
        _ => false,
    };
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if exp <= h::now_epoch_secs() {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700_024,
            "Client assertion is not within its valid time range.",
        )));
    }
    if !aud_ok {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700_212,
            &format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                claims
                    .get("aud")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        )));
    }
    if iss != issuer {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700_211,
            &format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'."
            ),
        )));
    }
    if sub != subject {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700_213,
            &format!(
                "No matching federated identity record found for presented assertion subject '{sub}'."
            ),
        )));
    }
    Ok(())
}

#[allow(clippy::unnecessary_box_returns)] // boxed like every other rejection here (large Err)
fn invalid_client(code: u32, description: &str) -> Box<Resp> {
    Box::new(error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        description,
    ))
}

/// The SHA-1 thumbprint of a DER certificate (what `x5t` carries).
fn sha1_thumbprint(certificate_der: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        certificate_der,
    )
    .as_ref()
    .to_vec()
}

/// Decodes base64 in any of the alphabets and padding styles clients use for JWT fields:
/// azure_identity encodes `x5t` with the standard alphabet and padding, RFC 7515 says
/// base64url without padding.
fn decode_b64_lenient(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .ok()
}

/// Checks a certificate client assertion in Entra's order: shape, header (alg, thumbprint),
/// signature, then claims (time, audience, issuer/subject).
fn check_certificate_assertion(
    kind: Option<&str>,
    assertion: Option<&str>,
    client_id: &str,
    endpoint: Option<&str>,
    certificate_der: &[u8],
) -> Result<(), Box<Resp>> {
    let (Some(ASSERTION_TYPE), Some(assertion)) = (kind, assertion) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )));
    };
    let malformed = || invalid_client(50_027, "JWT token is invalid or malformed.");
    let mut parts = assertion.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header: serde_json::Value = decode_b64_lenient(header_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let claims: serde_json::Value = decode_b64_lenient(payload_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let signature = decode_b64_lenient(signature_b64).ok_or_else(malformed)?;

    let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    if alg != "RS256" {
        return Err(invalid_client(
            700_027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The signing algorithm '{alg}' is not supported; expected RS256.]"
            ),
        ));
    }
    let registered = sha1_thumbprint(certificate_der);
    let presented = header
        .get("x5t")
        .and_then(|v| v.as_str())
        .and_then(decode_b64_lenient);
    if presented.as_deref() != Some(registered.as_slice()) {
        let shown = header
            .get("x5t")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        return Err(invalid_client(
            700_027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{shown}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
            ),
        ));
    }
    let der = rustls_pki_types::CertificateDer::from(certificate_der);
    let verified = webpki::EndEntityCert::try_from(&der).is_ok_and(|cert| {
        let signed = &assertion[..header_b64.len() + 1 + payload_b64.len()];
        cert.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &signature,
        )
        .is_ok()
    });
    if !verified {
        return Err(invalid_client(
            700_027,
            "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]",
        ));
    }

    let now = h::now_epoch_secs();
    let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
    // Entra allows a few minutes of clock skew on `nbf`.
    let nbf = claims
        .get("nbf")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if exp.is_none_or(|exp| exp <= now) || nbf > now + 300 {
        return Err(invalid_client(
            700_024,
            "Client assertion is not within its valid time range.",
        ));
    }
    let aud = claims.get("aud").and_then(|v| v.as_str()).unwrap_or("");
    let aud_ok = endpoint.is_some_and(|e| e.trim_end_matches('/') == aud.trim_end_matches('/'));
    if !aud_ok {
        return Err(invalid_client(
            700_023,
            &format!(
                "Client assertion audience claim does not match Realm issuer. Audience '{aud}' is not the token endpoint '{}'.",
                endpoint.unwrap_or("")
            ),
        ));
    }
    let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
    if iss != client_id || sub != client_id {
        return Err(invalid_client(
            700_021,
            &format!(
                "Client assertion application identifier doesn't match 'client_id' parameter. iss '{iss}', sub '{sub}', client_id '{client_id}'."
            ),
        ));
    }
    Ok(())
}
