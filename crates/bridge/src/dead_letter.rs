//! The dead-letter destination: a directory of JSON-lines files.
//!
//! A record lands here when it can never be delivered as it is: a Falcon line that is not
//! an event (stage `source`), or a record Azure refused with a 400/413 (stage `sentinel`).
//! Every letter keeps the raw bytes (UTF-8 as is, anything else base64), the reason, and
//! Azure's status, code and message, so nothing is lost silently and an operator can fix
//! the DCR and `redrive`. A letter is fsynced before the buffer position it replaces is
//! acknowledged: the guarantee "delivered or dead-lettered" holds across a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Where a letter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A Falcon stream line that could not become an event.
    Source,
    /// A record the Logs Ingestion API refused.
    Sentinel,
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

/// Appends letters to `{dir}/dead-letter-{start_ms}-{pid}.jsonl`, fsyncing each write.
#[derive(Debug)]
pub struct DeadLetterWriter {
    dir: PathBuf,
    max_record_bytes: usize,
    file: Mutex<Option<(PathBuf, File)>>,
    written: std::sync::atomic::AtomicU64,
}

impl DeadLetterWriter {
    /// Creates the directory if needed; the file is created on the first letter.
    pub fn open(dir: &Path, max_record_bytes: usize) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("create dead-letter directory {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            max_record_bytes,
            file: Mutex::new(None),
            written: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The cap on raw bytes kept per letter.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Letters written by this process.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes and fsyncs `letters`. Blocking: call from `spawn_blocking`.
    pub fn write_blocking(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut buf, letter).context("encode dead letter")?;
            buf.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("dead-letter writer poisoned by an earlier panic"))?;
        if guard.is_none() {
            let name = format!(
                "dead-letter-{}-{}.jsonl",
                time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                std::process::id()
            );
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            sync_dir(&self.dir)?;
            *guard = Some((path, file));
        }
        if let Some((path, file)) = guard.as_mut() {
            file.write_all(&buf)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("write {}", path.display()))?;
        }
        self.written
            .fetch_add(letters.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Async wrapper around [`Self::write_blocking`].
    pub async fn write(
        self: &std::sync::Arc<Self>,
        letters: Vec<DeadLetter>,
    ) -> anyhow::Result<()> {
        let this = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || this.write_blocking(&letters))
            .await
            .context("dead-letter writer task")?
    }
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

/// `dead-letter list`: one line per file and reason, with counts.
pub fn list_command(cfg: &crate::config::Config) -> anyhow::Result<()> {
    let (dir, _) = crate::wiring::dead_letter_dir(cfg);
    let files = letter_files(dir)?;
    if files.is_empty() {
        crate::output::stdout(&format!("no dead letters in {}", dir.display()));
        return Ok(());
    }
    let mut total = 0_usize;
    for file in &files {
        let letters = read_letters(file)?;
        let mut by_reason = std::collections::BTreeMap::<(String, String), usize>::new();
        for letter in &letters {
            let stage = match letter.stage {
                Stage::Source => "source",
                Stage::Sentinel => "sentinel",
            };
            let key = (stage.to_owned(), letter.reason.clone());
            *by_reason.entry(key).or_default() += 1;
        }
        for ((stage, reason), count) in by_reason {
            crate::output::stdout(&format!("{}\t{stage}\t{reason}\t{count}", file.display()));
        }
        total += letters.len();
    }
    crate::output::stdout(&format!("{total} dead letters in {} files", files.len()));
    Ok(())
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
}
