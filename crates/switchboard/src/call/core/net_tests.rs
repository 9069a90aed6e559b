//! The call core's inbound path on a bad network ([`super::netem`]), on a virtual clock: what
//! the model is given (one append per released packet, concealment included), the per-call RTP
//! stats, SSRC changes, and the meter's turn latency and token sums.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_media::rtp::{self, RtpHeader, StreamStart};
use switchboard_realtime::events::{ClientEvent, ServerEvent};

use super::netem::{Netem, NetemConfig};
use super::*;

const PTIME: Duration = Duration::from_millis(20);
const CALLER_SSRC: u32 = 0xCA11_E400;

use super::tests::caller_addr;

/// Long media, ping and watchdog timers and no greeting: these tests are about the network.
fn core_config() -> CoreConfig {
    CoreConfig {
        rtp_timeout: Duration::from_secs(3600),
        ping_interval: Duration::from_secs(3600),
        watchdog: Duration::from_secs(7200),
        greeting: None,
        apology: None,
        ..super::tests::core_config()
    }
}

fn leg_config() -> LegConfig {
    LegConfig {
        telephone_event: None,
        reorder_wait: Duration::from_millis(20),
        stream: StreamStart { ssrc: 0x1234_5678, sequence: 100, timestamp: 1000 },
        jitter_max: Duration::from_millis(120),
        rtcp_interval: Duration::from_secs(5),
        ..super::tests::leg_config()
    }
}

/// A caller packet whose 160 payload bytes all carry `index % 250 + 1` (never 0xFF, PCMU
/// silence), so every append names the packet it came from.
fn caller_packet(ssrc: u32, sequence: u16, timestamp: u32, index: u64) -> Vec<u8> {
    let header = RtpHeader { payload_type: 0, marker: false, sequence, timestamp, ssrc };
    let mut packet = Vec::new();
    rtp::write_rtp(&mut packet, &header, &[(index % 250 + 1) as u8; 160]);
    packet
}

fn index_byte(index: u64) -> u8 {
    (index % 250 + 1) as u8
}

/// The core fed by a list of arrivals, timers run in between as the shell would.
struct Bench {
    core: CallCore,
    start: Instant,
    /// (when, audio) of every `input_audio_buffer.append`.
    appends: Vec<(Instant, Vec<u8>)>,
    sent_agent_packets: Vec<Instant>,
    /// RTCP packets the core gave the shell, with when.
    rtcp: Vec<(Instant, Transmit)>,
}

impl Bench {
    fn new(start: Instant) -> Bench {
        let mut core = CallCore::new(start, core_config(), leg_config());
        core.handle_dialog(start, DialogInput::Confirmed);
        Bench { core, start, appends: Vec::new(), sent_agent_packets: Vec::new(), rtcp: Vec::new() }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(t) = self.core.poll_rtcp_transmit() {
            self.rtcp.push((now, t));
        }
        while let Some(t) = self.core.poll_transmit() {
            let (_, payload) = rtp::parse_rtp(&t.packet).unwrap();
            if payload.iter().any(|&b| b != 0xFF) {
                self.sent_agent_packets.push(now);
            }
        }
        while let Some(output) = self.core.poll_output() {
            if let Output::Realtime(event) = output
                && let ClientEvent::InputAudioBufferAppend { audio, .. } = *event
            {
                self.appends.push((now, audio));
            }
        }
    }

    fn advance_to(&mut self, until: Instant) {
        while let Some(due) = self.core.poll_timeout() {
            if due > until {
                break;
            }
            self.core.handle_timeout(due);
            self.drain(due);
        }
    }

    fn deliver(&mut self, arrivals: Vec<(Instant, Vec<u8>)>) {
        for (at, packet) in arrivals {
            self.advance_to(at);
            self.core.handle_rtp(at, CALLER, caller_addr(), &packet);
            self.drain(at);
        }
    }

    /// Runs the timers long after the last packet: whatever waits is released.
    fn settle(&mut self) {
        let end = self.appends.last().map_or(self.start, |(at, _)| *at) + Duration::from_secs(1);
        self.advance_to(end);
    }

    fn realtime(&mut self, now: Instant, event: serde_json::Value) {
        self.advance_to(now);
        self.core.handle_realtime(now, ServerEvent::from_json(&event.to_string()).unwrap());
        self.drain(now);
    }
}

/// `count` packets of one stream sent every 20 ms from `first_sequence`.
fn stream(start: Instant, ssrc: u32, first_sequence: u16, first_index: u64, count: u64) -> Vec<(Instant, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let index = first_index + i;
            let sequence = first_sequence.wrapping_add(i as u16);
            let timestamp = 7_000u32.wrapping_add((i as u32) * 160);
            (start + PTIME * index as u32, caller_packet(ssrc, sequence, timestamp, index))
        })
        .collect()
}

/// The invariants of the inbound path whatever the network did, checked on the appends:
/// every append ends with the packet it was made for, after one 160-byte stand-in per packet
/// lost just before it; packets come in sending order, none twice; nothing is unaccounted for.
fn check_appends(bench: &Bench, sent: u64) -> (u64, u64) {
    let mut next_index: Option<u64> = None;
    let mut delivered = 0u64;
    let mut concealed = 0u64;
    for (_, audio) in &bench.appends {
        assert_eq!(audio.len() % 160, 0);
        let packets = audio.len() as u64 / 160;
        let own = &audio[audio.len() - 160..];
        let marker = own[0];
        assert!(own.iter().all(|&b| b == marker), "one packet's own audio last");
        let index = match next_index {
            // The packet after `packets - 1` lost ones: in order, none twice, the gap is the loss.
            Some(next) => {
                assert_eq!(marker, index_byte(next + packets - 1));
                next + packets - 1
            }
            // The stream starts with the first packet to arrive.
            None => {
                assert_eq!(packets, 1);
                (0..sent).find(|&i| index_byte(i) == marker).unwrap()
            }
        };
        next_index = Some(index + 1);
        delivered += 1;
        concealed += packets - 1;
    }
    (delivered, concealed)
}

fn run_network(config: NetemConfig, seed: u64, count: u64) -> (Bench, Netem) {
    let start = Instant::now();
    let mut bench = Bench::new(start);
    let mut netem = Netem::new(config, seed);
    let arrivals = netem.run(stream(start, CALLER_SSRC, 65_000, 0, count));
    bench.deliver(arrivals);
    bench.settle();
    (bench, netem)
}

#[test]
fn loss_jitter_reordering_and_duplicates_keep_the_models_timeline_whole() {
    let config = NetemConfig {
        loss: 0.05,
        jitter: Duration::from_millis(60),
        reorder: 0.02,
        reorder_gap: Duration::from_millis(50),
        duplicate: 0.02,
        ..NetemConfig::default()
    };
    for seed in [1, 2, 3] {
        let count = 3000; // one minute, across the sequence wrap (65 000 + 3 000)
        let (bench, netem) = run_network(config, seed, count);
        let (delivered, concealed) = check_appends(&bench, count);
        let stats = bench.core.stats().rtp;
        eprintln!("seed {seed}: {stats:?}, network dropped {} duplicated {}", netem.dropped, netem.duplicated);
        assert_eq!(stats.packets, delivered, "{stats:?}");
        assert_eq!(stats.concealed, concealed, "every lost packet is concealed once");
        assert_eq!(stats.lost, concealed, "no gap beyond the concealment cap here");
        assert_eq!(stats.stream_changes, 0, "the wrap is not a new stream");
        // Nothing unaccounted for: each packet sent is delivered or lost (a first packet or
        // two may be overtaken before the stream starts: those are late, never delivered).
        assert!(delivered + stats.lost <= count && delivered + stats.lost + 6 >= count, "{stats:?}");
        assert!(stats.lost >= netem.dropped, "what the network dropped is lost: {stats:?}");
        assert!(stats.duplicates > 0 && stats.late > 0 && stats.reordered > 0, "{stats:?}");
        assert_eq!(stats.duplicates + stats.late + delivered, netem.duplicated + count - netem.dropped);
        // The bound: 60 ms of jitter adds less than 80 ms at p95.
        assert!(stats.buffer_delay_p95 < Duration::from_millis(80), "{stats:?}");
        assert!(stats.jitter > Duration::from_millis(5) && stats.jitter_max >= stats.jitter, "{stats:?}");
        // The timeline the model gets is as long as the stream (to the last packet received).
        let appended: usize = bench.appends.iter().map(|(_, a)| a.len()).sum();
        assert_eq!(appended as u64, (delivered + concealed) * 160);
    }
}

#[test]
fn gilbert_elliott_burst_loss_is_concealed_packet_for_packet() {
    let config =
        NetemConfig { burst_enter: 0.02, burst_exit: 0.3, jitter: Duration::from_millis(20), ..NetemConfig::default() };
    let (bench, netem) = run_network(config, 42, 3000);
    let (_, concealed) = check_appends(&bench, 3000);
    let stats = bench.core.stats().rtp;
    assert!(netem.dropped > 50, "{}", netem.dropped);
    assert_eq!(stats.lost, netem.dropped);
    assert_eq!(stats.concealed, concealed);
    assert_eq!(stats.concealed, stats.lost);
}

#[test]
fn a_clean_network_adds_no_delay_and_counts_nothing() {
    let (bench, _) = run_network(NetemConfig { delay: Duration::from_millis(30), ..NetemConfig::default() }, 1, 500);
    let stats = bench.core.stats().rtp;
    assert_eq!((stats.packets, stats.lost, stats.late, stats.duplicates, stats.concealed), (500, 0, 0, 0, 0));
    assert_eq!(stats.buffer_delay_p95, Duration::ZERO);
    assert_eq!(stats.jitter, Duration::ZERO);
    // Each packet is appended the instant it arrives.
    assert_eq!(bench.appends.len(), 500);
    for (i, (at, _)) in bench.appends.iter().enumerate() {
        assert_eq!(*at, bench.start + PTIME * i as u32 + Duration::from_millis(30));
    }
}

#[test]
fn a_new_ssrc_mid_call_re_syncs_at_once_without_loss_or_glitch() {
    let start = Instant::now();
    let mut bench = Bench::new(start);
    let mut arrivals = stream(start, CALLER_SSRC, 30_000, 0, 100);
    // The SBC fails over: the same address, a new SSRC, an unrelated sequence and timestamp.
    let failover: Vec<_> = stream(start, 0x5BC0_0002, 5, 100, 100)
        .into_iter()
        .map(|(at, mut packet)| {
            let timestamp = 0x8000_0000u32 + u32::from_be_bytes(packet[4..8].try_into().unwrap());
            packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
            (at, packet)
        })
        .collect();
    arrivals.extend(failover);
    bench.deliver(arrivals);
    bench.settle();
    let (delivered, concealed) = check_appends(&bench, 200);
    assert_eq!((delivered, concealed), (200, 0));
    let stats = bench.core.stats().rtp;
    assert_eq!((stats.lost, stats.stream_changes, stats.late), (0, 1, 0));
    // The first packet of the new stream is appended the instant it arrives.
    assert_eq!(bench.appends[100].0, start + PTIME * 100);
}

#[test]
fn a_timestamp_jump_is_not_loss() {
    let start = Instant::now();
    let mut bench = Bench::new(start);
    let arrivals: Vec<_> = stream(start, CALLER_SSRC, 65_500, 0, 100)
        .into_iter()
        .enumerate()
        .map(|(i, (at, mut packet))| {
            if i >= 50 {
                // Silence suppression ended: the timestamp moved on by a minute, the sequence did not.
                let timestamp = u32::from_be_bytes(packet[4..8].try_into().unwrap()).wrapping_add(480_000);
                packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
            }
            (at, packet)
        })
        .collect();
    bench.deliver(arrivals);
    bench.settle();
    let stats = bench.core.stats().rtp;
    assert_eq!((stats.packets, stats.lost, stats.concealed, stats.stream_changes), (100, 0, 0, 0));
    assert_eq!(stats.jitter, Duration::ZERO);
}

#[test]
fn the_meter_measures_a_turn_on_the_rtp_clock_and_sums_usage() {
    let start = Instant::now();
    let mut bench = Bench::new(start);
    // One second of caller speech: 50 packets, each appended the instant it arrives.
    bench.deliver(stream(start, CALLER_SSRC, 1, 0, 50));
    let at = |ms: u64| start + Duration::from_millis(ms);
    // The model's VAD: speech ended 700 ms into the input; it says so at 1.3 s.
    bench.realtime(
        at(1300),
        json!({"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":700,"item_id":"u1"}),
    );
    bench.realtime(
        at(1400),
        json!({"type":"response.created","event_id":"e","response":{"id":"r1","status":"in_progress","output":[]}}),
    );
    let audio = base64_of(&[0x11; 1600]);
    bench.realtime(
        at(1500),
        json!({"type":"response.output_audio.delta","event_id":"e","response_id":"r1","item_id":"a1",
            "output_index":0,"content_index":0,"delta":audio}),
    );
    bench.advance_to(at(2000));
    let usage = json!({"total_tokens":253,"input_tokens":132,"output_tokens":121,
        "input_token_details":{"text_tokens":119,"audio_tokens":13,"cached_tokens":64},
        "output_token_details":{"text_tokens":30,"audio_tokens":91}});
    for id in ["r1", "r2"] {
        bench.realtime(
            at(2000),
            json!({"type":"response.done","event_id":"e","response":{"id":id,"status":"completed","output":[],"usage":usage}}),
        );
    }
    let stats = bench.core.stats();
    assert_eq!(stats.turns, 1);
    // Speech end: the packet holding input 680..700 ms arrived at 680 ms (it was appended at
    // once); the first agent packet left at the first pacer slot at or after the delta.
    let first_agent_packet = bench.sent_agent_packets[0];
    assert!(first_agent_packet >= at(1500) && first_agent_packet <= at(1520));
    assert_eq!(stats.turn_latency_p50, Some(first_agent_packet - at(680)));
    assert_eq!(stats.tokens.input_text, 238);
    assert_eq!(stats.tokens.output_audio, 182);
    assert_eq!(stats.tokens.input_cached, 128);
    assert_eq!(stats.tokens.responses, 2);
}

/// Base64 as the wire has it (an append's encoding).
fn base64_of(bytes: &[u8]) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&ClientEvent::append(bytes.to_vec()).to_json().unwrap()).unwrap();
    json["audio"].as_str().unwrap().to_owned()
}

// ---- outbound pacing invariants ----

/// One packet the core sent, with the virtual time it left.
struct SentPacket {
    at: Instant,
    header: RtpHeader,
    payload: Vec<u8>,
}

/// The model's burst patterns, each a list of (seconds after the response starts, delta bytes).
fn burst_pattern(kind: u64, rng: &mut super::netem::Rng, audio_bytes: usize) -> Vec<(f64, usize)> {
    let mut deltas = Vec::new();
    let mut left = audio_bytes;
    let mut at = 0.0;
    while left > 0 {
        let size = match kind {
            // 10x real time in deltas of 100..300 ms.
            0 => 800 + (rng.next_u64() % 1600) as usize,
            // One huge delta.
            1 => left,
            // Many tiny ones (1..8 bytes), slower than real time in places.
            2 => 1 + (rng.next_u64() % 8) as usize,
            // Medium deltas with long gaps (up to 2 s) between them.
            _ => 100 + (rng.next_u64() % 3000) as usize,
        }
        .min(left);
        deltas.push((at, size));
        left -= size;
        at += match kind {
            0 => size as f64 / 8000.0 / 10.0,
            1 => 0.0,
            2 => (rng.next_u64() % 3) as f64 / 1000.0,
            _ => (rng.next_u64() % 2000) as f64 / 1000.0,
        };
    }
    deltas
}

/// Property: whatever the model's burst pattern and however late (within the catch-up bound)
/// the media clock runs, the caller gets one packet per ptime slot with continuous sequence
/// numbers and timestamps, the marker bit exactly on the first audio packet after silence,
/// silence (not a clock shift) on underrun, and every byte of the model's audio in order.
#[test]
fn property_any_burst_pattern_is_paced_one_packet_per_ptime_with_continuous_numbering() {
    for seed in 1..=12u64 {
        let mut rng = super::netem::Rng::new(seed);
        let start = Instant::now();
        let mut core = CallCore::new(start, core_config(), leg_config());
        core.handle_dialog(start, DialogInput::Confirmed);
        // One caller packet so the latch knows where to send.
        core.handle_rtp(start, CALLER, caller_addr(), &caller_packet(CALLER_SSRC, 1, 0, 0));
        while core.poll_output().is_some() {}
        // Four responses, each with a random pattern, a marker byte and 0.5..4 s of audio.
        let mut events: Vec<(f64, ServerEvent)> = Vec::new();
        let mut expected_audio = Vec::new();
        let mut response_start = 0.5;
        for response in 0..4u8 {
            let kind = rng.next_u64() % 4;
            let audio_bytes = 4000 + (rng.next_u64() % 28_000) as usize;
            let byte = 0x20 + response;
            let id = format!("r{response}");
            let item = format!("i{response}");
            events.push((
                response_start,
                server(json!({"type":"response.created","event_id":"e",
                "response":{"id":id,"status":"in_progress","output":[]}})),
            ));
            let mut last = response_start;
            for (offset, size) in burst_pattern(kind, &mut rng, audio_bytes) {
                last = response_start + offset;
                events.push((
                    last,
                    server(json!({"type":"response.output_audio.delta","event_id":"e",
                    "response_id":id,"item_id":item,"output_index":0,"content_index":0,
                    "delta":base64_of(&vec![byte; size])})),
                ));
            }
            events.push((
                last,
                server(json!({"type":"response.output_audio.done","event_id":"e",
                "response_id":id,"item_id":item,"output_index":0,"content_index":0})),
            ));
            events.push((
                last,
                server(json!({"type":"response.done","event_id":"e",
                "response":{"id":id,"status":"completed","output":[]}})),
            ));
            expected_audio.extend(std::iter::repeat_n(byte, audio_bytes));
            // The next response starts after this one has played, plus a random pause.
            response_start +=
                (audio_bytes as f64 / 8000.0).max(last - response_start) + (rng.next_u64() % 1500) as f64 / 1000.0;
        }
        let end = start + Duration::from_secs_f64(response_start + 1.0);
        let mut sent: Vec<SentPacket> = Vec::new();
        let run_until =
            |core: &mut CallCore, until: Instant, rng: &mut super::netem::Rng, sent: &mut Vec<SentPacket>| {
                while let Some(due) = core.poll_media_timeout() {
                    if due > until {
                        break;
                    }
                    // The media clock wakes up to 30 ms late (within the catch-up bound).
                    let late = Duration::from_micros(rng.next_u64() % 30_000);
                    let now = due + late;
                    core.handle_timeout(now);
                    while let Some(t) = core.poll_transmit() {
                        let (header, payload) = rtp::parse_rtp(&t.packet).unwrap();
                        sent.push(SentPacket { at: now, header, payload: payload.to_vec() });
                    }
                    while core.poll_output().is_some() {}
                }
            };
        for (at, event) in events {
            let now = start + Duration::from_secs_f64(at);
            run_until(&mut core, now, &mut rng, &mut sent);
            core.handle_realtime(now, event);
            while core.poll_output().is_some() {}
        }
        run_until(&mut core, end, &mut rng, &mut sent);

        // One packet per slot: packet n belongs to slot n, never sent before it nor after the
        // wake-up that was due at it.
        let last_wake = sent.last().unwrap().at;
        let slots_due = ((last_wake - start).as_micros() / 20_000) as usize + 1;
        assert_eq!(sent.len(), slots_due, "seed {seed}: every slot due by the last wake-up, once");
        assert!(last_wake + Duration::from_millis(20) >= end, "seed {seed}: the call ran to the end");
        for (n, packet) in sent.iter().enumerate() {
            let slot = start + PTIME * n as u32;
            assert!(packet.at >= slot && packet.at < slot + Duration::from_millis(31), "seed {seed}: packet {n}");
        }
        let mut previous_was_audio = false;
        let mut audio: Vec<u8> = Vec::new();
        for pair in sent.windows(2) {
            assert_eq!(pair[1].header.sequence, pair[0].header.sequence.wrapping_add(1), "seed {seed}");
            assert_eq!(pair[1].header.timestamp, pair[0].header.timestamp.wrapping_add(160), "seed {seed}");
            assert_eq!(pair[1].header.ssrc, pair[0].header.ssrc);
        }
        for packet in &sent {
            assert_eq!(packet.payload.len(), 160);
            let is_audio = packet.payload.iter().any(|&b| b != 0xFF);
            assert_eq!(
                packet.header.marker,
                is_audio && !previous_was_audio,
                "seed {seed}: marker at talkspurt starts only"
            );
            previous_was_audio = is_audio;
            audio.extend(packet.payload.iter().copied().filter(|&b| b != 0xFF));
        }
        assert_eq!(audio.len(), expected_audio.len(), "seed {seed}: every byte of the model's audio is played");
        assert!(audio == expected_audio, "seed {seed}: in order");
    }
}

fn server(value: serde_json::Value) -> ServerEvent {
    ServerEvent::from_json(&value.to_string()).unwrap()
}

/// RTCP through the core: our SR (with the caller's reception block) goes to the caller's RTP
/// port + 1, the caller's RR about our stream gives the round trip, and RTCP from another
/// address is not read.
#[test]
fn rtcp_round_trip_through_the_core() {
    use switchboard_media::rtcp::{self, ReportBlock, RtcpPacket};
    let start = Instant::now();
    let mut bench = Bench::new(start);
    bench.deliver(stream(start, CALLER_SSRC, 100, 0, 400)); // 8 s of caller audio
    let (sr_sent_at, report) = bench.rtcp.last().cloned().expect("a report within 8 s at a 5 s interval");
    assert_eq!(report.destination, "192.0.2.10:40001".parse().unwrap());
    let packets = rtcp::parse_compound(&report.packet).unwrap();
    let RtcpPacket::SenderReport { ssrc, sender, reports } = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(*ssrc, leg_config().stream.ssrc);
    assert!(sender.packets > 100, "{sender:?}");
    assert_eq!(reports[0].ssrc, CALLER_SSRC);
    assert_eq!(reports[0].cumulative_lost, 0);
    assert_eq!(packets[1], RtcpPacket::Other { packet_type: rtcp::PT_SDES });
    // The caller held our SR 40 ms; its RR reaches us 100 ms after our SR left: RTT 60 ms.
    let block = ReportBlock {
        ssrc: *ssrc,
        fraction_lost: 5,
        cumulative_lost: 2,
        last_sr: rtcp::ntp_middle(sender.ntp),
        delay_since_last_sr: 65_536 * 40 / 1000,
        ..ReportBlock::default()
    };
    let mut rr = Vec::new();
    rtcp::write_report(&mut rr, CALLER_SSRC, None, &[block], "caller");
    let arrives = sr_sent_at + Duration::from_millis(100);
    let elsewhere: SocketAddr = "203.0.113.9:40001".parse().unwrap();
    bench.core.handle_rtp(arrives, CALLER, elsewhere, &rr);
    assert_eq!(bench.core.stats().rtp.rtcp.received, 0, "not the caller's address: not read");
    bench.core.handle_rtp(arrives, CALLER, "192.0.2.10:40001".parse().unwrap(), &rr);
    let stats = bench.core.stats().rtp.rtcp;
    assert_eq!((stats.received, stats.remote_fraction_lost, stats.remote_cumulative_lost), (1, 5, 2));
    let rtt = stats.rtt.unwrap();
    assert!(rtt.abs_diff(Duration::from_millis(60)) < Duration::from_millis(1), "{rtt:?}");
}
