#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Switchboard needs, before any `cargo` command runs.
#
#   scripts/install-deps.sh --build   # what `cargo build` needs (scripts/run.sh)
#   scripts/install-deps.sh [--test]  # that, plus the tools the end-to-end tests drive
#                                     # (scripts/test.sh, .ci/run)
#
# Idempotent: when every package is installed it does nothing (no apt-get update, no sudo).
# Otherwise it runs `apt-get update` once and installs only the missing packages, with sudo when
# not root. docs/testing.md ("What gets installed and why") explains each package.
# The Rust toolchain itself (rustup, stable and nightly) is not installed here: it is part of the
# machine (see docs/testing.md).
set -euo pipefail

mode=test
case "${1:-}" in
    --build) mode=build ;;
    --test | "") mode=test ;;
    -h | --help)
        sed -n '2,12p' "$0"
        exit 0
        ;;
    *)
        echo "install-deps: unknown option '$1' (use --build or --test)" >&2
        exit 2
        ;;
esac

# Build: a C toolchain for the linker and the `cc` crates (ring), cmake for libopus (opusic-sys),
# pkg-config for -sys crates probing system libraries, CA certificates for cargo's HTTPS.
build_packages=(build-essential cmake pkg-config ca-certificates)
# Tests: SIPp, baresip, tshark (captures are the ground truth), espeak-ng and sox (speech to play
# and check), python3 + libopus0 (bench/opus_pcap.py builds an Opus pcap through ctypes),
# iproute2 (`ip link set lo up`) and util-linux (`unshare -n`) for the network-namespace tests,
# procps (`kill`: the harness signals the processes it started by PID), prometheus (`promtool
# check metrics` on the gateway's /metrics).
test_packages=(sip-tester baresip-core tshark espeak-ng sox libsox-fmt-all python3 libopus0 iproute2 util-linux procps prometheus)

wanted=("${build_packages[@]}")
if [ "$mode" = test ]; then
    wanted+=("${test_packages[@]}")
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian/Ubuntu system; install these (or your distribution's equivalents) by hand:" >&2
    echo "  ${wanted[*]}" >&2
    exit 1
fi

missing=()
for package in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing packages ${missing[*]}, and not root with no sudo: install them as root" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# tshark asks whether non-root users may capture; answer "no" up front so the install never
# stops at a prompt (the tests capture as root or with the capabilities already granted).
echo "wireshark-common wireshark-common/install-setuid boolean false" | "${sudo[@]}" debconf-set-selections
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
