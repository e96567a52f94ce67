//! # testbench
//!
//! Faithful loopback emulators of the external services of falcon-sentinel-bridge. The
//! first three are served by one HTTPS listener with a CA generated at start:
//!
//! * the CrowdStrike **Falcon Event Streams** API (OAuth2 token, discover, the chunked NDJSON
//!   feed, session refresh), with deterministic, realistic events;
//! * the **Entra ID** token endpoint (client secret, federated client assertion, certificate);
//! * the Azure Monitor **Logs Ingestion** API, which keeps a [`Ledger`] of every EventId it
//!   accepted so tests can prove that nothing was lost.
//!
//! The fourth, started on demand with [`Testbench::start_kafka_front`], is **Event Hubs'
//! Kafka endpoint**: a TLS listener (same CA) that performs Kafka's SASL exchange itself,
//! PLAIN with a connection string or OAUTHBEARER with a token of the Entra emulator, and
//! then pipes bytes to a real plaintext Kafka-protocol broker (tansu in the tests).
//!
//! Faults ([`Fault`]) make any endpoint slow, failing, rate limited or resetting, cut feeds
//! mid-line, replace events by malformed lines and make ingestion refuse given records.
//!
//! The testbench must never be more lenient than the real services: a client that passes
//! against it should pass against Falcon and Azure. Where the public record is silent the
//! choice made is documented on the item. It must also never be the bottleneck: event lines
//! are a pure function of (seed, partition, offset) and are generated on demand, not stored.
//!
//! Layout:
//! * [`config`]: configuration types and their defaults.
//! * `tls`: the generated CA and server certificate ([`loopback_pki`] gives them as PEM).
//! * `http`: the listener, router and response helpers.
//! * [`falcon`]: the Falcon emulator; `falcon::generator` builds event lines.
//! * [`entra`]: the Entra ID emulator.
//! * [`ingestion`]: the Logs Ingestion emulator and its [`Ledger`].
//! * [`kafka_front`]: the Event Hubs Kafka-endpoint front ([`KafkaFront`]).
//! * [`faults`]: fault injection.
//! * [`tansu`]: a real Kafka-protocol broker (tansu on sqlite) as a child process, for tests
//!   ([`Tansu`]).
//!
//! Faults are serde's externally tagged JSON, the same in Rust, over HTTP and on the CLI:
//! `{"Status":{"target":"Ingestion","status":503,"retry_after_secs":2,"count":3}}`,
//! `{"CutFeed":{"every_events":1000,"mid_line":true}}`,
//! `{"Malformed":{"partition":0,"offset":7,"kind":{"Oversize":{"bytes":2000000}}}}`,
//! `{"Malformed":{"partition":0,"offset":8,"kind":"InvalidJson"}}`.
//! `Reset` closes the connection before any response byte; a feed cut mid-stream is `CutFeed`.
//!
//! Testbench endpoints besides the emulated APIs: `GET /_testbench/received` (the ledger as
//! JSON), `POST /_testbench/faults` (a [`Fault`] as JSON), `DELETE /_testbench/faults`,
//! `GET /_testbench/falcon/stats`.

pub mod config;
pub mod entra;
pub mod falcon;
pub mod faults;
mod http;
pub mod ingestion;
pub mod kafka_front;
pub mod tansu;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    ColumnType, DEFAULT_MI_CLIENT_ID, EntraClient, EntraConfig, EntraCredential, FalconConfig,
    IngestionConfig, LineEnding, MANAGED_IDENTITY_HEADER, StreamDeclaration, TestbenchConfig,
    customer_id_for_seed,
};
pub use entra::EntraEmulator;
pub use falcon::{FalconEmulator, FalconStats};
pub use faults::{Fault, Faults, MalformedKind, Target};
pub use ingestion::{IngestionEmulator, Ledger};
pub use kafka_front::{AuthFailure, KafkaFront, KafkaFrontConfig, KafkaFrontStats};
pub use tansu::{ScramMechanism, Tansu, TansuOptions, TansuTls};
pub use tls::{LoopbackPki, loopback_pki};

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) base_url: url::Url,
    pub(crate) falcon: FalconEmulator,
    pub(crate) entra: EntraEmulator,
    pub(crate) ingestion: IngestionEmulator,
    pub(crate) faults: Arc<Faults>,
    pub(crate) cancel: CancellationToken,
}

/// A running testbench. Dropping it without [`Testbench::shutdown`] stops accepting
/// connections too, but does not wait for open ones.
#[derive(Debug)]
pub struct Testbench {
    inner: Arc<Inner>,
    addr: SocketAddr,
    ca_pem: String,
    kafka_tls: Arc<rustls::ServerConfig>,
    tracker: TaskTracker,
}

impl Testbench {
    /// Generate the CA, bind the listener and start serving.
    pub async fn start(mut config: TestbenchConfig) -> anyhow::Result<Testbench> {
        if config.falcon.customer_id.is_empty() {
            config.falcon.customer_id = customer_id_for_seed(config.seed);
        }
        let cid = &config.falcon.customer_id;
        anyhow::ensure!(
            cid.len() == 32 && cid.bytes().all(|b| b.is_ascii_hexdigit()),
            "falcon.customer_id must be 32 hex characters, got {cid:?}"
        );
        anyhow::ensure!(
            config.falcon.partitions >= 1,
            "falcon.partitions must be at least 1"
        );
        let pki = tls::generate().context("generate the testbench CA and certificate")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}", config.listen))?;
        let addr = listener.local_addr().context("read the bound address")?;
        let host = match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let base_url = url::Url::parse(&format!("https://{host}:{}/", addr.port()))
            .context("build the base URL")?;
        let faults = Arc::new(Faults::default());
        let cancel = CancellationToken::new();
        let events_per_sec = config.falcon.events_per_sec;
        let inner = Arc::new(Inner {
            base_url,
            falcon: FalconEmulator::new(config.falcon, config.seed, faults.clone()),
            entra: EntraEmulator::new(config.entra),
            ingestion: IngestionEmulator::new(config.ingestion),
            faults,
            cancel: cancel.clone(),
        });
        let tracker = TaskTracker::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        tracker.spawn(http::serve(
            listener,
            acceptor,
            inner.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        if let Some(rate) = events_per_sec.filter(|r| *r > 0) {
            tracker.spawn(falcon::generate_continuously(inner.clone(), rate));
        }
        tracing::info!(%addr, "testbench listening");
        Ok(Testbench {
            inner,
            addr,
            ca_pem: pki.ca_pem,
            kafka_tls: pki.kafka_server_config,
            tracker,
        })
    }

    /// Base URL, `https://127.0.0.1:PORT/`. Falcon API base, Entra authority host and
    /// Logs Ingestion endpoint alike.
    pub fn url(&self) -> url::Url {
        self.inner.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the server certificate; clients add it as a root.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The Falcon Event Streams emulator.
    pub fn falcon(&self) -> &FalconEmulator {
        &self.inner.falcon
    }

    /// The Logs Ingestion emulator.
    pub fn ingestion(&self) -> &IngestionEmulator {
        &self.inner.ingestion
    }

    /// The Entra ID emulator.
    pub fn entra(&self) -> &EntraEmulator {
        &self.inner.entra
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Start an Event Hubs Kafka-endpoint front on `127.0.0.1:0` in front of
    /// `config.upstream`; it serves until the testbench shuts down. Tokens are checked
    /// against this testbench's Entra emulator.
    pub async fn start_kafka_front(&self, config: KafkaFrontConfig) -> anyhow::Result<KafkaFront> {
        kafka_front::start(
            config,
            self.inner.clone(),
            self.kafka_tls.clone(),
            &self.tracker,
        )
        .await
    }

    /// Stop accepting, end open feeds, close connections, and wait (at most 5 s) for them.
    pub async fn shutdown(self) {
        self.inner.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("testbench shutdown timed out with connections still open");
        }
    }
}

impl Drop for Testbench {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}
