//! Scale-out behind Kamailio: Debian's Kamailio runs the shipped dispatcher configuration
//! (`deploy/kamailio/kamailio.cfg`, ports and paths given as `-A` defines, never a copy) in front
//! of several gateway processes on loopback, and SIPp calls Kamailio.
//!
//! What it shows: calls spread over the gateways; a gateway killed with `kill -9` is marked down
//! by the OPTIONS probes and no call fails after that; a draining gateway (SIGTERM) gets no new
//! call while its own call finishes through Kamailio; a gateway at `calls.max_concurrent` answers
//! 503 and Kamailio's failure_route takes the call to another one; ACK and BYE follow the
//! Record-Route both ways.
//!
//! The dispatcher probes every second (`DS_PING_INTERVAL=1`) and gives a gateway 900 ms to answer
//! (`FR_TIMER_MS=900`), so each test takes seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use switchboard_e2e::Ports;
use switchboard_e2e::procs::{ChildGuard, Gateway, run_bounded};
use switchboard_e2e::tools;

const DIALLED: &str = "15550001000";

/// Kamailio's programs (`kamailio`, `kamcmd`), where tests/build.rs found them (often /usr/sbin,
/// not on a non-root PATH).
fn kamailio_tool(name: &str) -> PathBuf {
    option_env!("E2E_KAMAILIO_DIR").map_or_else(|| PathBuf::from(name), |dir| PathBuf::from(dir).join(name))
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A gateway with the offline agent, Kamailio's address trusted (every call comes from it, so
/// the per-source limits must not apply) and `env` overrides on top.
fn gateway(slot: u16, dir: &Path, env: &[(&str, &str)]) -> Gateway {
    let dir = dir.join(format!("gw{slot}"));
    std::fs::create_dir_all(&dir).expect("gateway dir");
    let mut all = vec![("SWITCHBOARD__SIP__TRUSTED_PROXIES", "127.0.0.1")];
    all.extend_from_slice(env);
    Gateway::start_with_env(Ports::for_slot(slot), "", "", &dir, &all)
}

/// Kamailio in the foreground (`-DD -E`), in its own process group so that its worker processes
/// are stopped with it; everything it writes (pid file, control socket, runtime files) stays in
/// the test's folder, so it needs no root.
struct Kamailio {
    guard: ChildGuard,
    ctl: String,
    log_path: PathBuf,
}

impl Kamailio {
    fn start(port: u16, gateways: &[&Gateway], dir: &Path) -> Kamailio {
        let list: String = gateways
            .iter()
            .map(|gw| format!("1 sip:127.0.0.1:{} 0 0 duid=gw{}\n", gw.ports.sip, gw.ports.sip))
            .collect();
        let list_path = dir.join("dispatcher.list");
        std::fs::write(&list_path, list).expect("write dispatcher.list");
        let kamailio = Kamailio::start_with_list(port, &list_path, dir);
        // Ready once every gateway has been probed active.
        for gw in gateways {
            kamailio.wait_for_state(gw, 'A', Duration::from_secs(10));
        }
        kamailio
    }

    /// Kamailio with a given dispatcher list; returns once its control socket answers.
    fn start_with_list(port: u16, list_path: &Path, dir: &Path) -> Kamailio {
        use std::os::unix::process::CommandExt;
        let dir = dir.join("kamailio");
        std::fs::create_dir_all(&dir).expect("kamailio dir");
        let ctl = format!("unix:{}", dir.join("ctl").display());
        let log_path = dir.join("kamailio.log");
        let log = std::fs::File::create(&log_path).expect("kamailio log");
        let guard = ChildGuard::spawn(
            "kamailio",
            Command::new(kamailio_tool("kamailio"))
                .arg("-f")
                .arg(repo_file("deploy/kamailio/kamailio.cfg"))
                .args(["-DD", "-E", "-m", "64", "-M", "8"])
                .arg("-w")
                .arg(&dir)
                .arg("-Y")
                .arg(&dir)
                .arg("-P")
                .arg(dir.join("kamailio.pid"))
                .args(["-A", &format!("LISTEN_UDP=udp:127.0.0.1:{port}")])
                .args(["-A", &format!("LISTEN_TCP=tcp:127.0.0.1:{port}")])
                .args(["-A", &format!("DISPATCHER_LIST=\"{}\"", list_path.display())])
                .args(["-A", &format!("CTL_SOCKET=\"{ctl}\"")])
                .args(["-A", "DS_PING_INTERVAL=1", "-A", "FR_TIMER_MS=900", "-A", "CHILDREN=2"])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let kamailio = Kamailio { guard, ctl, log_path };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kamailio.dispatcher_list().contains("URI: sip:") {
            assert!(Instant::now() < deadline, "kamailio not answering kamcmd; log:\n{}", kamailio.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        kamailio
    }

    /// `kamcmd dispatcher.list`.
    fn dispatcher_list(&self) -> String {
        let out = run_bounded(
            "kamcmd",
            Command::new(kamailio_tool("kamcmd")).args(["-s", &self.ctl, "dispatcher.list"]),
            Duration::from_secs(5),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The dispatcher's FLAGS for a gateway: "AP" active and probed, "IP" inactive and probed.
    fn flags(&self, gw: &Gateway) -> Option<String> {
        self.uri_flags(gw.ports.sip)
    }

    fn uri_flags(&self, sip_port: u16) -> Option<String> {
        let list = self.dispatcher_list();
        let uri = format!("URI: sip:127.0.0.1:{sip_port}");
        let mut lines = list.lines().skip_while(|line| line.trim() != uri);
        lines.next()?;
        lines.find_map(|line| line.trim().strip_prefix("FLAGS: ").map(str::to_string))
    }

    /// Waits until the gateway's state letter (A, I, T, D) is `state`; returns how long it took.
    fn wait_for_state(&self, gw: &Gateway, state: char, limit: Duration) -> Duration {
        self.wait_for_uri_state(gw.ports.sip, state, limit)
    }

    fn wait_for_uri_state(&self, sip_port: u16, state: char, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let flags = self.uri_flags(sip_port);
            if flags.as_deref().is_some_and(|f| f.starts_with(state)) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "gateway {sip_port} not in state {state} within {limit:?} (flags {flags:?}); kamailio log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    /// SIGTERM to the whole group (Kamailio's main process stops its workers), then SIGKILL to
    /// whatever is left of the group after 5 s.
    fn drop(&mut self) {
        let group = format!("-{}", self.guard.pid());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        if self.guard.wait_timeout(Duration::from_secs(5)).is_none() {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    }
}

/// One SIPp UAC instance (its own SIP and media ports) calling Kamailio.
struct Caller {
    proxy_port: u16,
    sip_port: u16,
    media_port: u16,
    /// SIP over TCP to Kamailio (which then record-routes twice: TCP on one side, UDP on the
    /// gateway's) instead of UDP.
    tcp: bool,
}

impl Caller {
    /// SIPp running `scenario` (a file in tests/scenarios) with its placeholders filled.
    fn command(&self, scenario: &str, name: &str, dir: &Path, calls: u32, pause_ms: u32) -> Command {
        let path = dir.join(format!("{name}.xml"));
        let transport = if self.tcp { "TCP" } else { "UDP" };
        let scenario = std::fs::read_to_string(tools::scenario(scenario)).expect("read scenario");
        let text = scenario.replace("@PROXY_PORT@", &self.proxy_port.to_string()).replace("@TRANSPORT@", transport);
        std::fs::write(&path, text).expect("write scenario");
        let mut cmd = Command::new("sipp");
        if self.tcp {
            cmd.args(["-t", "t1"]);
        }
        cmd.arg(format!("127.0.0.1:{}", self.proxy_port))
            .arg("-sf")
            .arg(&path)
            .args(["-s", DIALLED, "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &self.sip_port.to_string(), "-mp", &self.media_port.to_string()])
            .args(["-d", &pause_ms.to_string(), "-m", &calls.to_string(), "-l", &calls.to_string(), "-r", "10"])
            .args(["-nostdin", "-timeout", "40s", "-timeout_error", "-trace_err", "-error_file"])
            .arg(dir.join(format!("{name}_errors.log")))
            // Kamailio relays each UDP message in whichever worker process takes it, so on a busy
            // machine the gateway's 180 can reach the caller after its 200. A real UA drops that
            // stray 1xx (the INVITE transaction ended with the 2xx, RFC 3261 §17.1.1.2); SIPp
            // would abort the call on it. What each scenario waits for is still checked: a
            // message that never comes fails it by its timeout.
            .args(["-default_behaviors", "all,-abortunexp"])
            .current_dir(dir);
        cmd
    }

    /// Runs `calls` calls (up to 10 a second, all at once) that each last `pause_ms`, to the end.
    fn calls(&self, name: &str, dir: &Path, calls: u32, pause_ms: u32) -> Output {
        let output = run_bounded(
            "sipp",
            &mut self.command("uac_via_proxy.xml", name, dir, calls, pause_ms),
            Duration::from_secs(60),
        );
        report_sipp(name, dir, &output.status);
        output
    }

    /// Starts one call lasting `pause_ms` in the background.
    fn start_call(&self, name: &str, dir: &Path, pause_ms: u32) -> ChildGuard {
        let mut cmd = self.command("uac_via_proxy.xml", name, dir, 1, pause_ms);
        ChildGuard::spawn("sipp", cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()))
    }
}

fn report_sipp(name: &str, dir: &Path, status: &ExitStatus) {
    if !status.success() {
        eprintln!(
            "sipp {name} failed ({status}); errors:\n{}",
            std::fs::read_to_string(dir.join(format!("{name}_errors.log"))).unwrap_or_default()
        );
    }
}

/// Sum of a counter's series whose labels contain `labels` (e.g. `outcome="completed"`).
fn counter(metrics: &str, name: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn completed(gw: &Gateway) -> u64 {
    counter(&gw.metrics(), "switchboard_calls_total", "outcome=\"completed\"")
}

fn calls_active(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|line| line.strip_prefix("switchboard_calls_active ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Waits until one of `gateways` has a call up; returns its index.
fn gateway_with_a_call(gateways: &[&Gateway], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(index) = gateways.iter().position(|gw| calls_active(gw) > 0) {
            return index;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no gateway has a call up after {limit:?}");
}

fn kill9(gw: &Gateway) {
    let status = Command::new("kill").args(["-KILL", &gw.guard.pid().to_string()]).status().expect("kill");
    assert!(status.success());
}

#[test]
#[cfg_attr(not(all(has_kamailio, has_sipp)), ignore = "needs kamailio and sipp (scripts/install-deps.sh)")]
fn calls_spread_over_gateways_and_a_killed_one_is_routed_around() {
    let dir = tools::scratch_dir("scale_out_spread_kill");
    let gateways = [gateway(95, &dir, &[]), gateway(96, &dir, &[]), gateway(97, &dir, &[])];
    let refs: Vec<&Gateway> = gateways.iter().collect();
    let proxy = Ports::for_slot(95).peer_sip;
    let kamailio = Kamailio::start(proxy, &refs, &dir);
    let caller =
        Caller { proxy_port: proxy, sip_port: proxy + 2, media_port: Ports::for_slot(95).peer_media, tcp: false };

    // Round-robin: 9 calls, 3 per gateway when all answer.
    let out = caller.calls("spread", &dir, 9, 500);
    assert!(out.status.success(), "every call through Kamailio must succeed; log:\n{}", kamailio.log());
    let per_gateway: Vec<u64> = gateways.iter().map(completed).collect();
    eprintln!("calls per gateway: {per_gateway:?}");
    assert_eq!(per_gateway.iter().sum::<u64>(), 9, "{per_gateway:?}");
    assert!(per_gateway.iter().all(|&n| n >= 2), "calls not spread: {per_gateway:?}");

    // kill -9: no BYE, no 503, the socket is simply gone. The OPTIONS probes notice.
    kill9(&gateways[2]);
    let detection = kamailio.wait_for_state(&gateways[2], 'I', Duration::from_secs(10));
    eprintln!("killed gateway marked down after {detection:?}");
    for gw in &gateways[..2] {
        assert_eq!(kamailio.flags(gw).as_deref(), Some("AP"), "the live gateways stay active");
    }
    let before: u64 = gateways[..2].iter().map(completed).sum();
    let out = caller.calls("after_kill", &dir, 6, 300);
    assert!(out.status.success(), "after detection no call may fail; log:\n{}", kamailio.log());
    let after: u64 = gateways[..2].iter().map(completed).sum();
    assert_eq!(after - before, 6, "every new call went to a live gateway");
    assert!(kamailio.log().contains(&format!("gateway sip:127.0.0.1:{} is DOWN", gateways[2].ports.sip)));
}

#[test]
#[cfg_attr(not(all(has_kamailio, has_sipp)), ignore = "needs kamailio and sipp (scripts/install-deps.sh)")]
fn a_draining_gateway_gets_no_new_calls_while_its_call_finishes() {
    let dir = tools::scratch_dir("scale_out_drain");
    let env = [("SWITCHBOARD__CALLS__DRAIN_SECS", "30")];
    let mut gateways = [gateway(98, &dir, &env), gateway(99, &dir, &env)];
    let refs: Vec<&Gateway> = gateways.iter().collect();
    let proxy = Ports::for_slot(98).peer_sip;
    let kamailio = Kamailio::start(proxy, &refs, &dir);
    let ports = Ports::for_slot(98);
    let long_caller = Caller { proxy_port: proxy, sip_port: proxy + 4, media_port: ports.peer_media + 50, tcp: false };
    let caller = Caller { proxy_port: proxy, sip_port: proxy + 2, media_port: ports.peer_media, tcp: false };

    // One call of 8 s; SIGTERM the gateway that took it.
    let mut long_call = long_caller.start_call("long_call", &dir, 8000);
    let draining = gateway_with_a_call(&refs, Duration::from_secs(5));
    let other = 1 - draining;
    let sigterm = Instant::now();
    let status = Command::new("kill").args(["-TERM", &gateways[draining].guard.pid().to_string()]).status();
    assert!(status.expect("kill").success());

    // Its OPTIONS answer turns 503: the probes take it out of rotation.
    let detection = kamailio.wait_for_state(&gateways[draining], 'I', Duration::from_secs(5));
    eprintln!("draining gateway out of rotation after {detection:?}");

    // New calls all go to the other gateway, and succeed.
    let before = completed(&gateways[other]);
    let out = caller.calls("while_draining", &dir, 4, 200);
    assert!(out.status.success(), "calls during the drain must succeed; log:\n{}", kamailio.log());
    assert_eq!(completed(&gateways[other]) - before, 4, "every new call went to the gateway not draining");
    assert_eq!(kamailio.flags(&gateways[draining]).as_deref().map(|f| &f[..1]), Some("I"));

    // The call in progress finished normally: SIPp's BYE went through Kamailio's route and was
    // answered 200 by the draining gateway, which then exited 0.
    let long_status = long_call.wait_timeout(Duration::from_secs(20)).expect("the long call ends");
    report_sipp("long_call", &dir, &long_status);
    assert!(long_status.success(), "the call in progress must complete during the drain");
    let exit = gateways[draining].guard.wait_timeout(Duration::from_secs(10)).expect("the drained gateway exits");
    assert_eq!(exit.code(), Some(0), "a drained gateway exits 0; log:\n{}", gateways[draining].log());
    assert!(sigterm.elapsed() >= Duration::from_secs(4), "the gateway waited for its call instead of hanging up");
    let log = gateways[draining].log();
    assert!(
        log.contains("call ended reason=CallerHangup"),
        "the call ended by the caller's BYE, not by the drain; log:\n{log}"
    );
    assert!(log.contains("drain over outcome=\"calls_ended\""), "the drain ended because the calls did; log:\n{log}");
}

#[test]
#[cfg_attr(not(all(has_kamailio, has_sipp)), ignore = "needs kamailio and sipp (scripts/install-deps.sh)")]
fn a_gateway_at_its_call_limit_answers_503_and_kamailio_fails_over() {
    let dir = tools::scratch_dir("scale_out_call_limit");
    let full = gateway(100, &dir, &[("SWITCHBOARD__CALLS__MAX_CONCURRENT", "1")]);
    let spare = gateway(101, &dir, &[]);
    let proxy = Ports::for_slot(100).peer_sip;
    let kamailio = Kamailio::start(proxy, &[&full, &spare], &dir);
    let ports = Ports::for_slot(100);

    // Fill the limited gateway: round-robin gives it one of two consecutive calls.
    let mut long_calls = Vec::new();
    for attempt in 0..2u16 {
        let caller = Caller {
            proxy_port: proxy,
            sip_port: proxy + 4 + 2 * attempt,
            media_port: ports.peer_media + 50 + 20 * attempt,
            tcp: false,
        };
        let before = calls_active(&full) + calls_active(&spare);
        long_calls.push(caller.start_call(&format!("long_call_{attempt}"), &dir, 6000));
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls_active(&full) + calls_active(&spare) == before {
            assert!(Instant::now() < deadline, "long call {attempt} not up");
            std::thread::sleep(Duration::from_millis(50));
        }
        if calls_active(&full) == 1 {
            break;
        }
    }
    assert_eq!(calls_active(&full), 1, "the limited gateway holds its one call");

    // Three more calls, one at a time: at least one is sent to the full gateway first.
    let caller = Caller { proxy_port: proxy, sip_port: proxy + 2, media_port: ports.peer_media, tcp: false };
    let spare_before = completed(&spare);
    for n in 0..3 {
        let out = caller.calls(&format!("over_limit_{n}"), &dir, 1, 200);
        assert!(out.status.success(), "call {n} must succeed through failover; log:\n{}", kamailio.log());
    }
    assert_eq!(completed(&spare) - spare_before, 3, "the spare gateway took every new call");
    let refused = counter(&full.metrics(), "switchboard_calls_total", "reason=\"overloaded\"");
    assert!(refused >= 1, "the full gateway answered 503 at least once: {refused}");
    assert!(
        kamailio.log().contains(&format!("gateway sip:127.0.0.1:{} failed the call (503)", full.ports.sip)),
        "Kamailio's failure_route saw the 503; log:\n{}",
        kamailio.log()
    );
    for mut call in long_calls {
        let status = call.wait_timeout(Duration::from_secs(15)).expect("long call ends");
        assert!(status.success(), "the long calls complete");
    }
}

#[test]
#[cfg_attr(not(all(has_kamailio, has_sipp)), ignore = "needs kamailio and sipp (scripts/install-deps.sh)")]
fn the_gateways_bye_reaches_the_caller_through_kamailio() {
    let dir = tools::scratch_dir("scale_out_gateway_bye");
    // The gateway hangs up itself: no RTP from the caller for 1 s.
    let gw = gateway(102, &dir, &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "1")]);
    let proxy = Ports::for_slot(102).peer_sip;
    let kamailio = Kamailio::start(proxy, &[&gw], &dir);
    let media_port = Ports::for_slot(102).peer_media;
    // A UDP caller, then a TCP caller (Kamailio then puts two Record-Route entries, one per
    // transport, and the gateway's BYE must follow both).
    for (n, tcp) in [false, true].into_iter().enumerate() {
        let caller = Caller { proxy_port: proxy, sip_port: proxy + 2 + 2 * n as u16, media_port, tcp };
        let name = if tcp { "wait_bye_tcp" } else { "wait_bye_udp" };
        let output = run_bounded(
            "sipp",
            &mut caller.command("uac_wait_bye_via_proxy.xml", name, &dir, 1, 0),
            Duration::from_secs(40),
        );
        report_sipp(name, &dir, &output.status);
        assert!(
            output.status.success(),
            "{name}: the gateway's BYE must reach the caller via Kamailio; kamailio log:\n{}\ngateway log:\n{}",
            kamailio.log(),
            gw.log()
        );
        assert_eq!(counter(&gw.metrics(), "switchboard_calls_total", "reason=\"rtp_timeout\""), n as u64 + 1);
    }
}

#[test]
#[cfg_attr(not(all(has_kamailio, has_sipp)), ignore = "needs kamailio and sipp (scripts/install-deps.sh)")]
fn with_every_gateway_down_kamailio_answers_503_with_retry_after() {
    let dir = tools::scratch_dir("scale_out_all_down");
    // A gateway address where nothing listens: never answers a probe.
    let ports = Ports::for_slot(105);
    let list = dir.join("dispatcher.list");
    std::fs::write(&list, format!("1 sip:127.0.0.1:{} 0 0\n", ports.sip)).expect("write dispatcher.list");
    let kamailio = Kamailio::start_with_list(ports.peer_sip, &list, &dir);
    kamailio.wait_for_uri_state(ports.sip, 'I', Duration::from_secs(10));
    let caller =
        Caller { proxy_port: ports.peer_sip, sip_port: ports.peer_sip + 2, media_port: ports.peer_media, tcp: false };
    let output = run_bounded(
        "sipp",
        &mut caller.command("uac_refused_via_proxy.xml", "refused", &dir, 1, 0),
        Duration::from_secs(30),
    );
    report_sipp("refused", &dir, &output.status);
    assert!(output.status.success(), "503 + Retry-After from Kamailio; log:\n{}", kamailio.log());
    assert!(kamailio.log().contains("no gateway available"));
}
