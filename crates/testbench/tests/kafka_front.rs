//! The Event Hubs Kafka-endpoint front over real protocols: librdkafka (rdkafka) clients
//! speaking SASL_SSL to the front, a real tansu broker behind it, and raw Kafka frames on a
//! tokio-rustls socket for the protocol edges librdkafka never exercises.
#![allow(clippy::too_many_lines)] // each scenario reads top to bottom

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::OAuthToken;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use testbench::tansu::free_port;
use testbench::{AuthFailure, KafkaFront, KafkaFrontConfig, KafkaFrontStats, Tansu, Testbench};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const AUDIENCE: &str = "https://testbench-ns.servicebus.windows.net";
const SCOPE: &str = "https://testbench-ns.servicebus.windows.net/.default";
const CONNECTION_STRING: &str = "Endpoint=sb://testbench-ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2VjcmV0LWtleQ==";
const TOPIC: &str = "front-events";

// ---------------------------------------------------------------------------------------
// Fixtures

struct Setup {
    tb: Testbench,
    front: KafkaFront,
    _tansu: Tansu,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A testbench, a front configured by `configure`, and tansu behind it with [`TOPIC`].
async fn setup(configure: impl FnOnce(&mut KafkaFrontConfig)) -> Setup {
    let tb = Testbench::start(testbench::TestbenchConfig::default())
        .await
        .unwrap();
    let upstream_port = free_port();
    let mut config = KafkaFrontConfig {
        upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
        connection_string: None,
        oauth_audience: Some(AUDIENCE.to_owned()),
        authorized_clients: Vec::new(),
    };
    configure(&mut config);
    let front = tb.start_kafka_front(config).await.unwrap();
    let front_port = front.addr().port();
    // Starting a broker blocks until it listens: keep the runtime's threads free meanwhile.
    let tansu = tokio::task::spawn_blocking(move || {
        let tansu = Tansu::start_advertising(upstream_port, front_port);
        tansu.create_topic(TOPIC, 1);
        tansu
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, tb.ca_pem()).unwrap();
    Setup {
        tb,
        front,
        _tansu: tansu,
        ca_file,
        _dir: dir,
    }
}

async fn entra_token(tb: &Testbench, scope: &str) -> String {
    let ca = reqwest::Certificate::from_pem(tb.ca_pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = tb
        .url()
        .join(&format!("{}/oauth2/v2.0/token", tb.entra().tenant_id()))
        .unwrap();
    let resp = client
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", testbench::config::DEFAULT_AZURE_CLIENT_ID),
            (
                "client_secret",
                testbench::config::DEFAULT_AZURE_CLIENT_SECRET,
            ),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// Hands librdkafka whatever token the test last stored, with a short lifetime so that
/// librdkafka asks again (at 80 % of it) and picks up a replaced token.
#[derive(Clone)]
struct TokenContext {
    token: Arc<Mutex<String>>,
    lifetime: Duration,
    errors: Arc<Mutex<Vec<String>>>,
}

impl TokenContext {
    fn new(token: &str, lifetime: Duration) -> Self {
        Self {
            token: Arc::new(Mutex::new(token.to_owned())),
            lifetime,
            errors: Arc::default(),
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl ClientContext for TokenContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .lock()
            .unwrap()
            .push(format!("{error}: {reason}"));
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let expiry = (SystemTime::now() + self.lifetime).duration_since(UNIX_EPOCH)?;
        Ok(OAuthToken {
            token: self.token.lock().unwrap().clone(),
            principal_name: testbench::config::DEFAULT_AZURE_CLIENT_ID.to_owned(),
            lifetime_ms: i64::try_from(expiry.as_millis())?,
        })
    }
}

impl ConsumerContext for TokenContext {}

enum Auth<'a> {
    /// `security.protocol=ssl`: TLS without SASL.
    TlsOnly,
    Plain(&'a str),
    Bearer,
}

fn client_config(s: &Setup, auth: &Auth<'_>, message_timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", s.front.addr().to_string())
        .set("ssl.ca.location", s.ca_file.display().to_string())
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "500")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .set("socket.timeout.ms", "10000");
    match auth {
        Auth::TlsOnly => {
            c.set("security.protocol", "ssl");
        }
        Auth::Plain(password) => {
            c.set("security.protocol", "sasl_ssl")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", "$ConnectionString")
                .set("sasl.password", *password);
        }
        Auth::Bearer => {
            c.set("security.protocol", "sasl_ssl")
                .set("sasl.mechanism", "OAUTHBEARER");
        }
    }
    c
}

fn producer(
    s: &Setup,
    auth: &Auth<'_>,
    ctx: &TokenContext,
    timeout: Duration,
) -> FutureProducer<TokenContext> {
    client_config(s, auth, timeout)
        .create_with_context(ctx.clone())
        .unwrap()
}

async fn produce(p: &FutureProducer<TokenContext>, value: &str) -> Result<i64, KafkaError> {
    p.send(
        FutureRecord::to(TOPIC).key("k").payload(value),
        Duration::from_secs(5),
    )
    .await
    .map(|d| d.offset)
    .map_err(|(e, _)| e)
}

/// Reads `n` messages of [`TOPIC`] from the beginning through the front.
async fn consume(s: &Setup, auth: &Auth<'_>, ctx: &TokenContext, n: usize) -> Vec<String> {
    let consumer: BaseConsumer<TokenContext> = client_config(s, auth, Duration::from_secs(20))
        .set("group.id", "front-test")
        .set("enable.auto.commit", "false")
        .create_with_context(ctx.clone())
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                got.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
            }
        }
        got
    })
    .await
    .unwrap()
}

/// Polls `cond` on the front's stats until it holds or 15 s pass.
async fn wait_stats(front: &KafkaFront, what: &str, cond: impl Fn(&KafkaFrontStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = front.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// librdkafka through the front to tansu

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_over_sasl_ssl_produces_and_consumes() {
    let s = setup(|_| {}).await;
    let token = entra_token(&s.tb, SCOPE).await;
    let ctx = TokenContext::new(&token, Duration::from_hours(1));
    let p = producer(&s, &Auth::Bearer, &ctx, Duration::from_secs(20));
    let sent: Vec<String> = (0..20).map(|i| format!("event-{i}")).collect();
    for (i, v) in sent.iter().enumerate() {
        assert_eq!(produce(&p, v).await.unwrap(), i64::try_from(i).unwrap());
    }
    let got = consume(&s, &Auth::Bearer, &ctx, sent.len()).await;
    assert_eq!(got, sent);
    let stats = s.front.stats();
    assert!(stats.authentications_succeeded >= 2, "{stats:?}");
    assert_eq!(stats.authentication_failures_total(), 0, "{stats:?}");
    assert_eq!(stats.rejected_before_authentication, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_token_for_another_audience_is_refused() {
    let s = setup(|_| {}).await;
    let token = entra_token(&s.tb, "https://monitor.azure.com//.default").await;
    let ctx = TokenContext::new(&token, Duration::from_hours(1));
    let p = producer(&s, &Auth::Bearer, &ctx, Duration::from_secs(4));
    let started = Instant::now();
    let err = produce(&p, "never").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    let stats = s.front.stats();
    assert!(
        stats.authentication_failures_of(AuthFailure::WrongAudience) >= 1,
        "{stats:?}"
    );
    // No pipe was ever opened, so nothing but ApiVersions reached tansu.
    assert_eq!(stats.authentications_succeeded, 0, "{stats:?}");
    assert!(
        ctx.errors().iter().any(|e| e.contains("audience")),
        "librdkafka should report the broker's message: {:?}",
        ctx.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_with_the_connection_string_works_and_a_wrong_one_fails() {
    let s = setup(|c| {
        c.connection_string = Some(CONNECTION_STRING.to_owned());
        c.oauth_audience = None;
    })
    .await;
    let ctx = TokenContext::new("", Duration::from_hours(1));
    let good = producer(
        &s,
        &Auth::Plain(CONNECTION_STRING),
        &ctx,
        Duration::from_secs(20),
    );
    assert_eq!(produce(&good, "plain-0").await.unwrap(), 0);
    assert_eq!(produce(&good, "plain-1").await.unwrap(), 1);
    assert_eq!(
        consume(&s, &Auth::Plain(CONNECTION_STRING), &ctx, 2).await,
        ["plain-0", "plain-1"]
    );
    let succeeded = s.front.stats().authentications_succeeded;

    let bad_ctx = TokenContext::new("", Duration::from_hours(1));
    let wrong = CONNECTION_STRING.replace("c2VjcmV0LWtleQ==", "d3Jvbmcta2V5");
    let bad = producer(&s, &Auth::Plain(&wrong), &bad_ctx, Duration::from_secs(4));
    produce(&bad, "never").await.unwrap_err();
    let stats = s.front.stats();
    assert!(
        stats.authentication_failures_of(AuthFailure::BadCredentials) >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.authentications_succeeded, succeeded, "{stats:?}");
    // OAUTHBEARER is not enabled on this front.
    let oauth_ctx = TokenContext::new(&entra_token(&s.tb, SCOPE).await, Duration::from_mins(1));
    let oauth = producer(&s, &Auth::Bearer, &oauth_ctx, Duration::from_secs(3));
    produce(&oauth, "never").await.unwrap_err();
    assert!(
        s.front
            .stats()
            .authentication_failures_of(AuthFailure::UnsupportedMechanism)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_connections_and_a_fresh_token_reconnects() {
    let s = setup(|_| {}).await;
    let first = entra_token(&s.tb, SCOPE).await;
    // librdkafka asks for a token again at 80 % of this lifetime.
    let ctx = TokenContext::new(&first, Duration::from_secs(3));
    let p = producer(&s, &Auth::Bearer, &ctx, Duration::from_secs(30));
    for i in 0..5 {
        assert_eq!(produce(&p, &format!("before-{i}")).await.unwrap(), i);
    }
    assert_eq!(s.front.stats().closed_token_expired, 0);

    s.tb.entra().expire_all_tokens();
    wait_stats(&s.front, "connections closed for expiry", |st| {
        st.closed_token_expired >= 1
    })
    .await;
    *ctx.token.lock().unwrap() = entra_token(&s.tb, SCOPE).await;
    let succeeded = s.front.stats().authentications_succeeded;
    for i in 5..10 {
        assert_eq!(produce(&p, &format!("after-{i}")).await.unwrap(), i);
    }
    let stats = s.front.stats();
    assert!(stats.authentications_succeeded > succeeded, "{stats:?}");
    // Reconnects made before librdkafka refreshed its token, if any, were refused as expired.
    assert_eq!(
        stats.authentication_failures_total(),
        stats.authentication_failures_of(AuthFailure::ExpiredToken),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_without_sasl_cannot_use_the_front() {
    let s = setup(|c| c.connection_string = Some(CONNECTION_STRING.to_owned())).await;
    let ctx = TokenContext::new("", Duration::from_mins(1));
    let p = producer(&s, &Auth::TlsOnly, &ctx, Duration::from_secs(3));
    produce(&p, "never").await.unwrap_err();
    let stats = s.front.stats();
    assert!(stats.rejected_before_authentication >= 1, "{stats:?}");
    assert_eq!(stats.authentications_succeeded, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_through_the_front_advertise_sasl_0_to_1() {
    let s = setup(|_| {}).await;
    let mut tls = connect(&s.tb, &s.front).await;
    // ApiVersions v3: request header v2 (tagged fields), compact strings in the body.
    let mut req = header(18, 3, 5);
    req.push(0); // header tagged fields
    req.extend_from_slice(&[5, b't', b'e', b's', b't', 2, b'1', 0]);
    send(&mut tls, &req).await;
    let resp = recv(&mut tls).await.expect("an ApiVersions response");
    let mut r = Cursor(&resp);
    assert_eq!(r.i32(), 5);
    assert_eq!(r.i16(), 0);
    let n = r.u8() - 1;
    let mut keys = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (k, min, max) = (r.i16(), r.i16(), r.i16());
        assert_eq!(r.u8(), 0, "no tagged fields per key");
        keys.insert(k, (min, max));
    }
    assert_eq!(keys.get(&17), Some(&(0, 1)), "{keys:?}");
    assert_eq!(keys.get(&36), Some(&(0, 1)), "{keys:?}");
    assert!(keys.contains_key(&0) && keys.contains_key(&3), "{keys:?}");
    assert!(keys.keys().is_sorted());
}

// ---------------------------------------------------------------------------------------
// Raw frames on a TLS socket, with an echo server upstream

/// An upstream that echoes what it receives.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn raw_setup(configure: impl FnOnce(&mut KafkaFrontConfig)) -> (Testbench, KafkaFront) {
    let tb = Testbench::start(testbench::TestbenchConfig::default())
        .await
        .unwrap();
    let mut config = KafkaFrontConfig {
        upstream: echo_upstream().await,
        connection_string: Some(CONNECTION_STRING.to_owned()),
        oauth_audience: Some(AUDIENCE.to_owned()),
        authorized_clients: Vec::new(),
    };
    configure(&mut config);
    let front = tb.start_kafka_front(config).await.unwrap();
    (tb, front)
}

async fn connect(tb: &Testbench, front: &KafkaFront) -> TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(tb.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(front.addr()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::IpAddress(front.addr().ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

/// Request header v1 with client id "raw".
fn header(api_key: i16, version: i16, correlation: i32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&api_key.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&correlation.to_be_bytes());
    h.extend_from_slice(&3i16.to_be_bytes());
    h.extend_from_slice(b"raw");
    h
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&i16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

async fn send(tls: &mut TlsStream<TcpStream>, body: &[u8]) {
    let mut frame = i32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
}

/// The next frame's body, or `None` once the front closed the connection.
async fn recv(tls: &mut TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut size = [0u8; 4];
        tls.read_exact(&mut size).await.ok()?;
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
        tls.read_exact(&mut body).await.ok()?;
        Some(body)
    })
    .await
    .expect("the front neither answered nor closed within 10 s")
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> Option<String> {
        let len = self.i16();
        (len >= 0)
            .then(|| String::from_utf8(self.take(usize::try_from(len).unwrap()).to_vec()).unwrap())
    }
}

/// SaslHandshake v`version`: (error code, enabled mechanisms).
async fn handshake(
    tls: &mut TlsStream<TcpStream>,
    version: i16,
    mechanism: &str,
) -> (i16, Vec<String>) {
    let mut req = header(17, version, 1);
    string(&mut req, mechanism);
    send(tls, &req).await;
    let resp = recv(tls).await.expect("a SaslHandshake response");
    let mut r = Cursor(&resp);
    assert_eq!(r.i32(), 1);
    let error = r.i16();
    let n = r.i32();
    let mechanisms = (0..n).map(|_| r.string().unwrap()).collect();
    (error, mechanisms)
}

/// SaslAuthenticate v1: (error code, error message).
async fn authenticate(tls: &mut TlsStream<TcpStream>, auth_bytes: &[u8]) -> (i16, Option<String>) {
    let mut req = header(36, 1, 2);
    req.extend_from_slice(&i32::try_from(auth_bytes.len()).unwrap().to_be_bytes());
    req.extend_from_slice(auth_bytes);
    send(tls, &req).await;
    let resp = recv(tls).await.expect("a SaslAuthenticate response");
    let mut r = Cursor(&resp);
    assert_eq!(r.i32(), 2);
    let error = r.i16();
    let message = r.string();
    assert_eq!(r.i32(), 0, "empty auth_bytes");
    assert_eq!(r.i64(), 0, "no re-authentication demanded");
    (error, message)
}

async fn oauth_attempt(tb: &Testbench, front: &KafkaFront, token: &str) -> (i16, Option<String>) {
    let mut tls = connect(tb, front).await;
    assert_eq!(handshake(&mut tls, 1, "OAUTHBEARER").await.0, 0);
    let message = format!("n,,\x01auth=Bearer {token}\x01\x01");
    let outcome = authenticate(&mut tls, message.as_bytes()).await;
    if outcome.0 != 0 {
        assert_eq!(recv(&mut tls).await, None, "closed after a failure");
    }
    outcome
}

#[tokio::test]
async fn a_non_sasl_request_before_authentication_closes_the_connection() {
    let (tb, front) = raw_setup(|_| {}).await;
    let mut tls = connect(&tb, &front).await;
    // Metadata v1, all topics (null array).
    let mut req = header(3, 1, 9);
    req.extend_from_slice(&(-1i32).to_be_bytes());
    send(&mut tls, &req).await;
    assert_eq!(recv(&mut tls).await, None);
    wait_stats(&front, "the rejection", |st| {
        st.rejected_before_authentication == 1
    })
    .await;

    // The same after a successful handshake but before SaslAuthenticate.
    let mut tls = connect(&tb, &front).await;
    assert_eq!(handshake(&mut tls, 1, "PLAIN").await.0, 0);
    send(&mut tls, &req).await;
    assert_eq!(recv(&mut tls).await, None);
    wait_stats(&front, "the rejection", |st| {
        st.rejected_before_authentication == 2
    })
    .await;

    // A frame above the pre-authentication cap is refused before it is read.
    let mut tls = connect(&tb, &front).await;
    tls.write_all(&(600_000i32).to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    assert_eq!(recv(&mut tls).await, None);
    wait_stats(&front, "the rejection", |st| {
        st.rejected_before_authentication == 3
    })
    .await;
    assert_eq!(front.stats().authentications_succeeded, 0);

    // Plaintext Kafka on the TLS port fails the TLS handshake.
    let mut tcp = TcpStream::connect(front.addr()).await.unwrap();
    let mut frame = i32::try_from(req.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    tcp.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    wait_stats(&front, "the TLS failure", |st| st.tls_failures == 1).await;
}

#[tokio::test]
async fn handshake_v0_and_unknown_mechanisms_are_refused() {
    let (tb, front) = raw_setup(|_| {}).await;
    let mut tls = connect(&tb, &front).await;
    let (error, mechanisms) = handshake(&mut tls, 0, "PLAIN").await;
    assert_eq!(error, 35, "UNSUPPORTED_VERSION");
    assert_eq!(mechanisms, ["PLAIN", "OAUTHBEARER"]);
    assert_eq!(recv(&mut tls).await, None);

    let mut tls = connect(&tb, &front).await;
    let (error, mechanisms) = handshake(&mut tls, 1, "SCRAM-SHA-256").await;
    assert_eq!(error, 33, "UNSUPPORTED_SASL_MECHANISM");
    assert_eq!(mechanisms, ["PLAIN", "OAUTHBEARER"]);
    assert_eq!(recv(&mut tls).await, None);

    wait_stats(&front, "both refusals", |st| {
        st.rejected_before_authentication == 1
            && st.authentication_failures_of(AuthFailure::UnsupportedMechanism) == 1
    })
    .await;
}

#[tokio::test]
async fn oauthbearer_checks_token_audience_expiry_and_principal() {
    let (tb, front) = raw_setup(|c| c.authorized_clients = vec!["someone-else".to_owned()]).await;
    let good_audience = entra_token(&tb, SCOPE).await;
    let (error, message) = oauth_attempt(&tb, &front, &good_audience).await;
    assert_eq!(error, 58);
    assert!(message.unwrap().contains("testbench-azure-client"));

    let (error, _) = oauth_attempt(&tb, &front, "bm90LWlzc3VlZA").await;
    assert_eq!(error, 58);

    let other = entra_token(&tb, "https://monitor.azure.com/.default").await;
    let (error, message) = oauth_attempt(&tb, &front, &other).await;
    assert_eq!(error, 58);
    assert!(message.unwrap().contains("https://monitor.azure.com"));

    tb.entra().expire_all_tokens();
    let (error, message) = oauth_attempt(&tb, &front, &good_audience).await;
    assert_eq!(error, 58);
    assert!(message.unwrap().contains("expired"));

    // Malformed client first message (no final 0x01).
    let mut tls = connect(&tb, &front).await;
    assert_eq!(handshake(&mut tls, 1, "OAUTHBEARER").await.0, 0);
    let (error, _) = authenticate(&mut tls, b"n,,\x01auth=Bearer abc\x01").await;
    assert_eq!(error, 58);

    let stats = front.stats();
    for reason in [
        AuthFailure::UnauthorizedClient,
        AuthFailure::UnknownToken,
        AuthFailure::WrongAudience,
        AuthFailure::ExpiredToken,
        AuthFailure::Malformed,
    ] {
        assert_eq!(
            stats.authentication_failures_of(reason),
            1,
            "{reason:?}: {stats:?}"
        );
    }
    assert_eq!(stats.authentications_succeeded, 0);
}

#[tokio::test]
async fn authenticated_connection_is_a_transparent_pipe_until_dropped() {
    let (tb, front) = raw_setup(|_| {}).await;
    let mut plain = connect(&tb, &front).await;
    assert_eq!(handshake(&mut plain, 1, "PLAIN").await.0, 0);
    let creds = format!("\0$ConnectionString\0{CONNECTION_STRING}");
    assert_eq!(authenticate(&mut plain, creds.as_bytes()).await, (0, None));

    let token = entra_token(&tb, SCOPE).await;
    let mut oauth = connect(&tb, &front).await;
    assert_eq!(handshake(&mut oauth, 1, "OAUTHBEARER").await.0, 0);
    let first = format!("n,,\x01auth=Bearer {token}\x01host=localhost\x01\x01");
    assert_eq!(authenticate(&mut oauth, first.as_bytes()).await, (0, None));

    // After authentication any bytes pass, in both directions (the upstream echoes).
    for tls in [&mut plain, &mut oauth] {
        send(tls, b"any bytes at all").await;
        assert_eq!(recv(tls).await.as_deref(), Some(&b"any bytes at all"[..]));
    }
    wait_stats(&front, "both authentications", |st| {
        st.authentications_succeeded == 2 && st.open_connections == 2
    })
    .await;

    front.drop_all_connections();
    assert_eq!(recv(&mut plain).await, None);
    assert_eq!(recv(&mut oauth).await, None);
    wait_stats(&front, "the fault", |st| {
        st.closed_by_fault == 2 && st.open_connections == 0
    })
    .await;

    // New connections work after the fault; a wrong password does not.
    let mut again = connect(&tb, &front).await;
    assert_eq!(handshake(&mut again, 1, "PLAIN").await.0, 0);
    assert_eq!(authenticate(&mut again, creds.as_bytes()).await, (0, None));
    let mut wrong = connect(&tb, &front).await;
    assert_eq!(handshake(&mut wrong, 1, "PLAIN").await.0, 0);
    let (error, _) = authenticate(&mut wrong, b"\0$ConnectionString\0Endpoint=sb://x/").await;
    assert_eq!(error, 58);
    assert_eq!(recv(&mut wrong).await, None);
    let stats = front.stats();
    assert_eq!(stats.authentications_succeeded, 3, "{stats:?}");
    assert_eq!(
        stats.authentication_failures_of(AuthFailure::BadCredentials),
        1
    );
    assert_eq!(stats.closed_token_expired, 0);
}
