//! Webhook tools, the shell's side (the sequencing is sans-IO in `call/core/tools.rs`): the
//! tools an agent declares in `session.update`, and the runner that POSTs each call to its
//! webhook in a task of its own, so the call's audio never waits for it.
//!
//! ```text
//! core Output::Tool(call) -> MediaLoop::run_tool -> ToolRunner::start (a task: signed POST, timeout)
//!   ... task done -> select! arm -> MediaLoop::finish_tool -> journal, metrics, CallCore::complete_tool
//! ```
//!
//! Every call gets exactly one output: the webhook's answer (2xx, at most
//! [`crate::webhook::MAX_RESPONSE_BYTES`]), or a JSON error that tells the model what to say (a
//! failure, the timeout, an unknown tool, too many running).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_realtime::events::{AudioFormat, Tool};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use super::core::ToolCall;
use super::facts::CallFacts;
use super::journal::{ToolRecord, ToolStatus};
use super::prompt::LocalPrompt;
use super::shell::MediaLoop;
use crate::config::{AgentConfig, ToolConfig};
use crate::telemetry;

/// Webhooks running at once per call, at most; a call beyond it is answered with an error at
/// once (a model looping on a tool must not open connections without end).
pub const MAX_RUNNING_TOOLS: usize = 8;

/// The function and MCP tools of `agent` for `session.tools` (reference §2.4), built-ins aside.
pub fn declared_tools(agent: &AgentConfig) -> Vec<Tool> {
    let functions = agent.tools.iter().map(|(name, tool)| Tool::Function {
        name: name.clone(),
        description: Some(tool.description.clone()).filter(|d| !d.is_empty()),
        // Checked when the configuration was loaded.
        parameters: tool.parameters_schema().unwrap_or_else(|_| json!({"type": "object", "properties": {}})),
    });
    let servers = agent.mcp.iter().map(|(label, server)| Tool::Mcp(server.tool_fields(label)));
    functions.chain(servers).collect()
}

/// The filler's audio in the model's output format (`None`: no filler on this call).
pub fn filler_audio(agent: &AgentConfig, format: AudioFormat) -> Option<Vec<u8>> {
    if agent.filler_after_ms == 0 || agent.tools.is_empty() {
        return None;
    }
    // Checked when the configuration was loaded: a bad file never reaches a call.
    let prompt = LocalPrompt::from_setting(&agent.filler).ok()?;
    prompt.audio(format, filler_beeps)
}

/// The built-in filler: two soft 660 Hz beeps of 120 ms, 120 ms apart, at about -24 dBFS ("still
/// working"), faded in and out over 10 ms so they do not click.
pub fn filler_beeps(format: AudioFormat) -> Vec<u8> {
    let rate = match format {
        AudioFormat::Pcm { rate } => rate,
        AudioFormat::Pcmu | AudioFormat::Pcma => 8000,
    };
    let rate_f = f64::from(rate);
    let beep = (rate_f * 0.120) as usize;
    let fade = rate_f * 0.010;
    let mut samples = Vec::with_capacity(beep * 3);
    for part in 0..3 {
        for n in 0..beep {
            let value = if part == 1 {
                0.0
            } else {
                let t = n as f64;
                let envelope = (t / fade).min((beep as f64 - t) / fade).clamp(0.0, 1.0);
                (2.0 * std::f64::consts::PI * 660.0 * t / rate_f).sin() * 0.063 * envelope
            };
            samples.push((value * f64::from(i16::MAX)) as i16);
        }
    }
    let mut out = Vec::with_capacity(samples.len() * 2);
    match format {
        AudioFormat::Pcmu => switchboard_media::g711::ulaw_encode_slice(&samples, &mut out),
        AudioFormat::Pcma => switchboard_media::g711::alaw_encode_slice(&samples, &mut out),
        AudioFormat::Pcm { .. } => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
    }
    out
}

/// A finished tool call, back on the call's task.
#[derive(Debug, Clone)]
pub struct ToolResult {
    pub call_id: String,
    pub name: String,
    pub started: Instant,
    pub duration: Duration,
    pub status: ToolStatus,
    /// What the model is given as the `function_call_output`.
    pub output: String,
}

/// Runs one call's webhook tools, each in a task of its own (aborted with the call).
pub struct ToolRunner {
    tools: BTreeMap<String, ToolConfig>,
    /// The `call` object of every request (the call's facts).
    call: Value,
    running: JoinSet<ToolResult>,
    /// What each running task is, should it fail without a result (it panicked).
    tasks: HashMap<tokio::task::Id, (String, String, Instant)>,
}

impl ToolRunner {
    pub fn new(agent: &AgentConfig, facts: &CallFacts) -> ToolRunner {
        ToolRunner {
            tools: agent.tools.clone(),
            call: call_object(facts),
            running: JoinSet::new(),
            tasks: HashMap::new(),
        }
    }

    /// The configured tool names (the core's metric labels).
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Starts `call`'s webhook; `Some`: an immediate result instead (unknown tool, too many
    /// running).
    pub fn start(&mut self, now: Instant, call: ToolCall) -> Option<ToolResult> {
        let refuse = |call: ToolCall, why: &str, message: &str| ToolResult {
            call_id: call.call_id,
            name: call.name,
            started: now,
            duration: Duration::ZERO,
            status: ToolStatus::Failed(why.into()),
            output: json!({"error": message}).to_string(),
        };
        let Some(tool) = self.tools.get(&call.name) else {
            warn!(tool = %call.name, "the model called a tool that is not configured");
            let message = format!("There is no tool named {}. Do not call it again.", call.name);
            return Some(refuse(call, "not configured", &message));
        };
        if self.running.len() >= MAX_RUNNING_TOOLS {
            warn!(tool = %call.name, running = self.running.len(), "too many tools running on this call; refused");
            let message = "Too many requests are running. Tell the caller to wait a moment and try again.";
            return Some(refuse(call, "too many running", message));
        }
        let body = request_body(&call, &self.call);
        let tool = tool.clone();
        let (call_id, name) = (call.call_id.clone(), call.name.clone());
        debug!(tool = %name, %call_id, url = %tool.url, "tool call started");
        let handle = self.running.spawn(
            async move {
                let (status, output) = call_webhook(&tool, body).await;
                ToolResult {
                    call_id: call.call_id,
                    name: call.name,
                    started: now,
                    duration: now.elapsed(),
                    status,
                    output,
                }
            }
            // The webhook's log lines belong to the call.
            .in_current_span(),
        );
        self.tasks.insert(handle.id(), (call_id, name, now));
        None
    }

    /// The next finished call (pending forever while none runs: guard the `select!` arm with
    /// [`is_running`](Self::is_running)).
    pub async fn next_result(&mut self) -> ToolResult {
        loop {
            match self.running.join_next_with_id().await {
                Some(Ok((id, result))) => {
                    self.tasks.remove(&id);
                    return result;
                }
                Some(Err(error)) => {
                    let Some((call_id, name, started)) = self.tasks.remove(&error.id()) else { continue };
                    warn!(tool = %name, %error, "tool task failed");
                    return ToolResult {
                        call_id,
                        name,
                        started,
                        duration: started.elapsed(),
                        status: ToolStatus::Failed("gateway error".into()),
                        output: json!({"error": "The request failed. Apologise and offer to try again."}).to_string(),
                    };
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// `{"call_id", "tool", "arguments", "call"}`: the arguments as the JSON they should be, or the
/// model's text when it is not JSON.
fn request_body(call: &ToolCall, call_object: &Value) -> Vec<u8> {
    let arguments =
        serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()));
    let body = json!({"call_id": call.call_id, "tool": call.name, "arguments": arguments, "call": call_object});
    body.to_string().into_bytes()
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The call's facts for the webhook.
fn call_object(facts: &CallFacts) -> Value {
    json!({
        "id": facts.id,
        "sip_call_id": facts.sip_call_id,
        "direction": facts.direction.label(),
        "from": facts.from,
        "to": facts.to,
        "agent": facts.agent,
        "route": facts.route,
        "codec": facts.codec,
        "started": unix_seconds(facts.started),
        "answered": unix_seconds(facts.answered),
    })
}

/// The signed POST under the tool's timeout: the status and the model's output.
async fn call_webhook(tool: &ToolConfig, body: Vec<u8>) -> (ToolStatus, String) {
    let mut headers = Vec::new();
    if !tool.secret.is_empty() {
        let now = unix_seconds(SystemTime::now());
        headers.extend(crate::signing::headers(tool.secret.expose().as_bytes(), now, &body));
    }
    let timeout = Duration::from_millis(tool.timeout_ms);
    match tokio::time::timeout(timeout, crate::webhook::post_json(&tool.url, body, &headers)).await {
        Ok(Ok(answer)) => (ToolStatus::Ok, String::from_utf8_lossy(&answer).into_owned()),
        Ok(Err(error)) => {
            info!(url = %tool.url, %error, "tool webhook failed");
            let output = json!({"error": format!(
                "The request failed ({error}). Tell the caller it could not be done right now and offer to try again later."
            )});
            (ToolStatus::Failed(error.to_string()), output.to_string())
        }
        Err(_) => {
            info!(url = %tool.url, timeout_ms = tool.timeout_ms, "tool webhook timed out");
            let output = json!({"error": format!(
                "No answer within {} ms. Tell the caller it is taking too long and offer to try again later.",
                tool.timeout_ms
            )});
            (ToolStatus::TimedOut, output.to_string())
        }
    }
}

impl MediaLoop<'_> {
    /// The core's `Output::Tool`: a configured webhook runs in the background; anything else is
    /// answered at once with an error output.
    pub(super) fn run_tool(&mut self, call: ToolCall) {
        let now = Instant::now();
        if let Some(result) = self.tools.start(now, call) {
            self.finish_tool(result);
        }
    }

    /// A tool's result: recorded (journal, metrics) and given to the model.
    pub(super) fn finish_tool(&mut self, result: ToolResult) {
        let label = if self.tools.tools.contains_key(&result.name) { result.name.clone() } else { "unknown".into() };
        let status = match &result.status {
            ToolStatus::Ok => "ok",
            ToolStatus::TimedOut => "timeout",
            ToolStatus::Failed(why) if why == "not configured" || why == "too many running" => "rejected",
            ToolStatus::Failed(_) => "failed",
        };
        metrics::counter!(telemetry::TOOL_CALLS_TOTAL, "tool" => label.clone(), "status" => status).increment(1);
        if status != "rejected" {
            metrics::histogram!(telemetry::TOOL_DURATION_SECONDS, "tool" => label)
                .record(result.duration.as_secs_f64());
        }
        info!(tool = %result.name, status, duration_ms = result.duration.as_millis() as u64, "tool call done");
        self.journal.tool(ToolRecord {
            started: self.journal.offset(result.started),
            duration: result.duration,
            status: result.status,
            call_id: result.call_id.clone(),
            name: result.name,
        });
        self.core.lock().complete_tool(Instant::now(), &result.call_id, result.output);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::McpServerConfig;

    #[test]
    fn tools_are_declared_as_the_reference_shapes_them() {
        let mut agent = AgentConfig::default();
        agent.tools.insert(
            "lookup_order".into(),
            ToolConfig {
                description: "Find an order".into(),
                parameters: json!({"type": "object", "properties": {"id": {"type": "string"}}}),
                url: "http://127.0.0.1:1/".into(),
                ..ToolConfig::default()
            },
        );
        agent.mcp.insert("shop".into(), McpServerConfig { url: "https://mcp.example".into(), ..Default::default() });
        let tools: Vec<Value> = declared_tools(&agent).iter().map(|t| serde_json::to_value(t).unwrap()).collect();
        assert_eq!(
            tools[0],
            json!({"type": "function", "name": "lookup_order", "description": "Find an order",
                   "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}})
        );
        assert_eq!(
            tools[1],
            json!({"type": "mcp", "server_label": "shop", "server_url": "https://mcp.example", "require_approval": "never"})
        );
    }

    #[test]
    fn the_body_carries_parsed_arguments_or_the_text() {
        let call = ToolCall { call_id: "c1".into(), name: "t".into(), arguments: "{\"id\":7}".into() };
        let body: Value = serde_json::from_slice(&request_body(&call, &json!({"id": "x"}))).unwrap();
        assert_eq!(body, json!({"call_id": "c1", "tool": "t", "arguments": {"id": 7}, "call": {"id": "x"}}));
        let call = ToolCall { arguments: "not json".into(), ..call };
        let body: Value = serde_json::from_slice(&request_body(&call, &json!({}))).unwrap();
        assert_eq!(body["arguments"], "not json");
    }

    fn facts() -> CallFacts {
        CallFacts {
            id: "gw-1".into(),
            sip_call_id: "abc@host".into(),
            direction: crate::call::CallDirection::Inbound,
            from: "sip:alice@example.com".into(),
            to: "15550001000".into(),
            agent: "default".into(),
            route: "main".into(),
            peer: None,
            codec: "PCMU".into(),
            started: SystemTime::now(),
            answered: SystemTime::now(),
            trunk: None,
            media_security: "rtp",
        }
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall { call_id: id.into(), name: name.into(), arguments: "{}".into() }
    }

    #[tokio::test]
    async fn unknown_tools_and_one_too_many_are_answered_at_once_and_failures_come_back() {
        // A server that accepts and never answers: every call stays running.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut agent = AgentConfig::default();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        agent.tools.insert("slow".into(), ToolConfig { url, timeout_ms: 60_000, ..ToolConfig::default() });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = format!("http://127.0.0.1:{port}/");
        agent.tools.insert("down".into(), ToolConfig { url: refused, ..ToolConfig::default() });
        let mut runner = ToolRunner::new(&agent, &facts());
        let now = Instant::now();

        let unknown = runner.start(now, call("c0", "made_up")).expect("answered at once");
        assert_eq!(unknown.status, ToolStatus::Failed("not configured".into()));
        assert!(unknown.output.contains("There is no tool named made_up"));

        assert!(runner.start(now, call("c1", "down")).is_none());
        let failed = runner.next_result().await;
        assert_eq!(failed.call_id, "c1");
        assert!(matches!(failed.status, ToolStatus::Failed(_)), "{:?}", failed.status);
        assert!(serde_json::from_str::<Value>(&failed.output).unwrap()["error"].is_string());

        for n in 0..MAX_RUNNING_TOOLS {
            assert!(runner.start(now, call(&format!("s{n}"), "slow")).is_none());
        }
        let refused = runner.start(now, call("one_more", "slow")).expect("over the limit");
        assert_eq!(refused.status, ToolStatus::Failed("too many running".into()));
        assert!(runner.is_running());
    }

    #[test]
    fn the_filler_beeps_are_soft_and_short() {
        let audio = filler_beeps(AudioFormat::Pcm { rate: 24_000 });
        let samples: Vec<i16> = audio.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(samples.len(), 24_000 * 360 / 1000);
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 1000 && peak < 2500, "about -24 dBFS, was {peak}");
        assert!(samples[24_000 * 120 / 1000..24_000 * 240 / 1000].iter().all(|s| *s == 0), "a gap between the beeps");
        assert_eq!(filler_beeps(AudioFormat::Pcmu).len(), 8000 * 360 / 1000);
    }
}
