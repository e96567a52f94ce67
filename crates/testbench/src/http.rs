//! The HTTPS listener, the path router and small response helpers shared by the emulators.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Inner;
use crate::faults::{Action, Target};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;
pub(crate) type Resp = Response<Body>;

/// Returned by a handler to make hyper drop the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub(crate) struct ResetConnection;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub(crate) fn set_header(resp: &mut Resp, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Why a bounded body read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// More than the limit arrived; carries the bytes counted (at least limit + 1).
    TooLarge(usize),
    /// The connection failed while reading.
    Io,
}

/// Read at most `limit` bytes of body. Beyond the limit, up to `drain` more bytes are read
/// and discarded so the client receives the error response instead of a reset connection
/// (closing a socket with unread data makes the kernel send RST).
pub(crate) async fn read_bounded_draining(
    mut body: Incoming,
    limit: usize,
    drain: usize,
) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ReadError::Io);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > limit.saturating_add(drain) {
            return Err(ReadError::TooLarge(seen));
        }
    }
    if seen > limit {
        Err(ReadError::TooLarge(seen))
    } else {
        Ok(buf.freeze())
    }
}

/// Read at most `limit` bytes of body.
pub(crate) async fn read_bounded(body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    read_bounded_draining(body, limit, 0).await
}

/// Query parameters in order, percent-decoded.
pub(crate) fn query(req_uri: &http::Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req_uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn header_str(req: &http::request::Parts, name: header::HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn now_epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn trace_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Accept TLS connections until `cancel` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let inner = inner.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| route(inner.clone(), req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

enum Route {
    FalconToken,
    Discover,
    Feed(String),
    Refresh(String),
    Entra(String),
    ManagedIdentity,
    Ingestion(String, String),
    Ledger,
    Faults,
    FalconStats,
    NotFound,
}

fn classify(method: &Method, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::POST, ["oauth2", "token"]) => Route::FalconToken,
        (&Method::GET, ["sensors", "entities", "datafeed", "v2"]) => Route::Discover,
        (&Method::GET, ["sensors", "entities", "datafeed", "v1", p]) => {
            Route::Feed((*p).to_owned())
        }
        (&Method::POST, ["sensors", "entities", "datafeed-actions", "v1", p]) => {
            Route::Refresh((*p).to_owned())
        }
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => Route::Entra((*tenant).to_owned()),
        (&Method::GET, ["msi", "token"]) => Route::ManagedIdentity,
        (&Method::POST, ["dataCollectionRules", dcr, "streams", stream]) => {
            Route::Ingestion((*dcr).to_owned(), (*stream).to_owned())
        }
        (&Method::GET, ["_testbench", "received"]) => Route::Ledger,
        (&Method::POST | &Method::DELETE, ["_testbench", "faults"]) => Route::Faults,
        (&Method::GET, ["_testbench", "falcon", "stats"]) => Route::FalconStats,
        _ => Route::NotFound,
    }
}

fn target_of(route: &Route) -> Option<Target> {
    Some(match route {
        Route::FalconToken => Target::FalconToken,
        Route::Discover => Target::FalconDiscover,
        Route::Feed(_) => Target::FalconFeed,
        Route::Refresh(_) => Target::FalconRefresh,
        Route::Entra(_) | Route::ManagedIdentity => Target::Entra,
        Route::Ingestion(..) => Target::Ingestion,
        _ => return None,
    })
}

async fn route(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Resp, BoxError> {
    let route = classify(req.method(), req.uri().path());
    if let Some(target) = target_of(&route) {
        let (latency, action) = inner.faults.take(target);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match action {
            Some(Action::Reset) => {
                if target == Target::Ingestion {
                    inner.ingestion.note_reset(&req);
                }
                return Err(Box::new(ResetConnection));
            }
            Some(Action::Status {
                status,
                retry_after_secs,
            }) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Ok(match target {
                    Target::Ingestion => {
                        inner
                            .ingestion
                            .fault_response(&req, status, retry_after_secs)
                    }
                    Target::Entra => crate::entra::fault_response(status, retry_after_secs),
                    _ => inner.falcon.fault_response(status, retry_after_secs),
                });
            }
            None => {}
        }
    }
    Ok(match route {
        Route::FalconToken => crate::falcon::token(&inner, req).await,
        Route::Discover => crate::falcon::discover(&inner, &req),
        Route::Feed(p) => crate::falcon::feed(&inner, &req, &p),
        Route::Refresh(p) => crate::falcon::refresh(&inner, &req, &p),
        Route::Entra(tenant) => inner.entra.token(&tenant, req).await,
        Route::ManagedIdentity => inner.entra.managed_identity(&req),
        Route::Ingestion(dcr, stream) => inner.ingestion.handle(&inner, &dcr, &stream, req).await,
        Route::Ledger => json(
            StatusCode::OK,
            &serde_json::to_value(inner.ingestion.ledger()).unwrap_or_default(),
        ),
        Route::FalconStats => json(
            StatusCode::OK,
            &serde_json::to_value(inner.falcon.stats()).unwrap_or_default(),
        ),
        Route::Faults => faults_endpoint(&inner, req).await,
        Route::NotFound => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"code": "NotFound", "message": "no such endpoint"}}),
        ),
    })
}

async fn faults_endpoint(inner: &Inner, req: Request<Incoming>) -> Resp {
    if req.method() == Method::DELETE {
        inner.faults.clear();
        return empty(StatusCode::NO_CONTENT);
    }
    let Ok(body) = read_bounded(req.into_body(), 1 << 20).await else {
        return json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": "body too large"}),
        );
    };
    match serde_json::from_slice::<crate::Fault>(&body) {
        Ok(fault) => {
            inner.faults.inject(fault);
            empty(StatusCode::NO_CONTENT)
        }
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}
