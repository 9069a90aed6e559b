//! A call over a bad network, end to end: real gateway and simulator binaries, a caller written
//! here (raw SIP over UDP, RTP from a socket) whose packets go through a seeded network emulator
//! (5 % loss, 0..40 ms of jitter that reorders packets, 2 % duplicates) before they reach the
//! gateway.
//!
//! Why the emulator is in the caller and not the kernel: this machine's kernel has neither the
//! `netem` nor the `prio` qdisc ("Specified qdisc kind is unknown" inside `unshare -n`), and there
//! is no iptables/nft for a `statistic` drop. What the gateway receives is the same either way:
//! UDP datagrams lost, late, out of order and duplicated, from the caller's address.
//!
//! Checked: the echo the caller hears still correlates with the speech (>= 0.8, PCMU
//! passthrough), the end-of-call line counts exactly the loss the emulator made (concealed packet
//! for packet), its jitter and buffer delay, a turn latency, RTCP sent, and token sums equal to
//! the simulator's logged `usage`; `/metrics` carries the same figures.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchboard_e2e::audio;
use switchboard_e2e::procs::{Gateway, Sim};
use switchboard_e2e::sip_raw::{collect_one, header, status_of};
use switchboard_e2e::{Ports, tools};

/// A deterministic xorshift generator: the same seed, the same network.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What the emulated network did to the caller's stream.
#[derive(Debug, Default)]
struct Impairment {
    /// Indices of the packets dropped.
    dropped: Vec<usize>,
    duplicated: usize,
    /// (send offset, packet index) in the order they leave.
    schedule: Vec<(Duration, usize)>,
}

fn impair(packets: usize, seed: u64) -> Impairment {
    let mut rng = Rng(seed);
    let mut net = Impairment::default();
    for index in 0..packets {
        if rng.below(100) < 5 {
            net.dropped.push(index);
            continue;
        }
        let at = Duration::from_millis(20 * index as u64 + rng.below(41));
        net.schedule.push((at, index));
        if rng.below(100) < 2 {
            net.duplicated += 1;
            net.schedule.push((at + Duration::from_millis(rng.below(15)), index));
        }
    }
    net.schedule.sort();
    net
}

fn rtp_packet(index: usize, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x80, 0];
    packet.extend_from_slice(&(1000u16.wrapping_add(index as u16)).to_be_bytes());
    packet.extend_from_slice(&(160u32 * index as u32).to_be_bytes());
    packet.extend_from_slice(&0x0C0F_FEE0u32.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The `key=value` fields of the gateway's end-of-call line.
fn call_stats(log: &str) -> Option<BTreeMap<String, String>> {
    let line = log.lines().find(|line| line.contains("call stats"))?;
    Some(
        line.split_whitespace()
            .filter_map(|token| token.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect(),
    )
}

fn field(stats: &BTreeMap<String, String>, key: &str) -> f64 {
    stats.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no numeric {key} in {stats:?}"))
}

/// The value of a Prometheus sample whose line starts with `name_and_labels` (0 if absent).
fn metric(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name_and_labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends one SIP request over `socket` and returns the first final response.
fn request(socket: &UdpSocket, gateway: SocketAddr, message: &str) -> String {
    socket.send_to(message.replace('\n', "\r\n").as_bytes(), gateway).expect("send SIP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(answer) = collect_one(socket, Duration::from_millis(500))
            && status_of(&answer).is_some_and(|status| status >= 200)
        {
            return answer;
        }
    }
    panic!("no final response to:\n{message}");
}

#[test]
#[cfg_attr(not(all(has_espeak_ng, has_sox)), ignore = "needs espeak-ng and sox (scripts/install-deps.sh)")]
fn a_call_over_a_lossy_jittery_network_still_correlates_and_reports_its_stats() {
    let test = "a_call_over_a_lossy_jittery_network_still_correlates_and_reports_its_stats";
    let ports = Ports::for_slot(65);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);

    // The caller's audio: the speech, then 5 s of silence for the echo to come back.
    let mut caller_audio = std::fs::read(&speech.ulaw).expect("speech");
    caller_audio.extend(std::iter::repeat_n(0xFF_u8, 8000 * 5));
    let payloads: Vec<&[u8]> = caller_audio.chunks_exact(160).collect();
    let network = impair(payloads.len(), 0x00C0_FFEE);

    let sip = UdpSocket::bind(("127.0.0.1", ports.peer_sip)).expect("bind SIP");
    let rtp = UdpSocket::bind(("127.0.0.1", ports.peer_media)).expect("bind RTP");
    let local = format!("127.0.0.1:{}", ports.peer_sip);
    let sdp = format!(
        "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {} RTP/AVP 0\n\
         a=rtpmap:0 PCMU/8000\na=ptime:20\na=sendrecv\n",
        ports.peer_media
    )
    .replace('\n', "\r\n");
    let call_id = format!("network-{}@127.0.0.1", ports.peer_sip);
    let from = format!("<sip:caller@{local}>;tag=net65");
    let invite = format!(
        "INVITE sip:15550001000@127.0.0.1:{sip} SIP/2.0\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-net-inv;rport\n\
         Max-Forwards: 70\nFrom: {from}\nTo: <sip:15550001000@127.0.0.1:{sip}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\n\
         Contact: <sip:caller@{local}>\nContent-Type: application/sdp\nContent-Length: {len}\n\n",
        sip = ports.sip,
        len = sdp.len()
    );
    let ok = request(&sip, gateway.sip_addr(), &format!("{invite}{}", sdp.replace("\r\n", "\n")));
    assert_eq!(status_of(&ok), Some(200), "INVITE answered:\n{ok}\n{}", gateway.log());
    let to = header(&ok, "To").expect("To").to_owned();
    let contact = header(&ok, "Contact").expect("Contact");
    let target = contact.trim().trim_start_matches('<').split('>').next().expect("Contact URI").to_owned();
    let media_port: u16 = ok
        .lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("m=audio in the answer");
    let ack = format!(
        "ACK {target} SIP/2.0\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-net-ack;rport\nMax-Forwards: 70\n\
         From: {from}\nTo: {to}\nCall-ID: {call_id}\nCSeq: 1 ACK\nContent-Length: 0\n\n"
    );
    sip.send_to(ack.replace('\n', "\r\n").as_bytes(), gateway.sip_addr()).expect("ACK");

    // Receive what the gateway sends while the emulated network delivers the caller's packets.
    let gateway_media: SocketAddr = ([127, 0, 0, 1], media_port).into();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let rtp = rtp.try_clone().expect("clone RTP socket");
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut heard = Vec::new();
            let mut buf = [0u8; 2048];
            rtp.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, _)) = rtp.recv_from(&mut buf)
                    && len > 12
                    && buf[1] & 0x7F == 0
                {
                    heard.extend(buf[12..len].iter().map(|&b| audio::ulaw_to_linear(b)));
                }
            }
            heard
        })
    };
    let start = Instant::now();
    for &(at, index) in &network.schedule {
        if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        rtp.send_to(&rtp_packet(index, payloads[index]), gateway_media).expect("send RTP");
    }
    std::thread::sleep(Duration::from_millis(300));
    let bye = format!(
        "BYE {target} SIP/2.0\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-net-bye;rport\nMax-Forwards: 70\n\
         From: {from}\nTo: {to}\nCall-ID: {call_id}\nCSeq: 2 BYE\nContent-Length: 0\n\n"
    );
    let bye_answer = request(&sip, gateway.sip_addr(), &bye);
    assert_eq!(status_of(&bye_answer), Some(200));
    stop.store(true, Ordering::Relaxed);
    let heard = receiver.join().expect("receiver");

    // The echo the caller heard still follows the speech.
    let (_, reference) = audio::read_wav(&speech.wav_8k);
    let (lag, r) = audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&heard, 160), 600);
    eprintln!(
        "{test}: r = {r:.3} at lag {} ms; network dropped {} and duplicated {} of {} packets",
        lag * 20,
        network.dropped.len(),
        network.duplicated,
        payloads.len()
    );
    assert!(r >= 0.8, "the echo over a lossy network correlates only {r:.3} with the speech");

    // The end-of-call line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        if let Some(stats) = call_stats(&gateway.log()) {
            break stats;
        }
        assert!(Instant::now() < deadline, "no end-of-call line:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{test}: {stats:?}");
    // Loss inside the stream (a packet dropped after the last one sent cannot be told from the
    // end of the stream); a packet that arrives after its slot was concealed is lost *and* late.
    let last_sent = network.schedule.iter().map(|&(_, index)| index).max().expect("packets");
    let dropped = network.dropped.iter().filter(|&&index| index < last_sent).count() as f64;
    let lost = field(&stats, "rtp_lost");
    let late = field(&stats, "rtp_late");
    assert!(dropped > 5.0, "the network dropped {dropped}");
    assert!((lost - late - dropped).abs() <= 1.0, "lost {lost} - late {late} = dropped {dropped}");
    assert_eq!(field(&stats, "rtp_concealed"), lost, "every lost packet concealed once");
    let duplicates = field(&stats, "rtp_duplicates");
    assert!(duplicates <= network.duplicated as f64 && duplicates + late >= network.duplicated as f64 - 1.0);
    assert!(field(&stats, "rtp_reordered") > 10.0, "0..40 ms of jitter reorders 20 ms packets");
    assert!(field(&stats, "jitter_ms") > 2.0 && field(&stats, "jitter_ms") < 40.0);
    assert!(field(&stats, "buffer_delay_p95_ms") < 80.0);
    assert!(field(&stats, "rtcp_sent") >= 1.0, "an RTCP report within the call");
    assert!(field(&stats, "turns") >= 1.0, "the echo answered a caller turn");
    let turn_p50 = field(&stats, "turn_latency_p50_ms");
    assert!(turn_p50 > 100.0 && turn_p50 < 5000.0, "turn latency {turn_p50} ms");

    // Tokens: the sums of the simulator's logged `usage`, in the line and in /metrics.
    let sessions = sim.sessions();
    let mut usage_sums: BTreeMap<&str, f64> = BTreeMap::new();
    for event in sessions[0]["events"].as_array().expect("events") {
        if event["direction"] != "server" || event["event"]["type"] != "response.done" {
            continue;
        }
        let usage = &event["event"]["response"]["usage"];
        let count = |value: &serde_json::Value| value.as_f64().unwrap_or(0.0);
        for (key, value) in [
            ("tokens_input_text", &usage["input_token_details"]["text_tokens"]),
            ("tokens_input_audio", &usage["input_token_details"]["audio_tokens"]),
            ("tokens_input_cached", &usage["input_token_details"]["cached_tokens"]),
            ("tokens_output_text", &usage["output_token_details"]["text_tokens"]),
            ("tokens_output_audio", &usage["output_token_details"]["audio_tokens"]),
        ] {
            *usage_sums.entry(key).or_default() += count(value);
        }
    }
    assert!(usage_sums["tokens_input_audio"] > 0.0 && usage_sums["tokens_output_audio"] > 0.0, "{usage_sums:?}");
    for (key, sum) in &usage_sums {
        assert_eq!(field(&stats, key), *sum, "{key}: the line against the simulator's usage");
    }
    assert!(field(&stats, "cost_usd") > 0.0);

    let metrics = gateway.metrics();
    assert_eq!(metric(&metrics, "switchboard_rtp_lost_total"), lost);
    assert_eq!(metric(&metrics, "switchboard_rtp_concealed_frames_total"), lost);
    assert_eq!(metric(&metrics, "switchboard_rtp_late_packets_total"), late);
    assert_eq!(metric(&metrics, "switchboard_rtp_duplicate_packets_total"), duplicates);
    assert!(metric(&metrics, "switchboard_jitter_buffer_delay_seconds_count") > 100.0);
    assert_eq!(metric(&metrics, "switchboard_rtp_jitter_seconds_count"), 1.0);
    assert_eq!(metric(&metrics, "switchboard_turn_latency_seconds_count{part=\"total\"}"), field(&stats, "turns"));
    assert!(metric(&metrics, "switchboard_rtcp_packets_total{direction=\"out\"") >= 1.0);
    for (direction, kind, key) in [
        ("input", "text", "tokens_input_text"),
        ("input", "audio", "tokens_input_audio"),
        ("input", "cached", "tokens_input_cached"),
        ("output", "text", "tokens_output_text"),
        ("output", "audio", "tokens_output_audio"),
    ] {
        let sample = metric(
            &metrics,
            &format!("switchboard_realtime_tokens_total{{direction=\"{direction}\",kind=\"{kind}\"}}"),
        );
        assert_eq!(sample, usage_sums[key], "/metrics tokens {direction}/{kind}");
    }
}
