//! Configuration reload (SIGHUP, `POST /v1/reload`): a call in progress keeps the snapshot it
//! started with while a new call gets the new configuration; a broken file is refused and the old
//! configuration keeps serving. Slot 92.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::procs::{Gateway, Sim, http_get, http_post, promtool_check_metrics};
use switchboard_e2e::{Ports, sipp, tools};

/// Polls the gateway's log until it contains `needle`.
fn wait_for_log(gateway: &Gateway, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !gateway.log().contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not logged within {limit:?}; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `session.instructions` of each session the simulator saw, in order.
fn instructions(sim: &Sim) -> Vec<String> {
    sim.sessions()
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|session| {
            session["events"].as_array()?.iter().find_map(|e| {
                (e["direction"] == "client" && e["event"]["type"] == "session.update")
                    .then(|| e["event"]["session"]["instructions"].as_str().unwrap_or_default().to_owned())
            })
        })
        .collect()
}

fn sighup(gateway: &Gateway) {
    let status = Command::new("kill").args(["-HUP", &gateway.guard.pid().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
}

/// One short call that hangs up itself after `pause_ms`, streaming a second of silence.
fn short_call(ports: Ports, dir: &Path, silence: &Path, pause_ms: u32) -> std::process::Output {
    sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0"),
            ("RTPMAPS", &sipp::rtpmaps("0")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&silence.display().to_string(), "0")),
        ],
        dir,
        ports,
        "15550001000",
        pause_ms,
    )
}

#[test]
#[cfg_attr(not(all(has_sipp, has_promtool)), ignore = "needs sipp and promtool (scripts/install-deps.sh)")]
fn a_call_in_progress_keeps_its_snapshot_and_a_broken_file_is_refused() {
    let ports = Ports::for_slot(92);
    let dir = tools::scratch_dir("reload_keeps_snapshots");
    let silence = dir.join("silence.ul");
    std::fs::write(&silence, vec![0xFFu8; 8000]).unwrap();
    let sim = Sim::start(ports, &[], &dir);
    // The first call sends no RTP: only `max_call_secs` (not the RTP timeout) can end it in time.
    let gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        "[agents.default]\ninstructions = \"AGENT-ONE\"\nmax_call_secs = 3\n",
        &dir,
        &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "30")],
    );
    let admin: SocketAddr = ([127, 0, 0, 1], ports.admin).into();
    let config_path = dir.join("switchboard.toml");
    let first = std::fs::read_to_string(&config_path).unwrap();

    // Call A: up under the first configuration, waiting for the gateway's BYE.
    let scenario_dir = dir.join("call_a");
    std::fs::create_dir_all(&scenario_dir).unwrap();
    let call_a = std::thread::spawn(move || {
        let started = Instant::now();
        let out = sipp::run("uac_wait_bye.xml", &[], &scenario_dir, ports, "15550001000", 0);
        (out, started.elapsed())
    });
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));

    // The new file: another agent text, no call limit, and a key that needs a restart.
    let second = first
        .replace("AGENT-ONE", "AGENT-TWO")
        .replace("max_call_secs = 3", "max_call_secs = 0")
        .replace("t1_ms = 100", "t1_ms = 200");
    std::fs::write(&config_path, &second).unwrap();
    sighup(&gateway);
    wait_for_log(&gateway, "configuration reloaded", Duration::from_secs(5));
    assert!(
        gateway.log().contains("sip.t1_ms changed: needs a restart; keeping 100"),
        "the restart-only key is named with its running value; log:\n{}",
        gateway.log()
    );

    // Call B, after the reload and while A is up (its own SIPp ports, within the slot's): the
    // new agent.
    let second_caller = Ports { peer_sip: ports.peer_sip + 2, peer_media: ports.peer_media + 50, ..ports };
    let out = short_call(second_caller, &dir, &silence, 1000);
    assert!(out.status.success(), "call B failed; log:\n{}", gateway.log());

    // Call A kept its snapshot: its 3 s limit (gone from the file) still ended it with our BYE.
    let (out, lasted) = call_a.join().expect("call A thread");
    assert!(out.status.success(), "call A got no BYE; log:\n{}", gateway.log());
    assert!(lasted < Duration::from_secs(15), "ended by max_call_secs, not the RTP timeout ({lasted:?})");
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_calls_total") && l.contains("reason=\"max_duration\"")),
        "call A ended by its own max_call_secs:\n{metrics}"
    );
    assert_eq!(instructions(&sim), ["AGENT-ONE", "AGENT-TWO"], "gateway log:\n{}", gateway.log());

    // A broken file: refused on SIGHUP and on POST /v1/reload, every problem named, the
    // running configuration kept.
    let broken = second.replace("AGENT-TWO", "AGENT-THREE") + "voice = \"robot\"\n";
    std::fs::write(&config_path, broken).unwrap();
    sighup(&gateway);
    wait_for_log(&gateway, "config reload refused", Duration::from_secs(5));
    assert!(gateway.log().contains("agents.default.voice"), "the problem is logged; log:\n{}", gateway.log());
    let (status, body) = http_post(admin, "/v1/reload", "");
    assert_eq!(status, 422, "{body}");
    let refused: Value = serde_json::from_str(&body).unwrap();
    assert!(
        refused["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap_or_default().contains("agents.default.voice")),
        "{refused}"
    );
    let (status, body) = http_get(admin, "/v1/config");
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["agents"]["default"]["instructions"], "AGENT-TWO", "the old configuration is still in effect");
    assert_eq!(shown["sip"]["t1_ms"], 100, "the restart-only key shows its running value");

    // Call C is still served, by the configuration that was running.
    let out = short_call(ports, &dir, &silence, 500);
    assert!(out.status.success(), "call C failed; log:\n{}", gateway.log());
    assert_eq!(instructions(&sim), ["AGENT-ONE", "AGENT-TWO", "AGENT-TWO"]);

    // log.level takes effect at once: at `warn`, this reload's own info line is not written.
    let quiet = second.replace("level = \"info,switchboard=debug\"", "level = \"warn\"");
    assert_ne!(quiet, second, "the generated config sets log.level");
    std::fs::write(&config_path, quiet).unwrap();
    let (status, body) = http_post(admin, "/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.log().matches("configuration reloaded").count(), 1, "log:\n{}", gateway.log());

    let metrics = gateway.metrics();
    assert!(metrics.contains("switchboard_config_reloads_total{outcome=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains("switchboard_config_reloads_total{outcome=\"refused\"} 2"), "{metrics}");
    assert!(metrics.contains("switchboard_config_last_reload_success_timestamp_seconds "), "{metrics}");
    let (passed, said) = promtool_check_metrics(&metrics, &dir);
    assert!(passed, "promtool check metrics failed:\n{said}");
    assert!(!said.contains("switchboard_config"), "promtool about the reload metrics:\n{said}");
}
