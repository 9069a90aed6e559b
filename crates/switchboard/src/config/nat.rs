//! The NAT settings (docs/configuration.md, "Behind NAT"): what our signalling and SDP say,
//! as opposed to where our sockets bind.
//!
//! Behind 1:1 NAT the gateway binds private addresses (`sip.udp`/`sip.tcp`, `media.bind`) and
//! must say the public one: `sip.public_host` in Via, Contact and the REGISTER Contact,
//! `media.public_address` in SDP `c=`. Those two keys are the same settings as the older
//! `sip.advertised_host` and `media.address`, renamed for what they are: one meaning per key,
//! the old names accepted as deprecated aliases. Setting a new key and its old name to
//! different values is refused (which one was meant?).

use std::net::IpAddr;

use super::{MediaConfig, SipConfig};

/// The address Via and Contact say: `sip.public_host`, else `sip.advertised_host`; `None`
/// when neither is set (the listen address, or `media.public_address` on a wildcard listener).
pub(super) fn public_host(sip: &SipConfig, bad: &mut impl FnMut(&str, String)) -> Option<IpAddr> {
    let (key, value) =
        pick(("sip.public_host", &sip.public_host), ("sip.advertised_host", &sip.advertised_host), "", bad);
    if value.is_empty() {
        return None;
    }
    let ip = value.parse::<IpAddr>().map_err(|_| bad(key, format!("`{value}` is not an IP address"))).ok()?;
    if ip.is_unspecified() {
        bad(key, "must be an address peers can reach, not a wildcard".into());
        return None;
    }
    Some(ip)
}

/// The address SDP `c=` says: `media.public_address`, else `media.address`.
pub(super) fn public_media_address(media: &MediaConfig, bad: &mut impl FnMut(&str, String)) -> Option<IpAddr> {
    let default_address = MediaConfig::default().address;
    let (key, value) =
        pick(("media.public_address", &media.public_address), ("media.address", &media.address), &default_address, bad);
    let ip = value.parse::<IpAddr>().map_err(|_| bad(key, format!("`{value}` is not an IP address"))).ok()?;
    if ip.is_unspecified() {
        bad(key, "must be an address callers can reach, not a wildcard".into());
        return None;
    }
    Some(ip)
}

/// The new key when set, else its deprecated alias. Both set to different values (the alias
/// away from its default `alias_default`) is a problem reported on the new key.
fn pick<'a>(
    new: (&'a str, &'a str),
    alias: (&'a str, &'a str),
    alias_default: &str,
    bad: &mut impl FnMut(&str, String),
) -> (&'a str, &'a str) {
    let (new_key, new_value) = new;
    let (alias_key, alias_value) = alias;
    if new_value.is_empty() {
        return alias;
    }
    if alias_value != new_value && alias_value != alias_default {
        bad(new_key, format!("`{alias_key}` is its deprecated older name and says otherwise: set only `{new_key}`"));
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(f: impl FnOnce(&mut dyn FnMut(&str, String))) -> Vec<String> {
        let mut problems = Vec::new();
        f(&mut |key: &str, _message: String| problems.push(key.to_string()));
        problems
    }

    #[test]
    fn new_names_win_and_old_names_still_work() {
        let mut sip = SipConfig::default();
        let mut media = MediaConfig::default();
        let mut problems = Vec::new();
        let mut bad = |key: &str, _: String| problems.push(key.to_string());
        assert_eq!(public_host(&sip, &mut bad), None);
        assert_eq!(public_media_address(&media, &mut bad), Some("127.0.0.1".parse().unwrap()));
        sip.advertised_host = "192.0.2.1".into();
        media.address = "192.0.2.2".into();
        assert_eq!(public_host(&sip, &mut bad), Some("192.0.2.1".parse().unwrap()), "deprecated alias");
        assert_eq!(public_media_address(&media, &mut bad), Some("192.0.2.2".parse().unwrap()));
        sip.public_host = "203.0.113.7".into();
        sip.advertised_host = String::new();
        media.public_address = "203.0.113.7".into();
        media.address = MediaConfig::default().address;
        assert_eq!(public_host(&sip, &mut bad), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(public_media_address(&media, &mut bad), Some("203.0.113.7".parse().unwrap()));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_key_and_its_old_name_saying_otherwise_is_refused() {
        let sip =
            SipConfig { public_host: "203.0.113.7".into(), advertised_host: "10.0.0.5".into(), ..SipConfig::default() };
        let media =
            MediaConfig { public_address: "203.0.113.7".into(), address: "10.0.0.5".into(), ..MediaConfig::default() };
        let found = problems_of(|bad| {
            let mut bad = |k: &str, m: String| bad(k, m);
            public_host(&sip, &mut bad);
            public_media_address(&media, &mut bad);
        });
        assert_eq!(found, ["sip.public_host", "media.public_address"]);
        let wildcard = MediaConfig { public_address: "0.0.0.0".into(), ..MediaConfig::default() };
        let found = problems_of(|bad| {
            let mut bad = |k: &str, m: String| bad(k, m);
            public_media_address(&wildcard, &mut bad);
        });
        assert_eq!(found, ["media.public_address"]);
    }
}
