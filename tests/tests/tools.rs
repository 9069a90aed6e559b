//! Webhook tools end to end (issue 9, "Tools"): a SIPp caller, the simulator scripted to call a
//! function, and a webhook served by this test process on loopback. Slots 66-68.
//!
//! - 66: the webhook receives the signed call (HMAC checked with the documented recipe), its
//!   answer reaches the model as the `function_call_output` for that `call_id`, then
//!   `response.create`.
//! - 67: a webhook slower than `timeout_ms` gives an error output and the call goes on.
//! - 68: while a slow webhook runs the caller hears the filler (660 Hz in the RTP it received);
//!   MCP servers in the agent's config reach the session as `mcp` tools, their events are
//!   counted in /metrics, and an approval the server asks for is granted by `allowed_tools`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_e2e::audio;
use switchboard_e2e::pcap;
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, sipp, tools};

/// One request the webhook received.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A webhook on an ephemeral loopback port: answers every POST with `answer` after `delay`
/// (in a thread per connection, so a slow answer never holds the next request). Returns its
/// URL and the requests as they arrive. The listener thread ends with the test process.
fn webhook(answer: &'static str, delay: Duration) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
    let url = format!("http://{}/hooks/tool", listener.local_addr().expect("webhook address"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve_one(stream, answer, delay, &tx));
        }
    });
    (url, rx)
}

fn serve_one(stream: TcpStream, answer: &str, delay: Duration, tx: &mpsc::Sender<Received>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || !request_line.starts_with("POST /hooks/tool ") {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let _ = tx.send(Received { headers, body });
    std::thread::sleep(delay);
    let mut stream = stream;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// The documented receiver's check: `sha256=` hex of HMAC-SHA256(secret, "<ts>.<body>").
fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn silence(dir: &Path, ms: usize) -> String {
    let path = dir.join("silence.ul");
    std::fs::write(&path, vec![0xFFu8; ms * 8]).expect("write silence");
    path.display().to_string()
}

fn wait_for_ack(gateway: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.log().contains("ACK received") {
        assert!(Instant::now() < deadline, "the call did not come up; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PCMU call from SIPp that plays silence and hangs up after `call_ms`.
fn start_call(ports: Ports, dir: &Path, call_ms: u32) -> std::thread::JoinHandle<std::process::Output> {
    let media = sipp::rtp_stream(&silence(dir, call_ms as usize + 2000), "0");
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let formats = "0 101";
        let rtpmaps = sipp::rtpmaps(formats);
        sipp::run(
            "uac_call.xml",
            &[("FORMATS", formats), ("RTPMAPS", &rtpmaps), ("EXPECT_PT", "0"), ("MEDIA", &media)],
            &dir,
            ports,
            "15550001000",
            call_ms,
        )
    })
}

/// Every event of the first session, `(direction, event)`, in order.
fn session_events(sim: &Sim) -> Vec<(String, Value)> {
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events").clone();
    events.into_iter().map(|e| (e["direction"].as_str().unwrap_or_default().to_owned(), e["event"].clone())).collect()
}

/// The `call_id` of the function call the simulator made.
fn simulated_call_id(events: &[(String, Value)]) -> String {
    events
        .iter()
        .find(|(d, e)| d == "server" && e["type"] == "response.function_call_arguments.done")
        .and_then(|(_, e)| e["call_id"].as_str())
        .expect("the simulator called the function")
        .to_owned()
}

/// The `function_call_output` the gateway sent for `call_id`, and whether a `response.create`
/// follows it.
fn output_for(events: &[(String, Value)], call_id: &str) -> (String, bool) {
    let at = events
        .iter()
        .position(|(d, e)| {
            d == "client"
                && e["type"] == "conversation.item.create"
                && e["item"]["type"] == "function_call_output"
                && e["item"]["call_id"] == call_id
        })
        .expect("a function_call_output for the call");
    let output = events[at].1["item"]["output"].as_str().unwrap_or_default().to_owned();
    let create_follows = events[at..].iter().any(|(d, e)| d == "client" && e["type"] == "response.create");
    let outputs = events
        .iter()
        .filter(|(d, e)| {
            d == "client" && e["item"]["type"] == "function_call_output" && e["item"]["call_id"] == call_id
        })
        .count();
    assert_eq!(outputs, 1, "exactly one output per call_id");
    (output, create_follows)
}

fn tool_toml(url: &str, timeout_ms: u32, extra: &str) -> String {
    format!(
        "[agents.default]\ngreeting = \"\"\n{extra}\n\
         [agents.default.tools.lookup_order]\n\
         description = \"Look up an order by its number.\"\n\
         parameters = '{{\"type\":\"object\",\"properties\":{{\"order\":{{\"type\":\"string\"}}}},\"required\":[\"order\"]}}'\n\
         url = \"{url}\"\ntimeout_ms = {timeout_ms}\nsecret_env = \"TOOL_SECRET\"\n"
    )
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_signed_webhook_answers_the_model_with_its_output_then_a_response() {
    let ports = Ports::for_slot(66);
    let dir = tools::scratch_dir("tools_signed_webhook");
    let (url, requests) = webhook(r#"{"status":"shipped","eta":"tomorrow"}"#, Duration::ZERO);
    let sim = Sim::start(ports, &[], &dir);
    let gateway =
        Gateway::start_with_env(ports, &sim.url(), &tool_toml(&url, 3000, ""), &dir, &[("TOOL_SECRET", "s3cret")]);
    let caller = start_call(ports, &dir, 3000);
    wait_for_ack(&gateway);
    std::thread::sleep(Duration::from_millis(300));
    sim.control("call_tool", r#"{"name":"lookup_order","arguments":"{\"order\":\"A-17\"}","say_ms":0,"now":true}"#);
    let request = requests
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("the webhook was not called; log:\n{}", gateway.log()));
    let out = caller.join().expect("sipp thread");
    assert!(out.status.success(), "the call failed; log:\n{}", gateway.log());

    // The signature, checked as a receiver would.
    let timestamp = request.header("X-Switchboard-Timestamp").expect("timestamp header");
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let sent_at: u64 = timestamp.parse().expect("unix seconds");
    assert!(unix_now.abs_diff(sent_at) <= 30, "a fresh timestamp ({sent_at} vs {unix_now})");
    assert_eq!(request.header("X-Switchboard-Signature"), Some(signature("s3cret", timestamp, &request.body).as_str()));
    assert_ne!(request.header("X-Switchboard-Signature"), Some(signature("other", timestamp, &request.body).as_str()));
    assert_eq!(request.header("Content-Type"), Some("application/json"));

    // The body's fields.
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    let events = session_events(&sim);
    let call_id = simulated_call_id(&events);
    assert_eq!(body["call_id"], call_id.as_str());
    assert_eq!(body["tool"], "lookup_order");
    assert_eq!(body["arguments"], json!({"order": "A-17"}), "the arguments as JSON, not a string");
    assert_eq!(body["call"]["to"], "15550001000");
    assert!(body["call"]["from"].as_str().is_some_and(|f| f.contains("sipp")), "{body}");
    assert_eq!(body["call"]["agent"], "default");
    assert_eq!(body["call"]["direction"], "inbound");
    assert!(body["call"]["id"].as_str().is_some_and(|id| !id.is_empty()));

    // The answer reached the model, then the request for a response.
    let (output, create_follows) = output_for(&events, &call_id);
    assert_eq!(output, r#"{"status":"shipped","eta":"tomorrow"}"#);
    assert!(create_follows, "response.create after the output");
    let session_update = events.iter().find(|(d, e)| d == "client" && e["type"] == "session.update").expect("update");
    let declared = session_update.1["session"]["tools"].as_array().expect("tools").clone();
    assert!(
        declared.iter().any(|t| t["name"] == "lookup_order" && t["parameters"]["required"][0] == "order"),
        "{declared:?}"
    );
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_tool_calls_total")
            && l.contains("tool=\"lookup_order\"")
            && l.contains("status=\"ok\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(gateway.log().contains("tool call done"));
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_webhook_slower_than_its_timeout_gives_an_error_output_and_the_call_goes_on() {
    let ports = Ports::for_slot(67);
    let dir = tools::scratch_dir("tools_webhook_timeout");
    let (url, requests) = webhook(r#"{"late":true}"#, Duration::from_secs(4));
    let sim = Sim::start(ports, &[], &dir);
    let gateway =
        Gateway::start_with_env(ports, &sim.url(), &tool_toml(&url, 600, ""), &dir, &[("TOOL_SECRET", "s3cret")]);
    let caller = start_call(ports, &dir, 3000);
    wait_for_ack(&gateway);
    std::thread::sleep(Duration::from_millis(300));
    sim.control("call_tool", r#"{"name":"lookup_order","arguments":"{\"order\":\"B-2\"}","say_ms":0,"now":true}"#);
    requests.recv_timeout(Duration::from_secs(5)).expect("the webhook was called");
    let out = caller.join().expect("sipp thread");
    // The caller's own BYE after 3 s got its 200: the call was still up.
    assert!(out.status.success(), "the call failed; log:\n{}", gateway.log());

    let events = session_events(&sim);
    let call_id = simulated_call_id(&events);
    let (output, create_follows) = output_for(&events, &call_id);
    let output: Value = serde_json::from_str(&output).expect("JSON error output");
    assert!(output["error"].as_str().is_some_and(|e| e.contains("600 ms")), "{output}");
    assert!(create_follows, "the model is asked to say so");
    let output_at =
        events.iter().position(|(d, e)| d == "client" && e["item"]["type"] == "function_call_output").expect("output");
    let answered = events[output_at..].iter().any(|(d, e)| d == "server" && e["type"] == "response.created");
    assert!(answered, "the model answered after the error output");
    // The error came at the timeout, not when the webhook finally answered (4 s).
    let at_us = |wanted: &dyn Fn(&Value) -> bool| {
        sim.sessions()[0]["events"]
            .as_array()
            .and_then(|all| all.iter().find(|e| wanted(&e["event"])))
            .and_then(|e| e["at_unix_us"].as_u64())
            .expect("a logged event")
    };
    let called = at_us(&|e| e["type"] == "response.function_call_arguments.done");
    let answered_at = at_us(&|e| e["item"]["type"] == "function_call_output");
    let waited_ms = (answered_at - called) / 1000;
    eprintln!("timeout: the error output came {waited_ms} ms after the call (timeout_ms 600)");
    assert!((600..2000).contains(&waited_ms), "the output came {waited_ms} ms after the call");
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_tool_calls_total") && l.contains("status=\"timeout\"")),
        "{metrics}"
    );
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn the_filler_is_heard_while_a_slow_webhook_runs_and_mcp_servers_reach_the_session() {
    let ports = Ports::for_slot(68);
    let dir = tools::scratch_dir("tools_filler_mcp");
    let (url, requests) = webhook(r#"{"status":"ok"}"#, Duration::from_millis(2500));
    let sim = Sim::start(ports, &[], &dir);
    let mcp = "filler_after_ms = 500\nfiller = \"tone\"\n\
               [agents.default.mcp.shop]\nurl = \"https://mcp.example/sse\"\nallowed_tools = [\"search\"]\n\
               require_approval = \"never\"\n\
               [agents.default.mcp.crm]\nurl = \"https://crm.example/mcp\"\nallowed_tools = [\"find_customer\"]\n\
               require_approval = \"always\"\n";
    let gateway =
        Gateway::start_with_env(ports, &sim.url(), &tool_toml(&url, 5000, mcp), &dir, &[("TOOL_SECRET", "s3cret")]);
    let filter =
        format!("udp and (dst portrange {}-{} or port {})", ports.peer_media, ports.peer_media + 3, ports.peer_sip);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    let caller = start_call(ports, &dir, 6500);
    wait_for_ack(&gateway);
    std::thread::sleep(Duration::from_millis(300));
    sim.control("call_tool", r#"{"name":"lookup_order","arguments":"{\"order\":\"C-3\"}","say_ms":0,"now":true}"#);
    requests.recv_timeout(Duration::from_secs(5)).expect("the webhook was called");
    // Once the tool's answer has been said: the model uses the CRM, which asks for an approval.
    std::thread::sleep(Duration::from_millis(3500));
    sim.control("mcp_call", r#"{"server":"crm","name":"find_customer","arguments":"{\"phone\":\"1555\"}","now":true}"#);
    let out = caller.join().expect("sipp thread");
    std::thread::sleep(Duration::from_millis(300));
    let pcap_path = capture.finish();
    assert!(out.status.success(), "the call failed; log:\n{}", gateway.log());

    // 660 Hz beeps among the packets the caller received while the tool ran.
    let rtp = pcap::read_rtp(&pcap_path);
    let beeps = rtp
        .iter()
        .filter(|p| {
            let samples: Vec<i16> = p.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
            let filler = audio::goertzel(&samples, 8000.0, 660.0);
            let other = audio::goertzel(&samples, 8000.0, 440.0).max(audio::goertzel(&samples, 8000.0, 880.0));
            samples.iter().any(|s| s.unsigned_abs() > 500) && filler > 20.0 * other.max(1.0)
        })
        .count();
    eprintln!("filler: {} packets of 660 Hz heard while the tool ran", beeps);
    // 2.5 s pending, filler after 0.5 s, repeated every 2.5 s: one pattern of two 120 ms beeps
    // (12 packets), the repetition due at 3 s never plays: the result came first.
    assert!((10..=14).contains(&beeps), "the filler was heard once ({beeps} packets); log:\n{}", gateway.log());

    // The MCP server, declared as the reference shapes it, and its events counted.
    let events = session_events(&sim);
    let update = events.iter().find(|(d, e)| d == "client" && e["type"] == "session.update").expect("update");
    let mcp_tool = update.1["session"]["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["type"] == "mcp" && t["server_label"] == "shop").cloned())
        .expect("an mcp tool");
    assert_eq!(
        mcp_tool,
        json!({"type": "mcp", "server_label": "shop", "server_url": "https://mcp.example/sse",
               "allowed_tools": ["search"], "require_approval": "never"})
    );
    // The approval the server asked for: granted (the tool is in allowed_tools), then the call ran.
    let request_id = events
        .iter()
        .find(|(d, e)| d == "server" && e["item"]["type"] == "mcp_approval_request")
        .and_then(|(_, e)| e["item"]["id"].as_str())
        .unwrap_or_else(|| panic!("an approval request; log:\n{}", gateway.log()))
        .to_owned();
    let approval = events
        .iter()
        .position(|(d, e)| d == "client" && e["item"]["type"] == "mcp_approval_response")
        .expect("an approval response");
    assert_eq!(events[approval].1["item"]["approval_request_id"], request_id.as_str());
    assert_eq!(events[approval].1["item"]["approve"], true);
    assert!(events[approval..].iter().any(|(d, e)| d == "client" && e["type"] == "response.create"));
    assert!(events[approval..].iter().any(|(d, e)| d == "server" && e["type"] == "response.mcp_call.completed"));
    let metrics = gateway.metrics();
    for (kind, count) in [("mcp_list_tools.completed", 2), ("response.mcp_call.completed", 1)] {
        assert!(
            metrics.lines().any(|l| l.starts_with("switchboard_mcp_events_total")
                && l.contains(&format!("type=\"{kind}\""))
                && l.ends_with(&format!(" {count}"))),
            "{kind}: {metrics}"
        );
    }
}
