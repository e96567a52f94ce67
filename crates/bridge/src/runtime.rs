//! The tokio runtime, signal handling and the `run` / `dead-letter redrive` entry points.

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, ProcessEnv};
use crate::telemetry;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fsb-worker")
        .build()?)
}

/// Cancels the returned token on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received; shutting down");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process still stops on SIGKILL; Ctrl-C may still work.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `run`: the service until a signal.
pub fn block_on_service(cfg: Config) -> anyhow::Result<()> {
    telemetry::init(&cfg.log.level, cfg.log.format);
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        crate::pipeline::run(cfg, &ProcessEnv, shutdown, |_| {}).await
    })
}

/// `dead-letter redrive`: resend what Azure refused, after the operator fixed the cause.
pub fn block_on_redrive(cfg: Config) -> anyhow::Result<()> {
    telemetry::init(&cfg.log.level, cfg.log.format);
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        crate::redrive::run(&cfg, &ProcessEnv, &shutdown).await
    })
}
