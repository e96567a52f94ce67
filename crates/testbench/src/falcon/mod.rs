//! Falcon Event Streams emulator (reference §1): OAuth2 token, discover, the chunked NDJSON
//! feed and session refresh, with the session rules real clients trip over: single-use
//! session tokens, expiry without refresh, one live session per appId, 415 on a refresh
//! without `Content-Type`.
//!
//! Choices where the public record is silent (reference §1.3–1.8), each erring on the strict side:
//! * A session token opens its feed once; a second `GET`, an unknown token, or the token of
//!   an expired or superseded session get 401. Faults hit before the token is checked, so a
//!   faulted open does not use it up.
//! * An appId is held while one of its sessions has its feed open, or was refreshed and has
//!   not expired; discover then answers 200 with empty `resources`. A feed that the server
//!   closes itself (`CutFeed`, expiry) ends its session, so the client can rediscover at once.
//! * A session expires `refreshActiveSessionInterval` after discovery or its last refresh:
//!   its feed ends (a clean end of the chunked body) and refresh answers 404.
//! * `offset=N` starts at N inclusive (below the first offset: at the first); no `offset`
//!   starts at the oldest event; `whence=2` sends only events appended after the open.
//!   `eventType=A,B` compares case-insensitively, so `EppDetectionSummaryEvent` also matches
//!   the `EPPDetectionSummaryEvent` variant.
//! * Keepalives are blank lines after `keepalive_interval_ms` without an event.

pub(crate) mod generator;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::config::{FalconConfig, LineEnding};
use crate::faults::Faults;
use crate::http::{self as h, BoxError, Resp};
use generator::Generator;

/// Counters of what clients did to the Falcon emulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FalconStats {
    /// `POST /oauth2/token` requests (any outcome).
    pub token_requests: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Discover requests answered 200 (with or without resources).
    pub discovers: u64,
    /// Discovers answered with empty `resources` because the appId was held.
    pub discovers_empty: u64,
    /// Successful session refreshes.
    pub refreshes: u64,
    /// Refreshes refused with 415 (no `Content-Type`).
    pub refresh_415: u64,
    /// Refreshes refused with 404 (expired or unknown session).
    pub refresh_404: u64,
    /// Feed connections accepted.
    pub feed_opens: u64,
    /// Feed connections currently open.
    pub open_feeds: u64,
    /// `(partition, offset parameter)` of every accepted feed open, oldest first (last 10,000).
    pub feed_opens_with_offset: Vec<(u32, Option<u64>)>,
    /// Feed opens refused with 401 (unknown, reused or expired session token).
    pub stale_token_rejections: u64,
    /// Requests refused with 401 for a missing, unknown or expired bearer token.
    pub bearer_rejections: u64,
    /// Event lines written to feeds.
    pub events_sent: u64,
    /// Blank keepalive lines written.
    pub keepalives_sent: u64,
    /// Feeds closed by a `CutFeed` fault.
    pub feed_cuts: u64,
    /// Sessions that expired for lack of refresh.
    pub sessions_expired: u64,
}

const MAX_OPEN_LOG: usize = 10_000;
const FEED_CHUNK_BYTES: usize = 64 * 1024;
const RATE_LIMIT: u64 = 6000;

#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags of the session lifecycle
struct Session {
    app_id: String,
    partition: u32,
    token: String,
    token_used: bool,
    deadline: Instant,
    refreshed: bool,
    feed_open: bool,
    ended: bool,
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        !self.ended && now < self.deadline
    }
}

#[derive(Debug, Default)]
struct State {
    stats: FalconStats,
    next_session: u64,
    sessions: HashMap<u64, Session>,
    bearer_tokens: HashMap<String, Instant>,
    rate_window: Option<(Instant, u64)>,
}

/// The Falcon Event Streams emulator.
#[derive(Debug)]
pub struct FalconEmulator {
    config: FalconConfig,
    generator: Generator,
    partitions: Vec<watch::Sender<u64>>,
    events_sent: AtomicU64,
    faults: Arc<Faults>,
    state: Mutex<State>,
}

impl FalconEmulator {
    pub(crate) fn new(config: FalconConfig, seed: u64, faults: Arc<Faults>) -> Self {
        let generator = Generator::new(seed, config.customer_id.clone(), config.event_size_bytes);
        let partitions = (0..config.partitions)
            .map(|_| watch::Sender::new(config.initial_events))
            .collect();
        Self {
            config,
            generator,
            partitions,
            events_sent: AtomicU64::new(0),
            faults,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Generate `n` more events on `partition`; feeds waiting on it wake up.
    /// A partition that does not exist is ignored.
    pub fn append_events(&self, partition: u32, n: u64) {
        if let Some(p) = self.partitions.get(partition as usize) {
            p.send_modify(|count| *count += n);
        }
    }

    /// Number of events that exist on `partition` (0 for an unknown partition).
    pub fn generated(&self, partition: u32) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |p| *p.borrow())
    }

    /// The exact bytes of the line at `offset`, without line ending, as the feed sends it
    /// (including a `Malformed` replacement). `None` if no such event exists yet.
    pub fn event_line(&self, partition: u32, offset: u64) -> Option<Bytes> {
        if offset < self.config.first_offset
            || offset >= self.config.first_offset + self.generated(partition)
        {
            return None;
        }
        let mut out = Vec::with_capacity(self.config.event_size_bytes + 64);
        self.write_line(partition, offset, &mut out);
        Some(Bytes::from(out))
    }

    fn write_line(&self, partition: u32, offset: u64, out: &mut Vec<u8>) {
        match self.faults.malformed(partition, offset) {
            Some(kind) => self
                .generator
                .write_malformed(partition, offset, &kind, out),
            None => self.generator.write_line(partition, offset, out),
        }
    }

    /// `metadata.eventType` of the event at that position.
    pub fn event_type(&self, partition: u32, offset: u64) -> &'static str {
        self.generator.event_type(partition, offset)
    }

    /// `"{customerId}:{partition}:{offset}"` of every generated event that is a valid event,
    /// i.e. not replaced by a `Malformed` fault (those must be dead-lettered, not delivered).
    pub fn expected_event_ids(&self) -> Vec<String> {
        let malformed = self.faults.malformed_offsets();
        let mut ids = Vec::new();
        for (p, _) in self.partitions.iter().enumerate() {
            let p = p as u32;
            let first = self.config.first_offset;
            for offset in first..first + self.generated(p) {
                if !malformed.contains(&(p, offset)) {
                    ids.push(format!("{}:{p}:{offset}", self.config.customer_id));
                }
            }
        }
        ids
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> FalconStats {
        let mut stats = self.lock().stats.clone();
        stats.events_sent = self.events_sent.load(Ordering::Relaxed);
        stats
    }

    /// The customer id (CID) in every event.
    pub fn customer_id(&self) -> &str {
        &self.config.customer_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &FalconConfig {
        &self.config
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.config.refresh_interval_secs)
    }

    fn error_body(code: StatusCode, message: &str) -> serde_json::Value {
        json!({
            "meta": {"query_time": 0.000_412, "powered_by": "crowdstrike-api-gateway", "trace_id": h::trace_id()},
            "errors": [{"code": code.as_u16(), "message": message}],
        })
    }

    /// An API response with the rate-limit and region headers of the real gateway.
    fn api_response(&self, status: StatusCode, body: &serde_json::Value) -> Resp {
        let remaining = {
            let mut s = self.lock();
            let now = Instant::now();
            let window = match s.rate_window {
                Some((start, n)) if now.duration_since(start) < Duration::from_mins(1) => {
                    (start, n + 1)
                }
                _ => (now, 1),
            };
            s.rate_window = Some(window);
            RATE_LIMIT.saturating_sub(window.1)
        };
        let mut resp = h::json(status, body);
        h::set_header(&mut resp, "x-cs-region", "us-1");
        h::set_header(&mut resp, "x-cs-traceid", &h::trace_id());
        h::set_header(&mut resp, "x-ratelimit-limit", &RATE_LIMIT.to_string());
        h::set_header(&mut resp, "x-ratelimit-remaining", &remaining.to_string());
        resp
    }

    pub(crate) fn fault_response(&self, status: StatusCode, retry_after_secs: Option<u64>) -> Resp {
        let message = if status == StatusCode::TOO_MANY_REQUESTS {
            "API rate limit exceeded."
        } else {
            "injected fault"
        };
        let mut resp = self.api_response(status, &Self::error_body(status, message));
        if status == StatusCode::TOO_MANY_REQUESTS {
            let at = h::now_epoch_secs() + retry_after_secs.unwrap_or(1);
            h::set_header(&mut resp, "x-ratelimit-retryafter", &at.to_string());
            h::set_header(&mut resp, "x-ratelimit-remaining", "0");
        }
        resp
    }

    fn bearer_ok(&self, parts: &http::request::Parts) -> bool {
        let token = h::header_str(parts, header::AUTHORIZATION).and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let mut s = self.lock();
        let ok = token
            .and_then(|t| s.bearer_tokens.get(t))
            .is_some_and(|exp| Instant::now() < *exp);
        if !ok {
            s.stats.bearer_rejections += 1;
        }
        ok
    }

    fn unauthorized(&self) -> Resp {
        self.api_response(
            StatusCode::UNAUTHORIZED,
            &Self::error_body(
                StatusCode::UNAUTHORIZED,
                "access denied, invalid bearer token",
            ),
        )
    }

    fn end_session(&self, id: u64, expired: bool) {
        let mut s = self.lock();
        if let Some(session) = s.sessions.get_mut(&id) {
            session.ended = true;
        }
        if expired {
            s.stats.sessions_expired += 1;
        }
    }

    /// The deadline of a live session, or `None` once it ended.
    fn session_deadline(&self, id: u64) -> Option<Instant> {
        self.lock()
            .sessions
            .get(&id)
            .filter(|s| !s.ended)
            .map(|s| s.deadline)
    }

    /// Make every bearer token and session token invalid, as after a long outage.
    pub fn expire_all_tokens(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        for exp in s.bearer_tokens.values_mut() {
            *exp = now;
        }
        for session in s.sessions.values_mut() {
            session.ended = true;
        }
    }
}

/// Valid appId: 1–32 of `[A-Za-z0-9._-]` (the server accepts `-` and `.`, reference §1.8).
fn valid_app_id(app_id: &str) -> bool {
    (1..=32).contains(&app_id.len())
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub(crate) async fn token(inner: &Inner, req: Request<Incoming>) -> Resp {
    let f = &inner.falcon;
    f.lock().stats.token_requests += 1;
    let Ok(body) = h::read_bounded(req.into_body(), 64 * 1024).await else {
        return f.api_response(
            StatusCode::BAD_REQUEST,
            &FalconEmulator::error_body(StatusCode::BAD_REQUEST, "invalid request body"),
        );
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let id = h::param(&form, "client_id");
    let secret = h::param(&form, "client_secret");
    if id != Some(f.config.client_id.as_str()) || secret != Some(f.config.client_secret.as_str()) {
        return f.api_response(
            StatusCode::UNAUTHORIZED,
            &FalconEmulator::error_body(
                StatusCode::UNAUTHORIZED,
                "access denied, invalid client credentials",
            ),
        );
    }
    let token = format!("tb-falcon-{}", uuid::Uuid::new_v4().simple());
    {
        let mut s = f.lock();
        let now = Instant::now();
        // Bounded: forget expired tokens once the table grows.
        if s.bearer_tokens.len() > 10_000 {
            s.bearer_tokens.retain(|_, exp| *exp > now);
        }
        s.bearer_tokens.insert(
            token.clone(),
            now + Duration::from_secs(f.config.token_expires_in_secs),
        );
        s.stats.tokens_issued += 1;
    }
    f.api_response(
        StatusCode::CREATED,
        &json!({"access_token": token, "expires_in": f.config.token_expires_in_secs, "token_type": "bearer"}),
    )
}

pub(crate) fn discover(inner: &Inner, req: &Request<Incoming>) -> Resp {
    let f = &inner.falcon;
    let (parts, ()) = clone_parts(req);
    if !f.bearer_ok(&parts) {
        return f.unauthorized();
    }
    let q = h::query(req.uri());
    let app_id = h::param(&q, "appId").unwrap_or("");
    if !valid_app_id(app_id) {
        return f.api_response(
            StatusCode::BAD_REQUEST,
            &FalconEmulator::error_body(
                StatusCode::BAD_REQUEST,
                "Invalid appId, must be 1-32 alphanumeric characters",
            ),
        );
    }
    if let Some(format) = h::param(&q, "format")
        && format != "json"
        && format != "flatjson"
    {
        return f.api_response(
            StatusCode::BAD_REQUEST,
            &FalconEmulator::error_body(
                StatusCode::BAD_REQUEST,
                "Invalid format, must be json or flatjson",
            ),
        );
    }
    let now = Instant::now();
    let interval = f.interval();
    let mut resources = Vec::new();
    {
        let mut s = f.lock();
        s.stats.discovers += 1;
        s.sessions.retain(|_, x| x.feed_open || x.alive(now));
        let held = s
            .sessions
            .values()
            .any(|x| x.app_id == app_id && x.alive(now) && (x.feed_open || x.refreshed));
        if held {
            s.stats.discovers_empty += 1;
        } else {
            for x in s.sessions.values_mut().filter(|x| x.app_id == app_id) {
                x.ended = true;
            }
            let expiration = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
            let expiration = expiration
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            for partition in 0..f.config.partitions {
                s.next_session += 1;
                let id = s.next_session;
                let token = format!("tb-session-{}", uuid::Uuid::new_v4().simple());
                s.sessions.insert(
                    id,
                    Session {
                        app_id: app_id.to_owned(),
                        partition,
                        token: token.clone(),
                        token_used: false,
                        deadline: now + interval,
                        refreshed: false,
                        feed_open: false,
                        ended: false,
                    },
                );
                let base = inner.base_url.as_str();
                let enc: String = url::form_urlencoded::byte_serialize(app_id.as_bytes()).collect();
                resources.push(json!({
                    "dataFeedURL": format!("{base}sensors/entities/datafeed/v1/{partition}?appId={enc}"),
                    "sessionToken": {"token": token, "expiration": expiration},
                    "refreshActiveSessionURL": format!("{base}sensors/entities/datafeed-actions/v1/{partition}?appId={enc}&action_name=refresh_active_stream_session"),
                    "refreshActiveSessionInterval": f.config.refresh_interval_secs,
                }));
            }
        }
    }
    f.api_response(
        StatusCode::OK,
        &json!({"meta": {"query_time": 0.001_088, "powered_by": "FalconHose", "trace_id": h::trace_id()}, "resources": resources}),
    )
}

/// Header-only copy of the request head (the body stays with the caller).
fn clone_parts(req: &Request<Incoming>) -> (http::request::Parts, ()) {
    let mut builder = Request::builder().method(req.method()).uri(req.uri());
    if let Some(headers) = builder.headers_mut() {
        headers.clone_from(req.headers());
    }
    builder
        .body(())
        .map_or_else(|_| Request::new(()).into_parts(), Request::into_parts)
}

fn parse_partition(f: &FalconEmulator, p: &str) -> Option<u32> {
    p.parse::<u32>().ok().filter(|p| *p < f.config.partitions)
}

pub(crate) fn refresh(inner: &Inner, req: &Request<Incoming>, partition: &str) -> Resp {
    let f = &inner.falcon;
    let (parts, ()) = clone_parts(req);
    if !f.bearer_ok(&parts) {
        return f.unauthorized();
    }
    if parts.headers.get(header::CONTENT_TYPE).is_none() {
        f.lock().stats.refresh_415 += 1;
        return f.api_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &FalconEmulator::error_body(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
            ),
        );
    }
    let q = h::query(req.uri());
    if h::param(&q, "action_name") != Some("refresh_active_stream_session") {
        return f.api_response(
            StatusCode::BAD_REQUEST,
            &FalconEmulator::error_body(StatusCode::BAD_REQUEST, "invalid action_name"),
        );
    }
    let app_id = h::param(&q, "appId").unwrap_or("");
    let partition = parse_partition(f, partition);
    let now = Instant::now();
    let interval = f.interval();
    let mut s = f.lock();
    let newest = s
        .sessions
        .iter_mut()
        .filter(|(_, x)| Some(x.partition) == partition && x.app_id == app_id)
        .max_by_key(|(id, _)| **id)
        .map(|(_, x)| x);
    match newest {
        Some(x) if x.alive(now) => {
            x.deadline = now + interval;
            x.refreshed = true;
            s.stats.refreshes += 1;
            drop(s);
            f.api_response(StatusCode::OK, &json!({"meta": {"query_time": 0.000_3, "powered_by": "crowdstrike-api-gateway", "trace_id": h::trace_id()}, "errors": []}))
        }
        _ => {
            s.stats.refresh_404 += 1;
            drop(s);
            f.api_response(
                StatusCode::NOT_FOUND,
                &FalconEmulator::error_body(StatusCode::NOT_FOUND, "session not found"),
            )
        }
    }
}

struct FeedParams {
    start: Start,
    filter: Option<Vec<String>>,
}

enum Start {
    Offset(u64),
    Oldest,
    Newest,
}

fn feed_params(q: &[(String, String)]) -> Result<FeedParams, &'static str> {
    let start = match (h::param(q, "offset"), h::param(q, "whence")) {
        (Some(o), _) => Start::Offset(o.parse().map_err(|_| "invalid offset")?),
        (None, Some("2")) => Start::Newest,
        (None, Some(_)) => return Err("invalid whence"),
        (None, None) => Start::Oldest,
    };
    let filter = h::param(q, "eventType").filter(|v| !v.is_empty()).map(|v| {
        v.split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    });
    Ok(FeedParams { start, filter })
}

pub(crate) fn feed(inner: &Arc<Inner>, req: &Request<Incoming>, partition: &str) -> Resp {
    let f = &inner.falcon;
    let query = h::query(req.uri());
    let params = match feed_params(&query) {
        Ok(p) => p,
        Err(msg) => {
            return h::json(
                StatusCode::BAD_REQUEST,
                &FalconEmulator::error_body(StatusCode::BAD_REQUEST, msg),
            );
        }
    };
    let stale = || {
        f.lock().stats.stale_token_rejections += 1;
        h::json(
            StatusCode::UNAUTHORIZED,
            &FalconEmulator::error_body(
                StatusCode::UNAUTHORIZED,
                "access denied, invalid session token",
            ),
        )
    };
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
    else {
        return stale();
    };
    let Some(partition) = parse_partition(f, partition) else {
        return h::json(
            StatusCode::NOT_FOUND,
            &FalconEmulator::error_body(StatusCode::NOT_FOUND, "unknown partition"),
        );
    };
    // Resolved before the feed counts as open, so `whence=2` never misses an event appended
    // by someone who waited for `open_feeds`.
    let first = f.config.first_offset;
    let next = match params.start {
        Start::Offset(o) => o.max(first),
        Start::Oldest => first,
        Start::Newest => first + f.generated(partition),
    };
    let app_id = h::param(&query, "appId").unwrap_or("");
    let now = Instant::now();
    let session_id = {
        let mut s = f.lock();
        let found = s
            .sessions
            .iter_mut()
            .find(|(_, x)| x.token == token && x.partition == partition && x.app_id == app_id);
        match found {
            Some((id, x)) if x.alive(now) && !x.token_used => {
                x.token_used = true;
                x.feed_open = true;
                let id = *id;
                let offset = match params.start {
                    Start::Offset(o) => Some(o),
                    _ => None,
                };
                s.stats.feed_opens += 1;
                s.stats.open_feeds += 1;
                if s.stats.feed_opens_with_offset.len() >= MAX_OPEN_LOG {
                    s.stats.feed_opens_with_offset.remove(0);
                }
                s.stats.feed_opens_with_offset.push((partition, offset));
                id
            }
            _ => {
                drop(s);
                return stale();
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(4);
    let task = FeedTask {
        inner: inner.clone(),
        session_id,
        partition,
        next,
        filter: params.filter,
        tx,
    };
    tokio::spawn(task.run());
    let body = BodyExt::boxed(ChannelBody(rx));
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

struct FeedTask {
    inner: Arc<Inner>,
    session_id: u64,
    partition: u32,
    next: u64,
    filter: Option<Vec<String>>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
}

/// Marks the feed closed however the task ends.
struct OpenGuard<'a>(&'a FalconEmulator, u64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.stats.open_feeds = s.stats.open_feeds.saturating_sub(1);
        if let Some(x) = s.sessions.get_mut(&self.1) {
            x.feed_open = false;
        }
    }
}

fn ending(mode: LineEnding, n: u64) -> &'static [u8] {
    match mode {
        LineEnding::Crlf => b"\r\n",
        LineEnding::Mixed if n.is_multiple_of(3) => b"\r\n",
        LineEnding::Lf | LineEnding::Mixed => b"\n",
    }
}

impl FeedTask {
    async fn run(mut self) {
        let inner = self.inner.clone();
        let f = &inner.falcon;
        let cancel: &CancellationToken = &inner.cancel;
        let _guard = OpenGuard(f, self.session_id);
        let Some(watch) = f.partitions.get(self.partition as usize) else {
            return;
        };
        let mut rx = watch.subscribe();
        let keepalive = Duration::from_millis(f.config.keepalive_interval_ms.max(1));
        let first = f.config.first_offset;
        let mut sent = 0u64;
        let mut keepalives = 0u64;
        let mut buf: Vec<u8> = Vec::with_capacity(FEED_CHUNK_BYTES + 4096);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let Some(deadline) = f.session_deadline(self.session_id) else {
                return;
            };
            if Instant::now() >= deadline {
                f.end_session(self.session_id, true);
                return;
            }
            let end = first + *rx.borrow_and_update();
            if self.next < end {
                match self.fill(&mut buf, end, &mut sent) {
                    Fill::More => {}
                    Fill::Cut { abort } => {
                        f.lock().stats.feed_cuts += 1;
                        f.end_session(self.session_id, false);
                        if !buf.is_empty() {
                            let _ = self
                                .tx
                                .send(Ok(Bytes::from(std::mem::take(&mut buf))))
                                .await;
                        }
                        if abort {
                            // hyper drops buffered data when a body errors, so let it write
                            // the partial line to the socket before aborting the connection.
                            let max = self.tx.max_capacity();
                            while self.tx.capacity() < max && !self.tx.is_closed() {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = self.tx.send(Err("feed cut mid-line".into())).await;
                        }
                        return;
                    }
                }
                if !buf.is_empty() {
                    let chunk = Bytes::from(std::mem::replace(
                        &mut buf,
                        Vec::with_capacity(FEED_CHUNK_BYTES + 4096),
                    ));
                    if !self.send_before_expiry(chunk).await {
                        return;
                    }
                }
                continue;
            }
            let wake = deadline.min(Instant::now() + keepalive);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.tx.closed() => return,
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() < deadline {
                        keepalives += 1;
                        f.lock().stats.keepalives_sent += 1;
                        let line = Bytes::from_static(ending(f.config.line_ending, keepalives));
                        if self.tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Send a chunk, waiting for a slow reader, but end the session at its deadline as the
    /// real server does: a client whose reading is blocked must still refresh in time.
    async fn send_before_expiry(&self, chunk: Bytes) -> bool {
        let f = &self.inner.falcon;
        loop {
            let Some(deadline) = f.session_deadline(self.session_id) else {
                return false;
            };
            tokio::select! {
                permit = self.tx.reserve() => {
                    let Ok(permit) = permit else { return false };
                    permit.send(Ok(chunk));
                    return true;
                }
                () = self.inner.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if f.session_deadline(self.session_id).is_some_and(|d| Instant::now() >= d) {
                        f.end_session(self.session_id, true);
                        return false;
                    }
                }
            }
        }
    }

    /// Append lines from `self.next` up to `end` (or one chunk) to `buf`.
    fn fill(&mut self, buf: &mut Vec<u8>, end: u64, sent: &mut u64) -> Fill {
        let f = &self.inner.falcon;
        let cut = f.faults.cut_feed();
        let mut written = 0u64;
        while self.next < end && buf.len() < FEED_CHUNK_BYTES {
            let offset = self.next;
            self.next += 1;
            if let Some(filter) = &self.filter {
                let t = f.generator.event_type(self.partition, offset);
                if !filter.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                    continue;
                }
            }
            f.write_line(self.partition, offset, buf);
            buf.extend_from_slice(ending(f.config.line_ending, offset));
            written += 1;
            *sent += 1;
            if let Some((every, mid_line)) = cut
                && *sent >= every
            {
                f.events_sent.fetch_add(written, Ordering::Relaxed);
                if mid_line {
                    let mut next_line = Vec::new();
                    f.write_line(self.partition, self.next, &mut next_line);
                    buf.extend_from_slice(&next_line[..next_line.len() / 2]);
                }
                return Fill::Cut { abort: mid_line };
            }
        }
        f.events_sent.fetch_add(written, Ordering::Relaxed);
        Fill::More
    }
}

enum Fill {
    More,
    Cut { abort: bool },
}

/// Continuous generation: `rate` events per second on every partition until cancelled.
pub(crate) async fn generate_continuously(inner: Arc<Inner>, rate: u64) {
    let start = Instant::now();
    let mut produced = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (u128::from(rate) * start.elapsed().as_millis() / 1000) as u64;
        if due > produced {
            for p in 0..inner.falcon.config.partitions {
                inner.falcon.append_events(p, due - produced);
            }
            produced = due;
        }
    }
}

/// The feed body: chunks produced by the feed task; an `Err` aborts the connection.
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
