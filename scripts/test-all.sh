#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, conformance (testbench), crash and
# end-to-end suites. Works on a fresh machine with only the Rust toolchain, gcc, make,
# perl and python3: every native dependency is built from vendored sources, and test
# prerequisites are provisioned here on first use (into .cache/, reused afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end suites drive the real binary as a child process: build it first.
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-fail-fast "$@"
