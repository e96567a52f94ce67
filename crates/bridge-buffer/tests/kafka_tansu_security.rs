//! The Kafka backend over TLS and SASL SCRAM against a real broker: tansu with
//! `--authentication` (SCRAM-SHA-256/512 users created while it was still open, then restarted
//! on the same sqlite file), behind the testbench's TLS front (tansu 0.6 does not serve TLS
//! itself; see `testbench::tansu`). The CA is the testbench's generated loopback CA, trusted
//! through `ca_pem_files`; the certificate names 127.0.0.1, which librdkafka verifies.
#![cfg(feature = "kafka")]

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use bridge_buffer::{
    Buffer, KafkaBuffer, KafkaBufferConfig, KafkaSecurity, SaslMechanism, SecurityProtocol,
};
use kafka_support::{CKPT, TOPIC, config, read_n, recs};
use testbench::{ScramMechanism, Tansu, TansuOptions, TansuTls};

const WITHIN: Duration = Duration::from_secs(20);
const USER_512: (&str, &str) = ("alice", "alice-secret-512");
const USER_256: (&str, &str) = ("bob", "bob-secret-256");

/// Everything logged at WARN and above by any test of this binary (librdkafka's errors arrive
/// through `bridge_buffer::kafka`'s log and error callbacks, on librdkafka's threads).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (before `kafka_support::config`, whose own `init_logs`
/// then does nothing).
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .try_init();
}

/// The captured lines that name `broker` (tests run in parallel, each with its own broker).
fn logged_for(broker: &str) -> String {
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(&format!("{broker}/")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A broker, behind TLS with `tls`; with `authentication`, SCRAM is required and both users
/// exist.
struct Secured {
    tansu: Tansu,
    ca_file: tempfile::NamedTempFile,
}

fn secured(tls: bool, authentication: bool) -> Secured {
    capture_logs();
    let pki = testbench::loopback_pki().unwrap();
    let mut tansu = Tansu::start_with(&TansuOptions {
        tls: tls.then_some(TansuTls {
            cert_pem: pki.cert_pem,
            key_pem: pki.key_pem,
        }),
    });
    tansu.create_topic(TOPIC, 2);
    tansu.create_topic(CKPT, 1);
    if authentication {
        tansu.create_user(USER_512.0, USER_512.1, ScramMechanism::Sha512);
        tansu.create_user(USER_256.0, USER_256.1, ScramMechanism::Sha256);
        tansu.enable_authentication();
    }
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), pki.ca_pem).unwrap();
    Secured { tansu, ca_file }
}

impl Secured {
    fn config(
        &self,
        group: &str,
        protocol: SecurityProtocol,
        sasl: Option<(SaslMechanism, &str, &str)>,
    ) -> KafkaBufferConfig {
        let mut c = config(&self.tansu.broker(), group);
        c.connect_timeout = Duration::from_secs(5);
        c.security = KafkaSecurity {
            protocol,
            sasl_mechanism: sasl.map(|s| s.0),
            username: sasl.map(|s| s.1.to_owned()),
            password: sasl.map(|s| s.2.to_owned()),
            ca_pem_files: vec![self.ca_file.path().to_owned()],
            oauth_token_source: None,
        };
        c
    }
}

/// Appends two Falcon partitions, reads and acknowledges everything, closes, reconnects:
/// the resume offsets are the appended ones and only new records are delivered.
async fn round_trip(make: impl Fn() -> KafkaBufferConfig) {
    let buf = KafkaBuffer::connect(make()).await.unwrap();
    buf.append(recs(0, 0, 20)).await.unwrap();
    buf.append(recs(1, 0, 20)).await.unwrap();
    let entries = read_n(&buf, 40, WITHIN).await;
    let got: BTreeSet<(u32, u64)> = entries
        .iter()
        .map(|e| (e.record.partition, e.record.offset))
        .collect();
    assert_eq!(got.len(), 40, "each record once");
    let acked: Vec<_> = entries.iter().map(|e| e.position).collect();
    buf.ack(&acked).await.unwrap();
    buf.close().await.unwrap();

    let buf = KafkaBuffer::connect(make()).await.unwrap();
    assert_eq!(
        buf.resume_offsets().await.unwrap(),
        BTreeMap::from([(0, 19), (1, 19)])
    );
    buf.append(recs(0, 20, 25)).await.unwrap();
    let again = read_n(&buf, 5, WITHIN).await;
    assert_eq!(
        again
            .iter()
            .map(|e| (e.record.partition, e.record.offset))
            .collect::<Vec<_>>(),
        (20..25).map(|o| (0, o)).collect::<Vec<_>>(),
        "resumes after the acknowledged records"
    );
    let acked: Vec<_> = again.iter().map(|e| e.position).collect();
    buf.ack(&acked).await.unwrap();
    buf.close().await.unwrap();
}

/// `connect` with `c` fails within its connect timeout (plus slack for the scan's several
/// requests); returns the error text. The metadata request itself fails with
/// `BrokerTransportFailure`; the error carries librdkafka's last reported cause.
async fn connect_fails(c: KafkaBufferConfig) -> String {
    let bound = c.connect_timeout * 3;
    let outcome = tokio::time::timeout(bound, KafkaBuffer::connect(c))
        .await
        .unwrap_or_else(|_| panic!("connect hung past {bound:?}"));
    match outcome {
        Ok(buf) => {
            let _ = buf.close().await;
            panic!("connect succeeded");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha512_round_trip_then_sha256() {
    let s = secured(true, true);
    round_trip(|| {
        s.config(
            "w512",
            SecurityProtocol::SaslSsl,
            Some((SaslMechanism::ScramSha512, USER_512.0, USER_512.1)),
        )
    })
    .await;
    // The 256-bit user over the same broker, briefly.
    let buf = KafkaBuffer::connect(s.config(
        "w256",
        SecurityProtocol::SaslSsl,
        Some((SaslMechanism::ScramSha256, USER_256.0, USER_256.1)),
    ))
    .await
    .unwrap();
    buf.append(recs(7, 0, 3)).await.unwrap();
    let got = read_n(&buf, 48, WITHIN).await;
    assert!(
        got.iter()
            .any(|e| e.record.partition == 7 && e.record.offset == 2),
        "SCRAM-SHA-256 reads what it appended"
    );
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_connect_and_librdkafka_names_authentication() {
    let s = secured(true, true);
    let err = connect_fails(s.config(
        "bad",
        SecurityProtocol::SaslSsl,
        Some((SaslMechanism::ScramSha512, USER_512.0, "not-the-password")),
    ))
    .await;
    assert!(err.contains("metadata request failed"), "{err}");
    assert!(
        err.contains("SASL authentication error"),
        "the error names the cause: {err}"
    );
    let log = logged_for(&s.tansu.broker());
    assert!(
        log.contains("SASL authentication error: SASL SCRAM authentication failed"),
        "librdkafka's log names the cause: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_fails_connect_and_librdkafka_names_certificate_verification() {
    let s = secured(true, false);
    let mut c = s.config("ca", SecurityProtocol::Ssl, None);
    // The system store (`ssl.ca.location=probe`) does not hold the generated CA.
    c.security.ca_pem_files.clear();
    let err = connect_fails(c).await;
    assert!(err.contains("metadata request failed"), "{err}");
    assert!(
        err.contains("certificate verify failed"),
        "the error names the cause: {err}"
    );
    let log = logged_for(&s.tansu.broker());
    assert!(
        log.contains("SSL handshake failed") && log.contains("certificate verify failed"),
        "librdkafka's log names the cause: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_without_sasl_round_trip() {
    let s = secured(true, false);
    round_trip(|| s.config("tls", SecurityProtocol::Ssl, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_scram_sha256_round_trip() {
    let s = secured(false, true);
    round_trip(|| {
        s.config(
            "plain256",
            SecurityProtocol::SaslPlaintext,
            Some((SaslMechanism::ScramSha256, USER_256.0, USER_256.1)),
        )
    })
    .await;
}
