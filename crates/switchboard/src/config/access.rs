//! Who may call (docs/security.md): `[trunks.NAME]` `sources`, inbound digest credentials and
//! P-Asserted-Identity trust, and the `[sip]` keys of the access screen (`unknown_sources`,
//! `ban_secs`, `max_cps`, `user_agent_deny`, `realm`). Validated here; applied by
//! `crate::access`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Config, Resolved, TrunkConfig};
use crate::admission::IpNet;

/// `sip.unknown_sources`: what a request from an address in no trunk's `sources` (and not in
/// `sip.trusted_proxies`) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSources {
    /// Served as any other (a gateway behind a trusted proxy, a lab).
    Allow,
    /// 403 Forbidden.
    Reject,
    /// No answer at all, not even 100 Trying: a scanner learns nothing.
    Drop,
}

/// The default `sip.user_agent_deny`: User-Agents of well-known SIP scanners (SIPVicious and
/// its clones, the tools behind most toll-fraud probing). Matched case-insensitively as substrings.
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "sip-scan",
    "sipsak-scan",
    "iWar",
    "sundayddr",
    "SIVuS",
    "smap",
];

/// The effective `sip.unknown_sources`: the configured value, else `allow` while no trunk lists
/// `sources` and `reject` once one does.
pub fn unknown_sources(cfg: &Config) -> UnknownSources {
    cfg.sip.unknown_sources.unwrap_or_else(|| {
        if cfg.trunks.values().any(|t| !t.sources.0.is_empty()) {
            UnknownSources::Reject
        } else {
            UnknownSources::Allow
        }
    })
}

impl TrunkConfig {
    /// Whether inbound INVITEs from this trunk must authenticate.
    pub fn challenges_inbound(&self) -> bool {
        !self.inbound_username.is_empty()
    }
}

impl Resolved {
    /// The trunk an inbound request from `ip` comes from: the first trunk (by name) whose
    /// `sources` contain it.
    pub fn trunk_for_source(&self, ip: IpAddr) -> Option<&str> {
        self.trunk_sources
            .iter()
            .find(|(_, nets)| nets.iter().any(|net| net.contains(ip)))
            .map(|(name, _)| name.as_str())
    }

    /// Whether `ip` is in `sip.trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

/// Text that goes into a quoted-string of a challenge or is compared with one: no quotes,
/// backslashes or control characters.
fn is_plain_quoted_text(text: &str) -> bool {
    !text.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// Checks the access keys; returns each trunk's parsed `sources`.
pub(super) fn validate(cfg: &Config, bad: &mut impl FnMut(&str, String)) -> Vec<(String, Vec<IpNet>)> {
    let mut trunk_sources = Vec::new();
    for (name, trunk) in &cfg.trunks {
        let key = |field: &str| format!("trunks.{name}.{field}");
        let mut nets = Vec::new();
        for entry in &trunk.sources.0 {
            match entry.parse::<IpNet>() {
                Ok(net) => nets.push(net),
                Err(e) => bad(&key("sources"), e.to_string()),
            }
        }
        if !nets.is_empty() {
            trunk_sources.push((name.clone(), nets));
        }
        if trunk.inbound_username.is_empty() && !trunk.inbound_password.is_empty() {
            bad(&key("inbound_username"), "an inbound password is set but no inbound username".into());
        }
        if !trunk.inbound_username.is_empty() {
            if trunk.inbound_password.is_empty() {
                bad(&key("inbound_password"), "inbound_username is set: an inbound password is needed".into());
            }
            if !is_plain_quoted_text(&trunk.inbound_username) {
                bad(&key("inbound_username"), "must not contain quotes, backslashes or control characters".into());
            }
        }
    }
    if let Some(UnknownSources::Allow) = cfg.sip.unknown_sources {
        // Fine: explicit. Credential-only trunks then challenge every unknown source.
    } else if cfg.trunks.values().any(|t| t.challenges_inbound() && t.sources.0.is_empty())
        && unknown_sources(cfg) != UnknownSources::Allow
    {
        bad(
            "sip.unknown_sources",
            "a trunk has inbound credentials but no sources: its calls come from unknown sources, so \
             unknown_sources must be \"allow\" (they are then challenged)"
                .into(),
        );
    }
    for entry in &cfg.sip.user_agent_deny.0 {
        if entry.trim().is_empty() {
            bad("sip.user_agent_deny", "entries must not be empty (an empty one would match every User-Agent)".into());
        }
    }
    if !is_plain_quoted_text(&cfg.sip.realm) {
        bad("sip.realm", "must not contain quotes, backslashes or control characters".into());
    }
    if cfg.sip.ban_secs > 86_400 {
        bad("sip.ban_secs", "must be at most 86400".into());
    }
    trunk_sources
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::load_with_env;

    fn load(text: &str) -> Result<(Config, Resolved), crate::config::ConfigErrors> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        load_with_env(file.path(), &[("TRUNK_IN_PW".into(), "s3cret".into())])
    }

    fn keys(text: &str) -> Vec<String> {
        load(text).err().map(|e| e.0.into_iter().map(|p| p.key).collect()).unwrap_or_default()
    }

    #[test]
    fn a_source_finds_its_trunk_first_by_name() {
        let (_, resolved) = load(
            "[trunks.b]\naddress = \"127.0.0.1:5070\"\nsources = [\"203.0.113.0/24\", \"198.51.100.7\"]\n\
             [trunks.a]\naddress = \"127.0.0.1:5071\"\nsources = [\"203.0.113.9\"]\n\
             [trunks.c]\naddress = \"127.0.0.1:5072\"\n",
        )
        .unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert_eq!(resolved.trunk_for_source(ip("203.0.113.9")), Some("a"));
        assert_eq!(resolved.trunk_for_source(ip("203.0.113.10")), Some("b"));
        assert_eq!(resolved.trunk_for_source(ip("::ffff:198.51.100.7")), Some("b"));
        assert_eq!(resolved.trunk_for_source(ip("198.51.100.8")), None);
        assert_eq!(resolved.trunk_sources.len(), 2, "a trunk without sources is not listed");
    }

    #[test]
    fn unknown_sources_defaults_to_reject_once_a_trunk_lists_sources_and_an_explicit_value_wins() {
        let (cfg, _) = load("[trunks.a]\naddress = \"127.0.0.1:5070\"\n").unwrap();
        assert_eq!(unknown_sources(&cfg), UnknownSources::Allow);
        let (cfg, _) = load("[trunks.a]\naddress = \"127.0.0.1:5070\"\nsources = [\"10.0.0.1\"]\n").unwrap();
        assert_eq!(unknown_sources(&cfg), UnknownSources::Reject);
        for (value, expected) in [("allow", UnknownSources::Allow), ("drop", UnknownSources::Drop)] {
            let (cfg, _) = load(&format!(
                "[sip]\nunknown_sources = \"{value}\"\n[trunks.a]\naddress = \"127.0.0.1:5070\"\nsources = [\"10.0.0.1\"]\n"
            ))
            .unwrap();
            assert_eq!(unknown_sources(&cfg), expected);
        }
        assert_eq!(keys("[sip]\nunknown_sources = \"maybe\"\n"), ["sip.unknown_sources"]);
    }

    #[test]
    fn a_bad_source_names_its_key() {
        assert_eq!(
            keys("[trunks.carrier]\naddress = \"127.0.0.1:5070\"\nsources = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n"),
            ["trunks.carrier.sources"]
        );
    }

    #[test]
    fn inbound_credentials_are_checked_and_read_from_the_environment() {
        let (cfg, _) = load(
            "[sip]\nunknown_sources = \"allow\"\n[trunks.pbx]\naddress = \"127.0.0.1:5070\"\n\
             inbound_username = \"pbx\"\ninbound_password_env = \"TRUNK_IN_PW\"\n",
        )
        .unwrap();
        assert_eq!(cfg.trunks["pbx"].inbound_password.expose(), "s3cret");
        assert!(!format!("{:?}", cfg.trunks["pbx"]).contains("s3cret"), "Debug redacts the inbound password");
        assert_eq!(
            keys("[trunks.pbx]\naddress = \"127.0.0.1:5070\"\nsources = [\"10.0.0.1\"]\ninbound_username = \"pbx\"\n"),
            ["trunks.pbx.inbound_password"]
        );
        assert_eq!(
            keys("[trunks.pbx]\naddress = \"127.0.0.1:5070\"\nsources = [\"10.0.0.1\"]\ninbound_password = \"x\"\n"),
            ["trunks.pbx.inbound_username"]
        );
        // Credentials but no sources: the calls come from unknown sources, which must be allowed.
        assert_eq!(
            keys(
                "[sip]\nunknown_sources = \"reject\"\n[trunks.pbx]\naddress = \"127.0.0.1:5070\"\n\
                 inbound_username = \"pbx\"\ninbound_password = \"x\"\n"
            ),
            ["sip.unknown_sources"]
        );
    }

    #[test]
    fn the_scanner_list_is_the_default_and_empty_entries_are_refused() {
        let (cfg, _) = load("").unwrap();
        assert!(cfg.sip.user_agent_deny.0.iter().any(|ua| ua == "friendly-scanner"));
        assert_eq!(keys("[sip]\nuser_agent_deny = [\"sipvicious\", \" \"]\n"), ["sip.user_agent_deny"]);
        assert_eq!(keys("[sip]\nrealm = \"a\\\"b\"\n"), ["sip.realm"]);
    }
}
