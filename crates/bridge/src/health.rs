//! Health records written into Sentinel itself (table `FalconBridgeHealth_CL`), one per
//! instance per interval, so the shipped workbook and alert rules can show and page on the
//! bridge's state where the security team already looks: status, connected partitions,
//! latest offsets, buffer depth against capacity, deliveries and dead letters.
//!
//! A health record is best effort: it is sent once with a deadline and never buffered, so a
//! broken health stream can never hold up event delivery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sentinel_ingest::{EncodedRecord, IngestClient};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::Metrics;

/// How long one health record may take before it is given up.
const SEND_DEADLINE: Duration = Duration::from_secs(30);

/// Starts the health reporter, or a task that does nothing when health records are off.
pub fn spawn(
    cfg: &Config,
    client: Arc<IngestClient>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    if !cfg.health.enabled {
        return tokio::spawn(async {});
    }
    let stream = cfg.health.stream.clone();
    let interval = cfg.health.interval;
    let instance = instance_name();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let record = metrics.health_record(&instance);
            let json = match serde_json::to_vec(&record) {
                Ok(json) => Bytes::from(json),
                Err(error) => {
                    warn!(%error, "could not encode the health record");
                    continue;
                }
            };
            let delivery = client.deliver(&stream, vec![EncodedRecord { id: 0, json }], &shutdown);
            match tokio::time::timeout(SEND_DEADLINE, delivery).await {
                Ok(Ok(report)) if report.delivered == 1 => debug!(stream, "health record sent"),
                Ok(Ok(report)) => warn!(stream, ?report, "health record refused"),
                Ok(Err(_)) => return,
                Err(_) => warn!(stream, "health record not sent within the deadline"),
            }
        }
    })
}

/// The pod name in Kubernetes (the host name), else "unknown".
fn instance_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_str()
        .map_or_else(|_| "unknown".to_owned(), str::to_owned)
}
