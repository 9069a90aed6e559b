//! From an INVITE to the router's facts, and from a decision to the agent a call gets. The
//! decision itself is `switchboard_router` (a pure function of the facts and the route table,
//! compiled from the configuration at load time into `Resolved::routes`).

use std::collections::BTreeMap;

use switchboard_router::{Values, render};
use switchboard_sip::CallInfo;
use switchboard_sip::message::SipUri;

use crate::config::{AgentConfig, MAX_CAPTURED_HEADERS, MAX_HEADER_VALUE_BYTES};

/// The caller ID routes match and `{caller}` shows: P-Asserted-Identity's user part when the
/// INVITE has one (RFC 3325: asserted by a trusted network), else From's. A URI without a user
/// part gives its host; one that does not parse gives itself.
pub fn caller_id(info: &CallInfo) -> String {
    let uri = info.asserted_identity.as_deref().unwrap_or(&info.from_uri);
    match SipUri::parse(uri) {
        Some(SipUri { user: Some(user), .. }) => user.split(';').next().unwrap_or_default().to_string(),
        Some(SipUri { host, .. }) => host,
        None => uri.to_string(),
    }
}

/// The INVITE's values of the headers named in `[routing] headers` (the first value of each,
/// cut to [`MAX_HEADER_VALUE_BYTES`]). Only these can reach the model: every header is
/// caller-controlled text.
pub fn captured_headers(info: &CallInfo, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .take(MAX_CAPTURED_HEADERS)
        .filter_map(|name| {
            let (_, value) = info.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
            Some((name.clone(), truncate(value.trim(), MAX_HEADER_VALUE_BYTES).to_string()))
        })
        .collect()
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// The agent with its instructions and greeting rendered for one call.
pub fn render_agent(agent: &AgentConfig, values: &Values<'_>) -> AgentConfig {
    let mut agent = agent.clone();
    agent.instructions = render(&agent.instructions, values);
    agent.greeting = render(&agent.greeting, values);
    agent
}

/// No outbound variables (an inbound call).
pub fn no_variables() -> &'static BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    &NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(from: &str, pai: Option<&str>, headers: &[(&str, &str)]) -> CallInfo {
        CallInfo {
            call_id: "c".into(),
            from_uri: from.into(),
            from_display: None,
            to_uri: "sip:1@h".into(),
            request_uri: "sip:1@h".into(),
            dialled: "1".into(),
            source: "127.0.0.1:5060".parse().unwrap(),
            transport: switchboard_sip::Transport::Udp,
            asserted_identity: pai.map(String::from),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn the_caller_id_prefers_the_asserted_identity() {
        assert_eq!(caller_id(&info("sip:+1555@h;user=phone", None, &[])), "+1555");
        assert_eq!(caller_id(&info("sip:alice@h", Some("tel:+4930123"), &[])), "+4930123");
        assert_eq!(caller_id(&info("sip:h.example", None, &[])), "h.example");
    }

    #[test]
    fn only_configured_headers_are_captured_and_values_are_bounded() {
        let long = "é".repeat(200);
        let call = info("sip:a@h", None, &[("x-customer-id", " C-42 "), ("X-Secret", "s"), ("X-Long", &long)]);
        let names = vec!["X-Customer-Id".to_string(), "X-Long".to_string(), "X-Absent".to_string()];
        let captured = captured_headers(&call, &names);
        assert_eq!(captured[0], ("X-Customer-Id".to_string(), "C-42".to_string()));
        assert_eq!(captured[1].1.len(), MAX_HEADER_VALUE_BYTES);
        assert_eq!(captured.len(), 2, "X-Secret is not configured, X-Absent not sent");
    }
}
