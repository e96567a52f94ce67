//! Throughput of framing + metadata parsing on one core, for ~1.5 KB Falcon-shaped events
//! delivered in 16 KiB chunks (what a TLS/chunked body typically yields).
//!
//! `cargo run --release -p falcon-stream --example framing_bench`
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use falcon_stream::{Frame, LineFramer, parse_line};

fn event_line(offset: u64) -> String {
    let pad = "x".repeat(900);
    format!(
        concat!(
            r#"{{"metadata":{{"customerIDString":"0123456789abcdef0123456789abcdef","offset":{o},"#,
            r#""eventType":"EppDetectionSummaryEvent","eventCreationTime":1742584040000,"version":"1.0"}},"#,
            r#""event":{{"AgentId":"fedcba9876543210fedcba9876543210","AggregateId":"aggind:0123:{o}","#,
            r#""CompositeId":"0123:ind:fedc:{o}","Hostname":"host-{h}","LogonDomain":"CORP","#,
            r#""Severity":70,"SeverityName":"High","ProcessId":1719309930613520072,"ParentProcessId":1719309930613520000,"#,
            r#""CommandLine":"C:\\Windows\\System32\\cmd.exe /c whoami \u0026\u0026 net user","#,
            r#""Tactic":"Discovery","Technique":"System Owner/User Discovery","Objective":"Explore","#,
            r#""Description":"A process enumerated local users.","Pad":"{pad}","Tags":["a","b",{{"k":null}}]}}}}"#
        ),
        o = offset,
        h = offset % 97,
        pad = pad
    )
}

fn main() {
    const EVENTS: u64 = 300_000;
    const CHUNK: usize = 16 * 1024;
    let mut stream = Vec::new();
    for o in 1..=EVENTS {
        stream.extend_from_slice(event_line(o).as_bytes());
        stream.extend_from_slice(if o % 2 == 0 { b"\r\n" } else { b"\n" });
        if o % 100 == 0 {
            stream.push(b'\n');
        }
    }
    let chunks: Vec<Bytes> = stream.chunks(CHUNK).map(Bytes::copy_from_slice).collect();
    let total_bytes = stream.len();
    drop(stream);

    for round in 0..3 {
        let start = Instant::now();
        let mut splitter = LineFramer::new(16 * 1024 * 1024, 64 * 1024);
        let mut frames = Vec::new();
        let mut events = 0u64;
        let mut last = 0u64;
        for chunk in &chunks {
            splitter.push(chunk, &mut frames);
            for frame in frames.drain(..) {
                if let Frame::Line(line) = frame
                    && let Ok(ev) = parse_line(0, &line)
                {
                    last = ev.offset;
                    events += 1;
                    black_box(&ev);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(events, EVENTS, "every event parsed");
        assert_eq!(last, EVENTS);
        println!(
            "round {round}: {events} events, {:.0} bytes/event: {:.0} events/s, {:.1} MiB/s ({secs:.3} s)",
            total_bytes as f64 / events as f64,
            events as f64 / secs,
            total_bytes as f64 / secs / (1024.0 * 1024.0)
        );
    }
}
