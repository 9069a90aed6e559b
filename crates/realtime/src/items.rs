//! Conversation items (reference §3.1) and the response object (§4.3).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::session::{AudioFormat, MaxOutputTokens, Tool, Voice};

/// A conversation item. Types this crate does not model (MCP items, future ones) are kept
/// verbatim in [`Item::Other`] so a new item type never breaks parsing of a server event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Item {
    #[serde(rename = "message")]
    Message(MessageItem),
    #[serde(rename = "function_call")]
    FunctionCall(FunctionCallItem),
    #[serde(rename = "function_call_output")]
    FunctionCallOutput(FunctionCallOutputItem),
    /// Any other item type, including its `type` key.
    #[serde(untagged)]
    Other(Map<String, Value>),
}

impl Item {
    /// The item id, when set.
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Message(m) => m.id.as_deref(),
            Item::FunctionCall(f) => f.id.as_deref(),
            Item::FunctionCallOutput(f) => f.id.as_deref(),
            Item::Other(map) => map.get("id").and_then(Value::as_str),
        }
    }

    /// Sets the item id (the server assigns one when the client did not).
    pub fn set_id(&mut self, id: String) {
        match self {
            Item::Message(m) => m.id = Some(id),
            Item::FunctionCall(f) => f.id = Some(id),
            Item::FunctionCallOutput(f) => f.id = Some(id),
            Item::Other(map) => {
                map.insert("id".to_owned(), Value::String(id));
            }
        }
    }

    /// A user message with one `input_text` part.
    pub fn user_text(text: impl Into<String>) -> Self {
        Item::Message(MessageItem {
            role: Role::User,
            content: vec![ContentPart::InputText { text: text.into() }],
            ..MessageItem::default()
        })
    }

    /// A system message with one `input_text` part (mid-call context, DTMF, …).
    pub fn system_text(text: impl Into<String>) -> Self {
        Item::Message(MessageItem {
            role: Role::System,
            content: vec![ContentPart::InputText { text: text.into() }],
            ..MessageItem::default()
        })
    }

    /// The result of a function call.
    pub fn function_call_output(call_id: impl Into<String>, output: impl Into<String>) -> Self {
        Item::FunctionCallOutput(FunctionCallOutputItem {
            call_id: call_id.into(),
            output: output.into(),
            ..FunctionCallOutputItem::default()
        })
    }
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Assistant,
    System,
}

/// `completed | incomplete | in_progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Completed,
    Incomplete,
    InProgress,
}

/// `{"type":"message", role, content}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessageItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    pub role: Role,
    #[serde(default)]
    pub content: Vec<ContentPart>,
}

/// `{"type":"function_call", name, arguments, call_id}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FunctionCallItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    #[serde(default)]
    pub name: String,
    /// JSON text of the arguments.
    #[serde(default)]
    pub arguments: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// `{"type":"function_call_output", call_id, output}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FunctionCallOutputItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    pub call_id: String,
    pub output: String,
}

/// One content part of a message. GA assistant parts are `output_text` / `output_audio`; the
/// beta names `text` / `audio` are accepted and kept as their own variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ContentPart {
    #[serde(rename = "input_text")]
    InputText { text: String },
    #[serde(rename = "input_audio")]
    InputAudio {
        /// Base64 audio; never present in server item events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        #[serde(default)]
        transcript: Option<String>,
    },
    #[serde(rename = "input_image")]
    InputImage {
        image_url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    #[serde(rename = "output_text")]
    OutputText { text: String },
    #[serde(rename = "output_audio")]
    OutputAudio {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        #[serde(default)]
        transcript: Option<String>,
    },
    /// Beta name of `output_text`, and the `part` type of `response.content_part.*`.
    #[serde(rename = "text")]
    Text {
        #[serde(default)]
        text: Option<String>,
    },
    /// Beta name of `output_audio`, and the `part` type of `response.content_part.*`.
    #[serde(rename = "audio")]
    Audio {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        #[serde(default)]
        transcript: Option<String>,
    },
    /// Any other part type, including its `type` key.
    #[serde(untagged)]
    Other(Map<String, Value>),
}

/// `response.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    InProgress,
    Completed,
    Cancelled,
    Failed,
    Incomplete,
}

/// `response.status_details` (§4.3): reason `turn_detected` / `client_cancelled` for cancelled,
/// `max_output_tokens` / `content_filter` for incomplete; `error` for failed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// `response.audio` (§4.3).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseAudio {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ResponseAudioOutput>,
}

/// `response.audio.output`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseAudioOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
}

/// The response object of `response.created` / `response.done` (§4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub id: String,
    /// Null for out-of-band responses.
    #[serde(default)]
    pub conversation_id: Option<String>,
    pub status: ResponseStatus,
    #[serde(default)]
    pub status_details: Option<StatusDetails>,
    #[serde(default)]
    pub output: Vec<Item>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<ResponseAudio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Token usage of a response (§4.3).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_details: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_token_details: Option<Value>,
}

/// `response.create.response` (§3.2): per-response overrides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// `"auto"` (default) or `"none"` (out of band).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<ResponseAudio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_item_types_are_kept_verbatim() {
        let raw = json!({"type":"mcp_call","id":"mcp_1","name":"x","server_label":"crm"});
        let item: Item = serde_json::from_value(raw.clone()).unwrap();
        assert!(matches!(item, Item::Other(_)));
        assert_eq!(item.id(), Some("mcp_1"));
        assert_eq!(serde_json::to_value(&item).unwrap(), raw);
    }

    #[test]
    fn function_call_output_round_trips() {
        let raw = json!({"type":"function_call_output","call_id":"call_001","output":"{\"status\":\"shipped\"}"});
        let item: Item = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(item, Item::function_call_output("call_001", "{\"status\":\"shipped\"}"));
        assert_eq!(serde_json::to_value(&item).unwrap(), raw);
    }

    /// Found by the `realtime_event` fuzz target (fuzz/regressions/realtime_event/): JSON with a
    /// duplicate key (RFC 8259 §4 leaves its meaning undefined) makes serde refuse the typed
    /// item, so it is kept as `Other` with the duplicates merged (last wins). Pinned here so a
    /// change is deliberate: the item is not lost, and its re-encoding reads as the typed item.
    #[test]
    fn duplicate_keys_keep_the_item_as_other() {
        let text = r#"{"type":"function_call_output","call_id":"a","output":"1","call_id":"b","output":"2"}"#;
        let item: Item = serde_json::from_str(text).unwrap();
        let Item::Other(map) = &item else { panic!("expected the Other fallback, got {item:?}") };
        assert_eq!(map.get("call_id"), Some(&json!("b")));
        let again: Item = serde_json::from_str(&serde_json::to_string(&item).unwrap()).unwrap();
        assert_eq!(again, Item::function_call_output("b", "2"));
    }

    /// Regression (fuzz/regressions/realtime_event): without serde_json's `float_roundtrip` a
    /// number in an item we do not model came back as a neighbouring float after one round trip.
    #[test]
    fn numbers_in_unknown_items_round_trip_exactly() {
        let text = r#"{"type":"message","co/n":"u(er","c*ntent":[1.1111111111111109e+83]}"#;
        let item: Item = serde_json::from_str(text).unwrap();
        let again: Item = serde_json::from_str(&serde_json::to_string(&item).unwrap()).unwrap();
        assert_eq!(again, item);
    }

    #[test]
    fn assistant_audio_message_parses() {
        let raw = json!({"id":"item_1","object":"realtime.item","type":"message","status":"completed",
            "role":"assistant","content":[{"type":"output_audio","transcript":"Hello"}]});
        let item: Item = serde_json::from_value(raw).unwrap();
        let Item::Message(m) = item else { panic!("not a message") };
        assert_eq!(m.role, Role::Assistant);
        assert_eq!(m.content, vec![ContentPart::OutputAudio { audio: None, transcript: Some("Hello".into()) }]);
    }
}
