//! Runtime controls, `POST /_sim/control/{what}` with a JSON body (docs/simulator.md): faults
//! that a test triggers at the moment it chooses, on every open session or on the next upgrades.

use serde::Deserialize;
use serde_json::Value;

use crate::core::ToolCallScript;
use crate::mcp::McpCallScript;

/// How the `drop` control ends a session's WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropMode {
    /// The TCP connection ends without a close frame: the client sees 1006.
    Reset,
    /// A close frame with this code (1011 internal error, 1001 going away).
    Close(u16),
}

/// What an open session is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Drop(DropMode),
    /// `error` `session_expired` then close 1001 (§7), now or once a response streams audio.
    Expire {
        mid_response: bool,
    },
    /// The next response (or one started at once with `now`) says goodbye and calls a tool.
    CallTool {
        script: ToolCallScript,
        now: bool,
    },
    McpCall {
        script: McpCallScript,
        now: bool,
    },
}

/// A parsed control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Sent to every open session.
    Session(SessionCommand),
    /// The next `count` upgrades are refused with `status`.
    RefuseUpgrades { status: u16, count: u32 },
}

/// `refuse_upgrades` state: how many more upgrades to refuse, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpgradeRefusals {
    pub status: u16,
    pub remaining: u32,
}

impl UpgradeRefusals {
    /// The status to refuse this upgrade with, counting it; None once they are used up.
    pub fn take_one(&mut self) -> Option<u16> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(self.status)
    }
}

/// Why a control request was refused (the test's fault: 404 or 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown control {0:?}: expected drop, expire, refuse_upgrades, call_tool or mcp_call")]
    UnknownControl(String),
    #[error("invalid body for control {what:?}: {reason}")]
    InvalidBody { what: &'static str, reason: String },
}

impl ControlError {
    /// Whether the control name itself is unknown (404) rather than its body (400).
    pub fn is_unknown_control(&self) -> bool {
        matches!(self, ControlError::UnknownControl(_))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropBody {
    mode: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    #[serde(default)]
    mid_response: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseBody {
    status: u16,
    count: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallToolBody {
    name: String,
    #[serde(default = "empty_arguments")]
    arguments: String,
    #[serde(default = "default_say_ms")]
    say_ms: u32,
    #[serde(default)]
    now: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpCallBody {
    server: String,
    name: String,
    #[serde(default = "empty_arguments")]
    arguments: String,
    #[serde(default)]
    now: bool,
}

fn empty_arguments() -> String {
    "{}".to_owned()
}

fn default_say_ms() -> u32 {
    1500
}

/// A goodbye longer than this is a test mistake (and would hold a whole response in memory).
const MAX_SAY_MS: u32 = 60_000;

fn body<T: for<'de> Deserialize<'de>>(what: &'static str, text: &str) -> Result<T, ControlError> {
    // An empty body means "all defaults" where every field has one.
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| ControlError::InvalidBody { what, reason: e.to_string() })
}

impl Control {
    /// Parses `POST /_sim/control/{what}`'s name and JSON body.
    pub fn parse(what: &str, text: &str) -> Result<Control, ControlError> {
        match what {
            "drop" => {
                let b: DropBody = body("drop", text)?;
                let mode = match b.mode.as_str() {
                    "reset" => DropMode::Reset,
                    "close_1011" => DropMode::Close(1011),
                    "close_1001" => DropMode::Close(1001),
                    other => {
                        return Err(ControlError::InvalidBody {
                            what: "drop",
                            reason: format!("mode {other:?}: expected reset, close_1011 or close_1001"),
                        });
                    }
                };
                Ok(Control::Session(SessionCommand::Drop(mode)))
            }
            "expire" => {
                let b: ExpireBody = body("expire", text)?;
                Ok(Control::Session(SessionCommand::Expire { mid_response: b.mid_response }))
            }
            "refuse_upgrades" => {
                let b: RefuseBody = body("refuse_upgrades", text)?;
                // §1.3: 401 bad key, 403 no access, 429 rate limit, 5xx server trouble.
                if !(b.status == 401 || b.status == 403 || b.status == 429 || (500..=599).contains(&b.status)) {
                    return Err(ControlError::InvalidBody {
                        what: "refuse_upgrades",
                        reason: format!("status {}: expected 401, 403, 429 or 500-599", b.status),
                    });
                }
                Ok(Control::RefuseUpgrades { status: b.status, count: b.count })
            }
            "call_tool" => {
                let b: CallToolBody = body("call_tool", text)?;
                if b.name.is_empty() {
                    return Err(ControlError::InvalidBody { what: "call_tool", reason: "empty name".to_owned() });
                }
                // `function_call.arguments` is a JSON text (§3.1).
                if let Err(e) = serde_json::from_str::<Value>(&b.arguments) {
                    return Err(ControlError::InvalidBody {
                        what: "call_tool",
                        reason: format!("arguments must be a JSON text: {e}"),
                    });
                }
                if b.say_ms > MAX_SAY_MS {
                    return Err(ControlError::InvalidBody {
                        what: "call_tool",
                        reason: format!("say_ms {} over {MAX_SAY_MS}", b.say_ms),
                    });
                }
                let script = ToolCallScript { name: b.name, arguments: b.arguments, say_ms: b.say_ms };
                Ok(Control::Session(SessionCommand::CallTool { script, now: b.now }))
            }
            "mcp_call" => {
                let b: McpCallBody = body("mcp_call", text)?;
                if b.server.is_empty() || b.name.is_empty() {
                    return Err(ControlError::InvalidBody {
                        what: "mcp_call",
                        reason: "empty server or name".to_owned(),
                    });
                }
                if let Err(e) = serde_json::from_str::<Value>(&b.arguments) {
                    return Err(ControlError::InvalidBody {
                        what: "mcp_call",
                        reason: format!("arguments must be a JSON text: {e}"),
                    });
                }
                let script = McpCallScript { server: b.server, name: b.name, arguments: b.arguments };
                Ok(Control::Session(SessionCommand::McpCall { script, now: b.now }))
            }
            other => Err(ControlError::UnknownControl(other.to_owned())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn controls_parse() {
        assert_eq!(
            Control::parse("drop", r#"{"mode":"reset"}"#),
            Ok(Control::Session(SessionCommand::Drop(DropMode::Reset)))
        );
        assert_eq!(
            Control::parse("drop", r#"{"mode":"close_1011"}"#),
            Ok(Control::Session(SessionCommand::Drop(DropMode::Close(1011))))
        );
        assert_eq!(Control::parse("expire", ""), Ok(Control::Session(SessionCommand::Expire { mid_response: false })));
        assert_eq!(
            Control::parse("expire", r#"{"mid_response":true}"#),
            Ok(Control::Session(SessionCommand::Expire { mid_response: true }))
        );
        assert_eq!(
            Control::parse("refuse_upgrades", r#"{"status":429,"count":2}"#),
            Ok(Control::RefuseUpgrades { status: 429, count: 2 })
        );
        assert_eq!(
            Control::parse("call_tool", r#"{"name":"end_call"}"#),
            Ok(Control::Session(SessionCommand::CallTool {
                script: ToolCallScript { name: "end_call".into(), arguments: "{}".into(), say_ms: 1500 },
                now: false
            }))
        );
    }

    #[test]
    fn bad_controls_say_what_is_wrong() {
        assert!(Control::parse("explode", "{}").unwrap_err().is_unknown_control());
        for (what, body) in [
            ("drop", r#"{"mode":"close_1000"}"#),
            ("drop", r#"{}"#),
            ("expire", r#"{"mid":true}"#),
            ("refuse_upgrades", r#"{"status":200,"count":1}"#),
            ("refuse_upgrades", r#"{"status":429}"#),
            ("call_tool", r#"{"name":"end_call","arguments":"{not json"}"#),
            ("call_tool", r#"{"name":""}"#),
            ("call_tool", r#"{"name":"x","say_ms":600000}"#),
        ] {
            let error = Control::parse(what, body).unwrap_err();
            assert!(!error.is_unknown_control(), "{what} {body}");
        }
    }

    #[test]
    fn refusals_count_down() {
        let mut refusals = UpgradeRefusals { status: 503, remaining: 2 };
        assert_eq!(refusals.take_one(), Some(503));
        assert_eq!(refusals.take_one(), Some(503));
        assert_eq!(refusals.take_one(), None);
    }
}
