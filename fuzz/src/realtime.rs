//! Realtime: the server event decoder (what the WebSocket client does with every text or
//! binary frame) and the conversation bookkeeping the bridge drives with the decoded events.

use std::collections::HashMap;

use switchboard_realtime::{ClientEvent, Conversation, ServerEvent};

/// PCM 24 kHz is 48 bytes per ms; base64 carries 3 bytes in 4 characters.
fn delta_ms(delta: &[u8]) -> f64 {
    switchboard_realtime::events::AudioFormat::PCM24K.bytes_to_ms(delta.len())
}

/// Encodes, decodes and encodes again: the re-encoding must decode, and from then on encoding
/// and decoding are exact inverses. (Not from the first decode on: JSON with duplicate keys,
/// which RFC 8259 §4 leaves undefined, makes serde reject a typed item that then lands in the
/// `Other` fallback as a map with the duplicates merged, and that map re-encodes as the typed
/// item. Documented in docs/testing.md.) Returns the re-decoded event.
fn round_trip<E, Error>(
    event: E,
    encode: impl Fn(&E) -> Result<String, Error>,
    decode: impl Fn(&str) -> Result<E, Error>,
    side: &str,
) -> E
where
    E: PartialEq + std::fmt::Debug,
    Error: std::fmt::Display,
{
    let json = encode(&event).unwrap_or_else(|e| panic!("decoded {side} event does not encode: {e}"));
    let again = decode(&json).unwrap_or_else(|e| panic!("{side} event re-encoding undecodable: {e}\n{json}"));
    let json_again = encode(&again).unwrap_or_else(|e| panic!("re-decoded {side} event does not encode: {e}"));
    let third = decode(&json_again).unwrap_or_else(|e| panic!("{side} event second re-encoding undecodable: {e}"));
    assert_eq!(third, again, "{side} event: decode(encode(e)) != e after one round trip:\n{json_again}");
    let json_third = encode(&third).unwrap_or_else(|e| panic!("{side} event does not encode the third time: {e}"));
    assert_eq!(json_third, json_again, "{side} event: encoding not stable after one round trip");
    again
}

/// `realtime_event`: the input is JSON lines, one WebSocket message each. Decoding never
/// panics; every server event that decodes re-encodes (`to_json`) and decodes again, exactly
/// from the first round trip on (see [`round_trip`]); client events likewise (the simulator decodes them). The decoded stream drives a
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
            round_trip(event, ClientEvent::to_json, ClientEvent::from_json, "client");
        }
        let Ok(event) = ServerEvent::from_json(text) else {
            continue;
        };
        let again = round_trip(event.clone(), ServerEvent::to_json, ServerEvent::from_json, "server");
        assert_eq!(again.event_type(), event.event_type(), "the event type changed on re-encoding");

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
                for truncate in conversation.on_speech_started() {
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
