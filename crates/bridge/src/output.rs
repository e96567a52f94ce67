//! The only place that writes to the terminal directly: command output, not logs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// Prints command output (not a log line) to stdout.
pub(crate) fn stdout(text: &str) {
    println!("{text}");
}

/// Prints a message for the operator to stderr.
pub(crate) fn stderr(text: &str) {
    eprintln!("{text}");
}
