//! Transfer to a human (`[agents.NAME.transfer]`, docs/configuration.md "Transfer to a human"):
//! the built-in `transfer_to_human` tool, the rules (a DTMF key, `max_call_secs`, the AI
//! unreachable), blind transfer by REFER with its outcome tracked from NOTIFY sipfrag
//! (RFC 3515), and the fallbacks.
//!
//! - [`machine`]: the sans-IO state machine (announce, refer or dial, outcome, fallback);
//! - the call core's hooks (announcement played, rules): `call/core/transfer.rs`;
//! - the shell's glue (REFER task, NOTIFY, actions carried out): `shell.rs` here, a child of
//!   `call::shell` so that it extends `MediaLoop`.
//!
//! Targets only ever come from the configuration: the model names a queue from an `enum` of
//! the configured names, and a name that is not configured gets an error output, never a dial
//! (toll-fraud safety).

pub mod dial;
pub mod machine;

use serde::Deserialize;
use serde_json::json;
use switchboard_realtime::events::Tool;

use crate::config::TransferConfig;
use crate::config::transfer_limits::{MAX_HEADER_VALUE, MAX_HEADERS};

/// The built-in tool's name.
pub const TRANSFER_TOOL: &str = "transfer_to_human";

/// The model's stated reason is kept to this many characters (headers, records).
pub const MAX_REASON_CHARS: usize = 200;

/// `transfer_to_human` for `session.tools` (reference §2.4), when the agent has queues:
/// `queue` is an `enum` of the configured names.
pub fn transfer_tool(cfg: &TransferConfig) -> Option<Tool> {
    if !cfg.enabled() {
        return None;
    }
    let queues: Vec<&str> = cfg.queues.keys().map(String::as_str).collect();
    Some(Tool::Function {
        name: TRANSFER_TOOL.into(),
        description: Some(
            "Transfer the caller to a human in one of the queues. Use it when the caller asks for a person or \
             when you cannot help. Do not say goodbye: the caller is told to hold."
                .into(),
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "queue": {"type": "string", "enum": queues, "description": "Which team to transfer to."},
                "reason": {"type": "string", "description": "Why the caller needs a person, in a few words."}
            },
            "required": ["queue", "reason"]
        }),
    })
}

/// The tool call's arguments, as the model wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferArguments {
    pub queue: String,
    /// Cleaned: no control characters, at most [`MAX_REASON_CHARS`].
    pub reason: String,
}

/// Why the arguments were not usable (the model gets it as the tool's error output).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentsError {
    #[error("arguments are not a JSON object with a string `queue`: {0}")]
    Malformed(String),
}

/// Parses `{"queue": "...", "reason": "..."}` (`reason` optional).
pub fn parse_arguments(arguments: &str) -> Result<TransferArguments, ArgumentsError> {
    #[derive(Deserialize)]
    struct Raw {
        queue: String,
        #[serde(default)]
        reason: String,
    }
    let raw: Raw = serde_json::from_str(arguments).map_err(|e| ArgumentsError::Malformed(e.to_string()))?;
    Ok(TransferArguments { queue: raw.queue, reason: clean_text(&raw.reason, MAX_REASON_CHARS) })
}

/// Control characters (CR, LF above all: header injection) become spaces, runs of
/// whitespace one space, and the text is cut to `max_chars`.
pub fn clean_text(text: &str, max_chars: usize) -> String {
    let spaced: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(max_chars).collect()
}

/// What the `{placeholders}` of the transfer headers stand for.
#[derive(Debug, Clone, Copy)]
pub struct HeaderContext<'a> {
    pub call_id: &'a str,
    pub agent: &'a str,
    pub queue: &'a str,
    pub reason: &'a str,
}

/// The configured `X-` headers with their placeholders filled, each value cleaned (no CR/LF)
/// and bounded ([`MAX_HEADER_VALUE`] bytes), at most [`MAX_HEADERS`]; an empty value is left
/// out.
pub fn context_headers(cfg: &TransferConfig, context: HeaderContext<'_>) -> Vec<(String, String)> {
    cfg.headers
        .iter()
        .take(MAX_HEADERS)
        .filter_map(|(name, template)| {
            // One pass: a model's reason that contains `{call_id}` stays text.
            let filled = switchboard_router::render::fill(template, |name| match name {
                "call_id" => Some(context.call_id),
                "agent" => Some(context.agent),
                "queue" => Some(context.queue),
                "reason" => Some(context.reason),
                _ => None,
            });
            let mut value = clean_text(&filled, MAX_HEADER_VALUE);
            while value.len() > MAX_HEADER_VALUE {
                value.pop();
            }
            (!value.is_empty()).then(|| (name.clone(), value))
        })
        .collect()
}

/// `Referred-By` (RFC 3892 §3): who asks the caller's side to call the target: us, as the
/// dialog's local party URI when known.
pub fn referred_by(local_uri: &str) -> String {
    format!("<{local_uri}>")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config() -> TransferConfig {
        TransferConfig {
            queues: BTreeMap::from([
                ("sales".into(), "sip:sales@pbx.example.com".into()),
                ("support".into(), "sip:support@pbx.example.com".into()),
            ]),
            ..TransferConfig::default()
        }
    }

    #[test]
    fn the_tool_offers_the_configured_queues_only() {
        assert!(transfer_tool(&TransferConfig::default()).is_none(), "no queues, no tool");
        let Some(Tool::Function { name, parameters, .. }) = transfer_tool(&config()) else { panic!("a function tool") };
        assert_eq!(name, TRANSFER_TOOL);
        assert_eq!(parameters["properties"]["queue"]["enum"], json!(["sales", "support"]));
        assert_eq!(parameters["required"], json!(["queue", "reason"]));
    }

    #[test]
    fn arguments_are_parsed_and_the_reason_cleaned() {
        let parsed = parse_arguments(r#"{"queue":"sales","reason":"wants\r\nX-Evil: 1\ta  person"}"#).unwrap();
        assert_eq!(parsed, TransferArguments { queue: "sales".into(), reason: "wants X-Evil: 1 a person".into() });
        assert_eq!(parse_arguments(r#"{"queue":"sales"}"#).unwrap().reason, "");
        assert!(parse_arguments(r#"{"reason":"x"}"#).is_err());
        assert!(parse_arguments("sales").is_err());
        let long = format!(r#"{{"queue":"q","reason":"{}"}}"#, "é".repeat(500));
        assert_eq!(parse_arguments(&long).unwrap().reason.chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn headers_carry_the_context_without_injection() {
        let context = HeaderContext { call_id: "c-1", agent: "front", queue: "sales", reason: "line1\r\nVia: evil" };
        let headers = context_headers(&config(), context);
        assert_eq!(
            headers,
            vec![
                ("X-Switchboard-Agent".to_owned(), "front".to_owned()),
                ("X-Switchboard-Call-Id".to_owned(), "c-1".to_owned()),
                ("X-Switchboard-Queue".to_owned(), "sales".to_owned()),
                ("X-Switchboard-Reason".to_owned(), "line1 Via: evil".to_owned()),
            ]
        );
        let long = "x".repeat(1000);
        let context = HeaderContext { reason: &long, ..context };
        assert!(context_headers(&config(), context).iter().all(|(_, v)| v.len() <= MAX_HEADER_VALUE));
        let nested = HeaderContext { reason: "see {call_id}", ..context };
        let reason = context_headers(&config(), nested).into_iter().find(|(n, _)| n == "X-Switchboard-Reason");
        assert_eq!(reason.map(|(_, v)| v), Some("see {call_id}".to_owned()), "a value is not expanded again");
        let empty = HeaderContext { reason: "", ..context };
        assert!(!context_headers(&config(), empty).iter().any(|(n, _)| n == "X-Switchboard-Reason"));
    }
}
