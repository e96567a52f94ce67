//! Logs Ingestion API emulator (reference §1.4–1.6): `POST
//! /dataCollectionRules/{immutableId}/streams/{stream}?api-version=2023-01-01`, with Azure's
//! status codes, error bodies and `x-ms-error-code`, the 1 MiB wire limit and the 50 MiB
//! decompressed limit. Every accepted record's EventId goes into the [`Ledger`], which is
//! what end-to-end tests compare with [`crate::FalconEmulator::expected_event_ids`].

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Inner;
use crate::config::IngestionConfig;
use crate::entra::TokenProblem;
use crate::http::{self as h, ReadError, Resp};

/// Accepted api-versions: the stable one and the preview that Fluent Bit still sends.
const API_VERSIONS: [&str; 2] = ["2023-01-01", "2021-11-01-preview"];
/// The audience a Logs Ingestion token must carry (reference §1.3).
const AUDIENCE: &str = "https://monitor.azure.com";
/// Decompressed payload ceiling observed by otel-arrow (reference §1.6).
const MAX_DECOMPRESSED_BYTES: u64 = 50 * 1024 * 1024;
const MAX_REQUEST_IDS: usize = 10_000;
/// How much of an oversize body is read and discarded so the 413 reaches the client.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// Everything the ingestion emulator received, as served at `GET /_testbench/received`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Requests that reached the ingestion endpoint (any outcome, faults included).
    pub requests: u64,
    /// Requests answered 204.
    pub accepted_requests: u64,
    /// Records in accepted requests.
    pub records: u64,
    /// Accepted records per stream.
    pub per_stream: BTreeMap<String, u64>,
    /// EventId → times received in accepted requests.
    pub event_ids: BTreeMap<String, u32>,
    /// Accepted records whose EventId was already in the ledger.
    pub duplicates: u64,
    /// Undeclared column name → records in which it was dropped.
    pub dropped_columns: BTreeMap<String, u64>,
    /// Largest request body seen on the wire, in bytes.
    pub max_body_bytes_seen: usize,
    /// Requests refused with 413.
    pub oversize_rejections: u64,
    /// Status → responses sent with it (connection resets are not counted).
    pub statuses: BTreeMap<u16, u64>,
    /// `x-ms-client-request-id` of each request, in order (last 10,000; empty string if absent).
    pub client_request_ids: Vec<String>,
}

impl Ledger {
    /// EventIds received at least once.
    pub fn distinct_event_ids(&self) -> usize {
        self.event_ids.len()
    }
}

/// The Logs Ingestion emulator.
#[derive(Debug)]
pub struct IngestionEmulator {
    config: IngestionConfig,
    ledger: Mutex<Ledger>,
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Resp {
    let mut resp = h::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    );
    h::set_header(&mut resp, "x-ms-error-code", code);
    resp
}

impl IngestionEmulator {
    pub(crate) fn new(config: IngestionConfig) -> Self {
        Self {
            config,
            ledger: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Snapshot of the ledger.
    pub fn ledger(&self) -> Ledger {
        self.lock().clone()
    }

    /// Distinct EventIds accepted so far (cheaper than cloning the ledger).
    pub fn distinct_event_ids(&self) -> usize {
        self.lock().event_ids.len()
    }

    /// Records accepted so far (cheaper than cloning the ledger).
    pub fn records(&self) -> u64 {
        self.lock().records
    }

    /// Whether every id of `expected` was accepted at least once (no ledger clone).
    pub fn received_all<'a>(&self, expected: impl IntoIterator<Item = &'a str>) -> bool {
        let l = self.lock();
        expected.into_iter().all(|id| l.event_ids.contains_key(id))
    }

    /// The configuration in use.
    pub fn config(&self) -> &IngestionConfig {
        &self.config
    }

    fn note_request(&self, req: &Request<Incoming>) {
        let id = req
            .headers()
            .get("x-ms-client-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut l = self.lock();
        l.requests += 1;
        if l.client_request_ids.len() >= MAX_REQUEST_IDS {
            l.client_request_ids.remove(0);
        }
        l.client_request_ids.push(id);
    }

    pub(crate) fn note_reset(&self, req: &Request<Incoming>) {
        self.note_request(req);
    }

    fn finish(&self, mut resp: Resp) -> Resp {
        h::set_header(&mut resp, "x-ms-request-id", &h::trace_id());
        *self
            .lock()
            .statuses
            .entry(resp.status().as_u16())
            .or_default() += 1;
        resp
    }

    pub(crate) fn fault_response(
        &self,
        req: &Request<Incoming>,
        status: StatusCode,
        retry_after_secs: Option<u64>,
    ) -> Resp {
        self.note_request(req);
        let code = match status {
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::INTERNAL_SERVER_ERROR => "InternalServerError",
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "RequestTimeout",
            _ => "InjectedFault",
        };
        let mut resp = azure_error(status, code, "Fault injected by the testbench.");
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            let secs = retry_after_secs.unwrap_or(1);
            h::set_header(&mut resp, "retry-after", &secs.to_string());
        }
        self.finish(resp)
    }

    pub(crate) async fn handle(
        &self,
        inner: &Inner,
        dcr: &str,
        stream: &str,
        req: Request<Incoming>,
    ) -> Resp {
        self.note_request(&req);
        let resp = self.process(inner, dcr, stream, req).await;
        self.finish(resp)
    }

    #[allow(clippy::too_many_lines)] // the checks in Azure's order, one after the other
    async fn process(
        &self,
        inner: &Inner,
        dcr: &str,
        stream: &str,
        req: Request<Incoming>,
    ) -> Resp {
        let q = h::query(req.uri());
        match h::param(&q, "api-version") {
            None => {
                return azure_error(
                    StatusCode::BAD_REQUEST,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                );
            }
            Some(v) if !API_VERSIONS.contains(&v) => {
                return azure_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{v}' is invalid. The supported versions are '{}'.",
                        API_VERSIONS.join(",")
                    ),
                );
            }
            Some(_) => {}
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            return azure_error(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "Authorization header is missing or is not a Bearer token.",
            );
        };
        let principal = match inner.entra.validate(token) {
            Ok((principal, audience)) if audience == AUDIENCE => principal,
            Ok((_, audience)) => {
                return azure_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAudience",
                    &format!(
                        "Invalid authorization token audience '{audience}'; expected '{AUDIENCE}'."
                    ),
                );
            }
            Err(TokenProblem::Expired) => {
                return azure_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidToken",
                    "The authentication token has expired.",
                );
            }
            Err(TokenProblem::Unknown) => {
                return azure_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidToken",
                    "The authentication token is invalid.",
                );
            }
        };
        if dcr != self.config.dcr_immutable_id {
            return azure_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("Data collection rule with immutable Id '{dcr}' not found."),
            );
        }
        if !self.config.authorized_client_ids.contains(&principal) {
            return azure_error(
                StatusCode::FORBIDDEN,
                "OperationFailed",
                &format!(
                    "The authentication token provided does not have access to ingest data for the data collection rule with immutable Id '{dcr}' PipelineAccessResult: AccessGranted: False, IsRbacPresent: False, IsDcrDceBindingValid: , DcrArmId: , DceArmId: , Message: No RBAC role assignment."
                ),
            );
        }
        let Some(declaration) = self.config.streams.iter().find(|s| s.name == stream) else {
            return azure_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "Stream '{stream}' was not found in the data collection rule with immutable Id '{dcr}'."
                ),
            );
        };
        // The docs list Content-Type as required (reference §1.4); refuse rather than guess.
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json_type {
            return azure_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "The request Content-Type must be 'application/json'.",
            );
        }
        let max = self.config.max_body_bytes;
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let gzip = match req
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            None | Some("identity") => false,
            Some(v) if v.eq_ignore_ascii_case("gzip") => true,
            Some(other) => {
                return azure_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidContentEncoding",
                    &format!("Content-Encoding '{other}' is not supported."),
                );
            }
        };
        let too_large = |this: &Self, n: usize| {
            let mut l = this.lock();
            l.oversize_rejections += 1;
            l.max_body_bytes_seen = l.max_body_bytes_seen.max(n);
            drop(l);
            azure_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ContentLengthLimitExceeded",
                &format!(
                    "Maximum allowed content length: {max} bytes (1 MB). Provided content length: {n} bytes."
                ),
            )
        };
        let wire = match h::read_bounded_draining(req.into_body(), max, DRAIN_BYTES).await {
            Ok(b) => b,
            Err(ReadError::TooLarge(n)) => return too_large(self, declared_len.unwrap_or(n)),
            Err(ReadError::Io) => {
                return azure_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidPayload",
                    "The request body could not be read.",
                );
            }
        };
        {
            let mut l = self.lock();
            l.max_body_bytes_seen = l.max_body_bytes_seen.max(wire.len());
        }
        let body = if gzip {
            let mut out = Vec::new();
            let decoder = flate2::read::GzDecoder::new(&wire[..]);
            match decoder
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
            {
                Ok(_) if out.len() as u64 > MAX_DECOMPRESSED_BYTES => {
                    return azure_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PayloadSizeLimitExceeded",
                        "The decompressed payload exceeds the maximum allowed size of 52428800 bytes.",
                    );
                }
                Ok(_) => out,
                Err(e) => {
                    return azure_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidContentEncoding",
                        &format!("The gzip-compressed body could not be decompressed: {e}."),
                    );
                }
            }
        } else {
            wire.to_vec()
        };
        let records: Vec<serde_json::Map<String, serde_json::Value>> =
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::Array(items)) => {
                    let mut records = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            serde_json::Value::Object(map) => records.push(map),
                            _ => {
                                return azure_error(
                                    StatusCode::BAD_REQUEST,
                                    "InvalidPayload",
                                    "The request body must be a JSON array of objects.",
                                );
                            }
                        }
                    }
                    records
                }
                Ok(_) => {
                    return azure_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidPayload",
                        "The request body must be a JSON array of objects.",
                    );
                }
                Err(e) => {
                    return azure_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidPayload",
                        &format!("The request body is not valid JSON: {e}."),
                    );
                }
            };
        let ids = records
            .iter()
            .filter_map(|r| r.get("EventId").and_then(|v| v.as_str()));
        if let Some(id) = inner.faults.rejected(ids) {
            return azure_error(
                StatusCode::BAD_REQUEST,
                "InvalidRecord",
                &format!("Record with EventId '{id}' was rejected (injected fault)."),
            );
        }
        let mut l = self.lock();
        l.accepted_requests += 1;
        l.records += records.len() as u64;
        *l.per_stream.entry(stream.to_owned()).or_default() += records.len() as u64;
        for record in &records {
            for key in record.keys() {
                if !declaration.columns.iter().any(|(c, _)| c == key) {
                    *l.dropped_columns.entry(key.clone()).or_default() += 1;
                }
            }
            if let Some(id) = record.get("EventId").and_then(|v| v.as_str()) {
                let n = l.event_ids.entry(id.to_owned()).or_default();
                *n += 1;
                if *n > 1 {
                    l.duplicates += 1;
                }
            }
        }
        drop(l);
        h::empty(StatusCode::NO_CONTENT)
    }
}
