//! What the gateway tells the Realtime API about a call: the `session.update` for the agent and
//! the greeting's `response.create`.

use switchboard_media::framing::ModelAudio;
use switchboard_realtime::events::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, ClientEvent, ResponseConfig, SessionConfig, TurnDetection, Voice,
};

use crate::config::AgentConfig;

/// The audio format the model speaks on this call: G.711 straight through, or PCM16 at 24 kHz.
pub fn model_format(model_audio: ModelAudio, codec: switchboard_media::codec::Codec) -> AudioFormat {
    use switchboard_media::codec::Codec;
    match (model_audio, codec) {
        (ModelAudio::G711Passthrough, Codec::Pcma) => AudioFormat::Pcma,
        (ModelAudio::G711Passthrough, _) => AudioFormat::Pcmu,
        (ModelAudio::Pcm24k, _) => AudioFormat::Pcm { rate: 24_000 },
    }
}

/// `session.update` carrying the agent's instructions, voice, model, server VAD and audio format.
pub fn session_update(agent: &AgentConfig, model: &str, format: AudioFormat) -> ClientEvent {
    let turn_detection = TurnDetection::ServerVad {
        threshold: Some(agent.vad_threshold),
        prefix_padding_ms: Some(agent.vad_prefix_padding_ms),
        silence_duration_ms: Some(agent.vad_silence_duration_ms),
        idle_timeout_ms: None,
        create_response: Some(true),
        interrupt_response: Some(true),
    };
    ClientEvent::SessionUpdate {
        event_id: Some("evt_session_config".into()),
        session: Box::new(SessionConfig {
            model: Some(model.to_string()),
            output_modalities: Some(vec!["audio".into()]),
            instructions: Some(agent.instructions.clone()),
            audio: Some(AudioConfig {
                input: Some(AudioInput {
                    format: Some(format),
                    turn_detection: Some(Some(turn_detection)),
                    ..Default::default()
                }),
                output: Some(AudioOutput {
                    format: Some(format),
                    voice: Some(Voice::Named(agent.voice.clone())),
                    ..Default::default()
                }),
            }),
            ..SessionConfig::realtime()
        }),
    }
}

/// The agent speaks first: one `response.create` asking for the configured greeting verbatim.
pub fn greeting(text: &str) -> ClientEvent {
    ClientEvent::ResponseCreate {
        event_id: Some("evt_greeting".into()),
        response: Some(ResponseConfig {
            instructions: Some(format!("Greet the caller by saying exactly: \"{text}\"")),
            ..Default::default()
        }),
    }
}
