//! The draining stage: buffer → Logs Ingestion API.
//!
//! Guarantee: a buffer position is acknowledged only after the record at that position was
//! accepted by Azure (204) or written, fsynced, to the dead-letter destination. The buffer
//! commits only the contiguous prefix of acknowledged positions, so deliveries may finish
//! in any order under concurrency without an ack ever implying an earlier record.
//!
//! Memory is bounded whatever the backlog: at most `max_concurrency` chunks of about
//! `chunk_bytes` are in flight, plus one chunk being batched and a two-slot channel from the
//! reader. When every slot is busy the stage stops reading, and the buffer fills instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bridge_buffer::{Buffer, Entry, Position, Record};
use bytes::Bytes;
use sentinel_ingest::{DeliverError, EncodedRecord, IngestClient, RecordMeta, encode_record};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::dead_letter::{DeadLetter, DeadLetterWriter, Stage};
use crate::pipeline::router::StreamRouter;

/// Limits of the draining stage.
#[derive(Debug, Clone)]
pub struct WriterLimits {
    /// Deliveries in flight at once.
    pub max_concurrency: usize,
    /// Raw bytes per delivery chunk (the client splits it into request bodies).
    pub chunk_bytes: usize,
    /// Longest a record waits for its chunk to fill before it is sent anyway.
    pub linger: Duration,
}

/// Counters of the draining stage, read by the metrics endpoint and the demo.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records accepted by Azure.
    pub delivered: AtomicU64,
    /// Records dead-lettered by this stage.
    pub dead_lettered: AtomicU64,
    /// Positions acknowledged to the buffer.
    pub acked: AtomicU64,
    /// Newest `created_at_ms` of a delivered record (for lag).
    pub newest_delivered_created_ms: AtomicU64,
    per_stream: std::sync::Mutex<HashMap<String, u64>>,
}

impl WriterStats {
    /// Delivered records per stream.
    pub fn delivered_per_stream(&self) -> HashMap<String, u64> {
        self.per_stream
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn add_delivered(&self, stream: &str, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut map) = self.per_stream.lock() {
            *map.entry(stream.to_owned()).or_default() += n;
        }
    }
}

/// The draining stage.
#[derive(Debug)]
pub struct Writer<B> {
    pub(crate) buffer: Arc<B>,
    pub(crate) client: Arc<IngestClient>,
    pub(crate) router: StreamRouter,
    pub(crate) dead_letters: Arc<DeadLetterWriter>,
    pub(crate) limits: WriterLimits,
    pub(crate) stats: Arc<WriterStats>,
}

/// Entries of one stream waiting to be sent.
#[derive(Default)]
struct Pending {
    entries: Vec<Entry>,
    bytes: usize,
    since: Option<Instant>,
}

impl<B: Buffer> Writer<B> {
    /// Drains until `stop` fires, then finishes the deliveries in flight. `abort` cancels
    /// them (their positions stay unacknowledged and are delivered again on the next start).
    pub async fn run(
        self,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(2);
        let reader_stop = stop.child_token();
        let reader = tokio::spawn(read_loop(
            Arc::clone(&this.buffer),
            tx,
            this.limits.chunk_bytes,
            reader_stop.clone(),
        ));
        let permits = Arc::new(Semaphore::new(this.limits.max_concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut reader_done = false;
        let mut failure: Option<anyhow::Error> = None;

        while !reader_done || pending.values().any(|p| !p.entries.is_empty()) {
            let deadline = pending
                .values()
                .filter_map(|p| p.since)
                .min()
                .map(|since| since + this.limits.linger);
            tokio::select! {
                received = rx.recv(), if !reader_done => match received {
                    Some(entries) => {
                        for entry in entries {
                            let stream = this.router.route(&entry.record.event_type).to_owned();
                            let slot = pending.entry(stream).or_default();
                            slot.bytes += entry.record.payload.len();
                            slot.since.get_or_insert_with(Instant::now);
                            slot.entries.push(entry);
                        }
                    }
                    None => reader_done = true,
                },
                () = sleep_until_opt(deadline) => {}
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(error) = check_join(joined) {
                        abort.cancel();
                        failure.get_or_insert(error);
                    }
                    continue;
                }
            }
            let now = Instant::now();
            let streams: Vec<String> = pending.keys().cloned().collect();
            for stream in streams {
                let Some(slot) = pending.get_mut(&stream) else {
                    continue;
                };
                let full = slot.bytes >= this.limits.chunk_bytes;
                let expired = slot.since.is_some_and(|s| now >= s + this.limits.linger);
                if slot.entries.is_empty() || !(full || expired || reader_done) {
                    continue;
                }
                let entries = std::mem::take(&mut slot.entries);
                slot.bytes = 0;
                slot.since = None;
                // Waiting for a permit is the backpressure: no new chunk until one finishes.
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => permit?,
                    () = abort.cancelled() => break,
                };
                let this = Arc::clone(&this);
                let abort = abort.clone();
                in_flight.spawn(async move {
                    let _permit = permit;
                    this.deliver_chunk(&stream, entries, &abort).await
                });
            }
            if abort.is_cancelled() {
                break;
            }
        }
        while let Some(joined) = in_flight.join_next().await {
            if let Err(error) = check_join(joined) {
                failure.get_or_insert(error);
            }
        }
        reader_stop.cancel();
        drop(rx);
        let read_result = match reader.await {
            Ok(result) => result,
            Err(join_error) => Err(anyhow::anyhow!("buffer reader task failed: {join_error}")),
        };
        match failure {
            Some(error) => Err(error),
            None => read_result,
        }
    }

    /// Encodes, delivers, dead-letters what Azure refuses, then acknowledges every position.
    async fn deliver_chunk(
        &self,
        stream: &str,
        entries: Vec<Entry>,
        abort: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut scratch = Vec::new();
        let records = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| encode(&entry.record, index as u64, &mut scratch))
            .collect();
        let report = match self.client.deliver(stream, records, abort).await {
            Ok(report) => report,
            Err(DeliverError::Cancelled) => {
                debug!(
                    stream,
                    records = entries.len(),
                    "delivery cancelled; positions stay unacknowledged"
                );
                return Ok(());
            }
        };
        if !report.dead_letters.is_empty() {
            let letters: Vec<DeadLetter> = report
                .dead_letters
                .iter()
                .filter_map(|rejected| {
                    let entry = entries.get(usize::try_from(rejected.id).ok()?)?;
                    let mut letter =
                        sentinel_letter(entry, stream, self.dead_letters.max_record_bytes());
                    reject_reason(rejected.reason).clone_into(&mut letter.reason);
                    letter.status = rejected.status;
                    letter.error_code.clone_from(&rejected.error_code);
                    letter.message.clone_from(&rejected.message);
                    Some(letter)
                })
                .collect();
            let count = letters.len() as u64;
            error!(
                stream,
                count, "azure refused records; they go to the dead-letter destination"
            );
            // Durable before the ack below: "delivered or dead-lettered" survives a crash.
            self.dead_letters.write(letters).await?;
            self.stats.dead_lettered.fetch_add(count, Ordering::Relaxed);
        }
        let delivered = report.delivered;
        self.stats.add_delivered(stream, delivered);
        if let Some(newest) = entries.iter().map(|e| e.record.created_at_ms).max() {
            self.stats
                .newest_delivered_created_ms
                .fetch_max(newest, Ordering::Relaxed);
        }
        let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
        self.buffer.ack(&positions).await?;
        self.stats
            .acked
            .fetch_add(positions.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// One buffer record as a Logs Ingestion record (`id` is the caller's handle). The one place
/// the record shape and its deterministic `EventId` are put together.
pub(crate) fn encode(record: &Record, id: u64, scratch: &mut Vec<u8>) -> EncodedRecord {
    let event_id = record.event_id();
    scratch.clear();
    encode_record(
        &RecordMeta {
            time_generated_ms: record.created_at_ms,
            event_id: &event_id,
            event_type: &record.event_type,
            customer_id: &record.customer_id,
            partition: record.partition,
            offset: record.offset,
        },
        &record.payload,
        scratch,
    );
    EncodedRecord {
        id,
        json: Bytes::copy_from_slice(scratch),
    }
}

/// A dead letter carrying everything needed to redrive the record later.
pub(crate) fn sentinel_letter(entry: &Entry, stream: &str, cap: usize) -> DeadLetter {
    let record = &entry.record;
    let mut letter = DeadLetter::new(Stage::Sentinel, "azure_rejected", record.partition);
    letter.offset = Some(record.offset);
    letter.event_type = Some(record.event_type.clone());
    letter.customer_id = Some(record.customer_id.clone());
    letter.created_at_ms = Some(record.created_at_ms);
    letter.stream = Some(stream.to_owned());
    letter.set_raw(&record.payload, cap);
    letter
}

async fn read_loop<B: Buffer>(
    buffer: Arc<B>,
    tx: mpsc::Sender<Vec<Entry>>,
    chunk_bytes: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        // Dropping a pending read at shutdown is safe: what it would have returned is not
        // acknowledged, so it is read again after the restart.
        let entries = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            read = buffer.read(4096, chunk_bytes) => read?,
        };
        if entries.is_empty() {
            continue;
        }
        if tx.send(entries).await.is_err() {
            return Ok(());
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A delivery that failed other than by cancellation (dead-letter disk, buffer ack) stops
/// the stage: its positions can never be acknowledged in this run, so the process must
/// restart and read them again rather than stall behind them.
fn check_join(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(join_error) => Err(anyhow::anyhow!("delivery task failed: {join_error}")),
    }
}

/// The dead-letter `reason` for a record the client handed back.
pub(crate) fn reject_reason(reason: sentinel_ingest::RejectReason) -> &'static str {
    match reason {
        sentinel_ingest::RejectReason::RecordTooLarge => "record_too_large",
        sentinel_ingest::RejectReason::Rejected => "azure_rejected",
    }
}
