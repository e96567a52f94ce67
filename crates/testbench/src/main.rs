//! `testbench serve`: run the Falcon, Entra ID and Logs Ingestion emulators standalone, for
//! manual runs and demos against the real bridge binary.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use testbench::{Fault, Testbench, TestbenchConfig};

#[derive(Debug, Parser)]
#[command(
    name = "testbench",
    about = "Emulators of Falcon Event Streams, Entra ID and the Logs Ingestion API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the emulators on one HTTPS listener until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the CA certificate (PEM) here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Seed of the customer id and the event contents.
    #[arg(long, default_value_t = testbench::config::DEFAULT_SEED)]
    seed: u64,
    /// Falcon partitions.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Events generated on every partition at start.
    #[arg(long, default_value_t = 0)]
    initial_events: u64,
    /// Continuous generation per partition.
    #[arg(long)]
    events_per_sec: Option<u64>,
    /// refreshActiveSessionInterval in seconds.
    #[arg(long, default_value_t = 1800)]
    refresh_interval_secs: u64,
    /// A fault as JSON, e.g. '{"CutFeed":{"every_events":1000,"mid_line":true}}'. Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let faults = args
        .faults
        .iter()
        .map(|f| serde_json::from_str::<Fault>(f).with_context(|| format!("parse --fault {f}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = TestbenchConfig::with_seed(args.seed);
    config.listen = args.listen;
    config.falcon.partitions = args.partitions;
    config.falcon.initial_events = args.initial_events;
    config.falcon.events_per_sec = args.events_per_sec;
    config.falcon.refresh_interval_secs = args.refresh_interval_secs;
    let dcr = config.ingestion.dcr_immutable_id.clone();
    let tenant = config.entra.tenant_id.clone();
    let tb = Testbench::start(config).await?;
    for fault in faults {
        tb.faults().inject(fault);
    }
    if let Some(path) = &args.ca_out {
        std::fs::write(path, tb.ca_pem())
            .with_context(|| format!("write the CA to {}", path.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "url={}", tb.url())?;
        writeln!(out, "customer_id={}", tb.falcon().customer_id())?;
        writeln!(out, "tenant_id={tenant}")?;
        writeln!(out, "dcr_immutable_id={dcr}")?;
        if let Some(path) = &args.ca_out {
            writeln!(out, "ca={}", path.display())?;
        }
        out.flush()?;
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    tb.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
    }
    Ok(())
}
