//! Secrets: references in the config, values only at start-up, never printable.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::env::Env;

/// Where a secret lives. The config holds only this reference; the value is read by
/// [`SecretRef::resolve`] when the service starts, so `validate` never touches a secret and
/// the effective config can be printed safely.
///
/// YAML: `{ env: NAME }` or `{ file: /absolute/path }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// The value of an environment variable.
    Env(String),
    /// The content of a file (a mounted Kubernetes secret); one trailing line break is removed.
    File(PathBuf),
}

/// Largest secret file read: secrets are short, and a misconfigured path (a log file, a
/// device) must not be read into memory whole.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Largest binary secret file read ([`SecretRef::resolve_bytes`]): a PKCS#12 bundle with a
/// long chain is a few KiB to tens of KiB.
pub const MAX_BINARY_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {name} is not set")]
    EnvUnset {
        /// The variable name.
        name: String,
    },
    /// The environment variable or file is empty.
    #[error("secret {reference} is empty")]
    Empty {
        /// `env NAME` or `file PATH`.
        reference: String,
    },
    /// The file could not be read.
    #[error("read secret file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit ([`MAX_SECRET_FILE_BYTES`], or
    /// [`MAX_BINARY_SECRET_FILE_BYTES`] for binary secrets).
    #[error("secret file {} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit it exceeds.
        limit: u64,
    },
    /// A binary secret (a PKCS#12 bundle) was referenced by environment variable.
    #[error("secret {reference} must be a file: the value is binary")]
    NotAFile {
        /// `env NAME`.
        reference: String,
    },
    /// The file is not UTF-8.
    #[error("secret file {} is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
}

impl SecretRef {
    /// Reads the secret value from the environment or the file system.
    pub fn resolve(&self, env: &dyn Env) -> Result<Secret, SecretError> {
        match self {
            Self::Env(name) => {
                let value = env
                    .var(name)
                    .ok_or_else(|| SecretError::EnvUnset { name: name.clone() })?;
                if value.is_empty() {
                    return Err(SecretError::Empty {
                        reference: format!("env {name}"),
                    });
                }
                Ok(Secret(value))
            }
            Self::File(path) => {
                let value = read_bounded(path)?;
                let value = strip_one_line_break(value);
                if value.is_empty() {
                    return Err(SecretError::Empty {
                        reference: format!("file {}", path.display()),
                    });
                }
                Ok(Secret(value))
            }
        }
    }

    /// Reads a binary secret (a PKCS#12 certificate bundle) verbatim: no UTF-8 check, no
    /// line-break stripping. Only files can hold one; `validate` already refuses `env`.
    pub fn resolve_bytes(&self) -> Result<SecretBytes, SecretError> {
        match self {
            Self::Env(name) => Err(SecretError::NotAFile {
                reference: format!("env {name}"),
            }),
            Self::File(path) => {
                let bytes = read_bytes_bounded(path, MAX_BINARY_SECRET_FILE_BYTES)?;
                if bytes.is_empty() {
                    return Err(SecretError::Empty {
                        reference: format!("file {}", path.display()),
                    });
                }
                Ok(SecretBytes(bytes))
            }
        }
    }

    /// A short description for messages: `env NAME` / `file PATH`. Never the value.
    pub fn describe(&self) -> String {
        match self {
            Self::Env(name) => format!("env {name}"),
            Self::File(path) => format!("file {}", path.display()),
        }
    }
}

fn read_bytes_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

fn read_bounded(path: &Path) -> Result<String, SecretError> {
    let bytes = read_bytes_bounded(path, MAX_SECRET_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// `kubectl create secret --from-file` and editors keep a final newline that is not part of
/// the secret; anything else (inner whitespace) is kept verbatim.
fn strip_one_line_break(mut value: String) -> String {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    value
}

/// A secret value. It cannot be printed or serialized: `Debug` and `Display` show
/// `[redacted]`; read it with [`Secret::expose`] at the one place it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (tests, the demo command).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value. Call it only where the secret leaves the process (a token request).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A binary secret value (a PKCS#12 bundle). Like [`Secret`] it cannot be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// The bytes. Call it only where they are handed to the credential.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
