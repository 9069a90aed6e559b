//! The conversation so far, as text, sans-IO and bounded: what a new Realtime session is told
//! when the old one is gone (a dropped WebSocket, `session_expired`, a rollover), so the agent
//! carries on where it left off.
//!
//! It is fed the events the call core already sees:
//!
//! - the caller's turns: `input_audio_buffer.committed` places the turn (conversation order),
//!   `conversation.item.input_audio_transcription.completed` fills in its text, which may arrive
//!   after the response to it (reference §4.4);
//! - the agent's turns: `response.output_audio_transcript.done` (or `response.output_text.done`);
//!   a barge-in's `conversation.item.truncate` keeps only the part the caller heard (estimated
//!   from the milliseconds played, as the server itself deletes the unheard transcript, §3);
//! - function calls: `response.function_call_arguments.done`, paired with the gateway's
//!   `function_call_output` item;
//! - text items the gateway created (`conversation.item.create` of a user or system message,
//!   e.g. DTMF).
//!
//! [`History::replay`] gives the items to create in the new session, oldest first, within the
//! budget: `input_text` for the caller and the gateway's own texts, `output_text` for the agent
//! (the only assistant text part a client may create, §3.1), and each function call followed by
//! its output (an output without its call is refused). Older turns are dropped first.

use std::collections::VecDeque;

use crate::events::{ClientEvent, ServerEvent};
use crate::items::{ContentPart, FunctionCallItem, Item, MessageItem, Role};

/// Appended to an agent turn the caller cut short.
pub const CUT_MARK: &str = " […]";

/// How much of the conversation is kept and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Characters of text replayed at most (all turns together).
    pub max_chars: usize,
    /// Turns (entries: a message, or a function call with its output) replayed at most.
    pub max_turns: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self { max_chars: 8000, max_turns: 40 }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The caller's speech; `text` is `None` until its transcription arrives.
    Caller { item_id: String, text: Option<String> },
    /// The agent's speech or text: the transcript so far (`complete` once its `.done` came).
    /// `heard_ms` / `total_ms`: the audio played when the caller barged in, and received. `cut`:
    /// the connection was lost before the item was complete.
    Agent { item_id: String, text: Option<String>, complete: bool, total_ms: f64, heard_ms: Option<u32>, cut: bool },
    /// A text item the gateway created (role user or system).
    Gateway { role: Role, text: String },
    /// A function call; replayed only once its output is known.
    FunctionCall { call_id: String, name: String, arguments: String, output: Option<String> },
}

impl Turn {
    /// Characters this turn costs in the replay (0: not replayable yet).
    fn chars(&self) -> usize {
        match self {
            Turn::Caller { text, .. } => text.as_deref().map_or(0, |t| t.chars().count()),
            Turn::Agent { .. } => self.agent_text().map_or(0, |t| t.chars().count()),
            Turn::Gateway { text, .. } => text.chars().count(),
            Turn::FunctionCall { name, arguments, output, .. } => {
                output.as_deref().map_or(0, |o| name.chars().count() + arguments.chars().count() + o.chars().count())
            }
        }
    }

    /// The agent's text as heard: cut in proportion to the audio played when barged in on.
    fn agent_text(&self) -> Option<String> {
        let Turn::Agent { text: Some(text), total_ms, heard_ms, cut, .. } = self else { return None };
        match heard_ms {
            Some(heard) => Some(cut_text(text, f64::from(*heard), *total_ms)),
            // Lost mid-item: how much of the partial transcript was played is not known.
            None if *cut => Some(cut_text(text, 0.0, 0.0)),
            None => Some(text.clone()),
        }
    }

    /// The items that replay this turn (none when it has no text or no output yet).
    fn items(&self) -> Vec<Item> {
        match self {
            Turn::Caller { text: Some(text), .. } if !text.trim().is_empty() => vec![Item::user_text(text.clone())],
            Turn::Agent { .. } => match self.agent_text() {
                Some(text) if !text.trim().is_empty() => vec![Item::Message(MessageItem {
                    role: Role::Assistant,
                    content: vec![ContentPart::OutputText { text }],
                    ..MessageItem::default()
                })],
                _ => Vec::new(),
            },
            Turn::Gateway { role, text } => vec![Item::Message(MessageItem {
                role: *role,
                content: vec![ContentPart::InputText { text: text.clone() }],
                ..MessageItem::default()
            })],
            Turn::FunctionCall { call_id, name, arguments, output: Some(output) } => vec![
                Item::FunctionCall(FunctionCallItem {
                    name: name.clone(),
                    arguments: arguments.clone(),
                    call_id: Some(call_id.clone()),
                    ..FunctionCallItem::default()
                }),
                Item::function_call_output(call_id.clone(), output.clone()),
            ],
            _ => Vec::new(),
        }
    }
}

/// The part of `text` spoken in the first `heard_ms` of `total_ms` of audio, cut at a word
/// boundary and marked with [`CUT_MARK`]. Without a length (no audio seen) the whole text is
/// kept, marked as cut.
fn cut_text(text: &str, heard_ms: f64, total_ms: f64) -> String {
    let chars: Vec<char> = text.chars().collect();
    let keep = if total_ms > 0.0 {
        let share = (heard_ms / total_ms).clamp(0.0, 1.0);
        if share >= 1.0 {
            return text.to_owned();
        }
        (chars.len() as f64 * share).floor() as usize
    } else {
        chars.len()
    };
    let mut kept: String = chars.iter().take(keep).collect();
    if keep < chars.len() {
        // Back to the last whole word.
        if let Some(space) = kept.rfind(char::is_whitespace) {
            kept.truncate(space);
        } else {
            kept.clear();
        }
    }
    let kept = kept.trim_end();
    if kept.is_empty() { String::new() } else { format!("{kept}{CUT_MARK}") }
}

/// The conversation of one call, as text (see the module doc). Bounded: beyond the limits the
/// oldest turns are forgotten (they would not be replayed anyway).
#[derive(Debug, Clone)]
pub struct History {
    limits: HistoryLimits,
    turns: VecDeque<Turn>,
    /// Whether the session transcribes the caller (`audio.input.transcription`): only then does
    /// a committed caller turn wait for its text.
    caller_transcripts: bool,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        Self { limits, turns: VecDeque::new(), caller_transcripts: true }
    }

    /// The session does not transcribe the caller: caller turns are not recorded (they have no
    /// text to replay, and nothing to wait for).
    pub fn without_caller_transcripts(mut self) -> Self {
        self.caller_transcripts = false;
        self
    }

    /// The turns kept, oldest first.
    pub fn turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter()
    }

    /// A server event of the call's session.
    pub fn on_server_event(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::InputAudioBufferCommitted(committed)
                if self.caller_transcripts && !self.has_caller_turn(&committed.item_id) =>
            {
                self.push(Turn::Caller { item_id: committed.item_id.clone(), text: None });
            }
            ServerEvent::InputAudioTranscriptionCompleted(done) => {
                let transcript = done.transcript.trim().to_owned();
                match self.caller_turn(&done.item_id) {
                    Some(Turn::Caller { text, .. }) => *text = Some(transcript),
                    // Committed before we were listening (or forgotten): it happened now.
                    _ => self.push(Turn::Caller { item_id: done.item_id.clone(), text: Some(transcript) }),
                }
                self.trim();
            }
            // No text will come: the turn cannot be replayed (and no longer holds a rollover).
            ServerEvent::InputAudioTranscriptionFailed(failed) => {
                self.turns.retain(|t| !matches!(t, Turn::Caller { item_id, text: None } if *item_id == failed.item_id));
            }
            ServerEvent::OutputAudioTranscriptDelta(delta) | ServerEvent::OutputTextDelta(delta) => {
                self.on_agent_delta(&delta.item_id, &delta.delta)
            }
            ServerEvent::OutputAudioTranscriptDone(done) => self.on_agent_text(&done.item_id, &done.transcript),
            ServerEvent::OutputTextDone(done) => self.on_agent_text(&done.item_id, &done.text),
            ServerEvent::FunctionCallArgumentsDone(done) => {
                let known = self
                    .turns
                    .iter()
                    .any(|t| matches!(t, Turn::FunctionCall { call_id, .. } if *call_id == done.call_id));
                if !known {
                    self.push(Turn::FunctionCall {
                        call_id: done.call_id.clone(),
                        name: done.name.clone().unwrap_or_default(),
                        arguments: done.arguments.clone(),
                        output: None,
                    });
                }
            }
            _ => {}
        }
    }

    /// `ms` of audio of the agent's item `item_id` arrived (the length a barge-in is measured
    /// against).
    pub fn on_agent_audio(&mut self, item_id: &str, ms: f64) {
        match self.agent_turn(item_id) {
            Some(Turn::Agent { total_ms, .. }) => *total_ms += ms.max(0.0),
            _ => self.push(Turn::Agent {
                item_id: item_id.to_owned(),
                text: None,
                complete: false,
                total_ms: ms.max(0.0),
                heard_ms: None,
                cut: false,
            }),
        }
    }

    /// A client event the gateway sent (through the core's one `send_realtime`).
    pub fn on_client_event(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::ConversationItemTruncate { item_id, audio_end_ms, .. } => {
                if let Some(Turn::Agent { heard_ms, .. }) = self.agent_turn(item_id) {
                    *heard_ms = Some(*audio_end_ms);
                }
                self.trim();
            }
            ClientEvent::ConversationItemCreate { item, .. } => match item {
                Item::FunctionCallOutput(out) => {
                    for turn in self.turns.iter_mut() {
                        if let Turn::FunctionCall { call_id, output, .. } = turn
                            && *call_id == out.call_id
                        {
                            *output = Some(out.output.clone());
                        }
                    }
                    self.trim();
                }
                Item::Message(message) if matches!(message.role, Role::User | Role::System) => {
                    let text: Vec<&str> = message
                        .content
                        .iter()
                        .filter_map(|part| match part {
                            ContentPart::InputText { text } => Some(text.as_str()),
                            _ => None,
                        })
                        .collect();
                    if !text.is_empty() {
                        self.push(Turn::Gateway { role: message.role, text: text.join(" ") });
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The `conversation.item.create` events that tell a new session the conversation so far,
    /// oldest first, newest turns kept within [`HistoryLimits`].
    pub fn replay(&self) -> Vec<ClientEvent> {
        let mut chars = 0usize;
        let mut chosen: Vec<&Turn> = Vec::new();
        for turn in self.turns.iter().rev() {
            let cost = turn.chars();
            if cost == 0 {
                continue; // nothing to say yet (no transcript, no output)
            }
            if chosen.len() >= self.limits.max_turns || chars + cost > self.limits.max_chars {
                break;
            }
            chars += cost;
            chosen.push(turn);
        }
        chosen
            .into_iter()
            .rev()
            .flat_map(Turn::items)
            .enumerate()
            .map(|(n, item)| ClientEvent::ConversationItemCreate {
                event_id: Some(format!("evt_replay_{n}")),
                previous_item_id: None,
                item,
            })
            .collect()
    }

    /// Whether a caller turn still waits for its transcription (a rollover waits for it: the
    /// next session would not hear that turn otherwise).
    pub fn has_pending_caller_turn(&self) -> bool {
        self.turns.iter().any(|t| matches!(t, Turn::Caller { text: None, .. }))
    }

    /// The session is gone: what was still streaming stays as far as it got (marked as cut),
    /// and caller turns still waiting for a transcript will never get one.
    pub fn on_connection_lost(&mut self) {
        self.turns.retain(|turn| !matches!(turn, Turn::Caller { text: None, .. }));
        for turn in self.turns.iter_mut() {
            if let Turn::Agent { complete, cut, .. } = turn
                && !*complete
            {
                *complete = true;
                *cut = true;
            }
        }
        self.trim();
    }

    fn on_agent_delta(&mut self, item_id: &str, delta: &str) {
        match self.agent_turn(item_id) {
            Some(Turn::Agent { complete: true, .. }) => {}
            Some(Turn::Agent { text, .. }) => text.get_or_insert_with(String::new).push_str(delta),
            _ => self.push(Turn::Agent {
                item_id: item_id.to_owned(),
                text: Some(delta.to_owned()),
                complete: false,
                total_ms: 0.0,
                heard_ms: None,
                cut: false,
            }),
        }
        self.trim();
    }

    fn on_agent_text(&mut self, item_id: &str, transcript: &str) {
        let transcript = transcript.trim().to_owned();
        match self.agent_turn(item_id) {
            Some(Turn::Agent { text, complete, .. }) => {
                *text = Some(transcript);
                *complete = true;
            }
            _ => self.push(Turn::Agent {
                item_id: item_id.to_owned(),
                text: Some(transcript),
                complete: true,
                total_ms: 0.0,
                heard_ms: None,
                cut: false,
            }),
        }
        self.trim();
    }

    fn has_caller_turn(&self, id: &str) -> bool {
        self.turns.iter().any(|t| matches!(t, Turn::Caller { item_id, .. } if item_id == id))
    }

    fn caller_turn(&mut self, id: &str) -> Option<&mut Turn> {
        self.turns.iter_mut().rev().find(|t| matches!(t, Turn::Caller { item_id, .. } if item_id == id))
    }

    fn agent_turn(&mut self, id: &str) -> Option<&mut Turn> {
        self.turns.iter_mut().rev().find(|t| matches!(t, Turn::Agent { item_id, .. } if item_id == id))
    }

    fn push(&mut self, turn: Turn) {
        self.turns.push_back(turn);
        self.trim();
    }

    /// Forgets the oldest turns beyond what a replay could use. Pending turns (a transcript or
    /// an output still to come) count as one turn and no characters; twice the turn limit
    /// bounds them too.
    fn trim(&mut self) {
        let hard_cap = self.limits.max_turns.saturating_mul(2).max(1);
        while self.turns.len() > hard_cap {
            self.turns.pop_front();
        }
        let mut chars: usize = self.turns.iter().map(Turn::chars).sum();
        while chars > self.limits.max_chars {
            let Some(oldest) = self.turns.pop_front() else { break };
            chars = chars.saturating_sub(oldest.chars());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn server(value: Value) -> ServerEvent {
        ServerEvent::from_json(&value.to_string()).unwrap()
    }

    fn committed(item: &str) -> ServerEvent {
        server(json!({"type":"input_audio_buffer.committed","event_id":"e","item_id":item}))
    }

    fn heard(item: &str, text: &str) -> ServerEvent {
        server(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e",
            "item_id":item,"content_index":0,"transcript":text}))
    }

    fn said(item: &str, text: &str) -> ServerEvent {
        server(json!({"type":"response.output_audio_transcript.done","event_id":"e","response_id":"r",
            "item_id":item,"output_index":0,"content_index":0,"transcript":text}))
    }

    fn replayed_json(history: &History) -> Vec<Value> {
        history.replay().iter().map(|e| serde_json::to_value(e).unwrap()).collect()
    }

    #[test]
    fn turns_replay_in_conversation_order_even_when_the_transcript_comes_late() {
        let mut h = History::new(HistoryLimits::default());
        h.on_server_event(&committed("u1"));
        h.on_server_event(&said("a1", "Hello, how can I help?"));
        // The caller's transcript arrives after the agent's answer (§4.4).
        h.on_server_event(&heard("u1", " Hi there. "));
        let items = replayed_json(&h);
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0],
            json!({"type":"conversation.item.create","event_id":"evt_replay_0",
                "item":{"type":"message","role":"user","content":[{"type":"input_text","text":"Hi there."}]}})
        );
        assert_eq!(
            items[1]["item"],
            json!({"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello, how can I help?"}]})
        );
        // Every event is a valid client event by the strict parser.
        for item in &items {
            ClientEvent::from_json(&item.to_string()).unwrap();
        }
    }

    #[test]
    fn a_turn_without_transcript_is_not_replayed() {
        let mut h = History::new(HistoryLimits::default());
        h.on_server_event(&committed("u1"));
        h.on_agent_audio("a1", 500.0);
        assert!(h.replay().is_empty());
    }

    #[test]
    fn a_barged_in_turn_keeps_what_was_heard() {
        let mut h = History::new(HistoryLimits::default());
        h.on_agent_audio("a1", 2000.0);
        h.on_client_event(&ClientEvent::ConversationItemTruncate {
            event_id: None,
            item_id: "a1".into(),
            content_index: 0,
            audio_end_ms: 1000,
        });
        // The transcript arrives after the truncate: the cut applies to it.
        h.on_server_event(&said("a1", "one two three four five six seven eight"));
        let items = replayed_json(&h);
        assert_eq!(items[0]["item"]["content"][0]["text"], json!(format!("one two three four{CUT_MARK}")));
    }

    #[test]
    fn a_turn_lost_with_the_connection_keeps_its_partial_transcript_marked() {
        let mut h = History::new(HistoryLimits::default());
        h.on_server_event(&committed("u0"));
        let delta = |text: &str| {
            server(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r",
                "item_id":"a1","output_index":0,"content_index":0,"delta":text}))
        };
        h.on_server_event(&delta("Your order "));
        h.on_server_event(&delta("ships on"));
        h.on_connection_lost();
        h.on_server_event(&delta(" Friday"));
        let items = replayed_json(&h);
        assert_eq!(items.len(), 1, "the caller turn with no transcript is gone");
        assert_eq!(items[0]["item"]["content"][0]["text"], json!(format!("Your order ships on{CUT_MARK}")));
        assert_eq!(h.turns().count(), 1);
    }

    #[test]
    fn without_transcription_no_caller_turn_waits() {
        let mut h = History::new(HistoryLimits::default()).without_caller_transcripts();
        h.on_server_event(&committed("u1"));
        assert!(!h.has_pending_caller_turn());
        assert_eq!(h.turns().count(), 0);
    }

    #[test]
    fn a_failed_transcription_releases_the_pending_turn() {
        let mut h = History::new(HistoryLimits::default());
        h.on_server_event(&committed("u1"));
        assert!(h.has_pending_caller_turn());
        h.on_server_event(&server(json!({"type":"conversation.item.input_audio_transcription.failed",
            "event_id":"e","item_id":"u1","content_index":0,"error":{"type":"transcription_error","message":"x"}})));
        assert!(!h.has_pending_caller_turn());
        assert_eq!(h.turns().count(), 0);
    }

    #[test]
    fn a_cut_with_no_audio_length_keeps_the_whole_text_marked() {
        assert_eq!(cut_text("all of it", 100.0, 0.0), format!("all of it{CUT_MARK}"));
        assert_eq!(cut_text("all of it", 100.0, 100.0), "all of it");
        assert_eq!(cut_text("word", 10.0, 100.0), "", "nothing whole was heard");
    }

    #[test]
    fn function_calls_replay_only_with_their_output_and_in_pairs() {
        let mut h = History::new(HistoryLimits::default());
        h.on_server_event(&server(json!({"type":"response.function_call_arguments.done","event_id":"e",
            "response_id":"r","item_id":"fc1","output_index":0,"call_id":"call_1","name":"lookup","arguments":"{\"id\":7}"})));
        assert!(h.replay().is_empty(), "no orphan function_call without output");
        h.on_client_event(&ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output("call_1", "{\"status\":\"shipped\"}"),
        });
        let items = replayed_json(&h);
        assert_eq!(
            items[0]["item"],
            json!({"type":"function_call","name":"lookup","arguments":"{\"id\":7}","call_id":"call_1"})
        );
        assert_eq!(
            items[1]["item"],
            json!({"type":"function_call_output","call_id":"call_1","output":"{\"status\":\"shipped\"}"})
        );
    }

    #[test]
    fn gateway_text_items_are_recorded_with_their_role() {
        let mut h = History::new(HistoryLimits::default());
        h.on_client_event(&ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::user_text("The caller pressed 5."),
        });
        h.on_client_event(&ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::system_text("Caller verified."),
        });
        let items = replayed_json(&h);
        assert_eq!(items[0]["item"]["role"], json!("user"));
        assert_eq!(items[0]["item"]["content"][0], json!({"type":"input_text","text":"The caller pressed 5."}));
        assert_eq!(items[1]["item"]["role"], json!("system"));
    }

    #[test]
    fn the_oldest_turns_are_dropped_to_fit_the_budget() {
        let mut h = History::new(HistoryLimits { max_chars: 25, max_turns: 3 });
        for n in 0..10 {
            h.on_server_event(&committed(&format!("u{n}")));
            h.on_server_event(&heard(&format!("u{n}"), &format!("turn {n}")));
        }
        let texts: Vec<Value> = replayed_json(&h).iter().map(|i| i["item"]["content"][0]["text"].clone()).collect();
        assert_eq!(texts, vec![json!("turn 7"), json!("turn 8"), json!("turn 9")]);
        assert!(h.turns().count() <= 6, "storage is bounded too");

        let mut by_chars = History::new(HistoryLimits { max_chars: 12, max_turns: 40 });
        for n in 0..5 {
            by_chars.on_server_event(&heard(&format!("u{n}"), &format!("turn {n}")));
        }
        assert_eq!(by_chars.replay().len(), 2, "6 characters each, 12 at most");
    }
}
