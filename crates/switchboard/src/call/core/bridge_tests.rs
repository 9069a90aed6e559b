//! Two legs bridged ([`super::bridge`]) on the conversation harness's virtual clock: audio
//! crosses both ways between different codecs (found again by frequency), the model hears
//! nothing meanwhile and the agent says nothing, the relay's added delay counted in frames, its
//! queue bounded against a peer sending faster than real time, the human's RTP timeout, keys,
//! the recorder taps and the stats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_media::g722::{G722Decoder, G722Encoder};
use switchboard_media::opus_codec::{OpusDecoder, OpusEncoder, OpusEncoderSettings};
use switchboard_media::rtp::{self, RtpHeader, StreamStart};
use switchboard_media::signal;
use switchboard_media::{Codec, CodecCoding};
use switchboard_realtime::events::ClientEvent;

use super::bridge::{MAX_LEGS, RELAY_MAX_QUEUED_FRAMES, RELAY_TRIM_WINDOW};
use super::talk_tests::{Harness, config, created, delta, ms, talk};
use super::tests::caller_addr;
use super::*;

const PTIME: Duration = Duration::from_millis(20);
const CALLER_TONE: f64 = 1000.0;
const HUMAN_TONE: f64 = 600.0;

fn human_addr() -> SocketAddr {
    "198.51.100.20:30000".parse().unwrap()
}

fn payload_type(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 8,
        Codec::G722 => 9,
        Codec::Opus => 111,
    }
}

/// The caller's leg: PCMU, the model speaking G.711 (the harness's default), or `codec`.
fn caller_leg(codec: Codec) -> LegConfig {
    let model = if codec.is_g711() { ModelAudio::G711Passthrough } else { ModelAudio::Pcm24k };
    LegConfig {
        codec,
        payload_type: payload_type(codec),
        model_input: model,
        model_output: model,
        ..super::talk_tests::leg()
    }
}

fn human_leg(codec: Codec) -> LegConfig {
    LegConfig {
        codec,
        payload_type: payload_type(codec),
        telephone_event: Some(101),
        remote: human_addr(),
        stream: StreamStart { ssrc: 0x4855_4d41, sequence: 7, timestamp: 9_000 },
        ..caller_leg(codec)
    }
}

/// A phone: 20 ms frames of a tone (or anything) encoded as its codec does, RTP around them.
struct Phone {
    codec: Codec,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    g722: G722Encoder,
    opus: Option<OpusEncoder>,
    /// Samples of the tone sent so far (its phase runs on).
    sent_samples: usize,
}

impl Phone {
    fn new(codec: Codec, ssrc: u32) -> Phone {
        Phone {
            codec,
            ssrc,
            sequence: 100,
            timestamp: 1_000,
            g722: G722Encoder::new(),
            opus: (codec == Codec::Opus).then(|| OpusEncoder::new(OpusEncoderSettings::default()).unwrap()),
            sent_samples: 0,
        }
    }

    fn rate(&self) -> u32 {
        self.codec.sample_rate()
    }

    /// The next 20 ms of a tone at `freq`, as an RTP packet.
    fn tone_packet(&mut self, freq: f64) -> Vec<u8> {
        let per_frame = self.codec.samples_per_frame(20);
        let rate = f64::from(self.rate());
        let samples: Vec<i16> = (self.sent_samples..self.sent_samples + per_frame)
            .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * freq * n as f64 / rate).sin()) as i16)
            .collect();
        self.sent_samples += per_frame;
        let mut payload = Vec::new();
        match self.codec {
            Codec::Pcmu | Codec::Pcma => self.codec.encode(&samples, &mut payload),
            Codec::G722 => self.g722.encode(&samples, &mut payload),
            Codec::Opus => {
                self.opus.as_mut().unwrap().encode(&samples, &mut payload).unwrap();
            }
        }
        self.packet(&payload)
    }

    fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let header = RtpHeader {
            payload_type: payload_type(self.codec),
            marker: false,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.codec.clock_rate() / 50);
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, payload);
        packet
    }
}

/// Decodes what a phone on `codec` received, in order.
fn decode(codec: Codec, payloads: &[&[u8]]) -> Vec<i16> {
    let mut pcm = Vec::new();
    let mut g722 = G722Decoder::new();
    let mut opus = (codec == Codec::Opus).then(|| OpusDecoder::new().unwrap());
    for payload in payloads {
        match codec {
            Codec::Pcmu | Codec::Pcma => codec.decode(payload, &mut pcm),
            Codec::G722 => g722.decode(payload, &mut pcm),
            Codec::Opus => {
                opus.as_mut().unwrap().decode(payload, &mut pcm).unwrap();
            }
        }
    }
    pcm
}

fn appends_between(h: &Harness, from: Duration, to: Duration) -> usize {
    h.realtime
        .iter()
        .filter(|(at, e)| {
            *at >= h.start + from && *at < h.start + to && matches!(e, ClientEvent::InputAudioBufferAppend { .. })
        })
        .count()
}

/// Both phones send a tone every 20 ms from `from` to `to` (the human's 7 ms out of phase
/// with the caller's), timers run between.
fn talk_both(h: &mut Harness, caller: &mut Phone, human: &mut Phone, from: Duration, to: Duration) {
    let mut at = from;
    while at < to {
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        h.run_to(at + ms(7));
        let packet = human.tone_packet(HUMAN_TONE);
        h.core.handle_rtp(h.now, HUMAN, human_addr(), &packet);
        h.drain();
        at += PTIME;
    }
}

fn payloads_between(sent: &[(Instant, RtpHeader, Vec<u8>)], from: Instant, to: Instant) -> Vec<&[u8]> {
    sent.iter().filter(|(at, _, _)| *at >= from && *at < to).map(|(_, _, p)| p.as_slice()).collect()
}

/// The dominant frequency of the middle of `pcm` (the edges hold the bridge's start and codec
/// warm-up), and the tone's share of the power there.
fn tone_of(pcm: &[i16], rate: u32) -> f64 {
    let middle = &pcm[pcm.len() / 4..pcm.len() * 3 / 4];
    assert!(signal::rms_dbfs(middle) > -30.0, "audio arrived ({} dBFS)", signal::rms_dbfs(middle));
    signal::dominant_frequency(middle, rate, 200.0, 3000.0, 10.0)
}

fn bridged_call(caller_codec: Codec, human_codec: Codec) -> (Harness, Phone, Phone) {
    bridged_call_with(caller_codec, human_leg(human_codec))
}

fn bridged_call_with(caller_codec: Codec, human_config: LegConfig) -> (Harness, Phone, Phone) {
    let human_codec = human_config.codec;
    let mut h = Harness::with_core(config(talk()), caller_leg(caller_codec));
    let mut caller = Phone::new(caller_codec, 0xCA11);
    let mut human = Phone::new(human_codec, 0x4855);
    // The caller talks with the agent for a second, then the human answers and is bridged.
    let mut at = ms(0);
    while at < ms(1000) {
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        at += PTIME;
    }
    h.run_to(ms(1000));
    h.core.add_leg(h.now, HUMAN, human_config);
    h.core.bridge(h.now, CALLER, HUMAN);
    h.drain();
    talk_both(&mut h, &mut caller, &mut human, ms(1000), ms(3000));
    (h, caller, human)
}

#[test]
fn a_tone_crosses_both_ways_between_different_codecs_and_the_model_hears_nothing() {
    for (caller_codec, human_codec) in
        [(Codec::Pcmu, Codec::G722), (Codec::Pcmu, Codec::Opus), (Codec::Pcmu, Codec::Pcma), (Codec::Opus, Codec::Pcmu)]
    {
        let (h, _, _) = bridged_call(caller_codec, human_codec);
        let (from, to) = (h.start + ms(1000), h.start + ms(3000));
        // What the human heard: the caller's tone, in the human's codec and payload type.
        let heard = payloads_between(&h.human, from, to);
        assert!(heard.len() >= 99, "{caller_codec:?} -> {human_codec:?}: {} packets", heard.len());
        assert!(h.human.iter().all(|(_, header, _)| header.payload_type == payload_type(human_codec)));
        let tone = tone_of(&decode(human_codec, &heard), human_codec.sample_rate());
        assert!((tone - CALLER_TONE).abs() <= 20.0, "{caller_codec:?} -> {human_codec:?}: human heard {tone} Hz");
        // What the caller heard: the human's tone.
        let heard = payloads_between(&h.sent, from, to);
        let tone = tone_of(&decode(caller_codec, &heard), caller_codec.sample_rate());
        assert!((tone - HUMAN_TONE).abs() <= 20.0, "{human_codec:?} -> {caller_codec:?}: caller heard {tone} Hz");
        // The model heard the caller before the bridge, and nothing during it.
        assert!(appends_between(&h, ms(0), ms(1000)) >= 45);
        assert_eq!(appends_between(&h, ms(1000), ms(3000)), 0, "no caller audio to the model while bridged");
        assert!(h.ended().is_none());
    }
}

#[test]
fn unbridge_stops_the_relay_and_gives_the_caller_back_to_the_model() {
    let (mut h, mut caller, mut human) = bridged_call(Codec::Pcmu, Codec::Pcmu);
    h.run_to(ms(3000));
    h.core.unbridge(h.now);
    assert!(!h.core.is_bridged());
    talk_both(&mut h, &mut caller, &mut human, ms(3000), ms(4000));
    h.run_to(ms(4000));
    // The model hears the caller again, one append per packet.
    assert!(appends_between(&h, ms(3000), ms(4000)) >= 49);
    // Neither side hears the other any more: silence (PCMU 0xFF) both ways after the unbridge.
    let after = h.start + ms(3001);
    assert!(h.human.iter().filter(|(at, _, _)| *at >= after).all(|(_, _, p)| p.iter().all(|&b| b == 0xFF)));
    assert!(h.sent.iter().filter(|(at, _, _)| *at >= after).all(|(_, _, p)| p.iter().all(|&b| b == 0xFF)));
    // The human's leg goes; its figures stay for the end-of-call line.
    h.core.remove_leg(h.now, HUMAN);
    let stats = h.core.stats();
    let human_rtp = stats.human_rtp.expect("human leg figures kept");
    assert_eq!(human_rtp.packets, 150, "{human_rtp:?}");
    assert_eq!(stats.rtp.packets, 200);
    h.drain();
    let before = h.human.len();
    h.run_to(ms(5000));
    assert_eq!(h.human.len(), before, "nothing sent on a removed leg");
}

#[test]
fn the_agents_audio_is_cut_at_the_bridge_and_its_late_audio_never_played() {
    let mut h = Harness::with_core(config(talk()), caller_leg(Codec::Pcmu));
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x11, 2000));
    h.run_to(ms(500));
    assert_eq!(h.core.agent_audio_queued(), ms(1500), "what is left of the 2 s item");
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    h.drain();
    assert_eq!(h.core.agent_audio_queued(), Duration::ZERO, "flushed at the bridge");
    // What the caller heard of item 1 is what the model is told it said (the pacer sent 25
    // frames by 500 ms, 480 ms of them after the first slot).
    let truncates = h.truncates();
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    assert_eq!(truncates[0].0, "item_1");
    let heard = h.audio_ms_before(0x11, ms(500)) as u32;
    assert_eq!(truncates[0].1, heard);
    // Audio of the interrupted response, and of a new one, while bridged: never played.
    h.at(ms(600), delta("resp_1", "item_1", 0x11, 500));
    h.at(ms(700), created("resp_2"));
    h.at(ms(700), delta("resp_2", "item_2", 0x22, 1000));
    h.run_to(ms(2500));
    assert_eq!(h.audio_ms_before(0x11, ms(2500)) as u32, heard, "nothing of item 1 after the bridge");
    assert!(h.audio_packets(0x22).is_empty(), "agent audio during the bridge is dropped");
    assert!(
        h.human.iter().all(|(_, _, p)| !p.contains(&0x22) && !p.contains(&0x11)),
        "the human never hears the agent"
    );
    // Back with the agent: item 2 is truncated to what was heard of it, nothing.
    h.core.unbridge(h.now);
    h.drain();
    assert_eq!(h.truncates().last().unwrap(), &("item_2".to_owned(), 0));
    h.run_to(ms(3000));
    assert!(h.audio_packets(0x22).is_empty());
}

#[test]
fn the_humans_rtp_timeout_reports_the_leg_lost_once_and_the_call_goes_on() {
    let core = CoreConfig { rtp_timeout: Duration::from_secs(2), ..config(talk()) };
    let mut h = Harness::with_core(core, caller_leg(Codec::Pcmu));
    let mut caller = Phone::new(Codec::Pcmu, 0xCA11);
    let mut human = Phone::new(Codec::Pcmu, 0x4855);
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    talk_both(&mut h, &mut caller, &mut human, ms(0), ms(1000));
    // The human's phone goes quiet; the caller's goes on.
    let mut at = ms(1000);
    while at < ms(6000) {
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        at += PTIME;
    }
    let lost: Vec<_> = h.outputs.iter().filter(|(_, o)| matches!(o, Output::LegLost(_))).collect();
    assert_eq!(lost.len(), 1, "reported once");
    assert_eq!(lost[0].1, Output::LegLost(HUMAN));
    assert!(
        lost[0].0 >= h.start + ms(2980) && lost[0].0 <= h.start + ms(3020),
        "at the timeout: {:?}",
        lost[0].0 - h.start
    );
    assert!(h.ended().is_none(), "the human's silence does not end the call");
    // The human's phone comes back for a moment (RTP resumes), then goes quiet again: reported
    // again, once.
    h.run_to(ms(6000));
    let packet = human.tone_packet(HUMAN_TONE);
    h.core.handle_rtp(h.now, HUMAN, human_addr(), &packet);
    h.drain();
    let mut at = ms(6000);
    while at < ms(9000) {
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        at += PTIME;
    }
    let lost: Vec<_> = h.outputs.iter().filter(|(_, o)| matches!(o, Output::LegLost(_))).map(|(at, _)| *at).collect();
    assert_eq!(lost.len(), 2);
    assert!(lost[1] >= h.start + ms(7980) && lost[1] <= h.start + ms(8020), "{:?}", lost[1] - h.start);
    // The transfer logic removes the leg: unbridged, the caller is back with the model.
    h.core.remove_leg(h.now, HUMAN);
    assert!(!h.core.is_bridged());
    let mut at = ms(9000);
    while at < ms(10_000) {
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        at += PTIME;
    }
    assert!(appends_between(&h, ms(9000), ms(10_000)) >= 49);
    // The caller's own timeout still ends the call.
    h.run_to(ms(12_500));
    assert_eq!(h.ended().map(|(_, end)| end), Some(CallEnd::RtpTimeout));
}

/// PCMU both ways relays the payload bytes as they are: each caller packet's unique byte is
/// found again in the one human packet that carried it, so the added delay is counted exactly.
fn marked_packet(phone: &mut Phone, index: u32) -> Vec<u8> {
    phone.packet(&[(index % 200 + 20) as u8; 160])
}

/// The frames between each caller packet's arrival and the human packet that carried it.
fn relay_delays(h: &Harness, arrivals: &[(Instant, u8)]) -> Vec<u32> {
    arrivals
        .iter()
        .filter_map(|(arrived, marker)| {
            let sent =
                h.human.iter().find(|(at, _, p)| at >= arrived && p[0] == *marker && p.iter().all(|b| b == marker));
            sent.map(|(at, _, _)| ((*at - *arrived).as_micros() / PTIME.as_micros()) as u32)
        })
        .collect()
}

#[test]
fn relayed_audio_waits_less_than_one_frame_and_bursts_are_trimmed_back() {
    let mut h = Harness::with_core(config(talk()), caller_leg(Codec::Pcmu));
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    let mut caller = Phone::new(Codec::Pcmu, 0xCA11);
    // 100 packets in step, 13 ms out of phase with the pacer.
    let mut arrivals = Vec::new();
    for index in 0..100u32 {
        h.run_to(ms(13) + PTIME * index);
        let packet = marked_packet(&mut caller, index);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        arrivals.push((h.now, (index % 200 + 20) as u8));
    }
    h.run_to(ms(2100));
    let delays = relay_delays(&h, &arrivals);
    assert_eq!(delays.len(), 100, "every packet relayed once");
    assert!(delays.iter().all(|&d| d == 0), "sent at the next slot, under one frame: {delays:?}");
    assert_eq!(h.core.stats().relay_frames_dropped, 0);

    // A burst of five packets at once (a network stall released), then in step again: the
    // backlog is trimmed back within a window, not kept for the rest of the call.
    let mut arrivals = Vec::new();
    h.run_to(ms(2113));
    for index in 100..105u32 {
        let packet = marked_packet(&mut caller, index);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
    }
    for index in 105..250u32 {
        h.run_to(ms(2113) + PTIME * (index - 104));
        let packet = marked_packet(&mut caller, index);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        arrivals.push((h.now, (index % 200 + 20) as u8));
    }
    h.run_to(ms(5500));
    let delays = relay_delays(&h, &arrivals);
    let window = RELAY_TRIM_WINDOW as usize;
    assert!(delays[..10].iter().all(|&d| d >= 3), "the burst's backlog delays what follows: {delays:?}");
    assert!(delays[2 * window..].iter().all(|&d| d <= 1), "trimmed back to at most one frame: {delays:?}");
    let dropped = h.core.stats().relay_frames_dropped;
    eprintln!("relay delay in frames after a burst of 5: {delays:?}; dropped {dropped}");
    assert!((3..=5).contains(&dropped), "only the excess is dropped: {dropped}");
}

#[test]
fn a_peer_sending_faster_than_real_time_cannot_grow_the_relay_queue() {
    let mut h = Harness::with_core(config(talk()), caller_leg(Codec::Pcmu));
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    let mut caller = Phone::new(Codec::Pcmu, 0xCA11);
    // Three packets every 20 ms for 4 s.
    for index in 0..600u32 {
        h.run_to(ms(u64::from(index / 3) * 20 + 5));
        let packet = marked_packet(&mut caller, index);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        let queued = h.core.legs.iter().find(|leg| leg.id == HUMAN).unwrap().pacer.queued_frames();
        assert!(queued <= RELAY_MAX_QUEUED_FRAMES, "{queued} frames queued");
    }
    h.run_to(ms(4100));
    // One frame per slot went out; the rest was dropped, not kept.
    let sent = h.human.len() as u64;
    let dropped = h.core.stats().relay_frames_dropped;
    assert!((195..=215).contains(&sent), "{sent} packets");
    assert!(dropped >= 600 - sent - RELAY_MAX_QUEUED_FRAMES as u64, "{dropped} dropped");
}

#[test]
fn keys_while_bridged_are_reported_not_told_to_the_model_and_the_agent_keeps_quiet() {
    let mut talk = talk();
    talk.control.idle_timeout = Some(Duration::from_secs(5));
    talk.control.max_call = Some(Duration::from_secs(20));
    let mut h = Harness::with_core(config(talk), caller_leg(Codec::Pcmu));
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    // A key from the human and one from the caller.
    for (n, end) in [(0u16, false), (1, true), (2, true), (3, true)] {
        let header = RtpHeader { payload_type: 101, marker: n == 0, sequence: 500 + n, timestamp: 4_000, ssrc: 0x4855 };
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, &[5, if end { 0x8A } else { 0x0A }, 0x01, 0xE0]);
        h.run_to(ms(100 + u64::from(n) * 20));
        h.core.handle_rtp(h.now, HUMAN, human_addr(), &packet);
        h.drain();
    }
    h.key(ms(300), 8_000, 9);
    h.run_to(ms(2000));
    let keys: Vec<LegId> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Dtmf { leg, .. } => Some(*leg),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [HUMAN, CALLER]);
    assert!(h.user_texts().is_empty(), "keys are not told to the model while bridged");
    // No idle prompt, no goodbye at the time limit while bridged (30 s: past both).
    h.run_to(ms(30_000));
    assert!(h.creates().is_empty(), "the agent asked for nothing: {:?}", h.creates());
    assert!(h.ended().is_none());
    // Back with the agent: the time limit is past, the goodbye comes now.
    h.core.unbridge(h.now);
    h.run_to(ms(30_100));
    let creates = h.creates();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0].1.as_deref(), Some("evt_goodbye"));
}

#[test]
fn the_callers_taps_hold_what_the_caller_said_and_heard_from_the_human() {
    let core = CoreConfig { taps: true, ..config(talk()) };
    let mut h = Harness::with_core(core, caller_leg(Codec::Pcmu));
    let mut caller = Phone::new(Codec::Pcmu, 0xCA11);
    let mut human = Phone::new(Codec::G722, 0x4855);
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::G722));
    h.core.bridge(h.now, CALLER, HUMAN);
    talk_both(&mut h, &mut caller, &mut human, ms(0), ms(2000));
    h.run_to(ms(2000));
    let taps: Vec<&Tap> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Tap(tap) => Some(tap),
            _ => None,
        })
        .collect();
    assert!(taps.iter().all(|tap| tap.leg == CALLER), "the recorder's taps are the caller's leg only");
    let pcm = |direction| -> Vec<i16> {
        taps.iter().filter(|t| t.direction == direction).flat_map(|t| t.pcm.iter().copied()).collect()
    };
    let rate = taps.first().map_or(0, |tap| tap.rate);
    assert!(taps.iter().all(|tap| tap.rate == rate), "one rate for the caller's taps");
    let said = tone_of(&pcm(TapDirection::FromLeg), rate);
    let heard = tone_of(&pcm(TapDirection::ToLeg), rate);
    assert!((said - CALLER_TONE).abs() <= 20.0, "left channel: {said} Hz");
    assert!((heard - HUMAN_TONE).abs() <= 20.0, "right channel: the human, {heard} Hz");
}

#[test]
fn an_end_after_playout_while_bridged_does_not_wait_for_the_live_relay() {
    let (mut h, _, _) = bridged_call(Codec::Pcmu, Codec::Pcmu);
    // The human's last packet waits in the caller's pacer for its slot.
    assert_eq!(h.core.legs.iter().find(|leg| leg.id == CALLER).unwrap().pacer.queued_frames(), 1);
    h.core.end_after_playout(CallEnd::AgentHangup);
    h.drain();
    assert_eq!(h.ended(), Some((h.now, CallEnd::AgentHangup)));
}

#[test]
fn legs_with_different_ptimes_get_whole_frames_of_their_own() {
    // The human's answer asked for 30 ms PCMA packets; the caller sends 20 ms PCMU.
    let (h, _, _) = bridged_call_with(Codec::Pcmu, LegConfig { ptime: ms(30), ..human_leg(Codec::Pcma) });
    let (from, to) = (h.start + ms(1000), h.start + ms(3000));
    let heard = payloads_between(&h.human, from, to);
    assert!((66..=67).contains(&heard.len()), "one packet per 30 ms: {}", heard.len());
    assert!(heard.iter().all(|p| p.len() == 240), "30 ms of PCMA each");
    let stamps: Vec<u32> = h.human.iter().map(|(_, header, _)| header.timestamp).collect();
    assert!(stamps.windows(2).all(|pair| pair[1].wrapping_sub(pair[0]) == 240), "continuous timestamps");
    let tone = tone_of(&decode(Codec::Pcma, &heard), 8000);
    assert!((tone - CALLER_TONE).abs() <= 20.0, "human heard {tone} Hz");
    let tone = tone_of(&decode(Codec::Pcmu, &payloads_between(&h.sent, from, to)), 8000);
    assert!((tone - HUMAN_TONE).abs() <= 20.0, "caller heard {tone} Hz");
}

#[test]
fn an_ai_outage_while_bridged_plays_no_comfort_over_the_human_and_gives_up_only_after_the_unbridge() {
    let mut core = config(talk());
    core.resilience.policy = Some(crate::call::reconnect::ReconnectPolicy {
        initial_delay: ms(200),
        max_delay: ms(2000),
        give_up_after: Duration::from_secs(5),
    });
    let mut h = Harness::with_core(core, caller_leg(Codec::Pcmu));
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::Pcmu));
    h.core.bridge(h.now, CALLER, HUMAN);
    let mut caller = Phone::new(Codec::Pcmu, 0xCA11);
    let mut human = Phone::new(Codec::Pcmu, 0x4855);
    let mut at = ms(0);
    while at < ms(30_000) {
        if at == ms(1000) {
            h.run_to(at);
            h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("connection reset".into()));
            h.drain();
        }
        h.run_to(at);
        let packet = caller.tone_packet(CALLER_TONE);
        h.core.handle_rtp(h.now, CALLER, caller_addr(), &packet);
        h.drain();
        h.run_to(at + ms(7));
        let packet = human.packet(&[0x55; 160]);
        h.core.handle_rtp(h.now, HUMAN, human_addr(), &packet);
        h.drain();
        at += PTIME;
    }
    assert!(h.outputs.iter().any(|(_, o)| matches!(o, Output::Reconnect)), "the shell is asked to reconnect");
    // The caller heard the human and silence before the human's first packet: no comfort pulse.
    assert!(h.sent.iter().all(|(_, _, p)| p.iter().all(|&b| b == 0x55) || p.iter().all(|&b| b == 0xFF)));
    assert!(h.sent.iter().filter(|(_, _, p)| p[0] == 0x55).count() >= 1490);
    assert!(h.ended().is_none(), "no give-up while the caller talks with the human");
    // Back with the agent, still no AI: the give-up (its deadline long past) ends the call after
    // the give-up announcement.
    h.core.unbridge(h.now);
    h.run_to(ms(40_000));
    assert!(matches!(h.ended(), Some((_, CallEnd::AgentDisconnected(_)))), "{:?}", h.ended());
}

#[test]
fn legs_are_bounded_and_the_callers_cannot_be_added_or_removed() {
    let mut h = Harness::with_core(config(talk()), caller_leg(Codec::Pcmu));
    h.core.add_leg(h.now, CALLER, human_leg(Codec::Pcma));
    h.core.remove_leg(h.now, CALLER);
    assert_eq!(h.core.legs.len(), 1);
    assert_eq!(h.core.legs[0].codec, Codec::Pcmu);
    for id in 1..=10u8 {
        h.core.add_leg(h.now, LegId(id), human_leg(Codec::Pcma));
    }
    assert_eq!(h.core.legs.len(), MAX_LEGS);
    // Adding an existing id replaces that leg.
    h.core.add_leg(h.now, HUMAN, human_leg(Codec::G722));
    assert_eq!(h.core.legs.len(), MAX_LEGS);
    assert_eq!(h.core.legs.iter().find(|leg| leg.id == HUMAN).unwrap().codec, Codec::G722);
    // A bridge with a missing leg, or a leg with itself, is refused.
    h.core.bridge(h.now, CALLER, LegId(9));
    h.core.bridge(h.now, HUMAN, HUMAN);
    assert!(!h.core.is_bridged());
}
