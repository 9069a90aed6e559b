//! Typed wire events of the GA Realtime protocol (reference §3 client events, §4 server events).
//!
//! Client events are strict when parsed (unknown fields are an error, as the real API answers
//! them with `unknown_parameter`); server events are lenient (unknown fields ignored, unknown
//! event types become [`ServerEvent::Unknown`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::items::{
    ContentPart, FunctionCallItem, FunctionCallOutputItem, Item, ItemStatus, MessageItem, Response, ResponseAudio,
    ResponseAudioOutput, ResponseConfig, ResponseStatus, Role, StatusDetails, Usage,
};
pub use crate::session::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, GA_VOICES, InfLiteral, MaxOutputTokens, NoiseReduction,
    SessionConfig, Tool, Transcription, TurnDetection, Voice,
};

/// Why a JSON text could not be turned into an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("undecodable event JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON object without a string `type`.
    #[error("event has no string `type` field")]
    MissingType,
    /// A known event type whose payload does not match the reference.
    #[error("malformed `{event_type}` event: {source}")]
    Malformed { event_type: String, source: serde_json::Error },
}

/// Events the gateway sends (reference §3). Every one accepts an optional `event_id`, echoed in
/// `error.event_id` when the server rejects the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientEvent {
    #[serde(rename = "session.update")]
    SessionUpdate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Boxed: the session is large and this event is rare next to `append`.
        session: Box<SessionConfig>,
    },
    /// Audio in the session's input format (base64 on the wire, encoded when serialized); the
    /// server never acknowledges it.
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(with = "base64_audio")]
        audio: Vec<u8>,
    },
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioBufferCommit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.clear")]
    InputAudioBufferClear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// `previous_item_id`: `"root"` inserts at the start, an id inserts after it.
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_item_id: Option<String>,
        item: Item,
    },
    #[serde(rename = "conversation.item.retrieve")]
    ConversationItemRetrieve {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        item_id: String,
    },
    /// Cuts an assistant audio item at `audio_end_ms` (§6): what the caller actually heard.
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        item_id: String,
        content_index: u32,
        audio_end_ms: u32,
    },
    #[serde(rename = "conversation.item.delete")]
    ConversationItemDelete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        item_id: String,
    },
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<ResponseConfig>,
    },
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_id: Option<String>,
    },
    /// WebRTC/SIP transports only; meaningless on a WebSocket bridge (§3).
    #[serde(rename = "output_audio_buffer.clear")]
    OutputAudioBufferClear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
}

/// The `type` of every client event, for validation and error messages.
pub const CLIENT_EVENT_TYPES: [&str; 11] = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
];

impl ClientEvent {
    /// Parses a client event strictly (unknown fields are an error).
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Serializes to the wire JSON text.
    pub fn to_json(&self) -> Result<String, EventError> {
        Ok(serde_json::to_string(self)?)
    }

    /// The wire `type` of this event.
    pub fn event_type(&self) -> &'static str {
        match self {
            ClientEvent::SessionUpdate { .. } => "session.update",
            ClientEvent::InputAudioBufferAppend { .. } => "input_audio_buffer.append",
            ClientEvent::InputAudioBufferCommit { .. } => "input_audio_buffer.commit",
            ClientEvent::InputAudioBufferClear { .. } => "input_audio_buffer.clear",
            ClientEvent::ConversationItemCreate { .. } => "conversation.item.create",
            ClientEvent::ConversationItemRetrieve { .. } => "conversation.item.retrieve",
            ClientEvent::ConversationItemTruncate { .. } => "conversation.item.truncate",
            ClientEvent::ConversationItemDelete { .. } => "conversation.item.delete",
            ClientEvent::ResponseCreate { .. } => "response.create",
            ClientEvent::ResponseCancel { .. } => "response.cancel",
            ClientEvent::OutputAudioBufferClear { .. } => "output_audio_buffer.clear",
        }
    }

    /// The client-chosen `event_id`, if any.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            ClientEvent::SessionUpdate { event_id, .. }
            | ClientEvent::InputAudioBufferAppend { event_id, .. }
            | ClientEvent::InputAudioBufferCommit { event_id }
            | ClientEvent::InputAudioBufferClear { event_id }
            | ClientEvent::ConversationItemCreate { event_id, .. }
            | ClientEvent::ConversationItemRetrieve { event_id, .. }
            | ClientEvent::ConversationItemTruncate { event_id, .. }
            | ClientEvent::ConversationItemDelete { event_id, .. }
            | ClientEvent::ResponseCreate { event_id, .. }
            | ClientEvent::ResponseCancel { event_id, .. }
            | ClientEvent::OutputAudioBufferClear { event_id } => event_id.as_deref(),
        }
    }

    /// `input_audio_buffer.append` without an event id (the hot path: one per 20–40 ms).
    pub fn append(audio: Vec<u8>) -> Self {
        ClientEvent::InputAudioBufferAppend { event_id: None, audio }
    }
}

/// `error.error` (§1.3).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// e.g. `invalid_request_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    /// The client `event_id` that caused the error.
    #[serde(default)]
    pub event_id: Option<String>,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    #[serde(default)]
    pub event_id: String,
    pub error: ErrorDetail,
}

/// `session.created` / `session.updated`: the full effective session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    #[serde(default)]
    pub event_id: String,
    pub session: SessionConfig,
}

/// `conversation.created.conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// `conversation.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationCreatedEvent {
    #[serde(default)]
    pub event_id: String,
    pub conversation: ConversationInfo,
}

/// `conversation.item.added` / `.done` / `.created` (beta) / `.retrieved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationItemEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_item_id: Option<String>,
    pub item: Item,
}

/// `conversation.item.truncated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemTruncatedEvent {
    #[serde(default)]
    pub event_id: String,
    pub item_id: String,
    pub content_index: u32,
    pub audio_end_ms: u32,
}

/// `conversation.item.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemDeletedEvent {
    #[serde(default)]
    pub event_id: String,
    pub item_id: String,
}

/// `input_audio_buffer.speech_started`: `audio_start_ms` is on the input timeline (ms appended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechStartedEvent {
    #[serde(default)]
    pub event_id: String,
    pub audio_start_ms: u64,
    pub item_id: String,
}

/// `input_audio_buffer.speech_stopped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechStoppedEvent {
    #[serde(default)]
    pub event_id: String,
    pub audio_end_ms: u64,
    pub item_id: String,
}

/// `input_audio_buffer.committed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferCommittedEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_item_id: Option<String>,
    pub item_id: String,
}

/// Events whose only payload is `event_id` (`input_audio_buffer.cleared`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BareEvent {
    #[serde(default)]
    pub event_id: String,
}

/// `input_audio_buffer.timeout_triggered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeoutTriggeredEvent {
    #[serde(default)]
    pub event_id: String,
    pub audio_start_ms: u64,
    pub audio_end_ms: u64,
    pub item_id: String,
}

/// `input_audio_buffer.dtmf_event_received` (SIP connector only; no `event_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DtmfEvent {
    pub event: String,
    #[serde(default)]
    pub received_at: i64,
}

/// `response.created` / `response.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEvent {
    #[serde(default)]
    pub event_id: String,
    pub response: Response,
}

/// `response.output_item.added` / `.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputItemEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub output_index: u32,
    pub item: Item,
}

/// `response.content_part.added` / `.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPartEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    pub part: ContentPart,
}

/// `response.output_audio.delta`: the audio arrives decoded (base64 is the wire's business; an
/// invalid one makes the whole event malformed, [`EventError::Malformed`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioDeltaEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    /// The audio bytes, in the session's output format.
    #[serde(with = "base64_audio")]
    pub delta: Vec<u8>,
}

/// Audio as base64 text on the wire (standard alphabet, padded), bytes everywhere else.
mod base64_audio {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(audio: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(audio))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Base64Visitor;
        impl de::Visitor<'_> for Base64Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("base64 audio")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
                BASE64.decode(text).map_err(|e| E::custom(format!("audio is not base64: {e}")))
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// `response.output_audio_transcript.delta` and `response.output_text.delta` (text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    pub delta: String,
}

/// `response.output_audio.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioDoneEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
}

/// `response.output_audio_transcript.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptDoneEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    #[serde(default)]
    pub transcript: String,
}

/// `response.output_text.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDoneEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    #[serde(default)]
    pub text: String,
}

/// `response.function_call_arguments.delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallArgumentsDeltaEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub call_id: String,
    pub delta: String,
}

/// `response.function_call_arguments.done`; also sent for interrupted responses (§5.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallArgumentsDoneEvent {
    #[serde(default)]
    pub event_id: String,
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub call_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// One entry of `rate_limits.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `requests` or `tokens`.
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: f64,
}

/// `rate_limits.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitsEvent {
    #[serde(default)]
    pub event_id: String,
    pub rate_limits: Vec<RateLimit>,
}

/// `conversation.item.input_audio_transcription.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionCompletedEvent {
    #[serde(default)]
    pub event_id: String,
    pub item_id: String,
    #[serde(default)]
    pub content_index: u32,
    #[serde(default)]
    pub transcript: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// `conversation.item.input_audio_transcription.delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionDeltaEvent {
    #[serde(default)]
    pub event_id: String,
    pub item_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
}

/// `conversation.item.input_audio_transcription.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionFailedEvent {
    #[serde(default)]
    pub event_id: String,
    pub item_id: String,
    #[serde(default)]
    pub content_index: u32,
    #[serde(default)]
    pub error: ErrorDetail,
}

/// `output_audio_buffer.started` / `.stopped` / `.cleared` (WebRTC/SIP transports only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputAudioBufferEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub response_id: String,
}

/// Events the server sends (reference §4). Beta names (§4.8) parse as their GA variant;
/// serialization always writes GA names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "error")]
    Error(ErrorEvent),
    #[serde(rename = "session.created")]
    SessionCreated(SessionEvent),
    #[serde(rename = "session.updated", alias = "transcription_session.updated")]
    SessionUpdated(SessionEvent),
    #[serde(rename = "conversation.created")]
    ConversationCreated(ConversationCreatedEvent),
    #[serde(rename = "conversation.item.added")]
    ConversationItemAdded(ConversationItemEvent),
    #[serde(rename = "conversation.item.done")]
    ConversationItemDone(ConversationItemEvent),
    /// Beta-era equivalent of `added` + `done`, still in the GA SDK union.
    #[serde(rename = "conversation.item.created")]
    ConversationItemCreated(ConversationItemEvent),
    #[serde(rename = "conversation.item.truncated")]
    ConversationItemTruncated(ItemTruncatedEvent),
    #[serde(rename = "conversation.item.deleted")]
    ConversationItemDeleted(ItemDeletedEvent),
    #[serde(rename = "conversation.item.retrieved")]
    ConversationItemRetrieved(ConversationItemEvent),
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted(SpeechStartedEvent),
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped(SpeechStoppedEvent),
    #[serde(rename = "input_audio_buffer.committed")]
    InputAudioBufferCommitted(BufferCommittedEvent),
    #[serde(rename = "input_audio_buffer.cleared")]
    InputAudioBufferCleared(BareEvent),
    #[serde(rename = "input_audio_buffer.timeout_triggered")]
    InputAudioBufferTimeoutTriggered(TimeoutTriggeredEvent),
    #[serde(rename = "input_audio_buffer.dtmf_event_received")]
    DtmfEventReceived(DtmfEvent),
    #[serde(rename = "response.created")]
    ResponseCreated(ResponseEvent),
    #[serde(rename = "response.done")]
    ResponseDone(ResponseEvent),
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded(OutputItemEvent),
    #[serde(rename = "response.output_item.done")]
    OutputItemDone(OutputItemEvent),
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded(ContentPartEvent),
    #[serde(rename = "response.content_part.done")]
    ContentPartDone(ContentPartEvent),
    #[serde(rename = "response.output_audio.delta", alias = "response.audio.delta")]
    OutputAudioDelta(AudioDeltaEvent),
    #[serde(rename = "response.output_audio.done", alias = "response.audio.done")]
    OutputAudioDone(AudioDoneEvent),
    #[serde(rename = "response.output_audio_transcript.delta", alias = "response.audio_transcript.delta")]
    OutputAudioTranscriptDelta(DeltaEvent),
    #[serde(rename = "response.output_audio_transcript.done", alias = "response.audio_transcript.done")]
    OutputAudioTranscriptDone(TranscriptDoneEvent),
    #[serde(rename = "response.output_text.delta", alias = "response.text.delta")]
    OutputTextDelta(DeltaEvent),
    #[serde(rename = "response.output_text.done", alias = "response.text.done")]
    OutputTextDone(TextDoneEvent),
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta(FunctionCallArgumentsDeltaEvent),
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone(FunctionCallArgumentsDoneEvent),
    #[serde(rename = "rate_limits.updated")]
    RateLimitsUpdated(RateLimitsEvent),
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputAudioTranscriptionCompleted(TranscriptionCompletedEvent),
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    InputAudioTranscriptionDelta(TranscriptionDeltaEvent),
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    InputAudioTranscriptionFailed(TranscriptionFailedEvent),
    #[serde(rename = "output_audio_buffer.started")]
    OutputAudioBufferStarted(OutputAudioBufferEvent),
    #[serde(rename = "output_audio_buffer.stopped")]
    OutputAudioBufferStopped(OutputAudioBufferEvent),
    #[serde(rename = "output_audio_buffer.cleared")]
    OutputAudioBufferCleared(OutputAudioBufferEvent),
    /// A type this crate does not model: log it and carry on (§4.8). Never produced by serde;
    /// [`ServerEvent::to_json`] writes it as `{"type": event_type}`.
    #[serde(skip)]
    Unknown { event_type: String },
}

/// Every server `type` (GA and beta aliases) that has a typed [`ServerEvent`] variant.
const TYPED_SERVER_EVENT_TYPES: &[&str] = &[
    "error",
    "session.created",
    "session.updated",
    "transcription_session.updated",
    "conversation.created",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.created",
    "conversation.item.truncated",
    "conversation.item.deleted",
    "conversation.item.retrieved",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "response.created",
    "response.done",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_audio.delta",
    "response.audio.delta",
    "response.output_audio.done",
    "response.audio.done",
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.audio_transcript.done",
    "response.output_text.delta",
    "response.text.delta",
    "response.output_text.done",
    "response.text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "rate_limits.updated",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.failed",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
];

#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type")]
    event_type: Option<String>,
}

impl ServerEvent {
    /// Parses a server event leniently: unknown fields are ignored and an unknown `type` yields
    /// [`ServerEvent::Unknown`]. Errors only for non-JSON, a missing `type`, or a known type
    /// with a payload that does not fit.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        match serde_json::from_str::<ServerEvent>(text) {
            Ok(event) => Ok(event),
            Err(source) => {
                let probe: TypeProbe = serde_json::from_str(text)?;
                let event_type = probe.event_type.ok_or(EventError::MissingType)?;
                if TYPED_SERVER_EVENT_TYPES.contains(&event_type.as_str()) {
                    Err(EventError::Malformed { event_type, source })
                } else {
                    Ok(ServerEvent::Unknown { event_type })
                }
            }
        }
    }

    /// Serializes to the wire JSON text (GA names).
    pub fn to_json(&self) -> Result<String, EventError> {
        match self {
            ServerEvent::Unknown { event_type } => Ok(serde_json::json!({ "type": event_type }).to_string()),
            other => Ok(serde_json::to_string(other)?),
        }
    }

    /// The GA wire `type` of this event.
    pub fn event_type(&self) -> &str {
        match self {
            ServerEvent::Error(_) => "error",
            ServerEvent::SessionCreated(_) => "session.created",
            ServerEvent::SessionUpdated(_) => "session.updated",
            ServerEvent::ConversationCreated(_) => "conversation.created",
            ServerEvent::ConversationItemAdded(_) => "conversation.item.added",
            ServerEvent::ConversationItemDone(_) => "conversation.item.done",
            ServerEvent::ConversationItemCreated(_) => "conversation.item.created",
            ServerEvent::ConversationItemTruncated(_) => "conversation.item.truncated",
            ServerEvent::ConversationItemDeleted(_) => "conversation.item.deleted",
            ServerEvent::ConversationItemRetrieved(_) => "conversation.item.retrieved",
            ServerEvent::SpeechStarted(_) => "input_audio_buffer.speech_started",
            ServerEvent::SpeechStopped(_) => "input_audio_buffer.speech_stopped",
            ServerEvent::InputAudioBufferCommitted(_) => "input_audio_buffer.committed",
            ServerEvent::InputAudioBufferCleared(_) => "input_audio_buffer.cleared",
            ServerEvent::InputAudioBufferTimeoutTriggered(_) => "input_audio_buffer.timeout_triggered",
            ServerEvent::DtmfEventReceived(_) => "input_audio_buffer.dtmf_event_received",
            ServerEvent::ResponseCreated(_) => "response.created",
            ServerEvent::ResponseDone(_) => "response.done",
            ServerEvent::OutputItemAdded(_) => "response.output_item.added",
            ServerEvent::OutputItemDone(_) => "response.output_item.done",
            ServerEvent::ContentPartAdded(_) => "response.content_part.added",
            ServerEvent::ContentPartDone(_) => "response.content_part.done",
            ServerEvent::OutputAudioDelta(_) => "response.output_audio.delta",
            ServerEvent::OutputAudioDone(_) => "response.output_audio.done",
            ServerEvent::OutputAudioTranscriptDelta(_) => "response.output_audio_transcript.delta",
            ServerEvent::OutputAudioTranscriptDone(_) => "response.output_audio_transcript.done",
            ServerEvent::OutputTextDelta(_) => "response.output_text.delta",
            ServerEvent::OutputTextDone(_) => "response.output_text.done",
            ServerEvent::FunctionCallArgumentsDelta(_) => "response.function_call_arguments.delta",
            ServerEvent::FunctionCallArgumentsDone(_) => "response.function_call_arguments.done",
            ServerEvent::RateLimitsUpdated(_) => "rate_limits.updated",
            ServerEvent::InputAudioTranscriptionCompleted(_) => "conversation.item.input_audio_transcription.completed",
            ServerEvent::InputAudioTranscriptionDelta(_) => "conversation.item.input_audio_transcription.delta",
            ServerEvent::InputAudioTranscriptionFailed(_) => "conversation.item.input_audio_transcription.failed",
            ServerEvent::OutputAudioBufferStarted(_) => "output_audio_buffer.started",
            ServerEvent::OutputAudioBufferStopped(_) => "output_audio_buffer.stopped",
            ServerEvent::OutputAudioBufferCleared(_) => "output_audio_buffer.cleared",
            ServerEvent::Unknown { event_type } => event_type,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip_client(raw: Value) -> ClientEvent {
        let event = ClientEvent::from_json(&raw.to_string()).unwrap();
        let back: Value = serde_json::from_str(&event.to_json().unwrap()).unwrap();
        assert_eq!(back, raw);
        event
    }

    #[test]
    fn session_update_example_from_reference_round_trips() {
        let raw = json!({
          "type": "session.update",
          "event_id": "evt_cfg_1",
          "session": {
            "type": "realtime",
            "model": "gpt-realtime-2.1",
            "output_modalities": ["audio"],
            "instructions": "You are the phone agent for Example Corp. Be brief.",
            "audio": {
              "input": {
                "format": { "type": "audio/pcmu" },
                "noise_reduction": { "type": "near_field" },
                "transcription": { "model": "gpt-4o-mini-transcribe", "language": "en" },
                "turn_detection": {
                  "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                  "silence_duration_ms": 500, "idle_timeout_ms": 10000,
                  "create_response": true, "interrupt_response": true
                }
              },
              "output": { "format": { "type": "audio/pcmu" }, "voice": "marin", "speed": 1.0 }
            },
            "tools": [
              { "type": "function", "name": "lookup_order",
                "description": "Look up an order by number.",
                "parameters": { "type": "object",
                                "properties": { "order_id": { "type": "string" } },
                                "required": ["order_id"] } },
              { "type": "mcp", "server_label": "crm", "server_url": "https://crm.example.com/mcp",
                "allowed_tools": ["get_customer"], "require_approval": "never" }
            ],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "truncation": { "type": "retention_ratio", "retention_ratio": 0.8 },
            "tracing": "auto",
            "include": ["item.input_audio_transcription.logprobs"]
          }
        });
        let event = round_trip_client(raw);
        let ClientEvent::SessionUpdate { event_id, session } = event else { panic!("wrong variant") };
        assert_eq!(event_id.as_deref(), Some("evt_cfg_1"));
        let input = session.audio.unwrap().input.unwrap();
        assert_eq!(input.format, Some(AudioFormat::Pcmu));
        let td = input.turn_detection.unwrap().unwrap();
        assert!(td.create_response() && td.interrupt_response());
        assert!(matches!(td, TurnDetection::ServerVad { idle_timeout_ms: Some(Some(10000)), .. }));
        assert!(matches!(
            session.tools.unwrap()[0],
            Tool::Function { ref name, .. } if name == "lookup_order"
        ));
    }

    #[test]
    fn client_events_from_reference_round_trip() {
        round_trip_client(json!({"type":"input_audio_buffer.append","audio":"AAAA"}));
        round_trip_client(json!({"type":"input_audio_buffer.commit"}));
        round_trip_client(json!({"type":"input_audio_buffer.clear","event_id":"e1"}));
        round_trip_client(json!({"type":"conversation.item.truncate","item_id":"item_1",
            "content_index":0,"audio_end_ms":1500}));
        round_trip_client(json!({"type":"conversation.item.create",
            "item":{"type":"function_call_output","call_id":"call_001",
                    "output":"{\"status\":\"shipped\",\"eta\":\"2026-09-03\"}"}}));
        round_trip_client(json!({"type":"conversation.item.create","previous_item_id":"root",
            "item":{"type":"message","role":"user","content":[{"type":"input_text","text":"Greet the user"}]}}));
        round_trip_client(json!({"type":"response.create"}));
        round_trip_client(json!({"type":"response.create","response":{"instructions":"Say hi",
            "conversation":"none","metadata":{"k":"v"}}}));
        round_trip_client(json!({"type":"response.cancel","response_id":"resp_1"}));
        round_trip_client(json!({"type":"conversation.item.delete","item_id":"x"}));
        round_trip_client(json!({"type":"conversation.item.retrieve","item_id":"x"}));
        round_trip_client(json!({"type":"output_audio_buffer.clear"}));
    }

    #[test]
    fn client_events_are_strict() {
        let err = ClientEvent::from_json(r#"{"type":"input_audio_buffer.commit","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(ClientEvent::from_json(r#"{"type":"nope"}"#).is_err());
        assert!(ClientEvent::from_json(r#"{"type":"response.create","response":{"temperature":0.8}}"#).is_err());
    }

    #[test]
    fn truncate_serializes_with_content_index() {
        let event = ClientEvent::ConversationItemTruncate {
            event_id: None,
            item_id: "item_9".into(),
            content_index: 0,
            audio_end_ms: 1234,
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"type":"conversation.item.truncate","item_id":"item_9","content_index":0,"audio_end_ms":1234})
        );
        assert_eq!(event.event_type(), "conversation.item.truncate");
        assert_eq!(event.event_id(), None);
    }

    #[test]
    fn error_example_from_reference_parses() {
        let text = r#"{"type":"error","event_id":"event_890",
            "error":{"type":"invalid_request_error","code":"invalid_event",
            "message":"The 'type' field is missing.","param":null,"event_id":"event_567"}}"#;
        let ServerEvent::Error(e) = ServerEvent::from_json(text).unwrap() else { panic!("not an error") };
        assert_eq!(e.event_id, "event_890");
        assert_eq!(e.error.kind, "invalid_request_error");
        assert_eq!(e.error.code.as_deref(), Some("invalid_event"));
        assert_eq!(e.error.event_id.as_deref(), Some("event_567"));
        assert_eq!(e.error.param, None);
    }

    #[test]
    fn function_call_arguments_done_example_parses() {
        let text = r#"{"type":"response.function_call_arguments.done","event_id":"event_5556","response_id":"resp_002","item_id":"fc_001","output_index":0,"call_id":"call_001","name":"get_weather","arguments":"{\"location\": \"San Francisco\"}"}"#;
        let event = ServerEvent::from_json(text).unwrap();
        let ServerEvent::FunctionCallArgumentsDone(done) = &event else { panic!("wrong variant {event:?}") };
        assert_eq!(done.name.as_deref(), Some("get_weather"));
        assert_eq!(done.call_id, "call_001");
        let back: Value = serde_json::from_str(&event.to_json().unwrap()).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn response_done_with_usage_parses() {
        let text = json!({"type":"response.done","event_id":"e","response":{
            "object":"realtime.response","id":"resp_1","conversation_id":"conv_1",
            "status":"cancelled","status_details":{"type":"cancelled","reason":"turn_detected"},
            "output":[{"id":"item_1","object":"realtime.item","type":"message","status":"incomplete",
                       "role":"assistant","content":[{"type":"output_audio","transcript":"Hel"}]}],
            "usage":{"total_tokens":253,"input_tokens":132,"output_tokens":121,
                "input_token_details":{"text_tokens":119,"audio_tokens":13,"image_tokens":0,"cached_tokens":64,
                "cached_tokens_details":{"text_tokens":64,"audio_tokens":0,"image_tokens":0}},
                "output_token_details":{"text_tokens":30,"audio_tokens":91}},
            "some_new_field": 1}})
        .to_string();
        let ServerEvent::ResponseDone(done) = ServerEvent::from_json(&text).unwrap() else { panic!("wrong variant") };
        assert_eq!(done.response.status, ResponseStatus::Cancelled);
        assert_eq!(done.response.status_details.unwrap().reason.as_deref(), Some("turn_detected"));
        assert_eq!(done.response.usage.unwrap().total_tokens, 253);
        assert_eq!(done.response.output[0].id(), Some("item_1"));
    }

    #[test]
    fn audio_is_bytes_and_base64_only_on_the_wire() {
        let append = ClientEvent::append(vec![0xFF, 0x00, 0x7F]);
        let text = append.to_json().unwrap();
        assert_eq!(text, r#"{"type":"input_audio_buffer.append","audio":"/wB/"}"#);
        assert_eq!(ClientEvent::from_json(&text).unwrap(), append);

        // JSON may escape the slash; the audio still decodes.
        let text = r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"\/wB/"}"#;
        let ServerEvent::OutputAudioDelta(delta) = ServerEvent::from_json(text).unwrap() else { panic!() };
        assert_eq!(delta.delta, [0xFF, 0x00, 0x7F]);
        assert!(ServerEvent::OutputAudioDelta(delta).to_json().unwrap().contains(r#""delta":"/wB/""#));
    }

    #[test]
    fn an_audio_delta_with_bad_base64_is_malformed() {
        let text = r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"not base64!"}"#;
        assert!(matches!(ServerEvent::from_json(text), Err(EventError::Malformed { .. })));
    }

    #[test]
    fn beta_names_are_aliases() {
        let text = r#"{"type":"response.audio.delta","event_id":"e","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"AAA="}"#;
        let event = ServerEvent::from_json(text).unwrap();
        assert!(matches!(event, ServerEvent::OutputAudioDelta(ref d) if d.delta == [0, 0]));
        assert!(event.to_json().unwrap().contains("response.output_audio.delta"));
        let text = r#"{"type":"response.audio_transcript.done","response_id":"r","item_id":"i","output_index":0,"content_index":0,"transcript":"hi"}"#;
        assert!(matches!(ServerEvent::from_json(text).unwrap(), ServerEvent::OutputAudioTranscriptDone(_)));
        let text = r#"{"type":"response.text.delta","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"x"}"#;
        assert!(matches!(ServerEvent::from_json(text).unwrap(), ServerEvent::OutputTextDelta(_)));
        let text = r#"{"type":"conversation.item.created","item":{"type":"message","role":"user","content":[]}}"#;
        assert!(matches!(ServerEvent::from_json(text).unwrap(), ServerEvent::ConversationItemCreated(_)));
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let event = ServerEvent::from_json(r#"{"type":"mcp_list_tools.completed","item_id":"x"}"#).unwrap();
        assert_eq!(event, ServerEvent::Unknown { event_type: "mcp_list_tools.completed".into() });
        assert_eq!(event.to_json().unwrap(), r#"{"type":"mcp_list_tools.completed"}"#);
        let event = ServerEvent::from_json(
            r#"{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1000,"item_id":"item_1","future":true}"#,
        )
        .unwrap();
        assert!(matches!(event, ServerEvent::SpeechStarted(ref s) if s.audio_start_ms == 1000));
    }

    #[test]
    fn parse_failures_are_typed() {
        assert!(matches!(ServerEvent::from_json("not json"), Err(EventError::Json(_))));
        assert!(matches!(ServerEvent::from_json(r#"{"event_id":"e"}"#), Err(EventError::MissingType)));
        assert!(matches!(
            ServerEvent::from_json(r#"{"type":"response.output_audio.delta","delta":5}"#),
            Err(EventError::Malformed { .. })
        ));
    }

    #[test]
    fn session_created_with_read_only_fields_parses() {
        let text = json!({"type":"session.created","event_id":"e","session":{
            "type":"realtime","object":"realtime.session","id":"sess_1","expires_at":1756324625,
            "model":"gpt-realtime","output_modalities":["audio"],
            "audio":{"input":{"format":{"type":"audio/pcm","rate":24000},"transcription":null,
                "noise_reduction":null,"turn_detection":{"type":"server_vad","threshold":0.5,
                "prefix_padding_ms":300,"silence_duration_ms":200,"idle_timeout_ms":null,
                "create_response":true,"interrupt_response":true}},
                "output":{"format":{"type":"audio/pcm","rate":24000},"voice":"marin","speed":1.0}},
            "tools":[],"tool_choice":"auto","max_output_tokens":"inf","tracing":null,
            "truncation":"auto","prompt":null,"include":null}})
        .to_string();
        let ServerEvent::SessionCreated(created) = ServerEvent::from_json(&text).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(created.session.id.as_deref(), Some("sess_1"));
        assert_eq!(created.session.expires_at, Some(1_756_324_625));
        let input = created.session.audio.unwrap().input.unwrap();
        assert_eq!(input.format, Some(AudioFormat::PCM24K));
        assert_eq!(input.transcription, Some(None));
    }

    #[test]
    fn truncated_or_corrupted_input_never_panics() {
        let samples = [
            r#"{"type":"response.output_audio.delta","event_id":"e","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"AAA="}"#,
            r#"{"type":"response.done","response":{"id":"r","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_audio","transcript":"x"}]}]}}"#,
            r#"{"type":"session.created","session":{"type":"realtime","audio":{"input":{"turn_detection":null}}}}"#,
        ];
        for sample in samples {
            assert!(ServerEvent::from_json(sample).is_ok(), "{sample}");
            for end in 0..sample.len() {
                let _ = ServerEvent::from_json(&sample[..end]);
            }
            for i in 0..sample.len() {
                let mut bytes = sample.as_bytes().to_vec();
                bytes[i] = b'"';
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = ServerEvent::from_json(text);
                    let _ = ClientEvent::from_json(text);
                }
            }
        }
    }

    #[test]
    fn every_typed_server_event_type_is_listed() {
        // Each GA name produced by event_type() must be recognised as typed, so a malformed
        // payload is reported instead of silently becoming Unknown.
        let sample = ServerEvent::InputAudioBufferCleared(BareEvent { event_id: "e".into() });
        assert!(TYPED_SERVER_EVENT_TYPES.contains(&sample.event_type()));
        for name in
            ["response.output_audio.delta", "conversation.item.input_audio_transcription.failed", "rate_limits.updated"]
        {
            assert!(TYPED_SERVER_EVENT_TYPES.contains(&name));
        }
    }
}
