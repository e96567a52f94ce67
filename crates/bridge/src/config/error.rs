//! Config errors: every one carries `file:line:column`, the key path and a hint.

use std::fmt;

/// Which stage of the pipeline found the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Read,
    /// `${VAR}` interpolation failed.
    Interpolation,
    /// The YAML is malformed or does not match the schema (unknown key, wrong type).
    Parse,
    /// A value is well-formed but not acceptable (range, format, combination).
    Invalid,
    /// A file named by the config is missing or unusable (`Config::check_files`).
    File,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What was wrong, by pipeline stage.
    pub kind: ErrorKind,
    /// The file name (or another origin label given to `load_str`).
    pub origin: String,
    /// 1-based line, `0` when the problem has no position (file unreadable).
    pub line: usize,
    /// 1-based column in characters, `0` when unknown.
    pub column: usize,
    /// Dotted key path such as `sentinel.credential.type`; empty for the whole document.
    pub path: String,
    /// What is wrong, as a lowercase phrase.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column.max(1))?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in a config, in file order. `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for an error returned by this module; provided for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The process exit code for a config that cannot be used: 66 (`EX_NOINPUT`) when the
    /// file could not be read, 64 otherwise (the house convention for an invalid config).
    pub fn exit_code(&self) -> u8 {
        if !self.0.is_empty() && self.0.iter().all(|e| e.kind == ErrorKind::Read) {
            66
        } else {
            64
        }
    }

    pub(crate) fn single(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A semantic problem found by `validate`, before it is given a position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) path: String,
    /// Point at the key itself (a key that must not be there) rather than at its value.
    pub(crate) at_key: bool,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

/// A hint for an error message; an `Option` because that is what every caller stores.
#[allow(clippy::unnecessary_wraps)]
pub(crate) fn hint(text: &str) -> Option<String> {
    Some(text.to_owned())
}
