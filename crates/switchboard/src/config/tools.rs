//! `[agents.NAME.tools.TOOL]` (webhook function tools), `[agents.NAME.mcp.SERVER]` (MCP servers
//! the Realtime API runs on its side) and the filler played while a slow tool runs
//! (`agents.NAME.filler_after_ms`, `agents.NAME.filler`). docs/configuration.md, "Tools" and
//! "MCP servers".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{AgentConfig, ConfigProblem, Secret, StringList};

/// Tool names the gateway implements itself: a webhook may not take them.
pub const BUILT_IN_TOOLS: [&str; 2] = ["end_call", "transfer_to_human"];

/// The longest `timeout_ms` accepted: a caller does not wait longer than this for an answer.
pub const MAX_TOOL_TIMEOUT_MS: u64 = 120_000;

/// One webhook tool (`[agents.NAME.tools.TOOL]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ToolConfig {
    /// What the model is told the tool does (and what to say while it runs).
    pub description: String,
    /// The arguments' JSON Schema: a TOML table, or the schema as a JSON string. Unset: no
    /// arguments (`{"type": "object", "properties": {}}`).
    pub parameters: Value,
    /// Where the call is POSTed (`http://` or `https://`).
    pub url: String,
    /// Connect plus the whole response, at most; beyond it the model gets an error output.
    pub timeout_ms: u64,
    /// HMAC-SHA256 key of the `X-Switchboard-Signature` header; empty: the request is not signed.
    pub secret: Secret,
    /// The environment variable holding `secret`.
    pub secret_env: String,
}

impl Default for ToolConfig {
    fn default() -> Self {
        ToolConfig {
            description: String::new(),
            parameters: Value::Null,
            url: String::new(),
            timeout_ms: 5000,
            secret: Secret::default(),
            secret_env: String::new(),
        }
    }
}

impl ToolConfig {
    /// The arguments' schema as the session declares it (checked at load: always an object).
    pub fn parameters_schema(&self) -> Result<Value, String> {
        let schema = match &self.parameters {
            Value::Null => return Ok(json!({"type": "object", "properties": {}})),
            Value::String(text) => {
                serde_json::from_str::<Value>(text).map_err(|e| format!("is not valid JSON: {e}"))?
            }
            other => other.clone(),
        };
        if schema.is_object() { Ok(schema) } else { Err("must be a JSON Schema object".into()) }
    }
}

/// One MCP server run on the model's side (`[agents.NAME.mcp.SERVER]`, reference §2.4).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct McpServerConfig {
    /// `server_url` of the `mcp` tool.
    pub url: String,
    /// Tools of the server the model may use; empty: all of them.
    pub allowed_tools: StringList,
    /// HTTP headers sent to the server (e.g. `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// `"never"`, `"always"`, or the reference's object form
    /// (`{always = {tool_names = [...]}, never = {tool_names = [...]}}`), passed through.
    pub require_approval: Value,
}

impl Default for McpServerConfig {
    fn default() -> Self {
        McpServerConfig {
            url: String::new(),
            allowed_tools: StringList::default(),
            headers: BTreeMap::new(),
            require_approval: Value::String("never".into()),
        }
    }
}

impl McpServerConfig {
    /// The `mcp` tool's fields for `session.tools` (reference §2.4).
    pub fn tool_fields(&self, label: &str) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("server_label".into(), Value::String(label.into()));
        fields.insert("server_url".into(), Value::String(self.url.clone()));
        if !self.allowed_tools.0.is_empty() {
            fields.insert("allowed_tools".into(), json!(self.allowed_tools.0));
        }
        if !self.headers.is_empty() {
            fields.insert("headers".into(), json!(self.headers));
        }
        fields.insert("require_approval".into(), self.require_approval.clone());
        fields
    }
}

/// The Realtime API's tool-name rule: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_http_url(url: &str) -> bool {
    match url.split_once("://") {
        Some(("http" | "https", rest)) => !rest.is_empty() && !rest.starts_with('/'),
        _ => false,
    }
}

fn is_approval_setting(value: &Value) -> bool {
    match value {
        Value::String(s) => s == "never" || s == "always",
        Value::Object(map) => !map.is_empty() && map.keys().all(|k| k == "always" || k == "never"),
        _ => false,
    }
}

/// Checks one agent's tools, MCP servers and filler (called from `config::validate`).
pub fn validate_agent_tools(name: &str, agent: &AgentConfig, bad: &mut impl FnMut(&str, String)) {
    for (tool, cfg) in &agent.tools {
        let key = |field: &str| format!("agents.{name}.tools.{tool}.{field}");
        if !is_tool_name(tool) {
            bad(&format!("agents.{name}.tools.{tool}"), "a tool name is 1-64 of a-z, A-Z, 0-9, _ and -".into());
        }
        if BUILT_IN_TOOLS.contains(&tool.as_str()) {
            bad(&format!("agents.{name}.tools.{tool}"), format!("`{tool}` is a built-in tool"));
        }
        if !is_http_url(&cfg.url) {
            bad(&key("url"), format!("`{}` must start with http:// or https://", cfg.url));
        }
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&cfg.timeout_ms) {
            bad(&key("timeout_ms"), format!("must be between 1 and {MAX_TOOL_TIMEOUT_MS}"));
        }
        if let Err(message) = cfg.parameters_schema() {
            bad(&key("parameters"), message);
        }
    }
    for (server, cfg) in &agent.mcp {
        let key = |field: &str| format!("agents.{name}.mcp.{server}.{field}");
        if !is_tool_name(server) {
            bad(&format!("agents.{name}.mcp.{server}"), "a server label is 1-64 of a-z, A-Z, 0-9, _ and -".into());
        }
        if !is_http_url(&cfg.url) {
            bad(&key("url"), format!("`{}` must start with http:// or https://", cfg.url));
        }
        if !is_approval_setting(&cfg.require_approval) {
            bad(&key("require_approval"), "must be \"never\", \"always\" or a table of `always` / `never`".into());
        }
    }
    if let Err(e) = crate::call::prompt::LocalPrompt::from_setting(&agent.filler) {
        bad(&format!("agents.{name}.filler"), format!("must be \"tone\", \"none\" or a WAV file: {e}"));
    }
    if agent.filler_after_ms > 60_000 {
        bad(&format!("agents.{name}.filler_after_ms"), "must be at most 60000 (0: no filler)".into());
    }
}

/// Fills every tool's `secret` from its `secret_env` (called from `config::resolve_secrets`).
pub fn resolve_tool_secrets(
    agents: &mut BTreeMap<String, AgentConfig>,
    env: &[(String, String)],
    problems: &mut Vec<ConfigProblem>,
) {
    for (name, agent) in agents {
        for (tool, cfg) in &mut agent.tools {
            if cfg.secret_env.is_empty() {
                continue;
            }
            let key = format!("agents.{name}.tools.{tool}.secret");
            let var_key = format!("{key}_env");
            if !cfg.secret.is_empty() {
                problems.push(ConfigProblem { key: key.clone(), message: format!("set both {key} and {var_key}") });
                continue;
            }
            match env.iter().find(|(k, _)| *k == cfg.secret_env) {
                Some((_, value)) if !value.is_empty() => cfg.secret = Secret::new(value.clone()),
                _ => problems.push(ConfigProblem {
                    key: var_key,
                    message: format!("environment variable `{}` is not set", cfg.secret_env),
                }),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_the_realtime_rule() {
        assert!(is_tool_name("lookup_order"));
        assert!(is_tool_name("a-B_9"));
        assert!(!is_tool_name(""));
        assert!(!is_tool_name("has space"));
        assert!(!is_tool_name(&"x".repeat(65)));
    }

    #[test]
    fn parameters_as_json_text_or_table() {
        let text = ToolConfig { parameters: Value::String(r#"{"type":"object"}"#.into()), ..ToolConfig::default() };
        assert_eq!(text.parameters_schema().unwrap(), json!({"type": "object"}));
        let table = ToolConfig { parameters: json!({"type": "object", "required": ["id"]}), ..ToolConfig::default() };
        assert_eq!(table.parameters_schema().unwrap()["required"][0], "id");
        let unset = ToolConfig::default();
        assert_eq!(unset.parameters_schema().unwrap()["type"], "object");
        let list = ToolConfig { parameters: Value::String("[1]".into()), ..ToolConfig::default() };
        assert!(list.parameters_schema().is_err());
        let broken = ToolConfig { parameters: Value::String("{".into()), ..ToolConfig::default() };
        assert!(broken.parameters_schema().is_err());
    }

    #[test]
    fn bad_tools_and_servers_are_named() {
        let mut agent = AgentConfig::default();
        agent
            .tools
            .insert("end_call".into(), ToolConfig { url: "ftp://x".into(), timeout_ms: 0, ..ToolConfig::default() });
        agent.mcp.insert(
            "shop".into(),
            McpServerConfig {
                url: "https://mcp.example".into(),
                require_approval: json!("sometimes"),
                ..Default::default()
            },
        );
        agent.filler = "/nonexistent/filler.wav".into();
        let mut problems = Vec::new();
        validate_agent_tools("a", &agent, &mut |key: &str, message: String| problems.push((key.to_owned(), message)));
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "agents.a.tools.end_call",
                "agents.a.tools.end_call.url",
                "agents.a.tools.end_call.timeout_ms",
                "agents.a.mcp.shop.require_approval",
                "agents.a.filler",
            ]
        );
    }

    #[test]
    fn mcp_tool_fields_follow_the_reference() {
        let server = McpServerConfig {
            url: "https://mcp.example/sse".into(),
            allowed_tools: StringList(vec!["search".into()]),
            headers: BTreeMap::from([("Authorization".into(), "Bearer t".into())]),
            require_approval: json!({"never": {"tool_names": ["search"]}}),
        };
        assert_eq!(
            Value::Object(server.tool_fields("shop")),
            json!({"server_label": "shop", "server_url": "https://mcp.example/sse", "allowed_tools": ["search"],
                   "headers": {"Authorization": "Bearer t"}, "require_approval": {"never": {"tool_names": ["search"]}}})
        );
    }

    #[test]
    fn tools_and_servers_load_from_toml_and_the_environment() {
        use std::io::Write;
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(
            b"[agents.default.tools.lookupOrder]\nurl = \"http://127.0.0.1:9/hook\"\n\
              [agents.default.tools.lookupOrder.parameters]\ntype = \"object\"\n\
              properties = { order = { type = \"string\", maxLength = 12 } }\n\
              [agents.default.mcp.crm]\nurl = \"https://crm.example/mcp\"\n\
              headers = { Authorization = \"Bearer t\" }\n\
              require_approval = { always = { tool_names = [\"delete\"] } }\n",
        )
        .unwrap();
        let env = [("SWITCHBOARD__AGENTS__DEFAULT__TOOLS__SLOW__URL".to_string(), "http://127.0.0.1:9/s".to_string())];
        let (cfg, _) = super::super::load_with_env(file.path(), &env).unwrap();
        let agent = &cfg.agents["default"];
        let tool = &agent.tools["lookupOrder"];
        assert_eq!(tool.parameters_schema().unwrap()["properties"]["order"]["maxLength"], 12);
        assert_eq!(tool.timeout_ms, 5000);
        assert_eq!(agent.tools["slow"].url, "http://127.0.0.1:9/s");
        let crm = &agent.mcp["crm"];
        assert_eq!(crm.headers["Authorization"], "Bearer t");
        assert_eq!(crm.require_approval, json!({"always": {"tool_names": ["delete"]}}));
    }

    #[test]
    fn secret_from_the_environment() {
        let mut agents = BTreeMap::from([("a".to_string(), AgentConfig::default())]);
        if let Some(agent) = agents.get_mut("a") {
            agent.tools.insert("t".into(), ToolConfig { secret_env: "TOOL_KEY".into(), ..ToolConfig::default() });
            agent.tools.insert("u".into(), ToolConfig { secret_env: "MISSING".into(), ..ToolConfig::default() });
        }
        let mut problems = Vec::new();
        resolve_tool_secrets(&mut agents, &[("TOOL_KEY".into(), "k3y".into())], &mut problems);
        assert_eq!(agents["a"].tools["t"].secret.expose(), "k3y");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "agents.a.tools.u.secret_env");
    }
}
