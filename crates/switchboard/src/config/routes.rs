//! `[routing]` and `[[routes]]`: the route table (docs/configuration.md, "Routes"), compiled
//! once at load time into a [`RouteTable`] so the call path only matches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchboard_router::render::unknown_placeholders;
use switchboard_router::{Action, Hours, IpNet, NumberPattern, RejectCode, Route, RouteTable, TimeZone};

use super::{Config, StringList};

/// `[routing]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// IANA time zone `hours` are read in (a route's `time_zone` overrides it).
    pub time_zone: String,
    /// INVITE headers captured for `{header.NAME}` placeholders; no other header reaches the model.
    pub headers: StringList,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { time_zone: "UTC".into(), headers: StringList::default() }
    }
}

/// At most this many captured headers, each value cut to [`MAX_HEADER_VALUE_BYTES`].
pub const MAX_CAPTURED_HEADERS: usize = 16;
pub const MAX_HEADER_VALUE_BYTES: usize = 256;
/// At most this many `[[routes]]`.
pub const MAX_ROUTES: usize = 1000;

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteConfig {
    /// For logs, CDRs and `switchboard route`; `#<index>` (from 0) when empty.
    pub name: String,
    /// Required: an exact number, a prefix ending in `*`, a `/regex/`, or a list of them.
    pub dialled: Option<Patterns>,
    /// The caller ID (P-Asserted-Identity, else From), same syntax; empty: any caller.
    pub caller: Patterns,
    /// IP addresses, CIDR networks or `[trunks.NAME]` names; empty: any source.
    pub source: Patterns,
    /// e.g. `"mon-fri 08:00-18:00, sat 09:00-13:00"`; empty: always.
    pub hours: String,
    /// Overrides `routing.time_zone` for this route's `hours`.
    pub time_zone: String,
    /// The agent that answers (or `reject`).
    pub agent: String,
    /// Refuse the call with this code (403, 404, 480, 486 or 603) instead.
    pub reject: Option<u16>,
    /// Overrides the agent's `record`.
    pub record: Option<bool>,
}

/// One string or a list of strings (never split at commas: a regex may hold one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(pub Vec<String>);

impl Serialize for Patterns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(one) => Patterns(vec![one]),
            Raw::Many(many) => Patterns(many),
        })
    }
}

/// Checks `[routing]`, `[[routes]]`, every agent's `numbers` and placeholders, and compiles the
/// table: the `[[routes]]` in order, then each agent's `numbers` (agents in name order), then
/// `default` as the catch-all when it has no numbers of its own.
pub(super) fn route_table(
    cfg: &Config,
    trunk_addresses: &BTreeMap<String, SocketAddr>,
    bad: &mut impl FnMut(&str, String),
) -> RouteTable {
    let zone = |name: &str, key: &str, bad: &mut dyn FnMut(&str, String)| match TimeZone::get(name) {
        Ok(zone) => zone,
        Err(e) => {
            bad(key, format!("`{name}` is not a known IANA time zone (e.g. Europe/Berlin): {e}"));
            TimeZone::UTC
        }
    };
    let default_zone = zone(&cfg.routing.time_zone, "routing.time_zone", bad);
    if cfg.routing.headers.0.len() > MAX_CAPTURED_HEADERS {
        bad("routing.headers", format!("at most {MAX_CAPTURED_HEADERS} headers"));
    }
    for header in &cfg.routing.headers.0 {
        if header.is_empty() || !header.chars().all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)) {
            bad("routing.headers", format!("`{header}` is not a header name"));
        }
    }
    if cfg.routes.len() > MAX_ROUTES {
        bad("routes", format!("at most {MAX_ROUTES} routes"));
    }

    let mut table = Vec::new();
    let mut names = BTreeSet::new();
    for (index, route) in cfg.routes.iter().enumerate() {
        let key = |field: &str| format!("routes[{index}].{field}");
        let patterns = |field: &str, list: &Patterns, bad: &mut dyn FnMut(&str, String)| -> Vec<NumberPattern> {
            list.0
                .iter()
                .filter_map(|text| NumberPattern::parse(text).map_err(|e| bad(&key(field), e.to_string())).ok())
                .collect()
        };
        let dialled = match &route.dialled {
            Some(list) if !list.0.is_empty() => patterns("dialled", list, bad),
            _ => {
                bad(&key("dialled"), "is required (a number, a prefix ending in `*`, a /regex/; `*` for any)".into());
                Vec::new()
            }
        };
        let caller = patterns("caller", &route.caller, bad);
        let mut source = Vec::new();
        for text in &route.source.0 {
            if let Ok(net) = IpNet::parse(text) {
                source.push(net);
            } else if cfg.trunks.contains_key(text) {
                // A trunk whose address did not resolve is reported under trunks.NAME.address.
                if let Some(addr) = trunk_addresses.get(text) {
                    source.push(IpNet::host(addr.ip()));
                }
                // ...and the addresses its calls come from (`sources`; a bad one is reported
                // under trunks.NAME.sources).
                let sources = cfg.trunks.get(text).map(|trunk| trunk.sources.0.as_slice()).unwrap_or_default();
                source.extend(sources.iter().filter_map(|net| IpNet::parse(net).ok()));
            } else {
                bad(&key("source"), format!("`{text}` is not an IP address, a CIDR network or a trunk name"));
            }
        }
        let hours = if route.hours.trim().is_empty() {
            None
        } else {
            Hours::parse(&route.hours).map_err(|e| bad(&key("hours"), e.to_string())).ok()
        };
        let time_zone = if route.time_zone.is_empty() {
            default_zone.clone()
        } else {
            zone(&route.time_zone, &key("time_zone"), bad)
        };
        let action = match (route.agent.as_str(), route.reject) {
            ("", None) => {
                bad(&key("agent"), "a route needs `agent = \"NAME\"` or `reject = CODE`".into());
                None
            }
            (agent, Some(_)) if !agent.is_empty() => {
                bad(&key("reject"), "a route has either `agent` or `reject`, not both".into());
                None
            }
            (agent, None) => {
                if !cfg.agents.contains_key(agent) {
                    bad(&key("agent"), format!("no agent named `{agent}` (inline [agents.NAME] or in agents_dir)"));
                }
                Some(Action::Agent(agent.to_string()))
            }
            (_, Some(code)) => {
                if route.record.is_some() {
                    bad(&key("record"), "a reject route records nothing".into());
                }
                let codes = RejectCode::ALLOWED.map(|c| c.to_string()).join(", ");
                RejectCode::new(code).map(Action::Reject).or_else(|| {
                    bad(&key("reject"), format!("{code} is not one of {codes}"));
                    None
                })
            }
        };
        let name = if route.name.is_empty() { format!("#{index}") } else { route.name.clone() };
        if !names.insert(name.clone()) {
            bad(&key("name"), format!("`{name}` names another route too"));
        }
        if let Some(action) = action {
            table.push(Route { name, dialled, caller, source, hours, time_zone, action, record: route.record });
        }
    }

    // Agents' `numbers` (the first version of routing) come after the explicit routes.
    for (name, agent) in &cfg.agents {
        let key = format!("agents.{name}.numbers");
        let dialled: Vec<NumberPattern> = agent
            .numbers
            .0
            .iter()
            .filter_map(|text| NumberPattern::parse(text).map_err(|e| bad(&key, e.to_string())).ok())
            .collect();
        if !dialled.is_empty() {
            let mut route = Route::catch_all(key, name.as_str());
            route.dialled = dialled;
            table.push(route);
        }
        for (field, text) in [("instructions", &agent.instructions), ("greeting", &agent.greeting)] {
            for unknown in unknown_placeholders(text) {
                bad(
                    &format!("agents.{name}.{field}"),
                    format!(
                        "unknown placeholder `{unknown}`: known are {{caller}}, {{dialled}}, {{agent}}, {{call_id}}, \
                         {{header.NAME}}; outbound call variables are written {{{{name}}}}"
                    ),
                );
            }
        }
    }
    if cfg.agents.get("default").is_some_and(|agent| agent.numbers.0.is_empty()) {
        table.push(Route::catch_all("agents.default", "default"));
    }
    RouteTable::new(table)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use switchboard_router::{Decision, Facts, Timestamp};

    use crate::config::{ConfigErrors, Resolved, load_with_env};

    fn write_in(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }

    fn load(text: &str) -> Result<(crate::config::Config, Resolved), ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        load_with_env(&write_in(dir.path(), "switchboard.toml", text), &[])
    }

    fn keys(err: &ConfigErrors) -> Vec<String> {
        err.0.iter().map(|p| p.key.clone()).collect()
    }

    fn decide<'a>(resolved: &'a Resolved, dialled: &'a str) -> Decision<'a> {
        let facts = Facts { dialled, caller: "15551230000", source: "192.0.2.1".parse().unwrap() };
        resolved.routes.decide(&facts, "2026-12-02T10:00:00Z".parse::<Timestamp>().unwrap())
    }

    #[test]
    fn routes_come_first_then_numbers_then_default() {
        let (_, resolved) = load(
            "[[routes]]\nname = \"busy\"\ndialled = \"100\"\nreject = 486\n\
             [[routes]]\ndialled = [\"2*\", \"/3[0-9]/\"]\nagent = \"sales\"\nrecord = true\n\
             [agents.default]\n[agents.sales]\nnumbers = [\"100\", \"400\"]\n",
        )
        .unwrap();
        assert!(matches!(decide(&resolved, "100"), Decision::Reject { route: "busy", .. }));
        assert_eq!(decide(&resolved, "31"), Decision::Agent { route: "#1", agent: "sales", record: Some(true) });
        assert!(matches!(decide(&resolved, "400"), Decision::Agent { route: "agents.sales.numbers", .. }));
        assert!(matches!(decide(&resolved, "999"), Decision::Agent { route: "agents.default", agent: "default", .. }));
    }

    #[test]
    fn without_a_catch_all_an_unmatched_number_is_no_match() {
        let (_, resolved) = load("[agents.default]\nnumbers = [\"1*\"]\n").unwrap();
        assert_eq!(decide(&resolved, "2"), Decision::NoMatch);
    }

    #[test]
    fn route_problems_name_their_keys() {
        let err = load(
            "[routing]\ntime_zone = \"Mars/Olympus\"\nheaders = [\"X Bad\"]\n\
             [[routes]]\ndialled = \"1\"\nreject = 500\n\
             [[routes]]\ndialled = \"/(/\"\nagent = \"ghost\"\n\
             [[routes]]\nagent = \"default\"\nhours = \"mon-fry 08:00-18:00\"\n\
             [[routes]]\ndialled = \"1\"\nagent = \"default\"\nreject = 403\n\
             [[routes]]\ndialled = \"1\"\nsource = \"nowhere\"\ntime_zone = \"Nope\"\n\
             [agents.default]\ninstructions = \"Hi {caller}, {colour}\"\n",
        )
        .unwrap_err();
        let keys = keys(&err);
        for expected in [
            "routing.time_zone",
            "routing.headers",
            "routes[0].reject",
            "routes[1].dialled",
            "routes[1].agent",
            "routes[2].dialled",
            "routes[2].hours",
            "routes[3].reject",
            "routes[4].source",
            "routes[4].time_zone",
            "routes[4].agent",
            "agents.default.instructions",
        ] {
            assert!(keys.iter().any(|k| k == expected), "missing {expected} in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("{colour}") && text.contains("500 is not one of 403, 404, 480, 486, 603"), "{text}");
    }

    #[test]
    fn a_source_may_name_a_trunk() {
        let (_, resolved) = load(
            "[trunks.pbx]\naddress = \"192.0.2.1:5060\"\n\
             [[routes]]\ndialled = \"*\"\nsource = \"pbx\"\nagent = \"default\"\nname = \"from-pbx\"\n\
             [agents.default]\nnumbers = [\"5\"]\n",
        )
        .unwrap();
        assert!(matches!(decide(&resolved, "9"), Decision::Agent { route: "from-pbx", .. }));
    }

    #[test]
    fn a_source_naming_a_trunk_matches_the_trunks_sources_too() {
        let (_, resolved) = load(
            "[trunks.carrier]\naddress = \"203.0.113.1:5060\"\nsources = [\"192.0.2.0/24\"]\n\
             [[routes]]\ndialled = \"*\"\nsource = \"carrier\"\nagent = \"default\"\nname = \"from-carrier\"\n\
             [agents.default]\nnumbers = [\"5\"]\n",
        )
        .unwrap();
        // decide() calls from 192.0.2.1: inside the trunk's sources, not its address.
        assert!(matches!(decide(&resolved, "9"), Decision::Agent { route: "from-carrier", .. }));
    }
}
