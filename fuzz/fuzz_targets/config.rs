//! `config::load_str` on arbitrary text: it must never panic, and every error it reports must
//! carry the origin it was given and a real position (1-based line within the document).
//!
//! Seeds are the shipped configs (config/reference.yaml, config/examples/*.yaml); libFuzzer's
//! mutations of them reach the interpolation, YAML, schema and validation stages.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use falcon_sentinel_bridge::config::{self, ErrorKind};
use libfuzzer_sys::fuzz_target;

fn env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        [
            ("FALCON_CLIENT_ID", "0123456789abcdef0123456789abcdef"),
            ("FALCON_CLOUD", "eu-1"),
            ("SENTINEL_ENDPOINT", "https://dce.example.invalid"),
            ("EMPTY", ""),
            // Values that are themselves YAML syntax or span lines must not confuse positions.
            ("MULTILINE", "a\nb: c\n"),
            ("TRICKY", "${NOT_INTERPOLATED} [ { : # '\""),
            ("UNICODE", "\u{e9}\u{1F600}\t"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let errors = match config::load_str(text, "fuzz.yaml", env()) {
        Ok(config) => {
            // What `check-config` prints for an accepted file: must not panic either.
            let _ = config.redacted_yaml();
            return;
        }
        Err(errors) => errors,
    };
    assert!(!errors.0.is_empty(), "Err with no error in it");
    // The document's line count, generously: YAML breaks lines at LF, CRLF and a lone CR;
    // interpolation may add lines; a position may point one past the last line (end of input).
    let breaks =
        |s: &str| s.matches('\n').count() + s.matches('\r').count() - s.matches("\r\n").count();
    let added: usize = env().values().map(|v| breaks(v)).sum();
    let lines = breaks(text) + 1 + added * text.matches("${").count();
    for e in &errors.0 {
        assert_eq!(e.origin, "fuzz.yaml");
        assert_ne!(e.kind, ErrorKind::Read, "load_str reads nothing: {e}");
        assert!(e.line >= 1, "error without a line: {e}");
        assert!(
            e.line <= lines + 1,
            "line {} beyond the {lines}-line document: {e}",
            e.line
        );
        // Display must work for every error (it is what the operator sees).
        let _ = e.to_string();
    }
});
