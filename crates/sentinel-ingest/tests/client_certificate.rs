//! `CredentialSpec::ClientCertificate` against the testbench's Entra emulator, which verifies
//! the RS256 client assertion with the registered certificate: real HTTPS, real PKCS#12 made
//! with (vendored) OpenSSL at test time, real azure_identity `ClientCertificateCredential`.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use openssl::{
    asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkcs12::Pkcs12, pkey::PKey, rsa::Rsa,
    x509::X509Builder, x509::X509NameBuilder,
};
use sentinel_ingest::{
    CredentialSpec, DeliverError, EncodedRecord, IngestClient, IngestConfig, RecordMeta,
    RetryConfig, RetryReason, encode_record,
};
use testbench::{EntraClient, EntraCredential, Testbench, TestbenchConfig};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "Custom-FalconEvents";
const CLIENT_ID: &str = "testbench-cert-client";
const PASSWORD: &str = "pfx-password";

/// A self-signed RSA certificate: its DER (to register) and a PKCS#12 bundle (for the client).
struct Identity {
    der: Vec<u8>,
    pfx: Vec<u8>,
}

fn identity(password: &str) -> Identity {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", CLIENT_ID).unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let pfx = Pkcs12::builder()
        .name(CLIENT_ID)
        .pkey(&key)
        .cert(&cert)
        .build2(password)
        .unwrap()
        .to_der()
        .unwrap();
    Identity {
        der: cert.to_der().unwrap(),
        pfx,
    }
}

/// A testbench whose Entra knows `CLIENT_ID` by `registered` and whose DCR lets it publish.
async fn start(registered: &Identity) -> Testbench {
    let mut config = TestbenchConfig::default();
    config.entra.clients.push(EntraClient {
        client_id: CLIENT_ID.to_owned(),
        credential: EntraCredential::Certificate {
            certificate_der: registered.der.clone(),
        },
    });
    config
        .ingestion
        .authorized_client_ids
        .push(CLIENT_ID.to_owned());
    Testbench::start(config).await.expect("testbench starts")
}

fn ingest_config(tb: &Testbench) -> IngestConfig {
    let mut cfg = IngestConfig::new(tb.url(), tb.ingestion().config().dcr_immutable_id.clone());
    cfg.authority_host = Some(tb.url());
    cfg.extra_ca_pems = vec![tb.ca_pem().as_bytes().to_vec()];
    cfg.request_timeout = Duration::from_secs(10);
    cfg.retry = RetryConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        forbidden_retry_interval: Duration::from_millis(200),
    };
    cfg
}

fn spec(tb: &Testbench, pfx: &[u8], password: Option<&str>) -> CredentialSpec {
    CredentialSpec::ClientCertificate {
        tenant_id: tb.entra().tenant_id().to_owned(),
        client_id: CLIENT_ID.to_owned(),
        certificate: pfx.to_vec(),
        password: password.map(str::to_owned),
    }
}

fn event_id(offset: u64) -> String {
    format!("cid:0:{offset}")
}

fn records(first: u64, n: u64) -> Vec<EncodedRecord> {
    (first..first + n)
        .map(|offset| {
            let id = event_id(offset);
            let raw = format!(
                r#"{{"metadata":{{"customerIDString":"cid","offset":{offset},"eventType":"DetectionSummaryEvent","eventCreationTime":1700000000000}},"event":{{"ComputerName":"host-{offset}"}}}}"#
            );
            let meta = RecordMeta {
                time_generated_ms: 1_700_000_000_000 + offset,
                event_id: &id,
                event_type: "DetectionSummaryEvent",
                customer_id: "cid",
                partition: 0,
                offset,
            };
            let mut json = Vec::new();
            encode_record(&meta, raw.as_bytes(), &mut json);
            EncodedRecord {
                id: offset,
                json: json.into(),
            }
        })
        .collect()
}

async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .expect("finished in time")
}

async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn client_certificate_credential_gets_a_token_and_delivers() {
    let me = identity(PASSWORD);
    let tb = start(&me).await;
    let client = IngestClient::new(ingest_config(&tb), spec(&tb, &me.pfx, Some(PASSWORD)))
        .expect("client builds from the PKCS#12");
    let cancel = CancellationToken::new();
    let report = within(
        Duration::from_secs(30),
        client.deliver(STREAM, records(1, 100), &cancel),
    )
    .await
    .expect("delivered");
    assert_eq!(report.delivered, 100);
    assert!(report.dead_letters.is_empty());
    assert_eq!(tb.entra().tokens_issued(), 1);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.distinct_event_ids(), 100);
    for offset in 1..=100 {
        assert!(ledger.event_ids.contains_key(&event_id(offset)));
    }
    assert!(client.health().healthy);
}

#[tokio::test]
async fn unregistered_certificate_is_unhealthy_and_retried_not_dropped() {
    let registered = identity(PASSWORD);
    let other = identity(PASSWORD);
    let tb = start(&registered).await;
    let client = Arc::new(
        IngestClient::new(ingest_config(&tb), spec(&tb, &other.pfx, Some(PASSWORD))).unwrap(),
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = Arc::clone(&client);
        let cancel = cancel.clone();
        async move { client.deliver(STREAM, records(1, 10), &cancel).await }
    });
    eventually(Duration::from_secs(10), || !client.health().healthy).await;
    eventually(Duration::from_secs(10), || {
        client
            .stats()
            .retries
            .get(&RetryReason::Credential)
            .copied()
            .unwrap_or(0)
            >= 3
    })
    .await;
    assert!(tb.entra().token_requests() >= 3);
    assert_eq!(tb.entra().tokens_issued(), 0);
    let health = client.health();
    assert!(
        health
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("AADSTS700027"),
        "{health:?}"
    );
    cancel.cancel();
    assert_eq!(
        within(Duration::from_secs(5), run).await.unwrap(),
        Err(DeliverError::Cancelled)
    );
    assert_eq!(client.stats().records_dead_lettered, 0);
    assert_eq!(tb.ingestion().ledger().records, 0);
}

#[tokio::test]
async fn wrong_pfx_password_or_garbage_fails_at_construction() {
    let me = identity(PASSWORD);
    let tb = start(&me).await;
    let wrong = IngestClient::new(ingest_config(&tb), spec(&tb, &me.pfx, Some("nope")));
    assert!(wrong.is_err(), "a wrong password must fail at start");
    let missing = IngestClient::new(ingest_config(&tb), spec(&tb, &me.pfx, None));
    assert!(missing.is_err(), "a missing password must fail at start");
    let garbage = IngestClient::new(ingest_config(&tb), spec(&tb, b"not pkcs12", None));
    assert!(garbage.is_err());
    // A bundle without a password is accepted with `None`.
    let open = identity("");
    assert!(IngestClient::new(ingest_config(&tb), spec(&tb, &open.pfx, None)).is_ok());
    assert_eq!(tb.entra().token_requests(), 0);
}

#[test]
fn debug_redacts_certificate_and_password() {
    let spec = CredentialSpec::ClientCertificate {
        tenant_id: "tenant".to_owned(),
        client_id: "client".to_owned(),
        certificate: b"PKCS12-SECRET-BYTES".to_vec(),
        password: Some("hunter2".to_owned()),
    };
    let shown = format!("{spec:?}");
    assert!(
        shown.contains("tenant") && shown.contains("client"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("80, 75, 67, 83"), "{shown}"); // "PKCS" as bytes
    assert!(shown.contains("<redacted>"), "{shown}");
}
