//! sentinel-ingest against the testbench: real HTTPS with the testbench CA, real token flow
//! through azure_identity, the emulated Logs Ingestion API and its ledger.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use sentinel_ingest::{
    BatchLimit, CredentialSpec, DeliverError, EncodedRecord, IngestClient, IngestConfig,
    RecordMeta, RejectReason, RetryConfig, RetryReason, encode_record,
};
use testbench::{Fault, Target, Testbench, TestbenchConfig, config};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "Custom-FalconEvents";

async fn start(config: TestbenchConfig) -> Testbench {
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

fn secret_credential(tb: &Testbench) -> CredentialSpec {
    CredentialSpec::ClientSecret {
        tenant_id: tb.entra().tenant_id().to_owned(),
        client_id: config::DEFAULT_AZURE_CLIENT_ID.to_owned(),
        secret: config::DEFAULT_AZURE_CLIENT_SECRET.to_owned(),
    }
}

fn client(tb: &Testbench) -> IngestClient {
    IngestClient::new(ingest_config(tb), secret_credential(tb)).expect("client builds")
}

fn event_id(offset: u64) -> String {
    format!("cid:0:{offset}")
}

/// `n` Falcon-shaped records of ~`size` bytes with offsets `first..first+n`.
fn records(first: u64, n: u64, size: usize) -> Vec<EncodedRecord> {
    (first..first + n)
        .map(|offset| {
            let id = event_id(offset);
            let padding = "x".repeat(size.saturating_sub(300));
            let raw = format!(
                r#"{{"metadata":{{"customerIDString":"cid","offset":{offset},"eventType":"DetectionSummaryEvent","eventCreationTime":1700000000000,"version":"1.0"}},"event":{{"ComputerName":"host-{offset}","Severity":3,"CommandLine":"{padding}"}}}}"#
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
            EncodedRecord { id: offset, json: json.into() }
        })
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes.
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

async fn deliver_all(
    client: &IngestClient,
    records: Vec<EncodedRecord>,
) -> sentinel_ingest::DeliveryReport {
    let cancel = CancellationToken::new();
    within(
        Duration::from_secs(30),
        client.deliver(STREAM, records, &cancel),
    )
    .await
    .expect("delivery completes")
}

async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .expect("finished in time")
}

fn assert_all_arrived(tb: &Testbench, first: u64, n: u64) {
    let ledger = tb.ingestion().ledger();
    for offset in first..first + n {
        assert!(
            ledger.event_ids.contains_key(&event_id(offset)),
            "EventId {} missing",
            event_id(offset)
        );
    }
}

#[tokio::test]
async fn delivers_everything_within_the_body_limit() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    let report = deliver_all(&client, records(1, 5000, 1000)).await;
    assert_eq!(report.delivered, 5000);
    assert!(report.dead_letters.is_empty());
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.records, 5000);
    assert_eq!(ledger.distinct_event_ids(), 5000);
    assert_eq!(ledger.duplicates, 0);
    assert!(
        ledger.requests >= 5,
        "~5 MB of JSON needs at least 5 requests, got {}",
        ledger.requests
    );
    assert!(ledger.max_body_bytes_seen <= 1024 * 1024);
    assert_eq!(ledger.oversize_rejections, 0);
    assert!(
        ledger.dropped_columns.is_empty(),
        "{:?}",
        ledger.dropped_columns
    );
    assert_all_arrived(&tb, 1, 5000);
    assert!(
        tb.entra()
            .audiences()
            .iter()
            .all(|a| a.trim_end_matches('/') == "https://monitor.azure.com")
    );
    let stats = client.stats();
    assert_eq!(stats.records_delivered, 5000);
    assert_eq!(stats.requests_2xx, report.requests);
    // Default mode packs at most 1,000,000 bytes of JSON per request before gzip.
    assert!(stats.bytes_sent_uncompressed <= report.requests * 1_000_000);
    assert!(stats.bytes_sent_wire < stats.bytes_sent_uncompressed / 3);
    assert!(client.health().healthy);
}

#[tokio::test]
async fn compressed_mode_packs_more_and_stays_under_one_mib() {
    let tb = start(TestbenchConfig::default()).await;
    let mut cfg = ingest_config(&tb);
    cfg.batch_limit = BatchLimit::compressed();
    let client = IngestClient::new(cfg, secret_credential(&tb)).unwrap();
    let report = deliver_all(&client, records(1, 8000, 1000)).await;
    assert_eq!(report.delivered, 8000);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.distinct_event_ids(), 8000);
    assert!(ledger.max_body_bytes_seen <= 1024 * 1024 - 4096);
    assert_eq!(ledger.oversize_rejections, 0);
    assert!(
        report.requests < 8,
        "8 MB of JSON should need fewer than 8 compressed requests, got {}",
        report.requests
    );
}

#[tokio::test]
async fn storm_of_503_then_recovery_loses_nothing() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(1),
        count: Some(6),
        duration_secs: None,
    });
    let started = Instant::now();
    let report = deliver_all(&client, records(1, 3000, 1000)).await;
    assert_eq!(report.delivered, 3000);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.statuses.get(&503), Some(&6));
    assert_eq!(ledger.distinct_event_ids(), 3000);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(
        client.stats().retries.get(&RetryReason::Throttled),
        Some(&6)
    );
}

#[tokio::test]
async fn row_429_honours_retry_after_across_batches() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 429,
        retry_after_secs: Some(1),
        count: Some(1),
        duration_secs: None,
    });
    let started = Instant::now();
    let report = deliver_all(&client, records(1, 4000, 1000)).await;
    assert_eq!(report.delivered, 4000);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.statuses.get(&429), Some(&1));
    assert_eq!(ledger.distinct_event_ids(), 4000);
}

#[tokio::test]
async fn rows_408_500_502_504_and_resets_are_retried() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    for status in [408, 500, 502, 504] {
        tb.faults().inject(Fault::Status {
            target: Target::Ingestion,
            status,
            retry_after_secs: None,
            count: Some(1),
            duration_secs: None,
        });
    }
    tb.faults().inject(Fault::Reset {
        target: Target::Ingestion,
        count: Some(2),
    });
    let report = deliver_all(&client, records(1, 2000, 1000)).await;
    assert_eq!(report.delivered, 2000);
    let ledger = tb.ingestion().ledger();
    for status in [408, 500, 502, 504] {
        assert_eq!(
            ledger.statuses.get(&status),
            Some(&1),
            "status {status}: {:?}",
            ledger.statuses
        );
    }
    assert_eq!(ledger.distinct_event_ids(), 2000);
    let stats = client.stats();
    assert_eq!(stats.retries.get(&RetryReason::Timeout), Some(&2));
    assert_eq!(stats.retries.get(&RetryReason::ServerError), Some(&2));
    assert_eq!(stats.retries.get(&RetryReason::Transport), Some(&2));
}

#[tokio::test]
async fn request_id_is_stable_across_retries() {
    let tb = start(TestbenchConfig::default()).await;
    let mut cfg = ingest_config(&tb);
    cfg.max_in_flight = 1;
    let client = IngestClient::new(cfg, secret_credential(&tb)).unwrap();
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 500,
        retry_after_secs: None,
        count: Some(3),
        duration_secs: None,
    });
    let report = deliver_all(&client, records(1, 10, 500)).await;
    assert_eq!(report.delivered, 10);
    assert_eq!(report.requests, 4);
    let ids = tb.ingestion().ledger().client_request_ids;
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert!(uuid_shaped(&ids[0]), "{}", ids[0]);
    // A new batch gets a new id.
    deliver_all(&client, records(11, 10, 500)).await;
    let ids = tb.ingestion().ledger().client_request_ids;
    assert_eq!(ids.len(), 5);
    assert_ne!(ids[4], ids[0]);
}

fn uuid_shaped(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[tokio::test]
async fn token_expiry_mid_run_gets_a_fresh_token() {
    let tb = start(TestbenchConfig::default()).await;
    let mut cfg = ingest_config(&tb);
    cfg.max_in_flight = 2;
    let client = Arc::new(IngestClient::new(cfg, secret_credential(&tb)).unwrap());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = client.clone();
        let cancel = cancel.clone();
        async move {
            client
                .deliver(STREAM, records(1, 20_000, 1000), &cancel)
                .await
        }
    });
    eventually(Duration::from_secs(20), || {
        tb.ingestion().ledger().accepted_requests >= 3
    })
    .await;
    let issued_before = tb.entra().tokens_issued();
    tb.entra().expire_all_tokens();
    let report = within(Duration::from_secs(40), run).await.unwrap().unwrap();
    assert_eq!(report.delivered, 20_000);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.distinct_event_ids(), 20_000);
    assert!(
        ledger.statuses.get(&401).copied().unwrap_or(0) >= 1,
        "expiry was not observed: {:?}",
        ledger.statuses
    );
    assert!(
        tb.entra().tokens_issued() > issued_before,
        "no fresh token was fetched"
    );
    assert!(client.stats().token_resets >= 1);
}

#[tokio::test]
async fn token_expiry_between_deliveries() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    deliver_all(&client, records(1, 100, 500)).await;
    tb.entra().expire_all_tokens();
    let report = deliver_all(&client, records(101, 100, 500)).await;
    assert_eq!(report.delivered, 100);
    assert_eq!(tb.entra().tokens_issued(), 2);
    assert_eq!(tb.ingestion().ledger().statuses.get(&401), Some(&1));
}

#[tokio::test]
async fn poison_record_is_isolated_among_10000() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    let poison = event_id(4321);
    tb.faults().inject(Fault::RejectEventIds {
        event_ids: vec![poison.clone()],
    });
    let report = deliver_all(&client, records(1, 10_000, 1000)).await;
    assert_eq!(report.delivered, 9_999);
    assert_eq!(report.dead_letters.len(), 1);
    let dead = &report.dead_letters[0];
    assert_eq!(dead.id, 4321);
    assert_eq!(dead.reason, RejectReason::Rejected);
    assert_eq!(dead.status, Some(400));
    assert_eq!(dead.error_code.as_deref(), Some("InvalidRecord"));
    assert!(
        dead.message.as_deref().unwrap_or("").contains(&poison),
        "{dead:?}"
    );
    let refused_id = dead
        .client_request_id
        .as_deref()
        .expect("request id of the refused request");
    assert!(
        tb.ingestion()
            .ledger()
            .client_request_ids
            .iter()
            .any(|id| id == refused_id)
    );
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.distinct_event_ids(), 9_999);
    assert!(!ledger.event_ids.contains_key(&poison));
    assert_all_arrived(&tb, 1, 4320);
    assert_all_arrived(&tb, 4322, 10_000 - 4321);
    let stats = client.stats();
    assert!(stats.bisects >= 1);
    assert_eq!(stats.records_dead_lettered, 1);
    // Bisection is logarithmic: ~2 requests per level of a ~1,000-record batch.
    assert!(report.requests < 40, "{} requests", report.requests);
}

#[tokio::test]
async fn oversized_record_is_dead_lettered_without_sending() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    let mut recs = records(1, 50, 1000);
    recs.extend(records(51, 1, 1_200_000));
    recs.extend(records(52, 50, 1000));
    let report = deliver_all(&client, recs).await;
    assert_eq!(report.delivered, 100);
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(report.dead_letters[0].id, 51);
    assert_eq!(report.dead_letters[0].reason, RejectReason::RecordTooLarge);
    assert_eq!(report.dead_letters[0].status, None);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.oversize_rejections, 0);
    assert_eq!(ledger.distinct_event_ids(), 100);
}

#[tokio::test]
async fn row_413_splits_and_single_record_413_is_dead_lettered() {
    let tb = start(TestbenchConfig::default()).await;
    let client = client(&tb);
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 413,
        retry_after_secs: None,
        count: Some(1),
        duration_secs: None,
    });
    let report = deliver_all(&client, records(1, 200, 1000)).await;
    assert_eq!(report.delivered, 200);
    assert!(client.stats().splits >= 1);
    assert_eq!(tb.ingestion().ledger().distinct_event_ids(), 200);

    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 413,
        retry_after_secs: None,
        count: Some(1),
        duration_secs: None,
    });
    let report = deliver_all(&client, records(201, 1, 1000)).await;
    assert_eq!(report.delivered, 0);
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(report.dead_letters[0].reason, RejectReason::RecordTooLarge);
    assert_eq!(report.dead_letters[0].status, Some(413));
}

#[tokio::test]
async fn workload_identity_credential_gets_a_token() {
    let tb = start(TestbenchConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, federated_jwt()).unwrap();
    let spec = CredentialSpec::WorkloadIdentity {
        tenant_id: Some(tb.entra().tenant_id().to_owned()),
        client_id: Some(config::DEFAULT_WI_CLIENT_ID.to_owned()),
        token_file: Some(token_file),
    };
    let client = IngestClient::new(ingest_config(&tb), spec).unwrap();
    let report = deliver_all(&client, records(1, 100, 500)).await;
    assert_eq!(report.delivered, 100);
    assert_eq!(tb.entra().tokens_issued(), 1);
}

fn federated_jwt() -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "testbench"});
    let payload = serde_json::json!({
        "iss": config::DEFAULT_WI_ISSUER,
        "sub": config::DEFAULT_WI_SUBJECT,
        "aud": ["api://AzureADTokenExchange"],
        "exp": exp,
        "iat": exp - 3600,
        "nbf": exp - 3600,
    });
    format!("{}.{}.{}", b64(&header), b64(&payload), "c2lnbmF0dXJl")
}

#[tokio::test]
async fn forbidden_client_is_unhealthy_and_cancel_keeps_records() {
    let mut tb_config = TestbenchConfig::default();
    tb_config.ingestion.authorized_client_ids = vec!["somebody-else".to_owned()];
    let tb = start(tb_config).await;
    let client = Arc::new(client(&tb));
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = client.clone();
        let cancel = cancel.clone();
        async move { client.deliver(STREAM, records(1, 100, 500), &cancel).await }
    });
    eventually(Duration::from_secs(10), || !client.health().healthy).await;
    // Still retrying, not giving up: a second 403 arrives after the slow retry interval.
    eventually(Duration::from_secs(10), || {
        tb.ingestion()
            .ledger()
            .statuses
            .get(&403)
            .copied()
            .unwrap_or(0)
            >= 2
    })
    .await;
    let health = client.health();
    let stream = &health.streams[STREAM];
    assert!(stream.misconfigured);
    assert_eq!(stream.last_status, Some(403));
    assert!(
        health.last_error.as_deref().unwrap_or("").contains("403"),
        "{health:?}"
    );
    cancel.cancel();
    assert_eq!(
        within(Duration::from_secs(5), run).await.unwrap(),
        Err(DeliverError::Cancelled)
    );
    assert_eq!(tb.ingestion().ledger().records, 0);
    assert_eq!(client.stats().records_dead_lettered, 0);
}

#[tokio::test]
async fn unknown_stream_404_is_unhealthy_and_retried() {
    let tb = start(TestbenchConfig::default()).await;
    let client = Arc::new(client(&tb));
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = client.clone();
        let cancel = cancel.clone();
        async move {
            client
                .deliver("Custom-NoSuchStream", records(1, 10, 500), &cancel)
                .await
        }
    });
    eventually(Duration::from_secs(10), || {
        tb.ingestion()
            .ledger()
            .statuses
            .get(&404)
            .copied()
            .unwrap_or(0)
            >= 2
    })
    .await;
    let health = client.health();
    assert!(!health.healthy);
    assert!(health.streams["Custom-NoSuchStream"].misconfigured);
    cancel.cancel();
    assert_eq!(
        within(Duration::from_secs(5), run).await.unwrap(),
        Err(DeliverError::Cancelled)
    );
    // The other stream still works and its success does not hide the broken one.
    let report = deliver_all(&client, records(1, 10, 500)).await;
    assert_eq!(report.delivered, 10);
    assert!(!client.health().healthy);
}

#[test]
fn deliver_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let cfg = IngestConfig::new(url::Url::parse("https://dce.example/").unwrap(), "dcr-1");
    let spec = CredentialSpec::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        secret: "s".into(),
    };
    let client = IngestClient::new(cfg, spec).unwrap();
    let cancel = CancellationToken::new();
    let fut = client.deliver(STREAM, Vec::new(), &cancel);
    assert_send(&fut);
}

#[tokio::test]
async fn bad_client_secret_is_unhealthy_and_retried_not_dropped() {
    let tb = start(TestbenchConfig::default()).await;
    let spec = CredentialSpec::ClientSecret {
        tenant_id: tb.entra().tenant_id().to_owned(),
        client_id: config::DEFAULT_AZURE_CLIENT_ID.to_owned(),
        secret: "wrong-secret".to_owned(),
    };
    let client = Arc::new(IngestClient::new(ingest_config(&tb), spec).unwrap());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = client.clone();
        let cancel = cancel.clone();
        async move { client.deliver(STREAM, records(1, 10, 500), &cancel).await }
    });
    eventually(Duration::from_secs(10), || !client.health().healthy).await;
    assert!(
        client
            .stats()
            .retries
            .get(&RetryReason::Credential)
            .copied()
            .unwrap_or(0)
            >= 3
    );
    assert!(tb.entra().token_requests() >= 3);
    cancel.cancel();
    assert_eq!(
        within(Duration::from_secs(5), run).await.unwrap(),
        Err(DeliverError::Cancelled)
    );
    assert_eq!(client.stats().records_dead_lettered, 0);
    assert_eq!(tb.ingestion().ledger().records, 0);
}

#[tokio::test]
async fn transient_403_marks_unhealthy_then_recovers_without_loss() {
    let tb = start(TestbenchConfig::default()).await;
    let mut cfg = ingest_config(&tb);
    cfg.max_in_flight = 1;
    let client = Arc::new(IngestClient::new(cfg, secret_credential(&tb)).unwrap());
    // RBAC propagation: the first two requests are refused, then the role assignment lands.
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 403,
        retry_after_secs: None,
        count: Some(2),
        duration_secs: None,
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let client = client.clone();
        let cancel = cancel.clone();
        async move { client.deliver(STREAM, records(1, 500, 500), &cancel).await }
    });
    eventually(Duration::from_secs(10), || !client.health().healthy).await;
    let report = within(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert_eq!(report.delivered, 500);
    assert!(client.health().healthy);
    assert_eq!(tb.ingestion().ledger().statuses.get(&403), Some(&2));
    assert_eq!(tb.ingestion().ledger().distinct_event_ids(), 500);
}
