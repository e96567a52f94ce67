//! Measures how fast the testbench produces Falcon events: raw line generation, and a full
//! feed read over HTTPS by one reqwest client. Prints figures; asserts nothing.
//!
//! `cargo run --release -p testbench --example throughput [-- EVENTS]`

use std::time::{Duration, Instant};

use testbench::{Testbench, TestbenchConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::args().nth(1).map_or(Ok(200_000), |a| a.parse())?;
    let mut config = TestbenchConfig::default();
    config.falcon.initial_events = events;
    let tb = Testbench::start(config).await?;
    let mut out = std::io::stdout().lock();

    let started = Instant::now();
    let mut bytes = 0usize;
    for offset in 1..=events {
        bytes += tb.falcon().event_line(0, offset).map_or(0, |l| l.len());
    }
    report(
        &mut out,
        "event_line (generation only)",
        events,
        bytes,
        started.elapsed(),
    )?;

    let ca = reqwest::Certificate::from_pem(tb.ca_pem().as_bytes())?;
    let client = reqwest::Client::builder().tls_certs_only([ca]).build()?;
    let token: serde_json::Value = client
        .post(tb.url().join("oauth2/token")?)
        .form(&[
            ("client_id", "testbench-falcon-client"),
            ("client_secret", "testbench-falcon-secret"),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let discovered: serde_json::Value = client
        .get(tb.url().join("sensors/entities/datafeed/v2?appId=bench")?)
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let resource = &discovered["resources"][0];
    let mut feed = client
        .get(format!(
            "{}&offset=1",
            resource["dataFeedURL"].as_str().unwrap_or_default()
        ))
        .header(
            "Authorization",
            format!(
                "Token {}",
                resource["sessionToken"]["token"]
                    .as_str()
                    .unwrap_or_default()
            ),
        )
        .send()
        .await?;
    let started = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0usize);
    while lines < events {
        let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), feed.chunk()).await??
        else {
            break;
        };
        bytes += chunk.len();
        lines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
    }
    report(
        &mut out,
        "feed over HTTPS (one connection)",
        lines,
        bytes,
        started.elapsed(),
    )?;
    drop(feed);
    tb.shutdown().await;
    Ok(())
}

fn report(
    out: &mut impl std::io::Write,
    what: &str,
    events: u64,
    bytes: usize,
    took: Duration,
) -> std::io::Result<()> {
    let secs = took.as_secs_f64();
    writeln!(
        out,
        "{what}: {events} events, {:.1} MiB in {secs:.2} s = {:.0} events/s, {:.1} MiB/s",
        bytes as f64 / 1_048_576.0,
        events as f64 / secs,
        bytes as f64 / 1_048_576.0 / secs
    )
}
