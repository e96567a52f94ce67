//! Dead letters to a Kafka topic, end to end in-process: the testbench (emulated Falcon,
//! Entra ID and Logs Ingestion API over real HTTPS) and librdkafka's mock cluster (real Kafka
//! protocol over loopback) with the bridge's pipeline, `dead-letter list` counting and
//! `dead-letter redrive`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bridge_buffer::kafka::{TopicReader, TopicWriter};
use falcon_sentinel_bridge::config::{self, Config};
use falcon_sentinel_bridge::dead_letter::{self, DeadLetter, Stage};
use falcon_sentinel_bridge::pipeline::{self, ServiceHandles};
use falcon_sentinel_bridge::{redrive, wiring};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use testbench::{Fault, Testbench, TestbenchConfig};
use tokio_util::sync::CancellationToken;

const AZURE_CLIENT_ID: &str = "5f1b7a3e-0c1d-4e2f-9a8b-7c6d5e4f3a2b";
const EVENTS: u64 = 30;
const WITHIN: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
falcon:
  base_url: ${TB_URL}
  client_id: testbench-falcon-client
  client_secret: { env: FALCON_SECRET }
  app_id: fsbridgedlq
  read_idle_timeout_secs: 10
buffer:
  type: kafka
  brokers: ["${BROKERS}"]
  topic: events
  checkpoint_topic: events-checkpoint
  group_id: bridge
  librdkafka_options:
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
sentinel:
  endpoint: ${TB_URL}
  dcr_immutable_id: dcr-00000000000000000000000000000001
  authority_host: ${TB_URL}
  default_stream: Custom-FalconEvents
  credential:
    type: client_secret
    tenant_id: 00000000-0000-0000-0000-0000000000aa
    client_id: 5f1b7a3e-0c1d-4e2f-9a8b-7c6d5e4f3a2b
    client_secret: { env: AZURE_SECRET }
  batch_linger_ms: 50
  retry_max_secs: 1
dead_letter:
  type: kafka
  topic: dead-letters
admin:
  listen: 127.0.0.1:0
shutdown_grace_secs: 5
health:
  enabled: false
tls:
  extra_ca_files: ["${CA_FILE}"]
"#;

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counts(pairs: &[(&str, &str, usize)]) -> BTreeMap<(String, String), usize> {
    pairs
        .iter()
        .map(|(s, r, n)| (((*s).to_owned(), (*r).to_owned()), *n))
        .collect()
}

/// A mock cluster with the three topics, the testbench refusing one event, and the config.
struct Setup {
    _mock: MockCluster<'static, DefaultProducerContext>,
    tb: Testbench,
    _dir: tempfile::TempDir,
    cfg: Config,
    env: HashMap<String, String>,
    ids: Vec<String>,
    refused_id: String,
}

async fn setup() -> Setup {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for (topic, partitions) in [("events", 2), ("events-checkpoint", 1), ("dead-letters", 2)] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }

    let mut tb_config = TestbenchConfig::default();
    tb_config.falcon.partitions = 1;
    tb_config.entra.clients.push(testbench::EntraClient {
        client_id: AZURE_CLIENT_ID.to_owned(),
        credential: testbench::EntraCredential::Secret("azure-secret".to_owned()),
    });
    tb_config
        .ingestion
        .authorized_client_ids
        .push(AZURE_CLIENT_ID.to_owned());
    let tb = Testbench::start(tb_config).await.unwrap();
    tb.falcon().append_events(0, EVENTS);
    let ids = tb.falcon().expected_event_ids();
    let refused_id = ids[7].clone();
    tb.faults().inject(Fault::RejectEventIds {
        event_ids: vec![refused_id.clone()],
    });

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, tb.ca_pem()).unwrap();
    let env: HashMap<String, String> = HashMap::from([
        (
            "TB_URL".to_owned(),
            tb.url().as_str().trim_end_matches('/').to_owned(),
        ),
        ("BROKERS".to_owned(), mock.bootstrap_servers()),
        ("CA_FILE".to_owned(), ca_file.display().to_string()),
        (
            "FALCON_SECRET".to_owned(),
            "testbench-falcon-secret".to_owned(),
        ),
        ("AZURE_SECRET".to_owned(), "azure-secret".to_owned()),
    ]);
    let cfg: Config = config::load_str(CONFIG, "dlq.yaml", &env)
        .unwrap_or_else(|errors| panic!("test config invalid:\n{errors}"));
    Setup {
        _mock: mock,
        tb,
        _dir: dir,
        cfg,
        env,
        ids,
        refused_id,
    }
}

/// Runs the service until every event is delivered or dead-lettered.
async fn run_service(s: &Setup) {
    // The service: every event but one delivered, that one dead-lettered to the topic.
    let shutdown = CancellationToken::new();
    let (handles_tx, handles_rx) = tokio::sync::oneshot::channel::<ServiceHandles>();
    let service = tokio::spawn({
        let (cfg, env, shutdown) = (s.cfg.clone(), s.env.clone(), shutdown.clone());
        async move {
            pipeline::run(cfg, &env, shutdown, move |h| {
                let _ = handles_tx.send(h);
            })
            .await
        }
    });
    let handles = tokio::time::timeout(WITHIN, handles_rx)
        .await
        .unwrap()
        .unwrap();
    wait_for("delivery and the dead letter", || {
        handles.dead_letters.written() == 1
            && s.tb.ingestion().ledger().event_ids.len() == s.ids.len() - 1
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(WITHIN, service)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        !s.tb
            .ingestion()
            .ledger()
            .event_ids
            .contains_key(&s.refused_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_go_to_the_topic_are_listed_and_redriven() {
    let s = setup().await;
    run_service(&s).await;
    let Setup {
        tb,
        cfg,
        env,
        ids,
        refused_id,
        ..
    } = &s;
    // The letter in the topic: one message keyed by Falcon partition, with the raw record,
    // reason, status, Azure's error and the time.
    let kafka = wiring::dead_letter_kafka(cfg, env).unwrap().unwrap();
    assert_eq!(kafka.redrive_group, "bridge-dead-letter-redrive");
    let mut inspector = TopicReader::connect(&kafka.connection, "dead-letters", "inspector")
        .await
        .unwrap();
    let messages = inspector.next_batch(10).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key.as_deref(), Some(&b"0"[..]));
    let letter: DeadLetter = serde_json::from_slice(&messages[0].payload).unwrap();
    assert_eq!(letter.stage, Stage::Sentinel);
    assert_eq!(letter.reason, "azure_rejected");
    assert_eq!(letter.status, Some(400));
    assert!(
        letter.error_code.is_some() || letter.message.is_some(),
        "{letter:?}"
    );
    assert!(!letter.time.is_empty());
    let offset: u64 = refused_id.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(letter.offset, Some(offset));
    let raw = String::from_utf8(letter.complete_raw().unwrap()).unwrap();
    assert!(raw.contains(&format!("\"offset\":{offset}")), "{raw}");

    // A source letter in the same topic is counted, and kept by redrive.
    let mut source = DeadLetter::new(Stage::Source, "invalid_json", 0);
    source.set_raw(b"{not json", 1024);
    let writer = TopicWriter::connect(&kafka.connection, "dead-letters")
        .await
        .unwrap();
    writer
        .send("0", vec![serde_json::to_vec(&source).unwrap()])
        .await
        .unwrap();

    assert_eq!(
        dead_letter::count_kafka_letters(&kafka).await.unwrap(),
        counts(&[
            ("sentinel", "azure_rejected", 1),
            ("source", "invalid_json", 1)
        ])
    );

    // Redrive while the DCR is still broken: refused again, produced anew, listed again.
    let idle = CancellationToken::new();
    let summary = redrive::redrive(cfg, env, &idle).await.unwrap().unwrap();
    assert_eq!(
        summary,
        redrive::Summary {
            delivered: 0,
            refused: 1,
            kept: 1
        }
    );
    assert_eq!(
        dead_letter::count_kafka_letters(&kafka).await.unwrap(),
        counts(&[("sentinel", "azure_rejected", 1)])
    );

    // The operator fixed the DCR: the record arrives, nothing is pending any more.
    tb.faults().clear();
    let summary = redrive::redrive(cfg, env, &idle).await.unwrap().unwrap();
    assert_eq!(
        summary,
        redrive::Summary {
            delivered: 1,
            refused: 0,
            kept: 0
        }
    );
    let ledger = tb.ingestion().ledger();
    assert!(ledger.event_ids.contains_key(refused_id));
    assert_eq!(ledger.event_ids.len(), ids.len());
    assert!(
        dead_letter::count_kafka_letters(&kafka)
            .await
            .unwrap()
            .is_empty()
    );
    let summary = redrive::redrive(cfg, env, &idle).await.unwrap().unwrap();
    assert_eq!(summary, redrive::Summary::default());
}
