//! Prometheus metrics and the health view, both read from the stages' own counters at
//! scrape time (no second set of counters to keep in step).
//!
//! Names are fixed here and nowhere else; labels have bounded cardinality (partition,
//! stream, cause, reason, status class), never record ids or URLs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bridge_buffer::{Buffer, Depth};
use falcon_stream::SourceStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sentinel_ingest::IngestClient;
use serde::Serialize;

use crate::pipeline::writer::WriterStats;

/// Reads the buffer's depth, capacity and records lost (Kafka retention) without knowing
/// its backend.
pub struct BufferGauge(Box<dyn Fn() -> (Depth, u64, u64) + Send + Sync>);

impl BufferGauge {
    /// A gauge over `buffer`.
    pub fn new<B: Buffer>(buffer: &Arc<B>) -> Self {
        let buffer = Arc::clone(buffer);
        Self(Box::new(move || {
            (
                buffer.depth(),
                buffer.capacity_bytes(),
                buffer.records_lost(),
            )
        }))
    }

    fn read(&self) -> (Depth, u64, u64) {
        (self.0)()
    }
}

impl fmt::Debug for BufferGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BufferGauge")
    }
}

/// Everything `/metrics`, `/ready` and the health records read.
#[derive(Debug)]
pub struct Metrics {
    source: Arc<SourceStats>,
    writer: Arc<WriterStats>,
    client: Arc<IngestClient>,
    buffer: BufferGauge,
}

/// One health record (stream `Custom-FalconBridgeHealth`, table `FalconBridgeHealth_CL`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthRecord {
    /// Now (RFC 3339).
    pub time_generated: String,
    /// Host (pod) name.
    pub instance: String,
    /// Bridge version.
    pub version: &'static str,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: &'static str,
    /// Why, when not healthy.
    pub reason: String,
    /// Partitions whose feed is open.
    pub connected_partitions: u64,
    /// Partition → newest durable Falcon offset.
    pub latest_offsets: BTreeMap<u32, u64>,
    /// Records not yet delivered.
    pub buffer_depth_records: u64,
    /// Bytes not yet delivered.
    pub buffer_depth_bytes: u64,
    /// Buffer cap.
    pub buffer_capacity_bytes: u64,
    /// Records delivered since start.
    pub delivered_records: u64,
    /// Records dead-lettered since start: stream lines the source could not parse plus
    /// records Azure refused.
    pub dead_letters: u64,
    /// Latest Logs Ingestion error, if any.
    pub last_error: String,
}

impl Metrics {
    /// The metrics of one running service.
    pub fn new(
        source: Arc<SourceStats>,
        writer: Arc<WriterStats>,
        client: Arc<IngestClient>,
        buffer: BufferGauge,
    ) -> Self {
        Self {
            source,
            writer,
            client,
            buffer,
        }
    }

    /// Reasons the writer cannot deliver (a 403/404 from the DCR), for `/ready`.
    pub fn writer_problems(&self) -> Vec<String> {
        let health = self.client.health();
        if health.healthy {
            return Vec::new();
        }
        health
            .streams
            .iter()
            .filter(|(_, s)| s.misconfigured)
            .map(|(stream, s)| {
                format!(
                    "logs ingestion refuses stream {stream} (status {}): {}",
                    s.last_status
                        .map_or_else(|| "none".to_owned(), |v| v.to_string()),
                    s.last_error.as_deref().unwrap_or("no detail")
                )
            })
            .collect()
    }

    /// The health record of this instance now.
    pub fn health_record(&self, instance: &str) -> HealthRecord {
        let source = self.source.snapshot();
        let (depth, capacity, lost) = self.buffer.read();
        let health = self.client.health();
        let connected = source.partitions.values().filter(|p| p.connected).count() as u64;
        let (status, reason) = if lost > 0 {
            (
                "unhealthy",
                format!(
                    "{lost} records were deleted from the Kafka topic by retention before \
                     delivery; raise the topic's retention"
                ),
            )
        } else if !health.healthy {
            ("unhealthy", self.writer_problems().join("; "))
        } else if connected == 0 {
            ("unhealthy", "no Falcon partition connected".to_owned())
        } else if capacity > 0 && depth.bytes.saturating_mul(10) > capacity.saturating_mul(8) {
            ("degraded", "buffer above 80% of capacity".to_owned())
        } else {
            ("healthy", String::new())
        };
        HealthRecord {
            time_generated: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            instance: instance.to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            status,
            reason,
            connected_partitions: connected,
            latest_offsets: source
                .partitions
                .iter()
                .filter_map(|(p, s)| Some((*p, s.latest_durable_offset?)))
                .collect(),
            buffer_depth_records: depth.records,
            buffer_depth_bytes: depth.bytes,
            buffer_capacity_bytes: capacity,
            delivered_records: self.writer.delivered.load(Ordering::Relaxed),
            dead_letters: self.writer.dead_lettered.load(Ordering::Relaxed)
                + source
                    .partitions
                    .values()
                    .map(falcon_stream::PartitionSnapshot::total_dead_letters)
                    .sum::<u64>(),
            last_error: health.last_error.unwrap_or_default(),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("fsb");
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Metrics {
    // One flat list of every metric reads better than helpers split by stage.
    #[allow(clippy::too_many_lines)]
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let source = self.source.snapshot();
        let partition = |p: &u32| vec![("partition", p.to_string())];
        let mut events = Vec::new();
        let mut bytes = Vec::new();
        let mut seen = Vec::new();
        let mut durable = Vec::new();
        let mut connected = Vec::new();
        let mut reconnects = Vec::new();
        let mut refreshes = Vec::new();
        let mut replays = Vec::new();
        let mut dead_by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (p, s) in &source.partitions {
            events.push((partition(p), s.events));
            bytes.push((partition(p), s.bytes));
            if let Some(offset) = s.latest_offset_seen {
                seen.push((partition(p), as_gauge(offset)));
            }
            if let Some(offset) = s.latest_durable_offset {
                durable.push((partition(p), as_gauge(offset)));
            }
            connected.push((partition(p), i64::from(s.connected)));
            for (cause, n) in &s.reconnects {
                reconnects.push((
                    vec![
                        ("partition", p.to_string()),
                        ("cause", cause.as_str().to_owned()),
                    ],
                    *n,
                ));
            }
            refreshes.push((partition(p), s.refreshes));
            replays.push((partition(p), s.replays_dropped));
            for (reason, n) in &s.dead_letters {
                *dead_by_reason.entry(reason.as_str()).or_default() += n;
            }
        }
        let dead: Vec<(Labels, u64)> = dead_by_reason
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect();
        counter(
            &mut encoder,
            "source_events",
            "Falcon events made durable in the buffer.",
            &events,
        )?;
        counter(
            &mut encoder,
            "source_bytes",
            "Bytes of Falcon event lines made durable.",
            &bytes,
        )?;
        gauge(
            &mut encoder,
            "source_offset_seen",
            "Newest Falcon offset received.",
            &seen,
        )?;
        gauge(
            &mut encoder,
            "source_offset_durable",
            "Newest Falcon offset durable in the buffer.",
            &durable,
        )?;
        gauge(
            &mut encoder,
            "source_connected",
            "1 while the partition's feed is open.",
            &connected,
        )?;
        counter(
            &mut encoder,
            "source_reconnects",
            "Feed reconnects by cause.",
            &reconnects,
        )?;
        counter(
            &mut encoder,
            "source_refreshes",
            "Successful session refreshes.",
            &refreshes,
        )?;
        counter(
            &mut encoder,
            "source_replays_dropped",
            "Events dropped as replays (offset not above the last seen).",
            &replays,
        )?;
        counter(
            &mut encoder,
            "source_dead_letters",
            "Stream lines dead-lettered by reason.",
            &dead,
        )?;
        counter(
            &mut encoder,
            "source_token_requests",
            "Falcon OAuth2 token requests.",
            &[(vec![], source.token_requests)],
        )?;
        counter(
            &mut encoder,
            "source_discovers_empty",
            "Discovers with no stream (appId held elsewhere?).",
            &[(vec![], source.discovers_empty)],
        )?;

        let (depth, capacity, lost) = self.buffer.read();
        counter(
            &mut encoder,
            "buffer_records_lost",
            "Records the buffer's storage deleted before delivery (Kafka retention); must stay 0.",
            &[(vec![], lost)],
        )?;
        gauge(
            &mut encoder,
            "buffer_depth_records",
            "Records not yet acknowledged.",
            &[(vec![], as_gauge(depth.records))],
        )?;
        gauge(
            &mut encoder,
            "buffer_depth_bytes",
            "Bytes not yet acknowledged.",
            &[(vec![], as_gauge(depth.bytes))],
        )?;
        gauge(
            &mut encoder,
            "buffer_capacity_bytes",
            "Buffer cap; appends wait above it.",
            &[(vec![], as_gauge(capacity))],
        )?;

        let delivered: Vec<(Labels, u64)> = self
            .writer
            .delivered_per_stream()
            .into_iter()
            .map(|(stream, n)| (vec![("stream", stream)], n))
            .collect();
        counter(
            &mut encoder,
            "writer_records_delivered",
            "Records accepted by the Logs Ingestion API.",
            &delivered,
        )?;
        counter(
            &mut encoder,
            "writer_dead_letters",
            "Records Azure refused, dead-lettered.",
            &[(vec![], self.writer.dead_lettered.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "writer_acked",
            "Buffer positions acknowledged.",
            &[(vec![], self.writer.acked.load(Ordering::Relaxed))],
        )?;
        let stats = self.client.stats();
        let class = |c: &str, n: u64| (vec![("status_class", c.to_owned())], n);
        counter(
            &mut encoder,
            "writer_requests",
            "Logs Ingestion requests by status class (`error`: no response).",
            &[
                class("2xx", stats.requests_2xx),
                class("3xx", stats.requests_3xx),
                class("4xx", stats.requests_4xx),
                class("5xx", stats.requests_5xx),
                class("error", stats.requests_failed),
            ],
        )?;
        let retries: Vec<(Labels, u64)> = stats
            .retries
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.as_str().to_owned())], *n))
            .collect();
        counter(
            &mut encoder,
            "writer_retries",
            "Retries by reason.",
            &retries,
        )?;
        counter(
            &mut encoder,
            "writer_bytes_sent",
            "Request body bytes (`wire`: gzip; `uncompressed`: JSON).",
            &[
                (vec![("kind", "wire".to_owned())], stats.bytes_sent_wire),
                (
                    vec![("kind", "uncompressed".to_owned())],
                    stats.bytes_sent_uncompressed,
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "writer_splits",
            "Batches split after a 413.",
            &[(vec![], stats.splits)],
        )?;
        counter(
            &mut encoder,
            "writer_bisects",
            "Batches bisected after a 400.",
            &[(vec![], stats.bisects)],
        )?;
        let healthy = self.client.health().healthy;
        gauge(
            &mut encoder,
            "writer_healthy",
            "0 while the DCR refuses us (403/404).",
            &[(vec![], i64::from(healthy))],
        )?;
        Ok(())
    }
}
