//! Conformance tests: each documented behaviour of the three emulators, over real HTTPS
//! with the testbench's generated CA.
#![allow(clippy::too_many_lines)] // each scenario reads top to bottom like the reference it checks

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use testbench::{Fault, LineEnding, MalformedKind, Target, Testbench, TestbenchConfig};

const INGEST_SCOPE: &str = "https://monitor.azure.com/.default";

fn client(tb: &Testbench) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(tb.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn start(config: TestbenchConfig) -> (Testbench, reqwest::Client) {
    let tb = Testbench::start(config).await.unwrap();
    let c = client(&tb);
    (tb, c)
}

fn small(initial_events: u64) -> TestbenchConfig {
    let mut config = TestbenchConfig::default();
    config.falcon.initial_events = initial_events;
    config.falcon.refresh_interval_secs = 2;
    config.falcon.keepalive_interval_ms = 100;
    config.falcon.event_size_bytes = 400;
    config
}

async fn falcon_token(tb: &Testbench, c: &reqwest::Client) -> String {
    let resp = c
        .post(tb.url().join("oauth2/token").unwrap())
        .form(&[
            ("client_id", "testbench-falcon-client"),
            ("client_secret", "testbench-falcon-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn discover(tb: &Testbench, c: &reqwest::Client, token: &str, app_id: &str) -> Value {
    let resp = c
        .get(tb.url().join("sensors/entities/datafeed/v2").unwrap())
        .query(&[("appId", app_id), ("format", "json")])
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn open_feed(c: &reqwest::Client, resource: &Value, extra: &str) -> reqwest::Response {
    let url = format!("{}{extra}", resource["dataFeedURL"].as_str().unwrap());
    c.get(url)
        .header(
            "Authorization",
            format!(
                "Token {}",
                resource["sessionToken"]["token"].as_str().unwrap()
            ),
        )
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
}

/// Read raw feed bytes until `done` holds or the deadline passes.
async fn read_until(resp: &mut reqwest::Response, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    while !done(&buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "condition not reached; got {} bytes",
            buf.len()
        );
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        }
    }
    buf
}

fn event_lines(buf: &[u8]) -> Vec<Value> {
    buf.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

fn offsets(buf: &[u8]) -> Vec<u64> {
    event_lines(buf)
        .iter()
        .map(|v| v["metadata"]["offset"].as_u64().unwrap())
        .collect()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- Falcon

#[tokio::test]
async fn falcon_token_is_201_with_headers_and_bad_credentials_are_401() {
    let (tb, c) = start(small(0)).await;
    let resp = c
        .post(tb.url().join("oauth2/token").unwrap())
        .form(&[
            ("client_id", "testbench-falcon-client"),
            ("client_secret", "testbench-falcon-secret"),
            ("member_cid", "abc"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-cs-region"], "us-1");
    assert!(resp.headers().contains_key("x-ratelimit-limit"));
    assert!(resp.headers().contains_key("x-ratelimit-remaining"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 1799);
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    let resp = c
        .post(tb.url().join("oauth2/token").unwrap())
        .form(&[
            ("client_id", "testbench-falcon-client"),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 401);
    assert!(body["meta"]["trace_id"].is_string());
    assert_eq!(tb.falcon().stats().token_requests, 2);
    tb.shutdown().await;
}

#[tokio::test]
async fn discover_returns_one_resource_per_partition_and_validates_app_id() {
    let mut config = small(0);
    config.falcon.partitions = 2;
    let (tb, c) = start(config).await;
    let resp = c
        .get(
            tb.url()
                .join("sensors/entities/datafeed/v2?appId=x")
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no bearer");
    let token = falcon_token(&tb, &c).await;
    let body = discover(&tb, &c, &token, "fsb-test.1_a").await;
    let resources = body["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 2);
    let base = tb.url();
    for (p, r) in resources.iter().enumerate() {
        assert_eq!(
            r["dataFeedURL"],
            format!("{base}sensors/entities/datafeed/v1/{p}?appId=fsb-test.1_a")
        );
        assert_eq!(
            r["refreshActiveSessionURL"],
            format!(
                "{base}sensors/entities/datafeed-actions/v1/{p}?appId=fsb-test.1_a&action_name=refresh_active_stream_session"
            )
        );
        assert_eq!(r["refreshActiveSessionInterval"], 2);
        assert!(r["sessionToken"]["token"].is_string());
        let exp = r["sessionToken"]["expiration"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
    }
    assert_eq!(body["meta"]["powered_by"], "FalconHose");
    for bad in ["", "has space", "a/b", &"x".repeat(33)] {
        let resp = c
            .get(tb.url().join("sensors/entities/datafeed/v2").unwrap())
            .query(&[("appId", bad)])
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "appId {bad:?}");
    }
    tb.shutdown().await;
}

#[tokio::test]
async fn held_app_id_gets_empty_resources_until_released() {
    let (tb, c) = start(small(3)).await;
    let token = falcon_token(&tb, &c).await;
    let first = discover(&tb, &c, &token, "held").await;
    let mut feed = open_feed(&c, &first["resources"][0], "&offset=1").await;
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, |b| offsets(b).len() == 3).await;
    let second = discover(&tb, &c, &token, "held").await;
    assert_eq!(
        second["resources"].as_array().unwrap().len(),
        0,
        "appId held by an open feed"
    );
    let other = discover(&tb, &c, &token, "other").await;
    assert_eq!(other["resources"].as_array().unwrap().len(), 1);
    drop(feed);
    wait_for("feed closed", || tb.falcon().stats().open_feeds == 0).await;
    // Not refreshed, feed closed: the appId is free again.
    let third = discover(&tb, &c, &token, "held").await;
    assert_eq!(third["resources"].as_array().unwrap().len(), 1);
    assert_eq!(tb.falcon().stats().discovers_empty, 1);
    tb.shutdown().await;
}

#[tokio::test]
async fn feed_offset_is_inclusive_and_default_starts_at_oldest() {
    let (tb, c) = start(small(10)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "offsets").await;
    let mut feed = open_feed(&c, &r["resources"][0], "&offset=4").await;
    assert_eq!(feed.status(), 200);
    assert_eq!(
        feed.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    let buf = read_until(&mut feed, |b| offsets(b).len() == 7).await;
    assert_eq!(offsets(&buf), (4..=10).collect::<Vec<_>>());
    // Lines are exactly what event_line says, and event ids match the metadata.
    let line = buf.split(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap();
    assert_eq!(tb.falcon().event_line(0, 4).unwrap(), line);
    let v = &event_lines(&buf)[0];
    assert_eq!(v["metadata"]["customerIDString"], tb.falcon().customer_id());
    tb.falcon().append_events(0, 2);
    let buf = read_until(&mut feed, |b| offsets(b).len() == 2).await;
    assert_eq!(offsets(&buf), vec![11, 12]);
    drop(feed);
    wait_for("feed closed", || tb.falcon().stats().open_feeds == 0).await;

    let r = discover(&tb, &c, &token, "offsets").await;
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    let buf = read_until(&mut feed, |b| offsets(b).len() == 12).await;
    assert_eq!(offsets(&buf), (1..=12).collect::<Vec<_>>());
    assert_eq!(
        tb.falcon().stats().feed_opens_with_offset,
        vec![(0, Some(4)), (0, None)]
    );
    assert_eq!(tb.falcon().expected_event_ids().len(), 12);
    assert_eq!(
        tb.falcon().expected_event_ids()[0],
        format!("{}:0:1", tb.falcon().customer_id())
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn whence_2_starts_at_new_events_and_event_type_filters() {
    let (tb, c) = start(small(50)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "whence").await;
    let mut feed = open_feed(&c, &r["resources"][0], "&whence=2").await;
    assert_eq!(feed.status(), 200);
    wait_for("feed open", || tb.falcon().stats().open_feeds == 1).await;
    tb.falcon().append_events(0, 1);
    let buf = read_until(&mut feed, |b| !offsets(b).is_empty()).await;
    assert_eq!(offsets(&buf), vec![51]);
    drop(feed);
    wait_for("feed closed", || tb.falcon().stats().open_feeds == 0).await;

    let wanted = tb.falcon().event_type(0, 1);
    let expected: Vec<u64> = (1..=51)
        .filter(|o| tb.falcon().event_type(0, *o).eq_ignore_ascii_case(wanted))
        .collect();
    let r = discover(&tb, &c, &token, "whence").await;
    let mut feed = open_feed(
        &c,
        &r["resources"][0],
        &format!("&offset=1&eventType={wanted},NoSuchEvent"),
    )
    .await;
    // Keepalives prove the server reached the end of the partition.
    let buf = read_until(&mut feed, |b| {
        offsets(b).len() == expected.len() && b.ends_with(b"\n\n")
    })
    .await;
    assert_eq!(offsets(&buf), expected);
    assert!(expected.len() < 51);
    tb.shutdown().await;
}

#[tokio::test]
async fn idle_feed_sends_blank_keepalives_and_crlf_is_honoured() {
    let mut config = small(2);
    config.falcon.line_ending = LineEnding::Crlf;
    let (tb, c) = start(config).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "ka").await;
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    let buf = read_until(&mut feed, |b| {
        offsets(b).len() == 2 && b.ends_with(b"\r\n\r\n\r\n")
    })
    .await;
    assert_eq!(offsets(&buf), vec![1, 2]);
    assert!(
        buf.ends_with(b"\r\n\r\n\r\n"),
        "two blank CRLF keepalives after the last event"
    );
    assert!(
        !buf.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "every line ends in CRLF"
    );
    assert!(tb.falcon().stats().keepalives_sent >= 2);
    tb.shutdown().await;
}

#[tokio::test]
async fn refresh_needs_content_type_then_200_and_404_after_expiry() {
    let (tb, c) = start(small(1)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "refresh").await;
    let url = r["resources"][0]["refreshActiveSessionURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = c.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 415);
    let resp = c.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "bearer required");
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"], json!([]));
    assert!(body["meta"].is_object());

    // A refreshed session holds the appId even without an open feed.
    let held = discover(&tb, &c, &token, "refresh").await;
    assert!(held["resources"].as_array().unwrap().is_empty());

    // Open the feed and stop refreshing: the server closes it and refresh answers 404.
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    assert_eq!(feed.status(), 200);
    let started = Instant::now();
    let buf = read_until(&mut feed, |_| false).await;
    assert_eq!(offsets(&buf), vec![1]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "feed closed at session expiry"
    );
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let stats = tb.falcon().stats();
    assert_eq!(
        (
            stats.refresh_415,
            stats.refreshes,
            stats.refresh_404,
            stats.sessions_expired
        ),
        (1, 1, 1, 1)
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn session_token_is_single_use_and_unknown_tokens_get_401() {
    let (tb, c) = start(small(1)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "stale").await;
    let feed = open_feed(&c, &r["resources"][0], "").await;
    assert_eq!(feed.status(), 200);
    drop(feed);
    wait_for("feed closed", || tb.falcon().stats().open_feeds == 0).await;
    let again = open_feed(&c, &r["resources"][0], "").await;
    assert_eq!(again.status(), 401);
    let mut forged = r["resources"][0].clone();
    forged["sessionToken"]["token"] = json!("nope");
    assert_eq!(open_feed(&c, &forged, "").await.status(), 401);
    let bearer = c
        .get(r["resources"][0]["dataFeedURL"].as_str().unwrap())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401, "the feed wants `Token`, not `Bearer`");
    assert_eq!(tb.falcon().stats().stale_token_rejections, 3);
    tb.shutdown().await;
}

#[tokio::test]
async fn falcon_429_carries_epoch_retry_after() {
    let (tb, c) = start(small(0)).await;
    tb.faults().inject(Fault::Status {
        target: Target::FalconToken,
        status: 429,
        retry_after_secs: Some(30),
        count: Some(1),
        duration_secs: None,
    });
    let resp = c
        .post(tb.url().join("oauth2/token").unwrap())
        .form(&[("client_id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let at: u64 = resp.headers()["x-ratelimit-retryafter"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 25..=now + 35).contains(&at),
        "epoch seconds, got {at}"
    );
    let token = falcon_token(&tb, &c).await; // count exhausted
    tb.faults().inject(Fault::Status {
        target: Target::FalconDiscover,
        status: 500,
        retry_after_secs: None,
        count: Some(2),
        duration_secs: None,
    });
    for _ in 0..2 {
        let resp = c
            .get(
                tb.url()
                    .join("sensors/entities/datafeed/v2?appId=a")
                    .unwrap(),
            )
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
    }
    assert_eq!(
        discover(&tb, &c, &token, "a").await["resources"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    tb.shutdown().await;
}

// ---------------------------------------------------------------- Entra

fn jwt(claims: &Value) -> String {
    let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        e(br#"{"alg":"RS256","typ":"JWT"}"#),
        e(claims.to_string().as_bytes()),
        e(b"signature")
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn entra_post(tb: &Testbench, c: &reqwest::Client, form: &[(&str, &str)]) -> (u16, Value) {
    let url = tb
        .url()
        .join("00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token")
        .unwrap();
    let resp = c.post(url).form(form).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn azure_token(tb: &Testbench, c: &reqwest::Client, scope: &str) -> String {
    let (status, body) = entra_post(
        tb,
        c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "testbench-azure-client"),
            ("client_secret", "testbench-azure-secret"),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn entra_issues_tokens_for_secret_and_assertion_and_refuses_like_aad() {
    let (tb, c) = start(small(0)).await;
    let (status, body) = entra_post(
        &tb,
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "testbench-azure-client"),
            ("client_secret", "testbench-azure-secret"),
            ("scope", INGEST_SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);

    let good = json!({"iss": "https://oidc.testbench.local", "sub": "system:serviceaccount:security:falcon-sentinel-bridge", "aud": "api://AzureADTokenExchange", "exp": now_secs() + 600});
    let assertion = jwt(&good);
    let wi = |a: String| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", "testbench-wi-client".to_owned()),
            ("scope", INGEST_SCOPE.to_owned()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", a),
        ]
    };
    let post = |form: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = tb
            .url()
            .join("00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token")
            .unwrap();
        async move {
            let resp = c.post(url).form(&form).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(post(wi(assertion)).await.0, 200);
    let mut expired = good.clone();
    expired["exp"] = json!(now_secs() - 10);
    let (status, body) = post(wi(jwt(&expired))).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700_024))
    );
    let mut wrong_sub = good.clone();
    wrong_sub["sub"] = json!("system:serviceaccount:other:sa");
    let (status, body) = post(wi(jwt(&wrong_sub))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client"))
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("https://management.azure.com");
    assert_eq!(post(wi(jwt(&wrong_aud))).await.0, 400);
    assert_eq!(post(wi("not-a-jwt".to_owned())).await.0, 400);

    let (status, body) = entra_post(
        &tb,
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "testbench-azure-client"),
            ("client_secret", "bad"),
            ("scope", INGEST_SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7_000_215]));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215:")
    );
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key}");
    }
    let (status, body) = entra_post(
        &tb,
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", "x"),
            ("scope", INGEST_SCOPE),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700_016))
    );
    let (status, body) = entra_post(
        &tb,
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "testbench-azure-client"),
            ("client_secret", "testbench-azure-secret"),
            ("scope", "https://monitor.azure.com"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(70_011))
    );
    assert_eq!(tb.entra().tokens_issued(), 2);
    tb.shutdown().await;
}

// ---------------------------------------------------------------- Logs Ingestion

fn ingest_url(tb: &Testbench, stream: &str) -> String {
    format!(
        "{}dataCollectionRules/dcr-00000000000000000000000000000001/streams/{stream}?api-version=2023-01-01",
        tb.url()
    )
}

fn record(id: &str) -> Value {
    json!({"TimeGenerated": "2026-01-01T00:00:00Z", "EventId": id, "EventType": "X", "CustomerId": "c", "Partition": 0, "Offset": 1, "Event": {}})
}

async fn ingest(c: &reqwest::Client, url: &str, token: &str, body: &Value) -> reqwest::Response {
    c.post(url)
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn ingestion_answers_like_azure() {
    let mut config = small(0);
    config.entra.clients.push(testbench::EntraClient {
        client_id: "unauthorized".into(),
        credential: testbench::EntraCredential::Secret("s".into()),
    });
    let (tb, c) = start(config).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let url = ingest_url(&tb, "Custom-FalconEvents");

    let resp = ingest(&c, &url, &token, &json!([record("a"), record("b")])).await;
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().contains_key("x-ms-request-id"));

    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["x-ms-error-code"], code);
        assert!(resp.headers().contains_key("x-ms-request-id"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        body["error"]["message"].as_str().unwrap().to_owned()
    };
    let no_version = url.replace("?api-version=2023-01-01", "");
    check(
        ingest(&c, &no_version, &token, &json!([])).await,
        400,
        "MissingApiVersionParameter",
    )
    .await;
    check(
        ingest(
            &c,
            &url.replace("2023-01-01", "1999-01-01"),
            &token,
            &json!([]),
        )
        .await,
        400,
        "InvalidApiVersionParameter",
    )
    .await;
    check(
        ingest(&c, &url, "bogus", &json!([])).await,
        401,
        "InvalidToken",
    )
    .await;
    let mgmt = azure_token(&tb, &c, "https://management.azure.com/.default").await;
    check(
        ingest(&c, &url, &mgmt, &json!([])).await,
        401,
        "InvalidAudience",
    )
    .await;
    let (_, body) = entra_post(
        &tb,
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "unauthorized"),
            ("client_secret", "s"),
            ("scope", INGEST_SCOPE),
        ],
    )
    .await;
    let msg = check(
        ingest(&c, &url, body["access_token"].as_str().unwrap(), &json!([])).await,
        403,
        "OperationFailed",
    )
    .await;
    assert!(msg.contains("dcr-00000000000000000000000000000001"));
    let msg = check(
        ingest(&c, &url.replace("dcr-0000", "dcr-9999"), &token, &json!([])).await,
        404,
        "NotFound",
    )
    .await;
    assert!(msg.contains("not found"));
    check(
        ingest(&c, &ingest_url(&tb, "Custom-Nope"), &token, &json!([])).await,
        404,
        "NotFound",
    )
    .await;
    check(
        ingest(&c, &url, &token, &json!({"EventId": "a"})).await,
        400,
        "InvalidPayload",
    )
    .await;
    check(
        ingest(&c, &url, &token, &json!([1, 2])).await,
        400,
        "InvalidPayload",
    )
    .await;

    // Double-slash scope form is accepted.
    let token2 = azure_token(&tb, &c, "https://monitor.azure.com//.default").await;
    assert_eq!(
        ingest(&c, &url, &token2, &json!([record("c")]))
            .await
            .status(),
        204
    );

    tb.entra().expire_all_tokens();
    check(
        ingest(&c, &url, &token, &json!([record("d")])).await,
        401,
        "InvalidToken",
    )
    .await;

    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.requests, 12);
    assert_eq!(ledger.accepted_requests, 2);
    assert_eq!(ledger.records, 3);
    assert_eq!(ledger.statuses.get(&204), Some(&2));
    assert_eq!(ledger.statuses.get(&401), Some(&3));
    assert_eq!(ledger.client_request_ids.len(), 12);
    assert!(
        ledger
            .client_request_ids
            .iter()
            .all(|id| uuid::Uuid::parse_str(id).is_ok())
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn ingestion_enforces_wire_limit_and_accepts_gzip() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let url = ingest_url(&tb, "Custom-FalconDetections");
    let big: Vec<Value> = (0..800)
        .map(|i| {
            let mut r = record(&format!("big-{i}"));
            r["Event"] = json!({"pad": "x".repeat(1400)});
            r
        })
        .collect();
    let raw = serde_json::to_vec(&big).unwrap();
    assert!(raw.len() > 1_048_576);
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()["x-ms-error-code"],
        "ContentLengthLimitExceeded"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        format!(
            "Maximum allowed content length: 1048576 bytes (1 MB). Provided content length: {} bytes.",
            raw.len()
        )
    );
    // The same records gzip-compressed fit on the wire.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(gz.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.oversize_rejections, 1);
    assert_eq!(ledger.per_stream["Custom-FalconDetections"], 800);
    assert!(ledger.max_body_bytes_seen >= gz.len());
    // Corrupt gzip is a 400.
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(&b"not gzip"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415, "Content-Type is required");
    assert_eq!(resp.headers()["x-ms-error-code"], "UnsupportedMediaType");
    tb.shutdown().await;
}

#[tokio::test]
async fn ledger_counts_duplicates_and_dropped_columns_and_is_served_as_json() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let url = ingest_url(&tb, "Custom-FalconEvents");
    let mut extra = record("a");
    extra["Unexpected"] = json!(1);
    assert_eq!(
        ingest(&c, &url, &token, &json!([extra, record("b")]))
            .await
            .status(),
        204
    );
    assert_eq!(
        ingest(&c, &url, &token, &json!([record("a")]))
            .await
            .status(),
        204
    );
    let ledger: testbench::Ledger = c
        .get(tb.url().join("_testbench/received").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger, tb.ingestion().ledger());
    assert_eq!(ledger.duplicates, 1);
    assert_eq!(ledger.event_ids["a"], 2);
    assert_eq!(ledger.event_ids["b"], 1);
    assert_eq!(ledger.dropped_columns["Unexpected"], 1);
    tb.shutdown().await;
}

// ---------------------------------------------------------------- Faults

#[tokio::test]
async fn reject_event_ids_fault_refuses_only_requests_containing_them() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let url = ingest_url(&tb, "Custom-FalconEvents");
    // Injected over HTTP, as the CLI and other processes do.
    let fault = json!({"RejectEventIds": {"event_ids": ["poison"]}});
    assert_eq!(
        c.post(tb.url().join("_testbench/faults").unwrap())
            .json(&fault)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let resp = ingest(&c, &url, &token, &json!([record("ok1"), record("poison")])).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().contains_key("x-ms-error-code"));
    assert_eq!(
        ingest(&c, &url, &token, &json!([record("ok1")]))
            .await
            .status(),
        204
    );
    assert_eq!(
        c.delete(tb.url().join("_testbench/faults").unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        ingest(&c, &url, &token, &json!([record("poison")]))
            .await
            .status(),
        204
    );
    assert_eq!(tb.ingestion().ledger().event_ids.len(), 2);
    tb.shutdown().await;
}

#[tokio::test]
async fn status_latency_and_reset_faults_on_ingestion() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let url = ingest_url(&tb, "Custom-FalconEvents");
    tb.faults().inject(Fault::Status {
        target: Target::Ingestion,
        status: 503,
        retry_after_secs: Some(7),
        count: Some(1),
        duration_secs: None,
    });
    let resp = ingest(&c, &url, &token, &json!([record("a")])).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-ms-error-code"], "ServiceUnavailable");
    tb.faults().inject(Fault::Latency {
        target: Target::Ingestion,
        millis: 300,
        count: Some(1),
        duration_secs: None,
    });
    let t = Instant::now();
    assert_eq!(
        ingest(&c, &url, &token, &json!([record("a")]))
            .await
            .status(),
        204
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    tb.faults().inject(Fault::Reset {
        target: Target::Ingestion,
        count: Some(1),
    });
    let err = c
        .post(&url)
        .bearer_auth(&token)
        .json(&json!([record("b")]))
        .send()
        .await;
    assert!(err.is_err(), "connection dropped without a response");
    assert_eq!(
        ingest(&c, &url, &token, &json!([record("b")]))
            .await
            .status(),
        204
    );
    let ledger = tb.ingestion().ledger();
    assert_eq!(ledger.requests, 4);
    assert_eq!(ledger.event_ids.len(), 2);
    tb.shutdown().await;
}

#[tokio::test]
async fn cut_feed_fault_closes_mid_line_and_malformed_lines_replace_events() {
    let (tb, c) = start(small(20)).await;
    tb.faults().inject(Fault::CutFeed {
        every_events: 5,
        mid_line: true,
    });
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 2,
        kind: MalformedKind::InvalidJson,
    });
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 3,
        kind: MalformedKind::InvalidUtf8,
    });
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 4,
        kind: MalformedKind::NotAnObject,
    });
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "cut").await;
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let ended_with_error = loop {
        assert!(Instant::now() < deadline);
        match feed.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(ended_with_error, "a mid-line cut aborts the chunked body");
    let lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 6, "five complete lines and a partial one");
    assert_eq!(lines[1], tb.falcon().event_line(0, 2).unwrap());
    assert!(serde_json::from_slice::<Value>(lines[1]).is_err());
    assert!(std::str::from_utf8(lines[2]).is_err());
    assert!(
        serde_json::from_slice::<Value>(lines[3])
            .unwrap()
            .is_array()
    );
    assert!(
        serde_json::from_slice::<Value>(lines[5]).is_err(),
        "partial line"
    );
    assert_eq!(tb.falcon().stats().feed_cuts, 1);
    assert_eq!(
        tb.falcon().expected_event_ids().len(),
        17,
        "malformed offsets are not expected downstream"
    );
    // The server ended the session, so the appId is free at once.
    let again = discover(&tb, &c, &token, "cut").await;
    assert_eq!(again["resources"].as_array().unwrap().len(), 1);
    tb.shutdown().await;
}

#[tokio::test]
async fn continuous_generation_and_multiple_partitions() {
    let mut config = small(0);
    config.falcon.partitions = 2;
    config.falcon.events_per_sec = Some(1000);
    let (tb, _c) = start(config).await;
    wait_for("events generated", || {
        tb.falcon().generated(0) >= 100 && tb.falcon().generated(1) >= 100
    })
    .await;
    let a = tb.falcon().event_line(0, 1).unwrap();
    let b = tb.falcon().event_line(1, 1).unwrap();
    assert_ne!(a, b);
    tb.shutdown().await;
}

#[tokio::test]
async fn feed_faults_do_not_consume_the_session_token() {
    let (tb, c) = start(small(3)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "feedfaults").await;
    tb.faults().inject(Fault::Reset {
        target: Target::FalconFeed,
        count: Some(1),
    });
    let url = format!(
        "{}&offset=1",
        r["resources"][0]["dataFeedURL"].as_str().unwrap()
    );
    let auth = format!(
        "Token {}",
        r["resources"][0]["sessionToken"]["token"].as_str().unwrap()
    );
    assert!(
        c.get(&url)
            .header("Authorization", &auth)
            .send()
            .await
            .is_err(),
        "reset"
    );
    tb.faults().inject(Fault::Status {
        target: Target::FalconFeed,
        status: 503,
        retry_after_secs: None,
        count: Some(1),
        duration_secs: None,
    });
    assert_eq!(
        c.get(&url)
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    tb.faults().inject(Fault::Latency {
        target: Target::FalconFeed,
        millis: 200,
        count: Some(1),
        duration_secs: None,
    });
    let t = Instant::now();
    let mut feed = c
        .get(&url)
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    let buf = read_until(&mut feed, |b| offsets(b).len() == 3).await;
    assert_eq!(offsets(&buf), vec![1, 2, 3]);
    tb.shutdown().await;
}

#[tokio::test]
async fn oversize_and_missing_offset_lines_and_mixed_line_endings() {
    let mut config = small(6);
    config.falcon.line_ending = LineEnding::Mixed;
    let (tb, c) = start(config).await;
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 2,
        kind: MalformedKind::Oversize { bytes: 3_000_000 },
    });
    tb.faults().inject(Fault::Malformed {
        partition: 0,
        offset: 4,
        kind: MalformedKind::MissingOffset,
    });
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "mixed").await;
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    let buf = read_until(&mut feed, |b| event_lines(b).len() == 6).await;
    let lines = event_lines(&buf);
    assert_eq!(tb.falcon().event_line(0, 2).unwrap().len(), 3_000_000);
    assert!(buf.len() > 3_000_000);
    assert!(lines[3]["metadata"].get("offset").is_none());
    assert_eq!(lines[5]["metadata"]["offset"], 6);
    assert!(buf.windows(2).any(|w| w == b"\r\n"));
    assert!(buf.windows(2).any(|w| w[1] == b'\n' && w[0] == b'}'));
    tb.shutdown().await;
}

#[tokio::test]
async fn expired_falcon_bearer_is_refused_on_discover_and_refresh() {
    let (tb, c) = start(small(0)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "exp").await;
    tb.falcon().expire_all_tokens();
    let resp = c
        .get(
            tb.url()
                .join("sensors/entities/datafeed/v2?appId=exp")
                .unwrap(),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["message"],
        "access denied, invalid bearer token"
    );
    let url = r["resources"][0]["refreshActiveSessionURL"]
        .as_str()
        .unwrap();
    let resp = c
        .post(url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        open_feed(&c, &r["resources"][0], "").await.status(),
        401,
        "sessions end with the tokens"
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn entra_fault_and_timed_faults_expire() {
    let (tb, c) = start(small(0)).await;
    tb.faults().inject(Fault::Status {
        target: Target::Entra,
        status: 429,
        retry_after_secs: Some(3),
        count: None,
        duration_secs: Some(1),
    });
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "testbench-azure-client"),
        ("client_secret", "testbench-azure-secret"),
        ("scope", INGEST_SCOPE),
    ];
    let url = tb
        .url()
        .join("00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token")
        .unwrap();
    let resp = c.post(url.clone()).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error_codes"].is_array());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = c
            .post(url.clone())
            .form(&form)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "duration-limited fault never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tb.entra().tokens_issued(), 1);
    tb.shutdown().await;
}

#[tokio::test]
async fn decompressed_payload_over_50_mib_is_413_payload_size_limit_exceeded() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"[").unwrap();
    let filler = vec![b' '; 1 << 20];
    for _ in 0..51 {
        gz.write_all(&filler).unwrap();
    }
    gz.write_all(b"]").unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1_048_576);
    let resp = c
        .post(ingest_url(&tb, "Custom-FalconEvents"))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()["x-ms-error-code"],
        "PayloadSizeLimitExceeded"
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn cli_serve_prints_the_url_writes_the_ca_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = std::env::temp_dir().join(format!("testbench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("ca.pem");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_testbench"))
        .args(["serve", "--initial-events", "5", "--seed", "9", "--ca-out"])
        .arg(&ca_path)
        .args(["--fault", r#"{"RejectEventIds":{"event_ids":["x"]}}"#])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("url line");
            if let Some(url) = line.strip_prefix("url=") {
                break url.to_owned();
            }
        }
    })
    .await
    .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let ledger: Value = c
        .get(format!("{url}_testbench/received"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger["requests"], 0);
    let stats: Value = c
        .get(format!("{url}_testbench/falcon/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["feed_opens"], 0);
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn chunked_oversize_body_is_413_with_the_bytes_received() {
    let (tb, c) = start(small(0)).await;
    let token = azure_token(&tb, &c, INGEST_SCOPE).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![b' '; 500_000])).collect();
    let resp = c
        .post(ingest_url(&tb, "Custom-FalconEvents"))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("Provided content length: 1500000 bytes."),
        "{body}"
    );
    assert_eq!(tb.ingestion().ledger().oversize_rejections, 1);
    tb.shutdown().await;
}

#[test]
fn fault_json_examples_from_the_docs_parse() {
    for text in [
        r#"{"Status":{"target":"Ingestion","status":503,"retry_after_secs":2,"count":3}}"#,
        r#"{"CutFeed":{"every_events":1000,"mid_line":true}}"#,
        r#"{"Malformed":{"partition":0,"offset":7,"kind":{"Oversize":{"bytes":2000000}}}}"#,
        r#"{"Malformed":{"partition":0,"offset":8,"kind":"InvalidJson"}}"#,
        r#"{"Reset":{"target":"FalconFeed","count":1}}"#,
        r#"{"Latency":{"target":"Entra","millis":50,"duration_secs":5}}"#,
    ] {
        let fault: Fault = serde_json::from_str(text).unwrap();
        let round: Fault = serde_json::from_str(&serde_json::to_string(&fault).unwrap()).unwrap();
        assert_eq!(fault, round);
    }
}

#[tokio::test]
async fn session_expires_on_time_even_while_the_reader_is_blocked() {
    let (tb, c) = start(small(20_000)).await;
    let token = falcon_token(&tb, &c).await;
    let r = discover(&tb, &c, &token, "blocked").await;
    let mut feed = open_feed(&c, &r["resources"][0], "").await;
    assert_eq!(feed.status(), 200);
    // Read nothing: the server's writes back up, yet the session must still expire.
    wait_for("session expiry", || {
        tb.falcon().stats().sessions_expired == 1
    })
    .await;
    let url = r["resources"][0]["refreshActiveSessionURL"]
        .as_str()
        .unwrap();
    let resp = c
        .post(url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let buf = read_until(&mut feed, |_| false).await;
    let got = offsets(&buf);
    assert!(
        !got.is_empty() && got.len() < 20_000,
        "{} events before the end",
        got.len()
    );
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    tb.shutdown().await;
}

#[tokio::test]
async fn managed_identity_endpoint_speaks_the_app_service_protocol() {
    let (tb, c) = start(small(0)).await;
    let url = format!("{}msi/token", tb.url());
    let get = |query: &'static str, header: Option<&'static str>| {
        let mut req = c.get(format!("{url}?{query}"));
        if let Some(h) = header {
            req = req.header("X-IDENTITY-HEADER", h);
        }
        req.send()
    };
    let resource = "api-version=2019-08-01&resource=https%3A%2F%2Fmonitor.azure.com";
    let ok = get(resource, Some(testbench::MANAGED_IDENTITY_HEADER))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], "https://monitor.azure.com");
    let expires: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(
        expires > 1_700_000_000,
        "epoch seconds as a string: {expires}"
    );
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 20));

    for (query, header, status) in [
        (resource, None, 401),
        (resource, Some("wrong"), 401),
        (
            "api-version=2017-09-01&resource=https%3A%2F%2Fmonitor.azure.com",
            Some(testbench::MANAGED_IDENTITY_HEADER),
            400,
        ),
        (
            "api-version=2019-08-01",
            Some(testbench::MANAGED_IDENTITY_HEADER),
            400,
        ),
        (
            "api-version=2019-08-01&resource=https%3A%2F%2Fmonitor.azure.com&client_id=00000000-0000-0000-0000-000000000000",
            Some(testbench::MANAGED_IDENTITY_HEADER),
            400,
        ),
    ] {
        let resp = get(query, header).await.unwrap();
        assert_eq!(resp.status(), status, "{query} {header:?}");
    }
    tb.shutdown().await;
}
