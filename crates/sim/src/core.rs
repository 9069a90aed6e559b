//! The sans-IO core of one simulated Realtime session: client JSON in, server events out, with
//! time passed in. The WebSocket shell in `server.rs` only moves bytes and sleeps until
//! [`SimSession::next_deadline`].
//!
//! Behaviour follows `shared/docs/realtime-protocol.md`: §2 session config, §3 client events,
//! §4.9 the event order of a turn, §6 barge-in and truncation, §7 errors and expiry.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use switchboard_realtime::events::*;

use crate::audio;
use crate::config::{Behaviour, SimConfig, Tone};
use crate::mcp::{self, McpCallScript};
use crate::schema;
use crate::script::{self, InputTokens};
use crate::vad::{Vad, VadEvent, VadParams};

/// What the shell must do next.
// Events dominate; `Close` happens once per session, so boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Send this event as a text frame.
    Event(ServerEvent),
    /// Send a Close frame and end the session.
    Close { code: u16, reason: String },
    /// Send this JSON as a text frame: events the typed enum does not model (MCP, §4.5).
    Raw(Value),
}

/// The §7 message, sent with `session_expired` and as the close reason.
pub const SESSION_EXPIRED_MESSAGE: &str = "Your session hit the maximum duration of 60 minutes.";

/// Default model when the URL names none.
pub const DEFAULT_MODEL: &str = "gpt-realtime";

/// A manual commit needs at least this much audio (observed API behaviour).
const MIN_COMMIT_MS: f64 = 100.0;

/// Without turn detection the buffer grows until committed; cap it (15 minutes of audio).
const MAX_MANUAL_BUFFER_MS: f64 = 15.0 * 60.0 * 1000.0;

#[derive(Debug)]
struct StoredItem {
    id: String,
    item: Item,
    /// Audio length of an assistant audio item, in ms.
    audio_ms: Option<f64>,
    /// `phase` of an assistant message of a `--phases` response.
    phase: Option<&'static str>,
    /// Audio length of a committed user audio item, in ms (for usage).
    input_ms: Option<f64>,
}

/// A transcription not delivered yet (`--transcription-delay-ms`).
#[derive(Debug)]
struct PendingTranscript {
    due: Instant,
    item_id: String,
    transcript: String,
    duration_ms: f64,
}

/// Transcriptions waiting for their delay; beyond this the oldest is delivered early.
const MAX_PENDING_TRANSCRIPTS: usize = 256;

/// Where the audio of a response comes from.
enum ReplySource {
    Echo {
        samples: Vec<i16>,
        rate: u32,
    },
    Tone(Tone),
    /// A tone standing for the given words (scripted answers, goodbyes, commentary).
    Said {
        tone: Tone,
        transcript: String,
    },
    Monologue {
        ms: u32,
    },
}

/// The goodbye tone of a `call_tool` response.
const GOODBYE_HZ: f64 = 880.0;

/// The `commentary` item of a `--phases` response: a short tone before the answer.
const COMMENTARY_TONE: Tone = Tone { hz: 660.0, ms: 400 };

#[derive(Debug)]
struct ActiveResponse {
    id: String,
    conversation_id: Option<String>,
    format: AudioFormat,
    voice: Option<Voice>,
    text_only: bool,
    /// The items this response produces, in order (§3.2: "at least one item", e.g. speech
    /// then a `function_call`; gpt-realtime-2 also speaks a `commentary` item first).
    outputs: Vec<Output>,
    /// Index of the output being produced; the ones before it are done.
    current: usize,
    /// Whether `outputs[current]` has been announced (`response.output_item.added`, ...).
    opened: bool,
    /// Audio bytes sent over all items, for pacing.
    sent_bytes_total: usize,
    started: Instant,
    /// The finished items, for `response.done`'s `output`.
    done_items: Vec<Item>,
    /// The context this response reads (usage).
    input: InputTokens,
}

impl ActiveResponse {
    fn sent_ms(&self) -> f64 {
        self.format.bytes_to_ms(self.sent_bytes_total)
    }

    fn speech_mut(&mut self) -> Option<&mut Speech> {
        match self.outputs.get_mut(self.current) {
            Some(Output::Speech(speech)) if self.opened => Some(speech),
            _ => None,
        }
    }

    fn item_ids(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|o| match o {
            Output::Speech(s) => s.item_id.as_str(),
            Output::FunctionCall(f) => f.item_id.as_str(),
        })
    }
}

/// One output item of a response.
#[derive(Debug)]
enum Output {
    Speech(Speech),
    FunctionCall(PlannedCall),
}

/// An assistant message: audio with its transcript, or text in a text-only response.
#[derive(Debug)]
struct Speech {
    item_id: String,
    /// `commentary` / `final_answer` with `--phases`; None otherwise (older models send none).
    phase: Option<&'static str>,
    audio: Vec<u8>,
    sent_bytes: usize,
    words: Vec<String>,
    words_sent: usize,
}

impl Speech {
    fn transcript_so_far(&self) -> String {
        self.words[..self.words_sent.min(self.words.len())].concat()
    }
}

/// A function call the model makes (§5.2).
#[derive(Debug)]
struct PlannedCall {
    item_id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// `POST /_sim/control/call_tool`: the next response says goodbye (a tone of `say_ms`) and
/// then calls `name` with `arguments`, in the same response, as the model does (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallScript {
    pub name: String,
    /// A JSON text, as `function_call.arguments` carries it.
    pub arguments: String,
    pub say_ms: u32,
}

/// What a response does on an MCP server first.
#[derive(Debug)]
enum McpStep {
    Approval(McpCallScript),
    /// The call, and the approval request it answers.
    Call(McpCallScript, Option<String>),
}

/// One simulated session.
#[derive(Debug)]
pub struct SimSession {
    cfg: SimConfig,
    rng: StdRng,
    session: SessionConfig,
    conversation_id: String,
    expires: Instant,
    closed: bool,
    items: Vec<StoredItem>,
    input_format: AudioFormat,
    /// Input audio not yet committed, at the input format's rate.
    buffer: Vec<i16>,
    /// Timeline position (ms) of `buffer[0]`.
    buffer_start_ms: f64,
    /// Total ms of audio appended in the session (the input timeline, §8).
    appended_ms: f64,
    vad: Option<Vad>,
    /// Item id and start of the speech VAD is inside of.
    speech: Option<(String, u64)>,
    active: Option<ActiveResponse>,
    /// When `idle_timeout_ms` fires: armed when a response's audio would have finished playing.
    idle_deadline: Option<Instant>,
    /// A `call_tool` control waiting for the next response.
    pending_tool: Option<ToolCallScript>,
    /// MCP (crate::mcp): server labels whose tools were listed, an `mcp_call` control waiting
    /// for the next response, approval requests not answered yet (item id, call), and a call
    /// approved for the next response (its approval request id).
    mcp_listed: Vec<String>,
    pending_mcp: Option<McpCallScript>,
    mcp_approvals: Vec<(String, McpCallScript)>,
    approved_mcp: Option<(McpCallScript, String)>,
    /// An `expire` control with `mid_response`: expire once a response streams audio.
    expire_on_audio: bool,
    /// Whether the model has produced audio (the voice is fixed from then on, §2).
    produced_audio: bool,
    /// Caller utterances committed so far (numbers their transcripts).
    user_utterances: u32,
    /// Input transcriptions waiting for `--transcription-delay-ms`, oldest first.
    pending_transcripts: VecDeque<PendingTranscript>,
    /// The previous response's input tokens: what the prompt cache holds (usage).
    previous_input_tokens: u64,
}

impl SimSession {
    /// Opens a transcription session (`?intent=transcription`, §1.1): `session.type` is
    /// `transcription`, with no model, instructions or output audio, and no responses ever;
    /// committed audio is transcribed with [`script::transcription_transcript`] (the simulator
    /// recognises no words).
    pub fn new_transcription(cfg: SimConfig, now: Instant, unix_now_secs: i64, seed: u64) -> (Self, Vec<Outgoing>) {
        let (mut sim, mut opening) = Self::new(cfg, "", now, unix_now_secs, seed);
        sim.session.session_type = "transcription".to_owned();
        sim.session.model = None;
        sim.session.output_modalities = None;
        sim.session.instructions = None;
        if let Some(audio) = sim.session.audio.as_mut() {
            audio.output = None;
        }
        for out in &mut opening {
            if let Outgoing::Event(ServerEvent::SessionCreated(created)) = out {
                created.session = sim.session.clone();
            }
        }
        (sim, opening)
    }

    /// Opens a session: returns it with `session.created` and `conversation.created` (§1.3).
    pub fn new(cfg: SimConfig, model: &str, now: Instant, unix_now_secs: i64, seed: u64) -> (Self, Vec<Outgoing>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let session_id = random_id(&mut rng, "sess");
        let conversation_id = random_id(&mut rng, "conv");
        let max_secs = i64::try_from(cfg.max_session.as_secs()).unwrap_or(i64::MAX);
        let session = SessionConfig {
            session_type: "realtime".to_owned(),
            object: Some("realtime.session".to_owned()),
            id: Some(session_id),
            expires_at: Some(unix_now_secs.saturating_add(max_secs)),
            model: Some(model.to_owned()),
            output_modalities: Some(vec!["audio".to_owned()]),
            instructions: Some("You are a simulated assistant. Your replies are tones and echoes.".to_owned()),
            audio: Some(AudioConfig {
                input: Some(AudioInput {
                    format: Some(AudioFormat::PCM24K),
                    noise_reduction: Some(None),
                    transcription: Some(None),
                    // The live default silence is 200 ms (§2.2, spec session.created example).
                    turn_detection: Some(Some(TurnDetection::ServerVad {
                        threshold: Some(0.5),
                        prefix_padding_ms: Some(300),
                        silence_duration_ms: Some(200),
                        idle_timeout_ms: Some(None),
                        create_response: Some(true),
                        interrupt_response: Some(true),
                    })),
                }),
                output: Some(AudioOutput {
                    format: Some(AudioFormat::PCM24K),
                    voice: Some(Voice::Named("marin".to_owned())),
                    speed: Some(1.0),
                }),
            }),
            tools: Some(Vec::new()),
            tool_choice: Some(Value::String("auto".to_owned())),
            max_output_tokens: Some(MaxOutputTokens::Inf(InfLiteral::Inf)),
            truncation: Some(Value::String("auto".to_owned())),
            tracing: Some(None),
            ..SessionConfig::default()
        };
        let expires = now + cfg.max_session;
        let mut sim = SimSession {
            cfg,
            rng,
            session,
            conversation_id,
            expires,
            closed: false,
            items: Vec::new(),
            input_format: AudioFormat::PCM24K,
            buffer: Vec::new(),
            buffer_start_ms: 0.0,
            appended_ms: 0.0,
            vad: None,
            speech: None,
            active: None,
            idle_deadline: None,
            pending_tool: None,
            mcp_listed: Vec::new(),
            pending_mcp: None,
            mcp_approvals: Vec::new(),
            approved_mcp: None,
            expire_on_audio: false,
            produced_audio: false,
            user_utterances: 0,
            pending_transcripts: VecDeque::new(),
            previous_input_tokens: 0,
        };
        sim.rebuild_vad();
        let created =
            ServerEvent::SessionCreated(SessionEvent { event_id: sim.event_id(), session: sim.session.clone() });
        let conversation = ServerEvent::ConversationCreated(ConversationCreatedEvent {
            event_id: sim.event_id(),
            conversation: ConversationInfo {
                id: sim.conversation_id.clone(),
                object: Some("realtime.conversation".to_owned()),
            },
        });
        (sim, vec![Outgoing::Event(created), Outgoing::Event(conversation)])
    }

    /// What a GA server answers a client that sent `OpenAI-Beta` (§1.1, observed).
    pub fn beta_rejection() -> Vec<Outgoing> {
        let message = "The beta Realtime API shape is no longer supported. Remove the \
                       'OpenAI-Beta' header to use the GA API.";
        vec![
            Outgoing::Event(error_event("event_beta".to_owned(), "beta_api_shape_disabled", message, None, None)),
            Outgoing::Close { code: 4000, reason: "beta_api_shape_disabled".to_owned() },
        ]
    }

    /// The effective session configuration.
    pub fn session(&self) -> &SessionConfig {
        &self.session
    }

    /// Whether the session has ended (expiry sent its Close).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// When [`SimSession::poll`] has work next: the next audio chunk, the idle timeout, or
    /// expiry.
    pub fn next_deadline(&self) -> Instant {
        let mut deadline = self.expires;
        if let Some(r) = &self.active {
            deadline = deadline.min(self.chunk_due(r));
        }
        if let Some(idle) = self.idle_deadline {
            deadline = deadline.min(idle);
        }
        if let Some(pending) = self.pending_transcripts.front() {
            deadline = deadline.min(pending.due);
        }
        deadline
    }

    /// Streams the audio chunks that are due and ends the session at expiry.
    pub fn poll(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        if now >= self.expires {
            return self.expire_now();
        }
        if let Some(idle) = self.idle_deadline
            && now >= idle
        {
            self.idle_deadline = None;
            if self.active.is_none() && self.speech.is_none() && self.idle_timeout_ms().is_some() {
                out.extend(self.idle_timeout(now));
            }
        }
        while self.pending_transcripts.front().is_some_and(|p| p.due <= now) {
            if let Some(pending) = self.pending_transcripts.pop_front() {
                out.extend(self.transcription_events(pending));
            }
        }
        out.extend(self.advance(now));
        out
    }

    /// §7: `error` `session_expired`, then close 1001 with the same text.
    fn expire_now(&mut self) -> Vec<Outgoing> {
        self.closed = true;
        let id = self.event_id();
        vec![
            Outgoing::Event(error_event(id, "session_expired", SESSION_EXPIRED_MESSAGE, None, None)),
            Outgoing::Close { code: 1001, reason: SESSION_EXPIRED_MESSAGE.to_owned() },
        ]
    }

    /// The `expire` control: the session expires now, or (`mid_response`) as soon as a
    /// response streams audio (at once if one is streaming already).
    pub fn expire(&mut self, now: Instant, mid_response: bool) -> Vec<Outgoing> {
        if self.closed {
            return Vec::new();
        }
        let streaming = self.active.as_ref().is_some_and(|r| r.sent_bytes_total > 0);
        if !mid_response || streaming {
            return self.expire_now();
        }
        self.expire_on_audio = true;
        self.poll(now)
    }

    /// The `call_tool` control: the next response says goodbye and calls the tool; with
    /// `start_now` and no response active, that response starts at once.
    pub fn call_tool(&mut self, now: Instant, script: ToolCallScript, start_now: bool) -> Vec<Outgoing> {
        if self.closed {
            return Vec::new();
        }
        self.pending_tool = Some(script);
        if start_now && self.active.is_none() {
            let mut out = self.start_response(now, Vec::new(), None);
            out.extend(self.poll(now));
            return out;
        }
        Vec::new()
    }

    /// Handles one client text frame.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Vec<Outgoing> {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => self.handle_value(now, value),
            Err(e) => {
                let id = self.event_id();
                vec![Outgoing::Event(error_event(
                    id,
                    "invalid_event",
                    &format!("The event is not valid JSON: {e}"),
                    None,
                    None,
                ))]
            }
        }
    }

    /// Handles one client event already parsed as JSON (the shell parses once for its log).
    pub fn handle_value(&mut self, now: Instant, value: Value) -> Vec<Outgoing> {
        if self.closed {
            return Vec::new();
        }
        let client_event_id = value.get("event_id").and_then(Value::as_str).map(str::to_owned);
        let event = match self.parse_client_event(value, client_event_id.clone()) {
            Ok(event) => event,
            Err(error) => return vec![Outgoing::Event(*error)],
        };
        let mut out = match event {
            ClientEvent::SessionUpdate { session, .. } => self.session_update(*session, client_event_id),
            ClientEvent::InputAudioBufferAppend { audio, .. } => self.append(now, &audio, client_event_id),
            ClientEvent::InputAudioBufferCommit { .. } => self.manual_commit(now, client_event_id),
            ClientEvent::InputAudioBufferClear { .. } => self.clear_buffer(),
            ClientEvent::ConversationItemCreate { previous_item_id, item, .. } => {
                self.item_create(previous_item_id, item, client_event_id)
            }
            ClientEvent::ConversationItemRetrieve { item_id, .. } => self.item_retrieve(&item_id, client_event_id),
            ClientEvent::ConversationItemTruncate { item_id, content_index, audio_end_ms, .. } => {
                self.item_truncate(&item_id, content_index, audio_end_ms, client_event_id)
            }
            ClientEvent::ConversationItemDelete { item_id, .. } => self.item_delete(&item_id, client_event_id),
            ClientEvent::ResponseCreate { response, .. } => self.response_create(now, response, client_event_id),
            ClientEvent::ResponseCancel { response_id, .. } => self.response_cancel(response_id, client_event_id),
            ClientEvent::OutputAudioBufferClear { .. } => {
                let id = self.event_id();
                vec![Outgoing::Event(error_event(
                    id,
                    "invalid_event",
                    "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                    Some("type"),
                    client_event_id,
                ))]
            }
        };
        out.extend(self.poll(now));
        out
    }

    /// Validates type and fields like the API: unknown type -> `invalid_event`, unknown field
    /// -> `unknown_parameter`, anything else malformed -> `invalid_value`.
    fn parse_client_event(
        &mut self,
        value: Value,
        client_event_id: Option<String>,
    ) -> Result<ClientEvent, Box<ServerEvent>> {
        let event_id = self.event_id();
        let Some(event_type) = value.get("type").and_then(Value::as_str) else {
            return Err(Box::new(error_event(
                event_id,
                "invalid_event",
                "The 'type' field is missing.",
                None,
                client_event_id,
            )));
        };
        if !CLIENT_EVENT_TYPES.contains(&event_type) {
            let message = format!(
                "Invalid value: '{event_type}'. Supported values are: {}.",
                CLIENT_EVENT_TYPES.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
            );
            return Err(Box::new(error_event(event_id, "invalid_event", &message, Some("type"), client_event_id)));
        }
        if let Err(invalid) = schema::client_event(&value) {
            return Err(Box::new(error_event(
                event_id,
                invalid.code,
                &invalid.message,
                Some(&invalid.param),
                client_event_id,
            )));
        }
        serde_json::from_value::<ClientEvent>(value).map_err(|e| {
            let text = e.to_string();
            Box::new(match unknown_field_name(&text) {
                Some(field) => error_event(
                    event_id,
                    "unknown_parameter",
                    &format!("Unknown parameter: '{field}'."),
                    Some(&field),
                    client_event_id,
                ),
                None => {
                    error_event(event_id, "invalid_value", &format!("Invalid event: {text}"), None, client_event_id)
                }
            })
        })
    }

    // ---- session.update (§2) ----

    fn session_update(&mut self, update: SessionConfig, client_event_id: Option<String>) -> Vec<Outgoing> {
        if let Err((code, message, param)) = self.validate_session(&update) {
            let id = self.event_id();
            return vec![Outgoing::Event(error_event(id, code, &message, Some(&param), client_event_id))];
        }
        if self.cfg.faults.refuse_session_update {
            // Fault mode: the update is refused and the session keeps its defaults (PCM 24 kHz).
            let id = self.event_id();
            let message = "Invalid value for 'session.audio.input.format' (simulated fault).";
            return vec![Outgoing::Event(error_event(
                id,
                "invalid_value",
                message,
                Some("session.audio.input.format"),
                client_event_id,
            ))];
        }
        let old_input = self.input_format;
        let old_turn = self.turn_detection();
        merge_session(&mut self.session, update);
        if let Some(format) = self.cfg.faults.updated_format {
            // Fault mode: the server keeps (or picks) another audio format than the one asked for.
            if let Some(audio) = self.session.audio.as_mut() {
                if let Some(input) = audio.input.as_mut() {
                    input.format = Some(format);
                }
                if let Some(output) = audio.output.as_mut() {
                    output.format = Some(format);
                }
            }
        }
        self.input_format = self
            .session
            .audio
            .as_ref()
            .and_then(|a| a.input.as_ref())
            .and_then(|i| i.format)
            .unwrap_or(AudioFormat::PCM24K);
        if self.input_format != old_input || self.turn_detection() != old_turn {
            // Set formats before the first audio (§8); a change starts a fresh buffer.
            if self.input_format != old_input {
                self.buffer.clear();
                self.buffer_start_ms = self.appended_ms;
            }
            self.speech = None;
            self.rebuild_vad();
        }
        let id = self.event_id();
        let mut out = vec![Outgoing::Event(ServerEvent::SessionUpdated(SessionEvent {
            event_id: id,
            session: self.session.clone(),
        }))];
        out.extend(self.list_mcp_tools());
        out
    }

    /// The `mcp` tools of the session, by server label.
    fn mcp_server(&self, label: &str) -> Option<&serde_json::Map<String, Value>> {
        self.session.tools.as_ref()?.iter().find_map(|tool| match tool {
            Tool::Mcp(fields) if fields.get("server_label").and_then(Value::as_str) == Some(label) => Some(fields),
            _ => None,
        })
    }

    /// The tool listing of every MCP server the session declares for the first time (§5 "MCP flow").
    fn list_mcp_tools(&mut self) -> Vec<Outgoing> {
        let servers: Vec<serde_json::Map<String, Value>> = self
            .session
            .tools
            .iter()
            .flatten()
            .filter_map(|tool| match tool {
                Tool::Mcp(fields) => Some(fields.clone()),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for server in servers {
            let label = server.get("server_label").and_then(Value::as_str).unwrap_or_default().to_owned();
            if self.mcp_listed.contains(&label) {
                continue;
            }
            self.mcp_listed.push(label);
            let item_id = random_id(&mut self.rng, "mcpl");
            let ids: Vec<String> = (0..4).map(|_| self.event_id()).collect();
            let mut ids = ids.into_iter();
            out.extend(
                mcp::list_tools_events(|| ids.next().unwrap_or_default(), &item_id, &server)
                    .into_iter()
                    .map(Outgoing::Raw),
            );
        }
        out
    }

    /// The `mcp_call` control: the next response calls `script.name` on a declared MCP server
    /// (after an approval when the server requires one); with `start_now` and no response
    /// active, that response starts at once.
    pub fn mcp_call(&mut self, now: Instant, script: McpCallScript, start_now: bool) -> Vec<Outgoing> {
        if self.closed {
            return Vec::new();
        }
        self.pending_mcp = Some(script);
        if start_now && self.active.is_none() {
            let mut out = self.start_response(now, vec![(ReplySource::Tone(self.cfg.greeting), None)], None);
            out.extend(self.poll(now));
            return out;
        }
        Vec::new()
    }

    /// What MCP step the next response takes: an approved call, or a scripted one (asking for
    /// approval first when the server requires it).
    fn take_mcp_step(&mut self) -> Option<McpStep> {
        if let Some((script, approval)) = self.approved_mcp.take() {
            return Some(McpStep::Call(script, Some(approval)));
        }
        let script = self.pending_mcp.take()?;
        let Some(server) = self.mcp_server(&script.server) else {
            tracing::warn!(server = %script.server, "mcp_call: the session declares no such MCP server; ignored");
            return None;
        };
        if mcp::requires_approval(server, &script.name) {
            Some(McpStep::Approval(script))
        } else {
            Some(McpStep::Call(script, None))
        }
    }

    /// The rules that depend on the session's state; the shape of the update was checked by
    /// `schema::client_event` before it was typed.
    fn validate_session(&self, s: &SessionConfig) -> Result<(), (&'static str, String, String)> {
        let invalid = |param: &str, message: String| Err(("invalid_value", message, param.to_owned()));
        if s.session_type != self.session.session_type {
            // The type comes with the connection (`intent`, §1.1); an update must match it.
            return invalid(
                "session.type",
                format!("The session type cannot be changed from '{}'.", self.session.session_type),
            );
        }
        if let (Some(model), Some(current)) = (&s.model, &self.session.model)
            && model != current
        {
            return invalid("session.model", "The model of a session cannot be changed.".to_owned());
        }
        // §2 "Limits on changes": voice until the model has produced audio once, speed only
        // between turns, tracing frozen once enabled.
        let current_output = self.session.audio.as_ref().and_then(|a| a.output.as_ref());
        let new_output = s.audio.as_ref().and_then(|a| a.output.as_ref());
        if let Some(voice) = new_output.and_then(|o| o.voice.as_ref())
            && self.produced_audio
            && current_output.and_then(|o| o.voice.as_ref()) != Some(voice)
        {
            return invalid(
                "session.audio.output.voice",
                "Cannot update a conversation's voice if assistant audio is present.".to_owned(),
            );
        }
        if let Some(speed) = new_output.and_then(|o| o.speed)
            && self.active.is_some()
            && current_output.and_then(|o| o.speed) != Some(speed)
        {
            return invalid(
                "session.audio.output.speed",
                "The output speed can only be changed between turns, not while a response is in progress.".to_owned(),
            );
        }
        if let (Some(new), Some(Some(current))) = (&s.tracing, &self.session.tracing)
            && new.as_ref() != Some(current)
        {
            return invalid("session.tracing", "Tracing cannot be modified once it has been enabled.".to_owned());
        }
        Ok(())
    }

    fn turn_detection(&self) -> Option<TurnDetection> {
        self.session.audio.as_ref().and_then(|a| a.input.as_ref()).and_then(|i| i.turn_detection.clone()).flatten()
    }

    fn output_format(&self) -> AudioFormat {
        self.session
            .audio
            .as_ref()
            .and_then(|a| a.output.as_ref())
            .and_then(|o| o.format)
            .unwrap_or(AudioFormat::PCM24K)
    }

    fn rebuild_vad(&mut self) {
        // Semantic VAD is approximated by the energy detector with its default timings.
        self.vad = self.turn_detection().map(|td| {
            let params = match td {
                TurnDetection::ServerVad { threshold, prefix_padding_ms, silence_duration_ms, .. } => VadParams {
                    threshold: threshold.unwrap_or(0.5),
                    prefix_padding_ms: u64::from(prefix_padding_ms.unwrap_or(300)),
                    silence_duration_ms: u64::from(silence_duration_ms.unwrap_or(500)),
                },
                TurnDetection::SemanticVad { .. } => {
                    VadParams { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 }
                }
            };
            Vad::new(params, self.input_format.sample_rate(), self.appended_ms.round() as u64)
        });
    }

    // ---- input audio buffer (§3, §4.2) ----

    /// `bytes` were base64 on the wire; an append whose audio is not base64 never gets here
    /// (it is a malformed event: `invalid_value`).
    fn append(&mut self, now: Instant, bytes: &[u8], client_event_id: Option<String>) -> Vec<Outgoing> {
        if matches!(self.input_format, AudioFormat::Pcm { .. }) && !bytes.len().is_multiple_of(2) {
            // 16-bit samples: half a sample is not audio in the session's format.
            return self.item_error(
                format!("Invalid 'audio': {} bytes is not a whole number of 16-bit PCM samples.", bytes.len()),
                "audio",
                client_event_id,
            );
        }
        let samples = audio::decode(self.input_format, bytes);
        let rate = self.input_format.sample_rate();
        self.buffer.extend_from_slice(&samples);
        self.appended_ms += samples.len() as f64 * 1000.0 / f64::from(rate);

        let mut out = Vec::new();
        let vad_events = match &mut self.vad {
            Some(vad) => vad.push(&samples),
            None => Vec::new(),
        };
        for event in vad_events {
            match event {
                VadEvent::SpeechStarted { audio_start_ms } => {
                    out.extend(self.on_speech_started(audio_start_ms));
                }
                VadEvent::SpeechStopped { audio_end_ms } => {
                    out.extend(self.on_speech_stopped(now, audio_end_ms));
                }
            }
        }
        self.trim_buffer();
        out
    }

    fn on_speech_started(&mut self, audio_start_ms: u64) -> Vec<Outgoing> {
        let item_id = random_id(&mut self.rng, "item");
        self.speech = Some((item_id.clone(), audio_start_ms));
        let mut out = vec![Outgoing::Event(ServerEvent::SpeechStarted(SpeechStartedEvent {
            event_id: self.event_id(),
            audio_start_ms,
            item_id,
        }))];
        let interrupt = self.turn_detection().is_some_and(|td| td.interrupt_response());
        if interrupt && self.active.is_some() {
            // `--late-deltas`: the server had more of the reply in flight than the cancel
            // could stop; the client must discard it (§6 step 1).
            for _ in 0..self.cfg.late_deltas {
                let remaining =
                    self.active.as_mut().and_then(|r| r.speech_mut()).is_some_and(|s| s.sent_bytes < s.audio.len());
                if !remaining {
                    break;
                }
                out.extend(self.send_chunk());
            }
            out.extend(self.finish_active(ResponseStatus::Cancelled, Some("turn_detected")));
        }
        self.idle_deadline = None;
        out
    }

    fn idle_timeout_ms(&self) -> Option<u32> {
        match self.turn_detection() {
            Some(TurnDetection::ServerVad { idle_timeout_ms: Some(Some(ms)), .. }) => Some(ms),
            _ => None,
        }
    }

    /// §2.2 `idle_timeout_ms`: the silent span is committed as a user item and a response
    /// ("are you still there?", here the greeting tone) is created.
    fn idle_timeout(&mut self, now: Instant) -> Vec<Outgoing> {
        let item_id = random_id(&mut self.rng, "item");
        let idle_ms = f64::from(self.idle_timeout_ms().unwrap_or(0));
        let audio_end_ms = self.appended_ms.round() as u64;
        let audio_start_ms = (self.appended_ms - idle_ms).max(0.0).round() as u64;
        let mut out = vec![Outgoing::Event(ServerEvent::InputAudioBufferTimeoutTriggered(TimeoutTriggeredEvent {
            event_id: self.event_id(),
            audio_start_ms,
            audio_end_ms,
            item_id: item_id.clone(),
        }))];
        self.buffer.clear();
        self.buffer_start_ms = self.appended_ms;
        out.extend(self.commit_user_item(now, item_id, audio_end_ms.saturating_sub(audio_start_ms) as f64, false));
        let prompt = ReplySource::Said { tone: self.cfg.greeting, transcript: "Are you still there?".to_owned() };
        out.extend(self.start_response(now, vec![(prompt, None)], None));
        out
    }

    fn on_speech_stopped(&mut self, now: Instant, audio_end_ms: u64) -> Vec<Outgoing> {
        let Some((item_id, start_ms)) = self.speech.take() else {
            return Vec::new();
        };
        let mut out = vec![Outgoing::Event(ServerEvent::SpeechStopped(SpeechStoppedEvent {
            event_id: self.event_id(),
            audio_end_ms,
            item_id: item_id.clone(),
        }))];
        let utterance = self.take_span(start_ms as f64, audio_end_ms as f64);
        out.extend(self.commit_user_item(now, item_id, audio_end_ms.saturating_sub(start_ms) as f64, true));
        let create = self.session.session_type != "transcription"
            && self.turn_detection().is_some_and(|td| td.create_response());
        if create && self.active.is_none() {
            let source = match self.cfg.behaviour {
                Behaviour::Echo => ReplySource::Echo { samples: utterance, rate: self.input_format.sample_rate() },
                Behaviour::Tone { hz, ms } => ReplySource::Tone(Tone { hz, ms }),
                Behaviour::Monologue { ms } => ReplySource::Monologue { ms },
            };
            if self.cfg.faults.fail_vad_responses {
                // Fault mode: the caller-triggered response fails before any audio.
                out.extend(self.start_failed_response(now));
            } else if self.cfg.phases {
                // gpt-realtime-2: a spoken preamble, then the answer, each its own item.
                let commentary =
                    ReplySource::Said { tone: COMMENTARY_TONE, transcript: "Let me think about that.".to_owned() };
                out.extend(self.start_response(
                    now,
                    vec![(commentary, Some("commentary")), (source, Some("final_answer"))],
                    None,
                ));
            } else {
                out.extend(self.start_response(now, vec![(source, None)], None));
            }
        }
        out
    }

    /// Removes and returns the buffered samples of `[start_ms, end_ms)`; audio before the
    /// span is dropped, audio after it stays buffered.
    fn take_span(&mut self, start_ms: f64, end_ms: f64) -> Vec<i16> {
        let rate = f64::from(self.input_format.sample_rate());
        let to_index = |ms: f64| -> usize {
            let idx = ((ms - self.buffer_start_ms) * rate / 1000.0).round();
            (idx.max(0.0) as usize).min(self.buffer.len())
        };
        let start = to_index(start_ms);
        let end = to_index(end_ms).max(start);
        let span = self.buffer[start..end].to_vec();
        self.buffer.drain(..end);
        self.buffer_start_ms += end as f64 * 1000.0 / rate;
        span
    }

    /// Keeps the buffer bounded: outside speech only the prefix padding can still be needed.
    fn trim_buffer(&mut self) {
        let rate = f64::from(self.input_format.sample_rate());
        let keep_ms = match (&self.vad, &self.speech) {
            (Some(_), None) => 1000.0,
            (Some(_), Some(_)) => return,
            (None, _) => MAX_MANUAL_BUFFER_MS,
        };
        let keep = (keep_ms * rate / 1000.0) as usize;
        if self.buffer.len() > keep {
            let drop = self.buffer.len() - keep;
            self.buffer.drain(..drop);
            self.buffer_start_ms += drop as f64 * 1000.0 / rate;
        }
    }

    /// Commits a user audio item: `committed`, `item.added`, `item.done`; when transcription
    /// is on, its transcription follows asynchronously (§4.4). `spoken` is false for the silent
    /// span an idle timeout commits (transcribed as "").
    fn commit_user_item(&mut self, now: Instant, item_id: String, duration_ms: f64, spoken: bool) -> Vec<Outgoing> {
        let previous_item_id = self.items.last().map(|i| i.id.clone());
        let item = Item::Message(MessageItem {
            id: Some(item_id.clone()),
            object: Some("realtime.item".to_owned()),
            status: Some(ItemStatus::Completed),
            role: Role::User,
            content: vec![ContentPart::InputAudio { audio: None, transcript: None }],
        });
        self.items.push(StoredItem {
            id: item_id.clone(),
            item: item.clone(),
            audio_ms: None,
            phase: None,
            input_ms: Some(duration_ms),
        });
        let mut out = vec![
            Outgoing::Event(ServerEvent::InputAudioBufferCommitted(BufferCommittedEvent {
                event_id: self.event_id(),
                previous_item_id: previous_item_id.clone(),
                item_id: item_id.clone(),
            })),
            Outgoing::Event(ServerEvent::ConversationItemAdded(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id: previous_item_id.clone(),
                item: item.clone(),
            })),
            Outgoing::Event(ServerEvent::ConversationItemDone(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id,
                item,
            })),
        ];
        let transcribe = self
            .session
            .audio
            .as_ref()
            .and_then(|a| a.input.as_ref())
            .is_some_and(|i| matches!(i.transcription, Some(Some(_))));
        if transcribe {
            let transcript = if spoken {
                self.user_utterances += 1;
                if self.session.session_type == "transcription" {
                    script::transcription_transcript(self.user_utterances, duration_ms)
                } else {
                    script::utterance_transcript(self.user_utterances, duration_ms)
                }
            } else {
                String::new()
            };
            if self.pending_transcripts.len() >= MAX_PENDING_TRANSCRIPTS {
                // Bounded: the oldest is delivered early rather than lost.
                if let Some(oldest) = self.pending_transcripts.pop_front() {
                    out.extend(self.transcription_events(oldest));
                }
            }
            let pending =
                PendingTranscript { due: now + self.cfg.transcription_delay, item_id, transcript, duration_ms };
            if self.cfg.transcription_delay.is_zero() {
                out.extend(self.transcription_events(pending));
            } else {
                self.pending_transcripts.push_back(pending);
            }
        }
        out
    }

    /// `…input_audio_transcription.delta` per word then `.completed`, or `.failed` with
    /// `--transcription-fails` (§4.4: failures are not `error` events).
    fn transcription_events(&mut self, pending: PendingTranscript) -> Vec<Outgoing> {
        let PendingTranscript { item_id, transcript, duration_ms, .. } = pending;
        if self.cfg.transcription_fails {
            return vec![Outgoing::Event(ServerEvent::InputAudioTranscriptionFailed(TranscriptionFailedEvent {
                event_id: self.event_id(),
                item_id,
                content_index: 0,
                error: ErrorDetail {
                    kind: "transcription_error".to_owned(),
                    code: Some("audio_unintelligible".to_owned()),
                    message: "The audio could not be transcribed (simulated fault).".to_owned(),
                    param: None,
                    event_id: None,
                },
            }))];
        }
        let mut out = Vec::new();
        for word in split_words(&transcript).into_iter().filter(|w| !w.is_empty()) {
            out.push(Outgoing::Event(ServerEvent::InputAudioTranscriptionDelta(TranscriptionDeltaEvent {
                event_id: self.event_id(),
                item_id: item_id.clone(),
                content_index: Some(0),
                delta: Some(word),
            })));
        }
        // The transcript becomes part of the stored item (`conversation.item.retrieved`).
        if let Some(Item::Message(m)) = self.items.iter_mut().find(|i| i.id == item_id).map(|i| &mut i.item) {
            for part in &mut m.content {
                if let ContentPart::InputAudio { transcript: t, .. } = part {
                    *t = Some(transcript.clone());
                }
            }
        }
        out.push(Outgoing::Event(ServerEvent::InputAudioTranscriptionCompleted(TranscriptionCompletedEvent {
            event_id: self.event_id(),
            item_id,
            content_index: 0,
            transcript,
            usage: Some(serde_json::json!({"type": "duration", "seconds": (duration_ms / 1000.0).ceil()})),
            logprobs: None,
        })));
        out
    }

    fn manual_commit(&mut self, now: Instant, client_event_id: Option<String>) -> Vec<Outgoing> {
        let rate = f64::from(self.input_format.sample_rate());
        let buffered_ms = self.buffer.len() as f64 * 1000.0 / rate;
        if buffered_ms < MIN_COMMIT_MS {
            let id = self.event_id();
            return vec![Outgoing::Event(error_event(
                id,
                "input_audio_buffer_commit_empty",
                &format!(
                    "Error committing input audio buffer: buffer too small. Expected at least \
                     100ms of audio, but buffer only has {buffered_ms:.2}ms of audio."
                ),
                None,
                client_event_id,
            ))];
        }
        let item_id = match self.speech.take() {
            Some((id, _)) => id,
            None => random_id(&mut self.rng, "item"),
        };
        if let Some(vad) = &mut self.vad {
            vad.reset_speech();
        }
        self.buffer.clear();
        self.buffer_start_ms = self.appended_ms;
        self.commit_user_item(now, item_id, buffered_ms, true)
    }

    fn clear_buffer(&mut self) -> Vec<Outgoing> {
        self.buffer.clear();
        self.buffer_start_ms = self.appended_ms;
        self.speech = None;
        if let Some(vad) = &mut self.vad {
            vad.reset_speech();
        }
        vec![Outgoing::Event(ServerEvent::InputAudioBufferCleared(BareEvent { event_id: self.event_id() }))]
    }

    // ---- conversation items (§3.1, §4.1) ----

    fn item_error(&mut self, message: String, param: &str, client_event_id: Option<String>) -> Vec<Outgoing> {
        let id = self.event_id();
        vec![Outgoing::Event(error_event(id, "invalid_value", &message, Some(param), client_event_id))]
    }

    fn item_create(
        &mut self,
        previous_item_id: Option<String>,
        mut item: Item,
        client_event_id: Option<String>,
    ) -> Vec<Outgoing> {
        let insert_at = match previous_item_id.as_deref() {
            None => self.items.len(),
            Some("root") => 0,
            Some(prev) => match self.items.iter().position(|i| i.id == prev) {
                Some(pos) => pos + 1,
                None => {
                    return self.item_error(
                        format!("Previous item with id '{prev}' not found."),
                        "previous_item_id",
                        client_event_id,
                    );
                }
            },
        };
        if let Item::Message(m) = &item
            && m.role == Role::Assistant
            && m.content.iter().any(|p| matches!(p, ContentPart::OutputAudio { .. } | ContentPart::Audio { .. }))
        {
            return self.item_error(
                "Assistant audio items cannot be created by the client.".to_owned(),
                "item.content",
                client_event_id,
            );
        }
        // §5 "MCP flow": an approval answers a request the server made.
        if let Item::Other(fields) = &item
            && fields.get("type").and_then(Value::as_str) == Some("mcp_approval_response")
        {
            let request = fields.get("approval_request_id").and_then(Value::as_str).unwrap_or_default().to_owned();
            let Some(index) = self.mcp_approvals.iter().position(|(id, _)| *id == request) else {
                return self.item_error(
                    format!("MCP approval request '{request}' not found."),
                    "item.approval_request_id",
                    client_event_id,
                );
            };
            let (request, script) = self.mcp_approvals.remove(index);
            if fields.get("approve").and_then(Value::as_bool) == Some(true) {
                self.approved_mcp = Some((script, request));
            }
        }
        // §5.4: "The server checks that a function_call with that call_id exists."
        if let Item::FunctionCallOutput(output) = &item
            && !self.items.iter().any(
                |i| matches!(&i.item, Item::FunctionCall(call) if call.call_id.as_deref() == Some(output.call_id.as_str())),
            )
        {
            return self.item_error(
                format!("Tool call ID '{}' not found in conversation.", output.call_id),
                "item.call_id",
                client_event_id,
            );
        }
        let id = match item.id() {
            Some(id) => id.to_owned(),
            None => {
                let id = random_id(&mut self.rng, "item");
                item.set_id(id.clone());
                id
            }
        };
        if self.items.iter().any(|i| i.id == id) {
            return self.item_error(format!("Item with id '{id}' already exists."), "item.id", client_event_id);
        }
        match &mut item {
            Item::Message(m) => {
                m.object = Some("realtime.item".to_owned());
                m.status = Some(ItemStatus::Completed);
                // Audio bytes are never echoed in item events (§4.1).
                for part in &mut m.content {
                    if let ContentPart::InputAudio { audio, .. } = part {
                        *audio = None;
                    }
                }
            }
            Item::FunctionCall(f) => {
                f.object = Some("realtime.item".to_owned());
                f.status = Some(ItemStatus::Completed);
            }
            Item::FunctionCallOutput(f) => {
                f.object = Some("realtime.item".to_owned());
                f.status = Some(ItemStatus::Completed);
            }
            Item::Other(_) => {}
        }
        let previous = insert_at.checked_sub(1).and_then(|i| self.items.get(i)).map(|i| i.id.clone());
        self.items
            .insert(insert_at, StoredItem { id, item: item.clone(), audio_ms: None, phase: None, input_ms: None });
        vec![
            Outgoing::Event(ServerEvent::ConversationItemAdded(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id: previous.clone(),
                item: item.clone(),
            })),
            Outgoing::Event(ServerEvent::ConversationItemDone(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id: previous,
                item,
            })),
        ]
    }

    fn item_retrieve(&mut self, item_id: &str, client_event_id: Option<String>) -> Vec<Outgoing> {
        match self.items.iter().find(|i| i.id == item_id) {
            Some(stored) => {
                let item = wire_item(&stored.item, stored.phase);
                vec![Outgoing::Event(ServerEvent::ConversationItemRetrieved(ConversationItemEvent {
                    event_id: self.event_id(),
                    previous_item_id: None,
                    item,
                }))]
            }
            None => self.item_error(format!("Item with item_id '{item_id}' not found."), "item_id", client_event_id),
        }
    }

    fn item_delete(&mut self, item_id: &str, client_event_id: Option<String>) -> Vec<Outgoing> {
        let in_active = self.active.as_ref().is_some_and(|r| r.item_ids().any(|id| id == item_id));
        match self.items.iter().position(|i| i.id == item_id) {
            Some(_) if in_active => self.item_error(
                format!("Item '{item_id}' belongs to the response in progress."),
                "item_id",
                client_event_id,
            ),
            Some(pos) => {
                self.items.remove(pos);
                vec![Outgoing::Event(ServerEvent::ConversationItemDeleted(ItemDeletedEvent {
                    event_id: self.event_id(),
                    item_id: item_id.to_owned(),
                }))]
            }
            None => self.item_error(format!("Item with item_id '{item_id}' not found."), "item_id", client_event_id),
        }
    }

    /// §6: the item must be an assistant audio item and `audio_end_ms` within its audio.
    fn item_truncate(
        &mut self,
        item_id: &str,
        content_index: u32,
        audio_end_ms: u32,
        client_event_id: Option<String>,
    ) -> Vec<Outgoing> {
        let Some(pos) = self.items.iter().position(|i| i.id == item_id) else {
            return self.item_error(format!("Item with item_id '{item_id}' not found."), "item_id", client_event_id);
        };
        let Some(audio_ms) = self.items[pos].audio_ms else {
            return self.item_error(
                format!("Item '{item_id}' is not an assistant message with audio."),
                "item_id",
                client_event_id,
            );
        };
        if content_index != 0 {
            return self.item_error(
                format!("Invalid content_index {content_index}: the item has one audio part."),
                "content_index",
                client_event_id,
            );
        }
        if f64::from(audio_end_ms) > audio_ms {
            return self.item_error(
                format!("Audio content of {}ms is already shorter than {audio_end_ms}ms", audio_ms.floor()),
                "audio_end_ms",
                client_event_id,
            );
        }
        let stored = &mut self.items[pos];
        stored.audio_ms = Some(f64::from(audio_end_ms));
        // The unheard part of the transcript goes too (§3).
        if let Item::Message(m) = &mut stored.item {
            for part in &mut m.content {
                if let ContentPart::OutputAudio { transcript: Some(t), .. } = part {
                    let keep_chars = if audio_ms > 0.0 {
                        (t.chars().count() as f64 * f64::from(audio_end_ms) / audio_ms) as usize
                    } else {
                        0
                    };
                    *t = t.chars().take(keep_chars).collect();
                }
            }
        }
        if let Some(active) = &mut self.active {
            let keep = (active.format.bytes_per_ms() * f64::from(audio_end_ms)) as usize;
            for output in &mut active.outputs {
                if let Output::Speech(speech) = output
                    && speech.item_id == item_id
                {
                    // Stop generating past the cut.
                    speech.audio.truncate(keep.max(speech.sent_bytes));
                }
            }
        }
        vec![Outgoing::Event(ServerEvent::ConversationItemTruncated(ItemTruncatedEvent {
            event_id: self.event_id(),
            item_id: item_id.to_owned(),
            content_index,
            audio_end_ms,
        }))]
    }

    // ---- responses (§3.2, §4.3, §4.9) ----

    fn response_create(
        &mut self,
        now: Instant,
        config: Option<ResponseConfig>,
        client_event_id: Option<String>,
    ) -> Vec<Outgoing> {
        if let Some(active) = &self.active {
            let message = format!(
                "Conversation already has an active response in progress: {}. Wait until the \
                 response is finished before creating a new one.",
                active.id
            );
            let id = self.event_id();
            return vec![Outgoing::Event(error_event(
                id,
                "conversation_already_has_active_response",
                &message,
                None,
                client_event_id,
            ))];
        }
        // §3.2 `input` replaces the context: a function_call_output in it needs its
        // function_call in it too (community report, reference §5.5).
        if let Some(input) = config.as_ref().and_then(|c| c.input.as_ref()) {
            let mut calls: Vec<&str> = Vec::new();
            for (i, entry) in input.iter().enumerate() {
                match entry.get("type").and_then(Value::as_str) {
                    Some("function_call") => calls.extend(entry.get("call_id").and_then(Value::as_str)),
                    Some("function_call_output") => {
                        let call_id = entry.get("call_id").and_then(Value::as_str).unwrap_or_default();
                        if !calls.contains(&call_id) {
                            let id = self.event_id();
                            return vec![Outgoing::Event(error_event(
                                id,
                                "invalid_value",
                                &format!("Tool call ID '{call_id}' not found in conversation."),
                                Some(&format!("response.input[{i}].call_id")),
                                client_event_id,
                            ))];
                        }
                    }
                    _ => {}
                }
            }
        }
        let source = match self.last_text_item() {
            Some(text) => {
                let (tone, transcript) = script::text_answer(&text);
                ReplySource::Said { tone, transcript }
            }
            None => ReplySource::Tone(self.cfg.greeting),
        };
        self.start_response(now, vec![(source, None)], config)
    }

    fn response_cancel(&mut self, response_id: Option<String>, client_event_id: Option<String>) -> Vec<Outgoing> {
        let matches = match (&self.active, &response_id) {
            (Some(active), Some(wanted)) => &active.id == wanted,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            let id = self.event_id();
            return vec![Outgoing::Event(error_event(
                id,
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                None,
                client_event_id,
            ))];
        }
        self.finish_active(ResponseStatus::Cancelled, Some("client_cancelled"))
    }

    /// The function tools the next response may call: `response.tools` if given, else the
    /// session's (§2.4, §3.2).
    fn declares_function(&self, config: Option<&ResponseConfig>, name: &str) -> bool {
        let tools = config.and_then(|c| c.tools.as_ref()).or(self.session.tools.as_ref());
        tools.is_some_and(|tools| tools.iter().any(|t| matches!(t, Tool::Function { name: n, .. } if n == name)))
    }

    /// Whether the session declares a function tool called `name`.
    pub fn declares_tool(&self, name: &str) -> bool {
        self.declares_function(None, name)
    }

    /// Builds a spoken (or written) output item from a reply source.
    fn speech(
        &mut self,
        source: ReplySource,
        format: AudioFormat,
        text_only: bool,
        phase: Option<&'static str>,
    ) -> Speech {
        let rate = format.sample_rate();
        let (samples, transcript) = match source {
            ReplySource::Echo { samples, rate: from } => {
                let ms = samples.len() as f64 * 1000.0 / f64::from(from.max(1));
                (audio::resample(&samples, from, rate), format!("You said something for {} milliseconds.", ms.round()))
            }
            ReplySource::Tone(tone) => (
                audio::sine(tone.hz, rate, tone.ms, 0.5),
                "Hello! Thanks for calling. How can I help you today?".to_owned(),
            ),
            ReplySource::Said { tone, transcript } => (audio::sine(tone.hz, rate, tone.ms, 0.5), transcript),
            ReplySource::Monologue { ms } => {
                // About 2.5 words per second, like unhurried speech.
                let word_count = (ms as usize / 400).max(1);
                let words: Vec<&str> = MONOLOGUE_WORDS.iter().cycle().take(word_count).copied().collect();
                (audio::babble(rate, ms), words.join(" ") + ".")
            }
        };
        let audio = if text_only { Vec::new() } else { audio::encode(format, &samples) };
        Speech {
            item_id: random_id(&mut self.rng, "item"),
            phase,
            audio,
            sent_bytes: 0,
            words: split_words(&transcript),
            words_sent: 0,
        }
    }

    /// Starts a response that speaks `sources` in order (one item each, with its phase),
    /// or, when a `call_tool` control is pending, says goodbye and calls the tool instead.
    fn start_response(
        &mut self,
        now: Instant,
        sources: Vec<(ReplySource, Option<&'static str>)>,
        config: Option<ResponseConfig>,
    ) -> Vec<Outgoing> {
        self.begin_response(now, sources, config, false)
    }

    fn begin_response(
        &mut self,
        now: Instant,
        sources: Vec<(ReplySource, Option<&'static str>)>,
        config: Option<ResponseConfig>,
        fail: bool,
    ) -> Vec<Outgoing> {
        let mut format = self.output_format();
        let mut voice = self.session.audio.as_ref().and_then(|a| a.output.as_ref()).and_then(|o| o.voice.clone());
        if let Some(out) = config.as_ref().and_then(|c| c.audio.as_ref()).and_then(|a| a.output.as_ref()) {
            format = out.format.unwrap_or(format);
            voice = out.voice.clone().or(voice);
        }
        let modalities = config
            .as_ref()
            .and_then(|c| c.output_modalities.clone())
            .or_else(|| self.session.output_modalities.clone())
            .unwrap_or_else(|| vec!["audio".to_owned()]);
        let text_only = modalities.iter().all(|m| m == "text");
        let mut outputs = Vec::new();
        let mcp_step = if fail { None } else { self.take_mcp_step() };
        if fail {
            // A failed response produces nothing; a pending tool call waits for the next one.
        } else if let Some(script) = self.pending_tool.take() {
            let goodbye = ReplySource::Said {
                tone: Tone { hz: GOODBYE_HZ, ms: script.say_ms },
                transcript: "Thank you for calling. Goodbye!".to_owned(),
            };
            // `say_ms: 0`: the function call alone, no preamble.
            if script.say_ms > 0 {
                outputs.push(Output::Speech(self.speech(goodbye, format, text_only, None)));
            }
            if self.declares_function(config.as_ref(), &script.name) {
                outputs.push(Output::FunctionCall(PlannedCall {
                    item_id: random_id(&mut self.rng, "item"),
                    call_id: random_id(&mut self.rng, "call"),
                    name: script.name,
                    arguments: script.arguments,
                }));
            } else {
                // The model never calls a tool it was not given (§2.4).
                tracing::warn!(tool = %script.name, "call_tool: the session does not declare this function; goodbye only");
            }
        } else {
            for (source, phase) in sources {
                outputs.push(Output::Speech(self.speech(source, format, text_only, phase)));
            }
        }
        let input = self.context_tokens(config.as_ref());
        let conversation_id = match config.as_ref().and_then(|c| c.conversation.as_deref()) {
            Some("none") => None,
            _ => Some(self.conversation_id.clone()),
        };
        self.active = Some(ActiveResponse {
            id: random_id(&mut self.rng, "resp"),
            conversation_id,
            format,
            voice,
            text_only,
            outputs,
            current: 0,
            opened: false,
            sent_bytes_total: 0,
            started: now,
            done_items: Vec::new(),
            input,
        });
        if matches!(mcp_step, Some(McpStep::Approval(_)))
            && let Some(active) = self.active.as_mut()
        {
            // The response only asks for the approval (§5 "MCP flow").
            active.outputs.clear();
        }
        let response = self.response_object(ResponseStatus::InProgress, None, Vec::new(), None);
        let mut out = vec![
            Outgoing::Event(ServerEvent::ResponseCreated(ResponseEvent { event_id: self.event_id(), response })),
            Outgoing::Event(self.rate_limits_event()),
        ];
        if let Some(step) = mcp_step {
            out.extend(self.mcp_step_events(step));
        }
        if fail {
            out.extend(self.finish_active(ResponseStatus::Failed, None));
        } else {
            out.extend(self.advance(now));
        }
        out
    }

    /// The MCP events at the start of the active response.
    fn mcp_step_events(&mut self, step: McpStep) -> Vec<Outgoing> {
        let response_id = self.active.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let item_id = random_id(&mut self.rng, "mcp");
        let ids: Vec<String> = (0..8).map(|_| self.event_id()).collect();
        let mut ids = ids.into_iter();
        let next_id = || ids.next().unwrap_or_default();
        let events = match step {
            McpStep::Approval(script) => {
                let events = mcp::approval_request_events(next_id, &response_id, &item_id, &script);
                self.mcp_approvals.push((item_id, script));
                events
            }
            McpStep::Call(script, approval) => {
                mcp::call_events(next_id, &response_id, &item_id, &script, approval.as_deref())
            }
        };
        events.into_iter().map(Outgoing::Raw).collect()
    }

    /// A response that fails at once, without output items (`--fail-responses`, §4.3).
    fn start_failed_response(&mut self, now: Instant) -> Vec<Outgoing> {
        self.begin_response(now, Vec::new(), None, true)
    }

    /// What a response reads, in tokens (docs/simulator.md "Usage"): the preamble, the
    /// instructions, the tools and every conversation item so far.
    fn context_tokens(&self, config: Option<&ResponseConfig>) -> InputTokens {
        let instructions =
            config.and_then(|c| c.instructions.as_deref()).or(self.session.instructions.as_deref()).unwrap_or("");
        let tools = config.and_then(|c| c.tools.as_ref()).or(self.session.tools.as_ref());
        let tools_tokens = match tools {
            Some(tools) if !tools.is_empty() => script::text_tokens(&serde_json::to_string(tools).unwrap_or_default()),
            _ => 0,
        };
        let mut tokens =
            InputTokens { text: script::PREAMBLE_TOKENS + script::text_tokens(instructions) + tools_tokens, audio: 0 };
        for stored in &self.items {
            let item = script::item_tokens(&stored.item, stored.audio_ms.or(stored.input_ms));
            tokens.text += item.text;
            tokens.audio += item.audio;
        }
        tokens
    }

    /// The text of the newest item when it is a user or system text message: a
    /// `response.create` right after it gets the scripted answer to it.
    fn last_text_item(&self) -> Option<String> {
        let Item::Message(m) = &self.items.last()?.item else { return None };
        if m.role == Role::Assistant {
            return None;
        }
        let text: Vec<&str> = m
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::InputText { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        (!text.is_empty()).then(|| text.join(" "))
    }

    fn rate_limits_event(&mut self) -> ServerEvent {
        ServerEvent::RateLimitsUpdated(RateLimitsEvent {
            event_id: self.event_id(),
            rate_limits: vec![
                RateLimit { name: "requests".to_owned(), limit: 5_000, remaining: 4_999, reset_seconds: 0.012 },
                RateLimit { name: "tokens".to_owned(), limit: 400_000, remaining: 395_904, reset_seconds: 0.614 },
            ],
        })
    }

    /// Produces what the active response has due at `now`: opens and closes its items, streams
    /// the audio chunks due, and ends it with `response.done` after the last item.
    fn advance(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(response) = &self.active {
            let Some(output) = response.outputs.get(response.current) else {
                out.extend(self.finish_active(ResponseStatus::Completed, None));
                break;
            };
            if !response.opened {
                out.extend(self.open_output());
                continue;
            }
            let Output::Speech(speech) = output else {
                // Function calls are opened and closed in one go.
                break;
            };
            if speech.sent_bytes >= speech.audio.len() {
                out.extend(self.close_speech(true));
                continue;
            }
            if self.chunk_due(response) > now {
                break;
            }
            out.extend(self.send_chunk());
            if self.expire_on_audio {
                out.extend(self.expire_now());
                break;
            }
        }
        out
    }

    /// Announces the current output item (§4.9); a function call streams and ends at once (§5.2),
    /// a text-only message too.
    fn open_output(&mut self) -> Vec<Outgoing> {
        let previous_item_id = self.items.last().map(|i| i.id.clone());
        let Some(response) = self.active.as_mut() else { return Vec::new() };
        response.opened = true;
        let response_id = response.id.clone();
        let output_index = u32::try_from(response.current).unwrap_or(u32::MAX);
        let text_only = response.text_only;
        let (item, phase, part) = match response.outputs.get(response.current) {
            Some(Output::Speech(speech)) => {
                let item = Item::Message(MessageItem {
                    id: Some(speech.item_id.clone()),
                    object: Some("realtime.item".to_owned()),
                    status: Some(ItemStatus::InProgress),
                    role: Role::Assistant,
                    content: Vec::new(),
                });
                let part = if text_only {
                    ContentPart::Text { text: Some(String::new()) }
                } else {
                    ContentPart::Audio { audio: None, transcript: Some(String::new()) }
                };
                (item, speech.phase, Some(part))
            }
            Some(Output::FunctionCall(call)) => {
                let item = Item::FunctionCall(FunctionCallItem {
                    id: Some(call.item_id.clone()),
                    object: Some("realtime.item".to_owned()),
                    status: Some(ItemStatus::InProgress),
                    name: call.name.clone(),
                    arguments: String::new(),
                    call_id: Some(call.call_id.clone()),
                });
                (item, None, None)
            }
            None => return Vec::new(),
        };
        let item_id = item.id().unwrap_or_default().to_owned();
        let audio_ms = (part.is_some() && !text_only).then_some(0.0);
        self.items.push(StoredItem { id: item_id.clone(), item: item.clone(), audio_ms, phase, input_ms: None });
        let wire = wire_item(&item, phase);
        let mut out = vec![
            Outgoing::Event(ServerEvent::OutputItemAdded(OutputItemEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                output_index,
                item: wire.clone(),
            })),
            Outgoing::Event(ServerEvent::ConversationItemAdded(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id,
                item: wire,
            })),
        ];
        match part {
            Some(part) => {
                out.push(Outgoing::Event(ServerEvent::ContentPartAdded(ContentPartEvent {
                    event_id: self.event_id(),
                    response_id: response_id.clone(),
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    part,
                })));
                if text_only {
                    // Text is cheap: stream it at once, then end the item.
                    let words = match self.active.as_mut().and_then(|r| r.speech_mut()) {
                        Some(speech) => {
                            speech.words_sent = speech.words.len();
                            speech.words.clone()
                        }
                        None => Vec::new(),
                    };
                    for word in words {
                        out.push(Outgoing::Event(ServerEvent::OutputTextDelta(DeltaEvent {
                            event_id: self.event_id(),
                            response_id: response_id.clone(),
                            item_id: item_id.clone(),
                            output_index,
                            content_index: 0,
                            delta: word,
                        })));
                    }
                    out.extend(self.close_speech(true));
                }
            }
            None => out.extend(self.close_function_call()),
        }
        out
    }

    /// Streams the whole arguments of the current function call and ends its item (§5.2).
    fn close_function_call(&mut self) -> Vec<Outgoing> {
        let Some(response) = self.active.as_mut() else { return Vec::new() };
        let Some(Output::FunctionCall(call)) = response.outputs.get(response.current) else { return Vec::new() };
        let (item_id, call_id, name, arguments) =
            (call.item_id.clone(), call.call_id.clone(), call.name.clone(), call.arguments.clone());
        let response_id = response.id.clone();
        let output_index = u32::try_from(response.current).unwrap_or(u32::MAX);
        response.current += 1;
        response.opened = false;
        let item = Item::FunctionCall(FunctionCallItem {
            id: Some(item_id.clone()),
            object: Some("realtime.item".to_owned()),
            status: Some(ItemStatus::Completed),
            name: name.clone(),
            arguments: arguments.clone(),
            call_id: Some(call_id.clone()),
        });
        response.done_items.push(item.clone());
        let previous_item_id = self.previous_item_id(&item_id);
        if let Some(stored) = self.items.iter_mut().find(|i| i.id == item_id) {
            stored.item = item.clone();
        }
        vec![
            Outgoing::Event(ServerEvent::FunctionCallArgumentsDelta(FunctionCallArgumentsDeltaEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                call_id: call_id.clone(),
                delta: arguments.clone(),
            })),
            Outgoing::Event(ServerEvent::FunctionCallArgumentsDone(FunctionCallArgumentsDoneEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                item_id,
                output_index,
                call_id,
                name: Some(name),
                arguments,
            })),
            Outgoing::Event(ServerEvent::OutputItemDone(OutputItemEvent {
                event_id: self.event_id(),
                response_id,
                output_index,
                item: item.clone(),
            })),
            Outgoing::Event(ServerEvent::ConversationItemDone(ConversationItemEvent {
                event_id: self.event_id(),
                previous_item_id,
                item,
            })),
        ]
    }

    fn previous_item_id(&self, item_id: &str) -> Option<String> {
        self.items
            .iter()
            .position(|i| i.id == item_id)
            .and_then(|pos| pos.checked_sub(1))
            .and_then(|pos| self.items.get(pos))
            .map(|i| i.id.clone())
    }

    /// Ends the current speech item: the `.done` events in §4.9 order. `completed` false when
    /// the response was interrupted, cancelled or failed (the item is then `incomplete`).
    fn close_speech(&mut self, completed: bool) -> Vec<Outgoing> {
        let Some(response) = self.active.as_mut() else { return Vec::new() };
        let text_only = response.text_only;
        let response_id = response.id.clone();
        let output_index = u32::try_from(response.current).unwrap_or(u32::MAX);
        let format = response.format;
        let Some(speech) = response.speech_mut() else { return Vec::new() };
        let transcript = if completed { speech.words.concat() } else { speech.transcript_so_far() };
        let sent_ms = format.bytes_to_ms(speech.sent_bytes);
        let (item_id, phase) = (speech.item_id.clone(), speech.phase);
        response.current += 1;
        response.opened = false;
        let item_status = if completed { ItemStatus::Completed } else { ItemStatus::Incomplete };
        let content = if text_only {
            ContentPart::OutputText { text: transcript.clone() }
        } else {
            ContentPart::OutputAudio { audio: None, transcript: Some(transcript.clone()) }
        };
        let item = Item::Message(MessageItem {
            id: Some(item_id.clone()),
            object: Some("realtime.item".to_owned()),
            status: Some(item_status),
            role: Role::Assistant,
            content: vec![content],
        });
        let wire = wire_item(&item, phase);
        response.done_items.push(wire.clone());
        if let Some(stored) = self.items.iter_mut().find(|i| i.id == item_id) {
            stored.item = item;
            if !text_only {
                stored.audio_ms = Some(sent_ms);
            }
        }
        let previous_item_id = self.previous_item_id(&item_id);
        let mut out = Vec::new();
        if text_only {
            out.push(Outgoing::Event(ServerEvent::OutputTextDone(TextDoneEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
                text: transcript.clone(),
            })));
        } else {
            out.push(Outgoing::Event(ServerEvent::OutputAudioDone(AudioDoneEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
            })));
            out.push(Outgoing::Event(ServerEvent::OutputAudioTranscriptDone(TranscriptDoneEvent {
                event_id: self.event_id(),
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
                transcript: transcript.clone(),
            })));
        }
        let part = if text_only {
            ContentPart::Text { text: Some(transcript) }
        } else {
            ContentPart::Audio { audio: None, transcript: Some(transcript) }
        };
        out.push(Outgoing::Event(ServerEvent::ContentPartDone(ContentPartEvent {
            event_id: self.event_id(),
            response_id: response_id.clone(),
            item_id,
            output_index,
            content_index: 0,
            part,
        })));
        out.push(Outgoing::Event(ServerEvent::OutputItemDone(OutputItemEvent {
            event_id: self.event_id(),
            response_id,
            output_index,
            item: wire.clone(),
        })));
        out.push(Outgoing::Event(ServerEvent::ConversationItemDone(ConversationItemEvent {
            event_id: self.event_id(),
            previous_item_id,
            item: wire,
        })));
        out
    }

    fn chunk_due(&self, response: &ActiveResponse) -> Instant {
        let speed = self.cfg.burst.speed;
        if speed <= 0.0 || !speed.is_finite() {
            return response.started;
        }
        let seconds = response.sent_ms() / 1000.0 / speed;
        response.started + Duration::from_secs_f64(seconds.max(0.0))
    }

    /// Sends the next audio chunk of the current item and the transcript words that go with it.
    fn send_chunk(&mut self) -> Vec<Outgoing> {
        let burst = self.cfg.burst;
        let (lo, hi) = (burst.min_chunk_ms.max(1), burst.max_chunk_ms.max(burst.min_chunk_ms).max(1));
        let chunk_ms = self.rng.random_range(lo..=hi);
        let mut out = Vec::new();
        let Some(response) = self.active.as_mut() else {
            return out;
        };
        let format = response.format;
        let response_id = response.id.clone();
        let output_index = u32::try_from(response.current).unwrap_or(u32::MAX);
        let Some(speech) = response.speech_mut() else {
            return out;
        };
        let sample_bytes = match format {
            AudioFormat::Pcm { .. } => 2,
            AudioFormat::Pcmu | AudioFormat::Pcma => 1,
        };
        let wanted = (format.bytes_per_ms() * f64::from(chunk_ms)) as usize;
        let wanted = (wanted / sample_bytes).max(1) * sample_bytes;
        let start = speech.sent_bytes;
        let end = (start + wanted).min(speech.audio.len());
        let delta = speech.audio.get(start..end).map(<[u8]>::to_vec).unwrap_or_default();
        speech.sent_bytes = end;
        let sent_ms = format.bytes_to_ms(end);
        let total = speech.audio.len().max(1);
        let words_due = (speech.words.len() * end).div_ceil(total).min(speech.words.len());
        let new_words: Vec<String> = speech.words.get(speech.words_sent..words_due).unwrap_or_default().to_vec();
        speech.words_sent = speech.words_sent.max(words_due);
        let item_id = speech.item_id.clone();
        response.sent_bytes_total += delta.len();
        self.produced_audio = true;
        if let Some(stored) = self.items.iter_mut().find(|i| i.id == item_id) {
            stored.audio_ms = Some(sent_ms);
        }
        out.push(Outgoing::Event(ServerEvent::OutputAudioDelta(AudioDeltaEvent {
            event_id: self.event_id(),
            response_id: response_id.clone(),
            item_id: item_id.clone(),
            output_index,
            content_index: 0,
            delta,
        })));
        if !new_words.is_empty() {
            out.push(Outgoing::Event(ServerEvent::OutputAudioTranscriptDelta(DeltaEvent {
                event_id: self.event_id(),
                response_id,
                item_id,
                output_index,
                content_index: 0,
                delta: new_words.concat(),
            })));
        }
        out
    }

    /// Ends the active response: the open item's `.done` events, then `response.done`.
    /// Used for completion, barge-in (`turn_detected`), `response.cancel` and failures.
    fn finish_active(&mut self, status: ResponseStatus, reason: Option<&str>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(response) = &self.active
            && response.opened
        {
            match response.outputs.get(response.current) {
                Some(Output::Speech(_)) => out.extend(self.close_speech(status == ResponseStatus::Completed)),
                // §5.3: `arguments.done` is also sent for interrupted calls.
                Some(Output::FunctionCall(_)) => out.extend(self.close_function_call()),
                None => {}
            }
        }
        let Some(response) = self.active.take() else {
            return out;
        };
        let sent_ms = response.sent_ms();
        if let Some(idle_ms) = self.idle_timeout_ms() {
            // The caller hears the audio in real time from the first chunk on.
            let playback_end = response.started + Duration::from_secs_f64(sent_ms / 1000.0);
            self.idle_deadline = Some(playback_end + Duration::from_millis(u64::from(idle_ms)));
        }
        let usage = if status == ResponseStatus::Failed {
            // Nothing was generated or billed.
            script::usage(InputTokens::default(), 0, 0, 0)
        } else {
            let output_text: u64 = response
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| match o {
                    Output::Speech(s) => script::text_tokens(&s.transcript_so_far()),
                    Output::FunctionCall(f) if i < response.current => {
                        script::text_tokens(&f.name) + script::text_tokens(&f.arguments)
                    }
                    Output::FunctionCall(_) => 0,
                })
                .sum();
            let usage = script::usage(
                response.input,
                self.previous_input_tokens,
                output_text,
                script::output_audio_tokens(sent_ms),
            );
            self.previous_input_tokens = response.input.total();
            usage
        };
        let details = match status {
            // §4.3: `failed` carries `error{type,code,message}`.
            ResponseStatus::Failed => {
                let (kind, code, message) = self.cfg.faults.fail_reason.error_fields();
                Some(StatusDetails {
                    kind: Some("failed".to_owned()),
                    reason: None,
                    error: Some(serde_json::json!({"type": kind, "code": code, "message": message})),
                })
            }
            _ => reason.map(|reason| StatusDetails {
                kind: Some("cancelled".to_owned()),
                reason: Some(reason.to_owned()),
                error: None,
            }),
        };
        let mut response_obj = self.response_object(status, details, response.done_items.clone(), Some(usage));
        response_obj.id = response.id.clone();
        response_obj.conversation_id = response.conversation_id.clone();
        response_obj.output_modalities = Some(vec![if response.text_only { "text" } else { "audio" }.to_owned()]);
        response_obj.audio = Some(ResponseAudio {
            output: Some(ResponseAudioOutput { format: Some(response.format), voice: response.voice.clone() }),
        });
        out.push(Outgoing::Event(ServerEvent::ResponseDone(ResponseEvent {
            event_id: self.event_id(),
            response: response_obj,
        })));
        out
    }

    fn response_object(
        &self,
        status: ResponseStatus,
        status_details: Option<StatusDetails>,
        output: Vec<Item>,
        usage: Option<Usage>,
    ) -> Response {
        let active = self.active.as_ref();
        Response {
            object: Some("realtime.response".to_owned()),
            id: active.map(|r| r.id.clone()).unwrap_or_default(),
            conversation_id: active.and_then(|r| r.conversation_id.clone()),
            status,
            status_details,
            output,
            output_modalities: Some(vec![
                if active.is_some_and(|r| r.text_only) { "text" } else { "audio" }.to_owned(),
            ]),
            max_output_tokens: Some(MaxOutputTokens::Inf(InfLiteral::Inf)),
            audio: active.map(|r| ResponseAudio {
                output: Some(ResponseAudioOutput { format: Some(r.format), voice: r.voice.clone() }),
            }),
            metadata: None,
            usage,
        }
    }

    fn event_id(&mut self) -> String {
        random_id(&mut self.rng, "event")
    }
}

const MONOLOGUE_WORDS: [&str; 24] = [
    "Let",
    "me",
    "tell",
    "you",
    "everything",
    "about",
    "our",
    "opening",
    "hours,",
    "our",
    "prices,",
    "the",
    "weather",
    "today,",
    "and",
    "several",
    "other",
    "things",
    "you",
    "did",
    "not",
    "ask",
    "about",
    "really",
];

/// An item as sent: with `--phases` an assistant message carries its `phase`, which the
/// typed [`MessageItem`] has no field for, so it goes out as the untyped item map.
fn wire_item(item: &Item, phase: Option<&'static str>) -> Item {
    let Some(phase) = phase else { return item.clone() };
    match serde_json::to_value(item) {
        Ok(Value::Object(mut map)) => {
            map.insert("phase".to_owned(), Value::String(phase.to_owned()));
            Item::Other(map)
        }
        _ => item.clone(),
    }
}

/// Splits text into words that keep their trailing space, so deltas concatenate back.
fn split_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
    if let Some(last) = words.last_mut() {
        last.pop();
    }
    words
}

fn random_id(rng: &mut StdRng, prefix: &str) -> String {
    let suffix: String = (0..20).map(|_| char::from(rng.sample(Alphanumeric))).collect();
    format!("{prefix}_{suffix}")
}

/// Pulls `x` out of serde's "unknown field `x`, expected …".
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    rest.split('`').next().map(str::to_owned)
}

/// An `error` event of type `invalid_request_error`.
pub fn error_event(
    event_id: String,
    code: &str,
    message: &str,
    param: Option<&str>,
    client_event_id: Option<String>,
) -> ServerEvent {
    ServerEvent::Error(ErrorEvent {
        event_id,
        error: ErrorDetail {
            kind: "invalid_request_error".to_owned(),
            code: Some(code.to_owned()),
            message: message.to_owned(),
            param: param.map(str::to_owned),
            event_id: client_event_id,
        },
    })
}

/// Applies a `session.update`: only the fields present change (§2); `null` clears.
fn merge_session(current: &mut SessionConfig, update: SessionConfig) {
    macro_rules! take {
        ($($field:ident),*) => { $( if update.$field.is_some() { current.$field = update.$field; } )* };
    }
    take!(
        output_modalities,
        instructions,
        tools,
        tool_choice,
        max_output_tokens,
        truncation,
        tracing,
        prompt,
        include,
        reasoning,
        parallel_tool_calls
    );
    let Some(audio) = update.audio else { return };
    let current_audio = current.audio.get_or_insert_with(AudioConfig::default);
    if let Some(input) = audio.input {
        let cur = current_audio.input.get_or_insert_with(AudioInput::default);
        if input.format.is_some() {
            cur.format = input.format;
        }
        if input.noise_reduction.is_some() {
            cur.noise_reduction = input.noise_reduction;
        }
        if input.transcription.is_some() {
            cur.transcription = input.transcription;
        }
        if let Some(td) = input.turn_detection {
            cur.turn_detection = Some(td.map(fill_turn_detection_defaults));
        }
    }
    if let Some(output) = audio.output {
        let cur = current_audio.output.get_or_insert_with(AudioOutput::default);
        if output.format.is_some() {
            cur.format = output.format;
        }
        if output.voice.is_some() {
            cur.voice = output.voice;
        }
        if output.speed.is_some() {
            cur.speed = output.speed;
        }
    }
}

/// The echoed session shows every turn-detection field with its effective value.
fn fill_turn_detection_defaults(td: TurnDetection) -> TurnDetection {
    match td {
        TurnDetection::ServerVad {
            threshold,
            prefix_padding_ms,
            silence_duration_ms,
            idle_timeout_ms,
            create_response,
            interrupt_response,
        } => TurnDetection::ServerVad {
            threshold: threshold.or(Some(0.5)),
            prefix_padding_ms: prefix_padding_ms.or(Some(300)),
            silence_duration_ms: silence_duration_ms.or(Some(500)),
            idle_timeout_ms: idle_timeout_ms.or(Some(None)),
            create_response: create_response.or(Some(true)),
            interrupt_response: interrupt_response.or(Some(true)),
        },
        TurnDetection::SemanticVad { eagerness, create_response, interrupt_response } => TurnDetection::SemanticVad {
            eagerness: eagerness.or(Some("auto".to_owned())),
            create_response: create_response.or(Some(true)),
            interrupt_response: interrupt_response.or(Some(true)),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::{BurstPattern, FailReason};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::json;

    fn cfg(speed: f64) -> SimConfig {
        SimConfig { burst: BurstPattern { min_chunk_ms: 40, max_chunk_ms: 120, speed }, ..SimConfig::default() }
    }

    fn open(cfg: SimConfig, now: Instant) -> SimSession {
        let (sim, opening) = SimSession::new(cfg, "gpt-realtime-2.1", now, 1_700_000_000, 7);
        assert_eq!(types(&opening), ["session.created", "conversation.created"]);
        sim
    }

    fn types(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outgoing::Event(e) => e.event_type().to_owned(),
                Outgoing::Raw(v) => v["type"].as_str().unwrap_or_default().to_owned(),
                Outgoing::Close { code, .. } => format!("close {code}"),
            })
            .collect()
    }

    fn events(out: &[Outgoing]) -> Vec<&ServerEvent> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Event(e) => Some(e),
                Outgoing::Raw(_) | Outgoing::Close { .. } => None,
            })
            .collect()
    }

    fn error_of(out: &[Outgoing]) -> ErrorDetail {
        match events(out).as_slice() {
            [ServerEvent::Error(e)] => e.error.clone(),
            other => panic!("expected one error, got {other:?}"),
        }
    }

    fn send(sim: &mut SimSession, now: Instant, value: Value) -> Vec<Outgoing> {
        sim.handle_text(now, &value.to_string())
    }

    fn configure_pcmu(sim: &mut SimSession, now: Instant) {
        let out = send(
            sim,
            now,
            json!({"type":"session.update","event_id":"cfg","session":{"type":"realtime",
                "audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}),
        );
        assert_eq!(types(&out), ["session.updated"]);
    }

    /// Appends audio in 20 ms pieces, collecting everything the session answers.
    fn append_pcmu(sim: &mut SimSession, now: Instant, samples: &[i16]) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for frame in samples.chunks(160) {
            let bytes = audio::encode(AudioFormat::Pcmu, frame);
            out.extend(send(sim, now, json!({"type":"input_audio_buffer.append","audio":BASE64.encode(bytes)})));
        }
        out
    }

    fn turn() -> Vec<i16> {
        let mut samples = vec![0i16; 8000];
        samples.extend(audio::sine(440.0, 8000, 1000, 0.5));
        samples.extend(vec![0i16; 8000]);
        samples
    }

    #[test]
    fn session_created_carries_the_defaults() {
        let (_, opening) = SimSession::new(SimConfig::default(), "gpt-realtime", Instant::now(), 100, 1);
        let Outgoing::Event(ServerEvent::SessionCreated(created)) = &opening[0] else {
            panic!("first event must be session.created")
        };
        let s = &created.session;
        assert!(s.id.as_deref().is_some_and(|id| id.starts_with("sess_")));
        assert_eq!(s.expires_at, Some(100 + 3600));
        assert_eq!(s.object.as_deref(), Some("realtime.session"));
        let audio = s.audio.as_ref().unwrap();
        let input = audio.input.as_ref().unwrap();
        assert_eq!(input.format, Some(AudioFormat::PCM24K));
        assert!(matches!(input.turn_detection, Some(Some(TurnDetection::ServerVad { .. }))));
        assert_eq!(audio.output.as_ref().unwrap().format, Some(AudioFormat::PCM24K));
    }

    #[test]
    fn session_update_applies_and_echoes_the_full_session() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let out = send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime","instructions":"Be brief.",
                "audio":{"output":{"voice":"cedar"}}}}),
        );
        let [ServerEvent::SessionUpdated(updated)] = events(&out).as_slice() else { panic!("{out:?}") };
        assert_eq!(updated.session.instructions.as_deref(), Some("Be brief."));
        let output = updated.session.audio.as_ref().unwrap().output.as_ref().unwrap();
        assert_eq!(output.voice, Some(Voice::Named("cedar".into())));
        // Untouched fields keep their values.
        assert_eq!(output.format, Some(AudioFormat::PCM24K));
        assert_eq!(updated.session.model.as_deref(), Some("gpt-realtime-2.1"));
    }

    #[test]
    fn session_update_validation_errors() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let cases = [
            (
                json!({"type":"session.update","event_id":"a","session":{"instructions":"x"}}),
                "missing_required_parameter",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime","temperature":0.8}}),
                "unknown_parameter",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime","id":"sess_x"}}),
                "unknown_parameter",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime",
                    "audio":{"output":{"voice":"nova"}}}}),
                "invalid_value",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime",
                    "audio":{"input":{"format":{"type":"audio/pcm","rate":16000}}}}}),
                "invalid_value",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime",
                    "output_modalities":["audio","text"]}}),
                "invalid_value",
            ),
            (
                json!({"type":"session.update","event_id":"a","session":{"type":"realtime",
                    "model":"gpt-other"}}),
                "invalid_value",
            ),
        ];
        for (event, code) in cases {
            let error = error_of(&send(&mut sim, now, event.clone()));
            assert_eq!(error.code.as_deref(), Some(code), "{event}");
            assert_eq!(error.event_id.as_deref(), Some("a"));
            assert_eq!(error.kind, "invalid_request_error");
        }
    }

    #[test]
    fn unknown_types_and_fields_are_errors_and_the_session_stays_open() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let error = error_of(&send(&mut sim, now, json!({"type":"response.explode","event_id":"e1"})));
        assert_eq!(error.code.as_deref(), Some("invalid_event"));
        assert_eq!(error.event_id.as_deref(), Some("e1"));
        assert_eq!(error.param.as_deref(), Some("type"));
        let error =
            error_of(&send(&mut sim, now, json!({"type":"input_audio_buffer.clear","event_id":"e2","bogus":true})));
        assert_eq!(error.code.as_deref(), Some("unknown_parameter"));
        assert_eq!(error.param.as_deref(), Some("bogus"));
        let error = error_of(&send(&mut sim, now, json!({"event_id":"e3"})));
        assert_eq!(error.message, "The 'type' field is missing.");
        let error = error_of(&sim.handle_text(now, "{nope"));
        assert_eq!(error.code.as_deref(), Some("invalid_event"));
        assert!(!sim.is_closed());
        assert_eq!(
            types(&send(&mut sim, now, json!({"type":"input_audio_buffer.clear"}))),
            ["input_audio_buffer.cleared"]
        );
    }

    #[test]
    fn a_vad_turn_follows_the_reference_event_order() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        configure_pcmu(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        let order: Vec<String> = types(&out).into_iter().filter(|t| !t.ends_with(".delta")).collect();
        assert_eq!(
            order,
            [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.done",
                "response.created",
                "rate_limits.updated",
                "response.output_item.added",
                "conversation.item.added",
                "response.content_part.added",
                "response.output_audio.done",
                "response.output_audio_transcript.done",
                "response.content_part.done",
                "response.output_item.done",
                "conversation.item.done",
                "response.done",
            ]
        );
        let all = events(&out);
        let ServerEvent::SpeechStarted(started) = all[0] else { panic!() };
        // Tone starts at 1000 ms; prefix padding 300 ms.
        assert_eq!(started.audio_start_ms, 700);
        let ServerEvent::SpeechStopped(stopped) = all[1] else { panic!() };
        assert_eq!(stopped.audio_end_ms, 2000);
        assert_eq!(stopped.item_id, started.item_id);

        // Echo: the reply is the caller's utterance (prefix padding included), byte for byte.
        let echoed: Vec<u8> = all
            .iter()
            .filter_map(|e| match e {
                ServerEvent::OutputAudioDelta(d) => Some(d.delta.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let sent = audio::encode(AudioFormat::Pcmu, &turn());
        assert_eq!(echoed.len(), 1300 * 8);
        assert_eq!(&echoed[..], &sent[700 * 8..2000 * 8]);

        let Some(ServerEvent::ResponseDone(done)) = all.last() else { panic!() };
        assert_eq!(done.response.status, ResponseStatus::Completed);
        assert!(done.response.usage.as_ref().is_some_and(|u| u.total_tokens > 0));
        assert_eq!(done.response.output.len(), 1);
    }

    #[test]
    fn pcmu_in_pcm24k_out_is_upsampled() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime",
                "audio":{"input":{"format":{"type":"audio/pcmu"}}}}}),
        );
        let out = append_pcmu(&mut sim, now, &turn());
        let bytes: usize = events(&out)
            .iter()
            .filter_map(|e| match e {
                ServerEvent::OutputAudioDelta(d) => Some(d.delta.len()),
                _ => None,
            })
            .sum();
        assert_eq!(bytes, 1300 * 48);
    }

    #[test]
    fn audio_streams_in_bursts_at_the_configured_speed() {
        let t0 = Instant::now();
        let mut sim = open(cfg(4.0), t0);
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        let chunk_ms = |out: &[Outgoing]| -> Vec<f64> {
            events(out)
                .iter()
                .filter_map(|e| match e {
                    ServerEvent::OutputAudioDelta(d) => Some(AudioFormat::PCM24K.bytes_to_ms(d.delta.len())),
                    _ => None,
                })
                .collect()
        };
        // Only the first chunk is due at once.
        let first = chunk_ms(&out);
        assert_eq!(first.len(), 1);
        let mut chunks = first;
        let mut done_at = None;
        let mut now = t0;
        while done_at.is_none() {
            let next = sim.next_deadline();
            assert!(next >= now, "deadlines move forward");
            now = next;
            let out = sim.poll(now);
            chunks.extend(chunk_ms(&out));
            if types(&out).contains(&"response.done".to_owned()) {
                done_at = Some(now);
            }
        }
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|ms| (40.0..=120.0).contains(ms)), "{chunks:?}");
        assert!(*last <= 120.0);
        assert_eq!(chunks.iter().sum::<f64>(), 1000.0);
        // 1000 ms greeting at 4x: the last chunk leaves within 250 ms of virtual time.
        let elapsed = done_at.unwrap().duration_since(t0);
        assert!(elapsed < Duration::from_millis(250), "{elapsed:?}");
        assert!(elapsed >= Duration::from_millis(220), "{elapsed:?}");
    }

    #[test]
    fn second_response_create_is_rejected_while_one_is_active() {
        let now = Instant::now();
        let mut sim = open(cfg(1.0), now);
        send(&mut sim, now, json!({"type":"response.create"}));
        let error = error_of(&send(&mut sim, now, json!({"type":"response.create","event_id":"again"})));
        assert_eq!(error.code.as_deref(), Some("conversation_already_has_active_response"));
        assert_eq!(error.event_id.as_deref(), Some("again"));
    }

    #[test]
    fn cancel_ends_the_active_response_or_errors_when_idle() {
        let now = Instant::now();
        let mut sim = open(cfg(1.0), now);
        let error = error_of(&send(&mut sim, now, json!({"type":"response.cancel"})));
        assert_eq!(error.code.as_deref(), Some("response_cancel_not_active"));

        send(&mut sim, now, json!({"type":"response.create"}));
        let out = send(&mut sim, now, json!({"type":"response.cancel"}));
        let Some(ServerEvent::ResponseDone(done)) = events(&out).last().copied() else { panic!("{out:?}") };
        assert_eq!(done.response.status, ResponseStatus::Cancelled);
        assert_eq!(done.response.status_details.as_ref().unwrap().reason.as_deref(), Some("client_cancelled"));
        assert!(types(&out).contains(&"response.output_audio.done".to_owned()));
        assert!(types(&out).contains(&"response.output_item.done".to_owned()));
        // Nothing more streams.
        assert!(sim.poll(now + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn barge_in_cancels_with_turn_detected() {
        let now = Instant::now();
        let cfg = SimConfig { behaviour: Behaviour::Monologue { ms: 20_000 }, ..cfg(1.0) };
        let mut sim = open(cfg, now);
        configure_pcmu(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        assert!(types(&out).contains(&"response.created".to_owned()));
        let out = append_pcmu(&mut sim, now, &audio::sine(300.0, 8000, 100, 0.5));
        let t = types(&out);
        assert_eq!(t[0], "input_audio_buffer.speech_started");
        let Some(ServerEvent::ResponseDone(done)) = events(&out).last().copied() else { panic!("{t:?}") };
        assert_eq!(done.response.status, ResponseStatus::Cancelled);
        assert_eq!(done.response.status_details.as_ref().unwrap().reason.as_deref(), Some("turn_detected"));
    }

    #[test]
    fn truncate_checks_the_item_and_its_audio_length() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let out = send(&mut sim, now, json!({"type":"response.create"}));
        let item_id = events(&out)
            .iter()
            .find_map(|e| match e {
                ServerEvent::OutputItemDone(d) => d.item.id().map(str::to_owned),
                _ => None,
            })
            .unwrap();
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.truncate","event_id":"t1","item_id":item_id,
                "content_index":0,"audio_end_ms":1001}),
        ));
        assert_eq!(error.param.as_deref(), Some("audio_end_ms"));
        assert_eq!(error.event_id.as_deref(), Some("t1"));
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.truncate","item_id":"item_missing",
                "content_index":0,"audio_end_ms":10}),
        ));
        assert_eq!(error.param.as_deref(), Some("item_id"));
        let out = send(
            &mut sim,
            now,
            json!({"type":"conversation.item.truncate","item_id":item_id,
                "content_index":0,"audio_end_ms":400}),
        );
        let [ServerEvent::ConversationItemTruncated(t)] = events(&out).as_slice() else { panic!("{out:?}") };
        assert_eq!(t.audio_end_ms, 400);
        // The item is now 400 ms long.
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.truncate","item_id":item_id,
                "content_index":0,"audio_end_ms":500}),
        ));
        assert_eq!(error.param.as_deref(), Some("audio_end_ms"));
    }

    #[test]
    fn user_items_cannot_be_truncated() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let out = send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","item":{"type":"message","role":"user",
                "content":[{"type":"input_text","text":"hi"}]}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let [ServerEvent::ConversationItemAdded(added), _] = events(&out).as_slice() else { panic!() };
        let id = added.item.id().unwrap().to_owned();
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.truncate","item_id":id,"content_index":0,"audio_end_ms":0}),
        ));
        assert_eq!(error.param.as_deref(), Some("item_id"));
    }

    #[test]
    fn item_create_retrieve_delete() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","event_id":"o1","item":{"type":"function_call_output",
                "call_id":"call_1","output":"{}"}}),
        ));
        assert_eq!((error.param.as_deref(), error.event_id.as_deref()), (Some("item.call_id"), Some("o1")));
        assert!(error.message.contains("call_1"), "{}", error.message);
        let out = send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","item":{"type":"function_call","name":"lookup",
                "arguments":"{}","call_id":"call_1"}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let out = send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","item":{"id":"fn_out_1",
                "type":"function_call_output","call_id":"call_1","output":"{}"}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let out = send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","previous_item_id":"root",
                "item":{"id":"sys_1","type":"message","role":"system",
                "content":[{"type":"input_text","text":"caller pressed 5"}]}}),
        );
        let [ServerEvent::ConversationItemAdded(added), _] = events(&out).as_slice() else { panic!() };
        assert_eq!(added.previous_item_id, None);
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","previous_item_id":"nope",
                "item":{"type":"message","role":"user","content":[]}}),
        ));
        assert_eq!(error.param.as_deref(), Some("previous_item_id"));
        assert_eq!(
            types(&send(&mut sim, now, json!({"type":"conversation.item.retrieve","item_id":"fn_out_1"}))),
            ["conversation.item.retrieved"]
        );
        assert_eq!(
            types(&send(&mut sim, now, json!({"type":"conversation.item.delete","item_id":"fn_out_1"}))),
            ["conversation.item.deleted"]
        );
        assert_eq!(
            error_of(&send(&mut sim, now, json!({"type":"conversation.item.delete","item_id":"fn_out_1"})))
                .param
                .as_deref(),
            Some("item_id")
        );
    }

    #[test]
    fn manual_commit_and_clear() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let out = send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime",
                "audio":{"input":{"format":{"type":"audio/pcmu"},"turn_detection":null}}}}),
        );
        let [ServerEvent::SessionUpdated(updated)] = events(&out).as_slice() else { panic!() };
        assert_eq!(updated.session.audio.as_ref().unwrap().input.as_ref().unwrap().turn_detection, Some(None));
        let error = error_of(&send(&mut sim, now, json!({"type":"input_audio_buffer.commit"})));
        assert_eq!(error.code.as_deref(), Some("input_audio_buffer_commit_empty"));
        // Without turn detection, speech produces no VAD events.
        let out = append_pcmu(&mut sim, now, &turn());
        assert!(out.is_empty(), "{:?}", types(&out));
        let out = send(&mut sim, now, json!({"type":"input_audio_buffer.commit"}));
        assert_eq!(types(&out), ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]);
        append_pcmu(&mut sim, now, &[0; 1600]);
        assert_eq!(
            types(&send(&mut sim, now, json!({"type":"input_audio_buffer.clear"}))),
            ["input_audio_buffer.cleared"]
        );
        let error = error_of(&send(&mut sim, now, json!({"type":"input_audio_buffer.commit"})));
        assert_eq!(error.code.as_deref(), Some("input_audio_buffer_commit_empty"));
    }

    #[test]
    fn text_only_sessions_answer_in_text() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime","output_modalities":["text"]}}),
        );
        let out = send(&mut sim, now, json!({"type":"response.create"}));
        let t = types(&out);
        assert!(t.contains(&"response.output_text.delta".to_owned()));
        assert!(t.contains(&"response.output_text.done".to_owned()));
        assert!(!t.contains(&"response.output_audio.delta".to_owned()));
    }

    #[test]
    fn session_expires_with_error_then_close_1001() {
        let t0 = Instant::now();
        let cfg = SimConfig { max_session: Duration::from_secs(60), ..cfg(0.0) };
        let mut sim = open(cfg, t0);
        assert_eq!(sim.next_deadline(), t0 + Duration::from_secs(60));
        assert!(sim.poll(t0 + Duration::from_secs(59)).is_empty());
        let out = sim.poll(t0 + Duration::from_secs(60));
        assert_eq!(types(&out), ["error", "close 1001"]);
        assert_eq!(error_of(&out[..1]).code.as_deref(), Some("session_expired"));
        assert_eq!(error_of(&out[..1]).message, SESSION_EXPIRED_MESSAGE);
        assert!(sim.is_closed());
        assert!(send(&mut sim, t0, json!({"type":"response.create"})).is_empty());
    }

    #[test]
    fn beta_rejection_is_error_then_close_4000() {
        let out = SimSession::beta_rejection();
        assert_eq!(types(&out), ["error", "close 4000"]);
        assert_eq!(error_of(&out[..1]).code.as_deref(), Some("beta_api_shape_disabled"));
    }

    #[test]
    fn idle_timeout_commits_silence_and_prompts_the_caller() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{
                "format":{"type":"audio/pcmu"},
                "transcription":{"model":"gpt-4o-mini-transcribe"},
                "turn_detection":{"type":"server_vad","idle_timeout_ms":5000}}}}}),
        );
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        assert!(types(&out).contains(&"response.done".to_owned()));
        // The 1000 ms greeting plays until t0+1s; the idle clock fires 5 s later.
        assert_eq!(sim.next_deadline(), t0 + Duration::from_secs(6));
        append_pcmu(&mut sim, t0, &[0; 8000 * 6]);
        assert!(sim.poll(t0 + Duration::from_millis(5999)).is_empty());
        let out = sim.poll(t0 + Duration::from_secs(6));
        let t = types(&out);
        assert_eq!(
            &t[..6],
            [
                "input_audio_buffer.timeout_triggered",
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.done",
                "conversation.item.input_audio_transcription.completed",
                "response.created",
            ]
        );
        let ServerEvent::InputAudioBufferTimeoutTriggered(timeout) = events(&out)[0] else { panic!() };
        assert_eq!((timeout.audio_start_ms, timeout.audio_end_ms), (1000, 6000));
    }

    #[test]
    fn speech_disarms_the_idle_timeout() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{
                "format":{"type":"audio/pcmu"},"turn_detection":{"type":"server_vad","idle_timeout_ms":5000}}}}}),
        );
        send(&mut sim, t0, json!({"type":"response.create"}));
        append_pcmu(&mut sim, t0, &audio::sine(440.0, 8000, 200, 0.5));
        let out = sim.poll(t0 + Duration::from_secs(7));
        assert!(!types(&out).contains(&"input_audio_buffer.timeout_triggered".to_owned()));
    }

    #[test]
    fn fault_refuse_session_update_answers_with_an_error_and_keeps_the_defaults() {
        let now = Instant::now();
        let mut cfg = cfg(4.0);
        cfg.faults.refuse_session_update = true;
        let mut sim = open(cfg, now);
        let out = send(
            &mut sim,
            now,
            json!({"type":"session.update","event_id":"evt_session_config",
            "session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}}}}}),
        );
        let error = error_of(&out);
        assert_eq!(error.code.as_deref(), Some("invalid_value"));
        assert_eq!(error.event_id.as_deref(), Some("evt_session_config"));
        assert_eq!(sim.input_format, AudioFormat::PCM24K);
    }

    #[test]
    fn fault_updated_format_overrides_what_was_asked() {
        let now = Instant::now();
        let mut cfg = cfg(4.0);
        cfg.faults.updated_format = Some(AudioFormat::Pcma);
        let mut sim = open(cfg, now);
        let out = send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime",
            "audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}),
        );
        let [ServerEvent::SessionUpdated(updated)] = events(&out).as_slice() else { panic!("{out:?}") };
        let audio = updated.session.audio.as_ref().unwrap();
        assert_eq!(audio.input.as_ref().unwrap().format, Some(AudioFormat::Pcma));
        assert_eq!(audio.output.as_ref().unwrap().format, Some(AudioFormat::Pcma));
    }

    #[test]
    fn fault_fail_vad_responses_ends_turns_failed_but_client_responses_still_speak() {
        let now = Instant::now();
        let mut cfg = cfg(0.0);
        cfg.faults.fail_vad_responses = true;
        let mut sim = open(cfg, now);
        configure_pcmu(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        let Some(ServerEvent::ResponseDone(done)) =
            events(&out).into_iter().rev().find(|e| matches!(e, ServerEvent::ResponseDone(_)))
        else {
            panic!("{:?}", types(&out))
        };
        assert_eq!(done.response.status, ResponseStatus::Failed);
        let error = done.response.status_details.as_ref().unwrap().error.as_ref().unwrap();
        assert_eq!(error["code"], "server_error");
        assert!(!types(&out).contains(&"response.output_audio.delta".to_owned()), "no audio in a failed response");
        // The client's response.create (the gateway's apology) is answered with audio.
        let out = send(&mut sim, now, json!({"type":"response.create","event_id":"evt_apology"}));
        let out = [out, sim.poll(now + Duration::from_secs(5))].concat();
        assert!(types(&out).contains(&"response.output_audio.delta".to_owned()), "{:?}", types(&out));
    }

    #[test]
    fn same_seed_same_session() {
        let now = Instant::now();
        let run = || {
            let (mut sim, _) = SimSession::new(cfg(0.0), "m", now, 0, 42);
            types(&send(&mut sim, now, json!({"type":"response.create"})))
        };
        assert_eq!(run(), run());
    }

    fn done_of(out: &[Outgoing]) -> Response {
        events(out)
            .into_iter()
            .rev()
            .find_map(|e| match e {
                ServerEvent::ResponseDone(d) => Some(d.response.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no response.done in {:?}", types(out)))
    }

    /// Polls the virtual clock forward until nothing is due for `limit`.
    fn run_until_quiet(sim: &mut SimSession, from: Instant, limit: Duration) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut now = from;
        while sim.next_deadline() <= from + limit && !sim.is_closed() {
            now = now.max(sim.next_deadline());
            let batch = sim.poll(now);
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
        out
    }

    fn wire(event: &ServerEvent) -> Value {
        serde_json::from_str(&event.to_json().unwrap()).unwrap()
    }

    #[test]
    fn expire_control_ends_the_session_now() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let out = sim.expire(now, false);
        assert_eq!(types(&out), ["error", "close 1001"]);
        assert_eq!(error_of(&out[..1]).code.as_deref(), Some("session_expired"));
        assert!(sim.is_closed());
    }

    #[test]
    fn expire_mid_response_waits_for_streaming_audio() {
        let t0 = Instant::now();
        let mut sim = open(cfg(1.0), t0);
        assert!(sim.expire(t0, true).is_empty(), "idle: waits");
        assert!(!sim.is_closed());
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        let t: Vec<String> = types(&out).into_iter().filter(|t| !t.ends_with("transcript.delta")).collect();
        let delta = t.iter().position(|t| t == "response.output_audio.delta").expect("a delta");
        assert_eq!(&t[delta + 1..], ["error", "close 1001"], "expires right after the first audio: {t:?}");
        assert!(sim.is_closed());

        // A response already streaming expires at once.
        let mut sim = open(cfg(1.0), t0);
        send(&mut sim, t0, json!({"type":"response.create"}));
        assert_eq!(types(&sim.expire(t0, true)), ["error", "close 1001"]);
    }

    fn declare_end_call(sim: &mut SimSession, now: Instant) {
        let out = send(
            sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime","tools":[
                {"type":"function","name":"end_call","description":"Hang up.","parameters":{"type":"object","properties":{}}}]}}),
        );
        assert_eq!(types(&out), ["session.updated"]);
    }

    #[test]
    fn call_tool_says_goodbye_then_calls_the_function_in_the_same_response() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        declare_end_call(&mut sim, t0);
        let script =
            ToolCallScript { name: "end_call".into(), arguments: "{\"reason\":\"done\"}".into(), say_ms: 1500 };
        assert!(sim.call_tool(t0, script.clone(), false).is_empty(), "waits for the next response");
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        let t: Vec<String> = types(&out).into_iter().filter(|t| !t.ends_with("transcript.delta")).collect();
        let audio_done = t.iter().position(|t| t == "response.output_audio.done").unwrap();
        assert_eq!(
            &t[audio_done..],
            [
                "response.output_audio.done",
                "response.output_audio_transcript.done",
                "response.content_part.done",
                "response.output_item.done",
                "conversation.item.done",
                "response.output_item.added",
                "conversation.item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "conversation.item.done",
                "response.done",
            ]
        );
        let audio_ms: f64 = events(&out)
            .iter()
            .filter_map(|e| match e {
                ServerEvent::OutputAudioDelta(d) => Some(AudioFormat::PCM24K.bytes_to_ms(d.delta.len())),
                _ => None,
            })
            .sum();
        assert_eq!(audio_ms, 1500.0);
        let args_done = events(&out)
            .into_iter()
            .find_map(|e| match e {
                ServerEvent::FunctionCallArgumentsDone(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(args_done.name.as_deref(), Some("end_call"));
        assert_eq!(args_done.arguments, "{\"reason\":\"done\"}");
        assert_eq!(args_done.output_index, 1);
        let done = done_of(&out);
        assert_eq!(done.status, ResponseStatus::Completed);
        assert_eq!(done.output.len(), 2);
        let Item::FunctionCall(call) = &done.output[1] else { panic!("{:?}", done.output) };
        assert_eq!(call.status, Some(ItemStatus::Completed));
        assert_eq!(call.call_id.as_deref(), Some(args_done.call_id.as_str()));
        // The output for that call is accepted; the script is used up.
        let out = send(
            &mut sim,
            t0,
            json!({"type":"conversation.item.create","item":{"type":"function_call_output",
                "call_id":args_done.call_id,"output":"{}"}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        assert!(!types(&out).contains(&"response.function_call_arguments.done".to_owned()));
    }

    #[test]
    fn call_tool_with_say_ms_0_calls_any_declared_function_at_once_and_a_create_after_its_output_says_a_tone() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        let out = send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","tools":[
                {"type":"function","name":"lookup_order","description":"d","parameters":{"type":"object","properties":{}}}]}}),
        );
        assert_eq!(types(&out), ["session.updated"]);
        let script = ToolCallScript { name: "lookup_order".into(), arguments: "{\"id\":7}".into(), say_ms: 0 };
        let out = sim.call_tool(t0, script, true);
        let t = types(&out);
        assert!(!t.iter().any(|t| t == "response.output_audio.delta"), "no preamble: {t:?}");
        let args_done = events(&out)
            .into_iter()
            .find_map(|e| match e {
                ServerEvent::FunctionCallArgumentsDone(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(args_done.output_index, 0);
        let out = send(
            &mut sim,
            t0,
            json!({"type":"conversation.item.create","item":{"type":"function_call_output",
                "call_id":args_done.call_id,"output":"{\"status\":\"shipped\"}"}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        assert!(types(&out).contains(&"response.output_audio.delta".to_owned()), "the answer is a tone");
    }

    fn declare_mcp(sim: &mut SimSession, now: Instant, approval: Value) -> Vec<Outgoing> {
        send(
            sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime","tools":[
                {"type":"mcp","server_label":"shop","server_url":"https://mcp.example/sse",
                 "allowed_tools":["search","buy"],"require_approval":approval}]}}),
        )
    }

    fn raw_of(out: &[Outgoing], kind: &str) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Raw(v) if v["type"] == kind => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_declared_mcp_server_gets_its_tools_listed_once() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        let out = declare_mcp(&mut sim, t0, json!("never"));
        assert_eq!(
            types(&out),
            [
                "session.updated",
                "mcp_list_tools.in_progress",
                "conversation.item.added",
                "mcp_list_tools.completed",
                "conversation.item.done"
            ]
        );
        let done = raw_of(&out, "conversation.item.done");
        assert_eq!(done[0]["item"]["type"], "mcp_list_tools");
        assert_eq!(done[0]["item"]["server_label"], "shop");
        assert_eq!(done[0]["item"]["tools"][1]["name"], "buy");
        let again = declare_mcp(&mut sim, t0, json!("never"));
        assert_eq!(types(&again), ["session.updated"], "listed once per server");
    }

    #[test]
    fn mcp_call_runs_on_the_next_response_without_approval() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        declare_mcp(&mut sim, t0, json!("never"));
        let script =
            McpCallScript { server: "shop".into(), name: "search".into(), arguments: "{\"q\":\"shoes\"}".into() };
        let out = sim.mcp_call(t0, script, true);
        let t = types(&out);
        let first = t.iter().position(|t| t == "response.output_item.added").unwrap();
        assert_eq!(
            &t[first..first + 6],
            [
                "response.output_item.added",
                "response.mcp_call_arguments.delta",
                "response.mcp_call_arguments.done",
                "response.mcp_call.in_progress",
                "response.mcp_call.completed",
                "response.output_item.done"
            ]
        );
        let item_done = raw_of(&out, "response.output_item.done");
        assert_eq!(item_done[0]["item"]["type"], "mcp_call");
        assert!(item_done[0]["item"]["output"].as_str().unwrap().contains("search"));
        assert!(t.contains(&"response.output_audio.delta".to_owned()), "then the spoken answer");
    }

    #[test]
    fn an_mcp_server_that_requires_approval_waits_for_the_answer() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        declare_mcp(&mut sim, t0, json!({"always":{"tool_names":["buy"]}}));
        let script = McpCallScript { server: "shop".into(), name: "buy".into(), arguments: "{}".into() };
        sim.mcp_call(t0, script, false);
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        let request = raw_of(&out, "response.output_item.done");
        assert_eq!(request[0]["item"]["type"], "mcp_approval_request");
        assert!(raw_of(&out, "response.mcp_call.completed").is_empty(), "not called before the approval");
        assert!(!types(&out).contains(&"response.output_audio.delta".to_owned()));
        let request_id = request[0]["item"]["id"].as_str().unwrap().to_owned();
        // An answer to an unknown request is an error.
        let out = send(
            &mut sim,
            t0,
            json!({"type":"conversation.item.create","item":{"type":"mcp_approval_response","id":"mcpr_x",
                "approval_request_id":"nope","approve":true}}),
        );
        assert_eq!(error_of(&out).param.as_deref(), Some("item.approval_request_id"));
        let out = send(
            &mut sim,
            t0,
            json!({"type":"conversation.item.create","item":{"type":"mcp_approval_response","id":"mcpr_1",
                "approval_request_id":request_id,"approve":true}}),
        );
        assert_eq!(types(&out), ["conversation.item.added", "conversation.item.done"]);
        let out = send(&mut sim, t0, json!({"type":"response.create"}));
        let call = raw_of(&out, "response.output_item.done");
        assert_eq!(call[0]["item"]["type"], "mcp_call");
        assert_eq!(call[0]["item"]["approval_request_id"], request_id.as_str());
        // The request is used up.
        let out = send(
            &mut sim,
            t0,
            json!({"type":"conversation.item.create","item":{"type":"mcp_approval_response","id":"mcpr_2",
                "approval_request_id":request_id,"approve":true}}),
        );
        assert_eq!(error_of(&out).param.as_deref(), Some("item.approval_request_id"));
    }

    #[test]
    fn call_tool_now_starts_a_response_and_undeclared_tools_are_never_called() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        let script = ToolCallScript { name: "end_call".into(), arguments: "{}".into(), say_ms: 300 };
        let out = sim.call_tool(t0, script, true);
        let t = types(&out);
        assert_eq!(t[0], "response.created");
        assert!(t.contains(&"response.output_audio.delta".to_owned()));
        assert!(!t.contains(&"response.function_call_arguments.done".to_owned()), "end_call not declared: {t:?}");
        assert_eq!(done_of(&out).output.len(), 1);
    }

    #[test]
    fn phases_give_two_audio_items_each_with_its_id_phase_and_truncation() {
        let now = Instant::now();
        let mut sim = open(SimConfig { phases: true, ..cfg(0.0) }, now);
        configure_pcmu(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        let added: Vec<Value> =
            events(&out).into_iter().filter(|e| matches!(e, ServerEvent::OutputItemAdded(_))).map(wire).collect();
        assert_eq!(added.len(), 2);
        assert_eq!(added[0]["item"]["phase"], "commentary");
        assert_eq!(added[1]["item"]["phase"], "final_answer");
        assert_eq!(added[0]["output_index"], 0);
        assert_eq!(added[1]["output_index"], 1);
        let ids: Vec<String> = added.iter().map(|a| a["item"]["id"].as_str().unwrap().to_owned()).collect();
        assert_ne!(ids[0], ids[1]);
        // Each item's audio: 400 ms of commentary, then the 1300 ms echo.
        let ms_of = |id: &str| -> f64 {
            events(&out)
                .iter()
                .filter_map(|e| match e {
                    ServerEvent::OutputAudioDelta(d) if d.item_id == id => Some(d.delta.len() as f64 / 8.0),
                    _ => None,
                })
                .sum()
        };
        assert_eq!(ms_of(&ids[0]), 400.0);
        assert_eq!(ms_of(&ids[1]), 1300.0);
        let done = done_of(&out);
        let phases: Vec<Value> =
            done.output.iter().map(|i| serde_json::to_value(i).unwrap()["phase"].clone()).collect();
        assert_eq!(phases, [json!("commentary"), json!("final_answer")]);
        // Each item truncates at its own length.
        for (id, len) in [(&ids[0], 400), (&ids[1], 1300)] {
            let error = error_of(&send(
                &mut sim,
                now,
                json!({"type":"conversation.item.truncate","item_id":id,"content_index":0,"audio_end_ms":len + 1}),
            ));
            assert_eq!(error.param.as_deref(), Some("audio_end_ms"));
            let out = send(
                &mut sim,
                now,
                json!({"type":"conversation.item.truncate","item_id":id,"content_index":0,"audio_end_ms":len - 100}),
            );
            assert_eq!(types(&out), ["conversation.item.truncated"]);
        }
    }

    #[test]
    fn late_deltas_follow_speech_started_before_response_done() {
        let now = Instant::now();
        let cfg = SimConfig { behaviour: Behaviour::Monologue { ms: 20_000 }, late_deltas: 3, ..cfg(1.0) };
        let mut sim = open(cfg, now);
        configure_pcmu(&mut sim, now);
        append_pcmu(&mut sim, now, &turn());
        let out = append_pcmu(&mut sim, now, &audio::sine(300.0, 8000, 100, 0.5));
        let t: Vec<String> = types(&out).into_iter().filter(|t| !t.ends_with("transcript.delta")).collect();
        assert_eq!(
            &t[..5],
            [
                "input_audio_buffer.speech_started",
                "response.output_audio.delta",
                "response.output_audio.delta",
                "response.output_audio.delta",
                "response.output_audio.done",
            ]
        );
        assert_eq!(done_of(&out).status, ResponseStatus::Cancelled);
    }

    #[test]
    fn fail_reason_names_the_error_of_failed_responses() {
        for (reason, kind, code) in [
            (FailReason::ServerError, "server_error", "server_error"),
            (FailReason::RateLimitExceeded, "requests", "rate_limit_exceeded"),
            (FailReason::InsufficientQuota, "insufficient_quota", "insufficient_quota"),
        ] {
            let now = Instant::now();
            let mut cfg = cfg(0.0);
            cfg.faults.fail_vad_responses = true;
            cfg.faults.fail_reason = reason;
            let mut sim = open(cfg, now);
            configure_pcmu(&mut sim, now);
            let out = append_pcmu(&mut sim, now, &turn());
            let done = done_of(&out);
            assert_eq!(done.status, ResponseStatus::Failed);
            assert!(done.output.is_empty());
            let error = done.status_details.unwrap().error.unwrap();
            assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some(kind), Some(code)));
        }
    }

    #[test]
    fn max_session_in_milliseconds_sets_expires_at_and_the_expiry() {
        let t0 = Instant::now();
        let cfg = SimConfig { max_session: Duration::from_millis(2500), ..cfg(0.0) };
        let (mut sim, opening) = SimSession::new(cfg, "m", t0, 1_000, 1);
        let Outgoing::Event(ServerEvent::SessionCreated(created)) = &opening[0] else { panic!() };
        // Rounded down: a client planning a rollover from it is never late.
        assert_eq!(created.session.expires_at, Some(1_002));
        assert!(sim.poll(t0 + Duration::from_millis(2499)).is_empty());
        let out = run_until_quiet(&mut sim, t0, Duration::from_secs(3));
        assert_eq!(types(&out), ["error", "close 1001"]);
    }

    #[test]
    fn session_limits_on_changes_are_enforced() {
        let t0 = Instant::now();
        let mut sim = open(cfg(1.0), t0);
        let voice = |v: &str| json!({"type":"session.update","event_id":"v","session":{"type":"realtime","audio":{"output":{"voice":v}}}});
        // Before any audio the voice may change.
        assert_eq!(types(&send(&mut sim, t0, voice("cedar"))), ["session.updated"]);
        send(&mut sim, t0, json!({"type":"response.create"}));
        // While the response streams: no voice change (audio exists), no speed change.
        let error = error_of(&send(&mut sim, t0, voice("marin")));
        assert_eq!(
            (error.param.as_deref(), error.event_id.as_deref()),
            (Some("session.audio.output.voice"), Some("v"))
        );
        assert_eq!(types(&send(&mut sim, t0, voice("cedar"))), ["session.updated"], "the same voice is no change");
        let error = error_of(&send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","audio":{"output":{"speed":1.2}}}}),
        ));
        assert_eq!(error.param.as_deref(), Some("session.audio.output.speed"));
        run_until_quiet(&mut sim, t0, Duration::from_secs(5));
        let out = send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","audio":{"output":{"speed":1.2}}}}),
        );
        assert_eq!(types(&out), ["session.updated"], "between turns the speed may change");
        // Tracing, once on, is frozen.
        send(&mut sim, t0, json!({"type":"session.update","session":{"type":"realtime","tracing":"auto"}}));
        let error = error_of(&send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","tracing":{"workflow_name":"x"}}}),
        ));
        assert_eq!(error.param.as_deref(), Some("session.tracing"));
    }

    #[test]
    fn nested_errors_name_their_path_and_echo_the_event_id() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"session.update","event_id":"n1","session":{"type":"realtime",
                "audio":{"input":{"turn_detection":{"type":"server_vad","idle_timeout_ms":2000}}}}}),
        ));
        assert_eq!(error.kind, "invalid_request_error");
        assert_eq!(error.code.as_deref(), Some("integer_below_min_value"));
        assert_eq!(error.param.as_deref(), Some("session.audio.input.turn_detection.idle_timeout_ms"));
        assert_eq!(error.event_id.as_deref(), Some("n1"));
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"conversation.item.create","event_id":"n2","item":{"type":"message","role":"assistant",
                "content":[{"type":"input_text","text":"I said hello."}]}}),
        ));
        assert_eq!(error.param.as_deref(), Some("item.content[0].type"));
        assert_eq!(error.event_id.as_deref(), Some("n2"));
        // Odd PCM16 bytes are not audio.
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"input_audio_buffer.append","event_id":"n3","audio":BASE64.encode([0u8; 3])}),
        ));
        assert_eq!((error.param.as_deref(), error.event_id.as_deref()), (Some("audio"), Some("n3")));
        assert!(!sim.is_closed());
    }

    fn enable_transcription(sim: &mut SimSession, now: Instant) {
        let out = send(
            sim,
            now,
            json!({"type":"session.update","session":{"type":"realtime","audio":{
                "input":{"format":{"type":"audio/pcmu"},"transcription":{"model":"gpt-4o-mini-transcribe"}},
                "output":{"format":{"type":"audio/pcmu"}}}}}),
        );
        assert_eq!(types(&out), ["session.updated"]);
    }

    fn transcripts(out: &[Outgoing]) -> Vec<(String, String)> {
        events(out)
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::InputAudioTranscriptionCompleted(c) => Some((c.item_id.clone(), c.transcript.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn input_transcription_streams_deltas_then_completed_per_utterance() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        // Off by default: no transcription events.
        configure_pcmu(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        assert!(transcripts(&out).is_empty());
        enable_transcription(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        let t = types(&out);
        let done = t.iter().position(|t| t == "conversation.item.done").unwrap();
        assert_eq!(t[done + 1], "conversation.item.input_audio_transcription.delta");
        let completed = transcripts(&out);
        assert_eq!(completed.len(), 1);
        assert_eq!(completed[0].1, "caller utterance 1 (1300 ms)");
        let deltas: String = events(&out)
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::InputAudioTranscriptionDelta(d) => d.delta.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, completed[0].1, "the deltas add up to the transcript");
        let out = append_pcmu(&mut sim, now, &turn());
        assert_eq!(transcripts(&out)[0].1, "caller utterance 2 (1300 ms)");
        // The stored user item carries its transcript.
        let out = send(&mut sim, now, json!({"type":"conversation.item.retrieve","item_id":completed[0].0}));
        let [ServerEvent::ConversationItemRetrieved(r)] = events(&out).as_slice() else { panic!("{out:?}") };
        let Item::Message(m) = &r.item else { panic!() };
        assert_eq!(
            m.content,
            [ContentPart::InputAudio { audio: None, transcript: Some("caller utterance 1 (1300 ms)".into()) }]
        );
    }

    #[test]
    fn delayed_transcription_arrives_after_response_done() {
        let t0 = Instant::now();
        let cfg = SimConfig { transcription_delay: Duration::from_millis(800), ..cfg(0.0) };
        let mut sim = open(cfg, t0);
        enable_transcription(&mut sim, t0);
        let out = append_pcmu(&mut sim, t0, &turn());
        assert!(types(&out).contains(&"response.done".to_owned()));
        assert!(transcripts(&out).is_empty());
        assert_eq!(sim.next_deadline(), t0 + Duration::from_millis(800));
        assert!(sim.poll(t0 + Duration::from_millis(799)).is_empty());
        let out = sim.poll(t0 + Duration::from_millis(800));
        assert_eq!(transcripts(&out)[0].1, "caller utterance 1 (1300 ms)");
    }

    /// `?intent=transcription` (§1.1): a transcription session, configured with `session.type:
    /// "transcription"` and manual commits; each commit is transcribed with the scripted text,
    /// no response is ever created, and the type cannot be changed.
    #[test]
    fn a_transcription_session_transcribes_commits_and_never_responds() {
        let now = Instant::now();
        let (mut sim, opening) = SimSession::new_transcription(cfg(0.0), now, 1_700_000_000, 7);
        match events(&opening).first() {
            Some(ServerEvent::SessionCreated(created)) => {
                assert_eq!(created.session.session_type, "transcription");
                assert_eq!(created.session.model, None);
            }
            other => panic!("{other:?}"),
        }
        let realtime = send(&mut sim, now, json!({"type":"session.update","session":{"type":"realtime"}}));
        assert_eq!(error_of(&realtime).param.as_deref(), Some("session.type"));
        let output = send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"transcription","audio":{"output":{"voice":"marin"}}}}),
        );
        assert_eq!(error_of(&output).code.as_deref(), Some("unknown_parameter"));
        let out = send(
            &mut sim,
            now,
            json!({"type":"session.update","session":{"type":"transcription","audio":{"input":{
                "format":{"type":"audio/pcmu"},"transcription":{"model":"gpt-4o-mini-transcribe"},
                "turn_detection":null}}}}),
        );
        assert_eq!(types(&out), ["session.updated"]);
        let out = append_pcmu(&mut sim, now, &turn());
        assert!(types(&out).is_empty(), "no VAD, no response: {:?}", types(&out));
        let out = send(&mut sim, now, json!({"type":"input_audio_buffer.commit"}));
        assert!(!types(&out).iter().any(|t| t.starts_with("response.")), "{:?}", types(&out));
        let said = transcripts(&out);
        assert_eq!(said.len(), 1);
        assert!(said[0].1.starts_with("transcribed audio 1 of "), "{}", said[0].1);
    }

    #[test]
    fn transcription_fails_with_the_failed_event_not_an_error() {
        let now = Instant::now();
        let mut sim = open(SimConfig { transcription_fails: true, ..cfg(0.0) }, now);
        enable_transcription(&mut sim, now);
        let out = append_pcmu(&mut sim, now, &turn());
        let failed: Vec<&TranscriptionFailedEvent> = events(&out)
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::InputAudioTranscriptionFailed(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.kind, "transcription_error");
        assert!(!types(&out).contains(&"error".to_owned()));
        assert!(transcripts(&out).is_empty());
    }

    #[test]
    fn a_text_item_then_response_create_gets_the_key_tone() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        configure_pcmu(&mut sim, now);
        for (text, hz, said) in [
            ("The caller pressed 5.", 1000.0, "You pressed 5."),
            ("The caller pressed #.", 1600.0, "You pressed #."),
            ("Hello there.", 440.0, "I got your message."),
        ] {
            send(
                &mut sim,
                now,
                json!({"type":"conversation.item.create","item":{"type":"message","role":"user",
                    "content":[{"type":"input_text","text":text}]}}),
            );
            let out = send(&mut sim, now, json!({"type":"response.create"}));
            let audio: Vec<u8> = events(&out)
                .iter()
                .filter_map(|e| match e {
                    ServerEvent::OutputAudioDelta(d) => Some(d.delta.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(audio, audio::encode(AudioFormat::Pcmu, &audio::sine(hz, 8000, 600, 0.5)), "{text}");
            let transcript = events(&out)
                .into_iter()
                .find_map(|e| match e {
                    ServerEvent::OutputAudioTranscriptDone(d) => Some(d.transcript.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(transcript, said);
        }
        // Without a text item last, response.create is the greeting again.
        let out = send(&mut sim, now, json!({"type":"response.create"}));
        let bytes: usize = events(&out)
            .iter()
            .filter_map(|e| match e {
                ServerEvent::OutputAudioDelta(d) => Some(d.delta.len()),
                _ => None,
            })
            .sum();
        assert_eq!(bytes, 8000, "the 1000 ms greeting");
    }

    #[test]
    fn usage_follows_the_documented_formula_and_caches_later_turns() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let instructions = "Be brief.";
        send(&mut sim, now, json!({"type":"session.update","session":{"type":"realtime","instructions":instructions}}));
        let first = done_of(&send(&mut sim, now, json!({"type":"response.create"}))).usage.unwrap();
        let greeting_text = script::text_tokens("Hello! Thanks for calling. How can I help you today?");
        let input_text = script::PREAMBLE_TOKENS + script::text_tokens(instructions);
        assert_eq!(first.input_tokens, input_text);
        assert_eq!(first.output_tokens, greeting_text + 20, "1000 ms of audio is 20 tokens");
        assert_eq!(first.total_tokens, first.input_tokens + first.output_tokens);
        assert_eq!(first.input_token_details.as_ref().unwrap()["cached_tokens"], 0);
        let second = done_of(&send(&mut sim, now, json!({"type":"response.create"}))).usage.unwrap();
        // The greeting item is now context: 20 audio tokens.
        assert_eq!(second.input_tokens, input_text + 20);
        let details = second.input_token_details.unwrap();
        assert_eq!(details["audio_tokens"], 20);
        assert_eq!(details["cached_tokens"], first.input_tokens / 64 * 64);
        assert!(details["cached_tokens"].as_u64().unwrap() > 0);
        // Same inputs, same numbers.
        let again = || {
            let mut sim = open(cfg(0.0), now);
            send(&mut sim, now, json!({"type":"response.create"}));
            done_of(&send(&mut sim, now, json!({"type":"response.create"}))).usage
        };
        assert_eq!(again(), again());
    }

    #[test]
    fn a_function_call_output_in_response_input_needs_its_call_there() {
        let now = Instant::now();
        let mut sim = open(cfg(0.0), now);
        let error = error_of(&send(
            &mut sim,
            now,
            json!({"type":"response.create","event_id":"r1","response":{"input":[
                {"type":"function_call_output","call_id":"call_9","output":"{}"}]}}),
        ));
        assert_eq!(error.param.as_deref(), Some("response.input[0].call_id"));
        assert_eq!(error.event_id.as_deref(), Some("r1"));
        let out = send(
            &mut sim,
            now,
            json!({"type":"response.create","response":{"input":[
                {"type":"function_call","name":"f","arguments":"{}","call_id":"call_9"},
                {"type":"function_call_output","call_id":"call_9","output":"{}"}]}}),
        );
        assert_eq!(types(&out)[0], "response.created");
    }

    #[test]
    fn the_idle_prompt_repeats_while_the_caller_stays_silent() {
        let t0 = Instant::now();
        let mut sim = open(cfg(0.0), t0);
        send(
            &mut sim,
            t0,
            json!({"type":"session.update","session":{"type":"realtime","audio":{"input":{
                "format":{"type":"audio/pcmu"},"turn_detection":{"type":"server_vad","idle_timeout_ms":5000}}}}}),
        );
        // No response yet: no idle clock.
        assert!(run_until_quiet(&mut sim, t0, Duration::from_secs(20)).is_empty());
        send(&mut sim, t0, json!({"type":"response.create"}));
        let mut prompts = Vec::new();
        for _ in 0..3 {
            let now = sim.next_deadline();
            let out = sim.poll(now);
            assert!(types(&out).contains(&"input_audio_buffer.timeout_triggered".to_owned()), "{:?}", types(&out));
            let transcript = events(&out)
                .into_iter()
                .find_map(|e| match e {
                    ServerEvent::OutputAudioTranscriptDone(d) => Some(d.transcript.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(transcript, "Are you still there?");
            prompts.push(now.duration_since(t0));
        }
        // Greeting 1 s + 5 s; then each 1 s prompt + 5 s.
        assert_eq!(prompts, [Duration::from_secs(6), Duration::from_secs(12), Duration::from_secs(18)]);
    }
}
