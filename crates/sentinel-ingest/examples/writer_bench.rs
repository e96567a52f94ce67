//! Writer throughput on one core: encode (`encode_record`) + batch + gzip (`Batcher`), next to
//! plain libdeflate gzip of the same JSON bytes.
//!
//! `cargo run --release -p sentinel-ingest --example writer_bench [events] [gzip_level]`
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![allow(clippy::too_many_lines, reason = "a linear benchmark script")]

use std::time::Instant;

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sentinel_ingest::{BatchLimit, Batcher, RecordMeta, encode_record};

/// Falcon-shaped event lines of ~1 KB with realistic entropy (hashes, ids, paths, times).
fn falcon_lines(n: usize) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(7);
    let types = [
        "DetectionSummaryEvent",
        "AuthActivityAuditEvent",
        "UserActivityAuditEvent",
        "EppDetectionSummaryEvent",
    ];
    let users = ["alice", "bob", "svc-backup", "administrator", "carol.smith"];
    (0..n)
        .map(|i| {
            let hex = |rng: &mut SmallRng, len: usize| -> String {
                (0..len).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
            };
            let sha = hex(&mut rng, 64);
            let md5 = hex(&mut rng, 32);
            let aid = hex(&mut rng, 32);
            let ts = 1_700_000_000_000u64 + i as u64 * 37;
            let host = format!("WKS-{:05}", rng.random_range(0..5000));
            let user = users[rng.random_range(0..users.len())];
            let et = types[i % types.len()];
            let sev = rng.random_range(1..6);
            format!(
                r#"{{"metadata":{{"customerIDString":"1234567890abcdef1234567890abcdef","offset":{i},"eventType":"{et}","eventCreationTime":{ts},"version":"1.0"}},"event":{{"ProcessStartTime":{},"ProcessEndTime":0,"ProcessId":{},"ParentProcessId":{},"ComputerName":"{host}","UserName":"{user}","DetectName":"Suspicious Activity","DetectDescription":"A process attempted to access credential material in an unusual way; review the process tree.","Severity":{sev},"SeverityName":"Medium","FileName":"powershell.exe","FilePath":"\\Device\\HarddiskVolume2\\Windows\\System32\\WindowsPowerShell\\v1.0","CommandLine":"powershell.exe -nop -w hidden -enc {}","SHA256String":"{sha}","MD5String":"{md5}","MachineDomain":"corp.example.com","SensorId":"{aid}","DetectId":"ldt:{aid}:{}","LocalIP":"10.{}.{}.{}","MACAddress":"00-50-56-{:02x}-{:02x}-{:02x}","Tactic":"Credential Access","Technique":"OS Credential Dumping","Objective":"Gain Access","PatternDispositionDescription":"Detection, standard detection.","PatternDispositionValue":0}}}}"#,
                ts / 1000 - 5,
                rng.random_range(1000..u64::from(u32::MAX)),
                rng.random_range(1000..u64::from(u32::MAX)),
                hex(&mut rng, 48),
                rng.random_range(0..u64::MAX),
                rng.random_range(0..255),
                rng.random_range(0..255),
                rng.random_range(0..255),
                rng.random_range(0..255u8),
                rng.random_range(0..255u8),
                rng.random_range(0..255u8),
            )
            .into_bytes()
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let level: u8 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let lines = falcon_lines(n);
    let ids: Vec<String> = (0..n)
        .map(|i| format!("1234567890abcdef1234567890abcdef:0:{i}"))
        .collect();
    let raw_bytes: usize = lines.iter().map(Vec::len).sum();

    for (name, limit) in [
        ("uncompressed 1,000,000 B", BatchLimit::default()),
        ("compressed 1 MiB-4 KiB", BatchLimit::compressed()),
    ] {
        let mut best = f64::MAX;
        let mut json_bytes = 0;
        let mut wire_bytes = 0;
        let mut bodies_json: Vec<Vec<u8>> = Vec::new();
        // As IngestClient does, each run starts from the ratio the previous one learnt.
        let mut learnt_ratio = None;
        for _round in 0..3 {
            let started = Instant::now();
            // Encode in reads of 1,000 events into one buffer, then hand out zero-copy slices,
            // as a writer reading its buffer would.
            let mut records: Vec<Bytes> = Vec::with_capacity(n);
            for (chunk_lines, chunk_ids) in lines.chunks(1000).zip(ids.chunks(1000)) {
                let mut buf = Vec::with_capacity(chunk_lines.iter().map(|l| l.len() + 200).sum());
                let mut ends = Vec::with_capacity(chunk_lines.len());
                for (k, (line, id)) in chunk_lines.iter().zip(chunk_ids).enumerate() {
                    let meta = RecordMeta {
                        time_generated_ms: 1_700_000_000_000 + k as u64,
                        event_id: id,
                        event_type: "DetectionSummaryEvent",
                        customer_id: "1234567890abcdef1234567890abcdef",
                        partition: 0,
                        offset: k as u64,
                    };
                    encode_record(&meta, line, &mut buf);
                    ends.push(buf.len());
                }
                let frozen = Bytes::from(buf);
                let mut start = 0;
                for end in ends {
                    records.push(frozen.slice(start..end));
                    start = end;
                }
            }
            let mut batcher = Batcher::new(limit, level).expect("valid settings");
            if let Some(ratio) = learnt_ratio {
                batcher = batcher.with_ratio_estimate(ratio);
            }
            let plan = batcher.plan(records.iter().map(Bytes::len));
            json_bytes = 0;
            wire_bytes = 0;
            let mut sent = Vec::new();
            let mut queue: Vec<std::ops::Range<usize>> = plan.batches.into_iter().rev().collect();
            while let Some(range) = queue.pop() {
                if let Ok(body) = batcher.build(&records[range.clone()]) {
                    json_bytes += body.uncompressed_len;
                    wire_bytes += body.gzip.len();
                    sent.push(range);
                } else {
                    let mid = range.start + range.len() / 2;
                    queue.push(mid..range.end);
                    queue.push(range.start..mid);
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
            learnt_ratio = Some(batcher.ratio_estimate());
            // Untimed: the exact JSON bodies of this run, for the baseline.
            bodies_json = sent
                .into_iter()
                .map(|range| {
                    let mut json = vec![b'['];
                    for (i, r) in records[range].iter().enumerate() {
                        if i > 0 {
                            json.push(b',');
                        }
                        json.extend_from_slice(r);
                    }
                    json.push(b']');
                    json
                })
                .collect();
        }
        // Baseline: libdeflate gzip alone over exactly the same bodies.
        let mut baseline = f64::MAX;
        let mut gz = Batcher::new(BatchLimit::default(), level).expect("valid settings");
        for _ in 0..3 {
            let started = Instant::now();
            let mut out = 0;
            for body in &bodies_json {
                out += gz.gzip(body).len();
            }
            std::hint::black_box(out);
            baseline = baseline.min(started.elapsed().as_secs_f64());
        }
        let mib = |bytes: usize, secs: f64| bytes as f64 / (1024.0 * 1024.0) / secs;
        let pipeline_mib = mib(json_bytes, best);
        let gzip_mib = mib(json_bytes, baseline);
        println!(
            "mode: {name}, gzip level {level}, {n} events, {} bodies",
            bodies_json.len()
        );
        println!(
            "  encode+batch+gzip: {:>10.0} events/s  {pipeline_mib:>7.1} MiB/s of JSON  {:>7.1} MiB/s of raw events",
            n as f64 / best,
            mib(raw_bytes, best)
        );
        println!("  libdeflate gzip alone on the same JSON: {gzip_mib:>7.1} MiB/s");
        println!(
            "  pipeline / gzip: {:.0} %   compression ratio {:.2}   avg body {:.0} B on the wire",
            100.0 * pipeline_mib / gzip_mib,
            json_bytes as f64 / wire_bytes as f64,
            wire_bytes as f64 / bodies_json.len() as f64
        );
    }
}
