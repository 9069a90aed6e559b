//! Media that only the caller can steer (issue 6): strict RTP, random RTP ports, no RTP before the
//! ACK. The caller and the attackers are raw UDP sockets in this process, so their own sockets are
//! the judges of where the gateway's downlink went; the simulator's session log shows what reached
//! the agent (an echo agent: a tone that reached it would come back).
//!
//! Each test re-runs itself inside a network namespace of its own (`unshare -n`, loopback only):
//! the hostile traffic and the third-party addresses in spoofed SDP can reach nothing else.
//! Attackers use other loopback addresses (127.0.0.2 and up).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use switchboard_e2e::procs::{Gateway, Sim, run_bounded};
use switchboard_e2e::sip_raw::{header, status_of};
use switchboard_e2e::{Ports, audio, tools};

const IN_NETNS: &str = "SWITCHBOARD_E2E_IN_NETNS";
const PTIME: Duration = Duration::from_millis(20);
/// µ-law silence.
const SILENCE: u8 = 0xFF;

/// Runs `test` again inside a fresh network namespace with only loopback, and returns false; inside
/// that namespace, returns true so the test body runs there.
fn inside_own_netns(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = run_bounded(
        "unshare",
        Command::new("unshare")
            .args(["-n", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(IN_NETNS, "1"),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{test} failed inside its network namespace ({})", out.status);
    assert!(stdout.contains("1 passed"), "{test} did not run inside the namespace:\n{stdout}");
    false
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---------------------------------------------------------------------------------------------
// RTP, written and read here independently of the gateway's code.

fn rtp_packet(ssrc: u32, sequence: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The payload of a PCMU RTP packet (fixed header only, as the gateway sends).
fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    (packet.len() >= 12 && packet[0] >> 6 == 2 && packet[1] & 0x7F == 0).then(|| &packet[12..])
}

/// 20 ms of a 1 kHz tone in µ-law: each sample is the code whose decoded value is nearest.
fn tone_frame(frame: u32) -> Vec<u8> {
    (0..160u32)
        .map(|i| {
            let t = f64::from(frame * 160 + i) / 8000.0;
            let target = (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i32;
            (0..=255u8).min_by_key(|&b| (i32::from(audio::ulaw_to_linear(b)) - target).abs()).unwrap_or(SILENCE)
        })
        .collect()
}

/// True when a received PCMU payload is audible (the gateway's silence frames are not).
fn is_audible(payload: &[u8]) -> bool {
    let energy: f64 = payload.iter().map(|&b| f64::from(audio::ulaw_to_linear(b)).powi(2)).sum();
    (energy / payload.len().max(1) as f64).sqrt() > 300.0
}

/// Datagrams with the time they arrived.
type Received = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// Every datagram a socket receives, with when, collected by a thread until stopped.
struct Listener {
    received: Received,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(socket: &UdpSocket) -> Listener {
        let socket = socket.try_clone().expect("clone socket");
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    r.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
                }
            }
        });
        Listener { received, stop, thread: Some(thread) }
    }

    /// RTP packets received at or after `since` (all of them with `None`).
    fn rtp_since(&self, since: Option<Instant>) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, p)| since.is_none_or(|since| *at >= since) && rtp_payload(p).is_some())
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn rtp_count(&self) -> usize {
        self.rtp_since(None).len()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `count` RTP packets 20 ms apart from `socket` to `target` on a thread.
fn stream(
    socket: &UdpSocket,
    target: SocketAddr,
    ssrc: u32,
    count: u32,
    payload: fn(u32) -> Vec<u8>,
) -> JoinHandle<()> {
    let socket = socket.try_clone().expect("clone socket");
    thread::spawn(move || {
        let start = Instant::now();
        for i in 0..count {
            let packet = rtp_packet(ssrc, 1000u16.wrapping_add(i as u16), i * 160, &payload(i));
            let _ = socket.send_to(&packet, target);
            let next = start + PTIME * (i + 1);
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    })
}

fn silence_frame(_: u32) -> Vec<u8> {
    vec![SILENCE; 160]
}

// ---------------------------------------------------------------------------------------------
// A caller that speaks SIP over a raw UDP socket.

struct Caller {
    sip: UdpSocket,
    media: UdpSocket,
    /// The gateway's RTP address from the SDP answer.
    gateway_media: SocketAddr,
    invite: String,
    ok: String,
}

fn invite(call_id: &str, local: SocketAddr, media: SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = media.ip(),
        port = media.port()
    );
    format!(
        "INVITE sip:15550001000@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id}-1\r\n\
         From: <sip:caller@127.0.0.1>;tag={call_id}-from\r\n\
         To: <sip:15550001000@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{local}>\r\n\
         Max-Forwards: 70\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// Reads SIP responses until a final one; returns it.
fn final_response(sip: &UdpSocket, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 65_535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sip.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
        let Ok((n, _)) = sip.recv_from(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status_of(&text).is_some_and(|s| s >= 200) {
            return text;
        }
    }
    panic!("no final response within {limit:?}");
}

/// The address of the `m=audio` stream in an SDP body.
fn sdp_media_address(message: &str) -> SocketAddr {
    let ip = message.lines().find_map(|l| l.trim().strip_prefix("c=IN IP4 ")).expect("c= line").trim();
    let port = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("m=audio line");
    format!("{ip}:{port}").parse().expect("SDP media address")
}

impl Caller {
    /// Sends an INVITE whose SDP says the caller receives RTP at `media_ip` (on the caller's media
    /// socket's port), and waits for the 200. No ACK yet.
    fn invite(gateway: &Gateway, call_id: &str, media_ip: IpAddr) -> Caller {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind SIP");
        let media = UdpSocket::bind((media_ip, 0)).expect("bind media");
        let local = sip.local_addr().expect("addr");
        let invite = invite(call_id, local, media.local_addr().expect("media addr"));
        sip.send_to(invite.as_bytes(), gateway.sip_addr()).expect("send INVITE");
        let ok = final_response(&sip, Duration::from_secs(8));
        assert_eq!(status_of(&ok), Some(200), "{call_id}: {ok}\n{}", gateway.log());
        Caller { sip, media, gateway_media: sdp_media_address(&ok), invite, ok }
    }

    /// INVITE, 200, ACK: an established call.
    fn call(gateway: &Gateway, call_id: &str) -> Caller {
        let caller = Caller::invite(gateway, call_id, loopback(1));
        caller.ack(gateway);
        caller
    }

    fn ack(&self, gateway: &Gateway) {
        let call_id = header(&self.invite, "Call-ID").expect("Call-ID");
        let to = header(&self.ok, "To").expect("To in 200");
        let target = header(&self.ok, "Contact")
            .and_then(|c| c.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(uri, _)| uri.to_string()))
            .unwrap_or_else(|| "sip:15550001000@127.0.0.1".into());
        let local = self.sip.local_addr().expect("addr");
        let ack = format!(
            "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id}-ack\r\n\
             From: <sip:caller@127.0.0.1>;tag={call_id}-from\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        self.sip.send_to(ack.as_bytes(), gateway.sip_addr()).expect("send ACK");
    }
}

// ---------------------------------------------------------------------------------------------
// Judges.

fn metric(gateway: &Gateway, prefix: &str) -> f64 {
    gateway
        .metrics()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How many events of `event_type` (client or server side) the simulator logged, over all sessions.
fn sim_events(sim: &Sim, direction: &str, event_type: &str) -> usize {
    let sessions = sim.sessions();
    sessions
        .as_array()
        .expect("sessions array")
        .iter()
        .flat_map(|s| s["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["direction"] == direction && e["event"]["type"] == event_type)
        .count()
}

fn start(test: &str, slot: u16, env: &[(&str, &str)]) -> (std::path::PathBuf, Sim, Gateway) {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start_with_env(ports, &sim.url(), "", &dir, env);
    (dir, sim, gateway)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A second source streams a 1.5 s tone to the call's port while the caller talks (silence): the
/// downlink stays with the caller, the attacker gets nothing, and the agent never hears the tone.
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn a_second_stream_neither_takes_the_downlink_nor_reaches_the_agent() {
    let test = "a_second_stream_neither_takes_the_downlink_nor_reaches_the_agent";
    if !inside_own_netns(test) {
        return;
    }
    let (_dir, sim, gateway) = start(test, 46, &[]);
    let caller = Caller::call(&gateway, "second-stream");
    let attacker = UdpSocket::bind((loopback(2), 0)).expect("bind attacker");
    let (caller_rx, attacker_rx) = (Listener::start(&caller.media), Listener::start(&attacker));

    let talking = stream(&caller.media, caller.gateway_media, 0x1111, 200, silence_frame);
    thread::sleep(Duration::from_secs(1));
    let attack = stream(&attacker, caller.gateway_media, 0x6666, 75, tone_frame);
    attack.join().unwrap();
    talking.join().unwrap();
    thread::sleep(Duration::from_millis(500));

    let downlink = caller_rx.rtp_since(None);
    let audible = downlink.iter().filter(|p| rtp_payload(p).is_some_and(is_audible)).count();
    let ignored = metric(&gateway, "switchboard_rtp_ignored_packets_total");
    let speech = sim_events(&sim, "server", "input_audio_buffer.speech_started");
    let appends = sim_events(&sim, "client", "input_audio_buffer.append");
    println!(
        "caller got {} packets ({audible} audible), attacker got {}; ignored {ignored}; agent: {appends} appends, {speech} speech starts",
        downlink.len(),
        attacker_rx.rtp_count()
    );
    assert_eq!(attacker_rx.rtp_count(), 0, "the attacker received downlink packets");
    assert!(downlink.len() >= 150, "the caller got only {} downlink packets in 4.5 s", downlink.len());
    assert_eq!(audible, 0, "the attacker's tone was echoed by the agent");
    assert_eq!(speech, 0, "the agent heard speech (the tone)");
    assert!(appends <= 200, "{appends} audio appends for the caller's 200 packets");
    assert!(ignored >= 70.0, "ignored packets are counted: {ignored}");
    let log = gateway.log();
    assert_eq!(log.matches("caller's RTP source learned").count(), 1, "one learn, logged once:\n{log}");
}

/// With the caller silent (it sent 1 s, then nothing), one packet from another address does not
/// move the downlink.
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn one_injected_packet_while_the_caller_is_silent_moves_nothing() {
    let test = "one_injected_packet_while_the_caller_is_silent_moves_nothing";
    if !inside_own_netns(test) {
        return;
    }
    let (_dir, _sim, gateway) = start(test, 47, &[]);
    let caller = Caller::call(&gateway, "one-packet");
    let attacker = UdpSocket::bind((loopback(2), 0)).expect("bind attacker");
    let (caller_rx, attacker_rx) = (Listener::start(&caller.media), Listener::start(&attacker));

    stream(&caller.media, caller.gateway_media, 0x2222, 50, silence_frame).join().unwrap();
    thread::sleep(Duration::from_millis(500));
    let injected = Instant::now();
    attacker.send_to(&rtp_packet(0x6666, 1, 0, &[SILENCE; 160]), caller.gateway_media).expect("inject");
    thread::sleep(Duration::from_millis(1500));

    let after = caller_rx.rtp_since(Some(injected)).len();
    println!("after the injection: caller got {after} packets, attacker {}", attacker_rx.rtp_count());
    assert_eq!(attacker_rx.rtp_count(), 0, "one packet took the downlink");
    assert!(after >= 50, "the caller got only {after} packets in the 1.5 s after the injection");
}

/// Three calls whose callers have been silent for longer than the re-learn silence; an attacker
/// sprays the whole port range: 10 in-sequence packets per port (one SSRC each), then 100 random
/// datagrams. Every call's downlink stays with its caller.
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn a_spray_across_the_port_range_takes_no_call() {
    let test = "a_spray_across_the_port_range_takes_no_call";
    if !inside_own_netns(test) {
        return;
    }
    let ports = Ports::for_slot(48);
    let (_dir, _sim, gateway) = start(test, 48, &[]);
    let callers: Vec<Caller> = (0..3).map(|i| Caller::call(&gateway, &format!("spray-{i}"))).collect();
    let listeners: Vec<Listener> = callers.iter().map(|c| Listener::start(&c.media)).collect();
    let talkers: Vec<_> = callers
        .iter()
        .enumerate()
        .map(|(i, c)| stream(&c.media, c.gateway_media, 0x3000 + i as u32, 50, silence_frame))
        .collect();
    for talker in talkers {
        talker.join().unwrap();
    }
    // Silent for longer than media.rtp_relearn_silence_ms (2 s): only probation protects the calls.
    thread::sleep(Duration::from_millis(2500));

    let attacker = UdpSocket::bind((loopback(2), 0)).expect("bind attacker");
    let attacker_rx = Listener::start(&attacker);
    let sprayed = Instant::now();
    let mut sent = 0;
    for port in ports.rtp_first..=ports.rtp_last {
        for i in 0..10u16 {
            let target = SocketAddr::new(loopback(1), port);
            let _ =
                attacker.send_to(&rtp_packet(0xA000 + u32::from(port), i, u32::from(i) * 160, &[SILENCE; 160]), target);
            sent += 1;
        }
    }
    // Random datagrams (xorshift), some of which parse as RTP.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 12 + (x % 160) as usize;
        let datagram: Vec<u8> = (0..len).map(|i| (x.rotate_left(i as u32 % 64) & 0xFF) as u8 | 0x80).collect();
        let port = ports.rtp_first + (x % u64::from(ports.rtp_last - ports.rtp_first + 1)) as u16;
        let _ = attacker.send_to(&datagram, SocketAddr::new(loopback(1), port));
        sent += 1;
    }
    thread::sleep(Duration::from_millis(1500));

    let per_caller: Vec<usize> = listeners.iter().map(|l| l.rtp_since(Some(sprayed)).len()).collect();
    let ignored = metric(&gateway, "switchboard_rtp_ignored_packets_total");
    println!(
        "spray of {sent}: callers got {per_caller:?} after it, attacker {}; ignored {ignored}",
        attacker_rx.rtp_count()
    );
    assert_eq!(attacker_rx.rtp_count(), 0, "the spray captured downlink packets");
    for (i, got) in per_caller.iter().enumerate() {
        assert!(*got >= 50, "caller {i} got only {got} packets in the 1.5 s after the spray");
    }
    assert!(ignored >= 30.0, "the calls' ports saw the spray: {ignored}");
}

/// The gateway is killed (-9) with a call up whose caller keeps streaming; the restarted gateway
/// has one RTP port only, so its next call gets the orphaned call's port. The old caller receives
/// nothing from the new call.
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn after_kill_9_a_new_call_never_sends_to_the_old_caller() {
    let test = "after_kill_9_a_new_call_never_sends_to_the_old_caller";
    if !inside_own_netns(test) {
        return;
    }
    let ports = Ports::for_slot(49);
    let one_port = format!("{}-{}", ports.rtp_first, ports.rtp_first + 1);
    let env = [("SWITCHBOARD__MEDIA__RTP_PORTS", one_port.as_str())];
    let (dir, sim, mut first) = start(test, 49, &env);
    let old = Caller::call(&first, "before-the-crash");
    let old_rx = Listener::start(&old.media);
    // The old caller streams for the whole test (10 s), as an orphaned phone would.
    let orphan = stream(&old.media, old.gateway_media, 0x0DD, 500, silence_frame);
    thread::sleep(Duration::from_secs(1));
    assert!(old_rx.rtp_count() > 20, "the old call worked before the crash");

    first.guard.child.kill().expect("kill -9");
    let _ = first.guard.child.wait();
    let restarted = Instant::now();
    let second = Gateway::start_with_env(ports, &sim.url(), "", &dir, &env);
    let new = Caller::call(&second, "after-the-crash");
    assert_eq!(new.gateway_media, old.gateway_media, "the only port: the new call has the orphan's port");
    let new_rx = Listener::start(&new.media);
    let talking = stream(&new.media, new.gateway_media, 0x4444, 150, silence_frame);
    talking.join().unwrap();
    thread::sleep(Duration::from_millis(300));

    let to_old = old_rx.rtp_since(Some(restarted)).len();
    let to_new = new_rx.rtp_count();
    println!("after the restart: old caller got {to_old} packets, new caller {to_new}");
    assert_eq!(to_old, 0, "the new call's audio went to the old caller");
    assert!(to_new >= 100, "the new caller got only {to_new} packets in 3 s");
    drop(orphan);
}

/// An INVITE whose SDP points at a third party and is never ACKed gets no RTP sent there; an ACKed
/// call whose caller never sends RTP still gets its downlink (sending starts at the ACK).
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn a_spoofed_invite_never_acked_sends_no_rtp_to_the_third_party() {
    let test = "a_spoofed_invite_never_acked_sends_no_rtp_to_the_third_party";
    if !inside_own_netns(test) {
        return;
    }
    let (_dir, _sim, gateway) = start(test, 50, &[]);
    // The victim is the SDP's address (127.0.0.3); the INVITE comes from elsewhere.
    let spoofed = Caller::invite(&gateway, "spoofed", loopback(3));
    let victim_rx = Listener::start(&spoofed.media);
    // A genuine caller who ACKs but stays silent: its downlink starts at the ACK.
    let genuine = Caller::invite(&gateway, "genuine", loopback(4));
    let genuine_rx = Listener::start(&genuine.media);
    genuine.ack(&gateway);
    thread::sleep(Duration::from_secs(3));

    let (to_victim, to_genuine) = (victim_rx.rtp_count(), genuine_rx.rtp_count());
    println!("3 s after the 200s: victim got {to_victim} RTP packets, the ACKed caller {to_genuine}");
    assert_eq!(to_victim, 0, "RTP was sent to the third party of a never-ACKed INVITE");
    assert!(to_genuine >= 100, "the ACKed call got only {to_genuine} packets in 3 s");
}

/// A caller behind a NAT: its SDP shows one address (127.0.0.5), its RTP comes from another
/// (127.0.0.6). Strict RTP still follows it, after the signalled address's priority and the
/// probation: symmetric RTP (RFC 4961) keeps working.
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn a_caller_behind_a_nat_is_learned_and_answered_where_it_sends_from() {
    let test = "a_caller_behind_a_nat_is_learned_and_answered_where_it_sends_from";
    if !inside_own_netns(test) {
        return;
    }
    let (_dir, sim, gateway) = start(test, 52, &[]);
    let caller = Caller::invite(&gateway, "behind-a-nat", loopback(5));
    caller.ack(&gateway);
    let nat = UdpSocket::bind((loopback(6), 0)).expect("bind NAT side");
    let (signalled_rx, nat_rx) = (Listener::start(&caller.media), Listener::start(&nat));
    let talking = stream(&nat, caller.gateway_media, 0x5555, 150, silence_frame);
    thread::sleep(Duration::from_millis(1500));
    let settled = Instant::now();
    talking.join().unwrap();

    let (to_nat, to_signalled) = (nat_rx.rtp_since(Some(settled)).len(), signalled_rx.rtp_since(Some(settled)).len());
    let appends = sim_events(&sim, "client", "input_audio_buffer.append");
    println!("after learning: NAT side got {to_nat}, SDP address {to_signalled}; agent got {appends} appends");
    assert!(to_nat >= 60, "the NAT side got only {to_nat} packets in 1.5 s");
    assert_eq!(to_signalled, 0, "still sending to the SDP's address");
    assert!(appends >= 100, "the caller's audio reached the agent: {appends} appends of 150 packets");
    assert!(gateway.log().contains("by=Probation"), "{}", gateway.log());
}

/// A real SIP peer: SIPp talks (speech, echoed by the agent) while an attacker at 127.0.0.2 streams
/// a 1.5 s tone to the call's RTP port (the gateway has one port, so the attacker knows it). tshark
/// is the judge: every downlink packet goes to SIPp's media port, and the echo still correlates
/// with what SIPp said.
#[test]
#[cfg_attr(
    not(all(has_unshare, has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs unshare, sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn a_sipp_call_keeps_its_downlink_and_echo_while_attacked() {
    use switchboard_e2e::pcap::{self, RtpPacket};
    use switchboard_e2e::procs::Capture;
    use switchboard_e2e::sipp;

    let test = "a_sipp_call_keeps_its_downlink_and_echo_while_attacked";
    if !inside_own_netns(test) {
        return;
    }
    let ports = Ports::for_slot(51);
    let one_port = format!("{}-{}", ports.rtp_first, ports.rtp_first + 1);
    let (dir, _sim, gateway) = start(test, 51, &[("SWITCHBOARD__MEDIA__RTP_PORTS", one_port.as_str())]);
    let speech = audio::make_speech(&dir);
    let mut raw = std::fs::read(&speech.ulaw).expect("speech");
    raw.extend(std::iter::repeat_n(SILENCE, 8000 * 3 / 2));
    let stream_path = dir.join("stream.ul");
    std::fs::write(&stream_path, raw).expect("write stream");
    let capture = Capture::start(&format!("udp and port {}", ports.rtp_first), &dir.join("media.pcap"), 60);

    let call = {
        let (dir, stream_path) = (dir.clone(), stream_path.display().to_string());
        thread::spawn(move || {
            sipp::run(
                "uac_call.xml",
                &[
                    ("FORMATS", "0"),
                    ("RTPMAPS", &sipp::rtpmaps("0")),
                    ("EXPECT_PT", "0"),
                    ("MEDIA", &sipp::rtp_stream(&stream_path, "0")),
                ],
                &dir,
                ports,
                "15550001000",
                9000,
            )
        })
    };
    thread::sleep(Duration::from_millis(1500));
    let attacker = UdpSocket::bind((loopback(2), 0)).expect("bind attacker");
    let attacker_rx = Listener::start(&attacker);
    stream(&attacker, SocketAddr::new(loopback(1), ports.rtp_first), 0x6666, 75, tone_frame).join().unwrap();
    let out = call.join().expect("sipp thread");
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp call failed; gateway log:\n{}", gateway.log());

    let packets = pcap::read_rtp(&pcap_path);
    let downlink: Vec<&RtpPacket> = packets.iter().filter(|p| p.src.port() == ports.rtp_first).collect();
    let mut per_destination = std::collections::BTreeMap::new();
    for p in &downlink {
        *per_destination.entry(p.dst).or_insert(0usize) += 1;
    }
    let to_caller: Vec<&RtpPacket> = downlink.iter().copied().filter(|p| p.dst.port() == ports.peer_media).collect();
    let received: Vec<i16> =
        to_caller.iter().flat_map(|p| p.payload.iter().map(|&b| audio::ulaw_to_linear(b))).collect();
    let (_, reference) = audio::read_wav(&speech.wav_8k);
    let (_, r) = audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&received, 160), 600);
    println!(
        "downlink per destination: {per_destination:?}; attacker socket got {}; echo r = {r:.3}",
        attacker_rx.rtp_count()
    );
    assert_eq!(per_destination.len(), 1, "downlink went to more than one place: {per_destination:?}");
    assert!(to_caller.len() > 300, "SIPp got only {} downlink packets", to_caller.len());
    assert_eq!(attacker_rx.rtp_count(), 0);
    assert!(r >= 0.8, "the echo of SIPp's speech correlates only {r:.3}: the attack reached the agent");
    assert!(metric(&gateway, "switchboard_rtp_ignored_packets_total") >= 70.0);
}

/// Stray packets do not keep a dead call alive: the caller stops sending, another address keeps
/// hitting the port with packets that never form a stream (a new SSRC each), and the call still
/// ends with BYE at `media.rtp_timeout_secs` (10 s here).
#[test]
#[cfg_attr(not(has_unshare), ignore = "needs unshare (util-linux)")]
fn stray_packets_do_not_keep_a_dead_call_alive() {
    let test = "stray_packets_do_not_keep_a_dead_call_alive";
    if !inside_own_netns(test) {
        return;
    }
    let (_dir, _sim, gateway) = start(test, 53, &[]);
    let caller = Caller::call(&gateway, "dead-caller");
    stream(&caller.media, caller.gateway_media, 0x7777, 25, silence_frame).join().unwrap();
    let caller_gone = Instant::now();

    let attacker = UdpSocket::bind((loopback(2), 0)).expect("bind attacker");
    let target = caller.gateway_media;
    let stop = Arc::new(AtomicBool::new(false));
    let stray = {
        let (attacker, stop) = (attacker.try_clone().expect("clone"), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) && i < 50 * 20 {
                let _ = attacker.send_to(&rtp_packet(0xB000 + i, i as u16, i * 160, &[SILENCE; 160]), target);
                i += 1;
                thread::sleep(PTIME);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(16);
    let mut buf = [0u8; 65_535];
    let mut bye_after = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        caller.sip.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
        let Ok((n, _)) = caller.sip.recv_from(&mut buf) else { break };
        if String::from_utf8_lossy(&buf[..n]).starts_with("BYE ") {
            bye_after = Some(caller_gone.elapsed());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    stray.join().unwrap();
    println!("BYE {bye_after:?} after the caller went quiet");
    let bye_after =
        bye_after.unwrap_or_else(|| panic!("no BYE: the stray packets kept the call alive\n{}", gateway.log()));
    assert!(bye_after >= Duration::from_secs(9), "BYE too early: {bye_after:?}");
}
