//! `LineFramer` against a line-by-line reference model, and `parse_line` on every line.
//!
//! Input layout (so that seed files are readable streams): byte 0 picks `max_line`, byte 1 the
//! dead-letter prefix cap, byte 2 how many cut points follow as little-endian `u16`s; the rest
//! is the stream. The stream is pushed in chunks cut at those points (sorted, clamped), and the
//! frames must equal those of a reference that splits the whole concatenation at `\n`.
//!
//! The caller in `source.rs` always passes `prefix_cap <= max_line`
//! (`DEAD_LETTER_RAW_CAP.min(max_event_bytes)`); the oracle holds the framer to that contract.
#![no_main]

use bytes::Bytes;
use falcon_stream::{DeadLetterReason, Frame, LineFramer, parse_line};
use libfuzzer_sys::fuzz_target;

/// What the framer must produce for `stream` pushed in any chunking: (frames, keepalives,
/// bytes of the unfinished last line).
fn reference(stream: &[u8], max_line: usize, cap: usize) -> (Vec<Frame>, u64, usize) {
    let mut frames = Vec::new();
    let mut keepalives = 0;
    let mut segments: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    // The text after the last newline is not a line yet.
    let pending = segments.pop().map_or(0, <[u8]>::len);
    for seg in segments {
        let line = seg.strip_suffix(b"\r").unwrap_or(seg);
        if line.len() > max_line {
            frames.push(Frame::Oversized {
                len: line.len(),
                prefix: Bytes::copy_from_slice(&line[..cap.min(line.len())]),
            });
        } else if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            keepalives += 1;
        } else {
            frames.push(Frame::Line(Bytes::copy_from_slice(line)));
        }
    }
    (frames, keepalives, pending)
}

/// Valid JSON by grammar (numbers of any magnitude, as `parse_line` sees them).
fn is_json(line: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
}

fn first_non_ws(line: &[u8]) -> Option<u8> {
    line.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn check_parse(line: &Bytes) {
    let parsed = parse_line(7, line);
    let utf8 = std::str::from_utf8(line).is_ok();
    match &parsed {
        Ok(ev) => {
            assert!(utf8);
            assert_eq!(ev.partition, 7);
            assert_eq!(&ev.raw[..], &line[..], "raw must be the line itself");
            assert!(is_json(line), "accepted line must be JSON");
            assert_eq!(
                first_non_ws(line),
                Some(b'{'),
                "accepted line must be an object"
            );
            // `Value` refuses numbers beyond f64 (1e400) that the event body may hold and
            // `parse_line` rightly skips; compare the offset whenever `Value` can hold the line.
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) {
                let offset = &value["metadata"]["offset"];
                let want = offset
                    .as_u64()
                    .or_else(|| offset.as_str().and_then(|s| s.trim().parse().ok()));
                assert_eq!(Some(ev.offset), want, "offset {offset}");
            }
        }
        Err((DeadLetterReason::InvalidUtf8, _)) => assert!(!utf8),
        Err((DeadLetterReason::NotAnObject, _)) => {
            assert!(is_json(line), "NotAnObject must be valid JSON");
            assert_ne!(first_non_ws(line), Some(b'{'));
        }
        Err((DeadLetterReason::Oversized, _)) => panic!("parse_line never reports Oversized"),
        Err((DeadLetterReason::InvalidJson | DeadLetterReason::MissingOffset, _)) => {
            assert!(utf8);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Small limits (high bit clear) reach oversized lines, the carry-over buffer and the
    // discard state with short inputs, 0 being the degenerate "every line is oversized";
    // large ones (64 B to 8 KiB) let realistic events through to `parse_line`.
    let max_line = if data[0] & 0x80 == 0 {
        usize::from(data[0] % 64)
    } else {
        64 << (data[0] & 0x07)
    };
    let cap = usize::from(data[1]) % (max_line + 1);
    let ncuts = usize::from(data[2] % 16);
    let rest = &data[3..];
    let (cut_bytes, stream) = rest.split_at((2 * ncuts).min(rest.len()));
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let mut framer = LineFramer::new(max_line, cap);
    let mut frames = Vec::new();
    let mut prev = 0;
    for cut in cuts.into_iter().chain(std::iter::once(stream.len())) {
        framer.push(&Bytes::copy_from_slice(&stream[prev..cut]), &mut frames);
        prev = cut;
    }
    let (want, keepalives, pending) = reference(stream, max_line, cap);
    assert_eq!(frames, want, "max_line={max_line} cap={cap}");
    assert_eq!(framer.keepalives(), keepalives);
    assert_eq!(framer.pending(), pending);
    assert_eq!(framer.reset(), pending);
    assert_eq!(framer.pending(), 0);

    for frame in &frames {
        match frame {
            Frame::Line(line) => check_parse(line),
            Frame::Oversized { prefix, len } => {
                assert!(prefix.len() <= cap && prefix.len() <= *len);
            }
        }
    }
});
