#!/usr/bin/env bash
# Proves the README's two commands work on a machine where no system package is installed yet.
#
#   sudo scripts/fresh-machine-check.sh [--rev REV] [--root DIR] [--keep] [--ci | --run-only]
#
# 1. Builds a minimal Debian root (`debootstrap --variant=minbase`, the suite of this machine, from
#    /etc/os-release): no compiler, no cmake, no SIPp, no tshark.
# 2. Bind-mounts the Rust toolchain (~/.rustup, read-only) and the cargo registry cache
#    (~/.cargo/registry) into it and copies the rustup proxies (~/.cargo/bin), so the root looks
#    like a fresh machine of this kind: Rust installed, nothing else. The root has its own target
#    dir (a fresh clone), never this machine's.
# 3. Clones this repository (REV, default HEAD: commit first, the working tree is not copied).
# 4. Inside the root, as a new user would: `scripts/run.sh` (installs the build packages, builds,
#    starts the gateway), checks it with GET /healthz and a SIP OPTIONS ping, stops it by PID; then
#    `scripts/test.sh` (installs the test packages, runs the whole suite) with CI=true, so a test
#    tool that failed to install fails the run instead of showing as ignored. `--ci` runs `.ci/run`
#    instead of `scripts/test.sh` (adds the fmt and clippy gates); `--run-only` stops after run.sh.
#
# Everything runs in a private mount namespace and a private network namespace: the mounts vanish
# with it (and are also undone by a trap), and the suite's loopback ports cannot collide with tests
# running on this machine. Outbound traffic (apt, crates) goes through slirp4netns (user-mode NAT,
# no change to this machine's firewall). Every process started here is stopped by its PID.
# Exit status: 0 when both commands passed. The log is written to $root.log and summarized at the end.
set -euo pipefail
# The whole script is one block: bash reads it completely before running it, so editing the file
# during a (long) run cannot change what the run does.
{
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=HEAD
root=""
keep=0
suite_command=scripts/test.sh
while [ $# -gt 0 ]; do
    case "$1" in
        --rev) rev=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --ci) suite_command=.ci/run; shift ;;
        --run-only) suite_command=""; shift ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "fresh-machine-check: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-machine-check: needs root (debootstrap, chroot, namespaces)" >&2
    exit 2
fi

# --- host tools: debootstrap and slirp4netns are Debian packages --------------------------------
host_missing=()
command -v debootstrap >/dev/null 2>&1 || host_missing+=(debootstrap)
command -v slirp4netns >/dev/null 2>&1 || host_missing+=(slirp4netns)
if [ ${#host_missing[@]} -gt 0 ]; then
    echo "fresh-machine-check: installing ${host_missing[*]} on this machine" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${host_missing[@]}" >/dev/null
fi

# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
for dir in "$rustup_home/toolchains" "$cargo_home/bin" "$cargo_home/registry"; do
    [ -d "$dir" ] || { echo "fresh-machine-check: $dir missing (no Rust toolchain here?)" >&2; exit 2; }
done

commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}")
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "fresh-machine-check: note: uncommitted changes are not tested; checking $commit" >&2
fi

if [ -z "$root" ]; then
    root=$(mktemp -d /var/tmp/switchboard-fresh.XXXXXX)
else
    mkdir -p "$root"
fi
log="$root.log"
: >"$log"
started=$(date +%s)
say() { echo "fresh-machine-check: $(date -u +%H:%M:%S) $*" | tee -a "$log" >&2; }

ns_pid=""
slirp_pid=""
cleanup() {
    local status=$?
    # Stop what we started, by PID: the namespace's process group, then the NAT helper.
    if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
        kill -TERM -- "-$ns_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$ns_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$ns_pid" 2>/dev/null || true
    fi
    if [ -n "$slirp_pid" ]; then
        kill -TERM "$slirp_pid" 2>/dev/null || true
    fi
    # The mounts live in the namespace's private mount table; none may remain visible here before
    # anything under the root is deleted (rm through a bind mount would delete the host's files).
    if findmnt -rn -o TARGET | grep -qF "$root/"; then
        echo "fresh-machine-check: mounts under $root still visible; NOT removing it" >&2
    elif [ "$keep" = 0 ]; then
        rm -rf --one-file-system "$root"
    fi
    say "finished with status $status after $(( $(date +%s) - started )) s; log: $log"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the minimal root -----------------------------------------------------------------------
say "debootstrap $suite (minbase) into $root"
t0=$(date +%s)
debootstrap --variant=minbase "$suite" "$root" "$mirror" >>"$log" 2>&1
say "debootstrap took $(( $(date +%s) - t0 )) s"
# The apt sources of a plain Debian install (main, updates, security).
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
# Copy this machine's apt settings that only say how to reach the archive (e.g. a snapshot
# mirror's validity checks); they install nothing.
for conf in /etc/apt/apt.conf.d/99*; do
    [ -f "$conf" ] && cp "$conf" "$root/etc/apt/apt.conf.d/"
done
echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf" # slirp4netns's DNS forwarder

# --- 2. the Rust toolchain as a fresh machine of this kind has it -------------------------------
mkdir -p "$root/root/.rustup" "$root/root/.cargo/registry"
cp -a "$cargo_home/bin" "$root/root/.cargo/bin" # rustup proxies (hard links: small)
[ -f "$cargo_home/env" ] && cp "$cargo_home/env" "$root/root/.cargo/env"

# --- 3. a fresh clone ---------------------------------------------------------------------------
git clone --quiet --no-local "$repo" "$root/root/switchboard"
git -C "$root/root/switchboard" checkout --quiet --detach "$commit"
say "cloned $commit"

# --- 4. inside the namespaces -------------------------------------------------------------------
inner=$(cat <<'INNER'
set -euo pipefail
root=$1 rustup_home=$2 cargo_home=$3 suite_command=$4
mounts=()
undo_mounts() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap undo_mounts EXIT
bind() { mount --bind "$1" "$2"; mounts+=("$2"); }
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount -t sysfs sys "$root/sys"; mounts+=("$root/sys")
bind /dev "$root/dev"
mount -t tmpfs shm "$root/dev/shm"; mounts+=("$root/dev/shm")
bind "$rustup_home" "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
bind "$cargo_home/registry" "$root/root/.cargo/registry"

ip link set lo up
for _ in $(seq 100); do ip link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done
ip -4 addr show tap0 | grep -q inet || { echo "no network (slirp4netns did not configure tap0)" >&2; exit 3; }

in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "$1"
}

# scripts/run.sh: installs the build packages, builds, starts. Bounded: 45 min to get ready.
echo "=== scripts/run.sh"
t0=$(date +%s)
# The subshell execs chroot, which execs env, bash, run.sh and finally the gateway: one PID all the
# way down, so the kill below stops the gateway itself and not only a wrapper around it.
(exec chroot "$root" /usr/bin/env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /root/switchboard && exec scripts/run.sh') &
gateway_pid=$!
ready=0
for _ in $(seq 2700); do
    if ! kill -0 "$gateway_pid" 2>/dev/null; then echo "run.sh exited before the gateway was ready" >&2; break; fi
    if in_root 'exec 3<>/dev/tcp/127.0.0.1/9090 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && timeout 5 head -1 <&3' 2>/dev/null | grep -q " 200"; then
        ready=1
        break
    fi
    sleep 1
done
echo "=== run.sh: ready=$ready after $(( $(date +%s) - t0 )) s"
options_ok=0
if [ "$ready" = 1 ]; then
    # A SIP OPTIONS ping over UDP, as a load balancer sends it (python3 is not installed yet by
    # run.sh, so plain bash: a connected UDP socket on /dev/udp). printf would write the message
    # line by line, one datagram each; cat writes the file in one datagram. `rport`: the answer
    # goes to the socket's port (RFC 3581).
    reply=$(in_root 'printf "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKfresh1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:check@127.0.0.1>;tag=f1\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: fresh-check-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" >/tmp/options.sip
        exec 3<>/dev/udp/127.0.0.1/5060
        cat /tmp/options.sip >&3
        timeout 5 head -1 <&3' 2>&1 || true)
    echo "OPTIONS answer: $reply"
    case "$reply" in "SIP/2.0 200"*) options_ok=1 ;; esac
fi
kill -TERM "$gateway_pid" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$gateway_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$gateway_pid" 2>/dev/null || true
wait "$gateway_pid" 2>/dev/null || true
echo "=== RESULT run.sh: healthz=$ready options=$options_ok in $(( $(date +%s) - t0 )) s"

if [ -z "$suite_command" ]; then
    [ "$ready" = 1 ] && [ "$options_ok" = 1 ]
    exit
fi
# scripts/test.sh (or .ci/run): installs the test packages, runs the whole suite. Bounded: 100 min.
echo "=== $suite_command"
t0=$(date +%s)
suite_status=0
in_root "cd /root/switchboard && CI=true timeout --signal=TERM --kill-after=60 6000 $suite_command" || suite_status=$?
echo "=== RESULT $suite_command: exit $suite_status in $(( $(date +%s) - t0 )) s"
[ "$ready" = 1 ] && [ "$options_ok" = 1 ] && [ "$suite_status" = 0 ]
INNER
)

say "entering the namespaces; run.sh, then ${suite_command:-nothing else} (progress in $log)"
setsid unshare --mount --net --propagation private -- \
    nice -n 10 bash -c "$inner" inner "$root" "$rustup_home" "$cargo_home" "$suite_command" >>"$log" 2>&1 &
ns_pid=$!
# User-mode NAT into the new network namespace (it needs a PID inside it: unshare's own).
for _ in $(seq 50); do [ "$(readlink "/proc/$ns_pid/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.1; done
slirp4netns --configure --mtu=65520 --disable-host-loopback "$ns_pid" tap0 >>"$log.slirp" 2>&1 &
slirp_pid=$!

status=0
wait "$ns_pid" || status=$?
ns_pid=""
grep -E '^=== RESULT|^test result:|FAILED|panicked' "$log" | tail -60 >&2 || true
if [ "$status" = 0 ]; then say "PASS: run.sh ${suite_command:+and $suite_command }work on a fresh $suite root"; else say "FAIL (status $status)"; fi
exit "$status"
}
