//! Helpers for the end-to-end suites: the real `falcon-sentinel-bridge` binary as a child
//! process, the testbench in this process as the far side of both APIs.
//!
//! The binary is built by `scripts/test-all.sh` before the tests run (`cargo build --bins`);
//! set `FSB_BIN` to test another build.
#![allow(clippy::missing_panics_doc)] // test support: panicking is how it reports

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbench::Testbench;

/// The Entra application the bridge authenticates as; [`testbench_config`] registers it.
pub const AZURE_CLIENT_ID: &str = "5f1b7a3e-0c1d-4e2f-9a8b-7c6d5e4f3a2b";

/// A testbench config with `partitions` Falcon partitions, a short session refresh interval,
/// and the bridge's Entra application registered and authorised on the DCR.
pub fn testbench_config(partitions: u32) -> testbench::TestbenchConfig {
    let mut config = testbench::TestbenchConfig::default();
    config.falcon.partitions = partitions;
    config.falcon.refresh_interval_secs = 5;
    config.entra.clients.push(testbench::EntraClient {
        client_id: AZURE_CLIENT_ID.to_owned(),
        credential: testbench::EntraCredential::Secret("testbench-azure-secret".to_owned()),
    });
    config
        .ingestion
        .authorized_client_ids
        .push(AZURE_CLIENT_ID.to_owned());
    config
}

/// Path of the bridge binary under test.
pub fn bridge_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FSB_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/e2e-<hash> → target/<profile>/falcon-sentinel-bridge
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("falcon-sentinel-bridge");
    assert!(
        bin.exists(),
        "{} not found: build it first (scripts/test-all.sh does `cargo build --bins`)",
        bin.display()
    );
    bin
}

/// Knobs of a rendered bridge config.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// Buffer cap.
    pub buffer_max_bytes: u64,
    /// Writer concurrency.
    pub max_concurrency: usize,
    /// Writer linger.
    pub batch_linger_ms: u64,
    /// Shutdown grace.
    pub shutdown_grace_secs: u64,
    /// Admin listener port (0: any).
    pub admin_port: u16,
    /// Kafka brokers (`host:port`): the buffer is Kafka (topics `falcon-events` and
    /// `falcon-checkpoints`) instead of the disk log.
    pub kafka_brokers: Option<String>,
    /// Kafka consumer `session.timeout.ms` (`buffer.librdkafka_options`), when set.
    pub kafka_session_timeout_ms: Option<u64>,
    /// Kafka `buffer.max_backlog_bytes`, when set.
    pub kafka_max_backlog_bytes: Option<u64>,
    /// Authenticate to Azure as the testbench's user-assigned managed identity (spawn with
    /// [`managed_identity_env`]) instead of with a client secret.
    pub managed_identity: bool,
    /// The Kafka buffer's `security:` section, YAML indented by four spaces under it.
    pub kafka_security: Option<String>,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            buffer_max_bytes: 1 << 30,
            max_concurrency: 4,
            batch_linger_ms: 100,
            shutdown_grace_secs: 10,
            admin_port: 0,
            kafka_brokers: None,
            kafka_session_timeout_ms: None,
            kafka_max_backlog_bytes: None,
            managed_identity: false,
            kafka_security: None,
        }
    }
}

/// Writes the testbench CA and a config for the bridge into `dir`; returns the config path.
pub fn write_config(tb: &Testbench, dir: &Path, options: &BridgeOptions) -> PathBuf {
    let url = tb.url();
    let base = url.as_str().trim_end_matches('/');
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, tb.ca_pem()).expect("write CA");
    let yaml = format!(
        r"falcon:
  base_url: {base}
  client_id: testbench-falcon-client
  client_secret: {{ env: FALCON_CLIENT_SECRET }}
  app_id: fsbe2e
  partitions: all
  start: earliest
  read_idle_timeout_secs: 10
{buffer}sentinel:
  endpoint: {base}
  dcr_immutable_id: dcr-00000000000000000000000000000001
  default_stream: Custom-FalconEvents
  streams:
    EppDetectionSummaryEvent: Custom-FalconDetections
  credential:
{credential}  authority_host: {base}
  batch_linger_ms: {linger}
  max_concurrency: {concurrency}
  retry_initial_ms: 100
  retry_max_secs: 2
dead_letter:
  type: directory
  path: {dir}/dead-letter
admin:
  listen: 127.0.0.1:{admin_port}
shutdown_grace_secs: {grace}
health:
  enabled: false
log:
  level: info
  format: json
tls:
  extra_ca_files: [{ca}]
",
        credential = if options.managed_identity {
            format!(
                "    type: managed_identity\n    client_id: {}\n",
                testbench::DEFAULT_MI_CLIENT_ID
            )
        } else {
            format!(
                "    type: client_secret\n    tenant_id: 00000000-0000-0000-0000-0000000000aa\n    \
                 client_id: {AZURE_CLIENT_ID}\n    client_secret: {{ env: AZURE_CLIENT_SECRET }}\n"
            )
        },
        dir = dir.display(),
        buffer = match &options.kafka_brokers {
            None => format!(
                "buffer:\n  type: disk\n  path: {}/buffer\n  max_bytes: {}\n",
                dir.display(),
                options.buffer_max_bytes
            ),
            Some(brokers) => format!(
                "buffer:\n  type: kafka\n  brokers: [\"{brokers}\"]\n  topic: falcon-events\n  checkpoint_topic: falcon-checkpoints\n  group_id: fsb-e2e\n  group_instance_id: fsb-e2e-0\n{}{}{}",
                options
                    .kafka_max_backlog_bytes
                    .map_or_else(String::new, |b| format!("  max_backlog_bytes: {b}\n")),
                options.kafka_session_timeout_ms.map_or_else(String::new, |ms| format!(
                    "  librdkafka_options:\n    session.timeout.ms: {ms}\n    heartbeat.interval.ms: {}\n",
                    (ms / 4).max(100)
                )),
                options
                    .kafka_security
                    .as_ref()
                    .map_or_else(String::new, |s| format!("  security:\n{s}")),
            ),
        },
        linger = options.batch_linger_ms,
        concurrency = options.max_concurrency,
        grace = options.shutdown_grace_secs,
        admin_port = options.admin_port,
        ca = ca.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Starts `falcon-sentinel-bridge run` with the testbench's secrets in its environment.
/// Its log goes to `dir/bridge-<n>.log`.
pub fn spawn_bridge(config: &Path, dir: &Path, run: usize) -> Child {
    spawn_bridge_with_env(config, dir, run, &[])
}

/// Sends SIGTERM and waits for the exit status (bounded).
pub fn terminate(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
        .expect("nonzero pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
    wait_with_deadline(child, within).expect("bridge did not exit after SIGTERM")
}

/// Waits for a child to exit, at most `within`.
pub fn wait_with_deadline(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Polls `condition` every 50 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// Every expected EventId that the ingestion ledger has not seen.
pub fn missing_event_ids(tb: &Testbench) -> Vec<String> {
    let ledger = tb.ingestion().ledger();
    tb.falcon()
        .expected_event_ids()
        .into_iter()
        .filter(|id| !ledger.event_ids.contains_key(id))
        .collect()
}

/// The last lines of a bridge log, for assertion messages.
pub fn log_tail(dir: &Path, run: usize) -> String {
    let Ok(file) = std::fs::File::open(dir.join(format!("bridge-{run}.log"))) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A loopback port that was free a moment ago.
pub use testbench::tansu::free_port;

/// A tansu broker (a Kafka-compatible broker on sqlite storage) as a child process; it lives
/// in the testbench so the crates' own Kafka tests share it.
pub use testbench::tansu::Tansu;

/// Creates the topics [`write_config`] names for a Kafka buffer on `tansu`: `falcon-events`
/// with `partitions` partitions and `falcon-checkpoints` with one. Returns `tansu`.
pub fn with_bridge_topics(tansu: Tansu, partitions: u32) -> Tansu {
    tansu.create_topic("falcon-events", partitions);
    tansu.create_topic("falcon-checkpoints", 1);
    tansu
}

/// [`spawn_bridge`] with extra environment variables for the child (the fault suite's
/// `LD_PRELOAD` shim and its knobs): the environment is otherwise cleared the same way.
pub fn spawn_bridge_with_env(
    config: &Path,
    dir: &Path,
    run: usize,
    env: &[(String, String)],
) -> Child {
    let log = std::fs::File::create(dir.join(format!("bridge-{run}.log"))).expect("log file");
    Command::new(bridge_bin())
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FALCON_CLIENT_SECRET", "testbench-falcon-secret")
        .env("AZURE_CLIENT_SECRET", "testbench-azure-secret")
        .envs(
            ["RUST_LOG"]
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn falcon-sentinel-bridge")
}

/// The environment Azure's App Service / Container Apps platform gives a process with a
/// managed identity, pointing at the testbench's managed-identity endpoint.
pub fn managed_identity_env(tb: &Testbench) -> Vec<(String, String)> {
    let url = tb.url();
    vec![
        (
            "IDENTITY_ENDPOINT".to_owned(),
            format!("{}/msi/token", url.as_str().trim_end_matches('/')),
        ),
        (
            "IDENTITY_HEADER".to_owned(),
            testbench::MANAGED_IDENTITY_HEADER.to_owned(),
        ),
    ]
}
