//! Who may call (docs/security.md): which trunk a call comes from, whether its
//! P-Asserted-Identity is believed, and the screen every new out-of-dialog request passes
//! before the SIP core answers it (`screen.rs`: User-Agent deny list, unknown sources, per-source
//! rate with ban, global CPS, inbound digest).

pub mod limits;
pub mod screen;

use switchboard_sip::CallInfo;

use crate::reload::Settings;

/// The trunk an inbound call comes from: the one whose `sources` hold the caller's address,
/// else (a trunk with credentials but no sources, reached from an unknown source that the
/// screen let through only with that trunk's valid credentials) the trunk whose
/// `inbound_username` the INVITE authenticated with.
pub fn inbound_trunk(settings: &Settings, info: &CallInfo) -> Option<String> {
    if let Some(name) = settings.resolved.trunk_for_source(info.source.ip()) {
        return Some(name.to_string());
    }
    let username = authorization_username(info)?;
    settings
        .config
        .trunks
        .iter()
        .find(|(_, trunk)| {
            trunk.sources.0.is_empty() && trunk.challenges_inbound() && trunk.inbound_username == username
        })
        .map(|(name, _)| name.clone())
}

/// The `username` of the INVITE's `Authorization: Digest` header.
fn authorization_username(info: &CallInfo) -> Option<String> {
    let (_, value) = info.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("Authorization"))?;
    switchboard_sip::digest_server::Credentials::parse(value).map(|c| c.username)
}

/// RFC 3325 §5: P-Asserted-Identity is believed only from within the trust domain: a trunk
/// with `trust_asserted_identity` (the default), a `sip.trusted_proxies` address, or, while no
/// trust domain is configured at all (no trunk lists `sources`, no trusted proxies: everything
/// is assumed to arrive through a proxy in front, as before access control existed), anyone.
pub fn identity_is_trusted(settings: &Settings, info: &CallInfo, trunk: Option<&str>) -> bool {
    let resolved = &settings.resolved;
    if resolved.is_trusted_proxy(info.source.ip()) {
        return true;
    }
    if let Some(trunk) = trunk.and_then(|name| settings.config.trunks.get(name)) {
        return trunk.trust_asserted_identity;
    }
    resolved.trunk_sources.is_empty() && resolved.trusted_proxies.is_empty()
}

/// Forgets an untrusted P-Asserted-Identity: From becomes the caller ID, and the header is not
/// shown to routing or the model either.
pub fn apply_identity_trust(settings: &Settings, info: &mut CallInfo) {
    let trunk = inbound_trunk(settings, info);
    if identity_is_trusted(settings, info, trunk.as_deref()) {
        return;
    }
    if info.asserted_identity.take().is_some() {
        tracing::debug!("P-Asserted-Identity from outside the trust domain ignored");
    }
    info.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("P-Asserted-Identity"));
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use switchboard_sip::Transport;

    use super::*;

    fn settings(toml: &str) -> Settings {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let (config, resolved) = crate::config::load_with_env(file.path(), &[]).unwrap();
        Settings { config, resolved }
    }

    fn call_from(source: &str, authorization: Option<&str>) -> CallInfo {
        let mut headers = vec![("P-Asserted-Identity".to_string(), "<sip:+15550009999@carrier>".to_string())];
        if let Some(value) = authorization {
            headers.push(("Authorization".to_string(), value.to_string()));
        }
        CallInfo {
            call_id: "c".into(),
            from_uri: "sip:+15550001111@x".into(),
            from_display: None,
            to_uri: "sip:100@gw".into(),
            request_uri: "sip:100@gw".into(),
            dialled: "100".into(),
            source: format!("{source}:5060").parse().unwrap(),
            transport: Transport::Udp,
            asserted_identity: Some("sip:+15550009999@carrier".into()),
            headers,
        }
    }

    const TRUNKS: &str = "[sip]\ntrusted_proxies = [\"10.0.0.1\"]\nunknown_sources = \"allow\"\n\
                          [trunks.carrier]\naddress = \"127.0.0.1:5070\"\nsources = [\"203.0.113.0/24\"]\n\
                          [trunks.pbx]\naddress = \"127.0.0.1:5071\"\nsources = [\"198.51.100.7\"]\n\
                          trust_asserted_identity = false\n\
                          [trunks.remote]\naddress = \"127.0.0.1:5072\"\ninbound_username = \"remote\"\n\
                          inbound_password = \"pw\"\n";

    #[test]
    fn a_call_gets_its_trunk_by_source_or_by_the_username_it_authenticated_with() {
        let s = settings(TRUNKS);
        assert_eq!(inbound_trunk(&s, &call_from("203.0.113.4", None)).as_deref(), Some("carrier"));
        let authorization = "Digest username=\"remote\", realm=\"r\", nonce=\"n\", uri=\"sip:100@gw\", response=\"x\"";
        assert_eq!(inbound_trunk(&s, &call_from("192.0.2.1", Some(authorization))).as_deref(), Some("remote"));
        assert_eq!(inbound_trunk(&s, &call_from("192.0.2.1", None)), None);
    }

    #[test]
    fn asserted_identity_is_kept_only_from_the_trust_domain() {
        let s = settings(TRUNKS);
        for (source, trusted) in
            [("203.0.113.4", true), ("10.0.0.1", true), ("198.51.100.7", false), ("192.0.2.1", false)]
        {
            let mut info = call_from(source, None);
            apply_identity_trust(&s, &mut info);
            assert_eq!(info.asserted_identity.is_some(), trusted, "{source}");
            assert_eq!(info.headers.iter().any(|(n, _)| n == "P-Asserted-Identity"), trusted, "{source}");
            let caller = crate::routing::caller_id(&info);
            assert_eq!(caller, if trusted { "+15550009999" } else { "+15550001111" }, "{source}");
        }
        // No trust domain configured at all: believed, as before access control existed.
        let s = settings("");
        let mut info = call_from("192.0.2.1", None);
        apply_identity_trust(&s, &mut info);
        assert!(info.asserted_identity.is_some());
    }
}
