//! The running service: builds the three stages from a validated config, wires them, and
//! shuts them down in order.
//!
//! Shutdown order (SIGTERM/SIGINT): readiness goes off; the Falcon source stops reading
//! (nothing it already handed over is lost: the buffer has it); the writer stops reading the
//! buffer and finishes its deliveries within the grace period, acknowledging what Azure
//! accepted; what is still in flight at the deadline stays unacknowledged and is delivered
//! after the restart; the buffer closes; the admin listener stops last.

pub mod router;
pub mod sink;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bridge_buffer::kafka::KafkaBuffer;
use bridge_buffer::{Buffer, BufferError, DiskBuffer, DiskBufferConfig};
use falcon_stream::{FalconSource, SourceStats};
use sentinel_ingest::IngestClient;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Readiness};
use crate::config::{BufferConfig, Config, Env};
use crate::dead_letter::DeadLetterWriter;
use crate::metrics::Metrics;
use crate::pipeline::sink::BufferSink;
use crate::pipeline::writer::{Writer, WriterLimits, WriterStats};

/// Handles to a running service, for the demo and tests in-process.
#[derive(Debug, Clone)]
pub struct ServiceHandles {
    /// Counters of the draining stage.
    pub writer: Arc<WriterStats>,
    /// Counters of the Falcon source.
    pub source: Arc<SourceStats>,
    /// Dead letters written by this process.
    pub dead_letters: Arc<DeadLetterWriter>,
}

/// Runs the service until `shutdown` fires. `on_start` receives handles once everything is
/// built (the demo uses them for its progress bar).
pub async fn run(
    cfg: Config,
    env: &(dyn Env + Sync),
    shutdown: CancellationToken,
    on_start: impl FnOnce(ServiceHandles) + Send,
) -> anyhow::Result<()> {
    let extra_ca_pems = read_extra_cas(&cfg)?;
    let dead_letters =
        DeadLetterWriter::from_config(&cfg, env).context("open the dead-letter destination")?;
    // The admin listener comes first: `/live` answers while the buffer is still opening
    // (a Kafka cluster can be unreachable for a long time), so Kubernetes does not restart
    // a process that is only waiting.
    let admin_listener = admin::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("bind the admin listener on {}", cfg.admin.listen))?;
    // The bound address: with port 0 in the config, the port the system chose.
    let bound = admin_listener.local_addr().unwrap_or(cfg.admin.listen);
    info!(admin = %bound, "admin listener bound");
    let admin = Admin {
        readiness: Arc::new(Readiness::default()),
        metrics: admin::MetricsSlot::default(),
        cancel: CancellationToken::new(),
    };
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&admin.readiness),
        Arc::clone(&admin.metrics),
        admin.cancel.clone(),
    ));
    let stages = Stages {
        env,
        shutdown,
        dead_letters,
        extra_ca_pems,
        admin: admin.clone(),
    };
    let result = match &cfg.buffer {
        BufferConfig::Disk(disk) => run_on_disk(&cfg, disk, &stages, on_start).await,
        BufferConfig::Kafka(kafka) => {
            let kafka_config = crate::wiring::kafka_buffer_config(kafka, &cfg, env)?;
            run_on_kafka(&cfg, &kafka_config, &stages, on_start).await
        }
    };
    admin.cancel.cancel();
    let _ = admin_task.await;
    info!("falcon-sentinel-bridge stopped");
    result
}

/// The admin listener's shared state.
#[derive(Clone)]
struct Admin {
    readiness: Arc<Readiness>,
    metrics: admin::MetricsSlot,
    cancel: CancellationToken,
}

/// Opens the disk buffer and runs the stages on it. When the buffer fails while running (a
/// full or failing disk: redb refuses further writes after a failed commit), the stages
/// stop in order and the buffer is reopened, with backoff, in this process: an outage of
/// the disk costs delay, and a supervisor never sees a crash loop. Opening retries on I/O
/// errors (e.g. still no space) the same way; a corrupt file is an error at once.
async fn run_on_disk(
    cfg: &Config,
    disk: &crate::config::DiskBufferConfig,
    stages: &Stages<'_>,
    on_start: impl FnOnce(ServiceHandles) + Send,
) -> anyhow::Result<()> {
    let mut on_start = Some(on_start);
    let mut wait = Duration::from_secs(1);
    loop {
        let mut buffer_config = DiskBufferConfig::new(disk.path.clone());
        buffer_config.max_bytes = disk.max_bytes;
        // Opening recovers the file (redb repairs after a crash): blocking work.
        let opened = tokio::task::spawn_blocking(move || DiskBuffer::open(buffer_config))
            .await
            .context("open the disk buffer")?;
        let failure = match opened {
            Ok(buffer) => {
                wait = Duration::from_secs(1);
                let start = |handles| {
                    if let Some(f) = on_start.take() {
                        f(handles);
                    }
                };
                match run_with_buffer(cfg.clone(), stages, start, Arc::new(buffer)).await {
                    Err(error) if buffer_failed(&error) => error,
                    other => return other,
                }
            }
            Err(error) if error.is_transient() => {
                anyhow::Error::new(error).context("open the disk buffer")
            }
            Err(error) => return Err(error).context("open the disk buffer"),
        };
        error!(
            error = format!("{failure:#}"),
            retry_in_secs = wait.as_secs(),
            path = %disk.path.display(),
            "the disk buffer failed; reopening it (nothing acknowledged is lost: what was not durable was never acknowledged)"
        );
        stages
            .admin
            .readiness
            .restarting(format!("disk buffer failed, reopening: {failure:#}"));
        // The metrics hold a handle on the old buffer (its gauge): drop it, or the file
        // stays locked and the reopen fails with "already open".
        admin::clear_metrics(&stages.admin.metrics);
        tokio::select! {
            () = stages.shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(REOPEN_MAX_WAIT);
    }
}

/// Connects the Kafka buffer and runs the stages on it; when the buffer fails for good
/// (a fatal producer error: idempotence or the gapless guarantee broken), the stages stop
/// in order and the buffer is connected again in this process, recovering its resume
/// offsets from what Kafka holds.
async fn run_on_kafka(
    cfg: &Config,
    kafka_config: &bridge_buffer::kafka::KafkaBufferConfig,
    stages: &Stages<'_>,
    on_start: impl FnOnce(ServiceHandles) + Send,
) -> anyhow::Result<()> {
    let mut on_start = Some(on_start);
    let readiness = &stages.admin.readiness;
    loop {
        let Some(buffer) = connect_kafka(kafka_config.clone(), readiness, &stages.shutdown).await
        else {
            return Ok(());
        };
        let start = |handles| {
            if let Some(f) = on_start.take() {
                f(handles);
            }
        };
        match run_with_buffer(cfg.clone(), stages, start, Arc::new(buffer)).await {
            Err(error) if buffer_failed(&error) && !stages.shutdown.is_cancelled() => {
                error!(
                    error = format!("{error:#}"),
                    "the Kafka buffer failed; connecting again"
                );
                readiness.restarting(format!("kafka buffer failed, reconnecting: {error:#}"));
                admin::clear_metrics(&stages.admin.metrics);
            }
            other => return other,
        }
    }
}

/// Whether a stage failed because the buffer did, in a way reopening may cure.
fn buffer_failed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<BufferError>()
            .is_some_and(BufferError::is_transient)
    })
}

/// What every stage needs besides the buffer.
struct Stages<'a> {
    env: &'a (dyn Env + Sync),
    shutdown: CancellationToken,
    dead_letters: Arc<DeadLetterWriter>,
    extra_ca_pems: Vec<Vec<u8>>,
    admin: Admin,
}

/// Connects the Kafka buffer, retrying with capped exponential backoff while the cluster is
/// unreachable (a broker outage at startup costs delay, not a crash loop); `None` when
/// shutdown was requested first.
async fn connect_kafka(
    config: bridge_buffer::kafka::KafkaBufferConfig,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Option<KafkaBuffer> {
    let mut wait = Duration::from_secs(1);
    for attempt in 1u64.. {
        match KafkaBuffer::connect(config.clone()).await {
            Ok(buffer) => {
                readiness.set_buffer_open();
                return Some(buffer);
            }
            Err(error) => {
                error!(
                    %error,
                    attempt,
                    retry_in_secs = wait.as_secs(),
                    brokers = %config.brokers.join(","),
                    topic = %config.topic,
                    "cannot open the Kafka buffer; retrying"
                );
                readiness.set_buffer_problem(format!("kafka: {error} (attempt {attempt})"));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(REOPEN_MAX_WAIT);
    }
    None
}

/// The longest wait between two attempts to open (or reopen) the buffer.
const REOPEN_MAX_WAIT: Duration = Duration::from_secs(30);

#[allow(clippy::too_many_lines)]
async fn run_with_buffer<B: Buffer>(
    cfg: Config,
    stages: &Stages<'_>,
    on_start: impl FnOnce(ServiceHandles) + Send,
    buffer: Arc<B>,
) -> anyhow::Result<()> {
    let Stages {
        env,
        shutdown,
        dead_letters,
        extra_ca_pems,
        admin,
    } = stages;
    let env = *env;
    let shutdown = shutdown.clone();
    let dead_letters = Arc::clone(dead_letters);
    let readiness = Arc::clone(&admin.readiness);
    readiness.set_buffer_open();

    let client = Arc::new(
        IngestClient::new(
            crate::wiring::ingest_config(&cfg, extra_ca_pems),
            crate::wiring::credential(&cfg, env)?,
        )
        .context("build the Logs Ingestion client")?,
    );
    let router = crate::wiring::router(&cfg);
    let writer_stats = Arc::new(WriterStats::default());
    let writer = Writer {
        buffer: Arc::clone(&buffer),
        client: Arc::clone(&client),
        router,
        dead_letters: Arc::clone(&dead_letters),
        limits: WriterLimits {
            max_concurrency: cfg.sentinel.max_concurrency,
            chunk_bytes: crate::wiring::writer_chunk_bytes(&cfg),
            linger: cfg.sentinel.batch_linger,
        },
        stats: Arc::clone(&writer_stats),
    };

    let sink = Arc::new(BufferSink::new(
        Arc::clone(&buffer),
        Arc::clone(&dead_letters),
    ));
    let source = Arc::new(
        FalconSource::new(
            crate::wiring::source_config(&cfg, env, extra_ca_pems)?,
            sink,
        )
        .context("build the Falcon source")?,
    );
    let source_stats = source.stats();

    let metrics = Arc::new(Metrics::new(
        Arc::clone(&source_stats),
        Arc::clone(&writer_stats),
        Arc::clone(&client),
        crate::metrics::BufferGauge::new(&buffer),
    ));
    admin::set_metrics(&admin.metrics, Arc::clone(&metrics));

    let source_cancel = CancellationToken::new();
    let writer_stop = CancellationToken::new();
    let writer_abort = CancellationToken::new();
    let mut source_task = {
        let source = Arc::clone(&source);
        let cancel = source_cancel.clone();
        tokio::spawn(async move { source.run(cancel).await })
    };
    let mut writer_task = tokio::spawn(writer.run(writer_stop.clone(), writer_abort.clone()));
    let health_task = crate::health::spawn(
        &cfg,
        Arc::clone(&client),
        Arc::clone(&metrics),
        shutdown.clone(),
    );
    readiness.set_source_running();
    on_start(ServiceHandles {
        writer: Arc::clone(&writer_stats),
        source: Arc::clone(&source_stats),
        dead_letters: Arc::clone(&dead_letters),
    });
    info!("falcon-sentinel-bridge running");

    // Run until a signal, or until a stage fails (then shut the rest down the same way).
    let mut failure: Option<anyhow::Error> = None;
    tokio::select! {
        () = shutdown.cancelled() => info!("shutdown requested"),
        result = &mut source_task => {
            failure = Some(stage_failure("falcon source", result.map(|r| r.map_err(anyhow::Error::from))));
        }
        result = &mut writer_task => {
            failure = Some(stage_failure("sentinel writer", result));
        }
    }
    readiness.set_shutting_down();
    let grace = cfg.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;

    source_cancel.cancel();
    if !source_task.is_finished() {
        match tokio::time::timeout_at(deadline, &mut source_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "falcon source ended with an error"),
            Ok(Err(error)) => warn!(%error, "falcon source task failed"),
            Err(_) => {
                warn!("falcon source did not stop within the grace period");
                source_task.abort();
            }
        }
    }
    writer_stop.cancel();
    if !writer_task.is_finished() {
        if let Ok(result) = tokio::time::timeout_at(deadline, &mut writer_task).await {
            if let Err(error) = result.map_err(anyhow::Error::from).and_then(|r| r) {
                error!(%error, "sentinel writer ended with an error");
            }
            info!("writer drained: in-flight deliveries finished and were acknowledged");
        } else {
            warn!(
                grace_secs = grace.as_secs(),
                "writer did not drain within the grace period; unacknowledged records will be delivered after the restart"
            );
            writer_abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer_task).await;
        }
    }
    health_task.abort();
    if let Err(error) = buffer.close().await {
        error!(%error, "closing the buffer failed");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn stage_failure(
    stage: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Error {
    match result {
        Ok(Ok(())) => anyhow::anyhow!("{stage} stopped unexpectedly"),
        Ok(Err(error)) => error.context(format!("{stage} failed")),
        Err(join_error) => anyhow::anyhow!("{stage} task failed: {join_error}"),
    }
}

/// The PEM bytes of every `tls.extra_ca_files` entry.
pub(crate) fn read_extra_cas(cfg: &Config) -> anyhow::Result<Vec<Vec<u8>>> {
    cfg.tls
        .extra_ca_files
        .iter()
        .map(|path| std::fs::read(path).with_context(|| format!("read CA file {}", path.display())))
        .collect()
}
