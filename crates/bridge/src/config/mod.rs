//! The YAML configuration: one pipeline from file to validated, immutable [`Config`].
//!
//! Pipeline (pure apart from reading the file; no network):
//! 1. read the file (bounded to [`MAX_CONFIG_BYTES`]);
//! 2. interpolate `${VAR}` / `${VAR:-default}` (`$${` escapes), keeping line numbers exact;
//! 3. report every unknown key at once (serde stops at the first; the key lists are read
//!    from the serde derives, so they cannot drift), then parse with serde-saphyr into raw
//!    structs that reject unknown keys, tracking the key path with serde_path_to_error;
//! 4. `validate`: a pure function that collects *every* semantic problem and returns
//!    validated types (`Duration`, `Url`, enums);
//! 5. secrets stay references ([`SecretRef`]) until the service resolves them at start-up.
//!
//! Every error reads `file:line:column: key.path: message (hint: ...)`. Positions of semantic
//! errors come from an index of key paths built from the parser's events (module `locate`).
//!
//! Guarantees: a secret value is never read during loading, never stored in [`Config`], and
//! never printed ([`Secret`] redacts itself; [`Config::redacted_yaml`] prints references).
//!
//! Layout:
//! - `env`: the [`Env`] trait and [`ProcessEnv`];
//! - `interpolate`: step 2;
//! - `raw`: the schema as written, with its named defaults;
//! - `validate`: step 4;
//! - `model`: the validated types;
//! - `secret`: [`SecretRef`], [`Secret`];
//! - `locate`: key path → position;
//! - `error`: [`ConfigError`], [`ConfigErrors`].

mod env;
mod error;
mod interpolate;
mod locate;
mod model;
mod raw;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::io::Read as _;
use std::path::Path;

use serde::Deserialize as _;
use serde_saphyr::MessageFormatter as _;

pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use model::{
    AdminConfig, BatchLimit, BufferConfig, BufferType, Config, CredentialConfig, CredentialType,
    DeadLetterConfig, DeadLetterType, DiskBufferConfig, FalconCloud, FalconConfig, HealthConfig,
    KafkaBufferConfig, KafkaProtocol, KafkaSecurity, LogConfig, LogFormat, ManagedIdentityId,
    Partitions, ProxyUrl, SaslMechanism, SentinelConfig, StartPosition, TlsConfig,
};
pub use secret::{
    MAX_BINARY_SECRET_FILE_BYTES, MAX_SECRET_FILE_BYTES, Secret, SecretBytes, SecretError,
    SecretRef,
};

use error::hint;
use interpolate::ColumnMap;
use locate::PathIndex;
use validate::FileUse;

/// Largest config file read; a real one is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Largest CA bundle read by [`Config::check_files`].
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads, interpolates, parses and validates the config file at `path`.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let read_error = |message: String, hint: Option<&str>| {
        ConfigErrors::single(ConfigError {
            kind: ErrorKind::Read,
            origin: origin.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message,
            hint: hint.map(str::to_owned),
        })
    };
    let file = std::fs::File::open(path)
        .map_err(|e| read_error(format!("cannot open the config file: {e}"), None))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(format!("cannot read the config file: {e}"), None))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_error(
            format!("the config file is larger than {MAX_CONFIG_BYTES} bytes"),
            Some("is this the right file?"),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(format!("the config file is not UTF-8: {e}"), None))?;
    load_str(&text, &origin, env)
}

/// Interpolates, parses and validates `source`; `origin` names it in error messages.
pub fn load_str(source: &str, origin: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let (text, columns) = interpolate::interpolate(source, env).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    kind: ErrorKind::Interpolation,
                    origin: origin.to_owned(),
                    line: e.line,
                    column: e.column,
                    path: String::new(),
                    message: e.message,
                    hint: e.hint,
                })
                .collect(),
        )
    })?;
    let index = PathIndex::build(&text);
    let at = |path: &str, at_key: bool| {
        let (line, column) = index.locate(path, at_key);
        (line, columns.source_column(line, column))
    };

    // Unknown keys are reported together with everything else: they are blanked out (line
    // numbers kept) so the rest of the document still parses and validates.
    // A key inside a flow mapping (`{ a: 1, typo: 2 }`) cannot be blanked by lines: then the
    // unknown keys are all that is reported.
    let unknown = unknown_keys(&index, &columns, origin);
    let text_lines: Vec<&str> = text.split('\n').collect();
    let block_style = unknown.iter().all(|e| {
        text_lines.get(e.line.wrapping_sub(1)).is_some_and(|l| {
            l.trim_start()
                .starts_with(e.path.rsplit('.').next().unwrap_or(""))
        })
    });
    if !unknown.is_empty() && !block_style {
        return Err(ConfigErrors(unknown));
    }
    let parse_text = if unknown.is_empty() {
        text.clone()
    } else {
        blank_keys(&text, unknown.iter().map(|e| e.line))
    };
    let with_unknown = |mut errors: ConfigErrors| {
        errors.0.extend(unknown.iter().cloned());
        errors.0.sort_by_key(|e| (e.line, e.column));
        errors
    };
    let raw = parse(&parse_text, origin, &index, &columns).map_err(with_unknown)?;
    let validated = validate::validate(raw).map_err(|issues| {
        let mut errors: Vec<ConfigError> = issues
            .into_iter()
            .map(|issue| {
                let (line, column) = at(&issue.path, issue.at_key);
                ConfigError {
                    kind: ErrorKind::Invalid,
                    origin: origin.to_owned(),
                    line,
                    column,
                    path: issue.path,
                    message: issue.message,
                    hint: issue.hint,
                }
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    });
    let mut config = match validated {
        Ok(_) if !unknown.is_empty() => return Err(with_unknown(ConfigErrors(Vec::new()))),
        Ok(config) => config,
        Err(errors) => return Err(with_unknown(errors)),
    };
    origin.clone_into(&mut config.origin);
    let positions = validate::file_refs(&config)
        .into_iter()
        .map(|(path, _, _)| {
            let pos = at(&path, false);
            (path, pos)
        });
    config.positions = positions.collect();
    Ok(config)
}

/// `text` with the lines of the keys starting at `lines` (1-based), and their nested
/// blocks, replaced by empty lines, so positions elsewhere stay exact.
fn blank_keys(text: &str, lines: impl Iterator<Item = usize>) -> String {
    let mut blank: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
    let all: Vec<&str> = text.split('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    for line in lines {
        let Some(first) = line.checked_sub(1).and_then(|i| all.get(i).map(|l| (i, l))) else {
            continue;
        };
        let (start, key_line) = first;
        let key_indent = indent(key_line);
        blank.insert(start);
        for (i, l) in all.iter().enumerate().skip(start + 1) {
            let trimmed = l.trim();
            if !trimmed.is_empty() && indent(l) <= key_indent {
                break;
            }
            blank.insert(i);
        }
    }
    all.iter()
        .enumerate()
        .map(|(i, l)| if blank.contains(&i) { "" } else { *l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every unknown key of the known sections, before serde (which reports only the first).
fn unknown_keys(index: &PathIndex, columns: &ColumnMap, origin: &str) -> Vec<ConfigError> {
    let sections = raw::section_keys();
    let errors: Vec<ConfigError> = index
        .entries()
        .into_iter()
        .filter_map(|(parent, key, (line, column))| {
            let (_, valid) = sections.iter().find(|(section, _)| *section == parent)?;
            if valid.contains(&key) {
                return None;
            }
            let hint = match closest(key, valid) {
                Some(best) => format!(
                    "did you mean `{best}`? valid keys here: {}",
                    valid.join(", ")
                ),
                None => format!("valid keys here: {}", valid.join(", ")),
            };
            Some(ConfigError {
                kind: ErrorKind::Parse,
                origin: origin.to_owned(),
                line,
                column: columns.source_column(line, column),
                path: locate::join_key(parent, key),
                message: format!("unknown key `{key}`"),
                hint: Some(hint),
            })
        })
        .collect();
    errors
}

/// Step 3: serde with key-path tracking; one error (serde stops at the first).
fn parse(
    text: &str,
    origin: &str,
    index: &PathIndex,
    columns: &ColumnMap,
) -> Result<raw::RawConfig, ConfigErrors> {
    let only_comments = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if only_comments {
        return Err(ConfigErrors::single(ConfigError {
            kind: ErrorKind::Parse,
            origin: origin.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "the config is empty".to_owned(),
            hint: hint("start from config/reference.yaml"),
        }));
    }

    let options = serde_saphyr::options! {
        // `yes`/`no`/`on`/`off` are strings, not booleans: no surprise from YAML 1.1.
        strict_booleans: true,
        // Errors are rendered here as one line each.
        with_snippet: false,
    };
    let mut failed_path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        raw::RawConfig::deserialize(tracked).inspect_err(|_| failed_path = Some(track.path()))
    });
    let error = match result {
        Ok(raw) => return Ok(raw),
        Err(error) => error,
    };

    let mut path = failed_path
        .map(|p| p.to_string())
        .filter(|p| p != ".")
        .unwrap_or_default();
    let explained = explain(&error, &path);
    if let Some(key) = &explained.key {
        // serde_path_to_error cannot name the key of a duplicate; the parser can.
        let parent = path
            .strip_suffix("?")
            .map_or(path.as_str(), |p| p.trim_end_matches('.'));
        path = locate::join_key(parent, key);
    }
    let (line, column) = if explained.prefer_parser_location
        && let Some(location) = error.location().filter(|l| l.line() > 0)
    {
        (
            usize::try_from(location.line()).unwrap_or(0),
            usize::try_from(location.column()).unwrap_or(0),
        )
    } else if !path.is_empty() && index.contains(&path) {
        index.locate(&path, explained.at_key)
    } else if let Some(location) = error.location().filter(|l| l.line() > 0) {
        (
            usize::try_from(location.line()).unwrap_or(0),
            usize::try_from(location.column()).unwrap_or(0),
        )
    } else {
        index.locate(&path, true)
    };
    Err(ConfigErrors::single(ConfigError {
        kind: ErrorKind::Parse,
        origin: origin.to_owned(),
        line,
        column: columns.source_column(line, column),
        path,
        message: explained.message,
        hint: explained.hint,
    }))
}

/// A parse error in the config's vocabulary.
struct Explained {
    message: String,
    hint: Option<String>,
    /// Point at the key rather than the value.
    at_key: bool,
    /// The parser's own position is the precise one (e.g. the second of two duplicate keys).
    prefer_parser_location: bool,
    /// The key the error is about, when the tracked path cannot name it.
    key: Option<String>,
}

/// Rewrites serde-saphyr's errors into the config's vocabulary, with a hint where one helps.
fn explain(error: &serde_saphyr::Error, path: &str) -> Explained {
    use serde_saphyr::Error as E;
    let plain = |message: String, hint: Option<String>| Explained {
        message,
        hint,
        at_key: false,
        prefer_parser_location: false,
        key: None,
    };
    match error {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let hint = match closest(field, expected) {
                Some(best) => format!(
                    "did you mean `{best}`? valid keys here: {}",
                    expected.join(", ")
                ),
                None if expected.is_empty() => "this section takes no keys".to_owned(),
                None => format!("valid keys here: {}", expected.join(", ")),
            };
            Explained {
                at_key: true,
                ..plain(format!("unknown key `{field}`"), Some(hint))
            }
        }
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let hint = match closest(variant, expected) {
                Some(best) => format!(
                    "did you mean `{best}`? valid values: {}",
                    expected.join(", ")
                ),
                None => format!("valid values: {}", expected.join(", ")),
            };
            plain(format!("`{variant}` is not a valid value"), Some(hint))
        }
        E::DuplicateMappingKey { key, .. } => Explained {
            at_key: true,
            prefer_parser_location: true,
            key: key.clone(),
            ..plain(
                match key {
                    Some(key) => format!("key `{key}` appears twice"),
                    None => "a key appears twice".to_owned(),
                },
                hint("each key may appear once per section; remove one"),
            )
        },
        E::InvalidScalar { ty, .. } => {
            let (what, hint) = expected_scalar(ty, path);
            plain(format!("expected {what}"), hint)
        }
        E::InvalidBooleanStrict { .. } => plain(
            "expected `true` or `false`".to_owned(),
            hint("`yes`, `no`, `on` and `off` are not booleans here"),
        ),
        E::Unexpected { expected, .. } => {
            let what = match *expected {
                "mapping start" => "a section of `key: value` entries",
                "sequence start" => "a list",
                "string scalar" => "a single value",
                other => other,
            };
            plain(
                format!("expected {what}"),
                hint("compare the shape with config/reference.yaml"),
            )
        }
        E::MultipleDocuments { .. } => plain(
            "the file holds more than one YAML document".to_owned(),
            hint("one config per file: remove the `---` separator and what follows"),
        ),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => plain(format!("expected {expected}, found {unexpected}"), None),
        other => {
            let message: String = serde_saphyr::DefaultMessageFormatter
                .format_message(other)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let hint = (message == "expected mapping start" || message.starts_with("invalid type"))
                .then(|| "compare the shape with config/reference.yaml".to_owned());
            plain(message, hint)
        }
    }
}

/// What a scalar of Rust type `ty` looks like in YAML, and a hint for unit-suffixed keys.
fn expected_scalar(ty: &'static str, path: &str) -> (&'static str, Option<String>) {
    match ty {
        "bool" | "boolean" => ("`true` or `false`", None),
        t if t.starts_with('u') => (
            "a whole number (not negative)",
            ["_secs", "_ms", "_bytes"]
                .iter()
                .any(|unit| path.ends_with(unit))
                .then(|| "write digits only: the unit is in the key name".to_owned()),
        ),
        t if t.starts_with('i') => ("a whole number", None),
        t => (t, None),
    }
}

/// The likeliest intended candidate for a misspelt `word`: the nearest by edit distance
/// (at most 2, or a fifth of the word for long keys such as `batch_linger_secs`), else one
/// that contains the other at one end (`tenant` → `tenant_id`, `mechanism` →
/// `sasl_mechanism`).
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if word.len() < 3 {
        return None;
    }
    let limit = (word.len() / 5).max(2);
    let nearest = candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    nearest.or_else(|| {
        candidates
            .iter()
            .filter(|c| {
                c.len() >= 3 && (c.starts_with(word) || c.ends_with(word) || word.starts_with(**c))
            })
            .min_by_key(|c| c.len())
            .copied()
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

impl Config {
    /// The effective configuration (defaults filled in) as YAML, with every secret shown as
    /// its reference (`{ env: NAME }` / `{ file: PATH }`) and proxy passwords masked. The
    /// output loads back into the same configuration.
    pub fn redacted_yaml(&self) -> String {
        serde_saphyr::to_string(self)
            .unwrap_or_else(|error| format!("# cannot print the config: {error}\n"))
    }

    /// Checks the files the config names: CA bundles exist and hold PEM certificates; secret
    /// and token files exist and are readable. Separate from `load` so validation stays pure;
    /// the service calls it at start-up and `validate` on the CLI.
    pub fn check_files(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        for (path, file, usage) in validate::file_refs(self) {
            let problem = match usage {
                FileUse::CaBundle => check_ca_file(file),
                FileUse::Secret => check_readable(file),
            };
            if let Err((message, hint)) = problem {
                let (line, column) = self.positions.get(&path).copied().unwrap_or((0, 0));
                errors.push(ConfigError {
                    kind: ErrorKind::File,
                    origin: self.origin.clone(),
                    line,
                    column,
                    path,
                    message,
                    hint,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

type FileProblem = (String, Option<String>);

fn check_readable(file: &Path) -> Result<(), FileProblem> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => std::fs::File::open(file).map(drop).map_err(|e| {
            (
                format!("cannot open {}: {e}", file.display()),
                hint("check the mount and file permissions"),
            )
        }),
        Ok(_) => Err((format!("{} is not a regular file", file.display()), None)),
        Err(e) => Err((
            format!("cannot read {}: {e}", file.display()),
            hint("is the secret or volume mounted at this path?"),
        )),
    }
}

fn check_ca_file(file: &Path) -> Result<(), FileProblem> {
    check_readable(file)?;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| {
            (
                format!("cannot read {} as text: {e}", file.display()),
                hint("a CA file is PEM text"),
            )
        })?;
    if text.len() as u64 > MAX_CA_FILE_BYTES {
        return Err((
            format!(
                "{} is larger than {MAX_CA_FILE_BYTES} bytes",
                file.display()
            ),
            None,
        ));
    }
    let certificates = count_pem_certificates(&text);
    if certificates == 0 {
        return Err((
            format!("{} holds no PEM certificate", file.display()),
            hint(
                "expected `-----BEGIN CERTIFICATE-----` blocks; convert \
                    DER with `openssl x509 -inform der -in ca.der -out \
                    ca.pem`",
            ),
        ));
    }
    Ok(())
}

/// Counts complete `BEGIN/END CERTIFICATE` blocks whose body is base64 text. The TLS stack
/// parses the DER later; this catches the common mistakes (DER file, key file, empty file).
fn count_pem_certificates(text: &str) -> usize {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = after.find(END) else { break };
        let body = &after[..end];
        let base64 = body.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') || c.is_ascii_whitespace()
        });
        if base64 && body.chars().any(|c| c.is_ascii_alphanumeric()) {
            count += 1;
        }
        rest = &after[end + END.len()..];
    }
    count
}
