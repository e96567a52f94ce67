//! The real binary, the disk buffer, the testbench: delivery, clean restarts, outages,
//! bad input and `validate`.

use std::time::Duration;

use e2e::{
    BridgeOptions, eventually, free_port, log_tail, managed_identity_env, missing_event_ids,
    spawn_bridge, spawn_bridge_with_env, terminate, testbench_config, write_config,
};
use testbench::{Fault, MalformedKind, Target, Testbench};

async fn testbench(partitions: u32) -> Testbench {
    Testbench::start(testbench_config(partitions))
        .await
        .expect("start testbench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_and_restarts_cleanly_after_sigterm() {
    let tb = testbench(2).await;
    tb.falcon().append_events(0, 6_000);
    tb.falcon().append_events(1, 4_000);
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            admin_port,
            ..BridgeOptions::default()
        },
    );

    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    let all_there = eventually(Duration::from_secs(90), || {
        missing_event_ids(&tb).is_empty()
    })
    .await;
    assert!(
        all_there,
        "events missing; log:\n{}",
        log_tail(dir.path(), 0)
    );

    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://127.0.0.1:{admin_port}/ready"))
        .send()
        .await
        .expect("admin /ready");
    assert_eq!(ready.status(), 200, "not ready: {:?}", ready.text().await);
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("admin /metrics")
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fsb_writer_records_delivered_total"),
        "{metrics}"
    );

    let status = terminate(&mut bridge, Duration::from_secs(20));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log:\n{}",
        log_tail(dir.path(), 0)
    );

    // A clean stop acknowledged everything it delivered: a restart resends nothing, and
    // new events flow from exactly where the first run stopped.
    tb.falcon().append_events(0, 500);
    tb.falcon().append_events(1, 500);
    let mut bridge = spawn_bridge(&config, dir.path(), 1);
    let all_there = eventually(Duration::from_mins(1), || missing_event_ids(&tb).is_empty()).await;
    assert!(
        all_there,
        "events missing after restart; log:\n{}",
        log_tail(dir.path(), 1)
    );
    let status = terminate(&mut bridge, Duration::from_secs(20));
    assert!(status.success());
    let ledger = tb.ingestion().ledger();
    assert_eq!(
        ledger.duplicates, 0,
        "a clean restart must not resend anything"
    );
    assert_eq!(ledger.event_ids.len(), 11_000);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_outage_fills_the_buffer_then_drains_with_nothing_lost() {
    let tb = testbench(1).await;
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(1),
        count: None,
        duration_secs: Some(4),
    });
    tb.falcon().append_events(0, 5_000);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&tb, dir.path(), &BridgeOptions::default());
    let mut bridge = spawn_bridge(&config, dir.path(), 0);

    let all_there = eventually(Duration::from_secs(90), || {
        missing_event_ids(&tb).is_empty()
    })
    .await;
    assert!(
        all_there,
        "events missing; log:\n{}",
        log_tail(dir.path(), 0)
    );
    let ledger = tb.ingestion().ledger();
    assert!(
        ledger.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the outage was never seen: {:?}",
        ledger.statuses
    );
    assert_eq!(ledger.oversize_rejections, 0);
    assert!(terminate(&mut bridge, Duration::from_secs(20)).success());
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_red_while_the_dcr_refuses_us_and_nothing_is_lost() {
    let tb = testbench(1).await;
    // RBAC not propagated yet: 403 for a while, then accepted.
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 403,
        retry_after_secs: None,
        count: None,
        duration_secs: Some(6),
    });
    tb.falcon().append_events(0, 3_000);
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            admin_port,
            ..BridgeOptions::default()
        },
    );
    let mut bridge = spawn_bridge(&config, dir.path(), 0);
    let client = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{admin_port}/ready");
    let mut saw_red = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while saw_red.is_none() && std::time::Instant::now() < deadline {
        if let Ok(response) = client.get(&ready_url).send().await
            && response.status() == 503
        {
            let body = response.text().await.unwrap_or_default();
            if body.contains("refuses stream") {
                saw_red = Some(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = saw_red.unwrap_or_else(|| {
        panic!(
            "/ready never reported the 403; log:\n{}",
            log_tail(dir.path(), 0)
        )
    });
    assert!(body.contains("Custom-Falcon"), "{body}");

    let all_there = eventually(Duration::from_mins(1), || missing_event_ids(&tb).is_empty()).await;
    assert!(
        all_there,
        "events missing; log:\n{}",
        log_tail(dir.path(), 0)
    );
    let ready = client.get(&ready_url).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    assert!(terminate(&mut bridge, Duration::from_secs(20)).success());
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_and_refused_records_are_dead_lettered_while_the_rest_flows() {
    let tb = testbench(1).await;
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 100,
        kind: MalformedKind::InvalidJson,
    });
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 200,
        kind: MalformedKind::InvalidUtf8,
    });
    let customer = tb.falcon().customer_id().to_owned();
    let poison = format!("{customer}:0:300");
    tb.faults().inject(Fault::RejectEventIds {
        event_ids: vec![poison.clone()],
    });
    tb.falcon().append_events(0, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&tb, dir.path(), &BridgeOptions::default());
    let mut bridge = spawn_bridge(&config, dir.path(), 0);

    let bad = [
        format!("{customer}:0:100"),
        format!("{customer}:0:200"),
        poison.clone(),
    ];
    let rest_there = eventually(Duration::from_secs(90), || {
        missing_event_ids(&tb).iter().all(|id| bad.contains(id))
    })
    .await;
    assert!(
        rest_there,
        "good events missing; log:\n{}",
        log_tail(dir.path(), 0)
    );
    assert!(terminate(&mut bridge, Duration::from_secs(20)).success());

    let mut letters = String::new();
    for entry in std::fs::read_dir(dir.path().join("dead-letter")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            letters.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let lines: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead letter is JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "{letters}");
    assert_eq!(
        lines.iter().filter(|l| l["stage"] == "source").count(),
        2,
        "{letters}"
    );
    let refused: Vec<_> = lines.iter().filter(|l| l["stage"] == "sentinel").collect();
    assert_eq!(refused.len(), 1, "{letters}");
    assert_eq!(refused[0]["offset"], 300);
    assert_eq!(refused[0]["status"], 400);

    // The operator fixes the cause (here: the emulator stops refusing it), lists, redrives.
    let list = run_cli(&["dead-letter", "list"], &config);
    assert!(list.status.success(), "{list:?}");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("3 dead letters"), "{listed}");
    assert!(listed.contains("azure_rejected"), "{listed}");

    tb.faults().clear();
    let redrive = run_cli(&["dead-letter", "redrive"], &config);
    let said = String::from_utf8_lossy(&redrive.stdout);
    assert!(
        redrive.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    assert!(said.contains("1 delivered"), "{said}");
    assert!(
        tb.ingestion().ledger().event_ids.contains_key(&poison),
        "the redriven record arrived"
    );
    // The two source letters (never events) are kept; the original file moved aside.
    let list = run_cli(&["dead-letter", "list"], &config);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("2 dead letters"), "{listed}");
    assert!(!listed.contains("azure_rejected"), "{listed}");
    assert!(
        dir.path()
            .join("dead-letter/redriven")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    tb.shutdown().await;
}

fn run_cli(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(e2e::bridge_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("FALCON_CLIENT_SECRET", "testbench-falcon-secret")
        .env("AZURE_CLIENT_SECRET", "testbench-azure-secret")
        .output()
        .expect("run falcon-sentinel-bridge")
}

/// `credential.type: managed_identity` (user-assigned, by client id) through azure_identity's
/// `ManagedIdentityCredential` over the App Service protocol (`IDENTITY_ENDPOINT` +
/// `IDENTITY_HEADER`, the managed-identity source whose address a test can choose): every
/// event arrives, the tokens come from the managed-identity endpoint (not the Entra token
/// endpoint), and an expired token is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_credential_delivers_and_renews_its_token() {
    let tb = testbench(1).await;
    tb.falcon().append_events(0, 3_000);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &tb,
        dir.path(),
        &BridgeOptions {
            managed_identity: true,
            ..BridgeOptions::default()
        },
    );
    let mut bridge = spawn_bridge_with_env(&config, dir.path(), 0, &managed_identity_env(&tb));
    let delivered = eventually(Duration::from_mins(1), || missing_event_ids(&tb).is_empty()).await;
    assert!(delivered, "log:\n{}", log_tail(dir.path(), 0));
    let issued = tb.entra().tokens_issued();
    assert!(issued >= 1, "no token was issued");
    assert!(
        tb.entra()
            .audiences()
            .iter()
            .all(|a| a == "https://monitor.azure.com"),
        "audiences: {:?}",
        tb.entra().audiences()
    );

    // The cached token stops working: the bridge gets a new one from the endpoint.
    tb.entra().expire_all_tokens();
    tb.falcon().append_events(0, 1_000);
    let delivered = eventually(Duration::from_mins(1), || missing_event_ids(&tb).is_empty()).await;
    assert!(delivered, "log:\n{}", log_tail(dir.path(), 0));
    assert!(
        tb.entra().tokens_issued() > issued,
        "no new token after the old one expired"
    );
    assert!(terminate(&mut bridge, Duration::from_secs(20)).success());
    tb.shutdown().await;
}
