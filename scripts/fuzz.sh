#!/usr/bin/env bash
# Fuzzing of every byte-facing entry point (fuzz/, cargo-fuzz; docs/testing.md "Fuzzing").
#
#   scripts/fuzz.sh smoke [SECONDS]   build all targets, run each for SECONDS (default 30)
#   scripts/fuzz.sh long N            run each target for N executions (N >= 10000000 for the
#                                     documented long run), one at a time, at nice 19
#   scripts/fuzz.sh regressions       replay fuzz/regressions/<target>/* (every input that once
#                                     crashed a target must pass now)
#   scripts/fuzz.sh build             build all targets only
#
# Targets can be narrowed with FUZZ_TARGETS="rtp sdp_answer". Needs the nightly toolchain;
# installs cargo-fuzz if missing. Exits non-zero when any target crashes (a failed property is
# a crash); the crashing input is left in fuzz/artifacts/<target>/. New corpus entries go to a
# scratch directory, never into the checked-in fuzz/corpus/ (merge by hand with -merge=1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL_TARGETS="sip_message sip_stream sip_core sdp_answer rtp rtcp realtime_event media_framing"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
# Own target dir by default so fuzz builds (instrumented, nightly) never invalidate the
# workspace's; honour CARGO_TARGET_DIR when the caller set one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/fuzz/target}"
# No sanitizer: the crates are safe Rust (unsafe_code = "forbid"), where ASan adds little but
# run time (libopus, the one C library, is built by its own cmake without instrumentation).
# Debug assertions and overflow checks stay on (cargo-fuzz default): an overflow is a crash.
FUZZ_BUILD_FLAGS=(--sanitizer none)
# Bounded resources are a property too: an input (at most a few KiB) that makes the process
# hold more than this, or takes longer than this on one input, is reported as a crash.
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-512}"
UNIT_TIMEOUT_SECS="${FUZZ_UNIT_TIMEOUT_SECS:-10}"
TRIPLE="$(rustc +nightly -vV | sed -n 's/^host: //p')"
BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

ensure_tools() {
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "fuzz.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
        exit 1
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
}

build() {
    # shellcheck disable=SC2086 # TARGETS is a word list
    for target in $TARGETS; do
        nice -n 10 cargo +nightly fuzz build "${FUZZ_BUILD_FLAGS[@]}" "$target"
    done
}

# run_target TARGET LIBFUZZER_ARGS... : runs one target on its checked-in corpus, new inputs
# into a scratch corpus; prints one summary line; returns non-zero on a crash.
run_target() {
    local target="$1"
    shift
    local scratch log status
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$target.XXXXXX")"
    log="$scratch.log"
    mkdir -p "fuzz/artifacts/$target" "fuzz/corpus/$target"
    local start end
    start=$(date +%s)
    set +e
    nice -n 19 "$BIN_DIR/$target" "$scratch" "fuzz/corpus/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 \
        -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$UNIT_TIMEOUT_SECS" "$@" >"$log" 2>&1
    status=$?
    set -e
    end=$(date +%s)
    local execs corpus_size seconds rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    seconds=$((end - start))
    rate=$((execs / (seconds > 0 ? seconds : 1)))
    corpus_size=$(( $(find "$scratch" "fuzz/corpus/$target" -type f | wc -l) ))
    printf '%-15s %12s execs %7ss %9s exec/s  corpus %6s  %s\n' "$target" "$execs" "$seconds" "$rate" \
        "$corpus_size" "$([ "$status" -eq 0 ] && echo ok || echo "CRASH (exit $status)")"
    if [ "$status" -ne 0 ]; then
        grep -E "panicked at|Test unit written|SUMMARY" -A2 "$log" | head -20 >&2 || tail -20 "$log" >&2
        echo "fuzz.sh: full log: $log" >&2
    else
        rm -rf "$scratch" "$log"
    fi
    return "$status"
}

run_all() {
    local failed=()
    # shellcheck disable=SC2086
    for target in $TARGETS; do
        run_target "$target" "$@" || failed+=("$target")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "fuzz.sh: crashes in: ${failed[*]}" >&2
        return 1
    fi
}

command="${1:-}"
case "$command" in
smoke)
    seconds="${2:-30}"
    ensure_tools
    build
    run_all -max_total_time="$seconds"
    ;;
long)
    runs="${2:-}"
    [[ "$runs" =~ ^[0-9]+$ ]] || usage
    ensure_tools
    build
    run_all -runs="$runs"
    ;;
regressions)
    ensure_tools
    build
    failed=()
    # shellcheck disable=SC2086
    for target in $TARGETS; do
        inputs=(fuzz/regressions/"$target"/*)
        [ -e "${inputs[0]}" ] || continue
        if "$BIN_DIR/$target" "${inputs[@]}" >/dev/null 2>&1; then
            echo "$target: ${#inputs[@]} regression inputs pass"
        else
            echo "$target: a regression input fails" >&2
            failed+=("$target")
        fi
    done
    [ "${#failed[@]}" -eq 0 ]
    ;;
build)
    ensure_tools
    build
    ;;
*)
    usage
    ;;
esac
