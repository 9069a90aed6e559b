//! GA session configuration (reference §2): the `session` object of `session.update`, and the
//! effective session the server echoes in `session.created` / `session.updated`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The GA voices (reference §2.2). Custom voices are `{"id":"voice_…"}`.
pub const GA_VOICES: [&str; 10] =
    ["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];

/// Deserializes a field that distinguishes "absent" (`None`, keep the current setting) from
/// `null` (`Some(None)`, switch the feature off), as `turn_detection: null` means manual mode.
fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `session` object (§2.1). Everything is optional except `type`, because `session.update` only
/// changes the fields it carries. Unknown keys are kept in [`SessionConfig::extra`] so that the
/// gateway tolerates new server fields while the simulator can reject unknown client parameters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionConfig {
    /// `"realtime"` (speech to speech) or `"transcription"`.
    #[serde(rename = "type")]
    pub session_type: String,
    /// Read-only, server echo only: `"realtime.session"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Read-only, server echo only: `sess_…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Read-only, server echo only: unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `["audio"]` or `["text"]`; one value only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"auto" | "none" | "required" | {"type":"function","name":…} | {"type":"mcp",…}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    /// `"auto" | "disabled" | {"type":"retention_ratio",…}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncation: Option<Value>,
    /// `"auto" | {…} | null`.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Option<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Keys this crate does not model. Empty in anything the gateway builds.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionConfig {
    /// A speech-to-speech session update that changes nothing yet.
    pub fn realtime() -> Self {
        Self { session_type: "realtime".to_owned(), ..Self::default() }
    }
}

/// `session.audio` (§2.2).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AudioConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<AudioInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<AudioOutput>,
}

/// `session.audio.input` (§2.2). `Some(None)` serializes as `null` (feature off).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AudioInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub noise_reduction: Option<Option<NoiseReduction>>,
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Option<Transcription>>,
    /// `null` = manual turns: the client commits and creates responses.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<Option<TurnDetection>>,
}

/// `session.audio.output` (§2.2).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AudioOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
    /// 0.25–1.5, default 1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
}

/// Audio encodings (§2.2, §8): `{"type":"audio/pcm","rate":24000}`, `{"type":"audio/pcmu"}`,
/// `{"type":"audio/pcma"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AudioFormat {
    /// 16-bit little-endian mono PCM; 24000 is the only rate the API accepts.
    #[serde(rename = "audio/pcm")]
    Pcm { rate: u32 },
    /// G.711 µ-law, 8 kHz.
    #[serde(rename = "audio/pcmu")]
    Pcmu,
    /// G.711 A-law, 8 kHz.
    #[serde(rename = "audio/pcma")]
    Pcma,
}

impl AudioFormat {
    /// PCM 24 kHz, the API default.
    pub const PCM24K: AudioFormat = AudioFormat::Pcm { rate: 24_000 };

    /// Sample rate in Hz.
    pub fn sample_rate(self) -> u32 {
        match self {
            AudioFormat::Pcm { rate } => rate,
            AudioFormat::Pcmu | AudioFormat::Pcma => 8_000,
        }
    }

    /// Encoded bytes per millisecond of audio (§8: 8 for G.711, 48 for PCM 24 kHz).
    pub fn bytes_per_ms(self) -> f64 {
        match self {
            AudioFormat::Pcm { rate } => f64::from(rate) * 2.0 / 1000.0,
            AudioFormat::Pcmu | AudioFormat::Pcma => 8.0,
        }
    }

    /// Milliseconds of audio in `bytes` encoded bytes.
    pub fn bytes_to_ms(self, bytes: usize) -> f64 {
        let per_ms = self.bytes_per_ms();
        if per_ms > 0.0 { bytes as f64 / per_ms } else { 0.0 }
    }
}

/// `audio.input.noise_reduction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseReduction {
    /// `near_field` or `far_field`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

/// `audio.input.transcription`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Transcription {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `audio.input.turn_detection` (§2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TurnDetection {
    /// Energy/voice-activity based turn ends.
    #[serde(rename = "server_vad")]
    ServerVad {
        #[serde(skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prefix_padding_ms: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        silence_duration_ms: Option<u32>,
        /// 5000–30000, or null.
        #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
        idle_timeout_ms: Option<Option<u32>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
    },
    /// Model-based turn ends.
    #[serde(rename = "semantic_vad")]
    SemanticVad {
        /// `low | medium | high | auto`.
        #[serde(skip_serializing_if = "Option::is_none")]
        eagerness: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
    },
}

impl TurnDetection {
    /// Server VAD with the documented defaults written out (threshold 0.5, prefix 300 ms,
    /// silence 500 ms, create and interrupt on).
    pub fn server_vad_defaults() -> Self {
        TurnDetection::ServerVad {
            threshold: Some(0.5),
            prefix_padding_ms: Some(300),
            silence_duration_ms: Some(500),
            idle_timeout_ms: Some(None),
            create_response: Some(true),
            interrupt_response: Some(true),
        }
    }

    /// `create_response`, defaulting to true.
    pub fn create_response(&self) -> bool {
        match self {
            TurnDetection::ServerVad { create_response, .. } | TurnDetection::SemanticVad { create_response, .. } => {
                create_response.unwrap_or(true)
            }
        }
    }

    /// `interrupt_response`, defaulting to true.
    pub fn interrupt_response(&self) -> bool {
        match self {
            TurnDetection::ServerVad { interrupt_response, .. }
            | TurnDetection::SemanticVad { interrupt_response, .. } => interrupt_response.unwrap_or(true),
        }
    }
}

/// `audio.output.voice`: a built-in name or a custom voice id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    Named(String),
    Custom { id: String },
}

/// `max_output_tokens`: 1–4096 or `"inf"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxOutputTokens {
    Limit(u32),
    Inf(InfLiteral),
}

/// The literal string `"inf"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InfLiteral {
    #[serde(rename = "inf")]
    Inf,
}

/// A session or response tool (§2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Tool {
    /// A function the gateway executes.
    #[serde(rename = "function")]
    Function {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// JSON Schema of the arguments.
        #[serde(default)]
        parameters: Value,
    },
    /// An MCP server run by OpenAI; fields kept verbatim.
    #[serde(rename = "mcp")]
    Mcp(Map<String, Value>),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audio_formats_serialize_exactly() {
        assert_eq!(serde_json::to_value(AudioFormat::PCM24K).unwrap(), json!({"type":"audio/pcm","rate":24000}));
        assert_eq!(serde_json::to_value(AudioFormat::Pcmu).unwrap(), json!({"type":"audio/pcmu"}));
        assert_eq!(serde_json::to_value(AudioFormat::Pcma).unwrap(), json!({"type":"audio/pcma"}));
        let parsed: AudioFormat = serde_json::from_str(r#"{"type":"audio/pcma"}"#).unwrap();
        assert_eq!(parsed, AudioFormat::Pcma);
        assert!(serde_json::from_str::<AudioFormat>(r#"{"type":"g711_ulaw"}"#).is_err());
    }

    #[test]
    fn bytes_to_ms_per_format() {
        assert_eq!(AudioFormat::Pcmu.bytes_to_ms(160), 20.0);
        assert_eq!(AudioFormat::PCM24K.bytes_to_ms(960), 20.0);
    }

    #[test]
    fn null_and_absent_turn_detection_differ() {
        let absent: AudioInput = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.turn_detection, None);
        let null: AudioInput = serde_json::from_str(r#"{"turn_detection":null}"#).unwrap();
        assert_eq!(null.turn_detection, Some(None));
        assert_eq!(serde_json::to_value(&null).unwrap(), json!({"turn_detection": null}));
    }

    #[test]
    fn unknown_session_keys_land_in_extra() {
        let s: SessionConfig = serde_json::from_str(r#"{"type":"realtime","temperature":0.8}"#).unwrap();
        assert_eq!(s.extra.get("temperature"), Some(&json!(0.8)));
    }

    #[test]
    fn max_output_tokens_inf_or_number() {
        let inf: MaxOutputTokens = serde_json::from_str(r#""inf""#).unwrap();
        assert_eq!(inf, MaxOutputTokens::Inf(InfLiteral::Inf));
        let n: MaxOutputTokens = serde_json::from_str("4096").unwrap();
        assert_eq!(n, MaxOutputTokens::Limit(4096));
    }
}
