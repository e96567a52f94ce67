//! The only place that writes to the terminal directly: command output, not logs.
//!
//! A closed pipe (`falcon-sentinel-bridge validate … | head`) is not an error worth a panic:
//! write failures are ignored, as a command's reader going away is the reader's choice.

use std::io::Write as _;

/// Prints command output (not a log line) to stdout.
pub(crate) fn stdout(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints a message for the operator to stderr.
pub(crate) fn stderr(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
