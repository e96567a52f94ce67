//! `${VAR}` / `${VAR:-default}` interpolation on the raw text, before YAML parsing.
//!
//! Rules (documented in `config/reference.yaml`):
//! - `${NAME}`: the value of `NAME`; an unset variable is an error.
//! - `${NAME:-default}`: `default` when `NAME` is unset or empty.
//! - `$${`: a literal `${`.
//! - Lines whose first non-blank character is `#` (whole-line comments) are left alone, so
//!   commented-out examples never need the variables they mention.
//! - Values must not contain line breaks: interpolation never changes line numbers, so every
//!   later error still points at the right line. Columns are mapped back through
//!   [`ColumnMap`].
//!
//! Interpolation is textual: a value is inserted as-is into the YAML. Quote the placeholder
//! (`"${NAME}"`) when a value may contain YAML syntax such as `: ` or ` #`.

use super::env::Env;
use super::error::hint;

/// Where a substitution happened on one line, in 1-based character columns.
#[derive(Debug, Clone, Copy)]
struct Substitution {
    out_start: usize,
    out_len: usize,
    src_start: usize,
    src_len: usize,
}

/// Maps a column of the interpolated text back to the column of the source text.
#[derive(Debug, Default)]
pub(crate) struct ColumnMap {
    lines: Vec<Vec<Substitution>>,
}

impl ColumnMap {
    /// The source column for `column` (1-based, characters) of the interpolated `line`.
    pub(crate) fn source_column(&self, line: usize, column: usize) -> usize {
        let Some(subs) = line.checked_sub(1).and_then(|i| self.lines.get(i)) else {
            return column;
        };
        let mut shift: isize = 0;
        for sub in subs {
            if column < sub.out_start {
                break;
            }
            if column < sub.out_start + sub.out_len {
                return sub.src_start;
            }
            shift += sub.src_len.cast_signed() - sub.out_len.cast_signed();
        }
        column.saturating_add_signed(shift).max(1)
    }
}

/// An interpolation problem at a source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterpolationError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

/// Interpolates `source`; collects every problem rather than stopping at the first.
pub(crate) fn interpolate(
    source: &str,
    env: &dyn Env,
) -> Result<(String, ColumnMap), Vec<InterpolationError>> {
    let mut out = String::with_capacity(source.len());
    let mut map = ColumnMap::default();
    let mut errors = Vec::new();

    for (index, line) in source.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let mut subs = Vec::new();
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            map.lines.push(subs);
            continue;
        }
        let mut rest = line;
        let mut src_col = 1;
        let mut out_col = 1;
        while let Some(pos) = rest.find('$') {
            let before = &rest[..pos];
            out.push_str(before);
            let n = before.chars().count();
            src_col += n;
            out_col += n;
            rest = &rest[pos..];

            if rest.starts_with("$${") {
                out.push_str("${");
                subs.push(Substitution {
                    out_start: out_col,
                    out_len: 2,
                    src_start: src_col,
                    src_len: 3,
                });
                src_col += 3;
                out_col += 2;
                rest = &rest[3..];
            } else if rest.starts_with("${") {
                let Some(close) = rest.find('}') else {
                    errors.push(InterpolationError {
                        line: line_no,
                        column: src_col,
                        message: "`${` is not closed on this line".to_owned(),
                        hint: hint(
                            "write `${NAME}` or `${NAME:-default}` on one line, or \
                                `$${` for a literal `${`",
                        ),
                    });
                    // The rest of the line cannot be interpreted; keep it so YAML errors
                    // further down still line up.
                    out.push_str(rest);
                    rest = "";
                    break;
                };
                let placeholder = &rest[..=close];
                let inner = &placeholder[2..placeholder.len() - 1];
                let src_len = placeholder.chars().count();
                match resolve(inner, env) {
                    Ok(value) => {
                        let out_len = value.chars().count();
                        out.push_str(&value);
                        subs.push(Substitution {
                            out_start: out_col,
                            out_len,
                            src_start: src_col,
                            src_len,
                        });
                        out_col += out_len;
                    }
                    Err((message, hint)) => {
                        errors.push(InterpolationError {
                            line: line_no,
                            column: src_col,
                            message,
                            hint,
                        });
                        out.push_str(placeholder);
                        out_col += src_len;
                    }
                }
                src_col += src_len;
                rest = &rest[close + 1..];
            } else {
                out.push('$');
                src_col += 1;
                out_col += 1;
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        map.lines.push(subs);
    }

    if errors.is_empty() {
        Ok((out, map))
    } else {
        Err(errors)
    }
}

fn resolve(inner: &str, env: &dyn Env) -> Result<String, (String, Option<String>)> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    if !is_var_name(name) {
        return Err((
            format!("`${{{inner}}}` is not a valid placeholder"),
            hint(
                "variable names are letters, digits and `_`, not \
                    starting with a digit; the forms are `${NAME}` and \
                    `${NAME:-default}`",
            ),
        ));
    }
    let value = match (env.var(name), default) {
        (Some(value), Some(default)) if value.is_empty() => default.to_owned(),
        (Some(value), _) => value,
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err((
                format!("environment variable {name} is not set"),
                Some(format!(
                    "set {name}, or give a default with `${{{name}:-value}}`"
                )),
            ));
        }
    };
    if value.contains(['\n', '\r']) {
        return Err((
            format!("environment variable {name} contains a line break"),
            hint(
                "interpolated values must be one line; put multi-line \
                    secrets in a file and reference it with `{ file: /path \
                    }`",
            ),
        ));
    }
    Ok(value)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
