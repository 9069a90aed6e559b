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
# procps (`kill`: the harness signals the processes it started by PID).
# deploy/ is checked by the tools that consume it (tests/tests/deploy.rs, scale_out.rs): kamailio
# (the dispatcher in front of several gateways, and `kamailio -c`), prometheus (promtool: the
# alert rules, and `promtool check metrics` on the gateway's /metrics),
# systemd (systemd-analyze verify), python3-yaml (the Kubernetes manifests parse).
test_packages=(sip-tester baresip-core tshark espeak-ng sox libsox-fmt-all python3 libopus0 iproute2 util-linux procps
    kamailio prometheus systemd python3-yaml)
# Packages whose install starts a daemon where services start on install: kamailio (SIP on 5060)
# and prometheus (HTTP on 9090, the gateway's default admin port). The tests start their own
# Kamailio, by PID; none of these may be left running or enabled by this script.
daemon_packages=(kamailio prometheus)

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

# The daemons among the packages about to be installed.
new_daemons=()
for package in "${missing[@]}"; do
    for daemon in "${daemon_packages[@]}"; do
        [ "$package" = "$daemon" ] && new_daemons+=("$daemon")
    done
done

# While they install, forbid service starts: invoke-rc.d and deb-systemd-invoke (what maintainer
# scripts call) ask /usr/sbin/policy-rc.d first, and 101 means "action forbidden". Only when no
# policy exists (container images often ship one: it is left alone), and removed afterwards.
policy=/usr/sbin/policy-rc.d
remove_policy() {
    "${sudo[@]}" rm -f "$policy"
}
if [ ${#new_daemons[@]} -gt 0 ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by scripts/install-deps.sh for the length of one apt-get install.\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    trap remove_policy EXIT
fi

"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Installing also enabled their units for the next boot (and, where a policy allowed it, started
# them): disable exactly the services this run installed, and stop them when systemd runs.
for daemon in "${new_daemons[@]}"; do
    unit="$daemon.service"
    if command -v systemctl >/dev/null 2>&1; then
        "${sudo[@]}" systemctl disable --quiet "$unit" 2>/dev/null || true
        if [ -d /run/systemd/system ]; then
            "${sudo[@]}" systemctl stop "$unit" 2>/dev/null || true
        fi
    fi
    echo "install-deps: $unit installed but not enabled or running (the tests start their own)" >&2
done
echo "install-deps: done" >&2
