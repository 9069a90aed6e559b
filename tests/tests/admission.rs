//! Admission before expense, end to end: per-source limits on new INVITEs (rate and concurrent
//! calls) answered 503 with Retry-After before any Realtime session is opened, trusted proxies
//! exempt, and network header values escaped in the log. Sources are loopback addresses
//! (127.0.0.2, 127.0.0.3, ...): raw UDP SIP, no external tool needed.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_e2e::procs::{Gateway, Sim};
use switchboard_e2e::sip_raw::{collect, header, status_of};
use switchboard_e2e::{Ports, tools};

/// An INVITE with a G.711 offer from `local`; the SDP points at `local`'s own address.
fn invite(local: SocketAddr, target: SocketAddr, call_id: &str, media_port: u16) -> String {
    let ip = local.ip();
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {media_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    format!(
        "INVITE sip:15550001000@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:caller@{local}>;tag=from-{}\r\n\
         To: <sip:15550001000@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        branch_safe(call_id),
        branch_safe(call_id),
        body.len()
    )
}

fn branch_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// An in-dialog request (ACK or BYE) for a call set up by [`invite`].
fn in_dialog(method: &str, local: SocketAddr, target: SocketAddr, call_id: &str, to: &str, cseq: u32) -> String {
    format!(
        "{method} sip:15550001000@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{}-{method}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:caller@{local}>;tag=from-{}\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        branch_safe(call_id),
        branch_safe(call_id),
        if method == "ACK" { 1 } else { cseq },
    )
}

/// A complete call from `source`: INVITE, 200, ACK, a moment of nothing, BYE, 200.
/// Returns the INVITE's final status (and whether the BYE was answered 200 when it was a 200).
fn full_call(source: &str, target: SocketAddr, call_id: &str, media_port: u16) -> (u16, bool) {
    let socket = UdpSocket::bind(format!("{source}:0")).expect("bind caller");
    let local = socket.local_addr().unwrap();
    socket.send_to(invite(local, target, call_id, media_port).as_bytes(), target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        assert!(Instant::now() < deadline, "no final response for {call_id}");
        let Some(response) = collect(&socket, Duration::from_millis(200))
            .into_iter()
            .find(|r| status_of(r).is_some_and(|s| s >= 200) && header(r, "Call-ID") == Some(call_id))
        else {
            continue;
        };
        break response;
    };
    let status = status_of(&ok).unwrap();
    if status != 200 {
        return (status, false);
    }
    let to = header(&ok, "To").expect("To in 200").to_string();
    socket.send_to(in_dialog("ACK", local, target, call_id, &to, 1).as_bytes(), target).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    socket.send_to(in_dialog("BYE", local, target, call_id, &to, 2).as_bytes(), target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let answered = collect(&socket, Duration::from_millis(200))
            .iter()
            .any(|r| status_of(r) == Some(200) && header(r, "CSeq").is_some_and(|c| c.ends_with("BYE")));
        if answered {
            return (200, true);
        }
    }
    (200, false)
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn an_invite_flood_from_one_source_leaves_another_source_unaffected() {
    let test = "invite_flood_from_one_source";
    let ports = Ports::for_slot(30);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    // Shipped defaults: calls.max_per_source = 20, sip.invite_rate_per_source = 10.
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let target = gateway.sip_addr();

    // 127.0.0.2 sends 20 INVITEs per second for 4 s and never ACKs.
    let flooder = UdpSocket::bind("127.0.0.2:0").unwrap();
    let flooder_addr = flooder.local_addr().unwrap();
    let responses = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let socket = flooder.try_clone().unwrap();
        let responses = Arc::clone(&responses);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                let batch = collect(&socket, Duration::from_millis(100));
                responses.lock().unwrap().extend(batch);
            }
        })
    };
    let sender = std::thread::spawn(move || {
        for i in 0..80 {
            let message = invite(flooder_addr, target, &format!("flood-{i}"), 9);
            flooder.send_to(message.as_bytes(), target).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    // Meanwhile, 127.0.0.3 makes one ordinary call.
    std::thread::sleep(Duration::from_secs(2));
    let (status, bye_answered) = full_call("127.0.0.3", target, "second-source-call", ports.peer_media);
    sender.join().unwrap();
    reader.join().unwrap();
    assert_eq!(status, 200, "the second source's call must be answered; log:\n{}", gateway.log());
    assert!(bye_answered, "the second source's BYE must be answered");

    // One refusal per Call-ID: an unacknowledged 503 is retransmitted (RFC 3261 §17.2.1).
    let responses = responses.lock().unwrap();
    let mut refusals: Vec<&String> = responses.iter().filter(|r| status_of(r) == Some(503)).collect();
    refusals.sort_by_key(|r| header(r, "Call-ID").map(String::from));
    refusals.dedup_by_key(|r| header(r, "Call-ID").map(String::from));
    assert!(refusals.len() >= 40, "only {} INVITEs of 80 refused", refusals.len());
    for refusal in &refusals {
        assert_eq!(header(refusal, "Retry-After"), Some("5"), "503 without calls.retry_after_secs:\n{refusal}");
    }

    // The upstream cost: the flooder opened at most its 20 calls' worth of Realtime sessions.
    let sessions = sim.sessions().as_array().map_or(0, Vec::len);
    eprintln!("80 INVITEs from one source: {} refused with 503, {sessions} Realtime sessions opened", refusals.len());
    assert!(sessions <= 21, "{sessions} Realtime sessions opened (cap 20 for the flooder + 1 call)");
    assert!(sessions >= 2, "{sessions} Realtime sessions: the admitted calls must still get theirs");

    let metrics = gateway.metrics();
    let rate_limited = metric(
        &metrics,
        r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="source_rate_limited"}"#,
    );
    let call_limited = metric(
        &metrics,
        r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="source_call_limit"}"#,
    );
    assert!(rate_limited > 0 && call_limited > 0, "refusals by reason: {rate_limited}, {call_limited}\n{metrics}");
    assert_eq!(rate_limited + call_limited, refusals.len() as u64, "{metrics}");
    // The refusals are warned about once, then summarised: not one log line per INVITE.
    let warnings = gateway.log().matches("INVITE refused: source over its per-source limit").count();
    assert!(warnings <= 2, "{warnings} refusal warnings for {} refusals", refusals.len());
}

#[test]
fn trusted_proxies_are_exempt_from_per_source_limits() {
    let test = "trusted_proxies_are_exempt";
    let ports = Ports::for_slot(31);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start_with_env(
        ports,
        "",
        "",
        &dir,
        &[
            ("SWITCHBOARD__SIP__TRUSTED_PROXIES", "127.0.0.4/32"),
            ("SWITCHBOARD__CALLS__MAX_PER_SOURCE", "2"),
            ("SWITCHBOARD__SIP__INVITE_RATE_PER_SOURCE", "100"),
            ("SWITCHBOARD__CALLS__RETRY_AFTER_SECS", "11"),
        ],
    );
    let target = gateway.sip_addr();
    let statuses = |source: &str| -> Vec<(u16, Option<String>)> {
        let socket = UdpSocket::bind(format!("{source}:0")).unwrap();
        let local = socket.local_addr().unwrap();
        for i in 0..5 {
            let message = invite(local, target, &format!("{source}-{i}"), 9);
            socket.send_to(message.as_bytes(), target).unwrap();
        }
        let mut finals = std::collections::BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while finals.len() < 5 && Instant::now() < deadline {
            for response in collect(&socket, Duration::from_millis(200)) {
                if let (Some(status), Some(call_id)) = (status_of(&response), header(&response, "Call-ID"))
                    && status >= 200
                {
                    finals
                        .entry(call_id.to_string())
                        .or_insert((status, header(&response, "Retry-After").map(String::from)));
                }
            }
        }
        finals.into_values().collect()
    };
    // A proxy in front brings many callers from one address: all of its calls are taken.
    let proxy = statuses("127.0.0.4");
    assert_eq!(proxy.len(), 5, "{proxy:?}");
    assert!(proxy.iter().all(|(s, _)| *s == 200), "trusted proxy refused: {proxy:?}; log:\n{}", gateway.log());
    // Any other source gets its 2 calls, then 503 with the configured Retry-After.
    let other = statuses("127.0.0.5");
    assert_eq!(other.iter().filter(|(s, _)| *s == 200).count(), 2, "{other:?}");
    let refused: Vec<_> = other.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(refused.len(), 3, "{other:?}");
    assert!(refused.iter().all(|(_, retry)| retry.as_deref() == Some("11")), "{other:?}");
}

#[test]
fn a_call_id_with_an_ansi_escape_and_a_cr_reaches_the_log_escaped() {
    let test = "call_id_reaches_the_log_escaped";
    let ports = Ports::for_slot(32);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start(ports, "", "", &dir);
    let target = gateway.sip_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = socket.local_addr().unwrap();
    // An ANSI "clear screen, red" sequence and a bare CR (a CR/LF would end the header line)
    // followed by text made to look like a log line of its own.
    let call_id = "evil\u{1b}[2J\u{1b}[31m\r2026-11-30T00:00:00Z  INFO switchboard: admin logged in";
    socket.send_to(invite(local, target, call_id, 9).as_bytes(), target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.log().contains("routed") {
        assert!(Instant::now() < deadline, "the call was not processed; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read(&gateway.log_path).unwrap();
    assert!(!log.contains(&0x1b), "a raw ESC reached the log:\n{}", String::from_utf8_lossy(&log));
    assert!(!log.contains(&b'\r'), "a raw CR reached the log:\n{}", String::from_utf8_lossy(&log));
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains(r"evil\x1b[2J\x1b[31m\r2026-11-30T00:00:00Z  INFO switchboard: admin logged in"),
        "the Call-ID must appear escaped:\n{text}"
    );
    assert!(
        !text.lines().any(|line| line.starts_with("2026-11-30T00:00:00Z")),
        "a forged line reached the log:\n{text}"
    );
}
