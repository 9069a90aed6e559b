#!/usr/bin/env bash
# Whole-call load benchmark (see docs/benchmarks.md, "Whole-call load (SIPp)").
#
#   scripts/bench-load.sh [--calls N] [--duration SECS] [--codec pcmu|opus] [--no-build] [bench/load.py options]
#
# Builds the release gateway and simulator, then runs bench/load.py: N concurrent SIPp calls
# through the gateway, then the same load against SIPp's own UAS as a baseline. Loopback only;
# every process it starts is killed by PID at the end. Prints a markdown results table on stdout
# (progress goes to stderr). Exit code 1 when any gateway call failed. A 503 from capacity
# admission is a clean refusal, not a failure: the table reports offered / answered / refused and
# the capacity found. On a machine shared with builds, add --autogroup-nice -10 (root; see
# docs/benchmarks.md, issue 7 results); --saturation-ms 0 turns capacity admission off.
# --record records every gateway call (WAV + sidecar + CDR in the work directory);
# --record-compare runs the gateway twice, without and with recording, and reports the difference
# (docs/benchmarks.md, "Recording cost").
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h|--help) exec python3 bench/load.py --help ;;
        *) args+=("$arg") ;;
    esac
done

for tool in sipp sox espeak-ng tshark python3; do
    command -v "$tool" >/dev/null || { echo "bench-load: $tool is missing (see scripts/install-deps.sh)" >&2; exit 2; }
done

if [ "$build" = 1 ]; then
    cargo build --release -p switchboard -p switchboard-sim >&2
fi

# The run itself is bounded inside load.py; this is a last-resort guard (30 min).
exec timeout --signal=TERM --kill-after=30 1800 python3 bench/load.py "${args[@]}"
