//! The dead-letter destination: a directory of JSON-lines files, or (with the Kafka buffer)
//! a Kafka topic with one JSON letter per message, keyed by Falcon partition.
//!
//! A record lands here when it can never be delivered as it is: a Falcon line that is not
//! an event (stage `source`), or a record Azure refused with a 400/413 (stage `sentinel`).
//! Every letter keeps the raw bytes (UTF-8 as is, anything else base64), the reason, and
//! Azure's status, code and message, so nothing is lost silently and an operator can fix
//! the DCR and `redrive`. A letter is durable (fsynced, or acknowledged by the brokers with
//! `acks=all`) before the buffer position it replaces is acknowledged: the guarantee
//! "delivered or dead-lettered" holds across a crash.
//!
//! In the Kafka topic, `list` and `redrive` track what was handled with the consumer group
//! `{buffer.group_id}-dead-letter-redrive`: letters above its committed offsets are pending.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bridge_buffer::BufferError;
use bridge_buffer::kafka::{KafkaBufferConfig, TopicReader, TopicWriter};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::config::{Config, Env};
use crate::wiring::KafkaDeadLetters;

/// Where a letter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A Falcon stream line that could not become an event.
    Source,
    /// A record the Logs Ingestion API refused.
    Sentinel,
}

impl Stage {
    /// Its name in letters and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Sentinel => "sentinel",
        }
    }
}

/// One dead-lettered record, one JSON line on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was dead-lettered (RFC 3339, UTC).
    pub time: String,
    /// Which stage refused it.
    pub stage: Stage,
    /// Why, in a few words (`invalid_json`, `azure_rejected`, `record_too_large`, …).
    pub reason: String,
    /// HTTP status from Azure, for the `sentinel` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Azure's `x-ms-error-code` / `error.code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Azure's `error.message`, or the parser's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Falcon partition.
    pub partition: u32,
    /// Falcon offset; for a source letter without one, the last offset seen before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `metadata.eventType`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// `metadata.customerIDString`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// `metadata.eventCreationTime` (epoch ms), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
    /// The Logs Ingestion stream it was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Length of the original raw bytes (`raw` may be truncated to the configured cap).
    pub raw_len: usize,
    /// `utf8` or `base64`.
    pub raw_encoding: String,
    /// The raw bytes, possibly truncated.
    pub raw: String,
}

impl DeadLetter {
    /// Encodes `raw` (up to `cap` bytes) into the letter's `raw`/`raw_encoding` fields.
    pub fn set_raw(&mut self, raw: &[u8], cap: usize) {
        self.raw_len = raw.len();
        let kept = &raw[..raw.len().min(cap)];
        if let Ok(text) = std::str::from_utf8(kept) {
            text.clone_into(&mut self.raw);
            "utf8".clone_into(&mut self.raw_encoding);
        } else {
            self.raw = base64::engine::general_purpose::STANDARD.encode(kept);
            "base64".clone_into(&mut self.raw_encoding);
        }
    }

    /// The raw bytes as stored (decoding base64), if complete (not truncated).
    pub fn complete_raw(&self) -> Option<Vec<u8>> {
        let bytes = if self.raw_encoding == "base64" {
            base64::engine::general_purpose::STANDARD
                .decode(&self.raw)
                .ok()?
        } else {
            self.raw.clone().into_bytes()
        };
        (bytes.len() == self.raw_len).then_some(bytes)
    }

    /// The raw bytes as stored, possibly truncated; empty if the base64 does not decode.
    fn stored_raw(&self) -> Vec<u8> {
        if self.raw_encoding == "base64" {
            base64::engine::general_purpose::STANDARD
                .decode(&self.raw)
                .unwrap_or_default()
        } else {
            self.raw.clone().into_bytes()
        }
    }

    /// An empty letter stamped with the current time.
    pub fn new(stage: Stage, reason: impl Into<String>, partition: u32) -> Self {
        Self {
            time: now_rfc3339(),
            stage,
            reason: reason.into(),
            status: None,
            error_code: None,
            message: None,
            partition,
            offset: None,
            event_type: None,
            customer_id: None,
            created_at_ms: None,
            stream: None,
            raw_len: 0,
            raw_encoding: "utf8".to_owned(),
            raw: String::new(),
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes dead letters durably to the configured destination: appends to
/// `{dir}/dead-letter-{start_ms}-{pid}.jsonl`, fsyncing each write, or produces one message
/// per letter to a Kafka topic (key = Falcon partition, value = the JSON line), resolving
/// once the brokers acknowledged every one.
#[derive(Debug)]
pub struct DeadLetterWriter {
    max_record_bytes: usize,
    written: AtomicU64,
    destination: Destination,
}

#[derive(Debug)]
enum Destination {
    Directory {
        dir: PathBuf,
        file: Mutex<Option<(PathBuf, File)>>,
    },
    Kafka(Box<KafkaDestination>),
}

/// The topic writer connects on first use (or in the background at start), retrying while
/// the brokers are unreachable, so that an outage at start-up delays dead letters instead
/// of failing the service.
#[derive(Debug)]
struct KafkaDestination {
    connection: KafkaBufferConfig,
    topic: String,
    writer: tokio::sync::OnceCell<TopicWriter>,
}

/// First and longest wait between two connection attempts to the dead-letter topic.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

impl KafkaDestination {
    async fn writer(&self) -> anyhow::Result<&TopicWriter> {
        self.writer
            .get_or_try_init(|| async {
                let mut wait = CONNECT_BACKOFF.0;
                loop {
                    match TopicWriter::connect(&self.connection, &self.topic).await {
                        Ok(writer) => {
                            info!(topic = %self.topic, "dead-letter topic connected");
                            return Ok(writer);
                        }
                        // Retrying cannot fix a configuration.
                        Err(
                            error @ (BufferError::KafkaConfig { .. }
                            | BufferError::KafkaCaFile { .. }),
                        ) => {
                            return Err(anyhow::Error::new(error)
                                .context("connect to the dead-letter topic"));
                        }
                        Err(error) => {
                            error!(
                                topic = %self.topic,
                                error = %error,
                                retry_in = ?wait,
                                "dead-letter topic not usable; dead letters wait"
                            );
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(CONNECT_BACKOFF.1);
                        }
                    }
                }
            })
            .await
    }
}

impl DeadLetterWriter {
    /// A directory destination; creates the directory if needed, the file is created on the
    /// first letter.
    pub fn open(dir: &Path, max_record_bytes: usize) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("create dead-letter directory {}", dir.display()))?;
        Ok(Self {
            max_record_bytes,
            written: AtomicU64::new(0),
            destination: Destination::Directory {
                dir: dir.to_owned(),
                file: Mutex::new(None),
            },
        })
    }

    /// A Kafka topic destination. Does no I/O: the topic is connected (and checked to
    /// exist) on the first write or [`connect`](Self::connect).
    pub fn kafka(destination: KafkaDeadLetters) -> Self {
        Self {
            max_record_bytes: destination.max_record_bytes,
            written: AtomicU64::new(0),
            destination: Destination::Kafka(Box::new(KafkaDestination {
                connection: destination.connection,
                topic: destination.topic,
                writer: tokio::sync::OnceCell::new(),
            })),
        }
    }

    /// The destination `dead_letter:` configures (secrets resolved from `env`). Within a
    /// tokio runtime, a Kafka destination starts connecting in the background, so that a
    /// missing topic is reported at start rather than at the first dead letter.
    pub fn from_config(cfg: &Config, env: &dyn Env) -> anyhow::Result<Arc<Self>> {
        if let Some((dir, max_record_bytes)) = crate::wiring::dead_letter_dir(cfg) {
            return Ok(Arc::new(Self::open(dir, max_record_bytes)?));
        }
        let Some(kafka) = crate::wiring::dead_letter_kafka(cfg, env)? else {
            anyhow::bail!("no dead-letter destination configured");
        };
        let writer = Arc::new(Self::kafka(kafka));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&writer);
            runtime.spawn(async move {
                let Some(writer) = weak.upgrade() else { return };
                if let Err(error) = writer.connect().await {
                    error!(error = %format!("{error:#}"), "dead-letter topic");
                }
            });
        }
        Ok(writer)
    }

    /// Connects a Kafka destination now (waiting while the brokers are unreachable); a
    /// no-op for a directory.
    pub async fn connect(&self) -> anyhow::Result<()> {
        match &self.destination {
            Destination::Directory { .. } => Ok(()),
            Destination::Kafka(kafka) => kafka.writer().await.map(|_| ()),
        }
    }

    /// Where letters go, for messages: the directory or `kafka topic NAME`.
    pub fn describe(&self) -> String {
        match &self.destination {
            Destination::Directory { dir, .. } => dir.display().to_string(),
            Destination::Kafka(kafka) => format!("kafka topic {}", kafka.topic),
        }
    }

    /// The cap on raw bytes kept per letter.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Letters written by this process.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Writes and fsyncs `letters` to a directory destination. Blocking: call from
    /// `spawn_blocking`. A Kafka destination refuses: use [`write`](Self::write).
    pub fn write_blocking(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let Destination::Directory { dir, file } = &self.destination else {
            anyhow::bail!("a Kafka dead-letter destination is written with `write`");
        };
        if letters.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut buf, letter).context("encode dead letter")?;
            buf.push(b'\n');
        }
        let mut guard = file
            .lock()
            .map_err(|_| anyhow::anyhow!("dead-letter writer poisoned by an earlier panic"))?;
        if guard.is_none() {
            let name = format!(
                "dead-letter-{}-{}.jsonl",
                time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                std::process::id()
            );
            let path = dir.join(name);
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            sync_dir(dir)?;
            *guard = Some((path, opened));
        }
        if let Some((path, file)) = guard.as_mut() {
            file.write_all(&buf)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("write {}", path.display()))?;
        }
        self.written
            .fetch_add(letters.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `letters` durably: resolves once they are fsynced (directory) or acknowledged
    /// by the brokers (Kafka). A Kafka destination waits while the brokers are unreachable.
    pub async fn write(self: &Arc<Self>, letters: Vec<DeadLetter>) -> anyhow::Result<()> {
        match &self.destination {
            Destination::Directory { .. } => {
                let this = Arc::clone(self);
                tokio::task::spawn_blocking(move || this.write_blocking(&letters))
                    .await
                    .context("dead-letter writer task")?
            }
            Destination::Kafka(kafka) => {
                if letters.is_empty() {
                    return Ok(());
                }
                let writer = kafka.writer().await?;
                let count = letters.len() as u64;
                for (partition, payloads) in kafka_messages(letters, writer.max_message_bytes())? {
                    writer
                        .send(&partition.to_string(), payloads)
                        .await
                        .with_context(|| {
                            format!("write dead letters to kafka topic {}", kafka.topic)
                        })?;
                }
                self.written.fetch_add(count, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// The letters as JSON messages grouped by Falcon partition (the key), each group in the
/// given order. A letter too large for one message keeps a shorter prefix of its raw bytes
/// (`raw_len` still tells the original length; it can then no longer be redriven).
fn kafka_messages(
    letters: Vec<DeadLetter>,
    max_message_bytes: usize,
) -> anyhow::Result<BTreeMap<u32, Vec<Vec<u8>>>> {
    let mut out = BTreeMap::<u32, Vec<Vec<u8>>>::new();
    for mut letter in letters {
        let mut json = serde_json::to_vec(&letter).context("encode dead letter")?;
        while json.len() + 10 > max_message_bytes {
            let stored = letter.stored_raw();
            if stored.is_empty() {
                anyhow::bail!(
                    "a dead letter without raw bytes is larger than the topic's message limit ({max_message_bytes} bytes)"
                );
            }
            let raw_len = letter.raw_len;
            letter.set_raw(&stored, stored.len() / 2);
            letter.raw_len = raw_len;
            json = serde_json::to_vec(&letter).context("encode dead letter")?;
        }
        out.entry(letter.partition).or_default().push(json);
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// Every `*.jsonl` file directly in `dir`, sorted by name (so by time).
pub fn letter_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(error).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every letter of one file; a line that does not parse is an error naming file and line.
pub fn read_letters(path: &Path) -> anyhow::Result<Vec<DeadLetter>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut letters = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let letter = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a dead letter", path.display(), index + 1))?;
        letters.push(letter);
    }
    Ok(letters)
}

/// `dead-letter list`: one line per file (or the topic), stage and reason, with counts.
pub fn list_command(cfg: &Config, env: &dyn Env) -> anyhow::Result<()> {
    let Some((dir, _)) = crate::wiring::dead_letter_dir(cfg) else {
        let Some(kafka) = crate::wiring::dead_letter_kafka(cfg, env)? else {
            anyhow::bail!("no dead-letter destination configured");
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        let counts = runtime.block_on(count_kafka_letters(&kafka))?;
        let mut total = 0_usize;
        for ((stage, reason), count) in &counts {
            crate::output::stdout(&format!("{}\t{stage}\t{reason}\t{count}", kafka.topic));
            total += count;
        }
        crate::output::stdout(&format!(
            "{total} dead letters not yet redriven in kafka topic {} (group {})",
            kafka.topic, kafka.redrive_group
        ));
        return Ok(());
    };
    let files = letter_files(dir)?;
    if files.is_empty() {
        crate::output::stdout(&format!("no dead letters in {}", dir.display()));
        return Ok(());
    }
    let mut total = 0_usize;
    for file in &files {
        let letters = read_letters(file)?;
        let mut by_reason = BTreeMap::<(String, String), usize>::new();
        for letter in &letters {
            *by_reason.entry(count_key(letter)).or_default() += 1;
        }
        for ((stage, reason), count) in by_reason {
            crate::output::stdout(&format!("{}\t{stage}\t{reason}\t{count}", file.display()));
        }
        total += letters.len();
    }
    crate::output::stdout(&format!("{total} dead letters in {} files", files.len()));
    Ok(())
}

fn count_key(letter: &DeadLetter) -> (String, String) {
    (letter.stage.as_str().to_owned(), letter.reason.clone())
}

/// Messages of the dead-letter topic read per batch by `list` and `redrive`.
pub(crate) const KAFKA_BATCH: usize = 500;

/// The stage and reason counted for a message that is not a dead letter.
pub(crate) const UNREADABLE: (&str, &str) = ("unreadable", "not_a_dead_letter");

/// (stage, reason) → count of the letters in the dead-letter topic not yet redriven: from the
/// redrive group's committed offsets to the high watermarks. Commits nothing. A message
/// that is not a letter is counted as [`UNREADABLE`].
pub async fn count_kafka_letters(
    kafka: &KafkaDeadLetters,
) -> anyhow::Result<BTreeMap<(String, String), usize>> {
    let mut reader = TopicReader::connect(&kafka.connection, &kafka.topic, &kafka.redrive_group)
        .await
        .with_context(|| format!("read kafka topic {}", kafka.topic))?;
    let mut counts = BTreeMap::<(String, String), usize>::new();
    loop {
        let batch = reader
            .next_batch(KAFKA_BATCH)
            .await
            .with_context(|| format!("read kafka topic {}", kafka.topic))?;
        if batch.is_empty() {
            return Ok(counts);
        }
        for message in batch {
            let key = match parse_message(&message) {
                Some(letter) => count_key(&letter),
                None => (UNREADABLE.0.to_owned(), UNREADABLE.1.to_owned()),
            };
            *counts.entry(key).or_default() += 1;
        }
    }
}

/// The letter a dead-letter topic message carries; `None` (logged) if it is not one.
pub(crate) fn parse_message(message: &bridge_buffer::kafka::TopicMessage) -> Option<DeadLetter> {
    match serde_json::from_slice(&message.payload) {
        Ok(letter) => Some(letter),
        Err(error) => {
            tracing::warn!(
                partition = message.partition,
                offset = message.offset,
                error = %error,
                "message in the dead-letter topic is not a dead letter"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip_through_a_file_with_utf8_and_binary_raw() {
        let dir = tempfile::tempdir().unwrap();
        let writer = DeadLetterWriter::open(dir.path(), 1024).unwrap();
        let mut text = DeadLetter::new(Stage::Sentinel, "azure_rejected", 0);
        text.set_raw(br#"{"metadata":{}}"#, 1024);
        let mut binary = DeadLetter::new(Stage::Source, "invalid_utf8", 1);
        binary.set_raw(&[0xff, 0xfe, b'{'], 1024);
        let mut truncated = DeadLetter::new(Stage::Source, "oversize", 1);
        truncated.set_raw(&[b'a'; 2000], 1024);
        writer.write_blocking(&[text, binary, truncated]).unwrap();

        let files = letter_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let letters = read_letters(&files[0]).unwrap();
        assert_eq!(letters.len(), 3);
        assert_eq!(letters[0].complete_raw().unwrap(), br#"{"metadata":{}}"#);
        assert_eq!(letters[1].raw_encoding, "base64");
        assert_eq!(letters[1].complete_raw().unwrap(), vec![0xff, 0xfe, b'{']);
        assert_eq!(letters[2].raw_len, 2000);
        assert_eq!(letters[2].raw.len(), 1024);
        assert!(
            letters[2].complete_raw().is_none(),
            "a truncated letter is not redrivable"
        );
        assert_eq!(writer.written(), 3);
    }

    #[test]
    fn kafka_messages_group_by_partition_and_shrink_a_letter_to_the_message_limit() {
        let mut small = DeadLetter::new(Stage::Sentinel, "azure_rejected", 3);
        small.set_raw(b"{\"a\":1}", 1 << 20);
        let mut big = DeadLetter::new(Stage::Sentinel, "record_too_large", 1);
        big.set_raw(&vec![b'x'; 50_000], 1 << 20);
        let mut second = DeadLetter::new(Stage::Source, "invalid_json", 3);
        second.set_raw(b"{", 1 << 20);
        let out = kafka_messages(vec![small, big, second], 10_000).unwrap();
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        let three: Vec<DeadLetter> = out[&3]
            .iter()
            .map(|m| serde_json::from_slice(m).unwrap())
            .collect();
        assert_eq!(three[0].reason, "azure_rejected");
        assert_eq!(three[1].reason, "invalid_json");
        assert_eq!(three[0].complete_raw().unwrap(), b"{\"a\":1}");
        let shrunk: DeadLetter = serde_json::from_slice(&out[&1][0]).unwrap();
        assert!(out[&1][0].len() + 10 <= 10_000);
        assert_eq!(shrunk.raw_len, 50_000, "the original length is kept");
        assert!(!shrunk.raw.is_empty() && shrunk.raw.len() < 10_000);
        assert!(
            shrunk.complete_raw().is_none(),
            "a shrunk letter is not redrivable"
        );
    }

    #[test]
    fn a_kafka_destination_refuses_blocking_writes() {
        let kafka = DeadLetterWriter::kafka(KafkaDeadLetters {
            connection: KafkaBufferConfig::new(vec!["127.0.0.1:1".into()], "e", "c", "g"),
            topic: "dead-letters".into(),
            redrive_group: "g-dead-letter-redrive".into(),
            max_record_bytes: 1024,
        });
        assert_eq!(kafka.describe(), "kafka topic dead-letters");
        assert!(
            kafka
                .write_blocking(&[DeadLetter::new(Stage::Source, "x", 0)])
                .is_err()
        );
        assert_eq!(kafka.written(), 0);
    }
}
