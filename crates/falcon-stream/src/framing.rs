//! Line framing of the Event Streams body (reference §1.5): one JSON object per line, LF or
//! CRLF, blank keepalive lines in between, lines split across chunks at any byte.
//!
//! Pure and synchronous so it can be property-tested. Memory is bounded by `max_line + 1`
//! bytes of carry-over plus one dead-letter prefix: a line longer than `max_line` is skipped
//! up to its newline without being buffered and reported as [`Frame::Oversized`].
//! Complete lines inside one chunk are zero-copy `Bytes` slices of that chunk.

use bytes::{Bytes, BytesMut};

/// One framing result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A non-blank line without its line ending.
    Line(Bytes),
    /// A line longer than the limit; only its first bytes were kept.
    Oversized {
        /// Full length of the line without its line ending.
        len: usize,
        /// The first bytes of the line (at most the framer's prefix cap).
        prefix: Bytes,
    },
}

#[derive(Debug)]
struct Discard {
    len: usize,
    prefix: Bytes,
    last_cr: bool,
}

/// Incremental splitter of a byte stream into lines.
#[derive(Debug)]
pub struct LineFramer {
    max_line: usize,
    prefix_cap: usize,
    buf: BytesMut,
    discarding: Option<Discard>,
    keepalives: u64,
}

impl LineFramer {
    /// A framer refusing lines longer than `max_line` bytes (line ending excluded), keeping
    /// at most `prefix_cap` bytes of such a line for the dead letter.
    pub fn new(max_line: usize, prefix_cap: usize) -> Self {
        LineFramer {
            max_line,
            prefix_cap,
            buf: BytesMut::new(),
            discarding: None,
            keepalives: 0,
        }
    }

    /// Blank (keepalive) lines seen so far.
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }

    /// Bytes of an unfinished line currently held.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.discarding.as_ref().map_or(0, |d| d.len)
    }

    /// Forgets an unfinished line, returning its length so far. Called at end of stream: a
    /// line cut by the connection is not an event, it is read again after reconnecting.
    pub fn reset(&mut self) -> usize {
        let pending = self.pending();
        self.buf.clear();
        self.discarding = None;
        pending
    }

    /// Feeds one chunk, appending every completed frame to `out`.
    #[allow(clippy::single_match_else)] // both arms of "newline or not" are the algorithm
    pub fn push(&mut self, chunk: &Bytes, out: &mut Vec<Frame>) {
        let mut pos = 0;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let newline = memchr::memchr(b'\n', rest);
            if let Some(d) = &mut self.discarding {
                match newline {
                    Some(i) => {
                        let cr = if i > 0 {
                            rest[i - 1] == b'\r'
                        } else {
                            d.last_cr
                        };
                        let len = d.len + i - usize::from(cr);
                        let prefix = std::mem::take(&mut d.prefix);
                        self.discarding = None;
                        out.push(Frame::Oversized { len, prefix });
                        pos += i + 1;
                    }
                    None => {
                        d.len += rest.len();
                        d.last_cr = rest.last() == Some(&b'\r');
                        pos = chunk.len();
                    }
                }
                continue;
            }
            match newline {
                Some(i) => {
                    let end = pos + i;
                    if self.buf.is_empty() {
                        self.emit(chunk.slice(pos..end), out);
                    } else if self.buf.len() + i > self.max_line + 1 {
                        let cr = if i > 0 {
                            rest[i - 1] == b'\r'
                        } else {
                            self.buf.last() == Some(&b'\r')
                        };
                        let len = self.buf.len() + i - usize::from(cr);
                        let prefix = self.take_prefix(rest);
                        out.push(Frame::Oversized { len, prefix });
                    } else {
                        self.buf.extend_from_slice(&rest[..i]);
                        let line = self.buf.split().freeze();
                        self.emit(line, out);
                    }
                    pos = end + 1;
                }
                None => {
                    if self.buf.len() + rest.len() > self.max_line + 1 {
                        let len = self.buf.len() + rest.len();
                        let prefix = self.take_prefix(rest);
                        self.discarding = Some(Discard {
                            len,
                            prefix,
                            last_cr: rest.last() == Some(&b'\r'),
                        });
                    } else {
                        self.buf.extend_from_slice(rest);
                    }
                    pos = chunk.len();
                }
            }
        }
    }

    /// The first `prefix_cap` bytes of the carried-over part plus `rest`; clears the carry.
    fn take_prefix(&mut self, rest: &[u8]) -> Bytes {
        let from_buf = self.buf.len().min(self.prefix_cap);
        let from_rest = (self.prefix_cap - from_buf).min(rest.len());
        let mut prefix = BytesMut::with_capacity(from_buf + from_rest);
        prefix.extend_from_slice(&self.buf[..from_buf]);
        prefix.extend_from_slice(&rest[..from_rest]);
        self.buf.clear();
        prefix.freeze()
    }

    fn emit(&mut self, mut line: Bytes, out: &mut Vec<Frame>) {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max_line {
            let prefix = line.slice(..self.prefix_cap.min(line.len()));
            out.push(Frame::Oversized {
                len: line.len(),
                prefix,
            });
        } else if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            self.keepalives += 1;
        } else {
            out.push(Frame::Line(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(chunks: &[&[u8]], max: usize, cap: usize) -> (Vec<Frame>, LineFramer) {
        let mut f = LineFramer::new(max, cap);
        let mut out = Vec::new();
        for c in chunks {
            f.push(&Bytes::copy_from_slice(c), &mut out);
        }
        (out, f)
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn lf_crlf_and_keepalives() {
        let (out, f) = frame_all(&[b"{\"a\":1}\n\r\n\n{\"b\":2}\r\n  \n{\"c\""], 100, 10);
        assert_eq!(out, vec![line("{\"a\":1}"), line("{\"b\":2}")]);
        assert_eq!(f.keepalives(), 3);
        assert_eq!(f.pending(), 4);
    }

    #[test]
    fn crlf_split_between_chunks() {
        let (out, _) = frame_all(&[b"{\"a\":1}\r", b"\n{\"b\":2}\r", b"\n"], 100, 10);
        assert_eq!(out, vec![line("{\"a\":1}"), line("{\"b\":2}")]);
    }

    #[test]
    fn complete_lines_are_slices_of_the_chunk() {
        let chunk = Bytes::from_static(b"{\"a\":1}\n{\"b\":2}\n");
        let mut f = LineFramer::new(100, 10);
        let mut out = Vec::new();
        f.push(&chunk, &mut out);
        let Frame::Line(l) = &out[1] else { panic!() };
        assert_eq!(l.as_ptr(), chunk[8..].as_ptr());
    }

    #[test]
    fn oversized_within_one_chunk() {
        let (out, _) = frame_all(&[b"{\"x\":\"0123456789\"}\r\nok\n"], 10, 4);
        assert_eq!(
            out,
            vec![
                Frame::Oversized {
                    len: 18,
                    prefix: Bytes::from_static(b"{\"x\"")
                },
                line("ok")
            ]
        );
    }

    #[test]
    fn oversized_across_chunks_is_not_buffered() {
        let big = vec![b'x'; 1000];
        let mut f = LineFramer::new(16, 8);
        let mut out = Vec::new();
        f.push(&Bytes::from_static(b"abc"), &mut out);
        for _ in 0..100 {
            f.push(&Bytes::copy_from_slice(&big), &mut out);
            assert!(f.buf.capacity() <= 64, "buffered {}", f.buf.capacity());
        }
        f.push(&Bytes::from_static(b"\r"), &mut out);
        f.push(&Bytes::from_static(b"\nnext\n"), &mut out);
        assert_eq!(
            out,
            vec![
                Frame::Oversized {
                    len: 100_003,
                    prefix: Bytes::from_static(b"abcxxxxx")
                },
                line("next")
            ]
        );
    }

    #[test]
    fn exactly_max_with_crlf_split_is_accepted() {
        let (out, _) = frame_all(&[b"0123456789\r", b"\n"], 10, 4);
        assert_eq!(out, vec![line("0123456789")]);
        let (out, _) = frame_all(&[b"01234567890", b"\n"], 10, 4);
        assert_eq!(
            out,
            vec![Frame::Oversized {
                len: 11,
                prefix: Bytes::from_static(b"0123")
            }]
        );
    }

    #[test]
    fn every_split_point_of_a_realistic_stream() {
        let stream: &[u8] = b"{\"metadata\":{\"offset\":1}}\r\n\n{\"metadata\":{\"offset\":2},\"event\":{\"s\":\"\xc3\xa9\"}}\n\r\n";
        let (whole, _) = frame_all(&[stream], 1000, 10);
        assert_eq!(whole.len(), 2);
        for i in 0..=stream.len() {
            let (out, f) = frame_all(&[&stream[..i], &stream[i..]], 1000, 10);
            assert_eq!(out, whole, "split at {i}");
            assert_eq!(f.pending(), 0);
        }
    }

    /// A random stream of lines, each ended with LF or CRLF, with keepalives and a few
    /// oversized lines, cut into random chunks: the frames equal the line-by-line truth.
    fn model(lines: &[(Vec<u8>, bool)], max: usize, cap: usize) -> Vec<Frame> {
        lines
            .iter()
            .filter(|(l, _)| !l.is_empty())
            .map(|(l, _)| {
                if l.len() > max {
                    Frame::Oversized {
                        len: l.len(),
                        prefix: Bytes::copy_from_slice(&l[..cap.min(l.len())]),
                    }
                } else {
                    Frame::Line(Bytes::copy_from_slice(l))
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn prop_any_chunking_gives_the_same_frames(
            lines in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(b'{'), Just(b'"'), Just(b'a'), Just(b'}'), Just(b'\r'), Just(0xffu8)], 0..60), any::<bool>()),
                0..30),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            // A CR at the end of a line's content would merge with its terminator; keep CRs inside only.
            let lines: Vec<(Vec<u8>, bool)> = lines.into_iter().map(|(mut l, crlf)| {
                while l.last() == Some(&b'\r') { l.pop(); }
                if l.iter().all(|b| *b == b'\r') { l.clear(); }
                (l, crlf)
            }).collect();
            let mut stream = Vec::new();
            for (l, crlf) in &lines {
                stream.extend_from_slice(l);
                stream.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points { chunks.push(&stream[prev..p]); prev = p; }
            chunks.push(&stream[prev..]);
            let (out, f) = frame_all(&chunks, 40, 8);
            prop_assert_eq!(out, model(&lines, 40, 8));
            prop_assert_eq!(f.pending(), 0);
        }
    }
}
