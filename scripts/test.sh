#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds the release binaries once (the end-to-end
# tests share them), then runs every unit, integration and end-to-end test.
#
# Under CI (CI=true) an end-to-end test whose tool (SIPp, baresip, tshark) is missing FAILS instead
# of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked -p switchboard -p switchboard-sim --bins
if [ "${CI:-}" = "true" ]; then
  export SWITCHBOARD_E2E_REQUIRED=1
fi
export SWITCHBOARD_BIN="$PWD/target/release/switchboard"
export SWITCHBOARD_SIM_BIN="$PWD/target/release/switchboard-sim"
cargo test --locked --workspace "$@"
