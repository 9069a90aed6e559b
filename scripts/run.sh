#!/usr/bin/env bash
# Runs the gateway with config/switchboard.toml (SIP on 5060 UDP+TCP, admin on 127.0.0.1:9090).
# Without OPENAI_API_KEY it answers calls with the built-in offline agent (it echoes the caller).
# First installs the system packages the build needs (cmake for libopus, a C toolchain), if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --build
cargo build --release --locked -p switchboard --bin switchboard
# exec: Ctrl-C and SIGTERM reach the gateway itself, which hangs up its calls before exiting.
exec "${CARGO_TARGET_DIR:-target}/release/switchboard" run --config "${SWITCHBOARD_CONFIG:-config/switchboard.toml}" "$@"
