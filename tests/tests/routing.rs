//! Routes and agents (issue 9): SIPp calls to a release gateway with a `[[routes]]` table reach
//! the agent of their dialled number, with the agent's placeholders filled from the call (the
//! simulator is the judge: it saw each session's instructions); reject routes answer their codes,
//! an unmatched number 404; and `switchboard route` on the same file answers what the gateway did.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchboard_e2e::procs::{Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, sipp, tools};

/// Two agents, two reject routes, no catch-all. The sales agent shows a captured header and one
/// that is not captured (it must render empty).
const ROUTES: &str = r#"
[routing]
headers = ["X-Customer-Id"]

[[routes]]
name = "busy-line"
dialled = "15550009999"
reject = 486

[[routes]]
name = "premium"
dialled = "1900*"
reject = 603

[[routes]]
name = "sales"
dialled = "+15550001000"
agent = "sales"

[[routes]]
name = "support"
dialled = "/1555000200[0-9]/"
agent = "support"

[agents.sales]
instructions = "Sales desk. Caller {caller} dialled {dialled}; customer {header.X-Customer-Id}; secret [{header.X-Secret}]."

[agents.support]
instructions = "Support desk ({agent}). Caller {caller} dialled {dialled} on call {call_id}."
"#;

/// The instructions of every `session.update` the simulator received, in order.
fn session_instructions(sim: &Sim) -> Vec<String> {
    let sessions = sim.sessions();
    sessions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|session| {
            session["events"].as_array()?.iter().find_map(|e| {
                (e["direction"] == "client" && e["event"]["type"] == "session.update")
                    .then(|| e["event"]["session"]["instructions"].as_str().unwrap_or_default().to_string())
            })
        })
        .collect()
}

/// `switchboard route` on `config` for one call; its printed answer.
fn route_command(config: &Path, to: &str, from: &str) -> String {
    let out = run_bounded(
        "switchboard route",
        Command::new(tools::gateway_binary()).arg("route").arg("--config").arg(config).args([
            "--to",
            to,
            "--from",
            from,
            "--source",
            "127.0.0.1",
        ]),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "switchboard route failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn dialled_numbers_reach_their_agents_and_reject_routes_answer_their_codes() {
    let ports = Ports::for_slot(62);
    let dir = tools::scratch_dir("dialled_numbers_reach_their_agents");
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), ROUTES, &dir);
    let config = dir.join("switchboard.toml");

    // What the gateway did with each call, in the words `switchboard route` uses.
    let mut gateway_did: Vec<(&str, &str, String)> = Vec::new();

    for (dialled, caller, customer) in [("15550001000", "+15551110001", "C-42"), ("15550002003", "+15551110002", "C-7")]
    {
        let before = session_instructions(&sim).len();
        let out =
            sipp::run("uac_routed.xml", &[("CALLER", caller), ("CUSTOMER", customer)], &dir, ports, dialled, 1000);
        assert!(out.status.success(), "call to {dialled} failed; gateway log:\n{}", gateway.log());
        let instructions = session_instructions(&sim);
        assert_eq!(instructions.len(), before + 1, "one session per answered call: {instructions:?}");
        let seen = &instructions[before];
        let agent = if seen.starts_with("Sales desk.") {
            // The captured header is there, the other one (X-Secret, sent too) is not.
            assert_eq!(
                seen,
                &format!("Sales desk. Caller {caller} dialled {dialled}; customer {customer}; secret []."),
                "placeholders not filled"
            );
            "route sales: agent sales"
        } else {
            let prefix = format!("Support desk (support). Caller {caller} dialled {dialled} on call ");
            let call_id = seen.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix('.'));
            assert!(call_id.is_some_and(|id| !id.is_empty() && !id.contains('{')), "placeholders not filled: {seen}");
            "route support: agent support"
        };
        gateway_did.push((dialled, caller, agent.to_string()));
    }
    assert_eq!(gateway_did[0].2, "route sales: agent sales", "15550001000 is the sales number");
    assert_eq!(gateway_did[1].2, "route support: agent support", "15550002003 matches the support pattern");

    for (dialled, code, answer) in [
        ("15550009999", "486", "route busy-line: reject 486 Busy Here"),
        ("19005550123", "603", "route premium: reject 603 Decline"),
        ("4711", "404", "no route matches: reject 404 Not Found"),
    ] {
        let out = sipp::run(
            "uac_refused.xml",
            &[("FORMATS", "0"), ("RTPMAPS", &sipp::rtpmaps("0")), ("CODE", code)],
            &dir,
            ports,
            dialled,
            0,
        );
        assert!(out.status.success(), "{dialled}: expected {code}; gateway log:\n{}", gateway.log());
        gateway_did.push((dialled, "sipp", answer.to_string()));
    }
    assert_eq!(session_instructions(&sim).len(), 2, "a refused call opens no Realtime session");

    let metrics = gateway.metrics();
    for line in [
        r#"switchboard_route_decisions_total{route="sales",outcome="agent"} 1"#,
        r#"switchboard_route_decisions_total{route="support",outcome="agent"} 1"#,
        r#"switchboard_route_decisions_total{route="busy-line",outcome="reject"} 1"#,
        r#"switchboard_route_decisions_total{route="none",outcome="no_match"} 1"#,
        r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="rejected_by_route"} 2"#,
        r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="no_route"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    // The operator's command agrees with the gateway, call by call.
    for (dialled, caller, did) in &gateway_did {
        assert_eq!(&route_command(&config, dialled, caller), did, "switchboard route --to {dialled}");
    }
}

#[test]
fn the_route_command_reads_hours_and_lists_config_problems() {
    let dir = tools::scratch_dir("the_route_command_reads_hours");
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).expect("agents dir");
    std::fs::write(agents.join("support.toml"), "instructions = \"Support for {caller}.\"\n").expect("agent file");
    std::fs::write(agents.join("after-hours.toml"), "greeting = \"We are closed.\"\n").expect("agent file");
    let config = dir.join("hours.toml");
    std::fs::write(
        &config,
        "agents_dir = \"agents\"\n[routing]\ntime_zone = \"Europe/Berlin\"\n\
         [[routes]]\nname = \"closed\"\ndialled = \"1555*\"\nhours = \"mon-fri 00:00-08:00, mon-fri 18:00-24:00, sat-sun\"\n\
         agent = \"after-hours\"\n\
         [[routes]]\nname = \"open\"\ndialled = \"1555*\"\nagent = \"support\"\n",
    )
    .expect("config");
    let at = |time: &str| {
        let out = run_bounded(
            "switchboard route",
            Command::new(tools::gateway_binary()).arg("route").arg("--config").arg(&config).args([
                "--to",
                "15550001000",
                "--at",
                time,
            ]),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Wednesday 2026-12-02: 08:30 in Berlin is 07:30 UTC.
    assert_eq!(at("2026-12-02T07:30:00Z"), "route open: agent support");
    assert_eq!(at("2026-12-02T08:30:00+01:00"), "route open: agent support");
    assert_eq!(at("2026-12-02T06:30:00Z"), "route closed: agent after-hours");
    assert_eq!(at("2026-12-05T12:00:00Z"), "route closed: agent after-hours", "a Saturday");

    std::fs::write(agents.join("support.toml"), "voice = \"robot\"\n").expect("agent file");
    std::fs::write(
        &config,
        "agents_dir = \"agents\"\n[[routes]]\ndialled = \"1\"\nreject = 500\n[[routes]]\ndialled = \"2\"\nagent = \"nobody\"\n",
    )
    .expect("config");
    let out = run_bounded(
        "switchboard route",
        Command::new(tools::gateway_binary()).arg("route").arg("--config").arg(&config).args(["--to", "1"]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "a broken configuration must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["routes[0].reject", "routes[1].agent", "support.toml: voice"] {
        assert!(stderr.contains(expected), "missing {expected} in:\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "no decision is printed for a broken configuration");
}
