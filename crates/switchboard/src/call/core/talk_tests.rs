//! Conversation decisions of the call core on a virtual clock (issue 8): confirm-mode barge-in,
//! multi-item responses, DTMF to the model, `end_call`, `end_after_playout`, idle re-prompts and
//! the call length. Real Realtime events (parsed from wire JSON), real RTP; time moves only
//! when a test says so. G.711 passthrough: 8 bytes of model audio are 1 ms on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_media::Codec;
use switchboard_media::framing::ModelAudio;
use switchboard_media::rtp::{self, RtpHeader, StreamStart};
use switchboard_realtime::events::{AudioDeltaEvent, ClientEvent, ContentPart, Item, ServerEvent};

use super::agent_control::{ControlConfig, GOODBYE_GRACE, TalkConfig};
use super::barge_in::{BargeInConfig, BargeInMode};
use super::*;

pub(super) const PT_DTMF: u8 = 101;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

use super::tests::caller_addr;

pub(super) fn talk() -> TalkConfig {
    TalkConfig {
        barge_in: BargeInConfig {
            mode: BargeInMode::Immediate,
            confirm: ms(400),
            prefix_padding: ms(300),
            silence_duration: ms(500),
        },
        dtmf_coalesce: ms(1500),
        dtmf_response: true,
        control: ControlConfig {
            end_call: true,
            idle_timeout: None,
            idle_prompt: "Ask whether the caller is still there.".into(),
            idle_prompts: 2,
            goodbye: "Goodbye.".into(),
            max_call: None,
        },
    }
}

pub(super) fn confirm_mode() -> TalkConfig {
    let mut talk = talk();
    talk.barge_in.mode = BargeInMode::Confirm;
    talk
}

pub(super) fn config(talk: TalkConfig) -> CoreConfig {
    // Long media, ping and watchdog timers and no greeting: these tests are about the conversation.
    CoreConfig {
        rtp_timeout: Duration::from_secs(3600),
        ping_interval: Duration::from_secs(3600),
        watchdog: Duration::from_secs(7200),
        greeting: None,
        apology: None,
        talk,
        ..super::tests::core_config()
    }
}

pub(super) fn leg() -> LegConfig {
    LegConfig {
        stream: StreamStart { ssrc: 0x1234_5678, sequence: 100, timestamp: 5000 },
        ..super::tests::leg_config()
    }
}

pub(super) fn event(value: serde_json::Value) -> ServerEvent {
    ServerEvent::from_json(&value.to_string()).unwrap()
}

pub(super) fn created(id: &str) -> ServerEvent {
    event(json!({"type":"response.created","event_id":"e","response":{"id":id,"status":"in_progress","output":[]}}))
}

pub(super) fn done(id: &str) -> ServerEvent {
    event(json!({"type":"response.done","event_id":"e","response":{"id":id,"status":"completed","output":[]}}))
}

pub(super) fn speech_started(audio_start_ms: u64) -> ServerEvent {
    event(json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":audio_start_ms,
        "item_id":"item_user"}))
}

pub(super) fn speech_stopped(audio_end_ms: u64) -> ServerEvent {
    event(json!({"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":audio_end_ms,
        "item_id":"item_user"}))
}

pub(super) fn audio_done(response: &str, item: &str) -> ServerEvent {
    event(json!({"type":"response.output_audio.done","event_id":"e","response_id":response,"item_id":item,
        "output_index":0,"content_index":0}))
}

pub(super) fn end_call_item_done(response: &str, status: &str) -> ServerEvent {
    event(json!({"type":"response.output_item.done","event_id":"e","response_id":response,"output_index":1,
        "item":{"id":"fc_1","type":"function_call","status":status,"name":"end_call","call_id":"call_1",
                "arguments":"{}"}}))
}

/// `ms` of agent audio, every byte `marker`, as one delta off the wire.
pub(super) fn delta(response: &str, item: &str, marker: u8, audio_ms: usize) -> ServerEvent {
    let event = ServerEvent::OutputAudioDelta(AudioDeltaEvent {
        event_id: "e".into(),
        response_id: response.into(),
        item_id: item.into(),
        output_index: 0,
        content_index: 0,
        delta: vec![marker; audio_ms * 8],
    });
    ServerEvent::from_json(&event.to_json().unwrap()).unwrap()
}

pub(super) struct Harness {
    pub(super) core: CallCore,
    pub(super) start: Instant,
    pub(super) now: Instant,
    /// (when, header, payload) of every packet sent.
    pub(super) sent: Vec<(Instant, RtpHeader, Vec<u8>)>,
    /// (when, header, payload) of every packet sent on another leg than the caller's.
    pub(super) human: Vec<(Instant, RtpHeader, Vec<u8>)>,
    pub(super) realtime: Vec<(Instant, ClientEvent)>,
    pub(super) outputs: Vec<(Instant, Output)>,
    pub(super) dtmf_sequence: u16,
}

impl Harness {
    pub(super) fn new(talk: TalkConfig) -> Harness {
        Self::with_leg(talk, leg())
    }

    pub(super) fn with_leg(talk: TalkConfig, leg: LegConfig) -> Harness {
        Self::with_core(config(talk), leg)
    }

    pub(super) fn with_core(config: CoreConfig, leg: LegConfig) -> Harness {
        let start = Instant::now();
        let mut h = Harness {
            core: CallCore::new(start, config, leg),
            start,
            now: start,
            sent: Vec::new(),
            human: Vec::new(),
            realtime: Vec::new(),
            outputs: Vec::new(),
            dtmf_sequence: 1,
        };
        h.core.handle_dialog(start, DialogInput::Confirmed);
        h.drain();
        h
    }

    pub(super) fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            let (header, payload) = rtp::parse_rtp(&t.packet).unwrap();
            let sent = if t.leg == CALLER { &mut self.sent } else { &mut self.human };
            sent.push((self.now, header, payload.to_vec()));
        }
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Realtime(event) => self.realtime.push((self.now, *event)),
                Output::Ping => {}
                other => self.outputs.push((self.now, other)),
            }
        }
    }

    /// Runs every timer due up to `start + at`, in order, as the shell would.
    pub(super) fn run_to(&mut self, at: Duration) {
        let until = self.start + at;
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

    pub(super) fn at(&mut self, at: Duration, event: ServerEvent) {
        self.run_to(at);
        self.core.handle_realtime(self.now, event);
        self.drain();
    }

    pub(super) fn dialog(&mut self, at: Duration, input: DialogInput) {
        self.run_to(at);
        self.core.handle_dialog(self.now, input);
        self.drain();
    }

    pub(super) fn dtmf_packet(
        &mut self,
        at: Duration,
        timestamp: u32,
        event: u8,
        end: bool,
        duration: u16,
        marker: bool,
    ) {
        self.dtmf_packet_as(PT_DTMF, at, timestamp, event, end, duration, marker);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn dtmf_packet_as(
        &mut self,
        payload_type: u8,
        at: Duration,
        timestamp: u32,
        event: u8,
        end: bool,
        duration: u16,
        marker: bool,
    ) {
        self.run_to(at);
        let header = RtpHeader { payload_type, marker, sequence: self.dtmf_sequence, timestamp, ssrc: 0xCA11 };
        self.dtmf_sequence = self.dtmf_sequence.wrapping_add(1);
        let [hi, lo] = duration.to_be_bytes();
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, &[event, if end { 0x8A } else { 0x0A }, hi, lo]);
        self.core.handle_rtp(self.now, CALLER, caller_addr(), &packet);
        self.drain();
    }

    /// One whole key press as a real phone sends it: start (marker), updates, three end packets.
    pub(super) fn key(&mut self, at: Duration, timestamp: u32, event: u8) {
        self.dtmf_packet(at, timestamp, event, false, 160, true);
        self.dtmf_packet(at + ms(20), timestamp, event, false, 320, false);
        for n in 0..3 {
            self.dtmf_packet(at + ms(40 + n), timestamp, event, true, 480, false);
        }
    }

    /// Packets of `marker` sent (audio of that item).
    pub(super) fn audio_packets(&self, marker: u8) -> Vec<&(Instant, RtpHeader, Vec<u8>)> {
        self.sent.iter().filter(|(_, _, p)| p.first() == Some(&marker)).collect()
    }

    pub(super) fn audio_ms_before(&self, marker: u8, before: Duration) -> usize {
        let before = self.start + before;
        self.sent
            .iter()
            .filter(|(at, _, _)| *at <= before)
            .map(|(_, _, p)| p.iter().filter(|&&b| b == marker).count())
            .sum::<usize>()
            / 8
    }

    pub(super) fn truncates(&self) -> Vec<(String, u32)> {
        self.realtime
            .iter()
            .filter_map(|(_, e)| match e {
                ClientEvent::ConversationItemTruncate { item_id, audio_end_ms, .. } => {
                    Some((item_id.clone(), *audio_end_ms))
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn cancels(&self) -> usize {
        self.realtime.iter().filter(|(_, e)| matches!(e, ClientEvent::ResponseCancel { .. })).count()
    }

    /// `(when, event_id, instructions)` of every response.create.
    pub(super) fn creates(&self) -> Vec<(Instant, Option<String>, Option<String>)> {
        self.realtime
            .iter()
            .filter_map(|(at, e)| match e {
                ClientEvent::ResponseCreate { event_id, response } => {
                    Some((*at, event_id.clone(), response.as_ref().and_then(|r| r.instructions.clone())))
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn user_texts(&self) -> Vec<String> {
        self.realtime
            .iter()
            .filter_map(|(_, e)| match e {
                ClientEvent::ConversationItemCreate { item: Item::Message(m), .. } => match m.content.first() {
                    Some(ContentPart::InputText { text }) => Some(text.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    pub(super) fn appends(&self) -> usize {
        self.realtime.iter().filter(|(_, e)| matches!(e, ClientEvent::InputAudioBufferAppend { .. })).count()
    }

    pub(super) fn ended(&self) -> Option<(Instant, CallEnd)> {
        self.outputs.iter().find_map(|(at, o)| match o {
            Output::Ended(end) => Some((*at, end.clone())),
            _ => None,
        })
    }

    pub(super) fn hung_up(&self) -> bool {
        self.outputs.iter().any(|(_, o)| matches!(o, Output::Hangup))
    }

    pub(super) fn last_audio_sent_at(&self) -> Option<Instant> {
        self.sent.iter().filter(|(_, _, p)| p.iter().any(|&b| b != 0xFF)).map(|(at, _, _)| *at).max()
    }
}

// ---- barge-in ----

#[test]
fn confirm_mode_a_cough_pauses_the_agent_and_it_resumes_where_it_paused() {
    let mut h = Harness::new(confirm_mode());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x11, 2000));
    h.at(ms(0), audio_done("resp_1", "item_1"));
    h.at(ms(0), done("resp_1"));
    // 600 ms played, then the caller coughs.
    h.at(ms(590), speech_started(5_000));
    let heard_at_pause = h.audio_ms_before(0x11, ms(590));
    // The first slot (t = 0) went out before the delta: audio from 20 ms, 29 packets by 590 ms.
    assert_eq!(heard_at_pause, 580);
    h.run_to(ms(1200));
    assert_eq!(h.audio_ms_before(0x11, ms(1200)), 580, "paused: silence only, at once");
    // speech_stopped 500 ms after a 250 ms cough (+300 ms prefix padding in audio_start_ms).
    h.at(ms(1200), speech_stopped(5_550));
    assert!(h.truncates().is_empty() && h.cancels() == 0, "no barge-in");
    assert!(h.creates().is_empty(), "a cough is not a turn to answer");
    h.run_to(ms(3000));
    // Resumed where it paused: the whole 2 s is heard, in order, with the marker on resume.
    assert_eq!(h.audio_ms_before(0x11, ms(3000)), 2000);
    let resumed = h.audio_packets(0x11)[29];
    assert!(resumed.1.marker, "a new talkspurt after the pause");
    assert!(resumed.0 > h.start + ms(1200));
}

#[test]
fn confirm_mode_long_speech_drops_the_queue_cancels_and_truncates_to_the_packet() {
    let mut h = Harness::new(confirm_mode());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x22, 3000));
    h.at(ms(730), speech_started(9_000));
    let heard = h.audio_ms_before(0x22, ms(730));
    assert_eq!(heard, 720);
    // Deltas still arrive while paused (interrupt_response is off): queued, not played.
    h.at(ms(800), delta("resp_1", "item_1", 0x22, 500));
    // No speech_stopped: confirm (400) + silence_duration (500) after speech_started.
    h.run_to(ms(1629));
    assert!(h.truncates().is_empty());
    h.run_to(ms(1630));
    assert_eq!(h.truncates(), vec![("item_1".to_string(), heard as u32)], "exact to the packet");
    assert_eq!(h.cancels(), 1, "the response was still active");
    h.run_to(ms(4000));
    assert_eq!(h.audio_ms_before(0x22, ms(4000)), heard, "nothing of the queue after the barge-in");
    // The caller's turn ends: the gateway asks for the answer (create_response is off), once
    // the cancelled response is done.
    h.at(ms(4000), speech_stopped(12_000));
    assert!(h.creates().is_empty(), "a response is still active");
    h.at(ms(4010), done("resp_1"));
    let creates = h.creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].1.as_deref(), Some("evt_turn"));
}

#[test]
fn immediate_mode_barge_in_never_plays_late_deltas() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x33, 1000));
    h.at(ms(390), speech_started(1_000));
    let heard = h.audio_ms_before(0x33, ms(390));
    assert_eq!(h.truncates(), vec![("item_1".to_string(), heard as u32)]);
    assert_eq!(h.cancels(), 0, "interrupt_response: the API cancels by itself");
    // --late-deltas: more audio of the interrupted response, before its response.done.
    for n in 0..5 {
        h.at(ms(400 + n * 10), delta("resp_1", "item_1", 0x33, 200));
    }
    h.at(ms(500), done("resp_1"));
    h.run_to(ms(3000));
    assert_eq!(h.audio_ms_before(0x33, ms(3000)), heard, "late deltas are never played");
}

#[test]
fn phases_play_in_order_and_a_barge_in_truncates_the_playing_item_at_its_own_ms() {
    // gpt-realtime-2: commentary (a short item) then final_answer, in one response.
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_commentary", 0x44, 300));
    h.at(ms(0), audio_done("resp_1", "item_commentary"));
    h.at(ms(10), delta("resp_1", "item_answer", 0x55, 2000));
    h.run_to(ms(900));
    let commentary = h.audio_packets(0x44);
    let answer = h.audio_packets(0x55);
    assert_eq!(commentary.len(), 15, "the commentary in full");
    assert!(commentary.last().unwrap().0 < answer.first().unwrap().0, "then the answer");
    h.at(ms(900), speech_started(3_000));
    let heard_answer = h.audio_ms_before(0x55, ms(900));
    assert_eq!(heard_answer, 600);
    assert_eq!(h.truncates(), vec![("item_answer".to_string(), 600)], "the commentary was heard in full");

    // A barge-in during the commentary: it is cut at its ms, the unheard answer at 0.
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_commentary", 0x44, 300));
    h.at(ms(0), audio_done("resp_1", "item_commentary"));
    h.at(ms(10), delta("resp_1", "item_answer", 0x55, 2000));
    h.at(ms(130), speech_started(3_000));
    assert_eq!(h.truncates(), vec![("item_commentary".to_string(), 120), ("item_answer".to_string(), 0)]);
    h.run_to(ms(2000));
    assert!(h.audio_packets(0x55).is_empty(), "the answer never plays");
}

// ---- DTMF ----

#[test]
fn rfc_4733_keys_reach_the_model_as_one_text_item_then_a_response_and_never_as_audio() {
    let mut h = Harness::new(talk());
    h.key(ms(1000), 8000, 1);
    h.key(ms(1500), 9600, 2);
    // Without the marker bit, and a retransmitted end packet after the next key started.
    h.dtmf_packet(ms(2000), 12_000, 11, false, 160, false);
    h.dtmf_packet(ms(2020), 9600, 2, true, 480, false);
    h.dtmf_packet(ms(2040), 12_000, 11, true, 480, false);
    assert!(h.user_texts().is_empty(), "coalescing: wait dtmf_coalesce_ms after the last key");
    h.run_to(ms(3539));
    assert!(h.user_texts().is_empty());
    h.run_to(ms(3540));
    assert_eq!(h.user_texts(), vec!["The caller pressed 1, 2, #.".to_string()]);
    let creates = h.creates();
    assert_eq!(creates.len(), 1, "dtmf_response");
    assert_eq!(creates[0].0, h.start + ms(3540));
    let digits: Vec<char> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Dtmf { digit, .. } => Some(digit.as_char()),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec!['1', '2', '#'], "each key once, for the routing rules");
    assert_eq!(h.appends(), 0, "telephone-events are never audio to the model");
}

#[test]
fn keys_on_an_opus_call_use_the_payload_type_the_offer_chose_and_the_48_khz_clock() {
    let opus = LegConfig {
        codec: Codec::Opus,
        payload_type: 111,
        telephone_event: Some(110),
        model_input: ModelAudio::Pcm24k,
        model_output: ModelAudio::Pcm24k,
        ..leg()
    };
    let mut h = Harness::with_leg(talk(), opus);
    // Key 3 held 100 ms: 4800 units of the 48 kHz clock; end packet sent three times.
    h.dtmf_packet_as(110, ms(500), 96_000, 3, false, 960, true);
    for n in 0..3 {
        h.dtmf_packet_as(110, ms(600 + n), 96_000, 3, true, 4800, false);
    }
    // The same event under the 8 kHz table's payload type is not a key on this call.
    h.dtmf_packet_as(PT_DTMF, ms(700), 200_000, 4, true, 800, false);
    h.run_to(ms(3000));
    let keys: Vec<(char, Duration)> = h
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Dtmf { digit, duration, .. } => Some((digit.as_char(), *duration)),
            _ => None,
        })
        .collect();
    assert_eq!(keys, vec![('3', ms(100))]);
    assert_eq!(h.user_texts(), vec!["The caller pressed 3.".to_string()]);
}

#[test]
fn sip_info_keys_wait_for_the_active_response_before_asking_for_another() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.dialog(ms(100), DialogInput::Dtmf { digit: DtmfDigit::from_char('5').unwrap(), duration: ms(160) });
    h.run_to(ms(1600));
    assert_eq!(h.user_texts(), vec!["The caller pressed 5.".to_string()], "the item goes at once");
    assert!(h.creates().is_empty(), "not while a response is active");
    h.at(ms(2000), done("resp_1"));
    assert_eq!(h.creates().len(), 1);

    let mut quiet = talk();
    quiet.dtmf_response = false;
    let mut h = Harness::new(quiet);
    h.dialog(ms(100), DialogInput::Dtmf { digit: DtmfDigit::from_char('9').unwrap(), duration: ms(0) });
    h.run_to(ms(5000));
    assert_eq!(h.user_texts().len(), 1);
    assert!(h.creates().is_empty(), "dtmf_response = false");
}

#[test]
fn a_refused_response_create_does_not_block_the_next_one() {
    let mut h = Harness::new(talk());
    h.dialog(ms(0), DialogInput::Dtmf { digit: DtmfDigit::from_char('1').unwrap(), duration: ms(0) });
    h.run_to(ms(1500));
    assert_eq!(h.creates().len(), 1);
    // The API refuses it (the create is named in the error): no response is coming.
    h.at(
        ms(1600),
        event(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value",
            "message":"no","event_id":"evt_turn"}})),
    );
    h.dialog(ms(2000), DialogInput::Dtmf { digit: DtmfDigit::from_char('2').unwrap(), duration: ms(0) });
    h.run_to(ms(3500));
    assert_eq!(h.creates().len(), 2, "the second key is answered");
}

// ---- end_call and end_after_playout ----

#[test]
fn end_call_hangs_up_once_the_goodbye_has_played_in_full() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_bye", 0x66, 1500));
    h.at(ms(0), audio_done("resp_1", "item_bye"));
    h.at(ms(5), end_call_item_done("resp_1", "completed"));
    let outputs: Vec<_> = h
        .realtime
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::ConversationItemCreate { item: Item::FunctionCallOutput(o), .. } => Some(o.call_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, vec!["call_1".to_string()], "the call id is answered");
    h.run_to(ms(800));
    assert!(h.ended().is_none(), "the response is not done yet");
    h.at(ms(800), done("resp_1"));
    assert!(h.ended().is_none(), "the goodbye is still playing");
    h.run_to(ms(3000));
    let (ended_at, end) = h.ended().unwrap();
    assert_eq!(end, CallEnd::AgentHangup);
    assert!(h.hung_up(), "BYE is ours");
    assert_eq!(h.audio_ms_before(0x66, ms(3000)), 1500, "the whole goodbye was sent");
    assert_eq!(Some(ended_at), h.last_audio_sent_at().map(|at| at + ms(20)), "BYE one slot after its last packet");
    assert!(h.creates().is_empty(), "no answer is asked for after end_call");
}

#[test]
fn an_end_call_of_a_cancelled_response_or_an_undeclared_one_is_not_executed() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(5), end_call_item_done("resp_1", "incomplete"));
    h.at(ms(10), done("resp_1"));
    h.run_to(ms(5000));
    assert!(h.ended().is_none());

    let mut disabled = talk();
    disabled.control.end_call = false;
    let mut h = Harness::new(disabled);
    h.at(ms(0), created("resp_1"));
    h.at(ms(5), end_call_item_done("resp_1", "completed"));
    h.at(ms(10), done("resp_1"));
    h.run_to(ms(5000));
    assert!(h.ended().is_none() && h.realtime.is_empty(), "agents.X.end_call = false");
}

#[test]
fn end_after_playout_waits_for_the_queue_and_audio_arriving_meanwhile() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x77, 500));
    h.run_to(ms(100));
    h.core.end_after_playout(CallEnd::Operator);
    h.drain();
    h.at(ms(200), delta("resp_1", "item_1", 0x77, 300));
    h.run_to(ms(2000));
    let (ended_at, end) = h.ended().unwrap();
    assert_eq!(end, CallEnd::Operator);
    assert_eq!(h.audio_ms_before(0x77, ms(2000)), 800);
    assert_eq!(Some(ended_at), h.last_audio_sent_at().map(|at| at + ms(20)));

    // Nothing queued: the end is immediate.
    let mut h = Harness::new(talk());
    h.run_to(ms(100));
    h.core.end_after_playout(CallEnd::Operator);
    h.drain();
    assert_eq!(h.ended().map(|(at, _)| at), Some(h.start + ms(100)));
}

// ---- idle and call length ----

#[test]
fn idle_caller_is_re_prompted_then_the_agent_says_goodbye_and_hangs_up() {
    let mut config = talk();
    config.control.idle_timeout = Some(Duration::from_secs(5));
    let mut h = Harness::new(config);
    // The agent speaks for 1 s; the idle clock runs from its last packet.
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x11, 1000));
    h.at(ms(0), done("resp_1"));
    // The media clock plays the audio without waking the call's task, and a silent phone may
    // send no RTP: the task must already know when to wake for the idle timer.
    let wake = h.core.poll_task_timeout().unwrap();
    assert!(wake >= h.start + ms(5000) && wake <= h.start + ms(6020), "{:?}", wake - h.start);
    h.run_to(ms(5999));
    assert!(h.creates().is_empty());
    h.run_to(ms(6000));
    let creates = h.creates();
    assert_eq!(creates.len(), 1, "first re-prompt 5 s after the last packet (sent at 1000 ms)");
    assert_eq!(creates[0].1.as_deref(), Some("evt_idle_prompt"));
    assert!(creates[0].2.as_deref().unwrap().contains("still there"));
    // The caller answers: the count starts again.
    h.at(ms(6100), created("resp_2"));
    h.at(ms(6100), done("resp_2"));
    h.at(ms(7000), speech_started(7_000));
    h.at(ms(8000), speech_stopped(8_000));
    h.at(ms(8100), created("resp_3"));
    h.at(ms(8100), done("resp_3"));
    // Two unanswered prompts, then the goodbye.
    h.run_to(ms(13_100));
    assert_eq!(h.creates().len(), 2);
    h.at(ms(13_200), created("resp_4"));
    h.at(ms(13_200), done("resp_4"));
    h.run_to(ms(18_200));
    assert_eq!(h.creates().len(), 3);
    h.at(ms(18_300), created("resp_5"));
    h.at(ms(18_300), done("resp_5"));
    h.run_to(ms(23_300));
    let creates = h.creates();
    assert_eq!(creates.len(), 4);
    assert_eq!(creates[3].1.as_deref(), Some("evt_goodbye"));
    assert!(h.ended().is_none());
    h.at(ms(23_400), created("resp_bye"));
    h.at(ms(23_400), delta("resp_bye", "item_bye", 0x99, 600));
    h.at(ms(23_450), done("resp_bye"));
    h.run_to(ms(30_000));
    let (ended_at, end) = h.ended().unwrap();
    assert_eq!(end, CallEnd::CallerIdle);
    assert_eq!(h.audio_ms_before(0x99, ms(30_000)), 600, "the goodbye in full");
    assert_eq!(Some(ended_at), h.last_audio_sent_at().map(|at| at + ms(20)));
    assert_eq!(h.creates().len(), 4, "nothing more once ending");
}

#[test]
fn max_call_length_cancels_says_goodbye_and_hard_stops_if_it_never_plays() {
    let mut config = talk();
    config.control.max_call = Some(Duration::from_secs(60));
    let mut h = Harness::new(config.clone());
    h.at(ms(59_000), created("resp_1"));
    h.run_to(ms(60_000));
    assert_eq!(h.cancels(), 1, "the active response is cancelled");
    assert!(h.creates().is_empty(), "the goodbye waits for it to be done");
    h.at(ms(60_100), done("resp_1"));
    assert_eq!(h.creates()[0].1.as_deref(), Some("evt_goodbye"));
    h.at(ms(60_200), created("resp_bye"));
    h.at(ms(60_200), delta("resp_bye", "item_bye", 0x88, 400));
    h.at(ms(60_300), done("resp_bye"));
    h.run_to(ms(61_000));
    assert_eq!(h.ended().unwrap().1, CallEnd::MaxDuration);
    assert_eq!(h.audio_ms_before(0x88, ms(61_000)), 400);

    // The goodbye never comes: BYE at the end of the grace period.
    let mut h = Harness::new(config);
    h.run_to(ms(60_000) + GOODBYE_GRACE - ms(1));
    assert_eq!(h.creates().len(), 1);
    assert!(h.ended().is_none());
    h.run_to(ms(60_000) + GOODBYE_GRACE);
    assert_eq!(h.ended().unwrap(), (h.start + ms(60_000) + GOODBYE_GRACE, CallEnd::MaxDuration));
    assert!(h.hung_up());
}

// ---- across a replaced AI connection ----

/// Reconnecting on, with a give-up far beyond these tests.
fn reconnecting(talk: TalkConfig) -> CoreConfig {
    let mut config = config(talk);
    config.resilience.policy = Some(crate::call::reconnect::ReconnectPolicy {
        initial_delay: ms(200),
        max_delay: ms(2000),
        give_up_after: Duration::from_secs(600),
    });
    config
}

#[test]
fn an_outage_is_not_idleness_and_the_idle_clock_restarts_with_the_new_session() {
    let mut talk = talk();
    talk.control.idle_timeout = Some(Duration::from_secs(5));
    talk.control.idle_prompts = 0;
    let mut h = Harness::with_core(reconnecting(talk), leg());
    h.run_to(ms(1000));
    h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("connection reset".into()));
    h.drain();
    h.run_to(ms(30_000));
    assert!(h.creates().is_empty(), "no goodbye to a caller waiting through an outage");
    assert!(h.ended().is_none());
    assert!(h.core.handle_realtime_resumed(h.now));
    h.drain();
    h.run_to(ms(34_999));
    assert!(h.creates().is_empty());
    h.run_to(ms(35_000));
    assert_eq!(h.creates()[0].1.as_deref(), Some("evt_goodbye"), "idle 5 s after the new session took over");
}

#[test]
fn a_goodbye_lost_with_the_ai_connection_is_asked_for_again_on_the_new_session() {
    let mut talk = talk();
    talk.control.idle_timeout = Some(Duration::from_secs(5));
    talk.control.idle_prompts = 0;
    let mut h = Harness::with_core(reconnecting(talk), leg());
    h.run_to(ms(5000));
    assert_eq!(h.creates().len(), 1);
    h.at(ms(5100), created("resp_bye"));
    h.run_to(ms(5200));
    h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("connection reset".into()));
    h.drain();
    h.run_to(ms(7000));
    assert!(h.core.handle_realtime_resumed(h.now));
    h.drain();
    let creates = h.creates();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert_eq!(creates[1].1.as_deref(), Some("evt_goodbye"));
    h.at(ms(7100), created("resp_bye_2"));
    h.at(ms(7100), delta("resp_bye_2", "item_bye", 0x77, 500));
    h.at(ms(7150), done("resp_bye_2"));
    h.run_to(ms(9000));
    assert_eq!(h.ended().unwrap().1, CallEnd::CallerIdle);
    assert_eq!(h.audio_ms_before(0x77, ms(9000)), 500, "the new goodbye in full");
}

// ---- transfer to a human (issue 9): the core's hooks ----

impl Harness {
    fn transfer_signals(&self) -> Vec<transfer::TransferSignal> {
        self.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Transfer(signal) => Some(*signal),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_transfer_announcement_waits_for_the_active_response_and_is_signalled_once_played() {
    let mut h = Harness::new(talk());
    h.at(ms(1000), created("resp_tool"));
    assert!(h.core.announce_transfer("Please hold."));
    assert!(h.creates().is_empty(), "one response at a time: the tool's is active");
    h.at(ms(1100), done("resp_tool"));
    let creates = h.creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].1.as_deref(), Some("evt_announce"));
    assert!(creates[0].2.as_deref().is_some_and(|i| i.contains("\"Please hold.\"")), "{creates:?}");
    h.at(ms(1200), created("resp_hold"));
    h.at(ms(1200), delta("resp_hold", "item_hold", 0x77, 600));
    h.at(ms(1300), audio_done("resp_hold", "item_hold"));
    h.at(ms(1300), done("resp_hold"));
    assert!(h.transfer_signals().is_empty(), "not before the announcement has been heard");
    h.run_to(ms(2000));
    assert_eq!(h.transfer_signals(), vec![transfer::TransferSignal::Announced]);
    assert_eq!(h.audio_ms_before(0x77, ms(2000)), 600, "the announcement in full");
    let announced_at = h.outputs.iter().find(|(_, o)| matches!(o, Output::Transfer(_))).map(|(at, _)| *at).unwrap();
    assert!(announced_at >= h.last_audio_sent_at().unwrap(), "signalled after the last packet");
    h.run_to(ms(5000));
    assert_eq!(h.transfer_signals().len(), 1, "once");
    // Nothing to say: the shell goes on at once.
    assert!(!h.core.announce_transfer("  "));
}

#[test]
fn the_transfer_key_starts_a_transfer_and_never_reaches_the_model() {
    let mut h = Harness::new(talk());
    h.core.set_transfer_rules(transfer::rules_for_tests('0'));
    h.key(ms(1000), 8000, 0);
    assert_eq!(h.transfer_signals(), vec![transfer::TransferSignal::Rule(transfer::TransferRule::Dtmf)]);
    h.run_to(ms(4000));
    assert!(h.user_texts().is_empty(), "the key went to the transfer, not the model");
    // Other keys still reach the model.
    h.key(ms(5000), 16000, 5);
    h.run_to(ms(8000));
    assert_eq!(h.user_texts().len(), 1);
    // While the transfer runs the key is an ordinary key; back with the agent it transfers again.
    h.key(ms(9000), 24000, 0);
    assert_eq!(h.transfer_signals().len(), 1);
    h.core.transfer_finished();
    h.key(ms(12000), 32000, 0);
    assert_eq!(h.transfer_signals().len(), 2);
}

#[test]
fn at_max_call_length_the_transfer_rule_replaces_the_goodbye() {
    let mut config = talk();
    config.control.max_call = Some(Duration::from_secs(60));
    let mut h = Harness::new(config);
    h.core.set_transfer_rules(transfer::rules_for_tests('0'));
    h.run_to(ms(60_000));
    assert_eq!(h.transfer_signals(), vec![transfer::TransferSignal::Rule(transfer::TransferRule::MaxDuration)]);
    assert!(h.creates().is_empty(), "no goodbye");
    h.run_to(ms(60_000) + GOODBYE_GRACE + ms(1000));
    assert!(h.ended().is_none(), "no hard stop: the transfer decides");
    // A transfer that succeeds ends the call with BYE.
    h.core.end_transferred();
    h.drain();
    assert_eq!(h.ended().map(|(_, end)| end), Some(CallEnd::Transferred));
    assert!(h.hung_up());
}

#[test]
fn when_the_ai_stays_unreachable_the_transfer_rule_replaces_the_give_up() {
    let mut config = reconnecting(talk());
    config.resilience.policy = Some(crate::call::reconnect::ReconnectPolicy {
        initial_delay: ms(200),
        max_delay: ms(2000),
        give_up_after: Duration::from_secs(10),
    });
    let mut h = Harness::with_core(config, leg());
    h.core.set_transfer_rules(transfer::rules_for_tests('0'));
    h.run_to(ms(1000));
    h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("connection reset".into()));
    h.drain();
    h.run_to(ms(12_000));
    assert_eq!(h.transfer_signals(), vec![transfer::TransferSignal::Rule(transfer::TransferRule::AiUnreachable)]);
    assert!(h.ended().is_none(), "no give-up hang-up: the transfer decides");
    assert!(h.core.ai_unreachable());
    assert!(!h.core.announce_transfer("Please hold."), "nobody to say it");
    // The transfer failed and there is nobody to go back to: the call ends.
    h.core.goodbye_after_transfer(CallEnd::TransferFailed);
    h.drain();
    h.run_to(ms(13_000));
    assert_eq!(h.ended().map(|(_, end)| end), Some(CallEnd::TransferFailed));
}
