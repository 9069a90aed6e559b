"""Slow tool calls under load: N concurrent SIPp calls through the gateway (bench/load.py's
whole-call run), twice: once plain, once with every call's model calling a webhook tool that
answers after --tool-delay-ms. Reports the media clock's pacing (switchboard_rtp_send_lateness_seconds)
over the same window in both runs: the tools run off the calls' tasks, so the pacing must not change.

    python3 bench/tools_load.py --calls 100 --duration 12 --tool-delay-ms 5000

Python standard library only; reuses bench/load.py (ports, processes killed by PID at exit,
metrics parsing). Loopback only. The tool is configured through the gateway's environment
overrides (SWITCHBOARD__AGENTS__DEFAULT__TOOLS__SLOW_LOOKUP__*), so the load run's config is the
same in both runs but for the tool. Results: docs/benchmarks.md, "100 concurrent slow tool calls".
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

WEBHOOK_PORT = 28190
TOOL = "slow_lookup"


class SlowWebhook(http.server.ThreadingHTTPServer):
    daemon_threads = True


def webhook_server(delay_secs, counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            with counter["lock"]:
                counter["requests"] += 1
            time.sleep(delay_secs)
            body = b'{"status":"found","eta":"tomorrow"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = SlowWebhook(("127.0.0.1", WEBHOOK_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


class ToolsRun(load.GatewayRun):
    """The gateway run; at the start of the window every session's model calls the slow tool."""

    def __init__(self, args, workdir, with_tools):
        super().__init__(args, workdir)
        self.label = "tools" if with_tools else "plain"
        self.workdir = os.path.join(workdir, self.label)
        os.makedirs(self.workdir, exist_ok=True)
        self.result["label"] = self.label
        self.with_tools = with_tools

    def sleep_until(self, offset):
        alive = super().sleep_until(offset)
        window_start = self.ramp_secs() + self.args.settle
        if alive and self.with_tools and abs(offset - window_start) < 1e-9:
            body = json.dumps({"name": TOOL, "arguments": '{"order":"A-17"}', "say_ms": 0, "now": True}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{load.SIM_PORT}/_sim/control/call_tool", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                sessions = json.loads(answer.read()).get("sessions", 0)
            self.result["tool_sessions"] = sessions
            load.log(f"{self.label}: call_tool sent to {sessions} sessions")
        return alive

    def wait_uac(self):
        # After the window, while the gateway still runs: how the tool calls ended.
        super().wait_uac()
        try:
            self.result["tool_calls"] = tool_counts(self.admin)
        except OSError:
            self.result["tool_calls"] = {}


def tool_counts(admin):
    samples = load.parse_metrics(load.fetch_metrics(admin))
    return {
        status: load.counter_sum(samples, "switchboard_tool_calls_total", f'status="{status}"')
        for status in ("ok", "failed", "timeout", "rejected")
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--duration", type=int, default=12, help="window, seconds (the tools run in its first part)")
    parser.add_argument("--tool-delay-ms", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--settle", type=float, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    # What load.GatewayRun reads besides these.
    args.codec = "pcmu"
    args.tail = 8
    args.tshark_secs = 0
    args.perf_secs = 0
    args.sim_speed = 4
    args.rt_priority = 0
    args.clock_rt_priority = 0
    args.saturation_ms = 0  # capacity admission off: every call is answered in both runs

    for path in (load.GATEWAY_BIN, load.SIM_BIN):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"missing {path}: cargo build --release -p switchboard -p switchboard-sim")
    import atexit

    atexit.register(load.kill_everything)
    signal.signal(signal.SIGTERM, load.on_signal)
    signal.signal(signal.SIGINT, load.on_signal)
    counter = {"lock": threading.Lock(), "requests": 0}
    server = webhook_server(args.tool_delay_ms / 1000, counter)
    workdir = tempfile.mkdtemp(prefix="switchboard-tools-bench-")
    load.log(f"work directory {workdir}")
    results = []
    try:
        media = load.make_audio(workdir)
        scenario, _ = load.write_scenarios(workdir, media, "pcmu")
        for with_tools in (False, True):
            prefix = f"SWITCHBOARD__AGENTS__DEFAULT__TOOLS__{TOOL.upper()}__"
            for key in [k for k in os.environ if k.startswith(prefix)]:
                del os.environ[key]
            if with_tools:
                os.environ[prefix + "URL"] = f"http://127.0.0.1:{WEBHOOK_PORT}/tool"
                os.environ[prefix + "TIMEOUT_MS"] = str(args.tool_delay_ms + 5000)
                os.environ[prefix + "DESCRIPTION"] = "Look up an order (slow)."
            run = ToolsRun(args, workdir, with_tools)
            result = run.run(scenario)
            results.append(result)
            time.sleep(3)
    finally:
        server.shutdown()
        load.kill_everything()
        if args.keep:
            load.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print("| run | calls ok / failed | call_tool sessions | webhook requests | tool calls ok | pacing p50 | pacing p99 | max 1 s window | CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['label']} | {r.get('sipp_ok')} / {r.get('sipp_failed')} | {r.get('tool_sessions', 0)} | "
            f"{counter['requests'] if r['label'] == 'tools' else 0} | {int(r.get('tool_calls', {}).get('ok', 0))} | "
            f"{load.fmt_ms(r.get('timing_p50'))} ms | "
            f"{load.fmt_ms(r.get('timing_p99'))} ms | {load.fmt_ms(r.get('lateness_max'))} ms | {r.get('cpu_pct', 0):.1f} % |"
        )
    failed = any(r.get("sipp_failed", 1) or r.get("sipp_ok") != args.calls for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
