#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, conformance (testbench), crash and
# end-to-end suites. Works on a fresh machine with only the Rust toolchain, gcc, make,
# perl and python3: every native dependency is built from vendored sources, and test
# prerequisites are provisioned here on first use (into .cache/, reused afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kafka suites run against tansu, a Kafka-compatible broker: install it once (cached
# outside the work tree; about 20 minutes on 2 cores the first time).
TANSU_BIN="$(scripts/provision-tansu.sh)"
export TANSU_BIN

# The end-to-end suites drive the real binary as a child process: build it first.
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-fail-fast "$@"
