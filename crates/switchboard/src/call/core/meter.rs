//! Per-call meters (sans-IO): turn latency where the caller hears it, and token usage with its
//! estimated cost.
//!
//! **Turn latency.** One turn per `input_audio_buffer.speech_stopped` that gets an answer:
//!
//! ```text
//! speech end (RTP clock)   appended        speech_stopped   first delta      first agent RTP
//!   |--- jitter buffer ---|---- model: network, VAD hangover, inference ----|-- playout --|
//!   |<------------------------------------ total -------------------------------------->|
//! ```
//!
//! - *speech end on the RTP clock*: `speech_stopped.audio_end_ms` is a position on the model's
//!   input timeline (milliseconds of audio appended, protocol reference §8). The meter remembers,
//!   for the last [`TIMELINE_CAPACITY`] appends, where each ended on that timeline, when its RTP
//!   packet arrived and when it was appended; the speech end is the arrival of the packet holding
//!   that millisecond, minus the part of the packet after it.
//! - `total`: speech end to the first RTP packet of the answer leaving the pacer.
//! - `gateway`: the time the audio spent inside the gateway on the way: the speech end's packet
//!   from arrival to its append (jitter buffer), plus the answer's first delta from arrival to its
//!   first RTP packet (framing, playout queue, pacer slot).
//! - `model`: the rest (`total - gateway`): the WebSocket both ways, the server VAD's end-of-speech
//!   hangover (`silence_duration_ms`) and the model's time to the first audio.
//!
//! A turn opens at `speech_stopped` and closes at the first agent packet of audio whose first
//! delta arrived after it; the caller speaking again (`speech_started`) before that discards it
//! (a new turn opens at the next `speech_stopped`). The greeting is not a turn.
//!
//! **Tokens.** `response.done` `usage` summed per call (`input_tokens` split into text / audio
//! with `cached_tokens` as a subset; `output_tokens` into text / audio) and priced with
//! `realtime.price_per_million_*`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_realtime::events::Usage;

/// Appends remembered for mapping `audio_end_ms` back to the RTP clock: 20 s of 20 ms packets,
/// far more than the VAD's hangover. Policy when full: the oldest is forgotten.
pub const TIMELINE_CAPACITY: usize = 1000;
/// Turn latencies kept per call for the p50/p95 of the end-of-call line; beyond it later turns
/// still go to the histogram but not to the per-call quantiles.
pub const MAX_TURNS_KEPT: usize = 2000;

/// `realtime.price_per_million_*`: US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_text: f64,
    pub input_audio: f64,
    pub input_cached: f64,
    pub output_text: f64,
    pub output_audio: f64,
}

impl Default for Prices {
    /// gpt-realtime-2 / 2.1 list prices (protocol reference §9).
    fn default() -> Self {
        Prices { input_text: 4.0, input_audio: 32.0, input_cached: 0.40, output_text: 24.0, output_audio: 64.0 }
    }
}

/// Tokens summed over a call's responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTotals {
    pub input_text: u64,
    pub input_audio: u64,
    /// Cached input tokens (a subset of the two above).
    pub input_cached: u64,
    pub output_text: u64,
    pub output_audio: u64,
    /// Responses whose `usage` was counted.
    pub responses: u64,
}

impl TokenTotals {
    /// The usage of one response, from `response.done`.
    pub fn from_usage(usage: &Usage) -> TokenTotals {
        let detail = |details: &Option<Value>, key: &str| {
            details.as_ref().and_then(|d| d.get(key)).and_then(Value::as_u64).unwrap_or(0)
        };
        let mut input_text = detail(&usage.input_token_details, "text_tokens");
        let input_audio = detail(&usage.input_token_details, "audio_tokens");
        let mut output_text = detail(&usage.output_token_details, "text_tokens");
        let output_audio = detail(&usage.output_token_details, "audio_tokens");
        // No details: the totals are all we know; count them as text (the cheaper guess is
        // still a guess, but the token counts stay right).
        if usage.input_token_details.is_none() {
            input_text = usage.input_tokens;
        }
        if usage.output_token_details.is_none() {
            output_text = usage.output_tokens;
        }
        TokenTotals {
            input_text,
            input_audio,
            input_cached: detail(&usage.input_token_details, "cached_tokens"),
            output_text,
            output_audio,
            responses: 1,
        }
    }

    fn add(&mut self, other: &TokenTotals) {
        self.input_text += other.input_text;
        self.input_audio += other.input_audio;
        self.input_cached += other.input_cached;
        self.output_text += other.output_text;
        self.output_audio += other.output_audio;
        self.responses += other.responses;
    }

    /// Estimated cost in US dollars. Cached tokens are charged at the cached price instead of
    /// their text/audio price (cached audio first: that is where the saving is on a call).
    pub fn cost(&self, prices: &Prices) -> f64 {
        let cached_audio = self.input_cached.min(self.input_audio);
        let cached_text = (self.input_cached - cached_audio).min(self.input_text);
        let per_token = |count: u64, price: f64| count as f64 * price / 1_000_000.0;
        per_token(self.input_text - cached_text, prices.input_text)
            + per_token(self.input_audio - cached_audio, prices.input_audio)
            + per_token(cached_text + cached_audio, prices.input_cached)
            + per_token(self.output_text, prices.output_text)
            + per_token(self.output_audio, prices.output_audio)
    }
}

/// One measured turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLatency {
    pub total: Duration,
    pub model: Duration,
    pub gateway: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Append {
    /// Where the append ends on the model's input timeline, in microseconds.
    end_us: u64,
    duration_us: u64,
    arrived: Instant,
    appended: Instant,
}

#[derive(Debug, Clone, Copy)]
struct OpenTurn {
    speech_end: Instant,
    /// Arrival of the speech end's packet to its append.
    inbound_delay: Duration,
    /// Arrival of the answer's first delta.
    first_delta: Option<Instant>,
}

/// The meters of one call. See the module documentation.
#[derive(Debug, Default)]
pub struct Meter {
    input_end_us: u64,
    timeline: VecDeque<Append>,
    open: Option<OpenTurn>,
    turns: Vec<TurnLatency>,
    turns_measured: u64,
    tokens: TokenTotals,
}

impl Meter {
    /// Audio of `duration` was appended at `now` for a packet that arrived at `arrived`.
    pub fn on_append(&mut self, arrived: Instant, now: Instant, duration: Duration) {
        let duration_us = duration.as_micros() as u64;
        self.input_end_us += duration_us;
        if self.timeline.len() >= TIMELINE_CAPACITY {
            self.timeline.pop_front();
        }
        self.timeline.push_back(Append { end_us: self.input_end_us, duration_us, arrived, appended: now });
    }

    /// A new Realtime session (a reconnect or a rollover): its input timeline starts at zero
    /// again (protocol reference §8), and a turn open on the old one cannot be answered.
    pub fn on_new_session(&mut self) {
        self.input_end_us = 0;
        self.timeline.clear();
        self.open = None;
    }

    /// `input_audio_buffer.speech_stopped` at `audio_end_ms`: a turn opens.
    pub fn on_speech_stopped(&mut self, audio_end_ms: u64) {
        let end_us = audio_end_ms.saturating_mul(1000);
        let holding = self.timeline.iter().find(|append| append.end_us >= end_us).or(self.timeline.back());
        self.open = holding.map(|append| {
            let after_end = Duration::from_micros(append.end_us.saturating_sub(end_us).min(append.duration_us));
            OpenTurn {
                speech_end: append.arrived.checked_sub(after_end).unwrap_or(append.arrived),
                inbound_delay: append.appended.saturating_duration_since(append.arrived),
                first_delta: None,
            }
        });
    }

    /// `input_audio_buffer.speech_started`: an open turn without an answer heard is discarded.
    pub fn on_speech_started(&mut self) {
        self.open = None;
    }

    /// An agent audio delta arrived at `now`.
    pub fn on_audio_delta(&mut self, now: Instant) {
        if let Some(turn) = &mut self.open
            && turn.first_delta.is_none()
        {
            turn.first_delta = Some(now);
        }
    }

    /// A packet of agent audio left the pacer at `now`: closes the open turn if its answer has
    /// begun.
    pub fn on_agent_packet(&mut self, now: Instant) -> Option<TurnLatency> {
        let turn = self.open?;
        let first_delta = turn.first_delta?;
        self.open = None;
        let total = now.saturating_duration_since(turn.speech_end);
        let gateway = (turn.inbound_delay + now.saturating_duration_since(first_delta)).min(total);
        let latency = TurnLatency { total, model: total - gateway, gateway };
        self.turns_measured += 1;
        if self.turns.len() < MAX_TURNS_KEPT {
            self.turns.push(latency);
        }
        Some(latency)
    }

    /// A response's `usage`; returns the response's own figures.
    pub fn on_usage(&mut self, usage: &Usage) -> TokenTotals {
        let tokens = TokenTotals::from_usage(usage);
        self.tokens.add(&tokens);
        tokens
    }

    pub fn tokens(&self) -> TokenTotals {
        self.tokens
    }

    /// Turns measured (all of them, not only those kept for the quantiles).
    pub fn turns(&self) -> u64 {
        self.turns_measured
    }

    /// The `quantile` (0..=1) of the call's total turn latency; `None` without a turn.
    pub fn total_latency_quantile(&self, quantile: f64) -> Option<Duration> {
        let mut totals: Vec<Duration> = self.turns.iter().map(|turn| turn.total).collect();
        totals.sort_unstable();
        let rank = ((quantile.clamp(0.0, 1.0) * totals.len() as f64).ceil() as usize).max(1);
        totals.get(rank - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn usage(json: serde_json::Value) -> Usage {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn turn_latency_is_measured_from_the_speech_end_on_the_rtp_clock() {
        let t0 = Instant::now();
        let mut meter = Meter::default();
        // 100 packets of 20 ms arrive every 20 ms, each appended 5 ms after arrival.
        for i in 0..100 {
            meter.on_append(t0 + ms(20 * i), t0 + ms(20 * i + 5), ms(20));
        }
        // Speech ended 1210 ms into the input: inside the packet ending at 1220 ms, which
        // arrived at 1200 ms (packet 60 covers 1200..1220 ms of input, arrived at t0 + 1200).
        meter.on_speech_stopped(1210);
        meter.on_audio_delta(t0 + ms(2000));
        meter.on_audio_delta(t0 + ms(2100));
        let turn = meter.on_agent_packet(t0 + ms(2030)).unwrap();
        assert_eq!(turn.total, ms(2030 - 1190));
        assert_eq!(turn.gateway, ms(5 + 30));
        assert_eq!(turn.model, turn.total - turn.gateway);
        assert_eq!(meter.on_agent_packet(t0 + ms(2050)), None, "one measurement per turn");
        assert_eq!(meter.turns(), 1);
        assert_eq!(meter.total_latency_quantile(0.5), Some(ms(840)));
    }

    #[test]
    fn a_turn_needs_an_answer_and_the_caller_speaking_again_discards_it() {
        let t0 = Instant::now();
        let mut meter = Meter::default();
        meter.on_append(t0, t0, ms(20));
        assert_eq!(meter.on_agent_packet(t0 + ms(50)), None, "the greeting is not a turn");
        meter.on_speech_stopped(10);
        assert_eq!(meter.on_agent_packet(t0 + ms(50)), None, "no delta of an answer yet");
        meter.on_speech_started();
        meter.on_audio_delta(t0 + ms(60));
        assert_eq!(meter.on_agent_packet(t0 + ms(70)), None);
        assert_eq!(meter.turns(), 0);
        assert_eq!(meter.total_latency_quantile(0.95), None);
    }

    #[test]
    fn a_new_session_restarts_the_input_timeline() {
        let t0 = Instant::now();
        let mut meter = Meter::default();
        for i in 0..50 {
            meter.on_append(t0 + ms(20 * i), t0 + ms(20 * i), ms(20));
        }
        meter.on_new_session();
        for i in 0..10 {
            meter.on_append(t0 + ms(5000 + 20 * i), t0 + ms(5000 + 20 * i), ms(20));
        }
        // 100 ms into the new session's input: the packet that arrived at 5.08 s (ending at 100 ms).
        meter.on_speech_stopped(100);
        meter.on_audio_delta(t0 + ms(6000));
        let turn = meter.on_agent_packet(t0 + ms(6000)).unwrap();
        assert_eq!(turn.total, ms(6000 - 5080));
    }

    #[test]
    fn the_timeline_is_bounded() {
        let t0 = Instant::now();
        let mut meter = Meter::default();
        for i in 0..(TIMELINE_CAPACITY as u64 * 3) {
            meter.on_append(t0 + ms(20 * i), t0 + ms(20 * i), ms(20));
        }
        assert_eq!(meter.timeline.len(), TIMELINE_CAPACITY);
        // A position older than what is remembered maps to the oldest remembered packet.
        meter.on_speech_stopped(0);
        meter.on_audio_delta(t0 + ms(100_000));
        assert!(meter.on_agent_packet(t0 + ms(100_000)).is_some());
    }

    #[test]
    fn usage_is_summed_and_priced() {
        let mut meter = Meter::default();
        let first = usage(serde_json::json!({"total_tokens":253,"input_tokens":132,"output_tokens":121,
            "input_token_details":{"text_tokens":119,"audio_tokens":13,"image_tokens":0,"cached_tokens":64,
                "cached_tokens_details":{"text_tokens":64,"audio_tokens":0,"image_tokens":0}},
            "output_token_details":{"text_tokens":30,"audio_tokens":91}}));
        let response = meter.on_usage(&first);
        assert_eq!(
            response,
            TokenTotals {
                input_text: 119,
                input_audio: 13,
                input_cached: 64,
                output_text: 30,
                output_audio: 91,
                responses: 1
            }
        );
        meter.on_usage(&first);
        meter.on_usage(&usage(serde_json::json!({"total_tokens":10,"input_tokens":4,"output_tokens":6})));
        let totals = meter.tokens();
        assert_eq!((totals.input_text, totals.output_text, totals.responses), (242, 66, 3));
        // 13 audio tokens, all cached first (13 at the cached price), then 51 text tokens cached.
        let prices = Prices::default();
        let per_million = 1_000_000.0;
        let expected =
            ((242.0 - 102.0) * 4.0 + (26.0 - 26.0) * 32.0 + 128.0 * 0.40 + 66.0 * 24.0 + 182.0 * 64.0) / per_million;
        assert!((totals.cost(&prices) - expected).abs() < 1e-12, "{} != {expected}", totals.cost(&prices));
        let free = Prices { input_text: 0.0, input_audio: 0.0, input_cached: 0.0, output_text: 0.0, output_audio: 0.0 };
        assert_eq!(totals.cost(&free), 0.0);
    }
}
