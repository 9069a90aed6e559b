//! Realtime: the server event decoder (what the WebSocket client does with every text or
//! binary frame) and the conversation bookkeeping the bridge drives with the decoded events.

use std::collections::HashMap;

use switchboard_realtime::{ClientEvent, Conversation, ServerEvent};

/// PCM 24 kHz is 48 bytes per ms; base64 carries 3 bytes in 4 characters.
fn delta_ms(delta_base64: &str) -> f64 {
    (delta_base64.len() / 4 * 3) as f64 / 48.0
}

/// `realtime_event`: the input is JSON lines, one WebSocket message each. Decoding never
/// panics; every server event that decodes re-encodes (`to_json`) and decodes to the same
/// event; client events likewise (the simulator decodes them). The decoded stream drives a
/// [`Conversation`] as the bridge does: a truncate never claims more audio than was received
/// for its item, and tracked items never exceed the items seen.
pub fn events(data: &[u8]) {
    let mut conversation = Conversation::new();
    let mut received_ms: HashMap<String, f64> = HashMap::new();
    for line in data.split(|b| *b == b'\n').take(256) {
        // The client decodes binary frames only when they are UTF-8 (`client.rs`).
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        if let Ok(event) = ClientEvent::from_json(text) {
            let json = event.to_json().unwrap_or_else(|e| panic!("decoded client event does not encode: {e}"));
            let again = ClientEvent::from_json(&json).unwrap_or_else(|e| panic!("client event re-encoding undecodable: {e}\n{json}"));
            assert_eq!(again, event, "client event round trip changed it:\n{json}");
        }
        let Ok(event) = ServerEvent::from_json(text) else {
            continue;
        };
        let json = event.to_json().unwrap_or_else(|e| panic!("decoded server event does not encode: {e}"));
        let again = ServerEvent::from_json(&json).unwrap_or_else(|e| panic!("server event re-encoding undecodable: {e}\n{json}"));
        assert_eq!(again, event, "server event round trip changed it:\n{json}");
        assert_eq!(again.event_type(), event.event_type());

        match &event {
            ServerEvent::OutputAudioDelta(delta) => {
                let ms = delta_ms(&delta.delta);
                if let Some(tag) = conversation.on_audio_delta(&delta.response_id, &delta.item_id, ms) {
                    *received_ms.entry(delta.item_id.clone()).or_default() += ms;
                    // Play half now, as the pacer would over the next frames.
                    conversation.on_audio_played(tag, ms / 2.0);
                }
            }
            ServerEvent::SpeechStarted(_) => {
                if let Some(truncate) = conversation.on_speech_started() {
                    let received = received_ms.get(&truncate.item_id).copied().unwrap_or(0.0);
                    assert!(
                        f64::from(truncate.audio_end_ms) <= received.floor(),
                        "truncate at {} ms of an item with {received} ms received",
                        truncate.audio_end_ms
                    );
                }
            }
            ServerEvent::ResponseCreated(created) => conversation.on_response_created(&created.response.id),
            ServerEvent::ResponseDone(done) => conversation.on_response_done(&done.response.id),
            _ => {}
        }
        assert!(conversation.tracked_items() <= received_ms.len(), "more items tracked than items received");
    }
}
