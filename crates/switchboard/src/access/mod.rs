//! Who may call (docs/security.md): which trunk a call comes from, whether its
//! P-Asserted-Identity is believed, and the screen every new out-of-dialog request passes
//! before the SIP core answers it (`screen.rs`: User-Agent deny list, unknown sources, per-source
//! rate with ban, global CPS, inbound digest).

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
