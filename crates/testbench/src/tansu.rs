//! A real Kafka-protocol broker for tests: tansu (Kafka-compatible, sqlite storage) as a
//! child process on loopback.
//!
//! The Kafka front ([`crate::KafkaFront`]) pipes to it, the Kafka buffer backend is tested
//! against it, and the end-to-end suites run the bridge against it. The binary comes from
//! `TANSU_BIN` (set by `scripts/test-all.sh`, which provisions it), else the provisioning
//! script's cache `$HOME/.cache/falcon-sentinel-bridge/tools/bin/tansu`. A missing binary
//! fails the test with the command to run; tests that need a broker are never skipped
//! silently.
//!
//! Security: tansu 0.6 authenticates with SASL SCRAM-SHA-256/512 (`--authentication`), but
//! SCRAM credentials and topics can only be created while authentication is off (its
//! admin client does not authenticate), so a secured broker is started plain, given users
//! ([`Tansu::create_user`]) and topics, then restarted on the same sqlite file with
//! [`Tansu::enable_authentication`]. tansu 0.6 accepts `--cert`/`--key` but never uses them
//! (its listener builds a TLS acceptor and serves plaintext; clap even refuses both flags
//! together), so TLS ([`TansuOptions::tls`]) is terminated by a front in this process that
//! pipes to the broker's plaintext listener, which advertises the front.
//!
//! This is test infrastructure: it panics, with a message that says what failed, instead of
//! returning errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long a starting broker may take to accept connections.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// The broker's sqlite file, inside its temporary directory.
const DB_FILE: &str = "tansu.db";

/// The broker's stdout and stderr, appended across restarts, inside its temporary directory.
const LOG_FILE: &str = "tansu.log";

/// A tansu broker as a child process; SIGKILLed and reaped on drop.
///
/// Its sqlite file and log (`tansu.log`, filtered by `TANSU_LOG`, default `warn`) live in a
/// temporary directory that is removed on drop.
#[derive(Debug)]
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    advertised_port: u16,
    authentication: bool,
    front: Option<TlsFront>,
    dir: tempfile::TempDir,
}

/// How [`Tansu::start_with`] starts a broker.
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Serve TLS with this identity: [`Tansu::broker`] is then a TLS front (in this process)
    /// that pipes to the broker's plaintext listener, because tansu 0.6 does not serve TLS
    /// itself.
    pub tls: Option<TansuTls>,
}

/// A TLS server identity as PEM.
#[derive(Clone)]
pub struct TansuTls {
    /// The server certificate chain (leaf first), valid for `127.0.0.1`.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TansuTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TansuTls").finish_non_exhaustive()
    }
}

/// A SCRAM mechanism of [`Tansu::create_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramMechanism {
    /// `SCRAM-SHA-256`.
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

/// The TLS front: a thread running a small tokio runtime that accepts TLS on loopback and
/// pipes each connection to the broker's plaintext port. Stopped (and its connections
/// closed) on drop.
#[derive(Debug)]
struct TlsFront {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    fn start(tls: &TansuTls, upstream: u16) -> TlsFront {
        let certs = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse the TLS certificate PEM");
        let key =
            PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).expect("parse the TLS key PEM");
        let config = crate::tls::server_config(certs, key).expect("TLS server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
        listener
            .set_nonblocking(true)
            .expect("non-blocking TLS front");
        let port = listener.local_addr().expect("TLS front address").port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("TLS front runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("TLS front listener");
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let Ok(mut plain) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let _ = plain.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            });
            // Dropping the runtime here cancels the connections' tasks, closing them.
        });
        TlsFront {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Tansu {
    /// The broker binary: `TANSU_BIN`, else the provisioning script's cache.
    ///
    /// # Panics
    ///
    /// If the binary does not exist, naming the path and `scripts/provision-tansu.sh`.
    pub fn bin() -> PathBuf {
        let path = Self::bin_path();
        assert!(
            path.is_file(),
            "tansu not found at {}: run scripts/provision-tansu.sh (scripts/test-all.sh does) \
             or set TANSU_BIN",
            path.display()
        );
        path
    }

    /// Whether the broker binary exists, for suites that report a missing broker as a
    /// finding instead of panicking.
    pub fn available() -> bool {
        Self::bin_path().is_file()
    }

    fn bin_path() -> PathBuf {
        std::env::var_os("TANSU_BIN").map_or_else(
            || {
                let home = std::env::var_os("HOME").unwrap_or_default();
                Path::new(&home).join(".cache/falcon-sentinel-bridge/tools/bin/tansu")
            },
            PathBuf::from,
        )
    }

    /// Starts a broker on a free loopback port with a fresh sqlite file, and waits until it
    /// accepts connections.
    ///
    /// # Panics
    ///
    /// If the binary is missing, cannot be spawned, or does not listen within 30 s.
    pub fn start() -> Tansu {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    /// Starts a broker on loopback `port` that names `127.0.0.1:advertised_port` in its
    /// metadata: clients that bootstrap through a front (the testbench's Event Hubs
    /// emulator) keep connecting through it.
    ///
    /// # Panics
    ///
    /// As [`Tansu::start`].
    pub fn start_advertising(port: u16, advertised_port: u16) -> Tansu {
        let mut tansu = Tansu {
            child: None,
            port,
            advertised_port,
            authentication: false,
            front: None,
            dir: tempfile::tempdir().expect("tansu tempdir"),
        };
        tansu.launch();
        tansu
    }

    /// Starts a broker on a free loopback port with `options` (authentication off; see
    /// [`Tansu::enable_authentication`]).
    ///
    /// # Panics
    ///
    /// As [`Tansu::start`], or if the TLS identity does not parse.
    pub fn start_with(options: &TansuOptions) -> Tansu {
        let Some(tls) = &options.tls else {
            return Self::start();
        };
        let port = free_port();
        let front = TlsFront::start(tls, port);
        let mut tansu = Self::start_advertising(port, front.port);
        tansu.front = Some(front);
        tansu
    }

    /// Restarts the broker on the same sqlite file with SASL SCRAM authentication required
    /// (`--authentication`). Create users and topics before: tansu 0.6 refuses its own
    /// admin client once authentication is on.
    ///
    /// # Panics
    ///
    /// As [`Tansu::start`].
    pub fn enable_authentication(&mut self) {
        self.authentication = true;
        self.restart();
    }

    /// Creates (or replaces) a SCRAM credential for `name` (`tansu user create`).
    ///
    /// # Panics
    ///
    /// If authentication is already on, or `tansu user create` cannot be run or fails.
    pub fn create_user(&self, name: &str, password: &str, mechanism: ScramMechanism) {
        assert!(
            !self.authentication,
            "tansu 0.6 creates users only while authentication is off"
        );
        let mechanism = match mechanism {
            ScramMechanism::Sha256 => "scram256",
            ScramMechanism::Sha512 => "scram512",
        };
        let status = Command::new(Self::bin())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args([name, password, "--mechanism", mechanism])
            .stdout(Stdio::null())
            .status()
            .expect("run tansu user create");
        assert!(status.success(), "tansu user create {name}: {status}");
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(LOG_FILE))
            .expect("tansu log file");
        // tansu 0.6 reads `sqlite://PATH` as relative to its working directory (an absolute
        // `sqlite:///x` loses its leading slash), so run it in the database's directory.
        let child = Command::new(Self::bin())
            .current_dir(self.dir.path())
            .args(["broker", "--storage-engine"])
            .arg(format!("sqlite://{DB_FILE}"))
            .args(self.authentication.then_some("--authentication"))
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .stdin(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone().expect("tansu log file"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = Instant::now() + LISTEN_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {url} (log: {})",
                self.dir.path().join(LOG_FILE).display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.index_headers();
    }

    /// tansu 0.6's sqlite schema has no index on `header (topition, offset_id)`, and it reads
    /// the headers of every fetched record with one query by that key: each is a scan of the
    /// whole header table, so fetching is quadratic in the records stored (minutes per fetch
    /// past ~20 MB of records with four headers each). The index is added to the broker's own
    /// file once the broker created its schema: a tuning of its database, not a change of
    /// its code. SQLite re-prepares the broker's statements on the schema change. Done with
    /// python3's sqlite3 module (a fresh machine has python3; the file is in WAL mode, which
    /// both sides handle).
    fn index_headers(&self) {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], timeout=30)\n\
                      c.execute('create index if not exists header_topition_offset_id \
                      on header (topition, offset_id)')\n\
                      c.commit()\n";
        let deadline = Instant::now() + LISTEN_WITHIN;
        loop {
            let status = Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(self.dir.path().join(DB_FILE))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run python3 (sqlite3) to index tansu's header table");
            if status.success() {
                return;
            }
            // The broker may still be creating its schema.
            assert!(
                Instant::now() < deadline,
                "could not index tansu's header table in {}",
                self.dir.path().join(DB_FILE).display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory of the broker's sqlite file and log (`tansu.log`).
    pub fn db_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:PORT`, where clients connect (`bootstrap.servers`/`brokers:`): the broker's
    /// own listener, or its TLS front when started with [`TansuOptions::tls`].
    pub fn broker(&self) -> String {
        let port = self.front.as_ref().map_or(self.port, |f| f.port);
        format!("127.0.0.1:{port}")
    }

    /// Creates a topic with `partitions` partitions (through the plaintext listener; only
    /// while authentication is off).
    ///
    /// # Panics
    ///
    /// If `tansu topic create` cannot be run or fails.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(Self::bin())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {name}: {status}");
    }

    /// SIGKILLs the broker and reaps it; its sqlite file stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and sqlite file (killing it first if it
    /// still runs), and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// As [`Tansu::start`].
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
///
/// # Panics
///
/// If no ephemeral port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
