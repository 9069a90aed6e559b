//! Who may call (issue 11, docs/security.md): trunk sources with `sip.unknown_sources` reject and
//! drop, inbound digest, the User-Agent deny list, and a 2000 INVITE/s flood against the rate
//! limit while a trusted trunk's calls go on. Slots 112-115.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use switchboard_e2e::netns;
use switchboard_e2e::procs::{ChildGuard, Gateway, Sim, rss_kib, run_bounded};
use switchboard_e2e::sip_raw::{collect, status_of};
use switchboard_e2e::{Ports, tools};

/// The value of one series in a /metrics text (0 when absent: a counter nobody incremented).
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn screened(gateway: &Gateway, action: &str, reason: &str) -> u64 {
    metric(&gateway.metrics(), &format!(r#"switchboard_sip_screened_total{{action="{action}",reason="{reason}"}}"#))
}

/// SIPp arguments for one scenario from `source` (its own port `port`) against the gateway.
fn sipp_command(scenario: &str, source: &str, port: u16, ports: Ports, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sipp");
    cmd.arg(format!("127.0.0.1:{}", ports.sip))
        .arg("-sf")
        .arg(tools::scenario(scenario))
        .args(["-s", "15550001000", "-i", source, "-mi", source, "-p", &port.to_string()])
        .args(["-nostdin", "-trace_err", "-error_file"])
        .arg(dir.join(format!("{scenario}.{source}.errors.log")))
        .args(extra)
        .current_dir(dir);
    cmd
}

fn sipp(scenario: &str, source: &str, port: u16, ports: Ports, dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = sipp_command(scenario, source, port, ports, dir, extra);
    let output = run_bounded("sipp", &mut cmd, Duration::from_secs(60));
    if !output.status.success() {
        eprintln!(
            "sipp {scenario} from {source} failed ({}):\n{}\n{}\nerrors:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(dir.join(format!("{scenario}.{source}.errors.log"))).unwrap_or_default()
        );
    }
    output
}

/// A request from `source` with `user_agent`, sent raw; every datagram answered within `listen`.
fn raw_request(method: &str, source: &str, user_agent: &str, target: SocketAddr, listen: Duration) -> Vec<String> {
    let socket = UdpSocket::bind(format!("{source}:0")).expect("bind raw SIP socket");
    let local = socket.local_addr().unwrap();
    let (branch, call_id) = (format!("z9hG4bK-{method}-{}", local.port()), format!("{method}-{}", local.port()));
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n",
        ip = local.ip()
    );
    let body = if method == "INVITE" { body } else { String::new() };
    let message = format!(
        "{method} sip:15550001000@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=probe\r\nTo: <sip:15550001000@{target}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:probe@{local}>\r\nUser-Agent: {user_agent}\r\n\
         {}Content-Length: {}\r\n\r\n{body}",
        if method == "INVITE" { "Content-Type: application/sdp\r\n" } else { "" },
        body.len()
    );
    socket.send_to(message.as_bytes(), target).unwrap();
    collect(&socket, listen)
}

/// The trunk whose source is the tests' usual address; callers bound to 127.0.0.2 are unknown.
fn trunk_toml(ports: Ports, extra_sip: &str) -> String {
    format!("{extra_sip}\n[trunks.carrier]\naddress = \"127.0.0.1:{}\"\nsources = [\"127.0.0.1\"]\n", ports.peer_sip)
}

/// `sip.unknown_sources = "reject"` (the default once a trunk lists sources): an INVITE from an
/// unknown address gets 403 and nothing else (no 100 Trying, no Realtime session), while the
/// trunk's source is served; a scanner's User-Agent gets nothing even from the trunk's source.
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_unknown_source_gets_403_and_a_scanner_user_agent_gets_nothing() {
    let ports = Ports::for_slot(112);
    let dir = tools::scratch_dir("access_unknown_source_reject");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    // [sip] comes first in the generated file: the access keys are set through the environment.
    let gateway = Gateway::start(ports, &sim.url(), &trunk_toml(ports, ""), &dir);

    // uac_refused.xml (an INVITE that must get @CODE@, then its ACK), filled in.
    let scenario = std::fs::read_to_string(tools::scenario("uac_refused.xml"))
        .unwrap()
        .replace("@FORMATS@", "0")
        .replace("@RTPMAPS@", "      a=rtpmap:0 PCMU/8000")
        .replace("@CODE@", "403")
        // A refusal is stateless: a retransmitted INVITE gets a second 403 with another To tag,
        // which SIPp would take for an unexpected message. Retransmit late (a loaded machine).
        .replace("retrans=\"500\"", "retrans=\"2000\"");
    let filled = dir.join("uac_refused_403.xml");
    std::fs::write(&filled, scenario).unwrap();
    let out = run_bounded(
        "sipp",
        Command::new("sipp")
            .arg(format!("127.0.0.1:{}", ports.sip))
            .arg("-sf")
            .arg(&filled)
            .args(["-s", "15550001000", "-i", "127.0.0.2", "-mi", "127.0.0.2", "-p", &ports.peer_sip.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error"])
            .current_dir(&dir),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "no 403 for the unknown source: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        gateway.log()
    );
    // Raw: exactly one answer, the 403 (nothing before it).
    let answers = raw_request("INVITE", "127.0.0.2", "probe", gateway.sip_addr(), Duration::from_secs(1));
    // One 403, nothing else: no 100 Trying, and (stateless) no retransmission of the 403 although
    // this socket never ACKs.
    let statuses: Vec<_> = answers.iter().filter_map(|a| status_of(a)).collect();
    assert_eq!(statuses, [403], "{answers:?}");
    assert_eq!(sim.sessions().as_array().map_or(0, Vec::len), 0, "a refused caller opened a Realtime session");
    assert!(screened(&gateway, "reject", "unknown_source") >= 2, "{}", gateway.metrics());

    // The trunk's source is served (OPTIONS 200), unless its User-Agent is a scanner's.
    let ok = raw_request("OPTIONS", "127.0.0.1", "carrier-sbc/1.0", gateway.sip_addr(), Duration::from_secs(1));
    assert_eq!(ok.iter().filter_map(|a| status_of(a)).collect::<Vec<_>>(), [200], "{ok:?}");
    for (method, agent) in
        [("OPTIONS", "friendly-scanner"), ("INVITE", "sipvicious 0.3.4"), ("REGISTER", "sipcli/v1.8")]
    {
        let answers = raw_request(method, "127.0.0.1", agent, gateway.sip_addr(), Duration::from_millis(700));
        assert!(answers.is_empty(), "{agent} got an answer to {method}: {answers:?}");
    }
    assert_eq!(screened(&gateway, "drop", "user_agent"), 3);
}

/// `sip.unknown_sources = "drop"`: nothing at all goes back to an unknown address, for INVITE
/// (SIPp times out) and OPTIONS alike; the counter says what happened.
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_unknown_source_gets_no_answer_at_all_under_drop() {
    let ports = Ports::for_slot(113);
    let dir = tools::scratch_dir("access_unknown_source_drop");
    let gateway = Gateway::start_with_env(
        ports,
        "",
        &trunk_toml(ports, ""),
        &dir,
        &[("SWITCHBOARD__SIP__UNKNOWN_SOURCES", "drop")],
    );
    let out = sipp(
        "access_uac_call.xml",
        "127.0.0.2",
        ports.peer_sip,
        ports,
        &dir,
        &["-m", "1", "-timeout", "3s", "-timeout_error", "-trace_msg", "-message_file", "messages.log"],
    );
    assert!(!out.status.success(), "SIPp's call from an unknown source must fail (no answer)");
    let seen = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    assert!(!seen.contains("SIP/2.0 1") && !seen.contains("SIP/2.0 4"), "SIPp received something:\n{seen}");
    for method in ["INVITE", "OPTIONS"] {
        let answers = raw_request(method, "127.0.0.2", "probe", gateway.sip_addr(), Duration::from_millis(700));
        assert!(answers.is_empty(), "{method} from an unknown source was answered: {answers:?}");
    }
    // SIPp's INVITE and its UDP retransmissions, and the two raw requests.
    let dropped = screened(&gateway, "drop", "unknown_source");
    assert!(dropped >= 3, "{dropped} dropped\n{}", gateway.metrics());
    let ok = raw_request("OPTIONS", "127.0.0.1", "carrier-sbc/1.0", gateway.sip_addr(), Duration::from_secs(1));
    assert_eq!(ok.iter().filter_map(|a| status_of(a)).collect::<Vec<_>>(), [200], "the trunk's source is served");
}

/// A trunk with inbound credentials: SIPp's INVITE is challenged (401), re-sent with the right
/// credentials and answered by the echo agent, then hung up clean; with a wrong password the
/// re-sent INVITE is refused with 403 and no Realtime session opens.
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_digest_protected_trunk_challenges_and_takes_only_the_right_credentials() {
    let ports = Ports::for_slot(114);
    let dir = tools::scratch_dir("access_inbound_digest");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let trunk = format!("{}inbound_username = \"pbx\"\ninbound_password = \"s3cret-pw\"\n", trunk_toml(ports, ""));
    let gateway = Gateway::start(ports, &sim.url(), &trunk, &dir);

    let right = sipp(
        "access_uac_auth.xml",
        "127.0.0.1",
        ports.peer_sip,
        ports,
        &dir,
        &["-m", "1", "-d", "1000", "-au", "pbx", "-ap", "s3cret-pw", "-timeout", "20s", "-timeout_error"],
    );
    assert!(right.status.success(), "the right credentials must get the call answered; log:\n{}", gateway.log());
    assert_eq!(sim.sessions().as_array().map_or(0, Vec::len), 1, "the echo agent answered once");
    assert!(screened(&gateway, "challenge", "auth_required") >= 1, "{}", gateway.metrics());

    let wrong = sipp(
        "access_uac_auth_refused.xml",
        "127.0.0.1",
        ports.peer_sip,
        ports,
        &dir,
        &["-m", "1", "-au", "pbx", "-ap", "guess", "-timeout", "20s", "-timeout_error"],
    );
    assert!(wrong.status.success(), "a wrong password must get 401 then 403; log:\n{}", gateway.log());
    assert_eq!(sim.sessions().as_array().map_or(0, Vec::len), 1, "no session for the wrong password");
    assert!(screened(&gateway, "reject", "auth_failed") >= 1, "{}", gateway.metrics());
    assert!(!gateway.log().contains("s3cret-pw"), "the inbound password reached the log");
}

/// CPU time (user + system) of a process so far, in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// The flood (in a network namespace with only loopback): SIPp sends 2000 INVITEs/s for about
/// four seconds from one address against `invite_rate_per_source = 10` with `ban_secs = 60`,
/// while a second SIPp on the trunk's source places 20 calls at 5 per second. Every legitimate
/// call is answered and hung up clean; the flood gets 503s, opens at most its first second's
/// burst of Realtime sessions, and the gateway's memory stays bounded.
#[test]
#[cfg_attr(not(all(has_sipp, has_unshare, has_ip)), ignore = "needs sipp, unshare and ip (scripts/install-deps.sh)")]
fn a_2000_invites_per_second_flood_leaves_the_trunks_calls_unaffected() {
    if !netns::enter_loopback_namespace(
        "a_2000_invites_per_second_flood_leaves_the_trunks_calls_unaffected",
        Duration::from_secs(120),
    ) {
        return;
    }
    let ports = Ports::for_slot(115);
    let dir = tools::scratch_dir("access_flood");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        &trunk_toml(ports, ""),
        &dir,
        &[
            ("SWITCHBOARD__SIP__UNKNOWN_SOURCES", "allow"),
            ("SWITCHBOARD__SIP__INVITE_RATE_PER_SOURCE", "10"),
            ("SWITCHBOARD__SIP__BAN_SECS", "60"),
            ("SWITCHBOARD__SIP__MAX_CPS", "100"),
            ("SWITCHBOARD__LOG__LEVEL", "info"),
        ],
    );
    let pid = gateway.guard.pid();
    let rss_before = rss_kib(pid).unwrap_or(0);
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();

    let flood_count = 8000;
    let mut flood = ChildGuard::spawn(
        "sipp flood",
        sipp_command(
            "access_flood.xml",
            "127.0.0.2",
            ports.peer_sip + 1,
            ports,
            &dir,
            &[
                "-r",
                "2000",
                "-m",
                &flood_count.to_string(),
                "-l",
                "4000",
                "-timeout",
                "30s",
                "-recv_timeout",
                "4000",
                "-mp",
                &(ports.peer_media + 50).to_string(),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()),
    );
    // The legitimate calls start once the flood is under way.
    std::thread::sleep(Duration::from_millis(500));
    let legit = std::thread::spawn({
        let dir = dir.clone();
        move || {
            sipp(
                "access_uac_call.xml",
                "127.0.0.1",
                ports.peer_sip,
                ports,
                &dir,
                &[
                    "-r",
                    "5",
                    "-m",
                    "20",
                    "-d",
                    "1000",
                    "-mp",
                    &ports.peer_media.to_string(),
                    "-timeout",
                    "40s",
                    "-timeout_error",
                ],
            )
        }
    });
    let mut rss_peak = 0;
    while flood.wait_timeout(Duration::from_millis(200)).is_none() && started.elapsed() < Duration::from_secs(40) {
        rss_peak = rss_peak.max(rss_kib(pid).unwrap_or(0));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let legit = legit.join().unwrap();
    let cpu_secs = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_kib(pid).unwrap_or(0);

    let metrics = gateway.metrics();
    let invites = metric(&metrics, r#"switchboard_sip_requests_total{method="INVITE"}"#);
    let limited = metric(&metrics, r#"switchboard_sip_screened_total{action="reject",reason="source_rate_limited"}"#);
    let banned = metric(&metrics, r#"switchboard_sip_screened_total{action="reject",reason="source_banned"}"#);
    let sessions = sim.sessions().as_array().map_or(0, Vec::len);
    eprintln!(
        "flood: {invites} INVITEs received in {flood_secs:.1} s ({:.0}/s), {limited} rate-limited + {banned} banned \
         (503), {sessions} Realtime sessions; gateway RSS {rss_before} KiB before, {rss_peak} KiB peak, {rss_after} \
         KiB after; gateway CPU {cpu_secs:.2} s",
        invites as f64 / flood_secs
    );
    assert!(legit.status.success(), "a legitimate call failed during the flood; log:\n{}", gateway.log());
    // How much of the offered 2000/s SIPp manages depends on the machine's load (on the shared
    // 2-core build machine 700-2000/s); the flood must have arrived in earnest all the same.
    assert!(invites >= 2000, "the flood did not arrive: {invites} INVITEs\n{metrics}");
    assert_eq!(limited, 1, "one INVITE over the rate, then the ban: {metrics}");
    // Everything else the flood sent was refused for the ban: all but the 20 legitimate calls,
    // the flood's first 10 and the one over the rate (and a few retransmissions of the calls).
    assert!(invites.saturating_sub(banned) <= 20 + 10 + 1 + 10, "{banned} banned of {invites}");
    assert!(sessions <= 20 + 10 + 1, "{sessions} sessions: the flood got more than its first second's burst");
    assert!(sessions >= 20, "{sessions} sessions: every legitimate call gets one");
    // 20 calls alone take the gateway from about 10 to 12.6 MB; the refused flood adds no state
    // (stateless 503s), so the peak stays near that (13.3 MB measured; 51 MB when every 503 kept
    // a transaction until Timer I would not pass).
    assert!(rss_peak < rss_before + 16 * 1024, "RSS grew from {rss_before} to {rss_peak} KiB");
}
