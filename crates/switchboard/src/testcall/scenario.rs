//! The scenario file of `switchboard test-call` (docs/test-call.md): a TOML document read as a
//! table and checked key by key, so that every problem names its key
//! (`turns[2].expect_within_ms: must be a positive integer`) and an unknown key is an error, not
//! a silently ignored typo.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Bounds that keep one scenario's cost known: calls, their length, their turns.
pub const MAX_CALLS: u64 = 10_000;
pub const MAX_CONCURRENCY: u64 = 200;
pub const MAX_TURNS: usize = 100;
pub const MAX_CALL_TIMEOUT_MS: u64 = 600_000;
pub const MAX_TURN_MS: u64 = 120_000;
pub const MAX_SAY_CHARS: usize = 2_000;
pub const MAX_DTMF_DIGITS: usize = 32;

/// How long a turn waits for the agent's answer to start, unless the turn says otherwise.
pub const DEFAULT_LISTEN_MS: u64 = 5_000;
/// Agent silence that ends its answer.
pub const DEFAULT_AGENT_QUIET_MS: u64 = 800;
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 60_000;

/// One checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `name`, or the file's stem: the JUnit test suite's name.
    pub name: String,
    pub calls: u32,
    pub concurrency: u32,
    /// `target` (a SIP URI) or `trunk` + `to`; `None` when the command line must give `--target`.
    pub target: Option<Target>,
    /// Caller ID: the user part of our From URI.
    pub from: Option<String>,
    pub call_timeout_ms: u64,
    pub agent_quiet_ms: u64,
    pub turns: Vec<Turn>,
}

/// Where the calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `sip:` URI, dialled directly (its host and port are the next hop).
    Uri(String),
    /// `to` (a number or URI) through the configuration's `[trunks.NAME]`.
    Trunk { trunk: String, to: String },
}

/// One caller turn: wait, act, then listen for the agent's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Silence sent before the action.
    pub wait_ms: u64,
    pub action: Action,
    /// Start the next turn this long after the agent's answer started (while it still speaks).
    pub barge_in_after_ms: Option<u64>,
    /// How long to wait for the agent's answer to start after the caller finished.
    pub listen_ms: u64,
    pub expect: Expectations,
}

/// What the caller does in a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Only listen (the agent's greeting, or its answer to a silence).
    Listen,
    /// Text spoken by espeak-ng at run time.
    Say(String),
    /// A WAV file (16-bit PCM mono, any rate), resampled to 8 kHz.
    Wav(PathBuf),
    /// RFC 4733 digits (0-9, *, #, A-D).
    Dtmf(String),
    /// The caller hangs up (BYE).
    Hangup,
}

impl Action {
    /// Short label for reports.
    pub fn describe(&self) -> String {
        match self {
            Action::Listen => "listen".to_string(),
            Action::Say(text) => format!("say \"{text}\""),
            Action::Wav(path) => format!("wav {}", path.display()),
            Action::Dtmf(digits) => format!("dtmf {digits}"),
            Action::Hangup => "hangup".to_string(),
        }
    }
}

/// A turn's expectations; each one set becomes a verdict in the report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expectations {
    /// The agent's answer starts within this many ms of the end of the caller's speech.
    pub within_ms: Option<u64>,
    /// The transcript of the agent's answer contains these words (or matches this regex).
    pub says: Option<SaysPattern>,
    /// The agent sends no audio while the turn listens (`listen_ms`).
    pub silence: bool,
    /// The agent hangs up (BYE) during this turn.
    pub hangup: bool,
    /// The agent transfers the call during this turn: a REFER arrives in the dialog.
    pub transfer: bool,
}

/// `expect_says`: words (all of them, in any order, case-insensitive, whole words) or `/regex/`.
#[derive(Debug, Clone)]
pub enum SaysPattern {
    Words(Vec<String>),
    Regex(regex::Regex),
}

impl PartialEq for SaysPattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SaysPattern::Words(a), SaysPattern::Words(b)) => a == b,
            (SaysPattern::Regex(a), SaysPattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl SaysPattern {
    pub fn parse(text: &str) -> Result<SaysPattern, String> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix('/').and_then(|rest| rest.strip_suffix('/')) {
            if inner.is_empty() {
                return Err("an empty /regex/".to_string());
            }
            // Case-insensitive like the word form: transcripts' capitalisation is not the agent's doing.
            return regex::RegexBuilder::new(inner)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map(SaysPattern::Regex)
                .map_err(|e| format!("not a valid regex: {e}"));
        }
        let words = normalized_words(text);
        if words.is_empty() {
            return Err("must name at least one word, or be a /regex/".to_string());
        }
        Ok(SaysPattern::Words(words))
    }

    /// Whether `transcript` says it; `Err` names the words missing.
    pub fn check(&self, transcript: &str) -> Result<(), String> {
        match self {
            SaysPattern::Regex(re) => {
                if re.is_match(transcript) {
                    Ok(())
                } else {
                    Err(format!("transcript does not match /{}/", re.as_str()))
                }
            }
            SaysPattern::Words(words) => {
                let heard = normalized_words(transcript);
                let missing: Vec<&str> = words.iter().filter(|w| !heard.contains(w)).map(String::as_str).collect();
                if missing.is_empty() { Ok(()) } else { Err(format!("transcript lacks {}", missing.join(", "))) }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SaysPattern::Words(words) => words.join(" "),
            SaysPattern::Regex(re) => format!("/{}/", re.as_str()),
        }
    }
}

/// Lower-case words of letters, digits and apostrophes.
fn normalized_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// One problem, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ScenarioError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError { key: key.into(), message: message.into() }
}

const TOP_KEYS: &[&str] =
    &["name", "calls", "concurrency", "target", "trunk", "to", "from", "call_timeout_ms", "agent_quiet_ms", "turns"];
const TURN_KEYS: &[&str] = &[
    "say",
    "wav",
    "dtmf",
    "wait_ms",
    "barge_in_after_ms",
    "hangup",
    "listen_ms",
    "expect_within_ms",
    "expect_says",
    "expect_silence",
    "expect_hangup",
    "expect_transfer",
];

/// Reads and checks the scenario at `path`; a relative `wav` is relative to the file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path.display().to_string(), e.to_string()))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scenario".into());
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &stem, &base)
}

/// Checks a scenario's text; `default_name` names it when it has no `name`, `base` anchors
/// relative `wav` paths.
pub fn parse(text: &str, default_name: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    let table: Table = toml::from_str(text).map_err(|e| err("(file)", format!("not valid TOML: {e}")))?;
    closed(&table, "", TOP_KEYS)?;
    let name = match table.get("name") {
        Some(v) => non_empty_string(v, "name", 200)?,
        None => default_name.to_string(),
    };
    let calls = positive(table.get("calls"), "calls", MAX_CALLS)?.unwrap_or(1);
    let concurrency = positive(table.get("concurrency"), "concurrency", MAX_CONCURRENCY)?.unwrap_or(1);
    let target = match (table.get("target"), table.get("trunk"), table.get("to")) {
        (Some(_), Some(_), _) => return Err(err("trunk", "give either target (a sip: URI) or trunk, not both")),
        (Some(_), None, Some(_)) => return Err(err("to", "only with trunk (target is the whole URI)")),
        (Some(v), None, None) => {
            let uri = non_empty_string(v, "target", 500)?;
            check_sip_uri(&uri).map_err(|m| err("target", m))?;
            Some(Target::Uri(uri))
        }
        (None, Some(trunk), to) => {
            let trunk = non_empty_string(trunk, "trunk", 100)?;
            let to = match to {
                Some(v) => non_empty_string(v, "to", 200)?,
                None => return Err(err("to", "the number or URI to dial through the trunk is missing")),
            };
            Some(Target::Trunk { trunk, to })
        }
        (None, None, Some(_)) => return Err(err("to", "only with trunk")),
        (None, None, None) => None,
    };
    let from = match table.get("from") {
        Some(v) => {
            let from = non_empty_string(v, "from", 64)?;
            if !crate::config::is_sip_user(&from) {
                return Err(err("from", "a caller ID: a number or a SIP user part"));
            }
            Some(from)
        }
        None => None,
    };
    let call_timeout_ms = positive(table.get("call_timeout_ms"), "call_timeout_ms", MAX_CALL_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_CALL_TIMEOUT_MS);
    let agent_quiet_ms =
        positive(table.get("agent_quiet_ms"), "agent_quiet_ms", 10_000)?.unwrap_or(DEFAULT_AGENT_QUIET_MS);
    let Some(turns_value) = table.get("turns") else {
        return Err(err("turns", "at least one [[turns]] is needed"));
    };
    let Value::Array(raw_turns) = turns_value else {
        return Err(err("turns", "must be an array of tables ([[turns]])"));
    };
    if raw_turns.is_empty() {
        return Err(err("turns", "at least one [[turns]] is needed"));
    }
    if raw_turns.len() > MAX_TURNS {
        return Err(err("turns", format!("at most {MAX_TURNS} turns")));
    }
    let mut turns = Vec::with_capacity(raw_turns.len());
    for (i, raw) in raw_turns.iter().enumerate() {
        let prefix = format!("turns[{i}]");
        let Value::Table(t) = raw else {
            return Err(err(prefix, "must be a table ([[turns]])"));
        };
        turns.push(parse_turn(t, &prefix, base, i + 1 == raw_turns.len())?);
    }
    Ok(Scenario {
        name,
        calls: u32::try_from(calls).unwrap_or(u32::MAX),
        concurrency: u32::try_from(concurrency.min(calls)).unwrap_or(1),
        target,
        from,
        call_timeout_ms,
        agent_quiet_ms,
        turns,
    })
}

fn parse_turn(t: &Table, prefix: &str, base: &Path, last: bool) -> Result<Turn, ScenarioError> {
    closed(t, prefix, TURN_KEYS)?;
    let key = |k: &str| format!("{prefix}.{k}");
    let hangup = flag(t.get("hangup"), &key("hangup"))?;
    let mut actions = Vec::new();
    if let Some(v) = t.get("say") {
        actions.push(Action::Say(non_empty_string(v, &key("say"), MAX_SAY_CHARS)?));
    }
    if let Some(v) = t.get("wav") {
        let path = PathBuf::from(non_empty_string(v, &key("wav"), 4096)?);
        let path = if path.is_relative() { base.join(path) } else { path };
        if !path.is_file() {
            return Err(err(key("wav"), format!("{} is not a readable file", path.display())));
        }
        actions.push(Action::Wav(path));
    }
    if let Some(v) = t.get("dtmf") {
        let digits = non_empty_string(v, &key("dtmf"), MAX_DTMF_DIGITS)?;
        if let Some(bad) = digits.chars().find(|c| !is_dtmf_key(*c)) {
            return Err(err(key("dtmf"), format!("'{bad}' is not a DTMF key (0-9, *, #, A-D)")));
        }
        actions.push(Action::Dtmf(digits));
    }
    if hangup {
        actions.push(Action::Hangup);
    }
    if actions.len() > 1 {
        return Err(err(prefix, "one action per turn: say, wav, dtmf or hangup"));
    }
    let action = actions.pop().unwrap_or(Action::Listen);
    let wait_ms = non_negative(t.get("wait_ms"), &key("wait_ms"), MAX_TURN_MS)?.unwrap_or(0);
    let barge_in_after_ms = positive(t.get("barge_in_after_ms"), &key("barge_in_after_ms"), MAX_TURN_MS)?;
    let within_ms = positive(t.get("expect_within_ms"), &key("expect_within_ms"), MAX_TURN_MS)?;
    let listen_ms = positive(t.get("listen_ms"), &key("listen_ms"), MAX_TURN_MS)?;
    let says = match t.get("expect_says") {
        Some(Value::String(s)) => Some(SaysPattern::parse(s).map_err(|m| err(key("expect_says"), m))?),
        Some(_) => return Err(err(key("expect_says"), "must be a string: words, or /regex/")),
        None => None,
    };
    let expect = Expectations {
        within_ms,
        says,
        silence: flag(t.get("expect_silence"), &key("expect_silence"))?,
        hangup: flag(t.get("expect_hangup"), &key("expect_hangup"))?,
        transfer: flag(t.get("expect_transfer"), &key("expect_transfer"))?,
    };
    if action == Action::Hangup {
        if !last {
            return Err(err(key("hangup"), "the caller hangs up in the last turn only"));
        }
        let expects = expect != Expectations::default() || barge_in_after_ms.is_some() || listen_ms.is_some();
        if expects {
            return Err(err(
                key("hangup"),
                "a hang-up turn listens to nothing: no expect_*, listen_ms or barge_in_after_ms",
            ));
        }
    }
    if expect.silence && (expect.within_ms.is_some() || expect.says.is_some()) {
        return Err(err(key("expect_silence"), "contradicts expect_within_ms / expect_says in the same turn"));
    }
    if barge_in_after_ms.is_some() {
        if last {
            return Err(err(key("barge_in_after_ms"), "needs a next turn to barge in with"));
        }
        if expect.silence {
            return Err(err(key("barge_in_after_ms"), "contradicts expect_silence (nothing to interrupt)"));
        }
    }
    if let (Some(listen), Some(within)) = (listen_ms, expect.within_ms)
        && listen < within
    {
        return Err(err(
            key("listen_ms"),
            format!("shorter than expect_within_ms ({within}): the answer could not be seen"),
        ));
    }
    let listen_ms = listen_ms.unwrap_or_else(|| DEFAULT_LISTEN_MS.max(expect.within_ms.unwrap_or(0)));
    Ok(Turn { wait_ms, action, barge_in_after_ms, listen_ms, expect })
}

pub fn is_dtmf_key(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

/// A `sip:` URI we can dial directly: `sip:[user@]host[:port][;params]`.
pub fn check_sip_uri(uri: &str) -> Result<(), String> {
    let Some(rest) = uri.strip_prefix("sip:") else {
        return Err("must be a sip: URI (sip:user@host:port)".to_string());
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c);
    if host.is_empty() || host.starts_with(':') || host.starts_with(';') || rest.chars().any(forbidden) {
        return Err("must be a sip: URI with a host (no spaces, <, >, \")".to_string());
    }
    Ok(())
}

fn closed(table: &Table, prefix: &str, known: &[&str]) -> Result<(), ScenarioError> {
    for k in table.keys() {
        if !known.contains(&k.as_str()) {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            return Err(err(key, format!("unknown key (known: {})", known.join(", "))));
        }
    }
    Ok(())
}

fn non_empty_string(v: &Value, key: &str, max_chars: usize) -> Result<String, ScenarioError> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err(err(key, "must not be empty")),
        Value::String(s) if s.chars().count() > max_chars => Err(err(key, format!("at most {max_chars} characters"))),
        Value::String(s) if s.chars().any(|c| c.is_control() && c != '\n') => {
            Err(err(key, "must not contain control characters"))
        }
        Value::String(s) => Ok(s.trim().to_string()),
        _ => Err(err(key, "must be a string")),
    }
}

fn positive(v: Option<&Value>, key: &str, max: u64) -> Result<Option<u64>, ScenarioError> {
    match v {
        None => Ok(None),
        Some(Value::Integer(n)) if *n >= 1 && (*n as u64) <= max => Ok(Some(*n as u64)),
        Some(Value::Integer(n)) if *n >= 1 => Err(err(key, format!("at most {max}"))),
        Some(_) => Err(err(key, "must be a positive integer")),
    }
}

fn non_negative(v: Option<&Value>, key: &str, max: u64) -> Result<Option<u64>, ScenarioError> {
    match v {
        None => Ok(None),
        Some(Value::Integer(n)) if *n >= 0 && (*n as u64) <= max => Ok(Some(*n as u64)),
        Some(Value::Integer(n)) if *n >= 0 => Err(err(key, format!("at most {max}"))),
        Some(_) => Err(err(key, "must be a non-negative integer")),
    }
}

fn flag(v: Option<&Value>, key: &str) -> Result<bool, ScenarioError> {
    match v {
        None => Ok(false),
        Some(Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(err(key, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(text, "t", Path::new("."))
    }

    fn error_of(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    const OK: &str = r#"
        name = "smoke"
        calls = 4
        concurrency = 2
        target = "sip:agent@127.0.0.1:5060"
        from = "+15550001"
        [[turns]]
        expect_within_ms = 3000
        [[turns]]
        say = "I want a refund"
        wait_ms = 200
        barge_in_after_ms = 500
        expect_says = "refund, order"
        [[turns]]
        dtmf = "12#"
        expect_says = "/you pressed [0-9]/"
        [[turns]]
        expect_silence = true
        listen_ms = 1500
        [[turns]]
        hangup = true
    "#;

    #[test]
    fn a_complete_scenario_is_read() {
        let s = parse_str(OK).unwrap();
        assert_eq!(s.name, "smoke");
        assert_eq!((s.calls, s.concurrency), (4, 2));
        assert_eq!(s.target, Some(Target::Uri("sip:agent@127.0.0.1:5060".into())));
        assert_eq!(s.turns.len(), 5);
        assert_eq!(s.turns[0].action, Action::Listen);
        assert_eq!(s.turns[0].listen_ms, 5000);
        assert_eq!(s.turns[1].action, Action::Say("I want a refund".into()));
        assert_eq!(s.turns[1].barge_in_after_ms, Some(500));
        assert_eq!(s.turns[1].expect.says, Some(SaysPattern::Words(vec!["refund".into(), "order".into()])));
        assert_eq!(s.turns[2].action, Action::Dtmf("12#".into()));
        assert!(s.turns[3].expect.silence);
        assert_eq!(s.turns[3].listen_ms, 1500);
        assert_eq!(s.turns[4].action, Action::Hangup);
        assert_eq!(s.call_timeout_ms, DEFAULT_CALL_TIMEOUT_MS);
    }

    #[test]
    fn concurrency_is_at_most_the_calls_and_a_trunk_target_needs_to() {
        let s = parse_str("calls = 2\nconcurrency = 9\ntrunk = \"carrier\"\nto = \"5551234\"\n[[turns]]\n").unwrap();
        assert_eq!(s.concurrency, 2);
        assert_eq!(s.target, Some(Target::Trunk { trunk: "carrier".into(), to: "5551234".into() }));
        assert_eq!(
            error_of("trunk = \"c\"\n[[turns]]\n"),
            "to: the number or URI to dial through the trunk is missing"
        );
    }

    #[test]
    fn every_bad_field_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("calls = 0\n[[turns]]\n", "calls: must be a positive integer"),
            ("calls = \"3\"\n[[turns]]\n", "calls: must be a positive integer"),
            ("calls = 20000\n[[turns]]\n", "calls: at most 10000"),
            ("concurrency = -1\n[[turns]]\n", "concurrency: must be a positive integer"),
            ("colour = 1\n[[turns]]\n", "colour: unknown key"),
            ("target = \"http://x\"\n[[turns]]\n", "target: must be a sip: URI"),
            ("target = \"sip:a@b\"\ntrunk = \"t\"\n[[turns]]\n", "trunk: give either target"),
            ("from = \"<evil>\"\n[[turns]]\n", "from: a caller ID"),
            ("call_timeout_ms = 0\n[[turns]]\n", "call_timeout_ms: must be a positive integer"),
            ("", "turns: at least one"),
            ("turns = 3\n", "turns: must be an array"),
            (
                "[[turns]]\n[[turns]]\n[[turns]]\nexpect_within_ms = -5\n",
                "turns[2].expect_within_ms: must be a positive integer",
            ),
            ("[[turns]]\nexpect_within_ms = 1.5\n", "turns[0].expect_within_ms: must be a positive integer"),
            ("[[turns]]\nsay = \"\"\n", "turns[0].say: must not be empty"),
            ("[[turns]]\nsay = 3\n", "turns[0].say: must be a string"),
            ("[[turns]]\nsay = \"hi\"\ndtmf = \"1\"\n", "turns[0]: one action per turn"),
            ("[[turns]]\ndtmf = \"12x\"\n", "turns[0].dtmf: 'x' is not a DTMF key"),
            ("[[turns]]\nwav = \"/nonexistent.wav\"\n", "turns[0].wav: /nonexistent.wav is not a readable file"),
            ("[[turns]]\nwait_ms = -1\n", "turns[0].wait_ms: must be a non-negative integer"),
            ("[[turns]]\nhangup = \"yes\"\n", "turns[0].hangup: must be true or false"),
            ("[[turns]]\nhangup = true\n[[turns]]\n", "turns[0].hangup: the caller hangs up in the last turn only"),
            ("[[turns]]\nhangup = true\nexpect_hangup = true\n", "turns[0].hangup: a hang-up turn listens to nothing"),
            ("[[turns]]\nexpect_says = \"\"\n", "turns[0].expect_says: must name at least one word"),
            ("[[turns]]\nexpect_says = \"/(/\"\n", "turns[0].expect_says: not a valid regex"),
            ("[[turns]]\nexpect_says = 1\n", "turns[0].expect_says: must be a string"),
            ("[[turns]]\nexpect_silence = true\nexpect_within_ms = 100\n", "turns[0].expect_silence: contradicts"),
            ("[[turns]]\nbarge_in_after_ms = 300\n", "turns[0].barge_in_after_ms: needs a next turn"),
            (
                "[[turns]]\nlisten_ms = 100\nexpect_within_ms = 200\n",
                "turns[0].listen_ms: shorter than expect_within_ms",
            ),
            ("[[turns]]\nexpect_transfer = 1\n", "turns[0].expect_transfer: must be true or false"),
            ("[[turns]]\nsay = \"hi\"\nexpect_wihtin_ms = 100\n", "turns[0].expect_wihtin_ms: unknown key"),
            ("[[turns]]\nexpect_hangup = \"true\"\n", "turns[0].expect_hangup: must be true or false"),
            ("this is not toml", "(file): not valid TOML"),
        ];
        for (text, expected) in cases {
            let got = error_of(text);
            assert!(got.starts_with(expected), "{text:?}: got {got:?}, expected {expected:?}");
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../../../config/scenarios/example.toml");
        let s = parse(text, "example", Path::new("config/scenarios")).unwrap();
        assert_eq!(s.name, "example");
        assert_eq!(s.turns.last().map(|t| &t.action), Some(&Action::Hangup));
    }

    #[test]
    fn says_matches_whole_words_or_a_regex() {
        let words = SaysPattern::parse("Refund ORDER").unwrap();
        assert!(words.check("Sure, your order is refunded... refund done").is_ok());
        assert_eq!(words.check("your order").unwrap_err(), "transcript lacks refund");
        assert!(words.check("refunds for orders").is_err(), "whole words only");
        let re = SaysPattern::parse("/you said .* (\\d+) milliseconds/").unwrap();
        assert!(re.check("You said something for 1200 milliseconds.").is_ok());
        assert!(re.check("I got your message.").is_err());
    }
}
