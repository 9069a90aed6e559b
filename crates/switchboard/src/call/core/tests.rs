//! The call core on a virtual clock: real codecs, real Realtime events (parsed from the wire
//! JSON), real RTP packets; time only moves when the test says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_media::Codec;
use switchboard_media::framing::ModelAudio;
use switchboard_media::latch::LatchConfig;
use switchboard_media::opus_codec::OpusEncoderSettings;
use switchboard_media::rtp::{self, RtpHeader, StreamStart};
use switchboard_realtime::events::{AudioDeltaEvent, AudioFormat, ClientEvent, ServerEvent};

use super::*;

const PTIME: Duration = Duration::from_millis(20);
const PCMU_SILENCE: u8 = 0xFF;
const PT_PCMU: u8 = 0;
const PT_DTMF: u8 = 101;

/// The fixtures every call-core test file starts from (the others override what they need).
pub(super) fn caller_addr() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

pub(super) fn core_config() -> CoreConfig {
    CoreConfig {
        rtp_timeout: Duration::from_secs(10),
        ping_interval: Duration::from_secs(10),
        watchdog: Duration::from_secs(30),
        max_queued_audio: Duration::from_secs(60),
        greeting: Some("Hello, how can I help?".into()),
        apology: Some("Sorry".into()),
        apology_min_interval: Duration::from_secs(30),
        model_output: AudioFormat::Pcmu,
        taps: false,
        talk: super::agent_control::TalkConfig::default(),
        resilience: Default::default(),
    }
}

pub(super) fn leg_config() -> LegConfig {
    LegConfig {
        codec: Codec::Pcmu,
        payload_type: PT_PCMU,
        telephone_event: Some(PT_DTMF),
        remote: caller_addr(),
        may_send: true,
        ptime: PTIME,
        strict_rtp: LatchConfig::default(),
        reorder_wait: Duration::from_millis(60),
        opus: OpusEncoderSettings::default(),
        model_input: ModelAudio::G711Passthrough,
        model_output: ModelAudio::G711Passthrough,
        stream: StreamStart { ssrc: 0x1234_5678, sequence: 65_500, timestamp: u32::MAX - 5_000 },
        jitter_max: Duration::from_millis(60),
        rtcp_interval: Duration::ZERO,
        srtp: None,
    }
}

fn server_event(value: serde_json::Value) -> ServerEvent {
    ServerEvent::from_json(&value.to_string()).unwrap()
}

fn response_created(id: &str) -> ServerEvent {
    server_event(
        json!({"type":"response.created","event_id":"e","response":{"id":id,"status":"in_progress","output":[]}}),
    )
}

fn response_done(id: &str, status: &str) -> ServerEvent {
    server_event(json!({"type":"response.done","event_id":"e","response":{"id":id,"status":status,"output":[]}}))
}

fn speech_started() -> ServerEvent {
    server_event(
        json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":0,"item_id":"item_user"}),
    )
}

fn audio_done(response: &str, item: &str) -> ServerEvent {
    server_event(json!({"type":"response.output_audio.done","event_id":"e","response_id":response,"item_id":item,
        "output_index":0,"content_index":0}))
}

/// A delta as it comes off the wire: base64 JSON parsed by the realtime crate.
fn delta(response: &str, item: &str, audio: &[u8]) -> ServerEvent {
    let event = ServerEvent::OutputAudioDelta(AudioDeltaEvent {
        event_id: "e".into(),
        response_id: response.into(),
        item_id: item.into(),
        output_index: 0,
        content_index: 0,
        delta: audio.to_vec(),
    });
    ServerEvent::from_json(&event.to_json().unwrap()).unwrap()
}

/// One packet the core sent, with the virtual time it left.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    header: RtpHeader,
    payload: Vec<u8>,
}

/// The core, the virtual clock and everything that came out of it.
struct Harness {
    core: CallCore,
    start: Instant,
    now: Instant,
    sent: Vec<Sent>,
    realtime: Vec<(Instant, ClientEvent)>,
    outputs: Vec<Output>,
    caller_sequence: u16,
    caller_timestamp: u32,
}

impl Harness {
    fn new(config: CoreConfig) -> Harness {
        let start = Instant::now();
        let core = CallCore::new(start, config, leg_config());
        let mut h = Harness {
            core,
            start,
            now: start,
            sent: Vec::new(),
            realtime: Vec::new(),
            outputs: Vec::new(),
            caller_sequence: 1000,
            caller_timestamp: 80_000,
        };
        h.core.handle_dialog(start, DialogInput::Confirmed);
        h.drain();
        h
    }

    fn at(&self, secs: f64) -> Instant {
        self.start + Duration::from_secs_f64(secs)
    }

    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            assert_eq!(t.leg, CALLER);
            assert_eq!(t.destination, caller_addr());
            let (header, payload) = rtp::parse_rtp(&t.packet).unwrap();
            self.sent.push(Sent { at: self.now, header, payload: payload.to_vec() });
        }
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Realtime(event) => self.realtime.push((self.now, *event)),
                other => self.outputs.push(other),
            }
        }
    }

    /// Runs every timer due up to `until`, in order, as the shell would.
    fn advance_to(&mut self, until: Instant) {
        while let Some(due) = self.core.poll_timeout() {
            if due > until {
                break;
            }
            self.now = due.max(self.now);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = until.max(self.now);
    }

    fn realtime_event(&mut self, event: ServerEvent) {
        self.core.handle_realtime(self.now, event);
        self.drain();
    }

    /// The next caller packet (20 ms of a tone), built but not delivered.
    fn caller_packet(&mut self) -> Vec<u8> {
        let header = RtpHeader {
            payload_type: PT_PCMU,
            marker: false,
            sequence: self.caller_sequence,
            timestamp: self.caller_timestamp,
            ssrc: 0xCA11_E400,
        };
        self.caller_sequence = self.caller_sequence.wrapping_add(1);
        self.caller_timestamp = self.caller_timestamp.wrapping_add(160);
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, &[0x42; 160]);
        packet
    }

    fn deliver(&mut self, packet: &[u8]) {
        self.core.handle_rtp(self.now, CALLER, caller_addr(), packet);
        self.drain();
    }

    fn dtmf(&mut self, timestamp: u32, event: u8, end: bool, duration: u16) {
        let header = RtpHeader {
            payload_type: PT_DTMF,
            marker: false,
            sequence: self.caller_sequence,
            timestamp,
            ssrc: 0xCA11_E400,
        };
        self.caller_sequence = self.caller_sequence.wrapping_add(1);
        let [hi, lo] = duration.to_be_bytes();
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, &[event, if end { 0x8A } else { 0x0A }, hi, lo]);
        self.deliver(&packet);
    }

    fn ended(&self) -> Option<&CallEnd> {
        self.outputs.iter().find_map(|o| match o {
            Output::Ended(end) => Some(end),
            _ => None,
        })
    }

    fn truncates(&self) -> Vec<(Instant, String, u32)> {
        self.realtime
            .iter()
            .filter_map(|(at, e)| match e {
                ClientEvent::ConversationItemTruncate { item_id, audio_end_ms, .. } => {
                    Some((*at, item_id.clone(), *audio_end_ms))
                }
                _ => None,
            })
            .collect()
    }

    /// Bytes of `marker` (one item's audio) sent before `before`. A frame carries one item's
    /// audio (its last one padded with silence), so its first byte names the item.
    fn sent_bytes_of(&self, marker: u8, before: Instant) -> usize {
        let sent = self.sent.iter().take_while(|s| s.at <= before).filter(|s| s.payload.first() == Some(&marker));
        sent.map(|s| s.payload.iter().filter(|&&b| b == marker).count()).sum()
    }
}

/// One agent response: its audio (every byte `marker`) arrives in bursts of deltas of odd sizes,
/// much faster than real time.
struct Response {
    id: &'static str,
    item: &'static str,
    marker: u8,
    audio_ms: usize,
    starts: f64,
    /// Barge-in this long after the response starts.
    barge_in_after: Option<f64>,
    /// Seconds between deltas.
    delta_gap: f64,
}

/// Plays a scripted 10-minute call. Each script step is a (time, action) in seconds.
#[derive(Debug)]
enum Step {
    CallerPacket,
    Delta { response: usize, bytes: usize },
    AudioDone(usize),
    ResponseCreated(usize),
    ResponseDone(usize),
    SpeechStarted,
    Dtmf { timestamp: u32, event: u8, end: bool, duration: u16 },
    Pong,
}

#[test]
fn a_ten_minute_call_with_bursts_loss_reordering_two_barge_ins_and_a_greeting() {
    let wall = Instant::now();
    let mut h = Harness::new(core_config());
    // The agent speaks first: the greeting is the very first event sent.
    assert!(matches!(h.realtime.first(), Some((_, ClientEvent::ResponseCreate { .. }))), "{:?}", h.realtime.first());

    let mut responses = vec![
        // The greeting, interrupted 2.5 s in.
        Response {
            id: "resp_g",
            item: "item_g",
            marker: 0x10,
            audio_ms: 6000,
            starts: 0.3,
            barge_in_after: Some(2.5),
            delta_gap: 0.002,
        },
        Response {
            id: "resp_1",
            item: "item_1",
            marker: 0x21,
            audio_ms: 7000,
            starts: 20.0,
            barge_in_after: None,
            delta_gap: 0.002,
        },
        // Streamed at about 4x real time (154 ms of audio every 40 ms) and interrupted 5.3 s in,
        // while the server is still streaming it: the rest of its deltas are dropped.
        Response {
            id: "resp_2",
            item: "item_2",
            marker: 0x32,
            audio_ms: 30_000,
            starts: 61.7,
            barge_in_after: Some(5.3),
            delta_gap: 0.04,
        },
    ];
    // Then one response a minute until the end: bursts, then gaps.
    let markers = [0x43u8, 0x54, 0x65, 0x76, 0x07, 0x18, 0x29, 0x3A];
    let ids = ["r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10"];
    let items = ["i3", "i4", "i5", "i6", "i7", "i8", "i9", "i10"];
    for n in 0..8 {
        responses.push(Response {
            id: ids[n],
            item: items[n],
            marker: markers[n],
            audio_ms: 4000 + 1000 * n,
            starts: 120.0 + 55.0 * n as f64,
            barge_in_after: None,
            delta_gap: 0.002,
        });
    }

    let mut script: Vec<(f64, Step)> = Vec::new();
    // The caller's RTP: every 20 ms, one in 47 lost, one in 13 swapped with its successor.
    for n in 0..30_000u32 {
        script.push((0.02 * f64::from(n) + 0.001, Step::CallerPacket));
    }
    for (index, r) in responses.iter().enumerate() {
        script.push((r.starts, Step::ResponseCreated(index)));
        // 8 bytes per ms of PCMU, in deltas of 1,234 bytes (odd: frames straddle deltas), in
        // bursts far faster than real time.
        let total = r.audio_ms * 8;
        let mut offset = 0;
        let mut t = r.starts + 0.01;
        while offset < total {
            let bytes = 1234.min(total - offset);
            script.push((t, Step::Delta { response: index, bytes }));
            offset += bytes;
            t += r.delta_gap;
        }
        script.push((t, Step::AudioDone(index)));
        script.push((t + 0.001, Step::ResponseDone(index)));
        if let Some(after) = r.barge_in_after {
            script.push((r.starts + after, Step::SpeechStarted));
        }
    }
    // DTMF: '5' with three end packets, then '#' whose end packets are all lost, then '9'.
    for (t, step) in [
        (300.0, Step::Dtmf { timestamp: 7_000, event: 5, end: false, duration: 160 }),
        (300.05, Step::Dtmf { timestamp: 7_000, event: 5, end: false, duration: 560 }),
        (300.1, Step::Dtmf { timestamp: 7_000, event: 5, end: true, duration: 800 }),
        (300.101, Step::Dtmf { timestamp: 7_000, event: 5, end: true, duration: 800 }),
        (300.102, Step::Dtmf { timestamp: 7_000, event: 5, end: true, duration: 800 }),
        (301.0, Step::Dtmf { timestamp: 9_000, event: 11, end: false, duration: 400 }),
        (302.0, Step::Dtmf { timestamp: 11_000, event: 9, end: true, duration: 640 }),
        (302.001, Step::Dtmf { timestamp: 11_000, event: 9, end: true, duration: 640 }),
    ] {
        script.push((t, step));
    }
    // The server answers our pings.
    for n in 0..60u32 {
        script.push((10.0 * f64::from(n) + 0.5, Step::Pong));
    }
    script.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut held: Option<Vec<u8>> = None;
    let mut caller_packets = 0u32;
    let mut lost = 0u32;
    let mut barge_ins: Vec<(Instant, usize)> = Vec::new();
    let mut last_response: Option<usize> = None;
    let mut first_delta_at: BTreeMap<usize, Instant> = BTreeMap::new();
    for (t, step) in script {
        let at = h.at(t);
        h.advance_to(at);
        match step {
            Step::CallerPacket => {
                caller_packets += 1;
                let packet = h.caller_packet();
                if caller_packets.is_multiple_of(47) {
                    lost += 1;
                } else if caller_packets.is_multiple_of(13) {
                    held = Some(packet);
                } else {
                    h.deliver(&packet);
                    if let Some(late) = held.take() {
                        h.deliver(&late);
                    }
                }
            }
            Step::ResponseCreated(index) => {
                last_response = Some(index);
                h.realtime_event(response_created(responses[index].id));
            }
            Step::Delta { response, bytes } => {
                let r = &responses[response];
                first_delta_at.entry(response).or_insert(h.now);
                h.realtime_event(delta(r.id, r.item, &vec![r.marker; bytes]));
            }
            Step::AudioDone(index) => h.realtime_event(audio_done(responses[index].id, responses[index].item)),
            Step::ResponseDone(index) => h.realtime_event(response_done(responses[index].id, "completed")),
            Step::SpeechStarted => {
                barge_ins.push((h.now, last_response.unwrap()));
                h.realtime_event(speech_started());
            }
            Step::Dtmf { timestamp, event, end, duration } => h.dtmf(timestamp, event, end, duration),
            Step::Pong => h.core.handle_realtime_traffic(h.now),
        }
    }
    h.advance_to(h.at(600.0));
    assert!(h.ended().is_none(), "{:?}", h.ended());
    eprintln!("10-minute call simulated in {:?}", wall.elapsed());

    // Continuous outbound stream: one packet per 20 ms slot, sequence +1 and timestamp +160
    // each time, across both wraps; the marker only on the first audio after silence or a flush.
    assert_eq!(h.sent.len(), 30_001, "one packet per slot for 600 s, the first at 0");
    for pair in h.sent.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.header.sequence, a.header.sequence.wrapping_add(1), "sequence at {:?}", b.at - h.start);
        assert_eq!(b.header.timestamp, a.header.timestamp.wrapping_add(160), "timestamp at {:?}", b.at - h.start);
        assert_eq!(b.header.ssrc, a.header.ssrc);
        assert_eq!(b.at - a.at, PTIME, "paced on the slot");
        let audio = |s: &Sent| s.payload[0] != PCMU_SILENCE;
        let new_item = a.payload[0] != b.payload[0];
        if audio(b) && (!audio(a) || new_item) {
            // A new item always follows silence or a flush here; marker set.
            assert!(b.header.marker || !audio(a), "talkspurt start at {:?}", b.at - h.start);
        }
        if audio(b) && audio(a) && !new_item {
            assert!(!b.header.marker, "no marker inside a talkspurt at {:?}", b.at - h.start);
        }
    }

    // Two barge-ins, each truncating exactly what was sent of the item being played, and not
    // one byte of agent audio after speech_started until the next response's audio.
    let truncates = h.truncates();
    assert_eq!(truncates.len(), 2, "{truncates:?}");
    for ((at, index), (truncated_at, item, audio_end_ms)) in barge_ins.iter().zip(&truncates) {
        let r = &responses[*index];
        assert_eq!(truncated_at, at, "the truncate goes out with the barge-in");
        assert_eq!(item, r.item);
        let sent_ms = h.sent_bytes_of(r.marker, *at) / 8;
        assert_eq!(*audio_end_ms as usize, sent_ms, "{}: audio_end_ms is what was sent", r.item);
        assert!(sent_ms > 0 && sent_ms < r.audio_ms, "{}: interrupted mid-item ({sent_ms} ms)", r.item);
        let next_audio = first_delta_at.get(&(index + 1)).copied().unwrap_or(h.now);
        let after: Vec<&Sent> = h.sent.iter().filter(|s| s.at > *at && s.at < next_audio).collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|s| s.payload.iter().all(|&b| b == PCMU_SILENCE)),
            "{}: only silence after speech_started",
            r.item
        );
        assert_eq!(h.sent_bytes_of(r.marker, h.now), h.sent_bytes_of(r.marker, *at), "late deltas dropped");
    }
    // Uninterrupted responses play in full, to the byte.
    for r in responses.iter().filter(|r| r.barge_in_after.is_none()) {
        assert_eq!(h.sent_bytes_of(r.marker, h.now), r.audio_ms * 8, "{} played in full", r.item);
    }

    // Inbound: every packet reaches the model once, in order, lost ones concealed: the model
    // gets exactly the call's duration of audio.
    let appended: usize = h
        .realtime
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::InputAudioBufferAppend { audio, .. } => Some(audio.len()),
            _ => None,
        })
        .sum();
    assert!(lost > 600);
    // The 8 telephone-event packets share the stream's sequence space (RFC 4733 §2.1): the
    // audio sees them as a gap and conceals it too.
    let dtmf_packets = 8;
    assert_eq!(
        appended,
        (caller_packets as usize + dtmf_packets) * 160,
        "{lost} lost packets concealed, reordered ones in order"
    );

    // DTMF: once per event, the one whose end packets were lost included.
    let digits: Vec<(char, Duration)> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dtmf { digit, duration, .. } => Some((digit.as_char(), *duration)),
            _ => None,
        })
        .collect();
    assert_eq!(
        digits,
        [('5', Duration::from_millis(100)), ('#', Duration::from_millis(50)), ('9', Duration::from_millis(80))]
    );
    // Pings every 10 s, answered: the watchdog never fired.
    assert!(h.outputs.iter().filter(|o| matches!(o, Output::Ping)).count() >= 50);

    eprintln!("simulated and checked in {:?}", wall.elapsed());
}

#[test]
fn a_caller_bye_ends_the_call_without_our_bye() {
    let mut h = Harness::new(core_config());
    h.core.handle_dialog(h.now, DialogInput::RemoteBye);
    h.drain();
    assert_eq!(h.ended(), Some(&CallEnd::CallerHangup));
    assert!(!h.outputs.contains(&Output::Hangup));
    assert_eq!(h.core.poll_timeout(), None, "nothing more to do");
}

#[test]
fn no_rtp_for_the_timeout_hangs_up() {
    let mut h = Harness::new(core_config());
    let packet = h.caller_packet();
    h.deliver(&packet);
    h.advance_to(h.at(9.9));
    assert!(h.ended().is_none());
    h.advance_to(h.at(10.1));
    assert_eq!(h.ended(), Some(&CallEnd::RtpTimeout));
    assert!(h.outputs.contains(&Output::Hangup), "our end: BYE");
    let sent = h.sent.len();
    h.advance_to(h.at(20.0));
    assert_eq!(h.sent.len(), sent, "nothing sent after the end");
}

#[test]
fn a_silent_realtime_server_trips_the_watchdog_after_pings() {
    let mut h = Harness::new(core_config());
    // The caller keeps talking, so only the Realtime side is silent.
    for n in 0..1_600u32 {
        h.advance_to(h.at(0.02 * f64::from(n)));
        let packet = h.caller_packet();
        h.deliver(&packet);
        if h.ended().is_some() {
            break;
        }
    }
    assert_eq!(h.ended(), Some(&CallEnd::AgentWatchdog(Duration::from_secs(30))));
    assert!(h.outputs.iter().filter(|o| matches!(o, Output::Ping)).count() >= 2);
    assert!(h.outputs.contains(&Output::Hangup));
}

#[test]
fn fatal_errors_end_the_call_and_others_do_not() {
    let mut h = Harness::new(core_config());
    h.realtime_event(server_event(
        json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"x"}}),
    ));
    assert!(h.ended().is_none());
    h.realtime_event(server_event(
        json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"session_expired","message":"over"}}),
    ));
    assert!(matches!(h.ended(), Some(CallEnd::AgentFatalError(why)) if why.contains("session_expired")));
}

#[test]
fn the_operator_hangs_up_with_our_bye() {
    let mut h = Harness::new(core_config());
    h.core.handle_dialog(h.now, DialogInput::OperatorHangup);
    h.drain();
    assert_eq!(h.outputs, [Output::Hangup, Output::Ended(CallEnd::Operator)]);
}

#[test]
fn a_failed_response_gets_one_apology_per_interval() {
    let mut h = Harness::new(core_config());
    let apologies = |h: &Harness| {
        h.realtime
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::ResponseCreate { event_id: Some(id), .. } if id == "evt_apology"))
            .count()
    };
    h.realtime_event(response_created("r1"));
    h.realtime_event(response_done("r1", "failed"));
    h.realtime_event(response_created("r2"));
    h.realtime_event(response_done("r2", "failed"));
    assert_eq!(apologies(&h), 1);
}

#[test]
fn agent_audio_beyond_the_queue_limit_is_dropped_not_played() {
    let mut h = Harness::new(CoreConfig { max_queued_audio: Duration::from_secs(2), ..core_config() });
    h.realtime_event(response_created("r"));
    h.realtime_event(delta("r", "i", &[0x33; 8 * 5000]));
    h.advance_to(h.at(10.0));
    assert_eq!(h.sent_bytes_of(0x33, h.now), 8 * 2000, "two seconds played");
    assert_eq!(h.core.stats().agent_frames_dropped, 150);
}

#[test]
fn nothing_is_sent_to_an_unconfirmed_peer_that_has_not_sent() {
    let start = Instant::now();
    let mut core = CallCore::new(start, core_config(), leg_config());
    for slot in 0..=50 {
        core.handle_timeout(start + PTIME * slot);
        assert_eq!(core.poll_transmit(), None, "no ACK and no RTP from the caller yet");
    }
    // The ACK: from now on the SDP's address gets the stream, and the pacer kept its clock
    // meanwhile (50 slots went by unsent).
    core.handle_dialog(start + Duration::from_secs(1), DialogInput::Confirmed);
    core.handle_timeout(start + Duration::from_millis(1020));
    let sent = core.poll_transmit().unwrap();
    let (header, _) = rtp::parse_rtp(&sent.packet).unwrap();
    let stream = leg_config().stream;
    assert_eq!(header.sequence, stream.sequence.wrapping_add(51));
    assert_eq!(header.timestamp, stream.timestamp.wrapping_add(51 * 160));
}

#[test]
fn taps_carry_both_directions_at_the_codecs_rate_on_the_call_clock() {
    let mut h = Harness::new(CoreConfig { taps: true, ..core_config() });
    for n in 0..10u32 {
        h.advance_to(h.at(0.02 * f64::from(n) + 0.001));
        let packet = h.caller_packet();
        h.deliver(&packet);
    }
    h.advance_to(h.at(0.5));
    let taps: Vec<&Tap> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Tap(tap) => Some(tap),
            _ => None,
        })
        .collect();
    let from: Vec<&&Tap> = taps.iter().filter(|t| t.direction == TapDirection::FromLeg).collect();
    let to: Vec<&&Tap> = taps.iter().filter(|t| t.direction == TapDirection::ToLeg).collect();
    assert!(from.len() >= 9, "{}", from.len());
    assert_eq!(to.len(), 26, "one per slot, silence included");
    assert!(taps.iter().all(|t| t.rate == 8000 && t.pcm.len() == 160), "20 ms of PCMU at 8 kHz");
    assert!(to.windows(2).all(|w| w[1].at - w[0].at == PTIME));
    assert_eq!(h.core.stats().taps_dropped, 0);
}

#[test]
fn taps_alone_wake_the_task_only_in_batches() {
    let mut h = Harness::new(CoreConfig { taps: true, greeting: None, ..core_config() });
    h.drain();
    assert!(!h.core.has_urgent_output());
    // The media clock paces slots with nothing else to say: ToLeg taps pile up quietly...
    let mut slots = 0;
    while !h.core.has_urgent_output() {
        let due = h.core.poll_media_timeout().unwrap();
        h.core.handle_media_timeout(due);
        slots += 1;
        assert!(slots <= super::TAP_WAKE_BATCH, "taps never wake the task");
    }
    assert_eq!(slots, super::TAP_WAKE_BATCH, "...until a batch is waiting");
    h.drain();
    assert!(!h.core.has_urgent_output());
    // Anything else wakes it at once, taps waiting or not.
    let due = h.core.poll_media_timeout().unwrap();
    h.core.handle_media_timeout(due);
    assert!(!h.core.has_urgent_output());
    h.core.handle_dialog(due, DialogInput::OperatorHangup);
    assert!(h.core.has_urgent_output());
}

/// An Opus caller whose model speaks 24 kHz PCM16, no greeting.
fn opus_core(start: Instant) -> CallCore {
    let leg = LegConfig {
        codec: Codec::Opus,
        payload_type: 111,
        model_input: ModelAudio::Pcm24k,
        model_output: ModelAudio::Pcm24k,
        ..leg_config()
    };
    let config = CoreConfig { model_output: AudioFormat::PCM24K, greeting: None, ..core_config() };
    CallCore::new(start, config, leg)
}

/// A loud 440 Hz tone as 24 kHz PCM16 bytes.
fn tone_24k(samples: i32) -> Vec<u8> {
    (0..samples)
        .flat_map(|n: i32| {
            (((f64::from(n) * 440.0 * std::f64::consts::TAU / 24_000.0).sin() * 12_000.0) as i16).to_le_bytes()
        })
        .collect()
}

#[test]
fn an_opus_call_with_24_khz_model_audio_truncates_to_the_frames_really_sent() {
    let start = Instant::now();
    let mut h = Harness { core: opus_core(start), ..Harness::new(core_config()) };
    h.start = start;
    h.now = start;
    h.sent.clear();
    h.realtime.clear();
    h.core.handle_dialog(start, DialogInput::Confirmed);
    let silence_len = Codec::Opus.silence_frame(20).len();

    // 3 s of a loud 440 Hz tone as 24 kHz PCM16, in deltas of 4,801 bytes (an odd size: a
    // sample split across deltas), all at once.
    let tone = tone_24k(72_000);
    h.advance_to(h.at(0.1));
    h.realtime_event(response_created("r"));
    for chunk in tone.chunks(4801) {
        h.realtime_event(delta("r", "item_opus", chunk));
    }
    let barge_in = h.at(1.234);
    h.advance_to(barge_in);
    h.realtime_event(speech_started());
    h.advance_to(h.at(2.0));

    let is_speech = |s: &Sent| s.payload.len() > silence_len;
    let sent_speech = h.sent.iter().filter(|s| s.at <= barge_in && is_speech(s)).count();
    let truncates = h.truncates();
    assert_eq!(truncates.len(), 1);
    assert_eq!(truncates[0].2 as usize, sent_speech * 20, "audio_end_ms = the Opus frames sent");
    assert!(sent_speech > 50, "{sent_speech} frames of the tone went out");
    assert!(h.sent.iter().filter(|s| s.at > barge_in).all(|s| !is_speech(s)), "only silence after speech_started");
    for pair in h.sent.windows(2) {
        assert_eq!(pair[1].header.timestamp, pair[0].header.timestamp.wrapping_add(960), "48 kHz clock");
        assert_eq!(pair[1].header.sequence, pair[0].header.sequence.wrapping_add(1));
    }
}

/// Opus is encoded by the call's task just ahead of its slot, never on the media clock's path:
/// a 3 s delta leaves at most `ENCODE_AHEAD_HIGH` frames encoded, the clock's path only sends
/// (and asks for the task below `ENCODE_AHEAD_LOW`), and a barge-in drops encoded and unencoded
/// frames alike, truncating to exactly what was sent.
#[test]
fn opus_is_encoded_just_ahead_of_its_slot_by_the_task_not_the_clock() {
    let start = Instant::now();
    let mut core = opus_core(start);
    core.handle_dialog(start, DialogInput::Confirmed);
    let silence_len = Codec::Opus.silence_frame(20).len();
    let tone = tone_24k(72_000);
    core.handle_realtime(start, response_created("r"));
    core.handle_realtime(start, delta("r", "item_opus", &tone));
    assert!(!core.needs_encoding(), "the arrival encodes the first frames itself");

    // The media clock's path alone: it never encodes, and asks for the task when short.
    let mut speech_sent = 0usize;
    let mut asked = 0usize;
    let mut now = start;
    for _ in 0..40 {
        now = core.poll_media_timeout().unwrap();
        core.handle_media_timeout(now);
        while let Some(t) = core.poll_transmit() {
            let (_, payload) = rtp::parse_rtp(&t.packet).unwrap();
            speech_sent += usize::from(payload.len() > silence_len);
        }
        if core.needs_encoding() {
            asked += 1;
            core.encode_ahead(); // what the woken task does
        }
    }
    assert!(asked >= 10, "the task was asked to top up every few slots ({asked} times)");
    assert_eq!(speech_sent, 40, "no slot went out as silence while audio waited");

    core.handle_realtime(now, speech_started());
    assert!(!core.needs_encoding(), "nothing waits after a barge-in");
    let truncate = std::iter::from_fn(|| core.poll_output())
        .find_map(|o| match o {
            Output::Realtime(event) => match *event {
                ClientEvent::ConversationItemTruncate { audio_end_ms, .. } => Some(audio_end_ms),
                _ => None,
            },
            _ => None,
        })
        .expect("a truncate");
    assert_eq!(truncate as usize, speech_sent * 20, "audio_end_ms = the frames sent");
    now = core.poll_media_timeout().unwrap();
    core.handle_media_timeout(now);
    let packet = core.poll_transmit().unwrap().packet;
    let (_, payload) = rtp::parse_rtp(&packet).unwrap();
    assert_eq!(payload.len(), silence_len, "silence right after the barge-in");
}

mod reconnect;
