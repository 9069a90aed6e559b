//! Simulator configuration.

use std::str::FromStr;
use std::time::Duration;

use switchboard_realtime::events::AudioFormat;

/// How the simulator behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// If Some, the Bearer token must match; None accepts any non-empty Bearer.
    pub api_key: Option<String>,
    /// What a VAD-triggered response says.
    pub behaviour: Behaviour,
    /// What a client `response.create` (the agent greeting) says.
    pub greeting: Tone,
    /// How output audio is streamed.
    pub burst: BurstPattern,
    /// Session lifetime: then `error` `session_expired` and close 1001 (reference §7).
    pub max_session: Duration,
    /// Seed for every random choice (chunk sizes, ids).
    pub seed: u64,
    /// Events kept per session log; later ones are only counted (bounded memory under load).
    /// 0 keeps no session logs at all, for a long-running in-process simulator.
    pub log_limit: usize,
    /// Misbehaviours for tests of the gateway's error handling; all off by default.
    pub faults: Faults,
    /// `--phases`: every VAD-triggered response holds two audio items, `phase` `commentary`
    /// (a short tone) then `final_answer` (the usual reply), as gpt-realtime-2 sends them.
    pub phases: bool,
    /// `--late-deltas N`: when `speech_started` interrupts a response, up to N more audio
    /// deltas of it are sent before its `response.done` (exercises the client's discard path).
    pub late_deltas: u32,
    /// `--transcription-delay-ms`: input transcriptions arrive this long after their user item
    /// was committed (zero: right after it), possibly after that turn's `response.done`.
    pub transcription_delay: Duration,
    /// `--transcription-fails`: every input transcription ends `…transcription.failed`.
    pub transcription_fails: bool,
}

/// Ways the simulator can misbehave (reference §1.3 and §7 describe how the real API fails).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Refuse the WebSocket upgrade with this HTTP status and an API-shaped error body.
    pub reject_upgrade: Option<u16>,
    /// Accept the upgrade, then never send anything (no `session.created`, no answers, pongs
    /// only from the WebSocket layer).
    pub silent: bool,
    /// Answer `session.update` with an `error` (`invalid_value`) instead of `session.updated`.
    pub refuse_session_update: bool,
    /// Confirm every `session.update` with this audio format both ways, whatever was asked.
    pub updated_format: Option<AudioFormat>,
    /// Wait this long before answering `session.update`.
    pub session_update_delay: Duration,
    /// This long after the upgrade, stop reading and sending altogether (no events, no
    /// pongs), as a server under SIGSTOP or behind a dead network path.
    pub stall_after: Option<Duration>,
    /// One second after the first `session.updated`, send one text message of this many bytes.
    pub huge_message_bytes: Option<usize>,
    /// Responses triggered by the caller's speech end `failed` without audio; client
    /// `response.create` (greeting, apology) still answers with the greeting tone.
    pub fail_vad_responses: bool,
    /// Why those responses fail (`--fail-reason`): the `error` of their `status_details`.
    pub fail_reason: FailReason,
}

/// `--fail-reason`: the `status_details.error` of a scripted `failed` response (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailReason {
    /// `{"type":"server_error","code":"server_error"}`.
    #[default]
    ServerError,
    /// `{"type":"requests","code":"rate_limit_exceeded"}`, as a 429 body says it.
    RateLimitExceeded,
    /// `{"type":"insufficient_quota","code":"insufficient_quota"}`.
    InsufficientQuota,
}

impl FailReason {
    /// `(error.type, error.code, error.message)` of the failed response.
    pub fn error_fields(self) -> (&'static str, &'static str, &'static str) {
        match self {
            FailReason::ServerError => (
                "server_error",
                "server_error",
                "The server had an error while processing your request (simulated fault).",
            ),
            FailReason::RateLimitExceeded => (
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests (simulated fault). Please try again later.",
            ),
            FailReason::InsufficientQuota => (
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details (simulated fault).",
            ),
        }
    }
}

impl FromStr for FailReason {
    type Err = ParseError;

    /// `server_error`, `rate_limit_exceeded` or `insufficient_quota`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "server_error" => Ok(FailReason::ServerError),
            "rate_limit_exceeded" => Ok(FailReason::RateLimitExceeded),
            "insufficient_quota" => Ok(FailReason::InsufficientQuota),
            other => Err(ParseError {
                what: "fail reason",
                value: other.to_owned(),
                expected: "server_error, rate_limit_exceeded or insufficient_quota",
            }),
        }
    }
}

/// `--updated-format`: `pcm` (24 kHz), `pcmu` or `pcma`.
pub fn parse_audio_format(text: &str) -> Result<AudioFormat, ParseError> {
    match text.trim() {
        "pcm" | "audio/pcm" => Ok(AudioFormat::PCM24K),
        "pcmu" | "audio/pcmu" => Ok(AudioFormat::Pcmu),
        "pcma" | "audio/pcma" => Ok(AudioFormat::Pcma),
        other => Err(ParseError { what: "audio format", value: other.to_owned(), expected: "pcm, pcmu or pcma" }),
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            behaviour: Behaviour::Echo,
            greeting: Tone::default(),
            burst: BurstPattern::default(),
            max_session: Duration::from_secs(60 * 60),
            seed: 0,
            log_limit: 100_000,
            faults: Faults::default(),
            phases: false,
            late_deltas: 0,
            transcription_delay: Duration::ZERO,
            transcription_fails: false,
        }
    }
}

/// What a VAD-triggered response says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Reply with the caller's last utterance, converted to the output format.
    Echo,
    /// Reply with a sine tone.
    Tone { hz: f64, ms: u32 },
    /// A long speech-like answer (e.g. 20 s), for barge-in tests.
    Monologue { ms: u32 },
}

/// A sine tone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tone {
    pub hz: f64,
    pub ms: u32,
}

impl Default for Tone {
    fn default() -> Self {
        Self { hz: 440.0, ms: 1000 }
    }
}

/// How output audio is chunked and paced: chunk sizes drawn uniformly from
/// `min_chunk_ms..=max_chunk_ms`, sent at `speed` times real time (0 = all at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstPattern {
    pub min_chunk_ms: u32,
    pub max_chunk_ms: u32,
    pub speed: f64,
}

impl Default for BurstPattern {
    fn default() -> Self {
        Self { min_chunk_ms: 40, max_chunk_ms: 240, speed: 4.0 }
    }
}

/// Why a command-line value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

fn parse_number<T: FromStr>(text: &str, what: &'static str, expected: &'static str) -> Result<T, ParseError> {
    text.trim().parse().map_err(|_| ParseError { what, value: text.to_owned(), expected })
}

impl FromStr for Tone {
    type Err = ParseError;

    /// `HZ:MS`, e.g. `440:1000`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "HZ:MS, e.g. 440:1000";
        let (hz, ms) =
            text.split_once(':').ok_or(ParseError { what: "tone", value: text.to_owned(), expected: EXPECTED })?;
        let hz: f64 = parse_number(hz, "tone frequency", EXPECTED)?;
        if !(hz.is_finite() && hz > 0.0) {
            return Err(ParseError { what: "tone frequency", value: text.to_owned(), expected: EXPECTED });
        }
        Ok(Tone { hz, ms: parse_number(ms, "tone duration", EXPECTED)? })
    }
}

impl FromStr for Behaviour {
    type Err = ParseError;

    /// `echo`, `tone:HZ:MS` or `monologue:MS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "echo, tone:HZ:MS or monologue:MS";
        let text = text.trim();
        if text == "echo" {
            return Ok(Behaviour::Echo);
        }
        if let Some(rest) = text.strip_prefix("tone:") {
            let tone: Tone = rest.parse()?;
            return Ok(Behaviour::Tone { hz: tone.hz, ms: tone.ms });
        }
        if let Some(ms) = text.strip_prefix("monologue:") {
            return Ok(Behaviour::Monologue { ms: parse_number(ms, "monologue duration", EXPECTED)? });
        }
        Err(ParseError { what: "behaviour", value: text.to_owned(), expected: EXPECTED })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_parse() {
        assert_eq!("echo".parse::<Behaviour>(), Ok(Behaviour::Echo));
        assert_eq!("tone:440:1500".parse::<Behaviour>(), Ok(Behaviour::Tone { hz: 440.0, ms: 1500 }));
        assert_eq!("monologue:20000".parse::<Behaviour>(), Ok(Behaviour::Monologue { ms: 20000 }));
        assert!("shout".parse::<Behaviour>().is_err());
        assert!("tone:x:1".parse::<Behaviour>().is_err());
        assert!("tone:440".parse::<Behaviour>().is_err());
    }

    #[test]
    fn tones_parse() {
        assert_eq!("440:1000".parse::<Tone>(), Ok(Tone { hz: 440.0, ms: 1000 }));
        assert!("0:1000".parse::<Tone>().is_err());
        assert!("440:-5".parse::<Tone>().is_err());
    }

    #[test]
    fn defaults_follow_the_reference() {
        let cfg = SimConfig::default();
        assert_eq!(cfg.max_session, Duration::from_secs(3600));
        assert_eq!(cfg.greeting, Tone { hz: 440.0, ms: 1000 });
        assert_eq!(cfg.burst.speed, 4.0);
    }
}
