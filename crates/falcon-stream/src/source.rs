//! The consumer: discover, one task per partition, resume from the sink's durable offset.
//!
//! Guarantee: an event is handed to the sink at most once per connection and in offset
//! order; the sink's `durable_offset` is the only checkpoint, so after any failure the feed
//! reopens at `durable + 1` (Falcon's `offset` is inclusive, reference §1.11) and nothing is
//! skipped or duplicated downstream of a durable write.
//!
//! Sessions form a *group*: one discover serves every partition, and when one partition's
//! feed ends the whole group is closed and re-discovered together. Falcon holds an appId
//! while any of its feeds is open (a second discover answers `resources: []`), so a single
//! partition re-discovering on its own could starve behind its healthy siblings.
//!
//! Writes are pipelined: while one batch is being made durable, the reader goes on reading
//! into the next (at most one write in flight and one batch filling per partition, so memory
//! stays bounded). The batch that fills during an fsync is the next group commit. A write in
//! flight is always settled before a connection ends, so the next connection's
//! `durable_offset` cannot be overtaken by a commit still landing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, StreamResource, build_client};
use crate::config::{AppId, PartitionSelection, SourceConfig, StartPosition};
use crate::error::{ApiError, SourceError};
use crate::event::{
    DEAD_LETTER_RAW_CAP, DeadLetterReason, EventSink, FalconEvent, SinkError, SourceDeadLetter,
    parse_line,
};
use crate::framing::{Frame, LineFramer};
use crate::stats::{PartitionStats, ReconnectCause, SourceStats};

/// A batch is flushed once it holds this many bytes, whatever `max_batch_events` says.
const BATCH_SOFT_BYTES: usize = 8 * 1024 * 1024;

/// A resumable Falcon Event Streams consumer writing into an [`EventSink`].
#[derive(Debug)]
pub struct FalconSource<S: EventSink> {
    inner: Arc<Inner<S>>,
}

#[derive(Debug)]
struct Inner<S> {
    api: Api,
    sink: Arc<S>,
    config: SourceConfig,
    app_id: AppId,
    stats: Arc<SourceStats>,
}

/// How a partition session ended.
#[derive(Debug)]
struct SessionEnd {
    partition: u32,
    /// `None` when the source was cancelled.
    cause: Option<ReconnectCause>,
    /// The feed was opened and delivered at least one byte.
    healthy: bool,
    detail: String,
}

impl<S: EventSink> FalconSource<S> {
    /// Validates `config` and builds the HTTP client (CA roots, proxy). No IO happens here.
    pub fn new(config: SourceConfig, sink: Arc<S>) -> Result<Self, SourceError> {
        let app_id = config.validate()?;
        let http = build_client(&config)?;
        let stats = Arc::new(SourceStats::default());
        let api = Api::new(http, &config, app_id.clone(), Arc::clone(&stats));
        Ok(FalconSource {
            inner: Arc::new(Inner {
                api,
                sink,
                config,
                app_id,
                stats,
            }),
        })
    }

    /// Live telemetry.
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Consumes until `cancel` fires. Transient failures (network, HTTP status, sink errors,
    /// appId held elsewhere) are retried forever with capped, jittered backoff. On return
    /// every in-flight `write` has completed or been dropped.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), SourceError> {
        let inner = &self.inner;
        let mut backoff = Backoff::new(&inner.config);
        tracing::info!(app_id = %inner.app_id, base_url = %inner.config.base_url, "falcon source starting");
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let discovered = tokio::select! {
                () = cancel.cancelled() => break,
                r = inner.api.discover() => r,
            };
            let resources = match discovered {
                Ok(r) if r.is_empty() => {
                    tracing::warn!(
                        app_id = %inner.app_id,
                        "discover returned no streams: another consumer may hold this appId (this one waits as a standby), or the CID lacks Event Streams"
                    );
                    if !sleep_or_cancel(backoff.next(), &cancel).await {
                        break;
                    }
                    continue;
                }
                Ok(r) => r,
                Err(error) => {
                    let wait = error.retry_after().unwrap_or_else(|| backoff.next());
                    if matches!(error, ApiError::CredentialsRefused(_)) {
                        // An operator must act; keep retrying in case it is a server-side glitch.
                        tracing::error!(%error, wait_ms = wait.as_millis() as u64, "falcon authentication failed; retrying");
                    } else {
                        tracing::warn!(%error, wait_ms = wait.as_millis() as u64, "discover failed; retrying");
                    }
                    if !sleep_or_cancel(wait, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            if let PartitionSelection::List(wanted) = &inner.config.partitions {
                let missing: Vec<u32> = wanted
                    .iter()
                    .copied()
                    .filter(|p| !resources.iter().any(|r| r.partition == *p))
                    .collect();
                if !missing.is_empty() {
                    tracing::warn!(?missing, "configured partitions not offered by discover");
                }
            }
            let (selected, skipped): (Vec<_>, Vec<_>) = resources
                .into_iter()
                .partition(|r| inner.config.partitions.contains(r.partition));
            if selected.is_empty() {
                tracing::warn!(
                    offered = ?skipped.iter().map(|r| r.partition).collect::<Vec<_>>(),
                    "none of the configured partitions was offered by discover; retrying"
                );
                if !sleep_or_cancel(backoff.next(), &cancel).await {
                    break;
                }
                continue;
            }

            let healthy = run_group(inner, selected, &cancel).await;
            if cancel.is_cancelled() {
                break;
            }
            if healthy {
                backoff.reset();
            }
            if !sleep_or_cancel(backoff.next(), &cancel).await {
                break;
            }
        }
        tracing::info!(app_id = %inner.app_id, "falcon source stopped");
        Ok(())
    }
}

/// Runs one session group (one discover's streams) until any partition ends, then closes
/// the others and waits for all of them. Returns whether any feed was healthy.
async fn run_group<S: EventSink>(
    inner: &Arc<Inner<S>>,
    selected: Vec<StreamResource>,
    cancel: &CancellationToken,
) -> bool {
    let group = cancel.child_token();
    let mut tasks = JoinSet::new();
    for resource in selected {
        tasks.spawn(session(
            Arc::clone(inner),
            resource,
            cancel.clone(),
            group.clone(),
        ));
    }
    let mut healthy = false;
    let mut first = true;
    while let Some(joined) = tasks.join_next().await {
        group.cancel();
        match joined {
            Ok(end) => {
                healthy |= end.healthy;
                if let Some(cause) = end.cause {
                    inner.stats.partition(end.partition).reconnect(cause);
                    if first {
                        log_end(&end, cause);
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "partition task failed; restarting the session group");
            }
        }
        first = false;
    }
    healthy
}

fn log_end(end: &SessionEnd, cause: ReconnectCause) {
    match cause {
        ReconnectCause::Eof | ReconnectCause::SessionExpired => {
            tracing::info!(partition = end.partition, %cause, detail = %end.detail, "feed ended; reconnecting from the durable offset");
        }
        _ => {
            tracing::warn!(partition = end.partition, %cause, detail = %end.detail, "feed failed; reconnecting from the durable offset");
        }
    }
}

/// Jittered exponential backoff (backon), capped at `backoff_max`, reset after a healthy
/// connection.
struct Backoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    fn new(config: &SourceConfig) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(config.backoff_initial)
            .with_max_delay(config.backoff_max)
            .with_jitter()
            .without_max_times();
        Backoff {
            current: builder.build(),
            builder,
            max: config.backoff_max,
        }
    }

    fn next(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max).min(self.max)
    }

    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// Sleeps unless cancelled first; `false` means cancelled.
async fn sleep_or_cancel(wait: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Aborts the refresh task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session<S: EventSink>(
    inner: Arc<Inner<S>>,
    resource: StreamResource,
    cancel: CancellationToken,
    group: CancellationToken,
) -> SessionEnd {
    let partition = resource.partition;
    let pstats = inner.stats.partition(partition);
    let end = |cause: Option<ReconnectCause>, healthy: bool, detail: String| SessionEnd {
        partition,
        cause,
        healthy,
        detail,
    };

    let durable = tokio::select! {
        () = cancel.cancelled() => return end(None, false, String::new()),
        r = inner.sink.durable_offset(partition) => r,
    };
    let durable = match durable {
        Ok(d) => d,
        Err(e) => return end(Some(ReconnectCause::SinkError), false, e.to_string()),
    };
    if let Some(d) = durable {
        pstats.durable(d);
    }
    let url = feed_url(&inner.config, &resource, durable);

    let opened = tokio::select! {
        () = group.cancelled() => return end(stopped_cause(&cancel), false, String::new()),
        r = inner.api.open_feed(url, &resource.token) => r,
    };
    let resp = match opened {
        Ok(resp) => resp,
        Err(ApiError::Unauthorized) => {
            return end(
                Some(ReconnectCause::FeedUnauthorized),
                false,
                "session token refused".to_owned(),
            );
        }
        Err(e) => return end(Some(ReconnectCause::FeedOpenFailed), false, e.to_string()),
    };
    pstats.set_connected(true);
    tracing::info!(partition, resume_after = ?durable, "feed connected");

    let session_dead = CancellationToken::new();
    let _refresher = AbortOnDrop(tokio::spawn(refresh_loop(
        Arc::clone(&inner),
        resource.clone(),
        Arc::clone(&pstats),
        session_dead.clone(),
    )));

    let mut reader = Reader {
        framer: LineFramer::new(
            inner.config.max_event_bytes,
            DEAD_LETTER_RAW_CAP.min(inner.config.max_event_bytes),
        ),
        frames: Vec::new(),
        batch: Vec::new(),
        batch_bytes: 0,
        in_flight: None,
        last_seen: durable,
        keepalives_reported: 0,
        partition,
        pstats: Arc::clone(&pstats),
        inner: Arc::clone(&inner),
        cancel: cancel.clone(),
    };
    let (cause, healthy, detail) = reader.run(resp, &group, &session_dead).await;
    pstats.set_connected(false);
    end(cause, healthy, detail)
}

fn stopped_cause(cancel: &CancellationToken) -> Option<ReconnectCause> {
    (!cancel.is_cancelled()).then_some(ReconnectCause::GroupRestart)
}

/// `dataFeedURL` plus where to start: `offset = durable + 1` when the sink has anything,
/// else per `start`; and the optional `eventType` filter.
fn feed_url(config: &SourceConfig, resource: &StreamResource, durable: Option<u64>) -> url::Url {
    let mut url = resource.feed_url.clone();
    {
        let mut q = url.query_pairs_mut();
        match (durable, config.start) {
            (Some(d), _) => {
                q.append_pair("offset", &d.saturating_add(1).to_string());
            }
            (None, StartPosition::Latest) => {
                q.append_pair("whence", "2");
            }
            (None, StartPosition::Offset(n)) => {
                q.append_pair("offset", &n.to_string());
            }
            (None, StartPosition::Earliest) => {}
        }
        if !config.event_types.is_empty() {
            q.append_pair("eventType", &config.event_types.join(","));
        }
    }
    url
}

/// Refreshes the session at `refresh_fraction` of its interval, independently of the data
/// flow (quiet streams and a blocked sink included: reference §4 item 1).
async fn refresh_loop<S: EventSink>(
    inner: Arc<Inner<S>>,
    resource: StreamResource,
    pstats: Arc<PartitionStats>,
    session_dead: CancellationToken,
) {
    let period = resource
        .refresh_interval
        .mul_f64(inner.config.refresh_fraction)
        .max(Duration::from_millis(100));
    let retry = (period / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        match inner.api.refresh(&resource.refresh_url).await {
            Ok(()) => {
                pstats.refreshed(true);
                tracing::debug!(partition = resource.partition, "session refreshed");
                next = Instant::now() + period;
            }
            Err(ApiError::NotFound) => {
                pstats.refreshed(false);
                session_dead.cancel();
                return;
            }
            Err(error) => {
                pstats.refreshed(false);
                let wait = error.retry_after().unwrap_or(retry);
                tracing::warn!(partition = resource.partition, %error, "session refresh failed; retrying");
                next = Instant::now() + wait;
            }
        }
    }
}

/// Reads one feed connection.
struct Reader<S> {
    framer: LineFramer,
    frames: Vec<Frame>,
    batch: Vec<FalconEvent>,
    batch_bytes: usize,
    /// The batch being made durable while the next one fills.
    in_flight: Option<InFlight>,
    /// Newest offset accepted on this connection, starting at the durable offset. Anything
    /// at or below it is a replay.
    last_seen: Option<u64>,
    keepalives_reported: u64,
    partition: u32,
    pstats: Arc<PartitionStats>,
    inner: Arc<Inner<S>>,
    cancel: CancellationToken,
}

/// Ends a connection: the cause (`None` when cancelled) and a detail for the log.
type Stop = (Option<ReconnectCause>, String);

/// A sink write in flight, with what to record once it is durable.
struct InFlight {
    write: Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>,
    count: u64,
    bytes: u64,
    last: Option<u64>,
}

/// Waits for the write in `slot` (pending forever when there is none).
async fn settled(slot: &mut Option<InFlight>) -> Result<(), SinkError> {
    match slot.as_mut() {
        Some(in_flight) => in_flight.write.as_mut().await,
        None => std::future::pending().await,
    }
}

impl<S: EventSink> Reader<S> {
    async fn run(
        &mut self,
        resp: reqwest::Response,
        group: &CancellationToken,
        session_dead: &CancellationToken,
    ) -> (Option<ReconnectCause>, bool, String) {
        let mut body = resp.bytes_stream();
        let idle = self.inner.config.read_idle_timeout;
        let mut healthy = false;
        loop {
            let cancel = &self.cancel;
            let in_flight = &mut self.in_flight;
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return (None, healthy, String::new()),
                result = settled(in_flight) => {
                    // What filled up meanwhile is the next group commit.
                    if let Err(stop) = self.complete(result) {
                        return (stop.0, healthy, stop.1);
                    }
                    if let Err(stop) = self.flush().await {
                        return self.end_after_settling(stop.0, healthy, stop.1).await;
                    }
                    continue;
                }
                () = group.cancelled() => {
                    return self.end_after_settling(Some(ReconnectCause::GroupRestart), healthy, String::new()).await;
                }
                () = session_dead.cancelled() => {
                    return self.end_after_settling(Some(ReconnectCause::SessionExpired), healthy, "refresh answered 404".to_owned()).await;
                }
                r = tokio::time::timeout(idle, body.next()) => r,
            };
            let mut pending_end: Option<Stop> = match next {
                Err(_) => Some((
                    Some(ReconnectCause::IdleTimeout),
                    format!("no byte for {idle:?}"),
                )),
                Ok(None) => Some((
                    Some(ReconnectCause::Eof),
                    "server ended the stream".to_owned(),
                )),
                Ok(Some(Err(e))) => Some((Some(ReconnectCause::ReadError), e.to_string())),
                Ok(Some(Ok(chunk))) => {
                    healthy = true;
                    if let Err(stop) = self.ingest(&chunk).await {
                        return self.end_after_settling(stop.0, healthy, stop.1).await;
                    }
                    None
                }
            };
            // Take whatever else is ready right now into the same batch.
            while pending_end.is_none()
                && self.batch.len() < self.inner.config.max_batch_events
                && self.batch_bytes < BATCH_SOFT_BYTES
            {
                match body.next().now_or_never() {
                    None => break,
                    Some(None) => {
                        pending_end = Some((
                            Some(ReconnectCause::Eof),
                            "server ended the stream".to_owned(),
                        ));
                    }
                    Some(Some(Err(e))) => {
                        pending_end = Some((Some(ReconnectCause::ReadError), e.to_string()));
                    }
                    Some(Some(Ok(chunk))) => {
                        if let Err(stop) = self.ingest(&chunk).await {
                            return self.end_after_settling(stop.0, healthy, stop.1).await;
                        }
                    }
                }
            }
            // While a write is in flight the batch keeps filling (it is flushed when that
            // write settles, or here once full); events received before a failure are valid
            // and are written first.
            let batch_full = self.batch.len() >= self.inner.config.max_batch_events
                || self.batch_bytes >= BATCH_SOFT_BYTES;
            if (self.in_flight.is_none() || batch_full || pending_end.is_some())
                && let Err(stop) = self.flush().await
            {
                return self.end_after_settling(stop.0, healthy, stop.1).await;
            }
            self.report_keepalives();
            if let Some((cause, detail)) = pending_end {
                if self.framer.reset() > 0 {
                    self.pstats.truncated_line();
                }
                return self.end_after_settling(cause, healthy, detail).await;
            }
        }
    }

    fn report_keepalives(&mut self) {
        let total = self.framer.keepalives();
        self.pstats.add_keepalives(total - self.keepalives_reported);
        self.keepalives_reported = total;
    }

    async fn ingest(&mut self, chunk: &Bytes) -> Result<(), Stop> {
        let mut frames = std::mem::take(&mut self.frames);
        self.framer.push(chunk, &mut frames);
        let mut result = Ok(());
        for frame in frames.drain(..) {
            if let Err(stop) = self.handle(frame).await {
                result = Err(stop);
                break;
            }
        }
        frames.clear();
        self.frames = frames;
        result
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Stop> {
        match frame {
            Frame::Line(line) => match parse_line(self.partition, &line) {
                Ok(event) => {
                    if self.last_seen.is_some_and(|seen| event.offset <= seen) {
                        self.pstats.replay_dropped();
                        return Ok(());
                    }
                    self.last_seen = Some(event.offset);
                    self.pstats.seen(event.offset);
                    self.batch_bytes += event.raw.len();
                    self.batch.push(event);
                    if self.batch.len() >= self.inner.config.max_batch_events
                        || self.batch_bytes >= BATCH_SOFT_BYTES
                    {
                        self.flush().await?;
                    }
                    Ok(())
                }
                Err((reason, detail)) => {
                    let len = line.len();
                    self.dead_letter(
                        reason,
                        detail,
                        line.slice(..len.min(DEAD_LETTER_RAW_CAP)),
                        len,
                    )
                    .await
                }
            },
            Frame::Oversized { len, prefix } => {
                let detail = format!("line of {len} bytes exceeds max_event_bytes");
                self.dead_letter(DeadLetterReason::Oversized, detail, prefix, len)
                    .await
            }
        }
    }

    /// Bad input never stops the stream: the line goes to the sink's dead letters.
    async fn dead_letter(
        &mut self,
        reason: DeadLetterReason,
        detail: String,
        raw: Bytes,
        raw_len: usize,
    ) -> Result<(), Stop> {
        self.pstats.dead_letter(reason);
        tracing::warn!(partition = self.partition, after_offset = ?self.last_seen, %reason, raw_len, %detail, "dead-lettering a line");
        let letter = SourceDeadLetter {
            partition: self.partition,
            after_offset: self.last_seen,
            reason,
            detail,
            raw,
            raw_len,
        };
        let result = tokio::select! {
            () = self.cancel.cancelled() => return Err((None, String::new())),
            r = self.inner.sink.dead_letter(letter) => r,
        };
        result.map_err(|e| (Some(ReconnectCause::SinkError), e.to_string()))
    }

    /// Hands the batch to the sink, after the previous write became durable (that wait is
    /// the backpressure); does not wait for this write, so reading goes on meanwhile.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        let events = std::mem::take(&mut self.batch);
        let count = events.len() as u64;
        let bytes = self.batch_bytes as u64;
        self.batch_bytes = 0;
        let last = events.last().map(|e| e.offset);
        let inner = Arc::clone(&self.inner);
        let partition = self.partition;
        self.in_flight = Some(InFlight {
            write: Box::pin(async move { inner.sink.write(partition, events).await }),
            count,
            bytes,
            last,
        });
        Ok(())
    }

    /// Waits for the write in flight, if any. A cancelled source drops it (the sink
    /// guarantees all-or-nothing per batch); any other ending lets it finish, since the
    /// events are valid.
    async fn settle(&mut self) -> Result<(), Stop> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let cancel = &self.cancel;
        let result = tokio::select! {
            () = cancel.cancelled() => return Err((None, String::new())),
            result = settled(&mut self.in_flight) => result,
        };
        self.complete(result)
    }

    /// Records the outcome of the write in flight and clears it.
    fn complete(&mut self, result: Result<(), SinkError>) -> Result<(), Stop> {
        let Some(done) = self.in_flight.take() else {
            return Ok(());
        };
        match result {
            Ok(()) => {
                self.pstats.delivered(done.count, done.bytes);
                if let Some(last) = done.last {
                    self.pstats.durable(last);
                }
                Ok(())
            }
            Err(e) => Err((Some(ReconnectCause::SinkError), e.to_string())),
        }
    }

    /// Ends the connection once the write in flight settled.
    async fn end_after_settling(
        &mut self,
        cause: Option<ReconnectCause>,
        healthy: bool,
        detail: String,
    ) -> (Option<ReconnectCause>, bool, String) {
        match self.settle().await {
            Ok(()) => (cause, healthy, detail),
            Err(stop) => (stop.0, healthy, stop.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SinkError;
    use std::sync::Mutex;

    #[derive(Default)]
    struct VecSink {
        written: Mutex<Vec<(u32, Vec<u64>)>>,
    }

    impl EventSink for VecSink {
        async fn durable_offset(&self, _partition: u32) -> Result<Option<u64>, SinkError> {
            Ok(None)
        }
        async fn write(&self, partition: u32, events: Vec<FalconEvent>) -> Result<(), SinkError> {
            let offsets = events.iter().map(|e| e.offset).collect();
            self.written.lock().unwrap().push((partition, offsets));
            Ok(())
        }
        async fn dead_letter(&self, _letter: SourceDeadLetter) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn line(offset: u64) -> String {
        format!(
            "{{\"metadata\":{{\"offset\":{offset},\"eventType\":\"T\",\"customerIDString\":\"c\"}},\"event\":{{}}}}\n"
        )
    }

    async fn read(
        body: String,
        durable: Option<u64>,
        max_batch: usize,
    ) -> (
        Vec<(u32, Vec<u64>)>,
        crate::PartitionSnapshot,
        Option<ReconnectCause>,
    ) {
        let sink = Arc::new(VecSink::default());
        let mut config = SourceConfig::new(
            url::Url::parse("https://127.0.0.1:1/").unwrap(),
            "id",
            "secret",
            "app",
        );
        config.max_batch_events = max_batch;
        let app_id = config.validate().unwrap();
        let stats = Arc::new(SourceStats::default());
        let api = Api::new(
            reqwest::Client::new(),
            &config,
            app_id.clone(),
            Arc::clone(&stats),
        );
        let inner = Arc::new(Inner {
            api,
            sink: Arc::clone(&sink),
            config,
            app_id,
            stats: Arc::clone(&stats),
        });
        let pstats = stats.partition(4);
        let mut reader = Reader {
            framer: LineFramer::new(1 << 20, 1024),
            frames: Vec::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            in_flight: None,
            last_seen: durable,
            keepalives_reported: 0,
            partition: 4,
            pstats: Arc::clone(&pstats),
            inner,
            cancel: CancellationToken::new(),
        };
        let resp = reqwest::Response::from(http::Response::new(reqwest::Body::from(body)));
        let never = CancellationToken::new();
        let (cause, healthy, _) = reader.run(resp, &never, &never).await;
        assert!(healthy);
        let written = sink.written.lock().unwrap().clone();
        (written, pstats.snapshot(), cause)
    }

    #[tokio::test]
    async fn replays_are_dropped_and_offsets_never_move_backwards() {
        let body: String = [1, 2, 3, 2, 3, 4, 1, 5].iter().map(|o| line(*o)).collect();
        let (written, stats, cause) = read(body, None, 100).await;
        assert_eq!(cause, Some(ReconnectCause::Eof));
        let offsets: Vec<u64> = written.iter().flat_map(|(_, o)| o.clone()).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
        assert!(written.iter().all(|(p, _)| *p == 4));
        assert_eq!(stats.replays_dropped, 3);
        assert_eq!(stats.latest_offset_seen, Some(5));
        assert_eq!(stats.latest_durable_offset, Some(5));
    }

    #[tokio::test]
    async fn the_durable_offset_is_the_replay_baseline_and_batches_are_bounded() {
        let body: String = (1..=10).map(line).collect::<String>() + "\n{\"metadata\":{\"off";
        let (written, stats, _) = read(body, Some(3), 3).await;
        let sizes: Vec<usize> = written.iter().map(|(_, o)| o.len()).collect();
        assert!(sizes.iter().all(|n| *n <= 3), "{sizes:?}");
        let offsets: Vec<u64> = written.into_iter().flat_map(|(_, o)| o).collect();
        assert_eq!(offsets, (4..=10).collect::<Vec<_>>());
        assert_eq!(stats.replays_dropped, 3);
        assert_eq!(
            stats.truncated_lines, 1,
            "the cut last line is not an event"
        );
        assert_eq!(stats.keepalives, 1);
    }

    #[test]
    fn feed_url_resume_and_start_positions() {
        let mut config = SourceConfig::new(
            url::Url::parse("https://127.0.0.1:1/").unwrap(),
            "id",
            "secret",
            "app",
        );
        let resource = StreamResource {
            partition: 0,
            feed_url: url::Url::parse("https://h/sensors/entities/datafeed/v1/0?appId=app")
                .unwrap(),
            token: crate::api::SessionToken::for_tests("t"),
            refresh_url: url::Url::parse("https://h/r").unwrap(),
            refresh_interval: Duration::from_mins(30),
        };
        assert_eq!(
            feed_url(&config, &resource, Some(41)).query(),
            Some("appId=app&offset=42")
        );
        assert_eq!(
            feed_url(&config, &resource, None).query(),
            Some("appId=app")
        );
        config.start = StartPosition::Latest;
        config.event_types = vec!["A".into(), "B".into()];
        assert_eq!(
            feed_url(&config, &resource, None).query(),
            Some("appId=app&whence=2&eventType=A%2CB")
        );
        config.start = StartPosition::Offset(7);
        assert_eq!(
            feed_url(&config, &resource, None).query(),
            Some("appId=app&offset=7&eventType=A%2CB")
        );
        assert_eq!(
            feed_url(&config, &resource, Some(9)).query(),
            Some("appId=app&offset=10&eventType=A%2CB")
        );
    }
}
