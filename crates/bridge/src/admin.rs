//! The admin listener: `/live`, `/ready` and `/metrics`, never on a data port.
//!
//! `/live` answers 200 while the process can serve HTTP at all. `/ready` answers 200 only
//! while every readiness condition holds (buffer open, source running, Azure accepting our
//! credentials for the DCR); otherwise 503 with the reasons, so Kubernetes and operators see
//! *why*. A 403/404 from the Logs Ingestion API (RBAC not propagated, wrong DCR or stream)
//! turns readiness off until deliveries succeed again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Conditions that must all hold for `/ready` to answer 200.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Why the buffer is not open yet (e.g. Kafka unreachable at startup), if known.
    buffer_problem: Mutex<Option<String>>,
    buffer_open: AtomicBool,
    source_running: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// The buffer was opened and recovered.
    pub fn set_buffer_open(&self) {
        *self
            .buffer_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.buffer_open.store(true, Ordering::Release);
    }
    /// The stages stopped because the buffer failed; it is being reopened: not ready until
    /// the stages run again, and `/ready` tells why.
    pub fn restarting(&self, problem: String) {
        self.buffer_open.store(false, Ordering::Release);
        self.source_running.store(false, Ordering::Release);
        self.shutting_down.store(false, Ordering::Release);
        self.set_buffer_problem(problem);
    }
    /// Opening the buffer failed for now (retried): `/ready` tells why.
    pub fn set_buffer_problem(&self, problem: String) {
        *self
            .buffer_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(problem);
    }
    /// The source task started.
    pub fn set_source_running(&self) {
        self.source_running.store(true, Ordering::Release);
    }
    /// Shutdown began: `/ready` goes 503 first, before anything stops.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Reasons the bridge is not ready, empty when it is.
    fn not_ready_reasons(&self, metrics: Option<&Metrics>) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            reasons.push("shutting down".to_owned());
        }
        if !self.buffer_open.load(Ordering::Acquire) {
            let problem = self
                .buffer_problem
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            reasons.push(match problem {
                Some(p) => format!("buffer not open yet: {p}"),
                None => "buffer not open yet".to_owned(),
            });
        }
        if !self.source_running.load(Ordering::Acquire) {
            reasons.push("falcon source not started yet".to_owned());
        }
        if let Some(metrics) = metrics {
            reasons.extend(metrics.writer_problems());
        }
        reasons
    }
}

/// The metrics, set when the stages exist (again after the buffer was reopened): the admin
/// listener serves `/live` and `/ready` from the start, while the buffer may still be opening.
pub type MetricsSlot = Arc<RwLock<Option<Arc<Metrics>>>>;

/// Sets (or replaces) the metrics the admin endpoints serve.
pub fn set_metrics(slot: &MetricsSlot, metrics: Arc<Metrics>) {
    *slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(metrics);
}

/// Drops the metrics the admin endpoints serve (their gauges hold the buffer).
pub fn clear_metrics(slot: &MetricsSlot) {
    *slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

fn current_metrics(slot: &MetricsSlot) -> Option<Arc<Metrics>> {
    slot.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

#[derive(Clone, Debug)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: MetricsSlot,
}

/// Binds the admin listener; fails early (at startup) if the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: MetricsSlot,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let metrics = current_metrics(&state.metrics);
    let reasons = state.readiness.not_ready_reasons(metrics.as_deref());
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        current_metrics(&state.metrics).map_or_else(|| "# EOF\n".to_owned(), |m| m.render()),
    )
}
