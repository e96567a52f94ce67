//! `dead-letter redrive`: resend the records Azure refused, once the operator fixed the
//! cause (a column type in the DCR, a missing stream, RBAC).
//!
//! Each dead-letter file is processed whole: its `sentinel` letters are delivered again
//! (routed by the current config); letters Azure refuses again, and `source` letters (lines
//! that never were events, kept for the record), are written to a new file by the same
//! writer as the service uses; only then does the original move to `redriven/`. A crash
//! in between may resend a record (same `EventId`), never lose one.

use std::sync::Arc;

use anyhow::Context as _;
use bridge_buffer::Record;
use bytes::Bytes;
use sentinel_ingest::{DeliverError, IngestClient};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Env};
use crate::dead_letter::{self, DeadLetter, DeadLetterWriter, Stage};
use crate::pipeline::router::StreamRouter;
use crate::pipeline::writer::encode;

/// Redrives every file in the dead-letter directory.
pub async fn run(
    cfg: &Config,
    env: &(dyn Env + Sync),
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (dir, max_record_bytes) = crate::wiring::dead_letter_dir(cfg);
    let files = dead_letter::letter_files(dir)?;
    if files.is_empty() {
        crate::output::stdout(&format!("no dead letters in {}", dir.display()));
        return Ok(());
    }
    let extra_ca_pems = crate::pipeline::read_extra_cas(cfg)?;
    let client = IngestClient::new(
        crate::wiring::ingest_config(cfg, &extra_ca_pems),
        crate::wiring::credential(cfg, env)?,
    )
    .context("build the Logs Ingestion client")?;
    let router = crate::wiring::router(cfg);
    let writer = Arc::new(DeadLetterWriter::open(dir, max_record_bytes)?);
    let done_dir = dir.join("redriven");
    std::fs::create_dir_all(&done_dir).with_context(|| format!("create {}", done_dir.display()))?;

    let (mut delivered, mut refused, mut kept) = (0_u64, 0_usize, 0_usize);
    for file in files {
        let letters = dead_letter::read_letters(&file)?;
        let (resend, keep): (Vec<DeadLetter>, Vec<DeadLetter>) = letters
            .into_iter()
            .partition(|l| l.stage == Stage::Sentinel && l.complete_raw().is_some());
        if resend.is_empty() {
            continue;
        }
        let outcome = redrive_letters(&client, &router, resend, shutdown).await?;
        delivered += outcome.delivered;
        refused += outcome.refused.len();
        kept += keep.len();
        let mut rewrite = keep;
        rewrite.extend(outcome.refused);
        writer.write(rewrite).await?;
        let target = done_dir.join(file.file_name().unwrap_or_default());
        std::fs::rename(&file, &target)
            .with_context(|| format!("move {} to {}", file.display(), target.display()))?;
        info!(file = %file.display(), "dead-letter file redriven");
    }
    crate::output::stdout(&format!(
        "redrive: {delivered} delivered, {refused} refused again, {kept} source letters kept"
    ));
    Ok(())
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
