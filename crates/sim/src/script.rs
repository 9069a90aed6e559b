//! The simulator's deterministic "model": what it transcribes, how it answers a text item, and
//! how many tokens a response costs (docs/simulator.md documents each formula, so tests can
//! compare a gateway's sums with the simulator's log).

use serde_json::{Value, json};
use switchboard_realtime::events::{ContentPart, Item, Role, Usage};

use crate::config::Tone;

/// The input transcription of the `n`th caller utterance (1-based) of `ms` milliseconds.
pub fn utterance_transcript(n: u32, ms: f64) -> String {
    format!("caller utterance {n} ({} ms)", ms.round())
}

/// The transcript a transcription session (`?intent=transcription`) returns for its `n`th
/// committed audio item (1-based) of `ms` milliseconds.
pub fn transcription_transcript(n: u32, ms: f64) -> String {
    format!("transcribed audio {n} of {} ms", ms.round())
}

/// The scripted answer to a text item: a 600 ms tone whose frequency names the first key in
/// the text (digit d: 500 + 100 d Hz; `*` 1500; `#` 1600; `A`-`D` 1700-2000), with the
/// transcript "You pressed KEY."; without a key, 440 Hz and "I got your message.".
pub fn text_answer(text: &str) -> (Tone, String) {
    match first_key(text) {
        Some(key) => (Tone { hz: key_hz(key), ms: 600 }, format!("You pressed {key}.")),
        None => (Tone { hz: 440.0, ms: 600 }, "I got your message.".to_owned()),
    }
}

/// The tone frequency naming a DTMF key.
pub fn key_hz(key: char) -> f64 {
    match key {
        '0'..='9' => 500.0 + 100.0 * f64::from(u32::from(key) - u32::from('0')),
        '*' => 1500.0,
        '#' => 1600.0,
        'A'..='D' => 1700.0 + 100.0 * f64::from(u32::from(key) - u32::from('A')),
        _ => 440.0,
    }
}

/// The first DTMF key named in `text`: any digit, `*` or `#`; a letter `A`-`D` only when it
/// stands alone (so "DTMF" or "A caller" do not count, "pressed A." does).
pub fn first_key(text: &str) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().find_map(|(i, &c)| {
        let alone = |i: usize| {
            let before = i.checked_sub(1).and_then(|j| chars.get(j)).is_none_or(|c| !c.is_alphanumeric());
            let after = chars.get(i + 1).is_none_or(|c| !c.is_alphanumeric());
            before && after
        };
        match c {
            '0'..='9' | '*' | '#' => Some(c),
            'A'..='D' if alone(i) => Some(c),
            _ => None,
        }
    })
}

/// Text tokens of a string: one per 4 characters, rounded up.
pub fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Tokens of caller audio: 10 per second, rounded up.
pub fn input_audio_tokens(ms: f64) -> u64 {
    (ms.max(0.0) / 100.0).ceil() as u64
}

/// Tokens of model audio: 20 per second, rounded up (as output, and when read back as input).
pub fn output_audio_tokens(ms: f64) -> u64 {
    (ms.max(0.0) / 50.0).ceil() as u64
}

/// The fixed system preamble every response reads.
pub const PREAMBLE_TOKENS: u64 = 100;

/// The prompt cache holds whole blocks of this many tokens of the previous response's input.
pub const CACHE_BLOCK_TOKENS: u64 = 64;

/// The context a response reads, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputTokens {
    pub text: u64,
    pub audio: u64,
}

impl InputTokens {
    pub fn total(self) -> u64 {
        self.text + self.audio
    }
}

/// Tokens of one conversation item read as context; `audio_ms` is the item's audio (caller
/// audio for user items, model audio for assistant items).
pub fn item_tokens(item: &Item, audio_ms: Option<f64>) -> InputTokens {
    match item {
        Item::Message(m) => {
            let text: u64 = m
                .content
                .iter()
                .map(|part| match part {
                    ContentPart::InputText { text } | ContentPart::OutputText { text } => text_tokens(text),
                    _ => 0,
                })
                .sum();
            let audio = match (m.role, audio_ms) {
                (Role::Assistant, Some(ms)) => output_audio_tokens(ms),
                (_, Some(ms)) => input_audio_tokens(ms),
                (_, None) => 0,
            };
            InputTokens { text, audio }
        }
        Item::FunctionCall(f) => InputTokens { text: text_tokens(&f.name) + text_tokens(&f.arguments), audio: 0 },
        Item::FunctionCallOutput(f) => InputTokens { text: text_tokens(&f.output), audio: 0 },
        Item::Other(map) => InputTokens { text: text_tokens(&Value::Object(map.clone()).to_string()), audio: 0 },
    }
}

/// `response.done`'s `usage` (§4.3): `input` read, `cached` of it from the previous response's
/// input, `output_text` / `output_audio` produced.
pub fn usage(input: InputTokens, previous_input: u64, output_text: u64, output_audio: u64) -> Usage {
    let input_total = input.total();
    let cached = (previous_input / CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS).min(input_total);
    let cached_text = cached.min(input.text);
    let cached_audio = cached - cached_text;
    let output_total = output_text + output_audio;
    Usage {
        total_tokens: input_total + output_total,
        input_tokens: input_total,
        output_tokens: output_total,
        input_token_details: Some(json!({
            "text_tokens": input.text, "audio_tokens": input.audio, "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0}
        })),
        output_token_details: Some(json!({"text_tokens": output_text, "audio_tokens": output_audio})),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_dtmf_texts() {
        assert_eq!(first_key("The caller pressed 5."), Some('5'));
        assert_eq!(first_key("The caller pressed 1 2 3."), Some('1'));
        assert_eq!(first_key("The caller pressed *."), Some('*'));
        assert_eq!(first_key("DTMF #"), Some('#'));
        assert_eq!(first_key("The caller pressed A."), Some('A'));
        assert_eq!(first_key("Caller pressed D"), Some('D'));
        assert_eq!(first_key("A caller, hello"), Some('A'), "a standalone A counts");
        assert_eq!(first_key("Dial Bob"), None);
        assert_eq!(first_key("hello"), None);
    }

    #[test]
    fn key_frequencies() {
        assert_eq!(key_hz('0'), 500.0);
        assert_eq!(key_hz('5'), 1000.0);
        assert_eq!(key_hz('9'), 1400.0);
        assert_eq!(key_hz('*'), 1500.0);
        assert_eq!(key_hz('#'), 1600.0);
        assert_eq!(key_hz('A'), 1700.0);
        assert_eq!(key_hz('D'), 2000.0);
        assert_eq!(text_answer("The caller pressed 7."), (Tone { hz: 1200.0, ms: 600 }, "You pressed 7.".to_owned()));
        assert_eq!(text_answer("hi").0.hz, 440.0);
    }

    #[test]
    fn usage_caches_whole_blocks_of_the_previous_input() {
        let u = usage(InputTokens { text: 150, audio: 40 }, 0, 10, 30);
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (190, 40, 230));
        assert_eq!(u.input_token_details.as_ref().unwrap()["cached_tokens"], 0);
        let u = usage(InputTokens { text: 150, audio: 90 }, 190, 0, 0);
        let details = u.input_token_details.unwrap();
        assert_eq!(details["cached_tokens"], 128);
        assert_eq!(details["cached_tokens_details"]["text_tokens"], 128);
        let u = usage(InputTokens { text: 100, audio: 100 }, 190, 0, 0);
        let details = u.input_token_details.unwrap();
        assert_eq!(details["cached_tokens_details"]["text_tokens"], 100);
        assert_eq!(details["cached_tokens_details"]["audio_tokens"], 28);
    }
}
