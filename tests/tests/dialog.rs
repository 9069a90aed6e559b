//! Mid-call SIP (issue 11, the dialog part): delayed offer, hold and resume by re-INVITE,
//! session timers, PRACK/100rel.
//! SIPp calls the release gateway, which talks to the simulator; the capture is the judge of RTP.
//! Slots 119-123.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchboard_e2e::audio::{self, Speech};
use switchboard_e2e::pcap::{self, RtpPacket, UdpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, sipp, tools};

/// SIP and RTP of the slot: the gateway's SIP port and RTP range, SIPp's SIP and media ports.
fn capture(ports: Ports, dir: &Path) -> Capture {
    let filter = format!(
        "udp and (port {} or portrange {}-{} or portrange {}-{})",
        ports.sip,
        ports.rtp_first,
        ports.rtp_last,
        ports.peer_media,
        ports.peer_media + 3
    );
    Capture::start(&filter, &dir.join("dialog.pcap"), 60)
}

fn to_caller(packets: &[RtpPacket], ports: Ports) -> Vec<&RtpPacket> {
    packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect()
}

/// When the gateway sent its final response to the INVITE with CSeq `cseq` (µs, capture clock).
fn ok_sent_at(udp: &[UdpPacket], gateway: SocketAddr, cseq: u32) -> i64 {
    let cseq_line = format!("CSeq: {cseq} INVITE");
    udp.iter()
        .find(|p| {
            let text = String::from_utf8_lossy(&p.payload);
            p.src == gateway && text.starts_with("SIP/2.0 200") && text.contains(&cseq_line)
        })
        .unwrap_or_else(|| panic!("no 200 for CSeq {cseq} in the capture"))
        .time_us
}

/// A µ-law file of `secs` of silence (phones send RTP all along; a held phone sends its music).
fn silence_file(dir: &Path, secs: usize) -> String {
    let path = dir.join("silence.ulaw");
    std::fs::write(&path, vec![0xFF; 8000 * secs]).expect("write silence");
    path.display().to_string()
}

/// Whether the simulator's session got a user text item with `text` from the gateway.
fn model_was_told(sim: &Sim, text: &str) -> bool {
    let sessions = sim.sessions();
    sessions[0]["events"].as_array().expect("events").iter().any(|e| {
        e["direction"] == "client"
            && e["event"]["type"] == "conversation.item.create"
            && e["event"]["item"]["content"][0]["text"] == text
    })
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn a_reinvite_hold_stops_the_agents_rtp_a_resume_brings_it_back_and_a_new_port_gets_it() {
    let test = "reinvite_hold_and_resume";
    let ports = Ports::for_slot(119);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ngreeting = \"Hello.\"\n", &dir);
    let capture = capture(ports, &dir);
    // 5 s of caller RTP: it has stopped when the last re-INVITE moves the media, so no packet
    // from the old address competes with the new one.
    let media = sipp::rtp_stream(&silence_file(&dir, 5), "0");
    let out = sipp::run("dlg_hold.xml", &[("MEDIA", &media)], &dir, ports, "15550001000", 1000);
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp hold/resume failed; gateway log:\n{}", gateway.log());

    let udp = pcap::read_udp(&pcap_path);
    let gateway_sip = gateway.sip_addr();
    let answered = ok_sent_at(&udp, gateway_sip, 1);
    let held = ok_sent_at(&udp, gateway_sip, 2);
    let resumed = ok_sent_at(&udp, gateway_sip, 3);
    let moved = ok_sent_at(&udp, gateway_sip, 4);
    let rtp = pcap::read_rtp(&pcap_path);
    let sent = to_caller(&rtp, ports);
    let count = |from: i64, to: i64| sent.iter().filter(|p| p.time_us > from && p.time_us < to).count();
    // A packet the media clock had already sent as the 200 left may trail it by a few ms.
    let grace = 60_000;
    let before_hold = count(answered, held);
    let during_hold = count(held + grace, resumed);
    let after_resume = count(resumed + grace, resumed + 2_500_000);
    let old_port_after_move = count(moved + grace, i64::MAX);
    let new_port: Vec<&RtpPacket> = rtp.iter().filter(|p| p.dst.port() == ports.peer_media + 2).collect();
    let new_port_after_move = new_port.iter().filter(|p| p.time_us > moved).count();
    eprintln!("{test}: RTP to the caller: {before_hold} before the hold, {during_hold} on hold, {after_resume} after");
    assert!(before_hold > 80, "the agent's stream before the hold: {before_hold} packets");
    assert_eq!(during_hold, 0, "no RTP from the gateway while the call is on hold");
    assert!(after_resume > 80, "RTP resumes after the sendrecv re-INVITE: {after_resume} packets");
    eprintln!("{test}: after the move: {old_port_after_move} to the old port, {new_port_after_move} to the new one");
    assert_eq!(old_port_after_move, 0, "the old address gets nothing once the media moved");
    assert!(new_port_after_move > 80, "RTP follows the new c=/m= port: {new_port_after_move} packets");
    assert_eq!(new_port.len(), new_port_after_move, "nothing went to the new port before the move");
    // The agent spoke again after the resume (the simulator's answer to the resume note is a
    // 440 Hz tone), not just silence.
    let spoken = sent.iter().filter(|p| p.time_us > resumed && p.payload.iter().any(|&b| b != 0xFF)).count();
    assert!(spoken > 10, "the agent greets the caller back: {spoken} packets of audio");

    assert!(model_was_told(&sim, "[the caller put the call on hold]"), "hold note to the model");
    assert!(model_was_told(&sim, "[the caller resumed the call]"), "resume note to the model");
    let metrics = gateway.metrics();
    assert!(metrics.contains("switchboard_call_holds_total 1"), "metrics:\n{metrics}");
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "metrics:\n{metrics}"
    );
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn a_delayed_offer_gets_our_offer_in_the_200_and_audio_flows_after_the_acks_answer() {
    let test = "delayed_offer";
    let ports = Ports::for_slot(120);
    let dir = tools::scratch_dir(test);
    let Speech { wav_8k, ulaw, .. } = audio::make_speech(&dir);
    let mut stream = std::fs::read(&ulaw).expect("read speech");
    stream.extend(std::iter::repeat_n(0xFF, 8000 * 3 / 2));
    let stream_path = dir.join("stream.ulaw");
    std::fs::write(&stream_path, stream).expect("write stream");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let capture = capture(ports, &dir);
    let media = sipp::rtp_stream(&stream_path.display().to_string(), "0");
    let out = sipp::run("dlg_delayed_offer.xml", &[("MEDIA", &media)], &dir, ports, "15550001000", 9000);
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp delayed offer failed; gateway log:\n{}", gateway.log());

    let rtp = pcap::read_rtp(&pcap_path);
    let sent = to_caller(&rtp, ports);
    assert!(sent.len() > 300, "gateway sent only {} RTP packets", sent.len());
    assert!(sent.iter().all(|p| p.payload_type == 0), "PCMU, as the ACK's answer chose");
    // The echo agent said back what the caller said: envelopes correlate.
    let (_, reference) = audio::read_wav(&wav_8k);
    let received: Vec<i16> = sent.iter().flat_map(|p| p.payload.iter().map(|&b| audio::ulaw_to_linear(b))).collect();
    let (lag, r) =
        audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&received, 160), 600);
    eprintln!("{test}: echo envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "echoed speech correlation {r:.3} < 0.8");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "metrics:\n{metrics}"
    );
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_delayed_offer_without_answer_gets_our_bye_and_a_100rel_invite_a_reliable_180() {
    let test = "delayed_offer_no_answer_and_100rel";
    let ports = Ports::for_slot(121);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);

    // An INVITE without SDP, our offer in the 200, an ACK without an answer: our BYE.
    let out = sipp::run("dlg_delayed_offer_no_answer.xml", &[], &dir, ports, "15550001000", 1000);
    assert!(out.status.success(), "SIPp did not get our BYE; gateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="failed",reason="bad_sdp_answer"} 1"#),
        "metrics:\n{metrics}"
    );
    // The session opened for the call was closed again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sim.sessions()[0]["closed"] != true {
        assert!(std::time::Instant::now() < deadline, "the Realtime session stayed open: {}", sim.sessions());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Require: 100rel: SIPp checks the 180's RSeq and Require, PRACKs it, and expects the PRACK's
    // 200 before the INVITE's (the 200 waits for the PRACK, RFC 3262 §3).
    let out = sipp::run("dlg_100rel.xml", &[], &dir, ports, "15550001000", 1000);
    assert!(out.status.success(), "SIPp 100rel call failed; gateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    assert!(metrics.contains(r#"switchboard_sip_requests_total{method="PRACK"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "metrics:\n{metrics}"
    );
}

/// The gateway with 4 s session timers (minimum 2 s): SIPp can see three intervals quickly.
fn short_session_timers(ports: Ports, sim: &Sim, dir: &Path) -> Gateway {
    Gateway::start_with_env(
        ports,
        &sim.url(),
        "",
        dir,
        &[("SWITCHBOARD__SIP__SESSION_EXPIRES_SECS", "4"), ("SWITCHBOARD__SIP__SESSION_MIN_SE_SECS", "2")],
    )
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn we_refresh_the_session_with_update_every_half_interval_for_three_intervals() {
    let test = "session_timer_refreshes";
    let ports = Ports::for_slot(122);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &[], &dir);
    let gateway = short_session_timers(ports, &sim, &dir);
    let media = sipp::rtp_stream(&silence_file(&dir, 16), "0");
    let started = std::time::Instant::now();
    // SIPp checks the 200's `Session-Expires: 4;refresher=uas`, answers six UPDATE refreshes
    // (each with `Session-Expires: 4;refresher=uac`, at most 4 s apart), then hangs up.
    let out = sipp::run("dlg_session_timer.xml", &[("MEDIA", &media)], &dir, ports, "15550001000", 1000);
    let took = started.elapsed();
    assert!(out.status.success(), "SIPp session timer call failed; gateway log:\n{}", gateway.log());
    eprintln!("{test}: six refreshes answered in {took:?}");
    assert!(took >= Duration::from_secs(11), "refreshes come every 2 s, not faster: {took:?}");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "the call lasted three intervals and ended with the caller's BYE:\n{metrics}"
    );
    assert!(!metrics.contains("switchboard_sip_session_expired_total"), "{metrics}");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_unanswered_refresh_ends_the_call_with_our_bye() {
    let test = "session_timer_unanswered";
    let ports = Ports::for_slot(123);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &[], &dir);
    let gateway = short_session_timers(ports, &sim, &dir);
    let media = sipp::rtp_stream(&silence_file(&dir, 10), "0");
    let out = sipp::run("dlg_session_timer_unanswered.xml", &[("MEDIA", &media)], &dir, ports, "15550001000", 1000);
    assert!(out.status.success(), "SIPp did not get our BYE; gateway log:\n{}", gateway.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = gateway.metrics();
        let recorded = metrics
            .contains(r#"switchboard_calls_total{direction="inbound",outcome="failed",reason="session_expired"} 1"#)
            && metrics.contains(r#"switchboard_sip_session_expired_total{cause="refresh_timeout"} 1"#);
        if recorded {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not recorded as session_expired:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
