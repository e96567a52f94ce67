#!/usr/bin/env bash
# Installs the tansu Kafka-compatible broker (0.6.0, sqlite storage) used by the Kafka
# buffer tests, once, into a cache outside the work tree, and prints its path.
# The feature set is the one verified on this kind of machine (shared/reference/verified-here.md).
set -euo pipefail
tools="${FSB_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/falcon-sentinel-bridge/tools}"
bin="$tools/bin/tansu"
if [ ! -x "$bin" ]; then
    echo "provisioning tansu 0.6.0 into $tools (first run only; ~20 minutes on 2 cores)" >&2
    cargo install tansu --version 0.6.0 --features dynostore,libsql --locked --root "$tools" >&2
fi
echo "$bin"
