//! The operator's transfer (`POST /v1/calls/{id}/transfer`): a live call handed to one of its
//! agent's queues by REFER, through the same machinery as the model's `transfer_to_human`, with
//! its outcome in the metrics, the CDR and `GET /v1/calls/{id}`. Slot 93. (Hang-up by `DELETE /v1/calls/{id}` of
//! inbound and outbound calls is shown in tests/tests/outbound.rs.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::procs::{Gateway, Sim, http_get, http_post};
use switchboard_e2e::{Ports, sipp, tools};

/// A SIPp caller sending 15 s of silence (PCMU) that answers the gateway's REFER to `target` as
/// `scenario` says, and hangs up after `pause_ms`; its output once it ends.
fn refer_caller(
    scenario: &'static str,
    dir: &Path,
    ports: Ports,
    target: &'static str,
    pause_ms: u32,
) -> std::thread::JoinHandle<Output> {
    let silence = dir.join("silence.ul");
    std::fs::write(&silence, vec![0xFF_u8; 8000 * 15]).unwrap();
    let dir = dir.to_path_buf();
    let media = sipp::rtp_stream(&silence.display().to_string(), "0");
    std::thread::spawn(move || {
        sipp::run(
            scenario,
            &[
                ("FORMATS", "0 101"),
                ("RTPMAPS", &sipp::rtpmaps("0 101")),
                ("EXPECT_PT", "0"),
                ("MEDIA", &media),
                ("TARGET", target),
            ],
            &dir,
            ports,
            "15550001000",
            pause_ms,
        )
    })
}

fn wait_for_log(gateway: &Gateway, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !gateway.log().contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not logged within {limit:?}; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both tests use slot 93's ports: they take turns.
static SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_operator_transfers_a_live_call_to_a_queue_by_refer() {
    let _slot = SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ports = Ports::for_slot(93);
    let dir = tools::scratch_dir("operator_transfer_by_refer");
    let target = "sip:sales@127.0.0.1:5999";
    let sim = Sim::start(ports, &["--behaviour", "tone:440:1500"], &dir);
    let extra = format!(
        "[cdr]\npath = \"{cdr}\"\n[agents.default.transfer]\nannounce = \"Please hold.\"\nrefer_timeout_secs = 10\n\
         [agents.default.transfer.queues]\nsales = \"{target}\"\n",
        cdr = dir.join("cdr.jsonl").display()
    );
    let gateway = Gateway::start(ports, &sim.url(), &extra, &dir);
    let admin: SocketAddr = ([127, 0, 0, 1], ports.admin).into();

    let caller = refer_caller("uac_refer_operator.xml", &dir, ports, target, 0);
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));
    let (status, body) = http_get(admin, "/v1/calls");
    assert_eq!(status, 200, "{body}");
    let calls: Value = serde_json::from_str(&body).unwrap();
    let id = calls["calls"][0]["id"].as_str().expect("the call is listed").to_owned();
    let path = format!("/v1/calls/{id}/transfer");

    // A URI or an unknown name is no queue: refused, the valid ones listed, nothing dialled.
    let (status, body) = http_post(admin, &path, &format!(r#"{{"queue": "{target}"}}"#));
    assert_eq!(status, 422, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["valid"], serde_json::json!(["sales"]));

    let (status, body) = http_post(admin, &path, r#"{"queue": "sales"}"#);
    assert_eq!(status, 202, "{body}; log:\n{}", gateway.log());
    // The announcement (1.5 s) is playing: one transfer at a time.
    let (status, body) = http_post(admin, &path, r#"{"queue": "sales"}"#);
    assert_eq!(status, 409, "{body}");

    // The caller's phone accepts the REFER (reason "operator"), reports 200 by NOTIFY, and our
    // BYE ends our leg.
    let out = caller.join().expect("sipp thread");
    assert!(out.status.success(), "the REFER or the BYE did not come as expected; log:\n{}", gateway.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    let cdr = loop {
        let text = std::fs::read_to_string(dir.join("cdr.jsonl")).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no CDR; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cdr["reason"], "transferred", "{cdr}");
    assert_eq!(cdr["transfers"]["count"], 1, "{cdr}");
    assert!(cdr["transfers"]["last_outcome"].as_str().unwrap_or_default().contains("transferred"), "{cdr}");
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_transfers_total")
            && l.contains("method=\"refer\"")
            && l.contains("outcome=\"transferred\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    // The model was told to announce, never asked to choose the queue: no tool call involved.
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().unwrap();
    let told = events
        .iter()
        .position(|e| {
            e["event"]["type"] == "conversation.item.create"
                && e["event"]["item"]["role"] == "system"
                && e["event"]["item"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("An operator is transferring"))
        })
        .expect("the agent is told an operator transfers the call");
    let announced = events
        .iter()
        .position(|e| e["event"]["type"] == "response.create" && e["event"]["event_id"] == "evt_announce")
        .expect("the announcement is asked for");
    assert!(told < announced, "told before the announcement");
    assert!(!events.iter().any(|e| e["event"]["item"]["type"] == "function_call_output"));
}

/// A refused operator transfer goes back to the agent (`on_failure = "agent"`): the call stays
/// up, `GET /v1/calls/{id}` shows the outcome, the agent is told, the caller hangs up later.
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_refused_operator_transfer_goes_back_to_the_agent_and_shows_in_the_api() {
    let _slot = SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ports = Ports::for_slot(93);
    let dir = tools::scratch_dir("operator_transfer_refused");
    let target = "sip:sales@127.0.0.1:5999";
    let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
    let extra = format!(
        "[agents.default.transfer]\non_failure = \"agent\"\nrefer_timeout_secs = 10\n\
         [agents.default.transfer.queues]\nsales = \"{target}\"\n"
    );
    let gateway = Gateway::start(ports, &sim.url(), &extra, &dir);
    let admin: SocketAddr = ([127, 0, 0, 1], ports.admin).into();
    let caller = refer_caller("uac_refer_operator_decline.xml", &dir, ports, target, 3000);
    wait_for_log(&gateway, "ACK received", Duration::from_secs(10));
    let (_, body) = http_get(admin, "/v1/calls");
    let calls: Value = serde_json::from_str(&body).unwrap();
    let id = calls["calls"][0]["id"].as_str().expect("the call is listed").to_owned();
    let (status, body) = http_post(admin, &format!("/v1/calls/{id}/transfer"), r#"{"queue": "sales"}"#);
    assert_eq!(status, 202, "{body}");

    // The 603 comes back: the call is still up, with the outcome.
    let deadline = Instant::now() + Duration::from_secs(5);
    let shown = loop {
        let (status, body) = http_get(admin, &format!("/v1/calls/{id}"));
        assert_eq!(status, 200, "the call is still up: {body}");
        let shown: Value = serde_json::from_str(&body).unwrap();
        if !shown["transfer"].is_null() {
            break shown;
        }
        assert!(Instant::now() < deadline, "no transfer outcome shown; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(shown["transfer"]["queue"], "sales", "{shown}");
    assert_eq!(shown["transfer"]["method"], "refer", "{shown}");
    assert_eq!(shown["transfer"]["reason"], "operator", "{shown}");
    assert!(shown["transfer"]["outcome"].as_str().unwrap_or_default().contains("603"), "{shown}");
    assert_eq!(shown["state"], "answered");

    let out = caller.join().expect("sipp thread");
    assert!(out.status.success(), "the caller's call did not go on to its own BYE; log:\n{}", gateway.log());
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["event"]["type"] == "conversation.item.create"
            && e["event"]["item"]["content"][0]["text"].as_str().is_some_and(|t| t.contains("being transferred"))),
        "the agent is told the transfer failed"
    );
}
