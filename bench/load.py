#!/usr/bin/env python3
"""Whole-call load benchmark: N concurrent SIPp calls through the gateway, then the same load
against SIPp's own UAS as a baseline, measured the same way.

Python standard library only. Everything started here is loopback-only, bounded by timeouts and
killed by PID at the end, even on failure. See docs/benchmarks.md for what each column means.
"""

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opus_pcap  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY_BIN = os.path.join(REPO, "target", "release", "switchboard")
SIM_BIN = os.path.join(REPO, "target", "release", "switchboard-sim")
SCENARIO_TEMPLATE = os.path.join(REPO, "bench", "uac_load.xml")
UAS_TEMPLATE = os.path.join(REPO, "bench", "uas_echo.xml")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Loopback ports, clear of the end-to-end tests' ranges (tests/src/lib.rs `Ports`) so a benchmark
# and the test suite can run at the same time. Ranges are checked free before use.
SIM_PORT = 28089
GW_SIP_PORT = 25060
GW_ADMIN_PORT = 29090
GW_RTP_FIRST = 10000
UAC_SIP_PORT = 25070
UAC_MEDIA_PORT = 40000
UAS_SIP_PORT = 25080
UAS_MEDIA_PORT = 42000

LATENCY_HISTOGRAMS = {
    "timing": "switchboard_rtp_send_lateness_seconds",
    "inbound": "switchboard_inbound_processing_seconds",
    "outbound": "switchboard_outbound_processing_seconds",
}

# Every process this run started, killed by PID at exit.
STARTED = []

# --autogroup-nice: the scheduler weight of every process this run starts (see set_autogroup_nice).
AUTOGROUP_NICE = None


def set_autogroup_nice(pid, nice):
    """Linux groups the threads of each session into an autogroup (sched_autogroup_enabled) and
    shares the CPU fairly between autogroups; a `nice` on other people's builds only ranks them
    inside their own group. Every process here starts its own session, so on a shared machine
    the gateway gets an equal share with each build job. A negative autogroup nice (root) gives
    the benchmark's processes the CPU they need, as on a machine dedicated to the gateway."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as e:
        log(f"cannot set autogroup nice of pid {pid}: {e}")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Proc:
    """A child process that is killed by its PID when the run ends."""

    def __init__(self, name, argv, cwd, stdout_path, env=None):
        self.name = name
        self.stdout_file = open(stdout_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.stdout_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        STARTED.append(self)
        log(f"started {name} pid {self.pid}: {' '.join(argv)}")
        if AUTOGROUP_NICE is not None:
            set_autogroup_nice(self.pid, AUTOGROUP_NICE)

    def alive(self):
        return self.popen.poll() is None

    def wait(self, limit):
        try:
            return self.popen.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, limit=10.0):
        """Sends `sig`, waits up to `limit`, then SIGKILL. Returns the exit code."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(limit) is None:
                log(f"{self.name} (pid {self.pid}) did not stop in {limit}s: SIGKILL")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait(5)
        self.stdout_file.close()
        return self.popen.returncode


def kill_everything():
    for proc in reversed(STARTED):
        if proc.alive():
            proc.stop(signal.SIGKILL, 5)


def on_signal(signum, _frame):
    kill_everything()
    sys.exit(128 + signum)


# ---------------------------------------------------------------- /proc sampling


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def thread_cpu_seconds(pid):
    """{thread name: utime + stime seconds}, threads of the same name summed."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def thread_count(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class CpuWindow:
    """CPU used by a set of processes between start() and stop(), as % of one core."""

    def __init__(self, pids):
        self.pids = dict(pids)

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self):
        elapsed = time.monotonic() - self.t0
        used = {name: cpu_seconds(pid) - self.c0[name] for name, pid in self.pids.items()}
        return elapsed, {name: 100.0 * secs / elapsed for name, secs in used.items()}


# ---------------------------------------------------------------- Prometheus histograms


def fetch_metrics(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        return resp.read().decode()


SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text):
    """{(name, labels-string): value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line.strip())
        if m:
            try:
                samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return samples


def histogram_buckets(samples, name):
    """Sorted [(upper_bound, cumulative_count)] of a histogram without other labels."""
    buckets = []
    for (metric, labels), value in samples.items():
        if metric != f"{name}_bucket":
            continue
        m = re.search(r'le="([^"]+)"', labels)
        if m:
            bound = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((bound, value))
    buckets.sort()
    return buckets


def diff_buckets(before, after):
    prior = dict(before)
    return [(bound, count - prior.get(bound, 0.0)) for bound, count in after]


def percentile(buckets, q):
    """q-quantile (0..1) of a cumulative histogram, interpolated linearly inside its bucket.

    Returns (seconds, exact_bound_flag): None when empty; +inf when it falls in the +Inf bucket.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return float("inf")
            inside = count - lower_count
            fraction = (rank - lower_count) / inside if inside > 0 else 1.0
            return lower_bound + fraction * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return float("inf")


def counter_sum(samples, name, label_filter=""):
    return sum(v for (metric, labels), v in samples.items() if metric == name and label_filter in labels)


def calls_by_outcome(samples):
    out = {}
    for (metric, labels), value in samples.items():
        if metric == "switchboard_calls_total":
            outcome = re.search(r'outcome="([^"]+)"', labels)
            reason = re.search(r'reason="([^"]+)"', labels)
            key = f"{outcome.group(1) if outcome else '?'}/{reason.group(1) if reason else '?'}"
            out[key] = out.get(key, 0) + value
    return out


# ---------------------------------------------------------------- helpers


def clock_realtime(pid, priority):
    """SCHED_FIFO for the gateway's media clock thread only (by thread name): its work per
    wake-up is small and bounded, so it cannot starve the machine, and the scheduler then runs
    it the moment its timer fires, whatever else is runnable."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name == "media-clock":
            result = subprocess.run(["chrt", "-f", "-p", str(priority), tid], capture_output=True, text=True)
            log(f"media-clock thread {tid}: chrt -f {priority}: exit {result.returncode} {result.stderr.strip()}")
            return
    log("no media-clock thread found")


def check_free(ports, kind):
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        if kind == "tcp":
            # Like the servers themselves: a previous run's TIME_WAIT connections do not block a listener.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port {kind}/{port} on 127.0.0.1 is busy; another bench run?")
        finally:
            s.close()


def wait_tcp(port, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {limit}s")


def make_audio(workdir):
    """Speech then 2 s of silence, raw mu-law for SIPp's rtp_stream (looped forever)."""
    wav = os.path.join(workdir, "speech.wav")
    ul = os.path.join(workdir, "speech.ul")
    subprocess.run(
        ["espeak-ng", "-w", wav, "hello world, this is a test of the telephony gateway. one two three four five."],
        check=True,
        timeout=60,
    )
    subprocess.run(["sox", wav, "-r", "8000", "-c", "1", "-t", "ul", ul, "pad", "0", "2"], check=True, timeout=60)
    return ul


def write_scenarios(workdir, audio_path, codec):
    """The UAC scenario and the baseline UAS scenario for `codec`: (uac_path, uas_path)."""
    with open(SCENARIO_TEMPLATE) as f:
        text = f.read()
    if codec == "pcmu":
        media = f'<exec rtp_stream="{audio_path},-1,0" />'
        formats, rtpmaps, expect_pt = "0", "      a=rtpmap:0 PCMU/8000", "0"
    else:
        media = f'<exec play_pcap_audio="{audio_path}" />'
        formats, rtpmaps, expect_pt = "111", "      a=rtpmap:111 opus/48000/2", "111"
    text = (
        text.replace("@FORMATS@", formats)
        .replace("@RTPMAPS@", rtpmaps)
        .replace("@EXPECT_PT@", expect_pt)
        .replace("@MEDIA_ACTION@", media)
    )
    path = os.path.join(workdir, f"uac_load_{codec}.xml")
    with open(path, "w") as f:
        f.write(text)
    with open(UAS_TEMPLATE) as f:
        uas = f.read().replace("@PT@", expect_pt).replace("@RTPMAP@", rtpmaps)
    uas_path = os.path.join(workdir, f"uas_echo_{codec}.xml")
    with open(uas_path, "w") as f:
        f.write(uas)
    return path, uas_path


def sipp_stats(stat_file):
    """Last row of a SIPp -trace_stat CSV as a dict."""
    try:
        with open(stat_file) as f:
            rows = [line.rstrip("\n").split(";") for line in f if line.strip()]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))


def fmt_ms(seconds):
    if seconds is None:
        return "n/a"
    if seconds == float("inf"):
        return "> 50"
    return f"{seconds * 1000:.3f}"


# ---------------------------------------------------------------- one load run


class Run:
    """One load run against a server (gateway or SIPp UAS)."""

    def __init__(self, args, workdir, label):
        self.args = args
        self.workdir = os.path.join(workdir, label)
        os.makedirs(self.workdir, exist_ok=True)
        self.label = label
        self.result = {"label": label}

    def ramp_secs(self):
        return self.args.calls / self.args.rate

    def hold_ms(self):
        # Every call is up from ramp end to (first call end - small margin); the window sits inside.
        return int((self.ramp_secs() + self.args.settle + self.args.duration + self.args.tail) * 1000)

    def start_uac(self, server_sip_port, scenario):
        stat = os.path.join(self.workdir, "uac_stats.csv")
        argv = [
            "sipp",
            f"127.0.0.1:{server_sip_port}",
            "-sf", scenario,
            "-s", "15550001000",
            "-i", "127.0.0.1", "-mi", "127.0.0.1",
            "-p", str(UAC_SIP_PORT), "-mp", str(UAC_MEDIA_PORT),
            "-r", str(self.args.rate), "-l", str(self.args.calls), "-m", str(self.args.calls),
            "-d", str(self.hold_ms()),
            "-nostdin",
            "-timeout", f"{int(self.hold_ms() / 1000 + 120)}s", "-timeout_error",
            "-trace_stat", "-stf", stat, "-fd", "5",
            "-trace_err", "-error_file", os.path.join(self.workdir, "uac_errors.log"),
            "-rtp_threadtasks", "50",
        ]
        self.uac = Proc("sipp-uac", argv, self.workdir, os.path.join(self.workdir, "uac_screen.log"))
        self.uac_started = time.monotonic()
        self.stat_file = stat

    def wait_uac(self):
        limit = self.hold_ms() / 1000 + 150
        code = self.uac.wait(limit)
        if code is None:
            log(f"{self.label}: SIPp UAC still running after {limit:.0f}s: stopping it")
            code = self.uac.stop(signal.SIGUSR1, 15)
        self.uac.stop()
        stats = sipp_stats(self.stat_file)
        self.result["sipp_exit"] = code
        self.result["sipp_ok"] = int(stats.get("SuccessfulCall(C)", 0) or 0)
        self.result["sipp_failed"] = int(stats.get("FailedCall(C)", 0) or 0)
        log(f"{self.label}: SIPp exit {code}, ok {self.result['sipp_ok']}, failed {self.result['sipp_failed']}")

    def sleep_until(self, offset):
        """Sleeps until `offset` seconds after the UAC started; False if the UAC died first."""
        while time.monotonic() < self.uac_started + offset:
            if not self.uac.alive():
                return False
            time.sleep(0.2)
        return True

    def measure_window(self, server_pid, active_calls=None):
        """Waits for the steady state, then samples CPU and RSS of server and UAC over the window."""
        if not self.sleep_until(self.ramp_secs() + self.args.settle):
            raise SystemExit(f"{self.label}: SIPp UAC exited during ramp-up (see {self.workdir})")
        if active_calls:
            self.result["active_at_start"] = active_calls()
        window = CpuWindow({"server": server_pid, "uac": self.uac.pid})
        threads_before = thread_cpu_seconds(server_pid)
        window.start()
        fetch_start = time.monotonic()
        before = self.snapshot()
        # Counters are read at the middle of each fetch (slow on a loaded machine): rates use the
        # time between the two reads, not the CPU window's.
        before_at = (fetch_start + time.monotonic()) / 2
        # RSS sampled through the window; the median is reported.
        rss_samples = []
        end = time.monotonic() + self.args.duration
        while time.monotonic() < end:
            rss_samples.append(rss_kb(server_pid))
            self.sample_gauges()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        elapsed, cpu = window.stop()
        threads_after = thread_cpu_seconds(server_pid)
        self.result["thread_cpu"] = {
            name: 100.0 * (secs - threads_before.get(name, 0.0)) / elapsed for name, secs in threads_after.items()
        }
        fetch_start = time.monotonic()
        after = self.snapshot()
        self.result["metrics_secs"] = (fetch_start + time.monotonic()) / 2 - before_at
        if active_calls:
            self.result["active_at_end"] = active_calls()
        self.result["window_secs"] = elapsed
        self.result["cpu_pct"] = cpu["server"]
        self.result["uac_cpu_pct"] = cpu["uac"]
        self.result["rss_kb"] = statistics.median(rss_samples) if rss_samples else 0
        self.result["threads"] = thread_count(server_pid)
        self.result["uac_rss_kb"] = rss_kb(self.uac.pid)
        self.window_metrics = (before, after)
        log(
            f"{self.label}: window {elapsed:.1f}s server CPU {cpu['server']:.1f}% "
            f"RSS {self.result['rss_kb'] / 1024:.1f} MiB, UAC CPU {cpu['uac']:.1f}%"
        )

    def snapshot(self):
        return None

    def sample_gauges(self):
        pass


class GatewayRun(Run):
    def __init__(self, args, workdir, record=False):
        super().__init__(args, workdir, "gateway+record" if record else "gateway")
        self.admin = f"127.0.0.1:{GW_ADMIN_PORT}"
        # --record: every call recorded (stereo WAV + sidecar) and a CDR file, under the work dir.
        self.record = record
        self.record_dir = os.path.join(workdir, "recordings")

    def snapshot(self):
        return parse_metrics(fetch_metrics(self.admin))

    def active_calls(self):
        return int(counter_sum(parse_metrics(fetch_metrics(self.admin)), "switchboard_calls_active"))

    def sample_gauges(self):
        """Once a second in the window: the media clock's per-window max lateness and saturation."""
        try:
            samples = parse_metrics(fetch_metrics(self.admin))
        except OSError:
            return
        late_max = counter_sum(samples, "switchboard_media_clock_lateness_max_seconds")
        self.result["lateness_max"] = max(self.result.get("lateness_max", 0.0), late_max)
        saturated = counter_sum(samples, "switchboard_capacity_saturated")
        self.result["saturated_secs"] = self.result.get("saturated_secs", 0) + (1 if saturated >= 1 else 0)

    def run(self, scenario):
        args = self.args
        rtp_last = GW_RTP_FIRST + 2 * args.calls + 199
        check_free([SIM_PORT, GW_SIP_PORT, GW_ADMIN_PORT], "tcp")
        check_free([GW_SIP_PORT, UAC_SIP_PORT], "udp")
        codecs = '["opus", "PCMU"]' if args.codec == "opus" else '["PCMU", "PCMA"]'
        config = (
            f'[sip]\nudp = "127.0.0.1:{GW_SIP_PORT}"\ntcp = "127.0.0.1:{GW_SIP_PORT}"\n'
            # Every call comes from one SIPp: exempt it from the per-source limits, as a proxy in front is.
            f'trusted_proxies = ["127.0.0.1"]\n'
            f'[media]\naddress = "127.0.0.1"\nbind = "127.0.0.1"\nrtp_ports = "{GW_RTP_FIRST}-{rtp_last}"\n'
            f"codecs = {codecs}\n"
            f'[realtime]\nurl = "ws://127.0.0.1:{SIM_PORT}/v1/realtime"\napi_key = "bench"\n'
            f"[calls]\nmax_concurrent = {args.calls + 50}\n"
            + (f"saturation_lateness_ms = {args.saturation_ms}\n" if args.saturation_ms is not None else "")
            + f'[admin]\nlisten = "{self.admin}"\n[log]\nlevel = "warn"\n'
        )
        if self.record:
            shutil.rmtree(self.record_dir, ignore_errors=True)
            config += (
                f'[recording]\ndir = "{self.record_dir}"\n'
                f'[cdr]\npath = "{os.path.join(self.record_dir, "cdr.jsonl")}"\n'
                "[agents.default]\nrecord = true\n"
            )
        config_path = os.path.join(self.workdir, "switchboard.toml")
        with open(config_path, "w") as f:
            f.write(config)
        check = subprocess.run(
            [GATEWAY_BIN, "check", "--config", config_path], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise SystemExit(f"gateway rejects the bench config:\n{check.stdout}{check.stderr}")

        sim = Proc(
            "switchboard-sim",
            [SIM_BIN, "--listen", f"127.0.0.1:{SIM_PORT}", "--behaviour", "echo", "--log-limit", "0",
             "--speed", str(args.sim_speed)],
            self.workdir,
            os.path.join(self.workdir, "sim.log"),
            env={**os.environ, "RUST_LOG": "warn"},
        )
        wait_tcp(SIM_PORT, 15, "simulator")
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "OPENAI_API_KEY")}
        # --rt-priority: round-robin real-time scheduling, to tell the gateway's own timing apart from
        # CPU contention with everything else on the machine (an experiment, not the default).
        prefix = ["chrt", "-r", str(args.rt_priority)] if args.rt_priority else []
        gateway = Proc("switchboard", prefix + [GATEWAY_BIN, "run", "--config", config_path], self.workdir,
                       os.path.join(self.workdir, "gateway.log"), env=env)
        wait_tcp(GW_ADMIN_PORT, 15, "gateway admin")
        if args.clock_rt_priority:
            clock_realtime(gateway.pid, args.clock_rt_priority)
        time.sleep(2)
        self.result["idle_rss_kb"] = rss_kb(gateway.pid)
        idle = CpuWindow({"server": gateway.pid})
        idle.start()
        time.sleep(3)
        self.result["idle_cpu_pct"] = idle.stop()[1]["server"]

        self.start_uac(GW_SIP_PORT, scenario)
        window = CpuWindow({"sim": sim.pid})
        window.start()
        self.measure_window(gateway.pid, self.active_calls)
        self.result["sim_cpu_pct"] = window.stop()[1]["sim"]
        before, after = self.window_metrics
        for key, name in LATENCY_HISTOGRAMS.items():
            buckets = diff_buckets(histogram_buckets(before, name), histogram_buckets(after, name))
            self.result[f"{key}_count"] = buckets[-1][1] if buckets else 0
            self.result[f"{key}_p50"] = percentile(buckets, 0.50)
            self.result[f"{key}_p99"] = percentile(buckets, 0.99)
        for direction in ("in", "out"):
            packets = counter_sum(after, "switchboard_rtp_packets_total", f'direction="{direction}"') - counter_sum(
                before, "switchboard_rtp_packets_total", f'direction="{direction}"'
            )
            self.result[f"pps_{direction}"] = packets / self.result["metrics_secs"]
        self.result["rtp_lost"] = counter_sum(after, "switchboard_rtp_lost_total") - counter_sum(
            before, "switchboard_rtp_lost_total"
        )
        for key, name in (("busy_retries", "switchboard_media_clock_busy_retries_total"),
                          ("send_dropped", "switchboard_rtp_send_dropped_total")):
            self.result[key] = counter_sum(after, name) - counter_sum(before, name)
        if args.tshark_secs > 0 and self.uac.alive():
            self.result["tshark"] = tshark_gaps(self.workdir, GW_RTP_FIRST, args.tshark_secs)
        if args.perf_secs > 0 and self.uac.alive():
            self.result["perf"] = perf_profile(self.workdir, gateway.pid, args.perf_secs)

        self.wait_uac()
        # Let BYEs settle, then read how the gateway counted the calls.
        time.sleep(2)
        final = parse_metrics(fetch_metrics(self.admin))
        self.result["gw_calls"] = calls_by_outcome(final)
        if self.record:
            self.result["recorded"] = recording_stats(self.record_dir)
            self.result["recording_dropped"] = counter_sum(final, "switchboard_recording_dropped_total")
        self.result["gw_active_after"] = int(counter_sum(final, "switchboard_calls_active"))
        gateway.stop(signal.SIGTERM, 15)
        sim.stop(signal.SIGTERM, 5)
        return self.result


class BaselineRun(Run):
    """The same load against SIPp's built-in UAS echoing RTP: the cost of a minimal C++ endpoint."""

    def __init__(self, args, workdir, uas_scenario):
        super().__init__(args, workdir, "baseline")
        self.uas_scenario = uas_scenario

    def run(self, scenario):
        check_free([UAS_SIP_PORT, UAC_SIP_PORT, UAS_MEDIA_PORT], "udp")
        uas = Proc(
            "sipp-uas",
            ["sipp", "-sf", self.uas_scenario, "-rtp_echo", "-i", "127.0.0.1", "-mi", "127.0.0.1",
             "-p", str(UAS_SIP_PORT), "-mp", str(UAS_MEDIA_PORT), "-nostdin",
             "-timeout", f"{int(self.hold_ms() / 1000 + 200)}s"],
            self.workdir,
            os.path.join(self.workdir, "uas_screen.log"),
        )
        time.sleep(1.5)
        if not uas.alive():
            raise SystemExit(f"SIPp UAS exited at once (see {self.workdir}/uas_screen.log)")
        self.result["idle_rss_kb"] = rss_kb(uas.pid)
        self.start_uac(UAS_SIP_PORT, scenario)
        self.measure_window(uas.pid)
        self.wait_uac()
        uas.stop(signal.SIGUSR1, 10)
        return self.result


# ---------------------------------------------------------------- tshark cross-check


def tshark_gaps(workdir, rtp_first, seconds, streams=5):
    """Captures the gateway's first few calls' outbound RTP and measures inter-packet gaps - 20 ms."""
    pcap = os.path.join(workdir, "gateway_rtp.pcap")
    ports = " or ".join(f"src port {rtp_first + 2 * i}" for i in range(streams * 4))
    try:
        subprocess.run(
            ["tshark", "-i", "lo", "-f", f"udp and ({ports})", "-w", pcap, "-a", f"duration:{seconds}", "-q"],
            capture_output=True, timeout=seconds + 30,
        )
        out = subprocess.run(
            ["tshark", "-r", pcap, "-T", "fields", "-e", "frame.time_epoch", "-e", "udp.srcport"],
            capture_output=True, text=True, timeout=120,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    by_port = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            by_port.setdefault(parts[1], []).append(float(parts[0]))
    deviations = []
    for times in by_port.values():
        deviations += [abs((b - a) - 0.020) for a, b in zip(times, times[1:])]
    if not deviations:
        return {"streams": 0}
    deviations.sort()
    pick = lambda q: deviations[min(len(deviations) - 1, int(q * len(deviations)))]  # noqa: E731
    return {"streams": len(by_port), "gaps": len(deviations), "p50": pick(0.5), "p99": pick(0.99),
            "max": deviations[-1]}


# ---------------------------------------------------------------- profile


def perf_profile(workdir, pid, seconds, top=25):
    """Samples the loaded gateway with perf (after the window, so it does not skew the CPU numbers)
    and returns perf report's top symbols by self time."""
    if not shutil.which("perf"):
        return "perf is not installed (apt-get install linux-perf)"
    data = os.path.join(workdir, "perf.data")
    try:
        subprocess.run(
            # DWARF unwinding: the release build keeps debug info but no frame pointers.
            ["perf", "record", "-F", "199", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", data,
             "--", "sleep", str(seconds)],
            capture_output=True, timeout=seconds + 60,
        )
        report = subprocess.run(
            ["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none", "--percent-limit", "0.7",
             "--sort", "dso,symbol"],
            capture_output=True, text=True, timeout=300,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf failed: {e}"
    rows = [line.rstrip(" -") for line in report.splitlines() if line.strip() and not line.startswith("#")]
    # Who calls what, inclusive time, for reading later (kept with --keep).
    try:
        with open(os.path.join(workdir, "perf-callers.txt"), "w") as f:
            subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--stdio", "-G", "--percent-limit", "2"],
                stdout=f, stderr=subprocess.DEVNULL, timeout=600,
            )
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "\n".join(rows[:top])


# ---------------------------------------------------------------- report


def report(args, gw, base):
    n = args.calls
    lines = []
    add = lines.append
    add(f"### {n} concurrent {args.codec.upper()} calls, {args.duration} s window")
    add("")
    add(f"`{' '.join(sys.argv)}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    add("")
    add("| | gateway | baseline (SIPp UAS, rtp_echo) | gateway / baseline | target |")
    add("|---|---|---|---|---|")

    def ratio(a, b):
        return f"{a / b:.1f}x" if b else "n/a"

    def calls(r):
        if r.get("skipped"):
            return "skipped"
        return f"{r.get('sipp_ok', 0)} ok / {r.get('sipp_failed', 0)} failed (SIPp exit {r.get('sipp_exit')})"

    add(f"| calls (SIPp UAC) | {calls(gw)} | {calls(base)} | | {n} ok, 0 failed |")
    answered, refused = answered_refused(gw)
    if refused:
        add(f"| offered / answered / refused with 503 (gateway) | {n} / {answered} / {refused} | | | every accepted call intact |")
    per_call_n = answered if answered else n
    gw_core = gw["cpu_pct"] / per_call_n
    base_core = base["cpu_pct"] / n
    add(f"| CPU, whole process (% of one core) | {gw['cpu_pct']:.1f} | {base['cpu_pct']:.1f} | {ratio(gw['cpu_pct'], base['cpu_pct'])} | |")
    target_cpu = "0.6" if args.codec == "opus" else "0.1"
    add(f"| CPU per call (% of one core) | {gw_core:.3f} | {base_core:.3f} | {ratio(gw_core, base_core)} | <= {target_cpu} |")
    gw_mem = (gw["rss_kb"] - gw["idle_rss_kb"]) / per_call_n
    base_mem = (base["rss_kb"] - base["idle_rss_kb"]) / n
    add(f"| RSS idle / loaded (MiB) | {gw['idle_rss_kb'] / 1024:.1f} / {gw['rss_kb'] / 1024:.1f} | {base['idle_rss_kb'] / 1024:.1f} / {base['rss_kb'] / 1024:.1f} | | |")
    add(f"| memory per call (KiB) | {gw_mem:.0f} | {base_mem:.0f} | {ratio(gw_mem, base_mem)} | <= 300 |")
    add(f"| load generator (SIPp UAC) CPU (% of one core) | {gw['uac_cpu_pct']:.1f} | {base['uac_cpu_pct']:.1f} | | |")
    add("")
    add("| gateway only | p50 (ms) | p99 (ms) | samples | target p99 |")
    add("|---|---|---|---|---|")
    add(f"| outbound timing deviation (send lateness vs 20 ms slot), answered calls | {fmt_ms(gw['timing_p50'])} | {fmt_ms(gw['timing_p99'])} | {gw['timing_count']:.0f} | <= 2 ms (max of 1 s windows: {fmt_ms(gw.get('lateness_max'))} ms) |")
    add(f"| added latency inbound (RTP in -> Realtime socket) | {fmt_ms(gw['inbound_p50'])} | {fmt_ms(gw['inbound_p99'])} | {gw['inbound_count']:.0f} | <= 1 ms |")
    add(f"| added latency outbound (model delta -> RTP queued) | {fmt_ms(gw['outbound_p50'])} | {fmt_ms(gw['outbound_p99'])} | {gw['outbound_count']:.0f} | <= 1 ms |")
    ts = gw.get("tshark")
    if ts and ts.get("gaps"):
        add(f"| tshark cross-check: abs(inter-packet gap - 20 ms), {ts['streams']} streams | {ts['p50'] * 1000:.3f} | {ts['p99'] * 1000:.3f} | {ts['gaps']} | (max {ts['max'] * 1000:.3f} ms) |")
    add("")
    add(
        f"Gateway context: calls active at window start/end {gw.get('active_at_start')}/{gw.get('active_at_end')}, "
        f"RTP {gw['pps_in']:.0f} pkt/s in, {gw['pps_out']:.0f} pkt/s out (expected {50 * (gw.get('active_at_start') or n)} each), "
        f"{gw['rtp_lost']:.0f} lost in window, media clock busy retries {gw.get('busy_retries', 0):.0f} and "
        f"send drops {gw.get('send_dropped', 0):.0f} in window, {gw['threads']} threads, idle CPU {gw['idle_cpu_pct']:.2f} %, "
        f"simulator CPU {gw['sim_cpu_pct']:.1f} %, gateway threads (% of a core): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(gw.get("thread_cpu", {}).items()))
        + ", calls after run: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(gw["gw_calls"].items()))
        + f"; active after run {gw['gw_active_after']}; capacity admission saturated for {gw.get('saturated_secs', 0)} of the window's 1 s samples."
    )
    if refused:
        add("")
        add(
            f"Capacity found: {answered} calls answered of {n} offered "
            f"({gw.get('active_at_start')} up at window start); the other {refused} were refused with 503 + Retry-After."
        )
    if gw.get("perf"):
        add("")
        add("Gateway profile under this load (perf, self time, top symbols):")
        add("")
        add("```")
        add(gw["perf"])
        add("```")
    return "\n".join(lines)


def recording_stats(record_dir):
    """WAV files, their bytes and seconds (8 kHz stereo PCM16: 32000 bytes a second), CDR lines."""
    wavs, size = 0, 0
    for root, _dirs, files in os.walk(record_dir):
        for name in files:
            if name.endswith(".wav"):
                wavs += 1
                size += os.path.getsize(os.path.join(root, name))
    cdr = os.path.join(record_dir, "cdr.jsonl")
    cdrs = sum(1 for _ in open(cdr)) if os.path.exists(cdr) else 0
    return {"wavs": wavs, "bytes": size, "seconds": max(size - 44 * wavs, 0) / 32000, "cdrs": cdrs}


def record_compare_report(args, plain, recorded):
    """Recording's cost: the same load without and with every call recorded, in one invocation."""
    n = args.calls

    def per_call(r):
        answered, _ = answered_refused(r)
        return r["cpu_pct"] / (answered or n)

    rec = recorded.get("recorded", {})
    lines = [
        f"### Recording cost: {n} concurrent {args.codec.upper()} calls, {args.duration} s window, without and with --record",
        "",
        f"`{' '.join(sys.argv)}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| | not recorded | every call recorded | difference | target |",
        "|---|---|---|---|---|",
        f"| calls (SIPp UAC) | {plain.get('sipp_ok', 0)} ok / {plain.get('sipp_failed', 0)} failed | "
        f"{recorded.get('sipp_ok', 0)} ok / {recorded.get('sipp_failed', 0)} failed | | {n} ok |",
        f"| CPU, whole process (% of one core) | {plain['cpu_pct']:.2f} | {recorded['cpu_pct']:.2f} | "
        f"{recorded['cpu_pct'] - plain['cpu_pct']:+.2f} | |",
        f"| CPU per call (% of one core) | {per_call(plain):.4f} | {per_call(recorded):.4f} | "
        f"{per_call(recorded) - per_call(plain):+.4f} | <= +0.05 |",
        f"| pacing: send lateness p50 / p99 (ms) | {fmt_ms(plain['timing_p50'])} / {fmt_ms(plain['timing_p99'])} | "
        f"{fmt_ms(recorded['timing_p50'])} / {fmt_ms(recorded['timing_p99'])} | | p99 unchanged |",
        f"| recorder thread CPU (% of one core) | | {recorded.get('thread_cpu', {}).get('recorder', 0.0):.2f} | | |",
        f"| RSS loaded (MiB) | {plain['rss_kb'] / 1024:.1f} | {recorded['rss_kb'] / 1024:.1f} | | |",
        "",
        f"Recorded: {rec.get('wavs', 0)} WAV files, {rec.get('bytes', 0) / 1e6:.1f} MB, "
        f"{rec.get('seconds', 0):.0f} s of audio; {rec.get('cdrs', 0)} CDR lines; recorder audio dropped: "
        f"{recorded.get('recording_dropped', 0):.0f}.",
        "",
        "Gateway threads (% of a core), not recorded: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(plain.get("thread_cpu", {}).items()))
        + "; recorded: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(recorded.get("thread_cpu", {}).items()))
        + f". Media clock busy retries {plain.get('busy_retries', 0):.0f} / {recorded.get('busy_retries', 0):.0f}, "
        f"lateness max of 1 s windows {fmt_ms(plain.get('lateness_max'))} / {fmt_ms(recorded.get('lateness_max'))} ms.",
    ]
    return "\n".join(lines)


def answered_refused(gw):
    """(answered, refused) from the gateway's switchboard_calls_total after the run."""
    outcomes = gw.get("gw_calls", {})
    refused = sum(v for k, v in outcomes.items() if k.startswith("refused/"))
    answered = sum(v for k, v in outcomes.items() if not k.startswith(("refused/", "cancelled/")))
    return int(answered), int(refused)


def baseline_report(args, base):
    n = args.calls
    return "\n".join([
        f"### Baseline only: {n} concurrent {args.codec.upper()} calls, {args.duration} s window",
        "",
        "| SIPp UAS (rtp_echo) | value |",
        "|---|---|",
        f"| calls | {base.get('sipp_ok', 0)} ok / {base.get('sipp_failed', 0)} failed (SIPp exit {base.get('sipp_exit')}) |",
        f"| CPU (% of one core) / per call | {base['cpu_pct']:.1f} / {base['cpu_pct'] / n:.3f} |",
        f"| memory per call (KiB) | {(base['rss_kb'] - base['idle_rss_kb']) / n:.0f} |",
        f"| load generator (SIPp UAC) CPU (% of one core) | {base['uac_cpu_pct']:.1f} |",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--duration", type=int, default=60, help="measurement window, seconds")
    parser.add_argument("--codec", choices=["pcmu", "opus"], default="pcmu")
    parser.add_argument("--rate", type=float, default=50, help="new calls per second during ramp-up")
    parser.add_argument("--settle", type=float, default=5, help="seconds after ramp-up before the window")
    parser.add_argument("--tail", type=float, default=20, help="seconds calls stay up after the window")
    parser.add_argument("--tshark-secs", type=int, default=10, help="tshark cross-check capture (0: off)")
    parser.add_argument("--sim-speed", type=float, default=4, help="simulator output speed (burst factor)")
    parser.add_argument("--opus-pcap", help="Opus RTP pcap for --codec opus (default: built by bench/opus_pcap.py)")
    parser.add_argument("--perf-secs", type=int, default=0, help="perf record the gateway after the window (0: off)")
    parser.add_argument("--rt-priority", type=int, default=0, help="run the gateway under chrt -r PRIO (experiment)")
    parser.add_argument("--saturation-ms", type=int, default=None,
                        help="gateway calls.saturation_lateness_ms (default: the gateway's; 0: capacity admission off)")
    parser.add_argument("--record", action="store_true",
                        help="every gateway call recorded (WAV + sidecar + CDR) to the work directory")
    parser.add_argument("--record-compare", action="store_true",
                        help="run the gateway twice, without and with every call recorded, and report the difference "
                             "(implies --skip-baseline)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-gateway", action="store_true",
                        help="baseline only: checks the load generator path (e.g. Opus before the gateway has it)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--clock-rt-priority", type=int, default=0,
                        help="SCHED_FIFO priority for the gateway's media-clock thread only (experiment, root)")
    parser.add_argument("--autogroup-nice", type=int, default=None,
                        help="autogroup nice of every process started (e.g. -10, needs root): the bench's share "
                             "of a machine others are using")
    args = parser.parse_args()
    global AUTOGROUP_NICE
    AUTOGROUP_NICE = args.autogroup_nice
    if args.tshark_secs + args.perf_secs + 5 > args.tail:
        args.tail = args.tshark_secs + args.perf_secs + 5

    for path in (GATEWAY_BIN, SIM_BIN):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"missing {path}: run scripts/bench-load.sh (it builds the release binaries)")
    atexit.register(kill_everything)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workdir = tempfile.mkdtemp(prefix="switchboard-bench-")
    log(f"work directory {workdir}")
    try:
        if args.codec == "pcmu":
            media = make_audio(workdir)
        elif args.opus_pcap:
            media = os.path.abspath(args.opus_pcap)
        else:
            # play_pcap_audio plays once: the capture covers the whole hold time.
            media = os.path.join(workdir, "speech_opus.pcap")
            seconds = Run(args, workdir, "opus").hold_ms() / 1000 + 5
            frames = opus_pcap.make(media, seconds)
            log(f"Opus pcap {media}: {frames} frames")
        scenario, uas_scenario = write_scenarios(workdir, media, args.codec)
        if args.skip_gateway:
            base = BaselineRun(args, workdir, uas_scenario).run(scenario)
            print(baseline_report(args, base))
            return 0 if base.get("sipp_ok") == args.calls else 1
        if args.record_compare:
            plain = GatewayRun(args, workdir).run(scenario)
            time.sleep(3)
            recorded = GatewayRun(args, workdir, record=True).run(scenario)
            print(record_compare_report(args, plain, recorded))
            failed = any(r.get("sipp_failed", 1) or r.get("sipp_ok", 0) != args.calls for r in (plain, recorded))
            return 1 if failed else 0
        gw = GatewayRun(args, workdir, record=args.record).run(scenario)
        if args.skip_baseline:
            base = {"cpu_pct": 0, "rss_kb": 0, "idle_rss_kb": 0, "uac_cpu_pct": 0, "skipped": True}
        else:
            time.sleep(3)
            base = BaselineRun(args, workdir, uas_scenario).run(scenario)
        print(report(args, gw, base))
        failed = gw.get("sipp_failed", 1) or gw.get("sipp_ok", 0) != args.calls
        return 1 if failed else 0
    finally:
        kill_everything()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
