//! The **Event Hubs Kafka endpoint** emulator: a front that speaks SASL_SSL the way Event
//! Hubs does and then pipes bytes to a real, plaintext, unauthenticated Kafka-protocol broker
//! (tansu in the tests).
//!
//! Per connection: TLS with the testbench's certificate (no ALPN: librdkafka sends none), a
//! plain TCP connection to the upstream broker, then Kafka's pre-authentication exchange
//! answered here exactly as a broker's `SaslServerAuthenticator` would:
//!
//! * `ApiVersions` (18) is forwarded upstream and its answer relayed, with `SaslHandshake`
//!   (17) and `SaslAuthenticate` (36) advertised at versions 0..1 (what this front speaks,
//!   whatever the upstream broker says about itself);
//! * `SaslHandshake` v1 selects `PLAIN` (user `$ConnectionString`, password the namespace's
//!   connection string) or `OAUTHBEARER` (an Entra ID access token for the namespace's
//!   audience, checked with [`EntraEmulator`](crate::EntraEmulator));
//! * `SaslAuthenticate` v0/v1 carries the credential; a failure is answered with
//!   `SASL_AUTHENTICATION_FAILED` (58) and the connection is closed;
//! * any other request before authentication closes the connection, as Kafka does
//!   ("Unexpected Kafka request of type … during SASL handshake").
//!
//! After a successful authentication the front is a transparent byte pipe. A connection
//! authenticated by a token is closed once the token expires (Event Hubs does that; no
//! KIP-368 re-authentication is offered: `session_lifetime_ms` is 0).
//!
//! Choices where the record is silent, each on the strict side:
//! * `SaslHandshake` v0 (raw SASL tokens without `SaslAuthenticate` framing, pre-Kafka-1.0
//!   clients) is not supported: it is answered with `UNSUPPORTED_VERSION` (35) and closed.
//!   librdkafka ≥ 1.0 and the Java client use v1.
//! * `SaslAuthenticate` v2 (flexible) is not advertised and closes the connection.
//! * Requests before authentication are capped at 512 KiB (Kafka's
//!   `sasl.server.max.receive.size` default) and the whole exchange at 10 s.
//! * `authorized_clients` stands in for Event Hubs' data-plane RBAC role check; an
//!   unauthorized principal fails authentication.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Inner;
use crate::entra::TokenProblem;

/// The SASL PLAIN user name Event Hubs expects with a connection string as password.
pub const CONNECTION_STRING_USER: &str = "$ConnectionString";

/// Kafka's `sasl.server.max.receive.size` default: the largest request before authentication.
const MAX_PREAUTH_FRAME: usize = 524_288;
/// The largest upstream `ApiVersions` response relayed (a few hundred bytes in practice).
const MAX_UPSTREAM_FRAME: usize = 1 << 20;
/// TLS handshake, upstream connect and the SASL exchange must all finish within this.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How often a token-authenticated connection checks whether its token expired.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

const API_SASL_HANDSHAKE: i16 = 17;
const API_API_VERSIONS: i16 = 18;
const API_SASL_AUTHENTICATE: i16 = 36;

const ERR_NONE: i16 = 0;
const ERR_UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ERR_UNSUPPORTED_VERSION: i16 = 35;
const ERR_SASL_AUTHENTICATION_FAILED: i16 = 58;

const PLAIN: &str = "PLAIN";
const OAUTHBEARER: &str = "OAUTHBEARER";

/// What the front accepts and where it forwards authenticated connections.
#[derive(Clone)]
pub struct KafkaFrontConfig {
    /// The plaintext Kafka-protocol broker behind the front. Connected per client
    /// connection, so it may start listening after the front is bound.
    pub upstream: SocketAddr,
    /// Enables `PLAIN`: the password `$ConnectionString` must present.
    pub connection_string: Option<String>,
    /// Enables `OAUTHBEARER`: the audience tokens must carry, e.g.
    /// `https://ns.servicebus.windows.net` (a trailing `/` is ignored, as Entra drops it).
    pub oauth_audience: Option<String>,
    /// Client ids allowed to authenticate by token; empty means any client with a valid token.
    pub authorized_clients: Vec<String>,
}

impl std::fmt::Debug for KafkaFrontConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaFrontConfig")
            .field("upstream", &self.upstream)
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "<redacted>"),
            )
            .field("oauth_audience", &self.oauth_audience)
            .field("authorized_clients", &self.authorized_clients)
            .finish()
    }
}

/// Why a `SaslAuthenticate` (or the `SaslHandshake` before it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthFailure {
    /// The handshake named a mechanism that is not enabled.
    UnsupportedMechanism,
    /// The SASL message could not be parsed (PLAIN fields, RFC 7628 client first message).
    Malformed,
    /// PLAIN with a wrong user, authorization id or connection string.
    BadCredentials,
    /// OAUTHBEARER with a token the Entra emulator never issued.
    UnknownToken,
    /// OAUTHBEARER with an expired token.
    ExpiredToken,
    /// OAUTHBEARER with a token for another audience.
    WrongAudience,
    /// OAUTHBEARER with a valid token of a client not in `authorized_clients`.
    UnauthorizedClient,
}

/// Counters of a [`KafkaFront`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaFrontStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Connections currently open (any stage).
    pub open_connections: u64,
    /// TLS handshakes that failed (plaintext clients, untrusted CA, …).
    pub tls_failures: u64,
    /// Client connections closed because the upstream broker could not be reached (or
    /// failed while relaying ApiVersions).
    pub upstream_connect_failures: u64,
    /// Successful `SaslAuthenticate` exchanges (each opened a pipe).
    pub authentications_succeeded: u64,
    /// Refused authentications by reason.
    pub authentication_failures: BTreeMap<AuthFailure, u64>,
    /// Connections closed before authentication for a protocol reason: a request other than
    /// ApiVersions/SASL, an unsupported SASL version, a malformed or oversized frame, or the
    /// handshake deadline.
    pub rejected_before_authentication: u64,
    /// Authenticated connections closed because their token expired.
    pub closed_token_expired: u64,
    /// Connections closed by [`KafkaFront::drop_all_connections`].
    pub closed_by_fault: u64,
}

impl KafkaFrontStats {
    /// All refused authentications.
    pub fn authentication_failures_total(&self) -> u64 {
        self.authentication_failures.values().sum()
    }

    /// Refused authentications of one reason.
    pub fn authentication_failures_of(&self, reason: AuthFailure) -> u64 {
        self.authentication_failures
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }
}

/// A running Event Hubs Kafka-endpoint front; see the module docs.
#[derive(Debug, Clone)]
pub struct KafkaFront {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl KafkaFront {
    /// The bound address, `127.0.0.1:PORT` (`bootstrap.servers`; advertise it upstream).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> KafkaFrontStats {
        self.shared.stats().clone()
    }

    /// Fault: close every open connection now (clients see the broker connection drop).
    pub fn drop_all_connections(&self) {
        let mut generation = lock(&self.shared.generation);
        generation.cancel();
        *generation = self.shared.cancel.child_token();
    }
}

struct Shared {
    config: KafkaFrontConfig,
    inner: Arc<Inner>,
    stats: Mutex<KafkaFrontStats>,
    /// Parent of the connections' tokens; replaced by `drop_all_connections`.
    generation: Mutex<CancellationToken>,
    /// The testbench's shutdown.
    cancel: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, KafkaFrontStats> {
        lock(&self.stats)
    }

    fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = Vec::with_capacity(2);
        if self.config.connection_string.is_some() {
            m.push(PLAIN);
        }
        if self.config.oauth_audience.is_some() {
            m.push(OAUTHBEARER);
        }
        m
    }
}

/// Binds `127.0.0.1:0` and serves until the testbench shuts down.
pub(crate) async fn start(
    mut config: KafkaFrontConfig,
    inner: Arc<Inner>,
    tls: Arc<rustls::ServerConfig>,
    tracker: &TaskTracker,
) -> anyhow::Result<KafkaFront> {
    anyhow::ensure!(
        config.connection_string.is_some() || config.oauth_audience.is_some(),
        "the Kafka front needs connection_string (PLAIN) or oauth_audience (OAUTHBEARER)"
    );
    if let Some(a) = config.oauth_audience.as_mut() {
        let trimmed = a.trim_end_matches('/').len();
        a.truncate(trimmed);
    }
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let cancel = inner.cancel.child_token();
    let shared = Arc::new(Shared {
        config,
        inner,
        stats: Mutex::default(),
        generation: Mutex::new(cancel.child_token()),
        cancel,
    });
    tracing::info!(%addr, upstream = %shared.config.upstream, mechanisms = ?shared.mechanisms(), "Kafka front listening");
    tracker.spawn(serve(
        listener,
        TlsAcceptor::from(tls),
        shared.clone(),
        tracker.clone(),
    ));
    Ok(KafkaFront { addr, shared })
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "Kafka front accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut s = shared.stats();
            s.connections_accepted += 1;
            s.open_connections += 1;
        }
        let cancel = lock(&shared.generation).child_token();
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            connection(&shared, &acceptor, tcp, peer, &cancel).await;
            shared.stats().open_connections -= 1;
        });
    }
}

/// Why a connection was closed before it became a pipe.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("cannot connect to the upstream broker: {0}")]
    Upstream(std::io::Error),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the pre-authentication limit")]
    FrameTooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("Unexpected Kafka request of type {api_key} (v{api_version}) during SASL handshake")]
    Unexpected { api_key: i16, api_version: i16 },
    #[error("unsupported version {api_version} of request type {api_key}")]
    UnsupportedVersion { api_key: i16, api_version: i16 },
    #[error("authentication failed ({reason:?}): {message}")]
    Auth {
        reason: AuthFailure,
        message: String,
    },
}

/// How a connection authenticated.
enum Authenticated {
    Plain,
    Token(String),
}

async fn connection(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: &CancellationToken,
) {
    tracing::debug!(%peer, "Kafka front: connection accepted");
    let _ = tcp.set_nodelay(true);
    let setup = tokio::time::timeout(HANDSHAKE_DEADLINE, authenticate(shared, acceptor, tcp));
    let outcome = tokio::select! {
        () = cancel.cancelled() => {
            if !shared.cancel.is_cancelled() {
                shared.stats().closed_by_fault += 1;
            }
            return;
        }
        r = setup => r,
    };
    let (mut tls, mut upstream, auth) = match outcome {
        Ok(Ok(ok)) => ok,
        Ok(Err(rejected)) => {
            record_rejection(shared, peer, &rejected);
            return;
        }
        Err(_elapsed) => {
            tracing::warn!(%peer, "Kafka front: SASL handshake deadline passed, closing");
            shared.stats().rejected_before_authentication += 1;
            return;
        }
    };
    shared.stats().authentications_succeeded += 1;
    let expiry = token_expired(shared, &auth);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => {
            match r {
                Ok((up, down)) => tracing::debug!(%peer, up, down, "Kafka front: connection ended"),
                Err(e) => tracing::debug!(%peer, error = %e, "Kafka front: connection failed"),
            }
        }
        () = cancel.cancelled() => {
            if !shared.cancel.is_cancelled() {
                tracing::debug!(%peer, "Kafka front: connection dropped by fault");
                shared.stats().closed_by_fault += 1;
            }
        }
        () = expiry => {
            tracing::warn!(%peer, "Kafka front: the connection's token expired, closing");
            shared.stats().closed_token_expired += 1;
        }
    }
    // Best effort close_notify; the TCP close follows when both streams drop.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

fn record_rejection(shared: &Shared, peer: SocketAddr, rejected: &Rejected) {
    let mut s = shared.stats();
    match rejected {
        Rejected::Tls(_) => s.tls_failures += 1,
        Rejected::Upstream(_) => s.upstream_connect_failures += 1,
        // The client went away: nothing to blame on the protocol.
        Rejected::Io(_) => {
            drop(s);
            tracing::debug!(%peer, %rejected, "Kafka front: connection closed before authentication");
            return;
        }
        Rejected::FrameTooLarge(_)
        | Rejected::Malformed(_)
        | Rejected::Unexpected { .. }
        | Rejected::UnsupportedVersion { .. } => s.rejected_before_authentication += 1,
        Rejected::Auth { reason, .. } => {
            *s.authentication_failures.entry(*reason).or_default() += 1;
        }
    }
    drop(s);
    tracing::warn!(%peer, %rejected, "Kafka front: closing connection");
}

/// Resolves once the connection's token is expired (or forgotten); never for PLAIN.
async fn token_expired(shared: &Shared, auth: &Authenticated) {
    let Authenticated::Token(token) = auth else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(EXPIRY_CHECK).await;
        if shared.inner.entra.validate(token).is_err() {
            return;
        }
    }
}

/// TLS, upstream connect, and the pre-authentication exchange.
async fn authenticate(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<(TlsStream<TcpStream>, TcpStream, Authenticated), Rejected> {
    let mut tls = acceptor.accept(tcp).await.map_err(Rejected::Tls)?;
    tracing::debug!("Kafka front: TLS established");
    let mut upstream = TcpStream::connect(shared.config.upstream)
        .await
        .map_err(Rejected::Upstream)?;
    let _ = upstream.set_nodelay(true);
    let mut mechanism: Option<&'static str> = None;
    loop {
        let frame = read_frame(&mut tls, MAX_PREAUTH_FRAME).await?;
        let mut r = Reader::new(&frame);
        let header = RequestHeader::parse(&mut r)?;
        tracing::debug!(
            api_key = header.api_key,
            api_version = header.api_version,
            client_id = header.client_id,
            "Kafka front: request before authentication"
        );
        match (header.api_key, mechanism) {
            (API_API_VERSIONS, None) => {
                relay_api_versions(&frame, &header, &mut tls, &mut upstream).await?;
            }
            (API_SASL_HANDSHAKE, None) => {
                mechanism = Some(handshake(shared, &header, &mut r, &mut tls).await?);
            }
            (API_SASL_AUTHENTICATE, Some(mechanism)) => {
                let auth = sasl_authenticate(shared, mechanism, &header, &mut r, &mut tls).await?;
                return Ok((tls, upstream, auth));
            }
            (api_key, _) => {
                return Err(Rejected::Unexpected {
                    api_key,
                    api_version: header.api_version,
                });
            }
        }
    }
}

async fn relay_api_versions(
    frame: &[u8],
    header: &RequestHeader,
    tls: &mut TlsStream<TcpStream>,
    upstream: &mut TcpStream,
) -> Result<(), Rejected> {
    write_frame(upstream, frame)
        .await
        .map_err(Rejected::Upstream)?;
    let response = read_frame(upstream, MAX_UPSTREAM_FRAME)
        .await
        .map_err(|e| match e {
            Rejected::Io(e) => Rejected::Upstream(e),
            other => other,
        })?;
    let response = advertise_sasl(header.api_version, &response).unwrap_or_else(|| {
        tracing::debug!("Kafka front: ApiVersions response relayed unchanged");
        response
    });
    write_frame(tls, &response).await?;
    Ok(())
}

async fn handshake(
    shared: &Shared,
    header: &RequestHeader,
    r: &mut Reader<'_>,
    tls: &mut TlsStream<TcpStream>,
) -> Result<&'static str, Rejected> {
    let enabled = shared.mechanisms();
    let respond = |error_code: i16| {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&header.correlation_id.to_be_bytes());
        out.extend_from_slice(&error_code.to_be_bytes());
        put_i32(&mut out, enabled.len());
        for m in &enabled {
            put_string(&mut out, m);
        }
        out
    };
    if header.api_version != 1 {
        write_frame(tls, &respond(ERR_UNSUPPORTED_VERSION)).await?;
        return Err(Rejected::UnsupportedVersion {
            api_key: header.api_key,
            api_version: header.api_version,
        });
    }
    let requested = r
        .string()
        .ok_or(Rejected::Malformed("SaslHandshake mechanism"))?;
    tracing::debug!(mechanism = requested, "Kafka front: SaslHandshake");
    let Some(mechanism) = enabled.iter().copied().find(|m| *m == requested) else {
        write_frame(tls, &respond(ERR_UNSUPPORTED_SASL_MECHANISM)).await?;
        return Err(Rejected::Auth {
            reason: AuthFailure::UnsupportedMechanism,
            message: format!(
                "Unsupported SASL mechanism {requested}; enabled: {}",
                enabled.join(", ")
            ),
        });
    };
    write_frame(tls, &respond(ERR_NONE)).await?;
    Ok(mechanism)
}

async fn sasl_authenticate(
    shared: &Shared,
    mechanism: &'static str,
    header: &RequestHeader,
    r: &mut Reader<'_>,
    tls: &mut TlsStream<TcpStream>,
) -> Result<Authenticated, Rejected> {
    if !matches!(header.api_version, 0 | 1) {
        return Err(Rejected::UnsupportedVersion {
            api_key: header.api_key,
            api_version: header.api_version,
        });
    }
    let auth_bytes = r
        .bytes()
        .ok_or(Rejected::Malformed("SaslAuthenticate auth_bytes"))?;
    let verdict = if mechanism == PLAIN {
        check_plain(shared, auth_bytes)
    } else {
        check_oauthbearer(shared, auth_bytes)
    };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&header.correlation_id.to_be_bytes());
    match &verdict {
        Ok(_) => {
            out.extend_from_slice(&ERR_NONE.to_be_bytes());
            out.extend_from_slice(&(-1i16).to_be_bytes()); // error_message: null
        }
        Err((_, message)) => {
            out.extend_from_slice(&ERR_SASL_AUTHENTICATION_FAILED.to_be_bytes());
            put_string(&mut out, message);
        }
    }
    out.extend_from_slice(&0i32.to_be_bytes()); // auth_bytes: empty
    if header.api_version >= 1 {
        out.extend_from_slice(&0i64.to_be_bytes()); // session_lifetime_ms: no re-authentication
    }
    write_frame(tls, &out).await?;
    match verdict {
        Ok(auth) => {
            tracing::debug!(mechanism, "Kafka front: authenticated");
            Ok(auth)
        }
        Err((reason, message)) => Err(Rejected::Auth { reason, message }),
    }
}

type Verdict = Result<Authenticated, (AuthFailure, String)>;

/// RFC 4616: `authzid NUL authcid NUL passwd`, checked as Kafka's `PlainSaslServer` does.
fn check_plain(shared: &Shared, auth_bytes: &[u8]) -> Verdict {
    let fail = |reason, message: &str| Err((reason, message.to_owned()));
    let parts: Vec<&[u8]> = auth_bytes.split(|b| *b == 0).collect();
    let [authz, user, password] = parts.as_slice() else {
        return fail(
            AuthFailure::Malformed,
            &format!(
                "Invalid SASL/PLAIN response: expected 3 tokens, got {}",
                parts.len()
            ),
        );
    };
    if user.is_empty() || password.is_empty() {
        return fail(
            AuthFailure::Malformed,
            "Authentication failed: username and password must not be empty",
        );
    }
    if !authz.is_empty() && authz != user {
        return fail(
            AuthFailure::BadCredentials,
            "Authentication failed: Client requested an authorization id that is different from username",
        );
    }
    let expected = shared.config.connection_string.as_deref().unwrap_or("");
    if *user != CONNECTION_STRING_USER.as_bytes() || *password != expected.as_bytes() {
        return fail(
            AuthFailure::BadCredentials,
            "Authentication failed: invalid username or password (user must be $ConnectionString and the password the namespace's connection string)",
        );
    }
    Ok(Authenticated::Plain)
}

fn check_oauthbearer(shared: &Shared, auth_bytes: &[u8]) -> Verdict {
    let token = match bearer_token(auth_bytes) {
        Ok(t) => t,
        Err(why) => {
            return Err((
                AuthFailure::Malformed,
                format!("Invalid OAUTHBEARER client first message: {why}"),
            ));
        }
    };
    let expected = shared.config.oauth_audience.as_deref().unwrap_or("");
    match shared.inner.entra.validate(token) {
        Err(TokenProblem::Unknown) => Err((
            AuthFailure::UnknownToken,
            "Authentication failed: the access token is invalid".to_owned(),
        )),
        Err(TokenProblem::Expired) => Err((
            AuthFailure::ExpiredToken,
            "Authentication failed: the access token has expired".to_owned(),
        )),
        Ok((_, audience)) if audience != expected => Err((
            AuthFailure::WrongAudience,
            format!(
                "Authentication failed: invalid token audience '{audience}'; expected '{expected}'"
            ),
        )),
        Ok((client, _))
            if !shared.config.authorized_clients.is_empty()
                && !shared.config.authorized_clients.contains(&client) =>
        {
            Err((
                AuthFailure::UnauthorizedClient,
                format!(
                    "Authentication failed: principal '{client}' is not authorized on this namespace"
                ),
            ))
        }
        Ok(_) => Ok(Authenticated::Token(token.to_owned())),
    }
}

/// The token of an RFC 7628 client first message as Kafka parses it
/// (`OAuthBearerClientInitialResponse`): `n,[a=authzid],` `\x01` then `key=value\x01`
/// pairs, `auth=Bearer <token>` among them, and a final `\x01`.
fn bearer_token(message: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(message).map_err(|_| "not UTF-8")?;
    let (gs2, rest) = text
        .split_once('\x01')
        .ok_or("no 0x01 after the GS2 header")?;
    let authzid = gs2
        .strip_prefix("n,")
        .and_then(|g| g.strip_suffix(','))
        .ok_or("the GS2 header must be `n,[a=authzid],` (no channel binding)")?;
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err("malformed authorization id in the GS2 header");
    }
    let pairs = rest
        .strip_suffix("\x01\x01")
        .ok_or("the message must end with 0x01 0x01")?;
    let mut auth = None;
    for pair in pairs.split('\x01') {
        let (key, value) = pair.split_once('=').ok_or("a key/value pair has no '='")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err("invalid key in a key/value pair");
        }
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| matches!(b, 0x21..=0x7e | b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err("invalid value in a key/value pair");
        }
        if key == "auth" {
            if auth.is_some() {
                return Err("more than one auth pair");
            }
            auth = Some(value);
        }
    }
    let auth = auth.ok_or("no auth pair")?;
    let (scheme, token) = auth
        .split_once(' ')
        .ok_or("auth must be `Bearer <token>`")?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the auth scheme must be Bearer");
    }
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("invalid bearer token characters");
    }
    Ok(token)
}

/// The ApiVersions response with SaslHandshake and SaslAuthenticate at versions 0..1, or
/// `None` when it carries an error or cannot be parsed (then it is relayed unchanged).
/// `response` is the frame body: correlation id (response header v0 for every version),
/// error code, the api keys array (compact from v3, each entry then with tagged fields),
/// and the rest, which is copied verbatim.
fn advertise_sasl(version: i16, response: &[u8]) -> Option<Vec<u8>> {
    let mut r = Reader::new(response);
    let correlation = r.take(4)?;
    let error_code = r.i16()?;
    if error_code != ERR_NONE {
        return None;
    }
    let flexible = version >= 3;
    let count = if flexible {
        usize::try_from(r.uvarint()?.checked_sub(1)?).ok()?
    } else {
        usize::try_from(r.i32()?).ok()?
    };
    let mut entries: Vec<(i16, i16, i16, &[u8])> = Vec::with_capacity(count.min(256) + 2);
    for _ in 0..count {
        let key = r.i16()?;
        let min = r.i16()?;
        let max = r.i16()?;
        let tags = if flexible { r.tagged_fields()? } else { &[] };
        entries.push((key, min, max, tags));
    }
    let rest = r.remaining();
    entries.retain(|e| e.0 != API_SASL_HANDSHAKE && e.0 != API_SASL_AUTHENTICATE);
    entries.push((API_SASL_HANDSHAKE, 0, 1, &[0]));
    entries.push((API_SASL_AUTHENTICATE, 0, 1, &[0]));
    entries.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(response.len() + 16);
    out.extend_from_slice(correlation);
    out.extend_from_slice(&error_code.to_be_bytes());
    if flexible {
        put_uvarint(&mut out, entries.len() as u64 + 1);
    } else {
        put_i32(&mut out, entries.len());
    }
    for (key, min, max, tags) in entries {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&min.to_be_bytes());
        out.extend_from_slice(&max.to_be_bytes());
        if flexible {
            out.extend_from_slice(tags);
        }
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Request header v1/v2 up to the client id (the SASL requests handled here are header v1;
/// ApiVersions is forwarded whole, so its v2 tagged fields need no parsing).
#[derive(Debug)]
struct RequestHeader {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    /// Empty when null.
    client_id: String,
}

impl RequestHeader {
    fn parse(r: &mut Reader<'_>) -> Result<Self, Rejected> {
        let bad = Rejected::Malformed("request header");
        let api_key = r.i16().ok_or(Rejected::Malformed("request header"))?;
        let api_version = r.i16().ok_or(Rejected::Malformed("request header"))?;
        let correlation_id = r.i32().ok_or(Rejected::Malformed("request header"))?;
        let client_id = r.nullable_string().ok_or(bad)?.to_owned();
        Ok(Self {
            api_key,
            api_version,
            correlation_id,
            client_id,
        })
    }
}

/// A bounds-checked big-endian reader over a frame; every read returns `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A tagged-field section, returned raw (count, then tag, size, data each).
    fn tagged_fields(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = usize::try_from(self.uvarint()?).ok()?;
            self.take(size)?;
        }
        self.buf.get(start..self.pos)
    }

    /// STRING (i16 length, not null).
    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.i16()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// NULLABLE_STRING (i16 length, -1 for null); null reads as "".
    fn nullable_string(&mut self) -> Option<&'a str> {
        let len = self.i16()?;
        if len == -1 {
            return Some("");
        }
        let bytes = self.take(usize::try_from(len).ok()?)?;
        std::str::from_utf8(bytes).ok()
    }

    /// BYTES (i32 length, not null).
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.i32()?).ok()?;
        self.take(len)
    }
}

fn put_i32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&i32::try_from(n).unwrap_or(i32::MAX).to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Messages here are short; a longer one is cut at a character boundary.
    let mut end = s.len().min(i16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&i16::try_from(end).unwrap_or(i16::MAX).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One size-prefixed frame's body, refusing sizes above `max` before allocating.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, Rejected> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size).await?;
    let size = usize::try_from(i32::from_be_bytes(size))
        .map_err(|_| Rejected::Malformed("negative frame size"))?;
    if size > max {
        return Err(Rejected::FrameTooLarge(size));
    }
    let mut body = vec![0u8; size];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let size = i32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_parses_librdkafka_messages() {
        assert_eq!(
            bearer_token(b"n,,\x01auth=Bearer abc.DEF-_1\x01\x01"),
            Ok("abc.DEF-_1")
        );
        assert_eq!(
            bearer_token(b"n,a=me,\x01auth=bearer  t\x01ext=v w\x01\x01"),
            Ok("t")
        );
        for bad in [
            &b"n,,\x01auth=Bearer t\x01"[..],
            b"y,,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01host=x\x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01auth=Bearer t+/=\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x011x=y\x01auth=Bearer t\x01\x01",
        ] {
            assert!(bearer_token(bad).is_err(), "{bad:?}");
        }
    }

    fn api_versions_v3(entries: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 7, 0, 0];
        put_uvarint(&mut b, entries.len() as u64 + 1);
        for (k, min, max) in entries {
            b.extend_from_slice(&k.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
            b.push(0);
        }
        b.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 9]); // throttle, one tagged field
        b
    }

    #[test]
    fn api_versions_v3_gets_sasl_clamped_and_sorted() {
        let input = api_versions_v3(&[(0, 0, 11), (18, 0, 4), (36, 0, 2)]);
        let out = advertise_sasl(3, &input).unwrap();
        assert_eq!(
            out,
            api_versions_v3(&[(0, 0, 11), (17, 0, 1), (18, 0, 4), (36, 0, 1)])
        );
    }

    #[test]
    fn api_versions_v0_and_errors() {
        let mut v0 = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 5];
        let out = advertise_sasl(0, &v0).unwrap();
        let mut r = Reader::new(&out);
        r.take(6).unwrap();
        assert_eq!(r.i32(), Some(3));
        v0[5] = 35;
        assert_eq!(advertise_sasl(0, &v0), None);
        assert_eq!(advertise_sasl(3, &[0, 0, 0, 1, 0, 0, 5]), None);
    }
}
