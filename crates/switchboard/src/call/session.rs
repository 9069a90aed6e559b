//! What the gateway tells the Realtime API about a call (the `session.update` for the agent, the
//! greeting's and the apology's `response.create`), and the sans-IO setup of the session: the
//! call is answered only once the API has confirmed the session in the formats asked for.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_media::codec::Codec;
use switchboard_media::framing::ModelAudio;
use switchboard_realtime::client::ConnectError;
use switchboard_realtime::events::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, ClientEvent, ErrorEvent, ResponseConfig, ServerEvent,
    SessionConfig, SessionEvent, StatusDetails, Transcription, TurnDetection, Voice,
};

use super::core::agent_control::end_call_tool;
use super::end::Refusal;
use crate::config::{AgentConfig, BargeInChoice};

/// `event_id` of our `session.update`, echoed in `error.event_id` when the update is refused.
pub const SESSION_UPDATE_EVENT_ID: &str = "evt_session_config";

/// The audio format the model speaks on this call: G.711 straight through, or PCM16 at 24 kHz.
pub fn model_format(model_audio: ModelAudio, codec: Codec) -> AudioFormat {
    match (model_audio, codec) {
        (ModelAudio::G711Passthrough, Codec::Pcma) => AudioFormat::Pcma,
        (ModelAudio::G711Passthrough, _) => AudioFormat::Pcmu,
        (ModelAudio::Pcm24k, _) => AudioFormat::Pcm { rate: 24_000 },
    }
}

/// `session.update` carrying the agent's instructions, voice, model, server VAD and audio format.
pub fn session_update(agent: &AgentConfig, model: &str, format: AudioFormat) -> ClientEvent {
    let turn_detection = TurnDetection::ServerVad {
        threshold: Some(agent.vad_threshold),
        prefix_padding_ms: Some(agent.vad_prefix_padding_ms),
        silence_duration_ms: Some(agent.vad_silence_duration_ms),
        idle_timeout_ms: None,
        // Confirm-mode barge-in decides itself whether the caller's speech interrupts, cancels
        // and asks for the answer (call/core/barge_in.rs); immediate mode leaves that to the API.
        create_response: Some(agent.barge_in == BargeInChoice::Immediate),
        interrupt_response: Some(agent.barge_in == BargeInChoice::Immediate),
    };
    let mut tools: Vec<_> = agent.end_call.then(end_call_tool).into_iter().collect();
    tools.extend(super::transfer::transfer_tool(&agent.transfer));
    tools.extend(super::tools::declared_tools(agent));
    let tools = (!tools.is_empty()).then_some(tools);
    ClientEvent::SessionUpdate {
        event_id: Some(SESSION_UPDATE_EVENT_ID.into()),
        session: Box::new(SessionConfig {
            model: Some(model.to_string()),
            output_modalities: Some(vec!["audio".into()]),
            instructions: Some(agent.instructions.clone()),
            audio: Some(AudioConfig {
                input: Some(AudioInput {
                    format: Some(format),
                    turn_detection: Some(Some(turn_detection)),
                    ..Default::default()
                }),
                output: Some(AudioOutput {
                    format: Some(format),
                    voice: Some(Voice::Named(agent.voice.clone())),
                    ..Default::default()
                }),
            }),
            tool_choice: tools.as_ref().map(|_| Value::String("auto".into())),
            tools,
            ..SessionConfig::realtime()
        }),
    }
}

/// Turns on the caller's input transcription in a `session.update` (`audio.input.transcription`,
/// reference §2.2), so the caller's turns have text to replay after a reconnect
/// (`realtime::history`). An empty model leaves it off.
pub fn with_input_transcription(mut update: ClientEvent, model: &str) -> ClientEvent {
    if model.is_empty() {
        return update;
    }
    if let ClientEvent::SessionUpdate { session, .. } = &mut update
        && let Some(audio) = &mut session.audio
    {
        let input = audio.input.get_or_insert_with(AudioInput::default);
        input.transcription = Some(Some(Transcription { model: Some(model.to_owned()), ..Default::default() }));
    }
    update
}

/// The agent speaks first: one `response.create` asking for the configured greeting verbatim.
pub fn greeting(text: &str) -> ClientEvent {
    ClientEvent::ResponseCreate {
        event_id: Some("evt_greeting".into()),
        response: Some(ResponseConfig {
            instructions: Some(format!("Greet the caller by saying exactly: \"{text}\"")),
            ..Default::default()
        }),
    }
}

/// The agent's apology after a failed response: one `response.create` asking for it verbatim.
pub fn apology(text: &str) -> ClientEvent {
    ClientEvent::ResponseCreate {
        event_id: Some("evt_apology".into()),
        response: Some(ResponseConfig {
            instructions: Some(format!(
                "Something went wrong with your last answer. Apologise to the caller by saying exactly: \"{text}\""
            )),
            ..Default::default()
        }),
    }
}

/// At most one apology per `min_interval`: a model failing every response is not asked again
/// and again (each request would fail and cost as much as the last).
#[derive(Debug, Clone)]
pub struct ApologyLimiter {
    min_interval: Duration,
    last: Option<Instant>,
}

impl ApologyLimiter {
    pub fn new(min_interval: Duration) -> Self {
        Self { min_interval, last: None }
    }

    /// Whether an apology may be said at `now`; if so, it counts as said.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < self.min_interval) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Why a response failed, as a bounded metric label: `status_details.error.code` (or its
/// `type`) when it is one of the known values, `other` when it is not, `unknown` when the
/// server gave no error at all.
pub fn failed_response_reason(details: Option<&StatusDetails>) -> &'static str {
    const KNOWN: &[&str] = &[
        "server_error",
        "rate_limit_exceeded",
        "insufficient_quota",
        "invalid_request_error",
        "content_filter",
        "timeout",
    ];
    let Some(error) = details.and_then(|d| d.error.as_ref()) else {
        return "unknown";
    };
    let field = |name: &str| error.get(name).and_then(Value::as_str);
    let code = field("code").or_else(|| field("type"));
    code.and_then(|code| KNOWN.iter().find(|known| **known == code).copied()).unwrap_or("other")
}

/// Where the session setup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetupStage {
    /// TCP, TLS and the WebSocket upgrade.
    Connecting,
    /// Upgraded; the server's first event must be `session.created` (§1.3).
    AwaitingCreated,
    /// `session.created` seen; waiting for the `session.updated` answering our update.
    AwaitingUpdated,
    /// Confirmed (or refused): nothing more to check.
    Done,
}

impl SetupStage {
    /// What was missing when the deadline passed, for the log and the refusal.
    fn missing(self) -> &'static str {
        match self {
            SetupStage::Connecting => "WebSocket connect",
            SetupStage::AwaitingCreated => "session.created",
            SetupStage::AwaitingUpdated | SetupStage::Done => "session.updated",
        }
    }
}

/// The model audio the media code uses per direction, as confirmed by `session.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmedAudio {
    pub input: ModelAudio,
    pub output: ModelAudio,
}

/// What the shell does after feeding the setup an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Keep reading events (until the deadline).
    Wait,
    /// The session is confirmed: answer the call with these formats.
    Ready(ConfirmedAudio),
    /// Refuse the call (503) with this reason.
    Refuse(Refusal),
}

/// The setup of one call's Realtime session, sans-IO: connect, then `session.created`, then a
/// `session.updated` whose audio formats the media code can produce and play, all before one
/// deadline (`realtime.connect_timeout_ms`). The shell sends `session.update` right after the
/// upgrade (as OpenAI's samples do, saving a round trip); the server answers it after
/// `session.created`, so the order of the two events is still checked.
#[derive(Debug, Clone)]
pub struct SessionSetup {
    codec: Codec,
    requested: AudioFormat,
    deadline: Instant,
    stage: SetupStage,
}

impl SessionSetup {
    /// `requested` is the format our `session.update` asks for both ways; `codec` is the call's.
    pub fn new(codec: Codec, requested: AudioFormat, started: Instant, timeout: Duration) -> Self {
        Self { codec, requested, deadline: started + timeout, stage: SetupStage::Connecting }
    }

    /// When the whole setup must be done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The format asked for.
    pub fn requested(&self) -> AudioFormat {
        self.requested
    }

    /// The WebSocket upgrade succeeded.
    pub fn on_connected(&mut self) {
        self.stage = SetupStage::AwaitingCreated;
    }

    /// The WebSocket could not be opened.
    pub fn on_connect_failed(&mut self, error: &ConnectError) -> Refusal {
        self.stage = SetupStage::Done;
        match error {
            ConnectError::Rejected { status, body } => {
                Refusal::AgentRejectedUpgrade { status: *status, body: body.clone() }
            }
            ConnectError::BadUrl { .. } | ConnectError::Transport(_) => Refusal::AgentUnavailable(error.to_string()),
        }
    }

    /// The connection closed or failed before the session was confirmed.
    pub fn on_closed(&mut self, why: &str) -> Refusal {
        let stage = self.stage;
        self.stage = SetupStage::Done;
        Refusal::AgentSessionRefused(format!("connection ended while waiting for {}: {why}", stage.missing()))
    }

    /// The deadline passed at `now` (the shell calls this once `now >= deadline()`).
    pub fn on_timeout(&mut self, now: Instant) -> Option<Refusal> {
        if now < self.deadline || self.stage == SetupStage::Done {
            return None;
        }
        let missing = self.stage.missing();
        self.stage = SetupStage::Done;
        Some(Refusal::AgentTimeout(missing))
    }

    /// One server event during setup.
    pub fn on_event(&mut self, event: &ServerEvent) -> SetupStep {
        match (self.stage, event) {
            (SetupStage::Done | SetupStage::Connecting, _) => SetupStep::Wait,
            (_, ServerEvent::Error(ErrorEvent { error, .. })) => {
                // Nothing but our session.update has been sent: any error refuses the session
                // (an `error` for the update, or a fatal one such as invalid_api_key before a
                // close). Playing on would leave the session in formats we did not ask for.
                self.stage = SetupStage::Done;
                let code = error.code.as_deref().unwrap_or("no code");
                let about = if error.event_id.as_deref() == Some(SESSION_UPDATE_EVENT_ID) {
                    "session.update refused"
                } else {
                    "error during session setup"
                };
                SetupStep::Refuse(Refusal::AgentSessionRefused(format!("{about}: {code}: {}", error.message)))
            }
            (SetupStage::AwaitingCreated, ServerEvent::SessionCreated(_)) => {
                self.stage = SetupStage::AwaitingUpdated;
                SetupStep::Wait
            }
            (SetupStage::AwaitingCreated, ServerEvent::SessionUpdated(_)) => {
                self.stage = SetupStage::Done;
                SetupStep::Refuse(Refusal::AgentSessionRefused("session.updated before session.created".into()))
            }
            (SetupStage::AwaitingUpdated, ServerEvent::SessionUpdated(SessionEvent { session, .. })) => {
                self.stage = SetupStage::Done;
                match self.confirm(session) {
                    Ok(confirmed) => SetupStep::Ready(confirmed),
                    Err(why) => SetupStep::Refuse(Refusal::AgentFormatMismatch(why)),
                }
            }
            // conversation.created, rate_limits.updated, unknown events: not what we wait for.
            _ => SetupStep::Wait,
        }
    }

    /// Checks the effective formats of `session.updated` against what the media code can do for
    /// this call: the format asked for, or another one it can convert to (24 kHz PCM for any
    /// codec; G.711 only untouched, and only the call's own law).
    fn confirm(&self, session: &SessionConfig) -> Result<ConfirmedAudio, String> {
        let audio = session.audio.as_ref();
        let input = audio.and_then(|a| a.input.as_ref()).and_then(|i| i.format);
        let output = audio.and_then(|a| a.output.as_ref()).and_then(|o| o.format);
        let usable = |direction: &str, format: Option<AudioFormat>| -> Result<ModelAudio, String> {
            let format = format.ok_or_else(|| format!("session.updated carries no {direction} audio format"))?;
            model_audio_of(format, self.codec).ok_or_else(|| {
                format!(
                    "session.updated confirmed {direction} format {format:?} (asked for {:?}), which a {:?} call \
                     cannot use",
                    self.requested, self.codec
                )
            })
        };
        Ok(ConfirmedAudio { input: usable("input", input)?, output: usable("output", output)? })
    }
}

/// The media pipeline mode for a model audio format on a call with `codec`, or `None` when the
/// media code cannot convert between the two.
pub fn model_audio_of(format: AudioFormat, codec: Codec) -> Option<ModelAudio> {
    match (format, codec) {
        (AudioFormat::Pcm { rate: 24_000 }, _) => Some(ModelAudio::Pcm24k),
        (AudioFormat::Pcmu, Codec::Pcmu) | (AudioFormat::Pcma, Codec::Pcma) => Some(ModelAudio::G711Passthrough),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TIMEOUT: Duration = Duration::from_millis(3000);

    fn event(value: serde_json::Value) -> ServerEvent {
        ServerEvent::from_json(&value.to_string()).unwrap()
    }

    fn created() -> ServerEvent {
        event(json!({"type":"session.created","event_id":"e1","session":{"type":"realtime",
            "audio":{"input":{"format":{"type":"audio/pcm","rate":24000}},
                     "output":{"format":{"type":"audio/pcm","rate":24000}}}}}))
    }

    fn updated(input: serde_json::Value, output: serde_json::Value) -> ServerEvent {
        event(json!({"type":"session.updated","event_id":"e3","session":{"type":"realtime",
            "audio":{"input":{"format":input},"output":{"format":output}}}}))
    }

    fn pcmu() -> serde_json::Value {
        json!({"type":"audio/pcmu"})
    }

    fn pcm24k() -> serde_json::Value {
        json!({"type":"audio/pcm","rate":24000})
    }

    fn connected_setup(codec: Codec, requested: AudioFormat, t0: Instant) -> SessionSetup {
        let mut setup = SessionSetup::new(codec, requested, t0, TIMEOUT);
        setup.on_connected();
        setup
    }

    #[test]
    fn ready_only_after_created_then_updated_in_the_requested_format() {
        let t0 = Instant::now();
        let mut setup = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, t0);
        assert_eq!(setup.on_event(&created()), SetupStep::Wait, "created alone is not enough");
        let conversation = event(json!({"type":"conversation.created","event_id":"e2",
            "conversation":{"id":"conv_1","object":"realtime.conversation"}}));
        assert_eq!(setup.on_event(&conversation), SetupStep::Wait);
        let passthrough = ConfirmedAudio { input: ModelAudio::G711Passthrough, output: ModelAudio::G711Passthrough };
        assert_eq!(setup.on_event(&updated(pcmu(), pcmu())), SetupStep::Ready(passthrough));
        assert_eq!(setup.on_timeout(t0 + TIMEOUT), None, "a confirmed setup never times out");
    }

    #[test]
    fn an_error_for_session_update_refuses_the_call() {
        let mut setup = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        setup.on_event(&created());
        let error = event(json!({"type":"error","event_id":"e9","error":{"type":"invalid_request_error",
            "code":"invalid_value","message":"Invalid value: 'audio/g729'.","param":"session.audio.input.format",
            "event_id":SESSION_UPDATE_EVENT_ID}}));
        let SetupStep::Refuse(Refusal::AgentSessionRefused(why)) = setup.on_event(&error) else {
            panic!("an error must refuse the session")
        };
        assert!(why.contains("session.update refused") && why.contains("invalid_value"), "{why}");
        // A session.updated arriving after the refusal changes nothing.
        assert_eq!(setup.on_event(&updated(pcmu(), pcmu())), SetupStep::Wait);
    }

    #[test]
    fn an_error_before_session_created_refuses_too() {
        let mut setup = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        let error = event(json!({"type":"error","event_id":"e1","error":{"type":"invalid_request_error",
            "code":"invalid_api_key","message":"Incorrect API key provided."}}));
        assert!(matches!(setup.on_event(&error), SetupStep::Refuse(Refusal::AgentSessionRefused(_))));
    }

    #[test]
    fn the_deadline_covers_connect_created_and_updated_and_says_what_was_missing() {
        let t0 = Instant::now();
        let mut connecting = SessionSetup::new(Codec::Pcmu, AudioFormat::Pcmu, t0, TIMEOUT);
        assert_eq!(connecting.deadline(), t0 + TIMEOUT);
        assert_eq!(connecting.on_timeout(t0 + TIMEOUT - Duration::from_millis(1)), None);
        assert_eq!(connecting.on_timeout(t0 + TIMEOUT), Some(Refusal::AgentTimeout("WebSocket connect")));

        let mut silent = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, t0);
        assert_eq!(silent.on_timeout(t0 + TIMEOUT), Some(Refusal::AgentTimeout("session.created")));

        let mut no_update = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, t0);
        no_update.on_event(&created());
        assert_eq!(no_update.on_timeout(t0 + TIMEOUT), Some(Refusal::AgentTimeout("session.updated")));
        assert_eq!(no_update.on_timeout(t0 + TIMEOUT), None, "refused once");
    }

    #[test]
    fn other_formats_are_converted_when_the_media_code_can_and_refused_when_not() {
        // Asked for PCMU, the API chose 24 kHz PCM: the G.711 call converts.
        let mut setup = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        setup.on_event(&created());
        let pcm = ConfirmedAudio { input: ModelAudio::Pcm24k, output: ModelAudio::Pcm24k };
        assert_eq!(setup.on_event(&updated(pcm24k(), pcm24k())), SetupStep::Ready(pcm));

        // Input and output are independent: PCMU in, PCM out.
        let mut mixed = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        mixed.on_event(&created());
        let expected = ConfirmedAudio { input: ModelAudio::G711Passthrough, output: ModelAudio::Pcm24k };
        assert_eq!(mixed.on_event(&updated(pcmu(), pcm24k())), SetupStep::Ready(expected));

        // A-law on a µ-law call, µ-law on an Opus call, another PCM rate: no conversion exists.
        for (codec, requested, format) in [
            (Codec::Pcmu, AudioFormat::Pcmu, json!({"type":"audio/pcma"})),
            (Codec::Opus, AudioFormat::PCM24K, pcmu()),
            (Codec::G722, AudioFormat::PCM24K, json!({"type":"audio/pcm","rate":16000})),
        ] {
            let mut setup = connected_setup(codec, requested, Instant::now());
            setup.on_event(&created());
            let step = setup.on_event(&updated(format.clone(), format));
            assert!(matches!(step, SetupStep::Refuse(Refusal::AgentFormatMismatch(_))), "{codec:?}: {step:?}");
        }
    }

    #[test]
    fn session_updated_without_formats_or_before_created_is_refused() {
        let mut setup = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        setup.on_event(&created());
        let bare = event(json!({"type":"session.updated","event_id":"e","session":{"type":"realtime"}}));
        assert!(matches!(setup.on_event(&bare), SetupStep::Refuse(Refusal::AgentFormatMismatch(_))));

        let mut early = connected_setup(Codec::Pcmu, AudioFormat::Pcmu, Instant::now());
        assert!(matches!(early.on_event(&updated(pcmu(), pcmu())), SetupStep::Refuse(Refusal::AgentSessionRefused(_))));
    }

    #[test]
    fn refused_upgrades_keep_their_status() {
        let mut setup = SessionSetup::new(Codec::Pcmu, AudioFormat::Pcmu, Instant::now(), TIMEOUT);
        let refusal = setup.on_connect_failed(&ConnectError::Rejected { status: 429, body: "slow down".into() });
        assert_eq!(refusal, Refusal::AgentRejectedUpgrade { status: 429, body: "slow down".into() });
        assert!(refusal.retry_after());
        let closed = setup.on_closed("closed with 1011");
        assert!(matches!(closed, Refusal::AgentSessionRefused(_)));
    }

    #[test]
    fn apologies_are_rate_limited_on_a_virtual_clock() {
        let t0 = Instant::now();
        let mut limiter = ApologyLimiter::new(Duration::from_secs(10));
        assert!(limiter.try_take(t0));
        assert!(!limiter.try_take(t0 + Duration::from_secs(1)));
        assert!(!limiter.try_take(t0 + Duration::from_millis(9_999)));
        assert!(limiter.try_take(t0 + Duration::from_secs(10)));
        assert!(!limiter.try_take(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn failed_response_reasons_are_a_bounded_set() {
        let details =
            |error: serde_json::Value| StatusDetails { kind: Some("failed".into()), reason: None, error: Some(error) };
        assert_eq!(
            failed_response_reason(Some(&details(json!({"type":"server_error","code":"server_error"})))),
            "server_error"
        );
        assert_eq!(
            failed_response_reason(Some(&details(json!({"type":"rate_limit_exceeded"})))),
            "rate_limit_exceeded"
        );
        assert_eq!(failed_response_reason(Some(&details(json!({"code":"made_up_\u{1b}[0m"})))), "other");
        assert_eq!(failed_response_reason(None), "unknown");
    }

    #[test]
    fn input_transcription_is_enabled_with_the_configured_model() {
        let agent = AgentConfig::default();
        let update =
            with_input_transcription(session_update(&agent, "gpt-realtime-2.1", AudioFormat::Pcmu), "whisper-1");
        let wire = serde_json::to_value(&update).unwrap();
        assert_eq!(wire["session"]["audio"]["input"]["transcription"], json!({"model":"whisper-1"}));
        assert_eq!(wire["session"]["audio"]["input"]["format"], json!({"type":"audio/pcmu"}), "the rest is kept");
        let off = with_input_transcription(session_update(&agent, "gpt-realtime-2.1", AudioFormat::Pcmu), "");
        assert!(serde_json::to_value(&off).unwrap()["session"]["audio"]["input"].get("transcription").is_none());
    }

    #[test]
    fn the_apology_asks_for_the_configured_words() {
        let ClientEvent::ResponseCreate { response: Some(config), .. } = apology("Sorry, say again?") else {
            panic!("a response.create")
        };
        assert!(config.instructions.unwrap().contains("\"Sorry, say again?\""));
    }

    #[test]
    fn the_session_declares_end_call_and_sets_vad_for_the_barge_in_mode() {
        let value = |agent: &AgentConfig| {
            serde_json::to_value(session_update(agent, "gpt-realtime", AudioFormat::Pcmu)).unwrap()["session"].clone()
        };
        let immediate = value(&AgentConfig::default());
        assert_eq!(immediate["tools"][0]["name"], "end_call");
        assert_eq!(immediate["tools"][0]["type"], "function");
        assert_eq!(immediate["tool_choice"], "auto");
        let vad = &immediate["audio"]["input"]["turn_detection"];
        assert_eq!((vad["interrupt_response"].as_bool(), vad["create_response"].as_bool()), (Some(true), Some(true)));

        let confirm =
            value(&AgentConfig { barge_in: BargeInChoice::Confirm, end_call: false, ..AgentConfig::default() });
        assert!(confirm.get("tools").is_none() && confirm.get("tool_choice").is_none(), "end_call = false");
        let vad = &confirm["audio"]["input"]["turn_detection"];
        assert_eq!((vad["interrupt_response"].as_bool(), vad["create_response"].as_bool()), (Some(false), Some(false)));
    }
}
