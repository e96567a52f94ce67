//! The REST side of Event Streams (reference §1.2–1.4, §1.6, §1.10): OAuth2 token (cached,
//! single-flight, renewed before expiry, never fetched per request), discover, session
//! refresh and opening the feed. Each call is one attempt; retry policy lives in the caller.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Client, Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::config::{AppId, Cloud, SourceConfig, redact_url};
use crate::error::{ApiError, ConfigError, SourceError};
use crate::stats::{DiscoverOutcome, SourceStats};

/// Largest API response body read (token, discover, refresh); the feed is streamed.
const API_BODY_LIMIT: usize = 1024 * 1024;
/// Longest server-requested wait honoured; beyond it the clock is suspect.
const MAX_RETRY_AFTER: Duration = Duration::from_mins(15);
/// Renew the token this long before it expires, or at 90% of short lifetimes.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_mins(2);

/// Builds the HTTP client: extra CA roots, explicit or environment proxy, no total timeout
/// (the feed is a long-lived body; API calls set their own per-request timeout).
pub(crate) fn build_client(config: &SourceConfig) -> Result<Client, SourceError> {
    let mut roots = Vec::new();
    for (index, pem) in config.extra_ca_pems.iter().enumerate() {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|source| SourceError::Config(ConfigError::InvalidCaPem { index, source }))?;
        if certs.is_empty() {
            return Err(SourceError::Config(ConfigError::Invalid(vec![format!(
                "extra CA #{index} contains no certificate"
            )])));
        }
        roots.extend(certs);
    }
    let mut builder = Client::builder()
        .user_agent(concat!(
            "falcon-sentinel-bridge/",
            env!("CARGO_PKG_VERSION")
        ))
        .https_only(true)
        .connect_timeout(config.request_timeout)
        .tcp_keepalive(Duration::from_secs(30))
        .tls_certs_merge(roots);
    if let Some(proxy) = &config.proxy_url {
        // An explicit proxy carries every request; without one reqwest reads HTTPS_PROXY/NO_PROXY.
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|e| SourceError::Config(ConfigError::InvalidProxy(e)))?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(SourceError::HttpClient)
}

/// A session token: only ever sent as `Authorization: Token …`, never printed.
#[derive(Clone)]
pub(crate) struct SessionToken(String);

impl SessionToken {
    #[cfg(test)]
    pub(crate) fn for_tests(token: &str) -> Self {
        SessionToken(token.to_owned())
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// One stream of a discover answer.
#[derive(Debug, Clone)]
pub(crate) struct StreamResource {
    pub(crate) partition: u32,
    pub(crate) feed_url: Url,
    pub(crate) token: SessionToken,
    pub(crate) refresh_url: Url,
    pub(crate) refresh_interval: Duration,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct DiscoverBody {
    #[serde(default)]
    resources: Option<Vec<ResourceBody>>,
    #[serde(default)]
    errors: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct ResourceBody {
    #[serde(rename = "dataFeedURL")]
    data_feed_url: String,
    #[serde(rename = "sessionToken")]
    session_token: SessionTokenBody,
    #[serde(rename = "refreshActiveSessionURL")]
    refresh_url: String,
    #[serde(rename = "refreshActiveSessionInterval", default)]
    refresh_interval: Option<u64>,
}

#[derive(Deserialize)]
struct SessionTokenBody {
    token: String,
}

struct CachedToken {
    value: Arc<str>,
    renew_at: Instant,
}

/// The cached token and, after a 429, when the token endpoint may be asked again: every
/// caller (discover, each partition's refresh) shares one fetch and one rate-limit wait.
#[derive(Default)]
struct TokenSlot {
    cached: Option<CachedToken>,
    not_before: Option<Instant>,
}

/// Authenticated access to one Falcon API base.
pub(crate) struct Api {
    http: Client,
    base: RwLock<Url>,
    autodiscover: bool,
    client_id: String,
    client_secret: String,
    member_cid: Option<String>,
    app_id: AppId,
    timeout: Duration,
    token: tokio::sync::Mutex<TokenSlot>,
    stats: Arc<SourceStats>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base())
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Api {
    pub(crate) fn new(
        http: Client,
        config: &SourceConfig,
        app_id: AppId,
        stats: Arc<SourceStats>,
    ) -> Self {
        Api {
            http,
            base: RwLock::new(config.base_url.clone()),
            autodiscover: config.region_autodiscovery
                && Cloud::from_base_url(&config.base_url).is_some(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            member_cid: config.member_cid.clone(),
            app_id,
            timeout: config.request_timeout,
            token: tokio::sync::Mutex::new(TokenSlot::default()),
            stats,
        }
    }

    fn base(&self) -> Url {
        self.base
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn endpoint(&self, path: &str) -> Result<Url, ApiError> {
        self.base()
            .join(path)
            .map_err(|e| ApiError::Malformed(format!("endpoint url: {e}")))
    }

    /// The cached bearer token, fetching a new one when it is due for renewal. Concurrent
    /// callers share one fetch.
    pub(crate) async fn bearer(&self) -> Result<Arc<str>, ApiError> {
        let mut slot = self.token.lock().await;
        let now = Instant::now();
        if let Some(t) = slot.cached.as_ref()
            && now < t.renew_at
        {
            return Ok(Arc::clone(&t.value));
        }
        if let Some(until) = slot.not_before
            && now < until
        {
            return Err(ApiError::RateLimited {
                wait: Some(until - now),
            });
        }
        slot.cached = None;
        let result = self.fetch_token().await;
        self.stats.token_request(result.is_ok());
        match result {
            Ok(fresh) => {
                let value = Arc::clone(&fresh.value);
                slot.cached = Some(fresh);
                slot.not_before = None;
                Ok(value)
            }
            Err(error) => {
                if let ApiError::RateLimited { wait } = &error {
                    slot.not_before = Some(Instant::now() + wait.unwrap_or(Duration::from_secs(1)));
                }
                Err(error)
            }
        }
    }

    /// Drops `token` if it is still the cached one (a 401 proved it dead).
    pub(crate) async fn invalidate(&self, token: &str) {
        let mut slot = self.token.lock().await;
        if slot.cached.as_ref().is_some_and(|t| &*t.value == token) {
            slot.cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, ApiError> {
        let url = self.endpoint("oauth2/token")?;
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", &self.client_secret);
            if let Some(cid) = &self.member_cid {
                form.append_pair("member_cid", cid);
            }
            form.finish()
        };
        let req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form);
        let resp = self.send(req).await?;
        let status = resp.status();
        let region = resp
            .headers()
            .get("x-cs-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match check(resp, &[StatusCode::CREATED, StatusCode::OK]).await {
            Ok(body) => body,
            Err(ApiError::Unauthorized) => return Err(ApiError::CredentialsRefused(401)),
            Err(ApiError::Status { status: 403, .. }) => {
                return Err(ApiError::CredentialsRefused(403));
            }
            Err(e) => return Err(e),
        };
        let parsed: TokenBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed(format!("token response ({status}): {e}")))?;
        if parsed.access_token.is_empty() {
            return Err(ApiError::Malformed(
                "token response without access_token".to_owned(),
            ));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(1799).max(1));
        let margin = TOKEN_RENEW_MARGIN.min(lifetime / 10);
        if let Some(region) = region {
            self.maybe_switch_region(&region);
        }
        Ok(CachedToken {
            value: Arc::from(parsed.access_token),
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    fn maybe_switch_region(&self, region: &str) {
        if !self.autodiscover {
            return;
        }
        let Some(cloud) = Cloud::from_name(region) else {
            tracing::warn!(
                region,
                "token response names an unknown region; keeping the configured cloud"
            );
            return;
        };
        let mut base = self.base.write().unwrap_or_else(PoisonError::into_inner);
        if Cloud::from_base_url(&base) != Some(cloud) {
            tracing::info!(region = cloud.name(), from = %base, "switching to the cloud named by X-Cs-Region");
            *base = cloud.base_url();
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Response, ApiError> {
        match tokio::time::timeout(self.timeout, req.timeout(self.timeout).send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_timeout() => Err(ApiError::Timeout),
            Ok(Err(e)) => Err(ApiError::Transport(e)),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Discovers the streams of this appId. `Ok(vec![])` means the appId is held by another
    /// consumer (or the CID lacks Event Streams).
    pub(crate) async fn discover(&self) -> Result<Vec<StreamResource>, ApiError> {
        let result = self.discover_once().await;
        self.stats.discover(match &result {
            Ok(r) if r.is_empty() => DiscoverOutcome::Empty,
            Ok(_) => DiscoverOutcome::Streams,
            Err(_) => DiscoverOutcome::Failed,
        });
        result
    }

    async fn discover_once(&self) -> Result<Vec<StreamResource>, ApiError> {
        let bearer = self.bearer().await?;
        let mut url = self.endpoint("sensors/entities/datafeed/v2")?;
        url.query_pairs_mut()
            .append_pair("appId", self.app_id.as_str())
            .append_pair("format", "json");
        let req = self
            .http
            .get(url)
            .bearer_auth(&*bearer)
            .header(ACCEPT, "application/json");
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.invalidate(&bearer).await;
        }
        let body = check(resp, &[StatusCode::OK]).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            // Seen in production (elastic/beats PR #52123): transient.
            return Err(ApiError::Malformed(
                "discover returned an empty body".to_owned(),
            ));
        }
        let parsed: DiscoverBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed(format!("discover response: {e}")))?;
        let Some(resources) = parsed.resources else {
            let errors = parsed
                .errors
                .map(|e| serde_json::Value::Array(e).to_string())
                .unwrap_or_default();
            return Err(ApiError::Malformed(format!(
                "discover returned no resources (wrong cloud?): {}",
                truncate(&errors)
            )));
        };
        resources
            .into_iter()
            .enumerate()
            .map(|(i, r)| to_resource(i, r))
            .collect()
    }

    /// Refreshes a session. `NotFound` means the session expired.
    pub(crate) async fn refresh(&self, url: &Url) -> Result<(), ApiError> {
        let bearer = self.bearer().await?;
        // Content-Type is required even without a body, or the server answers 415 and the
        // session dies after its interval (reference §1.6, falconpy #247, demisto PR #9842).
        let req = self
            .http
            .post(url.clone())
            .bearer_auth(&*bearer)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body("");
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.invalidate(&bearer).await;
        }
        check(
            resp,
            &[StatusCode::OK, StatusCode::NO_CONTENT, StatusCode::ACCEPTED],
        )
        .await
        .map(drop)
    }

    /// Opens the feed; on success the body is the event stream.
    pub(crate) async fn open_feed(
        &self,
        url: Url,
        token: &SessionToken,
    ) -> Result<Response, ApiError> {
        let req = self
            .http
            .get(url)
            .header(AUTHORIZATION, format!("Token {}", token.0))
            .header(ACCEPT, "application/json");
        // Only the wait for response headers is bounded here; the body is watched by the
        // read-idle timeout.
        let resp = match tokio::time::timeout(self.timeout, req.send()).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(ApiError::Transport(e)),
            Err(_) => return Err(ApiError::Timeout),
        };
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        Err(status_error(resp).await)
    }
}

fn to_resource(index: usize, r: ResourceBody) -> Result<StreamResource, ApiError> {
    let feed_url = Url::parse(&r.data_feed_url)
        .map_err(|e| ApiError::Malformed(format!("dataFeedURL: {e}")))?;
    let refresh_url = Url::parse(&r.refresh_url)
        .map_err(|e| ApiError::Malformed(format!("refreshActiveSessionURL: {e}")))?;
    if feed_url.scheme() != "https" || refresh_url.scheme() != "https" {
        return Err(ApiError::Malformed(format!(
            "discover returned a non-https URL: {}",
            redact_url(&feed_url)
        )));
    }
    if r.session_token.token.is_empty() {
        return Err(ApiError::Malformed(
            "discover returned an empty session token".to_owned(),
        ));
    }
    // The partition is the last path segment of the feed URL (`.../datafeed/v1/{partition}`).
    let partition = feed_url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(|s| s.parse::<u32>().ok())
        .or_else(|| u32::try_from(index).ok())
        .unwrap_or(0);
    Ok(StreamResource {
        partition,
        feed_url,
        token: SessionToken(r.session_token.token),
        refresh_url,
        refresh_interval: Duration::from_secs(r.refresh_interval.unwrap_or(1800).max(1)),
    })
}

/// Reads a bounded body and maps statuses to errors.
async fn check(resp: Response, ok: &[StatusCode]) -> Result<Vec<u8>, ApiError> {
    if ok.contains(&resp.status()) {
        return read_limited(resp, API_BODY_LIMIT).await;
    }
    Err(status_error(resp).await)
}

/// The error for a response with an unexpected status.
async fn status_error(resp: Response) -> ApiError {
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let body = read_limited(resp, API_BODY_LIMIT).await;
    match status {
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited { wait },
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        _ => {
            let text = body
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            ApiError::Status {
                status: status.as_u16(),
                body: truncate(&text),
            }
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(ApiError::TooLarge(limit));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) if e.is_timeout() => return Err(ApiError::Timeout),
            Err(e) => return Err(ApiError::Transport(e)),
        }
    }
}

/// `X-RateLimit-RetryAfter` is Unix epoch seconds (reference §1.10); a standard
/// `Retry-After` in seconds is accepted as a fallback.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(epoch) = header("x-ratelimit-retryafter").and_then(|v| v.parse::<u64>().ok()) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let until = Duration::from_secs(epoch);
        return Some(until.saturating_sub(now).min(MAX_RETRY_AFTER));
    }
    header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_epoch_and_seconds() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut h = HeaderMap::new();
        h.insert(
            "X-RateLimit-RetryAfter",
            HeaderValue::from_str(&(now + 5).to_string()).unwrap(),
        );
        let w = retry_after(&h).unwrap();
        assert!(
            w > Duration::from_secs(3) && w <= Duration::from_secs(5),
            "{w:?}"
        );
        h.insert(
            "X-RateLimit-RetryAfter",
            HeaderValue::from_str(&(now - 5).to_string()).unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn region_autodiscovery_switches_only_known_clouds() {
        let stats = Arc::new(SourceStats::default());
        let app = AppId::new("app").unwrap();
        let mut config = SourceConfig::new(Cloud::Us1.base_url(), "id", "secret", "app");
        config.region_autodiscovery = true;
        let api = Api::new(Client::new(), &config, app.clone(), Arc::clone(&stats));
        api.maybe_switch_region("eu-1");
        assert_eq!(api.base(), Cloud::Eu1.base_url());
        api.maybe_switch_region("mars-1");
        assert_eq!(api.base(), Cloud::Eu1.base_url());

        config.base_url = Url::parse("https://127.0.0.1:8443/").unwrap();
        let api = Api::new(Client::new(), &config, app.clone(), Arc::clone(&stats));
        api.maybe_switch_region("eu-1");
        assert_eq!(
            api.base().as_str(),
            "https://127.0.0.1:8443/",
            "custom base URLs are never redirected"
        );

        config.base_url = Cloud::Us1.base_url();
        config.region_autodiscovery = false;
        let api = Api::new(Client::new(), &config, app, stats);
        api.maybe_switch_region("eu-1");
        assert_eq!(api.base(), Cloud::Us1.base_url());
    }

    #[test]
    fn resource_partition_from_feed_url() {
        let r = ResourceBody {
            data_feed_url:
                "https://firehose.crowdstrike.com/sensors/entities/datafeed/v1/7?appId=x".into(),
            session_token: SessionTokenBody { token: "t".into() },
            refresh_url:
                "https://api.crowdstrike.com/sensors/entities/datafeed-actions/v1/7?appId=x".into(),
            refresh_interval: Some(1800),
        };
        let s = to_resource(0, r).unwrap();
        assert_eq!(s.partition, 7);
        assert_eq!(s.refresh_interval, Duration::from_mins(30));
        assert!(!format!("{s:?}").contains("\"t\""));
    }
}
