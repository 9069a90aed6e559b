//! What is written about a call: the transcript collected during it, the JSON sidecar beside its
//! recording and its call detail record (docs/configuration.md lists every field).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use switchboard_realtime::events::ServerEvent;

use serde::{Deserialize, Serialize};

use crate::call::end::CallEnd;
use crate::call::facts::CallFacts;
use crate::call::journal::{CallJournal, ToolStatus};
use crate::calls::{redact_party, rfc3339_utc};

/// Items whose start time is remembered while their transcript is awaited, at most (the oldest
/// is forgotten first; its turn then gets the time its transcript arrived).
const MAX_PENDING_ITEMS: usize = 64;
/// A caller turn's `audio_start_ms` is taken as its offset into the recording only when it is
/// this close before the speech_started event (the first session's input clock is the call's;
/// after a reconnect a new session counts from zero and the arrival time is used instead).
const MAX_VAD_DELAY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Caller,
    Agent,
}

impl Speaker {
    fn label(self) -> &'static str {
        match self {
            Speaker::Caller => "caller",
            Speaker::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub speaker: Speaker,
    /// Into the recording (the call clock).
    pub offset: Duration,
    pub text: String,
}

/// The call's transcript, from the Realtime events the shell observes: caller turns from input
/// transcription (`conversation.item.input_audio_transcription.completed`, placed where the
/// speech started), agent turns from `response.output_audio_transcript.done` (placed where the
/// item's first audio arrived: it plays at once unless earlier agent audio is still queued).
/// Bounded by turns and characters; what is left out is counted.
pub struct Transcript {
    origin: Instant,
    max_turns: usize,
    max_chars: usize,
    chars: usize,
    turns: Vec<Turn>,
    pub dropped_turns: u64,
    /// Where each awaited item started: (item id, offset).
    starts: VecDeque<(String, Duration)>,
}

impl Transcript {
    pub fn new(origin: Instant, max_turns: usize, max_chars: usize) -> Transcript {
        Transcript {
            origin,
            max_turns,
            max_chars,
            chars: 0,
            turns: Vec::new(),
            dropped_turns: 0,
            starts: VecDeque::new(),
        }
    }

    /// One event from the Realtime API, at `now`.
    pub fn observe(&mut self, now: Instant, event: &ServerEvent) {
        let arrived = now.saturating_duration_since(self.origin);
        match event {
            ServerEvent::SpeechStarted(started) => {
                let said = Duration::from_millis(started.audio_start_ms);
                let offset = if said <= arrived && arrived - said <= MAX_VAD_DELAY { said } else { arrived };
                self.remember(&started.item_id, offset);
            }
            ServerEvent::OutputAudioDelta(delta) if !self.starts.iter().any(|(id, _)| *id == delta.item_id) => {
                self.remember(&delta.item_id, arrived);
            }
            ServerEvent::InputAudioTranscriptionCompleted(done) => {
                let offset = self.take_start(&done.item_id).unwrap_or(arrived);
                self.add(Speaker::Caller, offset, &done.transcript);
            }
            ServerEvent::OutputAudioTranscriptDone(done) => {
                let offset = self.take_start(&done.item_id).unwrap_or(arrived);
                self.add(Speaker::Agent, offset, &done.transcript);
            }
            _ => {}
        }
    }

    fn remember(&mut self, item_id: &str, offset: Duration) {
        if self.starts.len() >= MAX_PENDING_ITEMS {
            self.starts.pop_front();
        }
        self.starts.push_back((item_id.to_owned(), offset));
    }

    fn take_start(&mut self, item_id: &str) -> Option<Duration> {
        let index = self.starts.iter().position(|(id, _)| id == item_id)?;
        self.starts.remove(index).map(|(_, offset)| offset)
    }

    fn add(&mut self, speaker: Speaker, offset: Duration, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let length = text.chars().count();
        if self.turns.len() >= self.max_turns || self.chars + length > self.max_chars {
            self.dropped_turns += 1;
            return;
        }
        self.chars += length;
        self.turns.push(Turn { speaker, offset, text: text.to_owned() });
    }

    /// The turns in the order they were spoken.
    pub fn turns(&self) -> Vec<Turn> {
        let mut turns = self.turns.clone();
        turns.sort_by_key(|t| t.offset);
        turns
    }
}

/// The recording of a call, as the sidecar and the CDR describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub wav: String,
    pub sidecar: String,
    pub sample_rate: u32,
}

/// The facts of an answered call as the open-call marker keeps them (so a call the gateway died
/// during still gets its record at the next start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFacts {
    pub id: String,
    pub sip_call_id: String,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub agent: String,
    pub route: String,
    pub codec: String,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub answered_ms: u64,
    pub recording: Option<RecordingInfo>,
    /// The call's trunk (absent in sidecars written before issue 11).
    #[serde(default)]
    pub trunk: Option<String>,
    /// `rtp` or the SRTP suite; markers written before SRTP existed read as `rtp`.
    #[serde(default = "plain_rtp")]
    pub media_security: String,
}

fn plain_rtp() -> String {
    "rtp".to_owned()
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl RecordFacts {
    pub fn new(facts: &CallFacts, recording: Option<RecordingInfo>) -> RecordFacts {
        RecordFacts {
            id: facts.id.clone(),
            sip_call_id: facts.sip_call_id.clone(),
            direction: facts.direction.label().to_owned(),
            from: facts.from.clone(),
            to: facts.to.clone(),
            agent: facts.agent.clone(),
            route: facts.route.clone(),
            codec: facts.codec.clone(),
            started_ms: unix_ms(facts.started),
            answered_ms: unix_ms(facts.answered),
            recording,
            trunk: facts.trunk.clone(),
            media_security: facts.media_security.to_owned(),
        }
    }
}

/// Everything known about a call when it is written up.
pub struct CallSummary<'a> {
    pub facts: &'a RecordFacts,
    pub ended: SystemTime,
    /// `None`: the gateway died during the call (recovered at the next start).
    pub end: Option<&'a CallEnd>,
    pub journal: Option<&'a CallJournal>,
    pub redact_numbers: bool,
}

/// Milliseconds from `from` to `to` (0 when the clock went backwards).
fn millis_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-30T11:43:09.123Z`.
pub fn timestamp(time: SystemTime) -> String {
    let millis = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    let whole = rfc3339_utc(time);
    match whole.strip_suffix('Z') {
        Some(seconds) => format!("{seconds}.{millis:03}Z"),
        None => whole,
    }
}

fn party(number: &str, redact: bool) -> String {
    if redact { redact_party(number) } else { number.to_owned() }
}

impl CallSummary<'_> {
    fn outcome(&self) -> (&'static str, &'static str, String) {
        match self.end {
            Some(end) => (end.outcome_label(), end.reason_label(), end.fault().to_string()),
            None => ("failed", GATEWAY_CRASH, "gateway".to_owned()),
        }
    }

    /// The fields the sidecar and the CDR share.
    fn common(&self) -> serde_json::Map<String, Value> {
        let facts = self.facts;
        let (outcome, reason, side) = self.outcome();
        let value = json!({
            "call_id": facts.id,
            "sip_call_id": facts.sip_call_id,
            "direction": facts.direction,
            "from": party(&facts.from, self.redact_numbers),
            "to": party(&facts.to, self.redact_numbers),
            "agent": facts.agent,
            "route": facts.route,
            "trunk": facts.trunk,
            "codec": facts.codec,
            "started": timestamp(from_unix_ms(facts.started_ms)),
            "answered": timestamp(from_unix_ms(facts.answered_ms)),
            "ended": timestamp(self.ended),
            "setup_ms": facts.answered_ms.saturating_sub(facts.started_ms),
            "duration_ms": millis_between(from_unix_ms(facts.answered_ms), self.ended),
            "outcome": outcome,
            "reason": reason,
            "side": side,
            "media_security": facts.media_security,
        });
        match value {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    fn tools(&self) -> Vec<Value> {
        let Some(journal) = self.journal else { return Vec::new() };
        journal
            .tools
            .iter()
            .map(|tool| {
                let (status, error) = match &tool.status {
                    ToolStatus::Ok => ("ok", None),
                    ToolStatus::Failed(why) => ("failed", Some(why.as_str())),
                    ToolStatus::TimedOut => ("timed_out", None),
                };
                json!({
                    "call_id": tool.call_id,
                    "name": tool.name,
                    "offset_ms": tool.started.as_millis() as u64,
                    "duration_ms": tool.duration.as_millis() as u64,
                    "status": status,
                    "error": error,
                })
            })
            .collect()
    }

    fn transfers(&self) -> Vec<Value> {
        let Some(journal) = self.journal else { return Vec::new() };
        journal
            .transfers
            .iter()
            .map(|t| {
                json!({
                    "offset_ms": t.at.as_millis() as u64,
                    "queue": t.queue,
                    "method": t.method,
                    "target": t.target,
                    "reason": t.reason,
                    "outcome": t.outcome,
                })
            })
            .collect()
    }

    /// The sidecar (`<call id>.json` beside the WAV).
    pub fn sidecar(&self, transcript: Option<&Transcript>) -> Value {
        let mut map = self.common();
        map.insert("version".into(), json!(1));
        if let Some(recording) = &self.facts.recording {
            map.insert(
                "recording".into(),
                json!({
                    "path": recording.wav,
                    "sample_rate": recording.sample_rate,
                    "channels": 2,
                    "left": "caller",
                    "right": "agent (or the human after a bridged transfer)",
                }),
            );
        }
        map.insert("tools".into(), Value::Array(self.tools()));
        map.insert("transfers".into(), Value::Array(self.transfers()));
        map.insert("journal_dropped".into(), json!(self.journal.map_or(0, |j| j.dropped)));
        let turns: Vec<Value> = transcript
            .map(|t| t.turns())
            .unwrap_or_default()
            .iter()
            .map(|turn| json!({"speaker": turn.speaker.label(), "offset_ms": turn.offset.as_millis() as u64, "text": turn.text}))
            .collect();
        map.insert("transcript".into(), Value::Array(turns));
        let dropped = transcript.map_or(0, |t| t.dropped_turns);
        map.insert("transcript_truncated".into(), json!(dropped > 0));
        map.insert("transcript_turns_dropped".into(), json!(dropped));
        Value::Object(map)
    }

    /// The call detail record (one line of `cdr.path`, one webhook body).
    pub fn cdr(&self) -> Value {
        let mut map = self.common();
        map.insert("version".into(), json!(1));
        map.insert("sip_status".into(), json!(200));
        let tools = self.tools();
        let failed = tools.iter().filter(|t| t["status"] != "ok").count();
        map.insert("tools".into(), json!({"calls": tools.len(), "failed": failed}));
        let transfers = self.transfers();
        let last = transfers.last().map(|t| t["outcome"].clone()).unwrap_or(Value::Null);
        map.insert("transfers".into(), json!({"count": transfers.len(), "last_outcome": last}));
        let recording = self.facts.recording.as_ref();
        map.insert("recording".into(), recording.map_or(Value::Null, |r| json!(r.wav)));
        map.insert("sidecar".into(), recording.map_or(Value::Null, |r| json!(r.sidecar)));
        Value::Object(map)
    }
}

/// The reason of a call the gateway died during (found at the next start).
pub const GATEWAY_CRASH: &str = "gateway_crash";

/// The CDR of a call that was never answered (refused with `status`, cancelled, or an outbound
/// call that did not connect): only what the INVITE said.
pub struct Unanswered<'a> {
    pub id: &'a str,
    pub sip_call_id: &'a str,
    pub direction: &'static str,
    pub from: &'a str,
    pub to: &'a str,
    pub agent: &'a str,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub outcome: &'a str,
    pub reason: &'a str,
    pub side: String,
    /// The final response we sent (inbound) or got (outbound), when there was one.
    pub sip_status: Option<u16>,
    pub redact_numbers: bool,
    /// The call's trunk, when it has one.
    pub trunk: Option<&'a str>,
}

impl Unanswered<'_> {
    pub fn cdr(&self) -> Value {
        json!({
            "version": 1,
            "call_id": self.id,
            "sip_call_id": self.sip_call_id,
            "trunk": self.trunk,
            "direction": self.direction,
            "from": party(self.from, self.redact_numbers),
            "to": party(self.to, self.redact_numbers),
            "agent": self.agent,
            "route": "",
            "codec": "",
            "started": timestamp(self.started),
            "answered": Value::Null,
            "ended": timestamp(self.ended),
            "setup_ms": millis_between(self.started, self.ended),
            "duration_ms": 0,
            "outcome": self.outcome,
            "reason": self.reason,
            "side": self.side,
            "sip_status": self.sip_status,
            "tools": {"calls": 0, "failed": 0},
            "transfers": {"count": 0, "last_outcome": Value::Null},
            "recording": Value::Null,
            "sidecar": Value::Null,
            "media_security": Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use switchboard_realtime::events::ServerEvent;

    use super::*;

    fn event(json: Value) -> ServerEvent {
        ServerEvent::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn turns_are_placed_where_speech_and_audio_started() {
        let origin = Instant::now();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let mut transcript = Transcript::new(origin, 10, 1000);
        transcript.observe(
            at(1700),
            &event(json!({"type":"input_audio_buffer.speech_started","event_id":"e1","audio_start_ms":1200,"item_id":"u1"})),
        );
        transcript.observe(
            at(2600),
            &event(json!({"type":"response.output_audio.delta","event_id":"e2","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"delta":"AAAA"})),
        );
        transcript.observe(
            at(2700),
            &event(json!({"type":"response.output_audio.delta","event_id":"e3","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"delta":"AAAA"})),
        );
        transcript.observe(
            at(3500),
            &event(json!({"type":"response.output_audio_transcript.done","event_id":"e4","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"transcript":"Hi there."})),
        );
        // The caller's transcription arrives after the agent's answer (as it can with the API).
        transcript.observe(
            at(3900),
            &event(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e5","item_id":"u1","content_index":0,"transcript":"Hello?"})),
        );
        let turns = transcript.turns();
        assert_eq!(
            turns,
            vec![
                Turn { speaker: Speaker::Caller, offset: Duration::from_millis(1200), text: "Hello?".into() },
                Turn { speaker: Speaker::Agent, offset: Duration::from_millis(2600), text: "Hi there.".into() },
            ]
        );
    }

    #[test]
    fn the_transcript_is_bounded_and_says_so() {
        let origin = Instant::now();
        let mut transcript = Transcript::new(origin, 2, 1000);
        for i in 0..5 {
            transcript.observe(
                origin,
                &event(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":format!("u{i}"),"content_index":0,"transcript":"words"})),
            );
        }
        assert_eq!(transcript.turns().len(), 2);
        assert_eq!(transcript.dropped_turns, 3);
        let mut by_chars = Transcript::new(origin, 100, 12);
        for _ in 0..3 {
            by_chars.observe(
                origin,
                &event(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"u","content_index":0,"transcript":"12345"})),
            );
        }
        assert_eq!((by_chars.turns().len(), by_chars.dropped_turns), (2, 1));
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_503_000_042);
        assert_eq!(timestamp(t), "2025-11-30T11:43:20.042Z");
    }
}
