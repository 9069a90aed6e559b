//! The effective configuration as the operator may see it (`GET /v1/config`): every value after
//! defaults and environment overrides, every secret masked.
//!
//! Masked: every [`Secret`](super::Secret) (admin token, trunk passwords, tool and CDR webhook
//! secrets: they serialize masked whatever the caller does), and, by key, what is still a plain
//! string: `realtime.api_key`, any key naming a secret, password, token or API key (except the
//! `*_env` keys, which only name an environment variable), every value of a `headers` table
//! (MCP servers' `Authorization`, transfer headers), and the user-info and query of every URL
//! (`https://user:pass@host/path?token=x` shows as `https://[redacted]@host/path?[redacted]`),
//! and the password of a `sip:user:password@host` URI anywhere (a transfer queue).

use serde_json::Value;

use super::{Config, MASKED};

/// `config` as JSON with every secret masked.
pub fn effective_json(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    mask(&mut value);
    value
}

/// Masks in place what [`effective_json`] promises (the module's list).
pub fn mask(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if key == "headers"
                    && let Value::Object(headers) = child
                {
                    headers.values_mut().for_each(mask_string);
                } else if names_a_secret(&key) {
                    mask_string(child);
                } else if key.ends_with("url")
                    && let Value::String(url) = child
                {
                    *url = mask_url(url);
                } else {
                    mask(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        Value::String(text) => {
            if let Some(masked) = mask_sip_password(text) {
                *text = masked;
            }
        }
        _ => {}
    }
}

/// `sip:user:password@host` (RFC 3261 §19.1.1 allows it, and says not to) -> `sip:user:[redacted]@host`.
fn mask_sip_password(text: &str) -> Option<String> {
    let scheme_len =
        ["sip:", "sips:"].iter().find(|s| text.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))?.len();
    let rest = &text[scheme_len..];
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{}{user}:{MASKED}@{host}", &text[..scheme_len]))
}

/// A key whose value is a secret: `api_key`, `token`, `password`, `secret`, `*_secret`... but
/// not `*_env` (the name of the variable holding one).
fn names_a_secret(key: &str) -> bool {
    !key.ends_with("_env")
        && ["secret", "password", "token", "api_key", "apikey", "authorization", "credential"]
            .iter()
            .any(|word| key.contains(word))
}

/// A non-empty string becomes [`MASKED`]; an empty one stays empty (it says "not set"); other
/// values (a table under a secret's name) are masked throughout.
fn mask_string(value: &mut Value) {
    match value {
        Value::String(text) if text.is_empty() => {}
        Value::String(_) | Value::Number(_) | Value::Bool(_) => *value = Value::String(MASKED.into()),
        Value::Object(map) => map.values_mut().for_each(mask_string),
        Value::Array(items) => items.iter_mut().for_each(mask_string),
        Value::Null => {}
    }
}

/// `scheme://user:pass@host/path?query#frag` -> `scheme://[redacted]@host/path?[redacted]`.
fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASKED}@{host}"),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?{MASKED}"),
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_query() {
        assert_eq!(mask_url("https://u:p@h.example/x?t=1"), "https://[redacted]@h.example/x?[redacted]");
        assert_eq!(mask_url("wss://api.openai.com/v1/realtime"), "wss://api.openai.com/v1/realtime");
        assert_eq!(mask_url("http://h/a@b"), "http://h/a@b", "an @ in the path is no user-info");
        assert_eq!(mask_url(""), "");
        assert_eq!(mask_sip_password("sip:q:pw@pbx.example").as_deref(), Some("sip:q:[redacted]@pbx.example"));
        assert_eq!(mask_sip_password("SIPS:q:pw@pbx").as_deref(), Some("SIPS:q:[redacted]@pbx"));
        assert_eq!(mask_sip_password("sip:sales@pbx.example:5060"), None, "no password: unchanged");
        assert_eq!(mask_sip_password("tel:+15550100"), None);
    }

    /// Every secret the configuration can hold, each set to a value of its own (from the file
    /// and from the environment): none of them appears anywhere in the view, and what is no
    /// secret is still shown.
    #[test]
    fn no_secret_value_appears_in_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        let mut file = std::fs::File::create(&path).unwrap();
        write!(
            file,
            r#"
[sip]
udp = "127.0.0.1:0"
tcp = ""
[media]
bind = "127.0.0.1"
[realtime]
url = "wss://rt-user:SECRET-rt-pass@realtime.example/v1?key=SECRET-rt-query"
[admin]
listen = "127.0.0.1:0"
token = "SECRET-admin-token"
[trunks.carrier]
address = "127.0.0.1:5070"
username = "gw-user"
password = "SECRET-trunk-password"
[cdr]
path = "{cdr}"
webhook_url = "https://cdr-user:SECRET-cdr-url@cdr.example/in?sig=SECRET-cdr-query"
secret = "SECRET-cdr-secret"
[agents.default]
instructions = "be kind"
[agents.default.tools.lookup]
description = "look it up"
url = "https://tool.example/lookup?api_key=SECRET-tool-query"
secret = "SECRET-tool-secret"
[agents.default.mcp.crm]
url = "https://mcp.example/sse"
headers = {{ Authorization = "Bearer SECRET-mcp-header" }}
[agents.default.transfer]
method = "refer"
queues = {{ sales = "sip:sales@pbx.example", vip = "sip:vip:SECRET-queue-password@pbx.example" }}
default_queue = "sales"
headers = {{ X-Ticket = "SECRET-transfer-header-{{call_id}}" }}
"#,
            cdr = dir.path().join("cdr.jsonl").display()
        )
        .unwrap();
        let env = [("SWITCHBOARD__REALTIME__API_KEY".to_string(), "SECRET-api-key".to_string())];
        let (config, _) = crate::config::load_with_env(&path, &env).unwrap();
        assert_eq!(config.realtime.api_key, "SECRET-api-key", "the environment override is in effect");

        let shown = effective_json(&config).to_string();
        assert!(!shown.contains("SECRET"), "a secret leaked: {shown}");
        for visible in ["gw-user", "be kind", "sip:sales@pbx.example", "https://mcp.example/sse", "realtime.example/v1"]
        {
            assert!(shown.contains(visible), "`{visible}` should be shown: {shown}");
        }
        let view = effective_json(&config);
        assert_eq!(view["admin"]["token"], MASKED);
        assert_eq!(view["realtime"]["api_key"], MASKED);
        assert_eq!(view["trunks"]["carrier"]["password"], MASKED);
        assert_eq!(view["sip"]["udp"], "127.0.0.1:0", "defaults and values are all there");
        assert!(view["calls"]["max_concurrent"].is_number());
    }
}
