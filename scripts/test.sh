#!/usr/bin/env bash
# The whole test suite: installs what it needs (build and test packages, scripts/install-deps.sh),
# builds the release binaries once (the end-to-end tests share them), then runs every unit,
# integration and end-to-end test. libtest prints its "test result:" summary line per test binary.
#
# Under CI (CI=true) an end-to-end test whose tool (SIPp, baresip, tshark) is missing FAILS instead
# of showing as ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
cargo build --release --locked -p switchboard -p switchboard-sim --bins
if [ "${CI:-}" = "true" ]; then
  export SWITCHBOARD_E2E_REQUIRED=1
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export SWITCHBOARD_BIN="$target_dir/release/switchboard"
export SWITCHBOARD_SIM_BIN="$target_dir/release/switchboard-sim"
# --no-fail-fast: every test binary runs, so one failure does not hide the others.
cargo test --locked --workspace --no-fail-fast "$@"
