//! The call core through a lost AI connection, on the virtual clock: the call goes on (comfort
//! pulse, continuous RTP, no caller audio sent to a dead session), resumes with the history, or
//! gives up with the announcement and BYE.

use super::*;
use crate::call::prompt::LocalPrompt;
use crate::call::reconnect::ReconnectPolicy;
use switchboard_realtime::history::HistoryLimits;

fn resilient_config() -> CoreConfig {
    CoreConfig {
        greeting: None,
        resilience: Resilience {
            policy: Some(ReconnectPolicy {
                initial_delay: Duration::from_millis(200),
                max_delay: Duration::from_millis(2000),
                give_up_after: Duration::from_secs(5),
            }),
            reconnect_prompt: LocalPrompt::Tone,
            give_up_prompt: LocalPrompt::Tone,
            history: HistoryLimits::default(),
            caller_transcripts: true,
        },
        ..core_config()
    }
}

fn appends_between(h: &Harness, from: Instant, to: Instant) -> usize {
    h.realtime
        .iter()
        .filter(|(at, e)| *at >= from && *at < to && matches!(e, ClientEvent::InputAudioBufferAppend { .. }))
        .count()
}

/// Packets sent in [from, to) that carry sound (not the all-0xFF PCMU silence frame).
fn sounding_packets(h: &Harness, from: Instant, to: Instant) -> usize {
    h.sent.iter().filter(|s| s.at >= from && s.at < to && s.payload.iter().any(|&b| b != PCMU_SILENCE)).count()
}

/// The caller talks every 20 ms from `from` to `to` (the harness delivers at those times).
fn caller_talks(h: &mut Harness, from: f64, to: f64) {
    let mut t = from;
    while t < to {
        h.advance_to(h.at(t));
        let packet = h.caller_packet();
        h.deliver(&packet);
        t += 0.02;
    }
}

fn assert_continuous_rtp(h: &Harness) {
    for pair in h.sent.windows(2) {
        assert_eq!(pair[1].header.sequence, pair[0].header.sequence.wrapping_add(1), "sequence gap");
        assert_eq!(pair[1].header.timestamp, pair[0].header.timestamp.wrapping_add(160), "timestamp jump");
        assert_eq!(pair[1].header.ssrc, pair[0].header.ssrc);
    }
}

#[test]
fn a_dropped_connection_keeps_the_call_with_a_comfort_pulse_then_resumes() {
    let mut h = Harness::new(resilient_config());
    h.realtime_event(response_created("r1"));
    h.realtime_event(delta("r1", "a1", &[0x33; 8 * 2000])); // two seconds of agent audio
    caller_talks(&mut h, 0.0, 0.5);
    assert!(appends_between(&h, h.at(0.0), h.at(0.5)) > 20);

    h.core.handle_realtime_closed(h.at(0.5), CallEnd::AgentDisconnected("connection closed".into()));
    h.drain();
    assert!(h.core.is_reconnecting());
    assert!(h.outputs.contains(&Output::Reconnect), "the shell is asked to reconnect");
    assert!(h.ended().is_none(), "the caller is not hung up on");

    caller_talks(&mut h, 0.5, 3.0);
    assert_eq!(appends_between(&h, h.at(0.5), h.at(3.0)), 0, "no caller audio to a dead session");
    assert_eq!(h.sent_bytes_of(0x33, h.at(3.0)), h.sent_bytes_of(0x33, h.at(0.52)), "the old agent audio stopped");
    // Quiet for the first 600 ms, then a 200 ms pulse every 2 s: 10 packets at 1.1 s, 10 at 3.1 s.
    assert_eq!(sounding_packets(&h, h.at(0.52), h.at(1.1)), 0);
    assert_eq!(sounding_packets(&h, h.at(1.1), h.at(3.0)), 10);

    // A new session: the conversation goes on, appends flow, the pulse stops.
    h.advance_to(h.at(3.0));
    assert!(h.core.handle_realtime_resumed(h.now));
    assert!(!h.core.is_reconnecting());
    h.drain();
    // The agent was cut off mid-answer: the new session is told so and asked to go on.
    let after: Vec<&ClientEvent> = h.realtime.iter().filter(|(at, _)| *at >= h.at(3.0)).map(|(_, e)| e).collect();
    assert!(matches!(after[0], ClientEvent::ConversationItemCreate { .. }), "{after:?}");
    assert!(matches!(after[1], ClientEvent::ResponseCreate { response: None, .. }), "{after:?}");
    // The note is about the connection, not the conversation: a later reconnect does not replay it.
    let replay = serde_json::to_string(&h.core.replay_events()).unwrap();
    assert!(!replay.contains("connection to you dropped"), "{replay}");
    caller_talks(&mut h, 3.0, 6.0);
    assert!(appends_between(&h, h.at(3.0), h.at(6.0)) > 100);
    assert_eq!(sounding_packets(&h, h.at(3.02), h.at(6.0)), 0, "no pulse once resumed");
    h.realtime_event(response_created("r2"));
    h.realtime_event(delta("r2", "a2", &[0x44; 800]));
    h.advance_to(h.at(6.5));
    assert_eq!(h.sent_bytes_of(0x44, h.at(6.5)), 800, "the new session's agent is heard");
    assert_continuous_rtp(&h);
    assert!(h.ended().is_none());
}

#[test]
fn session_expired_reconnects_and_the_following_close_changes_nothing() {
    let mut h = Harness::new(resilient_config());
    h.realtime_event(server_event(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error",
        "code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}})));
    assert!(h.core.is_reconnecting());
    assert!(h.outputs.contains(&Output::Reconnect));
    h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("closed with 1001: going away".into()));
    h.drain();
    assert_eq!(h.outputs.iter().filter(|o| **o == Output::Reconnect).count(), 1);
    assert!(h.ended().is_none());
    // The agent was silent: the new session just listens (no response asked for).
    assert!(h.core.handle_realtime_resumed(h.now));
    h.drain();
    assert!(!h.realtime.iter().any(|(_, e)| matches!(e, ClientEvent::ResponseCreate { .. })));
}

#[test]
fn a_connection_not_back_in_time_gets_the_announcement_then_bye() {
    let mut h = Harness::new(resilient_config());
    caller_talks(&mut h, 0.0, 1.0);
    h.core.handle_realtime_closed(h.at(1.0), CallEnd::AgentDisconnected("closed with 1011: internal".into()));
    h.drain();
    caller_talks(&mut h, 1.0, 6.0);
    assert!(h.ended().is_none(), "not before the give-up deadline");
    caller_talks(&mut h, 6.0, 8.0);
    let Some(CallEnd::AgentDisconnected(why)) = h.ended() else { panic!("{:?}", h.ended()) };
    assert!(why.contains("gave up"), "{why}");
    assert!(h.outputs.contains(&Output::Hangup), "our BYE");
    // The three tones (990 ms: 50 packets) played in full before the end.
    let tones = sounding_packets(&h, h.at(6.0), h.at(8.0));
    assert!((49..=51).contains(&tones), "{tones} packets of announcement");
    // A session that comes back now is too late.
    assert!(!h.core.handle_realtime_resumed(h.now));
}

#[test]
fn text_items_sent_while_reconnecting_are_kept_for_the_replay() {
    let mut h = Harness::new(resilient_config());
    h.realtime_event(server_event(json!({"type":"input_audio_buffer.committed","event_id":"e","item_id":"u1"})));
    h.realtime_event(server_event(json!({"type":"response.output_audio_transcript.done","event_id":"e",
        "response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"transcript":"Your order ships today."})));
    h.realtime_event(server_event(json!({"type":"conversation.item.input_audio_transcription.completed",
        "event_id":"e","item_id":"u1","content_index":0,"transcript":"Where is my order?"})));
    h.core.handle_realtime_closed(h.now, CallEnd::AgentDisconnected("connection closed".into()));
    h.core.send_realtime(ClientEvent::ConversationItemCreate {
        event_id: None,
        previous_item_id: None,
        item: switchboard_realtime::events::Item::user_text("The caller pressed 5."),
    });
    h.drain();
    assert!(
        !h.realtime.iter().any(|(_, e)| matches!(e, ClientEvent::ConversationItemCreate { .. })),
        "nothing is sent while reconnecting"
    );
    let replay: Vec<serde_json::Value> =
        h.core.replay_events().iter().map(|e| serde_json::to_value(e).unwrap()["item"].clone()).collect();
    assert_eq!(
        replay,
        vec![
            json!({"type":"message","role":"user","content":[{"type":"input_text","text":"Where is my order?"}]}),
            json!({"type":"message","role":"assistant","content":[{"type":"output_text","text":"Your order ships today."}]}),
            json!({"type":"message","role":"user","content":[{"type":"input_text","text":"The caller pressed 5."}]}),
        ]
    );
}

#[test]
fn losses_a_new_session_would_not_cure_still_end_the_call() {
    let mut h = Harness::new(resilient_config());
    h.core.handle_realtime_closed(h.now, CallEnd::AgentMessageTooLarge("huge".into()));
    h.drain();
    assert!(matches!(h.ended(), Some(CallEnd::AgentMessageTooLarge(_))));
    assert!(!h.outputs.contains(&Output::Reconnect));
}

#[test]
fn rollover_is_asked_for_once_when_due_and_switches_only_at_a_turn_boundary() {
    let mut h = Harness::new(resilient_config());
    h.core.set_rollover_at(Some(h.at(10.0)));
    caller_talks(&mut h, 0.0, 9.9);
    assert!(!h.outputs.contains(&Output::Rollover));
    caller_talks(&mut h, 9.9, 10.5);
    assert_eq!(h.outputs.iter().filter(|o| **o == Output::Rollover).count(), 1);
    assert!(h.core.at_turn_boundary(), "nothing going on");

    // The caller speaks: not a boundary until the turn is committed and transcribed.
    h.realtime_event(speech_started());
    assert!(!h.core.at_turn_boundary());
    h.realtime_event(server_event(json!({"type":"input_audio_buffer.committed","event_id":"e","item_id":"u1"})));
    assert!(!h.core.at_turn_boundary(), "its transcript is still to come");
    // The agent answers: not a boundary while the response streams or its audio plays.
    h.realtime_event(response_created("r1"));
    h.realtime_event(delta("r1", "a1", &[0x33; 800]));
    h.realtime_event(server_event(json!({"type":"conversation.item.input_audio_transcription.completed",
        "event_id":"e","item_id":"u1","content_index":0,"transcript":"Hello?"})));
    h.realtime_event(response_done("r1", "completed"));
    assert!(!h.core.at_turn_boundary(), "100 ms of the answer still to play");
    caller_talks(&mut h, 10.5, 11.0);
    assert!(h.core.at_turn_boundary());
    assert_eq!(h.sent_bytes_of(0x33, h.now), 800, "the answer played in full");

    assert!(h.core.handle_realtime_switched(h.now));
    h.core.set_rollover_at(Some(h.at(20.0)));
    caller_talks(&mut h, 11.0, 12.0);
    assert!(appends_between(&h, h.at(11.0), h.at(12.0)) > 40, "the caller's audio flows on");
    assert_continuous_rtp(&h);
    assert_eq!(h.outputs.iter().filter(|o| **o == Output::Rollover).count(), 1, "the next one is not due yet");
    assert!(h.ended().is_none());
}

#[test]
fn a_wav_prompt_replaces_the_pulse_and_none_gives_up_in_silence() {
    let wav = crate::call::prompt::WavAudio { rate: 8000, samples: vec![8000; 400] };
    let mut config = resilient_config();
    config.resilience.reconnect_prompt = LocalPrompt::Wav(std::sync::Arc::new(wav));
    config.resilience.give_up_prompt = LocalPrompt::Silence;
    let mut h = Harness::new(config);
    caller_talks(&mut h, 0.0, 0.5);
    h.core.handle_realtime_closed(h.at(0.5), CallEnd::AgentDisconnected("connection closed".into()));
    h.drain();
    caller_talks(&mut h, 0.5, 2.0);
    // 50 ms of prompt: three packets (the last one padded), at 1.1 s.
    assert_eq!(sounding_packets(&h, h.at(1.1), h.at(1.2)), 3);
    assert_eq!(sounding_packets(&h, h.at(0.5), h.at(2.0)), 3);
    caller_talks(&mut h, 2.0, 5.4);
    assert!(h.ended().is_none());
    caller_talks(&mut h, 5.4, 6.0);
    assert!(matches!(h.ended(), Some(CallEnd::AgentDisconnected(_))), "no announcement: BYE at the give-up time");
    assert_eq!(sounding_packets(&h, h.at(5.4), h.at(6.0)), 0);
}
