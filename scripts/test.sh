#!/usr/bin/env bash
# The whole test suite: installs what it needs (build and test packages, scripts/install-deps.sh),
# builds the release binaries once (the end-to-end tests share them), replays the fuzz regressions
# and runs each fuzz target briefly, then runs every unit, integration and end-to-end test. libtest
# prints its "test result:" summary line per test binary.
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
status=0
# Fuzzing (docs/testing.md, "Fuzzing"): every input that once crashed a target replays clean, then
# each target runs briefly (FUZZ_SMOKE_SECS, default 30). Only for the whole suite (no arguments),
# and before the tests so that libtest's summary lines come last. Needs the nightly toolchain:
# under CI its absence fails the run; elsewhere it is reported as skipped.
if [ $# -eq 0 ]; then
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    scripts/fuzz.sh regressions || status=1
    scripts/fuzz.sh smoke "${FUZZ_SMOKE_SECS:-30}" || status=1
  elif [ "${CI:-}" = "true" ]; then
    echo "test.sh: the nightly toolchain is required under CI for the fuzz smoke run" >&2
    status=1
  else
    echo "test.sh: fuzz smoke run SKIPPED: no nightly toolchain (rustup toolchain install nightly)" >&2
  fi
fi
# --no-fail-fast: every test binary runs, so one failure does not hide the others.
cargo test --locked --workspace --no-fail-fast "$@" || status=$?
exit "$status"
