//! `[agents.NAME.transfer]`: how an agent hands the caller to a human (docs/configuration.md,
//! "Transfer to a human"). Targets only ever come from here: the model picks a queue *name*
//! from the configured ones, never a number or URI (toll-fraud safety).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TrunkConfig;

/// The placeholders a transfer header's value may use.
pub const HEADER_PLACEHOLDERS: [&str; 4] = ["{call_id}", "{agent}", "{queue}", "{reason}"];

/// Header values are cut to this many bytes (after the placeholders are filled).
pub const MAX_HEADER_VALUE: usize = 256;

/// Extra headers on a REFER / INVITE at most.
pub const MAX_HEADERS: usize = 16;

/// Queues per agent at most (they become a JSON Schema `enum` the model reads).
pub const MAX_QUEUES: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TransferConfig {
    /// `refer`: blind transfer, the caller's side is asked to call the queue (RFC 3515);
    /// `bridge`: the gateway calls the queue through `trunk` and relays the audio.
    pub method: TransferMethod,
    /// `bridge` only: the `[trunks.X]` the human is called through.
    pub trunk: String,
    /// Said by the agent before the transfer starts; empty: nothing.
    pub announce: String,
    /// `agent` (back to the agent, which is told what happened), `hangup` (the agent says
    /// `goodbye` and the call ends) or `queue:NAME` (try that queue once, then the agent).
    pub on_failure: String,
    /// `refer`: no final NOTIFY (or no answer to the REFER) within this long is a failure.
    pub refer_timeout_secs: u64,
    /// `bridge`: the human's phone rings this long at most (then CANCEL).
    pub ring_timeout_secs: u64,
    /// Extra headers on the REFER / INVITE (names start with `X-`); values may use
    /// `{call_id}`, `{agent}`, `{queue}` and `{reason}`. Setting the table replaces the default.
    pub headers: BTreeMap<String, String>,
    /// A key (`0`-`9`, `*`, `#`) that transfers the caller to `default_queue`; empty: none.
    pub dtmf: String,
    /// The queue the rules (`dtmf`, `on_max_duration`, `on_ai_unreachable`) transfer to.
    pub default_queue: String,
    /// At `max_call_secs`, transfer to `default_queue` instead of saying goodbye.
    pub on_max_duration: bool,
    /// When the AI cannot be reached again mid-call, transfer to `default_queue` instead of
    /// the give-up prompt and BYE.
    pub on_ai_unreachable: bool,
    /// Queue name -> SIP URI (`sip:`, `sips:` or `tel:`).
    pub queues: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMethod {
    Refer,
    Bridge,
}

impl TransferMethod {
    pub fn label(self) -> &'static str {
        match self {
            TransferMethod::Refer => "refer",
            TransferMethod::Bridge => "bridge",
        }
    }
}

/// What happens when a transfer fails (`on_failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Back to the agent, which is told what happened and speaks.
    Agent,
    /// The agent says `goodbye`, then BYE.
    Hangup,
    /// One more try, to this queue; if that fails too, back to the agent.
    Queue(String),
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            method: TransferMethod::Refer,
            trunk: String::new(),
            announce: "Please hold while I connect you.".into(),
            on_failure: "agent".into(),
            refer_timeout_secs: 30,
            ring_timeout_secs: 30,
            headers: default_headers(),
            dtmf: String::new(),
            default_queue: String::new(),
            on_max_duration: false,
            on_ai_unreachable: false,
            queues: BTreeMap::new(),
        }
    }
}

fn default_headers() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("X-Switchboard-Call-Id".into(), "{call_id}".into()),
        ("X-Switchboard-Agent".into(), "{agent}".into()),
        ("X-Switchboard-Queue".into(), "{queue}".into()),
        ("X-Switchboard-Reason".into(), "{reason}".into()),
    ])
}

impl TransferConfig {
    /// Whether the agent can transfer at all (some queue is configured).
    pub fn enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    /// `on_failure`, parsed (validated at load: anything else is a configuration error).
    pub fn on_failure(&self) -> OnFailure {
        match self.on_failure.as_str() {
            "hangup" => OnFailure::Hangup,
            other => match other.strip_prefix("queue:") {
                Some(queue) => OnFailure::Queue(queue.to_owned()),
                None => OnFailure::Agent,
            },
        }
    }

    /// The key of the DTMF rule, if one is set.
    pub fn dtmf_key(&self) -> Option<char> {
        self.dtmf.chars().next()
    }
}

/// Whether `uri` is a target we dial or refer to: a `sip:`/`sips:` URI with a host, or a
/// `tel:` number, with nothing that could smuggle a header or a second URI in.
pub fn valid_target(uri: &str) -> bool {
    if uri.is_empty()
        || uri.len() > 256
        || uri.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
    {
        return false;
    }
    let Some(parsed) = switchboard_sip::message::SipUri::parse(uri) else { return false };
    match parsed.scheme.as_str() {
        "sip" | "sips" => !parsed.host.is_empty(),
        "tel" => parsed.user.as_deref().is_some_and(|n| {
            let digits = n.strip_prefix('+').unwrap_or(n);
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || "-.()".contains(c))
        }),
        _ => false,
    }
}

/// A header name we send: `X-` then a token (RFC 3261 §25.1).
fn valid_header_name(name: &str) -> bool {
    name.len() > 2
        && name.len() <= 64
        && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// Checks `[agents.NAME.transfer]`; every problem goes to `bad` with its dotted key.
pub fn validate_transfer(
    agent: &str,
    cfg: &TransferConfig,
    trunks: &BTreeMap<String, TrunkConfig>,
    bad: &mut dyn FnMut(&str, String),
) {
    let key = |field: &str| format!("agents.{agent}.transfer.{field}");
    if cfg.queues.len() > MAX_QUEUES {
        bad(&key("queues"), format!("at most {MAX_QUEUES} queues"));
    }
    for (name, uri) in &cfg.queues {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bad(&key("queues"), format!("`{name}`: a queue name is 1-64 letters, digits, `-`, `_` or `.`"));
        }
        if !valid_target(uri) {
            bad(&key(&format!("queues.{name}")), format!("`{uri}` is not a sip:, sips: or tel: URI"));
        }
    }
    let known = |queue: &str| cfg.queues.contains_key(queue);
    match cfg.on_failure.as_str() {
        "agent" | "hangup" => {}
        other => match other.strip_prefix("queue:") {
            Some(queue) if known(queue) => {}
            Some(queue) => bad(&key("on_failure"), format!("queue `{queue}` is not in transfer.queues")),
            None => bad(&key("on_failure"), format!("`{other}` must be `agent`, `hangup` or `queue:NAME`")),
        },
    }
    let rules = !cfg.dtmf.is_empty() || cfg.on_max_duration || cfg.on_ai_unreachable;
    if !cfg.default_queue.is_empty() && !known(&cfg.default_queue) {
        bad(&key("default_queue"), format!("queue `{}` is not in transfer.queues", cfg.default_queue));
    } else if rules && cfg.default_queue.is_empty() {
        bad(&key("default_queue"), "dtmf, on_max_duration and on_ai_unreachable transfer to it: set it".into());
    }
    let one_key = cfg.dtmf.len() == 1 && cfg.dtmf.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#');
    if !cfg.dtmf.is_empty() && !one_key {
        bad(&key("dtmf"), format!("`{}` must be one key: 0-9, * or #", cfg.dtmf));
    }
    match cfg.method {
        TransferMethod::Bridge if cfg.trunk.is_empty() => {
            bad(&key("trunk"), "method = \"bridge\" calls the human through a trunk: name one".into());
        }
        _ if !cfg.trunk.is_empty() && !trunks.contains_key(&cfg.trunk) => {
            bad(&key("trunk"), format!("no [trunks.{}]", cfg.trunk));
        }
        _ => {}
    }
    if !(1..=300).contains(&cfg.refer_timeout_secs) {
        bad(&key("refer_timeout_secs"), "must be between 1 and 300".into());
    }
    if !(1..=300).contains(&cfg.ring_timeout_secs) {
        bad(&key("ring_timeout_secs"), "must be between 1 and 300".into());
    }
    if cfg.announce.len() > 1000 {
        bad(&key("announce"), "must be at most 1000 bytes".into());
    }
    if cfg.headers.len() > MAX_HEADERS {
        bad(&key("headers"), format!("at most {MAX_HEADERS} headers"));
    }
    for (name, value) in &cfg.headers {
        if !valid_header_name(name) {
            bad(&key("headers"), format!("`{name}`: header names start with `X-` and are a SIP token"));
        }
        if value.chars().any(char::is_control) {
            bad(&key(&format!("headers.{name}")), "must not contain control characters".into());
        }
        for placeholder in switchboard_router::render::written_placeholders(value) {
            if !HEADER_PLACEHOLDERS.contains(&placeholder) {
                bad(
                    &key(&format!("headers.{name}")),
                    format!("`{placeholder}` is not one of {}", HEADER_PLACEHOLDERS.join(", ")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cfg: &TransferConfig, trunks: &BTreeMap<String, TrunkConfig>) -> Vec<String> {
        let mut found = Vec::new();
        validate_transfer("a", cfg, trunks, &mut |key, _| found.push(key.to_owned()));
        found
    }

    fn with_queues() -> TransferConfig {
        TransferConfig {
            queues: BTreeMap::from([
                ("sales".into(), "sip:sales@pbx.example.com".into()),
                ("support".into(), "tel:+44-20-7946-0000".into()),
            ]),
            ..TransferConfig::default()
        }
    }

    /// The commented example in config/agents/support.toml, uncommented, is a valid agent file;
    /// a misspelt key in it is reported with the file's path.
    #[test]
    fn the_shipped_example_loads_from_an_agent_file() {
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/agents/support.toml"),
        )
        .unwrap();
        let example: String = shipped
            .lines()
            .skip_while(|l| *l != "# [transfer]")
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(example.contains("[transfer.queues]"), "{example}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agents")).unwrap();
        std::fs::write(dir.path().join("agents/support.toml"), &example).unwrap();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(&config, "agents_dir = \"agents\"\n").unwrap();
        let (cfg, _) = crate::config::load_with_env(&config, &[]).unwrap();
        let transfer = &cfg.agents["support"].transfer;
        assert_eq!(transfer.dtmf_key(), Some('0'));
        assert_eq!(transfer.queues.len(), 2);
        assert!(transfer.on_ai_unreachable);

        std::fs::write(
            dir.path().join("agents/support.toml"),
            example.replace("[transfer.queues]", "[transfer.qeues]"),
        )
        .unwrap();
        let err = crate::config::load_with_env(&config, &[]).unwrap_err();
        assert!(err.0.iter().any(|p| p.key.ends_with("transfer.qeues")), "{err}");
    }

    #[test]
    fn targets_are_sip_sips_or_tel_only() {
        for good in ["sip:sales@pbx.example.com", "sips:q@10.0.0.1:5061", "sip:10.0.0.1", "tel:+442079460000"] {
            assert!(valid_target(good), "{good}");
        }
        for bad in [
            "",
            "http://x",
            "sip:",
            "tel:",
            "tel:abc",
            "sip:a@b c",
            "sip:a@b\r\nX-Evil: 1",
            "<sip:a@b>",
            "sip:a@b>,<sip:c@d",
            "mailto:a@b",
        ] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_good_transfer_section_has_no_problems() {
        let trunks = BTreeMap::from([("pstn".to_owned(), TrunkConfig::default())]);
        assert!(problems(&with_queues(), &trunks).is_empty());
        let bridge = TransferConfig {
            method: TransferMethod::Bridge,
            trunk: "pstn".into(),
            dtmf: "0".into(),
            default_queue: "support".into(),
            on_failure: "queue:sales".into(),
            on_max_duration: true,
            ..with_queues()
        };
        assert!(problems(&bridge, &trunks).is_empty());
        assert_eq!(bridge.on_failure(), OnFailure::Queue("sales".into()));
        assert_eq!(bridge.dtmf_key(), Some('0'));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let cfg = TransferConfig {
            method: TransferMethod::Bridge,
            on_failure: "queue:nowhere".into(),
            dtmf: "00".into(),
            on_ai_unreachable: true,
            refer_timeout_secs: 0,
            headers: BTreeMap::from([
                ("Contact".into(), "x".into()),
                ("X-Ok".into(), "{caller}".into()),
                ("X-Bad".into(), "a\r\nb".into()),
            ]),
            queues: BTreeMap::from([
                ("sales".into(), "http://example.com".into()),
                ("bad name".into(), "sip:x@y".into()),
            ]),
            ..TransferConfig::default()
        };
        let found = problems(&cfg, &BTreeMap::new());
        for key in [
            "agents.a.transfer.on_failure",
            "agents.a.transfer.dtmf",
            "agents.a.transfer.default_queue",
            "agents.a.transfer.trunk",
            "agents.a.transfer.refer_timeout_secs",
            "agents.a.transfer.headers",
            "agents.a.transfer.headers.X-Ok",
            "agents.a.transfer.headers.X-Bad",
            "agents.a.transfer.queues.sales",
            "agents.a.transfer.queues",
        ] {
            assert!(found.iter().any(|k| k == key), "{key} missing from {found:?}");
        }
        let unknown_default = TransferConfig { default_queue: "gone".into(), ..with_queues() };
        assert_eq!(problems(&unknown_default, &BTreeMap::new()), vec!["agents.a.transfer.default_queue"]);
        let unknown_trunk = TransferConfig { trunk: "gone".into(), ..with_queues() };
        assert_eq!(problems(&unknown_trunk, &BTreeMap::new()), vec!["agents.a.transfer.trunk"]);
    }
}
