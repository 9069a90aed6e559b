//! Tool calls, sans-IO: which `call_id`s the gateway owes an output, when the model is asked to
//! answer after them, and the filler the caller hears while a slow one runs.
//!
//! Sequencing (reference §5):
//! - A `function_call` item is executed only when `response.output_item.done` shows it
//!   `completed` (§5 step 3: the arguments also arrive for responses cancelled by a barge-in).
//!   A cancelled call is **not** executed and gets **no** output: its item stays `incomplete` in
//!   the conversation, the model never waits for it (the caller interrupted and the next
//!   response answers what the caller said), an output would only invite the model to talk
//!   about something the caller cut short, and the history never replays an unanswered call.
//! - Each pending `call_id` is completed exactly once ([`CallCore::complete_tool`]); a second
//!   completion, or one for an id the core never handed out, is ignored and counted
//!   (`switchboard_tool_outputs_ignored_total`).
//! - Outputs are added as they come; the `response.create` follows the last output of a
//!   response's calls (§5 step 6: parallel calls get one create), and only after that response
//!   is done; it goes through [`AgentControl`](super::agent_control::AgentControl), which sends
//!   it only when no response is active.
//! - A new session (reconnect, rollover) is replayed only answered calls (realtime::history):
//!   a call pending across the switch is unknown there, so its output is preceded by the
//!   `function_call` item itself (a client may create one, §3.1): the new session never sees an
//!   output for a call it does not know, and the result is not lost.
//!
//! Filler: while a call has been pending longer than `filler_after` and the line is quiet (no
//! agent audio queued, no response active, the caller not speaking), the filler is queued to the
//! caller under its own pacer tag, again every [`FILLER_PERIOD`]; it is flushed the moment a
//! result arrives, the agent's audio starts or the caller starts speaking.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_realtime::conversation::ItemTag;
use switchboard_realtime::events::{ClientEvent, FunctionCallItem, Item, ItemStatus};
use tracing::{debug, info, warn};

use super::agent_control::Purpose;
use super::{CallCore, Output, ToolCall, tool_to_run};
use crate::telemetry;

/// Calls waiting for their output at most; beyond it a new call is answered at once with an
/// error (a model looping on tools must not grow the call's memory).
pub const MAX_PENDING_TOOLS: usize = 32;

/// Responses whose calls are tracked at most (one slot per response with pending calls).
const MAX_OPEN_RESPONSES: usize = 8;

/// The pacer tag of the filler: no assistant item, never credited as the agent's audio (apart
/// from the local prompts' `u32::MAX` and the bridge relay's `u32::MAX - 1`).
pub const FILLER_TAG: ItemTag = u32::MAX - 2;

/// MCP server events (reference §4.5): logged and counted, nothing to do.
pub fn is_mcp_event(event_type: &str) -> bool {
    event_type.starts_with("mcp_list_tools.") || event_type.starts_with("response.mcp_call")
}

/// The filler starts again this long after it last started while the tool still runs.
pub const FILLER_PERIOD: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone)]
struct PendingCall {
    call: ToolCall,
    response_id: String,
    since: Instant,
    /// False once the session that emitted the call was replaced (see the module doc).
    session_knows: bool,
}

/// The filler: played after `after`, in the model's output format.
#[derive(Debug, Clone)]
struct Filler {
    after: Duration,
    audio: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Tools {
    pending: Vec<PendingCall>,
    /// Responses whose function calls came and that are not done yet.
    open_responses: Vec<String>,
    /// Responses done (or not) whose calls were all answered while they were still open: the
    /// `response.create` is owed at their `response.done`.
    owed_create: Vec<String>,
    filler: Option<Filler>,
    /// The filler's next start (while anything is pending).
    next_filler: Option<Instant>,
    /// Filler audio may be queued on the caller's leg.
    filler_queued: bool,
    /// Per MCP server label, the tools the gateway approves when the server asks (its
    /// `allowed_tools`); a server not listed gets every request denied.
    mcp_approvals: Vec<(String, Vec<String>)>,
    /// Approval responses sent (their item ids).
    approvals_sent: u64,
    /// An output was given while the AI connection was being replaced: the new session has it
    /// (the history replays it with its call) and is asked to answer once it takes over.
    answer_on_resume: bool,
    /// Configured tool names (metric labels).
    names: Vec<String>,
    /// Completions ignored (a duplicate or an unknown `call_id`).
    pub(super) ignored: u64,
}

impl Tools {
    fn is_pending(&self, call_id: &str) -> bool {
        self.pending.iter().any(|p| p.call.call_id == call_id)
    }
}

impl CallCore {
    /// Plays `audio` (the model's output format) to the caller while a tool has been pending
    /// longer than `after` (`agents.X.filler_after_ms`, `agents.X.filler`). Off by default.
    pub fn set_filler(&mut self, after: Duration, audio: Vec<u8>) {
        self.tools.filler = (!audio.is_empty()).then_some(Filler { after, audio });
    }

    /// The configured tool names: the only values of the metrics' `tool` label (a name the model
    /// made up is counted as `unknown`).
    pub fn set_tool_names(&mut self, names: Vec<String>) {
        self.tools.names = names;
    }

    /// What the gateway answers an MCP server's `mcp_approval_request` (no human to ask on a
    /// phone call): approved when the tool is in that server's `allowed_tools`, else denied.
    pub fn set_mcp_approvals(&mut self, approvals: Vec<(String, Vec<String>)>) {
        self.tools.mcp_approvals = approvals;
    }

    /// An `mcp_approval_request` item (reference §5 "MCP flow"): answered with an
    /// `mcp_approval_response`, then a response is asked for (sent once none is active).
    fn answer_mcp_approval(&mut self, request: &serde_json::Map<String, serde_json::Value>) {
        let text = |key: &str| request.get(key).and_then(serde_json::Value::as_str).unwrap_or_default();
        let (request_id, server, name) = (text("id"), text("server_label"), text("name"));
        if request_id.is_empty() {
            return;
        }
        let approve = self
            .tools
            .mcp_approvals
            .iter()
            .any(|(label, allowed)| label == server && allowed.iter().any(|tool| tool == name));
        info!(server, tool = name, approve, "MCP approval request answered");
        self.tools.approvals_sent += 1;
        let mut response = serde_json::Map::new();
        response.insert("type".into(), json!("mcp_approval_response"));
        response.insert("id".into(), json!(format!("mcpr_{}", self.tools.approvals_sent)));
        response.insert("approval_request_id".into(), json!(request_id));
        response.insert("approve".into(), json!(approve));
        if !approve {
            response.insert("reason".into(), json!("This tool is not approved for use during phone calls."));
        }
        let item = Item::Other(response);
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.request(Purpose::Turn, active);
        self.run_control(commands);
    }

    fn tool_label(&self, name: &str) -> String {
        if self.tools.names.iter().any(|n| n == name) { name.to_owned() } else { "unknown".to_owned() }
    }

    /// `call_id`s waiting for [`complete_tool`](Self::complete_tool).
    pub fn pending_tools(&self) -> usize {
        self.tools.pending.len()
    }

    /// `response.output_item.done`: a completed function call (not `end_call`) goes to the shell
    /// to run; an incomplete one (its response cancelled) is not executed.
    pub(super) fn on_function_call_done(&mut self, now: Instant, response_id: &str, item: &Item) {
        if let Item::Other(fields) = item
            && fields.get("type").and_then(serde_json::Value::as_str) == Some("mcp_approval_request")
        {
            self.answer_mcp_approval(fields);
            return;
        }
        if let Item::FunctionCall(call) = item
            && call.status != Some(ItemStatus::Completed)
            && call.name != super::agent_control::END_CALL_TOOL
        {
            let tool = self.tool_label(&call.name);
            metrics::counter!(telemetry::TOOL_CALLS_TOTAL, "tool" => tool, "status" => "cancelled").increment(1);
            info!(tool = %call.name, "function call cancelled with its response: not executed");
            return;
        }
        let Some(call) = tool_to_run(item) else { return };
        if self.tools.is_pending(&call.call_id) {
            debug!(call_id = %call.call_id, "function call already pending; ignored");
            return;
        }
        if self.tools.pending.len() >= MAX_PENDING_TOOLS {
            warn!(tool = %call.name, "too many tool calls pending; answered with an error");
            let output = json!({"error": "Too many tool calls are running. Tell the caller to wait a moment."});
            self.send_tool_output(&call, true, output.to_string());
            let active = self.agent.conversation.has_active_response();
            let commands = self.control.request(Purpose::Turn, active);
            self.run_control(commands);
            return;
        }
        if !self.tools.open_responses.iter().any(|r| r == response_id) {
            if self.tools.open_responses.len() >= MAX_OPEN_RESPONSES {
                self.tools.open_responses.remove(0);
            }
            self.tools.open_responses.push(response_id.to_owned());
        }
        self.tools.pending.push(PendingCall {
            call: call.clone(),
            response_id: response_id.to_owned(),
            since: now,
            session_knows: true,
        });
        self.outputs.push_back(Output::Tool(call));
    }

    /// `response.done`: a create owed to this response's answered calls is asked for now.
    pub(super) fn on_tool_response_done(&mut self, response_id: &str) {
        self.tools.open_responses.retain(|r| r != response_id);
        let owed = self.tools.owed_create.iter().position(|r| r == response_id);
        if let Some(index) = owed {
            self.tools.owed_create.remove(index);
            let active = self.agent.conversation.has_active_response();
            let commands = self.control.request(Purpose::Turn, active);
            self.run_control(commands);
        }
    }

    /// A tool's result (or an error text: every `call_id` gets exactly one output): the model is
    /// given it as a `function_call_output`; once the last call of its response is answered and
    /// that response is done, the model is asked to answer (reference §5 steps 4-6).
    pub fn complete_tool(&mut self, _now: Instant, call_id: &str, output: String) {
        self.complete_pending_tool(call_id, output, true);
    }

    /// [`complete_tool`](Self::complete_tool), or with `respond` false the output alone (no
    /// `response.create`: the transfer's "quiet" completion).
    pub(super) fn complete_pending_tool(&mut self, call_id: &str, output: String, respond: bool) {
        if self.ended.is_some() {
            return;
        }
        let Some(index) = self.tools.pending.iter().position(|p| p.call.call_id == call_id) else {
            self.tools.ignored += 1;
            metrics::counter!(telemetry::TOOL_OUTPUTS_IGNORED_TOTAL).increment(1);
            warn!(%call_id, "tool output for a call that is not pending (duplicate or unknown); ignored");
            return;
        };
        let done = self.tools.pending.remove(index);
        self.stop_filler();
        if self.outage.is_some() {
            // No session to ask now (what is sent goes to the history only).
            self.tools.answer_on_resume = true;
        }
        if !self.tools.pending.iter().any(|p| self.tools.names.contains(&p.call.name)) {
            self.tools.next_filler = None; // the next slow tool waits `filler_after` again
        }
        self.send_tool_output(&done.call, done.session_knows, output);
        if !respond {
            return;
        }
        if self.tools.pending.iter().any(|p| p.response_id == done.response_id) {
            return; // the last of this response's calls asks for the answer
        }
        if self.tools.open_responses.contains(&done.response_id) {
            if self.tools.owed_create.len() >= MAX_OPEN_RESPONSES {
                self.tools.owed_create.remove(0);
            }
            self.tools.owed_create.push(done.response_id);
            return;
        }
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.request(Purpose::Turn, active);
        self.run_control(commands);
    }

    fn send_tool_output(&mut self, call: &ToolCall, session_knows: bool, output: String) {
        if !session_knows {
            // The session that emitted the call was replaced before the answer: tell the new
            // one the call first, so the output refers to an item it has.
            let item = Item::FunctionCall(FunctionCallItem {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                call_id: Some(call.call_id.clone()),
                ..FunctionCallItem::default()
            });
            self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
        }
        let item = Item::function_call_output(call.call_id.clone(), output);
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
    }

    /// A new session took over: pending calls are unknown to it, the old one's responses will
    /// never be done, and an output given during the outage is answered now.
    pub(super) fn tools_on_session_replaced(&mut self) {
        for pending in &mut self.tools.pending {
            pending.session_knows = false;
        }
        self.tools.open_responses.clear();
        self.tools.owed_create.clear();
        if std::mem::take(&mut self.tools.answer_on_resume) && !self.control.response_pending() {
            let commands = self.control.request(Purpose::Turn, false);
            self.run_control(commands);
        }
        if !self.tools.pending.is_empty() {
            info!(pending = self.tools.pending.len(), "tool calls pending across a new session: answered there");
        }
    }

    /// Flushes the filler if it may still be queued (a result, the agent's audio, the caller).
    pub(super) fn stop_filler(&mut self) {
        if !self.tools.filler_queued {
            return;
        }
        self.tools.filler_queued = false;
        if let Some(leg) = self.legs.first_mut() {
            leg.flush();
        }
        self.agent.framing = None;
    }

    /// When the filler is next due (`None`: nothing pending or no filler).
    pub(super) fn poll_tools_timeout(&self) -> Option<Instant> {
        let filler = self.tools.filler.as_ref()?;
        // Only the configured webhooks: a built-in (a transfer) says what it does itself.
        let mut waiting = self.tools.pending.iter().filter(|p| self.tools.names.contains(&p.call.name)).peekable();
        waiting.peek()?;
        if let Some(next) = self.tools.next_filler {
            return Some(next);
        }
        waiting.map(|p| p.since + filler.after).min()
    }

    /// Plays the filler when it is due and the line is quiet.
    pub(super) fn handle_tools_timeout(&mut self, now: Instant) {
        let Some(due) = self.poll_tools_timeout() else { return };
        if now < due {
            return;
        }
        self.tools.next_filler = Some(now + FILLER_PERIOD);
        let quiet = self.legs.first().is_some_and(|leg| leg.held_audio().is_zero())
            && !self.agent.conversation.has_active_response()
            && !self.barge_in.caller_speaking()
            && self.outage.is_none()
            && self.bridge.is_none()
            && self.ending_after_playout.is_none();
        if !quiet {
            return;
        }
        let Some(audio) = self.tools.filler.as_ref().map(|f| f.audio.clone()) else { return };
        let max_queued = self.config.max_queued_audio;
        let Some(leg) = self.legs.first_mut() else { return };
        self.agent.queue_audio(leg, FILLER_TAG, &audio, max_queued);
        self.agent.finish_item(leg);
        self.tools.filler_queued = true;
        debug!(pending = self.tools.pending.len(), "tool still running: filler played");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;
    use switchboard_realtime::events::{ClientEvent, Item, ServerEvent};

    use super::super::tests::{core_config, leg_config};
    use super::super::{CallCore, CoreConfig, Output, ToolCall};
    use super::FILLER_PERIOD;

    fn event(value: serde_json::Value) -> ServerEvent {
        ServerEvent::from_json(&value.to_string()).unwrap()
    }

    fn created(id: &str) -> ServerEvent {
        event(json!({"type":"response.created","event_id":"e","response":{"id":id,"status":"in_progress","output":[]}}))
    }

    fn done(id: &str, status: &str) -> ServerEvent {
        event(json!({"type":"response.done","event_id":"e","response":{"id":id,"status":status,"output":[]}}))
    }

    fn call_done(response: &str, call_id: &str, name: &str, status: &str) -> ServerEvent {
        event(json!({"type":"response.output_item.done","event_id":"e","response_id":response,"output_index":0,
            "item":{"type":"function_call","id":format!("item_{call_id}"),"status":status,"name":name,
                    "call_id":call_id,"arguments":"{\"order\":7}"}}))
    }

    fn audio_delta(response: &str, item: &str) -> ServerEvent {
        ServerEvent::OutputAudioDelta(switchboard_realtime::events::AudioDeltaEvent {
            event_id: "e".into(),
            response_id: response.into(),
            item_id: item.into(),
            output_index: 0,
            content_index: 0,
            delta: vec![0x7Fu8; 1600],
        })
    }

    fn speech_started() -> ServerEvent {
        event(json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":100,"item_id":"u1"}))
    }

    /// A core with no greeting (nothing active) and its outputs drained.
    struct Bench {
        core: CallCore,
        start: Instant,
    }

    impl Bench {
        fn new() -> Bench {
            let start = Instant::now();
            let config = CoreConfig { greeting: None, ..core_config() };
            Bench { core: CallCore::new(start, config, leg_config()), start }
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        fn feed(&mut self, ms: u64, event: ServerEvent) {
            let now = self.at(ms);
            self.core.handle_realtime(now, event);
        }

        /// What the core asked for since the last call: tools to run and Realtime events.
        fn drain(&mut self) -> (Vec<ToolCall>, Vec<ClientEvent>) {
            let mut tools = Vec::new();
            let mut events = Vec::new();
            while let Some(output) = self.core.poll_output() {
                match output {
                    Output::Tool(call) => tools.push(call),
                    Output::Realtime(event) if !matches!(*event, ClientEvent::InputAudioBufferAppend { .. }) => {
                        events.push(*event)
                    }
                    _ => {}
                }
            }
            (tools, events)
        }

        /// The agent audio frames the pacer sends up to `ms`.
        fn sent_until(&mut self, ms: u64) -> usize {
            self.core.handle_dialog(self.at(0), super::super::DialogInput::Confirmed);
            let mut sent = 0;
            let mut t = self.at(0);
            while t <= self.at(ms) {
                self.core.handle_media_timeout(t);
                while let Some(packet) = self.core.poll_transmit() {
                    // PCMU silence is 0xFF; the filler and agent audio are not.
                    if packet.packet.get(12..).is_some_and(|p| p.iter().any(|b| *b != 0xFF)) {
                        sent += 1;
                    }
                }
                t += Duration::from_millis(20);
            }
            sent
        }
    }

    fn outputs_of(events: &[ClientEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::ConversationItemCreate { item: Item::FunctionCallOutput(out), .. } => {
                    Some(format!("output {}", out.call_id))
                }
                ClientEvent::ConversationItemCreate { item: Item::FunctionCall(call), .. } => {
                    Some(format!("call {}", call.call_id.clone().unwrap_or_default()))
                }
                ClientEvent::ResponseCreate { .. } => Some("create".into()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_output_then_a_create_when_idle() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        let (tools, _) = b.drain();
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0].name, "lookup");
        assert_eq!(tools[0].arguments, "{\"order\":7}");
        b.feed(20, done("r1", "completed"));
        b.drain();
        b.core.complete_tool(b.at(500), "c1", "{\"status\":\"shipped\"}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["output c1", "create"]);
        assert_eq!(b.core.pending_tools(), 0);
    }

    #[test]
    fn the_create_waits_for_an_active_response() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        // The caller spoke meanwhile: VAD started another response.
        b.feed(100, created("r2"));
        b.core.complete_tool(b.at(200), "c1", "{}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["output c1"], "no create while r2 is active");
        b.feed(300, done("r2", "completed"));
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["create"]);
    }

    #[test]
    fn an_answer_before_its_response_is_done_asks_at_response_done() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.drain();
        b.core.complete_tool(b.at(15), "c1", "{}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["output c1"]);
        b.feed(20, done("r1", "completed"));
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["create"]);
    }

    #[test]
    fn two_parallel_calls_get_one_create_after_the_last_output() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(11, call_done("r1", "c2", "weather", "completed"));
        b.feed(20, done("r1", "completed"));
        let (tools, _) = b.drain();
        assert_eq!(tools.len(), 2);
        b.core.complete_tool(b.at(300), "c2", "{}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["output c2"]);
        b.core.complete_tool(b.at(400), "c1", "{}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["output c1", "create"]);
    }

    #[test]
    fn a_call_cancelled_by_barge_in_is_not_executed() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(5, speech_started());
        b.feed(10, call_done("r1", "c1", "lookup", "incomplete"));
        b.feed(20, done("r1", "cancelled"));
        let (tools, events) = b.drain();
        assert!(tools.is_empty());
        assert!(outputs_of(&events).is_empty(), "no output for a cancelled call");
        assert_eq!(b.core.pending_tools(), 0);
        // A late completion for it (a shell bug) is ignored.
        b.core.complete_tool(b.at(30), "c1", "{}".into());
        assert!(outputs_of(&b.drain().1).is_empty());
    }

    #[test]
    fn a_duplicate_or_unknown_completion_is_ignored_and_counted() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        b.core.complete_tool(b.at(100), "c1", "{}".into());
        assert_eq!(outputs_of(&b.drain().1), ["output c1", "create"]);
        b.core.complete_tool(b.at(200), "c1", "{}".into());
        b.core.complete_tool(b.at(200), "nobody", "{}".into());
        assert!(outputs_of(&b.drain().1).is_empty());
        assert_eq!(b.core.tools.ignored, 2);
    }

    #[test]
    fn a_call_pending_across_a_new_session_is_introduced_there_first() {
        let mut b = Bench::new();
        b.feed(0, created("r1"));
        b.feed(
            9,
            event(json!({"type":"response.function_call_arguments.done","event_id":"e","response_id":"r1",
            "item_id":"item_c1","output_index":0,"call_id":"c1","name":"lookup","arguments":"{\"order\":7}"})),
        );
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        assert!(b.core.replay_events().is_empty(), "an unanswered call is not replayed");
        assert!(b.core.handle_realtime_switched(b.at(1000)));
        b.drain();
        b.core.complete_tool(b.at(1500), "c1", "{}".into());
        let (_, events) = b.drain();
        assert_eq!(outputs_of(&events), ["call c1", "output c1", "create"]);
        // And a later session gets the pair from the history.
        let replay = b.core.replay_events();
        assert_eq!(outputs_of(&replay), ["call c1", "output c1"]);
    }

    #[test]
    fn an_mcp_approval_request_is_answered_by_the_allowed_tools() {
        let mut b = Bench::new();
        b.core.set_mcp_approvals(vec![("shop".into(), vec!["search".into()])]);
        for (id, name) in [("apr_1", "search"), ("apr_2", "delete_all")] {
            b.feed(0, created("r1"));
            b.feed(
                10,
                event(json!({"type":"response.output_item.done","event_id":"e","response_id":"r1","output_index":0,
                "item":{"type":"mcp_approval_request","id":id,"server_label":"shop","name":name,"arguments":"{}"}})),
            );
            b.feed(20, done("r1", "completed"));
        }
        let (_, events) = b.drain();
        let answers: Vec<(String, bool, bool)> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::ConversationItemCreate { item: Item::Other(map), .. } => Some((
                    map["approval_request_id"].as_str().unwrap().to_owned(),
                    map["approve"].as_bool().unwrap(),
                    map.contains_key("reason"),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(answers, [("apr_1".into(), true, false), ("apr_2".into(), false, true)]);
        let creates = events.iter().filter(|e| matches!(e, ClientEvent::ResponseCreate { .. })).count();
        assert_eq!(creates, 2, "one response.create after each, once r1 is done");
    }

    #[test]
    fn an_output_given_while_reconnecting_is_replayed_and_answered_in_the_new_session() {
        use crate::call::end::CallEnd;
        use crate::call::reconnect::ReconnectPolicy;
        let start = Instant::now();
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(2000),
            give_up_after: Duration::from_secs(20),
        };
        let config = CoreConfig {
            greeting: None,
            resilience: super::super::Resilience { policy: Some(policy), ..Default::default() },
            ..core_config()
        };
        let mut b = Bench { core: CallCore::new(start, config, leg_config()), start };
        b.feed(0, created("r1"));
        b.feed(
            9,
            event(json!({"type":"response.function_call_arguments.done","event_id":"e","response_id":"r1",
            "item_id":"item_c1","output_index":0,"call_id":"c1","name":"lookup","arguments":"{}"})),
        );
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        b.core.handle_realtime_closed(b.at(100), CallEnd::AgentDisconnected("connection reset".into()));
        assert!(b.core.is_reconnecting());
        b.core.complete_tool(b.at(200), "c1", "{}".into());
        assert!(outputs_of(&b.drain().1).is_empty(), "no session to send to");
        assert_eq!(outputs_of(&b.core.replay_events()), ["call c1", "output c1"], "the history has the pair");
        assert!(b.core.handle_realtime_resumed(b.at(900)));
        assert_eq!(outputs_of(&b.drain().1), ["create"], "the new session is asked to answer");
    }

    fn filler_bench() -> Bench {
        let mut b = Bench::new();
        b.core.set_filler(Duration::from_millis(1000), vec![0x20; 1600]); // 200 ms of PCMU
        b.core.set_tool_names(vec!["lookup".into()]);
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "lookup", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        b
    }

    #[test]
    fn the_filler_plays_after_the_delay_and_repeats_while_the_tool_runs() {
        let mut b = filler_bench();
        assert_eq!(b.core.poll_task_timeout(), Some(b.at(1010)), "the task wakes for the filler");
        assert_eq!(b.core.poll_tools_timeout(), Some(b.at(1010)));
        b.core.handle_task_timeout(b.at(900));
        assert_eq!(b.sent_until(1000), 0, "nothing before filler_after");
        b.core.handle_task_timeout(b.at(1010));
        assert_eq!(b.core.poll_tools_timeout(), Some(b.at(1010) + FILLER_PERIOD));
        let first = b.sent_until(1400);
        assert_eq!(first, 10, "200 ms of filler");
        b.core.handle_task_timeout(b.at(1010) + FILLER_PERIOD);
        assert_eq!(b.sent_until(4000), 10, "repeated");
        b.core.complete_tool(b.at(4000), "c1", "{}".into());
        assert_eq!(b.core.poll_tools_timeout(), None, "no filler once nothing is pending");
    }

    #[test]
    fn the_filler_is_flushed_when_the_result_arrives() {
        let mut b = filler_bench();
        b.core.handle_task_timeout(b.at(1010));
        b.core.complete_tool(b.at(1011), "c1", "{}".into());
        assert_eq!(b.sent_until(1400), 0, "the filler stopped with the result");
    }

    #[test]
    fn the_agents_audio_or_the_caller_stops_the_filler() {
        let mut b = filler_bench();
        b.core.handle_task_timeout(b.at(1010));
        b.feed(1011, created("r2"));
        b.feed(1012, audio_delta("r2", "item_a"));
        // Only the agent's 200 ms (0x7F) go out, none of the filler's.
        assert_eq!(b.sent_until(1600), 10);

        let mut b = filler_bench();
        b.core.handle_task_timeout(b.at(1010));
        b.feed(1011, speech_started());
        assert_eq!(b.sent_until(1400), 0, "the caller's speech flushed it");
    }

    #[test]
    fn no_filler_for_a_built_in_tool() {
        let mut b = Bench::new();
        b.core.set_filler(Duration::from_millis(1000), vec![0x20; 1600]);
        b.core.set_tool_names(vec!["lookup".into()]);
        b.feed(0, created("r1"));
        b.feed(10, call_done("r1", "c1", "transfer_to_human", "completed"));
        b.feed(20, done("r1", "completed"));
        b.drain();
        assert_eq!(b.core.poll_tools_timeout(), None);
        b.core.handle_task_timeout(b.at(1010));
        assert_eq!(b.sent_until(1400), 0);
    }

    #[test]
    fn no_filler_while_a_response_is_active() {
        let mut b = filler_bench();
        b.feed(900, created("r2"));
        b.core.handle_task_timeout(b.at(1010));
        assert_eq!(b.sent_until(1400), 0);
    }
}
