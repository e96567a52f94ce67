//! `dead-letter redrive`: resend the records Azure refused, once the operator fixed the
//! cause (a column type in the DCR, a missing stream, RBAC).
//!
//! Directory: each dead-letter file is processed whole: its `sentinel` letters are delivered again
//! (routed by the current config); letters Azure refuses again, and `source` letters (lines
//! that never were events, kept for the record), are written to a new file by the same
//! writer as the service uses; only then does the original move to `redriven/`. A crash
//! in between may resend a record (same `EventId`), never lose one.
//!
//! Kafka topic: see [`redrive_kafka`].

use std::sync::Arc;

use anyhow::Context as _;
use bridge_buffer::Record;
use bytes::Bytes;
use sentinel_ingest::{DeliverError, IngestClient};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Env};
use bridge_buffer::kafka::TopicReader;

use crate::dead_letter::{self, DeadLetter, DeadLetterWriter, Stage};
use crate::pipeline::router::StreamRouter;
use crate::pipeline::writer::encode;
use crate::wiring::KafkaDeadLetters;

/// Counts of one redrive run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Letters Azure accepted this time.
    pub delivered: u64,
    /// Letters Azure refused again (written to the destination anew).
    pub refused: usize,
    /// Letters not resent: `source` letters, truncated ones, unreadable messages.
    pub kept: usize,
}

/// Redrives the configured dead-letter destination and prints the counts.
pub async fn run(
    cfg: &Config,
    env: &(dyn Env + Sync),
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(Summary {
        delivered,
        refused,
        kept,
    }) = redrive(cfg, env, shutdown).await?
    else {
        return Ok(());
    };
    crate::output::stdout(&format!(
        "redrive: {delivered} delivered, {refused} refused again, {kept} letters kept (not resent)"
    ));
    Ok(())
}

/// Redrives the configured dead-letter destination; `None` when there was nothing to do
/// (said on stdout).
pub async fn redrive(
    cfg: &Config,
    env: &(dyn Env + Sync),
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Summary>> {
    let summary = if let Some((dir, max_record_bytes)) = crate::wiring::dead_letter_dir(cfg) {
        let files = dead_letter::letter_files(dir)?;
        if files.is_empty() {
            crate::output::stdout(&format!("no dead letters in {}", dir.display()));
            return Ok(None);
        }
        let (client, router) = ingest(cfg, env)?;
        let writer = Arc::new(DeadLetterWriter::open(dir, max_record_bytes)?);
        redrive_directory(&client, &router, &writer, dir, files, shutdown).await?
    } else {
        let Some(kafka) = crate::wiring::dead_letter_kafka(cfg, env)? else {
            anyhow::bail!("no dead-letter destination configured");
        };
        let (client, router) = ingest(cfg, env)?;
        redrive_kafka(&client, &router, &kafka, shutdown).await?
    };
    Ok(Some(summary))
}

fn ingest(cfg: &Config, env: &(dyn Env + Sync)) -> anyhow::Result<(IngestClient, StreamRouter)> {
    let extra_ca_pems = crate::pipeline::read_extra_cas(cfg)?;
    let client = IngestClient::new(
        crate::wiring::ingest_config(cfg, &extra_ca_pems),
        crate::wiring::credential(cfg, env)?,
    )
    .context("build the Logs Ingestion client")?;
    Ok((client, crate::wiring::router(cfg)))
}

async fn redrive_directory(
    client: &IngestClient,
    router: &StreamRouter,
    writer: &Arc<DeadLetterWriter>,
    dir: &std::path::Path,
    files: Vec<std::path::PathBuf>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Summary> {
    let done_dir = dir.join("redriven");
    std::fs::create_dir_all(&done_dir).with_context(|| format!("create {}", done_dir.display()))?;
    let mut summary = Summary::default();
    for file in files {
        let letters = dead_letter::read_letters(&file)?;
        let (resend, keep): (Vec<DeadLetter>, Vec<DeadLetter>) =
            letters.into_iter().partition(redrivable);
        if resend.is_empty() {
            continue;
        }
        let outcome = redrive_letters(client, router, resend, shutdown).await?;
        summary.delivered += outcome.delivered;
        summary.refused += outcome.refused.len();
        summary.kept += keep.len();
        let mut rewrite = keep;
        rewrite.extend(outcome.refused);
        writer.write(rewrite).await?;
        let target = done_dir.join(file.file_name().unwrap_or_default());
        std::fs::rename(&file, &target)
            .with_context(|| format!("move {} to {}", file.display(), target.display()))?;
        info!(file = %file.display(), "dead-letter file redriven");
    }
    Ok(summary)
}

/// A `sentinel` letter with its raw bytes complete.
fn redrivable(letter: &DeadLetter) -> bool {
    letter.stage == Stage::Sentinel && letter.complete_raw().is_some()
}

/// Redrives the dead-letter topic from the redrive group's committed offsets to the high
/// watermarks taken at start, one batch at a time: resends its `sentinel` letters, produces
/// the ones Azure refuses again to the topic anew (above those watermarks, so one run never
/// sees them twice), and only then commits the group's offsets past the batch. A crash in
/// between resends the batch (same `EventId`s), never loses a letter.
///
/// Letters that are not resent (`source` letters, which never were events; truncated ones;
/// messages that are not letters) stay in the topic, are counted as kept, and are committed
/// past: `list` and `redrive` are about letters still pending for Azure. Read the topic
/// from its start with any consumer to see them again.
pub async fn redrive_kafka(
    client: &IngestClient,
    router: &StreamRouter,
    kafka: &KafkaDeadLetters,
    shutdown: &CancellationToken,
) -> anyhow::Result<Summary> {
    let topic = &kafka.topic;
    let mut reader = TopicReader::connect(&kafka.connection, topic, &kafka.redrive_group)
        .await
        .with_context(|| format!("read kafka topic {topic}"))?;
    let writer = Arc::new(DeadLetterWriter::kafka(kafka.clone()));
    if reader.remaining() == 0 {
        return Ok(Summary::default());
    }
    writer.connect().await?;
    let mut summary = Summary::default();
    loop {
        if shutdown.is_cancelled() {
            anyhow::bail!("redrive interrupted; letters not yet committed are redriven next time");
        }
        let batch = reader
            .next_batch(dead_letter::KAFKA_BATCH)
            .await
            .with_context(|| format!("read kafka topic {topic}"))?;
        if batch.is_empty() {
            break;
        }
        let mut resend = Vec::new();
        for message in &batch {
            match dead_letter::parse_message(message) {
                Some(letter) if redrivable(&letter) => resend.push(letter),
                _ => summary.kept += 1,
            }
        }
        if !resend.is_empty() {
            let outcome = redrive_letters(client, router, resend, shutdown).await?;
            summary.delivered += outcome.delivered;
            summary.refused += outcome.refused.len();
            writer.write(outcome.refused).await?;
        }
        reader
            .commit()
            .await
            .with_context(|| format!("commit the redrive group's offsets on {topic}"))?;
        info!(topic = %topic, letters = batch.len(), "dead-letter batch redriven");
    }
    Ok(summary)
}

struct Outcome {
    delivered: u64,
    refused: Vec<DeadLetter>,
}

async fn redrive_letters(
    client: &IngestClient,
    router: &StreamRouter,
    letters: Vec<DeadLetter>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let mut by_stream = std::collections::BTreeMap::<String, Vec<DeadLetter>>::new();
    for letter in letters {
        let stream = router
            .route(letter.event_type.as_deref().unwrap_or_default())
            .to_owned();
        by_stream.entry(stream).or_default().push(letter);
    }
    let mut outcome = Outcome {
        delivered: 0,
        refused: Vec::new(),
    };
    for (stream, letters) in by_stream {
        let mut scratch = Vec::new();
        let records = letters
            .iter()
            .enumerate()
            .map(|(index, letter)| {
                let record = Record {
                    partition: letter.partition,
                    offset: letter.offset.unwrap_or_default(),
                    event_type: letter.event_type.clone().unwrap_or_default(),
                    customer_id: letter.customer_id.clone().unwrap_or_default(),
                    created_at_ms: letter.created_at_ms.unwrap_or_default(),
                    payload: Bytes::from(letter.complete_raw().unwrap_or_default()),
                };
                encode(&record, index as u64, &mut scratch)
            })
            .collect();
        let report = match client.deliver(&stream, records, shutdown).await {
            Ok(report) => report,
            Err(DeliverError::Cancelled) => {
                anyhow::bail!("redrive interrupted; files not yet moved are untouched")
            }
        };
        outcome.delivered += report.delivered;
        for rejected in report.dead_letters {
            let Some(original) = usize::try_from(rejected.id)
                .ok()
                .and_then(|i| letters.get(i))
            else {
                continue;
            };
            let reason = crate::pipeline::writer::reject_reason(rejected.reason);
            warn!(stream, reason, "record refused again");
            let mut letter = original.clone();
            reason.clone_into(&mut letter.reason);
            letter.status = rejected.status;
            letter.error_code = rejected.error_code;
            letter.message = rejected.message;
            outcome.refused.push(letter);
        }
    }
    Ok(outcome)
}
