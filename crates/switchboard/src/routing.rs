//! Which agent answers a dialled number. A deliberately small first version: the per-number
//! router (patterns, caller-ID, trunks, reject routes) will replace it behind the same function.

use std::collections::BTreeMap;

use crate::config::AgentConfig;

/// Picks the agent for `dialled`: the first agent (in name order) with a matching number, else
/// `default` when it lists no numbers of its own. `None` means 404 Not Found.
pub fn route<'a>(agents: &'a BTreeMap<String, AgentConfig>, dialled: &str) -> Option<(&'a str, &'a AgentConfig)> {
    let claims = |agent: &AgentConfig| agent.numbers.0.iter().any(|pattern| number_matches(pattern, dialled));
    agents
        .iter()
        .find(|(_, agent)| claims(agent))
        .or_else(|| agents.get_key_value("default").filter(|(_, agent)| agent.numbers.0.is_empty()))
        .map(|(name, agent)| (name.as_str(), agent))
}

/// `pattern` is an exact number or a prefix ending in `*`. A leading `+` is ignored on both sides,
/// so `+15550001000` and `15550001000` are the same number.
fn number_matches(pattern: &str, dialled: &str) -> bool {
    let pattern = pattern.trim_start_matches('+');
    let dialled = dialled.trim_start_matches('+');
    match pattern.strip_suffix('*') {
        Some(prefix) => dialled.starts_with(prefix),
        None => dialled == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StringList;

    fn agents(entries: &[(&str, &[&str])]) -> BTreeMap<String, AgentConfig> {
        entries
            .iter()
            .map(|(name, numbers)| {
                let agent = AgentConfig {
                    numbers: StringList(numbers.iter().map(|n| n.to_string()).collect()),
                    ..AgentConfig::default()
                };
                (name.to_string(), agent)
            })
            .collect()
    }

    #[test]
    fn exact_and_prefix_numbers_win_over_default() {
        let a = agents(&[("default", &[]), ("sales", &["15550001000"]), ("support", &["+1555002*"])]);
        assert_eq!(route(&a, "15550001000").map(|r| r.0), Some("sales"));
        assert_eq!(route(&a, "+15550029999").map(|r| r.0), Some("support"));
        assert_eq!(route(&a, "4711").map(|r| r.0), Some("default"));
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let a = agents(&[("default", &["1555*"])]);
        assert_eq!(route(&a, "15551234").map(|r| r.0), Some("default"));
        assert!(route(&a, "999").is_none());
        assert!(route(&agents(&[("sales", &["1"])]), "2").is_none());
    }
}
