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
use bridge_buffer::{Buffer, DiskBuffer, DiskBufferConfig};
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
    let (dead_letter_dir, max_record_bytes) = crate::wiring::dead_letter_dir(&cfg);
    let dead_letters = Arc::new(
        DeadLetterWriter::open(dead_letter_dir, max_record_bytes)
            .context("open the dead-letter directory")?,
    );
    let buffer = match &cfg.buffer {
        BufferConfig::Disk(disk) => {
            let mut buffer_config = DiskBufferConfig::new(disk.path.clone());
            buffer_config.max_bytes = disk.max_bytes;
            // Opening recovers the file (redb repairs after a crash): blocking work.
            let buffer = tokio::task::spawn_blocking(move || DiskBuffer::open(buffer_config))
                .await
                .context("open the disk buffer")?
                .context("open the disk buffer")?;
            Arc::new(buffer)
        }
        BufferConfig::Kafka(_) => anyhow::bail!(
            "buffer.type kafka is not implemented in this version; use buffer.type disk"
        ),
    };
    run_with_buffer(
        cfg,
        env,
        shutdown,
        on_start,
        buffer,
        dead_letters,
        extra_ca_pems,
    )
    .await
}

#[allow(clippy::too_many_lines)]
async fn run_with_buffer<B: Buffer>(
    cfg: Config,
    env: &(dyn Env + Sync),
    shutdown: CancellationToken,
    on_start: impl FnOnce(ServiceHandles) + Send,
    buffer: Arc<B>,
    dead_letters: Arc<DeadLetterWriter>,
    extra_ca_pems: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::default());
    readiness.set_buffer_open();

    let client = Arc::new(
        IngestClient::new(
            crate::wiring::ingest_config(&cfg, &extra_ca_pems),
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
            crate::wiring::source_config(&cfg, env, &extra_ca_pems)?,
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
    let admin_listener = admin::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("bind the admin listener on {}", cfg.admin.listen))?;
    info!(admin = %cfg.admin.listen, "admin listener bound");

    let admin_cancel = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&readiness),
        Arc::clone(&metrics),
        admin_cancel.clone(),
    ));

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
    admin_cancel.cancel();
    let _ = admin_task.await;
    info!("falcon-sentinel-bridge stopped");
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
