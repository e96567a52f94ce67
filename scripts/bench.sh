#!/usr/bin/env bash
# Benchmarks: figures, not assertions. Builds everything in the release profile, then runs
#   1. the Falcon framer + metadata parser on one core      (goal ≥ 300k events/s)
#   2. the disk buffer: durable appends and read+ack        (goals ≥ 50k / ≥ 200k events/s)
#      and the Kafka backend beside it, against librdkafka's mock cluster (the client's own
#      cost; `kafka_bench tansu N` runs it against a tansu broker)
#   3. the writer: encode + batch + gzip on one core vs plain gzip (goals ≥ 70%, ≥ 33 MiB/s)
#   4. end to end, the real binary against the testbench: source rate, drain of a backlog
#      after an outage (time, events/s, peak RSS; goal ≤ 128 MiB), restart after SIGKILL
#      (goal ≤ 5 s)
# FSB_BENCH_EVENTS sets the end-to-end backlog (default 1,000,000 events, ~1.5 GB on disk).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --workspace --bins --examples
run() { printf '\n=== %s\n' "$1"; shift; "$@"; }
run "falcon-stream: framing + metadata parse" target/release/examples/framing_bench
run "bridge-buffer: disk backend" target/release/examples/disk_bench
run "bridge-buffer: Kafka backend (mock cluster)" target/release/examples/kafka_bench mock 50000
run "sentinel-ingest: writer vs plain gzip" target/release/examples/writer_bench
run "end to end (bridge binary + testbench)" env FSB_BIN=target/release/falcon-sentinel-bridge target/release/examples/bench
