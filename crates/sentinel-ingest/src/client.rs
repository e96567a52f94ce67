//! The ingestion client: one azure_core pipeline, the delivery loop, and the shared gate.
//!
//! Guarantee: [`IngestClient::deliver`] resolves `Ok` only once every record it was given is
//! either acknowledged by a 204 or listed as a dead letter; transient failures are retried
//! forever (bounded memory: at most `max_in_flight` bodies exist at a time). Each body keeps
//! one `x-ms-client-request-id` for all its retries so DCRLogErrors rows join our logs.

use std::{
    collections::VecDeque,
    ops::Range,
    sync::{Arc, Mutex},
    time::Duration,
};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    http::{
        ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, RetryOptions,
        Transport,
        headers::{HeaderName, Headers},
        policies::{Policy, auth::BearerTokenAuthorizationPolicy},
    },
};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;
use uuid::Uuid;

use crate::{
    batch::{BatchLimit, Batcher, Body, BuildError},
    credential::{CredentialEnv, CredentialSpec, ResettableCredential},
    encode::EncodedRecord,
    error::{DeliverError, IngestError},
    policy::{Action, RetryReason, classify, classify_error},
    stats::{Health, HealthState, Stats, StatsSnapshot},
};

/// Logs Ingestion API version (the stable one in the REST spec).
pub const API_VERSION: &str = "2023-01-01";
/// Token audience of Azure public cloud; `https://monitor.azure.us` (US Gov) and
/// `https://monitor.azure.cn` (China) are the alternatives.
pub const DEFAULT_AUDIENCE: &str = "https://monitor.azure.com";

/// Retry timing. Retries never stop; these only shape the waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// First backoff delay (before jitter).
    pub initial: Duration,
    /// Backoff cap.
    pub max: Duration,
    /// Wait between attempts while Azure answers 403/404 (RBAC propagation takes up to 30 min).
    pub forbidden_retry_interval: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_mins(1),
            forbidden_retry_interval: Duration::from_secs(30),
        }
    }
}

/// Everything [`IngestClient::new`] needs besides the credential.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// DCR `logsIngestion` endpoint or DCE URL (https).
    pub endpoint: Url,
    /// DCR immutable ID (`dcr-…`).
    pub dcr_immutable_id: String,
    /// Token audience; the scope requested is `{audience}/.default`.
    pub audience: Url,
    /// Entra authority host (https). `None`: azure_identity's default (`AZURE_AUTHORITY_HOST`
    /// or `https://login.microsoftonline.com`).
    pub authority_host: Option<Url>,
    /// Extra trusted CA certificates (PEM, may hold several), used for Entra and ingestion alike.
    pub extra_ca_pems: Vec<Vec<u8>>,
    /// Timeout of one HTTP attempt, connect to last byte.
    pub request_timeout: Duration,
    /// How request bodies are sized.
    pub batch_limit: BatchLimit,
    /// libdeflate level 1..=12; 1 is ~285 MiB/s per core at ratio 6.4 on Falcon JSON.
    pub gzip_level: u8,
    /// Retry timing.
    pub retry: RetryConfig,
    /// Requests in flight per `deliver` call.
    pub max_in_flight: usize,
}

impl IngestConfig {
    /// Defaults for everything but the endpoint and DCR.
    pub fn new(endpoint: Url, dcr_immutable_id: impl Into<String>) -> Self {
        Self {
            endpoint,
            dcr_immutable_id: dcr_immutable_id.into(),
            audience: Url::parse(DEFAULT_AUDIENCE).unwrap_or_else(|_| unreachable!("constant URL")),
            authority_host: None,
            extra_ca_pems: Vec::new(),
            request_timeout: Duration::from_secs(30),
            batch_limit: BatchLimit::default(),
            gzip_level: 1,
            retry: RetryConfig::default(),
            max_in_flight: 4,
        }
    }

    fn validate(&self) -> Result<(), IngestError> {
        let mut errors = Vec::new();
        if self.endpoint.scheme() != "https" {
            errors.push(format!("endpoint {} must use https", self.endpoint));
        }
        if let Some(host) = &self.authority_host
            && host.scheme() != "https"
        {
            errors.push(format!("authority_host {host} must use https"));
        }
        if self.audience.scheme() != "https" {
            errors.push(format!("audience {} must use https", self.audience));
        }
        if self.dcr_immutable_id.trim().is_empty() {
            errors.push("dcr_immutable_id is empty".to_owned());
        }
        if self.max_in_flight == 0 {
            errors.push("max_in_flight must be at least 1".to_owned());
        }
        if self.request_timeout.is_zero() {
            errors.push("request_timeout must be positive".to_owned());
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            errors.push("retry: need 0 < initial <= max".to_owned());
        }
        if let Err(IngestError::Config(e)) = self.batch_limit.validate() {
            errors.push(e);
        }
        if !(1..=12).contains(&self.gzip_level) {
            errors.push(format!("gzip_level {} outside 1..=12", self.gzip_level));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(IngestError::Config(errors.join("; ")))
        }
    }
}

/// Why a record was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Larger than any request may be (found before sending, or a lone record answered 413).
    RecordTooLarge,
    /// Azure refused the record with a 400 (Azure's code and message are attached).
    Rejected,
}

/// A record handed back to the caller instead of being delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// [`EncodedRecord::id`].
    pub id: u64,
    /// Why.
    pub reason: RejectReason,
    /// HTTP status that settled it, `None` if it was never sent.
    pub status: Option<u16>,
    /// `x-ms-error-code` or the body's `error.code`.
    pub error_code: Option<String>,
    /// The body's `error.message`.
    pub message: Option<String>,
    /// `x-ms-client-request-id` of the request Azure refused (joins `DCRLogErrors.ClientRequestId`).
    pub client_request_id: Option<String>,
}

/// Result of one [`IngestClient::deliver`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Records acknowledged with 204.
    pub delivered: u64,
    /// HTTP attempts made (retries included).
    pub requests: u64,
    /// Records not delivered, each with Azure's reason.
    pub dead_letters: Vec<RejectedRecord>,
}

/// Shared "not before" instant: every request waits for it, every throttle/backoff pushes it.
#[derive(Debug)]
struct Gate(Mutex<Instant>);

impl Gate {
    fn push(&self, until: Instant) {
        let mut at = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if until > *at {
            *at = until;
        }
    }
    async fn wait(&self, cancel: &CancellationToken) -> Result<(), DeliverError> {
        loop {
            let at = *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if at <= Instant::now() {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(DeliverError::Cancelled),
                () = tokio::time::sleep_until(at) => {}
            }
        }
    }
}

async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> Result<(), DeliverError> {
    tokio::select! {
        () = cancel.cancelled() => Err(DeliverError::Cancelled),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

/// Azure Monitor Logs Ingestion client for one DCR. Cheap to share behind an `Arc`; `deliver`
/// may run concurrently for different streams.
#[derive(Debug)]
pub struct IngestClient {
    config: IngestConfig,
    pipeline: Pipeline,
    credential: Arc<ResettableCredential>,
    gate: Gate,
    stats: Stats,
    health: HealthState,
    /// Compressed mode: the batcher's learnt ratio (f64 bits), carried across deliveries so
    /// planning starts from what this data compresses to.
    ratio_estimate: std::sync::atomic::AtomicU64,
}

/// The terminal answer for one body.
enum Settled {
    Delivered,
    Split(Refusal),
    Reject(Refusal),
}

/// Azure's refusal of one body (413 or 400).
struct Refusal {
    status: u16,
    code: Option<String>,
    message: Option<String>,
    request_id: Uuid,
}

/// A contiguous run of records to send as one body.
struct Job {
    range: Range<usize>,
}

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorDetail>,
}
#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

const ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-error-code");
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
const CONTENT_TYPE: HeaderName = HeaderName::from_static("content-type");
const CONTENT_ENCODING: HeaderName = HeaderName::from_static("content-encoding");
/// We keep at most this much of an error message (Azure's are short; a proxy's HTML is not).
const MAX_ERROR_MESSAGE: usize = 2048;

fn parse_error(headers: &Headers, body: &[u8]) -> (Option<String>, Option<String>) {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error);
    let header_code = headers.get_optional_string(&ERROR_CODE);
    let (body_code, message) = parsed.map_or((None, None), |d| (d.code, d.message));
    let message = message.or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    });
    let message = message.map(|mut m| {
        if m.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        m
    });
    (header_code.or(body_code), message)
}

/// The HTTP transport (trusting `extra_ca_pems`, no redirects) and, when `authority_host` is
/// set, the cloud configuration that points credentials at it.
pub(crate) fn http_transport(
    extra_ca_pems: &[Vec<u8>],
    authority_host: Option<&Url>,
    request_timeout: Duration,
) -> Result<(Transport, Option<Arc<CloudConfiguration>>), IngestError> {
    let mut http = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none());
    for pem in extra_ca_pems {
        for cert in
            reqwest::Certificate::from_pem_bundle(pem).map_err(IngestError::CaCertificate)?
        {
            http = http.add_root_certificate(cert);
        }
    }
    let http = http.build().map_err(IngestError::HttpClient)?;
    let cloud = authority_host.map(|host| {
        let mut custom = CustomConfiguration::default();
        host.as_str()
            .trim_end_matches('/')
            .clone_into(&mut custom.authority_host);
        Arc::new(CloudConfiguration::from(custom))
    });
    Ok((Transport::new(Arc::new(http)), cloud))
}

impl IngestClient {
    /// Builds the HTTP client, credential and pipeline. Does no network IO (a workload
    /// identity credential reads its token file).
    pub fn new(config: IngestConfig, credential: CredentialSpec) -> Result<Self, IngestError> {
        config.validate()?;
        let (transport, cloud) = http_transport(
            &config.extra_ca_pems,
            config.authority_host.as_ref(),
            config.request_timeout,
        )?;
        let credential = Arc::new(
            ResettableCredential::new(
                credential,
                CredentialEnv {
                    transport: transport.clone(),
                    cloud,
                },
            )
            .map_err(IngestError::Credential)?,
        );
        let scope = format!(
            "{}/.default",
            config.audience.as_str().trim_end_matches('/')
        );
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(
            credential.clone(),
            [scope],
        ));
        let options = ClientOptions {
            transport: Some(transport),
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        Ok(Self {
            config,
            pipeline,
            credential,
            gate: Gate(Mutex::new(Instant::now())),
            stats: Stats::default(),
            health: HealthState::default(),
            ratio_estimate: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Readiness view: unhealthy while any stream's latest answer is 403/404.
    pub fn health(&self) -> Health {
        self.health.snapshot()
    }

    /// Counter snapshot.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn stream_url(&self, stream: &str) -> Url {
        let mut url = self.config.endpoint.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([
                "dataCollectionRules",
                self.config.dcr_immutable_id.as_str(),
                "streams",
                stream,
            ]);
        }
        url.set_query(Some(&format!("api-version={API_VERSION}")));
        url
    }

    /// Delivers every record of `records` to `stream`, splitting to the API's limits,
    /// retrying transient failures forever, isolating what Azure refuses. Resolves once each
    /// record is delivered or dead-lettered, or with [`DeliverError::Cancelled`].
    #[allow(
        clippy::too_many_lines,
        reason = "one state machine: queue, in-flight set, outcomes"
    )]
    pub async fn deliver(
        &self,
        stream: &str,
        records: Vec<EncodedRecord>,
        cancel: &CancellationToken,
    ) -> Result<DeliveryReport, DeliverError> {
        let mut report = DeliveryReport::default();
        if records.is_empty() {
            return Ok(report);
        }
        let url = self.stream_url(stream);
        let json: Vec<Bytes> = records.iter().map(|r| r.json.clone()).collect();
        // Config was validated in `new`, so this cannot fail.
        let Ok(batcher) = Batcher::new(self.config.batch_limit, self.config.gzip_level) else {
            unreachable!("batch settings validated in IngestClient::new")
        };
        let learnt = self
            .ratio_estimate
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut batcher = if learnt == 0 {
            batcher
        } else {
            batcher.with_ratio_estimate(f64::from_bits(learnt))
        };
        let plan = batcher.plan(json.iter().map(Bytes::len));
        for index in plan.too_large {
            self.dead_letter(
                &mut report,
                stream,
                &records[index],
                RejectReason::RecordTooLarge,
                None,
            );
        }
        let mut queue: VecDeque<Job> = plan
            .batches
            .into_iter()
            .map(|range| Job { range })
            .collect();
        let requests = std::sync::atomic::AtomicU64::new(0);
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.config.max_in_flight
                && let Some(job) = queue.pop_front()
            {
                match batcher.build(&json[job.range.clone()]) {
                    Ok(body) => {
                        let request_id = Uuid::new_v4();
                        let fut = self.send_until_settled(
                            &url,
                            stream,
                            body,
                            request_id,
                            job.range.len(),
                            cancel,
                            &requests,
                        );
                        in_flight.push(async move { (job, fut.await) });
                    }
                    Err(BuildError::TooLarge) if job.range.len() > 1 => {
                        self.stats.split();
                        let (a, b) = halves(&job.range);
                        queue.push_front(Job { range: b });
                        queue.push_front(Job { range: a });
                    }
                    Err(BuildError::TooLarge) => {
                        let record = &records[job.range.start];
                        self.dead_letter(
                            &mut report,
                            stream,
                            record,
                            RejectReason::RecordTooLarge,
                            None,
                        );
                    }
                }
            }
            let Some((job, settled)) = in_flight.next().await else {
                break;
            };
            let settled = match settled {
                Ok(s) => s,
                Err(cancelled) => {
                    report.requests = requests.load(std::sync::atomic::Ordering::Relaxed);
                    return Err(cancelled);
                }
            };
            match settled {
                Settled::Delivered => {
                    report.delivered += job.range.len() as u64;
                    self.stats.delivered(job.range.len());
                }
                Settled::Split(refusal) | Settled::Reject(refusal) if job.range.len() == 1 => {
                    let reason = if refusal.status == 413 {
                        RejectReason::RecordTooLarge
                    } else {
                        RejectReason::Rejected
                    };
                    self.dead_letter(
                        &mut report,
                        stream,
                        &records[job.range.start],
                        reason,
                        Some(refusal),
                    );
                }
                Settled::Split(_) | Settled::Reject(_) => {
                    if matches!(settled, Settled::Split(_)) {
                        self.stats.split();
                    } else {
                        self.stats.bisect();
                    }
                    let (a, b) = halves(&job.range);
                    // Front of the queue: finish this run before starting new ones, so at most
                    // one bisection tree is open per in-flight slot.
                    queue.push_front(Job { range: b });
                    queue.push_front(Job { range: a });
                }
            }
        }
        report.requests = requests.load(std::sync::atomic::Ordering::Relaxed);
        self.ratio_estimate.store(
            batcher.ratio_estimate().to_bits(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(report)
    }

    fn dead_letter(
        &self,
        report: &mut DeliveryReport,
        stream: &str,
        record: &EncodedRecord,
        reason: RejectReason,
        refusal: Option<Refusal>,
    ) {
        let (status, error_code, message, request_id) = match refusal {
            Some(r) => (
                Some(r.status),
                r.code,
                r.message,
                Some(r.request_id.to_string()),
            ),
            None => (None, None, None, None),
        };
        tracing::error!(
            stream,
            dcr = %self.config.dcr_immutable_id,
            record_id = record.id,
            bytes = record.json.len(),
            ?reason,
            status,
            error_code = error_code.as_deref(),
            message = message.as_deref(),
            client_request_id = request_id.as_deref(),
            "record dead-lettered"
        );
        self.stats.dead_lettered(1);
        report.dead_letters.push(RejectedRecord {
            id: record.id,
            reason,
            status,
            error_code,
            message,
            client_request_id: request_id,
        });
    }

    /// Sends one body until Azure gives a terminal answer (204, 413, 400). Every other outcome
    /// waits and retries with the same body and request id.
    #[allow(
        clippy::too_many_arguments,
        clippy::too_many_lines,
        reason = "one retry loop; each arm is one policy row"
    )]
    async fn send_until_settled(
        &self,
        url: &Url,
        stream: &str,
        body: Body,
        request_id: Uuid,
        records: usize,
        cancel: &CancellationToken,
        requests: &std::sync::atomic::AtomicU64,
    ) -> Result<Settled, DeliverError> {
        let retry = self.config.retry;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(retry.initial)
            .with_max_delay(retry.max)
            .with_jitter()
            .without_max_times()
            .build();
        let mut unauthorized_in_a_row = 0u32;
        let mut auth_failures_in_a_row = 0u32;
        let request_id_text = request_id.to_string();
        loop {
            self.gate.wait(cancel).await?;
            let mut request = Request::new(url.clone(), Method::Post);
            request.insert_header(CONTENT_TYPE, "application/json");
            request.insert_header(CONTENT_ENCODING, "gzip");
            request.insert_header(CLIENT_REQUEST_ID, request_id_text.clone());
            request.set_body(body.gzip.clone());
            let options = PipelineSendOptions {
                skip_checks: true,
                ..PipelineSendOptions::default()
            };
            let ctx = Context::new();
            let sent = tokio::select! {
                () = cancel.cancelled() => return Err(DeliverError::Cancelled),
                sent = self.pipeline.send(&ctx, &mut request, Some(options)) => sent,
            };
            requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (action, status, code, message) = match sent {
                Ok(response) => {
                    let status = u16::from(response.status());
                    let (_, headers, resp_body) = response.deconstruct();
                    let action = classify(status, &headers);
                    let (code, message) = if action == Action::Delivered {
                        (None, None)
                    } else {
                        parse_error(&headers, resp_body.as_ref())
                    };
                    (action, Some(status), code, message)
                }
                Err(error) => (classify_error(&error), None, None, Some(error.to_string())),
            };
            self.stats
                .request(status, body.gzip.len(), body.uncompressed_len);
            let describe = || match (status, &code, &message) {
                (Some(s), c, m) => format!(
                    "HTTP {s} {} {}",
                    c.as_deref().unwrap_or(""),
                    m.as_deref().unwrap_or("")
                ),
                (None, _, m) => m.clone().unwrap_or_default(),
            };
            match action {
                Action::Delivered => {
                    self.health.record(stream, status, None, Some(false));
                    tracing::debug!(stream, client_request_id = %request_id, records, bytes = body.gzip.len(), "batch delivered");
                    return Ok(Settled::Delivered);
                }
                Action::Split | Action::Reject => {
                    let status = status.unwrap_or_default();
                    self.health
                        .record(stream, Some(status), Some(describe()), Some(false));
                    tracing::warn!(stream, client_request_id = %request_id, records, status, error_code = code.as_deref(),
                        message = message.as_deref(), "batch refused; splitting to isolate");
                    let refusal = Refusal {
                        status,
                        code,
                        message,
                        request_id,
                    };
                    return Ok(if action == Action::Split {
                        Settled::Split(refusal)
                    } else {
                        Settled::Reject(refusal)
                    });
                }
                Action::RetryAfter(wait) => {
                    self.stats.retry(RetryReason::Throttled);
                    self.health.record(stream, status, Some(describe()), None);
                    tracing::warn!(stream, client_request_id = %request_id, status, wait_ms = wait.as_millis() as u64, "throttled; honouring retry-after");
                    self.gate.push(Instant::now() + wait);
                }
                Action::Backoff(reason) => {
                    self.stats.retry(reason);
                    self.health.record(stream, status, Some(describe()), None);
                    if reason == RetryReason::Credential {
                        auth_failures_in_a_row += 1;
                        self.note_auth_failures(stream, auth_failures_in_a_row, &describe());
                    } else {
                        auth_failures_in_a_row = 0;
                    }
                    let delay = backoff.next().unwrap_or(retry.max);
                    tracing::warn!(stream, client_request_id = %request_id, status, reason = reason.as_str(),
                        delay_ms = delay.as_millis() as u64, error = %describe(), "transient failure; retrying");
                    self.gate.push(Instant::now() + delay);
                }
                Action::Reauthenticate => {
                    self.stats.retry(RetryReason::Unauthorized);
                    self.health.record(stream, status, Some(describe()), None);
                    // The auth policy already dropped its cached token; drop the credential's too.
                    if self.credential.reset() {
                        self.stats.token_reset();
                    }
                    unauthorized_in_a_row += 1;
                    auth_failures_in_a_row += 1;
                    self.note_auth_failures(stream, auth_failures_in_a_row, &describe());
                    tracing::warn!(stream, client_request_id = %request_id, attempt = unauthorized_in_a_row, error = %describe(), "401; fetching a fresh token");
                    if unauthorized_in_a_row > 1 {
                        let delay = backoff.next().unwrap_or(retry.max);
                        sleep_or_cancel(delay, cancel).await?;
                    }
                    continue;
                }
                Action::Misconfigured => {
                    self.stats.retry(RetryReason::Misconfigured);
                    self.health
                        .record(stream, status, Some(describe()), Some(true));
                    tracing::error!(stream, dcr = %self.config.dcr_immutable_id, client_request_id = %request_id, status,
                        error_code = code.as_deref(), message = message.as_deref(),
                        retry_in_secs = retry.forbidden_retry_interval.as_secs(),
                        "azure refuses this DCR/stream (check Monitoring Metrics Publisher role, DCR id, stream name); retrying");
                    sleep_or_cancel(retry.forbidden_retry_interval, cancel).await?;
                }
            }
            unauthorized_in_a_row = 0;
            if action != Action::Backoff(RetryReason::Credential) {
                auth_failures_in_a_row = 0;
            }
        }
    }

    /// Persistent auth failures (bad secret, wrong audience, identity not federated) are a
    /// configuration problem like 403: keep retrying, but say so and fail readiness.
    fn note_auth_failures(&self, stream: &str, in_a_row: u32, error: &str) {
        if in_a_row >= AUTH_FAILURES_UNHEALTHY {
            self.health.mark_misconfigured(stream);
        }
        if in_a_row == AUTH_FAILURES_UNHEALTHY {
            tracing::error!(stream, dcr = %self.config.dcr_immutable_id, %error,
                "cannot authenticate to the Logs Ingestion API (check the credential, tenant, audience); retrying");
        }
    }
}

/// Consecutive 401s or token failures of one body after which the client reports unhealthy.
const AUTH_FAILURES_UNHEALTHY: u32 = 3;

fn halves(range: &Range<usize>) -> (Range<usize>, Range<usize>) {
    let mid = range.start + range.len() / 2;
    (range.start..mid, mid..range.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_and_header_parsing() {
        let mut h = Headers::new();
        let body = br#"{"error":{"code":"InvalidPayload","message":"bad column"}}"#;
        assert_eq!(
            parse_error(&h, body),
            (Some("InvalidPayload".into()), Some("bad column".into()))
        );
        h.insert(ERROR_CODE, "ContentLengthLimitExceeded".to_owned());
        assert_eq!(
            parse_error(&h, body).0.as_deref(),
            Some("ContentLengthLimitExceeded")
        );
        assert_eq!(
            parse_error(&Headers::new(), b"  oops "),
            (None, Some("oops".into()))
        );
        assert_eq!(parse_error(&Headers::new(), b""), (None, None));
        let long = "é".repeat(5000);
        assert!(
            parse_error(&Headers::new(), long.as_bytes())
                .1
                .unwrap()
                .len()
                <= MAX_ERROR_MESSAGE
        );
    }

    #[test]
    fn url_shape() {
        let mut cfg = IngestConfig::new(Url::parse("https://dce.example/").unwrap(), "dcr-1");
        cfg.gzip_level = 1;
        let client = IngestClient::new(
            cfg,
            CredentialSpec::ClientSecret {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret: "s".into(),
            },
        )
        .unwrap();
        assert_eq!(
            client.stream_url("Custom-Falcon Events").as_str(),
            "https://dce.example/dataCollectionRules/dcr-1/streams/Custom-Falcon%20Events?api-version=2023-01-01"
        );
    }

    #[test]
    fn config_validation_collects_errors() {
        let mut cfg = IngestConfig::new(Url::parse("http://dce.example/").unwrap(), " ");
        cfg.authority_host = Some(Url::parse("http://login.example/").unwrap());
        cfg.gzip_level = 0;
        let err = cfg.validate().unwrap_err().to_string();
        for needle in [
            "endpoint",
            "authority_host",
            "dcr_immutable_id",
            "gzip_level",
        ] {
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn halves_cover_range() {
        assert_eq!(halves(&(3..8)), (3..5, 5..8));
        assert_eq!(halves(&(3..5)), (3..4, 4..5));
    }

    #[tokio::test(start_paused = true)]
    async fn gate_delays_and_cancels() {
        let gate = Gate(Mutex::new(Instant::now()));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        gate.push(start + Duration::from_secs(5));
        gate.push(start + Duration::from_secs(2)); // earlier push does not shorten the gate
        gate.wait(&cancel).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        gate.push(Instant::now() + Duration::from_mins(1));
        cancel.cancel();
        assert_eq!(gate.wait(&cancel).await, Err(DeliverError::Cancelled));
    }
}
