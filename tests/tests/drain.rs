//! Drain on SIGTERM: the gateway stops taking calls (OPTIONS and INVITE 503 with Retry-After,
//! `/readyz` 503) while the calls in progress go on until they end or `calls.drain_secs` passes,
//! then hangs up what is left with BYE and exits 0 with its records written; a second SIGTERM
//! hangs up at once. Slot 94, one test at a time ([`SLOT`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use switchboard_e2e::procs::{Gateway, Sim, http_get};
use switchboard_e2e::{Ports, sip_raw, sipp, tools};

/// Both tests use slot 94's ports: they take turns.
static SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn wait_for_log(gateway: &Gateway, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !gateway.log().contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not logged within {limit:?}; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(gateway: &Gateway) {
    let status = Command::new("kill").args(["-TERM", &gateway.guard.pid().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
}

/// Waits for the gateway process to exit by itself.
fn exit_status(gateway: &mut Gateway, limit: Duration) -> ExitStatus {
    gateway.guard.wait_timeout(limit).unwrap_or_else(|| panic!("gateway still running after {limit:?}"))
}

fn config(dir: &Path, drain_secs: u32) -> String {
    format!("[calls]\ndrain_secs = {drain_secs}\n[cdr]\npath = \"{}\"\n", dir.join("cdr.jsonl").display())
}

fn cdr_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("cdr.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn raw_request(gateway: &Gateway, method: &str, body: &str) -> Vec<String> {
    let content_type = if body.is_empty() { "" } else { "Content-Type: application/sdp\n" };
    let message = format!(
        "{method} sip:15550001000@127.0.0.1:{sip} SIP/2.0\nVia: SIP/2.0/UDP LOCAL;branch=z9hG4bK-drain-{method}\n\
         Max-Forwards: 70\nFrom: <sip:probe@LOCAL>;tag=drain\nTo: <sip:15550001000@127.0.0.1:{sip}>\n\
         Call-ID: drain-{method}@test\nCSeq: 1 {method}\nContact: <sip:probe@LOCAL>\n{content_type}\
         Content-Length: {}\n\n{body}",
        body.len(),
        sip = gateway.ports.sip,
    );
    sip_raw::exchange(gateway.sip_addr(), &message, Duration::from_millis(1500))
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// A call that hangs up itself after `pause_ms`, streaming `media` (raw PCMU).
fn caller_hangs_up(
    ports: Ports,
    dir: &Path,
    media: &Path,
    pause_ms: u32,
) -> std::thread::JoinHandle<std::process::Output> {
    let (dir, media) = (dir.to_path_buf(), media.display().to_string());
    std::thread::spawn(move || {
        sipp::run(
            "uac_call.xml",
            &[
                ("FORMATS", "0"),
                ("RTPMAPS", &sipp::rtpmaps("0")),
                ("EXPECT_PT", "0"),
                ("MEDIA", &sipp::rtp_stream(&media, "0")),
            ],
            &dir,
            ports,
            "15550001000",
            pause_ms,
        )
    })
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn sigterm_refuses_new_calls_while_the_call_in_progress_completes() {
    let _slot = SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ports = Ports::for_slot(94);
    let dir = tools::scratch_dir("drain_completes");
    let media = dir.join("silence.ul");
    std::fs::write(&media, vec![0xFFu8; 8000 * 5]).unwrap();
    let sim = Sim::start(ports, &[], &dir);
    let mut gateway = Gateway::start(ports, &sim.url(), &config(&dir, 30), &dir);
    let admin: SocketAddr = ([127, 0, 0, 1], ports.admin).into();

    let caller = caller_hangs_up(ports, &dir, &media, 4000);
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));
    sigterm(&gateway);
    wait_for_log(&gateway, "draining: taking no new calls", Duration::from_secs(5));

    // Draining: a load balancer is steered away, new calls are refused with Retry-After.
    let options = raw_request(&gateway, "OPTIONS", "");
    assert_eq!(sip_raw::final_status(&options), Some(503), "{options:?}");
    let invite = raw_request(&gateway, "INVITE", OFFER);
    assert_eq!(sip_raw::final_status(&invite), Some(503), "{invite:?}");
    let refusal = invite.iter().find(|a| sip_raw::status_of(a) == Some(503)).unwrap();
    assert!(sip_raw::header(refusal, "Retry-After").is_some(), "{refusal}");
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");

    // The call in progress goes on and ends normally: the caller's BYE is answered 200.
    let out = caller.join().expect("caller thread");
    assert!(out.status.success(), "the call in progress did not complete; log:\n{}", gateway.log());
    let status = exit_status(&mut gateway, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "gateway exit; log:\n{}", gateway.log());
    let cdrs = cdr_lines(&dir);
    assert!(
        cdrs.iter().any(|c| c["outcome"] == "completed" && c["reason"] == "caller_bye"),
        "the drained call's CDR is written: {cdrs:?}"
    );
}

/// A call that waits for the gateway's BYE (answering it 200).
fn caller_waits_for_bye(ports: Ports, dir: &Path) -> std::thread::JoinHandle<std::process::Output> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0))
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn the_drain_deadline_and_a_second_sigterm_hang_up_with_bye() {
    let _slot = SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ports = Ports::for_slot(94);

    // drain_secs = 2: the call (which would last) is hung up with BYE at the deadline.
    let dir = tools::scratch_dir("drain_deadline");
    let sim = Sim::start(ports, &[], &dir);
    let mut gateway = Gateway::start(ports, &sim.url(), &config(&dir, 2), &dir);
    let caller = caller_waits_for_bye(ports, &dir);
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));
    let signalled = Instant::now();
    sigterm(&gateway);
    let out = caller.join().expect("caller thread");
    let hung_up_after = signalled.elapsed();
    assert!(out.status.success(), "no BYE at the drain deadline; log:\n{}", gateway.log());
    assert!(hung_up_after >= Duration::from_millis(1500), "hung up before the deadline ({hung_up_after:?})");
    assert!(hung_up_after < Duration::from_secs(10), "hung up long after the deadline ({hung_up_after:?})");
    let status = exit_status(&mut gateway, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "gateway exit; log:\n{}", gateway.log());
    assert_eq!(cdr_lines(&dir).len(), 1, "the call's CDR is written");
    drop(gateway);
    drop(sim);

    // drain_secs = 30 and a second SIGTERM during the drain: hung up at once.
    let dir = tools::scratch_dir("drain_second_sigterm");
    let sim = Sim::start(ports, &[], &dir);
    let mut gateway = Gateway::start(ports, &sim.url(), &config(&dir, 30), &dir);
    let caller = caller_waits_for_bye(ports, &dir);
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));
    sigterm(&gateway);
    wait_for_log(&gateway, "draining: taking no new calls", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert!(gateway.guard.child.try_wait().unwrap().is_none(), "still draining after one SIGTERM");
    let second = Instant::now();
    sigterm(&gateway);
    let out = caller.join().expect("caller thread");
    assert!(out.status.success(), "no BYE after the second SIGTERM; log:\n{}", gateway.log());
    assert!(second.elapsed() < Duration::from_secs(5), "hung up at once, not at the deadline ({:?})", second.elapsed());
    let status = exit_status(&mut gateway, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "gateway exit; log:\n{}", gateway.log());
    assert_eq!(cdr_lines(&dir).len(), 1, "the call's CDR is written");
}
