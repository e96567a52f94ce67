//! Positions of key paths in a YAML document, so semantic errors found after parsing still
//! point at `file:line:column`.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// 1-based line and column (characters).
pub(crate) type Pos = (usize, usize);

/// Where a node sits: its key (for mapping entries) and its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub(crate) key: Option<Pos>,
    pub(crate) value: Pos,
}

/// Key path (`a.b[0].c`) → position, for the first document of a YAML text.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    places: HashMap<String, Place>,
    /// False when the text has no node at all (empty file or comments only).
    pub(crate) has_root: bool,
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<(String, Pos)>,
        expecting_key: bool,
    },
    Seq {
        path: String,
        next_index: usize,
    },
    /// A complex (non-scalar) mapping key; its content is not addressable.
    SkipKey {
        depth: usize,
    },
}

impl PathIndex {
    /// Indexes what can be parsed; a syntax error just ends the index early (serde reports it).
    #[allow(clippy::too_many_lines)] // one state machine over the events, easier to check whole
    pub(crate) fn build(text: &str) -> Self {
        let mut index = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let pos = (span.start.line(), span.start.col() + 1);
            let (is_node, opens_map, opens_seq, key_text) = match &event {
                Event::Scalar(text, ..) => (true, false, false, Some(text.to_string())),
                Event::Alias(_) => (true, false, false, None),
                Event::MappingStart(..) => (true, true, false, None),
                Event::SequenceStart(..) => (true, false, true, None),
                Event::MappingEnd | Event::SequenceEnd => {
                    match stack.pop() {
                        Some(Frame::SkipKey { depth }) if depth > 0 => {
                            stack.push(Frame::SkipKey { depth: depth - 1 });
                        }
                        Some(Frame::SkipKey { .. }) => {
                            // The complex key is complete; its value follows.
                            if let Some(Frame::Map {
                                pending_key,
                                expecting_key,
                                ..
                            }) = stack.last_mut()
                            {
                                *pending_key = Some(("?".to_owned(), pos));
                                *expecting_key = false;
                            }
                        }
                        _ => {}
                    }
                    if stack.is_empty() {
                        break;
                    }
                    continue;
                }
                Event::DocumentEnd => break,
                _ => continue,
            };
            if !is_node {
                continue;
            }
            if let Some(Frame::SkipKey { depth }) = stack.last_mut() {
                if opens_map || opens_seq {
                    *depth += 1;
                }
                continue;
            }
            let (path, key) = match stack.last_mut() {
                None => {
                    index.has_root = true;
                    (String::new(), None)
                }
                Some(Frame::Map {
                    expecting_key: expecting @ true,
                    pending_key,
                    ..
                }) => {
                    if let Some(text) = key_text {
                        *pending_key = Some((text, pos));
                        *expecting = false;
                    } else if opens_map || opens_seq {
                        stack.push(Frame::SkipKey { depth: 0 });
                    } else {
                        // An alias used as a key.
                        *pending_key = Some(("?".to_owned(), pos));
                        *expecting = false;
                    }
                    continue;
                }
                Some(Frame::Map {
                    path,
                    pending_key,
                    expecting_key,
                }) => {
                    *expecting_key = true;
                    let (key, key_pos) =
                        pending_key.take().unwrap_or_else(|| ("?".to_owned(), pos));
                    (join_key(path, &key), Some(key_pos))
                }
                Some(Frame::Seq { path, next_index }) => {
                    let item = format!("{path}[{next_index}]");
                    *next_index += 1;
                    (item, None)
                }
                Some(Frame::SkipKey { .. }) => continue,
            };
            index
                .places
                .entry(path.clone())
                .or_insert(Place { key, value: pos });
            if opens_map {
                stack.push(Frame::Map {
                    path,
                    pending_key: None,
                    expecting_key: true,
                });
            } else if opens_seq {
                stack.push(Frame::Seq {
                    path,
                    next_index: 0,
                });
            } else if stack.is_empty() {
                break;
            }
        }
        index
    }

    /// The position of `path`: its key when `at_key` (or its value otherwise). A path that is
    /// not in the document (a missing key) falls back to its nearest present ancestor's key,
    /// then to the start of the document.
    pub(crate) fn locate(&self, path: &str, at_key: bool) -> Pos {
        if let Some(place) = self.places.get(path) {
            return if at_key {
                place.key.unwrap_or(place.value)
            } else {
                place.value
            };
        }
        let mut current = path;
        while let Some(parent) = parent_path(current) {
            if let Some(place) = self.places.get(parent) {
                return place.key.unwrap_or(place.value);
            }
            current = parent;
        }
        (1, 1)
    }

    /// Every mapping entry as (parent path, key, key position), in file order.
    pub(crate) fn entries(&self) -> Vec<(&str, &str, Pos)> {
        let mut entries: Vec<(&str, &str, Pos)> = self
            .places
            .iter()
            .filter_map(|(path, place)| {
                let key_pos = place.key?;
                let (parent, key) = match path.rfind('.') {
                    Some(i) => (&path[..i], &path[i + 1..]),
                    None => ("", path.as_str()),
                };
                // A key after a sequence index (`a[0].b`) still has a map parent; a path
                // ending in `]` is a sequence item, which has no key.
                (!key.ends_with(']')).then_some((parent, key, key_pos))
            })
            .collect();
        entries.sort_by_key(|(_, _, pos)| *pos);
        entries
    }

    /// Whether `path` exists in the document.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.places.contains_key(path)
    }
}

pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → `""` → `None`.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(i) => Some(&path[..i]),
        None => Some(""),
    }
}
